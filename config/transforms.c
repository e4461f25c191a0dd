/*
 * A route's transforms in the config: `transform:` (steps for every
 * destination) and `to:` entries written as {adapter: X, transform: ...}.
 * The steps are kept as written (an sb_tnode tree with positions) and
 * checked by compiling them (service/transform.h), so `check-config`
 * reports each bad step at its line and column; the broker compiles them
 * again for each destination's queue.
 */
#include "config/config_int.h"

#include "service/alloc.h"
#include "service/platform.h"
#include "service/transform.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* Deepest nesting of a transform's values. */
#define MAX_DEPTH 32
/* The largest script file a `lua` step may name. */
#define MAX_SCRIPT_BYTES (1024 * 1024)

#define R(member) offsetof(sb_route_config, member)

static int to_tnode(sb_config__ctx *ctx, const yaml_node_t *node, sb_tnode *out, int depth,
                    const char *path)
{
    out->line = (int)node->start_mark.line + 1;
    out->col = (int)node->start_mark.column + 1;
    if (!sb_config__spend(ctx, node))
        return -1;
    if (depth > MAX_DEPTH) {
        sb_config__error(ctx, node, path, "nested more than %d levels deep", MAX_DEPTH);
        return -1;
    }
    switch (node->type) {
    case YAML_SCALAR_NODE:
        out->kind = SB_TNODE_SCALAR;
        out->plain = node->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
        if (memchr(node->data.scalar.value, '\0', node->data.scalar.length) != NULL) {
            sb_config__error(ctx, node, path, "must not contain a NUL character");
            return -1;
        }
        out->text = sb_strndup((const char *)node->data.scalar.value, node->data.scalar.length);
        if (out->text == NULL)
            ctx->nomem = 1;
        return out->text == NULL ? -1 : 0;
    case YAML_SEQUENCE_NODE:
    case YAML_MAPPING_NODE: {
        int map = node->type == YAML_MAPPING_NODE;
        size_t n = map ? (size_t)(node->data.mapping.pairs.top - node->data.mapping.pairs.start)
                       : (size_t)(node->data.sequence.items.top - node->data.sequence.items.start);
        out->kind = map ? SB_TNODE_MAP : SB_TNODE_LIST;
        if (n == 0)
            return 0;
        out->items = sb_calloc(map ? 2 * n : n, sizeof *out->items);
        if (out->items == NULL) {
            ctx->nomem = 1;
            return -1;
        }
        for (size_t i = 0; i < n; i++) {
            if (map) {
                const yaml_node_pair_t *p = &node->data.mapping.pairs.start[i];
                const yaml_node_t *k = yaml_document_get_node(ctx->doc, p->key);
                const yaml_node_t *v = yaml_document_get_node(ctx->doc, p->value);
                if (k == NULL || v == NULL)
                    return -1;
                if (k->type != YAML_SCALAR_NODE) {
                    sb_config__error(ctx, k, path, "keys must be strings, got %s",
                                     sb_config__kind(k));
                    return -1;
                }
                out->count = 2 * i + 2;
                for (size_t j = 0; j < i; j++)
                    if (k->data.scalar.length == strlen(out->items[2 * j].text) &&
                        memcmp(out->items[2 * j].text, k->data.scalar.value,
                               k->data.scalar.length) == 0) {
                        sb_config__error(ctx, k, path, "duplicate key %s (first at line %d)",
                                         out->items[2 * j].text, out->items[2 * j].line);
                        return -1;
                    }
                if (to_tnode(ctx, k, &out->items[2 * i], depth + 1, path) != 0 ||
                    to_tnode(ctx, v, &out->items[2 * i + 1], depth + 1, path) != 0)
                    return -1;
            } else {
                const yaml_node_t *v =
                    yaml_document_get_node(ctx->doc, node->data.sequence.items.start[i]);
                if (v == NULL)
                    return -1;
                out->count = i + 1;
                if (to_tnode(ctx, v, &out->items[i], depth + 1, path) != 0)
                    return -1;
            }
        }
        return 0;
    }
    default:
        sb_config__error(ctx, node, path, "unexpected value");
        return -1;
    }
}

/* ---- scripts ---- */

static int absolute_path(const char *p)
{
    return p[0] == '/' || p[0] == '\\' ||
           (((p[0] >= 'A' && p[0] <= 'Z') || (p[0] >= 'a' && p[0] <= 'z')) && p[1] == ':');
}

/* Reads the script `name` names (relative to the config file's folder)
 * into name->script: its text, or why it could not be read (reported when
 * the step is compiled, at name's position). */
