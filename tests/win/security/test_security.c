/*
 * Who may use what the broker creates on Windows, read back from the
 * objects themselves (Wine does not enforce DACLs on pipes or files and has
 * a single user, so an access test proves nothing there; the same checks
 * hold on Windows):
 *
 * - the admin pipe: SYSTEM, Administrators and the broker's own account, all
 *   access; nothing for interactive users (the admin endpoint bypasses the
 *   ACL, so an IU grant made every logged-on user an administrator);
 * - broker.admin.security: that DACL, plus the broker's account when it is
 *   left out (it must keep creating instances of its own pipe);
 * - a data directory the broker creates: a protected DACL for SYSTEM,
 *   Administrators and the broker's account, inherited by the store;
 * - a data directory or password file that grants another account access:
 *   a warning naming it and its DACL (where the file system keeps DACLs:
 *   not under Wine, where tests/unit/service/test_win_security.c checks
 *   which DACLs count as shared).
 */
#include "tests/win/pipe/pipe_util.h"

#include "service/alloc.h"
#include "service/platform/win/utf.h"

#include <sddl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SID_SYSTEM "S-1-5-18"
#define SID_ADMINS "S-1-5-32-544"
#define SID_USERS "S-1-5-32-545"
#define SID_INTERACTIVE "S-1-5-4"

static const char config[] = "broker:\n"
                             "  data_dir: '{v0}'\n"
                             "  admin: { endpoint: '{v1}'{v2} }\n"
                             "{v3}"
                             "adapters:\n"
                             "  - name: clients\n"
                             "    type: tcp\n"
                             "    listen: 127.0.0.1:{port0}\n"
                             "    protocol: jsonl\n"
                             "routes:\n"
                             "  - name: q\n"
                             "    from: sec/#\n";

/* Starts a broker with its admin endpoint on a pipe of this run;
 * `admin_extra` goes into the admin mapping, `auth` into broker. */
static void start(sbt_broker *b, const char *test, const char *data_dir, const char *admin_extra,
                  const char *auth, char *admin_path, size_t n)
{
    char name[64], data[SBT_PATH_MAX];
    sbt_broker_init(b, test, 1);
    pt_name(name, sizeof(name), test);
    pt_path(admin_path, n, name);
    if (data_dir == NULL) {
        snprintf(data, sizeof(data), "%s", b->data_dir);
        data_dir = data;
    }
    sbt_broker_set(b, 0, data_dir);
    sbt_broker_set(b, 1, admin_path);
    sbt_broker_set(b, 2, admin_extra);
    sbt_broker_set(b, 3, auth);
    sbt_broker_config(b, config);
    sbt_broker_start(b);
}

static const pt_ace *find_ace(const pt_ace *aces, int n, const char *sid)
{
    for (int i = 0; i < n; i++)
        if (strcmp(aces[i].sid, sid) == 0)
            return &aces[i];
    return NULL;
}

static void print_aces(const char *what, const pt_ace *aces, int n)
{
    print_message("%s: %d ACEs\n", what, n);
    for (int i = 0; i < n; i++)
        print_message("  %s 0x%08lx\n", aces[i].sid, (unsigned long)aces[i].mask);
}

/* The DACL of a file or directory, as pt_dacl gives it for pipes. */
static int path_dacl(const char *path, pt_ace *out, int max)
{
    wchar_t *w = sb_utf8_to_wide(path);
    HANDLE h;
    int n;
    assert_non_null(w);
    h = CreateFileW(w, READ_CONTROL, FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, NULL,
                    OPEN_EXISTING, FILE_FLAG_BACKUP_SEMANTICS, NULL);
    sb_free(w);
    if (h == INVALID_HANDLE_VALUE)
        fail_msg("CreateFileW(%s, READ_CONTROL): error %lu", path, (unsigned long)GetLastError());
    n = pt_dacl(h, out, max);
    CloseHandle(h);
    return n;
}

