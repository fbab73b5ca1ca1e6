"""Plain NumPy references and test cases for every linear system form.

Nothing here imports trajloss except :func:`make_case`, which builds the
system object under test from matrices it draws itself; every reference
works on those raw matrices, expanded to one matrix per sample and step:
``A (B, T, n, n)``, ``Bm (B, T, n, m)``, ``c (B, T, n)``, for the dynamics
``x_{k+1} = A[b, k] x_k + Bm[b, k] u_k + c[b, k]``.

The loss references transcribe DESIGN.md ("Losses"): penalty rho, time
weights ``w[b,t] = g^t |S_b| / sum_{s in S_b} g^s``, per-step error
``e = mean_d s_d rho(r_d)``, value ``sum w e / sum_b |S_b|``; terminal term the
mean over sequences with a valid step of ``e`` at state ``t_b + 1``.
Gradients go through an adjoint loop written here.
"""
from dataclasses import dataclass

import numpy as np
import scipy.linalg

# form name -> (kind, A per sample, B per sample, offset or dt kind)
#   kind "lti": LinearSystem(Ad, Bd, offset=...); offset None | "shared" | "ps"
#   kind "tv":  TimeVaryingSystem(Ad, Bd, offset=...); offset None | "shared" | "ps"
#   kind "cont": LinearSystem.from_continuous(A, B, dt); dt "scalar" | "vector"
FORMS = {
    "lti-shared": ("lti", False, False, None),
    "lti-psA": ("lti", True, False, None),
    "lti-psB": ("lti", False, True, None),
    "lti-psAB": ("lti", True, True, None),
    "lti-shared-off": ("lti", False, False, "shared"),
    "lti-shared-psoff": ("lti", False, False, "ps"),
    "lti-psAB-off": ("lti", True, True, "shared"),
    "lti-psA-psoff": ("lti", True, False, "ps"),
    "tv-shared": ("tv", False, False, None),
    "tv-psAB": ("tv", True, True, None),
    "tv-psA": ("tv", True, False, None),
    "tv-psB": ("tv", False, True, None),
    "tv-shared-off": ("tv", False, False, "shared"),
    "tv-psAB-psoff": ("tv", True, True, "ps"),
    "tv-psA-off": ("tv", True, False, "shared"),
    "tv-shared-psoff": ("tv", False, False, "ps"),
    "cont-psA": ("cont", True, False, "scalar"),
    "cont-psAB-dtvec": ("cont", True, True, "vector"),
    "cont-dtvec": ("cont", False, False, "vector"),
    "cont-psB": ("cont", False, True, "scalar"),
}
ALL_FORMS = list(FORMS)
SHARED_FORMS = ["lti-shared", "lti-shared-off", "tv-shared", "tv-shared-off"]
PER_SAMPLE_FORMS = [f for f in FORMS if f not in SHARED_FORMS]


@dataclass
class Case:
    form: str
    system: object
    A: np.ndarray      # (B, T, n, n)
    Bm: np.ndarray     # (B, T, n, m)
    c: np.ndarray      # (B, T, n)
    dt: np.ndarray     # (B,) the sampling period of each sample (1 when the system has none)
    raw: dict          # the arrays the system was built from
    B: int
    T: int
    n: int
    m: int


def zoh(A, Bc, dt):
    """Exact ZOH by scipy: expm([[A, B], [0, 0]] dt) = [[Ad, Bd], [0, I]]."""
    n, m = Bc.shape
    M = np.zeros((n + m, n + m))
    M[:n, :n] = A
    M[:n, n:] = Bc
    E = scipy.linalg.expm(M * dt)
    return E[:n, :n], E[:n, n:]


def _stable(rng, shape, n):
    """Random matrices near 0.85 I, spectral radius around 1."""
    return 0.85 * np.eye(n) + 0.3 * rng.standard_normal(shape) / np.sqrt(n)


