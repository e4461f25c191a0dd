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

/* 1 if topic matches any of the '\n'-separated filters in `filters`. */
int sb_topic_match_any(const char *filters, const char *topic);

/* Checks that s[0..len) is well-formed UTF-8 (no overlongs, no surrogates). */
int sb_utf8_valid(const char *s, size_t len);

#endif
