"""Smoke test of the benchmark suite: ``python benchmarks/run.py --tiny``.

Runs the whole suite at tiny sizes in a subprocess (the suite sets thread
environment variables before importing NumPy/PyTorch/JAX, so it must not be
imported into the test process) and checks the JSON it writes: every workload
is there, trajloss and every baseline were checked against each other and
timed.
"""
import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "run.py")

COMBINED = {"trajloss", "numpy-matrix", "numpy-loop", "torch-loop", "torch-matrix",
            "torch.compile-matrix", "jax-scan", "jax-matrix"}
CONTROL = {"trajloss", "numpy", "torch-eager", "torch.compile", "jax-jit"}
EXPECTED = {  # workload -> implementations of every case
    "W1": [COMBINED],
    "W2": [COMBINED],
    "W3": [CONTROL],
    "W4": [{"trajloss", "numpy-pinv", "jax-pinv"}],
    "W5": [COMBINED, CONTROL],
    "W6": [{"numpy-copy"}],
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "x.json"
    proc = subprocess.run([sys.executable, SCRIPT, "--tiny", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=240)
    return proc, out


def test_runs_and_prints_the_report(tiny_run):
    proc, out = tiny_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "| workload" in proc.stdout and "### Targets" in proc.stdout
    assert "trajloss / memory floor, timed in the same rounds" in proc.stdout
    assert out.exists()


def test_every_workload_checked_and_timed(tiny_run):
    proc, out = tiny_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads(out.read_text())
    rows = data["results"]
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
        assert "skipped" not in r, (where, r.get("skipped"))
        assert r["checked"] is True, where
        assert math.isfinite(r["median_s"]) and r["median_s"] > 0, where
        if r["workload"] == "W6":  # trajloss timed in the copy's rounds
            assert r["ratio_to_floor"] == r["trajloss_median_s"] / r["median_s"] > 0, where
            assert r["ratio_to_floor_best"] == r["trajloss_min_s"] / r["floor_s"] > 0, where
        else:
            assert math.isfinite(r["ratio"]) and r["ratio"] > 0, where
            assert r["max_rel_err"] <= (1e-10 if r["dtype"] == "float64" else 1e-4), where


def test_json_records_machine_and_settings(tiny_run):
    proc, out = tiny_run
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
