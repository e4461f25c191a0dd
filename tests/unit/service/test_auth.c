/*
 * Password and ACL files (service/auth.h): hashing round trip, Mosquitto's
 * files (tests/data/auth/mosquitto.*), every class of bad line with its
 * FILE:LINE message (golden bad inputs tests/data/auth/bad-*), ACL decisions
 * for anonymous clients, users and patterns, deny precedence, the
 * filter-subset rule, subscriptions granted when partly readable, $SYS
 * topics, concurrent checks, out-of-memory at every allocation, the cost of
 * one verification and the cache of verified logins.
 *
 * Set SB_UPDATE_GOLDEN=1 to rewrite the .expected files from the current
 * output (then review the diff).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <uv.h>

#include "service/alloc.h"
#include "service/auth.h"
#include "service/auth_int.h"
#include "service/error.h"

/* ---- helpers ---- */

static char *data_path(const char *rel)
{
    const char *root = getenv("SB_TEST_DATA");
    size_t n;
    char *p;
    if (root == NULL)
        root = "tests/data";
    n = strlen(root) + strlen(rel) + 2;
    p = malloc(n);
    assert_non_null(p);
    snprintf(p, n, "%s/%s", root, rel);
    return p;
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    size_t n;
    if (f == NULL)
        return NULL;
    buf = malloc(1 << 16);
    assert_non_null(buf);
    n = fread(buf, 1, (1 << 16) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static sb_auth *acl(const char *text)
{
    sb_auth *a = NULL;
    sb_error err;
    sb_error_clear(&err);
    if (sb_auth_parse(&a, NULL, NULL, 0, "acl", text, strlen(text), &err) != 0)
        fail_msg("ACL did not load: %s", err.msg);
    return a;
}

static sb_auth *passwords(const char *text)
{
    sb_auth *a = NULL;
    sb_error err;
    sb_error_clear(&err);
    if (sb_auth_parse(&a, "pw", text, strlen(text), NULL, NULL, 0, &err) != 0)
        fail_msg("password file did not load: %s", err.msg);
    return a;
}

/* Loading fails with SB_ECONFIG and exactly this message. */
static void expect_pw_error(const char *text, const char *msg)
{
    sb_auth *a = NULL;
    sb_error err;
    int rc;
    sb_error_clear(&err);
    rc = sb_auth_parse(&a, "pw", text, strlen(text), NULL, NULL, 0, &err);
    assert_null(a);
    if (rc != SB_ECONFIG || strcmp(err.msg, msg) != 0)
        fail_msg("for %s\nexpected %s\ngot %d %s", text, msg, rc, err.msg);
}

static void expect_acl_error(const char *text, const char *msg)
{
    sb_auth *a = NULL;
    sb_error err;
    int rc;
    sb_error_clear(&err);
    rc = sb_auth_parse(&a, NULL, NULL, 0, "acl", text, strlen(text), &err);
    assert_null(a);
    if (rc != SB_ECONFIG || strcmp(err.msg, msg) != 0)
        fail_msg("for %s\nexpected %s\ngot %d %s", text, msg, rc, err.msg);
}

static int check(const sb_auth *a, const char *user, const char *password)
{
    return sb_auth_check_password(a, user, password, strlen(password));
}

/* ---- passwords ---- */

static void test_round_trip(void **state)
{
    char *h = NULL, text[512];
    sb_auth *a;
    (void)state;

    assert_int_equal(sb_auth_hash_password(&h, "secret", 6, 1000), 0);
    assert_non_null(h);
    assert_memory_equal(h, "$7$1000$", 8);
    /* 12-byte salt (16 base64 chars), 64-byte hash (88). */
    assert_int_equal(strlen(h), 8 + 16 + 1 + 88);
    snprintf(text, sizeof(text), "alice:%s\n", h);
    sb_free(h);
    a = passwords(text);
    assert_true(sb_auth_has_passwords(a));
    assert_false(sb_auth_has_acl(a));
    assert_int_equal(check(a, "alice", "secret"), 0);
    assert_int_equal(check(a, "alice", "Secret"), SB_EAUTH);
    assert_int_equal(check(a, "alice", "secret "), SB_EAUTH);
    assert_int_equal(check(a, "alice", ""), SB_EAUTH);
    assert_int_equal(sb_auth_check_password(a, "alice", "secret", 5), SB_EAUTH);
    assert_int_equal(check(a, "bob", "secret"), SB_EAUTH);
    assert_int_equal(check(a, "Alice", "secret"), SB_EAUTH);
    assert_int_equal(check(a, "", "secret"), SB_EAUTH);
    assert_int_equal(sb_auth_check_password(a, NULL, "secret", 6), SB_EAUTH);
    assert_int_equal(sb_auth_check_password(a, "alice", NULL, 0), SB_EAUTH);
    sb_auth_free(a);

    /* Binary passwords: the length counts, NUL bytes included. */
    assert_int_equal(sb_auth_hash_password(&h, "a\0b", 3, 1000), 0);
    snprintf(text, sizeof(text), "bin:%s", h); /* no final newline */
    sb_free(h);
    a = passwords(text);
    assert_int_equal(sb_auth_check_password(a, "bin", "a\0b", 3), 0);
    assert_int_equal(sb_auth_check_password(a, "bin", "a\0c", 3), SB_EAUTH);
    assert_int_equal(sb_auth_check_password(a, "bin", "a", 1), SB_EAUTH);
    sb_auth_free(a);

    /* Two hashes of one password differ (fresh salt). */
    {
        char *h2 = NULL;
        assert_int_equal(sb_auth_hash_password(&h, "x", 1, 1000), 0);
        assert_int_equal(sb_auth_hash_password(&h2, "x", 1, 1000), 0);
        assert_string_not_equal(h, h2);
        sb_free(h);
        sb_free(h2);
    }
    assert_int_equal(sb_auth_hash_password(&h, "x", 1, 0), SB_EINVAL);
    assert_null(h);
}

static void test_no_password_file(void **state)
{
    sb_auth *a = acl("topic #\n");
    (void)state;
    assert_false(sb_auth_has_passwords(a));
    assert_true(sb_auth_has_acl(a));
    assert_int_equal(check(a, "alice", "secret"), SB_EAUTH);
    sb_auth_free(a);
    assert_false(sb_auth_has_passwords(NULL));
    assert_int_equal(check(NULL, "alice", "secret"), SB_EAUTH);
    /* An empty password file: authentication required, nobody gets in. */
    a = passwords("# nobody yet\n");
    assert_true(sb_auth_has_passwords(a));
    assert_int_equal(check(a, "alice", "secret"), SB_EAUTH);
    sb_auth_free(a);
}

/* Lines written by mosquitto_passwd 2.0.11:
 *   mosquitto_passwd -c -b mosquitto.passwd alice secret
 *   mosquitto_passwd -b mosquitto.passwd bob 'p:w d'
 *   mosquitto_passwd -H sha512 -b mosquitto.passwd carol 'héllo' */
static void test_mosquitto_fixture(void **state)
{
    char *path = data_path("auth/mosquitto.passwd");
    sb_auth *a = NULL;
    sb_error err;
    (void)state;

    sb_error_clear(&err);
    assert_int_equal(sb_auth_load(&a, path, NULL, &err), 0);
    assert_int_equal(check(a, "alice", "secret"), 0);
    assert_int_equal(check(a, "alice", "secreT"), SB_EAUTH);
    assert_int_equal(check(a, "bob", "p:w d"), 0);
    assert_int_equal(check(a, "bob", "p:w"), SB_EAUTH);
    assert_int_equal(check(a, "carol", "h\xc3\xa9llo"), 0); /* $6$ */
    assert_int_equal(check(a, "carol", "hello"), SB_EAUTH);
    assert_int_equal(check(a, "dave", "secret"), SB_EAUTH);
    sb_auth_free(a);
    free(path);
}

static void test_password_file_syntax(void **state)
{
    static const char alice[] =
        "$7$101$Pjet7HnLlmJ9y1wU$l3lz8XL2qZR6blM8Y7aZ9PTCaHJWN0A5uDgEPMCZz1YBShnxgDccRkgO7z6HP"
        "+PunHpwOF4O34ymCznifE1Yqg==";
    char text[1024];
    sb_auth *a;
    (void)state;

    /* Comments, blank lines, CRLF, blanks around the fields: all fine. */
    snprintf(text, sizeof(text), "# users\r\n\r\n   \t\r\n  # indented comment\n alice\t: %s \r\n",
             alice);
    a = passwords(text);
    assert_int_equal(check(a, "alice", "secret"), 0);
    sb_auth_free(a);
    /* Unpadded base64 is accepted too. */
    snprintf(text, sizeof(text), "alice:%.*s\n", (int)(sizeof(alice) - 3), alice);
    a = passwords(text);
    assert_int_equal(check(a, "alice", "secret"), 0);
    sb_auth_free(a);
    /* Non-ASCII user names. */
    snprintf(text, sizeof(text), "j\xc3\xbcrgen:%s\n", alice);
    a = passwords(text);
    assert_int_equal(check(a, "j\xc3\xbcrgen", "secret"), 0);
    sb_auth_free(a);

    expect_pw_error("alice\n", "pw:1: expected USER:HASH (no ':' on the line)");
    snprintf(text, sizeof(text), "# c\n\n :%s\n", alice);
    expect_pw_error(text, "pw:3: empty user name");
    snprintf(text, sizeof(text), "alice:%s\nbob:%s\n alice :%s\n", alice, alice, alice);
    expect_pw_error(text, "pw:3: user 'alice' already defined at line 1");
    expect_pw_error("alice:secret\n", "pw:1: user 'alice': not a $7$ (PBKDF2-SHA512) or $6$ "
                                      "(SHA512) password hash; write it with sbctl passwd");
    expect_pw_error("alice:\n", "pw:1: user 'alice': not a $7$ (PBKDF2-SHA512) or $6$ "
                                "(SHA512) password hash; write it with sbctl passwd");
    expect_pw_error("alice:$7$abc$AAAAAAAAAAAAAAAA$AAAA\n",
                    "pw:1: user 'alice': bad iteration count (expected $7$N$SALT$HASH, N >= 1)");
    expect_pw_error("alice:$7$0$AAAAAAAAAAAAAAAA$AAAA\n",
                    "pw:1: user 'alice': bad iteration count (expected $7$N$SALT$HASH, N >= 1)");
    expect_pw_error("alice:$7$99999999999$AAAAAAAAAAAAAAAA$AAAA\n",
                    "pw:1: user 'alice': bad iteration count (expected $7$N$SALT$HASH, N >= 1)");
    expect_pw_error("alice:$7$-5$AAAAAAAAAAAAAAAA$AAAA\n",
                    "pw:1: user 'alice': bad iteration count (expected $7$N$SALT$HASH, N >= 1)");
    expect_pw_error("alice:$7$101\n",
                    "pw:1: user 'alice': bad iteration count (expected $7$N$SALT$HASH, N >= 1)");
    expect_pw_error("alice:$7$101$AAAAAAAAAAAAAAAA\n",
                    "pw:1: user 'alice': missing '$' between salt and hash");
    expect_pw_error("alice:$7$101$AAAA*AAAAAAAAAAA$AAAA\n",
                    "pw:1: user 'alice': salt is not valid base64");
    expect_pw_error("alice:$7$101$$AAAA\n", "pw:1: user 'alice': salt is not valid base64");
    expect_pw_error("alice:$7$101$AAAA$AAAA\n",
                    "pw:1: user 'alice': salt must be 8 to 64 bytes, got 3");
    expect_pw_error("alice:$7$101$AAAAAAAAAAAAAAAA$AAAA\n",
                    "pw:1: user 'alice': hash must be 64 bytes, got 3");
    expect_pw_error("alice:$7$101$AAAAAAAAAAAAAAAA$A\n",
                    "pw:1: user 'alice': hash is not valid base64");
    snprintf(text, sizeof(text), "alice:%s$x\n", alice);
    expect_pw_error(text, "pw:1: user 'alice': unexpected '$' after the hash");
    expect_pw_error("alice:$6$AAAAAAAAAAAAAAAA$AAAA\n",
                    "pw:1: user 'alice': hash must be 64 bytes, got 3");
    expect_pw_error("\xff\xfe:$6$AAAAAAAAAAAAAAAA$AAAA\n", "pw:1: user name is not valid UTF-8");
    {
        static const char nul[] = "# x\nal\0ice:$6$AAAA\n";
        sb_auth *b = NULL;
        sb_error err;
        sb_error_clear(&err);
        assert_int_equal(sb_auth_parse(&b, "pw", nul, sizeof(nul) - 1, NULL, NULL, 0, &err),
                         SB_ECONFIG);
        assert_string_equal(err.msg, "pw:2: contains a NUL byte");
    }
}

static void test_missing_file(void **state)
{
    char *path = data_path("auth/no-such-file");
    sb_auth *a = NULL;
    sb_error err;
    (void)state;
    sb_error_clear(&err);
    assert_int_equal(sb_auth_load(&a, path, NULL, &err), SB_ENOTFOUND);
    assert_null(a);
    assert_non_null(strstr(err.msg, "no-such-file"));
    sb_error_clear(&err);
    assert_int_equal(sb_auth_load(&a, NULL, path, &err), SB_ENOTFOUND);
    assert_non_null(strstr(err.msg, "no-such-file"));
    /* Neither file: a valid, permissive sb_auth. */
    assert_int_equal(sb_auth_load(&a, NULL, NULL, &err), 0);
    assert_false(sb_auth_has_passwords(a));
    assert_int_equal(sb_auth_allowed(a, NULL, NULL, "a/b", SB_ACL_WRITE), 1);
    sb_auth_free(a);
    free(path);
}

static void test_user_names(void **state)
{
    const char *why = NULL;
    const char *name;
    size_t len;
    (void)state;
    assert_int_equal(sb_auth_user_name_check("alice", &why), 0);
    assert_int_equal(sb_auth_user_name_check("j\xc3\xbcrgen b", &why), 0);
    assert_int_equal(sb_auth_user_name_check("a#b", &why), 0);
    assert_int_equal(sb_auth_user_name_check("", &why), SB_EINVAL);
    assert_int_equal(sb_auth_user_name_check("a:b", &why), SB_EINVAL);
    assert_string_equal(why, "must not contain ':'");
    assert_int_equal(sb_auth_user_name_check("a\nb", &why), SB_EINVAL);
    assert_int_equal(sb_auth_user_name_check(" a", &why), SB_EINVAL);
    assert_int_equal(sb_auth_user_name_check("a\t", &why), SB_EINVAL);
    assert_int_equal(sb_auth_user_name_check("#a", &why), SB_EINVAL);
    assert_int_equal(sb_auth_user_name_check("\xc3", &why), SB_EINVAL);

    assert_int_equal(sb_auth_passwd_line_user(" bob :x", 7, &name, &len), 1);
    assert_int_equal(len, 3);
    assert_memory_equal(name, "bob", 3);
    assert_int_equal(sb_auth_passwd_line_user("  # bob:x", 9, &name, &len), 0);
    assert_int_equal(sb_auth_passwd_line_user("  ", 2, &name, &len), 0);
    assert_int_equal(sb_auth_passwd_line_user("bob", 3, &name, &len), 0);
}

/* ---- ACL ---- */

static const char acl_text[] = "# anonymous clients\n"
                               "topic read public/#\n"
                               "topic write public/anon/+\n"
                               "\n"
                               "user alice\n"
                               "topic alice/#\n"
                               "topic read shared/+\n"
                               "topic deny alice/secret/#\n"
                               "\n"
                               "user bob\n"
                               "topic write sensors/#\n"
                               "topic read $SYS/broker/#\n"
                               "\n"
                               "user alice\n" /* blocks of one user add up */
                               "topic write shared/alice\n"
                               "\n"
                               "pattern read users/%u/#\n"
                               "pattern write clients/%c/out\n"
                               "pattern readwrite both/%u/%c\n";

static void test_acl_users(void **state)
{
    sb_auth *a = acl(acl_text);
    (void)state;

    /* Anonymous: the rules before any user line. */
    assert_true(sb_auth_allowed(a, NULL, NULL, "public/x", SB_ACL_READ));
    assert_true(sb_auth_allowed(a, NULL, NULL, "public", SB_ACL_READ));
    assert_false(sb_auth_allowed(a, NULL, NULL, "public/x", SB_ACL_WRITE));
    assert_true(sb_auth_allowed(a, NULL, NULL, "public/anon/x", SB_ACL_WRITE));
    assert_true(sb_auth_allowed(a, NULL, NULL, "public/anon/x", SB_ACL_READ | SB_ACL_WRITE));
    assert_false(sb_auth_allowed(a, NULL, NULL, "public/x", SB_ACL_READ | SB_ACL_WRITE));
    assert_false(sb_auth_allowed(a, NULL, NULL, "alice/x", SB_ACL_READ));
    assert_false(sb_auth_allowed(a, NULL, NULL, "other", SB_ACL_READ));

    /* alice: readwrite by default, her blocks merged; not the anonymous rules. */
    assert_true(sb_auth_allowed(a, "alice", "c1", "alice/x", SB_ACL_READ | SB_ACL_WRITE));
    assert_true(sb_auth_allowed(a, "alice", "c1", "alice", SB_ACL_WRITE));
    assert_true(sb_auth_allowed(a, "alice", "c1", "shared/x", SB_ACL_READ));
    assert_false(sb_auth_allowed(a, "alice", "c1", "shared/x", SB_ACL_WRITE));
    assert_true(sb_auth_allowed(a, "alice", "c1", "shared/alice", SB_ACL_WRITE));
    assert_false(sb_auth_allowed(a, "alice", "c1", "shared/x/y", SB_ACL_READ));
    assert_false(sb_auth_allowed(a, "alice", "c1", "public/x", SB_ACL_READ));
    assert_false(sb_auth_allowed(a, "alice", "c1", "sensors/t", SB_ACL_WRITE));

    /* bob */
    assert_true(sb_auth_allowed(a, "bob", NULL, "sensors/t/1", SB_ACL_WRITE));
    assert_false(sb_auth_allowed(a, "bob", NULL, "sensors/t/1", SB_ACL_READ));
    assert_false(sb_auth_allowed(a, "bob", NULL, "alice/x", SB_ACL_READ));

    /* A user with no block: the patterns only. */
    assert_false(sb_auth_allowed(a, "carol", "cc", "public/x", SB_ACL_READ));
    assert_true(sb_auth_allowed(a, "carol", "cc", "users/carol/inbox", SB_ACL_READ));

    /* Invalid topics and access values are denied. */
    assert_false(sb_auth_allowed(a, "alice", "c1", "alice/+", SB_ACL_READ));
    assert_false(sb_auth_allowed(a, "alice", "c1", "alice/#", SB_ACL_READ));
    assert_false(sb_auth_allowed(a, "alice", "c1", "", SB_ACL_READ));
    assert_false(sb_auth_allowed(a, "alice", "c1", NULL, SB_ACL_READ));
    assert_false(sb_auth_allowed(a, "alice", "c1", "alice/x", 0));
    assert_false(sb_auth_allowed(a, "alice", "c1", "alice/x", 4));
    sb_auth_free(a);
}

static void test_acl_patterns(void **state)
{
    sb_auth *a = acl(acl_text);
    (void)state;

    assert_true(sb_auth_allowed(a, "alice", "c1", "users/alice/inbox", SB_ACL_READ));
    assert_true(sb_auth_allowed(a, "alice", "c1", "users/alice", SB_ACL_READ));
    assert_false(sb_auth_allowed(a, "alice", "c1", "users/alice/inbox", SB_ACL_WRITE));
    assert_false(sb_auth_allowed(a, "alice", "c1", "users/bob/inbox", SB_ACL_READ));
    assert_false(sb_auth_allowed(a, "alice", "c1", "users/alicex/inbox", SB_ACL_READ));
    assert_true(sb_auth_allowed(a, "alice", "c1", "clients/c1/out", SB_ACL_WRITE));
    assert_false(sb_auth_allowed(a, "alice", "c1", "clients/c2/out", SB_ACL_WRITE));
    assert_false(sb_auth_allowed(a, "alice", "c1", "clients/c1/out/x", SB_ACL_WRITE));
    assert_true(sb_auth_allowed(a, "alice", "c1", "both/alice/c1", SB_ACL_WRITE));
    assert_false(sb_auth_allowed(a, "alice", "c1", "both/alice/c2", SB_ACL_WRITE));
    assert_false(sb_auth_allowed(a, "alice", "c1", "both/c1/alice", SB_ACL_WRITE));

    /* Patterns apply to anonymous clients too, %c only: %u has no value. */
    assert_true(sb_auth_allowed(a, NULL, "c9", "clients/c9/out", SB_ACL_WRITE));
    assert_false(sb_auth_allowed(a, NULL, "c9", "both/c9/c9", SB_ACL_WRITE));
    /* No client id: %c patterns grant nothing. */
    assert_false(sb_auth_allowed(a, "alice", NULL, "clients//out", SB_ACL_WRITE));
    assert_false(sb_auth_allowed(a, "alice", "", "clients//out", SB_ACL_WRITE));

    /* Identities that would be wildcards, several levels or $ topics grant
     * nothing. */
    assert_false(sb_auth_allowed(a, "+", NULL, "users/+/x", SB_ACL_READ));
    assert_false(sb_auth_allowed(a, "+", NULL, "users/bob/x", SB_ACL_READ));
    assert_false(sb_auth_allowed(a, "#", NULL, "users/bob/x", SB_ACL_READ));
    assert_false(sb_auth_allowed(a, "a/b", NULL, "users/a/b/x", SB_ACL_READ));
    assert_false(sb_auth_allowed(a, "", NULL, "users//x", SB_ACL_READ));
    assert_false(sb_auth_allowed(a, "bob", "x/y", "clients/x/y/out", SB_ACL_WRITE));
    assert_false(sb_auth_allowed(a, "bob", "+", "clients/z/out", SB_ACL_WRITE));
    assert_false(sb_auth_filter_allowed(a, "+", NULL, "users/+/x"));
    assert_false(sb_auth_filter_allowed(a, "#", NULL, "users/#"));
    sb_auth_free(a);

    /* A pattern at the first level cannot reach $SYS through a user named
     * "$SYS". */
    a = acl("pattern read %u/#\n");
    assert_true(sb_auth_allowed(a, "alice", NULL, "alice/x", SB_ACL_READ));
    assert_false(sb_auth_allowed(a, "$SYS", NULL, "$SYS/broker/uptime", SB_ACL_READ));
    assert_false(sb_auth_filter_allowed(a, "$SYS", NULL, "$SYS/#"));
    sb_auth_free(a);
}

static void test_acl_deny(void **state)
{
    sb_auth *a = acl("user alice\n"
                     "topic deny a/b\n"
                     "topic readwrite a/#\n"
                     "topic deny a/c\n"
                     "topic deny x/+/secret\n"
                     "topic read x/#\n"
                     "pattern deny home/%u/#\n"
                     "topic read home/#\n"
                     "user odd+name\n"
                     "topic read home/#\n"
                     "topic read other/#\n");
    (void)state;

    /* Deny wins before and after the allow rule. */
    assert_false(sb_auth_allowed(a, "alice", NULL, "a/b", SB_ACL_READ));
    assert_false(sb_auth_allowed(a, "alice", NULL, "a/b", SB_ACL_WRITE));
    assert_false(sb_auth_allowed(a, "alice", NULL, "a/c", SB_ACL_READ));
    assert_true(sb_auth_allowed(a, "alice", NULL, "a/d", SB_ACL_READ));
    assert_true(sb_auth_allowed(a, "alice", NULL, "a/b/c", SB_ACL_READ));
    assert_false(sb_auth_allowed(a, "alice", NULL, "x/y/secret", SB_ACL_READ));
    assert_true(sb_auth_allowed(a, "alice", NULL, "x/y/public", SB_ACL_READ));

    /* A filter is fully readable only if no topic it can match is denied. */
    assert_false(sb_auth_filter_readable(a, "alice", NULL, "a/#"));
    assert_false(sb_auth_filter_readable(a, "alice", NULL, "a/+"));
    assert_false(sb_auth_filter_readable(a, "alice", NULL, "a/b"));
    assert_true(sb_auth_filter_readable(a, "alice", NULL, "a/d"));
    assert_true(sb_auth_filter_readable(a, "alice", NULL, "a/b/+"));
    assert_true(sb_auth_filter_readable(a, "alice", NULL, "a/+/c"));
    assert_false(sb_auth_filter_readable(a, "alice", NULL, "x/#"));
    assert_false(sb_auth_filter_readable(a, "alice", NULL, "x/+/+"));
    assert_false(sb_auth_filter_readable(a, "alice", NULL, "x/y/#"));
    assert_true(sb_auth_filter_readable(a, "alice", NULL, "x/y/public"));
    assert_true(sb_auth_filter_readable(a, "alice", NULL, "x/y/+/z"));

    /* A subscription is granted if some topic it can match is readable. */
    assert_true(sb_auth_filter_allowed(a, "alice", NULL, "a/#"));
    assert_true(sb_auth_filter_allowed(a, "alice", NULL, "a/+"));
    assert_false(sb_auth_filter_allowed(a, "alice", NULL, "a/b"));
    assert_false(sb_auth_filter_allowed(a, "alice", NULL, "a/c"));
    assert_true(sb_auth_filter_allowed(a, "alice", NULL, "x/#"));
    assert_false(sb_auth_filter_allowed(a, "alice", NULL, "x/+/secret"));
    assert_false(sb_auth_filter_allowed(a, "alice", NULL, "x/y/secret"));

    /* The deny pattern, for alice: her own home only. */
    assert_false(sb_auth_allowed(a, "alice", NULL, "home/alice/x", SB_ACL_READ));
    assert_true(sb_auth_allowed(a, "alice", NULL, "home/bob/x", SB_ACL_READ));
    assert_false(sb_auth_filter_readable(a, "alice", NULL, "home/+/x"));
    assert_true(sb_auth_filter_readable(a, "alice", NULL, "home/bob/#"));
    assert_true(sb_auth_filter_allowed(a, "alice", NULL, "home/+/x"));
    assert_false(sb_auth_filter_allowed(a, "alice", NULL, "home/alice/#"));
    /* For a user name that cannot be substituted, as '+': every home. */
    assert_false(sb_auth_allowed(a, "odd+name", NULL, "home/bob/x", SB_ACL_READ));
    assert_false(sb_auth_allowed(a, "odd+name", NULL, "home/odd/x", SB_ACL_READ));
    assert_true(sb_auth_allowed(a, "odd+name", NULL, "home", SB_ACL_READ));
    assert_true(sb_auth_allowed(a, "odd+name", NULL, "other/x", SB_ACL_READ));
    sb_auth_free(a);
}

/* Every pair: rule (anonymous `topic read RULE`), filter, fully readable. */
static void test_filter_subset(void **state)
{
    static const struct {
        const char *rule, *filter;
        int allowed;
    } cases[] = {
        {"a/#", "a/b", 1},
        {"a/#", "a/+/c", 1},
        {"a/#", "a/#", 1},
        {"a/#", "a", 1},
        {"a/#", "a/b/c/d", 1},
        {"a/#", "#", 0},
        {"a/#", "+/b", 0},
        {"a/#", "b", 0},
        {"a/+", "a/b", 1},
        {"a/+", "a/+", 1},
        {"a/+", "a/#", 0},
        {"a/+", "#", 0},
        {"a/+", "a", 0},
        {"a/+", "a/b/c", 0},
        {"a/+", "a/+/#", 0},
        {"+/b", "a/b", 1},
        {"+/b", "+/b", 1},
        {"+/b", "a/+", 0},
        {"+/b", "#", 0},
        {"+/b", "$SYS/b", 0},
        {"a/b", "a/b", 1},
        {"a/b", "a/+", 0},
        {"a/b", "a/b/#", 0},
        {"a/+/#", "a/b", 1},
        {"a/+/#", "a/b/#", 1},
        {"a/+/#", "a/#", 0}, /* a/# matches a, which a/+/# does not */
        {"a/+/#", "a", 0},
        {"#", "#", 1},
        {"#", "a/b", 1},
        {"#", "+/+", 1},
        {"#", "$SYS/#", 0},
        {"#", "$SYS/x", 0},
        {"+", "$SYS", 0},
        {"$SYS/#", "$SYS/#", 1},
        {"$SYS/#", "$SYS/broker/+", 1},
        {"$SYS/#", "#", 0},
        {"$SYS/#", "+/broker", 0},
        {"a//b", "a/+/b", 0},
        {"a/+/b", "a//b", 1},
        {"a/b", "a/b/", 0},
        {"a/#", "a/b/", 1},
    };
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char text[128];
        sb_auth *a;
        snprintf(text, sizeof(text), "topic read %s\n", cases[i].rule);
        a = acl(text);
        if (sb_auth_filter_readable(a, NULL, NULL, cases[i].filter) != cases[i].allowed)
            fail_msg("rule %s, filter %s: expected %s", cases[i].rule, cases[i].filter,
                     cases[i].allowed ? "allowed" : "denied");
        sb_auth_free(a);
    }
}

/* Deny rules against filters: not fully readable iff some topic matches both. */
static void test_filter_deny_overlap(void **state)
{
    static const struct {
        const char *deny, *filter;
        int allowed;
    } cases[] = {
        {"a/b", "a/b", 0},     {"a/b", "a/+", 0},    {"a/b", "a/#", 0},       {"a/b", "#", 0},
        {"a/b", "+/+", 0},     {"a/b", "a/c", 1},    {"a/b", "a/b/c", 1},     {"a/b", "a/+/c", 1},
        {"a/#", "a", 0},       {"a/#", "+", 0},      {"a/#", "b/#", 1},       {"a/+", "a", 1},
        {"#", "a/b", 0},       {"#", "$SYS/x", 1},   {"#", "$SYS/#", 1},      {"+/x", "$SYS/x", 1},
        {"$SYS/#", "#", 1},    {"$SYS/#", "+/x", 1}, {"$SYS/x", "$SYS/+", 0}, {"a/+/c", "a/b/#", 0},
        {"a/+/c", "a/b/d", 1},
    };
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char text[128];
        sb_auth *a;
        snprintf(text, sizeof(text), "topic read #\ntopic read $SYS/#\ntopic deny %s\n",
                 cases[i].deny);
        a = acl(text);
        if (sb_auth_filter_readable(a, NULL, NULL, cases[i].filter) != cases[i].allowed)
            fail_msg("deny %s, filter %s: expected %s", cases[i].deny, cases[i].filter,
                     cases[i].allowed ? "allowed" : "denied");
        sb_auth_free(a);
    }
}

