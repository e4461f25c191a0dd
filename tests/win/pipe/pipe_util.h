/*
 * Named-pipe helpers for the pipe adapter tests: the test program's side of
 * a pipe, as a client of the broker's pipes or as a server the broker's pipe
 * client connects to. All handles are overlapped so that every wait has a
 * deadline; waits run the integration harness's loop in between (a broker
 * that exits is noticed), and none sleeps a fixed time.
 */
#ifndef SB_TEST_PIPE_UTIL_H
#define SB_TEST_PIPE_UTIL_H

#include "tests/integration/harness.h"

#include <windows.h>

typedef struct pt_pipe {
    HANDLE h;
    OVERLAPPED rov, wov; /* with events */
    char buf[65536];     /* byte mode: what was read beyond the last line */
    size_t len;
} pt_pipe;

/* 1 under Wine (ntdll exports wine_get_version there only). */
int pt_under_wine(void);

/* A pipe name of this test run, "sbt-<pid>-<tag>", and its full path. */
void pt_name(char *out, size_t n, const char *tag);
void pt_path(char *out, size_t n, const char *name);

/* Opens the pipe at path (a full \\.\pipe\ path) as a client, in message
 * read mode if `message`. Retries while the pipe does not exist or is busy,
 * until timeout_ms. Returns NULL with *err set if it cannot (err may be
 * NULL). */
pt_pipe *pt_open(const char *path, int message, int timeout_ms, DWORD *err);
/* The same, failing the test on error. */
pt_pipe *pt_open_ok(const char *path, int message);

/* Creates a server instance of path (message or byte mode); fails the test
 * if it cannot. pt_accept waits for a client (1 on success, 0 on timeout). */
pt_pipe *pt_server(const char *path, int message);
int pt_accept(pt_pipe *p, int timeout_ms);

void pt_close(pt_pipe *p);

/* Writes all of data as one WriteFile (one message in message mode).
 * Returns 0 or the Windows error. */
DWORD pt_write(pt_pipe *p, const void *data, size_t len, int timeout_ms);
void pt_write_ok(pt_pipe *p, const void *data, size_t len);

/* Reads one whole message into out (cap bytes; NUL-terminated when room);
 * returns its length, -1 on timeout, -2 if the pipe broke (*err set, err
 * may be NULL). */
int pt_read_msg(pt_pipe *p, char *out, size_t cap, int timeout_ms, DWORD *err);

/* Byte mode: reads one '\n'-terminated line (without it); same returns. */
int pt_read_line(pt_pipe *p, char *out, size_t cap, int timeout_ms);

/* Byte mode: starts one ReadFile into p's line buffer (pt_read_line goes
 * on from there), for pt_read_end to finish: a read already waiting when
 * the other end writes gets the whole of that write (as much as fits). */
void pt_read_begin(pt_pipe *p);
/* Waits for it: the bytes it brought, or -1 on timeout, -2 if the pipe
 * broke. */
int pt_read_end(pt_pipe *p, int timeout_ms);

/* Reads until the other end closes: 1 if it did within timeout_ms. */
int pt_wait_closed(pt_pipe *p, int timeout_ms);

/* jsonl over a byte-mode pipe: sends the object (consumed) as one line; reads
 * one line as JSON (NULL on timeout; fails on a broken pipe). */
void pt_send_json(pt_pipe *p, json_t *obj);
json_t *pt_read_json(pt_pipe *p, int timeout_ms);

/* The pipe's DACL as (SID, access mask after generic mapping) pairs, in
 * order; returns the count (at most max). Fails if it cannot be read. */
typedef struct pt_ace {
    char sid[200];
    DWORD mask;
} pt_ace;
int pt_dacl(HANDLE h, pt_ace *out, int max);

/* The account SID of this process as a string. */
void pt_own_sid(char *out, size_t n);

/* Makes b's config template from config/examples/NAME with every "from" of
 * `repl` ({from, to, from, to, ..., NULL}) replaced by its "to" (names of
 * this run, free ports, the data directory); fails the test if a "from" is
 * not in the example, so the example and its test stay in step. A jsonl
 * adapter on {port0} is added first in `adapters:` for the harness to see
 * when the broker is ready. Then sbt_broker_start(b) runs it. */
void pt_example_config(sbt_broker *b, const char *name, const char *const *repl);

#endif
