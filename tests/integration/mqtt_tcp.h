/*
 * A small MQTT 3.1.1 client over the harness's portable TCP helpers
 * (sbt_tcp), for tests that run on Windows too: the legacy-program tests
 * (DDE, WM_COPYDATA) use it as the modern client on the other side.
 * Clean sessions, QoS 0; every step asserts.
 */
#ifndef SBT_MQTT_TCP_H
#define SBT_MQTT_TCP_H

#include <stddef.h>

#include "tests/integration/harness.h"

/* Connects as client_id (clean session) and waits for an accepting CONNACK. */
sbt_tcp *sbt_mqtt_tcp_connect(int port, const char *client_id);

/* Subscribes to filter at QoS 0 and waits for its SUBACK. */
void sbt_mqtt_tcp_subscribe(sbt_tcp *t, const char *filter);

/* Publishes payload to topic at QoS 0. */
void sbt_mqtt_tcp_publish(sbt_tcp *t, const char *topic, const char *payload, int retain);

/* Reads the next packet, which must be a PUBLISH, into topic and payload
 * (NUL-terminated, truncated to tn and pn). */
void sbt_mqtt_tcp_read_publish(sbt_tcp *t, char *topic, size_t tn, char *payload, size_t pn);

/* As sbt_mqtt_tcp_read_publish, but returns -1 if no packet began within
 * timeout_ms (0 when it read a PUBLISH). */
int sbt_mqtt_tcp_next_publish(sbt_tcp *t, char *topic, size_t tn, char *payload, size_t pn,
                              int timeout_ms);

#endif
