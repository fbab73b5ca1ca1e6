"""PyTorch adapters over the trajloss C core.

The rollout, its adjoint and the losses are PyTorch custom operators
(``torch.library.custom_op``, namespace ``trajloss``) with fake (meta)
implementations and autograd formulas that call the core's analytic
gradient, so they run in eager mode, under ``torch.compile`` without graph
breaks. No ``autograd.Function`` is used. ``torch.func`` transforms do not
work with ``torch.library`` custom ops in PyTorch 2.13: the autograd
function that ``register_autograd`` generates lacks the ``setup_context``
functorch requires (an open PyTorch bug, pytorch/pytorch#168393 and #179652);
use ``torch.autograd.grad``/``backward`` instead.

- CPU tensors reach C without copies (float32 or float64, any strides; the
  core copies only what is not contiguous). Tensors on another device are
  moved to the CPU for the call and the results come back on the input's
  device (a one-time warning says so).
- Losses are computed with their gradient in one C pass; backward only
  scales the stored gradient, so a training step costs one call into C.
- Gradients flow to ``controls``/``pred`` and ``x0`` (and to ``target`` of
  :func:`control_loss`); references of the losses through the dynamics and
  the system matrices are data: they receive no gradient.

Modules mirror the NumPy API: ``ControlLoss``, ``TrajectoryLoss``,
``TerminalLoss``, ``CombinedLoss`` (numbers or ``trajloss.weighting``
strategies for ``weight``, an optional ``LossMonitor``), and ``Rollout``.
"""
from __future__ import annotations

import warnings
from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn

from . import _core
from .losses import LossComponents, _weight
from .rollout import _check_system
from .weighting import WeightingStrategy, make as _make_strategy

__all__ = ["CombinedLoss", "ControlLoss", "Rollout", "TerminalLoss", "TrajectoryLoss",
           "combined_loss", "control_loss", "rollout", "terminal_loss", "trajectory_loss"]

_warned_device = False


def _np(t: Optional[Tensor], name: str = "tensor"):
    """A NumPy view of a tensor (CPU, detached; no copy for CPU tensors)."""
    global _warned_device
    if t is None:
        return None
    if t.device.type != "cpu":
        if not _warned_device:
            _warned_device = True
            warnings.warn(f"trajloss computes on the CPU: tensors on {t.device} are copied there "
                          "and the results copied back", RuntimeWarning, stacklevel=3)
        t = t.cpu()
    try:
        return t.detach().numpy()
    except TypeError:  # a dtype NumPy does not have (bfloat16, ...)
        raise TypeError(f"{name} must be a float32 or float64 tensor, got {t.dtype}") from None


def _check_tensors(**tensors):
    """The tensor arguments are tensors (or None where optional): a TypeError
    naming the argument, not an AttributeError or a dispatcher RuntimeError."""
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def _option(value, name, *, optional=False):
    """A real number (or None when optional), as a float; TypeError naming it."""
    if value is None and optional:
        return None
    if isinstance(value, Tensor) and value.numel() == 1 and not (
            value.dtype == torch.bool or value.dtype.is_complex):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number{' or None' if optional else ''}, "
                        f"got {value!r}")
    return float(value)


def _penalty(penalty):
    if not isinstance(penalty, str):
        raise TypeError(f"penalty must be one of 'mse', 'l1', 'huber', got {penalty!r}")
    return penalty


def _tensor(a, like: Tensor) -> Tensor:
    return torch.from_numpy(np.asarray(a)).to(like.device)


# ---- rollout ------------------------------------------------------------

@torch.library.custom_op("trajloss::rollout", mutates_args=())
def _rollout_op(Ad: Tensor, Bd: Tensor, x0: Tensor, controls: Tensor) -> Tensor:
    return _tensor(_core.rollout(_np(Ad), _np(Bd), _np(x0, "x0"), _np(controls, "controls")), x0)


@_rollout_op.register_fake
def _(Ad, Bd, x0, controls):
    return controls.new_empty((*controls.shape[:-2], controls.shape[-2] + 1, x0.shape[-1]))


