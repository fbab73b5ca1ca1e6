/*
 * rollout.c -- rollouts x_{k+1} = A_k x_k + B_k u_k + c_k, their adjoint and
 * the final-state error: the plain kernels, one sample at a time in double
 * (float32 arrays are widened as they are read and rounded once when stored).
 */
#include <math.h>
#include <stddef.h>

#include "rollout.h"

size_t tl_rollout_work_bytes(ptrdiff_t n, ptrdiff_t m)
{
    if (n < 1 || n > TL_MAX_DIM || m < 1 || m > TL_MAX_DIM)
        return 0;
    return (2 * (size_t)n + (size_t)m) * sizeof(double);
}

double tl_load(tl_dtype dtype, const void *p, ptrdiff_t i)
{
    return dtype == TL_F64 ? ((const double *)p)[i] : (double)((const float *)p)[i];
}

void tl_store(tl_dtype dtype, void *p, ptrdiff_t i, double v)
{
    if (dtype == TL_F64)
        ((double *)p)[i] = v;
    else
        ((float *)p)[i] = (float)v;
}

void tl_dyn_step(const tl_dynamics *d, ptrdiff_t b, ptrdiff_t k, const double *x,
                 tl_dtype dtype, const void *u, double *xn)
{
    const ptrdiff_t n = d->n, m = d->m;
    const double *A = tl_dyn_A(d, b, k), *B = tl_dyn_B(d, b, k), *c = tl_dyn_c(d, b, k);
    for (ptrdiff_t i = 0; i < n; i++) {
        double acc = c != NULL ? c[i] : 0.0;
        for (ptrdiff_t j = 0; j < n; j++)
            acc += A[i * n + j] * x[j];
        for (ptrdiff_t j = 0; j < m; j++)
            acc += B[i * m + j] * tl_load(dtype, u, j);
        xn[i] = acc;
    }
}

void tl_dyn_adjoint(const tl_dynamics *d, ptrdiff_t b, ptrdiff_t k, const double *lam,
                    double *lam_prev, double *gu)
{
    const ptrdiff_t n = d->n, m = d->m;
    const double *A = tl_dyn_A(d, b, k), *B = tl_dyn_B(d, b, k);
    if (gu != NULL)
        for (ptrdiff_t j = 0; j < m; j++) {
            double acc = 0.0;
            for (ptrdiff_t i = 0; i < n; i++)
                acc += B[i * m + j] * lam[i];
            gu[j] = acc;
        }
    for (ptrdiff_t j = 0; j < n; j++) {
        double acc = 0.0;
        for (ptrdiff_t i = 0; i < n; i++)
            acc += A[i * n + j] * lam[i];
        lam_prev[j] = acc;
    }
}

static tl_status check_call(const tl_dynamics *dyn, tl_dtype dtype, ptrdiff_t batch,
                            ptrdiff_t steps, const void *work)
{
    const tl_status status = tl_dynamics_check(dyn, batch, steps);
    if (status != TL_OK)
        return status;
    if ((int)dtype < 0 || dtype >= TL_DTYPE_COUNT)
        return TL_ERR_VALUE;
    return work == NULL ? TL_ERR_NOMEM : TL_OK;
}

/* Bytes of one element of dtype. */
static size_t elem(tl_dtype dtype)
{
    return dtype == TL_F64 ? sizeof(double) : sizeof(float);
}

/* p + i elements of dtype. */
static const void *at(tl_dtype dtype, const void *p, ptrdiff_t i)
{
    return (const char *)p + (size_t)i * elem(dtype);
}

