/*
 * The configuration schema: one table per section, {key, type, flags,
 * adapter types, default, min, max}, and the few checks a table cannot say
 * (listen XOR connect, framing by adapter type, names unique, route
 * destinations declared, backoff <= max backoff).
 *
 * Every field of sb_adapter_config and sb_route_config except `pos` must
 * have a row here: copy, free and equality are driven by these tables.
 * To add an adapter type, add it to adapter_types, adapter_kinds and the
 * `types` bits of the keys it accepts.
 */
#include "config/config_int.h"
#include "service/alloc.h"
#include "service/error.h"
#include "service/log.h"
#include "service/topic.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define SECONDS 1000
#define MINUTES (60 * SECONDS)
#define HOURS (60 * MINUTES)
#define DAYS ((int64_t)24 * HOURS)

#define TABLE(fields)                                                                              \
    {                                                                                              \
        fields, sizeof fields / sizeof fields[0]                                                   \
    }

/* Enum members are stored through int *. */
_Static_assert(sizeof(sb_durability) == sizeof(int), "enum size");
_Static_assert(sizeof(sb_overflow) == sizeof(int), "enum size");
_Static_assert(sizeof(sb_restart) == sizeof(int), "enum size");
_Static_assert(sizeof(sb_tls_version) == sizeof(int), "enum size");
_Static_assert(sizeof(sb_client_cert) == sizeof(int), "enum size");
_Static_assert(sizeof(sb_desktop_host) == sizeof(int), "enum size");
_Static_assert(sizeof(sb_dde_role) == sizeof(int), "enum size");

/* ---- choices (the index is the stored value for SB_CT_ENUM) ---- */

static const char *const log_levels[] = {"debug", "info", "warn", "error", "off", NULL};
_Static_assert(SB_LOG_DEBUG == 0 && SB_LOG_INFO == 1 && SB_LOG_WARN == 2 && SB_LOG_ERROR == 3 &&
                   SB_LOG_OFF == 4,
               "log_levels follows sb_log_level");

static const char *const desktop_hosts[] = {"auto", "in-process", "agent", NULL};
_Static_assert(SB_DESKTOP_AUTO == 0 && SB_DESKTOP_IN_PROCESS == 1 && SB_DESKTOP_AGENT == 2,
               "desktop_hosts follows sb_desktop_host");

static const char *const restarts[] = {"never", "on-failure", "always", NULL};
_Static_assert(SB_RESTART_NEVER == 0 && SB_RESTART_ON_FAILURE == 1 && SB_RESTART_ALWAYS == 2,
               "restarts follows sb_restart");

static const char *const durabilities[] = {"fsync", "batched", "memory", NULL};
_Static_assert(SB_DURABILITY_FSYNC == 0 && SB_DURABILITY_BATCHED == 1 && SB_DURABILITY_MEMORY == 2,
               "durabilities follows sb_durability");

static const char *const overflows[] = {"reject", "drop-oldest", NULL};
_Static_assert(SB_OVERFLOW_REJECT == 0 && SB_OVERFLOW_DROP_OLDEST == 1,
               "overflows follows sb_overflow");

static const char *const protocols[] = {"raw", "jsonl", "mqtt", NULL};
static const char *const tls_versions[] = {"1.2", "1.3", NULL};
_Static_assert(SB_TLS_V1_2 == 0 && SB_TLS_V1_3 == 1, "tls_versions follows sb_tls_version");
static const char *const client_certs[] = {"none", "optional", "require", NULL};
_Static_assert(SB_CLIENT_CERT_NONE == 0 && SB_CLIENT_CERT_OPTIONAL == 1 &&
                   SB_CLIENT_CERT_REQUIRE == 2,
               "client_certs follows sb_client_cert");
static const char *const framings[] = {"line", "length", "datagram", "message", NULL};
static const char *const dde_roles[] = {"server", "client", NULL};
/* filemap (TEMPORARY, see the filemap rows) */
static const char *const filemap_directions[] = {"in", "out", NULL};
static const char *const filemap_namespaces[] = {"auto", "global", "local", NULL};
_Static_assert(SB_DDE_SERVER == 0 && SB_DDE_CLIENT == 1, "dde_roles follows sb_dde_role");

/* ---- adapter types ---- */

enum { TYPE_TCP, TYPE_UDP, TYPE_UNIX, TYPE_PIPE, TYPE_EXEC, TYPE_MAILSLOT, TYPE_DDE, TYPE_FILEMAP };
static const char *const adapter_types[] = {"tcp",      "udp", "unix",    "pipe", "exec",
                                            "mailslot", "dde", "filemap", NULL};

#define TCP (1u << TYPE_TCP)
#define UDP (1u << TYPE_UDP)
#define UNIX (1u << TYPE_UNIX)
#define PIPE (1u << TYPE_PIPE)
#define EXEC (1u << TYPE_EXEC)
#define MAILSLOT (1u << TYPE_MAILSLOT)
#define DDE (1u << TYPE_DDE)
#define FILEMAP (1u << TYPE_FILEMAP)

#define UDP_MAX_MESSAGE 65507 /* largest UDP payload over IPv4 */
/* A mailslot's default max_message (network targets take at most 424 bytes:
 * the sink checks that per target). */
#define MAILSLOT_DEFAULT_MESSAGE 65536

static const struct adapter_kind {
    const char *server_key; /* the key that makes it a server; NULL: exec */
    int stream;             /* a byte stream (can carry jsonl) */
} adapter_kinds[] = {
    [TYPE_TCP] = {"listen", 1}, [TYPE_UDP] = {"listen", 0}, [TYPE_UNIX] = {"path", 1},
    [TYPE_PIPE] = {"path", 1},  [TYPE_EXEC] = {NULL, 1},    [TYPE_MAILSLOT] = {"path", 0},
    [TYPE_DDE] = {NULL, 0},     [TYPE_FILEMAP] = {NULL, 0},
};

/* ---- broker ---- */

#define B(member) offsetof(sb_broker_config, member)

static const sb_config__field store_fields[] = {
    {.key = "commit_max_batch",
     .type = SB_CT_INT,
     .offset = B(commit_max_batch),
     .def = 1024,
     .min = 1,
     .max = 65536},
    {.key = "commit_max_delay_us",
     .type = SB_CT_INT,
     .offset = B(commit_max_delay_us),
     .def = 0,
     .min = 0,
     .max = 1000000},
    {.key = "max_db_bytes",
     .type = SB_CT_SIZE,
     .offset = B(max_db_bytes),
     .def = 0,
     .min = 0,
     .max = INT64_MAX},
};
static const sb_config__section store_section = TABLE(store_fields);

static const sb_config__field log_fields[] = {
    {.key = "level",
     .type = SB_CT_ENUM,
     .offset = B(log_level),
     .def = SB_LOG_INFO,
     .choices = log_levels},
    {.key = "file", .type = SB_CT_STRING, .offset = B(log_file)},
    {.key = "stderr", .type = SB_CT_BOOL, .offset = B(log_stderr), .def = 1},
};
static const sb_config__section log_section = TABLE(log_fields);

static const sb_config__field admin_fields[] = {
    {.key = "endpoint", .type = SB_CT_STRING, .offset = B(admin_endpoint), .def_str = "default"},
    {.key = "security", .type = SB_CT_STRING, .offset = B(admin_security)},
};
static const sb_config__section admin_section = TABLE(admin_fields);

static const sb_config__field auth_fields[] = {
    {.key = "password_file", .type = SB_CT_STRING, .offset = B(auth_password_file)},
    {.key = "acl_file", .type = SB_CT_STRING, .offset = B(auth_acl_file)},
};
static const sb_config__section auth_section = TABLE(auth_fields);

