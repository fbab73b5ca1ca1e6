"""make_dataset / Dataset.save / Dataset.load against independent references
(pseudo-inverse minimum-norm controls, closed-form double integrator, plain
NumPy rollouts)."""

import json
import math

import numpy as np
import pytest

import trajloss
from reference_helpers import (
    di_law_coefficients,
    di_matrices,
    di_state,
    min_norm_controls,
    rollout,
)

DT = 1.0 / 3.0
ARRAYS = ("x0", "xf", "controls", "states", "final_error", "energy")
META = ("method", "dt", "control_bound", "resampled", "seed")

TRIPLE_A = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
TRIPLE_B = np.array([[0.0], [0.0], [1.0]])


def scale_of(*arrays):
    return max([1.0] + [float(np.max(np.abs(a))) for a in arrays])


def assert_same_dataset(a, b):
    for k in ARRAYS:
        x, y = getattr(a, k), getattr(b, k)
        assert x.shape == y.shape and x.dtype == y.dtype, k
        assert np.array_equal(x, y), k
    for k in META:
        assert getattr(a, k) == getattr(b, k), k


# --------------------------------------------------------------------------
# Contents
# --------------------------------------------------------------------------


def test_double_integrator_defaults_follow_seed000():
    system = trajloss.DoubleIntegrator()
    data = trajloss.make_dataset(system, 300)
    assert len(data) == 300
    assert data.method == "exact" and data.seed == 0
    assert data.control_bound == 8.0
    assert data.dt == pytest.approx(DT, rel=1e-15)
    assert data.x0.shape == (300, 2) and data.xf.shape == (300, 2)
    assert data.controls.shape == (300, 15, 1) and data.states.shape == (300, 16, 2)
    assert data.final_error.shape == (300,) and data.energy.shape == (300,)
    assert data.steps == 15
    assert np.all(data.x0 >= [-10.0, -5.0]) and np.all(data.x0 <= [10.0, 5.0])
    # spread over the whole box (uniform draws), not a corner of it
    assert data.x0[:, 0].min() < -8 and data.x0[:, 0].max() > 8
    assert data.x0[:, 1].min() < -4 and data.x0[:, 1].max() > 4
    assert np.all(data.xf == 0.0)
    assert np.all(np.abs(data.controls) <= 8.0)


def test_exact_dataset_contents_against_closed_forms():
    system = trajloss.DoubleIntegrator()
    data = trajloss.make_dataset(system, 200, seed=3)
    Ad, Bd = di_matrices(DT)
    U_star = min_norm_controls(Ad, Bd, data.x0, data.xf, 15)
    np.testing.assert_allclose(data.controls, U_star, rtol=0, atol=1e-10 * scale_of(U_star))
    X = rollout(Ad, Bd, data.x0, data.controls)
    scale = scale_of(X)
    np.testing.assert_allclose(data.states, X, rtol=0, atol=1e-12 * scale)
    assert np.array_equal(data.states[:, 0], data.x0)
    np.testing.assert_allclose(data.final_error, np.linalg.norm(X[:, -1] - data.xf, axis=1),
                               rtol=0, atol=1e-11 * scale)
    assert np.all(data.final_error <= 1e-10 * scale)
    np.testing.assert_allclose(data.energy, np.sum(data.controls ** 2, axis=(1, 2)) * DT,
                               rtol=1e-12)


@pytest.mark.parametrize("method", ["average", "continuous"])
def test_average_and_continuous_datasets_against_closed_form(method):
    system = trajloss.DoubleIntegrator()
    data = trajloss.make_dataset(system, 100, method=method, seed=5, target=[1.0, -0.5])
    assert data.method == method
    assert np.all(data.xf == [1.0, -0.5])
    H = 15 * DT
    a, b = di_law_coefficients(data.x0, data.xf, H)
    k = np.arange(15)
    U = (a[:, None] + b[:, None] * (k + 0.5) * DT)[:, :, None]
    np.testing.assert_allclose(data.controls, U, rtol=0, atol=1e-12 * scale_of(U))
    Ad, Bd = di_matrices(DT)
    Xz = rollout(Ad, Bd, data.x0, U)
    if method == "average":
        expected = Xz
    else:
        expected = np.stack([di_state(data.x0, a, b, j * DT) for j in range(16)], axis=1)
    np.testing.assert_allclose(data.states, expected, rtol=0, atol=1e-12 * scale_of(expected))
    np.testing.assert_allclose(data.final_error, np.abs(b) * H * DT ** 2 / 12, rtol=0,
                               atol=1e-11 * scale_of(Xz))
    assert np.all(np.abs(data.controls) <= 8.0)


