/*
 * expm.c -- the matrix exponential by scaling and squaring (A. H. Al-Mohy and
 * N. J. Higham, "A new scaling and squaring algorithm for the matrix
 * exponential", SIAM J. Matrix Anal. Appl. 31(3), 2009, Algorithm 6.1).
 *
 *   1. Balance (LAPACK dgebal): a permutation, which exposes triangular and
 *      block-triangular structure, and a diagonal scaling by powers of two,
 *      kept only when it lowers the 1-norm (see balance()). Both are exact
 *      similarities and are undone exactly at the end.
 *   2. Choose the Pade degree m in {3, 5, 7, 9, 13} and the scaling 2^-s from
 *      d_k = ||A^k||_1^{1/k} of the powers the approximant needs anyway
 *      (A^2, A^4, A^6, and A^8, A^10 before degree 13), not from ||A||_1:
 *      for non-normal A, d_k can be far below ||A||_1, and scaling by ||A||_1
 *      (overscaling) makes the squarings amplify rounding errors. ell(A, m)
 *      adds the squarings the backward-error bound of a degree-m approximant
 *      still needs when |A| has much larger powers than A.
 *   3. r_m(A) = q_m(A)^{-1} p_m(A); a triangular solve when A is triangular,
 *      so that the result is exactly triangular. A nilpotent A (A^q = 0 by
 *      its sparsity pattern, q <= 27, e.g. a chain of integrators) skips
 *      steps 2-4: its Taylor polynomial of degree q - 1 is exp(A) exactly.
 *   4. Square s times. For triangular A, the diagonal of each squared iterate
 *      is replaced by exp(2^-i a_kk) and its first off-diagonal by the closed
 *      form of the 2 x 2 exponential (their Code Fragment 2.1).
 *
 * Layout: our buffers are row-major and LAPACK is called column-major, so
 * LAPACK sees the transposes. U, V and every power here are polynomials in A
 * and commute, so (V - U)^T X^T = (V + U)^T has the same solution X as
 * (V - U) X = V + U, and no transposition is needed. The orientation matters
 * only for structure: see should_transpose().
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "dense.h"
#include "tl_lapack.h"
#include "trajloss.h"

/* Coefficients of the numerator p_m(x) = sum_j b_j x^j; q_m(x) = p_m(-x). */
static const double PADE3[] = {120.0, 60.0, 12.0, 1.0};
static const double PADE5[] = {30240.0, 15120.0, 3360.0, 420.0, 30.0, 1.0};
static const double PADE7[] = {17297280.0, 8648640.0, 1995840.0, 277200.0,
                               25200.0, 1512.0, 56.0, 1.0};
static const double PADE9[] = {17643225600.0, 8821612800.0, 2075673600.0, 302702400.0,
                               30270240.0, 2162160.0, 110880.0, 3960.0, 90.0, 1.0};
static const double PADE13[] = {64764752532480000.0, 32382376266240000.0,
                                7771770303897600.0, 1187353796428800.0,
                                129060195264000.0, 10559470521600.0, 670442572800.0,
                                33522128640.0, 1323241920.0, 40840800.0, 960960.0,
                                16380.0, 182.0, 1.0};

/* theta_m: the largest d_k for which r_m has backward error below 2^-53
 * (Al-Mohy and Higham 2009, Table 3.1). c_m: 1 / |c_{2m+1}|, the reciprocal
 * of the leading coefficient of the backward-error series of r_m (Higham
 * 2005, eqs. 2.2 and 2.6), used by ell(A, m). */
static const struct {
    int degree;
    double theta;
    double c_recip;
    const double *coef;
} PADE_TABLE[] = {
    {3, 1.495585217958292e-2, 100800.0, PADE3},
    {5, 2.539398330063230e-1, 10059033600.0, PADE5},
    {7, 9.504178996162932e-1, 4487938430976000.0, PADE7},
    {9, 2.097847961257068e0, 5914384781877411840000.0, PADE9},
    {13, 5.371920351148152e0, 113250775606021113483283660800000000.0, PADE13},
};
enum { PADE_LOW = 4, PADE_13 = 4 }; /* degrees 3..9 are entries 0..3; 13 is entry 4 */

