/*
 * How an adapter type declares its configuration.
 *
 * Each type owns its keys: a table of sb_config_key rows in its own folder
 * (adapters/<mechanism>/<mechanism>_keys.c), the struct the loader fills
 * from them (its "settings", reached as cfg->settings), and a validate hook
 * for what a table cannot say (one key needs another, addresses, names).
 * An sb_adapter_keys describes all of it; the program registers the ones it
 * knows (sb_adapter_keys_register; adapters/builtin.h registers the built-in
 * ones) before it loads a config.
 *
 * The loader walks each adapter entry through the common keys (name, type)
 * and then its type's table: it applies defaults, converts and range-checks
 * values, refuses unknown keys ("not allowed for type X" when another type
 * has the key), refuses keys the instance's role or protocol does not take,
 * then calls validate. Copy, free and equality of an adapter config (reload
 * keeps an adapter whose config is equal) are driven by the same table.
 *
 * Key tables are portable C: those of Windows-only types compile on every
 * platform, so `check-config` on Linux checks a Windows configuration.
 * This header is part of the config module (below the broker's core): it
 * knows nothing of adapter implementations.
 */
#ifndef SB_ADAPTER_KEYS_H
#define SB_ADAPTER_KEYS_H

#include "config/config.h"
#include "service/error.h"

#include <stddef.h>
#include <stdint.h>

#define SB_ADAPTER_KEYS_VERSION 1

/* ---- key tables ---- */

/* What a value is, and the C type the row's offset points at. */
typedef enum {
    SB_KEY_STRING,   /* char *, non-empty */
    SB_KEY_NAME,     /* char *, [A-Za-z0-9_.-]+ */
    SB_KEY_CHOICE,   /* char *, one of `choices` */
    SB_KEY_ENUM,     /* int (or an int-sized enum): the index into `choices` */
    SB_KEY_INT,      /* int, decimal, min..max */
    SB_KEY_INT64,    /* int64_t, decimal, min..max */
    SB_KEY_SIZE,     /* int64_t bytes: 4096, 64KiB, 1MB; min..max */
    SB_KEY_DURATION, /* int64_t milliseconds: 250ms, 10s, 5m; min..max */
    SB_KEY_BOOL,     /* int: true/false/yes/no/on/off (def may be -1: "not set") */
    SB_KEY_STRLIST,  /* char ** + size_t count (count_off): a list of non-empty strings */
    SB_KEY_NAMES,    /* char ** + size_t count: a name or a list of names */
    SB_KEY_FILTERS,  /* char ** + size_t count: a topic filter or a list of them */
    SB_KEY_SECTION,  /* a nested mapping (`section`) whose values live in the same struct */
    SB_KEY_LIST,     /* internal (the config's own lists of adapters and routes) */
    /* internal: `item` parses the value (index 0, array = the struct) and
     * records what it saw; the struct's owner releases, copies and
     * compares it (a route's `to` and `transform`) */
    SB_KEY_CUSTOM
} sb_config_kind;

enum {
    SB_KEY_REQUIRED = 1 << 0, /* must be present when its mapping is */
    /* The value lives in sb_adapter_config (offset = offsetof(sb_adapter_config,
     * member)), not in the type's settings: see SB_ADAPTER_KEY_INFLIGHT. */
    SB_KEY_ADAPTER = 1 << 1,
    /* Not named in "unknown key (known: ...)": a key added after golden
     * error files fixed that list (a route's `transform`) */
    SB_KEY_UNLISTED = 1 << 2,
    /* STRING: a list is taken too (`connect: [a, b, c]`): its first item is
     * the value, the others go to the string list at rest_off (its count at
     * count_off), as if that list's own key had been written. */
    SB_KEY_OR_LIST = 1 << 3
};

/* Roles an instance can have (sb_adapter_keys.role_of); a key restricted to
 * some (`roles`) is refused in the others. */
enum { SB_ROLE_SERVER = 1 << 0, SB_ROLE_CLIENT = 1 << 1 };

/* Protocols (sb_adapter_keys.protocol_of), for keys one protocol needs;
 * refused with "only for protocol X". */
enum { SB_PROTO_RAW = 1 << 0, SB_PROTO_JSONL = 1 << 1, SB_PROTO_MQTT = 1 << 2 };

typedef struct sb_config_table sb_config_table;