/* Subscriptions as Mosquitto grants them: refused only when the ACL lets
 * the client read nothing the filter can match. Every case: ACL text, user,
 * filter, granted. */
static void test_filter_subscribe(void **state)
{
    static const char mosq[] = "topic readwrite #\n"
                               "topic deny test/nosubscribe\n"
                               "user alice\n"
                               "topic readwrite alice/#\n"
                               "topic read public/#\n"
                               "topic deny alice/secret/#\n"
                               "user bob\n"
                               "topic read $SYS/broker/#\n"
                               "topic read a/+/c\n"
                               "topic deny a/b/+\n"
                               "user carol\n"
                               "topic write #\n"
                               "user dave\n"
                               "topic read x/#\n"
                               "topic deny x/+\n"
                               "topic deny x/+/#\n"
                               "pattern read clients/%c/#\n"
                               "pattern read users/%u/in/#\n"
                               "pattern deny users/%u/in/secret\n";
    static const struct {
        const char *user, *client, *filter;
        int granted;
    } cases[] = {
        /* Mosquitto's case: `#` granted, deliveries filtered. */
        {NULL, NULL, "#", 1},
        {NULL, NULL, "test/#", 1},
        {NULL, NULL, "test/+", 1},
        {NULL, NULL, "test/nosubscribe", 0},
        {NULL, NULL, "$SYS/#", 0},
        {NULL, NULL, "+/nosubscribe", 1},
        /* Partly allowed filters, and a deny rule covering the rest. */
        {"alice", NULL, "#", 1},
        {"alice", NULL, "+", 1}, /* the topic `alice` */
        {"alice", NULL, "+/x", 1},
        {"alice", NULL, "alice/secret/#", 0},
        {"alice", NULL, "alice/secret/x/y", 0},
        {"alice", NULL, "alice/+/x", 1},
        {"alice", NULL, "other/#", 0},
        {"alice", NULL, "$SYS/#", 0},
        /* $SYS only where a rule names it; the deny inside a rule's reach. */
        {"bob", NULL, "$SYS/#", 1},
        {"bob", NULL, "$SYS/+/x", 1},
        {"bob", NULL, "$SYS/other/#", 0},
        {"bob", NULL, "#", 1},
        {"bob", NULL, "a/b/c", 0},
        {"bob", NULL, "a/+/c", 1},
        {"bob", NULL, "a/b/#", 0},
        {"bob", NULL, "a/x/#", 1},
        /* Write access is no read access (carol reads only through the
         * users/%u pattern). */
        {"carol", NULL, "+/x", 0},
        {"carol", NULL, "a", 0},
        {"carol", NULL, "#", 1},
        /* Deny rules that only together cover the allowed part are not
         * seen: granted, and each delivery is refused. */
        {"dave", NULL, "x/+", 0},
        {"dave", NULL, "x/+/+", 0},
        {"dave", NULL, "x/#", 1},
        {"dave", NULL, "x", 1},
        /* Placeholders stand for the client's own id and name only. */
        {"dave", "c1", "clients/#", 1},
        {"dave", "c1", "clients/c2/#", 0},
        {"dave", "a/b", "clients/#", 0},
        {"dave", "a/b", "clients/a/b", 0},
        {"erin", "c1", "users/+/in/#", 1},
        {"erin", "c1", "users/erin/in/secret", 0},
        {"erin", "c1", "users/bob/in/x", 0},
        {"er+in", "c1", "users/#", 0},
        {"erin", "c1", "#", 1}, /* clients/c1/... */
        /* Invalid filters. */
        {"alice", NULL, "alice/#/x", 0},
        {"alice", NULL, "", 0},
    };
    sb_auth *a = acl(mosq);
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        if (sb_auth_filter_allowed(a, cases[i].user, cases[i].client, cases[i].filter) !=
            cases[i].granted)
            fail_msg("user %s, client %s, filter %s: expected %s",
                     cases[i].user ? cases[i].user : "(anonymous)",
                     cases[i].client ? cases[i].client : "(none)", cases[i].filter,
                     cases[i].granted ? "granted" : "refused");
    /* Granted is not readable: the deliveries are checked one by one. */
    assert_false(sb_auth_filter_readable(a, NULL, NULL, "#"));
    assert_false(sb_auth_allowed(a, NULL, NULL, "test/nosubscribe", SB_ACL_READ));
    assert_true(sb_auth_allowed(a, NULL, NULL, "test/other", SB_ACL_READ));
    sb_auth_free(a);

    /* A long filter and a long user name (the intersection is built on the
     * heap). */
    {
        char user[700], filter[1400], text[1600];
        memset(user, 'u', sizeof(user) - 1);
        user[sizeof(user) - 1] = '\0';
        snprintf(filter, sizeof(filter), "in/%s/+", user);
        snprintf(text, sizeof(text), "pattern read in/%%u/#\npattern deny in/%%u/no\n");
        a = acl(text);
        assert_true(sb_auth_filter_allowed(a, user, NULL, filter));
        assert_true(sb_auth_filter_allowed(a, user, NULL, "in/#"));
        snprintf(filter, sizeof(filter), "in/%s/no", user);
        assert_false(sb_auth_filter_allowed(a, user, NULL, filter));
        sb_auth_free(a);
    }
}