/* More squarings than this cannot be useful: 2^-S_MAX ||A|| is below the
 * smallest double for any finite A. */
enum { S_MAX = 1100 };

enum { EXPM_BUFFERS = 8, EXPM_VECTORS = 5 }; /* n x n and n-long double buffers */

size_t tl_expm_work_bytes(ptrdiff_t n)
{
    if (n < 1 || n > 2 * TL_MAX_DIM)
        return 0;
    const size_t nn = (size_t)n * (size_t)n;
    return (EXPM_BUFFERS * nn + EXPM_VECTORS * (size_t)n) * sizeof(double) +
           2 * (size_t)n * sizeof(tl_lapack_int);
}

/* The scratch space of one call, carved out of `work`. */
typedef struct {
    ptrdiff_t n;
    double *W;                  /* the balanced matrix, later scaled by 2^-s */
    double *P2, *P4, *P6, *P8;  /* its even powers */
    double *U, *V, *X;          /* Pade numerator parts and the result */
    double *scale;              /* dgebal's output */
    double *vec;                /* 2n: ell's vectors */
    double *diag, *sub;         /* the unscaled diagonal and subdiagonal of W */
    tl_lapack_int *ipiv, *perm;
    const tl_cancel *cancel;
} expm_ws;

static int cancelled(const tl_cancel *cancel)
{
    return cancel != NULL && cancel->poll != NULL && cancel->poll(cancel->ctx) != 0;
}

/* C = A B, polled after every panel of PANEL_ROWS rows: the products are the
 * heavy steps, and a panel (2 n^2 PANEL_ROWS flops, about half a second at
 * n = 2048) bounds the wait for a cancel where a whole product of n = 4096
 * takes several seconds. Smaller panels cost more than they give: each one
 * packs all of B again (256 rows: +60% time at n = 2048, 1024 rows: +12%).
 * The panels are the same with or without a cancel hook, so the hook never
 * changes the result. */
enum { PANEL_ROWS = 1024 };

static tl_status mul(const expm_ws *w, const double *A, const double *B, double *C)
{
    const ptrdiff_t n = w->n;
    const ptrdiff_t panel = n < 2 * PANEL_ROWS ? n : PANEL_ROWS;
    for (ptrdiff_t r = 0; r < n; r += panel) {
        const ptrdiff_t rows = n - r < panel ? n - r : panel;
        tl_dense_gemm(rows, n, A + r * n, B, C + r * n);
        if (cancelled(w->cancel))
            return TL_ERR_INTERRUPTED;
    }
    return TL_OK;
}

/* ---- balancing ------------------------------------------------------------ */

/* dgebal on W (which LAPACK sees as W^T) gives a permutation p and scaling d.
 * We do not use the matrix dgebal returns but form the similarity ourselves,
 *   B[i][k] = W[p i][p k] d_i / d_k,   and undo it with
 *   E[p i][p k] = exp(B)[i][k] d_k / d_i,
 * so the undoing is exact (d are powers of two) and cannot disagree with the
 * forward transform whatever LAPACK's conventions. */
