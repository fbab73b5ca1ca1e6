"""Plain NumPy references for the losses of trajloss (DESIGN.md, "Losses").

Nothing here imports trajloss.  Every function is a literal transcription of
the formulas, written as explicit Python loops over the batch b, the time
step t and the feature d, and always evaluated in float64 (inputs of any
dtype are converted first).  Sums are taken with ``math.fsum`` so the
reference is as accurate as float64 allows.

Formulas
--------
penalty  rho(r): "mse" r**2, "l1" |r| (derivative 0 at 0),
         "huber" 0.5 r**2 if |r| <= delta else delta (|r| - delta/2)
per step e_{b,t} = mean_d( s_d * rho(pred - ref)_{b,t,d} )
weights  w_{b,t} = g**t |S_b| / sum_{s in S_b} g**s  (t in S_b), else 0
value    sum_{b,t} w_{b,t} e_{b,t} / sum_b |S_b|

Each ``*_ref`` returns a dict with ``value`` (float) and the analytic
gradients (float64 arrays shaped like the inputs, unbatched if the inputs
were); the gradients of the trajectory terms go through an explicit adjoint
loop (lambda_k = dL/dx_k + Ad^T lambda_{k+1}).  The tests additionally check
the package's gradients against central finite differences of ``value``.
"""

import math

import numpy as np

from conftest import central_fd

PENALTIES = ("mse", "l1", "huber")


# --------------------------------------------------------------------------
# penalty
# --------------------------------------------------------------------------


def rho(r, penalty, delta=1.0):
    r = float(r)
    if penalty == "mse":
        return r * r
    if penalty == "l1":
        return abs(r)
    if penalty == "huber":
        a = abs(r)
        if a <= delta:
            return 0.5 * r * r
        return delta * (a - 0.5 * delta)
    raise AssertionError(f"unknown penalty {penalty!r}")


def drho(r, penalty, delta=1.0):
    r = float(r)
    if penalty == "mse":
        return 2.0 * r
    if penalty == "l1":
        if r > 0:
            return 1.0
        if r < 0:
            return -1.0
        return 0.0
    if penalty == "huber":
        if abs(r) <= delta:
            return r
        return delta if r > 0 else -delta
    raise AssertionError(f"unknown penalty {penalty!r}")


# --------------------------------------------------------------------------
# valid steps and time weights
# --------------------------------------------------------------------------


def valid_steps(B, T, lengths=None, mask=None):
    """(B, T) bool array of valid steps (loops), from lengths or mask."""
    valid = np.zeros((B, T), dtype=bool)
    for b in range(B):
        for t in range(T):
            if lengths is not None:
                valid[b, t] = t < int(lengths[b])
            elif mask is not None:
                valid[b, t] = bool(mask[b][t])
            else:
                valid[b, t] = True
    return valid


def row_weights(valid_row, discount):
    """Weights of one sequence.  Stable: the powers are taken relative to the
    valid step with the largest power (the first for g < 1, the last for
    g > 1), so every term is <= 1 and the sum is >= 1 -- no overflow, no 0/0.
    """
    T = len(valid_row)
    w = np.zeros(T)
    S = [t for t in range(T) if valid_row[t]]
    if not S:
        return w
    g = 1.0 if discount is None else float(discount)
    if g == 1.0:
        for t in S:
            w[t] = 1.0
        return w
    anchor = S[0] if g < 1.0 else S[-1]
    p = {t: math.pow(g, t - anchor) for t in S}
    total = math.fsum(p.values())
    for t in S:
        w[t] = p[t] * len(S) / total
    return w


def time_weights_ref(T, discount, lengths=None, mask=None):
    """Reference for ``trajloss.time_weights`` (same output shapes)."""
    if lengths is None and mask is None:
        return row_weights([True] * T, discount)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.ndim == 1:
            return row_weights([bool(v) for v in mask], discount)
        B = mask.shape[0]
        valid = valid_steps(B, T, mask=mask)
    else:
        lengths = np.asarray(lengths)
        B = lengths.shape[0]
        valid = valid_steps(B, T, lengths=lengths)
    out = np.zeros((B, T))
    for b in range(B):
        out[b] = row_weights(list(valid[b]), discount)
    return out


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def _f64(a):
    return None if a is None else np.array(a, dtype=np.float64, copy=True)


def _batch_select(B, T, lengths, mask, unbatched):
    if unbatched:
        if lengths is not None:
            lengths = [int(lengths)]
        if mask is not None:
            mask = np.asarray(mask)[None]
    return valid_steps(B, T, lengths=lengths, mask=mask)


def rollout_loop(Ad, Bd, x0, U):
    """x_{k+1} = Ad x_k + Bd u_k, loops over b, k, i, j; x0 (B,n), U (B,T,m)."""
    Bsz, T, m = U.shape
    n = Ad.shape[0]
    X = np.zeros((Bsz, T + 1, n))
    for b in range(Bsz):
        X[b, 0] = x0[b]
        for k in range(T):
            for i in range(n):
                s = 0.0
                for j in range(n):
                    s += Ad[i, j] * X[b, k, j]
                for j in range(m):
                    s += Bd[i, j] * U[b, k, j]
                X[b, k + 1, i] = s
    return X


