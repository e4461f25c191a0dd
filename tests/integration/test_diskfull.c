/*
 * A full store (broker.store.max_db_bytes: 256KiB): publishing until the
 * store refuses gives SB_ENOSPC replies (the broker keeps running), every
 * acknowledged publish is delivered and no refused one ever is; once the
 * consumer acknowledged the messages and space is free again, publishing
 * works again without a restart.
 */
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char config[] = "broker:\n"
                             "  data_dir: '{data}'\n"
                             "  admin: { endpoint: 'off' }\n"
                             "  store: { max_db_bytes: 256KiB }\n"
                             "adapters:\n"
                             "  - name: clients\n"
                             "    type: tcp\n"
                             "    listen: 127.0.0.1:{port0}\n"
                             "    protocol: jsonl\n"
                             "routes:\n"
                             "  - name: fill\n"
                             "    from: fill/#\n"
                             "    durability: batched\n";

#define MAX_SEQ 20000
#define WINDOW 32
#define PAYLOAD 1000

enum { UNSENT = 0, SENT, ACKED, REFUSED, DELIVERED };

/* payload: "<seq>:" padded with 'x' to PAYLOAD bytes */
static void make_payload(char *out, int seq)
{
    int n = snprintf(out, PAYLOAD + 1, "%d:", seq);
    memset(out + n, 'x', (size_t)(PAYLOAD - n));
    out[PAYLOAD] = '\0';
}

/* Publishes seq with request id seq. */
static void send_pub(sbt_conn *c, int seq)
{
    char payload[PAYLOAD + 1];
    make_payload(payload, seq);
    sbt_send(c, "{s:s, s:i, s:s, s:s}", "op", "pub", "id", seq, "topic", "fill/a", "payload",
             payload);
}

/* Reads one reply and records its outcome; returns its seq. */
static int read_outcome(sbt_conn *c, unsigned char *state)
{
    json_t *r = sbt_read(c, SBT_REPLY_MS);
    const char *op;
    int seq;
    if (r == NULL)
        fail_msg("no publish reply within %d ms", SBT_REPLY_MS);
    seq = (int)sbt_int(r, "id");
    assert_true(seq > 0 && seq < MAX_SEQ);
    assert_int_equal(state[seq], SENT);
    op = sbt_str(r, "op");
    if (strcmp(op, "puback") == 0) {
        assert_int_equal(sbt_int(r, "queues"), 1);
        state[seq] = ACKED;
    } else {
        sbt_expect_op(r, "error");
        if (strcmp(sbt_str(r, "code"), "SB_ENOSPC") != 0)
            fail_msg("publish %d refused with %s (%s), want SB_ENOSPC", seq, sbt_str(r, "code"),
                     sbt_str(r, "message"));
        /* the disk has room: the message names the limit, not the disk */
        if (strstr(sbt_str(r, "message"), "size limit reached (broker.store.max_db_bytes = "
                                          "262144)") == NULL)
            fail_msg("publish %d refused with: %s", seq, sbt_str(r, "message"));
        state[seq] = REFUSED;
    }
    json_decref(r);
    return seq;
}

/* Receives and acks deliveries until every ACKED seq is DELIVERED. */
static void drain(sbt_conn *sub, unsigned char *state, int upto)
{
    int want = 0, last = 0;
    for (int i = 1; i <= upto; i++)
        want += state[i] == ACKED;
    while (want > 0) {
        json_t *m = sbt_next_msg(sub, SBT_REPLY_MS);
        const char *p = sbt_str(m, "payload");
        int seq = atoi(p);
        char expect[PAYLOAD + 1];
        assert_true(seq > 0 && seq <= upto);
        if (state[seq] != ACKED)
            fail_msg("delivered seq %d which was %s", seq,
                     state[seq] == REFUSED     ? "refused"
                     : state[seq] == DELIVERED ? "already delivered"
                                               : "never acknowledged");
        make_payload(expect, seq);
        assert_string_equal(p, expect);
        assert_true(seq > last); /* in publish order */
        last = seq;
        state[seq] = DELIVERED;
        want--;
        sbt_ack(sub, "fill", sbt_int(m, "msg_id"));
        json_decref(m);
    }
}

