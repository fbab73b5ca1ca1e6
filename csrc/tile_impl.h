/*
 * tile_impl.h -- forward rollout, penalties and adjoint of the TL_LANES
 * sequences of one tile, lane l of every tl_vd being sequence b0 + l.
 * Included by loss_impl.h once per storage type. It is always inlined into
 * its callers: one passes the call's n and m (the general kernel), the
 * others constants for the small systems worth a kernel of their own, so
 * the compiler unrolls over states and inputs and keeps them in registers.
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
#define TL_GATHER(ptr, stride, off)                                                           \
    ((tl_vd){(double)(ptr)[off], (double)(ptr)[(stride) + (off)],                             \
             (double)(ptr)[2 * (stride) + (off)], (double)(ptr)[3 * (stride) + (off)]})

/* Four consecutive elements of a row as doubles. */
static TL_ALWAYS_INLINE tl_vd TL_SFX(rl_load4)(const TL_T *p)
{
#if TL_IS_F32
    typedef float four __attribute__((vector_size(4 * sizeof(float)), aligned(4)));
    four f;
    memcpy(&f, p, sizeof f);
    return __builtin_convertvector(f, tl_vd);
#else
    tl_vd d;
    memcpy(&d, p, sizeof d);
    return d;
#endif
}

/* dst[i] = (src[i], src[stride + i], src[2 stride + i], src[3 stride + i]) for
 * i < len: the tile's four rows of an input, one vector a column, so the
 * loops read each with one load from one place instead of four. Four columns
 * at a time by shuffles (a 4 x 4 transpose); a last block overlapping the
 * one before covers the rest. */
static TL_ALWAYS_INLINE void TL_SFX(rl_transpose4)(const TL_T *restrict src, const ptrdiff_t stride,
                                                    tl_vd *restrict dst)
{
    const tl_vd r0 = TL_SFX(rl_load4)(src), r1 = TL_SFX(rl_load4)(src + stride);
    const tl_vd r2 = TL_SFX(rl_load4)(src + 2 * stride), r3 = TL_SFX(rl_load4)(src + 3 * stride);
    const tl_vd a = TL_VSHUFFLE(r0, r1, 0, 4, 2, 6), b = TL_VSHUFFLE(r0, r1, 1, 5, 3, 7);
    const tl_vd c = TL_VSHUFFLE(r2, r3, 0, 4, 2, 6), d = TL_VSHUFFLE(r2, r3, 1, 5, 3, 7);
    dst[0] = TL_VSHUFFLE(a, c, 0, 1, 4, 5);
    dst[1] = TL_VSHUFFLE(b, d, 0, 1, 4, 5);
    dst[2] = TL_VSHUFFLE(a, c, 2, 3, 6, 7);
    dst[3] = TL_VSHUFFLE(b, d, 2, 3, 6, 7);
}

static TL_ALWAYS_INLINE void TL_SFX(rl_transpose)(const TL_T *restrict src, const ptrdiff_t stride,
                                                   const ptrdiff_t len, tl_vd *restrict dst)
{
    if (len < TL_LANES) {
        for (ptrdiff_t i = 0; i < len; i++)
            dst[i] = TL_GATHER(src, stride, i);
        return;
    }
    for (ptrdiff_t i = 0; i + TL_LANES <= len; i += TL_LANES)
        TL_SFX(rl_transpose4)(src + i, stride, dst + i);
    if (len % TL_LANES != 0)
        TL_SFX(rl_transpose4)(src + len - TL_LANES, stride, dst + len - TL_LANES);
}

/* The trajectory term at the states x of step k: adds to *sum and stores G_k.
 * masked: only the lanes that score state k (ts->vs); else all of them. */
static TL_ALWAYS_INLINE void TL_SFX(rl_score_states)(const tl_tile_sel *ts, const tl_vd *restrict rs,
                                                      const ptrdiff_t k,
                                                      const tl_vd *x, tl_vd *restrict Gk,
                                                      tl_vd *sum, const ptrdiff_t n,
                                                      const tl_penalty pen, const double delta,
                                                      const int masked)
{
    const tl_vd zero = tl_vsplat(0.0);
    const tl_vm on = (tl_vm)(ts->vs[k] != zero);
    tl_vd e, d;
    for (ptrdiff_t i = 0; i < n; i++) {
        tl_vrho(pen, delta, x[i] - rs[k * n + i], &e, &d);
        const tl_vd ve = ts->vs_w[k * n + i] * e, gd = ts->gs_w[k * n + i] * d;
        *sum += masked ? tl_vkeep(on, ve) : ve;
        Gk[i] = masked ? tl_vkeep(on, gd) : gd;
    }
}