def test_generic_system_dataset():
    system = trajloss.LinearSystem.from_continuous(TRIPLE_A, TRIPLE_B, 0.2)
    low, high = np.array([-1.0, -0.5, -0.2]), np.array([1.0, 0.5, 0.2])
    targets = np.random.default_rng(1).uniform(-0.1, 0.1, size=(40, 3))
    data = trajloss.make_dataset(system, 40, 12, x0_low=low, x0_high=high, target=targets,
                                 seed=9)
    assert data.controls.shape == (40, 12, 1) and data.states.shape == (40, 13, 3)
    assert np.all(data.x0 >= low) and np.all(data.x0 <= high)
    assert np.array_equal(data.xf, targets)
    assert data.control_bound is None and data.resampled == 0 and data.dt == 0.2
    # independent ZOH of the chain: Ad = I + A h + A^2 h^2/2, Bd = [h^3/6, h^2/2, h]
    h = 0.2
    Ad = np.eye(3) + TRIPLE_A * h + TRIPLE_A @ TRIPLE_A * h * h / 2
    Bd = np.array([[h ** 3 / 6], [h * h / 2], [h]])
    U_star = min_norm_controls(Ad, Bd, data.x0, data.xf, 12)
    np.testing.assert_allclose(data.controls, U_star, rtol=0, atol=1e-9 * scale_of(U_star))
    X = rollout(Ad, Bd, data.x0, data.controls)
    np.testing.assert_allclose(data.states, X, rtol=0, atol=1e-11 * scale_of(X))
    assert np.max(np.abs(X[:, -1] - data.xf)) <= 1e-10 * scale_of(X)


def test_discrete_system_dataset_has_no_dt():
    Ad = np.array([[0.9, 0.2], [-0.1, 0.8]])
    Bd = np.array([[0.0], [1.0]])
    system = trajloss.LinearSystem(Ad, Bd)
    data = trajloss.make_dataset(system, 20, 6, x0_low=[-1, -1], x0_high=[1, 1])
    assert data.dt is None
    X = rollout(Ad, Bd, data.x0, data.controls)
    assert np.max(np.abs(X[:, -1])) <= 1e-10 * scale_of(X)
    np.testing.assert_allclose(data.energy, np.sum(data.controls ** 2, axis=(1, 2)), rtol=1e-12)


# --------------------------------------------------------------------------
# Seeds
# --------------------------------------------------------------------------


@pytest.mark.parametrize("bound", [None, 3.0])
def test_same_seed_identical_different_seed_different(bound):
    system = trajloss.DoubleIntegrator()
    kw = {} if bound is None else {"control_bound": bound}
    a = trajloss.make_dataset(system, 150, seed=42, **kw)
    b = trajloss.make_dataset(system, 150, seed=42, **kw)
    assert_same_dataset(a, b)
    c = trajloss.make_dataset(system, 150, seed=43, **kw)
    assert c.seed == 43
    assert not np.array_equal(a.x0, c.x0)
    assert not np.array_equal(a.controls, c.controls)
    assert not np.array_equal(a.states, c.states)
    # no two samples share an initial state
    assert len(np.unique(a.x0[:, 0])) == 150


def test_dataset_depends_only_on_its_arguments():
    """A dataset depends only on its arguments: repeated calls interleaved with
    other random activity give the same arrays."""
    system = trajloss.DoubleIntegrator()
    a = trajloss.make_dataset(system, 50, seed=7)
    np.random.seed(123)
    np.random.default_rng(0).uniform(size=1000)
    trajloss.make_dataset(system, 10, seed=8)
    b = trajloss.make_dataset(system, 50, seed=7)
    assert_same_dataset(a, b)


# --------------------------------------------------------------------------
# Control bound
# --------------------------------------------------------------------------


