/*
 * loss_impl.h -- the loss kernels, written once and included by loss.c for
 * each storage type (TL_T, TL_SFX as in rollout_impl.h; the tile types
 * TL_V, TL_VM and TL_VL of loss.c). Every sum is carried in double.
 * The control loss computes in double and rounds once when it stores; the
 * rollout losses compute the states, penalties and adjoints of a tile in
 * TL_T (float32 as PyTorch does, eight lanes a register) and widen each
 * penalty to double before it is summed.
 */

/* ---- control loss -------------------------------------------------------- */

typedef struct {
    const tl_loss_spec *spec;
    ptrdiff_t D;
    const TL_T *pred, *target;
    TL_T *grad;
    double scale;       /* 1 / (count * D) */
    const double *flat; /* T x D weights w_t f_d, when they are the same for every sequence */
    const double *powers;
    double *partials;
    double *worker_work;
    size_t worker_doubles;
} TL_SFX(cl_ctx);

/* sum_t w_t sum_d f_d rho(...) of sequence b, storing its gradient row. */
static double TL_SFX(cl_sequence)(const TL_SFX(cl_ctx) *c, ptrdiff_t b, double *w, double *wv)
{
    const tl_loss_spec *spec = c->spec;
    const tl_selection *sel = &spec->sel;
    const ptrdiff_t T = sel->steps, D = c->D;
    const TL_T *p = c->pred + b * T * D, *q = c->target + b * T * D;
    TL_T *g = c->grad != NULL ? c->grad + b * T * D : NULL;
    if (c->flat != NULL)
        return TL_SFX(pen_run)(spec->penalty, spec->delta, T * D, p, q, c->flat, c->scale, g);

    double sum = 0.0;
    tl_sel_weights(sel, b, 0, c->powers, w);
    for (ptrdiff_t t = 0; t < T; t++) {
        if (!tl_sel_valid(sel, b, t)) {
            if (g != NULL)
                memset(g + t * D, 0, (size_t)D * sizeof(TL_T));
            continue;
        }
        for (ptrdiff_t d = 0; d < D; d++)
            wv[d] = w[t] * (spec->feature_weights != NULL ? spec->feature_weights[d] : 1.0);
        sum += TL_SFX(pen_run)(spec->penalty, spec->delta, D, p + t * D, q + t * D, wv,
                               c->scale, g != NULL ? g + t * D : NULL);
    }
    return sum;
}

/* ---- what a loss reads (check_finite) ------------------------------------
 * check_finite looks at exactly the elements a loss reads (select.h), so
 * values in padding -- NaN and inf included -- neither raise nor change a bit
 * of the result. */

/* Are count values at p finite? Short runs -- a sequence's x0, one state,
 * its steps up to a length -- inline, where a call of the scanner (a clone
 * picked at load time) would cost more than the few compares; x - x is +0
 * for a finite x and NaN otherwise (as in finite.c). */
static inline int TL_SFX(run_finite)(const TL_T *p, ptrdiff_t count)
{
    if (count >= 64)
        return TL_SFX(tl_all_finite)(p, count);
    int bad = 0;
    for (ptrdiff_t i = 0; i < count; i++)
        bad |= !(p[i] - p[i] == 0);
    return !bad;
}

/* Are steps 0 .. end - 1 of a row of `width`-element steps finite: all of
 * them, or (valid_only) only those sequence b's selection marks valid? A
 * mask selects by an AND of flags, not a branch a step: one pass over the
 * row, whatever the values of the steps it leaves out. */
static int TL_SFX(steps_finite)(const tl_selection *sel, ptrdiff_t b, const TL_T *row,
                                ptrdiff_t width, ptrdiff_t end, int valid_only)
{
    if (valid_only && sel->lengths != NULL && sel->lengths[b] < end)
        end = (ptrdiff_t)sel->lengths[b];
    if (!valid_only || sel->mask == NULL)
        return TL_SFX(run_finite)(row, end * width);
    const unsigned char *valid = sel->mask + b * sel->steps;
    int bad = 0;
    for (ptrdiff_t t = 0; t < end; t++) {
        const TL_T *p = row + t * width;
        int step_bad = 0;
        for (ptrdiff_t d = 0; d < width; d++)
            step_bad |= !(p[d] - p[d] == 0);
        bad |= step_bad & (valid[t] != 0);
    }
    return !bad;
}

/* The control loss reads the valid steps of pred and target: bit 0 set when
 * sequence b's hold NaN or inf in pred, bit 1 in target. */
