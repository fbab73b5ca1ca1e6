/*
 * tile_kernel.h -- the tile kernel of the rollout losses for one dtype,
 * included by tile.c twice: TL_T double (TL_I int64_t) and float (int32_t),
 * TL_F(name) giving each name the dtype's suffix. What it computes is
 * engine.h's; how:
 *
 * A tile is TL_TILE consecutive sequences; a vector V holds one element of
 * each (lane l = sequence b0 + l), in TL_T, so float32 runs in float, eight
 * lanes a register, and float64 in double. Per step the forward pass
 *   - gathers the tile's controls u_k (and references) into m vectors,
 *   - scores u_k (control term) and stores its derivative Gc_k,
 *   - computes x_{k+1} = c_k + B_k u_k + A_k x_k (mv below),
 *   - scores x_{k+1} (trajectory term) and stores its derivative G_{k+1};
 * the terminal term adds to G at each lane's final state. The backward pass
 * is then only
 *   grad u_k = Gc_k + B_k^T lam_{k+1},   lam_k = G_k + A_k^T lam_{k+1},
 * from lam_K = G_K down to grad x0 = lam_0. One register-blocked
 * matrix-vector kernel (mv) serves both passes, [A | B] forward and their
 * transposes backward. Matrices shared by the batch are broadcast from
 * scalars; per-sample ones are gathered into lane layout once per tile (per
 * step when they vary in time).
 *
 * Sequences end at different steps (lengths, mask): each lane's valid
 * steps are masks, and everything a lane must not see -- steps it does not
 * score, states after its last one -- is removed by bitwise selects, never
 * multiplied by 0 (0 * NaN is NaN): padding of any value never changes a
 * result, and lam stays exactly 0 after a lane's last state.
 *
 * Two tiles are in flight: the forward pass of one runs in the same loop as
 * the backward pass of the one before, so the step-to-step chains of small
 * systems (each step waits for the last) overlap.
 */

#define V TL_F(vec)
#define M TL_F(mask)
typedef TL_T V __attribute__((vector_size(TL_TILE * sizeof(TL_T))));
typedef TL_I M __attribute__((vector_size(TL_TILE * sizeof(TL_T))));

/* Rows of one block of mv: its accumulators fill half the vector registers. */
#define TL_ROWS ((8 * TL_TILE_VREG_BYTES) / (int)sizeof(V) < 1 ? 1 : (8 * TL_TILE_VREG_BYTES) / (int)sizeof(V))

TL_VRHO_DEFINE(TL_F(vrho), TL_T, V, M)

TL_INLINE V TL_F(splat)(TL_T x)
{
    const V zero = {0};
    return zero + x;
}

/* mask ? a : b, lane by lane, and mask ? a : 0. (No function here takes a
 * vector by value: GCC notes the ABI of such arguments once a file, -Wpsabi
 * pragmas or not.) */
#define TL_SEL(mask, a, b) ((V)(((M)(a) & (mask)) | ((M)(b) & ~(mask))))
#define TL_KEEP(mask, a) ((V)((M)(a) & (mask)))

/* (p[0], p[stride], ..., p[7 stride]) and its inverse. */
TL_INLINE V TL_F(gather)(const TL_T *p, ptrdiff_t stride)
{
    V v;
    for (int l = 0; l < TL_TILE; l++)
        v[l] = p[l * stride];
    return v;
}

TL_INLINE void TL_F(scatter)(const V *v, TL_T *p, ptrdiff_t stride)
{
    for (int l = 0; l < TL_TILE; l++)
        p[l * stride] = (*v)[l];
}

/* Adds v to the sums, lane by lane, in double. */
#define TL_ACC(sum, v) (*(sum) += __builtin_convertvector((v), tl_tile_sums))

/* ---- the call, its tiles and their selection --------------------------- */

/* The valid steps and weights of the lanes of a tile, one vector a step. */
typedef struct {
    M *vc;          /* T: control step k is valid */
    M *vs;          /* T + 1: state k is scored by the trajectory term */
    V *wcv, *wcg;   /* T: control weights w_k, and scale[0] w_k */
    V *wsv, *wsg;   /* T + 1: state weights, and scale[1] times them */
    M fin;          /* each lane's final valid state K_l (0: no valid step) */
    ptrdiff_t Kmax; /* the largest K_l */
    int ragged;     /* do lanes end at different states? */
} TL_F(sel_t);

