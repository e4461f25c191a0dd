/*
 * The integration harness: temp dirs, files, child processes and the broker
 * under test (see harness.h). Portable: libuv for processes and the file
 * system, no OS headers.
 */
#include "harness.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef SIGKILL
#define SIGKILL 9
#endif

/* ---- environment, loop, time ---- */

/* The absolute, canonical form of the path in $name, kept in *cache. A
 * path is resolved once at first use, against the directory ctest started
 * the test in: children run in other directories (on another drive, on
 * Windows), and under Wine CMake's "/work/..." paths only mean Z:\work\...
 * from a Z: working directory. */
static const char *env_path(const char *name, char **cache)
{
    const char *v = getenv(name);
    uv_fs_t req;
    int rc;
    if (*cache != NULL)
        return *cache;
    if (v == NULL || v[0] == '\0')
        fail_msg("environment variable %s is not set (run the test through ctest)", name);
    rc = uv_fs_realpath(NULL, &req, v, NULL);
    if (rc != 0)
        fail_msg("%s=%s: %s", name, v, uv_strerror(rc));
    *cache = strdup(req.ptr);
    uv_fs_req_cleanup(&req);
    assert_non_null(*cache);
    return *cache;
}

const char *sbt_switchboard(void)
{
    static char *path;
    return env_path("SB_SWITCHBOARD", &path);
}

const char *sbt_test_data(void)
{
    static char *path;
    return env_path("SB_TEST_DATA", &path);
}

const char *sbt_helper(void)
{
    static char *path;
    return env_path("SB_TEST_HELPER", &path);
}

/* ---- the watchdog (see harness.h) ---- */

static void watchdog_start(void);
static uv_once_t watch_once = UV_ONCE_INIT;
static uv_mutex_t watch_lock;
static char watch_waiting[512];
static char watch_log[SBT_PATH_MAX];
static uv_pid_t watch_pid;

void sbt_waiting_for(const char *fmt, ...)
{
    va_list ap;
    uv_once(&watch_once, watchdog_start);
    uv_mutex_lock(&watch_lock);
    va_start(ap, fmt);
    vsnprintf(watch_waiting, sizeof(watch_waiting), fmt, ap);
    va_end(ap);
    uv_mutex_unlock(&watch_lock);
}

/* The broker the watchdog reports on (NULL: none). */
static void watch_broker(const sbt_broker *b)
{
    uv_once(&watch_once, watchdog_start);
    uv_mutex_lock(&watch_lock);
    snprintf(watch_log, sizeof(watch_log), "%s", b != NULL ? b->log_path : "");
    watch_pid = b != NULL && b->proc.running ? b->proc.h.pid : 0;
    uv_mutex_unlock(&watch_lock);
}

static void print_log_tail(const char *path, int lines)
{
    char *text = sbt_read_file(path, NULL);
    const char *p;
    int n = 0;
    if (text == NULL) {
        fprintf(stderr, "(no broker log at %s)\n", path);
        return;
    }
    p = text + strlen(text);
    while (p > text && n <= lines)
        if (*--p == '\n')
            n++;
    if (*p == '\n')
        p++;
    fprintf(stderr, "----- last %d lines of %s -----\n%s----- end -----\n", lines, path, p);
    free(text);
}

static void watchdog(void *arg)
{
    int64_t limit_s = *(int64_t *)arg;
    /* Before ctest's kill: 10% of the timeout, at least 3 s. */
    int64_t margin = limit_s / 10 > 3 ? limit_s / 10 : 3;
    int64_t fire_at = sbt_now_ms() + (limit_s - margin) * 1000;
    while (sbt_now_ms() < fire_at)
        uv_sleep(200);
    uv_mutex_lock(&watch_lock);
    fprintf(stderr,
            "\nWATCHDOG: still running after %lld s (ctest's timeout is %lld s)\n"
            "WATCHDOG: the test was waiting for: %s\n",
            (long long)(limit_s - margin), (long long)limit_s,
            watch_waiting[0] != '\0' ? watch_waiting : "(nothing recorded)");
    if (watch_log[0] != '\0')
        print_log_tail(watch_log, 40);
    if (watch_pid != 0)
        uv_kill(watch_pid, SIGKILL);
    fflush(stderr);
    _Exit(1);
}

