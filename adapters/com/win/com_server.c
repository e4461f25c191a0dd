/*
 * The relay process (`switchboard com server`, com_int.h): what COM starts
 * from the LocalServer32 key when a client creates Switchboard.Broker.
 *
 * It runs in the multithreaded apartment, registers the Broker class
 * object (REGCLS_MULTIPLEUSE: one relay per client account serves all its
 * clients) and exits when the last object it served is released (COM's
 * server reference count), or after START_IDLE_MS if nobody creates one.
 * The type library comes from the executable's own resources.
 *
 * Clients that exit without releasing their objects: every object records
 * the process id of the caller that created it (the RPC call's client,
 * which COM's local transport knows), and the relay waits on that process;
 * when it exits, its subscriptions give back what they held and its
 * objects are disconnected, so that the relay can exit too. (On Windows
 * COM would notice after some minutes of missed pings; Wine never does.)
 */
#include "adapters/com/win/com_int.h"

#include "adapters/com/com_cmd.h"
#include "service/alloc.h"
#include "service/platform/win/utf.h"

#include <rpc.h>
#include <rpcdcep.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* A relay COM started but nobody uses: gone after this. */
#define START_IDLE_MS 60000
/* A relay whose last object went stays this long before it revokes its
 * class and exits, taking back a client that creates one meanwhile: Wine
 * still hands it new clients (see cf_create), and one that leaves at once
 * fails the create of a client that came just then (RPC_S_CALL_FAILED). */
#define LINGER_MS 2000

typedef struct watch {
    DWORD pid;
    HANDLE process, wait;
    int gone;
    struct watch *next;
} watch;

static struct {
    CRITICAL_SECTION cs;
    sb_com_obj *objs;
    watch *watches;
    int reap_asked;
    HANDLE exit_ev;
    /* The process's life (guarded by life, taken after cs if both): COM's
     * server reference count mirrored in refs, stopping once it fell to 0,
     * revoking once the main thread began to leave. */
    CRITICAL_SECTION life;
    ULONG refs;
    int stopping;
    ULONGLONG stopped_at; /* when refs fell to 0 */
    int revoking;
    LONG created; /* objects ever created */
    sb_com_link *link;
    sb_com_pool *pool;
    const char *endpoint;
    ITypeLib *tlb;
    ITypeInfo *ti_broker, *ti_sub, *ti_msg, *ti_sub_class;
} srv;

void sb_com__log(const char *fmt, ...)
{
    static CRITICAL_SECTION cs;
    static LONG init;
    char path[MAX_PATH];
    DWORD n = GetEnvironmentVariableA("SB_COM_LOG", path, sizeof path);
    FILE *f;
    va_list ap;
    if (n == 0 || n >= sizeof path)
        return;
    if (InterlockedCompareExchange(&init, 1, 0) == 0)
        InitializeCriticalSection(&cs);
    EnterCriticalSection(&cs);
    f = fopen(path, "a");
    if (f != NULL) {
        fprintf(f, "%llu pid %lu: ", (unsigned long long)GetTickCount64(),
                (unsigned long)GetCurrentProcessId());
        va_start(ap, fmt);
        vfprintf(f, fmt, ap);
        va_end(ap);
        fputc('\n', f);
        fclose(f);
    }
    LeaveCriticalSection(&cs);
}

ITypeInfo *sb_com__typeinfo(REFGUID guid)
{
    if (IsEqualGUID(guid, &IID_IBroker))
        return srv.ti_broker;
    if (IsEqualGUID(guid, &IID_ISubscription))
        return srv.ti_sub;
    if (IsEqualGUID(guid, &IID_IMessage))
        return srv.ti_msg;
    if (IsEqualGUID(guid, &CLSID_Subscription))
        return srv.ti_sub_class;
    return NULL;
}

sb_com_link *sb_com__server_link(void)
{
    return srv.link;
}

sb_com_pool *sb_com__server_pool(void)
{
    return srv.pool;
}

const char *sb_com__server_endpoint(void)
{
    return srv.endpoint;
}

DWORD sb_com__caller_pid(void)
{
    unsigned long pid = 0;
    if (I_RpcBindingInqLocalClientPID(NULL, &pid) != RPC_S_OK)
        return 0;
    return (DWORD)pid;
}

/* ---- objects and their clients ---- */

