/*
 * sbsoak: a soak test of the broker's promise that nothing acknowledged is
 * lost, for operators and for long runs (tests/integration/test_crash.c is
 * the short one inside the test suite).
 *
 *   sbsoak run [--duration 60s] [--kills 10] [--producers 2] [--mqtt N]
 *              [--switchboard PATH] [--mosquitto-pub PATH] [--dir DIR]
 *              [--seed N] [--no-early-kills] [--consume] [--keep]
 *
 * It writes a config (a jsonl and an MQTT listener on free loopback ports,
 * an fsync and a batched route), starts `switchboard run` on a fresh data
 * directory, and starts the producers (soak.h), each a process of its own:
 * jsonl producers alternating fsync and batched messages, and MQTT ones
 * (`mosquitto_pub -q 1`, if it is found or given). For the duration it
 * kills the broker (SIGKILL; TerminateProcess on Windows) at random points,
 * `--kills` times, and after every other kill kills the restarted broker
 * once more within its first 100 ms (while it opens and loads the store),
 * then starts it again. With --consume, a consumer per queue acknowledges
 * deliveries all along (soak.h). At the end it stops the producers (and
 * consumers), drains both routes' queues over jsonl and checks, per
 * producer:
 *
 *   - every sequence number the broker acknowledged was delivered at least
 *     once, to a consumer or in the drain (batched ones too: a process kill
 *     must not lose them);
 *   - first deliveries in the drain come in increasing order (per queue).
 *
 * It prints the figures and exits 0 if both held, 1 if not (naming the
 * first missing messages), 2 on a usage or setup error. The working
 * directory (config, data, logs, ack files) is removed after a pass unless
 * --keep or --dir is given. The kill points come from a seeded PRNG:
 * --seed repeats a run.
 */
#include "tools/soak/soak.h"

#include "tools/client/client.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#ifdef _WIN32
#define EXE ".exe"
#else
#define EXE ""
#endif

#define MAX_PRODUCERS 16
#define PATH_MAX_ 1024
/* The restarted broker answers ping within this, or the run fails. */
#define READY_MS 60000
/* Producers finish what is in flight within this after the stop file. */
#define PRODUCER_STOP_MS 30000
/* Draining fails if no new message comes for this long while the queue is
 * not empty. */
#define DRAIN_STALL_MS 20000
/* An early kill comes this soon after a start, at most. */
#define EARLY_KILL_MS 100

typedef struct child {
    uv_process_t h;
    int spawned, running;
    int64_t status;
    int signal;
} child;

/* A live consumer of one queue (--consume). */
typedef struct consumer {
    const char *sub;
    char seenpath[PATH_MAX_], logpath[PATH_MAX_];
    child proc;
} consumer;

typedef struct producer {
    char id[16];
    int mqtt;
    const char *mode; /* jsonl: fb or b; mqtt: f */
    char ackpath[PATH_MAX_], logpath[PATH_MAX_];
    child proc;
    unsigned char *acked; /* [seq], up to max_acked */
    unsigned long long max_acked, acked_count;
    unsigned char *seen; /* per queue being checked */
    unsigned long long last_first;
} producer;

static struct {
    /* options */
    const char *switchboard, *mosquitto_pub, *dir_opt;
    int64_t duration_ms;
    int kills, njsonl, nmqtt, early, keep, consume;
    uint64_t seed;
    /* the run */
    uv_loop_t *loop;
    char dir[PATH_MAX_], data[PATH_MAX_], config[PATH_MAX_], log[PATH_MAX_], stop[PATH_MAX_];
    char endpoint[64];
    int port, mqtt_port;
    child broker;
    producer prods[MAX_PRODUCERS];
    int nprods;
    consumer cons[2]; /* soak-fsync, soak-batched */
    uint64_t rng;
    int starts, early_kills;
} S;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: sbsoak run [options]   kill the broker under load, check nothing acked is "
            "lost\n"
            "  --duration D        how long the load runs (60s; 90, 10m, 1h)\n"
            "  --kills N           kills in that time, at random points (10)\n"
            "  --producers N       jsonl producers (2)\n"
            "  --mqtt N            mosquitto_pub producers (1 if mosquitto_pub is found, else 0)\n"
            "  --switchboard PATH  the broker (default: switchboard" EXE " next to sbsoak, else "
            "on PATH)\n"
            "  --mosquitto-pub P   the MQTT client (default: mosquitto_pub on PATH)\n"
            "  --dir DIR           work here (kept) instead of a new temporary directory\n"
            "  --seed N            repeat the kill points of an earlier run\n"
            "  --no-early-kills    do not also kill restarted brokers while they start\n"
            "  --consume           a consumer per queue acknowledges deliveries all along\n"
            "  --keep              keep the temporary directory after a pass\n"
            "       sbsoak producer ...        (internal: a jsonl producer, see soak.h)\n"
            "       sbsoak mqtt-producer ...   (internal: an MQTT producer)\n"
            "       sbsoak consumer ...        (internal: a live consumer)\n");
}