def test_tight_control_bound_resamples():
    system = trajloss.DoubleIntegrator()
    N, bound = 1000, 2.0
    data = trajloss.make_dataset(system, N, control_bound=bound, seed=1)
    assert data.control_bound == bound
    assert data.resampled > 0
    assert np.all(np.abs(data.controls) <= bound)
    assert np.all(data.x0 >= [-10.0, -5.0]) and np.all(data.x0 <= [10.0, 5.0])
    # the stored references are still the minimum-energy ones of the stored x0
    Ad, Bd = di_matrices(DT)
    U_star = min_norm_controls(Ad, Bd, data.x0, data.xf, 15)
    np.testing.assert_allclose(data.controls, U_star, rtol=0, atol=1e-10 * scale_of(U_star))
    np.testing.assert_allclose(data.states, rollout(Ad, Bd, data.x0, data.controls), rtol=0,
                               atol=1e-11 * scale_of(data.states))
    # the number of rejected draws matches the rejection probability of the box,
    # estimated independently by Monte Carlo on the closed-form controls
    rng = np.random.default_rng(2024)
    probe = rng.uniform([-10.0, -5.0], [10.0, 5.0], size=(40000, 2))
    U = min_norm_controls(Ad, Bd, probe, np.zeros(2), 15)
    p = float(np.mean(np.abs(U).max(axis=(1, 2)) > bound))
    assert 0.05 < p < 0.95
    observed = data.resampled / (N + data.resampled)
    assert abs(observed - p) < 0.06, (observed, p)


def test_infinite_bound_disables_resampling():
    """An infinite bound disables resampling; the default bound 8 holds."""
    system = trajloss.DoubleIntegrator()
    data = trajloss.make_dataset(system, 500, control_bound=float("inf"), seed=2)
    assert data.resampled == 0
    assert math.isinf(data.control_bound)
    bounded = trajloss.make_dataset(system, 500, seed=2)
    assert np.all(np.abs(bounded.controls) <= 8.0)


def test_impossible_bound_raises():
    system = trajloss.DoubleIntegrator()
    with pytest.raises(ValueError):
        # steering from x0 = (10, 5) to the origin needs far more than 1e-6
        trajloss.make_dataset(system, 5, x0_low=[9.0, 4.0], x0_high=[10.0, 5.0],
                              control_bound=1e-6)


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["exact", "average"])
def test_save_load_round_trip(tmp_path, method):
    system = trajloss.DoubleIntegrator()
    data = trajloss.make_dataset(system, 60, method=method, seed=11, control_bound=3.0)
    path = tmp_path / "data.npz"
    data.save(path)
    loaded = trajloss.Dataset.load(path)
    assert_same_dataset(data, loaded)
    assert loaded.steps == 15 and len(loaded) == 60
    # str paths too
    loaded2 = trajloss.Dataset.load(str(path))
    assert_same_dataset(data, loaded2)


def test_save_load_round_trip_without_dt_or_bound(tmp_path):
    system = trajloss.LinearSystem(np.array([[1.0, 0.1], [0.0, 1.0]]), np.array([[0.0], [0.1]]))
    data = trajloss.make_dataset(system, 10, 5, x0_low=[-1, -1], x0_high=[1, 1], seed=4)
    path = tmp_path / "discrete.npz"
    data.save(path)
    loaded = trajloss.Dataset.load(path)
    assert loaded.dt is None and loaded.control_bound is None
    assert_same_dataset(data, loaded)