static unsigned TL_SFX(cl_seq_bad)(const tl_selection *sel, ptrdiff_t D, const TL_T *pred,
                                   const TL_T *target, ptrdiff_t b)
{
    const ptrdiff_t T = sel->steps, row = T * D;
    return (unsigned)!TL_SFX(steps_finite)(sel, b, pred + b * row, D, T, 1) |
           (unsigned)!TL_SFX(steps_finite)(sel, b, target + b * row, D, T, 1) << 1;
}

unsigned TL_SFX(tl_control_loss_bad_inputs)(const tl_loss_spec *spec, ptrdiff_t features,
                                            const TL_T *pred, const TL_T *target)
{
    unsigned bad = 0;
    for (ptrdiff_t b = 0; b < spec->sel.batch && bad != 3u; b++)
        bad |= TL_SFX(cl_seq_bad)(&spec->sel, features, pred, target, b);
    return bad;
}

static void TL_SFX(cl_range)(void *ctx, ptrdiff_t c0, ptrdiff_t c1, int worker)
{
    const TL_SFX(cl_ctx) *c = (const TL_SFX(cl_ctx) *)ctx;
    double *w = c->worker_work + (size_t)worker * c->worker_doubles;
    double *wv = w + c->spec->sel.steps + 2;
    const ptrdiff_t B = c->spec->sel.batch, row = c->spec->sel.steps * c->D;
    for (ptrdiff_t chunk = c0; chunk < c1; chunk++) {
        double sum = 0.0;
        int bad_in = 0, bad_out = 0;
        const ptrdiff_t end = (chunk + 1) * TL_CHUNK < B ? (chunk + 1) * TL_CHUNK : B;
        for (ptrdiff_t b = chunk * TL_CHUNK; b < end; b++) {
            /* each row checked just before it is read, while it is in cache:
             * whole (finite rows need nothing else), then, if that finds a
             * NaN or inf, only at the steps the loss reads */
            if (c->spec->check_finite &&
                !(TL_SFX(tl_all_finite)(c->pred + b * row, row) &&
                  TL_SFX(tl_all_finite)(c->target + b * row, row)))
                bad_in |= TL_SFX(cl_seq_bad)(&c->spec->sel, c->D, c->pred, c->target, b) != 0;
            sum += TL_SFX(cl_sequence)(c, b, w, wv);
            if (c->grad != NULL)
                bad_out |= !TL_SFX(tl_all_finite)(c->grad + b * row, row);
        }
        double *part = c->partials + P_COUNT * chunk;
        part[P_CONTROL] = sum;
        part[P_BAD_INPUT] = bad_in;
        part[P_BAD_OUTPUT] = bad_out;
    }
}

tl_status TL_SFX(tl_control_loss)(const tl_loss_spec *spec, ptrdiff_t features,
                                  const TL_T *pred, const TL_T *target,
                                  tl_loss_value *value, TL_T *grad, void *work)
{
    tl_status status = check_spec(spec);
    if (status != TL_OK)
        return status;
    if (features < 1 || value == NULL || work == NULL)
        return features < 1 ? TL_ERR_SHAPE : work == NULL ? TL_ERR_NOMEM : TL_ERR_VALUE;
    const tl_selection *sel = &spec->sel;
    /* sizes whose scratch cannot be addressed: refused before work is touched */
    if (tl_control_loss_work_bytes(features, sel->steps, sel->batch, spec->threads) == 0)
        return TL_ERR_SHAPE;
    const ptrdiff_t B = sel->batch, T = sel->steps, D = features, chunks = chunk_count(B);
    const double valid = count_valid(sel, 0).control;
    if (valid == 0.0)
        return TL_ERR_EMPTY;
    if (pred == NULL || target == NULL)
        return TL_ERR_VALUE;

    double *powers = (double *)work, *partials = powers + T + 2;
    double *flat = partials + P_COUNT * chunks;
    tl_sel_powers(sel, powers);
    TL_SFX(cl_ctx) c = {spec, D, pred, target, grad, 1.0 / (valid * (double)D), NULL, powers,
                        partials, flat + T * D, (size_t)(T + 2 + D)};
    if (sel->lengths == NULL && sel->mask == NULL) {
        /* every sequence has the same weights: lay them out once per element */
        tl_sel_weights(sel, 0, 0, powers, c.worker_work);
        for (ptrdiff_t t = 0; t < T; t++)
            for (ptrdiff_t d = 0; d < D; d++)
                flat[t * D + d] = c.worker_work[t] *
                                  (spec->feature_weights != NULL ? spec->feature_weights[d] : 1.0);
        c.flat = flat;
    }
    tl_parallel_ranges(spec->pool, spec->threads, chunks, TL_SFX(cl_range), &c);

    value->control = sum_partials(partials, chunks, P_CONTROL) / (valid * (double)D);
    value->total = value->control;
    value->trajectory = value->terminal = 0.0;
    return finish_call(partials, chunks, value);
}