/* ---- small helpers ---- */

static int64_t now_ms(void)
{
    return (int64_t)(uv_hrtime() / 1000000u);
}

static uint32_t rnd(void)
{
    S.rng ^= S.rng << 13;
    S.rng ^= S.rng >> 7;
    S.rng ^= S.rng << 17;
    return (uint32_t)(S.rng >> 11);
}

static void join(char *out, size_t n, const char *dir, const char *name)
{
    int len = snprintf(out, n, "%s/%s", dir, name);
    if (len < 0 || (size_t)len >= n) {
        fprintf(stderr, "sbsoak: path too long: %s/%s\n", dir, name);
        exit(2);
    }
}

/* "90", "90s", "500ms", "10m", "1h" -> ms; -1 if malformed. */
static int64_t parse_duration(const char *s)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || v < 0)
        return -1;
    if (*end == '\0' || strcmp(end, "s") == 0)
        return (int64_t)(v * 1000);
    if (strcmp(end, "ms") == 0)
        return (int64_t)v;
    if (strcmp(end, "m") == 0)
        return (int64_t)(v * 60000);
    if (strcmp(end, "h") == 0)
        return (int64_t)(v * 3600000);
    return -1;
}

static int parse_count(const char *s, int max)
{
    char *end;
    long v = strtol(s, &end, 10);
    return end != s && *end == '\0' && v >= 0 && v <= max ? (int)v : -1;
}

/* A program on PATH (a copy), or NULL. */
static char *find_on_path(const char *name)
{
    const char *path = getenv("PATH");
#ifdef _WIN32
    const char sep = ';';
#else
    const char sep = ':';
#endif
    while (path != NULL && *path != '\0') {
        const char *end = strchr(path, sep);
        size_t len = end != NULL ? (size_t)(end - path) : strlen(path);
        char full[PATH_MAX_];
        if (len > 0 && len < sizeof(full) - strlen(name) - 6) {
            snprintf(full, sizeof(full), "%.*s/%s%s", (int)len, path, name, EXE);
            if (soak_file_exists(full)) {
                char *copy = malloc(strlen(full) + 1);
                if (copy != NULL)
                    strcpy(copy, full);
                return copy;
            }
        }
        path = end != NULL ? end + 1 : NULL;
    }
    return NULL;
}

/* The last `lines` lines of a file, to stderr. */
static void print_tail(const char *title, const char *path, int lines)
{
    FILE *f = fopen(path, "rb");
    char *text;
    long len;
    const char *p;
    int n = 0;
    if (f == NULL)
        return;
    fseek(f, 0, SEEK_END);
    len = ftell(f);
    fseek(f, 0, SEEK_SET);
    text = malloc((size_t)len + 1);
    if (text == NULL || fread(text, 1, (size_t)len, f) != (size_t)len) {
        free(text);
        fclose(f);
        return;
    }
    fclose(f);
    text[len] = '\0';
    for (p = text + len; p > text; p--)
        if (p[-1] == '\n' && ++n > lines)
            break;
    fprintf(stderr, "----- %s (%s), last lines -----\n%s", title, path, p);
    free(text);
}

static int pick_port(void)
{
    uv_tcp_t t;
    struct sockaddr_in a;
    struct sockaddr_storage got;
    int len = sizeof(got), port = -1;
    uv_tcp_init(S.loop, &t);
    uv_ip4_addr("127.0.0.1", 0, &a);
    if (uv_tcp_bind(&t, (const struct sockaddr *)&a, 0) == 0 &&
        uv_tcp_getsockname(&t, (struct sockaddr *)&got, &len) == 0)
        port = ntohs(((struct sockaddr_in *)&got)->sin_port);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(S.loop, UV_RUN_NOWAIT);
    return port;
}

/* ---- processes ---- */

static void on_child_exit(uv_process_t *h, int64_t status, int signal)
{
    child *c = h->data;
    c->running = 0;
    c->status = status;
    c->signal = signal;
}

static void on_timer(uv_timer_t *t)
{
    *(int *)t->data = 1;
}

