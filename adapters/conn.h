/*
 * A connection: one byte stream (TCP, Unix socket, a child's stdout/stdin,
 * and on Windows a named pipe) carrying one protocol session.
 *
 * The transport creates the connection and feeds it bytes; the protocol
 * (raw, jsonl) parses them and writes replies or deliveries through
 * sb_conn_send, which coalesces everything sent in one loop turn into one
 * write. Deliveries passed to sb_conn_send are acknowledged when the write
 * completes (the raw sink's meaning of "delivered"), or nacked if the
 * connection closes first. Connections are reference counted: a protocol
 * holds a reference while a publish callback may still arrive.
 */
#ifndef SB_CONN_H
#define SB_CONN_H

#include "service/adapter.h"
#include "service/broker.h"

#include <uv.h>

typedef struct sb_conn sb_conn;
typedef struct sb_conn_guard sb_conn_guard;

typedef struct sb_protocol {
    const char *name;
    /* A connection opened: allocate c->session. */
    int (*open)(sb_conn *c);
    /* Bytes arrived. Return 0, or an SB_E* code to close the connection
     * (the protocol logs why). */
    int (*data)(sb_conn *c, const char *buf, size_t len);
    /* The transport closed; release the session (it may outlive the
     * connection's handles until its own callbacks finish). */
    void (*closed)(sb_conn *c);
    /* The connection may read again after being paused by backpressure. */
    void (*drained)(sb_conn *c);
    /* Optional: bytes of a frame begun but not complete that the session
     * holds (0: between frames), for the listener's frame_timeout. */
    size_t (*partial)(sb_conn *c);
} sb_protocol;

/* The byte stream under a connection. libuv streams (TCP, Unix sockets, a
 * child's pipes) are one implementation (conn_uv.c); Windows named pipes,
 * served by a thread of their own, are another. */
typedef struct sb_conn_transport {
    /* Starts (on = 1) or stops delivering input through sb_conn_input. */
    void (*read)(sb_conn *c, int on);
    /* Writes buf[off..off+len) (takes ownership of buf, an sb_malloc
     * block); returns 0 and later calls sb_conn_write_done exactly once, or
     * an error (then it has freed buf and will not call back). off is 0
     * but after a try_write that took part of buf. */
    int (*write)(sb_conn *c, char *buf, size_t off, size_t len);
    /* Closes; calls sb_conn_transport_closed once nothing refers to c. */
    void (*close)(sb_conn *c);
} sb_conn_transport;

struct sb_conn {
    /* Fields in the order packets use them: with thousands of connections
     * each one's memory is out of cache by its next packet, so the first 64
     * bytes hold what queueing output on an idle connection reads (see
     * sb_conn_send2), the next 64 what input and writing it add. */
    sb_adapter *adapter;
    void *session;
    void *tdata; /* the transport's own state */
    /* Optional (libuv streams): writes what it can of buf[0..len) now, in
     * one system call, without blocking and without keeping it; returns
     * the bytes written (0 if none or on an error, which the next write
     * then reports). */
    size_t (*try_write)(sb_conn *c, const void *buf, size_t len);
    size_t olen;           /* output not yet handed to the transport: obuf[0..olen) */
    int closing;
    int writing;           /* a write is in flight */
    int output_failed;     /* a write failed while the input goes on (see on_input_eof) */
    int close_after_write; /* sb_conn_close_after_write: close once output is written */
    const sb_protocol *proto;
    const sb_conn_transport *transport_ops;
    int refs;
    int paused;     /* reading stopped by the protocol */
    int out_paused; /* reading stopped because output is backed up */
    int read_ended; /* the peer finished sending */
    char *obuf;
    size_t ocap;
    size_t ohint; /* the last write's size (capped): a new obuf starts that large */
    sb_delivery *odel_head, *odel_tail; /* acked once obuf is written */
    /* the write in flight */
    sb_delivery *wdel;
    /* the listener's guard (NULL: none) and its bookkeeping */
    sb_conn_guard *guard;
    uint64_t frame_since;    /* the current frame's first byte arrived */
    size_t partial;          /* bytes of that frame the protocol held */
    unsigned identified : 1; /* sb_conn_identified was called */
    unsigned waiting : 1;    /* on the waiting list */
    unsigned framing : 1;    /* on the framing list */
    sb_conn *wprev, *wnext;  /* the guard's waiting list */
    sb_conn *fprev, *fnext;  /* the guard's framing list */
    uint64_t since;          /* accepted (loop time, ms) */
    /* transport hooks */
    void (*on_closed)(sb_conn *c); /* closed; unlink from lists */
    /* The input ended while the output stays open (sb_conn_input_eof);
     * NULL: nothing to do. A connection that sets it has independent
     * directions: a failed write then only ends the output (output_failed),
     * and the input is still read to its end. */
    void (*on_input_eof)(sb_conn *c);
    /* Optional (the stream adapters' connections, stream_core.c; Windows
     * named pipes): output could go to the transport now; returning 1 keeps
     * it collecting in obuf, and the owner calls sb_conn_flush before the
     * loop next waits. Everything sent in a loop turn then goes out in one
     * write: a first reply written on its own would wake the peer for that
     * one alone, and the rest would follow in a second write. */
    int (*hold_output)(sb_conn *c);
    int flushing; /* in sb_conn_flush: hold_output is not asked */
    sb_conn *flush_next; /* the owner's list of connections holding output */
    int flush_queued;    /* on that list (which holds a reference) */
    /* The adapter-side owner that keeps the connection on its list (an
     * sb_stream, adapters/stream_core.h); on_closed takes it off. */
    void *owner;
    sb_conn *next, *prev; /* the owner's list */
    /* The user the transport authenticated (a TLS client certificate mapped
     * to a name), or NULL; an sb_malloc string owned by the connection. */
    char *user;
    char peer[128];
};

