/* The MQTT client role: a bridge to an upstream broker (bridge.h). */
#include "adapters/protocol/mqtt/bridge.h"
#include "adapters/protocol/mqtt/mqtt_codec.h"
#include "adapters/stream_keys.h"
#include "service/alloc.h"
#include "service/log.h"
#include "service/platform.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* How long upstream may take to answer CONNECT. */
#define CONNACK_TIMEOUT_MS 10000
/* Imports awaiting their local commit before reading pauses. */
#define MAX_PENDING_IMPORTS 1024
/* The QoS an import was published with (as the MQTT server protocol
 * records it; absent: 1). */
#define QOS_HEADER "mqtt-qos"

typedef struct bridge_session bridge_session;

/* A packet id of ours awaiting its answer. QoS 2: PUBLISHED until PUBREC,
 * RELEASING while that is recorded (the "rel" key), RELEASED from PUBREL
 * to PUBCOMP. */
enum { SLOT_FREE = 0, SLOT_PUBLISHED, SLOT_RELEASING, SLOT_RELEASED, SLOT_SUBSCRIBED };
typedef struct out_slot {
    sb_delivery *d; /* NULL for SUBSCRIBE */
    uint16_t pid;
    uint8_t state;
    uint8_t qos;
} out_slot;

/* An import awaiting its commit; commits complete in order. */
typedef struct in_slot {
    uint16_t pid;
    uint8_t qos;
    uint8_t dropped; /* not imported on purpose: acknowledged in its turn */
} in_slot;

struct sb_mqtt_bridge {
    sb_adapter *adapter;
    sb_stream *st;
    const sb_stream_settings *cfg;
    char *password; /* NULL: none */
    size_t password_len;
    bridge_session *live; /* the session upstream accepted, or NULL */
    char *keys;           /* "$bridge:<adapter>\n": the prefix of its keys */
    unsigned epoch;       /* upstream sessions that started anew (session present 0) */
    uint16_t sub_pid;     /* the packet id of the last SUBSCRIBE */
    char refusal[300];
    int sessions; /* sessions not yet freed (they outlive their connections) */
    /* pacing (rate): exports allowed now, refilled with time */
    uv_timer_t *pace;
    double tokens;
    uint64_t refilled; /* loop time of the last refill */
};

struct bridge_session {
    sb_conn *conn;
    sb_mqtt_bridge *b;
    int accepted; /* CONNACK 0 */
    int closed;
    int parsing;
    int pending; /* local publishes whose commit is outstanding */
    unsigned epoch; /* b->epoch when upstream accepted it */
    /* input not yet parsed */
    uint8_t *buf;
    size_t len, cap, max_packet;
    /* our packet ids in flight: an open-addressing table, by pid */
    out_slot *out;
    size_t out_mask, out_count;
    /* imports awaiting their commit, oldest first */
    in_slot *ring;
    size_t ring_head, ring_count, ring_cap;
    uv_timer_t *timer;
    uint64_t last_rx, last_tx;
    char source[200];
};

static int process_input(bridge_session *s);
static void session_maybe_free(bridge_session *s);

/* ---- the bridge ---- */

