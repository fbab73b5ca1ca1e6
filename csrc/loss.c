/*
 * loss.c -- control, trajectory, terminal and combined losses with their
 * analytic gradients (kernels in loss_impl.h, one per storage type).
 *
 * Layout of the work. The batch is cut into chunks of TL_CHUNK sequences
 * (parallel.h); each chunk's partial sums are stored and added in chunk
 * order, so the value does not depend on how many threads ran. The rollout
 * losses process a chunk as tiles of sequences held side by side in vectors
 * (lanes.h; four in float64, eight in float32, computed in float and summed
 * in double; on AVX-512, pairs of tiles as one 512-bit tile of eight float64
 * or sixteen float32 lanes: lanes8.h, wide_impl.h and the end of this file):
 * every operation acts on all lanes at once, and the
 * recurrences of different sequences overlap instead of waiting on each
 * other. Lanes past the end of the batch, and steps past a sequence's last
 * valid step, are switched off with selects (never multiplied by zero), so
 * padding values -- NaN included -- never reach a result; check_finite scans
 * only the elements a loss reads (rl_seq_bad, cl_seq_bad in loss_impl.h), so
 * they never raise either.
 */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "lanes.h"
#include "parallel.h"
#include "select.h"
#include "sizes.h"
#include "trajloss.h"

/* rho(r) and its derivative for the three penalties (see trajloss.h). A NaN
 * residual (an unchecked NaN input, check_finite off) has a NaN derivative
 * too: no comparison may turn it into a finite-looking 0 or -delta. */
static inline double rho(tl_penalty penalty, double delta, double r, double *drho)
{
    switch (penalty) {
    case TL_PENALTY_MSE:
        *drho = 2.0 * r;
        return r * r;
    case TL_PENALTY_L1:
        *drho = r != r ? r : (double)((r > 0.0) - (r < 0.0));
        return fabs(r);
    default: {
        const double abs_r = fabs(r);
        if (abs_r <= delta) {
            *drho = r;
            return 0.5 * r * r;
        }
        *drho = r > 0.0 ? delta : r < 0.0 ? -delta : r;
        return delta * (abs_r - 0.5 * delta);
    }
    }
}

/*
 * One run of contiguous elements with per-element weights wv:
 * returns sum wv rho(p - q) and, when g is given, stores scale wv rho'(p - q).
 * The sum is kept in four interleaved partial sums (element e goes to
 * e mod 4), a fixed order the compiler can vectorise -- a single running
 * sum would force it to add one element at a time.
 */
#define TL_PEN_RUN(T_, NAME)                                                                  \
    static double NAME(tl_penalty penalty, double delta, ptrdiff_t len, const T_ *p,          \
                       const T_ *q, const double *wv, double scale, T_ *g)                    \
    {                                                                                         \
        double part[4] = {0.0, 0.0, 0.0, 0.0}, d;                                             \
        if (penalty == TL_PENALTY_MSE && g != NULL) {                                         \
            for (ptrdiff_t e = 0; e < len; e++) {                                             \
                const double r = (double)p[e] - (double)q[e];                                 \
                part[e & 3] += wv[e] * r * r;                                                 \
                g[e] = (T_)(scale * wv[e] * 2.0 * r);                                         \
            }                                                                                 \
        } else {                                                                              \
            for (ptrdiff_t e = 0; e < len; e++) {                                             \
                part[e & 3] += wv[e] * rho(penalty, delta, (double)p[e] - (double)q[e], &d);  \
                if (g != NULL)                                                                \
                    g[e] = (T_)(scale * wv[e] * d);                                           \
            }                                                                                 \
        }                                                                                     \
        return (part[0] + part[1]) + (part[2] + part[3]);                                     \
    }
TL_PEN_RUN(double, pen_run_f64)
TL_PEN_RUN(float, pen_run_f32)
#undef TL_PEN_RUN

static int finite_nonneg(double x)
{
    return isfinite(x) && x >= 0.0;
}

