/* dense.c -- the small dense matrix helpers of dense.h. */
#include <math.h>
#include <string.h>

#include "dense.h"
#include "tl_lapack.h"

void tl_dense_matmul(ptrdiff_t r, ptrdiff_t k, ptrdiff_t c,
                     const double *A, const double *B, double *C)
{
    memset(C, 0, (size_t)(r * c) * sizeof(double));
    for (ptrdiff_t i = 0; i < r; i++) {
        double *Ci = C + i * c;
        for (ptrdiff_t p = 0; p < k; p++) {
            const double a = A[i * k + p];
            const double *Bp = B + p * c;
            for (ptrdiff_t j = 0; j < c; j++)
                Ci[j] += a * Bp[j];
        }
    }
}

void tl_dense_gemm(ptrdiff_t r, ptrdiff_t n, const double *A, const double *B, double *C)
{
    if (n < TL_DENSE_BLAS_MIN_N) {
        tl_dense_matmul(r, n, n, A, B, C);
        return;
    }
    const tl_lapack_int ni = (tl_lapack_int)n;
    tl_cblas_dgemm(TL_CBLAS_ROW_MAJOR, TL_CBLAS_NO_TRANS, TL_CBLAS_NO_TRANS, (tl_lapack_int)r, ni,
                   ni, 1.0, A, ni, B, ni, 0.0, C, ni);
}

void tl_dense_transpose(ptrdiff_t n, double *A)
{
    for (ptrdiff_t i = 0; i < n; i++)
        for (ptrdiff_t j = i + 1; j < n; j++) {
            const double t = A[i * n + j];
            A[i * n + j] = A[j * n + i];
            A[j * n + i] = t;
        }
}

void tl_dense_matmul_nt(ptrdiff_t r, ptrdiff_t k, ptrdiff_t c, const double *A, const double *B,
                        double *C, int accumulate)
{
    for (ptrdiff_t i = 0; i < r; i++)
        for (ptrdiff_t j = 0; j < c; j++) {
            double acc = 0.0;
            for (ptrdiff_t p = 0; p < k; p++)
                acc += A[i * k + p] * B[j * k + p];
            C[i * c + j] = accumulate ? C[i * c + j] + acc : acc;
        }
}

void tl_dense_axpby(ptrdiff_t n, double alpha, const double *X, double beta, double *Y)
{
    if (beta == 0.0) { /* Y may hold garbage (even NaN) that 0 * Y would keep */
        for (ptrdiff_t i = 0; i < n * n; i++)
            Y[i] = alpha * X[i];
        return;
    }
    for (ptrdiff_t i = 0; i < n * n; i++)
        Y[i] = alpha * X[i] + beta * Y[i];
}

void tl_dense_add_identity(ptrdiff_t n, double alpha, double *A)
{
    for (ptrdiff_t i = 0; i < n; i++)
        A[i * n + i] += alpha;
}

double tl_dense_norm1(ptrdiff_t n, const double *A)
{
    double norm = 0.0;
    for (ptrdiff_t j = 0; j < n; j++) {
        double col = 0.0;
        for (ptrdiff_t i = 0; i < n; i++)
            col += fabs(A[i * n + j]);
        if (isnan(col))
            return col;
        if (col > norm)
            norm = col;
    }
    return norm;
}

void tl_dense_copy_block(ptrdiff_t r, ptrdiff_t c, const double *src, ptrdiff_t lds,
                         double *dst, ptrdiff_t ldd)
{
    for (ptrdiff_t i = 0; i < r; i++)
        memcpy(dst + i * ldd, src + i * lds, (size_t)c * sizeof(double));
}
