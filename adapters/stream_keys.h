/*
 * The settings of the endpoint types (tcp, udp, unix, pipe, exec, mailslot):
 * one struct, sb_stream_settings, that their key tables fill, the rows they
 * share (one macro per key, so each type's table lists its keys in its own
 * order), and the checks they share (stream_keys.c): server or client,
 * host:port, protocol and framing, TLS, anonymous clients, the raw
 * protocol's replies, topic templates.
 *
 * The protocols (protocol/) and the stream core read these settings of
 * whichever type they serve: SB_STREAM_CFG(cfg).
 */
#ifndef SB_STREAM_KEYS_H
#define SB_STREAM_KEYS_H

#include "config/adapter_keys.h"

#include <stddef.h>
#include <stdint.h>

typedef enum { SB_TLS_V1_2 = 0, SB_TLS_V1_3 } sb_tls_version;
typedef enum {
    SB_CLIENT_CERT_NONE = 0,
    SB_CLIENT_CERT_OPTIONAL,
    SB_CLIENT_CERT_REQUIRE
} sb_client_cert;

typedef struct sb_stream_settings {
    char *listen;        /* tcp/udp server: "host:port" */
    char *connect;       /* tcp/udp client "host:port"; unix/pipe/mailslot client: path */
    char *path;          /* unix/pipe/mailslot server: socket path, pipe or mailslot name */
    char *protocol;      /* raw (default) | jsonl | mqtt (servers only) */
    char *framing;       /* raw only: line (default for streams) | length |
                            datagram (default and only choice for udp) | message */
    char *topic;         /* raw source: topic template, default "{adapter}";
                            placeholders {adapter} {peer} */
    int64_t max_message; /* bytes, default 1048576, 1..67108864 (udp: 65507) */
    int max_connections; /* servers, default 64, 1..100000 */
    /* servers: a connection that completes no first request (jsonl: a
     * request, raw: a frame, mqtt: CONNECT) within this time is closed;
     * 0 = off; -1 (not set): 30 s for jsonl, off for raw and mqtt. See
     * sb_stream_idle_timeout. */
    int64_t idle_timeout_ms;
    /* servers: a frame must be complete this long after its first byte
     * arrived, or the connection is closed; default 30 s, 0 = off */
    int64_t frame_timeout_ms;
    int64_t reconnect_backoff_ms;     /* clients: default 500ms */
    int64_t reconnect_max_backoff_ms; /* clients: default 30s */
    char *security;                   /* pipe/mailslot servers (Windows): SDDL; NULL = default */
    /* anonymous: clients that present no identity may connect. -1 (not
     * set): yes on loopback, Unix-socket and pipe listeners, no elsewhere. */
    int anonymous;
    /* tls (tcp only). A server needs cert and key; a client needs ca (a
     * file, or "system") or verify: false. See sb_stream_tls. */
    char *tls_cert, *tls_key; /* PEM files; for a client: its client certificate */
    char *tls_ca;             /* PEM bundle verifying peers; "system": OpenSSL's default paths */
    char *tls_ciphers;        /* TLS 1.2 cipher list (OpenSSL syntax); NULL = OpenSSL's default */
    char *tls_server_name;    /* client: SNI and the name checked in the server's certificate */
    int tls_min_version;      /* sb_tls_version: 1.2 (default) | 1.3 */
    int tls_client_cert;      /* sb_client_cert: server: none (default) | optional | require */
    int tls_verify;           /* client: verify the server's certificate, default true */
    /* mqtt: messages one client session holds; beyond, the oldest are
     * dropped. Default 100000, 0 = no limit. */
    int64_t max_queued;
    /* mqtt: a persistent session away this long is deleted. 0 = never. */
    int64_t session_expiry_ms;
    /* raw sources: frames read from one connection and not yet committed at
     * most; reading pauses beyond. Default 64, 1..65536. */
    int read_ahead;
    /* pipe (Windows): the pipe's buffer size, each direction. 0 (not set):
     * 4 KiB for raw, 64 KiB for jsonl and mqtt. */
    int64_t pipe_buffer;
    /* raw sources: the acknowledged mode: `reply` is written as a frame to
     * the producer after each committed frame; `reply_error` (needs reply)
     * answers a refused one. NULL: no reply. */
    char *reply;
    char *reply_error;
    /* ---- tcp clients with protocol mqtt: the bridge to an upstream MQTT
     * broker (protocol/mqtt/bridge.c) ---- */
    char **failover;        /* further upstream host:port, tried in turn after connect */
    size_t failover_count;
    char *client_id;        /* required: the persistent session upstream */
    char *username;         /* sent in CONNECT */
    char *password_file;    /* the password: a file's first line ... */
    char *password_env;     /* ... or an environment variable's value */
    int64_t keep_alive_ms;  /* default 60 s, whole seconds, 0 = off */
    int qos;                /* QoS of exports: 1 (default) or 2 */
    char *local_prefix;     /* stripped from exported topics, added to imported ones */
    char *remote_prefix;    /* added to exported topics, stripped from imported ones */
    char **subscribe;       /* upstream filters imported into the broker */
    size_t subscribe_count;
    int rate;               /* exports per second at most (a backlog's pace); 0 = no limit */
} sb_stream_settings;