static tl_status balance_info(expm_ws *w, double *tmp, char job)
{
    const ptrdiff_t n = w->n;
    memcpy(tmp, w->W, (size_t)(n * n) * sizeof(double));
    tl_lapack_int ilo, ihi;
    tl_lapack_int info = tl_lapacke_dgebal_work(TL_LAPACK_COL_MAJOR, job, (tl_lapack_int)n, tmp,
                                                (tl_lapack_int)n, &ilo, &ihi, w->scale);
    if (info != 0)
        return TL_ERR_LAPACK;
    /* The interchanges were made for j = n .. ihi+1, then j = 1 .. ilo-1 (1-based). */
    for (ptrdiff_t i = 0; i < n; i++)
        w->perm[i] = (tl_lapack_int)i;
    for (ptrdiff_t j = n - 1; j >= ihi; j--) {
        const ptrdiff_t k = (ptrdiff_t)w->scale[j] - 1;
        const tl_lapack_int t = w->perm[j];
        w->perm[j] = w->perm[k], w->perm[k] = t;
        w->scale[j] = 1.0;
    }
    for (ptrdiff_t j = 0; j < ilo - 1; j++) {
        const ptrdiff_t k = (ptrdiff_t)w->scale[j] - 1;
        const tl_lapack_int t = w->perm[j];
        w->perm[j] = w->perm[k], w->perm[k] = t;
        w->scale[j] = 1.0;
    }
    return TL_OK;
}

static void balance_apply(const expm_ws *w, const double *src, double *dst)
{
    const ptrdiff_t n = w->n;
    for (ptrdiff_t i = 0; i < n; i++) {
        const double *row = src + (ptrdiff_t)w->perm[i] * n;
        for (ptrdiff_t k = 0; k < n; k++)
            dst[i * n + k] = row[w->perm[k]] * w->scale[i] / w->scale[k];
    }
}

/* Balancing jobs: dgebal's own 'P' (permute) and 'B' (permute, then scale
 * what the permutation left), and ours, PERMUTE_SCALE_ALL: dgebal's
 * permutation, then dgebal's scaling ('S') of the whole permuted matrix. */
enum { PERMUTE_SCALE_ALL = 'A' };

/* Fills w->perm and w->scale for `job`; `tmp` is n x n scratch. */
static tl_status balance_job(expm_ws *w, double *tmp, char job)
{
    if (job != PERMUTE_SCALE_ALL)
        return balance_info(w, tmp, job);
    tl_status status = balance_info(w, tmp, 'P');
    if (status != TL_OK)
        return status;
    balance_apply(w, w->W, tmp); /* the permuted W (the scale is 1 here) */
    tl_lapack_int ilo, ihi;
    const tl_lapack_int ni = (tl_lapack_int)w->n;
    if (tl_lapacke_dgebal_work(TL_LAPACK_COL_MAJOR, 'S', ni, tmp, ni, &ilo, &ihi, w->scale) != 0)
        return TL_ERR_LAPACK;
    return TL_OK;
}

/* The 1-norm W would have after balancing with `job`. */
static tl_status balanced_norm(expm_ws *w, double *tmp, char job, double *norm)
{
    tl_status status = balance_job(w, tmp, job);
    if (status != TL_OK)
        return status;
    balance_apply(w, w->W, tmp);
    *norm = tl_dense_norm1(w->n, tmp);
    return TL_OK;
}

/* W := the balanced W; `tmp` is an n x n scratch buffer.
 * Of three candidates the one with the smallest 1-norm wins (ties go to the
 * fewer transformations):
 *   'P'  permutation only: an exact similarity that keeps the norm;
 *   'B'  permutation, then scaling of the part the permutation left;
 *   PERMUTE_SCALE_ALL: permutation, then scaling of everything. 'B' leaves
 *        the rows it isolates out of the scaling, and when those are the
 *        zero rows of a ZOH matrix [[A, B], [0, 0]] the B block comes out
 *        scaled by A's factors (up to 1e150 where A's entries span 1e300);
 *        scaling all of it balances A and B together.
 * Every candidate permutes, so a permuted triangular matrix always becomes
 * triangular, and diagonal scaling keeps it so. */
