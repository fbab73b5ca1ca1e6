/*
 * loss.c -- the losses and their analytic gradients: the driver that every
 * loss call goes through, and the plain reference kernel of the rollout
 * losses.
 *
 * The driver. The batch is cut into chunks of TL_CHUNK sequences
 * (parallel.h); each chunk's sums are stored and added in chunk order, so the
 * value does not depend on how many threads ran. A chunk's whole tiles of
 * TL_TILE sequences go through the fast kernel where one applies (tile.c,
 * engine.h), the rest through tl_loss_seq below; which is decided by the
 * chunk alone, never by the threads. With check_finite, the rows a chunk
 * reads are scanned whole just before its kernel reads them (from cache);
 * only when that scan finds a NaN or inf are the elements the loss reads
 * looked at one by one, so padding never raises. A rollout loss under a
 * uniform selection skips the scan when the chunk's sums are finite, which
 * proves its inputs are (sums_prove_finite).
 *
 * The reference kernel (tl_loss_seq) runs one sequence in double: the
 * forward rollout of its states up to the last one scored, then one
 * backward sweep that adds each state's penalty derivative to the adjoint
 * lambda_k = dL/dx_k and each control's to B_k^T lambda_{k+1}. It reads the
 * system through rollout.h's step and adjoint, so every form of tl_dynamics
 * (shared, per sample, per step, with offset) runs through the same lines.
 */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "engine.h"
#include "parallel.h"
#include "penalty.h"
#include "rollout.h"
#include "select.h"
#include "sizes.h"

/* ---- checks and counts --------------------------------------------------- */

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
    if ((int)spec->penalty < 0 || spec->penalty >= TL_PENALTY_COUNT ||
        (int)spec->kernel < 0 || spec->kernel >= TL_KERNEL_COUNT)
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

static size_t elem_size(tl_dtype dtype)
{
    return dtype == TL_F64 ? sizeof(double) : sizeof(float);
}

static const void *elem_at(tl_dtype dtype, const void *p, ptrdiff_t i)
{
    return p == NULL ? NULL : (const char *)p + (size_t)i * elem_size(dtype);
}

static int run_finite(tl_dtype dtype, const void *p, ptrdiff_t count)
{
    return dtype == TL_F64 ? tl_all_finite_f64((const double *)p, count)
                           : tl_all_finite_f32((const float *)p, count);
}

/* ---- the workspace -------------------------------------------------------- */

/* What each chunk reports: three term sums and two flags (1.0 when set). */
enum { P_CONTROL, P_TRAJECTORY, P_TERMINAL, P_BAD_INPUT, P_BAD_OUTPUT, P_COUNT };

/* A loss call's scratch, carved from the caller's `work` by loss_work. */
typedef struct {
    double *powers;        /* steps + 2: tl_sel_powers */
    double *partials;      /* P_COUNT per chunk */
    double *flat;          /* control loss: T x D weights w_t f_d of a uniform selection */
    double *workers;       /* worker_doubles for each worker */
    size_t worker_doubles;
    int worker_count;
    size_t bytes;          /* of all of it; 0 when it cannot be addressed */
} tl_loss_work;

static ptrdiff_t chunk_count(ptrdiff_t batch)
{
    return batch / TL_CHUNK + (batch % TL_CHUNK != 0);
}

/* Multiply-adds a sequence costs (about): what decides whether threads pay. */
static double sequence_cost(const tl_dynamics *dyn, ptrdiff_t features, ptrdiff_t steps)
{
    const double width = dyn != NULL ? (double)dyn->n * (double)(dyn->n + dyn->m) * 2.0
                                     : (double)features;
    return (double)steps * (width + 8.0);
}

/* A thread costs some 50 us to wake and join: a worker needs at least this
 * many multiply-adds (about 200 us of work) before another one pays. */
#define TL_MIN_WORK_PER_WORKER 4e5

static int loss_workers(const tl_dynamics *dyn, ptrdiff_t features, const tl_loss_spec *spec)
{
    const ptrdiff_t chunks = chunk_count(spec->sel.batch);
    const double work = (double)spec->sel.batch * sequence_cost(dyn, features, spec->sel.steps);
    double useful = work / TL_MIN_WORK_PER_WORKER;
    if (useful > (double)chunks)
        useful = (double)chunks;
    int workers = spec->threads < 1 ? 1 : spec->threads;
    if (workers > TL_MAX_WORKERS)
        workers = TL_MAX_WORKERS;
    return useful < (double)workers ? (useful < 1.0 ? 1 : (int)useful) : workers;
}

static int stage_doubles(const tl_dynamics *dyn, ptrdiff_t T, size_t *count);