def make_case(form, B, T, n=3, m=2, seed=0):
    import trajloss  # only here: the object under test

    kind, psA, psB, extra = FORMS[form]
    rng = np.random.default_rng([seed, B, T, n, m, ALL_FORMS.index(form)])
    raw = {}
    dt = np.ones(B)
    if kind in ("lti", "tv"):
        lead = ((B,) if psA else ()) + ((T,) if kind == "tv" else ())
        Ad = _stable(rng, lead + (n, n), n)
        lead_b = ((B,) if psB else ()) + ((T,) if kind == "tv" else ())
        Bd = rng.standard_normal(lead_b + (n, m))
        off = None
        if extra is not None:
            lead_c = ((B,) if extra == "ps" else ()) + ((T,) if kind == "tv" else ())
            off = 0.3 * rng.standard_normal(lead_c + (n,))
        raw = dict(Ad=Ad, Bd=Bd, offset=off)
        cls = trajloss.LinearSystem if kind == "lti" else trajloss.TimeVaryingSystem
        system = cls(Ad, Bd, offset=off) if off is not None else cls(Ad, Bd)
        if kind == "lti":
            Af = np.broadcast_to(Ad if psA else Ad[None], (B, n, n))[:, None]
            Bf = np.broadcast_to(Bd if psB else Bd[None], (B, n, m))[:, None]
            Af = np.broadcast_to(Af, (B, T, n, n))
            Bf = np.broadcast_to(Bf, (B, T, n, m))
            if off is None:
                cf = np.zeros((B, T, n))
            else:
                cf = np.broadcast_to((off if extra == "ps" else off[None])[:, None], (B, T, n))
        else:
            Af = np.broadcast_to(Ad if psA else Ad[None], (B, T, n, n))
            Bf = np.broadcast_to(Bd if psB else Bd[None], (B, T, n, m))
            if off is None:
                cf = np.zeros((B, T, n))
            else:
                cf = np.broadcast_to(off if extra == "ps" else off[None], (B, T, n))
    else:
        Ac = 0.6 * rng.standard_normal(((B,) if psA else ()) + (n, n)) - 0.3 * np.eye(n)
        Bc = rng.standard_normal(((B,) if psB else ()) + (n, m))
        dts = rng.uniform(0.1, 0.4, B) if extra == "vector" else float(rng.uniform(0.1, 0.4))
        raw = dict(A=Ac, B=Bc, dt=dts)
        system = trajloss.LinearSystem.from_continuous(Ac, Bc, dts)
        dt = np.broadcast_to(np.asarray(dts, float), (B,)).copy()
        Ad_b = np.zeros((B, n, n))
        Bd_b = np.zeros((B, n, m))
        for b in range(B):
            Ad_b[b], Bd_b[b] = zoh(Ac[b] if psA else Ac, Bc[b] if psB else Bc, dt[b])
        Af = np.broadcast_to(Ad_b[:, None], (B, T, n, n))
        Bf = np.broadcast_to(Bd_b[:, None], (B, T, n, m))
        cf = np.zeros((B, T, n))
    return Case(form, system, np.ascontiguousarray(Af), np.ascontiguousarray(Bf),
                np.ascontiguousarray(cf), dt, raw, B, T, n, m)


# --------------------------------------------------------------------------
# dynamics
# --------------------------------------------------------------------------

def np_rollout(A, Bm, c, x0, U):
    """States (B, T+1, n): a loop over the steps, each sample its own matrices."""
    B, T, m = U.shape
    n = x0.shape[-1]
    X = np.zeros((B, T + 1, n))
    X[:, 0] = x0
    for k in range(T):
        X[:, k + 1] = (np.einsum("bij,bj->bi", A[:, k], X[:, k])
                       + np.einsum("bij,bj->bi", Bm[:, k], U[:, k]) + c[:, k])
    return X


def np_adjoint(A, Bm, gX):
    """(dL/dU, dL/dx0) from dL/dX: lam_T = G_T, lam_k = G_k + A_k^T lam_{k+1},
    dL/du_k = B_k^T lam_{k+1}."""
    B, T1, n = gX.shape
    T = T1 - 1
    m = Bm.shape[-1]
    gU = np.zeros((B, T, m))
    lam = gX[:, T].copy()
    for k in range(T - 1, -1, -1):
        gU[:, k] = np.einsum("bij,bi->bj", Bm[:, k], lam)
        lam = gX[:, k] + np.einsum("bij,bi->bj", A[:, k], lam)
    return gU, lam


