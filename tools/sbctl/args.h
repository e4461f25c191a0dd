/*
 * Command-line parsing for sbctl: a table of options per command, parsed in
 * one place (no global state, so it is unit-tested directly).
 *
 * Accepted forms: --name VALUE, --name=VALUE, -x VALUE, -xVALUE, bundled
 * flags (-yq), "--" ending the options, and "-" as a positional argument.
 * Options and positional arguments may be mixed in any order.
 * Values are checked while parsing: integers, durations ("500ms", "10s",
 * "1.5m", "2h", "1d"; a unit is required except for 0) and sizes ("100", "4KiB",
 * "1MiB", "1KB"), each against the option's [min, max] when max > min.
 */
#ifndef SBCTL_ARGS_H
#define SBCTL_ARGS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum {
    SBCTL_OPT_FLAG,     /* no value */
    SBCTL_OPT_STRING,   /* any value */
    SBCTL_OPT_INT,      /* decimal integer */
    SBCTL_OPT_DURATION, /* parsed to milliseconds */
    SBCTL_OPT_SIZE      /* parsed to bytes */
} sbctl_opt_type;

typedef struct sbctl_opt {
    const char *name; /* long name without "--" */
    char short_name;  /* 0: none */
    sbctl_opt_type type;
    int repeat;          /* may be given several times (all values kept) */
    const char *metavar; /* for help: "N", "DURATION", ... */
    const char *help;
    int64_t min, max; /* numeric range, checked when max > min */
} sbctl_opt;

typedef struct sbctl_optval {
    int count;         /* how many times it was given */
    const char *str;   /* last value (points into argv) */
    int64_t num;       /* last value parsed (ms for durations, bytes for sizes) */
    const char **list; /* every value, for repeat options (count entries) */
} sbctl_optval;

typedef struct sbctl_args {
    const sbctl_opt *spec;
    size_t nspec;
    sbctl_optval *vals; /* parallel to spec */
    const char **pos;   /* positional arguments */
    size_t npos;
} sbctl_args;

/* Parses argv[0..argc-1] (not including the program or command name).
 * Returns 0, or -1 with a one-line reason in msg ("--count: expected an
 * integer, got 'x'", "unknown option --foo"); SB_ENOMEM as -2. *out must be
 * freed with sbctl_args_free in both cases. */
int sbctl_args_parse(sbctl_args *out, const sbctl_opt *spec, size_t nspec, int argc, char **argv,
                     char *msg, size_t msglen);

void sbctl_args_free(sbctl_args *a);

/* Lookups by long name (the name must be in the spec: asserted). */
const sbctl_optval *sbctl_arg(const sbctl_args *a, const char *name);
int sbctl_arg_flag(const sbctl_args *a, const char *name);
const char *sbctl_arg_str(const sbctl_args *a, const char *name, const char *dflt);
int64_t sbctl_arg_num(const sbctl_args *a, const char *name, int64_t dflt);

/* "500ms", "10s", "1.5m", "2min", "2h", "1d"; a bare number is refused
 * (ambiguous: the config reads it as ms) except "0". Returns 0 or -1. */
int sbctl_parse_duration(const char *s, int64_t *out_ms);

/* "100", "4KiB", "1MiB", "1GiB", "1KB"/"1k" (1000). Returns 0 or -1. */
int sbctl_parse_size(const char *s, int64_t *out_bytes);

/* Decimal integer (optional sign), whole string. Returns 0 or -1. */
int sbctl_parse_int(const char *s, int64_t *out);

/* Prints the options as an aligned help list. */
void sbctl_args_print_help(FILE *f, const sbctl_opt *spec, size_t nspec);

#endif
