/* dwData <-> broker topics (see cd_map.h). */
#include "adapters/copydata/cd_map.h"
#include "service/alloc.h"
#include "service/error.h"
#include "service/topic.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PH_DATA "{data}"
#define PH_ADAPTER "{adapter}"
#define DEFAULT_TEMPLATE "{adapter}/{data}"

int sb_cd_parse_data(uint64_t *out, const char *s)
{
    uint64_t v = 0;
    int base = 10, digits = 0;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        base = 16;
        s += 2;
    }
    for (; *s != '\0'; s++, digits++) {
        int d;
        if (*s >= '0' && *s <= '9')
            d = *s - '0';
        else if (base == 16 && *s >= 'a' && *s <= 'f')
            d = *s - 'a' + 10;
        else if (base == 16 && *s >= 'A' && *s <= 'F')
            d = *s - 'A' + 10;
        else
            return SB_EINVAL;
        if (v > (UINT64_MAX - (uint64_t)d) / (uint64_t)base)
            return SB_EINVAL; /* more than 64 bits */
        v = v * (uint64_t)base + (uint64_t)d;
    }
    if (digits == 0)
        return SB_EINVAL;
    *out = v;
    return 0;
}

/* One level of the template with {adapter} filled in ('/', '+', '#' of
 * the name become '_'). */
static char *expand_level(const char *s, size_t n, const char *adapter)
{
    size_t an = strlen(adapter), len = 0, cap = n + 1;
    const char *end = s + n;
    char *out;
    for (const char *p = s; p + strlen(PH_ADAPTER) <= end; p++)
        if (strncmp(p, PH_ADAPTER, strlen(PH_ADAPTER)) == 0)
            cap += an;
    if ((out = sb_malloc(cap)) == NULL)
        return NULL;
    while (s < end) {
        if (s + strlen(PH_ADAPTER) <= end && strncmp(s, PH_ADAPTER, strlen(PH_ADAPTER)) == 0) {
            for (size_t i = 0; i < an; i++) {
                char c = adapter[i];
                out[len++] = c == '/' || c == '+' || c == '#' ? '_' : c;
            }
            s += strlen(PH_ADAPTER);
        } else {
            out[len++] = *s++;
        }
    }
    out[len] = '\0';
    return out;
}

static int cmp_entry(const void *x, const void *y)
{
    const sb_cd_entry *a = x, *b = y;
    return a->data < b->data ? -1 : a->data > b->data;
}

int sb_cd_map_init(sb_cd_map *m, const char *tmpl, const char *adapter, const uint64_t *data,
                   const char *const *topics, size_t count, int strict, const char **why)
{
    const char *p = tmpl != NULL ? tmpl : DEFAULT_TEMPLATE;
    const char *dummy;

    if (why == NULL)
        why = &dummy;
    *why = NULL;
    memset(m, 0, sizeof(*m));
    m->data_level = -1;
    m->strict = strict;
    for (;;) {
        const char *end = strchr(p, '/');
        size_t n = end != NULL ? (size_t)(end - p) : strlen(p);
        char **nl = sb_realloc(m->levels, (m->nlevels + 1) * sizeof(*nl));
        if (nl == NULL)
            return SB_ENOMEM;
        m->levels = nl;
        if (n == strlen(PH_DATA) && strncmp(p, PH_DATA, n) == 0) {
            if (m->data_level >= 0) {
                *why = "{data} appears twice";
                return SB_EINVAL;
            }
            m->data_level = (int)m->nlevels;
            m->levels[m->nlevels] = NULL;
        } else {
            char *lv = expand_level(p, n, adapter);
            if (lv == NULL)
                return SB_ENOMEM;
            m->levels[m->nlevels] = lv;
            if (strstr(lv, PH_DATA) != NULL) {
                m->nlevels++;
                *why = "{data} must be a whole level";
                return SB_EINVAL;
            }
        }
        m->nlevels++;
        if (end == NULL)
            break;
        p = end + 1;
    }

    if (count > 0) {
        m->entries = sb_calloc(count, sizeof(*m->entries));
        if (m->entries == NULL)
            return SB_ENOMEM;
    }
    for (size_t i = 0; i < count; i++) {
        if (sb_topic_validate(topics[i], strlen(topics[i]), why) != 0)
            return SB_EINVAL;
        m->entries[i].data = data[i];
        if ((m->entries[i].topic = sb_strdup(topics[i])) == NULL)
            return SB_ENOMEM;
        m->count++;
    }
    if (m->count > 1)
        qsort(m->entries, m->count, sizeof(*m->entries), cmp_entry);
    for (size_t i = 1; i < m->count; i++) {
        if (m->entries[i].data == m->entries[i - 1].data) {
            *why = "a number is mapped twice";
            return SB_EINVAL;
        }
    }
    return 0;
}

