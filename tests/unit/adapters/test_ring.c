/*
 * The shared-memory ring (adapters/filemap/sb_ring.h) in one process: the
 * broker's side made with the adapter's OS layer (sb_fm__os_open), this
 * test standing in for the broker's reader or writer, and the client API
 * from threads. Runs on Linux and under Wine.
 *
 * - records round the ring many times (pads at the end), in order, with
 *   their headers and payloads intact;
 * - a full ring refuses (timeout 0), never overwrites, and a producer
 *   waiting for room wakes when the reader commits;
 * - sb_ring_wait_committed: committed, refused (the refusal log), unknown
 *   after more refusals than the log keeps, timed out;
 * - four producer threads and a reader thread: every record once, each
 *   producer's in order;
 * - a reclaimed record: the producer's commit fails, the reader skips it;
 * - a producer dies holding the lock: the next one takes it over;
 * - an out ring: the consumer reads and releases, a second consumer is
 *   refused, one that took over from a dead one starts again at commit;
 * - bad arguments, a corrupt header, records the reader must refuse;
 * - one broker per ring; a ring left by a broker is resumed, one of
 *   another capacity replaced.
 */
#include "adapters/filemap/sb_ring.h" /* with its OS part */

#include "adapters/filemap/filemap_int.h"
#include "adapters/filemap/filemap_keys.h"
#include "service/error.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <uv.h>

#include <cmocka.h>

static char ring_names[16][64];
static int ring_count;

static const char *fresh_name(void)
{
    char *n = ring_names[ring_count % 16];
    snprintf(n, 64, "sbt-ring-%u-%d", (unsigned)sbr_pid(), ring_count++);
    return n;
}

static sb_fm_os *make_ring(const char *name, uint32_t direction, uint64_t cap, int *how)
{
    sb_fm_os_opts o;
    sb_fm_os *os = NULL;
    sb_error err;
    char note[400];
    int h;
    memset(&o, 0, sizeof(o));
    o.adapter = "test";
    o.name = name;
    o.direction = direction;
    o.capacity = cap;
    o.max_payload = 1 << 20;
    o.reclaim_ms = 5000;
    o.mode = 0600;
    if (sb_fm__os_open(&os, &o, how != NULL ? how : &h, note, sizeof(note), &err) != 0)
        fail_msg("sb_fm__os_open %s: %s", name, err.msg);
    return os;
}

static void drop_ring(sb_fm_os *os, const char *name)
{
    sb_fm__os_close(os);
#ifndef _WIN32
    char path[80];
    snprintf(path, sizeof(path), "/%s", name);
    shm_unlink(path);
#else
    (void)name;
#endif
}

/* The broker's reader, in short: the next complete record at *pos (pads and
 * abandoned records skipped); returns SBR_READY with *rec, or what stopped
 * it. */
static int next_record(sb_ring_header *h, uint64_t *pos, const sb_ring_rec **rec)
{
    unsigned char *data = (unsigned char *)h + SB_RING_HEADER_SIZE;
    for (;;) {
        const char *why = "";
        int kind = sbr_peek(h, data, h->capacity, *pos, sbr_load64(&h->reserve), h->max_payload,
                            rec, &why);
        if (kind == SBR_PAD || kind == SBR_ABANDONED) {
            *pos += (*rec)->len;
            continue;
        }
        if (kind == SBR_BAD)
            fail_msg("corrupt at %llu: %s", (unsigned long long)*pos, why);
        return kind;
    }
}

static void commit_to(sb_fm_os *os, uint64_t pos)
{
    sbr_store64(&sb_fm__os_header(os)->commit, pos);
    sb_fm__os_signal(os, SBR_WAKE_RELEASE);
}

/* ---- round trip, wrap, full ---- */