static tl_status check_spec(const tl_loss_spec *spec)
{
    if (spec == NULL)
        return TL_ERR_VALUE;
    tl_status status = tl_selection_check(&spec->sel);
    if (status != TL_OK)
        return status;
    if ((int)spec->penalty < 0 || spec->penalty >= TL_PENALTY_COUNT)
        return TL_ERR_VALUE;
    if (spec->lanes != 0 && spec->lanes != TL_LANES_F64)
        return TL_ERR_VALUE;
    if (spec->penalty == TL_PENALTY_HUBER && !(isfinite(spec->delta) && spec->delta > 0.0))
        return TL_ERR_VALUE;
    if (!finite_nonneg(spec->control_weight) || !finite_nonneg(spec->trajectory_weight) ||
        !finite_nonneg(spec->terminal_weight))
        return TL_ERR_VALUE;
    return TL_OK;
}

/* How many steps each term averages over. */
typedef struct {
    double control;    /* sum_b |S_b| */
    double trajectory; /* ... plus one per non-empty sequence with include_initial */
    double terminal;   /* non-empty sequences */
} tl_valid_counts;

static tl_valid_counts count_valid(const tl_selection *sel, int shift)
{
    tl_valid_counts N = {0.0, 0.0, 0.0};
    if (sel->lengths == NULL && sel->mask == NULL) {
        N.control = (double)sel->batch * (double)sel->steps;
        if (sel->steps > 0) {
            N.trajectory = (double)sel->batch * (double)(sel->steps + shift);
            N.terminal = (double)sel->batch;
        }
        return N;
    }
    for (ptrdiff_t b = 0; b < sel->batch; b++) {
        const ptrdiff_t count = tl_sel_span(sel, b).count;
        N.control += (double)count;
        if (count > 0) {
            N.trajectory += (double)(count + shift);
            N.terminal += 1.0;
        }
    }
    return N;
}

static tl_status check_rollout_call(const tl_system *sys, const tl_loss_spec *spec,
                                    const void *controls, const void *x0,
                                    const void *ref_controls, const void *ref_states,
                                    const void *target, const void *value, const void *work)
{
    tl_status status = tl_system_check(sys);
    if (status == TL_OK)
        status = check_spec(spec);
    if (status != TL_OK)
        return status;
    const unsigned terms = spec->terms;
    if (terms == 0 || (terms & ~7u) != 0 || value == NULL || work == NULL)
        return work == NULL ? TL_ERR_NOMEM : TL_ERR_VALUE;
    if (spec->sel.batch > 0 &&
        (controls == NULL || x0 == NULL ||
         ((terms & TL_TERM_CONTROL) && ref_controls == NULL) ||
         ((terms & TL_TERM_TRAJECTORY) && ref_states == NULL) ||
         ((terms & TL_TERM_TERMINAL) && target == NULL && ref_states == NULL)))
        return TL_ERR_VALUE;
    return TL_OK;
}

/* ---- scratch sizes ------------------------------------------------------ */


static ptrdiff_t chunk_count(ptrdiff_t batch)
{
    return batch / TL_CHUNK + (batch % TL_CHUNK != 0);
}

/* What each chunk reports: three term sums and two flags (1.0 when set). */
enum { P_CONTROL, P_TRAJECTORY, P_TERMINAL, P_BAD_INPUT, P_BAD_OUTPUT, P_COUNT };

/* Doubles of shared scratch: the powers (steps + 2) and P_COUNT per chunk. */
static int shared_doubles(ptrdiff_t steps, ptrdiff_t batch, size_t *count)
{
    *count = 0;
    return tl_add_product(count, (size_t)steps + 2, 1) &&
           tl_add_product(count, (size_t)chunk_count(batch), P_COUNT);
}

static size_t total_bytes(size_t shared, size_t per_worker, int workers)
{
    size_t doubles = shared;
    if (!tl_add_product(&doubles, per_worker, (size_t)workers))
        return 0;
    return tl_doubles_bytes(doubles);
}

