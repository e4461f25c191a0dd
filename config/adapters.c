/*
 * Adapters in the config: the registry of the types' key tables
 * (config/adapter_keys.h), the walk of one adapter entry (common keys, then
 * its type's table, role and protocol restrictions, the type's validate
 * hook), the helpers validate hooks report through, and copy, free and
 * equality of an adapter config, all driven by the type's table.
 */
#include "config/config_int.h"
#include "service/alloc.h"
#include "service/error.h"
#include "service/topic.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* ---- the registry ---- */

static const sb_adapter_keys *registry[SB_ADAPTER_KEYS_MAX];
static const char *type_names[SB_ADAPTER_KEYS_MAX + 1]; /* NULL-terminated: `type` choices */
static size_t registry_count;

int sb_adapter_keys_register(const sb_adapter_keys *keys, sb_error *err)
{
    if (keys->version != SB_ADAPTER_KEYS_VERSION)
        return sb_error_set(err, SB_EVERSION, 0,
                            "adapter type %s: key table version %d, this broker has %d",
                            keys->type, keys->version, SB_ADAPTER_KEYS_VERSION);
    if (sb_adapter_keys_find(keys->type) != NULL)
        return sb_error_set(err, SB_EEXIST, 0, "adapter type %s: keys registered twice",
                            keys->type);
    if (registry_count == SB_ADAPTER_KEYS_MAX)
        return sb_error_set(err, SB_EFULL, 0, "adapter type %s: the key registry is full (%d)",
                            keys->type, SB_ADAPTER_KEYS_MAX);
    registry[registry_count] = keys;
    type_names[registry_count] = keys->type;
    registry_count++;
    return 0;
}

const sb_adapter_keys *sb_adapter_keys_find(const char *type)
{
    for (size_t i = 0; type != NULL && i < registry_count; i++)
        if (strcmp(registry[i]->type, type) == 0)
            return registry[i];
    return NULL;
}

const char *const *sb_config__type_names(void)
{
    return type_names;
}

static int key_is(const yaml_node_t *key, const char *name)
{
    size_t n = strlen(name);
    return key->type == YAML_SCALAR_NODE && key->data.scalar.length == n &&
           memcmp(key->data.scalar.value, name, n) == 0;
}

int sb_config__other_type_key(const char *type, const yaml_node_t *key)
{
    for (size_t i = 0; i < registry_count; i++) {
        const sb_config_table *t = &registry[i]->table;
        if (strcmp(registry[i]->type, type) == 0)
            continue;
        for (size_t k = 0; k < t->count; k++)
            if (key_is(key, t->keys[k].key))
                return 1;
    }
    return 0;
}

/* ---- walking one adapter ---- */

#define A(member) offsetof(sb_adapter_config, member)

/* The keys every adapter has, before its type's. */
static const sb_config_key common_rows[] = {
    {.key = "name",
     .kind = SB_KEY_NAME,
     .flags = SB_KEY_REQUIRED | SB_KEY_ADAPTER,
     .offset = A(name)},
    {.key = "type",
     .kind = SB_KEY_CHOICE,
     .flags = SB_KEY_REQUIRED | SB_KEY_ADAPTER,
     .offset = A(type),
     .choices = type_names},
};
#define COMMON_COUNT (sizeof common_rows / sizeof common_rows[0])
const sb_config_table sb_config__adapter_common = SB_CONFIG_TABLE(common_rows);

static void sub_path(char *out, const char *path, const char *key)
{
    sb_config__path(out, path, ".", key);
}

/* The path of the key seen as s: adapters[N].[section.]key */
static void seen_path(char *out, const sb_adapter_check *chk, const sb_config__seen *s)
{
    char k[SB_CONFIG__PATH_MAX];
    if (s->section != NULL)
        snprintf(k, sizeof k, "%s.%s", s->section, s->field->key);
    else
        snprintf(k, sizeof k, "%s", s->field->key);
    sub_path(out, chk->path, k);
}

static void join_bits(char *out, size_t n, unsigned bits, const char *const *names)
{
    size_t len = 0;
    out[0] = '\0';
    for (unsigned i = 0; names[i] != NULL && len < n; i++)
        if (bits & (1u << i))
            len += (size_t)snprintf(out + len, n - len, "%s%s", len ? " or " : "", names[i]);
}

