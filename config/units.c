/*
 * Scalar conversions for the config: decimal integers, durations ("250ms",
 * "10s", "5m", "2h", "1d" or bare milliseconds), sizes ("4096", "64KiB",
 * "1MB") and booleans. All are strict: no spaces, signs only where a negative
 * value makes sense, no trailing garbage, overflow is an error.
 */
#include "config/config_int.h"
#include "service/error.h"

#include <ctype.h>
#include <stdint.h>
#include <string.h>

/* ASCII case-insensitive equality (strcasecmp is not in C11 or MSVC). */
static int same_nocase(const char *a, const char *b)
{
    for (; *a != '\0' && *b != '\0'; a++, b++)
        if (tolower((unsigned char)*a) != tolower((unsigned char)*b))
            return 0;
    return *a == *b;
}

/* Parses the leading digits of s into *out; *end points after them. */
static int parse_digits(const char *s, const char **end, int64_t *out)
{
    int64_t v = 0;
    const char *p = s;
    if (!isdigit((unsigned char)*p))
        return SB_NUM_SYNTAX;
    for (; isdigit((unsigned char)*p); p++) {
        int d = *p - '0';
        if (v > (INT64_MAX - d) / 10)
            return SB_NUM_RANGE;
        v = v * 10 + d;
    }
    *end = p;
    *out = v;
    return SB_NUM_OK;
}

int sb_config__parse_int64(const char *s, int64_t *out)
{
    const char *end;
    int64_t v;
    int neg = 0, rc;
    if (*s == '-') {
        neg = 1;
        s++;
    }
    rc = parse_digits(s, &end, &v);
    if (rc != SB_NUM_OK)
        return rc;
    if (*end != '\0')
        return SB_NUM_SYNTAX;
    *out = neg ? -v : v;
    return SB_NUM_OK;
}

struct unit {
    const char *name;
    int64_t factor;
};

/* Multiplies the number at the start of s by the factor of the unit that
 * follows it: one of `units`, or none (factor 1). */
static int parse_with_unit(const char *s, const struct unit *units, int case_fold, int64_t *out)
{
    const char *end;
    int64_t v;
    int rc = parse_digits(s, &end, &v);
    if (rc != SB_NUM_OK)
        return rc;
    if (*end == '\0') {
        *out = v;
        return SB_NUM_OK;
    }
    for (const struct unit *u = units; u->name != NULL; u++) {
        int same = case_fold ? same_nocase(end, u->name) : strcmp(end, u->name) == 0;
        if (!same)
            continue;
        if (v > INT64_MAX / u->factor)
            return SB_NUM_RANGE;
        *out = v * u->factor;
        return SB_NUM_OK;
    }
    return SB_NUM_SYNTAX;
}

static const struct unit duration_units[] = {{"ms", 1},           {"s", 1000},
                                             {"m", 60 * 1000},    {"h", 60 * 60 * 1000},
                                             {"d", 86400 * 1000}, {NULL, 0}};

static const struct unit size_units[] = {{"B", 1},
                                         {"KiB", (int64_t)1 << 10},
                                         {"MiB", (int64_t)1 << 20},
                                         {"GiB", (int64_t)1 << 30},
                                         {"TiB", (int64_t)1 << 40},
                                         {"KB", 1000},
                                         {"MB", 1000 * 1000},
                                         {"GB", 1000 * 1000 * 1000},
                                         {"TB", (int64_t)1000 * 1000 * 1000 * 1000},
                                         {NULL, 0}};

int sb_config__parse_duration(const char *s, int64_t *out_ms)
{
    return parse_with_unit(s, duration_units, 0, out_ms);
}

int sb_config__parse_size(const char *s, int64_t *out_bytes)
{
    /* "kB", "mib" and friends are common enough spellings to accept. */
    return parse_with_unit(s, size_units, 1, out_bytes);
}

int sb_config_parse_duration(const char *s, int64_t *out_ms)
{
    int64_t v;
    if (s == NULL || out_ms == NULL || sb_config__parse_duration(s, &v) != SB_NUM_OK)
        return SB_EINVAL;
    *out_ms = v;
    return 0;
}

int sb_config_parse_size(const char *s, int64_t *out_bytes)
{
    int64_t v;
    if (s == NULL || out_bytes == NULL || sb_config__parse_size(s, &v) != SB_NUM_OK)
        return SB_EINVAL;
    *out_bytes = v;
    return 0;
}

int sb_config__parse_bool(const char *s)
{
    static const char *const yes[] = {"true", "yes", "on"};
    static const char *const no[] = {"false", "no", "off"};
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        if (same_nocase(s, yes[i]))
            return 1;
        if (same_nocase(s, no[i]))
            return 0;
    }
    return -1;
}
