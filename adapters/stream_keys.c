/*
 * The checks the endpoint types (tcp, udp, unix, pipe, exec, mailslot)
 * share, run by their validate hooks in the config pass: a server or a
 * client, host:port addresses, which protocol and framing fit the type, TLS,
 * who may connect anonymously, the raw protocol's replies, the topic
 * template. Portable: check-config runs them on every platform.
 */
#include "adapters/stream_keys.h"
#include "service/alloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

const char *const sb_stream_protocols[] = {"raw", "jsonl", "mqtt", NULL};
const char *const sb_stream_framings[] = {"line", "length", "datagram", "message", NULL};

static const char *const tls_versions[] = {"1.2", "1.3", NULL};
_Static_assert(SB_TLS_V1_2 == 0 && SB_TLS_V1_3 == 1, "tls_versions follows sb_tls_version");
static const char *const client_certs[] = {"none", "optional", "require", NULL};
_Static_assert(SB_CLIENT_CERT_NONE == 0 && SB_CLIENT_CERT_OPTIONAL == 1 &&
                   SB_CLIENT_CERT_REQUIRE == 2,
               "client_certs follows sb_client_cert");

#define S(m) offsetof(sb_stream_settings, m)

static const sb_config_key tls_rows[] = {
    {.key = "cert", .kind = SB_KEY_STRING, .offset = S(tls_cert)},
    {.key = "key", .kind = SB_KEY_STRING, .offset = S(tls_key)},
    {.key = "ca", .kind = SB_KEY_STRING, .offset = S(tls_ca)},
    {.key = "ciphers", .kind = SB_KEY_STRING, .offset = S(tls_ciphers)},
    {.key = "server_name",
     .kind = SB_KEY_STRING,
     .roles = SB_ROLE_CLIENT,
     .why = "only for clients (connect), not with listen",
     .offset = S(tls_server_name)},
    {.key = "min_version",
     .kind = SB_KEY_ENUM,
     .offset = S(tls_min_version),
     .def = SB_TLS_V1_2,
     .choices = tls_versions},
    {.key = "client_cert",
     .kind = SB_KEY_ENUM,
     .roles = SB_ROLE_SERVER,
     .why = "only for listeners, not with connect",
     .offset = S(tls_client_cert),
     .def = SB_CLIENT_CERT_NONE,
     .choices = client_certs},
    {.key = "verify",
     .kind = SB_KEY_BOOL,
     .roles = SB_ROLE_CLIENT,
     .why = "only for clients (connect), not with listen",
     .offset = S(tls_verify),
     .def = 1},
};
const sb_config_table sb_stream_tls_table = SB_CONFIG_TABLE(tls_rows);

/* ---- what the adapters ask ---- */

static int is(const char *s, const char *v)
{
    return s != NULL && strcmp(s, v) == 0;
}

int64_t sb_stream_idle_timeout(const sb_adapter_config *cfg)
{
    const sb_stream_settings *s = SB_STREAM_CFG(cfg);
    if (s->idle_timeout_ms >= 0)
        return s->idle_timeout_ms;
    return is(s->protocol, "jsonl") ? 30 * SB_SECONDS : 0;
}

int sb_stream_tls(const sb_adapter_config *cfg)
{
    const sb_stream_settings *s = SB_STREAM_CFG(cfg);
    /* the tls checks make every tls section set one of these */
    return s->tls_cert != NULL || s->tls_ca != NULL || !s->tls_verify;
}

static int is_loopback_listen(const char *listen)
{
    return strncmp(listen, "127.", 4) == 0 || strncmp(listen, "localhost:", 10) == 0 ||
           strncmp(listen, "[::1]:", 6) == 0;
}

int sb_stream_anonymous(const sb_adapter_config *cfg)
{
    const sb_stream_settings *s = SB_STREAM_CFG(cfg);
    if (s->anonymous >= 0)
        return s->anonymous;
    if (!is(cfg->type, "tcp") && !is(cfg->type, "udp"))
        return 1; /* local IPC: the OS's access control decides who connects */
    return s->listen == NULL || is_loopback_listen(s->listen);
}

