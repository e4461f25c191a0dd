/*
 * Who calls, and whether the adapter lets them.
 *
 * The protocol sequence and the caller's address come from the binding the
 * runtime makes back to the client (RpcBindingServerFromClient: the string
 * binding names them); the authentication level from RpcBindingInqAuthClient;
 * the identity from the caller's token while impersonating it
 * (RpcImpersonateClient): its user SID, looked up as DOMAIN\name (the ACL
 * file's user name; the SID string when it cannot be looked up), SYSTEM, and
 * membership of Administrators as the token has it (a user whose UAC token
 * is not elevated has Administrators only for deny: not an administrator).
 * Over ncalrpc Windows gives the server the caller's token whether or not
 * the client asked for RPC authentication; over TCP only an authenticated
 * caller can be impersonated, an unauthenticated one is anonymous.
 *
 * Everything is asked of the current call (a NULL binding handle, or
 * I_RpcGetCurrentCallHandle): the interface has no binding handle
 * parameter. Wine's RpcServerInqCallAttributes is a stub that aborts the
 * call, so it is not used.
 *
 * Account names are cached by SID (lookups of domain accounts may ask a
 * domain controller), for CACHE_TTL_MS.
 */
#include "adapters/rpc/win/rpc_int.h"
#include "service/alloc.h"
#include "service/log.h"
#include "service/platform/win/utf.h"

#include <stdio.h>
#include <string.h>

#include <sddl.h>

#define CACHE_SIZE 64
#define CACHE_TTL_MS (10 * 60 * 1000)

typedef struct name_entry {
    BYTE sid[SECURITY_MAX_SID_SIZE];
    DWORD sid_len;
    ULONGLONG at; /* GetTickCount64 when looked up; 0: empty */
    char name[SB_RPC_USER_MAX];
} name_entry;

static SRWLOCK cache_lock = SRWLOCK_INIT;
static name_entry cache[CACHE_SIZE];
static unsigned cache_next;

/* The ACL name of sid: DOMAIN\name, or the SID string. */
static void account_name(char *out, size_t n, PSID sid)
{
    DWORD len = GetLengthSid(sid);
    ULONGLONG now = GetTickCount64();
    wchar_t user[256], dom[256], *text = NULL;
    DWORD un = 256, dn = 256;
    SID_NAME_USE use;
    char *u8;

    AcquireSRWLockShared(&cache_lock);
    for (int i = 0; i < CACHE_SIZE; i++) {
        name_entry *e = &cache[i];
        if (e->at != 0 && now - e->at < CACHE_TTL_MS && e->sid_len == len &&
            memcmp(e->sid, sid, len) == 0) {
            snprintf(out, n, "%s", e->name);
            ReleaseSRWLockShared(&cache_lock);
            return;
        }
    }
    ReleaseSRWLockShared(&cache_lock);

    if (LookupAccountSidW(NULL, sid, user, &un, dom, &dn, &use)) {
        wchar_t both[520];
        _snwprintf(both, 520, L"%ls\\%ls", dom, user);
        both[519] = 0;
        u8 = sb_wide_to_utf8(dom[0] != 0 ? both : user);
    } else if (ConvertSidToStringSidW(sid, &text)) {
        u8 = sb_wide_to_utf8(text);
        LocalFree(text);
    } else {
        u8 = NULL;
    }
    snprintf(out, n, "%s", u8 != NULL ? u8 : "");
    sb_free(u8);
    if (out[0] == '\0' || len > SECURITY_MAX_SID_SIZE)
        return;
    AcquireSRWLockExclusive(&cache_lock);
    {
        name_entry *e = &cache[cache_next++ % CACHE_SIZE];
        memcpy(e->sid, sid, len);
        e->sid_len = len;
        e->at = now != 0 ? now : 1;
        snprintf(e->name, sizeof e->name, "%s", out);
    }
    ReleaseSRWLockExclusive(&cache_lock);
}

static int is_loopback(const wchar_t *addr)
{
    if (addr == NULL)
        return 0;
    return wcsncmp(addr, L"127.", 4) == 0 || wcscmp(addr, L"::1") == 0 ||
           _wcsicmp(addr, L"0:0:0:0:0:0:0:1") == 0 || _wcsnicmp(addr, L"::ffff:127.", 11) == 0;
}

/* The protocol sequence and address of the binding back to the current
 * call's client. 1 if both could be read (new strings in *protseq and
 * *addr, RpcStringFreeW them), else 0. */
static int binding_back(RPC_WSTR *protseq, RPC_WSTR *addr)
{
    RPC_BINDING_HANDLE back = NULL, call = I_RpcGetCurrentCallHandle();
    RPC_WSTR str = NULL;
    int ok = 0;
    *protseq = *addr = NULL;
    if (call != NULL && RpcBindingServerFromClient(call, &back) == RPC_S_OK &&
        RpcBindingToStringBindingW(back, &str) == RPC_S_OK &&
        RpcStringBindingParseW(str, NULL, protseq, addr, NULL, NULL) == RPC_S_OK)
        ok = *protseq != NULL && (*protseq)[0] != 0;
    if (!ok) {
        if (*protseq != NULL)
            RpcStringFreeW(protseq);
        if (*addr != NULL)
            RpcStringFreeW(addr);
    }
    if (str != NULL)
        RpcStringFreeW(&str);
    if (back != NULL)
        RpcBindingFree(&back);
    return ok;
}

