/*
 * Configuration: YAML (libyaml) -> typed, validated structs.
 *
 * Parsing is table-driven: every section has a schema of {key, type,
 * required, default, min, max}, checked in one place. Unknown keys are errors.
 * Every error names file:line:column and the key path, e.g.
 *   switchboard.yaml:12:5: adapters[2].max_message: must be between 1 and 67108864
 * and all errors are collected before returning.
 */
#ifndef SB_CONFIG_H
#define SB_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum { SB_DURABILITY_FSYNC = 0, SB_DURABILITY_BATCHED, SB_DURABILITY_MEMORY } sb_durability;
typedef enum { SB_OVERFLOW_REJECT = 0, SB_OVERFLOW_DROP_OLDEST } sb_overflow;
/* Where desktop adapters (types with SB_CAP_DESKTOP: DDE, WM_COPYDATA, the
 * clipboard) run: auto = in the broker under `run`, in session agents under
 * the Windows service (see docs/agent.md). */
typedef enum { SB_DESKTOP_AUTO = 0, SB_DESKTOP_IN_PROCESS, SB_DESKTOP_AGENT } sb_desktop_host;

/* Where a YAML node was declared (1-based). */
typedef struct sb_config_pos {
    int line;
    int col;
} sb_config_pos;

typedef struct sb_broker_config {
    char *data_dir;           /* default "./data" */
    int commit_max_batch;     /* store.commit_max_batch, default 1024, 1..65536 */
    int commit_max_delay_us;  /* store.commit_max_delay_us, default 0, 0..1000000 */
    int64_t max_db_bytes;     /* store.max_db_bytes, default 0 (unlimited) */
    int queue_window;         /* store.queue_window: a queue's entries kept in memory,
                                 default 4096; the rest are read from the store */
    int64_t queue_memory;     /* store.queue_memory: all windows' bytes, default 64 MiB */
    int deliver_before_commit; /* store.deliver_before_commit: consumers may get a message
                                  while its group commits, default 1 (publish.c) */
    int log_level;            /* log.level: sb_log_level, default info */
    char *log_file;           /* log.file, default NULL */
    int log_stderr;           /* log.stderr, default 1 */
    char *admin_endpoint;     /* admin.endpoint, default "default" (data_dir/admin.sock
                                 on POSIX, \\.\pipe\switchboard-admin on Windows);
                                 "off" disables it */
    char *admin_security;     /* admin.security: SDDL of the admin pipe (Windows); NULL =
                                 SYSTEM, Administrators and the broker's own account */
    char *auth_password_file; /* auth.password_file: users (sbctl passwd), default none */
    char *auth_acl_file;      /* auth.acl_file: per-user topic rules, default none (all allowed) */
    int64_t sys_interval_ms;  /* sys_interval: how often $SYS/... values are published,
                                 default 10 s, 0 = never */
    sb_desktop_host desktop;  /* desktop: auto (default) | in-process | agent */
    /* agent.endpoint: the session agents' endpoint, "{session}" standing for
     * the session id; default NULL: switchboard-agent-{session} (a named
     * pipe) on Windows, data_dir/agent-{session}.sock on POSIX */
    char *agent_endpoint;
    int agent_start;    /* agent.start: start the agents, default true */
    char **agent_types; /* agent.types: other adapter types the agents host, default none */
    size_t agent_types_count;
    int64_t agent_restart_backoff_ms;     /* agent.restart_backoff, default 1s */
    int64_t agent_restart_max_backoff_ms; /* agent.restart_max_backoff, default 1m */
    /* http: the read-only HTTP listener (/metrics, the status page;
     * service/http.h); none without the section */
    char *http_listen;          /* http.listen: "host:port" (required in the section) */
    int http_anonymous;         /* http.anonymous: may listen on other than loopback, default 0 */
    int http_per_queue;         /* http.per_queue_metrics: series per queue too, default 0 */
    int http_max_connections;   /* http.max_connections, default 32, 1..1024 */
    int64_t http_timeout_ms;    /* http.timeout: a connection's idle limit, default 10s */
} sb_broker_config;