void sb_cd_map_free(sb_cd_map *m)
{
    for (size_t i = 0; i < m->nlevels; i++)
        sb_free(m->levels[i]);
    sb_free(m->levels);
    for (size_t i = 0; i < m->count; i++)
        sb_free(m->entries[i].topic);
    sb_free(m->entries);
    memset(m, 0, sizeof(*m));
    m->data_level = -1;
}

static const sb_cd_entry *find(const sb_cd_map *m, uint64_t data)
{
    sb_cd_entry key;
    key.data = data;
    key.topic = NULL;
    if (m->count == 0)
        return NULL;
    return bsearch(&key, m->entries, m->count, sizeof(*m->entries), cmp_entry);
}

int sb_cd_map_topic(char **out, const sb_cd_map *m, uint64_t data)
{
    const sb_cd_entry *e = find(m, data);
    char num[24];
    size_t len = 0, n = 0;

    *out = NULL;
    if (e != NULL)
        return (*out = sb_strdup(e->topic)) != NULL ? 0 : SB_ENOMEM;
    if (m->strict)
        return SB_ENOTFOUND;
    snprintf(num, sizeof num, "%llu", (unsigned long long)data);
    for (size_t k = 0; k < m->nlevels; k++)
        n += strlen((int)k == m->data_level ? num : m->levels[k]) + 1;
    if ((*out = sb_malloc(n)) == NULL)
        return SB_ENOMEM;
    for (size_t k = 0; k < m->nlevels; k++) {
        const char *v = (int)k == m->data_level ? num : m->levels[k];
        size_t vn = strlen(v);
        if (k > 0)
            (*out)[len++] = '/';
        memcpy(*out + len, v, vn);
        len += vn;
    }
    (*out)[len] = '\0';
    return 0;
}

int sb_cd_map_data(uint64_t *out, const sb_cd_map *m, const char *topic)
{
    const char *p = topic, *dp = NULL;
    size_t dn = 0;
    char num[24];

    for (size_t i = 0; i < m->count; i++) {
        if (strcmp(m->entries[i].topic, topic) == 0) {
            *out = m->entries[i].data;
            return 0;
        }
    }
    if (m->data_level < 0)
        return SB_ENOTFOUND;
    for (size_t k = 0; k < m->nlevels; k++) {
        const char *end = strchr(p, '/');
        size_t n = end != NULL ? (size_t)(end - p) : strlen(p);
        if ((end == NULL) != (k + 1 == m->nlevels))
            return SB_ENOTFOUND; /* fewer or more levels */
        if ((int)k == m->data_level) {
            dp = p;
            dn = n;
        } else if (strlen(m->levels[k]) != n || strncmp(m->levels[k], p, n) != 0) {
            return SB_ENOTFOUND;
        }
        if (end != NULL)
            p = end + 1;
    }
    if (dn == 0 || dn >= sizeof num)
        return SB_ENOTFOUND;
    memcpy(num, dp, dn);
    num[dn] = '\0';
    return sb_cd_parse_data(out, num) == 0 ? 0 : SB_ENOTFOUND;
}
