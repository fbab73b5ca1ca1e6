/*
 * lanes.h -- the sequences of a tile side by side, one per lane of a GNU C
 * vector (private to csrc/; GCC and Clang): four doubles, or eight floats.
 * Arithmetic on them is elementwise, so each lane computes exactly what
 * scalar code would; the compiler maps a vector to the widest registers the
 * target has (two SSE2 registers, or one AVX2 register in the kernels cloned
 * for AVX2).
 */
#ifndef TL_LANES_H
#define TL_LANES_H

#include <stddef.h>

#include "trajloss.h"

/* The kernels worth it are also built for AVX2 and picked at load time
 * (never -march=native: the wheel runs on any x86-64). Lanes never mix,
 * and there is no FMA contraction under -std=c99/c11, so both versions
 * round identically. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(TL_NO_CLONES)
#define TL_CLONES __attribute__((target_clones("avx2", "default")))
/* ... and the fast kernels also in 512-bit tiles for AVX-512 (lanes8.h:
 * eight float64 or sixteen float32 lanes), run where the CPU has it --
 * unless TL_NO_WIDE (valgrind, which has no AVX-512, never runs them). */
#ifdef TL_NO_WIDE
#define TL_WIDE 0
#else
#define TL_WIDE 1
#endif
#else
#define TL_CLONES
#define TL_WIDE 0
#endif

/* The kernels are assembled from always-inlined pieces, so that each (n, m)
 * gets code with its sizes as constants. Under AddressSanitizer that takes the
 * compiler many minutes (every inlined access is instrumented again), so
 * sanitized builds call the pieces instead: the same source, run as is. */
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TL_SANITIZED 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define TL_SANITIZED 1
#endif
#if defined(TL_SANITIZED) && defined(__GNUC__)
#define TL_ALWAYS_INLINE __attribute__((noinline, unused)) /* not every kernel uses every piece */
#elif defined(__GNUC__)
#define TL_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define TL_ALWAYS_INLINE inline
#endif

/* (n, m) of the systems that get code of their own with n and m as constants:
 * the rollout-loss kernels (loss_impl.h) and the reference loop (reference.c).
 * A user defines TL_SMALL_SYSTEM(N, M) and expands the list. */
#define TL_SMALL_SYSTEMS                                                                      \
    TL_SMALL_SYSTEM(1, 1)                                                                     \
    TL_SMALL_SYSTEM(2, 1)                                                                     \
    TL_SMALL_SYSTEM(2, 2)                                                                     \
    TL_SMALL_SYSTEM(3, 1)                                                                     \
    TL_SMALL_SYSTEM(3, 3)                                                                     \
    TL_SMALL_SYSTEM(4, 1)                                                                     \
    TL_SMALL_SYSTEM(4, 2)                                                                     \
    TL_SMALL_SYSTEM(6, 2)                                                                     \
    TL_SMALL_SYSTEM(6, 3)

#if defined(__clang__)
#pragma clang diagnostic ignored "-Wpsabi" /* static helpers only: no ABI is exposed */
#elif defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

/* A float64 tile is four doubles side by side and a float32 tile eight
 * floats: one 256-bit register either way. Both keep their sums in four
 * doubles (tl_vd; see tl_vacc_f32). aligned(8)/(4): loads and stores never
 * assume more than element alignment. */
#define TL_LANES_F64 4
#define TL_LANES_F32 8
typedef double tl_vd __attribute__((vector_size(4 * sizeof(double)), aligned(8)));
typedef long long tl_vm __attribute__((vector_size(4 * sizeof(long long)), aligned(8)));
typedef float tl_vf __attribute__((vector_size(8 * sizeof(float)), aligned(4)));
typedef int tl_vi __attribute__((vector_size(8 * sizeof(int)), aligned(4)));

/* What differs between the two kinds of tile: splats, and the shuffles that
 * move a tile's rows in and out of its lanes. */

static inline tl_vd tl_vsplat_f64(double a)
{
    return (tl_vd){a, a, a, a};
}

static inline tl_vf tl_vsplat_f32(float a)
{
    return (tl_vf){a, a, a, a, a, a, a, a};
}

static inline tl_vm tl_msplat_f64(long long a)
{
    return (tl_vm){a, a, a, a};
}

static inline tl_vi tl_msplat_f32(int a)
{
    return (tl_vi){a, a, a, a, a, a, a, a};
}

/* The 4 x 4 transpose of r[0..3] (lane j of r[i] to lane i of t[j]), by shuffles. */
static inline void tl_vtranspose_f64(const tl_vd r[4], tl_vd t[4])
{
#define TL_SHUF(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
    const tl_vd a = TL_SHUF(r[0], r[1], 0, 4, 2, 6), b = TL_SHUF(r[0], r[1], 1, 5, 3, 7);
    const tl_vd c = TL_SHUF(r[2], r[3], 0, 4, 2, 6), d = TL_SHUF(r[2], r[3], 1, 5, 3, 7);
    t[0] = TL_SHUF(a, c, 0, 1, 4, 5);
    t[1] = TL_SHUF(b, d, 0, 1, 4, 5);
    t[2] = TL_SHUF(a, c, 2, 3, 6, 7);
    t[3] = TL_SHUF(b, d, 2, 3, 6, 7);
}

/* The 8 x 8 transpose of r[0..7]: pairs of rows interleaved, then pairs of
 * pairs, then the 128-bit halves exchanged (three rounds of eight shuffles). */
