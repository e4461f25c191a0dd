/*
 * What the HTTP listener makes of a snapshot (service/http_render.c,
 * http_snap.c's server-thread part), without a broker: names that need
 * escaping in Prometheus labels and in JSON, queues summed per route with
 * the client queues as one group, pages past the end, routes beyond the 50
 * shown.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "service/alloc.h"
#include "service/http_int.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static size_t add(sb_http_snap *s, const char *str)
{
    size_t n = strlen(str) + 1, at = s->pool_len;
    s->pool = realloc(s->pool, s->pool_len + n);
    assert_non_null(s->pool);
    memcpy(s->pool + at, str, n);
    s->pool_len += n;
    return at;
}

static void queue(sb_http_snap *s, const char *name, const char *route, int64_t depth)
{
    sb_http_qrow *r;
    s->q = realloc(s->q, (s->q_count + 1) * sizeof *s->q);
    assert_non_null(s->q);
    r = &s->q[s->q_count++];
    memset(r, 0, sizeof *r);
    r->name.off = add(s, name);
    r->route.off = add(s, route);
    r->kind = route[0] != '\0' ? "route" : "client";
    r->durability = "fsync";
    r->depth = depth;
    r->in = (uint64_t)depth;
}

/* The snapshot was built with realloc (not sb_malloc): free it the same way. */
static void snap_free(sb_http_snap *s)
{
    free(s->q);
    free(s->a);
    free(s->pool);
    sb_free(s->groups);
    free(s);
}

static sb_http_snap *snap_new(void)
{
    sb_http_snap *s = calloc(1, sizeof *s);
    assert_non_null(s);
    s->version = "0.0.0";
    s->has_store = 1;
    s->store.commits = 3;
    s->store.commit_us[0] = 2;
    s->store.commit_us[SB_STORE_LATENCY_BUCKETS - 1] = 1;
    return s;
}

static char *text_of(sb_jsonw *w)
{
    char *t;
    assert_false(w->failed);
    t = malloc(w->len + 1);
    assert_non_null(t);
    memcpy(t, w->buf, w->len);
    t[w->len] = '\0';
    sb_jsonw_free(w);
    return t;
}

