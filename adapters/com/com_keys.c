/* The keys of type com (com_keys.h) and their checks. */
#include "adapters/com/com_keys.h"

#include <stdio.h>
#include <string.h>

#define C(m) offsetof(sb_com_settings, m)
#define PIPE_PATH_MAX 256 /* the longest pipe path Windows accepts */

static const sb_config_key com_rows[] = {
    {.key = "endpoint", .kind = SB_KEY_STRING, .offset = C(endpoint),
     .def_str = "switchboard-com"},
    {.key = "security", .kind = SB_KEY_STRING, .offset = C(security)},
    {.key = "max_message", .kind = SB_KEY_SIZE, .offset = C(max_message),
     .def = 16 * 1024 * 1024, .min = 1, .max = 67108864},
    {.key = "max_connections", .kind = SB_KEY_INT, .offset = C(max_connections), .def = 256,
     .min = 1, .max = 100000},
};

static int prefix_ci(const char *s, const char *prefix)
{
    for (; *prefix != '\0'; s++, prefix++) {
        char a = *s >= 'A' && *s <= 'Z' ? (char)(*s + 32) : *s;
        if (a != *prefix)
            return 0;
    }
    return 1;
}

static void com_validate(sb_adapter_check *chk, sb_adapter_config *cfg)
{
    sb_com_settings *s = SB_SETTINGS(sb_com_settings, cfg);
    if (sb_adapter_check_seen(chk, &s->endpoint) == SB_SEEN_OK) {
        const char *leaf = prefix_ci(s->endpoint, "\\\\.\\pipe\\") ? s->endpoint + 9 : s->endpoint;
        if (*leaf == '\0' || strchr(leaf, '\\') != NULL)
            sb_adapter_error_at_value(chk, &s->endpoint,
                                      "a local pipe name (NAME or \\\\.\\pipe\\NAME) without "
                                      "another backslash");
        else if (strlen(leaf) + 9 > PIPE_PATH_MAX)
            sb_adapter_error_at_value(chk, &s->endpoint, "longer than %d characters",
                                      PIPE_PATH_MAX);
    }
    sb_adapter_check_sddl(chk, &s->security);
}

static int com_destination(const sb_adapter_config *cfg, char *why, size_t n)
{
    snprintf(why, n,
             "adapter %s (type com) cannot be a destination: COM clients subscribe for "
             "themselves (Broker.Subscribe)",
             cfg->name);
    return 0;
}

const sb_adapter_keys sb_com_keys = {
    .version = SB_ADAPTER_KEYS_VERSION,
    .type = "com",
    .table = SB_CONFIG_TABLE(com_rows),
    .settings_size = sizeof(sb_com_settings),
    .validate = com_validate,
    .destination = com_destination,
};
