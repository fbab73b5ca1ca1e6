/*
 * loss_impl.h -- the loss kernels, written once and included by loss.c for
 * each storage type (TL_T, TL_SFX as in rollout_impl.h). Every sum, state
 * and gradient is carried in double and rounded once when stored.
 */

/*
 * One step of one term: returns e = mean_d s_d rho(a_d - ref_d) and adds
 * scale * s_d rho'(a_d - ref_d) / dim to g[d] (g may be NULL).
 */
static double TL_SFX(penalty_step)(const tl_loss_spec *spec, ptrdiff_t dim, const double *s,
                                   const double *a, const TL_T *ref, double scale, double *g)
{
    double e = 0.0;
    for (ptrdiff_t d = 0; d < dim; d++) {
        double drho;
        const double sd = s != NULL ? s[d] : 1.0;
        e += sd * rho(spec->penalty, spec->delta, a[d] - (double)ref[d], &drho);
        if (g != NULL)
            g[d] += scale * sd * drho / (double)dim;
    }
    return e / (double)dim;
}

static void TL_SFX(widen)(ptrdiff_t count, const TL_T *src, double *dst)
{
    for (ptrdiff_t i = 0; i < count; i++)
        dst[i] = (double)src[i];
}

static void TL_SFX(narrow)(ptrdiff_t count, const double *src, TL_T *dst)
{
    for (ptrdiff_t i = 0; i < count; i++)
        dst[i] = (TL_T)src[i];
}

tl_status TL_SFX(tl_control_loss)(const tl_loss_spec *spec, ptrdiff_t features,
                                  const TL_T *pred, const TL_T *target,
                                  tl_loss_value *value, TL_T *grad, void *work)
{
    const tl_selection *sel = &spec->sel;
    tl_status status = check_spec(spec);
    if (status != TL_OK)
        return status;
    if (features < 1 || value == NULL || work == NULL)
        return features < 1 ? TL_ERR_SHAPE : TL_ERR_VALUE;
    const ptrdiff_t B = sel->batch, T = sel->steps, D = features;
    double *powers = (double *)work, *w = powers + T + 2, *a = w + T, *g = a + D;

    const double valid = count_valid(sel, 0).control;
    if (valid == 0.0)
        return TL_ERR_EMPTY;
    tl_sel_powers(sel, powers);
    double sum = 0.0;
    for (ptrdiff_t b = 0; b < B; b++) {
        tl_sel_weights(sel, b, 0, powers, w);
        for (ptrdiff_t t = 0; t < T; t++) {
            const ptrdiff_t row = (b * T + t) * D;
            memset(g, 0, (size_t)D * sizeof(double));
            if (tl_sel_valid(sel, b, t)) {
                TL_SFX(widen)(D, pred + row, a);
                sum += w[t] * TL_SFX(penalty_step)(spec, D, spec->feature_weights, a,
                                                   target + row, w[t] / valid,
                                                   grad != NULL ? g : NULL);
            }
            if (grad != NULL)
                TL_SFX(narrow)(D, g, grad + row);
        }
    }
    value->control = sum / valid;
    value->total = value->control;
    value->trajectory = value->terminal = 0.0;
    return TL_OK;
}

