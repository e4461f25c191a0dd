/*
 * sbring: the example program of sb_ring.h, Switchboard's shared-memory
 * ring (docs/ring.md), and a handy tool. It is all a C program needs to
 * publish through a `filemap` adapter's in ring or to consume its out ring:
 * this file and the one header, nothing to link (Linux: -pthread).
 *
 *   sbring pub NAME TOPIC [MESSAGE...] [--header KEY=VALUE]... [--no-wait]
 *                                      [--timeout MS]
 *       One record per MESSAGE (or per line of standard input when there
 *       is none). Each is waited for until the broker committed it (with
 *       its routes' durability: on disk for fsync), unless --no-wait.
 *   sbring sub NAME [--count N] [--timeout MS] [--json]
 *       Prints each delivery ("TOPIC PAYLOAD"), then releases it, which
 *       acknowledges it to the broker. Stops after N, or after MS without
 *       one (default: waits forever).
 *   sbring info NAME
 *       What the ring holds: direction, capacity, use, cursors, counters.
 *
 * Exit status: 0; 1 when the ring refused or failed (the reason on stderr);
 * 2 for a usage error.
 *
 * Build: cc -o sbring sbring.c -pthread     (MinGW: gcc -o sbring.exe sbring.c)
 */
#include "sb_ring.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int usage(void)
{
    fprintf(stderr, "usage: sbring pub NAME TOPIC [MESSAGE...] [--header K=V]... [--no-wait] "
                    "[--timeout MS]\n"
                    "       sbring sub NAME [--count N] [--timeout MS]\n"
                    "       sbring info NAME\n");
    return 2;
}

static int fail(const char *what, int rc)
{
    fprintf(stderr, "sbring: %s: %s\n", what, sb_ring_strerror(rc));
    return 1;
}

/* Publishes one record and, unless no_wait, waits for its commit. */
static int publish(sb_ring *r, const char *topic, const sb_ring_kv *headers, size_t n,
                   const char *msg, size_t len, int no_wait, int timeout)
{
    uint64_t seq;
    int rc = sb_ring_write_headers(r, topic, headers, n, msg, len, timeout, &seq);
    if (rc != SB_RING_OK)
        return fail("write", rc);
    if (no_wait)
        return 0;
    rc = sb_ring_wait_committed(r, seq, timeout);
    if (rc != SB_RING_OK)
        return fail("commit", rc);
    return 0;
}

static int cmd_pub(int argc, char **argv)
{
    sb_ring_kv headers[16];
    size_t nheaders = 0;
    const char *name = NULL, *topic = NULL;
    int no_wait = 0, timeout = 5000, nmsgs = 0, rc = 0;
    sb_ring *r;

    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--no-wait") == 0) {
            no_wait = 1;
        } else if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc) {
            timeout = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--header") == 0 && i + 1 < argc && nheaders < 16) {
            char *eq = strchr(argv[++i], '=');
            if (eq == NULL)
                return usage();
            *eq = '\0';
            headers[nheaders].key = argv[i];
            headers[nheaders].value = eq + 1;
            nheaders++;
        } else if (name == NULL) {
            name = argv[i];
        } else if (topic == NULL) {
            topic = argv[i];
        } else {
            argv[nmsgs++] = argv[i]; /* messages, in place */
        }
    }
    if (name == NULL || topic == NULL)
        return usage();
    if ((rc = sb_ring_open(&r, name, SB_RING_PRODUCER)) != SB_RING_OK)
        return fail(name, rc);
    if (nmsgs > 0) {
        for (int i = 0; i < nmsgs && rc == 0; i++)
            rc = publish(r, topic, headers, nheaders, argv[i], strlen(argv[i]), no_wait, timeout);
    } else {
        char line[65536];
        while (rc == 0 && fgets(line, sizeof(line), stdin) != NULL) {
            size_t len = strcspn(line, "\r\n");
            rc = publish(r, topic, headers, nheaders, line, len, no_wait, timeout);
        }
    }
    sb_ring_close(r);
    return rc;
}

static int cmd_sub(int argc, char **argv)
{
    const char *name = NULL;
    long count = -1;
    int timeout = -1, rc;
    sb_ring *r;

    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--count") == 0 && i + 1 < argc)
            count = atol(argv[++i]);
        else if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc)
            timeout = atoi(argv[++i]);
        else if (name == NULL)
            name = argv[i];
        else
            return usage();
    }
    if (name == NULL)
        return usage();
    if ((rc = sb_ring_open(&r, name, SB_RING_CONSUMER)) != SB_RING_OK)
        return fail(name, rc);
    if (sb_ring_recovered(r))
        fprintf(stderr, "sbring: the previous consumer died; what it had not released comes "
                        "again\n");
    for (long n = 0; count < 0 || n < count; n++) {
        sb_ring_msg m;
        rc = sb_ring_next(r, &m, timeout);
        if (rc == SB_RING_ETIMEDOUT) {
            rc = SB_RING_OK;
            break;
        }
        if (rc != SB_RING_OK)
            break;
        printf("%.*s %.*s\n", (int)m.topic_len, m.topic, (int)m.payload_len,
               (const char *)m.payload);
        fflush(stdout);
        rc = sb_ring_release(r, &m); /* acknowledged: the broker removes it */
        if (rc != SB_RING_OK)
            break;
    }
    sb_ring_close(r);
    return rc == SB_RING_OK ? 0 : fail("sub", rc);
}

static int cmd_info(int argc, char **argv)
{
    static const char *const states[] = {"?", "open", "quarantined", "retired"};
    sb_ring_info i;
    sb_ring *r;
    int rc;
    if (argc != 1)
        return usage();
    if ((rc = sb_ring_open(&r, argv[0], SB_RING_OBSERVER)) != SB_RING_OK)
        return fail(argv[0], rc);
    sb_ring_get_info(r, &i);
    printf("ring %s: %s, %s\n", argv[0], i.direction == SB_RING_IN ? "in" : "out",
           states[i.state <= 3 ? i.state : 0]);
    printf("  capacity %llu bytes, %llu in use; max payload %u bytes; reclaim after %u ms\n",
           (unsigned long long)i.capacity, (unsigned long long)(i.reserve - i.commit),
           i.max_payload, i.reclaim_ms);
    printf("  cursors: reserve %llu, read %llu, commit %llu\n", (unsigned long long)i.reserve,
           (unsigned long long)i.read, (unsigned long long)i.commit);
    printf("  broker pid %u, consumer pid %u\n", i.owner_pid, i.consumer_pid);
    printf("  reclaimed %llu, refused %llu, lock recoveries %llu\n",
           (unsigned long long)i.reclaimed, (unsigned long long)i.refused,
           (unsigned long long)i.lock_recoveries);
    sb_ring_close(r);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return usage();
    if (strcmp(argv[1], "pub") == 0)
        return cmd_pub(argc - 2, argv + 2);
    if (strcmp(argv[1], "sub") == 0)
        return cmd_sub(argc - 2, argv + 2);
    if (strcmp(argv[1], "info") == 0)
        return cmd_info(argc - 2, argv + 2);
    return usage();
}
