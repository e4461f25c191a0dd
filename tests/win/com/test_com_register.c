/*
 * `switchboard com register / unregister` against the real registry (HKLM;
 * under Wine, and on Windows as an administrator): what register writes
 * (the class and its LocalServer32 with the endpoint, both ProgIDs, the
 * AppID's launch and access permissions, the type library and the
 * interfaces, in the 64- and 32-bit views), permissions given as SDDL,
 * a refused SDDL that writes nothing, and unregister leaving the registry
 * as it was (every key count of the COM sections is back).
 */
#include "tests/integration/harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <windows.h>
#include <sddl.h>

#define CLSID_KEY "CLSID\\{53486367-1DBA-44FC-83B7-0ABE209BB49F}"
#define APPID_KEY "AppID\\{FA8A880F-C9C6-4079-8362-322E8119D9C3}"
#define TYPELIB_KEY "TypeLib\\{201097CB-2CDA-4B53-8F3D-4F699F2EC4C0}"
#define IBROKER_KEY "Interface\\{926E579E-FB59-4902-A9C0-24371E47D03D}"

static int run_sw(char **out, const char *a1, const char *a2, const char *a3, const char *a4)
{
    char *err = NULL;
    char *argv[] = {(char *)sbt_switchboard(), "com", (char *)a1, (char *)a2, (char *)a3,
                    (char *)a4, NULL};
    int rc = sbt_run(argv, NULL, 60000, out, &err);
    if (err != NULL && err[0] != '\0')
        fprintf(stderr, "stderr: %s\n", err);
    free(err);
    return rc;
}

static HKEY open_key(const char *key, REGSAM view)
{
    char path[512];
    HKEY k;
    snprintf(path, sizeof path, "Software\\Classes\\%s", key);
    if (RegOpenKeyExA(HKEY_LOCAL_MACHINE, path, 0, KEY_READ | view, &k) != ERROR_SUCCESS)
        return NULL;
    return k;
}

static int exists(const char *key, REGSAM view)
{
    HKEY k = open_key(key, view);
    if (k != NULL)
        RegCloseKey(k);
    return k != NULL;
}

