"""calibrate / Calibration.breakdown against plain NumPy on the same random
draws (the random baseline is documented as
``np.random.default_rng(seed).uniform(-bound, bound, size=dataset.controls.shape)``),
plus the baseline's analytic expectation."""

import numpy as np
import pytest

import trajloss
from reference_helpers import di_matrices, random_continuous, rollout, zoh

DT = 1.0 / 3.0


def numpy_calibration(Ad, Bd, dataset, U):
    """control: mean over (N, T, m); trajectory: mean over all (N, T+1, n),
    state 0 included (its error is 0 since both start at x0)."""
    c = float(np.mean((U - dataset.controls) ** 2))
    X = rollout(Ad, Bd, dataset.x0, U)
    t = float(np.mean((X - dataset.states) ** 2))
    return c, t


@pytest.fixture(scope="module")
def di_data():
    return trajloss.make_dataset(trajloss.DoubleIntegrator(), 400, seed=0)


@pytest.mark.parametrize("seed", [0, 1, 12345])
@pytest.mark.parametrize("bound", [8.0, 2.5])
def test_random_baseline_matches_numpy(di_data, seed, bound):
    cal = trajloss.calibrate(trajloss.DoubleIntegrator(), di_data, control_bound=bound, seed=seed)
    U = np.random.default_rng(seed).uniform(-bound, bound, size=di_data.controls.shape)
    Ad, Bd = di_matrices(DT)
    c, t = numpy_calibration(Ad, Bd, di_data, U)
    assert cal.control_mse == pytest.approx(c, rel=1e-12)
    assert cal.trajectory_mse == pytest.approx(t, rel=1e-12)
    assert cal.ratio == pytest.approx(t / c, rel=1e-12)
    assert cal.recommended_weight == pytest.approx(c / t, rel=1e-12)
    assert cal.baseline == "random"
    assert cal.control_bound == bound
    assert cal.samples == len(di_data) == 400


def test_default_arguments_are_random_bound_8_seed_0(di_data):
    cal = trajloss.calibrate(trajloss.DoubleIntegrator(), di_data)
    U = np.random.default_rng(0).uniform(-8.0, 8.0, size=di_data.controls.shape)
    c, t = numpy_calibration(*di_matrices(DT), di_data, U)
    assert cal.control_mse == pytest.approx(c, rel=1e-12)
    assert cal.trajectory_mse == pytest.approx(t, rel=1e-12)
    assert cal.baseline == "random" and cal.control_bound == 8.0


def test_include_initial_counts_state_zero(di_data):
    """The trajectory MSE averages over all T+1 states: excluding state 0
    would give a value (T+1)/T times larger."""
    cal = trajloss.calibrate(trajloss.DoubleIntegrator(), di_data, seed=3)
    U = np.random.default_rng(3).uniform(-8.0, 8.0, size=di_data.controls.shape)
    X = rollout(*di_matrices(DT), di_data.x0, U)
    err = (X - di_data.states) ** 2
    assert np.all(err[:, 0] == 0.0)
    with_initial = float(np.mean(err))
    without = float(np.mean(err[:, 1:]))
    assert cal.trajectory_mse == pytest.approx(with_initial, rel=1e-12)
    assert without == pytest.approx(with_initial * 16 / 15, rel=1e-12)


def test_zero_baseline(di_data):
    cal = trajloss.calibrate(trajloss.DoubleIntegrator(), di_data, baseline="zero")
    U = np.zeros_like(di_data.controls)
    c, t = numpy_calibration(*di_matrices(DT), di_data, U)
    assert cal.baseline == "zero"
    assert cal.control_mse == pytest.approx(c, rel=1e-12)
    assert cal.trajectory_mse == pytest.approx(t, rel=1e-12)
    # zero controls: control MSE is the mean square of the references
    assert cal.control_mse == pytest.approx(float(np.mean(di_data.controls ** 2)), rel=1e-12)
    # ... and the zero baseline does not depend on the seed
    cal2 = trajloss.calibrate(trajloss.DoubleIntegrator(), di_data, baseline="zero", seed=99)
    assert cal2.control_mse == pytest.approx(c, rel=1e-12)
    assert cal2.trajectory_mse == pytest.approx(t, rel=1e-12)