/* Runs the loop for ms milliseconds (children's exits are noticed). */
static void pause_ms(int64_t ms)
{
    uv_timer_t t;
    int fired = 0;
    if (ms <= 0) {
        uv_run(S.loop, UV_RUN_NOWAIT);
        return;
    }
    uv_timer_init(S.loop, &t);
    t.data = &fired;
    /* Repeating: libuv runs due timers before it polls, and a one-shot
     * timer that fired there would leave the poll with nothing to wake it
     * (only the children's handles are active). */
    uv_update_time(S.loop);
    uv_timer_start(&t, on_timer, (uint64_t)ms, (uint64_t)ms);
    while (!fired)
        uv_run(S.loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(S.loop, UV_RUN_NOWAIT);
}

/* Spawns argv with stdout and stderr appended to logpath. Returns 0 or a
 * libuv error. */
static int spawn(child *c, char **argv, const char *logpath)
{
    uv_process_options_t o;
    uv_stdio_container_t stdio[3];
    uv_fs_t req;
    int fd, rc;

    fd = uv_fs_open(NULL, &req, logpath, UV_FS_O_WRONLY | UV_FS_O_CREAT | UV_FS_O_APPEND, 0644,
                    NULL);
    uv_fs_req_cleanup(&req);
    if (fd < 0)
        return fd;
    memset(&o, 0, sizeof(o));
    memset(c, 0, sizeof(*c));
    stdio[0].flags = UV_IGNORE;
    stdio[1].flags = UV_INHERIT_FD;
    stdio[1].data.fd = fd;
    stdio[2].flags = UV_INHERIT_FD;
    stdio[2].data.fd = fd;
    o.file = argv[0];
    o.args = argv;
    o.exit_cb = on_child_exit;
    o.stdio = stdio;
    o.stdio_count = 3;
    c->h.data = c;
    rc = uv_spawn(S.loop, &c->h, &o);
    uv_fs_close(NULL, &req, fd, NULL);
    uv_fs_req_cleanup(&req);
    if (rc != 0) {
        uv_close((uv_handle_t *)&c->h, NULL);
        uv_run(S.loop, UV_RUN_NOWAIT);
        return rc;
    }
    c->spawned = 1;
    c->running = 1;
    return 0;
}

/* Waits for c to exit (ms; -1 forever); 1 if it did. */
static int wait_exit(child *c, int64_t ms)
{
    int64_t deadline = now_ms() + ms;
    while (c->running && (ms < 0 || now_ms() < deadline))
        pause_ms(10);
    return !c->running;
}

/* Releases an exited child's handle. */
static void release(child *c)
{
    if (!c->spawned)
        return;
    if (c->running) {
        uv_process_kill(&c->h, SIGKILL);
        wait_exit(c, -1);
    }
    uv_close((uv_handle_t *)&c->h, NULL);
    uv_run(S.loop, UV_RUN_NOWAIT);
    c->spawned = 0;
}

/* ---- the broker ---- */

static int write_config(void)
{
    FILE *f = fopen(S.config, "wb");
    if (f == NULL) {
        fprintf(stderr, "sbsoak: cannot write %s\n", S.config);
        return -1;
    }
    fprintf(f,
            "# written by sbsoak\n"
            "broker:\n"
            "  data_dir: '%s'\n"
            "  admin: { endpoint: 'off' }\n"
            "  store: { commit_max_delay_us: 500 }\n"
            "adapters:\n"
            "  - name: clients\n"
            "    type: tcp\n"
            "    listen: 127.0.0.1:%d\n"
            "    protocol: jsonl\n"
            "  - name: mqtt\n"
            "    type: tcp\n"
            "    listen: 127.0.0.1:%d\n"
            "    protocol: mqtt\n"
            "routes:\n"
            "  - name: soak-fsync\n"
            "    from: soak/+/f\n"
            "    durability: fsync\n"
            "  - name: soak-batched\n"
            "    from: soak/+/b\n"
            "    durability: batched\n",
            S.data, S.port, S.mqtt_port);
    return fclose(f) == 0 ? 0 : -1;
}

static int broker_spawn(void)
{
    char *argv[] = {(char *)S.switchboard, "run", "--config", S.config, NULL};
    int rc = spawn(&S.broker, argv, S.log);
    if (rc != 0)
        fprintf(stderr, "sbsoak: cannot run %s: %s\n", S.switchboard, uv_strerror(rc));
    return rc;
}

/* 1 if the broker answers a jsonl ping now. */
static int answers_ping(void)
{
    sb_client_options o;
    sb_client *c;
    sb_error err;
    json_t *r = NULL;
    int ok = 0;
    sb_client_options_init(&o);
    o.connect_timeout_ms = 200;
    if (sb_client_connect(&c, S.endpoint, &o, &err) != 0)
        return 0;
    if (sb_client_write_line(c, "{\"op\":\"ping\",\"id\":1}", 20, &err) == 0 &&
        sb_client_read_json(c, &r, 2000, &err) == 0) {
        const char *op = json_string_value(json_object_get(r, "op"));
        ok = op != NULL && strcmp(op, "pong") == 0;
        json_decref(r);
    }
    sb_client_free(c);
    return ok;
}

/* Starts the broker and waits until it answers. */
static int broker_start(void)
{
    int64_t deadline = now_ms() + READY_MS;
    if (broker_spawn() != 0)
        return -1;
    for (;;) {
        if (!S.broker.running) {
            fprintf(stderr, "sbsoak: the broker exited at start (status %lld, signal %d)\n",
                    (long long)S.broker.status, S.broker.signal);
            print_tail("broker log", S.log, 30);
            return -1;
        }
        if (answers_ping()) {
            S.starts++;
            return 0;
        }
        if (now_ms() > deadline) {
            fprintf(stderr, "sbsoak: the broker did not answer within %d s\n", READY_MS / 1000);
            print_tail("broker log", S.log, 30);
            return -1;
        }
        pause_ms(20);
    }
}

static void broker_kill(void)
{
    uv_process_kill(&S.broker.h, SIGKILL);
    wait_exit(&S.broker, -1);
    release(&S.broker);
}

/* ---- producers ---- */

static int start_producer(producer *p, const char *self)
{
    char port[16];
    snprintf(port, sizeof(port), "%d", S.mqtt_port);
    if (p->mqtt) {
        char *argv[] = {
            (char *)self, "mqtt-producer",         p->id, "127.0.0.1", port, "soak", p->ackpath,
            S.stop,       (char *)S.mosquitto_pub, NULL};
        return spawn(&p->proc, argv, p->logpath);
    } else {
        char *argv[] = {(char *)self,    "producer", p->id,  S.endpoint, "soak",
                        (char *)p->mode, p->ackpath, S.stop, NULL};
        return spawn(&p->proc, argv, p->logpath);
    }
}

static int read_acks(producer *p)
{
    FILE *f = fopen(p->ackpath, "rb");
    char line[64];
    if (f == NULL)
        return -1;
    p->acked = calloc(SOAK_MAX_SEQ / 8 + 1, 1); /* a bit per sequence number */
    if (p->acked == NULL) {
        fclose(f);
        return -1;
    }
    while (fgets(line, sizeof(line), f) != NULL) {
        unsigned long long seq = strtoull(line, NULL, 10);
        if (seq < 1 || seq >= SOAK_MAX_SEQ)
            continue;
        if (!(p->acked[seq / 8] & (1u << (seq % 8))))
            p->acked_count++;
        p->acked[seq / 8] |= (unsigned char)(1u << (seq % 8));
        if (seq > p->max_acked)
            p->max_acked = seq;
    }
    fclose(f);
    return 0;
}

static int bit(const unsigned char *set, unsigned long long seq)
{
    return (set[seq / 8] >> (seq % 8)) & 1;
}

/* ---- the check ---- */

static int queue_depth(sb_client *stats, const char *name, int64_t *out)
{
    json_t *req = json_pack("{s:s}", "op", "stats");
    json_t *r = NULL, *qs, *q;
    sb_error err;
    size_t i;
    int rc = -1;
    if (req == NULL)
        return -1;
    rc = sb_client_request(stats, &r, req, 10000, &err);
    json_decref(req);
    if (rc != 0)
        return -1;
    rc = -1;
    qs = json_object_get(r, "queues");
    json_array_foreach(qs, i, q)
    {
        const char *n = json_string_value(json_object_get(q, "name"));
        if (n != NULL && strcmp(n, name) == 0) {
            *out = json_integer_value(json_object_get(q, "depth"));
            rc = 0;
        }
    }
    json_decref(r);
    return rc;
}

static producer *producer_of(const char *id, size_t len)
{
    for (int i = 0; i < S.nprods; i++)
        if (strlen(S.prods[i].id) == len && strncmp(S.prods[i].id, id, len) == 0)
            return &S.prods[i];
    return NULL;
}

/* Marks what a live consumer of a queue saw (its seen file) as delivered;
 * returns how many, or -1. */
static long long read_seen(const consumer *cs)
{
    FILE *f = fopen(cs->seenpath, "rb");
    char line[128];
    long long n = 0;
    if (f == NULL)
        return -1;
    while (fgets(line, sizeof(line), f) != NULL) {
        char *colon = strchr(line, ':');
        producer *p = colon != NULL ? producer_of(line, (size_t)(colon - line)) : NULL;
        unsigned long long seq = colon != NULL ? strtoull(colon + 1, NULL, 10) : 0;
        if (p == NULL || seq < 1 || seq >= SOAK_MAX_SEQ)
            continue;
        p->seen[seq / 8] |= (unsigned char)(1u << (seq % 8));
        n++;
    }
    fclose(f);
    return n;
}

/* Drains sub and checks it against the producers' acknowledgements (and
 * what cs, a live consumer of it, saw; NULL: none). Returns the number of
 * problems (0: it held). */
static unsigned long long drain_and_check(const char *sub, char cls, const consumer *cs)
{
    long long live = 0;
    sb_client *c = NULL, *stats = NULL;
    sb_client_options o;
    sb_error err;
    char line[256];
    unsigned long long firsts = 0, dups = 0, missing = 0, problems = 0, acked = 0;
    int64_t progress = now_ms(); /* when the last new message came */
    int n;

    sb_client_options_init(&o);
    for (int i = 0; i < S.nprods; i++) {
        S.prods[i].seen = calloc(SOAK_MAX_SEQ / 8 + 1, 1);
        S.prods[i].last_first = 0;
        if (S.prods[i].seen == NULL)
            return 1;
    }
    if (cs != NULL && (live = read_seen(cs)) < 0) {
        fprintf(stderr, "sbsoak: cannot read %s\n", cs->seenpath);
        problems++;
        goto done;
    }
    if (sb_client_connect(&c, S.endpoint, &o, &err) != 0 ||
        sb_client_connect(&stats, S.endpoint, &o, &err) != 0) {
        fprintf(stderr, "sbsoak: %s\n", err.msg);
        problems++;
        goto done;
    }
    n = snprintf(line, sizeof(line), "{\"op\":\"sub\",\"id\":1,\"sub\":\"%s\",\"window\":2000}",
                 sub);
    sb_client_write_line(c, line, (size_t)n, &err);
    for (;;) {
        json_t *m = NULL;
        const char *op, *payload, *colon;
        producer *p;
        unsigned long long seq;
        int rc = sb_client_read_json(c, &m, 500, &err);
        if (rc == SB_ETIMEDOUT) {
            int64_t depth = -1;
            if (queue_depth(stats, sub, &depth) != 0) {
                fprintf(stderr, "sbsoak: %s: cannot read its depth\n", sub);
                problems++;
                break;
            }
            if (depth == 0)
                break; /* drained */
            if (now_ms() - progress > DRAIN_STALL_MS) {
                fprintf(stderr, "sbsoak: %s: %lld messages left, but nothing new for %d s\n", sub,
                        (long long)depth, DRAIN_STALL_MS / 1000);
                problems++;
                break;
            }
            continue;
        }
        if (rc != 0) {
            fprintf(stderr, "sbsoak: %s: reading deliveries: %s\n", sub, err.msg);
            problems++;
            break;
        }
        op = json_string_value(json_object_get(m, "op"));
        if (op != NULL && strcmp(op, "subscribed") == 0) {
            json_decref(m);
            continue;
        }
        payload = json_string_value(json_object_get(m, "payload"));
        if (op == NULL || strcmp(op, "msg") != 0 || payload == NULL ||
            (colon = strchr(payload, ':')) == NULL ||
            (p = producer_of(payload, (size_t)(colon - payload))) == NULL ||
            (seq = strtoull(colon + 1, NULL, 10)) < 1 || seq >= SOAK_MAX_SEQ) {
            fprintf(stderr, "sbsoak: %s: unexpected line %s\n", sub, sb_client_last_line(c, NULL));
            json_decref(m);
            problems++;
            break;
        }
        if (soak_class(p->mode, seq) != cls) {
            fprintf(stderr, "sbsoak: %s: %s belongs to the other queue\n", sub, payload);
            problems++;
        }
        if (!bit(p->seen, seq)) {
            if (seq <= p->last_first) {
                if (problems < 10)
                    fprintf(stderr, "sbsoak: %s: first delivery of %s after that of %s:%llu\n", sub,
                            payload, p->id, p->last_first);
                problems++;
            }
            p->last_first = seq;
            p->seen[seq / 8] |= (unsigned char)(1u << (seq % 8));
            firsts++;
            progress = now_ms();
        } else {
            dups++;
        }
        n = snprintf(line, sizeof(line), "{\"op\":\"ack\",\"sub\":\"%s\",\"msg_id\":%lld}", sub,
                     (long long)json_integer_value(json_object_get(m, "msg_id")));
        sb_client_write_line(c, line, (size_t)n, &err);
        json_decref(m);
    }
    sb_client_flush(c, &err);
    for (int i = 0; i < S.nprods; i++) {
        producer *p = &S.prods[i];
        for (unsigned long long seq = 1; seq <= p->max_acked; seq++) {
            if (!bit(p->acked, seq) || soak_class(p->mode, seq) != cls)
                continue;
            acked++;
            if (!bit(p->seen, seq)) {
                if (missing < 10)
                    fprintf(stderr, "sbsoak: %s: acknowledged %s:%llu was never delivered\n", sub,
                            p->id, seq);
                missing++;
            }
        }
    }
    printf("%-13s %llu acknowledged, %llu delivered (%llu redelivered), %llu acknowledged "
           "missing",
           sub, acked, firsts, dups, missing);
    if (cs != NULL)
        printf("; %lld deliveries to the live consumer before the drain", live);
    printf("\n");
    problems += missing;
done:
    sb_client_free(c);
    sb_client_free(stats);
    for (int i = 0; i < S.nprods; i++) {
        free(S.prods[i].seen);
        S.prods[i].seen = NULL;
    }
    return problems;
}

/* ---- setup and teardown ---- */

static int make_dir(void)
{
    uv_fs_t req;
    int rc;
    if (S.dir_opt != NULL) {
        snprintf(S.dir, sizeof(S.dir), "%s", S.dir_opt);
        rc = uv_fs_mkdir(NULL, &req, S.dir, 0755, NULL);
        uv_fs_req_cleanup(&req);
        if (rc != 0 && rc != UV_EEXIST) {
            fprintf(stderr, "sbsoak: cannot create %s: %s\n", S.dir, uv_strerror(rc));
            return -1;
        }
    } else {
        char tmp[PATH_MAX_], tmpl[PATH_MAX_ + 16];
        size_t len = sizeof(tmp);
        if (uv_os_tmpdir(tmp, &len) != 0)
            snprintf(tmp, sizeof(tmp), ".");
        snprintf(tmpl, sizeof(tmpl), "%s/sbsoak-XXXXXX", tmp);
        rc = uv_fs_mkdtemp(NULL, &req, tmpl, NULL);
        if (rc != 0) {
            uv_fs_req_cleanup(&req);
            fprintf(stderr, "sbsoak: cannot create a directory in %s: %s\n", tmp, uv_strerror(rc));
            return -1;
        }
        snprintf(S.dir, sizeof(S.dir), "%s", req.path);
        uv_fs_req_cleanup(&req);
    }
    join(S.data, sizeof(S.data), S.dir, "data");
    join(S.config, sizeof(S.config), S.dir, "switchboard.yaml");
    join(S.log, sizeof(S.log), S.dir, "switchboard.log");
    join(S.stop, sizeof(S.stop), S.dir, "stop");
    return 0;
}

static void remove_tree(const char *path)
{
    uv_fs_t req;
    uv_dirent_t ent;
    if (uv_fs_scandir(NULL, &req, path, 0, NULL) >= 0) {
        while (uv_fs_scandir_next(&req, &ent) != UV_EOF) {
            char child_path[PATH_MAX_];
            uv_fs_t r2;
            join(child_path, sizeof(child_path), path, ent.name);
            if (ent.type == UV_DIRENT_DIR) {
                remove_tree(child_path);
            } else {
                uv_fs_unlink(NULL, &r2, child_path, NULL);
                uv_fs_req_cleanup(&r2);
            }
        }
    }
    uv_fs_req_cleanup(&req);
    uv_fs_rmdir(NULL, &req, path, NULL);
    uv_fs_req_cleanup(&req);
}

static int parse_args(int argc, char **argv)
{
    S.duration_ms = 60000;
    S.kills = 10;
    S.njsonl = 2;
    S.nmqtt = -1;
    S.early = 1;
    S.seed = uv_hrtime();
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int takes = 1;
        if (strcmp(a, "--no-early-kills") == 0) {
            S.early = 0;
            takes = 0;
        } else if (strcmp(a, "--keep") == 0) {
            S.keep = 1;
            takes = 0;
        } else if (strcmp(a, "--consume") == 0) {
            S.consume = 1;
            takes = 0;
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            exit(0);
        } else if (v == NULL) {
            fprintf(stderr, "sbsoak: %s needs a value (or is unknown)\n", a);
            return -1;
        } else if (strcmp(a, "--duration") == 0) {
            if ((S.duration_ms = parse_duration(v)) < 1000) {
                fprintf(stderr, "sbsoak: --duration %s: expected at least 1s (90, 90s, 10m)\n", v);
                return -1;
            }
        } else if (strcmp(a, "--kills") == 0) {
            if ((S.kills = parse_count(v, 100000)) < 0) {
                fprintf(stderr, "sbsoak: --kills %s: expected 0..100000\n", v);
                return -1;
            }
        } else if (strcmp(a, "--producers") == 0) {
            if ((S.njsonl = parse_count(v, MAX_PRODUCERS / 2)) < 0) {
                fprintf(stderr, "sbsoak: --producers %s: expected 0..%d\n", v, MAX_PRODUCERS / 2);
                return -1;
            }
        } else if (strcmp(a, "--mqtt") == 0) {
            if ((S.nmqtt = parse_count(v, MAX_PRODUCERS / 2)) < 0) {
                fprintf(stderr, "sbsoak: --mqtt %s: expected 0..%d\n", v, MAX_PRODUCERS / 2);
                return -1;
            }
        } else if (strcmp(a, "--switchboard") == 0) {
            S.switchboard = v;
        } else if (strcmp(a, "--mosquitto-pub") == 0) {
            S.mosquitto_pub = v;
        } else if (strcmp(a, "--dir") == 0) {
            S.dir_opt = v;
        } else if (strcmp(a, "--seed") == 0) {
            S.seed = strtoull(v, NULL, 10);
        } else {
            fprintf(stderr, "sbsoak: unknown option %s\n", a);
            return -1;
        }
        i += takes;
    }
    if (S.njsonl + (S.nmqtt > 0 ? S.nmqtt : 0) == 0) {
        fprintf(stderr, "sbsoak: no producers\n");
        return -1;
    }
    return 0;
}