static void test_metrics_escaping_and_groups(void **state)
{
    sb_http_snap *s = snap_new();
    sb_jsonw w = {0};
    char *t;
    (void)state;
    queue(s, "b", "orders", 2);
    queue(s, "a", "orders", 3);
    queue(s, "we\"ird\\q\nname", "", 5);
    queue(s, "c2", "", 1);
    s->a = calloc(1, sizeof *s->a);
    assert_non_null(s->a);
    s->a_count = 1;
    s->a[0].name.off = add(s, "plc\"1");
    s->a[0].type.off = add(s, "tcp");
    s->a[0].state.off = add(s, "up");
    s->a[0].detail.off =
        add(s, "{\"link\":\"up\",\"connects\":3,\"up\":true,\"backlog\":{\"depth\":12,"
               "\"oldest-age ms\":2.5},\"last_error\":\"\"}");
    s->a[0].connections = -1;
    s->a[0].link_up = 1;
    s->a[0].errors = 4;
    assert_int_equal(sb_http__snap_finish(s), 0);
    assert_int_equal(s->group_count, 2);

    sb_http__render_metrics(&w, s, 1);
    t = text_of(&w);
    assert_non_null(strstr(t, "switchboard_route_depth{kind=\"route\",route=\"orders\"} 5\n"));
    assert_non_null(strstr(t, "switchboard_route_depth{kind=\"client\",route=\"\"} 6\n"));
    assert_non_null(strstr(t, "switchboard_route_queues{kind=\"client\",route=\"\"} 2\n"));
    assert_non_null(strstr(t, "switchboard_queue_depth{kind=\"client\",queue=\"we\\\"ird\\\\q\\nname\","
                              "route=\"\"} 5\n"));
    assert_non_null(strstr(t, "switchboard_adapter_link_up{adapter=\"plc\\\"1\"} 1\n"));
    assert_null(strstr(t, "switchboard_adapter_connections{"));
    assert_non_null(strstr(t, "switchboard_adapter_errors_total{adapter=\"plc\\\"1\"} 4\n"));
    /* the adapter's own numbers, nested ones flattened, names made valid */
    assert_non_null(strstr(t, "# TYPE switchboard_adapter_stats_connects untyped\n"
                              "switchboard_adapter_stats_connects{adapter=\"plc\\\"1\"} 3\n"));
    assert_non_null(strstr(t, "switchboard_adapter_stats_up{adapter=\"plc\\\"1\"} 1\n"));
    assert_non_null(
        strstr(t, "switchboard_adapter_stats_backlog_depth{adapter=\"plc\\\"1\"} 12\n"));
    assert_non_null(strstr(
        t, "switchboard_adapter_stats_backlog_oldest_age_ms{adapter=\"plc\\\"1\"} 2.5\n"));
    assert_null(strstr(t, "switchboard_adapter_stats_link"));
    assert_null(strstr(t, "switchboard_adapter_stats_last_error"));
    /* cumulative buckets; the last one is the count */
    assert_non_null(strstr(t, "switchboard_store_commit_seconds_bucket{le=\"0.0001\"} 2\n"));
    assert_non_null(strstr(t, "switchboard_store_commit_seconds_bucket{le=\"2.5\"} 2\n"));
    assert_non_null(strstr(t, "switchboard_store_commit_seconds_bucket{le=\"+Inf\"} 3\n"));
    assert_non_null(strstr(t, "switchboard_store_commit_seconds_count 3\n"));
    /* no raw newline inside a sample line: every line starts a comment or a name */
    for (const char *p = t; *p != '\0'; p = strchr(p, '\n') + 1)
        assert_true(*p == '#' || strncmp(p, "switchboard_", 12) == 0 ||
                    strncmp(p, "process_", 8) == 0);
    free(t);

    sb_http__render_status(&w, s, 0, 50);
    t = text_of(&w);
    {
        json_error_t e;
        json_t *o = json_loads(t, 0, &e), *items;
        if (o == NULL)
            fail_msg("not JSON (%s at %d): %s", e.text, e.position, t);
        items = json_object_get(json_object_get(o, "queues"), "items");
        assert_int_equal(json_array_size(items), 4);
        /* routes' queues first, by route then name; then the client queues */
        assert_string_equal(json_string_value(json_object_get(json_array_get(items, 0), "name")),
                            "a");
        assert_string_equal(json_string_value(json_object_get(json_array_get(items, 2), "name")),
                            "c2");
        assert_string_equal(json_string_value(json_object_get(json_array_get(items, 3), "name")),
                            "we\"ird\\q\nname");
        assert_int_equal(json_array_size(json_object_get(o, "routes")), 2);
        json_decref(o);
    }
    free(t);
    /* a page past the end: no items, still JSON */
    sb_http__render_status(&w, s, 7, 50);
    t = text_of(&w);
    {
        json_t *o = json_loads(t, 0, NULL);
        assert_non_null(o);
        assert_int_equal(
            json_array_size(json_object_get(json_object_get(o, "queues"), "items")), 0);
        json_decref(o);
    }
    free(t);
    snap_free(s);
}

static void test_many_routes(void **state)
{
    sb_http_snap *s = snap_new();
    sb_jsonw w = {0};
    char name[32];
    char *t;
    json_t *o, *routes;
    (void)state;
    for (int i = 0; i < 120; i++) {
        snprintf(name, sizeof name, "r%03d", i);
        queue(s, name, name, i == 77 ? 1000 : i % 5);
    }
    s->has_store = 0; /* a session agent's: no store section */
    assert_int_equal(sb_http__snap_finish(s), 0);
    sb_http__render_status(&w, s, 0, 10);
    t = text_of(&w);
    o = json_loads(t, 0, NULL);
    assert_non_null(o);
    assert_int_equal(json_integer_value(json_object_get(o, "routes_total")), 120);
    routes = json_object_get(o, "routes");
    assert_int_equal(json_array_size(routes), 50);
    assert_string_equal(json_string_value(json_object_get(json_array_get(routes, 0), "route")),
                        "r077");
    assert_int_equal(json_object_size(json_object_get(o, "store")), 0);
    assert_int_equal(json_array_size(json_object_get(json_object_get(o, "queues"), "items")), 10);
    json_decref(o);
    free(t);
    snap_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_metrics_escaping_and_groups),
        cmocka_unit_test(test_many_routes),
    };
    return cmocka_run_group_tests_name("http_render", tests, NULL, NULL);
}