@pytest.mark.parametrize("method", ["average", "continuous"])
def test_other_reference_methods(method):
    """The references stored in the dataset are what the baseline is scored against."""
    system = trajloss.DoubleIntegrator()
    data = trajloss.make_dataset(system, 100, method=method, seed=2)
    cal = trajloss.calibrate(system, data, seed=4)
    U = np.random.default_rng(4).uniform(-8.0, 8.0, size=data.controls.shape)
    c, t = numpy_calibration(*di_matrices(DT), data, U)
    assert cal.control_mse == pytest.approx(c, rel=1e-12)
    assert cal.trajectory_mse == pytest.approx(t, rel=1e-12)


@pytest.mark.parametrize("n,m", [(3, 1), (4, 2)])
def test_random_system(rng, n, m):
    A, B = random_continuous(rng, n, m, norm=0.5)
    dt = 0.2
    system = trajloss.LinearSystem.from_continuous(A, B, dt)
    data = trajloss.make_dataset(system, 50, 10, x0_low=-np.ones(n), x0_high=np.ones(n), seed=6)
    cal = trajloss.calibrate(system, data, control_bound=1.5, seed=8)
    U = np.random.default_rng(8).uniform(-1.5, 1.5, size=data.controls.shape)
    Ad, Bd = zoh(A, B, dt)
    c, t = numpy_calibration(Ad, Bd, data, U)
    assert cal.control_mse == pytest.approx(c, rel=1e-12)
    assert cal.trajectory_mse == pytest.approx(t, rel=1e-10)
    assert cal.samples == 50


def test_random_baseline_analytic_expectation():
    """For U ~ Uniform(-b, b) independent of the references:
    E[control MSE] = b^2/3 + mean(u_ref^2), and, since X(U) - X_ref = Phi (U - u_ref),
    E[trajectory MSE] = (b^2/3 ||Phi||_F^2 + |X_ref - X(0)|^2) / ((T+1) n) per sample."""
    system = trajloss.DoubleIntegrator()
    data = trajloss.make_dataset(system, 3000, seed=10)
    cals = [trajloss.calibrate(system, data, seed=s) for s in range(11, 21)]
    mean_c = float(np.mean([cal.control_mse for cal in cals]))
    mean_t = float(np.mean([cal.trajectory_mse for cal in cals]))
    b = 8.0
    Ad, Bd = di_matrices(DT)
    T, n = 15, 2
    exp_c = b * b / 3 + float(np.mean(data.controls ** 2))
    # ||Phi||_F^2 = sum_k sum_{j<k} |Ad^{k-1-j} Bd|^2
    gains = [np.linalg.matrix_power(Ad, i) @ Bd for i in range(T)]
    phi2 = sum(float(np.sum(gains[i] ** 2)) for k in range(T + 1) for i in range(k))
    free = rollout(Ad, Bd, data.x0, np.zeros_like(data.controls))
    drift = float(np.mean(np.sum((data.states - free) ** 2, axis=(1, 2))))
    exp_t = (b * b / 3 * phi2 + drift) / ((T + 1) * n)
    # 10 independent baselines of 3000 trajectories: ~0.15% and ~0.7% standard errors
    assert mean_c == pytest.approx(exp_c, rel=0.02)
    assert mean_t == pytest.approx(exp_t, rel=0.04)
    # seed 000's qualitative finding: the trajectory term is several times larger,
    # and the balancing weight is about 0.3
    assert 2.5 < exp_t / exp_c < 5.0
    assert all(0.2 < cal.recommended_weight < 0.4 for cal in cals)


# --------------------------------------------------------------------------
# breakdown
# --------------------------------------------------------------------------


def test_breakdown_at_one_and_at_recommended_weight(di_data):
    cal = trajloss.calibrate(trajloss.DoubleIntegrator(), di_data)
    c, t = cal.control_mse, cal.trajectory_mse
    one = cal.breakdown(1.0)
    assert set(one) == {"weight", "control", "trajectory", "total"}
    assert one["weight"] == 1.0
    assert one["total"] == pytest.approx(c + t, rel=1e-14)
    assert one["control"] == pytest.approx(c / (c + t), rel=1e-14)
    assert one["trajectory"] == pytest.approx(t / (c + t), rel=1e-14)
    assert one["control"] + one["trajectory"] == pytest.approx(1.0, rel=1e-14)
    assert one["trajectory"] > one["control"]  # trajectory dominates at weight 1
    w = c / t
    bal = cal.breakdown(cal.recommended_weight)
    assert bal["weight"] == pytest.approx(w, rel=1e-14)
    assert bal["control"] == pytest.approx(0.5, rel=1e-12)
    assert bal["trajectory"] == pytest.approx(0.5, rel=1e-12)
    assert bal["total"] == pytest.approx(2 * c, rel=1e-12)


