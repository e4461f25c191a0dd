/* Clipboard format names, private-content markers, the owner filter and
 * the topic template (see clip_formats.h). */
#include "adapters/clipboard/clip_formats.h"
#include "service/alloc.h"

#include <string.h>

/* The numbers are those of winuser.h (this file is portable). */
static const sb_clip_std standard[] = {
    {"CF_TEXT", 1, SB_CLIP_ANSI},    {"CF_OEMTEXT", 7, SB_CLIP_OEM},
    {"CF_DIB", 8, SB_CLIP_BYTES},    {"CF_UNICODETEXT", 13, SB_CLIP_UTF16},
    {"CF_DIBV5", 17, SB_CLIP_BYTES},
};

static int lower(int c)
{
    return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

static int icase_eq(const char *a, const char *b)
{
    for (; *a != '\0' && *b != '\0'; a++, b++)
        if (lower((unsigned char)*a) != lower((unsigned char)*b))
            return 0;
    return *a == *b;
}

const sb_clip_std *sb_clip_std_by_name(const char *name)
{
    for (size_t i = 0; i < sizeof standard / sizeof standard[0]; i++)
        if (icase_eq(standard[i].name, name))
            return &standard[i];
    return NULL;
}

const sb_clip_std *sb_clip_std_by_id(unsigned id)
{
    for (size_t i = 0; i < sizeof standard / sizeof standard[0]; i++)
        if (standard[i].id == id)
            return &standard[i];
    return NULL;
}

const char *sb_clip_format_problem(const char *name)
{
    if (name[0] == '\0')
        return "empty";
    if (strlen(name) > 255)
        return "longer than 255 bytes (the most a format name holds)";
    if (sb_clip_std_by_name(name) != NULL)
        return NULL;
    if (strlen(name) > 3 && lower((unsigned char)name[0]) == 'c' &&
        lower((unsigned char)name[1]) == 'f' && name[2] == '_')
        return "not a standard format this adapter carries (CF_UNICODETEXT, CF_TEXT, "
               "CF_OEMTEXT, CF_DIB, CF_DIBV5; or a registered format's name)";
    if (name[0] == '#' || (name[0] >= '0' && name[0] <= '9'))
        return "a format number (name the format: its number differs between sessions)";
    return NULL;
}

const char *sb_clip_base_name(const char *path)
{
    const char *base = path;
    for (const char *p = path; *p != '\0'; p++)
        if (*p == '\\' || *p == '/')
            base = p + 1;
    return base;
}

int sb_clip_owner_allowed(const char *const *names, size_t count, const char *path)
{
    const char *base;
    if (count == 0)
        return 1;
    if (path == NULL)
        return 0;
    base = sb_clip_base_name(path);
    for (size_t i = 0; i < count; i++)
        if (icase_eq(names[i], base))
            return 1;
    return 0;
}

/* Appends s (sanitized: a value must not add levels or wildcards). */
static void put(char *out, size_t *len, const char *s, int sanitize)
{
    for (; *s != '\0'; s++)
        out[(*len)++] = sanitize && (*s == '/' || *s == '+' || *s == '#') ? '_' : *s;
}

char *sb_clip_topic(const char *tmpl, const char *adapter, const char *format)
{
    size_t cap = 1, len = 0;
    char *out;
    if (tmpl == NULL)
        tmpl = "{adapter}";
    for (const char *p = tmpl; *p != '\0'; p++)
        cap += 1 + (*p == '{' ? strlen(adapter) + strlen(format) : 0);
    if ((out = sb_malloc(cap)) == NULL)
        return NULL;
    for (const char *p = tmpl; *p != '\0';) {
        if (strncmp(p, "{adapter}", 9) == 0) {
            put(out, &len, adapter, 1);
            p += 9;
        } else if (strncmp(p, "{format}", 8) == 0) {
            put(out, &len, format, 1);
            p += 8;
        } else {
            out[len++] = *p++;
        }
    }
    out[len] = '\0';
    return out;
}
