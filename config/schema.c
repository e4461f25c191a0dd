/*
 * The configuration schema of the broker and routes sections: one table per
 * section, {key, kind, flags, default, min, max}, and the few checks a table
 * cannot say (names unique, route destinations declared and able to take
 * deliveries, backoff <= max backoff). Adapters are walked through their
 * type's own table (adapters.c, config/adapter_keys.h).
 *
 * Every field of sb_route_config except `pos` and `to_transform` must have
 * a row here: copy, free and equality are driven by these tables (`to` and
 * `transform`, SB_KEY_CUSTOM rows, by config/transforms.c).
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

/* Enum members are stored through int *. */
_Static_assert(sizeof(sb_durability) == sizeof(int), "enum size");
_Static_assert(sizeof(sb_overflow) == sizeof(int), "enum size");
_Static_assert(sizeof(sb_desktop_host) == sizeof(int), "enum size");

/* ---- choices (the index is the stored value for SB_KEY_ENUM) ---- */

static const char *const log_levels[] = {"debug", "info", "warn", "error", "off", NULL};
_Static_assert(SB_LOG_DEBUG == 0 && SB_LOG_INFO == 1 && SB_LOG_WARN == 2 && SB_LOG_ERROR == 3 &&
                   SB_LOG_OFF == 4,
               "log_levels follows sb_log_level");

static const char *const desktop_hosts[] = {"auto", "in-process", "agent", NULL};
_Static_assert(SB_DESKTOP_AUTO == 0 && SB_DESKTOP_IN_PROCESS == 1 && SB_DESKTOP_AGENT == 2,
               "desktop_hosts follows sb_desktop_host");

static const char *const durabilities[] = {"fsync", "batched", "memory", NULL};
_Static_assert(SB_DURABILITY_FSYNC == 0 && SB_DURABILITY_BATCHED == 1 && SB_DURABILITY_MEMORY == 2,
               "durabilities follows sb_durability");

static const char *const overflows[] = {"reject", "drop-oldest", NULL};
_Static_assert(SB_OVERFLOW_REJECT == 0 && SB_OVERFLOW_DROP_OLDEST == 1,
               "overflows follows sb_overflow");

/* ---- broker ---- */

#define B(member) offsetof(sb_broker_config, member)

static const sb_config_key store_fields[] = {
    {.key = "commit_max_batch",
     .kind = SB_KEY_INT,
     .offset = B(commit_max_batch),
     .def = 1024,
     .min = 1,
     .max = 65536},
    {.key = "commit_max_delay_us",
     .kind = SB_KEY_INT,
     .offset = B(commit_max_delay_us),
     .def = 0,
     .min = 0,
     .max = 1000000},
    {.key = "max_db_bytes",
     .kind = SB_KEY_SIZE,
     .offset = B(max_db_bytes),
     .def = 0,
     .min = 0,
     .max = INT64_MAX},
    /* paging (service/paging.c): what of the queues stays in memory */
    {.key = "queue_window",
     .kind = SB_KEY_INT,
     .offset = B(queue_window),
     .def = 4096,
     .min = 1,
     .max = 1000000},
    {.key = "queue_memory",
     .kind = SB_KEY_SIZE,
     .offset = B(queue_memory),
     .def = 64 * 1024 * 1024,
     .min = 64 * 1024,
     .max = INT64_MAX},
    {.key = "deliver_before_commit",
     .kind = SB_KEY_BOOL,
     .offset = B(deliver_before_commit),
     .def = 1},
};
static const sb_config_table store_section = SB_CONFIG_TABLE(store_fields);

static const sb_config_key log_fields[] = {
    {.key = "level",
     .kind = SB_KEY_ENUM,
     .offset = B(log_level),
     .def = SB_LOG_INFO,
     .choices = log_levels},
    {.key = "file", .kind = SB_KEY_STRING, .offset = B(log_file)},
    {.key = "stderr", .kind = SB_KEY_BOOL, .offset = B(log_stderr), .def = 1},
};
static const sb_config_table log_section = SB_CONFIG_TABLE(log_fields);

static const sb_config_key admin_fields[] = {
    {.key = "endpoint", .kind = SB_KEY_STRING, .offset = B(admin_endpoint), .def_str = "default"},
    {.key = "security", .kind = SB_KEY_STRING, .offset = B(admin_security)},
};
static const sb_config_table admin_section = SB_CONFIG_TABLE(admin_fields);

static const sb_config_key auth_fields[] = {
    {.key = "password_file", .kind = SB_KEY_STRING, .offset = B(auth_password_file)},
    {.key = "acl_file", .kind = SB_KEY_STRING, .offset = B(auth_acl_file)},
};
static const sb_config_table auth_section = SB_CONFIG_TABLE(auth_fields);