static VOID CALLBACK on_client_exit(PVOID ctx, BOOLEAN timed_out)
{
    DWORD pid = (DWORD)(ULONG_PTR)ctx;
    EnterCriticalSection(&srv.cs);
    for (watch *w = srv.watches; w != NULL; w = w->next)
        if (w->pid == pid)
            w->gone = 1;
    srv.reap_asked = 1;
    LeaveCriticalSection(&srv.cs);
    sb_com__log("client process %lu exited", (unsigned long)pid);
    if (srv.link != NULL)
        sb_com__link_wake(srv.link);
}

/* Watches pid's process (cs held). */
static void watch_client(DWORD pid)
{
    watch *w;
    for (w = srv.watches; w != NULL; w = w->next)
        if (w->pid == pid && !w->gone)
            return;
    w = sb_calloc(1, sizeof(*w));
    if (w == NULL)
        return;
    w->pid = pid;
    w->process = OpenProcess(SYNCHRONIZE, FALSE, pid);
    if (w->process == NULL ||
        !RegisterWaitForSingleObject(&w->wait, w->process, on_client_exit, (PVOID)(ULONG_PTR)pid,
                                     INFINITE, WT_EXECUTEONLYONCE)) {
        if (w->process != NULL)
            CloseHandle(w->process);
        sb_free(w);
        return; /* unwatched: COM's own garbage collection (Windows) remains */
    }
    w->next = srv.watches;
    srv.watches = w;
}

/* The object stops keeping the process alive (once). */
static void drop_server_ref(sb_com_obj *o)
{
    if (InterlockedExchange(&o->server_ref, 0) == 1)
        sb_com__server_release();
}

static ULONG server_addref(void)
{
    ULONG n;
    EnterCriticalSection(&srv.life);
    n = CoAddRefServerProcess();
    srv.refs = n;
    LeaveCriticalSection(&srv.life);
    return n;
}

void sb_com__server_track(sb_com_obj *o)
{
    ULONG n = server_addref();
    o->server_ref = 1;
    sb_com__log("server references: %lu (a new object)", (unsigned long)n);
    EnterCriticalSection(&srv.cs);
    o->prev = NULL;
    o->next = srv.objs;
    if (srv.objs != NULL)
        srv.objs->prev = o;
    srv.objs = o;
    if (o->pid != 0 && o->pid != GetCurrentProcessId())
        watch_client(o->pid);
    LeaveCriticalSection(&srv.cs);
    InterlockedIncrement(&srv.created);
}

void sb_com__server_untrack(sb_com_obj *o)
{
    EnterCriticalSection(&srv.cs);
    if (o->prev != NULL)
        o->prev->next = o->next;
    else if (srv.objs == o)
        srv.objs = o->next;
    if (o->next != NULL)
        o->next->prev = o->prev;
    o->prev = o->next = NULL;
    LeaveCriticalSection(&srv.cs);
    drop_server_ref(o);
}

static int try_ref(LONG *refs)
{
    LONG n = *refs;
    while (n > 0) {
        LONG seen = InterlockedCompareExchange(refs, n + 1, n);
        if (seen == n)
            return 1;
        n = seen;
    }
    return 0;
}

void sb_com__server_reap(void)
{
    sb_com_obj **dead = NULL;
    size_t n = 0, cap = 0;
    watch *gone = NULL, **wp;

    EnterCriticalSection(&srv.cs);
    if (!srv.reap_asked) {
        LeaveCriticalSection(&srv.cs);
        return;
    }
    srv.reap_asked = 0;
    for (wp = &srv.watches; *wp != NULL;) {
        watch *w = *wp;
        if (!w->gone) {
            wp = &w->next;
            continue;
        }
        *wp = w->next;
        w->next = gone;
        gone = w;
        for (sb_com_obj *o = srv.objs; o != NULL; o = o->next) {
            if (o->pid != w->pid || !try_ref(o->refs))
                continue;
            if (n == cap) {
                size_t ncap = cap == 0 ? 16 : cap * 2;
                sb_com_obj **nd = sb_realloc(dead, ncap * sizeof(*nd));
                if (nd == NULL) {
                    IUnknown_Release(o->unk); /* try again at the next tick */
                    srv.reap_asked = 1;
                    break;
                }
                dead = nd;
                cap = ncap;
            }
            dead[n++] = o;
        }
    }
    LeaveCriticalSection(&srv.cs);
    /* Subscriptions first (they give back what they held), then every
     * object loses the references the dead client's proxies had. */
    if (n > 0)
        sb_com__log("disconnecting %zu objects of clients that exited", n);
    for (size_t i = 0; i < n; i++)
        if (dead[i]->client_gone != NULL)
            dead[i]->client_gone(dead[i]);
    for (size_t i = 0; i < n; i++) {
        CoDisconnectObject(dead[i]->unk, 0);
        drop_server_ref(dead[i]);
        IUnknown_Release(dead[i]->unk);
    }
    sb_free(dead);
    while (gone != NULL) {
        watch *w = gone;
        gone = w->next;
        UnregisterWaitEx(w->wait, NULL);
        CloseHandle(w->process);
        sb_free(w);
    }
}

