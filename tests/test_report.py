"""``python -m trajloss report``: its numbers against the API and against
independent NumPy computations (closed-form double integrator, plain
calibration), its text tables, and its error handling (one line on stderr,
exit status 2, no traceback)."""

import fcntl
import io
import json
import os
import pty
import re
import resource
import select
import struct
import subprocess
import sys
import termios
import textwrap
import types

import numpy as np
import pytest

import trajloss
import trajloss.report
from reference_helpers import di_law_coefficients, di_matrices, min_norm_controls, rollout, zoh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DT = 1.0 / 3.0
TRIPLE = {
    "A": [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]],
    "B": [[0.0], [0.0], [1.0]],
    "dt": 0.2,
    "x0_low": [-1.0, -0.5, -0.25],
    "x0_high": [1.0, 0.5, 0.25],
    "name": "triple integrator",
}


def run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "trajloss", "report", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run_inprocess(capsys, *args):
    """``python -m trajloss report ARGS`` in this process (faster than a
    subprocess); an unexpected exception propagates and fails the test."""
    import trajloss.__main__ as cli

    capsys.readouterr()
    try:
        rc = cli.main(["report", *args])
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return Result(rc, out, err)


def assert_usage_error(proc):
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-500:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].strip(), proc.stderr
    assert proc.stdout == ""


def write_json(tmp_path, name, obj):
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return str(path)


@pytest.fixture(scope="module")
def default_json():
    proc = run("--json", "--samples", "500")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return json.loads(proc.stdout)


# --------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------


def test_json_equals_compute(default_json):
    expected = trajloss.report.compute(trajloss.report.default_problem(), 500, 0)
    assert default_json == json.loads(json.dumps(expected))


def test_json_equals_api_calls(default_json):
    r = default_json
    system = trajloss.DoubleIntegrator()
    data = trajloss.make_dataset(system, 500, 15, x0_low=[-10, -5], x0_high=[10, 5],
                                 target=0.0, control_bound=8, seed=0)
    cal = trajloss.calibrate(system, data, control_bound=8, seed=0)
    # the report sums its means chunk by chunk: equal up to the summation order
    s = r["scales"]
    assert s["control_mse"] == pytest.approx(cal.control_mse, rel=1e-14)
    assert s["trajectory_mse"] == pytest.approx(cal.trajectory_mse, rel=1e-14)
    assert s["ratio"] == pytest.approx(cal.ratio, rel=1e-14)
    assert s["recommended_weight"] == pytest.approx(cal.recommended_weight, rel=1e-14)
    for got, weight in zip(r["breakdown"], (1.0, cal.recommended_weight)):
        assert got == pytest.approx(cal.breakdown(weight), rel=1e-14)
    assert r["problem"]["resampled"] == data.resampled
    for method in ("average", "exact"):
        ref = trajloss.min_energy(system, data.x0, data.xf, 15, method)
        assert r["discretisation"][method]["mean"] == pytest.approx(float(ref.final_error.mean()),
                                                                    rel=1e-14, abs=1e-300)
        assert r["discretisation"][method]["max"] == float(ref.final_error.max())


def test_json_problem_block(default_json):
    p = default_json["problem"]
    assert p["n"] == 2 and p["m"] == 1 and p["steps"] == 15
    assert p["dt"] == pytest.approx(DT, rel=1e-15)
    assert p["horizon"] == pytest.approx(5.0, rel=1e-14)
    assert p["samples"] == 500 and p["seed"] == 0
    assert p["x0_low"] == [-10.0, -5.0] and p["x0_high"] == [10.0, 5.0]
    assert p["target"] == [0.0, 0.0] and p["control_bound"] == 8