/* A listener's watch over its connections: idle_timeout closes those that
 * never identify themselves (complete a first request: a jsonl request, a
 * raw frame, an MQTT CONNECT), frame_timeout those that leave a frame
 * unfinished, and a full listener evicts the oldest connection that has not
 * identified itself to make room for a new one.
 *
 * Every connection of a list has the same timeout and joins at the tail, so
 * each list is ordered by deadline: one timer, armed for the earlier of the
 * two heads, serves the listener and nothing scans its connections. Runs on
 * the loop thread. */
struct sb_conn_guard {
    uv_timer_t timer;
    void *data;                           /* the owner's (the timer's close callback) */
    const char *name;                     /* the adapter, for logs */
    uint64_t idle_ms, frame_ms;           /* 0: off */
    uint64_t due;                         /* what the timer is armed for */
    sb_conn *waiting_head, *waiting_tail; /* not identified, oldest first */
    sb_conn *framing_head, *framing_tail; /* a frame in progress, oldest first */
};

/* Output beyond this pauses reading until it drains. */
#define SB_CONN_MAX_OUTPUT (4 * 1024 * 1024)

/* Initialises c (zeroed by the caller) over a transport and starts the
 * protocol. */
int sb_conn_start(sb_conn *c, sb_adapter *a, const sb_protocol *proto, const sb_conn_transport *t,
                  void *tdata, const char *peer);

/* Same over libuv streams (in may equal out; either may be NULL). When in
 * and out differ, the end of in (a child closing its stdout) does not close
 * the connection: out stays writable, and sb_conn_input_eof is called.
 * On failure (even SB_ENOMEM) the caller ends c with sb_conn_close, which
 * closes the streams. */
int sb_conn_start_uv(sb_conn *c, sb_adapter *a, const sb_protocol *proto, uv_stream_t *in,
                     uv_stream_t *out, const char *peer);

/* For transports: input arrived / ended (err 0: orderly end, else an SB_E*
 * code and a reason); a write finished; the transport let go of c. */
void sb_conn_input(sb_conn *c, const char *data, size_t len);
void sb_conn_input_end(sb_conn *c, int err, const char *why);
/* For transports whose output outlives their input: everything the peer
 * sent has been passed to sb_conn_input; calls c->on_input_eof. */
void sb_conn_input_eof(sb_conn *c);
void sb_conn_write_done(sb_conn *c, int status, const char *why);
void sb_conn_transport_closed(sb_conn *c);

/* For transports that hold output (c->hold_output): hands everything
 * collected so far to the transport's write, unless a write is in flight
 * (its completion hands over the rest) or the connection is closing. If
 * the transport took it all at once, reading stopped on backed-up output
 * (out_paused) starts again here: no write completes later to do it. */
void sb_conn_flush(sb_conn *c);

/* Queues bytes; d (may be NULL) is acked when they are written. Returns 0,
 * SB_ECLOSED (d is not taken), or SB_ENOMEM. */
int sb_conn_send(sb_conn *c, const void *data, size_t len, sb_delivery *d);

/* Queues two pieces as one frame (header + payload) without joining them. */
int sb_conn_send2(sb_conn *c, const void *a, size_t alen, const void *b, size_t blen,
                  sb_delivery *d);

void sb_conn_pause(sb_conn *c);
void sb_conn_resume(sb_conn *c);

/* Closes the connection (idempotent); `why` is logged if not NULL. Output
 * not yet written is dropped. */
void sb_conn_close(sb_conn *c, const char *why);

/* Stops reading and closes once everything sent so far is written (a
 * protocol's refusal, e.g. MQTT's CONNACK with an error code). */
void sb_conn_close_after_write(sb_conn *c, const char *why);

/* SB_EAUTH (logged) if the adapter refuses anonymous clients and the
 * transport identified no user; protocols without their own login call it
 * when they open. Else 0. */
int sb_conn_anonymous_refused(sb_conn *c);

/* Starts g for adapter a (its idle_timeout and frame_timeout). */
void sb_conn_guard_init(sb_conn_guard *g, sb_adapter *a);

/* A listener accepted c: its idle clock starts. Call before the protocol
 * may identify it, right after the transport took c. */
void sb_conn_guard_add(sb_conn_guard *g, sb_conn *c);

/* The listener is full: closes the connection that has waited longest
 * without identifying itself, naming newcomer (the peer that takes its
 * place) in the log. Returns 1 if one was closed, 0 if there is none. */
int sb_conn_guard_evict(sb_conn_guard *g, const char *newcomer);

/* Closes g's timer (cb gets it; its data is g). The listener's connections
 * are closed first. */
void sb_conn_guard_close(sb_conn_guard *g, uv_close_cb cb);

/* The client completed its first request: idle_timeout and eviction no
 * longer apply to c. */
void sb_conn_identified(sb_conn *c);

/* The topic rules that apply to c's client (NULL: everything allowed). */
const struct sb_auth *sb_conn_acl(sb_conn *c);

void sb_conn_ref(sb_conn *c);
void sb_conn_unref(sb_conn *c);

/* The protocols, by config name ("raw", "jsonl", "mqtt"); NULL if unknown. */
const sb_protocol *sb_protocol_find(const char *name);

extern const sb_protocol sb_protocol_raw;
extern const sb_protocol sb_protocol_jsonl;
extern const sb_protocol sb_protocol_mqtt;

#endif