static void test_store_full_then_recovers(void **state_)
{
    sbt_broker *b = *state_;
    unsigned char *state = calloc(MAX_SEQ, 1);
    sbt_conn *c, *sub;
    int seq = 0, outstanding = 0, acked = 0, refused = 0, first_refused = 0;
    json_t *r, *st;

    assert_non_null(state);
    sbt_broker_init(b, "diskfull", 1);
    sbt_broker_config(b, config);
    sbt_broker_start(b);
    c = sbt_connect(b->port[0]);

    /* Fill: pipelined publishes until the first refusal, then drain. */
    while (first_refused == 0 || outstanding > 0) {
        while (first_refused == 0 && outstanding < WINDOW) {
            if (++seq >= MAX_SEQ)
                fail_msg("%d publishes of %d bytes fit in a 256 KiB store", seq, PAYLOAD);
            state[seq] = SENT;
            send_pub(c, seq);
            outstanding++;
        }
        {
            int s = read_outcome(c, state);
            outstanding--;
            if (state[s] == REFUSED && (first_refused == 0 || s < first_refused))
                first_refused = s;
        }
    }
    for (int i = 1; i <= seq; i++) {
        acked += state[i] == ACKED;
        refused += state[i] == REFUSED;
    }
    assert_int_equal(acked + refused, seq);
    print_message("store full after %d acknowledged publishes (%d refused)\n", acked, refused);
    /* 256 KiB hold about 200 of these; all acknowledged ones come first. */
    assert_true(acked >= 50);
    for (int i = 1; i < first_refused; i++)
        assert_int_equal(state[i], ACKED);

    /* The broker reports the condition and keeps refusing, but serves.
     * ("degraded" itself may already read false: a small probe commit that
     * still fits clears it until the next publish fails.) */
    r = sbt_call(c, "{s:s}", "op", "stats");
    st = json_object_get(r, "store");
    assert_non_null(strstr(sbt_str(st, "last_error"), "max_db_bytes = 262144"));
    assert_true(sbt_int(st, "failed_commits") >= 1);
    assert_int_equal(sbt_queue_int(c, "fill", "depth"), acked);
    /* every refusal is counted, those of a failed commit too */
    assert_int_equal(sbt_int(json_object_get(r, "broker"), "refused"), refused);
    json_decref(r);
    /* A failed group commit refuses all its publishes, so one message alone
     * may still fit: publish singly until the store refuses again. */
    for (int tries = 0;; tries++) {
        assert_true(tries < 200);
        state[++seq] = SENT;
        send_pub(c, seq);
        read_outcome(c, state);
        if (state[seq] == REFUSED)
            break;
    }

    /* Every acknowledged message is delivered, in order; none refused is. */
    sub = sbt_connect(b->port[0]);
    sbt_sub(sub, "fill", NULL, 1000);
    drain(sub, state, seq);
    sbt_wait_queue_int(c, "fill", "depth", 0, 10000);

    /* The acks freed space: publishing works again, without a restart. */
    for (int64_t deadline = sbt_now_ms() + 15000;;) {
        if (++seq >= MAX_SEQ)
            fail_msg("too many publishes");
        state[seq] = SENT;
        send_pub(c, seq);
        read_outcome(c, state);
        if (state[seq] == ACKED)
            break;
        if (sbt_now_ms() > deadline)
            fail_msg("publishes still refused 15 s after the queue was emptied");
        sbt_poll_pause(20);
    }
    for (int i = 0; i < 20; i++) {
        state[++seq] = SENT;
        send_pub(c, seq);
        read_outcome(c, state);
        assert_int_equal(state[seq], ACKED);
    }
    drain(sub, state, seq);
    r = sbt_call(c, "{s:s}", "op", "stats");
    assert_false(json_is_true(json_object_get(json_object_get(r, "store"), "degraded")));
    refused = 0;
    for (int i = 1; i <= seq; i++)
        refused += state[i] == REFUSED;
    assert_int_equal(sbt_int(json_object_get(r, "broker"), "refused"), refused);
    json_decref(r);
    sbt_broker_wait_log(b, "store degraded", 1, 1000);

    sbt_close(sub);
    sbt_close(c);
    sbt_broker_stop(b);
    free(state);
    b->passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_store_full_then_recovers, sbt_setup, sbt_teardown),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests_name("diskfull", tests, NULL, NULL);
}
