/*
 * com_client: a C program using Switchboard.Broker as COM clients do,
 * for the COM tests (test_com.c) and the interop script. One command per
 * run; each result is one line on stdout (flushed), so that a test can
 * follow a client that never ends (a hung event handler) or is killed.
 *
 *   com_client pub TOPIC PAYLOAD [N]        vtable Publish, N times: "ID n"
 *   com_client renew TOPIC N                N times: create the object, Publish once,
 *                                           release it: "ID n"
 *   com_client pubseq TOPIC N DEADLINE_MS   payloads k-0..k-(N-1), each retried
 *                                           until it gets an id: "OK i id"
 *   com_client disp-pub TOPIC PAYLOAD       IDispatch::Invoke: "ID n" / "EXC scode desc"
 *   com_client pull SUB COUNT WAIT_MS       Pull + Ack: "MSG topic payload id attempt"
 *   com_client take SUB                     Wait, print "TOOK id", exit holding it
 *   com_client events SUB FILTER COUNT MODE [TIMEOUT_MS]
 *        connection-point events: "EVENT topic payload id attempt"; MODE:
 *        ok, fail-first (the handler raises an error on attempt 1), hang
 *        (the first handler call never returns), disp (Subscribe and Advise
 *        found through IDispatch); exits after COUNT events returned S_OK
 *   com_client bad                          bad input: "BAD what 0x.. description"
 *   com_client user                         "USER account"
 *   com_client bench N TOPIC [CLSID]        "RATE calls/s" of Publish (CLSID: another
 *                                           server with IBroker, e.g. tools/bench/com_bare)
 *
 * Exit codes: 0 done, 1 usage, 2 COM could not create the object, 3 an
 * unexpected failure (printed as "FAIL ...").
 */
#define COBJMACROS
#include <windows.h>
#include <ole2.h>
#include <olectl.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/com/switchboard_h.h"

static void out(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fflush(stdout);
}

static void fail(const char *what, HRESULT hr)
{
    IErrorInfo *ei = NULL;
    BSTR d = NULL;
    if (GetErrorInfo(0, &ei) == S_OK && ei != NULL) {
        IErrorInfo_GetDescription(ei, &d);
        IErrorInfo_Release(ei);
    }
    out("FAIL %s 0x%08lx %ls\n", what, (unsigned long)hr, d != NULL ? d : L"");
    SysFreeString(d);
    exit(3);
}

/* The description of the last error (GetErrorInfo), as UTF-8 into buf. */
static const char *last_error(char *buf, size_t n)
{
    IErrorInfo *ei = NULL;
    BSTR d = NULL;
    buf[0] = '\0';
    if (GetErrorInfo(0, &ei) == S_OK && ei != NULL) {
        IErrorInfo_GetDescription(ei, &d);
        IErrorInfo_Release(ei);
    }
    if (d != NULL)
        WideCharToMultiByte(CP_UTF8, 0, d, -1, buf, (int)n, NULL, NULL);
    SysFreeString(d);
    return buf;
}

static BSTR bstr(const char *s)
{
    int n = MultiByteToWideChar(CP_UTF8, 0, s, -1, NULL, 0);
    BSTR b = SysAllocStringLen(NULL, (UINT)(n > 0 ? n - 1 : 0));
    MultiByteToWideChar(CP_UTF8, 0, s, -1, b, n);
    return b;
}

static void var_str(VARIANT *v, const char *s)
{
    VariantInit(v);
    V_VT(v) = VT_BSTR;
    V_BSTR(v) = bstr(s);
}

static void var_missing(VARIANT *v)
{
    VariantInit(v);
    V_VT(v) = VT_ERROR;
    V_ERROR(v) = DISP_E_PARAMNOTFOUND;
}

static void var_long(VARIANT *v, long n)
{
    VariantInit(v);
    V_VT(v) = VT_I4;
    V_I4(v) = n;
}

/* 1 if hr says that the activation met another relay than the one that
 * will serve it. Wine's COM differs from Windows' here:
 * - it does not suspend a class object when the server's count drops to
 *   zero (CoReleaseServerProcess), so a new client can still be handed
 *   the class factory of a relay on its way out: CO_E_SERVER_STOPPING,
 *   or an RPC error once that relay is gone;
 * - the client, not a service, launches the server, and a class has one
 *   registration pipe: of two relays launched at once (or one launched
 *   while the previous one still holds the pipe), one cannot register
 *   and exits, and its client gets E_NOINTERFACE ("server failed to
 *   start") although the other relay serves. RPC_S_UNKNOWN_IF: a relay
 *   reached while it unregisters its interfaces.
 * Windows' COM launches one server per activation and retries one
 * refused with CO_E_SERVER_STOPPING with a new server itself. */
