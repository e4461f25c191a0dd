/* Helpers shared by the socket adapters (addresses, local sockets). */
#ifndef SB_SOCKET_H
#define SB_SOCKET_H

#include "service/error.h"

#include <stddef.h>
#include <uv.h>

/* Parses "host:port", "[v6]:port" or ":port" (all interfaces) with a numeric
 * host. Returns 0 or SB_ECONFIG with err naming the address. */
int sb_socket_parse_addr(const char *addr, struct sockaddr_storage *out, sb_error *err);

/* Formats an address as "1.2.3.4:5" / "[::1]:5". */
void sb_socket_format_addr(const struct sockaddr *sa, char *out, size_t n);

/* Binds a local (Unix domain) socket at path. A stale socket file left by a
 * crashed broker is replaced; one a live process listens on is not
 * (SB_EADDRINUSE). Platform-specific: adapters/socket/posix/. */
int sb_socket_bind_local(uv_pipe_t *h, const char *path, sb_error *err);
void sb_socket_unlink_local(const char *path);

/* Binds tcp handle h (initialised, not bound) to addr; text names it in
 * errors. Unlike uv_tcp_bind, an address in use is reported here
 * (SB_EADDRINUSE). Platform-specific: adapters/socket/<os>/accept.c. */
int sb_socket_bind_tcp(uv_tcp_t *h, const struct sockaddr *addr, const char *text, sb_error *err);

/* Accepting connections on a bound handle. On POSIX the broker accepts by
 * itself, so that running out of descriptors (EMFILE, ENFILE) is logged
 * once per episode and accepting backs off and resumes, where libuv would
 * silently drop the waiting clients; on Windows libuv accepts. */
typedef struct sb_socket_listener sb_socket_listener;

/* A connection arrived: h is an open tcp or pipe stream (sb_malloc'ed),
 * now the callee's to use and to close. */
typedef void (*sb_socket_accept_cb)(void *ctx, uv_stream_t *h);

/* Listens on h (bound; a tcp handle if is_tcp, else a pipe) and calls cb
 * for each connection. name is the adapter (logs), text the address
 * (errors). h->data is the listener's until sb_socket_listener_close, which
 * sets it to ctx. Returns 0 or an SB_E* code with err set. */
int sb_socket_listen(sb_socket_listener **out, uv_stream_t *h, int is_tcp, sb_socket_accept_cb cb,
                     void *ctx, const char *name, const char *text, sb_error *err);

/* Stops accepting at once (close h after it), frees the listener and calls
 * closed(ctx) once its own handles are closed. */
void sb_socket_listener_close(sb_socket_listener *l, void (*closed)(void *ctx));

#endif
