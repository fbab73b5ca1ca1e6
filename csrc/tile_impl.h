/*
 * tile_impl.h -- forward rollout, penalties and adjoint of the TL_VL
 * sequences of one tile, lane l of every vector being sequence b0 + l.
 * Included by loss_impl.h once per storage type, whose tiles are TL_VL
 * sequences of TL_T in TL_V (masks TL_VM, double sums TL_VS; lanes.h): a
 * float32 tile computes in float, eight lanes a register, and only its sums
 * are double. It is always inlined into its callers: one passes the call's
 * n and m (the general kernel), the others constants for the small systems
 * worth a kernel of their own, so the compiler unrolls over states and
 * inputs and keeps them in registers.
 *
 * The forward pass reads every input once, in step order: it rolls the
 * states out and stores each step's penalty derivative (G for states, Gc for
 * controls, already weighted and selected). The backward pass is then only
 *   lam_k = G_k + Ad^T lam_{k+1},   d/du_{k-1} = Gc_{k-1} + Bd^T lam_k.
 *
 * `fast` (a constant) is the common case of a full tile with every step
 * valid (no lengths or mask), the squared error and a gradient wanted: no
 * per-lane selects, rho inlined, and `fast` itself is the set of terms
 * (TL_TERM_* flags), so no branch on them is left in the loops. Its
 * arithmetic is the general path's, so both round alike. The general path
 * passes fast = 0 and reads the terms from the spec.
 */
/* TL_VL consecutive elements of a row. */
static TL_ALWAYS_INLINE TL_V TL_SFX(rl_loadv)(const TL_T *p)
{
    TL_V v;
    memcpy(&v, p, sizeof v);
    return v;
}

static TL_ALWAYS_INLINE void TL_SFX(rl_storev)(TL_T *p, TL_V v)
{
    memcpy(p, &v, sizeof v);
}

/* dst[i] = (src[i], src[stride + i], ..., src[(TL_VL - 1) stride + i]) for
 * i < len: the tile's rows of an input, one vector a column, so the loops
 * read each with one load from one place instead of TL_VL. TL_VL columns at
 * a time by shuffles (a square transpose); a last block overlapping the one
 * before covers the rest. */
static TL_ALWAYS_INLINE void TL_SFX(rl_transpose_block)(const TL_T *restrict src,
                                                        const ptrdiff_t stride,
                                                        TL_V *restrict dst)
{
    TL_V r[TL_VL];
    for (int l = 0; l < TL_VL; l++)
        r[l] = TL_SFX(rl_loadv)(src + l * stride);
    TL_SFX(tl_vtranspose)(r, dst);
}

static TL_ALWAYS_INLINE void TL_SFX(rl_transpose)(const TL_T *restrict src, const ptrdiff_t stride,
                                                   const ptrdiff_t len, TL_V *restrict dst)
{
    if (len == 1 && stride == 1) { /* consecutive rows of one element: a load */
        dst[0] = TL_SFX(rl_loadv)(src);
        return;
    }
    if (len == 2 && stride == 2) { /* of two: two loads and two shuffles */
        const TL_V r[2] = {TL_SFX(rl_loadv)(src), TL_SFX(rl_loadv)(src + TL_VL)};
        TL_SFX(tl_vdeinterleave)(r, dst);
        return;
    }
#ifdef TL_HALF /* sixteen float lanes: shorter rows by halves (lanes8.h) */
    if (len >= TL_HALF && len < TL_VL) {
        for (ptrdiff_t i = 0; i + TL_HALF <= len; i += TL_HALF)
            TL_SFX(tl_vtranspose_half)(src + i, stride, dst + i);
        if (len % TL_HALF != 0)
            TL_SFX(tl_vtranspose_half)(src + len - TL_HALF, stride, dst + len - TL_HALF);
        return;
    }
#endif
    if (len < TL_VL) {
        for (ptrdiff_t i = 0; i < len; i++)
            dst[i] = TL_SFX(tl_vgather)(src + i, stride);
        return;
    }
    for (ptrdiff_t i = 0; i + TL_VL <= len; i += TL_VL)
        TL_SFX(rl_transpose_block)(src + i, stride, dst + i);
    if (len % TL_VL != 0)
        TL_SFX(rl_transpose_block)(src + len - TL_VL, stride, dst + len - TL_VL);
}

