"""The notebooks run end to end, as a user runs them (no thread settings in
the environment), are committed with their outputs cleared, and print what
their text says."""
import json
import os
import pathlib
import re

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("matplotlib")
pytest.importorskip("torch")

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def _run(path, tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # as a reader runs them: the notebooks choose their own thread count
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TRAJLOSS_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    nb = nbformat.read(path, as_version=4)
    # the timeout only catches a hung kernel; speed is measured in benchmarks/
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.outputs if o.output_type == "stream")


def test_there_are_four_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_torch_notebooks_use_one_thread(path):
    """A notebook that trains a PyTorch model sets one intra-op thread before
    training: its models are so small that PyTorch's default thread pool (one
    OpenMP thread per core, spinning between operations) made notebooks 03
    and 04 run 10x to 40x longer on a busy 2-core machine."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    uses_torch = [i for i, src in enumerate(code) if re.search(r"^import torch\b", src, re.M)]
    if not uses_torch:
        return
    first = uses_torch[0]
    assert re.search(r"^torch\.set_num_threads\(1\)", code[first], re.M), (
        f"{path.name}: the cell importing torch must call torch.set_num_threads(1)")
    trains = [i for i, src in enumerate(code) if ".backward()" in src]
    assert all(i >= first for i in trains)


def test_01_scale_mismatch(tmp_path, monkeypatch):
    out = _run(NOTEBOOKS[0], tmp_path, monkeypatch)
    ratio = float(re.search(r"ratio\s+([\d.]+)", out).group(1))
    assert 2.0 < ratio < 6.0  # "a ratio of a few", as in seed 000
    assert "'control': 0.229" in out or "'control': 0.23" in out  # 0.025/(0.025+0.084)


def test_02_discretisation(tmp_path, monkeypatch):
    out = _run(NOTEBOOKS[1], tmp_path, monkeypatch)
    slope = float(re.search(r"fitted slope of log\(error\) vs log\(dt\): ([\d.]+)", out).group(1))
    assert abs(slope - 2.0) < 0.05


def test_03_time_weighting(tmp_path, monkeypatch):
    out = _run(NOTEBOOKS[2], tmp_path, monkeypatch)
    # the discounted policy's first step follows the observed side
    for s in ("-1", "+1"):
        line = next(l for l in out.splitlines() if l.startswith("discount 0.375") and f"demo {s}" in l)
        step1 = float(re.search(r"step 1 ([+-][\d.]+)", line).group(1))
        assert (step1 > 0) == (s == "+1")


def _rows(out, header):
    """The Markdown table after ``header`` in the output: {first column: [cells]}."""
    lines = out[out.index(header):].splitlines()[2:]
    rows = {}
    for line in lines:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def _mean_std(cell):
    mean, std = cell.split("±")
    return float(mean), float(std)


def test_04_weighting_study(tmp_path, monkeypatch):
    """The sweep runs, prints one row per setting, and its numbers bear out
    each claim the notebook's conclusions make."""
    out = _run(NOTEBOOKS[3], tmp_path, monkeypatch)
    fixed = ["fixed 0", "fixed 0.01", "fixed 0.03", "fixed 0.1", "fixed 0.3", "fixed 1",
             "fixed 3", "fixed 10", "fixed 100"]
    strategies = ["calibrated", "normalized", "curriculum", "adaptive"]
    rows = _rows(out, "| setting | final weight | success | mean final error |")
    assert list(rows) == fixed + strategies
    w = {k: float(r[0]) for k, r in rows.items()}
    succ = {k: _mean_std(r[1]) for k, r in rows.items()}
    err = {k: _mean_std(r[2]) for k, r in rows.items()}
    reach = {k: _mean_std(r[3])[0] for k, r in rows.items()}
    beyond = {k: _mean_std(r[4])[0] for k, r in rows.items()}
    warned = {k: r[5] for k, r in rows.items()}
    s, e = {k: v[0] for k, v in succ.items()}, {k: v[0] for k, v in err.items()}
    # the weight matters far beyond the spread between seeds
    assert max(v[1] for v in succ.values()) <= 0.04 and max(v[1] for v in err.values()) <= 0.04
    assert max(s.values()) - min(s.values()) > 0.4 and max(e.values()) > 2 * min(e.values()) - 0.05
    # success is best with no or almost no trajectory term, every reachable state succeeding
    assert max(s, key=s.get) in ("fixed 0", "fixed 0.01")
    assert reach["fixed 0"] == 1.0 and beyond["fixed 0"] > 2.5
    # the mean error is best with a large weight, which halves it
    assert min(e, key=e.get) in ("fixed 10", "fixed 100")
    assert e["fixed 10"] < 0.55 * e["fixed 0"] and beyond["fixed 10"] < 1.2
    # success dips at weights 0.3 to 1 and recovers at 10 to 100
    assert max(s["fixed 0.3"], s["fixed 1"]) < min(s["fixed 10"], s["fixed 100"]) - 0.05
    # no strategy beats the best fixed weight on either measure
    for k in strategies:
        assert s[k] < max(s[f] for f in fixed) and e[k] > min(e[f] for f in fixed)
    # calibrated ~ fixed at its weight (0.1); curriculum ends at 1 and behaves like fixed 1
    assert abs(w["calibrated"] - 0.1) < 0.01
    assert abs(s["calibrated"] - s["fixed 0.1"]) < 0.02 and abs(e["calibrated"] - e["fixed 0.1"]) < 0.02
    assert w["curriculum"] == 1.0
    assert abs(s["curriculum"] - s["fixed 1"]) < 0.02 and abs(e["curriculum"] - e["fixed 1"]) < 0.02
    # normalized between fixed 0.1 and 0.3
    assert 0.1 < w["normalized"] < 0.3
    # adaptive beats the fixed weights around its final weight, but fixed 10 beats it on both
    assert 0.1 < w["adaptive"] < 0.3
    for f in ("fixed 0.1", "fixed 0.3"):
        assert s["adaptive"] > s[f] and e["adaptive"] < e[f]
    assert s["fixed 10"] > s["adaptive"] and e["fixed 10"] < e["adaptive"]
    # the dominance warning: every fixed weight but 0, never adaptive
    assert warned["fixed 0"] == "0/4" and warned["adaptive"] == "0/4"
    assert all(warned[f] == "4/4" for f in fixed[1:])
    # the monitor's table with its Status column
    table = _rows(out, "| Run | Weight | Epochs | Eval Loss | Success | Error | Status |")
    assert list(table) == fixed + strategies
    assert table["fixed 0"][-1] == "ok" and table["adaptive"][-1] == "ok"
    assert table["fixed 10"][-1] == "warning: trajectory > 70%"
