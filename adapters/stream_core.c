/* The stream-adapter core (stream_core.h). */
#include "adapters/stream_keys.h"
#include "adapters/stream_core.h"
#include "adapters/protocol/raw.h"
#include "service/alloc.h"
#include "service/log.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>

enum { LINK_UNKNOWN = 0, LINK_UP, LINK_DOWN, LINK_LOST };

void sb_stream_init(sb_stream *st, sb_adapter *a, int is_server, const char *display)
{
    const sb_adapter_config *cfg = a->cfg;
    st->adapter = a;
    st->is_server = is_server;
    st->display = display;
    st->backoff_first_ms = SB_STREAM_CFG(cfg)->reconnect_backoff_ms > 0 ? SB_STREAM_CFG(cfg)->reconnect_backoff_ms : 500;
    st->backoff_max_ms = SB_STREAM_CFG(cfg)->reconnect_max_backoff_ms > 0 ? SB_STREAM_CFG(cfg)->reconnect_max_backoff_ms : 30000;
}

int sb_stream_open_timer(sb_stream *st, sb_error *err)
{
    st->timer = sb_malloc(sizeof(*st->timer));
    if (st->timer == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "adapter %s: out of memory", st->adapter->name);
    uv_timer_init(st->adapter->loop, st->timer);
    st->timer->data = st;
    st->pending++;
    return 0;
}

void sb_stream_open_guard(sb_stream *st)
{
    sb_conn_guard_init(&st->guard, st->adapter);
    st->guard.data = st;
    st->guard_state = 1;
}

/* ---- connections ---- */

static void on_conn_closed(sb_conn *c)
{
    sb_stream *st = c->owner;
    /* (doubly linked: thousands of clients leaving at once each walked
     * the list) */
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        st->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    c->next = c->prev = NULL;
    if (st->rr == c)
        st->rr = NULL;
    st->conn_count--;
    if (st->closed != NULL) {
        st->closed(st, c);
    } else if (st->is_server) {
        sb_log(SB_LOG_INFO, st->adapter->name, "peer %s disconnected", c->peer);
    } else {
        sb_stream_link_lost(st);
    }
    sb_stream_maybe_stopped(st);
}

void sb_stream_link_lost(sb_stream *st)
{
    if (st->adapter->stopping)
        return;
    sb_log(SB_LOG_WARN, st->adapter->name, "disconnected from %s; reconnecting", st->display);
    st->link_state = LINK_LOST;
    st->links_lost++;
    st->last_fail[0] = '\0';
    sb_stream_retry(st);
}

/* ---- output coalescing ---- */

/* Writes what the connections held when it began; what a write's
 * completion sends meanwhile waits for the next flush. */
static void flush_held(sb_stream *st)
{
    sb_conn *c = st->flushq;
    st->flushq = NULL;
    while (c != NULL) {
        sb_conn *next = c->flush_next;
        c->flush_next = NULL;
        c->flush_queued = 0;
        sb_conn_flush(c);
        sb_conn_unref(c);
        c = next;
    }
    if (st->flushq == NULL && st->flush_state == 1) {
        uv_check_stop(&st->flush_check);
        uv_prepare_stop(&st->flush_prepare);
    }
}

static void on_flush_check(uv_check_t *h)
{
    flush_held(h->data);
}

static void on_flush_prepare(uv_prepare_t *h)
{
    flush_held(h->data);
}

/* c->hold_output of a stream connection: the transports that can write
 * at once (try_write) hold their output for the end of the loop turn.
 * (The stopping adapter's connections write at once: stop closes the
 * handles that flush.)
 *
 * The turn ends late when very many connections are ready: libuv (Linux)
 * takes 1024 events per epoll_wait and, when it got all 1024, polls again
 * at once, up to 48 times, before the check phase. With more than 1024
 * ready connections the output of the whole batch waits for it: later
 * replies (latency) and all of it held at once (peak memory). A
 * connection past SB_CONN_MAX_OUTPUT stops reading (conn.c), which bounds
 * what one holds. */
