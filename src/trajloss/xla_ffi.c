/*
 * xla_ffi.c -- the C core as XLA FFI custom-call handlers, so that
 * trajloss.jax runs inside compiled JAX programs (jit, vmap, shard_map)
 * without host callbacks. Plain C against the few structs of XLA's FFI C ABI
 * that _xla_ffi_abi.h declares; no Python here: the extension module
 * (_coremodule.c) hands the handlers to Python as capsules (tlx_targets).
 *
 * Four handlers, one a core entry point; trajloss/jax.py makes every call:
 *   trajloss_rollout_loss   (opts, Ad, Bd, [offset], controls, x0, [ref_controls],
 *                            [ref_states], [target], [lengths], [mask], weight,
 *                            terminal_weight, [feature_weights], [state_weights])
 *                           -> values (4,) = total, control, trajectory, terminal
 *                              [, grad_controls, grad_x0]
 *   trajloss_control_loss   (opts, pred, target, [lengths], [mask], [feature_weights])
 *                           -> values (1,) [, grad_pred]
 *   trajloss_rollout        (opts, Ad, Bd, [offset], x0, controls) -> states
 *   trajloss_rollout_vjp    (opts, Ad, Bd, [offset], grad_states) -> grad_controls, grad_x0
 * The bracketed operands are present when opts' flags say so. opts is float64
 * values as uint32 words (O_* below); so are the system's arrays, and a weight
 * or feature/state weights that are constants (a traced weight is float32 or
 * float64). Trajectory arrays are batched (B, ...), all float32 or all float64
 * (trajloss.jax has checked shapes and dtypes when it traced the call).
 *
 * vmap: jax.py declares vmap_method="broadcast_all", so under vmap every
 * operand and result carries the same leading axes; each index of them is an
 * independent call (a loss of its own), run one after another here.
 *
 * Errors that depend on values (NaN or inf where check_finite looks, lengths
 * outside [0, T], a negative traced weight, no valid step) are XLA errors
 * whose message is the one the NumPy API raises; JAX raises them as
 * JaxRuntimeError.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "_xla_ffi_abi.h"
#include "trajloss.h"
#include "xla_ffi.h"

/* opts: the float64 options of a call (all integers are exact in a double). */
enum { O_FLAGS, O_TERMS, O_CONTROL_WEIGHT, O_DISCOUNT, O_PENALTY, O_DELTA, O_THREADS, O_COUNT };
_Static_assert(O_COUNT == TLX_OPTIONS, "xla_ffi.h's TLX_OPTIONS counts the options");

/* O_FLAGS bits: which optional operands are present, and the boolean options. */
enum {
    F_OFFSET = 1,
    F_TIME_VARYING = 2,
    F_REF_CONTROLS = 4,
    F_REF_STATES = 8,
    F_TARGET = 16,
    F_LENGTHS = 32,
    F_MASK = 64,
    F_FEATURE_WEIGHTS = 128,
    F_STATE_WEIGHTS = 256,
    F_WANT_GRAD = 512,
    F_INCLUDE_INITIAL = 1024,
    F_CHECK_FINITE = 2048,
    F_DISCOUNT = 4096,
    F_TERMINAL_TARGET = 8192 /* the target is named terminal_target in messages */
};

#define MAX_OPERANDS 16
#define MAX_RESULTS 3
#define MSG 512

/* One operand or result of one (unbatched by vmap) call. */
typedef struct {
    int dtype;
    char *data;
    int rank;
    const int64_t *dims;
    int64_t count; /* elements */
} view;

static size_t dtype_bytes(int dtype)
{
    switch (dtype) {
    case TLX_PRED: case TLX_S8: case TLX_U8: return 1;
    case TLX_S16: return 2;
    case TLX_S32: case TLX_U32: case TLX_F32: return 4;
    case TLX_S64: case TLX_F64: return 8;
    default: return 0;
    }
}

