/* The in-process core harness (see core_harness.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <jansson.h>

#include "core_harness.h"
#include "adapters/builtin.h"
#include "adapters/exec/exec_keys.h"
#include "service/alloc.h"
#include "service/log.h"

/* ---- directory ---- */

static void rm_rf(const char *dir)
{
    uv_fs_t req;
    uv_dirent_t ent;
    char p[1200];
    if (uv_fs_scandir(NULL, &req, dir, 0, NULL) >= 0) {
        while (uv_fs_scandir_next(&req, &ent) != UV_EOF) {
            uv_fs_t r2;
            snprintf(p, sizeof(p), "%s/%s", dir, ent.name);
            uv_fs_unlink(NULL, &r2, p, NULL);
            uv_fs_req_cleanup(&r2);
        }
    }
    uv_fs_req_cleanup(&req);
    uv_fs_rmdir(NULL, &req, dir, NULL);
    uv_fs_req_cleanup(&req);
}

int core_setup(void **state)
{
    core_fx *f = calloc(1, sizeof(*f));
    char tmp[900], tmpl[1000];
    size_t len = sizeof(tmp);
    uv_fs_t req;
    assert_non_null(f);
    assert_int_equal(uv_os_tmpdir(tmp, &len), 0);
    snprintf(tmpl, sizeof(tmpl), "%s/sb-core-XXXXXX", tmp);
    assert_int_equal(uv_fs_mkdtemp(NULL, &req, tmpl, NULL), 0);
    snprintf(f->dir, sizeof(f->dir), "%s", req.path);
    uv_fs_req_cleanup(&req);
    fake_register();
    /* the keys of the types configs name (exec stands for the fake type) */
    {
        int rc = sb_adapter_keys_register_builtin(NULL);
        assert_true(rc == 0 || rc == SB_EEXIST);
    }
    *state = f;
    return 0;
}

int core_teardown(void **state)
{
    core_fx *f = *state;
    sb_alloc_fail_after(-1);
    if (f->b != NULL)
        core_stop(f);
    for (size_t i = 0; i < f->consumer_count; i++) {
        fake_log_free(&f->consumers[i]->log);
        free(f->consumers[i]);
    }
    rm_rf(f->dir);
    free(f);
    return 0;
}

/* ---- config and lifecycle ---- */

/* CORE_LOG=debug|info|warn|error shows what the broker says (default: off). */

/* Parses body under the harness's broker section; NULL with errs filled if
 * it does not parse. */
static sb_config *parse_config(core_fx *f, const char *body, sb_config_errors *errs)
{
    sb_config *cfg = NULL;
    const char *extra = f->broker_extra != NULL ? f->broker_extra : "";
    size_t n = strlen(body) + strlen(f->dir) + strlen(extra) + 200;
    char *text = malloc(n);
    const char *level = getenv("CORE_LOG");
    int rc;

    assert_non_null(text);
    snprintf(text, n,
             "broker:\n"
             "  data_dir: '%s'\n"
             "  admin: {endpoint: \"off\"}\n"
             "  log: {level: %s}\n"
             "%s%s",
             f->dir, level != NULL && sb_log_level_parse(level) >= 0 ? level : "off", extra, body);
    rc = sb_config_parse(&cfg, "core.yaml", text, strlen(text), errs);
    free(text);
    if (rc != 0)
        return NULL;
    for (size_t i = 0; i < cfg->adapter_count; i++) {
        sb_adapter_config *a = &cfg->adapters[i];
        const sb_exec_settings *x = SB_EXEC_CFG(a);
        if (strcmp(a->type, "exec") == 0 && x->command_count == 1 &&
            strcmp(x->command[0], "fake") == 0) {
            sb_free(a->type);
            a->type = sb_strdup("fake");
            assert_non_null(a->type);
        }
    }
    return cfg;
}

sb_config *core_config(core_fx *f, const char *body)
{
    sb_config_errors errs = {0};
    sb_config *cfg = parse_config(f, body, &errs);
    if (cfg == NULL) {
        sb_config_errors_print(&errs, stderr);
        sb_config_errors_clear(&errs);
        fail_msg("config does not parse:\n%s", body);
    }
    return cfg;
}

