/*
 * reference.c -- minimum-energy reference trajectories (see trajloss.h).
 *
 * Why the "average" controls are K = C^T W_c(H)^-1 / dt: the continuous law is
 * u(t) = B^T e^{A^T (H - t)} lambda with lambda = W_c(H)^-1 (xf - e^{AH} x0).
 * Its mean over interval k, with j = T - 1 - k, is
 *   (1/dt) B^T [int_{j dt}^{(j+1) dt} e^{A^T s} ds] lambda
 *     = (1/dt) B^T (e^{A^T dt})^j [int_0^dt e^{A^T s} ds] lambda
 *     = (1/dt) (Ad^j Bd)^T lambda,
 * because the ZOH input matrix is Bd = int_0^dt e^{As} ds B (Van Loan's
 * augmented exponential, tl_discretize) and e^{AH} = Ad^T. (Ad^j Bd) is
 * block k of the controllability matrix C, so only the Gramian differs from
 * the exact discrete law U = C^T W^-1 d.
 *
 * W_c(H) is assembled exactly from W_c(dt) (Van Loan's Gramian exponential,
 * tl_gramian) as sum_j Ad^j W_c(dt) Ad^j^T, which also gives every W_c(k dt)
 * for the continuous states and stays well scaled for long horizons.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "dense.h"
#include "lanes.h" /* TL_ALWAYS_INLINE, TL_SMALL_SYSTEMS */
#include "sizes.h"
#include "tl_lapack.h"
#include "trajloss.h"

/* ---- the continuous Gramian over [0, t] ------------------------------- */

size_t tl_gramian_work_bytes(ptrdiff_t n)
{
    if (n < 1 || n > TL_MAX_DIM)
        return 0;
    const size_t N = 2 * (size_t)n;
    return 2 * N * N * sizeof(double) + tl_expm_work_bytes(2 * n);
}

tl_status tl_gramian(ptrdiff_t n, ptrdiff_t m, const double *A, const double *B, double t,
                     double *Wc, void *work)
{
    if (n < 1 || n > TL_MAX_DIM || m < 1 || m > TL_MAX_DIM)
        return TL_ERR_SHAPE;
    if (!isfinite(t) || t < 0.0)
        return TL_ERR_VALUE;
    if (work == NULL)
        return TL_ERR_NOMEM;
    const ptrdiff_t N = 2 * n;
    double *M = (double *)work, *E = M + N * N;
    memset(M, 0, (size_t)(N * N) * sizeof(double));
    for (ptrdiff_t i = 0; i < n; i++)
        for (ptrdiff_t j = 0; j < n; j++) {
            M[i * N + j] = -A[i * n + j] * t;
            M[(n + i) * N + n + j] = A[j * n + i] * t;
            double bb = 0.0;
            for (ptrdiff_t k = 0; k < m; k++)
                bb += B[i * m + k] * B[j * m + k];
            M[i * N + n + j] = bb * t;
        }
    tl_status status = tl_expm(N, M, E, E + N * N, NULL);
    if (status != TL_OK)
        return status;
    /* Wc = F^T G with G = E[0:n, n:2n], F = E[n:2n, n:2n]; symmetrised */
    for (ptrdiff_t i = 0; i < n; i++)
        for (ptrdiff_t j = 0; j < n; j++) {
            double acc = 0.0;
            for (ptrdiff_t k = 0; k < n; k++)
                acc += E[(n + k) * N + n + i] * E[k * N + n + j];
            Wc[i * n + j] = acc;
        }
    for (ptrdiff_t i = 0; i < n; i++)
        for (ptrdiff_t j = 0; j < i; j++)
            Wc[i * n + j] = Wc[j * n + i] = 0.5 * (Wc[i * n + j] + Wc[j * n + i]);
    return TL_OK;
}

/* ---- plan ---------------------------------------------------------------- */

/*
 * Sizes are checked as in loss.c, with sizes.h: counted in size_t, and a
 * query that cannot say returns 0. n, m <= TL_MAX_DIM keep n * n and n * m
 * small; only steps is unbounded.
 */

