/*
 * Loading a configuration: read the file, let libyaml build the document,
 * report YAML syntax errors with their position, walk the document against
 * the schema (walk.c, schema.c), and hand back either a complete config or
 * every error found. Also the error list and the lookups.
 */
#include "config/config_int.h"
#include "service/platform.h"
#include "service/alloc.h"
#include "service/error.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* Larger files are surely not configs; refusing them bounds memory use. */
#define MAX_FILE_BYTES (16 * 1024 * 1024)
/* Lists and mappings nest at most this deep. A configuration needs about
 * five levels; the bound keeps parsing linear: libyaml's scanner does work
 * proportional to the flow nesting depth for every token, so an unbounded
 * `[[[[...]]]]` is quadratic. */
#define MAX_DEPTH 64

/* Line and column (1-based, in bytes) of a byte offset into the input, for
 * reader errors, which libyaml reports as an offset only. */
static void offset_pos(const char *text, size_t len, size_t offset, int *line, int *col)
{
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < offset && i < len; i++) {
        if (text[i] == '\n') {
            (*line)++;
            *col = 1;
        } else {
            (*col)++;
        }
    }
}

static void syntax_error(sb_config__ctx *ctx, const yaml_parser_t *parser)
{
    const char *problem = parser->problem != NULL ? parser->problem : "invalid YAML";
    int line, col;

    switch (parser->error) {
    case YAML_MEMORY_ERROR:
        ctx->nomem = 1;
        return;
    case YAML_READER_ERROR:
        offset_pos(ctx->text, ctx->len, parser->problem_offset, &line, &col);
        if (parser->problem_value != -1)
            sb_config__error_at(ctx, line, col, "syntax", "%s (#%X)", problem,
                                (unsigned)parser->problem_value);
        else
            sb_config__error_at(ctx, line, col, "syntax", "%s", problem);
        return;
    case YAML_SCANNER_ERROR:
    case YAML_PARSER_ERROR:
    case YAML_COMPOSER_ERROR:
        line = (int)parser->problem_mark.line + 1;
        col = (int)parser->problem_mark.column + 1;
        if (parser->context != NULL)
            sb_config__error_at(ctx, line, col, "syntax", "%s (%s at line %d, column %d)", problem,
                                parser->context, (int)parser->context_mark.line + 1,
                                (int)parser->context_mark.column + 1);
        else
            sb_config__error_at(ctx, line, col, "syntax", "%s", problem);
        return;
    default:
        sb_config__error_at(ctx, 0, 0, "syntax", "%s", problem);
        return;
    }
}

/* A second document in the stream would be silently ignored: refuse it. */
static void check_single_document(sb_config__ctx *ctx, yaml_parser_t *parser)
{
    yaml_document_t extra;
    if (!yaml_parser_load(parser, &extra)) {
        syntax_error(ctx, parser);
        return;
    }
    if (yaml_document_get_root_node(&extra) != NULL)
        sb_config__error_at(ctx, (int)extra.start_mark.line + 1, (int)extra.start_mark.column + 1,
                            NULL, "only one YAML document is allowed");
    yaml_document_delete(&extra);
}

/* Walks the event stream once and reports a list or mapping nested deeper
 * than MAX_DEPTH; the walk stops there, so the scanner never holds more
 * than that many levels (plus its lookahead of a line). Returns 1 if too
 * deep (reported), 0 otherwise: a syntax error is left to the loader, which
 * reports it as it always did. */
static int too_deep(sb_config__ctx *ctx)
{
    yaml_parser_t parser;
    yaml_event_t ev;
    int depth = 0, result = 0;

    if (!yaml_parser_initialize(&parser)) {
        ctx->nomem = 1;
        return 1;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)ctx->text, ctx->len);
    for (;;) {
        yaml_event_type_t type;
        if (!yaml_parser_parse(&parser, &ev)) {
            if (parser.error == YAML_MEMORY_ERROR) {
                ctx->nomem = 1;
                result = 1;
            }
            break;
        }
        type = ev.type;
        if (type == YAML_SEQUENCE_START_EVENT || type == YAML_MAPPING_START_EVENT) {
            if (++depth > MAX_DEPTH) {
                sb_config__error_at(ctx, (int)ev.start_mark.line + 1, (int)ev.start_mark.column + 1,
                                    NULL,
                                    "nested too deeply (more than %d levels of lists and "
                                    "mappings)",
                                    MAX_DEPTH);
                result = 1;
            }
        } else if (type == YAML_SEQUENCE_END_EVENT || type == YAML_MAPPING_END_EVENT) {
            depth--;
        }
        yaml_event_delete(&ev);
        if (result || type == YAML_STREAM_END_EVENT)
            break;
    }
    yaml_parser_delete(&parser);
    return result;
}

