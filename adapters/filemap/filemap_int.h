/*
 * Internals of the file-mapping adapter (type filemap): a shared-memory ring
 * (adapters/filemap/sb_ring.h, docs/ring.md) that programs produce into (an
 * in ring, the adapter a source) or consume from (an out ring, a sink).
 *
 *   filemap.c      the adapter type: settings, start, stop;
 *   filemap_in.c   an in ring: the reader thread (records -> messages,
 *                  reclaiming records whose producer never finished,
 *                  quarantine) and the loop side (publishing in order, the
 *                  committed cursor advanced after each commit);
 *   filemap_out.c  an out ring: deliveries written into the ring on the
 *                  loop, released records acknowledged, the consumer's
 *                  coming and going; a thread that waits for the consumer;
 *   posix/filemap_os.c, win/filemap_os.c
 *                  the operating system's side (below): creating the shared
 *                  memory and its named objects with the adapter's
 *                  security, one broker per ring, waits and wake-ups.
 *
 * Threads: the ring's wake-ups are futexes (Linux) or named semaphores
 * (Windows), which the loop cannot poll, so each adapter runs one thread
 * that waits on them and hands work to the loop through an sb_inbox. The
 * loop owns everything else: it publishes, advances the committed cursor,
 * writes deliveries. Portable code includes sb_ring.h without its OS part
 * (SB_RING_NO_OS) and reaches the OS through sb_fm__os_*.
 */
#ifndef SB_FILEMAP_INT_H
#define SB_FILEMAP_INT_H

#define SB_RING_NO_OS
#include "adapters/filemap/sb_ring.h"

#include "service/adapter.h"
#include "service/broker.h"
#include "service/inbox.h"

#include <stdint.h>

/* How long the in thread sleeps at most when the ring is idle, between
 * looks at the header (a hostile writer is noticed within this time). */
#define SB_FM_IDLE_MS 1000
/* A record still being written this long is checked for a dead producer. */
#define SB_FM_DEAD_CHECK_MS 100
/* How often the out thread looks at whether the consumer still runs. */
#define SB_FM_CONSUMER_CHECK_MS 1000
/* Retry of a publish the broker could not take (full queue, store refusing). */
#define SB_FM_RETRY_MS 200

/* ---- the operating system's side ---- */

typedef struct sb_fm_os sb_fm_os;

/* What the adapter asks of its ring. */
typedef struct sb_fm_os_opts {
    const char *adapter; /* for messages */
    const char *name;    /* the object name, without namespace */
    uint32_t direction;  /* SB_RING_IN / SB_RING_OUT */
    uint64_t capacity;
    uint32_t max_payload;
    uint32_t reclaim_ms;
    int global;           /* Windows: Global\ (else Local\) */
    const char *security; /* Windows: SDDL, NULL: the default */
    unsigned mode;        /* POSIX: permission bits */
    const char *group;    /* POSIX: group name, NULL: the broker's */
} sb_fm_os_opts;

/* How sb_fm__os_open found the ring. */
enum {
    SB_FM_CREATED = 0, /* new */
    SB_FM_RESUMED,     /* a previous broker's, valid: reading goes on at its commit */
    SB_FM_REPLACED     /* one of another layout, or corrupt: replaced by a new one (note says) */
};

/* Creates the ring (shared memory, its named objects, with the adapter's
 * security) or re-opens the one a previous broker left, and claims it for
 * this broker: a second broker on the same name is refused (SB_EADDRINUSE),
 * and so is an object another account made (squatting: SB_EACCES). *how
 * says what was found; note (may be "") says more for the log (a previous
 * owner that died, what a replaced ring held). Returns 0 or an SB_E* code
 * with err set. */
int sb_fm__os_open(sb_fm_os **out, const sb_fm_os_opts *o, int *how, char *note, size_t note_n,
                   sb_error *err);

/* Whether an existing ring of map_size bytes (a previous broker's) can be
 * resumed with options o: 1, or 0 with *why saying why it must be
 * replaced (another layout, corrupt, quarantined). Portable (filemap.c). */
