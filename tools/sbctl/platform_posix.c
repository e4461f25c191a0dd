/*
 * POSIX specifics of sbctl: terminal detection and signal dispositions. A
 * platform_win.c would also switch stdin/stdout to binary mode (payloads are
 * bytes) and the console to UTF-8.
 */
#include "tools/sbctl/sbctl.h"

#include <signal.h>
#include <unistd.h>

void sbctl_platform_init(void)
{
    /* Writing to a closed stdout (sbctl sub | head) should end sbctl quietly
     * before it acknowledges a message it could not print; a parent may have
     * left SIGPIPE ignored. Socket writes use MSG_NOSIGNAL instead. */
    signal(SIGPIPE, SIG_DFL);
}

int sbctl_isatty(int fd)
{
    return isatty(fd);
}
