/*
 * trajloss.h -- the whole public C API of the trajloss core.
 *
 * The core knows nothing of Python. Conventions:
 *   - every exported symbol starts with tl_ (types tl_*, macros and enum values TL_*);
 *   - every fallible function returns a tl_status; tl_status_message() names it;
 *   - matrices are dense, row-major (C order), contiguous;
 *   - batched arrays are batch-major and contiguous: controls[b][k][j], states[b][k][i];
 *   - memory is the caller's: outputs and scratch space are passed in. Functions that
 *     need scratch space have a *_work_bytes() companion that says how much; nothing
 *     in the core allocates;
 *   - sums are accumulated in double for both float and double kernels.
 */
#ifndef TRAJLOSS_H
#define TRAJLOSS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TL_VERSION "0.1.0"

/* Largest state or input dimension the core accepts. Dense n x n work (matrix
 * exponential, LAPACK with 32-bit integers) makes larger systems impractical. */
#define TL_MAX_DIM 4096

typedef enum {
    TL_OK = 0,
    TL_ERR_SHAPE,     /* a dimension is negative, zero where it must not be, or too large */
    TL_ERR_VALUE,     /* an argument is outside its domain (dt <= 0, unknown method, NaN) */
    TL_ERR_SINGULAR,  /* a matrix that must be invertible is singular */
    TL_ERR_NOMEM,     /* scratch space missing */
    TL_ERR_LAPACK,    /* LAPACK rejected an argument (a bug in trajloss) */
    TL_ERR_EMPTY,     /* a loss over a batch with no valid step */
    TL_ERR_NONFINITE, /* an input holds NaN or inf (losses with check_finite set) */
    TL_ERR_INTERRUPTED, /* the caller's tl_cancel poll asked to stop; outputs are undefined */
    TL_STATUS_COUNT
} tl_status;

/* A static, human-readable description of a status code. Never NULL. */
const char *tl_status_message(tl_status status);

/* Cooperative cancellation of a long call. The core calls poll(ctx) between
 * its heavy steps (each a matrix product or solve) and stops with
 * TL_ERR_INTERRUPTED as soon as it returns nonzero. A NULL tl_cancel, or a
 * NULL poll, never cancels. poll runs on the calling thread. */
typedef struct tl_cancel {
    int (*poll)(void *ctx);
    void *ctx;
} tl_cancel;

/* ---- dynamics.c: the one description of a system ---------------------- */

/*
 * Shapes, strides and padding -- the invariants every entry point shares.
 *
 * Trajectory arrays are dense, C order, batch-major and contiguous:
 *   x0 [B][n], controls [B][T][m], states [B][T+1][n], ref_controls [B][T][m],
 *   ref_states [B][T+1][n], target [B][n]; gradients have their input's shape.
 * Control step k acts between state k and state k+1.
 *
 * The system's arrays are float64 whatever the trajectory dtype. A tl_field
 * is one of them: the matrix (or vector) of sample b at step k starts at
 *     data + b * batch_stride + k * step_stride        (in doubles)
 * and is itself dense, row-major. Stride 0 means shared: batch_stride 0 is
 * one system for the whole batch, step_stride 0 the same at every step.
 * A call checks that a field with batch_stride != 0 covers its batch
 * (dyn->batch == B) and one with step_stride != 0 its steps (dyn->steps == T).
 *
 * Padding. A sequence's valid steps (tl_selection) end at its last valid
 * step t_b. Elements a call does not read -- controls after t_b, references
 * at steps that are not scored -- may hold anything, NaN included: they never
 * change a bit of a result and check_finite never looks at them; the
 * gradient there is exactly 0. (A control masked out before t_b is read: it
 * drives the states after it.)
 */
typedef struct {
    const double *data;      /* NULL: absent (an offset only) */
    ptrdiff_t batch_stride;  /* doubles between samples, 0 = shared by the batch */
    ptrdiff_t step_stride;   /* doubles between steps, 0 = the same at every step */
} tl_field;

typedef enum {
    TL_DYN_LINEAR = 0, /* x_{k+1} = A_k x_k + B_k u_k (+ c_k) */
    TL_DYN_COUNT
} tl_dyn_kind;

