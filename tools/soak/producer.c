/* sbsoak's producers: jsonl (pipelined, sb_client) and MQTT (mosquitto_pub
 * per message); see soak.h. */
#include "tools/soak/soak.h"

#include "tools/client/client.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

/* Publishes in flight at once (jsonl). */
#define WINDOW 64
/* After the stop file appears, finishing what is in flight may take this long. */
#define STOP_GRACE_MS 10000
/* One mosquitto_pub may take this long before it is killed. */
#define MQTT_PUB_TIMEOUT_MS 10000

char soak_class(const char *mode, unsigned long long seq)
{
    if (strcmp(mode, "fb") == 0)
        return seq % 2 == 1 ? 'f' : 'b';
    return mode[0];
}

int soak_file_exists(const char *path)
{
    uv_fs_t req;
    int rc = uv_fs_stat(NULL, &req, path, NULL);
    uv_fs_req_cleanup(&req);
    return rc == 0;
}

static uint64_t now_ms(void)
{
    return uv_hrtime() / 1000000u;
}

/* ---- jsonl ---- */

int soak_jsonl_producer(int argc, char **argv)
{
    const char *id, *endpoint, *prefix, *mode, *ackpath, *stop;
    char line[512];
    unsigned long long next = 1, unacked = 1;
    uint64_t stop_deadline = 0;
    sb_client *c = NULL;
    sb_client_options o;
    sb_error err;
    FILE *acks;

    if (argc != 7) {
        fprintf(stderr, "usage: sbsoak producer ID ENDPOINT PREFIX MODE ACKFILE STOPFILE\n");
        return 2;
    }
    id = argv[1];
    endpoint = argv[2];
    prefix = argv[3];
    mode = argv[4];
    ackpath = argv[5];
    stop = argv[6];
    if (strcmp(mode, "f") != 0 && strcmp(mode, "b") != 0 && strcmp(mode, "fb") != 0) {
        fprintf(stderr, "producer %s: MODE must be f, b or fb\n", id);
        return 2;
    }
    acks = fopen(ackpath, "ab");
    if (acks == NULL) {
        fprintf(stderr, "producer %s: cannot open %s\n", id, ackpath);
        return 2;
    }
    sb_client_options_init(&o);
    o.connect_timeout_ms = 2000;
    for (;;) {
        json_t *r;
        int rc;
        if (stop_deadline == 0 && soak_file_exists(stop))
            stop_deadline = now_ms() + STOP_GRACE_MS;
        if (stop_deadline != 0 && (unacked == next || c == NULL || now_ms() > stop_deadline))
            break;
        if (c == NULL) {
            if (sb_client_connect(&c, endpoint, &o, &err) != 0) {
                c = NULL;
                uv_sleep(5); /* the broker is restarting: poll again */
                continue;
            }
            next = unacked; /* go back: publish the unacknowledged again */
        }
        while (stop_deadline == 0 && next - unacked < WINDOW) {
            int n = snprintf(line, sizeof(line),
                             "{\"op\":\"pub\",\"id\":%llu,\"topic\":\"%s/%s/%c\","
                             "\"payload\":\"%s:%llu\"}",
                             next, prefix, id, soak_class(mode, next), id, next);
            if (next >= SOAK_MAX_SEQ || n >= (int)sizeof(line) ||
                sb_client_write_line(c, line, (size_t)n, &err) != 0)
                goto broken;
            next++;
        }
        if (unacked == next)
            continue;
        rc = sb_client_read_json(c, &r, 15000, &err);
        while (rc == 0) {
            const char *op = json_string_value(json_object_get(r, "op"));
            json_t *rid = json_object_get(r, "id");
            if (op == NULL || strcmp(op, "puback") != 0 || !json_is_integer(rid) ||
                (unsigned long long)json_integer_value(rid) != unacked) {
                fprintf(stderr, "producer %s: unexpected reply for %llu: %s\n", id, unacked,
                        sb_client_last_line(c, NULL));
                json_decref(r);
                rc = SB_EPROTO;
                break;
            }
            fprintf(acks, "%llu\n", unacked);
            unacked++;
            json_decref(r);
            rc = sb_client_has_line(c) ? sb_client_read_json(c, &r, 0, &err) : 1;
        }
        fflush(acks); /* one batch of acknowledgements on disk */
        if (rc <= 0)
            goto broken;
        continue;
    broken:
        sb_client_free(c);
        c = NULL;
    }
    sb_client_free(c);
    fclose(acks);
    printf("producer %s: sent up to %llu, acknowledged up to %llu\n", id, next - 1, unacked - 1);
    return 0;
}

