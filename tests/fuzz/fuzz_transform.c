/*
 * Fuzz target for route transforms: the input is a config (YAML) and, after
 * a line "---payload", a payload. Every destination of every route of a
 * config that parses has its transform compiled and run on the payload
 * under topics its filters suggest; the result is a message, a skip or an
 * error with a reason, never a crash or a leak. The run is repeated with an
 * allocation failing part way through, which must end in SB_ENOMEM or the
 * same result.
 */
#include "adapters/builtin.h"
#include "config/config.h"
#include "service/alloc.h"
#include "service/error.h"
#include "service/transform.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char mark[] = "\n---payload\n";

/* A topic for filter f: + and # become "x". */
static void topic_for(char *out, size_t n, const char *f)
{
    size_t o = 0;
    for (; *f != '\0' && o + 2 < n; f++)
        out[o++] = (*f == '+' || *f == '#') ? 'x' : *f;
    out[o] = '\0';
    if (o == 0)
        strcpy(out, "x");
}

static int run_one(const sb_transform *t, const char *topic, const uint8_t *p, size_t len)
{
    sb_message *in = sb_message_new(topic, p, len), *out = NULL;
    char why[300];
    int rc;
    if (in == NULL)
        return SB_ENOMEM;
    if (sb_message_add_header(in, "h", "v") != 0) {
        sb_message_unref(in);
        return SB_ENOMEM;
    }
    rc = sb_transform_apply(t, in, &out, why, sizeof why);
    if ((rc == 0) != (out != NULL))
        abort();
    if (rc == SB_EINVAL && why[0] == '\0')
        abort(); /* an error always says why */
    if (out != NULL)
        sb_message_unref(out);
    sb_message_unref(in);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int registered;
    sb_config_errors errs = {0};
    sb_config *cfg = NULL;
    const uint8_t *payload = (const uint8_t *)"";
    size_t yaml_len = size, payload_len = 0;

    if (!registered && sb_adapter_keys_register_builtin(NULL) != 0)
        abort();
    registered = 1;
    for (size_t i = 0; i + sizeof mark - 1 <= size; i++)
        if (memcmp(data + i, mark, sizeof mark - 1) == 0) {
            yaml_len = i;
            payload = data + i + sizeof mark - 1;
            payload_len = size - i - (sizeof mark - 1);
            break;
        }
    if (sb_config_parse(&cfg, "fuzz.yaml", (const char *)data, yaml_len, &errs) != 0) {
        sb_config_errors_clear(&errs);
        return 0;
    }
    for (size_t i = 0; i < cfg->route_count; i++) {
        const sb_route_config *r = &cfg->routes[i];
        for (size_t d = 0; d <= r->to_count; d++) {
            const sb_tnode *specs[2] = {
                r->transform, r->to_transform && d < r->to_count ? r->to_transform[d] : NULL};
            sb_transform *t = NULL;
            char topic[256];
            if (sb_transform_compile(&t, specs, 2, (const char *const *)r->from, r->from_count,
                                     NULL, NULL) != 0)
                abort(); /* the config pass accepted it */
            if (t == NULL)
                continue;
            for (size_t f = 0; f < r->from_count; f++) {
                int first;
                topic_for(topic, sizeof topic, r->from[f]);
                first = run_one(t, topic, payload, payload_len);
                sb_alloc_fail_after((long)(payload_len % 7));
                int again = run_one(t, topic, payload, payload_len);
                sb_alloc_fail_after(-1);
                if (again != first && again != SB_ENOMEM)
                    abort();
            }
            sb_transform_free(t);
        }
    }
    sb_config_free(cfg);
    return 0;
}
