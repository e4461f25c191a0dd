/*
 * The schema walker: checks a libyaml document against the tables in
 * schema.c and fills the config structs.
 *
 * One function per concern: sb_config__mapping handles a mapping (known,
 * duplicate, disallowed, unknown and required keys), field_value converts one
 * value by its field type and range-checks it. Errors never stop the walk: a
 * bad value keeps its default and the walk goes on, so one run reports every
 * problem. Only out-of-memory stops it (SB_ENOMEM bubbles up).
 * The same tables drive release, copy and equality of the structs.
 */
#include "config/config_int.h"
#include "service/alloc.h"
#include "service/error.h"
#include "service/topic.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/* ---- errors ---- */

static int pos_after(const sb_config_error *e, int line, int col)
{
    return e->line > line || (e->line == line && e->col > col);
}

/* Inserts e keeping errs sorted by position (stable: equal positions keep
 * their discovery order). Cross-checks run after the walk, so appending
 * would put their errors out of line order. */
static int insert_error(sb_config_errors *errs, const sb_config_error *e, int sorted)
{
    sb_config_error *items = sb_realloc(errs->items, (errs->count + 1) * sizeof *items);
    size_t at = errs->count;
    if (items == NULL)
        return SB_ENOMEM;
    errs->items = items;
    while (sorted && at > 0 && pos_after(&items[at - 1], e->line, e->col))
        at--;
    memmove(&items[at + 1], &items[at], (errs->count - at) * sizeof *items);
    items[at] = *e;
    errs->count++;
    return 0;
}

void sb_config__verror_at(sb_config__ctx *ctx, int line, int col, const char *path, const char *fmt,
                          va_list ap)
{
    char msg[512];
    sb_config_error e = {0};
    int last = 0;

    ctx->error_count++;
    if (ctx->errs == NULL || ctx->errs->count > SB_CONFIG__MAX_ERRORS)
        return;
    if (ctx->errs->count == SB_CONFIG__MAX_ERRORS) {
        /* One final entry, after everything else, says the list is cut. */
        snprintf(msg, sizeof msg, "too many errors (more than %d), giving up",
                 SB_CONFIG__MAX_ERRORS);
        line = col = 0;
        path = NULL;
        last = 1;
    } else {
        vsnprintf(msg, sizeof msg, fmt, ap);
    }
    e.line = line;
    e.col = col;
    e.file = sb_strdup(ctx->file);
    e.message = sb_strdup(msg);
    e.key = (path != NULL && path[0] != '\0') ? sb_strdup(path) : NULL;
    if (e.file == NULL || e.message == NULL || (path != NULL && path[0] != '\0' && !e.key) ||
        insert_error(ctx->errs, &e, !last) != 0) {
        sb_free(e.file);
        sb_free(e.message);
        sb_free(e.key);
        ctx->nomem = 1;
    }
}

void sb_config__error_at(sb_config__ctx *ctx, int line, int col, const char *path, const char *fmt,
                         ...)
{
    va_list ap;
    va_start(ap, fmt);
    sb_config__verror_at(ctx, line, col, path, fmt, ap);
    va_end(ap);
}

void sb_config__error(sb_config__ctx *ctx, const yaml_node_t *node, const char *path,
                      const char *fmt, ...)
{
    va_list ap;
    int line = 0, col = 0;
    if (node != NULL) {
        line = (int)node->start_mark.line + 1;
        col = (int)node->start_mark.column + 1;
    }
    va_start(ap, fmt);
    sb_config__verror_at(ctx, line, col, path, fmt, ap);
    va_end(ap);
}

/* ---- small helpers ---- */

const char *sb_config__kind(const yaml_node_t *node)
{
    switch (node->type) {
    case YAML_MAPPING_NODE:
        return "a mapping";
    case YAML_SEQUENCE_NODE:
        return "a list";
    case YAML_SCALAR_NODE:
        return "a scalar";
    default:
        return "nothing";
    }
}

/* Copies at most max bytes of s into out (size n), control characters
 * replaced by '?', cut on a UTF-8 boundary with "..." when too long. */
static void sanitize(char *out, size_t n, const char *s, size_t max)
{
    size_t len = strlen(s), i;
    int cut = 0;
    if (len > max) {
        len = max;
        while (len > 0 && ((unsigned char)s[len] & 0xC0) == 0x80)
            len--;
        cut = 1;
    }
    if (len + 4 > n)
        len = n > 4 ? n - 4 : 0;
    for (i = 0; i < len; i++)
        out[i] = ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) ? '?' : s[i];
    if (cut && n >= len + 4) {
        memcpy(out + len, "...", 3);
        len += 3;
    }
    out[len] = '\0';
}