/* Lays the scratch of a call out from base (NULL: only sizes it). */
static tl_loss_work loss_work(const tl_dynamics *dyn, ptrdiff_t features,
                              const tl_loss_spec *spec, void *base)
{
    tl_loss_work w = {0};
    const ptrdiff_t T = spec->sel.steps, B = spec->sel.batch;
    size_t per = 0, shared = 0;
    int ok = tl_add_product(&shared, (size_t)T + 2, 1) &&
             tl_add_product(&shared, (size_t)chunk_count(B), P_COUNT);
    if (dyn == NULL) {
        ok = ok && tl_add_product(&shared, (size_t)T, (size_t)features) &&
             tl_add_product(&per, (size_t)T + 2 + (size_t)features, 1);
    } else {
        const size_t seq = tl_loss_seq_doubles(dyn->n, dyn->m, T);
        const size_t tile = tl_tile_doubles(dyn->n, dyn->m, T);
        ok = ok && seq != 0 && tl_add_product(&per, seq > tile ? seq : tile, 1) &&
             (tile == 0 || stage_doubles(dyn, T, &per));
    }
    w.worker_count = loss_workers(dyn, features, spec);
    w.worker_doubles = per;
    size_t total = shared;
    if (!ok || !tl_add_product(&total, per, (size_t)w.worker_count))
        return w;
    w.bytes = tl_doubles_bytes(total);
    if (base != NULL && w.bytes != 0) {
        w.powers = (double *)base;
        w.partials = w.powers + T + 2;
        w.flat = w.partials + P_COUNT * chunk_count(B);
        w.workers = w.flat + (dyn == NULL ? T * features : 0);
    }
    return w;
}

size_t tl_loss_work_bytes(const tl_dynamics *dyn, ptrdiff_t features, const tl_loss_spec *spec)
{
    if (spec == NULL || spec->sel.batch < 0 || spec->sel.steps < 0 ||
        spec->sel.steps >= INT_MAX || (dyn == NULL && features < 1) ||
        (dyn != NULL && (dyn->n < 1 || dyn->n > TL_MAX_DIM || dyn->m < 1 || dyn->m > TL_MAX_DIM)))
        return 0;
    return loss_work(dyn, features, spec, NULL).bytes;
}

/* ---- the sums of the chunks ------------------------------------------------- */

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

/* ---- what a loss reads (check_finite) -------------------------------------- */

/* Are steps 0 .. end - 1 of a row of `width`-element steps finite: all of
 * them, or (valid_only) only those sequence b's selection marks valid? */
static int steps_finite(const tl_selection *sel, ptrdiff_t b, tl_dtype dtype, const void *row,
                        ptrdiff_t width, ptrdiff_t end, int valid_only)
{
    if (valid_only && sel->lengths != NULL && sel->lengths[b] < end)
        end = (ptrdiff_t)sel->lengths[b];
    if (!valid_only || sel->mask == NULL)
        return run_finite(dtype, row, end * width);
    for (ptrdiff_t t = 0; t < end; t++)
        if (tl_sel_valid(sel, b, t) && !run_finite(dtype, elem_at(dtype, row, t * width), width))
            return 0;
    return 1;
}

/* The TL_IN_* bits of sequence b's inputs holding NaN or inf where the call
 * reads them (see "Padding" in trajloss.h):
 *   controls     up to the last valid step, or only the valid ones when no
 *                state is scored (a masked-out control before the last valid
 *                step drives the states after it);
 *   x0           when a state is scored;
 *   ref_controls at valid steps (the control term);
 *   ref_states   at the states scored; target (the terminal term).
 * dyn NULL: the control loss, pred in controls and target in ref_controls. */
static unsigned seq_bad(const tl_dynamics *dyn, ptrdiff_t D, const tl_loss_spec *spec,
                        const tl_loss_io *io, ptrdiff_t b)
{
    const tl_selection *sel = &spec->sel;
    const tl_seq_span span = tl_sel_span(sel, b);
    if (span.count == 0)
        return 0;
    const tl_dtype dt = io->dtype;
    const ptrdiff_t T = sel->steps, K = span.last + 1;
    if (dyn == NULL)
        return (unsigned)!steps_finite(sel, b, dt, elem_at(dt, io->controls, b * T * D), D, T, 1) *
                   TL_IN_CONTROLS |
               (unsigned)!steps_finite(sel, b, dt, elem_at(dt, io->ref_controls, b * T * D), D, T,
                                       1) * TL_IN_REF_CONTROLS;
    const ptrdiff_t n = dyn->n, m = dyn->m, su = T * m, ss = (T + 1) * n;
    const unsigned terms = spec->terms;
    const int states = (terms & (TL_TERM_TRAJECTORY | TL_TERM_TERMINAL)) != 0;
    unsigned bad = 0;
    if (!steps_finite(sel, b, dt, elem_at(dt, io->controls, b * su), m, K, !states))
        bad |= TL_IN_CONTROLS;
    if (states && !run_finite(dt, elem_at(dt, io->x0, b * n), n))
        bad |= TL_IN_X0;
    if ((terms & TL_TERM_CONTROL) &&
        !steps_finite(sel, b, dt, elem_at(dt, io->ref_controls, b * su), m, K, 1))
        bad |= TL_IN_REF_CONTROLS;
    const void *rs = elem_at(dt, io->ref_states, b * ss);
    if ((terms & TL_TERM_TRAJECTORY) &&
        !(steps_finite(sel, b, dt, elem_at(dt, rs, n), n, K, 1) &&
          (!spec->include_initial || run_finite(dt, rs, n))))
        bad |= TL_IN_REF_STATES;
    if (terms & TL_TERM_TERMINAL) {
        if (io->target != NULL && !run_finite(dt, elem_at(dt, io->target, b * n), n))
            bad |= TL_IN_TARGET;
        if (io->target == NULL && !run_finite(dt, elem_at(dt, rs, K * n), n))
            bad |= TL_IN_REF_STATES;
    }
    return bad;
}

