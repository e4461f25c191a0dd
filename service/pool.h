/*
 * Free lists of fixed-size objects for the loop thread's per-message
 * structs (queue entries, deliveries, pending publishes): what is returned
 * is handed out again without going back to malloc, which, with hundreds
 * of them made and freed in bursts every loop turn, spent more time than
 * the rest of the publish path's bookkeeping. Not an allocator: every
 * object comes from sb_malloc, at most `max` are kept, and the rest go back
 * with sb_free. One thread only (no locking).
 *
 * Failure injection (alloc.h) counts a get from the list as an allocation,
 * so out-of-memory tests fail the same calls with or without the list.
 * Under AddressSanitizer a kept object is poisoned: a use after put is
 * reported as a use after free would be.
 */
#ifndef SB_POOL_H
#define SB_POOL_H

#include <stddef.h>

typedef struct sb_pool {
    void *free;  /* kept objects, chained through their first bytes */
    size_t size; /* of each object */
    size_t count, max;
} sb_pool;

/* Prepares an empty pool of objects of `size` bytes (>= sizeof(void *)),
 * keeping at most max of those returned. */
void sb_pool_init(sb_pool *p, size_t size, size_t max);

/* Returns an object of p's size, not zeroed, or NULL on out-of-memory. */
void *sb_pool_get(sb_pool *p);

/* Gives obj (from sb_pool_get, or sb_malloc'ed with p's size) back; NULL
 * does nothing. */
void sb_pool_put(sb_pool *p, void *obj);

/* Frees the kept objects (those handed out are not the pool's). */
void sb_pool_drain(sb_pool *p);

#endif
