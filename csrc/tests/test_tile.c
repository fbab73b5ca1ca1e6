/*
 * test_tile.c -- the fast path of the rollout losses (tile.c) against the
 * reference kernel tl_loss_seq (loss.c), over random sizes, every form of
 * system, selection, penalty, set of terms, include_initial, weights and
 * dtype, for each instruction-set version the CPU runs (each called
 * directly); and its padding rule: elements a call does not read hold NaN,
 * and the results are bit for bit those with zeros there. Also the whole
 * call (tl_rollout_loss) with the fast path against the reference kernel
 * alone. Prints one line per failure and "N passed, N failed".
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "penalty.h"
#include "select.h"

#pragma GCC diagnostic ignored "-Wpsabi" /* the vectors of test_penalty */

tl_tile_fn tl_tile_pick_base(const tl_loss_ctx *c);
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define HAVE_V3 1
tl_tile_fn tl_tile_pick_v3(const tl_loss_ctx *c);
#ifndef TL_TILE_NO_V4 /* (built without AVX-512: see tile_v4.c) */
#define HAVE_V4 1
tl_tile_fn tl_tile_pick_v4(const tl_loss_ctx *c);
#endif
#endif

#include "check.h"

static unsigned rng = 12345u;

static unsigned rand_u(void)
{
    rng = rng * 1103515245u + 12345u;
    return (rng >> 8) & 0xFFFFFF;
}

/* uniform in [-1, 1) */
static double rand_s(void)
{
    return rand_u() / (double)0x1000000 * 2.0 - 1.0;
}

static int rand_below(int k)
{
    return (int)(rand_u() % (unsigned)k);
}

