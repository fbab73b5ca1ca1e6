/*
 * tile.c -- the fast path of the rollout losses (engine.h): TL_TILE
 * sequences side by side, the batch index innermost, so that every
 * operation of the forward rollout, the penalties and the adjoint acts on a
 * tile's eight sequences at once (GCC/clang vector types; the kernel body is
 * tile_kernel.h, instantiated here for float64 and float32).
 *
 * This file is built three times: as itself, for the baseline of the
 * target, through tile_v3.c for x86-64-v3 (AVX2 and FMA) and through
 * tile_v4.c for x86-64-v4 (AVX-512's 32 registers, at 256 bits);
 * tl_tile_kernel picks the newest the CPU has. Each build names its
 * kernels' entry tl_tile_pick_<isa>; only the baseline build defines the
 * engine.h calls.
 *
 * Where it applies (tl_tile_kernel): linear systems of every form -- shared,
 * per sample, time-varying, with or without offset -- with n, m <=
 * TL_TILE_MAX_DIM and at least one step. Larger systems, and the rest, run
 * through the reference kernel tl_loss_seq.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "engine.h"
#include "penalty.h"
#include "select.h"
#include "sizes.h"

/* Contracting a * b + c into one FMA is what the hot loops are made of
 * (-std=c11 alone turns it off). Loops start on 64-byte boundaries: where
 * the short step loops fall otherwise moved the double integrator's B =
 * 1024 by 5-8 % from one unrelated change to the next. */
#if defined(__clang__)
#pragma clang fp contract(fast)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=fast", "align-loops=64")
#endif

#ifndef TL_TILE_ISA /* the baseline build */
#define TL_TILE_ISA base
#define TL_TILE_ENTRY 1
#endif
#ifndef TL_TILE_VREG_BYTES /* bytes of one vector register of the target */
#define TL_TILE_VREG_BYTES 16
#endif

/* The largest n and m the fast path takes: per-sample matrices are laid out
 * for a tile in its scratch, n (n + m) vectors a tile. */
#define TL_TILE_MAX_DIM 128

/* The largest n and m of the kernel's uniform version (tile_kernel.h),
 * which is compiled for each n, m up to it: a group's blocks of inputs,
 * the states and the coefficients of two vectors of sequences must stay in
 * registers, and every size pair is one more copy of its code to build. */
#define TL_UNI_DIM 2

#define TL_TILE_CAT2(a, b) a##b
#define TL_TILE_CAT(a, b) TL_TILE_CAT2(a, b)
#define TL_TILE_PICK TL_TILE_CAT(tl_tile_pick_, TL_TILE_ISA)

#define TL_INLINE static inline __attribute__((always_inline))
/* Unrolls the loop after it whole: loops over a vector's lanes or a tile's
 * vectors, whose arrays must end up in registers. */
#define TL_UNROLL _Pragma("GCC unroll 8")

/* A vector register of doubles: the sums of a tile, lane by lane, are
 * double whatever the dtype. */
typedef double tl_tile_dv __attribute__((vector_size(TL_TILE_VREG_BYTES)));

/*
 * The scratch of one kernel call, in the units the kernels carve it in:
 * `doubles` of its own (the time weights of one sequence, the state and
 * feature weights, for n, m <= TL_UNI_DIM the uniform version's weights --
 * 2 T m + 2 (T + 1) n and two flags --, room to align), then, from a
 * 64-byte boundary, `slot`
 * tile values (TL_TILE elements each) for the tile being computed:
 *   selection   6 T + 3   masks of the valid control steps (T) and of the
 *                         states scored (T + 1), and their value and
 *                         gradient weights (2 T + 2 (T + 1))
 *   G, Gc       (T+1) n + T m   the penalty derivatives of states, controls
 *   registers   6 n + m         x, its successor, the final state, lambda,
 *                               its predecessor, the offset; a control
 *                               gradient
 *   matrices    n (n + m)       A and B of the step, laid out for the tile
 *   inputs      2 T m + (T+1) n the tile's controls, reference controls and
 *                               reference states, transposed into lane layout
 *   uniform     2 ((T+1) n + T m)  for n, m <= TL_UNI_DIM, the uniform
 *                               version's G and Gc, for the two tiles it runs
 *                               side by side in float32 (after the rest: the
 *                               ones before keep what `prepared` reuses)
 */