/* The stream settings of an adapter of an endpoint type (exec's settings
 * start with them). */
#define SB_STREAM_CFG(cfg) ((const sb_stream_settings *)(cfg)->settings)

/* The effective idle_timeout of a server in ms (0: off): the configured
 * value, else 30 s for jsonl and off for other protocols. */
int64_t sb_stream_idle_timeout(const sb_adapter_config *cfg);

/* 1 if the adapter speaks TLS (its config has a tls section). */
int sb_stream_tls(const sb_adapter_config *cfg);

/* The effective `anonymous`: the configured value, else 1 for loopback TCP,
 * Unix-socket, pipe, mailslot and exec adapters and for clients, 0 for
 * other listeners. */
int sb_stream_anonymous(const sb_adapter_config *cfg);

/* ---- rows ---- */

#define SB_STREAM_OFF(m) offsetof(sb_stream_settings, m)

extern const char *const sb_stream_protocols[]; /* raw, jsonl, mqtt */
extern const char *const sb_stream_framings[];  /* line, length, datagram, message */
extern const sb_config_table sb_stream_tls_table;

#define SB_STREAM_ROW_LISTEN {.key = "listen", .kind = SB_KEY_STRING, .offset = SB_STREAM_OFF(listen)}
#define SB_STREAM_ROW_CONNECT                                                                      \
    {.key = "connect", .kind = SB_KEY_STRING, .offset = SB_STREAM_OFF(connect)}
/* tcp's: an MQTT client (a bridge) may list several upstream addresses,
 * tried in turn: `connect: [a, b]` is `connect: a` + `failover: [b]`. */
#define SB_STREAM_ROW_CONNECT_OR_LIST                                                              \
    {.key = "connect", .kind = SB_KEY_STRING, .flags = SB_KEY_OR_LIST,                             \
     .offset = SB_STREAM_OFF(connect), .rest_off = SB_STREAM_OFF(failover),                        \
     .count_off = SB_STREAM_OFF(failover_count)}
#define SB_STREAM_ROW_PATH {.key = "path", .kind = SB_KEY_STRING, .offset = SB_STREAM_OFF(path)}
#define SB_STREAM_ROW_PROTOCOL                                                                     \
    {.key = "protocol", .kind = SB_KEY_CHOICE, .offset = SB_STREAM_OFF(protocol),                  \
     .def_str = "raw", .choices = sb_stream_protocols}
#define SB_STREAM_ROW_FRAMING                                                                      \
    {.key = "framing", .kind = SB_KEY_CHOICE, .offset = SB_STREAM_OFF(framing),                    \
     .choices = sb_stream_framings}
#define SB_STREAM_ROW_TOPIC                                                                        \
    {.key = "topic", .kind = SB_KEY_STRING, .offset = SB_STREAM_OFF(topic), .def_str = "{adapter}"}