size_t tl_ref_plan_bytes(ptrdiff_t n, ptrdiff_t m, ptrdiff_t steps, tl_ref_method method)
{
    if (n < 1 || n > TL_MAX_DIM || m < 1 || m > TL_MAX_DIM || steps < 1)
        return 0;
    const size_t nn = (size_t)n * (size_t)n, nm = (size_t)n * (size_t)m, T = (size_t)steps;
    /* Ad, AdT; Bd; K; Q */
    size_t count = 0;
    if (!tl_add_product(&count, 2, nn) || !tl_add_product(&count, 1, nm) ||
        !tl_add_product(&count, T, nm) ||
        (method == TL_REF_CONTINUOUS && !tl_add_product(&count, T + 1, nn)))
        return 0;
    return tl_doubles_bytes(count);
}

size_t tl_ref_init_work_bytes(ptrdiff_t n, ptrdiff_t m, ptrdiff_t steps)
{
    if (n < 1 || n > TL_MAX_DIM || m < 1 || m > TL_MAX_DIM || steps < 1)
        return 0;
    const size_t nn = (size_t)n * (size_t)n, T = (size_t)steps;
    /* Ad^j; W, G, Wdt, Wk, T1, Wt; T2 (n x max(n, m): it holds V_j = Ad^j Bd);
     * D, dpocon work, pivots (a double slot each, so the sub-workspace after
     * them stays aligned for doubles) */
    size_t doubles = 0;
    if (!tl_add_product(&doubles, T + 1, nn) || !tl_add_product(&doubles, 6, nn) ||
        !tl_add_product(&doubles, (size_t)n, (size_t)(n > m ? n : m)) ||
        !tl_add_product(&doubles, 5, (size_t)n))
        return 0;
    const size_t bytes = tl_doubles_bytes(doubles);
    const size_t sub = tl_discretize_work_bytes(n, m), gram = tl_gramian_work_bytes(n);
    const size_t more = sub > gram ? sub : gram;
    if (bytes == 0 || more > SIZE_MAX - bytes)
        return 0;
    return bytes + more;
}

/*
 * G = W^-1 through the Cholesky factor of the equilibrated D W D
 * (D = diag(W)^-1/2), which removes the scale difference between states
 * (position vs velocity) from the condition number. Sets *cond.
 */
static tl_status spd_inverse(ptrdiff_t n, const double *W, double *G, double *Wt, double *D,
                             double *lwork, tl_lapack_int *iwork, double *cond)
{
    *cond = INFINITY;
    for (ptrdiff_t i = 0; i < n; i++) {
        if (!(W[i * n + i] > 0.0) || !isfinite(W[i * n + i]))
            return TL_ERR_SINGULAR; /* a state no input reaches */
        D[i] = 1.0 / sqrt(W[i * n + i]);
    }
    for (ptrdiff_t i = 0; i < n; i++)
        for (ptrdiff_t j = 0; j < n; j++)
            Wt[i * n + j] = D[i] * W[i * n + j] * D[j];
    const double anorm = tl_dense_norm1(n, Wt);
    tl_lapack_int N = (tl_lapack_int)n;
    tl_lapack_int info = tl_lapacke_dpotrf_work(TL_LAPACK_COL_MAJOR, 'L', N, Wt, N);
    if (info > 0)
        return TL_ERR_SINGULAR;
    if (info < 0)
        return TL_ERR_LAPACK;
    double rcond = 0.0;
    info = tl_lapacke_dpocon_work(TL_LAPACK_COL_MAJOR, 'L', N, Wt, N, anorm, &rcond, lwork, iwork);
    if (info != 0)
        return TL_ERR_LAPACK;
    *cond = rcond > 0.0 ? 1.0 / rcond : INFINITY;
    if (!(*cond <= TL_COND_LIMIT))
        return TL_ERR_SINGULAR;
    memset(G, 0, (size_t)(n * n) * sizeof(double));
    tl_dense_add_identity(n, 1.0, G);
    info = tl_lapacke_dpotrs_work(TL_LAPACK_COL_MAJOR, 'L', N, N, Wt, N, G, N);
    if (info != 0)
        return TL_ERR_LAPACK;
    for (ptrdiff_t i = 0; i < n; i++)
        for (ptrdiff_t j = 0; j < n; j++)
            G[i * n + j] *= D[i] * D[j];
    return TL_OK;
}

