"""``python -m trajloss``'s help texts are plain text for a terminal, both
commands are described, the demo prints a gradient that matches a closed
form, and the README documents the demo."""
import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
# the folder holding the trajloss package this test run imports (site-packages or src/)
PACKAGE_PARENT = str(pathlib.Path(importlib.util.find_spec("trajloss").origin).parent.parent)
README = (ROOT / "README.md").read_text(encoding="utf-8")
REPORT_OPTIONS = ("--steps", "--dt", "--samples", "--seed", "--bound", "--json", "--system")


def run(*args):
    """The CLI in a subprocess, as the user runs it."""
    return subprocess.run([sys.executable, "-m", "trajloss", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=PACKAGE_PARENT))


def assert_plain_text(text):
    """No reStructuredText markup: roles, literals, directives."""
    assert "``" not in text, text
    assert "`" not in text, text  # not even a single-backtick interpreted role
    assert not re.search(r":[a-z]+:", text), text  # :func:, :class:, :data:, ...
    assert ".. " not in text, text  # .. note::, .. math::
    assert "::" not in text, text


def test_report_help_is_plain_text_with_every_option():
    proc = run("report", "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    for option in REPORT_OPTIONS:
        assert option in proc.stdout, option
    assert_plain_text(proc.stdout)
    # the description says what the report is about, in plain words
    assert "double integrator" in proc.stdout
    assert "Four tables" in proc.stdout


def test_top_level_help_describes_each_command_in_one_line():
    for flag in ("--help", "-h"):
        proc = run(flag)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == ""
        assert_plain_text(proc.stdout)
        lines = proc.stdout.splitlines()
        for command in ("report", "demo"):
            described = [l for l in lines if re.match(rf"^\s+{command}\s+\S", l)]
            assert len(described) == 1, (command, proc.stdout)
            assert len(described[0].split()) >= 4, described  # a description, not just the name
        assert all(len(l) <= 80 for l in lines), proc.stdout


def test_demo_help():
    for flag in ("--help", "-h"):
        proc = run("demo", flag)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("usage: python -m trajloss demo")
        assert_plain_text(proc.stdout)


def _demo_gradient_by_hand(dt=1 / 3, steps=15, step=3):
    """d(sum of all states)/du[step] for the double integrator, from a plain
    NumPy zero-order-hold rollout of a unit control impulse (the rollout is
    linear, so the derivative is the response to the impulse)."""
    Ad = np.array([[1.0, dt], [0.0, 1.0]])
    Bd = np.array([dt * dt / 2, dt])
    x, total = np.zeros(2), 0.0
    for k in range(steps):
        x = Ad @ x + (Bd if k == step else 0.0)
        total += x.sum()
    return total


def test_demo_runs_and_its_gradients_match_a_hand_computation():
    proc = run("demo")
    assert proc.returncode == 0, proc.stderr
    line = next(l for l in proc.stdout.splitlines() if l.startswith("d(sum of states)/du[0,3]"))
    adjoint, fd = (float(v) for v in re.findall(r"(?:adjoint|difference) ([-+0-9.e]+)", line))
    expected = _demo_gradient_by_hand()
    assert abs(adjoint - expected) < 1e-6 * abs(expected)
    assert abs(fd - expected) < 1e-4 * abs(expected)


def test_readme_documents_the_demo():
    assert "python -m trajloss demo" in README
    section = README[README.index("python -m trajloss demo"):][:1500]
    assert "option" in section  # says what options it takes (none)
    assert "second" in section  # says how long it takes
