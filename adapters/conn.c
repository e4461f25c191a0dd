/* Connections: output coalescing, delivery acks, backpressure, and the
 * listeners' idle and frame timeouts (see conn.h). */
#include "adapters/stream_keys.h"
#include "adapters/conn.h"
#include "service/alloc.h"
#include "service/log.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

const sb_protocol *sb_protocol_find(const char *name)
{
    if (name == NULL || strcmp(name, "raw") == 0)
        return &sb_protocol_raw;
    if (strcmp(name, "jsonl") == 0)
        return &sb_protocol_jsonl;
    if (strcmp(name, "mqtt") == 0)
        return &sb_protocol_mqtt;
    return NULL;
}

/* ---- the guard's lists ---- */

static void waiting_unlink(sb_conn *c)
{
    sb_conn_guard *g = c->guard;
    if (!c->waiting)
        return;
    if (c->wprev != NULL)
        c->wprev->wnext = c->wnext;
    else
        g->waiting_head = c->wnext;
    if (c->wnext != NULL)
        c->wnext->wprev = c->wprev;
    else
        g->waiting_tail = c->wprev;
    c->wprev = c->wnext = NULL;
    c->waiting = 0;
}

static void framing_unlink(sb_conn *c)
{
    sb_conn_guard *g = c->guard;
    if (!c->framing)
        return;
    if (c->fprev != NULL)
        c->fprev->fnext = c->fnext;
    else
        g->framing_head = c->fnext;
    if (c->fnext != NULL)
        c->fnext->fprev = c->fprev;
    else
        g->framing_tail = c->fprev;
    c->fprev = c->fnext = NULL;
    c->framing = 0;
}

static void guard_arm(sb_conn_guard *g);

static void framing_append(sb_conn *c)
{
    sb_conn_guard *g = c->guard;
    c->frame_since = uv_now(g->timer.loop);
    c->fprev = g->framing_tail;
    c->fnext = NULL;
    if (g->framing_tail != NULL)
        g->framing_tail->fnext = c;
    else
        g->framing_head = c;
    g->framing_tail = c;
    c->framing = 1;
    guard_arm(g);
}

/* After len bytes of input were handled (len 0: reading changed): starts,
 * restarts or ends the frame clock of c. */
static void frame_check(sb_conn *c, size_t len)
{
    size_t partial;
    if (c->guard == NULL || c->guard->frame_ms == 0)
        return;
    if (c->closing || c->paused || c->out_paused || c->read_ended || c->proto == NULL ||
        c->proto->partial == NULL) {
        /* not reading: the peer cannot finish the frame, its clock stops */
        framing_unlink(c);
        return;
    }
    partial = c->proto->partial(c);
    if (partial == 0) {
        framing_unlink(c);
    } else if (!c->framing || partial < c->partial + len) {
        /* a frame began (what was held before, if anything, completed) */
        framing_unlink(c);
        framing_append(c);
    }
    c->partial = partial;
}

static void guard_forget(sb_conn *c)
{
    if (c->guard == NULL)
        return;
    waiting_unlink(c);
    framing_unlink(c);
}

static void on_guard_timer(uv_timer_t *t)
{
    sb_conn_guard *g = t->data;
    uint64_t now = uv_now(t->loop);
    char why[160];
    sb_conn *c;

    while (g->idle_ms > 0 && (c = g->waiting_head) != NULL && c->since + g->idle_ms <= now) {
        waiting_unlink(c);
        snprintf(why, sizeof why, "no complete request within idle_timeout (%.1f s)",
                 (double)g->idle_ms / 1000.0);
        sb_conn_close(c, why);
    }
    while ((c = g->framing_head) != NULL && c->frame_since + g->frame_ms <= now) {
        framing_unlink(c);
        snprintf(why, sizeof why,
                 "a frame begun %.1f s ago is still incomplete (%zu bytes; frame_timeout %.1f s)",
                 (double)(now - c->frame_since) / 1000.0, c->partial, (double)g->frame_ms / 1000.0);
        sb_conn_close(c, why);
    }
    guard_arm(g);
}

/* Arms the timer for the earliest deadline. Entries join each list at the
 * tail, so a list's head has its earliest deadline; the timer is restarted
 * only when that moves earlier than what it is armed for (one whose entry
 * left fires early, finds nothing due and re-arms). */