def adjoint_loop(Ad, Bd, gX):
    """Gradients w.r.t. (U, x0) of a loss with dL/dX = gX, by the adjoint loop."""
    Bsz, T1, n = gX.shape
    T = T1 - 1
    m = Bd.shape[1]
    gU = np.zeros((Bsz, T, m))
    gx0 = np.zeros((Bsz, n))
    for b in range(Bsz):
        lam = gX[b, T].copy()
        for k in range(T - 1, -1, -1):
            for j in range(m):
                gU[b, k, j] = math.fsum(Bd[i, j] * lam[i] for i in range(n))
            new = np.zeros(n)
            for j in range(n):
                new[j] = gX[b, k, j] + math.fsum(Ad[i, j] * lam[i] for i in range(n))
            lam = new
        gx0[b] = lam
    return gU, gx0


# --------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------


def control_loss_ref(pred, target, discount=None, lengths=None, mask=None,
                     penalty="mse", delta=1.0, feature_weights=None):
    pred, target = _f64(pred), _f64(target)
    unbatched = pred.ndim == 2
    if unbatched:
        pred, target = pred[None], target[None]
    B, T, D = pred.shape
    valid = _batch_select(B, T, lengths, mask, unbatched)
    s = np.ones(D) if feature_weights is None else _f64(feature_weights)
    N = int(valid.sum())
    if N == 0:
        raise AssertionError("reference called with an empty selection")
    terms = []
    grad = np.zeros_like(pred)
    for b in range(B):
        w = row_weights(list(valid[b]), discount)
        for t in range(T):
            if not valid[b, t]:
                continue
            e_terms = []
            for d in range(D):
                r = pred[b, t, d] - target[b, t, d]
                e_terms.append(s[d] * rho(r, penalty, delta))
                grad[b, t, d] = w[t] * s[d] * drho(r, penalty, delta) / D / N
            terms.append(w[t] * math.fsum(e_terms) / D)
    value = math.fsum(terms) / N
    return dict(value=value, grad=grad[0] if unbatched else grad)


def _trajectory_parts(Ad, Bd, controls, x0, ref_states, include_initial,
                      state_weights, discount, lengths, mask, penalty, delta):
    """Value and dL/dX (B, T+1, n) of the trajectory loss (batched arrays)."""
    B, T, m = controls.shape
    n = Ad.shape[0]
    X = rollout_loop(Ad, Bd, x0, controls)
    valid = valid_steps(B, T, lengths=lengths, mask=mask)
    s = np.ones(n) if state_weights is None else _f64(state_weights)
    # extended steps: index k scores state k (include_initial) or state k+1
    if include_initial:
        ext = np.zeros((B, T + 1), dtype=bool)
        for b in range(B):
            ext[b, 0] = bool(valid[b].any())
            for t in range(T):
                ext[b, t + 1] = valid[b, t]
        state_of = lambda k: k  # noqa: E731
    else:
        ext = valid
        state_of = lambda k: k + 1  # noqa: E731
    N = int(ext.sum())
    if N == 0:
        raise AssertionError("reference called with an empty selection")
    terms = []
    gX = np.zeros((B, T + 1, n))
    for b in range(B):
        w = row_weights(list(ext[b]), discount)
        for k in range(ext.shape[1]):
            if not ext[b, k]:
                continue
            i = state_of(k)
            e_terms = []
            for d in range(n):
                r = X[b, i, d] - ref_states[b, i, d]
                e_terms.append(s[d] * rho(r, penalty, delta))
                gX[b, i, d] += w[k] * s[d] * drho(r, penalty, delta) / n / N
            terms.append(w[k] * math.fsum(e_terms) / n)
    return math.fsum(terms) / N, gX


def trajectory_loss_ref(Ad, Bd, controls, x0, ref_states, include_initial=False,
                        state_weights=None, discount=None, lengths=None, mask=None,
                        penalty="mse", delta=1.0):
    Ad, Bd = _f64(Ad), _f64(Bd)
    controls, x0, ref_states = _f64(controls), _f64(x0), _f64(ref_states)
    unbatched = x0.ndim == 1
    if unbatched:
        controls, x0, ref_states = controls[None], x0[None], ref_states[None]
        if lengths is not None:
            lengths = [int(lengths)]
        if mask is not None:
            mask = np.asarray(mask)[None]
    value, gX = _trajectory_parts(Ad, Bd, controls, x0, ref_states, include_initial,
                                  state_weights, discount, lengths, mask, penalty, delta)
    gU, gx0 = adjoint_loop(Ad, Bd, gX)
    if unbatched:
        gU, gx0 = gU[0], gx0[0]
    return dict(value=value, grad=gU, grad_x0=gx0)


