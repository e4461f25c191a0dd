/* The built-in adapter table: each type's keys paired with its
 * implementation on this platform (builtin_types.h, one line per type). */
#include "adapters/builtin.h"
#include "adapters/builtin_types.h"

#ifdef _WIN32
#define IMPL_WIN(name) &sb_adapter_##name
#define IMPL_POSIX(name) NULL
#else
#define IMPL_WIN(name) NULL
#define IMPL_POSIX(name) &sb_adapter_##name
#endif
#define IMPL_ALL(name) &sb_adapter_##name

/* Only the implementations this platform has are declared (and linked). */
#define DECLARE_ALL(name) extern const sb_adapter_type sb_adapter_##name;
#ifdef _WIN32
#define DECLARE_WIN(name) DECLARE_ALL(name)
#define DECLARE_POSIX(name)
#else
#define DECLARE_WIN(name)
#define DECLARE_POSIX(name) DECLARE_ALL(name)
#endif
#define DECLARE(name, platforms)                                                                   \
    extern const sb_adapter_keys sb_##name##_keys;                                                 \
    DECLARE_##platforms(name)
SB_BUILTIN_TYPES(DECLARE)

#define ROW(name, platforms) {&sb_##name##_keys, IMPL_##platforms(name)},
const sb_adapter_builtin sb_adapters_builtin[] = {SB_BUILTIN_TYPES(ROW){NULL, NULL}};

int sb_adapters_register_builtin(sb_error *err)
{
    for (const sb_adapter_builtin *b = sb_adapters_builtin; b->keys != NULL; b++) {
        int rc = sb_adapter_keys_register(b->keys, err);
        if (rc == 0 && b->type != NULL)
            rc = sb_adapter_register(b->type, err);
        if (rc != 0)
            return rc;
    }
    return 0;
}
