"""Weighting between the control and trajectory loss terms: the four
approaches of the double-integrator study (control vs trajectory loss scale
mismatch) behind one interface.

Every strategy answers ``weight(epoch=None, control=None, trajectory=None)``
with the multiplier of the trajectory term in
``loss = control + weight · trajectory``. Strategies that learn from the
loss values take them through ``observe(control, trajectory)`` (``weight``
calls it when both values are given) and keep their state in
``state_dict()`` / ``load_state_dict()`` so training can be resumed.
``trajloss.combined_loss`` and ``trajloss.torch.CombinedLoss`` accept a
strategy wherever they accept a number: the weight of a call comes from the
statistics of earlier calls (detached), and the call's raw term values are
observed afterwards.

=========================  ==================================================
study's approach            strategy
=========================  ==================================================
approach 1 (weight 0.3)     ``Fixed(0.3)`` or ``Calibrated`` (from ``calibrate``)
approach 2 (normalised)     ``Normalized.from_dataset(data, alpha=1)``
approach 3 (curriculum)     ``Curriculum(start=50, ramp=100, final=1)``
approach 4 (adaptive)       ``Adaptive()`` (smoothed, clipped: no oscillation)
=========================  ==================================================
"""
from __future__ import annotations

import math

import numpy as np

from ._strategy import WeightingStrategy, _check_state_keys
from .calibration import calibrate

__all__ = ["Adaptive", "Calibrated", "Curriculum", "Fixed", "Normalized",
           "WeightingStrategy", "STRATEGIES", "make"]


_FLOAT_MAX = float(np.finfo(np.float64).max)