static void watchdog_start(void)
{
    static int64_t limit_s;
    static uv_thread_t thread;
    const char *v = getenv("SBT_TIMEOUT_S");
    if (uv_mutex_init(&watch_lock) != 0)
        abort();
    limit_s = v != NULL ? strtoll(v, NULL, 10) : 0;
    if (limit_s <= 3)
        return;
    if (uv_thread_create(&thread, watchdog, &limit_s) != 0)
        fprintf(stderr, "harness: cannot start the watchdog thread\n");
}

static uv_loop_t *the_loop;

uv_loop_t *sbt_loop(void)
{
    if (the_loop == NULL) {
        static uv_loop_t loop;
        assert_int_equal(uv_loop_init(&loop), 0);
        the_loop = &loop;
        uv_once(&watch_once, watchdog_start);
#ifdef SIGPIPE
        signal(SIGPIPE, SIG_IGN); /* a broker that went away must not kill the test */
#endif
    }
    return the_loop;
}

int64_t sbt_now_ms(void)
{
    return (int64_t)(uv_hrtime() / 1000000u);
}

void sbt__start_deadline(uv_timer_t *t, uv_timer_cb cb, int ms)
{
    uint64_t d = ms > 0 ? (uint64_t)ms : 1;
    uv_update_time(t->loop);
    uv_timer_start(t, cb, d, d);
}

static void on_handle_free(uv_handle_t *h)
{
    free(h);
}

static void on_pause_timer(uv_timer_t *t)
{
    *(int *)t->data = 1;
}

void sbt_poll_pause(int ms)
{
    uv_timer_t *t = malloc(sizeof(*t));
    int fired = 0;
    assert_non_null(t);
    uv_timer_init(sbt_loop(), t);
    t->data = &fired;
    sbt__start_deadline(t, on_pause_timer, ms);
    while (!fired)
        uv_run(sbt_loop(), UV_RUN_ONCE);
    uv_close((uv_handle_t *)t, on_handle_free);
    uv_run(sbt_loop(), UV_RUN_NOWAIT);
}

/* ---- files ---- */

void sbt_path(char *out, size_t n, const char *dir, const char *name)
{
    int w = snprintf(out, n, "%s/%s", dir, name);
    assert_true(w > 0 && (size_t)w < n);
}

void sbt_mkdtemp(char *out, size_t n, const char *name)
{
    char tmp[SBT_PATH_MAX], tmpl[SBT_PATH_MAX + 80];
    size_t len = sizeof(tmp);
    uv_fs_t req;
    int rc;
    assert_int_equal(uv_os_tmpdir(tmp, &len), 0);
    snprintf(tmpl, sizeof(tmpl), "%s/sbt-%.60s-XXXXXX", tmp, name);
    rc = uv_fs_mkdtemp(NULL, &req, tmpl, NULL);
    if (rc != 0)
        fail_msg("cannot create a temp dir %s: %s", tmpl, uv_strerror(rc));
    assert_true(strlen(req.path) < n);
    snprintf(out, n, "%s", req.path);
    uv_fs_req_cleanup(&req);
}

void sbt_rmtree(const char *path)
{
    uv_fs_t req;
    uv_dirent_t ent;
    char child[SBT_PATH_MAX];
    if (uv_fs_scandir(NULL, &req, path, 0, NULL) < 0) {
        uv_fs_req_cleanup(&req);
        uv_fs_unlink(NULL, &req, path, NULL);
        uv_fs_req_cleanup(&req);
        return;
    }
    while (uv_fs_scandir_next(&req, &ent) != UV_EOF) {
        uv_fs_t r2;
        snprintf(child, sizeof(child), "%s/%s", path, ent.name);
        if (ent.type == UV_DIRENT_DIR) {
            sbt_rmtree(child);
        } else {
            uv_fs_unlink(NULL, &r2, child, NULL);
            uv_fs_req_cleanup(&r2);
        }
    }
    uv_fs_req_cleanup(&req);
    uv_fs_rmdir(NULL, &req, path, NULL);
    uv_fs_req_cleanup(&req);
}

