/*
 * The stream-adapter core: what the adapters over sb_conn (adapters/conn.h)
 * share, once. The tcp/unix sockets (socket/stream.c) and the Windows named
 * pipes (pipe/win/pipe.c) use all of it, exec (exec/exec.c, one child,
 * restarted) the connection list, delivery, the restart timer with its
 * backoff and the stop accounting.
 *
 *   - the connection list: every open connection of the adapter, and the
 *     count a listener's max_connections is checked against;
 *   - delivery: a sink's message goes to one connection at a time, round
 *     robin, skipping those that cannot take it now;
 *   - reconnect: a client dials again after a failure or a disconnect, with
 *     exponential backoff, and logs each change of its link's state once
 *     (further failed attempts of the same kind at debug level);
 *   - output coalescing: what a connection sends during a loop turn is
 *     held and written in one write per connection at the end of the turn
 *     (after the I/O callbacks, and before the loop next waits), however
 *     many packets (acks a group commit released, deliveries) it carries;
 *   - stop accounting: stop closes the timer, the guard and the
 *     connections; the adapter's stopped callback runs once all of them and
 *     the owner's own handles (counted in `pending`) are closed.
 *
 * Whether the adapter is stopping is sb_adapter.stopping (set before stop is
 * called); the core keeps no flag of its own. Runs on the loop thread.
 */
#ifndef SB_STREAM_CORE_H
#define SB_STREAM_CORE_H

#include "adapters/conn.h"

typedef struct sb_stream sb_stream;

struct sb_stream {
    sb_adapter *adapter;
    int is_server;
    const char *display; /* client: what it connects to (logs) */
    /* the connections, newest first, and where delivery left off */
    sb_conn *conns;
    sb_conn *rr;
    int conn_count;
    /* servers: idle and frame timeouts, eviction */
    sb_conn_guard guard;
    int guard_state; /* 0: none, 1: open, 2: closing */
    /* clients: reconnecting */
    uv_timer_t *timer;
    int64_t backoff_ms;
    int64_t backoff_first_ms, backoff_max_ms;
    int jitter; /* each retry waits a random 50..100% of the backoff */
    int connecting; /* an attempt is under way (set by `connect`) */
    int link_state;
    char last_fail[300];
    uint64_t links_up;   /* client: how often the link came up */
    uint64_t links_lost; /* client: how often an up link was lost */
    /* Starts one attempt (client; exec: one run): sets `connecting` while it
     * is under way, reports it with sb_stream_add / sb_stream_connect_failed. */
    void (*connect)(sb_stream *st);
    /* Optional: a connection closed and left the list; replaces the
     * default (log it; a client reconnects). */
    void (*closed)(sb_stream *st, sb_conn *c);
    /* output coalescing: connections holding output (each with a
     * reference), flushed after the loop's I/O callbacks (check) and
     * before it waits (prepare: what timers and deferred callbacks sent) */
    sb_conn *flushq;
    uv_check_t flush_check;
    uv_prepare_t flush_prepare;
    int flush_state; /* 0: not opened, 1: open, 2: closing */
    /* stop accounting: the owner's handles not yet closed */
    int pending;
    /* Optional: 1 while the owner still has work before it may report
     * stopped (a thread, a child process). */
    int (*busy)(sb_stream *st);
    /* Optional: releases what is left, right before the stopped callback. */
    void (*finish)(sb_stream *st);
    sb_adapter_stopped_cb stopped_cb;
    /* The protocol's state for the whole adapter, beyond one connection
     * (the MQTT bridge's, protocol/mqtt/bridge.h); the owner's. */
    void *proto_ctx;
};

/* Initialises st (zeroed by the caller) for adapter a; the backoff is the
 * adapter's reconnect_backoff .. reconnect_max_backoff. */
void sb_stream_init(sb_stream *st, sb_adapter *a, int is_server, const char *display);

/* Opens the reconnect timer (counted in pending until stop closes it). */
int sb_stream_open_timer(sb_stream *st, sb_error *err);

/* Opens the guard of a listener (conn.h). */
void sb_stream_open_guard(sb_stream *st);

/* A new connection, zeroed, that reports its close to st. Link it with
 * sb_stream_add (before sb_conn_start if a failed start is to close it
 * through the list). NULL: out of memory. */
sb_conn *sb_stream_conn_new(sb_stream *st);

/* Puts c on the list (and under the guard of a listener). */
void sb_stream_add(sb_stream *st, sb_conn *c);

/* Logs that c connected ("peer P connected" + note on a server; a client's
 * link is up: "connected to DISPLAY (PROTOCOL)"). */
void sb_stream_log_connected(sb_stream *st, sb_conn *c, const char *note);

/* A client's connection closed (what a client does when `closed` is
 * NULL): logged, and dialled again after the backoff. */
void sb_stream_link_lost(sb_stream *st);

/* The link state and counters for `sbctl stats` (a new jansson object):
 * servers their connections; clients the link (up, down: an attempt
 * failed, lost: an up link closed, connecting), how often it came up and
 * was lost, and the last failure. */
void *sb_stream_stats(const sb_stream *st);

/* A client's link works: its backoff starts over. */
void sb_stream_link_up(sb_stream *st);

/* A client's attempt: starts one unless stopping, connecting or connected. */
void sb_stream_connect(sb_stream *st);

/* A client's attempt failed (why: one line): logged once per change, then
 * retried with backoff. */
void sb_stream_connect_failed(sb_stream *st, const char *why);

/* Arms the timer to call `connect` after the next backoff (with `jitter`,
 * a random 50..100% of it); returns the delay (ms), or -1 if stopping or
 * there is no timer. */
int64_t sb_stream_retry(sb_stream *st);

/* Sink: gives d to the next connection that can take it, round robin.
 * Returns 0 (taken, or finished with an error the route should not retry)
 * or SB_EBUSY. */
int sb_stream_deliver(sb_stream *st, sb_delivery *d);

/* Stop: closes the timer, the guard and every connection; the owner closes
 * its own handles, then calls sb_stream_maybe_stopped. */
void sb_stream_stop(sb_stream *st, sb_adapter_stopped_cb cb);

/* Calls the stopped callback once everything is closed. */
void sb_stream_maybe_stopped(sb_stream *st);

/* One of the owner's pending handles closed. */
void sb_stream_release(sb_stream *st);

#endif
