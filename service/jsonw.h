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

#endif