static void test_round_trip_wrap(void **state)
{
    const char *name = fresh_name();
    sb_fm_os *os = make_ring(name, SB_RING_IN, 4096, NULL);
    sb_ring_header *h = sb_fm__os_header(os);
    sb_ring *r;
    sb_ring_kv hdr[] = {{"content-type", "text/plain"}, {"k", "v"}};
    uint64_t pos = 0;
    char payload[400];
    (void)state;

    assert_int_equal(sb_ring_open(&r, name, SB_RING_PRODUCER), SB_RING_OK);
    for (int i = 0; i < 300; i++) {
        const sb_ring_rec *rec;
        uint64_t seq;
        size_t len = (size_t)(i * 37 % 390);
        char topic[32];
        const char *t;
        memset(payload, 'a' + i % 26, len);
        snprintf(topic, sizeof(topic), "t/%d", i);
        assert_int_equal(sb_ring_write_headers(r, topic, hdr, i % 2 ? 2 : 0, payload, len, 0, &seq),
                         SB_RING_OK);
        assert_int_equal(next_record(h, &pos, &rec), SBR_READY);
        assert_true(seq == pos);
        t = (const char *)rec + SB_RING_REC_SIZE;
        assert_int_equal(rec->topic_len, strlen(topic));
        assert_memory_equal(t, topic, rec->topic_len);
        assert_int_equal(rec->payload_len, len);
        assert_memory_equal(t + rec->topic_len + rec->headers_len, payload, len);
        assert_true(sbr_headers_valid(t + rec->topic_len, rec->headers_len));
        if (i % 2)
            assert_int_equal(rec->headers_len, sizeof("content-type\0text/plain\0k\0v"));
        pos += rec->len;
        commit_to(os, pos);
    }
    assert_true(sbr_load64(&h->reserve) > 10 * h->capacity); /* it went round */
    sb_ring_close(r);
    drop_ring(os, name);
}

static void test_full_never_overwrites(void **state)
{
    const char *name = fresh_name();
    sb_fm_os *os = make_ring(name, SB_RING_IN, 4096, NULL);
    sb_ring_header *h = sb_fm__os_header(os);
    sb_ring *r;
    const sb_ring_rec *rec;
    uint64_t pos = 0;
    char payload[100];
    int n = 0, rc;
    (void)state;

    memset(payload, 'x', sizeof(payload));
    assert_int_equal(sb_ring_open(&r, name, SB_RING_PRODUCER), SB_RING_OK);
    while ((rc = sb_ring_write(r, "full/x", payload, sizeof(payload), 0, NULL)) == SB_RING_OK)
        n++;
    assert_int_equal(rc, SB_RING_ETIMEDOUT);
    /* 56 + 6 + 100 = 162 -> 168 bytes a record: 24 fit in 4096 */
    assert_int_equal(n, 4096 / 168);
    assert_true(sbr_load64(&h->reserve) - sbr_load64(&h->commit) <= 4096);
    assert_int_equal(next_record(h, &pos, &rec), SBR_READY);
    assert_int_equal(rec->seq, 0); /* the first is still there */
    assert_int_equal(sb_ring_write(r, "full/x", payload, sizeof(payload), 50, NULL),
                     SB_RING_ETIMEDOUT);
    commit_to(os, pos + rec->len);
    assert_int_equal(sb_ring_write(r, "full/x", payload, sizeof(payload), 0, NULL), SB_RING_OK);
    sb_ring_close(r);
    drop_ring(os, name);
}

typedef struct blocked_arg {
    const char *name;
    int rc;
    uint64_t took_ms;
} blocked_arg;

static void blocked_writer(void *p)
{
    blocked_arg *b = p;
    sb_ring *r;
    char payload[1000] = {0};
    uint64_t t0 = sbr_now_ms();
    if (sb_ring_open(&r, b->name, SB_RING_PRODUCER) != SB_RING_OK) {
        b->rc = -100;
        return;
    }
    b->rc = sb_ring_write(r, "blocked", payload, sizeof(payload), 10000, NULL);
    b->took_ms = sbr_now_ms() - t0;
    sb_ring_close(r);
}