static int met_another_relay(HRESULT hr)
{
    return hr == CO_E_SERVER_STOPPING || hr == HRESULT_FROM_WIN32(RPC_S_SERVER_UNAVAILABLE) ||
           hr == HRESULT_FROM_WIN32(RPC_S_CALL_FAILED) ||
           hr == HRESULT_FROM_WIN32(RPC_S_UNKNOWN_IF) || hr == RPC_E_DISCONNECTED ||
           hr == RPC_E_SERVER_DIED || hr == RPC_E_SERVER_DIED_DNE || hr == E_NOINTERFACE;
}

/* CoCreateInstance, tried again (as Windows' COM would) while it meets
 * another relay, for up to retry_ms. */
#define CREATE_RETRY_MS 30000

static IBroker *create_within(REFCLSID clsid, ULONGLONG retry_ms)
{
    ULONGLONG end = GetTickCount64() + retry_ms;
    for (;;) {
        IBroker *b = NULL;
        HRESULT hr = CoCreateInstance(clsid, NULL, CLSCTX_LOCAL_SERVER, &IID_IBroker, (void **)&b);
        if (SUCCEEDED(hr))
            return b;
        if (!met_another_relay(hr) || GetTickCount64() >= end) {
            out("FAIL CoCreateInstance 0x%08lx\n", (unsigned long)hr);
            exit(2);
        }
        fprintf(stderr, "com_client: CoCreateInstance 0x%08lx (another relay): again\n",
                (unsigned long)hr);
        Sleep(20); /* a client's pause before it tries again */
    }
}

static IBroker *create(REFCLSID clsid)
{
    return create_within(clsid, CREATE_RETRY_MS);
}

static char *utf8(BSTR b)
{
    static char buf[4][65536];
    static int next;
    char *o = buf[next++ % 4];
    o[0] = '\0';
    if (b != NULL)
        WideCharToMultiByte(CP_UTF8, 0, b, -1, o, (int)sizeof buf[0], NULL, NULL);
    return o;
}

/* ---- publishing ---- */

static int cmd_pub(const char *topic, const char *payload, int n)
{
    IBroker *b = create(&CLSID_Broker);
    BSTR t = bstr(topic);
    VARIANT p, h;
    var_str(&p, payload);
    var_missing(&h);
    for (int i = 0; i < n; i++) {
        double id = 0;
        HRESULT hr = IBroker_Publish(b, t, p, h, &id);
        if (FAILED(hr))
            fail("Publish", hr);
        out("ID %.0f\n", id);
    }
    VariantClear(&p);
    SysFreeString(t);
    IBroker_Release(b);
    return 0;
}

/* Each object the only one: its release lets the relay go, and the next
 * create comes while it may be stopping. Not tried again: the relay
 * itself must take the client back (Wine; on Windows COM starts another). */
static int cmd_renew(const char *topic, int n)
{
    BSTR t = bstr(topic);
    VARIANT p, h;
    var_str(&p, "renewed");
    var_missing(&h);
    for (int i = 0; i < n; i++) {
        IBroker *b = create_within(&CLSID_Broker, 0);
        double id = 0;
        HRESULT hr = IBroker_Publish(b, t, p, h, &id);
        if (FAILED(hr))
            fail("Publish", hr);
        out("ID %.0f\n", id);
        IBroker_Release(b);
    }
    VariantClear(&p);
    SysFreeString(t);
    return 0;
}

static int cmd_pubseq(const char *topic, int n, int deadline_ms)
{
    IBroker *b = create(&CLSID_Broker);
    BSTR t = bstr(topic);
    ULONGLONG end = GetTickCount64() + (ULONGLONG)deadline_ms;
    VARIANT h;
    var_missing(&h);
    IBroker_put_Timeout(b, 5000);
    for (int i = 0; i < n; i++) {
        char payload[32];
        VARIANT p;
        snprintf(payload, sizeof payload, "k-%d", i);
        var_str(&p, payload);
        for (;;) {
            double id = 0;
            char why[512];
            HRESULT hr = IBroker_Publish(b, t, p, h, &id);
            if (SUCCEEDED(hr)) {
                out("OK %d %.0f\n", i, id);
                break;
            }
            out("ERR %d 0x%08lx %s\n", i, (unsigned long)hr, last_error(why, sizeof why));
            if (GetTickCount64() > end) {
                out("FAIL deadline\n");
                return 3;
            }
            Sleep(20); /* a client's pause before it tries again */
        }
        VariantClear(&p);
    }
    out("DONE\n");
    SysFreeString(t);
    IBroker_Release(b);
    return 0;
}