/* Python's repr of a float, so that a message reads as the NumPy API's: the
 * shortest digits that round-trip, positional for exponents in [-4, 16) (with
 * ".0" on integers), else d.ddde+XX. */
static void float_repr(double x, char *out, size_t size)
{
    if (isnan(x) || isinf(x)) {
        snprintf(out, size, isnan(x) ? "nan" : x > 0 ? "inf" : "-inf");
        return;
    }
    int digits = 1;
    char sci[40];
    for (; digits <= 17; digits++) {
        snprintf(sci, sizeof sci, "%.*e", digits - 1, x);
        if (strtod(sci, NULL) == x)
            break;
    }
    const int exp = x == 0 ? 0 : atoi(strchr(sci, 'e') + 1);
    if (exp < -4 || exp >= 16) {
        snprintf(out, size, "%s", sci);
        return;
    }
    const int decimals = digits - 1 - exp > 0 ? digits - 1 - exp : 0;
    snprintf(out, size, "%.*f", decimals, x);
    if (strchr(out, '.') == NULL && strlen(out) + 2 < size)
        strcat(out, ".0");
}

/* ---- reading operands --------------------------------------------------- */

/* A number held by a 0-d (or one-element) operand: float32, float64, or a
 * float64 constant as two uint32 words. */
static double scalar_of(const view *v)
{
    switch (v->dtype) {
    case TLX_F32: return *(const float *)v->data;
    case TLX_F64: return *(const double *)v->data;
    default: {
        double d;
        memcpy(&d, v->data, sizeof d);
        return d;
    }
    }
}

/* Feature or state weights `name` (count `want`) as doubles in `out`:
 * float32, float64 or float64 words, each finite and >= 0 (a traced array's
 * values are only known here). 0 on success, else -1 with a message. */
static int weights_of(const view *v, const char *name, int64_t want, double *out, char *msg)
{
    char repr[64];
    const int64_t count = v->dtype == TLX_U32 ? v->count / 2 : v->count;
    if (count != want || (v->dtype != TLX_U32 && v->dtype != TLX_F32 && v->dtype != TLX_F64)) {
        snprintf(msg, MSG, "trajloss FFI: %s has an unexpected layout", name);
        return -1;
    }
    for (int64_t i = 0; i < count; i++) {
        if (v->dtype == TLX_F32)
            out[i] = ((const float *)v->data)[i];
        else
            memcpy(&out[i], v->data + i * 8, sizeof(double)); /* float64 or its words */
        if (!(isfinite(out[i]) && out[i] >= 0.0)) {
            float_repr(out[i], repr, sizeof repr);
            snprintf(msg, MSG, "%s must be finite and >= 0, got %s at index %lld", name, repr,
                     (long long)i);
            return -1;
        }
    }
    return 0;
}

/* ---- the system: Ad, Bd, offset -> tl_dynamics --------------------------- */

/* The arrays are float64 words; their rank says whether each is per sample
 * (one axis more than the shared form), as in trajloss/_coremodule.c. */
static int system_of(const view *sys, int has_offset, int tv, tl_dynamics *d, char *msg)
{
    static const int core_rank[3] = {2, 2, 1};
    memset(d, 0, sizeof *d);
    d->kind = TL_DYN_LINEAR;
    const int count = has_offset ? 3 : 2;
    for (int i = 0; i < count; i++) {
        const view *a = &sys[i];
        const int shared = core_rank[i] + tv;
        if (a->dtype != TLX_U32 || (a->rank != shared && a->rank != shared + 1) || a->rank < 1) {
            snprintf(msg, MSG, "trajloss FFI: system array %d has an unexpected layout", i);
            return -1;
        }
        const int64_t words = a->dims[a->rank - 1];
        const int64_t last = words / 2; /* float64 count of the last axis */
        if (i == 0) {
            d->n = last;
        } else if (i == 1) {
            d->m = last;
        }
        const int per_sample = a->rank == shared + 1;
        int64_t matrix = i == 2 ? last : a->dims[a->rank - 2] * last;
        int64_t sample = matrix;
        if (tv)
            sample *= a->dims[per_sample];
        tl_field *f = i == 0 ? &d->A : i == 1 ? &d->B : &d->c;
        f->data = (const double *)a->data;
        f->batch_stride = per_sample ? sample : 0;
        f->step_stride = tv ? matrix : 0;
        if (per_sample)
            d->batch = a->dims[0];
        if (tv)
            d->steps = a->dims[per_sample];
    }
    return 0;
}