char *sbt_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t n = 0, cap = 0;
    if (f == NULL)
        return NULL;
    for (;;) {
        size_t got;
        if (cap - n < 65536) {
            char *nb = realloc(buf, cap + 65536 + 1);
            assert_non_null(nb);
            buf = nb;
            cap += 65536;
        }
        got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0)
            break;
    }
    fclose(f);
    if (buf == NULL) {
        buf = malloc(1);
        assert_non_null(buf);
    }
    buf[n] = '\0';
    if (len != NULL)
        *len = n;
    return buf;
}

void sbt_write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (f == NULL)
        fail_msg("cannot write %s", path);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

char *sbt_example(const char *name)
{
    char path[SBT_PATH_MAX];
    char *text;
    /* SB_TEST_DATA is <source>/tests/data. */
    snprintf(path, sizeof path, "%s/../../config/examples/%s", sbt_test_data(), name);
    text = sbt_read_file(path, NULL);
    if (text == NULL)
        fail_msg("cannot read %s", path);
    { /* a checkout with CRLF line ends reads the same */
        char *w = text;
        for (const char *r = text; *r != '\0'; r++)
            if (*r != '\r')
                *w++ = *r;
        *w = '\0';
    }
    return text;
}

void sbt_example_replace(char **text, const char *example, const char *from, const char *to)
{
    size_t fl = strlen(from), tl = strlen(to), n = 0;
    char *out, *o;
    const char *p, *hit;
    for (p = *text; (hit = strstr(p, from)) != NULL; p = hit + fl)
        n++;
    if (n == 0)
        fail_msg("config/examples/%s no longer has \"%s\": update its test", example, from);
    out = malloc(strlen(*text) + n * tl + 1);
    assert_non_null(out);
    for (o = out, p = *text; (hit = strstr(p, from)) != NULL; p = hit + fl) {
        memcpy(o, p, (size_t)(hit - p));
        o += hit - p;
        memcpy(o, to, tl);
        o += tl;
    }
    strcpy(o, p);
    free(*text);
    *text = out;
}

char *sbt_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    assert_non_null(d);
    memcpy(d, s, n);
    return d;
}

int sbt_count(const char *hay, const char *needle)
{
    int n = 0;
    size_t nl = strlen(needle);
    if (hay == NULL || nl == 0)
        return 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += nl)
        n++;
    return n;
}

void sbt_wait_file_text(const char *file, const char *needle, int count, int ms)
{
    int64_t deadline = sbt_now_ms() + ms;
    sbt_waiting_for("%s to show \"%s\" %d time(s)", file, needle, count);
    for (;;) {
        char *s = sbt_read_file(file, NULL);
        int n = s != NULL ? sbt_count(s, needle) : 0;
        if (n >= count) {
            free(s);
            return;
        }
        if (sbt_now_ms() > deadline)
            fail_msg("%s did not show \"%s\" %d time(s) within %d ms (saw %d):\n%s", file, needle,
                     count, ms, n, s != NULL ? s : "(missing)");
        free(s);
        sbt_poll_pause(10);
    }
}

const char *sbt_env(const char *name)
{
    const char *p = getenv(name);
    if (p == NULL || p[0] == '\0')
        fail_msg("%s is not set (ctest sets it)", name);
    return p;
}

/* ---- running the loop until a condition ---- */

typedef int (*cond_fn)(void *arg);

/* Runs the loop until cond(arg) or timeout_ms; returns cond's last value. */
static int run_until(cond_fn cond, void *arg, int timeout_ms)
{
    uv_timer_t *t;
    int fired = 0, ok;
    if (cond(arg))
        return 1;
    t = malloc(sizeof(*t));
    assert_non_null(t);
    uv_timer_init(sbt_loop(), t);
    t->data = &fired;
    sbt__start_deadline(t, on_pause_timer, timeout_ms);
    while (!(ok = cond(arg)) && !fired)
        uv_run(sbt_loop(), UV_RUN_ONCE);
    uv_close((uv_handle_t *)t, on_handle_free);
    uv_run(sbt_loop(), UV_RUN_NOWAIT);
    return ok;
}

/* ---- processes ---- */

static void on_proc_exit(uv_process_t *h, int64_t status, int sig)
{
    sbt_proc *p = h->data;
    p->running = 0;
    p->exit_status = status;
    p->term_signal = sig;
}

