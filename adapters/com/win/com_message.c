/*
 * Deliveries in the relay (com_int.h): a "msg" line parsed into a
 * sb_com_msg, and the Message object (IMessage) scripts get from Pull and
 * Wait. A Message is a snapshot: it stays readable after its Ack.
 */
#include "adapters/com/win/com_int.h"

#include "service/alloc.h"
#include "service/base64.h"

#include <string.h>

sb_com_msg *sb_com__msg_parse(json_t *o, uint64_t gen)
{
    const char *sub = json_string_value(json_object_get(o, "sub"));
    const char *topic = json_string_value(json_object_get(o, "topic"));
    json_t *id = json_object_get(o, "msg_id"), *text = json_object_get(o, "payload"),
           *b64 = json_object_get(o, "payload_b64"), *headers = json_object_get(o, "headers");
    sb_com_msg *m;

    if (sub == NULL || topic == NULL || !json_is_integer(id) || json_integer_value(id) <= 0)
        return NULL;
    m = sb_calloc(1, sizeof(*m));
    if (m == NULL)
        return NULL;
    m->refs = 1;
    m->id = (uint64_t)json_integer_value(id);
    m->gen = gen;
    m->attempt = (int)json_integer_value(json_object_get(o, "attempt"));
    if (m->attempt < 1)
        m->attempt = 1;
    m->sub = sb_strdup(sub);
    m->topic = sb_strdup(topic);
    if (json_is_string(text)) {
        size_t n = json_string_length(text);
        m->payload = sb_malloc(n + 1);
        if (m->payload != NULL) {
            memcpy(m->payload, json_string_value(text), n);
            m->payload[n] = '\0';
            m->payload_len = n;
        }
    } else if (json_is_string(b64)) {
        if (sb_base64_decode(json_string_value(b64), json_string_length(b64), &m->payload,
                             &m->payload_len) != 0)
            m->payload = NULL;
    } else {
        m->payload = sb_calloc(1, 1);
    }
    if (json_is_object(headers))
        m->headers = json_incref(headers);
    if (m->sub == NULL || m->topic == NULL || m->payload == NULL) {
        sb_com__msg_unref(m);
        return NULL;
    }
    return m;
}

sb_com_msg *sb_com__msg_ref(sb_com_msg *m)
{
    InterlockedIncrement(&m->refs);
    return m;
}

void sb_com__msg_unref(sb_com_msg *m)
{
    if (m == NULL || InterlockedDecrement(&m->refs) != 0)
        return;
    sb_free(m->sub);
    sb_free(m->topic);
    sb_free(m->payload);
    json_decref(m->headers);
    sb_free(m);
}

/* ---- the Message object ---- */

typedef struct message {
    IMessage iface;
    LONG refs;
    sb_com_msg *m;
    sb_com_obj obj;
} message;

static message *impl(IMessage *i)
{
    return (message *)i;
}

static HRESULT WINAPI m_query(IMessage *i, REFIID iid, void **out)
{
    if (IsEqualIID(iid, &IID_IUnknown) || IsEqualIID(iid, &IID_IDispatch) ||
        IsEqualIID(iid, &IID_IMessage)) {
        *out = i;
        IMessage_AddRef(i);
        return S_OK;
    }
    *out = NULL;
    return E_NOINTERFACE;
}

static ULONG WINAPI m_addref(IMessage *i)
{
    return (ULONG)InterlockedIncrement(&impl(i)->refs);
}

static ULONG WINAPI m_release(IMessage *i)
{
    message *o = impl(i);
    LONG n = InterlockedDecrement(&o->refs);
    if (n == 0) {
        sb_com__server_untrack(&o->obj);
        sb_com__msg_unref(o->m);
        sb_free(o);
        }
    return (ULONG)n;
}

static HRESULT WINAPI m_typeinfo_count(IMessage *i, UINT *n)
{
    *n = 1;
    return S_OK;
}

static HRESULT WINAPI m_typeinfo(IMessage *i, UINT index, LCID lcid, ITypeInfo **out)
{
    ITypeInfo *ti = sb_com__typeinfo(&IID_IMessage);
    if (index != 0 || ti == NULL)
        return DISP_E_BADINDEX;
    ITypeInfo_AddRef(ti);
    *out = ti;
    return S_OK;
}

static HRESULT WINAPI m_ids(IMessage *i, REFIID iid, LPOLESTR *names, UINT n, LCID lcid,
                            DISPID *ids)
{
    return DispGetIDsOfNames(sb_com__typeinfo(&IID_IMessage), names, n, ids);
}

