"""final_state_error and success_rate against conftest.ref_rollout (a plain
Python loop) and NumPy norms, plus closed forms for the double integrator."""

import math

import numpy as np
import pytest

import trajloss
from conftest import DTYPES, assert_close, ref_rollout, relayout, rollout_scale

DT = 1.0 / 3.0


def random_system(rng, n, m):
    Ad = rng.standard_normal((n, n))
    Ad *= 0.95 / np.linalg.norm(Ad, 2)
    Bd = rng.standard_normal((n, m))
    return Ad, Bd


def reference_errors(Ad, Bd, x0, U, xf, lengths=None):
    """|| X[b, L_b] - xf[b] ||_2 in float64 from the (possibly float32) inputs."""
    X = ref_rollout(Ad, Bd, x0, U)
    xf = np.asarray(xf, dtype=np.float64)
    if X.ndim == 2:  # unbatched
        return np.linalg.norm(X[-1] - xf)
    B, T1, n = X.shape
    xf = np.broadcast_to(xf, (B, n))
    L = np.full(B, T1 - 1) if lengths is None else np.asarray(lengths)
    out = np.empty(B)
    for b in range(B):
        d = X[b, L[b]] - xf[b]
        out[b] = math.sqrt(sum(v * v for v in d))
    return out


def make_problem(rng, B, T, n, m, dtype):
    Ad, Bd = random_system(rng, n, m)
    system = trajloss.LinearSystem(Ad, Bd)
    x0 = rng.standard_normal((B, n)).astype(dtype)
    U = rng.standard_normal((B, T, m)).astype(dtype)
    xf = rng.standard_normal((B, n)).astype(dtype)
    return system, Ad, Bd, x0, U, xf


# --------------------------------------------------------------------------
# final_state_error
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,T,n,m", [(1, 1, 1, 1), (4, 6, 2, 1), (7, 9, 3, 2), (3, 12, 5, 3)])
def test_final_state_error_matches_reference(rng, dtype, B, T, n, m):
    system, Ad, Bd, x0, U, xf = make_problem(rng, B, T, n, m, dtype)
    err = trajloss.final_state_error(system, U, x0, xf)
    assert isinstance(err, np.ndarray)
    assert err.shape == (B,) and err.dtype == np.dtype(dtype)
    expected = reference_errors(Ad, Bd, x0, U, xf)
    assert_close(err, expected, dtype, scale=rollout_scale(Ad, Bd, x0, U) + np.abs(xf).max())


@pytest.mark.parametrize("dtype", DTYPES)
def test_final_state_error_with_lengths(rng, dtype):
    B, T, n, m = 8, 10, 3, 2
    system, Ad, Bd, x0, U, xf = make_problem(rng, B, T, n, m, dtype)
    lengths = np.array([0, 1, 10, 5, 9, 3, 10, 7])
    err = trajloss.final_state_error(system, U, x0, xf, lengths)
    assert err.shape == (B,) and err.dtype == np.dtype(dtype)
    expected = reference_errors(Ad, Bd, x0, U, xf, lengths)
    scale = rollout_scale(Ad, Bd, x0, U) + np.abs(xf).max()
    assert_close(err, expected, dtype, scale=scale)
    # length 0: the "final" state is x0 itself
    assert_close(err[0], np.linalg.norm(x0[0].astype(np.float64) - xf[0]), dtype, scale=scale)
    # keyword form, and a plain list
    assert_close(trajloss.final_state_error(system, U, x0, xf, lengths=list(lengths)), expected,
                 dtype, scale=scale)


@pytest.mark.parametrize("dtype", DTYPES)
def test_final_state_error_ignores_padding(rng, dtype):
    B, T, n, m = 5, 8, 2, 1
    system, Ad, Bd, x0, U, xf = make_problem(rng, B, T, n, m, dtype)
    lengths = np.array([2, 8, 0, 5, 7])
    padded = U.copy()
    for b, L in enumerate(lengths):
        padded[b, L:] = 1e4
    a = trajloss.final_state_error(system, U, x0, xf, lengths)
    c = trajloss.final_state_error(system, padded, x0, xf, lengths)
    np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("dtype", DTYPES)
def test_final_state_error_xf_broadcast(rng, dtype):
    B, T, n, m = 6, 5, 3, 2
    system, Ad, Bd, x0, U, _ = make_problem(rng, B, T, n, m, dtype)
    xf = rng.standard_normal(n).astype(dtype)
    err = trajloss.final_state_error(system, U, x0, xf)
    assert err.shape == (B,) and err.dtype == np.dtype(dtype)
    expected = reference_errors(Ad, Bd, x0, U, np.tile(xf, (B, 1)))
    assert_close(err, expected, dtype, scale=rollout_scale(Ad, Bd, x0, U) + np.abs(xf).max())
    tiled = trajloss.final_state_error(system, U, x0, np.tile(xf, (B, 1)))
    assert_close(err, tiled, dtype, scale=rollout_scale(Ad, Bd, x0, U) + np.abs(xf).max())


