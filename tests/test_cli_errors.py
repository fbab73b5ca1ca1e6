"""``python -m trajloss``: bad input of any kind -- every option, every key of
a ``--system`` file (JSON and .npz), the file itself -- ends in one line on
stderr that names what is wrong, exit status 2 and no traceback; text the
user supplied is echoed with control characters escaped."""

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trajloss
from npy_helpers import npy_member
import trajloss.__main__ as cli
import trajloss.report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(trajloss.__file__)))
GOOD = {"A": [[0.0, 1.0], [0.0, 0.0]], "B": [[0.0], [1.0]], "dt": 0.25,
        "x0_low": [-1.0, -0.5], "x0_high": [1.0, 0.5]}
ESC = "\x1b[31m"
SYSTEM_KEYS = ("A", "B", "dt", "x0_low", "x0_high", "target", "steps", "control_bound", "name")
SYSTEM_MAX_BYTES = 64 * 2**20  # the documented limit of a --system file


def run(*args, timeout=120):
    """The CLI in a subprocess, as the user runs it."""
    return subprocess.run([sys.executable, "-m", "trajloss", *args], cwd=PACKAGE_ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=PACKAGE_ROOT))


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run_inprocess(capsys, *args):
    """``python -m trajloss ARGS`` in this process: any exception escaping
    ``main`` (what the user would see as a traceback) fails the test."""
    capsys.readouterr()
    try:
        rc = cli.main(list(args))
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return Result(rc, out, err)


def assert_one_line_error(proc, *words):
    """Exit status 2, exactly one line on stderr (naming ``words``), nothing on
    stdout, no traceback and no raw control character."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-300:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.endswith("\n") and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stdout == ""
    assert all(ch >= " " for ch in proc.stderr[:-1]), repr(proc.stderr)
    for word in words:
        assert word in proc.stderr, (word, proc.stderr)


def write_json(tmp_path, obj, name="system.json"):
    path = tmp_path / name
    path.write_text(json.dumps(obj, allow_nan=True))
    return str(path)


# --------------------------------------------------------------------------
# The reported defects, as the user meets them (subprocess)
# --------------------------------------------------------------------------


def test_point_box_at_the_target_is_a_report_not_a_zero_division(tmp_path):
    """x0_low == x0_high == target: every reference is exactly zero, so the
    'average' method's end-point errors are 0 and the observed order of the
    sweep is undefined (it divided by 0 before)."""
    path = write_json(tmp_path, dict(GOOD, x0_low=[0.0, 0.0], x0_high=[0.0, 0.0]))
    proc = run("report", "--system", path, "--samples", "40", "--json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    r = json.loads(proc.stdout)
    for row in r["steps_sweep"]:
        assert row["mean"] == 0.0 and row["max"] == 0.0  # closed form: x0 = xf = 0, u = 0
        assert row["order"] is None
    # the text report shows the undefined order as an empty cell
    text = run("report", "--system", path, "--samples", "40")
    assert text.returncode == 0 and "Traceback" not in text.stderr


def test_point_box_elsewhere_runs(tmp_path):
    path = write_json(tmp_path, dict(GOOD, x0_low=[1.0, 0.5], x0_high=[1.0, 0.5]))
    proc = run("report", "--system", path, "--samples", "40", "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["problem"]["x0_low"] == r["problem"]["x0_high"] == [1.0, 0.5]


def test_infinite_steps(tmp_path):
    path = tmp_path / "inf.json"
    path.write_text('{"A": [[0, 1], [0, 0]], "B": [[0], [1]], "dt": 0.25, '
                    '"x0_low": [-1, -1], "x0_high": [1, 1], "steps": Infinity}')
    assert_one_line_error(run("report", "--system", str(path)), "steps")


def test_deeply_nested_json(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text('{"A": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert_one_line_error(run("report", "--system", str(path)), "nested")


@pytest.mark.parametrize("content", [b"PK\x03\x04 then not a zip archive at all" * 3,
                                     b"hello, this is not a zip archive\n"])
def test_not_a_zip_npz(tmp_path, content):
    """A file with a zip's magic number but no archive behind it (BadZipFile)."""
    path = tmp_path / "sys.npz"
    path.write_bytes(content)
    assert_one_line_error(run("report", "--system", str(path)), "sys.npz", ".npz")


def test_pickled_npz_is_refused(tmp_path):
    path = tmp_path / "pickle.npz"
    np.savez(path, **{k: np.asarray(v) for k, v in GOOD.items()},
             name=np.array([{"evil": 1}], dtype=object))
    assert_one_line_error(run("report", "--system", str(path)), "name")