/* The inverse of rl_transpose: lane l of src[i] to dst[l stride + i], i < len. */
static TL_ALWAYS_INLINE void TL_SFX(rl_untranspose_block)(const TL_V *restrict src,
                                                          TL_T *restrict dst,
                                                          const ptrdiff_t stride)
{
    TL_V t[TL_VL];
    TL_SFX(tl_vtranspose)(src, t);
    for (int l = 0; l < TL_VL; l++)
        TL_SFX(rl_storev)(dst + l * stride, t[l]);
}

static TL_ALWAYS_INLINE void TL_SFX(rl_untranspose)(const TL_V *restrict src, const ptrdiff_t len,
                                                     TL_T *restrict dst, const ptrdiff_t stride)
{
#ifdef TL_HALF
    if (len >= TL_HALF && len < TL_VL) {
        for (ptrdiff_t i = 0; i + TL_HALF <= len; i += TL_HALF)
            TL_SFX(tl_vuntranspose_half)(src + i, dst + i, stride);
        if (len % TL_HALF != 0)
            TL_SFX(tl_vuntranspose_half)(src + len - TL_HALF, dst + len - TL_HALF, stride);
        return;
    }
#endif
    if (len < TL_VL) {
        for (ptrdiff_t i = 0; i < len; i++)
            TL_SFX(tl_vscatter)(src[i], dst + i, stride);
        return;
    }
    for (ptrdiff_t i = 0; i + TL_VL <= len; i += TL_VL)
        TL_SFX(rl_untranspose_block)(src + i, dst + i, stride);
    if (len % TL_VL != 0)
        TL_SFX(rl_untranspose_block)(src + len - TL_VL, dst + len - TL_VL, stride);
}

/* Where one tile's transposed inputs and penalty derivatives live in work:
 * TL_TILE_VECTORS(T, n, m) vectors from `at` (see rollout_worker_doubles). */
typedef struct {
    TL_V *G;      /* (T+1) x n: d value / d x_k of the state terms */
    TL_V *Gc;     /* T x m: d value / d u_k of the control term, then of the loss */
    TL_V *u, *ru; /* T x m: the controls and reference controls, transposed */
    TL_V *rs;     /* (T+1) x n: the reference states, transposed */
} TL_SFX(rl_buf);

static TL_ALWAYS_INLINE TL_SFX(rl_buf) TL_SFX(rl_buf_at)(TL_V *at, ptrdiff_t T, ptrdiff_t n,
                                                          ptrdiff_t m)
{
    TL_SFX(rl_buf) b;
    b.G = at;
    b.Gc = b.G + (T + 1) * n;
    b.u = b.Gc + T * m;
    b.ru = b.u + T * m;
    b.rs = b.ru + T * m;
    return b;
}

/* The per-call constants of the passes, unpacked once per kernel call. */
typedef struct {
    ptrdiff_t T, K, n, m, su, ss;
    unsigned terms;
    tl_penalty pen;
    double delta;
    int masked, hold;
    const TL_V *Av, *Bv; /* Ad, Bd as splats */
} TL_SFX(rl_pass);

/* The tile's inputs, transposed into b. */
static TL_ALWAYS_INLINE void TL_SFX(rl_stage)(const TL_SFX(rl_pass) *q, const TL_SFX(rl_data) *p,
                                               const TL_SFX(rl_buf) *b)
{
    TL_SFX(rl_transpose)(p->u, q->su, q->K * q->m, b->u);
    if (q->terms & TL_TERM_CONTROL)
        TL_SFX(rl_transpose)(p->ru, q->su, q->K * q->m, b->ru);
    if (q->terms & TL_TERM_TRAJECTORY)
        TL_SFX(rl_transpose)(p->rs, q->ss, (q->K + 1) * q->n, b->rs);
}

