/*
 * com_bare: a bare out-of-process COM server with Switchboard.Broker's
 * signature (IBroker, the same type library), for tools/bench/com-bench.sh:
 * the same client calls Publish here and through Switchboard, so the ratio
 * is what the broker costs on top of COM itself. Publish only counts (its
 * "id" is a counter); the other methods fail with E_NOTIMPL.
 *
 *   com_bare register      registers itself (HKLM) as the bench class
 *                          {2c5ac8d7-6c7a-48ef-9a18-48424aab0f33}; IBroker's
 *                          marshaling comes from `switchboard com register`
 *   com_bare unregister
 *   com_bare -Embedding    what COM starts
 */
#define COBJMACROS
#include <windows.h>
#include <ole2.h>

#include <stdio.h>
#include <string.h>

#include "adapters/com/switchboard_h.h"

static const CLSID CLSID_BareBroker = {
    0x2c5ac8d7, 0x6c7a, 0x48ef, {0x9a, 0x18, 0x48, 0x42, 0x4a, 0xab, 0x0f, 0x33}};
#define KEY L"Software\\Classes\\CLSID\\{2c5ac8d7-6c7a-48ef-9a18-48424aab0f33}"

static HANDLE done;
static LONG objects;
static LONG64 next_id;

typedef struct bare {
    IBroker iface;
    LONG refs;
} bare;

static HRESULT WINAPI q(IBroker *i, REFIID iid, void **out)
{
    if (IsEqualIID(iid, &IID_IUnknown) || IsEqualIID(iid, &IID_IDispatch) ||
        IsEqualIID(iid, &IID_IBroker)) {
        *out = i;
        IBroker_AddRef(i);
        return S_OK;
    }
    *out = NULL;
    return E_NOINTERFACE;
}

static ULONG WINAPI ar(IBroker *i)
{
    return (ULONG)InterlockedIncrement(&((bare *)i)->refs);
}

static ULONG WINAPI rl(IBroker *i)
{
    LONG n = InterlockedDecrement(&((bare *)i)->refs);
    if (n == 0) {
        HeapFree(GetProcessHeap(), 0, i);
        if (InterlockedDecrement(&objects) == 0)
            SetEvent(done);
    }
    return (ULONG)n;
}

static HRESULT WINAPI tic(IBroker *i, UINT *n)
{
    *n = 0;
    return S_OK;
}

static HRESULT WINAPI ti(IBroker *i, UINT n, LCID l, ITypeInfo **t)
{
    return E_NOTIMPL;
}

static HRESULT WINAPI ids(IBroker *i, REFIID r, LPOLESTR *n, UINT c, LCID l, DISPID *d)
{
    return E_NOTIMPL;
}

static HRESULT WINAPI inv(IBroker *i, DISPID d, REFIID r, LCID l, WORD f, DISPPARAMS *p,
                          VARIANT *res, EXCEPINFO *e, UINT *a)
{
    return E_NOTIMPL;
}

static HRESULT WINAPI publish(IBroker *i, BSTR topic, VARIANT payload, VARIANT headers,
                              double *id)
{
    *id = (double)InterlockedIncrement64(&next_id);
    return S_OK;
}

static HRESULT WINAPI subscribe(IBroker *i, BSTR n, VARIANT f, ISubscription **s)
{
    *s = NULL;
    return E_NOTIMPL;
}

static HRESULT WINAPI stats(IBroker *i, BSTR *j)
{
    *j = NULL;
    return E_NOTIMPL;
}

static HRESULT WINAPI user(IBroker *i, BSTR *u)
{
    *u = NULL;
    return E_NOTIMPL;
}

static HRESULT WINAPI get_timeout(IBroker *i, long *ms)
{
    *ms = 0;
    return S_OK;
}

static HRESULT WINAPI put_timeout(IBroker *i, long ms)
{
    return S_OK;
}

static const IBrokerVtbl vtbl = {q,       ar,        rl,    tic,  ti,          ids,        inv,
                                 publish, subscribe, stats, user, get_timeout, put_timeout};

static HRESULT WINAPI cf_q(IClassFactory *cf, REFIID iid, void **out)
{
    if (IsEqualIID(iid, &IID_IUnknown) || IsEqualIID(iid, &IID_IClassFactory)) {
        *out = cf;
        return S_OK;
    }
    *out = NULL;
    return E_NOINTERFACE;
}

static ULONG WINAPI cf_ar(IClassFactory *cf)
{
    return 2;
}

static ULONG WINAPI cf_rl(IClassFactory *cf)
{
    return 1;
}

static HRESULT WINAPI cf_create(IClassFactory *cf, IUnknown *outer, REFIID iid, void **out)
{
    bare *b = HeapAlloc(GetProcessHeap(), HEAP_ZERO_MEMORY, sizeof(*b));
    HRESULT hr;
    if (b == NULL)
        return E_OUTOFMEMORY;
    b->iface.lpVtbl = (IBrokerVtbl *)&vtbl;
    b->refs = 1;
    InterlockedIncrement(&objects);
    hr = q(&b->iface, iid, out);
    rl(&b->iface);
    return hr;
}

static HRESULT WINAPI cf_lock(IClassFactory *cf, BOOL l)
{
    return S_OK;
}

static const IClassFactoryVtbl cf_vtbl = {cf_q, cf_ar, cf_rl, cf_create, cf_lock};
static IClassFactory factory = {(IClassFactoryVtbl *)&cf_vtbl};

static int reg(int on)
{
    wchar_t exe[MAX_PATH], cmd[MAX_PATH + 4];
    HKEY k;
    if (!on) {
        RegDeleteTreeW(HKEY_LOCAL_MACHINE, KEY);
        RegDeleteKeyW(HKEY_LOCAL_MACHINE, KEY);
        return 0;
    }
    GetModuleFileNameW(NULL, exe, MAX_PATH);
    swprintf(cmd, MAX_PATH + 4, L"\"%ls\"", exe);
    if (RegCreateKeyExW(HKEY_LOCAL_MACHINE, KEY L"\\LocalServer32", 0, NULL, 0, KEY_WRITE, NULL,
                        &k, NULL) != ERROR_SUCCESS) {
        fprintf(stderr, "com_bare: cannot write HKLM (run it elevated)\n");
        return 1;
    }
    RegSetValueExW(k, NULL, 0, REG_SZ, (const BYTE *)cmd, (DWORD)(wcslen(cmd) + 1) * 2);
    RegCloseKey(k);
    return 0;
}

int main(int argc, char **argv)
{
    DWORD cookie;
    if (argc > 1 && strcmp(argv[1], "register") == 0)
        return reg(1);
    if (argc > 1 && strcmp(argv[1], "unregister") == 0)
        return reg(0);
    done = CreateEventW(NULL, TRUE, FALSE, NULL);
    CoInitializeEx(NULL, COINIT_MULTITHREADED); /* as the relay */
    if (FAILED(CoRegisterClassObject(&CLSID_BareBroker, (IUnknown *)&factory, CLSCTX_LOCAL_SERVER,
                                     REGCLS_MULTIPLEUSE, &cookie)))
        return 1;
    WaitForSingleObject(done, 120000);
    CoRevokeClassObject(cookie);
    CoUninitialize();
    return 0;
}