/* 1 if `adapters` is absent, null or a list, so routes can check `to`. */
static int adapters_listed(const sb_config__ctx *ctx, const yaml_node_t *root)
{
    const yaml_node_t *n = sb_config__lookup(ctx, root, "adapters");
    return n == NULL || n->type == YAML_SEQUENCE_NODE || sb_config__is_null(n);
}

int sb_config_parse(sb_config **out, const char *name, const char *text, size_t len,
                    sb_config_errors *errs)
{
    sb_config__ctx ctx;
    yaml_parser_t parser;
    yaml_document_t doc;
    const yaml_node_t *root;
    sb_config *cfg = NULL;
    int have_parser = 0, have_doc = 0, rc;

    *out = NULL;
    if (errs != NULL)
        sb_config_errors_clear(errs);
    memset(&ctx, 0, sizeof ctx);
    ctx.file = name != NULL ? name : "<config>";
    ctx.text = text != NULL ? text : "";
    ctx.len = text != NULL ? len : 0;
    ctx.errs = errs;
    ctx.nodes_left = SB_CONFIG__MAX_NODES;

    cfg = sb_calloc(1, sizeof *cfg);
    if (cfg == NULL || (cfg->path = sb_strdup(ctx.file)) == NULL ||
        (cfg->text = sb_malloc(ctx.len + 1)) == NULL) {
        ctx.nomem = 1;
        goto done;
    }
    /* kept for the session agents, which get their adapters' part of it */
    memcpy(cfg->text, ctx.text, ctx.len);
    cfg->text[ctx.len] = '\0';
    cfg->text_len = ctx.len;
    ctx.cfg = cfg;
    if (sb_config__defaults(&ctx, &sb_config__root, cfg) != 0)
        goto done;

    if (too_deep(&ctx))
        goto done;
    if (!yaml_parser_initialize(&parser)) {
        ctx.nomem = 1;
        goto done;
    }
    have_parser = 1;
    yaml_parser_set_input_string(&parser, (const unsigned char *)ctx.text, ctx.len);
    if (!yaml_parser_load(&parser, &doc)) {
        syntax_error(&ctx, &parser);
        goto done;
    }
    have_doc = 1;
    ctx.doc = &doc;
    root = yaml_document_get_root_node(&doc);
    if (root == NULL) {
        sb_config__error_at(&ctx, 1, 1, NULL,
                            "empty configuration (expected a mapping with broker, adapters "
                            "and routes)");
        goto done;
    }
    check_single_document(&ctx, &parser);
    ctx.adapters_ok = adapters_listed(&ctx, root);
    sb_config__mapping(&ctx, root, &sb_config__root, cfg, "");
    if (cfg->broker.admin_security != NULL) {
        const yaml_node_t *broker = sb_config__lookup(&ctx, root, "broker");
        const yaml_node_t *admin = sb_config__lookup(&ctx, broker, "admin");
        sb_config__check_sddl(&ctx, sb_config__lookup(&ctx, admin, "security"),
                              "broker.admin.security", cfg->broker.admin_security);
    }
    sb_config__check_http(&ctx, root);

done:
    sb_map_clear(&ctx.adapter_names);
    sb_map_clear(&ctx.route_names);
    if (have_doc)
        yaml_document_delete(&doc);
    if (have_parser)
        yaml_parser_delete(&parser);
    if (ctx.nomem)
        rc = SB_ENOMEM;
    else if (ctx.error_count > 0)
        rc = SB_ECONFIG;
    else
        rc = 0;
    if (rc != 0)
        sb_config_free(cfg);
    else
        *out = cfg;
    return rc;
}

