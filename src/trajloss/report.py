"""``python -m trajloss report``: the loss-scale and reference analysis for any LTI system.

Four tables: the scales of the control and trajectory loss terms for random
predictions and the weight that balances them; each term's share of the
total at weight 1 and at that weight; the end-point error of the
discretised ("average") minimum-energy reference against the exact one and
the continuous optimum; and the average method's error against the number
of steps at a fixed horizon (its O(dt²) decay).

Every number is a sum, a count or a maximum over the samples, so the report
is computed in chunks of at most :data:`CHUNK` samples (fewer for long or
wide systems, see :func:`chunk_samples`) and its memory does not grow with
``--samples``; see :func:`compute` for how the samples are defined.
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

from .calibration import _MAX_BOUND, Calibration, _scales
from .datasets import _MAX_ROUNDS, _check_regular_file, _generator, _path_label, _printable, _read_npz
from .datasets import DOUBLE_INTEGRATOR_DEFAULTS as STUDY
from .losses import control_loss, trajectory_loss
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


#: Most samples in one chunk of the report's computation. Measured for the
#: default problem and a million samples: peak RSS 63 MB at 4096, 127 MB at
#: 16384, 392 MB at 65536, at the same speed.
CHUNK = 16_384
#: Most bytes one chunk's arrays may take, as :func:`_memory_needed` estimates
#: them (an overestimate: the default problem measures about 40% of it).
CHUNK_BYTES = 2**28


def chunk_samples(problem, samples, chunk=None):
    """Samples per chunk: ``chunk`` (default :data:`CHUNK`), fewer if one
    chunk's arrays would take more than :data:`CHUNK_BYTES` (long horizons,
    large n + m), at least 1 and at most ``samples``."""
    limit = CHUNK if chunk is None else chunk
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
    per_sample = _memory_needed(problem, 1)
    return int(max(1, min(limit, samples, CHUNK_BYTES // per_sample)))


class _Rows:
    """Rows of ``numpy.random.default_rng(seed).uniform(low, high, size=(N, *row))``
    fetched by index, without drawing the rows before them: each double of
    the stream is one 64-bit output of the PCG64 generator, so row i starts
    ``i·prod(row)`` outputs in (``bit_generator.advance``). The rows are
    bit for bit those of the single call, whatever N."""

    def __init__(self, seed, low, high, row):
        bits = _generator(seed).bit_generator
        self._state, self._kind = bits.state, type(bits)
        self._gen = np.random.Generator(self._kind())
        self._low, self._high, self._row = low, high, tuple(row)
        self._size = math.prod(self._row)

    def _at(self, start):
        """The generator positioned at row ``start``."""
        bits = self._gen.bit_generator
        bits.state = self._state
        bits.advance(int(start) * self._size)
        return self._gen

    def rows(self, start, count):
        """Rows ``start .. start + count - 1``, shape (count, *row)."""
        return self._at(start).uniform(self._low, self._high, size=(count, *self._row))

    def pick(self, index):
        """Rows at the sorted, distinct ``index``: one jump per run of
        consecutive indices."""
        if index.size == 0:
            return np.empty((0, *self._row))
        cut = np.flatnonzero(np.diff(index) != 1) + 1
        starts, ends = np.r_[0, cut], np.r_[cut, index.size]
        return np.concatenate([self.rows(index[a], b - a) for a, b in zip(starts, ends)])

    def after(self, count):
        """A generator that continues the stream after its first ``count`` rows."""
        gen = np.random.Generator(self._kind())
        gen.bit_generator.state = self._state
        gen.bit_generator.advance(int(count) * self._size)
        return gen


class _Sum:
    """A sum of float64 partial sums, exactly rounded (``math.fsum``) and
    folded every 1024 partials so its memory stays bounded."""

    def __init__(self):
        self._parts = []

    def add(self, value):
        self._parts.append(float(value))
        if len(self._parts) >= 1024:
            self._parts = [math.fsum(self._parts)]

    @property
    def value(self):
        return math.fsum(self._parts)


class _Errors:
    """Sum and maximum of one column of end-point errors; the maximum
    propagates NaN as ``ndarray.max`` does."""

    def __init__(self):
        self.sum, self.max = _Sum(), -math.inf

    def add(self, err):
        self.sum.add(err.sum())
        self.max = float(np.maximum(self.max, err.max()))

    def result(self, count):
        return {"mean": self.sum.value / count, "max": self.max}


class _Accumulator:
    """What the report keeps of the accepted samples: sums and maxima."""

    def __init__(self, problem):
        system, steps = problem.system, problem.steps
        self.problem = problem
        self.control, self.trajectory = _Sum(), _Sum()
        self.disc = {k: _Errors() for k in ("average", "exact", "continuous_endpoint")}
        horizon = steps * system.dt
        self.sweep = [(k, LinearSystem.from_continuous(system.A, system.B, horizon / k), _Errors())
                      for k in STEP_SWEEP]

    def add(self, x0, ref, U):
        """Accepted samples: initial states x0 (k, n), their exact references
        ``ref`` (controls (k, T, m), states (k, T+1, n), final_error (k,)) and
        baseline controls U (k, T, m)."""
        k = len(x0)
        if k == 0:
            return
        p = self.problem
        system, steps, target = p.system, p.steps, p.target
        # the losses are means over the chunk; times k they are its sums
        self.control.add(control_loss(U, ref.controls).value * k)
        self.trajectory.add(trajectory_loss(system, U, x0, ref.states,
                                            include_initial=True).value * k)
        self.disc["exact"].add(ref.final_error)
        self.disc["average"].add(min_energy(system, x0, target, steps, "average").final_error)
        end = min_energy(system, x0, target, steps, "continuous").states[:, -1]
        self.disc["continuous_endpoint"].add(np.linalg.norm(end - target, axis=1))
        for steps_k, sys_k, errors in self.sweep:
            errors.add(min_energy(sys_k, x0, target, steps_k, "average").final_error)


def _exceeding(ref, bound):
    """Which references have a control beyond the bound (NaN does not count,
    as in make_dataset)."""
    return np.abs(ref.controls).max(axis=(1, 2)) > bound


def compute(problem: Problem, samples=10_000, seed=0, *, chunk=None, progress=None):
    """Every number of the report, as a plain dict (what ``--json`` prints).

    The samples are those of ``make_dataset(system, samples, steps, x0_low=,
    x0_high=, target=, control_bound=bound, method="exact", seed=seed)`` and
    the random baseline that of ``calibrate(system, data, control_bound=bound,
    seed=seed)``, generated chunk by chunk:

    - sample i's initial state is row i of ``default_rng(seed).uniform(x0_low,
      x0_high, size=(samples, n))``; samples whose exact reference has a
      control beyond the bound are redrawn, in rounds, in the order of their
      index, from the same stream after its ``samples`` rows (ValueError
      if some are still beyond it after 99 rounds, as make_dataset);
    - sample i's baseline controls are row i of a second
      ``default_rng(seed).uniform(-bound, bound, size=(samples, T, m))``.

    Rows are fetched by jumping each stream to their offset, so the samples
    and every number are the same for any ``chunk``, up to the order of the
    summation of the means (exactly rounded sums of per-chunk sums).

    ``chunk`` caps the samples per chunk (default :data:`CHUNK`; see
    :func:`chunk_samples`). Memory: one chunk's arrays, plus 8 bytes for each
    sample redrawn in the first round. ``progress``: an object with
    ``update(k)`` (a tqdm bar) told of each accepted sample (``samples`` in
    all), or None.
    """
    system, steps, bound = problem.system, problem.steps, problem.control_bound
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
    bound = float(bound)
    if not (math.isfinite(bound) and 0 < bound <= _MAX_BOUND):
        raise ValueError(f"control_bound must be a finite number > 0 and at most "
                         f"{_MAX_BOUND:.4g} (the random baseline draws from (-bound, bound), "
                         f"whose width must be finite), got {bound!r}")
    size = chunk_samples(problem, samples, chunk)
    x0_rows = _Rows(seed, problem.x0_low, problem.x0_high, (system.n,))
    u_rows = _Rows(seed, -bound, bound, (steps, system.m))
    acc = _Accumulator(problem)
    tick = (lambda k: None) if progress is None else progress.update

    pending = []  # the indices of samples to redraw
    for start in range(0, samples, size):
        count = min(size, samples - start)
        x0 = x0_rows.rows(start, count)
        ref = min_energy(system, x0, problem.target, steps, "exact")
        over = _exceeding(ref, bound)
        keep = ~over
        U = u_rows.rows(start, count)
        acc.add(x0[keep], _select(ref, keep), U if keep.all() else U[keep])
        if over.any():
            pending.append(start + np.flatnonzero(over))
        tick(int(keep.sum()))
    pending = np.concatenate(pending) if pending else np.empty(0, dtype=np.intp)

    redraw, resampled = x0_rows.after(samples), 0
    for _ in range(_MAX_ROUNDS - 1):
        if pending.size == 0:
            break
        resampled += pending.size
        still = []
        for a in range(0, pending.size, size):
            index = pending[a:a + size]
            x0 = redraw.uniform(problem.x0_low, problem.x0_high, size=(index.size, system.n))
            ref = min_energy(system, x0, problem.target, steps, "exact")
            over = _exceeding(ref, bound)
            keep = ~over
            acc.add(x0[keep], _select(ref, keep), u_rows.pick(index[keep]))
            still.append(index[over])
            tick(int(keep.sum()))
        pending = np.concatenate(still)
    if pending.size:
        raise ValueError(f"after {_MAX_ROUNDS} rounds of resampling some references still "
                         f"exceed control_bound={bound}; widen the bound or narrow "
                         "x0_low/x0_high")

    c, t, ratio, weight = _scales(acc.control.value / samples,
                                  acc.trajectory.value / samples, "random")
    cal = Calibration(c, t, ratio, weight, "random", bound, samples)
    out = {
        "problem": {
            "name": problem.name, "n": system.n, "m": system.m, "steps": steps,
            "dt": system.dt, "horizon": steps * system.dt, "samples": samples, "seed": seed,
            "x0_low": problem.x0_low.tolist(), "x0_high": problem.x0_high.tolist(),
            "target": problem.target.tolist(), "control_bound": problem.control_bound,
            "resampled": int(resampled),
        },
        "scales": {
            "control_mse": cal.control_mse, "trajectory_mse": cal.trajectory_mse,
            "ratio": cal.ratio, "recommended_weight": cal.recommended_weight,
        },
        "breakdown": [cal.breakdown(1.0), cal.breakdown(cal.recommended_weight)],
        "discretisation": {k: e.result(samples) for k, e in acc.disc.items()},
    }
    sweep, prev = [], None
    horizon = steps * system.dt
    for k, _, errors in acc.sweep:
        row = {"steps": k, "dt": horizon / k, **errors.result(samples)}
        row["order"] = None if prev is None else _order(prev, row)
        sweep.append(row)
        prev = row
    out["steps_sweep"] = sweep
    return out


def _select(ref, keep):
    """The references of the samples ``keep`` (a boolean mask); ``ref`` itself
    when all are kept (the usual case), saving a copy."""
    if keep.all():
        return ref
    return type(ref)(ref.controls[keep], ref.states[keep], ref.final_error[keep],
                     ref.energy[keep], ref.method, ref.cond)


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
--json prints the same numbers as JSON.

The samples are processed in chunks, so memory does not grow with --samples
(about 120 MB for the default system; a million samples take a few seconds).
On a terminal, reports of 100000 samples or more show a progress bar on
stderr (tqdm's if installed); --progress and --no-progress override that."""


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
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="show a progress bar on stderr (default: only on a terminal, for "
                             f"{PROGRESS_MIN_SAMPLES} samples or more); --no-progress: never")
    return parser