def test_system_name_escape_codes_are_escaped(tmp_path):
    path = write_json(tmp_path, dict(GOOD, name=ESC + "red\u202e\nline"))
    proc = run("report", "--system", path, "--samples", "40")
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.split("\n")[0]
    assert "\x1b" not in proc.stdout and "\u202e" not in proc.stdout
    assert first == "trajloss report: \\x1b[31mred\\u202e\\nline"
    # --json keeps the name whole: JSON escapes it
    proc = run("report", "--system", path, "--samples", "40", "--json")
    assert json.loads(proc.stdout)["problem"]["name"] == ESC + "red\u202e\nline"
    assert "\x1b" not in proc.stdout


def test_path_with_escape_codes_is_escaped(tmp_path):
    bad = tmp_path / (ESC + "missing.json")
    proc = run("report", "--system", str(bad))
    assert_one_line_error(proc, "\\x1b[31mmissing.json", "no such file")


def test_unknown_arguments_are_escaped():
    assert_one_line_error(run("report", "--x" + ESC), "\\x1b[31m")
    assert_one_line_error(run(ESC + "cmd"), "unknown command", "\\x1b[31mcmd")
    assert_one_line_error(run("demo", "extra"), "demo")


# --------------------------------------------------------------------------
# Every option
# --------------------------------------------------------------------------


@pytest.mark.parametrize("args,word", [
    (["--steps", "1e9"], "--steps"),
    (["--steps", "inf"], "--steps"),
    (["--steps", "99999999999999999999"], "--steps"),
    (["--steps", "1000001"], "at most 1000000"),
    (["--dt", "1/1e-320"], "--dt"),          # overflows to inf
    (["--dt", "1e-320/1e300"], "--dt"),      # underflows to 0
    (["--dt", "inf/inf"], "--dt"),
    (["--dt", "1e300"], "--dt"),             # Ad overflows
    (["--samples", "1e3"], "--samples"),
    (["--samples", "1000000001"], "--samples"),
    (["--seed", "-1"], "--seed"),
    (["--seed", "1.5"], "--seed"),
    (["--bound", "1e308"], "control_bound"),  # the random baseline's width overflows
    (["--bound", "1e200"], "overflow"),       # its squares overflow
    (["--bound", "nan"], "--bound"),
    (["--bound", "-inf"], "--bound"),
    (["--json", "yes"], "unrecognized"),
    (["--system"], "--system"),
])
def test_bad_options(capsys, args, word):
    extra = [] if "--samples" in args else ["--samples", "30"]
    assert_one_line_error(run_inprocess(capsys, "report", *args, *extra), word)


def test_a_chunk_beyond_the_machines_memory_is_a_one_line_error(capsys, monkeypatch):
    """The report streams its samples in chunks, so only a chunk has to fit:
    a machine too small for even that gets one line naming the memory."""
    monkeypatch.setattr(trajloss.report, "_physical_memory", lambda: 4096)
    assert_one_line_error(run_inprocess(capsys, "report", "--samples", "30"), "GiB", "--steps")


def test_a_billion_samples_need_no_more_memory_than_a_thousand():
    """--samples no longer multiplies the memory the report asks for."""
    problem = trajloss.report.default_problem()
    size = trajloss.report.chunk_samples(problem, 10**9)
    assert size == trajloss.report.chunk_samples(problem, 10**6) <= trajloss.report.CHUNK
    assert trajloss.report._memory_needed(problem, size) <= trajloss.report.CHUNK_BYTES


# --------------------------------------------------------------------------
# Every key of a --system file
# --------------------------------------------------------------------------

BIG_INT = "1" + "0" * 400  # an integer JSON number beyond float64

BAD_VALUES = {
    # key: [(value, words the message must contain)]
    "A": [("abc", ["A"]), ([[0, 1], [0]], ["A"]), ([[True, False], [False, True]], ["A"]),
          ([[1, 2, 3]], ["A", "square"]), ([0, 1], ["A"]), ([[[0]]], ["A"]), ([], ["A"]),
          ([[float("nan"), 1], [0, 0]], ["A", "finite"]), ({"a": 1}, ["A"]), (None, ["A"]),
          ([[1e300, 0], [0, 1e300]], ["A"]), ([[0] * 300] * 300, ["A", "256"])],
    "B": [([[0], [1], [2]], ["B"]), ([[0, 1]], ["B"]), ([["x"], ["y"]], ["B"]),
          ([[float("inf")], [1]], ["B", "finite"]), (1.0, ["B"])],
    "dt": [("fast", ["dt"]), (None, ["dt"]), (True, ["dt"]), ([0.1], ["dt"]), (0, ["dt"]),
           (-0.5, ["dt"]), (float("nan"), ["dt"]), (float("inf"), ["dt"]), (1e300, ["dt"]),
           (1e-320, ["not reachable"])],
    "x0_low": [([0, 0, 0], ["x0_low"]), ([float("nan"), 0], ["x0_low"]), ("a", ["x0_low"]),
               ([2, 2], ["x0_low", "x0_high"]), ([[0, 0]], ["x0_low"])],
    "x0_high": [([-1e200, -1e200], ["x0_low", "x0_high"]), ([None, 1], ["x0_high"])],
    "target": [([1], ["target"]), ([float("inf"), 0], ["target"]), ({}, ["target"])],
    "steps": [(0, ["steps"]), (-3, ["steps"]), (2.5, ["steps"]), (float("nan"), ["steps"]),
              (float("inf"), ["steps"]), (1e30, ["steps"]), ("10", ["steps"]), (True, ["steps"]),
              ([15], ["steps"]), (10**6 + 1, ["steps"])],
    "control_bound": [(0, ["control_bound"]), (-1, ["control_bound"]),
                      (float("nan"), ["control_bound"]), (float("inf"), ["control_bound"]),
                      ("8", ["control_bound"]), (1e308, ["control_bound"])],
    "name": [(5, ["name"]), (["a"], ["name"]), (None, ["name"])],
}
CASES = [(k, i) for k, vs in BAD_VALUES.items() for i in range(len(vs))]