/* Calls a method of an Automation object by name with args (in order). */
static HRESULT call(IDispatch *d, const wchar_t *name, WORD flags, VARIANT *args, UINT n,
                    VARIANT *result, EXCEPINFO *ei)
{
    DISPID id;
    LPOLESTR nm = (LPOLESTR)name;
    VARIANT rev[8];
    DISPPARAMS dp = {rev, NULL, n, 0};
    UINT argerr = 0;
    HRESULT hr = IDispatch_GetIDsOfNames(d, &IID_NULL, &nm, 1, LOCALE_USER_DEFAULT, &id);
    if (FAILED(hr))
        return hr;
    for (UINT i = 0; i < n; i++)
        rev[i] = args[n - 1 - i]; /* Invoke takes them last first */
    memset(ei, 0, sizeof *ei);
    return IDispatch_Invoke(d, id, &IID_NULL, LOCALE_USER_DEFAULT, flags, &dp, result, ei, &argerr);
}

static void print_exc(const char *what, HRESULT hr, EXCEPINFO *ei)
{
    out("%s 0x%08lx 0x%08lx %s\n", what, (unsigned long)hr, (unsigned long)ei->scode,
        utf8(ei->bstrDescription));
    SysFreeString(ei->bstrDescription);
    SysFreeString(ei->bstrSource);
    SysFreeString(ei->bstrHelpFile);
}

static int cmd_disp_pub(const char *topic, const char *payload)
{
    IBroker *b = create(&CLSID_Broker);
    IDispatch *d;
    VARIANT args[2], r;
    EXCEPINFO ei;
    HRESULT hr;
    IBroker_QueryInterface(b, &IID_IDispatch, (void **)&d);
    var_str(&args[0], topic);
    var_str(&args[1], payload);
    VariantInit(&r);
    hr = call(d, L"Publish", DISPATCH_METHOD, args, 2, &r, &ei);
    if (SUCCEEDED(hr) && SUCCEEDED(VariantChangeType(&r, &r, 0, VT_R8)))
        out("ID %.0f\n", V_R8(&r));
    else
        print_exc("EXC", hr, &ei);
    VariantClear(&args[0]);
    VariantClear(&args[1]);
    IDispatch_Release(d);
    IBroker_Release(b);
    return 0;
}

/* ---- consuming ---- */

static ISubscription *subscribe(IBroker *b, const char *name, const char *filter)
{
    ISubscription *s = NULL;
    BSTR n = bstr(name);
    VARIANT f;
    HRESULT hr;
    if (filter != NULL && strcmp(filter, "-") != 0)
        var_str(&f, filter);
    else
        var_missing(&f);
    hr = IBroker_Subscribe(b, n, f, &s);
    VariantClear(&f);
    SysFreeString(n);
    if (FAILED(hr))
        fail("Subscribe", hr);
    return s;
}

static void print_payload(const char *what, IMessage *m)
{
    BSTR topic = NULL;
    VARIANT p;
    double id = 0;
    long attempt = 0;
    VariantInit(&p);
    IMessage_get_Topic(m, &topic);
    IMessage_get_Payload(m, &p);
    IMessage_get_Id(m, &id);
    IMessage_get_Attempt(m, &attempt);
    out("%s %s %s %.0f %ld\n", what, utf8(topic),
        V_VT(&p) == VT_BSTR ? utf8(V_BSTR(&p)) : "(bytes)", id, attempt);
    SysFreeString(topic);
    VariantClear(&p);
}

