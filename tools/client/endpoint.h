/*
 * Broker endpoints as sbctl and other clients name them.
 *
 * An endpoint string is one of
 *   unix:PATH           a Unix domain socket
 *   tcp:HOST:PORT       TCP; HOST may be a name, an IPv4 or a [bracketed] IPv6 address
 *   HOST:PORT           the same, when PORT is a number and there is no '/'
 *   tls:HOST:PORT       TLS over TCP (a tcp adapter with a tls: section)
 *   \\.\pipe\NAME       a Windows named pipe (also \\SERVER\pipe\NAME, pipe:NAME)
 *   rpc:NAME            Switchboard's MS-RPC interface over ncalrpc endpoint NAME
 *   rpc:HOST:PORT       the same over ncacn_ip_tcp (Windows; tools/rpc/sbrpc.h)
 *   PATH                anything else is a Unix socket path
 * Parsing is pure (no I/O), so it behaves the same on every platform; whether
 * a kind can be opened is the transport's business (transport_int.h).
 */
#ifndef SB_CLIENT_ENDPOINT_H
#define SB_CLIENT_ENDPOINT_H

#include "service/error.h"

typedef enum {
    SB_ENDPOINT_UNIX = 1,
    SB_ENDPOINT_TCP = 2,
    SB_ENDPOINT_PIPE = 3,
    SB_ENDPOINT_RPC = 4
} sb_endpoint_kind;

#define SB_ENDPOINT_PATH_MAX 1024
#define SB_ENDPOINT_HOST_MAX 256

typedef struct sb_endpoint {
    sb_endpoint_kind kind;
    char path[SB_ENDPOINT_PATH_MAX]; /* unix: socket path; pipe: full \\.\pipe\NAME;
                                        rpc: NAME or HOST:PORT */
    char host[SB_ENDPOINT_HOST_MAX]; /* tcp: host name or address, without brackets */
    int port;                        /* tcp: 1..65535 */
    int tls;                         /* tcp: tls:HOST:PORT (kind SB_ENDPOINT_TCP) */
    char display[SB_ENDPOINT_PATH_MAX +
                 16]; /* canonical form: unix:PATH, tcp:HOST:PORT, tls:HOST:PORT, \\.\pipe\NAME */
} sb_endpoint;

/* Parses `s` into *out. Returns 0, or SB_EINVAL with a one-line reason in
 * err (e.g. "endpoint tcp:host:99999: port must be between 1 and 65535"). */
int sb_endpoint_parse(sb_endpoint *out, const char *s, sb_error *err);

#endif