static int stream_hold(sb_conn *c)
{
    sb_stream *st = c->owner;
    if (c->try_write == NULL || st->adapter->stopping)
        return 0;
    if (st->flush_state == 0) {
        uv_check_init(st->adapter->loop, &st->flush_check);
        uv_prepare_init(st->adapter->loop, &st->flush_prepare);
        st->flush_check.data = st->flush_prepare.data = st;
        st->flush_state = 1;
        st->pending += 2;
    }
    if (st->flush_state != 1)
        return 0;
    if (!c->flush_queued) {
        c->flush_queued = 1;
        sb_conn_ref(c);
        c->flush_next = st->flushq;
        st->flushq = c;
        uv_check_start(&st->flush_check, on_flush_check);
        uv_prepare_start(&st->flush_prepare, on_flush_prepare);
    }
    return 1;
}

sb_conn *sb_stream_conn_new(sb_stream *st)
{
    sb_conn *c = sb_calloc(1, sizeof(*c));
    if (c != NULL) {
        c->owner = st;
        c->on_closed = on_conn_closed;
        c->hold_output = stream_hold; /* (Windows pipes set their own) */
    }
    return c;
}

void sb_stream_add(sb_stream *st, sb_conn *c)
{
    c->prev = NULL;
    c->next = st->conns;
    if (st->conns != NULL)
        st->conns->prev = c;
    st->conns = c;
    st->conn_count++;
    if (st->guard_state == 1)
        sb_conn_guard_add(&st->guard, c);
}

void sb_stream_log_connected(sb_stream *st, sb_conn *c, const char *note)
{
    if (st->is_server) {
        sb_log(SB_LOG_INFO, st->adapter->name, "peer %s connected%s", c->peer, note);
        return;
    }
    st->link_state = LINK_UP;
    st->links_up++;
    st->last_fail[0] = '\0';
    sb_log(SB_LOG_INFO, st->adapter->name, "connected to %s (%s)%s", st->display,
           sb_protocol_find(SB_STREAM_CFG(st->adapter->cfg)->protocol)->name, note);
}

void *sb_stream_stats(const sb_stream *st)
{
    static const char *const states[] = {"connecting", "up", "down", "lost"};
    if (st->is_server)
        return json_pack("{s:s, s:i}", "role", "server", "connections", st->conn_count);
    return json_pack("{s:s, s:s, s:s, s:I, s:I, s:s}", "role", "client", "to",
                     st->display != NULL ? st->display : "", "link",
                     states[st->link_state >= 0 && st->link_state <= LINK_LOST ? st->link_state
                                                                                 : 0],
                     "connects", (json_int_t)st->links_up, "lost", (json_int_t)st->links_lost,
                     "last_error", st->last_fail);
}

/* ---- clients: reconnecting ---- */

void sb_stream_link_up(sb_stream *st)
{
    st->backoff_ms = 0;
}

void sb_stream_connect(sb_stream *st)
{
    if (st->adapter->stopping || st->connecting || st->conns != NULL)
        return;
    st->connect(st);
}

static void on_retry_timer(uv_timer_t *t)
{
    sb_stream_connect(t->data);
}

int64_t sb_stream_retry(sb_stream *st)
{
    int64_t delay;
    if (st->adapter->stopping || st->timer == NULL)
        return -1;
    st->backoff_ms = sb_backoff_next(st->backoff_ms, st->backoff_first_ms, st->backoff_max_ms);
    delay = st->backoff_ms;
    /* many clients of one server (sites of a cluster) that lost it at
     * once do not all come back in the same instant */
    if (st->jitter && delay > 1)
        delay -= (int64_t)(uv_hrtime() % (uint64_t)(delay / 2 + 1));
    uv_timer_start(st->timer, on_retry_timer, (uint64_t)delay, 0);
    return delay;
}

