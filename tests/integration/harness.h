/*
 * The integration test harness: real broker processes, real clients.
 *
 * A test gets a fresh temporary directory (under the OS's temp dir, never a
 * fixed path), writes a config into it from a template, starts
 * `switchboard run` with stdout and stderr appended to a log file there,
 * waits until the broker answers a jsonl `ping` on its first TCP port, and
 * stops it (SIGTERM, on Windows its stop event; exit code 0 asserted), kills
 * it (SIGKILL / Windows TerminateProcess) or restarts it on the same data
 * dir. Nothing waits a
 * fixed time: every wait polls for a condition with a deadline.
 *
 * Templates name the test's paths and ports with placeholders:
 *   {dir} the temp dir, {data} its data dir, {port0}..{port9} free TCP/UDP
 *   ports, {helper} the helper program (exec tests), {v0}..{v9} free-form
 *   values the test sets (sbt_broker_set).
 * Paths use '/' and go into single-quoted YAML scalars ('{data}'), which
 * keep backslashes of Windows paths as they are.
 *
 * All processes and sockets run on one libuv loop owned by the harness
 * (sbt_loop); the blocking helpers run it until their condition or deadline,
 * so a process exit is noticed whatever the test is waiting for.
 *
 * The jsonl helpers wrap sb_client (tools/client): requests and replies as
 * jansson objects, with deliveries that arrive meanwhile kept in order for
 * sbt_next_msg. The socket helpers (sbt_tcp_*, sbt_udp_*) are blocking
 * wrappers over libuv for raw producers, sinks and listeners.
 *
 * Every assertion is a cmocka assertion: a failing helper fails the test,
 * and the test's teardown (sbt_broker_cleanup) kills what is left and prints
 * the broker log.
 *
 * A test that hangs explains itself: a watchdog thread, armed shortly before
 * ctest's own timeout (SBT_TIMEOUT_S, set by CMake), prints what the test
 * was waiting for (sbt_waiting_for, kept by every blocking helper) and the
 * tail of the current broker's log, kills that broker and exits 1.
 *
 * Environment: SB_SWITCHBOARD, SB_TEST_DATA and SB_TEST_HELPER are set by
 * ctest (tests/integration/CMakeLists.txt); SBT_FILTER=<cmocka pattern> runs
 * only matching tests, SBT_KEEP=1 keeps the temp dirs of passing tests too,
 * SBT_SEED=<n> repeats a crash test run.
 */
#ifndef SBT_HARNESS_H
#define SBT_HARNESS_H

#include <jansson.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "tools/client/client.h"

/* cmocka needs these before its header. */
#include <setjmp.h>
#include <stddef.h>
#include <cmocka.h>

/* The exit status of a test program none of whose tests apply on this
 * platform (ctest's SKIP_RETURN_CODE): ctest lists it as skipped. */
#define SBT_EXIT_SKIPPED 77

#define SBT_MAX_PORTS 10
#define SBT_MAX_VALUES 10
#define SBT_PATH_MAX 1024

/* Default deadlines (ms); generous for sanitizer builds on a busy machine. */
#define SBT_READY_MS 15000
#define SBT_STOP_MS 15000
#define SBT_REPLY_MS 10000

/* ---- environment, time, files ---- */

/* $SB_SWITCHBOARD (the broker), $SB_TEST_DATA (tests/data), $SB_TEST_HELPER
 * (the helper program); a missing variable fails the test. */
const char *sbt_switchboard(void);
const char *sbt_test_data(void);
const char *sbt_helper(void);

/* Records what the test waits for now (printf format), for the watchdog;
 * the blocking helpers call it, a test's own polling loop may too. */
void sbt_waiting_for(const char *fmt, ...);

/* The harness's loop (processes, sockets, timers). */
uv_loop_t *sbt_loop(void);

/* Internal: starts t to call cb after ms (from now, not from the loop's
 * cached time) and then every ms again: a timer that fired at the top of a
 * uv_run(UV_RUN_ONCE) iteration would otherwise leave that iteration blocked
 * in the poll with no timer left to wake it. */
void sbt__start_deadline(uv_timer_t *t, uv_timer_cb cb, int ms);

/* Monotonic milliseconds. */
int64_t sbt_now_ms(void);

