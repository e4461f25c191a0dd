/*
 * The subscription index: MQTT-style filters in a tree by topic level, so a
 * publish visits only the branches its topic can match ('+' and '#' nodes
 * beside the literal children, as MQTT brokers keep theirs), and its cost
 * does not grow with the number of filters that do not match it.
 *
 * The index maps filters to opaque values (the broker's queues). One value
 * may be added under several filters, and the same filter several times;
 * sb_subindex_match reports a value once per (filter, value) pair that
 * matches, in no particular order: callers that need each value once, or an
 * order, deduplicate and sort. Matching follows sb_topic_match exactly,
 * including that a filter whose first level is a wildcard does not match
 * topics starting with '$', that "a/#" also matches "a", and that a '#'
 * level ends the filter whatever follows it.
 *
 * Matching never allocates and uses no recursion (a walk with parent
 * pointers), so a topic of any depth is safe on the loop's stack.
 */
#ifndef SB_SUBINDEX_H
#define SB_SUBINDEX_H

#include <stddef.h>

#include "service/topic.h"

typedef struct sb_subnode sb_subnode;

/* An empty index needs no allocation: `sb_subindex ix = {0};` */
typedef struct sb_subindex {
    sb_subnode *root;
    size_t count; /* (filter, value) pairs */
} sb_subindex;

typedef void (*sb_subindex_fn)(void *value, void *ctx);

/* Adds value under the filter filter[0..len). An empty filter matches no
 * valid topic and is not stored. Returns 0 or SB_ENOMEM (nothing added). */
int sb_subindex_add(sb_subindex *ix, const char *filter, size_t len, void *value);

/* Removes one (filter, value) pair; SB_ENOTFOUND if there is none. Never
 * allocates. */
int sb_subindex_remove(sb_subindex *ix, const char *filter, size_t len, void *value);

/* The same for each of filters[0..count) (a subscription's filters).
 * add_all adds all or, on SB_ENOMEM, none. */
int sb_subindex_add_all(sb_subindex *ix, const sb_sub_filter *filters, size_t count, void *value);
void sb_subindex_remove_all(sb_subindex *ix, const sb_sub_filter *filters, size_t count,
                            void *value);

/* Calls fn(value, ctx) for each (filter, value) pair whose filter matches
 * topic (a valid topic: no wildcards). fn must not change the index. */
void sb_subindex_match(const sb_subindex *ix, const char *topic, sb_subindex_fn fn, void *ctx);

/* The reverse, for an index of topics (added without wildcards, as the
 * broker keeps retained values): calls fn(value, ctx) for each (topic,
 * value) pair that the filter filter[0..len) (a valid one) matches, as
 * sb_topic_match would. No allocation, no recursion. fn must not change
 * the index. */
void sb_subindex_match_filter(const sb_subindex *ix, const char *filter, size_t len,
                              sb_subindex_fn fn, void *ctx);

/* 1 if some filter may match a topic made of `prefix` (a topic) and at least
 * one more level, else 0. Cheap: for a caller that would publish to many
 * topics under prefix only when someone can receive them. */
int sb_subindex_reaches(const sb_subindex *ix, const char *prefix);

/* Frees every node (not the values). */
void sb_subindex_clear(sb_subindex *ix);

#endif
