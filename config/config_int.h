/*
 * Internals of the config module: the schema description and the walker that
 * checks a libyaml document against it.
 *
 * A section is a table of fields {key, type, flags, default, min, max}; the
 * walker (walk.c) applies defaults, converts and range-checks every value,
 * rejects unknown keys, duplicate keys and wrong node kinds, and records
 * where each key was seen so the per-item validators (schema.c) can point
 * their cross-field errors at the right line. Nothing here is public.
 */
#ifndef SB_CONFIG_INT_H
#define SB_CONFIG_INT_H

#include "config/config.h"
#include "service/error.h"
#include "service/map.h"

#include <stdarg.h>
#include <yaml.h>

/* Errors kept per parse; one more says that the rest were dropped. */
#define SB_CONFIG__MAX_ERRORS 200
/* Values the walker visits at most (aliases can repeat a subtree). */
#define SB_CONFIG__MAX_NODES 1000000
/* Longest key path kept in errors ("routes[3].retry.max_backoff"). */
#define SB_CONFIG__PATH_MAX 256
/* Keys recorded per item for the validators. */
#define SB_CONFIG__MAX_SEEN 64

typedef enum {
    SB_CT_STRING,   /* char *, non-empty */
    SB_CT_NAME,     /* char *, [A-Za-z0-9_.-]+ */
    SB_CT_CHOICE,   /* char *, one of `choices` */
    SB_CT_ENUM,     /* int (or an enum), index into `choices` */
    SB_CT_INT,      /* int, decimal, min..max */
    SB_CT_INT64,    /* int64_t, decimal, min..max */
    SB_CT_SIZE,     /* int64_t bytes: 4096, 64KiB, 1MB */
    SB_CT_DURATION, /* int64_t milliseconds: 250ms, 10s, 5m */
    SB_CT_BOOL,     /* int: true/false/yes/no/on/off */
    SB_CT_STRLIST,  /* char ** + size_t count: a list of non-empty strings */
    SB_CT_NAMES,    /* char ** + size_t count: a name or a list of names */
    SB_CT_FILTERS,  /* char ** + size_t count: a topic filter or a list of them */
    SB_CT_SECTION,  /* a nested mapping whose fields live in the same struct */
    SB_CT_LIST      /* a list of mappings, each parsed by `item` */
} sb_config__type;

enum {
    SB_CF_REQUIRED = 1 << 0 /* must be present when its mapping is */
};

typedef struct sb_config__ctx sb_config__ctx;
typedef struct sb_config__section sb_config__section;

/* Parses element `index` of a SB_CT_LIST into `array` (already holding
 * index elements). Returns 0 or SB_ENOMEM; problems go to ctx as errors. */
typedef int (*sb_config__item_fn)(sb_config__ctx *ctx, const yaml_node_t *node, void *array,
                                  size_t index, const char *path);
typedef void (*sb_config__item_free_fn)(void *elem);

typedef struct sb_config__field {
    const char *key;
    sb_config__type type;
    unsigned flags;   /* SB_CF_* */
    unsigned types;   /* adapter-type bits that may use the key; 0 = any */
    size_t offset;    /* of the value in the struct the section fills */
    size_t count_off; /* lists: of the size_t count */
    int64_t def;      /* numeric default */
    const char *def_str;
    int64_t min, max;
    const char *const *choices;        /* CHOICE/ENUM: NULL-terminated */
    const sb_config__section *section; /* SECTION */
    size_t elem_size;                  /* LIST */
    sb_config__item_fn item;           /* LIST */
    sb_config__item_free_fn item_free; /* LIST */
} sb_config__field;

struct sb_config__section {
    const sb_config__field *fields;
    size_t count;
};

/* Where a key of the current item was seen; `ok` is 0 if its value was bad. */
typedef struct sb_config__seen {
    const void *target;
    const yaml_node_t *key;
    const yaml_node_t *value;
    int ok;
} sb_config__seen;

struct sb_config__ctx {
    const char *file;
    const char *text; /* the input, to place reader errors */
    size_t len;
    yaml_document_t *doc;
    sb_config_errors *errs; /* may be NULL: only counted */
    size_t error_count;
    int nomem;
    size_t nodes_left;
    sb_config *cfg;
    int adapters_ok;      /* the adapters list parsed as a list (routes may check `to`) */
    int adapter_unnamed;  /* an adapter's name was rejected */
    sb_map adapter_names; /* name -> first sb_adapter_config with it */
    sb_map route_names;   /* name -> first sb_route_config with it */
    /* The item being parsed: which adapter types may use which keys. */
    unsigned mask;
    const char *type_name;
    sb_config__seen seen[SB_CONFIG__MAX_SEEN];
    size_t seen_count;
};