/*
 * Slots for the dynamics that come next (nonlinear systems, system gradients,
 * LQR/iLQR), in the signatures of trajloss' C callback contract, for one
 * sample, float64, row-major, returning 0 on success:
 *   step(x, u, params, dt, x_next)           x_next = F(x, u; params)
 *   jacobians(x, u, params, dt, Fx, Fu)      Fx = dF/dx (n x n), Fu = dF/du (n x m)
 *   param_jacobian(x, u, params, dt, Fp)     Fp = dF/dparams (n x nparams)
 * A linear system's Jacobians are (A_k, B_k) themselves; its kernels read
 * them through tl_dyn_A/tl_dyn_B, which is where a step function's
 * Jacobians, evaluated along the forward pass, will be read instead. Until a
 * kind uses them they must be NULL (tl_dynamics_check).
 */
typedef int (*tl_step_fn)(const double *x, const double *u, const double *params, double dt,
                          double *x_next);
typedef int (*tl_jacobian_fn)(const double *x, const double *u, const double *params,
                              double dt, double *Fx, double *Fu);
typedef int (*tl_param_jacobian_fn)(const double *x, const double *u, const double *params,
                                    double dt, double *Fp);

typedef struct {
    tl_dyn_kind kind;
    ptrdiff_t n, m;   /* state and input dimensions, 1 .. TL_MAX_DIM */
    ptrdiff_t batch;  /* samples the per-sample fields hold (0 when none is per-sample) */
    ptrdiff_t steps;  /* steps the time-varying fields hold (0 when none varies) */
    tl_field A;       /* n x n */
    tl_field B;       /* n x m */
    tl_field c;       /* n, the offset; c.data NULL for none */
    /* reserved (see above): NULL / 0 for linear systems */
    tl_step_fn step;
    tl_jacobian_fn jacobians;
    tl_param_jacobian_fn param_jacobian;
    tl_field params;  /* nparams doubles a sample */
    ptrdiff_t nparams;
    double dt;
} tl_dynamics;

/* A shared, time-invariant linear system over Ad (n x n) and Bd (n x m). */
tl_dynamics tl_dynamics_linear(ptrdiff_t n, ptrdiff_t m, const double *Ad, const double *Bd);

/* TL_OK when dyn is well formed (sizes in range, matrices given, reserved
 * slots empty, strides >= 0) and fits a call over `batch` sequences of
 * `steps` steps (per-sample fields: dyn->batch == batch; time-varying fields:
 * dyn->steps == steps); TL_ERR_SHAPE for sizes, TL_ERR_VALUE otherwise. */
tl_status tl_dynamics_check(const tl_dynamics *dyn, ptrdiff_t batch, ptrdiff_t steps);

/* The matrices of sample b at step k. */
static inline const double *tl_field_at(const tl_field *f, ptrdiff_t b, ptrdiff_t k)
{
    return f->data == NULL ? NULL : f->data + b * f->batch_stride + k * f->step_stride;
}
static inline const double *tl_dyn_A(const tl_dynamics *d, ptrdiff_t b, ptrdiff_t k)
{
    return tl_field_at(&d->A, b, k);
}
static inline const double *tl_dyn_B(const tl_dynamics *d, ptrdiff_t b, ptrdiff_t k)
{
    return tl_field_at(&d->B, b, k);
}
static inline const double *tl_dyn_c(const tl_dynamics *d, ptrdiff_t b, ptrdiff_t k)
{
    return tl_field_at(&d->c, b, k);
}

/* The storage type of a call's trajectory arrays. float32 calls compute the
 * rollout losses in float (as PyTorch does); every sum is a double. */
typedef enum { TL_F64 = 0, TL_F32, TL_DTYPE_COUNT } tl_dtype;

/* ---- expm.c ------------------------------------------------------------ */

/* Bytes of scratch space tl_expm needs for an n x n matrix (0 if n is out of range). */
size_t tl_expm_work_bytes(ptrdiff_t n);