static inline void tl_vtranspose_f32(const tl_vf r[8], tl_vf t[8])
{
    tl_vf p[8], q[8];
    for (int i = 0; i < 8; i += 2) {
        p[i] = TL_SHUF(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
        p[i + 1] = TL_SHUF(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
    }
    for (int i = 0; i < 8; i += 4)
        for (int h = 0; h < 2; h++) {
            q[i + 2 * h] = TL_SHUF(p[i + h], p[i + h + 2], 0, 1, 8, 9, 4, 5, 12, 13);
            q[i + 2 * h + 1] = TL_SHUF(p[i + h], p[i + h + 2], 2, 3, 10, 11, 6, 7, 14, 15);
        }
    for (int j = 0; j < 4; j++) {
        t[j] = TL_SHUF(q[j], q[j + 4], 0, 1, 2, 3, 8, 9, 10, 11);
        t[j + 4] = TL_SHUF(q[j], q[j + 4], 4, 5, 6, 7, 12, 13, 14, 15);
    }
}

/* The even and the odd elements of r[0] then r[1]: a tile's rows of two elements. */
static inline void tl_vdeinterleave_f64(const tl_vd r[2], tl_vd t[2])
{
    t[0] = TL_SHUF(r[0], r[1], 0, 2, 4, 6);
    t[1] = TL_SHUF(r[0], r[1], 1, 3, 5, 7);
}

static inline void tl_vdeinterleave_f32(const tl_vf r[2], tl_vf t[2])
{
    t[0] = TL_SHUF(r[0], r[1], 0, 2, 4, 6, 8, 10, 12, 14);
    t[1] = TL_SHUF(r[0], r[1], 1, 3, 5, 7, 9, 11, 13, 15);
}

/* *sum += a, each lane widened to double, so every sum is kept in double.
 * A float32 tile adds lanes l and l + 4 first (exactly, or nearly: a double
 * holds the sum of two floats of like size exactly) into sum lane l. */
static inline void tl_vacc_f64(tl_vd *sum, tl_vd a)
{
    *sum += a;
}

static inline void tl_vacc_f32(tl_vd *sum, tl_vf a)
{
    /* spelled out: GCC 12 splits __builtin_convertvector into 2-lane pieces */
    const tl_vd lo = {a[0], a[1], a[2], a[3]}, hi = {a[4], a[5], a[6], a[7]};
    *sum += lo + hi;
}

/* What tl_vrho's d leaves out of rho'(r): 2 for the squared error, whose
 * gradient scales (tl_rl_const in loss.c) carry it. */
#define TL_RHO_SCALE(penalty) ((penalty) == TL_PENALTY_MSE ? 2.0 : 1.0)

/* The rest is written once for both (S the suffix, V the lanes, M their
 * masks, E an element). Lanes never mix: each lane computes exactly what
 * scalar code in E would. */
#define TL_LANE_OPS(S, V, M, E)                                                               \
    /* a where mask is set, +0 elsewhere -- a select: NaN in a dropped lane vanishes */        \
    static inline V tl_vkeep##S(M mask, V a)                                                  \
    {                                                                                         \
        return (V)((M)a & mask);                                                              \
    }                                                                                         \
    /* mask ? a : b */                                                                        \
    static inline V tl_vblend##S(M mask, V a, V b)                                            \
    {                                                                                         \
        return (V)(((M)a & mask) | ((M)b & ~mask));                                           \
    }                                                                                         \
    static inline V tl_vabs##S(V a)                                                           \
    {                                                                                         \
        return (V)((M)a & ~(M)tl_vsplat##S(-0.0));                                            \
    }                                                                                         \
    /* lane l from p[l stride], and back: one element of each of a tile's rows */             \
    static TL_ALWAYS_INLINE V tl_vgather##S(const E *p, ptrdiff_t stride)                     \
    {                                                                                         \
        V v = tl_vsplat##S(0.0); /* every lane is set; this only tells the compiler */        \
        for (int l = 0; l < (int)(sizeof v / sizeof v[0]); l++)                               \
            v[l] = p[l * stride];                                                             \
        return v;                                                                             \
    }                                                                                         \
    static TL_ALWAYS_INLINE void tl_vscatter##S(V v, E *p, ptrdiff_t stride)                  \
    {                                                                                         \
        for (int l = 0; l < (int)(sizeof v / sizeof v[0]); l++)                               \
            p[l * stride] = v[l];                                                             \
    }                                                                                         \
    /* e = rho(r) and d = rho'(r) / TL_RHO_SCALE(penalty) in every lane (the penalties of    \
     * trajloss.h): the squared error's factor 2 is in the gradient scales instead, which    \
     * saves an add a scored value and rounds the same (doubling is exact) */                \
    static inline void tl_vrho##S(tl_penalty penalty, double delta, V r, V *e, V *d)          \
    {                                                                                         \
        const V one = tl_vsplat##S(1.0), zero = tl_vsplat##S(0.0);                            \
        switch (penalty) {                                                                    \
        case TL_PENALTY_MSE:                                                                  \
            *e = r * r;                                                                       \
            *d = r;                                                                           \
            return;                                                                           \
        case TL_PENALTY_L1:                                                                   \
            *e = tl_vabs##S(r);                                                               \
            *d = tl_vkeep##S((M)(r > zero), one) - tl_vkeep##S((M)(r < zero), one);           \
            return;                                                                           \
        default: {                                                                            \
            const V a = tl_vabs##S(r), dv = tl_vsplat##S((E)delta), half = tl_vsplat##S(0.5); \
            const M inside = (M)(a <= dv);                                                    \
            *e = tl_vblend##S(inside, half * r * r, dv * (a - half * dv));                    \
            *d = tl_vblend##S(inside, r, tl_vblend##S((M)(r > zero), dv, -dv));               \
        }                                                                                     \
        }                                                                                     \
    }
TL_LANE_OPS(_f64, tl_vd, tl_vm, double)
TL_LANE_OPS(_f32, tl_vf, tl_vi, float)
/* TL_LANE_OPS stays defined for lanes8.h */

#endif /* TL_LANES_H */