static const sb_config_key agent_fields[] = {
    {.key = "endpoint", .kind = SB_KEY_STRING, .offset = B(agent_endpoint)},
    {.key = "start", .kind = SB_KEY_BOOL, .offset = B(agent_start), .def = 1},
    {.key = "types",
     .kind = SB_KEY_STRLIST,
     .offset = B(agent_types),
     .count_off = B(agent_types_count)},
    {.key = "restart_backoff",
     .kind = SB_KEY_DURATION,
     .offset = B(agent_restart_backoff_ms),
     .def = SECONDS,
     .min = 1,
     .max = DAYS},
    {.key = "restart_max_backoff",
     .kind = SB_KEY_DURATION,
     .offset = B(agent_restart_max_backoff_ms),
     .def = MINUTES,
     .min = 1,
     .max = DAYS},
};
static const sb_config_table agent_section = SB_CONFIG_TABLE(agent_fields);

static const sb_config_key http_fields[] = {
    {.key = "listen", .kind = SB_KEY_STRING, .flags = SB_KEY_REQUIRED, .offset = B(http_listen)},
    {.key = "anonymous", .kind = SB_KEY_BOOL, .offset = B(http_anonymous), .def = 0},
    {.key = "per_queue_metrics", .kind = SB_KEY_BOOL, .offset = B(http_per_queue), .def = 0},
    {.key = "max_connections",
     .kind = SB_KEY_INT,
     .offset = B(http_max_connections),
     .def = 32,
     .min = 1,
     .max = 1024},
    {.key = "timeout",
     .kind = SB_KEY_DURATION,
     .offset = B(http_timeout_ms),
     .def = 10 * SECONDS,
     .min = SECONDS,
     .max = HOURS},
};
static const sb_config_table http_section = SB_CONFIG_TABLE(http_fields);

static const sb_config_key broker_fields[] = {
    {.key = "data_dir", .kind = SB_KEY_STRING, .offset = B(data_dir), .def_str = "./data"},
    {.key = "store", .kind = SB_KEY_SECTION, .section = &store_section},
    {.key = "log", .kind = SB_KEY_SECTION, .section = &log_section},
    {.key = "admin", .kind = SB_KEY_SECTION, .section = &admin_section},
    {.key = "auth", .kind = SB_KEY_SECTION, .section = &auth_section},
    {.key = "sys_interval",
     .kind = SB_KEY_DURATION,
     .offset = B(sys_interval_ms),
     .def = 10 * SECONDS,
     .min = 0,
     .max = DAYS},
    {.key = "desktop",
     .kind = SB_KEY_ENUM,
     .offset = B(desktop),
     .def = SB_DESKTOP_AUTO,
     .choices = desktop_hosts},
    {.key = "agent", .kind = SB_KEY_SECTION, .section = &agent_section},
    {.key = "http", .kind = SB_KEY_SECTION, .section = &http_section},
};
static const sb_config_table broker_section = SB_CONFIG_TABLE(broker_fields);

/* ---- routes ---- */

#define R(member) offsetof(sb_route_config, member)

static const sb_config_key retry_fields[] = {
    {.key = "max_attempts",
     .kind = SB_KEY_INT,
     .offset = R(max_attempts),
     .def = 10,
     .min = 1,
     .max = 1000000},
    {.key = "backoff",
     .kind = SB_KEY_DURATION,
     .offset = R(backoff_ms),
     .def = 100,
     .min = 1,
     .max = DAYS},
    {.key = "max_backoff",
     .kind = SB_KEY_DURATION,
     .offset = R(max_backoff_ms),
     .def = 1 * MINUTES,
     .min = 1,
     .max = DAYS},
};
static const sb_config_table retry_section = SB_CONFIG_TABLE(retry_fields);

static const sb_config_key dedup_fields[] = {
    {.key = "header", .kind = SB_KEY_STRING, .flags = SB_KEY_REQUIRED, .offset = R(dedup_header)},
    {.key = "window",
     .kind = SB_KEY_DURATION,
     .offset = R(dedup_window_ms),
     .def = 10 * MINUTES,
     .min = 1,
     .max = 365 * DAYS},
};
static const sb_config_table dedup_section = SB_CONFIG_TABLE(dedup_fields);

static const sb_config_key route_fields[] = {
    {.key = "name", .kind = SB_KEY_NAME, .flags = SB_KEY_REQUIRED, .offset = R(name)},
    {.key = "from",
     .kind = SB_KEY_FILTERS,
     .flags = SB_KEY_REQUIRED,
     .offset = R(from),
     .count_off = R(from_count)},
    /* names, or {adapter, transform} entries (config/transforms.c) */
    {.key = "to", .kind = SB_KEY_CUSTOM, .offset = R(to), .item = sb_config__parse_to},
    {.key = "transform",
     .kind = SB_KEY_CUSTOM,
     .flags = SB_KEY_UNLISTED,
     .offset = R(transform),
     .item = sb_config__parse_transform},
    {.key = "republish", .kind = SB_KEY_BOOL, .flags = SB_KEY_UNLISTED, .offset = R(republish)},
    {.key = "durability",
     .kind = SB_KEY_ENUM,
     .offset = R(durability),
     .def = SB_DURABILITY_FSYNC,
     .choices = durabilities},
    {.key = "retry", .kind = SB_KEY_SECTION, .section = &retry_section},
    {.key = "ttl",
     .kind = SB_KEY_DURATION,
     .offset = R(ttl_ms),
     .def = 0,
     .min = 0,
     .max = 3650 * DAYS},
    {.key = "max_depth",
     .kind = SB_KEY_INT64,
     .offset = R(max_depth),
     .def = 0,
     .min = 0,
     .max = INT64_MAX},
    {.key = "max_bytes",
     .kind = SB_KEY_SIZE,
     .offset = R(max_bytes),
     .def = 0,
     .min = 0,
     .max = INT64_MAX},
    {.key = "overflow",
     .kind = SB_KEY_ENUM,
     .offset = R(overflow),
     .def = SB_OVERFLOW_REJECT,
     .choices = overflows},
    {.key = "retain", .kind = SB_KEY_BOOL, .offset = R(retain), .def = 0},
    {.key = "dedup", .kind = SB_KEY_SECTION, .section = &dedup_section},
    {.key = "lease",
     .kind = SB_KEY_DURATION,
     .offset = R(lease_ms),
     .def = 30 * SECONDS,
     .min = 1,
     .max = DAYS},
};
static const sb_config_table route_section = SB_CONFIG_TABLE(route_fields);

