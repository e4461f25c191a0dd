/* The orderly stop of a child on POSIX (see sbt_proc_request_stop): SIGTERM. */
#include "tests/integration/harness.h"

#include <signal.h>

int sbt_proc_request_stop(sbt_proc *p)
{
    if (!p->spawned || !p->running)
        return 0;
    return uv_process_kill(&p->h, SIGTERM);
}