/* One key of a table (use designated initializers; unset members are 0). */
typedef struct sb_config_key {
    const char *key;
    sb_config_kind kind;
    unsigned flags;     /* SB_KEY_REQUIRED, SB_KEY_ADAPTER */
    unsigned roles;     /* SB_ROLE_*: the roles that take it; 0 = any */
    unsigned protocols; /* SB_PROTO_*: the protocols that take it; 0 = any */
    /* The error when a role that does not take it uses it; may hold one %s,
     * replaced by the type's server_key. NULL: "only for role server". */
    const char *why;
    size_t offset;    /* of the value in the settings struct */
    size_t count_off; /* STRLIST, NAMES, FILTERS (and OR_LIST's rest): of the size_t count */
    size_t rest_off;  /* SB_KEY_OR_LIST: of the char ** the other items go to */
    int64_t def;      /* numeric default (ENUM: the index; BOOL: 1, 0 or -1) */
    const char *def_str;               /* string default, or NULL */
    int64_t min, max;                  /* numbers: the range */
    const char *const *choices;        /* CHOICE, ENUM: NULL-terminated */
    /* SECTION; LIST: an element's keys (the JSON Schema's; NULL for the
     * adapters, whose keys are their type's) */
    const sb_config_table *section;
    /* LIST only (internal) */
    size_t elem_size;
    int (*item)(void *ctx, const void *node, void *array, size_t index, const char *path);
    void (*item_free)(void *elem);
} sb_config_key;

struct sb_config_table {
    const sb_config_key *keys;
    size_t count;
};

/* A table from a static array of rows. */
#define SB_CONFIG_TABLE(rows)                                                                      \
    {                                                                                              \
        (rows), sizeof(rows) / sizeof((rows)[0])                                                   \
    }

/* Durations in milliseconds, for defaults and ranges. */
#define SB_SECONDS 1000
#define SB_MINUTES (60 * SB_SECONDS)
#define SB_HOURS (60 * SB_MINUTES)
#define SB_DAYS ((int64_t)24 * SB_HOURS)

/* The row of `inflight` (sinks: deliveries outstanding at once, default 64,
 * 1..65536), kept in sb_adapter_config where the broker reads it. Every
 * type that can be a route destination puts it in its table. */
#define SB_ADAPTER_KEY_INFLIGHT                                                                    \
    {                                                                                              \
        .key = "inflight", .kind = SB_KEY_INT, .flags = SB_KEY_ADAPTER,                            \
        .offset = offsetof(sb_adapter_config, inflight), .def = 64, .min = 1, .max = 65536         \
    }

/* ---- checks ---- */

/* The loader's view of the adapter entry being checked (opaque). */
typedef struct sb_adapter_check sb_adapter_check;

/* Whether the key storing into `value` (the address of a member of the
 * settings, or of cfg->inflight) was in the file: SB_SEEN_NO, SB_SEEN_OK,
 * or SB_SEEN_BAD (it was, and its value was refused: do not check it
 * again). */
enum { SB_SEEN_NO = 0, SB_SEEN_OK = 1, SB_SEEN_BAD = 2 };
int sb_adapter_check_seen(const sb_adapter_check *chk, const void *value);

/* Errors, each "FILE:LINE:COL: adapters[N].KEY: message", kept in file order
 * with the others. They never fail (out of memory is recorded).
 *
 * _at_key / _at_value: at the key storing into `value` (or at its value);
 * the path is the key's ("adapters[2].tls.client_cert"). Nothing is reported
 * if that key was not in the file.
 * _at_element: at element `index` of a list value ("adapters[2].items[1]"),
 * or at the value itself if it was written as one string.
 * _at: at the value of `key` in the adapter's mapping if the file has it,
 * else at the adapter's mapping; the path is adapters[N].key (key NULL:
 * adapters[N]). For "X needs Y" and "required" errors. */
void sb_adapter_error_at_key(sb_adapter_check *chk, const void *value, const char *fmt, ...)
    SB_PRINTF(3, 4);
void sb_adapter_error_at_value(sb_adapter_check *chk, const void *value, const char *fmt, ...)
    SB_PRINTF(3, 4);
void sb_adapter_error_at_element(sb_adapter_check *chk, const void *value, size_t index,
                                 const char *fmt, ...) SB_PRINTF(4, 5);
void sb_adapter_error_at(sb_adapter_check *chk, const char *key, const char *fmt, ...)
    SB_PRINTF(3, 4);

/* The name of the key storing into value, as written ("reconnect_backoff"),
 * or NULL if it was not in the file. */
const char *sb_adapter_check_key(const sb_adapter_check *chk, const void *value);

/* s quoted for a message ("..."): at most about 60 bytes, control
 * characters replaced. Returns out (96 bytes are enough). */
const char *sb_config_quote(char *out, size_t n, const char *s);

/* The whole configuration as read so far (its broker section is complete;
 * adapters after this one are not). */