/* sb_broker_new + sb_broker_start; the broker is freed on failure. */
static int try_start(core_fx *f, const char *body, sb_error *err)
{
    sb_config *cfg = core_config(f, body);
    int rc;
    assert_null(f->b);
    /* `run` does this in main.c; a reload does it again. */
    sb_log_configure(cfg->broker.log_level, cfg->broker.log_stderr, NULL);
    rc = sb_broker_new(&f->b, cfg, err);
    if (rc != 0) {
        sb_config_free(cfg);
        return rc;
    }
    rc = sb_broker_start(f->b, err);
    if (rc != 0) {
        sb_broker_free(f->b);
        f->b = NULL;
        return rc;
    }
    uv_timer_init(sb_broker_loop(f->b), &f->tick);
    return 0;
}

static int first_windows_read(core_fx *f)
{
    for (const sb_queue *q = f->b->queues; q != NULL; q = q->next)
        if (q->page_op != NULL)
            return 0;
    return 1;
}

void core_start(core_fx *f, const char *body)
{
    sb_error err;
    int rc;
    sb_error_clear(&err);
    rc = try_start(f, body, &err);
    if (rc != 0)
        fail_msg("broker does not start: %s (%s)", err.msg, sb_errname(rc));
    /* The first windows are read after the start, on the store thread:
     * what a restart brings back is there for the test's next step. */
    CORE_WAIT(f, first_windows_read(f));
}

void core_stop(core_fx *f)
{
    uv_loop_t *loop = sb_broker_loop(f->b);
    uint64_t deadline = uv_hrtime() + 30 * (uint64_t)1000000000;
    sb_broker_stop(f->b);
    /* The stop closes every handle of the loop (the tick too): then it ends. */
    while (uv_run(loop, UV_RUN_ONCE) != 0)
        if (uv_hrtime() > deadline)
            fail_msg("the broker did not stop within 30 s");
    sb_broker_free(f->b);
    f->b = NULL;
}

int core_reload(core_fx *f, const char *body, sb_error *err)
{
    sb_config_errors errs = {0};
    sb_config *cfg = parse_config(f, body, &errs);
    if (cfg == NULL) {
        /* as `run` does on SIGHUP: the running configuration stays */
        char line[512];
        sb_error_set(err, SB_ECONFIG, 0, "%s",
                     errs.count > 0 ? sb_config_error_format(&errs.items[0], line, sizeof line)
                                    : "config does not parse");
        sb_config_errors_clear(&errs);
        return SB_ECONFIG;
    }
    return sb_broker_reload(f->b, cfg, err);
}

fake_consumer *core_attach(core_fx *f, const char *sub, int window)
{
    fake_consumer *c = malloc(sizeof(*c));
    sb_error err;
    int rc;
    assert_non_null(c);
    assert_true(f->consumer_count < CORE_MAX_CONSUMERS);
    fake_consumer_init(c, sb_broker_loop(f->b), sub, window);
    f->consumers[f->consumer_count++] = c;
    rc = sb_broker_attach(f->b, sub, &c->c, &err);
    if (rc != 0)
        fail_msg("attach %s: %s", sub, err.msg);
    return c;
}

void core_detach(core_fx *f, fake_consumer *c, int failed)
{
    sb_broker_detach(f->b, &c->c, failed);
    fake_consumer_detached(c);
}

/* ---- driving the loop ---- */

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

void core_wait_begin(core_fx *f, int64_t timeout_ms)
{
    f->deadline_ns = uv_hrtime() + (uint64_t)timeout_ms * 1000000;
}

int core_turn(core_fx *f)
{
    if (uv_hrtime() > f->deadline_ns)
        return 0;
    if (!uv_is_active((uv_handle_t *)&f->tick))
        uv_timer_start(&f->tick, on_tick, 5, 5);
    uv_run(sb_broker_loop(f->b), UV_RUN_ONCE);
    return 1;
}

sb_queue *core_queue(core_fx *f, const char *name)
{
    return sb_broker__find_queue(f->b, name);
}

typedef struct admin_wait {
    int done, status;
    json_t *result;
} admin_wait;

static void on_admin(void *ctx, int status, void *result, const char *why)
{
    admin_wait *w = ctx;
    (void)why;
    w->done = 1;
    w->status = status;
    w->result = result;
}

json_t *core_dlq(core_fx *f, const char *sub)
{
    admin_wait w = {0};
    sb_error err;
    int rc = sb_broker_dlq_list(f->b, sub, 0, 1000, on_admin, &w, &err);
    if (rc != 0)
        fail_msg("dlq list: %s", err.msg);
    CORE_WAIT(f, w.done);
    assert_int_equal(w.status, 0);
    assert_non_null(w.result);
    return w.result;
}

int core_pub_wait(core_fx *f, fake_pub *p)
{
    assert_int_equal(p->rc, 0);
    CORE_WAIT(f, p->done);
    assert_int_equal(p->calls, 1);
    return p->status;
}

