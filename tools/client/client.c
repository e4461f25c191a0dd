/*
 * The portable part of the jsonl client: buffering, line framing, JSON and
 * request/reply matching. All OS access goes through transport_int.h.
 */
#include "tools/client/client.h"

#include "service/alloc.h"
#include "tools/client/endpoint.h"
#include "tools/client/linebuf.h"
#include "tools/client/transport_int.h"

#include <stdlib.h>
#include <string.h>

#define WRITE_FLUSH_AT (256 * 1024)

struct sb_client {
    sb_transport *t;
    sb_endpoint ep;
    sb_client_options opts;
    sb_linebuf in;
    char *out;
    size_t out_len, out_cap;
    int64_t next_id;
    const char *last_line; /* the line most recently returned by a read */
    size_t last_len;
    int broken; /* framing lost (line too long): refuse further reads */
};

void sb_client_options_init(sb_client_options *o)
{
    o->connect_timeout_ms = 5000;
    o->write_timeout_ms = 30000;
    o->max_line = SB_CLIENT_DEFAULT_MAX_LINE;
    o->tls.ca = o->tls.cert = o->tls.key = NULL;
}

const char *sb_client_default_endpoint(void)
{
    const char *env = getenv("SB_ADMIN");
    if (env != NULL && *env != '\0')
        return env;
    return sb_client__platform_default_endpoint();
}

const char *sb_client_platform_endpoint(void)
{
    return sb_client__platform_default_endpoint();
}

int sb_client_connect(sb_client **out, const char *endpoint, const sb_client_options *opts,
                      sb_error *err)
{
    sb_client *c;
    int rc;

    *out = NULL;
    c = sb_calloc(1, sizeof(*c));
    if (c == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    if (opts != NULL)
        c->opts = *opts;
    else
        sb_client_options_init(&c->opts);
    rc = sb_endpoint_parse(&c->ep, endpoint, err);
    if (rc != 0)
        goto fail;
    rc = sb_client__transport_open(&c->t, &c->ep, c->opts.connect_timeout_ms, err);
    if (rc == 0 && c->ep.tls) {
        sb_transport *tcp = c->t; /* now owned by the TLS transport */
        c->t = NULL;
        rc = sb_client__tls_open(&c->t, tcp, &c->ep, &c->opts.tls, c->opts.connect_timeout_ms,
                                 err);
    }
    if (rc != 0)
        goto fail;
    sb_linebuf_init(&c->in, c->opts.max_line);
    *out = c;
    return 0;
fail:
    sb_free(c);
    return rc;
}

void sb_client_free(sb_client *c)
{
    if (c == NULL)
        return;
    if (c->t != NULL)
        c->t->ops->close(c->t);
    sb_linebuf_free(&c->in);
    sb_free(c->out);
    sb_free(c);
}

const char *sb_client_endpoint(const sb_client *c)
{
    return c->ep.display;
}

int sb_client_flush(sb_client *c, sb_error *err)
{
    int rc;
    if (c->out_len == 0)
        return 0;
    rc = c->t->ops->write(c->t, c->out, c->out_len, c->opts.write_timeout_ms, err);
    c->out_len = 0;
    return rc;
}

int sb_client_write_line(sb_client *c, const char *line, size_t len, sb_error *err)
{
    if (c->out_len + len + 1 > c->out_cap) {
        size_t ncap = c->out_cap == 0 ? 4096 : c->out_cap;
        char *p;
        while (ncap < c->out_len + len + 1)
            ncap *= 2;
        p = sb_realloc(c->out, ncap);
        if (p == NULL)
            return sb_error_set(err, SB_ENOMEM, 0, "out of memory buffering a %zu-byte request",
                                len);
        c->out = p;
        c->out_cap = ncap;
    }
    memcpy(c->out + c->out_len, line, len);
    c->out[c->out_len + len] = '\n';
    c->out_len += len + 1;
    if (c->out_len >= WRITE_FLUSH_AT)
        return sb_client_flush(c, err);
    return 0;
}

int sb_client_write_json(sb_client *c, const json_t *obj, sb_error *err)
{
    char *s = json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER);
    int rc;
    if (s == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "cannot serialise request");
    rc = sb_client_write_line(c, s, strlen(s), err);
    free(s);
    return rc;
}

int sb_client_has_line(sb_client *c)
{
    size_t pending = sb_linebuf_pending(&c->in);
    return pending > 0 && memchr(c->in.data + c->in.start, '\n', pending) != NULL;
}