/* ---- errors ---------------------------------------------------------------- */

static tlx_error *fail(const tlx_call_frame *frame, int code, const char *message)
{
    tlx_error_create_args args = {TLX_STRUCT_SIZE(tlx_error_create_args, errc), NULL, message,
                                  code};
    return frame->api->error_create(&args);
}

static void status_message(tl_status status, const char *context, char *msg)
{
    if (status == TL_ERR_EMPTY)
        snprintf(msg, MSG,
                 "%s: no valid step in the batch: every sequence has lengths 0 or an "
                 "all-False mask, or the batch is empty", context);
    else
        snprintf(msg, MSG, "%s: %s", context, tl_status_message(status));
}

/* The NaN error naming the first input tl_loss_bad_inputs reports. */
static void nonfinite_message(unsigned bad, const char *const *names, const unsigned *bits,
                              int count, char *msg)
{
    for (int i = 0; i < count; i++)
        if (bad & bits[i]) {
            snprintf(msg, MSG,
                     "%s contains NaN or inf at a step the loss reads; pass check_finite=False "
                     "to let them propagate", names[i]);
            return;
        }
    status_message(TL_ERR_NONFINITE, "loss", msg);
}

/* ---- the selection: lengths (int32 or int64), mask, discount ---------------- */

typedef struct {
    int64_t *lengths; /* owned copy when the operand was int32, else NULL */
} owned_selection;

static int selection_of(const double *opts, const view *lengths, const view *mask,
                        int64_t batch, int64_t steps, tl_selection *sel, owned_selection *own,
                        char *msg)
{
    const unsigned flags = (unsigned)opts[O_FLAGS];
    sel->batch = batch;
    sel->steps = steps;
    sel->lengths = NULL;
    sel->mask = NULL;
    sel->discount = flags & F_DISCOUNT ? opts[O_DISCOUNT] : 1.0;
    own->lengths = NULL;
    if (lengths != NULL) {
        if (lengths->count != batch || (lengths->dtype != TLX_S32 && lengths->dtype != TLX_S64)) {
            snprintf(msg, MSG, "trajloss FFI: lengths has an unexpected layout");
            return -1;
        }
        if (lengths->dtype == TLX_S64) {
            sel->lengths = (const int64_t *)lengths->data;
        } else {
            own->lengths = malloc((size_t)(batch > 0 ? batch : 1) * sizeof(int64_t));
            if (own->lengths == NULL) {
                snprintf(msg, MSG, "trajloss FFI: out of memory");
                return -1;
            }
            for (int64_t b = 0; b < batch; b++)
                own->lengths[b] = ((const int32_t *)lengths->data)[b];
            sel->lengths = own->lengths;
        }
        for (int64_t b = 0; b < batch; b++)
            if (sel->lengths[b] < 0 || sel->lengths[b] > steps) {
                snprintf(msg, MSG, "lengths must lie in [0, T] = [0, %lld], got %lld at index %lld",
                         (long long)steps, (long long)sel->lengths[b], (long long)b);
                return -1;
            }
    }
    if (mask != NULL) {
        if (mask->count != batch * steps || dtype_bytes(mask->dtype) != 1) {
            snprintf(msg, MSG, "trajloss FFI: mask has an unexpected layout");
            return -1;
        }
        sel->mask = (const unsigned char *)mask->data;
    }
    return 0;
}