/* A tile in flight: its selection, derivatives, registers and matrices. */
typedef struct {
    ptrdiff_t b0;
    TL_F(sel_t) own, *sel; /* sel: own, or the call's when every lane is alike */
    V *G, *Gc;             /* (T+1) n and T m */
    V *x, *xn, *xf, *lam, *ln, *tgt, *cv; /* n each */
    V *uk, *gu;            /* m each */
    V *Av, *Bv;            /* A, B in lane layout (per-sample systems) */
    TL_T *As, *Bs;         /* or as scalars (shared systems) */
} TL_F(slot_t);

/* One matrix a matrix-vector product reads: element (i, j) at i rs + j cs
 * of the lane table v (vec) or the scalars s, times z[j] for j < cols. */
typedef struct {
    const V *v;
    const TL_T *s;
    ptrdiff_t rs, cs, cols;
    const V *z;
} TL_F(mat_t);

typedef struct {
    const tl_loss_ctx *c;
    ptrdiff_t T, n, m, su, ss;      /* su, ss: row lengths of controls and states */
    int ctl, traj, term, states;    /* the terms; states: some state is scored */
    int shift, vec;                 /* vec: A and B in lane layout */
    int a_tv, b_tv, c_tv;           /* does A, B, c vary in time? */
    tl_penalty pen;
    TL_T delta, sf;                 /* sf: scale[2] */
    const TL_T *u, *x0, *ru, *rs, *tgt;
    TL_T *gu, *gx;
    TL_T *sw, *fw;                  /* state and feature weights (ones when not given) */
    double *row;                    /* T + 2: one sequence's time weights */
    TL_F(slot_t) slot[2];
    tl_tile_sums sum[3];
} TL_F(call_t);

/* Field f (len elements) of lanes b0 .. b0 + 7 at step k: into the lane
 * table vt, or (shared, scalars) into st. */
static void TL_F(field_at)(const tl_field *f, ptrdiff_t len, ptrdiff_t b0, ptrdiff_t k,
                           V *vt, TL_T *st)
{
    const double *p = f->data + b0 * f->batch_stride + k * f->step_stride;
    if (vt == NULL) {
        for (ptrdiff_t i = 0; i < len; i++)
            st[i] = (TL_T)p[i];
        return;
    }
    for (ptrdiff_t i = 0; i < len; i++) {
        V v;
        for (int l = 0; l < TL_TILE; l++)
            v[l] = (TL_T)p[l * f->batch_stride + i];
        vt[i] = v;
    }
}

/* The slot's matrices at step k: those that vary in `which` (bits 1 A,
 * 2 B, 4 c) among the fields f says. */
static void TL_F(mats_at)(const TL_F(call_t) *q, TL_F(slot_t) *s, ptrdiff_t k, unsigned which)
{
    const tl_dynamics *d = q->c->dyn;
    const ptrdiff_t n = q->n, m = q->m;
    if (which & 1)
        TL_F(field_at)(&d->A, n * n, s->b0, k, q->vec ? s->Av : NULL, s->As);
    if (which & 2)
        TL_F(field_at)(&d->B, n * m, s->b0, k, q->vec ? s->Bv : NULL, s->Bs);
    if ((which & 4) && d->c.data != NULL)
        TL_F(field_at)(&d->c, n, s->b0, k, s->cv, NULL);
}

/* Bits of the fields that are shared and fixed, per sample and fixed, and time-varying. */
static unsigned TL_F(fields)(const tl_dynamics *d, int per_sample, int varying)
{
    const tl_field *f[3] = {&d->A, &d->B, &d->c};
    unsigned bits = 0;
    for (int i = 0; i < 3; i++)
        if ((f[i]->step_stride != 0) == varying &&
            (varying || (f[i]->batch_stride != 0) == per_sample))
            bits |= 1u << i;
    return bits;
}