#: Fewest samples for which a terminal shows the progress bar by default.
PROGRESS_MIN_SAMPLES = 100_000


class _LineProgress:
    """The progress bar without tqdm: one line on ``stream``, rewritten in
    place (carriage return) each time the whole percentage changes, erased by
    :meth:`close`. At most 101 writes, whatever the number of samples."""

    def __init__(self, total, stream, desc):
        self.total, self.stream, self.desc = total, stream, desc
        self.done, self.percent, self.width = 0, None, 0
        self.update(0)

    def _write(self, text):
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr: no bar, no crash
            self.stream = None

    def update(self, count):
        self.done += count
        percent = 100 * self.done // self.total
        if percent != self.percent and self.stream is not None:
            self.percent = percent
            line = f"{self.desc}: {percent:3d}% ({self.done}/{self.total} samples)"
            self.width = max(self.width, len(line))
            self._write("\r" + line)

    def close(self):
        if self.stream is not None:
            self._write("\r" + " " * self.width + "\r")
            self.stream = None


def progress_bar(total, enabled=None, stream=None):
    """A progress bar over ``total`` samples on ``stream`` (default
    ``sys.stderr``), or None for no bar. ``enabled``: True shows one, False
    never; None (the default) shows one only if ``stream`` is a terminal and
    ``total >= PROGRESS_MIN_SAMPLES``. The bar is tqdm's when tqdm is
    installed, else a one-line percentage; both are erased when closed."""
    stream = sys.stderr if stream is None else stream
    if enabled is None:
        isatty = getattr(stream, "isatty", None)
        enabled = total >= PROGRESS_MIN_SAMPLES and callable(isatty) and bool(isatty())
    if not enabled:
        return None
    desc = "trajloss report"
    try:
        from tqdm import tqdm
    except ImportError:
        return _LineProgress(total, stream, desc)
    return tqdm(total=total, desc=desc, unit=" samples", unit_scale=True, file=stream,
                leave=False, mininterval=0.2, disable=False)


def _memory_needed(problem, samples):
    """Bytes the report's largest arrays take for a chunk of ``samples``,
    roughly: four sets of (samples, steps + 1, n + m) float64 arrays at the
    longest of the run's and the sweep's step counts."""
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
        size = chunk_samples(problem, args.samples)
        need, have = _memory_needed(problem, size), _physical_memory()
        if have is not None and need > have:
            raise MemoryError(f"the report needs about {need / 2**30:.3g} GiB for "
                              f"chunks of {size} sample(s) of {problem.steps} steps of an "
                              f"n = {problem.system.n}, m = {problem.system.m} system, more "
                              f"than this machine's {have / 2**30:.3g} GiB; use fewer --steps")
        bar = progress_bar(args.samples, args.progress)
        try:
            result = compute(problem, args.samples, args.seed, progress=bar)
        finally:
            if bar is not None:
                bar.close()
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
