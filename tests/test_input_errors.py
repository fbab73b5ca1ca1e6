"""Bad input to the Python API gets a clear exception naming the argument (or
the file's key) and what was expected; nothing is allocated on a file's
word, nothing degenerate comes back as inf or NaN, and strategy state
round-trips exactly.

Dataset.load, calibrate, the weighting strategies, the NumPy losses' weight
checks, and the package's import graph."""

import ast
import json
import math
import os
import pickle
import subprocess
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest

import trajloss
from npy_helpers import npy_member
from trajloss import weighting

PACKAGE = os.path.dirname(os.path.abspath(trajloss.__file__))
ARRAYS = ("x0", "xf", "controls", "states", "final_error", "energy")
HUGE_INT = 10**400


# --------------------------------------------------------------------------
# Dataset.load
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A valid dataset file and its arrays (as np.load reads them)."""
    path = tmp_path_factory.mktemp("ds") / "good.npz"
    data = trajloss.make_dataset(trajloss.DoubleIntegrator(), 12, seed=3)
    data.save(path)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    return data, path, arrays


def write_npz(tmp_path, arrays, name="bad.npz"):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def changed(arrays, **changes):
    out = dict(arrays)
    out.update(changes)
    return out


def test_valid_round_trip_is_unchanged(saved, tmp_path):
    """Every array bit for bit, every field equal, against what np.load reads
    from the same file (an independent reader)."""
    data, path, arrays = saved
    loaded = trajloss.Dataset.load(path)
    for k in ARRAYS:
        a = getattr(loaded, k)
        assert a.dtype == arrays[k].dtype and a.shape == arrays[k].shape
        assert np.array_equal(a, arrays[k]) and np.array_equal(a, getattr(data, k))
    assert (loaded.method, loaded.dt, loaded.control_bound, loaded.resampled, loaded.seed) == (
        str(arrays["method"]), float(arrays["dt"]), float(arrays["control_bound"]),
        int(arrays["resampled"]), int(arrays["seed"]))
    # and a dataset saved again from the loaded one is the same file content
    again = tmp_path / "again.npz"
    loaded.save(again)
    with np.load(again) as f:
        assert sorted(f.files) == sorted(arrays)
        for k in f.files:
            assert np.array_equal(f[k], arrays[k], equal_nan=arrays[k].dtype.kind == "f"), k


@pytest.mark.parametrize("seed", [None, 2**70, 2**63 - 1, 0])
def test_any_integer_or_no_seed_round_trips(tmp_path, seed):
    """seed=None and seeds beyond int64 used to be pickled by save and then
    refused by load: the dataset was written but could not be read back."""
    data = trajloss.make_dataset(trajloss.DoubleIntegrator(), 4, seed=seed)
    path = tmp_path / "seeded.npz"
    data.save(path)
    loaded = trajloss.Dataset.load(path)
    assert loaded.seed == seed and type(loaded.seed) is type(seed)
    for k in ARRAYS:
        assert np.array_equal(getattr(loaded, k), getattr(data, k))


def test_unsaveable_seed_is_refused_before_writing(tmp_path):
    data = trajloss.make_dataset(trajloss.DoubleIntegrator(), 4,
                                 seed=np.random.SeedSequence(5))
    path = tmp_path / "never.npz"
    with pytest.raises(TypeError, match="seed must be an integer >= 0 or None"):
        data.save(path)
    assert not path.exists()


def test_float32_dataset_round_trips(saved, tmp_path):
    data, _, arrays = saved
    small = changed(arrays, **{k: arrays[k].astype(np.float32) for k in ARRAYS})
    loaded = trajloss.Dataset.load(write_npz(tmp_path, small))
    for k in ARRAYS:
        assert getattr(loaded, k).dtype == np.float32
        assert np.array_equal(getattr(loaded, k), small[k])


@pytest.mark.parametrize("key,make,words", [
    ("states", lambda a: a["states"][:, :-1], ["states", "(N, T+1, n)"]),       # wrong T
    ("states", lambda a: a["states"][:, :, :1], ["states", "(N, T+1, n)"]),     # wrong n
    ("xf", lambda a: np.zeros((a["xf"].shape[0], 3)), ["xf", "(N, n)"]),         # xf of another n
    ("controls", lambda a: a["controls"][:, :, 0], ["controls", "(N, T, m)"]),   # 2-D controls
    ("controls", lambda a: np.where(np.arange(a["controls"].size).reshape(a["controls"].shape) == 5,
                                    np.nan, a["controls"]), ["controls", "finite", "nan"]),
    ("states", lambda a: np.full_like(a["states"], np.inf), ["states", "finite"]),
    ("controls", lambda a: a["controls"].astype(str), ["controls", "float"]),    # string array
    ("x0", lambda a: a["x0"].astype(np.int64), ["x0", "float"]),
    ("x0", lambda a: a["x0"].astype(np.complex128), ["x0", "float"]),
    ("x0", lambda a: a["x0"][:0], ["x0"]),
    ("x0", lambda a: a["x0"][0], ["x0", "(N, n)"]),
    ("energy", lambda a: a["energy"][:5], ["energy", "(N,)", "N = 12"]),       # batches differ
    ("xf", lambda a: a["xf"][:7], ["xf", "N = 12"]),
    ("energy", lambda a: -a["energy"], ["energy", ">= 0"]),
    ("method", lambda a: np.array("magic"), ["method"]),
    ("method", lambda a: np.array(3), ["method"]),
    ("dt", lambda a: np.array(-1.0), ["dt"]),
    ("dt", lambda a: np.array([0.1, 0.2]), ["dt"]),
    ("dt", lambda a: np.array("0.1"), ["dt"]),
    ("control_bound", lambda a: np.array(0.0), ["control_bound"]),
    ("resampled", lambda a: np.array(-2), ["resampled"]),
    ("resampled", lambda a: np.array(1.5), ["resampled"]),
    ("seed", lambda a: np.array("x"), ["seed"]),
    ("seed", lambda a: np.array("12a"), ["seed"]),
    ("seed", lambda a: np.array(-3), ["seed", ">= 0"]),
    ("format", lambda a: np.array("trajloss-dataset-2"), ["format"]),
])
def test_inconsistent_files_name_the_key(saved, tmp_path, key, make, words):
    _, _, arrays = saved
    path = write_npz(tmp_path, changed(arrays, **{key: make(arrays)}))
    with pytest.raises(ValueError) as info:
        trajloss.Dataset.load(path)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize("key", ["states", "controls", "final_error", "seed", "method"])
def test_missing_key_is_named(saved, tmp_path, key):
    _, _, arrays = saved
    path = write_npz(tmp_path, {k: v for k, v in arrays.items() if k != key})
    with pytest.raises(ValueError, match=f"missing {key}"):
        trajloss.Dataset.load(path)


def test_unknown_member_is_refused(saved, tmp_path):
    _, _, arrays = saved
    with pytest.raises(ValueError, match="unexpected archive member 'notes.npy'"):
        trajloss.Dataset.load(write_npz(tmp_path, changed(arrays, notes=np.zeros(2))))


def test_object_arrays_are_refused_without_unpickling(saved, tmp_path):
    _, _, arrays = saved
    path = write_npz(tmp_path, changed(arrays, method=np.array(["exact", None], dtype=object)))
    with pytest.raises(ValueError, match="method: object arrays"):
        trajloss.Dataset.load(path)


def forged_zip(path, arrays, key, data, shape, compression=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", compression) as z:
        for k, v in arrays.items():
            z.writestr(k + ".npy", npy_member(data, shape) if k == key else npy_member(v))


def test_forged_header_is_refused_before_allocating(saved, tmp_path):
    """A 9 MiB member whose header claims 2 GiB: refused from the header, and
    nothing near that size is allocated (peak traced memory)."""
    _, _, arrays = saved
    path = tmp_path / "forged.npz"
    forged_zip(path, arrays, "states", np.zeros(9 * 2**20 // 8), (2**28,))
    assert os.path.getsize(path) < 100_000  # deflated zeros
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as info:
            trajloss.Dataset.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert "states" in message and "2147483648" in message and str(9 * 2**20) in message
    assert peak < 32 * 2**20, peak


@pytest.mark.parametrize("shape", [(2**62,), (2**31, 2**31, 2**31), (12, 16, 2, 10**30)])
def test_absurd_header_shapes(saved, tmp_path, shape):
    _, _, arrays = saved
    path = tmp_path / "absurd.npz"
    forged_zip(path, arrays, "states", np.zeros(4), shape, zipfile.ZIP_STORED)
    with pytest.raises(ValueError, match="states: the header claims"):
        trajloss.Dataset.load(path)


def test_max_bytes_limit(saved, tmp_path):
    """max_bytes bounds the sum of the arrays' bytes, checked from headers."""
    data, path, arrays = saved
    need = sum(a.nbytes for a in arrays.values())  # every member's data bytes
    loaded = trajloss.Dataset.load(path, max_bytes=need)
    assert np.array_equal(loaded.states, data.states)
    with pytest.raises(ValueError, match=f"max_bytes={need - 1}"):
        trajloss.Dataset.load(path, max_bytes=need - 1)
    assert trajloss.Dataset.load(path, max_bytes=None).energy.shape == (12,)
    assert trajloss.datasets.DEFAULT_MAX_BYTES == 4 * 2**30
    for bad in (-1, 1.5, "10", True):
        with pytest.raises(ValueError, match="max_bytes"):
            trajloss.Dataset.load(path, max_bytes=bad)