unsigned tl_loss_bad_inputs(const tl_dynamics *dyn, ptrdiff_t features,
                            const tl_loss_spec *spec, const tl_loss_io *io)
{
    unsigned bad = 0;
    for (ptrdiff_t b = 0; b < spec->sel.batch; b++)
        bad |= seq_bad(dyn, features, spec, io, b);
    return bad;
}

/* Are the elements rows b0 .. b1 - 1 read all finite? Each array's rows are
 * scanned whole first (finite rows need nothing more); only when that finds
 * a NaN or inf -- in padding, perhaps -- is each row looked at element by
 * element against what it reads. */
static int rows_read_finite(const tl_dynamics *dyn, ptrdiff_t D, const tl_loss_spec *spec,
                            const tl_loss_io *io, ptrdiff_t b0, ptrdiff_t b1)
{
    const ptrdiff_t T = spec->sel.steps, rows = b1 - b0;
    const tl_dtype dt = io->dtype;
    const unsigned terms = dyn == NULL ? TL_TERM_CONTROL : spec->terms;
    const ptrdiff_t su = dyn == NULL ? T * D : T * dyn->m, n = dyn == NULL ? 0 : dyn->n;
    const ptrdiff_t ss = (T + 1) * n;
    const void *rs = (terms & TL_TERM_TRAJECTORY) ||
                             ((terms & TL_TERM_TERMINAL) && io->target == NULL)
                         ? io->ref_states
                         : NULL;
    const struct {
        const void *p;
        ptrdiff_t row;
    } arrays[5] = {{io->controls, su},
                   {dyn != NULL ? io->x0 : NULL, n},
                   {(terms & TL_TERM_CONTROL) ? io->ref_controls : NULL, su},
                   {rs, ss},
                   {(terms & TL_TERM_TERMINAL) ? io->target : NULL, n}};
    int all = 1;
    for (int i = 0; i < 5 && all; i++)
        if (arrays[i].p != NULL && arrays[i].row > 0)
            all = run_finite(dt, elem_at(dt, arrays[i].p, b0 * arrays[i].row), rows * arrays[i].row);
    for (ptrdiff_t b = b0; b < b1 && !all; b++)
        if (seq_bad(dyn, D, spec, io, b) != 0)
            return 0;
    return 1;
}

/* ---- the last, partial tile ------------------------------------------------- *
 * A batch whose size is not a multiple of TL_TILE ends in a partial tile. It
 * runs through the fast kernel too, so that every sequence of a call is
 * computed alike (float32 in float32): its rows are copied into a staging
 * tile of TL_TILE rows whose extra lanes are sequences with no valid step
 * (length 0: they add nothing), with a copy of the last row's system where
 * the system is per sample; the gradients are copied back. */

/* Doubles of one field's staged matrices: TL_TILE samples, each its steps
 * (dyn->steps when it varies in time) of `size` doubles; 0 when shared. */
static size_t field_stage(const tl_field *f, const tl_dynamics *dyn, size_t size)
{
    if (f->data == NULL || f->batch_stride == 0)
        return 0;
    return TL_TILE * size * (f->step_stride != 0 ? (size_t)dyn->steps : 1);
}

/* Adds the staging area's doubles to *count: controls, ref controls and
 * their gradient (T m each), ref states ((T+1) n), x0, target and its
 * gradient (n each), lengths and mask (T + 1), a tile each, and the
 * per-sample fields. */
static int stage_doubles(const tl_dynamics *dyn, ptrdiff_t T, size_t *count)
{
    const size_t n = (size_t)dyn->n, m = (size_t)dyn->m, S = (size_t)T;
    return tl_add_product(count, TL_TILE, 3 * S * m) &&
           tl_add_product(count, TL_TILE, (S + 1) * n + 3 * n + S + 1) &&
           tl_add_product(count, 1, field_stage(&dyn->A, dyn, n * n)) &&
           tl_add_product(count, 1, field_stage(&dyn->B, dyn, n * m)) &&
           tl_add_product(count, 1, field_stage(&dyn->c, dyn, n));
}

/* Rows b0 .. b0 + rows - 1 of a batch array of `row` elements a sequence,
 * into a staging tile (zeros after them); NULL stays NULL. */
static void *stage_rows(tl_dtype dt, const void *src, ptrdiff_t row, ptrdiff_t b0,
                        ptrdiff_t rows, double **at)
{
    if (src == NULL)
        return NULL;
    void *dst = *at;
    const size_t es = elem_size(dt);
    memset(dst, 0, (size_t)(TL_TILE * row) * es);
    memcpy(dst, elem_at(dt, src, b0 * row), (size_t)(rows * row) * es);
    *at += TL_TILE * row; /* a double a slot, whatever the dtype */
    return dst;
}

