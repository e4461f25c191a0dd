/*
 * The keys of type rpc. Portable, so check-config checks RPC
 * configurations everywhere.
 *
 * protseq ncalrpc takes endpoint (a name) and security; ncacn_ip_tcp takes
 * port (required) and remote. MS-RPC listens on every address, so callers
 * from other computers are refused unless remote: true, and those must
 * authenticate: remote: true with anonymous: true is refused.
 */
#include "adapters/rpc/rpc_keys.h"

#include <stdio.h>
#include <string.h>

#define R(m) offsetof(sb_rpc_settings, m)

static const char *const protseqs[] = {"ncalrpc", "ncacn_ip_tcp", NULL};
_Static_assert(SB_RPC_NCALRPC == 0 && SB_RPC_NCACN_IP_TCP == 1, "protseqs follows sb_rpc_protseq");

static const sb_config_key rpc_rows[] = {
    {.key = "protseq",
     .kind = SB_KEY_ENUM,
     .offset = R(protseq),
     .def = SB_RPC_NCALRPC,
     .choices = protseqs},
    {.key = "endpoint", .kind = SB_KEY_STRING, .offset = R(endpoint), .def_str = "switchboard"},
    {.key = "port", .kind = SB_KEY_INT, .offset = R(port), .min = 1, .max = 65535},
    {.key = "remote", .kind = SB_KEY_BOOL, .offset = R(remote), .def = 0},
    {.key = "anonymous", .kind = SB_KEY_BOOL, .offset = R(anonymous), .def = 0},
    {.key = "security", .kind = SB_KEY_STRING, .offset = R(security)},
    {.key = "max_message",
     .kind = SB_KEY_SIZE,
     .offset = R(max_message),
     .def = 1048576,
     .min = 1,
     .max = 67108864},
    {.key = "max_calls",
     .kind = SB_KEY_INT,
     .offset = R(max_calls),
     .def = 64,
     .min = 1,
     .max = 10000},
    {.key = "max_pulls",
     .kind = SB_KEY_INT,
     .offset = R(max_pulls),
     .def = 32,
     .min = 0,
     .max = 10000},
    {.key = "max_wait",
     .kind = SB_KEY_DURATION,
     .offset = R(max_wait_ms),
     .def = 30 * SB_SECONDS,
     .min = 0,
     .max = 10 * SB_MINUTES},
};

static void rpc_validate(sb_adapter_check *chk, sb_adapter_config *cfg)
{
    sb_rpc_settings *s = SB_SETTINGS(sb_rpc_settings, cfg);
    char q[96];

    if (s->protseq == SB_RPC_NCACN_IP_TCP) {
        if (sb_adapter_check_seen(chk, &s->endpoint) != SB_SEEN_NO)
            sb_adapter_error_at_key(chk, &s->endpoint,
                                    "only for protseq ncalrpc (ncacn_ip_tcp takes port)");
        if (sb_adapter_check_seen(chk, &s->security) != SB_SEEN_NO)
            sb_adapter_error_at_key(chk, &s->security,
                                    "only for protseq ncalrpc (a TCP endpoint has no security "
                                    "descriptor: callers are checked as they call)");
        if (sb_adapter_check_seen(chk, &s->port) == SB_SEEN_NO)
            sb_adapter_error_at(chk, "port", "required for protseq ncacn_ip_tcp");
        if (s->remote && s->anonymous)
            sb_adapter_error_at_key(chk, &s->remote,
                                    "remote: true needs authenticated callers, but anonymous is "
                                    "true (callers from other computers must authenticate)");
    } else {
        if (sb_adapter_check_seen(chk, &s->port) != SB_SEEN_NO)
            sb_adapter_error_at_key(chk, &s->port, "only for protseq ncacn_ip_tcp");
        if (sb_adapter_check_seen(chk, &s->remote) != SB_SEEN_NO)
            sb_adapter_error_at_key(chk, &s->remote, "only for protseq ncacn_ip_tcp");
        if (sb_adapter_check_seen(chk, &s->endpoint) == SB_SEEN_OK &&
            (strpbrk(s->endpoint, "\\/: ") != NULL || strlen(s->endpoint) > 100))
            sb_adapter_error_at_value(chk, &s->endpoint,
                                      "an ncalrpc endpoint is a name of at most 100 characters "
                                      "without '\\', '/', ':' or blanks, got %s",
                                      sb_config_quote(q, sizeof q, s->endpoint));
        sb_adapter_check_sddl(chk, &s->security);
    }
}

static int rpc_destination(const sb_adapter_config *cfg, char *why, size_t n)
{
    snprintf(why, n,
             "adapter %s (type rpc) cannot be a destination: clients pull from a route's queue "
             "(SbSubscribe with the route's name)",
             cfg->name);
    return 0;
}

const sb_adapter_keys sb_rpc_keys = {
    .version = SB_ADAPTER_KEYS_VERSION,
    .type = "rpc",
    .table = SB_CONFIG_TABLE(rpc_rows),
    .settings_size = sizeof(sb_rpc_settings),
    .validate = rpc_validate,
    .destination = rpc_destination,
};
