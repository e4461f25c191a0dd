/* Topic validation and MQTT filter matching. */
#include "service/topic.h"
#include "service/alloc.h"
#include "service/error.h"

#include <stdint.h>
#include <string.h>

int sb_utf8_valid(const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        size_t n;
        unsigned cp;
        if (c < 0x80) {
            /* ASCII runs: 8 bytes at a time. */
            while (i + 8 <= len) {
                uint64_t chunk;
                memcpy(&chunk, s + i, 8);
                if (chunk & 0x8080808080808080ULL)
                    break;
                i += 8;
            }
            if (i < len && s[i] < 0x80)
                i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            n = 1;
            cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            n = 2;
            cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            n = 3;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (i + n >= len)
            return 0;
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
            cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += n + 1;
    }
    return 1;
}

static int check_common(const char *s, size_t len, const char **why)
{
    if (len == 0) {
        *why = "must not be empty";
        return SB_EINVAL;
    }
    if (len > SB_TOPIC_MAX) {
        *why = "longer than 65535 bytes";
        return SB_EINVAL;
    }
    if (memchr(s, '\0', len) != NULL) {
        *why = "contains a NUL character";
        return SB_EINVAL;
    }
    if (!sb_utf8_valid(s, len)) {
        *why = "is not valid UTF-8";
        return SB_EINVAL;
    }
    return 0;
}

int sb_topic_validate(const char *topic, size_t len, const char **why)
{
    const char *dummy;
    if (why == NULL)
        why = &dummy;
    if (check_common(topic, len, why) != 0)
        return SB_EINVAL;
    if (memchr(topic, '+', len) != NULL || memchr(topic, '#', len) != NULL) {
        *why = "contains a wildcard ('+' or '#')";
        return SB_EINVAL;
    }
    return 0;
}

int sb_filter_validate(const char *filter, size_t len, const char **why)
{
    const char *dummy;
    if (why == NULL)
        why = &dummy;
    if (check_common(filter, len, why) != 0)
        return SB_EINVAL;
    for (size_t i = 0; i < len; i++) {
        int starts = i == 0 || filter[i - 1] == '/';
        int ends = i + 1 == len || filter[i + 1] == '/';
        if (filter[i] == '+' && !(starts && ends)) {
            *why = "'+' must occupy a whole level";
            return SB_EINVAL;
        }
        if (filter[i] == '#' && !(starts && i + 1 == len)) {
            *why = "'#' must be the last level on its own";
            return SB_EINVAL;
        }
        if (filter[i] == '\n') {
            /* reports join a subscription's filters with '\n' (jsonl) */
            *why = "a line break is not allowed in a filter";
            return SB_EINVAL;
        }
    }
    return 0;
}

/* Matches the filter filter[0..flen) against topic. */
static int match_n(const char *filter, size_t flen, const char *topic)
{
    const char *f = filter, *fend = filter + flen, *t = topic;

    if (topic[0] == '$' && flen > 0 && (filter[0] == '+' || filter[0] == '#'))
        return 0;
    for (;;) {
        const char *fe = memchr(f, '/', (size_t)(fend - f));
        const char *te = strchr(t, '/');
        size_t fl = fe ? (size_t)(fe - f) : (size_t)(fend - f);
        size_t tl = te ? (size_t)(te - t) : strlen(t);

        if (fl == 1 && f[0] == '#')
            return 1;
        if (!(fl == 1 && f[0] == '+') && (fl != tl || memcmp(f, t, fl) != 0))
            return 0;
        if (fe == NULL || te == NULL) {
            /* "a/#" also matches "a" (the parent level), as in MQTT. */
            if (fe != NULL && te == NULL)
                return fend - fe == 2 && fe[1] == '#';
            return fe == NULL && te == NULL;
        }
        f = fe + 1;
        t = te + 1;
    }
}

int sb_topic_match(const char *filter, const char *topic)
{
    return match_n(filter, strlen(filter), topic);
}

int sb_topic_match_any(const sb_sub_filter *filters, size_t count, const char *topic)
{
    for (size_t i = 0; i < count; i++)
        if (sb_topic_match(filters[i].filter, topic))
            return 1;
    return 0;
}

sb_sub_filter *sb_sub_filters_copy(const sb_sub_filter *filters, size_t count, int *oom)
{
    size_t size = count * sizeof(*filters);
    sb_sub_filter *copy;
    char *p;
    if (count == 0)
        return NULL;
    for (size_t i = 0; i < count; i++)
        size += strlen(filters[i].filter) + 1;
    if ((copy = sb_malloc(size)) == NULL) {
        *oom = 1;
        return NULL;
    }
    p = (char *)(copy + count);
    for (size_t i = 0; i < count; i++) {
        size_t n = strlen(filters[i].filter) + 1;
        memcpy(p, filters[i].filter, n);
        copy[i].filter = p;
        copy[i].qos = filters[i].qos;
        p += n;
    }
    return copy;
}

char *sb_sub_filters_join(const sb_sub_filter *filters, size_t count)
{
    size_t size = 1, len = 0;
    char *s;
    for (size_t i = 0; i < count; i++)
        size += strlen(filters[i].filter) + 1;
    if ((s = sb_malloc(size)) == NULL)
        return NULL;
    s[0] = '\0';
    for (size_t i = 0; i < count; i++) {
        size_t n = strlen(filters[i].filter);
        if (i > 0)
            s[len++] = '\n';
        memcpy(s + len, filters[i].filter, n + 1);
        len += n;
    }
    return s;
}

int sb_sub_filters_same(const sb_sub_filter *a, size_t a_count, const sb_sub_filter *b,
                        size_t b_count)
{
    if (a_count != b_count)
        return 0;
    for (size_t i = 0; i < a_count; i++)
        if (strcmp(a[i].filter, b[i].filter) != 0)
            return 0;
    return 1;
}
