/*
 * The raw protocol, for programs that know nothing of the broker: every frame
 * (a line, or a 4-byte big-endian length + bytes) is one message published to
 * the adapter's topic template; deliveries are written as frames.
 *
 * What a raw producer can rely on (README: "What a raw producer can rely
 * on"): frames are published in the order they arrive; a frame is committed
 * before the broker reads much further (at most read_ahead frames are taken
 * and not yet committed, then reading pauses, so a fast producer is slowed
 * to the store's pace, and a kill loses at most those and what the buffers
 * below hold); if a queue is full or the store refuses writes, the broker
 * holds the frame and stops reading until it can be stored (the producer's
 * writes block); a frame longer than max_message closes the connection;
 * bytes of an unfinished frame at disconnect are discarded and logged.
 *
 * The acknowledged mode (`reply`): every frame is answered, in the order
 * the frames came, with `reply` once committed, or with `reply_error` when
 * refused (a full queue or a refusing store: the frame is not held; an
 * oversized frame or an ACL denial: the connection then closes, after the
 * answers to the frames before). Without reply_error a refused frame is
 * held as above and answered once stored. A frame's answer waits for the
 * answers of the frames before it; read_ahead then counts the frames not
 * yet answered.
 *
 * `message` framing (Windows message-mode pipes) is `length` framing here:
 * the pipe transport turns each pipe message it reads into a length-prefixed
 * frame, and writes each length-prefixed frame as one pipe message
 * (adapters/pipe/win/pipe_int.h).
 */
#include "adapters/stream_keys.h"
#include "adapters/conn.h"
#include "adapters/protocol/raw.h"
#include "service/alloc.h"
#include "service/auth.h"
#include "service/log.h"

#include <stdio.h>
#include <string.h>

#define RAW_RETRY_MS 200
#define RAW_DEFAULT_READ_AHEAD 64

enum { FRAME_PENDING = 0, FRAME_OK, FRAME_REFUSED };

typedef struct raw_session raw_session;

/* One frame, from when it is parsed to its outcome: with the store, held
 * (to be published again), and in the acknowledged mode waiting for the
 * frames before it to be answered. */
typedef struct raw_frame {
    raw_session *s;
    sb_message *m;          /* NULL for a frame refused before it was one */
    struct raw_frame *next; /* acknowledged mode: the order of the answers */
    int state;              /* FRAME_* */
} raw_frame;

struct raw_session {
    sb_conn *conn;
    int framing;
    size_t max;
    int read_ahead; /* frames taken and not yet committed (answered), at most */
    /* The acknowledged mode (reply set): each frame is answered, in order,
     * with reply once committed or reply_error (if set) when refused. */
    char *reply, *reply_error;
    char *topic;
    char source[200];
    char *buf;
    size_t len, cap, off;
    int pending;      /* frames with the store */
    raw_frame **held; /* frames to (re)publish before reading on */
    size_t held_count;
    /* Acknowledged mode: every frame taken and not yet answered, oldest
     * first; this list owns them (held and pending ones are in it too). */
    raw_frame *answers, *answers_tail;
    int unanswered;
    uv_timer_t *retry;
    int warned;
    int acl_checked, acl_denied; /* may this client publish to topic */
    int ending;                  /* acknowledged mode: answer what was taken, then close */
    int closed;
};

int sb_raw_framing_parse(const char *name, int is_datagram)
{
    if (name == NULL)
        return is_datagram ? SB_FRAMING_DATAGRAM : SB_FRAMING_LINE;
    if (strcmp(name, "line") == 0)
        return SB_FRAMING_LINE;
    if (strcmp(name, "length") == 0)
        return SB_FRAMING_LENGTH;
    if (strcmp(name, "datagram") == 0)
        return SB_FRAMING_DATAGRAM;
    if (strcmp(name, "message") == 0)
        return SB_FRAMING_MESSAGE;
    return -1;
}

char *sb_raw_topic(const char *tmpl, const char *adapter, const char *peer)
{
    char out[1024];
    size_t o = 0;
    if (tmpl == NULL)
        tmpl = "{adapter}";
    for (const char *p = tmpl; *p != '\0' && o < sizeof(out) - 1;) {
        const char *sub = NULL;
        size_t skip = 0;
        if (strncmp(p, "{adapter}", 9) == 0) {
            sub = adapter;
            skip = 9;
        } else if (strncmp(p, "{peer}", 6) == 0) {
            sub = peer;
            skip = 6;
        }
        if (sub != NULL) {
            /* '/' '+' '#' in a peer name would change the topic's shape. */
            for (; *sub != '\0' && o < sizeof(out) - 1; sub++)
                out[o++] = (*sub == '/' || *sub == '+' || *sub == '#') ? '_' : *sub;
            p += skip;
        } else {
            out[o++] = *p++;
        }
    }
    out[o] = '\0';
    return sb_strdup(out);
}

