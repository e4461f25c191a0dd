/*
 * Testing hooks of the SQLite store. Not for the broker: only unit tests and
 * the benchmark include this header.
 */
#ifndef SB_STORE_TEST_H
#define SB_STORE_TEST_H

#include "storage/store.h"

/* Makes the store thread call sb_alloc_fail_after(n) before it executes its
 * next group, so allocation failures can be injected on that thread
 * (injection is thread-local). */
void sb_store_test_alloc_fail_after(sb_store *s, long n);

#endif