static int cmd_pull(const char *name, int count, int wait_ms)
{
    IBroker *b = create(&CLSID_Broker);
    ISubscription *s = subscribe(b, name, NULL);
    ULONGLONG end = GetTickCount64() + (ULONGLONG)wait_ms;
    int got = 0;
    while (got < count && GetTickCount64() < end) {
        VARIANT max, wait, msgs;
        LONG lo, hi;
        HRESULT hr;
        var_long(&max, 10);
        var_long(&wait, 1000);
        VariantInit(&msgs);
        hr = ISubscription_Pull(s, max, wait, &msgs);
        if (FAILED(hr))
            fail("Pull", hr);
        if (V_VT(&msgs) != (VT_ARRAY | VT_VARIANT))
            fail("Pull did not return an array", E_UNEXPECTED);
        SafeArrayGetLBound(V_ARRAY(&msgs), 1, &lo);
        SafeArrayGetUBound(V_ARRAY(&msgs), 1, &hi);
        for (LONG i = lo; i <= hi; i++) {
            VARIANT v, id;
            IMessage *m;
            double d = 0;
            VariantInit(&v);
            SafeArrayGetElement(V_ARRAY(&msgs), &i, &v);
            IDispatch_QueryInterface(V_DISPATCH(&v), &IID_IMessage, (void **)&m);
            print_payload("MSG", m);
            IMessage_get_Id(m, &d);
            VariantInit(&id);
            V_VT(&id) = VT_R8;
            V_R8(&id) = d;
            hr = ISubscription_Ack(s, id);
            if (FAILED(hr))
                fail("Ack", hr);
            IMessage_Release(m);
            VariantClear(&v);
            got++;
        }
        VariantClear(&msgs);
    }
    out("PULLED %d\n", got);
    ISubscription_Release(s);
    IBroker_Release(b);
    return got >= count ? 0 : 3;
}

static int cmd_take(const char *name)
{
    IBroker *b = create(&CLSID_Broker);
    ISubscription *s = subscribe(b, name, NULL);
    IMessage *m = NULL;
    VARIANT wait;
    double id = 0;
    HRESULT hr;
    var_long(&wait, 20000);
    hr = ISubscription_Wait(s, wait, &m);
    if (FAILED(hr) || m == NULL)
        fail("Wait", FAILED(hr) ? hr : E_UNEXPECTED);
    IMessage_get_Id(m, &id);
    out("TOOK %.0f\n", id);
    /* Gone without Ack and without releasing anything: a crash. */
    TerminateProcess(GetCurrentProcess(), 9);
    return 0;
}

/* ---- events ---- */

typedef enum { MODE_OK, MODE_FAIL_FIRST, MODE_HANG } sink_mode;

static struct {
    IDispatch iface;
    sink_mode mode;
    int ok; /* calls that returned S_OK */
} sink;

static HRESULT WINAPI sink_query(IDispatch *i, REFIID iid, void **o)
{
    if (IsEqualIID(iid, &IID_IUnknown) || IsEqualIID(iid, &IID_IDispatch) ||
        IsEqualIID(iid, &DIID__ISubscriptionEvents)) {
        *o = i;
        return S_OK;
    }
    *o = NULL;
    return E_NOINTERFACE;
}

static ULONG WINAPI sink_addref(IDispatch *i)
{
    return 2;
}

static ULONG WINAPI sink_release(IDispatch *i)
{
    return 1;
}

static HRESULT WINAPI sink_tic(IDispatch *i, UINT *n)
{
    *n = 0;
    return S_OK;
}

static HRESULT WINAPI sink_ti(IDispatch *i, UINT n, LCID l, ITypeInfo **t)
{
    return E_NOTIMPL;
}

static HRESULT WINAPI sink_ids(IDispatch *i, REFIID r, LPOLESTR *n, UINT c, LCID l, DISPID *d)
{
    return E_NOTIMPL;
}

static HRESULT WINAPI sink_invoke(IDispatch *i, DISPID id, REFIID r, LCID l, WORD f, DISPPARAMS *p,
                                  VARIANT *res, EXCEPINFO *ei, UINT *ae)
{
    long attempt;
    double mid;
    if (id != 1 || p->cArgs != 4)
        return DISP_E_MEMBERNOTFOUND;
    attempt = V_I4(&p->rgvarg[0]);
    mid = V_R8(&p->rgvarg[1]);
    out("EVENT %s %s %.0f %ld\n", utf8(V_BSTR(&p->rgvarg[3])),
        V_VT(&p->rgvarg[2]) == VT_BSTR ? utf8(V_BSTR(&p->rgvarg[2])) : "(bytes)", mid, attempt);
    if (sink.mode == MODE_HANG) {
        out("HANGING %.0f\n", mid);
        Sleep(INFINITE);
    }
    if (sink.mode == MODE_FAIL_FIRST && attempt == 1) {
        if (ei != NULL) {
            memset(ei, 0, sizeof *ei);
            ei->scode = E_FAIL;
            ei->bstrDescription = SysAllocString(L"the handler cannot take it yet");
        }
        return DISP_E_EXCEPTION;
    }
    sink.ok++;
    return S_OK;
}

