/*
 * Authentication and authorization of clients: a password file of salted
 * PBKDF2 hashes and an ACL file of topic rules, both in Mosquitto 2's formats
 * so an administrator can reuse (and mosquitto_passwd can edit) the same
 * files.
 *
 * Password file: one `USER:$7$ITERATIONS$SALT$HASH` line per user, where $7$
 * is PBKDF2-HMAC-SHA-512 with a 12-byte salt and a 64-byte hash, both in
 * standard padded base64 (what `sbctl passwd` and `mosquitto_passwd` write).
 * Mosquitto 1.x's `$6$SALT$HASH` (one SHA-512 of password and salt) is
 * accepted for verification only. `#` comment lines and blank lines are
 * ignored; blanks around the user name and the hash are trimmed; a user may
 * appear once.
 *
 * ACL file: `user NAME` starts a user's block; `topic [read|write|readwrite|
 * deny] FILTER` (default readwrite) adds a rule for the current user, or for
 * anonymous clients before any `user` line; `pattern [ACCESS] FILTER` adds a
 * rule for every client in which a level that is exactly `%u` or `%c` stands
 * for the client's user name or client id. Deny rules win over allow rules,
 * whatever their order. Without an ACL file everything is allowed; with one,
 * what no rule allows is denied. Wildcard rules follow MQTT matching, so `#`
 * and `+/...` do not reach `$SYS/...` topics: those need rules that name
 * them.
 *
 * A placeholder value is usable only if it is non-empty, contains no '/', '+'
 * or '#' and does not start with '$' (else one client could name another's
 * levels, a wildcard, or the broker's topics). With no usable value (also:
 * anonymous for %u, no client id for %c) an allow pattern grants nothing and
 * a deny pattern denies as if the placeholder were '+' (every value), so an
 * odd identity can only lose access, never gain it.
 *
 * A loaded sb_auth is immutable but for its cache of verified logins (which
 * has its own lock): every query may run on any thread concurrently. A
 * reload makes a new sb_auth, so a changed password file starts with an
 * empty cache.
 */
#ifndef SB_AUTH_H
#define SB_AUTH_H

#include <stddef.h>

#include "service/error.h"

typedef struct sb_auth sb_auth;

/* Access kinds for sb_auth_allowed (publishing is WRITE, receiving READ). */
enum { SB_ACL_READ = 1, SB_ACL_WRITE = 2 };

/* What `sbctl passwd` writes: PBKDF2-HMAC-SHA-512 with OWASP's 2023 count
 * (Mosquitto's default of 101 is far too low for an offline attack). */
#define SB_AUTH_DEFAULT_ITERATIONS 210000
#define SB_AUTH_SALT_LEN 12 /* as Mosquitto, so files are interchangeable */
#define SB_AUTH_HASH_LEN 64
/* Longest password the broker checks (MQTT's limit). */
#define SB_AUTH_PASSWORD_MAX 65535

/* Loads the password file and/or the ACL file (either may be NULL) into a new
 * *out (sb_auth_free it). Returns 0; SB_ENOTFOUND (or another SB_E* code
 * from the OS error) when a file cannot be read; SB_ECONFIG for the first
 * error in a file, with err->msg naming FILE:LINE and what is wrong
 * ("acl.conf:3: topic: invalid filter 'a/#/b': '#' must be the last level on
 * its own"); SB_ENOMEM. *out is NULL on failure. */
int sb_auth_load(sb_auth **out, const char *password_file, const char *acl_file, sb_error *err);

/* The same from text in memory: pw_name/acl_name are the names errors give
 * for the texts; a NULL text means no such file. Texts need no NUL. */
int sb_auth_parse(sb_auth **out, const char *pw_name, const char *pw_text, size_t pw_len,
                  const char *acl_name, const char *acl_text, size_t acl_len, sb_error *err);

void sb_auth_free(sb_auth *a);

