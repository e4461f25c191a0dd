/*
 * An inbox: how an adapter thread (a mailslot reader, a window message loop,
 * the RPC or COM runtime) hands work to the loop thread. Any thread posts a
 * function and its argument; the loop runs them in posting order. This is
 * the only way such threads talk to the broker: everything in broker.h is
 * loop-thread only.
 */
#ifndef SB_INBOX_H
#define SB_INBOX_H

#include <uv.h>

typedef struct sb_inbox sb_inbox;
typedef void (*sb_inbox_fn)(void *arg);

/* Creates an inbox on loop (call on the loop thread). */
int sb_inbox_new(sb_inbox **out, uv_loop_t *loop);

/* Thread-safe: queues fn(arg) to run on the loop thread. Returns 0, or
 * SB_ENOMEM / SB_ESHUTDOWN (closed) — then fn is not called. */
int sb_inbox_post(sb_inbox *in, sb_inbox_fn fn, void *arg);

/* Closes the inbox (loop thread): posts already queued still run, later ones
 * are refused; frees it once its handle is closed. */
void sb_inbox_close(sb_inbox *in);

#endif