/* rho and its derivative (tl_vrho) of the residuals r; a NaN residual --
 * only from a NaN input that check_finite was told not to look for -- gets a
 * NaN derivative, where the comparisons of "l1" and "huber" would make it a
 * finite-looking 0 or -delta. By a select on r != r, so every other lane
 * keeps its bits; the squared error (d = r) needs none. */
static TL_ALWAYS_INLINE void TL_SFX(rl_rho)(const TL_SFX(rl_pass) *q, const TL_V r, TL_V *e,
                                             TL_V *d)
{
    TL_SFX(tl_vrho)(q->pen, q->delta, r, e, d);
    if (q->pen != TL_PENALTY_MSE)
        *d = TL_SFX(tl_vblend)((TL_VM)(r != r), r, *d);
}

/* One step's penalty of `count` values v against ref, with value weights vw
 * and gradient weights gw: adds to *sum and stores the derivatives in g.
 * masked: only the lanes that score this step (on); else all of them. */
static TL_ALWAYS_INLINE void TL_SFX(rl_score)(const TL_SFX(rl_pass) *q, const TL_VM on,
                                               const ptrdiff_t count, const TL_V *v,
                                               const TL_V *ref, const TL_V *vw, const TL_V *gw,
                                               TL_VS *sum, TL_V *g)
{
    TL_V e, d;
    for (ptrdiff_t i = 0; i < count; i++) {
        TL_SFX(rl_rho)(q, v[i] - ref[i], &e, &d);
        const TL_V ve = vw[i] * e, gd = gw[i] * d;
        TL_SFX(tl_vacc)(sum, q->masked ? TL_SFX(tl_vkeep)(on, ve) : ve);
        g[i] = q->masked ? TL_SFX(tl_vkeep)(on, gd) : gd;
    }
}

/* The trajectory term at the states x of step k: adds to *sum and stores G_k. */
static TL_ALWAYS_INLINE void TL_SFX(rl_score_states)(const TL_SFX(rl_pass) *q,
                                                      const TL_SFX(tile_sel) *ts,
                                                      const TL_SFX(rl_buf) *b, const ptrdiff_t k,
                                                      const TL_V *x, TL_VS *sum)
{
    const ptrdiff_t n = q->n;
    TL_SFX(rl_score)(q, ts->vs[k], n, x, b->rs + k * n, ts->vs_w + k * n, ts->gs_w + k * n, sum,
                     b->G + k * n);
}

/* x = x0 and the terms at state 0. */
static TL_ALWAYS_INLINE void TL_SFX(rl_forward_begin)(const TL_SFX(rl_pass) *q,
                                                       const tl_rl_const *c,
                                                       const TL_SFX(tile_sel) *ts,
                                                       const TL_SFX(rl_data) *p,
                                                       const TL_SFX(rl_buf) *b, TL_V *x,
                                                       TL_V *xf, TL_VS *sum_t)
{
    const ptrdiff_t n = q->n;
    TL_SFX(rl_transpose)(p->x0, n, n, x);
    for (ptrdiff_t i = 0; i < n; i++)
        xf[i] = x[i];
    if ((q->terms & TL_TERM_TRAJECTORY) && (q->masked || c->shift)) {
        TL_SFX(rl_score_states)(q, ts, b, 0, x, sum_t);
        return;
    }
    /* an unscored state 0: its reference is never read (nor checked) */
    for (ptrdiff_t i = 0; i < n; i++)
        b->G[i] = TL_SFX(tl_vsplat)(0.0);
}

