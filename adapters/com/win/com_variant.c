/*
 * VARIANT conversions at the COM boundary (com_int.h): what scripts pass
 * (Strings, Byte arrays, numbers, arrays of pairs, Scripting.Dictionary
 * objects, all possibly by reference), what they get back, and COM errors
 * with a description. UTF-16 <-> UTF-8 happens here and nowhere else in
 * the relay; text that is not valid UTF-16 is refused, never replaced.
 */
#include "adapters/com/win/com_int.h"

#include "service/alloc.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

HRESULT sb_com_hresult(int sb_code)
{
    if (sb_code == SB_ENOMEM)
        return E_OUTOFMEMORY;
    if (sb_code >= 0)
        return E_FAIL;
    return MAKE_HRESULT(SEVERITY_ERROR, FACILITY_ITF, 0x200 + (unsigned)(-sb_code));
}

int sb_com__var_missing(const VARIANT *v)
{
    while (v != NULL && V_VT(v) == (VT_BYREF | VT_VARIANT))
        v = V_VARIANTREF(v);
    return v == NULL || V_VT(v) == VT_EMPTY ||
           (V_VT(v) == VT_ERROR && V_ERROR(v) == DISP_E_PARAMNOTFOUND);
}

HRESULT sb_com__fail(HRESULT hr, REFIID iid, const char *what, const char *fmt, ...)
{
    char text[1024];
    wchar_t wtext[1024], source[64];
    ICreateErrorInfo *cei;
    IErrorInfo *ei;
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (MultiByteToWideChar(CP_UTF8, 0, text, -1, wtext, (int)(sizeof wtext / sizeof wtext[0])) ==
        0)
        wcscpy(wtext, L"(the description is not valid UTF-8)");
    swprintf(source, sizeof source / sizeof source[0], L"Switchboard.%hs", what);
    if (SUCCEEDED(CreateErrorInfo(&cei))) {
        ICreateErrorInfo_SetDescription(cei, wtext);
        ICreateErrorInfo_SetSource(cei, source);
        ICreateErrorInfo_SetGUID(cei, iid);
        if (SUCCEEDED(ICreateErrorInfo_QueryInterface(cei, &IID_IErrorInfo, (void **)&ei))) {
            SetErrorInfo(0, ei);
            IErrorInfo_Release(ei);
        }
        ICreateErrorInfo_Release(cei);
    }
    return hr;
}

HRESULT sb_com__fail_sb(const sb_error *err, REFIID iid, const char *what)
{
    return sb_com__fail(sb_com_hresult(err->code), iid, what, "%s", err->msg);
}

int sb_com__bstr_utf8(BSTR b, char **out, size_t *out_len)
{
    int wn = b != NULL ? (int)SysStringLen(b) : 0, n;
    char *s;
    *out = NULL;
    if (out_len != NULL)
        *out_len = 0;
    if (wn == 0) {
        *out = sb_strdup("");
        return *out != NULL ? 0 : SB_ENOMEM;
    }
    n = WideCharToMultiByte(CP_UTF8, WC_ERR_INVALID_CHARS, b, wn, NULL, 0, NULL, NULL);
    if (n <= 0)
        return SB_EINVAL;
    s = sb_malloc((size_t)n + 1);
    if (s == NULL)
        return SB_ENOMEM;
    WideCharToMultiByte(CP_UTF8, WC_ERR_INVALID_CHARS, b, wn, s, n, NULL, NULL);
    s[n] = '\0';
    *out = s;
    if (out_len != NULL)
        *out_len = (size_t)n;
    return 0;
}

BSTR sb_com__utf8_bstr(const char *s, size_t len)
{
    int n;
    BSTR b;
    if (len == 0)
        return SysAllocStringLen(L"", 0);
    if (len > INT_MAX)
        return NULL;
    n = MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, s, (int)len, NULL, 0);
    if (n <= 0)
        return NULL;
    b = SysAllocStringLen(NULL, (UINT)n);
    if (b != NULL)
        MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, s, (int)len, b, n);
    return b;
}