def test_honest_but_large_deflated_member_respects_max_bytes(saved, tmp_path):
    """A member that really is 64 MiB uncompressed (tiny deflated) is refused
    by a smaller limit before it is inflated."""
    _, _, arrays = saved
    path = tmp_path / "bomb.npz"
    big = np.zeros(8 * 2**20)  # 64 MiB
    forged_zip(path, arrays, "states", big, None)
    assert os.path.getsize(path) < 2**20
    with pytest.raises(ValueError, match="states: the arrays need"):
        trajloss.Dataset.load(path, max_bytes=2**20)


def test_corrupt_member_names_the_file(saved, tmp_path):
    _, path, _ = saved
    raw = bytearray(path.read_bytes())
    raw[200:260] = b"\xff" * 60  # inside the first member's data
    bad = tmp_path / "corrupt.npz"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupt.npz"):
        trajloss.Dataset.load(bad)


def test_fifo_and_directory_do_not_block(tmp_path):
    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="regular file"):
        trajloss.Dataset.load(fifo)
    with pytest.raises(ValueError, match="directory"):
        trajloss.Dataset.load(tmp_path)


def test_path_is_escaped_in_messages(tmp_path):
    with pytest.raises(ValueError) as info:
        trajloss.Dataset.load(tmp_path / "\x1b[2Jgone.npz")
    assert "\x1b" not in str(info.value) and "\\x1b[2Jgone.npz" in str(info.value)