/* Fills in the programs not given: the broker next to sbsoak, else on
 * PATH; mosquitto_pub on PATH. */
static void find_programs(char *self)
{
    static char broker[PATH_MAX_];
    if (S.switchboard == NULL) {
        char *slash = strrchr(self, '/');
#ifdef _WIN32
        char *bslash = strrchr(self, '\\');
        if (bslash != NULL && (slash == NULL || bslash > slash))
            slash = bslash;
#endif
        if (slash != NULL) {
            snprintf(broker, sizeof(broker), "%.*s/switchboard" EXE, (int)(slash - self), self);
            if (soak_file_exists(broker))
                S.switchboard = broker;
        }
        if (S.switchboard == NULL)
            S.switchboard = "switchboard" EXE;
    }
    if (S.mosquitto_pub == NULL && S.nmqtt != 0)
        S.mosquitto_pub = find_on_path("mosquitto_pub");
    if (S.nmqtt < 0)
        S.nmqtt = S.mosquitto_pub != NULL ? 1 : 0;
    if (S.nmqtt > 0 && S.mosquitto_pub == NULL)
        S.mosquitto_pub = "mosquitto_pub";
}

/* ---- the run ---- */

static int check_producers(void)
{
    for (int i = 0; i < S.nprods; i++)
        if (!S.prods[i].proc.running) {
            fprintf(stderr, "sbsoak: producer %s exited early (status %lld)\n", S.prods[i].id,
                    (long long)S.prods[i].proc.status);
            print_tail("producer log", S.prods[i].logpath, 20);
            return -1;
        }
    return 0;
}

