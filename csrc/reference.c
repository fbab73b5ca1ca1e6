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
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "dense.h"
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
    const ptrdiff_t N = 2 * n, nn = n * n;
    double *M = (double *)work, *E = M + N * N;
    /* h = t / 2^k with |A|_1 h <= 1: then e^{-Ah} grows by at most e, and
     * F^T G below loses almost nothing to cancellation */
    const double anorm = tl_dense_norm1(n, A);
    if (!isfinite(anorm))
        return TL_ERR_VALUE;
    int k = 0;
    while (k < 2200 && anorm * ldexp(t, -k) > 1.0)
        k++;
    const double h = ldexp(t, -k);
    memset(M, 0, (size_t)(N * N) * sizeof(double));
    for (ptrdiff_t i = 0; i < n; i++)
        for (ptrdiff_t j = 0; j < n; j++) {
            M[i * N + j] = -A[i * n + j] * h;
            M[(n + i) * N + n + j] = A[j * n + i] * h;
            double bb = 0.0;
            for (ptrdiff_t c = 0; c < m; c++)
                bb += B[i * m + c] * B[j * m + c];
            M[i * N + n + j] = bb * h;
        }
    tl_status status = tl_expm(N, M, E, E + N * N, NULL);
    if (status != TL_OK)
        return status;
    /* Wc = F^T G with G = E[0:n, n:2n], F = E[n:2n, n:2n] */
    for (ptrdiff_t i = 0; i < n; i++)
        for (ptrdiff_t j = 0; j < n; j++) {
            double acc = 0.0;
            for (ptrdiff_t q = 0; q < n; q++)
                acc += E[(n + q) * N + n + i] * E[q * N + n + j];
            Wc[i * n + j] = acc;
        }
    /* doublings; M (4 n^2, free now) holds Phi = e^{Ah} = F^T, Phi^2, Phi W */
    double *Phi = M, *Phi2 = M + nn, *PW = M + 2 * nn;
    for (ptrdiff_t i = 0; i < n; i++)
        for (ptrdiff_t j = 0; j < n; j++)
            Phi[i * n + j] = E[(n + j) * N + n + i];
    for (int r = 0; r < k; r++) {
        tl_dense_matmul(n, n, n, Phi, Wc, PW);
        tl_dense_matmul_nt(n, n, n, PW, Phi, Wc, 1); /* Wc += Phi Wc Phi^T */
        if (r + 1 < k) {
            tl_dense_matmul(n, n, n, Phi, Phi, Phi2);
            memcpy(Phi, Phi2, (size_t)nn * sizeof(double));
        }
    }
    for (ptrdiff_t i = 0; i < n; i++)
        for (ptrdiff_t j = 0; j < i; j++)
            Wc[i * n + j] = Wc[j * n + i] = 0.5 * (Wc[i * n + j] + Wc[j * n + i]);
    return TL_OK;
}

/* ---- small helpers ------------------------------------------------------- */

/* y = M x for an r x c row-major M */
static void matvec(ptrdiff_t r, ptrdiff_t c, const double *M, const double *x, double *y)
{
    for (ptrdiff_t i = 0; i < r; i++) {
        double acc = 0.0;
        for (ptrdiff_t j = 0; j < c; j++)
            acc += M[i * c + j] * x[j];
        y[i] = acc;
    }
}

/* |a - b|_2 (a's entries `sa` doubles apart) scaled by the largest
 * |a_i - b_i|: where the plain sum of squares overflows (a long rollout of a
 * growing mode misses xf by 1e200) final_error is still that miss, not inf. */
static double distance(ptrdiff_t n, const double *a, ptrdiff_t sa, const double *b)
{
    double acc = 0.0;
    for (ptrdiff_t i = 0; i < n; i++)
        acc += (a[i * sa] - b[i]) * (a[i * sa] - b[i]);
    if (isfinite(acc))
        return sqrt(acc);
    double mx = 0.0;
    for (ptrdiff_t i = 0; i < n; i++)
        mx = fmax(mx, fabs(a[i * sa] - b[i]));
    if (!(mx > 0.0) || !isfinite(mx))
        return mx;
    acc = 0.0;
    for (ptrdiff_t i = 0; i < n; i++)
        acc += ((a[i * sa] - b[i]) / mx) * ((a[i * sa] - b[i]) / mx);
    return mx * sqrt(acc);
}

/* ---- plan sizes ------------------------------------------------------------ */

/*
 * Sizes are checked with sizes.h: counted in size_t, and a query that
 * cannot say returns 0. n, m <= TL_MAX_DIM keep n * n and n * m small; only
 * steps is unbounded.
 */

static int ref_sizes_ok(ptrdiff_t n, ptrdiff_t m, ptrdiff_t steps, tl_ref_method method)
{
    return n >= 1 && n <= TL_MAX_DIM && m >= 1 && m <= TL_MAX_DIM && steps >= 1 &&
           (int)method >= 0 && method < TL_REF_COUNT;
}

