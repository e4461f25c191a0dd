/*
 * Helpers of the MQTT integration tests (test_mqtt.c, test_mqtt_proto.c,
 * test_mqtt_auth.c): the broker config they share, the external MQTT
 * clients they run (mosquitto_pub / mosquitto_sub from mosquitto-clients
 * and mqtt_client, a libmosquitto program of ours), and a raw MQTT 3.1.1
 * client over the harness's blocking sockets for what those clients cannot
 * express (a re-sent QoS 2 PUBLISH, malformed packets, a socket closed
 * without DISCONNECT, CONNACK codes, user names and passwords). The raw
 * client encodes and decodes with the broker's codec
 * (adapters/protocol/mqtt/mqtt_codec.h): every packet the broker sends is
 * decoded strictly, so a malformed one fails the test.
 *
 * Environment (set by tests/integration/CMakeLists.txt when found):
 * SB_MQTT_CLIENT, SB_MOSQUITTO_PUB, SB_MOSQUITTO_SUB; a test needing a
 * missing one is skipped.
 */
#ifndef SBT_MQTT_UTIL_H
#define SBT_MQTT_UTIL_H

#include "harness.h"

#include "adapters/protocol/mqtt/mqtt_codec.h"

/* Ports of the shared config: jsonl clients, MQTT (default limits), MQTT
 * with max_message 1 KiB, a raw line sink (route `to-out`: sink/#). A Unix
 * socket MQTT listener is at sbt_mq_unix_path(). */
#define SBT_MQ_PORT_JSONL 0
#define SBT_MQ_PORT_MQTT 1
#define SBT_MQ_PORT_SMALL 2
#define SBT_MQ_PORT_SINK 3

/* Writes the shared config and starts the broker; returns a jsonl
 * connection. {v0} (extra keys of the "mqtt" adapter, indented by four
 * spaces: TLS, authentication) is empty unless the test set it before. */
sbt_conn *sbt_mq_start(sbt_broker *b, const char *name);

/* The Unix socket path of the "mqtt-unix" adapter. */
void sbt_mq_unix_path(sbt_broker *b, char *out, size_t n);

/* ---- external clients ---- */

/* The path in $env (SB_MQTT_CLIENT, ...), or NULL when not set. */
const char *sbt_mq_tool(const char *env);

/* Skips the running test (cmocka skip) unless every named tool is there. */
void sbt_mq_need(const char *env1, const char *env2);

/* A growing argv: sbt_argv_add(&a, "--port %d", ...) adds ONE argument. */
typedef struct sbt_argv {
    char *v[64];
    int n;
} sbt_argv;
void sbt_argv_init(sbt_argv *a, const char *program);
void sbt_argv_add(sbt_argv *a, const char *fmt, ...);
void sbt_argv_free(sbt_argv *a);

/* Runs argv to completion (deadline 20 s); fails the test (with its output)
 * unless it exits with want. Returns its stdout (free()). */
char *sbt_mq_run(sbt_argv *a, int want);

/* ---- the raw client ---- */

typedef struct sbt_mq sbt_mq;

typedef struct sbt_mq_opts {
    const char *id;
    int clean;
    int keepalive; /* seconds; 0: none */
    const char *will_topic;
    const char *will_payload;
    int will_qos;
    int will_retain;
    const char *username; /* NULL: no user name flag */
    const char *password; /* NULL: no password flag ("" is an empty one) */
} sbt_mq_opts;

/* A TCP connection to port (asserts), no CONNECT sent yet. */
sbt_mq *sbt_mq_open(int port);

/* Sends the CONNECT of o (without waiting for anything). */
void sbt_mq_send_connect(sbt_mq *m, const sbt_mq_opts *o);

/* Sends the CONNECT of o and waits for the CONNACK (asserted), stored in
 * *out. */
void sbt_mq_connect(sbt_mq *m, const sbt_mq_opts *o, sb_mqtt_connack *out);

/* Open + CONNECT, asserting it is accepted; *session_present (may be NULL)
 * gets the flag. */
sbt_mq *sbt_mq_client(int port, const sbt_mq_opts *o, int *session_present);
/* The same with only an id and clean session. */
sbt_mq *sbt_mq_simple(int port, const char *id, int clean);

/* Writes bytes as they are. Returns 0 or a libuv error (peer gone). */
int sbt_mq_write(sbt_mq *m, const void *data, size_t len);

/* Encodes and sends. */
void sbt_mq_publish(sbt_mq *m, const char *topic, const char *payload, int qos, int retain, int dup,
                    uint16_t packet_id);
void sbt_mq_ack(sbt_mq *m, sb_mqtt_type type, uint16_t packet_id);
void sbt_mq_empty(sbt_mq *m, sb_mqtt_type type);

/* SUBSCRIBE to n filters at qos[i]; waits for the SUBACK (other packets
 * arriving first are kept for sbt_mq_next) and asserts its return codes
 * equal want[i] (NULL: equal to qos[i]). */
void sbt_mq_subscribe(sbt_mq *m, uint16_t packet_id, const char *const *filters, const int *qos,
                      size_t n, const int *want);
/* One filter. */
void sbt_mq_sub1(sbt_mq *m, uint16_t packet_id, const char *filter, int qos);

/* The next packet (kept ones first): 0, -1 on timeout, -2 when the broker
 * closed the connection. Strings in *out live until the next call. */
int sbt_mq_next(sbt_mq *m, sb_mqtt_packet *out, int timeout_ms);

/* The next packet, asserted to be of type (and packet_id, unless 0). */
void sbt_mq_expect(sbt_mq *m, sb_mqtt_packet *out, sb_mqtt_type type, uint16_t packet_id);

/* Waits for a packet of type (and packet_id unless 0), keeping the others
 * for sbt_mq_next. */
void sbt_mq_await(sbt_mq *m, sb_mqtt_packet *out, sb_mqtt_type type, uint16_t packet_id);

/* The next packet, asserted to be a PUBLISH of topic and payload at qos
 * with these retain and dup flags (-1: not checked); returns its packet id. */
uint16_t sbt_mq_expect_publish(sbt_mq *m, const char *topic, const char *payload, int qos,
                               int retain, int dup);

/* PINGREQ, then waits for PINGRESP (keeping what arrives before it). */
void sbt_mq_ping(sbt_mq *m);

/* 1 if the broker closed the connection within timeout_ms (what it sent
 * meanwhile is discarded). */
int sbt_mq_wait_closed(sbt_mq *m, int timeout_ms);

/* DISCONNECT, then waits for the broker to close (asserted) and frees. */
void sbt_mq_disconnect(sbt_mq *m);

/* Closes the socket without DISCONNECT and frees (NULL: nothing). */
void sbt_mq_close(sbt_mq *m);

/* 1 if the string equals the bytes. */
int sbt_mq_eq(const void *p, size_t n, const char *s);

#endif