/* Kills the broker at random points for the duration, restarting it. */
static int load_and_kill(void)
{
    int64_t t0 = now_ms(), end = t0 + S.duration_ms;
    int64_t gap = S.duration_ms / (S.kills + 1);
    for (int k = 1; k <= S.kills; k++) {
        /* the next point: uniformly in the k-th slice of the duration */
        int64_t at = t0 + gap * k - gap / 2 + (gap > 0 ? (int64_t)(rnd() % (uint64_t)gap) : 0);
        if (at > end)
            at = end;
        pause_ms(at - now_ms());
        if (check_producers() != 0)
            return -1;
        if (!S.broker.running) {
            fprintf(stderr, "sbsoak: the broker exited by itself (status %lld, signal %d)\n",
                    (long long)S.broker.status, S.broker.signal);
            print_tail("broker log", S.log, 30);
            return -1;
        }
        broker_kill();
        printf("kill %d at %.1f s\n", k, (double)(now_ms() - t0) / 1000);
        fflush(stdout);
        if (S.early && k % 2 == 0) {
            /* and once more while it opens and loads the store */
            int early = (int)(rnd() % EARLY_KILL_MS);
            if (broker_spawn() != 0)
                return -1;
            pause_ms(early);
            broker_kill();
            S.early_kills++;
        }
        if (broker_start() != 0)
            return -1;
    }
    pause_ms(end - now_ms());
    return check_producers();
}