/* Lane l of the selection vectors: sequence b, or nothing (b < 0). */
static void TL_F(select_lane)(const TL_F(call_t) *q, TL_F(sel_t) *sl, int l, ptrdiff_t b)
{
    const tl_loss_ctx *c = q->c;
    const tl_selection *sel = &c->spec->sel;
    const ptrdiff_t T = q->T;
    const tl_seq_span span = b >= 0 ? tl_sel_span(sel, b) : (tl_seq_span){0, -1};
    double *w = q->row;
    sl->fin[l] = span.count > 0 ? (TL_I)(span.last + 1) : 0;
    if (span.count == 0) {
        for (ptrdiff_t k = 0; k <= T; k++) {
            if (k < T) {
                sl->vc[k][l] = 0;
                sl->wcv[k][l] = sl->wcg[k][l] = 0;
            }
            sl->vs[k][l] = 0;
            sl->wsv[k][l] = sl->wsg[k][l] = 0;
        }
        return;
    }
    tl_sel_weights(sel, b, 0, c->powers, w);
    for (ptrdiff_t k = 0; k < T; k++) {
        sl->vc[k][l] = tl_sel_valid(sel, b, k) ? -1 : 0;
        sl->wcv[k][l] = (TL_T)w[k];
        sl->wcg[k][l] = (TL_T)(c->scale[0] * w[k]);
    }
    /* state k >= 1 is scored with control step k - 1; state 0 only with the shift */
    sl->vs[0][l] = q->shift ? -1 : 0;
    for (ptrdiff_t k = 1; k <= T; k++)
        sl->vs[k][l] = sl->vc[k - 1][l];
    if (q->shift) {
        tl_sel_weights(sel, b, 1, c->powers, w);
    } else { /* state k's weight is step k - 1's */
        memmove(w + 1, w, (size_t)T * sizeof(double));
        w[0] = 0.0;
    }
    for (ptrdiff_t k = 0; k <= T; k++) {
        sl->wsv[k][l] = (TL_T)w[k];
        sl->wsg[k][l] = (TL_T)(c->scale[1] * w[k]);
    }
}

/* The selection of the tile from b0 (b0 < 0: every sequence's, alike). */
static void TL_F(select_tile)(const TL_F(call_t) *q, TL_F(sel_t) *sl, ptrdiff_t b0)
{
    for (int l = 0; l < TL_TILE; l++) {
        if (b0 < 0 && l > 0) { /* a uniform selection: lane 0's everywhere */
            for (ptrdiff_t k = 0; k <= q->T; k++) {
                if (k < q->T) {
                    sl->vc[k][l] = sl->vc[k][0];
                    sl->wcv[k][l] = sl->wcv[k][0];
                    sl->wcg[k][l] = sl->wcg[k][0];
                }
                sl->vs[k][l] = sl->vs[k][0];
                sl->wsv[k][l] = sl->wsv[k][0];
                sl->wsg[k][l] = sl->wsg[k][0];
            }
            sl->fin[l] = sl->fin[0];
            continue;
        }
        TL_F(select_lane)(q, sl, l, b0 < 0 ? 0 : b0 + l);
    }
    TL_I kmax = 0;
    for (int l = 0; l < TL_TILE; l++)
        kmax = sl->fin[l] > kmax ? sl->fin[l] : kmax;
    sl->Kmax = (ptrdiff_t)kmax;
    sl->ragged = 0;
    for (int l = 0; l < TL_TILE; l++)
        sl->ragged |= sl->fin[l] != kmax;
}

/* ---- the matrix-vector kernel ------------------------------------------ */

/* out[i] = init[i] + sum_j a(i, j) a.z[j] + sum_j b(i, j) b.z[j] for the R
 * rows from i0; where `live` is given, lanes outside it keep init. */
TL_INLINE void TL_F(mv_rows)(const int R, const int vec, ptrdiff_t i0, const V *init,
                             const TL_F(mat_t) a, const TL_F(mat_t) b, const M *live,
                             V *restrict out)
{
    V acc[8];
    for (int r = 0; r < R; r++)
        acc[r] = init[i0 + r];
    for (int t = 0; t < 2; t++) {
        const TL_F(mat_t) *p = t == 0 ? &a : &b;
        for (ptrdiff_t j = 0; j < p->cols; j++) {
            const V z = p->z[j];
            for (int r = 0; r < R; r++) {
                const ptrdiff_t e = (i0 + r) * p->rs + j * p->cs;
                acc[r] += (vec ? p->v[e] : TL_F(splat)(p->s[e])) * z;
            }
        }
    }
    for (int r = 0; r < R; r++)
        out[i0 + r] = live != NULL ? TL_SEL(*live, acc[r], init[i0 + r]) : acc[r];
}

