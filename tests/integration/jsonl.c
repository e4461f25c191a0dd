/*
 * jsonl helpers for the integration tests (see harness.h): requests and
 * replies as jansson objects over sb_client, deliveries that arrive while a
 * reply is awaited kept in order for sbt_next_msg.
 */
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

sbt_conn *sbt_try_connect(int port, int timeout_ms)
{
    sbt_conn *c = calloc(1, sizeof(*c));
    sb_client_options o;
    sb_error err;
    assert_non_null(c);
    sb_client_options_init(&o);
    o.connect_timeout_ms = timeout_ms;
    snprintf(c->endpoint, sizeof(c->endpoint), "tcp:127.0.0.1:%d", port);
    if (sb_client_connect(&c->c, c->endpoint, &o, &err) != 0) {
        free(c);
        return NULL;
    }
    c->stash = json_array();
    assert_non_null(c->stash);
    return c;
}

sbt_conn *sbt_connect(int port)
{
    sbt_conn *c = sbt_try_connect(port, 5000);
    if (c == NULL)
        fail_msg("cannot connect to tcp:127.0.0.1:%d", port);
    return c;
}

void sbt_close(sbt_conn *c)
{
    if (c == NULL)
        return;
    sb_client_free(c->c);
    json_decref(c->stash);
    free(c);
}

static int is_op(const json_t *o, const char *op)
{
    const char *v = json_string_value(json_object_get(o, "op"));
    return v != NULL && strcmp(v, op) == 0;
}

json_t *sbt_call_json(sbt_conn *c, json_t *req, int timeout_ms)
{
    int64_t id = sb_client_next_id(c->c);
    int64_t deadline = sbt_now_ms() + timeout_ms;
    size_t len; /* of the last line, when it is printed */
    sb_error err;
    assert_non_null(req);
    json_object_set_new(req, "id", json_integer(id));
    sbt_waiting_for("the reply to %s request %lld on %s",
                    json_string_value(json_object_get(req, "op")), (long long)id, c->endpoint);
    if (sb_client_write_json(c->c, req, &err) != 0 || sb_client_flush(c->c, &err) != 0) {
        json_decref(req);
        return NULL;
    }
    json_decref(req);
    for (;;) {
        json_t *r, *rid;
        int64_t left = deadline - sbt_now_ms();
        int rc = sb_client_read_json(c->c, &r, left > 0 ? (int)left : 0, &err);
        if (rc != 0)
            return NULL;
        rid = json_object_get(r, "id");
        if (json_is_integer(rid) && json_integer_value(rid) == id)
            return r;
        if (rid == NULL && is_op(r, "error"))
            return r; /* the broker could not read the request */
        if (is_op(r, "msg")) {
            json_array_append_new(c->stash, r);
            continue;
        }
        fail_msg("unexpected line while waiting for reply %lld: %s", (long long)id,
                 sb_client_last_line(c->c, &len));
    }
}

json_t *sbt_vcall(sbt_conn *c, const char *fmt, va_list ap)
{
    json_error_t jerr;
    json_t *req = json_vpack_ex(&jerr, 0, fmt, ap), *r;
    if (req == NULL)
        fail_msg("bad request format %s: %s", fmt, jerr.text);
    r = sbt_call_json(c, req, SBT_REPLY_MS);
    if (r == NULL)
        fail_msg("no reply from %s within %d ms (connection closed or timed out)", c->endpoint,
                 SBT_REPLY_MS);
    return r;
}

json_t *sbt_call(sbt_conn *c, const char *fmt, ...)
{
    va_list ap;
    json_t *r;
    va_start(ap, fmt);
    r = sbt_vcall(c, fmt, ap);
    va_end(ap);
    return r;
}

void sbt_send(sbt_conn *c, const char *fmt, ...)
{
    va_list ap;
    json_error_t jerr;
    json_t *req;
    sb_error err;
    va_start(ap, fmt);
    req = json_vpack_ex(&jerr, 0, fmt, ap);
    va_end(ap);
    if (req == NULL)
        fail_msg("bad request format %s: %s", fmt, jerr.text);
    if (sb_client_write_json(c->c, req, &err) != 0)
        fail_msg("write to %s failed: %s", c->endpoint, err.msg);
    json_decref(req);
}

json_t *sbt_read(sbt_conn *c, int timeout_ms)
{
    json_t *r;
    sb_error err;
    int rc = sb_client_read_json(c->c, &r, timeout_ms, &err);
    if (rc == SB_ETIMEDOUT)
        return NULL;
    if (rc != 0)
        fail_msg("read from %s failed: %s", c->endpoint, err.msg);
    return r;
}

