/*
 * sb_ring.h - Switchboard's shared-memory ring, for any C or C++ program.
 *
 * A `filemap` adapter of the broker (type: filemap) creates a named shared
 * memory object holding a ring of records. Programs open it by name with this
 * one header (no library to link; on Linux the ring uses POSIX shared memory
 * and futexes, on Windows a named file mapping, named semaphores and named
 * mutexes) and either
 *
 *   - produce into an *in* ring: every record (topic, optional headers,
 *     payload) is published by the broker, which then advances the ring's
 *     committed cursor; a producer may wait for that (sb_ring_wait_committed)
 *     to know that its record is durable, or fire and forget. Several
 *     producers may write at once, from several processes and threads;
 *   - or consume an *out* ring: the broker writes the deliveries of its
 *     routes, the one consumer reads them (sb_ring_next) and releases them
 *     (sb_ring_release), which acknowledges them to the broker.
 *
 * A full ring blocks a producer for as long as its timeout allows; nothing is
 * ever overwritten. A producer that dies in the middle of a record does not
 * wedge the ring: the broker skips the record once the producer is gone, or
 * after the ring's reclaim timeout. A consumer that dies leaves what it had
 * not released in the ring, for the next consumer.
 *
 * The layout and the protocol are documented in docs/ring.md, so that the
 * ring can be used from other languages; this header is the reference
 * implementation, and the broker's own side is built on it.
 *
 * Producer:
 *
 *     sb_ring *r;
 *     uint64_t seq;
 *     if (sb_ring_open(&r, "orders", SB_RING_PRODUCER) != SB_RING_OK) ...
 *     rc = sb_ring_write(r, "orders/eu", "hello", 5, 1000, &seq);  // waits at most 1 s for room
 *     rc = sb_ring_wait_committed(r, seq, 5000);                   // durable once SB_RING_OK
 *     sb_ring_close(r);
 *
 * Consumer:
 *
 *     sb_ring_msg m;
 *     sb_ring_open(&r, "audit", SB_RING_CONSUMER);
 *     while (sb_ring_next(r, &m, -1) == SB_RING_OK) {
 *         handle(m.topic, m.topic_len, m.payload, m.payload_len);
 *         sb_ring_release(r, &m);                                  // acknowledged
 *     }
 *
 * Names: on Linux NAME is the POSIX shared memory object /NAME
 * (/dev/shm/NAME). On Windows it is the mapping Local\NAME or Global\NAME
 * (the broker under the service uses Global\, `switchboard run` Local\): a
 * NAME without a prefix is looked up in Global\ first, then in Local\.
 *
 * Building: C11 or C++11 and later, gcc, clang or MSVC (x64). On Linux the
 * header uses shm_open, mmap, pthread mutexes and the futex system call:
 * compile with _GNU_SOURCE or _DEFAULT_SOURCE (gcc's default gnu modes do)
 * and link with -pthread. A handle may be shared by several threads for
 * producing; a consumer handle belongs to one thread (on Windows the
 * consumer's claim is a mutex, which the thread that opened the ring owns).
 * Define SB_RING_NO_OS before including it to get only the portable part
 * (layout, validation, cursor arithmetic), as the broker's portable code and
 * the fuzzer do.
 */
#ifndef SB_RING_H
#define SB_RING_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ==== layout (docs/ring.md) ==== */

#define SB_RING_MAGIC 0x47524253u /* "SBRG" in the first four bytes */
#define SB_RING_VERSION 1u
#define SB_RING_HEADER_SIZE 1024u
#define SB_RING_REC_SIZE 56u /* a record's own header */
#define SB_RING_PAD_SIZE 8u  /* the smallest pad */
#define SB_RING_MIN_CAPACITY 4096u
#define SB_RING_MAX_CAPACITY (1u << 30)
#define SB_RING_TOPIC_MAX 65535u
#define SB_RING_HEADERS_MAX (1u << 20)
#define SB_RING_REFUSALS 32u

/* Ring directions. */
#define SB_RING_IN 1u  /* programs produce, the broker reads */
#define SB_RING_OUT 2u /* the broker writes, one program consumes */

/* Ring states. */
#define SB_RING_STATE_OPEN 1u
#define SB_RING_STATE_QUARANTINED 2u /* the broker found it corrupt and stopped reading it */
#define SB_RING_STATE_RETIRED 3u     /* replaced by a new ring of the same name: reopen */

/* Record states: the word at offset 4 of every record. */
#define SB_RING_REC_RESERVED 0x53520001u  /* a producer is writing it */
#define SB_RING_REC_READY 0x53520002u     /* complete */
#define SB_RING_REC_ABANDONED 0x53520003u /* reclaimed by the broker: skip it */
#define SB_RING_REC_PAD 0x53520004u       /* filler up to the end of the data area */

/* Record flags (out rings). */
#define SB_RING_F_REDELIVERY 1u /* offered before (or may have been, before a restart) */

/* The two wake-up words: records ready (data), commit moved (release). */
#define SBR_WAKE_DATA 0
#define SBR_WAKE_RELEASE 1

/* A wake-up word pair: waiters count themselves in `waiters`, wakers bump
 * `gen` (and on Linux wait on it with a futex). */
typedef struct sb_ring_wake {
    uint32_t gen;
    uint32_t waiters;
    uint8_t pad_[56];
} sb_ring_wake;

/* The first SB_RING_HEADER_SIZE bytes of the shared memory, in the byte
 * order of the machine (every field naturally aligned; cursors are byte
 * positions that only grow: a record at cursor p lies at data + p % capacity). */
typedef struct sb_ring_header {
    /* 0: set by the broker when it creates the ring */
    uint32_t magic;
    uint32_t version;
    uint32_t header_size; /* where the data area starts */
    uint32_t direction;   /* SB_RING_IN or SB_RING_OUT */
    uint64_t capacity;    /* bytes of the data area, a multiple of 8 */
    uint32_t max_payload; /* the largest payload the broker takes (its max_message) */
    uint32_t reclaim_ms;  /* an unfinished record is skipped after this long */
    uint64_t created_ms;  /* Unix time of creation (informational) */
    uint32_t state;       /* SB_RING_STATE_* */
    uint32_t owner_pid;   /* the broker serving the ring, 0 when none */
    uint32_t consumer_pid; /* out: the attached consumer, 0 when none */
    uint32_t reserved0_;
    uint64_t reserved1_;
    /* 64: the producers' lock (in rings). Linux: a process-shared robust
     * pthread mutex; Windows: a 64-bit word, 0 when free, else the holder
     * process's id and the low 32 bits of its creation time (sbr_lock). */
    uint8_t lock[64];
    /* 128: written by whoever holds the lock (in) or by the broker (out) */
    uint64_t reserve;         /* the next free byte */
    uint64_t lock_recoveries; /* locks taken over from a holder that died */
    uint8_t pad2_[48];
    /* 192: the reader's progress (informational; restarts begin at commit) */
    uint64_t read;
    uint8_t pad3_[56];
    /* 256: written by the releasing side (in: the broker; out: the consumer) */
    uint64_t commit;    /* every record before it is done: its space is free */
    uint64_t reclaimed; /* records skipped because their producer never finished */
    uint64_t refused;   /* records the broker refused (in) */
    uint8_t pad4_[40];
    /* 320, 384 */
    sb_ring_wake data;    /* records became ready */
    sb_ring_wake release; /* commit advanced, or the consumer came or went */
    /* 448: the positions of the last refused records, refusal n at
     * refusals[n % SB_RING_REFUSALS] (in rings) */
    uint64_t refusals[SB_RING_REFUSALS];
    uint8_t pad5_[SB_RING_HEADER_SIZE - 448 - 8 * SB_RING_REFUSALS];
} sb_ring_header;

/* Every record starts with this (8-byte aligned); a pad has only its first
 * 8 bytes. The topic (no NUL), the headers ("key\0value\0" pairs) and the
 * payload follow it, then zero to seven bytes up to `len`. */
