/*
 * Route transforms: compiling the declared steps and running them on one
 * message (service/transform.h; README "Transforms").
 *
 * A step is a mapping with one key, its kind (`topic: plant/{1}/{2}`,
 * `encode: cp1252`, ...). Text values are templates: literal text with
 * {EXPR|FILTER...} parts, EXPR one of 1..N (a captured wildcard value),
 * topic, payload, ts, header.NAME, level.N or a JSON Pointer (/a/0/b) into
 * the payload, FILTER one of lower, upper, left:N, right:N, zero:N, cut:N.
 * The run keeps the payload as bytes and, once a step needed it as JSON, as
 * a jansson document; each form is made from the other only when a step
 * asks for it, so a chain of JSON steps parses and prints once.
 */
#include "service/transform.h"

#include "service/alloc.h"
#include "service/base64.h"
#include "service/codepage.h"
#include "service/error.h"
#include "service/jsonw.h"
#include "service/script.h"
#include "service/topic.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Values a topic's wildcards capture at most (filters are validated). */
#define MAX_CAPTURES 32
/* Filters one template part may chain. */
#define MAX_FILTERS 4
/* Reals print with 15 significant digits: every decimal of up to 15
 * digits (a sensor's "23.5") comes back as written. */
#define JSON_FLAGS (JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(15))

/* ---- the tree ---- */

static void tscript_free(sb_tscript *s)
{
    if (s == NULL)
        return;
    sb_free(s->path);
    sb_free(s->source);
    sb_free(s->error);
    sb_free(s);
}

static sb_tscript *tscript_copy(const sb_tscript *s)
{
    sb_tscript *c = sb_calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->len = s->len;
    if ((s->path != NULL && (c->path = sb_strdup(s->path)) == NULL) ||
        (s->error != NULL && (c->error = sb_strdup(s->error)) == NULL) ||
        (s->source != NULL && (c->source = sb_malloc(s->len + 1)) == NULL)) {
        tscript_free(c);
        return NULL;
    }
    if (s->source != NULL)
        memcpy(c->source, s->source, s->len + 1);
    return c;
}