static void test_waiting_producer_wakes(void **state)
{
    const char *name = fresh_name();
    sb_fm_os *os = make_ring(name, SB_RING_IN, 4096, NULL);
    sb_ring_header *h = sb_fm__os_header(os);
    sb_ring *r;
    char payload[1000] = {0};
    blocked_arg b = {name, 1, 0};
    uv_thread_t t;
    (void)state;

    assert_int_equal(sb_ring_open(&r, name, SB_RING_PRODUCER), SB_RING_OK);
    while (sb_ring_write(r, "fill", payload, sizeof(payload), 0, NULL) == SB_RING_OK)
        ;
    assert_int_equal(uv_thread_create(&t, blocked_writer, &b), 0);
    /* The writer waits: it counts itself among the release waiters. */
    for (int i = 0; i < 500 && sbr_load32(&h->release.waiters) == 0; i++)
        uv_sleep(10);
    assert_int_not_equal(sbr_load32(&h->release.waiters), 0);
    commit_to(os, sbr_load64(&h->reserve)); /* everything read */
    uv_thread_join(&t);
    assert_int_equal(b.rc, SB_RING_OK);
    assert_true(b.took_ms < 9000);
    sb_ring_close(r);
    drop_ring(os, name);
}

/* ---- commits and refusals ---- */

static void test_wait_committed(void **state)
{
    const char *name = fresh_name();
    sb_fm_os *os = make_ring(name, SB_RING_IN, 1 << 20, NULL);
    sb_ring_header *h = sb_fm__os_header(os);
    sb_ring *r;
    uint64_t seq[3], pos = 0, first;
    const sb_ring_rec *rec;
    (void)state;

    assert_int_equal(sb_ring_open(&r, name, SB_RING_PRODUCER), SB_RING_OK);
    for (int i = 0; i < 3; i++)
        assert_int_equal(sb_ring_write(r, "c/x", "abc", 3, 0, &seq[i]), SB_RING_OK);
    assert_int_equal(sb_ring_wait_committed(r, seq[0], 0), SB_RING_ETIMEDOUT);
    assert_int_equal(sb_ring_wait_committed(r, seq[0], 30), SB_RING_ETIMEDOUT);
    /* the broker commits the first, refuses the second, commits the third */
    for (int i = 0; i < 3; i++) {
        assert_int_equal(next_record(h, &pos, &rec), SBR_READY);
        if (i == 1)
            sbr_note_refusal(h, pos);
        pos += rec->len;
    }
    commit_to(os, pos);
    assert_int_equal(sb_ring_wait_committed(r, seq[0], 0), SB_RING_OK);
    assert_int_equal(sb_ring_wait_committed(r, seq[1], 0), SB_RING_EREFUSED);
    assert_int_equal(sb_ring_wait_committed(r, seq[2], 0), SB_RING_OK);

    /* 40 more refusals: the log keeps 31 for sure */
    first = pos;
    for (int i = 0; i < 40; i++) {
        uint64_t s;
        assert_int_equal(sb_ring_write(r, "c/y", "x", 1, 0, &s), SB_RING_OK);
        assert_int_equal(next_record(h, &pos, &rec), SBR_READY);
        sbr_note_refusal(h, pos);
        pos += rec->len;
    }
    commit_to(os, pos);
    assert_int_equal(sb_ring_wait_committed(r, seq[1], 0), SB_RING_EUNKNOWN);
    assert_int_equal(sb_ring_wait_committed(r, seq[2], 0), SB_RING_EUNKNOWN);
    assert_int_equal(sb_ring_wait_committed(r, pos - rec->len, 0), SB_RING_EREFUSED);
    (void)first;
    sb_ring_close(r);
    drop_ring(os, name);
}

/* ---- several producers ---- */

#define PRODUCERS 4
#define PER_PRODUCER 3000

typedef struct prod_arg {
    const char *name;
    int id;
    int rc;
} prod_arg;