TL_INLINE void TL_F(mv)(const int vec, ptrdiff_t rows, const V *init, const TL_F(mat_t) a,
                        const TL_F(mat_t) b, const M *live, V *restrict out)
{
    ptrdiff_t i = 0;
    if (TL_ROWS >= 8)
        for (; i + 8 <= rows; i += 8)
            TL_F(mv_rows)(8, vec, i, init, a, b, live, out);
    if (TL_ROWS >= 4)
        for (; i + 4 <= rows; i += 4)
            TL_F(mv_rows)(4, vec, i, init, a, b, live, out);
    for (; i + 2 <= rows; i += 2)
        TL_F(mv_rows)(2, vec, i, init, a, b, live, out);
    if (i < rows)
        TL_F(mv_rows)(1, vec, i, init, a, b, live, out);
}

/* ---- the forward pass ---------------------------------------------------- */

/* The trajectory term at the tile's state k (in s->x): adds its value to the
 * sums and stores its derivative G_k. The masks of a uniform selection are
 * all ones: a select costs an AND, and one path serves every selection. */
TL_INLINE void TL_F(score_states)(TL_F(call_t) *q, TL_F(slot_t) *s, ptrdiff_t k)
{
    const ptrdiff_t n = q->n;
    V *G = s->G + k * n;
    if (!q->traj) {
        for (ptrdiff_t i = 0; i < n; i++)
            G[i] = TL_F(splat)(0);
        return;
    }
    const TL_F(sel_t) *sl = s->sel;
    const TL_T *rs = q->rs + s->b0 * q->ss + k * n;
    for (ptrdiff_t i = 0; i < n; i++) {
        const V r = s->x[i] - TL_F(gather)(rs + i, q->ss);
        V d;
        const V e = TL_F(vrho)(q->pen, q->delta, &r, &d);
        TL_ACC(&q->sum[1], TL_KEEP(sl->vs[k], sl->wsv[k] * (q->sw[i] * e)));
        G[i] = TL_KEEP(sl->vs[k], sl->wsg[k] * (q->sw[i] * d));
    }
}

/* x = x0 and the terms at state 0. */
TL_INLINE void TL_F(forward_begin)(TL_F(call_t) *q, TL_F(slot_t) *s)
{
    const ptrdiff_t n = q->n;
    if (!q->states)
        return;
    for (ptrdiff_t i = 0; i < n; i++)
        s->x[i] = s->xf[i] = TL_F(gather)(q->x0 + s->b0 * n + i, n);
    if (q->shift) {
        TL_F(score_states)(q, s, 0);
    } else { /* an unscored state 0: its reference is never read */
        for (ptrdiff_t i = 0; i < n; i++)
            s->G[i] = TL_F(splat)(0);
    }
}

/* Control step k: its penalty, then x = x_{k+1} and the terms there. */
TL_INLINE void TL_F(forward_step)(TL_F(call_t) *q, TL_F(slot_t) *s, ptrdiff_t k, const int vec)
{
    const ptrdiff_t n = q->n, m = q->m, su = q->su;
    const TL_F(sel_t) *sl = s->sel;
    const TL_T *u = q->u + s->b0 * su + k * m;
    for (ptrdiff_t j = 0; j < m; j++)
        s->uk[j] = TL_F(gather)(u + j, su);
    if (q->ctl) {
        const TL_T *ru = q->ru + s->b0 * su + k * m;
        for (ptrdiff_t j = 0; j < m; j++) {
            const V r = s->uk[j] - TL_F(gather)(ru + j, su);
            V d;
            const V e = TL_F(vrho)(q->pen, q->delta, &r, &d);
            TL_ACC(&q->sum[0], TL_KEEP(sl->vc[k], sl->wcv[k] * (q->fw[j] * e)));
            s->Gc[k * m + j] = TL_KEEP(sl->vc[k], sl->wcg[k] * (q->fw[j] * d));
        }
    } else {
        for (ptrdiff_t j = 0; j < m; j++)
            s->Gc[k * m + j] = TL_F(splat)(0);
    }
    if (!q->states)
        return;
    if (q->a_tv | q->b_tv | q->c_tv)
        TL_F(mats_at)(q, s, k, (unsigned)(q->a_tv | q->b_tv << 1 | q->c_tv << 2));
    /* the controls first: they are ready before x_k, so only A_k x_k stands
     * on the chain from step to step */
    const TL_F(mat_t) B = {s->Bv, s->Bs, m, 1, m, s->uk}, A = {s->Av, s->As, n, 1, n, s->x};
    TL_F(mv)(vec, n, s->cv, B, A, NULL, s->xn);
    V *t = s->x;
    s->x = s->xn;
    s->xn = t;
    TL_F(score_states)(q, s, k + 1);
    if (q->term && sl->ragged) { /* keep each lane's final state */
        const M final = (M)(sl->fin == (M){0} + (TL_I)(k + 1));
        for (ptrdiff_t i = 0; i < n; i++)
            s->xf[i] = TL_SEL(final, s->x[i], s->xf[i]);
    }
}

