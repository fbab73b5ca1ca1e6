"""Smoke test of the benchmark suite: ``python benchmarks/run.py --tiny``.

Runs the whole suite at tiny sizes in a subprocess (the suite sets thread
environment variables before importing NumPy/PyTorch/JAX, so it must not be
imported into the test process) and checks the JSON it writes: every workload
is there, trajloss and every baseline were checked against each other and
timed. The per-sample and time-varying baselines are also checked, in a
subprocess, against trajloss's shared-system rollout one sample at a time.
"""
import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import trajloss

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "run.py")

COMBINED = {"trajloss", "numpy-matrix", "numpy-loop", "torch-loop", "torch-loop-addmm",
            "torch-matrix", "torch.compile-matrix", "jax-scan", "jax-matrix"}
CONTROL = {"trajloss", "numpy", "torch-eager", "torch.compile", "jax-jit"}
GENERAL = {"trajloss", "torch-loop", "torch-loop-addmm", "torch-matrix", "jax-scan"}
FORM_LOOPS = {"trajloss", "numpy-loop", "torch-loop", "torch-loop-addmm", "jax-scan"}
PER_SAMPLE = FORM_LOOPS | {"torch-loop-bcast"}
TIME_VARYING = FORM_LOOPS | {"torch-matrix"}
EXPECTED = {  # workload -> implementations of every case
    "W1": [COMBINED],
    "W2": [COMBINED],
    "W3": [CONTROL],
    "W4": [{"trajloss", "numpy-pinv", "jax-pinv"}],
    "W5": [COMBINED, CONTROL],
    "W6": [{"numpy-copy"}],
    "W7": [GENERAL],
    "W8": [PER_SAMPLE, TIME_VARYING],
    "W9": [{"trajloss", "trajloss-per-sample", "trajloss-time-varying"}],
    # trajloss.jax's host callback and FFI paths, beside plain JAX; under vmap
    # checked against trajloss's NumPy API called per problem
    "W11": [{"trajloss", "trajloss.jax-callback", "trajloss.jax-ffi", "jax-scan", "jax-matrix"},
            {"trajloss-loop", "trajloss.jax-callback", "trajloss.jax-ffi"}],
    "W12": [{"trajloss", "torch-autograd-floor", "trajloss.torch"}],
}
TINY_GENERAL = ((3, 2, 6), (4, 1, 5))  # benchmarks/run.py MODES["tiny"]
TINY_B, TINY_THREAD_B, TINY_OVERHEAD_B = 8, (8, 16), (1, 8)