/* Y += P X P^T for n x n matrices (T1 is scratch). */
static void add_congruence(ptrdiff_t n, const double *P, const double *X, double *Y, double *T1)
{
    tl_dense_matmul(n, n, n, P, X, T1);
    tl_dense_matmul_nt(n, n, n, T1, P, Y, 1);
}

tl_status tl_ref_plan_init(tl_ref_plan *plan, void *memory, tl_ref_method method,
                           const tl_system *sys, const double *A, const double *B, double dt,
                           ptrdiff_t steps, void *work)
{
    if (plan == NULL || (int)method < 0 || method >= TL_REF_COUNT)
        return TL_ERR_VALUE;
    const int continuous_model = method != TL_REF_EXACT;
    tl_status status = tl_system_check(sys);
    if (status != TL_OK)
        return status;
    const ptrdiff_t n = sys->n, m = sys->m, T = steps, nn = n * n;
    /* steps >= 1, and few enough that the plan and the scratch are addressable
     * (then no size or index below overflows) */
    if (T < 1 || tl_ref_plan_bytes(n, m, T, method) == 0 || tl_ref_init_work_bytes(n, m, T) == 0)
        return TL_ERR_SHAPE;
    if (!isfinite(dt) || dt <= 0.0 || (continuous_model && (A == NULL || B == NULL)))
        return TL_ERR_VALUE;
    if (memory == NULL || work == NULL)
        return TL_ERR_NOMEM;

    double *p = (double *)memory;
    plan->n = n, plan->m = m, plan->steps = T, plan->method = method, plan->dt = dt;
    plan->cond = INFINITY;
    plan->Ad = p, p += nn;
    plan->Bd = p, p += n * m;
    plan->AdT = p, p += nn;
    plan->K = p, p += T * m * n;
    plan->Q = method == TL_REF_CONTINUOUS ? p : NULL;

    double *Pow = (double *)work; /* Ad^j, j = 0 .. T */
    double *W = Pow + (T + 1) * nn, *G = W + nn, *Wdt = G + nn, *Wk = Wdt + nn;
    double *T1 = Wk + nn, *T2 = T1 + nn; /* T2 holds V_j = Ad^j Bd, n x m */
    double *Wt = T2 + n * (n > m ? n : m), *D = Wt + nn, *lwork = D + n;
    tl_lapack_int *iwork = (tl_lapack_int *)(lwork + 3 * n);
    void *sub = lwork + 4 * n;

    if (continuous_model) {
        status = tl_discretize(TL_DISC_ZOH, n, m, A, B, dt, plan->Ad, plan->Bd, sub, NULL);
        if (status == TL_OK)
            status = tl_gramian(n, m, A, B, dt, Wdt, sub);
        if (status != TL_OK)
            return status;
    } else {
        memcpy(plan->Ad, sys->Ad, (size_t)nn * sizeof(double));
        memcpy(plan->Bd, sys->Bd, (size_t)(n * m) * sizeof(double));
    }

    /* powers of Ad, the Gramian of the method, and its inverse */
    memset(Pow, 0, (size_t)nn * sizeof(double));
    tl_dense_add_identity(n, 1.0, Pow);
    for (ptrdiff_t j = 0; j < T; j++)
        tl_dense_matmul(n, n, n, plan->Ad, Pow + j * nn, Pow + (j + 1) * nn);
    memcpy(plan->AdT, Pow + T * nn, (size_t)nn * sizeof(double));
    memset(W, 0, (size_t)nn * sizeof(double));
    for (ptrdiff_t j = 0; j < T; j++) {
        if (continuous_model) {
            add_congruence(n, Pow + j * nn, Wdt, W, T1);
        } else {
            tl_dense_matmul(n, n, m, Pow + j * nn, plan->Bd, T2); /* V_j = Ad^j Bd */
            tl_dense_matmul_nt(n, m, n, T2, T2, W, 1);             /* W += V_j V_j^T */
        }
    }
    status = spd_inverse(n, W, G, Wt, D, lwork, iwork, &plan->cond);
    if (status != TL_OK)
        return status;

    /* K block k = (Ad^{T-1-k} Bd)^T G, divided by dt for the averaged law */
    const double scale = continuous_model ? 1.0 / dt : 1.0;
    for (ptrdiff_t k = 0; k < T; k++) {
        tl_dense_matmul(n, n, m, Pow + (T - 1 - k) * nn, plan->Bd, T2);
        for (ptrdiff_t c = 0; c < m; c++)
            for (ptrdiff_t j = 0; j < n; j++) {
                double acc = 0.0;
                for (ptrdiff_t i = 0; i < n; i++)
                    acc += T2[i * m + c] * G[i * n + j];
                plan->K[(k * m + c) * n + j] = scale * acc;
            }
    }

    /* continuous states: Q_k = W_c(k dt) (Ad^{T-k})^T W_c(H)^-1 */
    if (method == TL_REF_CONTINUOUS) {
        memset(Wk, 0, (size_t)nn * sizeof(double));
        for (ptrdiff_t k = 0; k <= T; k++) {
            tl_dense_matmul_nt(n, n, n, Wk, Pow + (T - k) * nn, T1, 0);
            tl_dense_matmul(n, n, n, T1, G, plan->Q + k * nn);
            if (k < T)
                add_congruence(n, Pow + k * nn, Wdt, Wk, T1);
        }
    }
    return TL_OK;
}