typedef struct sb_ring_rec {
    uint32_t len;   /* the whole record with padding, a multiple of 8 */
    uint32_t state; /* SB_RING_REC_* */
    uint64_t seq;   /* its position: the cursor value where it starts */
    uint64_t stamp; /* in: when it was reserved (monotonic ms); out: the message's creation (Unix ms) */
    uint64_t msg_id; /* out: the broker's message id; in: 0 */
    uint32_t pid;    /* in: the producer's process id */
    uint32_t flags;  /* out: SB_RING_F_* */
    uint32_t topic_len;
    uint32_t headers_len;
    uint32_t payload_len;
    uint32_t attempt; /* out: delivery attempt, 1 for the first */
} sb_ring_rec;

#if defined(__cplusplus)
#define SB_RING_ASSERT_(c, m) static_assert(c, m)
#else
#define SB_RING_ASSERT_(c, m) _Static_assert(c, m)
#endif
SB_RING_ASSERT_(sizeof(sb_ring_header) == SB_RING_HEADER_SIZE, "ring header size");
SB_RING_ASSERT_(offsetof(sb_ring_header, lock) == 64, "lock offset");
SB_RING_ASSERT_(offsetof(sb_ring_header, reserve) == 128, "reserve offset");
SB_RING_ASSERT_(offsetof(sb_ring_header, read) == 192, "read offset");
SB_RING_ASSERT_(offsetof(sb_ring_header, commit) == 256, "commit offset");
SB_RING_ASSERT_(offsetof(sb_ring_header, data) == 320, "data wake offset");
SB_RING_ASSERT_(offsetof(sb_ring_header, release) == 384, "release wake offset");
SB_RING_ASSERT_(offsetof(sb_ring_header, refusals) == 448, "refusals offset");
SB_RING_ASSERT_(sizeof(sb_ring_rec) == SB_RING_REC_SIZE, "record header size");

/* ==== result codes ==== */

#define SB_RING_OK 0
#define SB_RING_ETIMEDOUT (-1) /* the ring stayed full, empty or uncommitted that long */
#define SB_RING_ETOOBIG (-2)   /* larger than the broker's max_message or the ring */
#define SB_RING_EINVAL (-3)    /* a bad argument: topic, header, role */
#define SB_RING_ENOTFOUND (-4) /* no ring of that name (is the broker running?) */
#define SB_RING_EACCES (-5)    /* the ring's security does not let this program in */
#define SB_RING_EBUSY (-6)     /* another consumer has the ring */
#define SB_RING_ECLOSED (-7)   /* quarantined or replaced: reopen later */
#define SB_RING_ECORRUPT (-8)  /* the ring's contents are not valid */
#define SB_RING_ERECLAIMED (-9) /* the record took longer than the reclaim timeout: lost */
#define SB_RING_EREFUSED (-10)  /* the broker refused the record (its log says why) */
#define SB_RING_EUNKNOWN (-11)  /* done, but too many later refusals to tell committed from refused */
#define SB_RING_ENOMEM (-12)
#define SB_RING_EVERSION (-13) /* a layout version this header does not know */
#define SB_RING_ESYS (-14)     /* another system error (sb_ring_syserror) */

static inline const char *sb_ring_strerror(int rc)
{
    switch (rc) {
    case SB_RING_OK: return "success";
    case SB_RING_ETIMEDOUT: return "timed out";
    case SB_RING_ETOOBIG: return "record too large for the ring or the broker's max_message";
    case SB_RING_EINVAL: return "invalid argument";
    case SB_RING_ENOTFOUND: return "no such ring (is the broker running?)";
    case SB_RING_EACCES: return "access denied";
    case SB_RING_EBUSY: return "another consumer has the ring";
    case SB_RING_ECLOSED: return "the ring is quarantined or was replaced";
    case SB_RING_ECORRUPT: return "the ring is corrupt";
    case SB_RING_ERECLAIMED: return "the record was reclaimed (took longer than the reclaim timeout)";
    case SB_RING_EREFUSED: return "the broker refused the record";
    case SB_RING_EUNKNOWN: return "the record's fate is unknown (see the broker's log)";
    case SB_RING_ENOMEM: return "out of memory";
    case SB_RING_EVERSION: return "unsupported ring layout version";
    case SB_RING_ESYS: return "system error";
    default: return "unknown error";
    }
}

/* ==== atomics (gcc/clang builtins; MSVC on x64) ==== */

#if defined(__GNUC__) || defined(__clang__)
static inline uint32_t sbr_load32(const uint32_t *p)
{
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
static inline uint64_t sbr_load64(const uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
static inline void sbr_store32(uint32_t *p, uint32_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}
static inline void sbr_store64(uint64_t *p, uint64_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}
static inline int sbr_cas32(uint32_t *p, uint32_t expected, uint32_t desired)
{
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_SEQ_CST,
                                       __ATOMIC_SEQ_CST);
}
static inline int sbr_cas64(uint64_t *p, uint64_t expected, uint64_t desired)
{
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_SEQ_CST,
                                       __ATOMIC_SEQ_CST);
}
static inline uint32_t sbr_add32(uint32_t *p, uint32_t v)
{
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
static inline uint64_t sbr_add64(uint64_t *p, uint64_t v)
{
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
static inline void sbr_fence(void)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}
#elif defined(_MSC_VER) && defined(_M_X64)
#include <intrin.h>
/* x64: aligned loads and stores are atomic, loads acquire and stores release
 * once the compiler is kept from reordering them. */
static __forceinline uint32_t sbr_load32(const uint32_t *p)
{
    uint32_t v = *(const volatile uint32_t *)p;
    _ReadWriteBarrier();
    return v;
}
static __forceinline uint64_t sbr_load64(const uint64_t *p)
{
    uint64_t v = *(const volatile uint64_t *)p;
    _ReadWriteBarrier();
    return v;
}
static __forceinline void sbr_store32(uint32_t *p, uint32_t v)
{
    _ReadWriteBarrier();
    *(volatile uint32_t *)p = v;
}
static __forceinline void sbr_store64(uint64_t *p, uint64_t v)
{
    _ReadWriteBarrier();
    *(volatile uint64_t *)p = v;
}
static __forceinline int sbr_cas32(uint32_t *p, uint32_t expected, uint32_t desired)
{
    return (uint32_t)_InterlockedCompareExchange((volatile long *)p, (long)desired,
                                                 (long)expected) == expected;
}
static __forceinline int sbr_cas64(uint64_t *p, uint64_t expected, uint64_t desired)
{
    return (uint64_t)_InterlockedCompareExchange64((volatile __int64 *)p, (__int64)desired,
                                                   (__int64)expected) == expected;
}
static __forceinline uint32_t sbr_add32(uint32_t *p, uint32_t v)
{
    return (uint32_t)_InterlockedExchangeAdd((volatile long *)p, (long)v);
}
static __forceinline uint64_t sbr_add64(uint64_t *p, uint64_t v)
{
    return (uint64_t)_InterlockedExchangeAdd64((volatile __int64 *)p, (__int64)v);
}
static __forceinline void sbr_fence(void)
{
    __faststorefence();
}
#else
#error "sb_ring.h needs gcc, clang or MSVC on x64"
#endif

/* ==== the portable part: sizes, validation, records ==== */

static inline uint64_t sbr_align8(uint64_t n)
{
    return (n + 7u) & ~(uint64_t)7u;
}

/* The size of a record with these parts, or 0 if it cannot be one. */
static inline uint64_t sbr_record_size(uint64_t topic_len, uint64_t headers_len,
                                       uint64_t payload_len)
{
    if (topic_len > SB_RING_TOPIC_MAX || headers_len > SB_RING_HEADERS_MAX ||
        payload_len > 0xffffffffu)
        return 0;
    return sbr_align8(SB_RING_REC_SIZE + topic_len + headers_len + payload_len);
}

/* 1 if s[0..n) is well-formed UTF-8 (no overlong forms, no surrogates). */
static inline int sbr_utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t k;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf) {
            k = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            k = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            k = 3;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (n - i <= k)
            return 0;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + j] & 0x3fu);
        }
        if ((k == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
            (k == 3 && (cp < 0x10000 || cp > 0x10ffff)))
            return 0;
        i += k + 1;
    }
    return 1;
}

