"""``python -m trajloss report``: the loss-scale and reference analysis for any LTI system.

Four tables: the scales of the control and trajectory loss terms for random
predictions and the weight that balances them; each term's share of the
total at weight 1 and at that weight; the end-point error of the
discretised ("average") minimum-energy reference against the exact one and
the continuous optimum; and the average method's error against the number
of steps at a fixed horizon (its O(dt²) decay).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from dataclasses import dataclass

import numpy as np

from .calibration import calibrate
from .datasets import DOUBLE_INTEGRATOR_DEFAULTS as STUDY
from .datasets import _check_regular_file, _path_label, _printable, _read_npz, make_dataset
from .references import min_energy
from .systems import DoubleIntegrator, LinearSystem

STEP_SWEEP = (5, 15, 50, 150)


@dataclass
class Problem:
    """A system and the box its initial states are drawn from."""

    name: str
    system: LinearSystem
    x0_low: np.ndarray
    x0_high: np.ndarray
    target: np.ndarray
    steps: int
    control_bound: float


def default_problem(steps=None, dt=None, bound=None):
    """The double-integrator study's problem, with optional overrides."""
    dt = STUDY["dt"] if dt is None else dt
    try:
        system = DoubleIntegrator(dt=dt)
    except ValueError as exc:
        raise ValueError(f"--dt {dt!r} gives no usable discrete system ({exc})") from None
    return Problem("double integrator", system,
                   np.array(STUDY["x0_low"]), np.array(STUDY["x0_high"]),
                   np.zeros(2), STUDY["steps"] if steps is None else steps,
                   STUDY["control_bound"] if bound is None else bound)


#: The keys of a ``--system`` file: required, then optional.
SYSTEM_KEYS = ("A", "B", "dt", "x0_low", "x0_high", "target", "steps", "control_bound", "name")
_REQUIRED = SYSTEM_KEYS[:5]
#: Largest ``--system`` file read (JSON text or .npz array data): 64 MiB.
SYSTEM_MAX_BYTES = 64 * 2**20
#: Largest state or input dimension the report accepts.
MAX_DIM = 256
#: Largest number of steps (a file's ``steps`` or ``--steps``).
MAX_STEPS = 10**6


def _no_duplicates(pairs):
    """A JSON object as a dict; a key given twice would silently lose one value."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {_printable(key)!r} appears more than once")
        out[key] = value
    return out


def _read_json(path, label):
    _check_regular_file(path, f"system file {label}")
    try:
        with open(path, "rb") as f:
            data = f.read(SYSTEM_MAX_BYTES + 1)
    except IsADirectoryError:
        raise ValueError(f"system file {label} is a directory") from None
    except OSError as exc:
        raise ValueError(f"cannot read system file {label}: "
                         f"{_printable(exc.strerror or exc)}") from None
    if len(data) > SYSTEM_MAX_BYTES:
        raise ValueError(f"system file {label} is larger than {SYSTEM_MAX_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"system file {label} is not UTF-8 text (byte 0x{data[exc.start]:02x} "
                         f"at offset {exc.start})") from None
    try:
        raw = json.loads(text, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise ValueError(f"system file {label}: the JSON is nested too deeply") from None
    except ValueError as exc:
        raise ValueError(f"system file {label} is not valid JSON: {_printable(exc)}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"system file {label} must hold a JSON object with keys "
                         f"{', '.join(_REQUIRED)}, got a {type(raw).__name__}")
    return raw


def _array(raw, key, label, ndim):
    """A finite float64 array of ``ndim`` dimensions from a file's ``key``."""
    value = raw[key]
    expected = {1: "a list of numbers", 2: "a list of rows of numbers (a matrix)"}[ndim]
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError, OverflowError, RecursionError):
        arr = None
    if arr is None or arr.dtype.kind not in "iuf":
        got = "strings" if arr is not None and arr.dtype.kind in "US" else (
            "true/false" if arr is not None and arr.dtype.kind == "b" else
            "values that are not all numbers, or rows of different lengths")
        raise ValueError(f"system file {label}: {key} must be {expected}, got {got}")
    if arr.ndim != ndim:
        raise ValueError(f"system file {label}: {key} must be {expected} ({ndim}-D), "
                         f"got {arr.ndim} dimension(s), shape {arr.shape}")
    with np.errstate(over="ignore"):
        arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"system file {label}: {key} must be finite numbers (no NaN or "
                         f"infinity, magnitude at most {np.finfo(np.float64).max:.4g})")
    return arr


