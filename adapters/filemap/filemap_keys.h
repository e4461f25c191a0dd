/*
 * The settings of a filemap adapter (adapters/filemap): the keys its config
 * takes and their defaults. Portable (check-config reads them on Linux for a
 * Windows config too).
 */
#ifndef SB_FILEMAP_KEYS_H
#define SB_FILEMAP_KEYS_H

#include "config/config.h"

#include <stdint.h>

typedef enum { SB_FILEMAP_IN = 0, SB_FILEMAP_OUT } sb_filemap_direction;
typedef enum {
    SB_FILEMAP_NS_AUTO = 0, /* Global\ under the service, Local\ under `run` */
    SB_FILEMAP_NS_GLOBAL,
    SB_FILEMAP_NS_LOCAL
} sb_filemap_ns;

typedef struct sb_filemap_settings {
    const char *ring;     /* ring: the object's name; NULL: switchboard-<adapter> */
    int direction;        /* direction: in (default: programs produce) | out */
    int64_t capacity;     /* capacity: bytes of the data area, default 1 MiB */
    int64_t max_message;  /* max_message: the largest payload, default 1 MiB */
    int read_ahead;       /* read_ahead (in): records read ahead of their commits */
    int64_t reclaim_ms;   /* reclaim_timeout: an unfinished record is skipped after it */
    int ns;               /* namespace (Windows): auto | global | local */
    const char *security; /* security (Windows): SDDL of the mapping and its objects */
    unsigned mode;        /* mode (POSIX): permission bits, default 0600 */
    const char *group;    /* group (POSIX): the object's group */
} sb_filemap_settings;

/* The settings of a filemap adapter's config (strings borrowed from cfg). */
void sb_filemap_settings_get(const sb_adapter_config *cfg, sb_filemap_settings *out);

/* Parses a `mode`: octal permission bits ("0660", "640"), of which others
 * may not write. Returns 0, or -1 with *why set. */
int sb_filemap_parse_mode(const char *s, unsigned *out, const char **why);

/* 1 if name can be a ring's object name: 1..200 characters of
 * [A-Za-z0-9._-] (a POSIX shared memory name and a Windows object name). */
int sb_filemap_name_valid(const char *name);

#endif