/* The terminal term at each lane's final valid state: adds to G there. */
TL_INLINE void TL_F(forward_end)(TL_F(call_t) *q, TL_F(slot_t) *s)
{
    const TL_F(sel_t) *sl = s->sel;
    const ptrdiff_t n = q->n, K = sl->Kmax, ss = q->ss;
    if (!q->term || K == 0)
        return;
    if (!sl->ragged) { /* every lane ends at K, in s->x */
        for (ptrdiff_t i = 0; i < n; i++) {
            const V tgt = q->tgt != NULL ? TL_F(gather)(q->tgt + s->b0 * n + i, n)
                                         : TL_F(gather)(q->rs + s->b0 * ss + K * n + i, ss);
            const V r = s->x[i] - tgt;
            V d;
            const V e = TL_F(vrho)(q->pen, q->delta, &r, &d);
            TL_ACC(&q->sum[2], q->sw[i] * e);
            s->G[K * n + i] += (q->sf * q->sw[i]) * d;
        }
        return;
    }
    /* lanes end at different states: lane by lane, lanes with no valid step left out */
    const M scored = (M)(sl->fin > (M){0});
    for (ptrdiff_t i = 0; i < n; i++) {
        V tgt = TL_F(splat)(0), d;
        for (int l = 0; l < TL_TILE; l++) {
            const ptrdiff_t b = s->b0 + l, Kl = (ptrdiff_t)sl->fin[l];
            if (Kl > 0)
                tgt[l] = q->tgt != NULL ? q->tgt[b * n + i] : q->rs[b * ss + Kl * n + i];
        }
        const V r = s->xf[i] - tgt;
        const V e = TL_F(vrho)(q->pen, q->delta, &r, &d);
        const V gd = (q->sf * q->sw[i]) * d;
        TL_ACC(&q->sum[2], TL_KEEP(scored, q->sw[i] * e));
        for (int l = 0; l < TL_TILE; l++) {
            const ptrdiff_t Kl = (ptrdiff_t)sl->fin[l];
            if (Kl > 0)
                s->G[Kl * n + i][l] += gd[l];
        }
    }
}

/* ---- the backward pass ----------------------------------------------------- */

TL_INLINE void TL_F(backward_begin)(const TL_F(call_t) *q, TL_F(slot_t) *s)
{
    const ptrdiff_t n = q->n, K = s->sel->Kmax;
    if (q->states)
        for (ptrdiff_t i = 0; i < n; i++)
            s->lam[i] = s->G[K * n + i];
}

/* Step k: grad u_k = Gc_k + B_k^T lam_{k+1} and lam_k = G_k + A_k^T lam_{k+1};
 * lanes that end at or before state k keep Gc_k and G_k, which are 0 after
 * their final state, so lam stays exactly 0 there whatever A_k holds. */
TL_INLINE void TL_F(backward_step)(TL_F(call_t) *q, TL_F(slot_t) *s, ptrdiff_t k, const int vec)
{
    const ptrdiff_t n = q->n, m = q->m, su = q->su;
    const TL_F(sel_t) *sl = s->sel;
    TL_T *gu = q->gu != NULL ? q->gu + s->b0 * su + k * m : NULL;
    if (!q->states) {
        if (gu != NULL)
            for (ptrdiff_t j = 0; j < m; j++)
                TL_F(scatter)(&s->Gc[k * m + j], gu + j, su);
        return;
    }
    if (q->a_tv | q->b_tv)
        TL_F(mats_at)(q, s, k, (unsigned)(q->a_tv | q->b_tv << 1));
    const M live = (M)((M){0} + (TL_I)k < sl->fin);
    const M *lv = sl->ragged ? &live : NULL;
    const TL_F(mat_t) none = {NULL, NULL, 0, 0, 0, NULL};
    if (gu != NULL) {
        const TL_F(mat_t) Bt = {s->Bv, s->Bs, 1, m, n, s->lam};
        TL_F(mv)(vec, m, s->Gc + k * m, Bt, none, lv, s->gu);
        for (ptrdiff_t j = 0; j < m; j++)
            TL_F(scatter)(&s->gu[j], gu + j, su);
    }
    const TL_F(mat_t) At = {s->Av, s->As, 1, n, n, s->lam};
    TL_F(mv)(vec, n, s->G + k * n, At, none, lv, s->ln);
    V *t = s->lam;
    s->lam = s->ln;
    s->ln = t;
}

