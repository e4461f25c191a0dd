/*
 * Password and ACL files (see auth.h for the formats and the rules).
 *
 * Rules are split into levels once, at load; decisions walk a rule's levels
 * and the topic or filter side by side, substituting %u/%c on the fly.
 * Three relations between a rule R and what a client names: a topic T
 * matches R; a filter F is covered by R (every topic F can match, R matches
 * too); F intersects R (some topic matches both), and their intersection is
 * itself a filter (built in a buffer, on the heap only for long ones). Each
 * honours MQTT's rule that a filter starting with a wildcard does not match
 * topics starting with '$'.
 *
 * Verified logins are cached (see sb_auth_check_password) as HMAC tags under
 * a key drawn at load, in a fixed set-associative table.
 */
#include "service/platform.h"
#include "service/auth.h"
#include "service/auth_int.h"
#include "service/alloc.h"
#include "service/base64.h"
#include "service/error.h"
#include "service/map.h"
#include "service/topic.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#define MAX_FILE_BYTES (64 * 1024 * 1024)
#define SALT_MIN 8
#define SALT_MAX 64

/* The cache of verified logins: CACHE_SETS sets of CACHE_WAYS tags each
 * (4096 logins, 128 KiB), a tag being HMAC-SHA-256 under a random key of
 * the user name and the password. */
#define CACHE_SETS 1024
#define CACHE_WAYS 4
#define CACHE_TAG_LEN 32

/* ---- the loaded state ---- */

enum { HASH_PBKDF2 = 7, HASH_SHA512 = 6 };

typedef struct pw_entry {
    int kind; /* HASH_PBKDF2 or HASH_SHA512 */
    int iterations;
    size_t salt_len;
    unsigned char salt[SALT_MAX];
    unsigned char hash[SB_AUTH_HASH_LEN];
    unsigned line; /* for the duplicate message */
} pw_entry;

enum { LVL_LIT, LVL_PLUS, LVL_HASH, LVL_USER, LVL_CLIENT };
enum { USES_USER = 1, USES_CLIENT = 2 };

typedef struct level {
    int kind;
    const char *s; /* LVL_LIT: points into the rule's text */
    size_t len;
} level;

typedef struct rule {
    int access; /* SB_ACL_READ | SB_ACL_WRITE; 0 = deny */
    int uses;   /* USES_USER | USES_CLIENT: placeholders in a pattern */
    char *text;
    level *levels;
    size_t nlevels;
} rule;

typedef struct rule_list {
    rule *v;
    size_t n, cap;
} rule_list;

/* Logins verified since the password file was loaded. A tag stands for one
 * (user, password) pair that matched; nothing in it can be reversed or
 * recomputed without the key, which never leaves memory. Failures are not
 * cached: a wrong guess costs the full hash every time. */
typedef struct cred_cache {
    CRYPTO_RWLOCK *lock;
    unsigned char key[32];
    unsigned char tags[CACHE_SETS][CACHE_WAYS][CACHE_TAG_LEN];
    unsigned char used[CACHE_SETS];   /* ways filled, per set */
    unsigned char victim[CACHE_SETS]; /* the next way to replace, per set */
} cred_cache;

struct sb_auth {
    int has_pw, has_acl;
    cred_cache *cache; /* with a password file; NULL if it could not be set up */
    sb_map users;      /* name -> pw_entry */
    pw_entry dummy;    /* what an unknown user is checked against */
    rule_list anon;    /* `topic` lines before any `user` line */
    rule_list pattern; /* `pattern` lines */
    sb_map acl_users;  /* name -> rule_list */
};

static void rule_list_free(rule_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        sb_free(l->v[i].text);
        sb_free(l->v[i].levels);
    }
    sb_free(l->v);
    l->v = NULL;
    l->n = l->cap = 0;
}

static void free_pw(const char *key, void *value, void *ctx)
{
    (void)key;
    (void)ctx;
    sb_free(value);
}

static void free_rules(const char *key, void *value, void *ctx)
{
    (void)key;
    (void)ctx;
    rule_list_free(value);
    sb_free(value);
}

void sb_auth_free(sb_auth *a)
{
    if (a == NULL)
        return;
    sb_map_each(&a->users, free_pw, NULL);
    sb_map_clear(&a->users);
    sb_map_each(&a->acl_users, free_rules, NULL);
    sb_map_clear(&a->acl_users);
    rule_list_free(&a->anon);
    rule_list_free(&a->pattern);
    OPENSSL_cleanse(&a->dummy, sizeof(a->dummy));
    if (a->cache != NULL) {
        CRYPTO_THREAD_lock_free(a->cache->lock);
        OPENSSL_cleanse(a->cache, sizeof(*a->cache));
        sb_free(a->cache);
    }
    sb_free(a);
}

int sb_auth_has_passwords(const sb_auth *a)
{
    return a != NULL && a->has_pw;
}

int sb_auth_has_acl(const sb_auth *a)
{
    return a != NULL && a->has_acl;
}

/* ---- text helpers ---- */

static int is_blank(char c)
{
    return c == ' ' || c == '\t';
}

static void trim(const char **s, size_t *len)
{
    while (*len > 0 && is_blank(**s)) {
        (*s)++;
        (*len)--;
    }
    while (*len > 0 && (is_blank((*s)[*len - 1]) || (*s)[*len - 1] == '\r'))
        (*len)--;
}

/* The next line of text[*pos..len) without its ending; 0 at the end. */
static int next_line(const char *text, size_t len, size_t *pos, const char **line, size_t *n)
{
    const char *nl;
    if (*pos >= len)
        return 0;
    *line = text + *pos;
    nl = memchr(*line, '\n', len - *pos);
    *n = nl != NULL ? (size_t)(nl - *line) : len - *pos;
    *pos += *n + (nl != NULL ? 1 : 0);
    return 1;
}