static void on_proc_closed(uv_handle_t *h)
{
    sbt_proc *p = h->data;
    p->spawned = 0;
}

static int proc_spawned(void *arg)
{
    return !((sbt_proc *)arg)->spawned;
}

void sbt_proc_release(sbt_proc *p)
{
    if (!p->spawned)
        return;
    if (p->running) {
        uv_process_kill(&p->h, SIGKILL);
        if (!sbt_proc_wait(p, SBT_STOP_MS))
            fail_msg("process %d did not die after SIGKILL", p->h.pid);
    }
    uv_close((uv_handle_t *)&p->h, on_proc_closed);
    run_until(proc_spawned, p, 1000);
}

static int spawn_once(sbt_proc *p, char *const *argv, const char *cwd, const char *out_path)
{
    uv_process_options_t opt;
    uv_stdio_container_t stdio[3];
    uv_fs_t req;
    int fd = -1, rc;

    sbt_proc_release(p);
    memset(p, 0, sizeof(*p));
    if (out_path != NULL) {
        fd = uv_fs_open(NULL, &req, out_path, UV_FS_O_WRONLY | UV_FS_O_CREAT | UV_FS_O_APPEND, 0644,
                        NULL);
        uv_fs_req_cleanup(&req);
        if (fd < 0)
            fail_msg("cannot open %s: %s", out_path, uv_strerror(fd));
    }
    memset(&opt, 0, sizeof(opt));
    opt.file = argv[0];
    opt.args = (char **)argv;
    opt.cwd = cwd;
    opt.exit_cb = on_proc_exit;
    opt.flags = UV_PROCESS_WINDOWS_HIDE;
    stdio[0].flags = UV_IGNORE;
    if (fd >= 0) {
        stdio[1].flags = UV_INHERIT_FD;
        stdio[1].data.fd = fd;
        stdio[2].flags = UV_INHERIT_FD;
        stdio[2].data.fd = fd;
    } else {
        stdio[1].flags = UV_INHERIT_FD;
        stdio[1].data.fd = 1;
        stdio[2].flags = UV_INHERIT_FD;
        stdio[2].data.fd = 2;
    }
    opt.stdio = stdio;
    opt.stdio_count = 3;
    p->h.data = p;
    rc = uv_spawn(sbt_loop(), &p->h, &opt);
    if (fd >= 0) {
        uv_fs_close(NULL, &req, fd, NULL);
        uv_fs_req_cleanup(&req);
    }
    p->spawned = 1; /* uv_spawn initialises the handle even when it fails */
    if (rc != 0) {
        uv_close((uv_handle_t *)&p->h, on_proc_closed);
        run_until(proc_spawned, p, 1000);
        return rc;
    }
    p->running = 1;
    return 0;
}

int sbt_spawn(sbt_proc *p, char *const *argv, const char *cwd, const char *out_path)
{
    int rc = spawn_once(p, argv, cwd, out_path);
    /* Wine's CreateProcess now and then fails with an unmapped error under
     * load (UV_UNKNOWN); a real failure (missing file, access) repeats. */
    for (int i = 0; rc == UV_UNKNOWN && i < 3; i++) {
        fprintf(stderr, "note: starting %s failed (%s); trying again\n", argv[0], uv_strerror(rc));
        rc = spawn_once(p, argv, cwd, out_path);
    }
    return rc;
}

static int proc_exited(void *arg)
{
    return !((sbt_proc *)arg)->running;
}

int sbt_proc_wait(sbt_proc *p, int timeout_ms)
{
    if (!p->spawned)
        return 1;
    return run_until(proc_exited, p, timeout_ms);
}

void sbt_proc_signal(sbt_proc *p, int sig)
{
    if (p->spawned && p->running) {
        int rc = uv_process_kill(&p->h, sig);
        if (rc != 0 && rc != UV_ESRCH)
            fail_msg("cannot send signal %d to %d: %s", sig, p->h.pid, uv_strerror(rc));
    }
}

/* Captured output of sbt_run. */
typedef struct capture {
    uv_pipe_t pipe;
    char *buf;
    size_t len;
    int done;
} capture;