def _number(raw, key, label):
    """A float from a file's ``key``: a JSON number or an .npz array of one element."""
    value = raw[key]
    if isinstance(value, np.ndarray):
        if value.size != 1 or value.dtype.kind not in "iuf":
            raise ValueError(f"system file {label}: {key} must be a single number, got an "
                             f"array of shape {value.shape} and dtype {value.dtype}")
        value = value.reshape(()).item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"system file {label}: {key} must be a number, got "
                         f"{_printable(_json_type(value))}")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"system file {label}: {key} must be at most "
                         f"{np.finfo(np.float64).max:.4g}, got a larger integer") from None


def _json_type(value):
    """How a file's value is described in messages: 'a string', 'a list', ..."""
    return {str: "a string", list: "a list", dict: "an object", type(None): "null",
            bool: "true/false"}.get(type(value), f"a {type(value).__name__}")


def load_problem(path, steps=None, dt=None, bound=None):
    """A problem from an ``.npz`` or JSON file with continuous ``A``, ``B``,
    ``dt``, ``x0_low``, ``x0_high`` and optionally ``target``, ``steps``,
    ``control_bound``, ``name``.

    Every key is checked: ``A`` (n, n) and ``B`` (n, m) finite, n, m <=
    :data:`MAX_DIM`; ``dt`` finite > 0; ``x0_low`` <= ``x0_high`` and
    ``target`` n finite numbers; ``steps`` a whole number in [1,
    :data:`MAX_STEPS`]; ``control_bound`` finite > 0; ``name`` a string.
    Unknown and repeated keys are refused, as are files larger than
    :data:`SYSTEM_MAX_BYTES`. Anything wrong raises one ValueError naming
    the file and the key."""
    label = _path_label(path)
    if os.fsdecode(path).lower().endswith(".json"):
        raw = _read_json(path, label)
    else:
        try:
            raw = _read_npz(path, SYSTEM_MAX_BYTES, SYSTEM_KEYS, f"system file {label}")
        except ValueError as exc:
            hint = "; expected an .npz archive or a .json file" if "not an .npz" in str(exc) else ""
            raise ValueError(f"{exc}{hint}") from None
    unknown = [k for k in raw if k not in SYSTEM_KEYS]
    if unknown:
        raise ValueError(f"system file {label}: unknown key(s) "
                         f"{', '.join(repr(_printable(k)) for k in unknown)}; expected "
                         f"{', '.join(SYSTEM_KEYS)}")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise ValueError(f"system file {label} lacks {', '.join(missing)}")

    A, B = _array(raw, "A", label, 2), _array(raw, "B", label, 2)
    if A.shape[0] != A.shape[1] or not 1 <= A.shape[0] <= MAX_DIM:
        raise ValueError(f"system file {label}: A must be a square matrix (n, n) with "
                         f"1 <= n <= {MAX_DIM}, got shape {A.shape}")
    n = A.shape[0]
    if B.shape[0] != n or not 1 <= B.shape[1] <= MAX_DIM:
        raise ValueError(f"system file {label}: B must have shape (n, m) = ({n}, m) with "
                         f"1 <= m <= {MAX_DIM}, got shape {B.shape}")
    file_dt = _number(raw, "dt", label)
    if not (math.isfinite(file_dt) and file_dt > 0):
        raise ValueError(f"system file {label}: dt must be a finite number > 0, got {file_dt!r}")
    vectors = {}
    for key in ("x0_low", "x0_high", "target"):
        v = _array(raw, key, label, 1) if key in raw else np.zeros(n)
        if v.shape != (n,):
            raise ValueError(f"system file {label}: {key} must have {n} entries (n from A), "
                             f"got shape {v.shape}")
        vectors[key] = v
    if np.any(vectors["x0_low"] > vectors["x0_high"]):
        raise ValueError(f"system file {label}: x0_low must not exceed x0_high, got "
                         f"{vectors['x0_low'].tolist()} > {vectors['x0_high'].tolist()}")
    file_steps = STUDY["steps"]
    if "steps" in raw:
        file_steps = _number(raw, "steps", label)
        if not (math.isfinite(file_steps) and file_steps == int(file_steps)
                and 1 <= file_steps <= MAX_STEPS):
            raise ValueError(f"system file {label}: steps must be a whole number in "
                             f"[1, {MAX_STEPS}], got {file_steps!r}")
        file_steps = int(file_steps)
    file_bound = STUDY["control_bound"]
    if "control_bound" in raw:
        file_bound = _number(raw, "control_bound", label)
        if not (math.isfinite(file_bound) and file_bound > 0):
            raise ValueError(f"system file {label}: control_bound must be a finite number "
                             f"> 0, got {file_bound!r}")
    name = raw.get("name", os.fsdecode(path))
    if isinstance(name, np.ndarray):
        if name.shape != () or name.dtype.kind != "U":
            raise ValueError(f"system file {label}: name must be a string, got an array of "
                             f"shape {name.shape} and dtype {name.dtype}")
        name = str(name)
    if not isinstance(name, str):
        raise ValueError(f"system file {label}: name must be a string, got {_json_type(name)}")
    try:
        system = LinearSystem.from_continuous(A, B, file_dt if dt is None else dt)
    except ValueError as exc:
        source = "dt" if dt is None else "--dt"
        raise ValueError(f"system file {label}: A, B and {source} = {file_dt if dt is None else dt!r} "
                         f"give no usable discrete system ({exc})") from None
    return Problem(name, system, vectors["x0_low"], vectors["x0_high"], vectors["target"],
                   file_steps if steps is None else steps,
                   file_bound if bound is None else bound)


