/* Tables and human-readable numbers (see format.h). */
#include "tools/sbctl/format.h"

#include "service/alloc.h"
#include "service/error.h"

#include <stdio.h>
#include <string.h>

struct sbctl_table {
    size_t ncols;
    char **headers;
    sbctl_align *align;
    char **cells; /* rows * ncols */
    size_t rows, cap;
};

size_t sbctl_utf8_width(const char *s)
{
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++)
        if ((*p & 0xC0) != 0x80)
            n++;
    return n;
}

sbctl_table *sbctl_table_new(size_t ncols, const char *const *headers, const sbctl_align *align)
{
    sbctl_table *t = sb_calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    t->ncols = ncols;
    t->headers = sb_calloc(ncols, sizeof(*t->headers));
    t->align = sb_calloc(ncols, sizeof(*t->align));
    if (t->headers == NULL || t->align == NULL)
        goto fail;
    for (size_t i = 0; i < ncols; i++) {
        t->headers[i] = sb_strdup(headers[i]);
        if (t->headers[i] == NULL)
            goto fail;
        t->align[i] = align != NULL ? align[i] : SBCTL_ALIGN_LEFT;
    }
    return t;
fail:
    sbctl_table_free(t);
    return NULL;
}

void sbctl_table_free(sbctl_table *t)
{
    if (t == NULL)
        return;
    if (t->headers != NULL)
        for (size_t i = 0; i < t->ncols; i++)
            sb_free(t->headers[i]);
    for (size_t i = 0; i < t->rows * t->ncols; i++)
        sb_free(t->cells[i]);
    sb_free(t->headers);
    sb_free(t->align);
    sb_free(t->cells);
    sb_free(t);
}

size_t sbctl_table_rows(const sbctl_table *t)
{
    return t->rows;
}

int sbctl_table_add(sbctl_table *t, const char *const *cells)
{
    char **row;
    if (t->rows == t->cap) {
        size_t ncap = t->cap == 0 ? 16 : t->cap * 2;
        char **p = sb_realloc(t->cells, ncap * t->ncols * sizeof(*p));
        if (p == NULL)
            return SB_ENOMEM;
        t->cells = p;
        t->cap = ncap;
    }
    row = t->cells + t->rows * t->ncols;
    for (size_t i = 0; i < t->ncols; i++) {
        row[i] = sb_strdup(cells[i] != NULL ? cells[i] : "-");
        if (row[i] == NULL) {
            while (i-- > 0)
                sb_free(row[i]);
            return SB_ENOMEM;
        }
    }
    t->rows++;
    return 0;
}

typedef struct strbuf {
    char *s;
    size_t len, cap;
    int failed;
} strbuf;

