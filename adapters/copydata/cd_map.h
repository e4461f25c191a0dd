/*
 * The WM_COPYDATA adapter's mapping between COPYDATASTRUCT.dwData and
 * broker topics, portable so that it is unit-tested everywhere.
 *
 * A legacy sender tells its messages apart by dwData (1 = new order,
 * 2 = cancel, ...). The adapter maps them with `data_map` (numbers to
 * topics) and, for numbers the map does not name, with the `topic`
 * template, whose {data} stands for the number in decimal, e.g.
 * legacy/{adapter}/{data}. With `strict`, a number the map does not name
 * is refused instead. {adapter} is a constant of the adapter (a '/', '+'
 * or '#' in it becomes '_', as in raw topic templates); {data} is a whole
 * level (the config checks it), so a broker topic maps back to its number:
 * a sending adapter finds the dwData of a delivery the same way.
 */
#ifndef SB_CD_MAP_H
#define SB_CD_MAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct sb_cd_entry {
    uint64_t data;
    char *topic;
} sb_cd_entry;

typedef struct sb_cd_map {
    sb_cd_entry *entries; /* sorted by data */
    size_t count;
    char **levels; /* the template's levels, {adapter} filled in; NULL at data_level */
    size_t nlevels;
    int data_level; /* index of {data}, -1 if the template has none */
    int strict;
} sb_cd_map;

/* Builds the map of template tmpl (NULL: "{adapter}/{data}") for the
 * adapter `adapter`, with count entries data[i] -> topics[i] (copied).
 * Returns 0, SB_EINVAL (why says which: {data} not a whole level or twice,
 * a number mapped twice, a topic that is not a valid topic) or SB_ENOMEM;
 * m can be freed either way. */
int sb_cd_map_init(sb_cd_map *m, const char *tmpl, const char *adapter, const uint64_t *data,
                   const char *const *topics, size_t count, int strict, const char **why);

void sb_cd_map_free(sb_cd_map *m);

/* The topic of dwData `data` in *out (sb_free it): the map's, else the
 * template's. Returns 0, SB_ENOTFOUND (strict, and the map does not name
 * it) or SB_ENOMEM. */
int sb_cd_map_topic(char **out, const sb_cd_map *m, uint64_t data);

/* The dwData of broker topic `topic`: the number the map gives it, else
 * the {data} level of a topic that fits the template. Returns 0 or
 * SB_ENOTFOUND. */
int sb_cd_map_data(uint64_t *out, const sb_cd_map *m, const char *topic);

/* Parses a dwData written as a decimal or 0x-prefixed hexadecimal number
 * (up to 2^64 - 1). Returns 0 or SB_EINVAL. */
int sb_cd_parse_data(uint64_t *out, const char *s);

#endif
