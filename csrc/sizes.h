/*
 * sizes.h -- checked size arithmetic for the work-size queries (private to
 * csrc/). A query counts in size_t and returns 0 when a size cannot be
 * represented, instead of wrapping around to a small, wrong one.
 */
#ifndef TL_SIZES_H
#define TL_SIZES_H

#include <stddef.h>
#include <stdint.h>

/* acc += a * b, failing (returning 0, acc unchanged) instead of wrapping
 * around. GCC and clang check with the CPU's overflow flag: a division per
 * product cost a loss call some 40 divisions, 0.1-0.2 us at B = 1. */
static inline int tl_add_product(size_t *acc, size_t a, size_t b)
{
#if defined(__GNUC__)
    size_t product, sum;
    if (__builtin_mul_overflow(a, b, &product) || __builtin_add_overflow(*acc, product, &sum))
        return 0;
    *acc = sum;
#else
    if (b != 0 && a > (SIZE_MAX - *acc) / b)
        return 0;
    *acc += a * b;
#endif
    return 1;
}

/* The bytes of `doubles` doubles, or 0 when they are not addressable (a count
 * of at most SIZE_MAX / sizeof(double) keeps every index in ptrdiff_t too). */
static inline size_t tl_doubles_bytes(size_t doubles)
{
    return doubles > SIZE_MAX / sizeof(double) ? 0 : doubles * sizeof(double);
}

#endif /* TL_SIZES_H */
