/*
 * The keys of type filemap (filemap_keys.h) and their checks: the ring's
 * object name, its POSIX mode (octal, nobody else may write), a capacity in
 * whole 8-byte words that holds the largest message, read_ahead only for an
 * in ring and inflight only for an out ring; and which instances can be a
 * route destination (out rings).
 */
#include "adapters/filemap/filemap_keys.h"

#include <stdio.h>
#include <string.h>

#define F(m) offsetof(sb_filemap_settings, m)

static const char *const directions[] = {"in", "out", NULL};
static const char *const namespaces[] = {"auto", "global", "local", NULL};

static const sb_config_key filemap_rows[] = {
    {.key = "ring", .kind = SB_KEY_STRING, .offset = F(ring)},
    {.key = "direction",
     .kind = SB_KEY_ENUM,
     .offset = F(direction),
     .def = SB_FILEMAP_IN,
     .choices = directions},
    {.key = "capacity",
     .kind = SB_KEY_SIZE,
     .offset = F(capacity),
     .def = 1048576,
     .min = 4096,
     .max = 1073741824},
    {.key = "max_message",
     .kind = SB_KEY_SIZE,
     .offset = F(max_message),
     .def = 65536,
     .min = 1,
     .max = 67108864},
    {.key = "read_ahead",
     .kind = SB_KEY_INT,
     .offset = F(read_ahead),
     .def = 256,
     .min = 1,
     .max = 65536},
    {.key = "reclaim_timeout",
     .kind = SB_KEY_DURATION,
     .offset = F(reclaim_ms),
     .def = 5 * SB_SECONDS,
     .min = 10,
     .max = SB_HOURS},
    {.key = "namespace",
     .kind = SB_KEY_ENUM,
     .offset = F(ns),
     .def = SB_FILEMAP_NS_AUTO,
     .choices = namespaces},
    {.key = "security", .kind = SB_KEY_STRING, .offset = F(security)},
    {.key = "mode", .kind = SB_KEY_STRING, .offset = F(mode_text), .def_str = "0600"},
    {.key = "group", .kind = SB_KEY_STRING, .offset = F(group)},
    SB_ADAPTER_KEY_INFLIGHT,
};

static void filemap_validate(sb_adapter_check *chk, sb_adapter_config *cfg)
{
    sb_filemap_settings *s = SB_SETTINGS(sb_filemap_settings, cfg);
    const char *why;
    char q[96];

    if (sb_adapter_check_seen(chk, &s->ring) == SB_SEEN_OK && !sb_filemap_name_valid(s->ring))
        sb_adapter_error_at_value(chk, &s->ring,
                                  "%s: a ring's name is 1 to 200 characters of A-Z a-z 0-9 . _ -",
                                  sb_config_quote(q, sizeof q, s->ring));
    s->mode = 0600;
    if (sb_adapter_check_seen(chk, &s->mode_text) == SB_SEEN_OK &&
        sb_filemap_parse_mode(s->mode_text, &s->mode, &why) != 0) {
        s->mode = 0600;
        sb_adapter_error_at_value(chk, &s->mode_text, "%s: %s",
                                  sb_config_quote(q, sizeof q, s->mode_text), why);
    }
    if (sb_adapter_check_seen(chk, &s->capacity) == SB_SEEN_OK && s->capacity % 8 != 0)
        sb_adapter_error_at_value(chk, &s->capacity, "must be a multiple of 8 bytes");
    else if (sb_adapter_check_seen(chk, &s->max_message) == SB_SEEN_NO &&
             s->max_message > s->capacity - 128)
        s->max_message = s->capacity - 128; /* the default: 64 KiB, or what the ring holds */
    else if (sb_adapter_check_seen(chk, &s->capacity) != SB_SEEN_BAD &&
             sb_adapter_check_seen(chk, &s->max_message) == SB_SEEN_OK &&
             s->max_message > s->capacity - 128)
        sb_adapter_error_at_value(chk, &s->max_message,
                                  "the ring (capacity %lld bytes) must hold a record of "
                                  "max_message (%lld bytes) with its topic",
                                  (long long)s->capacity, (long long)s->max_message);
    if (s->direction == SB_FILEMAP_OUT && sb_adapter_check_seen(chk, &s->read_ahead))
        sb_adapter_error_at_key(chk, &s->read_ahead, "only for direction in");
    if (s->direction == SB_FILEMAP_IN && sb_adapter_check_seen(chk, &cfg->inflight))
        sb_adapter_error_at_key(chk, &cfg->inflight,
                                "only for direction out (an in ring is never a destination)");
    sb_adapter_check_sddl(chk, &s->security);
}

static int filemap_destination(const sb_adapter_config *cfg, char *why, size_t n)
{
    if (SB_SETTINGS(const sb_filemap_settings, cfg)->direction == SB_FILEMAP_OUT)
        return 1;
    snprintf(why, n,
             "adapter %s (type filemap, direction in) cannot be a destination: programs write "
             "its ring; a ring the broker writes has direction: out",
             cfg->name);
    return 0;
}

const sb_adapter_keys sb_filemap_keys = {
    .version = SB_ADAPTER_KEYS_VERSION,
    .type = "filemap",
    .table = SB_CONFIG_TABLE(filemap_rows),
    .settings_size = sizeof(sb_filemap_settings),
    .validate = filemap_validate,
    .destination = filemap_destination,
};

void sb_filemap_settings_get(const sb_adapter_config *cfg, sb_filemap_settings *out)
{
    *out = *SB_SETTINGS(const sb_filemap_settings, cfg);
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