static void test_sys_topics(void **state)
{
    sb_auth *a = acl("topic readwrite #\n"
                     "topic deny #\n" /* wildcards never reach $ topics */
                     "user admin\n"
                     "topic read $SYS/#\n"
                     "user all\n"
                     "topic readwrite #\n");
    (void)state;
    assert_false(sb_auth_allowed(a, NULL, NULL, "a", SB_ACL_READ));
    assert_false(sb_auth_allowed(a, NULL, NULL, "$SYS/uptime", SB_ACL_READ));
    assert_true(sb_auth_allowed(a, "admin", NULL, "$SYS/uptime", SB_ACL_READ));
    assert_true(sb_auth_allowed(a, "admin", NULL, "$SYS", SB_ACL_READ));
    assert_false(sb_auth_allowed(a, "admin", NULL, "$SYS/uptime", SB_ACL_WRITE));
    assert_false(sb_auth_allowed(a, "admin", NULL, "$dlq/x", SB_ACL_READ));
    assert_true(sb_auth_filter_allowed(a, "admin", NULL, "$SYS/#"));
    assert_false(sb_auth_filter_allowed(a, "admin", NULL, "#"));
    assert_true(sb_auth_allowed(a, "all", NULL, "a/b", SB_ACL_WRITE));
    assert_false(sb_auth_allowed(a, "all", NULL, "$SYS/uptime", SB_ACL_READ));
    assert_false(sb_auth_allowed(a, "all", NULL, "$dlq/x", SB_ACL_READ));
    /* `#` for "all" is fine: it cannot match $SYS topics either. */
    assert_true(sb_auth_filter_allowed(a, "all", NULL, "#"));
    sb_auth_free(a);
}

