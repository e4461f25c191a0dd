/* Minimal JSON writer (see jsonw.h). */
#include "service/jsonw.h"
#include "service/alloc.h"

#include <stdio.h>
#include <string.h>

static int reserve(sb_jsonw *w, size_t extra)
{
    size_t cap;
    char *n;
    if (w->failed)
        return 0;
    if (w->len + extra <= w->cap)
        return 1;
    cap = w->cap == 0 ? 256 : w->cap;
    while (cap < w->len + extra)
        cap *= 2;
    n = sb_realloc(w->buf, cap);
    if (n == NULL) {
        w->failed = 1;
        return 0;
    }
    w->buf = n;
    w->cap = cap;
    return 1;
}

void sb_jsonw_raw(sb_jsonw *w, const char *s, size_t len)
{
    if (!reserve(w, len))
        return;
    memcpy(w->buf + w->len, s, len);
    w->len += len;
}

void sb_jsonw_lit(sb_jsonw *w, const char *s)
{
    sb_jsonw_raw(w, s, strlen(s));
}

void sb_jsonw_str(sb_jsonw *w, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t need = len + 2, plain = sb_json_plain_run(s, len);
    char *o;
    if (plain == len) { /* the usual case: nothing to escape */
        if (!reserve(w, need))
            return;
        o = w->buf + w->len;
        *o = '"';
        memcpy(o + 1, s, len);
        o[len + 1] = '"';
        w->len += need;
        return;
    }
    /* The exact size: reserving the worst case (every byte \u00XX) made
     * a payload of a few hundred bytes ask malloc for kilobytes, past its
     * per-thread cache, on every delivery. */
    for (size_t i = plain; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\' || c == '\n' || c == '\r' || c == '\t')
            need += 1;
        else if (c < 0x20)
            need += 5;
    }
    if (!reserve(w, need))
        return;
    o = w->buf + w->len;
    *o++ = '"';
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        size_t run = sb_json_plain_run(s + i, len - i);
        if (run > 0) {
            memcpy(o, s + i, run);
            o += run;
            i += run - 1;
            continue;
        }
        if (c >= 0x20 && c != '"' && c != '\\') {
            /* Copy the run of bytes that need no escaping in one go. */
            size_t j = i + 1;
            while (j < len && (unsigned char)s[j] >= 0x20 && s[j] != '"' && s[j] != '\\')
                j++;
            memcpy(o, s + i, j - i);
            o += j - i;
            i = j - 1;
            continue;
        }
        *o++ = '\\';
        switch (c) {
        case '"':
            *o++ = '"';
            break;
        case '\\':
            *o++ = '\\';
            break;
        case '\n':
            *o++ = 'n';
            break;
        case '\r':
            *o++ = 'r';
            break;
        case '\t':
            *o++ = 't';
            break;
        default:
            *o++ = 'u';
            *o++ = '0';
            *o++ = '0';
            *o++ = hex[c >> 4];
            *o++ = hex[c & 15];
        }
    }
    *o++ = '"';
    w->len = (size_t)(o - w->buf);
}

void sb_jsonw_int(sb_jsonw *w, int64_t v)
{
    char tmp[24], *p = tmp + sizeof(tmp);
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    if (v < 0)
        *--p = '-';
    sb_jsonw_raw(w, p, (size_t)(tmp + sizeof(tmp) - p));
}

void sb_jsonw_free(sb_jsonw *w)
{
    sb_free(w->buf);
    w->buf = NULL;
    w->len = w->cap = 0;
}
