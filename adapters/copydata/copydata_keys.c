/* The keys of type copydata (see copydata_keys.h). Portable. */
#include "adapters/copydata/copydata_keys.h"
#include "adapters/copydata/cd_map.h"
#include "service/alloc.h"
#include "service/error.h"
#include "service/topic.h"

#include <stdio.h>
#include <string.h>

#define S(m) offsetof(sb_copydata_settings, m)

static const char *const directions[] = {"in", "out", NULL};
static const char *const encodings[] = {"bytes", "utf-8", "ansi", "utf-16", NULL};
_Static_assert(SB_COPYDATA_IN == 0 && SB_COPYDATA_OUT == 1, "directions follows the enum");
_Static_assert(SB_COPYDATA_BYTES == 0 && SB_COPYDATA_UTF8 == 1 && SB_COPYDATA_ANSI == 2 &&
                   SB_COPYDATA_UTF16 == 3,
               "encodings follows the enum");

#define ONLY_IN "only for direction: in (the window the broker receives on)"
#define ONLY_OUT "only for direction: out (the broker sends to another program's window)"

static const sb_config_key copydata_rows[] = {
    {.key = "direction",
     .kind = SB_KEY_ENUM,
     .offset = S(direction),
     .def = SB_COPYDATA_IN,
     .choices = directions},
    {.key = "class", .kind = SB_KEY_STRING, .offset = S(window_class)},
    {.key = "title", .kind = SB_KEY_STRING, .offset = S(title)},
    {.key = "topic",
     .kind = SB_KEY_STRING,
     .offset = S(topic),
     .def_str = SB_COPYDATA_DEFAULT_TOPIC},
    {.key = "data_map",
     .kind = SB_KEY_STRLIST,
     .offset = S(data_map),
     .count_off = S(data_map_count)},
    {.key = "strict",
     .kind = SB_KEY_BOOL,
     .roles = SB_ROLE_SERVER,
     .why = ONLY_IN,
     .offset = S(strict),
     .def = 0},
    {.key = "allow_lower_integrity",
     .kind = SB_KEY_BOOL,
     .roles = SB_ROLE_SERVER,
     .why = ONLY_IN,
     .offset = S(allow_lower_integrity),
     .def = 0},
    {.key = "dwdata",
     .kind = SB_KEY_STRING,
     .roles = SB_ROLE_CLIENT,
     .why = ONLY_OUT,
     .offset = S(dwdata),
     .def_str = "0"},
    {.key = "send_timeout",
     .kind = SB_KEY_DURATION,
     .roles = SB_ROLE_CLIENT,
     .why = ONLY_OUT,
     .offset = S(send_timeout_ms),
     .def = 5 * SB_SECONDS,
     .min = 1,
     .max = 5 * SB_MINUTES},
    {.key = "encoding",
     .kind = SB_KEY_ENUM,
     .offset = S(encoding),
     .def = SB_COPYDATA_BYTES,
     .choices = encodings},
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
    {.key = "reconnect_backoff",
     .kind = SB_KEY_DURATION,
     .roles = SB_ROLE_CLIENT,
     .why = ONLY_OUT,
     .offset = S(reconnect_backoff_ms),
     .def = 500,
     .min = 1,
     .max = SB_HOURS},
    {.key = "reconnect_max_backoff",
     .kind = SB_KEY_DURATION,
     .roles = SB_ROLE_CLIENT,
     .why = ONLY_OUT,
     .offset = S(reconnect_max_backoff_ms),
     .def = 30 * SB_SECONDS,
     .min = 1,
     .max = SB_HOURS},
    SB_ADAPTER_KEY_INFLIGHT,
};

int sb_copydata_map_entry(uint64_t *data, char **topic, const char *s, const char **why)
{
    const char *eq = strchr(s, '='), *t;
    char num[32];
    size_t n;

    *topic = NULL;
    if (eq == NULL) {
        *why = "must be NUMBER=topic (e.g. 1=orders/new)";
        return SB_EINVAL;
    }
    while (*s == ' ')
        s++;
    n = (size_t)(eq - s);
    while (n > 0 && s[n - 1] == ' ')
        n--;
    if (n == 0 || n >= sizeof num) {
        *why = "must be NUMBER=topic (e.g. 1=orders/new)";
        return SB_EINVAL;
    }
    memcpy(num, s, n);
    num[n] = '\0';
    if (sb_cd_parse_data(data, num) != 0) {
        *why = "the number must be decimal or 0x hex, at most 2^64 - 1";
        return SB_EINVAL;
    }
    for (t = eq + 1; *t == ' '; t++)
        ;
    n = strlen(t);
    while (n > 0 && t[n - 1] == ' ')
        n--;
    if (sb_topic_validate(t, n, why) != 0)
        return SB_EINVAL;
    if (t[0] == '$') {
        *why = "topics starting with '$' are the broker's own";
        return SB_EINVAL;
    }
    *topic = sb_strndup(t, n);
    return *topic != NULL ? 0 : SB_ENOMEM;
}

