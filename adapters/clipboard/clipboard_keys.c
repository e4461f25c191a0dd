/* The keys of type clipboard (see clipboard_keys.h). Portable. */
#include "adapters/clipboard/clipboard_keys.h"
#include "adapters/clipboard/clip_formats.h"

#include <stdio.h>
#include <string.h>

#define S(m) offsetof(sb_clipboard_settings, m)

static const char *const directions[] = {"out", "in", "both", NULL};
_Static_assert(SB_CLIPBOARD_OUT == 0 && SB_CLIPBOARD_IN == 1 && SB_CLIPBOARD_BOTH == 2,
               "directions follows the enum");

static const sb_config_key clipboard_rows[] = {
    {.key = "direction",
     .kind = SB_KEY_ENUM,
     .offset = S(direction),
     .def = SB_CLIPBOARD_OUT,
     .choices = directions},
    {.key = "formats", .kind = SB_KEY_STRLIST, .offset = S(formats), .count_off = S(formats_count)},
    {.key = "topic", .kind = SB_KEY_STRING, .offset = S(topic), .def_str = "{adapter}"},
    {.key = "owner_filter",
     .kind = SB_KEY_STRLIST,
     .offset = S(owner_filter),
     .count_off = S(owner_filter_count)},
    {.key = "codepage",
     .kind = SB_KEY_INT,
     .offset = S(codepage),
     .def = 0,
     .min = 0,
     .max = 65535},
    {.key = "max_message",
     .kind = SB_KEY_SIZE,
     .offset = S(max_message),
     .def = 1048576,
     .min = 1,
     .max = 67108864},
    {.key = "busy_timeout",
     .kind = SB_KEY_DURATION,
     .offset = S(busy_timeout_ms),
     .def = 2 * SB_SECONDS,
     .min = 1,
     .max = SB_MINUTES},
    SB_ADAPTER_KEY_INFLIGHT,
};

static void clipboard_validate(sb_adapter_check *chk, sb_adapter_config *cfg)
{
    static const char *const ph[] = {"{adapter}", "{format}", NULL};
    sb_clipboard_settings *s = SB_SETTINGS(sb_clipboard_settings, cfg);
    const int in = s->direction != SB_CLIPBOARD_OUT;

    for (size_t i = 0; i < s->formats_count; i++) {
        const char *why = sb_clip_format_problem(s->formats[i]);
        if (why != NULL)
            sb_adapter_error_at_element(chk, &s->formats, i, "%s", why);
        for (size_t k = 0; k < i && why == NULL; k++)
            if (strcmp(s->formats[k], s->formats[i]) == 0)
                sb_adapter_error_at_element(chk, &s->formats, i, "listed twice");
    }
    for (size_t i = 0; i < s->owner_filter_count; i++)
        if (strpbrk(s->owner_filter[i], "\\/") != NULL)
            sb_adapter_error_at_element(chk, &s->owner_filter, i,
                                        "a program's file name (notepad.exe), not a path");
    if (!in) {
        if (sb_adapter_check_seen(chk, &s->formats) != SB_SEEN_NO)
            sb_adapter_error_at_key(chk, &s->formats,
                                    "only for direction in or both: a delivery names its "
                                    "format in its clipboard-format header");
        if (sb_adapter_check_seen(chk, &s->owner_filter) != SB_SEEN_NO)
            sb_adapter_error_at_key(chk, &s->owner_filter, "only for direction in or both");
        if (sb_adapter_check_seen(chk, &s->topic) != SB_SEEN_NO)
            sb_adapter_error_at_key(chk, &s->topic,
                                    "only for direction in or both (a route chooses what is "
                                    "delivered)");
    }
    (void)sb_adapter_check_topic(chk, &s->topic, ph, "{adapter} {format}");
}

static int clipboard_destination(const sb_adapter_config *cfg, char *why, size_t n)
{
    if (SB_SETTINGS(const sb_clipboard_settings, cfg)->direction != SB_CLIPBOARD_IN)
        return 1;
    snprintf(why, n,
             "adapter %s (type clipboard, direction in) cannot be a destination: set direction: "
             "out or both",
             cfg->name);
    return 0;
}

const sb_adapter_keys sb_clipboard_keys = {
    .version = SB_ADAPTER_KEYS_VERSION,
    .type = "clipboard",
    .table = SB_CONFIG_TABLE(clipboard_rows),
    .settings_size = sizeof(sb_clipboard_settings),
    .validate = clipboard_validate,
    .destination = clipboard_destination,
};