static void test_admin_pipe_default(void **state)
{
    sbt_broker *b = *state;
    char admin[128], self[200];
    pt_ace aces[8];
    pt_pipe *p;
    int n;

    pt_own_sid(self, sizeof(self));
    start(b, "sec-admin", NULL, "", "", admin, sizeof(admin));
    p = pt_open_ok(admin, 0);
    n = pt_dacl(p->h, aces, 8);
    print_aces(admin, aces, n);
    /* SYSTEM, Administrators and this account (which may be one of them:
     * then 2 ACEs), all access; no one else */
    assert_true(n == 3 || (n == 2 && (strcmp(self, SID_SYSTEM) == 0)));
    for (int i = 0; i < n; i++) {
        if (strcmp(aces[i].sid, SID_SYSTEM) != 0 && strcmp(aces[i].sid, SID_ADMINS) != 0 &&
            strcmp(aces[i].sid, self) != 0)
            fail_msg("the admin pipe grants %s (mask 0x%lx)", aces[i].sid,
                     (unsigned long)aces[i].mask);
        assert_int_equal(aces[i].mask, FILE_ALL_ACCESS);
    }
    assert_null(find_ace(aces, n, SID_INTERACTIVE));
    /* and this account administers through it */
    pt_send_json(p, json_pack("{s:s}", "op", "ping"));
    {
        json_t *r = pt_read_json(p, SBT_REPLY_MS);
        assert_non_null(r);
        sbt_expect_op(r, "pong");
        json_decref(r);
    }
    pt_close(p);
    b->passed = 1;
}

static void test_admin_pipe_configured(void **state)
{
    sbt_broker *b = *state;
    char admin[128], self[200];
    pt_ace aces[8];
    const pt_ace *a;
    pt_pipe *p;
    int n;

    pt_own_sid(self, sizeof(self));
    start(b, "sec-admin-cfg", NULL, ", security: 'D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GRGW;;;BU)'", "",
          admin, sizeof(admin));
    p = pt_open_ok(admin, 0);
    n = pt_dacl(p->h, aces, 8);
    print_aces(admin, aces, n);
    assert_int_equal(n, 4);
    assert_string_equal(aces[0].sid, SID_SYSTEM);
    assert_string_equal(aces[1].sid, SID_ADMINS);
    assert_string_equal(aces[2].sid, SID_USERS);
    assert_int_equal(aces[2].mask, FILE_GENERIC_READ | FILE_GENERIC_WRITE);
    /* the broker's account, added at the end */
    assert_string_equal(aces[3].sid, self);
    assert_int_equal(aces[3].mask, FILE_ALL_ACCESS);
    pt_close(p);
    /* A DACL that names the broker's account already is kept as it is. */
    sbt_broker_stop(b);
    {
        char extra[300];
        snprintf(extra, sizeof(extra), ", security: 'D:P(A;;GA;;;SY)(A;;GA;;;%s)'", self);
        sbt_broker_set(b, 2, extra);
    }
    sbt_broker_config(b, config);
    sbt_broker_start(b);
    p = pt_open_ok(admin, 0);
    n = pt_dacl(p->h, aces, 8);
    print_aces(admin, aces, n);
    assert_int_equal(n, 2);
    a = find_ace(aces, n, self);
    assert_non_null(a);
    pt_close(p);
    b->passed = 1;
}

static void test_data_dir_created_private(void **state)
{
    sbt_broker *b = *state;
    char admin[128], self[200], db[SBT_PATH_MAX], *log;
    pt_ace aces[8];
    int n;

    pt_own_sid(self, sizeof(self));
    start(b, "sec-data", NULL, "", "", admin, sizeof(admin));
    n = path_dacl(b->data_dir, aces, 8);
    print_aces(b->data_dir, aces, n);
    /* Wine keeps no DACLs on files: it makes one up from the Unix mode
     * (SYSTEM and the owner), so Administrators are checked on Windows. */
    if (pt_under_wine())
        print_message("note: under Wine the DACL read back is made up from the Unix mode\n");
    else
        assert_non_null(find_ace(aces, n, SID_ADMINS));
    assert_non_null(find_ace(aces, n, SID_SYSTEM));
    assert_non_null(find_ace(aces, n, self));
    for (int i = 0; i < n; i++) {
        if (strcmp(aces[i].sid, SID_SYSTEM) != 0 && strcmp(aces[i].sid, SID_ADMINS) != 0 &&
            strcmp(aces[i].sid, self) != 0)
            fail_msg("%s grants %s", b->data_dir, aces[i].sid);
        assert_int_equal(aces[i].mask, FILE_ALL_ACCESS);
    }
    /* The store inherits it (under Wine its DACL is made up from the Unix
     * mode Wine created it with: not the broker's to decide). */
    sbt_path(db, sizeof(db), b->data_dir, "switchboard.db");
    n = pt_under_wine() ? 0 : path_dacl(db, aces, 8);
    print_aces(db, aces, n);
    for (int i = 0; i < n; i++)
        if (strcmp(aces[i].sid, SID_SYSTEM) != 0 && strcmp(aces[i].sid, SID_ADMINS) != 0 &&
            strcmp(aces[i].sid, self) != 0)
            fail_msg("%s grants %s", db, aces[i].sid);
    sbt_broker_stop(b);
    log = sbt_broker_log(b);
    assert_int_equal(sbt_count(log, "accessible to other accounts"), 0);
    free(log);
    b->passed = 1;
}

