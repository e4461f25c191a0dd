/*
 * rpc_bare: a bare server of switchboard.idl, the baseline of
 * tools/bench/rpc-bench.sh. SbOpen and SbPublish do nothing but answer
 * (a session, the next message id); the other procedures answer
 * SB_RPC_EUNKNOWN (named sb_rpc__<name>, as tools/rpc's stub calls
 * them). Same interface, same stubs and runtime as the broker's
 * rpc adapter: what the broker adds is what the benchmark measures.
 *
 *     rpc_bare ENDPOINT        serves ncalrpc ENDPOINT; prints READY
 */
#include <stdio.h>
#include <stdlib.h>

#include <windows.h>

#include "switchboard_h.h"

static volatile LONG64 next_id;
static char session_tag;

LONG sb_rpc__SbOpen(SB_RPC_SESSION *session, LONG *flags, SB_RPC_TEXT *why)
{
    *session = &session_tag;
    *flags = 0;
    why->text = NULL;
    return 0;
}

LONG sb_rpc__SbClose(SB_RPC_SESSION *session)
{
    *session = NULL;
    return 0;
}

void __RPC_USER SB_RPC_SESSION_rundown(SB_RPC_SESSION session)
{
    (void)session;
}

void __RPC_USER SB_RPC_SUB_rundown(SB_RPC_SUB sub)
{
    (void)sub;
}

LONG sb_rpc__SbPublish(SB_RPC_SESSION session, const char *topic, ULONG payload_size,
                       const byte *payload, ULONG header_count, const SB_RPC_HEADER *headers,
                       const SB_RPC_PUB_OPTIONS *options, MIDL_uhyper *msg_id, LONG *queues,
                       SB_RPC_TEXT *why)
{
    *msg_id = (MIDL_uhyper)InterlockedIncrement64(&next_id);
    *queues = 1;
    why->text = NULL;
    return 0;
}

LONG sb_rpc__SbSubscribe(SB_RPC_SESSION session, const char *name, const char *filter,
                         const SB_RPC_SUB_OPTIONS *options, SB_RPC_SUB *sub, SB_RPC_TEXT *filters,
                         SB_RPC_TEXT *why)
{
    *sub = NULL;
    filters->text = NULL;
    why->text = NULL;
    return SB_RPC_EUNKNOWN;
}

LONG sb_rpc__SbPull(SB_RPC_SUB sub, ULONG max, ULONG wait_ms, ULONG *count,
                    SB_RPC_DELIVERY **deliveries, SB_RPC_TEXT *why)
{
    *count = 0;
    *deliveries = NULL;
    why->text = NULL;
    return SB_RPC_EUNKNOWN;
}

LONG sb_rpc__SbAck(SB_RPC_SUB sub, ULONG count, const MIDL_uhyper *ids, ULONG *done,
                   SB_RPC_TEXT *why)
{
    *done = 0;
    why->text = NULL;
    return SB_RPC_EUNKNOWN;
}

LONG sb_rpc__SbNack(SB_RPC_SUB sub, ULONG count, const MIDL_uhyper *ids, const char *reason,
                    ULONG *done, SB_RPC_TEXT *why)
{
    *done = 0;
    why->text = NULL;
    return SB_RPC_EUNKNOWN;
}

LONG sb_rpc__SbUnsubscribe(SB_RPC_SUB *sub, LONG delete_sub, SB_RPC_TEXT *why)
{
    *sub = NULL;
    why->text = NULL;
    return 0;
}

LONG sb_rpc__SbStats(SB_RPC_SESSION session, SB_RPC_TEXT *json, SB_RPC_TEXT *why)
{
    json->text = NULL;
    why->text = NULL;
    return SB_RPC_EUNKNOWN;
}

LONG sb_rpc__SbDlqList(SB_RPC_SESSION session, const char *sub, hyper after, ULONG limit,
                       ULONG *count, SB_RPC_DEAD_LETTER **items, hyper *next, SB_RPC_TEXT *why)
{
    *count = 0;
    *items = NULL;
    *next = 0;
    why->text = NULL;
    return SB_RPC_EUNKNOWN;
}

LONG sb_rpc__SbDlqRedrive(SB_RPC_SESSION session, const char *sub, hyper *count, SB_RPC_TEXT *why)
{
    *count = 0;
    why->text = NULL;
    return SB_RPC_EUNKNOWN;
}

LONG sb_rpc__SbDlqPurge(SB_RPC_SESSION session, const char *sub, hyper *count, SB_RPC_TEXT *why)
{
    *count = 0;
    why->text = NULL;
    return SB_RPC_EUNKNOWN;
}

LONG sb_rpc__SbWhoAmI(SB_RPC_SESSION session, SB_RPC_TEXT *user, LONG *flags, SB_RPC_TEXT *why)
{
    user->text = NULL;
    *flags = 0;
    why->text = NULL;
    return 0;
}

int main(int argc, char **argv)
{
    wchar_t ep[256];
    RPC_STATUS st;
    if (argc != 2) {
        fprintf(stderr, "usage: rpc_bare ENDPOINT\n");
        return 2;
    }
    MultiByteToWideChar(CP_UTF8, 0, argv[1], -1, ep, 256);
    st = RpcServerUseProtseqEpW((RPC_WSTR)L"ncalrpc", RPC_C_PROTSEQ_MAX_REQS_DEFAULT, (RPC_WSTR)ep,
                                NULL);
    if (st == RPC_S_OK)
        st = RpcServerRegisterIf2(sb_rpc__Switchboard_v1_0_s_ifspec, NULL, NULL,
                                  RPC_IF_AUTOLISTEN | RPC_IF_ALLOW_CALLBACKS_WITH_NO_AUTH,
                                  RPC_C_LISTEN_MAX_CALLS_DEFAULT, (unsigned)-1, NULL);
    if (st != RPC_S_OK) {
        fprintf(stderr, "rpc_bare: RPC status %ld\n", (long)st);
        return 1;
    }
    printf("READY\n");
    fflush(stdout);
    Sleep(INFINITE);
    return 0;
}