/* A trajectory array: dtype `dtype`, `count` elements. */
static int traj_ok(const view *v, int dtype, int64_t count)
{
    return v->dtype == dtype && v->count == count;
}

static int float_dtype(int dtype, tl_dtype *out)
{
    *out = dtype == TLX_F64 ? TL_F64 : TL_F32;
    return dtype == TLX_F64 || dtype == TLX_F32 ? 0 : -1;
}

static void store_value(const view *v, int64_t i, double x)
{
    if (v->dtype == TLX_F64)
        ((double *)v->data)[i] = x;
    else
        ((float *)v->data)[i] = (float)x;
}

/* Scratch for a loss call, or NULL with a message. */
static void *loss_scratch(size_t bytes, char *msg)
{
    void *work = bytes ? malloc(bytes) : NULL;
    if (work == NULL)
        snprintf(msg, MSG, bytes ? "loss: out of memory" : "loss: the arrays are too large to process");
    return work;
}

/* ---- the four calls, each on one (vmap-unbatched) set of views ------------- */

/* Operands are consumed in order; optional ones when their flag is set. */
typedef struct {
    const view *v;
    int count, next;
} cursor;

static const view *take(cursor *c, int present)
{
    if (!present)
        return NULL;
    return c->next < c->count ? &c->v[c->next++] : NULL;
}

/* How many of the optional operands `bits` opts' flags say are present. */
static int present(unsigned flags, unsigned bits)
{
    int count = 0;
    for (unsigned f = flags & bits; f != 0; f &= f - 1)
        count++;
    return count;
}

static int weight_of(const view *w, const char *name, double *out, char *msg)
{
    char repr[64];
    *out = scalar_of(w);
    if (isfinite(*out) && *out >= 0)
        return 0;
    float_repr(*out, repr, sizeof repr);
    snprintf(msg, MSG, "%s must be a finite number >= 0, got %s", name, repr);
    return -1;
}

