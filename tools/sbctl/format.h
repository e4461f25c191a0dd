/*
 * Output formatting for sbctl: aligned text tables and human-readable
 * numbers (sizes, ages, rates, latencies). Pure functions, unit-tested.
 */
#ifndef SBCTL_FORMAT_H
#define SBCTL_FORMAT_H

#include <stddef.h>
#include <stdint.h>

typedef enum { SBCTL_ALIGN_LEFT = 0, SBCTL_ALIGN_RIGHT = 1 } sbctl_align;

typedef struct sbctl_table sbctl_table;

/* A table with ncols columns, their headers and alignments (align may be
 * NULL: all left). Returns NULL on out-of-memory. Free with sbctl_table_free. */
sbctl_table *sbctl_table_new(size_t ncols, const char *const *headers, const sbctl_align *align);

void sbctl_table_free(sbctl_table *t);

/* Appends a row of ncols cells (copied; NULL prints as "-"). Returns 0 or SB_ENOMEM. */
int sbctl_table_add(sbctl_table *t, const char *const *cells);

size_t sbctl_table_rows(const sbctl_table *t);

/* Renders the header and the rows: columns separated by two spaces, widths
 * measured in UTF-8 code points, no trailing spaces, each line ending with
 * "\n" and prefixed with `indent` spaces. *out is a new string (sb_free).
 * Returns 0 or SB_ENOMEM. */
int sbctl_table_render(const sbctl_table *t, size_t indent, char **out);

/* Number of UTF-8 code points in s (invalid bytes count as one each). */
size_t sbctl_utf8_width(const char *s);

/* 0 B, 512 B, 1.5 KiB, 12.3 MiB, 4.0 GiB. Negative: "-". */
void sbctl_fmt_bytes(char *buf, size_t len, int64_t bytes);

/* An age or duration in ms: 0ms, 850ms, 12.3s, 5m12s, 3h05m, 2d04h. Negative: "-". */
void sbctl_fmt_ms(char *buf, size_t len, int64_t ms);

/* A rate or count: 0, 12.5, 999, 1234, 12.3k, 1.20M, 3.40G. Negative: "-". */
void sbctl_fmt_rate(char *buf, size_t len, double v);

/* A latency in ns: 850ns, 12.3us, 123us, 1.23ms, 45.6ms, 202ms, 1.23s. Negative: "-". */
void sbctl_fmt_ns(char *buf, size_t len, int64_t ns);

/* Copies s into buf for a one-line preview: control characters as \n, \t,
 * \xNN; at most max_width code points, "..." appended when cut. */
void sbctl_fmt_preview(char *buf, size_t len, const char *s, size_t slen, size_t max_width);

#endif
