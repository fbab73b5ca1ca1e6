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

/* A discrete linear time-invariant system x_{k+1} = Ad x_k + Bd u_k.
 * Ad is n x n, Bd is n x m, both row-major; the core only reads them. */
typedef struct {
    ptrdiff_t n;
    ptrdiff_t m;
    const double *Ad;
    const double *Bd;
} tl_system;

/* TL_OK when 1 <= n, m <= TL_MAX_DIM and both matrices are given. */
tl_status tl_system_check(const tl_system *sys);

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

/* Scratch space for the rollout and its adjoint (per call, not per sample). */
size_t tl_rollout_work_bytes(ptrdiff_t n);

/* states[b][0] = x0[b];  states[b][k+1] = Ad states[b][k] + Bd controls[b][k].
 * x0 is batch x n, controls batch x steps x m, states batch x (steps+1) x n.
 * batch >= 0 and steps >= 0; the state is carried in double between steps. */
tl_status tl_rollout_f64(const tl_system *sys, ptrdiff_t batch, ptrdiff_t steps,
                         const double *x0, const double *controls,
                         double *states, void *work);
tl_status tl_rollout_f32(const tl_system *sys, ptrdiff_t batch, ptrdiff_t steps,
                         const float *x0, const float *controls,
                         float *states, void *work);

/* The adjoint (vector-Jacobian product) of the rollout. Given
 * grad_states = dL/dstates (batch x (steps+1) x n) it writes
 *   grad_controls[b][k] = Bd^T lambda[b][k+1]   (batch x steps x m)
 *   grad_x0[b]          = lambda[b][0]          (batch x n)
 * with lambda[b][steps] = grad_states[b][steps] and
 *   lambda[b][k] = grad_states[b][k] + Ad^T lambda[b][k+1].
 * Either output may be NULL when it is not wanted. */
tl_status tl_rollout_vjp_f64(const tl_system *sys, ptrdiff_t batch, ptrdiff_t steps,
                             const double *grad_states,
                             double *grad_controls, double *grad_x0, void *work);
tl_status tl_rollout_vjp_f32(const tl_system *sys, ptrdiff_t batch, ptrdiff_t steps,
                             const float *grad_states,
                             float *grad_controls, float *grad_x0, void *work);

/* The Euclidean distance of each sequence's final valid state to its target:
 * error[b] = |x_{L_b} - xf[b]|_2 with L_b = lengths[b] (steps when lengths is
 * NULL), x the rollout of controls from x0. xf is batch x n; work as for the
 * rollout. TL_ERR_VALUE for a length outside [0, steps]. */
tl_status tl_final_state_error_f64(const tl_system *sys, ptrdiff_t batch, ptrdiff_t steps,
                                   const int64_t *lengths, const double *controls,
                                   const double *x0, const double *xf, double *error, void *work);
tl_status tl_final_state_error_f32(const tl_system *sys, ptrdiff_t batch, ptrdiff_t steps,
                                   const int64_t *lengths, const float *controls,
                                   const float *x0, const float *xf, float *error, void *work);

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
 * first needs them, which then wait for the next call spinning for some
 * 100 us and afterwards asleep. The memory is the caller's:
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
    tl_selection sel;
    tl_penalty penalty;
    double delta;
    unsigned terms;                /* TL_TERM_* flags */
    double control_weight;         /* multipliers of each term in total and gradient */
    double trajectory_weight;
    double terminal_weight;
    int include_initial;
    const double *feature_weights; /* per control feature, or NULL */
    const double *state_weights;   /* per state, or NULL */
    int threads;                   /* worker threads over the batch (0 or 1: the caller's;
                                      see tl_pool for where the others come from) */
    int check_finite;              /* nonzero: TL_ERR_NONFINITE when an element the call
                                      reads is NaN or inf (controls up to each last valid
                                      step, x0, ref_controls at valid steps, ref_states at
                                      scored states, the target; pred/target at valid steps).
                                      Padding is never read, so never checked. Blocks are
                                      scanned whole just before the kernel reads them, and
                                      element by element only when that scan finds one */
    int lanes;                     /* rollout losses: 0 computes 512-bit tiles (eight
                                      float64 or sixteen float32 sequences at a time) where
                                      the CPU has AVX-512 (in calls of 512 to some 10^5
                                      sequences, whose arrays stay in the cache), 256-bit
                                      ones (four float64, eight float32) elsewhere; 4
                                      always 256-bit ones; other values are refused. The
                                      results are the same bits either way */
    tl_pool *pool;                 /* threads kept between calls, or NULL */
} tl_loss_spec;