/* Blank or a comment (first non-blank character '#'). */
static int skip_line(const char *line, size_t len)
{
    trim(&line, &len);
    return len == 0 || line[0] == '#';
}

static int line_error(sb_error *err, const char *file, unsigned lineno, const char *fmt, ...)
    SB_PRINTF(4, 5);

static int line_error(sb_error *err, const char *file, unsigned lineno, const char *fmt, ...)
{
    char what[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    return sb_error_set(err, SB_ECONFIG, 0, "%s:%u: %s", file, lineno, what);
}

/* ---- password file ---- */

int sb_auth_passwd_line_user(const char *line, size_t len, const char **name, size_t *name_len)
{
    const char *colon;
    if (skip_line(line, len))
        return 0;
    colon = memchr(line, ':', len);
    if (colon == NULL)
        return 0;
    *name = line;
    *name_len = (size_t)(colon - line);
    trim(name, name_len);
    return 1;
}

/* Parses a decimal iteration count in s[0..len): 1..INT_MAX. */
static int parse_iterations(const char *s, size_t len, int *out)
{
    long long v = 0;
    if (len == 0 || len > 10)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    if (v < 1 || v > INT_MAX)
        return -1;
    *out = (int)v;
    return 0;
}

/* Decodes base64 s[0..len) into out, which must come to min..max bytes
 * (*n is the decoded length). Returns 0, SB_EINVAL (not base64), SB_ETOOBIG
 * (wrong size) or SB_ENOMEM. */
static int decode_field(const char *s, size_t len, unsigned char *out, size_t min, size_t max,
                        size_t *n)
{
    unsigned char *buf;
    int rc = sb_base64_decode(s, len, &buf, n);
    if (rc != 0)
        return rc == SB_ENOMEM ? SB_ENOMEM : SB_EINVAL;
    if (len == 0)
        rc = SB_EINVAL;
    else if (*n < min || *n > max)
        rc = SB_ETOOBIG;
    else
        memcpy(out, buf, *n);
    OPENSSL_cleanse(buf, *n);
    sb_free(buf);
    return rc;
}

/* Parses "$7$ITER$SALT$HASH" or "$6$SALT$HASH" (s[0..len), trimmed) into e.
 * Returns 0, SB_ENOMEM, or SB_ECONFIG with err set. */
static int parse_hash(pw_entry *e, const char *s, size_t len, const char *file, unsigned lineno,
                      const char *user, sb_error *err)
{
    const char *end = s + len, *p, *d;
    size_t n;
    int rc;

    if (len >= 3 && memcmp(s, "$7$", 3) == 0) {
        e->kind = HASH_PBKDF2;
        p = s + 3;
        d = memchr(p, '$', (size_t)(end - p));
        if (d == NULL || parse_iterations(p, (size_t)(d - p), &e->iterations) != 0)
            return line_error(err, file, lineno,
                              "user '%s': bad iteration count (expected $7$N$SALT$HASH, N >= 1)",
                              user);
        p = d + 1;
    } else if (len >= 3 && memcmp(s, "$6$", 3) == 0) {
        e->kind = HASH_SHA512;
        e->iterations = 1;
        p = s + 3;
    } else {
        return line_error(err, file, lineno,
                          "user '%s': not a $7$ (PBKDF2-SHA512) or $6$ (SHA512) password hash; "
                          "write it with sbctl passwd",
                          user);
    }
    d = memchr(p, '$', (size_t)(end - p));
    if (d == NULL)
        return line_error(err, file, lineno, "user '%s': missing '$' between salt and hash", user);
    rc = decode_field(p, (size_t)(d - p), e->salt, SALT_MIN, SALT_MAX, &n);
    if (rc == SB_EINVAL)
        return line_error(err, file, lineno, "user '%s': salt is not valid base64", user);
    if (rc == SB_ETOOBIG)
        return line_error(err, file, lineno, "user '%s': salt must be %d to %d bytes, got %zu",
                          user, SALT_MIN, SALT_MAX, n);
    if (rc != 0)
        return rc;
    e->salt_len = n;
    p = d + 1;
    if (memchr(p, '$', (size_t)(end - p)) != NULL)
        return line_error(err, file, lineno, "user '%s': unexpected '$' after the hash", user);
    rc = decode_field(p, (size_t)(end - p), e->hash, SB_AUTH_HASH_LEN, SB_AUTH_HASH_LEN, &n);
    if (rc == SB_EINVAL)
        return line_error(err, file, lineno, "user '%s': hash is not valid base64", user);
    if (rc == SB_ETOOBIG)
        return line_error(err, file, lineno, "user '%s': hash must be %d bytes, got %zu", user,
                          SB_AUTH_HASH_LEN, n);
    return rc;
}

static int parse_pw_line(sb_auth *a, const char *file, unsigned lineno, const char *line,
                         size_t len, sb_error *err)
{
    const char *name, *hash, *colon;
    size_t name_len, hash_len;
    pw_entry *e = NULL, *first;
    char *user = NULL;
    int rc;

    colon = memchr(line, ':', len);
    if (colon == NULL)
        return line_error(err, file, lineno, "expected USER:HASH (no ':' on the line)");
    sb_auth_passwd_line_user(line, len, &name, &name_len);
    hash = colon + 1;
    hash_len = len - (size_t)(hash - line);
    trim(&hash, &hash_len);
    if (name_len == 0)
        return line_error(err, file, lineno, "empty user name");
    if (!sb_utf8_valid(name, name_len))
        return line_error(err, file, lineno, "user name is not valid UTF-8");
    user = sb_strndup(name, name_len);
    e = sb_calloc(1, sizeof(*e));
    if (user == NULL || e == NULL) {
        rc = SB_ENOMEM;
        goto cleanup;
    }
    e->line = lineno;
    first = sb_map_get(&a->users, user);
    if (first != NULL) {
        rc = line_error(err, file, lineno, "user '%s' already defined at line %u", user,
                        first->line);
        goto cleanup;
    }
    rc = parse_hash(e, hash, hash_len, file, lineno, user, err);
    if (rc != 0)
        goto cleanup;
    rc = sb_map_put(&a->users, user, e, NULL);
    if (rc == 0)
        e = NULL; /* now owned by a->users */
cleanup:
    if (rc == SB_ENOMEM)
        sb_error_set(err, SB_ENOMEM, 0, "out of memory loading %s", file);
    sb_free(user);
    sb_free(e);
    return rc;
}

typedef struct mode_ctx {
    int *iters;
    size_t n, sha512;
} mode_ctx;

static void collect_iterations(const char *key, void *value, void *ctx)
{
    const pw_entry *e = value;
    mode_ctx *m = ctx;
    (void)key;
    if (e->kind == HASH_PBKDF2)
        m->iters[m->n++] = e->iterations;
    else
        m->sha512++;
}

static int cmp_int(const void *x, const void *y)
{
    int a = *(const int *)x, b = *(const int *)y;
    return (a > b) - (a < b);
}

/* The dummy entry an unknown user is checked against costs what most users'
 * entries cost (the most common kind and iteration count; ties go to the
 * slower), so a failed login does not tell whether the user exists. */
static int make_dummy(sb_auth *a)
{
    mode_ctx m = {NULL, 0, 0};
    size_t best = 0;
    int best_iter = SB_AUTH_DEFAULT_ITERATIONS;

    memset(&a->dummy, 0, sizeof(a->dummy));
    a->dummy.kind = HASH_PBKDF2;
    a->dummy.salt_len = SB_AUTH_SALT_LEN;
    if (a->users.count > 0) {
        m.iters = sb_malloc(a->users.count * sizeof(int));
        if (m.iters == NULL)
            return SB_ENOMEM;
        sb_map_each(&a->users, collect_iterations, &m);
        qsort(m.iters, m.n, sizeof(int), cmp_int);
        for (size_t i = 0; i < m.n;) {
            size_t j = i;
            while (j < m.n && m.iters[j] == m.iters[i])
                j++;
            if (j - i >= best) {
                best = j - i;
                best_iter = m.iters[i];
            }
            i = j;
        }
        sb_free(m.iters);
        if (m.sha512 > best)
            a->dummy.kind = HASH_SHA512;
    }
    a->dummy.iterations = best_iter;
    /* The salt and hash need no secrecy: no password hashes to all zeros. */
    return 0;
}

static int parse_passwords(sb_auth *a, const char *file, const char *text, size_t len,
                           sb_error *err)
{
    size_t pos = 0, n;
    const char *line;
    unsigned lineno = 0;
    int rc;

    while (next_line(text, len, &pos, &line, &n)) {
        lineno++;
        if (memchr(line, '\0', n) != NULL)
            return line_error(err, file, lineno, "contains a NUL byte");
        if (skip_line(line, n))
            continue;
        rc = parse_pw_line(a, file, lineno, line, n, err);
        if (rc != 0)
            return rc;
    }
    a->has_pw = 1;
    return make_dummy(a);
}

/* ---- the cache of verified logins ---- */

/* Sets up a->cache; without it (out of memory, no randomness, no lock)
 * every login is checked in full, which is slower but as safe. */
static void cache_init(sb_auth *a)
{
    cred_cache *c = sb_calloc(1, sizeof(*c));
    if (c == NULL)
        return;
    if (RAND_bytes(c->key, (int)sizeof(c->key)) != 1 ||
        (c->lock = CRYPTO_THREAD_lock_new()) == NULL) {
        OPENSSL_cleanse(c->key, sizeof(c->key));
        sb_free(c);
        return;
    }
    a->cache = c;
}

/* The tag of (user, password): HMAC over the user name, a NUL (a user name
 * holds none, so no two pairs give the same input) and the password. */
static int cache_tag(const cred_cache *c, const char *user, const char *password, size_t len,
                     unsigned char tag[CACHE_TAG_LEN])
{
    size_t ulen = strlen(user);
    unsigned char *in = sb_malloc(ulen + 1 + len);
    unsigned int n = 0;
    int ok;
    if (in == NULL)
        return -1;
    memcpy(in, user, ulen + 1);
    if (len > 0)
        memcpy(in + ulen + 1, password, len);
    ok = HMAC(EVP_sha256(), c->key, (int)sizeof(c->key), in, ulen + 1 + len, tag, &n) != NULL &&
         n == CACHE_TAG_LEN;
    OPENSSL_cleanse(in, ulen + 1 + len);
    sb_free(in);
    return ok ? 0 : -1;
}

static size_t cache_set(const unsigned char tag[CACHE_TAG_LEN])
{
    return ((size_t)tag[0] | (size_t)tag[1] << 8) % CACHE_SETS;
}

static int cache_has(cred_cache *c, const unsigned char tag[CACHE_TAG_LEN])
{
    size_t set = cache_set(tag);
    int found = 0;
    if (CRYPTO_THREAD_read_lock(c->lock) != 1)
        return 0;
    for (unsigned w = 0; w < c->used[set] && !found; w++)
        found = CRYPTO_memcmp(c->tags[set][w], tag, CACHE_TAG_LEN) == 0;
    CRYPTO_THREAD_unlock(c->lock);
    return found;
}

/* Adds tag, replacing the set's ways in turn once it is full: the cache is
 * bounded whatever the number of users and passwords. */
static void cache_put(cred_cache *c, const unsigned char tag[CACHE_TAG_LEN])
{
    size_t set = cache_set(tag);
    unsigned way;
    if (CRYPTO_THREAD_write_lock(c->lock) != 1)
        return;
    for (way = 0; way < c->used[set]; way++)
        if (CRYPTO_memcmp(c->tags[set][way], tag, CACHE_TAG_LEN) == 0)
            break; /* two threads verified the same login at once */
    if (way == c->used[set]) {
        if (c->used[set] < CACHE_WAYS) {
            way = c->used[set]++;
        } else {
            way = c->victim[set];
            c->victim[set] = (unsigned char)((way + 1) % CACHE_WAYS);
        }
        memcpy(c->tags[set][way], tag, CACHE_TAG_LEN);
    }
    CRYPTO_THREAD_unlock(c->lock);
}

/* ---- hashing ---- */

static atomic_ulong hash_count; /* for tests: sb_auth__hash_count */
static atomic_ulong logins_hashed, logins_cached; /* sb_auth_login_counts */

int sb_auth_login_counts(const sb_auth *a, unsigned long *hashed, unsigned long *cached)
{
    if (!sb_auth_has_passwords(a))
        return 0;
    *hashed = atomic_load(&logins_hashed);
    *cached = atomic_load(&logins_cached);
    return 1;
}

unsigned long sb_auth__hash_count(void)
{
    return atomic_load(&hash_count);
}

/* Hashes password with e's kind, salt and iterations into out. */
static int compute(const pw_entry *e, const char *password, size_t len,
                   unsigned char out[SB_AUTH_HASH_LEN])
{
    atomic_fetch_add(&hash_count, 1);
    if (len > INT_MAX)
        return -1;
    if (e->kind == HASH_PBKDF2)
        return PKCS5_PBKDF2_HMAC(password, (int)len, e->salt, (int)e->salt_len, e->iterations,
                                 EVP_sha512(), SB_AUTH_HASH_LEN, out) == 1
                   ? 0
                   : -1;
    {
        /* Mosquitto 1.x: SHA-512(password || salt). */
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        unsigned int n = 0;
        int ok = ctx != NULL && EVP_DigestInit_ex(ctx, EVP_sha512(), NULL) == 1 &&
                 EVP_DigestUpdate(ctx, password, len) == 1 &&
                 EVP_DigestUpdate(ctx, e->salt, e->salt_len) == 1 &&
                 EVP_DigestFinal_ex(ctx, out, &n) == 1 && n == SB_AUTH_HASH_LEN;
        EVP_MD_CTX_free(ctx);
        return ok ? 0 : -1;
    }
}

int sb_auth__check_cost(const sb_auth *a, const char *user, int *pbkdf2, int *iterations)
{
    const pw_entry *e;
    if (a == NULL || !a->has_pw)
        return SB_EINVAL;
    e = user != NULL ? sb_map_get(&a->users, user) : NULL;
    if (e == NULL)
        e = &a->dummy;
    *pbkdf2 = e->kind == HASH_PBKDF2;
    *iterations = e->kind == HASH_PBKDF2 ? e->iterations : 0;
    return 0;
}

int sb_auth_check_password(const sb_auth *a, const char *user, const char *password,
                           size_t password_len)
{
    const pw_entry *e = NULL;
    unsigned char got[SB_AUTH_HASH_LEN], tag[CACHE_TAG_LEN];
    int ok, has_tag = 0;

    if (a == NULL || !a->has_pw || password_len > SB_AUTH_PASSWORD_MAX ||
        (password == NULL && password_len > 0))
        return SB_EAUTH;
    if (password == NULL)
        password = "";
    if (user != NULL)
        e = sb_map_get(&a->users, user);
    if (e != NULL && a->cache != NULL) {
        has_tag = cache_tag(a->cache, user, password, password_len, tag) == 0;
        if (has_tag && cache_has(a->cache, tag)) {
            OPENSSL_cleanse(tag, sizeof(tag));
            atomic_fetch_add(&logins_cached, 1);
            return 0;
        }
    }
    atomic_fetch_add(&logins_hashed, 1);
    ok = compute(e != NULL ? e : &a->dummy, password, password_len, got) == 0;
    ok = ok && CRYPTO_memcmp(got, e != NULL ? e->hash : a->dummy.hash, sizeof(got)) == 0;
    OPENSSL_cleanse(got, sizeof(got));
    ok = ok && e != NULL;
    if (ok && has_tag)
        cache_put(a->cache, tag);
    OPENSSL_cleanse(tag, sizeof(tag));
    return ok ? 0 : SB_EAUTH;
}

int sb_auth_hash_password(char **out, const char *password, size_t len, int iterations)
{
    pw_entry e;
    char *salt = NULL, *hash = NULL;
    int rc = 0;

    *out = NULL;
    if (iterations < 1 || len > INT_MAX || (password == NULL && len > 0))
        return SB_EINVAL;
    memset(&e, 0, sizeof(e));
    e.kind = HASH_PBKDF2;
    e.iterations = iterations;
    e.salt_len = SB_AUTH_SALT_LEN;
    if (RAND_bytes(e.salt, SB_AUTH_SALT_LEN) != 1)
        return SB_EUNKNOWN;
    if (compute(&e, password != NULL ? password : "", len, e.hash) != 0) {
        rc = SB_EUNKNOWN;
        goto cleanup;
    }
    salt = sb_base64_encode(e.salt, e.salt_len);
    hash = sb_base64_encode(e.hash, SB_AUTH_HASH_LEN);
    if (salt == NULL || hash == NULL) {
        rc = SB_ENOMEM;
        goto cleanup;
    }
    {
        size_t n = strlen(salt) + strlen(hash) + 32;
        *out = sb_malloc(n);
        if (*out == NULL) {
            rc = SB_ENOMEM;
            goto cleanup;
        }
        snprintf(*out, n, "$7$%d$%s$%s", iterations, salt, hash);
    }
cleanup:
    OPENSSL_cleanse(&e, sizeof(e));
    sb_free(salt);
    sb_free(hash);
    return rc;
}

int sb_auth_user_name_check(const char *user, const char **why)
{
    const char *dummy;
    size_t len = user != NULL ? strlen(user) : 0;
    if (why == NULL)
        why = &dummy;
    if (len == 0) {
        *why = "must not be empty";
        return SB_EINVAL;
    }
    if (len > 65535) {
        *why = "is longer than 65535 bytes";
        return SB_EINVAL;
    }
    if (!sb_utf8_valid(user, len)) {
        *why = "is not valid UTF-8";
        return SB_EINVAL;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)user[i];
        if (c == ':') {
            *why = "must not contain ':'";
            return SB_EINVAL;
        }
        if (c < 0x20 || c == 0x7f) {
            *why = "must not contain control characters";
            return SB_EINVAL;
        }
    }
    if (is_blank(user[0]) || is_blank(user[len - 1])) {
        *why = "must not start or end with a blank";
        return SB_EINVAL;
    }
    if (user[0] == '#') {
        *why = "must not start with '#' (the line would be a comment)";
        return SB_EINVAL;
    }
    return 0;
}

