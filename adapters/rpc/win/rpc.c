/*
 * The MS-RPC adapter (Windows): type `rpc`. Programs call the interface of
 * tools/rpc/switchboard.idl to publish, pull and acknowledge, locally over
 * ncalrpc (the default) or over ncacn_ip_tcp.
 *
 * The RPC runtime is the process's: the interface is registered once
 * (auto-listen) while at least one rpc adapter runs, and an endpoint, once
 * opened, stays open until the process exits (the runtime cannot close one),
 * with the security descriptor it was opened with. A call is served by the
 * adapter of its protocol sequence, so there is at most one rpc adapter per
 * protocol sequence; a call that comes in while none runs for its protocol
 * sequence is answered SB_RPC_ESHUTDOWN, and one that comes in while the
 * interface is not registered gets RPC_S_UNKNOWN_IF from the runtime. So a
 * process serves one endpoint per protocol sequence, the first it opened:
 * an adapter with another endpoint, or another security descriptor on it,
 * is refused (by a reload before it changes anything): calls to the old
 * endpoint would reach the new adapter, under the old descriptor.
 *
 * See rpc_int.h for the threads and what each file does.
 */
#include "adapters/rpc/win/rpc_int.h"
#include "adapters/rpc/rpc_keys.h"
#include "service/alloc.h"
#include "service/log.h"
#include "service/platform/win/security.h"
#include "service/platform/win/utf.h"

#include <stdio.h>
#include <string.h>

#include <sddl.h>

/* SYSTEM and Administrators: all; the interactive user: read and write (to
 * connect); no network or anonymous access. The broker's own account is
 * added. */
#define DEFAULT_SDDL L"D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GRGW;;;IU)"
/* The largest request the runtime takes (Windows honours it; Wine does not):
 * the interface's largest payload with room for the rest of a publish. */
#define MAX_RPC_SIZE (SB_RPC_MAX_PAYLOAD + 1024 * 1024)

static SRWLOCK registry_lock = SRWLOCK_INIT;
/* under registry_lock */
static rpc_adapter *slots[2]; /* [0] ncalrpc, [1] ncacn_ip_tcp */
static int if_registered;
static int auth_registered;
/* The endpoint this process opened for each protocol sequence, [0] ncalrpc
 * and [1] ncacn_ip_tcp: it stays open until the process exits. The config
 * keeps an ncalrpc endpoint to 100 characters, a port is a number. */
static struct {
    int open;
    char endpoint[128];
    char *security; /* ncalrpc: the SDDL it was opened with (NULL: the
                     * default); kept until the process exits, as the
                     * endpoint is */
} opened[2];

/* MIDL_user_allocate and MIDL_user_free are in tools/rpc/sbrpc_alloc.c. */

rpc_adapter *sb_rpc__find(int tcp)
{
    rpc_adapter *a;
    AcquireSRWLockShared(&registry_lock);
    a = slots[tcp ? 1 : 0];
    if (a != NULL)
        sb_rpc__retain(a);
    ReleaseSRWLockShared(&registry_lock);
    return a;
}

void sb_rpc__retain(rpc_adapter *a)
{
    uv_mutex_lock(&a->lock);
    a->refs++;
    uv_mutex_unlock(&a->lock);
}

static void settings_free(rpc_settings *s)
{
    sb_free(s->endpoint);
    sb_free(s->security);
}

static void adapter_free(rpc_adapter *a)
{
    uv_mutex_destroy(&a->lock);
    if (a->sd != NULL)
        LocalFree(a->sd);
    settings_free(&a->set);
    sb_free(a->wprotseq);
    sb_free(a->wendpoint);
    sb_free(a->name);
    sb_free(a);
}

void sb_rpc__release(rpc_adapter *a)
{
    int last;
    uv_mutex_lock(&a->lock);
    last = --a->refs == 0;
    uv_mutex_unlock(&a->lock);
    if (last)
        adapter_free(a);
}

char *sb_rpc__text(const char *s)
{
    size_t n;
    char *t;
    if (s == NULL)
        return NULL;
    n = strlen(s) + 1;
    t = MIDL_user_allocate(n);
    if (t != NULL)
        memcpy(t, s, n);
    return t;
}

/* ---- settings ---- */

