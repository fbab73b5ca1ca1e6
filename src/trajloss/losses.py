"""Losses with analytic gradients: control, trajectory (through the dynamics),
terminal and combined, with length-agnostic time weighting and padding.

Everything numeric -- rollout, penalties, weights, reduction and the adjoint
pass -- happens in one call of the C core; this module only names things.

Definitions (shared by every loss)
----------------------------------
Valid steps ``S_b`` of sequence b: ``t < lengths[b]``, or ``mask[b, t]``, or
all T steps. Time weights, for ``discount`` γ > 0 (None means 1)::

    w[b, t] = γ^t · |S_b| / Σ_{s∈S_b} γ^s   for t ∈ S_b, else 0

so the valid steps of every sequence have mean weight exactly 1 whatever its
length (γ < 1 stresses early steps, γ > 1 late ones). Penalty ρ: ``"mse"``
r², ``"l1"`` |r| (gradient 0 at 0), ``"huber"`` ½r² if |r| ≤ δ else
δ(|r| − ½δ). Per-step error ``e[b, t] = mean_d s_d ρ(pred − ref)[b, t, d]``
with per-feature multipliers s (default 1). Each loss is::

    ℓ = Σ_{b,t} w[b, t] e[b, t] / Σ_b |S_b|

which, for γ = 1 and no padding, is ``numpy.mean`` of the elementwise penalty
(PyTorch's ``reduction="mean"``). A batch with no valid step raises
``ValueError``.

Padding and ``check_finite``
----------------------------
Each loss reads exactly these elements; everything else is padding, which
is never read: any value there (NaN, inf, huge numbers) gives the same value
and gradients, bit for bit, as zeros, and gets exactly zero gradient. For
sequence b with valid steps S_b, last valid step t_b (a sequence with no
valid step reads nothing):

* ``control_loss``: ``pred`` and ``target`` at the steps of S_b.
* ``trajectory_loss``, ``terminal_loss``, ``combined_loss``:
  ``controls`` at steps 0 … t_b -- with a ``mask``, a step the mask leaves
  out before t_b still drives the states after it, so it is read and has a
  gradient (the control term itself skips it); ``x0``; ``ref_controls`` at
  S_b (the control term); ``ref_states`` at the states scored: state t+1 for
  t in S_b, state 0 with ``include_initial`` (the trajectory term), state
  t_b+1 (the terminal term when it has no target); the terminal ``target``.

``check_finite=True`` (the default) raises ``ValueError`` naming the first
argument with a NaN or inf among the elements read -- and only there. It
costs no extra pass over memory: the core checks elements as it reads them.
``check_finite=False`` turns off that check and the ``RuntimeWarning`` for an
overflow (without the check, a NaN input and an overflow cannot be told
apart). Nothing else changes: NaN or inf in an element read propagates, so
the value is NaN or inf and so are the gradients it reaches, for every
penalty -- never a finite-looking number.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import numpy as np

from . import _core
from .rollout import _check_system
from .systems import _LinearDynamics
from ._strategy import WeightingStrategy

_TRAJECTORY, _TERMINAL = _core.TERM_TRAJECTORY, _core.TERM_TERMINAL

__all__ = [
    "LossComponents",
    "LossResult",
    "combined_loss",
    "control_loss",
    "terminal_loss",
    "time_weights",
    "trajectory_loss",
]


class LossComponents(NamedTuple):
    """The terms of a :func:`combined_loss`, as worth logging every epoch.

    ``control``, ``trajectory``, ``terminal`` are the raw term values;
    ``weight`` and ``terminal_weight`` their multipliers; ``total`` the loss.
    (An immutable named tuple: cheap to make on every training step.)
    """

    control: float
    trajectory: float
    terminal: float
    weight: float
    terminal_weight: float
    total: float

    @property
    def contributions(self) -> dict:
        """Each term's weighted contribution to ``total``."""
        return {
            "control": self.control,
            "trajectory": self.weight * self.trajectory,
            "terminal": self.terminal_weight * self.terminal,
        }

    @property
    def fractions(self) -> dict:
        """Each term's share of ``total`` (NaN for every term when total is 0)."""
        total = self.total
        return {k: (v / total if total > 0 else math.nan) for k, v in self.contributions.items()}

    @property
    def ratio(self) -> float:
        """``trajectory / control`` (raw values; inf when control is 0)."""
        if self.control == 0:
            return math.inf if self.trajectory > 0 else math.nan
        return self.trajectory / self.control

    def as_dict(self) -> dict:
        """Raw values, weights, contributions, fractions and ratio, flat."""
        out = {
            "control": self.control,
            "trajectory": self.trajectory,
            "terminal": self.terminal,
            "weight": self.weight,
            "terminal_weight": self.terminal_weight,
            "total": self.total,
            "ratio": self.ratio,
        }
        out.update({f"{k}_contribution": v for k, v in self.contributions.items()})
        out.update({f"{k}_fraction": v for k, v in self.fractions.items()})
        return out