def transition(A, b, k, j):
    """Phi(k, j) = A[b, k-1] ... A[b, j] (identity when k == j)."""
    n = A.shape[-1]
    P = np.eye(n)
    for i in range(j, k):
        P = A[b, i] @ P
    return P


def explicit_jacobian(A, Bm, b):
    """d states[b] (flattened (T+1)*n) / d (U[b] flattened T*m, x0[b]) built from
    the products of the step matrices: d x_k/d x_0 = Phi(k, 0),
    d x_k / d u_j = Phi(k, j+1) B_j for j < k."""
    T, n, m = Bm.shape[1], Bm.shape[2], Bm.shape[3]
    JU = np.zeros(((T + 1) * n, T * m))
    Jx = np.zeros(((T + 1) * n, n))
    for k in range(T + 1):
        Jx[k * n:(k + 1) * n] = transition(A, b, k, 0)
        for j in range(k):
            JU[k * n:(k + 1) * n, j * m:(j + 1) * m] = transition(A, b, k, j + 1) @ Bm[b, j]
    return JU, Jx


def controllability(A, Bm, b, T):
    """C = [Phi(T,1) B_0, Phi(T,2) B_1, ..., B_{T-1}] (n x T m) of sample b."""
    return np.concatenate([transition(A, b, T, j + 1) @ Bm[b, j] for j in range(T)], axis=1)


def drift(A, c, b, x0, T):
    """Phi(T,0) x0 + sum_k Phi(T,k+1) c_k: the final state under zero controls."""
    out = transition(A, b, T, 0) @ x0
    for k in range(T):
        out = out + transition(A, b, T, k + 1) @ c[b, k]
    return out


def min_norm_controls(A, Bm, c, x0, xf, T):
    """Minimum-norm U with C U = xf - drift, by numpy.linalg.lstsq, (B, T, m)."""
    B, m = x0.shape[0], Bm.shape[-1]
    U = np.zeros((B, T, m))
    for b in range(B):
        C = controllability(A, Bm, b, T)
        d = xf[b] - drift(A, c, b, x0[b], T)
        U[b] = np.linalg.lstsq(C, d, rcond=None)[0].reshape(T, m)
    return U


# --------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------

def rho(r, penalty, delta=1.0):
    if penalty == "mse":
        return r * r
    if penalty == "l1":
        return np.abs(r)
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def drho(r, penalty, delta=1.0):
    if penalty == "mse":
        return 2 * r
    if penalty == "l1":
        return np.sign(r)
    return np.where(np.abs(r) <= delta, r, delta * np.sign(r))


def valid_steps(B, T, lengths=None, mask=None):
    if lengths is not None:
        return np.arange(T)[None, :] < np.asarray(lengths)[:, None]
    if mask is not None:
        return np.asarray(mask, bool).copy()
    return np.ones((B, T), bool)


def time_weights(valid, discount):
    """w[b, t] = g^t |S_b| / sum_{s in S_b} g^s on valid steps, else 0."""
    g = 1.0 if discount is None else float(discount)
    K = valid.shape[1]
    p = np.where(valid, g ** np.arange(K, dtype=float)[None, :], 0.0)
    count = valid.sum(1, keepdims=True)
    total = p.sum(1, keepdims=True)
    return np.where(valid, p * count / np.where(total > 0, total, 1.0), 0.0)


def _masked(R, valid):
    return np.where(valid[..., None], R, 0.0)


def control_term(P, Ref, valid, f, discount, penalty, delta):
    """(value, dvalue/dP)."""
    D = P.shape[-1]
    f = np.ones(D) if f is None else np.asarray(f, float)
    w = time_weights(valid, discount)
    R = _masked(P - Ref, valid)
    E = (f * rho(R, penalty, delta)).mean(-1)
    N = valid.sum()
    return float((w * E).sum() / N), w[..., None] * f * drho(R, penalty, delta) / D / N