/* A per-sample field's TL_TILE samples from b0 (the last row repeated),
 * sample-major and dense whatever the field's own strides. */
static tl_field stage_field(const tl_field *f, const tl_dynamics *dyn, ptrdiff_t size,
                            ptrdiff_t b0, ptrdiff_t rows, double **at)
{
    if (f->data == NULL || f->batch_stride == 0)
        return *f;
    const ptrdiff_t steps = f->step_stride != 0 ? dyn->steps : 1;
    tl_field g = {*at, steps * size, f->step_stride != 0 ? size : 0};
    for (ptrdiff_t l = 0; l < TL_TILE; l++)
        for (ptrdiff_t k = 0; k < steps; k++)
            memcpy(*at + l * g.batch_stride + k * size,
                   tl_field_at(f, b0 + (l < rows ? l : rows - 1), k), (size_t)size * sizeof(double));
    *at += TL_TILE * g.batch_stride;
    return g;
}

static void partial_tile(const tl_loss_ctx *c, tl_tile_fn fast, ptrdiff_t b0, ptrdiff_t rows,
                         double sums[3], double *work, double *stage)
{
    const tl_loss_io *io = c->io;
    const tl_dtype dt = io->dtype;
    const tl_selection *sel = &c->spec->sel;
    const ptrdiff_t T = c->T, n = c->n, m = c->m;
    double *at = stage;
    tl_loss_io sio = *io;
    sio.controls = stage_rows(dt, io->controls, T * m, b0, rows, &at);
    sio.ref_controls = stage_rows(dt, io->ref_controls, T * m, b0, rows, &at);
    sio.ref_states = stage_rows(dt, io->ref_states, (T + 1) * n, b0, rows, &at);
    sio.x0 = stage_rows(dt, io->x0, n, b0, rows, &at);
    sio.target = stage_rows(dt, io->target, n, b0, rows, &at);
    sio.grad_controls = io->grad_controls != NULL ? at : NULL;
    at += TL_TILE * T * m;
    sio.grad_x0 = io->grad_x0 != NULL ? at : NULL;
    at += TL_TILE * n;
    /* the selection: each row's own, and no valid step in the extra lanes */
    tl_loss_spec spec = *c->spec;
    int64_t *lengths = (int64_t *)at;
    unsigned char *mask = (unsigned char *)(at + TL_TILE);
    spec.sel.batch = TL_TILE;
    spec.sel.lengths = NULL;
    spec.sel.mask = NULL;
    if (sel->mask != NULL) {
        memset(mask, 0, (size_t)(TL_TILE * T));
        memcpy(mask, sel->mask + b0 * T, (size_t)(rows * T));
        spec.sel.mask = mask;
    } else {
        for (ptrdiff_t l = 0; l < TL_TILE; l++)
            lengths[l] = l >= rows ? 0 : sel->lengths != NULL ? sel->lengths[b0 + l] : T;
        spec.sel.lengths = lengths;
    }
    at += TL_TILE * (T + 1);
    tl_dynamics dyn = *c->dyn;
    dyn.A = stage_field(&c->dyn->A, c->dyn, n * n, b0, rows, &at);
    dyn.B = stage_field(&c->dyn->B, c->dyn, n * m, b0, rows, &at);
    dyn.c = stage_field(&c->dyn->c, c->dyn, n, b0, rows, &at);
    if (dyn.batch != 0)
        dyn.batch = TL_TILE;

    tl_loss_ctx sc = *c;
    sc.dyn = &dyn;
    sc.spec = &spec;
    sc.io = &sio;
    sc.B = TL_TILE;
    sc.uniform = 0;
    int grads_nonfinite = 0; /* the caller scans the rows copied back */
    fast(&sc, 0, TL_TILE, sums, &grads_nonfinite, work, 0);
    const size_t es = elem_size(dt);
    if (io->grad_controls != NULL)
        memcpy((char *)io->grad_controls + (size_t)(b0 * T * m) * es, sio.grad_controls,
               (size_t)(rows * T * m) * es);
    if (io->grad_x0 != NULL)
        memcpy((char *)io->grad_x0 + (size_t)(b0 * n) * es, sio.grad_x0, (size_t)(rows * n) * es);
}

/* ---- the reference kernel of the rollout losses ---------------------------- */

size_t tl_loss_seq_doubles(ptrdiff_t n, ptrdiff_t m, ptrdiff_t T)
{
    size_t count = 0;
    /* states (T+1) n; lambda, its predecessor, the state gradient: 3 n;
     * a control gradient: m; two rows of time weights: 2 (T + 2) */
    if (!tl_add_product(&count, (size_t)T + 1, (size_t)n) ||
        !tl_add_product(&count, 3, (size_t)n) || !tl_add_product(&count, 1, (size_t)m) ||
        !tl_add_product(&count, 2, (size_t)T + 2))
        return 0;
    return count;
}