static tl_status balance(expm_ws *w, double *tmp)
{
    const double norm_p = tl_dense_norm1(w->n, w->W);
    double norm_b, norm_a;
    tl_status status;
    if ((status = balanced_norm(w, tmp, 'B', &norm_b)) != TL_OK ||
        (status = balanced_norm(w, tmp, PERMUTE_SCALE_ALL, &norm_a)) != TL_OK)
        return status;
    char job = 'P';
    if (norm_b < norm_p && norm_b <= norm_a)
        job = 'B';
    else if (norm_a < norm_p && norm_a < norm_b)
        job = PERMUTE_SCALE_ALL;
    if ((status = balance_job(w, tmp, job)) != TL_OK)
        return status;
    balance_apply(w, w->W, tmp);
    memcpy(w->W, tmp, (size_t)(w->n * w->n) * sizeof(double));
    return TL_OK;
}

static void unbalance(const expm_ws *w, const double *X, double *E)
{
    const ptrdiff_t n = w->n;
    for (ptrdiff_t i = 0; i < n; i++) {
        double *row = E + (ptrdiff_t)w->perm[i] * n;
        for (ptrdiff_t k = 0; k < n; k++)
            row[w->perm[k]] = X[i * n + k] * w->scale[k] / w->scale[i];
    }
}

/* ---- structure ------------------------------------------------------------ */

/* Should W be transposed before the rest? Our canonical orientation has the
 * zeros above the diagonal (row-major lower, which LAPACK sees as upper): the
 * LU factorisation with partial pivoting of a matrix that is block upper
 * triangular in LAPACK's view never pivots across the blocks, and its
 * multipliers there are exactly zero, so block-triangular structure survives
 * the solve exactly; it would not in the other orientation. dgebal's
 * permutation already produces this orientation; exp(W^T) = exp(W)^T turns
 * the other one round. */
static int should_transpose(ptrdiff_t n, const double *W)
{
    ptrdiff_t zeros_below = 0, zeros_above = 0;
    for (ptrdiff_t i = 0; i < n; i++)
        for (ptrdiff_t k = 0; k < n; k++)
            if (W[i * n + k] == 0.0) {
                zeros_below += k < i;
                zeros_above += k > i;
            }
    return zeros_below > zeros_above;
}

/* Is W lower triangular (every entry above the diagonal zero)? */
static int lower_triangular(ptrdiff_t n, const double *W)
{
    for (ptrdiff_t i = 0; i < n; i++)
        for (ptrdiff_t k = i + 1; k < n; k++)
            if (W[i * n + k] != 0.0)
                return 0;
    return 1;
}

/* (e^b - e^a) / (b - a), the divided difference of exp, without the
 * cancellation of the plain formula when a and b are close: it equals
 * exp((a + b) / 2) sinh(x) / x with x = (b - a) / 2 (Higham, Functions of
 * Matrices, eq. 10.42). */
static double exp_divdiff(double a, double b)
{
    const double x = 0.5 * (b - a);
    if (fabs(x) >= 1.0) /* no cancellation worth the name, and no sinh overflow */
        return (exp(b) - exp(a)) / (b - a);
    const double sinch = x == 0.0 ? 1.0 : sinh(x) / x;
    return exp(0.5 * a + 0.5 * b) * sinch;
}

/* X := X with the diagonal and subdiagonal of exp(2^-i T) put in, where T is
 * lower triangular with diagonal `diag` and subdiagonal `sub`: each is the
 * exponential of a 1 x 1 or 2 x 2 diagonal block. */
static void fix_triangular(const expm_ws *w, int i, double *X)
{
    const ptrdiff_t n = w->n;
    for (ptrdiff_t k = 0; k < n; k++)
        X[k * n + k] = exp(ldexp(w->diag[k], -i));
    for (ptrdiff_t k = 0; k + 1 < n; k++)
        X[(k + 1) * n + k] = ldexp(w->sub[k], -i) *
                           exp_divdiff(ldexp(w->diag[k], -i), ldexp(w->diag[k + 1], -i));
}

/* ---- degree and scaling ---------------------------------------------------- */

