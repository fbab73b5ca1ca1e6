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
 */
#define TL_GATHER(ptr, stride, off)                                                           \
    ((tl_vd){(double)(ptr)[off], (double)(ptr)[(stride) + (off)],                             \
             (double)(ptr)[2 * (stride) + (off)], (double)(ptr)[3 * (stride) + (off)]})

static TL_ALWAYS_INLINE void TL_SFX(rl_tile_body)(const tl_rl_const *c, const tl_tile_sel *ts,
                                                   const TL_SFX(rl_data) *p,
                                                   tl_vd *restrict sums, tl_vd *restrict work,
                                                   tl_vd *restrict reg, const ptrdiff_t n,
                                                   const ptrdiff_t m)
{
    const tl_loss_spec *spec = c->spec;
    const ptrdiff_t T = c->T, K = ts->Kmax, su = T * m, ss = (T + 1) * n;
    const double *restrict Ad = c->sys->Ad, *restrict Bd = c->sys->Bd;
    const double *fw = spec->feature_weights, *sw = spec->state_weights;
    const unsigned terms = spec->terms;
    const tl_penalty pen = spec->penalty;
    const double delta = spec->delta;
    const TL_T *restrict u = p->u, *restrict ru = p->ru, *restrict rs = p->rs;
    tl_vd *restrict G = work;                 /* (T+1) x n */
    tl_vd *restrict Gc = G + (T + 1) * n;     /* T x m */
    tl_vd *restrict x = reg, *restrict xn = reg + n, *restrict xf = reg + 2 * n;
    tl_vd *restrict uk = reg + 3 * n;         /* m */
    const tl_vd zero = tl_vsplat(0.0);
    tl_vd sum_c = sums[0], sum_t = sums[1], e, d;

    /* forward: states 0 .. Kmax, scoring each as it is made */
    for (ptrdiff_t i = 0; i < n; i++)
        x[i] = xf[i] = TL_GATHER(p->x0, n, i);
    for (ptrdiff_t k = 0;; k++) {
        tl_vd *restrict Gk = G + k * n;
        if (terms & TL_TERM_TRAJECTORY) {
            const tl_vm on = (tl_vm)(ts->vs[k] != zero);
            for (ptrdiff_t i = 0; i < n; i++) {
                const tl_vd ws = ts->ws[k] * (sw != NULL ? sw[i] : 1.0);
                tl_vrho(pen, delta, x[i] - TL_GATHER(rs, ss, k * n + i), &e, &d);
                sum_t += tl_vkeep(on, ws * e);
                Gk[i] = tl_vkeep(on, c->st * ws * d);
            }
        } else {
            for (ptrdiff_t i = 0; i < n; i++)
                Gk[i] = zero;
        }
        if (ts->ragged) {
            const tl_vm final = (tl_vm)(ts->fin[0] == tl_vsplat((double)k));
            for (ptrdiff_t i = 0; i < n; i++)
                xf[i] = tl_vblend(final, x[i], xf[i]);
        }
        if (k == K)
            break;

        for (ptrdiff_t j = 0; j < m; j++)
            uk[j] = TL_GATHER(u, su, k * m + j);
        if (terms & TL_TERM_CONTROL) {
            const tl_vm on = (tl_vm)(ts->vc[k] != zero);
            for (ptrdiff_t j = 0; j < m; j++) {
                const tl_vd wf = ts->wc[k] * (fw != NULL ? fw[j] : 1.0);
                tl_vrho(pen, delta, uk[j] - TL_GATHER(ru, su, k * m + j), &e, &d);
                sum_c += tl_vkeep(on, wf * e);
                Gc[k * m + j] = tl_vkeep(on, c->sc * wf * d);
            }
        } else {
            for (ptrdiff_t j = 0; j < m; j++)
                Gc[k * m + j] = zero;
        }
        for (ptrdiff_t i = 0; i < n; i++) {
            tl_vd acc = zero;
            for (ptrdiff_t j = 0; j < n; j++)
                acc += Ad[i * n + j] * x[j];
            for (ptrdiff_t j = 0; j < m; j++)
                acc += Bd[i * m + j] * uk[j];
            xn[i] = acc;
        }
        for (ptrdiff_t i = 0; i < n; i++)
            x[i] = xn[i];
    }
    sums[0] = sum_c;
    sums[1] = sum_t;
    if (!ts->ragged) /* every non-empty lane ends at Kmax */
        for (ptrdiff_t i = 0; i < n; i++)
            xf[i] = x[i];

    /* terminal: lane by lane, at its own final valid state */
    if (terms & TL_TERM_TERMINAL)
        for (int l = 0; l < L; l++) {
            if (ts->fin[0][l] < 0.0)
                continue;
            const ptrdiff_t kl = ts->K[l];
            for (ptrdiff_t i = 0; i < n; i++) {
                const double s = sw != NULL ? sw[i] : 1.0;
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
        for (ptrdiff_t i = 0; i < n; i++) {
            tl_vd acc = G[k * n + i];
            for (ptrdiff_t j = 0; j < n; j++)
                acc += Ad[j * n + i] * lam[j];
            xn[i] = acc;
        }
        for (ptrdiff_t i = 0; i < n; i++)
            lam[i] = xn[i];
        if (k == 0 || p->gu == NULL)
            continue;
        for (ptrdiff_t j = 0; j < m; j++) {
            tl_vd acc = Gc[(k - 1) * m + j];
            for (ptrdiff_t i = 0; i < n; i++)
                acc += Bd[i * m + j] * lam[i];
            for (int l = 0; l < L; l++)
                p->gu[l * su + (k - 1) * m + j] = (TL_T)acc[l];
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
