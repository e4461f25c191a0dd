/* Latency samples and percentiles (see samples.h). */
#include "tools/sbctl/samples.h"

#include "service/alloc.h"
#include "service/error.h"

#include <stdlib.h>
#include <string.h>

int sbctl_samples_reserve(sbctl_samples *s, size_t n)
{
    if (s->n + n > s->cap) {
        size_t ncap = s->cap == 0 ? 1024 : s->cap;
        int64_t *p;
        while (ncap < s->n + n)
            ncap *= 2;
        p = sb_realloc(s->v, ncap * sizeof(*p));
        if (p == NULL)
            return SB_ENOMEM;
        s->v = p;
        s->cap = ncap;
    }
    return 0;
}

int sbctl_samples_add(sbctl_samples *s, int64_t v)
{
    if (s->n == s->cap && sbctl_samples_reserve(s, 1) != 0)
        return SB_ENOMEM;
    s->v[s->n++] = v;
    s->sorted = 0;
    return 0;
}

int sbctl_samples_merge(sbctl_samples *dst, const sbctl_samples *src)
{
    if (src->n == 0)
        return 0;
    if (sbctl_samples_reserve(dst, src->n) != 0)
        return SB_ENOMEM;
    memcpy(dst->v + dst->n, src->v, src->n * sizeof(*src->v));
    dst->n += src->n;
    dst->sorted = 0;
    return 0;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

int64_t sbctl_samples_percentile(sbctl_samples *s, double p)
{
    double want;
    size_t rank;

    if (s->n == 0)
        return -1;
    if (!s->sorted) {
        qsort(s->v, s->n, sizeof(*s->v), cmp_i64);
        s->sorted = 1;
    }
    if (p < 0)
        p = 0;
    if (p > 100)
        p = 100;
    want = p / 100.0 * (double)s->n + 0.5;
    rank = (size_t)want;
    if (rank < 1)
        rank = 1;
    if (rank > s->n)
        rank = s->n;
    return s->v[rank - 1];
}

double sbctl_samples_mean(const sbctl_samples *s)
{
    double sum = 0;
    if (s->n == 0)
        return -1;
    for (size_t i = 0; i < s->n; i++)
        sum += (double)s->v[i];
    return sum / (double)s->n;
}

void sbctl_samples_free(sbctl_samples *s)
{
    sb_free(s->v);
    memset(s, 0, sizeof(*s));
}