int sb_fm__examine(const sb_ring_header *h, uint64_t map_size, const sb_fm_os_opts *o,
                   const char **why);

/* The ring's header (its data follows it); valid until sb_fm__os_close. */
sb_ring_header *sb_fm__os_header(sb_fm_os *os);

/* The ring's full name for logs ("/dev/shm/NAME", "Local\NAME"). */
const char *sb_fm__os_display(const sb_fm_os *os);

/* Any thread: wakes whoever waits on wake word kind (SBR_WAKE_DATA 0,
 * SBR_WAKE_RELEASE 1) after the caller changed what they wait for. */
void sb_fm__os_signal(sb_fm_os *os, int kind);

/* Any thread: waits on wake word kind until ready(ctx) is non-zero
 * (returned) or timeout_ms passes (returns 0). */
int sb_fm__os_wait(sb_fm_os *os, int kind, int (*ready)(void *ctx), void *ctx, int timeout_ms);

/* Takes the consumer's claim of an out ring if no consumer holds it:
 * returns 1 (then the broker holds it until sb_fm__os_consumer_release, on
 * the same thread), or 0. */
int sb_fm__os_consumer_try(sb_fm_os *os);
void sb_fm__os_consumer_release(sb_fm_os *os);

/* 0 if process pid has certainly exited (see sb_ring.h: sbr_pid_alive). */
int sb_fm__os_pid_alive(uint32_t pid);

/* The clock of record stamps (monotonic ms, shared by every process). */
uint64_t sb_fm__os_now_ms(void);

/* Names the calling thread (at most 15 characters: top -H, debuggers,
 * tools/bench/ring-bench.sh). Best effort. */
void sb_fm__os_name_thread(const char *name);

/* This process's id as producers and consumers see it. */
uint32_t sb_fm__os_pid(void);

/* Lets go of the ring (on the thread that opened it): it stays, with its
 * records, for the next broker (Linux: /dev/shm; Windows: while a program
 * has it open). */
void sb_fm__os_close(sb_fm_os *os);

/* ---- the adapter ---- */

/* An in ring's record as the thread saw it (the loop copies it out of the
 * ring with these lengths and checks the copy: what a hostile writer
 * changes in between cannot make it read out of bounds). */
typedef struct fm_desc {
    uint64_t pos;      /* where it starts */
    uint32_t off, len; /* pos % capacity; its length */
    uint32_t ready;    /* 1: a record to publish; 0: nothing (a pad, a reclaimed record) */
    uint32_t topic_len, headers_len, payload_len;
} fm_desc;

/* An in ring's record on its way from the ring to the store. */
enum { FM_REC_NEW = 0, FM_REC_PUBLISHING, FM_REC_DONE, FM_REC_REFUSED };
typedef struct fm_rec {
    struct fm_adapter *a;
    uint64_t pos;       /* where it starts */
    uint64_t end;       /* where the next one starts */
    sb_message *msg;    /* NULL: nothing to publish (a pad, a reclaimed record) */
    int state;          /* FM_REC_* */
    char *bad;          /* why the thread refused it (a bad topic), or NULL */
    struct fm_rec *next;
} fm_rec;

/* An out ring's delivery waiting in the ring for its release. */
typedef struct fm_out {
    uint64_t end;
    sb_delivery *d;
    struct fm_out *next;
} fm_out;

