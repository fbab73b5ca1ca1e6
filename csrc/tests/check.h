/*
 * check.h -- what every C test program shares (private to csrc/tests/): the
 * CHECK counter, a deterministic uniform generator, an allocation that
 * fails loudly and a "nothing was written" probe. Included once by each
 * test program; each prints "N passed, N failed" and exits nonzero on a
 * failure.
 */
#ifndef TL_TESTS_CHECK_H
#define TL_TESTS_CHECK_H

#include <stdio.h>
#include <stdlib.h>

static int n_passed, n_failed;

#define CHECK(cond, ...)                                                      \
    do {                                                                      \
        if (cond) {                                                           \
            n_passed++;                                                       \
        } else {                                                              \
            n_failed++;                                                       \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                       \
            printf(__VA_ARGS__);                                              \
            printf("\n");                                                     \
        }                                                                     \
    } while (0)

/* Uniform in [-1, 1) from a linear congruential state. */
static inline double uniform(unsigned *state)
{
    *state = *state * 1103515245u + 12345u;
    return ((*state >> 8) & 0xFFFFFF) / (double)0x1000000 * 2.0 - 1.0;
}

/* Zeroed memory, or exit(2). */
static inline void *xmalloc(size_t bytes)
{
    void *p = calloc(1, bytes ? bytes : 1);
    if (p == NULL) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

/* Is every one of `bytes` bytes at p still `fill` (nothing was written)? */
static inline int untouched(const void *p, size_t bytes, unsigned char fill)
{
    const unsigned char *c = (const unsigned char *)p;
    for (size_t i = 0; i < bytes; i++)
        if (c[i] != fill)
            return 0;
    return 1;
}

#endif /* TL_TESTS_CHECK_H */
