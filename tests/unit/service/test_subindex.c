/* The subscription index against the linear matcher it replaces. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "service/alloc.h"
#include "service/error.h"
#include "service/subindex.h"
#include "service/topic.h"

#define MAX_VALUES 256

/* Which values matched (as indexes into a table) and how often. */
typedef struct hits {
    void **table;
    int count[MAX_VALUES];
    int total;
} hits;

/* Subscriptions' filters written as '\n'-separated text, for brevity. */
#define MAX_SPLIT 16
typedef struct split_filters {
    char buf[512];
    sb_sub_filter f[MAX_SPLIT];
    size_t n;
} split_filters;

/* Fills *sp (its filters point into its own buffer: keep it in place). */
static void split(split_filters *sp, const char *text)
{
    char *p = sp->buf;
    snprintf(sp->buf, sizeof(sp->buf), "%s", text);
    sp->n = 0;
    if (*p == '\0')
        return;
    for (;;) {
        char *nl = strchr(p, '\n');
        assert_true(sp->n < MAX_SPLIT);
        sp->f[sp->n].filter = p;
        sp->f[sp->n].qos = SB_QOS_NONE;
        sp->n++;
        if (nl == NULL)
            break;
        *nl = '\0';
        p = nl + 1;
    }
}

static int add_text(sb_subindex *ix, const char *text, void *value)
{
    split_filters sp;
    split(&sp, text);
    return sb_subindex_add_all(ix, sp.f, sp.n, value);
}

static void remove_text(sb_subindex *ix, const char *text, void *value)
{
    split_filters sp;
    split(&sp, text);
    sb_subindex_remove_all(ix, sp.f, sp.n, value);
}

static int match_any_text(const char *text, const char *topic)
{
    split_filters sp;
    split(&sp, text);
    return sb_topic_match_any(sp.f, sp.n, topic);
}

static void on_hit(void *value, void *ctx)
{
    hits *h = ctx;
    for (int i = 0; i < MAX_VALUES; i++)
        if (h->table[i] == value) {
            h->count[i]++;
            h->total++;
            return;
        }
    fail_msg("matched a value that was never added");
}

static int values[MAX_VALUES];
static void *table[MAX_VALUES];

static void setup_table(void)
{
    for (int i = 0; i < MAX_VALUES; i++)
        table[i] = &values[i];
}

static hits match(const sb_subindex *ix, const char *topic)
{
    hits h;
    memset(&h, 0, sizeof(h));
    h.table = table;
    sb_subindex_match(ix, topic, on_hit, &h);
    return h;
}

/* 1 if filter (one of them) matches topic in the index. */
static int index_matches(const char *filter, const char *topic)
{
    sb_subindex ix = {0};
    hits h;
    setup_table();
    assert_int_equal(sb_subindex_add(&ix, filter, strlen(filter), table[0]), 0);
    h = match(&ix, topic);
    sb_subindex_clear(&ix);
    assert_int_equal(h.total, h.count[0]);
    return h.count[0] > 0;
}

static void test_cases(void **state)
{
    static const struct {
        const char *filter, *topic;
    } cases[] = {
        {"a/b", "a/b"},
        {"a/b", "a/c"},
        {"a/+", "a/b"},
        {"a/+", "a/b/c"},
        {"a/+/c", "a/b/c"},
        {"a/#", "a/b/c"},
        {"a/#", "a"},
        {"#", "a/b"},
        {"+/+", "/x"},
        {"+", "/"},
        {"a", "a/b"},
        {"a/b", "a"},
        {"a//b", "a//b"},
        {"a/+/b", "a//b"},
        {"+/#", "a"},
        {"+", "a"},
        {"#", "$SYS/uptime"},
        {"+/uptime", "$SYS/uptime"},
        {"$SYS/#", "$SYS/uptime"},
        {"$SYS/#", "$SYS"},
        {"$dlq/+", "$dlq/audit"},
        {"+/#", "$x"},
        {"a/$x", "a/$x"},
        {"a/+", "a/$x"},
        {"/#", "/"},
        {"/#", "a"},
        {"a/", "a"},
        {"a/", "a/"},
        {"+/+/#", "a/b"},
    };
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int want = sb_topic_match(cases[i].filter, cases[i].topic);
        if (index_matches(cases[i].filter, cases[i].topic) != want)
            fail_msg("filter %s, topic %s: index %d, linear %d", cases[i].filter, cases[i].topic,
                     !want, want);
    }
}

