"""Accuracy of the minimum-energy references at their hard cases, each against
a reference computed here, independently of trajloss:

* "exact" on chains of 8 integrators and random 6-state systems (shared, one
  per sample, time-varying with an offset): the controls
  equal the minimum-norm solution of ``C U = xf - Ad^T x0`` from
  ``numpy.linalg.lstsq`` / ``numpy.linalg.pinv`` (C built with a plain NumPy
  loop), and a plain NumPy rollout of them reaches xf to 1e-9 of the state
  scale;
* a system whose equilibrated Gramian ``C C^T`` has condition number > 1e12
  (refused before) is solved;
* an unreachable direction raises LinAlgError with the numbers of the rank test;
* the continuous law at long horizons on stable systems against the solution
  of its two-point boundary value problem from the exponential of the
  Hamiltonian ``[[A, B B^T], [0, -A^T]]`` in 250-digit arithmetic (mpmath),
  against the scalar closed form ``x(t) = (x0 sinh(a (H-t)) + xf sinh(a t)) /
  sinh(a H)``, and the double integrator's ``u(t) = a + b t``;
* the limit on ``steps``.
"""

import math
import os
import subprocess
import sys
import textwrap

import mpmath
import numpy as np
import pytest

import trajloss
from reference_helpers import (
    di_law_coefficients,
    di_state,
    random_continuous,
    zoh,
)


# --------------------------------------------------------------------------
# independent references
# --------------------------------------------------------------------------


def chain_matrices(n, dt):
    """Exact ZOH of the chain x_i' = x_{i+1}, x_n' = u in closed form:
    Ad_ij = dt^(j-i)/(j-i)!, Bd_i = dt^(n-i)/(n-i)! (0-based i)."""
    Ad = np.zeros((n, n))
    for i in range(n):
        for j in range(i, n):
            Ad[i, j] = dt ** (j - i) / math.factorial(j - i)
    Bd = np.array([[dt ** (n - i) / math.factorial(n - i)] for i in range(n)])
    return Ad, Bd


def c_matrix_loop(Ad, Bd, T):
    """C = [Ad^(T-1) Bd ... Ad Bd, Bd] by a plain loop, and Ad^T."""
    n, m = Bd.shape
    C = np.zeros((n, T * m))
    P = Bd.copy()
    for k in range(T - 1, -1, -1):  # block k is Ad^(T-1-k) Bd
        C[:, k * m:(k + 1) * m] = P
        P = Ad @ P
    AT = np.eye(n)
    for _ in range(T):
        AT = Ad @ AT
    return C, AT


def rollout_loop(Ad, Bd, x0, U):
    """x_{k+1} = Ad x_k + Bd u_k, one step at a time: (T+1, n)."""
    xs = [np.asarray(x0, float)]
    for u in U:
        xs.append(Ad @ xs[-1] + Bd @ u)
    return np.array(xs)


def check_exact(Ad, Bd, x0, xf, T, dt, reach=1e-9, match=1e-7, lstsq=True):
    """min_energy exact against lstsq (or pinv) minimum-norm controls; returns
    the end error relative to the state scale."""
    n, m = Bd.shape
    ref = trajloss.min_energy(trajloss.LinearSystem(Ad, Bd, dt=dt), x0, xf, T)
    C, AT = c_matrix_loop(Ad, Bd, T)
    rhs = xf - AT @ x0
    if lstsq:
        U_ref = np.linalg.lstsq(C, rhs, rcond=None)[0]
    else:
        U_ref = np.linalg.pinv(C) @ rhs
    X = rollout_loop(Ad, Bd, x0, ref.controls)
    X_ref = rollout_loop(Ad, Bd, x0, U_ref.reshape(T, m))
    scale = max(1.0, np.max(np.abs(X_ref)), np.max(np.abs(X)))
    end = np.max(np.abs(X[-1] - xf)) / scale
    assert end <= reach, f"end error {end:.3g} of the state scale {scale:.3g}"
    u_scale = max(np.max(np.abs(U_ref)), 1e-300)
    du = np.max(np.abs(ref.controls.reshape(-1) - U_ref)) / u_scale
    assert du <= match, f"controls differ from the minimum-norm solution by {du:.3g}"
    np.testing.assert_allclose(ref.states, X, rtol=0, atol=1e-12 * scale)
    return end