static DWORD subkeys(const char *key, REGSAM view)
{
    HKEY k = open_key(key, view);
    DWORD n = 0;
    if (k == NULL)
        return 0;
    RegQueryInfoKeyA(k, NULL, NULL, NULL, &n, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
    RegCloseKey(k);
    return n;
}

typedef struct snapshot {
    DWORD counts[10];
} snapshot;

static void snap(snapshot *s)
{
    static const char *const sections[] = {"CLSID", "Interface", "TypeLib", "AppID", ""};
    int i = 0;
    for (int v = 0; v < 2; v++)
        for (size_t j = 0; j < sizeof sections / sizeof sections[0]; j++)
            s->counts[i++] = subkeys(sections[j], v == 0 ? 0 : KEY_WOW64_32KEY);
}

static char *value_sz(const char *key, const char *name, REGSAM view)
{
    static char buf[2048];
    DWORD len = sizeof buf;
    HKEY k = open_key(key, view);
    LONG r;
    if (k == NULL)
        return NULL;
    r = RegQueryValueExA(k, name, NULL, NULL, (BYTE *)buf, &len);
    RegCloseKey(k);
    return r == ERROR_SUCCESS ? buf : NULL;
}

/* A REG_BINARY security descriptor value as SDDL (its DACL). */
static char *permission(const char *name)
{
    static char out[2048];
    BYTE sd[4096];
    DWORD len = sizeof sd;
    char *text = NULL;
    HKEY k = open_key(APPID_KEY, 0);
    assert_non_null(k);
    assert_int_equal(RegQueryValueExA(k, name, NULL, NULL, sd, &len), ERROR_SUCCESS);
    RegCloseKey(k);
    assert_true(IsValidSecurityDescriptor(sd));
    assert_true(ConvertSecurityDescriptorToStringSecurityDescriptorA(
        sd, SDDL_REVISION_1, DACL_SECURITY_INFORMATION | OWNER_SECURITY_INFORMATION, &text,
        NULL));
    snprintf(out, sizeof out, "%s", text);
    LocalFree(text);
    return out;
}

static void test_register_unregister(void **state)
{
    snapshot before, after;
    char *out = NULL, *v;
    (void)state;

    /* start clean (an earlier run may have been cut short) */
    assert_int_equal(run_sw(&out, "unregister", NULL, NULL, NULL), 0);
    free(out);
    snap(&before);
    assert_false(exists(CLSID_KEY, 0));

    assert_int_equal(run_sw(&out, "register", "--endpoint", "sbt-reg", NULL), 0);
    free(out);
    for (int view = 0; view < 2; view++) {
        REGSAM r = view == 0 ? 0 : KEY_WOW64_32KEY;
        v = value_sz(CLSID_KEY "\\LocalServer32", NULL, r);
        assert_non_null(v);
        assert_non_null(strstr(v, "com server --endpoint \"sbt-reg\""));
        assert_string_equal(value_sz(CLSID_KEY, "AppID", r),
                            "{FA8A880F-C9C6-4079-8362-322E8119D9C3}");
    }
    assert_string_equal(value_sz("Switchboard.Broker\\CLSID", NULL, 0),
                        "{53486367-1DBA-44FC-83B7-0ABE209BB49F}");
    assert_string_equal(value_sz("Switchboard.Broker.1\\CLSID", NULL, 0),
                        "{53486367-1DBA-44FC-83B7-0ABE209BB49F}");
    assert_string_equal(value_sz("Switchboard.Broker\\CurVer", NULL, 0), "Switchboard.Broker.1");
    assert_true(exists(TYPELIB_KEY "\\1.0\\0\\win64", 0));
    assert_true(exists(TYPELIB_KEY "\\1.0\\0\\win32", KEY_WOW64_32KEY));
    assert_true(exists(IBROKER_KEY, 0));
    assert_string_equal(value_sz(IBROKER_KEY "\\ProxyStubClsid32", NULL, KEY_WOW64_32KEY),
                        "{00020424-0000-0000-C000-000000000046}");
    /* default permissions: local only, interactive users and SYSTEM */
    v = permission("LaunchPermission");
    assert_non_null(strstr(v, "O:BA"));
    assert_non_null(strstr(v, "(A;;CCDCSW;;;IU)"));
    assert_non_null(strstr(v, "(A;;CCDCSW;;;SY)"));
    v = permission("AccessPermission");
    assert_non_null(strstr(v, "(A;;CCDC;;;IU)"));
    assert_null(strstr(v, "WD)"));
    assert_int_equal(run_sw(&out, "status", NULL, NULL, NULL), 0);
    free(out);

    /* permissions of one's own, registered again over the first */
    assert_int_equal(run_sw(&out, "register", "--access-permission", "D:(A;;CCDC;;;BA)", NULL), 0);
    free(out);
    v = permission("AccessPermission");
    assert_non_null(strstr(v, "(A;;CCDC;;;BA)"));
    assert_null(strstr(v, "IU)"));

    assert_int_equal(run_sw(&out, "unregister", NULL, NULL, NULL), 0);
    assert_non_null(strstr(out, "Unregistered"));
    free(out);
    snap(&after);
    assert_memory_equal(&before, &after, sizeof before);
    assert_false(exists(CLSID_KEY, 0));
    assert_false(exists(CLSID_KEY, KEY_WOW64_32KEY));
    assert_false(exists("Switchboard.Broker", 0));
    assert_false(exists(APPID_KEY, 0));
    assert_false(exists(TYPELIB_KEY, 0));
    assert_false(exists(IBROKER_KEY, KEY_WOW64_32KEY));
    assert_int_equal(run_sw(&out, "status", NULL, NULL, NULL), 1);
    free(out);

    /* an SDDL that does not parse: refused, nothing written */
    assert_int_not_equal(run_sw(&out, "register", "--launch-permission", "D:(bogus", NULL), 0);
    free(out);
    snap(&after);
    assert_memory_equal(&before, &after, sizeof before);
    assert_false(exists("Switchboard.Broker", 0));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_register_unregister),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
