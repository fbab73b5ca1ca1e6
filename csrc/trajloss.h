/*
 * trajloss.h -- the whole public C API of the trajloss core.
 *
 * The core knows nothing of Python. Conventions:
 *   - every exported symbol starts with tl_ (types tl_*, macros and enum values TL_*);
 *   - every fallible function returns a tl_status; tl_status_message() names it;
 *   - matrices are dense, row-major (C order), contiguous;
 *   - batched arrays are batch-major and contiguous: controls[b][k][j], states[b][k][i];
 *   - memory is the caller's: outputs and scratch space are passed in. Functions that
 *     need scratch space have a *_work_bytes() companion that says how much; nothing
 *     in the core allocates;
 *   - sums are accumulated in double for both float and double kernels.
 */
#ifndef TRAJLOSS_H
#define TRAJLOSS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TL_VERSION "0.1.0"

/* Largest state or input dimension the core accepts. Dense n x n work (matrix
 * exponential, LAPACK with 32-bit integers) makes larger systems impractical. */
#define TL_MAX_DIM 4096

typedef enum {
    TL_OK = 0,
    TL_ERR_SHAPE,     /* a dimension is negative, zero where it must not be, or too large */
    TL_ERR_VALUE,     /* an argument is outside its domain (dt <= 0, unknown method, NaN) */
    TL_ERR_SINGULAR,  /* a matrix that must be invertible is singular */
    TL_ERR_NOMEM,     /* scratch space missing */
    TL_ERR_LAPACK,    /* LAPACK rejected an argument (a bug in trajloss) */
    TL_STATUS_COUNT
} tl_status;

/* A static, human-readable description of a status code. Never NULL. */
const char *tl_status_message(tl_status status);

/* A discrete linear time-invariant system x_{k+1} = Ad x_k + Bd u_k.
 * Ad is n x n, Bd is n x m, both row-major; the core only reads them. */
typedef struct {
    ptrdiff_t n;
    ptrdiff_t m;
    const double *Ad;
    const double *Bd;
} tl_system;

/* TL_OK when 1 <= n, m <= TL_MAX_DIM and both matrices are given. */
tl_status tl_system_check(const tl_system *sys);

/* ---- expm.c ------------------------------------------------------------ */

/* Bytes of scratch space tl_expm needs for an n x n matrix (0 if n is out of range). */
size_t tl_expm_work_bytes(ptrdiff_t n);

/* E = exp(A) for an n x n row-major matrix, by scaling and squaring with a
 * diagonal Pade approximant of degree 3, 5, 7, 9 or 13 (Higham 2005). A and E
 * may not overlap. `work` holds tl_expm_work_bytes(n) bytes.
 * TL_ERR_SHAPE for a bad n, TL_ERR_VALUE if A is not finite, TL_ERR_SINGULAR
 * if the Pade denominator cannot be factorised. */
tl_status tl_expm(ptrdiff_t n, const double *A, double *E, void *work);

/* ---- discretize.c ------------------------------------------------------ */

typedef enum {
    TL_DISC_ZOH = 0, /* exact for piecewise-constant input: exp([[A, B], [0, 0]] dt) */
    TL_DISC_EULER,   /* Ad = I + dt A, Bd = dt B */
    TL_DISC_RK4,     /* the one-step classical Runge-Kutta map with u held constant */
    TL_DISC_COUNT
} tl_disc_method;

size_t tl_discretize_work_bytes(ptrdiff_t n, ptrdiff_t m);

/* Discretise xdot = A x + B u with step dt > 0 into (Ad, Bd).
 * A is n x n, B is n x m (row-major); Ad (n x n) and Bd (n x m) are written.
 * `work` holds tl_discretize_work_bytes(n, m) bytes. */
tl_status tl_discretize(tl_disc_method method, ptrdiff_t n, ptrdiff_t m,
                        const double *A, const double *B, double dt,
                        double *Ad, double *Bd, void *work);

/* ---- rollout.c --------------------------------------------------------- */

/* Scratch space for the rollout and its adjoint (per call, not per sample). */
size_t tl_rollout_work_bytes(ptrdiff_t n);

/* states[b][0] = x0[b];  states[b][k+1] = Ad states[b][k] + Bd controls[b][k].
 * x0 is batch x n, controls batch x steps x m, states batch x (steps+1) x n.
 * batch >= 0 and steps >= 0; the state is carried in double between steps. */
tl_status tl_rollout_f64(const tl_system *sys, ptrdiff_t batch, ptrdiff_t steps,
                         const double *x0, const double *controls,
                         double *states, void *work);
tl_status tl_rollout_f32(const tl_system *sys, ptrdiff_t batch, ptrdiff_t steps,
                         const float *x0, const float *controls,
                         float *states, void *work);

/* The adjoint (vector-Jacobian product) of the rollout. Given
 * grad_states = dL/dstates (batch x (steps+1) x n) it writes
 *   grad_controls[b][k] = Bd^T lambda[b][k+1]   (batch x steps x m)
 *   grad_x0[b]          = lambda[b][0]          (batch x n)
 * with lambda[b][steps] = grad_states[b][steps] and
 *   lambda[b][k] = grad_states[b][k] + Ad^T lambda[b][k+1].
 * Either output may be NULL when it is not wanted. */
tl_status tl_rollout_vjp_f64(const tl_system *sys, ptrdiff_t batch, ptrdiff_t steps,
                             const double *grad_states,
                             double *grad_controls, double *grad_x0, void *work);
tl_status tl_rollout_vjp_f32(const tl_system *sys, ptrdiff_t batch, ptrdiff_t steps,
                             const float *grad_states,
                             float *grad_controls, float *grad_x0, void *work);

#ifdef __cplusplus
}
#endif

#endif /* TRAJLOSS_H */