def test_json_numbers_against_numpy(default_json):
    """Recompute every number of the report independently on the same initial states."""
    r = default_json
    data = trajloss.make_dataset(trajloss.DoubleIntegrator(), 500, seed=0)
    x0 = data.x0
    assert np.all(np.abs(data.controls) <= 8)
    Ad, Bd = di_matrices(DT)
    # scales: plain NumPy calibration on the same random draws
    U = np.random.default_rng(0).uniform(-8, 8, size=(500, 15, 1))
    c = float(np.mean((U - data.controls) ** 2))
    t = float(np.mean((rollout(Ad, Bd, x0, U) - rollout(Ad, Bd, x0, data.controls)) ** 2))
    s = r["scales"]
    assert s["control_mse"] == pytest.approx(c, rel=1e-12)
    assert s["trajectory_mse"] == pytest.approx(t, rel=1e-10)
    assert s["ratio"] == pytest.approx(t / c, rel=1e-10)
    assert s["recommended_weight"] == pytest.approx(c / t, rel=1e-10)
    b0, b1 = r["breakdown"]
    assert b0["weight"] == 1.0
    assert b0["control"] == pytest.approx(c / (c + t), rel=1e-10)
    assert b0["trajectory"] == pytest.approx(t / (c + t), rel=1e-10)
    assert b0["total"] == pytest.approx(c + t, rel=1e-10)
    assert b1["weight"] == pytest.approx(c / t, rel=1e-10)
    assert b1["control"] == pytest.approx(0.5, rel=1e-12)
    assert b1["trajectory"] == pytest.approx(0.5, rel=1e-12)
    # discretisation: closed form |b| H dt^2 / 12 for the averaged law
    H = 5.0
    a, b = di_law_coefficients(x0, np.zeros(2), H)
    avg = np.abs(b) * H * DT ** 2 / 12
    d = r["discretisation"]
    assert d["average"]["mean"] == pytest.approx(float(avg.mean()), rel=1e-9)
    assert d["average"]["max"] == pytest.approx(float(avg.max()), rel=1e-9)
    assert 0.0 <= d["exact"]["mean"] <= d["exact"]["max"] <= 1e-10 * 20
    assert 0.0 <= d["continuous_endpoint"]["mean"] <= d["continuous_endpoint"]["max"] <= 1e-9
    # steps sweep at fixed horizon: mean |b| H^3 / (12 k^2), order exactly 2
    sweep = r["steps_sweep"]
    assert [row["steps"] for row in sweep] == [5, 15, 50, 150]
    for i, row in enumerate(sweep):
        k = row["steps"]
        assert row["dt"] == pytest.approx(H / k, rel=1e-14)
        err = np.abs(b) * H ** 3 / (12 * k * k)
        assert row["mean"] == pytest.approx(float(err.mean()), rel=1e-8)
        assert row["max"] == pytest.approx(float(err.max()), rel=1e-8)
        if i == 0:
            assert row["order"] is None
        else:
            assert row["order"] == pytest.approx(2.0, abs=1e-6)


def test_json_with_options(tmp_path):
    proc = run("--json", "--samples", "200", "--steps", "10", "--dt", "1/4", "--seed", "3",
               "--bound", "6")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    p = r["problem"]
    assert p["steps"] == 10 and p["dt"] == 0.25 and p["seed"] == 3 and p["control_bound"] == 6
    assert p["horizon"] == pytest.approx(2.5, rel=1e-14)
    system = trajloss.DoubleIntegrator(dt=0.25)
    data = trajloss.make_dataset(system, 200, 10, x0_low=[-10, -5], x0_high=[10, 5],
                                 control_bound=6, seed=3)
    assert p["resampled"] == data.resampled
    assert np.all(np.abs(data.controls) <= 6)
    U = np.random.default_rng(3).uniform(-6, 6, size=data.controls.shape)
    Ad, Bd = di_matrices(0.25)
    c = float(np.mean((U - data.controls) ** 2))
    t = float(np.mean((rollout(Ad, Bd, data.x0, U) - data.states) ** 2))
    assert r["scales"]["control_mse"] == pytest.approx(c, rel=1e-12)
    assert r["scales"]["trajectory_mse"] == pytest.approx(t, rel=1e-10)
    a, b = di_law_coefficients(data.x0, np.zeros(2), 2.5)
    assert r["discretisation"]["average"]["mean"] == pytest.approx(
        float(np.mean(np.abs(b) * 2.5 * 0.25 ** 2 / 12)), rel=1e-9)


# --------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------


def table_blocks(text):
    """Groups of consecutive lines starting with '|'."""
    blocks, cur = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            cur.append(line)
        elif cur:
            blocks.append(cur)
            cur = []
    if cur:
        blocks.append(cur)
    return blocks