/* ---- a live consumer ---- */

/* Deliveries in flight to the consumer. */
#define CONSUMER_WINDOW 256

int soak_consumer(int argc, char **argv)
{
    const char *sub, *endpoint, *seenpath, *stop;
    char line[256];
    unsigned long long got = 0;
    sb_client *c = NULL;
    sb_client_options o;
    sb_error err;
    FILE *seen;

    if (argc != 5) {
        fprintf(stderr, "usage: sbsoak consumer SUB ENDPOINT SEENFILE STOPFILE\n");
        return 2;
    }
    sub = argv[1];
    endpoint = argv[2];
    seenpath = argv[3];
    stop = argv[4];
    seen = fopen(seenpath, "ab");
    if (seen == NULL) {
        fprintf(stderr, "consumer %s: cannot open %s\n", sub, seenpath);
        return 2;
    }
    sb_client_options_init(&o);
    o.connect_timeout_ms = 2000;
    while (!soak_file_exists(stop)) {
        json_t *m;
        const char *op, *payload;
        int rc, n;
        if (c == NULL) {
            if (sb_client_connect(&c, endpoint, &o, &err) != 0) {
                c = NULL;
                uv_sleep(5); /* the broker is restarting: poll again */
                continue;
            }
            n = snprintf(line, sizeof(line),
                         "{\"op\":\"sub\",\"id\":1,\"sub\":\"%s\",\"window\":%d}", sub,
                         CONSUMER_WINDOW);
            if (sb_client_write_line(c, line, (size_t)n, &err) != 0 ||
                sb_client_flush(c, &err) != 0)
                goto broken;
        }
        rc = sb_client_read_json(c, &m, 200, &err);
        if (rc == SB_ETIMEDOUT)
            continue;
        if (rc != 0)
            goto broken;
        op = json_string_value(json_object_get(m, "op"));
        payload = json_string_value(json_object_get(m, "payload"));
        if (op != NULL && strcmp(op, "msg") == 0 && payload != NULL) {
            fprintf(seen, "%s\n", payload);
            got++;
            n = snprintf(line, sizeof(line), "{\"op\":\"ack\",\"sub\":\"%s\",\"msg_id\":%lld}",
                         sub, (long long)json_integer_value(json_object_get(m, "msg_id")));
            rc = sb_client_write_line(c, line, (size_t)n, &err);
            /* what was seen is in the file before its acks leave */
            if (rc == 0 && !sb_client_has_line(c)) {
                fflush(seen);
                rc = sb_client_flush(c, &err);
            }
        }
        json_decref(m);
        if (rc == 0)
            continue;
    broken:
        sb_client_free(c);
        c = NULL;
    }
    sb_client_free(c);
    fclose(seen);
    printf("consumer %s: %llu deliveries acknowledged\n", sub, got);
    return 0;
}

/* ---- mqtt ---- */

typedef struct pub_run {
    uv_process_t proc;
    uv_timer_t timer;
    int exited, timed_out;
    int64_t status;
    int signal;
} pub_run;

static void on_pub_exit(uv_process_t *p, int64_t status, int signal)
{
    pub_run *r = p->data;
    r->exited = 1;
    r->status = status;
    r->signal = signal;
    uv_timer_stop(&r->timer);
}