int sb_client_read_line(sb_client *c, const char **out_line, size_t *out_len, int timeout_ms,
                        sb_error *err)
{
    unsigned long long deadline =
        timeout_ms < 0 ? 0 : sb_client__now_ns() + (unsigned long long)timeout_ms * 1000000ull;

    if (c->broken)
        return sb_error_set(err, SB_ETOOBIG, 0, "%s: stream unusable after an oversized line",
                            c->ep.display);
    for (;;) {
        char *line, *area;
        size_t len, avail, n = 0;
        int wait_ms, rc;

        rc = sb_linebuf_next(&c->in, &line, &len);
        if (rc == 1) {
            *out_line = c->last_line = line;
            *out_len = c->last_len = len;
            return 0;
        }
        if (rc < 0)
            goto too_big;
        /* About to wait for the broker: it must have seen our requests. */
        rc = sb_client_flush(c, err);
        if (rc != 0)
            return rc;
        c->last_line = NULL; /* reserving may move the buffer */
        rc = sb_linebuf_reserve(&c->in, &area, &avail);
        if (rc == SB_ETOOBIG)
            goto too_big;
        if (rc != 0)
            return sb_error_set(err, rc, 0, "%s: out of memory reading a reply", c->ep.display);
        if (timeout_ms < 0) {
            wait_ms = -1;
        } else {
            unsigned long long now = sb_client__now_ns();
            wait_ms = now >= deadline ? 0 : (int)((deadline - now + 999999ull) / 1000000ull);
        }
        rc = c->t->ops->read(c->t, area, avail, &n, wait_ms, err);
        if (rc == SB_ETIMEDOUT && timeout_ms >= 0)
            return sb_error_set(err, SB_ETIMEDOUT, 0, "%s: no reply within %d ms", c->ep.display,
                                timeout_ms);
        if (rc != 0)
            return rc;
        sb_linebuf_commit(&c->in, n);
    }
too_big:
    c->broken = 1;
    return sb_error_set(err, SB_ETOOBIG, 0, "%s: reply line longer than %zu bytes", c->ep.display,
                        c->opts.max_line);
}

int sb_client_read_json(sb_client *c, json_t **out, int timeout_ms, sb_error *err)
{
    const char *line;
    size_t len;
    json_error_t jerr;
    json_t *obj;
    int rc;

    *out = NULL;
    rc = sb_client_read_line(c, &line, &len, timeout_ms, err);
    if (rc != 0)
        return rc;
    obj = json_loadb(line, len, JSON_ALLOW_NUL, &jerr);
    if (obj == NULL)
        return sb_error_set(err, SB_EPROTO, 0, "%s: reply is not JSON (column %d: %s)",
                            c->ep.display, jerr.column, jerr.text);
    if (!json_is_object(obj)) {
        json_decref(obj);
        return sb_error_set(err, SB_EPROTO, 0, "%s: reply is not a JSON object", c->ep.display);
    }
    *out = obj;
    return 0;
}

const char *sb_client_last_line(const sb_client *c, size_t *out_len)
{
    *out_len = c->last_line != NULL ? c->last_len : 0;
    return c->last_line;
}

int64_t sb_client_next_id(sb_client *c)
{
    return ++c->next_id;
}

int sb_client_request(sb_client *c, json_t **out, json_t *req, int timeout_ms, sb_error *err)
{
    unsigned long long start = sb_client__now_ns();
    json_t *id = json_object_get(req, "id");
    int rc;

    *out = NULL;
    if (id == NULL) {
        id = json_integer(sb_client_next_id(c));
        if (id == NULL || json_object_set_new(req, "id", id) != 0)
            return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    }
    rc = sb_client_write_json(c, req, err);
    if (rc == 0)
        rc = sb_client_flush(c, err);
    if (rc == SB_ECLOSED && sb_client_last_words(c, out) == 0)
        return 0;
    if (rc != 0)
        return rc;
    for (;;) {
        json_t *reply, *rid;
        const char *op;
        int left = -1;
        if (timeout_ms >= 0) {
            unsigned long long spent = (sb_client__now_ns() - start) / 1000000ull;
            left = spent >= (unsigned long long)timeout_ms ? 0 : timeout_ms - (int)spent;
        }
        rc = sb_client_read_json(c, &reply, left, err);
        if (rc == SB_ETIMEDOUT)
            return sb_error_set(err, SB_ETIMEDOUT, 0, "%s: no reply within %d ms", c->ep.display,
                                timeout_ms);
        if (rc != 0)
            return rc;
        rid = json_object_get(reply, "id");
        op = json_string_value(json_object_get(reply, "op"));
        if ((rid != NULL && json_equal(rid, id)) ||
            (rid == NULL && op != NULL && strcmp(op, "error") == 0)) {
            *out = reply;
            return 0;
        }
        json_decref(reply);
    }
}

int sb_client_last_words(sb_client *c, json_t **out)
{
    sb_error ignored;
    *out = NULL;
    /* Replies sent before the close are still readable; take the first error. */
    for (int i = 0; i < 64; i++) {
        json_t *reply = NULL;
        const char *op;
        if (sb_client_read_json(c, &reply, 1000, &ignored) != 0)
            break;
        op = json_string_value(json_object_get(reply, "op"));
        if (op != NULL && strcmp(op, "error") == 0) {
            *out = reply;
            return 0;
        }
        json_decref(reply);
    }
    return SB_ENOTFOUND;
}

int sb_client_errcode(const char *name)
{
    if (name == NULL)
        return SB_EUNKNOWN;
#define SB_ERRCODE_MATCH(n, value, text)                                                           \
    if (strcmp(name, #n) == 0)                                                                     \
        return value;
    SB_ERRORS(SB_ERRCODE_MATCH)
#undef SB_ERRCODE_MATCH
    return SB_EUNKNOWN;
}

int sb_client_reply_error(const json_t *reply, sb_error *err)
{
    const char *op = json_string_value(json_object_get(reply, "op"));
    const char *code_name, *message;
    int code;

    if (op == NULL || strcmp(op, "error") != 0)
        return 0;
    code_name = json_string_value(json_object_get(reply, "code"));
    message = json_string_value(json_object_get(reply, "message"));
    code = sb_client_errcode(code_name);
    if (code == SB_OK)
        code = SB_EUNKNOWN;
    sb_error_set(err, code, 0, "%s", message != NULL ? message : sb_strerror(code));
    return code;
}