static const sb_config__field agent_fields[] = {
    {.key = "endpoint", .type = SB_CT_STRING, .offset = B(agent_endpoint)},
    {.key = "start", .type = SB_CT_BOOL, .offset = B(agent_start), .def = 1},
    {.key = "types",
     .type = SB_CT_STRLIST,
     .offset = B(agent_types),
     .count_off = B(agent_types_count)},
    {.key = "restart_backoff",
     .type = SB_CT_DURATION,
     .offset = B(agent_restart_backoff_ms),
     .def = SECONDS,
     .min = 1,
     .max = DAYS},
    {.key = "restart_max_backoff",
     .type = SB_CT_DURATION,
     .offset = B(agent_restart_max_backoff_ms),
     .def = MINUTES,
     .min = 1,
     .max = DAYS},
};
static const sb_config__section agent_section = TABLE(agent_fields);

static const sb_config__field broker_fields[] = {
    {.key = "data_dir", .type = SB_CT_STRING, .offset = B(data_dir), .def_str = "./data"},
    {.key = "store", .type = SB_CT_SECTION, .section = &store_section},
    {.key = "log", .type = SB_CT_SECTION, .section = &log_section},
    {.key = "admin", .type = SB_CT_SECTION, .section = &admin_section},
    {.key = "auth", .type = SB_CT_SECTION, .section = &auth_section},
    {.key = "sys_interval",
     .type = SB_CT_DURATION,
     .offset = B(sys_interval_ms),
     .def = 10 * SECONDS,
     .min = 0,
     .max = DAYS},
    {.key = "desktop",
     .type = SB_CT_ENUM,
     .offset = B(desktop),
     .def = SB_DESKTOP_AUTO,
     .choices = desktop_hosts},
    {.key = "agent", .type = SB_CT_SECTION, .section = &agent_section},
};
static const sb_config__section broker_section = TABLE(broker_fields);

/* ---- adapters ---- */

#define A(member) offsetof(sb_adapter_config, member)

static const sb_config__field tls_fields[] = {
    {.key = "cert", .type = SB_CT_STRING, .offset = A(tls_cert)},
    {.key = "key", .type = SB_CT_STRING, .offset = A(tls_key)},
    {.key = "ca", .type = SB_CT_STRING, .offset = A(tls_ca)},
    {.key = "ciphers", .type = SB_CT_STRING, .offset = A(tls_ciphers)},
    {.key = "server_name", .type = SB_CT_STRING, .offset = A(tls_server_name)},
    {.key = "min_version",
     .type = SB_CT_ENUM,
     .offset = A(tls_min_version),
     .def = SB_TLS_V1_2,
     .choices = tls_versions},
    {.key = "client_cert",
     .type = SB_CT_ENUM,
     .offset = A(tls_client_cert),
     .def = SB_CLIENT_CERT_NONE,
     .choices = client_certs},
    {.key = "verify", .type = SB_CT_BOOL, .offset = A(tls_verify), .def = 1},
};
static const sb_config__section tls_section = TABLE(tls_fields);

static const sb_config__field adapter_fields[] = {
    {.key = "name", .type = SB_CT_NAME, .flags = SB_CF_REQUIRED, .offset = A(name)},
    {.key = "type",
     .type = SB_CT_CHOICE,
     .flags = SB_CF_REQUIRED,
     .offset = A(type),
     .choices = adapter_types},
    {.key = "listen", .type = SB_CT_STRING, .types = TCP | UDP, .offset = A(listen)},
    {.key = "connect",
     .type = SB_CT_STRING,
     .types = TCP | UDP | UNIX | PIPE | MAILSLOT,
     .offset = A(connect)},
    {.key = "path", .type = SB_CT_STRING, .types = UNIX | PIPE | MAILSLOT, .offset = A(path)},
    {.key = "protocol",
     .type = SB_CT_CHOICE,
     .offset = A(protocol),
     .def_str = "raw",
     .choices = protocols},
    {.key = "framing", .type = SB_CT_CHOICE, .offset = A(framing), .choices = framings},
    {.key = "topic", .type = SB_CT_STRING, .offset = A(topic), .def_str = "{adapter}"},
    {.key = "max_message",
     .type = SB_CT_SIZE,
     .offset = A(max_message),
     .def = 1048576,
     .min = 1,
     .max = 67108864},
    {.key = "max_connections",
     .type = SB_CT_INT,
     .types = TCP | UNIX | PIPE,
     .offset = A(max_connections),
     .def = 64,
     .min = 1,
     .max = 100000},
    {.key = "idle_timeout",
     .type = SB_CT_DURATION,
     .types = TCP | UNIX | PIPE,
     .offset = A(idle_timeout_ms),
     .def = -1, /* by protocol: sb_adapter_config_idle_timeout */
     .min = 0,
     .max = DAYS},
    {.key = "frame_timeout",
     .type = SB_CT_DURATION,
     .types = TCP | UNIX | PIPE,
     .offset = A(frame_timeout_ms),
     .def = 30 * SECONDS,
     .min = 0,
     .max = DAYS},
    {.key = "command",
     .type = SB_CT_STRLIST,
     .types = EXEC,
     .offset = A(command),
     .count_off = A(command_count)},
    {.key = "restart",
     .type = SB_CT_ENUM,
     .types = EXEC,
     .offset = A(restart),
     .def = SB_RESTART_ON_FAILURE,
     .choices = restarts},
    {.key = "restart_backoff",
     .type = SB_CT_DURATION,
     .types = EXEC,
     .offset = A(restart_backoff_ms),
     .def = 1 * SECONDS,
     .min = 1,
     .max = DAYS},
    {.key = "restart_max_backoff",
     .type = SB_CT_DURATION,
     .types = EXEC,
     .offset = A(restart_max_backoff_ms),
     .def = 1 * MINUTES,
     .min = 1,
     .max = DAYS},
    {.key = "reconnect_backoff",
     .type = SB_CT_DURATION,
     .types = TCP | UNIX | PIPE | DDE,
     .offset = A(reconnect_backoff_ms),
     .def = 500,
     .min = 1,
     .max = DAYS},
    {.key = "reconnect_max_backoff",
     .type = SB_CT_DURATION,
     .types = TCP | UNIX | PIPE | DDE,
     .offset = A(reconnect_max_backoff_ms),
     .def = 30 * SECONDS,
     .min = 1,
     .max = DAYS},
    {.key = "security",
     .type = SB_CT_STRING,
     .types = PIPE | MAILSLOT | FILEMAP,
     .offset = A(security)},
    {.key = "inflight",
     .type = SB_CT_INT,
     .offset = A(inflight),
     .def = 64,
     .min = 1,
     .max = 65536},
    {.key = "anonymous",
     .type = SB_CT_BOOL,
     .types = TCP | UDP | UNIX | PIPE,
     .offset = A(anonymous),
     .def = -1},
    {.key = "tls", .type = SB_CT_SECTION, .types = TCP, .section = &tls_section},
    {.key = "max_queued",
     .type = SB_CT_INT64,
     .types = TCP | UNIX | PIPE,
     .offset = A(max_queued),
     .def = 100000,
     .min = 0,
     .max = INT64_MAX},
    {.key = "session_expiry",
     .type = SB_CT_DURATION,
     .types = TCP | UNIX | PIPE,
     .offset = A(session_expiry_ms),
     .def = 0,
     .min = 0,
     .max = 3650 * DAYS},
    {.key = "read_ahead",
     .type = SB_CT_INT,
     .types = TCP | UNIX | PIPE | EXEC | FILEMAP,
     .offset = A(read_ahead),
     .def = 64,
     .min = 1,
     .max = 65536},
    /* 0 (not set): the pipe adapter picks by protocol */
    {.key = "pipe_buffer",
     .type = SB_CT_SIZE,
     .types = PIPE,
     .offset = A(pipe_buffer),
     .def = 0,
     .min = 512,
     .max = 16 * 1024 * 1024},
    {.key = "reply", .type = SB_CT_STRING, .types = TCP | UNIX | PIPE, .offset = A(reply)},
    {.key = "reply_error",
     .type = SB_CT_STRING,
     .types = TCP | UNIX | PIPE,
     .offset = A(reply_error)},
    /* dde (adapters/dde); check_dde says which role takes which */
    {.key = "role",
     .type = SB_CT_ENUM,
     .types = DDE,
     .offset = A(dde_role),
     .def = SB_DDE_SERVER,
     .choices = dde_roles},
    {.key = "service",
     .type = SB_CT_STRING,
     .types = DDE,
     .offset = A(dde_service),
     .def_str = "SWITCHBOARD"},
    {.key = "dde_topics",
     .type = SB_CT_STRLIST,
     .types = DDE,
     .offset = A(dde_topics),
     .count_off = A(dde_topics_count)},
    {.key = "dde_topic", .type = SB_CT_STRING, .types = DDE, .offset = A(dde_topic)},
    {.key = "items",
     .type = SB_CT_STRLIST,
     .types = DDE,
     .offset = A(dde_items),
     .count_off = A(dde_items_count)},
    {.key = "execute_topic", .type = SB_CT_STRING, .types = DDE, .offset = A(dde_execute_topic)},
    {.key = "codepage",
     .type = SB_CT_INT,
     .types = DDE,
     .offset = A(dde_codepage),
     .def = 0,
     .min = 0,
     .max = 65535},
    /* filemap (adapters/filemap). TEMPORARY, with check_filemap: moves to
     * adapters/filemap/filemap_keys.c with the per-type key tables. */
    {.key = "ring", .type = SB_CT_STRING, .types = FILEMAP, .offset = A(fm_ring)},
    {.key = "direction",
     .type = SB_CT_ENUM,
     .types = FILEMAP,
     .offset = A(fm_direction),
     .def = 0,
     .choices = filemap_directions},
    {.key = "capacity",
     .type = SB_CT_SIZE,
     .types = FILEMAP,
     .offset = A(fm_capacity),
     .def = 1048576,
     .min = 4096,
     .max = 1073741824},
    {.key = "reclaim_timeout",
     .type = SB_CT_DURATION,
     .types = FILEMAP,
     .offset = A(fm_reclaim_timeout_ms),
     .def = 5 * SECONDS,
     .min = 10,
     .max = HOURS},
    {.key = "namespace",
     .type = SB_CT_ENUM,
     .types = FILEMAP,
     .offset = A(fm_namespace),
     .def = 0,
     .choices = filemap_namespaces},
    {.key = "mode", .type = SB_CT_STRING, .types = FILEMAP, .offset = A(fm_mode)},
    {.key = "group", .type = SB_CT_STRING, .types = FILEMAP, .offset = A(fm_group)},
};
static const sb_config__section adapter_section = TABLE(adapter_fields);

