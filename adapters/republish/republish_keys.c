/* The keys of type republish (adapters/republish/republish.c): only
 * `inflight`. */
#include "config/adapter_keys.h"

static const sb_config_key republish_rows[] = {
    SB_ADAPTER_KEY_INFLIGHT,
};

const sb_adapter_keys sb_republish_keys = {
    .version = SB_ADAPTER_KEYS_VERSION,
    .type = "republish",
    .table = SB_CONFIG_TABLE(republish_rows),
    .settings_size = 0,
};
