/*
 * The keys of type dde (adapters/dde/dde_keys.h) and their checks: which
 * role takes which key, DDE names, and a topic template that maps (DDE
 * topic, item) to broker topics and back. Portable: check-config checks
 * DDE configurations on every platform; whether a code page is installed
 * only the Windows adapter can tell (dde/win/dde.c, at start).
 */
#include "adapters/dde/dde_keys.h"
#include "service/topic.h"

#include <stdio.h>
#include <string.h>

#define DDE_NAME_MAX 255 /* a DDE string handle holds at most 255 characters */

static const char *const protocols[] = {"raw", "jsonl", "mqtt", NULL};
static const char *const framings[] = {"line", "length", "datagram", "message", NULL};
static const char *const roles[] = {"server", "client", NULL};
_Static_assert(SB_DDE_SERVER == 0 && SB_DDE_CLIENT == 1, "roles follows sb_dde_role");

#define D(m) offsetof(sb_dde_settings, m)

static const sb_config_key dde_rows[] = {
    {.key = "protocol",
     .kind = SB_KEY_CHOICE,
     .offset = D(protocol),
     .def_str = "raw",
     .choices = protocols},
    {.key = "framing", .kind = SB_KEY_CHOICE, .offset = D(framing), .choices = framings},
    {.key = "topic", .kind = SB_KEY_STRING, .offset = D(topic), .def_str = SB_DDE_DEFAULT_TOPIC},
    {.key = "max_message",
     .kind = SB_KEY_SIZE,
     .offset = D(max_message),
     .def = 1048576,
     .min = 1,
     .max = 67108864},
    {.key = "reconnect_backoff",
     .kind = SB_KEY_DURATION,
     .roles = SB_ROLE_CLIENT,
     .offset = D(reconnect_backoff_ms),
     .def = 500,
     .min = 1,
     .max = SB_DAYS},
    {.key = "reconnect_max_backoff",
     .kind = SB_KEY_DURATION,
     .roles = SB_ROLE_CLIENT,
     .offset = D(reconnect_max_backoff_ms),
     .def = 30 * SB_SECONDS,
     .min = 1,
     .max = SB_DAYS},
    SB_ADAPTER_KEY_INFLIGHT,
    {.key = "role",
     .kind = SB_KEY_ENUM,
     .offset = D(dde_role),
     .def = SB_DDE_SERVER,
     .choices = roles},
    {.key = "service", .kind = SB_KEY_STRING, .offset = D(dde_service), .def_str = "SWITCHBOARD"},
    {.key = "dde_topics",
     .kind = SB_KEY_STRLIST,
     .roles = SB_ROLE_SERVER,
     .why = "only for role server (a client connects to one dde_topic)",
     .offset = D(dde_topics),
     .count_off = D(dde_topics_count)},
    {.key = "dde_topic",
     .kind = SB_KEY_STRING,
     .roles = SB_ROLE_CLIENT,
     .why = "only for role client (a server serves dde_topics)",
     .offset = D(dde_topic)},
    {.key = "items",
     .kind = SB_KEY_STRLIST,
     .offset = D(dde_items),
     .count_off = D(dde_items_count)},
    {.key = "execute_topic", .kind = SB_KEY_STRING, .offset = D(dde_execute_topic)},
    {.key = "codepage",
     .kind = SB_KEY_INT,
     .offset = D(dde_codepage),
     .def = 0,
     .min = 0,
     .max = 65535},
};

static unsigned dde_role_of(const sb_adapter_config *cfg)
{
    return SB_DDE_CFG(cfg)->dde_role == SB_DDE_SERVER ? SB_ROLE_SERVER : SB_ROLE_CLIENT;
}

/* Why a DDE service, topic or item name cannot be used, or NULL. Names
 * become topic levels, so they cannot hold the level separator or the
 * wildcards. */
static const char *dde_name_problem(const char *s)
{
    if (strlen(s) > DDE_NAME_MAX)
        return "longer than 255 bytes (the most a DDE name holds)";
    if (strpbrk(s, "/+#") != NULL)
        return "contains '/', '+' or '#' (DDE names become topic levels)";
    return NULL;
}

/* Checks each name of the list (or the one string) stored at value. */
static void check_names(sb_adapter_check *chk, const void *value, char *const *names, size_t count,
                        int star_ok)
{
    char q[96];
    if (sb_adapter_check_seen(chk, value) != SB_SEEN_OK)
        return;
    for (size_t i = 0; i < count; i++) {
        const char *why = dde_name_problem(names[i]);
        if (strcmp(names[i], "*") == 0 && star_ok) {
            if (count > 1)
                sb_adapter_error_at_element(chk, value, i,
                                            "'*' (any topic) cannot be listed with other topics");
            continue;
        }
        if (why != NULL)
            sb_adapter_error_at_element(chk, value, i, "invalid DDE name %s: %s",
                                        sb_config_quote(q, sizeof q, names[i]), why);
    }
}

/* Where placeholder ph is in the template's levels: its level index, -1 if
 * absent, -2 if it is not a whole level, -3 if it appears twice. */