/* Control step k: its penalty, then x = x_{k+1} and the terms at it. */
static TL_ALWAYS_INLINE void TL_SFX(rl_forward_step)(const TL_SFX(rl_pass) *q,
                                                      const TL_SFX(tile_sel) *ts,
                                                      const TL_SFX(rl_buf) *b, const ptrdiff_t k,
                                                      TL_V *restrict x, TL_V *restrict xn,
                                                      TL_V *restrict xf, TL_V *restrict uk,
                                                      TL_VS *sum_c, TL_VS *sum_t)
{
    const ptrdiff_t n = q->n, m = q->m;
    const TL_V zero = TL_SFX(tl_vsplat)(0.0);
    for (ptrdiff_t j = 0; j < m; j++)
        uk[j] = b->u[k * m + j];
    if (q->terms & TL_TERM_CONTROL) {
        TL_SFX(rl_score)(q, ts->vc[k], m, uk, b->ru + k * m, ts->vc_w + k * m, ts->gc_w + k * m,
                         sum_c, b->Gc + k * m);
    } else {
        for (ptrdiff_t j = 0; j < m; j++)
            b->Gc[k * m + j] = zero;
    }
    /* the controls first: they are ready before x_k, so only the state
     * products and their sums stand on the step-to-step chain */
    for (ptrdiff_t i = 0; i < n; i++) {
        TL_V acc = q->Bv[i * m] * uk[0];
        for (ptrdiff_t j = 1; j < m; j++)
            acc += q->Bv[i * m + j] * uk[j];
        for (ptrdiff_t j = 0; j < n; j++)
            acc += q->Av[i * n + j] * x[j];
        xn[i] = acc;
    }
    for (ptrdiff_t i = 0; i < n; i++)
        x[i] = xn[i];
    if (q->terms & TL_TERM_TRAJECTORY) {
        TL_SFX(rl_score_states)(q, ts, b, k + 1, x, sum_t);
    } else {
        for (ptrdiff_t i = 0; i < n; i++)
            b->G[(k + 1) * n + i] = zero;
    }
    if (q->masked && ts->ragged) {
        const TL_VM final = (TL_VM)(ts->fin[0] == TL_SFX(tl_msplat)(k + 1));
        for (ptrdiff_t i = 0; i < n; i++)
            xf[i] = TL_SFX(tl_vblend)(final, x[i], xf[i]);
    }
}

/* The terminal term at each lane's own final valid state -- Kmax in every
 * lane of a fast tile, so a vector there. Otherwise each lane's final state
 * and target are gathered into one vector, scored with the same operations,
 * and added lane by lane at that lane's step. tmp: n vectors of scratch. */
static TL_ALWAYS_INLINE void TL_SFX(rl_terminal)(const TL_SFX(rl_pass) *q, const tl_rl_const *c,
                                                  const TL_SFX(tile_sel) *ts,
                                                  const TL_SFX(rl_data) *p,
                                                  const TL_SFX(rl_buf) *b, const TL_V *x,
                                                  const TL_V *xf, TL_V *restrict tmp,
                                                  TL_VS *sum_f)
{
    const ptrdiff_t n = q->n, K = q->K, ss = q->ss;
    const double *sw = c->spec->state_weights;
    if (!(q->terms & TL_TERM_TERMINAL))
        return;
    if (!q->masked) {
        TL_V *tgt = tmp;
        if (p->tgt != NULL)
            TL_SFX(rl_transpose)(p->tgt, n, n, tgt);
        else
            for (ptrdiff_t i = 0; i < n; i++)
                tgt[i] = TL_SFX(tl_vgather)(p->rs + K * n + i, ss);
        for (ptrdiff_t i = 0; i < n; i++) {
            const double s = sw != NULL ? sw[i] : 1.0;
            TL_V e, d;
            TL_SFX(rl_rho)(q, x[i] - tgt[i], &e, &d);
            TL_SFX(tl_vacc)(sum_f, TL_SFX(tl_vsplat)(s) * e);
            b->G[K * n + i] += TL_SFX(tl_vsplat)(c->sf * s) * d;
        }
        return;
    }
    const TL_VM scored = (TL_VM)(ts->fin[0] >= TL_SFX(tl_msplat)(0)); /* non-empty lanes */
    for (ptrdiff_t i = 0; i < n; i++) {
        const double s = sw != NULL ? sw[i] : 1.0;
        TL_V tgt = TL_SFX(tl_vsplat)(0.0), e, d;
        for (int l = 0; l < TL_VL; l++)
            if (scored[l])
                tgt[l] = p->tgt != NULL ? p->tgt[l * n + i] : p->rs[l * ss + ts->K[l] * n + i];
        TL_SFX(rl_rho)(q, xf[i] - tgt, &e, &d);
        const TL_V gd = TL_SFX(tl_vsplat)(c->sf * s) * d;
        TL_SFX(tl_vacc)(sum_f, TL_SFX(tl_vkeep)(scored, TL_SFX(tl_vsplat)(s) * e));
        for (int l = 0; l < TL_VL; l++)
            if (scored[l])
                b->G[ts->K[l] * n + i][l] += gd[l];
    }
}

