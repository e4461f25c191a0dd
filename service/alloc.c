/* Allocation wrappers with test-time failure injection. */
#include "service/alloc.h"

#include <stdlib.h>
#include <string.h>

static _Thread_local long fail_countdown = -1;
static _Thread_local int fail_once; /* the failure disarms injection */
static _Thread_local long failures; /* injected since the last arming */

static int should_fail(void)
{
    if (fail_countdown < 0)
        return 0;
    if (fail_countdown == 0) {
        failures++;
        if (fail_once)
            fail_countdown = -1;
        return 1;
    }
    fail_countdown--;
    return 0;
}

void sb_alloc_fail_after(long n)
{
    fail_countdown = n;
    fail_once = 0;
    failures = 0;
}

void sb_alloc_fail_once(long n)
{
    fail_countdown = n;
    fail_once = 1;
    failures = 0;
}

long sb_alloc_failures(void)
{
    return failures;
}

int sb_alloc__inject(void)
{
    return should_fail();
}

void *sb_malloc(size_t n)
{
    if (should_fail())
        return NULL;
    return malloc(n == 0 ? 1 : n);
}

void *sb_calloc(size_t count, size_t size)
{
    if (should_fail())
        return NULL;
    return calloc(count == 0 ? 1 : count, size == 0 ? 1 : size);
}

void *sb_realloc(void *p, size_t n)
{
    if (should_fail())
        return NULL;
    return realloc(p, n == 0 ? 1 : n);
}

void sb_free(void *p)
{
    free(p);
}

char *sb_strndup(const char *s, size_t n)
{
    char *copy;
    if (s == NULL)
        return NULL;
    copy = sb_malloc(n + 1);
    if (copy == NULL)
        return NULL;
    memcpy(copy, s, n);
    copy[n] = '\0';
    return copy;
}

char *sb_strdup(const char *s)
{
    return s == NULL ? NULL : sb_strndup(s, strlen(s));
}