/* ell(2^-s W, m) = max(0, ceil(log2(alpha / u) / (2m))) with
 * alpha = |c_{2m+1}| || |2^-s W|^{2m+1} ||_1 / ||2^-s W||_1 and u = 2^-53:
 * the extra squarings the backward-error bound needs. The 1-norm of the
 * nonnegative power is exact, 1^T |W|^{2m+1}, by 2m+1 vector products; the
 * vector is renormalised at each step (its log2 scale kept apart) so that
 * nothing overflows. */
static int ell(const expm_ws *w, int entry, int s)
{
    const ptrdiff_t n = w->n;
    const int m = PADE_TABLE[entry].degree;
    double *v = w->vec, *t = w->vec + n, log2_norm = 0.0;
    for (ptrdiff_t j = 0; j < n; j++)
        v[j] = 1.0;
    for (int p = 0; p < 2 * m + 1; p++) {
        for (ptrdiff_t j = 0; j < n; j++)
            t[j] = 0.0;
        for (ptrdiff_t i = 0; i < n; i++) {
            const double vi = v[i];
            const double *row = w->W + i * n;
            if (vi != 0.0)
                for (ptrdiff_t j = 0; j < n; j++)
                    t[j] += vi * fabs(row[j]);
        }
        double top = 0.0;
        for (ptrdiff_t j = 0; j < n; j++)
            top = fmax(top, t[j]);
        if (top == 0.0)
            return 0; /* the power vanished (or underflowed): nothing to add */
        for (ptrdiff_t j = 0; j < n; j++)
            v[j] = t[j] / top;
        log2_norm += log2(top);
    }
    /* the scaling 2^-s enters the power 2m+1 times and the norm once */
    const double log2_alpha = log2_norm - 2.0 * m * s - log2(tl_dense_norm1(n, w->W)) -
                              log2(PADE_TABLE[entry].c_recip);
    const double value = ceil((log2_alpha + 53.0) / (2.0 * m));
    return value > 0.0 ? (int)fmin(value, (double)S_MAX) : 0;
}

/* The smallest q <= limit with W^q = 0 by the sparsity pattern alone (so
 * that no underflow can fake it), or 0 if there is none. The pattern of
 * 1^T W^p is followed by p boolean vector products. */
static int nilpotency_index(const expm_ws *w, int limit)
{
    const ptrdiff_t n = w->n;
    double *reach = w->vec, *next = w->vec + n;
    for (ptrdiff_t j = 0; j < n; j++)
        if (w->W[j * n + j] != 0.0)
            return 0; /* a loop in the pattern: no power vanishes */
    for (ptrdiff_t j = 0; j < n; j++)
        reach[j] = 1.0;
    for (int q = 1; q <= limit; q++) {
        int any = 0;
        for (ptrdiff_t j = 0; j < n; j++)
            next[j] = 0.0;
        for (ptrdiff_t i = 0; i < n; i++) {
            const double *row = w->W + i * n;
            if (reach[i] != 0.0)
                for (ptrdiff_t j = 0; j < n; j++)
                    if (row[j] != 0.0)
                        next[j] = 1.0, any = 1;
        }
        if (!any)
            return q;
        memcpy(reach, next, (size_t)n * sizeof(double));
    }
    return 0;
}

/* exp(W) = sum_{k < q} W^k / k! exactly when W^q = 0: the terms
 * T_k = T_{k-1} W / k are summed into X. For a chain of integrators every
 * entry of the result is one term, a product of positive numbers, accurate to
 * an ulp or two where a Pade approximant's solve would lose several. */
static tl_status taylor_nilpotent(const expm_ws *w, int q, double **out)
{
    const ptrdiff_t n = w->n;
    double *X = w->X, *T = w->P2, *Y = w->P4;
    memcpy(X, w->W, (size_t)(n * n) * sizeof(double));
    memcpy(T, w->W, (size_t)(n * n) * sizeof(double));
    tl_dense_add_identity(n, 1.0, X);
    for (int k = 2; k < q; k++) {
        tl_status st = mul(w, T, w->W, Y);
        if (st != TL_OK)
            return st;
        tl_dense_axpby(n, 1.0 / k, Y, 0.0, T);
        tl_dense_axpby(n, 1.0, T, 1.0, X);
    }
    *out = X;
    return TL_OK;
}

