/*
 * sbctl internals shared by the commands: exit codes, the command table
 * entry, the run context, and helpers that connect, send a request and turn
 * failures into one-line messages and the right exit status.
 */
#ifndef SBCTL_H
#define SBCTL_H

#include "tools/client/client.h"
#include "tools/sbctl/args.h"

#include <jansson.h>
#include <stddef.h>
#include <stdio.h>

/* Exit status. */
#define SBCTL_EXIT_OK 0
#define SBCTL_EXIT_ERROR 1 /* the broker reported an error, or the operation failed */
#define SBCTL_EXIT_USAGE 2 /* bad command line */
#define SBCTL_EXIT_CONN 3  /* cannot connect, or the connection failed or timed out */
#define SBCTL_EXIT_DENIED 4  /* the broker refused for lack of rights (SB_EAUTH, SB_EACCES) */
#define SBCTL_EXIT_TIMEOUT 5 /* sub, tail: --timeout expired before --count messages */
/* sub, tail ended by a signal (Ctrl-C: SIGINT) after a clean detach: 128 + its
 * number, as a shell reports a process the signal killed. */
#define SBCTL_EXIT_INTERRUPTED_BASE 128

/* How long to wait for a reply to a request. */
#define SBCTL_REQUEST_TIMEOUT_MS 30000

typedef struct sbctl_ctx {
    const char **endpoints; /* -e/--endpoint values, or the default: at least one */
    size_t nendpoints;
    int tty_in, tty_out, tty_err; /* stdin/stdout/stderr are terminals */
    sb_client_options client;     /* --ca, --cert, --key for tls: endpoints */
    int json;                     /* --json: machine-readable output on stdout */
    int progress;                 /* --progress: progress lines even when stderr is no terminal */
} sbctl_ctx;

typedef struct sbctl_cmd sbctl_cmd;
struct sbctl_cmd {
    const char *name;    /* "pub", "dlq list" */
    const char *args;    /* "TOPIC [PAYLOAD]" */
    const char *summary; /* one line, for `sbctl --help` */
    const char *help;    /* paragraphs for `sbctl CMD --help` */
    const sbctl_opt *opts;
    size_t nopts;
    size_t min_pos, max_pos;
    int (*run)(sbctl_ctx *ctx, const sbctl_cmd *cmd, const sbctl_args *a);
};

/* The options every command that talks to a broker accepts (put first in
 * each command's table). */
#define SBCTL_COMMON_OPTS                                                                          \
    {"endpoint", 'e',        SBCTL_OPT_STRING,                                                     \
     1,          "ENDPOINT", "broker endpoint (default $SB_ADMIN, else the admin endpoint)",       \
     0,          0},                                                                               \
        {"ca", 0, SBCTL_OPT_STRING, 0, "FILE",                                                     \
         "tls: endpoints: the CAs to verify the broker with (PEM; default: OpenSSL's)", 0, 0},    \
        {"cert", 0, SBCTL_OPT_STRING, 0, "FILE",                                                   \
         "tls: endpoints: a client certificate (PEM; its CN is the user)", 0, 0},                  \
        {"key", 0, SBCTL_OPT_STRING, 0, "FILE", "the key of --cert (PEM)", 0, 0},                  \
        {"json", 0, SBCTL_OPT_FLAG, 0, NULL, "machine-readable output: JSON on stdout", 0, 0},     \
        {"progress", 0, SBCTL_OPT_FLAG, 0, NULL,                                                   \
         "progress of long operations on stderr even when it is not a terminal", 0, 0},           \
    {                                                                                              \
        "help", 'h', SBCTL_OPT_FLAG, 0, NULL, "show this help", 0, 0                               \
    }

extern const sbctl_cmd sbctl_cmd_pub, sbctl_cmd_sub, sbctl_cmd_stats, sbctl_cmd_ping,
    sbctl_cmd_dlq_list, sbctl_cmd_dlq_redrive, sbctl_cmd_dlq_purge, sbctl_cmd_bench,
    sbctl_cmd_passwd, sbctl_cmd_route_test, sbctl_cmd_tail;
/* cmd_admin.c: store maintenance */
extern const sbctl_cmd sbctl_cmd_check, sbctl_cmd_compact;

/* Prints "sbctl: <message>\n" to stderr. */
void sbctl_errorf(const char *fmt, ...) SB_PRINTF(1, 2);

