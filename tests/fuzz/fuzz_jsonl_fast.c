/*
 * Differential fuzz target for the jsonl fast path: whatever jl_parse accepts,
 * jansson must accept too, with the same values — the fast path may decline
 * a line, never read it differently.
 */
#include "adapters/protocol/jsonl_fast.h"

#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void same_str(json_t *obj, const char *key, const jl_str *s)
{
    json_t *v = json_object_get(obj, key);
    if (!s->set) {
        if (v != NULL && json_is_string(v))
            abort();
        return;
    }
    if (!json_is_string(v) || json_string_length(v) != s->n ||
        memcmp(json_string_value(v), s->p, s->n) != 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *scratch = malloc(size + 1);
    jl_req req;
    json_t *obj;
    json_error_t err;

    if (scratch == NULL)
        return 0;
    if (!jl_parse((const char *)data, size, scratch, &req)) {
        free(scratch);
        return 0;
    }
    obj = json_loadb((const char *)data, size, JSON_ALLOW_NUL | JSON_REJECT_DUPLICATES, &err);
    if (obj == NULL || !json_is_object(obj))
        abort(); /* the fast path accepted what jansson rejects */
    same_str(obj, "op", &req.op);
    same_str(obj, "topic", &req.topic);
    same_str(obj, "payload", &req.payload);
    same_str(obj, "payload_b64", &req.payload_b64);
    same_str(obj, "sub", &req.sub);
    same_str(obj, "reason", &req.reason);
    if (req.has_msg_id && json_integer_value(json_object_get(obj, "msg_id")) != req.msg_id)
        abort();
    if (req.has_id_num && json_integer_value(json_object_get(obj, "id")) != req.id_num)
        abort();
    if (req.header_count > 0) {
        json_t *h = json_object_get(obj, "headers");
        if (!json_is_object(h) || json_object_size(h) != (size_t)req.header_count)
            abort();
        for (int i = 0; i < req.header_count; i++) {
            char key[256];
            json_t *v;
            if (req.hkey[i].n >= sizeof(key))
                continue;
            memcpy(key, req.hkey[i].p, req.hkey[i].n);
            key[req.hkey[i].n] = '\0';
            v = json_object_get(h, key);
            if (!json_is_string(v) || json_string_length(v) != req.hval[i].n ||
                memcmp(json_string_value(v), req.hval[i].p, req.hval[i].n) != 0)
                abort();
        }
    }
    json_decref(obj);
    free(scratch);
    return 0;
}