/* lam = lam_k = G_k + Ad^T lam_{k+1} and, for k >= 1 when a gradient is
 * wanted, that of control step k - 1, Gc_{k-1} + Bd^T lam_k, in place of
 * Gc_{k-1} (rl_backward_end stores them all), added to *gchk when given. */
static TL_ALWAYS_INLINE void TL_SFX(rl_backward_step)(const TL_SFX(rl_pass) *q,
                                                       const TL_SFX(tile_sel) *ts,
                                                       const TL_SFX(rl_buf) *b, const TL_T *gu,
                                                       const ptrdiff_t k, TL_V *restrict lam,
                                                       TL_V *restrict ln, TL_V *restrict gchk)
{
    const ptrdiff_t n = q->n, m = q->m;
    /* Lanes that ended before state k keep lam = 0 and a zero gradient by
     * a select, not by arithmetic: 0 * Ad is NaN when Ad holds inf/NaN. */
    const TL_VM live = q->hold ? (TL_VM)(TL_SFX(tl_msplat)(k) <= ts->fin[0]) : (TL_VM){0};
    for (ptrdiff_t i = 0; i < n; i++) {
        TL_V acc = b->G[k * n + i];
        for (ptrdiff_t j = 0; j < n; j++)
            acc += q->Av[j * n + i] * lam[j];
        ln[i] = acc;
    }
    for (ptrdiff_t i = 0; i < n; i++)
        lam[i] = q->hold ? TL_SFX(tl_vkeep)(live, ln[i]) : ln[i];
    if (k == 0 || (q->masked && gu == NULL)) /* a fast kernel always has gu */
        return;
    for (ptrdiff_t j = 0; j < m; j++) {
        TL_V acc = b->Gc[(k - 1) * m + j];
        for (ptrdiff_t i = 0; i < n; i++)
            acc += q->Bv[i * m + j] * lam[i];
        b->Gc[(k - 1) * m + j] = q->hold ? TL_SFX(tl_vkeep)(live, acc) : acc;
        if (gchk != NULL)
            *gchk += acc;
    }
}

/* The gradients: of the controls, of x0 from lam_0, and zeros for the steps
 * after Kmax. gchk (the fast kernels; NULL otherwise) has the sum of the
 * control gradients (rl_backward_step) and gets lam_0's: finite when every
 * gradient stored is -- unless it overflows, and then rl_range scans them --
 * so a fast chunk need not read them back. */
static TL_ALWAYS_INLINE void TL_SFX(rl_backward_end)(const TL_SFX(rl_pass) *q,
                                                      const TL_SFX(rl_data) *p,
                                                      const TL_SFX(rl_buf) *b, const TL_V *lam,
                                                      TL_V *gchk)
{
    const ptrdiff_t n = q->n, m = q->m, K = q->K, T = q->T;
    if (p->gu != NULL)
        TL_SFX(rl_untranspose)(b->Gc, K * m, p->gu, q->su);
    if (p->gx != NULL)
        for (ptrdiff_t i = 0; i < n; i++)
            for (int l = 0; l < TL_VL; l++)
                p->gx[l * n + i] = (TL_T)lam[i][l];
    if (p->gu != NULL && K < T) /* steps after every lane's span: exactly zero */
        for (int l = 0; l < TL_VL; l++)
            memset(p->gu + l * q->su + K * m, 0, (size_t)((T - K) * m) * sizeof(TL_T));
    if (gchk != NULL)
        for (ptrdiff_t i = 0; i < n; i++)
            *gchk += lam[i];
}

