"""``import trajloss`` finds the installed package from any folder.

The package lives in ``src/trajloss``, so no folder Python may start in holds a
``trajloss/`` that could stand in for the install: not the repository root
(whose source folder would lack the compiled ``_core`` after a non-editable
install), and not the parent folder of a clone named ``trajloss`` (which
Python would otherwise take for a namespace package: ``AttributeError`` for
every name, or ``python -m trajloss`` failing to load the OpenBLAS library).

Each case starts a fresh interpreter in the folder, with the environment of
this test run (the installed package, whatever the install), imports
trajloss, and computes a loss through the C core; the value is checked
against a plain NumPy rollout written here. A last test checks that an
editable re-install of an unchanged tree reuses the compiled module instead
of compiling it again.
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import trajloss

ROOT = pathlib.Path(__file__).resolve().parent.parent
#: The package this test run imports: the one every child must import too.
PACKAGE = pathlib.Path(trajloss.__file__).resolve()

DT = 0.25
_rng = np.random.default_rng(22)
DATA = {"dt": DT,
        "controls": _rng.standard_normal((3, 7, 1)).tolist(),
        "x0": _rng.standard_normal((3, 2)).tolist(),
        "target": _rng.standard_normal((3, 2)).tolist()}

CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import trajloss
    data = json.loads(sys.argv[1])
    result = trajloss.terminal_loss(trajloss.DoubleIntegrator(dt=data["dt"]),
                                    np.array(data["controls"]), np.array(data["x0"]),
                                    np.array(data["target"]))
    print(json.dumps({"path0": sys.path[0], "file": trajloss.__file__,
                      "core": trajloss._core.__file__, "value": float(result.value)}))
""")


def numpy_terminal_loss(dt, controls, x0, target):
    """mean_b mean_d (x_T[b] - target[b])², x_{t+1} = Ad x_t + Bd u_t with the
    double integrator's exact zero-order hold Ad = [[1, dt], [0, 1]],
    Bd = [dt²/2, dt]."""
    Ad = np.array([[1.0, dt], [0.0, 1.0]])
    Bd = np.array([dt * dt / 2.0, dt])
    errors = []
    for b in range(len(x0)):
        x = np.array(x0[b], dtype=np.float64)
        for u in controls[b]:
            x = Ad @ x + Bd * u[0]
        errors.append(np.mean((x - np.array(target[b])) ** 2))
    return float(np.mean(errors))


def child_env():
    """This run's environment (its PYTHONPATH, if any, included), with the
    current folder on sys.path as a user has it: no PYTHONSAFEPATH."""
    env = dict(os.environ)
    env.pop("PYTHONSAFEPATH", None)
    return env


def assert_is_the_installed_package(file, where):
    path = pathlib.Path(file).resolve()
    assert path == PACKAGE, f"from {where}: imported {file}, this test run imports {PACKAGE}"
    # in the repository, only src/trajloss is the package (an editable install)
    assert path == ROOT / "src" / "trajloss" / "__init__.py" or ROOT not in path.parents, path


def test_this_run_imports_the_package_not_a_stale_source_folder():
    assert PACKAGE.name == "__init__.py", PACKAGE  # a regular package, not a namespace
    assert PACKAGE == ROOT / "src" / "trajloss" / "__init__.py" or ROOT not in PACKAGE.parents
    assert not (ROOT / "trajloss" / "__init__.py").exists()  # nothing at the root to shadow it


def folder(kind, tmp_path):
    """The current folder of each case."""
    if kind == "parent of a clone named trajloss":
        (tmp_path / "trajloss").symlink_to(ROOT, target_is_directory=True)
        return tmp_path
    if kind == "repository root":
        return ROOT
    return tmp_path  # an unrelated, empty folder


CASES = ["parent of a clone named trajloss", "repository root", "unrelated folder"]


@pytest.mark.parametrize("kind", CASES)
def test_import_from_any_folder_computes_the_loss(kind, tmp_path):
    where = folder(kind, tmp_path)
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(DATA)], cwd=where,
                          env=child_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"from {where}:\n{proc.stderr}"
    out = json.loads(proc.stdout)
    assert out["path0"] == ""  # the current folder was searched first
    assert_is_the_installed_package(out["file"], where)
    assert pathlib.Path(out["core"]).resolve().parent == PACKAGE.parent
    expected = numpy_terminal_loss(DT, DATA["controls"], DATA["x0"], DATA["target"])
    assert abs(out["value"] - expected) <= 1e-12 * max(1.0, abs(expected)), (out, expected)


