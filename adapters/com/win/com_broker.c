/*
 * The Broker object (IBroker, com_int.h): Publish, Subscribe, Stats and
 * User, each one request to the running broker over the relay's link.
 * Publish returns only once the broker answered with the committed id;
 * a refusal is a COM error whose description is the broker's reason.
 */
#include "adapters/com/win/com_int.h"

#include "service/alloc.h"
#include "service/base64.h"

#include <stdio.h>
#include <string.h>

typedef struct broker {
    IBroker iface;
    ISupportErrorInfo sei;
    LONG refs;
    sb_com_obj obj;
    LONG timeout_ms;
} broker;

#define BROKER_FROM(p, m) ((broker *)((char *)(p) - offsetof(broker, m)))
#define FAIL(hr, ...) sb_com__fail(hr, &IID_IBroker, "Broker", __VA_ARGS__)

static broker *impl(IBroker *i)
{
    return (broker *)i;
}

static HRESULT WINAPI b_query(IBroker *i, REFIID iid, void **out)
{
    broker *b = impl(i);
    if (IsEqualIID(iid, &IID_IUnknown) || IsEqualIID(iid, &IID_IDispatch) ||
        IsEqualIID(iid, &IID_IBroker))
        *out = &b->iface;
    else if (IsEqualIID(iid, &IID_ISupportErrorInfo))
        *out = &b->sei;
    else {
        *out = NULL;
        return E_NOINTERFACE;
    }
    IBroker_AddRef(i);
    return S_OK;
}

static ULONG WINAPI b_addref(IBroker *i)
{
    return (ULONG)InterlockedIncrement(&impl(i)->refs);
}

static ULONG WINAPI b_release(IBroker *i)
{
    broker *b = impl(i);
    LONG n = InterlockedDecrement(&b->refs);
    if (n == 0) {
        sb_com__server_untrack(&b->obj);
        sb_free(b);
        }
    return (ULONG)n;
}

static HRESULT WINAPI b_typeinfo_count(IBroker *i, UINT *n)
{
    *n = 1;
    return S_OK;
}

static HRESULT WINAPI b_typeinfo(IBroker *i, UINT index, LCID lcid, ITypeInfo **out)
{
    ITypeInfo *ti = sb_com__typeinfo(&IID_IBroker);
    if (index != 0 || ti == NULL)
        return DISP_E_BADINDEX;
    ITypeInfo_AddRef(ti);
    *out = ti;
    return S_OK;
}

static HRESULT WINAPI b_ids(IBroker *i, REFIID iid, LPOLESTR *names, UINT n, LCID lcid,
                            DISPID *ids)
{
    return DispGetIDsOfNames(sb_com__typeinfo(&IID_IBroker), names, n, ids);
}

static HRESULT WINAPI b_invoke(IBroker *i, DISPID id, REFIID iid, LCID lcid, WORD flags,
                               DISPPARAMS *params, VARIANT *result, EXCEPINFO *ei, UINT *argerr)
{
    return DispInvoke(i, sb_com__typeinfo(&IID_IBroker), id, flags, params, result, ei, argerr);
}

/* The pub request: text as "payload" (or as base64 with b64), bytes as
 * "payload_b64". */
static json_t *pub_req(const char *topic, const unsigned char *p, size_t n, int text, int b64,
                       json_t *headers)
{
    json_t *o = json_pack("{s:s, s:s}", "op", "pub", "topic", topic);
    if (o == NULL)
        return NULL;
    if (text && !b64) {
        json_object_set_new(o, "payload", json_stringn((const char *)p, n));
    } else {
        char *enc = sb_base64_encode(p, n);
        if (enc == NULL) {
            json_decref(o);
            return NULL;
        }
        json_object_set_new(o, "payload_b64", json_string(enc));
        sb_free(enc);
    }
    if (json_object_size(headers) > 0)
        json_object_set(o, "headers", headers);
    return o;
}

