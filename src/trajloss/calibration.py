"""Scale calibration between the control and trajectory loss terms (the first
remedy of the double-integrator study, whose terms were 3-4x apart): score a
baseline prediction with both terms and weight the trajectory term so both
contribute equally."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .datasets import _generator, _real_number
from .losses import control_loss, trajectory_loss
from .rollout import _check_system

__all__ = ["BASELINES", "Calibration", "calibrate"]

BASELINES = ("random", "zero")
_MAX_BOUND = float(np.finfo(np.float64).max) / 2


@dataclass(frozen=True)
class Calibration:
    """Empirical scales of the two loss terms.

    control_mse : float
        ``control_loss(U, dataset.controls)`` of the baseline predictions U.
    trajectory_mse : float
        ``trajectory_loss(system, U, x0, dataset.states, include_initial=True)``
        (every state of the trajectory, as the double-integrator study averages them).
    ratio : float
        ``trajectory_mse / control_mse`` (double-integrator study: 3.4).
    recommended_weight : float
        ``control_mse / trajectory_mse``: the trajectory weight at which both
        terms contribute equally (double-integrator study: ≈ 0.3).
    """

    control_mse: float
    trajectory_mse: float
    ratio: float
    recommended_weight: float
    baseline: str = "random"
    control_bound: float = 8.0
    samples: int = 0

    def breakdown(self, weight):
        """Each term's share of ``control + weight·trajectory`` at these scales.

        Returns a dict with ``control`` and ``trajectory`` (fractions of the
        total) and ``total``. At ``weight=1`` the double-integrator study had 23% / 77%;
        at ``recommended_weight`` it is 50% / 50%.
        """
        weight = _real_number(weight, "weight")
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"weight must be finite and >= 0, got {weight!r}")
        c, t = self.control_mse, weight * self.trajectory_mse
        total = c + t
        if not (math.isfinite(total) and total > 0):
            raise ValueError(f"breakdown: control + weight·trajectory = {self.control_mse!r} + "
                             f"{weight!r}·{self.trajectory_mse!r} is {total!r}; the shares need "
                             "a finite total > 0")
        return {"weight": weight, "control": c / total, "trajectory": t / total, "total": total}


def calibrate(system, dataset, baseline="random", control_bound=8.0, seed=0):
    """Score baseline predictions with the control and trajectory losses.

    Parameters
    ----------
    system : LinearSystem or TimeVaryingSystem
        The system the trajectory term rolls the baseline out with, any
        form: a per-sample system's B must equal the dataset's N (sample i
        rolled out with system i), a time-varying system's T the dataset's T
        (ValueError naming ``system`` otherwise).
    dataset : Dataset
        References (``x0``, ``controls``, ``states``).
    baseline : {"random", "zero"}
        ``"random"``: controls ``U ~ Uniform(−bound, bound)``, i.i.d.;
        ``"zero"``: ``U = 0``.
    control_bound : float
        The bound of the random baseline (double-integrator study: 8); finite, > 0 and at
        most half the largest float64 (so ``2·bound`` is finite).
    seed : int
        Seed of the random baseline.

    Returns
    -------
    Calibration
        Its four numbers are always finite and > 0.

    Raises
    ------
    ValueError
        On degenerate data, naming the degenerate scale: a control or
        trajectory MSE of 0 (the baseline equals the references in that term,
        e.g. the zero baseline on references that are all zero, or errors
        whose squares underflow), an MSE that overflows float64 (huge values
        or bound), or two MSEs whose ratio is beyond float64's range.
    """
    system = _check_system(system)
    if not all(hasattr(dataset, k) for k in ("x0", "controls", "states")):
        raise TypeError(f"dataset must be a trajloss.Dataset (with x0, controls and states), "
                        f"got {type(dataset).__name__}")
    if not isinstance(baseline, str) or baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    control_bound = _real_number(control_bound, "control_bound")
    if not (np.isfinite(control_bound) and 0 < control_bound <= _MAX_BOUND):
        raise ValueError(f"control_bound must be a finite number > 0 and at most "
                         f"{_MAX_BOUND:.4g} (the random baseline draws from (-bound, bound), "
                         f"whose width must be finite), got {control_bound!r}")
    shape = dataset.controls.shape
    if system.batch is not None and system.batch != shape[0]:
        raise ValueError(f"system holds B = {system.batch} systems (one per sample) but the "
                         f"dataset has N = {shape[0]} samples")
    if system.steps is not None and system.steps != shape[1]:
        raise ValueError(f"system is time-varying over T = {system.steps} steps but the "
                         f"dataset's controls have T = {shape[1]} steps")
    if baseline == "random":
        U = _generator(seed).uniform(-control_bound, control_bound, size=shape)
    else:
        U = np.zeros(shape)
    c = control_loss(U, dataset.controls).value
    t = trajectory_loss(system, U, dataset.x0, dataset.states, include_initial=True).value
    return Calibration(*_scales(c, t, baseline), baseline, control_bound, shape[0])


def _scales(c, t, baseline):
    """``(c, t, t/c, c/t)``, or a ValueError saying which scale is degenerate.

    Each of the four numbers must be finite and > 0: a zero or infinite MSE
    (an exact baseline, references of zero, values whose squares overflow or
    underflow float64) leaves no finite ratio to recommend."""
    for name, v in (("control", c), ("trajectory", t)):
        if not math.isfinite(v):
            raise ValueError(f"calibrate: the {name} MSE of the {baseline} baseline is {v!r}: the "
                             "squared errors overflow float64 (the dataset's values or "
                             "control_bound are too large); rescale the problem")
    if c == 0 or t == 0:
        zero = " and ".join(n for n, v in (("control", c), ("trajectory", t)) if v == 0)
        raise ValueError(f"calibrate: the {zero} MSE of the {baseline} baseline is 0 (control MSE "
                         f"{c!r}, trajectory MSE {t!r}): the baseline matches the references in "
                         "that term (or its errors underflow float64), so no weight balances the "
                         "terms; use another baseline or control_bound")
    ratio, weight = t / c, c / t
    if not (math.isfinite(ratio) and math.isfinite(weight) and ratio > 0 and weight > 0):
        raise ValueError(f"calibrate: the control MSE {c!r} and trajectory MSE {t!r} differ by "
                         "more than float64's range, so their ratio cannot be represented; "
                         "rescale the problem")
    return c, t, ratio, weight
