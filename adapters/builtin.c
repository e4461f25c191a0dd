/* The adapter types built into this platform's broker. */
#include "adapters/adapter.h"

extern const sb_adapter_type sb_adapter_tcp;
extern const sb_adapter_type sb_adapter_udp;
extern const sb_adapter_type sb_adapter_exec;

/* The platform's own types (adapters/<platform>/builtin.c). */
void sb_adapters_register_platform(void);

void sb_adapters_register_builtin(void)
{
    static int done;
    if (done)
        return;
    done = 1;
    sb_adapter_register(&sb_adapter_tcp);
    sb_adapter_register(&sb_adapter_udp);
    sb_adapter_register(&sb_adapter_exec);
    sb_adapters_register_platform();
}