/* ---- rollout losses ------------------------------------------------------ */

#include "tile_types_impl.h"

/* One entry of a tile's weight tables: lane l of *value is w_l s and of *grad
 * scale (w_l s), each product taken in double and rounded once to TL_T. Built
 * in locals and stored whole: through ts the compiler must assume every
 * scalar store may alias the weights it reads next. */
static inline void TL_SFX(weight_entry)(const double *w, double s, double scale, TL_V *value,
                                        TL_V *grad)
{
    TL_V v, g;
    for (int l = 0; l < TL_VL; l++) {
        const double ws = w[l] * s;
        v[l] = (TL_T)ws;
        g[l] = (TL_T)(scale * ws);
    }
    *value = v;
    *grad = g;
}

/* The per-element weight tables of a tile from its per-step weights:
 * value ws_k s_i, gradient st (ws_k s_i), and likewise for the controls. */
static void TL_SFX(tile_weights)(const tl_rl_const *c, TL_SFX(tile_sel) *ts)
{
    const double *sw = c->spec->state_weights, *fw = c->spec->feature_weights;
    const ptrdiff_t n = c->n, m = c->m;
    for (ptrdiff_t k = 0; k <= c->T; k++)
        for (ptrdiff_t i = 0; i < n; i++)
            TL_SFX(weight_entry)(ts->ws + k * TL_VL, sw != NULL ? sw[i] : 1.0, c->st,
                                 &ts->vs_w[k * n + i], &ts->gs_w[k * n + i]);
    for (ptrdiff_t k = 0; k < c->T; k++)
        for (ptrdiff_t j = 0; j < m; j++)
            TL_SFX(weight_entry)(ts->wc + k * TL_VL, fw != NULL ? fw[j] : 1.0, c->sc,
                                 &ts->vc_w[k * m + j], &ts->gc_w[k * m + j]);
}

/* The selection of the tile whose lane 0 is sequence b0; lanes >= `lanes` are empty. */
static void TL_SFX(tile_select)(const tl_rl_const *c, ptrdiff_t b0, int lanes, double *row,
                                TL_SFX(tile_sel) *ts)
{
    const tl_selection *sel = &c->spec->sel;
    const int shift = c->shift;
    const double *powers = c->powers;
    const ptrdiff_t T = sel->steps;
    ts->Kmax = 0;
    if (lanes < TL_VL) { /* the lanes past the batch's end: all zero, in a few stores */
        memset(ts->vc, 0, (size_t)(2 * T + 1) * sizeof(TL_VM));
        memset(ts->wc, 0, (size_t)((2 * T + 1) * TL_VL) * sizeof(double));
    }
    for (int l = 0; l < TL_VL; l++) {
        const ptrdiff_t b = b0 + l;
        const tl_seq_span span = l < lanes ? tl_sel_span(sel, b) : (tl_seq_span){0, -1};
        ts->K[l] = span.last + 1;
        ts->fin[0][l] = span.count > 0 ? span.last + 1 : -1;
        if (ts->K[l] > ts->Kmax)
            ts->Kmax = ts->K[l];
        if (l >= lanes)
            continue;
        if (span.count == 0) {
            for (ptrdiff_t t = 0; t < T; t++) {
                ts->vc[t][l] = 0;
                ts->wc[t * TL_VL + l] = 0.0;
            }
            for (ptrdiff_t k = 0; k <= T; k++) {
                ts->vs[k][l] = 0;
                ts->ws[k * TL_VL + l] = 0.0;
            }
            continue;
        }
        if (c->uniform && l > 0) { /* every sequence's steps and weights are lane 0's */
            for (ptrdiff_t t = 0; t < T; t++) {
                ts->vc[t][l] = ts->vc[t][0];
                ts->wc[t * TL_VL + l] = ts->wc[t * TL_VL];
            }
            for (ptrdiff_t k = 0; k <= T; k++) {
                ts->vs[k][l] = ts->vs[k][0];
                ts->ws[k * TL_VL + l] = ts->ws[k * TL_VL];
            }
            continue;
        }
        tl_sel_weights(sel, b, 0, powers, row);
        for (ptrdiff_t t = 0; t < T; t++) {
            ts->vc[t][l] = tl_sel_valid(sel, b, t) ? -1 : 0;
            ts->wc[t * TL_VL + l] = row[t];
        }
        /* state k >= 1 is scored with control step k - 1; state 0 only with shift */
        ts->vs[0][l] = shift ? -1 : 0;
        for (ptrdiff_t k = 1; k <= T; k++)
            ts->vs[k][l] = ts->vc[k - 1][l];
        if (shift) {
            tl_sel_weights(sel, b, 1, powers, row);
            for (ptrdiff_t k = 0; k <= T; k++)
                ts->ws[k * TL_VL + l] = row[k];
        } else {
            ts->ws[l] = 0.0;
            for (ptrdiff_t k = 1; k <= T; k++)
                ts->ws[k * TL_VL + l] = ts->wc[(k - 1) * TL_VL + l];
        }
    }
    ts->ragged = ts->short_lanes = 0;
    for (int l = 0; l < TL_VL; l++) {
        ts->ragged |= ts->fin[0][l] >= 0 && ts->K[l] != ts->Kmax;
        ts->short_lanes |= ts->K[l] != ts->Kmax;
    }
    TL_SFX(tile_weights)(c, ts);
}