class LossResult(NamedTuple):
    """A loss value and its gradients (an immutable named tuple).

    value : float
        The loss (accumulated in float64).
    grad : ndarray
        ∂value/∂(predicted controls): the shape and dtype of ``pred``/``controls``.
    grad_x0 : ndarray or None
        ∂value/∂x0 for the losses through the dynamics (shape and dtype of ``x0``).
    components : LossComponents or None
        The terms of :func:`combined_loss`.
    """

    value: float
    grad: np.ndarray
    grad_x0: Optional[np.ndarray] = None
    components: Optional[LossComponents] = None

    def __float__(self) -> float:
        return self.value


# The results are made on every training step: tuple.__new__ skips the
# named tuples' Python-level __new__ (0.45 -> 0.2 us each), and combined_loss's
# are built by the core itself, which needs the two classes.
_make = tuple.__new__
_core.set_result_types(LossResult, LossComponents)


_INF = math.inf
_FLOAT_MAX = float(np.finfo(np.float64).max)


def _weight(value, name):
    if type(value) is float and 0.0 <= value < _INF:  # the common case, fast
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number or a trajloss.weighting strategy, "
                        f"got {value!r}")
    try:
        value = float(value)
    except OverflowError:  # an int beyond float64: name the limit, not "int too large"
        raise ValueError(f"{name} must be finite and >= 0 (at most {_FLOAT_MAX:.4g}), got an "
                         "integer beyond float64's range") from None
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be finite and >= 0 (at most {_FLOAT_MAX:.4g}), "
                         f"got {value!r}")
    return value


def time_weights(T, discount, lengths=None, mask=None):
    """Length-agnostic geometric time weights.

    ``w[b, t] = γ^t · |S_b| / Σ_{s∈S_b} γ^s`` on the valid steps ``S_b``
    (``t < lengths[b]`` or ``mask[b, t]``; all steps by default), 0 elsewhere:
    each row's valid steps average exactly 1; rows with no valid step are 0.
    Stable for long T and any γ > 0 (``None`` means γ = 1: uniform).

    Parameters
    ----------
    T : int
        Number of steps.
    discount : float or None
        γ > 0.
    lengths : array_like of int, shape (B,), optional
        Valid prefix length of each sequence, in [0, T].
    mask : array_like of bool, shape (B, T) or (T,), optional
        Valid steps. Give ``lengths`` or ``mask``, not both.

    Returns
    -------
    ndarray, float64, shape (B, T) (with lengths or a 2-D mask) or (T,)
    """
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)):
        raise TypeError(f"T must be an integer, got {T!r}")
    if not 0 <= T <= 2**31 - 1:
        raise ValueError(f"T must be in [0, 2**31 - 1], got {T}")
    return _core.time_weights(int(T), discount, lengths, mask)


