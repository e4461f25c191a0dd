/*
 * Text in clipboard formats, to and from the broker's UTF-8: shared by the
 * DDE, clipboard and WM_COPYDATA adapters (Windows).
 */
#ifndef SB_WIN_TEXT_H
#define SB_WIN_TEXT_H

#include <stddef.h>

#include <windows.h>

/* Data of clipboard format fmt to a payload: CF_TEXT and CF_OEMTEXT
 * (through codepage; CP_UTF8: checked UTF-8) and CF_UNICODETEXT become
 * UTF-8 up to the first NUL (*text = 1); any other format stays bytes
 * (*text = 0). *out is NUL-terminated. Returns 0, SB_EINVAL (the text
 * cannot be converted: why says where) or SB_ENOMEM. */
int sb_wtext_decode(unsigned char **out, size_t *out_len, int *text, const unsigned char *data,
                    size_t len, UINT fmt, UINT codepage, char *why, size_t n);

/* UTF-8 text to CF_TEXT / CF_OEMTEXT (through codepage) or CF_UNICODETEXT,
 * with the terminating NUL counted in *out_len. Returns 0, SB_EINVAL (not
 * UTF-8, a NUL inside, or a character the code page cannot represent: why
 * says which), or SB_ENOMEM. */
int sb_wtext_encode(unsigned char **out, size_t *out_len, const unsigned char *utf8, size_t len,
                    UINT fmt, UINT codepage, char *why, size_t n);

/* The name of a clipboard format ("CF_TEXT", "CF_UNICODETEXT", a
 * registered name, or "#49321") into buf. */
const char *sb_wtext_format_name(UINT fmt, char *buf, size_t n);

#endif
