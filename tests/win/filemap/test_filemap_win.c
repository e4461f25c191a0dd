/*
 * What only Windows has of the file-mapping adapter, with the broker
 * (`switchboard run`) in a process of its own; the rest runs everywhere in
 * tests/integration/test_filemap.c (and under the service, Global\, in
 * tests/win/service).
 *
 * - security: the mapping and every named object of a ring carry the
 *   adapter's security descriptor, read back from the objects (Wine does
 *   not enforce object DACLs, so reading them back is what can be checked):
 *   by default SYSTEM, Administrators, the interactive user and the
 *   broker's own account, and nobody else; a configured SDDL as written;
 * - squatting: a mapping of the ring's name made first by another account
 *   is refused, and the broker says so;
 * - namespace: global: the ring is Global\NAME, which a program finds by
 *   the bare name, and there is no Local\NAME.
 */
#include "tests/integration/harness.h"

#include "adapters/filemap/sb_ring.h"

#include <stdio.h>
#include <string.h>

#include <windows.h>

#include <aclapi.h>
#include <sddl.h>

static const char config[] = "broker:\n"
                             "  data_dir: '{data}'\n"
                             "  admin: { endpoint: 'off' }\n"
                             "adapters:\n"
                             "  - name: clients\n"
                             "    type: tcp\n"
                             "    listen: 127.0.0.1:{port0}\n"
                             "    protocol: jsonl\n"
                             "  - name: rin\n"
                             "    type: filemap\n"
                             "    ring: '{v0}'\n"
                             "    capacity: 64KiB\n"
                             "{v2}"
                             "  - name: rout\n"
                             "    type: filemap\n"
                             "    ring: '{v1}'\n"
                             "    direction: out\n"
                             "    capacity: 64KiB\n"
                             "{v2}"
                             "routes:\n"
                             "  - name: in-q\n"
                             "    from: ring/#\n"
                             "  - name: to-out\n"
                             "    from: out/#\n"
                             "    to: rout\n";

static void names(sbt_broker *b, const char *tag)
{
    char n[64];
    snprintf(n, sizeof(n), "sbtw-%lu-%s-in", (unsigned long)GetCurrentProcessId(), tag);
    sbt_broker_set(b, 0, n);
    snprintf(n, sizeof(n), "sbtw-%lu-%s-out", (unsigned long)GetCurrentProcessId(), tag);
    sbt_broker_set(b, 1, n);
}

static void wide(wchar_t *out, size_t n, const char *a, const char *b)
{
    char buf[300];
    snprintf(buf, sizeof(buf), "%s%s", a, b);
    MultiByteToWideChar(CP_UTF8, 0, buf, -1, out, (int)n);
}

/* The string SIDs of the trustees of object `name`'s DACL (kind 'm'
 * mapping, 's' semaphore, 'x' mutex), "|"-separated, into out. */
static void dacl_trustees(char *out, size_t n, char kind, const char *ns, const char *name)
{
    wchar_t w[300];
    HANDLE h;
    PACL dacl = NULL;
    PSECURITY_DESCRIPTOR sd = NULL;
    DWORD rc;
    wide(w, 300, ns, name);
    h = kind == 'm'   ? OpenFileMappingW(READ_CONTROL, FALSE, w)
        : kind == 's' ? OpenSemaphoreW(READ_CONTROL, FALSE, w)
                      : OpenMutexW(READ_CONTROL, FALSE, w);
    if (h == NULL)
        fail_msg("cannot open %s%s: error %lu", ns, name, GetLastError());
    rc = GetSecurityInfo(h, SE_KERNEL_OBJECT, DACL_SECURITY_INFORMATION, NULL, NULL, &dacl, NULL,
                         &sd);
    if (rc != ERROR_SUCCESS || dacl == NULL)
        fail_msg("cannot read the DACL of %s%s: error %lu", ns, name, rc);
    out[0] = '\0';
    for (DWORD i = 0; i < dacl->AceCount; i++) {
        ACCESS_ALLOWED_ACE *ace;
        wchar_t *sid;
        char sid8[200];
        assert_true(GetAce(dacl, i, (void **)&ace));
        assert_int_equal(ace->Header.AceType, ACCESS_ALLOWED_ACE_TYPE);
        assert_true(ConvertSidToStringSidW((PSID)&ace->SidStart, &sid));
        WideCharToMultiByte(CP_UTF8, 0, sid, -1, sid8, sizeof(sid8), NULL, NULL);
        LocalFree(sid);
        /* The interactive user must not get to change the object's
         * security or delete it. */
        if (strcmp(sid8, "S-1-5-4") == 0)
            assert_int_equal(ace->Mask & (WRITE_DAC | WRITE_OWNER | DELETE | GENERIC_ALL), 0);
        strncat(out, sid8, n - strlen(out) - 1);
        strncat(out, "|", n - strlen(out) - 1);
    }
    LocalFree(sd);
    CloseHandle(h);
}

static void own_sid(char *out, size_t n)
{
    HANDLE tok;
    char buf[256];
    DWORD len;
    wchar_t *s;
    assert_true(OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &tok));
    assert_true(GetTokenInformation(tok, TokenUser, buf, sizeof(buf), &len));
    assert_true(ConvertSidToStringSidW(((TOKEN_USER *)buf)->User.Sid, &s));
    WideCharToMultiByte(CP_UTF8, 0, s, -1, out, (int)n, NULL, NULL);
    LocalFree(s);
    CloseHandle(tok);
}