def compute(problem: Problem, samples=10_000, seed=0):
    """Every number of the report, as a plain dict (what ``--json`` prints)."""
    system, steps, bound = problem.system, problem.steps, problem.control_bound
    data = make_dataset(system, samples, steps, x0_low=problem.x0_low, x0_high=problem.x0_high,
                        target=problem.target, control_bound=bound, method="exact", seed=seed)
    cal = calibrate(system, data, control_bound=bound, seed=seed)
    out = {
        "problem": {
            "name": problem.name, "n": system.n, "m": system.m, "steps": steps,
            "dt": system.dt, "horizon": steps * system.dt, "samples": samples, "seed": seed,
            "x0_low": problem.x0_low.tolist(), "x0_high": problem.x0_high.tolist(),
            "target": problem.target.tolist(), "control_bound": bound,
            "resampled": data.resampled,
        },
        "scales": {
            "control_mse": cal.control_mse, "trajectory_mse": cal.trajectory_mse,
            "ratio": cal.ratio, "recommended_weight": cal.recommended_weight,
        },
        "breakdown": [cal.breakdown(1.0), cal.breakdown(cal.recommended_weight)],
    }
    disc = {}
    for method in ("average", "exact", "continuous"):
        ref = min_energy(system, data.x0, data.xf, steps, method)
        if method == "continuous":
            err = np.linalg.norm(ref.states[:, -1] - data.xf, axis=1)
            method = "continuous_endpoint"
        else:
            err = ref.final_error
        disc[method] = {"mean": float(err.mean()), "max": float(err.max())}
    out["discretisation"] = disc

    horizon = steps * system.dt
    sweep, prev = [], None
    for k in STEP_SWEEP:
        sys_k = LinearSystem.from_continuous(system.A, system.B, horizon / k)
        err = min_energy(sys_k, data.x0, data.xf, k, "average").final_error
        row = {"steps": k, "dt": horizon / k, "mean": float(err.mean()), "max": float(err.max())}
        row["order"] = None if prev is None else _order(prev, row)
        sweep.append(row)
        prev = row
    out["steps_sweep"] = sweep
    return out