static const IDispatchVtbl sink_vtbl = {sink_query, sink_addref, sink_release, sink_tic,
                                        sink_ti,    sink_ids,    sink_invoke};

static int cmd_events(const char *name, const char *filter, int count, const char *mode,
                      long timeout_ms)
{
    IBroker *b;
    ISubscription *s = NULL;
    IConnectionPointContainer *cpc;
    IConnectionPoint *cp;
    DWORD cookie = 0;
    ULONGLONG end;
    HRESULT hr;

    sink.iface.lpVtbl = (IDispatchVtbl *)&sink_vtbl;
    sink.mode = strcmp(mode, "fail-first") == 0 ? MODE_FAIL_FIRST
                : strcmp(mode, "hang") == 0     ? MODE_HANG
                                                : MODE_OK;
    b = create(&CLSID_Broker);
    if (strcmp(mode, "disp") == 0) {
        /* as a script engine would: names and VARIANTs only */
        IDispatch *d;
        VARIANT args[2], r;
        EXCEPINFO ei;
        IBroker_QueryInterface(b, &IID_IDispatch, (void **)&d);
        var_str(&args[0], name);
        var_str(&args[1], filter);
        VariantInit(&r);
        hr = call(d, L"Subscribe", DISPATCH_METHOD, args, 2, &r, &ei);
        if (FAILED(hr) || V_VT(&r) != VT_DISPATCH) {
            print_exc("EXC", hr, &ei);
            return 3;
        }
        IDispatch_QueryInterface(V_DISPATCH(&r), &IID_ISubscription, (void **)&s);
        VariantClear(&r);
        VariantClear(&args[0]);
        VariantClear(&args[1]);
        IDispatch_Release(d);
    } else {
        s = subscribe(b, name, filter);
    }
    if (timeout_ms > 0 && FAILED(hr = ISubscription_put_EventTimeout(s, timeout_ms)))
        fail("EventTimeout", hr);
    if (FAILED(hr = ISubscription_QueryInterface(s, &IID_IConnectionPointContainer, (void **)&cpc)))
        fail("QueryInterface(IConnectionPointContainer)", hr);
    if (FAILED(hr = IConnectionPointContainer_FindConnectionPoint(cpc, &DIID__ISubscriptionEvents,
                                                                  &cp)))
        fail("FindConnectionPoint", hr);
    if (FAILED(hr = IConnectionPoint_Advise(cp, (IUnknown *)&sink.iface, &cookie)))
        fail("Advise", hr);
    out("ADVISED\n");
    end = GetTickCount64() + 60000;
    while (sink.ok < count && GetTickCount64() < end) {
        MSG m;
        MsgWaitForMultipleObjects(0, NULL, FALSE, 100, QS_ALLINPUT);
        while (PeekMessageW(&m, NULL, 0, 0, PM_REMOVE))
            DispatchMessageW(&m);
    }
    IConnectionPoint_Unadvise(cp, cookie);
    out("HANDLED %d\n", sink.ok);
    IConnectionPoint_Release(cp);
    IConnectionPointContainer_Release(cpc);
    ISubscription_Release(s);
    IBroker_Release(b);
    return sink.ok >= count ? 0 : 3;
}

/* ---- bad input ---- */

static int expect_fail(const char *what, HRESULT hr)
{
    char why[600];
    if (SUCCEEDED(hr)) {
        out("FAIL %s succeeded\n", what);
        return 1;
    }
    out("BAD %s 0x%08lx %s\n", what, (unsigned long)hr, last_error(why, sizeof why));
    return 0;
}