static int settings_from(rpc_settings *s, const sb_adapter_config *cfg, sb_error *err)
{
    const sb_rpc_settings *k = SB_SETTINGS(const sb_rpc_settings, cfg);
    memset(s, 0, sizeof(*s));
    s->tcp = k->protseq == SB_RPC_NCACN_IP_TCP;
    if (s->tcp) {
        char port[16];
        snprintf(port, sizeof port, "%d", k->port);
        s->endpoint = sb_strdup(port);
    } else {
        s->endpoint = sb_strdup(k->endpoint != NULL ? k->endpoint : "switchboard");
    }
    s->remote = k->remote == 1;
    s->anonymous = k->anonymous == 1;
    s->max_calls = k->max_calls;
    s->max_pulls = k->max_pulls;
    s->max_wait_ms = k->max_wait_ms;
    s->max_message = k->max_message;
    s->security = k->security != NULL ? sb_strdup(k->security) : NULL;
    if (s->endpoint == NULL || (k->security != NULL && s->security == NULL)) {
        settings_free(s);
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    }
    return 0;
}

/* The ncalrpc endpoint's security descriptor: the configured SDDL, or the
 * default with the broker's own account added. */
static int make_sd(rpc_adapter *a, sb_error *err)
{
    wchar_t *w = NULL, *sid = NULL;
    char text[256];
    DWORD code = 0;
    int rc = 0;

    if (a->set.security != NULL) {
        w = sb_utf8_to_wide(a->set.security);
        if (w == NULL)
            return sb_error_set(err, SB_ECONFIG, 0,
                                "adapter %s: security: the SDDL is not valid UTF-8", a->name);
    } else {
        size_t n;
        sid = sb_win_own_sid(&code);
        if (sid == NULL) {
            sb_win_strerror(code, text, sizeof(text));
            return sb_error_set(err, sb_error_from_win32(code), (int)code,
                                "adapter %s: cannot read the process account's SID: %s", a->name,
                                text);
        }
        n = wcslen(DEFAULT_SDDL) + wcslen(sid) + 16;
        w = sb_malloc(n * sizeof(wchar_t));
        if (w == NULL) {
            LocalFree(sid);
            return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
        }
        _snwprintf(w, n, L"%ls(A;;GA;;;%ls)", DEFAULT_SDDL, sid);
        w[n - 1] = 0;
        LocalFree(sid);
    }
    if (!ConvertStringSecurityDescriptorToSecurityDescriptorW(w, SDDL_REVISION_1, &a->sd, NULL)) {
        code = GetLastError();
        sb_win_strerror(code, text, sizeof(text));
        a->sd = NULL;
        rc = sb_error_set(err, SB_ECONFIG, (int)code,
                          "adapter %s: security: invalid security descriptor \"%s\": %s", a->name,
                          a->set.security != NULL ? a->set.security : "(default)", text);
    }
    sb_free(w);
    return rc;
}

/* ---- the process's endpoints ---- */

