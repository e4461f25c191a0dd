/* `switchboard service` on POSIX: not a Windows service here. */
#include "service/service_cmd.h"

#include <stdio.h>

int sb_service_command(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "switchboard service: the service commands are for Windows; on this system "
                    "run `switchboard run --config FILE` under your init system (e.g. systemd)\n");
    return 2;
}
