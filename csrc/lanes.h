/*
 * lanes.h -- TL_LANES doubles side by side, one per sequence of a tile, as a
 * GNU C vector (private to csrc/; GCC and Clang). Arithmetic on tl_vd is
 * elementwise, so each lane computes exactly what scalar code would; the
 * compiler maps it to the widest registers the target has (two SSE2
 * registers, or one AVX2 register in the kernels cloned for AVX2).
 */
#ifndef TL_LANES_H
#define TL_LANES_H

#include <stddef.h>

#include "parallel.h"
#include "trajloss.h"

#if TL_LANES != 4
#error "lanes.h spells out four lanes"
#endif

/* The kernels worth it are also built for AVX2 and picked at load time
 * (never -march=native: the wheel runs on any x86-64). Lanes never mix,
 * and there is no FMA contraction under -std=c99/c11, so both versions
 * round identically. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(TL_NO_CLONES)
#define TL_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define TL_CLONES
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
#define TL_ALWAYS_INLINE __attribute__((noinline))
#elif defined(__GNUC__)
#define TL_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define TL_ALWAYS_INLINE inline
#endif

#if defined(__clang__)
#pragma clang diagnostic ignored "-Wpsabi" /* static helpers only: no ABI is exposed */
#elif defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

/* aligned(8): loads and stores never assume more than double alignment */
typedef double tl_vd __attribute__((vector_size(TL_LANES * sizeof(double)), aligned(8)));
typedef long long tl_vm __attribute__((vector_size(TL_LANES * sizeof(long long)), aligned(8)));

/* (a[i0], a[i1], a[i2], a[i3]) of the eight lanes of a then b */
#define TL_VSHUFFLE(a, b, i0, i1, i2, i3) __builtin_shufflevector(a, b, i0, i1, i2, i3)

/* The 4 x 4 transpose of r[0..3] (lane j of r[i] to lane i of t[j]), by shuffles. */
static inline void tl_vtranspose4(const tl_vd r[4], tl_vd t[4])
{
    const tl_vd a = TL_VSHUFFLE(r[0], r[1], 0, 4, 2, 6), b = TL_VSHUFFLE(r[0], r[1], 1, 5, 3, 7);
    const tl_vd c = TL_VSHUFFLE(r[2], r[3], 0, 4, 2, 6), d = TL_VSHUFFLE(r[2], r[3], 1, 5, 3, 7);
    t[0] = TL_VSHUFFLE(a, c, 0, 1, 4, 5);
    t[1] = TL_VSHUFFLE(b, d, 0, 1, 4, 5);
    t[2] = TL_VSHUFFLE(a, c, 2, 3, 6, 7);
    t[3] = TL_VSHUFFLE(b, d, 2, 3, 6, 7);
}

static inline tl_vd tl_vsplat(double a)
{
    return (tl_vd){a, a, a, a};
}

/* a where mask is set, +0.0 elsewhere -- a select, so NaN in a discarded lane vanishes */
static inline tl_vd tl_vkeep(tl_vm mask, tl_vd a)
{
    return (tl_vd)((tl_vm)a & mask);
}

/* mask ? a : b */
static inline tl_vd tl_vblend(tl_vm mask, tl_vd a, tl_vd b)
{
    return (tl_vd)(((tl_vm)a & mask) | ((tl_vm)b & ~mask));
}

static inline tl_vd tl_vabs(tl_vd a)
{
    const tl_vm magnitude = (tl_vm)tl_vsplat(-0.0);
    return (tl_vd)((tl_vm)a & ~magnitude);
}

/* e = rho(r) and d = rho'(r) in every lane (the penalties of trajloss.h). */
static inline void tl_vrho(tl_penalty penalty, double delta, tl_vd r, tl_vd *e, tl_vd *d)
{
    const tl_vd one = tl_vsplat(1.0), zero = tl_vsplat(0.0);
    switch (penalty) {
    case TL_PENALTY_MSE:
        *e = r * r;
        *d = r + r;
        return;
    case TL_PENALTY_L1:
        *e = tl_vabs(r);
        *d = tl_vkeep((tl_vm)(r > zero), one) - tl_vkeep((tl_vm)(r < zero), one);
        return;
    default: {
        const tl_vd a = tl_vabs(r), dv = tl_vsplat(delta), half = tl_vsplat(0.5);
        const tl_vm inside = (tl_vm)(a <= dv);
        *e = tl_vblend(inside, half * r * r, dv * (a - half * dv));
        *d = tl_vblend(inside, r, tl_vblend((tl_vm)(r > zero), dv, -dv));
    }
    }
}

#endif /* TL_LANES_H */
