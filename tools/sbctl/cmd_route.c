/*
 * `sbctl route test ROUTE --topic T --payload P`: a dry run of a route's
 * transforms on a sample message, through the admin endpoint's route.test
 * request (docs/protocol.md). Nothing is published or stored.
 */
#include "tools/sbctl/sbctl.h"

#include "service/alloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const sbctl_opt route_test_opts[] = {
    SBCTL_COMMON_OPTS,
    {"topic", 't', SBCTL_OPT_STRING, 0, "TOPIC", "the sample message's topic (required)", 0, 0},
    {"payload", 'p', SBCTL_OPT_STRING, 0, "TEXT", "its payload (default: empty)", 0, 0},
    {"header", 'H', SBCTL_OPT_STRING, 1, "KEY=VALUE", "a header (repeat for more)", 0, 0},
};

/* A message's topic, headers and payload, each line after `indent`. */
static void print_message(const json_t *m, const char *indent)
{
    const char *key;
    json_t *v;
    printf("%stopic: %s\n", indent, json_string_value(json_object_get(m, "topic")));
    json_object_foreach(json_object_get(m, "headers"), key, v)
        printf("%sheader %s: %s\n", indent, key, json_string_value(v));
    if ((v = json_object_get(m, "payload")) != NULL)
        printf("%spayload: %s\n", indent, json_string_value(v));
    else
        printf("%spayload (base64): %s\n", indent,
               json_string_value(json_object_get(m, "payload_b64")));
}

static void print_dest(const json_t *d)
{
    const char *queue = json_string_value(json_object_get(d, "queue"));
    const char *result = json_string_value(json_object_get(d, "result"));
    const json_t *list = json_object_get(d, "messages");

    printf("%s: %s\n", queue != NULL ? queue : "?", result != NULL ? result : "?");
    if (result != NULL && strcmp(result, "dead-letter") == 0) {
        printf("  reason: %s\n", json_string_value(json_object_get(d, "reason")));
        return;
    }
    if (result == NULL || strcmp(result, "delivered") != 0)
        return;
    if (list == NULL) {
        print_message(d, "  ");
        return;
    }
    /* a script made several messages */
    for (size_t i = 0; i < json_array_size(list); i++) {
        printf("  message %zu:\n", i + 1);
        print_message(json_array_get(list, i), "    ");
    }
}

static int run_route_test(sbctl_ctx *ctx, const sbctl_cmd *cmd, const sbctl_args *a)
{
    const char *topic = sbctl_arg_str(a, "topic", NULL);
    const sbctl_optval *hv = sbctl_arg(a, "header");
    sb_client *c = NULL;
    json_t *req, *headers, *reply = NULL, *dests;
    int rc, dead = 0;

    if (topic == NULL)
        return sbctl_usage_error(cmd, "--topic is required");
    headers = json_object();
    for (int i = 0; i < hv->count; i++) {
        const char *eq = strchr(hv->list[i], '=');
        if (eq == NULL || eq == hv->list[i]) {
            json_decref(headers);
            return sbctl_usage_error(cmd, "--header: expected KEY=VALUE, got '%s'", hv->list[i]);
        }
        json_object_setn_new(headers, hv->list[i], (size_t)(eq - hv->list[i]), json_string(eq + 1));
    }
    req = json_pack("{s:s, s:s, s:s, s:s, s:o}", "op", "route.test", "route", a->pos[0], "topic",
                    topic, "payload", sbctl_arg_str(a, "payload", ""), "headers", headers);
    if (req == NULL) {
        sbctl_errorf("route test: the arguments are not valid UTF-8");
        return SBCTL_EXIT_USAGE;
    }
    rc = sbctl_connect(&c, ctx, ctx->endpoints[0]);
    if (rc != 0) {
        json_decref(req);
        return rc;
    }
    rc = sbctl_call(c, req, &reply, "route test");
    if (rc == 0 && ctx->json) {
        char *s = json_dumps(reply, JSON_COMPACT);
        printf("%s\n", s != NULL ? s : "");
        free(s);
    } else if (rc == 0) {
        if (!json_is_true(json_object_get(reply, "matches")))
            printf("(topic %s does not match the route's from filters: wildcards capture "
                   "nothing)\n",
                   topic);
        dests = json_object_get(reply, "destinations");
        for (size_t i = 0; i < json_array_size(dests); i++)
            print_dest(json_array_get(dests, i));
    }
    if (rc == 0) {
        dests = json_object_get(reply, "destinations");
        for (size_t i = 0; i < json_array_size(dests); i++) {
            const char *r = json_string_value(json_object_get(json_array_get(dests, i), "result"));
            if (r != NULL && strcmp(r, "dead-letter") == 0)
                dead = 1;
        }
        if (dead)
            rc = SBCTL_EXIT_ERROR;
    }
    json_decref(req);
    json_decref(reply);
    sb_client_free(c);
    return rc;
}

const sbctl_cmd sbctl_cmd_route_test = {
    "route test",
    "ROUTE",
    "dry-run a route's transforms on a sample message",
    "Runs the transforms of route ROUTE on a message with --topic, --payload\n"
    "and --header, as each destination would get it, and prints what each\n"
    "destination's queue would do: deliver (the topic, headers and payload it\n"
    "would get; each message when a Lua script makes several), filter (a\n"
    "when: condition does not hold, or a script returned nothing) or\n"
    "dead-letter (and why). Scripts run as they would on delivery. Nothing is\n"
    "published or stored. Exit status 1 when a destination\n"
    "would dead-letter the message.\n",
    route_test_opts,
    sizeof(route_test_opts) / sizeof(route_test_opts[0]),
    1,
    1,
    run_route_test};