size_t tl_ref_plan_bytes(ptrdiff_t n, ptrdiff_t m, ptrdiff_t steps, tl_ref_method method)
{
    if (!ref_sizes_ok(n, m, steps, method))
        return 0;
    const size_t nn = (size_t)n * (size_t)n, nm = (size_t)n * (size_t)m, T = (size_t)steps;
    /* AdT, drift, K; exact: S, L; else Ad, Bd (and Q for continuous) */
    size_t count = 0;
    if (!tl_add_product(&count, 1, nn) || !tl_add_product(&count, 1, (size_t)n) ||
        !tl_add_product(&count, T, nm) || !tl_add_product(&count, 2, nn) ||
        (method != TL_REF_EXACT && !tl_add_product(&count, 1, nm)) ||
        (method == TL_REF_CONTINUOUS && !tl_add_product(&count, T + 1, nn)))
        return 0;
    return tl_doubles_bytes(count);
}

/* LAPACK workspace of the exact plan (dgeqp3 needs 3 n + 1, dorgqr n; more
 * lets both block) */
static size_t exact_lwork(ptrdiff_t n)
{
    return 32 * ((size_t)n + 1);
}

/* Scratch of the exact plan, in doubles: P, P A (n x n each), C (n x steps m),
 * D, tau, the pivots and dtrcon's integers (a double slot each), dtrcon's
 * 3 n and the LAPACK workspace; 0 when not representable. */
static size_t exact_scratch_doubles(ptrdiff_t n, ptrdiff_t m, ptrdiff_t steps)
{
    size_t count = 0;
    const size_t nn = (size_t)n * (size_t)n, nm = (size_t)n * (size_t)m;
    if (!tl_add_product(&count, 2, nn) || !tl_add_product(&count, (size_t)steps, nm) ||
        !tl_add_product(&count, (size_t)n, 7) || !tl_add_product(&count, 1, exact_lwork(n)))
        return 0;
    return count;
}

/* Scratch of the average and continuous plans: Ad^j (j = 0 .. steps); W, G,
 * Wdt, Wk, T1, Wt; T2 (n x max(n, m): it holds Ad^j Bd); D, dpocon's work
 * and pivots (a double slot each, so the sub-workspace after them stays
 * aligned); then the larger of tl_discretize's and tl_gramian's. */
static size_t model_scratch_bytes(ptrdiff_t n, ptrdiff_t m, ptrdiff_t steps)
{
    const size_t nn = (size_t)n * (size_t)n, T = (size_t)steps;
    size_t doubles = 0;
    if (!tl_add_product(&doubles, T + 1, nn) || !tl_add_product(&doubles, 6, nn) ||
        !tl_add_product(&doubles, (size_t)n, (size_t)(n > m ? n : m)) ||
        !tl_add_product(&doubles, 5, (size_t)n))
        return 0;
    const size_t bytes = tl_doubles_bytes(doubles);
    const size_t sub = tl_discretize_work_bytes(n, m), gram = tl_gramian_work_bytes(n);
    const size_t more = sub > gram ? sub : gram;
    if (bytes == 0 || more == 0 || more > SIZE_MAX - bytes)
        return 0;
    return bytes + more;
}

size_t tl_ref_init_work_bytes(ptrdiff_t n, ptrdiff_t m, ptrdiff_t steps, tl_ref_method method)
{
    if (!ref_sizes_ok(n, m, steps, method))
        return 0;
    if (method == TL_REF_EXACT)
        return tl_doubles_bytes(exact_scratch_doubles(n, m, steps));
    return model_scratch_bytes(n, m, steps);
}

/* ---- exact ------------------------------------------------------------------ */

/*
 * C (row-major n x T m, which is C^T column-major), Phi(T, 0) and the drift
 * r of one sample's dynamics d1 (batch 0), by the backward recurrence
 *   P = Phi(T, k+1):  block k of C = P B_k,  r += P c_k,  then P <- P A_k,
 * from P = I at k = T - 1. A time-invariant system costs the T products of
 * Ad's powers, as before; nothing of size T n^2 is kept.
 */
static void controllability(const tl_ref_plan *plan, const tl_dynamics *d1, double *Ct,
                            double *P, double *PA)
{
    const ptrdiff_t n = plan->n, m = plan->m, T = plan->steps, N = T * m, nn = n * n;
    memset(P, 0, (size_t)nn * sizeof(double));
    tl_dense_add_identity(n, 1.0, P);
    memset(plan->drift, 0, (size_t)n * sizeof(double));
    for (ptrdiff_t k = T - 1; k >= 0; k--) {
        const double *Bk = tl_dyn_B(d1, 0, k), *ck = tl_dyn_c(d1, 0, k);
        for (ptrdiff_t i = 0; i < n; i++)
            for (ptrdiff_t c = 0; c < m; c++) {
                double acc = 0.0;
                for (ptrdiff_t l = 0; l < n; l++)
                    acc += P[i * n + l] * Bk[l * m + c];
                Ct[i * N + k * m + c] = acc;
            }
        if (ck != NULL)
            for (ptrdiff_t i = 0; i < n; i++) {
                double acc = 0.0;
                for (ptrdiff_t l = 0; l < n; l++)
                    acc += P[i * n + l] * ck[l];
                plan->drift[i] += acc;
            }
        tl_dense_gemm(n, n, P, tl_dyn_A(d1, 0, k), PA);
        double *swap = P;
        P = PA, PA = swap;
    }
    memcpy(plan->AdT, P, (size_t)nn * sizeof(double));
}

