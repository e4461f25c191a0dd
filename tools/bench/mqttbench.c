/*
 * mqttbench: an MQTT 3.1.1 load generator for comparing brokers (Switchboard,
 * Mosquitto) the same way. tools/bench/bench-mqtt.sh runs the comparison.
 *
 * One thread, one epoll loop, non-blocking sockets and the repo's MQTT codec
 * (adapters/protocol/mqtt/mqtt_codec.h): every connection writes all it has
 * in one send (a producer's whole window, a consumer's acknowledgements for
 * everything one read brought), so the generator is not what is measured.
 *
 * A run (--mode all, the default):
 *  1. C consumers connect (clean session, or --persistent) and subscribe to
 *     <prefix>/+ with the run's QoS; all SUBACKs arrive before step 2.
 *  2. P producers connect (clean session) and publish --count messages in all,
 *     split over the topics <prefix>/<producer>, each producer keeping at most
 *     --window QoS 1/2 publishes unacknowledged (packet ids are never reused
 *     while in flight). QoS 0 producers write as fast as the socket takes it.
 *  3. Consumers acknowledge QoS 1 deliveries (PUBACK) and complete QoS 2 ones
 *     (PUBREC, then PUBCOMP for the broker's PUBREL).
 * Measured from the first PUBLISH to the last message received: every
 * consumer must receive every message once. Payloads carry the run id, the
 * producer, a sequence number and the send time (CLOCK_MONOTONIC), so
 * duplicates, missing messages and leftovers of earlier runs (stale: they are
 * acknowledged and ignored) are counted, and the end-to-end latency is known.
 * The publish latency is PUBLISH -> PUBACK (QoS 1) or -> PUBCOMP (QoS 2),
 * timed per packet id; --window 1 gives the one-at-a-time latency.
 *
 * Phases for crash tests (kill -9 between them), sharing --run-id:
 *   --mode sub    consumers connect, subscribe and disconnect (use with
 *                 --persistent: the broker keeps the sessions)
 *   --mode pub    producers publish --count messages and wait for every ack
 *   --mode drain  consumers reconnect (without subscribing again) and count
 *                 what the broker still delivers of run --run-id; ends when
 *                 all --count arrived or nothing arrived for --timeout s
 * The phases must be given the same --run-id, --producers, --count,
 * --id-prefix and --topic-prefix. tools/bench/bench-mqtt.sh --kill9 runs them.
 *
 * Output: a human summary, then one machine-readable line
 *   RESULT msgs_per_s=... p50_us=... p99_us=... lost=0 dup=0 ...
 * Exit status: 0 when every expected message arrived (every ack, in pub
 * mode), 1 on loss, a protocol error or a failure, 2 on bad usage.
 */
#include "adapters/protocol/mqtt/mqtt_codec.h"
#include "service/alloc.h"
#include "service/error.h"
#include "tools/sbctl/samples.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* Run id, producer, sequence, send time: the start of every payload. */
#define PAYLOAD_HEADER 20
/* Producers stop encoding while this much is still unsent (QoS 0 mostly). */
#define OUT_HIGH_WATER (256u * 1024)
#define READ_CHUNK (256u * 1024)
#define KEEPALIVE_S 60

typedef enum { MODE_ALL, MODE_SUB, MODE_PUB, MODE_DRAIN } run_mode;

typedef struct options {
    const char *host;
    const char *port;
    const char *unix_path;
    int qos;
    uint64_t count;
    size_t size;
    int producers;
    int consumers;
    int window;
    int batch;
    int clean;
    double timeout_s;
    run_mode mode;
    uint32_t run_id;
    const char *id_prefix;
    const char *topic_prefix;
    int trace;
} options;

typedef enum { ROLE_PRODUCER, ROLE_CONSUMER } conn_role;

typedef enum {
    ST_CONNECTING, /* CONNECT sent, waiting for CONNACK */
    ST_SUBSCRIBING,
    ST_READY,
    ST_CLOSED
} conn_state;

/* In-flight state of a producer's packet id. */
enum { ID_FREE = 0, ID_WAIT_ACK = 1, ID_WAIT_COMP = 2 };

typedef struct conn {
    int fd;
    int idx;
    conn_role role;
    conn_state st;
    int epoll_out; /* EPOLLOUT is registered */
    uint8_t *in;
    size_t in_len, in_cap;
    uint8_t *out;
    size_t out_off, out_len, out_cap;
    int64_t last_send_ns;
    uint64_t packets_in;
    int session_present;

    /* producer */
    char topic[128];
    size_t topic_len;
    uint64_t to_send, sent, acked;
    int inflight;
    uint16_t next_id;
    uint8_t *id_state;   /* [65536] */
    int64_t *id_sent_ns; /* [65536] */

    /* consumer */
    uint8_t **seen;   /* per producer: one bit per sequence number */
    int64_t *highest; /* per producer: highest sequence number seen, -1 */
    uint64_t unique, dups, stale, wrong_qos, reordered;
} conn;

typedef struct bench {
    options o;
    int ep;
    conn *conns; /* consumers first, then producers */
    int nconns;
    uint64_t *share; /* messages per producer */
    uint8_t *payload;
    int publishing;
    int failed;
    int64_t t0, t_last_delivery, t_last_ack, last_progress;
    uint64_t delivered_unique, expected_deliveries, acked_total, proto_errors;
    uint64_t sends, recvs;
    sbctl_samples ack_lat, e2e_lat;
} bench;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)v);
    put32(p + 4, (uint32_t)(v >> 32));
}

