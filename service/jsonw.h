/*
 * A minimal JSON writer for the hot paths (deliveries and publish acks of the
 * jsonl protocol), where building a jansson tree per message would cost more
 * than the rest of the broker's work. Appends to a growable buffer; any
 * allocation failure sticks in `failed` and is checked once at the end.
 */
#ifndef SB_JSONW_H
#define SB_JSONW_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct sb_jsonw {
    char *buf;
    size_t len, cap;
    int failed;
} sb_jsonw;

void sb_jsonw_raw(sb_jsonw *w, const char *s, size_t len);
/* Appends a literal (e.g. "{\"op\":\"msg\""). */
void sb_jsonw_lit(sb_jsonw *w, const char *s);
/* Appends s[0..len) as a quoted JSON string (UTF-8 passed through, control
 * characters, '"' and '\\' escaped). */
void sb_jsonw_str(sb_jsonw *w, const char *s, size_t len);
void sb_jsonw_int(sb_jsonw *w, int64_t v);
/* Frees the buffer. */
void sb_jsonw_free(sb_jsonw *w);

/* How many bytes from s (of len) are printable ASCII other than '"' and
 * '\\': what a JSON string holds as is and a reader may take as valid UTF-8
 * without looking further. Eight bytes at a time (the usual bit tricks:
 * a byte below 0x20, with its high bit set, or equal to '"' or '\\' flags
 * its word, and the word is then looked at byte by byte). */
static inline size_t sb_json_plain_run(const char *s, size_t len)
{
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    size_t i = 0;
    while (len - i >= 8) {
        uint64_t x, q, b;
        memcpy(&x, s + i, 8);
        q = x ^ (ones * '"');
        b = x ^ (ones * '\\');
        uint64_t t = (((x - ones * 0x20) & ~x) | ((q - ones) & ~q) | ((b - ones) & ~b) | x) & highs;
        if (t != 0) {
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
            /* the lowest flagged byte is a true one (a false flag needs a
             * borrow from a lower, truly flagged byte) */
            return i + (size_t)(__builtin_ctzll(t) >> 3);
#else
            break;
#endif
        }
        i += 8;
    }
    while (i < len) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c >= 0x80 || c == '"' || c == '\\')
            break;
        i++;
    }
    return i;
}

#endif