def _as_float(value, name):
    """``float(value)`` for a real number (bool excluded), or TypeError/ValueError
    naming ``name``; an integer beyond float64's range (1.8e308) is a ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{name} must be a float64 number (magnitude at most "
                         f"{_FLOAT_MAX:.4g}), got an integer beyond that range") from None


def _real(value, name, *, low=0.0, strict=False):
    """A finite float >= low (> low when strict), or ValueError/TypeError naming it."""
    value = _as_float(value, name)
    ok = math.isfinite(value) and (value > low if strict else value >= low)
    if not ok:
        raise ValueError(f"{name} must be finite and {'>' if strict else '>='} {low:g}, got {value!r}")
    return value


def _scalar(value, name):
    """A loss value as a float: detaches 0-d NumPy arrays and torch tensors."""
    if hasattr(value, "detach"):
        value = value.detach()
    try:
        value = float(value)
    except OverflowError:
        raise ValueError(f"{name} must be a finite float64 number (magnitude at most "
                         f"{_FLOAT_MAX:.4g}), got an integer beyond that range") from None
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number or a 0-d tensor, got {type(value).__name__}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def _state_value(state, key):
    """``state[key]`` as a Python number: 0-d NumPy arrays and torch tensors are
    unwrapped with ``.item()`` (a saved state may hold them)."""
    value = state[key]
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()
    return value


class Fixed(WeightingStrategy):
    """A constant weight (the double-integrator study's approach 1: 0.3 for its
    system)."""

    def __init__(self, weight):
        self.value = _real(weight, "weight")

    def _weight(self, epoch):
        return self.value

    def __repr__(self):
        return f"Fixed({self.value:g})"


class Normalized(WeightingStrategy):
    """The double-integrator study's approach 2: ``control/σ_c² + α·trajectory/σ_t²``.

    Multiplied through by ``σ_c²`` (which only rescales the learning rate) this
    is ``control + weight·trajectory`` with ``weight = α·σ_c²/σ_t²``;
    ``scale = 1/σ_c²`` restores the study's exact form if wanted.
    """

    def __init__(self, control_var, trajectory_var, alpha=1.0):
        self.control_var = _real(control_var, "control_var", strict=True)
        self.trajectory_var = _real(trajectory_var, "trajectory_var", strict=True)
        self.alpha = _real(alpha, "alpha")
        self.scale = 1.0 / self.control_var

    @classmethod
    def from_dataset(cls, dataset=None, *, controls=None, states=None, alpha=1.0):
        """Variances over all entries of the reference controls and states
        (of a :class:`trajloss.Dataset`, or of the arrays given)."""
        if dataset is not None:
            if controls is not None or states is not None:
                raise ValueError("give a dataset or controls and states, not both")
            controls, states = dataset.controls, dataset.states
        if controls is None or states is None:
            raise ValueError("Normalized.from_dataset needs a dataset, or both controls and states")
        return cls(float(np.var(controls)), float(np.var(states)), alpha)

    def _weight(self, epoch):
        return self.alpha * self.control_var / self.trajectory_var

    def __repr__(self):
        return (f"Normalized(control_var={self.control_var:.4g}, "
                f"trajectory_var={self.trajectory_var:.4g}, alpha={self.alpha:g})")


class Curriculum(WeightingStrategy):
    """The double-integrator study's approach 3: 0 before ``start``, then a
    linear ramp to ``final``.

    ``w(epoch) = 0`` for ``epoch < start``, else ``min(final, final·(epoch − start)/ramp)``
    (``ramp = 0``: ``final`` from ``start`` on). Needs the epoch.
    """

    def __init__(self, start=50, ramp=100, final=1.0):
        self.start = _real(start, "start")
        self.ramp = _real(ramp, "ramp")
        self.final = _real(final, "final")

    def _weight(self, epoch):
        if epoch is None:
            raise ValueError("Curriculum needs the epoch: weight(epoch=...) / combined_loss(..., epoch=...)")
        epoch = _real(epoch, "epoch")
        if epoch < self.start:
            return 0.0
        if self.ramp == 0:
            return self.final
        return min(self.final, self.final * (epoch - self.start) / self.ramp)

    def __repr__(self):
        return f"Curriculum(start={self.start:g}, ramp={self.ramp:g}, final={self.final:g})"


class Adaptive(WeightingStrategy):
    """The double-integrator study's approach 4, damped: ``w = control /
    (trajectory + eps)`` from exponentially smoothed, detached term values,
    clipped to ``bounds``.

    The study warns that the raw ratio oscillates; smoothing (``momentum``) and
    clipping keep the weight steady, and because :func:`combined_loss` uses
    the weight of earlier steps, a step's own values never feed back into its
    own gradient.
    """

    def __init__(self, eps=1e-8, momentum=0.9, bounds=(1e-3, 1e3), initial=1.0):
        self.eps = _real(eps, "eps", strict=True)
        self.momentum = _real(momentum, "momentum")
        if self.momentum >= 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        try:
            lo, hi = bounds
        except (TypeError, ValueError):
            raise ValueError(f"bounds must be a pair (low, high), got {bounds!r}") from None
        lo = _real(lo, "bounds[0]")
        hi = _as_float(hi, "bounds[1]")
        if not hi >= lo:  # hi may be inf
            raise ValueError(f"bounds must satisfy 0 <= low <= high, got {bounds!r}")
        self.bounds = (lo, hi)
        self.initial = _real(initial, "initial")
        self._control = self._trajectory = None
        self._count = 0

    def observe(self, control, trajectory):
        c, t = _scalar(control, "control"), _scalar(trajectory, "trajectory")
        for name, v in (("control", c), ("trajectory", t)):
            if v < 0:  # a loss is >= 0; a negative one could make trajectory + eps vanish
                raise ValueError(f"{name} must be a loss value >= 0, got {v!r}")
        if self._count == 0:
            self._control, self._trajectory = c, t
        else:
            m = self.momentum
            self._control = m * self._control + (1 - m) * c
            self._trajectory = m * self._trajectory + (1 - m) * t
        self._count += 1

    def _weight(self, epoch):
        raw = self.initial if self._count == 0 else self._control / (self._trajectory + self.eps)
        return float(min(max(raw, self.bounds[0]), self.bounds[1]))

    def state_dict(self):
        """``{"control": c, "trajectory": t, "count": k}``: the smoothed term values
        (floats, or None before the first observation) and the number of
        observations. :meth:`load_state_dict` restores it exactly."""
        return {"control": self._control, "trajectory": self._trajectory, "count": self._count}

    def load_state_dict(self, state):
        """Restore :meth:`state_dict`. ``count`` must be an integer >= 0; with
        ``count == 0`` both values are None, otherwise both are finite numbers
        >= 0. Anything else raises (TypeError/ValueError naming the key) and
        leaves the strategy unchanged."""
        _check_state_keys(self, state, ("control", "trajectory", "count"))
        count = _state_value(state, "count")
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)):
            raise TypeError(f"Adaptive state: count must be an integer >= 0, got {count!r}")
        count = int(count)
        if count < 0:
            raise ValueError(f"Adaptive state: count must be an integer >= 0, got {count}")
        values = {}
        for key in ("control", "trajectory"):
            v = _state_value(state, key)
            if count == 0:
                if v is not None:
                    raise ValueError(f"Adaptive state: {key} must be None when count is 0 "
                                     f"(nothing observed yet), got {v!r}")
            elif v is None:
                raise ValueError(f"Adaptive state: {key} must be a finite number >= 0 when "
                                 f"count is {count}, got None")
            else:
                v = _real(v, f"Adaptive state: {key}")
            values[key] = v
        self._count = count
        self._control, self._trajectory = values["control"], values["trajectory"]

    def __repr__(self):
        return f"Adaptive(momentum={self.momentum:g}, bounds={self.bounds})"


class Calibrated(WeightingStrategy):
    """The weight at which both terms contribute equally for a baseline
    prediction (``trajloss.calibrate``; the double-integrator study's first
    remedy)."""

    def __init__(self, calibration, scale=1.0):
        if not hasattr(calibration, "recommended_weight"):
            raise TypeError(f"calibration must be a trajloss.Calibration, got {type(calibration).__name__}")
        _real(calibration.recommended_weight, "calibration.recommended_weight")
        self.calibration = calibration
        self.scale = _real(scale, "scale")
        _real(self._weight(None), "scale * calibration.recommended_weight")

    @classmethod
    def from_dataset(cls, system, dataset, scale=1.0, **calibrate_kwargs):
        """Run :func:`trajloss.calibrate` on ``dataset`` and use its weight."""
        return cls(calibrate(system, dataset, **calibrate_kwargs), scale)

    def _weight(self, epoch):
        return self.scale * self.calibration.recommended_weight

    def __repr__(self):
        return f"Calibrated({self._weight(None):.4g})"


STRATEGIES = {"fixed": Fixed, "normalized": Normalized, "curriculum": Curriculum,
              "adaptive": Adaptive, "calibrated": Calibrated}


def make(name, **kwargs):
    """A strategy by name (``"fixed"``, ``"normalized"``, ``"curriculum"``,
    ``"adaptive"``, ``"calibrated"``) with its keyword arguments; a strategy is
    returned as is and a number becomes :class:`Fixed`. So a training script
    switches between the study's approaches with one argument."""
    if isinstance(name, WeightingStrategy):
        return name
    if isinstance(name, (int, float, np.integer, np.floating)) and not isinstance(name, bool):
        return Fixed(name)
    if not isinstance(name, str) or name not in STRATEGIES:
        raise ValueError(f"unknown weighting strategy {name!r}; expected a number, a "
                         f"WeightingStrategy or one of {sorted(STRATEGIES)}")
    return STRATEGIES[name](**kwargs)