/* 1 if a password file was loaded (clients must then authenticate, even if
 * the file lists nobody), else 0 (also for a NULL a). */
int sb_auth_has_passwords(const sb_auth *a);

/* 1 if an ACL file was loaded, else 0. */
int sb_auth_has_acl(const sb_auth *a);

/* Returns 0 if user is in the password file and password[0..password_len)
 * matches its hash, else SB_EAUTH (also without a password file). Recomputes
 * the hash (slow by design: run it off the event loop) and compares in
 * constant time; an unknown user costs the same work, against a dummy hash
 * with the iteration count most users have. A login that matched is
 * remembered (a bounded cache of 4096 keyed-hash tags of user and password,
 * the oldest of a set replaced first; gone with a): checking it again costs
 * one HMAC, so a storm of reconnecting clients does not queue for seconds
 * of PBKDF2. Failures are not remembered. Thread-safe. */
int sb_auth_check_password(const sb_auth *a, const char *user, const char *password,
                           size_t password_len);

/* Password checks since the process started: those hashed in full (a first
 * login, a wrong password, an unknown user) and those the cache of verified
 * logins answered. Returns 1 with them set, or 0 if a (may be NULL) has no
 * password file. */
int sb_auth_login_counts(const sb_auth *a, unsigned long *hashed, unsigned long *cached);

/* 1 if the client (user NULL: anonymous; client_id may be NULL) may access
 * topic with every bit of access (SB_ACL_READ, SB_ACL_WRITE), else 0. An
 * invalid topic is denied. 1 when a is NULL or has no ACL file. */
int sb_auth_allowed(const sb_auth *a, const char *user, const char *client_id, const char *topic,
                    int access);

/* 1 if the client may subscribe to filter: the ACL lets it read some topic
 * the filter can match (an allow rule with read access intersects the
 * filter, and no deny rule covers that intersection), as Mosquitto grants
 * `#` under `topic readwrite #` and `topic deny a/b`. A granted filter may
 * still match topics the client may not read: check each delivery with
 * sb_auth_allowed. Rules with wildcards do not reach `$` topics, so `#`
 * grants nothing under `$SYS`. 0 when nothing the filter matches is
 * readable (also for an invalid filter). 1 when a is NULL or has no ACL
 * file. */
int sb_auth_filter_allowed(const sb_auth *a, const char *user, const char *client_id,
                           const char *filter);

/* 1 if the client may read every topic filter can match: one allow rule
 * with read access covers the whole filter (rule `a/#` covers `a/+/c`; rule
 * `a/+` does not cover `a/#`) and no deny rule matches any topic the filter
 * can match. For what is shared with others (a named queue, its
 * statistics), where filtering deliveries would take messages from them.
 * Else 0 (also for an invalid filter). 1 when a is NULL or has no ACL
 * file. */
int sb_auth_filter_readable(const sb_auth *a, const char *user, const char *client_id,
                            const char *filter);

/* ---- for tools that write password files (sbctl passwd) ---- */

/* Hashes password[0..len) with a fresh random salt into a new
 * "$7$ITERATIONS$SALT$HASH" string (*out, sb_free it). iterations must be
 * >= 1. Returns 0, SB_EINVAL, SB_ENOMEM or SB_EUNKNOWN (no randomness). */
int sb_auth_hash_password(char **out, const char *password, size_t len, int iterations);

/* 0 if user can be written to a password file and read back unchanged:
 * non-empty, valid UTF-8, at most 65535 bytes, no ':' or control character,
 * no blank at either end, not starting with '#'. Else SB_EINVAL with *why. */
int sb_auth_user_name_check(const char *user, const char **why);

/* If line[0..len) (without its line ending) is a user's line of a password
 * file (not blank, not a comment), sets *name and *name_len to the user name in
 * it, as the loader reads it, and returns 1; else returns 0. */
int sb_auth_passwd_line_user(const char *line, size_t len, const char **name, size_t *name_len);

#endif
