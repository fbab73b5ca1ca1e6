/*
 * lanes8.h -- float64 tiles of eight lanes: two four-lane tiles side by side
 * in one 512-bit register, for AVX-512 (private to loss.c, which includes it
 * where its eight-lane kernels are compiled for AVX-512; lanes.h has the
 * four-lane tiles and the operations written once for every tile type).
 * Lanes 0-3 hold an even tile of a chunk and lanes 4-7 the odd tile after
 * it, and a tile's sums are eight lanes too: the four-lane kernels keep two
 * sets of sums, one for each parity (loss.c, TL_SUM_C), so both add the same
 * values in the same lanes in the same order and round alike.
 */
#ifndef TL_LANES8_H
#define TL_LANES8_H

#include "lanes.h"

#define TL_LANES_F64X8 8
typedef double tl_v8d __attribute__((vector_size(8 * sizeof(double)), aligned(8)));
typedef long long tl_v8m __attribute__((vector_size(8 * sizeof(long long)), aligned(8)));

static inline tl_v8d tl_vsplat_f64x8(double a)
{
    return (tl_v8d){a, a, a, a, a, a, a, a};
}

static inline tl_v8m tl_msplat_f64x8(long long a)
{
    return (tl_v8m){a, a, a, a, a, a, a, a};
}

/* The vector whose lanes 0-3 are lo's and 4-7 hi's. */
static inline tl_v8d tl_vjoin_f64x8(tl_vd lo, tl_vd hi)
{
    return TL_SHUF(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7);
}

static inline tl_v8m tl_mjoin_f64x8(tl_vm lo, tl_vm hi)
{
    return TL_SHUF(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7);
}

/* The 8 x 8 transpose of r[0..7] (lane j of r[i] to lane i of t[j]): pairs
 * of rows interleaved, then pairs of pairs, then 256-bit halves exchanged. */
static inline void tl_vtranspose_f64x8(const tl_v8d r[8], tl_v8d t[8])
{
    tl_v8d p[8], q[8];
    for (int i = 0; i < 8; i += 2) {
        p[i] = TL_SHUF(r[i], r[i + 1], 0, 8, 2, 10, 4, 12, 6, 14);
        p[i + 1] = TL_SHUF(r[i], r[i + 1], 1, 9, 3, 11, 5, 13, 7, 15);
    }
    for (int i = 0; i < 8; i += 4)
        for (int h = 0; h < 2; h++) {
            q[i + h] = TL_SHUF(p[i + h], p[i + h + 2], 0, 1, 8, 9, 4, 5, 12, 13);
            q[i + h + 2] = TL_SHUF(p[i + h], p[i + h + 2], 2, 3, 10, 11, 6, 7, 14, 15);
        }
    for (int j = 0; j < 4; j++) {
        t[j] = TL_SHUF(q[j], q[j + 4], 0, 1, 2, 3, 8, 9, 10, 11);
        t[j + 4] = TL_SHUF(q[j], q[j + 4], 4, 5, 6, 7, 12, 13, 14, 15);
    }
}

static inline void tl_vdeinterleave_f64x8(const tl_v8d r[2], tl_v8d t[2])
{
    t[0] = TL_SHUF(r[0], r[1], 0, 2, 4, 6, 8, 10, 12, 14);
    t[1] = TL_SHUF(r[0], r[1], 1, 3, 5, 7, 9, 11, 13, 15);
}

/* *sum += a: lanes 0-3 are the even set's sums, 4-7 the odd set's. */
static inline void tl_vacc_f64x8(tl_v8d *sum, tl_v8d a)
{
    *sum += a;
}

TL_LANE_OPS(_f64x8, tl_v8d, tl_v8m, double)

#endif /* TL_LANES8_H */
