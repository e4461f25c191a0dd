/* DDE names <-> broker topics (see dde_map.h). */
#include "adapters/dde/dde_map.h"
#include "service/alloc.h"
#include "service/error.h"

#include <string.h>

#define PH_TOPIC "{dde_topic}"
#define PH_ITEM "{item}"
#define NAME_MAX_BYTES 255

const char *sb_dde_name_problem(const char *name)
{
    if (name[0] == '\0')
        return "empty";
    if (strlen(name) > NAME_MAX_BYTES)
        return "longer than 255 bytes (the most a DDE name holds)";
    if (strpbrk(name, "/+#") != NULL)
        return "contains '/', '+' or '#' (DDE names become topic levels)";
    return NULL;
}

/* Appends s[0..n) to the growing string *buf (length *len), turning the
 * level separator and wildcards of a constant into '_'. */
static int append(char **buf, size_t *len, const char *s, size_t n, int sanitize)
{
    char *nb = sb_realloc(*buf, *len + n + 1);
    if (nb == NULL)
        return SB_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        nb[*len + i] = sanitize && (c == '/' || c == '+' || c == '#') ? '_' : c;
    }
    *len += n;
    nb[*len] = '\0';
    *buf = nb;
    return 0;
}

/* One level of the template with {adapter} and {service} filled in. */
static char *expand_level(const char *s, size_t n, const char *adapter, const char *service)
{
    char *out = NULL;
    size_t len = 0;
    const char *end = s + n;
    if (append(&out, &len, "", 0, 0) != 0)
        return NULL;
    while (s < end) {
        const char *v = NULL;
        size_t skip = 1;
        if (strncmp(s, "{adapter}", 9) == 0 && s + 9 <= end) {
            v = adapter;
            skip = 9;
        } else if (strncmp(s, "{service}", 9) == 0 && s + 9 <= end) {
            v = service;
            skip = 9;
        }
        if (v != NULL ? append(&out, &len, v, strlen(v), 1) : append(&out, &len, s, 1, 0)) {
            sb_free(out);
            return NULL;
        }
        s += skip;
    }
    return out;
}

int sb_dde_map_init(sb_dde_map *m, const char *tmpl, const char *adapter, const char *service)
{
    const char *p = tmpl;
    memset(m, 0, sizeof(*m));
    m->topic_level = m->item_level = -1;
    for (;;) {
        const char *end = strchr(p, '/');
        size_t n = end != NULL ? (size_t)(end - p) : strlen(p);
        char **nl = sb_realloc(m->levels, (m->count + 1) * sizeof(*nl));
        int *slot = NULL;
        if (nl == NULL)
            return SB_ENOMEM;
        m->levels = nl;
        if (n == strlen(PH_TOPIC) && strncmp(p, PH_TOPIC, n) == 0)
            slot = &m->topic_level;
        else if (n == strlen(PH_ITEM) && strncmp(p, PH_ITEM, n) == 0)
            slot = &m->item_level;
        if (slot != NULL) {
            if (*slot >= 0)
                return SB_EINVAL;
            *slot = (int)m->count;
            m->levels[m->count] = NULL;
        } else {
            char *lv = expand_level(p, n, adapter, service);
            if (lv == NULL)
                return SB_ENOMEM;
            m->levels[m->count] = lv;
            if (strstr(lv, PH_TOPIC) != NULL || strstr(lv, PH_ITEM) != NULL) {
                m->count++;
                return SB_EINVAL; /* not a whole level */
            }
        }
        m->count++;
        if (end == NULL)
            break;
        p = end + 1;
    }
    return m->item_level >= 0 ? 0 : SB_EINVAL;
}

void sb_dde_map_free(sb_dde_map *m)
{
    for (size_t i = 0; i < m->count; i++)
        sb_free(m->levels[i]);
    sb_free(m->levels);
    memset(m, 0, sizeof(*m));
}

/* The template with the two variable levels set to t and i. */
static char *build(const sb_dde_map *m, const char *t, const char *i)
{
    char *out = NULL;
    size_t len = 0;
    if (append(&out, &len, "", 0, 0) != 0)
        return NULL;
    for (size_t k = 0; k < m->count; k++) {
        const char *v = (int)k == m->topic_level ? t : (int)k == m->item_level ? i : m->levels[k];
        if ((k > 0 && append(&out, &len, "/", 1, 0) != 0) ||
            append(&out, &len, v, strlen(v), 0) != 0) {
            sb_free(out);
            return NULL;
        }
    }
    return out;
}

int sb_dde_map_topic(char **out, const sb_dde_map *m, const char *dde_topic, const char *item)
{
    *out = NULL;
    if (sb_dde_name_problem(item) != NULL)
        return SB_EINVAL;
    if (m->topic_level >= 0 && (dde_topic == NULL || sb_dde_name_problem(dde_topic) != NULL))
        return SB_EINVAL;
    *out = build(m, dde_topic != NULL ? dde_topic : "", item);
    return *out != NULL ? 0 : SB_ENOMEM;
}

int sb_dde_map_match(const sb_dde_map *m, const char *topic, char **dde_topic, char **item)
{
    const char *p = topic;
    const char *tp = NULL, *ip = NULL;
    size_t tn = 0, in = 0;

    *dde_topic = *item = NULL;
    for (size_t k = 0; k < m->count; k++) {
        const char *end = strchr(p, '/');
        size_t n = end != NULL ? (size_t)(end - p) : strlen(p);
        if ((end == NULL) != (k + 1 == m->count))
            return SB_ENOTFOUND; /* fewer or more levels */
        if ((int)k == m->topic_level) {
            tp = p;
            tn = n;
        } else if ((int)k == m->item_level) {
            ip = p;
            in = n;
        } else if (strlen(m->levels[k]) != n || strncmp(m->levels[k], p, n) != 0) {
            return SB_ENOTFOUND;
        }
        if (end != NULL)
            p = end + 1;
    }
    if (in == 0 || (tp != NULL && tn == 0))
        return SB_ENOTFOUND; /* DDE names are never empty */
    *item = sb_strndup(ip, in);
    if (tp != NULL)
        *dde_topic = sb_strndup(tp, tn);
    if (*item == NULL || (tp != NULL && *dde_topic == NULL)) {
        sb_free(*item);
        sb_free(*dde_topic);
        *dde_topic = *item = NULL;
        return SB_ENOMEM;
    }
    return 0;
}

char *sb_dde_map_filter(const sb_dde_map *m, const char *dde_topic)
{
    if (dde_topic != NULL && sb_dde_name_problem(dde_topic) != NULL)
        return NULL;
    return build(m, dde_topic != NULL ? dde_topic : "+", "+");
}
