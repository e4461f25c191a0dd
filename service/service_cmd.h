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

#endif