/* ---- routes ---- */

#define R(member) offsetof(sb_route_config, member)

static const sb_config__field retry_fields[] = {
    {.key = "max_attempts",
     .type = SB_CT_INT,
     .offset = R(max_attempts),
     .def = 10,
     .min = 1,
     .max = 1000000},
    {.key = "backoff",
     .type = SB_CT_DURATION,
     .offset = R(backoff_ms),
     .def = 100,
     .min = 1,
     .max = DAYS},
    {.key = "max_backoff",
     .type = SB_CT_DURATION,
     .offset = R(max_backoff_ms),
     .def = 1 * MINUTES,
     .min = 1,
     .max = DAYS},
};
static const sb_config__section retry_section = TABLE(retry_fields);

static const sb_config__field dedup_fields[] = {
    {.key = "header", .type = SB_CT_STRING, .flags = SB_CF_REQUIRED, .offset = R(dedup_header)},
    {.key = "window",
     .type = SB_CT_DURATION,
     .offset = R(dedup_window_ms),
     .def = 10 * MINUTES,
     .min = 1,
     .max = 365 * DAYS},
};
static const sb_config__section dedup_section = TABLE(dedup_fields);

static const sb_config__field route_fields[] = {
    {.key = "name", .type = SB_CT_NAME, .flags = SB_CF_REQUIRED, .offset = R(name)},
    {.key = "from",
     .type = SB_CT_FILTERS,
     .flags = SB_CF_REQUIRED,
     .offset = R(from),
     .count_off = R(from_count)},
    {.key = "to", .type = SB_CT_NAMES, .offset = R(to), .count_off = R(to_count)},
    {.key = "durability",
     .type = SB_CT_ENUM,
     .offset = R(durability),
     .def = SB_DURABILITY_FSYNC,
     .choices = durabilities},
    {.key = "retry", .type = SB_CT_SECTION, .section = &retry_section},
    {.key = "ttl",
     .type = SB_CT_DURATION,
     .offset = R(ttl_ms),
     .def = 0,
     .min = 0,
     .max = 3650 * DAYS},
    {.key = "max_depth",
     .type = SB_CT_INT64,
     .offset = R(max_depth),
     .def = 0,
     .min = 0,
     .max = INT64_MAX},
    {.key = "max_bytes",
     .type = SB_CT_SIZE,
     .offset = R(max_bytes),
     .def = 0,
     .min = 0,
     .max = INT64_MAX},
    {.key = "overflow",
     .type = SB_CT_ENUM,
     .offset = R(overflow),
     .def = SB_OVERFLOW_REJECT,
     .choices = overflows},
    {.key = "retain", .type = SB_CT_BOOL, .offset = R(retain), .def = 0},
    {.key = "dedup", .type = SB_CT_SECTION, .section = &dedup_section},
    {.key = "lease",
     .type = SB_CT_DURATION,
     .offset = R(lease_ms),
     .def = 30 * SECONDS,
     .min = 1,
     .max = DAYS},
};
static const sb_config__section route_section = TABLE(route_fields);

/* ---- helpers for the checks ---- */

static const sb_config__seen *seen(sb_config__ctx *ctx, const void *target)
{
    return sb_config__seen_find(ctx, target);
}

static void sub_path(char *out, const char *path, const char *key)
{
    sb_config__path(out, path, ".", key);
}

static int type_index(const char *type)
{
    for (int i = 0; type != NULL && adapter_types[i] != NULL; i++)
        if (strcmp(adapter_types[i], type) == 0)
            return i;
    return -1;
}

static sb_config_pos node_pos(const yaml_node_t *node)
{
    sb_config_pos pos = {(int)node->start_mark.line + 1, (int)node->start_mark.column + 1};
    return pos;
}

/* lo must not exceed hi (a backoff and its cap). The error points at the
 * key the user wrote; nothing is said if either value was already bad. */