static void *xcalloc(size_t count, size_t size)
{
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (p == NULL) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

/* ---- one random problem ------------------------------------------------------ */

enum { SHARED, PER_SAMPLE, VARYING, PER_SAMPLE_VARYING, FORMS };

typedef struct {
    ptrdiff_t B, T, n, m;
    tl_dtype dtype;
    tl_dynamics dyn;
    double *A, *Bm, *c;          /* the system's arrays (the largest form's size) */
    int form[3];                 /* of A, B, c (c: -1 none) */
    tl_loss_spec spec;
    int64_t *lengths;
    unsigned char *mask;
    double *sw, *fw;
    /* inputs in double, and which elements the loss reads (1) */
    double *u, *x0, *ru, *rs, *tgt;
    unsigned char *read_u, *read_x0, *read_ru, *read_rs, *read_tgt;
    int use_target, grads;
} problem;

static void set_field(tl_field *f, double *data, int form, ptrdiff_t len, ptrdiff_t T)
{
    f->data = data;
    f->batch_stride = form == PER_SAMPLE ? len : form == PER_SAMPLE_VARYING ? T * len : 0;
    f->step_stride = form == VARYING || form == PER_SAMPLE_VARYING ? len : 0;
}

static void fill_matrix(double *p, ptrdiff_t count, double scale)
{
    for (ptrdiff_t i = 0; i < count; i++)
        p[i] = scale * rand_s();
}

/* Sequence b's final valid state (0 when it has no valid step). */
static ptrdiff_t final_state(const problem *p, ptrdiff_t b)
{
    const tl_seq_span span = tl_sel_span(&p->spec.sel, b);
    return span.count > 0 ? span.last + 1 : 0;
}

/* Which elements of each input a call reads ("Padding" in trajloss.h). */
static void mark_reads(problem *p)
{
    const ptrdiff_t T = p->T, n = p->n, m = p->m;
    const tl_selection *sel = &p->spec.sel;
    const unsigned terms = p->spec.terms;
    const int states = (terms & (TL_TERM_TRAJECTORY | TL_TERM_TERMINAL)) != 0;
    for (ptrdiff_t b = 0; b < p->B; b++) {
        const ptrdiff_t K = final_state(p, b);
        if (K == 0)
            continue;
        for (ptrdiff_t k = 0; k < K; k++) {
            const int valid = tl_sel_valid(sel, b, k);
            for (ptrdiff_t j = 0; j < m; j++) {
                p->read_u[(b * T + k) * m + j] = states || valid;
                p->read_ru[(b * T + k) * m + j] = (terms & TL_TERM_CONTROL) && valid;
            }
            for (ptrdiff_t i = 0; i < n; i++)
                p->read_rs[(b * (T + 1) + k + 1) * n + i] |= (terms & TL_TERM_TRAJECTORY) && valid;
        }
        for (ptrdiff_t i = 0; i < n; i++) {
            p->read_x0[b * n + i] = states;
            p->read_rs[b * (T + 1) * n + i] |= (terms & TL_TERM_TRAJECTORY) && p->spec.include_initial;
            if (terms & TL_TERM_TERMINAL) {
                if (p->use_target)
                    p->read_tgt[b * n + i] = 1;
                else
                    p->read_rs[(b * (T + 1) + K) * n + i] = 1;
            }
        }
    }
}

/* A random problem; shared_mse: with a system shared by the batch and fixed
 * in time, and the squared error (the kernel's registers version for small
 * n and m). */
static problem make_problem_of(ptrdiff_t B, ptrdiff_t T, ptrdiff_t n, ptrdiff_t m,
                               tl_dtype dtype, int shared_mse)
{
    problem p;
    memset(&p, 0, sizeof p);
    p.B = B, p.T = T, p.n = n, p.m = m, p.dtype = dtype;
    const ptrdiff_t steps = T > 0 ? T : 1;
    p.A = xcalloc((size_t)(B * steps * n * n), sizeof(double));
    p.Bm = xcalloc((size_t)(B * steps * n * m), sizeof(double));
    p.c = xcalloc((size_t)(B * steps * n), sizeof(double));
    /* stable enough that 40 steps stay of order one: |A|_2 about 1 */
    fill_matrix(p.A, B * steps * n * n, 1.6 / sqrt((double)n));
    fill_matrix(p.Bm, B * steps * n * m, 1.0);
    fill_matrix(p.c, B * steps * n, 0.5);
    for (int f = 0; f < 3; f++)
        p.form[f] = T > 0 ? rand_below(FORMS) : rand_below(2);
    if (rand_below(3) == 0)
        p.form[2] = -1;
    for (int f = 0; f < 3 && shared_mse; f++)
        p.form[f] = p.form[f] < 0 ? -1 : SHARED;
    p.dyn = tl_dynamics_linear(n, m, p.A, p.Bm);
    set_field(&p.dyn.A, p.A, p.form[0], n * n, T);
    set_field(&p.dyn.B, p.Bm, p.form[1], n * m, T);
    if (p.form[2] >= 0)
        set_field(&p.dyn.c, p.c, p.form[2], n, T);
    for (int f = 0; f < 3; f++) {
        if (p.form[f] == PER_SAMPLE || p.form[f] == PER_SAMPLE_VARYING)
            p.dyn.batch = B;
        if (p.form[f] == VARYING || p.form[f] == PER_SAMPLE_VARYING)
            p.dyn.steps = T;
    }

    tl_loss_spec *s = &p.spec;
    s->sel.batch = B;
    s->sel.steps = T;
    s->sel.discount = (const double[]){1.0, 0.8, 1.25, 0.3}[rand_below(4)];
    const int selection = rand_below(3);
    if (selection == 1) {
        p.lengths = xcalloc((size_t)B, sizeof(int64_t));
        for (ptrdiff_t b = 0; b < B; b++)
            p.lengths[b] = rand_below(4) == 0 ? (rand_below(2) ? 0 : T) : rand_below((int)T + 1);
        s->sel.lengths = p.lengths;
    } else if (selection == 2) {
        p.mask = xcalloc((size_t)(B * T), 1);
        for (ptrdiff_t b = 0; b < B; b++) {
            const int density = rand_below(4); /* 0: an empty row */
            for (ptrdiff_t t = 0; t < T; t++)
                p.mask[b * T + t] = density > 0 && rand_below(4) < density;
        }
        s->sel.mask = p.mask;
    }
    s->penalty = (tl_penalty)rand_below(TL_PENALTY_COUNT);
    if (shared_mse)
        s->penalty = TL_PENALTY_MSE;
    s->delta = 0.05 + 0.5 * (rand_s() + 1.0);
    s->terms = 1u + (unsigned)rand_below(7);
    s->control_weight = 0.5 + rand_s() * 0.25;
    s->trajectory_weight = 1.5 + rand_s() * 0.25;
    s->terminal_weight = 2.0 + rand_s() * 0.25;
    s->include_initial = rand_below(2);
    if (rand_below(2)) {
        p.sw = xcalloc((size_t)n, sizeof(double));
        for (ptrdiff_t i = 0; i < n; i++)
            p.sw[i] = 0.25 + rand_s() * rand_s();
        s->state_weights = p.sw;
    }
    if (rand_below(2)) {
        p.fw = xcalloc((size_t)m, sizeof(double));
        for (ptrdiff_t j = 0; j < m; j++)
            p.fw[j] = 0.25 + rand_s() * rand_s();
        s->feature_weights = p.fw;
    }
    p.use_target = rand_below(2);
    p.grads = rand_below(4); /* bit 0: grad_controls, bit 1: grad_x0 */

    const size_t su = (size_t)(B * T * m), ss = (size_t)(B * (T + 1) * n), sx = (size_t)(B * n);
    p.u = xcalloc(su, sizeof(double));
    p.ru = xcalloc(su, sizeof(double));
    p.rs = xcalloc(ss, sizeof(double));
    p.x0 = xcalloc(sx, sizeof(double));
    p.tgt = xcalloc(sx, sizeof(double));
    fill_matrix(p.u, (ptrdiff_t)su, 1.0);
    fill_matrix(p.ru, (ptrdiff_t)su, 1.0);
    fill_matrix(p.rs, (ptrdiff_t)ss, 2.0);
    fill_matrix(p.x0, (ptrdiff_t)sx, 1.0);
    fill_matrix(p.tgt, (ptrdiff_t)sx, 1.0);
    p.read_u = xcalloc(su, 1);
    p.read_ru = xcalloc(su, 1);
    p.read_rs = xcalloc(ss, 1);
    p.read_x0 = xcalloc(sx, 1);
    p.read_tgt = xcalloc(sx, 1);
    mark_reads(&p);
    /* per-sample matrices of the steps after a sequence's last are not read either */
    double *data[3] = {p.A, p.Bm, p.c};
    const ptrdiff_t len[3] = {n * n, n * m, n};
    for (int f = 0; f < 3; f++)
        if (p.form[f] == PER_SAMPLE_VARYING)
            for (ptrdiff_t b = 0; b < B; b++)
                for (ptrdiff_t k = final_state(&p, b); k < T; k++)
                    for (ptrdiff_t e = 0; e < len[f]; e++)
                        data[f][(b * T + k) * len[f] + e] = NAN;
    return p;
}

static problem make_problem(ptrdiff_t B, ptrdiff_t T, ptrdiff_t n, ptrdiff_t m, tl_dtype dtype)
{
    return make_problem_of(B, T, n, m, dtype, 0);
}

static void free_problem(problem *p)
{
    void *ptrs[] = {p->A, p->Bm, p->c, p->lengths, p->mask, p->sw, p->fw, p->u, p->x0, p->ru,
                    p->rs, p->tgt, p->read_u, p->read_x0, p->read_ru, p->read_rs, p->read_tgt};
    for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++)
        free(ptrs[i]);
}

