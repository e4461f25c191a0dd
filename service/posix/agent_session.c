/* service/agent_proc.h on POSIX: one "session", no users to start agents
 * as; an agent's endpoint is a Unix socket in the private data directory. */
#include "service/agent_proc.h"

#include <stdio.h>

uint32_t sb_agent_current_session(void)
{
    return 0;
}

void sb_agent_desktop(char *out, size_t n)
{
    if (n > 0)
        out[0] = '\0';
}

size_t sb_agent_sessions(uint32_t *out, size_t cap)
{
    (void)out;
    (void)cap;
    return 0;
}

void sb_agent_default_endpoint(char *out, size_t n, const char *data_dir)
{
    snprintf(out, n, "%s/agent-{session}.sock", data_dir);
}

void sb_agent_endpoint_path(char *out, size_t n, const char *name)
{
    snprintf(out, n, "%s", name);
}

int sb_agent_endpoint_sddl(char **out, uint32_t session, int as_session_user, sb_error *err)
{
    (void)session;
    (void)as_session_user;
    (void)err;
    *out = NULL;
    return 0;
}

int sb_agent_spawn_as_user(sb_agent_proc **out, uv_loop_t *loop, uint32_t session,
                           char *const *argv, sb_agent_exit_cb cb, void *ctx, sb_error *err)
{
    (void)loop;
    (void)session;
    (void)argv;
    (void)cb;
    (void)ctx;
    *out = NULL;
    return sb_error_set(err, SB_EINVAL, 0, "sessions are a Windows notion");
}

int64_t sb_agent_proc_pid(const sb_agent_proc *p)
{
    (void)p;
    return 0;
}

void sb_agent_proc_kill(sb_agent_proc *p)
{
    (void)p;
}

void sb_agent_proc_free(sb_agent_proc *p)
{
    (void)p;
}