/* The length of text as a JSON string's contents: control characters take
 * six bytes (\u0001), quotes and backslashes two. Text that grows past
 * its base64 form goes as base64: the broker stores the same bytes. */
static size_t escaped_len(const unsigned char *p, size_t n)
{
    size_t len = 0;
    for (size_t i = 0; i < n; i++)
        len += p[i] < 0x20 ? 6 : p[i] == '"' || p[i] == '\\' ? 2 : 1;
    return len;
}

static HRESULT WINAPI b_publish(IBroker *i, BSTR btopic, VARIANT payload, VARIANT vheaders,
                                double *out)
{
    broker *b = impl(i);
    int timeout = (int)b->timeout_ms, text = 0, rc;
    char *topic = NULL, why[300];
    unsigned char *p = NULL;
    size_t n = 0;
    json_t *headers = json_object(), *req = NULL, *reply = NULL;
    json_int_t id;
    sb_error err;
    HRESULT hr;

    *out = 0;
    if (headers == NULL)
        return E_OUTOFMEMORY;
    if ((rc = sb_com__bstr_utf8(btopic, &topic, NULL)) != 0) {
        hr = rc == SB_ENOMEM ? E_OUTOFMEMORY
                             : FAIL(E_INVALIDARG, "Publish: the topic is not valid UTF-16 text");
        goto done;
    }
    if (topic[0] == '\0') {
        hr = FAIL(E_INVALIDARG, "Publish: the topic is empty");
        goto done;
    }
    if (FAILED(hr = sb_com__payload_in(&payload, &p, &n, &text, why, sizeof why))) {
        hr = FAIL(hr, "Publish %s: %s", topic, why);
        goto done;
    }
    if (FAILED(hr = sb_com__headers_in(&vheaders, headers, why, sizeof why))) {
        hr = FAIL(hr, "Publish %s: %s", topic, why);
        goto done;
    }
    req = pub_req(topic, p, n, text, text && escaped_len(p, n) > (n + 2) / 3 * 4, headers);
    if (req == NULL) {
        hr = E_OUTOFMEMORY;
        goto done;
    }
    /* the pool refuses a payload over the broker's max_message (which
     * would close the connection) before sending it */
    rc = sb_com__pool_request(sb_com__server_pool(), req, n, timeout, &reply, &err);
    if (rc != 0) {
        hr = FAIL(sb_com_hresult(rc), "Publish %s: %s", topic, err.msg);
        goto done;
    }
    id = json_integer_value(json_object_get(reply, "msg_id"));
    *out = (double)id;
    hr = S_OK;
done:
    json_decref(reply);
    json_decref(req);
    json_decref(headers);
    sb_free(topic);
    sb_free(p);
    return hr;
}

static HRESULT WINAPI b_subscribe(IBroker *i, BSTR bname, VARIANT vfilter, ISubscription **out)
{
    broker *b = impl(i);
    char *name = NULL, *filter = NULL;
    HRESULT hr;
    int rc;

    *out = NULL;
    if ((rc = sb_com__bstr_utf8(bname, &name, NULL)) != 0)
        return rc == SB_ENOMEM ? E_OUTOFMEMORY
                               : FAIL(E_INVALIDARG, "Subscribe: the name is not valid UTF-16 text");
    if (name[0] == '\0') {
        sb_free(name);
        return FAIL(E_INVALIDARG, "Subscribe: the subscription name is empty");
    }
    if (!sb_com__var_missing(&vfilter)) {
        VARIANT f;
        VariantInit(&f);
        if (FAILED(VariantCopyInd(&f, &vfilter)) || V_VT(&f) != VT_BSTR ||
            sb_com__bstr_utf8(V_BSTR(&f), &filter, NULL) != 0) {
            VariantClear(&f);
            sb_free(name);
            return FAIL(DISP_E_TYPEMISMATCH, "Subscribe %s: the filter must be a String", name);
        }
        VariantClear(&f);
    }
    hr = sb_com__sub_new(name, filter, sb_com__caller_pid(), b->timeout_ms, out);
    sb_free(name);
    sb_free(filter);
    return hr;
}

