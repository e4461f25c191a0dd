/*
 * Text in the clipboard formats that DDE transactions, the clipboard and
 * WM_COPYDATA carry: CF_TEXT and CF_OEMTEXT (bytes in a code page) and
 * CF_UNICODETEXT (UTF-16) to and from the broker's UTF-8 (see text.h).
 * Nothing is ever mangled: a byte sequence the code page does not define,
 * an unpaired surrogate, or a character the target code page cannot
 * represent (checked by converting back) refuses the conversion with a
 * reason naming the culprit.
 */
#include "adapters/desktop/win/text.h"
#include "service/alloc.h"
#include "service/error.h"
#include "service/topic.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

const char *sb_wtext_format_name(UINT fmt, char *buf, size_t n)
{
    wchar_t w[128];
    int len, k = 0;
    if (fmt == CF_TEXT)
        return "CF_TEXT";
    if (fmt == CF_UNICODETEXT)
        return "CF_UNICODETEXT";
    if (fmt == CF_OEMTEXT)
        return "CF_OEMTEXT";
    if (fmt == CF_DIB)
        return "CF_DIB";
    if (fmt == CF_DIBV5)
        return "CF_DIBV5";
    len = fmt >= 0xC000 ? GetClipboardFormatNameW(fmt, w, (int)(sizeof w / sizeof w[0])) : 0;
    if (len > 0)
        k = WideCharToMultiByte(CP_UTF8, 0, w, len, buf, (int)n - 1, NULL, NULL);
    if (k <= 0)
        snprintf(buf, n, "#%u", fmt);
    else
        buf[k] = '\0';
    return buf;
}

/* UTF-16 (len units) to new UTF-8; SB_EINVAL on an unpaired surrogate. */
static int wide_to_utf8(unsigned char **out, size_t *out_len, const wchar_t *w, int len, char *why,
                        size_t n)
{
    int m = len == 0
                ? 0
                : WideCharToMultiByte(CP_UTF8, WC_ERR_INVALID_CHARS, w, len, NULL, 0, NULL, NULL);
    if (len > 0 && m <= 0) {
        snprintf(why, n, "the text holds an unpaired UTF-16 surrogate (not valid Unicode)");
        return SB_EINVAL;
    }
    *out = sb_malloc((size_t)m + 1);
    if (*out == NULL)
        return SB_ENOMEM;
    if (m > 0)
        WideCharToMultiByte(CP_UTF8, WC_ERR_INVALID_CHARS, w, len, (char *)*out, m, NULL, NULL);
    (*out)[m] = '\0';
    *out_len = (size_t)m;
    return 0;
}

/* Bytes in codepage to new UTF-16 (*wlen units, not terminated). */
static int mb_to_wide(wchar_t **out, int *wlen, const char *s, int len, UINT codepage, char *why,
                      size_t n)
{
    DWORD flags = MB_ERR_INVALID_CHARS;
    int m;
    *out = NULL;
    *wlen = 0;
    if (len == 0) {
        *out = sb_malloc(sizeof(wchar_t));
        return *out != NULL ? 0 : SB_ENOMEM;
    }
    m = MultiByteToWideChar(codepage, flags, s, len, NULL, 0);
    if (m <= 0 && GetLastError() == ERROR_INVALID_FLAGS) {
        flags = 0; /* code pages such as 50220 take no flags */
        m = MultiByteToWideChar(codepage, flags, s, len, NULL, 0);
    }
    if (m <= 0) {
        snprintf(why, n, "the text is not valid in code page %u", codepage);
        return SB_EINVAL;
    }
    *out = sb_malloc((size_t)m * sizeof(wchar_t));
    if (*out == NULL)
        return SB_ENOMEM;
    MultiByteToWideChar(codepage, flags, s, len, *out, m);
    *wlen = m;
    return 0;
}

int sb_wtext_decode(unsigned char **out, size_t *out_len, int *text, const unsigned char *data,
                    size_t len, UINT fmt, UINT codepage, char *why, size_t n)
{
    wchar_t *w = NULL;
    int wlen = 0, rc;

    *out = NULL;
    *out_len = 0;
    *text = 0;
    if (len > INT32_MAX / 2) {
        snprintf(why, n, "%zu bytes is too large", len);
        return SB_EINVAL;
    }
    if (fmt == CF_UNICODETEXT) {
        const wchar_t *u = (const wchar_t *)(const void *)data;
        size_t units = len / sizeof(wchar_t), k = 0;
        while (k < units && u[k] != 0)
            k++;
        /* DDE data may be longer than the text: it ends at the first NUL */
        w = sb_malloc((k + 1) * sizeof(wchar_t));
        if (w == NULL)
            return SB_ENOMEM;
        memcpy(w, data, k * sizeof(wchar_t));
        rc = wide_to_utf8(out, out_len, w, (int)k, why, n);
        sb_free(w);
        *text = rc == 0;
        return rc;
    }
    if (fmt == CF_TEXT || fmt == CF_OEMTEXT) {
        const unsigned char *nul = memchr(data, 0, len);
        size_t k = nul != NULL ? (size_t)(nul - data) : len;
        if (codepage == CP_UTF8) {
            if (!sb_utf8_valid((const char *)data, k)) {
                snprintf(why, n, "the text is not valid UTF-8 (code page 65001)");
                return SB_EINVAL;
            }
            *out = sb_malloc(k + 1);
            if (*out == NULL)
                return SB_ENOMEM;
            memcpy(*out, data, k);
            (*out)[k] = '\0';
            *out_len = k;
            *text = 1;
            return 0;
        }
        rc = mb_to_wide(&w, &wlen, (const char *)data, (int)k, codepage, why, n);
        if (rc == 0)
            rc = wide_to_utf8(out, out_len, w, wlen, why, n);
        sb_free(w);
        *text = rc == 0;
        return rc;
    }
    *out = sb_malloc(len + 1);
    if (*out == NULL)
        return SB_ENOMEM;
    if (len > 0)
        memcpy(*out, data, len);
    *out_len = len;
    return 0;
}