size_t tl_control_loss_work_bytes(ptrdiff_t features, ptrdiff_t steps, ptrdiff_t batch,
                                  int threads)
{
    size_t shared, per_worker = 0;
    if (features < 1 || steps < 0 || batch < 0 || !shared_doubles(steps, batch, &shared))
        return 0;
    /* shared: the weights of every element of a row when they are the same
     * for every sequence (T x features); per worker: one row of weights */
    if (!tl_add_product(&shared, (size_t)steps, (size_t)features) ||
        !tl_add_product(&per_worker, (size_t)steps + 2, 1) ||
        !tl_add_product(&per_worker, (size_t)features, 1))
        return 0;
    return total_bytes(shared, per_worker, tl_workers(threads, chunk_count(batch)));
}

/* Vectors of one tile's buffer (rl_buf in tile_impl.h). */
#define TL_TILE_VECTORS(T, n, m) (2 * ((T) + 1) * (n) + 3 * (T) * (m))

/* Doubles one 256-bit vector takes: a tile's lanes in either dtype (tl_vd,
 * tl_vf), its sums (tl_vd), and one element of its rows. */
enum { VEC = 4 };

/* Doubles one worker of a rollout loss needs (carved up in rl_range and tile_impl.h). */
static int rollout_worker_doubles(size_t n, size_t m, size_t T, size_t *count)
{
    *count = 0;
    /* two tiles' buffers (TL_TILE_VECTORS): G and the ref states, transposed;
     * Gc and the controls and ref controls, transposed */
    return tl_add_product(count, 2 * (T + 1) * VEC, 2 * n) &&
           tl_add_product(count, 2 * T * VEC, 3 * m) &&
           tl_add_product(count, VEC, 5 * n + m) &&    /* x, xn, xf, lam, ln, uk (TL_REG_VECTORS) */
           tl_add_product(count, VEC * n, n + m) &&    /* the splats of Ad, Bd */
           tl_add_product(count, VEC, 2 * T + 2) &&    /* vc, vs, fin */
           tl_add_product(count, 2 * VEC, (T + 1) * n + T * m) && /* weight tables */
           tl_add_product(count, VEC, 8) &&            /* the sums (TL_SUM_VECTORS) */
           tl_add_product(count, 2 * VEC, 2 * T + 1) && /* wc, ws (up to 8 lanes) */
           tl_add_product(count, T + 2, 1) &&          /* one row of weights */
           tl_add_product(count, 4 * VEC, T * m) &&    /* staging: u, ru, gu (+ spare) */
           tl_add_product(count, VEC, (T + 1) * n) &&  /* staging: ref states */
           tl_add_product(count, 4 * VEC, n)           /* staging: x0, target, gx (+ spare) */
#if TL_WIDE /* the 512-bit kernels (wide_select, after TL_STAGE_DOUBLES): */
           && tl_add_product(count, 2 * VEC * 6 * (T + 1), n) && /* two tiles' buffers (6 of
                                                                    2 (T+1) n + 3 T m) and the
                                                                    weight tables */
           tl_add_product(count, 2 * VEC * 8 * T, m) &&
           tl_add_product(count, 2 * VEC, 2 * T + 2)   /* vc, vs, fin */
#endif
        ;
}

/* Where in a worker's scratch the staging area ends (from its start, in
 * doubles) and the eight-lane kernels' scratch begins. */
#define TL_STAGE_DOUBLES(T, n, m) (4 * VEC * (T) * (m) + VEC * ((T) + 1) * (n) + 4 * VEC * (n))

size_t tl_rollout_loss_work_bytes(ptrdiff_t n, ptrdiff_t m, ptrdiff_t steps, ptrdiff_t batch,
                                  int threads)
{
    size_t shared, per_worker;
    /* steps < INT_MAX: a float32 tile compares step indices in int lanes */
    if (n < 1 || n > TL_MAX_DIM || m < 1 || m > TL_MAX_DIM || steps < 0 || steps >= INT_MAX ||
        batch < 0 ||
        (size_t)steps > SIZE_MAX / 8 / TL_MAX_DIM || !shared_doubles(steps, batch, &shared) ||
        !rollout_worker_doubles((size_t)n, (size_t)m, (size_t)steps, &per_worker))
        return 0;
    return total_bytes(shared, per_worker, tl_workers(threads, chunk_count(batch)));
}