/* ---- helpers for the checks ---- */

static const sb_config__seen *seen(sb_config__ctx *ctx, const void *target)
{
    return sb_config__seen_find(ctx, target);
}

static void sub_path(char *out, const char *path, const char *key)
{
    sb_config__path(out, path, ".", key);
}

sb_config_pos sb_config__node_pos(const yaml_node_t *node)
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
void sb_config__check_unique(sb_config__ctx *ctx, sb_map *names, const char *what,
                             const char *name, void *item, char **name_slot,
                             const yaml_node_t *node, const char *path)
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

/* ---- routes ---- */

static void check_route_targets(sb_config__ctx *ctx, sb_route_config *r, const char *path)
{
    const sb_config__seen *s = seen(ctx, &r->to);
    char p[SB_CONFIG__PATH_MAX], q[96], why[256];

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
        if (a->keys != NULL && a->keys->destination != NULL &&
            !a->keys->destination(a, why, sizeof why)) {
            sb_config__error(ctx, el, p, "%s", why);
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

    sb_config__check_unique(ctx, &ctx->route_names, "route", r->name, r, &r->name, node, path);
    check_route_targets(ctx, r, path);
    if (r->from_count > 0)
        sb_config__check_transforms(ctx, r, path);
    if (r->republish && r->transform == NULL) {
        const sb_config__seen *s = seen(ctx, &r->republish);
        sub_path(p, path, "republish");
        sb_config__error(ctx, s != NULL ? s->value : node, p,
                         "needs the route's transform (without one, messages would be published "
                         "again as they are, onto the route's own topics)");
    }
    sub_path(p, path, "retry");
    check_backoff(ctx, p, &r->backoff_ms, "backoff", &r->max_backoff_ms, "max_backoff");
    if (r->dedup_header == NULL)
        r->dedup_window_ms = 0; /* the window only means something with a header */
}

static int parse_route(void *ctx_, const void *node_, void *array, size_t index, const char *path)
{
    sb_config__ctx *ctx = ctx_;
    const yaml_node_t *node = node_;
    sb_route_config *r = (sb_route_config *)array + index;
    int rc;

    sb_config__seen_reset(ctx);
    r->pos = sb_config__node_pos(node);
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

static void free_route(void *elem)
{
    sb_route_config_free(elem);
}

#define C(member) offsetof(sb_config, member)

static const sb_config_key root_fields[] = {
    {.key = "broker", .kind = SB_KEY_SECTION, .offset = C(broker), .section = &broker_section},
    /* adapters before routes: a route's `to` is checked against them */
    {.key = "adapters",
     .kind = SB_KEY_LIST,
     .offset = C(adapters),
     .count_off = C(adapter_count),
     .elem_size = sizeof(sb_adapter_config),
     .item = sb_config__parse_adapter,
     .item_free = sb_config__free_adapter},
    {.key = "routes",
     .kind = SB_KEY_LIST,
     .offset = C(routes),
     .count_off = C(route_count),
     .elem_size = sizeof(sb_route_config),
     .item = parse_route,
     .item_free = free_route,
     .section = &route_section}, /* not walked: an element's keys, for the JSON Schema */
};
const sb_config_table sb_config__root = SB_CONFIG_TABLE(root_fields);

/* ---- public: copies, equality ---- */

void sb_route_config_free(sb_route_config *cfg)
{
    if (cfg != NULL) {
        sb_config__release(&route_section, cfg);
        sb_config__route_dests_release(cfg);
    }
}

int sb_route_config_copy(sb_route_config *out, const sb_route_config *in)
{
    memset(out, 0, sizeof *out);
    out->pos = in->pos;
    if (sb_config__copy(&route_section, out, in) != 0 || sb_config__route_dests_copy(out, in) != 0)
        return SB_ENOMEM;
    return 0;
}

int sb_route_config_equal(const sb_route_config *a, const sb_route_config *b)
{
    return sb_config__equal(&route_section, a, b) && sb_config__route_dests_equal(a, b);
}
