/*
 * The keys of type com (docs/com.md): the endpoint COM relays talk to.
 * Shared by com_keys.c (portable: check-config checks them everywhere) and
 * the implementation (win/com.c).
 */
#ifndef SB_COM_KEYS_H
#define SB_COM_KEYS_H

#include "config/adapter_keys.h"

#include <stdint.h>

typedef struct sb_com_settings {
    char *endpoint;      /* endpoint: the pipe name, default "switchboard-com" */
    char *security;      /* security: the pipe's SDDL; NULL = the pipe's safe default */
    int64_t max_message; /* max_message: the largest payload, default 16 MiB */
    int max_connections; /* max_connections: relays and subscriptions at once, default 256 */
} sb_com_settings;

extern const sb_adapter_keys sb_com_keys;

#endif
