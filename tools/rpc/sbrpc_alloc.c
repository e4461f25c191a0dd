/*
 * MIDL_user_allocate and MIDL_user_free, which the RPC stubs call to
 * allocate and free what they unmarshal. A program defines them once: the
 * broker (server stub) and the client library share these, over sb_malloc,
 * and what frees the wire types of switchboard.idl (sbrpc_alloc.h).
 */
#include "tools/rpc/sbrpc_alloc.h"
#include "service/alloc.h"

#include <string.h>

#include <rpc.h>

void *__RPC_USER MIDL_user_allocate(SIZE_T n)
{
    return sb_malloc(n > 0 ? n : 1);
}

void __RPC_USER MIDL_user_free(void *p)
{
    sb_free(p);
}

static void headers_free(SB_RPC_HEADER *h, unsigned long n)
{
    if (h == NULL)
        return;
    for (unsigned long i = 0; i < n; i++) {
        MIDL_user_free(h[i].key);
        MIDL_user_free(h[i].value);
    }
    MIDL_user_free(h);
}

void sb_rpc__wire_free(SB_RPC_DELIVERY *w)
{
    MIDL_user_free(w->topic);
    MIDL_user_free(w->payload);
    headers_free(w->headers, w->header_count);
    memset(w, 0, sizeof(*w));
}

void sb_rpc__dead_free(SB_RPC_DEAD_LETTER *w)
{
    MIDL_user_free(w->sub);
    MIDL_user_free(w->topic);
    MIDL_user_free(w->payload);
    headers_free(w->headers, w->header_count);
    MIDL_user_free(w->reason);
    MIDL_user_free(w->source);
    memset(w, 0, sizeof(*w));
}