#define SB_STREAM_ROW_MAX_MESSAGE                                                                  \
    {.key = "max_message", .kind = SB_KEY_SIZE, .offset = SB_STREAM_OFF(max_message),             \
     .def = 1048576, .min = 1, .max = 67108864}
#define SB_STREAM_WHY_SERVER "only for servers (%s), not with connect"
#define SB_STREAM_WHY_CLIENT "only for clients (connect), not with %s"
#define SB_STREAM_ROW_MAX_CONNECTIONS                                                              \
    {.key = "max_connections", .kind = SB_KEY_INT, .roles = SB_ROLE_SERVER,                        \
     .why = SB_STREAM_WHY_SERVER, .offset = SB_STREAM_OFF(max_connections), .def = 64, .min = 1,   \
     .max = 100000}
#define SB_STREAM_ROW_IDLE_TIMEOUT                                                                 \
    {.key = "idle_timeout", .kind = SB_KEY_DURATION, .roles = SB_ROLE_SERVER,                      \
     .why = SB_STREAM_WHY_SERVER, .offset = SB_STREAM_OFF(idle_timeout_ms), .def = -1, .min = 0,   \
     .max = SB_DAYS}
#define SB_STREAM_ROW_FRAME_TIMEOUT                                                                \
    {.key = "frame_timeout", .kind = SB_KEY_DURATION, .roles = SB_ROLE_SERVER,                     \
     .why = SB_STREAM_WHY_SERVER, .offset = SB_STREAM_OFF(frame_timeout_ms),                       \
     .def = 30 * SB_SECONDS, .min = 0, .max = SB_DAYS}
#define SB_STREAM_ROW_RECONNECT_BACKOFF                                                            \
    {.key = "reconnect_backoff", .kind = SB_KEY_DURATION, .roles = SB_ROLE_CLIENT,                 \
     .why = SB_STREAM_WHY_CLIENT, .offset = SB_STREAM_OFF(reconnect_backoff_ms), .def = 500,       \
     .min = 1, .max = SB_DAYS}
#define SB_STREAM_ROW_RECONNECT_MAX_BACKOFF                                                        \
    {.key = "reconnect_max_backoff", .kind = SB_KEY_DURATION, .roles = SB_ROLE_CLIENT,             \
     .why = SB_STREAM_WHY_CLIENT, .offset = SB_STREAM_OFF(reconnect_max_backoff_ms),               \
     .def = 30 * SB_SECONDS, .min = 1, .max = SB_DAYS}
#define SB_STREAM_ROW_ANONYMOUS                                                                    \
    {.key = "anonymous", .kind = SB_KEY_BOOL, .offset = SB_STREAM_OFF(anonymous), .def = -1}
#define SB_STREAM_ROW_TLS {.key = "tls", .kind = SB_KEY_SECTION, .section = &sb_stream_tls_table}
#define SB_STREAM_ROW_MAX_QUEUED                                                                   \
    {.key = "max_queued", .kind = SB_KEY_INT64, .protocols = SB_PROTO_MQTT,                        \
     .offset = SB_STREAM_OFF(max_queued), .def = 100000, .min = 0, .max = INT64_MAX}
#define SB_STREAM_ROW_SESSION_EXPIRY                                                               \
    {.key = "session_expiry", .kind = SB_KEY_DURATION, .protocols = SB_PROTO_MQTT,                 \
     .offset = SB_STREAM_OFF(session_expiry_ms), .def = 0, .min = 0, .max = 3650 * SB_DAYS}
#define SB_STREAM_ROW_READ_AHEAD                                                                   \
    {.key = "read_ahead", .kind = SB_KEY_INT, .protocols = SB_PROTO_RAW,                           \
     .offset = SB_STREAM_OFF(read_ahead), .def = 64, .min = 1, .max = 65536}
#define SB_STREAM_ROW_REPLY                                                                        \
    {.key = "reply", .kind = SB_KEY_STRING, .protocols = SB_PROTO_RAW,                             \
     .offset = SB_STREAM_OFF(reply)}