/* sum_i s_i rho(x_i - ref_i), adding scale s_i rho'(x_i - ref_i) to g[i]. */
static double score(const tl_loss_spec *spec, ptrdiff_t len, const double *x, tl_dtype dtype,
                    const void *ref, const double *s, double scale, double *g)
{
    double sum = 0.0, d;
    for (ptrdiff_t i = 0; i < len; i++) {
        const double si = s != NULL ? s[i] : 1.0;
        sum += si * tl_rho(spec->penalty, spec->delta, x[i] - tl_load(dtype, ref, i), &d);
        g[i] += scale * si * d;
    }
    return sum;
}

void tl_loss_seq(const tl_loss_ctx *c, ptrdiff_t b, double sums[3], double *work)
{
    const tl_loss_spec *spec = c->spec;
    const tl_selection *sel = &spec->sel;
    const tl_loss_io *io = c->io;
    const tl_dynamics *dyn = c->dyn;
    const tl_dtype dt = io->dtype;
    const ptrdiff_t T = c->T, n = c->n, m = c->m;
    const unsigned terms = spec->terms;
    const tl_seq_span span = tl_sel_span(sel, b);
    const ptrdiff_t K = span.last + 1; /* states 0 .. K are all the sequence needs */
    const void *u = elem_at(dt, io->controls, b * T * m);
    const void *ru = elem_at(dt, io->ref_controls, b * T * m);
    const void *rs = elem_at(dt, io->ref_states, b * (T + 1) * n);
    const void *tgt = io->target != NULL ? elem_at(dt, io->target, b * n) : elem_at(dt, rs, K * n);

    double *x = work, *lam = x + (T + 1) * n, *prev = lam + n, *g = prev + n, *gu = g + n;
    double *w = gu + m, *ws = w + T + 2;
    if (span.count > 0) {
        for (ptrdiff_t i = 0; i < n; i++)
            x[i] = tl_load(dt, io->x0, b * n + i);
        if (terms & (TL_TERM_TRAJECTORY | TL_TERM_TERMINAL))
            for (ptrdiff_t k = 0; k < K; k++)
                tl_dyn_step(dyn, b, k, x + k * n, dt, elem_at(dt, u, k * m), x + (k + 1) * n);
        tl_sel_weights(sel, b, 0, c->powers, w);
        if (c->shift)
            tl_sel_weights(sel, b, 1, c->powers, ws);
    }

    /* lambda_K: the terms of state K; then back to state 0 */
    for (ptrdiff_t i = 0; i < n; i++)
        lam[i] = 0.0;
    for (ptrdiff_t k = span.count > 0 ? K : -1; k >= 0; k--) {
        if (k < K) { /* step k: u_k's gradient, and lambda_k = A_k^T lambda_{k+1} */
            if (terms & (TL_TERM_TRAJECTORY | TL_TERM_TERMINAL))
                tl_dyn_adjoint(dyn, b, k, lam, prev, gu);
            else { /* no state is scored: lambda is 0, and the system is never read */
                memset(gu, 0, (size_t)m * sizeof(double));
                memset(prev, 0, (size_t)n * sizeof(double));
            }
            if ((terms & TL_TERM_CONTROL) && tl_sel_valid(sel, b, k)) {
                double d;
                for (ptrdiff_t j = 0; j < m; j++) {
                    const double f = spec->feature_weights != NULL ? spec->feature_weights[j] : 1.0;
                    const double r = tl_load(dt, u, k * m + j) - tl_load(dt, ru, k * m + j);
                    sums[0] += w[k] * f * tl_rho(spec->penalty, spec->delta, r, &d);
                    gu[j] += c->scale[0] * w[k] * f * d;
                }
            }
            if (io->grad_controls != NULL)
                for (ptrdiff_t j = 0; j < m; j++)
                    tl_store(dt, io->grad_controls, (b * T + k) * m + j, gu[j]);
            double *t = lam;
            lam = prev;
            prev = t;
        }
        /* the terms scoring state k add their derivatives to lambda_k */
        for (ptrdiff_t i = 0; i < n; i++)
            g[i] = 0.0;
        const int scored = k == 0 ? c->shift : tl_sel_valid(sel, b, k - 1);
        if ((terms & TL_TERM_TRAJECTORY) && scored) {
            const double wk = c->shift ? ws[k] : w[k - 1];
            sums[1] += wk * score(spec, n, x + k * n, dt, elem_at(dt, rs, k * n),
                                  spec->state_weights, c->scale[1] * wk, g);
        }
        if ((terms & TL_TERM_TERMINAL) && k == K)
            sums[2] += score(spec, n, x + k * n, dt, tgt, spec->state_weights, c->scale[2], g);
        for (ptrdiff_t i = 0; i < n; i++)
            lam[i] += g[i];
    }
    /* no gradient reaches the steps after the last valid one */
    if (io->grad_controls != NULL)
        for (ptrdiff_t j = (b * T + K) * m; j < (b + 1) * T * m; j++)
            tl_store(dt, io->grad_controls, j, 0.0);
    if (io->grad_x0 != NULL)
        for (ptrdiff_t i = 0; i < n; i++)
            tl_store(dt, io->grad_x0, b * n + i, span.count > 0 ? lam[i] : 0.0);
}

