/*
 * ring_consumer: a program that takes deliveries from a Switchboard out
 * ring, as any C program using sb_ring.h would. The filemap tests run it in
 * a process of its own.
 *
 *   ring_consumer NAME [--count N] [--timeout MS] [--log FILE]
 *                 [--stall-at N] [--open-wait MS]
 *
 * Every delivery is logged as one line, "TOPIC PAYLOAD" (with " R" for a
 * redelivery), flushed, then released (acknowledged). It exits 0 after N
 * deliveries (default: runs until no delivery came for --timeout ms, then
 * exits 3). --stall-at N reads delivery N, logs "stalled" and sleeps
 * forever without releasing it (a consumer to kill in mid-record).
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

int main(int argc, char **argv)
{
    const char *name = NULL;
    long count = -1, stall_at = -1;
    int timeout = 10000, open_wait = 0, rc;
    FILE *out = stdout;
    sb_ring *r = NULL;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--count") == 0 && v != NULL)
            count = atol(argv[++i]);
        else if (strcmp(a, "--timeout") == 0 && v != NULL)
            timeout = atoi(argv[++i]);
        else if (strcmp(a, "--open-wait") == 0 && v != NULL)
            open_wait = atoi(argv[++i]);
        else if (strcmp(a, "--stall-at") == 0 && v != NULL)
            stall_at = atol(argv[++i]);
        else if (strcmp(a, "--log") == 0 && v != NULL) {
            out = fopen(argv[++i], "ab");
            if (out == NULL) {
                perror(argv[i]);
                return 1;
            }
        } else if (a[0] != '-' && name == NULL)
            name = a;
        else {
            fprintf(stderr, "ring_consumer: bad argument %s\n", a);
            return 2;
        }
    }
    if (name == NULL)
        return 2;
    for (int waited = 0;; waited += 50) {
        rc = sb_ring_open(&r, name, SB_RING_CONSUMER);
        if ((rc != SB_RING_ENOTFOUND && rc != SB_RING_EBUSY) || waited >= open_wait)
            break;
        sleep_ms(50);
    }
    if (rc != SB_RING_OK) {
        fprintf(stderr, "ring_consumer: sb_ring_open %s: %s\n", name, sb_ring_strerror(rc));
        return 1;
    }
    if (sb_ring_recovered(r)) {
        fprintf(out, "recovered\n");
        fflush(out);
    }
    for (long n = 0; count < 0 || n < count; n++) {
        sb_ring_msg m;
        rc = sb_ring_next(r, &m, timeout);
        if (rc == SB_RING_ETIMEDOUT) {
            sb_ring_close(r);
            return 3;
        }
        if (rc != SB_RING_OK) {
            fprintf(stderr, "ring_consumer: sb_ring_next: %s\n", sb_ring_strerror(rc));
            return 1;
        }
        fprintf(out, "%.*s %.*s%s\n", (int)m.topic_len, m.topic, (int)m.payload_len,
                (const char *)m.payload, m.redelivery ? " R" : "");
        fflush(out);
        if (n == stall_at) {
            fprintf(out, "stalled\n");
            fflush(out);
            for (;;)
                sleep_ms(1000);
        }
        if ((rc = sb_ring_release(r, &m)) != SB_RING_OK) {
            fprintf(stderr, "ring_consumer: sb_ring_release: %s\n", sb_ring_strerror(rc));
            return 1;
        }
    }
    sb_ring_close(r);
    return 0;
}