static int run(int argc, char **argv)
{
    char self[PATH_MAX_];
    size_t len = sizeof(self);
    unsigned long long problems = 0;
    int64_t t0;
    int rc = 2;

    if (parse_args(argc, argv) != 0) {
        usage(stderr);
        return 2;
    }
    if (uv_exepath(self, &len) != 0) {
        fprintf(stderr, "sbsoak: cannot find its own path\n");
        return 2;
    }
    find_programs(self);
    S.rng = S.seed != 0 ? S.seed : 1;
    S.loop = uv_default_loop();
    if (make_dir() != 0)
        return 2;
    S.port = pick_port();
    S.mqtt_port = pick_port();
    if (S.port <= 0 || S.mqtt_port <= 0 || S.port == S.mqtt_port) {
        fprintf(stderr, "sbsoak: cannot find free loopback ports\n");
        return 2;
    }
    snprintf(S.endpoint, sizeof(S.endpoint), "tcp:127.0.0.1:%d", S.port);
    if (write_config() != 0)
        return 2;
    printf("sbsoak: %.0f s, %d kills%s, %d jsonl and %d mqtt producers, seed %llu\n"
           "  broker %s\n  work dir %s\n",
           (double)S.duration_ms / 1000, S.kills, S.early ? " (+ early ones)" : "", S.njsonl,
           S.nmqtt, (unsigned long long)S.seed, S.switchboard, S.dir);
    fflush(stdout);
    if (broker_start() != 0)
        goto out;

    for (int i = 0; i < S.njsonl + S.nmqtt; i++) {
        producer *p = &S.prods[S.nprods++];
        char name[64];
        p->mqtt = i >= S.njsonl;
        if (p->mqtt)
            snprintf(p->id, sizeof(p->id), "m%d", i - S.njsonl);
        else
            snprintf(p->id, sizeof(p->id), "p%d", i);
        /* the first jsonl producer mixes both classes, the others batched */
        p->mode = p->mqtt ? "f" : i == 0 ? "fb" : "b";
        snprintf(name, sizeof(name), "acks-%s.txt", p->id);
        join(p->ackpath, sizeof(p->ackpath), S.dir, name);
        snprintf(name, sizeof(name), "producer-%s.log", p->id);
        join(p->logpath, sizeof(p->logpath), S.dir, name);
        remove(p->ackpath);
        if (start_producer(p, self) != 0) {
            fprintf(stderr, "sbsoak: cannot start producer %s\n", p->id);
            goto out;
        }
    }

    for (int i = 0; S.consume && i < 2; i++) {
        consumer *cs = &S.cons[i];
        char name[64];
        cs->sub = i == 0 ? "soak-fsync" : "soak-batched";
        snprintf(name, sizeof(name), "seen-%s.txt", cs->sub);
        join(cs->seenpath, sizeof(cs->seenpath), S.dir, name);
        snprintf(name, sizeof(name), "consumer-%s.log", cs->sub);
        join(cs->logpath, sizeof(cs->logpath), S.dir, name);
        remove(cs->seenpath);
        {
            char *cargv[] = {self, "consumer", (char *)cs->sub, S.endpoint, cs->seenpath, S.stop,
                             NULL};
            if (spawn(&cs->proc, cargv, cs->logpath) != 0) {
                fprintf(stderr, "sbsoak: cannot start the consumer of %s\n", cs->sub);
                goto out;
            }
        }
    }

    t0 = now_ms();
    if (load_and_kill() != 0) {
        rc = 1;
        goto out;
    }
    {
        FILE *f = fopen(S.stop, "wb");
        if (f != NULL)
            fclose(f);
    }
    for (int i = 0; i < S.nprods; i++) {
        producer *p = &S.prods[i];
        if (!wait_exit(&p->proc, PRODUCER_STOP_MS) || p->proc.status != 0) {
            fprintf(stderr, "sbsoak: producer %s did not stop cleanly\n", p->id);
            print_tail("producer log", p->logpath, 20);
            rc = 1;
            goto out;
        }
        release(&p->proc);
        if (read_acks(p) != 0) {
            fprintf(stderr, "sbsoak: cannot read %s\n", p->ackpath);
            rc = 1;
            goto out;
        }
        printf("producer %-3s (%s, %s): %llu acknowledged\n", p->id, p->mqtt ? "mqtt" : "jsonl",
               strcmp(p->mode, "fb") == 0 ? "fsync+batched"
               : p->mode[0] == 'f'        ? "fsync"
                                          : "batched",
               p->acked_count);
        if (p->acked_count == 0) {
            fprintf(stderr, "sbsoak: producer %s got nothing acknowledged\n", p->id);
            print_tail("producer log", p->logpath, 20);
            problems++;
        }
    }
    for (int i = 0; S.consume && i < 2; i++) {
        consumer *cs = &S.cons[i];
        if (!wait_exit(&cs->proc, PRODUCER_STOP_MS) || cs->proc.status != 0) {
            fprintf(stderr, "sbsoak: the consumer of %s did not stop cleanly\n", cs->sub);
            print_tail("consumer log", cs->logpath, 20);
            rc = 1;
            goto out;
        }
        release(&cs->proc);
    }
    printf("load ran %.1f s; %d kills, %d more while starting; %d broker starts\n",
           (double)(now_ms() - t0) / 1000, S.kills, S.early_kills, S.starts);
    problems += drain_and_check("soak-fsync", 'f', S.consume ? &S.cons[0] : NULL);
    problems += drain_and_check("soak-batched", 'b', S.consume ? &S.cons[1] : NULL);
    rc = problems == 0 ? 0 : 1;
    printf("result: %s\n", rc == 0 ? "PASS (nothing acknowledged was lost)" : "FAIL");
    if (rc != 0)
        printf("  repeat with --seed %llu; logs in %s\n", (unsigned long long)S.seed, S.dir);

out:
    for (int i = 0; i < S.nprods; i++)
        release(&S.prods[i].proc);
    for (int i = 0; i < 2; i++)
        release(&S.cons[i].proc);
    if (S.broker.spawned) {
        uv_process_kill(&S.broker.h, SIGTERM);
        if (!wait_exit(&S.broker, 15000))
            uv_process_kill(&S.broker.h, SIGKILL);
        release(&S.broker);
    }
    for (int i = 0; i < S.nprods; i++)
        free(S.prods[i].acked);
    if (rc == 0 && !S.keep && S.dir_opt == NULL)
        remove_tree(S.dir);
    else if (rc != 0)
        fprintf(stderr, "sbsoak: the work directory is kept: %s\n", S.dir);
    uv_loop_close(S.loop);
    return rc;
}

int main(int argc, char **argv)
{
    /* Progress lines as they happen, also into a pipe (ctest). The Windows
     * CRT has no line buffering (and rejects a size of 0 for it). */
#ifdef _WIN32
    setvbuf(stdout, NULL, _IONBF, 0);
#else
    setvbuf(stdout, NULL, _IOLBF, 0);
#endif
    if (argc >= 2 && strcmp(argv[1], "producer") == 0)
        return soak_jsonl_producer(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "mqtt-producer") == 0)
        return soak_mqtt_producer(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "consumer") == 0)
        return soak_consumer(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "run") == 0)
        return run(argc, argv);
    usage(argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) ? stdout
                                                                                      : stderr);
    return 2;
}
