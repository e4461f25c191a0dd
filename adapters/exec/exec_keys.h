/*
 * The settings of type exec: a child process whose stdin/stdout carry the
 * stream protocols. They start with the endpoint settings (SB_STREAM_CFG
 * reads them), then the command and its restart policy.
 */
#ifndef SB_EXEC_KEYS_H
#define SB_EXEC_KEYS_H

#include "adapters/stream_keys.h"

typedef enum { SB_RESTART_NEVER = 0, SB_RESTART_ON_FAILURE, SB_RESTART_ALWAYS } sb_restart;

typedef struct sb_exec_settings {
    sb_stream_settings stream; /* first: the protocols read it */
    char **command;            /* argv (list of strings), required */
    size_t command_count;
    int restart;                    /* sb_restart: never | on-failure (default) | always */
    int64_t restart_backoff_ms;     /* first restart delay, default 1s */
    int64_t restart_max_backoff_ms; /* cap, default 1m */
} sb_exec_settings;

#define SB_EXEC_CFG(cfg) ((const sb_exec_settings *)(cfg)->settings)

#endif