def _order(prev, row):
    """The observed order log(e₁/e₂)/log(dt₁/dt₂) of two sweep rows, or None
    where it is undefined (an error of 0, as when every x0 equals the target)."""
    ratio = prev["mean"] / row["mean"] if row["mean"] > 0 else math.nan
    if not (math.isfinite(ratio) and ratio > 0):
        return None
    return math.log(ratio) / math.log(prev["dt"] / row["dt"])


def _table(headers, rows):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep] + [line(r) for r in rows])


def render(r):
    """The report as text (Markdown tables)."""
    p, s = r["problem"], r["scales"]
    lo = " × ".join(f"[{a:g}, {b:g}]" for a, b in zip(p["x0_low"], p["x0_high"]))
    out = [f"trajloss report: {_printable(p['name'])}",
           f"n = {p['n']}, m = {p['m']}, {p['steps']} steps of dt = {p['dt']:.4g} s "
           f"(horizon {p['horizon']:.4g} s), {p['samples']} samples (seed {p['seed']})",
           f"x0 ∈ {lo}, target {p['target']}, |u| ≤ {p['control_bound']:g} "
           f"({p['resampled']} draws resampled)", ""]
    out += [f"1. Loss scales of random predictions U ~ Uniform(-{p['control_bound']:g}, "
            f"{p['control_bound']:g}) against exact references",
            _table(["term", "MSE", "relative scale"],
                   [["control", f"{s['control_mse']:.2f}", "1.0x"],
                    ["trajectory (all states)", f"{s['trajectory_mse']:.2f}", f"{s['ratio']:.2f}x"]]),
            f"recommended trajectory weight (equal contribution): {s['recommended_weight']:.3f}", ""]
    rows = []
    for b, label in zip(r["breakdown"], ["", " (recommended)"]):
        rows.append([f"{b['weight']:.3f}{label}", f"{100 * b['control']:.1f}%",
                     f"{100 * b['trajectory']:.1f}%"])
    out += ["2. Contribution breakdown of loss = control + weight · trajectory, at these scales",
            _table(["weight", "control share", "trajectory share"], rows), ""]
    d = r["discretisation"]
    out += ["3. End-point error ‖x_T − xf‖₂ of the minimum-energy references",
            _table(["reference", "mean", "max"],
                   [["average: continuous law averaged per interval, ZOH rollout",
                     f"{d['average']['mean']:.4f}", f"{d['average']['max']:.4f}"],
                    ["exact: discrete minimum energy (trajloss default)",
                     f"{d['exact']['mean']:.1e}", f"{d['exact']['max']:.1e}"],
                    ["continuous optimal trajectory's own end point",
                     f"{d['continuous_endpoint']['mean']:.1e}",
                     f"{d['continuous_endpoint']['max']:.1e}"]]), ""]
    rows = [[str(w["steps"]), f"{w['dt']:.4g}", f"{w['mean']:.3e}", f"{w['max']:.3e}",
             "" if w["order"] is None else f"{w['order']:.2f}"] for w in r["steps_sweep"]]
    out += [f"4. End-point error of the \"average\" reference vs steps (horizon "
            f"{p['horizon']:.4g} s fixed)",
            _table(["steps", "dt", "mean error", "max error", "observed order"], rows),
            "The error falls as O(dt²): the per-interval average of the continuous law is not "
            "the control that reaches the target under zero-order hold; the exact method is.",
            ""]
    return "\n".join(out)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2, no usage dump
        self.exit(2, f"{self.prog}: error: {_printable(message, 2000)}\n")


def _positive(kind, limit=None):
    """An argparse type: a positive int (at most ``limit``), or a positive
    finite float written as '0.25' or '1/3'."""
    what = "an integer" if kind is int else "a number such as 0.25 or 1/3"

    def parse(text):
        try:
            value = kind(text) if kind is int else parse_fraction(text)
        except (ValueError, ZeroDivisionError, OverflowError):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
        if limit is not None and value > limit:
            raise argparse.ArgumentTypeError(f"must be at most {limit}, got {text!r}")
        return value
    return parse