static void on_pub_timeout(uv_timer_t *t)
{
    pub_run *r = t->data;
    r->timed_out = 1;
    uv_process_kill(&r->proc, SIGKILL);
}

/* Runs argv to its end (killed after MQTT_PUB_TIMEOUT_MS). Returns its exit status, -1 if it
 * was killed, -2 if it could not run. */
static int run_once(uv_loop_t *loop, char **argv)
{
    uv_process_options_t o;
    uv_stdio_container_t stdio[3];
    pub_run r;
    int rc;

    memset(&r, 0, sizeof(r));
    memset(&o, 0, sizeof(o));
    /* Its complaints while the broker restarts would fill the log. */
    stdio[0].flags = UV_IGNORE;
    stdio[1].flags = UV_IGNORE;
    stdio[2].flags = UV_IGNORE;
    o.file = argv[0];
    o.args = argv;
    o.exit_cb = on_pub_exit;
    o.stdio = stdio;
    o.stdio_count = 3;
    r.proc.data = &r;
    r.timer.data = &r;
    uv_timer_init(loop, &r.timer);
    rc = uv_spawn(loop, &r.proc, &o);
    if (rc != 0) {
        fprintf(stderr, "cannot run %s: %s\n", argv[0], uv_strerror(rc));
        uv_close((uv_handle_t *)&r.timer, NULL);
        uv_close((uv_handle_t *)&r.proc, NULL);
        uv_run(loop, UV_RUN_DEFAULT);
        return -2;
    }
    uv_timer_start(&r.timer, on_pub_timeout, MQTT_PUB_TIMEOUT_MS, 0);
    while (!r.exited)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&r.timer, NULL);
    uv_close((uv_handle_t *)&r.proc, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    if (r.timed_out || r.signal != 0)
        return -1;
    return (int)r.status;
}

int soak_mqtt_producer(int argc, char **argv)
{
    const char *id, *host, *port, *prefix, *ackpath, *stop, *pub;
    char topic[256], payload[64], client_id[64];
    unsigned long long seq = 1, attempts = 0;
    uv_loop_t loop;
    FILE *acks;

    if (argc != 8) {
        fprintf(stderr, "usage: sbsoak mqtt-producer ID HOST PORT PREFIX ACKFILE STOPFILE "
                        "MOSQUITTO_PUB\n");
        return 2;
    }
    id = argv[1];
    host = argv[2];
    port = argv[3];
    prefix = argv[4];
    ackpath = argv[5];
    stop = argv[6];
    pub = argv[7];
    acks = fopen(ackpath, "ab");
    if (acks == NULL) {
        fprintf(stderr, "mqtt producer %s: cannot open %s\n", id, ackpath);
        return 2;
    }
    uv_loop_init(&loop);
    snprintf(topic, sizeof(topic), "%s/%s/f", prefix, id);
    snprintf(client_id, sizeof(client_id), "sbsoak-%s-%d", id, (int)uv_os_getpid());
    while (!soak_file_exists(stop) && seq < SOAK_MAX_SEQ) {
        char *args[] = {(char *)pub, "-h",      (char *)host, "-p",  (char *)port, "-q",    "1",
                        "-i",        client_id, "-t",         topic, "-m",         payload, NULL};
        int rc;
        snprintf(payload, sizeof(payload), "%s:%llu", id, seq);
        attempts++;
        rc = run_once(&loop, args);
        if (rc == -2) {
            fclose(acks);
            uv_loop_close(&loop);
            return 2;
        }
        if (rc == 0) {
            /* PUBACK came: committed. */
            fprintf(acks, "%llu\n", seq);
            fflush(acks);
            seq++;
        } else {
            uv_sleep(20); /* the broker is restarting: the same message again */
        }
    }
    fclose(acks);
    uv_loop_close(&loop);
    printf("mqtt producer %s: %llu acknowledged in %llu runs of %s\n", id, seq - 1, attempts, pub);
    return 0;
}
