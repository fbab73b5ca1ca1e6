/*
 * loss.c -- control, trajectory, terminal and combined losses with their
 * analytic gradients (kernels in loss_impl.h, one per storage type).
 *
 * Layout of the work. The batch is cut into chunks of TL_CHUNK sequences
 * (parallel.h); each chunk's partial sums are stored and added in chunk
 * order, so the value does not depend on how many threads ran. The rollout
 * losses process a chunk as tiles of sequences held side by side in vectors
 * (lanes.h; four in float64, eight in float32, computed in float and summed
 * in double): every operation acts on all lanes at once, and the
 * recurrences of different sequences overlap instead of waiting on each
 * other. Lanes past the end of the batch, and steps past a sequence's last
 * valid step, are switched off with selects (never multiplied by zero), so
 * padding values -- NaN included -- never reach a result.
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

/* rho(r) and its derivative for the three penalties (see trajloss.h). */
static inline double rho(tl_penalty penalty, double delta, double r, double *drho)
{
    switch (penalty) {
    case TL_PENALTY_MSE:
        *drho = 2.0 * r;
        return r * r;
    case TL_PENALTY_L1:
        *drho = (double)((r > 0.0) - (r < 0.0));
        return fabs(r);
    default: {
        const double abs_r = fabs(r);
        if (abs_r <= delta) {
            *drho = r;
            return 0.5 * r * r;
        }
        *drho = r > 0.0 ? delta : -delta;
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
           tl_add_product(count, VEC, 4) &&            /* the per-lane sums, gradient check */
           tl_add_product(count, 2 * VEC, 2 * T + 1) && /* wc, ws (up to 8 lanes) */
           tl_add_product(count, T + 2, 1) &&          /* one row of weights */
           tl_add_product(count, 4 * VEC, T * m) &&    /* staging: u, ru, gu (+ spare) */
           tl_add_product(count, VEC, (T + 1) * n) &&  /* staging: ref states */
           tl_add_product(count, 4 * VEC, n);          /* staging: x0, target, gx (+ spare) */
}

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