static void sb_put(strbuf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t ncap = b->cap == 0 ? 256 : b->cap;
        char *p;
        while (ncap < b->len + n + 1)
            ncap *= 2;
        p = sb_realloc(b->s, ncap);
        if (p == NULL) {
            b->failed = 1;
            return;
        }
        b->s = p;
        b->cap = ncap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

static void sb_pad(strbuf *b, size_t n)
{
    while (n-- > 0)
        sb_put(b, " ", 1);
}

static void render_row(strbuf *b, const sbctl_table *t, char *const *cells, const size_t *width,
                       size_t indent)
{
    size_t pending = indent; /* spaces owed before the next text, so none trail */
    for (size_t c = 0; c < t->ncols; c++) {
        size_t w = sbctl_utf8_width(cells[c]);
        size_t fill = width[c] > w ? width[c] - w : 0;
        if (c > 0)
            pending += 2;
        if (t->align[c] == SBCTL_ALIGN_RIGHT)
            pending += fill;
        if (w > 0) {
            sb_pad(b, pending);
            sb_put(b, cells[c], strlen(cells[c]));
            pending = 0;
        }
        if (t->align[c] == SBCTL_ALIGN_LEFT)
            pending += fill;
    }
    sb_put(b, "\n", 1);
}

int sbctl_table_render(const sbctl_table *t, size_t indent, char **out)
{
    strbuf b = {0};
    size_t *width = sb_calloc(t->ncols, sizeof(*width));

    *out = NULL;
    if (width == NULL)
        return SB_ENOMEM;
    for (size_t c = 0; c < t->ncols; c++) {
        width[c] = sbctl_utf8_width(t->headers[c]);
        for (size_t r = 0; r < t->rows; r++) {
            size_t w = sbctl_utf8_width(t->cells[r * t->ncols + c]);
            if (w > width[c])
                width[c] = w;
        }
    }
    render_row(&b, t, t->headers, width, indent);
    for (size_t r = 0; r < t->rows; r++)
        render_row(&b, t, t->cells + r * t->ncols, width, indent);
    sb_free(width);
    if (b.failed) {
        sb_free(b.s);
        return SB_ENOMEM;
    }
    *out = b.s;
    return 0;
}

void sbctl_fmt_bytes(char *buf, size_t len, int64_t bytes)
{
    static const char *units[] = {"KiB", "MiB", "GiB", "TiB", "PiB"};
    double v = (double)bytes;
    size_t u = 0;

    if (bytes < 0) {
        snprintf(buf, len, "-");
        return;
    }
    if (bytes < 1024) {
        snprintf(buf, len, "%lld B", (long long)bytes);
        return;
    }
    v /= 1024.0;
    while (v >= 1023.95 && u + 1 < sizeof(units) / sizeof(units[0])) {
        v /= 1024.0;
        u++;
    }
    snprintf(buf, len, "%.1f %s", v, units[u]);
}

void sbctl_fmt_ms(char *buf, size_t len, int64_t ms)
{
    if (ms < 0)
        snprintf(buf, len, "-");
    else if (ms < 1000)
        snprintf(buf, len, "%lldms", (long long)ms);
    else if (ms < 60000)
        snprintf(buf, len, "%.1fs", (double)(ms / 100) / 10.0);
    else if (ms < 3600000)
        snprintf(buf, len, "%lldm%02llds", (long long)(ms / 60000), (long long)(ms / 1000 % 60));
    else if (ms < 86400000)
        snprintf(buf, len, "%lldh%02lldm", (long long)(ms / 3600000), (long long)(ms / 60000 % 60));
    else
        snprintf(buf, len, "%lldd%02lldh", (long long)(ms / 86400000),
                 (long long)(ms / 3600000 % 24));
}

void sbctl_fmt_rate(char *buf, size_t len, double v)
{
    if (v < 0)
        snprintf(buf, len, "-");
    else if (v == 0)
        snprintf(buf, len, "0");
    else if (v < 10)
        snprintf(buf, len, "%.2f", v);
    else if (v < 100)
        snprintf(buf, len, "%.1f", v);
    else if (v < 10000)
        snprintf(buf, len, "%.0f", v);
    else if (v < 999500)
        snprintf(buf, len, "%.1fk", v / 1e3);
    else if (v < 999500000)
        snprintf(buf, len, "%.2fM", v / 1e6);
    else
        snprintf(buf, len, "%.2fG", v / 1e9);
}

void sbctl_fmt_ns(char *buf, size_t len, int64_t ns)
{
    double v = (double)ns;
    if (ns < 0)
        snprintf(buf, len, "-");
    else if (ns < 1000)
        snprintf(buf, len, "%lldns", (long long)ns);
    else if (ns < 100000)
        snprintf(buf, len, "%.1fus", v / 1e3);
    else if (ns < 1000000)
        snprintf(buf, len, "%.0fus", v / 1e3);
    else if (ns < 10000000)
        snprintf(buf, len, "%.2fms", v / 1e6);
    else if (ns < 100000000)
        snprintf(buf, len, "%.1fms", v / 1e6);
    else if (ns < 1000000000)
        snprintf(buf, len, "%.0fms", v / 1e6);
    else
        snprintf(buf, len, "%.2fs", v / 1e9);
}

void sbctl_fmt_preview(char *buf, size_t len, const char *s, size_t slen, size_t max_width)
{
    size_t o = 0, width = 0, i = 0;
    if (len == 0)
        return;
    while (i < slen) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        size_t n;
        if (width >= max_width)
            break;
        if (c == '\n')
            n = (size_t)snprintf(esc, sizeof(esc), "\\n");
        else if (c == '\t')
            n = (size_t)snprintf(esc, sizeof(esc), "\\t");
        else if (c == '\r')
            n = (size_t)snprintf(esc, sizeof(esc), "\\r");
        else if (c < 0x20 || c == 0x7f)
            n = (size_t)snprintf(esc, sizeof(esc), "\\x%02x", c);
        else {
            /* Copy a whole UTF-8 sequence. */
            size_t seq = 1;
            while (i + seq < slen && ((unsigned char)s[i + seq] & 0xC0) == 0x80 && c >= 0xC0 &&
                   seq < 4)
                seq++;
            if (o + seq + 4 > len)
                break;
            memcpy(buf + o, s + i, seq);
            o += seq;
            i += seq;
            width++;
            continue;
        }
        if (o + n + 4 > len)
            break;
        memcpy(buf + o, esc, n);
        o += n;
        i++;
        width += n;
    }
    if (i < slen && o + 3 < len) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o] = '\0';
}
