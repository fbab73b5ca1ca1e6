/*
 * lanes8.h -- 512-bit tiles for AVX-512: two 256-bit tiles (lanes.h) side by
 * side in one register, eight float64 or sixteen float32 lanes (private to
 * loss.c, which includes it where its wide kernels are compiled for AVX-512;
 * lanes.h has the operations written once for every tile type). The low
 * half holds an even tile of a chunk and the high half the odd tile after
 * it, and a tile's sums are eight double lanes: the 256-bit kernels keep two
 * sets of four, one for each parity (loss.c, TL_SUM_C), so both add the same
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

/* ---- sixteen float32 lanes ---------------------------------------------- */

#define TL_LANES_F32X16 16
#define TL_HALF_F32X16 8 /* rl_transpose: rows of 8 to 15 elements by halves */
typedef float tl_v16f __attribute__((vector_size(16 * sizeof(float)), aligned(4)));
typedef int tl_v16i __attribute__((vector_size(16 * sizeof(int)), aligned(4)));

static inline tl_v16f tl_vsplat_f32x16(float a)
{
    return (tl_v16f){a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a};
}

static inline tl_v16i tl_msplat_f32x16(int a)
{
    return (tl_v16i){a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a};
}

static inline tl_v16f tl_vjoin_f32x16(tl_vf lo, tl_vf hi)
{
    return TL_SHUF(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}

static inline tl_v16i tl_mjoin_f32x16(tl_vi lo, tl_vi hi)
{
    return TL_SHUF(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}

/* The 16 x 16 transpose of r[0..15]: for s = 1, 2, 4, 8, each element whose
 * row and column differ in bit s trades places with the one across (rows i
 * and i + s, columns j and j -/+ s); after all four, (i, j) is at (j, i). */
#define TL_LIST(...) __VA_ARGS__
#define TL_T16_LEVEL(S, LO, HI)                                                               \
    for (int i = 0; i < 16; i++)                                                              \
        if (!(i & (S))) {                                                                     \
            const tl_v16f a = r[i], b = r[i + (S)];                                           \
            r[i] = TL_SHUF(a, b, LO);                                                         \
            r[i + (S)] = TL_SHUF(a, b, HI);                                                   \
        }
static inline void tl_vtranspose_f32x16(const tl_v16f src[16], tl_v16f t[16])
{
    tl_v16f r[16];
    for (int i = 0; i < 16; i++)
        r[i] = src[i];
    TL_T16_LEVEL(1, TL_LIST(0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30),
                 TL_LIST(1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31))
    TL_T16_LEVEL(2, TL_LIST(0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29),
                 TL_LIST(2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31))
    TL_T16_LEVEL(4, TL_LIST(0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27),
                 TL_LIST(4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31))
    TL_T16_LEVEL(8, TL_LIST(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23),
                 TL_LIST(8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31))
    for (int i = 0; i < 16; i++)
        t[i] = r[i];
}
#undef TL_T16_LEVEL
#undef TL_LIST

static inline void tl_vdeinterleave_f32x16(const tl_v16f r[2], tl_v16f t[2])
{
    t[0] = TL_SHUF(r[0], r[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    t[1] = TL_SHUF(r[0], r[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}

/* *sum += a as two eight-lane float tiles would add it (tl_vacc_f32): sum
 * lane l (l < 4) gets a_l + a_{l+4}, the even tile's, and lane 4 + l gets
 * a_{8+l} + a_{12+l}, the odd tile's, each widened to double first. */
static inline void tl_vacc_f32x16(tl_v8d *sum, tl_v16f a)
{
    const tl_v8d lo = {a[0], a[1], a[2], a[3], a[8], a[9], a[10], a[11]};
    const tl_v8d hi = {a[4], a[5], a[6], a[7], a[12], a[13], a[14], a[15]};
    *sum += lo + hi;
}

TL_LANE_OPS(_f32x16, tl_v16f, tl_v16i, float)

#endif /* TL_LANES8_H */
