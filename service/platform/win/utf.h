/*
 * UTF-8 <-> UTF-16 at the Windows API boundary, in one place (libgit2's
 * win32/utf-conv.c). The broker is UTF-8 inside; only W APIs are called.
 */
#ifndef SB_WIN_UTF_H
#define SB_WIN_UTF_H

#include <wchar.h>

/* Returns a new UTF-16 copy of s (sb_free it), or NULL (invalid UTF-8 or
 * out of memory). */
wchar_t *sb_utf8_to_wide(const char *s);

/* Returns a new UTF-8 copy of w (sb_free it), or NULL. */
char *sb_wide_to_utf8(const wchar_t *w);

/* Formats a Windows error code as one line of text (FormatMessageW) into out. */
void sb_win_strerror(unsigned long code, char *out, size_t n);

/* Maps a GetLastError() code to an SB_E* code. */
int sb_error_from_win32(unsigned long code);

#endif