static void producer(void *p)
{
    prod_arg *a = p;
    sb_ring *r;
    char payload[64];
    if ((a->rc = sb_ring_open(&r, a->name, SB_RING_PRODUCER)) != SB_RING_OK)
        return;
    for (int i = 0; i < PER_PRODUCER && a->rc == SB_RING_OK; i++) {
        int n = snprintf(payload, sizeof(payload), "%d %d", a->id, i);
        memset(payload + n, ' ', (size_t)(i % 7)); /* sizes vary */
        a->rc = sb_ring_write(r, "many", payload, (size_t)n + (size_t)(i % 7), -1, NULL);
    }
    sb_ring_close(r);
}

static void test_many_producers(void **state)
{
    const char *name = fresh_name();
    sb_fm_os *os = make_ring(name, SB_RING_IN, 8192, NULL);
    sb_ring_header *h = sb_fm__os_header(os);
    prod_arg args[PRODUCERS];
    uv_thread_t t[PRODUCERS];
    int next[PRODUCERS] = {0}, total = 0;
    uint64_t pos = 0, deadline = sbr_now_ms() + 60000;
    (void)state;

    for (int i = 0; i < PRODUCERS; i++) {
        args[i].name = name;
        args[i].id = i;
        args[i].rc = 0;
        assert_int_equal(uv_thread_create(&t[i], producer, &args[i]), 0);
    }
    while (total < PRODUCERS * PER_PRODUCER) {
        const sb_ring_rec *rec;
        int kind = next_record(h, &pos, &rec);
        assert_true(sbr_now_ms() < deadline);
        if (kind == SBR_READY) {
            const char *p = (const char *)rec + SB_RING_REC_SIZE + rec->topic_len;
            char text[80];
            int id, i;
            assert_true(rec->payload_len < sizeof(text));
            memcpy(text, p, rec->payload_len);
            text[rec->payload_len] = '\0';
            assert_int_equal(sscanf(text, "%d %d", &id, &i), 2);
            assert_true(id >= 0 && id < PRODUCERS);
            assert_int_equal(i, next[id]); /* each producer's records in order */
            next[id]++;
            total++;
            pos += rec->len;
            if (total % 16 == 0 || total == PRODUCERS * PER_PRODUCER)
                commit_to(os, pos);
        } else {
            commit_to(os, pos);
            uv_sleep(0);
        }
    }
    for (int i = 0; i < PRODUCERS; i++) {
        uv_thread_join(&t[i]);
        assert_int_equal(args[i].rc, SB_RING_OK);
        assert_int_equal(next[i], PER_PRODUCER);
    }
    drop_ring(os, name);
}

/* ---- a record never finished ---- */

static void test_reclaimed_record(void **state)
{
    const char *name = fresh_name();
    sb_fm_os *os = make_ring(name, SB_RING_IN, 4096, NULL);
    sb_ring_header *h = sb_fm__os_header(os);
    sb_ring *r;
    sb_ring_slot slot;
    const sb_ring_rec *rec;
    uint64_t pos = 0;
    (void)state;

    assert_int_equal(sb_ring_open(&r, name, SB_RING_PRODUCER), SB_RING_OK);
    assert_int_equal(sb_ring_reserve(r, &slot, "slow", 0, 10, 0), SB_RING_OK);
    assert_int_equal(sb_ring_write(r, "after", "x", 1, 0, NULL), SB_RING_OK);
    assert_int_equal(next_record(h, &pos, &rec), SBR_PENDING);
    assert_int_equal(rec->pid, sbr_pid());
    /* the broker gives up on it */
    assert_true(sbr_cas32((uint32_t *)&rec->state, SB_RING_REC_RESERVED, SB_RING_REC_ABANDONED));
    assert_int_equal(sb_ring_commit(r, &slot), SB_RING_ERECLAIMED);
    assert_int_equal(next_record(h, &pos, &rec), SBR_READY);
    assert_memory_equal((const char *)rec + SB_RING_REC_SIZE, "after", 5);
    sb_ring_close(r);
    drop_ring(os, name);
}