/* ---- the class factory ---- */

static HRESULT WINAPI cf_query(IClassFactory *cf, REFIID iid, void **out)
{
    if (IsEqualIID(iid, &IID_IUnknown) || IsEqualIID(iid, &IID_IClassFactory)) {
        *out = cf;
        return S_OK;
    }
    *out = NULL;
    return E_NOINTERFACE;
}

static ULONG WINAPI cf_addref(IClassFactory *cf)
{
    return 2; /* static */
}

static ULONG WINAPI cf_release(IClassFactory *cf)
{
    return 1;
}

static HRESULT WINAPI cf_create(IClassFactory *cf, IUnknown *outer, REFIID iid, void **out)
{
    HRESULT hr;
    *out = NULL;
    if (outer != NULL)
        return CLASS_E_NOAGGREGATION;
    EnterCriticalSection(&srv.life);
    if (srv.revoking) {
        LeaveCriticalSection(&srv.life);
        return CO_E_SERVER_STOPPING;
    }
    if (srv.stopping) {
        /* Wine's CoReleaseServerProcess does not suspend the class objects
         * at 0 (a FIXME in its combase), so creates still come to a relay
         * whose last object went, where Windows would start another relay.
         * Until the main thread leaves, this one takes the client back. */
        srv.stopping = 0;
        ResetEvent(srv.exit_ev);
        sb_com__log("a create while stopping: serving on");
    }
    srv.refs = CoAddRefServerProcess(); /* held while the object is made */
    LeaveCriticalSection(&srv.life);
    hr = sb_com__broker_new(sb_com__caller_pid(), iid, out);
    sb_com__server_release();
    return hr;
}

static HRESULT WINAPI cf_lock(IClassFactory *cf, BOOL lock)
{
    if (lock)
        server_addref();
    else
        sb_com__server_release();
    return S_OK;
}

static const IClassFactoryVtbl cf_vtbl = {cf_query, cf_addref, cf_release, cf_create, cf_lock};
static IClassFactory factory = {(IClassFactoryVtbl *)&cf_vtbl};

void sb_com__server_release(void)
{
    ULONG n;
    EnterCriticalSection(&srv.life);
    n = CoReleaseServerProcess();
    srv.refs = n;
    if (n == 0) {
        /* COM suspended the class object (Windows): the relay leaves. */
        srv.stopping = 1;
        srv.stopped_at = GetTickCount64();
        SetEvent(srv.exit_ev);
    }
    LeaveCriticalSection(&srv.life);
    sb_com__log("server references: %lu", (unsigned long)n);
}

/* 1 once the relay leaves: its last object went LINGER_MS ago (and no
 * create took it back), or nobody created one within START_IDLE_MS. */
static int leaving(DWORD waited)
{
    for (;;) {
        ULONGLONG now = GetTickCount64();
        DWORD left = 0;
        EnterCriticalSection(&srv.life);
        if (waited == WAIT_TIMEOUT && srv.refs == 0) {
            srv.stopping = 1;
            srv.stopped_at = now - LINGER_MS;
        }
        if (srv.stopping && now < srv.stopped_at + LINGER_MS)
            left = (DWORD)(srv.stopped_at + LINGER_MS - now);
        else if (srv.stopping)
            srv.revoking = 1;
        LeaveCriticalSection(&srv.life);
        if (left == 0)
            return srv.revoking;
        Sleep(left);
        waited = WAIT_OBJECT_0;
    }
}

/* ---- the process ---- */