static unsigned copydata_role(const sb_adapter_config *cfg)
{
    const sb_copydata_settings *s = SB_SETTINGS(const sb_copydata_settings, cfg);
    return s->direction == SB_COPYDATA_IN ? SB_ROLE_SERVER : SB_ROLE_CLIENT;
}

static void copydata_validate(sb_adapter_check *chk, sb_adapter_config *cfg)
{
    static const char *const ph[] = {"{adapter}", "{data}", NULL};
    sb_copydata_settings *s = SB_SETTINGS(sb_copydata_settings, cfg);
    const int in = s->direction == SB_COPYDATA_IN;
    uint64_t *data = NULL;
    char **topics = NULL;
    size_t ok = 0;
    sb_cd_map m;
    uint64_t v;
    const char *why = NULL;

    if (!in && s->window_class == NULL && s->title == NULL)
        sb_adapter_error_at(chk, "class",
                            "direction out needs the class or the title (or both) of the window "
                            "to send to");
    if (in && s->window_class == NULL)
        (void)sb_adapter_check_set_string(chk, &s->window_class, SB_COPYDATA_DEFAULT_CLASS);
    if (in && s->title == NULL)
        (void)sb_adapter_check_set_string(chk, &s->title, cfg->name);
    if (s->window_class != NULL && strlen(s->window_class) > 255)
        sb_adapter_error_at_value(chk, &s->window_class, "longer than 255 bytes");
    if (s->dwdata != NULL && sb_adapter_check_seen(chk, &s->dwdata) == SB_SEEN_OK &&
        sb_cd_parse_data(&v, s->dwdata) != 0)
        sb_adapter_error_at_value(chk, &s->dwdata,
                                  "must be a number, decimal or 0x hex, at most 2^64 - 1");
    if (s->codepage != 0 && s->encoding != SB_COPYDATA_ANSI)
        sb_adapter_error_at_key(chk, &s->codepage, "only for encoding: ansi");
    sb_adapter_check_backoff(chk, &s->reconnect_backoff_ms, "reconnect_backoff",
                             &s->reconnect_max_backoff_ms, "reconnect_max_backoff");

    /* data_map entries, then the whole map with the template */
    if (s->data_map_count > 0) {
        data = sb_calloc(s->data_map_count, sizeof(*data));
        topics = sb_calloc(s->data_map_count, sizeof(*topics));
    }
    for (size_t i = 0; i < s->data_map_count && data != NULL && topics != NULL; i++) {
        if (sb_copydata_map_entry(&data[ok], &topics[ok], s->data_map[i], &why) != 0) {
            sb_adapter_error_at_element(chk, &s->data_map, i, "%s",
                                        why != NULL ? why : "out of memory");
            continue;
        }
        for (size_t k = 0; k < ok; k++)
            if (data[k] == data[ok])
                sb_adapter_error_at_element(chk, &s->data_map, i, "number %llu is mapped already",
                                            (unsigned long long)data[ok]);
        ok++;
    }
    if (in && s->strict && s->data_map_count == 0)
        sb_adapter_error_at_key(chk, &s->strict,
                                "strict refuses every dwData that data_map does not name: "
                                "give data_map");
    if (sb_adapter_check_topic(chk, &s->topic, ph, "{adapter} {data}") == 0) {
        int rc = sb_cd_map_init(&m, s->topic, cfg->name, NULL, NULL, 0, 0, &why);
        if (rc == SB_EINVAL)
            sb_adapter_error_at_value(chk, &s->topic, "%s", why);
        sb_cd_map_free(&m);
    }
    for (size_t k = 0; k < ok; k++)
        sb_free(topics[k]);
    sb_free(topics);
    sb_free(data);
}

static int copydata_destination(const sb_adapter_config *cfg, char *why, size_t n)
{
    if (SB_SETTINGS(const sb_copydata_settings, cfg)->direction == SB_COPYDATA_OUT)
        return 1;
    snprintf(why, n,
             "adapter %s (type copydata, direction in) cannot be a destination: set direction: "
             "out to send to a window",
             cfg->name);
    return 0;
}

const sb_adapter_keys sb_copydata_keys = {
    .version = SB_ADAPTER_KEYS_VERSION,
    .type = "copydata",
    .table = SB_CONFIG_TABLE(copydata_rows),
    .settings_size = sizeof(sb_copydata_settings),
    .role_of = copydata_role,
    .validate = copydata_validate,
    .destination = copydata_destination,
};
