/*
 * What the agent host (service/agent_host.c) needs from the OS to give each
 * Windows session an agent: session ids, the sessions users are logged on
 * to, the security descriptor of a session's endpoint, and starting an
 * agent as a session's user (the service's way; `switchboard run` starts
 * its agent with uv_spawn). Windows: service/win/agent_session.c; POSIX:
 * service/posix/agent_session.c, where there are no sessions to speak
 * of and agents serve tests of the protocol.
 */
#ifndef SB_AGENT_PROC_H
#define SB_AGENT_PROC_H

#include "service/error.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* The session this process runs in: its Windows session id, 0 on POSIX. */
uint32_t sb_agent_current_session(void);

/* The window station and desktop this process's windows live on
 * ("WinSta0\\Default" for a user's desktop); "" on POSIX. */
void sb_agent_desktop(char *out, size_t n);

/* The sessions a user is logged on to, where the service starts agents:
 * writes up to cap ids to out and returns how many there are. Never
 * session 0 (services). POSIX: none. */
size_t sb_agent_sessions(uint32_t *out, size_t cap);

/* The endpoint template used when broker.agent.endpoint is not set
 * ("{session}" stands for the session id). */
void sb_agent_default_endpoint(char *out, size_t n, const char *data_dir);

/* The name a client opens for endpoint `name` (after {session} was filled
 * in): Windows adds \\.\pipe\ to a bare pipe name, POSIX keeps the path. */
void sb_agent_endpoint_path(char *out, size_t n, const char *name);

/* The security descriptor (SDDL, sb_free) of a session's endpoint: SYSTEM
 * and this process's account all access, the logon SID of the session's
 * user (as_session_user: from the session's token; else this process's
 * own) read and write without the right to create pipe instances. *out is
 * NULL where endpoints need none (POSIX: the socket lives in the data dir).
 * Returns 0 or an SB_E* code with err set. */
int sb_agent_endpoint_sddl(char **out, uint32_t session, int as_session_user, sb_error *err);

/* An agent process started as a session's user. */
typedef struct sb_agent_proc sb_agent_proc;
typedef void (*sb_agent_exit_cb)(sb_agent_proc *p, int64_t exit_code, void *ctx);

/* Starts argv (argv[0]: this program) in `session` as the user logged on
 * to it, on that session's interactive desktop (winsta0\default); cb runs
 * on loop's thread when it exits. The service needs LocalSystem for this
 * (WTSQueryUserToken requires SeTcbPrivilege): err says so. POSIX:
 * SB_EINVAL. */
int sb_agent_spawn_as_user(sb_agent_proc **out, uv_loop_t *loop, uint32_t session,
                           char *const *argv, sb_agent_exit_cb cb, void *ctx, sb_error *err);

int64_t sb_agent_proc_pid(const sb_agent_proc *p);

/* Terminates the process (cb still runs). */
void sb_agent_proc_kill(sb_agent_proc *p);

/* Releases p after its exit callback ran (or to abandon it, when the loop
 * is closing: cb will not run). */
void sb_agent_proc_free(sb_agent_proc *p);

#endif