# --------------------------------------------------------------------------
# "exact"
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dt", [0.1, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("T", [16, 24, 40, 60])
def test_chain_of_eight_reaches_target(dt, T):
    Ad, Bd = chain_matrices(8, dt)
    rng = np.random.default_rng(int(dt * 100) * 1000 + T)
    x0, xf = rng.standard_normal(8), rng.standard_normal(8)
    check_exact(Ad, Bd, x0, xf, T, dt)


def random_six(seed, m):
    rng = np.random.default_rng(seed)
    A, B = random_continuous(rng, 6, m, norm=rng.uniform(0.3, 1.5))
    Ad, Bd = zoh(A, B, 0.2)
    return Ad, Bd, rng.standard_normal(6), rng.standard_normal(6)


@pytest.mark.parametrize("m", [1, 2])
def test_random_six_state_systems_reach_target(m):
    worst = 0.0
    for seed in range(40):
        Ad, Bd, x0, xf = random_six(seed, m)
        worst = max(worst, check_exact(Ad, Bd, x0, xf, 40, 0.2, match=1e-6, lstsq=False))
    assert worst <= 1e-9


def test_gramian_condition_above_1e12_is_solved():
    """The equilibrated C C^T of this system has condition number > 1e12 (the
    old limit), C itself ~2e6: the pseudo-inverse solves it, so must we."""
    Ad, Bd, x0, xf = random_six(7, 1)
    C, _ = c_matrix_loop(Ad, Bd, 40)
    W = C @ C.T
    d = 1.0 / np.sqrt(np.diag(W))
    assert np.linalg.cond(W * d[:, None] * d[None, :]) > 1e12
    check_exact(Ad, Bd, x0, xf, 40, 0.2, match=1e-6, lstsq=False)


def test_batch_is_per_sample():
    """A batch gives each sample's own reference, bit for bit."""
    Ad, Bd = chain_matrices(8, 0.5)
    system = trajloss.LinearSystem(Ad, Bd, dt=0.5)
    rng = np.random.default_rng(3)
    x0, xf = rng.standard_normal((9, 8)), rng.standard_normal((9, 8))
    batch = trajloss.min_energy(system, x0, xf, 24)
    for b in range(9):
        one = trajloss.min_energy(system, x0[b], xf[b], 24)
        assert np.array_equal(one.controls, batch.controls[b])
        assert np.array_equal(one.states, batch.states[b])