static void guard_arm(sb_conn_guard *g)
{
    uint64_t due = UINT64_MAX, now;
    if (uv_is_closing((uv_handle_t *)&g->timer))
        return;
    if (g->idle_ms > 0 && g->waiting_head != NULL)
        due = g->waiting_head->since + g->idle_ms;
    if (g->frame_ms > 0 && g->framing_head != NULL &&
        g->framing_head->frame_since + g->frame_ms < due)
        due = g->framing_head->frame_since + g->frame_ms;
    if (due == UINT64_MAX || (uv_is_active((uv_handle_t *)&g->timer) && g->due <= due))
        return;
    now = uv_now(g->timer.loop);
    g->due = due;
    uv_timer_start(&g->timer, on_guard_timer, due > now ? due - now : 0, 0);
}

void sb_conn_guard_init(sb_conn_guard *g, sb_adapter *a)
{
    int64_t idle = sb_stream_idle_timeout(a->cfg), frame = SB_STREAM_CFG(a->cfg)->frame_timeout_ms;
    memset(g, 0, sizeof(*g));
    uv_timer_init(a->loop, &g->timer);
    g->timer.data = g;
    g->name = a->name;
    g->idle_ms = idle > 0 ? (uint64_t)idle : 0;
    g->frame_ms = frame > 0 ? (uint64_t)frame : 0;
}

void sb_conn_guard_add(sb_conn_guard *g, sb_conn *c)
{
    c->guard = g;
    c->since = uv_now(g->timer.loop);
    if (c->identified || c->closing)
        return;
    c->wprev = g->waiting_tail;
    c->wnext = NULL;
    if (g->waiting_tail != NULL)
        g->waiting_tail->wnext = c;
    else
        g->waiting_head = c;
    g->waiting_tail = c;
    c->waiting = 1;
    guard_arm(g);
}

int sb_conn_guard_evict(sb_conn_guard *g, const char *newcomer)
{
    sb_conn *c = g->waiting_head;
    char why[300];
    if (c == NULL)
        return 0;
    waiting_unlink(c);
    snprintf(why, sizeof why,
             "the listener is full (max_connections) and this connection sent no complete "
             "request in %.1f s: it makes room for %s",
             (double)(uv_now(g->timer.loop) - c->since) / 1000.0, newcomer);
    sb_conn_close(c, why);
    return 1;
}

void sb_conn_guard_close(sb_conn_guard *g, uv_close_cb cb)
{
    while (g->waiting_head != NULL)
        waiting_unlink(g->waiting_head);
    while (g->framing_head != NULL)
        framing_unlink(g->framing_head);
    uv_close((uv_handle_t *)&g->timer, cb);
}

void sb_conn_identified(sb_conn *c)
{
    if (c->identified)
        return;
    c->identified = 1;
    if (c->guard != NULL)
        waiting_unlink(c);
}

/* ---- connections ---- */

static void update_reading(sb_conn *c)
{
    if (c->closing || c->read_ended)
        return;
    c->transport_ops->read(c, !(c->paused || c->out_paused));
    frame_check(c, 0);
}

int sb_conn_start(sb_conn *c, sb_adapter *a, const sb_protocol *proto, const sb_conn_transport *t,
                  void *tdata, const char *peer)
{
    int rc;
    c->adapter = a;
    c->proto = proto;
    c->transport_ops = t;
    c->tdata = tdata;
    c->refs = 1;
    snprintf(c->peer, sizeof(c->peer), "%s", peer);
    rc = proto->open(c);
    if (rc != 0)
        return rc;
    update_reading(c);
    return 0;
}

void sb_conn_input(sb_conn *c, const char *data, size_t len)
{
    int rc;
    if (c->closing)
        return;
    sb_conn_ref(c);
    rc = c->proto->data(c, data, len);
    if (rc != 0)
        sb_conn_close(c, NULL);
    else
        frame_check(c, len);
    sb_conn_unref(c);
}

void sb_conn_input_end(sb_conn *c, int err, const char *why)
{
    c->read_ended = 1;
    sb_conn_close(c, err != 0 ? why : NULL);
}

void sb_conn_input_eof(sb_conn *c)
{
    c->read_ended = 1;
    if (c->on_input_eof != NULL && !c->closing)
        c->on_input_eof(c);
}

void sb_conn_pause(sb_conn *c)
{
    c->paused = 1;
    update_reading(c);
}

void sb_conn_resume(sb_conn *c)
{
    c->paused = 0;
    update_reading(c);
}

static void finish_deliveries(sb_delivery *d, int status, const char *why)
{
    while (d != NULL) {
        sb_delivery *next = d->next;
        sb_delivery_done(d, status, why);
        d = next;
    }
}

/* A new output buffer starts at most this large (sb_conn.ohint): past it
 * malloc maps and unmaps memory for each buffer. */
