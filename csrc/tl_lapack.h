/*
 * tl_lapack.h -- the few LAPACKE entry points the core uses, under one name
 * whatever the provider (private to csrc/).
 *
 * The default provider is the scipy-openblas32 wheel, whose library exports
 * its symbols with a "scipy_" prefix (scipy_LAPACKE_dgesv_work), while some
 * releases of the lapacke.h it ships declare the unprefixed names. Rather than
 * depend on which header a given release ships, we declare the prototypes
 * ourselves and pick the symbol names here:
 *   TL_LAPACK_SCIPY_OPENBLAS defined   -> scipy_LAPACKE_*  (the wheel)
 *   otherwise                          -> LAPACKE_*        (a system LAPACKE)
 * Both providers use 32-bit LAPACK integers (LP64); we only call the _work
 * variants in column-major layout on our own scratch buffers, so LAPACKE
 * never allocates or transposes behind our back.
 *
 * One BLAS call too, cblas_dgemm (scipy_cblas_dgemm in the wheel), for the
 * large square products of the matrix exponential. Its enum arguments are
 * passed as the int values of the CBLAS standard (CblasRowMajor = 101,
 * CblasNoTrans = 111), which is how C passes an enum.
 */
#ifndef TL_LAPACK_H
#define TL_LAPACK_H

#include <stdint.h>

typedef int32_t tl_lapack_int;

#define TL_LAPACK_COL_MAJOR 102

#ifdef TL_LAPACK_SCIPY_OPENBLAS
#define TL_LAPACKE(name) scipy_LAPACKE_##name
#else
#define TL_LAPACKE(name) LAPACKE_##name
#endif

#ifdef TL_LAPACK_SCIPY_OPENBLAS
#define tl_cblas_dgemm scipy_cblas_dgemm
#else
#define tl_cblas_dgemm cblas_dgemm
#endif

#define TL_CBLAS_ROW_MAJOR 101
#define TL_CBLAS_NO_TRANS 111

#define tl_lapacke_dgesv_work TL_LAPACKE(dgesv_work)
#define tl_lapacke_dtrtrs_work TL_LAPACKE(dtrtrs_work)
#define tl_lapacke_dgebal_work TL_LAPACKE(dgebal_work)
#define tl_lapacke_dpotrf_work TL_LAPACKE(dpotrf_work)
#define tl_lapacke_dpotrs_work TL_LAPACKE(dpotrs_work)
#define tl_lapacke_dpocon_work TL_LAPACKE(dpocon_work)

/* reference.c, exact minimum-norm controls: rank-revealing QR of C^T */
#define tl_lapacke_dgeqp3_work TL_LAPACKE(dgeqp3_work)
#define tl_lapacke_dorgqr_work TL_LAPACKE(dorgqr_work)
#define tl_lapacke_dtrcon_work TL_LAPACKE(dtrcon_work)

tl_lapack_int tl_lapacke_dgesv_work(int layout, tl_lapack_int n, tl_lapack_int nrhs,
                                    double *a, tl_lapack_int lda, tl_lapack_int *ipiv,
                                    double *b, tl_lapack_int ldb);

void tl_cblas_dgemm(int layout, int transa, int transb, tl_lapack_int m, tl_lapack_int n,
                    tl_lapack_int k, double alpha, const double *a, tl_lapack_int lda,
                    const double *b, tl_lapack_int ldb, double beta, double *c,
                    tl_lapack_int ldc);

tl_lapack_int tl_lapacke_dtrtrs_work(int layout, char uplo, char trans, char diag,
                                     tl_lapack_int n, tl_lapack_int nrhs, const double *a,
                                     tl_lapack_int lda, double *b, tl_lapack_int ldb);

tl_lapack_int tl_lapacke_dgebal_work(int layout, char job, tl_lapack_int n, double *a,
                                     tl_lapack_int lda, tl_lapack_int *ilo, tl_lapack_int *ihi,
                                     double *scale);

tl_lapack_int tl_lapacke_dpotrf_work(int layout, char uplo, tl_lapack_int n, double *a,
                                     tl_lapack_int lda);

tl_lapack_int tl_lapacke_dpotrs_work(int layout, char uplo, tl_lapack_int n, tl_lapack_int nrhs,
                                     const double *a, tl_lapack_int lda, double *b,
                                     tl_lapack_int ldb);

tl_lapack_int tl_lapacke_dpocon_work(int layout, char uplo, tl_lapack_int n, const double *a,
                                     tl_lapack_int lda, double anorm, double *rcond,
                                     double *work, tl_lapack_int *iwork);

/* reference.c, exact minimum-norm controls */
tl_lapack_int tl_lapacke_dgeqp3_work(int layout, tl_lapack_int m, tl_lapack_int n, double *a,
                                     tl_lapack_int lda, tl_lapack_int *jpvt, double *tau,
                                     double *work, tl_lapack_int lwork);

tl_lapack_int tl_lapacke_dorgqr_work(int layout, tl_lapack_int m, tl_lapack_int n,
                                     tl_lapack_int k, double *a, tl_lapack_int lda,
                                     const double *tau, double *work, tl_lapack_int lwork);

tl_lapack_int tl_lapacke_dtrcon_work(int layout, char norm, char uplo, char diag,
                                     tl_lapack_int n, const double *a, tl_lapack_int lda,
                                     double *rcond, double *work, tl_lapack_int *iwork);

#endif /* TL_LAPACK_H */