void sb_config__check_roles(sb_adapter_check *chk, const sb_adapter_keys *keys)
{
    static const char *const role_names[] = {"server", "client", NULL};
    static const char *const proto_names[] = {"raw", "jsonl", "mqtt", NULL};
    sb_config__ctx *ctx = chk->ctx;
    unsigned role = keys->role_of != NULL ? keys->role_of(chk->cfg) : 0;
    unsigned proto = keys->protocol_of != NULL ? keys->protocol_of(chk->cfg) : 0;
    const char *said[SB_CONFIG__MAX_SEEN];
    size_t said_count = 0;

    /* Two passes: rows with a message of their own first, so that it is
     * the one said when several keys of a mapping are out of place. */
    for (size_t n = 0; n < 2 * ctx->seen_count; n++) {
        sb_config__seen *s = &ctx->seen[n % ctx->seen_count];
        const sb_config_key *f = s->field;
        char p[SB_CONFIG__PATH_MAX], msg[256], names[64];
        size_t k;
        if (f == NULL || (n < ctx->seen_count) != (f->why != NULL))
            continue;
        if (f->protocols != 0 && proto != 0 && !(f->protocols & proto)) {
            join_bits(names, sizeof names, f->protocols, proto_names);
            seen_path(p, chk, s);
            sb_config__error(ctx, s->key, p, "only for protocol %s", names);
            s->ok = 0;
            continue;
        }
        if (f->roles == 0 || role == 0 || (f->roles & role))
            continue;
        s->ok = 0;
        /* One role error per mapping: a client given three server keys
         * hears it once (the first, in table order). */
        for (k = 0; k < said_count && said[k] != s->section; k++)
            ;
        if (k < said_count)
            continue;
        said[said_count++] = s->section;
        if (f->why != NULL) {
            /* the row's own message; its %s is the server key */
            snprintf(msg, sizeof msg, f->why, keys->server_key != NULL ? keys->server_key : "");
        } else {
            join_bits(names, sizeof names, f->roles, role_names);
            snprintf(msg, sizeof msg, "only for role %s", names);
        }
        seen_path(p, chk, s);
        sb_config__error(ctx, s->key, p, "%s", msg);
    }
}

int sb_config__parse_adapter(void *ctx_, const void *node_, void *array, size_t index,
                             const char *path)
{
    sb_config__ctx *ctx = ctx_;
    const yaml_node_t *node = node_;
    sb_adapter_config *a = (sb_adapter_config *)array + index;
    const sb_adapter_keys *keys = NULL;
    const yaml_node_t *type_node;
    sb_config_key *rows;
    sb_config_table table;
    size_t n = COMMON_COUNT;
    int rc;

    sb_config__seen_reset(ctx);
    a->pos = sb_config__node_pos(node);

    /* The type decides which keys there are, so it is read first. */
    type_node = sb_config__lookup(ctx, node, "type");
    if (type_node != NULL && type_node->type == YAML_SCALAR_NODE)
        keys = sb_adapter_keys_find((const char *)type_node->data.scalar.value);
    if (keys != NULL) {
        n += keys->table.count;
        a->keys = keys;
        a->settings = sb_calloc(1, keys->settings_size > 0 ? keys->settings_size : 1);
        if (a->settings == NULL) {
            ctx->nomem = 1;
            return SB_ENOMEM;
        }
    }
    rows = sb_malloc(n * sizeof *rows);
    if (rows == NULL) {
        ctx->nomem = 1;
        return SB_ENOMEM;
    }
    memcpy(rows, common_rows, sizeof common_rows);
    if (keys != NULL)
        memcpy(rows + COMMON_COUNT, keys->table.keys, keys->table.count * sizeof *rows);
    table.keys = rows;
    table.count = n;

    ctx->adapter = a;
    ctx->adapter_table = &table;
    ctx->type_name = keys != NULL ? keys->type : NULL;
    rc = sb_config__defaults(ctx, &table, a->settings);
    if (rc == 0)
        rc = sb_config__mapping(ctx, node, &table, a->settings, path);
    ctx->adapter = NULL;
    ctx->adapter_table = NULL;
    ctx->type_name = NULL;
    if (rc != 0) {
        sb_free(rows);
        return rc;
    }

    if (a->name == NULL)
        ctx->adapter_unnamed = 1;
    /* rows stays until the checks are done: the seen keys point at it */
    if (node->type == YAML_MAPPING_NODE) {
        sb_adapter_check chk = {ctx, node, path, a};
        sb_config__check_unique(ctx, &ctx->adapter_names, "adapter", a->name, a, &a->name, node,
                                path);
        if (keys != NULL) {
            sb_config__check_roles(&chk, keys);
            if (keys->validate != NULL)
                keys->validate(&chk, a);
        }
    }
    sb_free(rows);
    return ctx->nomem ? SB_ENOMEM : 0;
}

