/*
 * discretize.c -- continuous (A, B) with step dt to discrete (Ad, Bd).
 *
 *   zoh   : exp([[A, B], [0, 0]] dt) = [[Ad, Bd], [0, I]]  (exact for
 *           piecewise-constant input; C. Van Loan, IEEE TAC 23(3), 1978)
 *   euler : Ad = I + dt A,  Bd = dt B
 *   rk4   : with F = dt A and S = I + F/2 (I + F/3 (I + F/4)), the classical
 *           Runge-Kutta step with u held constant is exactly
 *           Ad = I + F S = I + F + F^2/2 + F^3/6 + F^4/24,  Bd = dt S B.
 */
#include <math.h>
#include <string.h>

#include "dense.h"
#include "trajloss.h"

size_t tl_discretize_work_bytes(ptrdiff_t n, ptrdiff_t m)
{
    if (n < 1 || n > TL_MAX_DIM || m < 1 || m > TL_MAX_DIM)
        return 0;
    const size_t N = (size_t)(n + m);
    const size_t zoh = 2 * N * N * sizeof(double) + tl_expm_work_bytes(n + m);
    const size_t rk4 = 3 * (size_t)n * (size_t)n * sizeof(double);
    return zoh > rk4 ? zoh : rk4;
}

static int all_finite(ptrdiff_t count, const double *x)
{
    for (ptrdiff_t i = 0; i < count; i++)
        if (!isfinite(x[i]))
            return 0;
    return 1;
}

static tl_status discretize_zoh(ptrdiff_t n, ptrdiff_t m, const double *A, const double *B,
                                double dt, double *Ad, double *Bd, double *buf,
                                const tl_cancel *cancel)
{
    const ptrdiff_t N = n + m;
    double *M = buf, *E = buf + N * N;
    memset(M, 0, (size_t)(N * N) * sizeof(double));
    for (ptrdiff_t i = 0; i < n; i++) {
        for (ptrdiff_t j = 0; j < n; j++)
            M[i * N + j] = A[i * n + j] * dt;
        for (ptrdiff_t j = 0; j < m; j++)
            M[i * N + n + j] = B[i * m + j] * dt;
    }
    tl_status status = tl_expm(N, M, E, buf + 2 * N * N, cancel);
    if (status != TL_OK)
        return status;
    tl_dense_copy_block(n, n, E, N, Ad, n);
    tl_dense_copy_block(n, m, E + n, N, Bd, m);
    return TL_OK;
}

static void discretize_euler(ptrdiff_t n, ptrdiff_t m, const double *A, const double *B,
                             double dt, double *Ad, double *Bd)
{
    tl_dense_axpby(n, dt, A, 0.0, Ad);
    tl_dense_add_identity(n, 1.0, Ad);
    for (ptrdiff_t i = 0; i < n * m; i++)
        Bd[i] = dt * B[i];
}

static int cancelled(const tl_cancel *cancel)
{
    return cancel != NULL && cancel->poll != NULL && cancel->poll(cancel->ctx) != 0;
}

/* The three n x n products go through BLAS from TL_DENSE_BLAS_MIN_N on, each
 * followed by a poll of the cancel hook. */
static tl_status discretize_rk4(ptrdiff_t n, ptrdiff_t m, const double *A, const double *B,
                                double dt, double *Ad, double *Bd, double *buf,
                                const tl_cancel *cancel)
{
    const ptrdiff_t nn = n * n;
    double *F = buf, *S = buf + nn, *T = buf + 2 * nn;
    tl_dense_axpby(n, dt, A, 0.0, F);

    /* Horner: S = I + F/4, then S = I + (F S)/3, then S = I + (F S)/2. */
    tl_dense_axpby(n, 0.25, F, 0.0, S);
    tl_dense_add_identity(n, 1.0, S);
    for (int k = 3; k >= 2; k--) {
        tl_dense_gemm(n, n, F, S, T);
        if (cancelled(cancel))
            return TL_ERR_INTERRUPTED;
        tl_dense_axpby(n, 1.0 / k, T, 0.0, S);
        tl_dense_add_identity(n, 1.0, S);
    }
    tl_dense_gemm(n, n, F, S, Ad);
    tl_dense_add_identity(n, 1.0, Ad);
    tl_dense_matmul(n, n, m, S, B, Bd);
    for (ptrdiff_t i = 0; i < n * m; i++)
        Bd[i] *= dt;
    return TL_OK;
}

tl_status tl_discretize(tl_disc_method method, ptrdiff_t n, ptrdiff_t m,
                        const double *A, const double *B, double dt,
                        double *Ad, double *Bd, void *work, const tl_cancel *cancel)
{
    if (n < 1 || n > TL_MAX_DIM || m < 1 || m > TL_MAX_DIM)
        return TL_ERR_SHAPE;
    if ((int)method < 0 || method >= TL_DISC_COUNT || !isfinite(dt) || dt <= 0.0)
        return TL_ERR_VALUE;
    if (!all_finite(n * n, A) || !all_finite(n * m, B))
        return TL_ERR_VALUE;
    if (work == NULL)
        return TL_ERR_NOMEM;

    switch (method) {
    case TL_DISC_ZOH:
        return discretize_zoh(n, m, A, B, dt, Ad, Bd, (double *)work, cancel);
    case TL_DISC_EULER:
        discretize_euler(n, m, A, B, dt, Ad, Bd);
        return TL_OK;
    case TL_DISC_RK4:
        return discretize_rk4(n, m, A, B, dt, Ad, Bd, (double *)work, cancel);
    default:
        return TL_ERR_VALUE;
    }
}