typedef struct {
    double total;      /* sum of weight * raw value over the computed terms */
    double control;    /* raw value of each term (0 if not computed) */
    double trajectory;
    double terminal;
    int nonfinite;     /* set when the value or a gradient written is inf or NaN -- for
                          finite inputs, an overflow of the result's dtype */
} tl_loss_value;

/*
 * Scratch bytes of a control loss call (0 when a size is out of range or
 * too large to address). The work splits the batch into fixed chunks whose
 * partial sums are added in order, so results are bit-for-bit the same for
 * any spec->threads; the scratch grows with the threads actually used.
 */
size_t tl_control_loss_work_bytes(ptrdiff_t features, ptrdiff_t steps, ptrdiff_t batch,
                                  int threads);

/* The control term alone: pred and target are B x T x features, grad (same
 * shape, may be NULL) = d value / d pred. Only TL_TERM_CONTROL is used, with
 * weight 1. TL_ERR_EMPTY when no step of the batch is valid. */
tl_status tl_control_loss_f64(const tl_loss_spec *spec, ptrdiff_t features,
                              const double *pred, const double *target,
                              tl_loss_value *value, double *grad, void *work);
tl_status tl_control_loss_f32(const tl_loss_spec *spec, ptrdiff_t features,
                              const float *pred, const float *target,
                              tl_loss_value *value, float *grad, void *work);

/* As tl_control_loss_work_bytes, for the rollout losses. */
size_t tl_rollout_loss_work_bytes(ptrdiff_t n, ptrdiff_t m, ptrdiff_t steps, ptrdiff_t batch,
                                  int threads);

/*
 * Control, trajectory and terminal terms through the dynamics, with the
 * forward rollout, penalties, weights, reduction and adjoint in one pass per
 * sequence. controls B x T x m, x0 B x n, ref_controls B x T x m (control
 * term), ref_states B x (T+1) x n (trajectory term), target B x n (terminal
 * term; NULL means ref_states at each final valid state). Gradients of
 * value->total: grad_controls B x T x m, grad_x0 B x n (either may be NULL).
 * Values after a sequence's last valid step never influence a result (they
 * may be read, then discarded by selects); their gradient is exactly zero.
 * The _f32 kernel computes in float (Ad, Bd rounded to float), each penalty
 * widened to double before it is summed; steps < INT_MAX.
 */
tl_status tl_rollout_loss_f64(const tl_system *sys, const tl_loss_spec *spec,
                              const double *controls, const double *x0,
                              const double *ref_controls, const double *ref_states,
                              const double *target, tl_loss_value *value,
                              double *grad_controls, double *grad_x0, void *work);
tl_status tl_rollout_loss_f32(const tl_system *sys, const tl_loss_spec *spec,
                              const float *controls, const float *x0,
                              const float *ref_controls, const float *ref_states,
                              const float *target, tl_loss_value *value,
                              float *grad_controls, float *grad_x0, void *work);

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
    ptrdiff_t rank;   /* entries kept; -1 when C is not finite (Ad^steps overflows) */
    double tol;       /* the tolerance on |R_kk| */
    double r_first;   /* |R_11| */
    double r_last;    /* |R_kk| of the last entry kept (0 when none is) */
    double r_next;    /* |R_kk| of the first entry refused (0 when rank = n) */
} tl_ref_rank;