static void check_backoff(sb_config__ctx *ctx, const char *path, const int64_t *lo,
                          const char *lo_key, const int64_t *hi, const char *hi_key)
{
    const sb_config__seen *sl = seen(ctx, lo), *sh = seen(ctx, hi);
    char p[SB_CONFIG__PATH_MAX], d[32];
    if (*lo <= *hi || (sl != NULL && !sl->ok) || (sh != NULL && !sh->ok))
        return;
    if (sh != NULL) {
        sub_path(p, path, hi_key);
        sb_config__error(ctx, sh->value, p, "must be at least %s (%s)", lo_key,
                         sb_config__fmt_duration(d, sizeof d, *lo));
    } else if (sl != NULL) {
        sub_path(p, path, lo_key);
        sb_config__error(ctx, sl->value, p, "must be at most %s (%s)", hi_key,
                         sb_config__fmt_duration(d, sizeof d, *hi));
    }
}

/* "host:port" or "[v6]:port"; port 0 (any free port) and an empty host (every
 * interface) only for listen. */
static void check_host_port(sb_config__ctx *ctx, const sb_config__seen *s, const char *path,
                            const char *addr, int listen)
{
    const char *colon;
    char q[96];
    int64_t port;
    if (s == NULL || !s->ok)
        return;
    colon = strrchr(addr, ':');
    /* ":port" listens on every interface (as the socket adapters read it) */
    if (colon == NULL || (colon == addr && !listen)) {
        sb_config__error(ctx, s->value, path, "expected host:port, got %s",
                         sb_config__quote(q, sizeof q, addr));
        return;
    }
    if (addr[0] == '[' ? colon[-1] != ']' : memchr(addr, ':', (size_t)(colon - addr)) != NULL) {
        sb_config__error(ctx, s->value, path,
                         "expected host:port, got %s (write IPv6 addresses as [::1]:port)",
                         sb_config__quote(q, sizeof q, addr));
        return;
    }
    if (sb_config__parse_int64(colon + 1, &port) != SB_NUM_OK || port < !listen || port > 65535) {
        sb_config__error(ctx, s->value, path, "invalid port %s (must be %d..65535)",
                         sb_config__quote(q, sizeof q, colon + 1), !listen);
    }
}

/* A raw source's topic template: a valid publish topic once the
 * placeholders (NULL-terminated; known_text lists them for the message) are
 * filled in. Returns 0 if it is, -1 after reporting why not. */
static int check_placeholders(sb_config__ctx *ctx, const sb_config__seen *s, const char *path,
                              const char *topic, const char *const *placeholders,
                              const char *known_text)
{
    const char *why = NULL, *p = topic;
    char q[96];
    if (s == NULL || !s->ok)
        return 0;
    while ((p = strchr(p, '{')) != NULL) {
        size_t i;
        for (i = 0; placeholders[i] != NULL; i++)
            if (strncmp(p, placeholders[i], strlen(placeholders[i])) == 0)
                break;
        if (placeholders[i] == NULL) {
            const char *end = strchr(p, '}');
            char name[80];
            snprintf(name, sizeof name, "%.*s", end ? (int)(end - p + 1) : 1, p);
            sb_config__error(ctx, s->value, path, "unknown placeholder %s (known: %s)",
                             sb_config__quote(q, sizeof q, name), known_text);
            return -1;
        }
        p += strlen(placeholders[i]);
    }
    if (topic[0] == '$') {
        sb_config__error(ctx, s->value, path, "must not start with '$' (reserved for the broker)");
        return -1;
    }
    if (sb_topic_validate(topic, strlen(topic), &why) != 0) {
        sb_config__error(ctx, s->value, path, "invalid topic %s: %s",
                         sb_config__quote(q, sizeof q, topic), why);
        return -1;
    }
    return 0;
}

static void check_topic_template(sb_config__ctx *ctx, const sb_config__seen *s, const char *path,
                                 const char *topic)
{
    static const char *const placeholders[] = {"{adapter}", "{peer}", NULL};
    (void)check_placeholders(ctx, s, path, topic, placeholders, "{adapter}, {peer}");
}

/* Reports a name already used in `names` (with the line of its first use),
 * else records it. item starts with its sb_config_pos. */
static void check_unique(sb_config__ctx *ctx, sb_map *names, const char *what, const char *name,
                         void *item, char **name_slot, const yaml_node_t *node, const char *path)
{
    const sb_config_pos *first;
    const sb_config__seen *s;
    char p[SB_CONFIG__PATH_MAX], q[96];

    if (name == NULL)
        return;
    first = sb_map_get(names, name);
    if (first == NULL) {
        if (sb_map_put(names, name, item, NULL) != 0)
            ctx->nomem = 1;
        return;
    }
    s = seen(ctx, name_slot);
    sub_path(p, path, "name");
    sb_config__error(ctx, s ? s->value : node, p,
                     "duplicate %s name %s (first declared at line %d)", what,
                     sb_config__quote(q, sizeof q, name), first->line);
}

/* ---- adapters ---- */

/* strncmp ignoring ASCII case (strncasecmp is POSIX, not C11). */
static int strncasecmp_ascii(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int ca = (unsigned char)a[i], cb = (unsigned char)b[i];
        if (ca >= 'A' && ca <= 'Z')
            ca += 'a' - 'A';
        if (cb >= 'A' && cb <= 'Z')
            cb += 'a' - 'A';
        if (ca != cb || ca == 0)
            return ca - cb;
    }
    return 0;
}

/* Length of a "\\SERVER\mailslot\" prefix of s (SERVER: ".", "*", a
 * computer or a domain name), 0 if s does not start with one. */
static size_t mailslot_prefix(const char *s)
{
    static const char kw[] = "\\mailslot\\";
    const char *server, *end;
    if (strncmp(s, "\\\\", 2) != 0)
        return 0;
    server = s + 2;
    end = strchr(server, '\\');
    if (end == NULL || end == server || strncasecmp_ascii(end, kw, sizeof kw - 1) != 0)
        return 0;
    return (size_t)(end - s) + sizeof kw - 1;
}

/* type filemap (adapters/filemap). TEMPORARY: becomes the validate hook of
 * adapters/filemap/filemap_keys.c with the per-type key tables. The ring's
 * object name, its POSIX mode (octal, nobody else may write), a capacity in
 * whole 8-byte words; records carry their own topic; read_ahead (default
 * 256) only for an in ring. */
static void check_filemap(sb_config__ctx *ctx, sb_adapter_config *a, const char *path)
{
    static const char *const unused[] = {"protocol", "framing", "topic", NULL};
    const sb_config__seen *s;
    char p[SB_CONFIG__PATH_MAX], q[96];

    for (int i = 0; unused[i] != NULL; i++) {
        char **target = i == 0 ? &a->protocol : i == 1 ? &a->framing : &a->topic;
        if ((s = seen(ctx, target)) != NULL) {
            sub_path(p, path, unused[i]);
            sb_config__error(ctx, s->key, p,
                             "not used by type filemap (each record carries its own topic)");
        }
    }
    if ((s = seen(ctx, &a->fm_ring)) != NULL && s->ok) {
        size_t n = strlen(a->fm_ring);
        int ok = n >= 1 && n <= 200;
        for (size_t i = 0; ok && i < n; i++) {
            char c = a->fm_ring[i];
            ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '.' || c == '_' || c == '-';
        }
        if (!ok) {
            sub_path(p, path, "ring");
            sb_config__error(ctx, s->value, p,
                             "%s: a ring's name is 1 to 200 characters of A-Z a-z 0-9 . _ -",
                             sb_config__quote(q, sizeof q, a->fm_ring));
        }
    }
    if ((s = seen(ctx, &a->fm_mode)) != NULL && s->ok) {
        size_t n = strlen(a->fm_mode);
        unsigned v = 0;
        int ok = n >= 3 && n <= 4;
        for (size_t i = 0; ok && i < n; i++) {
            ok = a->fm_mode[i] >= '0' && a->fm_mode[i] <= '7';
            v = v * 8 + (unsigned)(a->fm_mode[i] - '0');
        }
        sub_path(p, path, "mode");
        if (!ok || v > 0777)
            sb_config__error(ctx, s->value, p,
                             "%s: must be octal permission bits such as 0600 or 0660",
                             sb_config__quote(q, sizeof q, a->fm_mode));
        else if (v & 0002)
            sb_config__error(ctx, s->value, p,
                             "%s lets every account of the machine write the ring: refused",
                             a->fm_mode);
        else if ((v & 0600) != 0600)
            sb_config__error(ctx, s->value, p, "%s: the broker's own account needs 0600",
                             a->fm_mode);
    }
    if ((s = seen(ctx, &a->fm_capacity)) != NULL && s->ok && a->fm_capacity % 8 != 0) {
        sub_path(p, path, "capacity");
        sb_config__error(ctx, s->value, p, "must be a multiple of 8 bytes");
    }
    s = seen(ctx, &a->read_ahead);
    if (a->fm_direction != 0 && s != NULL) {
        sub_path(p, path, "read_ahead");
        sb_config__error(ctx, s->key, p, "only for direction in");
    } else if (s == NULL) {
        a->read_ahead = 256;
    }
}

