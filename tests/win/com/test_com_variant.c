/*
 * The COM relay's VARIANT conversions (adapters/com/win/com_variant.c), in
 * process: what scripts pass as payloads, headers, ids and counts, by value
 * and by reference, and what they get back; text that is not valid UTF-16
 * is refused, never replaced.
 */
#include "adapters/com/win/com_int.h"
#include "service/alloc.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

static char why[300];

static void payload_ok(VARIANT *v, const char *want, size_t want_len, int text)
{
    unsigned char *p = NULL;
    size_t n = 0;
    int is_text = -1;
    assert_int_equal(sb_com__payload_in(v, &p, &n, &is_text, why, sizeof why), S_OK);
    assert_int_equal(n, want_len);
    if (n > 0)
        assert_memory_equal(p, want, n);
    assert_int_equal(is_text, text);
    sb_free(p);
}

static void test_payloads(void **state)
{
    VARIANT v, ref;
    SAFEARRAY *sa;
    unsigned char *data;
    (void)state;

    VariantInit(&v);
    V_VT(&v) = VT_BSTR;
    V_BSTR(&v) = SysAllocString(L"Gr\x00fc\x00df" L"e \x20ac");
    payload_ok(&v, "Gr\xc3\xbc\xc3\x9f" "e \xe2\x82\xac", 11, 1);
    /* by reference, as VBScript passes a variable */
    V_VT(&ref) = VT_BYREF | VT_VARIANT;
    V_VARIANTREF(&ref) = &v;
    payload_ok(&ref, "Gr\xc3\xbc\xc3\x9f" "e \xe2\x82\xac", 11, 1);
    VariantClear(&v);

    /* a String with NULs is text of that length */
    V_VT(&v) = VT_BSTR;
    V_BSTR(&v) = SysAllocStringLen(L"a\0b", 3);
    payload_ok(&v, "a\0b", 3, 1);
    VariantClear(&v);

    /* a lone surrogate: refused */
    V_VT(&v) = VT_BSTR;
    V_BSTR(&v) = SysAllocStringLen(L"\xd800", 1);
    {
        unsigned char *p = NULL;
        size_t n;
        int t;
        assert_int_equal(sb_com__payload_in(&v, &p, &n, &t, why, sizeof why), E_INVALIDARG);
        assert_non_null(strstr(why, "UTF-16"));
    }
    VariantClear(&v);

    /* a Byte array, with a lower bound of 1 */
    {
        SAFEARRAYBOUND b = {4, 1};
        sa = SafeArrayCreate(VT_UI1, 1, &b);
        SafeArrayAccessData(sa, (void **)&data);
        memcpy(data, "\x00\xff\x01\x80", 4);
        SafeArrayUnaccessData(sa);
    }
    V_VT(&v) = VT_ARRAY | VT_UI1;
    V_ARRAY(&v) = sa;
    payload_ok(&v, "\x00\xff\x01\x80", 4, 0);
    VariantClear(&v);

    /* numbers and Booleans as text in the invariant locale; Empty as nothing */
    V_VT(&v) = VT_R8;
    V_R8(&v) = 1.5;
    payload_ok(&v, "1.5", 3, 1);
    V_VT(&v) = VT_I4;
    V_I4(&v) = -42;
    payload_ok(&v, "-42", 3, 1);
    VariantInit(&v);
    payload_ok(&v, "", 0, 0);

    /* an object or an array of Longs: a type mismatch that says so */
    {
        unsigned char *p = NULL;
        size_t n;
        int t;
        sa = SafeArrayCreateVector(VT_I4, 0, 2);
        V_VT(&v) = VT_ARRAY | VT_I4;
        V_ARRAY(&v) = sa;
        assert_int_equal(sb_com__payload_in(&v, &p, &n, &t, why, sizeof why), DISP_E_TYPEMISMATCH);
        assert_non_null(strstr(why, "String or a Byte array"));
        VariantClear(&v);
    }
}

static void test_payload_out(void **state)
{
    VARIANT v;
    (void)state;
    assert_int_equal(sb_com__payload_out((const unsigned char *)"h\xc3\xa9", 3, 0, &v), S_OK);
    assert_int_equal(V_VT(&v), VT_BSTR);
    assert_int_equal(SysStringLen(V_BSTR(&v)), 2);
    assert_int_equal(V_BSTR(&v)[1], 0xe9);
    VariantClear(&v);
    /* not UTF-8: a Byte array */
    assert_int_equal(sb_com__payload_out((const unsigned char *)"\xff\xfe", 2, 0, &v), S_OK);
    assert_int_equal(V_VT(&v), VT_ARRAY | VT_UI1);
    VariantClear(&v);
    /* asked for bytes */
    assert_int_equal(sb_com__payload_out((const unsigned char *)"ok", 2, 1, &v), S_OK);
    assert_int_equal(V_VT(&v), VT_ARRAY | VT_UI1);
    VariantClear(&v);
}

