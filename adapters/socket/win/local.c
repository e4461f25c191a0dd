/* Unix domain sockets on Windows: not offered (use type: pipe, a named pipe). */
#include "adapters/socket/socket.h"

int sb_socket_bind_local(uv_pipe_t *h, const char *path, sb_error *err)
{
    (void)h;
    return sb_error_set(err, SB_ECONFIG, 0,
                        "%s: Unix domain sockets are not available on Windows; use type: pipe",
                        path);
}

void sb_socket_unlink_local(const char *path)
{
    (void)path;
}
