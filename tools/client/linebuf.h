/*
 * Line framing for the jsonl protocol: an input buffer that bytes are read
 * into and complete lines are taken out of.
 *
 * Lines end with '\n'; a '\r' before it is dropped. A line longer than the
 * buffer's max_line (without its terminator) is an error (SB_ETOOBIG), as the
 * framing of the rest of the stream can no longer be trusted. Pure: no I/O.
 */
#ifndef SB_CLIENT_LINEBUF_H
#define SB_CLIENT_LINEBUF_H

#include <stddef.h>

typedef struct sb_linebuf {
    char *data;
    size_t start; /* first unconsumed byte */
    size_t len;   /* end of the valid bytes */
    size_t cap;
    size_t scanned;  /* bytes after start already known to hold no '\n' */
    size_t max_line; /* longest accepted line, without "\r\n" */
} sb_linebuf;

/* Initialises an empty buffer (allocates nothing yet). */
void sb_linebuf_init(sb_linebuf *b, size_t max_line);

/* Frees the storage; the buffer may be initialised again. */
void sb_linebuf_free(sb_linebuf *b);

/* Makes room at the end and returns it in *out / *out_avail (at least 1
 * byte). The area, and any line returned before, may move. Returns 0,
 * SB_ENOMEM, or SB_ETOOBIG if the unfinished line already exceeds max_line. */
int sb_linebuf_reserve(sb_linebuf *b, char **out, size_t *out_avail);

/* Records that n bytes were written into the area from sb_linebuf_reserve. */
void sb_linebuf_commit(sb_linebuf *b, size_t n);

/* Appends bytes (reserve + copy + commit). Returns 0, SB_ENOMEM or SB_ETOOBIG. */
int sb_linebuf_append(sb_linebuf *b, const void *bytes, size_t n);

/* Takes the next complete line. Returns 1 with *out_line (NUL-terminated,
 * inside the buffer, valid until the next reserve/append) and *out_len; 0 if
 * no complete line is buffered; SB_ETOOBIG if a line exceeds max_line. */
int sb_linebuf_next(sb_linebuf *b, char **out_line, size_t *out_len);

/* Bytes buffered but not yet returned as lines. */
size_t sb_linebuf_pending(const sb_linebuf *b);

#endif