const char *sb_config__quote(char *out, size_t n, const char *s)
{
    char tmp[80];
    sanitize(tmp, sizeof tmp, s, 60);
    snprintf(out, n, "\"%s\"", tmp);
    return out;
}

const char *sb_config_quote(char *out, size_t n, const char *s)
{
    return sb_config__quote(out, n, s);
}

const char *sb_config__fmt_duration(char *out, size_t n, int64_t ms)
{
    static const struct {
        const char *unit;
        int64_t ms;
    } units[] = {{"d", 86400000}, {"h", 3600000}, {"m", 60000}, {"s", 1000}};
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (ms != 0 && ms % units[i].ms == 0) {
            snprintf(out, n, "%" PRId64 "%s", ms / units[i].ms, units[i].unit);
            return out;
        }
    }
    snprintf(out, n, "%" PRId64 "ms", ms);
    return out;
}

int sb_config__valid_name(const char *s)
{
    if (*s == '\0')
        return 0;
    for (; *s != '\0'; s++) {
        char c = *s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-'))
            return 0;
    }
    return 1;
}

void sb_config__path(char *out, const char *path, const char *sep, const char *part)
{
    size_t len = 0;
    const char *pieces[3] = {path, sep, part};
    for (size_t i = 0; i < 3; i++) {
        size_t n = strlen(pieces[i]);
        if (n > SB_CONFIG__PATH_MAX - 1 - len)
            n = SB_CONFIG__PATH_MAX - 1 - len; /* cut: still a useful prefix */
        memmove(out + len, pieces[i], n);
        len += n;
    }
    out[len] = '\0';
}

/* out = path + "." + key, or key alone at the top. Long or odd keys (they
 * may come from the file) are cut and sanitized: the path is for people. */
static void child_path(char *out, const char *path, const char *key)
{
    char k[72];
    sanitize(k, sizeof k, key, 64);
    sb_config__path(out, path, path[0] ? "." : "", k);
}

static void index_path(char *out, const char *path, size_t i)
{
    char idx[32];
    snprintf(idx, sizeof idx, "[%zu]", i);
    sb_config__path(out, path, "", idx);
}

static const yaml_node_t *node_at(const sb_config__ctx *ctx, int index)
{
    return yaml_document_get_node(ctx->doc, index);
}

static int key_is(const yaml_node_t *key, const char *name)
{
    size_t n = strlen(name);
    return key->type == YAML_SCALAR_NODE && key->data.scalar.length == n &&
           memcmp(key->data.scalar.value, name, n) == 0;
}

int sb_config__is_null(const yaml_node_t *node)
{
    const char *v;
    if (node->type != YAML_SCALAR_NODE || node->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return 0;
    v = (const char *)node->data.scalar.value;
    return strcmp(v, "") == 0 || strcmp(v, "~") == 0 || strcmp(v, "null") == 0 ||
           strcmp(v, "Null") == 0 || strcmp(v, "NULL") == 0;
}

const yaml_node_t *sb_config__lookup(const sb_config__ctx *ctx, const yaml_node_t *map,
                                     const char *key)
{
    if (map == NULL || map->type != YAML_MAPPING_NODE)
        return NULL;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        const yaml_node_t *k = node_at(ctx, p->key);
        if (k != NULL && key_is(k, key))
            return node_at(ctx, p->value);
    }
    return NULL;
}

/* ---- seen keys ---- */

void sb_config__seen_reset(sb_config__ctx *ctx)
{
    ctx->seen_count = 0;
}

void sb_config__record_seen(sb_config__ctx *ctx, const sb_config_key *f, const void *target,
                            const yaml_node_t *key, const yaml_node_t *value, int ok)
{
    if (ctx->seen_count < SB_CONFIG__MAX_SEEN) {
        sb_config__seen *s = &ctx->seen[ctx->seen_count++];
        s->target = target;
        s->key = key;
        s->value = value;
        s->ok = ok;
        s->field = f;
        s->section = ctx->section;
        s->first = 0;
    }
}

const sb_config__seen *sb_config__seen_find(const sb_config__ctx *ctx, const void *target)
{
    for (size_t i = ctx->seen_count; i > 0; i--)
        if (ctx->seen[i - 1].target == target)
            return &ctx->seen[i - 1];
    return NULL;
}

/* ---- defaults ---- */