static const char *vt_name(VARTYPE vt)
{
    if (vt & VT_ARRAY)
        return "an array";
    switch (vt & VT_TYPEMASK) {
    case VT_DISPATCH:
    case VT_UNKNOWN:
        return "an object";
    case VT_ERROR:
        return "an error value";
    default:
        return "a value of another type";
    }
}

/* The bytes of a one-dimensional Byte array (borrowed until unaccess). */
static HRESULT bytes_of(SAFEARRAY *sa, unsigned char **out, size_t *out_len, char *why,
                        size_t why_n)
{
    LONG lo, hi;
    void *data;
    *out = NULL;
    *out_len = 0;
    if (sa == NULL)
        return S_OK;
    if (SafeArrayGetDim(sa) != 1) {
        snprintf(why, why_n, "a Byte array must have one dimension");
        return DISP_E_TYPEMISMATCH;
    }
    if (FAILED(SafeArrayGetLBound(sa, 1, &lo)) || FAILED(SafeArrayGetUBound(sa, 1, &hi))) {
        snprintf(why, why_n, "the array has no bounds");
        return E_INVALIDARG;
    }
    if (hi < lo)
        return S_OK;
    if (FAILED(SafeArrayAccessData(sa, &data))) {
        snprintf(why, why_n, "the array cannot be read");
        return E_INVALIDARG;
    }
    *out_len = (size_t)hi - (size_t)lo + 1;
    *out = sb_malloc(*out_len);
    if (*out != NULL)
        memcpy(*out, data, *out_len);
    SafeArrayUnaccessData(sa);
    if (*out == NULL) {
        snprintf(why, why_n, "out of memory");
        return E_OUTOFMEMORY;
    }
    return S_OK;
}

HRESULT sb_com__payload_in(const VARIANT *in, unsigned char **out, size_t *out_len, int *out_text,
                       char *why, size_t why_n)
{
    VARIANT v, s;
    HRESULT hr = S_OK;

    *out = NULL;
    *out_len = 0;
    *out_text = 0;
    VariantInit(&v);
    VariantInit(&s);
    if (FAILED(VariantCopyInd(&v, (VARIANT *)in))) {
        snprintf(why, why_n, "cannot read the payload argument");
        return E_INVALIDARG;
    }
    switch (V_VT(&v)) {
    case VT_EMPTY:
    case VT_NULL:
        break;
    case VT_BSTR: {
        char *u;
        size_t n;
        int rc = sb_com__bstr_utf8(V_BSTR(&v), &u, &n);
        if (rc != 0) {
            snprintf(why, why_n, rc == SB_ENOMEM ? "out of memory"
                                                 : "the payload is not valid UTF-16 text");
            hr = rc == SB_ENOMEM ? E_OUTOFMEMORY : E_INVALIDARG;
            break;
        }
        *out = (unsigned char *)u;
        *out_len = n;
        *out_text = 1;
        break;
    }
    case VT_ARRAY | VT_UI1:
    case VT_ARRAY | VT_I1:
        hr = bytes_of(V_ARRAY(&v), out, out_len, why, why_n);
        break;
    case VT_I1: case VT_UI1: case VT_I2: case VT_UI2: case VT_I4: case VT_UI4: case VT_I8:
    case VT_UI8: case VT_INT: case VT_UINT: case VT_R4: case VT_R8: case VT_CY: case VT_DATE:
    case VT_BOOL: case VT_DECIMAL:
        /* A number, date or boolean: its text, the same on every machine. */
        if (FAILED(VariantChangeTypeEx(&s, &v, LOCALE_INVARIANT, 0, VT_BSTR))) {
            snprintf(why, why_n, "the payload cannot be turned into text");
            hr = DISP_E_TYPEMISMATCH;
            break;
        }
        {
            char *u;
            size_t n;
            if (sb_com__bstr_utf8(V_BSTR(&s), &u, &n) != 0) {
                hr = E_OUTOFMEMORY;
                snprintf(why, why_n, "out of memory");
                break;
            }
            *out = (unsigned char *)u;
            *out_len = n;
            *out_text = 1;
        }
        break;
    default:
        snprintf(why, why_n, "the payload must be a String or a Byte array, not %s",
                 vt_name(V_VT(&v)));
        hr = DISP_E_TYPEMISMATCH;
        break;
    }
    VariantClear(&s);
    VariantClear(&v);
    return hr;
}

