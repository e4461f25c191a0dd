/*
 * Topics and MQTT-style filters.
 *
 * A topic is UTF-8 text of '/'-separated levels, without wildcards or NUL.
 * A filter may use '+' (exactly one level) and '#' (the rest, last level only).
 * As in MQTT, a filter starting with a wildcard does not match topics starting
 * with '$' (the broker's own: $SYS/..., $dlq/...).
 */
#ifndef SB_TOPIC_H
#define SB_TOPIC_H

#include <stddef.h>

#define SB_TOPIC_MAX 65535

/* 0 if topic is a valid publish topic, else SB_EINVAL with *why set. */
int sb_topic_validate(const char *topic, size_t len, const char **why);

/* 0 if filter is a valid subscription filter, else SB_EINVAL with *why set. */
int sb_filter_validate(const char *filter, size_t len, const char **why);

/* 1 if topic matches filter, else 0. Both must be valid. */
int sb_topic_match(const char *filter, const char *topic);

/* One topic filter of a subscription, and the QoS a protocol granted on it
 * (MQTT: 0..2; SB_QOS_NONE for subscriptions of routes and of protocols
 * that grant none). A subscription's filters are an array of these. */
typedef struct sb_sub_filter {
    const char *filter;
    int qos;
} sb_sub_filter;

#define SB_QOS_NONE (-1)

/* 1 if topic matches any of the count filters, else 0. */
int sb_topic_match_any(const sb_sub_filter *filters, size_t count, const char *topic);

/* A copy of filters[0..count) in one allocation (the array, then the
 * strings), freed with sb_free. NULL when count is 0, or out of memory:
 * then it sets *oom to 1 (and otherwise leaves *oom as it is, so that one
 * flag can collect the failures of several copies). */
sb_sub_filter *sb_sub_filters_copy(const sb_sub_filter *filters, size_t count, int *oom);

/* filters[0..count) joined with '\n' ("" for none), as reports showed a
 * subscription's filters before they were a list; sb_free it. NULL if out
 * of memory. */
char *sb_sub_filters_join(const sb_sub_filter *filters, size_t count);

/* 1 if a and b hold the same filter strings in the same order (QoS not
 * compared), else 0. */
int sb_sub_filters_same(const sb_sub_filter *a, size_t a_count, const sb_sub_filter *b,
                        size_t b_count);

/* Checks that s[0..len) is well-formed UTF-8 (no overlongs, no surrogates). */
int sb_utf8_valid(const char *s, size_t len);

#endif