/* The value of field f inside the struct at base. */
#define FIELD(type, base, f) ((type *)(void *)((char *)(base) + (f)->offset))
#define CFIELD(type, base, f) ((type const *)(const void *)((const char *)(base) + (f)->offset))
#define COUNT(base, f) ((size_t *)(void *)((char *)(base) + (f)->count_off))
#define CCOUNT(base, f) ((const size_t *)(const void *)((const char *)(base) + (f)->count_off))

static int set_string(sb_config__ctx *ctx, char **slot, const char *s)
{
    char *copy = sb_strdup(s);
    if (copy == NULL) {
        ctx->nomem = 1;
        return SB_ENOMEM;
    }
    sb_free(*slot);
    *slot = copy;
    return 0;
}

/* The struct a row's value lives in: the adapter's common struct for
 * SB_KEY_ADAPTER rows, else base. */
static void *row_base(const sb_config__ctx *ctx, const sb_config_key *f, void *base)
{
    return (f->flags & SB_KEY_ADAPTER) && ctx->adapter != NULL ? ctx->adapter : base;
}

int sb_config__defaults(sb_config__ctx *ctx, const sb_config_table *section, void *base_)
{
    for (size_t i = 0; i < section->count; i++) {
        const sb_config_key *f = &section->keys[i];
        void *base = row_base(ctx, f, base_);
        int rc = 0;
        switch (f->kind) {
        case SB_KEY_STRING:
        case SB_KEY_NAME:
        case SB_KEY_CHOICE:
            if (f->def_str != NULL)
                rc = set_string(ctx, FIELD(char *, base, f), f->def_str);
            break;
        case SB_KEY_ENUM:
        case SB_KEY_INT:
        case SB_KEY_BOOL:
            *FIELD(int, base, f) = (int)f->def;
            break;
        case SB_KEY_INT64:
        case SB_KEY_SIZE:
        case SB_KEY_DURATION:
            *FIELD(int64_t, base, f) = f->def;
            break;
        case SB_KEY_SECTION:
            rc = sb_config__defaults(ctx, f->section, (char *)base + f->offset);
            break;
        case SB_KEY_STRLIST:
        case SB_KEY_NAMES:
        case SB_KEY_FILTERS:
        case SB_KEY_LIST:
        case SB_KEY_CUSTOM:
            break; /* empty */
        }
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* ---- values ---- */

/* Spends one unit of the node budget; 0 once it is exhausted (reported
 * once), so aliases cannot make the walk blow up. */
int sb_config__spend(sb_config__ctx *ctx, const yaml_node_t *node)
{
    if (ctx->nodes_left == 0)
        return 0;
    if (--ctx->nodes_left == 0) {
        sb_config__error(ctx, node, NULL,
                         "document too large (more than %d values, aliases "
                         "included)",
                         SB_CONFIG__MAX_NODES);
        return 0;
    }
    return 1;
}

/* The text of a scalar node, or NULL once the reason it is not one is
 * reported. `what` names what was expected ("an integer"). */
static const char *scalar(sb_config__ctx *ctx, const yaml_node_t *node, const char *path,
                          const char *what)
{
    if (node->type != YAML_SCALAR_NODE) {
        sb_config__error(ctx, node, path, "expected %s, got %s", what, sb_config__kind(node));
        return NULL;
    }
    if (memchr(node->data.scalar.value, '\0', node->data.scalar.length) != NULL) {
        sb_config__error(ctx, node, path, "must not contain a NUL character");
        return NULL;
    }
    return (const char *)node->data.scalar.value;
}

/* A non-empty string, or NULL once reported. */
static const char *string_value(sb_config__ctx *ctx, const yaml_node_t *node, const char *path)
{
    const char *s = scalar(ctx, node, path, "a string");
    if (s != NULL && (s[0] == '\0' || sb_config__is_null(node))) {
        sb_config__error(ctx, node, path, "must not be empty");
        return NULL;
    }
    return s;
}

static void join(char *out, size_t n, const char *const *words)
{
    size_t len = 0;
    out[0] = '\0';
    for (size_t i = 0; words[i] != NULL && len < n; i++)
        len += (size_t)snprintf(out + len, n - len, "%s%s", i ? ", " : "", words[i]);
}

static int choice_index(const char *const *choices, const char *s)
{
    for (int i = 0; choices[i] != NULL; i++)
        if (strcmp(choices[i], s) == 0)
            return i;
    return -1;
}

static void range_error(sb_config__ctx *ctx, const sb_config_key *f, const yaml_node_t *node,
                        const char *path, int overflow)
{
    if (f->kind == SB_KEY_DURATION) {
        char lo[32], hi[32];
        sb_config__error(ctx, node, path, "must be between %s and %s",
                         sb_config__fmt_duration(lo, sizeof lo, f->min),
                         sb_config__fmt_duration(hi, sizeof hi, f->max));
    } else if (f->max == INT64_MAX) {
        if (overflow)
            sb_config__error(ctx, node, path, "too large");
        else
            sb_config__error(ctx, node, path, "must be at least %" PRId64, f->min);
    } else {
        sb_config__error(ctx, node, path, "must be between %" PRId64 " and %" PRId64, f->min,
                         f->max);
    }
}

static int number_value(sb_config__ctx *ctx, const sb_config_key *f, const yaml_node_t *node,
                        void *base, const char *path)
{
    const char *what, *s;
    char q[96];
    int64_t v = 0;
    int rc;
    switch (f->kind) {
    case SB_KEY_SIZE:
        what = "a size (4096, 64KiB, 1MiB)";
        break;
    case SB_KEY_DURATION:
        what = "a duration (250ms, 10s, 5m, 2h, 1d)";
        break;
    default:
        what = "an integer";
        break;
    }
    s = scalar(ctx, node, path, what);
    if (s == NULL)
        return 0;
    if (f->kind == SB_KEY_SIZE)
        rc = sb_config__parse_size(s, &v);
    else if (f->kind == SB_KEY_DURATION)
        rc = sb_config__parse_duration(s, &v);
    else
        rc = sb_config__parse_int64(s, &v);
    if (rc == SB_NUM_SYNTAX) {
        sb_config__error(ctx, node, path, "expected %s, got %s", what,
                         sb_config__quote(q, sizeof q, s));
        return 0;
    }
    if (rc == SB_NUM_RANGE || v < f->min || v > f->max) {
        range_error(ctx, f, node, path, rc == SB_NUM_RANGE);
        return 0;
    }
    if (f->kind == SB_KEY_INT)
        *FIELD(int, base, f) = (int)v;
    else
        *FIELD(int64_t, base, f) = v;
    return 1;
}

static void release_strings(char ***list, size_t *count)
{
    for (size_t i = 0; i < *count; i++)
        sb_free((*list)[i]);
    sb_free(*list);
    *list = NULL;
    *count = 0;
}

/* Reads items[first..n) of a sequence (items NULL: node, a scalar, is the
 * one string) into a fresh *list, checked as `kind` says; *ok = 0 if any
 * was rejected (the valid ones are kept). */
static int read_strings(sb_config__ctx *ctx, sb_config_kind kind, const yaml_node_t *node,
                        yaml_node_item_t *items, size_t first, size_t n, const char *path,
                        char ***list, size_t *count, int *ok)
{
    char epath[SB_CONFIG__PATH_MAX], q[96];

    release_strings(list, count);
    *list = sb_calloc(n - first, sizeof **list);
    if (*list == NULL) {
        ctx->nomem = 1;
        return SB_ENOMEM;
    }
    *ok = 1;
    for (size_t i = first; i < n; i++) {
        const yaml_node_t *el = items ? node_at(ctx, items[i]) : node;
        const char *s, *why = NULL;
        if (items)
            index_path(epath, path, i);
        else
            sb_config__path(epath, path, "", "");
        if (el == NULL || !sb_config__spend(ctx, el)) {
            *ok = 0;
            break;
        }
        s = string_value(ctx, el, epath);
        if (s == NULL) {
            *ok = 0;
            continue;
        }
        if (kind == SB_KEY_NAMES && !sb_config__valid_name(s)) {
            sb_config__error(ctx, el, epath,
                             "invalid name %s (use letters, digits, '_', '.' and '-')",
                             sb_config__quote(q, sizeof q, s));
            *ok = 0;
            continue;
        }
        if (kind == SB_KEY_FILTERS && sb_filter_validate(s, strlen(s), &why) != 0) {
            sb_config__error(ctx, el, epath, "invalid topic filter %s: %s",
                             sb_config__quote(q, sizeof q, s), why);
            *ok = 0;
            continue;
        }
        (*list)[*count] = sb_strdup(s);
        if ((*list)[*count] == NULL) {
            ctx->nomem = 1;
            return SB_ENOMEM;
        }
        (*count)++;
    }
    return 0;
}

/* STRLIST (a list), NAMES and FILTERS (one string or a list). Sets *ok to
 * 0 if any element was rejected (the valid ones are kept). */
static int strings_value(sb_config__ctx *ctx, const sb_config_key *f, const yaml_node_t *node,
                         void *base, const char *path, int *ok)
{
    yaml_node_item_t *items = NULL;
    size_t n = 1;

    *ok = 0;
    if (node->type == YAML_SEQUENCE_NODE) {
        items = node->data.sequence.items.start;
        n = (size_t)(node->data.sequence.items.top - items);
        if (n == 0 && f->kind != SB_KEY_NAMES) {
            sb_config__error(ctx, node, path, "must not be empty");
            return 0;
        }
    } else if (node->type != YAML_SCALAR_NODE || f->kind == SB_KEY_STRLIST) {
        sb_config__error(ctx, node, path, "expected %s, got %s",
                         f->kind == SB_KEY_STRLIST ? "a list of strings"
                                                  : "a string or a list of strings",
                         sb_config__kind(node));
        return 0;
    }
    return read_strings(ctx, f->kind, node, items, 0, n, path, FIELD(char **, base, f),
                        COUNT(base, f), ok);
}

/* An SB_KEY_OR_LIST string given as a list: the first item is the value,
 * the others the rest list's. Both are recorded as seen at this key, the
 * rest with its items counted from 1, so errors name `key[i]`. */
static int string_and_rest(sb_config__ctx *ctx, const sb_config_key *f, const yaml_node_t *key,
                           const yaml_node_t *node, void *base, const char *path)
{
    char ***rest = (char ***)(void *)((char *)base + f->rest_off);
    yaml_node_item_t *items = node->data.sequence.items.start;
    size_t n = (size_t)(node->data.sequence.items.top - items);
    char epath[SB_CONFIG__PATH_MAX];
    const yaml_node_t *el;
    const char *s;
    int ok, rc;

    if (n == 0) {
        sb_config__error(ctx, node, path, "must not be empty");
        sb_config__record_seen(ctx, f, (char *)base + f->offset, key, node, 0);
        return 0;
    }
    el = node_at(ctx, items[0]);
    index_path(epath, path, 0);
    if (el == NULL || !sb_config__spend(ctx, el))
        return 0;
    s = string_value(ctx, el, epath);
    if (s != NULL && set_string(ctx, FIELD(char *, base, f), s) != 0)
        return SB_ENOMEM;
    sb_config__record_seen(ctx, f, (char *)base + f->offset, key, el, s != NULL);
    if (n == 1) {
        release_strings(rest, COUNT(base, f));
        return 0;
    }
    rc = read_strings(ctx, SB_KEY_STRLIST, node, items, 1, n, path, rest, COUNT(base, f), &ok);
    if (rc != 0)
        return rc;
    /* (rows are read in table order: the rest list's own key, if written
     * too, comes later and refuses to be combined) */
    sb_config__record_seen(ctx, f, rest, key, node, ok);
    if (ctx->seen_count > 0 && ctx->seen[ctx->seen_count - 1].target == rest)
        ctx->seen[ctx->seen_count - 1].first = 1;
    return 0;
}

static int list_value(sb_config__ctx *ctx, const sb_config_key *f, const yaml_node_t *node,
                      void *base, const char *path)
{
    void **array = (void **)((char *)base + f->offset);
    size_t *count = COUNT(base, f);
    yaml_node_item_t *items;
    size_t n;
    char epath[SB_CONFIG__PATH_MAX];

    if (node->type != YAML_SEQUENCE_NODE) {
        sb_config__error(ctx, node, path, "expected a list, got %s", sb_config__kind(node));
        return 0;
    }
    items = node->data.sequence.items.start;
    n = (size_t)(node->data.sequence.items.top - items);
    if (n == 0)
        return 0;
    *array = sb_calloc(n, f->elem_size);
    if (*array == NULL) {
        ctx->nomem = 1;
        return SB_ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        const yaml_node_t *el = node_at(ctx, items[i]);
        int rc;
        if (el == NULL || !sb_config__spend(ctx, el))
            break;
        index_path(epath, path, i);
        *count = i + 1; /* counted first: a half-parsed element is freed too */
        rc = f->item(ctx, el, *array, i, epath);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static int field_value(sb_config__ctx *ctx, const sb_config_key *f, const yaml_node_t *key,
                       const yaml_node_t *value, void *base, const char *path)
{
    char q[96], known[256];
    const char *s, *outer;
    int ok = 0, rc = 0, idx, word_choice;

    base = row_base(ctx, f, base);

    /* `type: null` names the type null: a word that is one of the key's
     * choices is that choice, even where YAML would read "not set" */
    word_choice = f->kind == SB_KEY_CHOICE && value->type == YAML_SCALAR_NODE &&
                  choice_index(f->choices, (const char *)value->data.scalar.value) >= 0;
    if (sb_config__is_null(value) && !word_choice) {
        /* `key:` or `key: ~` means "not set": the default stays (unless
         * the word is one of the key's choices). */
        if (f->flags & SB_KEY_REQUIRED)
            sb_config__error(ctx, value, path, "missing value");
        return 0;
    }
    switch (f->kind) {
    case SB_KEY_SECTION:
        outer = ctx->section;
        ctx->section = f->key;
        rc = sb_config__mapping(ctx, value, f->section, (char *)base + f->offset, path);
        ctx->section = outer;
        return rc;
    case SB_KEY_LIST:
        return list_value(ctx, f, value, base, path);
    case SB_KEY_CUSTOM:
        return f->item(ctx, value, base, 0, path);
    case SB_KEY_STRING:
    case SB_KEY_NAME:
    case SB_KEY_CHOICE:
        if ((f->flags & SB_KEY_OR_LIST) && value->type == YAML_SEQUENCE_NODE)
            return string_and_rest(ctx, f, key, value, base, path);
        s = word_choice ? (const char *)value->data.scalar.value : string_value(ctx, value, path);
        if (s == NULL)
            break;
        if (f->kind == SB_KEY_NAME && !sb_config__valid_name(s)) {
            sb_config__error(ctx, value, path,
                             "invalid name %s (use letters, digits, '_', '.' and '-')",
                             sb_config__quote(q, sizeof q, s));
            break;
        }
        if (f->kind == SB_KEY_CHOICE && choice_index(f->choices, s) < 0) {
            join(known, sizeof known, f->choices);
            sb_config__error(ctx, value, path, "must be one of %s (got %s)", known,
                             sb_config__quote(q, sizeof q, s));
            break;
        }
        rc = set_string(ctx, FIELD(char *, base, f), s);
        ok = rc == 0;
        break;
    case SB_KEY_ENUM:
        s = scalar(ctx, value, path, "a string");
        if (s == NULL)
            break;
        idx = choice_index(f->choices, s);
        if (idx < 0) {
            join(known, sizeof known, f->choices);
            sb_config__error(ctx, value, path, "must be one of %s (got %s)", known,
                             sb_config__quote(q, sizeof q, s));
            break;
        }
        *FIELD(int, base, f) = idx;
        ok = 1;
        break;
    case SB_KEY_BOOL:
        s = scalar(ctx, value, path, "true or false");
        if (s == NULL)
            break;
        idx = sb_config__parse_bool(s);
        if (idx < 0) {
            sb_config__error(ctx, value, path, "expected true or false, got %s",
                             sb_config__quote(q, sizeof q, s));
            break;
        }
        *FIELD(int, base, f) = idx;
        ok = 1;
        break;
    case SB_KEY_INT:
    case SB_KEY_INT64:
    case SB_KEY_SIZE:
    case SB_KEY_DURATION:
        ok = number_value(ctx, f, value, base, path);
        break;
    case SB_KEY_STRLIST:
    case SB_KEY_NAMES:
    case SB_KEY_FILTERS: {
        /* an SB_KEY_OR_LIST row's list may have filled it already */
        const sb_config__seen *before = sb_config__seen_find(ctx, (char *)base + f->offset);
        if (before != NULL && before->field != f) {
            sb_config__error(ctx, value, path, "cannot be combined with a list in %s",
                             before->field->key);
            break;
        }
        rc = strings_value(ctx, f, value, base, path, &ok);
        break;
    }
    }
    sb_config__record_seen(ctx, f, (char *)base + f->offset, key, value, ok);
    return rc;
}

int sb_config__value(sb_config__ctx *ctx, const sb_config_key *f, const yaml_node_t *value,
                     void *base, const char *path)
{
    return field_value(ctx, f, value, value, base, path);
}

/* ---- mappings ---- */

static void known_keys(const sb_config_table *section, char *out, size_t n)
{
    size_t len = 0;
    out[0] = '\0';
    for (size_t i = 0; i < section->count && len < n; i++)
        if (!(section->keys[i].flags & SB_KEY_UNLISTED))
            len +=
                (size_t)snprintf(out + len, n - len, "%s%s", len ? ", " : "", section->keys[i].key);
}

static const sb_config_key *find_field(const sb_config_table *section, const yaml_node_t *key)
{
    for (size_t i = 0; i < section->count; i++)
        if (key_is(key, section->keys[i].key))
            return &section->keys[i];
    return NULL;
}

int sb_config__mapping(sb_config__ctx *ctx, const yaml_node_t *node,
                       const sb_config_table *section, void *base, const char *path)
{
    yaml_node_pair_t *start, *top;
    char cpath[SB_CONFIG__PATH_MAX], known[512];

    if (node->type != YAML_MAPPING_NODE) {
        sb_config__error(ctx, node, path, "expected a mapping, got %s", sb_config__kind(node));
        return 0;
    }
    start = node->data.mapping.pairs.start;
    top = node->data.mapping.pairs.top;

    for (size_t i = 0; i < section->count; i++) {
        const sb_config_key *f = &section->keys[i];
        const yaml_node_t *first = NULL;
        child_path(cpath, path, f->key);
        for (yaml_node_pair_t *p = start; p < top; p++) {
            const yaml_node_t *key = node_at(ctx, p->key), *value = node_at(ctx, p->value);
            int rc;
            if (key == NULL || value == NULL || !key_is(key, f->key))
                continue;
            if (first != NULL) {
                sb_config__error(ctx, key, cpath, "duplicate key (first at line %d)",
                                 (int)first->start_mark.line + 1);
                continue;
            }
            first = key;
            if (!sb_config__spend(ctx, value))
                return ctx->nomem ? SB_ENOMEM : 0;
            rc = field_value(ctx, f, key, value, base, cpath);
            if (rc != 0 || ctx->nomem)
                return SB_ENOMEM;
        }
        if (first == NULL && (f->flags & SB_KEY_REQUIRED))
            sb_config__error(ctx, node, cpath, "required");
    }

    for (yaml_node_pair_t *p = start; p < top; p++) {
        const yaml_node_t *key = node_at(ctx, p->key);
        if (key == NULL)
            continue;
        if (key->type != YAML_SCALAR_NODE) {
            sb_config__error(ctx, key, path, "keys must be strings, got %s", sb_config__kind(key));
        } else if (find_field(section, key) == NULL) {
            child_path(cpath, path, (const char *)key->data.scalar.value);
            if (section == ctx->adapter_table && ctx->type_name != NULL &&
                sb_config__other_type_key(ctx->type_name, key)) {
                sb_config__error(ctx, key, cpath, "not allowed for type %s", ctx->type_name);
                continue;
            }
            if (section == ctx->adapter_table && ctx->type_name == NULL &&
                sb_config__other_type_key("", key))
                continue; /* the type is unknown: any type's key may be meant */
            known_keys(section, known, sizeof known);
            sb_config__error(ctx, key, cpath, "unknown key (known: %s)", known);
        }
    }
    return ctx->nomem ? SB_ENOMEM : 0;
}

/* ---- release, copy, equality ---- */

void sb_config__release(const sb_config_table *section, void *base)
{
    for (size_t i = 0; i < section->count; i++) {
        const sb_config_key *f = &section->keys[i];
        if (f->flags & SB_KEY_ADAPTER)
            continue; /* the common struct's, handled by its owner */
        switch (f->kind) {
        case SB_KEY_STRING:
        case SB_KEY_NAME:
        case SB_KEY_CHOICE:
            sb_free(*FIELD(char *, base, f));
            *FIELD(char *, base, f) = NULL;
            break;
        case SB_KEY_STRLIST:
        case SB_KEY_NAMES:
        case SB_KEY_FILTERS:
            release_strings(FIELD(char **, base, f), COUNT(base, f));
            break;
        case SB_KEY_SECTION:
            sb_config__release(f->section, (char *)base + f->offset);
            break;
        case SB_KEY_LIST: {
            char **array = (char **)((char *)base + f->offset);
            size_t *count = COUNT(base, f);
            for (size_t k = 0; *array != NULL && k < *count; k++)
                f->item_free(*array + k * f->elem_size);
            sb_free(*array);
            *array = NULL;
            *count = 0;
            break;
        }
        default:
            break;
        }
    }
}

void sb_config__forget(const sb_config_table *section, void *base)
{
    for (size_t i = 0; i < section->count; i++) {
        const sb_config_key *f = &section->keys[i];
        if (f->flags & SB_KEY_ADAPTER)
            continue;
        switch (f->kind) {
        case SB_KEY_STRING:
        case SB_KEY_NAME:
        case SB_KEY_CHOICE:
            *FIELD(char *, base, f) = NULL;
            break;
        case SB_KEY_STRLIST:
        case SB_KEY_NAMES:
        case SB_KEY_FILTERS:
        case SB_KEY_LIST:
            *FIELD(void *, base, f) = NULL;
            *COUNT(base, f) = 0;
            break;
        case SB_KEY_SECTION:
            sb_config__forget(f->section, (char *)base + f->offset);
            break;
        default:
            break;
        }
    }
}

int sb_config__copy(const sb_config_table *section, void *dst, const void *src)
{
    for (size_t i = 0; i < section->count; i++) {
        const sb_config_key *f = &section->keys[i];
        if (f->flags & SB_KEY_ADAPTER)
            continue; /* the common struct's, handled by its owner */
        switch (f->kind) {
        case SB_KEY_STRING:
        case SB_KEY_NAME:
        case SB_KEY_CHOICE:
            if (*CFIELD(char *, src, f) != NULL) {
                *FIELD(char *, dst, f) = sb_strdup(*CFIELD(char *, src, f));
                if (*FIELD(char *, dst, f) == NULL)
                    return SB_ENOMEM;
            }
            break;
        case SB_KEY_ENUM:
        case SB_KEY_INT:
        case SB_KEY_BOOL:
            *FIELD(int, dst, f) = *CFIELD(int, src, f);
            break;
        case SB_KEY_INT64:
        case SB_KEY_SIZE:
        case SB_KEY_DURATION:
            *FIELD(int64_t, dst, f) = *CFIELD(int64_t, src, f);
            break;
        case SB_KEY_STRLIST:
        case SB_KEY_NAMES:
        case SB_KEY_FILTERS: {
            char *const *from = *CFIELD(char **, src, f);
            size_t n = *CCOUNT(src, f);
            char ***to = FIELD(char **, dst, f);
            if (from == NULL)
                break;
            *to = sb_calloc(n, sizeof **to);
            if (*to == NULL)
                return SB_ENOMEM;
            for (size_t k = 0; k < n; k++) {
                (*to)[k] = sb_strdup(from[k]);
                if ((*to)[k] == NULL)
                    return SB_ENOMEM;
                (*COUNT(dst, f))++; /* counted as copied: dst stays freeable */
            }
            break;
        }
        case SB_KEY_SECTION: {
            int rc = sb_config__copy(f->section, FIELD(char, dst, f), CFIELD(char, src, f));
            if (rc != 0)
                return rc;
            break;
        }
        case SB_KEY_LIST:
            break; /* whole configs are not copied */
        case SB_KEY_CUSTOM:
            break; /* the struct's owner copies it */
        }
    }
    return 0;
}

static int str_equal(const char *a, const char *b)
{
    return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

int sb_config__equal(const sb_config_table *section, const void *a, const void *b)
{
    for (size_t i = 0; i < section->count; i++) {
        const sb_config_key *f = &section->keys[i];
        if (f->flags & SB_KEY_ADAPTER)
            continue; /* the common struct's, handled by its owner */
        switch (f->kind) {
        case SB_KEY_STRING:
        case SB_KEY_NAME:
        case SB_KEY_CHOICE:
            if (!str_equal(*CFIELD(char *, a, f), *CFIELD(char *, b, f)))
                return 0;
            break;
        case SB_KEY_ENUM:
        case SB_KEY_INT:
        case SB_KEY_BOOL:
            if (*CFIELD(int, a, f) != *CFIELD(int, b, f))
                return 0;
            break;
        case SB_KEY_INT64:
        case SB_KEY_SIZE:
        case SB_KEY_DURATION:
            if (*CFIELD(int64_t, a, f) != *CFIELD(int64_t, b, f))
                return 0;
            break;
        case SB_KEY_STRLIST:
        case SB_KEY_NAMES:
        case SB_KEY_FILTERS: {
            size_t n = *CCOUNT(a, f);
            if (n != *CCOUNT(b, f))
                return 0;
            for (size_t k = 0; k < n; k++)
                if (!str_equal((*CFIELD(char **, a, f))[k], (*CFIELD(char **, b, f))[k]))
                    return 0;
            break;
        }
        case SB_KEY_SECTION:
            if (!sb_config__equal(f->section, CFIELD(char, a, f), CFIELD(char, b, f)))
                return 0;
            break;
        case SB_KEY_LIST:
        case SB_KEY_CUSTOM: /* the struct's owner compares it */
            break;
        }
    }
    return 1;
}