/* ||P||_1^{1/k}, bounded by ||W||_1 (which it cannot exceed in exact
 * arithmetic) when the power overflowed. */
static double dk(ptrdiff_t n, const double *P, int k, double normW)
{
    const double d = pow(tl_dense_norm1(n, P), 1.0 / k);
    return isfinite(d) ? fmin(d, normW) : normW;
}

/* Is degree PADE_TABLE[entry] accurate without scaling, given eta, the
 * bound on the d_k that enter its backward error? */
static int good_enough(const expm_ws *w, int entry, double eta)
{
    return eta <= PADE_TABLE[entry].theta && ell(w, entry, 0) == 0;
}

/* Forms W^2, W^4, W^6 (and W^8 when needed) and picks the degree (as a
 * PADE_TABLE entry) and the number of squarings. */
static tl_status choose(expm_ws *w, int *entry, int *s)
{
    const ptrdiff_t n = w->n;
    const double normW = tl_dense_norm1(n, w->W);
    tl_status st;
    *s = 0;
    if ((st = mul(w, w->W, w->W, w->P2)) != TL_OK || (st = mul(w, w->P2, w->P2, w->P4)) != TL_OK ||
        (st = mul(w, w->P4, w->P2, w->P6)) != TL_OK)
        return st;
    const double d4 = dk(n, w->P4, 4, normW), d6 = dk(n, w->P6, 6, normW);
    const double eta1 = fmax(d4, d6);
    for (*entry = 0; *entry < 2; (*entry)++)
        if (good_enough(w, *entry, eta1))
            return TL_OK;

    if ((st = mul(w, w->P4, w->P4, w->P8)) != TL_OK)
        return st;
    const double d8 = dk(n, w->P8, 8, normW);
    const double eta3 = fmax(d6, d8);
    for (*entry = 2; *entry < PADE_LOW; (*entry)++)
        if (good_enough(w, *entry, eta3))
            return TL_OK;

    if ((st = mul(w, w->P4, w->P6, w->U)) != TL_OK) /* W^10, in a free buffer */
        return st;
    const double d10 = dk(n, w->U, 10, normW);
    const double eta5 = fmin(eta3, fmax(d8, d10));
    *entry = PADE_13;
    if (eta5 > PADE_TABLE[PADE_13].theta)
        *s = (int)fmin(ceil(log2(eta5 / PADE_TABLE[PADE_13].theta)), (double)S_MAX);
    *s += ell(w, PADE_13, *s);
    if (*s > S_MAX)
        *s = S_MAX;
    return TL_OK;
}

/* W := 2^-s W and its powers likewise, exactly (ldexp), recomputing the
 * powers from the scaled W if one of them overflowed before scaling. */
static tl_status scale_down(expm_ws *w, int s)
{
    const ptrdiff_t nn = w->n * w->n;
    for (ptrdiff_t i = 0; i < nn; i++)
        w->W[i] = ldexp(w->W[i], -s);
    const double bad = tl_dense_norm1(w->n, w->P2) + tl_dense_norm1(w->n, w->P4) +
                       tl_dense_norm1(w->n, w->P6);
    if (!isfinite(bad)) {
        tl_status st;
        if ((st = mul(w, w->W, w->W, w->P2)) != TL_OK ||
            (st = mul(w, w->P2, w->P2, w->P4)) != TL_OK)
            return st;
        return mul(w, w->P4, w->P2, w->P6);
    }
    for (ptrdiff_t i = 0; i < nn; i++) {
        w->P2[i] = ldexp(w->P2[i], -2 * s);
        w->P4[i] = ldexp(w->P4[i], -4 * s);
        w->P6[i] = ldexp(w->P6[i], -6 * s);
    }
    return TL_OK;
}