void sb_config__free_adapter(void *elem)
{
    sb_adapter_config_free(elem);
}

/* ---- what validate hooks report through ---- */

int sb_adapter_check_seen(const sb_adapter_check *chk, const void *value)
{
    const sb_config__seen *s = sb_config__seen_find(chk->ctx, value);
    if (s == NULL)
        return SB_SEEN_NO;
    return s->ok ? SB_SEEN_OK : SB_SEEN_BAD;
}

const char *sb_adapter_check_key(const sb_adapter_check *chk, const void *value)
{
    const sb_config__seen *s = sb_config__seen_find(chk->ctx, value);
    return s != NULL ? (const char *)s->key->data.scalar.value : NULL;
}

const sb_config *sb_adapter_check_config(const sb_adapter_check *chk)
{
    return chk->ctx->cfg;
}

static void error_node(sb_adapter_check *chk, const yaml_node_t *node, const char *path,
                       const char *fmt, va_list ap)
{
    sb_config__verror_at(chk->ctx, (int)node->start_mark.line + 1,
                         (int)node->start_mark.column + 1, path, fmt, ap);
}

static void error_seen(sb_adapter_check *chk, const void *value, int at_key, const char *fmt,
                       va_list ap)
{
    const sb_config__seen *s = sb_config__seen_find(chk->ctx, value);
    char p[SB_CONFIG__PATH_MAX];
    if (s == NULL)
        return;
    seen_path(p, chk, s);
    error_node(chk, at_key ? s->key : s->value, p, fmt, ap);
}

void sb_adapter_error_at_key(sb_adapter_check *chk, const void *value, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    error_seen(chk, value, 1, fmt, ap);
    va_end(ap);
}

void sb_adapter_error_at_value(sb_adapter_check *chk, const void *value, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    error_seen(chk, value, 0, fmt, ap);
    va_end(ap);
}

void sb_adapter_error_at_element(sb_adapter_check *chk, const void *value, size_t index,
                                 const char *fmt, ...)
{
    const sb_config__seen *s = sb_config__seen_find(chk->ctx, value);
    const yaml_node_t *el;
    char p[SB_CONFIG__PATH_MAX], k[SB_CONFIG__PATH_MAX];
    va_list ap;
    if (s == NULL)
        return;
    el = s->value;
    index += s->first;
    if (el->type == YAML_SEQUENCE_NODE &&
        index < (size_t)(el->data.sequence.items.top - el->data.sequence.items.start)) {
        el = yaml_document_get_node(chk->ctx->doc, el->data.sequence.items.start[index]);
        snprintf(k, sizeof k, "%s[%zu]", s->field->key, index);
        sub_path(p, chk->path, k);
    } else {
        seen_path(p, chk, s);
    }
    va_start(ap, fmt);
    error_node(chk, el, p, fmt, ap);
    va_end(ap);
}

void sb_adapter_error_at(sb_adapter_check *chk, const char *key, const char *fmt, ...)
{
    const yaml_node_t *node = NULL;
    char p[SB_CONFIG__PATH_MAX];
    va_list ap;
    if (key != NULL) {
        node = sb_config__lookup(chk->ctx, chk->node, key);
        sub_path(p, chk->path, key);
    } else {
        snprintf(p, sizeof p, "%s", chk->path);
    }
    va_start(ap, fmt);
    error_node(chk, node != NULL ? node : chk->node, p, fmt, ap);
    va_end(ap);
}

void sb_adapter_check_sddl(sb_adapter_check *chk, const void *value)
{
    const sb_config__seen *s = sb_config__seen_find(chk->ctx, value);
    char p[SB_CONFIG__PATH_MAX];
    if (s == NULL || !s->ok)
        return;
    seen_path(p, chk, s);
    sb_config__check_sddl(chk->ctx, s->value, p, *(char *const *)value);
}

