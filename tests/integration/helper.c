/*
 * sbt_helper: a tiny child program for the exec adapter tests, so they need
 * no shell and run the same on Windows.
 *   sbt_helper emit N PREFIX   print PREFIX-1 .. PREFIX-N (one per line), then
 *                              wait for stdin to end and exit 0
 *   sbt_helper sink FILE       append everything read from stdin to FILE
 *                              (flushed per read) until stdin ends; exit 0
 *   sbt_helper fail CODE TEXT  print TEXT to stdout and "TEXT (stderr)" to
 *                              stderr, exit with CODE
 *   sbt_helper say FILE LINE.. print the LINEs, then append stdin to FILE
 *                              until it ends (a jsonl client: requests out,
 *                              replies into FILE); exit 0
 *   sbt_helper flood N PREFIX  print PREFIX-1 .. PREFIX-N and exit 0 at once
 *   sbt_helper gate GATE FILE  wait until the file GATE exists (polling), then
 *                              append stdin to FILE line by line until it
 *                              ends; exit 0 (a sink that holds its deliveries
 *                              back until the test opens the gate)
 *   sbt_helper pubs FILE N TOPIC
 *                              a jsonl producer that waits for each answer:
 *                              publish p-1 .. p-N to TOPIC one at a time,
 *                              appending each reply line to FILE; exit 0 at
 *                              the end or when stdin ends
 *   sbt_helper burst FILE N LINE..
 *                              count this run in FILE, print each LINE in a
 *                              write of its own and exit at once: 1 for the
 *                              first N-1 runs, 0 for the Nth (a short-lived
 *                              child whose last line races its exit)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _WIN32
#include <fcntl.h>
#include <io.h>
#include <windows.h>
#else
#include <time.h>
#endif

/* Appends stdin to path, flushed per line, until stdin ends. */
static int copy_stdin(const char *path)
{
    char buf[1];
    FILE *f = fopen(path, "ab");
    if (f == NULL) {
        fprintf(stderr, "cannot open %s\n", path);
        return 2;
    }
    /* read() semantics: fread would wait for a full buffer. */
    setvbuf(stdin, NULL, _IONBF, 0);
    while (fread(buf, 1, 1, stdin) == 1) {
        fwrite(buf, 1, 1, f);
        if (buf[0] == '\n')
            fflush(f);
    }
    fclose(f);
    return 0;
}

/* Adds one to the number in path and returns the new value (0: error). */
static int count_run(const char *path)
{
    int n = 0;
    FILE *f = fopen(path, "rb");
    if (f != NULL) {
        if (fscanf(f, "%d", &n) != 1)
            n = 0;
        fclose(f);
    }
    f = fopen(path, "wb");
    if (f == NULL)
        return 0;
    fprintf(f, "%d\n", ++n);
    return fclose(f) == 0 ? n : 0;
}

static void pause_ms(int ms)
{
#ifdef _WIN32
    Sleep((DWORD)ms);
#else
    struct timespec ts = {0, (long)ms * 1000000L};
    nanosleep(&ts, NULL);
#endif
}

static void drain_stdin(void)
{
    char buf[4096];
    while (fread(buf, 1, sizeof(buf), stdin) > 0)
        ;
}

int main(int argc, char **argv)
{
#ifdef _WIN32
    _setmode(_fileno(stdin), _O_BINARY);
    _setmode(_fileno(stdout), _O_BINARY);
#endif
    if (argc == 4 && strcmp(argv[1], "emit") == 0) {
        int n = atoi(argv[2]);
        for (int i = 1; i <= n; i++)
            printf("%s-%d\n", argv[3], i);
        fflush(stdout);
        drain_stdin();
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "sink") == 0)
        return copy_stdin(argv[2]);
    if (argc >= 3 && strcmp(argv[1], "say") == 0) {
        for (int i = 3; i < argc; i++)
            printf("%s\n", argv[i]);
        fflush(stdout);
        return copy_stdin(argv[2]);
    }
    if (argc == 4 && strcmp(argv[1], "fail") == 0) {
        printf("%s\n", argv[3]);
        fflush(stdout);
        fprintf(stderr, "%s (stderr)\n", argv[3]);
        return atoi(argv[2]);
    }
    if (argc == 4 && strcmp(argv[1], "flood") == 0) {
        int n = atoi(argv[2]);
        for (int i = 1; i <= n; i++)
            printf("%s-%d\n", argv[3], i);
        return fflush(stdout) == 0 ? 0 : 1;
    }
    if (argc == 4 && strcmp(argv[1], "gate") == 0) {
        char line[65536];
        FILE *g, *f;
        while ((g = fopen(argv[2], "rb")) == NULL)
            pause_ms(10);
        fclose(g);
        if ((f = fopen(argv[3], "ab")) == NULL) {
            fprintf(stderr, "cannot open %s\n", argv[3]);
            return 2;
        }
        while (fgets(line, sizeof(line), stdin) != NULL) {
            fputs(line, f);
            fflush(f);
        }
        fclose(f);
        return 0;
    }
    if (argc == 5 && strcmp(argv[1], "pubs") == 0) {
        int n = atoi(argv[3]);
        char line[4096];
        FILE *f = fopen(argv[2], "ab");
        if (f == NULL) {
            fprintf(stderr, "cannot open %s\n", argv[2]);
            return 2;
        }
        for (int i = 1; i <= n; i++) {
            printf("{\"op\":\"pub\",\"id\":%d,\"topic\":\"%s\",\"payload\":\"p-%d\"}\n", i, argv[4],
                   i);
            fflush(stdout);
            if (fgets(line, sizeof(line), stdin) == NULL)
                break;
            fputs(line, f);
            fflush(f);
        }
        fclose(f);
        return 0;
    }
    if (argc >= 4 && strcmp(argv[1], "burst") == 0) {
        int run = count_run(argv[2]);
        if (run == 0) {
            fprintf(stderr, "cannot count in %s\n", argv[2]);
            return 2;
        }
        for (int i = 4; i < argc; i++) {
            printf("%s\n", argv[i]);
            fflush(stdout);
        }
        return run < atoi(argv[3]) ? 1 : 0;
    }
    fprintf(stderr, "usage: sbt_helper emit N PREFIX | sink FILE | fail CODE TEXT | "
                    "say FILE LINE... | flood N PREFIX | burst FILE N LINE... | pubs FILE N TOPIC "
                    "| gate GATE FILE\n");
    return 2;
}