/* ---- the rollout losses -------------------------------------------------------- */

typedef struct {
    const tl_loss_ctx *c;
    const tl_loss_work *w;
    tl_tile_fn fast;
    size_t stage_doubles; /* at the end of each worker's scratch */
} tl_rl_job;

/* Are rows b0 .. b1 - 1 of the gradients finite? */
static int grads_finite(const tl_loss_io *io, ptrdiff_t su, ptrdiff_t n, ptrdiff_t b0,
                        ptrdiff_t b1)
{
    const tl_dtype dt = io->dtype;
    return (io->grad_controls == NULL ||
            run_finite(dt, elem_at(dt, io->grad_controls, b0 * su), (b1 - b0) * su)) &&
           (io->grad_x0 == NULL || run_finite(dt, elem_at(dt, io->grad_x0, b0 * n), (b1 - b0) * n));
}

/*
 * check_finite without a scan. Under a uniform selection (no lengths or
 * mask) every element a rollout loss reads reaches one of the term sums
 * through products and sums only: a control or reference control its
 * step's penalty (control term) or the states after it, x0 every state, a
 * reference state or target its own penalty; each a product with weights
 * and matrix coefficients, which may be 0 but 0 * NaN and 0 * inf are NaN.
 * Every penalty maps NaN to NaN and +-inf to +inf, and the sums add
 * nonnegative terms, so nothing cancels: a non-finite element read makes a
 * sum non-finite. Finite sums thus prove the chunk's inputs finite; other
 * sums (an overflow from finite but huge inputs, perhaps) are decided by
 * the scan of rows_read_finite after the kernel.
 */
static int sums_prove_finite(const double sums[3])
{
    return isfinite(sums[0]) && isfinite(sums[1]) && isfinite(sums[2]);
}

static void rl_range(void *ctx, ptrdiff_t c0, ptrdiff_t c1, int worker)
{
    const tl_rl_job *job = (const tl_rl_job *)ctx;
    const tl_loss_ctx *c = job->c;
    const tl_loss_spec *spec = c->spec;
    double *work = job->w->workers + (size_t)worker * job->w->worker_doubles;
    int prepared = 0; /* does work hold the fast kernel's preparation for c? */
    for (ptrdiff_t chunk = c0; chunk < c1; chunk++) {
        const ptrdiff_t start = chunk * TL_CHUNK;
        const ptrdiff_t end = start + TL_CHUNK < c->B ? start + TL_CHUNK : c->B;
        double sums[3] = {0.0, 0.0, 0.0};
        /* A uniform selection reads every element into a sum: see sums_prove_finite */
        int bad_in = spec->check_finite && !c->uniform &&
                     !rows_read_finite(c->dyn, 0, spec, c->io, start, end);
        ptrdiff_t b = start;
        const ptrdiff_t tiled = (end - start) / TL_TILE * TL_TILE;
        int grads_nonfinite = 0; /* of the rows the fast kernel wrote, start .. b - 1 */
        if (job->fast != NULL && tiled > 0) {
            job->fast(c, b, tiled, sums, &grads_nonfinite, work, prepared);
            prepared = 1;
            b += tiled;
        }
        const ptrdiff_t scan_from = b;
        if (job->fast != NULL && b < end) { /* (its own preparation, for another c) */
            partial_tile(c, job->fast, b, end - b, sums, work,
                         work + job->w->worker_doubles - job->stage_doubles);
            prepared = 0;
        } else
            for (; b < end; b++)
                tl_loss_seq(c, b, sums, work);
        if (spec->check_finite && c->uniform && !sums_prove_finite(sums))
            bad_in = !rows_read_finite(c->dyn, 0, spec, c->io, start, end);
        double *part = job->w->partials + P_COUNT * chunk;
        part[P_CONTROL] = sums[0];
        part[P_TRAJECTORY] = sums[1];
        part[P_TERMINAL] = sums[2];
        part[P_BAD_INPUT] = bad_in;
        part[P_BAD_OUTPUT] =
            grads_nonfinite || !grads_finite(c->io, c->T * c->m, c->n, scan_from, end);
    }
}

static tl_status check_rollout_call(const tl_dynamics *dyn, const tl_loss_spec *spec,
                                    const tl_loss_io *io, const tl_loss_value *value,
                                    const void *work)
{
    tl_status status = check_spec(spec);
    if (status == TL_OK)
        status = tl_dynamics_check(dyn, spec->sel.batch, spec->sel.steps);
    if (status != TL_OK)
        return status;
    const unsigned terms = spec->terms;
    if (terms == 0 || (terms & ~7u) != 0 || value == NULL || io == NULL ||
        (int)io->dtype < 0 || io->dtype >= TL_DTYPE_COUNT)
        return TL_ERR_VALUE;
    if (work == NULL)
        return TL_ERR_NOMEM;
    if (spec->sel.batch > 0 &&
        (io->controls == NULL || io->x0 == NULL ||
         ((terms & TL_TERM_CONTROL) && io->ref_controls == NULL) ||
         ((terms & TL_TERM_TRAJECTORY) && io->ref_states == NULL) ||
         ((terms & TL_TERM_TERMINAL) && io->target == NULL && io->ref_states == NULL)))
        return TL_ERR_VALUE;
    return TL_OK;
}

