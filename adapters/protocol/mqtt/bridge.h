/*
 * The MQTT 3.1.1 client role: a tcp adapter with `connect` and `protocol:
 * mqtt` is a bridge to an upstream MQTT broker or cluster.
 *
 * As a sink, each route delivery is published upstream (QoS 1, or 2 with
 * `qos: 2`) and acknowledged to its queue only when the PUBACK (PUBCOMP)
 * arrives: the route's durable queue is the store-and-forward buffer while
 * the uplink is down, and at most `inflight` publishes are unacknowledged
 * upstream at once, at most `rate` a second if set (a backlog drains
 * paced). Deliveries in flight when the link is lost go back to
 * their queue untried (sb_delivery_return) and go out again on the next
 * link, each with its packet id (derived from the message id) as MQTT 3.1.1
 * 4.4 wants on a resumed session: QoS 1 at least once, duplicates
 * possible. QoS 2: once upstream answered PUBREC, that is recorded in the
 * store ("$bridge:<adapter>\nrel\n<message id>") before PUBREL, and a
 * delivery that comes back (lost link, restart) sends PUBREL, not the
 * message; so while upstream keeps the session each message reaches it
 * once. A new upstream session (CONNACK session present 0) voids the
 * recorded ids: what was not completed is published again.
 *
 * Limits: an export waits while its packet id is in flight for another
 * message (65535 message ids apart); a packet id upstream holds from an
 * earlier link is only known through its message, which comes back ahead
 * of newer ones of its queue, but not of other queues routed here.
 *
 * As a source, it subscribes to `subscribe` upstream on a persistent
 * session (clean session 0) and publishes what arrives into the broker,
 * acknowledging upstream only after the local commit. A QoS 2 import is
 * committed with the key "$bridge:<adapter>\nin\n<packet id>" until its
 * PUBREL (each bridge its own keys, whatever the client ids).
 *
 * Topics: an export drops `local_prefix` from the front of its topic and
 * puts `remote_prefix` there; an import the reverse. Loops: an import
 * carries the header `bridge-origin: <adapter>` and is never exported by
 * that adapter; an upstream message under `remote_prefix` (the upstream
 * echo of an export) is never imported.
 *
 * The socket adapter (socket/stream.c) owns the connection and its
 * reconnects (stream_core.h); this module is the protocol of its
 * connections plus the state that outlives them (credentials, why upstream
 * refused the last one). Runs on the loop thread.
 */
#ifndef SB_MQTT_BRIDGE_H
#define SB_MQTT_BRIDGE_H

#include "adapters/stream_core.h"

typedef struct sb_mqtt_bridge sb_mqtt_bridge;

/* The header an imported message carries: the name of the bridge adapter
 * that imported it. */
#define SB_MQTT_BRIDGE_ORIGIN "bridge-origin"

/* Creates the bridge of MQTT client adapter a, whose connections report to
 * st: reads the password (password_file or password_env). Returns 0, or
 * SB_ENOMEM / SB_EIO / SB_ENOTFOUND with err naming the file or variable. */
int sb_mqtt_bridge_new(sb_mqtt_bridge **out, sb_adapter *a, sb_stream *st, sb_error *err);

/* The adapter stops: closes b's own handle (the pace timer of `rate`),
 * released from st's pending count when closed. NULL is ignored. */
void sb_mqtt_bridge_stop(sb_mqtt_bridge *b);

/* Frees b (its connections are closed, sb_mqtt_bridge_stop ran). NULL is
 * ignored. */
void sb_mqtt_bridge_free(sb_mqtt_bridge *b);

/* The protocol of the bridge's connections: sends CONNECT when the
 * connection opens; c->owner is the sb_stream whose proto_ctx is the
 * bridge. Upstream accepting (CONNACK 0) is the link coming up
 * (sb_stream_link_up, sb_stream_log_connected, sink ready). */
extern const sb_protocol sb_protocol_mqtt_bridge;

/* Sink: publishes d upstream on the live session. Returns 0 (taken, or
 * finished: an import of this bridge is not sent back), or SB_EBUSY (no
 * session accepted yet, output backed up, no packet id free; the adapter
 * becomes ready again by itself). */
int sb_mqtt_bridge_deliver(sb_mqtt_bridge *b, sb_delivery *d);

/* 1 while a session of b outlives its connection (commits of imports
 * outstanding): the adapter's stop waits (sb_stream.busy). */
int sb_mqtt_bridge_busy(const sb_mqtt_bridge *b);

/* Why the connection that just closed ended before upstream accepted it
 * (a CONNACK refusal with its reason, no CONNACK in time), or NULL if it
 * had been accepted (a lost link). Valid until the next connection opens. */
const char *sb_mqtt_bridge_refusal(const sb_mqtt_bridge *b);

#endif
