/*
 * The HTTP listener (broker.http): Prometheus metrics at /metrics, a status
 * page at / (its assets compiled in) and the JSON it refreshes from at
 * /api/status. Read-only: nothing here changes the broker.
 *
 * The server is libmicrohttpd, on a thread of its own. It never reads the
 * broker's state, which belongs to the loop thread: a request asks the loop
 * for a snapshot (copied numbers, no pointers into the broker) and formats
 * its answer from that, on its own thread. A snapshot serves every request
 * for a second, so scrapes cost the loop one copy of the queues' counters a
 * second at most, however many clients ask.
 */
#ifndef SB_HTTP_H
#define SB_HTTP_H

#include "service/error.h"

typedef struct sb_http sb_http;
struct sb_broker;

/* Starts the listener of b's broker.http (loop thread; b started). *out is
 * NULL when the config has none. Returns 0, or SB_EADDRINUSE / SB_EIO /
 * SB_ENOMEM with err naming the address. */
int sb_http_start(sb_http **out, struct sb_broker *b, sb_error *err);

/* Stops the listener (loop thread): open connections are closed, requests
 * waiting for a snapshot get 503. Frees h once its loop handles closed.
 * NULL: nothing. */
void sb_http_stop(sb_http *h);

#endif