/* Ct = D C for the row-major n x N C in Ct, D = diag(1 / row norms) (a zero
 * row stays zero); 0 when C is not finite. */
static int equilibrate_rows(ptrdiff_t n, ptrdiff_t N, double *Ct, double *D)
{
    int finite = 1;
    for (ptrdiff_t i = 0; i < n; i++) {
        double scale = 0.0, ss = 1.0; /* the row's 2-norm without overflow */
        for (ptrdiff_t r = 0; r < N; r++) {
            const double v = fabs(Ct[i * N + r]);
            finite &= isfinite(v);
            if (v > scale) {
                ss = 1.0 + ss * (scale / v) * (scale / v);
                scale = v;
            } else if (v > 0.0) {
                ss += (v / scale) * (v / scale);
            }
        }
        /* 1 / norm = (1 / scale) / sqrt(ss), which overflows neither for a
         * row whose norm passes DBL_MAX (its entries are finite) nor, as
         * 1 / scale, unless the row is subnormal. A zero row stays zero. A
         * subnormal row counts as zero too: reaching that direction would
         * need controls beyond float64. */
        const double inv_scale = 1.0 / scale, root = sqrt(ss);
        const int tiny = scale > 0.0 && !isfinite(inv_scale);
        const int scaled = scale > 0.0 && isfinite(scale) && !tiny;
        D[i] = scaled ? inv_scale / root : 1.0;
        for (ptrdiff_t r = 0; r < N; r++)
            Ct[i * N + r] = tiny ? 0.0 : scaled ? Ct[i * N + r] * inv_scale / root : Ct[i * N + r];
    }
    return finite;
}

/*
 * exact: the minimum-norm solution operator of C U = d, from the
 * column-pivoted QR of the row-equilibrated C^T: (D C)^T P = Q R gives
 * P^T D C = R^T Q^T, so U = Q z with R^T z = P^T D d. The plan keeps
 * K = Q, S = P^T D and L = R^T (its diagonal stored inverted, so a sample
 * multiplies where it would divide); each sample solves the small triangular
 * system itself, a backward-stable solve whose residual is ~eps |C| |U|
 * (the explicit C^+ = Q R^-T S would leave ~eps cond(C) |C| |U|, and the
 * Cholesky factor of C C^T cond(D C)^2). D (1 / the row norms) makes the
 * rank test and the condition number independent of the units of the
 * states.
 */
static tl_status exact_plan(tl_ref_plan *plan, const tl_dynamics *d1, double *scratch)
{
    const ptrdiff_t n = plan->n, m = plan->m, T = plan->steps, N = T * m, nn = n * n;
    const size_t lw = exact_lwork(n);
    double *P = scratch, *PA = P + nn;
    double *Ct = PA + nn; /* C, row-major n x N: C^T column-major N x n */
    double *D = Ct + N * n, *tau = D + n, *lwork = tau + n;
    double *cwork = lwork + lw; /* dtrcon: 3 n doubles */
    tl_lapack_int *jpvt = (tl_lapack_int *)(cwork + 3 * n), *iwork = jpvt + n;
    tl_ref_rank *rk = &plan->rank;
    *rk = (tl_ref_rank){0, 0.0, 0.0, 0.0, 0.0};

    controllability(plan, d1, Ct, P, PA);
    if (!equilibrate_rows(n, N, Ct, D)) {
        rk->rank = -1;
        return TL_ERR_SINGULAR;
    }

    memset(jpvt, 0, (size_t)n * sizeof *jpvt); /* every column free to pivot */
    tl_lapack_int info = tl_lapacke_dgeqp3_work(TL_LAPACK_COL_MAJOR, (tl_lapack_int)N,
                                                (tl_lapack_int)n, Ct, (tl_lapack_int)N, jpvt, tau,
                                                lwork, (tl_lapack_int)lw);
    if (info != 0)
        return TL_ERR_LAPACK;

    /* the rank: leading |R_kk| above max(n, N) eps |R_11| (the pivoting
     * makes them non-increasing) */
    const ptrdiff_t kmax = N < n ? N : n;
    rk->r_first = fabs(Ct[0]);
    rk->tol = (double)(N > n ? N : n) * DBL_EPSILON * rk->r_first;
    ptrdiff_t rank = 0;
    while (rank < kmax && fabs(Ct[rank * N + rank]) > rk->tol)
        rank++;
    rk->rank = rank;
    rk->r_last = rank > 0 ? fabs(Ct[(rank - 1) * N + rank - 1]) : 0.0;
    rk->r_next = rank < kmax ? fabs(Ct[rank * N + rank]) : 0.0;
    if (rank < n)
        return TL_ERR_SINGULAR; /* some direction is unreachable in T steps */

    double rcond = 0.0;
    info = tl_lapacke_dtrcon_work(TL_LAPACK_COL_MAJOR, '1', 'U', 'N', (tl_lapack_int)n, Ct,
                                  (tl_lapack_int)N, &rcond, cwork, iwork);
    if (info != 0)
        return TL_ERR_LAPACK;
    plan->cond = rcond > 0.0 ? 1.0 / rcond : INFINITY;

    /* S = P^T D: row k is D[j] e_j with j = jpvt[k] - 1; L = R^T */
    memset(plan->S, 0, (size_t)nn * sizeof(double));
    for (ptrdiff_t k = 0; k < n; k++) {
        const ptrdiff_t j = (ptrdiff_t)jpvt[k] - 1;
        plan->S[k * n + j] = D[j];
        for (ptrdiff_t i = 0; i < n; i++)
            plan->L[k * n + i] = i < k ? Ct[k * N + i] : 0.0;
        plan->L[k * n + k] = 1.0 / Ct[k * N + k]; /* a multiply per sample, not a divide */
    }
    /* K = Q, explicitly (orthonormal columns: forming it costs nothing in
     * accuracy, unlike forming R^-T) */
    info = tl_lapacke_dorgqr_work(TL_LAPACK_COL_MAJOR, (tl_lapack_int)N, (tl_lapack_int)n,
                                  (tl_lapack_int)n, Ct, (tl_lapack_int)N, tau, lwork,
                                  (tl_lapack_int)lw);
    if (info != 0)
        return TL_ERR_LAPACK;
    for (ptrdiff_t r = 0; r < N; r++) /* the plan's K is row-major N x n */
        for (ptrdiff_t j = 0; j < n; j++)
            plan->K[r * n + j] = Ct[j * N + r];
    return TL_OK;
}