tl_status tl_rollout_loss(const tl_dynamics *dyn, const tl_loss_spec *spec,
                          const tl_loss_io *io, tl_loss_value *value, void *work)
{
    tl_status status = check_rollout_call(dyn, spec, io, value, work);
    if (status != TL_OK)
        return status;
    const tl_loss_work w = loss_work(dyn, 0, spec, work);
    if (w.bytes == 0)
        return TL_ERR_SHAPE; /* scratch that cannot be addressed: refused before work is touched */
    const tl_selection *sel = &spec->sel;
    const ptrdiff_t B = sel->batch, T = sel->steps, n = dyn->n, m = dyn->m;
    const ptrdiff_t chunks = chunk_count(B);
    const unsigned terms = spec->terms;
    const int shift = (terms & TL_TERM_TRAJECTORY) && spec->include_initial ? 1 : 0;
    const tl_valid_counts N = count_valid(sel, shift);
    if (N.control == 0.0)
        return TL_ERR_EMPTY;

    tl_sel_powers(sel, w.powers);
    /* terms not computed keep zero scales */
    const tl_loss_ctx c = {
        dyn, spec, io, B, T, n, m, shift, sel->lengths == NULL && sel->mask == NULL,
        {(terms & TL_TERM_CONTROL) ? spec->control_weight / (N.control * (double)m) : 0.0,
         (terms & TL_TERM_TRAJECTORY) ? spec->trajectory_weight / (N.trajectory * (double)n) : 0.0,
         (terms & TL_TERM_TERMINAL) ? spec->terminal_weight / (N.terminal * (double)n) : 0.0},
        w.powers};
    tl_rl_job job = {&c, &w, spec->kernel == TL_KERNEL_AUTO ? tl_tile_kernel(&c) : NULL, 0};
    if (job.fast != NULL)
        stage_doubles(dyn, T, &job.stage_doubles);
    tl_parallel_ranges(spec->pool, w.worker_count, chunks, rl_range, (void *)&job);

    value->control = (terms & TL_TERM_CONTROL)
                         ? sum_partials(w.partials, chunks, P_CONTROL) / (double)m / N.control
                         : 0.0;
    value->trajectory = (terms & TL_TERM_TRAJECTORY)
                            ? sum_partials(w.partials, chunks, P_TRAJECTORY) / (double)n /
                                  N.trajectory
                            : 0.0;
    value->terminal = (terms & TL_TERM_TERMINAL)
                          ? sum_partials(w.partials, chunks, P_TERMINAL) / (double)n / N.terminal
                          : 0.0;
    value->total = spec->control_weight * value->control +
                   spec->trajectory_weight * value->trajectory +
                   spec->terminal_weight * value->terminal;
    return finish_call(w.partials, chunks, value);
}

/* ---- the control loss ------------------------------------------------------- */

/*
 * One run of contiguous elements with per-element weights wv: returns
 * sum wv rho(p - q) and, when g is given, stores scale wv rho'(p - q). Four
 * interleaved partial sums (element e goes to e mod 4), a fixed order the
 * compiler can vectorise, where one running sum would add one at a time.
 */
#define TL_PEN_RUN(T_, NAME)                                                                  \
    static double NAME(tl_penalty penalty, double delta, ptrdiff_t len, const T_ *p,          \
                       const T_ *q, const double *wv, double scale, T_ *g)                    \
    {                                                                                         \
        double part[4] = {0.0, 0.0, 0.0, 0.0}, d;                                             \
        for (ptrdiff_t e = 0; e < len; e++) {                                                 \
            part[e & 3] += wv[e] * tl_rho(penalty, delta, (double)p[e] - (double)q[e], &d);   \
            if (g != NULL)                                                                    \
                g[e] = (T_)(scale * wv[e] * d);                                               \
        }                                                                                     \
        return (part[0] + part[1]) + (part[2] + part[3]);                                     \
    }
TL_PEN_RUN(double, pen_run_f64)
TL_PEN_RUN(float, pen_run_f32)
#undef TL_PEN_RUN

static double pen_run(tl_dtype dt, const tl_loss_spec *spec, ptrdiff_t len, const void *p,
                      const void *q, const double *wv, double scale, void *g)
{
    if (dt == TL_F64)
        return pen_run_f64(spec->penalty, spec->delta, len, p, q, wv, scale, g);
    return pen_run_f32(spec->penalty, spec->delta, len, p, q, wv, scale, g);
}

typedef struct {
    const tl_loss_spec *spec;
    const tl_loss_io *io;
    ptrdiff_t D;
    double scale;      /* 1 / (count * D) */
    const double *flat; /* T x D weights, when every sequence has the same */
    const double *powers;
    const tl_loss_work *w;
} tl_cl_job;

