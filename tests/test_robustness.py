"""Numerical robustness at the edges, against independent references.

* Minimum-energy references whose Gramian is nearly singular -- very long
  horizons (10^4 to 10^5 steps of a small dt), nearly uncontrollable pairs
  (B = [[1], [1e-9]] with decoupled modes), nearly equal modes, unstable
  modes -- either reach the target (the final state of an independent
  extended-precision rollout of the returned controls is within
  ``100 * cond * eps`` of the target, relative to the size of the terms) or
  raise ``numpy.linalg.LinAlgError`` quoting the condition number. A truly
  uncontrollable pair always raises.
* Discounts near 0 (5e-324, 1e-300, 1e-12), near 1 (1 - 1e-15, 1 + 1e-12) and
  huge (1e300, DBL_MAX): the weights are finite, non-negative, average 1 per
  sequence and equal an independent computation in log space with
  ``np.longdouble``; losses with those weights equal a reference built on
  them.
* T = 100 000: rollout, adjoint and losses are finite and equal vectorised
  NumPy loops.
* float32 inputs of large magnitude: the loss is accumulated in float64, so a
  value whose float32 square would overflow (|r| ~ 1e20, r^2 ~ 1e40) equals
  the float64 reference, and its gradient (2r/N, representable) is finite and
  right.

Results that are *not* representable (a float32 gradient beyond FLT_MAX, a
float64 loss beyond DBL_MAX, an unstable system rolled out until float64
overflows, a reference whose energy sum|u|^2 dt passes DBL_MAX): the
functions still return the IEEE result (inf/NaN), as NumPy does, but never
silently -- a ``RuntimeWarning`` naming the function, the output and the word
"overflow" comes with it (``test_overflow_is_never_silent``). With
``check_finite=False`` NaN inputs propagate without a warning, and finite
results never warn.
"""
import math
import re
import warnings

import numpy as np
import pytest

import trajloss as tl
from conftest import random_discrete
from loss_reference import control_loss_ref, trajectory_loss_ref
from reference_helpers import min_norm_controls

EPS = np.finfo(np.float64).eps
LD = np.longdouble


# ==========================================================================
# independent helpers
# ==========================================================================


def rollout_ld(Ad, Bd, x0, U):
    """x_{k+1} = Ad x_k + Bd u_k in extended precision, batch-vectorised: (B, T+1, n)."""
    Ad, Bd = np.asarray(Ad, LD), np.asarray(Bd, LD)
    x = np.asarray(x0, LD)
    U = np.asarray(U, LD)
    out = np.empty((x.shape[0], U.shape[1] + 1, x.shape[1]), LD)
    out[:, 0] = x
    for k in range(U.shape[1]):
        x = x @ Ad.T + U[:, k] @ Bd.T
        out[:, k + 1] = x
    return out


def term_scale(Ad, Bd, x0, U):
    """Size of the terms summed into x_T: the rollout of |Ad|, |Bd|, |x0|, |U| (final state)."""
    return float(np.max(rollout_ld(np.abs(Ad), np.abs(Bd), np.abs(x0), np.abs(U))[:, -1]))


def log_space_weights(T, discount, valid):
    """w_t = g^t |S| / sum_{s in S} g^s in np.longdouble and log space: exponents
    (t - anchor) log g <= 0 relative to the valid step with the largest power."""
    valid = np.asarray(valid, bool)
    w = np.zeros(T, LD)
    S = np.flatnonzero(valid)
    if S.size == 0:
        return w
    g = LD(1) if discount is None else LD(discount)
    lg = np.log(g)
    anchor = S[0] if lg <= 0 else S[-1]
    e = (S.astype(LD) - LD(int(anchor))) * lg   # <= 0
    p = np.exp(e)
    w[S] = p * LD(S.size) / np.sum(np.sort(p))
    return w


# ==========================================================================
# nearly singular Gramians
# ==========================================================================