#define SB_STREAM_ROW_REPLY_ERROR                                                                  \
    {.key = "reply_error", .kind = SB_KEY_STRING, .protocols = SB_PROTO_RAW,                       \
     .offset = SB_STREAM_OFF(reply_error)}

/* The keys of an MQTT client (the bridge); only tcp has them. */
#define SB_STREAM_WHY_BRIDGE "only for MQTT clients (connect with protocol mqtt), not with %s"
#define SB_STREAM_BRIDGE_ROW(k, kind_, m, ...)                                                     \
    {.key = k, .kind = kind_, .roles = SB_ROLE_CLIENT, .protocols = SB_PROTO_MQTT,                 \
     .why = SB_STREAM_WHY_BRIDGE, .offset = SB_STREAM_OFF(m), __VA_ARGS__}
#define SB_STREAM_ROWS_BRIDGE                                                                      \
    SB_STREAM_BRIDGE_ROW("failover", SB_KEY_STRLIST, failover,                                     \
                         .count_off = SB_STREAM_OFF(failover_count)),                              \
        SB_STREAM_BRIDGE_ROW("client_id", SB_KEY_STRING, client_id, .def = 0),                     \
        SB_STREAM_BRIDGE_ROW("username", SB_KEY_STRING, username, .def = 0),                       \
        SB_STREAM_BRIDGE_ROW("password_file", SB_KEY_STRING, password_file, .def = 0),             \
        SB_STREAM_BRIDGE_ROW("password_env", SB_KEY_STRING, password_env, .def = 0),               \
        SB_STREAM_BRIDGE_ROW("keep_alive", SB_KEY_DURATION, keep_alive_ms, .def = 60 * SB_SECONDS, \
                             .min = 0, .max = 65535 * SB_SECONDS),                                 \
        SB_STREAM_BRIDGE_ROW("qos", SB_KEY_INT, qos, .def = 1, .min = 1, .max = 2),                \
        SB_STREAM_BRIDGE_ROW("local_prefix", SB_KEY_STRING, local_prefix, .def = 0),               \
        SB_STREAM_BRIDGE_ROW("remote_prefix", SB_KEY_STRING, remote_prefix, .def = 0),             \
        SB_STREAM_BRIDGE_ROW("subscribe", SB_KEY_FILTERS, subscribe,                               \
                             .count_off = SB_STREAM_OFF(subscribe_count)),                         \
        SB_STREAM_BRIDGE_ROW("rate", SB_KEY_INT, rate, .def = 0, .min = 0, .max = 10000000)

/* 1 if the adapter is an MQTT client (tcp connect with protocol mqtt). */
int sb_stream_mqtt_client(const sb_adapter_config *cfg);

/* ---- shared hooks and checks (stream_keys.c) ---- */

/* What a type is, for the shared checks. */
typedef struct sb_stream_kind {
    const char *type;       /* its name, for messages */
    const char *server_key; /* the key that makes it a server (listen, path); NULL: exec */
    int stream;             /* a byte stream (can carry jsonl) */
    int host_port;          /* listen/connect are host:port (tcp, udp) */
} sb_stream_kind;

/* role_of: server with server_key set (and no connect), client with connect
 * alone; 0 otherwise (the validate hook reports it). */
unsigned sb_stream_role_of(const sb_adapter_config *cfg);
/* protocol_of: raw, jsonl or mqtt. */
unsigned sb_stream_protocol_of(const sb_adapter_config *cfg);

/* The checks every endpoint type shares (server XOR client, addresses,
 * protocol and framing, raw replies, anonymous clients, topic template,
 * reconnect backoff), and the framing default (`default_framing`). */
void sb_stream_validate(sb_adapter_check *chk, sb_adapter_config *cfg, const sb_stream_kind *kind,
                        const char *default_framing);

/* tcp's tls section. */
void sb_stream_validate_tls(sb_adapter_check *chk, sb_adapter_config *cfg);

/* destination: not jsonl or mqtt (their clients subscribe), not an adapter
 * that answers its producers (reply), and a client when `client_only`
 * (udp, mailslot: a listener only receives). */
int sb_stream_destination(const sb_adapter_config *cfg, int client_only, char *why, size_t n);

#endif
