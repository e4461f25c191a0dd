/*
 * The in-process core harness: a broker on its real SQLite store in a
 * directory of its own, no admin endpoint and no sockets, with fake adapters
 * (fake_adapter.h) as its sources and sinks. A test starts it from a YAML
 * text, drives its loop until a condition holds (CORE_WAIT, with a deadline,
 * never a fixed sleep), stops and restarts it on the same store, and reloads
 * it with another text.
 */
#ifndef CORE_HARNESS_H
#define CORE_HARNESS_H

#include <stdint.h>

#include "fake_adapter.h"
#include "service/broker.h"
#include "service/broker_int.h"

#define CORE_MAX_CONSUMERS 8

typedef struct core_fx {
    char dir[1024];
    sb_broker *b;
    uv_timer_t tick;      /* wakes the loop so a wait can see its deadline */
    uint64_t deadline_ns; /* of the current CORE_WAIT */
    fake_consumer *consumers[CORE_MAX_CONSUMERS]; /* outlive the broker */
    size_t consumer_count;
    const char *broker_extra; /* more lines of the broker section, or NULL */
} core_fx;

/* cmocka setup/teardown: a fresh directory; teardown stops the broker if it
 * runs and removes the directory. */
int core_setup(void **state);
int core_teardown(void **state);

/* Parses the broker section (data_dir, no admin endpoint, quiet log)
 * followed by `body` (adapters:, routes:); adapters written as
 * `type: exec` with `command: [fake]` become type "fake". Fails the test
 * on a config error. */
sb_config *core_config(core_fx *f, const char *body);

/* Creates and starts a broker on f's directory (failing the test if it
 * cannot), and lets it settle. */
void core_start(core_fx *f, const char *body);

/* Stops the broker, runs its loop until everything closed, frees it. */
void core_stop(core_fx *f);

/* Applies a new body with sb_broker_reload; returns its code. */
int core_reload(core_fx *f, const char *body, sb_error *err);

/* A consumer owned by the fixture (freed after the broker), attached to
 * client subscription `sub`. */
fake_consumer *core_attach(core_fx *f, const char *sub, int window);

/* Detaches c (failed: counts as failed attempts) and forgets its deliveries. */
void core_detach(core_fx *f, fake_consumer *c, int failed);

/* Runs the loop for one event (at most ~5 ms); 0 once the deadline set by
 * core_wait_begin passed. */
int core_turn(core_fx *f);
void core_wait_begin(core_fx *f, int64_t timeout_ms);

/* Runs the loop until cond holds; fails the test after 30 s (generous:
 * under Wine on a loaded machine a restart and its fsyncs took over 10 s). */
#define CORE_WAIT(f, cond)                                                                         \
    do {                                                                                           \
        core_wait_begin((f), 30000);                                                               \
        while (!(cond))                                                                            \
            if (!core_turn(f))                                                                     \
                fail_msg("%s:%d: timed out waiting for %s", __FILE__, __LINE__, #cond);            \
    } while (0)

/* The queue `name`, or NULL. */
sb_queue *core_queue(core_fx *f, const char *name);

/* Dead letters of `sub` (all when NULL) as the admin API lists them: a
 * new jansson object {"items": [...]}, or fails the test. */
struct json_t;
struct json_t *core_dlq(core_fx *f, const char *sub);

/* Waits until a publish's callback ran; returns its status. */
int core_pub_wait(core_fx *f, fake_pub *p);

/* Publishes and waits for the commit; fails the test unless it succeeded. */
uint64_t core_publish_ok(core_fx *f, fake_adapter *from, const char *topic, const char *payload,
                         const char *const *headers);

/* Checks a queue's internal lists against its counters (every entry in
 * exactly the list its state says, depth and bytes add up, consumers'
 * in-flight counts match their outstanding lists). */
void core_check_queue(const sb_queue *q);

/* The same for every queue of the broker. */
void core_check_all(core_fx *f);

#endif
