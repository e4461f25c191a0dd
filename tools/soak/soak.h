/*
 * sbsoak: kills a broker under load, again and again, and checks that
 * nothing it acknowledged was lost (soak.c runs the whole thing).
 *
 * The load comes from producers in processes of their own, so that a
 * producer sees the broker die exactly as a real client would (producer.c):
 *
 *   jsonl  publishes numbered messages pipelined over a jsonl connection
 *          and appends every sequence number the broker acknowledged
 *          (`puback`) to its ack file; after a reconnect it publishes again
 *          from its oldest unacknowledged number;
 *   mqtt   runs `mosquitto_pub -q 1` once per message (PUBACK received:
 *          exit status 0) and appends the acknowledged numbers the same way.
 *
 * With --consume, a jsonl consumer per queue acknowledges deliveries while
 * the broker is killed, as a live subscriber would (so that entries the
 * broker never wrote, acknowledged before their commit, are in the run);
 * what it saw counts as delivered.
 *
 * A producer stops when its stop file appears (after finishing what is in
 * flight, at most 10 s). Message k of producer ID carries the payload
 * "<ID>:<k>" (ID is p0, p1, ... for jsonl, m0, m1, ... for mqtt) and goes to
 * PREFIX/<ID>/f (fsync) or PREFIX/<ID>/b (batched) as its mode says.
 *
 * tests/integration/test_crash.c runs the jsonl producer too.
 */
#ifndef SB_SOAK_H
#define SB_SOAK_H

/* Sequence numbers a producer uses at most (sizes the checker's tables). */
#define SOAK_MAX_SEQ 20000000ULL

/* The durability class of message seq in mode "f", "b" or "fb" (odd
 * numbers fsync, even ones batched): 'f' or 'b'. */
char soak_class(const char *mode, unsigned long long seq);

/* 1 if path exists. */
int soak_file_exists(const char *path);

/* sbsoak producer ID ENDPOINT PREFIX MODE ACKFILE STOPFILE (argv[0] is
 * "producer"). Returns the exit status. */
int soak_jsonl_producer(int argc, char **argv);

/* sbsoak consumer SUB ENDPOINT SEENFILE STOPFILE: subscribes to SUB over
 * jsonl (reconnecting while the broker restarts) and acknowledges every
 * delivery, after appending its payload to SEENFILE; stops when STOPFILE
 * appears. Returns the exit status. */
int soak_consumer(int argc, char **argv);

/* sbsoak mqtt-producer ID HOST PORT PREFIX ACKFILE STOPFILE MOSQUITTO_PUB.
 * Messages go to PREFIX/<ID>/f. Returns the exit status. */
int soak_mqtt_producer(int argc, char **argv);

#endif