# --------------------------------------------------------------------------
# calibrate on degenerate data
# --------------------------------------------------------------------------


def zero_dataset(system, N=6, T=5):
    """References that are all zero: x0 = xf = 0, u = 0 (the exact minimum-
    energy solution, closed form)."""
    n, m = system.n, system.m
    return trajloss.Dataset(np.zeros((N, n)), np.zeros((N, n)), np.zeros((N, T, m)),
                            np.zeros((N, T + 1, n)), np.zeros(N), np.zeros(N))


def test_zero_baseline_on_zero_references_is_degenerate():
    system = trajloss.DoubleIntegrator()
    with pytest.raises(ValueError, match="control and trajectory MSE of the zero baseline is 0"):
        trajloss.calibrate(system, zero_dataset(system), baseline="zero")


def test_zero_trajectory_mse_is_degenerate():
    """B whose second input moves nothing and a dataset whose first input is
    exact: the trajectory MSE is 0 while the control MSE is not."""
    system = trajloss.LinearSystem([[1.0]], [[1.0, 0.0]])
    data = zero_dataset(system)
    data.controls[..., 1] = 1.0  # the zero baseline misses these, the states do not notice
    with pytest.raises(ValueError, match="trajectory MSE of the zero baseline is 0"):
        trajloss.calibrate(system, data, baseline="zero")


def test_underflowing_errors_are_degenerate():
    system = trajloss.DoubleIntegrator()
    with pytest.raises(ValueError, match="MSE of the random baseline is 0"):
        trajloss.calibrate(system, zero_dataset(system), control_bound=1e-300)


@pytest.mark.parametrize("bound", [1e200, 1e300])
def test_overflowing_errors_are_a_value_error(bound):
    system = trajloss.DoubleIntegrator()
    with pytest.warns(RuntimeWarning):  # the core's own overflow warning comes first
        with pytest.raises(ValueError, match="overflow"):
            trajloss.calibrate(system, zero_dataset(system), control_bound=bound)