uint64_t core_publish_ok(core_fx *f, fake_adapter *from, const char *topic, const char *payload,
                         const char *const *headers)
{
    fake_pub p;
    if (fake_publish(&p, f->b, from, topic, payload, headers, 0, NULL) != 0)
        fail_msg("publish %s: %s", topic, p.err.msg);
    if (core_pub_wait(f, &p) != 0)
        fail_msg("publish %s: status %s", topic, sb_errname(p.status));
    return p.msg_id;
}

/* ---- invariants ---- */

static size_t check_state_list(const sb_entry_list *l, int state)
{
    size_t n = 0;
    const sb_entry *prev = NULL;
    for (const sb_entry *e = l->head; e != NULL; prev = e, e = e->snext) {
        assert_int_equal(e->state, state);
        assert_ptr_equal(e->sprev, prev);
        if (prev != NULL)
            assert_true(prev->deadline <= e->deadline); /* by deadline */
        n++;
    }
    assert_ptr_equal(l->tail, prev);
    return n;
}

void core_check_queue(const sb_queue *q)
{
    size_t ready = 0, leased = 0, retry = 0, outstanding = 0;
    int64_t depth = 0, bytes = 0;
    int seen_cursor = q->cursor == NULL, capacity = 0;
    const sb_entry *prev = NULL;

    for (const sb_entry *e = q->fifo.head; e != NULL; prev = e, e = e->next) {
        assert_ptr_equal(e->queue, q);
        assert_ptr_equal(e->prev, prev);
        if (prev != NULL)
            assert_true(prev->msg->id < e->msg->id); /* id order */
        if (e == q->cursor)
            seen_cursor = 1;
        switch (e->state) {
        case SB_ENTRY_READY:
            /* every entry never offered is at or after the cursor */
            assert_true(seen_cursor && q->cursor != NULL);
            ready++;
            break;
        case SB_ENTRY_LEASED:
            leased++;
            if (e->delivery != NULL)
                assert_ptr_equal(e->delivery->entry, e);
            break;
        case SB_ENTRY_RETRY:
            retry++;
            assert_null(e->delivery);
            break;
        case SB_ENTRY_DONE:
            assert_true(e != q->fifo.head); /* finished heads are popped */
            continue;
        default:
            fail_msg("entry %llu in state %d", (unsigned long long)e->msg->id, e->state);
        }
        depth++;
        bytes += (int64_t)sb_message_size(e->msg);
    }
    assert_ptr_equal(q->fifo.tail, prev);
    assert_true(seen_cursor);
    if (q->cursor != NULL)
        assert_int_equal(q->cursor->state, SB_ENTRY_READY);
    assert_int_equal(check_state_list(&q->leased, SB_ENTRY_LEASED), leased);
    assert_int_equal(check_state_list(&q->retry, SB_ENTRY_RETRY), retry);
    assert_int_equal(q->depth, depth);
    assert_int_equal(q->bytes, bytes);
    /* paging: the window holds the oldest entries, the store the rest */
    assert_true(q->disk_depth >= 0 && q->disk_bytes >= 0);
    assert_true(prev == NULL || prev->msg->id <= q->paged_to);
    assert_true(q->pending >= 0 && q->pending_bytes >= 0);
    for (const sb_consumer *c = q->consumers; c != NULL; c = c->next) {
        int n = 0;
        assert_ptr_equal(c->queue, q);
        for (const sb_delivery *d = c->outstanding; d != NULL; d = d->onext) {
            assert_ptr_equal(d->consumer, c);
            if (d->entry != NULL) {
                assert_ptr_equal(d->entry->delivery, d);
                assert_int_equal(d->entry->state, SB_ENTRY_LEASED);
            }
            n++;
        }
        assert_int_equal(c->inflight, n);
        outstanding += (size_t)n;
        if (!c->busy && c->inflight < c->window)
            capacity = 1;
    }
    (void)outstanding;
    /* A lease always ends (its timer runs), a retry too when someone can take it. */
    if (q->leased.head != NULL || (q->retry.head != NULL && capacity))
        assert_true(uv_is_active((const uv_handle_t *)&q->timer));
    /* Nothing waits that a consumer with room could take now, unless a
     * delivery could not be allocated: then it waits for its retry. */
    if (capacity && q->live && ready > 0)
        assert_non_null(q->retry.head);
}

void core_check_all(core_fx *f)
{
    for (const sb_queue *q = f->b->queues; q != NULL; q = q->next)
        core_check_queue(q);
}