def trajectory_term(X, ref, valid, include_initial, s, discount, penalty, delta):
    """(value, dvalue/dX): step t scores state t+1; with include_initial state 0 is
    an extra first step (valid when the sequence has a valid step)."""
    B, T1, n = X.shape
    s = np.ones(n) if s is None else np.asarray(s, float)
    if include_initial:
        ext = np.concatenate([valid.any(1, keepdims=True), valid], axis=1)
        idx = np.arange(T1)
    else:
        ext = valid
        idx = np.arange(1, T1)
    w = time_weights(ext, discount)
    R = _masked(X[:, idx] - ref[:, idx], ext)
    E = (s * rho(R, penalty, delta)).mean(-1)
    N = ext.sum()
    gX = np.zeros_like(X)
    gX[:, idx] = w[..., None] * s * drho(R, penalty, delta) / n / N
    return float((w * E).sum() / N), gX


def last_state_index(valid):
    """K_b = last valid step + 1 (the state it produced), -1 when none."""
    T = valid.shape[1]
    has = valid.any(1)
    return np.where(has, T - np.argmax(valid[:, ::-1], axis=1), -1)


def terminal_term(X, target, valid, s, penalty, delta):
    B, T1, n = X.shape
    s = np.ones(n) if s is None else np.asarray(s, float)
    K = last_state_index(valid)
    rows = np.flatnonzero(K >= 0)
    R = X[rows, K[rows]] - target[rows]
    e = (s * rho(R, penalty, delta)).mean(-1)
    gX = np.zeros_like(X)
    gX[rows, K[rows]] = s * drho(R, penalty, delta) / n / rows.size
    return float(e.sum() / rows.size), gX


def np_loss(case, kind, U, x0, *, ref_controls=None, ref_states=None, target=None,
            weight=0.0, terminal_weight=0.0, include_initial=False, state_weights=None,
            feature_weights=None, discount=None, lengths=None, mask=None, penalty="mse",
            delta=1.0):
    """Reference (value, grad_U, grad_x0, parts) of trajectory / terminal / combined
    losses, in float64, batched inputs."""
    U, x0 = np.asarray(U, float), np.asarray(x0, float)
    B, T, m = U.shape
    valid = valid_steps(B, T, lengths, mask)
    X = np_rollout(case.A, case.Bm, case.c, x0, U)
    gX = np.zeros_like(X)
    gU_direct = np.zeros_like(U)
    parts = {}
    if kind == "trajectory":
        v, gX = trajectory_term(X, np.asarray(ref_states, float), valid, include_initial,
                                state_weights, discount, penalty, delta)
        value = v
    elif kind == "terminal":
        value, gX = terminal_term(X, np.asarray(target, float), valid, state_weights, penalty,
                                  delta)
    else:
        ref_states = np.asarray(ref_states, float)
        vc, gU_direct = control_term(U, np.asarray(ref_controls, float), valid,
                                     feature_weights, discount, penalty, delta)
        vt, gXt = trajectory_term(X, ref_states, valid, include_initial, state_weights,
                                  discount, penalty, delta)
        if target is None:
            K = last_state_index(valid)
            target = np.zeros((B, case.n))
            target[K >= 0] = ref_states[np.flatnonzero(K >= 0), K[K >= 0]]
        ve, gXe = terminal_term(X, np.asarray(target, float), valid, state_weights, penalty,
                                delta)
        value = vc + weight * vt + terminal_weight * ve
        gX = weight * gXt + terminal_weight * gXe
        parts = dict(control=vc, trajectory=vt, terminal=ve)
    gU, gx0 = np_adjoint(case.A, case.Bm, gX)
    return value, gU + gU_direct, gx0, parts


def close(actual, expected, rtol, err_msg=""):
    """allclose with an absolute tolerance rtol * max(1, max|expected|)."""
    expected = np.asarray(expected, float)
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, (err_msg, actual.shape, expected.shape)
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    np.testing.assert_allclose(actual.astype(float), expected, rtol=rtol, atol=rtol * scale,
                               err_msg=err_msg)
