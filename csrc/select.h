/*
 * select.h -- per-sequence valid steps and time weights (private to csrc/),
 * shared by tl_time_weights and the loss kernels.
 */
#ifndef TL_SELECT_H
#define TL_SELECT_H

#include "trajloss.h"

/* The valid control steps of one sequence: how many and the last one. */
typedef struct {
    ptrdiff_t count; /* |S_b| */
    ptrdiff_t last;  /* largest valid t, -1 if none */
} tl_seq_span;

/* Is control step t of sequence b valid? */
static inline int tl_sel_valid(const tl_selection *sel, ptrdiff_t b, ptrdiff_t t)
{
    if (sel->lengths != NULL)
        return t < sel->lengths[b];
    if (sel->mask != NULL)
        return sel->mask[b * sel->steps + t] != 0;
    return 1;
}

tl_seq_span tl_sel_span(const tl_selection *sel, ptrdiff_t b);

/* powers[k] = r^k for k = 0 .. steps + 1, r = min(gamma, 1/gamma). */
void tl_sel_powers(const tl_selection *sel, double *powers);

/*
 * w[0 .. steps + shift - 1] = the normalised time weights of sequence b
 * (0 at invalid steps), over the control steps (shift = 0) or with state 0
 * as an extra first step (shift = 1, valid when any step is). Returns the
 * number of valid steps.
 */
ptrdiff_t tl_sel_weights(const tl_selection *sel, ptrdiff_t b, int shift,
                         const double *powers, double *w);

#endif /* TL_SELECT_H */