struct sb_adapter_keys;

/* One adapter entry. What every type has is here; the rest of its keys fill
 * its type's own settings struct (config/adapter_keys.h), declared in the
 * type's folder: SB_SETTINGS(sb_exec_settings, cfg). */
typedef struct sb_adapter_config {
    sb_config_pos pos;
    char *name; /* required, unique, [A-Za-z0-9_.-]+ */
    char *type; /* required: a registered type (sb_adapter_keys_register) */
    /* sinks (SB_ADAPTER_KEY_INFLIGHT): deliveries outstanding at once,
     * default 64; 0 when the type has no such key */
    int inflight;
    const struct sb_adapter_keys *keys; /* the type's keys; NULL: unknown type */
    void *settings;                     /* the type's struct, keys->settings_size bytes */
} sb_adapter_config;

typedef struct sb_route_config {
    sb_config_pos pos;
    char *name;  /* required, unique */
    char **from; /* topic filters (string or list), >= 1 */
    size_t from_count;
    char **to; /* destination adapter names (string or list), may be 0:
                  then the route is a queue that clients subscribe to */
    size_t to_count;
    /* transform: steps applied to what every destination gets (a list or
     * one step, service/transform.h), or NULL; to_transform[i]: the steps
     * of to[i] written as {adapter: X, transform: ...}, run after those
     * (to_count entries, each may be NULL; the array NULL when none has) */
    struct sb_tnode *transform;
    struct sb_tnode **to_transform;
    /* republish: one more destination, the broker itself: what the
     * transform made is published again under its new topic, for the
     * subscribers of that topic (MQTT clients); default 0 */
    int republish;
    sb_durability durability; /* fsync (default) | batched | memory */
    int max_attempts;         /* retry.max_attempts, default 10, 1..1000000 */
    int64_t backoff_ms;       /* retry.backoff, default 100ms */
    int64_t max_backoff_ms;   /* retry.max_backoff, default 1m */
    int64_t ttl_ms;           /* default 0 = no expiry */
    int64_t max_depth;        /* default 0 = unlimited */
    int64_t max_bytes;        /* default 0 = unlimited */
    sb_overflow overflow;     /* reject (default) | drop-oldest */
    int retain;               /* keep the last value of each matched topic, default 0 */
    char *dedup_header;       /* dedup.header: header key; NULL = no dedup */
    int64_t dedup_window_ms;  /* dedup.window, default 10m when header set */
    int64_t lease_ms;         /* ack timeout before redelivery, default 30s */
} sb_route_config;

typedef struct sb_config {
    char *path; /* the file it was read from */
    char *text; /* the YAML it was parsed from (NUL-terminated) */
    size_t text_len;
    sb_broker_config broker;
    sb_adapter_config *adapters;
    size_t adapter_count;
    sb_route_config *routes;
    size_t route_count;
} sb_config;

typedef struct sb_config_error {
    char *file;
    int line, col; /* 0 when unknown */
    char *key;     /* key path, e.g. "routes[1].retry.max_attempts" */
    char *message;
} sb_config_error;

typedef struct sb_config_errors {
    sb_config_error *items;
    size_t count;
} sb_config_errors;

/* Reads and validates the YAML file at path. On success *out is a new config
 * (free with sb_config_free) and errs is empty. On failure returns
 * SB_ECONFIG (or SB_ENOMEM / SB_ENOTFOUND), *out is NULL, and errs holds
 * every problem found. */
int sb_config_load(sb_config **out, const char *path, sb_config_errors *errs);

/* Same, from a buffer; `name` is used as the file name in errors. */
int sb_config_parse(sb_config **out, const char *name, const char *text, size_t len,
                    sb_config_errors *errs);

void sb_config_free(sb_config *cfg);

/* Formats one error as "FILE:LINE:COL: key: message" into out (size n),
 * leaving out the position when it is unknown and the key when there is
 * none ("FILE: cannot open: ..."). Returns out. */