static int read_password(sb_mqtt_bridge *b, sb_error *err)
{
    const sb_stream_settings *c = b->cfg;
    char line[1024];
    size_t n;
    if (c->password_env != NULL) {
        const char *v = getenv(c->password_env);
        if (v == NULL)
            return sb_error_set(err, SB_ENOTFOUND, 0,
                                "adapter %s: password_env: the environment variable %s is not set",
                                b->adapter->name, c->password_env);
        snprintf(line, sizeof line, "%s", v);
    } else if (c->password_file != NULL) {
        FILE *f = sb_platform_fopen(c->password_file, "rb");
        if (f == NULL)
            return sb_error_set(err, SB_EIO, 0, "adapter %s: password_file %s: cannot open it",
                                b->adapter->name, c->password_file);
        if (fgets(line, sizeof line, f) == NULL)
            line[0] = '\0';
        fclose(f);
    } else {
        return 0;
    }
    n = strcspn(line, "\r\n"); /* the first line; no newline */
    b->password = sb_malloc(n + 1);
    if (b->password == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    memcpy(b->password, line, n);
    b->password[n] = '\0';
    b->password_len = n;
    return 0;
}

/* Keys of its QoS 2 state in the broker's store, under b->keys
 * ("$bridge:<adapter>\n", the adapter's name: two bridges never share
 * one, whatever their client ids): "in\n<packet id>", an import committed
 * whose PUBREL has not come; "rel\n<message id>", an export upstream
 * answered with PUBREC, whose PUBREL is due. Both belong to the one
 * upstream session of the adapter: a new session voids them. Returns the
 * key to sb_free, or NULL (out of memory). */
static char *bridge_key(const sb_mqtt_bridge *b, const char *kind, uint64_t n)
{
    size_t len = strlen(b->keys) + strlen(kind) + 24;
    char *k = sb_malloc(len);
    if (k != NULL)
        snprintf(k, len, "%s%s\n%" PRIu64, b->keys, kind, n);
    return k;
}

/* Before keys carried the adapter's name, imports were deduplicated under
 * "$bridge\n<client id>\nin\n<packet id>" (shared by bridges with one
 * client id). Those are dropped: an import in flight across the upgrade
 * may come in twice (at least once), never be lost to another's key. */
static int drop_legacy_keys(sb_mqtt_bridge *b)
{
    size_t len = strlen(b->cfg->client_id) + 16;
    char *k = sb_malloc(len);
    if (k == NULL)
        return SB_ENOMEM;
    snprintf(k, len, "$bridge\n%s\nin\n", b->cfg->client_id);
    sb_broker_key_delete(b->adapter->broker, k, 1);
    sb_free(k);
    return 0;
}

int sb_mqtt_bridge_new(sb_mqtt_bridge **out, sb_adapter *a, sb_stream *st, sb_error *err)
{
    sb_mqtt_bridge *b = sb_calloc(1, sizeof(*b));
    size_t len = strlen(a->name) + 16;
    int rc;
    *out = NULL;
    if (b == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    b->adapter = a;
    b->st = st;
    b->cfg = SB_STREAM_CFG(a->cfg);
    if ((b->keys = sb_malloc(len)) == NULL || drop_legacy_keys(b) != 0) {
        sb_mqtt_bridge_free(b);
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    }
    snprintf(b->keys, len, "$bridge:%s\n", a->name);
    if ((rc = read_password(b, err)) != 0) {
        sb_mqtt_bridge_free(b);
        return rc;
    }
    if (b->cfg->rate > 0) {
        if ((b->pace = sb_malloc(sizeof *b->pace)) == NULL) {
            sb_mqtt_bridge_free(b);
            return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
        }
        uv_timer_init(a->loop, b->pace);
        b->pace->data = b;
        st->pending++; /* until sb_mqtt_bridge_stop closes it */
        b->tokens = 1;
        b->refilled = uv_now(a->loop);
    }
    *out = b;
    return 0;
}

void sb_mqtt_bridge_free(sb_mqtt_bridge *b)
{
    if (b == NULL)
        return;
    if (b->password != NULL)
        memset(b->password, 0, b->password_len);
    sb_free(b->password);
    sb_free(b->keys);
    sb_free(b);
}

static void on_pace_closed(uv_handle_t *h)
{
    sb_mqtt_bridge *b = h->data;
    sb_free(h);
    sb_stream_release(b->st);
}

void sb_mqtt_bridge_stop(sb_mqtt_bridge *b)
{
    if (b != NULL && b->pace != NULL) {
        uv_close((uv_handle_t *)b->pace, on_pace_closed);
        b->pace = NULL;
    }
}

static void on_pace(uv_timer_t *t)
{
    sb_mqtt_bridge *b = t->data;
    sb_adapter_sink_ready(b->adapter);
}

/* rate: 1 if an export may go now (pace_take once it went out); else the
 * pace timer makes the adapter ready when the next token is due. Tokens
 * accrue at `rate` per second, at most one second's worth (the burst). */
static int pace_ready(sb_mqtt_bridge *b)
{
    uint64_t now;
    double rate = b->cfg->rate;
    if (b->pace == NULL)
        return 1;
    now = uv_now(b->adapter->loop);
    b->tokens += (double)(now - b->refilled) * rate / 1000.0;
    if (b->tokens > rate)
        b->tokens = rate;
    b->refilled = now;
    if (b->tokens >= 1)
        return 1;
    if (!uv_is_active((uv_handle_t *)b->pace))
        uv_timer_start(b->pace, on_pace, (uint64_t)((1 - b->tokens) * 1000.0 / rate) + 1, 0);
    return 0;
}

static void pace_take(sb_mqtt_bridge *b)
{
    if (b->pace != NULL)
        b->tokens -= 1;
}

const char *sb_mqtt_bridge_refusal(const sb_mqtt_bridge *b)
{
    return b->refusal[0] != '\0' ? b->refusal : NULL;
}

/* ---- sending ---- */

static void send_bytes(bridge_session *s, const uint8_t *p, size_t n)
{
    if (!s->closed && sb_conn_send(s->conn, p, n, NULL) == 0)
        s->last_tx = uv_now(s->conn->adapter->loop);
}

static void send_ack(bridge_session *s, sb_mqtt_type type, uint16_t pid)
{
    uint8_t b[4];
    size_t n;
    if (sb_mqtt_encode_ack(b, sizeof b, &n, type, pid) == 0)
        send_bytes(s, b, n);
}

/* Logs why and closes the connection; returns SB_EPROTO for data(). */
static int fail(bridge_session *s, const char *fmt, ...) SB_PRINTF(2, 3);
static int fail(bridge_session *s, const char *fmt, ...)
{
    char why[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    if (!s->accepted)
        snprintf(s->b->refusal, sizeof s->b->refusal, "%s", why);
    else
        sb_log(SB_LOG_WARN, s->conn->adapter->name, "upstream %s: closing the link: %s",
               s->conn->peer, why);
    sb_conn_close(s->conn, NULL);
    return SB_EPROTO;
}

static int send_connect(bridge_session *s)
{
    const sb_stream_settings *c = s->b->cfg;
    sb_mqtt_connect cn = {0};
    uint8_t *buf;
    size_t need, n;
    sb_mqtt_packet pk = {.type = SB_MQTT_CONNECT};
    cn.clean_session = 0;
    cn.keep_alive = (uint16_t)(c->keep_alive_ms / SB_SECONDS);
    cn.client_id = (sb_mqtt_str){c->client_id, strlen(c->client_id)};
    if (c->username != NULL) {
        cn.has_username = 1;
        cn.username = (sb_mqtt_str){c->username, strlen(c->username)};
    }
    if (s->b->password != NULL) {
        cn.has_password = 1;
        cn.password = (sb_mqtt_bytes){(const uint8_t *)s->b->password, s->b->password_len};
    }
    pk.connect = cn;
    if (sb_mqtt_encoded_size(&pk, &need) != 0)
        return SB_EINVAL;
    if ((buf = sb_malloc(need)) == NULL)
        return SB_ENOMEM;
    if (sb_mqtt_encode_connect(buf, need, &n, &cn) == 0)
        send_bytes(s, buf, n);
    memset(buf, 0, need); /* it held the password */
    sb_free(buf);
    return 0;
}

/* ---- our packet ids ---- */

/* The packet id of an export, from its message id: a delivery that comes
 * back (the link was lost, Switchboard restarted) goes out again with the
 * id it had, as MQTT wants for a resent PUBLISH (and the server protocol
 * does for its deliveries), so upstream can tell a resend from a new
 * message. */
static uint16_t pid_of(uint64_t msg_id)
{
    return (uint16_t)(msg_id % 65535u + 1u);
}

static size_t slot_home(const bridge_session *s, uint16_t pid)
{
    return (size_t)(((uint32_t)pid * 2654435761u) >> 16) & s->out_mask;
}

static out_slot *slot_of(bridge_session *s, uint16_t pid)
{
    for (size_t i = slot_home(s, pid);; i = (i + 1) & s->out_mask) {
        out_slot *o = &s->out[i];
        if (o->state == SLOT_FREE)
            return NULL;
        if (o->pid == pid)
            return o;
    }
}

/* A slot for pid (not in use) to fill, or NULL when the table is full
 * (one slot stays free so that lookups end). */
static out_slot *slot_add(bridge_session *s, uint16_t pid)
{
    size_t i = slot_home(s, pid);
    if (s->out_count >= s->out_mask)
        return NULL;
    while (s->out[i].state != SLOT_FREE)
        i = (i + 1) & s->out_mask;
    s->out_count++;
    s->out[i] = (out_slot){NULL, pid, SLOT_FREE, 0};
    return &s->out[i];
}

/* Frees o, moving later slots of its probe run back (no tombstones);
 * pointers to other slots are stale afterwards. */
static void slot_free(bridge_session *s, out_slot *o)
{
    size_t hole = (size_t)(o - s->out), j = hole, mask = s->out_mask;
    s->out_count--;
    for (;;) {
        size_t home;
        j = (j + 1) & mask;
        if (s->out[j].state == SLOT_FREE)
            break;
        home = slot_home(s, s->out[j].pid);
        /* j stays unless its home is outside (hole, j], cyclically */
        if (((j - home) & mask) >= ((j - hole) & mask)) {
            s->out[hole] = s->out[j];
            hole = j;
        }
    }
    s->out[hole] = (out_slot){0};
}

/* ---- sink: exports ---- */

static int has_prefix(const char *s, const char *prefix)
{
    return prefix != NULL && strncmp(s, prefix, strlen(prefix)) == 0;
}

/* PUBLISH header (fixed header, topic, packet id) in h[0..cap); returns
 * its length, or 0 if the topic does not fit an MQTT packet. */
static size_t publish_header(uint8_t *h, const char *prefix, const char *topic, int qos,
                             int dup, uint16_t pid, size_t payload_len)
{
    size_t plen = prefix != NULL ? strlen(prefix) : 0, tlen = plen + strlen(topic);
    size_t rem = 2 + tlen + 2 + payload_len, n = 0;
    if (tlen > 65535 || rem > SB_MQTT_MAX_REMAINING)
        return 0;
    h[n++] = (uint8_t)(0x30 | (dup ? 0x08 : 0) | (qos << 1));
    do {
        uint8_t byte = rem & 0x7f;
        rem >>= 7;
        h[n++] = (uint8_t)(byte | (rem > 0 ? 0x80 : 0));
    } while (rem > 0);
    h[n++] = (uint8_t)(tlen >> 8);
    h[n++] = (uint8_t)tlen;
    if (plen > 0)
        memcpy(h + n, prefix, plen);
    memcpy(h + n + plen, topic, tlen - plen);
    n += tlen;
    h[n++] = (uint8_t)(pid >> 8);
    h[n++] = (uint8_t)pid;
    return n;
}

/* 1 if upstream answered PUBREC for message id in an earlier session (its
 * "rel" key), 0 if not, -1 out of memory. */
static int released_before(sb_mqtt_bridge *b, uint64_t id)
{
    char *key = bridge_key(b, "rel", id);
    int yes;
    if (key == NULL)
        return -1;
    yes = sb_broker_key_exists(b->adapter->broker, key);
    sb_free(key);
    return yes;
}

int sb_mqtt_bridge_deliver(sb_mqtt_bridge *b, sb_delivery *d)
{
    bridge_session *s = b->live;
    const sb_message *m = d->msg;
    const char *origin = sb_message_header(m, SB_MQTT_BRIDGE_ORIGIN), *topic = m->topic;
    uint8_t small[512], *h = small;
    size_t n, tlen;
    uint16_t pid = pid_of(m->id);
    out_slot *o;
    int qos = b->cfg->qos, rc;

    if (origin != NULL && strcmp(origin, b->adapter->name) == 0) {
        /* imported here: never sent back (loop prevention) */
        sb_delivery_done(d, 0, NULL);
        return 0;
    }
    if (s == NULL || s->closed || s->conn->closing || s->conn->out_paused)
        return SB_EBUSY;
    /* its id still in flight (a message 65535 ids apart): wait for it */
    if (slot_of(s, pid) != NULL || s->out_count >= s->out_mask)
        return SB_EBUSY;
    if (d->redelivery && (rc = released_before(b, m->id)) != 0) {
        if (rc < 0)
            return SB_EBUSY;
        /* upstream holds it since its PUBREC: PUBREL, never the message
         * again (MQTT 3.1.1 4.4: resent with its packet id) */
        *slot_add(s, pid) = (out_slot){d, pid, SLOT_RELEASED, 2};
        send_ack(s, SB_MQTT_PUBREL, pid);
        return 0;
    }
    if (!pace_ready(b))
        return SB_EBUSY;
    if (has_prefix(topic, b->cfg->local_prefix))
        topic += strlen(b->cfg->local_prefix);
    tlen = strlen(topic) + (b->cfg->remote_prefix != NULL ? strlen(b->cfg->remote_prefix) : 0);
    if (tlen + 16 > sizeof small && (h = sb_malloc(tlen + 16)) == NULL)
        return SB_EBUSY;
    n = publish_header(h, b->cfg->remote_prefix, topic, qos, d->redelivery, pid, m->payload_len);
    if (n == 0) {
        if (h != small)
            sb_free(h);
        sb_delivery_done(d, SB_ETOOBIG, "topic or message too long for an MQTT PUBLISH");
        return 0;
    }
    rc = sb_conn_send2(s->conn, h, n, m->payload, m->payload_len, NULL);
    if (h != small)
        sb_free(h);
    if (rc != 0)
        return SB_EBUSY;
    pace_take(b);
    s->last_tx = uv_now(s->conn->adapter->loop);
    o = slot_add(s, pid);
    *o = (out_slot){d, pid, SLOT_PUBLISHED, (uint8_t)qos};
    return 0;
}

/* PUBREC for o: upstream owns the message. Its PUBREL goes out once that
 * is recorded ("rel" key), so that if the link or Switchboard goes down
 * before PUBCOMP the delivery comes back as PUBREL, not as the message
 * again under a packet id upstream still holds. */
typedef struct release_req {
    bridge_session *s;
    char *key;
    uint16_t pid;
} release_req;

static void on_release_recorded(void *ctx, int status)
{
    release_req *r = ctx;
    bridge_session *s = r->s;
    out_slot *o;
    s->pending--;
    if (s->epoch != s->b->epoch) {
        /* upstream started a new session meanwhile: the id is void */
        sb_broker_key_delete(s->conn->adapter->broker, r->key, 0);
    } else if (!s->closed && status != 0) {
        fail(s, "cannot record QoS 2 state: %s", sb_strerror(status));
    } else if (!s->closed && (o = slot_of(s, r->pid)) != NULL && o->state == SLOT_RELEASING) {
        o->state = SLOT_RELEASED;
        send_ack(s, SB_MQTT_PUBREL, r->pid);
    }
    sb_free(r->key);
    sb_free(r);
    session_maybe_free(s);
}

static int record_release(bridge_session *s, out_slot *o)
{
    release_req *r = sb_malloc(sizeof *r);
    if (r == NULL || (r->key = bridge_key(s->b, "rel", o->d->msg->id)) == NULL) {
        sb_free(r);
        return fail(s, "out of memory");
    }
    r->s = s;
    r->pid = o->pid;
    o->state = SLOT_RELEASING;
    if (sb_broker_key_put(s->conn->adapter->broker, r->key, on_release_recorded, r) != 0) {
        sb_free(r->key);
        sb_free(r);
        return fail(s, "cannot record QoS 2 state (broker stopping)");
    }
    s->pending++;
    return 0;
}

static int handle_ack(bridge_session *s, const sb_mqtt_packet *pk)
{
    out_slot *o = slot_of(s, pk->packet_id);
    sb_mqtt_type want = SB_MQTT_PUBACK;
    sb_delivery *d;
    char *key;
    if (o != NULL && o->state == SLOT_PUBLISHED && o->qos == 2)
        want = SB_MQTT_PUBREC;
    else if (o != NULL && o->state == SLOT_RELEASED)
        want = SB_MQTT_PUBCOMP;
    if (o == NULL || o->state == SLOT_SUBSCRIBED || o->state == SLOT_RELEASING ||
        pk->type != want)
        return fail(s, "unexpected %s for packet id %u", sb_mqtt_type_name(pk->type),
                    (unsigned)pk->packet_id);
    if (pk->type == SB_MQTT_PUBREC)
        return record_release(s, o);
    d = o->d;
    key = pk->type == SB_MQTT_PUBCOMP ? bridge_key(s->b, "rel", d->msg->id) : NULL;
    if (pk->type == SB_MQTT_PUBCOMP && key == NULL)
        return fail(s, "out of memory");
    slot_free(s, o);
    /* the ack first: a restart between the two may leave the key behind,
     * never the message without it (it would go again as a new one) */
    sb_delivery_done(d, 0, NULL);
    if (key != NULL && sb_broker_key_exists(s->conn->adapter->broker, key))
        sb_broker_key_delete(s->conn->adapter->broker, key, 0);
    sb_free(key);
    sb_adapter_sink_ready(s->conn->adapter);
    return 0;
}

/* ---- source: imports ---- */

static int ring_reserve(bridge_session *s)
{
    in_slot *r;
    size_t cap;
    if (s->ring_count < s->ring_cap)
        return 0;
    cap = s->ring_cap == 0 ? 16 : s->ring_cap * 2;
    if ((r = sb_malloc(cap * sizeof *r)) == NULL)
        return SB_ENOMEM;
    for (size_t i = 0; i < s->ring_count; i++)
        r[i] = s->ring[(s->ring_head + i) % s->ring_cap];
    sb_free(s->ring);
    s->ring = r;
    s->ring_cap = cap;
    s->ring_head = 0;
    return 0;
}

static void ring_push(bridge_session *s, in_slot slot)
{
    s->ring[(s->ring_head + s->ring_count++) % s->ring_cap] = slot;
}

static in_slot ring_pop(bridge_session *s)
{
    in_slot slot = s->ring[s->ring_head];
    s->ring_head = (s->ring_head + 1) % s->ring_cap;
    s->ring_count--;
    return slot;
}

static void import_ack(bridge_session *s, in_slot slot)
{
    if (slot.qos == 1)
        send_ack(s, SB_MQTT_PUBACK, slot.pid);
    else if (slot.qos == 2)
        send_ack(s, SB_MQTT_PUBREC, slot.pid);
}

static int stalled(const bridge_session *s)
{
    return s->ring_count >= MAX_PENDING_IMPORTS || s->conn->closing;
}

/* Deletes the dedup key of the QoS 2 import under pid: its exchange is
 * over. Returns 0 or SB_ENOMEM. */
static int forget_import(bridge_session *s, uint16_t pid)
{
    char *key = bridge_key(s->b, "in", pid);
    if (key == NULL)
        return SB_ENOMEM;
    if (sb_broker_key_exists(s->conn->adapter->broker, key))
        sb_broker_key_delete(s->conn->adapter->broker, key, 0);
    sb_free(key);
    return 0;
}

static void on_imported(void *ctx, int status, uint64_t msg_id, int queues, const char *why)
{
    bridge_session *s = ctx;
    in_slot slot = ring_pop(s);
    (void)msg_id;
    (void)queues;
    s->pending--;
    if (slot.qos == 2 && status == 0 && s->epoch != s->b->epoch)
        (void)forget_import(s, slot.pid); /* committed after a new session voided it */
    if (!s->closed && !s->conn->closing) {
        if (status != 0) {
            /* no negative acknowledgement in MQTT 3.1.1: upstream sends
             * it again on the next session */
            fail(s, "import not committed: %s", why != NULL ? why : sb_strerror(status));
        } else {
            import_ack(s, slot);
            while (s->ring_count > 0 && s->ring[s->ring_head].dropped)
                import_ack(s, ring_pop(s));
        }
        if (!stalled(s) && s->len > 0)
            process_input(s);
        if (!s->closed && s->conn->paused && !stalled(s))
            sb_conn_resume(s->conn);
    } else {
        while (s->ring_count > 0 && s->ring[s->ring_head].dropped)
            ring_pop(s);
    }
    session_maybe_free(s);
}

/* Acknowledges an upstream message not imported on purpose, after those
 * before it. */
static int import_dropped(bridge_session *s, const sb_mqtt_packet *pk)
{
    in_slot slot = {pk->packet_id, pk->publish.qos, 1};
    if (s->ring_count == 0)
        import_ack(s, slot);
    else if (ring_reserve(s) != 0)
        return fail(s, "out of memory");
    else
        ring_push(s, slot);
    return 0;
}

static int handle_publish(bridge_session *s, const sb_mqtt_packet *pk)
{
    const sb_mqtt_publish *p = &pk->publish;
    const sb_stream_settings *c = s->b->cfg;
    sb_publish_opts opts = {s->source, p->retain, NULL};
    size_t lp = c->local_prefix != NULL ? strlen(c->local_prefix) : 0;
    char tbuf[256], *topic = tbuf, *key = NULL;
    sb_message *m = NULL;
    sb_error err;
    int rc = 0;

    if (p->payload.n > (size_t)c->max_message)
        return fail(s, "PUBLISH of %zu bytes exceeds max_message (%lld bytes)", p->payload.n,
                    (long long)c->max_message);
    if (lp + p->topic.n >= sizeof tbuf && (topic = sb_malloc(lp + p->topic.n + 1)) == NULL)
        return fail(s, "out of memory");
    if (lp > 0)
        memcpy(topic, c->local_prefix, lp);
    memcpy(topic + lp, p->topic.p, p->topic.n);
    topic[lp + p->topic.n] = '\0';
    if (has_prefix(topic + lp, c->remote_prefix) || topic[lp] == '$') {
        /* the upstream echo of an export, or the upstream's own topics */
        sb_log(SB_LOG_DEBUG, s->conn->adapter->name, "not imported: %s", topic + lp);
        rc = import_dropped(s, pk);
        goto done;
    }
    m = sb_message_new(topic, p->payload.p, p->payload.n);
    if (m == NULL || sb_message_add_header(m, SB_MQTT_BRIDGE_ORIGIN, s->conn->adapter->name) != 0 ||
        (p->qos != 1 && sb_message_add_header(m, QOS_HEADER, p->qos ? "2" : "0") != 0) ||
        ring_reserve(s) != 0) {
        rc = fail(s, "out of memory");
        goto done;
    }
    if (p->qos == 2) {
        /* upstream may send it again until it got our PUBREC, even across
         * a restart of either side */
        if ((key = bridge_key(s->b, "in", pk->packet_id)) == NULL) {
            rc = fail(s, "out of memory");
            goto done;
        }
        opts.dedup_key = key;
    }
    if (sb_broker_publish(s->conn->adapter->broker, m, &opts, on_imported, s, &err) != 0) {
        if (err.code == SB_EINVAL) {
            /* a topic the broker refuses will never be accepted: dropped */
            sb_log(SB_LOG_WARN, s->conn->adapter->name, "import from %s dropped: %s",
                   s->conn->peer, err.msg);
            rc = import_dropped(s, pk);
        } else {
            rc = fail(s, "import to %s not accepted: %s", topic, err.msg);
        }
        goto done;
    }
    ring_push(s, (in_slot){pk->packet_id, p->qos, 0});
    s->pending++;
done:
    sb_free(key);
    if (m != NULL)
        sb_message_unref(m);
    if (topic != tbuf)
        sb_free(topic);
    return rc;
}

static void send_subscribe(bridge_session *s)
{
    const sb_stream_settings *c = s->b->cfg;
    sb_mqtt_filter *f;
    uint8_t *buf = NULL;
    size_t need, n;
    uint16_t pid;
    out_slot *o;

    if (c->subscribe_count == 0)
        return;
    if ((f = sb_calloc(c->subscribe_count, sizeof *f)) == NULL) {
        fail(s, "out of memory");
        return;
    }
    for (size_t i = 0; i < c->subscribe_count; i++)
        f[i] = (sb_mqtt_filter){{c->subscribe[i], strlen(c->subscribe[i])}, (uint8_t)c->qos};
    do
        pid = s->b->sub_pid = s->b->sub_pid == 65535 ? 1 : (uint16_t)(s->b->sub_pid + 1);
    while (slot_of(s, pid) != NULL);
    if ((o = slot_add(s, pid)) == NULL) {
        sb_free(f);
        fail(s, "no packet id free for SUBSCRIBE");
        return;
    }
    /* fixed header, packet id, each filter with its length and QoS */
    need = 16;
    for (size_t i = 0; i < c->subscribe_count; i++)
        need += 3 + f[i].filter.n;
    if ((buf = sb_malloc(need)) == NULL ||
        sb_mqtt_encode_subscribe(buf, need, &n, pid, f, c->subscribe_count) != 0) {
        sb_free(buf);
        sb_free(f);
        fail(s, "cannot encode SUBSCRIBE");
        return;
    }
    o->state = SLOT_SUBSCRIBED;
    send_bytes(s, buf, n);
    sb_free(buf);
    sb_free(f);
}

static int handle_suback(bridge_session *s, const sb_mqtt_packet *pk)
{
    const sb_stream_settings *c = s->b->cfg;
    out_slot *o = slot_of(s, pk->packet_id);
    if (o == NULL || o->state != SLOT_SUBSCRIBED)
        return fail(s, "unexpected SUBACK for packet id %u", (unsigned)pk->packet_id);
    slot_free(s, o);
    for (size_t i = 0; i < pk->list.count && i < c->subscribe_count; i++) {
        uint8_t code = pk->list.p[i];
        if (code == SB_MQTT_SUBACK_FAILURE)
            sb_log(SB_LOG_ERROR, s->conn->adapter->name,
                   "upstream %s refused the subscription to %s", s->conn->peer, c->subscribe[i]);
        else
            sb_log(SB_LOG_DEBUG, s->conn->adapter->name, "subscribed upstream to %s (QoS %u)",
                   c->subscribe[i], (unsigned)code);
    }
    return 0;
}

static int handle_pubrel(bridge_session *s, uint16_t pid)
{
    if (forget_import(s, pid) != 0)
        return fail(s, "out of memory"); /* upstream sends PUBREL again */
    send_ack(s, SB_MQTT_PUBCOMP, pid);
    return 0;
}

/* ---- the session ---- */

static const char *connack_reason(uint8_t code)
{
    switch (code) {
    case SB_MQTT_CONNACK_BAD_PROTOCOL:
        return "unacceptable protocol version (the upstream does not speak MQTT 3.1.1)";
    case SB_MQTT_CONNACK_ID_REJECTED:
        return "client identifier rejected";
    case SB_MQTT_CONNACK_UNAVAILABLE:
        return "server unavailable";
    case SB_MQTT_CONNACK_BAD_LOGIN:
        return "bad user name or password";
    case SB_MQTT_CONNACK_NOT_AUTHORIZED:
        return "not authorized";
    default:
        return "unknown return code";
    }
}

static void keep_alive_tick(uv_timer_t *t);

static int handle_connack(bridge_session *s, const sb_mqtt_packet *pk)
{
    sb_mqtt_bridge *b = s->b;
    uint8_t code = pk->connack.return_code;
    int64_t ka = b->cfg->keep_alive_ms;
    if (s->accepted)
        return fail(s, "a second CONNACK");
    if (code != SB_MQTT_CONNACK_ACCEPTED) {
        snprintf(b->refusal, sizeof b->refusal, "upstream refused the connection: CONNACK %u, %s",
                 (unsigned)code, connack_reason(code));
        sb_conn_close(s->conn, NULL);
        return SB_EPROTO;
    }
    s->accepted = 1;
    b->refusal[0] = '\0';
    if (!pk->connack.session_present) {
        /* upstream holds none of our packet ids (nor we of its): exports
         * it answered with PUBREC go again as messages, QoS 2 imports
         * are new; before any delivery of this session */
        b->epoch++;
        sb_broker_key_delete(s->conn->adapter->broker, b->keys, 1);
    }
    s->epoch = b->epoch;
    b->live = s;
    uv_timer_stop(s->timer);
    if (ka > 0)
        uv_timer_start(s->timer, keep_alive_tick, (uint64_t)(ka / 4), (uint64_t)(ka / 4));
    sb_stream_link_up(b->st);
    sb_stream_log_connected(b->st, s->conn,
                            pk->connack.session_present ? ", session present" : ", new session");
    send_subscribe(s);
    sb_adapter_sink_ready(s->conn->adapter);
    return 0;
}

static int handle_packet(bridge_session *s, const sb_mqtt_packet *pk)
{
    if (!s->accepted && pk->type != SB_MQTT_CONNACK)
        return fail(s, "%s before CONNACK", sb_mqtt_type_name(pk->type));
    switch (pk->type) {
    case SB_MQTT_CONNACK:
        return handle_connack(s, pk);
    case SB_MQTT_PUBACK:
    case SB_MQTT_PUBREC:
    case SB_MQTT_PUBCOMP:
        return handle_ack(s, pk);
    case SB_MQTT_PUBLISH:
        return handle_publish(s, pk);
    case SB_MQTT_PUBREL:
        return handle_pubrel(s, pk->packet_id);
    case SB_MQTT_SUBACK:
        return handle_suback(s, pk);
    case SB_MQTT_PINGRESP:
        return 0;
    default:
        return fail(s, "unexpected %s from the server", sb_mqtt_type_name(pk->type));
    }
}

static int parse(bridge_session *s, const uint8_t *p, size_t n, size_t *used)
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
            rc = fail(s, "packet larger than %zu bytes (max_message): %s", s->max_packet,
                      why != NULL ? why : "too big");
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

static int process_input(bridge_session *s)
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
    return rc;
}

static int bridge_data(sb_conn *c, const char *data, size_t len)
{
    bridge_session *s = c->session;
    const uint8_t *p = (const uint8_t *)data;
    size_t used = 0;
    int rc;

    s->last_rx = uv_now(c->adapter->loop);
    if (s->len == 0 && !s->parsing) {
        s->parsing = 1;
        rc = parse(s, p, len, &used);
        s->parsing = 0;
        if (rc != 0 || s->closed)
            return rc;
        p += used;
        len -= used;
        if (len == 0)
            return 0;
    }
    if (s->len + len > s->cap) {
        size_t cap = s->cap == 0 ? 4096 : s->cap;
        uint8_t *nb;
        while (cap < s->len + len)
            cap *= 2;
        if ((nb = sb_realloc(s->buf, cap)) == NULL)
            return fail(s, "out of memory");
        s->buf = nb;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, p, len);
    s->len += len;
    if (stalled(s))
        sb_conn_pause(c);
    return process_input(s);
}

/* Before CONNACK: upstream did not answer. After: keep-alive, a PINGREQ
 * when we sent nothing for a while, and the link is dead when upstream
 * sent nothing for 1.5 keep-alive periods while we were reading (its
 * answers wait unread while imports await their commits or our output is
 * backed up, as on a slow uplink draining a backlog). */
static void keep_alive_tick(uv_timer_t *t)
{
    bridge_session *s = t->data;
    uint64_t now = uv_now(t->loop), ka = (uint64_t)s->b->cfg->keep_alive_ms;
    if (s->closed)
        return;
    if (!s->accepted) {
        fail(s, "no CONNACK within %d s", CONNACK_TIMEOUT_MS / 1000);
        return;
    }
    if (s->conn->paused || s->conn->out_paused)
        s->last_rx = now;
    if (now - s->last_rx >= ka + ka / 2) {
        fail(s, "no answer within %llu s (keep_alive)", (unsigned long long)(ka * 3 / 2000));
        return;
    }
    if (now - s->last_tx >= ka / 2) {
        uint8_t b[2];
        size_t n;
        if (sb_mqtt_encode_empty(b, sizeof b, &n, SB_MQTT_PINGREQ) == 0)
            send_bytes(s, b, n);
    }
}

static int bridge_open(sb_conn *c)
{
    sb_stream *st = c->owner;
    sb_mqtt_bridge *b = st->proto_ctx;
    bridge_session *s = sb_calloc(1, sizeof(*s));
    size_t cap = 1;
    int rc;
    if (s == NULL)
        return SB_ENOMEM;
    /* room for a whole window of publishes, and the SUBSCRIBE */
    while (cap < 2 * (size_t)c->adapter->cfg->inflight + 2 && cap < 65536)
        cap *= 2;
    s->out = sb_calloc(cap, sizeof *s->out);
    s->timer = sb_malloc(sizeof *s->timer);
    if (s->out == NULL || s->timer == NULL) {
        sb_free(s->out);
        sb_free(s->timer);
        sb_free(s);
        return SB_ENOMEM;
    }
    s->out_mask = cap - 1;
    s->conn = c;
    s->b = b;
    s->max_packet = (size_t)b->cfg->max_message + 65535 + 16;
    s->last_rx = s->last_tx = uv_now(c->adapter->loop);
    snprintf(s->source, sizeof s->source, "%s %s", c->adapter->name, c->peer);
    b->refusal[0] = '\0';
    b->sessions++;
    uv_timer_init(c->adapter->loop, s->timer);
    s->timer->data = s;
    uv_timer_start(s->timer, keep_alive_tick, CONNACK_TIMEOUT_MS, 0);
    sb_conn_ref(c);
    c->session = s;
    if ((rc = send_connect(s)) != 0)
        return fail(s, "cannot encode CONNECT (%s)", sb_strerror(rc));
    return 0;
}

static void on_timer_closed(uv_handle_t *h)
{
    bridge_session *s = h->data;
    sb_free(h);
    s->timer = NULL;
    session_maybe_free(s);
}

static void bridge_closed(sb_conn *c)
{
    bridge_session *s = c->session;
    sb_mqtt_bridge *b = s->b;
    s->closed = 1;
    if (b->live == s)
        b->live = NULL;
    if (!s->accepted && b->refusal[0] == '\0')
        snprintf(b->refusal, sizeof b->refusal, "connection closed before CONNACK");
    /* Exports not acknowledged go back to their queue, ahead of the rest,
     * for the next session (the attempt is not counted), where each goes
     * out again with its packet id: the message with DUP, or PUBREL once
     * upstream answered PUBREC. */
    for (size_t i = 0; i <= s->out_mask; i++) {
        out_slot *o = &s->out[i];
        if (o->state != SLOT_FREE && o->state != SLOT_SUBSCRIBED && o->d != NULL)
            sb_delivery_return(o->d, "the link upstream was lost before an acknowledgement");
        *o = (out_slot){0};
    }
    s->out_count = 0;
    if (s->timer != NULL && !uv_is_closing((uv_handle_t *)s->timer))
        uv_close((uv_handle_t *)s->timer, on_timer_closed);
    session_maybe_free(s);
}

static void session_maybe_free(bridge_session *s)
{
    sb_mqtt_bridge *b = s->b;
    if (!s->closed || s->pending > 0 || s->timer != NULL)
        return;
    sb_free(s->out);
    sb_free(s->ring);
    sb_free(s->buf);
    s->conn->session = NULL;
    sb_conn_unref(s->conn);
    sb_free(s);
    b->sessions--;
    sb_stream_maybe_stopped(b->st);
}

int sb_mqtt_bridge_busy(const sb_mqtt_bridge *b)
{
    return b->sessions > 0;
}

static void bridge_drained(sb_conn *c)
{
    (void)c;
    sb_adapter_sink_ready(c->adapter);
}

static size_t bridge_partial(sb_conn *c)
{
    const bridge_session *s = c->session;
    return s->len;
}

const sb_protocol sb_protocol_mqtt_bridge = {
    .name = "mqtt",
    .open = bridge_open,
    .data = bridge_data,
    .closed = bridge_closed,
    .drained = bridge_drained,
    .partial = bridge_partial,
};
