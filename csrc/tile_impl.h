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
 * valid (no lengths or mask) and the squared error: no per-lane selects, and
 * rho inlined. Its arithmetic is the general path's, so both round alike.
 */
#define TL_GATHER(ptr, stride, off)                                                           \
    ((tl_vd){(double)(ptr)[off], (double)(ptr)[(stride) + (off)],                             \
             (double)(ptr)[2 * (stride) + (off)], (double)(ptr)[3 * (stride) + (off)]})

static TL_ALWAYS_INLINE void TL_SFX(rl_tile_body)(const tl_rl_const *c, const tl_tile_sel *ts,
                                                   const TL_SFX(rl_data) *p,
                                                   tl_vd *restrict sums, tl_vd *restrict work,
                                                   tl_vd *restrict reg, const ptrdiff_t n,
                                                   const ptrdiff_t m, const int fast)
{
    const tl_loss_spec *spec = c->spec;
    const ptrdiff_t T = c->T, K = ts->Kmax, su = T * m, ss = (T + 1) * n;
    const double *restrict Ad = c->sys->Ad, *restrict Bd = c->sys->Bd;
    const unsigned terms = spec->terms;
    const tl_penalty pen = fast ? TL_PENALTY_MSE : spec->penalty;
    const double delta = spec->delta;
    const TL_T *restrict u = p->u, *restrict ru = p->ru, *restrict rs = p->rs;
    TL_T *restrict gu = p->gu;
    /* locals, so that stores through G and gu need not reload them */
    const tl_vd *restrict vs_w = ts->vs_w, *restrict gs_w = ts->gs_w;
    const tl_vd *restrict vc_w = ts->vc_w, *restrict gc_w = ts->gc_w;
    const tl_vd *restrict vs = ts->vs, *restrict vc = ts->vc;
    const int shift = c->shift;
    tl_vd *restrict G = work;                 /* (T+1) x n */
    tl_vd *restrict Gc = G + (T + 1) * n;     /* T x m */
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

    /* forward: states 0 .. Kmax, scoring each as it is made */
    for (ptrdiff_t i = 0; i < n; i++)
        x[i] = xf[i] = TL_GATHER(p->x0, n, i);
    for (ptrdiff_t k = 0;; k++) {
        tl_vd *restrict Gk = G + k * n;
        if ((terms & TL_TERM_TRAJECTORY) && (!fast || k > 0 || shift)) {
            /* (fast: every state but an unscored state 0 is valid in every lane) */
            const tl_vm on = (tl_vm)(vs[k] != zero);
            for (ptrdiff_t i = 0; i < n; i++) {
                tl_vrho(pen, delta, x[i] - TL_GATHER(rs, ss, k * n + i), &e, &d);
                const tl_vd ve = vs_w[k * n + i] * e, gd = gs_w[k * n + i] * d;
                sum_t += fast ? ve : tl_vkeep(on, ve);
                Gk[i] = fast ? gd : tl_vkeep(on, gd);
            }
        } else {
            for (ptrdiff_t i = 0; i < n; i++)
                Gk[i] = zero;
        }
        if (!fast && ts->ragged) {
            const tl_vm final = (tl_vm)(ts->fin[0] == tl_vsplat((double)k));
            for (ptrdiff_t i = 0; i < n; i++)
                xf[i] = tl_vblend(final, x[i], xf[i]);
        }
        if (k == K)
            break;

        for (ptrdiff_t j = 0; j < m; j++)
            uk[j] = TL_GATHER(u, su, k * m + j);
        if (terms & TL_TERM_CONTROL) {
            const tl_vm on = (tl_vm)(vc[k] != zero);
            for (ptrdiff_t j = 0; j < m; j++) {
                tl_vrho(pen, delta, uk[j] - TL_GATHER(ru, su, k * m + j), &e, &d);
                const tl_vd ve = vc_w[k * m + j] * e, gd = gc_w[k * m + j] * d;
                sum_c += fast ? ve : tl_vkeep(on, ve);
                Gc[k * m + j] = fast ? gd : tl_vkeep(on, gd);
            }
        } else {
            for (ptrdiff_t j = 0; j < m; j++)
                Gc[k * m + j] = zero;
        }
        for (ptrdiff_t i = 0; i < n; i++) {
            tl_vd acc = zero;
            for (ptrdiff_t j = 0; j < n; j++)
                acc += Av[i * n + j] * x[j];
            for (ptrdiff_t j = 0; j < m; j++)
                acc += Bv[i * m + j] * uk[j];
            xn[i] = acc;
        }
        for (ptrdiff_t i = 0; i < n; i++)
            x[i] = xn[i];
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
            const tl_vd tgt = p->tgt != NULL ? TL_GATHER(p->tgt, n, i) : TL_GATHER(rs, ss, K * n + i);
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
                                                  : (double)rs[l * ss + kl * n + i];
                double dr;
                sums[2][l] += s * rho(pen, delta, xf[i][l] - tgt, &dr);
                G[kl * n + i][l] += c->sf * s * dr;
            }
        }

    /* backward */
    tl_vd *restrict lam = x;
    for (ptrdiff_t i = 0; i < n; i++)
        lam[i] = zero;
    for (ptrdiff_t k = K; k >= 0; k--) {
        /* Lanes that ended before state k keep lam = 0 and a zero gradient by
         * a select, not by arithmetic: 0 * Ad is NaN when Ad holds inf/NaN. */
        const int hold = !fast && ts->short_lanes;
        const tl_vm live = hold ? (tl_vm)(tl_vsplat((double)k) <= ts->fin[0]) : (tl_vm)(zero == zero);
        for (ptrdiff_t i = 0; i < n; i++) {
            tl_vd acc = G[k * n + i];
            for (ptrdiff_t j = 0; j < n; j++)
                acc += Av[j * n + i] * lam[j];
            xn[i] = acc;
        }
        for (ptrdiff_t i = 0; i < n; i++)
            lam[i] = hold ? tl_vkeep(live, xn[i]) : xn[i];
        if (k == 0 || gu == NULL)
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