int sb_adapter_check_topic(sb_adapter_check *chk, const void *value,
                           const char *const *placeholders, const char *known_text)
{
    const sb_config__seen *s = sb_config__seen_find(chk->ctx, value);
    const char *topic, *why = NULL, *at;
    char path[SB_CONFIG__PATH_MAX], q[96];
    if (s == NULL || !s->ok)
        return 0;
    topic = *(char *const *)value;
    seen_path(path, chk, s);
    for (at = topic; (at = strchr(at, '{')) != NULL;) {
        size_t i;
        for (i = 0; placeholders[i] != NULL; i++)
            if (strncmp(at, placeholders[i], strlen(placeholders[i])) == 0)
                break;
        if (placeholders[i] == NULL) {
            const char *end = strchr(at, '}');
            char name[80];
            snprintf(name, sizeof name, "%.*s", end ? (int)(end - at + 1) : 1, at);
            sb_config__error(chk->ctx, s->value, path, "unknown placeholder %s (known: %s)",
                             sb_config__quote(q, sizeof q, name), known_text);
            return -1;
        }
        at += strlen(placeholders[i]);
    }
    if (topic[0] == '$') {
        sb_config__error(chk->ctx, s->value, path,
                         "must not start with '$' (reserved for the broker)");
        return -1;
    }
    if (sb_topic_validate(topic, strlen(topic), &why) != 0) {
        sb_config__error(chk->ctx, s->value, path, "invalid topic %s: %s",
                         sb_config__quote(q, sizeof q, topic), why);
        return -1;
    }
    return 0;
}

void sb_adapter_check_backoff(sb_adapter_check *chk, const int64_t *lo, const char *lo_key,
                              const int64_t *hi, const char *hi_key)
{
    const sb_config__seen *sl = sb_config__seen_find(chk->ctx, lo);
    const sb_config__seen *sh = sb_config__seen_find(chk->ctx, hi);
    char p[SB_CONFIG__PATH_MAX], d[32];
    if (*lo <= *hi || (sl != NULL && !sl->ok) || (sh != NULL && !sh->ok))
        return;
    if (sh != NULL) {
        sub_path(p, chk->path, hi_key);
        sb_config__error(chk->ctx, sh->value, p, "must be at least %s (%s)", lo_key,
                         sb_config__fmt_duration(d, sizeof d, *lo));
    } else if (sl != NULL) {
        sub_path(p, chk->path, lo_key);
        sb_config__error(chk->ctx, sl->value, p, "must be at most %s (%s)", hi_key,
                         sb_config__fmt_duration(d, sizeof d, *hi));
    }
}

int sb_adapter_check_set_string(sb_adapter_check *chk, char **slot, const char *s)
{
    char *copy = sb_strdup(s);
    if (copy == NULL) {
        chk->ctx->nomem = 1;
        return SB_ENOMEM;
    }
    sb_free(*slot);
    *slot = copy;
    return 0;
}

/* ---- copies, equality ---- */

void sb_adapter_config_free(sb_adapter_config *cfg)
{
    if (cfg == NULL)
        return;
    sb_free(cfg->name);
    sb_free(cfg->type);
    if (cfg->settings != NULL && cfg->keys != NULL)
        sb_config__release(&cfg->keys->table, cfg->settings);
    sb_free(cfg->settings);
    cfg->name = cfg->type = NULL;
    cfg->settings = NULL;
}

static int dup_string(char **out, const char *in)
{
    if (in == NULL)
        return 0;
    *out = sb_strdup(in);
    return *out != NULL ? 0 : SB_ENOMEM;
}

int sb_adapter_config_copy(sb_adapter_config *out, const sb_adapter_config *in)
{
    memset(out, 0, sizeof *out);
    out->pos = in->pos;
    out->inflight = in->inflight;
    out->keys = in->keys;
    if (dup_string(&out->name, in->name) != 0 || dup_string(&out->type, in->type) != 0)
        return SB_ENOMEM;
    if (in->settings == NULL || in->keys == NULL)
        return 0;
    out->settings = sb_calloc(1, in->keys->settings_size > 0 ? in->keys->settings_size : 1);
    if (out->settings == NULL)
        return SB_ENOMEM;
    /* Members without a row (values validate derived) are plain values:
     * copied bitwise; then what the rows own is copied deeply. */
    memcpy(out->settings, in->settings, in->keys->settings_size);
    sb_config__forget(&in->keys->table, out->settings);
    return sb_config__copy(&in->keys->table, out->settings, in->settings) == 0 ? 0 : SB_ENOMEM;
}