tl_status TL_SFX(tl_rollout_loss)(const tl_system *sys, const tl_loss_spec *spec,
                                  const TL_T *controls, const TL_T *x0,
                                  const TL_T *ref_controls, const TL_T *ref_states,
                                  const TL_T *target, tl_loss_value *value,
                                  TL_T *grad_controls, TL_T *grad_x0, void *work)
{
    const tl_selection *sel = &spec->sel;
    tl_status status = check_rollout_call(sys, spec, controls, x0, ref_controls, ref_states,
                                          target, value, work);
    if (status != TL_OK)
        return status;
    const ptrdiff_t B = sel->batch, T = sel->steps, n = sys->n, m = sys->m;
    const double *Ad = sys->Ad, *Bd = sys->Bd;
    const unsigned terms = spec->terms;
    const int shift = (terms & TL_TERM_TRAJECTORY) && spec->include_initial ? 1 : 0;
    double *powers = (double *)work, *wc = powers + T + 2, *wt = wc + T;
    double *X = wt + T + 1, *lam = X + (T + 1) * n, *G = lam + n, *g = G + n, *a = g + m;

    const tl_valid_counts N = count_valid(sel, shift);
    if (N.control == 0.0)
        return TL_ERR_EMPTY;
    /* gradient scale of each term: its weight over its own number of steps */
    const double sc = spec->control_weight / N.control;
    const double st = spec->trajectory_weight / N.trajectory;
    const double sf = spec->terminal_weight / N.terminal;
    double sum_c = 0.0, sum_t = 0.0, sum_f = 0.0;
    tl_sel_powers(sel, powers);

    for (ptrdiff_t b = 0; b < B; b++) {
        const tl_seq_span span = tl_sel_span(sel, b);
        TL_T *gu = grad_controls != NULL ? grad_controls + b * T * m : NULL;
        if (gu != NULL)
            memset(gu, 0, (size_t)(T * m) * sizeof(TL_T)); /* steps after K stay 0 */
        if (span.count == 0) {
            if (grad_x0 != NULL)
                memset(grad_x0 + b * n, 0, (size_t)n * sizeof(TL_T));
            continue;
        }
        tl_sel_weights(sel, b, 0, powers, wc);
        const double *w_traj = wc;
        if (shift) {
            tl_sel_weights(sel, b, 1, powers, wt);
            w_traj = wt;
        }

        /* forward: states 0 .. K, K = the state after the last valid control */
        const ptrdiff_t K = span.last + 1;
        const TL_T *u = controls + b * T * m;
        TL_SFX(widen)(n, x0 + b * n, X);
        for (ptrdiff_t k = 0; k < K; k++) {
            TL_SFX(widen)(m, u + k * m, a);
            for (ptrdiff_t i = 0; i < n; i++) {
                double acc = 0.0;
                for (ptrdiff_t j = 0; j < n; j++)
                    acc += Ad[i * n + j] * X[k * n + j];
                for (ptrdiff_t j = 0; j < m; j++)
                    acc += Bd[i * m + j] * a[j];
                X[(k + 1) * n + i] = acc;
            }
        }

        /* backward: lam_k = G_k + Ad^T lam_{k+1}; d/du_{k-1} = Bd^T lam_k + control term */
        const TL_T *rs = ref_states != NULL ? ref_states + b * (T + 1) * n : NULL;
        memset(lam, 0, (size_t)n * sizeof(double));
        for (ptrdiff_t k = K; k >= 0; k--) {
            memset(G, 0, (size_t)n * sizeof(double));
            const int scored = k == 0 ? shift : tl_sel_valid(sel, b, k - 1);
            if ((terms & TL_TERM_TRAJECTORY) && scored) {
                const double w = w_traj[k - 1 + shift];
                sum_t += w * TL_SFX(penalty_step)(spec, n, spec->state_weights, X + k * n,
                                                  rs + k * n, st * w, G);
            }
            if ((terms & TL_TERM_TERMINAL) && k == K) {
                const TL_T *tgt = target != NULL ? target + b * n : rs + K * n;
                sum_f += TL_SFX(penalty_step)(spec, n, spec->state_weights, X + K * n, tgt,
                                              sf, G);
            }
            for (ptrdiff_t i = 0; i < n; i++) {
                double acc = G[i];
                for (ptrdiff_t j = 0; j < n; j++)
                    acc += Ad[j * n + i] * lam[j];
                G[i] = acc;
            }
            memcpy(lam, G, (size_t)n * sizeof(double));
            if (k == 0)
                break;
            for (ptrdiff_t j = 0; j < m; j++) {
                double acc = 0.0;
                for (ptrdiff_t i = 0; i < n; i++)
                    acc += Bd[i * m + j] * lam[i];
                g[j] = acc;
            }
            if ((terms & TL_TERM_CONTROL) && tl_sel_valid(sel, b, k - 1)) {
                const ptrdiff_t row = (b * T + k - 1) * m;
                TL_SFX(widen)(m, controls + row, a);
                sum_c += wc[k - 1] * TL_SFX(penalty_step)(spec, m, spec->feature_weights, a,
                                                          ref_controls + row, sc * wc[k - 1], g);
            }
            if (gu != NULL)
                TL_SFX(narrow)(m, g, gu + (k - 1) * m);
        }
        if (grad_x0 != NULL)
            TL_SFX(narrow)(n, lam, grad_x0 + b * n);
    }

    value->control = (terms & TL_TERM_CONTROL) ? sum_c / N.control : 0.0;
    value->trajectory = (terms & TL_TERM_TRAJECTORY) ? sum_t / N.trajectory : 0.0;
    value->terminal = (terms & TL_TERM_TERMINAL) ? sum_f / N.terminal : 0.0;
    value->total = spec->control_weight * value->control +
                   spec->trajectory_weight * value->trajectory +
                   spec->terminal_weight * value->terminal;
    return TL_OK;
}
