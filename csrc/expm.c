/*
 * expm.c -- the matrix exponential by scaling and squaring with a diagonal
 * Pade approximant (N. J. Higham, "The scaling and squaring method for the
 * matrix exponential revisited", SIAM J. Matrix Anal. Appl. 26(4), 2005).
 *
 * For ||A||_1 <= theta_m the degree-m approximant r_m(A) = q_m(A)^{-1} p_m(A)
 * is accurate to double precision, m in {3, 5, 7, 9}; otherwise A is scaled by
 * 2^-s so that ||A 2^-s||_1 <= theta_13 and r_13 is squared s times.
 *
 * Layout: our buffers are row-major and LAPACK is called column-major, so
 * LAPACK sees the transposes. U, V and every power here are polynomials in A
 * and commute, so (V - U)^T X^T = (V + U)^T has the same solution X as
 * (V - U) X = V + U, and no transposition is needed.
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

/* The largest 1-norms for which r_m has backward error below 2^-53 (Table 2.3). */
static const struct {
    int degree;
    double theta;
    const double *coef;
} PADE_TABLE[] = {
    {3, 1.495585217958292e-2, PADE3},
    {5, 2.539398330063230e-1, PADE5},
    {7, 9.504178996162932e-1, PADE7},
    {9, 2.097847961257068e0, PADE9},
};
static const double THETA13 = 5.371920351148152e0;

enum { EXPM_BUFFERS = 8 }; /* n x n double buffers carved out of work */

size_t tl_expm_work_bytes(ptrdiff_t n)
{
    if (n < 1 || n > 2 * TL_MAX_DIM)
        return 0;
    size_t nn = (size_t)n * (size_t)n;
    return EXPM_BUFFERS * nn * sizeof(double) + (size_t)n * sizeof(tl_lapack_int);
}

/* Solve (V - U) X = V + U into X; U and V are overwritten. */
static tl_status pade_solve(ptrdiff_t n, double *U, double *V, double *X, tl_lapack_int *ipiv)
{
    memcpy(X, V, (size_t)(n * n) * sizeof(double));
    tl_dense_axpby(n, 1.0, U, 1.0, X);  /* X = V + U */
    tl_dense_axpby(n, -1.0, U, 1.0, V); /* V = V - U */
    tl_lapack_int info = tl_lapacke_dgesv_work(TL_LAPACK_COL_MAJOR, (tl_lapack_int)n,
                                               (tl_lapack_int)n, V, (tl_lapack_int)n, ipiv,
                                               X, (tl_lapack_int)n);
    if (info > 0)
        return TL_ERR_SINGULAR;
    return info == 0 ? TL_OK : TL_ERR_LAPACK;
}

/* Degree 3..9: U = A sum_k b_{2k+1} A^{2k}, V = sum_k b_{2k} A^{2k}. */
static tl_status pade_low(ptrdiff_t n, int degree, const double *b, const double *A,
                          double *E, double *buf, tl_lapack_int *ipiv)
{
    const ptrdiff_t nn = n * n;
    double *pow[4] = {buf, buf + nn, buf + 2 * nn, buf + 3 * nn}; /* A^2, A^4, A^6, A^8 */
    double *U = buf + 4 * nn, *V = buf + 5 * nn, *T = buf + 6 * nn;
    const int half = degree / 2; /* number of even powers A^2 .. A^(degree-1) */

    tl_dense_matmul(n, n, n, A, A, pow[0]);
    for (int p = 1; p < half; p++)
        tl_dense_matmul(n, n, n, pow[p - 1], pow[0], pow[p]);

    memset(T, 0, (size_t)nn * sizeof(double));
    memset(V, 0, (size_t)nn * sizeof(double));
    tl_dense_add_identity(n, b[1], T);
    tl_dense_add_identity(n, b[0], V);
    for (int p = 0; p < half; p++) {
        tl_dense_axpby(n, b[2 * p + 3], pow[p], 1.0, T);
        tl_dense_axpby(n, b[2 * p + 2], pow[p], 1.0, V);
    }
    tl_dense_matmul(n, n, n, A, T, U);
    return pade_solve(n, U, V, E, ipiv);
}