static void try_resume(raw_session *s);

static void frame_free(raw_frame *f)
{
    sb_message_unref(f->m);
    sb_free(f);
}

static void session_free(raw_session *s)
{
    if (s->reply != NULL) {
        while (s->answers != NULL) {
            raw_frame *f = s->answers;
            s->answers = f->next;
            frame_free(f);
        }
    } else {
        for (size_t i = 0; i < s->held_count; i++)
            frame_free(s->held[i]);
    }
    sb_free(s->held);
    sb_free(s->reply);
    sb_free(s->reply_error);
    sb_free(s->topic);
    sb_free(s->buf);
    sb_free(s);
}

static void on_retry_closed(uv_handle_t *h)
{
    raw_session *s = h->data;
    sb_free(h);
    s->retry = NULL;
    if (s->pending == 0)
        session_free(s);
}

static void maybe_free(raw_session *s)
{
    if (!s->closed || s->pending > 0)
        return;
    if (s->retry != NULL) {
        if (!uv_is_closing((uv_handle_t *)s->retry))
            uv_close((uv_handle_t *)s->retry, on_retry_closed);
        return;
    }
    session_free(s);
}

/* Frames taken from the connection and not yet done with: reading pauses
 * at read_ahead. */
static int taken(const raw_session *s)
{
    return s->reply != NULL ? s->unanswered : s->pending;
}

/* Queues data as one frame of the connection's framing (d: a delivery to
 * acknowledge once written, or NULL). */
static int send_frame(sb_conn *c, int framing, const void *data, size_t len, sb_delivery *d)
{
    if (framing == SB_FRAMING_LENGTH || framing == SB_FRAMING_MESSAGE) {
        unsigned char hdr[4];
        if (len > 0xFFFFFFFFu)
            return SB_ETOOBIG;
        hdr[0] = (unsigned char)(len >> 24);
        hdr[1] = (unsigned char)(len >> 16);
        hdr[2] = (unsigned char)(len >> 8);
        hdr[3] = (unsigned char)len;
        return sb_conn_send2(c, hdr, 4, data, len, d);
    }
    if (memchr(data, '\n', len) != NULL)
        return SB_EINVAL;
    return sb_conn_send2(c, data, len, "\n", 1, d);
}

/* Acknowledged mode: writes the answers that are due, in the order of the
 * frames, and closes once an ending session has answered everything. */
static void answer(raw_session *s)
{
    raw_frame *f;
    while ((f = s->answers) != NULL && f->state != FRAME_PENDING) {
        const char *r = f->state == FRAME_OK ? s->reply : s->reply_error;
        s->answers = f->next;
        if (s->answers == NULL)
            s->answers_tail = NULL;
        s->unanswered--;
        /* A failed send means the connection is going: nothing to answer. */
        if (!s->closed && r != NULL)
            (void)send_frame(s->conn, s->framing, r, strlen(r), NULL);
        frame_free(f);
    }
    if (s->ending && s->answers == NULL && !s->closed)
        sb_conn_close_after_write(s->conn, NULL);
}

/* A frame's outcome: answered in the acknowledged mode, else forgotten. */
static void settle(raw_session *s, raw_frame *f, int state)
{
    if (s->reply == NULL) {
        frame_free(f);
        return;
    }
    f->state = state;
    answer(s);
}

/* Acknowledged mode: stop reading, answer what was taken, then close. */
static void end_session(raw_session *s)
{
    s->ending = 1;
    s->off = s->len = 0;
    sb_conn_pause(s->conn);
    answer(s);
}

static int hold(raw_session *s, raw_frame *f)
{
    raw_frame **n = sb_realloc(s->held, (s->held_count + 1) * sizeof(*n));
    if (n == NULL)
        return SB_ENOMEM;
    s->held = n;
    s->held[s->held_count++] = f;
    return 0;
}

static void arm_retry(raw_session *s);

