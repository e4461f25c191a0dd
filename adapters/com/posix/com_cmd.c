/* `switchboard com ...` outside Windows: COM exists only there. */
#include "adapters/com/com_cmd.h"

#include <stdio.h>

int sb_com_command(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "switchboard com: COM is a Windows mechanism; nothing to do on this system\n");
    return 2;
}

int sb_com_register_defaults(void)
{
    return 0;
}

int sb_com_unregister_all(void)
{
    return 0;
}

int sb_com_server_run(const char *endpoint)
{
    (void)endpoint;
    return sb_com_command(0, NULL);
}
