/* `switchboard service` on POSIX: not a Windows service here; and no stop
 * event for `switchboard run` (SIGTERM does that). */
#include "service/run_int.h"

#include <stdio.h>

int sb_service_command(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "switchboard service: the service commands are for Windows; on this system "
                    "run `switchboard run --config FILE` under your init system (e.g. systemd)\n");
    return 2;
}

sb_stop_watch *sb_run__stop_watch_open(sb_broker *b)
{
    (void)b;
    return NULL;
}

void sb_run__stop_watch_close(sb_stop_watch *w)
{
    (void)w;
}