/* Runs the loop for at most ms milliseconds (returns early never: it is the
 * pause between two polls of a condition inside a deadline loop). */
void sbt_poll_pause(int ms);

/* out = dir + "/" + name. */
void sbt_path(char *out, size_t n, const char *dir, const char *name);

/* Creates a fresh directory <tmp>/sbt-<name>-XXXXXX; asserts. */
void sbt_mkdtemp(char *out, size_t n, const char *name);

/* Removes a directory tree (best effort). */
void sbt_rmtree(const char *path);

/* Reads a whole file (NUL-terminated, *len without it); NULL if it cannot
 * be read. Free with free(). */
char *sbt_read_file(const char *path, size_t *len);

/* Writes (replaces) a file; asserts. */
void sbt_write_file(const char *path, const void *data, size_t len);

/* config/examples/NAME as shipped (free()), with LF line ends whatever the
 * checkout has; fails the test if it cannot be read. A test runs an example by replacing its fixed
 * names and ports with the run's (sbt_example_replace) and giving it to sbt_broker_config. */
char *sbt_example(const char *name);

/* Replaces every `from` in *text (from sbt_example) by `to`; fails the test
 * if there is none, naming example (the example changed: update the test). */
void sbt_example_replace(char **text, const char *example, const char *from, const char *to);

/* A copy of s (free()); asserts. (strdup is not C11.) */
char *sbt_strdup(const char *s);

/* Number of non-overlapping occurrences of needle in hay. */
int sbt_count(const char *hay, const char *needle);

/* Polls file until it holds needle count times; fails the test after ms,
 * showing what the file held. */
void sbt_wait_file_text(const char *file, const char *needle, int count, int ms);

/* The value of environment variable name (a path ctest sets); fails the
 * test if it is not set. */
const char *sbt_env(const char *name);

/* ---- processes ---- */

typedef struct sbt_proc {
    uv_process_t h;
    int spawned; /* h is initialised (closed in sbt_proc_release) */
    int running;
    int64_t exit_status;
    int term_signal;
} sbt_proc;

/* Spawns argv[0] (NULL-terminated argv) in cwd (NULL: inherit) with stdin
 * ignored and stdout/stderr appended to out_path (NULL: inherited).
 * Returns 0 or a libuv error. */
int sbt_spawn(sbt_proc *p, char *const *argv, const char *cwd, const char *out_path);

/* Runs the loop until p exits or timeout_ms passes; returns 1 if exited. */
int sbt_proc_wait(sbt_proc *p, int timeout_ms);

/* Sends sig (SIGTERM, SIGKILL, SIGHUP; on Windows every signal terminates). */
void sbt_proc_signal(sbt_proc *p, int sig);

/* Asks a broker started with `switchboard run` for an orderly stop: SIGTERM
 * on POSIX; on Windows, which has no such signal, its stop event
 * Local\switchboard-stop-<pid> (stop_<os>.c). Returns 0 or a libuv error. */
int sbt_proc_request_stop(sbt_proc *p);

/* Kills p if still running, waits for it and releases the handle. */
void sbt_proc_release(sbt_proc *p);

/* Runs argv to completion (deadline timeout_ms, asserted) with stdout and
 * stderr captured separately; returns the exit code (128 + signal if killed);
 * *out and *err (either may be NULL) get the output (free()). */
int sbt_run(char *const *argv, const char *cwd, int timeout_ms, char **out, char **err);

/* ---- the broker ---- */

typedef struct sbt_broker {
    char name[64];
    char dir[SBT_PATH_MAX];
    char data_dir[SBT_PATH_MAX];
    char config_path[SBT_PATH_MAX];
    char log_path[SBT_PATH_MAX];
    int port[SBT_MAX_PORTS];
    int nports;
    char *values[SBT_MAX_VALUES];
    char *tmpl;
    sbt_proc proc;
    int starts;      /* successful starts so far */
    int passed;      /* set by the test at its end: keep quiet, remove the dir */
    size_t log_mark; /* sbt_broker_log_since starts here */
} sbt_broker;

/* Creates the temp dir and picks nports free ports (port[0] is the jsonl
 * endpoint every template declares as the "clients" adapter). */
void sbt_broker_init(sbt_broker *b, const char *name, int nports);