/*
 * Everything a minimum-energy reference needs that depends only on the
 * system, the number of steps and the method, computed once by
 * tl_ref_plan_init into caller-owned memory (tl_ref_plan_bytes), so that
 * each sample costs a few small matrix-vector products. With
 * d = xf - Ad^T x0 the controls are U = K d:
 *   exact:       U = Q z with R^T z = S d, S = P^T D: the minimum-norm
 *                solution of C U = d from the QR factorisation above, K = Q
 *                explicit (orthonormal) and the triangular solve done per
 *                sample, so the residual is that of a backward-stable solve
 *                (an explicit C^+ = Q R^-T S would cost a factor cond(C); and
 *                C C^T would square it)
 *   average:     K = C^T W_c(H)^-1 / dt (the law u(t) = B^T e^{A^T (H-t)} W_c^-1 d
 *                                        averaged over each interval)
 * where C = [Ad^{T-1} Bd ... Bd] and, for average/continuous, (Ad, Bd) is the
 * exact ZOH of the continuous (A, B). Continuous states are
 * x(k dt) = Ad^k x0 + Q_k d with Q_k = W_c(k dt) e^{A^T (H - k dt)} W_c(H)^-1.
 */
typedef struct {
    ptrdiff_t n, m, steps;
    tl_ref_method method;
    double dt;      /* sampling period (1 for a discrete system without one) */
    double cond;    /* exact: 1-norm condition number estimate of R (that of the
                     * equilibrated C); average, continuous: that of the equilibrated
                     * W_c(H) */
    double growth;  /* continuous: max_k |Ad^k|_1, refused above TL_LAW_GROWTH_LIMIT */
    tl_ref_rank rank; /* exact only */
    double *Ad;     /* n x n: the dynamics the states are rolled out with */
    double *Bd;     /* n x m */
    double *AdT;    /* n x n: Ad^steps */
    double *K;      /* (steps m) x n */
    double *S;      /* exact: n x n, P^T D (one nonzero a row); else NULL */
    double *L;      /* exact: n x n, R^T below the diagonal and 1 / R_kk on it; else NULL */
    double *Q;      /* (steps + 1) x n x n, continuous only (else NULL) */
} tl_ref_plan;

size_t tl_ref_plan_bytes(ptrdiff_t n, ptrdiff_t m, ptrdiff_t steps, tl_ref_method method);
size_t tl_ref_init_work_bytes(ptrdiff_t n, ptrdiff_t m, ptrdiff_t steps);

/*
 * Fill plan (its arrays carved from `memory`, tl_ref_plan_bytes long).
 * exact: sys is the discrete system, A and B may be NULL. average and
 * continuous: A (n x n) and B (n x m) are the continuous model, dt > 0.
 * steps >= 1 (and steps m < 2^31 for exact, LAPACK's index range).
 * TL_ERR_SINGULAR: exact, C numerically rank-deficient (plan->rank says
 * how); average and continuous, W_c(H) singular or ill-conditioned
 * (plan->cond, inf when the Cholesky factorisation fails), or continuous
 * states that grow beyond TL_LAW_GROWTH_LIMIT (plan->growth).
 */
tl_status tl_ref_plan_init(tl_ref_plan *plan, void *memory, tl_ref_method method,
                           const tl_system *sys, const double *A, const double *B, double dt,
                           ptrdiff_t steps, void *work);

size_t tl_ref_apply_work_bytes(ptrdiff_t n);

/*
 * References for a batch: x0, xf batch x n; writes controls batch x steps x m,
 * states batch x (steps+1) x n, final_error (|x_T of the ZOH rollout - xf|_2)
 * and energy (sum_k |u_k|^2 dt), each batch long.
 */
tl_status tl_ref_apply(const tl_ref_plan *plan, ptrdiff_t batch, const double *x0,
                       const double *xf, double *controls, double *states,
                       double *final_error, double *energy, void *work);

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