static int load_typelib(char *why, size_t n)
{
    wchar_t path[MAX_PATH + 1];
    HRESULT hr;
    DWORD len = GetModuleFileNameW(NULL, path, MAX_PATH);
    if (len == 0 || len >= MAX_PATH) {
        snprintf(why, n, "cannot find the executable's path");
        return -1;
    }
    path[len] = 0;
    hr = LoadTypeLibEx(path, REGKIND_NONE, &srv.tlb);
    if (FAILED(hr)) {
        snprintf(why, n, "cannot load the type library from the executable (0x%08lx)",
                 (unsigned long)hr);
        return -1;
    }
    if (FAILED(ITypeLib_GetTypeInfoOfGuid(srv.tlb, &IID_IBroker, &srv.ti_broker)) ||
        FAILED(ITypeLib_GetTypeInfoOfGuid(srv.tlb, &IID_ISubscription, &srv.ti_sub)) ||
        FAILED(ITypeLib_GetTypeInfoOfGuid(srv.tlb, &IID_IMessage, &srv.ti_msg)) ||
        FAILED(ITypeLib_GetTypeInfoOfGuid(srv.tlb, &CLSID_Subscription, &srv.ti_sub_class))) {
        snprintf(why, n, "the embedded type library lacks Switchboard's interfaces");
        return -1;
    }
    return 0;
}

int sb_com_server_run(const char *endpoint)
{
    DWORD cookie = 0;
    HRESULT hr;
    sb_error err;
    char why[300];
    int rc = 1;

    InitializeCriticalSection(&srv.cs);
    InitializeCriticalSection(&srv.life);
    srv.endpoint = endpoint;
    srv.exit_ev = CreateEventW(NULL, TRUE, FALSE, NULL);
    hr = CoInitializeEx(NULL, COINIT_MULTITHREADED);
    if (FAILED(hr)) {
        fprintf(stderr, "switchboard com server: CoInitializeEx failed (0x%08lx)\n",
                (unsigned long)hr);
        return 1;
    }
    /* Who may call: the AppID's AccessPermission (`com register`). */
    hr = CoInitializeSecurity((PSECURITY_DESCRIPTOR)&APPID_Switchboard, -1, NULL, NULL,
                              RPC_C_AUTHN_LEVEL_PKT, RPC_C_IMP_LEVEL_IDENTIFY, NULL,
                              EOAC_APPID | EOAC_DISABLE_AAA, NULL);
    if (FAILED(hr))
        fprintf(stderr,
                "switchboard com server: CoInitializeSecurity from the AppID failed (0x%08lx); "
                "COM's defaults apply\n",
                (unsigned long)hr);
    if (load_typelib(why, sizeof why) != 0) {
        fprintf(stderr, "switchboard com server: %s\n", why);
        goto out;
    }
    if (sb_com__link_start(&srv.link, endpoint, &err) != 0 ||
        sb_com__pool_new(&srv.pool, endpoint, &err) != 0) {
        fprintf(stderr, "switchboard com server: %s\n", err.msg);
        goto out;
    }
    hr = CoRegisterClassObject(&CLSID_Broker, (IUnknown *)&factory, CLSCTX_LOCAL_SERVER,
                               REGCLS_MULTIPLEUSE | REGCLS_SUSPENDED, &cookie);
    if (SUCCEEDED(hr))
        hr = CoResumeClassObjects();
    if (FAILED(hr)) {
        fprintf(stderr, "switchboard com server: CoRegisterClassObject failed (0x%08lx)\n",
                (unsigned long)hr);
        goto out;
    }
    /* Until the last object goes; a relay nobody used does not linger. */
    while (!leaving(WaitForSingleObject(srv.exit_ev, srv.created == 0 ? START_IDLE_MS : INFINITE)))
        ;
    rc = 0;
    sb_com__log("exiting");
out:
    if (cookie != 0)
        CoRevokeClassObject(cookie);
    sb_com__link_stop(srv.link);
    srv.link = NULL;
    sb_com__pool_free(srv.pool);
    srv.pool = NULL;
    if (srv.ti_broker != NULL)
        ITypeInfo_Release(srv.ti_broker);
    if (srv.ti_sub != NULL)
        ITypeInfo_Release(srv.ti_sub);
    if (srv.ti_msg != NULL)
        ITypeInfo_Release(srv.ti_msg);
    if (srv.ti_sub_class != NULL)
        ITypeInfo_Release(srv.ti_sub_class);
    if (srv.tlb != NULL)
        ITypeLib_Release(srv.tlb);
    CoUninitialize();
    sb_com__log("exited");
    return rc;
}