/* Sets {v<i>} for the templates (copied). */
void sbt_broker_set(sbt_broker *b, int i, const char *value);

/* Keeps tmpl and writes the config file from it. */
void sbt_broker_config(sbt_broker *b, const char *tmpl);

/* Writes the config file from text with the placeholders filled in, without
 * keeping it as the template (reload tests). */
void sbt_broker_write_config(sbt_broker *b, const char *tmpl);

/* Starts the broker and waits until it answers ping on port[0]. If the first
 * start fails because a port was taken, new ports are picked and the config
 * is rewritten (at most a few times). Asserts. */
void sbt_broker_start(sbt_broker *b);

/* Starts the broker process without waiting for anything (to kill it while
 * it is still opening the store, say). */
void sbt_broker_spawn(sbt_broker *b);

/* Starts the broker and waits until it is ready (returns -1) or exits
 * (returns its exit code; a signal gives 128 + signal). */
int sbt_broker_try_start(sbt_broker *b);

/* sbt_broker_try_start for a start that must fail: when it failed only
 * because another process took a port ("address already in use"), the
 * broker moves to other ports (config rewritten from tmpl) and tries again. */
int sbt_broker_try_failing_start(sbt_broker *b, const char *tmpl);

/* Asks for an orderly stop (sbt_proc_request_stop), waits for the exit,
 * asserts exit code 0. */
void sbt_broker_stop(sbt_broker *b);

/* SIGKILL (TerminateProcess on Windows) and wait for the exit. */
void sbt_broker_kill(sbt_broker *b);

/* Sends a signal (POSIX: SIGHUP reloads). */
void sbt_broker_signal(sbt_broker *b, int sig);

/* 1 while the process runs. */
int sbt_broker_running(sbt_broker *b);

/* The whole log so far (free()). */
char *sbt_broker_log(sbt_broker *b);

/* Polls the log until it holds at least `count` occurrences of needle
 * after log_mark; fails the test (printing the log) after timeout_ms. */
void sbt_broker_wait_log(sbt_broker *b, const char *needle, int count, int timeout_ms);

/* Marks the current end of the log: later sbt_broker_wait_log calls and
 * sbt_broker_log_since look only at what follows. */
void sbt_broker_mark_log(sbt_broker *b);
char *sbt_broker_log_since(sbt_broker *b);

/* Prints the log to stderr with a header. */
void sbt_broker_print_log(sbt_broker *b);

/* Teardown: kills a running broker, prints the log unless b->passed,
 * removes the temp dir if b->passed (and $SBT_KEEP is not set), frees b's
 * strings. */
void sbt_broker_cleanup(sbt_broker *b);

/* Runs only the tests matching $SBT_FILTER (a cmocka pattern), if set. */
void sbt_apply_filter(void);

/* cmocka setup/teardown that allocate / clean up a sbt_broker in *state
 * named after the running executable's test group. */
int sbt_setup(void **state);
int sbt_teardown(void **state);

/* ---- jsonl clients ---- */

typedef struct sbt_conn {
    sb_client *c;
    json_t *stash; /* deliveries read while waiting for a reply */
    char endpoint[64];
} sbt_conn;

/* Connects to tcp:127.0.0.1:port (asserts); free with sbt_close. */
sbt_conn *sbt_connect(int port);
/* Same, returns NULL if the connection fails. */
sbt_conn *sbt_try_connect(int port, int timeout_ms);
void sbt_close(sbt_conn *c);

/* Sends the object built by json_pack(fmt, ...) with a fresh id and returns
 * the reply (new reference); deliveries read meanwhile are stashed. */
json_t *sbt_call(sbt_conn *c, const char *fmt, ...);
json_t *sbt_vcall(sbt_conn *c, const char *fmt, va_list ap);
/* The same, sending req (consumed). Returns NULL on a transport error. */
json_t *sbt_call_json(sbt_conn *c, json_t *req, int timeout_ms);

/* Sends without waiting (pipelining); the caller reads replies itself. */
void sbt_send(sbt_conn *c, const char *fmt, ...);

/* Reads the next line as JSON (not looking at the stash); NULL on timeout.
 * Fails the test if the connection closes or breaks. */
json_t *sbt_read(sbt_conn *c, int timeout_ms);