void sb_stream_connect_failed(sb_stream *st, const char *why)
{
    const char *name = st->adapter->name;
    st->connecting = 0;
    if (st->adapter->stopping) {
        sb_stream_maybe_stopped(st);
        return;
    }
    /* Each change of state is logged once, not every attempt. */
    if (st->link_state != LINK_DOWN || strcmp(st->last_fail, why) != 0) {
        sb_log(SB_LOG_WARN, name, "cannot connect to %s: %s; retrying with backoff", st->display,
               why);
        st->link_state = LINK_DOWN;
        snprintf(st->last_fail, sizeof(st->last_fail), "%s", why);
    } else {
        sb_log(SB_LOG_DEBUG, name, "cannot connect to %s: %s", st->display, why);
    }
    sb_stream_retry(st);
}

/* ---- delivery ---- */

int sb_stream_deliver(sb_stream *st, sb_delivery *d)
{
    sb_conn *c = st->rr != NULL && st->rr->next != NULL ? st->rr->next : st->conns;
    int rc;
    if (c == NULL || st->adapter->stopping)
        return SB_EBUSY;
    /* Skip connections whose output is backed up or failed, and TLS peers
     * whose handshake is not done (their protocol has not started: proto is
     * NULL). */
    for (sb_conn *start = c; c->out_paused || c->closing || c->output_failed || c->proto == NULL;) {
        c = c->next != NULL ? c->next : st->conns;
        if (c == start)
            return SB_EBUSY;
    }
    st->rr = c;
    rc = sb_raw_deliver(c, d);
    if (rc == SB_EINVAL) {
        sb_delivery_done(d, SB_EINVAL,
                         "payload contains a newline; it cannot be sent with line framing");
        return 0;
    }
    if (rc == SB_ETOOBIG) {
        sb_delivery_done(d, SB_ETOOBIG, "payload too large for a frame");
        return 0;
    }
    return rc == 0 ? 0 : SB_EBUSY;
}

/* ---- stop ---- */

static void on_timer_closed(uv_handle_t *h)
{
    sb_stream *st = h->data;
    sb_free(h);
    sb_stream_release(st);
}

static void on_guard_closed(uv_handle_t *h)
{
    sb_stream *st = ((sb_conn_guard *)h->data)->data;
    st->guard_state = 0;
    sb_stream_maybe_stopped(st);
}

static void on_flush_closed(uv_handle_t *h)
{
    sb_stream_release(h->data);
}

void sb_stream_stop(sb_stream *st, sb_adapter_stopped_cb cb)
{
    st->stopped_cb = cb;
    if (st->timer != NULL) {
        uv_close((uv_handle_t *)st->timer, on_timer_closed);
        st->timer = NULL;
    }
    for (sb_conn *c = st->conns; c != NULL; c = c->next)
        sb_conn_close(c, NULL); /* (writes what it held first) */
    if (st->flush_state == 1) {
        flush_held(st);
        st->flush_state = 2;
        uv_close((uv_handle_t *)&st->flush_check, on_flush_closed);
        uv_close((uv_handle_t *)&st->flush_prepare, on_flush_closed);
    }
    if (st->guard_state == 1) {
        st->guard_state = 2;
        sb_conn_guard_close(&st->guard, on_guard_closed);
    }
}

void sb_stream_maybe_stopped(sb_stream *st)
{
    sb_adapter_stopped_cb cb = st->stopped_cb;
    if (!st->adapter->stopping || cb == NULL || st->pending != 0 || st->conns != NULL ||
        st->guard_state != 0 || (st->busy != NULL && st->busy(st)))
        return;
    st->stopped_cb = NULL;
    if (st->finish != NULL)
        st->finish(st);
    cb(st->adapter);
}

void sb_stream_release(sb_stream *st)
{
    st->pending--;
    sb_stream_maybe_stopped(st);
}
