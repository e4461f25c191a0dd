/*
 * Runs a fuzz target without libFuzzer: every file named on the command line,
 * and every regular file inside a directory named there, is passed once to
 * LLVMFuzzerTestOneInput (as libgit2's fuzzers/standalone_driver.c does).
 * Used to replay corpora and crash reproducers under the normal build and
 * sanitizers; a crash or sanitizer report fails the run.
 */
#include <dirent.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf = NULL;
    size_t len = 0, cap = 0, n;

    if (f == NULL) {
        fprintf(stderr, "%s: cannot open\n", path);
        return -1;
    }
    do {
        if (len == cap) {
            unsigned char *bigger;
            cap = cap == 0 ? 4096 : cap * 2;
            bigger = realloc(buf, cap);
            if (bigger == NULL) {
                fprintf(stderr, "%s: out of memory\n", path);
                free(buf);
                fclose(f);
                return -1;
            }
            buf = bigger;
        }
        n = fread(buf + len, 1, cap - len, f);
        len += n;
    } while (n > 0);
    fclose(f);
    /* An exact-size copy, so ASan sees reads past the end of the input. */
    {
        unsigned char *exact = malloc(len == 0 ? 1 : len);
        if (exact == NULL) {
            free(buf);
            return -1;
        }
        memcpy(exact, buf, len);
        free(buf);
        LLVMFuzzerTestOneInput(exact, len);
        free(exact);
    }
    return 0;
}

static int is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int run_path(const char *path, int *count)
{
    DIR *d;
    struct dirent *e;
    int rc = 0;

    if (!is_dir(path)) {
        (*count)++;
        return run_file(path);
    }
    d = opendir(path);
    if (d == NULL) {
        fprintf(stderr, "%s: cannot open directory\n", path);
        return -1;
    }
    while ((e = readdir(d)) != NULL) {
        size_t n = strlen(path) + strlen(e->d_name) + 2;
        char *child;
        if (e->d_name[0] == '.')
            continue;
        child = malloc(n);
        if (child == NULL) {
            rc = -1;
            break;
        }
        snprintf(child, n, "%s/%s", path, e->d_name);
        if (!is_dir(child)) {
            (*count)++;
            if (run_file(child) != 0)
                rc = -1;
        }
        free(child);
    }
    closedir(d);
    return rc;
}

int main(int argc, char **argv)
{
    int count = 0, rc = 0;

    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE_OR_DIR...\n", argv[0]);
        return 2;
    }
    for (int i = 1; i < argc; i++)
        if (run_path(argv[i], &count) != 0)
            rc = 1;
    fprintf(stderr, "%s: ran %d input(s)%s\n", argv[0], count, rc ? ", some unreadable" : "");
    return rc;
}
