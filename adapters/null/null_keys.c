/* The keys of type null (adapters/null/null.c): only `inflight`. */
#include "config/adapter_keys.h"

static const sb_config_key null_rows[] = {
    SB_ADAPTER_KEY_INFLIGHT,
};

const sb_adapter_keys sb_null_keys = {
    .version = SB_ADAPTER_KEYS_VERSION,
    .type = "null",
    .table = SB_CONFIG_TABLE(null_rows),
    .settings_size = 0,
};
