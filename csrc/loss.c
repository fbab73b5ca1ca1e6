/*
 * loss.c -- control, trajectory, terminal and combined losses with their
 * analytic gradients, one pass per sequence (kernels in loss_impl.h).
 */
#include <math.h>
#include <string.h>

#include "select.h"
#include "trajloss.h"

/* rho(r) and its derivative for the three penalties (see trajloss.h). */
static inline double rho(tl_penalty penalty, double delta, double r, double *drho)
{
    switch (penalty) {
    case TL_PENALTY_MSE:
        *drho = 2.0 * r;
        return r * r;
    case TL_PENALTY_L1:
        *drho = (double)((r > 0.0) - (r < 0.0));
        return fabs(r);
    default: {
        const double abs_r = fabs(r);
        if (abs_r <= delta) {
            *drho = r;
            return 0.5 * r * r;
        }
        *drho = r > 0.0 ? delta : -delta;
        return delta * (abs_r - 0.5 * delta);
    }
    }
}

static int finite_nonneg(double x)
{
    return isfinite(x) && x >= 0.0;
}

static tl_status check_spec(const tl_loss_spec *spec)
{
    if (spec == NULL)
        return TL_ERR_VALUE;
    tl_status status = tl_selection_check(&spec->sel);
    if (status != TL_OK)
        return status;
    if ((int)spec->penalty < 0 || spec->penalty >= TL_PENALTY_COUNT)
        return TL_ERR_VALUE;
    if (spec->penalty == TL_PENALTY_HUBER && !(isfinite(spec->delta) && spec->delta > 0.0))
        return TL_ERR_VALUE;
    if (!finite_nonneg(spec->control_weight) || !finite_nonneg(spec->trajectory_weight) ||
        !finite_nonneg(spec->terminal_weight))
        return TL_ERR_VALUE;
    return TL_OK;
}

/* How many steps each term averages over. */
typedef struct {
    double control;    /* sum_b |S_b| */
    double trajectory; /* ... plus one per non-empty sequence with include_initial */
    double terminal;   /* non-empty sequences */
} tl_valid_counts;

static tl_valid_counts count_valid(const tl_selection *sel, int shift)
{
    tl_valid_counts N = {0.0, 0.0, 0.0};
    for (ptrdiff_t b = 0; b < sel->batch; b++) {
        const ptrdiff_t count = tl_sel_span(sel, b).count;
        N.control += (double)count;
        if (count > 0) {
            N.trajectory += (double)(count + shift);
            N.terminal += 1.0;
        }
    }
    return N;
}

static tl_status check_rollout_call(const tl_system *sys, const tl_loss_spec *spec,
                                    const void *controls, const void *x0,
                                    const void *ref_controls, const void *ref_states,
                                    const void *target, const void *value, const void *work)
{
    tl_status status = tl_system_check(sys);
    if (status == TL_OK)
        status = check_spec(spec);
    if (status != TL_OK)
        return status;
    const unsigned terms = spec->terms;
    if (terms == 0 || (terms & ~7u) != 0 || value == NULL || work == NULL)
        return work == NULL ? TL_ERR_NOMEM : TL_ERR_VALUE;
    if (spec->sel.batch > 0 &&
        (controls == NULL || x0 == NULL ||
         ((terms & TL_TERM_CONTROL) && ref_controls == NULL) ||
         ((terms & TL_TERM_TRAJECTORY) && ref_states == NULL) ||
         ((terms & TL_TERM_TERMINAL) && target == NULL && ref_states == NULL)))
        return TL_ERR_VALUE;
    return TL_OK;
}

size_t tl_control_loss_work_bytes(ptrdiff_t features, ptrdiff_t steps)
{
    if (features < 1 || steps < 0)
        return 0;
    return (size_t)(2 * steps + 2 + 2 * features) * sizeof(double);
}

size_t tl_rollout_loss_work_bytes(ptrdiff_t n, ptrdiff_t m, ptrdiff_t steps)
{
    if (n < 1 || n > TL_MAX_DIM || m < 1 || m > TL_MAX_DIM || steps < 0)
        return 0;
    return (size_t)((3 * steps + 3) + (steps + 1) * n + 2 * n + 2 * m) * sizeof(double);
}

#define TL_T double
#define TL_SFX(name) name##_f64
#include "loss_impl.h"
#undef TL_T
#undef TL_SFX

#define TL_T float
#define TL_SFX(name) name##_f32
#include "loss_impl.h"
#undef TL_T
#undef TL_SFX
