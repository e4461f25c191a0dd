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

#include "config/adapter_keys.h"
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

typedef struct sb_config__ctx sb_config__ctx;

/* Where a key of the current item was seen; `ok` is 0 if its value was bad. */
typedef struct sb_config__seen {
    const void *target;
    const yaml_node_t *key;
    const yaml_node_t *value;
    int ok;
    const sb_config_key *field;
    const char *section; /* the enclosing section's key ("tls"), or NULL */
    size_t first;        /* a list value: the index of the target's first item in it */
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
    /* The adapter being parsed: its common struct (rows with SB_KEY_ADAPTER
     * store there), its table (whose unknown keys may be other types'), and
     * its type's name for "not allowed for type X". */
    void *adapter;
    const sb_config_table *adapter_table;
    const char *type_name;
    const char *section; /* key of the section being walked, or NULL */
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
int sb_config__defaults(sb_config__ctx *ctx, const sb_config_table *section, void *base);

/* Checks mapping `node` against section and stores the values into base.
 * Keys are handled in schema order (so a section's earlier keys are known
 * when later ones are parsed), then unknown keys are reported. */
int sb_config__mapping(sb_config__ctx *ctx, const yaml_node_t *node,
                       const sb_config_table *section, void *base, const char *path);

/* Frees what a section's fields own in base (strings, lists). */
void sb_config__release(const sb_config_table *section, void *base);

/* Deep-copies every field of section from src into dst, whose owned fields
 * must be NULL. Returns 0 or SB_ENOMEM; dst can be released either way. */
int sb_config__copy(const sb_config_table *section, void *dst, const void *src);

/* Sets what a section's fields own in base to NULL (and counts to 0)
 * without freeing: base is a bitwise copy whose owners are elsewhere. */
void sb_config__forget(const sb_config_table *section, void *base);

/* 1 if every field of section is equal in a and b. */
int sb_config__equal(const sb_config_table *section, const void *a, const void *b);

/* Forgets the keys recorded for the previous item. */
void sb_config__seen_reset(sb_config__ctx *ctx);

/* Counts one more value visited; 0 (reported once) when the document has
 * too many (aliases included). */
int sb_config__spend(sb_config__ctx *ctx, const yaml_node_t *node);

/* Records that the key (f) storing into target was seen, value ok or not
 * (SB_KEY_CUSTOM parsers call it). */
void sb_config__record_seen(sb_config__ctx *ctx, const sb_config_key *f, const void *target,
                            const yaml_node_t *key, const yaml_node_t *value, int ok);

/* Where the key storing into target was seen, or NULL. */
const sb_config__seen *sb_config__seen_find(const sb_config__ctx *ctx, const void *target);

/* ---- transforms.c ---- */

/* SB_KEY_CUSTOM parsers of a route's `to` (names, or {adapter, transform}
 * entries) and `transform` (steps kept as an sb_tnode). */
int sb_config__parse_to(void *ctx, const void *node, void *route, size_t index, const char *path);
int sb_config__parse_transform(void *ctx, const void *node, void *route, size_t index,
                               const char *path);

/* Compiles route r's transforms (its own and each destination's), each
 * error at its line and column under path ("routes[1]"). */
void sb_config__check_transforms(sb_config__ctx *ctx, const sb_route_config *r, const char *path);

/* Release, copy and equality of what the two parsers fill. */
void sb_config__route_dests_release(sb_route_config *r);
int sb_config__route_dests_copy(sb_route_config *out, const sb_route_config *in);
int sb_config__route_dests_equal(const sb_route_config *a, const sb_route_config *b);

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
extern const sb_config_table sb_config__root;

/* Reports a name already used in `names` (with the line of its first use),
 * else records it. item starts with its sb_config_pos. */
void sb_config__check_unique(sb_config__ctx *ctx, sb_map *names, const char *what,
                             const char *name, void *item, char **name_slot,
                             const yaml_node_t *node, const char *path);

/* Where node starts (1-based). */
sb_config_pos sb_config__node_pos(const yaml_node_t *node);

/* ---- http.c ---- */

/* Checks broker.http.listen (its form, and loopback unless anonymous). */
void sb_config__check_http(sb_config__ctx *ctx, const yaml_node_t *root);

/* ---- walk.c, for sb_adapter_config_set ---- */

/* Converts and stores one value by row f (as the walker does for a key). */
int sb_config__value(sb_config__ctx *ctx, const sb_config_key *f, const yaml_node_t *value,
                     void *base, const char *path);

/* ---- adapters.c ---- */

/* The adapter entry being checked (the validate hooks' view). */
struct sb_adapter_check {
    sb_config__ctx *ctx;
    const yaml_node_t *node; /* its mapping */
    const char *path;        /* "adapters[2]" */
    sb_adapter_config *cfg;
};

/* Parses adapters[index] (a SB_KEY_LIST item function: ctx is an
 * sb_config__ctx, node a yaml_node_t), and frees one. */
int sb_config__parse_adapter(void *ctx, const void *node, void *array, size_t index,
                             const char *path);
void sb_config__free_adapter(void *elem);

/* 1 if a registered type other than `type` has a top-level key `key`. */
int sb_config__other_type_key(const char *type, const yaml_node_t *key);

/* Reports, for each key of the current item, a role or protocol that does
 * not take it (the rows' roles/protocols), marking it not ok. */
void sb_config__check_roles(sb_adapter_check *chk, const sb_adapter_keys *keys);

/* The registered types' names, NULL-terminated, in registration order. */
const char *const *sb_config__type_names(void);

/* The keys every adapter has before its type's (name, type). */
extern const sb_config_table sb_config__adapter_common;

#endif