@pytest.mark.parametrize("weight", [0.0, 0.3, 2.0, 7])
def test_breakdown_other_weights(di_data, weight):
    cal = trajloss.calibrate(trajloss.DoubleIntegrator(), di_data, seed=5)
    c, t = cal.control_mse, cal.trajectory_mse
    out = cal.breakdown(weight)
    total = c + weight * t
    assert out["weight"] == float(weight)
    assert out["total"] == pytest.approx(total, rel=1e-14)
    assert out["control"] == pytest.approx(c / total, rel=1e-14)
    assert out["trajectory"] == pytest.approx(weight * t / total, rel=1e-14, abs=0)


@pytest.mark.parametrize("weight", [-0.1, np.nan, np.inf, -np.inf])
def test_breakdown_bad_weight(di_data, weight):
    cal = trajloss.calibrate(trajloss.DoubleIntegrator(), di_data)
    with pytest.raises(ValueError):
        cal.breakdown(weight)


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


@pytest.mark.parametrize("baseline", ["uniform", "Random", "", "gaussian"])
def test_unknown_baseline(di_data, baseline):
    with pytest.raises(ValueError):
        trajloss.calibrate(trajloss.DoubleIntegrator(), di_data, baseline=baseline)


@pytest.mark.parametrize("bound", [0.0, -8.0, np.nan, np.inf])
def test_bad_control_bound(di_data, bound):
    with pytest.raises(ValueError):
        trajloss.calibrate(trajloss.DoubleIntegrator(), di_data, control_bound=bound)


# --------------------------------------------------------------------------
# Every form of system
# --------------------------------------------------------------------------


def loop_rollout(A, Bm, c, x0, U):
    """x_{k+1} = A_k x_k + B_k u_k + c_k with (N, T, ...) arrays, a plain loop."""
    N, T, n, _ = Bm.shape
    X = np.empty((N, T + 1, n))
    X[:, 0] = x0
    for b in range(N):
        for k in range(T):
            X[b, k + 1] = A[b, k] @ X[b, k] + Bm[b, k] @ U[b, k] + c[b, k]
    return X


@pytest.mark.parametrize("time_varying", [False, True])
def test_per_sample_and_time_varying_against_numpy(rng, time_varying):
    N, T, n = 40, 6, 2
    lead = (N, T) if time_varying else (N,)
    A = np.eye(n) + 0.2 * rng.standard_normal(lead + (n, n))
    Bm = rng.standard_normal(lead + (n, 1))
    c = 0.1 * rng.standard_normal(lead + (n,))
    cls = trajloss.TimeVaryingSystem if time_varying else trajloss.LinearSystem
    system = cls(A, Bm, dt=0.25, offset=c)
    data = trajloss.make_dataset(system, N, T, x0_low=[-1, -1], x0_high=[1, 1], seed=1)
    cal = trajloss.calibrate(system, data, control_bound=2.0, seed=5)
    U = np.random.default_rng(5).uniform(-2.0, 2.0, size=data.controls.shape)
    if not time_varying:
        A, Bm, c = (np.broadcast_to(a[:, None], (N, T) + a.shape[1:]) for a in (A, Bm, c))
    X = loop_rollout(A, Bm, c, data.x0, U)
    assert cal.control_mse == pytest.approx(float(np.mean((U - data.controls) ** 2)), rel=1e-12)
    assert cal.trajectory_mse == pytest.approx(float(np.mean((X - data.states) ** 2)), rel=1e-10)


def test_mismatched_system_names_system(rng, di_data):
    Ad, Bd = di_matrices(DT)
    per_sample = trajloss.LinearSystem(np.stack([Ad] * 3), Bd)
    with pytest.raises(ValueError, match=r"system holds B = 3.*N = 400"):
        trajloss.calibrate(per_sample, di_data)
    tv = trajloss.TimeVaryingSystem(np.stack([Ad] * 7), np.stack([Bd] * 7))
    with pytest.raises(ValueError, match=r"system is time-varying over T = 7.*T = 15"):
        trajloss.calibrate(tv, di_data)