/* Degree 13, evaluated with A^2, A^4, A^6 only (Higham's eq. 2.3). */
static tl_status pade13(ptrdiff_t n, const double *A, double *E, double *buf,
                        tl_lapack_int *ipiv)
{
    const double *b = PADE13;
    const ptrdiff_t nn = n * n;
    double *A2 = buf, *A4 = buf + nn, *A6 = buf + 2 * nn;
    double *U = buf + 3 * nn, *V = buf + 4 * nn, *T = buf + 5 * nn, *W = buf + 6 * nn;

    tl_dense_matmul(n, n, n, A, A, A2);
    tl_dense_matmul(n, n, n, A2, A2, A4);
    tl_dense_matmul(n, n, n, A4, A2, A6);

    /* U = A [A6 (b13 A6 + b11 A4 + b9 A2) + b7 A6 + b5 A4 + b3 A2 + b1 I] */
    tl_dense_axpby(n, b[13], A6, 0.0, T);
    tl_dense_axpby(n, b[11], A4, 1.0, T);
    tl_dense_axpby(n, b[9], A2, 1.0, T);
    tl_dense_matmul(n, n, n, A6, T, W);
    tl_dense_axpby(n, b[7], A6, 1.0, W);
    tl_dense_axpby(n, b[5], A4, 1.0, W);
    tl_dense_axpby(n, b[3], A2, 1.0, W);
    tl_dense_add_identity(n, b[1], W);
    tl_dense_matmul(n, n, n, A, W, U);

    /* V = A6 (b12 A6 + b10 A4 + b8 A2) + b6 A6 + b4 A4 + b2 A2 + b0 I */
    tl_dense_axpby(n, b[12], A6, 0.0, T);
    tl_dense_axpby(n, b[10], A4, 1.0, T);
    tl_dense_axpby(n, b[8], A2, 1.0, T);
    tl_dense_matmul(n, n, n, A6, T, V);
    tl_dense_axpby(n, b[6], A6, 1.0, V);
    tl_dense_axpby(n, b[4], A4, 1.0, V);
    tl_dense_axpby(n, b[2], A2, 1.0, V);
    tl_dense_add_identity(n, b[0], V);

    return pade_solve(n, U, V, E, ipiv);
}

tl_status tl_expm(ptrdiff_t n, const double *A, double *E, void *work)
{
    if (n < 1 || n > 2 * TL_MAX_DIM)
        return TL_ERR_SHAPE;
    if (work == NULL)
        return TL_ERR_NOMEM;
    const ptrdiff_t nn = n * n;
    double *buf = (double *)work;
    double *As = buf + 7 * nn;
    tl_lapack_int *ipiv = (tl_lapack_int *)(buf + EXPM_BUFFERS * nn);

    const double norm = tl_dense_norm1(n, A);
    if (!isfinite(norm))
        return TL_ERR_VALUE;

    for (size_t i = 0; i < sizeof PADE_TABLE / sizeof PADE_TABLE[0]; i++)
        if (norm <= PADE_TABLE[i].theta)
            return pade_low(n, PADE_TABLE[i].degree, PADE_TABLE[i].coef, A, E, buf, ipiv);

    /* Scale so that ||A 2^-s|| <= theta_13, then square s times. */
    int s = 0;
    if (norm > THETA13)
        s = (int)ceil(log2(norm / THETA13));
    const double scale = ldexp(1.0, -s);
    for (ptrdiff_t i = 0; i < nn; i++)
        As[i] = A[i] * scale;
    tl_status status = pade13(n, As, E, buf, ipiv);
    if (status != TL_OK)
        return status;
    for (int k = 0; k < s; k++) {
        tl_dense_matmul(n, n, n, E, E, As);
        memcpy(E, As, (size_t)nn * sizeof(double));
    }
    return TL_OK;
}
