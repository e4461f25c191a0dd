/*
 * sbctl passwd: adds, changes or deletes a user in a password file (the
 * broker's MQTT authentication, service/auth.h), in the format Mosquitto 2's
 * mosquitto_passwd writes, so either tool edits the same files. Works on the
 * file only, no broker involved. Other lines (users, comments, even lines the
 * loader would refuse) are kept byte for byte; the file is replaced
 * atomically (sbctl_replace_file).
 */
#include "tools/sbctl/sbctl.h"

#include "service/platform.h"
#include "service/alloc.h"
#include "service/auth.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const sbctl_opt passwd_opts[] = {
    {"help", 'h', SBCTL_OPT_FLAG, 0, NULL, "show this help", 0, 0},
    {"create", 'c', SBCTL_OPT_FLAG, 0, NULL,
     "create FILE, or overwrite it: it then holds USER only", 0, 0},
    {"batch", 'b', SBCTL_OPT_FLAG, 0, NULL,
     "take PASSWORD from the command line (other local users may see it)", 0, 0},
    {"delete", 'D', SBCTL_OPT_FLAG, 0, NULL, "delete USER", 0, 0},
    {"json", 0, SBCTL_OPT_FLAG, 0, NULL,
     "print what was done as JSON: {\"file\", \"user\", \"action\"}", 0, 0},
    {"iterations", 0, SBCTL_OPT_INT, 0, "N", "PBKDF2 iterations (default 210000)", 1000, INT_MAX},
};

/* A growable byte buffer; an allocation failure sticks in `failed`. */
typedef struct buf {
    char *p;
    size_t len, cap;
    int failed;
} buf;

