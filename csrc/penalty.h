/*
 * penalty.h -- the elementwise penalty rho(r) and its derivative: the one
 * definition every loss kernel uses (private to csrc/).
 *
 *   mse    rho = r^2                      rho' = 2 r
 *   l1     rho = |r|                      rho' = sign(r), 0 at 0
 *   huber  rho = r^2 / 2      (|r| <= d)  rho' = r
 *          rho = d (|r| - d/2) otherwise  rho' = d sign(r)
 *
 * A NaN residual -- only from a NaN input that check_finite was told not to
 * look for -- has a NaN derivative: no comparison may turn it into a
 * finite-looking 0 or -delta. The vector forms (tile kernels) follow the
 * same definitions lane by lane.
 */
#ifndef TL_PENALTY_H
#define TL_PENALTY_H

#include <math.h>

#include "trajloss.h"

/* rho(r), and *drho = rho'(r). */
static inline double tl_rho(tl_penalty penalty, double delta, double r, double *drho)
{
    switch (penalty) {
    case TL_PENALTY_MSE:
        *drho = 2.0 * r;
        return r * r;
    case TL_PENALTY_L1:
        *drho = r != r ? r : (double)((r > 0.0) - (r < 0.0));
        return fabs(r);
    default: {
        const double abs_r = fabs(r);
        if (abs_r <= delta) {
            *drho = r;
            return 0.5 * r * r;
        }
        *drho = r > 0.0 ? delta : r < 0.0 ? -delta : r;
        return delta * (abs_r - 0.5 * delta);
    }
    }
}

/*
 * The vector form, for the tile kernels: TL_VRHO_DEFINE(NAME, T, V, M)
 * defines
 *     static inline V NAME(tl_penalty penalty, T delta, const V *r, V *drho)
 * (always inlined) which returns rho(r) and stores rho'(r), lane by lane as
 * tl_rho above (r by address: GCC notes the ABI of wide vector arguments), for
 * a GCC/clang vector type V of T whose comparisons give the integer vector
 * type M (elements as wide as T). Branch-free: each lane's case is chosen by
 * a bitwise select on a comparison, so no lane's value leaks into another
 * and a NaN lane keeps its NaN derivative.
 */
#define TL_VRHO_DEFINE(NAME, T, V, M)                                                          \
    static inline __attribute__((always_inline)) V NAME(tl_penalty penalty, T delta,           \
                                                        const V *rp, V *drho)                 \
    {                                                                                         \
        const V r = *rp;                                                                      \
        if (penalty == TL_PENALTY_MSE) {                                                      \
            *drho = r + r;                                                                    \
            return r * r;                                                                     \
        }                                                                                     \
        const V zero = {0}, one = zero + (T)1, half = zero + (T)0.5, d = zero + delta;        \
        const M pos = (M)(r > zero), neg = (M)(r < zero), nan = (M)(r != r);                 \
        const V abs_r = (V)((M)r & ~(M)(-zero)); /* -zero: the sign bit alone */             \
        /* sign(r): 1, -1, or 0 at 0 and NaN; a NaN lane then takes r itself */              \
        const V sign = (V)((pos & (M)one) | (neg & (M)-one));                                 \
        if (penalty == TL_PENALTY_L1) {                                                       \
            *drho = (V)((nan & (M)r) | (~nan & (M)sign));                                     \
            return abs_r;                                                                     \
        }                                                                                     \
        const M small = (M)(abs_r <= d);                                                      \
        const V outer = (V)((nan & (M)r) | (~nan & (M)(d * sign)));                           \
        *drho = (V)((small & (M)r) | (~small & (M)outer));                                    \
        return (V)((small & (M)(half * r * r)) | (~small & (M)(d * (abs_r - half * d))));     \
    }

#endif /* TL_PENALTY_H */
