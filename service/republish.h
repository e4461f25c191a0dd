/*
 * The broker's republisher: an internal sink (not a config adapter, like
 * the admin endpoint) that publishes what a route delivers to it back into
 * the broker as a new message under the topic it was delivered with. A
 * route with `republish: true` delivers to it after its transform, so the
 * transformed messages reach every subscriber of their new topics: MQTT
 * and jsonl clients, other routes.
 *
 * The delivery is acknowledged once the new message is committed (nothing
 * acknowledged is lost) and failed when the publish is refused (retried,
 * then dead-lettered). A route that republishes onto topics its own
 * filters match would loop: each copy carries a hop count (header
 * republish-hops), and a message republished SB_REPUBLISH_MAX_HOPS times
 * is refused.
 */
#ifndef SB_REPUBLISH_H
#define SB_REPUBLISH_H

#include "service/adapter.h"

#define SB_REPUBLISH_MAX_HOPS 8
#define SB_REPUBLISH_HOPS_HEADER "republish-hops"
/* The name its bindings and queues use ("ROUTE:$republish"). */
#define SB_REPUBLISH_NAME "$republish"

/* Creates the republisher of broker b (started: it opens nothing). Close
 * it with sb_adapter_close like any adapter. 0 or SB_ENOMEM. */
int sb_republish_create(sb_adapter **out, sb_broker *b, uv_loop_t *loop);

#endif
