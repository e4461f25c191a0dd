/* The built-in adapter table: one line per type, each defined in its folder. */
#include "adapters/builtin.h"

extern const sb_adapter_type sb_adapter_tcp;  /* socket/stream.c */
extern const sb_adapter_type sb_adapter_udp;  /* socket/udp.c */
extern const sb_adapter_type sb_adapter_exec; /* exec/exec.c */
#ifdef _WIN32
extern const sb_adapter_type sb_adapter_pipe_win; /* pipe/win/pipe.c */
extern const sb_adapter_type sb_adapter_mailslot; /* mailslot/win/mailslot.c */
extern const sb_adapter_type sb_adapter_dde;      /* dde/win/dde.c */
extern const sb_adapter_type sb_adapter_com;      /* com/win/com.c */
#else
extern const sb_adapter_type sb_adapter_unix;      /* socket/stream.c */
extern const sb_adapter_type sb_adapter_pipe_unix; /* socket/stream.c: `pipe` is a Unix socket */
#endif

const sb_adapter_type *const sb_adapters_builtin[] = {
    &sb_adapter_tcp,
    &sb_adapter_udp,
    &sb_adapter_exec,
#ifdef _WIN32
    &sb_adapter_pipe_win,
    &sb_adapter_mailslot,
    &sb_adapter_dde,
    &sb_adapter_com,
#else
    &sb_adapter_unix,
    &sb_adapter_pipe_unix,
#endif
    NULL,
};