/* Mailslot names. path (server): a name (created as \\.\mailslot\NAME) or
 * a full local mailslot path; connect (sink): the same, or \\HOST\...,
 * \\DOMAIN\... or \\*\... . The 424-byte limit of network targets is the
 * sink's to enforce (per delivery, never by truncating). `security` is for
 * servers: a client creates no object. max_message defaults to 64KiB. */
static void check_mailslot(sb_config__ctx *ctx, sb_adapter_config *a, const char *path)
{
    const sb_config__seen *ps = seen(ctx, &a->path), *cs = seen(ctx, &a->connect), *s;
    char p[SB_CONFIG__PATH_MAX], q[96];

    s = seen(ctx, &a->max_message);
    if (s == NULL)
        a->max_message = MAILSLOT_DEFAULT_MESSAGE;
    if (ps != NULL && ps->ok) {
        size_t pre = mailslot_prefix(a->path);
        const char *why = NULL;
        if (pre != 0 && strncmp(a->path, "\\\\.\\", 4) != 0)
            why = "a mailslot server can only create a local mailslot (a name, or "
                  "\\\\.\\mailslot\\NAME)";
        else if (pre == 0 && a->path[0] == '\\')
            why = "expected a mailslot name or \\\\.\\mailslot\\NAME";
        else if (a->path[pre] == '\0')
            why = "the mailslot name is empty";
        if (why != NULL) {
            sub_path(p, path, "path");
            sb_config__error(ctx, ps->value, p, "%s, got %s", why,
                             sb_config__quote(q, sizeof q, a->path));
        }
    }
    if (cs != NULL && cs->ok) {
        size_t pre = mailslot_prefix(a->connect);
        if ((pre == 0 && a->connect[0] == '\\') || a->connect[pre] == '\0') {
            sub_path(p, path, "connect");
            sb_config__error(ctx, cs->value, p,
                             "expected a mailslot name, \\\\.\\mailslot\\NAME, "
                             "\\\\HOST\\mailslot\\NAME, \\\\DOMAIN\\mailslot\\NAME or "
                             "\\\\*\\mailslot\\NAME, got %s",
                             sb_config__quote(q, sizeof q, a->connect));
        }
        if ((s = seen(ctx, &a->security)) != NULL) {
            sub_path(p, path, "security");
            sb_config__error(ctx, s->key, p,
                             "only for servers (path): a mailslot client creates no object");
        }
    }
}

int sb_adapter_config_tls(const sb_adapter_config *a)
{
    /* the checks below make every tls section set one of these */
    return a->tls_cert != NULL || a->tls_ca != NULL || !a->tls_verify;
}

static int is_loopback_listen(const char *listen)
{
    return strncmp(listen, "127.", 4) == 0 || strncmp(listen, "localhost:", 10) == 0 ||
           strncmp(listen, "[::1]:", 6) == 0;
}

int sb_adapter_config_anonymous(const sb_adapter_config *a)
{
    if (a->anonymous >= 0)
        return a->anonymous;
    if (a->type == NULL || (strcmp(a->type, "tcp") != 0 && strcmp(a->type, "udp") != 0))
        return 1; /* local IPC: the OS's access control decides who connects */
    return a->listen == NULL || is_loopback_listen(a->listen);
}

int64_t sb_adapter_config_idle_timeout(const sb_adapter_config *a)
{
    if (a->idle_timeout_ms >= 0)
        return a->idle_timeout_ms;
    return a->protocol != NULL && strcmp(a->protocol, "jsonl") == 0 ? 30 * SECONDS : 0;
}

/* tls: a server needs cert and key, a client a ca (or verify: false); the
 * server-only and client-only keys are where they belong. */
static void check_tls(sb_config__ctx *ctx, const yaml_node_t *node, sb_adapter_config *a,
                      const char *path)
{
    const sb_config__seen *s;
    const yaml_node_t *tls;
    char p[SB_CONFIG__PATH_MAX];
    int any = 0, server = a->listen != NULL;
    void *const keys[] = {&a->tls_cert,        &a->tls_key,         &a->tls_ca,
                          &a->tls_ciphers,     &a->tls_server_name, &a->tls_min_version,
                          &a->tls_client_cert, &a->tls_verify};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        any |= seen(ctx, keys[i]) != NULL;
    if (!any)
        return;
    if ((tls = sb_config__lookup(ctx, node, "tls")) != NULL)
        node = tls;
    sub_path(p, path, "tls");
    if (server) {
        if (a->tls_cert == NULL || a->tls_key == NULL)
            sb_config__error(ctx, node, p, "a TLS listener needs cert and key");
        if (a->tls_client_cert != SB_CLIENT_CERT_NONE && a->tls_ca == NULL)
            sb_config__error(ctx, node, p,
                             "client_cert %s needs ca (the CA that issues client certificates)",
                             a->tls_client_cert == SB_CLIENT_CERT_REQUIRE ? "require" : "optional");
        if ((s = seen(ctx, &a->tls_server_name)) != NULL ||
            (s = seen(ctx, &a->tls_verify)) != NULL) {
            char k[40];
            snprintf(k, sizeof k, "tls.%s", (const char *)s->key->data.scalar.value);
            sub_path(p, path, k);
            sb_config__error(ctx, s->key, p, "only for clients (connect), not with listen");
        }
    } else {
        if (a->tls_ca == NULL && a->tls_verify)
            sb_config__error(ctx, node, p,
                             "a TLS client needs ca (a PEM file, or system) to verify the "
                             "server, or verify: false");
        if ((a->tls_cert == NULL) != (a->tls_key == NULL))
            sb_config__error(ctx, node, p, "a client certificate needs both cert and key");
        if ((s = seen(ctx, &a->tls_client_cert)) != NULL) {
            sub_path(p, path, "tls.client_cert");
            sb_config__error(ctx, s->key, p, "only for listeners, not with connect");
        }
    }
}

/* A listener that refuses anonymous clients must have a way to know who
 * connects: MQTT user names (broker.auth.password_file) or client
 * certificates. */