def _gramian_cases():
    cases = []
    for dt, steps in ((1e-3, 10_000), (1e-4, 100_000), (1e-2, 100_000), (10.0, 1_000)):
        cases.append((f"DI-dt{dt:g}-steps{steps}", tl.DoubleIntegrator(dt=dt), steps))
    for eps in (1e-3, 1e-6, 1e-9, 1e-12):
        cases.append((f"decoupled-B-eps{eps:g}",
                      tl.LinearSystem(np.diag([0.9, 0.5]), [[1.0], [eps]]), 10))
    for d in (1e-3, 1e-6, 1e-9, 1e-12, 1e-15):
        cases.append((f"near-equal-modes-{d:g}",
                      tl.LinearSystem(np.diag([0.9, 0.9 + d]), [[1.0], [1.0]]), 10))
    for steps in (100, 1_000, 10_000):
        cases.append((f"unstable-mode-steps{steps}",
                      tl.LinearSystem(np.diag([1.05, 0.5]), [[1.0], [1.0]]), steps))
    cases.append(("continuous-decoupled-B-1e-9",
                  tl.LinearSystem.from_continuous(np.diag([-1.0, -2.0]), [[1.0], [1e-9]], 0.1),
                  10))
    cases.append(("long-horizon-stable-1e5", tl.LinearSystem(np.diag([0.999, 0.99]),
                                                             [[1.0], [0.5]]), 100_000))
    return cases


@pytest.mark.parametrize("system,steps", [c[1:] for c in _gramian_cases()],
                         ids=[c[0] for c in _gramian_cases()])
def test_near_singular_gramian_reaches_target_or_raises(system, steps):
    x0 = np.array([[1.0, -0.5], [-2.0, 0.25]])
    xf = np.array([0.5, 0.1])
    try:
        ref = tl.min_energy(system, x0, xf, steps)
    except np.linalg.LinAlgError as exc:
        assert re.search(r"condition number (inf|[0-9.]+(e[+-]?\d+)?)", str(exc)), str(exc)
        print(f"\nLinAlgError: {exc}")
        return
    U = ref.controls
    assert U.shape == (2, steps, 1) and np.all(np.isfinite(U))
    # cond of the (row-scaled) controllability matrix: accuracy follows it,
    # and a C of full rank to working precision is solved whatever it is
    assert math.isfinite(ref.cond) and ref.cond >= 1.0
    X = rollout_ld(system.Ad, system.Bd, x0, U)
    err = np.sqrt(np.sum((X[:, -1] - xf) ** 2, axis=1)).astype(np.float64)
    scale = max(1.0, term_scale(system.Ad, system.Bd, x0, U))
    tol = max(1e-12, 100 * ref.cond * EPS) * scale
    print(f"\ncond {ref.cond:.3g}, final error {err.max():.3g} (tolerance {tol:.3g}), "
          f"max |u| {np.abs(U).max():.3g}")
    assert np.all(err <= tol), f"misses the target by {err} (tolerance {tol:.3g})"
    # the reported final error is the distance of the rollout's end to the target
    np.testing.assert_allclose(ref.final_error, err, rtol=1e-6, atol=tol)
    # the states are the rollout of the controls
    np.testing.assert_allclose(ref.states, X.astype(np.float64), rtol=1e-9,
                               atol=1e-9 * scale)


@pytest.mark.parametrize("steps", [10_000, 100_000])
def test_long_horizon_controls_are_the_minimum_norm_ones(steps):
    """dt small, many steps: the controls equal the pseudo-inverse solution."""
    s = tl.DoubleIntegrator(dt=10.0 / steps)
    x0 = np.array([[1.0, -0.5], [3.0, 2.0]])
    ref = tl.min_energy(s, x0, np.zeros(2), steps)
    U = min_norm_controls(s.Ad, s.Bd, x0, np.zeros(2), steps)
    np.testing.assert_allclose(ref.controls, U, rtol=1e-8, atol=1e-10 * np.abs(U).max())


@pytest.mark.parametrize("Ad,Bd", [
    (np.diag([0.7, 0.7]), [[1.0], [1e-9]]),           # equal modes: rank 1 whatever B
    (np.eye(2), [[1.0], [0.0]]),                      # second state never driven
    (np.array([[0.5, 0.0], [0.0, 0.2]]), [[0.0], [0.0]]),  # no input at all
], ids=["equal-modes", "undriven-state", "zero-B"])
def test_uncontrollable_pairs_raise(Ad, Bd):
    s = tl.LinearSystem(Ad, Bd)
    with pytest.raises(np.linalg.LinAlgError, match=r"condition number"):
        tl.min_energy(s, np.ones((2, 2)), np.zeros(2), 20)