/* grad x0 = lam_0, and zero gradients after the tile's last step. */
TL_INLINE void TL_F(backward_end)(const TL_F(call_t) *q, const TL_F(slot_t) *s)
{
    const ptrdiff_t n = q->n, T = q->T, m = q->m, K = s->sel->Kmax;
    const V zero = TL_F(splat)(0);
    if (q->gx != NULL)
        for (ptrdiff_t i = 0; i < n; i++)
            TL_F(scatter)(q->states ? &s->lam[i] : &zero, q->gx + s->b0 * n + i, n);
    if (q->gu != NULL && K < T)
        for (int l = 0; l < TL_TILE; l++)
            memset(q->gu + (s->b0 + l) * q->su + K * m, 0, (size_t)((T - K) * m) * sizeof(TL_T));
}

/* ---- a run of tiles ---------------------------------------------------------- */

/* The tile from b0 enters slot s: its selection and per-sample matrices. */
static void TL_F(tile_begin)(TL_F(call_t) *q, TL_F(slot_t) *s, ptrdiff_t b0)
{
    s->b0 = b0;
    if (!q->c->uniform)
        TL_F(select_tile)(q, &s->own, b0);
    const unsigned fixed = TL_F(fields)(q->c->dyn, 1, 0);
    if (fixed != 0 && q->states)
        TL_F(mats_at)(q, s, 0, fixed);
}

/* `tiles` tiles from b0, the forward pass of tile t beside the backward
 * pass of tile t - 1 (when a gradient is wanted). vec: the matrices are in
 * lane layout (a constant: the kernel is compiled for each). */
TL_INLINE void TL_F(run)(TL_F(call_t) *q, ptrdiff_t b0, ptrdiff_t tiles, const int vec)
{
    const int grads = q->gu != NULL || q->gx != NULL;
    for (ptrdiff_t t = 0; t <= tiles; t++) {
        TL_F(slot_t) *f = t < tiles ? &q->slot[t & 1] : NULL;
        TL_F(slot_t) *b = t > 0 && grads ? &q->slot[(t - 1) & 1] : NULL;
        ptrdiff_t Kf = 0, Kb = 0;
        if (f != NULL) {
            TL_F(tile_begin)(q, f, b0 + t * TL_TILE);
            TL_F(forward_begin)(q, f);
            Kf = f->sel->Kmax;
        }
        if (b != NULL) {
            TL_F(backward_begin)(q, b);
            Kb = b->sel->Kmax;
        }
        for (ptrdiff_t i = 0; i < Kf || i < Kb; i++) {
            if (i < Kf)
                TL_F(forward_step)(q, f, i, vec);
            if (i < Kb)
                TL_F(backward_step)(q, b, Kb - 1 - i, vec);
        }
        if (f != NULL)
            TL_F(forward_end)(q, f);
        if (b != NULL)
            TL_F(backward_end)(q, b);
    }
}

static void TL_F(run_shared)(TL_F(call_t) *q, ptrdiff_t b0, ptrdiff_t tiles)
{
    TL_F(run)(q, b0, tiles, 0);
}

static void TL_F(run_lanes)(TL_F(call_t) *q, ptrdiff_t b0, ptrdiff_t tiles)
{
    TL_F(run)(q, b0, tiles, 1);
}

/* ---- the kernel ----------------------------------------------------------------- */

/* Carves the call's scratch (tl_tile_layout_of) and prepares what every
 * tile shares: weights, the selection of a uniform batch, shared matrices. */
