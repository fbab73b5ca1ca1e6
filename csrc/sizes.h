/*
 * sizes.h -- checked size arithmetic for the work-size queries (private to
 * csrc/). A query counts in size_t and returns 0 when a size cannot be
 * represented, instead of wrapping around to a small, wrong one.
 */
#ifndef TL_SIZES_H
#define TL_SIZES_H

#include <stddef.h>
#include <stdint.h>

/* acc += a * b, failing (returning 0) instead of wrapping around. */
static inline int tl_add_product(size_t *acc, size_t a, size_t b)
{
    if (b != 0 && a > (SIZE_MAX - *acc) / b)
        return 0;
    *acc += a * b;
    return 1;
}

/* The bytes of `doubles` doubles, or 0 when they are not addressable (a count
 * of at most SIZE_MAX / sizeof(double) keeps every index in ptrdiff_t too). */
static inline size_t tl_doubles_bytes(size_t doubles)
{
    return doubles > SIZE_MAX / sizeof(double) ? 0 : doubles * sizeof(double);
}

#endif /* TL_SIZES_H */
