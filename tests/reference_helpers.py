"""Independent references for the minimum-energy tests (no trajloss inside).

Everything here is plain NumPy / SciPy: matrix exponentials with
``scipy.linalg.expm``, Gramians by composite Simpson quadrature, the
closed-loop continuous dynamics by a classical RK4 loop, the double
integrator's law ``u(t) = a + b t`` in closed form.
"""

import math

import numpy as np
import scipy.linalg


# --------------------------------------------------------------------------
# Systems
# --------------------------------------------------------------------------


def random_continuous(rng, n, m, norm=1.0):
    """Dense random continuous (A, B) with ||A||_2 = norm and ||B||_2 = 1."""
    A = rng.standard_normal((n, n))
    A *= norm / np.linalg.norm(A, 2)
    B = rng.standard_normal((n, m))
    B /= np.linalg.norm(B, 2)
    return A, B


def zoh(A, B, dt):
    """Exact zero-order hold by the augmented exponential, with SciPy."""
    A = np.asarray(A, float)
    B = np.asarray(B, float)
    n, m = B.shape
    M = np.zeros((n + m, n + m))
    M[:n, :n] = A * dt
    M[:n, n:] = B * dt
    E = scipy.linalg.expm(M)
    return E[:n, :n], E[:n, n:]


def di_matrices(dt):
    """Closed-form ZOH of the double integrator."""
    return (np.array([[1.0, dt], [0.0, 1.0]]), np.array([[dt * dt / 2.0], [dt]]))


def rollout(Ad, Bd, x0, U):
    """Vectorised x_{k+1} = Ad x_k + Bd u_k over a batch (float64).

    x0 (B, n), U (B, T, m) -> (B, T+1, n); unbatched (n,), (T, m) -> (T+1, n).
    """
    Ad = np.asarray(Ad, float)
    Bd = np.asarray(Bd, float)
    x0 = np.asarray(x0, float)
    U = np.asarray(U, float)
    unbatched = x0.ndim == 1
    if unbatched:
        x0, U = x0[None], U[None]
    T = U.shape[1]
    X = np.empty((x0.shape[0], T + 1, Ad.shape[0]))
    X[:, 0] = x0
    for k in range(T):
        X[:, k + 1] = X[:, k] @ Ad.T + U[:, k] @ Bd.T
    return X[0] if unbatched else X


def controllability_matrix(Ad, Bd, T):
    """C = [Ad^{T-1} Bd, ..., Ad Bd, Bd]: x_T = Ad^T x0 + C vec(U), vec(U) = U.reshape(T*m)."""
    Ad = np.asarray(Ad, float)
    Bd = np.asarray(Bd, float)
    blocks = []
    P = Bd.copy()
    for _ in range(T):
        blocks.append(P)
        P = Ad @ P
    return np.hstack(blocks[::-1])


def min_norm_controls(Ad, Bd, x0, xf, T):
    """Minimum-norm exact controls via the pseudo-inverse (SVD), (B, T, m)."""
    Ad = np.asarray(Ad, float)
    Bd = np.asarray(Bd, float)
    x0 = np.atleast_2d(np.asarray(x0, float))
    xf = np.broadcast_to(np.asarray(xf, float), x0.shape)
    C = controllability_matrix(Ad, Bd, T)
    AT = np.linalg.matrix_power(Ad, T)
    rhs = xf - x0 @ AT.T
    U = rhs @ np.linalg.pinv(C).T
    return U.reshape(x0.shape[0], T, Bd.shape[1])


# --------------------------------------------------------------------------
# Continuous minimum-energy law
# --------------------------------------------------------------------------


def simpson(f_values, h):
    """Composite Simpson rule over an even number of intervals (axis 0)."""
    f = np.asarray(f_values, float)
    N = f.shape[0] - 1
    assert N % 2 == 0 and N >= 2
    w = np.ones(N + 1)
    w[1:-1:2] = 4.0
    w[2:-1:2] = 2.0
    return h / 3.0 * np.tensordot(w, f, axes=(0, 0))


def gramian_simpson(A, B, t, intervals=2000):
    """W_c(t) = int_0^t expm(A s) B B^T expm(A^T s) ds, composite Simpson."""
    A = np.asarray(A, float)
    B = np.asarray(B, float)
    if t == 0:
        return np.zeros((A.shape[0], A.shape[0]))
    N = intervals + (intervals % 2)
    h = t / N
    E = scipy.linalg.expm(A * h)
    EB = np.asarray(B, float).copy()  # expm(A s_i) B, advanced by powers of expm(A h)
    vals = []
    for i in range(N + 1):
        if i:
            EB = E @ EB
        vals.append(EB @ EB.T)
    return simpson(np.array(vals), h)