def test_text_report_has_four_tables(default_json):
    proc = run("--samples", "500")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    text = proc.stdout
    blocks = table_blocks(text)
    assert len(blocks) == 4, text
    # header, separator, rows: 2 scale rows, 2 breakdown rows, 3 references, 4 sweep rows
    assert [len(b) - 2 for b in blocks] == [2, 2, 3, 4]
    for b in blocks:
        assert re.fullmatch(r"\|[-|]+\|", b[1]), b[1]
        widths = {len(line) for line in b}
        assert len(widths) == 1, b  # aligned columns
    for heading in ("1.", "2.", "3.", "4."):
        assert re.search(rf"^{re.escape(heading)} ", text, flags=re.M), heading
    s = default_json["scales"]
    assert f"{s['control_mse']:.2f}" in blocks[0][2]
    assert f"{s['trajectory_mse']:.2f}" in blocks[0][3]
    assert f"{s['recommended_weight']:.3f}" in text
    assert "50.0%" in blocks[1][3]
    assert f"{default_json['discretisation']['average']['mean']:.4f}" in blocks[2][2]


def test_default_command_is_report():
    proc = subprocess.run([sys.executable, "-m", "trajloss", "--json", "--samples", "50"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r == json.loads(json.dumps(trajloss.report.compute(
        trajloss.report.default_problem(), 50, 0)))


def test_help():
    proc = run("--help")
    assert proc.returncode == 0
    for opt in ("--steps", "--dt", "--samples", "--seed", "--bound", "--json", "--system",
                "--progress", "--no-progress"):
        assert opt in proc.stdout


# --------------------------------------------------------------------------
# --system
# --------------------------------------------------------------------------


def test_system_file_triple_integrator(tmp_path):
    path = write_json(tmp_path, "triple.json", TRIPLE)
    proc = run("--system", path, "--samples", "150")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(table_blocks(proc.stdout)) == 4
    assert "n = 3" in proc.stdout and "triple integrator" in proc.stdout

    proc = run("--system", path, "--samples", "150", "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    p = r["problem"]
    assert p["n"] == 3 and p["m"] == 1 and p["steps"] == 15 and p["dt"] == 0.2
    assert p["x0_low"] == TRIPLE["x0_low"] and p["x0_high"] == TRIPLE["x0_high"]
    assert p["target"] == [0.0, 0.0, 0.0]
    # independent check of the scales on the same dataset
    A, B = np.array(TRIPLE["A"]), np.array(TRIPLE["B"])
    system = trajloss.LinearSystem.from_continuous(A, B, 0.2)
    data = trajloss.make_dataset(system, 150, 15, x0_low=TRIPLE["x0_low"],
                                 x0_high=TRIPLE["x0_high"], control_bound=8, seed=0)
    Ad, Bd = zoh(A, B, 0.2)
    X = rollout(Ad, Bd, data.x0, data.controls)
    assert np.max(np.abs(X[:, -1])) <= 1e-10 * max(1.0, np.abs(X).max())
    U = np.random.default_rng(0).uniform(-8, 8, size=data.controls.shape)
    c = float(np.mean((U - data.controls) ** 2))
    t = float(np.mean((rollout(Ad, Bd, data.x0, U) - X) ** 2))
    assert r["scales"]["control_mse"] == pytest.approx(c, rel=1e-12)
    assert r["scales"]["trajectory_mse"] == pytest.approx(t, rel=1e-9)
    assert r["discretisation"]["exact"]["max"] <= 1e-9
    assert r == json.loads(json.dumps(trajloss.report.compute(
        trajloss.report.load_problem(path), 150, 0)))


def test_system_file_npz_and_overrides(tmp_path):
    path = tmp_path / "di.npz"
    np.savez(path, A=np.array([[0.0, 1.0], [0.0, 0.0]]), B=np.array([[0.0], [1.0]]), dt=0.5,
             x0_low=np.array([-2.0, -1.0]), x0_high=np.array([2.0, 1.0]), steps=8)
    proc = run("--system", str(path), "--samples", "100", "--json", "--steps", "6")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["problem"]["steps"] == 6 and r["problem"]["dt"] == 0.5
    data = trajloss.make_dataset(trajloss.DoubleIntegrator(dt=0.5), 100, 6,
                                 x0_low=[-2, -1], x0_high=[2, 1], control_bound=8, seed=0)
    a, b = di_law_coefficients(data.x0, np.zeros(2), 3.0)
    assert r["discretisation"]["average"]["max"] == pytest.approx(
        float(np.max(np.abs(b) * 3.0 * 0.25 / 12)), rel=1e-9)


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["--steps", "0"],
    ["--dt", "-1"],
    ["--samples", "x"],
    ["--system", "/nonexistent"],
])
def test_bad_options_subprocess(args):
    assert_usage_error(run(*args))


@pytest.mark.parametrize("args", [
    ["--steps", "0"],
    ["--steps", "-3"],
    ["--steps", "1.5"],
    ["--dt", "-1"],
    ["--dt", "0"],
    ["--dt", "nan"],
    ["--dt", "1/0"],
    ["--samples", "x"],
    ["--samples", "0"],
    ["--bound", "0"],
    ["--bound", "-2"],
    ["--seed", "x"],
    ["--system", "/nonexistent/system.json"],
    ["--unknown-option"],
    ["--steps"],
])
def test_bad_options(capsys, args):
    extra = [] if args[0] == "--samples" else ["--samples", "20"]
    assert_usage_error(run_inprocess(capsys, *args, *extra))


def test_steps_overflow_is_a_usage_error():
    """A number of steps that cannot be represented is a bad option too."""
    assert_usage_error(run("--steps", "99999999999999999999", "--samples", "20"))


def test_one_step_is_singular_for_double_integrator(capsys):
    proc = run_inprocess(capsys, "--steps", "1", "--samples", "20")
    assert_usage_error(proc)
    assert "condition number" in proc.stderr


BAD_SYSTEMS = {
    "missing_B": {k: v for k, v in TRIPLE.items() if k != "B"},
    "missing_dt": {k: v for k, v in TRIPLE.items() if k != "dt"},
    "missing_box": {k: v for k, v in TRIPLE.items() if k != "x0_high"},
    "uncontrollable": {"A": [[0, 0], [0, 0]], "B": [[1], [0]], "dt": 0.1,
                       "x0_low": [-1, -1], "x0_high": [1, 1]},
    "uncontrollable_decoupled": {"A": [[-1, 0, 0], [0, -2, 0], [0, 0, -3]],
                                 "B": [[1], [1], [0]], "dt": 0.1,
                                 "x0_low": [-1, -1, -1], "x0_high": [1, 1, 1]},
    "box_wrong_length": dict(TRIPLE, x0_low=[-1, -1]),
    "box_reversed": dict(TRIPLE, x0_low=[1, 1, 1], x0_high=[-1, -1, -1]),
    "negative_dt": dict(TRIPLE, dt=-0.2),
    "dt_not_number": dict(TRIPLE, dt="fast"),
    "A_not_square": dict(TRIPLE, A=[[0, 1, 0], [0, 0, 1]]),
    "B_wrong_rows": dict(TRIPLE, B=[[0], [1]]),
    "A_strings": dict(TRIPLE, A="abc"),
    "steps_zero": dict(TRIPLE, steps=0),
    "steps_text": dict(TRIPLE, steps="many"),
    "bound_negative": dict(TRIPLE, control_bound=-1),
    "target_nan": dict(TRIPLE, target=[float("nan"), 0, 0]),
    "A_nan": dict(TRIPLE, A=[[float("nan"), 1, 0], [0, 0, 1], [0, 0, 0]]),
    "not_an_object": [1, 2, 3],
}


@pytest.mark.parametrize("name", ["missing_B", "uncontrollable"])
def test_bad_system_files_subprocess(tmp_path, name):
    path = write_json(tmp_path, f"{name}.json", BAD_SYSTEMS[name])
    proc = run("--system", path, "--samples", "20")
    assert_usage_error(proc)
    if name == "missing_B":
        assert "B" in proc.stderr
    else:
        assert "condition number" in proc.stderr


@pytest.mark.parametrize("name", sorted(BAD_SYSTEMS))
def test_bad_system_files(capsys, tmp_path, name):
    path = write_json(tmp_path, f"{name}.json", BAD_SYSTEMS[name])
    proc = run_inprocess(capsys, "--system", path, "--samples", "20")
    assert_usage_error(proc)
    if name.startswith("uncontrollable"):
        assert "condition number" in proc.stderr


def test_bad_system_file_steps_overflow(capsys, tmp_path):
    path = write_json(tmp_path, "huge.json", dict(TRIPLE, steps=1e30))
    assert_usage_error(run_inprocess(capsys, "--system", path, "--samples", "20"))


def test_bad_system_file_fractional_steps(capsys, tmp_path):
    """The command line rejects '--steps 1.5'; a file's 'steps: 5.5' should not
    be silently truncated to 5 either (5 steps would work for this system)."""
    ok = write_json(tmp_path, "five.json", dict(TRIPLE, steps=5))
    assert run_inprocess(capsys, "--system", ok, "--samples", "20").returncode == 0
    path = write_json(tmp_path, "frac.json", dict(TRIPLE, steps=5.5))
    assert_usage_error(run_inprocess(capsys, "--system", path, "--samples", "20"))


@pytest.mark.parametrize("content", [b"{not json", b"", b"\x00\x01\x02garbage"])
def test_unreadable_system_files(capsys, tmp_path, content):
    for suffix in (".json", ".npz"):
        path = tmp_path / f"sys{suffix}"
        path.write_bytes(content)
        assert_usage_error(run_inprocess(capsys, "--system", str(path), "--samples", "20"))


def test_system_file_npz_missing_B(capsys, tmp_path):
    path = tmp_path / "noB.npz"
    np.savez(path, A=np.eye(2), dt=0.1, x0_low=[-1.0, -1.0], x0_high=[1.0, 1.0])
    proc = run_inprocess(capsys, "--system", str(path), "--samples", "20")
    assert_usage_error(proc)
    assert "B" in proc.stderr


# --------------------------------------------------------------------------
# Large reports: chunks, bounded memory, progress bar
# --------------------------------------------------------------------------


def numpy_report(samples, seed, bound, dt=DT, steps=15, low=(-10.0, -5.0), high=(10.0, 5.0)):
    """The report's numbers for the double integrator in plain NumPy, all
    samples at once: make_dataset's sampling (uniform x0 from default_rng(seed),
    references beyond the bound redrawn from the same stream in rounds, in
    index order), the pseudo-inverse minimum-norm controls, the random
    baseline from a second default_rng(seed), and the closed-form end-point
    errors |b|·H·dt²/12 of the averaged law u = a + b·t."""
    Ad, Bd = di_matrices(dt)
    low, high = np.array(low), np.array(high)
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(low, high, size=(samples, 2))
    ref = min_norm_controls(Ad, Bd, x0, np.zeros(2), steps)
    resampled, rounds = 0, 0
    while True:
        bad = np.flatnonzero(np.abs(ref).max(axis=(1, 2)) > bound)
        if bad.size == 0:
            break
        resampled, rounds = resampled + bad.size, rounds + 1
        x0[bad] = rng.uniform(low, high, size=(bad.size, 2))
        ref[bad] = min_norm_controls(Ad, Bd, x0[bad], np.zeros(2), steps)
    U = np.random.default_rng(seed).uniform(-bound, bound, size=(samples, steps, 1))
    c = np.mean((U - ref) ** 2)
    t = np.mean((rollout(Ad, Bd, x0, U) - rollout(Ad, Bd, x0, ref)) ** 2)
    H = steps * dt
    _, b = di_law_coefficients(x0, np.zeros(2), H)
    sweep = [np.abs(b) * H ** 3 / (12 * k * k) for k in (5, 15, 50, 150)]
    return {"c": c, "t": t, "average": np.abs(b) * H * dt ** 2 / 12, "sweep": sweep,
            "resampled": resampled, "rounds": rounds}


@pytest.fixture(scope="module")
def tight_reference():
    """400 samples with |u| <= 3.5: a third of the draws are redrawn, in several rounds."""
    ref = numpy_report(400, 5, 3.5)
    assert ref["rounds"] >= 3 and ref["resampled"] >= 100, ref
    return ref


@pytest.mark.parametrize("chunk", [1, 7, 64, 150, 399, 400, 4096, None])
def test_chunked_report_equals_numpy(tight_reference, chunk):
    """Any chunk size, dividing the 400 samples or not, gives the numbers of an
    all-at-once NumPy computation on the same sample stream."""
    ref = tight_reference
    r = trajloss.report.compute(trajloss.report.default_problem(bound=3.5), 400, 5, chunk=chunk)
    assert r["problem"]["resampled"] == ref["resampled"]
    s = r["scales"]
    assert s["control_mse"] == pytest.approx(ref["c"], rel=1e-11)
    assert s["trajectory_mse"] == pytest.approx(ref["t"], rel=1e-10)
    assert s["recommended_weight"] == pytest.approx(ref["c"] / ref["t"], rel=1e-10)
    assert r["breakdown"][0]["control"] == pytest.approx(ref["c"] / (ref["c"] + ref["t"]),
                                                         rel=1e-10)
    d = r["discretisation"]
    assert d["average"]["mean"] == pytest.approx(ref["average"].mean(), rel=1e-9)
    assert d["average"]["max"] == pytest.approx(ref["average"].max(), rel=1e-9)
    assert 0 <= d["exact"]["mean"] <= d["exact"]["max"] <= 1e-12
    assert 0 <= d["continuous_endpoint"]["mean"] <= d["continuous_endpoint"]["max"] <= 1e-9
    for row, err in zip(r["steps_sweep"], ref["sweep"]):
        assert row["mean"] == pytest.approx(err.mean(), rel=1e-8)
        assert row["max"] == pytest.approx(err.max(), rel=1e-8)


def test_chunked_report_of_a_file_system_equals_numpy(tmp_path):
    """A triple integrator whose bound redraws most samples, in chunks of 37:
    the scales and the number redrawn match NumPy on make_dataset's stream."""
    path = write_json(tmp_path, "triple.json", dict(TRIPLE, steps=7, control_bound=2.0))
    problem = trajloss.report.load_problem(path)
    r = trajloss.report.compute(problem, 300, 4, chunk=37)
    Ad, Bd = zoh(np.array(TRIPLE["A"]), np.array(TRIPLE["B"]), TRIPLE["dt"])
    low, high = np.array(TRIPLE["x0_low"]), np.array(TRIPLE["x0_high"])
    rng = np.random.default_rng(4)
    x0 = rng.uniform(low, high, size=(300, 3))
    ref = min_norm_controls(Ad, Bd, x0, np.zeros(3), 7)
    resampled = 0
    while (bad := np.flatnonzero(np.abs(ref).max(axis=(1, 2)) > 2.0)).size:
        resampled += bad.size
        x0[bad] = rng.uniform(low, high, size=(bad.size, 3))
        ref[bad] = min_norm_controls(Ad, Bd, x0[bad], np.zeros(3), 7)
    assert resampled > 300
    U = np.random.default_rng(4).uniform(-2, 2, size=(300, 7, 1))
    assert r["problem"]["resampled"] == resampled
    assert r["scales"]["control_mse"] == pytest.approx(np.mean((U - ref) ** 2), rel=1e-9)
    assert r["scales"]["trajectory_mse"] == pytest.approx(
        np.mean((rollout(Ad, Bd, x0, U) - rollout(Ad, Bd, x0, ref)) ** 2), rel=1e-9)


def test_chunk_and_samples_are_checked():
    problem = trajloss.report.default_problem()
    for chunk in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="chunk"):
            trajloss.report.compute(problem, 10, 0, chunk=chunk)
    for samples in (0, -1, 1.5):
        with pytest.raises(ValueError, match="samples"):
            trajloss.report.compute(problem, samples, 0)


