"""Systems: LinearSystem, from_continuous (zoh/euler/rk4), DoubleIntegrator,
and the internal matrix exponential ``trajloss._core.expm``.

References: truncated Taylor series in extended precision, closed forms,
textbook Euler/RK4 stages applied to unit vectors, and SciPy.
"""

import math
from fractions import Fraction

import numpy as np
import pytest

import trajloss
from conftest import (
    LAYOUTS,
    SHAPES_NM,
    ref_euler,
    ref_rk4,
    ref_zoh_taylor,
    relayout,
    snapshot,
    assert_untouched,
    taylor_expm,
    taylor_expm_ss,
)

METHODS = ["zoh", "euler", "rk4"]
DTS = [1e-3, 0.05, 1 / 3, 1.0, 2.5]


def rel_err(actual, expected):
    expected = np.asarray(expected, np.float64)
    denom = np.linalg.norm(expected, 2)
    return np.linalg.norm(np.asarray(actual, np.float64) - expected, 2) / denom


def expm_rtol(norm):
    """Tolerance relative to ||expm(A)||.

    1e-12 for ||A|| <= 4; beyond that the forward error of any float64
    scaling-and-squaring expm grows roughly linearly with ||A|| (SciPy's own
    expm is ~2.4e-12 off the extended-precision reference at ||A||_2 = 20),
    so the tolerance grows with it.
    """
    return 1e-12 * max(1.0, norm / 4.0)


def assert_readonly_f64(a, shape):
    assert isinstance(a, np.ndarray)
    assert a.dtype == np.float64
    assert a.shape == shape
    assert a.flags.c_contiguous
    assert not a.flags.writeable
    with pytest.raises(ValueError):
        a[(0,) * a.ndim] = 42.0


def random_continuous(rng, n, m):
    A = rng.standard_normal((n, n))
    B = rng.standard_normal((n, m))
    return A, B


# ==========================================================================
# trajloss._core.expm
# ==========================================================================


def core_expm(A):
    return trajloss._core.expm(np.ascontiguousarray(A, dtype=np.float64))


@pytest.mark.parametrize("norm", [0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 20.0])
@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_expm_random_vs_taylor(rng, n, norm):
    for _ in range(5):
        A = rng.standard_normal((n, n))
        A *= norm / np.linalg.norm(A, 2)
        E = core_expm(A)
        assert isinstance(E, np.ndarray) and E.dtype == np.float64 and E.shape == (n, n)
        if norm <= 1.0:
            # plain truncated series sum_{k<=40} A^k / k!, no squaring needed
            ref = np.asarray(taylor_expm(A, terms=40), np.float64)
        else:
            ref = taylor_expm_ss(A)
        assert rel_err(E, ref) <= expm_rtol(norm), (A, E, ref)


@pytest.mark.parametrize("norm", [0.01, 0.1, 1.0, 5.0, 10.0, 20.0])
@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_expm_random_vs_scipy(rng, n, norm):
    sl = pytest.importorskip("scipy.linalg")
    for _ in range(5):
        A = rng.standard_normal((n, n))
        A *= norm / np.linalg.norm(A, 2)
        # both sides carry their own rounding error: allow twice the budget
        assert rel_err(core_expm(A), sl.expm(A)) <= 2 * expm_rtol(norm)


def test_expm_zero_is_identity():
    for n in (1, 2, 5):
        E = core_expm(np.zeros((n, n)))
        np.testing.assert_array_equal(E, np.eye(n))


@pytest.mark.parametrize("a", [-20.0, -3.0, -1e-8, 0.0, 1e-8, 0.7, 5.0, 15.0])
def test_expm_scalar(a):
    E = core_expm(np.array([[a]]))
    assert E.shape == (1, 1)
    np.testing.assert_allclose(E[0, 0], math.exp(a), rtol=1e-13 * max(1.0, abs(a) / 4), atol=0)


@pytest.mark.parametrize("n", [2, 3, 6])
@pytest.mark.parametrize("spread", [0.1, 1.0, 8.0])
def test_expm_diagonal_closed_form(rng, n, spread):
    d = rng.uniform(-spread, spread, size=n)
    E = core_expm(np.diag(d))
    ref = np.exp(d)
    np.testing.assert_allclose(np.diag(E), ref, rtol=expm_rtol(spread), atol=0)
    off = E - np.diag(np.diag(E))
    assert np.max(np.abs(off)) <= 1e-14 * ref.max()


@pytest.mark.parametrize("t", [1e-6, 0.1, 1.0, math.pi / 2, 3.0, 7.5, 20.0])
def test_expm_rotation_generator(t):
    A = np.array([[0.0, t], [-t, 0.0]])
    E = core_expm(A)
    ref = np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])
    np.testing.assert_allclose(E, ref, rtol=0, atol=expm_rtol(t))


def _exact_expm_nilpotent(N):
    """exp(N) = sum_{k<n} N^k/k! exactly, with rational arithmetic."""
    n = N.shape[0]
    Nq = [[Fraction(int(v)) for v in row] for row in N]
    S = [[Fraction(int(i == j)) for j in range(n)] for i in range(n)]
    P = [[Fraction(int(i == j)) for j in range(n)] for i in range(n)]
    for k in range(1, n):
        P = [[sum(P[i][l] * Nq[l][j] for l in range(n)) / k for j in range(n)] for i in range(n)]
        S = [[S[i][j] + P[i][j] for j in range(n)] for i in range(n)]
    return np.array([[float(v) for v in row] for row in S])


@pytest.mark.parametrize("n", [2, 3, 4, 6])
def test_expm_nilpotent(rng, n):
    N = np.triu(rng.integers(-3, 4, size=(n, n)), k=1).astype(np.float64)
    E = core_expm(N)
    ref = _exact_expm_nilpotent(N)
    assert rel_err(E, ref) <= expm_rtol(np.linalg.norm(N, 2))
    # lower triangle must be zero, diagonal one
    np.testing.assert_allclose(np.diag(E), np.ones(n), rtol=0, atol=1e-13)
    assert np.max(np.abs(np.tril(E, -1))) <= 1e-13 * np.abs(ref).max()


