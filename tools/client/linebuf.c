/* Line framing buffer (see linebuf.h). */
#include "tools/client/linebuf.h"

#include "service/alloc.h"
#include "service/error.h"

#include <string.h>

#define LINEBUF_INITIAL (64 * 1024)

void sb_linebuf_init(sb_linebuf *b, size_t max_line)
{
    memset(b, 0, sizeof(*b));
    b->max_line = max_line;
}

void sb_linebuf_free(sb_linebuf *b)
{
    sb_free(b->data);
    b->data = NULL;
    b->start = b->len = b->cap = b->scanned = 0;
}

size_t sb_linebuf_pending(const sb_linebuf *b)
{
    return b->len - b->start;
}

/* The longest unfinished line we must be able to hold: max_line plus "\r\n". */
static size_t hard_cap(const sb_linebuf *b)
{
    return b->max_line + 2;
}

int sb_linebuf_reserve(sb_linebuf *b, char **out, size_t *out_avail)
{
    size_t pending = b->len - b->start;

    if (b->scanned > b->max_line + 1)
        return SB_ETOOBIG;
    if (b->start > 0 && (b->len == b->cap || b->start >= b->cap / 2)) {
        /* Compact: move the unfinished line to the front. */
        memmove(b->data, b->data + b->start, pending);
        b->len = pending;
        b->start = 0;
    }
    if (b->len == b->cap) {
        size_t ncap = b->cap == 0 ? LINEBUF_INITIAL : b->cap * 2;
        char *p;
        /* Complete lines not taken yet may make the buffer larger than one
         * line; an unfinished line alone may not exceed max_line + "\r\n". */
        if (pending == 0 || memchr(b->data + b->start, '\n', pending) == NULL) {
            if (pending > b->max_line + 1)
                return SB_ETOOBIG;
            if (ncap > hard_cap(b) + 1)
                ncap = hard_cap(b) + 1;
            if (ncap <= b->cap)
                return SB_ETOOBIG;
        }
        p = sb_realloc(b->data, ncap);
        if (p == NULL)
            return SB_ENOMEM;
        b->data = p;
        b->cap = ncap;
    }
    *out = b->data + b->len;
    *out_avail = b->cap - b->len;
    return 0;
}

void sb_linebuf_commit(sb_linebuf *b, size_t n)
{
    b->len += n;
}

int sb_linebuf_append(sb_linebuf *b, const void *bytes, size_t n)
{
    const char *src = bytes;
    while (n > 0) {
        char *dst;
        size_t avail;
        int rc = sb_linebuf_reserve(b, &dst, &avail);
        if (rc != 0)
            return rc;
        if (avail > n)
            avail = n;
        memcpy(dst, src, avail);
        sb_linebuf_commit(b, avail);
        src += avail;
        n -= avail;
    }
    return 0;
}

int sb_linebuf_next(sb_linebuf *b, char **out_line, size_t *out_len)
{
    size_t pending = b->len - b->start;
    char *line, *nl;
    size_t n;

    if (pending == 0)
        return 0; /* data may still be NULL */
    line = b->data + b->start;
    nl = memchr(line + b->scanned, '\n', pending - b->scanned);
    if (nl == NULL) {
        b->scanned = pending;
        return b->scanned > b->max_line + 1 ? SB_ETOOBIG : 0;
    }
    n = (size_t)(nl - line);
    b->start += n + 1;
    b->scanned = 0;
    if (n > 0 && line[n - 1] == '\r')
        n--;
    if (n > b->max_line)
        return SB_ETOOBIG;
    line[n] = '\0';
    *out_line = line;
    *out_len = n;
    return 1;
}
