/* The inbox: posts from other threads run on the loop, in order, once. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "service/error.h"
#include "service/inbox.h"

#define POSTS 1000

typedef struct ctx {
    sb_inbox *in;
    int seen[2];
    int order_ok;
    int total;
    uv_loop_t *loop;
} ctx;

typedef struct item {
    ctx *c;
    int thread, seq;
} item;

static item items[2][POSTS];

static void on_item(void *arg)
{
    item *it = arg;
    ctx *c = it->c;
    if (it->seq != c->seen[it->thread])
        c->order_ok = 0;
    c->seen[it->thread]++;
    if (++c->total == 2 * POSTS)
        sb_inbox_close(c->in);
}

static void poster(void *arg)
{
    item *mine = arg;
    for (int i = 0; i < POSTS; i++)
        assert_int_equal(sb_inbox_post(mine[i].c->in, on_item, &mine[i]), 0);
}

static void test_posts_from_threads(void **state)
{
    uv_loop_t loop;
    ctx c = {0};
    uv_thread_t t[2];
    (void)state;
    uv_loop_init(&loop);
    c.order_ok = 1;
    assert_int_equal(sb_inbox_new(&c.in, &loop), 0);
    for (int th = 0; th < 2; th++)
        for (int i = 0; i < POSTS; i++)
            items[th][i] = (item){&c, th, i};
    for (int th = 0; th < 2; th++)
        uv_thread_create(&t[th], poster, items[th]);
    uv_run(&loop, UV_RUN_DEFAULT); /* returns once the inbox closed itself */
    for (int th = 0; th < 2; th++)
        uv_thread_join(&t[th]);
    assert_int_equal(c.total, 2 * POSTS);
    assert_true(c.order_ok);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void noop(void *arg)
{
    (void)arg;
}

static void test_post_after_close_is_refused(void **state)
{
    uv_loop_t loop;
    sb_inbox *in;
    (void)state;
    uv_loop_init(&loop);
    assert_int_equal(sb_inbox_new(&in, &loop), 0);
    sb_inbox_close(in);
    assert_int_equal(sb_inbox_post(in, noop, NULL), SB_ESHUTDOWN);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_posts_from_threads),
        cmocka_unit_test(test_post_after_close_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