static HRESULT WINAPI m_invoke(IMessage *i, DISPID id, REFIID iid, LCID lcid, WORD flags,
                               DISPPARAMS *params, VARIANT *result, EXCEPINFO *ei, UINT *argerr)
{
    return DispInvoke(i, sb_com__typeinfo(&IID_IMessage), id, flags, params, result, ei, argerr);
}

static HRESULT WINAPI m_id(IMessage *i, double *out)
{
    *out = (double)impl(i)->m->id;
    return S_OK;
}

static HRESULT WINAPI m_topic(IMessage *i, BSTR *out)
{
    const sb_com_msg *m = impl(i)->m;
    *out = sb_com__utf8_bstr(m->topic, strlen(m->topic));
    return *out != NULL ? S_OK : E_OUTOFMEMORY;
}

static HRESULT WINAPI m_payload(IMessage *i, VARIANT *out)
{
    const sb_com_msg *m = impl(i)->m;
    return sb_com__payload_out(m->payload, m->payload_len, 0, out);
}

static HRESULT WINAPI m_bytes(IMessage *i, VARIANT *out)
{
    const sb_com_msg *m = impl(i)->m;
    return sb_com__payload_out(m->payload, m->payload_len, 1, out);
}

static HRESULT WINAPI m_attempt(IMessage *i, long *out)
{
    *out = impl(i)->m->attempt;
    return S_OK;
}

static HRESULT WINAPI m_header(IMessage *i, BSTR name, VARIANT *out)
{
    const sb_com_msg *m = impl(i)->m;
    const char *v;
    char *key;
    VariantInit(out);
    if (sb_com__bstr_utf8(name, &key, NULL) != 0)
        return E_INVALIDARG;
    v = m->headers != NULL ? json_string_value(json_object_get(m->headers, key)) : NULL;
    sb_free(key);
    if (v == NULL)
        return S_OK; /* Empty */
    V_VT(out) = VT_BSTR;
    V_BSTR(out) = sb_com__utf8_bstr(v, strlen(v));
    return V_BSTR(out) != NULL ? S_OK : E_OUTOFMEMORY;
}

static HRESULT WINAPI m_headers(IMessage *i, VARIANT *out)
{
    const sb_com_msg *m = impl(i)->m;
    size_t n = m->headers != NULL ? json_object_size(m->headers) : 0;
    SAFEARRAY *sa = SafeArrayCreateVector(VT_VARIANT, 0, (ULONG)(n * 2));
    const char *k;
    json_t *v;
    LONG at = 0;
    VariantInit(out);
    if (sa == NULL)
        return E_OUTOFMEMORY;
    if (m->headers != NULL)
        json_object_foreach(m->headers, k, v)
        {
            VARIANT a, b;
            const char *s = json_string_value(v);
            V_VT(&a) = VT_BSTR;
            V_BSTR(&a) = sb_com__utf8_bstr(k, strlen(k));
            V_VT(&b) = VT_BSTR;
            V_BSTR(&b) = s != NULL ? sb_com__utf8_bstr(s, strlen(s)) : SysAllocString(L"");
            SafeArrayPutElement(sa, &at, &a);
            at++;
            SafeArrayPutElement(sa, &at, &b);
            at++;
            VariantClear(&a);
            VariantClear(&b);
        }
    V_VT(out) = VT_ARRAY | VT_VARIANT;
    V_ARRAY(out) = sa;
    return S_OK;
}

static HRESULT WINAPI m_sub(IMessage *i, BSTR *out)
{
    const sb_com_msg *m = impl(i)->m;
    *out = sb_com__utf8_bstr(m->sub, strlen(m->sub));
    return *out != NULL ? S_OK : E_OUTOFMEMORY;
}

static const IMessageVtbl message_vtbl = {
    m_query,   m_addref,  m_release,  m_typeinfo_count, m_typeinfo, m_ids,
    m_invoke,  m_id,      m_topic,    m_payload,        m_bytes,    m_attempt,
    m_header,  m_headers, m_sub,
};

HRESULT sb_com__message_new(sb_com_msg *m, DWORD client_pid, IMessage **out)
{
    message *o = sb_calloc(1, sizeof(*o));
    *out = NULL;
    if (o == NULL)
        return E_OUTOFMEMORY;
    o->iface.lpVtbl = (IMessageVtbl *)&message_vtbl;
    o->refs = 1;
    o->m = sb_com__msg_ref(m);
    o->obj.unk = (IUnknown *)&o->iface;
    o->obj.refs = &o->refs;
    o->obj.pid = client_pid;
    sb_com__server_track(&o->obj);
    *out = &o->iface;
    return S_OK;
}
