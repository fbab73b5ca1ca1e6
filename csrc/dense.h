/*
 * dense.h -- small dense row-major matrix helpers shared by expm.c and
 * discretize.c (private to csrc/). Sizes are ptrdiff_t; nothing allocates.
 */
#ifndef TL_DENSE_H
#define TL_DENSE_H

#include <stddef.h>

/* C (r x c) = A (r x k) * B (k x c); C may not overlap A or B. */
void tl_dense_matmul(ptrdiff_t r, ptrdiff_t k, ptrdiff_t c,
                     const double *A, const double *B, double *C);

/* C (r x n) = A (r x n) B (n x n), through BLAS dgemm from
 * n = TL_DENSE_BLAS_MIN_N on (the plain loop of tl_dense_matmul below it,
 * where the call costs more than it saves); C may not overlap A or B. A
 * product of two upper (or two lower) triangular matrices is exactly
 * triangular either way: every term below the diagonal has a zero factor. */
#define TL_DENSE_BLAS_MIN_N 48
void tl_dense_gemm(ptrdiff_t r, ptrdiff_t n, const double *A, const double *B, double *C);

/* A (n x n) = A^T in place. */
void tl_dense_transpose(ptrdiff_t n, double *A);

/* C (r x c) = A (r x k) * B^T (B is c x k), or C += ... when accumulate is set;
 * C may not overlap A or B. */
void tl_dense_matmul_nt(ptrdiff_t r, ptrdiff_t k, ptrdiff_t c, const double *A, const double *B,
                        double *C, int accumulate);

/* Y (n x n) = alpha * X + beta * Y; with beta == 0 the old Y is never read. */
void tl_dense_axpby(ptrdiff_t n, double alpha, const double *X, double beta, double *Y);

/* A (n x n) += alpha * I. */
void tl_dense_add_identity(ptrdiff_t n, double alpha, double *A);

/* The largest absolute column sum (the matrix 1-norm); NaN if any entry is. */
double tl_dense_norm1(ptrdiff_t n, const double *A);

/* Copy an r x c block between row-major matrices with row strides lds, ldd. */
void tl_dense_copy_block(ptrdiff_t r, ptrdiff_t c, const double *src, ptrdiff_t lds,
                         double *dst, ptrdiff_t ldd);

#endif /* TL_DENSE_H */