/* The first code point of w[0..len) that does not survive the trip
 * through codepage, for the message (0 if none found). */
static unsigned first_lost(const wchar_t *w, int len, UINT codepage)
{
    for (int i = 0; i < len; i++) {
        char mb[16];
        wchar_t back[4];
        int step = (w[i] >= 0xD800 && w[i] <= 0xDBFF && i + 1 < len) ? 2 : 1;
        int m = WideCharToMultiByte(codepage, 0, w + i, step, mb, sizeof mb, NULL, NULL);
        int b = m > 0 ? MultiByteToWideChar(codepage, 0, mb, m, back, 4) : 0;
        if (b != step || memcmp(back, w + i, (size_t)step * sizeof(wchar_t)) != 0) {
            if (step == 2)
                return 0x10000u + (((unsigned)w[i] - 0xD800u) << 10) +
                       ((unsigned)w[i + 1] - 0xDC00u);
            return (unsigned)w[i];
        }
        i += step - 1;
    }
    return 0;
}

int sb_wtext_encode(unsigned char **out, size_t *out_len, const unsigned char *utf8, size_t len,
                    UINT fmt, UINT codepage, char *why, size_t n)
{
    wchar_t *w = NULL, *back = NULL;
    int wlen = 0, m, blen;
    int rc = SB_EINVAL;

    *out = NULL;
    *out_len = 0;
    if (len > INT32_MAX / 4) {
        snprintf(why, n, "%zu bytes is too large", len);
        return SB_EINVAL;
    }
    if (!sb_utf8_valid((const char *)utf8, len)) {
        snprintf(why, n, "the payload is not UTF-8 text");
        return SB_EINVAL;
    }
    if (memchr(utf8, 0, len) != NULL) {
        snprintf(why, n, "the text holds a NUL character, which ends text in %s",
                 fmt == CF_UNICODETEXT ? "CF_UNICODETEXT" : "CF_TEXT");
        return SB_EINVAL;
    }
    if (fmt != CF_UNICODETEXT && codepage == CP_UTF8) {
        *out = sb_malloc(len + 1);
        if (*out == NULL)
            return SB_ENOMEM;
        memcpy(*out, utf8, len);
        (*out)[len] = '\0';
        *out_len = len + 1;
        return 0;
    }
    if ((rc = mb_to_wide(&w, &wlen, (const char *)utf8, (int)len, CP_UTF8, why, n)) != 0)
        return rc;
    if (fmt == CF_UNICODETEXT) {
        *out = sb_malloc(((size_t)wlen + 1) * sizeof(wchar_t));
        if (*out == NULL) {
            sb_free(w);
            return SB_ENOMEM;
        }
        memcpy(*out, w, (size_t)wlen * sizeof(wchar_t));
        memset(*out + (size_t)wlen * sizeof(wchar_t), 0, sizeof(wchar_t));
        *out_len = ((size_t)wlen + 1) * sizeof(wchar_t);
        sb_free(w);
        return 0;
    }
    /* CF_TEXT: convert, then back; what does not come back unchanged (no
     * such character, or a "best fit" look-alike) refuses the value. */
    m = wlen == 0 ? 0 : WideCharToMultiByte(codepage, 0, w, wlen, NULL, 0, NULL, NULL);
    if (wlen > 0 && m <= 0) {
        snprintf(why, n, "the text cannot be converted to code page %u", codepage);
        goto done;
    }
    *out = sb_malloc((size_t)m + 1);
    if (*out == NULL) {
        rc = SB_ENOMEM;
        goto done;
    }
    if (m > 0)
        WideCharToMultiByte(codepage, 0, w, wlen, (char *)*out, m, NULL, NULL);
    (*out)[m] = '\0';
    if ((rc = mb_to_wide(&back, &blen, (const char *)*out, m, codepage, why, n)) != 0)
        goto done;
    if (blen != wlen || memcmp(back, w, (size_t)wlen * sizeof(wchar_t)) != 0) {
        unsigned cp = first_lost(w, wlen, codepage);
        snprintf(why, n,
                 "character U+%04X cannot be represented in code page %u (CF_TEXT); "
                 "ask for CF_UNICODETEXT, or set the adapter's codepage",
                 cp, codepage);
        rc = SB_EINVAL;
        goto done;
    }
    *out_len = (size_t)m + 1;
    rc = 0;
done:
    if (rc != 0) {
        sb_free(*out);
        *out = NULL;
        *out_len = 0;
    }
    sb_free(w);
    sb_free(back);
    return rc;
}
