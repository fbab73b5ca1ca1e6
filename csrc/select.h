/*
 * select.h -- per-sequence valid steps and time weights (private to csrc/),
 * shared by tl_time_weights and the loss kernels; and which read elements of
 * a loss call's inputs are not finite (for the extension module's errors).
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

/*
 * Which inputs of a loss call hold NaN or inf at an element the call reads
 * -- what check_finite checks (rl_seq_bad, cl_seq_bad in loss_impl.h): a bit
 * per input, 0 when none. The control loss: bit 0 pred, bit 1 target. The
 * rollout losses (arrays the terms do not read may be anything, NULL too):
 * bit 0 controls, 1 x0, 2 ref_controls, 3 ref_states, 4 target. They scan
 * the whole batch on the caller's thread, for naming the argument after a
 * call returned TL_ERR_NONFINITE.
 */
enum { TL_IN_CONTROLS = 1, TL_IN_X0 = 2, TL_IN_REF_CONTROLS = 4, TL_IN_REF_STATES = 8,
       TL_IN_TARGET = 16 };
unsigned tl_control_loss_bad_inputs_f64(const tl_loss_spec *spec, ptrdiff_t features,
                                        const double *pred, const double *target);
unsigned tl_control_loss_bad_inputs_f32(const tl_loss_spec *spec, ptrdiff_t features,
                                        const float *pred, const float *target);
unsigned tl_rollout_loss_bad_inputs_f64(const tl_system *sys, const tl_loss_spec *spec,
                                        const double *controls, const double *x0,
                                        const double *ref_controls, const double *ref_states,
                                        const double *target);
unsigned tl_rollout_loss_bad_inputs_f32(const tl_system *sys, const tl_loss_spec *spec,
                                        const float *controls, const float *x0,
                                        const float *ref_controls, const float *ref_states,
                                        const float *target);

#endif /* TL_SELECT_H */
