/* base64 and UTF-8 checks (see codec.h). */
#include "tools/sbctl/codec.h"

#include "service/alloc.h"
#include "service/error.h"

#include <stdint.h>
#include <string.h>

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int sbctl_base64_encode(char **out, const void *data, size_t n)
{
    const unsigned char *p = data;
    size_t olen = (n + 2) / 3 * 4;
    char *s = sb_malloc(olen + 1), *o = s;

    *out = NULL;
    if (s == NULL)
        return SB_ENOMEM;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n)
            v |= p[i + 2];
        *o++ = b64[(v >> 18) & 63];
        *o++ = b64[(v >> 12) & 63];
        *o++ = i + 1 < n ? b64[(v >> 6) & 63] : '=';
        *o++ = i + 2 < n ? b64[v & 63] : '=';
    }
    *o = '\0';
    *out = s;
    return 0;
}

static int b64_value(char c)
{
    const char *p = c != '\0' ? strchr(b64, c) : NULL;
    return p != NULL ? (int)(p - b64) : -1;
}

int sbctl_base64_decode(unsigned char **out, size_t *out_len, const char *s, size_t n)
{
    unsigned char *buf, *o;
    uint32_t acc = 0;
    int bits = 0;

    *out = NULL;
    *out_len = 0;
    /* Padding: up to two '=' at the end, only where a group is incomplete. */
    while (n > 0 && s[n - 1] == '=') {
        n--;
        if (++bits > 2)
            return SB_EINVAL;
    }
    if (bits > 0 && (n + (size_t)bits) % 4 != 0)
        return SB_EINVAL;
    if (n % 4 == 1)
        return SB_EINVAL;
    bits = 0;
    buf = sb_malloc(n / 4 * 3 + 3 + 1);
    if (buf == NULL)
        return SB_ENOMEM;
    o = buf;
    for (size_t i = 0; i < n; i++) {
        int v = b64_value(s[i]);
        if (v < 0) {
            sb_free(buf);
            return SB_EINVAL;
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            *o++ = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    *o = '\0';
    *out = buf;
    *out_len = (size_t)(o - buf);
    return 0;
}

int sbctl_is_text(const void *data, size_t n)
{
    const unsigned char *s = data;
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        size_t len;
        uint32_t cp;
        if (c == 0)
            return 0;
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (i + len > n)
            return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        /* Overlong forms, surrogates and values past U+10FFFF. */
        if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += len;
    }
    return 1;
}