static void on_capture_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    capture *c = h->data;
    char *n = realloc(c->buf, c->len + 65536 + 1);
    (void)suggested;
    assert_non_null(n);
    c->buf = n;
    *buf = uv_buf_init(c->buf + c->len, 65536);
}

static void on_capture_closed(uv_handle_t *h)
{
    ((capture *)h->data)->done = 1;
}

static void on_capture_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    capture *c = s->data;
    (void)buf;
    if (n > 0)
        c->len += (size_t)n;
    else if (n < 0)
        uv_close((uv_handle_t *)s, on_capture_closed);
}

typedef struct run_state {
    sbt_proc *p;
    capture *out, *err;
} run_state;

static int run_finished(void *arg)
{
    run_state *r = arg;
    return !r->p->running && r->out->done && r->err->done;
}

/* Closes a capture pipe that is still open. */
static void capture_close(capture *c)
{
    if (!uv_is_closing((uv_handle_t *)&c->pipe))
        uv_close((uv_handle_t *)&c->pipe, on_capture_closed);
}

static int captures_closed(void *arg)
{
    run_state *r = arg;
    return r->out->done && r->err->done;
}

static int run_retries; /* sbt_run's retries in progress */

int sbt_run(char *const *argv, const char *cwd, int timeout_ms, char **out, char **err)
{
    sbt_proc p;
    capture co, ce;
    uv_process_options_t opt;
    uv_stdio_container_t stdio[3];
    run_state rs = {&p, &co, &ce};
    int rc, finished;

    memset(&p, 0, sizeof(p));
    memset(&co, 0, sizeof(co));
    memset(&ce, 0, sizeof(ce));
    uv_pipe_init(sbt_loop(), &co.pipe, 0);
    uv_pipe_init(sbt_loop(), &ce.pipe, 0);
    co.pipe.data = &co;
    ce.pipe.data = &ce;
    memset(&opt, 0, sizeof(opt));
    opt.file = argv[0];
    opt.args = (char **)argv;
    opt.cwd = cwd;
    opt.exit_cb = on_proc_exit;
    opt.flags = UV_PROCESS_WINDOWS_HIDE;
    stdio[0].flags = UV_IGNORE;
    stdio[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    stdio[1].data.stream = (uv_stream_t *)&co.pipe;
    stdio[2].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    stdio[2].data.stream = (uv_stream_t *)&ce.pipe;
    opt.stdio = stdio;
    opt.stdio_count = 3;
    p.h.data = &p;
    rc = uv_spawn(sbt_loop(), &p.h, &opt);
    p.spawned = 1;
    if (rc == 0) {
        p.running = 1;
        uv_read_start((uv_stream_t *)&co.pipe, on_capture_alloc, on_capture_read);
        uv_read_start((uv_stream_t *)&ce.pipe, on_capture_alloc, on_capture_read);
    }
    sbt_waiting_for("%s to finish", argv[0]);
    finished = rc == 0 && run_until(run_finished, &rs, timeout_ms);
    /* Everything on the loop that points into this frame is closed before
     * it returns, even on failure. */
    sbt_proc_release(&p);
    capture_close(&co);
    capture_close(&ce);
    run_until(captures_closed, &rs, 1000);
    if (rc == UV_UNKNOWN && run_retries < 3) {
        /* Wine's CreateProcess flake, as in sbt_spawn */
        fprintf(stderr, "note: running %s failed (%s); trying again\n", argv[0], uv_strerror(rc));
        free(co.buf);
        free(ce.buf);
        run_retries++;
        rc = sbt_run(argv, cwd, timeout_ms, out, err);
        run_retries--;
        return rc;
    }
    if (rc != 0)
        fail_msg("cannot run %s: %s", argv[0], uv_strerror(rc));
    if (!finished)
        fail_msg("%s did not finish within %d ms", argv[0], timeout_ms);
    if (co.buf == NULL)
        co.buf = calloc(1, 1);
    if (ce.buf == NULL)
        ce.buf = calloc(1, 1);
    assert_non_null(co.buf);
    assert_non_null(ce.buf);
    co.buf[co.len] = '\0';
    ce.buf[ce.len] = '\0';
    if (out != NULL)
        *out = co.buf;
    else
        free(co.buf);
    if (err != NULL)
        *err = ce.buf;
    else
        free(ce.buf);
    return p.term_signal != 0 ? 128 + p.term_signal : (int)p.exit_status;
}

/* ---- the broker ---- */

static void pick_ports(sbt_broker *b, int attempt)
{
    unsigned pid = (unsigned)uv_os_getpid();
    for (int tries = 0; tries < 200; tries++, attempt++) {
        /* A per-process base spreads parallel tests over 20000..31999:
         * below the ephemeral ports (Linux 32768.., Windows 49152..), so
         * no client connection's local port takes a broker's port between
         * two starts of a test (seen: "address already in use"). */
        int base = 20000 + (int)((pid * 131u + (unsigned)attempt * 977u) % 12000u);
        int ok = 1;
        for (int i = 0; i < b->nports && ok; i++)
            ok = sbt_port_free(base + i);
        if (ok) {
            for (int i = 0; i < b->nports; i++)
                b->port[i] = base + i;
            return;
        }
    }
    fail_msg("no %d free consecutive ports found", b->nports);
}

void sbt_broker_init(sbt_broker *b, const char *name, int nports)
{
    assert_true(nports >= 1 && nports <= SBT_MAX_PORTS);
    snprintf(b->name, sizeof(b->name), "%s", name);
    sbt_mkdtemp(b->dir, sizeof(b->dir), name);
    sbt_path(b->data_dir, sizeof(b->data_dir), b->dir, "data");
    sbt_path(b->config_path, sizeof(b->config_path), b->dir, "switchboard.yaml");
    sbt_path(b->log_path, sizeof(b->log_path), b->dir, "broker.log");
    b->nports = nports;
    pick_ports(b, 0);
}

void sbt_broker_set(sbt_broker *b, int i, const char *value)
{
    assert_true(i >= 0 && i < SBT_MAX_VALUES);
    free(b->values[i]);
    b->values[i] = sbt_strdup(value);
    assert_non_null(b->values[i]);
}

/* Appends s to the growing buffer. */
static void append(char **buf, size_t *len, size_t *cap, const char *s, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t nc = *cap == 0 ? 4096 : *cap;
        char *nb;
        while (nc < *len + n + 1)
            nc *= 2;
        nb = realloc(*buf, nc);
        assert_non_null(nb);
        *buf = nb;
        *cap = nc;
    }
    memcpy(*buf + *len, s, n);
    *len += n;
    (*buf)[*len] = '\0';
}

