/*
 * Latency samples and percentiles for sbctl bench.
 *
 * Samples are kept whole (8 bytes each) and sorted once; a percentile is the
 * value at rank max(1, round(p/100 * n)), the definition HdrHistogram uses
 * (value at or below which p percent of the samples fall), without its
 * bucketing error. Pure and unit-tested.
 */
#ifndef SBCTL_SAMPLES_H
#define SBCTL_SAMPLES_H

#include <stddef.h>
#include <stdint.h>

typedef struct sbctl_samples {
    int64_t *v;
    size_t n, cap;
    int sorted;
} sbctl_samples;

/* Reserves room for n more samples (so a hot loop does not allocate).
 * Returns 0 or SB_ENOMEM. */
int sbctl_samples_reserve(sbctl_samples *s, size_t n);

/* Adds one sample. Returns 0 or SB_ENOMEM. */
int sbctl_samples_add(sbctl_samples *s, int64_t v);

/* Appends all of src to dst. Returns 0 or SB_ENOMEM. */
int sbctl_samples_merge(sbctl_samples *dst, const sbctl_samples *src);

/* The p-th percentile (0 <= p <= 100) as defined above; sorts s on first use.
 * Returns -1 when s is empty. */
int64_t sbctl_samples_percentile(sbctl_samples *s, double p);

/* Arithmetic mean, or -1 when empty. */
double sbctl_samples_mean(const sbctl_samples *s);

void sbctl_samples_free(sbctl_samples *s);

#endif
