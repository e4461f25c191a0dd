/*
 * Allocation wrappers. All broker allocations go through these so tests can
 * inject failures (sb_alloc_fail_after) and check that out-of-memory is an
 * error path, never a crash.
 */
#ifndef SB_ALLOC_H
#define SB_ALLOC_H

#include <stddef.h>

void *sb_malloc(size_t n);
void *sb_calloc(size_t count, size_t size);
void *sb_realloc(void *p, size_t n);
void sb_free(void *p);

/* Returns a copy of s (NULL if s is NULL or on out-of-memory). */
char *sb_strdup(const char *s);

/* Returns a NUL-terminated copy of the first n bytes of s. */
char *sb_strndup(const char *s, size_t n);

/* Testing: make the allocation after `n` more successful ones fail
 * (n < 0 disables injection, the default). Thread-local to the caller. */
void sb_alloc_fail_after(long n);

/* Testing: make only the allocation after `n` more successful ones fail;
 * those after it succeed again (SQLite's one-shot fault, so a test can fail
 * each allocation of an operation in turn). n < 0 disables injection.
 * Thread-local to the caller. */
void sb_alloc_fail_once(long n);

/* Testing: allocations failed by injection on this thread since the last
 * sb_alloc_fail_after or sb_alloc_fail_once (0: the operation made fewer
 * allocations than asked to skip, so a failure loop is complete). */
long sb_alloc_failures(void);

/* For allocators layered on these (service/pool.h) that hand out memory
 * without calling them: counts as one allocation for failure injection and
 * returns 1 if that allocation is to fail. */
int sb_alloc__inject(void);

#endif