static void on_published(void *ctx, int status, uint64_t id, int queues, const char *why)
{
    raw_frame *f = ctx;
    raw_session *s = f->s;
    sb_conn *c = s->conn;
    (void)id;
    (void)queues;
    s->pending--;
    if (why == NULL && status != 0)
        why = sb_strerror(status);
    if (status == 0) {
        settle(s, f, FRAME_OK);
    } else if (s->closed) {
        sb_log(SB_LOG_ERROR, c->adapter->name,
               "peer %s: frame not committed (%s) and the producer is gone", c->peer, why);
        settle(s, f, FRAME_REFUSED);
    } else if (s->reply_error != NULL) {
        sb_log(SB_LOG_ERROR, c->adapter->name,
               "peer %s: frame not committed (%s); answered with reply_error", c->peer, why);
        settle(s, f, FRAME_REFUSED);
    } else {
        /* The commit failed after the publish was accepted (disk full, I/O
         * error): keep the frame and publish it again. */
        sb_log(SB_LOG_ERROR, c->adapter->name, "peer %s: frame not committed (%s); will retry",
               c->peer, why);
        if (hold(s, f) != 0) {
            sb_log(SB_LOG_ERROR, c->adapter->name, "peer %s: out of memory; a frame was lost",
                   c->peer);
            settle(s, f, FRAME_REFUSED);
        } else {
            sb_conn_pause(c);
            arm_retry(s);
        }
    }
    if (!s->closed && (status == 0 || s->held_count == 0))
        try_resume(s);
    maybe_free(s);
    sb_conn_unref(c);
}

static int is_retryable(int rc)
{
    return rc == SB_EFULL || rc == SB_ENOSPC || rc == SB_ESTORE || rc == SB_ENOMEM;
}

/* Publishes f; returns 0 if the store took it or it was settled (refused,
 * dropped), 1 if it must be held. */
static int publish(raw_session *s, raw_frame *f)
{
    sb_conn *c = s->conn;
    sb_publish_opts opts = {s->source, 0, NULL};
    sb_error err;
    int rc;
    if (!s->acl_checked) {
        /* one topic per connection: checked once */
        s->acl_checked = 1;
        s->acl_denied = !sb_auth_allowed(sb_conn_acl(c), c->user, NULL, f->m->topic, SB_ACL_WRITE);
    }
    if (s->acl_denied) {
        char why[300];
        snprintf(why, sizeof why, "%s may not publish to %.200s (ACL)",
                 c->user != NULL ? c->user : "an anonymous client", f->m->topic);
        if (s->reply != NULL && !s->ending) {
            sb_log(SB_LOG_WARN, c->adapter->name, "peer %s: closing connection: %s", c->peer, why);
            end_session(s);
        } else if (s->reply == NULL) {
            sb_conn_close(c, why);
        }
        settle(s, f, FRAME_REFUSED);
        return 0;
    }
    rc = sb_broker_publish(c->adapter->broker, f->m, &opts, on_published, f, &err);
    if (rc == 0) {
        s->pending++;
        sb_conn_ref(c);
        if (s->warned) {
            sb_log(SB_LOG_INFO, c->adapter->name, "peer %s: publishing again", c->peer);
            s->warned = 0;
        }
        return 0;
    }
    if (is_retryable(rc) && s->reply_error == NULL) {
        if (!s->warned)
            sb_log(SB_LOG_WARN, c->adapter->name, "peer %s: holding the producer: %s", c->peer,
                   err.msg);
        s->warned = 1;
        return 1;
    }
    if (is_retryable(rc)) {
        if (!s->warned)
            sb_log(SB_LOG_WARN, c->adapter->name, "peer %s: refusing frames (reply_error): %s",
                   c->peer, err.msg);
        s->warned = 1;
    } else {
        sb_log(SB_LOG_ERROR, c->adapter->name, "peer %s: frame dropped: %s", c->peer, err.msg);
    }
    settle(s, f, FRAME_REFUSED);
    return 0;
}

static void on_retry(uv_timer_t *t)
{
    try_resume(t->data);
}

static void arm_retry(raw_session *s)
{
    if (s->retry == NULL) {
        s->retry = sb_malloc(sizeof(*s->retry));
        if (s->retry == NULL)
            return;
        uv_timer_init(s->conn->adapter->loop, s->retry);
        s->retry->data = s;
    }
    uv_timer_start(s->retry, on_retry, RAW_RETRY_MS, 0);
}

static int parse(raw_session *s);

