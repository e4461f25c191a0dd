/* The key tables of the built-in types (builtin_types.h), for programs that
 * only read configurations (and, through builtin.c, for all). */
#include "adapters/builtin.h"
#include "adapters/builtin_types.h"

#define DECLARE_KEYS(name, platforms) extern const sb_adapter_keys sb_##name##_keys;
SB_BUILTIN_TYPES(DECLARE_KEYS)

#define KEYS_ROW(name, platforms) &sb_##name##_keys,
static const sb_adapter_keys *const builtin_keys[] = {SB_BUILTIN_TYPES(KEYS_ROW) NULL};

int sb_adapter_keys_register_builtin(sb_error *err)
{
    for (size_t i = 0; builtin_keys[i] != NULL; i++) {
        int rc = sb_adapter_keys_register(builtin_keys[i], err);
        if (rc != 0)
            return rc;
    }
    return 0;
}