def control_loss(pred, target, *, discount=None, lengths=None, mask=None, penalty="mse",
                 delta=1.0, feature_weights=None, check_finite=True):
    """Loss between predicted and reference controls (or any sequences).

    ``ℓ = Σ_{b,t} w[b,t] · mean_d f_d ρ(pred − target)[b,t,d] / Σ_b |S_b|``
    (see the module docstring for w and ρ).

    Parameters
    ----------
    pred, target : array_like, shape (B, T, D) or (T, D)
        A 2-D array is ONE unbatched sequence of T steps with D features:
        axis 0 is time (the discount, ``lengths`` and ``mask`` run along it)
        and the mean is over its T·D elements. A batch of B sequences of
        scalar steps, shape (B, T), must be passed as ``pred[..., None]``,
        shape (B, T, 1); with 2-D inputs, ``lengths`` other than a single
        integer or a ``mask`` other than shape (T,) raise ``ValueError``.
    discount : float or None
        γ of the time weights (None: uniform).
    lengths : array_like of int, shape (B,) (an int when unbatched), optional
    mask : array_like of bool, shape (B, T) or (T,), optional
    penalty : {"mse", "l1", "huber"}
    delta : float
        Huber threshold δ > 0.
    feature_weights : array_like, shape (D,), optional
        Per-feature multipliers f ≥ 0.
    check_finite : bool
        Raise ``ValueError`` on NaN/inf in ``pred`` or ``target`` at a valid
        step (default); padding is never read, so never checked. False lets
        them propagate (see the module docstring, "Padding and
        check_finite").

    Returns
    -------
    LossResult with ``value`` and ``grad`` (shape and dtype of ``pred``).
    """
    value, grad = _core.control_loss(pred, target, discount=discount, lengths=lengths, mask=mask,
                                     penalty=penalty, delta=delta,
                                     feature_weights=feature_weights, check_finite=check_finite)
    return _make(LossResult, (value, grad, None, None))


def _required(**arrays):
    """None is not a reference: a TypeError naming the argument (the core would
    take None for "term absent" and say only that a reference is missing)."""
    for name, value in arrays.items():
        if value is None:
            raise TypeError(f"{name} must be an array, got None")


def trajectory_loss(system, controls, x0, ref_states, *, include_initial=False,
                    state_weights=None, discount=None, lengths=None, mask=None, penalty="mse",
                    delta=1.0, check_finite=True):
    """Loss between the states the controls produce and reference states.

    The predicted states are ``X = rollout(system, x0, controls)``. Step t of
    the loss compares ``X[:, t+1]`` (the state control t produced) with
    ``ref_states[:, t+1]``, so weights and masks share the control index:
    ``ℓ = Σ_{b,t} w[b,t] · mean_d s_d ρ(X − ref_states)[b,t+1,d] / Σ_b |S_b|``.
    With ``include_initial=True`` state 0 is scored too, as an extra first
    step (time index 0, the others shifted by one) valid for every sequence
    with a valid step.

    Parameters
    ----------
    system : LinearSystem or TimeVaryingSystem (any form: see trajloss.systems)
    controls : array_like, shape (B, T, m) or (T, m)
    x0 : array_like, shape (B, n) or (n,)
    ref_states : array_like, shape (B, T+1, n) or (T+1, n)
    include_initial : bool
    state_weights : array_like, shape (n,), optional
        Per-state multipliers s ≥ 0.
    discount, lengths, mask, penalty, delta
        As in :func:`control_loss`.
    check_finite : bool
        Raise ``ValueError`` on NaN/inf in an element the loss reads: controls
        up to each sequence's last valid step (masked-out steps before it
        included: they drive the later states), x0, and ref_states at the
        scored states (module docstring, "Padding and check_finite").

    Returns
    -------
    LossResult with ``value``, ``grad`` (∂ℓ/∂controls) and ``grad_x0``.
    """
    _required(ref_states=ref_states)
    total, _, _, _, grad, grad_x0 = _core.rollout_loss(
        _check_system(system)._core, controls, x0, None, ref_states, terms=_TRAJECTORY,
        trajectory_weight=1.0, include_initial=include_initial, discount=discount,
        lengths=lengths, mask=mask, penalty=penalty, delta=delta, state_weights=state_weights,
        check_finite=check_finite)
    return _make(LossResult, (total, grad, grad_x0, None))