/* ---- apply ------------------------------------------------------------ */

size_t tl_ref_apply_work_bytes(ptrdiff_t n)
{
    if (n < 1 || n > TL_MAX_DIM)
        return 0;
    return 4 * (size_t)n * sizeof(double);
}

/* y = M x for an r x c row-major M */
static TL_ALWAYS_INLINE void matvec(ptrdiff_t r, ptrdiff_t c, const double *M, const double *x,
                                    double *y)
{
    for (ptrdiff_t i = 0; i < r; i++) {
        double acc = 0.0;
        for (ptrdiff_t j = 0; j < c; j++)
            acc += M[i * c + j] * x[j];
        y[i] = acc;
    }
}

static TL_ALWAYS_INLINE void copy(ptrdiff_t n, const double *x, double *y)
{
    for (ptrdiff_t i = 0; i < n; i++)
        y[i] = x[i];
}

/* Samples [b0, batch) of tl_ref_apply. Always inlined, so that the small
 * systems (TL_SMALL_SYSTEMS) get this loop with n and m as constants: the
 * matrix-vector products unrolled and the state kept in registers, about four
 * times faster at n = 2 than with sizes read at run time. The operations and their
 * order are the same for every (n, m), so are the results. */
static TL_ALWAYS_INLINE void apply_samples(const tl_ref_plan *plan, ptrdiff_t b0, ptrdiff_t batch,
                                           const double *x0, const double *xf,
                                           double *controls, double *states,
                                           double *final_error, double *energy, double *d,
                                           const ptrdiff_t n, const ptrdiff_t m)
{
    const ptrdiff_t T = plan->steps;
    double *y = d + n, *yn = y + n;
    for (ptrdiff_t b = b0; b < batch; b++) {
        const double *x = x0 + b * n, *f = xf + b * n;
        double *u = controls + b * T * m, *s = states + b * (T + 1) * n;
        matvec(n, n, plan->AdT, x, d);
        for (ptrdiff_t i = 0; i < n; i++)
            d[i] = f[i] - d[i];
        matvec(T * m, n, plan->K, d, u);

        double e = 0.0;
        for (ptrdiff_t i = 0; i < T * m; i++)
            e += u[i] * u[i];
        energy[b] = e * plan->dt;

        /* the ZOH rollout of the controls: the states (exact, average) or
         * only the end point (continuous) */
        copy(n, x, y);
        if (plan->method != TL_REF_CONTINUOUS)
            copy(n, x, s);
        for (ptrdiff_t k = 0; k < T; k++) {
            matvec(n, n, plan->Ad, y, yn);
            for (ptrdiff_t i = 0; i < n; i++)
                for (ptrdiff_t j = 0; j < m; j++)
                    yn[i] += plan->Bd[i * m + j] * u[k * m + j];
            copy(n, yn, y);
            if (plan->method != TL_REF_CONTINUOUS)
                copy(n, y, s + (k + 1) * n);
        }
        double err = 0.0;
        for (ptrdiff_t i = 0; i < n; i++)
            err += (y[i] - f[i]) * (y[i] - f[i]);
        final_error[b] = sqrt(err);

        if (plan->method == TL_REF_CONTINUOUS) {
            /* x(k dt) = Ad^k x0 + Q_k d */
            copy(n, x, y);
            for (ptrdiff_t k = 0; k <= T; k++) {
                matvec(n, n, plan->Q + k * n * n, d, s + k * n);
                for (ptrdiff_t i = 0; i < n; i++)
                    s[k * n + i] += y[i];
                matvec(n, n, plan->Ad, y, yn);
                copy(n, yn, y);
            }
        }
    }
}