/* E = exp(A) for an n x n row-major matrix, 1 <= n <= 2 TL_MAX_DIM: LAPACK
 * balancing (a permutation, and a diagonal scaling by powers of two when it
 * lowers the 1-norm), then scaling and squaring with a diagonal Pade
 * approximant of degree 3, 5, 7, 9 or 13 chosen from the norms of powers of A
 * (Al-Mohy and Higham 2009). A triangular (or permuted-triangular) A gives an
 * exactly triangular E whose diagonal and first off-diagonal are computed
 * from their closed forms. A and E may not overlap. `work` holds
 * tl_expm_work_bytes(n) bytes; `cancel` may be NULL.
 * TL_ERR_SHAPE for a bad n, TL_ERR_VALUE if A is not finite, TL_ERR_SINGULAR
 * if the Pade denominator cannot be factorised, TL_ERR_INTERRUPTED. */
tl_status tl_expm(ptrdiff_t n, const double *A, double *E, void *work, const tl_cancel *cancel);

/* ---- discretize.c ------------------------------------------------------ */

typedef enum {
    TL_DISC_ZOH = 0, /* exact for piecewise-constant input: exp([[A, B], [0, 0]] dt) */
    TL_DISC_EULER,   /* Ad = I + dt A, Bd = dt B */
    TL_DISC_RK4,     /* the one-step classical Runge-Kutta map with u held constant */
    TL_DISC_COUNT
} tl_disc_method;

size_t tl_discretize_work_bytes(ptrdiff_t n, ptrdiff_t m);

/* Discretise xdot = A x + B u with step dt > 0 into (Ad, Bd).
 * A is n x n, B is n x m (row-major); Ad (n x n) and Bd (n x m) are written.
 * `work` holds tl_discretize_work_bytes(n, m) bytes; `cancel` (may be NULL)
 * is polled between the matrix products of zoh and rk4, TL_ERR_INTERRUPTED
 * when it says stop. */
tl_status tl_discretize(tl_disc_method method, ptrdiff_t n, ptrdiff_t m,
                        const double *A, const double *B, double dt,
                        double *Ad, double *Bd, void *work, const tl_cancel *cancel);

/* ---- rollout.c --------------------------------------------------------- */

/* Bytes of scratch the rollout, its adjoint and the final-state error need
 * (per call, not per sample); 0 when n or m is out of range. */
size_t tl_rollout_work_bytes(ptrdiff_t n, ptrdiff_t m);

/* states[b][0] = x0[b];  states[b][k+1] = A_k states[b][k] + B_k controls[b][k] + c_k
 * (the matrices of sample b). batch >= 0, steps >= 0; x0, controls and states
 * are of `dtype`; the state is carried in double between steps. */
tl_status tl_rollout(const tl_dynamics *dyn, tl_dtype dtype, ptrdiff_t batch, ptrdiff_t steps,
                     const void *x0, const void *controls, void *states, void *work);

/* The adjoint (vector-Jacobian product) of the rollout. Given
 * grad_states = dL/dstates (batch x (steps+1) x n) it writes
 *   grad_controls[b][k] = B_k^T lambda[b][k+1]   (batch x steps x m)
 *   grad_x0[b]          = lambda[b][0]           (batch x n)
 * with lambda[b][steps] = grad_states[b][steps] and
 *   lambda[b][k] = grad_states[b][k] + A_k^T lambda[b][k+1].
 * Either output may be NULL when it is not wanted. x0 and controls (the point
 * the Jacobians are taken at) are not read by linear systems and may be NULL. */
tl_status tl_rollout_vjp(const tl_dynamics *dyn, tl_dtype dtype, ptrdiff_t batch,
                         ptrdiff_t steps, const void *x0, const void *controls,
                         const void *grad_states, void *grad_controls, void *grad_x0,
                         void *work);

/* The Euclidean distance of each sequence's final valid state to its target:
 * error[b] = |x_{L_b} - xf[b]|_2 with L_b = lengths[b] (steps when lengths is
 * NULL), x the rollout of controls from x0. xf is batch x n, error batch long,
 * all of `dtype`. TL_ERR_VALUE for a length outside [0, steps]. */