/* ---- average and continuous --------------------------------------------- */

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

/* average and continuous from the continuous (A, B) and dt (see the top of
 * this file). */
static tl_status model_plan(tl_ref_plan *plan, const double *A, const double *B, void *work)
{
    const ptrdiff_t n = plan->n, m = plan->m, T = plan->steps, nn = n * n;
    const double dt = plan->dt;
    double *Pow = (double *)work; /* Ad^j, j = 0 .. T */
    double *W = Pow + (T + 1) * nn, *G = W + nn, *Wdt = G + nn, *Wk = Wdt + nn;
    double *T1 = Wk + nn, *T2 = T1 + nn; /* T2 holds V_j = Ad^j Bd, n x m */
    double *Wt = T2 + n * (n > m ? n : m), *D = Wt + nn, *lwork = D + n;
    tl_lapack_int *iwork = (tl_lapack_int *)(lwork + 3 * n);
    void *sub = lwork + 4 * n;

    tl_status status = tl_discretize(TL_DISC_ZOH, n, m, A, B, dt, plan->Ad, plan->Bd, sub, NULL);
    if (status == TL_OK)
        status = tl_gramian(n, m, A, B, dt, Wdt, sub);
    if (status != TL_OK)
        return status;

    memset(Pow, 0, (size_t)nn * sizeof(double));
    tl_dense_add_identity(n, 1.0, Pow);
    for (ptrdiff_t j = 0; j < T; j++)
        tl_dense_matmul(n, n, n, plan->Ad, Pow + j * nn, Pow + (j + 1) * nn);
    memcpy(plan->AdT, Pow + T * nn, (size_t)nn * sizeof(double));

    /* the continuous Gramian W_c(H) = sum_j Ad^j W_c(dt) Ad^j^T and its inverse */
    memset(W, 0, (size_t)nn * sizeof(double));
    for (ptrdiff_t j = 0; j < T; j++)
        add_congruence(n, Pow + j * nn, Wdt, W, T1);
    status = spd_inverse(n, W, G, Wt, D, lwork, iwork, &plan->cond);
    if (status != TL_OK)
        return status;

    /* K block k = (Ad^{T-1-k} Bd)^T G / dt, the law averaged over interval k */
    const double scale = 1.0 / dt;
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

    /* continuous states: Q_k = W_c(k dt) (Ad^{T-k})^T W_c(H)^-1. x_k = Ad^k x0
     * + Q_k d cancels growing terms when Ad^k grows: refuse where that would
     * cost more than ~1e-10 of the state scale */
    if (plan->method == TL_REF_CONTINUOUS) {
        for (ptrdiff_t k = 0; k <= T; k++)
            plan->growth = fmax(plan->growth, tl_dense_norm1(n, Pow + k * nn));
        if (!(plan->growth <= TL_LAW_GROWTH_LIMIT))
            return TL_ERR_SINGULAR;
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

/* ---- plan ------------------------------------------------------------------ */

/* One sample of dyn as a system of its own: the sample's matrices, shared
 * (batch_stride 0, batch 0); time-varying fields keep their step strides. */
static tl_field sample_field(tl_field f, ptrdiff_t b)
{
    if (f.data != NULL)
        f.data += b * f.batch_stride;
    f.batch_stride = 0;
    return f;
}

tl_status tl_ref_plan_init(tl_ref_plan *plan, void *memory, tl_ref_method method,
                           const tl_dynamics *dyn, ptrdiff_t sample,
                           const double *A, const double *B, double dt,
                           ptrdiff_t steps, void *work)
{
    if (plan == NULL || dyn == NULL || (int)method < 0 || method >= TL_REF_COUNT)
        return TL_ERR_VALUE;
    const int exact = method == TL_REF_EXACT;
    if (!exact && dyn->steps != 0)
        return TL_ERR_VALUE; /* a time-varying system has no continuous model */
    tl_status status = tl_dynamics_check(dyn, dyn->batch, steps);
    if (status != TL_OK)
        return status;
    const ptrdiff_t n = dyn->n, m = dyn->m, T = steps, nn = n * n;
    if (sample < 0 || sample >= (dyn->batch > 0 ? dyn->batch : 1))
        return TL_ERR_SHAPE;
    /* steps >= 1, and few enough that the plan and the scratch are addressable
     * (then no size or index below overflows) */
    if (T < 1 || tl_ref_plan_bytes(n, m, T, method) == 0 ||
        tl_ref_init_work_bytes(n, m, T, method) == 0)
        return TL_ERR_SHAPE;
    if (exact && T > INT32_MAX / m) /* C^T's rows, a LAPACK int */
        return TL_ERR_SHAPE;
    if (!isfinite(dt) || dt <= 0.0 || (!exact && (A == NULL || B == NULL)))
        return TL_ERR_VALUE;
    if (memory == NULL || work == NULL)
        return TL_ERR_NOMEM;

    double *p = (double *)memory;
    plan->n = n, plan->m = m, plan->steps = T, plan->method = method, plan->dt = dt;
    plan->cond = INFINITY;
    plan->growth = 0.0;
    plan->rank = (tl_ref_rank){0, 0.0, 0.0, 0.0, 0.0};
    plan->AdT = p, p += nn;
    plan->drift = p, p += n;
    plan->K = p, p += T * m * n;
    plan->Ad = plan->Bd = plan->S = plan->L = plan->Q = NULL;
    if (exact) {
        plan->S = p, plan->L = p + nn;
        plan->dyn = *dyn;
        plan->dyn.batch = 0;
        plan->dyn.A = sample_field(dyn->A, sample);
        plan->dyn.B = sample_field(dyn->B, sample);
        plan->dyn.c = sample_field(dyn->c, sample);
        return exact_plan(plan, &plan->dyn, (double *)work);
    }
    plan->Ad = p, p += nn;
    plan->Bd = p, p += n * m;
    if (method == TL_REF_CONTINUOUS)
        plan->Q = p;
    memset(plan->drift, 0, (size_t)n * sizeof(double));
    plan->dyn = tl_dynamics_linear(n, m, plan->Ad, plan->Bd);
    return model_plan(plan, A, B, work);
}

/* ---- apply ------------------------------------------------------------ */

/* Samples a tile of tl_ref_apply holds side by side. */
#define TL_REF_TILE 8

size_t tl_ref_apply_work_bytes(ptrdiff_t n, ptrdiff_t m)
{
    const size_t roll = tl_rollout_work_bytes(n, m);
    if (roll == 0)
        return 0;
    /* d, y, yn; a tile's x_k, d, z and u_k */
    return ((3 + 3 * TL_REF_TILE) * (size_t)n + TL_REF_TILE * (size_t)m) * sizeof(double) + roll;
}

/* d = xf - Phi(T, 0) x0 - r: what the controls must add to the free response */
static void target_gap(const tl_ref_plan *plan, const double *x, const double *f, double *d)
{
    const ptrdiff_t n = plan->n;
    matvec(n, n, plan->AdT, x, d);
    for (ptrdiff_t i = 0; i < n; i++)
        d[i] = f[i] - d[i] - plan->drift[i];
}

/* One sample's controls u (T x m) from d; y is n doubles of scratch. */
static void sample_controls(const tl_ref_plan *plan, const double *d, double *y, double *u)
{
    const ptrdiff_t n = plan->n, Tm = plan->steps * plan->m;
    if (plan->L == NULL) { /* average, continuous: U = K d */
        matvec(Tm, n, plan->K, d, u);
        return;
    }
    /* exact: U = Q z, R^T z = P^T D d (L's diagonal holds 1 / R_kk) */
    matvec(n, n, plan->S, d, y);
    for (ptrdiff_t i = 0; i < n; i++) {
        double acc = y[i];
        for (ptrdiff_t j = 0; j < i; j++)
            acc -= plan->L[i * n + j] * y[j];
        y[i] = acc * plan->L[i * n + i];
    }
    matvec(Tm, n, plan->K, y, u);
}

/*
 * TL_REF_TILE samples side by side, the sample index innermost (where the
 * compiler vectorises the loops whatever n and m are): their controls and
 * energies -- the operations of target_gap and sample_controls, in their
 * order -- and their rollout under plan->dyn -- the operations of
 * tl_rollout's step (rollout.h: acc = c_k, += A_k x, += B_k u), in its
 * order -- with the final errors. So the same bits as one sample at a time
 * through sample_controls and tl_rollout, at the cost the fused per-sample
 * loops of a shared system had before. The states are not stored for
 * continuous (they are computed afterwards). w holds (3 n + m) TL_REF_TILE
 * doubles.
 */
static void tile_reference(const tl_ref_plan *plan, const double *x0, const double *xf,
                           double *controls, double *states, double *final_error,
                           double *energy, double *w)
{
    enum { L = TL_REF_TILE };
    const ptrdiff_t n = plan->n, m = plan->m, T = plan->steps, Tm = T * m, ss = (T + 1) * n;
    const int store = plan->method != TL_REF_CONTINUOUS;
    /* X: x_k; D: d, then (average) z; Y: (exact) z; the other of D, Y: x_{k+1} */
    double *X = w, *D = X + n * L, *Y = D + n * L, acc[L];
    for (ptrdiff_t i = 0; i < n; i++)
        for (int l = 0; l < L; l++)
            X[i * L + l] = x0[l * n + i];
    for (ptrdiff_t i = 0; i < n; i++) { /* d = xf - Phi(T, 0) x0 - r */
        for (int l = 0; l < L; l++)
            acc[l] = 0.0;
        for (ptrdiff_t j = 0; j < n; j++)
            for (int l = 0; l < L; l++)
                acc[l] += plan->AdT[i * n + j] * X[j * L + l];
        for (int l = 0; l < L; l++)
            D[i * L + l] = xf[l * n + i] - acc[l] - plan->drift[i];
    }
    const double *Z = D;
    if (plan->L != NULL) { /* exact: R^T z = P^T D d */
        for (ptrdiff_t i = 0; i < n; i++) {
            for (int l = 0; l < L; l++)
                acc[l] = 0.0;
            for (ptrdiff_t j = 0; j < n; j++)
                for (int l = 0; l < L; l++)
                    acc[l] += plan->S[i * n + j] * D[j * L + l];
            for (int l = 0; l < L; l++)
                Y[i * L + l] = acc[l];
        }
        for (ptrdiff_t i = 0; i < n; i++) {
            for (int l = 0; l < L; l++)
                acc[l] = Y[i * L + l];
            for (ptrdiff_t j = 0; j < i; j++)
                for (int l = 0; l < L; l++)
                    acc[l] -= plan->L[i * n + j] * Y[j * L + l];
            for (int l = 0; l < L; l++)
                Y[i * L + l] = acc[l] * plan->L[i * n + i];
        }
        Z = Y;
    }
    /* step by step: u_k = K_k z (its energy summed in the order of
     * sample_controls), then x_{k+1} = A_k x_k + B_k u_k + c_k */
    double e[L], *Xn = Z == D ? Y : D, *U = w + 3 * n * L;
    for (int l = 0; l < L; l++)
        e[l] = 0.0;
    for (ptrdiff_t i = 0; i < n && store; i++)
        for (int l = 0; l < L; l++)
            states[l * ss + i] = X[i * L + l];
    for (ptrdiff_t k = 0; k < T; k++) {
        for (ptrdiff_t j = 0; j < m; j++) {
            const double *Kr = plan->K + (k * m + j) * n;
            for (int l = 0; l < L; l++)
                acc[l] = 0.0;
            for (ptrdiff_t i = 0; i < n; i++)
                for (int l = 0; l < L; l++)
                    acc[l] += Kr[i] * Z[i * L + l];
            for (int l = 0; l < L; l++) {
                U[j * L + l] = acc[l];
                e[l] += acc[l] * acc[l];
            }
        }
        for (ptrdiff_t j = 0; j < m; j++)
            for (int l = 0; l < L; l++)
                controls[l * Tm + k * m + j] = U[j * L + l];
        const double *A = tl_dyn_A(&plan->dyn, 0, k), *B = tl_dyn_B(&plan->dyn, 0, k);
        const double *c = tl_dyn_c(&plan->dyn, 0, k);
        for (ptrdiff_t i = 0; i < n; i++) {
            for (int l = 0; l < L; l++)
                acc[l] = c != NULL ? c[i] : 0.0;
            for (ptrdiff_t j = 0; j < n; j++)
                for (int l = 0; l < L; l++)
                    acc[l] += A[i * n + j] * X[j * L + l];
            for (ptrdiff_t j = 0; j < m; j++)
                for (int l = 0; l < L; l++)
                    acc[l] += B[i * m + j] * U[j * L + l];
            for (int l = 0; l < L; l++)
                Xn[i * L + l] = acc[l];
        }
        double *swap = X;
        X = Xn, Xn = swap;
        for (ptrdiff_t i = 0; i < n && store; i++)
            for (int l = 0; l < L; l++)
                states[l * ss + (k + 1) * n + i] = X[i * L + l];
    }
    for (int l = 0; l < L; l++)
        energy[l] = e[l] * plan->dt;
    for (int l = 0; l < L; l++)
        final_error[l] = distance(n, X + l, L, xf + l * n);
}

tl_status tl_ref_apply(const tl_ref_plan *plan, ptrdiff_t batch, const double *x0,
                       const double *xf, double *controls, double *states,
                       double *final_error, double *energy, void *work)
{
    if (plan == NULL || batch < 0)
        return plan == NULL ? TL_ERR_VALUE : TL_ERR_SHAPE;
    if (work == NULL)
        return TL_ERR_NOMEM;
    const ptrdiff_t n = plan->n, m = plan->m, T = plan->steps, nn = n * n;
    double *d = (double *)work, *y = d + n, *yn = y + n, *tile = yn + n;
    double *rwork = tile + TL_REF_TILE * (3 * n + m);
    ptrdiff_t b0 = 0;
    for (; b0 + TL_REF_TILE <= batch; b0 += TL_REF_TILE)
        tile_reference(plan, x0 + b0 * n, xf + b0 * n, controls + b0 * T * m,
                       states + b0 * (T + 1) * n, final_error + b0, energy + b0, tile);
    /* the last few one at a time: their controls, then tl_rollout */
    for (ptrdiff_t b = b0; b < batch; b++) {
        double *u = controls + b * T * m;
        target_gap(plan, x0 + b * n, xf + b * n, d);
        sample_controls(plan, d, y, u);
        double e = 0.0;
        for (ptrdiff_t i = 0; i < T * m; i++)
            e += u[i] * u[i];
        energy[b] = e * plan->dt;
    }
    tl_status status = tl_rollout(&plan->dyn, TL_F64, batch - b0, T, x0 + b0 * n,
                                  controls + b0 * T * m, states + b0 * (T + 1) * n, rwork);
    if (status != TL_OK)
        return status;
    for (ptrdiff_t b = b0; b < batch; b++)
        final_error[b] = distance(n, states + (b * (T + 1) + T) * n, 1, xf + b * n);
    if (plan->method != TL_REF_CONTINUOUS)
        return TL_OK;
    /* continuous: x(k dt) = Ad^k x0 + Q_k d, Ad^k x0 carried in y */
    for (ptrdiff_t b = 0; b < batch; b++) {
        const double *x = x0 + b * n;
        double *s = states + b * (T + 1) * n;
        target_gap(plan, x, xf + b * n, d);
        memcpy(y, x, (size_t)n * sizeof(double));
        for (ptrdiff_t k = 0; k <= T; k++) {
            matvec(n, n, plan->Q + k * nn, d, s + k * n);
            for (ptrdiff_t i = 0; i < n; i++)
                s[k * n + i] += y[i];
            matvec(n, n, plan->Ad, y, yn);
            memcpy(y, yn, (size_t)n * sizeof(double));
        }
    }
    return TL_OK;
}

/* ---- a batch over any linear form ------------------------------------- */

static double field_double(const tl_field *f, ptrdiff_t b)
{
    return f->data[b * f->batch_stride];
}

size_t tl_min_energy_work_bytes(ptrdiff_t n, ptrdiff_t m, ptrdiff_t steps,
                                tl_ref_method method)
{
    const size_t plan = tl_ref_plan_bytes(n, m, steps, method);
    const size_t init = tl_ref_init_work_bytes(n, m, steps, method);
    const size_t apply = tl_ref_apply_work_bytes(n, m);
    const size_t more = init > apply ? init : apply;
    if (plan == 0 || init == 0 || apply == 0 || more > SIZE_MAX - plan)
        return 0;
    return plan + more;
}

static void note_plan(tl_ref_info *info, const tl_ref_plan *plan, ptrdiff_t b, int failed)
{
    info->plans++;
    info->sample = b;
    info->cond = failed || info->plans == 1 ? plan->cond : fmax(info->cond, plan->cond);
    info->growth = failed ? plan->growth : fmax(info->growth, plan->growth);
    info->rank = plan->rank;
}

tl_status tl_min_energy(tl_ref_method method, const tl_dynamics *dyn, const tl_ref_model *model,
                        ptrdiff_t steps, ptrdiff_t batch, const double *x0, const double *xf,
                        double *controls, double *states, double *final_error, double *energy,
                        tl_ref_info *info, void *work, const tl_cancel *cancel)
{
    if (info == NULL || dyn == NULL || model == NULL || model->dt.data == NULL)
        return TL_ERR_VALUE;
    *info = (tl_ref_info){0, 0, INFINITY, 0.0, {0, 0.0, 0.0, 0.0, 0.0}};
    if (batch < 0)
        return TL_ERR_SHAPE;
    tl_status status = tl_dynamics_check(dyn, batch, steps);
    if (status != TL_OK)
        return status;
    const ptrdiff_t n = dyn->n, m = dyn->m;
    const size_t plan_bytes = tl_ref_plan_bytes(n, m, steps, method);
    if (plan_bytes == 0 || tl_min_energy_work_bytes(n, m, steps, method) == 0)
        return TL_ERR_SHAPE;
    if (work == NULL)
        return TL_ERR_NOMEM;
    const int continuous = method != TL_REF_EXACT;
    if (continuous && (model->A.data == NULL || model->B.data == NULL))
        return TL_ERR_VALUE;
    const int per_sample =
        model->dt.batch_stride != 0 ||
        (continuous ? model->A.batch_stride != 0 || model->B.batch_stride != 0
                    : dyn->A.batch_stride != 0 || dyn->B.batch_stride != 0 ||
                          (dyn->c.data != NULL && dyn->c.batch_stride != 0));
    void *mem = work, *sub = (char *)work + plan_bytes;
    tl_ref_plan plan;
    const ptrdiff_t plans = per_sample ? batch : 1; /* a shared plan even for no sample */
    for (ptrdiff_t q = 0; q < plans; q++) {
        if (per_sample && cancel != NULL && cancel->poll != NULL && cancel->poll(cancel->ctx))
            return TL_ERR_INTERRUPTED;
        const ptrdiff_t b = per_sample ? q : 0, count = per_sample ? 1 : batch;
        plan.cond = INFINITY, plan.growth = 0.0; /* what a plan refused early reports */
        plan.rank = (tl_ref_rank){0, 0.0, 0.0, 0.0, 0.0};
        status = tl_ref_plan_init(&plan, mem, method, dyn, dyn->batch > 0 ? b : 0,
                                  continuous ? tl_field_at(&model->A, b, 0) : NULL,
                                  continuous ? tl_field_at(&model->B, b, 0) : NULL,
                                  field_double(&model->dt, b), steps, sub);
        note_plan(info, &plan, b, status != TL_OK);
        if (status == TL_OK)
            status = tl_ref_apply(&plan, count, x0 + b * n, xf + b * n,
                                  controls + b * steps * m, states + b * (steps + 1) * n,
                                  final_error + b, energy + b, sub);
        if (status != TL_OK)
            return status;
    }
    return TL_OK;
}
/* ---- the continuous law at arbitrary times ---------------------------- */

size_t tl_min_energy_law_work_bytes(ptrdiff_t n, ptrdiff_t m)
{
    if (n < 1 || n > TL_MAX_DIM || m < 1 || m > TL_MAX_DIM)
        return 0;
    const size_t nn = (size_t)(n * n);
    /* EH, EmH, G, Et, EHt, Wt, Wtmp, Ah; Bh; D, d, lam, v; dpocon work;
     * pivots (double slots) */
    size_t bytes = (8 * nn + (size_t)(n * m) + 8 * (size_t)n) * sizeof(double);
    size_t e = tl_expm_work_bytes(n), g = tl_gramian_work_bytes(n);
    return bytes + (e > g ? e : g);
}

/* Up to this growth of e^{At} the law is evaluated forward (see below). */
#define TL_LAW_FORWARD_GROWTH 1e3

/* E = e^{A st} (st a signed time) */
static tl_status expm_at(ptrdiff_t n, const double *A, double st, double *E, double *At, void *sub)
{
    for (ptrdiff_t i = 0; i < n * n; i++)
        At[i] = A[i] * st;
    return tl_expm(n, At, E, sub, NULL);
}

tl_status tl_min_energy_law(ptrdiff_t n, ptrdiff_t m, const double *A, const double *B,
                            double horizon, ptrdiff_t batch, const double *x0, const double *xf,
                            ptrdiff_t ntimes, const double *times, double *u, double *x,
                            tl_law_info *info, void *work)
{
    *info = (tl_law_info){INFINITY, 0.0, 0};
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
    double *EH = (double *)work, *EmH = EH + nn, *G = EmH + nn, *Et = G + nn, *EHt = Et + nn;
    double *Wt = EHt + nn, *Wtmp = Wt + nn, *Ah = Wtmp + nn, *Bh = Ah + nn;
    double *D = Bh + n * m, *d = D + n, *lam = d + n, *v = lam + n;
    double *lwork = v + n;
    tl_lapack_int *iwork = (tl_lapack_int *)(lwork + 3 * n);
    void *sub = lwork + 4 * n;

    /* the direction: forward (A, B) from x0 unless e^{AH} grows by more than
     * TL_LAW_FORWARD_GROWTH and e^{-AH} less, then the time-reversed system
     * (-A, -B) from xf, whose law at s = H - t is the same u(t), x(t). Forward
     * keeps x(0) = x0 exact (W_c(0) = 0) and costs at most ~1e3 eps of the
     * state scale to cancellation below that growth. */
    tl_status status = expm_at(n, A, horizon, EH, Wtmp, sub);
    if (status == TL_OK)
        status = expm_at(n, A, -horizon, EmH, Wtmp, sub);
    if (status != TL_OK)
        return status;
    const double gf = tl_dense_norm1(n, EH), gb = tl_dense_norm1(n, EmH);
    const int back = gf > TL_LAW_FORWARD_GROWTH && gb < gf;
    const double sign = back ? -1.0 : 1.0;
    for (ptrdiff_t i = 0; i < nn; i++)
        Ah[i] = sign * A[i];
    for (ptrdiff_t i = 0; i < n * m; i++)
        Bh[i] = sign * B[i];
    if (back)
        memcpy(EH, EmH, (size_t)nn * sizeof(double));
    const double *s0 = back ? xf : x0, *s1 = back ? x0 : xf;
    info->backward = back;
    info->growth = back ? gb : gf;
    if (!(info->growth <= TL_LAW_GROWTH_LIMIT))
        return TL_ERR_SINGULAR;

    /* G = W_c(H)^-1 of the direction used */
    status = tl_gramian(n, m, Ah, Bh, horizon, Wt, sub);
    if (status != TL_OK)
        return status;
    status = spd_inverse(n, Wt, G, Wtmp, D, lwork, iwork, &info->cond);
    if (status != TL_OK)
        return status;

    for (ptrdiff_t q = 0; q < ntimes; q++) {
        const double t = back ? horizon - times[q] : times[q];
        if ((status = expm_at(n, Ah, t, Et, Wtmp, sub)) != TL_OK ||
            (status = expm_at(n, Ah, horizon - t, EHt, Wtmp, sub)) != TL_OK ||
            (status = tl_gramian(n, m, Ah, Bh, t, Wt, sub)) != TL_OK)
            return status;
        info->growth = fmax(info->growth, fmax(tl_dense_norm1(n, Et), tl_dense_norm1(n, EHt)));
        if (!(info->growth <= TL_LAW_GROWTH_LIMIT))
            return TL_ERR_SINGULAR;
        for (ptrdiff_t b = 0; b < batch; b++) {
            const double *xb = s0 + b * n, *fb = s1 + b * n;
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
                    acc += Bh[i * m + c] * v[i];
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
