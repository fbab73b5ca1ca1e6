"""The interface every weighting strategy shares, :class:`trajloss.weighting.WeightingStrategy`.

It lives in this module of its own so that ``losses`` (which accepts a
strategy wherever it accepts a weight) and ``weighting`` (whose
``Calibrated`` runs ``calibration``, which uses ``losses``) need not import
each other: calibration -> losses -> _strategy <- weighting -> calibration.
"""
from __future__ import annotations

import abc
from collections.abc import Mapping

__all__ = ["WeightingStrategy"]


def _check_state_keys(strategy, state, keys):
    """TypeError unless ``state`` is a mapping; ValueError naming any missing or unknown key."""
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a dict (from {type(strategy).__name__}.state_dict()), "
                        f"got {type(state).__name__}")
    missing = [k for k in keys if k not in state]
    unknown = [k for k in state if k not in keys]
    if missing or unknown:
        what = "; ".join(part for part in (
            f"missing key(s) {', '.join(map(repr, missing))}" if missing else "",
            f"unknown key(s) {', '.join(map(repr, unknown))}" if unknown else "") if part)
        expected = ", ".join(map(repr, keys)) if keys else "no keys (it keeps no state)"
        raise ValueError(f"not a valid {type(strategy).__name__} state: {what}; expected {expected}")


class WeightingStrategy(abc.ABC):
    """The interface every weighting strategy shares (subclasses define ``_weight``)."""

    def weight(self, epoch=None, control=None, trajectory=None) -> float:
        """The trajectory weight; observes ``(control, trajectory)`` first when given."""
        if control is not None and trajectory is not None:
            self.observe(control, trajectory)
        return self._weight(epoch)

    @abc.abstractmethod
    def _weight(self, epoch) -> float:
        """The weight at ``epoch`` from the strategy's current state."""

    def observe(self, control, trajectory) -> None:
        """Take note of one step's raw term values (stateless strategies ignore them)."""

    def state_dict(self) -> dict:
        """What :meth:`load_state_dict` needs to resume (empty when stateless)."""
        return {}

    def load_state_dict(self, state) -> None:
        """Restore :meth:`state_dict` (a mapping; stateless strategies take ``{}``)."""
        _check_state_keys(self, state, ())


WeightingStrategy.__module__ = "trajloss.weighting"  # its public home
