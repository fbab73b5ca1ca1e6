/*
 * finite.c -- are all values of an array finite?
 *
 * x - x is +0 for a finite x and NaN for inf or NaN, so (x - x) != 0 flags
 * exactly the non-finite values. The flags of vectors are OR-ed
 * (integer OR reorders freely, so this vectorises under strict IEEE rules,
 * where a floating-point sum of x * 0 could not) and looked at once a block,
 * which lets a bad value stop the scan early. Out of cache the scan runs at
 * the machine's memory bandwidth; in cache it is several elements a cycle.
 */
#include <string.h>

#include "trajloss.h"

/* 128-bit vectors (every x86-64 has them) of each type and their comparison
 * masks (GCC, clang); four of them an iteration keep the scan at memory speed. */
typedef double tl_vd __attribute__((vector_size(16)));
typedef long long tl_vm __attribute__((vector_size(16)));
typedef float tl_vf __attribute__((vector_size(16)));
typedef int tl_vi __attribute__((vector_size(16)));

#define TL_FINITE_BLOCK 4096 /* elements between early exits */

/* TL_FINITE_SCAN(NAME, T, VT, VM, W): NAME(p, count) scans W elements a vector:
 * four vectors an iteration, then single vectors, then one vector overlapping
 * the end (short rows, as the losses check a tile at a time, stay vectorised). */
#define TL_FINITE_SCAN(NAME, T, VT, VM, W)                                                    \
    static inline __attribute__((always_inline)) VM NAME##_flags(const T *p)                                                 \
    {                                                                                         \
        VT a;                                                                                 \
        memcpy(&a, p, sizeof a);                                                              \
        return (VM)((a - a) != 0);                                                            \
    }                                                                                         \
    static inline __attribute__((always_inline)) int NAME##_any(VM bad)                                                      \
    {                                                                                         \
        int any = 0;                                                                          \
        for (int l = 0; l < (W); l++)                                                         \
            any |= bad[l] != 0;                                                               \
        return any;                                                                           \
    }                                                                                         \
    int NAME(const T *p, ptrdiff_t count)                                           \
    {                                                                                         \
        if (count < (W)) {                                                                    \
            for (ptrdiff_t i = 0; i < count; i++)                                             \
                if (!(p[i] - p[i] == 0))                                                      \
                    return 0;                                                                 \
            return 1;                                                                         \
        }                                                                                     \
        ptrdiff_t i = 0;                                                                      \
        while (count - i >= 4 * (W)) {                                                        \
            const ptrdiff_t left = count - i, block = left < TL_FINITE_BLOCK ? left            \
                                                                            : TL_FINITE_BLOCK; \
            const ptrdiff_t end = i + block - block % (4 * (W));                              \
            VM bad = {0};                                                                     \
            for (; i < end; i += 4 * (W))                                                     \
                bad |= NAME##_flags(p + i) | NAME##_flags(p + i + (W)) |                      \
                       NAME##_flags(p + i + 2 * (W)) | NAME##_flags(p + i + 3 * (W));         \
            if (NAME##_any(bad))                                                               \
                return 0;                                                                     \
        }                                                                                     \
        VM bad = {0};                                                                         \
        for (; count - i >= (W); i += (W))                                                    \
            bad |= NAME##_flags(p + i);                                                       \
        if (i < count)                                                                        \
            bad |= NAME##_flags(p + count - (W));                                             \
        return !NAME##_any(bad);                                                               \
    }

TL_FINITE_SCAN(tl_all_finite_f64, double, tl_vd, tl_vm, 2)
TL_FINITE_SCAN(tl_all_finite_f32, float, tl_vf, tl_vi, 4)
#undef TL_FINITE_SCAN