@pytest.mark.parametrize("bound", [1e308, float(np.finfo(float).max), HUGE_INT])
def test_bound_beyond_the_baselines_range(bound):
    system = trajloss.DoubleIntegrator()
    with pytest.raises(ValueError, match="control_bound"):
        trajloss.calibrate(system, zero_dataset(system), control_bound=bound)


def test_tiny_but_representable_scales_give_finite_numbers():
    """Bound 1e-150: MSEs near 1e-300 are still representable; the result
    agrees with a plain NumPy computation of the control MSE."""
    system = trajloss.DoubleIntegrator()
    data = zero_dataset(system)
    cal = trajloss.calibrate(system, data, control_bound=1e-150, seed=4)
    U = np.random.default_rng(4).uniform(-1e-150, 1e-150, size=data.controls.shape)
    assert cal.control_mse == pytest.approx(np.mean(U**2), rel=1e-12)
    for v in (cal.control_mse, cal.trajectory_mse, cal.ratio, cal.recommended_weight):
        assert math.isfinite(v) and v > 0


def test_breakdown_limits():
    cal = trajloss.Calibration(2.0, 8.0, 4.0, 0.25)
    assert cal.breakdown(np.float64(0.25)) == {"weight": 0.25, "control": 0.5,
                                               "trajectory": 0.5, "total": 4.0}
    assert cal.breakdown(np.array(1.0))["total"] == 10.0  # 0-d arrays are numbers
    with pytest.raises(ValueError, match="weight.*float64"):
        cal.breakdown(HUGE_INT)
    with pytest.raises(ValueError, match="finite total"):
        cal.breakdown(1e308)  # 8e308 overflows
    with pytest.raises(TypeError, match="weight"):
        cal.breakdown("1")
    with pytest.raises(ValueError, match="finite total > 0"):
        trajloss.Calibration(0.0, 0.0, 0.0, 0.0).breakdown(1.0)


# --------------------------------------------------------------------------
# Weighting strategies
# --------------------------------------------------------------------------


@pytest.mark.parametrize("make,name", [
    (lambda: weighting.Fixed(HUGE_INT), "weight"),
    (lambda: weighting.Normalized(HUGE_INT, 1.0), "control_var"),
    (lambda: weighting.Normalized(1.0, 1.0, alpha=-HUGE_INT), "alpha"),
    (lambda: weighting.Curriculum(start=HUGE_INT), "start"),
    (lambda: weighting.Curriculum(ramp=HUGE_INT), "ramp"),
    (lambda: weighting.Curriculum(final=HUGE_INT), "final"),
    (lambda: weighting.Curriculum().weight(epoch=HUGE_INT), "epoch"),
    (lambda: weighting.Adaptive(eps=HUGE_INT), "eps"),
    (lambda: weighting.Adaptive(initial=HUGE_INT), "initial"),
    (lambda: weighting.Adaptive(bounds=(HUGE_INT, HUGE_INT)), "bounds"),
    (lambda: weighting.Adaptive(bounds=(0.0, HUGE_INT)), "bounds"),
    (lambda: weighting.Adaptive().observe(HUGE_INT, 1.0), "control"),
    (lambda: weighting.Adaptive().observe(1.0, HUGE_INT), "trajectory"),
    (lambda: weighting.Calibrated(trajloss.Calibration(1.0, 1.0, 1.0, 1.0), scale=HUGE_INT),
     "scale"),
    (lambda: weighting.make(HUGE_INT), "weight"),
])
def test_huge_integers_name_the_argument_and_the_limit(make, name):
    with pytest.raises(ValueError) as info:
        make()
    message = str(info.value)
    assert name in message and "1.798e+308" in message, message
    assert "int too large" not in message


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_calibrated_refuses_a_broken_calibration(bad):
    with pytest.raises(ValueError, match="recommended_weight"):
        weighting.Calibrated(trajloss.Calibration(1.0, 1.0, 1.0, bad))
    with pytest.raises(ValueError, match="scale \\* calibration.recommended_weight"):
        weighting.Calibrated(trajloss.Calibration(1.0, 1.0, 1.0, 1e300), scale=1e10)


