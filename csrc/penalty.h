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

#endif /* TL_PENALTY_H */
