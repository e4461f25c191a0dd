/* Base64 (RFC 4648) for binary payloads in JSON. */
#include "service/base64.h"
#include "service/alloc.h"
#include "service/error.h"

#include <string.h>

static const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *sb_base64_encode(const unsigned char *in, size_t len)
{
    char *out = sb_malloc(4 * ((len + 2) / 3) + 1), *o = out;
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < len; i += 3) {
        unsigned v = (unsigned)in[i] << 16;
        if (i + 1 < len)
            v |= (unsigned)in[i + 1] << 8;
        if (i + 2 < len)
            v |= in[i + 2];
        *o++ = b64chars[(v >> 18) & 63];
        *o++ = b64chars[(v >> 12) & 63];
        *o++ = i + 1 < len ? b64chars[(v >> 6) & 63] : '=';
        *o++ = i + 2 < len ? b64chars[v & 63] : '=';
    }
    *o = '\0';
    return out;
}

static int b64_value(char c)
{
    const char *p = c != '\0' ? memchr(b64chars, c, 64) : NULL;
    return p != NULL ? (int)(p - b64chars) : -1;
}

int sb_base64_decode(const char *in, size_t len, unsigned char **out, size_t *out_len)
{
    unsigned char *buf, *o;
    unsigned acc = 0;
    int bits = 0;

    *out = NULL;
    *out_len = 0;
    /* Padding: up to two '=' at the end, only where a group is incomplete
     * (it may also be left out). */
    while (len > 0 && in[len - 1] == '=') {
        len--;
        if (++bits > 2)
            return SB_EINVAL;
    }
    if ((bits > 0 && (len + (size_t)bits) % 4 != 0) || len % 4 == 1)
        return SB_EINVAL;
    bits = 0;
    buf = sb_malloc(len / 4 * 3 + 3 + 1);
    if (buf == NULL)
        return SB_ENOMEM;
    o = buf;
    for (size_t i = 0; i < len; i++) {
        int v = b64_value(in[i]);
        if (v < 0) {
            sb_free(buf);
            return SB_EINVAL;
        }
        acc = (acc << 6) | (unsigned)v;
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