static void put(buf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap == 0 ? 4096 : b->cap;
        char *p;
        while (cap < b->len + n)
            cap *= 2;
        p = sb_realloc(b->p, cap);
        if (p == NULL) {
            b->failed = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void wipe(void *p, size_t n)
{
    volatile unsigned char *v = p;
    while (n-- > 0)
        *v++ = 0;
}

static void free_secret(char *s)
{
    if (s != NULL) {
        wipe(s, strlen(s));
        sb_free(s);
    }
}

/* Reads the whole file into b. Returns 0, or errno. */
static int read_file(const char *path, buf *b)
{
    FILE *f = sb_platform_fopen(path, "rb");
    char chunk[8192];
    size_t n;
    int e = 0;

    if (f == NULL)
        return errno != 0 ? errno : ENOENT;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        put(b, chunk, n);
    if (ferror(f))
        e = errno != 0 ? errno : EIO;
    fclose(f);
    if (e == 0 && b->failed)
        e = ENOMEM;
    return e;
}

/* One line from a stdin that is not a terminal (a pipe, a file). */
static int read_stdin_line(char **out, char *msg, size_t msglen)
{
    char *s = sb_malloc(SB_AUTH_PASSWORD_MAX + 1);
    size_t len = 0;
    int c;

    *out = NULL;
    if (s == NULL) {
        snprintf(msg, msglen, "out of memory");
        return -1;
    }
    while ((c = getchar()) != EOF && c != '\n') {
        if (c == '\0') {
            /* it would end the password early */
            wipe(s, len);
            sb_free(s);
            snprintf(msg, msglen, "the password contains a NUL byte");
            return -1;
        }
        if (len == SB_AUTH_PASSWORD_MAX) {
            wipe(s, len);
            sb_free(s);
            snprintf(msg, msglen, "password longer than %d bytes", SB_AUTH_PASSWORD_MAX);
            return -1;
        }
        s[len++] = (char)c;
    }
    if (c == EOF && len == 0) {
        sb_free(s);
        snprintf(msg, msglen, "no password on standard input");
        return -1;
    }
    if (len > 0 && s[len - 1] == '\r')
        len--;
    s[len] = '\0';
    *out = s;
    return 0;
}

/* The new password: from -b's argument, the terminal (twice), or stdin. */
static int get_password(char **out, const sbctl_ctx *ctx, const char *arg)
{
    char msg[200], *again = NULL;

    *out = NULL;
    if (arg != NULL) {
        *out = sb_strdup(arg);
        if (*out == NULL) {
            sbctl_errorf("out of memory");
            return SBCTL_EXIT_ERROR;
        }
    } else if (ctx->tty_in) {
        if (sbctl_read_secret(out, "Password: ", SB_AUTH_PASSWORD_MAX, msg, sizeof(msg)) != 0 ||
            sbctl_read_secret(&again, "Reenter password: ", SB_AUTH_PASSWORD_MAX, msg,
                              sizeof(msg)) != 0) {
            free_secret(*out);
            *out = NULL;
            sbctl_errorf("passwd: %s", msg);
            return SBCTL_EXIT_ERROR;
        }
        if (strcmp(*out, again) != 0) {
            free_secret(*out);
            free_secret(again);
            *out = NULL;
            sbctl_errorf("passwd: the passwords do not match");
            return SBCTL_EXIT_ERROR;
        }
        free_secret(again);
    } else if (read_stdin_line(out, msg, sizeof(msg)) != 0) {
        sbctl_errorf("passwd: %s", msg);
        return SBCTL_EXIT_ERROR;
    }
    if ((*out)[0] == '\0') {
        free_secret(*out);
        *out = NULL;
        sbctl_errorf("passwd: empty password");
        return SBCTL_EXIT_ERROR;
    }
    return SBCTL_EXIT_OK;
}

/* Copies old to out with USER's line replaced by `entry` (the first one;
 * later ones dropped) or removed (entry NULL); appends entry if USER has no
 * line. Returns 1 if USER had a line. */
static int edit(buf *out, const buf *old, const char *user, const char *entry)
{
    size_t pos = 0, ulen = strlen(user);
    const char *eol = "\n";
    int found = 0;

    if (old->len > 0) {
        const char *nl = memchr(old->p, '\n', old->len);
        if (nl != NULL && nl > old->p && nl[-1] == '\r')
            eol = "\r\n"; /* keep the file's line endings */
    }
    while (pos < old->len) {
        const char *line = old->p + pos, *nl = memchr(line, '\n', old->len - pos), *name;
        size_t n = nl != NULL ? (size_t)(nl - line) + 1 : old->len - pos, body = n, name_len;
        pos += n;
        while (body > 0 && (line[body - 1] == '\n' || line[body - 1] == '\r'))
            body--;
        if (sb_auth_passwd_line_user(line, body, &name, &name_len) && name_len == ulen &&
            memcmp(name, user, ulen) == 0) {
            if (!found && entry != NULL) {
                put(out, user, ulen);
                put(out, ":", 1);
                put(out, entry, strlen(entry));
                if (n > body)
                    put(out, line + body, n - body);
                else
                    put(out, eol, strlen(eol));
            }
            found = 1;
            continue;
        }
        put(out, line, n);
    }
    if (!found && entry != NULL) {
        if (out->len > 0 && out->p[out->len - 1] != '\n')
            put(out, eol, strlen(eol));
        put(out, user, ulen);
        put(out, ":", 1);
        put(out, entry, strlen(entry));
        put(out, eol, strlen(eol));
    }
    return found;
}

static int run_passwd(sbctl_ctx *ctx, const sbctl_cmd *cmd, const sbctl_args *a)
{
    const char *file = a->pos[0], *user = a->pos[1];
    const char *arg = a->npos > 2 ? a->pos[2] : NULL, *why;
    int create = sbctl_arg_flag(a, "create"), batch = sbctl_arg_flag(a, "batch");
    int del = sbctl_arg_flag(a, "delete");
    int iterations = (int)sbctl_arg_num(a, "iterations", SB_AUTH_DEFAULT_ITERATIONS);
    buf old = {0}, out = {0};
    char *password = NULL, *entry = NULL, msg[512];
    sb_auth *check = NULL;
    sb_error err;
    int rc = SBCTL_EXIT_ERROR, e, found;

    if (create && del)
        return sbctl_usage_error(cmd, "-c and -D cannot be used together");
    if (del && (batch || arg != NULL))
        return sbctl_usage_error(cmd, "-D takes no password");
    if (batch && arg == NULL)
        return sbctl_usage_error(cmd, "-b needs PASSWORD after FILE and USER");
    if (!batch && arg != NULL)
        return sbctl_usage_error(cmd, "a PASSWORD argument needs -b (without it the password "
                                      "is read from the terminal or stdin)");
    if (sb_auth_user_name_check(user, &why) != 0)
        return sbctl_usage_error(cmd, "invalid user name '%s': %s", user, why);

    if (!create) {
        e = read_file(file, &old);
        if (e == ENOENT) {
            sbctl_errorf("passwd: %s does not exist (-c creates it)", file);
            goto cleanup;
        }
        if (e != 0) {
            sbctl_errorf("passwd: cannot read %s: %s", file, strerror(e));
            goto cleanup;
        }
    }
    if (!del) {
        rc = get_password(&password, ctx, arg);
        if (rc != SBCTL_EXIT_OK)
            goto cleanup;
        rc = SBCTL_EXIT_ERROR;
        e = sb_auth_hash_password(&entry, password, strlen(password), iterations);
        if (e != 0) {
            sbctl_errorf("passwd: cannot hash the password: %s", sb_strerror(e));
            goto cleanup;
        }
    }
    found = edit(&out, &old, user, entry);
    if (out.failed) {
        sbctl_errorf("out of memory");
        goto cleanup;
    }
    if (del && !found) {
        sbctl_errorf("passwd: user '%s' is not in %s", user, file);
        goto cleanup;
    }
    if (sbctl_replace_file(file, out.len > 0 ? out.p : "", out.len, msg, sizeof(msg)) != 0) {
        sbctl_errorf("passwd: %s", msg);
        goto cleanup;
    }
    /* Lines of other users are kept as they are, even ones the broker would
     * refuse: say so now rather than when the broker loads the file. */
    sb_error_clear(&err);
    if (sb_auth_parse(&check, file, out.len > 0 ? out.p : "", out.len, NULL, NULL, 0, &err) ==
        SB_ECONFIG)
        fprintf(stderr, "sbctl: passwd: warning: the broker will refuse this file: %s\n", err.msg);
    sb_auth_free(check);
    rc = SBCTL_EXIT_OK;
    if (ctx->json)
        rc = sbctl_print_json(json_pack("{s:s,s:s,s:s}", "file", file, "user", user, "action",
                                        del     ? "deleted"
                                        : found ? "changed"
                                                : "added"));
cleanup:
    free_secret(password);
    sb_free(entry);
    if (old.p != NULL)
        wipe(old.p, old.len);
    if (out.p != NULL)
        wipe(out.p, out.len);
    sb_free(old.p);
    sb_free(out.p);
    return rc;
}

const sbctl_cmd sbctl_cmd_passwd = {
    "passwd",
    "FILE USER [PASSWORD]",
    "add, change or delete a user in a password file",
    "Edits a password file of the broker's MQTT authentication. Lines are\n"
    "USER:$7$ITERATIONS$SALT$HASH (PBKDF2-HMAC-SHA-512, 12-byte salt), the format\n"
    "of Mosquitto 2's mosquitto_passwd, so either tool edits the same files.\n"
    "Without -b the password is asked for twice, not echoed, when standard input\n"
    "is a terminal, else read as one line from standard input. Other users' lines\n"
    "and comments are kept as they are. The file is replaced atomically; a new\n"
    "file is readable by its owner only (POSIX mode 0600), an existing one keeps\n"
    "its owner and group. No broker is contacted: the broker reads the file when\n"
    "it loads its configuration.\n"
    "\n"
    "Examples:\n"
    "  sbctl passwd -c /etc/switchboard/passwd alice      (new file, prompts)\n"
    "  printf '%s\\n' \"$PW\" | sbctl passwd FILE bob         (password on stdin)\n"
    "  sbctl passwd -D FILE bob                             (delete bob)\n",
    passwd_opts,
    sizeof(passwd_opts) / sizeof(passwd_opts[0]),
    2,
    3,
    run_passwd};
