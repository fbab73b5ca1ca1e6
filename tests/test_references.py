"""Minimum-energy references (min_energy, min_energy_law) against independent
references: pseudo-inverse / null-space constructions, the double
integrator's closed form u(t) = a + b t, Simpson-quadrature Gramians and an
RK4 integration of the continuous closed loop (all in tests/reference_helpers.py).
"""

import numpy as np
import pytest
import scipy.linalg

import trajloss
from conftest import random_discrete
from reference_helpers import (
    controllability_matrix,
    di_law_coefficients,
    di_matrices,
    di_state,
    gramian_simpson,
    interval_averages,
    law_lambda,
    law_u,
    law_x_closed,
    min_norm_controls,
    random_continuous,
    rk4_closed_loop,
    rollout,
    zoh,
)

DT = 1.0 / 3.0
T15 = 15
H15 = T15 * DT
# small and larger sizes (batches of eight samples side by side and the
# last few one at a time, in the same kernel whatever n and m)
SHAPES = [(1, 1), (2, 1), (2, 2), (3, 1), (3, 2), (3, 3), (4, 1), (4, 2), (5, 3), (6, 2), (6, 3),
          (8, 3)]
CONT_SHAPES = [(2, 1), (3, 2), (4, 1), (6, 2), (8, 3)]


def seed_box(rng, size):
    return rng.uniform([-10.0, -5.0], [10.0, 5.0], size=(size, 2))


def state_scale(*arrays):
    return max([1.0] + [float(np.max(np.abs(a))) for a in arrays])


def energy_of(U, dt):
    return np.sum(np.asarray(U) ** 2, axis=(-2, -1)) * dt


def well_conditioned_continuous(rng, n, m, dt, T, limit=1e6):
    """A random continuous pair whose discrete and continuous Gramians over
    T steps are reasonably conditioned (computed here, independently)."""
    for _ in range(50):
        A, B = random_continuous(rng, n, m, norm=rng.uniform(0.3, 1.2))
        Ad, Bd = zoh(A, B, dt)
        C = controllability_matrix(Ad, Bd, T)
        if np.linalg.cond(C @ C.T) > limit:
            continue
        if np.linalg.cond(gramian_simpson(A, B, T * dt, 200)) > limit:
            continue
        return A, B, Ad, Bd
    raise AssertionError("could not draw a well-conditioned system")


