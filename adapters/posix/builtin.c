/* POSIX adapter types: Unix domain sockets, also serving `type: pipe`. */
#include "adapters/adapter.h"

extern const sb_adapter_type sb_adapter_unix;
extern const sb_adapter_type sb_adapter_pipe_unix;

void sb_adapters_register_platform(void);
void sb_adapters_register_platform(void)
{
    sb_adapter_register(&sb_adapter_unix);
    sb_adapter_register(&sb_adapter_pipe_unix);
}