static void test_acl_misc(void **state)
{
    sb_auth *a;
    (void)state;

    /* Without an ACL file (or without sb_auth) everything is allowed. */
    a = passwords("");
    assert_true(sb_auth_allowed(a, NULL, NULL, "a", SB_ACL_WRITE));
    assert_true(sb_auth_filter_allowed(a, "x", NULL, "#"));
    assert_true(sb_auth_filter_allowed(a, "x", NULL, "$SYS/#"));
    sb_auth_free(a);
    assert_true(sb_auth_allowed(NULL, NULL, NULL, "a", SB_ACL_WRITE));
    assert_true(sb_auth_filter_allowed(NULL, NULL, NULL, "#"));

    /* An empty ACL file allows nothing. */
    a = acl("# nothing\n");
    assert_false(sb_auth_allowed(a, NULL, NULL, "a", SB_ACL_READ));
    assert_false(sb_auth_allowed(a, "alice", "c", "a", SB_ACL_READ));
    sb_auth_free(a);

    /* CRLF, blanks, a topic with spaces, a literal '%' in a topic line,
     * access words as filters' last word. */
    a = acl("  topic   read   a b/c  \r\n"
            "topic 100%used\r\n"
            "\tuser  bob smith \r\n"
            "topic write read\r\n");
    assert_true(sb_auth_allowed(a, NULL, NULL, "a b/c", SB_ACL_READ));
    assert_true(sb_auth_allowed(a, NULL, NULL, "100%used", SB_ACL_WRITE));
    assert_true(sb_auth_allowed(a, "bob smith", NULL, "read", SB_ACL_WRITE));
    assert_false(sb_auth_allowed(a, "bob smith", NULL, "read", SB_ACL_READ));
    /* Invalid filters are refused. */
    assert_false(sb_auth_filter_allowed(a, NULL, NULL, "a b/#/c"));
    assert_false(sb_auth_filter_allowed(a, NULL, NULL, ""));
    assert_false(sb_auth_filter_allowed(a, NULL, NULL, NULL));
    sb_auth_free(a);

    /* Mosquitto's example ACL file loads as it is. */
    {
        char *path = data_path("auth/mosquitto.acl");
        sb_error err;
        sb_error_clear(&err);
        assert_int_equal(sb_auth_load(&a, NULL, path, &err), 0);
        assert_true(sb_auth_allowed(a, NULL, NULL, "$SYS/broker/uptime", SB_ACL_READ));
        assert_true(sb_auth_allowed(a, "roger", NULL, "foo/bar", SB_ACL_WRITE));
        assert_false(sb_auth_allowed(a, "roger", NULL, "$SYS/broker/uptime", SB_ACL_READ));
        assert_true(
            sb_auth_allowed(a, "roger", "c1", "$SYS/broker/connection/c1/state", SB_ACL_WRITE));
        assert_false(
            sb_auth_allowed(a, "roger", "c1", "$SYS/broker/connection/c2/state", SB_ACL_WRITE));
        sb_auth_free(a);
        free(path);
    }
}

