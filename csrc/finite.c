/*
 * finite.c -- are all values of an array finite?
 *
 * x - x is +0 for a finite x and NaN for inf or NaN, so (x - x) != 0 flags
 * exactly the non-finite values. The flags of TL_LANES-wide vectors are OR-ed
 * (integer OR reorders freely, so this vectorises under strict IEEE rules,
 * where a floating-point sum of x * 0 could not) and looked at once a block,
 * which lets a bad value stop the scan early. Out of cache the scan runs at
 * the machine's memory bandwidth; in cache it is several elements a cycle.
 */
#include <string.h>

#include "lanes.h"
#include "trajloss.h"

#define TL_FINITE_BLOCK 4096 /* elements between early exits */

typedef float tl_vf __attribute__((vector_size(8 * sizeof(float)), aligned(4)));
typedef int tl_vi __attribute__((vector_size(8 * sizeof(int)), aligned(4)));

/* TL_FINITE_SCAN(NAME, T, VT, VM, W): NAME(p, count) scans W elements a vector,
 * four vectors an iteration. */
#define TL_FINITE_SCAN(NAME, T, VT, VM, W)                                                    \
    TL_CLONES int NAME(const T *p, ptrdiff_t count)                                           \
    {                                                                                         \
        ptrdiff_t i = 0;                                                                      \
        while (count - i >= 4 * (W)) {                                                        \
            const ptrdiff_t left = count - i, block = left < TL_FINITE_BLOCK ? left            \
                                                                            : TL_FINITE_BLOCK; \
            const ptrdiff_t end = i + block - block % (4 * (W));                              \
            VM bad = {0};                                                                     \
            for (; i < end; i += 4 * (W)) {                                                   \
                VT a, b, c, d;                                                                \
                memcpy(&a, p + i, sizeof a);                                                  \
                memcpy(&b, p + i + (W), sizeof b);                                            \
                memcpy(&c, p + i + 2 * (W), sizeof c);                                        \
                memcpy(&d, p + i + 3 * (W), sizeof d);                                        \
                bad |= (VM)((a - a) != 0) | (VM)((b - b) != 0) | (VM)((c - c) != 0) |         \
                       (VM)((d - d) != 0);                                                    \
            }                                                                                 \
            for (int l = 0; l < (W); l++)                                                     \
                if (bad[l])                                                                   \
                    return 0;                                                                 \
        }                                                                                     \
        for (; i < count; i++)                                                                \
            if (!(p[i] - p[i] == 0))                                                          \
                return 0;                                                                     \
        return 1;                                                                             \
    }

TL_FINITE_SCAN(tl_all_finite_f64, double, tl_vd, tl_vm, TL_LANES)
TL_FINITE_SCAN(tl_all_finite_f32, float, tl_vf, tl_vi, 8)
#undef TL_FINITE_SCAN