def build_takes(form):
    """Whether this trajloss build takes per-sample / time-varying systems (the
    suite then checks its baselines against a NumPy loop and says why)."""
    rng = np.random.default_rng(0)
    try:
        if form == "per_sample":
            system = trajloss.LinearSystem(rng.normal(size=(3, 2, 2)), rng.normal(size=(3, 2, 1)))
            return getattr(system, "batch", None) == 3
        return trajloss.TimeVaryingSystem(rng.normal(size=(4, 2, 2)),
                                          rng.normal(size=(4, 2, 1))).steps == 4
    except (AttributeError, TypeError, ValueError):
        return False


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    out, md = tmp / "x.json", tmp / "x.md"
    proc = subprocess.run([sys.executable, SCRIPT, "--tiny", "--out", str(out),
                           "--markdown", str(md)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    return proc, out, md


def rows_of(out):
    return json.loads(out.read_text())["results"]


def test_runs_and_prints_the_report(tiny_run):
    proc, out, md = tiny_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "| workload" in proc.stdout and "### Targets" in proc.stdout
    assert "trajloss / memory floor, timed in the same rounds" in proc.stdout
    assert "### For the README" in proc.stdout
    assert out.exists() and md.exists()


def allowed_skip(r):
    """A trajloss row may be skipped only because this build lacks the form."""
    form = {"W8": r.get("form"), "W9": {"trajloss-per-sample": "per_sample",
                                        "trajloss-time-varying": "time_varying"}.get(r["impl"])}
    form = form.get(r["workload"])
    return (form is not None and r["impl"].startswith("trajloss") and not build_takes(form)
            and r["skipped"].startswith("this trajloss build"))


def test_every_workload_checked_and_timed(tiny_run):
    proc, out, _ = tiny_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = rows_of(out)
    for workload, impl_sets in EXPECTED.items():
        cases = {}
        for r in rows:
            if r["workload"] == workload:
                cases.setdefault((r["case"], r["dtype"]), set()).add(r["impl"])
        assert cases, f"{workload} missing"
        for key, impls in cases.items():
            assert impls in impl_sets, (workload, key, sorted(impls))
    for r in rows:
        where = f"{r['workload']} {r['case']} {r['dtype']} {r['impl']}"
        if "skipped" in r:
            assert allowed_skip(r), (where, r["skipped"])
            assert r["checked"] is False
            continue
        assert r["checked"] is True, where
        assert math.isfinite(r["median_s"]) and r["median_s"] > 0, where
        if r["workload"] == "W6":  # trajloss timed in the copy's rounds
            assert r["ratio_to_floor"] == r["trajloss_median_s"] / r["median_s"] > 0, where
            assert r["ratio_to_floor_best"] == r["trajloss_min_s"] / r["floor_s"] > 0, where
        else:
            assert math.isfinite(r["ratio"]) and r["ratio"] > 0, where
            assert r["max_rel_err"] <= (1e-10 if r["dtype"] == "float64" else 1e-4), where


def test_general_and_form_cases_cover_the_sizes(tiny_run):
    """W7 runs every general size, W8 both forms, in float64 and float32; W8's
    reference is trajloss when the build takes the form, else the NumPy loop."""
    proc, out, _ = tiny_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = rows_of(out)
    w7 = {(r["case"], r["dtype"]) for r in rows if r["workload"] == "W7"}
    assert w7 == {(f"({n},{m},{T}) B={TINY_B}", d) for n, m, T in TINY_GENERAL
                  for d in ("float32", "float64")}
    for form, label in (("per_sample", "per-sample"), ("time_varying", "time-varying")):
        for dtype in ("float32", "float64"):
            case = [r for r in rows if r["workload"] == "W8" and r["form"] == form
                    and r["dtype"] == dtype]
            assert case and all(r["case"].startswith(label) for r in case)
            ref = "trajloss" if build_takes(form) else "numpy-loop"
            assert [r["ratio"] for r in case if r["impl"] == ref] == [1.0], (form, dtype)


def test_speed_rows_pick_the_fastest_eager_torch(tiny_run):
    """The README's torch column is the fastest eager form (never torch.compile),
    and the speed-up is its median over trajloss's, against the issue's goals."""
    proc, out, md = tiny_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads(out.read_text())
    rows, speed = data["results"], data["speed"]
    goals = {("W1", "B=64"): 30, ("W1", "B=1024"): 15}
    seen = set()
    for s in speed:
        key = [r for r in rows if r["workload"] == s["workload"] and r["dtype"] == s["dtype"]
               and s["case"].endswith(r["case"])]
        torch_rows = [r for r in key if r["impl"].startswith("torch-") and "median_s" in r]
        assert {r["impl"] for r in torch_rows} & {"torch-loop", "torch-loop-addmm"}
        best = min(torch_rows, key=lambda r: r["median_s"])
        assert (s["torch_best"], s["torch_best_s"]) == (best["impl"], best["median_s"])
        assert s["goal"] == goals.get((s["workload"], key[0]["case"]), 3)
        tl = [r for r in key if r["impl"] == "trajloss" and "median_s" in r]
        if tl:
            assert s["speedup"] == best["median_s"] / tl[0]["median_s"]
            assert s["met"] == (s["speedup"] >= s["goal"])
        else:
            assert s["speedup"] is None and s["met"] is None
        if s["workload"] == "W7":  # "general (n,m,T) B=..": rollout + adjoint 4·B·T·n·(n+m)
            n, m, T = (int(v) for v in s["case"].split("(")[1].split(")")[0].split(","))
            assert s["flops"] == 4 * TINY_B * T * n * (n + m)
            if tl:
                assert s["trajloss_gflops"] == s["flops"] / tl[0]["median_s"] / 1e9
        seen.add(s["workload"])
    assert seen == {"W1", "W7", "W8"}
    text = md.read_text()
    assert "torch best ms (variant)" in text and "per-sample / shared" in text
    assert "threads pay" in text


def test_render_reproduces_the_readme_tables(tiny_run):
    proc, out, md = tiny_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    again = subprocess.run([sys.executable, SCRIPT, "--render", str(out)], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout == md.read_text()


def test_thread_scaling_over_b(tiny_run):
    proc, out, _ = tiny_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    ts = json.loads(out.read_text())["thread_scaling"]
    assert ts["available"] is True
    got = {(t["case"], t["dtype"], t["B"]) for t in ts["results"]}
    cases = ("double integrator", "({},{},{})".format(*TINY_GENERAL[0]))
    assert got == {(c, d, B) for c in cases for d in ("float32", "float64")
                   for B in TINY_THREAD_B}
    for t in ts["results"]:
        assert t["bit_identical"] is True
        assert t["speedup"] == t["t1_s"] / t["t2_s"] > 0
        assert 0 < t["cpu_per_wall_2"] < 2.5  # two threads at most (plus timer slack)
    for c in ts["crossover"]:
        speedups = [t["speedup"] for t in ts["results"]
                    if (t["case"], t["dtype"]) == (c["case"], c["dtype"])]
        pays = [B for i, B in enumerate(TINY_THREAD_B)
                if all(s >= ts["threshold"] for s in speedups[i:])]
        assert c["crossover_B"] == (pays[0] if pays else None)


def test_json_records_machine_and_settings(tiny_run):
    proc, out, _ = tiny_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads(out.read_text())
    machine = data["machine"]
    assert machine["cpu_model"] and machine["date"]
    for name in ("numpy", "torch", "jax"):
        assert machine["versions"][name]
    assert machine["threads"]["OMP_NUM_THREADS"] == "1"
    assert "xla_cpu_multi_thread_eigen=false" in machine["threads"]["XLA_FLAGS"]
    assert machine["threads"]["torch.get_num_threads"] == 1
    assert {t["result"] for t in data["targets"]} <= {"PASS", "FAIL", "—"}


FORM_CHECK = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, "benchmarks")
    import run
    import trajloss

    rng = np.random.default_rng(3)
    B, T, n, m = 5, 7, 3, 2
    for form in ("per_sample", "time_varying"):
        p = run.general_problem(n, m, T, B, form, seed=11)
        Ad, Bd = p.system.Ad, p.system.Bd
        # the problem's reference states: sample b through its own (or step k's) system
        for b in range(B):
            if form == "per_sample":
                X = trajloss.rollout(trajloss.LinearSystem(Ad[b], Bd[b]), p.x0[b], p.RU[b])
            else:
                x, X = p.x0[b], [p.x0[b]]
                for k in range(T):
                    x = Ad[k] @ x + Bd[k] @ p.RU[b, k]
                    X.append(x)
                X = np.array(X)
            assert np.allclose(p.RX[b], X, rtol=1e-12, atol=1e-12), (form, b)
        # the same matrices in every sample / step: every baseline equals trajloss's shared form
        shared = trajloss.LinearSystem(Ad[0], Bd[0])
        same = run.as_form(run.replace(p, system=run.Dynamics("shared", Ad[0], Bd[0])), form)
        r = trajloss.combined_loss(shared, p.U, p.x0, p.RU, p.RX, weight=p.weight)
        impls = run.FORM_IMPLS[form]
        for impl in impls:
            got = impl.setup(same, run.MODES["tiny"])()
            err = run.check(form, impl.name, run.LOSS_OUTPUTS, got,
                            (r.value, r.grad, r.grad_x0), 1e-10)
            assert err <= 1e-10
        print(form, [i.name for i in impls], "ok")
""")


def test_form_baselines_match_trajloss_shared_sample_by_sample():
    """The per-sample / time-varying problems and baselines, independently of
    trajloss's new forms: the references are each sample's (each step's) own
    rollout, and with the same matrices everywhere every baseline reproduces
    trajloss's shared-system loss and gradients."""
    proc = subprocess.run([sys.executable, "-c", FORM_CHECK], cwd=REPO,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("ok") == 2, proc.stdout


def test_torch_overhead_against_the_autograd_function_floor(tiny_run):
    """W12: the NumPy API, a bare autograd.Function around it and
    trajloss.torch, each checked against trajloss and timed (wall clock and
    CPU time); the overheads are the CPU-time medians' differences from the
    NumPy API's, the target max(30 µs, 1.25x the floor's overhead)."""
    proc, out, md = tiny_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads(out.read_text())
    rows = [r for r in data["results"] if r["workload"] == "W12"]
    assert {(r["case"], r["impl"]) for r in rows} == {
        (f"B={B}", impl) for B in TINY_OVERHEAD_B
        for impl in ("trajloss", "torch-autograd-floor", "trajloss.torch")}
    cpu = {(r["case"], r["impl"]): r["cpu_median_s"] for r in rows}
    for r in rows:
        assert r["dtype"] == "float32" and r["checked"] is True
        assert 0 < r["cpu_min_s"] <= r["cpu_median_s"] and r["cpu_rounds"] >= 9
    overhead = data["torch_overhead"]
    assert [o["case"] for o in overhead] == [f"B={B}" for B in TINY_OVERHEAD_B]
    for o in overhead:
        numpy_s = cpu[(o["case"], "trajloss")]
        floor = cpu[(o["case"], "torch-autograd-floor")] - numpy_s
        torch_over = cpu[(o["case"], "trajloss.torch")] - numpy_s
        assert o["clock"] == "cpu"
        assert o["floor_overhead_s"] == floor and o["overhead_s"] == torch_over
        assert o["ratio_to_floor"] == torch_over / floor
        assert o["target_s"] == max(30e-6, 1.25 * floor)
        assert o["met"] == (torch_over <= o["target_s"])
    assert "autograd.Function floor µs" in md.read_text()
    w12 = [t for t in data["targets"] if t["target"].startswith("W12")]
    assert len(w12) == len(TINY_OVERHEAD_B)
    assert all(t["result"] == ("PASS" if o["met"] else "FAIL") for t, o in zip(w12, overhead))


def test_a_workload_without_rows_still_reports(tmp_path):
    """``--only W10 --markdown``: W10 adds no per-implementation rows; the
    report's tables are then headers only, not a crash."""
    out, md = tmp_path / "w10.json", tmp_path / "w10.md"
    proc = subprocess.run([sys.executable, SCRIPT, "--tiny", "--only", "W10", "--out", str(out),
                           "--markdown", str(md)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "| workload" in proc.stdout and "threads pay" in md.read_text()
    assert json.loads(out.read_text())["results"] == []


RESULTS_TABLE = textwrap.dedent("""
    import sys
    sys.path.insert(0, "benchmarks")
    import run
    print(run.results_table([]))
    print(run.results_table([dict(workload="W6", case="B=8", dtype="float32", impl="numpy-copy",
                                  checked=False, skipped="no memory")]))
    print(run.results_table([dict(workload="W1", case="B=1", dtype="float64", impl="x")]))
""")


def test_results_table_takes_rows_missing_fields():
    proc = subprocess.run([sys.executable, "-c", RESULTS_TABLE], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("| workload") == 3
    assert "skipped: no memory" in proc.stdout and "skipped: not timed" in proc.stdout
