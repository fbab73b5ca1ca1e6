/*
 * rollout.c -- batched rollouts x_{k+1} = Ad x_k + Bd u_k and their adjoint,
 * for float and double storage (kernels in rollout_impl.h).
 */
#include <math.h>
#include <stddef.h>

#include "trajloss.h"

size_t tl_rollout_work_bytes(ptrdiff_t n)
{
    if (n < 1 || n > TL_MAX_DIM)
        return 0;
    return 2 * (size_t)n * sizeof(double);
}

static tl_status check_call(const tl_system *sys, ptrdiff_t batch, ptrdiff_t steps, void *work)
{
    tl_status status = tl_system_check(sys);
    if (status != TL_OK)
        return status;
    if (batch < 0 || steps < 0)
        return TL_ERR_SHAPE;
    return work == NULL ? TL_ERR_NOMEM : TL_OK;
}

#define TL_T double
#define TL_SFX(name) name##_f64
#include "rollout_impl.h"
#undef TL_T
#undef TL_SFX

#define TL_T float
#define TL_SFX(name) name##_f32
#include "rollout_impl.h"
#undef TL_T
#undef TL_SFX