static int rollout_loss_call(const double *opts, const view *in, int nin, const view *out,
                             int nout, char *msg)
{
    const unsigned flags = (unsigned)opts[O_FLAGS];
    cursor c = {in, nin, 0};
    const int k = (flags & F_OFFSET) ? 3 : 2;
    tl_dynamics dyn;
    /* system, controls, x0, the references and selection, two weights, feature/state weights */
    if (nin != k + 4 + present(flags, F_REF_CONTROLS | F_REF_STATES | F_TARGET | F_LENGTHS |
                                          F_MASK | F_FEATURE_WEIGHTS | F_STATE_WEIGHTS)) {
        snprintf(msg, MSG, "trajloss FFI: rollout_loss operands do not match its options");
        return -1;
    }
    if (system_of(in, k == 3, (flags & F_TIME_VARYING) != 0, &dyn, msg) < 0)
        return -1;
    c.next = k;
    const view *u = take(&c, 1), *x0 = take(&c, 1);
    const view *rc = take(&c, flags & F_REF_CONTROLS), *rs = take(&c, flags & F_REF_STATES);
    const view *tg = take(&c, flags & F_TARGET), *len = take(&c, flags & F_LENGTHS);
    const view *mask = take(&c, flags & F_MASK);
    const view *wt = take(&c, 1), *we = take(&c, 1);
    const view *fw = take(&c, flags & F_FEATURE_WEIGHTS), *sw = take(&c, flags & F_STATE_WEIGHTS);
    const int want_grad = (flags & F_WANT_GRAD) != 0;
    tl_dtype dtype;
    if (u->rank != 3 || float_dtype(u->dtype, &dtype) < 0 ||
        nout != (want_grad ? 3 : 1) || out[0].count != 4 || out[0].dtype != u->dtype) {
        snprintf(msg, MSG, "trajloss FFI: rollout_loss operands do not match its options");
        return -1;
    }
    const int64_t B = u->dims[0], T = u->dims[1], n = dyn.n, m = dyn.m;
    if (u->dims[2] != m || !traj_ok(x0, u->dtype, B * n) ||
        (rc && !traj_ok(rc, u->dtype, B * T * m)) || (rs && !traj_ok(rs, u->dtype, B * (T + 1) * n)) ||
        (tg && !traj_ok(tg, u->dtype, B * n)) ||
        (want_grad && (!traj_ok(&out[1], u->dtype, B * T * m) || !traj_ok(&out[2], u->dtype, B * n))) ||
        tl_dynamics_check(&dyn, B, T) != TL_OK) {
        snprintf(msg, MSG, "trajloss FFI: rollout_loss shapes do not match");
        return -1;
    }
    tl_loss_spec spec = {0};
    double *fwd = NULL, *swd = NULL;
    owned_selection own = {NULL};
    void *work = NULL;
    int rc_status = -1;
    if (weight_of(wt, "weight", &spec.trajectory_weight, msg) < 0 ||
        weight_of(we, "terminal_weight", &spec.terminal_weight, msg) < 0 ||
        selection_of(opts, len, mask, B, T, &spec.sel, &own, msg) < 0)
        goto done;
    fwd = malloc((size_t)(m + n) * sizeof(double));
    if (fwd == NULL) {
        snprintf(msg, MSG, "loss: out of memory");
        goto done;
    }
    swd = fwd + m;
    if ((fw && weights_of(fw, "feature_weights", m, fwd, msg) < 0) ||
        (sw && weights_of(sw, "state_weights", n, swd, msg) < 0))
        goto done;
    spec.penalty = (tl_penalty)(int)opts[O_PENALTY];
    spec.delta = opts[O_DELTA];
    spec.terms = (unsigned)opts[O_TERMS];
    spec.control_weight = opts[O_CONTROL_WEIGHT];
    spec.include_initial = (flags & F_INCLUDE_INITIAL) != 0;
    spec.feature_weights = fw ? fwd : NULL;
    spec.state_weights = sw ? swd : NULL;
    spec.threads = (int)opts[O_THREADS];
    spec.check_finite = (flags & F_CHECK_FINITE) != 0;
    spec.kernel = TL_KERNEL_AUTO;
    if ((work = loss_scratch(tl_loss_work_bytes(&dyn, m, &spec), msg)) == NULL)
        goto done;
    const tl_loss_io io = {dtype, u->data, x0->data, rc ? rc->data : NULL, rs ? rs->data : NULL,
                           tg ? tg->data : NULL, want_grad ? out[1].data : NULL,
                           want_grad ? out[2].data : NULL};
    tl_loss_value value = {0};
    tl_status status = B == 0 || T == 0 ? TL_ERR_EMPTY : tl_rollout_loss(&dyn, &spec, &io, &value, work);
    if (status == TL_ERR_NONFINITE) {
        const char *names[5] = {"controls", "x0", "ref_controls", "ref_states",
                                flags & F_TERMINAL_TARGET ? "terminal_target" : "target"};
        static const unsigned bits[5] = {TL_IN_CONTROLS, TL_IN_X0, TL_IN_REF_CONTROLS,
                                         TL_IN_REF_STATES, TL_IN_TARGET};
        nonfinite_message(tl_loss_bad_inputs(&dyn, m, &spec, &io), names, bits, 5, msg);
        goto done;
    }
    if (status != TL_OK) {
        status_message(status, "loss", msg);
        goto done;
    }
    store_value(&out[0], 0, value.total);
    store_value(&out[0], 1, value.control);
    store_value(&out[0], 2, value.trajectory);
    store_value(&out[0], 3, value.terminal);
    rc_status = 0;
done:
    free(work);
    free(fwd);
    free(own.lengths);
    return rc_status;
}