HRESULT sb_com__payload_out(const unsigned char *p, size_t len, int as_bytes, VARIANT *out)
{
    SAFEARRAY *sa;
    void *data;
    VariantInit(out);
    if (!as_bytes) {
        BSTR b = sb_com__utf8_bstr((const char *)p, len);
        if (b != NULL) {
            V_VT(out) = VT_BSTR;
            V_BSTR(out) = b;
            return S_OK;
        }
        /* not UTF-8: bytes */
    }
    if (len > 0x7fffffffu)
        return E_OUTOFMEMORY;
    sa = SafeArrayCreateVector(VT_UI1, 0, (ULONG)len);
    if (sa == NULL)
        return E_OUTOFMEMORY;
    if (len > 0) {
        if (FAILED(SafeArrayAccessData(sa, &data))) {
            SafeArrayDestroy(sa);
            return E_OUTOFMEMORY;
        }
        memcpy(data, p, len);
        SafeArrayUnaccessData(sa);
    }
    V_VT(out) = VT_ARRAY | VT_UI1;
    V_ARRAY(out) = sa;
    return S_OK;
}

/* A header name or value: text (a String or anything that converts). */
static HRESULT text_of(VARIANT *v, char **out, char *why, size_t why_n, const char *what)
{
    VARIANT s;
    HRESULT hr;
    VariantInit(&s);
    if (V_VT(v) == VT_BSTR)
        hr = VariantCopy(&s, v);
    else if (V_VT(v) & VT_ARRAY || V_VT(v) == VT_DISPATCH || V_VT(v) == VT_UNKNOWN ||
             V_VT(v) == VT_EMPTY || V_VT(v) == VT_NULL || V_VT(v) == VT_ERROR)
        hr = DISP_E_TYPEMISMATCH;
    else
        hr = VariantChangeTypeEx(&s, v, LOCALE_INVARIANT, 0, VT_BSTR);
    if (FAILED(hr)) {
        snprintf(why, why_n, "a header %s must be text, not %s", what,
                 V_VT(v) == VT_EMPTY || V_VT(v) == VT_NULL ? "Empty or Null" : vt_name(V_VT(v)));
        return DISP_E_TYPEMISMATCH;
    }
    if (sb_com__bstr_utf8(V_BSTR(&s), out, NULL) != 0) {
        VariantClear(&s);
        snprintf(why, why_n, "a header %s is not valid UTF-16 text", what);
        return E_INVALIDARG;
    }
    VariantClear(&s);
    return S_OK;
}

static HRESULT add_header(json_t *obj, VARIANT *name, VARIANT *value, char *why, size_t why_n)
{
    char *n = NULL, *v = NULL;
    HRESULT hr = text_of(name, &n, why, why_n, "name");
    if (SUCCEEDED(hr))
        hr = text_of(value, &v, why, why_n, "value");
    if (SUCCEEDED(hr) && n[0] == '\0') {
        snprintf(why, why_n, "a header name is empty");
        hr = E_INVALIDARG;
    }
    if (SUCCEEDED(hr) && json_object_set_new(obj, n, json_string(v)) != 0) {
        snprintf(why, why_n, "out of memory");
        hr = E_OUTOFMEMORY;
    }
    sb_free(n);
    sb_free(v);
    return hr;
}