#define CONN_HINT_MAX (64 * 1024)

static void start_write(sb_conn *c);

/* Reading stopped because output backed up (out_paused) starts again
 * once the output is under half the limit. */
static void resume_output(sb_conn *c)
{
    if (!c->out_paused || c->olen >= SB_CONN_MAX_OUTPUT / 2)
        return;
    c->out_paused = 0;
    update_reading(c);
    if (c->proto->drained != NULL)
        c->proto->drained(c);
    /* A sink refused deliveries while this output was backed up: its
     * bindings wait for this to offer them again. (None outside a broker:
     * the unit tests.) */
    if (c->adapter->broker != NULL)
        sb_adapter_sink_ready(c->adapter);
}

void sb_conn_write_done(sb_conn *c, int status, const char *why)
{
    sb_delivery *done = c->wdel;
    c->writing = 0;
    c->wdel = NULL;
    if (status != 0 && !c->closing)
        sb_log(SB_LOG_WARN, c->adapter->name, "peer %s: write failed: %s", c->peer,
               why != NULL ? why : sb_strerror(status));
    finish_deliveries(done, status == 0 ? 0 : SB_ECLOSED,
                      status == 0 ? NULL : "connection closed before the write completed");
    if (status != 0 && c->on_input_eof != NULL && !c->read_ended && !c->closing) {
        /* A child that closed its stdin may still be writing its stdout. */
        sb_delivery *pending = c->odel_head;
        c->output_failed = 1;
        c->odel_head = c->odel_tail = NULL;
        c->olen = 0;
        finish_deliveries(pending, SB_ECLOSED, "the peer stopped reading");
    } else if (status != 0) {
        sb_conn_close(c, NULL);
    } else {
        start_write(c);
    }
    if (c->close_after_write && !c->writing && c->olen == 0)
        sb_conn_close(c, NULL);
    resume_output(c);
    sb_conn_unref(c);
}

static void start_write(sb_conn *c)
{
    char *buf;
    size_t off = 0, len;
    if (c->writing || c->olen == 0 || c->closing)
        return;
    if (c->hold_output != NULL && !c->flushing && c->hold_output(c))
        return; /* the transport calls sb_conn_flush later in this turn */
    /* Held output that completes no delivery goes out at once if the
     * transport takes it all: no write request to complete later, which
     * (libuv 1.44) re-arms the socket with an epoll_ctl after every write,
     * once per message with thousands of connections taking one each. The
     * owner flushes once per loop turn, so this is one write per turn. */
    if (c->flushing && c->odel_head == NULL && c->try_write != NULL) {
        off = c->try_write(c, c->obuf, c->olen);
        if (off == c->olen) {
            /* not kept for the next turn: an idle connection (most of
             * 10,000 sessions) holds no buffer */
            sb_free(c->obuf);
            c->obuf = NULL;
            c->olen = c->ocap = 0;
            if (c->close_after_write)
                sb_conn_close(c, NULL);
            return;
        }
    }
    buf = c->obuf;
    len = c->olen - off; /* the write goes on from where try_write ended */
    c->ohint = len < CONN_HINT_MAX ? len : CONN_HINT_MAX;
    c->wdel = c->odel_head;
    c->obuf = NULL;
    c->olen = c->ocap = 0;
    c->odel_head = c->odel_tail = NULL;
    c->writing = 1;
    sb_conn_ref(c);
    if (c->transport_ops->write(c, buf, off, len) != 0) {
        c->writing = 0;
        finish_deliveries(c->wdel, SB_ECLOSED, "write failed");
        c->wdel = NULL;
        sb_conn_close(c, "write failed");
        sb_conn_unref(c);
    }
}

int sb_conn_send2(sb_conn *c, const void *a, size_t alen, const void *b, size_t blen,
                  sb_delivery *d)
{
    size_t need;
    if (c->closing || c->output_failed)
        return SB_ECLOSED;
    need = c->olen + alen + blen;
    if (need > c->ocap) {
        /* small first: most writes are one small packet, and a 4 KiB
         * block per write is what the allocator then spends its time on;
         * but as large as the last write at once (not grown by doubling
         * again, one copy each time, for every write of a busy stream) */
        size_t cap = c->ocap == 0 ? 512 : c->ocap;
        while (c->ocap == 0 && cap < c->ohint)
            cap *= 2;
        char *n;
        while (cap < need)
            cap *= 2;
        n = sb_realloc(c->obuf, cap);
        if (n == NULL)
            return SB_ENOMEM;
        c->obuf = n;
        c->ocap = cap;
    }
    if (alen > 0)
        memcpy(c->obuf + c->olen, a, alen);
    if (blen > 0)
        memcpy(c->obuf + c->olen + alen, b, blen);
    c->olen = need;
    if (d != NULL) {
        d->next = NULL;
        if (c->odel_tail != NULL)
            c->odel_tail->next = d;
        else
            c->odel_head = d;
        c->odel_tail = d;
    }
    if (!c->writing)
        start_write(c);
    /* (left in obuf: a write is in flight, or the transport holds it) */
    if (c->olen > SB_CONN_MAX_OUTPUT && !c->out_paused) {
        c->out_paused = 1;
        update_reading(c);
    }
    return 0;
}