static int control_loss_call(const double *opts, const view *in, int nin, const view *out,
                             int nout, char *msg)
{
    const unsigned flags = (unsigned)opts[O_FLAGS];
    cursor c = {in, nin, 0};
    if (nin != 2 + present(flags, F_LENGTHS | F_MASK | F_FEATURE_WEIGHTS)) {
        snprintf(msg, MSG, "trajloss FFI: control_loss operands do not match its options");
        return -1;
    }
    const view *p = take(&c, 1), *t = take(&c, 1);
    const view *len = take(&c, flags & F_LENGTHS), *mask = take(&c, flags & F_MASK);
    const view *fw = take(&c, flags & F_FEATURE_WEIGHTS);
    const int want_grad = (flags & F_WANT_GRAD) != 0;
    tl_dtype dtype;
    if (p->rank != 3 || float_dtype(p->dtype, &dtype) < 0 ||
        !traj_ok(t, p->dtype, p->count) || nout != (want_grad ? 2 : 1) || out[0].count != 1 ||
        out[0].dtype != p->dtype || (want_grad && !traj_ok(&out[1], p->dtype, p->count))) {
        snprintf(msg, MSG, "trajloss FFI: control_loss operands do not match its options");
        return -1;
    }
    const int64_t B = p->dims[0], T = p->dims[1], D = p->dims[2];
    tl_loss_spec spec = {0};
    double *fwd = NULL;
    owned_selection own = {NULL};
    void *work = NULL;
    int rc_status = -1;
    if (selection_of(opts, len, mask, B, T, &spec.sel, &own, msg) < 0)
        goto done;
    if (fw) {
        if ((fwd = malloc((size_t)(D > 0 ? D : 1) * sizeof(double))) == NULL) {
            snprintf(msg, MSG, "control_loss: out of memory");
            goto done;
        }
        if (weights_of(fw, "feature_weights", D, fwd, msg) < 0)
            goto done;
    }
    spec.penalty = (tl_penalty)(int)opts[O_PENALTY];
    spec.delta = opts[O_DELTA];
    spec.terms = TL_TERM_CONTROL;
    spec.control_weight = 1.0;
    spec.feature_weights = fwd;
    spec.threads = (int)opts[O_THREADS];
    spec.check_finite = (flags & F_CHECK_FINITE) != 0;
    spec.kernel = TL_KERNEL_AUTO;
    if ((work = loss_scratch(tl_loss_work_bytes(NULL, D, &spec), msg)) == NULL)
        goto done;
    const tl_loss_io io = {dtype, p->data, NULL, t->data, NULL, NULL,
                           want_grad ? out[1].data : NULL, NULL};
    tl_loss_value value = {0};
    tl_status status = B == 0 || T == 0 ? TL_ERR_EMPTY : tl_control_loss(&spec, D, &io, &value, work);
    if (status == TL_ERR_NONFINITE) {
        static const char *const names[2] = {"pred", "target"};
        static const unsigned bits[2] = {TL_IN_CONTROLS, TL_IN_REF_CONTROLS};
        nonfinite_message(tl_loss_bad_inputs(NULL, D, &spec, &io), names, bits, 2, msg);
        goto done;
    }
    if (status != TL_OK) {
        status_message(status, "control_loss", msg);
        goto done;
    }
    store_value(&out[0], 0, value.total);
    rc_status = 0;
done:
    free(work);
    free(fwd);
    free(own.lengths);
    return rc_status;
}

static int all_finite(const view *v)
{
    return v->dtype == TLX_F64 ? tl_all_finite_f64((const double *)v->data, v->count)
                               : tl_all_finite_f32((const float *)v->data, v->count);
}