#include "tile_impl.h"

/* A kernel for one tile, and a fast kernel for `tiles` full tiles from row b0. */
typedef void (*TL_SFX(rl_tile_fn))(const tl_rl_const *, const TL_SFX(tile_sel) *,
                                   const TL_SFX(rl_data) *, TL_VS *, TL_V *);
typedef void (*TL_SFX(rl_run_fn))(const tl_rl_const *, const TL_SFX(tile_sel) *,
                                  const TL_SFX(rl_data) *, ptrdiff_t, ptrdiff_t, TL_VS *,
                                  TL_V *);

/* The general kernel keeps its per-state vectors in work too. */
static void TL_SFX(rl_tile)(const tl_rl_const *c, const TL_SFX(tile_sel) *ts,
                            const TL_SFX(rl_data) *p, TL_VS *sums, TL_V *work)
{
    TL_V *reg = work + 2 * TL_TILE_VECTORS(c->T, c->n, c->m); /* after two tiles' buffers */
    TL_SFX(rl_tile_body)(c, ts, p, sums, work, reg, c->n, c->m, 0);
}

/* Kernels of their own for the small systems most losses are about, each
 * also in fast forms (full tile, every step valid, squared error, a gradient
 * wanted) for the sets of terms the public losses use: combined_loss (all
 * three), trajectory_loss and terminal_loss. */
#define TL_ALL_TERMS (TL_TERM_CONTROL | TL_TERM_TRAJECTORY | TL_TERM_TERMINAL)
#define TL_TILE_FN(NAME, N, M)                                                                \
    TL_CLONES static void TL_SFX(NAME)(const tl_rl_const *c, const TL_SFX(tile_sel) *ts,     \
                                       const TL_SFX(rl_data) *p, TL_VS *sums, TL_V *work)    \
    {                                                                                         \
        TL_V reg[TL_REG_VECTORS(N, M)];                                                       \
        TL_SFX(rl_tile_body)(c, ts, p, sums, work, reg, N, M, 0);                             \
    }
#define TL_RUN_FN(NAME, N, M, TERMS)                                                          \
    TL_CLONES static void TL_SFX(NAME)(const tl_rl_const *c, const TL_SFX(tile_sel) *ts,     \
                                       const TL_SFX(rl_data) *a, ptrdiff_t b0, ptrdiff_t tiles, \
                                       TL_VS *sums, TL_V *work)                               \
    {                                                                                         \
        TL_V reg[TL_REG_VECTORS(N, M)];                                                       \
        TL_SFX(rl_fast_run_body)(c, ts, a, b0, tiles, sums, work, reg, N, M, TERMS);          \
    }
