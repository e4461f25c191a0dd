/* The keys of type exec (adapters/exec/exec_keys.h). */
#include "adapters/exec/exec_keys.h"

static const char *const restarts[] = {"never", "on-failure", "always", NULL};
_Static_assert(SB_RESTART_NEVER == 0 && SB_RESTART_ON_FAILURE == 1 && SB_RESTART_ALWAYS == 2,
               "restarts follows sb_restart");

#define X(m) offsetof(sb_exec_settings, m)

static const sb_config_key exec_rows[] = {
    SB_STREAM_ROW_PROTOCOL,
    SB_STREAM_ROW_FRAMING,
    SB_STREAM_ROW_TOPIC,
    SB_STREAM_ROW_MAX_MESSAGE,
    {.key = "command", .kind = SB_KEY_STRLIST, .offset = X(command), .count_off = X(command_count)},
    {.key = "restart",
     .kind = SB_KEY_ENUM,
     .offset = X(restart),
     .def = SB_RESTART_ON_FAILURE,
     .choices = restarts},
    {.key = "restart_backoff",
     .kind = SB_KEY_DURATION,
     .offset = X(restart_backoff_ms),
     .def = 1 * SB_SECONDS,
     .min = 1,
     .max = SB_DAYS},
    {.key = "restart_max_backoff",
     .kind = SB_KEY_DURATION,
     .offset = X(restart_max_backoff_ms),
     .def = 1 * SB_MINUTES,
     .min = 1,
     .max = SB_DAYS},
    SB_ADAPTER_KEY_INFLIGHT,
    SB_STREAM_ROW_READ_AHEAD,
};

static void exec_validate(sb_adapter_check *chk, sb_adapter_config *cfg)
{
    static const sb_stream_kind kind = {"exec", NULL, 1, 0};
    sb_exec_settings *x = SB_SETTINGS(sb_exec_settings, cfg);
    sb_stream_validate(chk, cfg, &kind, "line");
    if (sb_adapter_check_seen(chk, &x->command) == SB_SEEN_NO)
        sb_adapter_error_at(chk, "command", "required for type exec");
    sb_adapter_check_backoff(chk, &x->restart_backoff_ms, "restart_backoff",
                             &x->restart_max_backoff_ms, "restart_max_backoff");
}

static int exec_destination(const sb_adapter_config *cfg, char *why, size_t n)
{
    return sb_stream_destination(cfg, 0, why, n);
}

const sb_adapter_keys sb_exec_keys = {
    .version = SB_ADAPTER_KEYS_VERSION,
    .type = "exec",
    .table = SB_CONFIG_TABLE(exec_rows),
    .settings_size = sizeof(sb_exec_settings),
    .protocol_of = sb_stream_protocol_of,
    .validate = exec_validate,
    .destination = exec_destination,
};
