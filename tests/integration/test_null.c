/*
 * Type null: a route delivers to it and it acknowledges every message at
 * once, so its queue drains with everything acknowledged and nothing
 * redelivered or dead-lettered. A jsonl client publishes, as a producer
 * under a benchmark would.
 */
#include "harness.h"

#include <stdio.h>
#include <string.h>

#define COUNT 200

static const char config[] = "broker:\n"
                             "  data_dir: '{data}'\n"
                             "  admin: { endpoint: 'off' }\n"
                             "adapters:\n"
                             "  - name: clients\n"
                             "    type: tcp\n"
                             "    listen: 127.0.0.1:{port0}\n"
                             "    protocol: jsonl\n"
                             "  - name: drop\n"
                             "    type: null\n"
                             "    inflight: 8\n"
                             "routes:\n"
                             "  - name: bench\n"
                             "    from: bench/#\n"
                             "    to: drop\n";

static void test_null_acknowledges_everything(void **state)
{
    sbt_broker *b = *state;
    sbt_conn *c;
    char payload[32];

    sbt_broker_init(b, "null", 1);
    sbt_broker_config(b, config);
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);
    for (int i = 0; i < COUNT; i++) {
        json_t *r;
        snprintf(payload, sizeof(payload), "m%d", i);
        r = sbt_call(c, "{s:s, s:s, s:s}", "op", "pub", "topic", "bench/x", "payload", payload);
        sbt_expect_op(r, "puback");
        assert_int_equal(sbt_int(r, "queues"), 1);
        json_decref(r);
    }
    sbt_wait_queue_int(c, "bench:drop", "acked", COUNT, 10000);
    assert_int_equal(sbt_queue_int(c, "bench:drop", "depth"), 0);
    assert_int_equal(sbt_queue_int(c, "bench:drop", "published"), COUNT);
    assert_int_equal(sbt_queue_int(c, "bench:drop", "dead"), 0);
    sbt_close(c);
    b->passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_null_acknowledges_everything, sbt_setup,
                                        sbt_teardown),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