static void TL_F(call_init)(TL_F(call_t) *q, const tl_loss_ctx *c, double *work)
{
    const tl_loss_spec *spec = c->spec;
    const tl_loss_io *io = c->io;
    const tl_dynamics *d = c->dyn;
    const ptrdiff_t T = c->T, n = c->n, m = c->m;
    tl_tile_layout lay;
    tl_tile_layout_of(n, m, T, &lay);

    memset(q, 0, sizeof *q);
    q->c = c;
    q->T = T;
    q->n = n;
    q->m = m;
    q->su = T * m;
    q->ss = (T + 1) * n;
    q->ctl = (spec->terms & TL_TERM_CONTROL) != 0;
    q->traj = (spec->terms & TL_TERM_TRAJECTORY) != 0;
    q->term = (spec->terms & TL_TERM_TERMINAL) != 0;
    q->states = q->traj || q->term;
    q->shift = c->shift;
    q->vec = d->A.batch_stride != 0 || d->B.batch_stride != 0;
    q->a_tv = d->A.step_stride != 0;
    q->b_tv = d->B.step_stride != 0;
    q->c_tv = d->c.data != NULL && d->c.step_stride != 0;
    q->pen = spec->penalty;
    q->delta = (TL_T)spec->delta;
    q->sf = (TL_T)c->scale[2];
    q->u = (const TL_T *)io->controls;
    q->x0 = q->states ? (const TL_T *)io->x0 : NULL;
    q->ru = q->ctl ? (const TL_T *)io->ref_controls : NULL;
    q->rs = (const TL_T *)io->ref_states;
    q->tgt = (const TL_T *)io->target;
    q->gu = (TL_T *)io->grad_controls;
    q->gx = (TL_T *)io->grad_x0;

    q->row = work;
    q->sw = (TL_T *)(q->row + T + 2);
    q->fw = q->sw + n;
    for (ptrdiff_t i = 0; i < n; i++)
        q->sw[i] = spec->state_weights != NULL ? (TL_T)spec->state_weights[i] : 1;
    for (ptrdiff_t j = 0; j < m; j++)
        q->fw[j] = spec->feature_weights != NULL ? (TL_T)spec->feature_weights[j] : 1;

    V *v = (V *)tl_tile_align(work + lay.doubles - 2 * TL_TILE);
    for (int i = 0; i < 2; i++) {
        TL_F(slot_t) *s = &q->slot[i];
        s->own.vc = (M *)v;
        s->own.vs = s->own.vc + T;
        s->own.wcv = (V *)(s->own.vs + T + 1);
        s->own.wcg = s->own.wcv + T;
        s->own.wsv = s->own.wcg + T;
        s->own.wsg = s->own.wsv + T + 1;
        s->G = s->own.wsg + T + 1;
        s->Gc = s->G + (T + 1) * n;
        s->x = s->Gc + T * m;
        s->xn = s->x + n;
        s->xf = s->xn + n;
        s->lam = s->xf + n;
        s->ln = s->lam + n;
        s->tgt = s->ln + n;
        s->cv = s->tgt + n;
        s->uk = s->cv + n;
        s->gu = s->uk + m;
        s->Av = s->gu + m;
        s->Bv = s->Av + n * n;
        s->As = (TL_T *)s->Av;
        s->Bs = s->As + n * n;
        v += lay.slot;
        s->sel = &s->own;
    }
    if (c->uniform) { /* one selection for every tile, in slot 0's room */
        TL_F(select_tile)(q, &q->slot[0].own, -1);
        q->slot[1].sel = &q->slot[0].own;
    }
    const unsigned fixed = TL_F(fields)(d, 0, 0);
    for (int i = 0; i < 2; i++) {
        TL_F(slot_t) *s = &q->slot[i];
        for (ptrdiff_t k = 0; k < n; k++)
            s->cv[k] = TL_F(splat)(0);
        s->b0 = 0;
        if (q->states)
            TL_F(mats_at)(q, s, 0, fixed);
    }
}

static void TL_F(tl_tile_run)(const tl_loss_ctx *c, ptrdiff_t b0, ptrdiff_t count,
                              double sums[3], double *work)
{
    TL_F(call_t) q;
    TL_F(call_init)(&q, c, work);
    const ptrdiff_t tiles = count / TL_TILE;
    if (q.vec)
        TL_F(run_lanes)(&q, b0, tiles);
    else
        TL_F(run_shared)(&q, b0, tiles);
    for (int i = 0; i < 3; i++) {
        double s = 0.0;
        for (int l = 0; l < TL_TILE; l++)
            s += q.sum[i][l];
        sums[i] += s;
    }
}

#undef TL_ROWS
#undef V
#undef M
