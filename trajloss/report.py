"""``python -m trajloss report``: seed 000's analysis for any LTI system.

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
import sys
from dataclasses import dataclass

import numpy as np

from .calibration import calibrate
from .datasets import SEED000, make_dataset
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
    """Seed 000's double integrator, with optional overrides."""
    dt = SEED000["dt"] if dt is None else dt
    return Problem("double integrator (seed 000)", DoubleIntegrator(dt=dt),
                   np.array(SEED000["x0_low"]), np.array(SEED000["x0_high"]),
                   np.zeros(2), SEED000["steps"] if steps is None else steps,
                   SEED000["control_bound"] if bound is None else bound)


def load_problem(path, steps=None, dt=None, bound=None):
    """A problem from an ``.npz`` or JSON file with continuous ``A``, ``B``,
    ``dt``, ``x0_low``, ``x0_high`` and optionally ``target``, ``steps``,
    ``control_bound``, ``name``."""
    path = str(path)
    try:
        if path.endswith(".json"):
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
            if not isinstance(raw, dict):
                raise ValueError("the JSON file must hold an object")
        else:
            f = np.load(path, allow_pickle=False)
            if not isinstance(f, np.lib.npyio.NpzFile):
                raise ValueError("expected an .npz archive or a .json file")
            with f:
                raw = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"cannot read system file {path}: {exc}") from None
    missing = [k for k in ("A", "B", "dt", "x0_low", "x0_high") if k not in raw]
    if missing:
        raise ValueError(f"system file {path} lacks {', '.join(missing)}")

    def number(key, default):
        value = raw.get(key, default)
        try:
            return float(np.asarray(value).item())
        except (TypeError, ValueError):
            raise ValueError(f"system file {path}: {key} must be a number") from None

    system = LinearSystem.from_continuous(raw["A"], raw["B"], dt if dt is not None else number("dt", None))
    n = system.n
    vectors = {}
    for key in ("x0_low", "x0_high", "target"):
        v = np.asarray(raw.get(key, np.zeros(n)), dtype=float)
        if v.shape != (n,):
            raise ValueError(f"system file {path}: {key} must have {n} entries, got shape {v.shape}")
        vectors[key] = v
    file_steps = number("steps", SEED000["steps"])
    if not (file_steps >= 1 and file_steps == int(file_steps) and file_steps <= 2**31 - 1):
        raise ValueError(f"system file {path}: steps must be a whole number >= 1, got {file_steps:g}")
    file_steps = int(file_steps)
    name = str(np.asarray(raw.get("name", path)))
    return Problem(name, system, vectors["x0_low"], vectors["x0_high"], vectors["target"],
                   file_steps if steps is None else steps,
                   number("control_bound", SEED000["control_bound"]) if bound is None else bound)


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
        row["order"] = (None if prev is None else
                        math.log(prev["mean"] / row["mean"]) / math.log(prev["dt"] / row["dt"]))
        sweep.append(row)
        prev = row
    out["steps_sweep"] = sweep
    return out


def _table(headers, rows):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep] + [line(r) for r in rows])


def render(r):
    """The report as text (Markdown tables)."""
    p, s = r["problem"], r["scales"]
    lo = " × ".join(f"[{a:g}, {b:g}]" for a, b in zip(p["x0_low"], p["x0_high"]))
    out = [f"trajloss report: {p['name']}",
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
                   [["average: continuous law averaged per interval, ZOH rollout (seed 000)",
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
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive(kind):
    """An argparse type: a positive int, or a positive float written as '0.25' or '1/3'."""
    what = "an integer" if kind is int else "a number such as 0.25 or 1/3"

    def parse(text):
        try:
            value = kind(text) if kind is int else parse_fraction(text)
        except (ValueError, ZeroDivisionError):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return value
    return parse


def parse_fraction(text):
    """A float from '0.25' or '1/3'."""
    if "/" in text:
        num, den = text.split("/", 1)
        return float(num) / float(den)
    return float(text)


def build_parser(prog="python -m trajloss report"):
    parser = _Parser(prog=prog, description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=_positive(int), default=None,
                        help="control steps per trajectory (default: 15, seed 000)")
    parser.add_argument("--dt", type=_positive(float), default=None,
                        help="sampling period in seconds, e.g. 0.25 or 1/3 (default: 1/3)")
    parser.add_argument("--samples", type=_positive(int), default=10_000,
                        help="number of sampled initial states (default: 10000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--bound", type=_positive(float), default=None,
                        help="control bound of the data and of the random baseline (default: 8)")
    parser.add_argument("--json", action="store_true",
                        help="print the same numbers as JSON instead of tables")
    parser.add_argument("--system", metavar="FILE", default=None,
                        help="an .npz or .json file with continuous A, B, dt, x0_low, x0_high "
                             "(optional: target, steps, control_bound, name)")
    return parser


def main(argv=None, prog="python -m trajloss report"):
    args = build_parser(prog).parse_args(argv)
    try:
        if args.system is None:
            problem = default_problem(args.steps, args.dt, args.bound)
        else:
            problem = load_problem(args.system, args.steps, args.dt, args.bound)
        result = compute(problem, args.samples, args.seed)
    except (ValueError, TypeError, np.linalg.LinAlgError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"{prog}: error: not enough memory for {args.samples} samples of "
              f"{problem.steps} steps; use fewer --samples or --steps", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0