static void test_security(void **state)
{
    sbt_broker *b = *state;
    char got[1024], want[512], own[200];
    static const struct {
        char kind;
        int ring; /* 0 in, 1 out */
        const char *suffix;
    } objects[] = {{'m', 0, ""},          {'s', 0, ".data"},    {'s', 0, ".release"},
                   {'x', 0, ".owner"},    {'m', 1, ""},         {'x', 1, ".consumer"},
                   {'s', 1, ".release"},  {'x', 1, ".owner"}};

    own_sid(own, sizeof(own));
    sbt_broker_init(b, "filemap-security", 1);
    names(b, "sec");
    sbt_broker_set(b, 2, "");
    sbt_broker_config(b, config);
    sbt_broker_start(b);
    /* SYSTEM, Administrators, the interactive user, the broker's account */
    snprintf(want, sizeof(want), "S-1-5-18|S-1-5-32-544|S-1-5-4|%s|", own);
    for (size_t i = 0; i < sizeof(objects) / sizeof(objects[0]); i++) {
        char name[128];
        snprintf(name, sizeof(name), "%s%s", b->values[objects[i].ring], objects[i].suffix);
        dacl_trustees(got, sizeof(got), objects[i].kind, "Local\\", name);
        if (strcmp(got, want) != 0)
            fail_msg("Local\\%s: trustees %s, want %s", name, got, want);
    }
    sbt_broker_stop(b);

    /* A configured descriptor, as written: here authenticated users. */
    sbt_broker_mark_log(b);
    names(b, "sec2");
    sbt_broker_set(b, 2, "    security: 'D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GRGWGX;;;AU)'\n");
    sbt_broker_config(b, config);
    sbt_broker_start(b);
    dacl_trustees(got, sizeof(got), 'm', "Local\\", b->values[0]);
    assert_string_equal(got, "S-1-5-18|S-1-5-32-544|S-1-5-11|");
    snprintf(want, sizeof(want), "%s.data", b->values[0]);
    dacl_trustees(got, sizeof(got), 's', "Local\\", want);
    assert_string_equal(got, "S-1-5-18|S-1-5-32-544|S-1-5-11|");
    sbt_broker_stop(b);
    b->passed = 1;
}

static void test_squatting(void **state)
{
    sbt_broker *b = *state;
    PSECURITY_DESCRIPTOR sd;
    SECURITY_ATTRIBUTES sa;
    wchar_t w[300];
    HANDLE fake;
    int rc;

    sbt_broker_init(b, "filemap-squat", 1);
    names(b, "squat");
    sbt_broker_set(b, 2, "");
    sbt_broker_config(b, config);
    /* Another account's ring of the same name, made first (Windows lets
     * only a process with SeRestorePrivilege name another owner: without
     * it, this part is skipped). */
    assert_true(ConvertStringSecurityDescriptorToSecurityDescriptorW(
        L"O:S-1-5-21-1-2-3-4242D:(A;;GA;;;WD)", SDDL_REVISION_1, &sd, NULL));
    sa.nLength = sizeof(sa);
    sa.lpSecurityDescriptor = sd;
    sa.bInheritHandle = FALSE;
    wide(w, 300, "Local\\", b->values[0]);
    fake = CreateFileMappingW(INVALID_HANDLE_VALUE, &sa, PAGE_READWRITE, 0, 65536 + 1024, w);
    LocalFree(sd);
    if (fake == NULL && GetLastError() == ERROR_INVALID_OWNER) {
        print_message("skipped: this account cannot make an object owned by another\n");
        b->passed = 1;
        return;
    }
    assert_non_null(fake);
    rc = sbt_broker_try_start(b);
    assert_true(rc > 0);
    sbt_broker_wait_log(b, "exists and belongs to another account", 1, 5000);
    CloseHandle(fake);
    /* Once it is gone, the broker makes its own. */
    sbt_broker_start(b);
    sbt_broker_stop(b);
    b->passed = 1;
}

static void test_global_namespace(void **state)
{
    sbt_broker *b = *state;
    wchar_t w[300];
    HANDLE h;
    sb_ring *r;
    uint64_t seq;
    sbt_conn *c;
    json_t *m;

    sbt_broker_init(b, "filemap-global", 1);
    names(b, "global");
    sbt_broker_set(b, 2, "    namespace: global\n");
    sbt_broker_config(b, config);
    sbt_broker_start(b);
    sbt_broker_wait_log(b, "ring Global\\", 2, 5000);
    wide(w, 300, "Local\\", b->values[0]);
    h = OpenFileMappingW(FILE_MAP_READ, FALSE, w);
    if (h != NULL)
        fail_msg("the ring is in Local\\ too");
    /* the bare name finds Global\ first */
    assert_int_equal(sb_ring_open(&r, b->values[0], SB_RING_PRODUCER), SB_RING_OK);
    assert_int_equal(sb_ring_write(r, "ring/g", "global", 6, 5000, &seq), SB_RING_OK);
    assert_int_equal(sb_ring_wait_committed(r, seq, SBT_REPLY_MS), SB_RING_OK);
    sb_ring_close(r);
    c = sbt_connect(b->port[0]);
    sbt_sub(c, "in-q", NULL, 10);
    m = sbt_next_msg(c, SBT_REPLY_MS);
    assert_string_equal(sbt_str(m, "payload"), "global");
    json_decref(m);
    sbt_close(c);
    sbt_broker_stop(b);
    b->passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_security, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_squatting, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_global_namespace, sbt_setup, sbt_teardown),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests_name("filemap-win", tests, NULL, NULL);
}