/* ---- the arrays of one call, in the problem's dtype ----------------------------- */

typedef struct {
    void *u, *x0, *ru, *rs, *tgt, *gu, *gx;
    size_t su, ss, sx;
} arrays;

static void *typed_copy(const problem *p, const double *src, const unsigned char *read,
                        size_t count, double pad)
{
    const size_t size = p->dtype == TL_F64 ? sizeof(double) : sizeof(float);
    void *dst = xcalloc(count, size);
    for (size_t i = 0; i < count; i++) {
        const double v = read[i] ? src[i] : pad;
        if (p->dtype == TL_F64)
            ((double *)dst)[i] = v;
        else
            ((float *)dst)[i] = (float)v;
    }
    return dst;
}

/* The inputs with `pad` at every element not read; outputs filled with 777. */
static arrays make_arrays(const problem *p, double pad)
{
    arrays a;
    a.su = (size_t)(p->B * p->T * p->m);
    a.ss = (size_t)(p->B * (p->T + 1) * p->n);
    a.sx = (size_t)(p->B * p->n);
    a.u = typed_copy(p, p->u, p->read_u, a.su, pad);
    a.ru = typed_copy(p, p->ru, p->read_ru, a.su, pad);
    a.rs = typed_copy(p, p->rs, p->read_rs, a.ss, pad);
    a.x0 = typed_copy(p, p->x0, p->read_x0, a.sx, pad);
    a.tgt = typed_copy(p, p->tgt, p->read_tgt, a.sx, pad);
    const size_t size = p->dtype == TL_F64 ? sizeof(double) : sizeof(float);
    a.gu = xcalloc(a.su, size);
    a.gx = xcalloc(a.sx, size);
    for (size_t i = 0; i < a.su; i++)
        p->dtype == TL_F64 ? (void)(((double *)a.gu)[i] = 777.0) : (void)(((float *)a.gu)[i] = 777.0f);
    for (size_t i = 0; i < a.sx; i++)
        p->dtype == TL_F64 ? (void)(((double *)a.gx)[i] = 777.0) : (void)(((float *)a.gx)[i] = 777.0f);
    return a;
}

static void free_arrays(arrays *a)
{
    free(a->u), free(a->x0), free(a->ru), free(a->rs), free(a->tgt), free(a->gu), free(a->gx);
}