/* ---- ACL file ---- */

static int add_rule(rule_list *l, int access, const char *filter, size_t len, int is_pattern,
                    const char *file, unsigned lineno, sb_error *err)
{
    const char *why;
    rule r;
    size_t nlevels = 1;

    if (sb_filter_validate(filter, len, &why) != 0)
        return line_error(err, file, lineno, "invalid filter '%.*s': %s",
                          (int)(len > 100 ? 100 : len), filter, why);
    memset(&r, 0, sizeof(r));
    r.access = access;
    for (size_t i = 0; i < len; i++)
        nlevels += filter[i] == '/';
    r.text = sb_strndup(filter, len);
    r.levels = sb_calloc(nlevels, sizeof(level));
    if (r.text == NULL || r.levels == NULL)
        goto nomem;
    for (const char *p = r.text;;) {
        const char *slash = strchr(p, '/');
        size_t n = slash != NULL ? (size_t)(slash - p) : strlen(p);
        level *lv = &r.levels[r.nlevels++];
        lv->s = p;
        lv->len = n;
        if (n == 1 && p[0] == '+')
            lv->kind = LVL_PLUS;
        else if (n == 1 && p[0] == '#')
            lv->kind = LVL_HASH;
        else if (is_pattern && n == 2 && p[0] == '%' && (p[1] == 'u' || p[1] == 'c')) {
            lv->kind = p[1] == 'u' ? LVL_USER : LVL_CLIENT;
            r.uses |= p[1] == 'u' ? USES_USER : USES_CLIENT;
        } else {
            lv->kind = LVL_LIT;
            /* A topic line takes '%' literally, but a whole "%u" level there
             * is surely meant as a pattern; a pattern substitutes only whole
             * levels (Mosquitto also substitutes inside one: refuse rather
             * than read such a file differently). */
            if (!is_pattern && n == 2 && p[0] == '%' && (p[1] == 'u' || p[1] == 'c')) {
                char c = p[1];
                sb_free(r.text);
                sb_free(r.levels);
                return line_error(err, file, lineno,
                                  "'%%%c' in a topic line is not substituted (use a pattern line)",
                                  c);
            }
            for (size_t i = 0; is_pattern && i + 1 < n; i++) {
                if (p[i] == '%' && (p[i + 1] == 'u' || p[i + 1] == 'c')) {
                    char c = p[i + 1];
                    sb_free(r.text);
                    sb_free(r.levels);
                    return line_error(err, file, lineno,
                                      "'%%%c' must be a whole topic level (as in a/%%%c/#)", c, c);
                }
            }
        }
        if (slash == NULL)
            break;
        p = slash + 1;
    }
    if (l->n == l->cap) {
        size_t cap = l->cap == 0 ? 8 : l->cap * 2;
        rule *v = sb_realloc(l->v, cap * sizeof(rule));
        if (v == NULL)
            goto nomem;
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = r;
    return 0;
nomem:
    sb_free(r.text);
    sb_free(r.levels);
    return sb_error_set(err, SB_ENOMEM, 0, "out of memory loading %s", file);
}

/* The rule list of user `name` (created on first use). */
static int user_rules(sb_auth *a, const char *name, size_t len, rule_list **out, const char *file,
                      sb_error *err)
{
    char *key = sb_strndup(name, len);
    rule_list *l;
    int rc = 0;

    if (key == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory loading %s", file);
    l = sb_map_get(&a->acl_users, key);
    if (l == NULL) {
        l = sb_calloc(1, sizeof(*l));
        if (l == NULL || sb_map_put(&a->acl_users, key, l, NULL) != 0) {
            sb_free(l);
            l = NULL;
            rc = sb_error_set(err, SB_ENOMEM, 0, "out of memory loading %s", file);
        }
    }
    sb_free(key);
    *out = l;
    return rc;
}

static int word_is(const char *s, size_t len, const char *word)
{
    return strlen(word) == len && memcmp(s, word, len) == 0;
}

static int parse_acl(sb_auth *a, const char *file, const char *text, size_t len, sb_error *err)
{
    rule_list *current = &a->anon;
    size_t pos = 0, n;
    const char *line;
    unsigned lineno = 0;
    int rc;

    a->has_acl = 1;
    while (next_line(text, len, &pos, &line, &n)) {
        const char *kw, *rest, *word;
        size_t kw_len, rest_len, word_len;
        int access = SB_ACL_READ | SB_ACL_WRITE, is_pattern;

        lineno++;
        if (memchr(line, '\0', n) != NULL)
            return line_error(err, file, lineno, "contains a NUL byte");
        trim(&line, &n);
        if (n == 0 || line[0] == '#')
            continue;
        kw = line;
        for (kw_len = 0; kw_len < n && !is_blank(kw[kw_len]);)
            kw_len++;
        rest = line + kw_len;
        rest_len = n - kw_len;
        trim(&rest, &rest_len);

        if (word_is(kw, kw_len, "user")) {
            if (rest_len == 0)
                return line_error(err, file, lineno, "user: missing user name");
            if (!sb_utf8_valid(rest, rest_len))
                return line_error(err, file, lineno, "user: name is not valid UTF-8");
            rc = user_rules(a, rest, rest_len, &current, file, err);
            if (rc != 0)
                return rc;
            continue;
        }
        is_pattern = word_is(kw, kw_len, "pattern");
        if (!is_pattern && !word_is(kw, kw_len, "topic"))
            return line_error(err, file, lineno,
                              "unknown keyword '%.*s' (expected user, topic or pattern)",
                              (int)(kw_len > 40 ? 40 : kw_len), kw);
        /* An optional access word, then the filter (the rest of the line). */
        word = rest;
        for (word_len = 0; word_len < rest_len && !is_blank(word[word_len]);)
            word_len++;
        if (word_is(word, word_len, "read"))
            access = SB_ACL_READ;
        else if (word_is(word, word_len, "write"))
            access = SB_ACL_WRITE;
        else if (word_is(word, word_len, "readwrite"))
            access = SB_ACL_READ | SB_ACL_WRITE;
        else if (word_is(word, word_len, "deny"))
            access = 0;
        else
            word_len = 0;
        if (word_len > 0) {
            rest += word_len;
            rest_len -= word_len;
            trim(&rest, &rest_len);
        }
        if (rest_len == 0)
            return line_error(err, file, lineno, "%s: missing topic filter",
                              is_pattern ? "pattern" : "topic");
        rc = add_rule(is_pattern ? &a->pattern : current, access, rest, rest_len, is_pattern, file,
                      lineno, err);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* ---- loading ---- */

static int read_file(const char *path, char **out, size_t *out_len, sb_error *err)
{
    FILE *f = sb_platform_fopen(path, "rb");
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int rc = 0;

    *out = NULL;
    *out_len = 0;
    if (f == NULL) {
        int e = errno;
        return sb_error_set(err, e == ENOENT ? SB_ENOTFOUND : sb_error_from_errno(e), e,
                            "cannot open %s: %s", path, strerror(e));
    }
    for (;;) {
        size_t n;
        if (len == cap) {
            char *bigger;
            if (cap >= MAX_FILE_BYTES) {
                rc = sb_error_set(err, SB_ECONFIG, 0, "%s: file too large (more than %d MiB)", path,
                                  MAX_FILE_BYTES / (1024 * 1024));
                goto cleanup;
            }
            cap = cap == 0 ? 4096 : cap * 2;
            bigger = sb_realloc(buf, cap);
            if (bigger == NULL) {
                rc = sb_error_set(err, SB_ENOMEM, 0, "out of memory reading %s", path);
                goto cleanup;
            }
            buf = bigger;
        }
        n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0) {
            if (ferror(f)) {
                int e = errno != 0 ? errno : EIO;
                rc = sb_error_set(err, sb_error_from_errno(e), e, "cannot read %s: %s", path,
                                  strerror(e));
                goto cleanup;
            }
            break;
        }
    }
    *out = buf;
    *out_len = len;
    buf = NULL; /* now owned by the caller */
cleanup:
    fclose(f);
    sb_free(buf);
    return rc;
}

int sb_auth_parse(sb_auth **out, const char *pw_name, const char *pw_text, size_t pw_len,
                  const char *acl_name, const char *acl_text, size_t acl_len, sb_error *err)
{
    sb_auth *a;
    int rc = 0;

    *out = NULL;
    a = sb_calloc(1, sizeof(*a));
    if (a == NULL)
        return sb_error_set(err, SB_ENOMEM, 0, "out of memory loading the auth files");
    if (pw_text != NULL)
        rc = parse_passwords(a, pw_name != NULL ? pw_name : "password file", pw_text, pw_len, err);
    if (rc == SB_ENOMEM)
        sb_error_set(err, SB_ENOMEM, 0, "out of memory loading %s",
                     pw_name != NULL ? pw_name : "the password file");
    if (rc == 0 && pw_text != NULL)
        cache_init(a);
    if (rc == 0 && acl_text != NULL)
        rc = parse_acl(a, acl_name != NULL ? acl_name : "ACL file", acl_text, acl_len, err);
    if (rc != 0) {
        sb_auth_free(a);
        return rc;
    }
    *out = a;
    return 0;
}

int sb_auth_load(sb_auth **out, const char *password_file, const char *acl_file, sb_error *err)
{
    char *pw = NULL, *acl = NULL;
    size_t pw_len = 0, acl_len = 0;
    int rc = 0;

    *out = NULL;
    if (password_file != NULL)
        rc = read_file(password_file, &pw, &pw_len, err);
    if (rc == 0 && acl_file != NULL)
        rc = read_file(acl_file, &acl, &acl_len, err);
    /* An empty file reads as no buffer; it is still a file. */
    if (rc == 0)
        rc = sb_auth_parse(out, password_file,
                           password_file != NULL ? (pw != NULL ? pw : "") : NULL, pw_len, acl_file,
                           acl_file != NULL ? (acl != NULL ? acl : "") : NULL, acl_len, err);
    if (pw != NULL)
        OPENSSL_cleanse(pw, pw_len);
    sb_free(pw);
    sb_free(acl);
    return rc;
}

/* ---- decisions ---- */

/* Who asks: the placeholder values, and whether each is usable. */
typedef struct ident {
    const char *user, *client;
    size_t user_len, client_len;
    int user_ok, client_ok;
} ident;

static int usable(const char *v, size_t len)
{
    return v != NULL && len > 0 && v[0] != '$' && strpbrk(v, "/+#") == NULL;
}

/* A level as it applies to this client: literal s[0..len), + or #. */
typedef struct view {
    int kind;
    const char *s;
    size_t len;
} view;

static void resolve(const level *l, const ident *id, view *out)
{
    out->kind = l->kind;
    out->s = l->s;
    out->len = l->len;
    if (l->kind == LVL_USER || l->kind == LVL_CLIENT) {
        int ok = l->kind == LVL_USER ? id->user_ok : id->client_ok;
        /* Only deny rules get here with an unusable value (allow rules
         * are skipped): as '+' they deny for every value. */
        out->kind = ok ? LVL_LIT : LVL_PLUS;
        out->s = l->kind == LVL_USER ? id->user : id->client;
        out->len = l->kind == LVL_USER ? id->user_len : id->client_len;
    }
}

/* Walks the levels of a topic or filter. */
typedef struct walker {
    const char *p;
    int done;
} walker;

static int walk(walker *w, view *out)
{
    const char *slash;
    if (w->done)
        return 0;
    slash = strchr(w->p, '/');
    out->s = w->p;
    out->len = slash != NULL ? (size_t)(slash - w->p) : strlen(w->p);
    out->kind = out->len == 1 && out->s[0] == '+'   ? LVL_PLUS
                : out->len == 1 && out->s[0] == '#' ? LVL_HASH
                                                    : LVL_LIT;
    if (slash != NULL)
        w->p = slash + 1;
    else
        w->done = 1;
    return 1;
}

static int is_dollar(const view *v)
{
    return v->kind == LVL_LIT && v->len > 0 && v->s[0] == '$';
}

/* 1 if every topic `subject` can match is matched by rule r (for a topic:
 * the topic matches r). */
static int covers(const rule *r, const ident *id, const char *subject)
{
    walker w = {subject, 0};
    view f, rl;
    for (size_t i = 0;; i++) {
        int more = walk(&w, &f);
        if (i == r->nlevels)
            return !more;
        resolve(&r->levels[i], id, &rl);
        if (rl.kind == LVL_HASH) /* the rest, and the parent level too */
            return !(i == 0 && more && is_dollar(&f));
        if (!more || f.kind == LVL_HASH)
            return 0;
        if (rl.kind == LVL_PLUS) {
            if (i == 0 && is_dollar(&f))
                return 0;
            continue;
        }
        if (f.kind != LVL_LIT || f.len != rl.len || memcmp(f.s, rl.s, f.len) != 0)
            return 0;
    }
}

/* 1 if some topic matches both rule r and filter. */
static int intersects(const rule *r, const ident *id, const char *filter)
{
    walker w = {filter, 0};
    view f, rl = {0}; /* gcc 12 -O2 sees a path where rl is read unset; there is none */
    for (size_t i = 0;; i++) {
        int fmore = walk(&w, &f), rmore = i < r->nlevels;
        if (rmore)
            resolve(&r->levels[i], id, &rl);
        if (!rmore && !fmore)
            return 1;
        if (rmore && rl.kind == LVL_HASH)
            return !(i == 0 && fmore && is_dollar(&f));
        if (fmore && f.kind == LVL_HASH)
            return !(i == 0 && rmore && is_dollar(&rl));
        if (!rmore || !fmore)
            return 0;
        if (rl.kind == LVL_PLUS || f.kind == LVL_PLUS) {
            if (i == 0 && (is_dollar(&f) || is_dollar(&rl)))
                return 0;
            continue;
        }
        if (f.len != rl.len || memcmp(f.s, rl.s, f.len) != 0)
            return 0;
    }
}

/* Fills id for user and client_id. */
static void ident_init(ident *id, const char *user, const char *client_id)
{
    id->user = user;
    id->user_len = user != NULL ? strlen(user) : 0;
    id->user_ok = usable(user, id->user_len);
    id->client = client_id;
    id->client_len = client_id != NULL ? strlen(client_id) : 0;
    id->client_ok = usable(client_id, id->client_len);
}

/* An allow rule r that grants access here (its placeholders usable). */
static int grants(const rule *r, const ident *id, int access)
{
    return (r->access & access) != 0 && !((r->uses & USES_USER) && !id->user_ok) &&
           !((r->uses & USES_CLIENT) && !id->client_ok);
}

static int decide(const sb_auth *a, const char *user, const char *client_id, const char *subject,
                  int is_filter, int access)
{
    const rule_list *lists[2];
    size_t len;
    ident id;
    int need = access;

    if (a == NULL || !a->has_acl)
        return 1;
    if (subject == NULL || access <= 0 || (access & ~(SB_ACL_READ | SB_ACL_WRITE)) != 0)
        return 0;
    len = strlen(subject);
    if (is_filter ? sb_filter_validate(subject, len, NULL) != 0
                  : sb_topic_validate(subject, len, NULL) != 0)
        return 0;
    ident_init(&id, user, client_id);
    lists[0] = user == NULL ? &a->anon : sb_map_get(&a->acl_users, user);
    lists[1] = &a->pattern;

    /* Deny rules first: they win whatever the order of the lines. */
    for (int k = 0; k < 2; k++) {
        for (size_t i = 0; lists[k] != NULL && i < lists[k]->n; i++) {
            const rule *r = &lists[k]->v[i];
            if (r->access == 0 &&
                (is_filter ? intersects(r, &id, subject) : covers(r, &id, subject)))
                return 0;
        }
    }
    for (int k = 0; k < 2; k++) {
        for (size_t i = 0; lists[k] != NULL && i < lists[k]->n; i++) {
            const rule *r = &lists[k]->v[i];
            if (!grants(r, &id, need))
                continue;
            if (covers(r, &id, subject)) {
                need &= ~r->access;
                if (need == 0)
                    return 1;
            }
        }
    }
    return 0;
}

/* Appends s[0..n) to out at *pos, with a '/' before it unless first. */
static void put_level(char *out, size_t *pos, const char *s, size_t n, int first)
{
    if (!first)
        out[(*pos)++] = '/';
    memcpy(out + *pos, s, n);
    *pos += n;
}

/* put_level of a resolved rule level (a placeholder's value, '+' or '#'). */
static void put_view(char *out, size_t *pos, const view *v, int first)
{
    if (v->kind == LVL_LIT)
        put_level(out, pos, v->s, v->len, first);
    else
        put_level(out, pos, v->kind == LVL_PLUS ? "+" : "#", 1, first);
}

/* Writes into out the filter that matches exactly the topics both rule r
 * and filter match (they intersect: some topic does). Levels are taken from
 * the narrower side; a '#' on one side takes the rest of the other, and
 * stops there if the other side has ended (rule `a/#` matches `a`). */
static void intersection(const rule *r, const ident *id, const char *filter, char *out)
{
    walker w = {filter, 0};
    view f, rl;
    size_t pos = 0;
    for (size_t i = 0;; i++) {
        int fmore = walk(&w, &f), rmore = i < r->nlevels;
        if (rmore)
            resolve(&r->levels[i], id, &rl);
        if (!rmore || !fmore) {
            break; /* both ended (they intersect: never only one) */
        } else if (rl.kind == LVL_HASH) {
            put_level(out, &pos, f.s, strlen(f.s), i == 0); /* the filter's rest */
            break;
        } else if (f.kind == LVL_HASH) {
            for (size_t k = i; k < r->nlevels; k++) {
                view v;
                resolve(&r->levels[k], id, &v);
                put_view(out, &pos, &v, k == 0);
            }
            break;
        } else if (f.kind == LVL_PLUS) {
            put_view(out, &pos, &rl, i == 0);
        } else {
            put_level(out, &pos, f.s, f.len, i == 0);
        }
    }
    out[pos] = '\0';
}

/* The longest intersection of rule r with a filter of filter_len bytes. */
static size_t intersection_max(const rule *r, const ident *id, size_t filter_len)
{
    size_t n = filter_len + strlen(r->text) + 2;
    if (r->uses != 0)
        n += r->nlevels * (id->user_len + id->client_len);
    return n;
}

/* 1 if some topic filter can match is readable: an allow rule with read
 * access intersects the filter, and no single deny rule covers that
 * intersection. (Deny rules that only together cover it are not seen: the
 * filter is then granted and every delivery refused, as each one is
 * checked.) */
static int some_readable(const ident *id, const rule_list *const lists[2], const char *filter)
{
    char small[512], *buf;
    size_t flen = strlen(filter);
    for (int k = 0; k < 2; k++) {
        for (size_t i = 0; lists[k] != NULL && i < lists[k]->n; i++) {
            const rule *r = &lists[k]->v[i];
            size_t need;
            int denied = 0;
            if (!grants(r, id, SB_ACL_READ) || !intersects(r, id, filter))
                continue;
            need = intersection_max(r, id, flen);
            buf = need <= sizeof small ? small : sb_malloc(need);
            if (buf == NULL)
                return 0; /* out of memory: refused, the safe answer */
            intersection(r, id, filter, buf);
            for (int dk = 0; dk < 2 && !denied; dk++)
                for (size_t d = 0; lists[dk] != NULL && d < lists[dk]->n && !denied; d++)
                    denied = lists[dk]->v[d].access == 0 && covers(&lists[dk]->v[d], id, buf);
            if (buf != small)
                sb_free(buf);
            if (!denied)
                return 1;
        }
    }
    return 0;
}

int sb_auth_allowed(const sb_auth *a, const char *user, const char *client_id, const char *topic,
                    int access)
{
    return decide(a, user, client_id, topic, 0, access);
}

int sb_auth_filter_readable(const sb_auth *a, const char *user, const char *client_id,
                            const char *filter)
{
    return decide(a, user, client_id, filter, 1, SB_ACL_READ);
}

int sb_auth_filter_allowed(const sb_auth *a, const char *user, const char *client_id,
                           const char *filter)
{
    const rule_list *lists[2];
    ident id;

    if (a == NULL || !a->has_acl)
        return 1;
    if (filter == NULL || sb_filter_validate(filter, strlen(filter), NULL) != 0)
        return 0;
    ident_init(&id, user, client_id);
    lists[0] = user == NULL ? &a->anon : sb_map_get(&a->acl_users, user);
    lists[1] = &a->pattern;
    return some_readable(&id, lists, filter);
}
