/*
 * MQTT 3.1.1 on Windows with real processes: the broker (switchboard.exe
 * run) serves the mqtt protocol on a named pipe (`type: pipe`, byte mode)
 * and on TCP; this program is its MQTT clients, written on the broker's
 * codec (adapters/protocol/mqtt/mqtt_codec.h) over CreateFile, ReadFile and
 * WriteFile on \\.\pipe\NAME, and over Winsock. Every packet the broker
 * sends is decoded strictly: a malformed one fails the test.
 *
 * - CONNECT/CONNACK, SUBSCRIBE/SUBACK, PUBLISH QoS 0, 1 and 2 with their
 *   acknowledgements both ways, over the pipe, over TCP and across the two
 *   (published on the pipe, received on TCP, and the other way round);
 * - 3000 QoS 1 publishes in one WriteFile (more than the broker takes
 *   before their commits: it stops reading the pipe and resumes), PUBACKs
 *   in order; a PUBLISH of 300 KiB, larger than a pipe read, both ways;
 * - a persistent session (clean session 0) collects what is published
 *   while its client is away; the broker is killed (TerminateProcess) and
 *   restarted on the same data dir: every acknowledged message is there, a
 *   QoS 2 PUBLISH re-sent after the restart is not stored twice, a QoS 2
 *   delivery released (PUBREL) before a stop resumes with PUBREL, and an
 *   unacknowledged delivery comes again with DUP, on the other mechanism;
 * - a malformed packet (or one before CONNECT) closes only that connection;
 *   the other clients of both listeners are served on; a refused CONNECT
 *   gets its CONNACK over the pipe before the broker closes it;
 * - a pipe client that vanishes has its will published (to a TCP
 *   subscriber); a client id is taken over across the mechanisms; an empty
 *   client id gets a generated one; a packet over max_message is refused
 *   from its fixed header; a silent client is closed after one and a half
 *   keep-alive periods;
 * - an MQTT listener (pipe or TCP) cannot be a route's destination;
 * - config/examples/windows-mqtt.yaml as shipped (names of this run, a free
 *   port): a message published over TCP reaches a pipe subscriber and the
 *   other way round.
 *
 * Nothing sleeps a fixed time: every wait polls with a deadline (the
 * harness's loop runs in between, so a broker that exits is noticed).
 * Pipe names carry this program's process id, so parallel runs do not meet.
 */
#include <winsock2.h>
#include <ws2tcpip.h>

#include "adapters/protocol/mqtt/mqtt_codec.h"
#include "service/alloc.h"
#include "tests/win/pipe/pipe_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The slice a wait blocks before the harness loop runs again. */
#define SLICE_MS 20

static const char mqtt_config[] = "broker:\n"
                                  "  data_dir: '{data}'\n"
                                  "  admin: { endpoint: 'off' }\n"
                                  "adapters:\n"
                                  "  - name: clients\n"
                                  "    type: tcp\n"
                                  "    listen: 127.0.0.1:{port0}\n"
                                  "    protocol: jsonl\n"
                                  "  - name: mqtt-tcp\n"
                                  "    type: tcp\n"
                                  "    listen: 127.0.0.1:{port1}\n"
                                  "    protocol: mqtt\n"
                                  "  - name: mqtt-pipe\n"
                                  "    type: pipe\n"
                                  "    path: '{v0}'\n"
                                  "    protocol: mqtt\n";

/* ---- a small MQTT client over a pipe or a TCP socket ---- */

typedef struct mq {
    char name[32];       /* for failure messages */
    uint16_t keep_alive; /* CONNECT's, in seconds (60 unless set before) */
    pt_pipe *pipe;       /* a pipe client, or */
    SOCKET sock;         /* a TCP client */
    int read_pending;    /* pipe: an overlapped ReadFile into rbuf is in flight */
    uint8_t rbuf[65536];
    uint8_t *in; /* received, not yet decoded */
    size_t in_len, in_cap;
    uint8_t *kept; /* whole packets put aside by mq_await, in arrival order */
    size_t kept_len, kept_cap;
    uint8_t *cur; /* the packet last returned: its strings point here */
    size_t cur_cap;
} mq;

static void grow(uint8_t **buf, size_t *cap, size_t need)
{
    size_t n = *cap == 0 ? 4096 : *cap;
    uint8_t *p;
    if (need <= *cap)
        return;
    while (n < need)
        n *= 2;
    p = realloc(*buf, n);
    assert_non_null(p);
    *buf = p;
    *cap = n;
}

static void append(uint8_t **buf, size_t *len, size_t *cap, const void *data, size_t n)
{
    grow(buf, cap, *len + n);
    memcpy(*buf + *len, data, n);
    *len += n;
}

static mq *mq_new(const char *name)
{
    mq *m = calloc(1, sizeof(*m));
    assert_non_null(m);
    snprintf(m->name, sizeof(m->name), "%s", name);
    m->keep_alive = 60;
    m->sock = INVALID_SOCKET;
    return m;
}

/* A client of the pipe at path (retried while the broker is starting). */
static mq *mq_open_pipe(const char *path, const char *name)
{
    mq *m = mq_new(name);
    DWORD err = 0;
    m->pipe = pt_open(path, 0, SBT_READY_MS, &err);
    if (m->pipe == NULL)
        fail_msg("%s: cannot open %s: error %lu", name, path, (unsigned long)err);
    return m;
}