/* The small systems' states fit in these many vectors (TL_SMALL_SYSTEMS). */
#define TL_REF_LANE_N 6

/* Samples b .. b + 3 of an exact or average reference, one a lane: the
 * operations of apply_samples in its order for each sample (the controls,
 * the energy and the rollout interleaved step by step: each is still its
 * own chain in its own order), so the same bits, four samples an
 * instruction. Only the loads and stores go element by element. */
static TL_ALWAYS_INLINE void apply_four(const tl_ref_plan *plan, ptrdiff_t b, const double *x0,
                                        const double *xf, double *controls, double *states,
                                        double *final_error, double *energy, const ptrdiff_t n,
                                        const ptrdiff_t m)
{
    const ptrdiff_t T = plan->steps, su = T * m, ss = (T + 1) * n;
    tl_vd x[TL_REF_LANE_N], f[TL_REF_LANE_N], d[TL_REF_LANE_N], y[TL_REF_LANE_N];
    tl_vd yn[TL_REF_LANE_N];
    double *u = controls + b * su, *s = states + b * ss;
    for (ptrdiff_t i = 0; i < n; i++) {
        x[i] = tl_vgather_f64(x0 + b * n + i, n);
        f[i] = tl_vgather_f64(xf + b * n + i, n);
    }
    for (ptrdiff_t i = 0; i < n; i++) { /* d = xf - Ad^T x0 */
        tl_vd acc = tl_vsplat_f64(0.0);
        for (ptrdiff_t j = 0; j < n; j++)
            acc += tl_vsplat_f64(plan->AdT[i * n + j]) * x[j];
        d[i] = f[i] - acc;
    }
    tl_vd e = tl_vsplat_f64(0.0);
    for (ptrdiff_t i = 0; i < n; i++) {
        y[i] = x[i];
        tl_vscatter_f64(x[i], s + i, ss);
    }
    for (ptrdiff_t k = 0; k < T; k++) {
        tl_vd uk[TL_REF_LANE_N];
        for (ptrdiff_t j = 0; j < m; j++) { /* u_k = K_k d, and its energy */
            tl_vd acc = tl_vsplat_f64(0.0);
            for (ptrdiff_t i = 0; i < n; i++)
                acc += tl_vsplat_f64(plan->K[(k * m + j) * n + i]) * d[i];
            uk[j] = acc;
            e += acc * acc;
            tl_vscatter_f64(acc, u + k * m + j, su);
        }
        for (ptrdiff_t i = 0; i < n; i++) { /* x_{k+1} = Ad x_k + Bd u_k */
            tl_vd acc = tl_vsplat_f64(0.0);
            for (ptrdiff_t j = 0; j < n; j++)
                acc += tl_vsplat_f64(plan->Ad[i * n + j]) * y[j];
            for (ptrdiff_t j = 0; j < m; j++)
                acc += tl_vsplat_f64(plan->Bd[i * m + j]) * uk[j];
            yn[i] = acc;
        }
        for (ptrdiff_t i = 0; i < n; i++) {
            y[i] = yn[i];
            tl_vscatter_f64(y[i], s + (k + 1) * n + i, ss);
        }
    }
    tl_vscatter_f64(e * tl_vsplat_f64(plan->dt), energy + b, 1);
    tl_vd err = tl_vsplat_f64(0.0);
    for (ptrdiff_t i = 0; i < n; i++)
        err += (y[i] - f[i]) * (y[i] - f[i]);
    for (int l = 0; l < TL_LANES_F64; l++)
        final_error[b + l] = sqrt(err[l]);
}