static void test_acl_errors(void **state)
{
    (void)state;
    expect_acl_error("topic read a\nfoo bar\n",
                     "acl:2: unknown keyword 'foo' (expected user, topic or pattern)");
    expect_acl_error("topics a\n",
                     "acl:1: unknown keyword 'topics' (expected user, topic or pattern)");
    expect_acl_error("\n\ntopic read\n", "acl:3: topic: missing topic filter");
    expect_acl_error("pattern deny   \n", "acl:1: pattern: missing topic filter");
    expect_acl_error("topic\n", "acl:1: topic: missing topic filter");
    expect_acl_error("user \n", "acl:1: user: missing user name");
    expect_acl_error("topic read a/#/b\n",
                     "acl:1: invalid filter 'a/#/b': '#' must be the last level on its own");
    expect_acl_error("topic read a/b+\n",
                     "acl:1: invalid filter 'a/b+': '+' must occupy a whole level");
    expect_acl_error("topic read a/\xff\n", "acl:1: invalid filter 'a/\xff': is not valid UTF-8");
    expect_acl_error("user \xff\n", "acl:1: user: name is not valid UTF-8");
    expect_acl_error("topic read users/%u/#\n",
                     "acl:1: '%u' in a topic line is not substituted (use a pattern line)");
    expect_acl_error("pattern read users/x%u/#\n",
                     "acl:1: '%u' must be a whole topic level (as in a/%u/#)");
    expect_acl_error("pattern read users/%c-in\n",
                     "acl:1: '%c' must be a whole topic level (as in a/%c/#)");
}