tl_status tl_final_state_error(const tl_dynamics *dyn, tl_dtype dtype, ptrdiff_t batch,
                               ptrdiff_t steps, const int64_t *lengths, const void *controls,
                               const void *x0, const void *xf, void *error, void *work);

/* ---- weights.c: which steps count, and how much ------------------------ */

/* The valid steps of a batch of B sequences of T control steps: all of them,
 * a valid prefix per sequence (lengths, each in [0, T]), or an arbitrary
 * mask (B x T, nonzero = valid) -- lengths and mask are not both given.
 * discount gamma > 0 weights valid step t of sequence b by
 *   w[b][t] = gamma^t |S_b| / sum_{s in S_b} gamma^s,
 * so every sequence's valid steps have mean weight exactly 1. */
typedef struct {
    ptrdiff_t batch;
    ptrdiff_t steps;
    const int64_t *lengths;
    const unsigned char *mask;
    double discount;
} tl_selection;

/* TL_OK, TL_ERR_SHAPE (negative sizes) or TL_ERR_VALUE (lengths out of
 * [0, T], both lengths and mask, discount not finite and > 0). */
tl_status tl_selection_check(const tl_selection *sel);

size_t tl_time_weights_work_bytes(ptrdiff_t steps);

/* weights: B x T; rows of sequences with no valid step are all zero.
 * Stable for long T and any gamma: powers are taken relative to the first
 * (gamma <= 1) or last (gamma > 1) valid step, so the largest is 1. */
tl_status tl_time_weights(const tl_selection *sel, double *weights, void *work);

/* ---- loss.c: losses and their gradients in one pass -------------------- */

/* Elementwise penalty rho(r): r^2; |r| (derivative 0 at 0); Huber with
 * threshold delta > 0: r^2/2 if |r| <= delta else delta (|r| - delta/2). */
typedef enum {
    TL_PENALTY_MSE = 0,
    TL_PENALTY_L1,
    TL_PENALTY_HUBER,
    TL_PENALTY_COUNT
} tl_penalty;

/*
 * Worker threads kept between loss calls (optional: tl_loss_spec.pool). A
 * call with threads > 1 and no pool starts its threads and joins them before
 * it returns; with a pool it uses the pool's threads, started when a call
 * first needs them and asleep between calls. The memory is the caller's:
 *
 *     tl_pool *pool = malloc(tl_pool_bytes());
 *     tl_pool_init(pool);          starts no thread yet
 *     spec.pool = pool;            ... loss calls with spec.threads = k ...
 *     tl_pool_stop(pool);          joins its threads; no call may be running
 *     free(pool);                  (or tl_pool_init it again to reuse it)
 *
 * Calls from several threads may share a pool: one at a time uses it, the
 * others start threads of their own; results never depend on which. After
 * fork() the child must not use or stop a pool of its parent (its threads
 * do not exist there): it makes a new one and abandons the old.
 */
typedef struct tl_pool tl_pool;
size_t tl_pool_bytes(void);
tl_status tl_pool_init(tl_pool *pool);
void tl_pool_stop(tl_pool *pool);

/* Which terms a loss call computes (bit flags). */
enum {
    TL_TERM_CONTROL = 1,    /* controls vs ref_controls */
    TL_TERM_TRAJECTORY = 2, /* rolled-out states vs ref_states */
    TL_TERM_TERMINAL = 4    /* the final valid state vs a target */
};

/* Which kernel a rollout loss runs. AUTO: the fast path (tiles of sequences
 * side by side, batch innermost) wherever it applies, the plain per-sequence
 * kernel elsewhere; REFERENCE: the plain kernel alone (for tests: both agree
 * to rounding). */
typedef enum { TL_KERNEL_AUTO = 0, TL_KERNEL_REFERENCE, TL_KERNEL_COUNT } tl_kernel;

/*
 * Per-step error e[b][t] = mean_d s_d rho(pred - ref)[b][t][d] (s = feature
 * or state weights, NULL for all ones); each term's value is
 *   sum_{b,t} w[b][t] e[b][t] / sum_b |S_b|
 * (the terminal term: mean over sequences with a valid step of e at the
 * final valid state). Trajectory step t compares state t+1 (the state control
 * t produced); with include_initial, state 0 is scored too, as an extra step
 * with time index 0 that is valid for every sequence with a valid step.
 */