/* The next delivery ({"op":"msg",...}) within timeout_ms: from the stash,
 * else read. Fails the test if none arrives in time or another kind of line
 * arrives. */
json_t *sbt_next_msg(sbt_conn *c, int timeout_ms);

/* Publishes and asserts a puback; returns msg_id. queues: expected "queues"
 * (-1: do not check). */
int64_t sbt_pub(sbt_conn *c, const char *topic, const char *payload, int queues);

/* Asserts that reply is an error with this code; frees reply. */
void sbt_expect_error(json_t *reply, const char *code);

/* Asserts reply["op"] == op. */
void sbt_expect_op(const json_t *reply, const char *op);

/* Subscribes (filter may be NULL) with a window; asserts "subscribed". */
void sbt_sub(sbt_conn *c, const char *sub, const char *filter, int window);

/* Acks / nacks (no reply requested). */
void sbt_ack(sbt_conn *c, const char *sub, int64_t msg_id);
void sbt_nack(sbt_conn *c, const char *sub, int64_t msg_id, const char *reason);

/* A queue's object from `stats` (new reference); NULL if there is none. */
json_t *sbt_queue_stats(sbt_conn *c, const char *name);
/* One integer field of it (fails if the queue does not exist). */
int64_t sbt_queue_int(sbt_conn *c, const char *name, const char *field);
/* Polls until the queue's field equals want (fails after timeout_ms). */
void sbt_wait_queue_int(sbt_conn *c, const char *name, const char *field, int64_t want,
                        int timeout_ms);

/* Field accessors that fail the test if the field is missing. */
const char *sbt_str(const json_t *o, const char *key);
int64_t sbt_int(const json_t *o, const char *key);

/* ---- raw sockets (blocking, over the harness loop) ---- */

typedef struct sbt_tcp sbt_tcp;

/* Connects to 127.0.0.1:port; NULL if it fails within timeout_ms. */
sbt_tcp *sbt_tcp_connect(int port, int timeout_ms);
/* The local port of a connection. */
int sbt_tcp_local_port(sbt_tcp *t);
/* Writes all bytes (asserts). Returns 0, or a libuv error if the peer is gone. */
int sbt_tcp_write(sbt_tcp *t, const void *data, size_t len);
/* Reads one '\n'-terminated line (without it) into out; returns its length,
 * -1 on timeout, -2 at EOF / error. */
int sbt_tcp_read_line(sbt_tcp *t, char *out, size_t cap, int timeout_ms);
/* Stops reading from the socket (the peer's writes back up) until the next
 * sbt_tcp_read_* / sbt_tcp_wait_closed call. The first call also pins the
 * receive buffer at 64 KiB (no autotuning), so the peer backs up soon. */
void sbt_tcp_pause(sbt_tcp *t);
/* Reads exactly n bytes; returns n, -1 on timeout, -2 at EOF / error. */
int sbt_tcp_read_exact(sbt_tcp *t, void *out, size_t n, int timeout_ms);
/* Waits for EOF or a reset: returns 1 if the peer closed within timeout_ms
 * (bytes read meanwhile are discarded). */
int sbt_tcp_wait_closed(sbt_tcp *t, int timeout_ms);
void sbt_tcp_close(sbt_tcp *t);

typedef struct sbt_listener sbt_listener;
/* Listens on 127.0.0.1:port (0: any); NULL if the port is taken. */
sbt_listener *sbt_listen(int port);
int sbt_listener_port(sbt_listener *l);
/* The next accepted connection within timeout_ms, or NULL. */
sbt_tcp *sbt_accept(sbt_listener *l, int timeout_ms);
void sbt_listener_close(sbt_listener *l);

typedef struct sbt_udp sbt_udp;
/* Binds 127.0.0.1:port (0: any); NULL if taken. */
sbt_udp *sbt_udp_bind(int port);
int sbt_udp_port(sbt_udp *u);
void sbt_udp_send(sbt_udp *u, int port, const void *data, size_t len);
/* One datagram into out (returns its length), or -1 on timeout. */
int sbt_udp_recv(sbt_udp *u, char *out, size_t cap, int timeout_ms);
void sbt_udp_close(sbt_udp *u);

/* 1 if TCP and UDP port on 127.0.0.1 can both be bound right now. */
int sbt_port_free(int port);

#endif