/* A client of 127.0.0.1:port. */
static mq *mq_open_tcp(int port, const char *name)
{
    mq *m = mq_new(name);
    struct sockaddr_in sa;
    BOOL one = TRUE;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((u_short)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    m->sock = socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
    if (m->sock == INVALID_SOCKET)
        fail_msg("%s: socket: error %d", name, WSAGetLastError());
    if (connect(m->sock, (struct sockaddr *)&sa, sizeof(sa)) != 0)
        fail_msg("%s: connect to 127.0.0.1:%d: error %d", name, port, WSAGetLastError());
    setsockopt(m->sock, IPPROTO_TCP, TCP_NODELAY, (const char *)&one, sizeof(one));
    return m;
}

/* Closes without DISCONNECT (NULL: nothing). */
static void mq_close(mq *m)
{
    if (m == NULL)
        return;
    if (m->pipe != NULL) {
        if (m->read_pending) {
            /* The read must be over before its OVERLAPPED is freed. */
            DWORD n;
            CancelIoEx(m->pipe->h, &m->pipe->rov);
            GetOverlappedResult(m->pipe->h, &m->pipe->rov, &n, TRUE);
        }
        pt_close(m->pipe);
    }
    if (m->sock != INVALID_SOCKET)
        closesocket(m->sock);
    free(m->in);
    free(m->kept);
    free(m->cur);
    free(m);
}

/* Writes all bytes: 0, or the system's error (the broker is gone). */
static int mq_write(mq *m, const void *data, size_t len)
{
    const char *p = data;
    if (m->pipe != NULL)
        return (int)pt_write(m->pipe, data, len, SBT_REPLY_MS);
    while (len > 0) {
        int n = send(m->sock, p, len > 65536 ? 65536 : (int)len, 0);
        if (n <= 0)
            return WSAGetLastError();
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static void mq_write_ok(mq *m, const void *data, size_t len)
{
    int err = mq_write(m, data, len);
    if (err != 0)
        fail_msg("%s: writing %zu bytes: error %d", m->name, len, err);
}

/* Reads what is there (waiting up to timeout_ms for something) into m->in:
 * the byte count, -1 on timeout, -2 when the broker closed the connection.
 * A pipe read that times out stays pending: no byte is lost. */
static int mq_read_some(mq *m, int timeout_ms)
{
    int64_t deadline = sbt_now_ms() + timeout_ms;
    if (m->pipe != NULL) {
        OVERLAPPED *ov = &m->pipe->rov;
        DWORD n = 0;
        if (!m->read_pending) {
            HANDLE ev = ov->hEvent;
            memset(ov, 0, sizeof(*ov));
            ov->hEvent = ev;
            ResetEvent(ev);
            if (!ReadFile(m->pipe->h, m->rbuf, sizeof(m->rbuf), NULL, ov) &&
                GetLastError() != ERROR_IO_PENDING)
                return -2; /* Wine: a broken pipe fails at once (109) */
            m->read_pending = 1;
        }
        while (WaitForSingleObject(ov->hEvent, SLICE_MS) != WAIT_OBJECT_0) {
            if (sbt_now_ms() > deadline)
                return -1;
            sbt_poll_pause(1);
        }
        m->read_pending = 0;
        if (!GetOverlappedResult(m->pipe->h, ov, &n, FALSE))
            return -2;
        append(&m->in, &m->in_len, &m->in_cap, m->rbuf, n);
        return (int)n;
    }
    for (;;) {
        fd_set rs;
        struct timeval tv = {0, SLICE_MS * 1000};
        int r;
        FD_ZERO(&rs);
        FD_SET(m->sock, &rs);
        r = select(0, &rs, NULL, NULL, &tv);
        if (r < 0)
            return -2;
        if (r > 0) {
            int n = recv(m->sock, (char *)m->rbuf, (int)sizeof(m->rbuf), 0);
            if (n <= 0)
                return -2;
            append(&m->in, &m->in_len, &m->in_cap, m->rbuf, (size_t)n);
            return n;
        }
        if (sbt_now_ms() > deadline)
            return -1;
        sbt_poll_pause(1);
    }
}

/* Moves the packet of `size` bytes at the start of *src (len *src_len) to
 * m->cur and decodes it there into *out. */
static void take_packet(mq *m, uint8_t *src, size_t *src_len, size_t size, sb_mqtt_packet *out)
{
    size_t used = 0;
    const char *why = NULL;
    grow(&m->cur, &m->cur_cap, size);
    memcpy(m->cur, src, size);
    memmove(src, src + size, *src_len - size);
    *src_len -= size;
    if (sb_mqtt_decode(m->cur, size, 0, out, &used, &why) != 0 || used != size)
        fail_msg("%s: cannot decode a packet again: %s", m->name, why != NULL ? why : "?");
}

/* The next packet (put-aside ones first): 0, -1 on timeout, -2 when the
 * broker closed the connection. Strings in *out live until the next call. */
static int mq_next(mq *m, sb_mqtt_packet *out, int timeout_ms)
{
    int64_t deadline = sbt_now_ms() + timeout_ms;
    for (;;) {
        size_t used = 0;
        const char *why = NULL;
        int rc;
        if (m->kept_len > 0) {
            rc = sb_mqtt_decode(m->kept, m->kept_len, 0, out, &used, &why);
            assert_int_equal(rc, 0);
            take_packet(m, m->kept, &m->kept_len, used, out);
            return 0;
        }
        rc = sb_mqtt_decode(m->in, m->in_len, 0, out, &used, &why);
        if (rc == 0) {
            take_packet(m, m->in, &m->in_len, used, out);
            return 0;
        }
        if (rc != SB_MQTT_NEED_MORE)
            fail_msg("%s: the broker sent a malformed packet: %s", m->name,
                     why != NULL ? why : "?");
        rc = mq_read_some(m, (int)(deadline - sbt_now_ms() > 0 ? deadline - sbt_now_ms() : 0));
        if (rc < 0)
            return rc;
    }
}

static const char *type_name(int t)
{
    return sb_mqtt_type_name(t);
}

/* The next packet, asserted to be of type (and packet_id, unless 0). */
static void mq_expect(mq *m, sb_mqtt_packet *out, sb_mqtt_type type, uint16_t packet_id)
{
    int rc = mq_next(m, out, SBT_REPLY_MS);
    if (rc != 0)
        fail_msg("%s: waiting for %s: %s", m->name, type_name(type),
                 rc == -1 ? "timed out" : "the broker closed the connection");
    if (out->type != type || (packet_id != 0 && out->packet_id != packet_id))
        fail_msg("%s: want %s id %u, got %s id %u", m->name, type_name(type), (unsigned)packet_id,
                 type_name(out->type), (unsigned)out->packet_id);
}

/* Waits for a packet of type (and packet_id unless 0), putting the others
 * aside for mq_next. */
static void mq_await(mq *m, sb_mqtt_packet *out, sb_mqtt_type type, uint16_t packet_id)
{
    uint8_t *aside = NULL;
    size_t aside_len = 0, aside_cap = 0;
    int64_t deadline = sbt_now_ms() + SBT_REPLY_MS;
    for (;;) {
        int64_t left = deadline - sbt_now_ms();
        int rc = mq_next(m, out, left > 0 ? (int)left : 0);
        size_t size = 0;
        if (rc != 0)
            fail_msg("%s: waiting for %s id %u: %s", m->name, type_name(type), (unsigned)packet_id,
                     rc == -1 ? "timed out" : "the broker closed the connection");
        if (out->type == type && (packet_id == 0 || out->packet_id == packet_id))
            break;
        assert_int_equal(sb_mqtt_encoded_size(out, &size), 0);
        append(&aside, &aside_len, &aside_cap, m->cur, size);
    }
    /* What was put aside comes before anything kept earlier and not read. */
    append(&aside, &aside_len, &aside_cap, m->kept, m->kept_len);
    free(m->kept);
    m->kept = aside;
    m->kept_len = aside_len;
    m->kept_cap = aside_cap;
}

static void mq_send(mq *m, const sb_mqtt_packet *p)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(sb_mqtt_encode_alloc(&buf, &len, p), 0);
    mq_write_ok(m, buf, len);
    sb_free(buf);
}

/* CONNECT (with a will at QoS 1 when will_topic is not NULL); asserts
 * CONNACK 0 and returns its session-present flag. */
static int mq_connect_will(mq *m, const char *client_id, int clean, const char *will_topic,
                           const char *will_payload)
{
    sb_mqtt_packet p, r;
    memset(&p, 0, sizeof(p));
    p.type = SB_MQTT_CONNECT;
    p.connect.clean_session = (uint8_t)clean;
    p.connect.keep_alive = m->keep_alive;
    p.connect.client_id.p = client_id;
    p.connect.client_id.n = strlen(client_id);
    if (will_topic != NULL) {
        p.connect.will = 1;
        p.connect.will_qos = 1;
        p.connect.will_topic.p = will_topic;
        p.connect.will_topic.n = strlen(will_topic);
        p.connect.will_message.p = (const uint8_t *)will_payload;
        p.connect.will_message.n = strlen(will_payload);
    }
    mq_send(m, &p);
    mq_expect(m, &r, SB_MQTT_CONNACK, 0);
    if (r.connack.return_code != SB_MQTT_CONNACK_ACCEPTED)
        fail_msg("%s: CONNACK %u for client %s", m->name, (unsigned)r.connack.return_code,
                 client_id);
    return r.connack.session_present;
}

static int mq_connect(mq *m, const char *client_id, int clean)
{
    return mq_connect_will(m, client_id, clean, NULL, NULL);
}

static mq *mq_client_pipe(const char *path, const char *client_id, int clean, int *present)
{
    mq *m = mq_open_pipe(path, client_id);
    int sp = mq_connect(m, client_id, clean);
    if (present != NULL)
        *present = sp;
    return m;
}

static mq *mq_client_tcp(int port, const char *client_id, int clean, int *present)
{
    mq *m = mq_open_tcp(port, client_id);
    int sp = mq_connect(m, client_id, clean);
    if (present != NULL)
        *present = sp;
    return m;
}

/* SUBSCRIBE to one filter; asserts the SUBACK grants qos. */
static void mq_subscribe(mq *m, uint16_t pid, const char *filter, int qos)
{
    sb_mqtt_filter f = {{filter, strlen(filter)}, (uint8_t)qos};
    uint8_t buf[512];
    size_t n;
    sb_mqtt_packet r;
    assert_int_equal(sb_mqtt_encode_subscribe(buf, sizeof(buf), &n, pid, &f, 1), 0);
    mq_write_ok(m, buf, n);
    mq_await(m, &r, SB_MQTT_SUBACK, pid);
    assert_int_equal(r.list.count, 1);
    if (r.list.p[0] != qos)
        fail_msg("%s: SUBACK for %s granted %u, want %d", m->name, filter, (unsigned)r.list.p[0],
                 qos);
}

static void mq_publish(mq *m, const char *topic, const char *payload, int qos, int dup,
                       uint16_t pid)
{
    sb_mqtt_publish p;
    uint8_t buf[1024];
    size_t n;
    memset(&p, 0, sizeof(p));
    p.dup = (uint8_t)dup;
    p.qos = (uint8_t)qos;
    p.topic.p = topic;
    p.topic.n = strlen(topic);
    p.payload.p = (const uint8_t *)payload;
    p.payload.n = strlen(payload);
    assert_int_equal(sb_mqtt_encode_publish(buf, sizeof(buf), &n, &p, pid), 0);
    mq_write_ok(m, buf, n);
}

/* Appends the encoding of a PUBLISH to *buf (for one write of many, or of
 * a payload larger than mq_publish's buffer). */
static void encode_publish(uint8_t **buf, size_t *len, size_t *cap, const char *topic,
                           const void *payload, size_t payload_len, int qos, uint16_t pid)
{
    sb_mqtt_publish p;
    size_t n = 0;
    memset(&p, 0, sizeof(p));
    p.qos = (uint8_t)qos;
    p.topic.p = topic;
    p.topic.n = strlen(topic);
    p.payload.p = payload;
    p.payload.n = payload_len;
    grow(buf, cap, *len + payload_len + strlen(topic) + 16);
    assert_int_equal(sb_mqtt_encode_publish(*buf + *len, *cap - *len, &n, &p, pid), 0);
    *len += n;
}

static void mq_ack(mq *m, sb_mqtt_type type, uint16_t pid)
{
    uint8_t buf[4];
    size_t n;
    assert_int_equal(sb_mqtt_encode_ack(buf, sizeof(buf), &n, type, pid), 0);
    mq_write_ok(m, buf, n);
}

static void mq_empty(mq *m, sb_mqtt_type type)
{
    uint8_t buf[2];
    size_t n;
    assert_int_equal(sb_mqtt_encode_empty(buf, sizeof(buf), &n, type), 0);
    mq_write_ok(m, buf, n);
}

static int eq(const void *p, size_t n, const char *s)
{
    return n == strlen(s) && memcmp(p, s, n) == 0;
}

/* The next packet is a PUBLISH of topic and payload at qos (dup: 0, 1, or
 * -1 unchecked); returns its packet id. */
static uint16_t mq_expect_publish(mq *m, const char *topic, const char *payload, int qos, int dup)
{
    sb_mqtt_packet r;
    mq_expect(m, &r, SB_MQTT_PUBLISH, 0);
    if (!eq(r.publish.topic.p, r.publish.topic.n, topic) ||
        !eq(r.publish.payload.p, r.publish.payload.n, payload) || r.publish.qos != qos ||
        (dup >= 0 && r.publish.dup != dup))
        fail_msg("%s: want PUBLISH %s \"%s\" QoS %d%s, got %.*s \"%.*s\" QoS %u DUP %u", m->name,
                 topic, payload, qos,
                 dup < 0   ? ""
                 : dup > 0 ? " DUP 1"
                           : " DUP 0",
                 (int)r.publish.topic.n, r.publish.topic.p, (int)r.publish.payload.n,
                 (const char *)r.publish.payload.p, (unsigned)r.publish.qos,
                 (unsigned)r.publish.dup);
    return r.packet_id;
}

/* PINGREQ, then PINGRESP must be the next packet. */
static void mq_ping(mq *m)
{
    sb_mqtt_packet r;
    mq_empty(m, SB_MQTT_PINGREQ);
    mq_expect(m, &r, SB_MQTT_PINGRESP, 0);
}

/* 1 if the broker closed the connection within timeout_ms (what it sent
 * meanwhile is discarded). */
static int mq_wait_closed(mq *m, int timeout_ms)
{
    int64_t deadline = sbt_now_ms() + timeout_ms;
    for (;;) {
        int64_t left = deadline - sbt_now_ms();
        int rc = mq_read_some(m, left > 0 ? (int)left : 0);
        m->in_len = 0;
        if (rc == -2)
            return 1;
        if (rc == -1)
            return 0;
    }
}

/* DISCONNECT, then the broker closes; frees m. */
static void mq_disconnect(mq *m)
{
    mq_empty(m, SB_MQTT_DISCONNECT);
    if (!mq_wait_closed(m, SBT_REPLY_MS))
        fail_msg("%s: the broker did not close the connection after DISCONNECT", m->name);
    mq_close(m);
}

/* ---- the broker ---- */

/* Starts the broker of mqtt_config with a fresh pipe name; path gets the
 * pipe's full name. Returns a jsonl connection for stats. */
static sbt_conn *start(sbt_broker *b, const char *tag, char *path, size_t n)
{
    char name[64], want[200];
    pt_name(name, sizeof(name), tag);
    pt_path(path, n, name);
    sbt_broker_init(b, tag, 2);
    sbt_broker_set(b, 0, name);
    sbt_broker_config(b, mqtt_config);
    sbt_broker_start(b);
    /* MQTT is a byte stream: the pipe must be in byte mode. */
    snprintf(want, sizeof(want), "[mqtt-pipe] listening on %s (mqtt, byte mode)", path);
    sbt_broker_wait_log(b, want, 1, 5000);
    return sbt_connect(b->port[0]);
}

/* Restarts a stopped or killed broker on the same data dir and names. */
static sbt_conn *restart(sbt_broker *b)
{
    sbt_broker_start(b);
    return sbt_connect(b->port[0]);
}

/* ---- QoS flows: pipe, TCP, and across ---- */

/* One subscriber and one publisher, each on its own mechanism. */
static void qos_flows(sbt_conn *c, mq *sub, mq *pub, const char *tag)
{
    char t0[64], t1[64], t2[64], all[64], q2[64], queue[64];
    sb_mqtt_packet r;
    uint16_t pid;

    snprintf(all, sizeof(all), "%s/#", tag);
    snprintf(q2, sizeof(q2), "%s/q2/#", tag);
    snprintf(t0, sizeof(t0), "%s/zero", tag);
    snprintf(t1, sizeof(t1), "%s/q1/one", tag);
    snprintf(t2, sizeof(t2), "%s/q2/two", tag);
    snprintf(queue, sizeof(queue), "mqtt/sub-%s", tag);
    mq_subscribe(sub, 1, all, 1);
    mq_subscribe(sub, 2, q2, 2);

    /* QoS 0: at most what was granted and published. */
    mq_publish(pub, t0, "zero", 0, 0, 0);
    mq_expect_publish(sub, t0, "zero", 0, 0);

    /* QoS 1: PUBACK once stored; the subscriber's PUBACK settles it. */
    mq_publish(pub, t1, "one", 1, 0, 10);
    mq_expect(pub, &r, SB_MQTT_PUBACK, 10);
    pid = mq_expect_publish(sub, t1, "one", 1, 0);
    assert_int_not_equal(pid, 0);
    mq_ack(sub, SB_MQTT_PUBACK, pid);

    /* QoS 2 inbound: PUBREC, PUBREL, PUBCOMP. */
    mq_publish(pub, t2, "two", 2, 0, 11);
    mq_expect(pub, &r, SB_MQTT_PUBREC, 11);
    mq_ack(pub, SB_MQTT_PUBREL, 11);
    mq_expect(pub, &r, SB_MQTT_PUBCOMP, 11);
    /* QoS 2 outbound (the highest granted filter, q2/#). */
    pid = mq_expect_publish(sub, t2, "two", 2, 0);
    mq_ack(sub, SB_MQTT_PUBREC, pid);
    mq_expect(sub, &r, SB_MQTT_PUBREL, pid);
    mq_ack(sub, SB_MQTT_PUBCOMP, pid);

    /* Both settled: nothing left in the session's queue. */
    sbt_wait_queue_int(c, queue, "depth", 0, 5000);
    sbt_wait_queue_int(c, queue, "inflight", 0, 5000);
    assert_int_equal(sbt_queue_int(c, queue, "acked"), 3);
    mq_ping(sub);
    mq_ping(pub);
}

static void test_qos_flows(void **state)
{
    sbt_broker *b = *state;
    static const struct {
        const char *tag;
        int sub_pipe, pub_pipe;
    } cases[] = {
        {"pp", 1, 1}, /* pipe -> pipe */
        {"tt", 0, 0}, /* TCP -> TCP */
        {"pt", 0, 1}, /* published on the pipe, received on TCP */
        {"tp", 1, 0}, /* published on TCP, received on the pipe */
    };
    char path[128], want[64];
    sbt_conn *c = start(b, "mqtt-qos", path, sizeof(path));

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char sid[32], pid[32];
        mq *sub, *pub;
        int present = -1;
        snprintf(sid, sizeof(sid), "sub-%s", cases[i].tag);
        snprintf(pid, sizeof(pid), "pub-%s", cases[i].tag);
        sub = cases[i].sub_pipe ? mq_client_pipe(path, sid, 1, &present)
                                : mq_client_tcp(b->port[1], sid, 1, &present);
        assert_int_equal(present, 0);
        pub = cases[i].pub_pipe ? mq_client_pipe(path, pid, 1, NULL)
                                : mq_client_tcp(b->port[1], pid, 1, NULL);
        qos_flows(c, sub, pub, cases[i].tag);
        mq_disconnect(pub);
        mq_disconnect(sub);
    }
    /* The pipe's peers are named after this process (the broker asks
     * GetNamedPipeClientProcessId). */
    snprintf(want, sizeof(want), "[mqtt-pipe] peer pid%lu#", (unsigned long)GetCurrentProcessId());
    sbt_broker_wait_log(b, want, 4, 5000);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* ---- many packets in one write, packets across many reads ---- */

#define BURST 3000           /* QoS 1 publishes in one WriteFile */
#define BURST_SIZE 1000      /* bytes of each: 3 MB in all */
#define BIG (300 * 1024 + 7) /* a payload over several 64 KiB pipe reads */

/* The payload of publish i of the burst: "b<i>-" and padding. */
static void burst_payload(char *out, int i)
{
    int n = snprintf(out, BURST_SIZE + 1, "b%d-", i);
    memset(out + n, 'p', (size_t)(BURST_SIZE - n));
    out[BURST_SIZE] = '\0';
}

static void test_burst_and_large(void **state)
{
    sbt_broker *b = *state;
    char path[128], topic[64], payload[BURST_SIZE + 1];
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    char *big = malloc(BIG + 1);
    sbt_conn *c = start(b, "mqtt-burst", path, sizeof(path));
    mq *pub, *sub_tcp, *sub_pipe;
    sb_mqtt_packet r;

    assert_non_null(big);
    for (size_t i = 0; i < BIG; i++)
        big[i] = (char)('a' + i % 26);
    big[BIG] = '\0';
    /* Persistent: its queue commits with fsync, so commits take a while. */
    sub_tcp = mq_client_tcp(b->port[1], "burst-tcp", 0, NULL);
    mq_subscribe(sub_tcp, 1, "burst/#", 1);
    sub_pipe = mq_client_pipe(path, "burst-pipe", 1, NULL);
    mq_subscribe(sub_pipe, 1, "burst/big", 1);

    /* More publishes than the broker takes before their commits, and more
     * bytes than it buffers meanwhile (it stops reading the pipe, then
     * resumes): PUBACKs in order. */
    pub = mq_client_pipe(path, "burst-pub", 1, NULL);
    for (int i = 0; i < BURST; i++) {
        snprintf(topic, sizeof(topic), "burst/%d", i % 10);
        burst_payload(payload, i);
        encode_publish(&buf, &len, &cap, topic, payload, strlen(payload), 1, (uint16_t)(1 + i));
    }
    mq_write_ok(pub, buf, len);
    for (int i = 0; i < BURST; i++)
        mq_expect(pub, &r, SB_MQTT_PUBACK, (uint16_t)(1 + i));
    for (int i = 0; i < BURST; i++) {
        uint16_t pid;
        snprintf(topic, sizeof(topic), "burst/%d", i % 10);
        burst_payload(payload, i);
        pid = mq_expect_publish(sub_tcp, topic, payload, 1, 0);
        mq_ack(sub_tcp, SB_MQTT_PUBACK, pid);
    }

    /* A packet larger than a pipe read, both ways. */
    len = 0;
    encode_publish(&buf, &len, &cap, "burst/big", big, BIG, 1, 9);
    mq_write_ok(pub, buf, len);
    mq_expect(pub, &r, SB_MQTT_PUBACK, 9);
    mq_ack(sub_pipe, SB_MQTT_PUBACK, mq_expect_publish(sub_pipe, "burst/big", big, 1, 0));
    mq_ack(sub_tcp, SB_MQTT_PUBACK, mq_expect_publish(sub_tcp, "burst/big", big, 1, 0));
    sbt_wait_queue_int(c, "mqtt/burst-tcp", "depth", 0, 5000);
    sbt_wait_queue_int(c, "mqtt/burst-pipe", "depth", 0, 5000);
    assert_int_equal(sbt_queue_int(c, "mqtt/burst-tcp", "acked"), BURST + 1);

    mq_disconnect(pub);
    mq_disconnect(sub_pipe);
    mq_disconnect(sub_tcp);
    free(buf);
    free(big);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* ---- a persistent session across TerminateProcess ---- */

#define KEEP_Q1 20 /* QoS 1 messages published while the subscriber is away */
#define KEEP_Q2 3  /* QoS 2 ones */

static void test_persistent_session_after_kill(void **state)
{
    sbt_broker *b = *state;
    char path[128], topic[64], payload[32];
    sb_mqtt_packet r;
    uint16_t rel_pid = 0, pid;
    int present = -1;
    sbt_conn *c = start(b, "mqtt-keep", path, sizeof(path));
    mq *sub, *pub;
    json_t *q;

    /* The session is made on the pipe, then its client goes away. */
    sub = mq_client_pipe(path, "keeper", 0, &present);
    assert_int_equal(present, 0);
    mq_subscribe(sub, 1, "keep/q1/#", 1);
    mq_subscribe(sub, 2, "keep/q2/#", 2);
    mq_disconnect(sub);

    /* Published on TCP while it is away: every one acknowledged. A
     * persistent publisher keeps its QoS 2 state across the restart. */
    pub = mq_client_tcp(b->port[1], "pub-keep", 0, &present);
    assert_int_equal(present, 0);
    for (int i = 0; i < KEEP_Q1; i++) {
        snprintf(topic, sizeof(topic), "keep/q1/%d", i);
        snprintf(payload, sizeof(payload), "m%d", i);
        mq_publish(pub, topic, payload, 1, 0, (uint16_t)(100 + i));
    }
    for (int i = 0; i < KEEP_Q1; i++)
        mq_expect(pub, &r, SB_MQTT_PUBACK, (uint16_t)(100 + i));
    for (int i = 0; i < KEEP_Q2; i++) {
        snprintf(topic, sizeof(topic), "keep/q2/%d", i);
        snprintf(payload, sizeof(payload), "x%d", i);
        mq_publish(pub, topic, payload, 2, 0, (uint16_t)(200 + i));
        mq_expect(pub, &r, SB_MQTT_PUBREC, (uint16_t)(200 + i));
        mq_ack(pub, SB_MQTT_PUBREL, (uint16_t)(200 + i));
        mq_expect(pub, &r, SB_MQTT_PUBCOMP, (uint16_t)(200 + i));
    }
    /* A QoS 2 publish stored (PUBREC) whose PUBREL the kill prevents. */
    mq_publish(pub, "keep/q2/last", "last", 2, 0, 300);
    mq_expect(pub, &r, SB_MQTT_PUBREC, 300);
    assert_int_equal(sbt_queue_int(c, "mqtt/keeper", "depth"), KEEP_Q1 + KEEP_Q2 + 1);
    q = sbt_queue_stats(c, "mqtt/keeper");
    assert_non_null(q);
    assert_string_equal(sbt_str(q, "durability"), "fsync");
    json_decref(q);

    /* TerminateProcess; the clients see their connections break. */
    sbt_broker_kill(b);
    sbt_close(c);
    assert_true(mq_wait_closed(pub, SBT_REPLY_MS));
    mq_close(pub);
    c = restart(b);
    assert_int_equal(sbt_queue_int(c, "mqtt/keeper", "depth"), KEEP_Q1 + KEEP_Q2 + 1);

    /* The publisher's session is back: the re-sent QoS 2 PUBLISH (DUP) is
     * acknowledged and not stored again. */
    pub = mq_client_tcp(b->port[1], "pub-keep", 0, &present);
    assert_int_equal(present, 1);
    mq_publish(pub, "keep/q2/last", "last", 2, 1, 300);
    mq_expect(pub, &r, SB_MQTT_PUBREC, 300);
    mq_ack(pub, SB_MQTT_PUBREL, 300);
    mq_expect(pub, &r, SB_MQTT_PUBCOMP, 300);
    mq_ping(pub); /* everything before it was handled */
    assert_int_equal(sbt_queue_int(c, "mqtt/keeper", "depth"), KEEP_Q1 + KEEP_Q2 + 1);
    mq_disconnect(pub);

    /* The subscriber resumes on the pipe: all of it, in order. The last
     * QoS 2 delivery is released (PUBREL) but not completed. */
    sub = mq_client_pipe(path, "keeper", 0, &present);
    assert_int_equal(present, 1);
    for (int i = 0; i < KEEP_Q1; i++) {
        snprintf(topic, sizeof(topic), "keep/q1/%d", i);
        snprintf(payload, sizeof(payload), "m%d", i);
        pid = mq_expect_publish(sub, topic, payload, 1, -1);
        mq_ack(sub, SB_MQTT_PUBACK, pid);
    }
    for (int i = 0; i <= KEEP_Q2; i++) {
        int last = i == KEEP_Q2;
        snprintf(topic, sizeof(topic), last ? "keep/q2/last" : "keep/q2/%d", i);
        snprintf(payload, sizeof(payload), last ? "last" : "x%d", i);
        pid = mq_expect_publish(sub, topic, payload, 2, -1);
        mq_ack(sub, SB_MQTT_PUBREC, pid);
        mq_await(sub, &r, SB_MQTT_PUBREL, pid);
        if (last)
            rel_pid = pid;
        else
            mq_ack(sub, SB_MQTT_PUBCOMP, pid);
    }
    sbt_wait_queue_int(c, "mqtt/keeper", "depth", 1, 5000);
    mq_ping(sub);

    /* An orderly stop (acknowledgements committed), a restart: the session
     * resumes, this time on TCP, with PUBREL for the released delivery,
     * never the message again. */
    sbt_broker_stop(b);
    sbt_close(c);
    assert_true(mq_wait_closed(sub, SBT_REPLY_MS));
    mq_close(sub);
    c = restart(b);
    assert_int_equal(sbt_queue_int(c, "mqtt/keeper", "depth"), 1);
    sub = mq_client_tcp(b->port[1], "keeper", 0, &present);
    assert_int_equal(present, 1);
    mq_expect(sub, &r, SB_MQTT_PUBREL, rel_pid);
    mq_ack(sub, SB_MQTT_PUBCOMP, rel_pid);
    sbt_wait_queue_int(c, "mqtt/keeper", "depth", 0, 5000);

    /* An unacknowledged delivery comes again, with DUP and its packet id,
     * when the client returns on the other mechanism. */
    pub = mq_client_pipe(path, "pub-keep2", 1, NULL);
    mq_publish(pub, "keep/q1/again", "again", 1, 0, 7);
    mq_expect(pub, &r, SB_MQTT_PUBACK, 7);
    mq_disconnect(pub);
    pid = mq_expect_publish(sub, "keep/q1/again", "again", 1, 0);
    mq_close(sub); /* no PUBACK, no DISCONNECT */
    sub = mq_client_pipe(path, "keeper", 0, &present);
    assert_int_equal(present, 1);
    assert_int_equal(mq_expect_publish(sub, "keep/q1/again", "again", 1, 1), pid);
    mq_ack(sub, SB_MQTT_PUBACK, pid);
    sbt_wait_queue_int(c, "mqtt/keeper", "depth", 0, 5000);
    mq_disconnect(sub);

    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* ---- malformed packets ---- */

static void test_malformed_closes_only_that_connection(void **state)
{
    sbt_broker *b = *state;
    /* PUBLISH with QoS 3. */
    static const uint8_t bad_qos[] = {0x36, 0x07, 0x00, 0x01, 'x', 0x00, 0x01, 'h', 'i'};
    /* A remaining length of five bytes. */
    static const uint8_t bad_length[] = {0x10, 0xff, 0xff, 0xff, 0xff, 0x7f};
    /* A well-formed PINGREQ before CONNECT. */
    static const uint8_t no_connect[] = {0xc0, 0x00};
    char path[128];
    sbt_conn *c = start(b, "mqtt-bad", path, sizeof(path));
    mq *good_pipe, *good_tcp, *bad, *pub;
    sb_mqtt_packet r, refused;
    uint16_t pid;

    good_pipe = mq_client_pipe(path, "good-pipe", 1, NULL);
    mq_subscribe(good_pipe, 1, "bad/#", 1);
    good_tcp = mq_client_tcp(b->port[1], "good-tcp", 1, NULL);
    mq_subscribe(good_tcp, 1, "bad/#", 1);

    /* After CONNECT, on the pipe and on TCP. */
    bad = mq_client_pipe(path, "bad-pipe", 1, NULL);
    mq_write_ok(bad, bad_qos, sizeof(bad_qos));
    assert_true(mq_wait_closed(bad, SBT_REPLY_MS));
    mq_close(bad);
    bad = mq_client_tcp(b->port[1], "bad-tcp", 1, NULL);
    mq_write_ok(bad, bad_qos, sizeof(bad_qos));
    assert_true(mq_wait_closed(bad, SBT_REPLY_MS));
    mq_close(bad);
    sbt_broker_wait_log(b, "closing connection: malformed packet", 2, 5000);

    /* Before CONNECT. */
    bad = mq_open_pipe(path, "bad-length");
    mq_write_ok(bad, bad_length, sizeof(bad_length));
    assert_true(mq_wait_closed(bad, SBT_REPLY_MS));
    mq_close(bad);
    bad = mq_open_tcp(b->port[1], "no-connect");
    mq_write_ok(bad, no_connect, sizeof(no_connect));
    assert_true(mq_wait_closed(bad, SBT_REPLY_MS));
    mq_close(bad);
    sbt_broker_wait_log(b, "closing connection: malformed packet", 3, 5000);
    sbt_broker_wait_log(b, "closing connection: expected CONNECT first, got PINGREQ", 1, 5000);

    /* A refused CONNECT (an empty client id without a clean session): its
     * CONNACK is written before the pipe closes. */
    bad = mq_open_pipe(path, "refused");
    memset(&refused, 0, sizeof(refused));
    refused.type = SB_MQTT_CONNECT;
    refused.connect.keep_alive = 30;
    mq_send(bad, &refused);
    mq_expect(bad, &r, SB_MQTT_CONNACK, 0);
    assert_int_equal(r.connack.return_code, SB_MQTT_CONNACK_ID_REJECTED);
    assert_true(mq_wait_closed(bad, SBT_REPLY_MS));
    mq_close(bad);

    /* The others are served on. */
    mq_ping(good_pipe);
    mq_ping(good_tcp);
    pub = mq_client_pipe(path, "pub-after", 1, NULL);
    mq_publish(pub, "bad/still", "served", 1, 0, 1);
    mq_expect(pub, &r, SB_MQTT_PUBACK, 1);
    mq_disconnect(pub);
    pid = mq_expect_publish(good_pipe, "bad/still", "served", 1, 0);
    mq_ack(good_pipe, SB_MQTT_PUBACK, pid);
    pid = mq_expect_publish(good_tcp, "bad/still", "served", 1, 0);
    mq_ack(good_tcp, SB_MQTT_PUBACK, pid);
    sbt_wait_queue_int(c, "mqtt/good-pipe", "depth", 0, 5000);
    sbt_wait_queue_int(c, "mqtt/good-tcp", "depth", 0, 5000);
    mq_disconnect(good_pipe);
    mq_disconnect(good_tcp);

    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* ---- sessions across the two mechanisms, limits ---- */

static void test_will_takeover_limits(void **state)
{
    sbt_broker *b = *state;
    /* A PUBLISH announcing 2,000,000 bytes: refused from its fixed header. */
    static const uint8_t huge[] = {0x30, 0x80, 0x89, 0x7a};
    char path[128];
    sbt_conn *c = start(b, "mqtt-will", path, sizeof(path));
    mq *sub, *gone, *first, *second, *anon, *bad;
    int64_t silent_at;
    char *log, *at;
    uint16_t pid;

    /* A pipe client that vanishes (its handle closed, no DISCONNECT): its
     * will reaches a subscriber on TCP. */
    sub = mq_client_tcp(b->port[1], "will-sub", 1, NULL);
    mq_subscribe(sub, 1, "will/#", 1);
    gone = mq_open_pipe(path, "will-pipe");
    assert_int_equal(mq_connect_will(gone, "will-pipe", 1, "will/pipe", "gone"), 0);
    mq_ping(gone);
    mq_close(gone);
    pid = mq_expect_publish(sub, "will/pipe", "gone", 1, 0);
    mq_ack(sub, SB_MQTT_PUBACK, pid);

    /* A client id taken over on the other mechanism: the pipe connection
     * is closed, the TCP one works; a DISCONNECT leaves no will. */
    first = mq_client_pipe(path, "same-id", 1, NULL);
    second = mq_client_tcp(b->port[1], "same-id", 1, NULL);
    assert_true(mq_wait_closed(first, SBT_REPLY_MS));
    mq_close(first);
    mq_ping(second);
    mq_disconnect(second);
    sbt_broker_wait_log(b, "(client same-id): client id taken over by a new connection", 1, 5000);

    /* An empty client id gets a generated one. */
    anon = mq_client_pipe(path, "", 1, NULL);
    mq_ping(anon);
    mq_disconnect(anon);
    log = sbt_broker_log(b);
    at = strstr(log, "(client auto-");
    assert_non_null(at);
    at += strlen("(client auto-");
    for (int i = 0; i < 16; i++)
        if (!((at[i] >= '0' && at[i] <= '9') || (at[i] >= 'a' && at[i] <= 'f')))
            fail_msg("generated client id: %.40s", at - strlen("auto-"));
    assert_int_equal(at[16], ')');
    free(log);

    /* Over max_message, on the pipe: closed before the body is awaited, the
     * limit named in the log. */
    bad = mq_client_pipe(path, "huge", 1, NULL);
    mq_write_ok(bad, huge, sizeof(huge));
    assert_true(mq_wait_closed(bad, SBT_REPLY_MS));
    mq_close(bad);
    sbt_broker_wait_log(b,
                        "(client huge): closing connection: packet larger than 1114127 bytes "
                        "(max_message 1048576)",
                        1, 5000);

    /* Keep alive 1 s and silence: closed after 1.5 s (not before 1 s), on
     * the pipe too. */
    bad = mq_open_pipe(path, "silent");
    bad->keep_alive = 1;
    mq_connect(bad, "silent", 1);
    silent_at = sbt_now_ms();
    assert_true(mq_wait_closed(bad, SBT_REPLY_MS));
    if (sbt_now_ms() - silent_at < 1000)
        fail_msg("closed %d ms after CONNACK with keep alive 1 s", (int)(sbt_now_ms() - silent_at));
    mq_close(bad);
    sbt_broker_wait_log(b, "(client silent): closing connection: no packet for", 1, 5000);

    /* Nothing else was published: the one will was the only message. */
    mq_ping(sub);
    assert_int_equal(sbt_queue_int(c, "mqtt/will-sub", "acked"), 1);
    mq_disconnect(sub);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

/* ---- an MQTT listener is not a destination ---- */

static void check_not_destination(sbt_broker *b, const char *adapter, const char *type)
{
    static const char tmpl[] = "broker:\n"
                               "  data_dir: '{data}'\n"
                               "  admin: { endpoint: 'off' }\n"
                               "adapters:\n"
                               "  - name: mqtt-tcp\n"
                               "    type: tcp\n"
                               "    listen: 127.0.0.1:{port0}\n"
                               "    protocol: mqtt\n"
                               "  - name: mqtt-pipe\n"
                               "    type: pipe\n"
                               "    path: '{v0}'\n"
                               "    protocol: mqtt\n"
                               "routes:\n"
                               "  - name: out\n"
                               "    from: a/#\n"
                               "    to: [{v1}]\n";
    char *argv[] = {(char *)sbt_switchboard(), "check-config", b->config_path, NULL};
    char *out, *err, want[200];
    sbt_broker_set(b, 1, adapter);
    sbt_broker_write_config(b, tmpl);
    assert_int_equal(sbt_run(argv, b->dir, 10000, &out, &err), 1);
    snprintf(want, sizeof(want), "adapter %s (type %s, protocol mqtt) cannot be a destination",
             adapter, type);
    if (strstr(err, want) == NULL)
        fail_msg("check-config printed:\n%s\nwant a line with: %s", err, want);
    free(out);
    free(err);
}

static void test_mqtt_listener_not_destination(void **state)
{
    sbt_broker *b = *state;
    char name[64];
    pt_name(name, sizeof(name), "mqtt-dest");
    sbt_broker_init(b, "mqtt-dest", 1);
    sbt_broker_set(b, 0, name);
    check_not_destination(b, "mqtt-pipe", "pipe");
    check_not_destination(b, "mqtt-tcp", "tcp");
    b->passed = 1;
}

/* The shipped example: MQTT over TCP and over a pipe, one broker. */
static void test_example_config(void **state)
{
    sbt_broker *b = *state;
    char name[64], path[128], path_line[96];
    sb_mqtt_packet r;
    const char *repl[] = {"data_dir: ./data",
                          "data_dir: '{data}'",
                          "listen: 127.0.0.1:1883",
                          "listen: 127.0.0.1:{port1}",
                          "path: mqtt ",
                          NULL,
                          NULL};
    mq *tcp, *pipe;
    uint16_t pid;

    pt_name(name, sizeof(name), "example-mqtt");
    pt_path(path, sizeof(path), name);
    snprintf(path_line, sizeof(path_line), "path: %s ", name);
    repl[5] = path_line;
    sbt_broker_init(b, "mqtt-example", 2);
    pt_example_config(b, "windows-mqtt.yaml", repl);
    sbt_broker_start(b);

    pipe = mq_client_pipe(path, "example-pipe", 1, NULL);
    tcp = mq_client_tcp(b->port[1], "example-tcp", 1, NULL);
    mq_subscribe(pipe, 1, "plant/#", 1);
    mq_subscribe(tcp, 1, "office/#", 1);
    mq_publish(tcp, "plant/line1/temp", "21.5", 1, 0, 7);
    mq_await(tcp, &r, SB_MQTT_PUBACK, 7);
    pid = mq_expect_publish(pipe, "plant/line1/temp", "21.5", 1, 0);
    mq_ack(pipe, SB_MQTT_PUBACK, pid);
    mq_publish(pipe, "office/door", "open", 1, 0, 8);
    mq_await(pipe, &r, SB_MQTT_PUBACK, 8);
    pid = mq_expect_publish(tcp, "office/door", "open", 1, 0);
    mq_ack(tcp, SB_MQTT_PUBACK, pid);
    mq_disconnect(pipe);
    mq_disconnect(tcp);
    sbt_broker_stop(b);
    b->passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_qos_flows, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_example_config, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_burst_and_large, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_persistent_session_after_kill, sbt_setup,
                                        sbt_teardown),
        cmocka_unit_test_setup_teardown(test_malformed_closes_only_that_connection, sbt_setup,
                                        sbt_teardown),
        cmocka_unit_test_setup_teardown(test_will_takeover_limits, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_mqtt_listener_not_destination, sbt_setup,
                                        sbt_teardown),
    };
    WSADATA wsa;
    if (WSAStartup(MAKEWORD(2, 2), &wsa) != 0) {
        fprintf(stderr, "WSAStartup failed\n");
        return 1;
    }
    sbt_apply_filter();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
