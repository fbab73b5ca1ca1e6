"""The README's set-up commands and quickstart stay true."""
import importlib.util
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _readme_commands():
    spec = importlib.util.spec_from_file_location("readme_commands", ROOT / ".ci" / "readme_commands.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.commands(README)


def test_first_block_has_exactly_two_setup_commands():
    install, test = _readme_commands()  # unpacking fails on any other count
    assert install.startswith("pip install") and install.endswith("python -m trajloss report")
    assert '".[test]"' in test and test.rstrip().endswith("python -m pytest")
    # torch is pinned to the local CPU build before the extras can pull a CUDA one
    assert test.startswith("pip install torch==2.13.0 && ")


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    # .ci/run reads the command from the README rather than keeping a copy
    assert "readme_commands.py test" in ci
    assert 'bash -euo pipefail -c "$test_cmd"' in ci
    assert "make -C csrc test" in ci


PY_BLOCKS = re.findall(r"^```python\n(.*?)^```", README, re.S | re.M)


def test_quickstart_runs(capsys):
    exec(compile(PY_BLOCKS[0], "README quickstart", "exec"), {})
    assert "(2, 15, 1) (2, 2)" in capsys.readouterr().out


def test_losses_example_runs(capsys):
    block = next(b for b in PY_BLOCKS if "combined_loss" in b)
    exec(compile(block, "README losses example", "exec"), {})
    out = capsys.readouterr().out
    assert "(8, 15, 1) (8, 2)" in out
    assert "Control: " in out and "Ratio: " in out


def test_references_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the example writes di.npz
    block = next(b for b in PY_BLOCKS if "make_dataset" in b)
    exec(compile(block, "README references example", "exec"), {})
    assert "(2, 15, 1) (2, 16, 2)" in capsys.readouterr().out
    assert (tmp_path / "di.npz").exists()


def test_weighting_example_runs(capsys):
    block = next(b for b in PY_BLOCKS if "weighting.make" in b)
    exec(compile(block, "README weighting example", "exec"), {})
    out = capsys.readouterr().out
    assert "| Run | Weight | Epochs | Eval Loss | Success | Error | Status |" in out
    assert out.count("| 3 |") == 4  # four runs of three epochs


def test_torch_training_example_runs(capsys):
    import pytest
    pytest.importorskip("torch")
    block = next(b for b in PY_BLOCKS if "tlt.CombinedLoss" in b)
    exec(compile(block, "README torch example", "exec"), {})
    first = capsys.readouterr().out
    assert "epoch 19: loss" in first
    # seeded: a reader who runs it again sees the same numbers
    exec(compile(block, "README torch example", "exec"), {})
    assert capsys.readouterr().out == first


def test_jax_training_example_runs(capsys):
    import pytest
    pytest.importorskip("jax")
    block = next(b for b in PY_BLOCKS if "tlj.combined_loss" in b)
    exec(compile(block, "README jax example", "exec"), {})
    assert "JAX loss after 200 steps" in capsys.readouterr().out