/* A whole forward pass: the tile's inputs staged, x = x0, then steps 0 .. K-1. */
static TL_ALWAYS_INLINE void TL_SFX(rl_forward)(const TL_SFX(rl_pass) *q, const tl_rl_const *c,
                                                 const TL_SFX(tile_sel) *ts, const TL_SFX(rl_data) *p,
                                                 const TL_SFX(rl_buf) *b, TL_V *restrict x,
                                                 TL_V *restrict xn, TL_V *restrict xf,
                                                 TL_V *restrict uk, TL_VS *sum_c, TL_VS *sum_t)
{
    TL_SFX(rl_stage)(q, p, b);
    TL_SFX(rl_forward_begin)(q, c, ts, p, b, x, xf, sum_t);
    for (ptrdiff_t k = 0; k < q->K; k++)
        TL_SFX(rl_forward_step)(q, ts, b, k, x, xn, xf, uk, sum_c, sum_t);
}

/* A whole backward pass: lam from 0 through states K .. 0, then the gradients. */
static TL_ALWAYS_INLINE void TL_SFX(rl_backward)(const TL_SFX(rl_pass) *q, const TL_SFX(tile_sel) *ts,
                                                  const TL_SFX(rl_data) *p,
                                                  const TL_SFX(rl_buf) *b, TL_V *restrict lam,
                                                  TL_V *restrict ln, TL_V *gchk)
{
    for (ptrdiff_t i = 0; i < q->n; i++)
        lam[i] = TL_SFX(tl_vsplat)(0.0);
    for (ptrdiff_t k = q->K; k >= 0; k--)
        TL_SFX(rl_backward_step)(q, ts, b, p->gu, k, lam, ln, gchk);
    TL_SFX(rl_backward_end)(q, p, b, lam, gchk);
}

/* reg: the vectors a kernel keeps: x, xn, xf, lam, ln (n each), uk (m), then
 * Ad and Bd as splats -- in registers when n and m are constants. */
#define TL_REG_VECTORS(n, m) (5 * (n) + (m) + (n) * (n) + (n) * (m))

static TL_ALWAYS_INLINE TL_SFX(rl_pass) TL_SFX(rl_pass_init)(const tl_rl_const *c,
                                                              const TL_SFX(tile_sel) *ts,
                                                              TL_V *reg, const ptrdiff_t n,
                                                              const ptrdiff_t m,
                                                              const unsigned fast)
{
    TL_SFX(rl_pass) q;
    q.T = c->T;
    q.K = fast ? c->T : ts->Kmax;
    q.n = n;
    q.m = m;
    q.su = c->T * m;
    q.ss = (c->T + 1) * n;
    q.terms = fast ? fast : c->spec->terms;
    q.pen = fast ? TL_PENALTY_MSE : c->spec->penalty;
    q.delta = c->spec->delta;
    q.masked = !fast;
    q.hold = !fast && ts->short_lanes;
    TL_V *Av = reg + 5 * n + m, *Bv = Av + n * n;
    for (ptrdiff_t i = 0; i < n * n; i++)
        Av[i] = TL_SFX(tl_vsplat)(c->sys->Ad[i]);
    for (ptrdiff_t i = 0; i < n * m; i++)
        Bv[i] = TL_SFX(tl_vsplat)(c->sys->Bd[i]);
    q.Av = Av;
    q.Bv = Bv;
    return q;
}

/* One tile, start to end: the general kernel, and the small ones on tiles
 * the fast kernels do not take. sums: the set of the tile's parity
 * (rl_range passes sums + parity; see TL_SUM_C). */