def test_too_tight_a_bound_fails_after_the_resampling_rounds():
    with pytest.raises(ValueError, match="rounds of resampling.*control_bound=0.3"):
        trajloss.report.compute(trajloss.report.default_problem(bound=0.3), 200, 0, chunk=64)


def test_long_horizons_use_smaller_chunks():
    """The chunk shrinks so its estimated arrays stay within CHUNK_BYTES."""
    rep = trajloss.report
    short, long = rep.default_problem(), rep.default_problem(steps=5000, dt=0.001)
    assert rep.chunk_samples(short, 10**6) == rep.CHUNK
    size = rep.chunk_samples(long, 10**6)
    assert 1 <= size < rep.CHUNK
    assert rep._memory_needed(long, size) <= rep.CHUNK_BYTES < rep._memory_needed(long, size + 1)
    assert rep.chunk_samples(short, 5) == 5


PEAK_RSS_BOUND_MB = 300  # all at once, 300000 samples peaked at 1359 MB


def test_peak_memory_does_not_grow_with_samples():
    """300000 samples in a fresh process peak far below the 1.36 GB that
    computing them all at once took (the chunks take ~120 MB whatever the
    number of samples). The RSS is read in a grandchild's parent so that no
    other test's subprocess counts."""
    code = textwrap.dedent(f"""
        import resource, subprocess, sys
        proc = subprocess.run([sys.executable, "-m", "trajloss", "report", "--samples",
                               "300000", "--json"], capture_output=True, text=True,
                              cwd={ROOT!r})
        assert proc.returncode == 0, proc.stderr
        print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    peak_mb = int(proc.stdout.strip()) / 1024  # ru_maxrss is in KiB on Linux
    assert peak_mb < PEAK_RSS_BOUND_MB, f"peak RSS {peak_mb:.0f} MB"


class FakeTqdm:
    """Records what the report asks of tqdm."""
    made = []

    def __init__(self, **kwargs):
        self.kwargs, self.updates, self.closed = kwargs, [], 0
        FakeTqdm.made.append(self)

    def update(self, n):
        self.updates.append(n)

    def close(self):
        self.closed += 1


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def fake_tqdm(monkeypatch):
    FakeTqdm.made = []
    monkeypatch.setitem(sys.modules, "tqdm", types.SimpleNamespace(tqdm=FakeTqdm))
    return FakeTqdm.made


@pytest.mark.parametrize("args,terminal,shown", [
    (["--progress"], False, True),
    (["--progress"], True, True),
    (["--no-progress"], True, False),
    ([], True, True),      # the default: on a terminal, for enough samples
    ([], False, False),
])
def test_tqdm_bar_when_asked_or_on_a_terminal(capsys, monkeypatch, fake_tqdm, args, terminal,
                                              shown):
    monkeypatch.setattr(trajloss.report, "PROGRESS_MIN_SAMPLES", 1000)
    stream = Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    proc = run_inprocess(capsys, "--samples", "1500", "--bound", "4.5", "--json", *args)
    assert proc.returncode == 0, stream.getvalue()
    r = json.loads(proc.stdout)
    assert r["problem"]["resampled"] > 0  # redrawn samples move the bar too
    if not shown:
        assert fake_tqdm == []
        return
    (bar,) = fake_tqdm
    assert bar.kwargs["total"] == 1500 and bar.kwargs["file"] is stream
    assert bar.kwargs["disable"] is False
    assert sum(bar.updates) == 1500 and bar.closed == 1


def test_default_shows_no_bar_for_small_reports(capsys, monkeypatch, fake_tqdm):
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert run_inprocess(capsys, "--samples", "500").returncode == 0
    assert fake_tqdm == []


def test_plain_bar_without_tqdm(monkeypatch):
    """Without tqdm: one line rewritten in place, at most once per percent,
    erased at the end; nothing when the stream is not a terminal."""
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm raises ImportError
    problem = trajloss.report.default_problem(bound=4.5)
    stream = Terminal()
    bar = trajloss.report.progress_bar(3000, None, stream)
    assert bar is None  # below the default's threshold
    bar = trajloss.report.progress_bar(3000, True, stream)
    try:
        trajloss.report.compute(problem, 3000, 0, chunk=10, progress=bar)
    finally:
        bar.close()
    text = stream.getvalue()
    assert "\n" not in text
    lines = text.split("\r")
    assert lines[0] == "" and lines[-1] == "" and lines[-2].strip() == ""
    shown = lines[1:-2]
    assert shown[0] == "trajloss report:   0% (0/3000 samples)"
    assert shown[-1] == "trajloss report: 100% (3000/3000 samples)"
    percents = [int(re.match(r"trajloss report: +(\d+)% ", line).group(1)) for line in shown]
    assert percents == sorted(set(percents)) and len(shown) <= 101
    monkeypatch.setattr(trajloss.report, "PROGRESS_MIN_SAMPLES", 10)
    assert trajloss.report.progress_bar(3000, None, io.StringIO()) is None
    assert trajloss.report.progress_bar(3000, None, Terminal()) is not None


def run_on_terminal(*args, timeout=600):
    """The report with stderr on a pseudo-terminal: (returncode, stdout, what
    the terminal received)."""
    master, slave = pty.openpty()
    # a new pseudo-terminal is 0 columns wide, which leaves tqdm no room: give it 80
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "trajloss", "report", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    received = b""
    try:
        while select.select([master], [], [], timeout)[0]:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            received += data
    finally:
        os.close(master)
    out = proc.stdout.read()
    proc.stdout.close()
    return proc.wait(timeout), out.decode(), received.decode(errors="replace")


def test_progress_on_a_real_terminal_and_not_in_a_pipe():
    rc, out, term = run_on_terminal("--samples", "100000", "--json")
    assert rc == 0 and json.loads(out)["problem"]["samples"] == 100000
    assert "trajloss report" in term and "%" in term, term
    rc, out, term = run_on_terminal("--samples", "100000", "--json", "--no-progress")
    assert rc == 0 and term == ""
    proc = run("--samples", "100000", "--json")  # stderr a pipe, as in logs and CI
    assert proc.returncode == 0 and proc.stderr == ""
