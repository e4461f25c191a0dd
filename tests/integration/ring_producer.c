/*
 * ring_producer: a program that publishes through a Switchboard ring, as any
 * C program using sb_ring.h would (it links nothing of Switchboard). The
 * filemap tests run it in processes of their own.
 *
 *   ring_producer NAME [--count N] [--topic T] [--id ID] [--size BYTES]
 *                 [--header K=V] [--wait] [--timeout MS] [--log FILE]
 *                 [--stall-at N] [--open-wait MS] [--bad-topic]
 *
 * Record i (0-based) goes to topic T (default "ring/ID") with payload
 * "ID-<i>" padded with '.' to BYTES. With --wait each record's commit is
 * awaited (sb_ring_wait_committed) and "ID-<i>" is appended to the log (a
 * line, flushed) once the broker confirmed it: what the log lists, the
 * broker must deliver whatever happens to it afterwards. Without --wait
 * records are fired and forgotten ("ID-<i>" logged after the write).
 * --stall-at N reserves record N, writes "stalled" to the log and sleeps
 * forever without committing it (a producer to kill in mid-record).
 * --open-wait MS retries opening while the ring does not exist yet.
 * Exit status: 0, or 1 with the failing call and its result on stderr.
 */
#include "adapters/filemap/sb_ring.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _WIN32
#include <windows.h>
#define sleep_ms(ms) Sleep(ms)
#else
#include <time.h>
static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}
#endif

static FILE *logf_;

static void note(const char *line)
{
    FILE *f = logf_ != NULL ? logf_ : stdout;
    fprintf(f, "%s\n", line);
    fflush(f);
}

int main(int argc, char **argv)
{
    const char *name = NULL, *topic = NULL, *id = "p";
    long count = 1, size = 0, stall_at = -1;
    int wait = 0, timeout = 10000, open_wait = 0, bad_topic = 0;
    sb_ring_kv headers[8];
    size_t nheaders = 0;
    char topic_buf[256], *payload = NULL;
    sb_ring *r = NULL;
    int rc, status = 0;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--count") == 0 && v != NULL)
            count = atol(argv[++i]);
        else if (strcmp(a, "--topic") == 0 && v != NULL)
            topic = argv[++i];
        else if (strcmp(a, "--id") == 0 && v != NULL)
            id = argv[++i];
        else if (strcmp(a, "--size") == 0 && v != NULL)
            size = atol(argv[++i]);
        else if (strcmp(a, "--wait") == 0)
            wait = 1;
        else if (strcmp(a, "--timeout") == 0 && v != NULL)
            timeout = atoi(argv[++i]);
        else if (strcmp(a, "--open-wait") == 0 && v != NULL)
            open_wait = atoi(argv[++i]);
        else if (strcmp(a, "--stall-at") == 0 && v != NULL)
            stall_at = atol(argv[++i]);
        else if (strcmp(a, "--bad-topic") == 0)
            bad_topic = 1;
        else if (strcmp(a, "--log") == 0 && v != NULL) {
            logf_ = fopen(argv[++i], "ab");
            if (logf_ == NULL) {
                perror(argv[i]);
                return 1;
            }
        } else if (strcmp(a, "--header") == 0 && v != NULL && nheaders < 8) {
            char *kv = argv[++i], *eq = strchr(kv, '=');
            if (eq == NULL)
                return 2;
            *eq = '\0';
            headers[nheaders].key = kv;
            headers[nheaders].value = eq + 1;
            nheaders++;
        } else if (a[0] != '-' && name == NULL)
            name = a;
        else {
            fprintf(stderr, "ring_producer: bad argument %s\n", a);
            return 2;
        }
    }
    if (name == NULL)
        return 2;
    if (topic == NULL) {
        snprintf(topic_buf, sizeof(topic_buf), "ring/%s", id);
        topic = topic_buf;
    }

    for (int waited = 0;; waited += 50) {
        rc = sb_ring_open(&r, name, SB_RING_PRODUCER);
        if (rc != SB_RING_ENOTFOUND || waited >= open_wait)
            break;
        sleep_ms(50);
    }
    if (rc != SB_RING_OK) {
        fprintf(stderr, "ring_producer: sb_ring_open %s: %s (system error %d)\n", name,
                sb_ring_strerror(rc), r != NULL ? sb_ring_syserror(r) : 0);
        status = 1;
        goto out;
    }
    payload = malloc((size_t)size + 64);
    if (payload == NULL) {
        status = 1;
        goto out;
    }
    for (long i = 0; i < count; i++) {
        sb_ring_slot slot;
        uint64_t seq = 0;
        char line[128];
        size_t len = (size_t)snprintf(payload, 64, "%s-%ld", id, i);
        while ((long)len < size)
            payload[len++] = '.';
        if (i == stall_at) {
            rc = sb_ring_reserve(r, &slot, topic, 0, len, timeout);
            if (rc != SB_RING_OK) {
                fprintf(stderr, "ring_producer: sb_ring_reserve: %s\n", sb_ring_strerror(rc));
                status = 1;
                goto out;
            }
            memcpy(slot.payload, payload, len / 2); /* half a record, then nothing */
            note("stalled");
            for (;;)
                sleep_ms(1000);
        }
        if (bad_topic && i == 0) {
            /* A record the broker must refuse (it passes the client's own
             * checks: a $-topic is the broker's to publish). */
            rc = sb_ring_write(r, "$SYS/forged", payload, len, timeout, &seq);
        } else {
            rc = sb_ring_write_headers(r, topic, headers, nheaders, payload, len, timeout, &seq);
        }
        if (rc != SB_RING_OK) {
            fprintf(stderr, "ring_producer: record %ld: sb_ring_write: %s\n", i,
                    sb_ring_strerror(rc));
            status = 1;
            goto out;
        }
        if (wait) {
            rc = sb_ring_wait_committed(r, seq, timeout);
            if (rc != SB_RING_OK) {
                fprintf(stderr, "ring_producer: record %ld: sb_ring_wait_committed: %s\n", i,
                        sb_ring_strerror(rc));
                snprintf(line, sizeof(line), "%s-%ld %s", id, i, sb_ring_strerror(rc));
                note(line);
                if (rc != SB_RING_EREFUSED) {
                    status = 1;
                    goto out;
                }
                continue;
            }
        }
        snprintf(line, sizeof(line), "%s-%ld", id, i);
        note(line);
    }
    note("done");
out:
    /* freed on every path: a leak report would change the exit code */
    free(payload);
    if (r != NULL)
        sb_ring_close(r);
    if (logf_ != NULL)
        fclose(logf_);
    return status;
}
