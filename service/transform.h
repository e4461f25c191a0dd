/*
 * Route transforms: declarative steps that turn a message into the form one
 * destination wants (README "Transforms"). A route's `transform` applies to
 * each of its destinations, a destination's own `transform` after it. They
 * run when a queue hands a message to its consumer, on a copy: the stored
 * message stays as published, so a fixed transform and `dlq redrive` repair
 * what failed.
 *
 * The steps come from the config as a tree of scalars, mappings and lists
 * with their positions (sb_tnode); sb_transform_compile checks them (every
 * error with its line, column and key path) and builds a program that
 * sb_transform_apply runs on one message at a time. A compiled transform
 * without a `lua` step is immutable and may be shared; one with a script
 * holds the script's Lua state (service/script.h) and runs on one thread
 * at a time.
 *
 * A `lua` step names a script file; the config reads it (sb_tscript, on
 * the scalar naming it) so that compiling does no file I/O and a reload
 * takes the script as it is then. A script may return several messages:
 * the steps after it run on each, and sb_transform_apply_all returns them
 * all.
 */
#ifndef SB_TRANSFORM_H
#define SB_TRANSFORM_H

#include "service/message.h"

#include <stddef.h>

/* ---- the steps as written ---- */

enum { SB_TNODE_SCALAR = 0, SB_TNODE_MAP, SB_TNODE_LIST };

/* A script file a step names, as the config read it. */
typedef struct sb_tscript {
    char *path;   /* as opened (a relative one from the config file's folder) */
    char *source; /* its text; NULL if it could not be read */
    size_t len;
    char *error; /* why it could not be read, or NULL */
} sb_tscript;

typedef struct sb_tnode sb_tnode;
struct sb_tnode {
    int kind; /* SB_TNODE_* */
    int line, col;
    int plain;          /* SCALAR: written without quotes (may be a number) */
    char *text;         /* SCALAR: the value */
    sb_tnode *items;    /* MAP: key, value, key, value, ...; LIST: the elements */
    size_t count;       /* entries in items */
    sb_tscript *script; /* SCALAR naming a `lua` step's script: the file */
};

/* The scalar that names the script of step n if n is a `lua` step
 * (`lua: FILE` or `lua: {script: FILE, ...}`), else NULL: where the config
 * attaches the file it read. */
sb_tnode *sb_tnode_script_name(sb_tnode *n);

/* A deep copy (NULL on out-of-memory or if n is NULL). */
sb_tnode *sb_tnode_copy(const sb_tnode *n);
/* Frees n and what it owns (n may be NULL). */
void sb_tnode_free(sb_tnode *n);
/* 1 if a and b hold the same values (positions aside); two NULLs are equal. */
int sb_tnode_equal(const sb_tnode *a, const sb_tnode *b);

/* ---- compiling ---- */

typedef struct sb_transform sb_transform;

/* Receives one error: spec is the index into specs, path the key path
 * inside that spec ("[2].encode"), line/col where (1-based). */
typedef void (*sb_transform_error_cb)(void *ctx, size_t spec, int line, int col, const char *path,
                                      const char *msg);

/* Compiles specs[0..count) (each a list of steps or one step; NULL entries
 * are skipped) into one transform that runs them in order. `from` are the
 * route's filters: a topic's captured values are those of the first filter
 * it matches. On success *out is the transform (NULL when there are no
 * steps at all). Returns 0, SB_ENOMEM, or SB_ECONFIG after reporting every
 * error through cb (which may be NULL). */
int sb_transform_compile(sb_transform **out, const sb_tnode *const *specs, size_t count,
                         const char *const *from, size_t from_count, sb_transform_error_cb cb,
                         void *ctx);

void sb_transform_free(sb_transform *t);

/* ---- running ---- */

/* sb_transform_apply's result when a `when:` condition was not met: the
 * message is not for this destination. */
#define SB_TRANSFORM_SKIP 1

/* Runs t on in (which it does not change) and sets *out to an array of
 * *count new messages (refs 1, id and times of in; sb_free the array
 * after unref'ing each): usually one, several when a script made them.
 * Returns 0, SB_TRANSFORM_SKIP (nothing for this destination: a `when:`
 * did not hold or a script returned nothing; *out NULL), SB_ENOMEM, or
 * SB_EINVAL with why (size n): the step that failed (its number and kind)
 * and the reason, e.g. "step 2 (encode): U+20AC at byte 3 has no
 * equivalent in code page 1251" or "step 1 (lua): split.lua:7: attempt
 * to index a nil value". */
int sb_transform_apply_all(const sb_transform *t, const sb_message *in, sb_message ***out,
                           size_t *count, char *why, size_t n);

/* The same for a caller that wants one message: more than one is
 * SB_EINVAL ("made N messages"). */
int sb_transform_apply(const sb_transform *t, const sb_message *in, sb_message **out, char *why,
                       size_t n);

/* The number of steps in t (0 for NULL). */
size_t sb_transform_steps(const sb_transform *t);

/* The kinds of step (a step's one key: "topic", "encode", ...),
 * NULL-terminated, for the configuration's JSON Schema. */
const char *const *sb_transform_step_names(void);

#endif