/* 1 if t[0..n) can be a publish topic: 1..65535 bytes of UTF-8, no NUL, no
 * wildcard. The broker checks it again (and its ACLs). */
static inline int sbr_topic_valid(const char *t, size_t n)
{
    if (n == 0 || n > SB_RING_TOPIC_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (t[i] == '\0' || t[i] == '+' || t[i] == '#')
            return 0;
    return sbr_utf8_valid((const unsigned char *)t, n);
}

/* 1 if b[0..n) is a headers blob: "key\0value\0" pairs of UTF-8, keys
 * not empty (n == 0: no headers). */
static inline int sbr_headers_valid(const char *b, size_t n)
{
    size_t i = 0;
    int key = 1;
    if (n == 0)
        return 1;
    if (b[n - 1] != '\0')
        return 0;
    while (i < n) {
        const char *z = (const char *)memchr(b + i, '\0', n - i);
        size_t len = (size_t)(z - (b + i));
        if ((key && len == 0) || !sbr_utf8_valid((const unsigned char *)b + i, len))
            return 0;
        i += len + 1;
        key = !key;
    }
    return key; /* every key has its value */
}

/* Checks the header of a mapped ring of map_size bytes: 0, or a negative
 * code with *why saying what is wrong. direction 0 accepts either. */
static inline int sbr_check_header(const sb_ring_header *h, uint64_t map_size, uint32_t direction,
                                   const char **why)
{
    uint64_t cap;
    if (map_size < SB_RING_HEADER_SIZE) {
        *why = "smaller than a ring header";
        return SB_RING_ECORRUPT;
    }
    if (h->magic != SB_RING_MAGIC) {
        *why = "bad magic (not a Switchboard ring)";
        return SB_RING_ECORRUPT;
    }
    if (h->version != SB_RING_VERSION) {
        *why = "unknown layout version";
        return SB_RING_EVERSION;
    }
    cap = h->capacity;
    if (h->header_size != SB_RING_HEADER_SIZE) {
        *why = "bad header size";
        return SB_RING_ECORRUPT;
    }
    if (cap < SB_RING_MIN_CAPACITY || cap > SB_RING_MAX_CAPACITY || cap % 8 != 0 ||
        SB_RING_HEADER_SIZE + cap > map_size) {
        *why = "bad capacity (or larger than the mapping)";
        return SB_RING_ECORRUPT;
    }
    if (h->direction != SB_RING_IN && h->direction != SB_RING_OUT) {
        *why = "bad direction";
        return SB_RING_ECORRUPT;
    }
    if (direction != 0 && h->direction != direction) {
        *why = direction == SB_RING_IN ? "an out ring (the broker writes it: open it as a consumer)"
                                       : "an in ring (programs write it: open it as a producer)";
        return SB_RING_EINVAL;
    }
    if (h->max_payload == 0) {
        *why = "bad max_payload";
        return SB_RING_ECORRUPT;
    }
    return SB_RING_OK;
}

/* What sbr_peek found at a position. */
#define SBR_EMPTY 0     /* nothing there yet (pos == reserve) */
#define SBR_READY 1     /* a complete record */
#define SBR_PAD 2       /* filler to the end of the data area */
#define SBR_PENDING 3   /* reserved, still being written */
#define SBR_ABANDONED 4 /* reclaimed: skip */
#define SBR_BAD (-1)    /* corrupt: *why says how */

/* The lengths of a record as sbr_peek_parts read them, each once: a
 * reader uses these, never the record's fields again, since a hostile
 * writer may change the shared memory between two reads. */
typedef struct sb_ring_parts {
    uint32_t len, topic_len, headers_len, payload_len;
} sb_ring_parts;

/* Looks at the record at cursor pos of a ring whose writers have reached
 * `reserve` (loaded with acquire by the caller), checking everything a
 * hostile writer could have put there: lengths, alignment, bounds, the
 * record's own position, its state, and for a complete record the sizes of
 * its parts (their contents are the caller's to check: sbr_topic_valid,
 * sbr_headers_valid). *out points at the record (NULL when EMPTY).
 * Returns SBR_*. */
static inline int sbr_peek_at(const sb_ring_header *h, const unsigned char *data, uint64_t cap,
                              uint64_t pos, uint64_t off, uint64_t reserve, uint32_t max_payload,
                              const sb_ring_rec **out, const char **why);

/* sbr_peek_at that also returns the checked lengths in *parts (len for
 * every kind but EMPTY and BAD; the part lengths for READY, else 0). */
static inline int sbr_peek_parts(const sb_ring_header *h, const unsigned char *data, uint64_t cap,
                                 uint64_t pos, uint64_t off, uint64_t reserve,
                                 uint32_t max_payload, const sb_ring_rec **out,
                                 sb_ring_parts *parts, const char **why);

static inline int sbr_peek(const sb_ring_header *h, const unsigned char *data, uint64_t cap,
                           uint64_t pos, uint64_t reserve, uint32_t max_payload,
                           const sb_ring_rec **out, const char **why)
{
    return sbr_peek_at(h, data, cap, pos, pos % cap, reserve, max_payload, out, why);
}

/* One read of a field a writer may change under us (not re-read by the
 * compiler). */
static inline uint32_t sbr_once32(const uint32_t *p)
{
    return *(const volatile uint32_t *)p;
}
static inline uint64_t sbr_once64(const uint64_t *p)
{
    return *(const volatile uint64_t *)p;
}

static inline int sbr_peek_parts(const sb_ring_header *h, const unsigned char *data, uint64_t cap,
                                 uint64_t pos, uint64_t off, uint64_t reserve,
                                 uint32_t max_payload, const sb_ring_rec **out,
                                 sb_ring_parts *parts, const char **why)
{
    uint64_t size;
    const sb_ring_rec *rec = (const sb_ring_rec *)(const void *)(data + off);
    uint32_t len, state;
    (void)h;
    *out = NULL;
    parts->len = parts->topic_len = parts->headers_len = parts->payload_len = 0;
    if (pos == reserve)
        return SBR_EMPTY;
    if (pos > reserve || pos % 8 != 0 || reserve - pos < SB_RING_PAD_SIZE) {
        *why = "cursor out of order";
        return SBR_BAD;
    }
    state = sbr_load32(&rec->state); /* acquire: what was written before it is visible */
    len = sbr_once32(&rec->len);
    if (len < SB_RING_PAD_SIZE || len % 8 != 0 || len > cap - off || len > reserve - pos) {
        *why = "record length out of bounds";
        return SBR_BAD;
    }
    *out = rec;
    if (state == SB_RING_REC_PAD) {
        if (off + len != cap) {
            *why = "pad does not end at the end of the data area";
            return SBR_BAD;
        }
        parts->len = len;
        return SBR_PAD;
    }
    if (len < SB_RING_REC_SIZE) {
        *why = "record shorter than its header";
        return SBR_BAD;
    }
    if (sbr_once64(&rec->seq) != pos) {
        *why = "record sequence does not match its position (torn or stale)";
        return SBR_BAD;
    }
    parts->len = len;
    if (state == SB_RING_REC_RESERVED)
        return SBR_PENDING;
    if (state == SB_RING_REC_ABANDONED)
        return SBR_ABANDONED;
    if (state != SB_RING_REC_READY) {
        *why = "unknown record state";
        return SBR_BAD;
    }
    parts->topic_len = sbr_once32(&rec->topic_len);
    parts->headers_len = sbr_once32(&rec->headers_len);
    parts->payload_len = sbr_once32(&rec->payload_len);
    size = sbr_record_size(parts->topic_len, parts->headers_len, parts->payload_len);
    if (size == 0 || size != len || parts->topic_len == 0) {
        *why = "record part lengths do not add up to its length";
        return SBR_BAD;
    }
    if (parts->payload_len > max_payload) {
        *why = "payload larger than max_payload";
        return SBR_BAD;
    }
    return SBR_READY;
}

/* sbr_peek for a reader that keeps the offset (pos % cap) itself: no
 * division per record. */
static inline int sbr_peek_at(const sb_ring_header *h, const unsigned char *data, uint64_t cap,
                              uint64_t pos, uint64_t off, uint64_t reserve, uint32_t max_payload,
                              const sb_ring_rec **out, const char **why)
{
    sb_ring_parts parts;
    return sbr_peek_parts(h, data, cap, pos, off, reserve, max_payload, out, &parts, why);
}

/* The bytes a record of `need` bytes takes at cursor `reserve` of a ring of
 * capacity cap: need, plus the pad up to the end of the data area when it
 * does not fit before it. */
static inline uint64_t sbr_footprint(uint64_t reserve, uint64_t cap, uint64_t need)
{
    uint64_t room = cap - reserve % cap;
    return room < need ? room + need : need;
}

/* Places a record of `need` bytes at *reserve (the caller owns the writing
 * side: it holds the lock, or is an out ring's only writer), first writing a
 * pad when the record does not fit before the end of the data area. Writes
 * the record's len, state, seq and zeroes the rest of its header; moves
 * *reserve past it. Returns the record, or NULL if there is not room for it
 * beyond `commit` (nothing written then). Does not publish *reserve. */
static inline sb_ring_rec *sbr_place(unsigned char *data, uint64_t cap, uint64_t commit,
                                     uint64_t *reserve, uint64_t need, uint32_t state)
{
    uint64_t r = *reserve, off = r % cap;
    sb_ring_rec *rec;
    if (sbr_footprint(r, cap, need) > cap - (r - commit))
        return NULL;
    if (cap - off < need) {
        sb_ring_rec *pad = (sb_ring_rec *)(void *)(data + off);
        pad->len = (uint32_t)(cap - off);
        sbr_store32(&pad->state, SB_RING_REC_PAD);
        r += cap - off;
        off = 0;
    }
    rec = (sb_ring_rec *)(void *)(data + off);
    memset(rec, 0, SB_RING_REC_SIZE);
    rec->len = (uint32_t)need;
    rec->seq = r;
    sbr_store32(&rec->state, state);
    *reserve = r + need;
    return rec;
}

/* The topic, headers and payload of a record. */
static inline char *sbr_rec_topic(sb_ring_rec *rec)
{
    return (char *)rec + SB_RING_REC_SIZE;
}
static inline char *sbr_rec_headers(sb_ring_rec *rec)
{
    return sbr_rec_topic(rec) + rec->topic_len;
}
static inline unsigned char *sbr_rec_payload(sb_ring_rec *rec)
{
    return (unsigned char *)sbr_rec_headers(rec) + rec->headers_len;
}

/* Initialises a fresh ring header (the broker, before anyone can open it;
 * the lock is the OS part's to set up). */
static inline void sbr_init_header(sb_ring_header *h, uint32_t direction, uint64_t capacity,
                                   uint32_t max_payload, uint32_t reclaim_ms, uint64_t created_ms)
{
    memset(h, 0, sizeof(*h));
    h->version = SB_RING_VERSION;
    h->header_size = SB_RING_HEADER_SIZE;
    h->direction = direction;
    h->capacity = capacity;
    h->max_payload = max_payload;
    h->reclaim_ms = reclaim_ms;
    h->created_ms = created_ms;
    h->state = SB_RING_STATE_OPEN;
    sbr_store32(&h->magic, SB_RING_MAGIC); /* last: a half-made ring is not a ring */
}

/* Records the refusal of the record at pos (the broker, in order of
 * position, before advancing commit past it). */
static inline void sbr_note_refusal(sb_ring_header *h, uint64_t pos)
{
    uint64_t n = h->refused;
    sbr_store64(&h->refusals[n % SB_RING_REFUSALS], pos);
    sbr_store64(&h->refused, n + 1);
}

/* Whether the broker refused the record at pos, which commit has passed:
 * SB_RING_EREFUSED, SB_RING_OK (committed), or SB_RING_EUNKNOWN when more
 * refusals came after it than the log keeps. The last SB_RING_REFUSALS - 1
 * entries are trusted (the broker may be writing the next one). */
static inline int sbr_refusal_of(const sb_ring_header *h, uint64_t pos)
{
    for (int tries = 0; tries < 100; tries++) {
        uint64_t n = sbr_load64(&h->refused), keep = SB_RING_REFUSALS - 1;
        uint64_t first = n > keep ? n - keep : 0, oldest = 0;
        int found = 0;
        for (uint64_t i = first; i < n; i++) {
            uint64_t p = sbr_load64(&h->refusals[i % SB_RING_REFUSALS]);
            if (i == first)
                oldest = p;
            if (p == pos)
                found = 1;
        }
        if (sbr_load64(&h->refused) != n)
            continue; /* the log moved meanwhile: look again */
        if (found)
            return SB_RING_EREFUSED;
        /* Refusals are logged in order of position: the log covers pos if it
         * holds every refusal so far or its oldest entry is not after pos. */
        if (n <= keep || oldest <= pos)
            return SB_RING_OK;
        return SB_RING_EUNKNOWN;
    }
    return SB_RING_EUNKNOWN;
}

#ifndef SB_RING_NO_OS

/* ==== the operating system part ==== */

#include <stdio.h>
#include <stdlib.h>

#ifdef _WIN32
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>
#else
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#endif
#endif

/* Roles of sb_ring_open. */
#define SB_RING_PRODUCER 1 /* writes an in ring */
#define SB_RING_CONSUMER 2 /* reads an out ring (one at a time) */
#define SB_RING_OBSERVER 3 /* looks (sb_ring_get_info): either direction, no claim */

/* An open ring. The fields are the header's own: use the functions. */
typedef struct sb_ring {
    sb_ring_header *h;
    unsigned char *data;
    uint64_t cap;
    uint64_t map_size;
    int role;
    uint32_t pid;
    uint64_t read;  /* consumer: the next record to read */
    int recovered;  /* consumer: the previous consumer died without closing */
    int sys_error;  /* errno or GetLastError() of the last SB_RING_ESYS / EACCES */
    int owns_map;   /* close unmaps */
#ifdef _WIN32
    HANDLE map, consumer, wake_data, wake_release;
    uint64_t token; /* this process in the producers' lock word */
#else
    int fd;
#endif
} sb_ring;

/* A record a producer is writing (sb_ring_reserve .. sb_ring_commit). */
typedef struct sb_ring_slot {
    char *headers;          /* headers_len bytes to fill: "key\0value\0" pairs */
    unsigned char *payload; /* payload_len bytes to fill */
    uint64_t seq;           /* its position: sb_ring_wait_committed takes it */
    sb_ring_rec *rec_;
} sb_ring_slot;

/* A record a consumer read; the pointers stay valid until it is released. */
typedef struct sb_ring_msg {
    const char *topic; /* not NUL-terminated */
    size_t topic_len;
    const char *headers; /* "key\0value\0" pairs (sb_ring_msg_header) */
    size_t headers_len;
    const unsigned char *payload;
    size_t payload_len;
    uint64_t msg_id;     /* the broker's message id */
    uint64_t created_ms; /* Unix time the message was published */
    uint32_t attempt;    /* 1 for a first delivery */
    int redelivery;      /* delivered before (or may have been) */
    uint64_t seq;        /* its position */
    uint64_t end_;
} sb_ring_msg;

/* A header for sb_ring_write_headers. */
typedef struct sb_ring_kv {
    const char *key;
    const char *value;
} sb_ring_kv;

/* ---- time, processes ---- */

/* Milliseconds of a clock every process of the machine shares and that
 * never jumps (Linux CLOCK_MONOTONIC, Windows GetTickCount64). */
static inline uint64_t sbr_now_ms(void)
{
#ifdef _WIN32
    return (uint64_t)GetTickCount64();
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
#endif
}

static inline uint32_t sbr_pid(void)
{
#ifdef _WIN32
    return (uint32_t)GetCurrentProcessId();
#else
    return (uint32_t)getpid();
#endif
}

/* 0 if process pid has certainly exited, 1 if it runs (or may: a process
 * of another user, or a pid reused by another program: the reclaim timeout
 * still bounds the wait then). */
static inline int sbr_pid_alive(uint32_t pid)
{
#ifdef _WIN32
    HANDLE p;
    DWORD code;
    if (pid == 0)
        return 0;
    p = OpenProcess(SYNCHRONIZE, FALSE, (DWORD)pid);
    if (p == NULL)
        return GetLastError() != ERROR_INVALID_PARAMETER;
    code = WaitForSingleObject(p, 0);
    CloseHandle(p);
    return code != WAIT_OBJECT_0;
#else
    if (pid == 0 || pid > 0x7fffffffu)
        return 0;
    return kill((pid_t)pid, 0) == 0 || errno != ESRCH;
#endif
}

/* ---- wake-ups ---- */

static inline sb_ring_wake *sbr_wake_word(sb_ring *r, int kind)
{
    return kind == SBR_WAKE_DATA ? &r->h->data : &r->h->release;
}

/* Sleeps until the word's gen is no longer `seen` or a wake, at most ms
 * (< 0: no limit). */
static inline void sbr_os_wait(sb_ring *r, int kind, uint32_t seen, int ms)
{
#ifdef _WIN32
    (void)seen;
    WaitForSingleObject(kind == SBR_WAKE_DATA ? r->wake_data : r->wake_release,
                        ms < 0 ? INFINITE : (DWORD)ms);
#elif defined(__linux__)
    struct timespec ts, *t = NULL;
    if (ms >= 0) {
        ts.tv_sec = ms / 1000;
        ts.tv_nsec = (long)(ms % 1000) * 1000000L;
        t = &ts;
    }
    syscall(SYS_futex, &sbr_wake_word(r, kind)->gen, FUTEX_WAIT, seen, t, NULL, 0);
#else
    /* No futex: poll the word every millisecond. */
    struct timespec ts = {0, 1000000L};
    uint64_t end = ms < 0 ? UINT64_MAX : sbr_now_ms() + (uint64_t)ms;
    while (sbr_load32(&sbr_wake_word(r, kind)->gen) == seen && sbr_now_ms() < end)
        nanosleep(&ts, NULL);
#endif
}

static inline void sbr_os_wake(sb_ring *r, int kind, uint32_t waiters)
{
#ifdef _WIN32
    /* At most this many more tokens than sleepers: they only cost a spurious
     * wake each. */
    LONG n = waiters > 1024 ? 1024 : (LONG)waiters;
    ReleaseSemaphore(kind == SBR_WAKE_DATA ? r->wake_data : r->wake_release, n, NULL);
#elif defined(__linux__)
    (void)waiters;
    syscall(SYS_futex, &sbr_wake_word(r, kind)->gen, FUTEX_WAKE, 0x7fffffff, NULL, NULL, 0);
#else
    (void)r;
    (void)kind;
    (void)waiters;
#endif
}

/* After making a condition true (records ready, commit advanced): wakes
 * whoever waits for it. Costs a system call only when somebody waits. */
static inline void sbr_signal(sb_ring *r, int kind)
{
    sb_ring_wake *w = sbr_wake_word(r, kind);
    uint32_t waiters;
    sbr_add32(&w->gen, 1);
    sbr_fence();
    waiters = sbr_load32(&w->waiters);
    if (waiters != 0)
        sbr_os_wake(r, kind, waiters);
}

/* Waits until ready(r, arg) returns non-zero (returned: 1 means ready, a
 * negative code an error) or timeout_ms passes (< 0: forever). Each sleep
 * is at most 1 s, so a wake-up a broken waiter count lost costs a second. */
static inline int sbr_wait(sb_ring *r, int kind, int (*ready)(sb_ring *, const void *),
                           const void *arg, int timeout_ms)
{
    sb_ring_wake *w = sbr_wake_word(r, kind);
    uint64_t deadline = timeout_ms < 0 ? UINT64_MAX : sbr_now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        uint32_t seen;
        uint64_t now;
        int rc = ready(r, arg), ms;
        if (rc != 0)
            return rc;
        seen = sbr_load32(&w->gen);
        sbr_add32(&w->waiters, 1);
        sbr_fence();
        rc = ready(r, arg);
        now = sbr_now_ms();
        if (rc == 0 && now < deadline) {
            ms = deadline - now > 1000 ? 1000 : (int)(deadline - now);
            sbr_os_wait(r, kind, seen, ms);
        }
        sbr_add32(&w->waiters, (uint32_t)-1);
        if (rc != 0)
            return rc;
        if (now >= deadline)
            return SB_RING_ETIMEDOUT;
    }
}

