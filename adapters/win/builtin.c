/* Windows adapter types: named pipes, mailslots, DDE. */
#include "adapters/adapter.h"

extern const sb_adapter_type sb_adapter_mailslot;
extern const sb_adapter_type sb_adapter_pipe_win;
extern const sb_adapter_type sb_adapter_dde;

void sb_adapters_register_platform(void);
void sb_adapters_register_platform(void)
{
    sb_adapter_register(&sb_adapter_pipe_win);
    sb_adapter_register(&sb_adapter_mailslot);
    sb_adapter_register(&sb_adapter_dde);
}