def ltv_check(A, Bm, c, x0, xf, system, dt):
    """min_energy exact of a per-sample and/or time-varying system against,
    sample by sample, lstsq on C = [Phi(T,1) B_0 ... B_{T-1}] (Phi(T,k) =
    A_{T-1} ... A_k multiplied out here) and a plain rollout loop; (A, Bm, c)
    are (N, T, ...). Returns the worst end error relative to the state scale
    and the worst control difference relative to the control scale."""
    N, T, n, m = Bm.shape
    ref = trajloss.min_energy(system, x0, xf, T)
    worst_end = worst_u = 0.0
    for b in range(N):
        Phi = [None] * (T + 1)
        Phi[T] = np.eye(n)
        for k in range(T - 1, -1, -1):
            Phi[k] = Phi[k + 1] @ A[b, k]
        C = np.hstack([Phi[k + 1] @ Bm[b, k] for k in range(T)])
        d = xf[b] - Phi[0] @ x0[b] - sum(Phi[k + 1] @ c[b, k] for k in range(T))
        U_ref = np.linalg.lstsq(C, d, rcond=None)[0].reshape(T, m)
        X = [x0[b]]
        for k in range(T):
            X.append(A[b, k] @ X[-1] + Bm[b, k] @ ref.controls[b, k] + c[b, k])
        X = np.array(X)
        scale = max(1.0, np.max(np.abs(X)))
        worst_end = max(worst_end, np.max(np.abs(X[-1] - xf[b])) / scale)
        worst_u = max(worst_u, np.max(np.abs(ref.controls[b] - U_ref)) / np.max(np.abs(U_ref)))
        np.testing.assert_allclose(ref.states[b], X, rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(ref.energy, dt * np.sum(ref.controls ** 2, axis=(1, 2)), rtol=1e-13)
    return worst_end, worst_u


def test_per_sample_chains_of_eight_reach_target():
    """One chain of 8 integrators per sample, each with its own dt in
    [0.1, 1] (C spanning dt^8/8! to dt), T = 24 and 40."""
    rng = np.random.default_rng(11)
    for T in (24, 40):
        N = 12
        dts = rng.uniform(0.1, 1.0, N)
        pairs = [chain_matrices(8, dt) for dt in dts]
        Ad = np.stack([p[0] for p in pairs])
        Bd = np.stack([p[1] for p in pairs])
        system = trajloss.LinearSystem(Ad, Bd, dt=0.5)
        x0, xf = rng.standard_normal((N, 8)), rng.standard_normal((N, 8))
        A, Bm = (np.broadcast_to(a[:, None], (N, T) + a.shape[1:]) for a in (Ad, Bd))
        end, du = ltv_check(A, Bm, np.zeros((N, T, 8)), x0, xf, system, 0.5)
        assert end <= 1e-9, end
        assert du <= 1e-6, du


def test_time_varying_chain_of_eight_reaches_target():
    """A chain of 8 integrators sampled with a different dt at every step
    (dt_k in [0.1, 0.6]) and an offset: C mixes every scale of dt_k^8/8!."""
    rng = np.random.default_rng(12)
    for T in (24, 40):
        dts = rng.uniform(0.1, 0.6, T)
        pairs = [chain_matrices(8, dt) for dt in dts]
        Ad = np.stack([p[0] for p in pairs])
        Bd = np.stack([p[1] for p in pairs])
        c = 0.01 * rng.standard_normal((T, 8))
        system = trajloss.TimeVaryingSystem(Ad, Bd, offset=c)
        N = 6
        x0, xf = rng.standard_normal((N, 8)), rng.standard_normal((N, 8))
        A, Bm, cc = (np.broadcast_to(a, (N,) + a.shape) for a in (Ad, Bd, c))
        end, du = ltv_check(A, Bm, cc, x0, xf, system, 1.0)
        assert end <= 1e-9, end
        assert du <= 1e-6, du


def test_random_per_sample_time_varying_six_state_systems():
    """Per-sample, time-varying 6-state systems: sample b, step k the ZOH of
    its own random continuous pair over 0.2 s, T = 40, m = 1 and 2."""
    rng = np.random.default_rng(13)
    for m in (1, 2):
        N, T = 4, 40
        Ad = np.empty((N, T, 6, 6))
        Bd = np.empty((N, T, 6, m))
        for b in range(N):
            for k in range(T):
                A, B = random_continuous(rng, 6, m, norm=rng.uniform(0.3, 1.5))
                Ad[b, k], Bd[b, k] = zoh(A, B, 0.2)
        system = trajloss.TimeVaryingSystem(Ad, Bd, dt=0.2)
        x0, xf = rng.standard_normal((N, 6)), rng.standard_normal((N, 6))
        end, du = ltv_check(Ad, Bd, np.zeros((N, T, 6)), x0, xf, system, 0.2)
        assert end <= 1e-9, end
        assert du <= 1e-6, du


@pytest.mark.parametrize("case", ["decoupled", "twin modes", "too few steps"])
def test_unreachable_raises_with_rank_numbers(case):
    if case == "decoupled":  # third state: no input reaches it
        Ad, Bd, T, rank = np.diag([0.9, 0.5, 1.0]), np.array([[1.0], [1.0], [0.0]]), 10, 2
    elif case == "twin modes":  # two identical modes driven alike: one direction only
        Ad, Bd, T, rank = np.diag([0.9, 0.9]), np.array([[1.0], [1.0]]), 10, 1
    else:  # 3 states, 1 input, 2 steps: C is 3 x 2
        Ad, Bd = chain_matrices(3, 0.5)
        T, rank = 2, 2
    n = Ad.shape[0]
    C, _ = c_matrix_loop(Ad, Bd, T)
    assert np.linalg.matrix_rank(C) == rank  # independent: SVD rank
    with pytest.raises(np.linalg.LinAlgError) as info:
        trajloss.min_energy(trajloss.LinearSystem(Ad, Bd), np.ones(n), np.zeros(n), T)
    msg = str(info.value)
    assert f"numerical rank {rank} < n = {n}" in msg, msg
    assert "tolerance" in msg and "|R_11|" in msg and "condition number" in msg, msg
    assert f"in {T} steps" in msg, msg


def test_well_conditioned_case_keeps_rank_and_reports_cond():
    """cond is that of the equilibrated C (its R factor): compare with NumPy's
    2-norm condition number of the row-equilibrated C (1-norm estimate vs
    2-norm: within a factor of n)."""
    Ad, Bd = chain_matrices(4, 0.5)
    ref = trajloss.min_energy(trajloss.LinearSystem(Ad, Bd), np.ones(4), np.zeros(4), 12)
    C, _ = c_matrix_loop(Ad, Bd, 12)
    Ce = C / np.linalg.norm(C, axis=1, keepdims=True)
    c2 = np.linalg.cond(Ce)
    assert c2 / 4 <= ref.cond <= c2 * 4 * 4


# --------------------------------------------------------------------------
# the continuous law at long horizons
# --------------------------------------------------------------------------

A_STABLE = np.array([[-0.1, 1.0], [-0.5, -0.3]])
B_STABLE = np.array([[0.0], [1.0]])


def hamiltonian_law(A, B, x0, xf, H, times, dps=250):
    """x(t), u(t) of the minimum-energy law from the two-point boundary value
    problem x' = A x + B B^T p, p' = -A^T p, u = B^T p, x(0) = x0, x(H) = xf:
    with E(t) = expm(Ham t) in `dps`-digit arithmetic, p0 solves
    E12(H) p0 = xf - E11(H) x0, then (x, p)(t) = E(t) (x0, p0)."""
    with mpmath.workdps(dps):
        n = A.shape[0]
        Ham = mpmath.zeros(2 * n, 2 * n)
        BB = B @ B.T
        for i in range(n):
            for j in range(n):
                Ham[i, j] = mpmath.mpf(A[i, j])
                Ham[i, n + j] = mpmath.mpf(BB[i, j])
                Ham[n + i, n + j] = -mpmath.mpf(A[j, i])
        E = mpmath.expm(Ham * mpmath.mpf(H))
        rhs = mpmath.matrix([mpmath.mpf(v) for v in xf]) - E[0:n, 0:n] * mpmath.matrix(
            [mpmath.mpf(v) for v in x0])
        p0 = mpmath.lu_solve(E[0:n, n:2 * n], rhs)
        z0 = mpmath.matrix([mpmath.mpf(v) for v in x0] + [p0[i] for i in range(n)])
        xs, us = [], []
        for t in times:
            z = mpmath.expm(Ham * mpmath.mpf(t)) * z0
            xs.append([float(z[i]) for i in range(n)])
            p = np.array([float(z[n + i]) for i in range(n)])
            us.append(B.T @ p)
        return np.array(xs), np.array(us)


@pytest.mark.parametrize("H", [200.0, 1000.0])
def test_law_stable_long_horizon_against_hamiltonian(H):
    x0, xf = np.array([1.0, 0.5]), np.array([0.3, -0.2])
    times = np.array([0.0, 1.0, 10.0, 0.3 * H, 119.0, 0.5 * H, 0.9 * H, H - 5.0, H - 1.0, H])
    system = trajloss.LinearSystem.from_continuous(A_STABLE, B_STABLE, 0.5)
    law = trajloss.min_energy_law(system, x0, xf, H)
    u, x = law.evaluate(times)
    x_ref, u_ref = hamiltonian_law(A_STABLE, B_STABLE, x0, xf, H, times)
    scale = max(np.max(np.abs(x0)), np.max(np.abs(xf)))
    np.testing.assert_allclose(x, x_ref, rtol=0, atol=1e-9 * scale)
    np.testing.assert_allclose(u, u_ref, rtol=0, atol=1e-9 * scale)


def scalar_law(a, x0, xf, H, t):
    """x(t) = (x0 sinh(k (H-t)) + xf sinh(k t)) / sinh(k H), k = |a| (x'' = a^2 x),
    written with decaying exponentials; u = x' - a x."""
    k = abs(a)
    t = np.asarray(t, float)
    s = H - t
    den = -math.expm1(-2 * k * H)
    w0 = np.exp(-k * t) * -np.expm1(-2 * k * s) / den
    w1 = np.exp(-k * s) * -np.expm1(-2 * k * t) / den
    dw0 = -k * np.exp(-k * t) * (1 + np.exp(-2 * k * s)) / den
    dw1 = k * np.exp(-k * s) * (1 + np.exp(-2 * k * t)) / den
    x = x0 * w0 + xf * w1
    return x, x0 * dw0 + xf * dw1 - a * x


@pytest.mark.parametrize("a,H", [(-0.5, 200.0), (-0.5, 1000.0), (-3.0, 1000.0), (0.5, 200.0),
                                 (0.25, 1000.0)])
def test_law_scalar_long_horizon_closed_form(a, H):
    """Stable and unstable (evaluated backward from xf) scalar systems."""
    x0, xf = 1.5, -0.75
    times = np.linspace(0.0, H, 41)
    system = trajloss.LinearSystem.from_continuous([[a]], [[1.0]], 0.5)
    u, x = trajloss.min_energy_law(system, [x0], [xf], H).evaluate(times)
    x_ref, u_ref = scalar_law(a, x0, xf, H, times)
    np.testing.assert_allclose(x[:, 0], x_ref, rtol=0, atol=1e-9 * 1.5)
    np.testing.assert_allclose(u[:, 0], u_ref, rtol=0, atol=1e-9 * 1.5)


@pytest.mark.parametrize("H", [5.0, 200.0, 1000.0])
def test_law_double_integrator_closed_form_long(H):
    x0 = np.array([[3.0, 1.0], [-2.0, 0.5]])
    xf = np.array([[0.0, 0.0], [1.0, -1.0]])
    times = np.linspace(0.0, H, 17)
    u, x = trajloss.min_energy_law(trajloss.DoubleIntegrator(), x0, xf, H).evaluate(times)
    a, b = di_law_coefficients(x0, xf, H)
    for q, t in enumerate(times):
        np.testing.assert_allclose(u[:, q, 0], a + b * t, rtol=0, atol=1e-9 * 3.0)
        np.testing.assert_allclose(x[:, q], di_state(x0, a, b, t), rtol=0, atol=1e-9 * 3.0)


def test_law_saddle_long_horizon_refused():
    """diag(1, -1) over H = 40: e^{At} grows by e^40 ~ 2e17 forward and
    backward, so the states would be differences of terms that large."""
    system = trajloss.LinearSystem.from_continuous(np.diag([1.0, -1.0]), [[1.0], [1.0]], 0.5)
    with pytest.raises(np.linalg.LinAlgError, match=r"grows to 2\.35e\+17.*limit 1e\+06"):
        trajloss.min_energy_law(system, np.ones(2), np.zeros(2), 40.0)
    # over a short horizon it is fine: against the Hamiltonian BVP
    times = np.linspace(0.0, 4.0, 9)
    u, x = trajloss.min_energy_law(system, np.ones(2), np.zeros(2), 4.0).evaluate(times)
    x_ref, u_ref = hamiltonian_law(np.diag([1.0, -1.0]), np.array([[1.0], [1.0]]), np.ones(2),
                                   np.zeros(2), 4.0, times, dps=60)
    np.testing.assert_allclose(x, x_ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(u, u_ref, rtol=0, atol=1e-10)


# --------------------------------------------------------------------------
# "average" and "continuous" at long horizons
# --------------------------------------------------------------------------


def scalar_interval_average(a, x0, xf, H, t0, t1):
    """(1/dt) int_{t0}^{t1} u dt = (x(t1) - x(t0) - a int x dt) / dt, with
    int sinh(k (H-t)) dt = -cosh(k (H-t)) / k, int sinh(k t) dt = cosh(k t) / k,
    in decaying exponentials."""
    k = abs(a)
    den = -math.expm1(-2 * k * H)

    def cosh_ratio(s):  # cosh(k s) / sinh(k H)
        return np.exp(-k * (H - s)) * (1 + np.exp(-2 * k * s)) / den

    ix = (x0 * (cosh_ratio(H - t0) - cosh_ratio(H - t1)) + xf * (cosh_ratio(t1) - cosh_ratio(t0))) / k
    x1, _ = scalar_law(a, x0, xf, H, t1)
    x0_, _ = scalar_law(a, x0, xf, H, t0)
    return (x1 - x0_ - a * ix) / (t1 - t0)


@pytest.mark.parametrize("T", [200, 1000])
def test_average_and_continuous_stable_long_horizon(T):
    a, dt, x0, xf = -0.5, 1.0, 1.5, -0.75
    system = trajloss.LinearSystem.from_continuous([[a]], [[1.0]], dt)
    grid = np.arange(T + 1) * dt
    cont = trajloss.min_energy(system, [x0], [xf], T, method="continuous")
    x_ref, _ = scalar_law(a, x0, xf, T * dt, grid)
    np.testing.assert_allclose(cont.states[:, 0], x_ref, rtol=0, atol=1e-9 * 1.5)
    avg = trajloss.min_energy(system, [x0], [xf], T, method="average")
    u_ref = scalar_interval_average(a, x0, xf, T * dt, grid[:-1], grid[1:])
    np.testing.assert_allclose(avg.controls[:, 0], u_ref, rtol=0, atol=1e-9 * 1.5)
    np.testing.assert_allclose(cont.controls, avg.controls, rtol=0, atol=0)


def test_continuous_unstable_long_horizon_refused():
    system = trajloss.LinearSystem.from_continuous([[0.5]], [[1.0]], 1.0)
    with pytest.raises(np.linalg.LinAlgError, match=r"method='continuous'.*grows to"):
        trajloss.min_energy(system, [1.0], [0.0], 100, method="continuous")


# --------------------------------------------------------------------------
# steps
# --------------------------------------------------------------------------


def test_steps_limit_is_named():
    with pytest.raises(ValueError, match=r"steps must be <= 1000000.*got 20000000"):
        trajloss.min_energy(trajloss.DoubleIntegrator(), [1.0, 2.0], [0.0, 0.0], steps=2 * 10**7)


def test_memory_error_names_steps():
    """Under a 3 GiB address-space limit, an exact plan of 10**6 steps for
    n = m = 24 (~4.6 GiB for the 24 x 24e6 controllability matrix alone)
    cannot be allocated: the MemoryError names steps and the size instead of
    being empty."""
    code = textwrap.dedent("""
        import resource, numpy as np
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
        import trajloss
        system = trajloss.LinearSystem(np.eye(24) * 0.5, np.eye(24))
        try:
            trajloss.min_energy(system, np.ones(24), np.zeros(24), 10**6)
        except MemoryError as e:
            print("MemoryError:", e)
    """)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert "MemoryError: min_energy: steps=1000000 needs" in out.stdout, out.stdout + out.stderr
    assert "GiB" in out.stdout


def test_final_error_of_a_growing_rollout_does_not_overflow():
    """A mode growing as 1.05^k over 10000 steps: the controls are fine
    (cond(C) ~ 1), but the float64 rollout misses xf by ~1e195, whose square
    overflows. final_error must be that miss (the scaled norm of
    states[-1] - xf, computed here), finite and without an overflow warning."""
    import warnings
    system = trajloss.LinearSystem(np.diag([1.05, 0.5]), [[1.0], [1.0]])
    x0, xf = np.array([[1.0, -0.5], [-2.0, 0.25]]), np.array([0.5, 0.1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ref = trajloss.min_energy(system, x0, xf, 10_000)
    diff = ref.states[:, -1] - xf
    mx = np.max(np.abs(diff), axis=1)
    expected = mx * np.sqrt(np.sum((diff / mx[:, None]) ** 2, axis=1))
    assert np.all(np.isfinite(ref.final_error)) and np.all(expected > 1e100)
    np.testing.assert_allclose(ref.final_error, expected, rtol=1e-12)


def test_overflowing_c_raises():
    """10^399 is beyond float64: C itself cannot be formed."""
    assert math.log10(np.finfo(np.float64).max) < 399
    with pytest.raises(np.linalg.LinAlgError, match=r"T = steps = 400\) is not finite"):
        trajloss.min_energy(trajloss.LinearSystem([[10.0]], [[1.0]]), [1.0], [0.0], 400)


@pytest.mark.parametrize("dt", [1e-320, 1e-310])
def test_rows_below_float64_scaling_are_unreachable_not_nan(dt):
    """A controllability row of subnormal size cannot be equilibrated (1 / its
    norm overflows): reaching that direction needs controls beyond float64, so
    it counts as a zero row. The refusal's numbers stay finite (no NaN from
    inf / inf), and the rank is NumPy's SVD rank of the same C."""
    system = trajloss.LinearSystem(np.eye(2), np.array([[1.0], [dt]]))
    C = np.hstack([system.Bd] * 15)  # Ad = I: every block is Bd
    assert np.linalg.matrix_rank(C) == 1
    with pytest.raises(np.linalg.LinAlgError, match=r"numerical rank 1 < n = 2") as info:
        trajloss.min_energy(system, np.ones(2), np.zeros(2), 15)
    assert "nan" not in str(info.value).lower()


def test_rows_whose_norm_passes_float64_are_still_equilibrated():
    """A row of C with finite entries whose 2-norm exceeds DBL_MAX (found by the
    fuzzer): its scale is computed as (1 / max) / sqrt(sum), which does not
    overflow, so the rank test sees the equilibrated row, not infinities.
    C = [M, M] has rank 1; the minimum-norm controls are d / (2 M) each."""
    M = np.finfo(float).max
    system = trajloss.LinearSystem([[0.0]], [[M, M]])
    ref = trajloss.min_energy(system, np.zeros(1), np.array([M / 4]), 1)
    np.testing.assert_allclose(ref.controls, np.full((1, 2), 0.125), rtol=1e-15)
    assert ref.final_error <= 4 * np.finfo(float).eps * (M / 4)
