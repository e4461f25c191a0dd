/*
 * The settings of type filemap (adapters/filemap: the shared-memory ring)
 * and its key table, sb_filemap_keys. Portable: check-config reads them on
 * every system.
 */
#ifndef SB_FILEMAP_KEYS_H
#define SB_FILEMAP_KEYS_H

#include "config/adapter_keys.h"

#include <stdint.h>

typedef enum { SB_FILEMAP_IN = 0, SB_FILEMAP_OUT } sb_filemap_direction;
typedef enum {
    SB_FILEMAP_NS_AUTO = 0, /* Global\ under the service, Local\ under `run` */
    SB_FILEMAP_NS_GLOBAL,
    SB_FILEMAP_NS_LOCAL
} sb_filemap_ns;

typedef struct sb_filemap_settings {
    char *ring;          /* ring: the object's name; NULL: switchboard-<adapter> */
    int direction;       /* direction: in (default: programs produce) | out */
    int64_t capacity;    /* capacity: bytes of the data area, default 1 MiB */
    int64_t max_message; /* max_message: the largest payload, default 64 KiB */
    int read_ahead;      /* read_ahead (in): records read ahead of their commits, 256 */
    int64_t reclaim_ms;  /* reclaim_timeout: an unfinished record is skipped after it */
    int ns;              /* namespace (Windows): auto | global | local */
    char *security;      /* security (Windows): SDDL of the mapping and its objects */
    char *mode_text;     /* mode (POSIX): octal permission bits, default "0600" */
    char *group;         /* group (POSIX): the object's group */
    unsigned mode;       /* mode_text parsed (by validate) */
} sb_filemap_settings;

extern const sb_adapter_keys sb_filemap_keys;

/* The settings of a filemap adapter's config (strings borrowed from cfg). */
void sb_filemap_settings_get(const sb_adapter_config *cfg, sb_filemap_settings *out);

/* Parses a `mode`: octal permission bits ("0660", "640") that let the
 * broker's account read and write and nobody else write. Returns 0, or -1
 * with *why set. */
int sb_filemap_parse_mode(const char *s, unsigned *out, const char **why);

/* 1 if name can be a ring's object name: 1..200 characters of
 * [A-Za-z0-9._-] (a POSIX shared memory name and a Windows object name). */
int sb_filemap_name_valid(const char *name);

#endif