@pytest.mark.parametrize("dtype", DTYPES)
def test_final_state_error_unbatched(rng, dtype):
    T, n, m = 7, 3, 2
    system, Ad, Bd, x0, U, xf = make_problem(rng, 1, T, n, m, dtype)
    x0, U, xf = x0[0], U[0], xf[0]
    err = trajloss.final_state_error(system, U, x0, xf)
    assert isinstance(err, np.ndarray)
    assert err.shape == () and err.dtype == np.dtype(dtype)
    expected = reference_errors(Ad, Bd, x0, U, xf)
    assert_close(err, expected, dtype, scale=rollout_scale(Ad, Bd, x0, U) + np.abs(xf).max())


@pytest.mark.parametrize("layout", ["f", "noncontig", "reversed"])
def test_final_state_error_any_layout(rng, layout):
    B, T, n, m = 4, 6, 3, 2
    system, Ad, Bd, x0, U, xf = make_problem(rng, B, T, n, m, np.float64)
    lengths = np.array([6, 2, 0, 4])
    snap = [a.copy() for a in (x0, U, xf)]
    x0r, Ur, xfr = relayout(x0, layout), relayout(U, layout), relayout(xf, layout)
    err = trajloss.final_state_error(system, Ur, x0r, xfr, lengths)
    assert_close(err, reference_errors(Ad, Bd, x0, U, xf, lengths), np.float64,
                 scale=rollout_scale(Ad, Bd, x0, U) + np.abs(xf).max())
    for a, s in zip((x0r, Ur, xfr), snap):
        np.testing.assert_array_equal(a, s)


def test_final_state_error_double_integrator_closed_form():
    """Zero controls: x_T = (p + v*T*dt, v); target the origin."""
    system = trajloss.DoubleIntegrator(dt=DT)
    x0 = np.array([[1.0, 2.0], [-4.0, 0.5], [3.0, 0.0], [0.0, -1.5]])
    T = 15
    U = np.zeros((4, T, 1))
    err = trajloss.final_state_error(system, U, x0, np.zeros(2))
    p, v = x0[:, 0], x0[:, 1]
    expected = np.sqrt((p + v * T * DT) ** 2 + v ** 2)
    np.testing.assert_allclose(err, expected, rtol=1e-13, atol=1e-13)
    assert err[2] == pytest.approx(3.0, rel=1e-15)


def test_final_state_error_constant_acceleration_closed_form():
    """Constant control a: p_T = p + v H + a H^2 / 2, v_T = v + a H, H = T dt."""
    system = trajloss.DoubleIntegrator(dt=DT)
    T, a = 9, np.array([0.7, -2.0, 1.25])
    x0 = np.array([[0.5, -1.0], [2.0, 1.0], [-3.0, 0.25]])
    U = np.repeat(a[:, None, None], T, axis=1)
    xf = np.array([1.0, -0.5])
    H = T * DT
    pT = x0[:, 0] + x0[:, 1] * H + a * H * H / 2
    vT = x0[:, 1] + a * H
    expected = np.hypot(pT - xf[0], vT - xf[1])
    np.testing.assert_allclose(trajloss.final_state_error(system, U, x0, xf), expected,
                               rtol=1e-12, atol=1e-12)


def test_final_state_error_exact_reference_reaches_target(rng):
    system = trajloss.DoubleIntegrator(dt=DT)
    x0 = rng.uniform(-5, 5, size=(6, 2))
    xf = rng.uniform(-1, 1, size=(6, 2))
    ref = trajloss.min_energy(system, x0, xf, 15)
    err = trajloss.final_state_error(system, ref.controls, x0, xf)
    assert np.all(err < 1e-9)