typedef struct fm_adapter {
    sb_adapter base;
    int out; /* an out ring (a sink) */
    sb_fm_os *os;
    sb_ring_header *h;
    unsigned char *data;
    uint64_t cap;
    uint32_t max_payload;
    uint32_t reclaim_ms;
    const char *display;
    char *ring_name; /* the object's name */
    char *source;    /* publishes' source: "ADAPTER ring NAME" */

    sb_inbox *inbox;
    uv_thread_t thread;
    int thread_started;
    int sync_init;
    uv_mutex_t lock;
    uv_cond_t cond;
    sb_adapter_stopped_cb stopped_cb;

    uint32_t stop;        /* atomic: the thread is to quit */
    uint32_t quarantined; /* atomic: the ring was found corrupt */

    /* under lock */
    int quit;
    int taken;      /* in: records handed to the loop and not yet released */
    int max_taken;  /* in: read_ahead */
    int room_wait;  /* in: the thread waits for room */
    fm_desc *descs; /* in: records the thread found, for the loop (max_taken) */
    int ndescs;
    int descs_posted; /* in: the loop is told */
    int poke_posted; /* out: a look at the ring is posted to the loop */

    /* in: the thread's own */
    uint64_t read;          /* the next record to read */
    uint64_t read_off;      /* read % cap */
    uint64_t last_reserve;  /* reserve as last seen (it never goes back) */
    uint64_t pending_since; /* a record still being written: first seen (ms), 0: none */
    uint64_t pending_pos;
    uint64_t loop_commit;   /* commit as the loop last wrote it (atomic) */
    uint32_t commit_seq;    /* odd while the loop writes the two (a seqlock) */

    /* in: loop thread only */
    fm_desc *spare;           /* swapped with descs when the loop takes them */
    int spare_at, spare_n;    /* the ones in spare still to take (out of memory) */
    fm_rec *recs, *recs_tail; /* from the oldest not released */
    fm_rec *free_recs;        /* to reuse */
    int released;             /* records released since the thread was told */
    int advance_due;          /* publish callbacks came: advance at the end of the turn */
    fm_rec *unpublished;      /* the first still to publish (held), or NULL */
    uv_timer_t *retry;
    int holding; /* logged "holding" */
    uint64_t commit;
    uint64_t published, refused, reclaimed;

    /* out: loop thread only */
    fm_out *outs, *outs_tail;
    uint64_t out_reserve, out_commit;
    uint64_t run_start;  /* records before it were written by a previous broker */
    int consumer;        /* a consumer is attached */
    uint32_t consumer_pid;
    uint64_t consumer_checked; /* ms */
    int sink_waiting;          /* deliver refused one: tell the broker when it can take more */
    int data_dirty;            /* records were written: wake the consumer after this loop turn */
    uint64_t looked_commit; /* out: commit and consumer pid as the loop last */
    uint32_t looked_pid;    /*      looked at them (atomic): the thread waits for a change */

    /* both: loop thread only */
    uv_idle_t flush; /* wakes the other side once per loop turn */
    int flush_init;
    int flush_started;
    int release_dirty; /* in: commit advanced */
    int closed;        /* stop ran: the ring is no longer mapped */
    int handles;       /* uv handles still to close before the stop completes */
    int publishing; /* publish callbacks to come */
    int destroyed;
} fm_adapter;

/* ---- filemap_in.c ---- */

/* Starts reading an in ring (the thread); start() opened it. */
int sb_fm__in_start(fm_adapter *a, sb_error *err);
/* The loop side of a stop: records not yet published stay in the ring. */
void sb_fm__in_stop(fm_adapter *a);
/* Loop, once per turn: advances the committed cursor over what was
 * committed in the turn, and tells the thread how many records went. */
void sb_fm__in_flush(fm_adapter *a);

/* ---- filemap_out.c ---- */

int sb_fm__out_start(fm_adapter *a, sb_error *err);
int sb_fm__out_deliver(fm_adapter *a, sb_delivery *d);
void sb_fm__out_stop(fm_adapter *a);

/* ---- filemap.c ---- */

/* Marks the ring quarantined (clients get SB_RING_ECLOSED, the adapter stops
 * reading or writing it) and logs why, once. Any thread. */
void sb_fm__quarantine(fm_adapter *a, uint64_t pos, const char *why);

/* Loop: sends the wake-ups collected in this loop turn before the loop
 * waits again (an idle handle). */
void sb_fm__flush_later(fm_adapter *a);

/* Any thread: posts fn(arg) to the loop, retrying on out-of-memory. */
void sb_fm__post(fm_adapter *a, sb_inbox_fn fn, void *arg);

/* Loop: one of the handles stop closes is closed; the last completes the
 * stop. */
void sb_fm__handle_closed(fm_adapter *a);

/* Frees the adapter and what it still holds. */
void sb_fm__free(fm_adapter *a);

#endif