typedef struct {
    tl_selection sel;              /* batch B, steps T, valid steps, discount */
    tl_penalty penalty;
    double delta;
    unsigned terms;                /* TL_TERM_* flags (the control loss: TL_TERM_CONTROL) */
    double control_weight;         /* multipliers of each term in total and gradient */
    double trajectory_weight;
    double terminal_weight;
    int include_initial;
    const double *feature_weights; /* per control feature, or NULL */
    const double *state_weights;   /* per state, or NULL */
    int threads;                   /* worker threads over the batch (0 or 1: the caller's;
                                      see tl_pool for where the others come from) */
    int check_finite;              /* nonzero: TL_ERR_NONFINITE when an element the call
                                      reads is NaN or inf (see "Padding" above) */
    tl_kernel kernel;
    tl_pool *pool;                 /* threads kept between calls, or NULL */
} tl_loss_spec;

/* The arrays of a loss call, all of `dtype` (shapes: see "Shapes" above).
 * The control loss: controls = pred, ref_controls = target (B x T x D),
 * grad_controls = d value / d pred. The rollout losses read the references
 * their terms score: ref_controls (control term), ref_states (trajectory
 * term; the terminal term too when target is NULL) and target. Either
 * gradient may be NULL when it is not wanted. */
typedef struct {
    tl_dtype dtype;
    const void *controls, *x0, *ref_controls, *ref_states, *target;
    void *grad_controls, *grad_x0;
} tl_loss_io;

typedef struct {
    double total;      /* sum of weight * raw value over the computed terms */
    double control;    /* raw value of each term (0 if not computed) */
    double trajectory;
    double terminal;
    int nonfinite;     /* set when the value or a gradient written is inf or NaN -- for
                          finite inputs, an overflow of the result's dtype */
} tl_loss_value;

/*
 * Scratch bytes of a loss call: dyn NULL for the control loss over
 * `features` features, else the rollout loss of dyn (features unused).
 * 0 when a size is out of range or too large to address. The work splits
 * the batch into fixed chunks whose partial sums are added in order, so
 * results are bit-for-bit the same for any spec->threads.
 */
size_t tl_loss_work_bytes(const tl_dynamics *dyn, ptrdiff_t features, const tl_loss_spec *spec);

/* The control term alone, over `features` features per step. TL_ERR_EMPTY
 * when no step of the batch is valid. */
tl_status tl_control_loss(const tl_loss_spec *spec, ptrdiff_t features, const tl_loss_io *io,
                          tl_loss_value *value, void *work);

/*
 * Control, trajectory and terminal terms through the dynamics: the forward
 * rollout, penalties, weights, reduction and adjoint in one pass per
 * sequence. Gradients of value->total: grad_controls B x T x m, grad_x0 B x n.
 */
tl_status tl_rollout_loss(const tl_dynamics *dyn, const tl_loss_spec *spec,
                          const tl_loss_io *io, tl_loss_value *value, void *work);

/* Which inputs hold NaN or inf at an element the call reads -- what
 * check_finite checks -- a bit per input (TL_IN_*), 0 when none; for naming
 * the argument after a call returned TL_ERR_NONFINITE. dyn NULL: the control
 * loss (controls = pred, ref_controls = target). Scans the whole batch on the
 * caller's thread. */
enum { TL_IN_CONTROLS = 1, TL_IN_X0 = 2, TL_IN_REF_CONTROLS = 4, TL_IN_REF_STATES = 8,
       TL_IN_TARGET = 16 };
unsigned tl_loss_bad_inputs(const tl_dynamics *dyn, ptrdiff_t features,
                            const tl_loss_spec *spec, const tl_loss_io *io);

/* ---- finite.c ------------------------------------------------------------ */

/* 1 when all `count` values are finite (neither inf nor NaN), else 0. */
int tl_all_finite_f64(const double *p, ptrdiff_t count);
int tl_all_finite_f32(const float *p, ptrdiff_t count);

