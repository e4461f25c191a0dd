/*
 * MIDL_user_allocate and MIDL_user_free, which the RPC stubs call to
 * allocate and free what they unmarshal. A program defines them once: the
 * broker (server stub) and the client library share these, over sb_malloc.
 */
#include "service/alloc.h"

#include <windows.h>

#include <rpc.h>

void *__RPC_USER MIDL_user_allocate(SIZE_T n)
{
    return sb_malloc(n > 0 ? n : 1);
}

void __RPC_USER MIDL_user_free(void *p)
{
    sb_free(p);
}
