"""The notebooks run end to end (each cell within 90 s) and are committed
with their outputs cleared."""
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
    # the notebooks' models are tiny: one torch thread is ~10x faster per step
    # than two on a 2-core machine that is also running the rest of the suite
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
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


def test_04_training_loop(tmp_path, monkeypatch):
    out = _run(NOTEBOOKS[3], tmp_path, monkeypatch)
    assert "| Run | Weight | Epochs | Eval Loss | Success | Error | Status |" in out
    for name in ("control only", "weight 1.0", "calibrated", "normalized", "curriculum", "adaptive"):
        assert f"| {name} |" in out
