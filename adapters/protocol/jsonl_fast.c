/* Fast path parser for pub/ack lines (see jsonl_fast.h). */
#include "adapters/protocol/jsonl_fast.h"
#include "service/jsonw.h"
#include "service/topic.h"

#include <stddef.h>
#include <string.h>

typedef struct cursor {
    const char *p, *end;
    char *scratch;
} cursor;

static void skip_ws(cursor *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\r' || *c->p == '\n'))
        c->p++;
}

static int hexval(char h)
{
    if (h >= '0' && h <= '9')
        return h - '0';
    if (h >= 'a' && h <= 'f')
        return h - 'a' + 10;
    if (h >= 'A' && h <= 'F')
        return h - 'A' + 10;
    return -1;
}

static int read_hex4(const char *p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(p[i]);
        if (h < 0)
            return 0;
        v = (v << 4) | (unsigned)h;
    }
    *out = v;
    return 1;
}

/* Reads a string at c->p (the opening quote). Plain strings point into the
 * line; escaped ones are decoded into the scratch buffer. Raw control
 * characters and bytes jansson would reject as invalid UTF-8 make it decline
 * (jansson validates UTF-8; the caller re-validates topics and payloads). */
static int read_string(cursor *c, jl_str *out)
{
    const char *s = ++c->p, *q = s, *plain;
    char *o;
    q += sb_json_plain_run(q, (size_t)(c->end - q));
    plain = q;
    while (q < c->end && *q != '"' && *q != '\\') {
        if ((unsigned char)*q < 0x20)
            return 0;
        q++;
    }
    if (q >= c->end)
        return 0;
    if (*q == '"') {
        out->p = s;
        out->n = (size_t)(q - s);
        out->set = 1;
        c->p = q + 1;
        return q == plain || sb_utf8_valid(out->p, out->n); /* plain ASCII is UTF-8 */
    }
    /* Escapes: decode from the start into the scratch. */
    o = c->scratch;
    memcpy(o, s, (size_t)(q - s));
    o += q - s;
    while (q < c->end && *q != '"') {
        if ((unsigned char)*q < 0x20)
            return 0;
        if (*q != '\\') {
            *o++ = *q++;
            continue;
        }
        if (++q >= c->end)
            return 0;
        switch (*q++) {
        case '"':
            *o++ = '"';
            break;
        case '\\':
            *o++ = '\\';
            break;
        case '/':
            *o++ = '/';
            break;
        case 'b':
            *o++ = '\b';
            break;
        case 'f':
            *o++ = '\f';
            break;
        case 'n':
            *o++ = '\n';
            break;
        case 'r':
            *o++ = '\r';
            break;
        case 't':
            *o++ = '\t';
            break;
        case 'u': {
            unsigned cp, lo;
            if (c->end - q < 4 || !read_hex4(q, &cp))
                return 0;
            q += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (c->end - q < 6 || q[0] != '\\' || q[1] != 'u' || !read_hex4(q + 2, &lo) ||
                    lo < 0xDC00 || lo > 0xDFFF)
                    return 0;
                q += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                return 0;
            }
            if (cp < 0x80) {
                *o++ = (char)cp;
            } else if (cp < 0x800) {
                *o++ = (char)(0xC0 | (cp >> 6));
                *o++ = (char)(0x80 | (cp & 0x3F));
            } else if (cp < 0x10000) {
                *o++ = (char)(0xE0 | (cp >> 12));
                *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
                *o++ = (char)(0x80 | (cp & 0x3F));
            } else {
                *o++ = (char)(0xF0 | (cp >> 18));
                *o++ = (char)(0x80 | ((cp >> 12) & 0x3F));
                *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
                *o++ = (char)(0x80 | (cp & 0x3F));
            }
            break;
        }
        default:
            return 0;
        }
    }
    if (q >= c->end)
        return 0;
    out->p = c->scratch;
    out->n = (size_t)(o - c->scratch);
    out->set = 1;
    c->scratch = o;
    c->p = q + 1;
    return sb_utf8_valid(out->p, out->n);
}

/* An integer without fraction or exponent, fitting in int64. */
static int read_int(cursor *c, int64_t *out)
{
    const char *p = c->p;
    int neg = 0;
    uint64_t v = 0;
    if (p < c->end && *p == '-') {
        neg = 1;
        p++;
    }
    if (p >= c->end || *p < '0' || *p > '9' ||
        (*p == '0' && p + 1 < c->end && p[1] >= '0' && p[1] <= '9'))
        return 0;
    while (p < c->end && *p >= '0' && *p <= '9') {
        if (v > (UINT64_MAX - 9) / 10)
            return 0;
        v = v * 10 + (uint64_t)(*p++ - '0');
    }
    if (p < c->end && (*p == '.' || *p == 'e' || *p == 'E'))
        return 0;
    if (v > (uint64_t)INT64_MAX)
        return 0;
    *out = neg ? -(int64_t)v : (int64_t)v;
    c->p = p;
    return 1;
}