/* One report per (filter, value) pair; the same filter twice, several
 * filters of one value, removal one pair at a time, pruning to nothing. */
static void test_pairs(void **state)
{
    sb_subindex ix = {0};
    hits h;
    (void)state;
    setup_table();
    assert_int_equal(add_text(&ix, "a/#\na/b\n+/b", table[1]), 0);
    assert_int_equal(sb_subindex_add(&ix, "a/b", 3, table[2]), 0);
    assert_int_equal(sb_subindex_add(&ix, "a/b", 3, table[2]), 0);
    assert_int_equal(ix.count, 5);
    h = match(&ix, "a/b");
    assert_int_equal(h.count[1], 3);
    assert_int_equal(h.count[2], 2);
    h = match(&ix, "a");
    assert_int_equal(h.count[1], 1);
    assert_int_equal(h.total, 1);
    assert_int_equal(sb_subindex_remove(&ix, "a/b", 3, table[2]), 0);
    h = match(&ix, "a/b");
    assert_int_equal(h.count[2], 1);
    assert_int_equal(sb_subindex_remove(&ix, "a/c", 3, table[2]), SB_ENOTFOUND);
    assert_int_equal(sb_subindex_remove(&ix, "a/b", 3, table[3]), SB_ENOTFOUND);
    remove_text(&ix, "a/#\na/b\n+/b", table[1]);
    assert_int_equal(sb_subindex_remove(&ix, "a/b", 3, table[2]), 0);
    assert_int_equal(ix.count, 0);
    assert_null(ix.root); /* every node pruned */
    /* empty filters (a session without subscriptions) match nothing */
    assert_int_equal(add_text(&ix, "", table[1]), 0);
    assert_int_equal(add_text(&ix, "x\n", table[1]), 0);
    assert_int_equal(ix.count, 1);
    assert_int_equal(match(&ix, "x").count[1], 1);
    remove_text(&ix, "x\n", table[1]);
    assert_null(ix.root);
}

static void test_reaches(void **state)
{
    sb_subindex ix = {0};
    (void)state;
    setup_table();
    assert_false(sb_subindex_reaches(&ix, "$SYS/queues"));
    add_text(&ix, "#\n+/queues/#\n$SYS/broker/#\n$SYS/queues", table[0]);
    assert_false(sb_subindex_reaches(&ix, "$SYS/queues")); /* none of them */
    assert_true(sb_subindex_reaches(&ix, "$SYS/broker"));
    assert_true(sb_subindex_reaches(&ix, "a/queues"));
    add_text(&ix, "$SYS/+/+/depth", table[1]);
    assert_true(sb_subindex_reaches(&ix, "$SYS/queues"));
    remove_text(&ix, "$SYS/+/+/depth", table[1]);
    assert_false(sb_subindex_reaches(&ix, "$SYS/queues"));
    add_text(&ix, "$SYS/queues/a/dead", table[1]);
    assert_true(sb_subindex_reaches(&ix, "$SYS/queues"));
    remove_text(&ix, "$SYS/queues/a/dead", table[1]);
    add_text(&ix, "$SYS/#", table[1]);
    assert_true(sb_subindex_reaches(&ix, "$SYS/queues"));
    sb_subindex_clear(&ix);
    assert_null(ix.root);
}

/* ---- the differential test ---- */

static uint32_t rng = 12345;
static uint32_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}

static const char *const words[] = {"a", "b", "c", "", "ab", "$x", "$SYS"};
#define WORD_COUNT (sizeof(words) / sizeof(words[0]))

static void random_filter(char *out, size_t n)
{
    int depth = 1 + (int)(next_rand() % 4);
    size_t len = 0;
    out[0] = '\0';
    for (int i = 0; i < depth; i++) {
        uint32_t r = next_rand() % 10;
        const char *w = r < 2                        ? "+"
                        : (r == 2 && i == depth - 1) ? "#"
                                                     : words[next_rand() % WORD_COUNT];
        len += (size_t)snprintf(out + len, n - len, "%s%s", i > 0 ? "/" : "", w);
    }
}