static int template_level(const char *topic, const char *ph)
{
    const char *p = topic;
    int level = 0, found = -1;
    size_t n = strlen(ph);
    for (;;) {
        const char *end = strchr(p, '/');
        size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
        const char *hit = strstr(p, ph);
        if (hit != NULL && hit < p + len) {
            if (found != -1)
                return -3;
            if (len != n)
                return -2;
            found = level;
            if (strstr(hit + n, ph) != NULL)
                return -3;
        }
        if (end == NULL)
            return found;
        p = end + 1;
        level++;
    }
}

/* The template: {dde_topic} and {item} are whole levels, at most once each;
 * {item} is required, and so is {dde_topic} for a server that serves more
 * than one DDE topic. */
static void check_template(sb_adapter_check *chk, const sb_dde_settings *a)
{
    static const char *const placeholders[] = {"{adapter}", "{service}", "{dde_topic}", "{item}",
                                               NULL};
    int server = a->dde_role == SB_DDE_SERVER;
    if (sb_adapter_check_seen(chk, &a->topic) != SB_SEEN_OK ||
        sb_adapter_check_topic(chk, &a->topic, placeholders,
                               "{adapter}, {service}, {dde_topic}, {item}") != 0)
        return;
    for (int i = 0; i < 2; i++) {
        const char *ph = i == 0 ? "{dde_topic}" : "{item}";
        int level = template_level(a->topic, ph);
        if (level == -2)
            sb_adapter_error_at_value(
                chk, &a->topic, "%s must be a whole topic level, as in plant/{dde_topic}/{item}",
                ph);
        else if (level == -3)
            sb_adapter_error_at_value(chk, &a->topic, "%s may appear only once", ph);
        else if (level == -1 && i == 1)
            sb_adapter_error_at_value(chk, &a->topic,
                                      "needs {item}: every DDE item has a topic of its own");
        else if (level == -1 && server &&
                 (a->dde_topics_count != 1 || strcmp(a->dde_topics[0], "*") == 0))
            sb_adapter_error_at_value(
                chk, &a->topic,
                "needs {dde_topic}: this server serves more than one DDE topic "
                "(set dde_topics to one topic, or put {dde_topic} in the template)");
    }
}

static void dde_validate(sb_adapter_check *chk, sb_adapter_config *cfg)
{
    sb_dde_settings *a = SB_SETTINGS(sb_dde_settings, cfg);
    const char *why = NULL;
    char q[96];

    if (strcmp(a->protocol, "mqtt") == 0)
        sb_adapter_error_at_value(chk, &a->protocol,
                                  "mqtt is served on listeners (tcp listen, unix or pipe path); "
                                  "the broker is not an MQTT client");
    else if (strcmp(a->protocol, "jsonl") == 0)
        sb_adapter_error_at_value(chk, &a->protocol,
                                  "jsonl needs a stream adapter (tcp, unix, pipe or exec), not dde");
    if (a->dde_role == SB_DDE_CLIENT && sb_adapter_check_seen(chk, &a->dde_topic) == SB_SEEN_NO)
        sb_adapter_error_at(chk, "dde_topic", "required for role client");
    sb_adapter_error_at_key(chk, &a->framing,
                            "not used by type dde (a DDE transaction is one message)");

    check_names(chk, &a->dde_service, &a->dde_service, 1, 0);
    if (a->dde_topic != NULL)
        check_names(chk, &a->dde_topic, &a->dde_topic, 1, 0);
    check_names(chk, &a->dde_topics, a->dde_topics, a->dde_topics_count, 1);
    check_names(chk, &a->dde_items, a->dde_items, a->dde_items_count, 0);
    if (sb_adapter_check_seen(chk, &a->dde_execute_topic) == SB_SEEN_OK &&
        (a->dde_execute_topic[0] == '$' ||
         sb_topic_validate(a->dde_execute_topic, strlen(a->dde_execute_topic), &why) != 0))
        sb_adapter_error_at_value(chk, &a->dde_execute_topic, "invalid topic %s: %s",
                                  sb_config_quote(q, sizeof q, a->dde_execute_topic),
                                  why != NULL ? why : "'$' is reserved for the broker");
    sb_adapter_check_backoff(chk, &a->reconnect_backoff_ms, "reconnect_backoff",
                             &a->reconnect_max_backoff_ms, "reconnect_max_backoff");
    check_template(chk, a);
}

static int dde_destination(const sb_adapter_config *cfg, char *why, size_t n)
{
    if (SB_DDE_CFG(cfg)->dde_role == SB_DDE_CLIENT)
        return 1;
    snprintf(why, n,
             "adapter %s (type dde, protocol raw) cannot be a destination (it only receives: "
             "give it `connect` to send)",
             cfg->name);
    return 0;
}

const sb_adapter_keys sb_dde_keys = {
    .version = SB_ADAPTER_KEYS_VERSION,
    .type = "dde",
    .table = SB_CONFIG_TABLE(dde_rows),
    .settings_size = sizeof(sb_dde_settings),
    .role_of = dde_role_of,
    .validate = dde_validate,
    .destination = dde_destination,
};