static int cmd_bad(void)
{
    IBroker *b = create(&CLSID_Broker);
    IDispatch *d;
    ISubscription *s;
    BSTR t = bstr("bad/input"), empty = SysAllocString(L""), huge;
    VARIANT v, h, none, r;
    SAFEARRAY *sa;
    EXCEPINFO ei;
    double id;
    int failures = 0;
    size_t max = 0;

    var_missing(&none);
    IBroker_QueryInterface(b, &IID_IDispatch, (void **)&d);

    /* a payload that is an object */
    VariantInit(&v);
    V_VT(&v) = VT_DISPATCH;
    V_DISPATCH(&v) = d;
    failures += expect_fail("payload-object", IBroker_Publish(b, t, v, none, &id));
    /* an array of Longs */
    sa = SafeArrayCreateVector(VT_I4, 0, 3);
    V_VT(&v) = VT_ARRAY | VT_I4;
    V_ARRAY(&v) = sa;
    failures += expect_fail("payload-long-array", IBroker_Publish(b, t, v, none, &id));
    SafeArrayDestroy(sa);
    /* headers: an odd number of items, a Long */
    var_str(&v, "x");
    sa = SafeArrayCreateVector(VT_VARIANT, 0, 3);
    V_VT(&h) = VT_ARRAY | VT_VARIANT;
    V_ARRAY(&h) = sa;
    failures += expect_fail("headers-odd", IBroker_Publish(b, t, v, h, &id));
    SafeArrayDestroy(sa);
    var_long(&h, 5);
    failures += expect_fail("headers-long", IBroker_Publish(b, t, v, h, &id));
    /* empty and invalid topics */
    failures += expect_fail("topic-empty", IBroker_Publish(b, empty, v, none, &id));
    {
        BSTR w = bstr("a/#");
        failures += expect_fail("topic-wildcard", IBroker_Publish(b, w, v, none, &id));
        SysFreeString(w);
    }
    /* a lone surrogate */
    {
        BSTR w = SysAllocStringLen(L"a/\xd800", 3);
        failures += expect_fail("topic-not-utf16", IBroker_Publish(b, w, v, none, &id));
        SysFreeString(w);
    }
    /* a huge topic (1 M characters) and a payload over max_message */
    huge = SysAllocStringLen(NULL, 1 << 20);
    for (UINT i = 0; i < (1u << 20); i++)
        huge[i] = L'a';
    failures += expect_fail("topic-huge", IBroker_Publish(b, huge, v, none, &id));
    VariantClear(&v);
    V_VT(&v) = VT_BSTR;
    V_BSTR(&v) = huge; /* now owned by v */
    {
        /* max_message of the test config is 64 KiB */
        (void)max;
        failures += expect_fail("payload-huge", IBroker_Publish(b, t, v, none, &id));
    }
    VariantClear(&v);
    /* Subscribe: an empty name, a filter that is a number */
    failures += expect_fail("subscribe-empty", IBroker_Subscribe(b, empty, none, &s));
    var_long(&v, 7);
    {
        BSTR n = bstr("bad-sub");
        failures += expect_fail("subscribe-filter-long", IBroker_Subscribe(b, n, v, &s));
        SysFreeString(n);
    }
    /* through IDispatch: too few arguments, an argument that cannot convert */
    VariantInit(&r);
    {
        HRESULT hr = call(d, L"Publish", DISPATCH_METHOD, &v, 1, &r, &ei);
        out("BAD disp-missing-arg 0x%08lx\n", (unsigned long)hr);
        failures += SUCCEEDED(hr);
    }
    {
        VARIANT args[2];
        HRESULT hr;
        VariantInit(&args[0]);
        V_VT(&args[0]) = VT_DISPATCH;
        V_DISPATCH(&args[0]) = d; /* the topic an object */
        var_str(&args[1], "p");
        hr = call(d, L"Publish", DISPATCH_METHOD, args, 2, &r, &ei);
        print_exc("BAD disp-topic-object", hr, &ei);
        failures += SUCCEEDED(hr);
        VariantClear(&args[1]);
    }
    {
        VARIANT args[2];
        HRESULT hr;
        var_str(&args[0], "bad/input");
        VariantInit(&args[1]);
        V_VT(&args[1]) = VT_DISPATCH;
        V_DISPATCH(&args[1]) = d;
        hr = call(d, L"Publish", DISPATCH_METHOD, args, 2, &r, &ei);
        print_exc("BAD disp-payload-object", hr, &ei);
        failures += SUCCEEDED(hr) || ei.scode == 0;
        VariantClear(&args[0]);
    }
    /* Ack of nonsense and of an id never taken; Pull with max 0 */
    s = subscribe(b, "bad-sub", "bad/#");
    var_str(&v, "abc");
    failures += expect_fail("ack-text", ISubscription_Ack(s, v));
    VariantClear(&v);
    V_VT(&v) = VT_R8;
    V_R8(&v) = 123456;
    failures += expect_fail("ack-unknown", ISubscription_Ack(s, v));
    var_long(&v, 0);
    VariantInit(&r);
    failures += expect_fail("pull-max-0", ISubscription_Pull(s, v, none, &r));
    failures += expect_fail("buffer-0", ISubscription_put_Buffer(s, 0));
    ISubscription_Release(s);
    /* and the server still works */
    var_str(&v, "after");
    if (FAILED(IBroker_Publish(b, t, v, none, &id))) {
        out("FAIL publish after bad input\n");
        failures++;
    } else {
        out("STILL OK %.0f\n", id);
    }
    VariantClear(&v);
    SysFreeString(t);
    SysFreeString(empty);
    IDispatch_Release(d);
    IBroker_Release(b);
    return failures == 0 ? 0 : 3;
}

