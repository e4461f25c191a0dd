/*
 * `switchboard service ...`: install and manage the Windows service, and the
 * entry point the service control manager starts. Windows only; elsewhere
 * the commands explain that and fail.
 */
#ifndef SB_SERVICE_CMD_H
#define SB_SERVICE_CMD_H

/* Runs `switchboard service <argv...>` (install, uninstall, start, stop,
 * status, run). Returns the process exit code. */
int sb_service_command(int argc, char **argv);

/* Shared by `run` and the service: loads the config, starts the broker,
 * runs it until stopped. `ready` (may be NULL) is called once the store is
 * open and adapters listen; `stopping` when the stop begins. */
typedef struct sb_broker sb_broker;
typedef struct sb_run_hooks {
    void (*ready)(sb_broker *b, void *ctx);
    void (*stopping)(void *ctx);
    void *ctx;
} sb_run_hooks;
int sb_run_broker(const char *config_path, const char *log_level, const sb_run_hooks *hooks);

/* Internal to sb_run_broker: an orderly stop requested by another process
 * where the OS has no signal for it. Windows has none (uv_process_kill and
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