static void check_anonymous(sb_config__ctx *ctx, const yaml_node_t *node, sb_adapter_config *a,
                            const char *path, int mqtt)
{
    const sb_broker_config *bc = &ctx->cfg->broker;
    int by_password = mqtt && bc->auth_password_file != NULL;
    int by_cert = a->tls_client_cert != SB_CLIENT_CERT_NONE;
    const char *where = a->listen != NULL ? a->listen : a->path;
    if (sb_adapter_config_anonymous(a) || by_password || by_cert || where == NULL)
        return;
    if (a->anonymous == 0)
        sb_config__error(ctx, node, path,
                         "anonymous: false, but clients of %s cannot authenticate: set "
                         "tls.client_cert%s",
                         where, mqtt ? " or broker.auth.password_file" : "");
    else
        sb_config__error(ctx, node, path,
                         "%s is not a loopback address, so anonymous clients are refused, and "
                         "this listener has no way to authenticate them: set tls.client_cert%s, "
                         "or anonymous: true to accept anyone who can reach it",
                         where, mqtt ? " or broker.auth.password_file" : "");
}

/* The raw protocol's own keys: read_ahead, and the acknowledged mode's
 * reply frames (reply_error needs reply; with line framing a reply is one
 * line, so it cannot hold a newline). */
static void check_raw_keys(sb_config__ctx *ctx, sb_adapter_config *a, const char *path)
{
    void *const keys[] = {&a->read_ahead, &a->reply, &a->reply_error};
    const char *const names[] = {"read_ahead", "reply", "reply_error"};
    const sb_config__seen *s;
    char p[SB_CONFIG__PATH_MAX];
    int raw = a->protocol == NULL || strcmp(a->protocol, "raw") == 0;
    int line = a->framing == NULL || strcmp(a->framing, "line") == 0;

    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        if ((s = seen(ctx, keys[i])) == NULL)
            continue;
        sub_path(p, path, names[i]);
        if (!raw) {
            sb_config__error(ctx, s->key, p, "only for protocol raw");
        } else if (i > 0 && s->ok && line && strchr(*(char **)keys[i], '\n') != NULL) {
            sb_config__error(ctx, s->value, p,
                             "must not contain a newline with line framing (a reply is one line)");
        } else if (i == 2 && a->reply == NULL) {
            sb_config__error(ctx, s->key, p, "needs reply (the answer to a committed frame)");
        }
    }
}

/* ---- dde ---- */

#define DDE_DEFAULT_TOPIC "{service}/{dde_topic}/{item}"
#define DDE_NAME_MAX 255 /* a DDE string handle holds at most 255 characters */

/* Why a DDE service, topic or item name cannot be used, or NULL. Names
 * become topic levels, so they cannot hold the level separator or the
 * wildcards. */
static const char *dde_name_problem(const char *s)
{
    if (strlen(s) > DDE_NAME_MAX)
        return "longer than 255 bytes (the most a DDE name holds)";
    if (strpbrk(s, "/+#") != NULL)
        return "contains '/', '+' or '#' (DDE names become topic levels)";
    return NULL;
}

/* Checks one name, or each name of a list, of the key seen as s. */
static void check_dde_names(sb_config__ctx *ctx, const sb_config__seen *s, const char *path,
                            const char *key, char **names, size_t count, int star_ok)
{
    char p[SB_CONFIG__PATH_MAX], q[96];
    if (s == NULL || !s->ok)
        return;
    for (size_t i = 0; i < count; i++) {
        const yaml_node_t *el = s->value;
        const char *why = dde_name_problem(names[i]);
        if (el->type == YAML_SEQUENCE_NODE) {
            char idx[48];
            el = yaml_document_get_node(ctx->doc, el->data.sequence.items.start[i]);
            snprintf(idx, sizeof idx, "%s[%zu]", key, i);
            sub_path(p, path, idx);
        } else {
            sub_path(p, path, key);
        }
        if (strcmp(names[i], "*") == 0 && star_ok) {
            if (count > 1)
                sb_config__error(ctx, el, p, "'*' (any topic) cannot be listed with other topics");
            continue;
        }
        if (why != NULL)
            sb_config__error(ctx, el, p, "invalid DDE name %s: %s",
                             sb_config__quote(q, sizeof q, names[i]), why);
    }
}

/* Where placeholder ph is in the template's levels: its level index, -1 if
 * absent, -2 if it is not a whole level, -3 if it appears twice. */
static int template_level(const char *topic, const char *ph)
{
    const char *p = topic;
    int level = 0, found = -1;
    size_t n = strlen(ph);
    for (;;) {
        const char *end = strchr(p, '/');
        size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
        const char *hit = strstr(p, ph);
        if (hit != NULL && hit < p + len) {
            if (found != -1)
                return -3;
            if (len != n)
                return -2;
            found = level;
            if (strstr(hit + n, ph) != NULL)
                return -3;
        }
        if (end == NULL)
            return found;
        p = end + 1;
        level++;
    }
}

/* type dde: which keys each role takes, its DDE names, and a topic
 * template that maps (DDE topic, item) to broker topics and back:
 * {dde_topic} and {item} are whole levels, at most once each; {item} is
 * required, and so is {dde_topic} for a server that serves more than one
 * DDE topic. An unset template becomes DDE_DEFAULT_TOPIC. */
static void check_dde(sb_config__ctx *ctx, const yaml_node_t *node, sb_adapter_config *a,
                      const char *path)
{
    static const char *const placeholders[] = {"{adapter}", "{service}", "{dde_topic}", "{item}",
                                               NULL};
    const int server = a->dde_role == SB_DDE_SERVER;
    const sb_config__seen *s, *ts;
    char p[SB_CONFIG__PATH_MAX], q[96];
    const char *why = NULL;
    int level;

    if (server) {
        if ((s = seen(ctx, &a->dde_topic)) != NULL ||
            (s = seen(ctx, &a->reconnect_backoff_ms)) != NULL ||
            (s = seen(ctx, &a->reconnect_max_backoff_ms)) != NULL) {
            sub_path(p, path, (const char *)s->key->data.scalar.value);
            sb_config__error(ctx, s->key, p, "only for role client%s",
                             s->target == &a->dde_topic ? " (a server serves dde_topics)" : "");
        }
    } else {
        if ((s = seen(ctx, &a->dde_topics)) != NULL) {
            sub_path(p, path, "dde_topics");
            sb_config__error(ctx, s->key, p,
                             "only for role server (a client connects to one dde_topic)");
        }
        if (seen(ctx, &a->dde_topic) == NULL) {
            sub_path(p, path, "dde_topic");
            sb_config__error(ctx, node, p, "required for role client");
        }
    }
    if ((s = seen(ctx, &a->framing)) != NULL) {
        sub_path(p, path, "framing");
        sb_config__error(ctx, s->key, p, "not used by type dde (a DDE transaction is one message)");
    }
    check_dde_names(ctx, seen(ctx, &a->dde_service), path, "service", &a->dde_service, 1, 0);
    if (a->dde_topic != NULL)
        check_dde_names(ctx, seen(ctx, &a->dde_topic), path, "dde_topic", &a->dde_topic, 1, 0);
    check_dde_names(ctx, seen(ctx, &a->dde_topics), path, "dde_topics", a->dde_topics,
                    a->dde_topics_count, 1);
    check_dde_names(ctx, seen(ctx, &a->dde_items), path, "items", a->dde_items, a->dde_items_count,
                    0);
    s = seen(ctx, &a->dde_execute_topic);
    if (s != NULL && s->ok &&
        (a->dde_execute_topic[0] == '$' ||
         sb_topic_validate(a->dde_execute_topic, strlen(a->dde_execute_topic), &why) != 0)) {
        sub_path(p, path, "execute_topic");
        sb_config__error(ctx, s->value, p, "invalid topic %s: %s",
                         sb_config__quote(q, sizeof q, a->dde_execute_topic),
                         why != NULL ? why : "'$' is reserved for the broker");
    }

    ts = seen(ctx, &a->topic);
    if (ts == NULL) {
        char *def = sb_strdup(DDE_DEFAULT_TOPIC);
        if (def == NULL) {
            ctx->nomem = 1;
            return;
        }
        sb_free(a->topic);
        a->topic = def;
        return;
    }
    sub_path(p, path, "topic");
    if (!ts->ok || check_placeholders(ctx, ts, p, a->topic, placeholders,
                                      "{adapter}, {service}, {dde_topic}, {item}") != 0)
        return;
    for (int i = 0; i < 2; i++) {
        const char *ph = i == 0 ? "{dde_topic}" : "{item}";
        level = template_level(a->topic, ph);
        if (level == -2)
            sb_config__error(ctx, ts->value, p,
                             "%s must be a whole topic level, as in plant/{dde_topic}/{item}", ph);
        else if (level == -3)
            sb_config__error(ctx, ts->value, p, "%s may appear only once", ph);
        else if (level == -1 && i == 1)
            sb_config__error(ctx, ts->value, p,
                             "needs {item}: every DDE item has a topic of its own");
        else if (level == -1 && server &&
                 (a->dde_topics_count != 1 || strcmp(a->dde_topics[0], "*") == 0))
            sb_config__error(ctx, ts->value, p,
                             "needs {dde_topic}: this server serves more than one DDE topic "
                             "(set dde_topics to one topic, or put {dde_topic} in the template)");
    }
}