/* ---- the Pade approximant -------------------------------------------------- */

/* Degree 3..9: U = W sum_k b_{2k+1} W^{2k}, V = sum_k b_{2k} W^{2k}. */
static tl_status pade_low(const expm_ws *w, const double *b, int degree)
{
    const ptrdiff_t n = w->n;
    const double *pow[4] = {w->P2, w->P4, w->P6, w->P8};
    double *T = w->X;
    tl_dense_axpby(n, 0.0, w->W, 0.0, T); /* zero, whatever T held */
    tl_dense_axpby(n, 0.0, w->W, 0.0, w->V);
    tl_dense_add_identity(n, b[1], T);
    tl_dense_add_identity(n, b[0], w->V);
    for (int p = 0; p < degree / 2; p++) {
        tl_dense_axpby(n, b[2 * p + 3], pow[p], 1.0, T);
        tl_dense_axpby(n, b[2 * p + 2], pow[p], 1.0, w->V);
    }
    return mul(w, w->W, T, w->U);
}

/* Degree 13 from W^2, W^4, W^6 only (Higham 2005, eq. 2.3). */
static tl_status pade13(const expm_ws *w)
{
    const ptrdiff_t n = w->n;
    const double *b = PADE13;
    double *T = w->P8, *Y = w->X;
    tl_status st;

    /* U = W [W6 (b13 W6 + b11 W4 + b9 W2) + b7 W6 + b5 W4 + b3 W2 + b1 I] */
    tl_dense_axpby(n, b[13], w->P6, 0.0, T);
    tl_dense_axpby(n, b[11], w->P4, 1.0, T);
    tl_dense_axpby(n, b[9], w->P2, 1.0, T);
    if ((st = mul(w, w->P6, T, Y)) != TL_OK)
        return st;
    tl_dense_axpby(n, b[7], w->P6, 1.0, Y);
    tl_dense_axpby(n, b[5], w->P4, 1.0, Y);
    tl_dense_axpby(n, b[3], w->P2, 1.0, Y);
    tl_dense_add_identity(n, b[1], Y);
    if ((st = mul(w, w->W, Y, w->U)) != TL_OK)
        return st;

    /* V = W6 (b12 W6 + b10 W4 + b8 W2) + b6 W6 + b4 W4 + b2 W2 + b0 I */
    tl_dense_axpby(n, b[12], w->P6, 0.0, T);
    tl_dense_axpby(n, b[10], w->P4, 1.0, T);
    tl_dense_axpby(n, b[8], w->P2, 1.0, T);
    if ((st = mul(w, w->P6, T, w->V)) != TL_OK)
        return st;
    tl_dense_axpby(n, b[6], w->P6, 1.0, w->V);
    tl_dense_axpby(n, b[4], w->P4, 1.0, w->V);
    tl_dense_axpby(n, b[2], w->P2, 1.0, w->V);
    tl_dense_add_identity(n, b[0], w->V);
    return TL_OK;
}

/* X = (V - U)^{-1} (V + U); U and V are overwritten. With a lower triangular
 * W every term is lower triangular (upper in LAPACK's view), and a triangular
 * solve keeps the result exactly so. */
static tl_status pade_solve(const expm_ws *w, int tri)
{
    const ptrdiff_t n = w->n;
    const tl_lapack_int ni = (tl_lapack_int)n;
    memcpy(w->X, w->V, (size_t)(n * n) * sizeof(double));
    tl_dense_axpby(n, 1.0, w->U, 1.0, w->X);  /* X = V + U */
    tl_dense_axpby(n, -1.0, w->U, 1.0, w->V); /* V = V - U */
    tl_lapack_int info;
    if (tri)
        info = tl_lapacke_dtrtrs_work(TL_LAPACK_COL_MAJOR, 'U', 'N', 'N', ni, ni, w->V, ni,
                                      w->X, ni);
    else
        info = tl_lapacke_dgesv_work(TL_LAPACK_COL_MAJOR, ni, ni, w->V, ni, w->ipiv, w->X, ni);
    if (info > 0)
        return TL_ERR_SINGULAR;
    if (info < 0)
        return TL_ERR_LAPACK;
    return cancelled(w->cancel) ? TL_ERR_INTERRUPTED : TL_OK;
}