/* ---- golden bad inputs: tests/data/auth/bad-*.{passwd,acl} + .expected ---- */

static void check_golden(const char *name, int update)
{
    char rel[256], *path, *exp_path, *expected;
    size_t n = strlen(name);
    int is_acl = n > 4 && strcmp(name + n - 4, ".acl") == 0;
    sb_auth *a = NULL;
    sb_error err;
    const char *got;

    snprintf(rel, sizeof(rel), "auth/%s", name);
    path = data_path(rel);
    snprintf(rel, sizeof(rel), "auth/%.*s.expected", (int)(n - (is_acl ? 4 : 7)), name);
    exp_path = data_path(rel);
    sb_error_clear(&err);
    assert_int_equal(is_acl ? sb_auth_load(&a, NULL, path, &err)
                            : sb_auth_load(&a, path, NULL, &err),
                     SB_ECONFIG);
    assert_null(a);
    /* The message names the file as given; the golden file has its
     * base name. */
    got = strstr(err.msg, name);
    assert_non_null(got);
    if (update) {
        FILE *f = fopen(exp_path, "wb");
        assert_non_null(f);
        fprintf(f, "%s\n", got);
        fclose(f);
    } else {
        char want[300];
        expected = read_text(exp_path);
        if (expected == NULL) {
            fail_msg("missing %s (run with SB_UPDATE_GOLDEN=1)", exp_path);
            return;
        }
        snprintf(want, sizeof(want), "%s\n", got);
        if (strcmp(want, expected) != 0)
            fail_msg("%s:\nexpected %sgot      %s", name, expected, want);
        free(expected);
    }
    free(path);
    free(exp_path);
}

