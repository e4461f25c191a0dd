/*
 * The clipboard adapter's portable pieces, unit-tested everywhere: the
 * clipboard formats it names (standard ones by their CF_ name, anything
 * else a registered format's name), the formats by which a program marks
 * its clipboard content private, the owner-program filter, and the topic
 * template ({adapter}, {format}).
 */
#ifndef SB_CLIP_FORMATS_H
#define SB_CLIP_FORMATS_H

#include <stddef.h>

/* How a format's data becomes a payload. */
enum {
    SB_CLIP_UTF16 = 1, /* CF_UNICODETEXT: UTF-16 text, to UTF-8 */
    SB_CLIP_ANSI,      /* CF_TEXT: text in the ANSI code page, to UTF-8 */
    SB_CLIP_OEM,       /* CF_OEMTEXT: text in the OEM code page, to UTF-8 */
    SB_CLIP_BYTES      /* CF_DIB, CF_DIBV5, a registered format: the bytes */
};

typedef struct sb_clip_std {
    const char *name; /* "CF_UNICODETEXT" */
    unsigned id;      /* its number (winuser.h) */
    int kind;         /* SB_CLIP_* */
} sb_clip_std;

/* The standard format called name (compared without case), or NULL: then
 * name is a registered format's (sb_clip_format_problem says whether it
 * can be one). */
const sb_clip_std *sb_clip_std_by_name(const char *name);

/* The standard format numbered id, or NULL. */
const sb_clip_std *sb_clip_std_by_id(unsigned id);

/* Why `name` cannot name a format, or NULL: empty, longer than 255 bytes,
 * a CF_ name that is not one of the standard formats this adapter reads
 * and writes (CF_BITMAP is a GDI handle, not data), or a number. */
const char *sb_clip_format_problem(const char *name);

/* The registered formats a program puts on the clipboard to keep its
 * content out of clipboard monitors and history (password managers):
 * present at all, or (CanIncludeInClipboardHistory) holding the DWORD 0. */
#define SB_CLIP_EXCLUDE "ExcludeClipboardContentFromMonitorProcessing"
#define SB_CLIP_HISTORY "CanIncludeInClipboardHistory"
#define SB_CLIP_VIEWER_IGNORE "Clipboard Viewer Ignore"

/* 1 if the program image `path` (a full path or a bare name; '\\' or '/'
 * separated) is one of names[0..count), compared by file name without
 * case (ASCII); 1 if count is 0 (no filter). */
int sb_clip_owner_allowed(const char *const *names, size_t count, const char *path);

/* The file name of path (after its last '\\' or '/'). */
const char *sb_clip_base_name(const char *path);

/* The topic of clipboard content in format `format`: tmpl (NULL:
 * "{adapter}") with {adapter} and {format} filled in, a '/', '+' or '#'
 * in them becoming '_'. New string (sb_free it), or NULL when out of
 * memory. */
char *sb_clip_topic(const char *tmpl, const char *adapter, const char *format);

#endif