def _seed(text):
    """An argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def parse_fraction(text):
    """A float from '0.25' or '1/3'."""
    if "/" in text:
        num, den = text.split("/", 1)
        return float(num) / float(den)
    return float(text)


#: Largest --samples.
MAX_SAMPLES = 10**9


#: The help's description: plain text for a terminal, printed as written.
DESCRIPTION = """\
The loss-scale and reference analysis of a linear time-invariant system: by
default the double integrator of the double-integrator study (15 steps of
dt = 1/3 s, positions in [-10, 10], velocities in [-5, 5], target the origin,
|u| <= 8), or the system in --system FILE. Four tables:
  1. the mean squared errors of the control and trajectory loss terms for
     random predictions, and the trajectory weight that balances them;
  2. each term's share of the total at weight 1 and at that weight;
  3. the end-point error of the averaged, exact and continuous
     minimum-energy references;
  4. the averaged reference's end-point error against the number of steps.
--json prints the same numbers as JSON."""


def build_parser(prog="python -m trajloss report"):
    parser = _Parser(prog=prog, description=DESCRIPTION,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=_positive(int, MAX_STEPS), default=None,
                        help=f"control steps per trajectory, at most {MAX_STEPS} "
                             "(default: 15)")
    parser.add_argument("--dt", type=_positive(float), default=None,
                        help="sampling period in seconds, e.g. 0.25 or 1/3 (default: 1/3)")
    parser.add_argument("--samples", type=_positive(int, MAX_SAMPLES), default=10_000,
                        help="number of sampled initial states (default: 10000)")
    parser.add_argument("--seed", type=_seed, default=0,
                        help="random seed, an integer >= 0 (default: 0)")
    parser.add_argument("--bound", type=_positive(float), default=None,
                        help="control bound of the data and of the random baseline (default: 8)")
    parser.add_argument("--json", action="store_true",
                        help="print the same numbers as JSON instead of tables")
    parser.add_argument("--system", metavar="FILE", default=None,
                        help="an .npz or .json file with continuous A, B, dt, x0_low, x0_high "
                             "(optional: target, steps, control_bound, name)")
    return parser


def _memory_needed(problem, samples):
    """Bytes the report's largest arrays take, roughly: four sets of
    (samples, steps + 1, n + m) float64 arrays at the longest of the run's
    and the sweep's step counts."""
    system = problem.system
    return 4 * 8 * samples * (max(problem.steps, max(STEP_SWEEP)) + 1) * (system.n + system.m)


def _physical_memory():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _run(args):
    """The report's result; ValueError/LinAlgError/MemoryError for what the
    input makes impossible. A RuntimeWarning (an overflow or an undefined
    number on the way) is an error too: the report would hold inf or NaN."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if args.system is None:
            problem = default_problem(args.steps, args.dt, args.bound)
        else:
            problem = load_problem(args.system, args.steps, args.dt, args.bound)
        need, have = _memory_needed(problem, args.samples), _physical_memory()
        if have is not None and need > have:
            raise MemoryError(f"the report needs about {need / 2**30:.3g} GiB for "
                              f"{args.samples} samples of {problem.steps} steps of an "
                              f"n = {problem.system.n} system, more than this machine's "
                              f"{have / 2**30:.3g} GiB; use fewer --samples or --steps")
        result = compute(problem, args.samples, args.seed)
    for w in caught:
        if issubclass(w.category, RuntimeWarning):
            raise ValueError(f"a number of the report overflows or is undefined: {w.message}")
    for w in caught:  # anything else is passed on as it came
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return result


def main(argv=None, prog="python -m trajloss report"):
    """Run the report. Bad input (options, the ``--system`` file, a problem the
    library refuses) prints one line ``PROG: error: ...`` on stderr and
    returns 2; Ctrl-C returns 130; anything else is a bug and propagates."""
    args = build_parser(prog).parse_args(argv)
    try:
        result = _run(args)
    except (ValueError, np.linalg.LinAlgError) as exc:
        return _fail(prog, str(exc))
    except MemoryError as exc:
        return _fail(prog, str(exc) or f"not enough memory for {args.samples} samples; use "
                     "fewer --samples or --steps")
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    text = json.dumps(result, indent=2) if args.json else render(result)
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. piped into `head`: the reader has gone, nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


def _fail(prog, message):
    print(f"{prog}: error: {_printable(message, 2000)}", file=sys.stderr)
    return 2