def test_load_truncated_file(tmp_path):
    data = trajloss.make_dataset(trajloss.DoubleIntegrator(), 30)
    path = tmp_path / "full.npz"
    data.save(path)
    raw = path.read_bytes()
    for cut in (len(raw) // 2, 10, len(raw) - 1):
        bad = tmp_path / f"cut{cut}.npz"
        bad.write_bytes(raw[:cut])
        with pytest.raises(ValueError):
            trajloss.Dataset.load(bad)


def test_load_foreign_npz(tmp_path):
    path = tmp_path / "foreign.npz"
    np.savez(path, a=np.arange(3), b=np.ones((2, 2)))
    with pytest.raises(ValueError):
        trajloss.Dataset.load(path)
    # a file that looks like ours but lacks arrays
    path2 = tmp_path / "partial.npz"
    np.savez(path2, format=np.array("trajloss-dataset-1"), x0=np.zeros((2, 2)))
    with pytest.raises(ValueError):
        trajloss.Dataset.load(path2)


def test_load_plain_npy_array(tmp_path):
    """Dataset.load documents ValueError for anything that is not a dataset;
    a plain .npy array is not one."""
    path3 = tmp_path / "array.npy"
    np.save(path3, np.arange(5))
    with pytest.raises(ValueError):
        trajloss.Dataset.load(path3)


def test_load_inconsistent_lengths(tmp_path):
    data = trajloss.make_dataset(trajloss.DoubleIntegrator(), 8)
    good = tmp_path / "good.npz"
    data.save(good)
    with np.load(good) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["energy"] = arrays["energy"][:5]
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    with pytest.raises(ValueError):
        trajloss.Dataset.load(bad)


def test_load_text_and_missing_files(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("this is not a dataset\n" * 20)
    with pytest.raises(ValueError):
        trajloss.Dataset.load(path)
    jpath = tmp_path / "data.npz"
    jpath.write_text(json.dumps({"x0": [[1, 2]]}))
    with pytest.raises(ValueError):
        trajloss.Dataset.load(jpath)
    with pytest.raises(ValueError):
        trajloss.Dataset.load(tmp_path / "does_not_exist.npz")
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(ValueError):
        trajloss.Dataset.load(empty)


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [0, -1])
def test_bad_steps(steps):
    with pytest.raises(ValueError):
        trajloss.make_dataset(trajloss.DoubleIntegrator(), 5, steps)


@pytest.mark.parametrize("bound", [0.0, -1.0, -np.inf, np.nan])
def test_bad_control_bound(bound):
    with pytest.raises(ValueError):
        trajloss.make_dataset(trajloss.DoubleIntegrator(), 5, control_bound=bound)


def test_low_above_high():
    with pytest.raises(ValueError):
        trajloss.make_dataset(trajloss.DoubleIntegrator(), 5, x0_low=[1.0, 0.0],
                              x0_high=[0.0, 1.0])
    with pytest.raises(ValueError):
        trajloss.make_dataset(trajloss.DoubleIntegrator(), 5, x0_low=[-1.0, 2.0],
                              x0_high=[1.0, 1.0])


@pytest.mark.parametrize("which", ["low", "high"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_box(which, bad):
    low, high = [-1.0, -1.0], [1.0, 1.0]
    (low if which == "low" else high)[0] = bad
    with pytest.raises(ValueError):
        trajloss.make_dataset(trajloss.DoubleIntegrator(), 5, x0_low=low, x0_high=high)


def test_wrong_box_shape():
    with pytest.raises(ValueError):
        trajloss.make_dataset(trajloss.DoubleIntegrator(), 5, x0_low=[-1.0, -1.0, -1.0],
                              x0_high=[1.0, 1.0, 1.0])


@pytest.mark.parametrize("target", [np.nan, [0.0, np.nan], np.inf])
def test_non_finite_target(target):
    with pytest.raises(ValueError):
        trajloss.make_dataset(trajloss.DoubleIntegrator(), 5, target=target)


def test_non_finite_target_in_batch():
    targets = np.zeros((5, 2))
    targets[3, 1] = np.nan
    with pytest.raises(ValueError):
        trajloss.make_dataset(trajloss.DoubleIntegrator(), 5, target=targets)


def test_unknown_method():
    with pytest.raises(ValueError):
        trajloss.make_dataset(trajloss.DoubleIntegrator(), 5, method="midpoint")


@pytest.mark.parametrize("size", [0, -3])
def test_bad_size(size):
    with pytest.raises(ValueError):
        trajloss.make_dataset(trajloss.DoubleIntegrator(), size)


def test_generic_system_requires_box_and_steps():
    system = trajloss.LinearSystem.from_continuous(TRIPLE_A, TRIPLE_B, 0.2)
    with pytest.raises(ValueError):
        trajloss.make_dataset(system, 5)
    with pytest.raises(ValueError):
        trajloss.make_dataset(system, 5, 10, x0_low=[-1, -1, -1])


def test_uncontrollable_dataset():
    system = trajloss.LinearSystem.from_continuous(np.zeros((2, 2)), np.array([[1.0], [0.0]]), 0.1)
    with pytest.raises(np.linalg.LinAlgError, match="condition number"):
        trajloss.make_dataset(system, 5, 10, x0_low=[-1, -1], x0_high=[1, 1])


def test_average_on_discrete_system():
    system = trajloss.LinearSystem(np.eye(2) + np.array([[0.0, 0.1], [0.0, 0.0]]),
                                   np.array([[0.0], [0.1]]), dt=0.1)
    with pytest.raises(ValueError):
        trajloss.make_dataset(system, 5, 10, x0_low=[-1, -1], x0_high=[1, 1], method="average")


def test_absurd_size_is_a_value_error_naming_size():
    import trajloss
    with pytest.raises(ValueError, match=r"\bsize\b"):
        trajloss.make_dataset(trajloss.DoubleIntegrator(), 2**70)


# --------------------------------------------------------------------------
# Every form of system
# --------------------------------------------------------------------------


def loop_min_norm(A, Bm, c, x0, xf):
    """Sample b's minimum-norm controls of C U = xf - Phi(T,0) x0 - sum Phi(T,k+1) c_k,
    C = [Phi(T,1) B_0 ... B_{T-1}] built here (A, Bm, c: (N, T, ...)), by lstsq."""
    N, T, n, m = Bm.shape
    U = np.empty((N, T, m))
    for b in range(N):
        Phi = [None] * (T + 1)
        Phi[T] = np.eye(n)
        for k in range(T - 1, -1, -1):
            Phi[k] = Phi[k + 1] @ A[b, k]
        C = np.hstack([Phi[k + 1] @ Bm[b, k] for k in range(T)])
        d = xf[b] - Phi[0] @ x0[b] - sum(Phi[k + 1] @ c[b, k] for k in range(T))
        U[b] = np.linalg.lstsq(C, d, rcond=None)[0].reshape(T, m)
    return U


def loop_rollout(A, Bm, c, x0, U):
    N, T, n, _ = Bm.shape
    X = np.empty((N, T + 1, n))
    X[:, 0] = x0
    for b in range(N):
        for k in range(T):
            X[b, k + 1] = A[b, k] @ X[b, k] + Bm[b, k] @ U[b, k] + c[b, k]
    return X


def per_sample_system(seed, N, T=None, offset=True):
    """A per-sample (and time-varying when T is given) system with offsets,
    and its arrays expanded to (N, T, ...) for the loops here."""
    rng = np.random.default_rng(seed)
    lead = (N,) if T is None else (N, T)
    A = rng.standard_normal(lead + (2, 2)) * 0.3 + np.eye(2)
    Bm = rng.standard_normal(lead + (2, 1))
    c = rng.standard_normal(lead + (2,)) * 0.1 if offset else None
    if T is None:
        system = trajloss.LinearSystem(A, Bm, dt=0.5, offset=c)
        T = 6
        A, Bm = (np.broadcast_to(a[:, None], (N, T) + a.shape[1:]) for a in (A, Bm))
        cc = np.broadcast_to(c[:, None], (N, T, 2)) if offset else np.zeros((N, T, 2))
    else:
        system = trajloss.TimeVaryingSystem(A, Bm, dt=0.5, offset=c)
        cc = c if offset else np.zeros((N, T, 2))
    return system, A, Bm, cc, T


@pytest.mark.parametrize("time_varying", [False, True])
def test_per_sample_dataset_against_numpy(time_varying):
    N = 60
    system, A, Bm, c, T = per_sample_system(3, N, 7 if time_varying else None)
    data = trajloss.make_dataset(system, N, T, x0_low=[-1, -1], x0_high=[1, 1], target=[0.5, 0],
                                 seed=4)
    U = loop_min_norm(A, Bm, c, data.x0, data.xf)
    np.testing.assert_allclose(data.controls, U, rtol=0, atol=1e-9 * scale_of(U))
    X = loop_rollout(A, Bm, c, data.x0, data.controls)
    np.testing.assert_allclose(data.states, X, rtol=0, atol=1e-12 * scale_of(X))
    assert np.max(np.abs(X[:, -1] - data.xf)) <= 1e-10 * scale_of(X)
    np.testing.assert_allclose(data.energy, 0.5 * np.sum(data.controls ** 2, axis=(1, 2)),
                               rtol=1e-12)


def test_time_varying_dataset_steps_default_and_shared(rng):
    """A shared time-varying system with an offset: steps defaults to its T."""
    T = 9
    A = np.eye(2) + 0.2 * rng.standard_normal((T, 2, 2))
    Bm = rng.standard_normal((T, 2, 1))
    c = 0.1 * rng.standard_normal((T, 2))
    system = trajloss.TimeVaryingSystem(A, Bm, offset=c)
    data = trajloss.make_dataset(system, 30, x0_low=[-1, -1], x0_high=[1, 1], seed=2)
    assert data.steps == T and data.dt is None
    N = 30
    Ae, Be, ce = (np.broadcast_to(a, (N,) + a.shape) for a in (A, Bm, c))
    U = loop_min_norm(Ae, Be, ce, data.x0, data.xf)
    np.testing.assert_allclose(data.controls, U, rtol=0, atol=1e-9 * scale_of(U))
    X = loop_rollout(Ae, Be, ce, data.x0, data.controls)
    assert np.max(np.abs(X[:, -1])) <= 1e-10 * scale_of(X)


def test_per_sample_resampling_keeps_each_sample_its_system():
    """Redrawn samples keep their own system: every stored reference is the
    minimum-norm one of its sample's system, including the redrawn ones."""
    N = 200
    system, A, Bm, c, T = per_sample_system(5, N, offset=False)
    free = trajloss.make_dataset(system, N, T, x0_low=[-3, -3], x0_high=[3, 3], seed=1)
    bound = float(np.quantile(np.abs(free.controls).max(axis=(1, 2)), 0.8))
    data = trajloss.make_dataset(system, N, T, x0_low=[-3, -3], x0_high=[3, 3],
                                 control_bound=bound, seed=1)
    assert data.resampled > 0 and np.all(np.abs(data.controls) <= bound)
    U = loop_min_norm(A, Bm, c, data.x0, data.xf)
    np.testing.assert_allclose(data.controls, U, rtol=0, atol=1e-9 * scale_of(U))


def test_per_sample_continuous_dataset_with_progress_chunks(monkeypatch):
    """from_continuous with one dt per sample, made in chunks (a progress bar's
    path): each sample is its own double integrator's closed form."""
    pytest.importorskip("tqdm")
    from trajloss import datasets
    monkeypatch.setattr(datasets, "_CHUNK", 7)
    N = 20
    dts = np.linspace(0.1, 0.5, N)
    system = trajloss.LinearSystem.from_continuous([[0.0, 1.0], [0.0, 0.0]], [[0.0], [1.0]], dts)
    data = trajloss.make_dataset(system, N, 15, x0_low=[-1, -1], x0_high=[1, 1],
                                 method="average", seed=3, progress=True)
    for b in range(N):
        a, bb = di_law_coefficients(data.x0[b], np.zeros(2), 15 * dts[b])
        mid = (np.arange(15) + 0.5) * dts[b]
        np.testing.assert_allclose(data.controls[b, :, 0], a + bb * mid, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(data.dt, dts)


def test_per_sample_dt_round_trip(tmp_path):
    dts = np.array([0.1, 0.2, 0.3])
    system = trajloss.LinearSystem.from_continuous([[0.0, 1.0], [0.0, 0.0]], [[0.0], [1.0]], dts)
    data = trajloss.make_dataset(system, 3, 6, x0_low=[-1, -1], x0_high=[1, 1])
    path = tmp_path / "ps.npz"
    data.save(path)
    back = trajloss.Dataset.load(path)
    np.testing.assert_array_equal(back.dt, dts)
    for k in ARRAYS:
        assert np.array_equal(getattr(back, k), getattr(data, k)), k
    np.savez(tmp_path / "bad.npz", **{k: v for k, v in np.load(path).items() if k != "dt"},
             dt=np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match=r"dt.*\(3,\)"):
        trajloss.Dataset.load(tmp_path / "bad.npz")


def test_per_sample_size_mismatch_names_system():
    system, *_ = per_sample_system(1, 10)
    with pytest.raises(ValueError, match=r"system holds B = 10.*size = 12"):
        trajloss.make_dataset(system, 12, 6, x0_low=[-1, -1], x0_high=[1, 1])


def test_time_varying_steps_mismatch_names_system():
    system, *_ = per_sample_system(1, 10, 7)
    with pytest.raises(ValueError, match=r"system is time-varying over T = 7.*steps = 6"):
        trajloss.make_dataset(system, 10, 6, x0_low=[-1, -1], x0_high=[1, 1])


def test_time_varying_continuous_methods_name_system():
    system, *_ = per_sample_system(1, 10, 7)
    with pytest.raises(ValueError, match="system"):
        trajloss.make_dataset(system, 10, 7, x0_low=[-1, -1], x0_high=[1, 1], method="average")