unsigned sb_stream_role_of(const sb_adapter_config *cfg)
{
    const sb_stream_settings *s = SB_STREAM_CFG(cfg);
    int server = s->listen != NULL || s->path != NULL, client = s->connect != NULL;
    if (server == client)
        return 0;
    return server ? SB_ROLE_SERVER : SB_ROLE_CLIENT;
}

unsigned sb_stream_protocol_of(const sb_adapter_config *cfg)
{
    const sb_stream_settings *s = SB_STREAM_CFG(cfg);
    if (is(s->protocol, "jsonl"))
        return SB_PROTO_JSONL;
    if (is(s->protocol, "mqtt"))
        return SB_PROTO_MQTT;
    return SB_PROTO_RAW;
}

int sb_stream_mqtt_client(const sb_adapter_config *cfg)
{
    const sb_stream_settings *s = SB_STREAM_CFG(cfg);
    return s->connect != NULL && is(s->protocol, "mqtt");
}

int sb_stream_destination(const sb_adapter_config *cfg, int client_only, char *why, size_t n)
{
    const sb_stream_settings *s = SB_STREAM_CFG(cfg);
    const char *protocol = s->protocol != NULL ? s->protocol : "raw";
    /* an MQTT client publishes its deliveries upstream (the bridge) */
    int mqtt = is(protocol, "mqtt") && s->connect == NULL;
    int receives = client_only && s->connect == NULL;
    if (s->reply != NULL) {
        /* its connections carry replies: deliveries would mix with them */
        snprintf(why, n,
                 "adapter \"%s\" answers its producers (reply): it cannot also be a destination",
                 cfg->name);
        return 0;
    }
    if (!mqtt && !receives && !is(protocol, "jsonl"))
        return 1;
    snprintf(why, n, "adapter %s (type %s, protocol %s) cannot be a destination%s", cfg->name,
             cfg->type, protocol,
             mqtt       ? "; MQTT clients subscribe for themselves"
             : receives ? " (it only receives: give it `connect` to send)"
                        : "; jsonl clients subscribe by name");
    return 0;
}

/* ---- checks ---- */

/* "host:port" or "[v6]:port"; port 0 (any free port) and an empty host (every
 * interface) only for listen; the host a numeric address or localhost (the
 * socket adapters resolve no names). Returns NULL, or msg holding what is
 * wrong. */
static const char *host_port_problem(const char *addr, int listen, char *msg, size_t n)
{
    const char *colon;
    char q[96], host[64];
    long port;
    char *end;
    size_t hl;
    struct sockaddr_in6 sa6;
    struct sockaddr_in sa4;

    sb_config_quote(q, sizeof q, addr);
    colon = strrchr(addr, ':');
    /* ":port" listens on every interface (as the socket adapters read it) */
    if (colon == NULL || (colon == addr && !listen)) {
        snprintf(msg, n, "expected host:port, got %s", q);
        return msg;
    }
    if (addr[0] == '[' ? colon[-1] != ']' : memchr(addr, ':', (size_t)(colon - addr)) != NULL) {
        snprintf(msg, n, "expected host:port, got %s (write IPv6 addresses as [::1]:port)", q);
        return msg;
    }
    port = strtol(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end != '\0' || colon[1] == '+' || colon[1] == ' ' ||
        port < !listen || port > 65535) {
        sb_config_quote(q, sizeof q, colon + 1);
        snprintf(msg, n, "invalid port %s (must be %d..65535)", q, !listen);
        return msg;
    }
    hl = addr[0] == '[' ? (size_t)(colon - addr - 2) : (size_t)(colon - addr);
    if (hl == 0 && addr[0] != '[')
        return NULL; /* every interface */
    if (hl == 0 || hl >= sizeof host) {
        snprintf(msg, n,
                 "host of %s is not a numeric address (write e.g. 127.0.0.1:7878 or "
                 "[::1]:7878; names are not resolved)",
                 q);
        return msg;
    }
    memcpy(host, addr[0] == '[' ? addr + 1 : addr, hl);
    host[hl] = '\0';
    if (strcmp(host, "localhost") == 0 || uv_ip4_addr(host, 0, &sa4) == 0 ||
        uv_ip6_addr(host, 0, &sa6) == 0)
        return NULL;
    sb_config_quote(q, sizeof q, host);
    snprintf(msg, n,
             "host %s is not a numeric address (write e.g. 127.0.0.1:7878 or [::1]:7878; names "
             "are not resolved)",
             q);
    return msg;
}