/* ---- the producers' lock ---- */

#ifdef _WIN32
/* The lock word of process pid: its id, and the low 32 bits of its creation
 * time (so that a pid Windows gave to another process since does not pass
 * for the holder). 0 if it cannot be read. */
static inline uint64_t sbr_process_token(HANDLE process, DWORD pid)
{
    FILETIME created, exited, kernel, user;
    if (!GetProcessTimes(process, &created, &exited, &kernel, &user))
        return 0;
    return (uint64_t)pid | ((uint64_t)created.dwLowDateTime << 32);
}

/* 0 if the process behind lock word `token` has certainly exited. */
static inline int sbr_token_alive(uint64_t token)
{
    DWORD pid = (DWORD)(token & 0xffffffffu), code;
    HANDLE p = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION | SYNCHRONIZE, FALSE, pid);
    int alive;
    if (p == NULL)
        return GetLastError() != ERROR_INVALID_PARAMETER; /* another user's: assume so */
    code = WaitForSingleObject(p, 0);
    alive = code != WAIT_OBJECT_0 && sbr_process_token(p, pid) == token;
    CloseHandle(p);
    return alive;
}
#endif

/* Takes the lock within timeout_ms (< 0: forever). A lock whose holder died
 * is taken over: the holder either had or had not published its reserve,
 * and both leave the ring consistent.
 *
 * Windows: a compare-and-swap of the lock word (no system call while
 * uncontended); a waiter yields, then sleeps, and every 50 ms of waiting
 * looks whether the holder's process still exists (a named mutex would
 * cost two calls to the kernel per record, and far more under Wine). Linux:
 * a robust pthread mutex (the kernel hands a dead holder's lock on with
 * EOWNERDEAD). */