/* Headers as an array: name, value, name, value, ... */
static HRESULT headers_from_array(SAFEARRAY *sa, VARTYPE vt, json_t *obj, char *why, size_t why_n)
{
    LONG lo, hi;
    HRESULT hr = S_OK;
    if (sa == NULL)
        return S_OK;
    if (SafeArrayGetDim(sa) != 1 || FAILED(SafeArrayGetLBound(sa, 1, &lo)) ||
        FAILED(SafeArrayGetUBound(sa, 1, &hi))) {
        snprintf(why, why_n, "headers: the array must have one dimension");
        return DISP_E_TYPEMISMATCH;
    }
    if (hi >= lo && ((LONGLONG)hi - lo + 1) % 2 != 0) {
        snprintf(why, why_n, "headers: the array must hold name, value pairs (it has %ld items)",
                 (long)(hi - lo + 1));
        return E_INVALIDARG;
    }
    for (LONG i = lo; i <= hi && SUCCEEDED(hr); i += 2) {
        VARIANT n, v, nd, vd;
        LONG j = i + 1;
        VariantInit(&n);
        VariantInit(&v);
        VariantInit(&nd);
        VariantInit(&vd);
        if (vt == VT_BSTR) {
            BSTR a = NULL, b = NULL;
            SafeArrayGetElement(sa, &i, &a);
            SafeArrayGetElement(sa, &j, &b);
            V_VT(&nd) = VT_BSTR;
            V_BSTR(&nd) = a;
            V_VT(&vd) = VT_BSTR;
            V_BSTR(&vd) = b;
        } else {
            SafeArrayGetElement(sa, &i, &n);
            SafeArrayGetElement(sa, &j, &v);
            VariantCopyInd(&nd, &n);
            VariantCopyInd(&vd, &v);
        }
        hr = add_header(obj, &nd, &vd, why, why_n);
        VariantClear(&n);
        VariantClear(&v);
        VariantClear(&nd);
        VariantClear(&vd);
    }
    return hr;
}

/* Calls a method or property getter by name on an Automation object. */
static HRESULT call_by_name(IDispatch *d, const wchar_t *name, VARIANT *arg, VARIANT *result)
{
    DISPID id;
    LPOLESTR n = (LPOLESTR)name;
    DISPPARAMS dp = {arg, NULL, arg != NULL ? 1u : 0u, 0};
    HRESULT hr = IDispatch_GetIDsOfNames(d, &IID_NULL, &n, 1, LOCALE_USER_DEFAULT, &id);
    if (FAILED(hr))
        return hr;
    return IDispatch_Invoke(d, id, &IID_NULL, LOCALE_USER_DEFAULT,
                            DISPATCH_METHOD | DISPATCH_PROPERTYGET, &dp, result, NULL, NULL);
}

/* Headers as a dictionary: Keys() and Item(key) (Scripting.Dictionary). */
static HRESULT headers_from_object(IDispatch *d, json_t *obj, char *why, size_t why_n)
{
    VARIANT keys, kd;
    HRESULT hr;
    LONG lo, hi;
    if (d == NULL)
        return S_OK;
    VariantInit(&keys);
    VariantInit(&kd);
    hr = call_by_name(d, L"Keys", NULL, &keys);
    if (FAILED(hr) || FAILED(VariantCopyInd(&kd, &keys)) || V_VT(&kd) != (VT_ARRAY | VT_VARIANT) ||
        SafeArrayGetDim(V_ARRAY(&kd)) != 1) {
        VariantClear(&keys);
        VariantClear(&kd);
        snprintf(why, why_n, "headers: an object must be a dictionary (Keys() returning an "
                             "array, and Item(key)); or pass an array of name, value pairs");
        return DISP_E_TYPEMISMATCH;
    }
    SafeArrayGetLBound(V_ARRAY(&kd), 1, &lo);
    SafeArrayGetUBound(V_ARRAY(&kd), 1, &hi);
    hr = S_OK;
    for (LONG i = lo; i <= hi && SUCCEEDED(hr); i++) {
        VARIANT k, v, vd;
        VariantInit(&k);
        VariantInit(&v);
        VariantInit(&vd);
        SafeArrayGetElement(V_ARRAY(&kd), &i, &k);
        hr = call_by_name(d, L"Item", &k, &v);
        if (FAILED(hr))
            snprintf(why, why_n, "headers: Item(key) failed (0x%08lx)", (unsigned long)hr);
        else if (SUCCEEDED(hr = VariantCopyInd(&vd, &v)))
            hr = add_header(obj, &k, &vd, why, why_n);
        VariantClear(&k);
        VariantClear(&v);
        VariantClear(&vd);
    }
    VariantClear(&keys);
    VariantClear(&kd);
    return hr;
}