# ==========================================================================
# extreme discounts
# ==========================================================================

DISCOUNTS = [5e-324, 1e-300, 1e-12, 0.5, 1 - 1e-15, 1 + 1e-12, 2.0, 1e300,
             np.finfo(np.float64).max]


@pytest.mark.parametrize("T", [1, 7, 1000, 100_000])
@pytest.mark.parametrize("discount", DISCOUNTS, ids=lambda g: f"{g:.17g}")
def test_time_weights_extreme_discounts(discount, T):
    rng = np.random.default_rng(T)
    lengths = np.array([T, max(1, T // 3), 1, 0])
    mask = rng.random((2, T)) < 0.5
    mask[0, -1] = True
    for kw, valid in (({}, np.ones((1, T), bool)),
                      ({"lengths": lengths}, np.arange(T) < lengths[:, None]),
                      ({"mask": mask}, mask)):
        w = tl.time_weights(T, discount, **kw).reshape(-1, T)
        assert w.dtype == np.float64 and np.all(np.isfinite(w)) and np.all(w >= 0)
        for row, v in zip(w, valid):
            assert np.all(row[~v] == 0)
            if not v.any():
                continue
            ref = log_space_weights(T, discount, v)
            # each weight: relative to its size (subnormal ones to the smallest normal)
            tiny = np.finfo(np.float64).tiny
            np.testing.assert_allclose(row, ref.astype(np.float64), rtol=1e-12,
                                       atol=tiny * v.sum())
            # the valid steps average 1 (the normaliser is a plain sum: its error
            # grows with T, 3e-13 at T = 1e5 for a discount of 1 - 1e-15)
            assert abs(math.fsum(row[v]) / v.sum() - 1.0) <= 1e-12


@pytest.mark.parametrize("discount", DISCOUNTS, ids=lambda g: f"{g:.17g}")
def test_losses_with_extreme_discounts(discount):
    rng = np.random.default_rng(3)
    B, T, n, m = 3, 9, 2, 2
    Ad, Bd = random_discrete(rng, n, m)
    s = tl.LinearSystem(Ad, Bd)
    U, R = rng.standard_normal((B, T, m)), rng.standard_normal((B, T, m))
    x0, RS = rng.standard_normal((B, n)), rng.standard_normal((B, T + 1, n))
    lengths = np.array([T, 4, 1])
    valid = np.arange(T) < lengths[:, None]
    c = tl.control_loss(U, R, discount=discount, lengths=lengths)
    # value from the log-space weights: sum_b,t w e / sum_b |S_b|
    W = np.array([log_space_weights(T, discount, v) for v in valid]).astype(np.float64)
    e = np.mean((U - R) ** 2, axis=2)
    expected = math.fsum((W * e).ravel()) / valid.sum()
    assert math.isfinite(c.value) and np.all(np.isfinite(c.grad))
    np.testing.assert_allclose(c.value, expected, rtol=1e-12)
    np.testing.assert_allclose(c.grad, 2 * (U - R) * W[..., None] / m / valid.sum(),
                               rtol=1e-12, atol=1e-300)
    # and the plain-loop references agree (they use the same anchored powers)
    ref = control_loss_ref(U, R, discount=discount, lengths=lengths)
    np.testing.assert_allclose(c.value, ref["value"], rtol=1e-12)
    t = tl.trajectory_loss(s, U, x0, RS, discount=discount, lengths=lengths,
                           include_initial=True)
    ref = trajectory_loss_ref(Ad, Bd, U, x0, RS, discount=discount, lengths=lengths,
                              include_initial=True)
    assert math.isfinite(t.value) and np.all(np.isfinite(t.grad)) and np.all(np.isfinite(t.grad_x0))
    np.testing.assert_allclose(t.value, ref["value"], rtol=1e-12)
    np.testing.assert_allclose(t.grad, ref["grad"], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(t.grad_x0, ref["grad_x0"], rtol=1e-10, atol=1e-14)


# ==========================================================================
# very long sequences
# ==========================================================================


@pytest.fixture(scope="module")
def long_problem():
    rng = np.random.default_rng(11)
    B, T, n, m = 3, 100_000, 3, 2
    Ad, Bd = random_discrete(rng, n, m, radius=0.999)
    x0 = rng.standard_normal((B, n))
    U = rng.standard_normal((B, T, m))
    X = np.empty((B, T + 1, n))
    X[:, 0] = x0
    for k in range(T):  # vectorised over the batch, float64
        X[:, k + 1] = X[:, k] @ Ad.T + U[:, k] @ Bd.T
    RS = X + rng.standard_normal(X.shape)
    return dict(system=tl.LinearSystem(Ad, Bd), Ad=Ad, Bd=Bd, x0=x0, U=U, X=X, RS=RS,
                R=rng.standard_normal((B, T, m)), lengths=np.array([T, T // 2, 17]))


def _adjoint(Ad, Bd, G):
    """dL/dU, dL/dx0 from dL/dX by lambda_k = G_k + Ad^T lambda_{k+1} (batch-vectorised)."""
    T = G.shape[1] - 1
    gU = np.empty((G.shape[0], T, Bd.shape[1]))
    lam = G[:, T].copy()
    for k in range(T - 1, -1, -1):
        gU[:, k] = lam @ Bd
        lam = G[:, k] + lam @ Ad
    return gU, lam


def test_long_rollout_and_adjoint(long_problem):
    p = long_problem
    X = tl.rollout(p["system"], p["x0"], p["U"])
    assert np.all(np.isfinite(X))
    scale = float(np.abs(p["X"]).max())
    np.testing.assert_allclose(X, p["X"], rtol=1e-9, atol=1e-11 * scale)
    G = np.random.default_rng(2).standard_normal(X.shape)
    gU, gx = tl.rollout_vjp(p["system"], p["x0"], p["U"], G)
    rU, rx = _adjoint(p["Ad"], p["Bd"], G)
    np.testing.assert_allclose(gU, rU, rtol=1e-9, atol=1e-11 * np.abs(rU).max())
    np.testing.assert_allclose(gx, rx, rtol=1e-9, atol=1e-11 * np.abs(rx).max())


@pytest.mark.parametrize("discount", [None, 0.9999, 1.0001])
def test_long_losses(long_problem, discount):
    p = long_problem
    B, T, m = p["U"].shape
    n = p["x0"].shape[1]
    L = p["lengths"]
    valid = np.arange(T) < L[:, None]
    W = np.array([log_space_weights(T, discount, v) for v in valid]).astype(np.float64)
    N = valid.sum()
    # control term
    c = tl.control_loss(p["U"], p["R"], discount=discount, lengths=L)
    e = np.mean((p["U"] - p["R"]) ** 2, axis=2)
    np.testing.assert_allclose(c.value, math.fsum((W * e).ravel()) / N, rtol=1e-11)
    np.testing.assert_allclose(c.grad, 2 * (p["U"] - p["R"]) * W[..., None] / m / N,
                               rtol=1e-10, atol=1e-300)
    # trajectory term: step t scores state t+1
    t = tl.trajectory_loss(p["system"], p["U"], p["x0"], p["RS"], discount=discount, lengths=L)
    r = p["X"][:, 1:] - p["RS"][:, 1:]
    e = np.mean(r ** 2, axis=2)
    assert math.isfinite(t.value)
    np.testing.assert_allclose(t.value, math.fsum((W * e).ravel()) / N, rtol=1e-9)
    G = np.zeros_like(p["X"])
    G[:, 1:] = 2 * r * W[..., None] / n / N
    rU, rx = _adjoint(p["Ad"], p["Bd"], G)
    np.testing.assert_allclose(t.grad, rU, rtol=1e-8, atol=1e-10 * np.abs(rU).max())
    np.testing.assert_allclose(t.grad_x0, rx, rtol=1e-8, atol=1e-10 * np.abs(rx).max())
    # combined = control + weight * trajectory, in the same pass
    res = tl.combined_loss(p["system"], p["U"], p["x0"], p["R"], p["RS"], weight=0.25,
                           discount=discount, lengths=L)
    np.testing.assert_allclose(res.value, c.value + 0.25 * t.value, rtol=1e-12)
    np.testing.assert_allclose(res.grad, c.grad + 0.25 * t.grad, rtol=1e-10,
                               atol=1e-12 * np.abs(c.grad).max())


# ==========================================================================
# float32 with large magnitudes
# ==========================================================================


def test_float32_large_magnitudes_accumulate_in_float64():
    """control_loss: |r| ~ 1e20, r^2 ~ 1e40 overflows float32 but the loss
    computes in float64, and the gradient 2r/N ~ 1e19 is representable in
    float32."""
    rng = np.random.default_rng(4)
    P = (rng.uniform(0.5, 1.0, (2, 3, 2)) * 1e20).astype(np.float32)
    Q = (-rng.uniform(0.5, 1.0, (2, 3, 2)) * 1e20).astype(np.float32)
    res = tl.control_loss(P, Q)
    P64, Q64 = P.astype(np.float64), Q.astype(np.float64)
    assert res.grad.dtype == np.float32
    np.testing.assert_allclose(res.value, np.mean((P64 - Q64) ** 2), rtol=1e-12)
    assert np.all(np.isfinite(res.grad))
    np.testing.assert_allclose(res.grad, 2 * (P64 - Q64) / P.size, rtol=1e-6)


def test_float32_rollout_losses_at_large_magnitudes():
    """The rollout losses compute float32 in float32 (as PyTorch does) and
    sum in float64. States ~ 1e17: every penalty (~1e34) fits in float32 and
    the results match the float64 reference to float32 precision. States
    ~ 1e20: r^2 overflows float32, and the call says so (a RuntimeWarning
    naming the overflow) instead of returning inf silently."""
    rng = np.random.default_rng(4)
    s = tl.LinearSystem([[0.5, 0.1], [0.0, 0.9]], [[1.0], [0.5]])
    x0, U, RS = rng.standard_normal((2, 2)), rng.standard_normal((2, 3, 1)), \
        rng.standard_normal((2, 4, 2))
    big = [(a * 1e17).astype(np.float32) for a in (U, x0, 10 * RS)]
    t = tl.trajectory_loss(s, *big, include_initial=True)
    ref = trajectory_loss_ref(s.Ad, s.Bd, *big, include_initial=True)
    assert t.grad.dtype == np.float32 and t.grad_x0.dtype == np.float32
    assert math.isfinite(t.value) and t.value > 1e34
    np.testing.assert_allclose(t.value, ref["value"], rtol=1e-5)
    np.testing.assert_allclose(t.grad, ref["grad"], rtol=1e-5,
                               atol=1e-5 * np.abs(ref["grad"]).max())
    np.testing.assert_allclose(t.grad_x0, ref["grad_x0"], rtol=1e-5,
                               atol=1e-5 * np.abs(ref["grad_x0"]).max())
    huge = [(a * 1e20).astype(np.float32) for a in (U, x0, 10 * RS)]
    with pytest.warns(RuntimeWarning, match="overflow"):
        t = tl.trajectory_loss(s, *huge, include_initial=True)
    assert not math.isfinite(t.value)


def _unstable():
    return tl.LinearSystem(1.1 * np.eye(2), np.ones((2, 1)))


# case -> (call, the function name and the output the warning must name)
OVERFLOW_CASES = {
    # float32 gradient 2 r / N = 1.2e39 > FLT_MAX (the value 3.6e77 is fine in float64)
    "float32-gradient": (lambda: tl.control_loss(np.full((1, 1, 1), 3e38, np.float32),
                                                 np.full((1, 1, 1), -3e38, np.float32)).grad,
                         "control_loss", "gradient"),
    # float32 gradient through the dynamics
    "float32-trajectory-gradient": (lambda: tl.trajectory_loss(
        tl.LinearSystem(np.eye(1), [[1.0]]), np.full((1, 1, 1), 3e38, np.float32),
        np.full((1, 1), 3e38, np.float32), np.full((1, 2, 1), -3e38, np.float32)).grad,
        "loss", "grad_controls"),
    # float64 value r^2 = 1e400 > DBL_MAX
    "float64-value": (lambda: tl.control_loss(np.full((1, 1, 1), 1e200),
                                              np.zeros((1, 1, 1))).value,
                      "control_loss", "value"),
    # float32 states beyond FLT_MAX (carried in float64, rounded to float32 on output)
    "float32-rollout": (lambda: tl.rollout(tl.LinearSystem(2 * np.eye(1), [[1.0]]),
                                           np.full((1, 1), 3e38, np.float32),
                                           np.zeros((1, 1, 1), np.float32)),
                        "rollout", "states"),
    # an unstable system rolled out long enough to overflow float64: 1.1^10000
    "unstable-rollout": (lambda: tl.rollout(_unstable(), np.ones((1, 2)), np.ones((1, 10_000, 1))),
                         "rollout", "states"),
    "unstable-trajectory-loss": (lambda: tl.trajectory_loss(
        _unstable(), np.ones((1, 10_000, 1)), np.ones((1, 2)), np.zeros((1, 10_001, 2))).value,
        "loss", "value"),
    "unstable-combined-loss": (lambda: tl.combined_loss(
        _unstable(), np.ones((1, 10_000, 1)), np.ones((1, 2)), np.zeros((1, 10_000, 1)),
        np.zeros((1, 10_001, 2)), weight=0.3).value, "loss", "value"),
    "unstable-rollout-vjp": (lambda: tl.rollout_vjp(
        _unstable(), np.ones((1, 2)), np.ones((1, 10_000, 1)), np.ones((1, 10_001, 2)))[1],
        "rollout_vjp", "grad_x0"),
    "unstable-final-state-error": (lambda: tl.final_state_error(
        _unstable(), np.ones((1, 10_000, 1)), np.ones((1, 2)), np.zeros(2)),
        "final_state_error", "error"),
    # energy = sum |u|^2 dt with dt = 1e308: the controls are fine, the energy is not
    "reference-energy": (lambda: tl.min_energy(
        tl.LinearSystem(np.eye(2), np.eye(2), dt=1e308), np.zeros(2), np.full(2, 10.0), 3).energy,
        "min_energy", "energy"),
    # e^1000 > DBL_MAX
    "discretize": (lambda: tl.LinearSystem.from_continuous([[1.0]], [[1.0]], dt=1000.0).Ad,
                   "discretize", "Ad"),
}


@pytest.mark.parametrize("case", list(OVERFLOW_CASES))
def test_overflow_is_never_silent(case):
    """A result that is not representable comes back as inf/NaN (the IEEE
    result, as in NumPy) with a RuntimeWarning that says "overflow" and names
    the function and the output -- never silently. The first check is that
    the case really overflows, against an independent computation of the
    exact result's size."""
    call, function, output = OVERFLOW_CASES[case]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = call()
        except (ValueError, OverflowError, FloatingPointError) as exc:
            assert re.search(r"(?i)overflow|finite|inf|nan|large", str(exc)), str(exc)
            return
    assert not np.all(np.isfinite(out)), f"{case} does not overflow: the case is wrong"
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert messages, f"{case}: returned {np.ravel(out)[:4]} silently: no exception, no warning"
    assert any(m.startswith(function + ":") and "overflow" in m and output in m
               for m in messages), messages


def test_overflow_warning_is_an_error_under_error_filters():
    """warnings.simplefilter("error") turns the overflow into an exception,
    with no result and no leaked reference (the extension's error path)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(RuntimeWarning, match="overflow"):
            tl.control_loss(np.full((2, 3, 1), 1e200), np.zeros((2, 3, 1)))


def test_no_warning_for_finite_results_or_unchecked_inputs():
    """Finite results never warn; with check_finite=False NaN inputs propagate
    as NaN without a warning (the caller asked for exactly that)."""
    rng = np.random.default_rng(3)
    sys_ = tl.DoubleIntegrator()
    u, x0 = rng.normal(size=(4, 5, 1)), rng.normal(size=(4, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tl.combined_loss(sys_, u, x0, np.zeros_like(u), np.zeros((4, 6, 2)), weight=0.5)
        tl.rollout(sys_, x0, u)
        u[0, 0, 0] = np.nan
        out = tl.control_loss(u, np.zeros_like(u), check_finite=False)
        states = tl.rollout(sys_, x0, u, check_finite=False)
    assert np.isnan(out.value) and np.isnan(states[0, 1:]).all() and np.isfinite(states[1:]).all()