/* The rollout (vjp = 0) or its adjoint (vjp = 1). */
static int rollout_call(int vjp, const double *opts, const view *in, int nin, const view *out,
                        int nout, char *msg)
{
    const unsigned flags = (unsigned)opts[O_FLAGS];
    const int k = (flags & F_OFFSET) ? 3 : 2;
    tl_dynamics dyn;
    if (nin != k + (vjp ? 1 : 2) || nout != (vjp ? 2 : 1)) {
        snprintf(msg, MSG, "trajloss FFI: rollout operands do not match its options");
        return -1;
    }
    if (system_of(in, k == 3, (flags & F_TIME_VARYING) != 0, &dyn, msg) < 0)
        return -1;
    const view *first = &in[k];
    tl_dtype dtype;
    if (float_dtype(first->dtype, &dtype) < 0 || (vjp ? first->rank != 3 : in[k + 1].rank != 3)) {
        snprintf(msg, MSG, "trajloss FFI: rollout operands have an unexpected layout");
        return -1;
    }
    const int64_t n = dyn.n, m = dyn.m;
    const int64_t B = vjp ? first->dims[0] : in[k + 1].dims[0];
    const int64_t T = vjp ? first->dims[1] - 1 : in[k + 1].dims[1];
    const int ok = vjp ? traj_ok(first, first->dtype, B * (T + 1) * n) &&
                             traj_ok(&out[0], first->dtype, B * T * m) &&
                             traj_ok(&out[1], first->dtype, B * n)
                       : traj_ok(first, first->dtype, B * n) &&
                             traj_ok(&in[k + 1], first->dtype, B * T * m) &&
                             traj_ok(&out[0], first->dtype, B * (T + 1) * n);
    if (!ok || T < 0 || tl_dynamics_check(&dyn, B, T) != TL_OK) {
        snprintf(msg, MSG, "trajloss FFI: rollout shapes do not match");
        return -1;
    }
    if (!vjp && (flags & F_CHECK_FINITE)) {
        static const char *const names[2] = {"x0", "controls"};
        for (int i = 0; i < 2; i++)
            if (!all_finite(&in[k + i])) {
                snprintf(msg, MSG, "%s contains NaN or inf; pass check_finite=False to let them "
                         "propagate", names[i]);
                return -1;
            }
    }
    void *work = loss_scratch(tl_rollout_work_bytes(n, m), msg);
    if (work == NULL)
        return -1;
    const tl_status status =
        vjp ? tl_rollout_vjp(&dyn, dtype, B, T, NULL, NULL, first->data, out[0].data, out[1].data, work)
            : tl_rollout(&dyn, dtype, B, T, first->data, in[k + 1].data, out[0].data, work);
    free(work);
    if (status != TL_OK) {
        status_message(status, vjp ? "rollout_vjp" : "rollout", msg);
        return -1;
    }
    return 0;
}

/* ---- the handlers: metadata, vmap axes, dispatch ----------------------------- */

typedef enum { OP_ROLLOUT_LOSS, OP_CONTROL_LOSS, OP_ROLLOUT, OP_ROLLOUT_VJP } op_kind;

/* Answer XLA's version query (at registration). */
static tlx_error *metadata(tlx_call_frame *frame)
{
    tlx_metadata *md = ((tlx_metadata_extension *)frame->extension_start)->metadata;
    md->api_version.struct_size = TLX_STRUCT_SIZE(tlx_api_version, minor_version);
    md->api_version.extension_start = NULL;
    md->api_version.major_version = TLX_API_MAJOR;
    md->api_version.minor_version = TLX_API_MINOR;
    md->traits = 0;
    return NULL;
}

/* b's slice number `i` of `slices` equal slices: the vmap axes `lead_dims`
 * (`lead` of them) lead every operand and result. */
static int slice_view(const tlx_buffer *b, int lead, const int64_t *lead_dims, int64_t slices,
                      int64_t i, view *v)
{
    size_t bytes = dtype_bytes(b->dtype);
    int64_t count = 1;
    if (bytes == 0 || b->rank < lead)
        return -1;
    for (int d = 0; d < lead; d++)
        if (b->dims[d] != lead_dims[d])
            return -1;
    for (int64_t d = 0; d < b->rank; d++)
        count *= b->dims[d];
    v->dtype = b->dtype;
    v->rank = (int)(b->rank - lead);
    v->dims = b->dims + lead;
    v->count = slices ? count / slices : 0;
    v->data = (char *)b->data + (size_t)(i * v->count) * bytes;
    return 0;
}