static void read_script(sb_config__ctx *ctx, sb_tnode *name)
{
    sb_tscript *s = sb_calloc(1, sizeof *s);
    const char *file = ctx->file != NULL ? ctx->file : "";
    size_t dir = 0, cap = 0;
    char msg[600];
    FILE *f;

    if (s == NULL) {
        ctx->nomem = 1;
        return;
    }
    name->script = s;
    for (size_t i = 0; file[i] != '\0'; i++)
        if (file[i] == '/' || file[i] == '\\')
            dir = i + 1;
    if (absolute_path(name->text) || dir == 0) {
        s->path = sb_strdup(name->text);
    } else if ((s->path = sb_malloc(dir + strlen(name->text) + 1)) != NULL) {
        memcpy(s->path, file, dir);
        strcpy(s->path + dir, name->text);
    }
    if (s->path == NULL) {
        ctx->nomem = 1;
        return;
    }
    f = sb_platform_fopen(s->path, "rb");
    if (f == NULL) {
        snprintf(msg, sizeof msg, "cannot read the script %s: %s", s->path, strerror(errno));
        goto failed;
    }
    for (;;) {
        size_t n;
        if (s->len == cap) {
            char *bigger;
            if (cap >= MAX_SCRIPT_BYTES) {
                snprintf(msg, sizeof msg, "the script %s is larger than %d KiB", s->path,
                         MAX_SCRIPT_BYTES / 1024);
                fclose(f);
                goto failed;
            }
            cap = cap == 0 ? 4096 : 2 * cap;
            if ((bigger = sb_realloc(s->source, cap + 1)) == NULL) {
                fclose(f);
                ctx->nomem = 1;
                return;
            }
            s->source = bigger;
        }
        n = fread(s->source + s->len, 1, cap - s->len, f);
        s->len += n;
        if (n == 0)
            break;
    }
    if (ferror(f)) {
        snprintf(msg, sizeof msg, "cannot read the script %s: %s", s->path, strerror(errno));
        fclose(f);
        goto failed;
    }
    fclose(f);
    if (s->source == NULL && (s->source = sb_malloc(1)) == NULL) {
        ctx->nomem = 1;
        return;
    }
    s->source[s->len] = '\0';
    return;
failed:
    sb_free(s->source);
    s->source = NULL;
    s->len = 0;
    if ((s->error = sb_strdup(msg)) == NULL)
        ctx->nomem = 1;
}

/* Reads the script of every `lua` step in spec (a step or a list). */
static void read_scripts(sb_config__ctx *ctx, sb_tnode *spec)
{
    size_t n = spec->kind == SB_TNODE_LIST ? spec->count : 1;
    for (size_t i = 0; i < n && !ctx->nomem; i++) {
        sb_tnode *step = spec->kind == SB_TNODE_LIST ? &spec->items[i] : spec;
        sb_tnode *name = sb_tnode_script_name(step);
        if (name != NULL && name->text != NULL && name->text[0] != '\0' && name->script == NULL)
            read_script(ctx, name);
    }
}

/* A new tree for node, or NULL (reported). */
static sb_tnode *tnode_new(sb_config__ctx *ctx, const yaml_node_t *node, const char *path)
{
    sb_tnode *t = sb_calloc(1, sizeof *t);
    if (t == NULL) {
        ctx->nomem = 1;
        return NULL;
    }
    if (to_tnode(ctx, node, t, 0, path) != 0) {
        sb_tnode_free(t);
        return NULL;
    }
    read_scripts(ctx, t);
    return t;
}

static const sb_config_key transform_row = {
    .key = "transform", .kind = SB_KEY_CUSTOM, .offset = R(transform)};

int sb_config__parse_transform(void *ctx_, const void *node_, void *route, size_t index,
                               const char *path)
{
    sb_config__ctx *ctx = ctx_;
    const yaml_node_t *node = node_;
    sb_route_config *r = route;
    (void)index;
    sb_tnode_free(r->transform);
    r->transform = tnode_new(ctx, node, path);
    sb_config__record_seen(ctx, &transform_row, &r->transform, node, node, r->transform != NULL);
    return ctx->nomem ? SB_ENOMEM : 0;
}

/* `to` as the walker reads a list of names: every message stays the same. */
static const sb_config_key names_row = {
    .key = "to", .kind = SB_KEY_NAMES, .offset = R(to), .count_off = R(to_count)};

/* 1 if node is a list with {adapter, transform} entries; a mapping alone
 * is not one (an entry is a list element). */
static int has_mapping(sb_config__ctx *ctx, const yaml_node_t *node)
{
    if (node->type != YAML_SEQUENCE_NODE)
        return 0;
    for (yaml_node_item_t *i = node->data.sequence.items.start; i < node->data.sequence.items.top;
         i++) {
        const yaml_node_t *el = yaml_document_get_node(ctx->doc, *i);
        if (el != NULL && el->type == YAML_MAPPING_NODE)
            return 1;
    }
    return 0;
}