static void random_topic(char *out, size_t n)
{
    int depth = 1 + (int)(next_rand() % 5);
    size_t len = 0;
    for (int i = 0; i < depth; i++)
        len += (size_t)snprintf(out + len, n - len, "%s%s", i > 0 ? "/" : "",
                                words[next_rand() % WORD_COUNT]);
}

typedef struct entry {
    char filters[200]; /* '\n'-separated, as a queue keeps them */
    int present;
} entry;

static void compare(const sb_subindex *ix, const entry *e, int n, const char *topic)
{
    hits h = match(ix, topic);
    for (int v = 0; v < n; v++) {
        int want = e[v].present && match_any_text(e[v].filters, topic);
        if ((h.count[v] > 0) != want)
            fail_msg("topic %s, filters of value %d \"%s\": index %d, linear %d", topic, v,
                     e[v].filters, h.count[v], want);
    }
}

static void test_differential(void **state)
{
    static entry e[MAX_VALUES];
    sb_subindex ix = {0};
    char topic[100], f[60];
    const char *why;
    (void)state;
    setup_table();
    for (int round = 0; round < 20; round++) {
        int n = 10 + (int)(next_rand() % (MAX_VALUES - 10));
        for (int v = 0; v < n; v++) {
            int count = 1 + (int)(next_rand() % 3), len = 0;
            e[v].filters[0] = '\0';
            for (int k = 0; k < count; k++) {
                do
                    random_filter(f, sizeof f);
                while (sb_filter_validate(f, strlen(f), &why) != 0);
                len += snprintf(e[v].filters + len, sizeof(e[v].filters) - (size_t)len, "%s%s",
                                k > 0 ? "\n" : "", f);
            }
            assert_int_equal(add_text(&ix, e[v].filters, table[v]), 0);
            e[v].present = 1;
        }
        for (int t = 0; t < 300; t++) {
            do
                random_topic(topic, sizeof topic);
            while (sb_topic_validate(topic, strlen(topic), &why) != 0);
            compare(&ix, e, n, topic);
        }
        /* remove half, match again, then the rest: the tree prunes to nothing */
        for (int v = 0; v < n; v += 2) {
            remove_text(&ix, e[v].filters, table[v]);
            e[v].present = 0;
        }
        for (int t = 0; t < 300; t++) {
            do
                random_topic(topic, sizeof topic);
            while (sb_topic_validate(topic, strlen(topic), &why) != 0);
            compare(&ix, e, n, topic);
        }
        for (int v = 1; v < n; v += 2)
            remove_text(&ix, e[v].filters, table[v]);
        assert_int_equal(ix.count, 0);
        assert_null(ix.root);
    }
}

static hits match_filter(const sb_subindex *ix, const char *filter)
{
    hits h;
    memset(&h, 0, sizeof(h));
    h.table = table;
    sb_subindex_match_filter(ix, filter, strlen(filter), on_hit, &h);
    return h;
}

/* An index of topics (retained values) queried with filters: the same
 * answers as the linear matcher, each topic once. */
static void test_filter_queries(void **state)
{
    static char topics[MAX_VALUES][100];
    sb_subindex ix = {0};
    char filter[60];
    const char *why;
    hits h;
    (void)state;
    setup_table();
    for (int round = 0; round < 20; round++) {
        int n = 1 + (int)(next_rand() % MAX_VALUES);
        for (int v = 0; v < n; v++) {
            do
                random_topic(topics[v], sizeof topics[v]);
            while (sb_topic_validate(topics[v], strlen(topics[v]), &why) != 0);
            assert_int_equal(sb_subindex_add(&ix, topics[v], strlen(topics[v]), table[v]), 0);
        }
        for (int q = 0; q < 300; q++) {
            do
                random_filter(filter, sizeof filter);
            while (sb_filter_validate(filter, strlen(filter), &why) != 0);
            h = match_filter(&ix, filter);
            for (int v = 0; v < n; v++) {
                int want = sb_topic_match(filter, topics[v]);
                if (h.count[v] != want)
                    fail_msg("filter %s, topic %s: index %d, linear %d", filter, topics[v],
                             h.count[v], want);
            }
        }
        for (int v = 0; v < n; v++)
            assert_int_equal(sb_subindex_remove(&ix, topics[v], strlen(topics[v]), table[v]), 0);
        assert_null(ix.root);
    }
    /* many siblings, some '$' ones, and a deep chain */
    for (int i = 0; i < 200; i++) {
        char t[32];
        snprintf(t, sizeof t, "%sk%d/v", i % 3 == 0 ? "$" : "", i);
        assert_int_equal(sb_subindex_add(&ix, t, strlen(t), table[i]), 0);
    }
    h = match_filter(&ix, "+/v");
    assert_int_equal(h.total, 200 - 67);
    h = match_filter(&ix, "#");
    assert_int_equal(h.total, 200 - 67);
    h = match_filter(&ix, "$k3/#");
    assert_int_equal(h.total, 1);
    assert_int_equal(h.count[3], 1);
    assert_int_equal(match_filter(&ix, "k4/+").count[4], 1);
    assert_int_equal(match_filter(&ix, "k4").total, 0);
    sb_subindex_clear(&ix);
}