static void check_adapter(sb_config__ctx *ctx, const yaml_node_t *node, sb_adapter_config *a,
                          const char *path, int type)
{
    const struct adapter_kind *kind;
    const sb_config__seen *s;
    char p[SB_CONFIG__PATH_MAX];
    int jsonl, mqtt, listen_bad = 0;

    check_unique(ctx, &ctx->adapter_names, "adapter", a->name, a, &a->name, node, path);
    if (type < 0)
        return; /* missing or unknown type, already reported */
    kind = &adapter_kinds[type];

    if (kind->server_key != NULL) {
        int is_listen = strcmp(kind->server_key, "listen") == 0;
        char **server = is_listen ? &a->listen : &a->path;
        const sb_config__seen *ss = seen(ctx, server), *cs = seen(ctx, &a->connect);
        if (ss != NULL && cs != NULL) {
            sub_path(p, path, "connect");
            sb_config__error(ctx, cs->key, p, "cannot be combined with %s", kind->server_key);
        } else if (ss == NULL && cs == NULL) {
            sb_config__error(ctx, node, path, "needs %s (server) or connect (client)",
                             kind->server_key);
        } else if (ss != NULL) {
            if ((s = seen(ctx, &a->reconnect_backoff_ms)) != NULL ||
                (s = seen(ctx, &a->reconnect_max_backoff_ms)) != NULL) {
                sub_path(p, path, (const char *)s->key->data.scalar.value);
                sb_config__error(ctx, s->key, p, "only for clients (connect), not with %s",
                                 kind->server_key);
            }
        } else if ((s = seen(ctx, &a->max_connections)) != NULL ||
                   (s = seen(ctx, &a->idle_timeout_ms)) != NULL ||
                   (s = seen(ctx, &a->frame_timeout_ms)) != NULL ||
                   (s = seen(ctx, &a->pipe_buffer)) != NULL) {
            sub_path(p, path, (const char *)s->key->data.scalar.value);
            sb_config__error(ctx, s->key, p, "only for servers (%s), not with connect",
                             kind->server_key);
        }
        if (type == TYPE_TCP || type == TYPE_UDP) {
            size_t before = ctx->error_count;
            sub_path(p, path, "listen");
            check_host_port(ctx, seen(ctx, &a->listen), p, a->listen, 1);
            listen_bad = ctx->error_count != before;
            sub_path(p, path, "connect");
            check_host_port(ctx, seen(ctx, &a->connect), p, a->connect, 0);
        }
    }

    mqtt = a->protocol != NULL && strcmp(a->protocol, "mqtt") == 0;
    if (mqtt && (!kind->stream || type == TYPE_EXEC || seen(ctx, &a->connect) != NULL)) {
        sub_path(p, path, "protocol");
        sb_config__error(ctx, seen(ctx, &a->protocol)->value, p,
                         "mqtt is served on listeners (tcp listen, unix or pipe path); the broker "
                         "is not an MQTT client");
    }
    if (!mqtt && (s = seen(ctx, &a->max_queued)) != NULL) {
        sub_path(p, path, "max_queued");
        sb_config__error(ctx, s->key, p, "only for protocol mqtt");
    }
    if (!mqtt && (s = seen(ctx, &a->session_expiry_ms)) != NULL) {
        sub_path(p, path, "session_expiry");
        sb_config__error(ctx, s->key, p, "only for protocol mqtt");
    }
    check_raw_keys(ctx, a, path);
    if (type == TYPE_TCP)
        check_tls(ctx, node, a, path);
    if (!listen_bad)
        check_anonymous(ctx, node, a, path, mqtt);

    jsonl = a->protocol != NULL && strcmp(a->protocol, "jsonl") == 0;
    s = seen(ctx, &a->framing);
    if (jsonl && !kind->stream) {
        sub_path(p, path, "protocol");
        sb_config__error(ctx, seen(ctx, &a->protocol)->value, p,
                         "jsonl needs a stream adapter (tcp, unix, pipe or exec), not %s",
                         adapter_types[type]);
    } else if ((jsonl || mqtt) && s != NULL) {
        sub_path(p, path, "framing");
        sb_config__error(ctx, s->key, p, "not allowed with protocol %s",
                         jsonl ? "jsonl (one JSON object per line)" : "mqtt");
    } else if (s != NULL && s->ok && type != TYPE_DDE) { /* check_dde refuses any */
        const char *why = NULL;
        if (type == TYPE_UDP && strcmp(a->framing, "datagram") != 0)
            why = "must be datagram for type udp";
        else if (type == TYPE_MAILSLOT && strcmp(a->framing, "message") != 0)
            why = "must be message for type mailslot";
        else if (type != TYPE_UDP && strcmp(a->framing, "datagram") == 0)
            why = "datagram framing is only valid for type udp";
        else if (type != TYPE_PIPE && type != TYPE_MAILSLOT && strcmp(a->framing, "message") == 0)
            why = "message framing is only valid for types pipe and mailslot";
        if (why != NULL) {
            sub_path(p, path, "framing");
            sb_config__error(ctx, s->value, p, "%s", why);
        }
    }
    if (a->framing == NULL) {
        /* jsonl is line-delimited; streams default to lines, udp to datagrams,
         * mailslots to one message per mailslot message */
        a->framing = sb_strdup(type == TYPE_UDP        ? "datagram"
                               : type == TYPE_MAILSLOT ? "message"
                                                       : "line");
        if (a->framing == NULL)
            ctx->nomem = 1;
    }

    if (type == TYPE_UDP) {
        s = seen(ctx, &a->max_message);
        if (s == NULL) {
            a->max_message = UDP_MAX_MESSAGE;
        } else if (s->ok && a->max_message > UDP_MAX_MESSAGE) {
            sub_path(p, path, "max_message");
            sb_config__error(ctx, s->value, p, "must be between 1 and %d for type udp",
                             UDP_MAX_MESSAGE);
        }
    }

    if (type == TYPE_MAILSLOT)
        check_mailslot(ctx, a, path);
    if (type == TYPE_FILEMAP)
        check_filemap(ctx, a, path); /* TEMPORARY: see check_filemap */

    if (type == TYPE_EXEC && seen(ctx, &a->command) == NULL) {
        sub_path(p, path, "command");
        sb_config__error(ctx, node, p, "required for type exec");
    }

    if ((s = seen(ctx, &a->security)) != NULL && s->ok) {
        sub_path(p, path, "security");
        sb_config__check_sddl(ctx, s->value, p, a->security);
    }

    check_backoff(ctx, path, &a->restart_backoff_ms, "restart_backoff", &a->restart_max_backoff_ms,
                  "restart_max_backoff");
    check_backoff(ctx, path, &a->reconnect_backoff_ms, "reconnect_backoff",
                  &a->reconnect_max_backoff_ms, "reconnect_max_backoff");
    if (type == TYPE_DDE) {
        check_dde(ctx, node, a, path);
        return;
    }
    sub_path(p, path, "topic");
    check_topic_template(ctx, seen(ctx, &a->topic), p, a->topic);
}