def last_valid_index(valid_row):
    """K_b = (last valid control index) + 1, or None if there is none."""
    K = None
    for t in range(len(valid_row)):
        if valid_row[t]:
            K = t + 1
    return K


def _terminal_parts(Ad, Bd, controls, x0, target, lengths, mask, state_weights,
                    penalty, delta):
    B, T, m = controls.shape
    n = Ad.shape[0]
    X = rollout_loop(Ad, Bd, x0, controls)
    valid = valid_steps(B, T, lengths=lengths, mask=mask)
    s = np.ones(n) if state_weights is None else _f64(state_weights)
    count = 0
    terms = []
    gX = np.zeros((B, T + 1, n))
    for b in range(B):
        K = last_valid_index(valid[b])
        if K is None:
            continue
        count += 1
        e_terms = []
        for d in range(n):
            r = X[b, K, d] - target[b, d]
            e_terms.append(s[d] * rho(r, penalty, delta))
            gX[b, K, d] = s[d] * drho(r, penalty, delta) / n
        terms.append(math.fsum(e_terms) / n)
    if count == 0:
        raise AssertionError("reference called with an empty selection")
    return math.fsum(terms) / count, gX / count


def terminal_loss_ref(Ad, Bd, controls, x0, target, lengths=None, mask=None,
                      state_weights=None, penalty="mse", delta=1.0):
    Ad, Bd = _f64(Ad), _f64(Bd)
    controls, x0, target = _f64(controls), _f64(x0), _f64(target)
    unbatched = x0.ndim == 1
    if unbatched:
        controls, x0, target = controls[None], x0[None], target[None]
        if lengths is not None:
            lengths = [int(lengths)]
        if mask is not None:
            mask = np.asarray(mask)[None]
    value, gX = _terminal_parts(Ad, Bd, controls, x0, target, lengths, mask,
                                state_weights, penalty, delta)
    gU, gx0 = adjoint_loop(Ad, Bd, gX)
    if unbatched:
        gU, gx0 = gU[0], gx0[0]
    return dict(value=value, grad=gU, grad_x0=gx0)


def default_terminal_target(ref_states, lengths=None, mask=None):
    """ref_states[b, K_b] per sequence (zeros for sequences with no valid step)."""
    ref_states = _f64(ref_states)
    unbatched = ref_states.ndim == 2
    if unbatched:
        ref_states = ref_states[None]
        if lengths is not None:
            lengths = [int(lengths)]
        if mask is not None:
            mask = np.asarray(mask)[None]
    B, T1, n = ref_states.shape
    valid = valid_steps(B, T1 - 1, lengths=lengths, mask=mask)
    out = np.zeros((B, n))
    for b in range(B):
        K = last_valid_index(valid[b])
        if K is not None:
            out[b] = ref_states[b, K]
    return out[0] if unbatched else out


def combined_loss_ref(Ad, Bd, controls, x0, ref_controls, ref_states, weight,
                      terminal_weight=0.0, terminal_target=None, include_initial=False,
                      state_weights=None, feature_weights=None, discount=None,
                      lengths=None, mask=None, penalty="mse", delta=1.0):
    c = control_loss_ref(controls, ref_controls, discount=discount, lengths=lengths,
                         mask=mask, penalty=penalty, delta=delta,
                         feature_weights=feature_weights)
    tr = trajectory_loss_ref(Ad, Bd, controls, x0, ref_states,
                             include_initial=include_initial, state_weights=state_weights,
                             discount=discount, lengths=lengths, mask=mask,
                             penalty=penalty, delta=delta)
    if terminal_target is None:
        terminal_target = default_terminal_target(ref_states, lengths=lengths, mask=mask)
    te = terminal_loss_ref(Ad, Bd, controls, x0, terminal_target, lengths=lengths,
                           mask=mask, state_weights=state_weights, penalty=penalty,
                           delta=delta)
    value = c["value"] + weight * tr["value"] + terminal_weight * te["value"]
    grad = c["grad"] + weight * tr["grad"] + terminal_weight * te["grad"]
    grad_x0 = weight * tr["grad_x0"] + terminal_weight * te["grad_x0"]
    return dict(value=value, grad=grad, grad_x0=grad_x0, control=c["value"],
                trajectory=tr["value"], terminal=te["value"])


# --------------------------------------------------------------------------
# test data: residuals away from the non-smooth points
# --------------------------------------------------------------------------


def kink_free(rng, shape, delta=1.0):
    """Random residuals with |r| in [0.15, 0.85]*delta or [1.15, 2.5]*delta:
    away from 0 (l1) and from |r| = delta (huber), with a random sign."""
    shape = tuple(shape)
    small = rng.uniform(0.15, 0.85, shape)
    large = rng.uniform(1.15, 2.5, shape)
    mag = np.where(rng.random(shape) < 0.5, small, large) * delta
    sign = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
    return sign * mag


def fd_grad(f, x, h=1e-5, entries=None):
    """Central differences of scalar ``f`` at ``x`` (see ``conftest.central_fd``)."""
    return central_fd(f, x, h, entries)