static int check_host_port(sb_adapter_check *chk, char *const *value, int listen)
{
    char msg[300];
    if (sb_adapter_check_seen(chk, value) != SB_SEEN_OK ||
        host_port_problem(*value, listen, msg, sizeof msg) == NULL)
        return 0;
    sb_adapter_error_at_value(chk, value, "%s", msg);
    return 1;
}

/* An MQTT client (the bridge): its session, credentials and addresses. */
static void check_bridge(sb_adapter_check *chk, sb_stream_settings *a)
{
    if (a->client_id == NULL)
        sb_adapter_error_at(chk, "client_id",
                            "required for an MQTT client: the name of its persistent session "
                            "upstream (unique in the upstream cluster)");
    else if (strlen(a->client_id) > 65535)
        sb_adapter_error_at_value(chk, &a->client_id, "longer than 65535 bytes");
    if (a->password_file != NULL && a->password_env != NULL)
        sb_adapter_error_at_key(chk, &a->password_env, "cannot be combined with password_file");
    if ((a->password_file != NULL || a->password_env != NULL) && a->username == NULL)
        sb_adapter_error_at(chk, "username",
                            "required with a password (MQTT 3.1.1 sends no password alone)");
    if (a->keep_alive_ms % SB_SECONDS != 0)
        sb_adapter_error_at_value(chk, &a->keep_alive_ms, "must be whole seconds");
    for (size_t i = 0; i < a->failover_count; i++) {
        char msg[300];
        if (host_port_problem(a->failover[i], 0, msg, sizeof msg) != NULL)
            sb_adapter_error_at_element(chk, &a->failover, i, "%s", msg);
    }
}

/* tls: a server needs cert and key, a client a ca (or verify: false). */
void sb_stream_validate_tls(sb_adapter_check *chk, sb_adapter_config *cfg)
{
    sb_stream_settings *a = SB_SETTINGS(sb_stream_settings, cfg);
    int any = 0, server = a->listen != NULL;
    void *const keys[] = {&a->tls_cert,        &a->tls_key,         &a->tls_ca,
                          &a->tls_ciphers,     &a->tls_server_name, &a->tls_min_version,
                          &a->tls_client_cert, &a->tls_verify};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        any |= sb_adapter_check_seen(chk, keys[i]) != SB_SEEN_NO;
    if (!any)
        return;
    if (server) {
        if (a->tls_cert == NULL || a->tls_key == NULL)
            sb_adapter_error_at(chk, "tls", "a TLS listener needs cert and key");
        if (a->tls_client_cert != SB_CLIENT_CERT_NONE && a->tls_ca == NULL)
            sb_adapter_error_at(
                chk, "tls", "client_cert %s needs ca (the CA that issues client certificates)",
                a->tls_client_cert == SB_CLIENT_CERT_REQUIRE ? "require" : "optional");
    } else {
        if (a->tls_ca == NULL && a->tls_verify)
            sb_adapter_error_at(chk, "tls",
                                "a TLS client needs ca (a PEM file, or system) to verify the "
                                "server, or verify: false");
        if ((a->tls_cert == NULL) != (a->tls_key == NULL))
            sb_adapter_error_at(chk, "tls", "a client certificate needs both cert and key");
    }
}

/* A listener that refuses anonymous clients must have a way to know who
 * connects: MQTT user names (broker.auth.password_file) or client
 * certificates. */
