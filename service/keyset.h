/*
 * A set of strings in byte order (a crit-bit tree, after D. J. Bernstein's
 * and A. Langley's): add, remove and look up cost the key's length, and a
 * walk over the keys with a prefix costs what it finds, not the size of
 * the set. The broker's index of protocol keys (sb_broker_key_each), so
 * that a client's own keys are found without walking everyone's.
 */
#ifndef SB_KEYSET_H
#define SB_KEYSET_H

#include <stddef.h>

typedef struct sb_keyset {
    void *root; /* a leaf (a key's copy) or an inner node, tagged by its low bit */
    size_t count;
} sb_keyset;

/* An empty set needs no allocation: `sb_keyset s = {0};` */

/* Adds a copy of key; 0 (also when it is there already) or SB_ENOMEM. */
int sb_keyset_add(sb_keyset *s, const char *key);

/* Removes key; 1 if it was there, else 0. */
int sb_keyset_remove(sb_keyset *s, const char *key);

/* 1 if key is in s. */
int sb_keyset_has(const sb_keyset *s, const char *key);

/* Calls fn for each key starting with prefix, in byte order; fn may not
 * change s. */
void sb_keyset_each(const sb_keyset *s, const char *prefix, void (*fn)(const char *key, void *ctx),
                    void *ctx);

/* Removes every key. */
void sb_keyset_clear(sb_keyset *s);

#endif