static void test_golden(void **state)
{
    static const char *const names[] = {
        "bad-duplicate.passwd",
        "bad-plaintext.passwd",
        "bad-no-colon.passwd",
        "bad-short-hash.passwd",
        "bad-iterations.passwd",
        "bad-salt.passwd",
        "bad-keyword.acl",
        "bad-filter.acl",
        "bad-missing-filter.acl",
        "bad-topic-placeholder.acl",
        "bad-partial-placeholder.acl",
        "bad-user.acl",
    };
    const char *u = getenv("SB_UPDATE_GOLDEN");
    (void)state;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        check_golden(names[i], u != NULL && strcmp(u, "1") == 0);
}

/* ---- robustness ---- */

static void test_out_of_memory(void **state)
{
    char *pw_path = data_path("auth/mosquitto.passwd");
    char *pw = read_text(pw_path), *h = NULL;
    long n;
    (void)state;

    assert_non_null(pw);
    for (n = 0;; n++) {
        sb_auth *a = NULL;
        sb_error err;
        int rc;
        sb_error_clear(&err);
        sb_alloc_fail_after(n);
        rc = sb_auth_parse(&a, "pw", pw, strlen(pw), "acl", acl_text, strlen(acl_text), &err);
        sb_alloc_fail_after(-1);
        if (rc == 0) {
            assert_int_equal(check(a, "alice", "secret"), 0);
            assert_true(sb_auth_allowed(a, "alice", "c1", "alice/x", SB_ACL_READ));
            sb_auth_free(a);
            break;
        }
        assert_int_equal(rc, SB_ENOMEM);
        assert_int_equal(err.code, SB_ENOMEM);
        assert_null(a);
    }
    assert_true(n > 10);
    for (n = 0;; n++) {
        int rc;
        sb_alloc_fail_after(n);
        rc = sb_auth_hash_password(&h, "x", 1, 1000);
        sb_alloc_fail_after(-1);
        if (rc == 0)
            break;
        assert_int_equal(rc, SB_ENOMEM);
        assert_null(h);
    }
    sb_free(h);
    free(pw);
    free(pw_path);
}

typedef struct worker {
    const sb_auth *a;
    int failures;
} worker;

static void check_loop(void *arg)
{
    worker *w = arg;
    for (int i = 0; i < 20; i++) {
        w->failures += check(w->a, "alice", "secret") != 0;
        w->failures += check(w->a, "bob", "p:w d") != 0;
        w->failures += check(w->a, "alice", "wrong") != SB_EAUTH;
        w->failures += check(w->a, "nobody", "secret") != SB_EAUTH;
        w->failures += !sb_auth_allowed(w->a, "alice", "c1", "users/alice/x", SB_ACL_READ);
    }
}