/* ---- reference.c: minimum-energy reference trajectories ---------------- */

/* average and continuous, and the law: a continuous Gramian W_c(H) whose
 * (equilibrated) condition number exceeds this is treated as singular. */
#define TL_COND_LIMIT 1e12

/* The law is evaluated in the direction (forward from x0, or backward from
 * xf) in which e^{At} grows least; where it still grows by more than this
 * over the horizon, cancellation would cost more than ~1e-10 of the state
 * scale, and the law is refused (TL_ERR_SINGULAR with info->growth set). */
#define TL_LAW_GROWTH_LIMIT 1e6

typedef enum {
    TL_REF_EXACT = 0, /* discrete minimum-energy controls, reach xf exactly */
    TL_REF_AVERAGE,   /* the continuous law averaged over each interval, ZOH rollout */
    TL_REF_CONTINUOUS,/* the same controls, states of the continuous optimum on the grid */
    TL_REF_COUNT
} tl_ref_method;

/*
 * The rank test of "exact": the column-pivoted QR of the row-equilibrated
 * C^T (D C)^T P = Q R, D = diag(1 / |row i of C|_2), keeps the diagonal
 * entries |R_kk| > tol = max(n, steps m) eps |R_11|. rank < n means some
 * direction of the state space is unreachable in `steps` steps.
 */
typedef struct {
    ptrdiff_t rank;   /* entries kept; -1 when C is not finite (Phi(T, 1) overflows) */
    double tol;       /* the tolerance on |R_kk| */
    double r_first;   /* |R_11| */
    double r_last;    /* |R_kk| of the last entry kept (0 when none is) */
    double r_next;    /* |R_kk| of the first entry refused (0 when rank = n) */
} tl_ref_rank;

/*
 * Everything a minimum-energy reference needs that depends only on one
 * system, the number of steps T and the method, computed once by
 * tl_ref_plan_init into caller-owned memory (tl_ref_plan_bytes), so that
 * each sample costs a few small matrix-vector products.
 *
 * The dynamics x_{k+1} = A_k x_k + B_k u_k + c_k of one sample (every
 * linear form of tl_dynamics: shared or that sample's matrices, the same at
 * every step or time-varying, with or without the offset c) give
 *   x_T = Phi(T, 0) x0 + C U + r,   Phi(T, k) = A_{T-1} ... A_k (Phi(T, T) = I),
 *   C = [Phi(T, 1) B_0, Phi(T, 2) B_1, ..., B_{T-1}]     (n x T m),
 *   r = sum_k Phi(T, k+1) c_k                            (the offset's drift),
 * so the controls solve C U = d with d = xf - Phi(T, 0) x0 - r. For a
 * time-invariant system Phi(T, k) = Ad^{T-k} and C = [Ad^{T-1} Bd ... Bd].
 * The controls are U = K d, or for exact U = K z with R^T z = S d:
 *   exact:       the minimum-norm solution of C U = d from the QR
 *                factorisation above, S = P^T D, K = Q explicit (orthonormal)
 *                and the triangular solve done per sample, so the residual is
 *                that of a backward-stable solve (an explicit
 *                C^+ = Q R^-T S would cost a factor cond(C); and C C^T
 *                would square it)
 *   average:     K = C^T W_c(H)^-1 / dt (the law u(t) = B^T e^{A^T (H-t)} W_c^-1 d
 *                                        averaged over each interval)
 * where for average/continuous (Ad, Bd) is the exact ZOH of the continuous
 * (A, B) (time-invariant, no offset). Continuous states are
 * x(k dt) = Ad^k x0 + Q_k d with Q_k = W_c(k dt) e^{A^T (H - k dt)} W_c(H)^-1.
 * The states of exact and average are the rollout (tl_rollout) of the
 * controls under plan->dyn: exact, the sample's own dynamics; average and
 * continuous, the plan's ZOH (Ad, Bd).
 */