const sb_config *sb_adapter_check_config(const sb_adapter_check *chk);

/* Common checks, reported at the key storing into value (if it was set and
 * valid):
 * _sddl: an SDDL security descriptor (the syntax everywhere; on Windows
 * also the system's own conversion).
 * _topic: a publish topic template: only the NULL-terminated placeholders
 * ("{adapter}"), known_text lists them for the message; not starting with
 * '$'. Returns 0 if it is valid (or was not set), -1 after reporting why not.
 * _backoff: *lo must not exceed *hi (a backoff and its cap; both durations of
 * the settings), reported at whichever key was written. */
void sb_adapter_check_sddl(sb_adapter_check *chk, const void *value);
int sb_adapter_check_topic(sb_adapter_check *chk, const void *value,
                           const char *const *placeholders, const char *known_text);
void sb_adapter_check_backoff(sb_adapter_check *chk, const int64_t *lo, const char *lo_key,
                              const int64_t *hi, const char *hi_key);

/* Replaces *slot (a string of the settings, sb_free'd) by a copy of s: for
 * validate hooks that fill in a default that depends on other keys.
 * Returns 0 or SB_ENOMEM (recorded: the load then fails). */
int sb_adapter_check_set_string(sb_adapter_check *chk, char **slot, const char *s);

/* ---- a type's description ---- */

typedef struct sb_adapter_keys {
    int version;      /* SB_ADAPTER_KEYS_VERSION */
    const char *type; /* the config `type` */
    sb_config_table table;
    /* The struct the loader fills (cfg->settings). Members without a row
     * must be plain values (validate may derive them): copies take them
     * bitwise. */
    size_t settings_size;
    /* Optional: the role of an instance (one SB_ROLE_*, from the settings
     * as read), or 0 when it has none or cannot tell (then role-restricted
     * keys are not checked). Keys with `roles` need it. */
    unsigned (*role_of)(const sb_adapter_config *cfg);
    /* Optional: the instance's protocol (one SB_PROTO_*), or 0. Keys with
     * `protocols` need it. */
    unsigned (*protocol_of)(const sb_adapter_config *cfg);
    /* The key that makes an instance a server ("listen", "path"), for the
     * %s in role messages; may be NULL. */
    const char *server_key;
    /* Optional: checks what the table cannot say, after every key of the
     * entry was read (and role checks passed), reporting through
     * sb_adapter_error_*; may fill in defaults that depend on other keys. */
    void (*validate)(sb_adapter_check *chk, sb_adapter_config *cfg);
    /* Optional: can an instance so configured be a route destination? 1 if
     * so; else 0 with `why` (size n) the whole message, reported at the
     * route's `to`. NULL: every instance can. */
    int (*destination)(const sb_adapter_config *cfg, char *why, size_t n);
} sb_adapter_keys;

/* The settings of cfg, as the type's struct: SB_SETTINGS(sb_exec_settings, cfg). */
#define SB_SETTINGS(type, cfg) ((type *)(cfg)->settings)

/* How many types the key registry holds. */
#define SB_ADAPTER_KEYS_MAX 32

/* Registers a type's keys (the pointer is kept). Returns 0, or with err set:
 * SB_EVERSION, SB_EEXIST (a type of that name has keys already), SB_EFULL. */
int sb_adapter_keys_register(const sb_adapter_keys *keys, sb_error *err);

/* The keys of a type, or NULL. */
const sb_adapter_keys *sb_adapter_keys_find(const char *type);

/* ---- building a config in code ---- */

/* Initializes *out as an adapter `name` of `type` with every key at its
 * default (the broker builds its admin endpoint this way). Free with
 * sb_adapter_config_free. Returns 0, SB_ENOTFOUND (no keys registered for
 * type) or SB_ENOMEM. */
int sb_adapter_config_init(sb_adapter_config *out, const char *name, const char *type);

/* Sets `key` (a top-level key of the type's table, or "section.key") from
 * its text, as the file would write it ("16MiB", "30s", "jsonl"). No
 * validate hook runs. Returns 0, or SB_EINVAL with err saying why. */
int sb_adapter_config_set(sb_adapter_config *cfg, const char *key, const char *value,
                          sb_error *err);

/* sb_adapter_config_init, then sb_adapter_config_set for each pair of the
 * NULL-terminated list {key, value, key, value, ..., NULL} (a NULL value
 * leaves the default). On failure *out is freed and err says why. */
int sb_adapter_config_build(sb_adapter_config *out, const char *name, const char *type,
                            const char *const *pairs, sb_error *err);

#endif