static char *expand(sbt_broker *b, const char *tmpl)
{
    char *out = NULL, num[16];
    size_t len = 0, cap = 0;
    const char *p = tmpl;
    while (*p != '\0') {
        const char *val = NULL;
        size_t skip = 0;
        if (*p == '{') {
            if (strncmp(p, "{dir}", 5) == 0) {
                val = b->dir;
                skip = 5;
            } else if (strncmp(p, "{data}", 6) == 0) {
                val = b->data_dir;
                skip = 6;
            } else if (strncmp(p, "{helper}", 8) == 0) {
                val = sbt_helper();
                skip = 8;
            } else if (strncmp(p, "{port", 5) == 0 && p[5] >= '0' && p[5] <= '9' && p[6] == '}') {
                int i = p[5] - '0';
                if (i >= b->nports)
                    fail_msg("template uses {port%d} but only %d ports were picked", i, b->nports);
                snprintf(num, sizeof(num), "%d", b->port[i]);
                val = num;
                skip = 7;
            } else if (p[1] == 'v' && p[2] >= '0' && p[2] <= '9' && p[3] == '}') {
                val = b->values[p[2] - '0'];
                if (val == NULL)
                    fail_msg("template uses {v%c} which is not set", p[2]);
                skip = 4;
            }
        }
        if (val != NULL) {
            append(&out, &len, &cap, val, strlen(val));
            p += skip;
        } else {
            append(&out, &len, &cap, p, 1);
            p++;
        }
    }
    return out;
}

void sbt_broker_write_config(sbt_broker *b, const char *tmpl)
{
    char *text = expand(b, tmpl);
    sbt_write_file(b->config_path, text, strlen(text));
    free(text);
}