/* Records a file-level error ("cannot open: ..."); returns code. */
static int file_error(sb_config_errors *errs, const char *path, int code, const char *what, int err)
{
    sb_config__ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.file = path;
    ctx.errs = errs;
    sb_config__error_at(&ctx, 0, 0, NULL, "%s: %s", what, strerror(err));
    return ctx.nomem ? SB_ENOMEM : code;
}

int sb_config_load(sb_config **out, const char *path, sb_config_errors *errs)
{
    FILE *f;
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int rc;

    *out = NULL;
    if (errs != NULL)
        sb_config_errors_clear(errs);
    f = sb_platform_fopen(path, "rb");
    if (f == NULL) {
        int err = errno;
        return file_error(errs, path, err == ENOENT ? SB_ENOTFOUND : sb_error_from_errno(err),
                          "cannot open", err);
    }
    for (;;) {
        size_t n;
        if (len == cap) {
            char *bigger;
            if (cap >= MAX_FILE_BYTES) {
                sb_config__ctx ctx;
                memset(&ctx, 0, sizeof ctx);
                ctx.file = path;
                ctx.errs = errs;
                sb_config__error_at(&ctx, 0, 0, NULL, "file too large (more than %d MiB)",
                                    MAX_FILE_BYTES / (1024 * 1024));
                rc = ctx.nomem ? SB_ENOMEM : SB_ECONFIG;
                goto done;
            }
            cap = cap == 0 ? 16384 : cap * 2;
            bigger = sb_realloc(buf, cap + 1);
            if (bigger == NULL) {
                rc = SB_ENOMEM;
                goto done;
            }
            buf = bigger;
        }
        n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0) {
            if (ferror(f)) {
                int err = errno;
                rc = file_error(errs, path, err ? sb_error_from_errno(err) : SB_EIO, "cannot read",
                                err ? err : EIO);
                goto done;
            }
            break;
        }
    }
    rc = sb_config_parse(out, path, buf, len, errs);
done:
    fclose(f);
    sb_free(buf);
    return rc;
}

void sb_config_free(sb_config *cfg)
{
    if (cfg == NULL)
        return;
    sb_config__release(&sb_config__root, cfg);
    sb_free(cfg->path);
    sb_free(cfg->text);
    sb_free(cfg);
}

const char *sb_config_error_format(const sb_config_error *e, char *out, size_t n)
{
    int len = snprintf(out, n, "%s", e->file != NULL ? e->file : "<config>");
    if (len >= 0 && (size_t)len < n && e->line > 0)
        len += snprintf(out + len, n - (size_t)len, ":%d:%d", e->line, e->col);
    if (len >= 0 && (size_t)len < n)
        snprintf(out + len, n - (size_t)len, ": %s%s%s", e->key != NULL ? e->key : "",
                 e->key != NULL ? ": " : "", e->message != NULL ? e->message : "");
    return out;
}

void sb_config_errors_print(const sb_config_errors *errs, FILE *f)
{
    for (size_t i = 0; errs != NULL && i < errs->count; i++) {
        char line[1024];
        fprintf(f, "%s\n", sb_config_error_format(&errs->items[i], line, sizeof line));
    }
}

void sb_config_errors_clear(sb_config_errors *errs)
{
    if (errs == NULL)
        return;
    for (size_t i = 0; i < errs->count; i++) {
        sb_free(errs->items[i].file);
        sb_free(errs->items[i].key);
        sb_free(errs->items[i].message);
    }
    sb_free(errs->items);
    errs->items = NULL;
    errs->count = 0;
}

const sb_adapter_config *sb_config_adapter(const sb_config *cfg, const char *name)
{
    for (size_t i = 0; cfg != NULL && name != NULL && i < cfg->adapter_count; i++)
        if (cfg->adapters[i].name != NULL && strcmp(cfg->adapters[i].name, name) == 0)
            return &cfg->adapters[i];
    return NULL;
}

const sb_route_config *sb_config_route(const sb_config *cfg, const char *name)
{
    for (size_t i = 0; cfg != NULL && name != NULL && i < cfg->route_count; i++)
        if (cfg->routes[i].name != NULL && strcmp(cfg->routes[i].name, name) == 0)
            return &cfg->routes[i];
    return NULL;
}