static inline int sbr_lock(sb_ring *r, int timeout_ms)
{
#ifdef _WIN32
    uint64_t *word = (uint64_t *)(void *)r->h->lock;
    uint64_t deadline = timeout_ms < 0 ? UINT64_MAX : sbr_now_ms() + (uint64_t)timeout_ms;
    uint64_t next_look = 0;
    for (unsigned spins = 0;; spins++) {
        uint64_t held = sbr_load64(word);
        if (held == 0 && sbr_cas64(word, 0, r->token))
            return SB_RING_OK;
        if (spins < 64)
            continue;
        if (held != 0) {
            uint64_t now = sbr_now_ms();
            if (next_look == 0) {
                next_look = now + 50;
            } else if (now >= next_look) {
                if (!sbr_token_alive(held) && sbr_cas64(word, held, r->token)) {
                    sbr_add64(&r->h->lock_recoveries, 1);
                    return SB_RING_OK;
                }
                next_look = now + 50;
            }
            if (now >= deadline)
                return SB_RING_ETIMEDOUT;
        }
        if (spins < 256)
            SwitchToThread();
        else
            Sleep(spins < 1024 ? 0 : 1);
    }
#else
    pthread_mutex_t *m = (pthread_mutex_t *)(void *)r->h->lock;
    int rc;
    if (timeout_ms < 0) {
        rc = pthread_mutex_lock(m);
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += timeout_ms / 1000;
        ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        rc = pthread_mutex_timedlock(m, &ts);
    }
    if (rc == EOWNERDEAD) {
        pthread_mutex_consistent(m);
        sbr_add64(&r->h->lock_recoveries, 1);
        return SB_RING_OK;
    }
    if (rc == 0)
        return SB_RING_OK;
    if (rc == ETIMEDOUT)
        return SB_RING_ETIMEDOUT;
    r->sys_error = rc;
    return SB_RING_ESYS;
#endif
}

static inline void sbr_unlock(sb_ring *r)
{
#ifdef _WIN32
    sbr_store64((uint64_t *)(void *)r->h->lock, 0);
#else
    pthread_mutex_unlock((pthread_mutex_t *)(void *)r->h->lock);
#endif
}

/* ---- opening ---- */