@torch.library.custom_op("trajloss::rollout_vjp", mutates_args=())
def _rollout_vjp_op(Ad: Tensor, Bd: Tensor, x0: Tensor, controls: Tensor,
                    grad_states: Tensor) -> tuple[Tensor, Tensor]:
    gu, gx = _core.rollout_vjp(_np(Ad), _np(Bd), _np(x0, "x0"), _np(controls, "controls"),
                               _np(grad_states, "grad_states"))
    return _tensor(gu, controls), _tensor(gx, x0)


@_rollout_vjp_op.register_fake
def _(Ad, Bd, x0, controls, grad_states):
    return torch.empty_like(controls), torch.empty_like(x0)


def _rollout_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _rollout_backward(ctx, grad_states):
    Ad, Bd, x0, controls = ctx.saved_tensors
    gu, gx = _rollout_vjp_op(Ad, Bd, x0, controls, grad_states)
    return None, None, gx, gu


_rollout_op.register_autograd(_rollout_backward, setup_context=_rollout_setup)


def _rollout_vjp_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:4])


def _rollout_vjp_backward(ctx, g_controls, g_x0):
    # rollout_vjp is linear in grad_states, (gu, gx) = J^T G with J the rollout's
    # Jacobian; its own VJP is J (cx, cu): the rollout of the cotangents.
    Ad, Bd, x0, controls = ctx.saved_tensors
    if g_controls is None:
        g_controls = torch.zeros_like(controls)
    if g_x0 is None:
        g_x0 = torch.zeros_like(x0)
    return None, None, None, None, _rollout_op(Ad, Bd, g_x0, g_controls)


_rollout_vjp_op.register_autograd(_rollout_vjp_backward, setup_context=_rollout_vjp_setup)


# ---- control loss ---------------------------------------------------------