def test_adaptive_refuses_negative_losses():
    """A negative 'loss' could make trajectory + eps zero: 1/(−1e-8 + 1e-8)."""
    s = weighting.Adaptive()
    with pytest.raises(ValueError, match="trajectory must be a loss value >= 0"):
        s.observe(1.0, -1e-8)
    with pytest.raises(ValueError, match="control"):
        s.observe(-1.0, 1.0)
    assert s.state_dict() == {"control": None, "trajectory": None, "count": 0}


GOOD_STATE = {"control": 0.5, "trajectory": 2.0, "count": 3}


@pytest.mark.parametrize("state,error,words", [
    ({"control": 0.5, "trajectory": 2.0}, ValueError, ["missing", "'count'"]),
    ({"count": 3}, ValueError, ["missing", "'control'", "'trajectory'"]),
    (dict(GOOD_STATE, extra=1), ValueError, ["unknown", "'extra'"]),
    (dict(GOOD_STATE, count=-1), ValueError, ["count", ">= 0"]),
    (dict(GOOD_STATE, count=2.5), TypeError, ["count", "integer"]),
    (dict(GOOD_STATE, count="3"), TypeError, ["count"]),
    (dict(GOOD_STATE, count=True), TypeError, ["count"]),
    (dict(GOOD_STATE, control=math.nan), ValueError, ["control", "finite"]),
    (dict(GOOD_STATE, trajectory=math.inf), ValueError, ["trajectory", "finite"]),
    (dict(GOOD_STATE, control=-0.5), ValueError, ["control", ">= 0"]),
    (dict(GOOD_STATE, trajectory="2"), TypeError, ["trajectory"]),
    (dict(GOOD_STATE, control=None), ValueError, ["control", "None"]),
    (dict(GOOD_STATE, control=HUGE_INT), ValueError, ["control", "1.798e+308"]),
    ({"control": 0.5, "trajectory": None, "count": 0}, ValueError, ["control", "count is 0"]),
    ([("count", 3)], TypeError, ["dict"]),
    (None, TypeError, ["dict"]),
])
def test_adaptive_load_state_dict_validates(state, error, words):
    s = weighting.Adaptive()
    s.observe(4.0, 1.0)
    before = s.state_dict()
    with pytest.raises(error) as info:
        s.load_state_dict(state)
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    assert s.state_dict() == before  # a refused state changes nothing


@pytest.mark.parametrize("strategy", [weighting.Fixed(0.3), weighting.Normalized(2.0, 8.0),
                                      weighting.Curriculum(),
                                      weighting.Calibrated(trajloss.Calibration(1, 4, 4, 0.25))])
def test_stateless_strategies_take_only_an_empty_state(strategy):
    strategy.load_state_dict({})
    assert strategy.state_dict() == {}
    with pytest.raises(ValueError, match="unknown key"):
        strategy.load_state_dict({"count": 1})
    with pytest.raises(TypeError, match="dict"):
        strategy.load_state_dict(None)


def ema(values, m):
    """Exponential moving average started at the first value (plain loop)."""
    out = values[0]
    for v in values[1:]:
        out = m * out + (1 - m) * v
    return out


@pytest.mark.parametrize("how", ["dict", "json", "pickle", "numpy", "torch"])
def test_adaptive_state_round_trips_exactly(how, tmp_path):
    """state_dict -> (JSON / pickle / 0-d NumPy arrays / torch tensors) ->
    load_state_dict gives the same state bit for bit, and the resumed strategy
    continues exactly like the uninterrupted one (and like a NumPy EMA)."""
    rng = np.random.default_rng(7)
    c, t = rng.uniform(0.1, 30, 40), rng.uniform(0.1, 90, 40)
    a = weighting.Adaptive(momentum=0.8)
    for ci, ti in zip(c[:25], t[:25]):
        a.observe(ci, ti)
    state = a.state_dict()
    if how == "json":
        state = json.loads(json.dumps(state))
    elif how == "pickle":
        state = pickle.loads(pickle.dumps(state))
    elif how == "numpy":
        state = {k: np.array(v) for k, v in state.items()}
    elif how == "torch":
        import torch
        path = tmp_path / "state.pt"
        torch.save({k: torch.tensor(v, dtype=torch.float64 if k != "count" else torch.int64)
                    for k, v in state.items()}, path)
        state = torch.load(path)
    b = weighting.Adaptive(momentum=0.8)
    b.load_state_dict(state)
    assert b.state_dict() == a.state_dict()
    assert all(type(v) is type(a.state_dict()[k]) for k, v in b.state_dict().items())
    for ci, ti in zip(c[25:], t[25:]):
        assert b.weight(control=ci, trajectory=ti) == a.weight(control=ci, trajectory=ti)
    assert b.state_dict() == a.state_dict()
    assert b.state_dict()["control"] == pytest.approx(ema(c, 0.8), rel=1e-12)
    assert b.state_dict()["trajectory"] == pytest.approx(ema(t, 0.8), rel=1e-12)