def test_final_state_error_rejects_nan(rng):
    system, Ad, Bd, x0, U, xf = make_problem(rng, 3, 4, 2, 1, np.float64)
    U[1, 2, 0] = np.nan
    with pytest.raises(ValueError):
        trajloss.final_state_error(system, U, x0, xf)
    err = trajloss.final_state_error(system, U, x0, xf, check_finite=False)
    assert np.isnan(err[1])
    expected = reference_errors(Ad, Bd, x0, U, xf)
    np.testing.assert_allclose(err[[0, 2]], expected[[0, 2]], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("what", ["xf_n", "xf_B", "lengths_big", "lengths_neg", "lengths_shape",
                                  "x0_n"])
def test_final_state_error_bad_shapes(rng, what):
    system, Ad, Bd, x0, U, xf = make_problem(rng, 3, 4, 2, 1, np.float64)
    lengths = None
    if what == "xf_n":
        xf = np.zeros((3, 3))
    elif what == "xf_B":
        xf = np.zeros((2, 2))
    elif what == "lengths_big":
        lengths = np.array([1, 5, 2])
    elif what == "lengths_neg":
        lengths = np.array([1, -1, 2])
    elif what == "lengths_shape":
        lengths = np.array([1, 2])
    elif what == "x0_n":
        x0 = np.zeros((3, 3))
    with pytest.raises((ValueError, TypeError)):
        trajloss.final_state_error(system, U, x0, xf, lengths)


# --------------------------------------------------------------------------
# success_rate
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_success_rate_matches_reference(rng, dtype):
    B, T, n, m = 20, 6, 2, 1
    system, Ad, Bd, x0, U, xf = make_problem(rng, B, T, n, m, dtype)
    lengths = rng.integers(0, T + 1, size=B)
    for lens in (None, lengths):
        errors = np.sort(reference_errors(Ad, Bd, x0, U, xf, lens))
        # tolerances half-way between consecutive errors (no ties at float32 precision)
        mids = (errors[:-1] + errors[1:]) / 2
        gaps = errors[1:] - errors[:-1]
        for k in range(0, B - 1, 3):
            if gaps[k] < 1e-3 * (1.0 + errors[-1]):
                continue
            tol = float(mids[k])
            r = trajloss.success_rate(system, U, x0, xf, tol, lens)
            assert isinstance(r, float)
            assert r == pytest.approx((k + 1) / B, abs=1e-15)
        assert trajloss.success_rate(system, U, x0, xf, 0.0, lens) == 0.0 or errors[0] == 0.0
        assert trajloss.success_rate(system, U, x0, xf, float(errors[-1]) * 1.01 + 1e-6,
                                     lens) == 1.0


def test_success_rate_tolerance_is_inclusive():
    """Errors that are exact in binary: |(3, 0)| = 3 (x0 stays put) and, with
    length 0, |(3, 4)| = 5."""
    system = trajloss.LinearSystem(np.array([[1.0, 0.5], [0.0, 1.0]]), np.array([[0.125], [0.5]]))
    x0 = np.array([[3.0, 0.0], [3.0, 4.0]])
    U = np.zeros((2, 5, 1))
    lengths = np.array([5, 0])
    err = trajloss.final_state_error(system, U, x0, np.zeros(2), lengths)
    np.testing.assert_array_equal(err, [3.0, 5.0])
    assert trajloss.success_rate(system, U, x0, np.zeros(2), 3.0, lengths) == 0.5
    assert trajloss.success_rate(system, U, x0, np.zeros(2), 2.999999, lengths) == 0.0
    assert trajloss.success_rate(system, U, x0, np.zeros(2), 5.0, lengths) == 1.0
    assert trajloss.success_rate(system, U, x0, np.zeros(2), 4.999999, lengths=lengths) == 0.5


def test_success_rate_unbatched(rng):
    system, Ad, Bd, x0, U, xf = make_problem(rng, 1, 5, 2, 1, np.float64)
    e = float(reference_errors(Ad, Bd, x0[0], U[0], xf[0]))
    assert trajloss.success_rate(system, U[0], x0[0], xf[0], e * 1.001) == 1.0
    assert trajloss.success_rate(system, U[0], x0[0], xf[0], e * 0.999) == 0.0


def test_success_rate_xf_broadcast(rng):
    B = 10
    system, Ad, Bd, x0, U, _ = make_problem(rng, B, 5, 2, 1, np.float64)
    xf = np.array([0.3, -0.2])
    errors = reference_errors(Ad, Bd, x0, U, np.tile(xf, (B, 1)))
    tol = float(np.median(errors))
    expected = float(np.mean(errors <= tol))
    assert trajloss.success_rate(system, U, x0, xf, tol) == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize("tol", [-1.0, -1e-12, math.nan, math.inf])
def test_success_rate_bad_tolerance(rng, tol):
    system, Ad, Bd, x0, U, xf = make_problem(rng, 3, 4, 2, 1, np.float64)
    with pytest.raises(ValueError, match="(?i)tol"):
        trajloss.success_rate(system, U, x0, xf, tol)


def test_success_rate_rejects_nan_by_default(rng):
    system, Ad, Bd, x0, U, xf = make_problem(rng, 3, 4, 2, 1, np.float64)
    x0[0, 1] = np.inf
    with pytest.raises(ValueError):
        trajloss.success_rate(system, U, x0, xf, 1.0)