static void write_held(sb_conn *c)
{
    c->flushing = 1;
    start_write(c);
    c->flushing = 0;
}

void sb_conn_flush(sb_conn *c)
{
    write_held(c);
    /* The transport took it all at once: no write completes later to
     * resume what this output paused (sb_conn_write_done does when one
     * does). */
    if (!c->writing && !c->closing)
        resume_output(c);
}

int sb_conn_send(sb_conn *c, const void *data, size_t len, sb_delivery *d)
{
    return sb_conn_send2(c, data, len, NULL, 0, d);
}

int sb_conn_anonymous_refused(sb_conn *c)
{
    if (c->user != NULL || c->adapter->trusted || sb_stream_anonymous(c->adapter->cfg))
        return 0;
    sb_log(SB_LOG_WARN, c->adapter->name,
           "peer %s: refused: anonymous clients are not allowed on this listener", c->peer);
    return SB_EAUTH;
}

const struct sb_auth *sb_conn_acl(sb_conn *c)
{
    /* a session agent's adapters publish as in-process ones do; what it may
     * consume is limited by its endpoint (jsonl.c) */
    return c->adapter->trusted || c->adapter->agent != NULL ? NULL
                                                            : sb_broker_auth(c->adapter->broker);
}

void sb_conn_ref(sb_conn *c)
{
    c->refs++;
}

void sb_conn_unref(sb_conn *c)
{
    if (--c->refs > 0)
        return;
    sb_free(c->obuf);
    sb_free(c->user);
    sb_free(c);
}

void sb_conn_transport_closed(sb_conn *c)
{
    guard_forget(c);
    if (c->session != NULL) /* NULL when the protocol failed to open */
        c->proto->closed(c);
    if (c->on_closed != NULL)
        c->on_closed(c);
    sb_conn_unref(c);
}

void sb_conn_close_after_write(sb_conn *c, const char *why)
{
    if (c->closing || c->close_after_write)
        return;
    if (why != NULL)
        sb_log(SB_LOG_WARN, c->adapter->name, "peer %s: closing connection: %s", c->peer, why);
    c->close_after_write = 1;
    c->paused = 1;
    update_reading(c);
    if (!c->writing && c->olen == 0)
        sb_conn_close(c, NULL);
}

void sb_conn_close(sb_conn *c, const char *why)
{
    sb_delivery *pending;
    if (c->closing)
        return;
    /* Output held for the end of the loop turn (hold_output) goes first: an
     * error reply that explains the close, and the acks of commits that
     * completed earlier in this turn, which the peer would otherwise never
     * get and send again. */
    if (c->hold_output != NULL && c->olen > 0 && !c->writing) {
        write_held(c);
        if (c->closing) {
            /* The flush closed it: it wrote all that a close_after_write
             * waited for, or the write failed. Closing again would close
             * the transport twice. */
            if (why != NULL)
                sb_log(SB_LOG_WARN, c->adapter->name, "peer %s: closing connection: %s",
                       c->peer, why);
            return;
        }
    }
    c->closing = 1;
    guard_forget(c);
    if (why != NULL)
        sb_log(SB_LOG_WARN, c->adapter->name, "peer %s: closing connection: %s", c->peer, why);
    else
        sb_log(SB_LOG_DEBUG, c->adapter->name, "peer %s: connection closed", c->peer);
    pending = c->odel_head;
    c->odel_head = c->odel_tail = NULL;
    c->olen = 0;
    finish_deliveries(pending, SB_ECLOSED, "connection closed before the write");
    /* The write in flight is cancelled: its deliveries end now too, so a
     * protocol may detach from the broker right after closing (its
     * deliveries are freed then) without this connection holding any. */
    pending = c->wdel;
    c->wdel = NULL;
    finish_deliveries(pending, SB_ECLOSED, "connection closed before the write completed");
    c->transport_ops->close(c);
}