static TL_ALWAYS_INLINE void TL_SFX(rl_tile_body)(const tl_rl_const *c, const tl_tile_sel *ts,
                                                   const TL_SFX(rl_data) *p,
                                                   tl_vd *restrict sums, tl_vd *restrict work,
                                                   tl_vd *restrict reg, const ptrdiff_t n,
                                                   const ptrdiff_t m, const unsigned fast)
{
    const tl_loss_spec *spec = c->spec;
    const ptrdiff_t T = c->T, K = ts->Kmax, su = T * m, ss = (T + 1) * n;
    const double *restrict Ad = c->sys->Ad, *restrict Bd = c->sys->Bd;
    const unsigned terms = fast ? fast : spec->terms;
    const tl_penalty pen = fast ? TL_PENALTY_MSE : spec->penalty;
    const double delta = spec->delta;
    TL_T *restrict gu = p->gu;
    /* a local, so that stores through G and gu need not reload it */
    const tl_vd *restrict vc_w = ts->vc_w, *restrict gc_w = ts->gc_w;
    const int shift = c->shift, masked = !fast;
    tl_vd *restrict G = work;                 /* (T+1) x n */
    tl_vd *restrict Gc = G + (T + 1) * n;     /* T x m */
    tl_vd *restrict u = Gc + T * m, *restrict ru = u + T * m; /* T x m: the inputs, */
    tl_vd *restrict rs = ru + T * m;                          /* (T+1) x n: transposed */
    tl_vd *restrict x = reg, *restrict xn = reg + n, *restrict xf = reg + 2 * n;
    tl_vd *restrict uk = reg + 3 * n;         /* m */
    tl_vd *restrict Av = uk + m, *restrict Bv = Av + n * n; /* Ad, Bd as splats: kept in
                                                                registers by the small kernels */
    const tl_vd zero = tl_vsplat(0.0);
    tl_vd sum_c = sums[0], sum_t = sums[1], e, d;

    for (ptrdiff_t i = 0; i < n * n; i++)
        Av[i] = tl_vsplat(Ad[i]);
    for (ptrdiff_t i = 0; i < n * m; i++)
        Bv[i] = tl_vsplat(Bd[i]);

    TL_SFX(rl_transpose)(p->u, su, K * m, u);
    if (terms & TL_TERM_CONTROL)
        TL_SFX(rl_transpose)(p->ru, su, K * m, ru);
    if (terms & TL_TERM_TRAJECTORY)
        TL_SFX(rl_transpose)(p->rs, ss, (K + 1) * n, rs);

    /* forward: states 0 .. Kmax, scoring each as it is made */
    for (ptrdiff_t i = 0; i < n; i++)
        x[i] = xf[i] = TL_GATHER(p->x0, n, i);
    if ((terms & TL_TERM_TRAJECTORY) && (masked || shift)) {
        TL_SFX(rl_score_states)(ts, rs, 0, x, G, &sum_t, n, pen, delta, masked);
    } else {
        for (ptrdiff_t i = 0; i < n; i++)
            G[i] = zero;
        /* An unscored state 0 is never read by the fast kernel; for
         * check_finite (see rl_range) it still reaches the sum, as r - r:
         * +0 for a finite r, NaN for inf or NaN. */
        if (fast && (terms & TL_TERM_TRAJECTORY) && spec->check_finite)
            for (ptrdiff_t i = 0; i < n; i++)
                sum_t += rs[i] - rs[i];
    }
    for (ptrdiff_t k = 0; k < K; k++) {
        for (ptrdiff_t j = 0; j < m; j++)
            uk[j] = u[k * m + j];
        if (terms & TL_TERM_CONTROL) {
            const tl_vm on = (tl_vm)(ts->vc[k] != zero);
            for (ptrdiff_t j = 0; j < m; j++) {
                tl_vrho(pen, delta, uk[j] - ru[k * m + j], &e, &d);
                const tl_vd ve = vc_w[k * m + j] * e, gd = gc_w[k * m + j] * d;
                sum_c += masked ? tl_vkeep(on, ve) : ve;
                Gc[k * m + j] = masked ? tl_vkeep(on, gd) : gd;
            }
        } else {
            for (ptrdiff_t j = 0; j < m; j++)
                Gc[k * m + j] = zero;
        }
        /* the controls first: they are ready before x_k, so only the state
         * products and their sums stand on the step-to-step chain */
        for (ptrdiff_t i = 0; i < n; i++) {
            tl_vd acc = Bv[i * m] * uk[0];
            for (ptrdiff_t j = 1; j < m; j++)
                acc += Bv[i * m + j] * uk[j];
            for (ptrdiff_t j = 0; j < n; j++)
                acc += Av[i * n + j] * x[j];
            xn[i] = acc;
        }
        for (ptrdiff_t i = 0; i < n; i++)
            x[i] = xn[i];
        if (terms & TL_TERM_TRAJECTORY) {
            TL_SFX(rl_score_states)(ts, rs, k + 1, x, G + (k + 1) * n, &sum_t, n, pen, delta,
                                    masked);
        } else {
            for (ptrdiff_t i = 0; i < n; i++)
                G[(k + 1) * n + i] = zero;
        }
        if (masked && ts->ragged) {
            const tl_vm final = (tl_vm)(ts->fin[0] == tl_vsplat((double)(k + 1)));
            for (ptrdiff_t i = 0; i < n; i++)
                xf[i] = tl_vblend(final, x[i], xf[i]);
        }
    }
    sums[0] = sum_c;
    sums[1] = sum_t;
    if (fast || !ts->ragged) /* every non-empty lane ends at Kmax */
        for (ptrdiff_t i = 0; i < n; i++)
            xf[i] = x[i];

    /* terminal: at each lane's own final valid state -- Kmax in every lane of a
     * fast tile, so a vector there; lane by lane otherwise */
    if ((terms & TL_TERM_TERMINAL) && fast) {
        for (ptrdiff_t i = 0; i < n; i++) {
            const double s = spec->state_weights != NULL ? spec->state_weights[i] : 1.0;
            const tl_vd tgt = p->tgt != NULL ? TL_GATHER(p->tgt, n, i) : TL_GATHER(p->rs, ss, K * n + i);
            tl_vrho(pen, delta, x[i] - tgt, &e, &d);
            sums[2] += s * e;
            G[K * n + i] += c->sf * s * d;
        }
    } else if (terms & TL_TERM_TERMINAL)
        for (int l = 0; l < L; l++) {
            if (ts->fin[0][l] < 0.0)
                continue;
            const ptrdiff_t kl = ts->K[l];
            for (ptrdiff_t i = 0; i < n; i++) {
                const double s = spec->state_weights != NULL ? spec->state_weights[i] : 1.0;
                const double tgt = p->tgt != NULL ? (double)p->tgt[l * n + i]
                                                  : (double)p->rs[l * ss + kl * n + i];
                double dr;
                sums[2][l] += s * rho(pen, delta, xf[i][l] - tgt, &dr);
                G[kl * n + i][l] += c->sf * s * dr;
            }
        }

    /* backward: lam_k for k = Kmax .. 0, and with lam_k (k >= 1) the gradient
     * of control step k - 1 */
    tl_vd *restrict lam = x;
    for (ptrdiff_t i = 0; i < n; i++)
        lam[i] = zero;
    /* Lanes that ended before state k keep lam = 0 and a zero gradient by
     * a select, not by arithmetic: 0 * Ad is NaN when Ad holds inf/NaN. */
    const int hold = masked && ts->short_lanes;
    for (ptrdiff_t k = K; k >= 0; k--) {
        const tl_vm live = hold ? (tl_vm)(tl_vsplat((double)k) <= ts->fin[0]) : (tl_vm)(zero == zero);
        for (ptrdiff_t i = 0; i < n; i++) {
            tl_vd acc = G[k * n + i];
            for (ptrdiff_t j = 0; j < n; j++)
                acc += Av[j * n + i] * lam[j];
            xn[i] = acc;
        }
        for (ptrdiff_t i = 0; i < n; i++)
            lam[i] = hold ? tl_vkeep(live, xn[i]) : xn[i];
        if (k == 0)
            break;
        if (!fast && gu == NULL) /* (the fast kernels always have gu) */
            continue;
        for (ptrdiff_t j = 0; j < m; j++) {
            tl_vd acc = Gc[(k - 1) * m + j];
            for (ptrdiff_t i = 0; i < n; i++)
                acc += Bv[i * m + j] * lam[i];
            acc = hold ? tl_vkeep(live, acc) : acc;
            for (int l = 0; l < L; l++)
                gu[l * su + (k - 1) * m + j] = (TL_T)acc[l];
        }
    }
    if (p->gx != NULL)
        for (ptrdiff_t i = 0; i < n; i++)
            for (int l = 0; l < L; l++)
                p->gx[l * n + i] = (TL_T)lam[i][l];
    if (p->gu != NULL && K < T) /* steps after every lane's span: exactly zero */
        for (int l = 0; l < L; l++)
            memset(p->gu + l * su + K * m, 0, (size_t)((T - K) * m) * sizeof(TL_T));
}
#undef TL_GATHER