static TL_ALWAYS_INLINE void TL_SFX(rl_tile_body)(const tl_rl_const *c, const TL_SFX(tile_sel) *ts,
                                                   const TL_SFX(rl_data) *p, TL_VS *sums,
                                                   TL_V *work, TL_V *reg, const ptrdiff_t n,
                                                   const ptrdiff_t m, const unsigned fast)
{
    const TL_SFX(rl_pass) q = TL_SFX(rl_pass_init)(c, ts, reg, n, m, fast);
    const TL_SFX(rl_buf) b = TL_SFX(rl_buf_at)(work, c->T, n, m);
    TL_V *x = reg, *xn = x + n, *xf = xn + n, *lam = xf + n, *ln = lam + n, *uk = ln + n;
    TL_VS sum_c = sums[TL_SUM_C], sum_t = sums[TL_SUM_T], sum_f = sums[TL_SUM_F];

    TL_SFX(rl_forward)(&q, c, ts, p, &b, x, xn, xf, uk, &sum_c, &sum_t);
    if (!q.masked || !ts->ragged) /* every non-empty lane ends at Kmax */
        for (ptrdiff_t i = 0; i < n; i++)
            xf[i] = x[i];
    TL_SFX(rl_terminal)(&q, c, ts, p, &b, x, xf, xn, &sum_f);
    TL_SFX(rl_backward)(&q, ts, p, &b, lam, ln, NULL);
    sums[TL_SUM_C] = sum_c;
    sums[TL_SUM_T] = sum_t;
    sums[TL_SUM_F] = sum_f;
}

/* Asks for the cache lines of the inputs of the tile whose lane 0 is row b0
 * (its rows of each array lie together), TL_AHEAD tiles before the kernel
 * reads them: the loads of a batch streaming from memory then overlap the
 * arithmetic of the tiles before, where the hardware's own prefetcher leaves
 * them waiting (TL_AHEAD and when, TL_PREFETCH_BYTES: loss.c). */
static TL_ALWAYS_INLINE void TL_SFX(rl_prefetch_rows)(const TL_T *p, const ptrdiff_t len)
{
    if (p == NULL)
        return;
    const char *s = (const char *)p;
    const ptrdiff_t bytes = TL_VL * len * (ptrdiff_t)sizeof(TL_T);
    for (ptrdiff_t o = 0; o < bytes; o += TL_LINE)
        __builtin_prefetch(s + o);
    __builtin_prefetch(s + bytes - 1); /* the last line when p is not on a line start */
}

static TL_ALWAYS_INLINE void TL_SFX(rl_prefetch)(const TL_SFX(rl_data) *a, const ptrdiff_t b0,
                                                  const ptrdiff_t su, const ptrdiff_t ss,
                                                  const ptrdiff_t n)
{
    const TL_SFX(rl_data) p = TL_SFX(rl_rows)(a, b0, su, ss, n);
    TL_SFX(rl_prefetch_rows)(p.u, su);
    TL_SFX(rl_prefetch_rows)(p.ru, su);
    TL_SFX(rl_prefetch_rows)(p.rs, ss);
    TL_SFX(rl_prefetch_rows)(p.x0, n);
    TL_SFX(rl_prefetch_rows)(p.tgt, n);
}

#if !TL_PAIRED
static TL_ALWAYS_INLINE void TL_SFX(rl_sums_swap)(TL_VS *a, TL_VS *b)
{
    const TL_VS s = *a;
    *a = *b;
    *b = s;
}
#endif

/* `tiles` full tiles from row b0 of a, fast, in a software pipeline: the
 * forward pass of each tile runs in one loop with the backward pass of the
 * one before, so the two step-to-step chains (x_k forward, lam_k backward),
 * each waiting on a multiply and two adds a step, overlap instead of
 * following each other. Each tile's arithmetic and the order of the sums are
 * those of rl_tile_body, tile after tile, so the results are bit for bit the
 * same. work holds two tiles' buffers. */