@pytest.mark.parametrize("key,index", CASES)
def test_bad_json_values(capsys, tmp_path, key, index):
    value, words = BAD_VALUES[key][index]
    path = write_json(tmp_path, dict(GOOD, **{key: value}))
    assert_one_line_error(run_inprocess(capsys, "--system", path, "--samples", "30"), *words)


@pytest.mark.parametrize("key", ["dt", "steps", "control_bound"])
def test_integer_beyond_float64(capsys, tmp_path, key):
    path = tmp_path / "big.json"
    text = json.dumps(GOOD)[:-1] + f', "{key}": {BIG_INT}' + "}"
    if key == "dt":
        text = json.dumps({k: v for k, v in GOOD.items() if k != "dt"})[:-1] + f', "dt": {BIG_INT}}}'
    path.write_text(text)
    assert_one_line_error(run_inprocess(capsys, "--system", str(path), "--samples", "30"), key)


def test_huge_box_overflows_into_a_clear_error(capsys, tmp_path):
    path = write_json(tmp_path, dict(GOOD, x0_low=[-1e200, -1e200], x0_high=[1e200, 1e200],
                                     control_bound=1e300))
    assert_one_line_error(run_inprocess(capsys, "--system", path, "--samples", "30"),
                          "overflow")


@pytest.mark.parametrize("text,words", [
    ('{"A": 1, "A": 2}', ["'A'", "more than once"]),
    ('{"A": [[0]], "B": [[1]], "dt": 0.1, "x0_low": [0], "x0_high": [1], "dT": 0.2}',
     ["unknown key", "'dT'"]),
    ('[1, 2, 3]', ["object"]),
    ('"text"', ["object"]),
    ("{not json", ["JSON"]),
    ("", ["JSON"]),
    ('{"A": [[0, 1], [0, 0]]', ["JSON"]),
])
def test_bad_json_documents(capsys, tmp_path, text, words):
    path = tmp_path / "doc.json"
    path.write_text(text)
    assert_one_line_error(run_inprocess(capsys, "--system", str(path), "--samples", "30"), *words)


def test_non_utf8_json(capsys, tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes(json.dumps(dict(GOOD, name="x")).replace('"x"', '"caf\xe9"')
                     .encode("latin-1"))
    assert_one_line_error(run_inprocess(capsys, "--system", str(path)), "UTF-8", "0xe9")


def test_system_limits_are_the_documented_ones():
    assert trajloss.report.SYSTEM_KEYS == SYSTEM_KEYS
    assert trajloss.report.SYSTEM_MAX_BYTES == SYSTEM_MAX_BYTES


def test_oversized_json_is_refused_before_parsing(capsys, tmp_path):
    path = tmp_path / "big.json"
    with open(path, "w") as f:
        f.write('{"name": "')
        f.write("x" * (SYSTEM_MAX_BYTES + 10))
        f.write('"}')
    assert_one_line_error(run_inprocess(capsys, "--system", str(path)), "larger than")


def test_directory_fifo_missing_and_unreadable(capsys, tmp_path, monkeypatch):
    d = tmp_path / "dir.json"
    d.mkdir()
    assert_one_line_error(run_inprocess(capsys, "--system", str(d)), "directory")
    assert_one_line_error(run_inprocess(capsys, "--system", str(tmp_path)), "directory")
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)  # opening it would block until a writer comes: refused instead
    assert_one_line_error(run_inprocess(capsys, "--system", str(fifo)), "regular file")
    assert_one_line_error(run_inprocess(capsys, "--system", str(tmp_path / "no.npz")),
                          "no such file")
    # permission denied (simulated: the tests may run as root, who reads anything)
    path = write_json(tmp_path, GOOD, "locked.json")
    real_open = open

    def deny(file, *args, **kwargs):
        if str(file) == path:
            raise PermissionError(13, "Permission denied", path)
        return real_open(file, *args, **kwargs)
    monkeypatch.setattr("builtins.open", deny)
    assert_one_line_error(run_inprocess(capsys, "--system", path), "Permission denied")