/* ---- the rest ---- */

static int cmd_user(void)
{
    IBroker *b = create(&CLSID_Broker);
    BSTR u = NULL;
    HRESULT hr = IBroker_get_User(b, &u);
    if (FAILED(hr))
        fail("User", hr);
    out("USER %s\n", utf8(u));
    SysFreeString(u);
    IBroker_Release(b);
    return 0;
}

static int cmd_bench(int n, const char *topic, const char *clsid_text)
{
    CLSID clsid = CLSID_Broker;
    IBroker *b;
    BSTR t = bstr(topic);
    VARIANT p, h;
    LARGE_INTEGER f, a, z;
    if (clsid_text != NULL) {
        BSTR c = bstr(clsid_text);
        if (FAILED(CLSIDFromString(c, &clsid)))
            fail("CLSIDFromString", E_INVALIDARG);
        SysFreeString(c);
    }
    b = create(&clsid);
    var_str(&p, "0123456789012345678901234567890123456789012345678901234567890123");
    var_missing(&h);
    {
        double id; /* warm up: the relay connects */
        if (FAILED(IBroker_Publish(b, t, p, h, &id)))
            fail("Publish", E_FAIL);
    }
    QueryPerformanceFrequency(&f);
    QueryPerformanceCounter(&a);
    for (int i = 0; i < n; i++) {
        double id;
        HRESULT hr = IBroker_Publish(b, t, p, h, &id);
        if (FAILED(hr))
            fail("Publish", hr);
    }
    QueryPerformanceCounter(&z);
    out("RATE %.0f\n", (double)n * (double)f.QuadPart / (double)(z.QuadPart - a.QuadPart));
    VariantClear(&p);
    SysFreeString(t);
    IBroker_Release(b);
    return 0;
}

int main(int argc, char **argv)
{
    const char *cmd = argc > 1 ? argv[1] : "";
    int rc = 1;
    CoInitializeEx(NULL, COINIT_APARTMENTTHREADED);
    if (strcmp(cmd, "pub") == 0 && argc >= 4)
        rc = cmd_pub(argv[2], argv[3], argc > 4 ? atoi(argv[4]) : 1);
    else if (strcmp(cmd, "renew") == 0 && argc == 4)
        rc = cmd_renew(argv[2], atoi(argv[3]));
    else if (strcmp(cmd, "pubseq") == 0 && argc == 5)
        rc = cmd_pubseq(argv[2], atoi(argv[3]), atoi(argv[4]));
    else if (strcmp(cmd, "disp-pub") == 0 && argc == 4)
        rc = cmd_disp_pub(argv[2], argv[3]);
    else if (strcmp(cmd, "pull") == 0 && argc == 5)
        rc = cmd_pull(argv[2], atoi(argv[3]), atoi(argv[4]));
    else if (strcmp(cmd, "take") == 0 && argc == 3)
        rc = cmd_take(argv[2]);
    else if (strcmp(cmd, "events") == 0 && argc >= 6)
        rc = cmd_events(argv[2], argv[3], atoi(argv[4]), argv[5], argc > 6 ? atol(argv[6]) : 0);
    else if (strcmp(cmd, "bad") == 0)
        rc = cmd_bad();
    else if (strcmp(cmd, "user") == 0)
        rc = cmd_user();
    else if (strcmp(cmd, "bench") == 0 && argc >= 4)
        rc = cmd_bench(atoi(argv[2]), argv[3], argc > 4 ? argv[4] : NULL);
    else
        fprintf(stderr, "usage: see the header of tests/win/com/com_client.c\n");
    CoUninitialize();
    return rc;
}