#define TL_SMALL_SYSTEM(N, M)                                                                 \
    TL_TILE_FN(rl_tile_##N##_##M, N, M)                                                       \
    TL_RUN_FN(rl_fast_all_##N##_##M, N, M, TL_ALL_TERMS)                                      \
    TL_RUN_FN(rl_fast_traj_##N##_##M, N, M, TL_TERM_TRAJECTORY)                               \
    TL_RUN_FN(rl_fast_term_##N##_##M, N, M, TL_TERM_TERMINAL)
TL_SMALL_SYSTEMS
#undef TL_SMALL_SYSTEM
#undef TL_RUN_FN
#undef TL_TILE_FN

/* The kernel for an (n, m) system; *fast gets the fast form for these terms
 * when there is one. */
static TL_SFX(rl_tile_fn) TL_SFX(rl_tile_for)(ptrdiff_t n, ptrdiff_t m, unsigned terms,
                                              TL_SFX(rl_run_fn) *fast)
{
    *fast = NULL;
#define TL_SMALL_SYSTEM(N, M)                                                                 \
    if (n == N && m == M) {                                                                   \
        *fast = terms == TL_ALL_TERMS         ? TL_SFX(rl_fast_all_##N##_##M)                 \
                : terms == TL_TERM_TRAJECTORY ? TL_SFX(rl_fast_traj_##N##_##M)                \
                : terms == TL_TERM_TERMINAL   ? TL_SFX(rl_fast_term_##N##_##M)                \
                                              : NULL;                                         \
        return TL_SFX(rl_tile_##N##_##M);                                                     \
    }
    TL_SMALL_SYSTEMS
#undef TL_SMALL_SYSTEM
    return TL_SFX(rl_tile);
}

/* Copies `lanes` rows of `len` elements to dst, zero-filling the other lanes. */
static void TL_SFX(stage)(const TL_T *src, ptrdiff_t len, int lanes, TL_T *dst)
{
    memcpy(dst, src, (size_t)(lanes * len) * sizeof(TL_T));
    memset(dst + lanes * len, 0, (size_t)((TL_VL - lanes) * len) * sizeof(TL_T));
}

typedef struct {
    const tl_rl_const *c;
    TL_SFX(rl_data) all;  /* the whole batch: the arrays the kernels use, and the gradients */
    TL_SFX(rl_data) read; /* the arrays whose elements check_finite scans (rl_read_arrays) */
} TL_SFX(rl_ctx);

/* The elements of sequence b a rollout loss with these terms reads, given
 * its valid control steps S_b (last one t_b; none: nothing is read):
 *   controls   steps 0 .. t_b when a state is scored -- a step left out of
 *              S_b by a mask still drives the states after it -- else S_b;
 *   x0         when a state is scored;
 *   ref_controls  S_b (the control term);
 *   ref_states the states scored: k + 1 for k in S_b and, with
 *              include_initial, 0 (the trajectory term); t_b + 1 (the
 *              terminal term, without a target);
 *   target     (the terminal term).
 * Returns the TL_IN_* bits (select.h) of those holding NaN or inf there; a
 * (rl_read_arrays) holds only the arrays read. */
static unsigned TL_SFX(rl_seq_bad)(const tl_loss_spec *spec, const TL_SFX(rl_data) *a,
                                   ptrdiff_t b, ptrdiff_t n, ptrdiff_t m)
{
    const tl_selection *sel = &spec->sel;
    const tl_seq_span span = tl_sel_span(sel, b);
    if (span.count == 0)
        return 0;
    const ptrdiff_t T = sel->steps, K = span.last + 1, su = T * m, ss = (T + 1) * n;
    const unsigned terms = spec->terms;
    const int states = (terms & (TL_TERM_TRAJECTORY | TL_TERM_TERMINAL)) != 0;
    unsigned bad = 0;
    if ((states || (terms & TL_TERM_CONTROL)) &&
        !TL_SFX(steps_finite)(sel, b, a->u + b * su, m, K, !states))
        bad |= TL_IN_CONTROLS;
    if (states && !TL_SFX(run_finite)(a->x0 + b * n, n))
        bad |= TL_IN_X0;
    if (a->ru != NULL && !TL_SFX(steps_finite)(sel, b, a->ru + b * su, m, K, 1))
        bad |= TL_IN_REF_CONTROLS;
    if (a->rs != NULL) {
        const TL_T *rs = a->rs + b * ss;
        const int ok = (terms & TL_TERM_TRAJECTORY)
                           ? TL_SFX(steps_finite)(sel, b, rs + n, n, K, 1) &&
                                 (!spec->include_initial || TL_SFX(run_finite)(rs, n))
                           : TL_SFX(run_finite)(rs + K * n, n); /* terminal, no target */
        if (!ok)
            bad |= TL_IN_REF_STATES;
    }
    if (a->tgt != NULL && !TL_SFX(run_finite)(a->tgt + b * n, n))
        bad |= TL_IN_TARGET;
    return bad;
}

/* Do the elements rows b0 .. b0 + rows - 1 read (rl_seq_bad) all finite?
 * First the rows of every array read, whole, one run an array (as fast as
 * the machine reads memory): finite rows need nothing else, so finite
 * inputs cost what a check of whole arrays costs. Only when a NaN or inf is
 * somewhere in them -- padding, perhaps -- is each row checked element by
 * element against what it reads. */
static int TL_SFX(rl_rows_read_finite)(const tl_loss_spec *spec, const TL_SFX(rl_data) *a,
                                       ptrdiff_t b0, int rows, ptrdiff_t n, ptrdiff_t m)
{
    const ptrdiff_t su = spec->sel.steps * m, ss = (spec->sel.steps + 1) * n;
#define TL_ROWS_OK(ptr, len) ((ptr) == NULL || TL_SFX(tl_all_finite)((ptr) + b0 * (len), rows * (len)))
    if (TL_ROWS_OK(a->u, su) && TL_ROWS_OK(a->x0, n) && TL_ROWS_OK(a->ru, su) &&
        TL_ROWS_OK(a->rs, ss) && TL_ROWS_OK(a->tgt, n))
        return 1;
    for (ptrdiff_t b = b0; b < b0 + rows; b++)
        if (TL_SFX(rl_seq_bad)(spec, a, b, n, m) != 0)
            return 0;
    return 1;
}

/* The arrays of the batch a rollout loss with these terms reads: only the
 * references its terms score, the target in place of ref_states' final
 * state when there is one. */
static TL_SFX(rl_data) TL_SFX(rl_read_arrays)(unsigned terms, const TL_T *controls,
                                              const TL_T *x0, const TL_T *ref_controls,
                                              const TL_T *ref_states, const TL_T *target)
{
    const TL_SFX(rl_data) d = {
        controls, x0, (terms & TL_TERM_CONTROL) ? ref_controls : NULL,
        (terms & TL_TERM_TRAJECTORY) || ((terms & TL_TERM_TERMINAL) && target == NULL)
            ? ref_states
            : NULL,
        (terms & TL_TERM_TERMINAL) ? target : NULL, NULL, NULL};
    return d;
}

unsigned TL_SFX(tl_rollout_loss_bad_inputs)(const tl_system *sys, const tl_loss_spec *spec,
                                            const TL_T *controls, const TL_T *x0,
                                            const TL_T *ref_controls, const TL_T *ref_states,
                                            const TL_T *target)
{
    const TL_SFX(rl_data) a = TL_SFX(rl_read_arrays)(spec->terms, controls, x0, ref_controls,
                                                     ref_states, target);
    unsigned bad = 0;
    for (ptrdiff_t b = 0; b < spec->sel.batch; b++)
        bad |= TL_SFX(rl_seq_bad)(spec, &a, b, sys->n, sys->m);
    return bad;
}

/* Are rows b0 .. b0 + rows - 1 of the gradients of d finite (NULL arrays pass)? */
static int TL_SFX(rl_outputs_finite)(const TL_SFX(rl_data) *d, ptrdiff_t b0, int rows,
                                     ptrdiff_t su, ptrdiff_t n)
{
    return TL_ROWS_OK(d->gu, su) && TL_ROWS_OK(d->gx, n);
#undef TL_ROWS_OK
}

/* The bytes the arrays of d (NULL ones: none) hold for B sequences. */
static double TL_SFX(rl_bytes)(const TL_SFX(rl_data) *d, ptrdiff_t B, ptrdiff_t su, ptrdiff_t ss,
                               ptrdiff_t n)
{
    const ptrdiff_t row = (d->u ? su : 0) + (d->ru ? su : 0) + (d->gu ? su : 0) +
                          (d->rs ? ss : 0) + (d->x0 ? n : 0) + (d->tgt ? n : 0) +
                          (d->gx ? n : 0);
    return (double)B * (double)row * (double)sizeof(TL_T);
}

static void TL_SFX(rl_range)(void *ctx, ptrdiff_t c0, ptrdiff_t c1, int worker)
{
    const TL_SFX(rl_ctx) *x = (const TL_SFX(rl_ctx) *)ctx;
    const tl_rl_const *c = x->c;
    const TL_SFX(rl_data) *a = &x->all;
    const ptrdiff_t B = c->B, T = c->T, n = c->n, m = c->m, su = T * m, ss = (T + 1) * n;

    /* this worker's scratch, in the order of rollout_worker_doubles */
    TL_SFX(rl_run_fn) fast;
    const TL_SFX(rl_tile_fn) tile = TL_SFX(rl_tile_for)(n, m, c->spec->terms, &fast);
    if (!(c->uniform && c->spec->penalty == TL_PENALTY_MSE && a->gu != NULL))
        fast = NULL;
#if TL_WIDE_RUN /* pairs of full tiles as one 512-bit tile, where the CPU can */
    const tl_wide_fn wide = fast != NULL ? TL_SFX(tl_wide_for)(c, n, m, c->spec->terms) : NULL;
#endif
    TL_V *tile_work = (TL_V *)(c->worker_work + (size_t)worker * c->worker_doubles);
    TL_VM *v = (TL_VM *)(tile_work + 2 * TL_TILE_VECTORS(T, n, m) + TL_REG_VECTORS(n, m));
    TL_V *tables = (TL_V *)(v + 2 * T + 2);
    const ptrdiff_t ns = (T + 1) * n, nc = T * m;
    tl_vd *sums = (tl_vd *)(tables + 2 * (ns + nc)); /* TL_SUM_VECTORS (loss.c) */
    double *wc = (double *)(sums + TL_SUM_VECTORS);
    TL_SFX(tile_sel) ts = TL_SFX(tile_sel_at)(v, wc, tables, T, n, m);
    double *row = wc + (2 * T + 1) * TL_VL;
    TL_T *st = (TL_T *)(row + T + 2); /* staging: u, ru, gu, rs, x0, tgt, gx */
    TL_SFX(rl_data) staged = {st, st + 3 * TL_VL * su + TL_VL * ss, st + TL_VL * su,
                              st + 3 * TL_VL * su, st + 3 * TL_VL * su + TL_VL * ss + TL_VL * n,
                              st + 2 * TL_VL * su, st + 3 * TL_VL * su + TL_VL * ss + 2 * TL_VL * n};

    int full_ready = 0; /* ts holds a full tile of the uniform selection */
#if TL_WIDE_RUN
    int wide_ready = 0; /* and the eight-lane kernels' copy of it is made */
#endif
    for (ptrdiff_t chunk = c0; chunk < c1; chunk++) {
        for (int i = 0; i < TL_SUM_VECTORS; i++)
            sums[i] = tl_vsplat_f64(0.0);
        const ptrdiff_t start = chunk * TL_CHUNK;
        const ptrdiff_t end = (chunk + 1) * TL_CHUNK < B ? (chunk + 1) * TL_CHUNK : B;
        const int rows = (int)(end - start);
        /* A chunk of full tiles for the fast kernel needs no scan of what
         * it reads: with every step valid it scores every element it reads
         * (rl_seq_bad), and a NaN or inf survives every +, - and * on its way
         * to a sum (0 * inf is NaN), so the chunk's sums are finite exactly
         * when those elements are -- unless the sums overflowed, which a scan
         * then tells apart. Other chunks have the elements they read scanned
         * just before the kernels read them, so from cache, not memory. */
        const int by_sums = fast != NULL && rows % TL_VL == 0;
        int bad_in = c->spec->check_finite && !by_sums &&
                     !TL_SFX(rl_rows_read_finite)(c->spec, &x->read, start, rows, n, m);
        ptrdiff_t b0 = start;
        if (fast != NULL && rows >= TL_VL) { /* the chunk's full tiles in one run */
            if (!full_ready)
                TL_SFX(tile_select)(c, b0, TL_VL, row, &ts);
            full_ready = 1;
            ptrdiff_t tiles = rows / TL_VL;
#if TL_WIDE_RUN
            if (wide != NULL && tiles >= 2) {
                wide(c, &ts, wide_ready, a, b0, tiles / 2, sums,
                     (double *)st + TL_STAGE_DOUBLES(T, n, m));
                wide_ready = 1;
                b0 += (tiles - tiles % 2) * TL_VL;
                tiles %= 2; /* one even tile left, or none */
            }
#endif
            if (tiles > 0)
                fast(c, &ts, a, b0, tiles, sums, tile_work);
            b0 += tiles * TL_VL;
        }
        for (; b0 < end; b0 += TL_VL) {
            const int lanes = end - b0 < TL_VL ? (int)(end - b0) : TL_VL;

            if (!(c->uniform && full_ready && lanes == TL_VL)) {
                TL_SFX(tile_select)(c, b0, lanes, row, &ts);
                full_ready = c->uniform && lanes == TL_VL;
            }
            const TL_SFX(rl_data) p = TL_SFX(rl_rows)(a, b0, su, ss, n);
            /* the sums of the tile's parity in the chunk (TL_SUM_VECTORS) */
            tl_vd *tsums = sums + (((b0 - start) / TL_VL) & 1);
            if (lanes == TL_VL) {
                tile(c, &ts, &p, tsums, tile_work);
                continue;
            }
            /* the batch's last, partial tile: run it from zero-padded copies */
            TL_SFX(rl_data) q = staged;
            TL_SFX(stage)(p.u, su, lanes, (TL_T *)q.u);
            TL_SFX(stage)(p.x0, n, lanes, (TL_T *)q.x0);
            if (p.ru != NULL)
                TL_SFX(stage)(p.ru, su, lanes, (TL_T *)q.ru);
            else
                q.ru = NULL;
            if (p.rs != NULL)
                TL_SFX(stage)(p.rs, ss, lanes, (TL_T *)q.rs);
            else
                q.rs = NULL;
            if (p.tgt != NULL)
                TL_SFX(stage)(p.tgt, n, lanes, (TL_T *)q.tgt);
            else
                q.tgt = NULL;
            tile(c, &ts, &q, tsums, tile_work);
            if (p.gu != NULL)
                memcpy(p.gu, q.gu, (size_t)(lanes * su) * sizeof(TL_T));
            if (p.gx != NULL)
                memcpy(p.gx, q.gx, (size_t)(lanes * n) * sizeof(TL_T));
        }
        double *part = c->partials + P_COUNT * chunk;
        for (int term = P_CONTROL; term <= P_TERMINAL; term++) {
            double sum = 0.0;
            for (int parity = 0; parity < 2; parity++) /* the lanes of a sum, in order */
                for (int l = 0; l < TL_LANES_F64; l++)
                    sum += sums[2 * term + parity][l];
            part[term] = sum;
        }
        if (c->spec->check_finite && by_sums) {
            const double all = part[P_CONTROL] + part[P_TRAJECTORY] + part[P_TERMINAL];
            bad_in = !(all - all == 0.0) &&
                     !TL_SFX(rl_rows_read_finite)(c->spec, &x->read, start, rows, n, m);
        }
        part[P_BAD_INPUT] = bad_in;
        /* by_sums: every gradient of the chunk went into the check (rl_backward_end) */
        TL_T gchk[2 * sizeof(tl_vd) / sizeof(TL_T)];
        memcpy(gchk, &sums[TL_SUM_CHK], sizeof gchk);
        part[P_BAD_OUTPUT] = !(by_sums && TL_SFX(tl_all_finite)(gchk, (ptrdiff_t)(sizeof gchk / sizeof(TL_T)))) &&
                             !TL_SFX(rl_outputs_finite)(a, start, rows, su, n);
    }
}

tl_status TL_SFX(tl_rollout_loss)(const tl_system *sys, const tl_loss_spec *spec,
                                  const TL_T *controls, const TL_T *x0,
                                  const TL_T *ref_controls, const TL_T *ref_states,
                                  const TL_T *target, tl_loss_value *value,
                                  TL_T *grad_controls, TL_T *grad_x0, void *work)
{
    tl_status status = check_rollout_call(sys, spec, controls, x0, ref_controls, ref_states,
                                          target, value, work);
    if (status != TL_OK)
        return status;
    const tl_selection *sel = &spec->sel;
    const ptrdiff_t B = sel->batch, T = sel->steps, n = sys->n, m = sys->m;
    if (tl_rollout_loss_work_bytes(n, m, T, B, spec->threads) == 0)
        return TL_ERR_SHAPE; /* scratch that cannot be addressed: refused before work is touched */
    const ptrdiff_t chunks = chunk_count(B);
    const unsigned terms = spec->terms;
    const int shift = (terms & TL_TERM_TRAJECTORY) && spec->include_initial ? 1 : 0;
    const tl_valid_counts N = count_valid(sel, shift);
    if (N.control == 0.0)
        return TL_ERR_EMPTY;

    /* the arrays the terms read, and the gradients */
    const TL_SFX(rl_data) all = {
        controls, x0, (terms & TL_TERM_CONTROL) ? ref_controls : NULL,
        (terms & (TL_TERM_TRAJECTORY | TL_TERM_TERMINAL)) ? ref_states : NULL,
        (terms & TL_TERM_TERMINAL) ? target : NULL, grad_controls, grad_x0};
    double *powers = (double *)work, *partials = powers + T + 2;
    size_t worker_doubles;
    rollout_worker_doubles((size_t)n, (size_t)m, (size_t)T, &worker_doubles);
    tl_sel_powers(sel, powers);
    /* unused terms keep zero scales and are never scored */
    const double ds = TL_RHO_SCALE(spec->penalty);
    const tl_rl_const c = {sys, spec, B, T, n, m, shift,
                           sel->lengths == NULL && sel->mask == NULL,
                           ds * (spec->control_weight / (N.control * (double)m)),
                           ds * (spec->trajectory_weight / (N.trajectory * (double)n)),
                           ds * (spec->terminal_weight / (N.terminal * (double)n)),
                           powers, partials, partials + P_COUNT * chunks, worker_doubles,
                           TL_SFX(rl_bytes)(&all, B, T * m, (T + 1) * n, n) > TL_PREFETCH_BYTES};
    TL_SFX(rl_ctx) ctx = {&c, all,
                          TL_SFX(rl_read_arrays)(terms, controls, x0, ref_controls, ref_states,
                                                 target)};
    tl_parallel_ranges(spec->pool, spec->threads, chunks, TL_SFX(rl_range), &ctx);

    const double raw_c = sum_partials(partials, chunks, P_CONTROL) / (double)m;
    const double raw_t = sum_partials(partials, chunks, P_TRAJECTORY) / (double)n;
    const double raw_f = sum_partials(partials, chunks, P_TERMINAL) / (double)n;
    value->control = (terms & TL_TERM_CONTROL) ? raw_c / N.control : 0.0;
    value->trajectory = (terms & TL_TERM_TRAJECTORY) ? raw_t / N.trajectory : 0.0;
    value->terminal = (terms & TL_TERM_TERMINAL) ? raw_f / N.terminal : 0.0;
    value->total = spec->control_weight * value->control +
                   spec->trajectory_weight * value->trajectory +
                   spec->terminal_weight * value->terminal;
    return finish_call(partials, chunks, value);
}