typedef struct {
    size_t doubles, slot;
} tl_tile_layout;

static int tl_tile_layout_of(ptrdiff_t n, ptrdiff_t m, ptrdiff_t T, tl_tile_layout *l)
{
    const size_t N = (size_t)n, Mu = (size_t)m, S = (size_t)T;
    l->doubles = 0;
    l->slot = 0;
    const int uni = n <= TL_UNI_DIM && m <= TL_UNI_DIM; /* room for the uniform version */
    return tl_add_product(&l->doubles, 1, S + 2 + N + Mu + 2 * TL_TILE) &&
           tl_add_product(&l->doubles, uni ? 2 * (S + 1) : 0, N + Mu) &&
           tl_add_product(&l->slot, 6, S + 1) && tl_add_product(&l->slot, S + 1, N) &&
           tl_add_product(&l->slot, S, Mu) && tl_add_product(&l->slot, 6, N) &&
           tl_add_product(&l->slot, 1, Mu) && tl_add_product(&l->slot, N, N + Mu) &&
           tl_add_product(&l->slot, 2 * S, Mu) && tl_add_product(&l->slot, S + 1, N) &&
           tl_add_product(&l->slot, uni ? 2 * (S + 1) : 0, N) &&
           tl_add_product(&l->slot, uni ? 2 * S : 0, Mu);
}

/* The first 64-byte boundary at or after p. */
static void *tl_tile_align(void *p)
{
    const uintptr_t a = (uintptr_t)p;
    return (char *)p + ((64 - a % 64) % 64);
}

#define TL_T double
#define TL_TB 8 /* its bytes, for the preprocessor */
#define TL_I int64_t
#define TL_F(name) name##_f64
#include "tile_kernel.h"
#undef TL_T
#undef TL_TB
#undef TL_I
#undef TL_F

#define TL_T float
#define TL_TB 4
#define TL_I int32_t
#define TL_F(name) name##_f32
#include "tile_kernel.h"
#undef TL_T
#undef TL_TB
#undef TL_I
#undef TL_F

tl_tile_fn TL_TILE_PICK(const tl_loss_ctx *c);
tl_tile_fn TL_TILE_PICK(const tl_loss_ctx *c)
{
    return c->io->dtype == TL_F64 ? tl_tile_run_f64 : tl_tile_run_f32;
}

#ifdef TL_TILE_ENTRY

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define TL_TILE_HAVE_V3 1
tl_tile_fn tl_tile_pick_v3(const tl_loss_ctx *c); /* tile_v3.c */
#ifndef TL_TILE_NO_V4
#define TL_TILE_HAVE_V4 1
tl_tile_fn tl_tile_pick_v4(const tl_loss_ctx *c); /* tile_v4.c */
#endif
#endif

size_t tl_tile_doubles(ptrdiff_t n, ptrdiff_t m, ptrdiff_t T)
{
    tl_tile_layout l;
    size_t total = 0;
    if (n < 1 || m < 1 || n > TL_TILE_MAX_DIM || m > TL_TILE_MAX_DIM || T < 0 ||
        !tl_tile_layout_of(n, m, T, &l) || !tl_add_product(&total, 1, l.doubles) ||
        !tl_add_product(&total, TL_TILE, l.slot))
        return 0;
    return total;
}

tl_tile_fn tl_tile_kernel(const tl_loss_ctx *c)
{
    const tl_dynamics *d = c->dyn;
    if (d == NULL || d->kind != TL_DYN_LINEAR || d->step != NULL || c->T < 1 ||
        tl_tile_doubles(c->n, c->m, c->T) == 0 ||
        (c->io->dtype != TL_F64 && c->io->dtype != TL_F32))
        return NULL;
#ifdef TL_TILE_HAVE_V4
    if (tl_tile_cpu_v4())
        return tl_tile_pick_v4(c);
#endif
#ifdef TL_TILE_HAVE_V3
    if (tl_tile_cpu_v3())
        return tl_tile_pick_v3(c);
#endif
    return TL_TILE_PICK(c);
}

#endif /* TL_TILE_ENTRY */