static TL_ALWAYS_INLINE void TL_SFX(rl_fast_run_body)(const tl_rl_const *c, const TL_SFX(tile_sel) *ts,
                                                       const TL_SFX(rl_data) *a, ptrdiff_t b0,
                                                       ptrdiff_t tiles, TL_VS *sums, TL_V *work,
                                                       TL_V *reg, const ptrdiff_t n,
                                                       const ptrdiff_t m, const unsigned fast)
{
    const TL_SFX(rl_pass) q = TL_SFX(rl_pass_init)(c, ts, reg, n, m, fast);
    const ptrdiff_t T = c->T;
    TL_SFX(rl_buf) buf[2] = {TL_SFX(rl_buf_at)(work, T, n, m),
                             TL_SFX(rl_buf_at)(work + TL_TILE_VECTORS(T, n, m), T, n, m)};
    TL_V *x = reg, *xn = x + n, *xf = xn + n, *lam = xf + n, *ln = lam + n, *uk = ln + n;
    TL_VS sum_c = sums[TL_SUM_C], sum_t = sums[TL_SUM_T], sum_f = sums[TL_SUM_F];
#if !TL_PAIRED /* sum_*: the sums of the tile running forward; oth_*: the other parity's */
    TL_VS oth_c = sums[TL_SUM_C + 1], oth_t = sums[TL_SUM_T + 1], oth_f = sums[TL_SUM_F + 1];
#endif
    TL_V gchk; /* a TL_V in the bytes of sums[TL_SUM_CHK] */
    memcpy(&gchk, &sums[TL_SUM_CHK], sizeof gchk);

    TL_SFX(rl_data) prev = TL_SFX(rl_rows)(a, b0, q.su, q.ss, n);
    TL_SFX(rl_forward)(&q, c, ts, &prev, &buf[0], x, xn, xf, uk, &sum_c, &sum_t);
    TL_SFX(rl_terminal)(&q, c, ts, &prev, &buf[0], x, x, xn, &sum_f);
    for (ptrdiff_t t = 1; t < tiles; t++) {
#if !TL_PAIRED /* tile t's parity */
        TL_SFX(rl_sums_swap)(&sum_c, &oth_c);
        TL_SFX(rl_sums_swap)(&sum_t, &oth_t);
        TL_SFX(rl_sums_swap)(&sum_f, &oth_f);
#endif
        const TL_SFX(rl_buf) *bp = &buf[(t - 1) & 1], *bt = &buf[t & 1];
        const TL_SFX(rl_data) cur = TL_SFX(rl_rows)(a, b0 + t * TL_VL, q.su, q.ss, n);
        if (c->prefetch && b0 + (t + TL_AHEAD + 1) * TL_VL <= c->B)
            TL_SFX(rl_prefetch)(a, b0 + (t + TL_AHEAD) * TL_VL, q.su, q.ss, n);
        TL_SFX(rl_stage)(&q, &cur, bt);
        TL_SFX(rl_forward_begin)(&q, c, ts, &cur, bt, x, xf, &sum_t);
        for (ptrdiff_t i = 0; i < n; i++)
            lam[i] = TL_SFX(tl_vsplat)(0.0);
        for (ptrdiff_t k = 0; k < T; k++) {
            TL_SFX(rl_forward_step)(&q, ts, bt, k, x, xn, xf, uk, &sum_c, &sum_t);
            TL_SFX(rl_backward_step)(&q, ts, bp, prev.gu, T - k, lam, ln, &gchk);
        }
        TL_SFX(rl_terminal)(&q, c, ts, &cur, bt, x, x, xn, &sum_f);
        TL_SFX(rl_backward_step)(&q, ts, bp, prev.gu, 0, lam, ln, &gchk);
        TL_SFX(rl_backward_end)(&q, &prev, bp, lam, &gchk);
        prev = cur;
    }
    TL_SFX(rl_backward)(&q, ts, &prev, &buf[(tiles - 1) & 1], lam, ln, &gchk);
#if TL_PAIRED
    sums[TL_SUM_C] = sum_c;
    sums[TL_SUM_T] = sum_t;
    sums[TL_SUM_F] = sum_f;
#else
    const int last = (int)((tiles - 1) & 1); /* the parity of the last tile */
    sums[TL_SUM_C + last] = sum_c;
    sums[TL_SUM_T + last] = sum_t;
    sums[TL_SUM_F + last] = sum_f;
    sums[TL_SUM_C + 1 - last] = oth_c;
    sums[TL_SUM_T + 1 - last] = oth_t;
    sums[TL_SUM_F + 1 - last] = oth_f;
#endif
    memcpy(&sums[TL_SUM_CHK], &gchk, sizeof gchk);
}