static uint64_t get64(const uint8_t *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static const char *role_name(const conn *c)
{
    return c->role == ROLE_PRODUCER ? "producer" : "consumer";
}

static void fail(bench *b, const conn *c, const char *fmt, ...) SB_PRINTF(3, 4);

/* A failure that ends the run: printed at once, with the connection. */
static void fail(bench *b, const conn *c, const char *fmt, ...)
{
    va_list ap;
    if (c != NULL)
        fprintf(stderr, "mqttbench: %s %d: ", role_name(c), c->idx);
    else
        fprintf(stderr, "mqttbench: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    b->failed = 1;
}

static void trace_packet(const bench *b, const conn *c, const char *dir, const sb_mqtt_packet *p)
{
    if (!b->o.trace)
        return;
    fprintf(stderr, "%s %d %s %s", role_name(c), c->idx, dir, sb_mqtt_type_name(p->type));
    if (p->type == SB_MQTT_PUBLISH)
        fprintf(stderr, " qos=%d dup=%d retain=%d topic=%.*s len=%zu", p->publish.qos,
                p->publish.dup, p->publish.retain, (int)p->publish.topic.n, p->publish.topic.p,
                p->publish.payload.n);
    if (p->packet_id != 0)
        fprintf(stderr, " id=%u", p->packet_id);
    if (p->type == SB_MQTT_CONNACK)
        fprintf(stderr, " sp=%d rc=%d", p->connack.session_present, p->connack.return_code);
    if (p->type == SB_MQTT_SUBACK && p->list.n > 0)
        fprintf(stderr, " rc=0x%02x", p->list.p[0]);
    fputc('\n', stderr);
}

/* ---- output buffer ---- */

/* Makes room for n more bytes at out + out_len. */
static int out_reserve(conn *c, size_t n)
{
    if (c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    if (c->out_cap - c->out_len >= n)
        return 0;
    if (c->out_off > 0) {
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->out_off = 0;
        if (c->out_cap - c->out_len >= n)
            return 0;
    }
    size_t ncap = c->out_cap ? c->out_cap : 64 * 1024;
    while (ncap - c->out_len < n)
        ncap *= 2;
    uint8_t *p = sb_realloc(c->out, ncap);
    if (p == NULL)
        return SB_ENOMEM;
    c->out = p;
    c->out_cap = ncap;
    return 0;
}

/* Appends the encoding of p (for --trace, the decoded view is p itself). */
static int send_packet(bench *b, conn *c, const sb_mqtt_packet *p)
{
    size_t n;
    int rc = sb_mqtt_encoded_size(p, &n);
    if (rc == 0)
        rc = out_reserve(c, n);
    if (rc == 0)
        rc = sb_mqtt_encode(c->out + c->out_len, c->out_cap - c->out_len, &n, p);
    if (rc != 0) {
        fail(b, c, "cannot encode %s: %s", sb_mqtt_type_name(p->type), sb_strerror(rc));
        return rc;
    }
    c->out_len += n;
    trace_packet(b, c, "->", p);
    return 0;
}

static int send_ack(bench *b, conn *c, sb_mqtt_type type, uint16_t id)
{
    sb_mqtt_packet p;
    memset(&p, 0, sizeof(p));
    p.type = type;
    p.packet_id = id;
    return send_packet(b, c, &p);
}

static void set_epoll_out(bench *b, conn *c, int want)
{
    struct epoll_event ev;
    if (c->fd < 0 || want == c->epoll_out)
        return;
    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN | (want ? EPOLLOUT : 0);
    ev.data.ptr = c;
    if (epoll_ctl(b->ep, EPOLL_CTL_MOD, c->fd, &ev) != 0)
        fail(b, c, "epoll_ctl: %s", strerror(errno));
    c->epoll_out = want;
}

static void close_conn(bench *b, conn *c)
{
    if (c->fd >= 0) {
        epoll_ctl(b->ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->st = ST_CLOSED;
}

/* Writes what is pending, as much as the socket takes. */
static int flush_out(bench *b, conn *c)
{
    while (c->fd >= 0 && c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            fail(b, c, "send: %s", strerror(errno));
            close_conn(b, c);
            return SB_EIO;
        }
        c->out_off += (size_t)n;
        c->last_send_ns = now_ns();
        b->sends++;
    }
    if (c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    return 0;
}

/* ---- producers ---- */

static uint16_t alloc_packet_id(conn *c)
{
    /* Terminates: fewer than 65535 ids are ever in flight (--window). */
    for (;;) {
        uint16_t id = c->next_id++;
        if (c->next_id == 0)
            c->next_id = 1;
        if (id != 0 && c->id_state[id] == ID_FREE)
            return id;
    }
}

/* Encodes as many publishes as the window (QoS > 0) or the output high-water
 * mark (QoS 0) allows. */
static int fill_producer(bench *b, conn *c)
{
    const options *o = &b->o;
    sb_mqtt_publish pub;
    memset(&pub, 0, sizeof(pub));
    pub.qos = (uint8_t)o->qos;
    pub.topic.p = c->topic;
    pub.topic.n = c->topic_len;
    pub.payload.p = b->payload;
    pub.payload.n = o->size;

    /* Write in batches: fewer, larger sends cost the broker (and loopback
     * TCP, which the sender pays for) less than one send per PUBACK. */
    if (o->qos > 0 && c->inflight > 0 && o->window - c->inflight < o->batch)
        return 0;

    while (c->sent < c->to_send && c->out_len - c->out_off < OUT_HIGH_WATER &&
           (o->qos == 0 || c->inflight < o->window)) {
        uint16_t id = 0;
        size_t n;
        int64_t t = now_ns();
        if (b->t0 == 0)
            b->t0 = t;
        put32(b->payload, o->run_id);
        put32(b->payload + 4, (uint32_t)c->idx);
        put32(b->payload + 8, (uint32_t)c->sent);
        put64(b->payload + 12, (uint64_t)t);
        if (o->qos > 0) {
            id = alloc_packet_id(c);
            c->id_state[id] = ID_WAIT_ACK;
            c->id_sent_ns[id] = t;
            c->inflight++;
        }
        int rc = out_reserve(c, o->size + c->topic_len + 16);
        if (rc == 0)
            rc = sb_mqtt_encode_publish(c->out + c->out_len, c->out_cap - c->out_len, &n, &pub, id);
        if (rc != 0) {
            fail(b, c, "cannot encode PUBLISH: %s", sb_strerror(rc));
            return rc;
        }
        c->out_len += n;
        c->sent++;
        if (b->o.trace) {
            sb_mqtt_packet p;
            memset(&p, 0, sizeof(p));
            p.type = SB_MQTT_PUBLISH;
            p.publish = pub;
            p.packet_id = id;
            trace_packet(b, c, "->", &p);
        }
        if (o->qos == 0) {
            c->acked++;
            b->acked_total++;
            b->t_last_ack = t;
        }
    }
    return 0;
}

static void producer_done_one(bench *b, conn *c, uint16_t id)
{
    int64_t t = now_ns();
    sbctl_samples_add(&b->ack_lat, t - c->id_sent_ns[id]);
    c->id_state[id] = ID_FREE;
    c->inflight--;
    c->acked++;
    b->acked_total++;
    b->t_last_ack = t;
    b->last_progress = t;
}

static void on_producer_packet(bench *b, conn *c, const sb_mqtt_packet *p)
{
    uint16_t id = p->packet_id;
    switch (p->type) {
    case SB_MQTT_PUBACK:
        if (b->o.qos != 1 || c->id_state[id] != ID_WAIT_ACK) {
            b->proto_errors++;
            fail(b, c, "PUBACK id %u: no QoS 1 PUBLISH in flight with that id", id);
            return;
        }
        producer_done_one(b, c, id);
        return;
    case SB_MQTT_PUBREC:
        if (b->o.qos != 2 || c->id_state[id] == ID_FREE) {
            b->proto_errors++;
            fail(b, c, "PUBREC id %u: no QoS 2 PUBLISH in flight with that id", id);
            return;
        }
        c->id_state[id] = ID_WAIT_COMP;
        send_ack(b, c, SB_MQTT_PUBREL, id);
        return;
    case SB_MQTT_PUBCOMP:
        if (b->o.qos != 2 || c->id_state[id] != ID_WAIT_COMP) {
            b->proto_errors++;
            fail(b, c, "PUBCOMP id %u: no PUBREL sent for that id", id);
            return;
        }
        producer_done_one(b, c, id);
        return;
    default:
        b->proto_errors++;
        fail(b, c, "unexpected %s from the broker", sb_mqtt_type_name(p->type));
        return;
    }
}

/* ---- consumers ---- */

static void on_consumer_publish(bench *b, conn *c, const sb_mqtt_packet *p)
{
    const options *o = &b->o;
    const sb_mqtt_publish *pub = &p->publish;
    int64_t t = now_ns();

    if (pub->qos == 1)
        send_ack(b, c, SB_MQTT_PUBACK, p->packet_id);
    else if (pub->qos == 2)
        send_ack(b, c, SB_MQTT_PUBREC, p->packet_id);

    if (pub->payload.n < PAYLOAD_HEADER || get32(pub->payload.p) != o->run_id ||
        get32(pub->payload.p + 4) >= (uint32_t)o->producers ||
        get32(pub->payload.p + 8) >= b->share[get32(pub->payload.p + 4)]) {
        c->stale++;
        return;
    }
    if (pub->qos != o->qos)
        c->wrong_qos++;
    uint32_t prod = get32(pub->payload.p + 4), seq = get32(pub->payload.p + 8);
    uint8_t *bits = c->seen[prod];
    if (bits[seq >> 3] & (1u << (seq & 7))) {
        c->dups++;
        return;
    }
    bits[seq >> 3] |= (uint8_t)(1u << (seq & 7));
    /* MQTT keeps the order of a topic's messages at QoS 1 and 2 (3.1.1
     * section 4.6); a first delivery behind a later one breaks it. */
    if ((int64_t)seq < c->highest[prod])
        c->reordered++;
    else
        c->highest[prod] = seq;
    c->unique++;
    b->delivered_unique++;
    b->t_last_delivery = t;
    b->last_progress = t;
    if (o->mode == MODE_ALL)
        sbctl_samples_add(&b->e2e_lat, t - (int64_t)get64(pub->payload.p + 12));
}

static void on_consumer_packet(bench *b, conn *c, const sb_mqtt_packet *p)
{
    switch (p->type) {
    case SB_MQTT_PUBLISH:
        on_consumer_publish(b, c, p);
        return;
    case SB_MQTT_PUBREL:
        send_ack(b, c, SB_MQTT_PUBCOMP, p->packet_id);
        return;
    case SB_MQTT_SUBACK:
        if (c->st != ST_SUBSCRIBING || p->packet_id != 1) {
            b->proto_errors++;
            fail(b, c, "unexpected SUBACK id %u", p->packet_id);
            return;
        }
        if (p->list.count != 1 || p->list.p[0] == SB_MQTT_SUBACK_FAILURE) {
            fail(b, c, "subscription refused (SUBACK return code 0x%02x)", p->list.p[0]);
            return;
        }
        if (p->list.p[0] != b->o.qos)
            fprintf(stderr, "mqttbench: consumer %d: broker granted QoS %d (asked %d)\n", c->idx,
                    p->list.p[0], b->o.qos);
        c->st = ST_READY;
        return;
    default:
        b->proto_errors++;
        fail(b, c, "unexpected %s from the broker", sb_mqtt_type_name(p->type));
        return;
    }
}

/* ---- connections ---- */

static void on_connack(bench *b, conn *c, const sb_mqtt_packet *p)
{
    if (c->st != ST_CONNECTING) {
        b->proto_errors++;
        fail(b, c, "second CONNACK");
        return;
    }
    if (p->connack.return_code != SB_MQTT_CONNACK_ACCEPTED) {
        fail(b, c, "connection refused (CONNACK return code %d)", p->connack.return_code);
        close_conn(b, c);
        return;
    }
    c->session_present = p->connack.session_present;
    if (c->role == ROLE_CONSUMER && b->o.mode != MODE_DRAIN) {
        char filter[140];
        sb_mqtt_filter f;
        size_t n;
        memset(&f, 0, sizeof(f));
        f.filter.p = filter;
        f.filter.n = (size_t)snprintf(filter, sizeof(filter), "%s/+", b->o.topic_prefix);
        f.qos = (uint8_t)b->o.qos;
        int rc = out_reserve(c, f.filter.n + 16);
        if (rc == 0)
            rc = sb_mqtt_encode_subscribe(c->out + c->out_len, c->out_cap - c->out_len, &n, 1, &f,
                                          1);
        if (rc != 0) {
            fail(b, c, "cannot encode SUBSCRIBE: %s", sb_strerror(rc));
            return;
        }
        c->out_len += n;
        if (b->o.trace)
            fprintf(stderr, "consumer %d -> SUBSCRIBE id=1 %s qos=%d\n", c->idx, filter, f.qos);
        c->st = ST_SUBSCRIBING;
    } else {
        c->st = ST_READY;
    }
}

static void on_packet(bench *b, conn *c, const sb_mqtt_packet *p)
{
    c->packets_in++;
    trace_packet(b, c, "<-", p);
    if (p->type == SB_MQTT_CONNACK) {
        on_connack(b, c, p);
        return;
    }
    if (p->type == SB_MQTT_PINGRESP)
        return;
    if (c->st == ST_CONNECTING) {
        b->proto_errors++;
        fail(b, c, "%s before CONNACK", sb_mqtt_type_name(p->type));
        return;
    }
    if (c->role == ROLE_PRODUCER)
        on_producer_packet(b, c, p);
    else
        on_consumer_packet(b, c, p);
}

/* Reads what is there, handles every complete packet, then refills and
 * flushes (the acknowledgements of one read go out in one send). */
static void on_readable(bench *b, conn *c)
{
    for (;;) {
        if (c->in_cap - c->in_len < READ_CHUNK / 4) {
            size_t ncap = c->in_cap ? c->in_cap * 2 : READ_CHUNK;
            uint8_t *p = sb_realloc(c->in, ncap);
            if (p == NULL) {
                fail(b, c, "out of memory");
                return;
            }
            c->in = p;
            c->in_cap = ncap;
        }
        ssize_t n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (n <= 0) {
            fail(b, c, "connection closed by the broker (%s) after %llu packets received",
                 n == 0 ? "EOF" : strerror(errno), (unsigned long long)c->packets_in);
            close_conn(b, c);
            return;
        }
        c->in_len += (size_t)n;
        b->recvs++;

        size_t pos = 0;
        while (pos < c->in_len && c->fd >= 0) {
            sb_mqtt_packet p;
            size_t used = 0;
            const char *why = NULL;
            int rc = sb_mqtt_decode(c->in + pos, c->in_len - pos, 0, &p, &used, &why);
            if (rc == SB_MQTT_NEED_MORE)
                break;
            if (rc != 0) {
                b->proto_errors++;
                fail(b, c, "malformed packet from the broker (first byte 0x%02x): %s", c->in[pos],
                     why ? why : sb_strerror(rc));
                close_conn(b, c);
                return;
            }
            on_packet(b, c, &p);
            pos += used;
        }
        if (c->fd < 0)
            return;
        memmove(c->in, c->in + pos, c->in_len - pos);
        c->in_len -= pos;
        if ((size_t)n < READ_CHUNK / 4)
            break; /* drained: don't spend a syscall on EAGAIN */
    }
}

static void pump(bench *b, conn *c)
{
    if (c->fd < 0)
        return;
    if (c->role == ROLE_PRODUCER && b->publishing && c->st == ST_READY)
        fill_producer(b, c);
    flush_out(b, c);
    int want = c->out_off < c->out_len ||
               (c->role == ROLE_PRODUCER && b->publishing && b->o.qos == 0 && c->sent < c->to_send);
    set_epoll_out(b, c, want);
}

static int open_socket(bench *b, conn *c)
{
    const options *o = &b->o;
    int fd = -1;

    if (o->unix_path != NULL) {
        struct sockaddr_un sa;
        memset(&sa, 0, sizeof(sa));
        sa.sun_family = AF_UNIX;
        if (strlen(o->unix_path) >= sizeof(sa.sun_path)) {
            fail(b, c, "unix socket path too long: %s", o->unix_path);
            return SB_EINVAL;
        }
        strcpy(sa.sun_path, o->unix_path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
            fail(b, c, "connect %s: %s", o->unix_path, strerror(errno));
            if (fd >= 0)
                close(fd);
            return SB_ECONNREFUSED;
        }
    } else {
        struct addrinfo hints, *res = NULL, *ai;
        memset(&hints, 0, sizeof(hints));
        hints.ai_socktype = SOCK_STREAM;
        int rc = getaddrinfo(o->host, o->port, &hints, &res);
        if (rc != 0) {
            fail(b, c, "%s:%s: %s", o->host, o->port, gai_strerror(rc));
            return SB_EINVAL;
        }
        int err = 0;
        for (ai = res; ai != NULL; ai = ai->ai_next) {
            fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
            if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
                break;
            err = errno;
            if (fd >= 0)
                close(fd);
            fd = -1;
        }
        freeaddrinfo(res);
        if (fd < 0) {
            fail(b, c, "connect %s:%s: %s", o->host, o->port, strerror(err));
            return SB_ECONNREFUSED;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    c->fd = fd;
    c->last_send_ns = now_ns();

    struct epoll_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN;
    ev.data.ptr = c;
    if (epoll_ctl(b->ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
        fail(b, c, "epoll_ctl: %s", strerror(errno));
        return SB_EIO;
    }
    return 0;
}

static int start_conn(bench *b, conn *c)
{
    char id[160];
    sb_mqtt_packet p;
    int rc = open_socket(b, c);
    if (rc != 0)
        return rc;
    int n = snprintf(id, sizeof(id), "%s-%c%d", b->o.id_prefix,
                     c->role == ROLE_PRODUCER ? 'p' : 'c', c->idx);
    memset(&p, 0, sizeof(p));
    p.type = SB_MQTT_CONNECT;
    p.connect.clean_session = c->role == ROLE_PRODUCER ? 1 : (uint8_t)b->o.clean;
    p.connect.keep_alive = KEEPALIVE_S;
    p.connect.client_id.p = id;
    p.connect.client_id.n = (size_t)n;
    c->st = ST_CONNECTING;
    rc = send_packet(b, c, &p);
    if (rc == 0)
        pump(b, c);
    return rc;
}

/* ---- the loop ---- */

typedef int (*done_fn)(const bench *b);

static int all_ready(const bench *b, conn_role role)
{
    for (int i = 0; i < b->nconns; i++)
        if (b->conns[i].role == role && b->conns[i].st != ST_READY)
            return 0;
    return 1;
}

static int consumers_ready(const bench *b)
{
    return all_ready(b, ROLE_CONSUMER);
}

static int producers_ready(const bench *b)
{
    return all_ready(b, ROLE_PRODUCER);
}

static int all_acked(const bench *b)
{
    return b->acked_total == b->o.count;
}

static int all_delivered(const bench *b)
{
    return b->delivered_unique == b->expected_deliveries;
}

static int run_done(const bench *b)
{
    return all_acked(b) && all_delivered(b);
}

/* Runs the loop until done(b), a failure, or --timeout seconds without
 * progress (a received message or acknowledgement, or a state change). */
static int run_loop(bench *b, done_fn done)
{
    struct epoll_event evs[64];
    int64_t timeout = (int64_t)(b->o.timeout_s * 1e9);
    b->last_progress = now_ns();

    while (!done(b)) {
        if (b->failed)
            return SB_EIO;
        int n = epoll_wait(b->ep, evs, 64, 100);
        if (n < 0 && errno != EINTR) {
            fail(b, NULL, "epoll_wait: %s", strerror(errno));
            return SB_EIO;
        }
        for (int i = 0; i < n; i++) {
            conn *c = evs[i].data.ptr;
            if (c->fd < 0)
                continue;
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                conn_state before = c->st;
                on_readable(b, c);
                if (c->st != before)
                    b->last_progress = now_ns();
            }
            pump(b, c);
        }
        int64_t t = now_ns();
        for (int i = 0; i < b->nconns; i++) {
            conn *c = &b->conns[i];
            if (c->fd >= 0 && t - c->last_send_ns > (int64_t)KEEPALIVE_S / 2 * 1000000000) {
                send_ack(b, c, SB_MQTT_PINGREQ, 0);
                pump(b, c);
            }
        }
        if (t - b->last_progress > timeout)
            return SB_ETIMEDOUT;
    }
    return 0;
}

/* DISCONNECT, half-close, then wait (up to 2 s) for the broker to close its
 * side: a close() with unread input would reset the connection, and the
 * broker could lose the last acknowledgements still in its socket buffer. */
static void disconnect_all(bench *b)
{
    int64_t deadline = now_ns() + 2000000000;
    int open = 0;
    for (int i = 0; i < b->nconns; i++) {
        conn *c = &b->conns[i];
        if (c->fd < 0)
            continue;
        fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) & ~O_NONBLOCK);
        if (send_ack(b, c, SB_MQTT_DISCONNECT, 0) == 0)
            flush_out(b, c);
        fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
        set_epoll_out(b, c, 0);
        if (c->fd >= 0 && shutdown(c->fd, SHUT_WR) == 0)
            open++;
        else
            close_conn(b, c);
    }
    while (open > 0 && now_ns() < deadline) {
        struct epoll_event evs[64];
        int n = epoll_wait(b->ep, evs, 64, 100);
        for (int i = 0; i < n; i++) {
            conn *c = evs[i].data.ptr;
            uint8_t sink[4096];
            if (c->fd < 0)
                continue;
            ssize_t r;
            while ((r = recv(c->fd, sink, sizeof(sink), 0)) > 0)
                ;
            if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
                close_conn(b, c);
                open--;
            }
        }
    }
    for (int i = 0; i < b->nconns; i++)
        close_conn(b, &b->conns[i]);
}

/* ---- setup and report ---- */

static int setup(bench *b)
{
    const options *o = &b->o;
    int np = o->mode == MODE_ALL || o->mode == MODE_PUB ? o->producers : 0;
    int nc = o->mode == MODE_PUB ? 0 : o->consumers;

    b->ep = epoll_create1(EPOLL_CLOEXEC);
    b->share = sb_calloc((size_t)o->producers, sizeof(*b->share));
    b->payload = sb_calloc(1, o->size);
    b->conns = sb_calloc((size_t)(np + nc), sizeof(*b->conns));
    if (b->ep < 0 || b->share == NULL || b->payload == NULL || b->conns == NULL)
        return SB_ENOMEM;
    for (size_t i = PAYLOAD_HEADER; i < o->size; i++)
        b->payload[i] = (uint8_t)('a' + i % 26);
    for (int p = 0; p < o->producers; p++)
        b->share[p] = o->count / (uint64_t)o->producers +
                      ((uint64_t)p < o->count % (uint64_t)o->producers ? 1 : 0);
    b->nconns = np + nc;
    b->expected_deliveries = o->count * (uint64_t)nc;

    for (int i = 0; i < b->nconns; i++) {
        conn *c = &b->conns[i];
        c->fd = -1;
        c->role = i < nc ? ROLE_CONSUMER : ROLE_PRODUCER;
        c->idx = i < nc ? i : i - nc;
        c->st = ST_CLOSED;
        if (c->role == ROLE_PRODUCER) {
            int n = snprintf(c->topic, sizeof(c->topic), "%s/%d", o->topic_prefix, c->idx);
            c->topic_len = (size_t)n;
            c->to_send = b->share[c->idx];
            c->next_id = 1;
            c->id_state = sb_calloc(65536, 1);
            c->id_sent_ns = sb_calloc(65536, sizeof(*c->id_sent_ns));
            if (c->id_state == NULL || c->id_sent_ns == NULL)
                return SB_ENOMEM;
        } else {
            c->seen = sb_calloc((size_t)o->producers, sizeof(*c->seen));
            c->highest = sb_malloc((size_t)o->producers * sizeof(*c->highest));
            if (c->seen == NULL || c->highest == NULL)
                return SB_ENOMEM;
            for (int p = 0; p < o->producers; p++) {
                c->highest[p] = -1;
                c->seen[p] = sb_calloc(b->share[p] / 8 + 1, 1);
                if (c->seen[p] == NULL)
                    return SB_ENOMEM;
            }
        }
    }
    if (sbctl_samples_reserve(&b->ack_lat, o->qos > 0 ? o->count : 0) != 0 ||
        sbctl_samples_reserve(&b->e2e_lat, o->mode == MODE_ALL ? b->expected_deliveries : 0) != 0)
        return SB_ENOMEM;
    return 0;
}

static void teardown(bench *b)
{
    for (int i = 0; i < b->nconns; i++) {
        conn *c = &b->conns[i];
        if (c->fd >= 0)
            close(c->fd);
        sb_free(c->in);
        sb_free(c->out);
        sb_free(c->id_state);
        sb_free(c->id_sent_ns);
        if (c->seen != NULL)
            for (int p = 0; p < b->o.producers; p++)
                sb_free(c->seen[p]);
        sb_free(c->seen);
        sb_free(c->highest);
    }
    sb_free(b->conns);
    sb_free(b->share);
    sb_free(b->payload);
    sbctl_samples_free(&b->ack_lat);
    sbctl_samples_free(&b->e2e_lat);
    if (b->ep >= 0)
        close(b->ep);
}

static double us(int64_t ns)
{
    return ns < 0 ? -1.0 : (double)ns / 1000.0;
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* Per consumer: what is missing (the first missing message names where). */
static uint64_t report_consumers(const bench *b, uint64_t *dups, uint64_t *stale,
                                 uint64_t *reordered, int quiet)
{
    uint64_t lost = 0;
    *dups = *stale = *reordered = 0;
    for (int i = 0; i < b->nconns; i++) {
        const conn *c = &b->conns[i];
        if (c->role != ROLE_CONSUMER)
            continue;
        uint64_t missing = b->o.count - c->unique;
        lost += missing;
        *dups += c->dups;
        *stale += c->stale;
        *reordered += c->reordered;
        if (c->reordered > 0)
            fprintf(stderr, "mqttbench: consumer %d: %llu messages delivered out of order\n",
                    c->idx, (unsigned long long)c->reordered);
        if (c->wrong_qos > 0)
            fprintf(stderr, "mqttbench: consumer %d: %llu deliveries at a QoS other than %d\n",
                    c->idx, (unsigned long long)c->wrong_qos, b->o.qos);
        if (missing == 0 || quiet)
            continue;
        int fp = -1;
        uint64_t fs = 0;
        for (int p = 0; p < b->o.producers && fp < 0; p++)
            for (uint64_t s = 0; s < b->share[p]; s++)
                if (!(c->seen[p][s >> 3] & (1u << (s & 7)))) {
                    fp = p;
                    fs = s;
                    break;
                }
        fprintf(stderr,
                "mqttbench: consumer %d: received %llu of %llu (%llu missing, first: "
                "producer %d seq %llu), %llu duplicates\n",
                c->idx, (unsigned long long)c->unique, (unsigned long long)b->o.count,
                (unsigned long long)missing, fp, (unsigned long long)fs,
                (unsigned long long)c->dups);
    }
    return lost;
}

static int report(bench *b, int loop_rc)
{
    const options *o = &b->o;
    uint64_t dups, stale, reord,
        lost = report_consumers(b, &dups, &stale, &reord, o->mode == MODE_SUB);
    double gen_cpu = cpu_seconds();

    if (loop_rc == SB_ETIMEDOUT)
        fprintf(stderr, "mqttbench: no progress for %.1f s; giving up\n", o->timeout_s);

    if (o->mode == MODE_SUB) {
        printf("subscribed %d consumer(s) to %s/+ at QoS %d (%s session)\n", o->consumers,
               o->topic_prefix, o->qos, o->clean ? "clean" : "persistent");
        printf("RESULT subscribed=%d ok=%d\n", o->consumers, loop_rc == 0 && !b->failed);
        return loop_rc == 0 && !b->failed ? 0 : 1;
    }
    if (o->mode == MODE_DRAIN) {
        int sp = 1;
        for (int i = 0; i < b->nconns; i++)
            sp &= b->conns[i].session_present;
        printf("drain: run %u: received %llu of %llu expected deliveries (%llu lost, %llu "
               "duplicates, %llu stale), session present: %s\n",
               o->run_id, (unsigned long long)b->delivered_unique,
               (unsigned long long)b->expected_deliveries, (unsigned long long)lost,
               (unsigned long long)dups, (unsigned long long)stale, sp ? "yes" : "no");
        printf("RESULT received=%llu expected=%llu lost=%llu dup=%llu reordered=%llu stale=%llu "
               "session_present=%d proto_errors=%llu\n",
               (unsigned long long)b->delivered_unique, (unsigned long long)b->expected_deliveries,
               (unsigned long long)lost, (unsigned long long)dups, (unsigned long long)reord,
               (unsigned long long)stale, sp, (unsigned long long)b->proto_errors);
        return lost == 0 && b->proto_errors == 0 ? 0 : 1;
    }

    double pub_s = b->t_last_ack > b->t0 ? (double)(b->t_last_ack - b->t0) / 1e9 : 0;
    double pub_rate = pub_s > 0 ? (double)b->acked_total / pub_s : 0;
    int64_t a50 = sbctl_samples_percentile(&b->ack_lat, 50);
    int64_t a99 = sbctl_samples_percentile(&b->ack_lat, 99);
    int64_t amax = sbctl_samples_percentile(&b->ack_lat, 100);
    const char *ack = o->qos == 2 ? "PUBCOMP" : "PUBACK";

    printf("published %llu of %llu in %.3f s: %.0f msgs/s to the last %s\n",
           (unsigned long long)b->acked_total, (unsigned long long)o->count, pub_s, pub_rate,
           o->qos == 0 ? "write" : ack);
    if (o->qos > 0)
        printf("PUBLISH->%s latency: p50 %.1f us, p99 %.1f us, max %.1f us (%zu samples)\n", ack,
               us(a50), us(a99), us(amax), b->ack_lat.n);

    if (o->mode == MODE_PUB) {
        printf("RESULT pub_per_s=%.0f acked=%llu p50_us=%.1f p99_us=%.1f gen_cpu_s=%.2f "
               "proto_errors=%llu\n",
               pub_rate, (unsigned long long)b->acked_total, us(a50), us(a99), gen_cpu,
               (unsigned long long)b->proto_errors);
        return all_acked(b) && b->proto_errors == 0 && !b->failed ? 0 : 1;
    }

    double e2e_s = b->t_last_delivery > b->t0 ? (double)(b->t_last_delivery - b->t0) / 1e9 : 0;
    double rate = e2e_s > 0 && lost == 0 ? (double)o->count / e2e_s : 0;
    int64_t e50 = sbctl_samples_percentile(&b->e2e_lat, 50);
    int64_t e99 = sbctl_samples_percentile(&b->e2e_lat, 99);
    printf("delivered %llu of %llu (%llu x %d consumers) in %.3f s: %.0f msgs/s end to end, "
           "%.0f deliveries/s\n",
           (unsigned long long)b->delivered_unique, (unsigned long long)b->expected_deliveries,
           (unsigned long long)o->count, o->consumers, e2e_s, rate,
           e2e_s > 0 ? (double)b->delivered_unique / e2e_s : 0);
    printf("PUBLISH->delivery latency: p50 %.1f us, p99 %.1f us\n", us(e50), us(e99));
    printf("lost %llu, duplicates %llu, out of order %llu, stale %llu, protocol errors %llu\n",
           (unsigned long long)lost, (unsigned long long)dups, (unsigned long long)reord,
           (unsigned long long)stale, (unsigned long long)b->proto_errors);
    printf("generator: %.2f s CPU, %llu sends, %llu receives\n", gen_cpu,
           (unsigned long long)b->sends, (unsigned long long)b->recvs);
    printf("RESULT msgs_per_s=%.0f pub_per_s=%.0f p50_us=%.1f p99_us=%.1f e2e_p50_us=%.1f "
           "e2e_p99_us=%.1f lost=%llu dup=%llu reordered=%llu stale=%llu proto_errors=%llu "
           "gen_cpu_s=%.2f\n",
           rate, pub_rate, us(a50), us(a99), us(e50), us(e99), (unsigned long long)lost,
           (unsigned long long)dups, (unsigned long long)reord, (unsigned long long)stale,
           (unsigned long long)b->proto_errors, gen_cpu);
    return lost == 0 && b->proto_errors == 0 && all_acked(b) && !b->failed ? 0 : 1;
}

/* ---- options ---- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: mqttbench [options]\n"
            "  --host HOST          broker address (default 127.0.0.1)\n"
            "  --port PORT          broker port (default 1883)\n"
            "  --unix PATH          connect to a Unix socket instead\n"
            "  --qos 0|1|2          QoS of publishes and subscriptions (default 1)\n"
            "  --count N            messages in all, split over producers (default 100000)\n"
            "  --size BYTES         payload size, >= %d (default 100)\n"
            "  --producers P        producer connections (default 4)\n"
            "  --consumers C        consumer connections; each gets every message (default 1)\n"
            "  --window W           unacknowledged QoS 1/2 publishes per producer, 1..65535\n"
            "                       (default 256; 1 = one at a time, for latency)\n"
            "  --batch B            a producer writes again when B window slots are free\n"
            "                       (default: a quarter of the window)\n"
            "  --clean|--persistent consumer sessions (default --clean)\n"
            "  --timeout S          give up after S seconds without progress (default 10)\n"
            "  --mode all|sub|pub|drain  (default all; see the source's header)\n"
            "  --run-id N           tag of this run's payloads (default: random)\n"
            "  --id-prefix S        client ids are S-p<i> / S-c<i> (default mqttbench)\n"
            "  --topic-prefix S     topics S/<producer>, filter S/+ (default bench)\n"
            "  --trace              print every packet sent and received on stderr\n",
            PAYLOAD_HEADER);
}

static int parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *s == '\0' || *s == '-' || *end != '\0' || v < min || v > max)
        return SB_EINVAL;
    *out = v;
    return 0;
}

static int parse_args(options *o, int argc, char **argv)
{
    o->host = "127.0.0.1";
    o->port = "1883";
    o->qos = 1;
    o->count = 100000;
    o->size = 100;
    o->producers = 4;
    o->consumers = 1;
    o->window = 256;
    o->clean = 1;
    o->timeout_s = 10;
    o->mode = MODE_ALL;
    o->run_id = (uint32_t)(now_ns() ^ ((int64_t)getpid() << 16));
    o->id_prefix = "mqttbench";
    o->topic_prefix = "bench";

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        uint64_t n;
        int takes = 1;
        if (strcmp(a, "--clean") == 0) {
            o->clean = 1;
            takes = 0;
        } else if (strcmp(a, "--persistent") == 0) {
            o->clean = 0;
            takes = 0;
        } else if (strcmp(a, "--trace") == 0) {
            o->trace = 1;
            takes = 0;
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            exit(0);
        } else if (v == NULL) {
            fprintf(stderr, "mqttbench: %s: unknown option or missing value\n", a);
            return SB_EINVAL;
        } else if (strcmp(a, "--host") == 0) {
            o->host = v;
        } else if (strcmp(a, "--port") == 0) {
            o->port = v;
        } else if (strcmp(a, "--unix") == 0) {
            o->unix_path = v;
        } else if (strcmp(a, "--id-prefix") == 0) {
            o->id_prefix = v;
        } else if (strcmp(a, "--topic-prefix") == 0) {
            o->topic_prefix = v;
            if (strlen(v) > 100 || strpbrk(v, "+#") != NULL) {
                fprintf(stderr, "mqttbench: --topic-prefix: at most 100 bytes, no wildcards\n");
                return SB_EINVAL;
            }
        } else if (strcmp(a, "--mode") == 0) {
            if (strcmp(v, "all") == 0)
                o->mode = MODE_ALL;
            else if (strcmp(v, "sub") == 0)
                o->mode = MODE_SUB;
            else if (strcmp(v, "pub") == 0)
                o->mode = MODE_PUB;
            else if (strcmp(v, "drain") == 0)
                o->mode = MODE_DRAIN;
            else {
                fprintf(stderr, "mqttbench: --mode: all, sub, pub or drain\n");
                return SB_EINVAL;
            }
        } else if (strcmp(a, "--timeout") == 0) {
            char *end;
            o->timeout_s = strtod(v, &end);
            if (*end != '\0' || o->timeout_s <= 0) {
                fprintf(stderr, "mqttbench: --timeout: a positive number of seconds\n");
                return SB_EINVAL;
            }
        } else {
            static const struct {
                const char *name;
                uint64_t min, max;
            } nums[] = {{"--qos", 0, 2},
                        {"--count", 1, 4000000000u},
                        {"--size", PAYLOAD_HEADER, 256u * 1024 * 1024},
                        {"--producers", 1, 10000},
                        {"--consumers", 0, 10000},
                        {"--window", 1, 65535},
                        {"--run-id", 0, UINT32_MAX},
                        {"--batch", 1, 65535}};
            size_t k;
            for (k = 0; k < sizeof(nums) / sizeof(nums[0]); k++)
                if (strcmp(a, nums[k].name) == 0)
                    break;
            if (k == sizeof(nums) / sizeof(nums[0])) {
                fprintf(stderr, "mqttbench: unknown option %s\n", a);
                return SB_EINVAL;
            }
            if (parse_u64(v, nums[k].min, nums[k].max, &n) != 0) {
                fprintf(stderr, "mqttbench: %s: must be a number in %llu..%llu\n", a,
                        (unsigned long long)nums[k].min, (unsigned long long)nums[k].max);
                return SB_EINVAL;
            }
            switch (k) {
            case 0:
                o->qos = (int)n;
                break;
            case 1:
                o->count = n;
                break;
            case 2:
                o->size = (size_t)n;
                break;
            case 3:
                o->producers = (int)n;
                break;
            case 4:
                o->consumers = (int)n;
                break;
            case 5:
                o->window = (int)n;
                break;
            case 6:
                o->run_id = (uint32_t)n;
                break;
            default:
                o->batch = (int)n;
                break;
            }
        }
        i += takes;
    }
    if (o->batch == 0)
        o->batch = o->window / 4 > 0 ? o->window / 4 : 1;
    if (o->batch > o->window) {
        fprintf(stderr, "mqttbench: --batch must not exceed --window\n");
        return SB_EINVAL;
    }
    if (o->consumers == 0 && o->mode != MODE_PUB) {
        fprintf(stderr, "mqttbench: --consumers 0 needs --mode pub\n");
        return SB_EINVAL;
    }
    return 0;
}

int main(int argc, char **argv)
{
    bench b;
    int rc;
    memset(&b, 0, sizeof(b));
    b.ep = -1;
    if (parse_args(&b.o, argc, argv) != 0) {
        usage(stderr);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);

    const options *o = &b.o;
    static const char *const modes[] = {"all", "sub", "pub", "drain"};
    printf("mqttbench: %s %s%s%s mode=%s qos=%d count=%llu size=%zu producers=%d consumers=%d "
           "window=%d batch=%d %s run=%u\n",
           o->unix_path ? "unix" : "tcp", o->unix_path ? o->unix_path : o->host,
           o->unix_path ? "" : ":", o->unix_path ? "" : o->port, modes[o->mode], o->qos,
           (unsigned long long)o->count, o->size, o->producers, o->consumers, o->window, o->batch,
           o->clean ? "clean" : "persistent", o->run_id);

    rc = setup(&b);
    if (rc != 0) {
        fprintf(stderr, "mqttbench: setup: %s\n", sb_strerror(rc));
        teardown(&b);
        return 1;
    }

    /* Consumers first: every SUBACK before the first PUBLISH. */
    for (int i = 0; i < b.nconns && rc == 0; i++)
        if (b.conns[i].role == ROLE_CONSUMER)
            rc = start_conn(&b, &b.conns[i]);
    if (rc == 0)
        rc = run_loop(&b, consumers_ready);
    if (rc == 0 && (o->mode == MODE_ALL || o->mode == MODE_PUB)) {
        for (int i = 0; i < b.nconns && rc == 0; i++)
            if (b.conns[i].role == ROLE_PRODUCER)
                rc = start_conn(&b, &b.conns[i]);
        if (rc == 0)
            rc = run_loop(&b, producers_ready);
        if (rc == 0) {
            b.publishing = 1;
            for (int i = 0; i < b.nconns; i++)
                pump(&b, &b.conns[i]);
            rc = run_loop(&b, o->mode == MODE_PUB ? all_acked : run_done);
        }
    } else if (rc == 0 && o->mode == MODE_DRAIN) {
        rc = run_loop(&b, all_delivered);
    }
    int status = report(&b, rc);
    disconnect_all(&b);
    teardown(&b);
    return status;
}