/* Creates path (a directory, or a file holding text) with the DACL sddl. */
static void make_with_dacl(const char *path, const char *text, const char *sddl)
{
    wchar_t *w = sb_utf8_to_wide(path), *ws = sb_utf8_to_wide(sddl);
    SECURITY_ATTRIBUTES sa = {sizeof(sa), NULL, FALSE};
    assert_non_null(w);
    assert_non_null(ws);
    if (!ConvertStringSecurityDescriptorToSecurityDescriptorW(ws, SDDL_REVISION_1,
                                                              &sa.lpSecurityDescriptor, NULL))
        fail_msg("bad test SDDL %s", sddl);
    if (text == NULL) {
        if (!CreateDirectoryW(w, &sa))
            fail_msg("CreateDirectoryW(%s): error %lu", path, (unsigned long)GetLastError());
    } else {
        DWORD done;
        HANDLE h = CreateFileW(w, GENERIC_WRITE, 0, &sa, CREATE_NEW, FILE_ATTRIBUTE_NORMAL, NULL);
        if (h == INVALID_HANDLE_VALUE)
            fail_msg("CreateFileW(%s): error %lu", path, (unsigned long)GetLastError());
        assert_true(WriteFile(h, text, (DWORD)strlen(text), &done, NULL));
        CloseHandle(h);
    }
    LocalFree(sa.lpSecurityDescriptor);
    sb_free(w);
    sb_free(ws);
}

static void test_shared_files_warned(void **state)
{
    sbt_broker *b = *state;
    char admin[128], self[200], dir[SBT_PATH_MAX], data[SBT_PATH_MAX], passwd[SBT_PATH_MAX];
    char sddl[400], auth[SBT_PATH_MAX + 64], want[SBT_PATH_MAX + 100], src[SBT_PATH_MAX], *text;
    pt_ace aces[8];
    int n;

    pt_own_sid(self, sizeof(self));
    /* Users may read: as a directory made under %ProgramData% by hand is. */
    snprintf(sddl, sizeof(sddl),
             "D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)(A;OICI;FA;;;%s)(A;OICI;FR;;;BU)", self);
    sbt_mkdtemp(dir, sizeof(dir), "sec-shared");
    sbt_path(data, sizeof(data), dir, "data");
    make_with_dacl(data, NULL, sddl);
    n = path_dacl(data, aces, 8);
    print_aces(data, aces, n);
    if (find_ace(aces, n, SID_USERS) == NULL) {
        /* The file system keeps no security descriptors here (Wine without
         * extended attributes): nothing to warn about. */
        print_message("skipped: %s did not keep its DACL\n", data);
        sbt_rmtree(dir);
        skip();
    }
    sbt_path(passwd, sizeof(passwd), dir, "passwd");
    snprintf(src, sizeof(src), "%s/auth/mosquitto.passwd", sbt_test_data());
    text = sbt_read_file(src, NULL);
    assert_non_null(text);
    make_with_dacl(passwd, text, sddl);
    free(text);
    snprintf(auth, sizeof(auth), "  auth: { password_file: '%s' }\n", passwd);
    start(b, "sec-shared", data, "", auth, admin, sizeof(admin));
    snprintf(want, sizeof(want), "the data directory %s is accessible to other accounts (DACL ",
             data);
    sbt_broker_wait_log(b, want, 1, 5000);
    snprintf(want, sizeof(want), "the password file %s is accessible to other accounts (DACL ",
             passwd);
    sbt_broker_wait_log(b, want, 1, 5000);
    sbt_broker_wait_log(b, ";;;BU)", 2, 5000);
    /* named, not changed: the directory is the administrator's */
    n = path_dacl(data, aces, 8);
    assert_non_null(find_ace(aces, n, SID_USERS));
    sbt_broker_stop(b);
    sbt_rmtree(dir);
    b->passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_admin_pipe_default, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_admin_pipe_configured, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_data_dir_created_private, sbt_setup, sbt_teardown),
        cmocka_unit_test_setup_teardown(test_shared_files_warned, sbt_setup, sbt_teardown),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests_name("security", tests, NULL, NULL);
}