static tlx_error *dispatch(tlx_call_frame *frame, op_kind op)
{
    char msg[MSG] = "";
    if (frame->extension_start != NULL && frame->extension_start->type == TLX_EXTENSION_METADATA)
        return metadata(frame);
    const int nin = (int)frame->args.size, nout = (int)frame->rets.size;
    if (nin < 1 || nin > MAX_OPERANDS || nout < 1 || nout > MAX_RESULTS)
        return fail(frame, TLX_ERROR_INTERNAL, "trajloss FFI: unexpected number of operands");
    for (int i = 0; i < nin; i++)
        if (frame->args.types[i] != TLX_ARG_BUFFER)
            return fail(frame, TLX_ERROR_INTERNAL, "trajloss FFI: operands must be buffers");
    /* opts is (2 O_COUNT,) words: any axes before it are vmap's */
    const tlx_buffer *opts_buffer = frame->args.args[0];
    if (opts_buffer->dtype != TLX_U32 || opts_buffer->rank < 1 ||
        opts_buffer->dims[opts_buffer->rank - 1] != 2 * O_COUNT)
        return fail(frame, TLX_ERROR_INTERNAL, "trajloss FFI: malformed options");
    const int lead = (int)opts_buffer->rank - 1;
    int64_t slices = 1;
    for (int d = 0; d < lead; d++)
        slices *= opts_buffer->dims[d];
    view in[MAX_OPERANDS], out[MAX_RESULTS];
    for (int64_t s = 0; s < slices; s++) {
        for (int i = 0; i < nin; i++)
            if (slice_view(frame->args.args[i], lead, opts_buffer->dims, slices, s, &in[i]) < 0)
                return fail(frame, TLX_ERROR_INTERNAL, "trajloss FFI: unsupported operand");
        for (int i = 0; i < nout; i++)
            if (slice_view(frame->rets.rets[i], lead, opts_buffer->dims, slices, s, &out[i]) < 0)
                return fail(frame, TLX_ERROR_INTERNAL, "trajloss FFI: unsupported result");
        double opts[O_COUNT];
        memcpy(opts, in[0].data, sizeof opts);
        int status;
        switch (op) {
        case OP_ROLLOUT_LOSS:
            status = rollout_loss_call(opts, in + 1, nin - 1, out, nout, msg);
            break;
        case OP_CONTROL_LOSS:
            status = control_loss_call(opts, in + 1, nin - 1, out, nout, msg);
            break;
        default:
            status = rollout_call(op == OP_ROLLOUT_VJP, opts, in + 1, nin - 1, out, nout, msg);
            break;
        }
        if (status < 0)
            return fail(frame, TLX_ERROR_INVALID_ARGUMENT, msg);
    }
    return NULL;
}

static tlx_error *handle_rollout_loss(tlx_call_frame *frame) { return dispatch(frame, OP_ROLLOUT_LOSS); }
static tlx_error *handle_control_loss(tlx_call_frame *frame) { return dispatch(frame, OP_CONTROL_LOSS); }
static tlx_error *handle_rollout(tlx_call_frame *frame) { return dispatch(frame, OP_ROLLOUT); }
static tlx_error *handle_rollout_vjp(tlx_call_frame *frame) { return dispatch(frame, OP_ROLLOUT_VJP); }

static const tlx_target TARGETS[] = {
    {"trajloss_rollout_loss", (void *)handle_rollout_loss},
    {"trajloss_control_loss", (void *)handle_control_loss},
    {"trajloss_rollout", (void *)handle_rollout},
    {"trajloss_rollout_vjp", (void *)handle_rollout_vjp},
};

const tlx_target *tlx_targets(size_t *count)
{
    *count = sizeof TARGETS / sizeof TARGETS[0];
    return TARGETS;
}