/* Protocol sequence and address from the binding back to the client. */
static void where_from(rpc_caller *c)
{
    RPC_WSTR protseq = NULL, addr = NULL;
    if (binding_back(&protseq, &addr)) {
        char *a8 = addr != NULL ? sb_wide_to_utf8((wchar_t *)addr) : NULL;
        c->tcp = _wcsicmp((wchar_t *)protseq, L"ncacn_ip_tcp") == 0;
        c->local = !c->tcp || is_loopback((wchar_t *)addr);
        if (c->tcp)
            snprintf(c->peer, sizeof c->peer, "ncacn_ip_tcp %s", a8 != NULL ? a8 : "?");
        else
            snprintf(c->peer, sizeof c->peer, "ncalrpc");
        sb_free(a8);
        RpcStringFreeW(&protseq);
        if (addr != NULL)
            RpcStringFreeW(&addr);
        return;
    }
    {
        /* The transport at least (Wine's answer is always LPC, but Wine's
         * RpcBindingServerFromClient works). */
        unsigned int type = 0;
        if (I_RpcBindingInqTransportType(I_RpcGetCurrentCallHandle(), &type) == RPC_S_OK &&
            type == TRANSPORT_TYPE_LPC) {
            c->tcp = 0;
            c->local = 1;
            snprintf(c->peer, sizeof c->peer, "ncalrpc");
        } else {
            c->tcp = 1;
            c->local = 0; /* the address is unknown: as if remote */
            snprintf(c->peer, sizeof c->peer, "ncacn_ip_tcp ?");
        }
    }
}

static void authentication(rpc_caller *c)
{
    RPC_AUTHZ_HANDLE privs = NULL;
    unsigned long level = 0, svc = 0;
    RPC_STATUS st = RpcBindingInqAuthClientW(NULL, &privs, NULL, &level, &svc, NULL);
    c->authenticated =
        st == RPC_S_OK && svc != RPC_C_AUTHN_NONE && level >= RPC_C_AUTHN_LEVEL_PKT_INTEGRITY;
}

/* The token's user and groups, impersonating the caller. */
static void identity(rpc_caller *c)
{
    union {
        TOKEN_USER user;
        BYTE buf[SECURITY_MAX_SID_SIZE + sizeof(TOKEN_USER)];
    } info;
    BYTE admins[SECURITY_MAX_SID_SIZE];
    DWORD n = sizeof admins;
    HANDLE token = NULL;
    BOOL member = FALSE;
    PSID sid;

    c->anonymous = 1;
    if (RpcImpersonateClient(NULL) != RPC_S_OK)
        return;
    if (!OpenThreadToken(GetCurrentThread(), TOKEN_QUERY, TRUE, &token)) {
        RpcRevertToSelf();
        return;
    }
    if (GetTokenInformation(token, TokenUser, &info, sizeof info, &n)) {
        sid = info.user.User.Sid;
        if (!IsWellKnownSid(sid, WinAnonymousSid)) {
            c->anonymous = 0;
            n = sizeof admins;
            c->admin = IsWellKnownSid(sid, WinLocalSystemSid) ||
                       (CreateWellKnownSid(WinBuiltinAdministratorsSid, NULL, admins, &n) &&
                        CheckTokenMembership(token, admins, &member) && member);
        }
    }
    CloseHandle(token);
    RpcRevertToSelf();
    if (!c->anonymous)
        account_name(c->user, sizeof c->user, info.user.User.Sid);
    if (c->user[0] == '\0')
        c->anonymous = 1;
}

void sb_rpc__caller_inspect(rpc_caller *c)
{
    memset(c, 0, sizeof(*c));
    where_from(c);
    authentication(c);
    identity(c);
    if (c->anonymous)
        c->admin = 0;
}

int sb_rpc__caller_admit(const rpc_settings *s, const rpc_caller *c, char *why, size_t n)
{
    if (!c->local && !s->remote) {
        snprintf(why, n,
                 "callers from other computers are refused (%s; the adapter has remote: false)",
                 c->peer);
        return SB_EAUTH;
    }
    if (!c->local && (!c->authenticated || c->anonymous)) {
        snprintf(why, n,
                 "a caller from another computer must authenticate (RPC_C_AUTHN_WINNT or "
                 "Negotiate, packet integrity or privacy) (%s)",
                 c->peer);
        return SB_EAUTH;
    }
    if (c->anonymous && !s->anonymous) {
        snprintf(why, n,
                 "unauthenticated callers are refused (%s); authenticate (RPC_C_AUTHN_WINNT) or "
                 "set anonymous: true on the adapter",
                 c->peer);
        return SB_EAUTH;
    }
    return 0;
}

RPC_STATUS CALLBACK sb_rpc__security_callback(RPC_IF_HANDLE ifh, void *ctx)
{
    rpc_caller c;
    rpc_adapter *a;
    char why[300];
    int rc;

    (void)ifh;
    (void)ctx;
    sb_rpc__caller_inspect(&c);
    a = sb_rpc__find(c.tcp);
    if (a == NULL)
        return RPC_S_OK; /* the procedure answers SB_RPC_ESHUTDOWN */
    rc = sb_rpc__caller_admit(&a->set, &c, why, sizeof why);
    if (rc != 0) {
        uv_mutex_lock(&a->lock);
        a->refused++;
        uv_mutex_unlock(&a->lock);
        sb_log(SB_LOG_WARN, a->name, "refused a call: %s", why);
    }
    sb_rpc__release(a);
    return rc == 0 ? RPC_S_OK : ERROR_ACCESS_DENIED;
}