static SAFEARRAY *pairs(const wchar_t *const *items, LONG n)
{
    SAFEARRAY *sa = SafeArrayCreateVector(VT_VARIANT, 0, (ULONG)n);
    for (LONG i = 0; i < n; i++) {
        VARIANT e;
        V_VT(&e) = VT_BSTR;
        V_BSTR(&e) = SysAllocString(items[i]);
        SafeArrayPutElement(sa, &i, &e);
        VariantClear(&e);
    }
    return sa;
}

static void test_headers(void **state)
{
    static const wchar_t *const ok[] = {L"content-type", L"text/plain", L"corr", L"42"};
    static const wchar_t *const odd[] = {L"a", L"b", L"c"};
    static const wchar_t *const empty_name[] = {L"", L"b"};
    VARIANT v;
    json_t *o = json_object();
    (void)state;

    V_VT(&v) = VT_ARRAY | VT_VARIANT;
    V_ARRAY(&v) = pairs(ok, 4);
    assert_int_equal(sb_com__headers_in(&v, o, why, sizeof why), S_OK);
    assert_string_equal(json_string_value(json_object_get(o, "content-type")), "text/plain");
    assert_string_equal(json_string_value(json_object_get(o, "corr")), "42");
    VariantClear(&v);
    json_object_clear(o);

    V_VT(&v) = VT_ARRAY | VT_VARIANT;
    V_ARRAY(&v) = pairs(odd, 3);
    assert_int_equal(sb_com__headers_in(&v, o, why, sizeof why), E_INVALIDARG);
    assert_non_null(strstr(why, "pairs"));
    VariantClear(&v);

    V_VT(&v) = VT_ARRAY | VT_VARIANT;
    V_ARRAY(&v) = pairs(empty_name, 2);
    assert_int_equal(sb_com__headers_in(&v, o, why, sizeof why), E_INVALIDARG);
    VariantClear(&v);

    /* missing, as IDispatch passes an optional argument left out */
    V_VT(&v) = VT_ERROR;
    V_ERROR(&v) = DISP_E_PARAMNOTFOUND;
    assert_int_equal(sb_com__headers_in(&v, o, why, sizeof why), S_OK);
    assert_int_equal(json_object_size(o), 0);

    V_VT(&v) = VT_I4;
    V_I4(&v) = 1;
    assert_int_equal(sb_com__headers_in(&v, o, why, sizeof why), DISP_E_TYPEMISMATCH);
    json_decref(o);
}

static void test_ids_and_counts(void **state)
{
    VARIANT v;
    uint64_t id = 0;
    long n = 0;
    (void)state;

    V_VT(&v) = VT_R8;
    V_R8(&v) = 1042;
    assert_int_equal(sb_com__id_in(&v, &id, why, sizeof why), S_OK);
    assert_true(id == 1042);
    V_R8(&v) = 1.5;
    assert_int_equal(sb_com__id_in(&v, &id, why, sizeof why), E_INVALIDARG);
    V_R8(&v) = -3;
    assert_int_equal(sb_com__id_in(&v, &id, why, sizeof why), E_INVALIDARG);
    V_VT(&v) = VT_BSTR;
    V_BSTR(&v) = SysAllocString(L"18446744073709551615");
    assert_int_equal(sb_com__id_in(&v, &id, why, sizeof why), S_OK);
    assert_true(id == UINT64_MAX);
    VariantClear(&v);
    V_VT(&v) = VT_BSTR;
    V_BSTR(&v) = SysAllocString(L"18446744073709551616"); /* one too many */
    assert_int_equal(sb_com__id_in(&v, &id, why, sizeof why), E_INVALIDARG);
    VariantClear(&v);
    V_VT(&v) = VT_BSTR;
    V_BSTR(&v) = SysAllocString(L"12a");
    assert_int_equal(sb_com__id_in(&v, &id, why, sizeof why), E_INVALIDARG);
    VariantClear(&v);
    VariantInit(&v);
    assert_int_equal(sb_com__id_in(&v, &id, why, sizeof why), E_INVALIDARG);

    assert_int_equal(sb_com__long_in(&v, 7, &n, why, sizeof why), S_OK);
    assert_int_equal(n, 7);
    V_VT(&v) = VT_BSTR;
    V_BSTR(&v) = SysAllocString(L"250");
    assert_int_equal(sb_com__long_in(&v, 7, &n, why, sizeof why), S_OK);
    assert_int_equal(n, 250);
    VariantClear(&v);
    V_VT(&v) = VT_BSTR;
    V_BSTR(&v) = SysAllocString(L"many");
    assert_int_equal(sb_com__long_in(&v, 7, &n, why, sizeof why), DISP_E_TYPEMISMATCH);
    VariantClear(&v);
}

static void test_hresults(void **state)
{
    (void)state;
    assert_int_equal((unsigned long)sb_com_hresult(SB_EFULL), 0x80040209ul);
    assert_int_equal((unsigned long)sb_com_hresult(SB_EAUTH), 0x80040217ul);
    assert_int_equal((unsigned long)sb_com_hresult(SB_ENOMEM), (unsigned long)E_OUTOFMEMORY);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_payloads),   cmocka_unit_test(test_payload_out),
        cmocka_unit_test(test_headers),    cmocka_unit_test(test_ids_and_counts),
        cmocka_unit_test(test_hresults),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
