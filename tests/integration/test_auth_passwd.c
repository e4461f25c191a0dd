/*
 * `sbctl passwd`, the real program ($SB_SBCTL): creates a password file, adds
 * users (password from the command line and from stdin), changes and deletes
 * them, keeps other lines byte for byte, refuses bad command lines, and every
 * file it writes loads with sb_auth_load and checks the right passwords. On
 * POSIX the file's mode is 0600.
 */
#include "harness.h"

#include "service/auth.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RUN_MS 60000 /* hashing under sanitizers and Wine is slow */

typedef struct child {
    uv_process_t h;
    int exited, closed;
    int64_t status;
    int term_signal;
} child;

static void on_child_exit(uv_process_t *p, int64_t status, int sig)
{
    child *c = p->data;
    c->exited = 1;
    c->status = status;
    c->term_signal = sig;
}

static void on_child_closed(uv_handle_t *h)
{
    ((child *)h->data)->closed = 1;
}

static const char *sbctl(void)
{
    const char *p = getenv("SB_SBCTL");
    if (p == NULL || *p == '\0')
        fail_msg("SB_SBCTL is not set (ctest sets it)");
    return p;
}

/* Runs sbctl passwd ARGS... with stdin read from the file in_path (NULL:
 * none) and stderr kept in err_path; returns the exit code. */
static int passwd(const char *in_path, const char *err_path, const char *const *args)
{
    char *argv[16];
    uv_process_options_t opt;
    uv_stdio_container_t stdio[3];
    uv_fs_t req;
    child c;
    int in_fd = -1, err_fd, n = 0, rc;
    int64_t deadline;

    argv[n++] = (char *)sbctl();
    argv[n++] = "passwd";
    for (int i = 0; args[i] != NULL && n < 15; i++)
        argv[n++] = (char *)args[i];
    argv[n] = NULL;
    if (in_path != NULL) {
        in_fd = uv_fs_open(NULL, &req, in_path, UV_FS_O_RDONLY, 0, NULL);
        uv_fs_req_cleanup(&req);
        assert_true(in_fd >= 0);
    }
    err_fd = uv_fs_open(NULL, &req, err_path, UV_FS_O_WRONLY | UV_FS_O_CREAT | UV_FS_O_TRUNC, 0600,
                        NULL);
    uv_fs_req_cleanup(&req);
    assert_true(err_fd >= 0);

    memset(&c, 0, sizeof(c));
    memset(&opt, 0, sizeof(opt));
    opt.file = argv[0];
    opt.args = argv;
    opt.exit_cb = on_child_exit;
    opt.flags = UV_PROCESS_WINDOWS_HIDE;
    stdio[0].flags = in_fd >= 0 ? UV_INHERIT_FD : UV_IGNORE;
    stdio[0].data.fd = in_fd;
    stdio[1].flags = UV_INHERIT_FD;
    stdio[1].data.fd = err_fd;
    stdio[2].flags = UV_INHERIT_FD;
    stdio[2].data.fd = err_fd;
    opt.stdio = stdio;
    opt.stdio_count = 3;
    c.h.data = &c;
    rc = uv_spawn(sbt_loop(), &c.h, &opt);
    if (rc != 0)
        fail_msg("cannot run %s: %s", argv[0], uv_strerror(rc));
    deadline = sbt_now_ms() + RUN_MS;
    while (!c.exited && sbt_now_ms() < deadline)
        sbt_poll_pause(10);
    if (!c.exited)
        uv_process_kill(&c.h, SIGKILL);
    uv_close((uv_handle_t *)&c.h, on_child_closed);
    while (!c.closed)
        sbt_poll_pause(1);
    if (in_fd >= 0)
        uv_fs_close(NULL, &req, in_fd, NULL);
    uv_fs_close(NULL, &req, err_fd, NULL);
    if (!c.exited)
        fail_msg("sbctl passwd did not finish within %d ms", RUN_MS);
    return c.term_signal != 0 ? 128 + c.term_signal : (int)c.status;
}

#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

typedef struct paths {
    char dir[SBT_PATH_MAX], file[SBT_PATH_MAX], in[SBT_PATH_MAX], err[SBT_PATH_MAX];
} paths;

