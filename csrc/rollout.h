/*
 * rollout.h -- one step of the dynamics and of its adjoint for one sample,
 * in double, shared by the plain kernels of rollout.c and loss.c (private to
 * csrc/). These are the only places that apply a system to a state: a kind
 * of system to come (a step function and its Jacobians) changes these two.
 */
#ifndef TL_ROLLOUT_H
#define TL_ROLLOUT_H

#include "trajloss.h"

/* Element i of an array of dtype, widened to double; and stored, rounded once. */
double tl_load(tl_dtype dtype, const void *p, ptrdiff_t i);
void tl_store(tl_dtype dtype, void *p, ptrdiff_t i, double v);

/* xn = A_k x + B_k u + c_k for sample b (u: m elements of dtype). */
void tl_dyn_step(const tl_dynamics *d, ptrdiff_t b, ptrdiff_t k, const double *x,
                 tl_dtype dtype, const void *u, double *xn);

/* The adjoint of that step: lam_prev = A_k^T lam and, when gu is not NULL,
 * gu = B_k^T lam (the Jacobians' transposes applied to lam = dL/dx_{k+1}). */
void tl_dyn_adjoint(const tl_dynamics *d, ptrdiff_t b, ptrdiff_t k, const double *lam,
                    double *lam_prev, double *gu);

#endif /* TL_ROLLOUT_H */