const char *sb_config_error_format(const sb_config_error *e, char *out, size_t n);

/* Writes each error as "FILE:LINE:COL: key: message\n". */
void sb_config_errors_print(const sb_config_errors *errs, FILE *f);

void sb_config_errors_clear(sb_config_errors *errs);

/* The configuration of a session agent (docs/agent.md): a YAML document
 * with broker.log.level set to log_level and, under `adapters`, the
 * adapters of cfg named in names[0..count), copied node for node from
 * cfg->text. *out (sb_free) is NUL-terminated, *out_len its length.
 * Returns 0, SB_EINVAL (cfg has no text) or SB_ENOMEM. */
int sb_config_agent_doc(char **out, size_t *out_len, const sb_config *cfg, const char *log_level,
                        const char *const *names, size_t count);

/* Finds an adapter/route by name, or NULL. */
const sb_adapter_config *sb_config_adapter(const sb_config *cfg, const char *name);
const sb_route_config *sb_config_route(const sb_config *cfg, const char *name);

/* Deep copy / free / equality of one adapter or route config (the broker
 * keeps copies across reloads; reload keeps an adapter whose config is equal),
 * driven by the type's key table (settings included). copy returns 0 or
 * SB_ENOMEM (out is then left freeable); free releases what the config
 * owns, not the struct itself. */
int sb_adapter_config_copy(sb_adapter_config *out, const sb_adapter_config *in);
void sb_adapter_config_free(sb_adapter_config *cfg);
int sb_adapter_config_equal(const sb_adapter_config *a, const sb_adapter_config *b);
int sb_route_config_equal(const sb_route_config *a, const sb_route_config *b);

/* The same for routes: copy returns 0 or SB_ENOMEM (out is then left
 * freeable); free releases what the route owns, not the struct itself. */
int sb_route_config_copy(sb_route_config *out, const sb_route_config *in);
void sb_route_config_free(sb_route_config *cfg);

/* Checks the syntax of an SDDL security descriptor string (owner, group,
 * DACL and SACL parts; ACE types, flags, rights, GUIDs and SIDs against the
 * names Windows knows). Returns 0 if it is well formed; else -1 with
 * *out_offset (may be NULL) the byte offset of the problem and `why` a
 * one-line message. It cannot tell whether a domain alias resolves on a
 * given machine: Windows decides that when it converts the string. */
int sb_config_sddl_check(const char *sddl, size_t *out_offset, char *why, size_t why_len);

/* The starter configuration `switchboard service install` writes: data_dir
 * and its log file, and commented examples (a pipe in, a mailslot out, MQTT
 * on loopback; uncommenting an example's lines keeps the file valid).
 * config_path is only named in the comments. Returns a new string
 * (sb_free) or NULL when out of memory. */
char *sb_config_starter(const char *data_dir, const char *config_path);

/* Writes the JSON Schema (draft-07) of configuration files to f, generated
 * from the tables the loader walks: the broker and routes sections and the
 * keys of every adapter type registered now (config/json_schema.c says what
 * it leaves out). Returns 0, SB_ENOMEM or SB_EIO. */
int sb_config_json_schema(FILE *f);
/* Parses broker.http.listen: "host:port" or "[v6]:port", the host a
 * numeric address or localhost (given back as 127.0.0.1), the port 0..65535
 * (0: any free port). Fills host (host_len bytes), *port and *loopback (1
 * for 127.0.0.0/8 and ::1). Returns 0, or SB_EINVAL with `why` a one-line
 * message. */
int sb_config_http_listen(const char *addr, char *host, size_t host_len, int *port, int *loopback,
                          char *why, size_t why_len);

/* Parses "250ms", "10s", "5m", "2h", "1d" or a bare number of milliseconds.
 * Returns 0 or SB_EINVAL. */
int sb_config_parse_duration(const char *s, int64_t *out_ms);

/* Parses "4096", "64KiB", "1MiB", "2GiB" (also KB/MB/GB as powers of 1000). */
int sb_config_parse_size(const char *s, int64_t *out_bytes);

#endif