typedef struct {
    ptrdiff_t n, m, steps;
    tl_ref_method method;
    double dt;      /* sampling period (1 for a discrete system without one): energy */
    double cond;    /* exact: 1-norm condition number estimate of R (that of the
                     * equilibrated C); average, continuous: that of the equilibrated
                     * W_c(H) */
    double growth;  /* continuous: max_k |Ad^k|_1, refused above TL_LAW_GROWTH_LIMIT */
    tl_ref_rank rank; /* exact only */
    tl_dynamics dyn;  /* the dynamics the states are rolled out with, one sample's
                       * (batch 0). exact: the caller's arrays -- they must outlive
                       * the plan; average, continuous: over Ad, Bd below */
    double *Ad;     /* average, continuous: n x n, the ZOH of (A, B); exact: NULL */
    double *Bd;     /* average, continuous: n x m; exact: NULL */
    double *AdT;    /* n x n: Phi(T, 0) (Ad^T) */
    double *drift;  /* n: r above (zeros without an offset) */
    double *K;      /* (steps m) x n */
    double *S;      /* exact: n x n, P^T D (one nonzero a row); else NULL */
    double *L;      /* exact: n x n, R^T below the diagonal and 1 / R_kk on it; else NULL */
    double *Q;      /* (steps + 1) x n x n, continuous only (else NULL) */
} tl_ref_plan;

/* Bytes of a plan's memory and of tl_ref_plan_init's scratch; 0 when a size
 * is out of range or not addressable. exact needs O(T n m + n^2) doubles of
 * each; average and continuous O(T n^2) (the powers Ad^k). */
size_t tl_ref_plan_bytes(ptrdiff_t n, ptrdiff_t m, ptrdiff_t steps, tl_ref_method method);
size_t tl_ref_init_work_bytes(ptrdiff_t n, ptrdiff_t m, ptrdiff_t steps, tl_ref_method method);

/*
 * Fill plan (its arrays carved from `memory`, tl_ref_plan_bytes long) for
 * sample `sample` of dyn (0 <= sample < max(dyn->batch, 1); every per-sample
 * field is read at that sample, shared ones as they are).
 * exact: dyn is the discrete system, any linear form whose time-varying
 * fields cover `steps` (dyn->steps == steps); A and B may be NULL; dt only
 * scales the energy. average and continuous: A (n x n) and B (n x m) are that
 * sample's continuous model and dt > 0 its period; dyn gives n and m only and
 * must be time-invariant (a time-varying system has no continuous model:
 * TL_ERR_VALUE).
 * steps >= 1 (and steps m < 2^31 for exact, LAPACK's index range).
 * TL_ERR_SINGULAR: exact, C numerically rank-deficient (plan->rank says
 * how); average and continuous, W_c(H) singular or ill-conditioned
 * (plan->cond, inf when the Cholesky factorisation fails), or continuous
 * states that grow beyond TL_LAW_GROWTH_LIMIT (plan->growth).
 */
tl_status tl_ref_plan_init(tl_ref_plan *plan, void *memory, tl_ref_method method,
                           const tl_dynamics *dyn, ptrdiff_t sample,
                           const double *A, const double *B, double dt,
                           ptrdiff_t steps, void *work);

/* Bytes of tl_ref_apply's scratch (its own and tl_rollout's). */
size_t tl_ref_apply_work_bytes(ptrdiff_t n, ptrdiff_t m);

/*
 * References for a batch under one plan: x0, xf batch x n; writes controls
 * batch x steps x m, states batch x (steps+1) x n, final_error
 * (|x_T of the rollout under plan->dyn - xf|_2, scaled so that it overflows
 * only when the miss itself does) and energy (sum_k |u_k|^2 dt), each batch
 * long.
 */
tl_status tl_ref_apply(const tl_ref_plan *plan, ptrdiff_t batch, const double *x0,
                       const double *xf, double *controls, double *states,
                       double *final_error, double *energy, void *work);

/*
 * The sampling period and continuous model of a batch for tl_min_energy, as
 * tl_fields (step_stride 0; batch_stride 0 = shared, else one per sample):
 * dt one double a sample (> 0); A n x n and B n x m, the continuous model of
 * average and continuous (data NULL for exact).
 */
typedef struct {
    tl_field dt;
    tl_field A;
    tl_field B;
} tl_ref_model;

