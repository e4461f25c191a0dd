/*
 * The settings of type rpc (the MS-RPC adapter, rpc/win/): the protocol
 * sequence and its endpoint, who may call, and the limits on calls.
 */
#ifndef SB_RPC_KEYS_H
#define SB_RPC_KEYS_H

#include "config/adapter_keys.h"

#include <stdint.h>

typedef enum { SB_RPC_NCALRPC = 0, SB_RPC_NCACN_IP_TCP } sb_rpc_protseq;

typedef struct sb_rpc_settings {
    int protseq;    /* sb_rpc_protseq: ncalrpc (default) | ncacn_ip_tcp */
    char *endpoint; /* ncalrpc: the endpoint name, default "switchboard" */
    int port;       /* ncacn_ip_tcp: the port (required) */
    int remote;     /* ncacn_ip_tcp: authenticated callers from other computers, default false */
    int anonymous;  /* callers without an identity (from this computer), default false */
    char *security; /* ncalrpc: the endpoint's SDDL; NULL: the safe default */
    int64_t max_message; /* the largest payload, default 1MiB, 1..64MiB */
    int max_calls;       /* calls in progress at once, default 64, 1..10000 */
    int max_pulls;       /* pulls waiting at once, default 32, 0..10000 */
    int64_t max_wait_ms; /* the longest a pull waits, default 30s, 0..10m */
} sb_rpc_settings;

extern const sb_adapter_keys sb_rpc_keys;

#endif
