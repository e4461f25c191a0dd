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

int sb_base64_decode(const char *in, size_t len, unsigned char **out, size_t *out_len)
{
    unsigned char *buf = sb_malloc(len / 4 * 3 + 3);
    size_t n = 0;
    unsigned v = 0;
    int bits = 0;
    if (buf == NULL)
        return SB_ENOMEM;
    for (size_t i = 0; i < len; i++) {
        const char *p;
        if (in[i] == '=')
            break;
        p = memchr(b64chars, in[i], 64);
        if (p == NULL || in[i] == '\0') {
            sb_free(buf);
            return SB_EINVAL;
        }
        v = (v << 6) | (unsigned)(p - b64chars);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            buf[n++] = (unsigned char)(v >> bits);
        }
    }
    *out = buf;
    *out_len = n;
    return 0;
}
