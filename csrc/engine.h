/*
 * engine.h -- what the loss driver (loss.c) hands its kernels (private to
 * csrc/). One call of a rollout loss is described once, in tl_loss_ctx; the
 * driver cuts the batch into chunks (parallel.h), and each chunk's
 * sequences run through one of two kernels that compute the same thing:
 *
 *   tl_loss_seq   the plain reference kernel (loss.c): one sequence, in
 *                 double, every form of system, readable top to bottom;
 *   tile kernels  the fast path (tile.c): TL_TILE sequences side by side,
 *                 batch index innermost, in the call's dtype; picked by
 *                 tl_tile_kernel, which returns NULL where it does not apply.
 *
 * What both compute for sequence b (S_b its valid steps, t_b the last one,
 * w the time weights of tl_sel_weights, s the feature/state weights, rho the
 * penalty of penalty.h, x the rollout of the controls from x0):
 *   sums[0] += sum_{t in S_b} w_t sum_j f_j rho(u_tj - ru_tj)          control
 *   sums[1] += sum_{t in S_b} w_t sum_i s_i rho(x_{t+1,i} - rs_{t+1,i})   trajectory
 *              (with shift: state 0 too, at weight w'_0, and the others at w'_{t+1},
 *               the weights of tl_sel_weights(sel, b, 1, ...))
 *   sums[2] +=                sum_i s_i rho(x_{t_b+1,i} - tgt_i)        terminal
 *              (tgt = target[b], or ref_states[b][t_b + 1] when target is NULL)
 * each only when its TL_TERM_* flag is set, and the gradients of
 *   scale[0] sums[0] + scale[1] sums[1] + scale[2] sums[2]
 * into grad_controls[b] and grad_x0[b] (when not NULL): exactly 0 after t_b,
 * whatever the padding holds. A sequence with no valid step adds nothing and
 * gets zero gradients. rho'(NaN) is NaN (penalty.h): a NaN that check_finite
 * was told not to look for reaches the result.
 */
#ifndef TL_ENGINE_H
#define TL_ENGINE_H

#include "trajloss.h"

/* Sequences a tile holds side by side: eight float64 are one 512-bit or two
 * 256-bit vectors, eight float32 one 256-bit vector. */
#define TL_TILE 8

typedef struct {
    const tl_dynamics *dyn;
    const tl_loss_spec *spec;
    const tl_loss_io *io;
    ptrdiff_t B, T, n, m;
    int shift;              /* 1: include_initial with the trajectory term */
    int uniform;            /* no lengths or mask: every sequence has the same weights */
    double scale[3];        /* d total / d sums[i]: term weight / (term count * dim) */
    const double *powers;   /* tl_sel_powers(&spec->sel) */
} tl_loss_ctx;

/* Doubles of scratch tl_loss_seq needs (per worker). */
size_t tl_loss_seq_doubles(ptrdiff_t n, ptrdiff_t m, ptrdiff_t T);

/* The reference kernel: sequence b's sums (added to sums[0..2]) and gradients. */
void tl_loss_seq(const tl_loss_ctx *c, ptrdiff_t b, double sums[3], double *work);

/* A fast kernel: sequences b0 .. b0 + count - 1, count a multiple of
 * TL_TILE, adding their sums to sums[0..2] in a fixed order; sets
 * *grads_nonfinite to 1 when a gradient element it writes is NaN or inf
 * (else leaves it), so that those rows need no scan afterwards. With
 * `prepared` set, work still holds what the call before, with the same c
 * and work, computed for the whole call (weights, shared matrices): the
 * chunks of one worker after its first skip that. */
typedef void (*tl_tile_fn)(const tl_loss_ctx *c, ptrdiff_t b0, ptrdiff_t count,
                           double sums[3], int *grads_nonfinite, double *work, int prepared);

/* The fast kernel for this call (the best the CPU runs), or NULL when the
 * fast path does not apply; and the doubles of scratch it needs per worker. */
tl_tile_fn tl_tile_kernel(const tl_loss_ctx *c);
size_t tl_tile_doubles(ptrdiff_t n, ptrdiff_t m, ptrdiff_t T);

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
/* Whether this CPU (and its OS, which must save the AVX-512 registers:
 * the compiler's check looks) runs the kernels of tile_v3.c, tile_v4.c. */
static inline int tl_tile_cpu_v3(void)
{
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

static inline int tl_tile_cpu_v4(void)
{
    return tl_tile_cpu_v3() && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq");
}
#endif

#endif /* TL_ENGINE_H */