void sbt_broker_config(sbt_broker *b, const char *tmpl)
{
    free(b->tmpl);
    b->tmpl = sbt_strdup(tmpl);
    assert_non_null(b->tmpl);
    sbt_broker_write_config(b, tmpl);
}

static size_t log_size(sbt_broker *b)
{
    size_t n = 0;
    char *s = sbt_read_file(b->log_path, &n);
    free(s);
    return s != NULL ? n : 0;
}

/* 1 once the broker logged "ready" after `from` and answers ping. */
static int broker_ready(sbt_broker *b, size_t from)
{
    size_t n;
    char *log = sbt_read_file(b->log_path, &n);
    int ready = log != NULL && n > from && strstr(log + from, " ready: ") != NULL;
    sbt_conn *c;
    json_t *r;
    free(log);
    if (!ready)
        return 0;
    c = sbt_try_connect(b->port[0], 1000);
    if (c == NULL)
        return 0;
    r = sbt_call_json(c, json_pack("{s:s}", "op", "ping"), 2000);
    ready = r != NULL && strcmp(json_string_value(json_object_get(r, "op")), "pong") == 0;
    json_decref(r);
    sbt_close(c);
    return ready;
}

void sbt_broker_spawn(sbt_broker *b)
{
    char *argv[] = {(char *)sbt_switchboard(), "run", "--config", b->config_path, NULL};
    int rc = sbt_spawn(&b->proc, argv, b->dir, b->log_path);
    if (rc != 0)
        fail_msg("cannot start %s: %s", argv[0], uv_strerror(rc));
    watch_broker(b);
}

int sbt_broker_try_start(sbt_broker *b)
{
    int64_t deadline = sbt_now_ms() + SBT_READY_MS;
    size_t from = log_size(b);
    sbt_broker_spawn(b);
    b->log_mark = from;
    sbt_waiting_for("broker %s to answer ping on port %d", b->name, b->port[0]);
    for (;;) {
        if (!b->proc.running)
            return b->proc.term_signal != 0 ? 128 + b->proc.term_signal : (int)b->proc.exit_status;
        if (broker_ready(b, from)) {
            b->starts++;
            return -1;
        }
        if (sbt_now_ms() > deadline) {
            sbt_broker_print_log(b);
            fail_msg("broker not ready within %d ms", SBT_READY_MS);
        }
        sbt_poll_pause(10);
    }
}

/* 1 if the broker's log since `from` says another process held a port. */
static int lost_a_port(sbt_broker *b, size_t from)
{
    char *log = sbt_read_file(b->log_path, NULL);
    int in_use = log != NULL && strstr(log + from, "address already in use") != NULL;
    free(log);
    return in_use;
}

void sbt_broker_start(sbt_broker *b)
{
    for (int attempt = 1;; attempt++) {
        size_t from = log_size(b);
        int rc = sbt_broker_try_start(b);
        if (rc < 0)
            return;
        /* Only the first start may move to new ports: clients of a restart
         * know the old ones. */
        if (!lost_a_port(b, from) || b->starts > 0 || b->tmpl == NULL || attempt >= 5) {
            sbt_broker_print_log(b);
            fail_msg("broker exited with code %d during startup", rc);
        }
        pick_ports(b, attempt * 7);
        sbt_broker_write_config(b, b->tmpl);
    }
}

int sbt_broker_try_failing_start(sbt_broker *b, const char *tmpl)
{
    for (int attempt = 1;; attempt++) {
        size_t from = log_size(b);
        int rc = sbt_broker_try_start(b);
        if (rc <= 0 || attempt >= 5 || !lost_a_port(b, from))
            return rc;
        pick_ports(b, attempt * 7);
        sbt_broker_write_config(b, tmpl);
    }
}

