/*
 * The keys of the socket types: tcp (with TLS), udp and unix. They fill
 * sb_stream_settings (adapters/stream_keys.h); the checks are the shared
 * endpoint checks, plus udp's datagram size.
 */
#include "adapters/stream_keys.h"

#define UDP_MAX_MESSAGE 65507 /* largest UDP payload over IPv4 */

static const sb_config_key tcp_rows[] = {
    SB_STREAM_ROW_LISTEN,
    SB_STREAM_ROW_CONNECT_OR_LIST,
    SB_STREAM_ROW_PROTOCOL,
    SB_STREAM_ROW_FRAMING,
    SB_STREAM_ROW_TOPIC,
    SB_STREAM_ROW_MAX_MESSAGE,
    SB_STREAM_ROW_MAX_CONNECTIONS,
    SB_STREAM_ROW_IDLE_TIMEOUT,
    SB_STREAM_ROW_FRAME_TIMEOUT,
    SB_STREAM_ROW_RECONNECT_BACKOFF,
    SB_STREAM_ROW_RECONNECT_MAX_BACKOFF,
    SB_ADAPTER_KEY_INFLIGHT,
    SB_STREAM_ROW_ANONYMOUS,
    SB_STREAM_ROW_TLS,
    SB_STREAM_ROW_MAX_QUEUED,
    SB_STREAM_ROW_SESSION_EXPIRY,
    SB_STREAM_ROW_READ_AHEAD,
    SB_STREAM_ROW_REPLY,
    SB_STREAM_ROW_REPLY_ERROR,
    SB_STREAM_ROWS_BRIDGE,
};

static const sb_config_key udp_rows[] = {
    SB_STREAM_ROW_LISTEN,      SB_STREAM_ROW_CONNECT, SB_STREAM_ROW_PROTOCOL,
    SB_STREAM_ROW_FRAMING,     SB_STREAM_ROW_TOPIC,   SB_STREAM_ROW_MAX_MESSAGE,
    SB_ADAPTER_KEY_INFLIGHT,   SB_STREAM_ROW_ANONYMOUS,
};

static const sb_config_key unix_rows[] = {
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
    SB_ADAPTER_KEY_INFLIGHT,
    SB_STREAM_ROW_ANONYMOUS,
    SB_STREAM_ROW_MAX_QUEUED,
    SB_STREAM_ROW_SESSION_EXPIRY,
    SB_STREAM_ROW_READ_AHEAD,
    SB_STREAM_ROW_REPLY,
    SB_STREAM_ROW_REPLY_ERROR,
};

static void tcp_validate(sb_adapter_check *chk, sb_adapter_config *cfg)
{
    static const sb_stream_kind kind = {"tcp", "listen", 1, 1};
    sb_stream_validate(chk, cfg, &kind, "line");
    sb_stream_validate_tls(chk, cfg);
}

static void udp_validate(sb_adapter_check *chk, sb_adapter_config *cfg)
{
    static const sb_stream_kind kind = {"udp", "listen", 0, 1};
    sb_stream_settings *s = SB_SETTINGS(sb_stream_settings, cfg);
    sb_stream_validate(chk, cfg, &kind, "datagram");
    switch (sb_adapter_check_seen(chk, &s->max_message)) {
    case SB_SEEN_NO:
        s->max_message = UDP_MAX_MESSAGE;
        break;
    case SB_SEEN_OK:
        if (s->max_message > UDP_MAX_MESSAGE)
            sb_adapter_error_at_value(chk, &s->max_message,
                                      "must be between 1 and %d for type udp", UDP_MAX_MESSAGE);
        break;
    default:
        break;
    }
}

static void unix_validate(sb_adapter_check *chk, sb_adapter_config *cfg)
{
    static const sb_stream_kind kind = {"unix", "path", 1, 0};
    sb_stream_validate(chk, cfg, &kind, "line");
}

static int stream_destination(const sb_adapter_config *cfg, char *why, size_t n)
{
    return sb_stream_destination(cfg, 0, why, n);
}

static int udp_destination(const sb_adapter_config *cfg, char *why, size_t n)
{
    return sb_stream_destination(cfg, 1, why, n);
}

const sb_adapter_keys sb_tcp_keys = {
    .version = SB_ADAPTER_KEYS_VERSION,
    .type = "tcp",
    .table = SB_CONFIG_TABLE(tcp_rows),
    .settings_size = sizeof(sb_stream_settings),
    .role_of = sb_stream_role_of,
    .protocol_of = sb_stream_protocol_of,
    .server_key = "listen",
    .validate = tcp_validate,
    .destination = stream_destination,
};

const sb_adapter_keys sb_udp_keys = {
    .version = SB_ADAPTER_KEYS_VERSION,
    .type = "udp",
    .table = SB_CONFIG_TABLE(udp_rows),
    .settings_size = sizeof(sb_stream_settings),
    .role_of = sb_stream_role_of,
    .protocol_of = sb_stream_protocol_of,
    .server_key = "listen",
    .validate = udp_validate,
    .destination = udp_destination,
};

const sb_adapter_keys sb_unix_keys = {
    .version = SB_ADAPTER_KEYS_VERSION,
    .type = "unix",
    .table = SB_CONFIG_TABLE(unix_rows),
    .settings_size = sizeof(sb_stream_settings),
    .role_of = sb_stream_role_of,
    .protocol_of = sb_stream_protocol_of,
    .server_key = "path",
    .validate = unix_validate,
    .destination = stream_destination,
};