# --------------------------------------------------------------------------
# .npz system files
# --------------------------------------------------------------------------


def npz_arrays(**changes):
    arrays = {k: np.asarray(v) for k, v in GOOD.items()}
    arrays.update(changes)
    return arrays


@pytest.mark.parametrize("key,value,word", [
    ("A", np.array("abc"), "A"),
    ("A", np.array([[1 + 1j, 0], [0, 0]]), "A"),
    ("A", np.zeros((2, 2), dtype="M8[s]"), "A"),
    ("A", np.zeros(2, dtype=[("a", "f8"), ("b", "f8")]), "A"),
    ("B", np.zeros((2, 1, 1)), "B"),
    ("dt", np.array([0.1, 0.2]), "dt"),
    ("dt", np.array("0.1"), "dt"),
    ("dt", np.array(np.nan), "dt"),
    ("x0_low", np.array([np.inf, 0]), "x0_low"),
    ("steps", np.array(7.5), "steps"),
    ("name", np.array([b"x", b"y"]), "name"),
    ("name", np.array(3), "name"),
    ("extra", np.zeros(3), "unexpected"),
])
def test_bad_npz_values(capsys, tmp_path, key, value, word):
    path = tmp_path / "sys.npz"
    np.savez(path, **npz_arrays(**{key: value}))
    assert_one_line_error(run_inprocess(capsys, "--system", str(path), "--samples", "30"), word)


def test_npz_claiming_more_than_it_holds(capsys, tmp_path):
    """A small file whose A header claims 2 GiB is refused from its header."""
    path = tmp_path / "forged.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for k, v in npz_arrays().items():
            z.writestr(k + ".npy", npy_member(v, (2**14, 2**14) if k == "A" else None))
    assert os.path.getsize(path) < 10_000
    assert_one_line_error(run_inprocess(capsys, "--system", str(path)), "A", "2147483648")


def test_npz_over_the_size_limit(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(trajloss.report, "SYSTEM_MAX_BYTES", 64)
    path = tmp_path / "sys.npz"
    np.savez(path, **npz_arrays())
    assert_one_line_error(run_inprocess(capsys, "--system", str(path)), "max_bytes=64")


def test_npz_and_json_give_the_same_report(tmp_path):
    """The valid files still work (and both readers agree)."""
    jpath = write_json(tmp_path, dict(GOOD, name="same", steps=10, control_bound=6.0))
    npath = tmp_path / "same.npz"
    np.savez(npath, **npz_arrays(name=np.array("same"), steps=np.array(10),
                                 control_bound=np.array(6.0)))
    pj = trajloss.report.load_problem(jpath)
    pn = trajloss.report.load_problem(npath)
    assert pj.name == pn.name == "same" and pj.steps == pn.steps == 10
    assert pj.control_bound == pn.control_bound == 6.0
    np.testing.assert_array_equal(pj.system.Ad, pn.system.Ad)
    # the double integrator's exact ZOH (closed form)
    np.testing.assert_allclose(pj.system.Ad, [[1, 0.25], [0, 1]], rtol=0, atol=1e-15)
    np.testing.assert_allclose(pj.system.Bd, [[0.25**2 / 2], [0.25]], rtol=1e-15)


# --------------------------------------------------------------------------
# Fuzzing the JSON file: whatever it holds, a report or one line and status 2
# --------------------------------------------------------------------------

json_scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.text(max_size=8)
                | st.floats(allow_nan=True, allow_infinity=True))
json_values = st.recursive(json_scalars, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=4), children, max_size=3),
                           max_leaves=12)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(key=st.sampled_from(SYSTEM_KEYS + ("other",)), value=json_values)
def test_fuzz_one_key(capsys, tmp_path, key, value):
    path = write_json(tmp_path, dict(GOOD, **{key: value}), "fuzz.json")
    proc = run_inprocess(capsys, "--system", path, "--samples", "20", "--json")
    if proc.returncode == 0:
        json.loads(proc.stdout)
    else:
        assert_one_line_error(proc)


def test_an_internal_error_is_not_disguised_as_a_user_error(capsys, monkeypatch):
    """A bug (here: compute raising ZeroDivisionError, as the sweep once did)
    propagates as what it is; only input problems become 'error:' lines."""
    def broken(*args, **kwargs):
        raise ZeroDivisionError("float division by zero")
    monkeypatch.setattr(trajloss.report, "compute", broken)
    with pytest.raises(ZeroDivisionError):
        cli.main(["report", "--samples", "20"])
    assert "error:" not in capsys.readouterr().err