def test_expm_jordan_block_closed_form():
    # exp(lam I + N), N = single shift: e^lam * [[1,1,1/2],[0,1,1],[0,0,1]]
    lam = -0.7
    A = np.array([[lam, 1.0, 0.0], [0.0, lam, 1.0], [0.0, 0.0, lam]])
    ref = math.exp(lam) * np.array([[1.0, 1.0, 0.5], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    assert rel_err(core_expm(A), ref) <= 1e-13


def test_expm_input_not_modified(rng):
    A = rng.standard_normal((4, 4)) * 3
    snap = snapshot(A)
    E = core_expm(A)
    assert_untouched([A], snap)
    assert not np.shares_memory(E, A)


# ==========================================================================
# LinearSystem (discrete)
# ==========================================================================


def test_version_is_str():
    assert isinstance(trajloss.__version__, str)
    assert trajloss.__version__


@pytest.mark.parametrize("n,m", SHAPES_NM)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_linear_system_attributes(rng, n, m, layout):
    Ad = rng.standard_normal((n, n))
    Bd = rng.standard_normal((n, m))
    Ad_in, Bd_in = relayout(Ad, layout), relayout(Bd, layout)
    snap = snapshot(Ad_in, Bd_in)
    sys_ = trajloss.LinearSystem(Ad_in, Bd_in)
    assert_untouched([Ad_in, Bd_in], snap)
    assert isinstance(sys_, trajloss.LinearSystem)
    assert sys_.n == n and sys_.m == m
    assert isinstance(sys_.n, int) and isinstance(sys_.m, int)
    assert sys_.dt is None
    assert sys_.A is None and sys_.B is None
    assert sys_.method is None
    assert_readonly_f64(sys_.Ad, (n, n))
    assert_readonly_f64(sys_.Bd, (n, m))
    np.testing.assert_array_equal(sys_.Ad, Ad)
    np.testing.assert_array_equal(sys_.Bd, Bd)


def test_linear_system_copies_its_inputs(rng):
    Ad = rng.standard_normal((3, 3))
    Bd = rng.standard_normal((3, 2))
    Ad0, Bd0 = Ad.copy(), Bd.copy()
    sys_ = trajloss.LinearSystem(Ad, Bd)
    # the caller's arrays stay writeable, and changing them later must not
    # change the (read-only) system
    assert Ad.flags.writeable and Bd.flags.writeable
    Ad[...] = 7.0
    Bd[...] = -7.0
    np.testing.assert_array_equal(sys_.Ad, Ad0)
    np.testing.assert_array_equal(sys_.Bd, Bd0)


def test_linear_system_accepts_readonly_inputs(rng):
    Ad = rng.standard_normal((2, 2))
    Bd = rng.standard_normal((2, 1))
    Ad.setflags(write=False)
    Bd.setflags(write=False)
    sys_ = trajloss.LinearSystem(Ad, Bd)
    np.testing.assert_array_equal(sys_.Ad, Ad)
    np.testing.assert_array_equal(sys_.Bd, Bd)


@pytest.mark.parametrize(
    "Ad,Bd",
    [
        ([[1, 2], [3, 4]], [[5], [6]]),
        (((1.5, 0.0), (0.0, 1.0)), ((1.0,), (2.0,))),
        (np.array([[1, 2], [3, 4]], dtype=np.int64), np.array([[5], [6]], dtype=np.int32)),
        (np.array([[1, 2], [3, 4]], dtype=np.float32), np.array([[5], [6]], dtype=np.float32)),
        ([[2]], [[3, 4]]),
    ],
    ids=["int-lists", "tuples", "int-arrays", "float32-arrays", "1x1-lists"],
)
def test_linear_system_array_likes(Ad, Bd):
    sys_ = trajloss.LinearSystem(Ad, Bd)
    Ad_ref = np.array(Ad, dtype=np.float64)
    Bd_ref = np.array(Bd, dtype=np.float64)
    assert_readonly_f64(sys_.Ad, Ad_ref.shape)
    assert_readonly_f64(sys_.Bd, Bd_ref.shape)
    np.testing.assert_array_equal(sys_.Ad, Ad_ref)
    np.testing.assert_array_equal(sys_.Bd, Bd_ref)
    assert sys_.n == Ad_ref.shape[0] and sys_.m == Bd_ref.shape[1]


@pytest.mark.parametrize("dt", [0.1, 1, 1 / 3, np.float32(0.5), np.float64(2.0), 1e-9])
def test_linear_system_dt(dt):
    sys_ = trajloss.LinearSystem(np.eye(2), np.ones((2, 1)), dt=dt)
    assert isinstance(sys_.dt, float)
    assert sys_.dt == float(dt)


def test_linear_system_repr(rng):
    sys_ = trajloss.LinearSystem(rng.standard_normal((3, 3)), rng.standard_normal((3, 2)), dt=0.25)
    r = repr(sys_)
    assert isinstance(r, str)
    assert "LinearSystem" in r
    assert "dt" in r and "0.25" in r
    assert "3" in r and "2" in r
    assert "object at 0x" not in r
    # without a time step there is no dt to show; still readable
    r2 = repr(trajloss.LinearSystem(np.eye(2), np.ones((2, 1))))
    assert "LinearSystem" in r2 and "object at 0x" not in r2


# ==========================================================================
# LinearSystem.from_continuous
# ==========================================================================


@pytest.mark.parametrize("n,m", SHAPES_NM + [(5, 3), (8, 1), (4, 4)])
def test_zoh_vs_taylor_well_scaled(rng, n, m):
    for _ in range(4):
        A, B = random_continuous(rng, n, m)
        M = np.zeros((n + m, n + m))
        M[:n, :n] = A
        M[:n, n:] = B
        dt = rng.uniform(0.05, 1.0) / np.linalg.norm(M, 2)  # ||M dt||_2 <= 1
        sys_ = trajloss.LinearSystem.from_continuous(A, B, dt, method="zoh")
        Ad_ref, Bd_ref = ref_zoh_taylor(A, B, dt, terms=40)
        got = np.hstack([sys_.Ad, sys_.Bd])
        ref = np.hstack([Ad_ref, Bd_ref])
        assert rel_err(got, ref) <= 1e-13
        # the Bd block on its own (it can be much smaller than Ad)
        assert np.linalg.norm(sys_.Bd - Bd_ref, 2) <= 1e-13 * np.linalg.norm(Bd_ref, 2) + 1e-15


@pytest.mark.parametrize("norm", [0.5, 3.0, 10.0, 20.0])
@pytest.mark.parametrize("n,m", [(2, 1), (4, 2), (8, 3)])
def test_zoh_vs_scipy_augmented(rng, n, m, norm):
    sl = pytest.importorskip("scipy.linalg")
    A, B = random_continuous(rng, n, m)
    M = np.zeros((n + m, n + m))
    M[:n, :n] = A
    M[:n, n:] = B
    dt = norm / np.linalg.norm(M, 2)
    sys_ = trajloss.LinearSystem.from_continuous(A, B, dt)
    E = sl.expm(M * dt)
    got = np.hstack([sys_.Ad, sys_.Bd])
    assert rel_err(got, E[:n, :]) <= 2 * expm_rtol(norm)


@pytest.mark.parametrize("dt", DTS)
def test_zoh_zero_dynamics(dt):
    # A = 0: Ad = I, Bd = dt B
    B = np.array([[1.0, -2.0], [0.5, 3.0], [0.0, 1.0]])
    sys_ = trajloss.LinearSystem.from_continuous(np.zeros((3, 3)), B, dt)
    np.testing.assert_allclose(sys_.Ad, np.eye(3), rtol=0, atol=1e-15)
    np.testing.assert_allclose(sys_.Bd, dt * B, rtol=1e-14, atol=1e-16)


@pytest.mark.parametrize("dt", DTS)
def test_zoh_diagonal_closed_form(dt):
    a = np.array([-2.0, -0.3, 0.4, 1.1])
    B = np.array([[1.0], [2.0], [-1.0], [0.5]])
    sys_ = trajloss.LinearSystem.from_continuous(np.diag(a), B, dt)
    Ad_ref = np.diag(np.exp(a * dt))
    Bd_ref = (np.expm1(a * dt) / a)[:, None] * B
    tol = expm_rtol(np.abs(a).max() * dt)
    np.testing.assert_allclose(np.diag(sys_.Ad), np.diag(Ad_ref), rtol=tol, atol=0)
    assert np.max(np.abs(sys_.Ad - np.diag(np.diag(sys_.Ad)))) <= 1e-14 * Ad_ref.max()
    np.testing.assert_allclose(sys_.Bd, Bd_ref, rtol=10 * tol, atol=0)


@pytest.mark.parametrize("dt", DTS)
@pytest.mark.parametrize("w", [0.5, 2.0])
def test_zoh_oscillator_closed_form(dt, w):
    A = np.array([[0.0, w], [-w, 0.0]])
    B = np.array([[0.0], [1.0]])
    sys_ = trajloss.LinearSystem.from_continuous(A, B, dt)
    c, s = math.cos(w * dt), math.sin(w * dt)
    Ad_ref = np.array([[c, s], [-s, c]])
    Bd_ref = np.array([[(1 - c) / w], [s / w]])
    tol = expm_rtol(w * dt)
    np.testing.assert_allclose(sys_.Ad, Ad_ref, rtol=0, atol=tol)
    np.testing.assert_allclose(sys_.Bd, Bd_ref, rtol=1e-12, atol=tol * max(1.0, dt))


@pytest.mark.parametrize("n,m", SHAPES_NM)
@pytest.mark.parametrize("dt", [0.01, 0.1, 0.7])
def test_euler_textbook(rng, n, m, dt):
    A, B = random_continuous(rng, n, m)
    sys_ = trajloss.LinearSystem.from_continuous(A, B, dt, method="euler")
    Ad_ref, Bd_ref = ref_euler(A, B, dt)
    np.testing.assert_allclose(sys_.Ad, Ad_ref, rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(sys_.Bd, Bd_ref, rtol=1e-15, atol=1e-15)
    assert sys_.method == "euler"


@pytest.mark.parametrize("n,m", SHAPES_NM)
@pytest.mark.parametrize("dt", [0.01, 0.1, 0.7])
def test_rk4_textbook(rng, n, m, dt):
    A, B = random_continuous(rng, n, m)
    sys_ = trajloss.LinearSystem.from_continuous(A, B, dt, method="rk4")
    Ad_ref, Bd_ref = ref_rk4(A, B, dt)
    # magnitude of the accumulated terms: the same scheme on |A|, |B|
    Ad_abs, Bd_abs = ref_rk4(np.abs(A), np.abs(B), dt)
    scale = max(1.0, Ad_abs.max(), Bd_abs.max())
    np.testing.assert_allclose(sys_.Ad, Ad_ref, rtol=1e-13, atol=1e-14 * scale)
    np.testing.assert_allclose(sys_.Bd, Bd_ref, rtol=1e-13, atol=1e-14 * scale)
    assert sys_.method == "rk4"


def test_rk4_is_more_accurate_than_euler(rng):
    # sanity of the approximate schemes against the exact zoh (Taylor ref)
    A, B = random_continuous(rng, 4, 2)
    dt = 0.05
    Ad_ref, Bd_ref = ref_zoh_taylor(A, B, dt)
    e = trajloss.LinearSystem.from_continuous(A, B, dt, method="euler")
    r = trajloss.LinearSystem.from_continuous(A, B, dt, method="rk4")
    err_e = np.abs(e.Ad - Ad_ref).max()
    err_r = np.abs(r.Ad - Ad_ref).max()
    assert err_r < 1e-3 * err_e


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_from_continuous_attributes_and_layouts(rng, method, layout):
    n, m = 3, 2
    A, B = random_continuous(rng, n, m)
    A_in, B_in = relayout(A, layout), relayout(B, layout)
    snap = snapshot(A_in, B_in)
    dt = 0.2
    sys_ = trajloss.LinearSystem.from_continuous(A_in, B_in, dt, method=method)
    assert_untouched([A_in, B_in], snap)
    assert type(sys_) is trajloss.LinearSystem
    assert sys_.n == n and sys_.m == m
    assert isinstance(sys_.dt, float) and sys_.dt == dt
    assert sys_.method == method
    for arr, ref, shape in ((sys_.A, A, (n, n)), (sys_.B, B, (n, m))):
        assert_readonly_f64(arr, shape)
        np.testing.assert_array_equal(arr, ref)
    assert_readonly_f64(sys_.Ad, (n, n))
    assert_readonly_f64(sys_.Bd, (n, m))
    ref = {"zoh": ref_zoh_taylor, "euler": ref_euler, "rk4": ref_rk4}[method](A, B, dt)
    np.testing.assert_allclose(sys_.Ad, ref[0], rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(sys_.Bd, ref[1], rtol=1e-13, atol=1e-14)


def test_from_continuous_default_method_is_zoh(rng):
    A, B = random_continuous(rng, 2, 1)
    sys_ = trajloss.LinearSystem.from_continuous(A, B, 0.1)
    assert sys_.method == "zoh"
    Ad_ref, Bd_ref = ref_zoh_taylor(A, B, 0.1)
    np.testing.assert_allclose(sys_.Ad, Ad_ref, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(sys_.Bd, Bd_ref, rtol=1e-13, atol=1e-15)


def test_from_continuous_lists_and_ints():
    sys_ = trajloss.LinearSystem.from_continuous([[0, 1], [0, 0]], [[0], [1]], 1)
    assert sys_.dt == 1.0 and isinstance(sys_.dt, float)
    assert_readonly_f64(sys_.A, (2, 2))
    assert_readonly_f64(sys_.B, (2, 1))
    np.testing.assert_allclose(sys_.Ad, [[1.0, 1.0], [0.0, 1.0]], rtol=0, atol=1e-15)
    np.testing.assert_allclose(sys_.Bd, [[0.5], [1.0]], rtol=0, atol=1e-15)


def test_from_continuous_copies_its_inputs(rng):
    A, B = random_continuous(rng, 2, 2)
    A0, B0 = A.copy(), B.copy()
    sys_ = trajloss.LinearSystem.from_continuous(A, B, 0.1)
    assert A.flags.writeable and B.flags.writeable
    A[...] = 0.0
    B[...] = 0.0
    np.testing.assert_array_equal(sys_.A, A0)
    np.testing.assert_array_equal(sys_.B, B0)


def test_from_continuous_repr(rng):
    A, B = random_continuous(rng, 3, 2)
    r = repr(trajloss.LinearSystem.from_continuous(A, B, 0.25, method="rk4"))
    assert "LinearSystem" in r and "dt" in r and "0.25" in r
    assert "object at 0x" not in r


# ==========================================================================
# DoubleIntegrator
# ==========================================================================


def di_exact(dt):
    return np.array([[1.0, dt], [0.0, 1.0]]), np.array([[dt * dt / 2.0], [dt]])


@pytest.mark.parametrize("dt", DTS + [1e-6, 10.0])
def test_double_integrator_zoh_closed_form(dt):
    sys_ = trajloss.DoubleIntegrator(dt=dt)
    Ad_ref, Bd_ref = di_exact(dt)
    np.testing.assert_allclose(sys_.Ad, Ad_ref, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(sys_.Bd, Bd_ref, rtol=1e-14, atol=0)
    # exact zeros / ones where the closed form has them (nilpotent A)
    assert abs(sys_.Ad[1, 0]) <= 1e-15
    # same through from_continuous
    sys2 = trajloss.LinearSystem.from_continuous([[0, 1], [0, 0]], [[0], [1]], dt, method="zoh")
    np.testing.assert_allclose(sys2.Ad, Ad_ref, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(sys2.Bd, Bd_ref, rtol=1e-14, atol=0)


@pytest.mark.parametrize("dt", DTS)
def test_double_integrator_rk4_is_exact(dt):
    # A^2 = 0, so the RK4 polynomial is the exact exponential here
    sys_ = trajloss.DoubleIntegrator(dt=dt, method="rk4")
    Ad_ref, Bd_ref = di_exact(dt)
    np.testing.assert_allclose(sys_.Ad, Ad_ref, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(sys_.Bd, Bd_ref, rtol=1e-14, atol=0)
    assert sys_.method == "rk4"


@pytest.mark.parametrize("dt", DTS)
def test_double_integrator_euler(dt):
    sys_ = trajloss.DoubleIntegrator(dt=dt, method="euler")
    np.testing.assert_allclose(sys_.Ad, [[1.0, dt], [0.0, 1.0]], rtol=1e-15, atol=0)
    np.testing.assert_allclose(sys_.Bd, [[0.0], [dt]], rtol=1e-15, atol=0)
    assert sys_.method == "euler"


def test_double_integrator_defaults():
    sys_ = trajloss.DoubleIntegrator()
    assert isinstance(sys_, trajloss.LinearSystem)
    assert isinstance(sys_, trajloss.DoubleIntegrator)
    assert issubclass(trajloss.DoubleIntegrator, trajloss.LinearSystem)
    assert sys_.dt == pytest.approx(1 / 3, rel=1e-15)
    assert sys_.method == "zoh"
    assert sys_.n == 2 and sys_.m == 1
    assert_readonly_f64(sys_.A, (2, 2))
    assert_readonly_f64(sys_.B, (2, 1))
    assert_readonly_f64(sys_.Ad, (2, 2))
    assert_readonly_f64(sys_.Bd, (2, 1))
    np.testing.assert_array_equal(sys_.A, [[0.0, 1.0], [0.0, 0.0]])
    np.testing.assert_array_equal(sys_.B, [[0.0], [1.0]])
    Ad_ref, Bd_ref = di_exact(1 / 3)
    np.testing.assert_allclose(sys_.Ad, Ad_ref, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(sys_.Bd, Bd_ref, rtol=1e-14, atol=0)


def test_double_integrator_repr():
    r = repr(trajloss.DoubleIntegrator(dt=0.25))
    assert "DoubleIntegrator" in r
    assert "dt" in r and "0.25" in r
    assert "object at 0x" not in r


def test_double_integrator_instances_are_independent():
    a = trajloss.DoubleIntegrator(dt=0.5)
    b = trajloss.DoubleIntegrator(dt=0.25)
    np.testing.assert_allclose(a.Bd, di_exact(0.5)[1], rtol=1e-14)
    np.testing.assert_allclose(b.Bd, di_exact(0.25)[1], rtol=1e-14)


# ==========================================================================
# Every form: per-sample LinearSystem, offsets, TimeVaryingSystem, batched
# from_continuous (their rollouts and losses are in test_system_forms.py)
# ==========================================================================

import copy  # noqa: E402
import pickle  # noqa: E402
import re  # noqa: E402

from trajloss import _core  # noqa: E402


def named(*names):
    """Regex matching any of the names as a whole word."""
    return "|".join(rf"\b{re.escape(a)}\b" for a in names)


def assert_sealed(a, shape):
    """Read-only float64 C-contiguous, and no one can make it writeable again."""
    assert_readonly_f64(a, shape)
    with pytest.raises(ValueError):
        a.setflags(write=True)


def assert_core_tuple(s, time_varying):
    """system._core: the registered tuple type of (Ad, Bd, offset, time_varying),
    float64 C-contiguous read-only arrays owning their memory (what the
    extension reads unchecked), which the public arrays are views of."""
    assert type(s._core) is trajloss.systems._SystemCore and len(s._core) == 4
    for core, public in zip(s._core[:3], (s.Ad, s.Bd, s.offset)):
        if public is None:
            assert core is None
            continue
        assert core.flags.owndata and core.base is None
        assert_readonly_f64(core, public.shape)
        assert public.base is core
    assert s._core[3] is time_varying


def _forms(rng, B=4, T=5, n=3, m=2):
    """(kwargs, time_varying, batch, steps) for every combination of shared and
    per-sample arrays, with and without an offset, both system classes."""
    out = []
    for tv in (False, True):
        lead = (T,) if tv else ()
        for a_ps in (False, True):
            for b_ps in (False, True):
                for off in (None, False, True):
                    Ad = rng.standard_normal(((B,) if a_ps else ()) + lead + (n, n)) * 0.4
                    Bd = rng.standard_normal(((B,) if b_ps else ()) + lead + (n, m))
                    kw = dict(Ad=Ad, Bd=Bd)
                    if off is not None:
                        kw["offset"] = rng.standard_normal(((B,) if off else ()) + lead + (n,))
                    per_sample = a_ps or b_ps or bool(off)
                    out.append((kw, tv, B if per_sample else None, T if tv else None))
    return out


def test_every_form_attributes_and_core_tuple(rng):
    B, T, n, m = 4, 5, 3, 2
    for kw, tv, batch, steps in _forms(rng, B, T, n, m):
        cls = trajloss.TimeVaryingSystem if tv else trajloss.LinearSystem
        snap = snapshot(*kw.values())
        s = cls(dt=0.1, **kw)
        assert_untouched(list(kw.values()), snap)
        assert (s.n, s.m, s.batch, s.steps, s.dt) == (n, m, batch, steps, 0.1)
        assert s.A is None and s.B is None and s.method is None
        for name in ("Ad", "Bd", "offset"):
            given = kw.get(name)
            got = getattr(s, name)
            if given is None:
                assert got is None
                continue
            assert_sealed(got, given.shape)
            np.testing.assert_array_equal(got, given)
        assert_core_tuple(s, tv)
        r = repr(s)
        assert cls.__name__ in r and "object at 0x" not in r
        assert (f"batch={batch}" in r) == (batch is not None)
        assert (f"steps={steps}" in r) == (steps is not None)


def test_system_classes_and_exports():
    assert trajloss.TimeVaryingSystem is trajloss.systems.TimeVaryingSystem
    assert "TimeVaryingSystem" in trajloss.__all__
    assert not issubclass(trajloss.TimeVaryingSystem, trajloss.LinearSystem)
    assert issubclass(trajloss.DoubleIntegrator, trajloss.LinearSystem)
    assert trajloss.DoubleIntegrator().batch is None


def test_caller_arrays_stay_independent(rng):
    Ad, Bd, c = rng.standard_normal((3, 2, 2)), rng.standard_normal((2, 1)), rng.standard_normal(2)
    s = trajloss.LinearSystem(Ad, Bd, offset=c)
    Ad0, c0 = Ad.copy(), c.copy()
    Ad[...] = 9.0
    c[...] = 9.0
    np.testing.assert_array_equal(s.Ad, Ad0)
    np.testing.assert_array_equal(s.offset, c0)


_I, _B1 = np.eye(2), np.ones((2, 1))


@pytest.mark.parametrize("kw,exc,who", [
    (dict(Ad=np.ones((2, 2, 2, 2)), Bd=_B1), ValueError, "Ad"),
    (dict(Ad=np.ones((3, 2, 3)), Bd=_B1), ValueError, "Ad"),
    (dict(Ad=np.ones((0, 2, 2)), Bd=_B1), ValueError, "Ad"),
    (dict(Ad=_I, Bd=np.ones((3, 3, 1))), ValueError, "Bd"),
    (dict(Ad=_I, Bd=np.ones((3, 2, 0))), ValueError, "Bd"),
    (dict(Ad=np.ones((3, 2, 2)), Bd=np.ones((4, 2, 1))), ValueError, "Bd"),
    (dict(Ad=_I, Bd=_B1, offset=np.ones(3)), ValueError, "offset"),
    (dict(Ad=_I, Bd=_B1, offset=np.ones((2, 2, 2))), ValueError, "offset"),
    (dict(Ad=np.ones((3, 2, 2)), Bd=_B1, offset=np.ones((4, 2))), ValueError, "offset"),
    (dict(Ad=_I, Bd=_B1, offset=[np.nan, 0.0]), ValueError, "offset"),
    (dict(Ad=_I, Bd=_B1, offset=[np.inf, 0.0]), ValueError, "offset"),
    (dict(Ad=_I, Bd=_B1, offset=np.ones(2, complex)), TypeError, "offset"),
    (dict(Ad=_I, Bd=_B1, offset=np.ones(2, bool)), TypeError, "offset"),
    (dict(Ad=_I, Bd=_B1, offset=["a", "b"]), TypeError, "offset"),
    (dict(Ad=_I, Bd=_B1, offset=[[0.0], [1.0, 2.0]]), ValueError, "offset"),
    (dict(Ad=np.full((3, 2, 2), np.nan), Bd=_B1), ValueError, "Ad"),
    (dict(Ad=_I, Bd=np.ones((3, 2, 1), np.complex128)), TypeError, "Bd"),
], ids=["Ad-rank4", "Ad-notsquare-batched", "Ad-B0", "Bd-rows-batched", "Bd-m0-batched",
        "B-mismatch", "offset-n", "offset-rank3", "offset-B-mismatch", "offset-nan",
        "offset-inf", "offset-complex", "offset-bool", "offset-str", "offset-ragged",
        "Ad-nan-batched", "Bd-complex-batched"])
def test_linear_system_form_errors_name_the_argument(kw, exc, who):
    with pytest.raises(exc, match=named(who)):
        trajloss.LinearSystem(**kw)


def test_batch_mismatch_names_both_arrays_and_sizes():
    with pytest.raises(ValueError) as info:
        trajloss.LinearSystem(np.ones((3, 2, 2)), np.ones((4, 2, 1)))
    msg = str(info.value)
    assert "Ad" in msg and "Bd" in msg and "3" in msg and "4" in msg


def test_masked_offset_is_refused():
    with pytest.raises(TypeError, match=r"^offset is a numpy\.ma\.MaskedArray"):
        trajloss.LinearSystem(_I, _B1, offset=np.ma.MaskedArray(np.zeros(2)))


@pytest.mark.parametrize("kw,exc,who", [
    (dict(Ad=_I, Bd=_B1), ValueError, "Ad"),  # no T axis
    (dict(Ad=np.ones((2, 2, 2, 2, 2)), Bd=np.ones((2, 2, 1))), ValueError, "Ad"),
    (dict(Ad=np.ones((0, 2, 2)), Bd=np.ones((0, 2, 1))), ValueError, "Ad"),
    (dict(Ad=np.ones((5, 2, 2)), Bd=_B1), ValueError, "Bd"),
    (dict(Ad=np.ones((5, 2, 2)), Bd=np.ones((4, 2, 1))), ValueError, "Bd"),
    (dict(Ad=np.ones((3, 5, 2, 2)), Bd=np.ones((4, 5, 2, 1))), ValueError, "Bd"),
    (dict(Ad=np.ones((5, 2, 2)), Bd=np.ones((5, 2, 1)), offset=np.ones(2)), ValueError, "offset"),
    (dict(Ad=np.ones((5, 2, 2)), Bd=np.ones((5, 2, 1)), offset=np.ones((4, 2))), ValueError,
     "offset"),
    (dict(Ad=np.ones((5, 2, 2)), Bd=np.ones((5, 2, 1)), offset=np.full((5, 2), np.nan)),
     ValueError, "offset"),
    (dict(Ad=np.ones((5, 2, 2)), Bd=np.ones((5, 2, 1), np.complex64)), TypeError, "Bd"),
], ids=["no-T", "Ad-rank5", "T0", "Bd-no-T", "T-mismatch", "B-mismatch", "offset-no-T",
        "offset-T-mismatch", "offset-nan", "Bd-complex"])
def test_time_varying_errors_name_the_argument(kw, exc, who):
    with pytest.raises(exc, match=named(who)):
        trajloss.TimeVaryingSystem(**kw)


@pytest.mark.parametrize("dt", [0.0, -1.0, np.nan, "0.1", [0.1], np.array([0.1])])
def test_time_varying_dt_is_one_number(dt):
    with pytest.raises((TypeError, ValueError), match=named("dt")):
        trajloss.TimeVaryingSystem(np.ones((3, 2, 2)), np.ones((3, 2, 1)), dt=dt)


def test_copies_and_pickles_stay_sealed(rng):
    systems = [trajloss.LinearSystem(rng.standard_normal((3, 2, 2)), rng.standard_normal((2, 1)),
                                     dt=0.5, offset=rng.standard_normal(2)),
               trajloss.TimeVaryingSystem(rng.standard_normal((4, 2, 2)),
                                          rng.standard_normal((3, 4, 2, 1))),
               trajloss.LinearSystem.from_continuous(rng.standard_normal((3, 2, 2)),
                                                     rng.standard_normal((2, 1)), [0.1, 0.2, 0.3]),
               trajloss.DoubleIntegrator(0.25)]
    for s in systems:
        for t in (copy.deepcopy(s), copy.copy(s), pickle.loads(pickle.dumps(s))):
            assert type(t) is type(s) and repr(t) == repr(s)
            for name in ("Ad", "Bd", "offset", "A", "B", "dt"):
                a, b = getattr(s, name), getattr(t, name)
                if isinstance(a, np.ndarray):
                    assert_sealed(b, a.shape)
                    np.testing.assert_array_equal(a, b)
                else:
                    assert a == b
            assert_core_tuple(t, s._core[3])


# --------------------------------------------------------------------------
# from_continuous with one model per sample
# --------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("batched", ["A", "B", "dt", "A+B", "all"])
def test_from_continuous_batched_matches_each_sample(rng, method, batched):
    """Sample b of a batched model is exactly the shared model (A[b], B[b],
    dt[b]), and that one matches the independent reference of its method."""
    Bsz, n, m = 3, 3, 2
    A = rng.standard_normal((Bsz, n, n)) if "A" in batched or batched == "all" else \
        rng.standard_normal((n, n))
    Bm = rng.standard_normal((Bsz, n, m)) if "B" in batched.replace("dt", "") or \
        batched == "all" else rng.standard_normal((n, m))
    dt = rng.uniform(0.05, 0.3, Bsz) if batched in ("dt", "all") else 0.2
    s = trajloss.LinearSystem.from_continuous(A, Bm, dt, method=method)
    assert s.batch == Bsz and s.steps is None and s.method == method
    assert_sealed(s.Ad, (Bsz, n, n))
    assert_sealed(s.Bd, (Bsz, n, m))
    assert_sealed(s.A, np.shape(A))
    assert_sealed(s.B, np.shape(Bm))
    np.testing.assert_array_equal(s.A, A)
    np.testing.assert_array_equal(s.B, Bm)
    if isinstance(dt, float):
        assert isinstance(s.dt, float) and s.dt == dt
    else:
        assert_sealed(s.dt, (Bsz,))
        np.testing.assert_array_equal(s.dt, dt)
    ref_fn = {"zoh": ref_zoh_taylor, "euler": ref_euler, "rk4": ref_rk4}[method]
    for b in range(Bsz):
        Ab = A[b] if A.ndim == 3 else A
        Bb = Bm[b] if Bm.ndim == 3 else Bm
        db = dt if isinstance(dt, float) else float(dt[b])
        one = trajloss.LinearSystem.from_continuous(Ab, Bb, db, method=method)
        np.testing.assert_array_equal(s.Ad[b], one.Ad)
        np.testing.assert_array_equal(s.Bd[b], one.Bd)
        Ad_ref, Bd_ref = ref_fn(Ab, Bb, db)
        np.testing.assert_allclose(s.Ad[b], Ad_ref, rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(s.Bd[b], Bd_ref, rtol=1e-13, atol=1e-14)


def test_from_continuous_dt_vector_of_double_integrators():
    dts = np.array([0.1, 0.25, 1 / 3, 1.0])
    s = trajloss.LinearSystem.from_continuous([[0, 1], [0, 0]], [[0], [1]], dts)
    for b, dt in enumerate(dts):
        Ad_ref, Bd_ref = di_exact(dt)
        np.testing.assert_allclose(s.Ad[b], Ad_ref, rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(s.Bd[b], Bd_ref, rtol=1e-14, atol=0)
    assert "batch=4" in repr(s) and "dt=" in repr(s)
    # a list is a (B,) dt too, and a 0-d array one number
    s2 = trajloss.LinearSystem.from_continuous([[0, 1], [0, 0]], [[0], [1]], list(dts))
    np.testing.assert_array_equal(s2.Ad, s.Ad)
    s0 = trajloss.LinearSystem.from_continuous([[0, 1], [0, 0]], [[0], [1]], np.array(0.25))
    assert s0.batch is None and isinstance(s0.dt, float) and s0.dt == 0.25
    np.testing.assert_allclose(s0.Bd, di_exact(0.25)[1], rtol=1e-14, atol=0)


@pytest.mark.parametrize("A,B,dt,exc,who", [
    (np.zeros((3, 2, 2)), np.zeros((4, 2, 1)), 0.1, ValueError, "B"),
    (np.zeros((3, 2, 2)), np.zeros((2, 1)), [0.1, 0.2], ValueError, "dt"),
    (np.zeros((2, 2)), np.zeros((2, 1)), [[0.1]], ValueError, "dt"),
    (np.zeros((2, 2)), np.zeros((2, 1)), [], ValueError, "dt"),
    (np.zeros((2, 2)), np.zeros((2, 1)), [0.1, 0.0], ValueError, "dt"),
    (np.zeros((2, 2)), np.zeros((2, 1)), [0.1, -np.inf], ValueError, "dt"),
    (np.zeros((2, 2)), np.zeros((2, 1)), np.array([0.1, np.nan]), ValueError, "dt"),
    (np.zeros((2, 2)), np.zeros((2, 1)), np.array([1j]), TypeError, "dt"),
    (np.zeros((2, 2)), np.zeros((2, 1)), [True], TypeError, "dt"),
    (np.zeros((0, 2, 2)), np.zeros((2, 1)), 0.1, ValueError, "A"),
    (np.full((2, 2, 2), np.nan), np.zeros((2, 1)), 0.1, ValueError, "A"),
    (np.zeros((2, 2, 2, 2)), np.zeros((2, 1)), 0.1, ValueError, "A"),
], ids=["A-B-batch", "A-dt-batch", "dt-2d", "dt-empty", "dt-zero", "dt-inf", "dt-nan",
        "dt-complex", "dt-bool", "A-B0", "A-nan", "A-rank4"])
def test_from_continuous_batched_errors_name_the_argument(A, B, dt, exc, who):
    with pytest.raises(exc, match=named(who)):
        trajloss.LinearSystem.from_continuous(A, B, dt)


def test_from_continuous_overflow_names_the_sample():
    A = np.stack([np.eye(2) * 0.1, np.eye(2) * 1e3])
    with pytest.warns(RuntimeWarning, match="overflow"):
        with pytest.raises(ValueError, match=r"Ad.*sample 1"):
            trajloss.LinearSystem.from_continuous(A, np.ones((2, 1)), 1.0)


@pytest.mark.parametrize("dt", [[0.1, 0.2], np.array([0.1])])
def test_double_integrator_dt_is_one_number(dt):
    with pytest.raises(TypeError, match=named("dt")):
        trajloss.DoubleIntegrator(dt)


# --------------------------------------------------------------------------
# The system meets the data: B and T must match (ValueError naming system)
# --------------------------------------------------------------------------


def _calls(s, B, T, n=2, m=1):
    rng = np.random.default_rng(0)
    u, x0 = rng.standard_normal((B, T, m)), rng.standard_normal((B, n))
    rs, ru = rng.standard_normal((B, T + 1, n)), rng.standard_normal((B, T, m))
    return {
        "rollout": lambda: trajloss.rollout(s, x0, u),
        "rollout_vjp": lambda: trajloss.rollout_vjp(s, x0, u, rs),
        "trajectory_loss": lambda: trajloss.trajectory_loss(s, u, x0, rs),
        "terminal_loss": lambda: trajloss.terminal_loss(s, u, x0, x0),
        "combined_loss": lambda: trajloss.combined_loss(s, u, x0, ru, rs, weight=0.5),
        "final_state_error": lambda: trajloss.final_state_error(s, u, x0, x0),
        "success_rate": lambda: trajloss.success_rate(s, u, x0, x0, 0.1),
    }


@pytest.mark.parametrize("fname", list(_calls(trajloss.DoubleIntegrator(), 1, 1)))
def test_per_sample_batch_mismatch_names_system(fname):
    s = trajloss.LinearSystem(np.tile(np.eye(2), (3, 1, 1)), np.ones((2, 1)))
    with pytest.raises(ValueError, match=r"\bsystem\b.*\b3\b.*\b5\b"):
        _calls(s, 5, 4)[fname]()


@pytest.mark.parametrize("fname", list(_calls(trajloss.DoubleIntegrator(), 1, 1)))
def test_time_varying_steps_mismatch_names_system(fname):
    s = trajloss.TimeVaryingSystem(np.tile(np.eye(2), (6, 1, 1)), np.ones((6, 2, 1)))
    with pytest.raises(ValueError, match=r"\bsystem\b.*\b6\b.*\b4\b"):
        _calls(s, 3, 4)[fname]()


def test_per_sample_system_of_one_serves_unbatched_data(rng):
    Ad, Bd = rng.standard_normal((1, 2, 2)) * 0.5, rng.standard_normal((1, 2, 1))
    c = rng.standard_normal((1, 2))
    u, x0 = rng.standard_normal((4, 1)), rng.standard_normal(2)
    X = trajloss.rollout(trajloss.LinearSystem(Ad, Bd, offset=c), x0, u)
    x, want = x0, [x0]
    for k in range(4):
        x = Ad[0] @ x + Bd[0] @ u[k] + c[0]
        want.append(x)
    np.testing.assert_allclose(X, np.array(want), rtol=1e-14, atol=1e-14)
    s3 = trajloss.LinearSystem(np.tile(Ad, (3, 1, 1)), Bd[0])
    with pytest.raises(ValueError, match=r"\bsystem\b.*\b3\b.*unbatched"):
        trajloss.rollout(s3, x0, u)


# --------------------------------------------------------------------------
# The extension's side of the contract (trajloss._core)
# --------------------------------------------------------------------------


def test_core_checks_a_hand_made_system_tuple(rng):
    """Tuples that are not a trajloss system's are validated on every call."""
    u, x0 = rng.standard_normal((2, 3, 1)), rng.standard_normal((2, 2))
    good = trajloss.DoubleIntegrator()
    want = trajloss.rollout(good, x0, u)
    # any real arrays, any layout: converted
    for Ad, Bd in ((np.asfortranarray(good.Ad), np.repeat(good.Bd, 2, axis=1)[:, ::2]),
                   (good.Ad.tolist(), good.Bd.tolist())):
        np.testing.assert_array_equal(_core.rollout((Ad, Bd, None, False), x0, u), want)
    Ad_nan = good.Ad.copy()
    Ad_nan[0, 1] = np.nan
    bad = [
        ((Ad_nan, good.Bd, None, False), ValueError, r"system: Ad contains NaN"),
        ((good.Ad, good.Bd, np.array([np.inf, 0.0]), False), ValueError, r"system: offset"),
        ((good.Ad, np.ones((3, 1)), None, False), ValueError, r"system: Bd"),
        ((good.Ad, good.Bd, None, True), ValueError, r"system: Ad"),
        ((good.Ad, good.Bd, np.ones((2, 2, 2)), False), ValueError, r"system: offset"),
        ((good.Ad, good.Bd.astype(complex), None, False), TypeError, r"system: Bd"),
        ((good.Ad, good.Bd, None), TypeError, r"^system must be"),
        ([good.Ad, good.Bd, None, False], TypeError, r"^system must be"),
        (good, TypeError, r"^system must be"),
    ]
    for system, exc, pattern in bad:
        with pytest.raises(exc, match=pattern):
            _core.rollout(system, x0, u)


def test_core_writeable_system_arrays_are_rechecked(rng):
    """A tuple of writeable arrays may change between calls: checked each time."""
    Ad, Bd = np.eye(2), np.ones((2, 1))
    system = (Ad, Bd, None, False)
    u, x0 = rng.standard_normal((2, 3, 1)), rng.standard_normal((2, 2))
    _core.rollout(system, x0, u)
    Ad[1, 1] = np.inf
    with pytest.raises(ValueError, match="system: Ad contains NaN or inf"):
        _core.rollout(system, x0, u)
    # read-only arrays in a tuple of another type: checked too
    ro = Ad.copy()
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="system: Ad contains NaN or inf"):
        _core.rollout((ro, Bd, None, False), x0, u)
    # a system's own array made writeable again (private, deliberate): checked again
    s = trajloss.LinearSystem(np.eye(2), Bd, offset=[0.0, 1.0])
    s._core[2].setflags(write=True)
    s._core[2][0] = np.nan
    with pytest.raises(ValueError, match="system: offset contains NaN or inf"):
        trajloss.rollout(s, x0, u)


def test_core_entry_points_parse_keywords(rng):
    s = trajloss.DoubleIntegrator()
    u, x0 = rng.standard_normal((3, 4, 1)), rng.standard_normal((3, 2))
    ru, rs = rng.standard_normal((3, 4, 1)), rng.standard_normal((3, 5, 2))
    # defaults only: the same numbers as the public functions
    v, g = _core.control_loss(u, ru)
    r = trajloss.control_loss(u, ru)
    assert v == r.value
    np.testing.assert_array_equal(g, r.grad)
    assert _core.control_loss(pred=u, target=ru, want_grad=False) == r.value
    t = _core.rollout_loss(s._core, u, x0, None, rs, terms=_core.TERM_TRAJECTORY,
                           trajectory_weight=1.0)
    r = trajloss.trajectory_loss(s, u, x0, rs)
    assert t[0] == r.value and t[2] == r.value
    np.testing.assert_array_equal(t[4], r.grad)
    # value by a NumPy loop, and the reference kernel agrees to rounding
    X = ref_rollout_np(s.Ad, s.Bd, x0, u)
    np.testing.assert_allclose(t[0], np.mean((X[:, 1:] - rs[:, 1:]) ** 2), rtol=1e-13)
    tr = _core.rollout_loss(s._core, u, x0, None, rs, terms=_core.TERM_TRAJECTORY,
                            trajectory_weight=1.0, kernel="reference")
    np.testing.assert_allclose(tr[0], t[0], rtol=1e-14)
    np.testing.assert_allclose(tr[4], t[4], rtol=1e-13, atol=1e-16)
    c = _core.combined_loss(s._core, u, x0, ru, rs, weight=0.5)
    rc = trajloss.combined_loss(s, u, x0, ru, rs, weight=0.5)
    assert type(c) is trajloss.LossResult and c.value == rc.value
    assert c.components == rc.components
    bad = [
        (lambda: _core.rollout(s._core, x0, u, True), TypeError, "positional"),
        (lambda: _core.rollout(s._core, x0, u, check_finit=True), TypeError, "check_finit"),
        (lambda: _core.rollout(s._core, x0, controls=u, x0=x0), TypeError, "multiple"),
        (lambda: _core.rollout(s._core, x0), TypeError, "controls"),
        (lambda: _core.rollout_loss(s._core, u, x0, None, rs), TypeError, "terms"),
        (lambda: _core.rollout_loss(s._core, u, x0, None, None, terms=_core.TERM_TRAJECTORY),
         ValueError, "missing its reference"),
        (lambda: _core.control_loss(u, ru, kernel="fast"), ValueError, "kernel"),
        (lambda: _core.control_loss(u, ru, kernel=1), ValueError, "kernel"),
        (lambda: _core.combined_loss(s._core, u, x0, ru, rs, weight="1"), TypeError, "weight"),
        (lambda: _core.combined_loss(s._core, u, x0, ru, rs), TypeError, "weight"),
        (lambda: _core.combined_loss(s._core, u, x0, None, rs, weight=1.0), TypeError,
         "ref_controls"),
    ]
    for call, exc, word in bad:
        with pytest.raises(exc, match=word):
            call()


def ref_rollout_np(Ad, Bd, x0, u):
    X = [x0]
    for k in range(u.shape[1]):
        X.append(X[-1] @ Ad.T + u[:, k] @ Bd.T)
    return np.stack(X, axis=1)
