/* Windows adapter types (named pipes, mailslots, ... arrive here). */
#include "adapters/adapter.h"

void sb_adapters_register_platform(void);
void sb_adapters_register_platform(void)
{
}