/* Everything a rollout-loss tile needs that is the same for the whole call. */
typedef struct {
    const tl_system *sys;
    const tl_loss_spec *spec;
    ptrdiff_t B, T, n, m;
    int shift, uniform;
    double sc, st, sf; /* gradient scale of each term: weight / (count * dim), times
                        * TL_RHO_SCALE (lanes.h) */
    const double *powers;
    double *partials;  /* 3 per chunk */
    double *worker_work;
    size_t worker_doubles;
    int prefetch;      /* do the fast kernels prefetch the tiles ahead (TL_PREFETCH_BYTES)? */
} tl_rl_const;

/* A call whose arrays (the inputs its terms read and the gradients) hold
 * more bytes than this prefetches its inputs TL_AHEAD tiles ahead in the
 * fast kernels. Measured on W1 (one thread, 2 MiB L2, 32 MiB L3): 8-17 %
 * faster at B = 262144 (170 MB in float64, 85 MB in float32) and 16 % at
 * 32768 in float64 (21 MB); 3 % slower at 16384 in float64 (11 MB), where
 * the arrays stay in the L3 between calls and the prefetches are only
 * extra instructions. */
#define TL_PREFETCH_BYTES (16.0 * 1024 * 1024)
#define TL_AHEAD 2 /* tiles: 2 KiB of W1's inputs, in both dtypes (1 and 3 measured slower) */
#define TL_LINE 64 /* bytes in a cache line */

/* The sum over chunks of one slot, in chunk order (the same for any threads). */
static double sum_partials(const double *partials, ptrdiff_t chunks, int slot)
{
    double sum = 0.0;
    for (ptrdiff_t c = 0; c < chunks; c++)
        sum += partials[P_COUNT * c + slot];
    return sum;
}

/* The call's status and value->nonfinite from the chunks' flags. */
static tl_status finish_call(const double *partials, ptrdiff_t chunks, tl_loss_value *value)
{
    value->nonfinite = sum_partials(partials, chunks, P_BAD_OUTPUT) > 0.0 ||
                       !isfinite(value->total) || !isfinite(value->control) ||
                       !isfinite(value->trajectory) || !isfinite(value->terminal);
    return sum_partials(partials, chunks, P_BAD_INPUT) > 0.0 ? TL_ERR_NONFINITE : TL_OK;
}

/* A chunk's sums (rl_range; P_COUNT above): for each term two sets of four
 * double lanes, one for the chunk's even tiles and one for its odd ones, at
 * sums[2 term + parity] -- the control, trajectory and terminal terms and the
 * fast kernels' gradient check (tile_impl.h). A tile of twice the lanes then
 * holds an even and an odd tile side by side and adds into the same lanes
 * in the same order. */
#define TL_SUM_C 0
#define TL_SUM_T 2
#define TL_SUM_F 4
#define TL_SUM_CHK 6
#define TL_SUM_VECTORS 8
#define TL_VS tl_vd  /* a tile's sums, in registers */
#define TL_PAIRED 0  /* does one TL_VS hold both sets? */

#if TL_WIDE
/* The fast kernels hand pairs of full tiles to the 512-bit kernels at the
 * end of this file, where the CPU has AVX-512 (tl_wide_for_f64/_f32). */
typedef void (*tl_wide_fn)(const tl_rl_const *c, const void *ts, int selected, const void *a,
                           ptrdiff_t b0, ptrdiff_t pairs, tl_vd *sums, double *work);
static tl_wide_fn tl_wide_for_f64(const tl_rl_const *c, ptrdiff_t n, ptrdiff_t m, unsigned terms);
static tl_wide_fn tl_wide_for_f32(const tl_rl_const *c, ptrdiff_t n, ptrdiff_t m, unsigned terms);
#define TL_WIDE_RUN 1
#else
#define TL_WIDE_RUN 0
#endif

#define TL_T double
#define TL_V tl_vd
#define TL_VM tl_vm
#define TL_VL TL_LANES_F64
#define TL_SFX(name) name##_f64
#include "loss_impl.h"
#undef TL_T
#undef TL_V
#undef TL_VM
#undef TL_VL
#undef TL_SFX

