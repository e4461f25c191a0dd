/*
 * Text in DDE transactions: CF_TEXT (bytes in an ANSI code page) and
 * CF_UNICODETEXT (UTF-16) to and from the broker's UTF-8 through the
 * conversions the desktop adapters share (adapters/desktop/win/text.c),
 * and the formats a value can be served in.
 */
#include "adapters/dde/win/dde_int.h"
#include "adapters/desktop/win/text.h"
#include "service/alloc.h"
#include "service/error.h"
#include "service/topic.h"

#include <stdio.h>
#include <string.h>

void sb_dde__value_clear(sb_dde_value *v)
{
    sb_free(v->data);
    sb_free(v->fmt_name);
    sb_free(v->bad);
    memset(v, 0, sizeof(*v));
}

int sb_dde__under_wine(void)
{
    HMODULE ntdll = GetModuleHandleW(L"ntdll.dll");
    return ntdll != NULL && GetProcAddress(ntdll, "wine_get_version") != NULL;
}

const char *sb_dde__format_name(UINT fmt, char *buf, size_t n)
{
    return sb_wtext_format_name(fmt, buf, n);
}

int sb_dde__decode(unsigned char **out, size_t *out_len, int *text, const unsigned char *data,
                   size_t len, UINT fmt, UINT codepage, char *why, size_t n)
{
    if (fmt != CF_TEXT && fmt != CF_UNICODETEXT && fmt < 0xC000) {
        char name[64];
        *out = NULL;
        *out_len = 0;
        *text = 0;
        snprintf(why, n, "clipboard format %s is not supported (text or a registered format)",
                 sb_dde__format_name(fmt, name, sizeof name));
        return SB_EINVAL;
    }
    return sb_wtext_decode(out, out_len, text, data, len, fmt, codepage, why, n);
}

int sb_dde__encode(unsigned char **out, size_t *out_len, const unsigned char *utf8, size_t len,
                   UINT fmt, UINT codepage, char *why, size_t n)
{
    return sb_wtext_encode(out, out_len, utf8, len, fmt, codepage, why, n);
}

int sb_dde__servable(const sb_dde_value *v, UINT fmt)
{
    if (v->kind == SB_DDE_VAL_TEXT)
        return fmt == CF_TEXT || fmt == CF_UNICODETEXT;
    if (v->kind == SB_DDE_VAL_FORMAT) {
        char name[128];
        return fmt >= 0xC000 &&
               strcmp(sb_dde__format_name(fmt, name, sizeof name), v->fmt_name) == 0;
    }
    return 0;
}

static int icase_eq(const char *a, const char *b)
{
    for (; *a != '\0' && *b != '\0'; a++, b++) {
        int x = (unsigned char)*a, y = (unsigned char)*b;
        if (x >= 'A' && x <= 'Z')
            x += 'a' - 'A';
        if (y >= 'A' && y <= 'Z')
            y += 'a' - 'A';
        if (x != y)
            return 0;
    }
    return *a == *b;
}

int sb_dde__value_from_msg(sb_dde_value *v, const sb_message *msg)
{
    const char *fmt = sb_message_header(msg, "dde-format");
    const char *enc = sb_message_header(msg, "encoding");
    char why[200];

    memset(v, 0, sizeof(*v));
    why[0] = '\0';
    v->data = sb_malloc(msg->payload_len + 1);
    if (v->data == NULL)
        return SB_ENOMEM;
    memcpy(v->data, msg->payload, msg->payload_len);
    v->data[msg->payload_len] = '\0';
    v->len = msg->payload_len;
    if (fmt != NULL && !icase_eq(fmt, "CF_TEXT") && !icase_eq(fmt, "CF_UNICODETEXT")) {
        if (fmt[0] == '#' || fmt[0] == '\0') {
            snprintf(why, sizeof why, "dde-format %s is not a registered format's name", fmt);
        } else {
            v->kind = SB_DDE_VAL_FORMAT;
            v->fmt_name = sb_strdup(fmt);
            return v->fmt_name != NULL ? 0 : SB_ENOMEM;
        }
    } else if (enc != NULL && !icase_eq(enc, "utf-8") && !icase_eq(enc, "utf8")) {
        snprintf(why, sizeof why,
                 "the payload's encoding is %s, not UTF-8 text (set dde-format to serve it in a "
                 "registered format)",
                 enc);
    } else if (!sb_utf8_valid((const char *)msg->payload, msg->payload_len)) {
        snprintf(why, sizeof why,
                 "the payload is not UTF-8 text (set header dde-format to serve bytes in a "
                 "registered format)");
    } else if (memchr(msg->payload, 0, msg->payload_len) != NULL) {
        snprintf(why, sizeof why, "the text holds a NUL character, which DDE text cannot carry");
    } else {
        v->kind = SB_DDE_VAL_TEXT;
        return 0;
    }
    v->kind = SB_DDE_VAL_BAD;
    v->bad = sb_strdup(why);
    return v->bad != NULL ? 0 : SB_ENOMEM;
}

int sb_dde__read(unsigned char **out, size_t *out_len, int *text, HDDEDATA data, UINT fmt,
                 UINT codepage, int64_t max_message, char *why, size_t n)
{
    DWORD len = DdeGetData(data, NULL, 0, 0);
    unsigned char *raw;
    int rc;
    *out = NULL;
    *out_len = 0;
    if (len > (DWORD)max_message * 4 + 4) {
        snprintf(why, n, "%lu bytes is larger than max_message (%lld bytes)", (unsigned long)len,
                 (long long)max_message);
        return SB_ETOOBIG;
    }
    raw = sb_malloc(len + 1);
    if (raw == NULL) {
        snprintf(why, n, "out of memory");
        return SB_ENOMEM;
    }
    DdeGetData(data, raw, len, 0);
    rc = sb_dde__decode(out, out_len, text, raw, len, fmt, codepage, why, n);
    sb_free(raw);
    if (rc == 0 && *out_len > (size_t)max_message) {
        snprintf(why, n, "%zu bytes is larger than max_message (%lld bytes)", *out_len,
                 (long long)max_message);
        sb_free(*out);
        *out = NULL;
        *out_len = 0;
        rc = SB_ETOOBIG;
    }
    return rc;
}
