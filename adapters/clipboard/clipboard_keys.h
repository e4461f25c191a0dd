/*
 * The configuration of the clipboard adapter (`type: clipboard`): its
 * settings struct, filled by the loader from the key table in
 * clipboard_keys.c (portable, so check-config checks it everywhere), and
 * read by the implementation (win/clipboard.c).
 */
#ifndef SB_CLIPBOARD_KEYS_H
#define SB_CLIPBOARD_KEYS_H

#include "config/adapter_keys.h"

#include <stddef.h>
#include <stdint.h>

/* out: deliveries become the clipboard's content; in: the clipboard's
 * changes are published (opt-in: never by default); both. */
typedef enum { SB_CLIPBOARD_OUT = 0, SB_CLIPBOARD_IN, SB_CLIPBOARD_BOTH } sb_clipboard_direction;

typedef struct sb_clipboard_settings {
    int direction;  /* direction: out (default) | in | both */
    char **formats; /* in: formats published, in order; none: CF_UNICODETEXT */
    size_t formats_count;
    char *topic;         /* in: template of {adapter} {format}, default {adapter} */
    char **owner_filter; /* in: publish only what these programs (image names) put there */
    size_t owner_filter_count;
    int codepage;            /* CF_TEXT: the code page, default 0 (the system's ANSI code page) */
    int64_t max_message;     /* bytes, default 1MiB */
    int64_t busy_timeout_ms; /* how long a clipboard held by another program is retried, 2s */
} sb_clipboard_settings;

extern const sb_adapter_keys sb_clipboard_keys;

#endif
