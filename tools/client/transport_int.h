/*
 * The client's internal transport interface: a byte stream to the broker.
 *
 * One platform file implements it (posix/transport.c: Unix sockets and TCP;
 * win/transport.c: named pipes and TCP through Winsock), chosen by CMake. The
 * portable client (client.c) only sees this struct of function pointers.
 * Timeouts are in milliseconds; -1 waits forever, 0 does not wait.
 */
#ifndef SB_CLIENT_TRANSPORT_INT_H
#define SB_CLIENT_TRANSPORT_INT_H

#include "service/error.h"
#include "tools/client/client.h"
#include "tools/client/endpoint.h"

#include <stddef.h>

typedef struct sb_transport sb_transport;

typedef struct sb_transport_ops {
    /* Reads at most cap bytes (at least 1 on success). Returns 0, SB_ETIMEDOUT
     * if nothing arrived in time, SB_ECLOSED at end of stream, or another
     * SB_E* code with err naming the endpoint and the system error. */
    int (*read)(sb_transport *t, void *buf, size_t cap, size_t *out_n, int timeout_ms,
                sb_error *err);
    /* Writes all len bytes, waiting at most timeout_ms in total. */
    int (*write)(sb_transport *t, const void *buf, size_t len, int timeout_ms, sb_error *err);
    /* Closes the stream and frees t. */
    void (*close)(sb_transport *t);
} sb_transport_ops;

struct sb_transport {
    const sb_transport_ops *ops;
};

/* Opens a stream to ep, waiting at most timeout_ms. On failure err reads
 * "cannot connect to unix:./data/admin.sock: No such file or directory"
 * (the system's text), and sys holds the system error code. */
int sb_client__transport_open(sb_transport **out, const sb_endpoint *ep, int timeout_ms,
                              sb_error *err);

/* Windows: rpc: endpoints, the jsonl protocol over the MS-RPC interface
 * (win/rpc_bridge.c). Same contract as sb_client__transport_open. */
int sb_client__rpc_open(sb_transport **out, const sb_endpoint *ep, int timeout_ms, sb_error *err);

/* tls:HOST:PORT: TLS (tls.c, OpenSSL) over the TCP stream inner, which it
 * takes over (closed on failure too); the handshake ends within
 * timeout_ms. On failure err reads "cannot connect to tls:HOST:PORT: the
 * broker's certificate is not trusted: ..." or names the file or OpenSSL's
 * reason. */
int sb_client__tls_open(sb_transport **out, sb_transport *inner, const sb_endpoint *ep,
                        const sb_client_tls *o, int timeout_ms, sb_error *err);

/* The platform's default admin endpoint when $SB_ADMIN is not set. */
const char *sb_client__platform_default_endpoint(void);

/* A monotonic clock in nanoseconds. */
unsigned long long sb_client__now_ns(void);

#endif