json_t *sbt_next_msg(sbt_conn *c, int timeout_ms)
{
    size_t len;
    json_t *r;
    if (json_array_size(c->stash) > 0) {
        r = json_incref(json_array_get(c->stash, 0));
        json_array_remove(c->stash, 0);
        return r;
    }
    sbt_waiting_for("a delivery on %s", c->endpoint);
    r = sbt_read(c, timeout_ms);
    if (r == NULL)
        fail_msg("no delivery on %s within %d ms", c->endpoint, timeout_ms);
    if (!is_op(r, "msg"))
        fail_msg("expected a delivery, got %s", sb_client_last_line(c->c, &len));
    return r;
}

const char *sbt_str(const json_t *o, const char *key)
{
    const char *v = json_string_value(json_object_get(o, key));
    if (v == NULL) {
        char *text = json_dumps(o, JSON_COMPACT);
        fail_msg("no string \"%s\" in %s", key, text != NULL ? text : "?");
    }
    return v;
}

int64_t sbt_int(const json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v)) {
        char *text = json_dumps(o, JSON_COMPACT);
        fail_msg("no integer \"%s\" in %s", key, text != NULL ? text : "?");
    }
    return json_integer_value(v);
}

void sbt_expect_op(const json_t *reply, const char *op)
{
    if (!is_op(reply, op)) {
        char *text = json_dumps(reply, JSON_COMPACT);
        fail_msg("expected op \"%s\", got %s", op, text != NULL ? text : "?");
    }
}

int64_t sbt_pub(sbt_conn *c, const char *topic, const char *payload, int queues)
{
    json_t *r = sbt_call(c, "{s:s, s:s, s:s}", "op", "pub", "topic", topic, "payload", payload);
    int64_t id;
    sbt_expect_op(r, "puback");
    id = sbt_int(r, "msg_id");
    assert_true(id > 0);
    if (queues >= 0)
        assert_int_equal(sbt_int(r, "queues"), queues);
    json_decref(r);
    return id;
}

void sbt_expect_error(json_t *reply, const char *code)
{
    sbt_expect_op(reply, "error");
    assert_string_equal(sbt_str(reply, "code"), code);
    assert_true(strlen(sbt_str(reply, "message")) > 0);
    json_decref(reply);
}

void sbt_sub(sbt_conn *c, const char *sub, const char *filter, int window)
{
    json_t *r = filter != NULL
                    ? sbt_call(c, "{s:s, s:s, s:s, s:i}", "op", "sub", "sub", sub, "filter", filter,
                               "window", window)
                    : sbt_call(c, "{s:s, s:s, s:i}", "op", "sub", "sub", sub, "window", window);
    sbt_expect_op(r, "subscribed");
    assert_string_equal(sbt_str(r, "sub"), sub);
    if (filter != NULL)
        assert_string_equal(sbt_str(r, "filter"), filter);
    json_decref(r);
}

void sbt_ack(sbt_conn *c, const char *sub, int64_t msg_id)
{
    sb_error err;
    sbt_send(c, "{s:s, s:s, s:I}", "op", "ack", "sub", sub, "msg_id", (json_int_t)msg_id);
    if (sb_client_flush(c->c, &err) != 0)
        fail_msg("ack: %s", err.msg);
}

void sbt_nack(sbt_conn *c, const char *sub, int64_t msg_id, const char *reason)
{
    sb_error err;
    sbt_send(c, "{s:s, s:s, s:I, s:s}", "op", "nack", "sub", sub, "msg_id", (json_int_t)msg_id,
             "reason", reason);
    if (sb_client_flush(c->c, &err) != 0)
        fail_msg("nack: %s", err.msg);
}

json_t *sbt_queue_stats(sbt_conn *c, const char *name)
{
    json_t *r = sbt_call(c, "{s:s}", "op", "stats"), *qs, *q;
    size_t i;
    sbt_expect_op(r, "stats");
    qs = json_object_get(r, "queues");
    assert_true(json_is_array(qs));
    json_array_foreach(qs, i, q)
    {
        const char *n = json_string_value(json_object_get(q, "name"));
        if (n != NULL && strcmp(n, name) == 0) {
            json_incref(q);
            json_decref(r);
            return q;
        }
    }
    json_decref(r);
    return NULL;
}

int64_t sbt_queue_int(sbt_conn *c, const char *name, const char *field)
{
    json_t *q = sbt_queue_stats(c, name);
    int64_t v;
    if (q == NULL)
        fail_msg("no queue %s in stats", name);
    v = sbt_int(q, field);
    json_decref(q);
    return v;
}

void sbt_wait_queue_int(sbt_conn *c, const char *name, const char *field, int64_t want,
                        int timeout_ms)
{
    int64_t deadline = sbt_now_ms() + timeout_ms, v;
    sbt_waiting_for("queue %s: %s to be %lld", name, field, (long long)want);
    while ((v = sbt_queue_int(c, name, field)) != want) {
        if (sbt_now_ms() > deadline)
            fail_msg("queue %s: %s is %lld after %d ms, want %lld", name, field, (long long)v,
                     timeout_ms, (long long)want);
        sbt_poll_pause(10);
    }
}