def law_lambda(A, B, x0, xf, H, intervals=2000):
    """lambda = W_c(H)^{-1} (xf - expm(A H) x0), batched over rows of x0."""
    A = np.asarray(A, float)
    x0 = np.atleast_2d(np.asarray(x0, float))
    xf = np.broadcast_to(np.asarray(xf, float), x0.shape)
    W = gramian_simpson(A, B, H, intervals)
    rhs = xf - x0 @ scipy.linalg.expm(A * H).T
    return np.linalg.solve(W, rhs.T).T


def law_u(A, B, lam, H, t):
    """u(t) = B^T expm(A^T (H - t)) lambda for a batch of lambdas: (B, m)."""
    M = np.asarray(B, float).T @ scipy.linalg.expm(np.asarray(A, float).T * (H - t))
    return np.asarray(lam, float) @ M.T


def law_x_closed(A, B, x0, lam, H, t, intervals=2000):
    """x(t) = expm(A t) x0 + W_c(t) expm(A^T (H - t)) lambda (Simpson W_c)."""
    A = np.asarray(A, float)
    x0 = np.atleast_2d(np.asarray(x0, float))
    W = gramian_simpson(A, B, t, intervals)
    G = W @ scipy.linalg.expm(A.T * (H - t))
    return x0 @ scipy.linalg.expm(A * t).T + np.asarray(lam, float) @ G.T


def rk4_closed_loop(A, B, x0, lam, H, times, h_max):
    """Integrate xdot = A x + B u(t), u(t) = B^T expm(A^T (H-t)) lambda, by
    classical RK4 from t=0 through the sorted ``times``; returns (B, len(times), n).

    Each segment between consecutive requested times is split into equal
    steps no longer than ``h_max``.
    """
    A = np.asarray(A, float)
    B = np.asarray(B, float)
    x = np.atleast_2d(np.asarray(x0, float)).copy()
    times = np.asarray(times, float)
    assert np.all(np.diff(times) >= 0) and times[0] >= 0
    cache = {}

    def u(t):
        key = float(t)
        if key not in cache:
            cache[key] = law_u(A, B, lam, H, t)
        return cache[key]

    def f(t, x):
        return x @ A.T + u(t) @ B.T

    out = np.empty((x.shape[0], len(times), A.shape[0]))
    t = 0.0
    for i, target in enumerate(times):
        span = target - t
        steps = max(1, math.ceil(span / h_max - 1e-9)) if span > 0 else 0
        if steps:
            h = span / steps
            for j in range(steps):
                t0 = t + j * h
                th = t0 + h / 2
                t1 = t + (j + 1) * h if j + 1 < steps else target
                k1 = f(t0, x)
                k2 = f(th, x + h / 2 * k1)
                k3 = f(th, x + h / 2 * k2)
                k4 = f(t1, x + h * k3)
                x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            cache.clear()
        t = target
        out[:, i] = x
    return out


def interval_averages(A, B, lam, H, dt, T, sub=16):
    """(1/dt) int_{k dt}^{(k+1) dt} u(t) dt by Simpson (``sub`` subintervals), (B, T, m)."""
    out = []
    for k in range(T):
        ts = k * dt + np.linspace(0.0, dt, sub + 1)
        vals = np.array([law_u(A, B, lam, H, t) for t in ts])  # (sub+1, B, m)
        out.append(simpson(vals, dt / sub) / dt)
    return np.stack(out, axis=1)


# --------------------------------------------------------------------------
# Double integrator closed form
# --------------------------------------------------------------------------


def di_law_coefficients(x0, xf, H):
    """(a, b) with u(t) = a + b t steering p'' = u from x0 to xf in time H.

    p(H) = p0 + v0 H + a H^2/2 + b H^3/6,  v(H) = v0 + a H + b H^2/2.
    """
    x0 = np.atleast_2d(np.asarray(x0, float))
    xf = np.broadcast_to(np.asarray(xf, float), x0.shape)
    M = np.array([[H * H / 2.0, H ** 3 / 6.0], [H, H * H / 2.0]])
    rhs = np.stack([xf[:, 0] - x0[:, 0] - x0[:, 1] * H, xf[:, 1] - x0[:, 1]], axis=1)
    ab = np.linalg.solve(M, rhs.T).T
    return ab[:, 0], ab[:, 1]


def di_state(x0, a, b, t):
    """Exact DI state under u = a + b t: (B, 2)."""
    x0 = np.atleast_2d(np.asarray(x0, float))
    p = x0[:, 0] + x0[:, 1] * t + a * t * t / 2.0 + b * t ** 3 / 6.0
    v = x0[:, 1] + a * t + b * t * t / 2.0
    return np.stack([p, v], axis=1)