/* With on set (--json), sbctl_errorf and the failures below print one JSON
 * object a line on stderr instead: {"error": MESSAGE} and, for an error
 * the broker or the connection reported, "code" (e.g. "SB_ENOTFOUND"). */
void sbctl_json_errors(int on);

/* Prints "sbctl CMD: <message>" and a pointer to --help; returns SBCTL_EXIT_USAGE. */
int sbctl_usage_error(const sbctl_cmd *cmd, const char *fmt, ...) SB_PRINTF(2, 3);

/* Connects to endpoint (with ctx's client options); on failure prints "sbctl: cannot connect to ...: ...
 * (is the broker running? see --endpoint)" and returns SBCTL_EXIT_CONN
 * (SBCTL_EXIT_USAGE for a malformed endpoint). */
int sbctl_connect(sb_client **out, const sbctl_ctx *ctx, const char *endpoint);

/* Prints a transport failure and returns the exit status for it. */
int sbctl_conn_failed(const char *what, const sb_error *err);

/* Sends req and waits for its reply (SBCTL_REQUEST_TIMEOUT_MS). Returns
 * SBCTL_EXIT_OK with *reply set (new reference); or prints
 * "sbctl: WHAT: <broker message> [SB_ECODE]" and returns SBCTL_EXIT_ERROR
 * (SBCTL_EXIT_DENIED) for an error reply, or prints the failure and returns
 * SBCTL_EXIT_CONN. */
int sbctl_call(sb_client *c, json_t *req, json_t **reply, const char *what);

/* Prints the broker error in reply as above and returns SBCTL_EXIT_ERROR, or
 * SBCTL_EXIT_DENIED for SB_EAUTH and SB_EACCES. */
int sbctl_broker_failed(const char *what, const sb_error *err);

/* Integer field of a reply, or dflt when absent or not a number. */
int64_t sbctl_json_int(const json_t *obj, const char *key, int64_t dflt);

/* A progress line on stderr for a long operation: on a terminal, rewritten
 * in place at most 5 times a second after the first second (and cleared at
 * the end); with --progress when stderr is not a terminal, a line at once
 * and then at most one a second. Nothing otherwise. */
typedef struct sbctl_progress {
    int on, tty, shown;
    unsigned long long start_ns, last_ns;
} sbctl_progress;

void sbctl_progress_start(sbctl_progress *p, const sbctl_ctx *ctx);
/* Shows the line fmt says, if it is time to. */
void sbctl_progress_show(sbctl_progress *p, const char *fmt, ...) SB_PRINTF(2, 3);
/* Clears the line on a terminal (before the result or an error). */
void sbctl_progress_end(sbctl_progress *p);

/* Writes obj as one JSON line on stdout (--json). Returns 0, or
 * SBCTL_EXIT_ERROR when out of memory. Steals the reference to obj. */
int sbctl_print_json(json_t *obj);

/* Monotonic time in nanoseconds. */
unsigned long long sbctl_now_ns(void);

/* Platform (<os>/platform.c). sbctl_platform_init may replace the command
 * line (Windows: with a UTF-8 copy of the wide one). */
void sbctl_platform_init(int *argc, char ***argv);
int sbctl_isatty(int fd); /* 0 stdin, 1 stdout, 2 stderr */
/* How a terminal user ends input: "Ctrl-D", or "Ctrl-Z and Enter". */
const char *sbctl_eof_key(void);
/* Prints prompt to stderr and reads one line from the terminal on stdin
 * with echo off (restored also if a signal or Ctrl-C ends sbctl meanwhile).
 * Returns 0 with a new UTF-8 string in *out (without the line ending;
 * sb_free it after wiping it), or -1 with a reason in msg (EOF, not a
 * terminal, more than max bytes). */
int sbctl_read_secret(char **out, const char *prompt, size_t max, char *msg, size_t msglen);
/* Replaces the file path by data[0..len) atomically: writes a temp file in
 * the same directory, flushes it to disk and renames it over path (Windows:
 * MoveFileExW with MOVEFILE_REPLACE_EXISTING). On POSIX a new file gets mode
 * 0600; an existing one keeps its owner and group (where permitted) and its
 * mode masked to 0640 (never world-readable); a symbolic link is followed.
 * Returns 0 or -1 with a one-line reason in msg. */
int sbctl_replace_file(const char *path, const void *data, size_t len, char *msg, size_t msglen);

#endif