static int same_str(const char *a, const char *b)
{
    return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/* 0 if the process may serve s (adapter `name`); SB_ECONFIG with err if it
 * opened another endpoint of s's protocol sequence, or this ncalrpc
 * endpoint with another security descriptor. Under registry_lock. */
static int fits_opened(const char *name, const rpc_settings *s, sb_error *err)
{
    const char *what = s->tcp ? "ncacn_ip_tcp" : "ncalrpc";
    const char *key = s->tcp ? "port" : "endpoint";

    if (!opened[s->tcp].open)
        return 0;
    if (strcmp(opened[s->tcp].endpoint, s->endpoint) != 0)
        return sb_error_set(err, SB_ECONFIG, 0,
                            "adapter %s: %s: this process serves %s on %s %s, which stays open "
                            "until it exits: endpoint/security of an RPC adapter change only "
                            "with a restart",
                            name, key, what, key, opened[s->tcp].endpoint);
    if (!s->tcp && !same_str(opened[0].security, s->security))
        return sb_error_set(err, SB_ECONFIG, 0,
                            "adapter %s: security: the ncalrpc endpoint %s keeps the security "
                            "descriptor it was opened with (%s) until the process exits: "
                            "endpoint/security of an RPC adapter change only with a restart",
                            name, s->endpoint,
                            opened[0].security != NULL ? opened[0].security : "the default");
    return 0;
}

/* ---- the type ---- */

static int rpc_create(sb_adapter **out, const sb_adapter_config *cfg, sb_error *err)
{
    rpc_adapter *a = sb_calloc(1, sizeof(*a));
    int rc;
    if (a == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    a->name = sb_strdup(cfg->name);
    if (a->name == NULL || uv_mutex_init(&a->lock) != 0) {
        sb_free(a->name);
        sb_free(a);
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    }
    rc = settings_from(&a->set, cfg, err);
    if (rc == 0) {
        a->wprotseq = sb_utf8_to_wide(a->set.tcp ? "ncacn_ip_tcp" : "ncalrpc");
        a->wendpoint = sb_utf8_to_wide(a->set.endpoint);
        if (a->wprotseq == NULL || a->wendpoint == NULL)
            rc = sb_error_set(err, SB_ECONFIG, 0,
                              "adapter %s: endpoint: not valid UTF-8, or out of memory", cfg->name);
    }
    if (rc != 0) {
        adapter_free(a);
        return rc;
    }
    a->refs = 1; /* the adapter's own, until destroy */
    *out = &a->base;
    return 0;
}

/* Registry: opens the endpoint (if this process has not yet), registers the
 * interface (if no adapter has) and takes the protocol sequence's slot.
 * Under registry_lock. */
static int open_locked(rpc_adapter *a, sb_error *err)
{
    const char *what = a->set.tcp ? "ncacn_ip_tcp" : "ncalrpc";
    rpc_adapter *holder = slots[a->set.tcp];
    RPC_STATUS st;
    char text[256];
    int rc;

    if (holder != NULL)
        return sb_error_set(err, SB_EADDRINUSE, 0,
                            "adapter %s: adapter %s serves %s already (calls are told apart by "
                            "protocol sequence: one rpc adapter each)",
                            a->name, holder->name, what);
    if ((rc = fits_opened(a->name, &a->set, err)) != 0)
        return rc;
    if (!opened[a->set.tcp].open) {
        char *security = NULL;
        if (a->set.security != NULL && (security = sb_strdup(a->set.security)) == NULL)
            return sb_error_set(err, SB_ENOMEM, 0, "out of memory");
        st = RpcServerUseProtseqEpW((RPC_WSTR)a->wprotseq, RPC_C_PROTSEQ_MAX_REQS_DEFAULT,
                                    (RPC_WSTR)a->wendpoint, a->set.tcp ? NULL : a->sd);
        if (st != RPC_S_OK) {
            sb_free(security);
            sb_win_strerror((DWORD)st, text, sizeof text);
            return sb_error_set(
                err,
                st == RPC_S_DUPLICATE_ENDPOINT || st == RPC_S_CANT_CREATE_ENDPOINT ? SB_EADDRINUSE
                : st == RPC_S_INVALID_ENDPOINT_FORMAT || st == RPC_S_PROTSEQ_NOT_SUPPORTED
                    ? SB_ECONFIG
                    : SB_EIO,
                (int)st, "adapter %s: cannot open %s:%s: %s (RPC status %ld)", a->name, what,
                a->set.endpoint, text, (long)st);
        }
        opened[a->set.tcp].open = 1;
        snprintf(opened[a->set.tcp].endpoint, sizeof opened[a->set.tcp].endpoint, "%s",
                 a->set.endpoint);
        opened[a->set.tcp].security = security; /* until the process exits */
    }
    if (a->set.tcp && !auth_registered) {
        /* What TCP callers authenticate with. Under Wine NTLM needs Samba's
         * ntlm_auth: without it only Negotiate registers, and no TCP caller
         * can authenticate. */
        RPC_STATUS ntlm = RpcServerRegisterAuthInfoW(NULL, RPC_C_AUTHN_WINNT, NULL, NULL);
        RPC_STATUS nego = RpcServerRegisterAuthInfoW(NULL, RPC_C_AUTHN_GSS_NEGOTIATE, NULL, NULL);
        if (ntlm != RPC_S_OK) {
            sb_win_strerror((DWORD)ntlm, text, sizeof text);
            sb_log(SB_LOG_WARN, a->name,
                   "RPC_C_AUTHN_WINNT (NTLM) is not available: %s (RPC status %ld); TCP callers "
                   "cannot authenticate with it",
                   text, (long)ntlm);
        }
        if (nego != RPC_S_OK)
            sb_log(SB_LOG_WARN, a->name,
                   "RPC_C_AUTHN_GSS_NEGOTIATE is not available (RPC status %ld)", (long)nego);
        auth_registered = 1;
    }
    if (!if_registered) {
        st = RpcServerRegisterIf2(sb_rpc__Switchboard_v1_0_s_ifspec, NULL, NULL,
                                  RPC_IF_AUTOLISTEN | RPC_IF_ALLOW_CALLBACKS_WITH_NO_AUTH,
                                  RPC_C_LISTEN_MAX_CALLS_DEFAULT, MAX_RPC_SIZE,
                                  sb_rpc__security_callback);
        if (st != RPC_S_OK) {
            sb_win_strerror((DWORD)st, text, sizeof text);
            return sb_error_set(err, SB_EIO, (int)st,
                                "adapter %s: cannot register the RPC interface: %s (RPC status "
                                "%ld)",
                                a->name, text, (long)st);
        }
        if_registered = 1;
    }
    slots[a->set.tcp] = a;
    a->registered = 1;
    sb_rpc__retain(a); /* the slot's */
    return 0;
}

static void close_locked(rpc_adapter *a)
{
    if (!a->registered)
        return;
    slots[a->set.tcp] = NULL;
    a->registered = 0;
    if (slots[0] == NULL && slots[1] == NULL && if_registered) {
        /* Calls in progress finish; new ones get RPC_S_UNKNOWN_IF. */
        RpcServerUnregisterIf(sb_rpc__Switchboard_v1_0_s_ifspec, NULL, FALSE);
        if_registered = 0;
    }
}

static int rpc_start(sb_adapter *base, sb_error *err)
{
    rpc_adapter *a = (rpc_adapter *)base;
    int rc;

    if (!a->set.tcp && (rc = make_sd(a, err)) != 0)
        return rc;
    if (sb_inbox_new(&a->inbox, a->base.loop) != 0)
        return sb_error_set(err, SB_ENOMEM, 0, "adapter %s: out of memory", a->name);
    AcquireSRWLockExclusive(&registry_lock);
    rc = open_locked(a, err);
    ReleaseSRWLockExclusive(&registry_lock);
    if (rc != 0) {
        sb_inbox_close(a->inbox);
        a->inbox = NULL;
        return rc;
    }
    if (a->set.tcp)
        sb_log(SB_LOG_INFO, a->name, "serving MS-RPC on ncacn_ip_tcp port %s (every address; %s)",
               a->set.endpoint,
               a->set.remote ? "authenticated callers from other computers too"
                             : "loopback callers only");
    else
        sb_log(SB_LOG_INFO, a->name, "serving MS-RPC on ncalrpc:%s", a->set.endpoint);
    return 0;
}

static void rpc_stop(sb_adapter *base, sb_adapter_stopped_cb cb)
{
    rpc_adapter *a = (rpc_adapter *)base;
    int registered;

    AcquireSRWLockExclusive(&registry_lock);
    registered = a->registered;
    close_locked(a);
    ReleaseSRWLockExclusive(&registry_lock);
    uv_mutex_lock(&a->lock);
    a->stopping = 1;
    uv_mutex_unlock(&a->lock);
    if (a->inbox != NULL) {
        /* Calls post only while not stopping (under the lock): what they
         * posted runs now, and finds the adapter stopping. */
        sb_inbox_close(a->inbox);
        a->inbox = NULL;
    }
    sb_rpc__close_all(a);
    if (registered)
        sb_rpc__release(a); /* the slot's */
    cb(&a->base);
}

/* A reload asks before it stops the running adapter: refused, it keeps the
 * running configuration. */
static int rpc_reload_check(const sb_adapter_config *cfg, sb_error *err)
{
    rpc_settings s;
    int rc = settings_from(&s, cfg, err);
    if (rc != 0)
        return rc == SB_ENOMEM ? rc : SB_ECONFIG;
    AcquireSRWLockShared(&registry_lock);
    rc = fits_opened(cfg->name, &s, err);
    ReleaseSRWLockShared(&registry_lock);
    settings_free(&s);
    return rc;
}

static void rpc_destroy(sb_adapter *base)
{
    /* Calls, subscription handles and publishes awaiting their commit may
     * still hold it: the last of them frees it. */
    sb_rpc__release((rpc_adapter *)base);
}

const sb_adapter_type sb_adapter_rpc = {
    .version = SB_ADAPTER_VERSION,
    .name = "rpc",
    .caps = SB_CAP_SOURCE | SB_CAP_THREAD,
    .create = rpc_create,
    .start = rpc_start,
    .stop = rpc_stop,
    .destroy = rpc_destroy,
    .reload_check = rpc_reload_check,
};
