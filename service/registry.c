/* The adapter type registry and the common create/close path. */
#include "service/adapter.h"
#include "service/alloc.h"
#include "service/broker_int.h"
#include "service/log.h"

#include <string.h>

static const sb_adapter_type *types[SB_ADAPTER_TYPES_MAX];
static size_t type_count;

int sb_adapter_register(const sb_adapter_type *type, sb_error *err)
{
    if (type->version != SB_ADAPTER_VERSION)
        return sb_error_set(err, SB_EVERSION, 0,
                            "adapter type %s: interface version %d, this broker has %d", type->name,
                            type->version, SB_ADAPTER_VERSION);
    if (sb_adapter_find(type->name) != NULL)
        return sb_error_set(err, SB_EEXIST, 0, "adapter type %s: registered twice", type->name);
    if (type_count == SB_ADAPTER_TYPES_MAX)
        return sb_error_set(err, SB_EFULL, 0, "adapter type %s: the registry is full (%d types)",
                            type->name, SB_ADAPTER_TYPES_MAX);
    types[type_count++] = type;
    return 0;
}

int sb_adapter_register_all(const sb_adapter_type *const *list, sb_error *err)
{
    for (; *list != NULL; list++) {
        int rc = sb_adapter_register(*list, err);
        if (rc != 0)
            return rc;
    }
    return 0;
}

const sb_adapter_type *sb_adapter_find(const char *name)
{
    for (size_t i = 0; i < type_count; i++)
        if (strcmp(types[i]->name, name) == 0)
            return types[i];
    return NULL;
}

int sb_adapter_is_desktop(const sb_adapter_config *cfg)
{
    const sb_adapter_type *type = sb_adapter_find(cfg->type);
    unsigned caps;
    if (type == NULL)
        return 0;
    caps = type->caps_of != NULL ? type->caps_of(cfg) : type->caps;
    return (caps & SB_CAP_DESKTOP) != 0;
}

int sb_adapter_create(sb_adapter **out, sb_broker *broker, uv_loop_t *loop,
                      const sb_adapter_config *cfg, sb_error *err)
{
    const sb_adapter_type *type = sb_adapter_find(cfg->type);
    sb_adapter_config *copy;
    sb_adapter *a = NULL;
    int rc;

    *out = NULL;
    if (type == NULL)
        return sb_error_set(err, SB_ECONFIG, 0, "adapter %s: unknown type %s", cfg->name,
                            cfg->type);
    copy = sb_calloc(1, sizeof(*copy));
    if (copy == NULL || sb_adapter_config_copy(copy, cfg) != 0) {
        if (copy != NULL)
            sb_adapter_config_free(copy);
        sb_free(copy);
        return sb_error_set(err, SB_ENOMEM, 0, "adapter %s: out of memory", cfg->name);
    }
    rc = type->create(&a, copy, err);
    if (rc != 0) {
        sb_adapter_config_free(copy);
        sb_free(copy);
        return rc;
    }
    a->type = type;
    a->broker = broker;
    a->loop = loop;
    a->cfg = copy;
    a->name = copy->name;
    *out = a;
    return 0;
}

static void on_stopped(sb_adapter *a)
{
    sb_adapter_stopped_cb cb = a->on_closed;
    sb_adapter_config *cfg = a->cfg;
    if (cb != NULL)
        cb(a);
    a->type->destroy(a);
    sb_adapter_config_free(cfg);
    sb_free(cfg);
}

void sb_adapter_close(sb_adapter *a, sb_adapter_stopped_cb cb)
{
    a->on_closed = cb;
    a->stopping = 1;
    a->type->stop(a, on_stopped);
}

void sb_adapter_sink_ready(sb_adapter *a)
{
    sb_broker__adapter_ready(a->broker, a);
}