/* One {adapter: X, transform: ...} entry into to[i] / to_transform[i]. */
static int parse_dest(sb_config__ctx *ctx, const yaml_node_t *el, sb_route_config *r, size_t i,
                      const char *path)
{
    char p[SB_CONFIG__PATH_MAX], q[96];
    const yaml_node_t *adapter = NULL;
    int ok = 1;

    for (yaml_node_pair_t *pr = el->data.mapping.pairs.start; pr < el->data.mapping.pairs.top;
         pr++) {
        const yaml_node_t *k = yaml_document_get_node(ctx->doc, pr->key);
        const yaml_node_t *v = yaml_document_get_node(ctx->doc, pr->value);
        const char *key;
        if (k == NULL || v == NULL)
            continue;
        if (k->type != YAML_SCALAR_NODE) {
            sb_config__error(ctx, k, path, "keys must be strings, got %s", sb_config__kind(k));
            ok = 0;
            continue;
        }
        key = (const char *)k->data.scalar.value;
        sb_config__path(p, path, ".", key);
        if (strcmp(key, "adapter") == 0 && adapter == NULL) {
            adapter = v;
        } else if (strcmp(key, "transform") == 0 && r->to_transform[i] == NULL) {
            r->to_transform[i] = tnode_new(ctx, v, p);
            if (r->to_transform[i] == NULL)
                ok = 0;
        } else if (strcmp(key, "adapter") == 0 || strcmp(key, "transform") == 0) {
            sb_config__error(ctx, k, p, "duplicate key");
            ok = 0;
        } else {
            sb_config__error(ctx, k, p, "unknown key (known: adapter, transform)");
            ok = 0;
        }
    }
    sb_config__path(p, path, ".", "adapter");
    if (adapter == NULL) {
        sb_config__error(ctx, el, p, "required");
        return 0;
    }
    if (adapter->type != YAML_SCALAR_NODE || adapter->data.scalar.length == 0) {
        sb_config__error(ctx, adapter, p, "expected an adapter name, got %s",
                         adapter->type == YAML_SCALAR_NODE ? "an empty string"
                                                           : sb_config__kind(adapter));
        return 0;
    }
    if (!sb_config__valid_name((const char *)adapter->data.scalar.value)) {
        sb_config__error(ctx, adapter, p, "invalid name %s (use letters, digits, '_', '.' and '-')",
                         sb_config__quote(q, sizeof q, (const char *)adapter->data.scalar.value));
        return 0;
    }
    r->to[i] = sb_strdup((const char *)adapter->data.scalar.value);
    if (r->to[i] == NULL)
        ctx->nomem = 1;
    return ok && r->to[i] != NULL;
}

int sb_config__parse_to(void *ctx_, const void *node_, void *route, size_t index, const char *path)
{
    sb_config__ctx *ctx = ctx_;
    const yaml_node_t *node = node_;
    sb_route_config *r = route;
    yaml_node_item_t *items;
    size_t n;
    int ok = 1;
    char epath[SB_CONFIG__PATH_MAX], q[96];
    (void)index;

    if (!has_mapping(ctx, node))
        return sb_config__value(ctx, &names_row, node, r, path);
    sb_config__route_dests_release(r);
    items = node->data.sequence.items.start;
    n = (size_t)(node->data.sequence.items.top - items);
    r->to = sb_calloc(n, sizeof *r->to);
    r->to_transform = sb_calloc(n, sizeof *r->to_transform);
    if (r->to == NULL || r->to_transform == NULL) {
        ctx->nomem = 1;
        return SB_ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        const yaml_node_t *el = yaml_document_get_node(ctx->doc, items[i]);
        char idx[32];
        snprintf(idx, sizeof idx, "[%zu]", i);
        sb_config__path(epath, path, "", idx);
        r->to_count = i + 1; /* counted first: a half-parsed entry is freed too */
        if (el == NULL || !sb_config__spend(ctx, el)) {
            ok = 0;
            break;
        }
        if (el->type == YAML_MAPPING_NODE) {
            if (!parse_dest(ctx, el, r, i, epath))
                ok = 0;
        } else if (el->type != YAML_SCALAR_NODE || el->data.scalar.length == 0) {
            sb_config__error(
                ctx, el, epath, "expected an adapter name or {adapter, transform}, got %s",
                el->type == YAML_SCALAR_NODE ? "an empty string" : sb_config__kind(el));
            ok = 0;
        } else if (!sb_config__valid_name((const char *)el->data.scalar.value)) {
            sb_config__error(ctx, el, epath,
                             "invalid name %s (use letters, digits, '_', '.' and '-')",
                             sb_config__quote(q, sizeof q, (const char *)el->data.scalar.value));
            ok = 0;
        } else if ((r->to[i] = sb_strdup((const char *)el->data.scalar.value)) == NULL) {
            ctx->nomem = 1;
        }
        if (ctx->nomem)
            return SB_ENOMEM;
    }
    /* Entries that were refused leave holes; the route is not used then
     * (the config has errors), but to[] must hold names only. */
    size_t o = 0;
    for (size_t i = 0; i < r->to_count; i++) {
        if (r->to[i] == NULL) {
            sb_tnode_free(r->to_transform[i]);
            continue;
        }
        r->to[o] = r->to[i];
        r->to_transform[o++] = r->to_transform[i];
    }
    r->to_count = o;
    sb_config__record_seen(ctx, &names_row, &r->to, node, node, ok);
    return 0;
}