static int read_literal(cursor *c, const char *lit)
{
    size_t n = strlen(lit);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, lit, n) != 0)
        return 0;
    c->p += n;
    return 1;
}

static int key_is(const jl_str *k, const char *name)
{
    size_t n = strlen(name);
    return k->n == n && memcmp(k->p, name, n) == 0;
}

static int read_headers(cursor *c, jl_req *req)
{
    c->p++; /* '{' */
    skip_ws(c);
    if (c->p < c->end && *c->p == '}') {
        c->p++;
        return 1;
    }
    for (;;) {
        jl_str k = {0}, v = {0};
        skip_ws(c);
        if (c->p >= c->end || *c->p != '"' || !read_string(c, &k))
            return 0;
        skip_ws(c);
        if (c->p >= c->end || *c->p != ':')
            return 0;
        c->p++;
        skip_ws(c);
        if (c->p >= c->end || *c->p != '"' || !read_string(c, &v))
            return 0;
        /* Duplicate keys and NULs in keys: let jansson decide. */
        if (req->header_count == JL_MAX_HEADERS || memchr(k.p, '\0', k.n) != NULL ||
            memchr(v.p, '\0', v.n) != NULL)
            return 0;
        for (int i = 0; i < req->header_count; i++)
            if (req->hkey[i].n == k.n && memcmp(req->hkey[i].p, k.p, k.n) == 0)
                return 0;
        req->hkey[req->header_count] = k;
        req->hval[req->header_count++] = v;
        skip_ws(c);
        if (c->p < c->end && *c->p == ',') {
            c->p++;
            continue;
        }
        if (c->p < c->end && *c->p == '}') {
            c->p++;
            return 1;
        }
        return 0;
    }
}

static int read_value(cursor *c, const jl_str *key, jl_req *req)
{
    jl_str *target = NULL;
    if (c->p >= c->end)
        return 0;
    if (key_is(key, "op"))
        target = &req->op;
    else if (key_is(key, "topic"))
        target = &req->topic;
    else if (key_is(key, "payload"))
        target = &req->payload;
    else if (key_is(key, "payload_b64"))
        target = &req->payload_b64;
    else if (key_is(key, "sub"))
        target = &req->sub;
    else if (key_is(key, "reason"))
        target = &req->reason;

    if (target != NULL) {
        if (*c->p != '"' || target->set)
            return 0;
        return read_string(c, target);
    }
    if (key_is(key, "id")) {
        if (req->has_id_num || req->id_str.set)
            return 0;
        if (*c->p == '"')
            return read_string(c, &req->id_str);
        return (req->has_id_num = read_int(c, &req->id_num));
    }
    if (key_is(key, "msg_id")) {
        if (req->has_msg_id)
            return 0;
        return (req->has_msg_id = read_int(c, &req->msg_id));
    }
    if (key_is(key, "priority")) {
        if (req->has_priority)
            return 0;
        return (req->has_priority = read_int(c, &req->priority));
    }
    if (key_is(key, "ttl")) {
        if (req->has_ttl_num || req->ttl_str.set)
            return 0;
        if (*c->p == '"')
            return read_string(c, &req->ttl_str);
        return (req->has_ttl_num = read_int(c, &req->ttl_num));
    }
    if (key_is(key, "retain")) {
        if (read_literal(c, "true"))
            return (req->retain = 1);
        return read_literal(c, "false");
    }
    if (key_is(key, "headers")) {
        if (*c->p != '{' || req->header_count > 0)
            return 0;
        return read_headers(c, req);
    }
    return 0;
}

int jl_parse(const char *line, size_t len, char *scratch, jl_req *req)
{
    cursor c = {line, line + len, scratch};
    /* the header arrays are read only up to header_count: clearing them
     * too (1 KiB) cost more than parsing a short line */
    memset(req, 0, offsetof(jl_req, hkey));
    req->header_count = 0;
    skip_ws(&c);
    if (c.p >= c.end || *c.p != '{')
        return 0;
    c.p++;
    for (;;) {
        jl_str key = {0};
        skip_ws(&c);
        if (c.p >= c.end || *c.p != '"' || !read_string(&c, &key))
            return 0;
        skip_ws(&c);
        if (c.p >= c.end || *c.p != ':')
            return 0;
        c.p++;
        skip_ws(&c);
        if (!read_value(&c, &key, req))
            return 0;
        skip_ws(&c);
        if (c.p < c.end && *c.p == ',') {
            c.p++;
            continue;
        }
        if (c.p < c.end && *c.p == '}') {
            c.p++;
            break;
        }
        return 0;
    }
    skip_ws(&c);
    return c.p == c.end && req->op.set;
}
