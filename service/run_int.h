/*
 * Internals of running the broker (run.c) that each platform provides with
 * its `switchboard service` commands (service_cmd.h).
 */
#ifndef SB_RUN_INT_H
#define SB_RUN_INT_H

#include "service/service_cmd.h"

/* An orderly stop requested by another process where the OS has no signal
 * for it. Windows has none (uv_process_kill and
 * `taskkill /F` are TerminateProcess; console control events reach only
 * processes sharing the sender's console), so a foreground broker waits on
 * the auto-reset event Local\switchboard-stop-<pid>, which its own account,
 * SYSTEM and Administrators may set (service/win/stop_event.c); setting it
 * stops the broker as Ctrl-C does. Returns a watch for
 * sb_run__stop_watch_close, or NULL where there is none (POSIX: SIGTERM;
 * also if the event cannot be created, which is logged). */
typedef struct sb_stop_watch sb_stop_watch;
sb_stop_watch *sb_run__stop_watch_open(sb_broker *b);
void sb_run__stop_watch_close(sb_stop_watch *w);

#endif