/* ---- checks ---- */

typedef struct report_ctx {
    sb_config__ctx *ctx;
    const char *path; /* of the spec: "routes[1].transform" */
} report_ctx;

static void report(void *ctx_, size_t spec, int line, int col, const char *path, const char *msg)
{
    report_ctx *rc = ctx_;
    char p[SB_CONFIG__PATH_MAX];
    (void)spec;
    sb_config__path(p, rc->path, "", path);
    sb_config__error_at(rc->ctx, line, col, p, "%s", msg);
}

static void check_spec(sb_config__ctx *ctx, const sb_route_config *r, const sb_tnode *spec,
                       const char *path)
{
    report_ctx rc = {ctx, path};
    sb_transform *t = NULL;
    if (spec == NULL)
        return;
    if (sb_transform_compile(&t, &spec, 1, (const char *const *)r->from, r->from_count, report,
                             &rc) == SB_ENOMEM)
        ctx->nomem = 1;
    sb_transform_free(t);
}

void sb_config__check_transforms(sb_config__ctx *ctx, const sb_route_config *r, const char *path)
{
    char p[SB_CONFIG__PATH_MAX], idx[48];
    sb_config__path(p, path, ".", "transform");
    check_spec(ctx, r, r->transform, p);
    for (size_t i = 0; r->to_transform != NULL && i < r->to_count; i++) {
        snprintf(idx, sizeof idx, "to[%zu].transform", i);
        sb_config__path(p, path, ".", idx);
        check_spec(ctx, r, r->to_transform[i], p);
    }
}

/* ---- release, copy, equality ---- */

void sb_config__route_dests_release(sb_route_config *r)
{
    for (size_t i = 0; i < r->to_count; i++) {
        sb_free(r->to[i]);
        if (r->to_transform != NULL)
            sb_tnode_free(r->to_transform[i]);
    }
    sb_free(r->to);
    sb_free(r->to_transform);
    r->to = NULL;
    r->to_transform = NULL;
    r->to_count = 0;
    sb_tnode_free(r->transform);
    r->transform = NULL;
}

int sb_config__route_dests_copy(sb_route_config *out, const sb_route_config *in)
{
    out->to = NULL;
    out->to_transform = NULL;
    out->to_count = 0;
    out->transform = NULL;
    if (in->transform != NULL && (out->transform = sb_tnode_copy(in->transform)) == NULL)
        return SB_ENOMEM;
    if (in->to_count == 0)
        return 0;
    out->to = sb_calloc(in->to_count, sizeof *out->to);
    if (out->to == NULL)
        return SB_ENOMEM;
    if (in->to_transform != NULL &&
        (out->to_transform = sb_calloc(in->to_count, sizeof *out->to_transform)) == NULL)
        return SB_ENOMEM;
    for (size_t i = 0; i < in->to_count; i++) {
        out->to_count = i + 1; /* counted first: out stays freeable */
        if ((out->to[i] = sb_strdup(in->to[i])) == NULL)
            return SB_ENOMEM;
        if (in->to_transform != NULL && in->to_transform[i] != NULL &&
            (out->to_transform[i] = sb_tnode_copy(in->to_transform[i])) == NULL)
            return SB_ENOMEM;
    }
    return 0;
}

int sb_config__route_dests_equal(const sb_route_config *a, const sb_route_config *b)
{
    if (a->to_count != b->to_count || !sb_tnode_equal(a->transform, b->transform))
        return 0;
    for (size_t i = 0; i < a->to_count; i++) {
        if (strcmp(a->to[i], b->to[i]) != 0)
            return 0;
        if (!sb_tnode_equal(a->to_transform ? a->to_transform[i] : NULL,
                            b->to_transform ? b->to_transform[i] : NULL))
            return 0;
    }
    return 1;
}
