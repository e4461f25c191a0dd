/*
 * POSIX specifics of sbctl: terminal detection and signal dispositions
 * (platform_win.c has the Windows counterparts: a UTF-8 command line, binary
 * stdio, the console code page).
 */
#include "tools/sbctl/sbctl.h"

#include <signal.h>
#include <stdio.h>
#include <unistd.h>

void sbctl_platform_init(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    /* Writing to a closed stdout (sbctl sub | head) should end sbctl quietly
     * before it acknowledges a message it could not print; a parent may have
     * left SIGPIPE ignored. Socket writes use MSG_NOSIGNAL instead. */
    signal(SIGPIPE, SIG_DFL);
}

int sbctl_isatty(int fd)
{
    return isatty(fd);
}

FILE *sbctl_fopen(const char *path, const char *mode)
{
    return fopen(path, mode);
}

const char *sbctl_eof_key(void)
{
    return "Ctrl-D";
}