#define TL_T float
#define TL_V tl_vf
#define TL_VM tl_vi
#define TL_VL TL_LANES_F32
#define TL_SFX(name) name##_f32
#include "loss_impl.h"
#undef TL_T
#undef TL_V
#undef TL_VM
#undef TL_VL
#undef TL_SFX

#if TL_WIDE
/* ---- 512-bit tiles, for AVX-512 -------------------------------------------
 * Only the fast kernels: a chunk's full tiles of a uniform selection, two at
 * a time, the low half of every vector an even tile and the high half the
 * odd one after it. The same source (tile_impl.h, wide_impl.h) with eight
 * float64 or sixteen float32 lanes (lanes8.h), and sums of eight double lanes
 * that are the 256-bit kernels' two sets (TL_SUM_C), so every value rounds
 * exactly as in 256-bit tiles. Compiled for AVX-512 and called only where
 * the CPU has it; everything they call is compiled here too, so vectors are
 * passed between functions the same way on both sides. */
#pragma GCC push_options
#pragma GCC target("avx2,avx512f,avx512dq,avx512vl")
#include "lanes8.h"
#undef TL_SUM_C
#undef TL_SUM_T
#undef TL_SUM_F
#undef TL_SUM_CHK
#undef TL_VS
#undef TL_PAIRED
#define TL_SUM_C 0 /* in eight-lane vectors: the two sets of a term side by side */
#define TL_SUM_T 1
#define TL_SUM_F 2
#define TL_SUM_CHK 3
#define TL_VS tl_v8d
#define TL_PAIRED 1

/* Calls with fewer sequences keep 256-bit tiles, and so do calls that
 * stream their arrays from memory (c->prefetch, TL_PREFETCH_BYTES). W1 in
 * float64 on one thread (an Intel Xeon with AVX-512; eight lanes / four,
 * interleaved in one process): 1.10-1.17 at B = 64, 1.01-1.06 at 256,
 * 0.92-0.96 at 512, 0.75-0.78 at 1024, 0.84-0.88 at 2048-4096, 0.88-0.99 at
 * 16384 (11 MB) -- and 1.19-1.27 at 262144 (170 MB), where the eight-row
 * loads of a tile from memory cost more than its arithmetic saves. */
#define TL_WIDE_MIN_BATCH 512

#define TL_T double
#define TL_V tl_v8d
#define TL_VM tl_v8m
#define TL_VL TL_LANES_F64X8
#define TL_SFX(name) name##_f64x8
#define TL_NARROW(name) name##_f64
#include "wide_impl.h" /* which undefines these */

/* Rows of 8-15 floats (TL_HALF in tile_impl.h; W1's 15 controls) move by
 * halves: columns 0-7 of sixteen rows into dst[0..7] by the eight-lane
 * tiles' 8 x 8 transpose of each eight rows and a join, instead of sixteen
 * single loads a column; and back. */
static inline void tl_vtranspose_half_f32x16(const float *src, ptrdiff_t stride, tl_v16f dst[8])
{
    tl_vf lo[8], hi[8];
    rl_transpose_block_f32(src, stride, lo);
    rl_transpose_block_f32(src + 8 * stride, stride, hi);
    for (int c = 0; c < 8; c++)
        dst[c] = tl_vjoin_f32x16(lo[c], hi[c]);
}

static inline void tl_vuntranspose_half_f32x16(const tl_v16f src[8], float *dst, ptrdiff_t stride)
{
    tl_vf lo[8], hi[8];
    for (int c = 0; c < 8; c++) {
        lo[c] = TL_SHUF(src[c], src[c], 0, 1, 2, 3, 4, 5, 6, 7);
        hi[c] = TL_SHUF(src[c], src[c], 8, 9, 10, 11, 12, 13, 14, 15);
    }
    rl_untranspose_block_f32(lo, dst, stride);
    rl_untranspose_block_f32(hi, dst + 8 * stride, stride);
}

#define TL_T float
#define TL_V tl_v16f
#define TL_VM tl_v16i
#define TL_VL TL_LANES_F32X16
#define TL_SFX(name) name##_f32x16
#define TL_NARROW(name) name##_f32
#define TL_HALF TL_HALF_F32X16
#include "wide_impl.h"
#pragma GCC pop_options
#endif /* TL_WIDE */
