/*
 * weights.c -- valid steps and length-agnostic geometric time weights.
 *
 * w[b][t] = gamma^t |S_b| / sum_{s in S_b} gamma^s. Computed as
 * r^(t - first) (gamma <= 1) or r^(last - t) (gamma > 1) with r = min(gamma,
 * 1/gamma) <= 1: the common factor gamma^first or gamma^last cancels, the
 * largest power is exactly 1, so the sum is >= 1 (no 0/0) and nothing
 * overflows however long the sequence; gamma = 1 gives exactly 1.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "select.h"
#include "sizes.h"

/* Sizes are checked as in loss.c, with sizes.h: counted in size_t, and a
 * work-size query that cannot say returns 0. */
#define MAX_DOUBLES (SIZE_MAX / sizeof(double)) /* see tl_doubles_bytes */

tl_status tl_selection_check(const tl_selection *sel)
{
    if (sel == NULL)
        return TL_ERR_VALUE;
    if (sel->batch < 0 || sel->steps < 0)
        return TL_ERR_SHAPE;
    if (sel->lengths != NULL && sel->mask != NULL)
        return TL_ERR_VALUE;
    if (!isfinite(sel->discount) || sel->discount <= 0.0)
        return TL_ERR_VALUE;
    if (sel->lengths != NULL)
        for (ptrdiff_t b = 0; b < sel->batch; b++)
            if (sel->lengths[b] < 0 || sel->lengths[b] > sel->steps)
                return TL_ERR_VALUE;
    return TL_OK;
}

tl_seq_span tl_sel_span(const tl_selection *sel, ptrdiff_t b)
{
    tl_seq_span span = {0, -1};
    if (sel->lengths != NULL) {
        span.count = (ptrdiff_t)sel->lengths[b];
        span.last = span.count - 1;
        return span;
    }
    if (sel->mask == NULL) { /* every step valid */
        span.count = sel->steps;
        span.last = sel->steps - 1;
        return span;
    }
    for (ptrdiff_t t = 0; t < sel->steps; t++)
        if (tl_sel_valid(sel, b, t)) {
            span.count++;
            span.last = t;
        }
    return span;
}

/* tl_sel_powers and tl_sel_weights need steps + 2 addressable doubles
 * (tl_time_weights_work_bytes(steps) != 0, which tl_time_weights checks and
 * the loss kernels' scratch, whose size includes these powers, implies), so
 * steps + 1 and the byte counts below cannot overflow. */
void tl_sel_powers(const tl_selection *sel, double *powers)
{
    const double g = sel->discount;
    const double r = g <= 1.0 ? g : 1.0 / g;
    for (ptrdiff_t k = 0; k <= sel->steps + 1; k++)
        powers[k] = r == 1.0 ? 1.0 : pow(r, (double)k); /* pow(1, k) is 1: no call */
}

ptrdiff_t tl_sel_weights(const tl_selection *sel, ptrdiff_t b, int shift,
                         const double *powers, double *w)
{
    const ptrdiff_t len = sel->steps + shift;
    const tl_seq_span span = tl_sel_span(sel, b);
    memset(w, 0, (size_t)len * sizeof(double));
    if (span.count == 0)
        return 0;

    /* first and last valid index in the (possibly shifted) step numbering */
    ptrdiff_t first = 0;
    if (!shift)
        while (!tl_sel_valid(sel, b, first))
            first++;
    const ptrdiff_t last = span.last + shift, count = span.count + shift;
    const int early = sel->discount <= 1.0;

    double norm = 0.0;
    for (ptrdiff_t j = first; j <= last; j++) {
        if (j - shift >= 0 && !tl_sel_valid(sel, b, j - shift))
            continue;
        w[j] = powers[early ? j - first : last - j];
        norm += w[j];
    }
    const double scale = (double)count / norm;
    for (ptrdiff_t j = first; j <= last; j++)
        w[j] *= scale;
    return count;
}

/* The powers r^0 .. r^(steps + 1): steps + 2 doubles. */
size_t tl_time_weights_work_bytes(ptrdiff_t steps)
{
    return steps < 0 ? 0 : tl_doubles_bytes((size_t)steps + 2);
}

tl_status tl_time_weights(const tl_selection *sel, double *weights, void *work)
{
    tl_status status = tl_selection_check(sel);
    if (status != TL_OK)
        return status;
    /* the scratch and the B x T weights (and mask) must be addressable */
    const size_t B = (size_t)sel->batch, T = (size_t)sel->steps;
    if (tl_time_weights_work_bytes(sel->steps) == 0 || (B != 0 && T > MAX_DOUBLES / B))
        return TL_ERR_SHAPE;
    if (work == NULL)
        return TL_ERR_NOMEM;
    double *powers = (double *)work;
    tl_sel_powers(sel, powers);
    for (ptrdiff_t b = 0; b < sel->batch; b++)
        tl_sel_weights(sel, b, 0, powers, weights + b * sel->steps);
    return TL_OK;
}
