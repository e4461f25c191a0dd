/*
 * UTF-8 <-> single-byte code pages through the compiled-in tables. The
 * reverse direction (Unicode to a byte) searches the page's 128 entries:
 * payloads are short and the search is cheaper than building and keeping an
 * inverse table per page.
 */
#include "service/codepage.h"

#include "service/alloc.h"
#include "service/error.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const sb_codepage_table *find(int cp)
{
    for (const sb_codepage_table *t = sb_codepage__tables; t->cp != 0; t++)
        if (t->cp == cp)
            return t;
    return NULL;
}

int sb_codepage_parse(const char *name)
{
    const char *digits = name;
    char *end;
    long v;

    if (strncasecmp(name, "windows-", 8) == 0)
        digits = name + 8;
    else if (strncasecmp(name, "cp", 2) == 0)
        digits = name + 2;
    if (!isdigit((unsigned char)digits[0]))
        return 0;
    v = strtol(digits, &end, 10);
    if (*end != '\0' || v <= 0 || v > 65535 || find((int)v) == NULL)
        return 0;
    return (int)v;
}

size_t sb_utf8_decode(unsigned *cp, const unsigned char *s, size_t len)
{
    unsigned c = s[0], min;
    size_t n;

    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if ((c & 0xE0) == 0xC0) {
        n = 2, c &= 0x1F, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
        n = 3, c &= 0x0F, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
        n = 4, c &= 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (len < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        c = (c << 6) | (s[i] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
        return 0;
    *cp = c;
    return n;
}

int sb_codepage_from_utf8(unsigned char **out, size_t *out_len, int cp, const unsigned char *s,
                          size_t len, char *why, size_t n)
{
    const sb_codepage_table *t = find(cp);
    unsigned char *buf;
    size_t o = 0;

    *out = NULL;
    *out_len = 0;
    if (t == NULL) {
        snprintf(why, n, "code page %d is not supported", cp);
        return SB_EINVAL;
    }
    buf = sb_malloc(len + 1);
    if (buf == NULL)
        return SB_ENOMEM;
    for (size_t i = 0; i < len;) {
        unsigned c;
        size_t k = sb_utf8_decode(&c, s + i, len - i);
        int b = -1;
        if (k == 0) {
            snprintf(why, n, "invalid UTF-8 at byte %zu", i);
            sb_free(buf);
            return SB_EINVAL;
        }
        if (c < 0x80) {
            b = (int)c;
        } else {
            for (int j = 0; j < 128; j++)
                if (t->high[j] == c) {
                    b = 0x80 + j;
                    break;
                }
        }
        if (b < 0) {
            snprintf(why, n, "U+%04X at byte %zu has no equivalent in code page %d", c, i, cp);
            sb_free(buf);
            return SB_EINVAL;
        }
        buf[o++] = (unsigned char)b;
        i += k;
    }
    *out = buf;
    *out_len = o;
    return 0;
}

int sb_codepage_to_utf8(unsigned char **out, size_t *out_len, int cp, const unsigned char *s,
                        size_t len, char *why, size_t n)
{
    const sb_codepage_table *t = find(cp);
    unsigned char *buf;
    size_t o = 0;

    *out = NULL;
    *out_len = 0;
    if (t == NULL) {
        snprintf(why, n, "code page %d is not supported", cp);
        return SB_EINVAL;
    }
    /* at most 3 UTF-8 bytes per byte: the pages are all in the BMP */
    buf = sb_malloc(len * 3 + 1);
    if (buf == NULL)
        return SB_ENOMEM;
    for (size_t i = 0; i < len; i++) {
        unsigned c = s[i];
        if (c >= 0x80) {
            c = t->high[c - 0x80];
            if (c == 0) {
                snprintf(why, n, "byte 0x%02X at %zu is undefined in code page %d", s[i], i, cp);
                sb_free(buf);
                return SB_EINVAL;
            }
        }
        if (c < 0x80) {
            buf[o++] = (unsigned char)c;
        } else if (c < 0x800) {
            buf[o++] = (unsigned char)(0xC0 | (c >> 6));
            buf[o++] = (unsigned char)(0x80 | (c & 0x3F));
        } else {
            buf[o++] = (unsigned char)(0xE0 | (c >> 12));
            buf[o++] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
            buf[o++] = (unsigned char)(0x80 | (c & 0x3F));
        }
    }
    *out = buf;
    *out_len = o;
    return 0;
}