/* sum_t w_t sum_d f_d rho(...) of sequence b, storing its gradient row. */
static double cl_sequence(const tl_cl_job *j, ptrdiff_t b, double *w, double *wv)
{
    const tl_loss_spec *spec = j->spec;
    const tl_selection *sel = &spec->sel;
    const tl_dtype dt = j->io->dtype;
    const ptrdiff_t T = sel->steps, D = j->D, row = b * T * D;
    const void *p = elem_at(dt, j->io->controls, row), *q = elem_at(dt, j->io->ref_controls, row);
    void *g = j->io->grad_controls != NULL ? (char *)j->io->grad_controls + (size_t)row * elem_size(dt)
                                           : NULL;
    if (j->flat != NULL)
        return pen_run(dt, spec, T * D, p, q, j->flat, j->scale, g);
    double sum = 0.0;
    tl_sel_weights(sel, b, 0, j->powers, w);
    for (ptrdiff_t t = 0; t < T; t++) {
        void *gt = g != NULL ? (char *)g + (size_t)(t * D) * elem_size(dt) : NULL;
        if (!tl_sel_valid(sel, b, t)) {
            if (gt != NULL)
                memset(gt, 0, (size_t)D * elem_size(dt));
            continue;
        }
        for (ptrdiff_t d = 0; d < D; d++)
            wv[d] = w[t] * (spec->feature_weights != NULL ? spec->feature_weights[d] : 1.0);
        sum += pen_run(dt, spec, D, elem_at(dt, p, t * D), elem_at(dt, q, t * D), wv, j->scale,
                       gt);
    }
    return sum;
}

static void cl_range(void *ctx, ptrdiff_t c0, ptrdiff_t c1, int worker)
{
    const tl_cl_job *j = (const tl_cl_job *)ctx;
    const tl_loss_spec *spec = j->spec;
    double *w = j->w->workers + (size_t)worker * j->w->worker_doubles;
    double *wv = w + spec->sel.steps + 2;
    const ptrdiff_t B = spec->sel.batch;
    for (ptrdiff_t chunk = c0; chunk < c1; chunk++) {
        const ptrdiff_t start = chunk * TL_CHUNK;
        const ptrdiff_t end = start + TL_CHUNK < B ? start + TL_CHUNK : B;
        const int bad_in =
            spec->check_finite && !rows_read_finite(NULL, j->D, spec, j->io, start, end);
        double sum = 0.0;
        for (ptrdiff_t b = start; b < end; b++)
            sum += cl_sequence(j, b, w, wv);
        double *part = j->w->partials + P_COUNT * chunk;
        part[P_CONTROL] = sum;
        part[P_TRAJECTORY] = part[P_TERMINAL] = 0.0;
        part[P_BAD_INPUT] = bad_in;
        part[P_BAD_OUTPUT] = !grads_finite(j->io, spec->sel.steps * j->D, 0, start, end);
    }
}

tl_status tl_control_loss(const tl_loss_spec *spec, ptrdiff_t features, const tl_loss_io *io,
                          tl_loss_value *value, void *work)
{
    tl_status status = check_spec(spec);
    if (status != TL_OK)
        return status;
    if (features < 1)
        return TL_ERR_SHAPE;
    if (value == NULL || io == NULL || (int)io->dtype < 0 || io->dtype >= TL_DTYPE_COUNT)
        return TL_ERR_VALUE;
    if (work == NULL)
        return TL_ERR_NOMEM;
    const tl_selection *sel = &spec->sel;
    const tl_loss_work w = loss_work(NULL, features, spec, work);
    if (w.bytes == 0)
        return TL_ERR_SHAPE;
    const ptrdiff_t T = sel->steps, D = features, chunks = chunk_count(sel->batch);
    const double valid = count_valid(sel, 0).control;
    if (valid == 0.0)
        return TL_ERR_EMPTY;
    if (io->controls == NULL || io->ref_controls == NULL)
        return TL_ERR_VALUE;

    tl_sel_powers(sel, w.powers);
    tl_cl_job j = {spec, io, D, 1.0 / (valid * (double)D), NULL, w.powers, &w};
    if (sel->lengths == NULL && sel->mask == NULL) {
        /* every sequence has the same weights: lay them out once per element */
        tl_sel_weights(sel, 0, 0, w.powers, w.workers);
        for (ptrdiff_t t = 0; t < T; t++)
            for (ptrdiff_t d = 0; d < D; d++)
                w.flat[t * D + d] =
                    w.workers[t] * (spec->feature_weights != NULL ? spec->feature_weights[d] : 1.0);
        j.flat = w.flat;
    }
    tl_parallel_ranges(spec->pool, w.worker_count, chunks, cl_range, &j);

    value->control = sum_partials(w.partials, chunks, P_CONTROL) / (valid * (double)D);
    value->total = value->control;
    value->trajectory = value->terminal = 0.0;
    return finish_call(w.partials, chunks, value);
}