/* Checks run off the event loop, several at once, on one sb_auth. */
static void test_threads(void **state)
{
    char *path = data_path("auth/mosquitto.passwd");
    uv_thread_t t[4];
    worker w[4];
    sb_auth *a = NULL;
    sb_error err;
    char *pw = read_text(path);
    (void)state;

    assert_non_null(pw);
    sb_error_clear(&err);
    assert_int_equal(
        sb_auth_parse(&a, "pw", pw, strlen(pw), "acl", acl_text, strlen(acl_text), &err), 0);
    for (int i = 0; i < 4; i++) {
        w[i].a = a;
        w[i].failures = 0;
        assert_int_equal(uv_thread_create(&t[i], check_loop, &w[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        assert_int_equal(uv_thread_join(&t[i]), 0);
        assert_int_equal(w[i].failures, 0);
    }
    sb_auth_free(a);
    free(pw);
    free(path);
}

/* The fastest of 3 checks, in ms. */
static double time_check(const sb_auth *a, const char *user)
{
    double best = 1e30;
    for (int i = 0; i < 3; i++) {
        uint64_t t0 = uv_hrtime();
        double ms;
        assert_int_equal(check(a, user, "wrong"), SB_EAUTH);
        ms = (double)(uv_hrtime() - t0) / 1e6;
        if (ms < best)
            best = ms;
    }
    return best;
}

/* One verification at the default count, and an unknown user costs the
 * same work (the dummy takes the users' common kind and iteration count).
 * Checked on the work itself, not by timing it (a loaded machine made a
 * timed version flaky); the times are printed for information. */
static void test_cost(void **state)
{
    char *h1 = NULL, *h2 = NULL, *h3 = NULL, text[1024];
    int pbkdf2, iters;
    sb_auth *a;
    (void)state;

    assert_int_equal(sb_auth_hash_password(&h1, "a", 1, SB_AUTH_DEFAULT_ITERATIONS), 0);
    assert_int_equal(sb_auth_hash_password(&h2, "b", 1, SB_AUTH_DEFAULT_ITERATIONS), 0);
    assert_int_equal(sb_auth_hash_password(&h3, "c", 1, 1000), 0);
    snprintf(text, sizeof(text), "u1:%s\nu2:%s\nold:%s\n", h1, h2, h3);
    a = passwords(text);
    assert_int_equal(sb_auth__check_cost(a, "u1", &pbkdf2, &iters), 0);
    assert_true(pbkdf2);
    assert_int_equal(iters, SB_AUTH_DEFAULT_ITERATIONS);
    assert_int_equal(sb_auth__check_cost(a, "nobody", &pbkdf2, &iters), 0);
    assert_true(pbkdf2);
    assert_int_equal(iters, SB_AUTH_DEFAULT_ITERATIONS);
    assert_int_equal(sb_auth__check_cost(a, "old", &pbkdf2, &iters), 0);
    assert_int_equal(iters, 1000);
    print_message("PBKDF2-HMAC-SHA-512, %d iterations: %.1f ms per check (unknown user "
                  "%.1f ms; 1000 iterations %.2f ms)\n",
                  SB_AUTH_DEFAULT_ITERATIONS, time_check(a, "u1"), time_check(a, "nobody"),
                  time_check(a, "old"));
    sb_auth_free(a);
    sb_free(h1);
    sb_free(h2);
    sb_free(h3);
}

/* Verified logins are cached: checking one again costs far less than the
 * hash (a storm of reconnecting clients must not queue for PBKDF2), while
 * a wrong password, another user's password and a new sb_auth (a reloaded
 * file) are checked in full; a table far smaller than the logins stays
 * correct. */
static void test_login_cache(void **state)
{
    char *h1 = NULL, *h2 = NULL, *text, *other = NULL;
    size_t len = 0, cap = 6000 * 160;
    uint64_t t0;
    double first, again;
    sb_auth *a;
    (void)state;

    assert_int_equal(sb_auth_hash_password(&h1, "pw-1", 4, SB_AUTH_DEFAULT_ITERATIONS), 0);
    assert_int_equal(sb_auth_hash_password(&h2, "pw-2", 4, SB_AUTH_DEFAULT_ITERATIONS), 0);
    text = malloc(cap);
    assert_non_null(text);
    len = (size_t)snprintf(text, cap, "u1:%s\nu2:%s\n", h1, h2);
    a = passwords(text);
    t0 = uv_hrtime();
    assert_int_equal(check(a, "u1", "pw-1"), 0);
    first = (double)(uv_hrtime() - t0) / 1e6;
    t0 = uv_hrtime();
    for (int i = 0; i < 20; i++)
        assert_int_equal(check(a, "u1", "pw-1"), 0);
    again = (double)(uv_hrtime() - t0) / 1e6;
    print_message("first login %.1f ms, 20 more %.3f ms\n", first, again);
    /* Counted, not timed: the 20 repeats computed no hash. */
    {
        unsigned long before = sb_auth__hash_count();
        for (int i = 0; i < 20; i++)
            assert_int_equal(check(a, "u1", "pw-1"), 0);
        assert_int_equal(sb_auth__hash_count(), before);
    }
    /* What was not verified is not answered from the cache. */
    assert_int_equal(check(a, "u1", "pw-2"), SB_EAUTH);
    assert_int_equal(check(a, "u2", "pw-1"), SB_EAUTH);
    assert_int_equal(check(a, "u1", "pw-1x"), SB_EAUTH);
    assert_int_equal(sb_auth_check_password(a, "u1", "pw-1", 3), SB_EAUTH);
    assert_int_equal(check(a, "nobody", "pw-1"), SB_EAUTH);
    assert_int_equal(check(a, "u2", "pw-2"), 0);
    sb_auth_free(a);

    /* A reloaded file is a new sb_auth: u1's old password is checked
     * against the new hash, not found in a cache. */
    len = (size_t)snprintf(text, cap, "u1:%s\n", h2);
    a = passwords(text);
    assert_int_equal(check(a, "u1", "pw-1"), SB_EAUTH);
    assert_int_equal(check(a, "u1", "pw-2"), 0);
    sb_auth_free(a);

    /* 6000 users (one iteration each) through a table of 4096: every
     * answer stays right after evictions. */
    len = 0;
    for (int i = 0; i < 6000; i++) {
        char pw[16];
        int n = snprintf(pw, sizeof(pw), "p%d", i);
        assert_int_equal(sb_auth_hash_password(&other, pw, (size_t)n, 1), 0);
        len += (size_t)snprintf(text + len, cap - len, "user%d:%s\n", i, other);
        assert_true(len < cap);
        sb_free(other);
    }
    a = passwords(text);
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < 6000; i++) {
            char user[16], pw[16];
            snprintf(user, sizeof(user), "user%d", i);
            snprintf(pw, sizeof(pw), "p%d", i);
            assert_int_equal(check(a, user, pw), 0);
            snprintf(pw, sizeof(pw), "p%d", i + 1);
            assert_int_equal(check(a, user, pw), SB_EAUTH);
        }
    sb_auth_free(a);
    free(text);
    sb_free(h1);
    sb_free(h2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_no_password_file),
        cmocka_unit_test(test_mosquitto_fixture),
        cmocka_unit_test(test_password_file_syntax),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_user_names),
        cmocka_unit_test(test_acl_users),
        cmocka_unit_test(test_acl_patterns),
        cmocka_unit_test(test_acl_deny),
        cmocka_unit_test(test_filter_subset),
        cmocka_unit_test(test_filter_deny_overlap),
        cmocka_unit_test(test_filter_subscribe),
        cmocka_unit_test(test_sys_topics),
        cmocka_unit_test(test_acl_misc),
        cmocka_unit_test(test_acl_errors),
        cmocka_unit_test(test_golden),
        cmocka_unit_test(test_out_of_memory),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_cost),
        cmocka_unit_test(test_login_cache),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