#ifdef _WIN32
/* name + suffix as UTF-16 into out (n wide characters). */
static inline int sbr_wide_name(wchar_t *out, int n, const char *prefix, const char *name,
                                const char *suffix)
{
    char buf[600];
    size_t a = strlen(prefix), b = strlen(name), c = strlen(suffix);
    if (a + b + c >= sizeof(buf))
        return 0;
    memcpy(buf, prefix, a);
    memcpy(buf + a, name, b);
    memcpy(buf + a + b, suffix, c + 1);
    return MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, buf, -1, out, n) > 0;
}

static inline int sbr_win_error(sb_ring *r, DWORD code)
{
    r->sys_error = (int)code;
    if (code == ERROR_FILE_NOT_FOUND)
        return SB_RING_ENOTFOUND;
    if (code == ERROR_ACCESS_DENIED)
        return SB_RING_EACCES;
    if (code == ERROR_NOT_ENOUGH_MEMORY || code == ERROR_OUTOFMEMORY)
        return SB_RING_ENOMEM;
    return SB_RING_ESYS;
}

/* Opens the named objects that go with the mapping `prefix name`. */
static inline int sbr_open_objects(sb_ring *r, const char *prefix, const char *name)
{
    wchar_t w[300];
    if (!sbr_wide_name(w, 300, prefix, name, ".data") ||
        (r->wake_data = OpenSemaphoreW(SYNCHRONIZE | SEMAPHORE_MODIFY_STATE, FALSE, w)) == NULL)
        return sbr_win_error(r, GetLastError());
    if (!sbr_wide_name(w, 300, prefix, name, ".release") ||
        (r->wake_release = OpenSemaphoreW(SYNCHRONIZE | SEMAPHORE_MODIFY_STATE, FALSE, w)) ==
            NULL)
        return sbr_win_error(r, GetLastError());
    if (r->role == SB_RING_PRODUCER &&
        (r->token = sbr_process_token(GetCurrentProcess(), GetCurrentProcessId())) == 0)
        return sbr_win_error(r, GetLastError());
    if (r->role == SB_RING_CONSUMER) {
        DWORD got;
        if (!sbr_wide_name(w, 300, prefix, name, ".consumer") ||
            (r->consumer = OpenMutexW(SYNCHRONIZE | MUTEX_MODIFY_STATE, FALSE, w)) == NULL)
            return sbr_win_error(r, GetLastError());
        got = WaitForSingleObject(r->consumer, 0);
        if (got == WAIT_TIMEOUT) {
            CloseHandle(r->consumer);
            r->consumer = NULL;
            return SB_RING_EBUSY;
        }
        if (got != WAIT_OBJECT_0 && got != WAIT_ABANDONED) {
            CloseHandle(r->consumer);
            r->consumer = NULL;
            return sbr_win_error(r, GetLastError());
        }
        r->recovered = got == WAIT_ABANDONED;
        if (got == WAIT_OBJECT_0 && sbr_load32(&r->h->consumer_pid) == r->pid) {
            /* A mutex is recursive: this process's own consumer has it. */
            ReleaseMutex(r->consumer);
            CloseHandle(r->consumer);
            r->consumer = NULL;
            return SB_RING_EBUSY;
        }
    }
    return SB_RING_OK;
}
#endif

/* Frees a ring's handles and mapping (not the consumer claim's header
 * field: sb_ring_close does that). */
static inline void sbr_release_os(sb_ring *r)
{
#ifdef _WIN32
    if (r->consumer != NULL) {
        ReleaseMutex(r->consumer);
        CloseHandle(r->consumer);
    }
    if (r->wake_data != NULL)
        CloseHandle(r->wake_data);
    if (r->wake_release != NULL)
        CloseHandle(r->wake_release);
    if (r->h != NULL && r->owns_map)
        UnmapViewOfFile(r->h);
    if (r->map != NULL)
        CloseHandle(r->map);
#else
    if (r->h != NULL && r->owns_map)
        munmap(r->h, (size_t)r->map_size);
    if (r->fd >= 0)
        close(r->fd); /* also drops the consumer's lock */
#endif
}

#ifndef _WIN32
/* The byte-range lock that claims an out ring for one consumer (Linux: an
 * open-file-description lock, released when the descriptor closes or the
 * process dies; elsewhere a process lock). */
#if defined(__linux__) && !defined(F_OFD_SETLK)
#define F_OFD_SETLK 37
#endif
static inline int sbr_claim_byte(int fd, off_t byte)
{
    struct flock fl;
    memset(&fl, 0, sizeof(fl));
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = byte;
    fl.l_len = 1;
#ifdef F_OFD_SETLK
    return fcntl(fd, F_OFD_SETLK, &fl);
#else
    return fcntl(fd, F_SETLK, &fl);
#endif
}
#define SBR_OWNER_BYTE 0    /* the broker serving the ring */
#define SBR_CONSUMER_BYTE 1 /* the consumer of an out ring */
#endif

/* Opens the ring `name` as a producer (an in ring), a consumer (an out
 * ring: one at a time; it starts at the first record not yet released, so
 * what a consumer that died had read but not released comes again) or an
 * observer (either ring, to look at it with sb_ring_get_info).
 * *out is set on success (close with sb_ring_close). Returns SB_RING_OK,
 * ENOTFOUND, EACCES, EBUSY (another consumer), EINVAL (wrong direction or
 * role), ECORRUPT, EVERSION, ENOMEM or ESYS. */
static inline int sb_ring_open(sb_ring **out, const char *name, int role)
{
    sb_ring *r;
    const char *why = "";
    int rc;
    uint32_t direction = role == SB_RING_PRODUCER   ? SB_RING_IN
                         : role == SB_RING_CONSUMER ? SB_RING_OUT
                                                    : 0;

    *out = NULL;
    if (name == NULL || name[0] == '\0' ||
        (role != SB_RING_PRODUCER && role != SB_RING_CONSUMER && role != SB_RING_OBSERVER))
        return SB_RING_EINVAL;
    r = (sb_ring *)calloc(1, sizeof(*r));
    if (r == NULL)
        return SB_RING_ENOMEM;
    r->role = role;
    r->pid = sbr_pid();
    r->owns_map = 1;
#ifdef _WIN32
    {
        static const char *const prefixes[] = {"Global\\", "Local\\"};
        const char *prefix = "";
        wchar_t w[300];
        MEMORY_BASIC_INFORMATION mbi;
        int explicit_ns = strncmp(name, "Global\\", 7) == 0 || strncmp(name, "Local\\", 6) == 0;
        DWORD code = ERROR_FILE_NOT_FOUND;
        for (int i = 0; i < (explicit_ns ? 1 : 2) && r->map == NULL; i++) {
            prefix = explicit_ns ? "" : prefixes[i];
            if (!sbr_wide_name(w, 300, prefix, name, "")) {
                free(r);
                return SB_RING_EINVAL;
            }
            r->map = OpenFileMappingW(FILE_MAP_READ | FILE_MAP_WRITE, FALSE, w);
            if (r->map == NULL && code != ERROR_ACCESS_DENIED)
                code = GetLastError();
        }
        if (r->map == NULL) {
            rc = sbr_win_error(r, code);
            free(r);
            return rc;
        }
        r->h = (sb_ring_header *)MapViewOfFile(r->map, FILE_MAP_READ | FILE_MAP_WRITE, 0, 0, 0);
        if (r->h == NULL || VirtualQuery(r->h, &mbi, sizeof(mbi)) == 0) {
            rc = sbr_win_error(r, GetLastError());
            goto fail;
        }
        r->map_size = (uint64_t)mbi.RegionSize;
        if ((rc = sbr_check_header(r->h, r->map_size, direction, &why)) != SB_RING_OK)
            goto fail;
        if ((rc = sbr_open_objects(r, prefix, name)) != SB_RING_OK)
            goto fail;
    }
#else
    {
        char path[300];
        struct stat st;
        int n = snprintf(path, sizeof(path), "%s%s", name[0] == '/' ? "" : "/", name);
        r->fd = -1;
        if (n < 0 || (size_t)n >= sizeof(path) || strchr(path + 1, '/') != NULL) {
            free(r);
            return SB_RING_EINVAL;
        }
        r->fd = shm_open(path, O_RDWR, 0);
        if (r->fd < 0) {
            r->sys_error = errno;
            rc = errno == ENOENT ? SB_RING_ENOTFOUND
                 : errno == EACCES ? SB_RING_EACCES
                                   : SB_RING_ESYS;
            free(r);
            return rc;
        }
        if (fstat(r->fd, &st) != 0) {
            r->sys_error = errno;
            rc = SB_RING_ESYS;
            goto fail;
        }
        r->map_size = (uint64_t)st.st_size;
        if (r->map_size < SB_RING_HEADER_SIZE) {
            rc = SB_RING_ECORRUPT;
            goto fail;
        }
        r->h = (sb_ring_header *)mmap(NULL, (size_t)r->map_size, PROT_READ | PROT_WRITE,
                                      MAP_SHARED, r->fd, 0);
        if ((void *)r->h == MAP_FAILED) {
            r->h = NULL;
            r->sys_error = errno;
            rc = SB_RING_ESYS;
            goto fail;
        }
        if ((rc = sbr_check_header(r->h, r->map_size, direction, &why)) != SB_RING_OK)
            goto fail;
        if (role == SB_RING_CONSUMER) {
            if (sbr_claim_byte(r->fd, SBR_CONSUMER_BYTE) != 0) {
                r->sys_error = errno;
                rc = errno == EAGAIN || errno == EACCES ? SB_RING_EBUSY : SB_RING_ESYS;
                goto fail;
            }
        }
    }
#endif
    r->data = (unsigned char *)r->h + SB_RING_HEADER_SIZE;
    r->cap = r->h->capacity;
    if (sbr_load32(&r->h->state) != SB_RING_STATE_OPEN) {
        rc = SB_RING_ECLOSED;
        goto fail;
    }
    if (role == SB_RING_CONSUMER) {
        /* A consumer that closed cleared its pid: one left there died. */
        if (sbr_load32(&r->h->consumer_pid) != 0)
            r->recovered = 1;
        r->read = sbr_load64(&r->h->commit);
        sbr_store32(&r->h->consumer_pid, r->pid);
        sbr_signal(r, SBR_WAKE_RELEASE); /* the broker delivers again */
    }
    *out = r;
    return SB_RING_OK;
fail:
    (void)why;
    sbr_release_os(r);
    free(r);
    return rc;
}