def terminal_loss(system, controls, x0, target, *, lengths=None, mask=None, state_weights=None,
                  penalty="mse", delta=1.0, check_finite=True):
    """Penalty on each sequence's final valid state.

    For sequence b with last valid control step t_b, the final valid state is
    ``X[b, t_b + 1]`` and ``e_b = mean_d s_d ρ(X[b, t_b+1] − target[b])``;
    ``ℓ`` is the mean of ``e_b`` over the sequences with a valid step.

    Parameters
    ----------
    system : LinearSystem or TimeVaryingSystem (any form: see trajloss.systems)
    controls : array_like, shape (B, T, m) or (T, m)
    x0, target : array_like, shape (B, n) or (n,)
    lengths, mask, state_weights, penalty, delta, check_finite
        As in :func:`trajectory_loss` (``target`` of a sequence with no valid
        step is not read).

    Returns
    -------
    LossResult with ``value``, ``grad`` (∂ℓ/∂controls) and ``grad_x0``.
    """
    _required(target=target)
    total, _, _, _, grad, grad_x0 = _core.rollout_loss(
        _check_system(system)._core, controls, x0, None, None, target, terms=_TERMINAL,
        terminal_weight=1.0, lengths=lengths, mask=mask, penalty=penalty, delta=delta,
        state_weights=state_weights, check_finite=check_finite)
    return _make(LossResult, (total, grad, grad_x0, None))


def combined_loss(system, controls, x0, ref_controls, ref_states, *, weight,
                  terminal_weight=0.0, terminal_target=None, include_initial=False,
                  state_weights=None, feature_weights=None, discount=None, lengths=None,
                  mask=None, penalty="mse", delta=1.0, check_finite=True, epoch=None):
    """``ℓ = ℓ_control + weight·ℓ_trajectory + terminal_weight·ℓ_terminal``.

    Every term uses the same discount, lengths/mask and penalty, and all are
    computed in one pass. ``terminal_target`` (shape of ``x0``) defaults to
    the reference's own final valid state ``ref_states[b, t_b + 1]``.

    Parameters
    ----------
    system : LinearSystem or TimeVaryingSystem (any form: see trajloss.systems)
    controls, ref_controls : array_like, shape (B, T, m) or (T, m)
    x0 : array_like, shape (B, n) or (n,)
    ref_states : array_like, shape (B, T+1, n) or (T+1, n)
    weight : float or trajloss.weighting.WeightingStrategy
        Finite, ≥ 0. A strategy gives ``strategy.weight(epoch=epoch)`` -- from
        the statistics of earlier calls -- and then observes this call's raw
        control and trajectory values.
    terminal_weight : float
        Finite, ≥ 0.
    epoch : int, optional
        Passed to a strategy (``Curriculum`` needs it).
    Others as in :func:`control_loss` and :func:`trajectory_loss`;
    ``check_finite`` checks the elements the three terms read: controls up
    to each last valid step, x0, ref_controls at valid steps, ref_states at
    the scored states and ``terminal_target`` (module docstring, "Padding
    and check_finite").

    Returns
    -------
    LossResult with ``value``, ``grad``, ``grad_x0`` and ``components``
    (raw terms, contributions, fractions of the total, ``ratio`` =
    trajectory / control: what is worth logging every epoch).
    """
    if ref_controls is None or ref_states is None:
        _required(ref_controls=ref_controls, ref_states=ref_states)
    if not isinstance(system, _LinearDynamics):
        _check_system(system)
    # called on every training step: straight to the core, no keyword layers
    strategy = None
    if not (type(weight) is float and 0.0 <= weight < _INF):  # floats skip two calls
        strategy = weight if isinstance(weight, WeightingStrategy) else None
        weight = _weight(strategy.weight(epoch=epoch) if strategy else weight, "weight")
    if not (type(terminal_weight) is float and 0.0 <= terminal_weight < _INF):
        terminal_weight = _weight(terminal_weight, "terminal_weight")
    # the core builds the LossResult itself (_core.set_result_types, at import)
    # (few keywords: CPython passes many in a dict)
    result = _core.combined_loss(
        system._core, controls, x0, ref_controls, ref_states, terminal_target, weight=weight,
        terminal_weight=terminal_weight, include_initial=include_initial, discount=discount,
        lengths=lengths, mask=mask, penalty=penalty, delta=delta,
        feature_weights=feature_weights, state_weights=state_weights, check_finite=check_finite)
    if strategy is not None:
        strategy.observe(result.components.control, result.components.trajectory)
    return result
