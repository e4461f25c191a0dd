/*
 * The DDE adapter's mapping between DDE names and broker topics, portable
 * so that it is unit-tested everywhere.
 *
 * The adapter's `topic` template names the broker topic of a DDE (topic,
 * item) pair, e.g. plant/{dde_topic}/{item}: Excel's =SWITCHBOARD|Line1!Temp
 * is plant/Line1/Temp. {adapter} and {service} are constants of the adapter
 * (a '/', '+' or '#' in them becomes '_', as in raw topic templates);
 * {dde_topic} and {item} are whole levels (the config checks it), so a
 * broker topic maps back to its pair and the adapter subscribes to its
 * values with one filter per DDE topic (plant/Line1/+).
 */
#ifndef SB_DDE_MAP_H
#define SB_DDE_MAP_H

#include <stddef.h>

typedef struct sb_dde_map {
    char **levels; /* the template's levels, constants filled in */
    size_t count;
    int topic_level; /* index of {dde_topic}, -1 if the template has none */
    int item_level;  /* index of {item} */
} sb_dde_map;

/* Parses tmpl for an adapter named `adapter` with DDE service `service`.
 * Returns 0, SB_EINVAL (no {item}, or {dde_topic}/{item} not a whole level
 * or twice) or SB_ENOMEM; m can be freed either way. */
int sb_dde_map_init(sb_dde_map *m, const char *tmpl, const char *adapter, const char *service);

void sb_dde_map_free(sb_dde_map *m);

/* The broker topic of (dde_topic, item) in *out (sb_free it). dde_topic
 * may be NULL when the template has no {dde_topic}. Returns 0, SB_EINVAL
 * if a name cannot be a topic level (sb_dde_name_problem), or SB_ENOMEM. */
int sb_dde_map_topic(char **out, const sb_dde_map *m, const char *dde_topic, const char *item);

/* The DDE topic and item of broker topic `topic` (new strings; *dde_topic
 * is NULL when the template has no {dde_topic}). Returns 0, SB_ENOTFOUND
 * if topic does not fit the template, or SB_ENOMEM. */
int sb_dde_map_match(const sb_dde_map *m, const char *topic, char **dde_topic, char **item);

/* The filter matching every item of dde_topic (NULL: of every DDE topic),
 * e.g. plant/Line1/+; NULL on out-of-memory or an unusable name. */
char *sb_dde_map_filter(const sb_dde_map *m, const char *dde_topic);

/* Why a DDE service, topic or item name cannot be a topic level, or NULL:
 * empty, longer than 255 bytes, or with '/', '+' or '#'. */
const char *sb_dde_name_problem(const char *name);

#endif