/* ---- a producer dies holding the lock ---- */

#ifndef _WIN32
static void lock_and_die(void *arg)
{
    sb_ring *r = arg;
    assert_int_equal(sbr_lock(r, -1), SB_RING_OK); /* and never unlocks */
}
#endif

static void test_dead_lock_holder(void **state)
{
    const char *name = fresh_name();
    sb_fm_os *os = make_ring(name, SB_RING_IN, 4096, NULL);
    sb_ring_header *h = sb_fm__os_header(os);
    sb_ring *r;
    uint64_t t0;
    (void)state;

    assert_int_equal(sb_ring_open(&r, name, SB_RING_PRODUCER), SB_RING_OK);
#ifdef _WIN32
    /* the word of a process that does not exist (any more) */
    sbr_store64((uint64_t *)(void *)h->lock, 0x7ffffff0u | ((uint64_t)12345 << 32));
#else
    {
        uv_thread_t t; /* a holder thread that exits: the robust mutex notices */
        assert_int_equal(uv_thread_create(&t, lock_and_die, r), 0);
        uv_thread_join(&t);
    }
#endif
    t0 = sbr_now_ms();
    assert_int_equal(sb_ring_write(r, "after/death", "x", 1, 5000, NULL), SB_RING_OK);
    assert_true(sbr_now_ms() - t0 < 4000);
    assert_int_equal(sbr_load64(&h->lock_recoveries), 1);
    assert_int_equal(sb_ring_write(r, "again", "y", 1, 0, NULL), SB_RING_OK);
    sb_ring_close(r);
    drop_ring(os, name);
}

/* ---- out rings ---- */

static void broker_put(sb_fm_os *os, uint64_t *reserve, const char *topic, const char *payload,
                       uint64_t id)
{
    sb_ring_header *h = sb_fm__os_header(os);
    unsigned char *data = (unsigned char *)h + SB_RING_HEADER_SIZE;
    size_t tl = strlen(topic), pl = strlen(payload);
    sb_ring_rec *rec = sbr_place(data, h->capacity, sbr_load64(&h->commit), reserve,
                                 sbr_record_size(tl, 0, pl), SB_RING_REC_READY);
    assert_non_null(rec);
    rec->msg_id = id;
    rec->attempt = 1;
    rec->topic_len = (uint32_t)tl;
    rec->payload_len = (uint32_t)pl;
    memcpy(sbr_rec_topic(rec), topic, tl);
    memcpy(sbr_rec_payload(rec), payload, pl);
    sbr_store64(&h->reserve, *reserve);
    sb_fm__os_signal(os, SBR_WAKE_DATA);
}