static int same_str(const char *a, const char *b)
{
    return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

static int tscript_equal(const sb_tscript *a, const sb_tscript *b)
{
    if (a == NULL || b == NULL)
        return a == b;
    return same_str(a->path, b->path) && same_str(a->error, b->error) && a->len == b->len &&
           (a->source == NULL) == (b->source == NULL) &&
           (a->source == NULL || memcmp(a->source, b->source, a->len) == 0);
}

static void tnode_release(sb_tnode *n)
{
    sb_free(n->text);
    for (size_t i = 0; i < n->count; i++)
        tnode_release(&n->items[i]);
    sb_free(n->items);
    tscript_free(n->script);
}

sb_tnode *sb_tnode_script_name(sb_tnode *n)
{
    sb_tnode *v;
    if (n == NULL || n->kind != SB_TNODE_MAP || n->count != 2 || n->items[0].text == NULL ||
        strcmp(n->items[0].text, "lua") != 0)
        return NULL;
    v = &n->items[1];
    if (v->kind == SB_TNODE_SCALAR)
        return v;
    if (v->kind != SB_TNODE_MAP)
        return NULL;
    for (size_t i = 0; i + 1 < v->count; i += 2)
        if (strcmp(v->items[i].text, "script") == 0 && v->items[i + 1].kind == SB_TNODE_SCALAR)
            return &v->items[i + 1];
    return NULL;
}

void sb_tnode_free(sb_tnode *n)
{
    if (n == NULL)
        return;
    tnode_release(n);
    sb_free(n);
}

static int tnode_copy_into(sb_tnode *dst, const sb_tnode *src)
{
    *dst = *src;
    dst->text = NULL;
    dst->items = NULL;
    dst->count = 0;
    dst->script = NULL;
    if (src->text != NULL && (dst->text = sb_strdup(src->text)) == NULL)
        return SB_ENOMEM;
    if (src->script != NULL && (dst->script = tscript_copy(src->script)) == NULL)
        return SB_ENOMEM;
    if (src->count > 0) {
        dst->items = sb_calloc(src->count, sizeof *dst->items);
        if (dst->items == NULL)
            return SB_ENOMEM;
        for (size_t i = 0; i < src->count; i++) {
            dst->count = i + 1; /* counted first: a half copy is freed too */
            if (tnode_copy_into(&dst->items[i], &src->items[i]) != 0)
                return SB_ENOMEM;
        }
    }
    return 0;
}

sb_tnode *sb_tnode_copy(const sb_tnode *n)
{
    sb_tnode *c;
    if (n == NULL || (c = sb_calloc(1, sizeof *c)) == NULL)
        return NULL;
    if (tnode_copy_into(c, n) != 0) {
        sb_tnode_free(c);
        return NULL;
    }
    return c;
}

int sb_tnode_equal(const sb_tnode *a, const sb_tnode *b)
{
    if (a == NULL || b == NULL)
        return a == b;
    if (a->kind != b->kind || a->plain != b->plain || a->count != b->count)
        return 0;
    if ((a->text == NULL) != (b->text == NULL) ||
        (a->text != NULL && strcmp(a->text, b->text) != 0))
        return 0;
    if (!tscript_equal(a->script, b->script))
        return 0;
    for (size_t i = 0; i < a->count; i++)
        if (!sb_tnode_equal(&a->items[i], &b->items[i]))
            return 0;
    return 1;
}

/* ---- the compiled program ---- */

enum { SRC_LIT, SRC_CAPTURE, SRC_TOPIC, SRC_PAYLOAD, SRC_TS, SRC_HEADER, SRC_LEVEL, SRC_POINTER };
enum { F_LOWER, F_UPPER, F_LEFT, F_RIGHT, F_ZERO, F_CUT };

typedef struct tfilter {
    int kind;
    int width;
} tfilter;

typedef struct part {
    int src;
    int num;    /* CAPTURE, LEVEL: 1-based */
    char *text; /* LIT: the text; HEADER: the name; POINTER: the pointer */
    tfilter filters[MAX_FILTERS];
    int nfilters;
} part;

typedef struct tmpl {
    part *parts;
    size_t count;
} tmpl;

/* A JSON value to build: a literal, a template (a string, or typed when it
 * is one part without filters), an object or an array. */
enum { JV_LIT, JV_TMPL, JV_OBJECT, JV_ARRAY };
typedef struct jval {
    int kind;
    json_t *lit;
    tmpl t;
    char **keys; /* OBJECT */
    struct jval *items;
    size_t count;
} jval;

enum {
    ST_TOPIC,
    ST_HEADER_SET,
    ST_HEADER_REMOVE,
    ST_HEADER_FROM_LEVEL,
    ST_ENCODE,
    ST_DECODE,
    ST_WRAP,
    ST_UNWRAP,
    ST_PICK,
    ST_SET,
    ST_JSON,
    ST_FORMAT,
    ST_PARSE,
    ST_WHEN,
    ST_LUA
};
static const char *const step_names[] = {"topic",
                                         "header_set",
                                         "header_remove",
                                         "header_from_level",
                                         "encode",
                                         "decode",
                                         "wrap",
                                         "unwrap",
                                         "pick",
                                         "set",
                                         "json",
                                         "format",
                                         "parse",
                                         "when",
                                         "lua",
                                         NULL};

enum { ENC_BASE64 = -1, ENC_HEX = -2 };
enum { PARSE_NUMBER, PARSE_TEXT, PARSE_BOOL, PARSE_JSON };

typedef struct step {
    int kind;
    tmpl t;       /* TOPIC, FORMAT */
    char **names; /* HEADER_*: header names; SET: pointers */
    tmpl *values; /* HEADER_SET */
    int *levels;  /* HEADER_FROM_LEVEL */
    jval *vals;   /* SET */
    size_t count;
    int enc;       /* ENCODE, DECODE: a code page, ENC_BASE64 or ENC_HEX */
    char *pointer; /* PICK */
    jval jv;       /* JSON */
    int parse;     /* PARSE */
    /* WHEN: all must hold */
    char **topics;
    size_t ntopics;
    char **hnames, **hvalues; /* hvalues[i] NULL: the header is present */
    size_t nh;
    char **fptrs;
    json_t **fvals; /* NULL: the field is present */
    size_t nf;
    sb_script *script; /* LUA */
    char *file;        /* LUA: the script's path */
} step;

struct sb_transform {
    step *steps;
    size_t count;
    char **from;
    size_t from_count;
};

static void tmpl_free(tmpl *t)
{
    for (size_t i = 0; i < t->count; i++)
        sb_free(t->parts[i].text);
    sb_free(t->parts);
    t->parts = NULL;
    t->count = 0;
}

static void jval_free(jval *v)
{
    json_decref(v->lit);
    tmpl_free(&v->t);
    for (size_t i = 0; i < v->count; i++) {
        if (v->keys != NULL)
            sb_free(v->keys[i]);
        jval_free(&v->items[i]);
    }
    sb_free(v->keys);
    sb_free(v->items);
}

static void strs_free(char **s, size_t n)
{
    for (size_t i = 0; s != NULL && i < n; i++)
        sb_free(s[i]);
    sb_free(s);
}

static void step_free(step *s)
{
    tmpl_free(&s->t);
    strs_free(s->names, s->count);
    for (size_t i = 0; s->values != NULL && i < s->count; i++)
        tmpl_free(&s->values[i]);
    sb_free(s->values);
    sb_free(s->levels);
    for (size_t i = 0; s->vals != NULL && i < s->count; i++)
        jval_free(&s->vals[i]);
    sb_free(s->vals);
    sb_free(s->pointer);
    jval_free(&s->jv);
    strs_free(s->topics, s->ntopics);
    strs_free(s->hnames, s->nh);
    strs_free(s->hvalues, s->nh);
    strs_free(s->fptrs, s->nf);
    for (size_t i = 0; s->fvals != NULL && i < s->nf; i++)
        json_decref(s->fvals[i]);
    sb_free(s->fvals);
    sb_script_free(s->script);
    sb_free(s->file);
}

void sb_transform_free(sb_transform *t)
{
    if (t == NULL)
        return;
    for (size_t i = 0; i < t->count; i++)
        step_free(&t->steps[i]);
    sb_free(t->steps);
    strs_free(t->from, t->from_count);
    sb_free(t);
}

size_t sb_transform_steps(const sb_transform *t)
{
    return t == NULL ? 0 : t->count;
}

const char *const *sb_transform_step_names(void)
{
    return step_names;
}

/* ---- compiling ---- */

typedef struct cctx {
    sb_transform_error_cb cb;
    void *ctx;
    size_t spec;
    int errors;
    int nomem;
    int max_captures; /* of the route's filters */
} cctx;

static void cerror(cctx *c, const sb_tnode *n, const char *path, const char *fmt, ...)
    SB_PRINTF(4, 5);
static void cerror(cctx *c, const sb_tnode *n, const char *path, const char *fmt, ...)
{
    char msg[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    c->errors++;
    if (c->cb != NULL)
        c->cb(c->ctx, c->spec, n != NULL ? n->line : 0, n != NULL ? n->col : 0, path, msg);
}

static int count_captures(const char *filter)
{
    int n = 0;
    for (const char *p = filter; *p != '\0'; p++)
        if ((*p == '+' || *p == '#') && (p == filter || p[-1] == '/'))
            n++;
    return n;
}

/* A JSON Pointer (RFC 6901): empty or starting with '/', escapes ~0 ~1. */
static int pointer_valid(const char *p)
{
    if (p[0] != '\0' && p[0] != '/')
        return 0;
    for (const char *s = p; *s != '\0'; s++)
        if (*s == '~' && s[1] != '0' && s[1] != '1')
            return 0;
    return 1;
}

static int parse_width(const char *s, int *out)
{
    char *end;
    long v;
    if (!isdigit((unsigned char)*s))
        return -1;
    errno = 0;
    v = strtol(s, &end, 10);
    if (*end != '\0' || errno != 0 || v < 1 || v > 4096)
        return -1;
    *out = (int)v;
    return 0;
}

/* Parses one {EXPR|FILTER...} (text without the braces) into p. */
static int parse_expr(cctx *c, const sb_tnode *n, const char *path, char *expr, part *p)
{
    char *bar = strchr(expr, '|'), *f;
    char *end;

    if (bar != NULL)
        *bar = '\0';
    if (isdigit((unsigned char)expr[0])) {
        long v = strtol(expr, &end, 10);
        if (*end != '\0' || v < 1 || v > MAX_CAPTURES) {
            cerror(c, n, path, "{%s}: not a wildcard number (1..%d)", expr, MAX_CAPTURES);
            return -1;
        }
        if (v > c->max_captures) {
            cerror(c, n, path, "{%ld}: the route's from filters capture %d value%s", v,
                   c->max_captures, c->max_captures == 1 ? "" : "s");
            return -1;
        }
        p->src = SRC_CAPTURE;
        p->num = (int)v;
    } else if (strcmp(expr, "topic") == 0) {
        p->src = SRC_TOPIC;
    } else if (strcmp(expr, "payload") == 0) {
        p->src = SRC_PAYLOAD;
    } else if (strcmp(expr, "ts") == 0) {
        p->src = SRC_TS;
    } else if (strncmp(expr, "header.", 7) == 0 && expr[7] != '\0') {
        p->src = SRC_HEADER;
        p->text = sb_strdup(expr + 7);
    } else if (strncmp(expr, "level.", 6) == 0) {
        if (parse_width(expr + 6, &p->num) != 0) {
            cerror(c, n, path, "{%s}: a topic level is 1 or more", expr);
            return -1;
        }
        p->src = SRC_LEVEL;
    } else if (expr[0] == '/') {
        if (!pointer_valid(expr)) {
            cerror(c, n, path, "{%s}: not a JSON Pointer (~ must be ~0 or ~1)", expr);
            return -1;
        }
        p->src = SRC_POINTER;
        p->text = sb_strdup(expr);
    } else {
        cerror(c, n, path,
               "{%s}: unknown value (use 1..N, topic, payload, ts, header.NAME, level.N or a "
               "JSON Pointer such as /value)",
               expr);
        return -1;
    }
    if ((p->src == SRC_HEADER || p->src == SRC_POINTER) && p->text == NULL) {
        c->nomem = 1;
        return -1;
    }
    for (f = bar; f != NULL;) {
        char *name = f + 1, *next = strchr(name, '|'), *colon;
        tfilter *tf;
        if (next != NULL)
            *next = '\0';
        if (p->nfilters == MAX_FILTERS) {
            cerror(c, n, path, "at most %d filters per value", MAX_FILTERS);
            return -1;
        }
        tf = &p->filters[p->nfilters++];
        colon = strchr(name, ':');
        if (colon != NULL)
            *colon = '\0';
        if (strcmp(name, "lower") == 0 && colon == NULL) {
            tf->kind = F_LOWER;
        } else if (strcmp(name, "upper") == 0 && colon == NULL) {
            tf->kind = F_UPPER;
        } else if (colon != NULL && (strcmp(name, "left") == 0 || strcmp(name, "right") == 0 ||
                                     strcmp(name, "zero") == 0 || strcmp(name, "cut") == 0)) {
            tf->kind = name[0] == 'l'   ? F_LEFT
                       : name[0] == 'r' ? F_RIGHT
                       : name[0] == 'z' ? F_ZERO
                                        : F_CUT;
            if (parse_width(colon + 1, &tf->width) != 0) {
                cerror(c, n, path, "filter %s: the width must be 1..4096", name);
                return -1;
            }
        } else {
            cerror(c, n, path,
                   "unknown filter %s (use lower, upper, left:N, right:N, zero:N or cut:N)", name);
            return -1;
        }
        f = next;
    }
    return 0;
}

static int add_part(cctx *c, tmpl *t, part *p)
{
    part *np = sb_realloc(t->parts, (t->count + 1) * sizeof *np);
    if (np == NULL) {
        sb_free(p->text);
        c->nomem = 1;
        return -1;
    }
    t->parts = np;
    t->parts[t->count++] = *p;
    return 0;
}

/* Compiles template text s ("plant/{1}/{2|lower}"; {{ and }} are braces). */
static int compile_tmpl(cctx *c, const sb_tnode *n, const char *path, const char *s, tmpl *t)
{
    size_t len = strlen(s);
    char *lit = sb_malloc(len + 1);
    size_t ll = 0;
    int rc = 0;

    if (lit == NULL) {
        c->nomem = 1;
        return -1;
    }
    for (size_t i = 0; i < len && rc == 0; i++) {
        if ((s[i] == '{' || s[i] == '}') && s[i + 1] == s[i]) {
            lit[ll++] = s[i++];
            continue;
        }
        if (s[i] == '}') {
            cerror(c, n, path, "unmatched } (write }} for a brace)");
            rc = -1;
            break;
        }
        if (s[i] != '{') {
            lit[ll++] = s[i];
            continue;
        }
        const char *close = strchr(s + i, '}');
        if (close == NULL) {
            cerror(c, n, path, "unmatched { (write {{ for a brace)");
            rc = -1;
            break;
        }
        if (ll > 0) {
            part p = {.src = SRC_LIT, .text = sb_strndup(lit, ll)};
            if (p.text == NULL || add_part(c, t, &p) != 0) {
                c->nomem = 1;
                rc = -1;
                break;
            }
            ll = 0;
        }
        char *expr = sb_strndup(s + i + 1, (size_t)(close - s - i - 1));
        part p = {0};
        if (expr == NULL) {
            c->nomem = 1;
            rc = -1;
            break;
        }
        rc = parse_expr(c, n, path, expr, &p);
        sb_free(expr);
        if (rc == 0)
            rc = add_part(c, t, &p);
        else
            sb_free(p.text);
        i = (size_t)(close - s);
    }
    if (rc == 0 && ll > 0) {
        part p = {.src = SRC_LIT, .text = sb_strndup(lit, ll)};
        if (p.text == NULL || add_part(c, t, &p) != 0) {
            c->nomem = 1;
            rc = -1;
        }
    }
    sb_free(lit);
    return rc;
}

/* out = a + sep + b, cut to n bytes (key paths in messages). */
static void key_path(char *out, size_t n, const char *a, const char *sep, const char *b)
{
    size_t la = strlen(a), ls = strlen(sep), lb = strlen(b);
    if (n == 0)
        return;
    if (la >= n)
        la = n - 1;
    memcpy(out, a, la);
    if (ls > n - 1 - la)
        ls = n - 1 - la;
    memcpy(out + la, sep, ls);
    if (lb > n - 1 - la - ls)
        lb = n - 1 - la - ls;
    memcpy(out + la + ls, b, lb);
    out[la + ls + lb] = '\0';
}

static const char *kind_name(const sb_tnode *n)
{
    return n->kind == SB_TNODE_MAP ? "a mapping" : n->kind == SB_TNODE_LIST ? "a list" : "a string";
}

static int want_scalar(cctx *c, const sb_tnode *n, const char *path)
{
    if (n->kind == SB_TNODE_SCALAR)
        return 1;
    cerror(c, n, path, "expected a string, got %s", kind_name(n));
    return 0;
}

static int want_map(cctx *c, const sb_tnode *n, const char *path)
{
    if (n->kind == SB_TNODE_MAP && n->count > 0)
        return 1;
    cerror(c, n, path, "expected a mapping, got %s",
           n->kind == SB_TNODE_MAP ? "an empty one" : kind_name(n));
    return 0;
}

/* A plain scalar that reads as a JSON number, true, false or null. */
static json_t *plain_json(const sb_tnode *n)
{
    json_error_t jerr;
    json_t *v;
    if (!n->plain || n->text[0] == '\0')
        return NULL;
    if (strcmp(n->text, "~") == 0)
        return json_null();
    v = json_loads(n->text, JSON_DECODE_ANY, &jerr);
    if (v != NULL && (json_is_object(v) || json_is_array(v) || json_is_string(v))) {
        json_decref(v);
        return NULL;
    }
    return v;
}

static int compile_jval(cctx *c, const sb_tnode *n, const char *path, jval *v)
{
    char p[256];
    if (n->kind == SB_TNODE_SCALAR) {
        v->lit = plain_json(n);
        if (v->lit != NULL) {
            v->kind = JV_LIT;
            return 0;
        }
        v->kind = JV_TMPL;
        return compile_tmpl(c, n, path, n->text, &v->t);
    }
    v->kind = n->kind == SB_TNODE_MAP ? JV_OBJECT : JV_ARRAY;
    v->count = n->kind == SB_TNODE_MAP ? n->count / 2 : n->count;
    v->items = sb_calloc(v->count + 1, sizeof *v->items);
    if (v->kind == JV_OBJECT)
        v->keys = sb_calloc(v->count + 1, sizeof *v->keys);
    if (v->items == NULL || (v->kind == JV_OBJECT && v->keys == NULL)) {
        c->nomem = 1;
        return -1;
    }
    int rc = 0;
    for (size_t i = 0; i < v->count; i++) {
        const sb_tnode *el = v->kind == JV_OBJECT ? &n->items[2 * i + 1] : &n->items[i];
        if (v->kind == JV_OBJECT) {
            key_path(p, sizeof p, path, ".", n->items[2 * i].text);
            if ((v->keys[i] = sb_strdup(n->items[2 * i].text)) == NULL) {
                c->nomem = 1;
                return -1;
            }
        } else {
            {
                char idx[32];
                snprintf(idx, sizeof idx, "[%zu]", i);
                key_path(p, sizeof p, path, "", idx);
            }
        }
        if (compile_jval(c, el, p, &v->items[i]) != 0)
            rc = -1;
    }
    return rc;
}

static int strs_dup(cctx *c, char ***out, size_t n)
{
    *out = sb_calloc(n + 1, sizeof **out);
    if (*out == NULL)
        c->nomem = 1;
    return *out == NULL ? -1 : 0;
}

static int compile_encoding(cctx *c, const sb_tnode *v, const char *path, int *enc)
{
    if (!want_scalar(c, v, path))
        return -1;
    if (strcmp(v->text, "base64") == 0)
        *enc = ENC_BASE64;
    else if (strcmp(v->text, "hex") == 0)
        *enc = ENC_HEX;
    else if ((*enc = sb_codepage_parse(v->text)) == 0) {
        cerror(c, v, path,
               "unknown encoding %s (use base64, hex, or a code page: 437, 850, 866, 874, "
               "1250..1258, written 1252, cp1252 or windows-1252)",
               v->text);
        return -1;
    }
    return 0;
}

static int compile_when(cctx *c, const sb_tnode *v, const char *path, step *s)
{
    char p[256];
    int rc = 0;
    if (!want_map(c, v, path))
        return -1;
    for (size_t i = 0; i + 1 < v->count; i += 2) {
        const char *key = v->items[i].text;
        const sb_tnode *val = &v->items[i + 1];
        key_path(p, sizeof p, path, ".", key);
        if (strcmp(key, "topic") == 0) {
            const sb_tnode *els = val->kind == SB_TNODE_LIST ? val->items : val;
            size_t n = val->kind == SB_TNODE_LIST ? val->count : 1;
            if (s->topics != NULL) {
                cerror(c, &v->items[i], p, "duplicate key");
                rc = -1;
                continue;
            }
            if (n == 0 || strs_dup(c, &s->topics, n) != 0) {
                if (n == 0)
                    cerror(c, val, p, "must not be empty");
                rc = -1;
                continue;
            }
            for (size_t k = 0; k < n; k++) {
                const char *why;
                if (!want_scalar(c, &els[k], p)) {
                    rc = -1;
                    continue;
                }
                if (sb_filter_validate(els[k].text, strlen(els[k].text), &why) != 0) {
                    cerror(c, &els[k], p, "invalid topic filter %s: %s", els[k].text, why);
                    rc = -1;
                    continue;
                }
                if ((s->topics[s->ntopics++] = sb_strdup(els[k].text)) == NULL)
                    c->nomem = 1;
            }
        } else if (strcmp(key, "header") == 0 || strcmp(key, "field") == 0) {
            int field = key[0] == 'f';
            size_t n = val->kind == SB_TNODE_MAP ? val->count / 2 : 1;
            char ***names = field ? &s->fptrs : &s->hnames;
            if (*names != NULL) {
                cerror(c, &v->items[i], p, "duplicate key");
                rc = -1;
                continue;
            }
            if (val->kind == SB_TNODE_LIST || (val->kind == SB_TNODE_MAP && n == 0)) {
                cerror(c, val, p, "expected a name or a mapping of names to values");
                rc = -1;
                continue;
            }
            if (strs_dup(c, names, n) != 0 ||
                (field ? (s->fvals = sb_calloc(n + 1, sizeof *s->fvals)) == NULL
                       : strs_dup(c, &s->hvalues, n) != 0)) {
                c->nomem = 1;
                return -1;
            }
            for (size_t k = 0; k < n; k++) {
                const sb_tnode *name = val->kind == SB_TNODE_MAP ? &val->items[2 * k] : val;
                const sb_tnode *want = val->kind == SB_TNODE_MAP ? &val->items[2 * k + 1] : NULL;
                if (want != NULL && !want_scalar(c, want, p)) {
                    rc = -1;
                    continue;
                }
                if (field && !pointer_valid(name->text)) {
                    cerror(c, name, p, "%s is not a JSON Pointer (such as /value)", name->text);
                    rc = -1;
                    continue;
                }
                if (field) {
                    size_t at = s->nf++;
                    if ((s->fptrs[at] = sb_strdup(name->text)) == NULL)
                        c->nomem = 1;
                    if (want != NULL) {
                        s->fvals[at] = plain_json(want);
                        if (s->fvals[at] == NULL)
                            s->fvals[at] = json_string(want->text);
                        if (s->fvals[at] == NULL)
                            c->nomem = 1;
                    }
                } else {
                    size_t at = s->nh++;
                    if ((s->hnames[at] = sb_strdup(name->text)) == NULL ||
                        (want != NULL && (s->hvalues[at] = sb_strdup(want->text)) == NULL))
                        c->nomem = 1;
                }
            }
        } else {
            cerror(c, &v->items[i], p, "unknown condition (known: topic, header, field)");
            rc = -1;
        }
    }
    return rc;
}

/* A size: digits with an optional unit (B, KB, KiB, MB, MiB: all 1024-based
 * as in the rest of the config). -1 if it is not one. */
static int64_t parse_size(const char *t)
{
    static const struct {
        const char *unit;
        int64_t mult;
    } units[] = {
        {"", 1}, {"B", 1}, {"KB", 1024}, {"KiB", 1024}, {"MB", 1024 * 1024}, {"MiB", 1024 * 1024}};
    int64_t v = 0;
    const char *p = t;
    if (!isdigit((unsigned char)*p))
        return -1;
    for (; isdigit((unsigned char)*p); p++) {
        if (v > (INT64_MAX - 9) / 10)
            return -1;
        v = v * 10 + (*p - '0');
    }
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (strcmp(p, units[i].unit) == 0)
            return v > INT64_MAX / units[i].mult ? -1 : v * units[i].mult;
    return -1;
}

/* `lua: FILE` or `lua: {script: FILE, budget: N, memory: SIZE}`: the script
 * (read by the config into the scalar naming it) compiled in its sandbox. */
static int compile_lua(cctx *c, const sb_tnode *n, const sb_tnode *v, const char *path, step *s)
{
    sb_tnode *name = sb_tnode_script_name((sb_tnode *)n);
    int64_t budget = SB_SCRIPT_BUDGET, memory = SB_SCRIPT_MEMORY;
    char why[400];
    int rc, errors = c->errors;

    if (v->kind == SB_TNODE_MAP) {
        for (size_t i = 0; i + 1 < v->count; i += 2) {
            const sb_tnode *k = &v->items[i], *val = &v->items[i + 1];
            char kp[300];
            key_path(kp, sizeof kp, path, ".", k->text);
            if (strcmp(k->text, "script") == 0) {
                want_scalar(c, val, kp);
            } else if (strcmp(k->text, "budget") == 0) {
                if (!want_scalar(c, val, kp))
                    continue;
                budget = parse_size(val->text);
                if (budget < 1000 || budget > 1000000000 ||
                    strspn(val->text, "0123456789") != strlen(val->text))
                    cerror(c, val, kp,
                           "instructions per call: a number from 1000 to 1000000000 (default %d)",
                           SB_SCRIPT_BUDGET);
            } else if (strcmp(k->text, "memory") == 0) {
                if (!want_scalar(c, val, kp))
                    continue;
                memory = parse_size(val->text);
                if (memory < 64 * 1024 || memory > 1024 * 1024 * 1024)
                    cerror(c, val, kp, "a size from 64KiB to 1024MiB (default %dMiB)",
                           SB_SCRIPT_MEMORY / (1024 * 1024));
            } else {
                cerror(c, k, kp, "unknown key (known: script, budget, memory)");
            }
        }
        if (name == NULL) {
            cerror(c, v, path, "needs script: the Lua file to run");
            return -1;
        }
    } else if (v->kind != SB_TNODE_SCALAR) {
        cerror(c, v, path, "expected a Lua file or {script: FILE, budget: N, memory: SIZE}");
        return -1;
    }
    if (name->text[0] == '\0') {
        cerror(c, name, path, "expected a Lua file, got an empty string");
        return -1;
    }
    if (c->errors > errors)
        return -1;
    if (name->script == NULL || name->script->source == NULL) {
        cerror(c, name, path, "%s",
               name->script != NULL && name->script->error != NULL
                   ? name->script->error
                   : "the script was not read (only a config file can name one)");
        return -1;
    }
    if ((s->file = sb_strdup(name->script->path)) == NULL) {
        c->nomem = 1;
        return -1;
    }
    rc = sb_script_new(&s->script, name->script->path, name->script->source, name->script->len,
                       budget, (size_t)memory, why, sizeof why);
    if (rc == SB_ENOMEM) {
        c->nomem = 1;
        return -1;
    }
    if (rc != 0) {
        cerror(c, name, path, "%s", why);
        return -1;
    }
    return 0;
}

static int compile_step(cctx *c, const sb_tnode *n, const char *path, step *s)
{
    char p[256];
    const sb_tnode *key, *v;
    int kind = -1;

    if (n->kind != SB_TNODE_MAP || n->count != 2) {
        cerror(c, n, path, "a step is a mapping with one key, its kind (%s)",
               "topic, header_set, header_remove, header_from_level, encode, decode, wrap, "
               "unwrap, pick, set, json, format, parse, when, lua");
        return -1;
    }
    key = &n->items[0];
    v = &n->items[1];
    for (int i = 0; step_names[i] != NULL; i++)
        if (strcmp(step_names[i], key->text) == 0)
            kind = i;
    key_path(p, sizeof p, path, ".", key->text);
    if (kind < 0) {
        cerror(c, key, p,
               "unknown step (known: topic, header_set, header_remove, header_from_level, "
               "encode, decode, wrap, unwrap, pick, set, json, format, parse, when, lua)");
        return -1;
    }
    s->kind = kind;
    switch (kind) {
    case ST_TOPIC:
    case ST_FORMAT:
        if (!want_scalar(c, v, p))
            return -1;
        if (kind == ST_TOPIC && v->text[0] == '\0') {
            cerror(c, v, p, "must not be empty");
            return -1;
        }
        return compile_tmpl(c, v, p, v->text, &s->t);
    case ST_HEADER_SET:
    case ST_HEADER_FROM_LEVEL:
        if (!want_map(c, v, p))
            return -1;
        s->count = v->count / 2;
        if (strs_dup(c, &s->names, s->count) != 0)
            return -1;
        if (kind == ST_HEADER_SET)
            s->values = sb_calloc(s->count + 1, sizeof *s->values);
        else
            s->levels = sb_calloc(s->count + 1, sizeof *s->levels);
        if (s->values == NULL && s->levels == NULL) {
            c->nomem = 1;
            return -1;
        }
        for (size_t i = 0; i < s->count; i++) {
            const sb_tnode *val = &v->items[2 * i + 1];
            char hp[300];
            key_path(hp, sizeof hp, p, ".", v->items[2 * i].text);
            if ((s->names[i] = sb_strdup(v->items[2 * i].text)) == NULL) {
                c->nomem = 1;
                return -1;
            }
            if (!want_scalar(c, val, hp))
                continue;
            if (kind == ST_HEADER_SET)
                compile_tmpl(c, val, hp, val->text, &s->values[i]);
            else if (parse_width(val->text, &s->levels[i]) != 0)
                cerror(c, val, hp, "a topic level is a number from 1");
        }
        return 0;
    case ST_HEADER_REMOVE: {
        const sb_tnode *els = v->kind == SB_TNODE_LIST ? v->items : v;
        size_t cnt = v->kind == SB_TNODE_LIST ? v->count : 1;
        if (v->kind == SB_TNODE_MAP || cnt == 0) {
            cerror(c, v, p, "expected a header name or a list of them");
            return -1;
        }
        if (strs_dup(c, &s->names, cnt) != 0)
            return -1;
        for (size_t i = 0; i < cnt; i++) {
            if (!want_scalar(c, &els[i], p))
                continue;
            if ((s->names[s->count++] = sb_strdup(els[i].text)) == NULL)
                c->nomem = 1;
        }
        return 0;
    }
    case ST_ENCODE:
    case ST_DECODE:
        return compile_encoding(c, v, p, &s->enc);
    case ST_WRAP:
    case ST_UNWRAP:
        if (!want_scalar(c, v, p))
            return -1;
        if (strcmp(v->text, "envelope") != 0) {
            cerror(c, v, p, "unknown form %s (known: envelope)", v->text);
            return -1;
        }
        return 0;
    case ST_PICK:
        if (!want_scalar(c, v, p))
            return -1;
        if (!pointer_valid(v->text)) {
            cerror(c, v, p, "%s is not a JSON Pointer (such as /value)", v->text);
            return -1;
        }
        s->pointer = sb_strdup(v->text);
        if (s->pointer == NULL)
            c->nomem = 1;
        return 0;
    case ST_SET:
        if (!want_map(c, v, p))
            return -1;
        s->count = v->count / 2;
        if (strs_dup(c, &s->names, s->count) != 0)
            return -1;
        s->vals = sb_calloc(s->count + 1, sizeof *s->vals);
        if (s->vals == NULL) {
            c->nomem = 1;
            return -1;
        }
        for (size_t i = 0; i < s->count; i++) {
            const sb_tnode *ptr = &v->items[2 * i];
            char hp[300];
            key_path(hp, sizeof hp, p, ".", ptr->text);
            if ((s->names[i] = sb_strdup(ptr->text)) == NULL) {
                c->nomem = 1;
                return -1;
            }
            if (ptr->text[0] != '/' || !pointer_valid(ptr->text)) {
                cerror(c, ptr, hp, "%s is not a JSON Pointer to a field (such as /value)",
                       ptr->text);
                continue;
            }
            compile_jval(c, &v->items[2 * i + 1], hp, &s->vals[i]);
        }
        return 0;
    case ST_JSON:
        return compile_jval(c, v, p, &s->jv);
    case ST_PARSE:
        if (!want_scalar(c, v, p))
            return -1;
        if (strcmp(v->text, "number") == 0)
            s->parse = PARSE_NUMBER;
        else if (strcmp(v->text, "text") == 0)
            s->parse = PARSE_TEXT;
        else if (strcmp(v->text, "bool") == 0)
            s->parse = PARSE_BOOL;
        else if (strcmp(v->text, "json") == 0)
            s->parse = PARSE_JSON;
        else {
            cerror(c, v, p, "unknown type %s (known: number, text, bool, json)", v->text);
            return -1;
        }
        return 0;
    case ST_WHEN:
        return compile_when(c, v, p, s);
    case ST_LUA:
        return compile_lua(c, n, v, p, s);
    }
    return 0;
}

int sb_transform_compile(sb_transform **out, const sb_tnode *const *specs, size_t count,
                         const char *const *from, size_t from_count, sb_transform_error_cb cb,
                         void *ctx)
{
    cctx c = {.cb = cb, .ctx = ctx};
    sb_transform *t;
    size_t total = 0;
    char path[64];

    *out = NULL;
    for (size_t i = 0; i < from_count; i++) {
        int k = count_captures(from[i]);
        if (k > c.max_captures)
            c.max_captures = k;
    }
    for (size_t i = 0; i < count; i++)
        if (specs[i] != NULL)
            total += specs[i]->kind == SB_TNODE_LIST ? specs[i]->count : 1;
    if (total == 0) {
        for (size_t i = 0; i < count; i++)
            if (specs[i] != NULL) {
                c.spec = i;
                cerror(&c, specs[i], "", "expected a step or a list of steps");
            }
        return c.errors ? SB_ECONFIG : 0;
    }
    t = sb_calloc(1, sizeof *t);
    if (t == NULL || (t->steps = sb_calloc(total, sizeof *t->steps)) == NULL ||
        (t->from = sb_calloc(from_count + 1, sizeof *t->from)) == NULL) {
        sb_transform_free(t);
        return SB_ENOMEM;
    }
    for (size_t i = 0; i < from_count; i++) {
        if ((t->from[i] = sb_strdup(from[i])) == NULL) {
            sb_transform_free(t);
            return SB_ENOMEM;
        }
        t->from_count++;
    }
    for (size_t i = 0; i < count && !c.nomem; i++) {
        const sb_tnode *sp = specs[i];
        if (sp == NULL)
            continue;
        c.spec = i;
        if (sp->kind == SB_TNODE_SCALAR) {
            cerror(&c, sp, "", "expected a step or a list of steps, got a string");
            continue;
        }
        size_t n = sp->kind == SB_TNODE_LIST ? sp->count : 1;
        for (size_t k = 0; k < n && !c.nomem; k++) {
            const sb_tnode *st = sp->kind == SB_TNODE_LIST ? &sp->items[k] : sp;
            if (sp->kind == SB_TNODE_LIST)
                snprintf(path, sizeof path, "[%zu]", k);
            else
                path[0] = '\0';
            t->count++; /* counted first: a half-compiled step is freed too */
            compile_step(&c, st, path, &t->steps[t->count - 1]);
        }
    }
    if (c.nomem || c.errors) {
        sb_transform_free(t);
        return c.nomem ? SB_ENOMEM : SB_ECONFIG;
    }
    *out = t;
    return 0;
}

/* ---- running ---- */

typedef struct buf {
    char *p;
    size_t len, cap;
    int nomem;
} buf;

static void buf_add(buf *b, const char *s, size_t n)
{
    if (b->nomem)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *np = sb_realloc(b->p, cap);
        if (np == NULL) {
            b->nomem = 1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

typedef struct run {
    const sb_transform *t;
    const sb_message *in;
    char *topic;
    unsigned char *payload; /* NULL with doc set: the payload is doc, printed */
    size_t len;
    json_t *doc; /* the payload as JSON, once a step needed it */
    sb_header *h;
    size_t nh;
    const char *cap[MAX_CAPTURES];
    size_t cap_len[MAX_CAPTURES];
    int ncap;
    char *why;
    size_t why_n;
    int step; /* 1-based, for messages */
} run;

static int fail(run *r, const char *fmt, ...) SB_PRINTF(2, 3);
static int fail(run *r, const char *fmt, ...)
{
    va_list ap;
    int k = snprintf(r->why, r->why_n, "step %d (%s): ", r->step,
                     step_names[r->t->steps[r->step - 1].kind]);
    va_start(ap, fmt);
    if (k >= 0 && (size_t)k < r->why_n)
        vsnprintf(r->why + k, r->why_n - (size_t)k, fmt, ap);
    va_end(ap);
    return SB_EINVAL;
}

static void set_payload(run *r, unsigned char *p, size_t len)
{
    sb_free(r->payload);
    r->payload = p;
    r->len = len;
    json_decref(r->doc);
    r->doc = NULL;
}

/* The payload as bytes (printing the document if that is what it is). */
static int need_bytes(run *r)
{
    size_t n;
    unsigned char *p;
    if (r->payload != NULL || r->doc == NULL)
        return 0;
    n = json_dumpb(r->doc, NULL, 0, JSON_FLAGS);
    p = sb_malloc(n + 1);
    if (p == NULL)
        return SB_ENOMEM;
    json_dumpb(r->doc, (char *)p, n, JSON_FLAGS);
    r->payload = p;
    r->len = n;
    return 0;
}

/* The payload as a JSON document. */
static int need_json(run *r)
{
    json_error_t jerr;
    if (r->doc != NULL)
        return 0;
    r->doc = json_loadb((const char *)r->payload, r->len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    if (r->doc == NULL)
        return fail(r, "the payload is not JSON: %s at byte %d", jerr.text, jerr.position);
    return 0;
}

/* The document changed: the bytes are made again when needed. */
static void doc_changed(run *r, json_t *doc)
{
    if (doc != r->doc) {
        json_decref(r->doc);
        r->doc = doc;
    }
    sb_free(r->payload);
    r->payload = NULL;
    r->len = 0;
}

static void captures(run *r)
{
    const char *topic = r->in->topic;
    for (size_t i = 0; i < r->t->from_count; i++) {
        const char *f = r->t->from[i], *t = topic;
        if (!sb_topic_match(f, topic))
            continue;
        while (*f != '\0' && r->ncap < MAX_CAPTURES) {
            const char *fe = strchr(f, '/'), *te;
            size_t fl = fe ? (size_t)(fe - f) : strlen(f);
            if (fl == 1 && f[0] == '#') {
                r->cap[r->ncap] = t;
                r->cap_len[r->ncap++] = t != NULL ? strlen(t) : 0;
                break;
            }
            if (t == NULL)
                break;
            te = strchr(t, '/');
            if (fl == 1 && f[0] == '+') {
                r->cap[r->ncap] = t;
                r->cap_len[r->ncap++] = te ? (size_t)(te - t) : strlen(t);
            }
            t = te ? te + 1 : NULL;
            if (fe == NULL)
                break;
            f = fe + 1;
        }
        return;
    }
}

static const char *header_get(const run *r, const char *key)
{
    for (size_t i = 0; i < r->nh; i++)
        if (strcmp(r->h[i].key, key) == 0)
            return r->h[i].value;
    return NULL;
}

/* Level n (1-based) of the current topic, or 0 if it has fewer. */
static int topic_level(const char *topic, int n, const char **s, size_t *len)
{
    const char *p = topic;
    for (int i = 1; i < n; i++) {
        p = strchr(p, '/');
        if (p == NULL)
            return 0;
        p++;
    }
    const char *e = strchr(p, '/');
    *s = p;
    *len = e ? (size_t)(e - p) : strlen(p);
    return 1;
}

/* RFC 6901: the value at pointer p in doc, or NULL. With `create`, missing
 * objects on the way are made, and *parent / *last name where to set. */
static json_t *pointer_get(json_t *doc, const char *p)
{
    json_t *cur = doc;
    char tok[256];
    while (*p != '\0' && cur != NULL) {
        size_t k = 0;
        p++;
        while (*p != '\0' && *p != '/' && k + 1 < sizeof tok) {
            if (*p == '~') {
                tok[k++] = p[1] == '1' ? '/' : '~';
                p += 2;
            } else {
                tok[k++] = *p++;
            }
        }
        tok[k] = '\0';
        if (json_is_object(cur)) {
            cur = json_object_get(cur, tok);
        } else if (json_is_array(cur)) {
            char *end;
            unsigned long idx = strtoul(tok, &end, 10);
            if (k == 0 || *end != '\0' || !isdigit((unsigned char)tok[0]))
                return NULL;
            cur = json_array_get(cur, idx);
        } else {
            return NULL;
        }
    }
    return cur;
}

/* Sets the value at pointer p (not "") in *doc to v (stolen). Missing
 * objects on the way are created; "-" appends to an array. */
static int pointer_set(run *r, json_t **doc, const char *p, json_t *v)
{
    json_t *cur;
    char tok[256];

    if (!json_is_object(*doc) && !json_is_array(*doc)) {
        json_t *o = json_object();
        if (o == NULL) {
            json_decref(v);
            return SB_ENOMEM;
        }
        json_decref(*doc);
        *doc = o;
    }
    cur = *doc;
    for (;;) {
        size_t k = 0;
        p++;
        while (*p != '\0' && *p != '/' && k + 1 < sizeof tok) {
            if (*p == '~') {
                tok[k++] = p[1] == '1' ? '/' : '~';
                p += 2;
            } else {
                tok[k++] = *p++;
            }
        }
        tok[k] = '\0';
        int last = *p == '\0';
        if (json_is_object(cur)) {
            if (last)
                return json_object_set_new(cur, tok, v) == 0 ? 0 : SB_ENOMEM;
            json_t *next = json_object_get(cur, tok);
            if (next == NULL || (!json_is_object(next) && !json_is_array(next))) {
                next = json_object();
                if (next == NULL || json_object_set_new(cur, tok, next) != 0) {
                    json_decref(v);
                    return SB_ENOMEM;
                }
            }
            cur = next;
        } else {
            char *end;
            unsigned long idx = strtoul(tok, &end, 10);
            int append = strcmp(tok, "-") == 0;
            if (!append && (k == 0 || *end != '\0' || !isdigit((unsigned char)tok[0]) ||
                            idx > json_array_size(cur))) {
                json_decref(v);
                return fail(r, "%s: no such array element", tok);
            }
            if (append || idx == json_array_size(cur)) {
                json_t *el = last ? v : json_object();
                /* json_array_append_new frees el when it fails */
                if (el == NULL || json_array_append_new(cur, el) != 0) {
                    if (!last)
                        json_decref(v);
                    return SB_ENOMEM;
                }
                if (last)
                    return 0;
                cur = el;
            } else if (last) {
                return json_array_set_new(cur, idx, v) == 0 ? 0 : SB_ENOMEM;
            } else {
                cur = json_array_get(cur, idx);
                if (!json_is_object(cur) && !json_is_array(cur)) {
                    json_decref(v);
                    return fail(r, "element %lu is not an object or array", idx);
                }
            }
        }
    }
}

/* A value as text: strings as they are, the rest as JSON. */
static void json_text(buf *b, const json_t *v)
{
    if (json_is_string(v)) {
        buf_add(b, json_string_value(v), json_string_length(v));
        return;
    }
    size_t n = json_dumpb(v, NULL, 0, JSON_FLAGS);
    char small[64];
    char *p = n < sizeof small ? small : sb_malloc(n + 1);
    if (p == NULL) {
        b->nomem = 1;
        return;
    }
    json_dumpb(v, p, n, JSON_FLAGS);
    buf_add(b, p, n);
    if (p != small)
        sb_free(p);
}

static size_t utf8_chars(const char *s, size_t len)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80)
            n++;
    return n;
}

/* Applies filters to the value in b from offset `from`. */
static int apply_filters(run *r, buf *b, size_t from, const part *p)
{
    for (int i = 0; i < p->nfilters; i++) {
        const tfilter *f = &p->filters[i];
        char *s = b->p + from;
        size_t len = b->len - from, chars = utf8_chars(s, len);
        switch (f->kind) {
        case F_LOWER:
        case F_UPPER:
            for (size_t k = 0; k < len; k++)
                s[k] = (char)(f->kind == F_LOWER ? tolower((unsigned char)s[k])
                                                 : toupper((unsigned char)s[k]));
            break;
        case F_CUT:
            if (chars > (size_t)f->width) {
                size_t k = 0, c = 0;
                while (k < len && c <= (size_t)f->width) {
                    if (((unsigned char)s[k] & 0xC0) != 0x80 && ++c > (size_t)f->width)
                        break;
                    k++;
                }
                b->len = from + k;
                b->p[b->len] = '\0';
            }
            break;
        case F_LEFT:
        case F_RIGHT:
        case F_ZERO: {
            size_t pad = (size_t)f->width - chars;
            char fill = f->kind == F_ZERO ? '0' : ' ';
            if (chars > (size_t)f->width)
                return fail(r, "\"%.40s\" is longer than %d characters", s, f->width);
            for (size_t k = 0; k < pad; k++)
                buf_add(b, &fill, 1);
            if (b->nomem)
                return SB_ENOMEM;
            s = b->p + from;
            if (f->kind != F_LEFT) {
                /* zero: after a sign */
                size_t sign = f->kind == F_ZERO && len > 0 && (s[0] == '-' || s[0] == '+');
                memmove(s + pad + sign, s + sign, len - sign);
                memset(s + sign, fill, pad);
            }
            break;
        }
        }
    }
    return 0;
}

static int expand_part(run *r, buf *b, const part *p)
{
    const char *s = NULL;
    size_t len = 0;
    char num[32];
    int rc;

    switch (p->src) {
    case SRC_LIT:
        s = p->text;
        len = strlen(s);
        break;
    case SRC_CAPTURE:
        if (p->num <= r->ncap && r->cap[p->num - 1] != NULL) {
            s = r->cap[p->num - 1];
            len = r->cap_len[p->num - 1];
        }
        break;
    case SRC_TOPIC:
        s = r->topic;
        len = strlen(s);
        break;
    case SRC_PAYLOAD:
        if ((rc = need_bytes(r)) != 0)
            return rc;
        s = (const char *)r->payload;
        len = r->len;
        break;
    case SRC_TS:
        snprintf(num, sizeof num, "%lld", (long long)r->in->created_ms);
        s = num;
        len = strlen(num);
        break;
    case SRC_HEADER:
        s = header_get(r, p->text);
        if (s == NULL)
            return fail(r, "no header %s", p->text);
        len = strlen(s);
        break;
    case SRC_LEVEL:
        if (!topic_level(r->topic, p->num, &s, &len))
            return fail(r, "topic %s has no level %d", r->topic, p->num);
        break;
    case SRC_POINTER: {
        json_t *v;
        if ((rc = need_json(r)) != 0)
            return rc;
        v = pointer_get(r->doc, p->text);
        if (v == NULL)
            return fail(r, "the payload has no %s", p->text);
        size_t from = b->len;
        json_text(b, v);
        return b->nomem ? SB_ENOMEM : apply_filters(r, b, from, p);
    }
    }
    size_t from = b->len;
    if (len > 0)
        buf_add(b, s, len);
    if (b->nomem)
        return SB_ENOMEM;
    return apply_filters(r, b, from, p);
}

/* Expands t into a new NUL-terminated string *out (sb_free). */
static int expand(run *r, const tmpl *t, char **out, size_t *out_len)
{
    buf b = {0};
    int rc = 0;
    buf_add(&b, "", 0);
    for (size_t i = 0; i < t->count && rc == 0; i++)
        rc = expand_part(r, &b, &t->parts[i]);
    if (rc == 0 && b.nomem)
        rc = SB_ENOMEM;
    if (rc != 0) {
        sb_free(b.p);
        return rc;
    }
    *out = b.p;
    if (out_len != NULL)
        *out_len = b.len;
    return 0;
}

/* Builds the JSON value v describes (new reference in *out). */
static int build(run *r, const jval *v, json_t **out)
{
    int rc;
    *out = NULL;
    switch (v->kind) {
    case JV_LIT:
        *out = json_incref(v->lit);
        return 0;
    case JV_TMPL:
        if (v->t.count == 1 && v->t.parts[0].nfilters == 0) {
            const part *p = &v->t.parts[0];
            if (p->src == SRC_TS) {
                *out = json_integer(r->in->created_ms);
                return *out ? 0 : SB_ENOMEM;
            }
            if (p->src == SRC_POINTER) {
                if ((rc = need_json(r)) != 0)
                    return rc;
                json_t *at = pointer_get(r->doc, p->text);
                if (at == NULL)
                    return fail(r, "the payload has no %s", p->text);
                *out = json_deep_copy(at);
                return *out ? 0 : SB_ENOMEM;
            }
            if (p->src == SRC_PAYLOAD) {
                /* the payload's JSON value; text that is not JSON as a string */
                json_error_t jerr;
                if (r->doc != NULL) {
                    *out = json_deep_copy(r->doc);
                    return *out ? 0 : SB_ENOMEM;
                }
                *out = json_loadb((const char *)r->payload, r->len, JSON_DECODE_ANY, &jerr);
                if (*out != NULL)
                    return 0;
            }
        }
        {
            char *s;
            size_t len;
            if ((rc = expand(r, &v->t, &s, &len)) != 0)
                return rc;
            *out = json_stringn(s, len);
            sb_free(s);
            if (*out == NULL)
                return fail(r, "the text is not valid UTF-8");
        }
        return 0;
    case JV_OBJECT:
    case JV_ARRAY:
        *out = v->kind == JV_OBJECT ? json_object() : json_array();
        if (*out == NULL)
            return SB_ENOMEM;
        for (size_t i = 0; i < v->count; i++) {
            json_t *el;
            if ((rc = build(r, &v->items[i], &el)) != 0 ||
                (v->kind == JV_OBJECT ? json_object_set_new(*out, v->keys[i], el)
                                      : json_array_append_new(*out, el)) != 0) {
                json_decref(*out);
                *out = NULL;
                return rc != 0 ? rc : SB_ENOMEM;
            }
        }
        return 0;
    }
    return 0;
}

static int header_put(run *r, const char *key, char *value /* stolen */)
{
    for (size_t i = 0; i < r->nh; i++)
        if (strcmp(r->h[i].key, key) == 0) {
            sb_free(r->h[i].value);
            r->h[i].value = value;
            return 0;
        }
    sb_header *nh = sb_realloc(r->h, (r->nh + 1) * sizeof *nh);
    char *k = sb_strdup(key);
    if (nh != NULL)
        r->h = nh;
    if (nh == NULL || k == NULL) {
        sb_free(k);
        sb_free(value);
        return SB_ENOMEM;
    }
    r->h[r->nh].key = k;
    r->h[r->nh++].value = value;
    return 0;
}

static void header_del(run *r, const char *key)
{
    size_t o = 0;
    for (size_t i = 0; i < r->nh; i++) {
        if (strcmp(r->h[i].key, key) == 0) {
            sb_free(r->h[i].key);
            sb_free(r->h[i].value);
            continue;
        }
        r->h[o++] = r->h[i];
    }
    r->nh = o;
}

static void headers_clear(run *r)
{
    for (size_t i = 0; i < r->nh; i++) {
        sb_free(r->h[i].key);
        sb_free(r->h[i].value);
    }
    r->nh = 0;
}

static const char hexdig[] = "0123456789abcdef";

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

static int do_encoding(run *r, const step *s)
{
    unsigned char *out = NULL;
    size_t out_len = 0;
    char why[160];
    int rc;

    if ((rc = need_bytes(r)) != 0)
        return rc;
    if (s->enc == ENC_BASE64 && s->kind == ST_ENCODE) {
        char *b = sb_base64_encode(r->payload, r->len);
        if (b == NULL)
            return SB_ENOMEM;
        set_payload(r, (unsigned char *)b, strlen(b));
        return 0;
    }
    if (s->enc == ENC_BASE64) {
        rc = sb_base64_decode((const char *)r->payload, r->len, &out, &out_len);
        if (rc == SB_ENOMEM)
            return rc;
        if (rc != 0)
            return fail(r, "the payload is not base64");
    } else if (s->enc == ENC_HEX && s->kind == ST_ENCODE) {
        out = sb_malloc(r->len * 2 + 1);
        if (out == NULL)
            return SB_ENOMEM;
        for (size_t i = 0; i < r->len; i++) {
            out[2 * i] = (unsigned char)hexdig[r->payload[i] >> 4];
            out[2 * i + 1] = (unsigned char)hexdig[r->payload[i] & 15];
        }
        out_len = r->len * 2;
    } else if (s->enc == ENC_HEX) {
        if (r->len % 2 != 0)
            return fail(r, "the payload is not hex (odd length %zu)", r->len);
        out = sb_malloc(r->len / 2 + 1);
        if (out == NULL)
            return SB_ENOMEM;
        for (size_t i = 0; i < r->len / 2; i++) {
            int hi = hexval(r->payload[2 * i]), lo = hexval(r->payload[2 * i + 1]);
            if (hi < 0 || lo < 0) {
                sb_free(out);
                return fail(r, "the payload is not hex (byte %zu)", hi < 0 ? 2 * i : 2 * i + 1);
            }
            out[i] = (unsigned char)(hi << 4 | lo);
        }
        out_len = r->len / 2;
    } else {
        rc =
            s->kind == ST_ENCODE
                ? sb_codepage_from_utf8(&out, &out_len, s->enc, r->payload, r->len, why, sizeof why)
                : sb_codepage_to_utf8(&out, &out_len, s->enc, r->payload, r->len, why, sizeof why);
        if (rc == SB_ENOMEM)
            return rc;
        if (rc != 0)
            return fail(r, "%s", why);
    }
    set_payload(r, out, out_len);
    return 0;
}

/* Written directly rather than through a jansson tree: an envelope per
 * message is the common case, and the tree cost more than the rest of the
 * delivery (a later step that needs the JSON parses it). */
static int do_wrap(run *r)
{
    sb_jsonw w = {0};
    int rc;
    if ((rc = need_bytes(r)) != 0)
        return rc;
    sb_jsonw_lit(&w, "{");
    if (sb_utf8_valid((const char *)r->payload, r->len)) {
        sb_jsonw_lit(&w, "\"topic\":");
        sb_jsonw_str(&w, r->topic, strlen(r->topic));
        sb_jsonw_lit(&w, ",\"payload\":");
        sb_jsonw_str(&w, (const char *)r->payload, r->len);
    } else {
        char *b = sb_base64_encode(r->payload, r->len);
        if (b == NULL) {
            sb_jsonw_free(&w);
            return SB_ENOMEM;
        }
        sb_jsonw_lit(&w, "\"encoding\":\"base64\",\"topic\":");
        sb_jsonw_str(&w, r->topic, strlen(r->topic));
        sb_jsonw_lit(&w, ",\"payload\":");
        sb_jsonw_str(&w, b, strlen(b));
        sb_free(b);
    }
    sb_jsonw_lit(&w, ",\"headers\":{");
    for (size_t i = 0; i < r->nh; i++) {
        const char *v = r->h[i].value;
        if (i > 0)
            sb_jsonw_lit(&w, ",");
        sb_jsonw_str(&w, r->h[i].key, strlen(r->h[i].key));
        sb_jsonw_lit(&w, ":");
        if (sb_utf8_valid(v, strlen(v)))
            sb_jsonw_str(&w, v, strlen(v));
        else
            sb_jsonw_lit(&w, "null"); /* a header value that is not UTF-8 */
    }
    sb_jsonw_lit(&w, "},\"ts\":");
    sb_jsonw_int(&w, r->in->created_ms);
    sb_jsonw_lit(&w, "}");
    if (w.failed) {
        sb_jsonw_free(&w);
        return SB_ENOMEM;
    }
    set_payload(r, (unsigned char *)w.buf, w.len); /* now owned by r */
    return 0;
}

static int do_unwrap(run *r)
{
    json_t *topic, *payload, *headers, *enc;
    unsigned char *bytes = NULL;
    size_t len = 0;
    int rc;

    if ((rc = need_json(r)) != 0)
        return rc;
    if (!json_is_object(r->doc))
        return fail(r, "the payload is not a JSON object");
    topic = json_object_get(r->doc, "topic");
    payload = json_object_get(r->doc, "payload");
    headers = json_object_get(r->doc, "headers");
    enc = json_object_get(r->doc, "encoding");
    if (topic != NULL) {
        const char *why;
        if (!json_is_string(topic) ||
            sb_topic_validate(json_string_value(topic), json_string_length(topic), &why) != 0)
            return fail(r, "the envelope's topic is not a valid topic");
    }
    if (headers != NULL && !json_is_object(headers))
        return fail(r, "the envelope's headers are not an object");
    if (json_is_string(payload) && enc != NULL) {
        if (!json_is_string(enc) || strcmp(json_string_value(enc), "base64") != 0)
            return fail(r, "the envelope's encoding is not base64");
        rc =
            sb_base64_decode(json_string_value(payload), json_string_length(payload), &bytes, &len);
        if (rc == SB_ENOMEM)
            return rc;
        if (rc != 0)
            return fail(r, "the envelope's payload is not base64");
    } else if (json_is_string(payload)) {
        len = json_string_length(payload);
        bytes = (unsigned char *)sb_strndup(json_string_value(payload), len);
    } else if (payload != NULL) {
        len = json_dumpb(payload, NULL, 0, JSON_FLAGS);
        bytes = sb_malloc(len + 1);
        if (bytes != NULL)
            json_dumpb(payload, (char *)bytes, len, JSON_FLAGS);
    } else {
        bytes = sb_malloc(1);
    }
    if (bytes == NULL)
        return SB_ENOMEM;
    if (topic != NULL) {
        char *t = sb_strdup(json_string_value(topic));
        if (t == NULL) {
            sb_free(bytes);
            return SB_ENOMEM;
        }
        sb_free(r->topic);
        r->topic = t;
    }
    if (headers != NULL) {
        const char *key;
        json_t *v;
        headers_clear(r);
        json_object_foreach(headers, key, v)
        {
            char *val;
            if (!json_is_string(v)) {
                sb_free(bytes);
                return fail(r, "the envelope's header %s is not a string", key);
            }
            val = sb_strdup(json_string_value(v));
            if (val == NULL || header_put(r, key, val) != 0) {
                sb_free(bytes);
                return SB_ENOMEM;
            }
        }
    }
    set_payload(r, bytes, len);
    return 0;
}

static int do_parse(run *r, int type)
{
    json_t *v = NULL;
    json_error_t jerr;
    char *text;
    size_t a = 0, b;
    int rc;

    if ((rc = need_bytes(r)) != 0)
        return rc;
    if (type == PARSE_JSON) {
        return need_json(r);
    }
    if (!sb_utf8_valid((const char *)r->payload, r->len))
        return fail(r, "the payload is not UTF-8 text");
    if (type == PARSE_TEXT) {
        v = json_stringn((const char *)r->payload, r->len);
        if (v == NULL)
            return SB_ENOMEM;
        doc_changed(r, v);
        return 0;
    }
    b = r->len;
    while (a < b && isspace(r->payload[a]))
        a++;
    while (b > a && (isspace(r->payload[b - 1]) || r->payload[b - 1] == '\0'))
        b--;
    text = sb_strndup((const char *)r->payload + a, b - a);
    if (text == NULL)
        return SB_ENOMEM;
    if (type == PARSE_BOOL) {
        if (strcmp(text, "true") == 0 || strcmp(text, "1") == 0)
            v = json_true();
        else if (strcmp(text, "false") == 0 || strcmp(text, "0") == 0)
            v = json_false();
        else {
            rc = fail(r, "\"%.40s\" is not a boolean (true, false, 1, 0)", text);
            sb_free(text);
            return rc;
        }
    } else {
        /* a JSON number (not strtod's hex, inf or nan), a leading '+'
         * tolerated */
        const char *j = text[0] == '+' ? text + 1 : text;
        v = j[0] != '\0' ? json_loads(j, JSON_DECODE_ANY, &jerr) : NULL;
        if (v == NULL || !json_is_number(v)) {
            json_decref(v);
            rc = fail(r, "\"%.40s\" is not a number", text);
            sb_free(text);
            return rc;
        }
    }
    sb_free(text);
    doc_changed(r, v);
    return 0;
}

static int json_same(const json_t *a, const json_t *b)
{
    if (json_is_number(a) && json_is_number(b))
        return json_number_value(a) == json_number_value(b);
    return json_equal((json_t *)a, (json_t *)b);
}

/* 1 if the when: conditions hold, 0 if not, < 0 on error. */
static int do_when(run *r, const step *s)
{
    if (s->ntopics > 0) {
        size_t i;
        for (i = 0; i < s->ntopics; i++)
            if (sb_topic_match(s->topics[i], r->topic))
                break;
        if (i == s->ntopics)
            return 0;
    }
    for (size_t i = 0; i < s->nh; i++) {
        const char *v = header_get(r, s->hnames[i]);
        if (v == NULL || (s->hvalues[i] != NULL && strcmp(v, s->hvalues[i]) != 0))
            return 0;
    }
    if (s->nf > 0) {
        if (need_bytes(r) != 0)
            return SB_ENOMEM;
        if (r->doc == NULL) {
            json_error_t jerr;
            r->doc = json_loadb((const char *)r->payload, r->len, JSON_DECODE_ANY, &jerr);
            if (r->doc == NULL)
                return 0; /* not JSON: it has no such field */
        }
        for (size_t i = 0; i < s->nf; i++) {
            json_t *v = pointer_get(r->doc, s->fptrs[i]);
            if (v == NULL || (s->fvals[i] != NULL && !json_same(v, s->fvals[i])))
                return 0;
        }
    }
    return 1;
}

static int run_step(run *r, const step *s)
{
    char *str;
    size_t len;
    int rc;

    switch (s->kind) {
    case ST_TOPIC: {
        const char *why;
        if ((rc = expand(r, &s->t, &str, &len)) != 0)
            return rc;
        if (sb_topic_validate(str, len, &why) != 0) {
            rc = fail(r, "\"%.60s\" is not a valid topic: %s", str, why);
            sb_free(str);
            return rc;
        }
        sb_free(r->topic);
        r->topic = str;
        return 0;
    }
    case ST_FORMAT:
        if ((rc = expand(r, &s->t, &str, &len)) != 0)
            return rc;
        set_payload(r, (unsigned char *)str, len);
        return 0;
    case ST_HEADER_SET:
        for (size_t i = 0; i < s->count; i++) {
            if ((rc = expand(r, &s->values[i], &str, NULL)) != 0)
                return rc;
            if ((rc = header_put(r, s->names[i], str)) != 0)
                return rc;
        }
        return 0;
    case ST_HEADER_FROM_LEVEL:
        for (size_t i = 0; i < s->count; i++) {
            const char *lv;
            if (!topic_level(r->topic, s->levels[i], &lv, &len))
                return fail(r, "topic %s has no level %d", r->topic, s->levels[i]);
            if ((str = sb_strndup(lv, len)) == NULL || (rc = header_put(r, s->names[i], str)) != 0)
                return SB_ENOMEM;
        }
        return 0;
    case ST_HEADER_REMOVE:
        for (size_t i = 0; i < s->count; i++)
            header_del(r, s->names[i]);
        return 0;
    case ST_ENCODE:
    case ST_DECODE:
        return do_encoding(r, s);
    case ST_WRAP:
        return do_wrap(r);
    case ST_UNWRAP:
        return do_unwrap(r);
    case ST_PICK: {
        json_t *v;
        if ((rc = need_json(r)) != 0)
            return rc;
        v = pointer_get(r->doc, s->pointer);
        if (v == NULL)
            return fail(r, "the payload has no %s", s->pointer);
        doc_changed(r, json_incref(v));
        return 0;
    }
    case ST_SET:
        if ((rc = need_json(r)) != 0)
            return rc;
        for (size_t i = 0; i < s->count; i++) {
            json_t *v;
            if ((rc = build(r, &s->vals[i], &v)) != 0)
                return rc;
            /* pointer_set may replace a scalar document: it takes ours */
            json_t *doc = r->doc;
            r->doc = NULL;
            rc = pointer_set(r, &doc, s->names[i], v);
            doc_changed(r, doc);
            if (rc != 0)
                return rc;
        }
        return 0;
    case ST_JSON: {
        json_t *v;
        if ((rc = build(r, &s->jv, &v)) != 0)
            return rc;
        doc_changed(r, v);
        return 0;
    }
    case ST_PARSE:
        return do_parse(r, s->parse);
    case ST_WHEN:
        rc = do_when(r, s);
        return rc < 0 ? rc : rc == 0 ? SB_TRANSFORM_SKIP : 0;
    }
    return 0;
}

/* The messages a run made. */
typedef struct outs {
    sb_message **m;
    size_t count, cap;
} outs;

static void run_release(run *r)
{
    sb_free(r->topic);
    sb_free(r->payload);
    json_decref(r->doc);
    for (size_t i = 0; r->h != NULL && i < r->nh; i++) {
        sb_free(r->h[i].key);
        sb_free(r->h[i].value);
    }
    sb_free(r->h);
}

/* What the run holds, as a new message appended to o. */
static int emit(run *r, outs *o)
{
    sb_message *m;
    /* per transform, not per step: two splitting scripts in a row would
     * multiply their counts */
    if (o->count >= SB_SCRIPT_MAX_OUTPUTS)
        return fail(r, "the transform made more than %d messages of one", SB_SCRIPT_MAX_OUTPUTS);
    if (o->count == o->cap) {
        size_t cap = o->cap ? 2 * o->cap : 1;
        sb_message **nm = sb_realloc(o->m, cap * sizeof *nm);
        if (nm == NULL)
            return SB_ENOMEM;
        o->m = nm;
        o->cap = cap;
    }
    m = sb_message_new_owned(r->topic, r->payload, r->len);
    r->payload = NULL; /* now owned by m (or freed) */
    if (m == NULL)
        return SB_ENOMEM;
    for (size_t i = 0; i < r->nh; i++)
        if (sb_message_add_header(m, r->h[i].key, r->h[i].value) != 0) {
            sb_message_unref(m);
            return SB_ENOMEM;
        }
    m->id = r->in->id;
    m->created_ms = r->in->created_ms;
    m->expires_ms = r->in->expires_ms;
    m->priority = r->in->priority;
    o->m[o->count++] = m;
    return 0;
}

static int run_from(run *r, size_t first, outs *o);

/* A `lua` step: the script's messages each run the steps after it. */
static int run_lua(run *r, const step *s, size_t i, outs *o)
{
    sb_script_msg in, *res = NULL;
    size_t n = 0;
    char why[300];
    int rc;

    if ((rc = need_bytes(r)) != 0)
        return rc;
    in.topic = r->topic;
    in.payload = r->payload;
    in.len = r->len;
    in.h = r->h;
    in.nh = r->nh;
    rc = sb_script_call(s->script, &in, r->in->created_ms, &res, &n, why, sizeof why);
    if (rc == SB_ENOMEM)
        return rc;
    if (rc != 0)
        return fail(r, "%s", why);
    for (size_t k = 0; k < n && rc == 0; k++) {
        const char *bad;
        run sub = {.t = r->t, .in = r->in, .why = r->why, .why_n = r->why_n, .ncap = r->ncap};
        if (sb_topic_validate(res[k].topic, strlen(res[k].topic), &bad) != 0) {
            rc = n == 1 ? fail(r, "%s: the topic \"%.60s\" is not valid: %s", s->file, res[k].topic,
                               bad)
                        : fail(r, "%s: message %zu: the topic \"%.60s\" is not valid: %s", s->file,
                               k + 1, res[k].topic, bad);
            break;
        }
        memcpy(sub.cap, r->cap, sizeof sub.cap);
        memcpy(sub.cap_len, r->cap_len, sizeof sub.cap_len);
        sub.topic = res[k].topic;
        sub.payload = res[k].payload;
        sub.len = res[k].len;
        sub.h = res[k].h;
        sub.nh = res[k].nh;
        memset(&res[k], 0, sizeof res[k]); /* now owned by sub */
        rc = run_from(&sub, i + 1, o);
        r->step = sub.step; /* for a failure's message */
        run_release(&sub);
    }
    for (size_t k = 0; k < n; k++)
        sb_script_msg_release(&res[k]);
    sb_free(res);
    return rc;
}

/* Runs the steps from `first` on r; what comes out is appended to o. */
static int run_from(run *r, size_t first, outs *o)
{
    int rc;
    for (size_t i = first; i < r->t->count; i++) {
        r->step = (int)i + 1;
        if (r->t->steps[i].kind == ST_LUA)
            return run_lua(r, &r->t->steps[i], i, o);
        rc = run_step(r, &r->t->steps[i]);
        if (rc == SB_TRANSFORM_SKIP)
            return 0; /* nothing for this destination */
        if (rc != 0)
            return rc;
    }
    if ((rc = need_bytes(r)) != 0)
        return rc;
    return emit(r, o);
}

int sb_transform_apply_all(const sb_transform *t, const sb_message *in, sb_message ***out,
                           size_t *count, char *why, size_t n)
{
    run r = {.t = t, .in = in, .why = why, .why_n = n};
    outs o = {0};
    int rc = 0;

    *out = NULL;
    *count = 0;
    if (n > 0)
        why[0] = '\0';
    r.topic = sb_strdup(in->topic);
    r.payload = sb_malloc(in->payload_len + 1);
    r.h = sb_calloc(in->header_count + 1, sizeof *r.h);
    if (r.topic == NULL || r.payload == NULL || r.h == NULL) {
        rc = SB_ENOMEM;
        goto cleanup;
    }
    if (in->payload_len > 0)
        memcpy(r.payload, in->payload, in->payload_len);
    r.len = in->payload_len;
    for (size_t i = 0; i < in->header_count; i++) {
        r.h[i].key = sb_strdup(in->headers[i].key);
        r.h[i].value = sb_strdup(in->headers[i].value);
        r.nh++;
        if (r.h[i].key == NULL || r.h[i].value == NULL) {
            rc = SB_ENOMEM;
            goto cleanup;
        }
    }
    if (t != NULL) {
        captures(&r);
        rc = run_from(&r, 0, &o);
    } else {
        rc = emit(&r, &o);
    }
    if (rc == 0 && o.count == 0)
        rc = SB_TRANSFORM_SKIP;
cleanup:
    if (rc == SB_ENOMEM && n > 0)
        snprintf(why, n, "out of memory");
    if (rc != 0) {
        for (size_t i = 0; i < o.count; i++)
            sb_message_unref(o.m[i]);
        sb_free(o.m);
    } else {
        *out = o.m;
        *count = o.count;
    }
    run_release(&r);
    return rc;
}

int sb_transform_apply(const sb_transform *t, const sb_message *in, sb_message **out, char *why,
                       size_t n)
{
    sb_message **all;
    size_t count;
    int rc = sb_transform_apply_all(t, in, &all, &count, why, n);

    *out = NULL;
    if (rc != 0)
        return rc;
    if (count == 1) {
        *out = all[0];
    } else {
        snprintf(why, n, "made %zu messages where one was expected", count);
        for (size_t i = 0; i < count; i++)
            sb_message_unref(all[i]);
        rc = SB_EINVAL;
    }
    sb_free(all);
    return rc;
}
