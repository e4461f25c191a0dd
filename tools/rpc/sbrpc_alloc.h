/*
 * sbrpc_alloc.h: memory of switchboard.idl's wire types, shared by the
 * broker (server stub) and the client library (client stub). Both stubs
 * allocate with MIDL_user_allocate and free with MIDL_user_free, defined once
 * per program in sbrpc_alloc.c over sb_malloc; a delivery or dead letter
 * that either side built or unmarshalled is freed here.
 */
#ifndef SB_RPC_ALLOC_H
#define SB_RPC_ALLOC_H

#include <windows.h>

#include "switchboard_h.h"

/* Frees what w points to (topic, payload, headers: MIDL_user_free), not w
 * itself, and zeroes it. */
void sb_rpc__wire_free(SB_RPC_DELIVERY *w);

/* The same for a dead letter. */
void sb_rpc__dead_free(SB_RPC_DEAD_LETTER *w);

#endif