static void test_out_ring_consumer(void **state)
{
    const char *name = fresh_name();
    sb_fm_os *os = make_ring(name, SB_RING_OUT, 4096, NULL);
    sb_ring_header *h = sb_fm__os_header(os);
    sb_ring *c, *c2;
    sb_ring_msg m;
    uint64_t reserve = 0;
    char p[32];
    (void)state;

    assert_int_equal(sb_ring_open(&c, name, SB_RING_PRODUCER), SB_RING_EINVAL);
    assert_int_equal(sb_ring_open(&c, name, SB_RING_CONSUMER), SB_RING_OK);
    assert_int_equal(sbr_load32(&h->consumer_pid), sbr_pid());
    assert_false(sb_ring_recovered(c));
    assert_int_equal(sb_ring_open(&c2, name, SB_RING_CONSUMER), SB_RING_EBUSY);
    assert_int_equal(sb_ring_next(c, &m, 0), SB_RING_ETIMEDOUT);
    for (int i = 0; i < 100; i++) { /* around the ring, with pads */
        snprintf(p, sizeof(p), "payload-%d", i);
        broker_put(os, &reserve, "out/t", p, (uint64_t)i + 1);
        assert_int_equal(sb_ring_next(c, &m, 1000), SB_RING_OK);
        assert_int_equal(m.msg_id, (uint64_t)i + 1);
        assert_int_equal(m.payload_len, strlen(p));
        assert_memory_equal(m.payload, p, m.payload_len);
        assert_int_equal(sb_ring_release(c, &m), SB_RING_OK);
        assert_true(sbr_load64(&h->commit) == sbr_load64(&h->reserve));
    }
    /* two unreleased, then the consumer "dies" (no close) */
    broker_put(os, &reserve, "out/t", "one", 101);
    broker_put(os, &reserve, "out/t", "two", 102);
    assert_int_equal(sb_ring_next(c, &m, 1000), SB_RING_OK);
    assert_int_equal(sb_ring_next(c, &m, 1000), SB_RING_OK);
    sbr_release_os(c);
    free(c);
    sbr_store32(&h->consumer_pid, 0x7ffffff0u); /* as if another process had died */
    assert_int_equal(sb_ring_open(&c2, name, SB_RING_CONSUMER), SB_RING_OK);
    assert_true(sb_ring_recovered(c2));
    assert_int_equal(sb_ring_next(c2, &m, 1000), SB_RING_OK);
    assert_int_equal(m.msg_id, 101); /* again */
    assert_int_equal(sb_ring_next(c2, &m, 1000), SB_RING_OK);
    assert_int_equal(m.msg_id, 102);
    assert_int_equal(sb_ring_release(c2, &m), SB_RING_OK);
    sb_ring_close(c2);
    assert_int_equal(sbr_load32(&h->consumer_pid), 0);
    drop_ring(os, name);
}

/* ---- bad input ---- */

static void test_bad_arguments(void **state)
{
    const char *name = fresh_name();
    sb_fm_os *os = make_ring(name, SB_RING_IN, 4096, NULL);
    sb_ring *r;
    sb_ring_slot slot;
    static char big[5000];
    (void)state;

    assert_int_equal(sb_ring_open(&r, "sbt-ring-no-such-ring", SB_RING_PRODUCER),
                     SB_RING_ENOTFOUND);
    assert_int_equal(sb_ring_open(&r, name, SB_RING_CONSUMER), SB_RING_EINVAL);
    assert_int_equal(sb_ring_open(&r, name, SB_RING_PRODUCER), SB_RING_OK);
    assert_int_equal(sb_ring_write(r, "", "x", 1, 0, NULL), SB_RING_EINVAL);
    assert_int_equal(sb_ring_write(r, "a/+", "x", 1, 0, NULL), SB_RING_EINVAL);
    assert_int_equal(sb_ring_write(r, "a/#", "x", 1, 0, NULL), SB_RING_EINVAL);
    assert_int_equal(sb_ring_write(r, "a/\xff", "x", 1, 0, NULL), SB_RING_EINVAL);
    assert_int_equal(sb_ring_write(r, "a/b", big, sizeof(big), 0, NULL), SB_RING_ETOOBIG);
    assert_int_equal(sb_ring_reserve(r, &slot, "a", 0, 1u << 21, 0), SB_RING_ETOOBIG);
    {
        sb_ring_kv bad[] = {{"", "v"}};
        assert_int_equal(sb_ring_write_headers(r, "a", bad, 1, "x", 1, 0, NULL), SB_RING_EINVAL);
    }
    sb_ring_close(r);
    drop_ring(os, name);
}

