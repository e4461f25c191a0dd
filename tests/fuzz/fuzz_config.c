/*
 * Fuzz target for the config parser: any bytes given to sb_config_parse must
 * give either a config or errors (never both, never neither), and a parsed
 * config must survive copy/equal/free of each adapter and route. Each input
 * is parsed a second time with an allocation failing part way through, which
 * must end in SB_ENOMEM or the same result, never a crash or a leak.
 */
#include "adapters/builtin.h"
#include "config/config.h"
#include "service/alloc.h"
#include "service/error.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int registered;
    sb_config_errors errs = {0};
    sb_config *cfg = NULL;
    int rc;

    /* every type's keys, so adapters are walked through their tables */
    if (!registered && sb_adapter_keys_register_builtin(NULL) != 0)
        abort();
    registered = 1;
    rc = sb_config_parse(&cfg, "fuzz.yaml", (const char *)data, size, &errs);

    if ((rc == 0) != (cfg != NULL) || (rc == 0) != (errs.count == 0))
        abort();
    if (rc != 0 && rc != SB_ECONFIG && rc != SB_ENOMEM)
        abort();
    for (size_t i = 0; cfg != NULL && i < cfg->adapter_count; i++) {
        sb_adapter_config copy;
        if (sb_adapter_config_copy(&copy, &cfg->adapters[i]) == 0 &&
            !sb_adapter_config_equal(&copy, &cfg->adapters[i]))
            abort();
        sb_adapter_config_free(&copy);
        if (sb_config_adapter(cfg, cfg->adapters[i].name) == NULL)
            abort();
    }
    for (size_t i = 0; cfg != NULL && i < cfg->route_count; i++) {
        sb_route_config copy;
        if (sb_route_config_copy(&copy, &cfg->routes[i]) == 0 &&
            !sb_route_config_equal(&copy, &cfg->routes[i]))
            abort();
        sb_route_config_free(&copy);
        for (size_t j = 0; j < cfg->routes[i].to_count; j++)
            if (sb_config_adapter(cfg, cfg->routes[i].to[j]) == NULL)
                abort();
    }
    sb_config_free(cfg);
    sb_config_errors_clear(&errs);

    /* Fail the n-th allocation, n picked from the input so it varies. */
    {
        long n = size > 0 ? (long)((data[size / 2] * 131u + size) % 256) : 0;
        int again;
        sb_alloc_fail_after(n);
        again = sb_config_parse(&cfg, "fuzz.yaml", (const char *)data, size, &errs);
        sb_alloc_fail_after(-1);
        if (again != rc && again != SB_ENOMEM)
            abort();
        if ((again == 0) != (cfg != NULL))
            abort();
        sb_config_free(cfg);
        sb_config_errors_clear(&errs);
    }
    return 0;
}