@pytest.mark.parametrize("kind", CASES)
def test_python_m_trajloss_from_any_folder(kind, tmp_path):
    """The command-line entry point, which imports submodules first: from the
    parent folder of a clone in the old flat layout it skipped the package's
    __init__ and failed to load the OpenBLAS library."""
    where = folder(kind, tmp_path)
    proc = subprocess.run([sys.executable, "-m", "trajloss", "demo"], cwd=where,
                          env=child_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"from {where}:\n{proc.stderr}"
    # d(sum of all states)/du[0, 3] over 15 steps with dt = 1/3: u_3 reaches
    # x_4 ... x_15, x_{4+p} = Ad^p Bd = (dt²/2 + p dt², dt), p = 0 ... 11
    dt = 1.0 / 3.0
    closed_form = sum(dt * dt / 2 + p * dt * dt + dt for p in range(12))
    assert f"adjoint {closed_form:.6f}" in proc.stdout, proc.stdout


# ---- an editable re-install of an unchanged tree compiles nothing -----------------

REINSTALL = textwrap.dedent("""
    import json, os, sys, time
    import setuptools  # noqa: F401  (first: it puts its own distutils in place)
    from distutils.core import run_setup
    from setuptools.command import build_ext as setuptools_build_ext

    compiled = []

    def compile_instead(self, ext):  # what a rebuild would run: record it, leave a file
        compiled.append(ext.name)
        target = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "wb").close()

    setuptools_build_ext.build_ext.build_extension = compile_instead
    dist = run_setup("setup.py", script_args=["build_ext"], stop_after="commandline")
    cmd = dist.get_command_obj("build_ext")
    cmd.editable_mode = True  # as pip install -e sets it: a fresh build folder each time
    cmd.build_lib, cmd.build_temp = sys.argv[1], sys.argv[2]
    cmd.ensure_finalized()
    (ext,) = cmd.extensions
    in_place = cmd._get_inplace_equivalent(cmd.get_finalized_command("build_py"), ext)[0]
    if sys.argv[3] == "fresh module":
        later = time.time() + 100
        with open(in_place, "wb") as f:
            f.write(b"the module an earlier install built")
        os.utime(in_place, (later, later))
    elif sys.argv[3] == "changed source":
        later = os.path.getmtime(in_place) + 100
        os.utime(ext.sources[0], (later, later))
    cmd.run()  # builds into build_lib, then copies the module to in_place
    with open(in_place, "rb") as f:
        content = f.read()
    print(json.dumps({"in_place": os.path.abspath(in_place), "compiled": compiled,
                      "content": content.decode()}))
""")


def test_editable_reinstall_reuses_an_up_to_date_module_and_rebuilds_a_changed_one(tmp_path):
    """pip install -e builds in a fresh temporary folder every time; setup.py
    then copies the module the previous install left in src/trajloss when it
    is newer than every source and header. Run on a copy of the project, with
    the compile step replaced by a recorder: where setuptools puts the module
    of an in-place build (its own rule) must be where setup.py looks."""
    project = tmp_path / "project"
    ignore = shutil.ignore_patterns("*.so", "__pycache__", "build", "*.egg-info")
    project.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, project / name)
    shutil.copytree(ROOT / "csrc", project / "csrc", ignore=ignore)
    shutil.copytree(ROOT / "src", project / "src", ignore=ignore)

    def reinstall(step):
        build = tmp_path / f"build-{step}"
        proc = subprocess.run([sys.executable, "-c", REINSTALL, str(build / "lib"),
                               str(build / "temp"), step], cwd=project,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stdout

    out, stdout = reinstall("fresh module")
    assert pathlib.Path(out["in_place"]).parent == project / "src" / "trajloss"
    assert out["compiled"] == [], stdout
    assert out["content"] == "the module an earlier install built"
    assert "is up to date, not rebuilt" in stdout

    out, stdout = reinstall("changed source")
    assert out["compiled"] == ["trajloss._core"], stdout
    assert "not rebuilt" not in stdout