static void expect_stderr(const paths *p, const char *needle)
{
    char *err = sbt_read_file(p->err, NULL);
    assert_non_null(err);
    if (strstr(err, needle) == NULL)
        fail_msg("stderr of sbctl passwd lacks \"%s\":\n%s", needle, err);
    free(err);
}

static sb_auth *load(const paths *p)
{
    sb_auth *a = NULL;
    sb_error err;
    sb_error_clear(&err);
    if (sb_auth_load(&a, p->file, NULL, &err) != 0)
        fail_msg("%s does not load: %s", p->file, err.msg);
    return a;
}

static int check(const sb_auth *a, const char *user, const char *password)
{
    return sb_auth_check_password(a, user, password, strlen(password));
}

static void test_passwd(void **state)
{
    paths p;
    sb_auth *a;
    char *text, *kept;
    (void)state;

    sbt_mkdtemp(p.dir, sizeof(p.dir), "passwd");
    sbt_path(p.file, sizeof(p.file), p.dir, "passwd");
    sbt_path(p.in, sizeof(p.in), p.dir, "stdin.txt");
    sbt_path(p.err, sizeof(p.err), p.dir, "stderr.txt");

    /* Create, with the password on the command line. */
    assert_int_equal(
        passwd(NULL, p.err, ARGS("-c", "-b", "--iterations", "1000", p.file, "alice", "secret")),
        0);
    text = sbt_read_file(p.file, NULL);
    assert_non_null(text);
    assert_int_equal(strncmp(text, "alice:$7$1000$", 14), 0);
    free(text);
#ifndef _WIN32
    {
        uv_fs_t req;
        assert_int_equal(uv_fs_stat(NULL, &req, p.file, NULL), 0);
        assert_int_equal(req.statbuf.st_mode & 0777, 0600);
        uv_fs_req_cleanup(&req);
    }
#endif

    /* Add bob, the password as one line on stdin (not a terminal); the
     * default iteration count. */
    sbt_write_file(p.in, "pw of bob\r\n", 11);
    assert_int_equal(passwd(p.in, p.err, ARGS(p.file, "bob")), 0);
    a = load(&p);
    assert_int_equal(check(a, "alice", "secret"), 0);
    assert_int_equal(check(a, "bob", "pw of bob"), 0);
    assert_int_equal(check(a, "bob", "pw of bob\r"), SB_EAUTH);
    sb_auth_free(a);
    text = sbt_read_file(p.file, NULL);
    assert_non_null(strstr(text, "\nbob:$7$210000$"));
    free(text);

    /* Comments and a Mosquitto line (carol, $6$) survive edits untouched. */
    text = sbt_read_file(p.file, NULL);
    {
        static const char extra[] =
            "# managed by hand\n"
            "carol:$6$CRRAYP2f2IJGxlfU$karfcAAuk5GrgZtQR/ZRfRJ88jPjZ8OlbwonJy+Hloy8FngOwUsf6P+"
            "lD8k/nuwUN0moY8qrfovVH1fithR4IQ==\n";
        size_t n = strlen(text);
        char *more = malloc(n + sizeof(extra));
        assert_non_null(more);
        memcpy(more, text, n);
        memcpy(more + n, extra, sizeof(extra));
        sbt_write_file(p.file, more, strlen(more));
        free(more);
    }
    free(text);

    /* Change alice's password. */
    assert_int_equal(passwd(NULL, p.err, ARGS("-b", p.file, "alice", "new secret")), 0);
    a = load(&p);
    assert_int_equal(check(a, "alice", "new secret"), 0);
    assert_int_equal(check(a, "alice", "secret"), SB_EAUTH);
    assert_int_equal(check(a, "bob", "pw of bob"), 0);
    assert_int_equal(check(a, "carol", "h\xc3\xa9llo"), 0);
    sb_auth_free(a);
    text = sbt_read_file(p.file, NULL);
    assert_int_equal(strncmp(text, "alice:$7$210000$", 16), 0); /* still the first line */
    free(text);

    /* Delete bob: everything else stays as it was. */
    text = sbt_read_file(p.file, NULL);
    assert_int_equal(passwd(NULL, p.err, ARGS("-D", p.file, "bob")), 0);
    kept = sbt_read_file(p.file, NULL);
    {
        /* kept == text without bob's line */
        char *bob = strstr(text, "\nbob:"), *eol;
        assert_non_null(bob);
        eol = strchr(bob + 1, '\n');
        assert_non_null(eol);
        memmove(bob, eol, strlen(eol) + 1);
        assert_string_equal(kept, text);
    }
    free(text);
    free(kept);
    a = load(&p);
    assert_int_equal(check(a, "bob", "pw of bob"), SB_EAUTH);
    assert_int_equal(check(a, "alice", "new secret"), 0);
    sb_auth_free(a);

    /* Failures leave the file alone. */
    text = sbt_read_file(p.file, NULL);
    assert_int_equal(passwd(NULL, p.err, ARGS("-D", p.file, "bob")), 1);
    expect_stderr(&p, "user 'bob' is not in");
    assert_int_equal(passwd(NULL, p.err, ARGS(p.file, "dave")), 1); /* stdin: nothing */
    expect_stderr(&p, "no password on standard input");
    sbt_write_file(p.in, "\n", 1);
    assert_int_equal(passwd(p.in, p.err, ARGS(p.file, "dave")), 1);
    expect_stderr(&p, "empty password");
    assert_int_equal(passwd(NULL, p.err, ARGS("-b", p.file, "dave")), 2);
    expect_stderr(&p, "-b needs PASSWORD");
    assert_int_equal(passwd(NULL, p.err, ARGS(p.file, "dave", "pw")), 2);
    expect_stderr(&p, "needs -b");
    assert_int_equal(passwd(NULL, p.err, ARGS("-c", "-D", p.file, "dave")), 2);
    assert_int_equal(passwd(NULL, p.err, ARGS("-b", p.file, "da:ve", "pw")), 2);
    expect_stderr(&p, "invalid user name 'da:ve': must not contain ':'");
    assert_int_equal(passwd(NULL, p.err, ARGS("-b", "--iterations", "10", p.file, "d", "x")), 2);
    kept = sbt_read_file(p.file, NULL);
    assert_string_equal(kept, text);
    free(kept);
    free(text);
    {
        char missing[SBT_PATH_MAX];
        sbt_path(missing, sizeof(missing), p.dir, "missing");
        assert_int_equal(passwd(NULL, p.err, ARGS("-b", missing, "dave", "pw")), 1);
        expect_stderr(&p, "does not exist (-c creates it)");
    }

    /* -c overwrites: only the new user is left. */
    assert_int_equal(
        passwd(NULL, p.err, ARGS("-c", "-b", "--iterations", "1000", p.file, "erin", "pw")), 0);
    a = load(&p);
    assert_int_equal(check(a, "erin", "pw"), 0);
    assert_int_equal(check(a, "alice", "new secret"), SB_EAUTH);
    sb_auth_free(a);

    /* A file the broker would refuse is still edited, with a warning. */
    sbt_write_file(p.file, "broken line\n", 12);
    assert_int_equal(passwd(NULL, p.err, ARGS("-b", "--iterations", "1000", p.file, "f", "pw")), 0);
    expect_stderr(&p, "warning: the broker will refuse this file");
    text = sbt_read_file(p.file, NULL);
    assert_int_equal(strncmp(text, "broken line\nf:$7$1000$", 22), 0);
    free(text);

    /* Nothing but the file is left in the directory (no temp files). */
    {
        uv_fs_t req;
        uv_dirent_t ent;
        int n = 0;
        assert_true(uv_fs_scandir(NULL, &req, p.dir, 0, NULL) >= 0);
        while (uv_fs_scandir_next(&req, &ent) != UV_EOF)
            n += strstr(ent.name, ".tmp-") != NULL;
        uv_fs_req_cleanup(&req);
        assert_int_equal(n, 0);
    }
    sbt_rmtree(p.dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_passwd),
    };
    sbt_apply_filter();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
