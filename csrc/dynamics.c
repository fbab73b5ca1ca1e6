/* dynamics.c -- building and checking the one description of a system. */
#include "trajloss.h"

tl_dynamics tl_dynamics_linear(ptrdiff_t n, ptrdiff_t m, const double *Ad, const double *Bd)
{
    tl_dynamics d = {0};
    d.kind = TL_DYN_LINEAR;
    d.n = n;
    d.m = m;
    d.A.data = Ad;
    d.B.data = Bd;
    return d;
}

/* A field fits when its strides are >= 0 and the extents they cover are the call's. */
static tl_status check_field(const tl_field *f, const tl_dynamics *d, ptrdiff_t batch,
                             ptrdiff_t steps)
{
    if (f->batch_stride < 0 || f->step_stride < 0)
        return TL_ERR_VALUE;
    if (f->data == NULL)
        return TL_OK;
    if (f->batch_stride != 0 && d->batch != batch)
        return TL_ERR_SHAPE;
    if (f->step_stride != 0 && d->steps != steps)
        return TL_ERR_SHAPE;
    return TL_OK;
}

tl_status tl_dynamics_check(const tl_dynamics *dyn, ptrdiff_t batch, ptrdiff_t steps)
{
    if (dyn == NULL || (int)dyn->kind < 0 || dyn->kind >= TL_DYN_COUNT)
        return TL_ERR_VALUE;
    if (dyn->n < 1 || dyn->n > TL_MAX_DIM || dyn->m < 1 || dyn->m > TL_MAX_DIM ||
        dyn->batch < 0 || dyn->steps < 0 || batch < 0 || steps < 0)
        return TL_ERR_SHAPE;
    /* the slots of the kinds to come are empty in a linear system */
    if (dyn->A.data == NULL || dyn->B.data == NULL || dyn->step != NULL ||
        dyn->jacobians != NULL || dyn->param_jacobian != NULL || dyn->params.data != NULL ||
        dyn->nparams != 0)
        return TL_ERR_VALUE;
    const tl_field *fields[3] = {&dyn->A, &dyn->B, &dyn->c};
    for (int i = 0; i < 3; i++) {
        const tl_status status = check_field(fields[i], dyn, batch, steps);
        if (status != TL_OK)
            return status;
    }
    return TL_OK;
}