static void check_anonymous(sb_adapter_check *chk, sb_adapter_config *cfg, int mqtt)
{
    const sb_stream_settings *a = SB_STREAM_CFG(cfg);
    const sb_broker_config *bc = &sb_adapter_check_config(chk)->broker;
    int by_password = mqtt && bc->auth_password_file != NULL;
    int by_cert = a->tls_client_cert != SB_CLIENT_CERT_NONE;
    const char *where = a->listen != NULL ? a->listen : a->path;
    if (sb_stream_anonymous(cfg) || by_password || by_cert || where == NULL)
        return;
    if (a->anonymous == 0)
        sb_adapter_error_at(chk, NULL,
                            "anonymous: false, but clients of %s cannot authenticate: set "
                            "tls.client_cert%s",
                            where, mqtt ? " or broker.auth.password_file" : "");
    else
        sb_adapter_error_at(chk, NULL,
                            "%s is not a loopback address, so anonymous clients are refused, and "
                            "this listener has no way to authenticate them: set "
                            "tls.client_cert%s, or anonymous: true to accept anyone who can "
                            "reach it",
                            where, mqtt ? " or broker.auth.password_file" : "");
}

/* The acknowledged mode's reply frames (raw only: the rows say so):
 * reply_error needs reply; with line framing a reply is one line. */
static void check_replies(sb_adapter_check *chk, const sb_stream_settings *a)
{
    char *const *keys[] = {&a->reply, &a->reply_error};
    int line = a->framing == NULL || strcmp(a->framing, "line") == 0;
    if (a->protocol != NULL && strcmp(a->protocol, "raw") != 0)
        return;
    for (size_t i = 0; i < 2; i++) {
        int seen = sb_adapter_check_seen(chk, keys[i]);
        if (seen == SB_SEEN_OK && line && strchr(*keys[i], '\n') != NULL)
            sb_adapter_error_at_value(
                chk, keys[i],
                "must not contain a newline with line framing (a reply is one line)");
        else if (seen != SB_SEEN_NO && i == 1 && a->reply == NULL)
            sb_adapter_error_at_key(chk, keys[i], "needs reply (the answer to a committed frame)");
    }
}

/* Which framings the type takes; reported at the framing value. */
static const char *framing_problem(const char *type, const char *framing)
{
    int udp = strcmp(type, "udp") == 0, mailslot = strcmp(type, "mailslot") == 0;
    if (udp && strcmp(framing, "datagram") != 0)
        return "must be datagram for type udp";
    if (mailslot && strcmp(framing, "message") != 0)
        return "must be message for type mailslot";
    if (!udp && strcmp(framing, "datagram") == 0)
        return "datagram framing is only valid for type udp";
    if (!mailslot && strcmp(type, "pipe") != 0 && strcmp(framing, "message") == 0)
        return "message framing is only valid for types pipe and mailslot";
    return NULL;
}

static int has_key(const sb_adapter_config *cfg, const char *key)
{
    for (size_t i = 0; i < cfg->keys->table.count; i++)
        if (strcmp(cfg->keys->table.keys[i].key, key) == 0)
            return 1;
    return 0;
}

/* The members a type has no key for keep the values every endpoint type
 * had before types owned their keys: the shared code (conn.c, the
 * protocols) reads them whatever the type. */
static void absent_defaults(const sb_adapter_config *cfg, sb_stream_settings *a)
{
    if (!has_key(cfg, "max_connections"))
        a->max_connections = 64;
    if (!has_key(cfg, "idle_timeout"))
        a->idle_timeout_ms = -1;
    if (!has_key(cfg, "frame_timeout"))
        a->frame_timeout_ms = 30 * SB_SECONDS;
    if (!has_key(cfg, "reconnect_backoff"))
        a->reconnect_backoff_ms = 500;
    if (!has_key(cfg, "reconnect_max_backoff"))
        a->reconnect_max_backoff_ms = 30 * SB_SECONDS;
    if (!has_key(cfg, "anonymous"))
        a->anonymous = -1;
    if (!has_key(cfg, "tls"))
        a->tls_verify = 1;
    if (!has_key(cfg, "max_queued"))
        a->max_queued = 100000;
    if (!has_key(cfg, "read_ahead"))
        a->read_ahead = 64;
}