/* A small system's samples: exact and average references four at a time
 * (also built for AVX2), the rest -- the last few, continuous states -- one
 * at a time. */
#define TL_SMALL_SYSTEM(N, M)                                                                 \
    TL_CLONES static void apply_small_##N##_##M(const tl_ref_plan *plan, ptrdiff_t batch,     \
                                                const double *x0, const double *xf,           \
                                                double *controls, double *states,             \
                                                double *final_error, double *energy)          \
    {                                                                                         \
        ptrdiff_t b = 0;                                                                      \
        if (plan->method != TL_REF_CONTINUOUS)                                                \
            for (; b + TL_LANES_F64 <= batch; b += TL_LANES_F64)                              \
                apply_four(plan, b, x0, xf, controls, states, final_error, energy, N, M);     \
        double scratch[3 * (N)]; /* not `work`: no output store can alias it */              \
        apply_samples(plan, b, batch, x0, xf, controls, states, final_error, energy, scratch, \
                      N, M);                                                                  \
    }
TL_SMALL_SYSTEMS
#undef TL_SMALL_SYSTEM

tl_status tl_ref_apply(const tl_ref_plan *plan, ptrdiff_t batch, const double *x0,
                       const double *xf, double *controls, double *states,
                       double *final_error, double *energy, void *work)
{
    if (plan == NULL || batch < 0)
        return plan == NULL ? TL_ERR_VALUE : TL_ERR_SHAPE;
    if (work == NULL)
        return TL_ERR_NOMEM;
    const ptrdiff_t n = plan->n, m = plan->m;
#define TL_SMALL_SYSTEM(N, M)                                                                     \
    if (n == (N) && m == (M)) {                                                               \
        apply_small_##N##_##M(plan, batch, x0, xf, controls, states, final_error, energy);    \
        return TL_OK;                                                                         \
    }
    TL_SMALL_SYSTEMS
#undef TL_SMALL_SYSTEM
    apply_samples(plan, 0, batch, x0, xf, controls, states, final_error, energy, (double *)work,
                  n, m);
    return TL_OK;
}

/* ---- the continuous law at arbitrary times ---------------------------- */

size_t tl_min_energy_law_work_bytes(ptrdiff_t n)
{
    if (n < 1 || n > TL_MAX_DIM)
        return 0;
    const size_t nn = (size_t)(n * n);
    /* EH, G, Et, EHt, Wt, Wtmp, D; d, lam, v; dpocon work; pivots (double slots) */
    size_t bytes = (7 * nn + 8 * (size_t)n) * sizeof(double);
    size_t e = tl_expm_work_bytes(n), g = tl_gramian_work_bytes(n);
    return bytes + (e > g ? e : g);
}