void sbt_broker_stop(sbt_broker *b)
{
    int rc;
    assert_true(b->proc.running);
    sbt_waiting_for("broker %s to stop after the stop request", b->name);
    rc = sbt_proc_request_stop(&b->proc);
    if (rc != 0) {
        sbt_broker_print_log(b);
        fail_msg("cannot ask the broker to stop: %s", uv_strerror(rc));
    }
    if (!sbt_proc_wait(&b->proc, SBT_STOP_MS)) {
        sbt_broker_print_log(b);
        fail_msg("broker did not stop within %d ms of the stop request", SBT_STOP_MS);
    }
    if (b->proc.term_signal != 0 || b->proc.exit_status != 0) {
        sbt_broker_print_log(b);
        fail_msg("broker stopped with exit status %lld, signal %d (want 0, 0)",
                 (long long)b->proc.exit_status, b->proc.term_signal);
    }
}

void sbt_broker_kill(sbt_broker *b)
{
    sbt_proc_signal(&b->proc, SIGKILL);
    if (!sbt_proc_wait(&b->proc, SBT_STOP_MS))
        fail_msg("broker did not die after SIGKILL");
}

void sbt_broker_signal(sbt_broker *b, int sig)
{
    assert_true(b->proc.running);
    sbt_proc_signal(&b->proc, sig);
}

int sbt_broker_running(sbt_broker *b)
{
    return b->proc.spawned && b->proc.running;
}

char *sbt_broker_log(sbt_broker *b)
{
    char *s = sbt_read_file(b->log_path, NULL);
    if (s == NULL)
        s = calloc(1, 1);
    assert_non_null(s);
    return s;
}

void sbt_broker_mark_log(sbt_broker *b)
{
    b->log_mark = log_size(b);
}

char *sbt_broker_log_since(sbt_broker *b)
{
    size_t n;
    char *s = sbt_read_file(b->log_path, &n), *r;
    if (s == NULL || n < b->log_mark) {
        free(s);
        r = calloc(1, 1);
        assert_non_null(r);
        return r;
    }
    r = sbt_strdup(s + b->log_mark);
    free(s);
    assert_non_null(r);
    return r;
}

void sbt_broker_wait_log(sbt_broker *b, const char *needle, int count, int timeout_ms)
{
    int64_t deadline = sbt_now_ms() + timeout_ms;
    sbt_waiting_for("broker %s to log \"%s\" %d time(s)", b->name, needle, count);
    for (;;) {
        char *log = sbt_broker_log_since(b);
        int n = sbt_count(log, needle);
        free(log);
        if (n >= count)
            return;
        if (sbt_now_ms() > deadline) {
            sbt_broker_print_log(b);
            fail_msg("the broker log did not show \"%s\" %d time(s) within %d ms (saw %d)", needle,
                     count, timeout_ms, n);
        }
        sbt_poll_pause(10);
    }
}

void sbt_broker_print_log(sbt_broker *b)
{
    char *log = sbt_broker_log(b);
    fprintf(stderr, "----- broker log %s -----\n%s----- end of broker log -----\n", b->log_path,
            log);
    free(log);
}

void sbt_broker_cleanup(sbt_broker *b)
{
    watch_broker(NULL);
    if (b->proc.spawned) {
        if (b->proc.running)
            uv_process_kill(&b->proc.h, SIGKILL);
        sbt_proc_release(&b->proc);
    }
    if (b->dir[0] != '\0') {
        if (!b->passed) {
            sbt_broker_print_log(b);
            fprintf(stderr, "(test files kept in %s)\n", b->dir);
        } else if (getenv("SBT_KEEP") != NULL) {
            fprintf(stderr, "(SBT_KEEP: test files kept in %s)\n", b->dir);
        } else {
            sbt_rmtree(b->dir);
        }
    }
    for (int i = 0; i < SBT_MAX_VALUES; i++)
        free(b->values[i]);
    free(b->tmpl);
    memset(b, 0, sizeof(*b));
}

void sbt_apply_filter(void)
{
    const char *f = getenv("SBT_FILTER");
    if (f != NULL && f[0] != '\0')
        cmocka_set_test_filter(f);
}

int sbt_setup(void **state)
{
    sbt_broker *b = calloc(1, sizeof(*b));
    assert_non_null(b);
    *state = b;
    return 0;
}

int sbt_teardown(void **state)
{
    sbt_broker *b = *state;
    sbt_broker_cleanup(b);
    free(b);
    /* Close what a failed test left open (sockets are freed with their
     * helpers; this only drains pending closes). */
    uv_run(sbt_loop(), UV_RUN_NOWAIT);
    return 0;
}