static tl_loss_io make_io(const problem *p, const arrays *a)
{
    tl_loss_io io = {p->dtype, a->u, a->x0, a->ru, a->rs, p->use_target ? a->tgt : NULL,
                     (p->grads & 1) ? a->gu : NULL, (p->grads & 2) ? a->gx : NULL};
    return io;
}

static double elem(const problem *p, const void *v, size_t i)
{
    return p->dtype == TL_F64 ? ((const double *)v)[i] : (double)((const float *)v)[i];
}

/* max |a - b| / max(1, max |b|) over rows b0 .. b1 - 1 of `row` elements */
static double rel_err(const problem *p, const void *a, const void *b, size_t row, ptrdiff_t b0,
                      ptrdiff_t b1)
{
    double diff = 0.0, scale = 1.0;
    for (size_t i = (size_t)b0 * row; i < (size_t)b1 * row; i++) {
        const double x = elem(p, a, i), y = elem(p, b, i);
        diff = fmax(diff, x != x || y != y ? INFINITY : fabs(x - y));
        scale = fmax(scale, fabs(y));
    }
    return diff / scale;
}

/* ---- the tests ---------------------------------------------------------------------- */

static tl_loss_ctx make_ctx(const problem *p, const tl_loss_io *io, double *powers)
{
    const unsigned terms = p->spec.terms;
    tl_sel_powers(&p->spec.sel, powers);
    tl_loss_ctx c = {&p->dyn, &p->spec, io, p->B, p->T, p->n, p->m,
                     (terms & TL_TERM_TRAJECTORY) && p->spec.include_initial,
                     p->lengths == NULL && p->mask == NULL,
                     /* any positive scales: the kernels only multiply by them */
                     {(terms & TL_TERM_CONTROL) ? 0.75 : 0.0,
                      (terms & TL_TERM_TRAJECTORY) ? 1.25 : 0.0,
                      (terms & TL_TERM_TERMINAL) ? 0.5 : 0.0},
                     powers};
    return c;
}

static const char *form_names[FORMS] = {"shared", "per-sample", "varying", "per-sample varying"};

static void describe(const problem *p, char *buf, size_t size)
{
    snprintf(buf, size,
             "B=%td T=%td n=%td m=%td %s A:%s B:%s c:%s sel:%s gamma=%g pen=%d terms=%u init=%d "
             "sw=%d fw=%d target=%d grads=%d",
             p->B, p->T, p->n, p->m, p->dtype == TL_F64 ? "f64" : "f32",
             form_names[p->form[0]], form_names[p->form[1]],
             p->form[2] < 0 ? "none" : form_names[p->form[2]],
             p->lengths ? "lengths" : p->mask ? "mask" : "none", p->spec.sel.discount,
             (int)p->spec.penalty, p->spec.terms, p->spec.include_initial, p->sw != NULL,
             p->fw != NULL, p->use_target, p->grads);
}