static HRESULT WINAPI b_stats(IBroker *i, BSTR *out)
{
    broker *b = impl(i);
    json_t *req = json_pack("{s:s}", "op", "stats"), *reply = NULL;
    sb_error err;
    char *text;
    int rc;

    *out = NULL;
    if (req == NULL)
        return E_OUTOFMEMORY;
    rc = sb_com__pool_request(sb_com__server_pool(), req, 0, (int)b->timeout_ms, &reply, &err);
    json_decref(req);
    if (rc != 0)
        return FAIL(sb_com_hresult(rc), "Stats: %s", err.msg);
    json_object_del(reply, "op");
    json_object_del(reply, "id");
    text = json_dumps(reply, JSON_COMPACT);
    json_decref(reply);
    if (text == NULL)
        return E_OUTOFMEMORY;
    *out = sb_com__utf8_bstr(text, strlen(text));
    free(text);
    return *out != NULL ? S_OK : E_OUTOFMEMORY;
}

static HRESULT WINAPI b_user(IBroker *i, BSTR *out)
{
    char *user = NULL;
    sb_error err;
    *out = NULL;
    if (sb_com__pool_user(sb_com__server_pool(), (int)impl(i)->timeout_ms, &user, &err) != 0)
        return FAIL(sb_com_hresult(err.code), "User: %s", err.msg);
    *out = user != NULL ? sb_com__utf8_bstr(user, strlen(user)) : SysAllocString(L"");
    sb_free(user);
    return *out != NULL ? S_OK : E_OUTOFMEMORY;
}

static HRESULT WINAPI b_get_timeout(IBroker *i, long *out)
{
    *out = impl(i)->timeout_ms;
    return S_OK;
}

static HRESULT WINAPI b_put_timeout(IBroker *i, long ms)
{
    if (ms < 1)
        return FAIL(E_INVALIDARG, "Timeout must be 1 ms or more, not %ld", ms);
    InterlockedExchange(&impl(i)->timeout_ms, ms);
    return S_OK;
}

static const IBrokerVtbl broker_vtbl = {
    b_query,   b_addref,  b_release,     b_typeinfo_count, b_typeinfo,   b_ids,
    b_invoke,  b_publish, b_subscribe,   b_stats,          b_user,       b_get_timeout,
    b_put_timeout,
};

static HRESULT WINAPI sei_query(ISupportErrorInfo *i, REFIID iid, void **out)
{
    return b_query(&BROKER_FROM(i, sei)->iface, iid, out);
}

static ULONG WINAPI sei_addref(ISupportErrorInfo *i)
{
    return b_addref(&BROKER_FROM(i, sei)->iface);
}

static ULONG WINAPI sei_release(ISupportErrorInfo *i)
{
    return b_release(&BROKER_FROM(i, sei)->iface);
}

static HRESULT WINAPI sei_supports(ISupportErrorInfo *i, REFIID iid)
{
    return IsEqualIID(iid, &IID_IBroker) ? S_OK : S_FALSE;
}

static const ISupportErrorInfoVtbl sei_vtbl = {sei_query, sei_addref, sei_release, sei_supports};

HRESULT sb_com__broker_new(DWORD client_pid, REFIID iid, void **out)
{
    broker *b = sb_calloc(1, sizeof(*b));
    HRESULT hr;
    *out = NULL;
    if (b == NULL)
        return E_OUTOFMEMORY;
    b->iface.lpVtbl = (IBrokerVtbl *)&broker_vtbl;
    b->sei.lpVtbl = (ISupportErrorInfoVtbl *)&sei_vtbl;
    b->refs = 1;
    b->timeout_ms = SB_COM_DEFAULT_TIMEOUT_MS;
    b->obj.unk = (IUnknown *)&b->iface;
    b->obj.refs = &b->refs;
    b->obj.pid = client_pid;
    sb_com__server_track(&b->obj);
    hr = b_query(&b->iface, iid, out);
    b_release(&b->iface);
    return hr;
}