@torch.library.custom_op("trajloss::control_loss", mutates_args=())
def _control_loss_op(pred: Tensor, target: Tensor, lengths: Optional[Tensor],
                     mask: Optional[Tensor], discount: Optional[float], penalty: str,
                     delta: float, feature_weights: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    value, grad = _core.control_loss(_np(pred, "pred"), _np(target, "target"), discount,
                                     _np(lengths, "lengths"), _np(mask, "mask"), penalty, delta,
                                     _np(feature_weights, "feature_weights"), True, True)
    return torch.tensor(value, dtype=pred.dtype, device=pred.device), _tensor(grad, pred)


@_control_loss_op.register_fake
def _(pred, target, lengths, mask, discount, penalty, delta, feature_weights):
    return pred.new_empty(()), torch.empty_like(pred)


def _control_loss_setup(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(output[1])


def _control_loss_backward(ctx, g_value, _g_grad):
    (grad,) = ctx.saved_tensors
    g = grad * g_value
    return g, -g, None, None, None, None, None, None  # rho(pred - target)


_control_loss_op.register_autograd(_control_loss_backward, setup_context=_control_loss_setup)


# ---- losses through the dynamics -----------------------------------------

@torch.library.custom_op("trajloss::rollout_loss", mutates_args=())
def _rollout_loss_op(Ad: Tensor, Bd: Tensor, controls: Tensor, x0: Tensor,
                     ref_controls: Optional[Tensor], ref_states: Optional[Tensor],
                     target: Optional[Tensor], terms: int, weights: Tensor,
                     include_initial: bool, discount: Optional[float],
                     lengths: Optional[Tensor], mask: Optional[Tensor], penalty: str,
                     delta: float, feature_weights: Optional[Tensor],
                     state_weights: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    w = _np(weights).astype(np.float64)
    total, c, t, f, gu, gx = _core.rollout_loss(
        _np(Ad), _np(Bd), _np(controls, "controls"), _np(x0, "x0"),
        _np(ref_controls, "ref_controls"), _np(ref_states, "ref_states"), _np(target, "target"),
        terms, float(w[0]), float(w[1]), float(w[2]), include_initial, discount,
        _np(lengths, "lengths"), _np(mask, "mask"), penalty, delta,
        _np(feature_weights, "feature_weights"), _np(state_weights, "state_weights"), True)
    components = torch.tensor([total, c, t, f], dtype=torch.float64, device=controls.device)
    return (torch.tensor(total, dtype=controls.dtype, device=controls.device),
            _tensor(gu, controls), _tensor(gx, x0), components)


@_rollout_loss_op.register_fake
def _(Ad, Bd, controls, x0, ref_controls, ref_states, target, terms, weights, include_initial,
      discount, lengths, mask, penalty, delta, feature_weights, state_weights):
    return (controls.new_empty(()), torch.empty_like(controls), torch.empty_like(x0),
            controls.new_empty((4,), dtype=torch.float64))


def _rollout_loss_setup(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1], output[2], output[3])
    ctx.save_for_backward(output[1], output[2])


def _rollout_loss_backward(ctx, g_value, _gu, _gx, _gc):
    gu, gx = ctx.saved_tensors
    return (None, None, gu * g_value, gx * g_value) + (None,) * 13


_rollout_loss_op.register_autograd(_rollout_loss_backward, setup_context=_rollout_loss_setup)


# ---- functions -------------------------------------------------------------

def _system_tensors(system, like: Tensor):
    """(Ad, Bd) as float64 tensors on like's device, made once per system and device."""
    system = _check_system(system)
    cache = system.__dict__.setdefault("_torch_tensors", {})
    key = str(like.device)
    if key not in cache:  # the system's arrays are read-only: copy them once
        cache[key] = (torch.tensor(system.Ad, device=like.device),
                      torch.tensor(system.Bd, device=like.device))
    return cache[key]


def _opt(x, name):
    """An optional array argument as a tensor; its dtype is left to the core to check
    (a float ``lengths`` is refused there, never silently truncated)."""
    if x is None or isinstance(x, Tensor):
        return x
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise type(exc)(f"{name}: cannot be converted to a tensor ({exc})") from None


def rollout(system, x0: Tensor, controls: Tensor) -> Tensor:
    """``trajloss.rollout`` for tensors: (B, n), (B, T, m) -> (B, T+1, n), differentiable."""
    system = _check_system(system)
    _check_tensors(x0=x0, controls=controls)
    Ad, Bd = _system_tensors(system, x0)
    return _rollout_op(Ad, Bd, x0, controls)


def control_loss(pred: Tensor, target: Tensor, *, discount=None, lengths=None, mask=None,
                 penalty="mse", delta=1.0, feature_weights=None) -> Tensor:
    """``trajloss.control_loss`` as a scalar tensor (differentiable in pred and target)."""
    _check_tensors(pred=pred, target=target)
    value, _ = _control_loss_op(pred, target, _opt(lengths, "lengths"), _opt(mask, "mask"),
                                _option(discount, "discount", optional=True), _penalty(penalty),
                                _option(delta, "delta"), _opt(feature_weights, "feature_weights"))
    return value


def _rollout_loss(system, controls, x0, ref_controls, ref_states, target, terms, weights, *,
                  include_initial=False, discount=None, lengths=None, mask=None, penalty="mse",
                  delta=1.0, feature_weights=None, state_weights=None, required=None):
    system = _check_system(system)
    _check_tensors(controls=controls, x0=x0, **(required or {}))
    Ad, Bd = _system_tensors(system, controls)
    if not isinstance(weights, Tensor):
        weights = torch.tensor(weights, dtype=torch.float64)
    return _rollout_loss_op(Ad, Bd, controls, x0, ref_controls, ref_states, target, terms,
                            weights, bool(include_initial),
                            _option(discount, "discount", optional=True),
                            _opt(lengths, "lengths"), _opt(mask, "mask"), _penalty(penalty),
                            _option(delta, "delta"), _opt(feature_weights, "feature_weights"),
                            _opt(state_weights, "state_weights"))


def trajectory_loss(system, controls: Tensor, x0: Tensor, ref_states: Tensor, *,
                    include_initial=False, state_weights=None, discount=None, lengths=None,
                    mask=None, penalty="mse", delta=1.0) -> Tensor:
    """``trajloss.trajectory_loss`` as a scalar tensor (differentiable in controls and x0)."""
    return _rollout_loss(system, controls, x0, None, ref_states, None, _core.TERM_TRAJECTORY,
                         [0.0, 1.0, 0.0], include_initial=include_initial, discount=discount,
                         lengths=lengths, mask=mask, penalty=penalty, delta=delta,
                         state_weights=state_weights, required=dict(ref_states=ref_states))[0]


def terminal_loss(system, controls: Tensor, x0: Tensor, target: Tensor, *, lengths=None,
                  mask=None, state_weights=None, penalty="mse", delta=1.0) -> Tensor:
    """``trajloss.terminal_loss`` as a scalar tensor (differentiable in controls and x0)."""
    return _rollout_loss(system, controls, x0, None, None, target, _core.TERM_TERMINAL,
                         [0.0, 0.0, 1.0], lengths=lengths, mask=mask, penalty=penalty,
                         delta=delta, state_weights=state_weights, required=dict(target=target))[0]


_ALL_TERMS = _core.TERM_CONTROL | _core.TERM_TRAJECTORY | _core.TERM_TERMINAL


def combined_loss(system, controls: Tensor, x0: Tensor, ref_controls: Tensor, ref_states: Tensor,
                  *, weight, terminal_weight=0.0, terminal_target=None, include_initial=False,
                  state_weights=None, feature_weights=None, discount=None, lengths=None,
                  mask=None, penalty="mse", delta=1.0) -> Tensor:
    """``trajloss.combined_loss`` as a scalar tensor; ``weight`` is a number
    (or a 0-d tensor). For strategies and monitoring use :class:`CombinedLoss`."""
    # numbers are checked here (the core would only say "invalid argument value");
    # a tensor weight is a graph input and is checked by the core
    weight = weight if isinstance(weight, Tensor) else _weight(weight, "weight")
    terminal_weight = (terminal_weight if isinstance(terminal_weight, Tensor)
                       else _weight(terminal_weight, "terminal_weight"))
    weights = torch.stack([torch.ones((), dtype=torch.float64),
                           torch.as_tensor(weight, dtype=torch.float64),
                           torch.as_tensor(terminal_weight, dtype=torch.float64)])
    return _rollout_loss(system, controls, x0, ref_controls, ref_states, terminal_target,
                         _ALL_TERMS, weights, include_initial=include_initial,
                         discount=discount, lengths=lengths, mask=mask, penalty=penalty,
                         delta=delta, feature_weights=feature_weights,
                         state_weights=state_weights,
                         required=dict(ref_controls=ref_controls, ref_states=ref_states))[0]


# ---- modules ---------------------------------------------------------------

class Rollout(nn.Module):
    """``Rollout(system)(x0, controls) -> states``."""

    def __init__(self, system):
        super().__init__()
        self.system = _check_system(system)

    def forward(self, x0, controls):
        return rollout(self.system, x0, controls)


class ControlLoss(nn.Module):
    """``ControlLoss(discount=None, penalty="mse", delta=1.0, feature_weights=None)(pred, target, lengths=None, mask=None)``."""

    def __init__(self, discount=None, penalty="mse", delta=1.0, feature_weights=None):
        super().__init__()
        self.discount, self.penalty, self.delta = discount, penalty, delta
        self.feature_weights = feature_weights

    def forward(self, pred, target, lengths=None, mask=None):
        return control_loss(pred, target, discount=self.discount, lengths=lengths, mask=mask,
                            penalty=self.penalty, delta=self.delta,
                            feature_weights=self.feature_weights)


class TrajectoryLoss(nn.Module):
    """``TrajectoryLoss(system, ...)(controls, x0, ref_states, lengths=None, mask=None)``."""

    def __init__(self, system, include_initial=False, state_weights=None, discount=None,
                 penalty="mse", delta=1.0):
        super().__init__()
        self.system = _check_system(system)
        self.options = dict(include_initial=include_initial, state_weights=state_weights,
                            discount=discount, penalty=penalty, delta=delta)

    def forward(self, controls, x0, ref_states, lengths=None, mask=None):
        return trajectory_loss(self.system, controls, x0, ref_states, lengths=lengths,
                               mask=mask, **self.options)


class TerminalLoss(nn.Module):
    """``TerminalLoss(system, ...)(controls, x0, target, lengths=None, mask=None)``."""

    def __init__(self, system, state_weights=None, penalty="mse", delta=1.0):
        super().__init__()
        self.system = _check_system(system)
        self.options = dict(state_weights=state_weights, penalty=penalty, delta=delta)

    def forward(self, controls, x0, target, lengths=None, mask=None):
        return terminal_loss(self.system, controls, x0, target, lengths=lengths, mask=mask,
                             **self.options)


class CombinedLoss(nn.Module):
    """``control + weight·trajectory (+ terminal_weight·terminal)`` as a module.

    ``CombinedLoss(system, weight=0.3)(controls, x0, ref_controls, ref_states,
    lengths=None, mask=None)`` returns a scalar tensor. ``weight`` may be a
    number, a ``trajloss.weighting`` strategy or a strategy name. After each
    call ``components`` holds that call's :class:`trajloss.LossComponents`.

    The term weights live in the buffer ``weights`` (float64, 3), an input of
    the graph, so a changing weight never recompiles under ``torch.compile``.
    In eager mode each call first lets the strategy observe the previous
    call's terms and sets the weight (``epoch`` from the argument or the
    ``epoch`` attribute), and feeds ``monitor`` afterwards. Inside a compiled
    region those Python steps are skipped: call :meth:`update_weight` and
    ``monitor.update(loss_fn.components)`` outside it.
    """

    def __init__(self, system, weight, terminal_weight=0.0, discount=None,
                 include_initial=False, penalty="mse", delta=1.0, feature_weights=None,
                 state_weights=None, monitor=None):
        super().__init__()
        self.system = _check_system(system)
        self.strategy = _make_strategy(weight)
        self.monitor = monitor
        self.epoch = None
        self.options = dict(include_initial=include_initial, discount=discount, penalty=penalty,
                            delta=delta, feature_weights=feature_weights,
                            state_weights=state_weights)
        first = self.strategy.weight(epoch=0) if _needs_epoch(self.strategy) else self.strategy.weight()
        terminal_weight = _weight(terminal_weight, "terminal_weight")
        self.register_buffer("weights", torch.tensor([1.0, first, terminal_weight],
                                                     dtype=torch.float64))
        self._last: Optional[Tensor] = None
        self._observed = True

    def update_weight(self, epoch=None):
        """Let the strategy observe the last call's terms and set the trajectory weight."""
        if self._last is not None and not self._observed:
            c, t = (float(v) for v in self._last[1:3])
            self.strategy.observe(c, t)
            self._observed = True
        epoch = self.epoch if epoch is None else epoch
        with torch.no_grad():
            self.weights[1] = self.strategy.weight(epoch=epoch)

    @property
    def components(self) -> Optional[LossComponents]:
        """The terms of the last call (``None`` before the first)."""
        if self._last is None:
            return None
        total, c, t, f = (float(v) for v in self._last)
        return LossComponents(c, t, f, float(self.weights[1]), float(self.weights[2]), total)

    def forward(self, controls, x0, ref_controls, ref_states, lengths=None, mask=None,
                epoch=None, terminal_target=None):
        compiling = torch.compiler.is_compiling()
        if not compiling:
            self.update_weight(epoch)
        value, _, _, comps = _rollout_loss(self.system, controls, x0, ref_controls, ref_states,
                                           terminal_target, _ALL_TERMS, self.weights,
                                           lengths=lengths, mask=mask, **self.options,
                                           required=dict(ref_controls=ref_controls,
                                                         ref_states=ref_states))
        self._last = comps.detach()
        self._observed = False
        if self.monitor is not None and not compiling:
            self.monitor.update(self.components)
        return value


def _needs_epoch(strategy: WeightingStrategy) -> bool:
    from .weighting import Curriculum
    return isinstance(strategy, Curriculum)
