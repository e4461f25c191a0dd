/*
 * The keys of type pipe: a named pipe on Windows (pipe/win/), a Unix
 * socket elsewhere (socket/). Portable, so check-config checks Windows pipe
 * configurations everywhere: the name rules below are Windows', which a
 * Unix socket path (no backslashes) meets.
 */
#include "adapters/stream_keys.h"

#include <stdio.h>
#include <string.h>

#define PIPE_PATH_MAX 256 /* the longest pipe path Windows accepts */

static const sb_config_key pipe_rows[] = {
    SB_STREAM_ROW_CONNECT,
    SB_STREAM_ROW_PATH,
    SB_STREAM_ROW_PROTOCOL,
    SB_STREAM_ROW_FRAMING,
    SB_STREAM_ROW_TOPIC,
    SB_STREAM_ROW_MAX_MESSAGE,
    SB_STREAM_ROW_MAX_CONNECTIONS,
    SB_STREAM_ROW_IDLE_TIMEOUT,
    SB_STREAM_ROW_FRAME_TIMEOUT,
    SB_STREAM_ROW_RECONNECT_BACKOFF,
    SB_STREAM_ROW_RECONNECT_MAX_BACKOFF,
    {.key = "security",
     .kind = SB_KEY_STRING,
     .roles = SB_ROLE_SERVER,
     .why = "security applies to a pipe server (path), not to connect",
     .offset = SB_STREAM_OFF(security)},
    SB_ADAPTER_KEY_INFLIGHT,
    SB_STREAM_ROW_ANONYMOUS,
    SB_STREAM_ROW_MAX_QUEUED,
    SB_STREAM_ROW_SESSION_EXPIRY,
    SB_STREAM_ROW_READ_AHEAD,
    /* 0 (not set): the pipe adapter picks by protocol */
    {.key = "pipe_buffer",
     .kind = SB_KEY_SIZE,
     .roles = SB_ROLE_SERVER,
     .why = SB_STREAM_WHY_SERVER,
     .offset = SB_STREAM_OFF(pipe_buffer),
     .def = 0,
     .min = 512,
     .max = 16 * 1024 * 1024},
    SB_STREAM_ROW_REPLY,
    SB_STREAM_ROW_REPLY_ERROR,
};

static int prefix_ci(const char *s, const char *prefix)
{
    for (; *prefix != '\0'; s++, prefix++) {
        char a = *s >= 'A' && *s <= 'Z' ? (char)(*s + 32) : *s;
        if (a != *prefix)
            return 0;
    }
    return 1;
}

/* A pipe name as the Windows adapter reads it: NAME, \\.\pipe\NAME, and
 * for a client also \\HOST\pipe\NAME. */
static void check_name(sb_adapter_check *chk, char *const *value, int server)
{
    const char *name = *value, *leaf = name;
    size_t full;
    if (sb_adapter_check_seen(chk, value) != SB_SEEN_OK)
        return;
    full = strlen(name);
    if (prefix_ci(name, "\\\\.\\pipe\\")) {
        leaf = name + 9;
    } else if (name[0] == '\\' && name[1] == '\\') {
        const char *host_end = strchr(name + 2, '\\');
        if (server) {
            sb_adapter_error_at_value(chk, value,
                                      "a pipe server must be local (NAME or \\\\.\\pipe\\NAME)");
            return;
        }
        if (host_end == NULL || host_end == name + 2 || !prefix_ci(host_end, "\\pipe\\")) {
            sb_adapter_error_at_value(chk, value,
                                      "expected NAME, \\\\.\\pipe\\NAME or \\\\HOST\\pipe\\NAME");
            return;
        }
        leaf = host_end + 6;
    } else {
        full += 9; /* \\.\pipe\ is put in front */
    }
    if (*leaf == '\0' || strchr(leaf, '\\') != NULL)
        sb_adapter_error_at_value(chk, value,
                                  "invalid pipe name (empty, or containing a backslash)");
    else if (full > PIPE_PATH_MAX)
        sb_adapter_error_at_value(chk, value, "pipe name longer than %d characters",
                                  PIPE_PATH_MAX);
}

static void pipe_validate(sb_adapter_check *chk, sb_adapter_config *cfg)
{
    static const sb_stream_kind kind = {"pipe", "path", 1, 0};
    const sb_stream_settings *s = SB_STREAM_CFG(cfg);
    sb_stream_validate(chk, cfg, &kind, "line");
    check_name(chk, &s->path, 1);
    check_name(chk, &s->connect, 0);
}

static int pipe_destination(const sb_adapter_config *cfg, char *why, size_t n)
{
    return sb_stream_destination(cfg, 0, why, n);
}

const sb_adapter_keys sb_pipe_keys = {
    .version = SB_ADAPTER_KEYS_VERSION,
    .type = "pipe",
    .table = SB_CONFIG_TABLE(pipe_rows),
    .settings_size = sizeof(sb_stream_settings),
    .role_of = sb_stream_role_of,
    .protocol_of = sb_stream_protocol_of,
    .server_key = "path",
    .validate = pipe_validate,
    .destination = pipe_destination,
};
