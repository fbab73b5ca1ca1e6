/*
 * rollout_impl.h -- the rollout kernels, written once and included by
 * rollout.c for each scalar type with
 *   TL_T        the storage type of x0, controls, states and gradients;
 *   TL_SFX(f)   the name f with its dtype suffix (f##_f32, f##_f64).
 * The state (or adjoint) of one sample is carried in double scratch space,
 * so float32 kernels only round when they store.
 */

/* xn = Ad x + Bd u for one sample. */
static void TL_SFX(step)(ptrdiff_t n, ptrdiff_t m, const double *Ad, const double *Bd,
                         const double *x, const TL_T *u, double *xn)
{
    for (ptrdiff_t i = 0; i < n; i++) {
        const double *Ai = Ad + i * n;
        const double *Bi = Bd + i * m;
        double acc = 0.0;
        for (ptrdiff_t j = 0; j < n; j++)
            acc += Ai[j] * x[j];
        for (ptrdiff_t j = 0; j < m; j++)
            acc += Bi[j] * (double)u[j];
        xn[i] = acc;
    }
}

tl_status TL_SFX(tl_rollout)(const tl_system *sys, ptrdiff_t batch, ptrdiff_t steps,
                             const TL_T *x0, const TL_T *controls, TL_T *states, void *work)
{
    tl_status status = check_call(sys, batch, steps, work);
    if (status != TL_OK)
        return status;
    if (batch > 0 && (x0 == NULL || (controls == NULL && steps > 0) || states == NULL))
        return TL_ERR_VALUE;

    const ptrdiff_t n = sys->n, m = sys->m;
    double *x = (double *)work, *xn = x + n;
    for (ptrdiff_t b = 0; b < batch; b++) {
        const TL_T *u = controls + b * steps * m;
        TL_T *s = states + b * (steps + 1) * n;
        for (ptrdiff_t i = 0; i < n; i++) {
            x[i] = (double)x0[b * n + i];
            s[i] = x0[b * n + i];
        }
        for (ptrdiff_t k = 0; k < steps; k++) {
            TL_SFX(step)(n, m, sys->Ad, sys->Bd, x, u + k * m, xn);
            double *t = x;
            x = xn;
            xn = t;
            for (ptrdiff_t i = 0; i < n; i++)
                s[(k + 1) * n + i] = (TL_T)x[i];
        }
    }
    return TL_OK;
}

tl_status TL_SFX(tl_rollout_vjp)(const tl_system *sys, ptrdiff_t batch, ptrdiff_t steps,
                                 const TL_T *grad_states, TL_T *grad_controls,
                                 TL_T *grad_x0, void *work)
{
    tl_status status = check_call(sys, batch, steps, work);
    if (status != TL_OK)
        return status;
    if (batch > 0 && grad_states == NULL)
        return TL_ERR_VALUE;

    const ptrdiff_t n = sys->n, m = sys->m;
    const double *Ad = sys->Ad, *Bd = sys->Bd;
    double *lam = (double *)work, *prev = lam + n;
    for (ptrdiff_t b = 0; b < batch; b++) {
        const TL_T *G = grad_states + b * (steps + 1) * n;
        for (ptrdiff_t i = 0; i < n; i++)
            lam[i] = (double)G[steps * n + i];
        for (ptrdiff_t k = steps - 1; k >= 0; k--) {
            if (grad_controls != NULL) {
                TL_T *gu = grad_controls + (b * steps + k) * m;
                for (ptrdiff_t j = 0; j < m; j++) {
                    double acc = 0.0;
                    for (ptrdiff_t i = 0; i < n; i++)
                        acc += Bd[i * m + j] * lam[i];
                    gu[j] = (TL_T)acc;
                }
            }
            /* prev = G_k + Ad^T lam */
            for (ptrdiff_t i = 0; i < n; i++)
                prev[i] = (double)G[k * n + i];
            for (ptrdiff_t j = 0; j < n; j++) {
                const double lj = lam[j];
                const double *Aj = Ad + j * n;
                for (ptrdiff_t i = 0; i < n; i++)
                    prev[i] += Aj[i] * lj;
            }
            double *t = lam;
            lam = prev;
            prev = t;
        }
        if (grad_x0 != NULL)
            for (ptrdiff_t i = 0; i < n; i++)
                grad_x0[b * n + i] = (TL_T)lam[i];
    }
    return TL_OK;
}

tl_status TL_SFX(tl_final_state_error)(const tl_system *sys, ptrdiff_t batch, ptrdiff_t steps,
                                       const int64_t *lengths, const TL_T *controls,
                                       const TL_T *x0, const TL_T *xf, TL_T *error, void *work)
{
    tl_status status = check_call(sys, batch, steps, work);
    if (status != TL_OK)
        return status;
    if (batch > 0 && (x0 == NULL || xf == NULL || error == NULL || (controls == NULL && steps > 0)))
        return TL_ERR_VALUE;
    const ptrdiff_t n = sys->n, m = sys->m;
    double *x = (double *)work, *xn = x + n;
    for (ptrdiff_t b = 0; b < batch; b++) {
        const ptrdiff_t last = lengths != NULL ? (ptrdiff_t)lengths[b] : steps;
        if (last < 0 || last > steps)
            return TL_ERR_VALUE;
        for (ptrdiff_t i = 0; i < n; i++)
            x[i] = (double)x0[b * n + i];
        for (ptrdiff_t k = 0; k < last; k++) {
            TL_SFX(step)(n, m, sys->Ad, sys->Bd, x, controls + (b * steps + k) * m, xn);
            double *t = x;
            x = xn;
            xn = t;
        }
        double sq = 0.0;
        for (ptrdiff_t i = 0; i < n; i++) {
            const double r = x[i] - (double)xf[b * n + i];
            sq += r * r;
        }
        error[b] = (TL_T)sqrt(sq);
    }
    return TL_OK;
}