tl_status tl_min_energy_law(ptrdiff_t n, ptrdiff_t m, const double *A, const double *B,
                            double horizon, ptrdiff_t batch, const double *x0, const double *xf,
                            ptrdiff_t ntimes, const double *times, double *u, double *x,
                            double *cond, void *work)
{
    *cond = INFINITY;
    if (n < 1 || n > TL_MAX_DIM || m < 1 || m > TL_MAX_DIM || batch < 0 || ntimes < 0)
        return TL_ERR_SHAPE;
    if (!isfinite(horizon) || horizon <= 0.0)
        return TL_ERR_VALUE;
    for (ptrdiff_t i = 0; i < ntimes; i++)
        if (!(times[i] >= 0.0 && times[i] <= horizon))
            return TL_ERR_VALUE;
    if (work == NULL)
        return TL_ERR_NOMEM;
    const ptrdiff_t nn = n * n;
    double *EH = (double *)work, *G = EH + nn, *Et = G + nn, *EHt = Et + nn, *Wt = EHt + nn;
    double *Wtmp = Wt + nn, *D = Wtmp + nn, *d = D + n, *lam = d + n, *v = lam + n;
    double *lwork = v + n;
    tl_lapack_int *iwork = (tl_lapack_int *)(lwork + 3 * n);
    void *sub = lwork + 4 * n;

    /* G = W_c(H)^-1, EH = e^{AH} */
    tl_status status = tl_gramian(n, m, A, B, horizon, Wt, sub);
    if (status != TL_OK)
        return status;
    status = spd_inverse(n, Wt, G, Wtmp, D, lwork, iwork, cond);
    if (status != TL_OK)
        return status;
    double *At = Wtmp; /* A scaled by a time, reused */
    for (ptrdiff_t i = 0; i < nn; i++)
        At[i] = A[i] * horizon;
    if ((status = tl_expm(n, At, EH, sub, NULL)) != TL_OK)
        return status;

    for (ptrdiff_t q = 0; q < ntimes; q++) {
        const double t = times[q];
        for (ptrdiff_t i = 0; i < nn; i++)
            At[i] = A[i] * t;
        if ((status = tl_expm(n, At, Et, sub, NULL)) != TL_OK)
            return status;
        for (ptrdiff_t i = 0; i < nn; i++)
            At[i] = A[i] * (horizon - t);
        if ((status = tl_expm(n, At, EHt, sub, NULL)) != TL_OK) /* e^{A (H - t)} */
            return status;
        if ((status = tl_gramian(n, m, A, B, t, Wt, sub)) != TL_OK)
            return status;
        for (ptrdiff_t b = 0; b < batch; b++) {
            const double *xb = x0 + b * n, *fb = xf + b * n;
            /* lam = G (xf - e^{AH} x0);  v = e^{A^T (H - t)} lam */
            matvec(n, n, EH, xb, d);
            for (ptrdiff_t i = 0; i < n; i++)
                d[i] = fb[i] - d[i];
            matvec(n, n, G, d, lam);
            for (ptrdiff_t i = 0; i < n; i++) {
                double acc = 0.0;
                for (ptrdiff_t j = 0; j < n; j++)
                    acc += EHt[j * n + i] * lam[j];
                v[i] = acc;
            }
            double *ub = u + (b * ntimes + q) * m, *xq = x + (b * ntimes + q) * n;
            for (ptrdiff_t c = 0; c < m; c++) { /* u = B^T v */
                double acc = 0.0;
                for (ptrdiff_t i = 0; i < n; i++)
                    acc += B[i * m + c] * v[i];
                ub[c] = acc;
            }
            matvec(n, n, Et, xb, xq); /* x = e^{At} x0 + W_c(t) v */
            for (ptrdiff_t i = 0; i < n; i++)
                for (ptrdiff_t j = 0; j < n; j++)
                    xq[i] += Wt[i * n + j] * v[j];
        }
    }
    return TL_OK;
}
