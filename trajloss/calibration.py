"""Scale calibration between the control and trajectory loss terms (seed 000,
"best practice 1"): score a baseline prediction with both terms and weight
the trajectory term so both contribute equally."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .datasets import _generator, _real_number
from .losses import control_loss, trajectory_loss
from .rollout import _check_system

__all__ = ["BASELINES", "Calibration", "calibrate"]

BASELINES = ("random", "zero")


@dataclass(frozen=True)
class Calibration:
    """Empirical scales of the two loss terms.

    control_mse : float
        ``control_loss(U, dataset.controls)`` of the baseline predictions U.
    trajectory_mse : float
        ``trajectory_loss(system, U, x0, dataset.states, include_initial=True)``
        (every state of the trajectory, as seed 000 averages them).
    ratio : float
        ``trajectory_mse / control_mse`` (seed 000: 3.4).
    recommended_weight : float
        ``control_mse / trajectory_mse``: the trajectory weight at which both
        terms contribute equally (seed 000: ≈ 0.3).
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
        total) and ``total``. At ``weight=1`` this is seed 000's 23% / 77%;
        at ``recommended_weight`` it is 50% / 50%.
        """
        weight = float(weight)
        if not (np.isfinite(weight) and weight >= 0):
            raise ValueError(f"weight must be finite and >= 0, got {weight!r}")
        c, t = self.control_mse, weight * self.trajectory_mse
        total = c + t
        return {"weight": weight, "control": c / total, "trajectory": t / total, "total": total}


def calibrate(system, dataset, baseline="random", control_bound=8.0, seed=0):
    """Score baseline predictions with the control and trajectory losses.

    Parameters
    ----------
    system : LinearSystem
    dataset : Dataset
        References (``x0``, ``controls``, ``states``).
    baseline : {"random", "zero"}
        ``"random"``: controls ``U ~ Uniform(−bound, bound)``, i.i.d.;
        ``"zero"``: ``U = 0``.
    control_bound : float
        The bound of the random baseline (seed 000: 8).
    seed : int
        Seed of the random baseline.

    Returns
    -------
    Calibration
    """
    system = _check_system(system)
    if not all(hasattr(dataset, k) for k in ("x0", "controls", "states")):
        raise TypeError(f"dataset must be a trajloss.Dataset (with x0, controls and states), "
                        f"got {type(dataset).__name__}")
    if not isinstance(baseline, str) or baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    control_bound = _real_number(control_bound, "control_bound")
    if not (np.isfinite(control_bound) and control_bound > 0):
        raise ValueError(f"control_bound must be a finite number > 0, got {control_bound!r}")
    shape = dataset.controls.shape
    if baseline == "random":
        U = _generator(seed).uniform(-control_bound, control_bound, size=shape)
    else:
        U = np.zeros(shape)
    c = control_loss(U, dataset.controls).value
    t = trajectory_loss(system, U, dataset.x0, dataset.states, include_initial=True).value
    return Calibration(c, t, t / c, c / t, baseline, control_bound, shape[0])