/* Many children of one node (the table grows) and very deep topics (the
 * walk has no recursion to overflow). */
static void test_wide_and_deep(void **state)
{
    sb_subindex ix = {0};
    char name[32];
    size_t deep = 30000;
    char *filter = malloc(deep * 2), *topic = malloc(deep * 2);
    hits h;
    (void)state;
    setup_table();
    for (int i = 0; i < 20000; i++) {
        snprintf(name, sizeof name, "bench/%d", i);
        assert_int_equal(sb_subindex_add(&ix, name, strlen(name), table[i % MAX_VALUES]), 0);
    }
    h = match(&ix, "bench/12345");
    assert_int_equal(h.total, 1);
    assert_int_equal(h.count[12345 % MAX_VALUES], 1);
    assert_int_equal(match(&ix, "bench/x").total, 0);
    /* "+/+/.../+" and "a/a/.../a" of 30,000 levels */
    for (size_t i = 0; i < deep; i++) {
        memcpy(filter + 2 * i, "+/", 2);
        memcpy(topic + 2 * i, "a/", 2);
    }
    filter[2 * deep - 1] = '\0';
    topic[2 * deep - 1] = '\0';
    assert_int_equal(sb_subindex_add(&ix, filter, strlen(filter), table[1]), 0);
    assert_int_equal(sb_subindex_add(&ix, topic, strlen(topic), table[2]), 0);
    h = match(&ix, topic);
    assert_int_equal(h.total, 2);
    /* and the other way: the deep topic found by the deep filter (the
     * filter added above is no topic: a topic index holds no wildcards) */
    h = match_filter(&ix, filter);
    assert_int_equal(h.total, 1);
    assert_int_equal(h.count[2], 1);
    topic[2 * deep - 3] = '\0'; /* one level less */
    assert_int_equal(match(&ix, topic).total, 0);
    sb_subindex_clear(&ix);
    free(filter);
    free(topic);
}

/* Out of memory at every allocation of add_all: it adds everything or
 * nothing, and the index stays usable. */
static void test_out_of_memory(void **state)
{
    const char *filters = "a/b/c\nx/+/y/#\na/b/d\n+";
    sb_subindex ix = {0};
    int ok = 0;
    (void)state;
    setup_table();
    assert_int_equal(sb_subindex_add(&ix, "a/b", 3, table[0]), 0);
    for (long k = 0; !ok; k++) {
        int rc;
        sb_alloc_fail_after(k);
        rc = add_text(&ix, filters, table[1]);
        sb_alloc_fail_after(-1);
        if (rc == 0) {
            ok = 1;
            assert_int_equal(match(&ix, "x/1/y/2").count[1], 1);
            assert_int_equal(match(&ix, "q").count[1], 1); /* "+" */
            assert_int_equal(match(&ix, "a/b/c").count[1], 1);
            remove_text(&ix, filters, table[1]);
        } else {
            assert_int_equal(rc, SB_ENOMEM);
            assert_int_equal(match(&ix, "a/b/c").count[1], 0);
            assert_int_equal(match(&ix, "q").count[1], 0);
        }
        assert_int_equal(ix.count, 1);
        assert_int_equal(match(&ix, "a/b").count[0], 1);
    }
    sb_subindex_remove(&ix, "a/b", 3, table[0]);
    assert_null(ix.root);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cases),          cmocka_unit_test(test_pairs),
        cmocka_unit_test(test_reaches),        cmocka_unit_test(test_differential),
        cmocka_unit_test(test_filter_queries), cmocka_unit_test(test_wide_and_deep),
        cmocka_unit_test(test_out_of_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