/* Publishes held frames, then parses what is buffered, then reads on. */
static void try_resume(raw_session *s)
{
    size_t done = 0;
    if (s->closed || s->ending)
        return;
    /* A frame publish() takes is no longer the held array's. */
    while (done < s->held_count && publish(s, s->held[done]) == 0)
        done++;
    if (done > 0) {
        memmove(s->held, s->held + done, (s->held_count - done) * sizeof(*s->held));
        s->held_count -= done;
    }
    if (s->ending || s->conn->closing)
        return;
    if (s->held_count > 0) {
        sb_conn_pause(s->conn);
        arm_retry(s);
        return;
    }
    if (parse(s) != 0) {
        sb_conn_close(s->conn, NULL);
        return;
    }
    if (s->held_count == 0 && !s->ending && taken(s) <= s->read_ahead / 2 && s->conn->paused)
        sb_conn_resume(s->conn);
}

/* Makes a frame of data and publishes it. Returns 0, 1 if it is held
 * (reading paused), or SB_ENOMEM. */
static int frame(raw_session *s, const char *data, size_t len)
{
    raw_frame *f = sb_calloc(1, sizeof(*f));
    if (f == NULL || (f->m = sb_message_new(s->topic, data, len)) == NULL) {
        sb_free(f);
        sb_log(SB_LOG_ERROR, s->conn->adapter->name, "peer %s: out of memory", s->conn->peer);
        return SB_ENOMEM;
    }
    f->s = s;
    sb_conn_identified(s->conn);
    if (s->reply != NULL) {
        if (s->answers_tail != NULL)
            s->answers_tail->next = f;
        else
            s->answers = f;
        s->answers_tail = f;
        s->unanswered++;
    }
    if (publish(s, f) != 0) {
        if (hold(s, f) != 0) {
            sb_log(SB_LOG_ERROR, s->conn->adapter->name, "peer %s: out of memory", s->conn->peer);
            settle(s, f, FRAME_REFUSED);
            return SB_ENOMEM;
        }
        sb_conn_pause(s->conn);
        arm_retry(s);
        return 1;
    }
    if (taken(s) >= s->read_ahead)
        sb_conn_pause(s->conn);
    return 0;
}

/* A frame longer than max_message: the connection closes. In the
 * acknowledged mode the frames before it are answered first, and it gets
 * reply_error. */
static int oversized(raw_session *s)
{
    raw_frame *f;
    if (s->reply == NULL)
        return SB_ETOOBIG;
    f = sb_calloc(1, sizeof(*f));
    if (f == NULL)
        return SB_ENOMEM;
    f->s = s;
    if (s->answers_tail != NULL)
        s->answers_tail->next = f;
    else
        s->answers = f;
    s->answers_tail = f;
    s->unanswered++;
    end_session(s);
    settle(s, f, FRAME_REFUSED);
    return 0;
}

/* Extracts and publishes complete frames. Returns 0, or an error to close. */
static int parse(raw_session *s)
{
    sb_conn *c = s->conn;
    while (s->held_count == 0 && s->off < s->len && !s->ending) {
        const char *p = s->buf + s->off;
        size_t avail = s->len - s->off, flen, skip;
        int rc;
        if (s->framing == SB_FRAMING_LENGTH || s->framing == SB_FRAMING_MESSAGE) {
            const unsigned char *u = (const unsigned char *)p;
            uint64_t n;
            if (avail < 4)
                break;
            n = ((uint64_t)u[0] << 24) | ((uint64_t)u[1] << 16) | ((uint64_t)u[2] << 8) | u[3];
            if (n > s->max) {
                sb_log(SB_LOG_ERROR, c->adapter->name,
                       "peer %s: frame length %llu exceeds max_message %zu; closing", c->peer,
                       (unsigned long long)n, s->max);
                return oversized(s);
            }
            if (avail < 4 + n)
                break;
            p += 4;
            flen = (size_t)n;
            skip = 4 + flen;
        } else {
            const char *nl = memchr(p, '\n', avail);
            if (nl == NULL) {
                if (avail > s->max) {
                    sb_log(SB_LOG_ERROR, c->adapter->name,
                           "peer %s: line longer than max_message %zu; closing", c->peer, s->max);
                    return oversized(s);
                }
                break;
            }
            flen = (size_t)(nl - p);
            skip = flen + 1;
            if (flen > 0 && p[flen - 1] == '\r')
                flen--;
            if (flen > s->max) {
                sb_log(SB_LOG_ERROR, c->adapter->name,
                       "peer %s: line longer than max_message %zu; closing", c->peer, s->max);
                return oversized(s);
            }
        }
        s->off += skip;
        rc = frame(s, p, flen);
        if (rc < 0)
            return rc;
        if (rc > 0 || c->paused || c->closing)
            break;
    }
    if (s->off == s->len)
        s->off = s->len = 0;
    return 0;
}

