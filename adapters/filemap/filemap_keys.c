/*
 * The settings of a filemap adapter, from its config (filemap_keys.h).
 *
 * TEMPORARY: the keys are fields of sb_adapter_config (the block marked
 * "filemap" in config/config.h and config/schema.c) until each adapter
 * type owns a key table (issue 8 part 2); then this file holds the table.
 */
#include "adapters/filemap/filemap_keys.h"

#include <string.h>

void sb_filemap_settings_get(const sb_adapter_config *cfg, sb_filemap_settings *out)
{
    unsigned mode = 0600;
    const char *why;
    memset(out, 0, sizeof(*out));
    out->ring = cfg->fm_ring;
    out->direction = cfg->fm_direction;
    out->capacity = cfg->fm_capacity;
    out->max_message = cfg->max_message;
    out->read_ahead = cfg->read_ahead;
    out->reclaim_ms = cfg->fm_reclaim_timeout_ms;
    out->ns = cfg->fm_namespace;
    out->security = cfg->security;
    if (cfg->fm_mode != NULL && sb_filemap_parse_mode(cfg->fm_mode, &mode, &why) != 0)
        mode = 0600; /* the config check refused it already */
    out->mode = mode;
    out->group = cfg->fm_group;
}

int sb_filemap_parse_mode(const char *s, unsigned *out, const char **why)
{
    unsigned v = 0;
    size_t n = strlen(s);
    if (n < 3 || n > 4) {
        *why = "must be octal permission bits such as 0600 or 0660";
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '7') {
            *why = "must be octal permission bits such as 0600 or 0660";
            return -1;
        }
        v = v * 8 + (unsigned)(s[i] - '0');
    }
    if (v > 0777) {
        *why = "only permission bits (no setuid, setgid or sticky bit)";
        return -1;
    }
    if (v & 0002) {
        *why = "must not let others write (every account of the machine could corrupt the ring)";
        return -1;
    }
    if ((v & 0600) != 0600) {
        *why = "the broker's own account needs read and write (0600)";
        return -1;
    }
    *out = v;
    return 0;
}

int sb_filemap_name_valid(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > 200)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}
