/*
 * The MQTT 3.1.1 server protocol, on any stream transport (TCP, TLS, Unix
 * sockets, Windows named pipes).
 *
 * A client session is a broker subscription of protocol "mqtt" named
 * "mqtt/<client id>" whose filters are the client's MQTT subscriptions,
 * each with the QoS granted on it, and whose owner is the identity that
 * made the session (a user that logged in with a password, or a TLS client
 * certificate's name), saved together (sb_broker_sub_define). Clean sessions are transient memory
 * queues deleted at disconnect; persistent ones (clean session 0) are durable (fsync) queues that
 * keep collecting messages while the client is away and survive restarts, until `session_expiry` of
 * absence, if set.
 *
 * A session with an owner is its owner's: another identity using its client
 * id gets CONNACK 5 and neither takes it over nor deletes it. A session
 * without one (made by an anonymous client, who proves nothing, or stored
 * before owners were recorded) is claimed by the first identity that
 * resumes it.
 *
 * Inbound: PUBACK (QoS 1) and PUBREC (QoS 2) are sent once the message is
 * committed, in PUBLISH order. QoS 2 is exactly once through a dedup key
 * committed with the message ("$mqtt\n<id>\n[<tag>\n]in\n<packet id>",
 * deleted at PUBREL; clean sessions tag theirs per connection), so a PUBLISH
 * re-sent before PUBREL, even across a restart, is acknowledged and dropped.
 *
 * Outbound: the packet id of a delivery is derived from its message id, so a
 * redelivery after a reconnect or a restart carries its original id (with
 * DUP). A QoS 2 delivery stays in the queue until PUBCOMP; at PUBREC a key
 * "$mqtt\n<id>\nrel\n<message id>" is committed before PUBREL is sent, so a
 * redelivery after a restart sends PUBREL, never the message again. A
 * message delivered before its commit that the store then refuses is
 * never redelivered: for a persistent session the refusal puts
 * "$mqtt\n<id>\nowed\n<message id>" (20 digits; then the mark
 * "$mqtt\n<id>\nowed"), so a resume sends PUBREL for its packet id, which
 * the client may hold, until PUBCOMP (in the order of the PUBLISHes; keys
 * naming the packet id, as schema version 3 wrote them, are read too).
 * A committed message costs no store operation for this.
 */
#include "adapters/stream_keys.h"
#include "adapters/conn.h"
#include "adapters/protocol/mqtt/mqtt_codec.h"
#include "service/alloc.h"
#include "service/auth.h"
#include "service/log.h"
#include "service/topic.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* How long a new connection may take to send CONNECT. */
#define CONNECT_TIMEOUT_MS 10000
/* Inbound publishes awaiting their commit before reading pauses. */
#define MAX_PENDING_PUBLISHES 1024
/* How long a QoS 1/2 delivery may stay unacknowledged before the queue
 * takes it back: MQTT 3.1.1 resends only after a reconnect. */
#define DELIVERY_LEASE_MS ((int64_t)7 * 24 * 3600 * 1000)
/* Header keeping the QoS a message was published with, a subscriber gets
 * at most that. Absent means 1, the common case: at least once is also what
 * every other mechanism's acknowledged publish promises. */
#define QOS_HEADER "mqtt-qos"

typedef struct mqtt_session mqtt_session;

/* A QoS 1/2 delivery waiting for its acknowledgement, by packet id. */
typedef struct inflight {
    sb_delivery *d;
    uint16_t pid;
    uint8_t qos;
    uint8_t released; /* QoS 2: PUBREL sent (or being committed) */
} inflight;

/* An inbound publish waiting for its commit; commits complete in publish
 * order, so a ring per session is enough. */
typedef struct pub_slot {
    uint16_t pid;
    uint8_t qos;
    uint8_t dropped; /* dropped on purpose: acknowledged in its turn */
} pub_slot;

struct mqtt_session {
    /* First what a delivery, a PUBACK and a PUBLISH read (the rest is for
     * connecting and closing): with thousands of sessions each one's
     * memory is out of cache by its next packet (see sb_conn). */
    sb_conn *conn;
    sb_broker *broker;
    int connected;     /* CONNACK 0 sent */
    int connecting;    /* the password check runs */
    int closed;        /* the transport closed */
    int parsing;       /* in parse(): no re-entry */
    int consumer_busy; /* a delivery was refused: call sb_consumer_ready */
    int got_connect;   /* the first packet was a CONNECT */
    uint64_t last_rx;
    /* input not yet parsed */
    uint8_t *buf;
    size_t len;
    /* deliveries */
    inflight *fl; /* open addressing by packet id, fl_cap a power of 2 */
    size_t fl_cap, fl_count;
    /* subscriptions (filter strings owned), mirrored in the session's
     * definition */
    sb_sub_filter *subs;
    size_t sub_count;
    size_t ring_count; /* of ring, below */
    size_t max_packet, max_payload;
    char *user; /* who the client is (NULL: anonymous) */
    char *client_id;
    sb_consumer consumer;
    int attached;
    /* inbound publishes awaiting their commit, oldest first */
    pub_slot *ring; /* allocated by the first publish: most sessions only
                       subscribe, and an idle one should cost little */
    size_t ring_head, ring_cap;
    size_t cap;       /* of buf */
    int clean_end;    /* DISCONNECT received: no will */
    int taken_over;   /* another connection took the client id */
    int owner;        /* registered under client_id */
    int pending;      /* callbacks outstanding (publishes, keys, auth) */
    int read_paused;  /* by us: too many pending publishes */
    char key_tag[24]; /* clean sessions: this connection's own QoS 2 keys */
    char *queue;      /* "mqtt/<client id>" */
    int clean;
    uint16_t keep_alive;
    uv_timer_t *ka_timer;
    /* will */
    int has_will;
    char *will_topic;
    unsigned char *will_payload;
    size_t will_len;
    int will_qos, will_retain;
    char source[200];
    char who[200];
};

typedef struct auth_work {
    uv_work_t req;
    mqtt_session *s;
    const sb_auth *auth;
    char *user;
    char *password;
    size_t password_len;
    int result;
} auth_work;

static void session_maybe_free(mqtt_session *s);
static void owed_complete(mqtt_session *s, uint16_t pid);
static int process_input(mqtt_session *s);

/* ---- small helpers ---- */

static char *strndup_sb(const char *p, size_t n)
{
    char *r = sb_malloc(n + 1);
    if (r != NULL) {
        memcpy(r, p, n);
        r[n] = '\0';
    }
    return r;
}

static uint16_t pid_of(uint64_t msg_id)
{
    return (uint16_t)(msg_id % 65535u + 1u);
}

/* Keys of QoS 2 state; '\n' cannot occur in a client id we accept, so one
 * client's prefix never covers another's keys. */
static void key_in(char *out, size_t n, const mqtt_session *s, uint16_t pid)
{
    snprintf(out, n, "$mqtt\n%s\n%sin\n%u", s->client_id, s->key_tag, (unsigned)pid);
}

static void key_rel(char *out, size_t n, const mqtt_session *s, uint64_t msg_id)
{
    snprintf(out, n, "$mqtt\n%s\nrel\n%" PRIu64, s->client_id, msg_id);
}

/* A PUBREL owed for message msg_id (packet id pid_of(msg_id)) whatever
 * becomes of it: the store refused it after it went out (before its
 * commit), so no redelivery will find its "rel" key, and the client may
 * hold the id until a PUBREL comes. Put only then, each with the
 * session's mark. The id has 20 digits, so that the keys sort in the
 * order the packet ids were given (owed_parse reads older keys too). */
static void key_owed(char *out, size_t n, const mqtt_session *s, uint64_t msg_id)
{
    snprintf(out, n, "$mqtt\n%s\nowed\n%020" PRIu64, s->client_id, msg_id);
}