/* ---- walk.c ---- */

/* Records an error at node (NULL: no position). Never fails; on
 * out-of-memory it sets ctx->nomem. */
void sb_config__error(sb_config__ctx *ctx, const yaml_node_t *node, const char *path,
                      const char *fmt, ...) SB_PRINTF(4, 5);
void sb_config__error_at(sb_config__ctx *ctx, int line, int col, const char *path, const char *fmt,
                         ...) SB_PRINTF(5, 6);
void sb_config__verror_at(sb_config__ctx *ctx, int line, int col, const char *path, const char *fmt,
                          va_list ap);

/* Sets every field of section in base to its default. 0 or SB_ENOMEM. */
int sb_config__defaults(sb_config__ctx *ctx, const sb_config__section *section, void *base);

/* Checks mapping `node` against section and stores the values into base.
 * Keys are handled in schema order (so a section's earlier keys are known
 * when later ones are parsed), then unknown keys are reported. */
int sb_config__mapping(sb_config__ctx *ctx, const yaml_node_t *node,
                       const sb_config__section *section, void *base, const char *path);

/* Frees what a section's fields own in base (strings, lists). */
void sb_config__release(const sb_config__section *section, void *base);

/* Deep-copies every field of section from src into dst, whose owned fields
 * must be NULL. Returns 0 or SB_ENOMEM; dst can be released either way. */
int sb_config__copy(const sb_config__section *section, void *dst, const void *src);

/* 1 if every field of section is equal in a and b. */
int sb_config__equal(const sb_config__section *section, const void *a, const void *b);

/* Forgets the keys recorded for the previous item. */
void sb_config__seen_reset(sb_config__ctx *ctx);

/* Where the key storing into target was seen, or NULL. */
const sb_config__seen *sb_config__seen_find(const sb_config__ctx *ctx, const void *target);

/* ---- sddl.c ---- */

/* Reports an error at the place in `node` (a scalar holding sddl) where the
 * security descriptor is malformed: the syntax check, and on Windows the
 * system's own conversion (sb_platform_sddl_check), which decides there. */
void sb_config__check_sddl(sb_config__ctx *ctx, const yaml_node_t *node, const char *path,
                           const char *sddl);

/* The value of `key` in mapping node (first occurrence), or NULL. */
const yaml_node_t *sb_config__lookup(const sb_config__ctx *ctx, const yaml_node_t *map,
                                     const char *key);

/* 1 for a plain empty, ~ or null scalar: "not set". */
int sb_config__is_null(const yaml_node_t *node);

/* "a mapping", "a list", "a string" for messages. */
const char *sb_config__kind(const yaml_node_t *node);

/* Copies s into out (size n) for messages: at most ~60 bytes, control
 * characters replaced, quoted. */
const char *sb_config__quote(char *out, size_t n, const char *s);

/* Formats a duration in the largest exact unit ("90s", "1m", "250ms"). */
const char *sb_config__fmt_duration(char *out, size_t n, int64_t ms);

/* out (SB_CONFIG__PATH_MAX bytes) = path + sep + part, cut if too long. */
void sb_config__path(char *out, const char *path, const char *sep, const char *part);

/* 1 if s is a valid name ([A-Za-z0-9_.-]+). */
int sb_config__valid_name(const char *s);

/* ---- units.c ---- */

enum { SB_NUM_OK = 0, SB_NUM_SYNTAX = 1, SB_NUM_RANGE = 2 };

/* Decimal integer with optional '-', no spaces or other garbage. */
int sb_config__parse_int64(const char *s, int64_t *out);
/* Same with a unit suffix (duration or size); SB_NUM_* result. */
int sb_config__parse_duration(const char *s, int64_t *out_ms);
int sb_config__parse_size(const char *s, int64_t *out_bytes);
/* true/false/yes/no/on/off, any case; -1 if not a boolean. */
int sb_config__parse_bool(const char *s);

/* ---- schema.c ---- */

/* The top-level section (broker, adapters, routes) filling an sb_config. */
extern const sb_config__section sb_config__root;

#endif