static int raw_data(sb_conn *c, const char *data, size_t len)
{
    raw_session *s = c->session;
    if (s->ending)
        return 0; /* answering what was taken, then closing */
    if (s->off > 0 && s->off == s->len)
        s->off = s->len = 0;
    if (s->len + len > s->cap) {
        size_t need = s->len - s->off + len, cap = s->cap == 0 ? 65536 : s->cap;
        char *n;
        if (s->off > 0) {
            memmove(s->buf, s->buf + s->off, s->len - s->off);
            s->len -= s->off;
            s->off = 0;
        }
        while (cap < need)
            cap *= 2;
        if (cap != s->cap) {
            n = sb_realloc(s->buf, cap);
            if (n == NULL)
                return SB_ENOMEM;
            s->buf = n;
            s->cap = cap;
        }
    }
    memcpy(s->buf + s->len, data, len);
    s->len += len;
    if (s->held_count > 0)
        return 0; /* reading is paused; this was already in flight */
    return parse(s);
}

static int raw_open(sb_conn *c)
{
    raw_session *s;
    const sb_adapter_config *cfg = c->adapter->cfg;
    if (sb_conn_anonymous_refused(c))
        return SB_EAUTH;
    s = sb_calloc(1, sizeof(*s));
    if (s == NULL)
        return SB_ENOMEM;
    s->conn = c;
    s->framing = sb_raw_framing_parse(SB_STREAM_CFG(cfg)->framing, 0);
    s->max = SB_STREAM_CFG(cfg)->max_message > 0 ? (size_t)SB_STREAM_CFG(cfg)->max_message : 1048576;
    s->read_ahead = SB_STREAM_CFG(cfg)->read_ahead > 0 ? SB_STREAM_CFG(cfg)->read_ahead : RAW_DEFAULT_READ_AHEAD;
    s->topic = sb_raw_topic(SB_STREAM_CFG(cfg)->topic, c->adapter->name, c->peer);
    snprintf(s->source, sizeof(s->source), "%s %s", c->adapter->name, c->peer);
    /* Copies: the session may outlive its adapter's config by a callback. */
    if (SB_STREAM_CFG(cfg)->reply != NULL)
        s->reply = sb_strdup(SB_STREAM_CFG(cfg)->reply);
    if (SB_STREAM_CFG(cfg)->reply_error != NULL)
        s->reply_error = sb_strdup(SB_STREAM_CFG(cfg)->reply_error);
    if (s->topic == NULL || (SB_STREAM_CFG(cfg)->reply != NULL && s->reply == NULL) ||
        (SB_STREAM_CFG(cfg)->reply_error != NULL && s->reply_error == NULL)) {
        session_free(s);
        return SB_ENOMEM;
    }
    c->session = s;
    /* A peer of a route's destination may only read: it is a subscriber
     * from the start, not a producer yet to send its first frame. */
    if (sb_broker_is_destination(c->adapter->broker, c->adapter))
        sb_conn_identified(c);
    return 0;
}

static size_t raw_partial(sb_conn *c)
{
    const raw_session *s = c->session;
    return s->len - s->off;
}

static void raw_closed(sb_conn *c)
{
    raw_session *s = c->session;
    if (s->len > s->off)
        sb_log(SB_LOG_WARN, c->adapter->name,
               "peer %s: disconnected in the middle of a frame; %zu bytes discarded", c->peer,
               s->len - s->off);
    if (s->held_count > 0)
        sb_log(SB_LOG_ERROR, c->adapter->name,
               "peer %s: disconnected while %zu frames waited for room; they were not stored",
               c->peer, s->held_count);
    s->closed = 1;
    maybe_free(s);
}

int sb_raw_deliver(sb_conn *c, sb_delivery *d)
{
    const raw_session *s = c->session;
    return send_frame(c, s->framing, d->msg->payload, d->msg->payload_len, d);
}

const sb_protocol sb_protocol_raw = {
    .name = "raw",
    .open = raw_open,
    .data = raw_data,
    .closed = raw_closed,
    .drained = NULL,
    .partial = raw_partial,
};