/* The kernel `fast` over the whole tiles from b0, against tl_loss_seq. */
static void compare_kernel(const problem *p, tl_tile_fn fast, const char *isa)
{
    const ptrdiff_t B = p->B, T = p->T, n = p->n, m = p->m;
    const ptrdiff_t b0 = B % TL_TILE >= 4 ? 0 : B % TL_TILE, count = (B - b0) / TL_TILE * TL_TILE;
    const double tol = p->dtype == TL_F64 ? 1e-12 : 2e-4;
    char what[400];
    describe(p, what, sizeof what);
    if (count == 0)
        return;

    double *powers = xcalloc((size_t)T + 2, sizeof(double));
    double *work = xcalloc(tl_tile_doubles(n, m, T) + tl_loss_seq_doubles(n, m, T), sizeof(double));
    arrays ref = make_arrays(p, NAN), nan_pad = make_arrays(p, NAN), zero_pad = make_arrays(p, 0.0);
    const tl_loss_io io_ref = make_io(p, &ref), io_nan = make_io(p, &nan_pad),
                     io_zero = make_io(p, &zero_pad);
    tl_loss_ctx c = make_ctx(p, &io_ref, powers);
    double s_ref[3] = {0, 0, 0}, s_nan[3] = {0, 0, 0}, s_zero[3] = {0, 0, 0};
    for (ptrdiff_t b = b0; b < b0 + count; b++)
        tl_loss_seq(&c, b, s_ref, work);
    c.io = &io_nan;
    int bad_nan = 0, bad_zero = 0;
    fast(&c, b0, count, s_nan, &bad_nan, work, 0);
    c.io = &io_zero;
    fast(&c, b0, count, s_zero, &bad_zero, work, 0);
    /* the kernel's flag against a scan of the gradient rows it wrote */
    int scanned = 0;
    for (ptrdiff_t b = b0; b < b0 + count; b++) {
        for (ptrdiff_t e = 0; (p->grads & 1) && e < T * m; e++)
            scanned |= !isfinite(elem(p, nan_pad.gu, (size_t)(b * T * m + e)));
        for (ptrdiff_t e = 0; (p->grads & 2) && e < n; e++)
            scanned |= !isfinite(elem(p, nan_pad.gx, (size_t)(b * n + e)));
    }
    CHECK(bad_nan == scanned && bad_zero == scanned,
          "%s grads_nonfinite %d (NaN padding), %d (zero padding); the scan finds %d (%s)", isa,
          bad_nan, bad_zero, scanned, what);

    for (int i = 0; i < 3; i++) {
        const double err = fabs(s_nan[i] - s_ref[i]) / fmax(1.0, fabs(s_ref[i]));
        CHECK(err <= tol, "%s sums[%d] %.17g vs reference %.17g (%s)", isa, i, s_nan[i], s_ref[i],
              what);
        CHECK(memcmp(&s_nan[i], &s_zero[i], sizeof(double)) == 0,
              "%s sums[%d] depends on padding: %.17g with NaN, %.17g with 0 (%s)", isa, i,
              s_nan[i], s_zero[i], what);
    }
    const size_t size = p->dtype == TL_F64 ? sizeof(double) : sizeof(float);
    if (p->grads & 1) {
        const double err = rel_err(p, nan_pad.gu, ref.gu, (size_t)(T * m), b0, b0 + count);
        CHECK(err <= tol, "%s grad_controls error %.3g (%s)", isa, err, what);
        CHECK(memcmp(nan_pad.gu, zero_pad.gu, ref.su * size) == 0,
              "%s grad_controls depends on padding (%s)", isa, what);
    }
    if (p->grads & 2) {
        const double err = rel_err(p, nan_pad.gx, ref.gx, (size_t)n, b0, b0 + count);
        CHECK(err <= tol, "%s grad_x0 error %.3g (%s)", isa, err, what);
        CHECK(memcmp(nan_pad.gx, zero_pad.gx, ref.sx * size) == 0,
              "%s grad_x0 depends on padding (%s)", isa, what);
    }
    /* the rows outside [b0, b0 + count) are not written */
    int outside = 1;
    for (ptrdiff_t b = 0; b < B; b++) {
        if (b >= b0 && b < b0 + count)
            continue;
        for (ptrdiff_t e = 0; e < T * m; e++)
            outside &= elem(p, nan_pad.gu, (size_t)(b * T * m + e)) == 777.0;
        for (ptrdiff_t e = 0; e < n; e++)
            outside &= elem(p, nan_pad.gx, (size_t)(b * n + e)) == 777.0;
    }
    CHECK(outside, "%s wrote outside its rows (%s)", isa, what);
    free_arrays(&ref);
    free_arrays(&nan_pad);
    free_arrays(&zero_pad);
    free(powers);
    free(work);
}

/* compare_kernel for each instruction-set version the CPU runs, named
 * "base", "v3" and "v4" followed by `what`. */