static void test_corrupt_header(void **state)
{
    const char *name = fresh_name();
    sb_fm_os *os = make_ring(name, SB_RING_IN, 4096, NULL);
    sb_ring_header *h = sb_fm__os_header(os);
    sb_ring *r;
    (void)state;

    h->magic = 0x12345678;
    assert_int_equal(sb_ring_open(&r, name, SB_RING_PRODUCER), SB_RING_ECORRUPT);
    h->magic = SB_RING_MAGIC;
    h->version = 7;
    assert_int_equal(sb_ring_open(&r, name, SB_RING_PRODUCER), SB_RING_EVERSION);
    h->version = SB_RING_VERSION;
    h->capacity = 1u << 30; /* larger than the mapping */
    assert_int_equal(sb_ring_open(&r, name, SB_RING_PRODUCER), SB_RING_ECORRUPT);
    h->capacity = 4096;
    h->state = SB_RING_STATE_QUARANTINED;
    assert_int_equal(sb_ring_open(&r, name, SB_RING_PRODUCER), SB_RING_ECLOSED);
    h->state = SB_RING_STATE_OPEN;
    assert_int_equal(sb_ring_open(&r, name, SB_RING_PRODUCER), SB_RING_OK);
    h->reserve = 8192; /* more than a capacity ahead of commit */
    assert_int_equal(sb_ring_write(r, "x", "y", 1, 0, NULL), SB_RING_ECORRUPT);
    sb_ring_close(r);
    drop_ring(os, name);
}

/* Each damaged record must be reported bad by the reader, never read. */
static void test_peek_refuses_damage(void **state)
{
    static unsigned char mem[SB_RING_HEADER_SIZE + 4096];
    sb_ring_header *h = (sb_ring_header *)(void *)mem;
    unsigned char *data = mem + SB_RING_HEADER_SIZE;
    sb_ring_rec *rec = (sb_ring_rec *)(void *)data;
    const sb_ring_rec *out;
    const char *why;
    uint64_t reserve;
    (void)state;

    sbr_init_header(h, SB_RING_IN, 4096, 1000, 5000, 0);
    assert_int_equal(sbr_check_header(h, sizeof(mem), SB_RING_IN, &why), SB_RING_OK);
    reserve = 0;
    assert_non_null(sbr_place(data, 4096, 0, &reserve, 64, SB_RING_REC_READY));
    rec->topic_len = 1;
    rec->payload_len = 64 - 56 - 1;
    data[56] = 't';
    assert_int_equal(sbr_peek(h, data, 4096, 0, reserve, 1000, &out, &why), SBR_READY);
#define BAD(stmt, undo)                                                                             \
    do {                                                                                           \
        stmt;                                                                                      \
        assert_int_equal(sbr_peek(h, data, 4096, 0, reserve, 1000, &out, &why), SBR_BAD);       \
        undo;                                                                                      \
    } while (0)
    BAD(rec->len = 0, rec->len = 64);
    BAD(rec->len = 60, rec->len = 64);
    BAD(rec->len = 72, rec->len = 64);     /* beyond reserve */
    BAD(rec->len = 16, rec->len = 64);     /* shorter than a header */
    BAD(rec->seq = 4096, rec->seq = 0);    /* a stale lap */
    BAD(rec->state = 99, rec->state = SB_RING_REC_READY);
    BAD(rec->topic_len = 2, rec->topic_len = 1); /* lengths do not add up */
    BAD(rec->topic_len = 0, rec->topic_len = 1);
    BAD(rec->payload_len = 0x7fffffff, rec->payload_len = 7);
    BAD(rec->state = SB_RING_REC_PAD, rec->state = SB_RING_REC_READY); /* a pad not to the end */
    assert_int_equal(sbr_peek(h, data, 4096, 8, reserve, 1000, &out, &why), SBR_BAD);
    assert_int_equal(sbr_peek(h, data, 4096, 3, reserve, 1000, &out, &why), SBR_BAD);
    assert_int_equal(sbr_peek(h, data, 4096, 64, reserve, 1000, &out, &why), SBR_EMPTY);
    assert_false(sbr_headers_valid("k\0v", 3));
    assert_false(sbr_headers_valid("k\0", 2));
    assert_false(sbr_headers_valid("\0v\0", 3));
    assert_true(sbr_headers_valid("k\0\0", 3)); /* an empty value is a value */
    assert_false(sbr_headers_valid("k\0\xff\0", 4)); /* UTF-8 only */
}

/* ---- the broker's claim ---- */

