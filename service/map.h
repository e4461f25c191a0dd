/*
 * A string-keyed hash map (chained, power-of-two buckets) for the broker's
 * in-memory indexes: subscriptions by name, retained values by topic, dedup
 * keys. Keys are copied; values are the caller's.
 */
#ifndef SB_MAP_H
#define SB_MAP_H

#include <stddef.h>

typedef struct sb_map_node {
    struct sb_map_node *next;
    size_t hash;
    void *value;
    char key[]; /* NUL-terminated copy */
} sb_map_node;

typedef struct sb_map {
    sb_map_node **buckets;
    size_t bucket_count; /* 0 or a power of two */
    size_t count;
} sb_map;

/* An empty map needs no allocation: `sb_map m = {0};` */
void *sb_map_get(const sb_map *m, const char *key);

/* Sets key to value. If `old` is not NULL it receives the replaced value (or
 * NULL). Returns 0 or SB_ENOMEM. */
int sb_map_put(sb_map *m, const char *key, void *value, void **old);

/* Removes key; returns its value or NULL. */
void *sb_map_remove(sb_map *m, const char *key);

/* Calls fn for each entry; fn may not modify the map. */
void sb_map_each(const sb_map *m, void (*fn)(const char *key, void *value, void *ctx), void *ctx);

/* Frees the nodes (not the values). */
void sb_map_clear(sb_map *m);

#endif