HRESULT sb_com__headers_in(const VARIANT *in, json_t *obj, char *why, size_t why_n)
{
    VARIANT v;
    HRESULT hr;
    if (sb_com__var_missing(in))
        return S_OK;
    VariantInit(&v);
    if (FAILED(VariantCopyInd(&v, (VARIANT *)in))) {
        snprintf(why, why_n, "cannot read the headers argument");
        return E_INVALIDARG;
    }
    switch (V_VT(&v)) {
    case VT_EMPTY:
    case VT_NULL:
        hr = S_OK;
        break;
    case VT_ARRAY | VT_VARIANT:
        hr = headers_from_array(V_ARRAY(&v), VT_VARIANT, obj, why, why_n);
        break;
    case VT_ARRAY | VT_BSTR:
        hr = headers_from_array(V_ARRAY(&v), VT_BSTR, obj, why, why_n);
        break;
    case VT_DISPATCH:
        hr = headers_from_object(V_DISPATCH(&v), obj, why, why_n);
        break;
    default:
        snprintf(why, why_n,
                 "headers must be an array of name, value pairs or a dictionary, not %s",
                 vt_name(V_VT(&v)));
        hr = DISP_E_TYPEMISMATCH;
        break;
    }
    VariantClear(&v);
    return hr;
}

HRESULT sb_com__id_in(const VARIANT *in, uint64_t *out, char *why, size_t why_n)
{
    VARIANT v, d;
    HRESULT hr = S_OK;
    VariantInit(&v);
    VariantInit(&d);
    if (sb_com__var_missing(in) || FAILED(VariantCopyInd(&v, (VARIANT *)in))) {
        snprintf(why, why_n, "a message id is required");
        return E_INVALIDARG;
    }
    if (V_VT(&v) == VT_BSTR) {
        const wchar_t *s = V_BSTR(&v);
        uint64_t n = 0;
        size_t len = s != NULL ? SysStringLen(V_BSTR(&v)) : 0;
        if (len == 0 || len > 20)
            hr = E_INVALIDARG;
        for (size_t i = 0; i < len && SUCCEEDED(hr); i++) {
            if (s[i] < L'0' || s[i] > L'9' || n > (UINT64_MAX - (uint64_t)(s[i] - L'0')) / 10)
                hr = E_INVALIDARG;
            else
                n = n * 10 + (uint64_t)(s[i] - L'0');
        }
        *out = n;
    } else if (SUCCEEDED(VariantChangeTypeEx(&d, &v, LOCALE_INVARIANT, 0, VT_R8)) &&
               V_R8(&d) >= 1 && V_R8(&d) <= 9007199254740992.0 &&
               V_R8(&d) == (double)(uint64_t)V_R8(&d)) {
        *out = (uint64_t)V_R8(&d);
    } else {
        hr = E_INVALIDARG;
    }
    if (FAILED(hr) || *out == 0)
        snprintf(why, why_n, "a message id must be a whole number of 1 or more (as Pull, Wait "
                             "or OnMessage gave it)");
    VariantClear(&v);
    VariantClear(&d);
    return FAILED(hr) || *out == 0 ? E_INVALIDARG : S_OK;
}

HRESULT sb_com__long_in(const VARIANT *in, long def, long *out, char *why, size_t why_n)
{
    VARIANT v, d;
    HRESULT hr;
    if (sb_com__var_missing(in)) {
        *out = def;
        return S_OK;
    }
    VariantInit(&v);
    VariantInit(&d);
    hr = VariantCopyInd(&v, (VARIANT *)in);
    if (SUCCEEDED(hr))
        hr = VariantChangeTypeEx(&d, &v, LOCALE_INVARIANT, 0, VT_I4);
    if (FAILED(hr))
        snprintf(why, why_n, "expected a whole number");
    else
        *out = V_I4(&d);
    VariantClear(&v);
    VariantClear(&d);
    return FAILED(hr) ? DISP_E_TYPEMISMATCH : S_OK;
}