def test_adaptive_fresh_state_round_trips():
    a, b = weighting.Adaptive(initial=0.4), weighting.Adaptive(initial=0.4)
    b.observe(1.0, 1.0)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == {"control": None, "trajectory": None, "count": 0}
    assert b.weight() == 0.4


# --------------------------------------------------------------------------
# NumPy losses: weight and terminal_weight
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(2)
    system = trajloss.DoubleIntegrator()
    u, ref_u = rng.normal(size=(3, 4, 1)), rng.normal(size=(3, 4, 1))
    x0 = rng.normal(size=(3, 2))
    return system, u, x0, ref_u, trajloss.rollout(system, x0, ref_u)


@pytest.mark.parametrize("arg", ["weight", "terminal_weight"])
@pytest.mark.parametrize("value,error", [(HUGE_INT, ValueError), (-HUGE_INT, ValueError),
                                         (math.nan, ValueError), (-1.0, ValueError),
                                         (-1, ValueError), (math.inf, ValueError),
                                         (np.float32(-2), ValueError), ("1", TypeError),
                                         (True, TypeError)])
def test_loss_weights_name_the_argument_and_the_limit(problem, arg, value, error):
    system, u, x0, ref_u, ref_x = problem
    kwargs = {"weight": 0.5, arg: value}
    with pytest.raises(error) as info:
        trajloss.combined_loss(system, u, x0, ref_u, ref_x, **kwargs)
    message = str(info.value)
    assert message.startswith(arg + " must"), message
    if error is ValueError:
        assert "finite and >= 0" in message and "1.798e+308" in message, message


def test_largest_finite_weight_is_accepted(problem):
    """The limit is float64's: an integer that converts (2**1023) is a valid
    weight; the loss is then control + weight·trajectory (NumPy reference)."""
    system, u, x0, ref_u, ref_x = problem
    r = trajloss.combined_loss(system, u, x0, ref_u, ref_x, weight=2**1000)
    states = trajloss.rollout(system, x0, u)
    control = np.mean((u - ref_u) ** 2)
    trajectory = np.mean((states[:, 1:] - ref_x[:, 1:]) ** 2)
    assert r.value == pytest.approx(control + 2.0**1000 * trajectory, rel=1e-12)


# --------------------------------------------------------------------------
# The package's imports form no circle
# --------------------------------------------------------------------------


def package_imports():
    """Module -> the package modules it imports anywhere (also inside functions)."""
    graph = {}
    for name in os.listdir(PACKAGE):
        if not name.endswith(".py"):
            continue
        tree = ast.parse(open(os.path.join(PACKAGE, name), encoding="utf-8").read())
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps.update([node.module] if node.module else [a.name for a in node.names])
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("trajloss."):
                deps.add(node.module.split(".")[1])
        graph[name[:-3]] = deps - {"__init__"}
    return graph


def test_no_import_circle():
    graph = package_imports()
    state = {}

    def visit(module, path):
        state[module] = "open"
        for dep in sorted(graph.get(module, ())):
            assert state.get(dep) != "open", " -> ".join(path + [dep])
            if dep not in state:
                visit(dep, path + [dep])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state and module != "__main__":
            visit(module, [module])


@pytest.mark.parametrize("module", ["calibration", "losses", "weighting", "datasets", "report",
                                    "_strategy"])
def test_each_module_imports_first(module):
    proc = subprocess.run([sys.executable, "-c", f"import trajloss.{module}"],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=os.path.dirname(PACKAGE)))
    assert proc.returncode == 0, proc.stderr


def test_weighting_strategy_keeps_its_public_name():
    from trajloss.losses import WeightingStrategy as from_losses
    assert from_losses is weighting.WeightingStrategy
    assert weighting.WeightingStrategy.__module__ == "trajloss.weighting"
    assert pickle.loads(pickle.dumps(weighting.WeightingStrategy)) is weighting.WeightingStrategy