static int str_equal(const char *a, const char *b)
{
    return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

int sb_adapter_config_equal(const sb_adapter_config *a, const sb_adapter_config *b)
{
    if (!str_equal(a->name, b->name) || !str_equal(a->type, b->type) ||
        a->inflight != b->inflight || a->keys != b->keys)
        return 0;
    if (a->keys == NULL || a->settings == NULL || b->settings == NULL)
        return a->settings == b->settings;
    return sb_config__equal(&a->keys->table, a->settings, b->settings);
}

/* ---- building one in code ---- */

int sb_adapter_config_init(sb_adapter_config *out, const char *name, const char *type)
{
    const sb_adapter_keys *keys = sb_adapter_keys_find(type);
    sb_config__ctx ctx;

    memset(out, 0, sizeof *out);
    if (keys == NULL)
        return SB_ENOTFOUND;
    out->keys = keys;
    memset(&ctx, 0, sizeof ctx);
    ctx.adapter = out;
    if (dup_string(&out->name, name) != 0 || dup_string(&out->type, type) != 0 ||
        (out->settings = sb_calloc(1, keys->settings_size > 0 ? keys->settings_size : 1)) ==
            NULL ||
        sb_config__defaults(&ctx, &keys->table, out->settings) != 0) {
        sb_adapter_config_free(out);
        return SB_ENOMEM;
    }
    return 0;
}

static const sb_config_key *find_row(const sb_config_table *t, const char *key, size_t len)
{
    for (size_t i = 0; i < t->count; i++)
        if (strlen(t->keys[i].key) == len && memcmp(t->keys[i].key, key, len) == 0)
            return &t->keys[i];
    return NULL;
}

int sb_adapter_config_set(sb_adapter_config *cfg, const char *key, const char *value,
                          sb_error *err)
{
    const char *dot = strchr(key, '.');
    const sb_config_key *f;
    sb_config_errors errs = {0};
    sb_config__ctx ctx;
    yaml_node_t node;
    char *base;
    int rc;

    if (cfg->keys == NULL)
        return sb_error_set(err, SB_EINVAL, 0, "adapter %s: no keys", cfg->name);
    f = find_row(&cfg->keys->table, key, dot != NULL ? (size_t)(dot - key) : strlen(key));
    base = cfg->settings;
    if (f != NULL && dot != NULL && f->kind == SB_KEY_SECTION) {
        base += f->offset;
        f = find_row(f->section, dot + 1, strlen(dot + 1));
    } else if (dot != NULL) {
        f = NULL;
    }
    if (f == NULL || f->kind == SB_KEY_SECTION || f->kind == SB_KEY_LIST)
        return sb_error_set(err, SB_EINVAL, 0, "adapter type %s has no key %s", cfg->type, key);

    memset(&node, 0, sizeof node);
    node.type = YAML_SCALAR_NODE;
    node.data.scalar.value = (yaml_char_t *)(uintptr_t)value;
    node.data.scalar.length = strlen(value);
    node.data.scalar.style = YAML_SINGLE_QUOTED_SCALAR_STYLE; /* "" and "~" are values */
    memset(&ctx, 0, sizeof ctx);
    ctx.file = cfg->name;
    ctx.errs = &errs;
    ctx.nodes_left = 2;
    ctx.adapter = cfg;
    rc = sb_config__value(&ctx, f, &node, base, key);
    if (rc == 0 && ctx.nomem)
        rc = SB_ENOMEM;
    if (rc != 0)
        sb_error_set(err, rc, 0, "out of memory");
    else if (ctx.error_count > 0)
        rc = sb_error_set(err, SB_EINVAL, 0, "%s: %s", key,
                          errs.count > 0 ? errs.items[0].message : "invalid value");
    sb_config_errors_clear(&errs);
    return rc;
}

int sb_adapter_config_build(sb_adapter_config *out, const char *name, const char *type,
                            const char *const *pairs, sb_error *err)
{
    int rc = sb_adapter_config_init(out, name, type);
    if (rc == SB_ENOTFOUND)
        return sb_error_set(err, rc, 0, "adapter %s: no keys registered for type %s", name, type);
    if (rc != 0)
        return sb_error_set(err, rc, 0, "out of memory");
    for (size_t i = 0; pairs[i] != NULL; i += 2) {
        if (pairs[i + 1] == NULL)
            continue;
        if ((rc = sb_adapter_config_set(out, pairs[i], pairs[i + 1], err)) != 0) {
            sb_adapter_config_free(out);
            return rc;
        }
    }
    return 0;
}