static void test_one_broker_per_ring(void **state)
{
    const char *name = fresh_name();
    sb_fm_os *os = make_ring(name, SB_RING_IN, 4096, NULL), *os2 = NULL;
    sb_fm_os_opts o;
    sb_error err;
    char note[400];
    int how;
    (void)state;

    memset(&o, 0, sizeof(o));
    o.adapter = "second";
    o.name = name;
    o.direction = SB_RING_IN;
    o.capacity = 4096;
    o.max_payload = 100;
    o.reclaim_ms = 100;
    o.mode = 0600;
    assert_int_equal(sb_fm__os_open(&os2, &o, &how, note, sizeof(note), &err), SB_EADDRINUSE);
    assert_non_null(strstr(err.msg, name));
    drop_ring(os, name);
}

static void test_resume_and_replace(void **state)
{
    const char *name = fresh_name();
    int how;
    sb_fm_os *os = make_ring(name, SB_RING_IN, 4096, &how);
    sb_ring *r;
    uint64_t seq;
    (void)state;

    assert_int_equal(how, SB_FM_CREATED);
    assert_int_equal(sb_ring_open(&r, name, SB_RING_PRODUCER), SB_RING_OK);
    assert_int_equal(sb_ring_write(r, "keep", "me", 2, 0, &seq), SB_RING_OK);
    sb_fm__os_close(os); /* a producer keeps it open (Windows needs that) */
    os = make_ring(name, SB_RING_IN, 4096, &how);
    assert_int_equal(how, SB_FM_RESUMED);
    assert_true(sbr_load64(&sb_fm__os_header(os)->reserve) > seq);
    sb_fm__os_close(os);
#ifndef _WIN32
    /* another capacity: replaced, and the old ring tells its programs */
    os = make_ring(name, SB_RING_IN, 8192, &how);
    assert_int_equal(how, SB_FM_REPLACED);
    assert_int_equal(sb_ring_write(r, "x", "y", 1, 0, NULL), SB_RING_ECLOSED);
    sb_ring_close(r);
    drop_ring(os, name);
#else
    sb_ring_close(r);
    drop_ring(make_ring(name, SB_RING_IN, 4096, NULL), name);
#endif
}

/* ---- settings ---- */

static void test_mode_parse(void **state)
{
    unsigned m;
    const char *why;
    (void)state;
    assert_int_equal(sb_filemap_parse_mode("0600", &m, &why), 0);
    assert_int_equal(m, 0600);
    assert_int_equal(sb_filemap_parse_mode("660", &m, &why), 0);
    assert_int_equal(m, 0660);
    assert_int_equal(sb_filemap_parse_mode("0666", &m, &why), -1); /* others write */
    assert_int_equal(sb_filemap_parse_mode("0400", &m, &why), -1); /* the broker must write */
    assert_int_equal(sb_filemap_parse_mode("4600", &m, &why), -1);
    assert_int_equal(sb_filemap_parse_mode("0680", &m, &why), -1);
    assert_int_equal(sb_filemap_parse_mode("06", &m, &why), -1);
    assert_true(sb_filemap_name_valid("orders.in-1_x"));
    assert_false(sb_filemap_name_valid("a/b"));
    assert_false(sb_filemap_name_valid("a\\b"));
    assert_false(sb_filemap_name_valid(""));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_wrap),
        cmocka_unit_test(test_full_never_overwrites),
        cmocka_unit_test(test_waiting_producer_wakes),
        cmocka_unit_test(test_wait_committed),
        cmocka_unit_test(test_many_producers),
        cmocka_unit_test(test_reclaimed_record),
        cmocka_unit_test(test_dead_lock_holder),
        cmocka_unit_test(test_out_ring_consumer),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_corrupt_header),
        cmocka_unit_test(test_peek_refuses_damage),
        cmocka_unit_test(test_one_broker_per_ring),
        cmocka_unit_test(test_resume_and_replace),
        cmocka_unit_test(test_mode_parse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