/* What tl_min_energy reports. */
typedef struct {
    ptrdiff_t plans;  /* plans made: 1 when everything is shared (also for batch 0),
                         else one per sample */
    ptrdiff_t sample; /* on TL_ERR_SINGULAR: the sample whose plan failed */
    double cond;      /* the largest plan->cond of the plans made (of the failed one
                         on TL_ERR_SINGULAR) */
    double growth;    /* likewise plan->growth */
    tl_ref_rank rank; /* exact, on TL_ERR_SINGULAR: the failed plan's rank test */
} tl_ref_info;

/* Bytes of tl_min_energy's work (a plan and the scratch of its init and apply). */
size_t tl_min_energy_work_bytes(ptrdiff_t n, ptrdiff_t m, ptrdiff_t steps,
                                tl_ref_method method);

/*
 * Minimum-energy references for a batch over any linear form: one plan for
 * the batch when dyn and the model are shared by it (a shared system costs
 * one plan whatever the batch), else one plan per sample, each applied to
 * its own sample. dyn covers batch and steps as in tl_dynamics_check; the
 * caller guarantees that the model's per-sample fields hold `batch` samples.
 * Outputs as tl_ref_apply. `cancel` (may be NULL) is polled between
 * per-sample plans: TL_ERR_INTERRUPTED. Errors as tl_ref_plan_init, with
 * info naming the sample.
 */
tl_status tl_min_energy(tl_ref_method method, const tl_dynamics *dyn, const tl_ref_model *model,
                        ptrdiff_t steps, ptrdiff_t batch, const double *x0, const double *xf,
                        double *controls, double *states, double *final_error, double *energy,
                        tl_ref_info *info, void *work, const tl_cancel *cancel);

/* W_c(t) = int_0^t e^{As} B B^T e^{A^T s} ds: Van Loan's block exponential
 * exp([[-A, B B^T], [0, A^T]] h) = [[., G], [0, F]], W_c(h) = F^T G, at
 * h = t / 2^k with |A|_1 h <= 1, then k doublings
 * W_c(2h) = W_c(h) + e^{Ah} W_c(h) e^{A^T h}: a sum of positive semidefinite
 * terms, where F^T G at a long t would cancel e^{-At} against e^{At}. */
size_t tl_gramian_work_bytes(ptrdiff_t n);
tl_status tl_gramian(ptrdiff_t n, ptrdiff_t m, const double *A, const double *B, double t,
                     double *Wc, void *work);

/*
 * The continuous minimum-energy law from x0 to xf over [0, H], evaluated at
 * times 0 <= t <= H (no time stepping):
 *   u(t) = B^T e^{A^T (H - t)} lambda,  x(t) = e^{At} x0 + W_c(t) e^{A^T (H - t)} lambda,
 *   lambda = W_c(H)^-1 (xf - e^{AH} x0).
 * Evaluated as written unless |e^{AH}|_1 > 1e3 and |e^{-AH}|_1 is smaller;
 * then as the same law of the time-reversed system (-A, -B) from xf back to
 * x0, so that the exponentials in use never grow much while others decay
 * (a product of a growing and a decaying exponential loses the state to
 * cancellation).
 * x0, xf: batch x n; u: batch x ntimes x m; x: batch x ntimes x n.
 */
typedef struct {
    double cond;   /* condition number of the equilibrated Gramian of the direction used */
    double growth; /* largest |e^{A t}|_1 met in that direction; refused above
                      TL_LAW_GROWTH_LIMIT (TL_ERR_SINGULAR) */
    int backward;  /* 1 when evaluated from xf back to x0 */
} tl_law_info;

size_t tl_min_energy_law_work_bytes(ptrdiff_t n, ptrdiff_t m);
tl_status tl_min_energy_law(ptrdiff_t n, ptrdiff_t m, const double *A, const double *B,
                            double horizon, ptrdiff_t batch, const double *x0, const double *xf,
                            ptrdiff_t ntimes, const double *times, double *u, double *x,
                            tl_law_info *info, void *work);

#ifdef __cplusplus
}
#endif

#endif /* TRAJLOSS_H */