static void compare_each_isa(const problem *p, const char *what)
{
    double powers[64]; /* T + 2 of them: T <= 40 here */
    tl_loss_io io = {p->dtype, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
    const tl_loss_ctx c = make_ctx(p, &io, powers);
    char name[64];
    snprintf(name, sizeof name, "base%s", what);
    compare_kernel(p, tl_tile_pick_base(&c), name);
#ifdef HAVE_V3
    snprintf(name, sizeof name, "v3%s", what);
    if (tl_tile_cpu_v3())
        compare_kernel(p, tl_tile_pick_v3(&c), name);
#endif
#ifdef HAVE_V4
    snprintf(name, sizeof name, "v4%s", what);
    if (tl_tile_cpu_v4())
        compare_kernel(p, tl_tile_pick_v4(&c), name);
#endif
}

/* The whole call: the fast path (AUTO) against the reference kernel alone. */
static void compare_call(const problem *p)
{
    char what[400];
    describe(p, what, sizeof what);
    tl_loss_spec spec = p->spec;
    arrays a = make_arrays(p, NAN), r = make_arrays(p, NAN);
    const tl_loss_io io_a = make_io(p, &a), io_r = make_io(p, &r);
    const size_t bytes = tl_loss_work_bytes(&p->dyn, 0, &spec);
    void *work = xcalloc(bytes, 1);
    tl_loss_value va, vr;
    spec.kernel = TL_KERNEL_AUTO;
    const tl_status sa = tl_rollout_loss(&p->dyn, &spec, &io_a, &va, work);
    spec.kernel = TL_KERNEL_REFERENCE;
    const tl_status sr = tl_rollout_loss(&p->dyn, &spec, &io_r, &vr, work);
    const double tol = p->dtype == TL_F64 ? 1e-12 : 2e-4;
    CHECK(sa == sr, "call status %d vs reference %d (%s)", (int)sa, (int)sr, what);
    if (sa == TL_OK && sr == TL_OK) {
        const double got[4] = {va.total, va.control, va.trajectory, va.terminal};
        const double want[4] = {vr.total, vr.control, vr.trajectory, vr.terminal};
        for (int i = 0; i < 4; i++)
            CHECK(fabs(got[i] - want[i]) <= tol * fmax(1.0, fabs(want[i])),
                  "call value %d: %.17g vs reference %.17g (%s)", i, got[i], want[i], what);
        CHECK(va.nonfinite == 0 && vr.nonfinite == 0, "call nonfinite %d %d (%s)", va.nonfinite,
              vr.nonfinite, what);
        if (p->grads & 1)
            CHECK(rel_err(p, a.gu, r.gu, (size_t)(p->T * p->m), 0, p->B) <= tol,
                  "call grad_controls (%s)", what);
        if (p->grads & 2)
            CHECK(rel_err(p, a.gx, r.gx, (size_t)p->n, 0, p->B) <= tol, "call grad_x0 (%s)",
                  what);
    }
    free(work);
    free_arrays(&a);
    free_arrays(&r);
}

/* Random problems; a third of them small (n, m <= 4), shared, fixed in time
 * and with the squared error, where the kernel keeps x and lambda in
 * registers. */
static void test_random(int cases)
{
    for (int t = 0; t < cases; t++) {
        const int small = rand_below(3) == 0;
        const ptrdiff_t n = 1 + rand_below(small ? 4 : 13), m = 1 + rand_below(small ? 4 : 13);
        const ptrdiff_t T = rand_below(41), B = 1 + rand_below(40);
        problem p = make_problem_of(B, T, n, m, rand_below(2) ? TL_F64 : TL_F32, small);
        double powers[64];
        tl_loss_io io = {p.dtype, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
        const tl_loss_ctx c = make_ctx(&p, &io, powers);
        const tl_tile_fn any = tl_tile_kernel(&c);
        CHECK((any == NULL) == (T == 0), "tl_tile_kernel at T = %td: %s", T,
              any == NULL ? "none" : "a kernel");
        if (T > 0)
            compare_each_isa(&p, "");
        compare_call(&p);
        free_problem(&p);
    }
}

/* Problems for the uniform version of the kernel (tile_kernel.h): no
 * lengths or mask, a shared system fixed in time, the squared error, n, m
 * <= 2; everything else random -- terms, include_initial, discount, state
 * and feature weights (with and without: one weight for every element or
 * not), target, offset, which gradients. Batches of up to 300 sequences, so
 * that the whole call runs several chunks (the later ones reuse the first
 * one's preparation) and tiles in pairs and alone. `full`: the version's
 * case without run-time choices -- combined_loss's three terms, the control
 * gradient, no offset, one weight for every element --, each n, m and
 * dtype in turn (among random problems about 1 in 300). */
static void test_uniform(int cases, int full)
{
    for (int t = 0; t < cases; t++) {
        const ptrdiff_t n = full ? 1 + t % 2 : 1 + rand_below(2);
        const ptrdiff_t m = full ? 1 + (t / 2) % 2 : 1 + rand_below(2);
        const ptrdiff_t T = 1 + rand_below(40), B = 1 + rand_below(300);
        const int f32 = full ? (t / 4) % 2 : !rand_below(2);
        problem p = make_problem_of(B, T, n, m, f32 ? TL_F32 : TL_F64, 1);
        free(p.lengths);
        free(p.mask);
        p.lengths = NULL;
        p.mask = NULL;
        p.spec.sel.lengths = NULL;
        p.spec.sel.mask = NULL;
        if (full) {
            p.spec.sel.discount = 1.0;
            p.spec.terms = TL_TERM_CONTROL | TL_TERM_TRAJECTORY | TL_TERM_TERMINAL;
            p.spec.state_weights = NULL;
            p.spec.feature_weights = NULL;
            p.form[2] = -1;
            memset(&p.dyn.c, 0, sizeof p.dyn.c);
            p.grads |= 1;
        } else if (rand_below(2)) { /* half of them with one weight for every element */
            p.spec.sel.discount = 1.0;
        }
        const size_t su = (size_t)(B * T * m), ss = (size_t)(B * (T + 1) * n);
        memset(p.read_u, 0, su);
        memset(p.read_ru, 0, su);
        memset(p.read_rs, 0, ss);
        memset(p.read_x0, 0, (size_t)(B * n));
        memset(p.read_tgt, 0, (size_t)(B * n));
        mark_reads(&p);
        compare_each_isa(&p, full ? " (uniform, all terms)" : " (uniform)");
        compare_call(&p);
        free_problem(&p);
    }
}

/* A NaN the loss reads (check_finite off) reaches the sums and gradients
 * of its sequence, through every penalty (rho'(NaN) is NaN), and no other. */
static void test_read_nan(void)
{
    for (int pen = 0; pen < TL_PENALTY_COUNT; pen++)
        for (int dt = 0; dt < 2; dt++) {
            problem p = make_problem(16, 6, 3, 2, dt ? TL_F32 : TL_F64);
            p.spec.penalty = (tl_penalty)pen;
            p.spec.terms = TL_TERM_CONTROL | TL_TERM_TRAJECTORY;
            p.spec.sel.lengths = NULL;
            p.spec.sel.mask = NULL;
            p.grads = 3;
            /* every step is read now: no NaN left in the system's arrays */
            fill_matrix(p.A, 16 * 6 * 9, 1.6 / sqrt(3.0));
            fill_matrix(p.Bm, 16 * 6 * 6, 1.0);
            fill_matrix(p.c, 16 * 6 * 3, 0.5);
            memset(p.read_u, 1, (size_t)(16 * 6 * 2));
            memset(p.read_ru, 1, (size_t)(16 * 6 * 2));
            memset(p.read_rs, 1, (size_t)(16 * 7 * 3));
            memset(p.read_x0, 1, (size_t)(16 * 3));
            p.u[5 * 12 + 4] = NAN; /* sequence 5, step 2 */
            arrays a = make_arrays(&p, NAN);
            const tl_loss_io io = make_io(&p, &a);
            double powers[8], sums[3] = {0, 0, 0};
            double *work = xcalloc(tl_tile_doubles(3, 2, 6), sizeof(double));
            tl_loss_ctx c = make_ctx(&p, &io, powers);
            c.uniform = 1;
            int bad = 0;
            tl_tile_kernel(&c)(&c, 0, 16, sums, &bad, work, 0);
            CHECK(isnan(sums[0]) && isnan(sums[1]), "read NaN: sums %g %g (penalty %d)", sums[0],
                  sums[1], pen);
            CHECK(bad == 1, "read NaN: the kernel does not flag its NaN gradients (penalty %d)",
                  pen);
            CHECK(isnan(elem(&p, a.gu, 5 * 12 + 4)) && isnan(elem(&p, a.gx, 5 * 3)),
                  "read NaN: its gradients (penalty %d)", pen);
            int others = 1;
            for (ptrdiff_t b = 0; b < 16; b++)
                for (ptrdiff_t i = 0; i < 3 && b != 5; i++)
                    others &= !isnan(elem(&p, a.gx, (size_t)(b * 3 + i)));
            CHECK(others, "read NaN reached other sequences (penalty %d)", pen);
            free(work);
            free_arrays(&a);
            free_problem(&p);
        }
}

/* check_finite under a uniform selection, which the driver decides from the
 * chunk's sums when they are finite: an inf or NaN in any element read is
 * found for every set of terms and penalty, even where every weight that
 * multiplies it is 0 (state and feature weights 0, a discount whose powers
 * underflow to 0, a zero system); finite inputs whose sums overflow are
 * TL_OK with a nonfinite value. B = 11: a tile and a partial one. */
static void test_finite_by_sums(void)
{
    const ptrdiff_t B = 11, T = 4, n = 2, m = 1;
    double A[4] = {0, 0, 0, 0}, Bm[2] = {0, 0}, sw[2] = {0, 0}, fw[1] = {0};
    const tl_dynamics dyn = tl_dynamics_linear(n, m, A, Bm);
    double u[11 * 4], ru[11 * 4], x0[11 * 2], rs[11 * 5 * 2], tg[11 * 2], gu[11 * 4], gx[11 * 2];
    double *arr[5] = {u, x0, ru, rs, tg};
    const ptrdiff_t sizes[5] = {B * T * m, B * n, B * T * m, B * (T + 1) * n, B * n};
    int ok = 1, found = 0;
    for (unsigned terms = 1; terms < 8; terms++)
        for (int pen = 0; pen < TL_PENALTY_COUNT; pen++) {
            tl_loss_spec spec;
            memset(&spec, 0, sizeof spec);
            spec.sel.batch = B, spec.sel.steps = T, spec.sel.discount = 1e-200;
            spec.terms = terms, spec.penalty = (tl_penalty)pen, spec.delta = 1.0;
            spec.control_weight = spec.trajectory_weight = spec.terminal_weight = 1.0;
            spec.state_weights = sw, spec.feature_weights = fw;
            spec.include_initial = pen == 1, spec.check_finite = 1, spec.threads = 1;
            void *work = xcalloc(tl_loss_work_bytes(&dyn, 0, &spec), 1);
            const int states = (terms & 6) != 0;
            for (int a = 0; a < 5; a++)
                for (ptrdiff_t i = 0; i < sizes[a]; i++) {
                    for (int k = 0; k < 5; k++)
                        for (ptrdiff_t e = 0; e < sizes[k]; e++)
                            arr[k][e] = rand_s();
                    /* read: controls always, x0 with a state, ref controls with the
                     * control term, ref states with the trajectory term (state 0 only
                     * with include_initial), the target with the terminal term */
                    const int read = a == 0 || (a == 1 && states) || (a == 2 && (terms & 1)) ||
                                     (a == 3 && (terms & 2) && (spec.include_initial || i % 10 >= 2)) ||
                                     (a == 4 && (terms & 4));
                    arr[a][i] = i % 2 ? -INFINITY : NAN;
                    const tl_loss_io io = {TL_F64, u, x0, ru, rs, tg, gu, gx};
                    tl_loss_value v;
                    const tl_status st = tl_rollout_loss(&dyn, &spec, &io, &v, work);
                    ok &= st == (read ? TL_ERR_NONFINITE : TL_OK);
                    found += read;
                }
            /* finite but huge: the sums overflow, the inputs are finite */
            for (ptrdiff_t e = 0; e < sizes[0]; e++)
                u[e] = 1e300, ru[e] = -1e300;
            for (ptrdiff_t e = 0; e < sizes[3]; e++)
                rs[e] = 1e300;
            for (ptrdiff_t e = 0; e < sizes[4]; e++)
                tg[e] = -1e300;
            sw[0] = sw[1] = fw[0] = 1.0;
            spec.sel.discount = 1.0;
            const tl_loss_io io = {TL_F64, u, x0, ru, rs, tg, gu, gx};
            tl_loss_value v;
            ok &= tl_rollout_loss(&dyn, &spec, &io, &v, work) == TL_OK &&
                  (spec.penalty != TL_PENALTY_MSE || v.nonfinite);
            sw[0] = sw[1] = fw[0] = 0.0;
            free(work);
        }
    CHECK(ok && found > 0, "check_finite by sums: every element read found (%d), overflow not",
          found);
}

/* The vector penalty (penalty.h) against the scalar one, lane by lane, at
 * special values too: the same value and derivative bit for bit, NaN for NaN. */
typedef double pen_v __attribute__((vector_size(8 * sizeof(double))));
typedef int64_t pen_m __attribute__((vector_size(8 * sizeof(double))));
TL_VRHO_DEFINE(pen_vrho, double, pen_v, pen_m)

static int same(double a, double b)
{
    return (a != a && b != b) || memcmp(&a, &b, sizeof a) == 0;
}

static void test_penalty(void)
{
    const double r[16] = {0.0, -0.0, 1e-300, -2.5, 0.3, -0.3, 0.5, -0.5,
                          7.0, INFINITY, -INFINITY, NAN, 1e300, -1e-5, 0.49999999, -0.50000001};
    for (int pen = 0; pen < TL_PENALTY_COUNT; pen++)
        for (int half = 0; half < 2; half++) {
            pen_v v, dv;
            for (int l = 0; l < 8; l++)
                v[l] = r[8 * half + l];
            const pen_v ev = pen_vrho((tl_penalty)pen, 0.5, &v, &dv);
            for (int l = 0; l < 8; l++) {
                double d;
                const double e = tl_rho((tl_penalty)pen, 0.5, v[l], &d);
                CHECK(same(ev[l], e) && same(dv[l], d),
                      "penalty %d at %g: vector %g, %g; scalar %g, %g", pen, v[l], ev[l], dv[l], e,
                      d);
            }
        }
}

int main(void)
{
    test_random(600);
    test_uniform(300, 0);
    test_uniform(64, 1);
    test_read_nan();
    test_finite_by_sums();
    test_penalty();
    printf("%d passed, %d failed\n", n_passed, n_failed);
    return n_failed != 0;
}
