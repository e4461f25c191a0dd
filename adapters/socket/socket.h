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

#endif