/* exp(W) into *out (one of w's buffers), W balanced, in our orientation, and
 * lower triangular when tri is set. */
static tl_status expm_core(expm_ws *w, int tri, double **out)
{
    const ptrdiff_t n = w->n;
    if (tri) {
        for (ptrdiff_t k = 0; k < n; k++)
            w->diag[k] = w->W[k * n + k];
        for (ptrdiff_t k = 0; k + 1 < n; k++)
            w->sub[k] = w->W[(k + 1) * n + k];
    }
    /* A nilpotent W of index q <= 2 * 13 + 1 (every W^k, k >= q, vanishes):
     * its Taylor polynomial is exp(W) itself, no approximation, no scaling. */
    const int q = nilpotency_index(w, 2 * 13 + 1);
    if (q > 0)
        return taylor_nilpotent(w, q, out);
    int entry, s;
    tl_status st = choose(w, &entry, &s);
    if (st != TL_OK)
        return st;
    if (entry == PADE_13) {
        if (s > 0 && (st = scale_down(w, s)) != TL_OK)
            return st;
        st = pade13(w);
    } else {
        st = pade_low(w, PADE_TABLE[entry].coef, PADE_TABLE[entry].degree);
    }
    if (st != TL_OK || (st = pade_solve(w, tri)) != TL_OK)
        return st;

    double *X = w->X, *Y = w->U;
    if (tri)
        fix_triangular(w, s, X);
    for (int i = s - 1; i >= 0; i--) {
        if ((st = mul(w, X, X, Y)) != TL_OK)
            return st;
        double *t = X;
        X = Y, Y = t;
        if (tri)
            fix_triangular(w, i, X);
        /* Once an entry has overflowed, every further square keeps an inf or
         * NaN (inf times a finite or zero factor): stop rather than run up to
         * S_MAX products for an exponential beyond the doubles. */
        if (i > 0 && !isfinite(tl_dense_norm1(n, X)))
            break;
    }
    *out = X;
    return TL_OK;
}

tl_status tl_expm(ptrdiff_t n, const double *A, double *E, void *work, const tl_cancel *cancel)
{
    if (n < 1 || n > 2 * TL_MAX_DIM)
        return TL_ERR_SHAPE;
    if (work == NULL)
        return TL_ERR_NOMEM;
    if (!isfinite(tl_dense_norm1(n, A)))
        return TL_ERR_VALUE;

    const ptrdiff_t nn = n * n;
    double *buf = (double *)work;
    expm_ws w = {n,
                 buf, buf + nn, buf + 2 * nn, buf + 3 * nn, buf + 4 * nn,
                 buf + 5 * nn, buf + 6 * nn, buf + 7 * nn,
                 buf + 8 * nn, buf + 8 * nn + n, buf + 8 * nn + 3 * n, buf + 8 * nn + 4 * n,
                 (tl_lapack_int *)(buf + 8 * nn + 5 * n),
                 (tl_lapack_int *)(buf + 8 * nn + 5 * n) + n,
                 cancel};
    memcpy(w.W, A, (size_t)nn * sizeof(double));
    tl_status st = balance(&w, w.X);
    if (st != TL_OK)
        return st;

    const int flip = should_transpose(n, w.W);
    if (flip)
        tl_dense_transpose(n, w.W);
    double *X;
    if ((st = expm_core(&w, lower_triangular(n, w.W), &X)) != TL_OK)
        return st;
    if (flip)
        tl_dense_transpose(n, X);
    unbalance(&w, X, E);
    return TL_OK;
}