void sb_stream_validate(sb_adapter_check *chk, sb_adapter_config *cfg, const sb_stream_kind *kind,
                        const char *default_framing)
{
    static const char *const placeholders[] = {"{adapter}", "{peer}", NULL};
    sb_stream_settings *a = SB_SETTINGS(sb_stream_settings, cfg);
    int jsonl, mqtt, listen_bad = 0;
    const char *why;

    absent_defaults(cfg, a);

    if (kind->server_key != NULL) {
        char **server = strcmp(kind->server_key, "listen") == 0 ? &a->listen : &a->path;
        int ss = sb_adapter_check_seen(chk, server), cs = sb_adapter_check_seen(chk, &a->connect);
        if (ss != SB_SEEN_NO && cs != SB_SEEN_NO)
            sb_adapter_error_at_key(chk, &a->connect, "cannot be combined with %s",
                                    kind->server_key);
        else if (ss == SB_SEEN_NO && cs == SB_SEEN_NO)
            sb_adapter_error_at(chk, NULL, "needs %s (server) or connect (client)",
                                kind->server_key);
        if (kind->host_port) {
            /* a refused address says nothing about who may connect */
            listen_bad = check_host_port(chk, &a->listen, 1);
            (void)check_host_port(chk, &a->connect, 0);
        }
    }

    mqtt = a->protocol != NULL && strcmp(a->protocol, "mqtt") == 0;
    if (mqtt && (!kind->stream || kind->server_key == NULL ||
                 (a->connect != NULL && !kind->host_port)))
        sb_adapter_error_at_value(chk, &a->protocol,
                                  "mqtt is served on listeners (tcp listen, unix or pipe path) "
                                  "and spoken as a client over tcp connect (a bridge)");
    if (mqtt && a->connect != NULL && kind->host_port)
        check_bridge(chk, a);
    else if (a->failover_count > 0 && sb_adapter_check_key(chk, &a->failover) != NULL &&
             strcmp(sb_adapter_check_key(chk, &a->failover), "connect") == 0)
        sb_adapter_error_at_key(chk, &a->connect,
                                "takes several addresses only for an MQTT client (protocol "
                                "mqtt); this client connects to one");
    check_replies(chk, a);
    if (!listen_bad)
        check_anonymous(chk, cfg, mqtt);

    jsonl = a->protocol != NULL && strcmp(a->protocol, "jsonl") == 0;
    if (jsonl && !kind->stream) {
        sb_adapter_error_at_value(chk, &a->protocol,
                                  "jsonl needs a stream adapter (tcp, unix, pipe or exec), not %s",
                                  kind->type);
    } else if ((jsonl || mqtt) && sb_adapter_check_seen(chk, &a->framing) != SB_SEEN_NO) {
        sb_adapter_error_at_key(chk, &a->framing, "not allowed with protocol %s",
                                jsonl ? "jsonl (one JSON object per line)" : "mqtt");
    } else if (sb_adapter_check_seen(chk, &a->framing) == SB_SEEN_OK &&
               (why = framing_problem(kind->type, a->framing)) != NULL) {
        sb_adapter_error_at_value(chk, &a->framing, "%s", why);
    }
    /* jsonl is line-delimited; streams default to lines, udp to datagrams,
     * mailslots to one message per mailslot message */
    if (a->framing == NULL)
        (void)sb_adapter_check_set_string(chk, &a->framing, default_framing);

    sb_adapter_check_sddl(chk, &a->security);
    sb_adapter_check_backoff(chk, &a->reconnect_backoff_ms, "reconnect_backoff",
                             &a->reconnect_max_backoff_ms, "reconnect_max_backoff");
    (void)sb_adapter_check_topic(chk, &a->topic, placeholders, "{adapter}, {peer}");
}