def steps_for(n, m):
    return max(12, 2 * ((n + m - 1) // m) + 2)


# --------------------------------------------------------------------------
# "exact"
# --------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["origin", "random"])
def test_exact_double_integrator_reaches_target(rng, target):
    system = trajloss.DoubleIntegrator(dt=DT)
    x0 = seed_box(rng, 12)
    xf = np.zeros(2) if target == "origin" else rng.uniform(-3, 3, size=(12, 2))
    ref = trajloss.min_energy(system, x0, xf, T15)
    Ad, Bd = di_matrices(DT)
    assert ref.method == "exact"
    assert ref.controls.shape == (12, T15, 1) and ref.states.shape == (12, T15 + 1, 2)
    assert ref.controls.dtype == np.float64 and ref.states.dtype == np.float64
    X = rollout(Ad, Bd, x0, ref.controls)
    scale = state_scale(X, xf)
    assert np.max(np.abs(X[:, -1] - xf)) <= 1e-10 * scale
    np.testing.assert_allclose(ref.states, X, rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(ref.states[:, 0], x0, rtol=0, atol=0)
    # the minimum-norm solution of C vec(U) = xf - Ad^T x0, by SVD
    U_star = min_norm_controls(Ad, Bd, x0, xf, T15)
    np.testing.assert_allclose(ref.controls, U_star, rtol=0,
                               atol=1e-10 * state_scale(U_star))
    np.testing.assert_allclose(ref.energy, energy_of(U_star, DT), rtol=1e-10)
    err = np.linalg.norm(X[:, -1] - xf, axis=1)
    assert ref.final_error.shape == (12,)
    np.testing.assert_allclose(ref.final_error, err, rtol=0, atol=1e-11 * scale)
    assert np.all(ref.final_error <= 1e-10 * scale)


@pytest.mark.parametrize("n,m", SHAPES)
def test_exact_random_systems_reach_target(rng, n, m):
    dt = 0.2
    T = steps_for(n, m)
    A, B, Ad, Bd = well_conditioned_continuous(rng, n, m, dt, T, limit=1e8)
    system = trajloss.LinearSystem.from_continuous(A, B, dt)
    x0 = rng.standard_normal((5, n)) * 3
    xf = rng.standard_normal(n)  # one target broadcast over the batch
    ref = trajloss.min_energy(system, x0, xf, T)
    assert ref.controls.shape == (5, T, m) and ref.states.shape == (5, T + 1, n)
    X = rollout(Ad, Bd, x0, ref.controls)
    scale = state_scale(X, x0, xf)
    assert np.max(np.abs(X[:, -1] - xf)) <= 1e-10 * scale
    np.testing.assert_allclose(ref.states, X, rtol=0, atol=1e-11 * scale)
    U_star = min_norm_controls(Ad, Bd, x0, xf, T)
    np.testing.assert_allclose(ref.controls, U_star, rtol=0, atol=1e-8 * state_scale(U_star))
    np.testing.assert_allclose(ref.energy, energy_of(ref.controls, dt), rtol=1e-12)
    np.testing.assert_allclose(ref.energy, energy_of(U_star, dt), rtol=1e-8)
    np.testing.assert_allclose(ref.final_error, np.linalg.norm(X[:, -1] - xf, axis=1),
                               rtol=0, atol=1e-10 * scale)


@pytest.mark.parametrize("n,m", [(2, 1), (3, 2), (4, 1), (6, 2), (8, 3)])
def test_exact_is_minimum_energy_against_null_space_perturbations(rng, n, m):
    dt = 0.25
    T = steps_for(n, m)
    A, B, Ad, Bd = well_conditioned_continuous(rng, n, m, dt, T, limit=1e8)
    system = trajloss.LinearSystem.from_continuous(A, B, dt)
    x0 = rng.standard_normal(n) * 2
    xf = rng.standard_normal(n)
    ref = trajloss.min_energy(system, x0, xf, T)
    U = ref.controls
    assert U.shape == (T, m)
    C = controllability_matrix(Ad, Bd, T)
    N = scipy.linalg.null_space(C)
    assert N.shape == (T * m, T * m - n)
    # optimality: the minimum-norm solution is orthogonal to the null space
    u_vec = U.reshape(T * m)
    ortho = np.linalg.norm(N.T @ u_vec)
    assert ortho <= 1e-9 * np.linalg.norm(u_vec)
    base_energy = energy_of(U, dt)
    for size in (1e-3, 0.1, 1.0, 10.0):
        z = rng.standard_normal(N.shape[1])
        z *= size / np.linalg.norm(z)
        U2 = U + (N @ z).reshape(T, m)
        X2 = rollout(Ad, Bd, x0, U2)
        scale = state_scale(X2, xf)
        assert np.max(np.abs(X2[-1] - xf)) <= 1e-9 * scale  # still an exact solution
        e2 = energy_of(U2, dt)
        assert e2 > base_energy
        # |U + Nz|^2 = |U|^2 + |z|^2 up to the (tiny) cross term 2 U.Nz
        np.testing.assert_allclose(e2 - base_energy, size ** 2 * dt, rtol=1e-9,
                                   atol=2 * dt * size * ortho + 1e-13 * base_energy)
    # another exact solution: only the last ceil(n/m) + 1 steps act (least squares there)
    k = -(-n // m) + 1
    Ck = C[:, -k * m:]
    rhs = xf - np.linalg.matrix_power(Ad, T) @ x0
    tail = np.linalg.lstsq(Ck, rhs, rcond=None)[0]
    U3 = np.zeros((T, m))
    U3[-k:] = tail.reshape(k, m)
    X3 = rollout(Ad, Bd, x0, U3)
    assert np.max(np.abs(X3[-1] - xf)) <= 1e-8 * state_scale(X3, xf)
    assert energy_of(U3, dt) > base_energy


def test_exact_double_integrator_null_space(rng):
    system = trajloss.DoubleIntegrator(dt=DT)
    Ad, Bd = di_matrices(DT)
    x0 = seed_box(rng, 1)[0]
    ref = trajloss.min_energy(system, x0, np.zeros(2), T15)
    N = scipy.linalg.null_space(controllability_matrix(Ad, Bd, T15))
    assert N.shape == (T15, T15 - 2)
    for _ in range(5):
        U2 = ref.controls + (N @ rng.standard_normal(N.shape[1])).reshape(T15, 1)
        X2 = rollout(Ad, Bd, x0, U2)
        assert np.max(np.abs(X2[-1])) <= 1e-10 * state_scale(X2)
        assert energy_of(U2, DT) > ref.energy


def test_exact_unbatched_and_broadcast_shapes(rng):
    system = trajloss.DoubleIntegrator(dt=DT)
    Ad, Bd = di_matrices(DT)
    x0 = seed_box(rng, 3)
    xf = np.array([1.0, -0.5])
    batch = trajloss.min_energy(system, x0, xf, 10)
    explicit = min_norm_controls(Ad, Bd, x0, np.tile(xf, (3, 1)), 10)
    np.testing.assert_allclose(batch.controls, explicit, rtol=0, atol=1e-10 * state_scale(explicit))
    one = trajloss.min_energy(system, x0[1], xf, 10)
    assert one.controls.shape == (10, 1) and one.states.shape == (11, 2)
    assert np.shape(one.final_error) == () and np.shape(one.energy) == ()
    np.testing.assert_allclose(one.controls, explicit[1], rtol=0, atol=1e-10 * state_scale(explicit))
    X = rollout(Ad, Bd, x0[1], one.controls)
    np.testing.assert_allclose(one.states, X, rtol=0, atol=1e-12 * state_scale(X))
    np.testing.assert_allclose(float(one.energy), energy_of(explicit[1], DT), rtol=1e-10)


def test_exact_discrete_system_without_dt(rng):
    Ad, Bd = random_discrete(rng, 3, 2)
    system = trajloss.LinearSystem(Ad, Bd)
    x0 = rng.standard_normal((4, 3))
    xf = rng.standard_normal((4, 3))
    T = 8
    ref = trajloss.min_energy(system, x0, xf, T)
    X = rollout(Ad, Bd, x0, ref.controls)
    scale = state_scale(X, xf)
    assert np.max(np.abs(X[:, -1] - xf)) <= 1e-10 * scale
    U_star = min_norm_controls(Ad, Bd, x0, xf, T)
    np.testing.assert_allclose(ref.controls, U_star, rtol=0, atol=1e-9 * state_scale(U_star))
    # no dt: energy is the plain sum of squares (dt = 1)
    np.testing.assert_allclose(ref.energy, np.sum(ref.controls ** 2, axis=(1, 2)), rtol=1e-12)


def test_exact_discrete_system_with_dt_uses_dt_in_energy(rng):
    Ad, Bd = random_discrete(rng, 2, 1)
    system = trajloss.LinearSystem(Ad, Bd, dt=0.05)
    x0 = rng.standard_normal((2, 2))
    ref = trajloss.min_energy(system, x0, np.zeros(2), 6)
    np.testing.assert_allclose(ref.energy, 0.05 * np.sum(ref.controls ** 2, axis=(1, 2)),
                               rtol=1e-12)


# --------------------------------------------------------------------------
# "average"
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dt,T", [(DT, 15), (0.5, 4), (0.1, 30), (1.0, 5)])
def test_average_double_integrator_closed_form(rng, dt, T):
    system = trajloss.DoubleIntegrator(dt=dt)
    H = T * dt
    x0 = seed_box(rng, 10)
    xf = np.vstack([np.zeros((5, 2)), rng.uniform(-2, 2, size=(5, 2))])
    ref = trajloss.min_energy(system, x0, xf, T, method="average")
    assert ref.method == "average"
    a, b = di_law_coefficients(x0, xf, H)
    # sanity of the closed form itself: the cubic reaches xf at H
    np.testing.assert_allclose(di_state(x0, a, b, H), xf, rtol=0, atol=1e-11 * state_scale(x0))
    k = np.arange(T)
    U_expected = (a[:, None] + b[:, None] * (k + 0.5) * dt)[:, :, None]
    scale_u = state_scale(U_expected)
    np.testing.assert_allclose(ref.controls, U_expected, rtol=0, atol=1e-12 * scale_u)
    Ad, Bd = di_matrices(dt)
    X = rollout(Ad, Bd, x0, U_expected)
    scale = state_scale(X, xf)
    np.testing.assert_allclose(ref.states, X, rtol=0, atol=1e-12 * scale)
    # end-point error of the discretised law: position b H dt^2 / 12, velocity 0
    end = X[:, -1] - xf
    np.testing.assert_allclose(end[:, 0], b * H * dt * dt / 12.0, rtol=0, atol=1e-11 * scale)
    np.testing.assert_allclose(end[:, 1], 0.0, rtol=0, atol=1e-11 * scale)
    np.testing.assert_allclose(ref.final_error, np.abs(b) * H * dt * dt / 12.0,
                               rtol=0, atol=1e-11 * scale)
    np.testing.assert_allclose(ref.energy, np.sum(U_expected[:, :, 0] ** 2, axis=1) * dt,
                               rtol=1e-12)


def test_average_seed000_error_magnitude(rng):
    """Seed 000: ~0.038 end-point error for 15 steps of 1/3 s from its box."""
    system = trajloss.DoubleIntegrator()
    x0 = seed_box(rng, 400)
    ref = trajloss.min_energy(system, x0, np.zeros(2), 15, method="average")
    a, b = di_law_coefficients(x0, np.zeros(2), H15)
    expected = np.abs(b) * H15 * DT ** 2 / 12
    np.testing.assert_allclose(ref.final_error, expected, rtol=1e-9, atol=1e-13)
    # the closed form's typical size is the seed's few hundredths
    assert 0.01 < float(np.mean(expected)) < 0.06


@pytest.mark.parametrize("n,m", CONT_SHAPES)
def test_average_random_systems_against_quadrature(rng, n, m):
    dt = 0.25
    T = 12
    H = T * dt
    A, B, Ad, Bd = well_conditioned_continuous(rng, n, m, dt, T)
    system = trajloss.LinearSystem.from_continuous(A, B, dt)
    x0 = rng.standard_normal((3, n))
    xf = rng.standard_normal((3, n))
    ref = trajloss.min_energy(system, x0, xf, T, method="average")
    lam = law_lambda(A, B, x0, xf, H)
    U_expected = interval_averages(A, B, lam, H, dt, T, sub=64)
    np.testing.assert_allclose(ref.controls, U_expected, rtol=0,
                               atol=1e-9 * state_scale(U_expected))
    X = rollout(Ad, Bd, x0, ref.controls)
    scale = state_scale(X, xf)
    np.testing.assert_allclose(ref.states, X, rtol=0, atol=1e-11 * scale)
    np.testing.assert_allclose(ref.final_error, np.linalg.norm(X[:, -1] - xf, axis=1),
                               rtol=0, atol=1e-11 * scale)
    np.testing.assert_allclose(ref.energy, energy_of(ref.controls, dt), rtol=1e-12)


# --------------------------------------------------------------------------
# "continuous"
# --------------------------------------------------------------------------


def test_continuous_double_integrator(rng):
    system = trajloss.DoubleIntegrator(dt=DT)
    x0 = seed_box(rng, 6)
    xf = rng.uniform(-1, 1, size=(6, 2))
    ref = trajloss.min_energy(system, x0, xf, T15, method="continuous")
    assert ref.method == "continuous"
    a, b = di_law_coefficients(x0, xf, H15)
    expected = np.stack([di_state(x0, a, b, k * DT) for k in range(T15 + 1)], axis=1)
    scale = state_scale(expected)
    np.testing.assert_allclose(ref.states, expected, rtol=0, atol=1e-12 * scale)
    # against an RK4 integration of the closed loop with the general law
    A = np.array([[0.0, 1.0], [0.0, 0.0]])
    B = np.array([[0.0], [1.0]])
    lam = law_lambda(A, B, x0, xf, H15)
    X = rk4_closed_loop(A, B, x0, lam, H15, np.arange(T15 + 1) * DT, DT / 200)
    np.testing.assert_allclose(ref.states, X, rtol=0, atol=1e-9 * scale)
    # controls are the interval averages, final_error is the ZOH rollout's
    k = np.arange(T15)
    U_expected = (a[:, None] + b[:, None] * (k + 0.5) * DT)[:, :, None]
    np.testing.assert_allclose(ref.controls, U_expected, rtol=0, atol=1e-12 * state_scale(U_expected))
    Ad, Bd = di_matrices(DT)
    Xz = rollout(Ad, Bd, x0, U_expected)
    np.testing.assert_allclose(ref.final_error, np.linalg.norm(Xz[:, -1] - xf, axis=1),
                               rtol=0, atol=1e-11 * scale)
    np.testing.assert_allclose(ref.energy, energy_of(U_expected, DT), rtol=1e-12)


@pytest.mark.parametrize("n,m", CONT_SHAPES)
def test_continuous_states_against_rk4(rng, n, m):
    dt = 0.25
    T = 12
    H = T * dt
    A, B, Ad, Bd = well_conditioned_continuous(rng, n, m, dt, T)
    system = trajloss.LinearSystem.from_continuous(A, B, dt)
    x0 = rng.standard_normal((3, n))
    xf = rng.standard_normal(n)
    ref = trajloss.min_energy(system, x0, xf, T, method="continuous")
    lam = law_lambda(A, B, x0, xf, H)
    X = rk4_closed_loop(A, B, x0, lam, H, np.arange(T + 1) * dt, dt / 200)
    scale = state_scale(X, xf)
    # the independent trajectory itself ends at xf (checks the reference)
    assert np.max(np.abs(X[:, -1] - xf)) <= 1e-9 * scale
    np.testing.assert_allclose(ref.states, X, rtol=0, atol=1e-9 * scale)
    np.testing.assert_allclose(ref.states[:, 0], x0, rtol=0, atol=1e-14 * scale)
    assert np.max(np.abs(ref.states[:, -1] - xf)) <= 1e-10 * scale
    U_expected = interval_averages(A, B, lam, H, dt, T, sub=64)
    np.testing.assert_allclose(ref.controls, U_expected, rtol=0,
                               atol=1e-9 * state_scale(U_expected))
    Xz = rollout(Ad, Bd, x0, ref.controls)
    np.testing.assert_allclose(ref.final_error, np.linalg.norm(Xz[:, -1] - xf, axis=1),
                               rtol=0, atol=1e-11 * state_scale(Xz, xf))
    np.testing.assert_allclose(ref.energy, energy_of(ref.controls, dt), rtol=1e-12)


# --------------------------------------------------------------------------
# min_energy_law
# --------------------------------------------------------------------------


def test_law_double_integrator_closed_form(rng):
    system = trajloss.DoubleIntegrator(dt=DT)
    x0 = seed_box(rng, 4)
    xf = rng.uniform(-1, 1, size=(4, 2))
    H = 3.7  # any horizon, not a multiple of dt
    law = trajloss.min_energy_law(system, x0, xf, H)
    t = np.concatenate([[0.0, H], rng.uniform(0, H, size=9)])
    u, x = law.evaluate(t)
    assert u.shape == (4, t.size, 1) and x.shape == (4, t.size, 2)
    a, b = di_law_coefficients(x0, xf, H)
    u_exp = a[:, None] + b[:, None] * t[None, :]
    x_exp = np.stack([di_state(x0, a, b, ti) for ti in t], axis=1)
    np.testing.assert_allclose(u[:, :, 0], u_exp, rtol=0, atol=1e-12 * state_scale(u_exp))
    np.testing.assert_allclose(x, x_exp, rtol=0, atol=1e-12 * state_scale(x_exp))
    np.testing.assert_allclose(law.controls(t), u, rtol=0, atol=0)
    np.testing.assert_allclose(law.states(t), x, rtol=0, atol=0)
    # scalar time drops the time axis
    u1, x1 = law.evaluate(1.25)
    assert u1.shape == (4, 1) and x1.shape == (4, 2)
    np.testing.assert_allclose(u1[:, 0], a + b * 1.25, rtol=0, atol=1e-12 * state_scale(u_exp))


@pytest.mark.parametrize("n,m", CONT_SHAPES)
def test_law_against_rk4_and_quadrature_gramian(rng, n, m):
    A, B = random_continuous(rng, n, m, norm=0.8)
    H = 2.9
    if np.linalg.cond(gramian_simpson(A, B, H, 200)) > 1e6:
        pytest.skip("drawn system too ill-conditioned for the quadrature reference")
    system = trajloss.LinearSystem.from_continuous(A, B, 0.1)
    x0 = rng.standard_normal((2, n))
    xf = rng.standard_normal((2, n))
    law = trajloss.min_energy_law(system, x0, xf, H)
    t = rng.uniform(0, H, size=6)  # arbitrary, unsorted
    t[0] = 0.0
    t[-1] = H
    u, x = law.evaluate(t)
    assert u.shape == (2, 6, m) and x.shape == (2, 6, n)
    lam = law_lambda(A, B, x0, xf, H)
    u_exp = np.stack([law_u(A, B, lam, H, ti) for ti in t], axis=1)
    np.testing.assert_allclose(u, u_exp, rtol=0, atol=1e-9 * state_scale(u_exp))
    order = np.argsort(t)
    X_rk4 = np.empty_like(x)
    X_rk4[:, order] = rk4_closed_loop(A, B, x0, lam, H, t[order], 0.005)
    scale = state_scale(X_rk4, xf)
    np.testing.assert_allclose(x, X_rk4, rtol=0, atol=1e-9 * scale)
    # closed form with the Simpson Gramian W_c(t) at each time
    X_cf = np.stack([law_x_closed(A, B, x0, lam, H, ti) for ti in t], axis=1)
    np.testing.assert_allclose(x, X_cf, rtol=0, atol=1e-9 * scale)
    np.testing.assert_allclose(x[:, 0], x0, rtol=0, atol=1e-13 * scale)
    np.testing.assert_allclose(x[:, -1], xf, rtol=0, atol=1e-10 * scale)


@pytest.mark.parametrize("n,m", [(2, 1), (3, 1), (4, 2), (6, 3)])
def test_law_recovers_quadrature_gramian(rng, n, m):
    """With x0 = 0 and xf = W_c(H) e_j (our Simpson Gramian), lambda = e_j, so
    x(t) = W_c(t) expm(A^T (H-t)) e_j: the law's states give W_c(t) column by column."""
    A, B = random_continuous(rng, n, m, norm=0.7)
    H = 2.0
    WH = gramian_simpson(A, B, H)
    if np.linalg.cond(WH) > 1e6:
        pytest.skip("drawn system too ill-conditioned for the quadrature reference")
    system = trajloss.LinearSystem.from_continuous(A, B, 0.5)
    law = trajloss.min_energy_law(system, np.zeros((n, n)), WH.T, H)  # row j: xf = W e_j
    for t in (0.0, 0.3, 1.1, 1.77, H):
        x = law.states(t)  # (n, n): row j = x_j(t)
        W_rec = x.T @ scipy.linalg.expm(-A.T * (H - t))
        W_ref = gramian_simpson(A, B, t)
        np.testing.assert_allclose(W_rec, W_ref, rtol=0, atol=1e-9 * state_scale(WH))
        # u_j(t) = B^T expm(A^T (H-t)) e_j
        u = law.controls(t)
        np.testing.assert_allclose(u.T, B.T @ scipy.linalg.expm(A.T * (H - t)), rtol=0,
                                   atol=1e-8 * max(1.0, np.abs(u).max()))


@pytest.mark.parametrize("n,m", [(2, 1), (3, 2), (5, 2)])
def test_law_energy_is_minimum_energy_value(rng, n, m):
    """int_0^H |u|^2 dt = (xf - e^{AH} x0)^T W_c(H)^{-1} (xf - e^{AH} x0)."""
    A, B = random_continuous(rng, n, m, norm=0.6)
    H = 2.5
    WH = gramian_simpson(A, B, H)
    if np.linalg.cond(WH) > 1e6:
        pytest.skip("drawn system too ill-conditioned for the quadrature reference")
    system = trajloss.LinearSystem.from_continuous(A, B, 0.25)
    x0 = rng.standard_normal((3, n))
    xf = rng.standard_normal((3, n))
    law = trajloss.min_energy_law(system, x0, xf, H)
    N = 2000
    t = np.linspace(0.0, H, N + 1)
    u = law.controls(t)
    w = np.ones(N + 1)
    w[1:-1:2] = 4
    w[2:-1:2] = 2
    quad = (H / N / 3) * np.einsum("t,btm->b", w, u ** 2)
    d = xf - x0 @ scipy.linalg.expm(A * H).T
    expected = np.einsum("bi,bi->b", d, np.linalg.solve(WH, d.T).T)
    np.testing.assert_allclose(quad, expected, rtol=1e-8)


def test_law_unbatched_shapes(rng):
    system = trajloss.DoubleIntegrator()
    law = trajloss.min_energy_law(system, np.array([1.0, 2.0]), np.zeros(2), 5.0)
    u, x = law.evaluate(np.array([0.0, 2.5, 5.0]))
    assert u.shape == (3, 1) and x.shape == (3, 2)
    u1, x1 = law.evaluate(2.5)
    assert u1.shape == (1,) and x1.shape == (2,)
    a, b = di_law_coefficients(np.array([1.0, 2.0]), np.zeros(2), 5.0)
    np.testing.assert_allclose(u[:, 0], a[0] + b[0] * np.array([0.0, 2.5, 5.0]), rtol=0, atol=1e-12)


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


UNCONTROLLABLE = [
    (np.zeros((2, 2)), np.array([[1.0], [0.0]])),
    (np.array([[-1.0, 0.0], [0.0, -2.0]]), np.array([[1.0], [0.0]])),
    (np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, -1.0]]), np.array([[0.0], [1.0], [0.0]])),
]


@pytest.mark.parametrize("pair", range(len(UNCONTROLLABLE)))
@pytest.mark.parametrize("method", ["exact", "average", "continuous"])
def test_uncontrollable_continuous_pair_raises_linalg_error(pair, method):
    A, B = UNCONTROLLABLE[pair]
    system = trajloss.LinearSystem.from_continuous(A, B, 0.2)
    n = A.shape[0]
    # "exact" reports the rank test on C (one state has no input: rank n - 1),
    # the others the continuous Gramian's condition number
    match = rf"numerical rank {n - 1} < n = {n}" if method == "exact" else "condition number"
    with pytest.raises(np.linalg.LinAlgError, match=match):
        trajloss.min_energy(system, np.ones(n), np.zeros(n), 10, method=method)


@pytest.mark.parametrize("pair", range(len(UNCONTROLLABLE)))
def test_uncontrollable_law_raises_linalg_error(pair):
    A, B = UNCONTROLLABLE[pair]
    system = trajloss.LinearSystem.from_continuous(A, B, 0.2)
    n = A.shape[0]
    with pytest.raises(np.linalg.LinAlgError, match="condition number"):
        trajloss.min_energy_law(system, np.ones(n), np.zeros(n), 2.0)


def test_uncontrollable_discrete_pair_raises_linalg_error():
    system = trajloss.LinearSystem(np.eye(2), np.array([[1.0], [0.0]]))
    with pytest.raises(np.linalg.LinAlgError, match=r"numerical rank 1 < n = 2.*condition number inf"):
        trajloss.min_energy(system, np.ones(2), np.zeros(2), 6)
    system = trajloss.LinearSystem(np.array([[0.5, 0.0], [0.0, 0.9]]), np.array([[1.0], [0.0]]), dt=0.1)
    with pytest.raises(np.linalg.LinAlgError, match=r"numerical rank 1 < n = 2"):
        trajloss.min_energy(system, np.ones((3, 2)), np.zeros(2), 6)


def test_too_few_steps_is_singular():
    # one step of a 2-state, 1-input system cannot reach an arbitrary target
    with pytest.raises(np.linalg.LinAlgError, match=r"numerical rank 1 < n = 2.*fewer controls"):
        trajloss.min_energy(trajloss.DoubleIntegrator(), np.ones(2), np.zeros(2), 1)


@pytest.mark.parametrize("steps", [0, -1])
@pytest.mark.parametrize("method", ["exact", "average", "continuous"])
def test_bad_steps(steps, method):
    with pytest.raises(ValueError):
        trajloss.min_energy(trajloss.DoubleIntegrator(), np.ones(2), np.zeros(2), steps, method)


@pytest.mark.parametrize("steps", [2.0, "5", None])
def test_non_integer_steps(steps):
    with pytest.raises((TypeError, ValueError)):
        trajloss.min_energy(trajloss.DoubleIntegrator(), np.ones(2), np.zeros(2), steps)


@pytest.mark.parametrize("method", ["exact", "average", "continuous"])
@pytest.mark.parametrize("where", ["x0", "xf"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_boundary_states(method, where, bad):
    x0 = np.array([[1.0, 2.0], [3.0, 4.0]])
    xf = np.zeros(2)
    if where == "x0":
        x0[1, 0] = bad
    else:
        xf[1] = bad
    with pytest.raises(ValueError):
        trajloss.min_energy(trajloss.DoubleIntegrator(), x0, xf, 5, method)


@pytest.mark.parametrize("where", ["x0", "xf"])
def test_law_non_finite_boundary_states(where):
    x0 = np.array([1.0, 2.0])
    xf = np.zeros(2)
    (x0 if where == "x0" else xf)[0] = np.nan
    with pytest.raises(ValueError):
        trajloss.min_energy_law(trajloss.DoubleIntegrator(), x0, xf, 5.0)


@pytest.mark.parametrize("method", ["unknown", "Exact", "", None])
def test_unknown_method(method):
    with pytest.raises(ValueError):
        trajloss.min_energy(trajloss.DoubleIntegrator(), np.ones(2), np.zeros(2), 5, method)


@pytest.mark.parametrize("method", ["average", "continuous"])
def test_continuous_methods_need_continuous_model(rng, method):
    Ad, Bd = random_discrete(rng, 2, 1)
    for system in (trajloss.LinearSystem(Ad, Bd), trajloss.LinearSystem(Ad, Bd, dt=0.1)):
        with pytest.raises(ValueError):
            trajloss.min_energy(system, np.ones(2), np.zeros(2), 5, method=method)


def test_law_needs_continuous_model(rng):
    Ad, Bd = random_discrete(rng, 2, 1)
    with pytest.raises(ValueError):
        trajloss.min_energy_law(trajloss.LinearSystem(Ad, Bd, dt=0.1), np.ones(2), np.zeros(2), 1.0)


def test_mismatched_target_shape():
    system = trajloss.DoubleIntegrator()
    with pytest.raises(ValueError):
        trajloss.min_energy(system, np.ones((2, 2)), np.zeros((3, 2)), 5)
    with pytest.raises(ValueError):
        trajloss.min_energy(system, np.ones(2), np.zeros(3), 5)


@pytest.mark.parametrize("t", [-1e-3, 5.0 + 1e-6, 7.0, [0.0, 1.0, 5.5], [-0.1, 1.0], np.nan])
def test_law_times_outside_horizon(t):
    law = trajloss.min_energy_law(trajloss.DoubleIntegrator(), np.ones(2), np.zeros(2), 5.0)
    with pytest.raises(ValueError):
        law.evaluate(t)
    with pytest.raises(ValueError):
        law.controls(t)
    with pytest.raises(ValueError):
        law.states(t)


def test_law_time_error_message_is_formatted():
    """The out-of-range message should name the horizon and the bad time,
    not show raw printf placeholders."""
    law = trajloss.min_energy_law(trajloss.DoubleIntegrator(), np.ones(2), np.zeros(2), 5.0)
    with pytest.raises(ValueError) as info:
        law.evaluate(np.array([1.0, 7.5]))
    msg = str(info.value)
    assert "%g" not in msg and "%ld" not in msg, msg
    assert "7.5" in msg, msg


@pytest.mark.parametrize("horizon", [0.0, -1.0, np.inf, np.nan])
def test_law_bad_horizon(horizon):
    with pytest.raises(ValueError):
        trajloss.min_energy_law(trajloss.DoubleIntegrator(), np.ones(2), np.zeros(2), horizon)


# --------------------------------------------------------------------------
# Every form of system: per-sample, time-varying, offsets
# --------------------------------------------------------------------------


def form_arrays(rng, B, T, n, m, per, tv, offset):
    """Random (Ad, Bd, offset) of one form: per = (Ad, Bd, offset) per sample,
    tv: time-varying (each array an axis of T). Returns the arrays as the
    system takes them and the same expanded to (B, T, ...) for the loops here."""
    def draw(shape, kind, i):
        lead = ((B,) if per[i] else ()) + ((T,) if tv else ())
        if kind == "A":
            a = rng.standard_normal(lead + shape)
            a *= 0.9 / np.linalg.norm(a, 2, axis=(-2, -1), keepdims=True)
            return a
        return rng.standard_normal(lead + shape)

    Ad, Bd = draw((n, n), "A", 0), draw((n, m), "B", 1)
    c = draw((n,), "c", 2) if offset else None

    def expand(a, core):
        if a is None:
            return np.zeros((B, T) + core)
        if not tv:
            a = a[..., None, :, :] if len(core) == 2 else a[..., None, :]
        return np.broadcast_to(a, (B, T) + core)

    return (Ad, Bd, c), (expand(Ad, (n, n)), expand(Bd, (n, m)), expand(c, (n,)))


def ltv_min_norm(A, Bm, c, x0, xf):
    """Per sample, the minimum-norm U of C U = xf - Phi(T,0) x0 - sum_k Phi(T,k+1) c_k
    with C = [Phi(T,1) B_0, ..., B_{T-1}], Phi(T,k) = A_{T-1}...A_k multiplied
    out here, solved by numpy.linalg.lstsq; (B, T, m) and C's condition numbers."""
    Bn, T, n, m = Bm.shape
    U = np.empty((Bn, T, m))
    conds = []
    for b in range(Bn):
        Phi = [None] * (T + 1)
        Phi[T] = np.eye(n)
        for k in range(T - 1, -1, -1):
            Phi[k] = Phi[k + 1] @ A[b, k]
        C = np.hstack([Phi[k + 1] @ Bm[b, k] for k in range(T)])
        d = xf[b] - Phi[0] @ x0[b] - sum(Phi[k + 1] @ c[b, k] for k in range(T))
        U[b] = np.linalg.lstsq(C, d, rcond=None)[0].reshape(T, m)
        conds.append(np.linalg.cond(C))
    return U, max(conds)


def ltv_rollout(A, Bm, c, x0, U):
    """x_{k+1} = A_k x_k + B_k u_k + c_k, a plain loop over samples and steps."""
    Bn, T, n, _ = Bm.shape
    X = np.empty((Bn, T + 1, n))
    for b in range(Bn):
        X[b, 0] = x0[b]
        for k in range(T):
            X[b, k + 1] = A[b, k] @ X[b, k] + Bm[b, k] @ U[b, k] + c[b, k]
    return X


FORMS = [  # (Ad, Bd, offset per sample), time-varying, offset
    ((False, False, False), False, True),
    ((True, False, False), False, False),
    ((False, True, False), False, False),
    ((True, True, True), False, True),
    ((False, False, True), False, True),
    ((False, False, False), True, False),
    ((False, False, False), True, True),
    ((True, False, False), True, True),
    ((True, True, True), True, True),
]


@pytest.mark.parametrize("n,m", [(1, 1), (2, 1), (3, 2), (4, 1), (5, 3)])
@pytest.mark.parametrize("form", range(len(FORMS)))
def test_exact_every_form_against_numpy(rng, n, m, form):
    per, tv, offset = FORMS[form]
    Bn, T, dt = 9, max(6, 2 * n), 0.25
    (Ad, Bd, c), (A, Bm, cc) = form_arrays(rng, Bn, T, n, m, per, tv, offset)
    cls = trajloss.TimeVaryingSystem if tv else trajloss.LinearSystem
    system = cls(Ad, Bd, dt=dt, offset=c)
    x0 = rng.uniform(-3, 3, (Bn, n))
    xf = rng.uniform(-1, 1, (Bn, n))
    ref = trajloss.min_energy(system, x0, xf, T)
    U, cond = ltv_min_norm(A, Bm, cc, x0, xf)
    scale = state_scale(U)
    assert np.max(np.abs(ref.controls - U)) <= 1e-13 * cond * scale + 1e-12, cond
    X = ltv_rollout(A, Bm, cc, x0, ref.controls)
    xs = state_scale(X, xf)
    np.testing.assert_allclose(ref.states, X, rtol=0, atol=1e-12 * xs)
    assert np.max(np.linalg.norm(X[:, T] - xf, axis=1)) <= 1e-10 * xs
    np.testing.assert_allclose(ref.final_error, np.linalg.norm(X[:, T] - xf, axis=1), rtol=0,
                               atol=1e-12 * xs)
    np.testing.assert_allclose(ref.energy, energy_of(ref.controls, dt), rtol=1e-13)


def test_exact_per_sample_unbatched_and_broadcast_target(rng):
    """A per-sample system of B = 1 serves an unbatched x0; an (n,) target is
    every sample's."""
    Ad, Bd = random_discrete(rng, 3, 2)
    one = trajloss.LinearSystem(Ad[None], Bd[None])
    x0 = rng.standard_normal(3)
    ref = trajloss.min_energy(one, x0, np.zeros(3), 4)
    assert ref.controls.shape == (4, 2) and ref.states.shape == (5, 3) and ref.energy.shape == ()
    U, _ = ltv_min_norm(np.broadcast_to(Ad, (1, 4, 3, 3)), np.broadcast_to(Bd, (1, 4, 3, 2)),
                        np.zeros((1, 4, 3)), x0[None], np.zeros((1, 3)))
    np.testing.assert_allclose(ref.controls, U[0], rtol=1e-10, atol=1e-12)


def test_exact_per_sample_dt_scales_each_energy(rng):
    """from_continuous with one dt per sample: sample b's own ZOH (SciPy
    expm) and its own dt in the energy."""
    A, B = random_continuous(rng, 2, 1)
    dts = np.array([0.1, 0.25, 0.5])
    system = trajloss.LinearSystem.from_continuous(A, B, dts)
    x0 = rng.standard_normal((3, 2))
    ref = trajloss.min_energy(system, x0, np.zeros(2), 8)
    for b, dt in enumerate(dts):
        Ad, Bd = zoh(A, B, dt)
        U = min_norm_controls(Ad, Bd, x0[b], np.zeros(2), 8)[0]
        np.testing.assert_allclose(ref.controls[b], U, rtol=1e-9, atol=1e-12)
        assert ref.energy[b] == pytest.approx(np.sum(U ** 2) * dt, rel=1e-9)


@pytest.mark.parametrize("method", ["average", "continuous"])
def test_per_sample_continuous_model_double_integrator_closed_form(rng, method):
    """One double integrator per sample, each with its own dt and input gain
    g (B = [0, g]): u(t) = (a + b t) / g of its own horizon T dt, averaged
    over each interval (the closed form at the interval's midpoint)."""
    dts = np.array([1 / 3, 0.1, 0.25, 0.5])
    gains = np.array([1.0, 2.0, 0.5, 4.0])
    A = np.array([[0.0, 1.0], [0.0, 0.0]])
    Bs = np.stack([[[0.0], [g]] for g in gains])
    system = trajloss.LinearSystem.from_continuous(A, Bs, dts)
    x0 = seed_box(rng, 4)
    T = 15
    ref = trajloss.min_energy(system, x0, np.zeros(2), T, method)
    for b, (dt, g) in enumerate(zip(dts, gains)):
        H = T * dt
        a, bb = di_law_coefficients(x0[b], np.zeros(2), H)
        mid = (np.arange(T) + 0.5) * dt
        np.testing.assert_allclose(ref.controls[b, :, 0], (a + bb * mid) / g, rtol=0, atol=1e-11)
        if method == "average":
            assert ref.final_error[b] == pytest.approx(abs(bb[0]) * H * dt * dt / 12, abs=1e-11)
        else:
            for k in range(T + 1):
                np.testing.assert_allclose(ref.states[b, k], di_state(x0[b], a, bb, k * dt)[0],
                                           rtol=0, atol=1e-10)


def test_per_sample_average_random_against_quadrature(rng):
    """Per-sample continuous (A_b, B_b), one dt: each sample's controls are
    its own law averaged over each interval (Simpson quadrature, SciPy expm)."""
    Bn, n, m, T, dt = 3, 3, 2, 8, 0.2
    models = [well_conditioned_continuous(rng, n, m, dt, T)[:2] for _ in range(Bn)]
    A = np.stack([a for a, _ in models])
    B = np.stack([b for _, b in models])
    system = trajloss.LinearSystem.from_continuous(A, B, dt)
    x0 = rng.standard_normal((Bn, n))
    xf = rng.standard_normal((Bn, n))
    ref = trajloss.min_energy(system, x0, xf, T, "average")
    for b in range(Bn):
        lam = law_lambda(A[b], B[b], x0[b], xf[b], T * dt, 400)
        expect = interval_averages(A[b], B[b], lam, T * dt, dt, T)[0]
        np.testing.assert_allclose(ref.controls[b], expect, rtol=1e-7, atol=1e-8)
        Ad, Bd = zoh(A[b], B[b], dt)
        np.testing.assert_allclose(ref.states[b], rollout(Ad, Bd, x0[b], ref.controls[b]),
                                   rtol=0, atol=1e-12 * state_scale(ref.states[b]))


def test_per_sample_law_double_integrator_closed_form(rng):
    gains = np.array([1.0, 3.0, 0.25])
    A = np.array([[0.0, 1.0], [0.0, 0.0]])
    Bs = np.stack([[[0.0], [g]] for g in gains])
    system = trajloss.LinearSystem.from_continuous(A, Bs, 0.1)
    x0 = seed_box(rng, 3)
    H = 4.0
    law = trajloss.min_energy_law(system, x0, np.zeros(2), H)
    t = np.array([0.0, 1.3, 2.5, H])
    u, x = law.evaluate(t)
    assert u.shape == (3, 4, 1) and x.shape == (3, 4, 2)
    for b, g in enumerate(gains):
        a, bb = di_law_coefficients(x0[b], np.zeros(2), H)
        np.testing.assert_allclose(u[b, :, 0], (a + bb * t) / g, rtol=0, atol=1e-10)
        for q, tq in enumerate(t):
            np.testing.assert_allclose(x[b, q], di_state(x0[b], a, bb, tq)[0], rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="system"):
        trajloss.min_energy_law(system, x0[:2], np.zeros(2), H)


def test_per_sample_batch_mismatch_names_system(rng):
    Ad, Bd = random_discrete(rng, 2, 1)
    system = trajloss.LinearSystem(np.stack([Ad] * 3), Bd)
    with pytest.raises(ValueError, match=r"system.*3"):
        trajloss.min_energy(system, np.ones((4, 2)), np.zeros(2), 5)
    with pytest.raises(ValueError, match="system"):
        trajloss.min_energy(system, np.ones(2), np.zeros(2), 5)


def test_time_varying_steps_mismatch_names_system(rng):
    A = np.stack([random_discrete(rng, 2, 1)[0] for _ in range(6)])
    Bm = rng.standard_normal((6, 2, 1))
    system = trajloss.TimeVaryingSystem(A, Bm, dt=0.1)
    with pytest.raises(ValueError, match=r"system.*6"):
        trajloss.min_energy(system, np.ones(2), np.zeros(2), 5)


@pytest.mark.parametrize("method", ["average", "continuous"])
def test_time_varying_has_no_continuous_model(rng, method):
    A = np.stack([random_discrete(rng, 2, 1)[0] for _ in range(5)])
    system = trajloss.TimeVaryingSystem(A, rng.standard_normal((5, 2, 1)), dt=0.1)
    with pytest.raises(ValueError, match="system.*TimeVaryingSystem"):
        trajloss.min_energy(system, np.ones(2), np.zeros(2), 5, method)
    with pytest.raises(ValueError, match="system"):
        trajloss.min_energy_law(system, np.ones(2), np.zeros(2), 1.0)


def test_per_sample_unreachable_names_the_sample(rng):
    Ad = np.stack([np.array([[1.0, 0.5], [0.0, 1.0]]), np.eye(2), np.array([[1.0, 0.5], [0.0, 1.0]])])
    Bd = np.stack([[[0.125], [0.5]], [[1.0], [0.0]], [[0.125], [0.5]]])
    system = trajloss.LinearSystem(Ad, Bd)
    with pytest.raises(np.linalg.LinAlgError, match=r"sample 1 .*numerical rank 1 < n = 2"):
        trajloss.min_energy(system, np.ones((3, 2)), np.zeros(2), 4)


def test_time_varying_unreachable_step_structure(rng):
    """B_k = 0 at every step but the last: C = [0 ... 0, B_{T-1}] has rank m = 1 < 2."""
    T = 5
    A = np.broadcast_to(np.array([[1.0, 0.1], [0.0, 1.0]]), (T, 2, 2))
    Bm = np.zeros((T, 2, 1))
    Bm[-1] = [[0.0], [1.0]]
    system = trajloss.TimeVaryingSystem(A, Bm)
    with pytest.raises(np.linalg.LinAlgError, match=r"numerical rank 1 < n = 2"):
        trajloss.min_energy(system, np.ones(2), np.zeros(2), T)
    Bm[0] = [[1.0], [0.0]]  # now reachable: check against NumPy
    system = trajloss.TimeVaryingSystem(A, Bm)
    ref = trajloss.min_energy(system, np.ones(2), np.zeros(2), T)
    U, _ = ltv_min_norm(A[None], Bm[None], np.zeros((1, T, 2)), np.ones((1, 2)), np.zeros((1, 2)))
    np.testing.assert_allclose(ref.controls, U[0], rtol=1e-10, atol=1e-12)


def test_per_sample_continuous_uncontrollable_names_the_sample():
    """Sample 1's continuous pair (A = diag(-1, -2), B = e1) leaves its second
    state unreachable; sample 0 (a double integrator) is fine."""
    A = np.stack([[[0.0, 1.0], [0.0, 0.0]], [[-1.0, 0.0], [0.0, -2.0]]])
    B = np.stack([[[0.0], [1.0]], [[1.0], [0.0]]])
    system = trajloss.LinearSystem.from_continuous(A, B, 0.2)
    for method in ("average", "continuous"):
        with pytest.raises(np.linalg.LinAlgError, match=r"sample 1 of the per-sample system.*"
                                                        r"condition number"):
            trajloss.min_energy(system, np.ones((2, 2)), np.zeros(2), 10, method)
    with pytest.raises(np.linalg.LinAlgError, match=r"sample 1 .*numerical rank 1 < n = 2"):
        trajloss.min_energy(system, np.ones((2, 2)), np.zeros(2), 10)


def test_time_varying_rank_message_names_its_c():
    T = 4
    A = np.broadcast_to(np.eye(2), (T, 2, 2))
    system = trajloss.TimeVaryingSystem(A, np.broadcast_to([[1.0], [0.0]], (T, 2, 1)))
    with pytest.raises(np.linalg.LinAlgError, match=r"Ad_\(T-1\)\.\.\.Ad_1 Bd_0"):
        trajloss.min_energy(system, np.ones(2), np.zeros(2), T)