tl_status tl_rollout(const tl_dynamics *dyn, tl_dtype dtype, ptrdiff_t batch, ptrdiff_t steps,
                     const void *x0, const void *controls, void *states, void *work)
{
    tl_status status = check_call(dyn, dtype, batch, steps, work);
    if (status != TL_OK)
        return status;
    if (batch > 0 && (x0 == NULL || (controls == NULL && steps > 0) || states == NULL))
        return TL_ERR_VALUE;
    const ptrdiff_t n = dyn->n, m = dyn->m;
    double *x = (double *)work, *xn = x + n;
    for (ptrdiff_t b = 0; b < batch; b++) {
        const ptrdiff_t s0 = b * (steps + 1) * n;
        for (ptrdiff_t i = 0; i < n; i++) {
            x[i] = tl_load(dtype, x0, b * n + i);
            tl_store(dtype, states, s0 + i, x[i]);
        }
        for (ptrdiff_t k = 0; k < steps; k++) {
            tl_dyn_step(dyn, b, k, x, dtype, at(dtype, controls, (b * steps + k) * m), xn);
            double *t = x;
            x = xn;
            xn = t;
            for (ptrdiff_t i = 0; i < n; i++)
                tl_store(dtype, states, s0 + (k + 1) * n + i, x[i]);
        }
    }
    return TL_OK;
}

tl_status tl_rollout_vjp(const tl_dynamics *dyn, tl_dtype dtype, ptrdiff_t batch,
                         ptrdiff_t steps, const void *x0, const void *controls,
                         const void *grad_states, void *grad_controls, void *grad_x0,
                         void *work)
{
    (void)x0; /* a linear system's Jacobians do not depend on the trajectory */
    (void)controls;
    tl_status status = check_call(dyn, dtype, batch, steps, work);
    if (status != TL_OK)
        return status;
    if (batch > 0 && grad_states == NULL)
        return TL_ERR_VALUE;
    const ptrdiff_t n = dyn->n, m = dyn->m;
    double *lam = (double *)work, *prev = lam + n, *gu = prev + n;
    for (ptrdiff_t b = 0; b < batch; b++) {
        const ptrdiff_t g0 = b * (steps + 1) * n;
        for (ptrdiff_t i = 0; i < n; i++)
            lam[i] = tl_load(dtype, grad_states, g0 + steps * n + i);
        for (ptrdiff_t k = steps - 1; k >= 0; k--) {
            /* grad u_k = B_k^T lam_{k+1};  lam_k = G_k + A_k^T lam_{k+1} */
            tl_dyn_adjoint(dyn, b, k, lam, prev, grad_controls != NULL ? gu : NULL);
            if (grad_controls != NULL)
                for (ptrdiff_t j = 0; j < m; j++)
                    tl_store(dtype, grad_controls, (b * steps + k) * m + j, gu[j]);
            for (ptrdiff_t i = 0; i < n; i++)
                prev[i] += tl_load(dtype, grad_states, g0 + k * n + i);
            double *t = lam;
            lam = prev;
            prev = t;
        }
        if (grad_x0 != NULL)
            for (ptrdiff_t i = 0; i < n; i++)
                tl_store(dtype, grad_x0, b * n + i, lam[i]);
    }
    return TL_OK;
}

tl_status tl_final_state_error(const tl_dynamics *dyn, tl_dtype dtype, ptrdiff_t batch,
                               ptrdiff_t steps, const int64_t *lengths, const void *controls,
                               const void *x0, const void *xf, void *error, void *work)
{
    tl_status status = check_call(dyn, dtype, batch, steps, work);
    if (status != TL_OK)
        return status;
    if (batch > 0 && (x0 == NULL || xf == NULL || error == NULL || (controls == NULL && steps > 0)))
        return TL_ERR_VALUE;
    const ptrdiff_t n = dyn->n, m = dyn->m;
    double *x = (double *)work, *xn = x + n;
    for (ptrdiff_t b = 0; b < batch; b++) {
        const ptrdiff_t last = lengths != NULL ? (ptrdiff_t)lengths[b] : steps;
        if (last < 0 || last > steps)
            return TL_ERR_VALUE;
        for (ptrdiff_t i = 0; i < n; i++)
            x[i] = tl_load(dtype, x0, b * n + i);
        for (ptrdiff_t k = 0; k < last; k++) {
            tl_dyn_step(dyn, b, k, x, dtype, at(dtype, controls, (b * steps + k) * m), xn);
            double *t = x;
            x = xn;
            xn = t;
        }
        double sq = 0.0;
        for (ptrdiff_t i = 0; i < n; i++) {
            const double r = x[i] - tl_load(dtype, xf, b * n + i);
            sq += r * r;
        }
        tl_store(dtype, error, b, sqrt(sq));
    }
    return TL_OK;
}