/* Closes a ring (a consumer lets go of its claim: the broker stops
 * delivering until the next consumer opens it). */
static inline void sb_ring_close(sb_ring *r)
{
    if (r == NULL)
        return;
    if (r->role == SB_RING_CONSUMER && r->h != NULL) {
        sbr_cas32(&r->h->consumer_pid, r->pid, 0);
        sbr_signal(r, SBR_WAKE_RELEASE);
    }
    sbr_release_os(r);
    free(r);
}

/* The errno / GetLastError() behind the last SB_RING_ESYS or EACCES. */
static inline int sb_ring_syserror(const sb_ring *r)
{
    return r->sys_error;
}

/* 1 if this consumer took over from one that died without closing (what it
 * had read and not released is read again). */
static inline int sb_ring_recovered(const sb_ring *r)
{
    return r->recovered;
}

/* ---- producing ---- */

typedef struct sbr_space_arg {
    uint64_t need;
} sbr_space_arg;

static inline int sbr_space_ready(sb_ring *r, const void *arg)
{
    const sbr_space_arg *a = (const sbr_space_arg *)arg;
    /* commit first: it never passes reserve, which only grows */
    uint64_t commit = sbr_load64(&r->h->commit), reserve = sbr_load64(&r->h->reserve);
    if (sbr_load32(&r->h->state) != SB_RING_STATE_OPEN)
        return SB_RING_ECLOSED;
    if (reserve < commit || reserve - commit > r->cap)
        return SB_RING_ECORRUPT;
    return sbr_footprint(reserve, r->cap, a->need) <= r->cap - (reserve - commit);
}

/* Reserves room for a record of `topic` with headers_len bytes of headers
 * and payload_len bytes of payload, waiting at most timeout_ms while the
 * ring is full (0: not at all, < 0: forever). The caller fills
 * slot->headers and slot->payload, then calls sb_ring_commit (promptly: a
 * record unfinished after the ring's reclaim timeout is skipped). Returns
 * SB_RING_OK, ETIMEDOUT (still full), ETOOBIG, EINVAL (bad topic, not a
 * producer), ECLOSED, ECORRUPT or ESYS. */
static inline int sb_ring_reserve(sb_ring *r, sb_ring_slot *slot, const char *topic,
                                  size_t headers_len, size_t payload_len, int timeout_ms)
{
    size_t topic_len = topic != NULL ? strlen(topic) : 0;
    uint64_t need = sbr_record_size(topic_len, headers_len, payload_len);
    uint64_t deadline = timeout_ms < 0 ? UINT64_MAX : sbr_now_ms() + (uint64_t)timeout_ms;
    sbr_space_arg arg;

    memset(slot, 0, sizeof(*slot));
    if (r->role != SB_RING_PRODUCER || !sbr_topic_valid(topic, topic_len))
        return SB_RING_EINVAL;
    if (need == 0 || need > r->cap || payload_len > r->h->max_payload)
        return SB_RING_ETOOBIG;
    arg.need = need;
    for (;;) {
        uint64_t now = sbr_now_ms(), commit, reserve;
        int left = deadline == UINT64_MAX ? -1
                   : now >= deadline      ? 0
                   : deadline - now > 0x7fffffff ? 0x7fffffff
                                              : (int)(deadline - now);
        sb_ring_rec *rec;
        int rc;

        if (sbr_load32(&r->h->state) != SB_RING_STATE_OPEN)
            return SB_RING_ECLOSED;
        if ((rc = sbr_lock(r, left)) != SB_RING_OK)
            return rc;
        reserve = r->h->reserve;
        commit = sbr_load64(&r->h->commit);
        if (reserve < commit || reserve - commit > r->cap || reserve % 8 != 0) {
            sbr_unlock(r);
            return SB_RING_ECORRUPT;
        }
        rec = sbr_place(r->data, r->cap, commit, &reserve, need, SB_RING_REC_RESERVED);
        if (rec != NULL) {
            rec->stamp = sbr_now_ms();
            rec->pid = r->pid;
            rec->topic_len = (uint32_t)topic_len;
            rec->headers_len = (uint32_t)headers_len;
            rec->payload_len = (uint32_t)payload_len;
            sbr_store64(&r->h->reserve, reserve); /* the reservation is made */
            sbr_unlock(r);
            memcpy(sbr_rec_topic(rec), topic, topic_len);
            slot->rec_ = rec;
            slot->seq = rec->seq;
            slot->headers = sbr_rec_headers(rec);
            slot->payload = sbr_rec_payload(rec);
            return SB_RING_OK;
        }
        sbr_unlock(r);
        now = sbr_now_ms();
        if (now >= deadline)
            return SB_RING_ETIMEDOUT;
        rc = sbr_wait(r, SBR_WAKE_RELEASE, sbr_space_ready, &arg,
                      deadline == UINT64_MAX ? -1
                      : deadline - now > 0x7fffffff ? 0x7fffffff
                                                  : (int)(deadline - now));
        if (rc < 0)
            return rc;
    }
}

/* Completes a reserved record: the broker may read it now. Returns
 * SB_RING_OK, or SB_RING_ERECLAIMED if it was skipped meanwhile (it took
 * longer than the reclaim timeout, or the broker believed the process gone). */
static inline int sb_ring_commit(sb_ring *r, sb_ring_slot *slot)
{
    if (slot->rec_ == NULL)
        return SB_RING_EINVAL;
    if (!sbr_cas32(&slot->rec_->state, SB_RING_REC_RESERVED, SB_RING_REC_READY))
        return SB_RING_ERECLAIMED;
    slot->rec_ = NULL;
    sbr_signal(r, SBR_WAKE_DATA);
    return SB_RING_OK;
}