static int parse_adapter(sb_config__ctx *ctx, const yaml_node_t *node, void *array, size_t index,
                         const char *path)
{
    sb_adapter_config *a = (sb_adapter_config *)array + index;
    const yaml_node_t *type_node;
    int type = -1, rc;

    sb_config__seen_reset(ctx);
    a->pos = node_pos(node);
    rc = sb_config__defaults(ctx, &adapter_section, a);
    if (rc != 0)
        return rc;

    /* The type decides which keys are allowed, so it is read first. */
    type_node = sb_config__lookup(ctx, node, "type");
    if (type_node != NULL && type_node->type == YAML_SCALAR_NODE)
        type = type_index((const char *)type_node->data.scalar.value);
    ctx->mask = type >= 0 ? 1u << type : ~0u;
    ctx->type_name = type >= 0 ? adapter_types[type] : NULL;
    rc = sb_config__mapping(ctx, node, &adapter_section, a, path);
    ctx->mask = ~0u;
    ctx->type_name = NULL;
    if (rc != 0)
        return rc;
    if (a->name == NULL)
        ctx->adapter_unnamed = 1;
    if (node->type == YAML_MAPPING_NODE)
        check_adapter(ctx, node, a, path, type);
    return ctx->nomem ? SB_ENOMEM : 0;
}

/* ---- routes ---- */

static void check_route_targets(sb_config__ctx *ctx, sb_route_config *r, const char *path)
{
    const sb_config__seen *s = seen(ctx, &r->to);
    char p[SB_CONFIG__PATH_MAX], q[96];

    if (s == NULL || !s->ok || !ctx->adapters_ok)
        return;
    /* An adapter whose name was rejected would make every route naming it
     * report a second, misleading error. */
    if (ctx->adapter_unnamed)
        return;
    for (size_t i = 0; i < r->to_count; i++) {
        const yaml_node_t *el = s->value;
        if (el->type == YAML_SEQUENCE_NODE) {
            el = yaml_document_get_node(ctx->doc, el->data.sequence.items.start[i]);
            char idx[40];
            snprintf(idx, sizeof idx, "to[%zu]", i);
            sub_path(p, path, idx);
        } else {
            sub_path(p, path, "to");
        }
        const sb_adapter_config *a = sb_map_get(&ctx->adapter_names, r->to[i]);
        if (a == NULL) {
            sb_config__error(ctx, el, p, "unknown adapter %s (not declared under adapters)",
                             sb_config__quote(q, sizeof q, r->to[i]));
            continue;
        }
        if (a->reply != NULL) {
            /* its connections carry replies: deliveries would mix with them */
            sb_config__error(ctx, el, p,
                             "adapter %s answers its producers (reply): it cannot also be a "
                             "destination",
                             sb_config__quote(q, sizeof q, r->to[i]));
            continue;
        }
        for (size_t j = 0; j < i; j++) {
            if (strcmp(r->to[j], r->to[i]) == 0) {
                sb_config__error(ctx, el, p, "adapter %s listed twice",
                                 sb_config__quote(q, sizeof q, r->to[i]));
                break;
            }
        }
    }
}

static void check_route(sb_config__ctx *ctx, const yaml_node_t *node, sb_route_config *r,
                        const char *path)
{
    char p[SB_CONFIG__PATH_MAX];

    check_unique(ctx, &ctx->route_names, "route", r->name, r, &r->name, node, path);
    check_route_targets(ctx, r, path);
    sub_path(p, path, "retry");
    check_backoff(ctx, p, &r->backoff_ms, "backoff", &r->max_backoff_ms, "max_backoff");
    if (r->dedup_header == NULL)
        r->dedup_window_ms = 0; /* the window only means something with a header */
}

static int parse_route(sb_config__ctx *ctx, const yaml_node_t *node, void *array, size_t index,
                       const char *path)
{
    sb_route_config *r = (sb_route_config *)array + index;
    int rc;

    sb_config__seen_reset(ctx);
    r->pos = node_pos(node);
    rc = sb_config__defaults(ctx, &route_section, r);
    if (rc == 0)
        rc = sb_config__mapping(ctx, node, &route_section, r, path);
    if (rc != 0)
        return rc;
    if (node->type == YAML_MAPPING_NODE)
        check_route(ctx, node, r, path);
    return ctx->nomem ? SB_ENOMEM : 0;
}

/* ---- the root ---- */

static void free_adapter(void *elem)
{
    sb_adapter_config_free(elem);
}

static void free_route(void *elem)
{
    sb_route_config_free(elem);
}

#define C(member) offsetof(sb_config, member)

static const sb_config__field root_fields[] = {
    {.key = "broker", .type = SB_CT_SECTION, .offset = C(broker), .section = &broker_section},
    /* adapters before routes: a route's `to` is checked against them */
    {.key = "adapters",
     .type = SB_CT_LIST,
     .offset = C(adapters),
     .count_off = C(adapter_count),
     .elem_size = sizeof(sb_adapter_config),
     .item = parse_adapter,
     .item_free = free_adapter},
    {.key = "routes",
     .type = SB_CT_LIST,
     .offset = C(routes),
     .count_off = C(route_count),
     .elem_size = sizeof(sb_route_config),
     .item = parse_route,
     .item_free = free_route},
};
const sb_config__section sb_config__root = TABLE(root_fields);

/* ---- public: copies, equality ---- */

void sb_adapter_config_free(sb_adapter_config *cfg)
{
    if (cfg != NULL)
        sb_config__release(&adapter_section, cfg);
}

void sb_route_config_free(sb_route_config *cfg)
{
    if (cfg != NULL)
        sb_config__release(&route_section, cfg);
}

int sb_adapter_config_copy(sb_adapter_config *out, const sb_adapter_config *in)
{
    memset(out, 0, sizeof *out);
    out->pos = in->pos;
    return sb_config__copy(&adapter_section, out, in) == 0 ? 0 : SB_ENOMEM;
}

int sb_route_config_copy(sb_route_config *out, const sb_route_config *in)
{
    memset(out, 0, sizeof *out);
    out->pos = in->pos;
    return sb_config__copy(&route_section, out, in) == 0 ? 0 : SB_ENOMEM;
}

int sb_adapter_config_equal(const sb_adapter_config *a, const sb_adapter_config *b)
{
    return sb_config__equal(&adapter_section, a, b);
}

int sb_route_config_equal(const sb_route_config *a, const sb_route_config *b)
{
    return sb_config__equal(&route_section, a, b);
}