/* Put after key_owed: the session has (or had) PUBRELs owed. */
static void key_owed_mark(char *out, size_t n, const mqtt_session *s)
{
    snprintf(out, n, "$mqtt\n%s\nowed", s->client_id);
}

static void key_prefix(char *out, size_t n, const char *client_id)
{
    snprintf(out, n, "$mqtt\n%s\n", client_id);
}

static const sb_auth *session_auth(const mqtt_session *s)
{
    return sb_broker_auth(s->broker);
}

/* Logs why and closes the connection; returns SB_EPROTO for data(). */
static int fail(mqtt_session *s, const char *fmt, ...) SB_PRINTF(2, 3);
static int fail(mqtt_session *s, const char *fmt, ...)
{
    char why[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    sb_log(SB_LOG_WARN, s->conn->adapter->name, "%s: closing connection: %s", s->who, why);
    sb_conn_close(s->conn, NULL);
    return SB_EPROTO;
}

static void send_bytes(mqtt_session *s, const uint8_t *p, size_t n)
{
    if (!s->closed)
        sb_conn_send(s->conn, p, n, NULL);
}

static void send_ack(mqtt_session *s, sb_mqtt_type type, uint16_t pid)
{
    uint8_t b[4];
    size_t n;
    if (sb_mqtt_encode_ack(b, sizeof b, &n, type, pid) == 0)
        send_bytes(s, b, n);
}

/* CONNACK with a refusal, then close once it is written. */
static int refuse(mqtt_session *s, uint8_t code, const char *why)
{
    uint8_t b[4];
    size_t n;
    sb_log(SB_LOG_WARN, s->conn->adapter->name, "%s: connection refused (CONNACK %u): %s", s->who,
           (unsigned)code, why);
    if (sb_mqtt_encode_connack(b, sizeof b, &n, 0, code) == 0)
        send_bytes(s, b, n);
    sb_conn_close_after_write(s->conn, NULL);
    return 0;
}

/* ---- outstanding deliveries by packet id ---- */

/* Packet ids in flight are mostly consecutive: Fibonacci hashing spreads
 * them, so probe runs stay short. */
static size_t fl_home(const mqtt_session *s, uint16_t pid)
{
    uint32_t h = (uint32_t)pid * 2654435769u;
    return (h ^ (h >> 16)) & (uint32_t)(s->fl_cap - 1);
}

static inflight *fl_find(mqtt_session *s, uint16_t pid)
{
    size_t mask, i;
    if (s->fl_cap == 0)
        return NULL;
    mask = s->fl_cap - 1;
    for (i = fl_home(s, pid); s->fl[i].pid != 0; i = (i + 1) & mask)
        if (s->fl[i].pid == pid)
            return &s->fl[i];
    return NULL;
}

static inflight *fl_insert(mqtt_session *s, uint16_t pid)
{
    size_t mask, i;
    if ((s->fl_count + 1) * 2 > s->fl_cap) {
        size_t ncap = s->fl_cap == 0 ? 16 : s->fl_cap * 2;
        inflight *old = s->fl, *n = sb_calloc(ncap, sizeof(*n));
        size_t ocap = s->fl_cap;
        if (n == NULL)
            return NULL;
        s->fl = n;
        s->fl_cap = ncap;
        s->fl_count = 0;
        for (size_t k = 0; k < ocap; k++)
            if (old[k].pid != 0)
                *fl_insert(s, old[k].pid) = old[k];
        sb_free(old);
    }
    mask = s->fl_cap - 1;
    for (i = fl_home(s, pid); s->fl[i].pid != 0; i = (i + 1) & mask)
        ;
    s->fl[i].pid = pid;
    s->fl_count++;
    return &s->fl[i];
}

/* Backward-shift deletion keeps every probe chain unbroken. */
static void fl_remove(mqtt_session *s, inflight *e)
{
    size_t mask = s->fl_cap - 1, i = (size_t)(e - s->fl), j = i;
    for (;;) {
        size_t home;
        j = (j + 1) & mask;
        if (s->fl[j].pid == 0)
            break;
        home = fl_home(s, s->fl[j].pid);
        if (i <= j ? (home <= i || home > j) : (home <= i && home > j)) {
            s->fl[i] = s->fl[j];
            i = j;
        }
    }
    memset(&s->fl[i], 0, sizeof(s->fl[i]));
    s->fl_count--;
}

static void fl_clear(mqtt_session *s)
{
    sb_free(s->fl);
    s->fl = NULL;
    s->fl_cap = s->fl_count = 0;
}

static void consumer_ready(mqtt_session *s)
{
    if (s->consumer_busy && s->attached && !s->closed) {
        s->consumer_busy = 0;
        sb_consumer_ready(&s->consumer);
    }
}

/* ---- subscriptions ---- */

static void subs_free(mqtt_session *s)
{
    for (size_t i = 0; i < s->sub_count; i++)
        sb_free((char *)s->subs[i].filter);
    sb_free(s->subs);
    s->subs = NULL;
    s->sub_count = 0;
}

/* Reads a persistent session's filters and granted QoS back. */
static int subs_load(mqtt_session *s, const sb_sub_def *def)
{
    subs_free(s);
    if (def->filter_count == 0)
        return 0;
    if ((s->subs = sb_calloc(def->filter_count, sizeof(*s->subs))) == NULL)
        return SB_ENOMEM;
    for (; s->sub_count < def->filter_count; s->sub_count++) {
        const sb_sub_filter *f = &def->filters[s->sub_count];
        if ((s->subs[s->sub_count].filter = sb_strdup(f->filter)) == NULL)
            return SB_ENOMEM;
        /* none granted (not saved by this protocol): at least once */
        s->subs[s->sub_count].qos = f->qos >= 0 && f->qos <= 2 ? f->qos : 1;
    }
    return 0;
}

/* Saves the filters, their QoS and the owner as the session's definition;
 * the retained values matching retained_for (a filter just subscribed to;
 * may be NULL) are queued. */
static int subs_save(mqtt_session *s, const sb_sub_filter *retained_for, sb_error *err)
{
    sb_sub_def def = {s->subs, s->sub_count, "mqtt", s->user};
    return sb_broker_sub_define(s->broker, s->queue, &def, NULL, retained_for, retained_for != NULL,
                                err);
}

/* A resumed session keeps only the filters its identity may subscribe to
 * (the ACL may have changed, or the session was claimed by a new owner);
 * saved when that changed something, or when `save` (a new owner). */
static void subs_recheck(mqtt_session *s, int save)
{
    size_t kept = 0;
    sb_error err;
    for (size_t i = 0; i < s->sub_count; i++) {
        if (sb_auth_filter_allowed(session_auth(s), s->user, s->client_id, s->subs[i].filter)) {
            s->subs[kept++] = s->subs[i];
            continue;
        }
        sb_log(SB_LOG_INFO, s->conn->adapter->name,
               "%s: subscription %s of the resumed session dropped: denied by the ACL", s->who,
               s->subs[i].filter);
        sb_free((char *)s->subs[i].filter);
    }
    if (kept != s->sub_count || save) {
        s->sub_count = kept;
        if (subs_save(s, NULL, &err) != 0)
            sb_log(SB_LOG_WARN, s->conn->adapter->name, "%s: cannot save the session: %s", s->who,
                   err.msg);
    }
}

/* The highest QoS granted by a filter matching topic, or -1. */
static int granted_qos(const mqtt_session *s, const char *topic)
{
    int q = -1;
    for (size_t i = 0; i < s->sub_count; i++)
        if (s->subs[i].qos > q && sb_topic_match(s->subs[i].filter, topic))
            q = s->subs[i].qos;
    return q;
}

/* ---- outbound: deliveries ---- */

/* PUBLISH of m: a header (fixed header, topic, packet id) and the payload,
 * queued as one frame; d (QoS 0) is acknowledged once written. */
static int send_publish(mqtt_session *s, const sb_message *m, int qos, int dup, int retain,
                        uint16_t pid, sb_delivery *d)
{
    size_t tlen = strlen(m->topic), rem = 2 + tlen + (qos > 0 ? 2 : 0) + m->payload_len;
    uint8_t small[512], *h = small;
    size_t n = 0;
    int rc;
    if (tlen > 65535 || rem > SB_MQTT_MAX_REMAINING)
        return SB_ETOOBIG;
    if (tlen + 16 > sizeof small && (h = sb_malloc(tlen + 16)) == NULL)
        return SB_ENOMEM;
    h[n++] = (uint8_t)(0x30 | (dup ? 0x08 : 0) | (qos << 1) | (retain ? 1 : 0));
    do {
        uint8_t byte = rem & 0x7f;
        rem >>= 7;
        h[n++] = (uint8_t)(byte | (rem > 0 ? 0x80 : 0));
    } while (rem > 0);
    h[n++] = (uint8_t)(tlen >> 8);
    h[n++] = (uint8_t)tlen;
    memcpy(h + n, m->topic, tlen);
    n += tlen;
    if (qos > 0) {
        h[n++] = (uint8_t)(pid >> 8);
        h[n++] = (uint8_t)pid;
    }
    rc = sb_conn_send2(s->conn, h, n, m->payload, m->payload_len, d);
    if (h != small)
        sb_free(h);
    return rc;
}

/* The client may PUBREC a QoS 2 delivery sent (or released) to it and
 * leave, or its PUBREC may be lost: if the store then refuses the message
 * (it went out before its commit), the PUBREL it is owed must still come
 * after a reconnect, even a restart. Recorded only once the packet went
 * out; costs nothing once the message is committed. Out of memory, the
 * session ends (its deliveries go back to their queue). */
static void owe_pubrel(mqtt_session *s, sb_delivery *d)
{
    char key[300], mark[300];
    const char *owed[2] = {mark, key}; /* the mark first: no key without it */
    if (s->clean)
        return;
    key_owed(key, sizeof key, s, d->msg->id);
    key_owed_mark(mark, sizeof mark, s);
    if (sb_delivery_keys_if_refused(s->broker, d, owed, 2) != 0)
        fail(s, "out of memory");
}

static int on_deliver(sb_consumer *c, sb_delivery *d)
{
    mqtt_session *s = c->ctx;
    const sb_message *m = d->msg;
    const char *h;
    int qos, retain, rc;
    uint16_t pid;
    inflight *e;
    char key[300];

    if (s->closed || s->conn->closing || s->conn->out_paused) {
        s->consumer_busy = 1;
        return SB_EBUSY;
    }
    if (!sb_auth_allowed(session_auth(s), s->user, s->client_id, m->topic, SB_ACL_READ)) {
        /* queued for another identity of this client id, or the ACL was
         * reloaded since the SUBSCRIBE: finished, never sent */
        sb_delivery_done(d, 0, NULL);
        return 0;
    }
    qos = granted_qos(s, m->topic);
    if (qos < 0)
        qos = 0; /* queued before an UNSUBSCRIBE: finish it at most once */
    if (qos > 0) {
        h = sb_message_header(m, QOS_HEADER);
        int published = h != NULL && h[0] >= '0' && h[0] <= '2' ? h[0] - '0' : 1;
        if (published < qos)
            qos = published;
    }
    h = sb_message_header(m, "retained");
    retain = h != NULL && strcmp(h, "true") == 0;
    if (qos == 0) {
        rc = send_publish(s, m, 0, 0, retain, 0, d);
        if (rc == SB_ETOOBIG) {
            sb_delivery_done(d, rc, "topic or message too long for an MQTT PUBLISH");
        } else if (rc != 0) {
            s->consumer_busy = 1;
            return SB_EBUSY;
        }
        return 0;
    }
    pid = pid_of(m->id);
    if (fl_find(s, pid) != NULL || (e = fl_insert(s, pid)) == NULL) {
        s->consumer_busy = 1; /* that id is still in flight: wait for it */
        return SB_EBUSY;
    }
    e->d = d;
    e->qos = (uint8_t)qos;
    e->released = 0;
    if (qos == 2 && d->redelivery) {
        key_rel(key, sizeof key, s, m->id);
        if (sb_broker_key_exists(s->broker, key)) {
            e->released = 1;
            send_ack(s, SB_MQTT_PUBREL, pid);
            owe_pubrel(s, d);
            return 0;
        }
    }
    if ((rc = send_publish(s, m, qos, d->redelivery, retain, pid, NULL)) != 0) {
        fl_remove(s, e);
        if (rc == SB_ETOOBIG) {
            sb_delivery_done(d, rc, "topic or message too long for an MQTT PUBLISH");
            return 0;
        }
        s->consumer_busy = 1;
        return SB_EBUSY;
    }
    if (qos == 2)
        owe_pubrel(s, d);
    return 0;
}

static void finish_delivery(mqtt_session *s, inflight *e)
{
    sb_delivery *d = e->d;
    fl_remove(s, e);
    sb_delivery_done(d, 0, NULL);
    consumer_ready(s);
}

typedef struct rel_req {
    mqtt_session *s;
    uint16_t pid;
} rel_req;

static void on_released(void *ctx, int status)
{
    rel_req *r = ctx;
    mqtt_session *s = r->s;
    s->pending--;
    if (!s->closed) {
        if (status == 0)
            send_ack(s, SB_MQTT_PUBREL, r->pid);
        else
            fail(s, "cannot record QoS 2 state: %s", sb_strerror(status));
    }
    sb_free(r);
    session_maybe_free(s);
}

static int handle_ack(mqtt_session *s, const sb_mqtt_packet *pk)
{
    inflight *e = fl_find(s, pk->packet_id);
    char key[300];
    switch (pk->type) {
    case SB_MQTT_PUBACK:
        if (e != NULL && e->qos == 1)
            finish_delivery(s, e);
        return 0;
    case SB_MQTT_PUBREC: {
        rel_req *r;
        int rc;
        if (e == NULL || e->qos != 2 || e->released) {
            /* unknown (already completed) or repeated: PUBREL lets the
             * client finish its side */
            send_ack(s, SB_MQTT_PUBREL, pk->packet_id);
            return 0;
        }
        e->released = 1;
        if (sb_delivery_withdrawn(e->d) && s->clean) {
            /* refused by the store: never sent again, and the client
             * forgets the id with its clean session */
            send_ack(s, SB_MQTT_PUBREL, pk->packet_id);
            return 0;
        }
        r = sb_malloc(sizeof(*r));
        if (r == NULL)
            return fail(s, "out of memory");
        r->s = s;
        r->pid = pk->packet_id;
        if (sb_delivery_withdrawn(e->d)) {
            /* Refused by the store: never sent again, so its "rel" key
             * would not bring the PUBREL back after a reconnect; the
             * PUBREL owed does (put at the refusal: again, in order, to
             * send PUBREL once it is committed). */
            char mark[300];
            key_owed(key, sizeof key, s, e->d->msg->id);
            key_owed_mark(mark, sizeof mark, s);
            if ((rc = sb_broker_key_put(s->broker, mark, NULL, NULL)) != 0 ||
                (rc = sb_broker_key_put(s->broker, key, on_released, r)) != 0) {
                sb_free(r);
                return fail(s, "cannot record QoS 2 state: %s", sb_strerror(rc));
            }
            s->pending++;
            return 0;
        }
        key_rel(key, sizeof key, s, e->d->msg->id);
        /* deleted with the message if the store refuses it (delivered
         * before its commit): no PUBCOMP would come for it then */
        if ((rc = sb_delivery_key_put(s->broker, e->d, key, on_released, r)) != 0) {
            sb_free(r);
            return fail(s, "cannot record QoS 2 state: %s", sb_strerror(rc));
        }
        s->pending++;
        return 0;
    }
    case SB_MQTT_PUBCOMP:
        if (e != NULL && e->qos == 2 && e->d == NULL) {
            /* a PUBREL owed from before the reconnect (resend_owed) */
            fl_remove(s, e);
            owed_complete(s, pk->packet_id);
            consumer_ready(s);
        } else if (e != NULL && e->qos == 2) {
            uint64_t id = e->d->msg->id;
            int owed = !s->clean && sb_delivery_withdrawn(e->d);
            finish_delivery(s, e);
            key_rel(key, sizeof key, s, id);
            sb_broker_key_delete(s->broker, key, 0);
            if (owed) {
                key_owed(key, sizeof key, s, id);
                sb_broker_key_delete(s->broker, key, 0);
            }
        }
        return 0;
    default:
        return 0;
    }
}

/* ---- inbound: publishes ---- */

/* Room for one more slot (growing by doubling up to
 * MAX_PENDING_PUBLISHES, which stalled() never lets the ring exceed);
 * called before the publish whose callback will pop it. */
static int ring_reserve(mqtt_session *s)
{
    size_t cap;
    pub_slot *n;
    if (s->ring_count < s->ring_cap)
        return 0;
    cap = s->ring_cap == 0 ? 16 : s->ring_cap * 2;
    if ((n = sb_malloc(cap * sizeof(*n))) == NULL)
        return SB_ENOMEM;
    for (size_t i = 0; i < s->ring_count; i++)
        n[i] = s->ring[(s->ring_head + i) % s->ring_cap];
    sb_free(s->ring);
    s->ring = n;
    s->ring_cap = cap;
    s->ring_head = 0;
    return 0;
}

static void ring_push(mqtt_session *s, pub_slot slot)
{
    s->ring[(s->ring_head + s->ring_count) % s->ring_cap] = slot;
    s->ring_count++;
}

static pub_slot ring_pop(mqtt_session *s)
{
    pub_slot slot = s->ring[s->ring_head];
    s->ring_head = (s->ring_head + 1) % s->ring_cap;
    s->ring_count--;
    return slot;
}

static void send_pub_ack(mqtt_session *s, pub_slot slot)
{
    if (slot.qos == 1)
        send_ack(s, SB_MQTT_PUBACK, slot.pid);
    else if (slot.qos == 2)
        send_ack(s, SB_MQTT_PUBREC, slot.pid);
}

static void on_published(void *ctx, int status, uint64_t msg_id, int queues, const char *why)
{
    mqtt_session *s = ctx;
    pub_slot slot = ring_pop(s);
    (void)msg_id;
    (void)queues;
    s->pending--;
    if (!s->closed && !s->conn->closing) {
        if (status != 0) {
            /* MQTT 3.1.1 has no negative acknowledgement: the client sends
             * it again after reconnecting. */
            fail(s, "PUBLISH not accepted: %s", why != NULL ? why : sb_strerror(status));
        } else {
            send_pub_ack(s, slot);
            /* publishes dropped after this one are acknowledged now, in order */
            while (s->ring_count > 0 && s->ring[s->ring_head].dropped)
                send_pub_ack(s, ring_pop(s));
        }
        if (s->ring_count <= MAX_PENDING_PUBLISHES / 2 && s->len > 0)
            process_input(s);
    } else {
        while (s->ring_count > 0 && s->ring[s->ring_head].dropped)
            ring_pop(s);
    }
    session_maybe_free(s);
}

/* Acknowledges a publish that is dropped on purpose (ACL, '$' topics):
 * after those before it, as MQTT keeps acknowledgements in order. */
static void ack_dropped(mqtt_session *s, const sb_mqtt_packet *pk)
{
    pub_slot slot = {pk->packet_id, pk->publish.qos, 1};
    if (s->ring_count == 0)
        send_pub_ack(s, slot);
    else if (ring_reserve(s) != 0)
        fail(s, "out of memory");
    else
        ring_push(s, slot);
}

static int handle_publish(mqtt_session *s, const sb_mqtt_packet *pk)
{
    const sb_mqtt_publish *p = &pk->publish;
    sb_publish_opts opts = {s->source, p->retain, NULL};
    char tbuf[256], *topic = tbuf, key[300];
    sb_message *m;
    sb_error err;
    int rc;

    if (p->payload.n > s->max_payload)
        return fail(s, "PUBLISH of %zu bytes to %.*s exceeds max_message (%zu bytes)", p->payload.n,
                    (int)(p->topic.n > 100 ? 100 : p->topic.n), p->topic.p, s->max_payload);
    if (p->topic.n >= sizeof tbuf && (topic = sb_malloc(p->topic.n + 1)) == NULL)
        return fail(s, "out of memory");
    memcpy(topic, p->topic.p, p->topic.n);
    topic[p->topic.n] = '\0';
    if (topic[0] == '$') {
        sb_log(SB_LOG_INFO, s->conn->adapter->name,
               "%s: PUBLISH to %s dropped: '$' topics are "
               "the broker's",
               s->who, topic);
        ack_dropped(s, pk);
        goto done;
    }
    if (!sb_auth_allowed(session_auth(s), s->user, s->client_id, topic, SB_ACL_WRITE)) {
        sb_log(SB_LOG_INFO, s->conn->adapter->name, "%s: PUBLISH to %s denied by the ACL", s->who,
               topic);
        ack_dropped(s, pk);
        goto done;
    }
    /* one allocation, with room for the QoS header and the source header
     * the broker adds */
    m = sb_message_new_room(topic, p->topic.n, p->payload.p, p->payload.n, 2,
                            sizeof(QOS_HEADER) + 2 + sizeof("source") + strlen(s->source) + 1);
    if (m == NULL || (p->qos != 1 && sb_message_add_header(m, QOS_HEADER, p->qos ? "2" : "0")))
        goto nomem;
    if (p->qos == 2) {
        key_in(key, sizeof key, s, pk->packet_id);
        opts.dedup_key = key;
    }
    if (ring_reserve(s) != 0)
        goto nomem;
    rc = sb_broker_publish(s->broker, m, &opts, on_published, s, &err);
    sb_message_unref(m);
    if (rc != 0) {
        if (topic != tbuf)
            sb_free(topic);
        return fail(s, "PUBLISH to %.*s not accepted: %s",
                    (int)(p->topic.n > 100 ? 100 : p->topic.n), p->topic.p, err.msg);
    }
    ring_push(s, (pub_slot){pk->packet_id, p->qos, 0});
    s->pending++;
done:
    if (topic != tbuf)
        sb_free(topic);
    return 0;
nomem:
    sb_message_unref(m);
    if (topic != tbuf)
        sb_free(topic);
    return fail(s, "out of memory");
}

static int handle_pubrel(mqtt_session *s, uint16_t pid)
{
    char key[300];
    key_in(key, sizeof key, s, pid);
    /* whether or not the map has it yet: a resend of the PUBLISH still in
     * flight may put it after this PUBREL's PUBCOMP frees the packet id */
    sb_broker_key_delete(s->broker, key, 0);
    send_ack(s, SB_MQTT_PUBCOMP, pid);
    return 0;
}

/* ---- subscriptions ---- */

static int handle_subscribe(mqtt_session *s, const sb_mqtt_packet *pk)
{
    uint8_t codes_small[64], *codes = codes_small, out_small[80], *out = out_small;
    size_t pos = 0, i = 0, n;
    sb_mqtt_filter f;
    int rc = 0;

    if (pk->list.count > sizeof codes_small && (codes = sb_malloc(pk->list.count)) == NULL)
        return fail(s, "out of memory");
    while (sb_mqtt_filter_next(pk, &pos, &f)) {
        char *filter = strndup_sb(f.filter.p, f.filter.n);
        const char *why;
        sb_error err;
        size_t k;
        if (filter == NULL) {
            rc = fail(s, "out of memory");
            goto out;
        }
        if (sb_filter_validate(filter, strlen(filter), &why) != 0) {
            rc = fail(s, "SUBSCRIBE to invalid filter %s: %s", filter, why);
            sb_free(filter);
            goto out;
        }
        if (!sb_auth_filter_allowed(session_auth(s), s->user, s->client_id, filter)) {
            sb_log(SB_LOG_INFO, s->conn->adapter->name, "%s: SUBSCRIBE to %s denied by the ACL",
                   s->who, filter);
            codes[i++] = SB_MQTT_SUBACK_FAILURE;
            sb_free(filter);
            continue;
        }
        for (k = 0; k < s->sub_count && strcmp(s->subs[k].filter, filter) != 0; k++)
            ;
        if (k == s->sub_count) {
            sb_sub_filter *ns = sb_realloc(s->subs, (s->sub_count + 1) * sizeof(*ns));
            if (ns == NULL) {
                sb_free(filter);
                codes[i++] = SB_MQTT_SUBACK_FAILURE;
                continue;
            }
            s->subs = ns;
            ns[k].filter = filter;
            s->sub_count++;
        } else {
            sb_free(filter);
        }
        s->subs[k].qos = f.qos > 2 ? 2 : f.qos;
        if (subs_save(s, &s->subs[k], &err) != 0) {
            sb_log(SB_LOG_WARN, s->conn->adapter->name, "%s: SUBSCRIBE to %s failed: %s", s->who,
                   s->subs[k].filter, err.msg);
            codes[i++] = SB_MQTT_SUBACK_FAILURE;
            continue;
        }
        sb_log(SB_LOG_DEBUG, s->conn->adapter->name, "%s: subscribed to %s (QoS %d)", s->who,
               s->subs[k].filter, s->subs[k].qos);
        codes[i++] = s->subs[k].qos;
    }
    if (i + 8 > sizeof out_small && (out = sb_malloc(i + 8)) == NULL) {
        rc = fail(s, "out of memory");
        goto out;
    }
    if (sb_mqtt_encode_suback(out, i + 8, &n, pk->packet_id, codes, i) == 0)
        send_bytes(s, out, n);
out:
    if (codes != codes_small)
        sb_free(codes);
    if (out != out_small)
        sb_free(out);
    return rc;
}

static int handle_unsubscribe(mqtt_session *s, const sb_mqtt_packet *pk)
{
    size_t pos = 0;
    sb_mqtt_filter f;
    sb_error err;
    while (sb_mqtt_filter_next(pk, &pos, &f)) {
        for (size_t k = 0; k < s->sub_count; k++) {
            if (strlen(s->subs[k].filter) == f.filter.n &&
                memcmp(s->subs[k].filter, f.filter.p, f.filter.n) == 0) {
                sb_free((char *)s->subs[k].filter);
                s->subs[k] = s->subs[--s->sub_count];
                break;
            }
        }
    }
    if (subs_save(s, NULL, &err) != 0)
        sb_log(SB_LOG_WARN, s->conn->adapter->name, "%s: UNSUBSCRIBE failed: %s", s->who, err.msg);
    send_ack(s, SB_MQTT_UNSUBACK, pk->packet_id);
    return 0;
}

/* ---- connection ---- */

static void on_keep_alive(uv_timer_t *t)
{
    mqtt_session *s = t->data;
    uint64_t now = uv_now(t->loop), limit = (uint64_t)s->keep_alive * 1500;
    if (!s->connected) {
        if (!s->got_connect)
            fail(s, "no CONNECT within %d s", CONNECT_TIMEOUT_MS / 1000);
        else if (s->connecting)
            uv_timer_start(t, on_keep_alive, 1000, 0); /* the password check runs */
        return;
    }
    if (now - s->last_rx >= limit) {
        fail(s, "no packet for %.1f s (keep alive %u s)", (double)(now - s->last_rx) / 1000.0,
             (unsigned)s->keep_alive);
        return;
    }
    uv_timer_start(t, on_keep_alive, limit - (now - s->last_rx), 0);
}

static void take_over(mqtt_session *old)
{
    sb_error err;
    old->owner = 0;
    old->taken_over = 1;
    sb_log(SB_LOG_INFO, old->conn->adapter->name, "%s: client id taken over by a new connection",
           old->who);
    /* closed first: the connection hands back the deliveries it holds
     * (QoS 0 ones being written) before the detach frees the rest */
    sb_conn_close(old->conn, NULL);
    if (old->attached) {
        sb_broker_detach(old->broker, &old->consumer, 0);
        old->attached = 0;
        fl_clear(old);
    }
    if (old->clean)
        sb_broker_unsubscribe(old->broker, old->queue, &err);
}

/* The session stored under s's client id, or NULL if there is none;
 * *def is valid until the broker's subscriptions change. */
static const sb_sub_def *stored_session(mqtt_session *s, sb_sub_def *def)
{
    if (sb_broker_sub_get(s->broker, s->queue, def) != 0 || def->protocol == NULL)
        return NULL;
    return def;
}

/* 0 if s's identity may use the session stored under its client id
 * (NULL if there is none); else refuses the connection. */
static int check_owner(mqtt_session *s, const sb_sub_def *stored)
{
    const char *owner = stored != NULL ? stored->owner : NULL;
    char why[300];
    if (owner == NULL || (s->user != NULL && strcmp(owner, s->user) == 0))
        return 0;
    snprintf(why, sizeof why, "client id %s is the session of user %.100s, not of %s%.100s",
             s->client_id, owner, s->user != NULL ? "user " : "an anonymous client",
             s->user != NULL ? s->user : "");
    refuse(s, SB_MQTT_CONNACK_NOT_AUTHORIZED, why);
    return SB_EACCES;
}

/* Defines s's session queue with no filters yet. */
static int define_empty(mqtt_session *s, const sb_sub_settings *st, sb_error *err)
{
    sb_sub_def def = {NULL, 0, "mqtt", s->user};
    return sb_broker_sub_define(s->broker, s->queue, &def, st, NULL, 0, err);
}

/* A PUBREL owed (key_owed) as read back from its key. */
typedef struct owed {
    uint64_t id;  /* its message's id; 0: a key that has the packet id only */
    uint16_t pid; /* and its packet id */
} owed;

/* Reads an owed key (written by key_owed, or with the packet id alone by
 * earlier versions); 0, or -1 for a key of neither form. */
static int owed_parse(const char *key, owed *out)
{
    const char *at = strrchr(key, '\n') + 1;
    char *end;
    unsigned long long v;
    if (*at < '0' || *at > '9')
        return -1;
    v = strtoull(at, &end, 10);
    if (*end != '\0')
        return -1;
    if (end - at == 20) {
        out->id = v;
        out->pid = pid_of(v);
    } else if (v > 0 && v <= 65535) {
        out->id = 0;
        out->pid = (uint16_t)v;
    } else {
        return -1;
    }
    return 0;
}

typedef struct owed_list {
    owed *v;
    size_t n, cap;
    int nomem;
} owed_list;

static void owed_collect(const char *key, void *ctx)
{
    owed_list *l = ctx;
    owed o;
    if (owed_parse(key, &o) != 0)
        return;
    if (l->n == l->cap) {
        size_t cap = l->cap == 0 ? 8 : l->cap * 2;
        owed *v = sb_realloc(l->v, cap * sizeof(*v));
        if (v == NULL) {
            l->nomem = 1;
            return;
        }
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = o;
}

static int owed_cmp(const void *a, const void *b)
{
    const owed *x = a, *y = b;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* A resumed session first gets the PUBRELs owed for messages the store
 * refused after they went out (key_owed), each holding its packet id until
 * PUBCOMP: a new message must not take an id the client still holds. They
 * go in the order of their messages' ids: that of their PUBLISHes, which a
 * client answers with PUBRECs in the same order (MQTT-4.6.0-2), as
 * MQTT-4.6.0-3 wants of re-sent PUBRELs. */
static int resend_owed(mqtt_session *s)
{
    char mark[300], prefix[310];
    owed_list l = {NULL, 0, 0, 0};
    key_owed_mark(mark, sizeof mark, s);
    if (!sb_broker_key_exists(s->broker, mark))
        return 0; /* the common case */
    snprintf(prefix, sizeof prefix, "%s\n", mark);
    sb_broker_key_each(s->broker, prefix, owed_collect, &l);
    if (l.nomem) {
        sb_free(l.v);
        return fail(s, "out of memory");
    }
    if (l.n > 1)
        qsort(l.v, l.n, sizeof(*l.v), owed_cmp);
    for (size_t i = 0; i < l.n; i++) {
        inflight *e;
        if (fl_find(s, l.v[i].pid) != NULL)
            continue;
        if ((e = fl_insert(s, l.v[i].pid)) == NULL) {
            sb_free(l.v);
            return fail(s, "out of memory");
        }
        e->d = NULL; /* no delivery: the PUBREL only */
        e->qos = 2;
        e->released = 1;
        send_ack(s, SB_MQTT_PUBREL, l.v[i].pid);
    }
    if (l.n == 0)
        sb_broker_key_delete(s->broker, mark, 0); /* all completed */
    sb_free(l.v);
    return 0;
}

typedef struct owed_find {
    uint16_t pid;
    char key[300];
} owed_find;

static void owed_match(const char *key, void *ctx)
{
    owed_find *w = ctx;
    owed o;
    if (owed_parse(key, &o) == 0 && o.pid == w->pid)
        snprintf(w->key, sizeof w->key, "%s", key);
}

/* PUBCOMP for a PUBREL resend_owed sent: deletes its key. */
static void owed_complete(mqtt_session *s, uint16_t pid)
{
    char mark[300], prefix[310];
    owed_find w;
    w.pid = pid;
    w.key[0] = '\0';
    key_owed_mark(mark, sizeof mark, s);
    snprintf(prefix, sizeof prefix, "%s\n", mark);
    sb_broker_key_each(s->broker, prefix, owed_match, &w);
    if (w.key[0] != '\0')
        sb_broker_key_delete(s->broker, w.key, 0);
}

static int connect_finish(mqtt_session *s, const char *user)
{
    const sb_adapter_config *cfg = s->conn->adapter->cfg;
    sb_broker *b = s->broker;
    sb_sub_settings st;
    sb_sub_def def;
    const sb_sub_def *stored;
    mqtt_session *old;
    sb_error err;
    uint8_t ack[4];
    size_t n;
    char prefix[300];
    int present = 0;

    if (user == NULL && !sb_stream_anonymous(cfg))
        return refuse(s, SB_MQTT_CONNACK_NOT_AUTHORIZED,
                      "anonymous clients are not allowed on this listener");
    if (user != NULL && (s->user = sb_strdup(user)) == NULL)
        return fail(s, "out of memory");
    if (s->has_will &&
        !sb_auth_allowed(session_auth(s), s->user, s->client_id, s->will_topic, SB_ACL_WRITE))
        return refuse(s, SB_MQTT_CONNACK_NOT_AUTHORIZED, "the will's topic is denied by the ACL");
    /* Before anything is taken over or deleted: the session (stored, or
     * of a connection still there) may be someone else's. */
    if (check_owner(s, stored_session(s, &def)) != 0)
        return 0;

    old = sb_broker_session_swap(b, s->client_id, s);
    s->owner = 1;
    if (old != NULL && old != s)
        take_over(old);

    sb_sub_settings_default(&st);
    st.lease_ms = DELIVERY_LEASE_MS;
    if (SB_STREAM_CFG(cfg)->max_queued > 0) {
        /* a slow or absent client must not make the broker hold everything */
        st.max_depth = SB_STREAM_CFG(cfg)->max_queued;
        st.overflow = SB_OVERFLOW_DROP_OLDEST;
    }
    stored = stored_session(s, &def); /* again: a take-over may have deleted it */
    if (s->clean || stored == NULL) {
        /* A new session starts without the QoS 2 state of an earlier one
         * (deleted, expired or clean): a packet id it reuses is new. */
        key_prefix(prefix, sizeof prefix, s->client_id);
        sb_broker_key_delete(b, prefix, 1);
    }
    if (s->clean) {
        if (stored != NULL && sb_broker_unsubscribe(b, s->queue, &err) != 0)
            return refuse(s, SB_MQTT_CONNACK_UNAVAILABLE, err.msg);
        /* A QoS 2 publish of an earlier connection may still commit its key
         * after that delete: this connection's keys are its own. */
        snprintf(s->key_tag, sizeof s->key_tag, "%016" PRIx64 "\n",
                 uv_hrtime() ^ ((uint64_t)(uintptr_t)s << 20));
        st.durability = SB_DURABILITY_MEMORY;
        st.transient = 1;
        if (define_empty(s, &st, &err) != 0)
            return refuse(s, SB_MQTT_CONNACK_UNAVAILABLE, err.msg);
    } else if (stored != NULL) {
        int claimed = stored->owner == NULL && s->user != NULL;
        present = 1;
        if (subs_load(s, stored) != 0)
            return fail(s, "out of memory");
        if (claimed)
            sb_log(SB_LOG_WARN, s->conn->adapter->name,
                   "%s: session %s had no owner (made by an anonymous client, or stored before "
                   "owners were recorded): now owned by user %s",
                   s->who, s->queue, s->user);
        subs_recheck(s, claimed);
    } else {
        st.expire_ms = SB_STREAM_CFG(cfg)->session_expiry_ms;
        if (define_empty(s, &st, &err) != 0)
            return refuse(s, SB_MQTT_CONNACK_UNAVAILABLE, err.msg);
    }
    /* The absence allowed is that of the listener the client last used. */
    if (!s->clean &&
        sb_broker_sub_set_expiry(b, s->queue, SB_STREAM_CFG(cfg)->session_expiry_ms, &err) != 0)
        sb_log(SB_LOG_WARN, s->conn->adapter->name, "%s: cannot set the session's expiry: %s",
               s->who, err.msg);
    if (sb_mqtt_encode_connack(ack, sizeof ack, &n, present, SB_MQTT_CONNACK_ACCEPTED) == 0)
        send_bytes(s, ack, n);
    s->connected = 1;
    sb_conn_identified(s->conn);
    if (present && resend_owed(s) != 0)
        return 0; /* closing */
    s->consumer.deliver = on_deliver;
    s->consumer.ctx = s;
    s->consumer.name = s->who;
    s->consumer.window = cfg->inflight > 0 ? cfg->inflight : 64;
    if (sb_broker_attach(b, s->queue, &s->consumer, &err) != 0)
        return fail(s, "cannot attach to the session: %s", err.msg);
    s->attached = 1;
    if (s->keep_alive > 0)
        uv_timer_start(s->ka_timer, on_keep_alive, (uint64_t)s->keep_alive * 1500, 0);
    else
        uv_timer_stop(s->ka_timer);
    sb_log(SB_LOG_INFO, s->conn->adapter->name,
           "%s: connected (clean session %d, keep alive %u s, %s%s%s)", s->who, s->clean,
           (unsigned)s->keep_alive, s->user != NULL ? "user " : "anonymous",
           s->user != NULL ? s->user : "", present ? ", session resumed" : "");
    return 0;
}

static void auth_run(uv_work_t *req)
{
    auth_work *w = req->data;
    w->result = sb_auth_check_password(w->auth, w->user, w->password, w->password_len);
}

static void auth_done(uv_work_t *req, int status)
{
    auth_work *w = req->data;
    mqtt_session *s = w->s;
    s->pending--;
    s->connecting = 0;
    if (!s->closed && !s->conn->closing) {
        if (status != 0 || w->result != 0) {
            char why[200];
            snprintf(why, sizeof why, "bad user name or password for user %s", w->user);
            refuse(s, SB_MQTT_CONNACK_BAD_LOGIN, why);
        } else if (connect_finish(s, w->user) == 0 && !s->conn->closing &&
                   !s->conn->close_after_write) {
            sb_conn_resume(s->conn);
            process_input(s);
        }
    }
    memset(w->password, 0, w->password_len);
    sb_free(w->password);
    sb_free(w->user);
    sb_free(w);
    session_maybe_free(s);
}

static int handle_connect(mqtt_session *s, const sb_mqtt_packet *pk)
{
    const sb_mqtt_connect *cn = &pk->connect;
    const sb_auth *auth = session_auth(s);
    const char *why;
    static uint64_t serial;

    s->got_connect = 1;
    s->clean = cn->clean_session;
    s->keep_alive = cn->keep_alive;
    if (cn->client_id.n == 0) {
        char id[40];
        if (!cn->clean_session)
            return refuse(s, SB_MQTT_CONNACK_ID_REJECTED,
                          "an empty client id needs clean session 1");
        snprintf(id, sizeof id, "auto-%016" PRIx64,
                 uv_hrtime() ^ ((uint64_t)(uintptr_t)s << 16) ^ (++serial * 0x9E3779B97F4A7C15u));
        s->client_id = sb_strdup(id);
    } else {
        if (cn->client_id.n > 180 || memchr(cn->client_id.p, '\n', cn->client_id.n) != NULL)
            return refuse(s, SB_MQTT_CONNACK_ID_REJECTED,
                          "client id longer than 180 bytes or with a line break");
        s->client_id = strndup_sb(cn->client_id.p, cn->client_id.n);
    }
    if (s->client_id == NULL)
        return fail(s, "out of memory");
    snprintf(s->who, sizeof s->who, "%s (client %s)", s->conn->peer, s->client_id);
    s->queue = sb_malloc(strlen(s->client_id) + 6);
    if (s->queue == NULL)
        return fail(s, "out of memory");
    snprintf(s->queue, strlen(s->client_id) + 6, "mqtt/%s", s->client_id);
    if (cn->will) {
        s->will_topic = strndup_sb(cn->will_topic.p, cn->will_topic.n);
        if (s->will_topic == NULL)
            return fail(s, "out of memory");
        if (sb_topic_validate(s->will_topic, strlen(s->will_topic), &why) != 0 ||
            s->will_topic[0] == '$')
            return fail(s, "invalid will topic %s", s->will_topic);
        s->will_len = cn->will_message.n;
        s->will_payload = sb_malloc(s->will_len + 1);
        if (s->will_payload == NULL)
            return fail(s, "out of memory");
        if (s->will_len > 0)
            memcpy(s->will_payload, cn->will_message.p, s->will_len);
        s->will_qos = cn->will_qos;
        s->will_retain = cn->will_retain;
        s->has_will = 1;
    }
    if (cn->has_username && sb_auth_has_passwords(auth)) {
        auth_work *w;
        if (!cn->has_password)
            return refuse(s, SB_MQTT_CONNACK_BAD_LOGIN, "a user name without a password");
        w = sb_calloc(1, sizeof(*w));
        if (w == NULL || (w->user = strndup_sb(cn->username.p, cn->username.n)) == NULL ||
            (w->password = sb_malloc(cn->password.n + 1)) == NULL) {
            if (w != NULL)
                sb_free(w->user);
            sb_free(w);
            return fail(s, "out of memory");
        }
        if (cn->password.n > 0)
            memcpy(w->password, cn->password.p, cn->password.n);
        w->password_len = cn->password.n;
        w->s = s;
        w->auth = auth;
        w->req.data = w;
        /* PBKDF2 is slow by design: off the loop; input waits meanwhile */
        s->connecting = 1;
        s->pending++;
        sb_conn_pause(s->conn);
        if (uv_queue_work(s->conn->adapter->loop, &w->req, auth_run, auth_done) != 0) {
            s->pending--;
            s->connecting = 0;
            sb_free(w->password);
            sb_free(w->user);
            sb_free(w);
            return refuse(s, SB_MQTT_CONNACK_UNAVAILABLE, "cannot check the password");
        }
        return 0;
    }
    if (sb_auth_has_passwords(auth) && !cn->has_username && s->conn->user == NULL &&
        !sb_stream_anonymous(s->conn->adapter->cfg))
        return refuse(s, SB_MQTT_CONNACK_NOT_AUTHORIZED, "no user name given");
    /* Without a password file a user name proves nothing: identity comes
     * from a TLS client certificate, if any. */
    return connect_finish(s, s->conn->user);
}

static int handle_packet(mqtt_session *s, const sb_mqtt_packet *pk)
{
    if (!s->got_connect) {
        if (pk->type != SB_MQTT_CONNECT)
            return fail(s, "expected CONNECT first, got %s", sb_mqtt_type_name(pk->type));
        return handle_connect(s, pk);
    }
    switch (pk->type) {
    case SB_MQTT_PUBLISH:
        return handle_publish(s, pk);
    case SB_MQTT_PUBACK:
    case SB_MQTT_PUBREC:
    case SB_MQTT_PUBCOMP:
        return handle_ack(s, pk);
    case SB_MQTT_PUBREL:
        return handle_pubrel(s, pk->packet_id);
    case SB_MQTT_SUBSCRIBE:
        return handle_subscribe(s, pk);
    case SB_MQTT_UNSUBSCRIBE:
        return handle_unsubscribe(s, pk);
    case SB_MQTT_PINGREQ: {
        uint8_t b[2];
        size_t n;
        if (sb_mqtt_encode_empty(b, sizeof b, &n, SB_MQTT_PINGRESP) == 0)
            send_bytes(s, b, n);
        return 0;
    }
    case SB_MQTT_DISCONNECT:
        s->clean_end = 1;
        sb_conn_close_after_write(s->conn, NULL);
        return 0;
    case SB_MQTT_CONNECT:
        return fail(s, "a second CONNECT");
    default:
        return fail(s, "unexpected %s from a client", sb_mqtt_type_name(pk->type));
    }
}

static int stalled(const mqtt_session *s)
{
    return s->connecting || s->ring_count >= MAX_PENDING_PUBLISHES || s->conn->closing ||
           s->conn->close_after_write;
}

/* Handles the complete packets in p[0..n); *used: bytes consumed. */
static int parse(mqtt_session *s, const uint8_t *p, size_t n, size_t *used)
{
    size_t off = 0;
    int rc = 0;
    while (off < n && !s->closed && !stalled(s)) {
        sb_mqtt_packet pk;
        size_t consumed = 0;
        const char *why = NULL;
        rc = sb_mqtt_decode(p + off, n - off, s->max_packet, &pk, &consumed, &why);
        if (rc == SB_MQTT_NEED_MORE) {
            rc = 0;
            break;
        }
        if (rc == SB_ETOOBIG) {
            rc = fail(s, "packet larger than %zu bytes (max_message %zu): %s", s->max_packet,
                      s->max_payload, why != NULL ? why : "too big");
            break;
        }
        if (rc == SB_EVERSION && !s->got_connect) {
            s->got_connect = 1;
            refuse(s, SB_MQTT_CONNACK_BAD_PROTOCOL, "unsupported protocol level (3.1.1 only)");
            rc = 0;
            break;
        }
        if (rc != 0) {
            rc = fail(s, "malformed packet: %s", why != NULL ? why : "protocol error");
            break;
        }
        off += consumed;
        if ((rc = handle_packet(s, &pk)) != 0)
            break;
    }
    *used = off;
    return rc;
}

/* Parses what is buffered (after a stall ends). */
static int process_input(mqtt_session *s)
{
    size_t used = 0;
    int rc;
    if (s->parsing || s->len == 0)
        return 0;
    s->parsing = 1;
    rc = parse(s, s->buf, s->len, &used);
    s->parsing = 0;
    if (used > 0) {
        memmove(s->buf, s->buf + used, s->len - used);
        s->len -= used;
    }
    if (rc == 0 && s->conn->paused && !stalled(s))
        sb_conn_resume(s->conn);
    return rc;
}

static int buffer_append(mqtt_session *s, const uint8_t *p, size_t n)
{
    if (s->len + n > s->cap) {
        size_t cap = s->cap == 0 ? 4096 : s->cap;
        uint8_t *nb;
        while (cap < s->len + n)
            cap *= 2;
        if ((nb = sb_realloc(s->buf, cap)) == NULL)
            return SB_ENOMEM;
        s->buf = nb;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, p, n);
    s->len += n;
    return 0;
}

static int mqtt_data(sb_conn *c, const char *data, size_t len)
{
    mqtt_session *s = c->session;
    const uint8_t *p = (const uint8_t *)data;
    size_t used = 0;
    int rc;

    s->last_rx = uv_now(c->adapter->loop);
    if (s->len == 0 && !s->parsing) {
        /* the common case: packets parsed straight from the read buffer */
        s->parsing = 1;
        rc = parse(s, p, len, &used);
        s->parsing = 0;
        if (rc != 0)
            return rc;
        p += used;
        len -= used;
        if (len == 0)
            return 0;
    }
    if (buffer_append(s, p, len) != 0)
        return fail(s, "out of memory");
    /* Reading waits while a stall keeps input unparsed, so the peer's end
     * (EOF) is not read before what it sent first. */
    if (stalled(s) && s->len > 0)
        sb_conn_pause(c);
    return process_input(s);
}

static int mqtt_open(sb_conn *c)
{
    mqtt_session *s = sb_calloc(1, sizeof(*s));
    int64_t max = SB_STREAM_CFG(c->adapter->cfg)->max_message;
    if (s == NULL)
        return SB_ENOMEM;
    s->conn = c;
    s->broker = c->adapter->broker;
    s->max_payload = (size_t)max;
    /* room for the topic and the headers besides the payload */
    s->max_packet = (size_t)max + 65535 + 16;
    s->last_rx = uv_now(c->adapter->loop);
    /* a connection that never sends CONNECT does not hold its slot */
    s->ka_timer = sb_malloc(sizeof(*s->ka_timer));
    if (s->ka_timer == NULL) {
        sb_free(s);
        return SB_ENOMEM;
    }
    uv_timer_init(c->adapter->loop, s->ka_timer);
    s->ka_timer->data = s;
    uv_timer_start(s->ka_timer, on_keep_alive, CONNECT_TIMEOUT_MS, 0);
    snprintf(s->source, sizeof s->source, "%s %s", c->adapter->name, c->peer);
    snprintf(s->who, sizeof s->who, "%s", c->peer);
    sb_conn_ref(c);
    c->session = s;
    return 0;
}

static void on_will_published(void *ctx, int status, uint64_t msg_id, int queues, const char *why)
{
    char *topic = ctx;
    (void)msg_id;
    (void)queues;
    if (status != 0)
        sb_errlog("mqtt", "will to %s not published: %s", topic, why != NULL ? why : "");
    sb_free(topic);
}

static void publish_will(mqtt_session *s)
{
    sb_publish_opts opts = {s->source, s->will_retain, NULL};
    sb_message *m = sb_message_new(s->will_topic, s->will_payload, s->will_len);
    char *topic = sb_strdup(s->will_topic);
    sb_error err;
    if (m == NULL || topic == NULL ||
        (s->will_qos != 1 && sb_message_add_header(m, QOS_HEADER, s->will_qos ? "2" : "0"))) {
        sb_errlog(s->conn->adapter->name, "%s: will not published: out of memory", s->who);
        sb_free(topic);
    } else if (sb_broker_publish(s->broker, m, &opts, on_will_published, topic, &err) != 0) {
        if (err.code != SB_ESHUTDOWN)
            sb_errlog(s->conn->adapter->name, "%s: will not published: %s", s->who, err.msg);
        sb_free(topic);
    } else {
        sb_log(SB_LOG_INFO, s->conn->adapter->name, "%s: published its will to %s", s->who,
               s->will_topic);
    }
    if (m != NULL)
        sb_message_unref(m);
}

static void on_timer_closed(uv_handle_t *h)
{
    mqtt_session *s = h->data;
    sb_free(h);
    s->ka_timer = NULL;
    session_maybe_free(s);
}

static void mqtt_closed(sb_conn *c)
{
    mqtt_session *s = c->session;
    sb_error err;
    s->closed = 1;
    if (s->attached) {
        /* unacknowledged messages stay queued and go out again, with DUP,
         * when the client reconnects */
        sb_broker_detach(s->broker, &s->consumer, 0);
        s->attached = 0;
    }
    fl_clear(s);
    if (s->connected && !s->clean_end && !s->taken_over && s->has_will)
        publish_will(s);
    if (s->owner) {
        sb_broker_session_swap(s->broker, s->client_id, NULL);
        s->owner = 0;
        if (s->clean) {
            char prefix[300];
            sb_broker_unsubscribe(s->broker, s->queue, &err);
            key_prefix(prefix, sizeof prefix, s->client_id);
            sb_broker_key_delete(s->broker, prefix, 1);
        }
    }
    if (s->connected)
        sb_log(SB_LOG_INFO, c->adapter->name, "%s: disconnected%s", s->who,
               s->clean_end ? "" : " without DISCONNECT");
    if (s->ka_timer != NULL && !uv_is_closing((uv_handle_t *)s->ka_timer))
        uv_close((uv_handle_t *)s->ka_timer, on_timer_closed);
    session_maybe_free(s);
}

static void session_maybe_free(mqtt_session *s)
{
    if (!s->closed || s->pending > 0 || s->ka_timer != NULL)
        return;
    subs_free(s);
    fl_clear(s);
    sb_free(s->ring);
    sb_free(s->client_id);
    sb_free(s->queue);
    sb_free(s->user);
    sb_free(s->will_topic);
    sb_free(s->will_payload);
    sb_free(s->buf);
    s->conn->session = NULL;
    sb_conn_unref(s->conn);
    sb_free(s);
}

static void mqtt_drained(sb_conn *c)
{
    mqtt_session *s = c->session;
    consumer_ready(s);
}

/* The bytes of an unfinished packet (a stall keeps reading paused). */
static size_t mqtt_partial(sb_conn *c)
{
    const mqtt_session *s = c->session;
    return s->len;
}

const sb_protocol sb_protocol_mqtt = {
    .name = "mqtt",
    .open = mqtt_open,
    .data = mqtt_data,
    .closed = mqtt_closed,
    .drained = mqtt_drained,
    .partial = mqtt_partial,
};