/* Writes one record with headers (n pairs; NULL, 0 for none): reserve,
 * copy, commit. *out_seq (may be NULL) gets its position for
 * sb_ring_wait_committed. Returns as sb_ring_reserve / sb_ring_commit. */
static inline int sb_ring_write_headers(sb_ring *r, const char *topic, const sb_ring_kv *headers,
                                        size_t n, const void *payload, size_t payload_len,
                                        int timeout_ms, uint64_t *out_seq)
{
    sb_ring_slot slot;
    size_t hl = 0, o = 0;
    int rc;
    for (size_t i = 0; i < n; i++) {
        if (headers[i].key == NULL || headers[i].key[0] == '\0' || headers[i].value == NULL)
            return SB_RING_EINVAL;
        hl += strlen(headers[i].key) + strlen(headers[i].value) + 2;
    }
    if ((rc = sb_ring_reserve(r, &slot, topic, hl, payload_len, timeout_ms)) != SB_RING_OK)
        return rc;
    for (size_t i = 0; i < n; i++) {
        size_t k = strlen(headers[i].key) + 1, v = strlen(headers[i].value) + 1;
        memcpy(slot.headers + o, headers[i].key, k);
        memcpy(slot.headers + o + k, headers[i].value, v);
        o += k + v;
    }
    if (payload_len > 0)
        memcpy(slot.payload, payload, payload_len);
    if (out_seq != NULL)
        *out_seq = slot.seq;
    return sb_ring_commit(r, &slot);
}

/* Writes one record without headers (see sb_ring_write_headers). */
static inline int sb_ring_write(sb_ring *r, const char *topic, const void *payload,
                                size_t payload_len, int timeout_ms, uint64_t *out_seq)
{
    return sb_ring_write_headers(r, topic, NULL, 0, payload, payload_len, timeout_ms, out_seq);
}

static inline int sbr_committed_ready(sb_ring *r, const void *arg)
{
    uint64_t seq = *(const uint64_t *)arg;
    if (sbr_load64(&r->h->commit) > seq)
        return 1;
    if (sbr_load32(&r->h->state) != SB_RING_STATE_OPEN)
        return SB_RING_ECLOSED;
    return 0;
}

/* Waits at most timeout_ms (< 0: forever) until the broker is done with the
 * record at seq. Returns SB_RING_OK once it is committed with the
 * durability its routes ask for (with fsync: on disk), EREFUSED if the
 * broker refused it (an ACL, an invalid topic: the broker's log says why),
 * EUNKNOWN (committed or refused, but more records were refused since than
 * the ring remembers), ETIMEDOUT (not yet: still waiting for the broker,
 * or the broker is down and will read it when it comes back), ECLOSED. */
static inline int sb_ring_wait_committed(sb_ring *r, uint64_t seq, int timeout_ms)
{
    int rc = sbr_wait(r, SBR_WAKE_RELEASE, sbr_committed_ready, &seq, timeout_ms);
    if (rc < 0)
        return rc;
    return sbr_refusal_of(r->h, seq);
}

/* ---- consuming ---- */

static inline int sbr_data_ready(sb_ring *r, const void *arg)
{
    (void)arg;
    if (sbr_load64(&r->h->reserve) != r->read)
        return 1;
    if (sbr_load32(&r->h->state) != SB_RING_STATE_OPEN)
        return SB_RING_ECLOSED;
    return 0;
}

/* Reads the next delivery into *m, waiting at most timeout_ms for one (0:
 * not at all, < 0: forever). The delivery stays in the ring (and m's
 * pointers valid) until it is released. Returns SB_RING_OK, ETIMEDOUT,
 * ECLOSED, ECORRUPT or EINVAL (not a consumer). */
static inline int sb_ring_next(sb_ring *r, sb_ring_msg *m, int timeout_ms)
{
    memset(m, 0, sizeof(*m));
    if (r->role != SB_RING_CONSUMER)
        return SB_RING_EINVAL;
    for (;;) {
        uint64_t reserve, commit;
        const sb_ring_rec *rec;
        const char *why = "";
        int kind, rc;

        if (sbr_load32(&r->h->state) != SB_RING_STATE_OPEN)
            return SB_RING_ECLOSED;
        commit = sbr_load64(&r->h->commit);
        reserve = sbr_load64(&r->h->reserve);
        if (r->read < commit || reserve < r->read || reserve - commit > r->cap)
            return SB_RING_ECORRUPT;
        kind = sbr_peek(r->h, r->data, r->cap, r->read, reserve, r->h->max_payload, &rec, &why);
        if (kind == SBR_EMPTY) {
            rc = sbr_wait(r, SBR_WAKE_DATA, sbr_data_ready, NULL, timeout_ms);
            if (rc < 0)
                return rc;
            timeout_ms = timeout_ms > 0 ? 0 : timeout_ms; /* data came: do not wait again */
            continue;
        }
        if (kind == SBR_PAD) {
            r->read += rec->len;
            continue;
        }
        if (kind != SBR_READY)
            return SB_RING_ECORRUPT; /* an out ring has only ready records and pads */
        {
            const char *t = (const char *)rec + SB_RING_REC_SIZE;
            if (!sbr_topic_valid(t, rec->topic_len) ||
                !sbr_headers_valid(t + rec->topic_len, rec->headers_len))
                return SB_RING_ECORRUPT;
            m->topic = t;
            m->topic_len = rec->topic_len;
            m->headers = t + rec->topic_len;
            m->headers_len = rec->headers_len;
            m->payload = (const unsigned char *)m->headers + rec->headers_len;
            m->payload_len = rec->payload_len;
            m->msg_id = rec->msg_id;
            m->created_ms = rec->stamp;
            m->attempt = rec->attempt;
            m->redelivery = (rec->flags & SB_RING_F_REDELIVERY) != 0;
            m->seq = r->read;
            m->end_ = r->read + rec->len;
            r->read = m->end_;
            sbr_store64(&r->h->read, r->read);
            return SB_RING_OK;
        }
    }
}

/* Releases m and every delivery read before it: they are acknowledged to
 * the broker, which frees their room. Returns SB_RING_OK or EINVAL. */
static inline int sb_ring_release(sb_ring *r, const sb_ring_msg *m)
{
    if (r->role != SB_RING_CONSUMER || m->end_ == 0 || m->end_ > r->read)
        return SB_RING_EINVAL;
    if (m->end_ > sbr_load64(&r->h->commit)) {
        sbr_store64(&r->h->commit, m->end_);
        sbr_signal(r, SBR_WAKE_RELEASE);
    }
    return SB_RING_OK;
}

/* The value of header `key` of a delivery (NUL-terminated, in the ring), or
 * NULL. */
static inline const char *sb_ring_msg_header(const sb_ring_msg *m, const char *key)
{
    size_t i = 0;
    while (i < m->headers_len) {
        const char *k = m->headers + i;
        const char *v = k + strlen(k) + 1;
        if (strcmp(k, key) == 0)
            return v;
        i = (size_t)(v + strlen(v) + 1 - m->headers);
    }
    return NULL;
}

/* What a ring holds now (sbring info). */
typedef struct sb_ring_info {
    uint32_t direction, state, owner_pid, consumer_pid, max_payload, reclaim_ms;
    uint64_t capacity, reserve, read, commit, reclaimed, refused, lock_recoveries;
} sb_ring_info;

static inline void sb_ring_get_info(const sb_ring *r, sb_ring_info *i)
{
    const sb_ring_header *h = r->h;
    i->direction = h->direction;
    i->state = sbr_load32(&h->state);
    i->owner_pid = sbr_load32(&h->owner_pid);
    i->consumer_pid = sbr_load32(&h->consumer_pid);
    i->max_payload = h->max_payload;
    i->reclaim_ms = h->reclaim_ms;
    i->capacity = h->capacity;
    i->reserve = sbr_load64(&h->reserve);
    i->read = sbr_load64(&h->read);
    i->commit = sbr_load64(&h->commit);
    i->reclaimed = sbr_load64(&h->reclaimed);
    i->refused = sbr_load64(&h->refused);
    i->lock_recoveries = sbr_load64(&h->lock_recoveries);
}

#endif /* SB_RING_NO_OS */

#ifdef __cplusplus
}
#endif

#endif
