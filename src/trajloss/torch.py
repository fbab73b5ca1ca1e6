"""PyTorch adapters over the trajloss C core.

The rollout, its adjoint and the losses are PyTorch custom operators
(``torch.library.custom_op``, namespace ``trajloss``) with fake (meta)
implementations and autograd formulas that call the core's analytic
gradient, so they run under ``torch.compile`` without graph breaks.

In plain eager mode -- CPU tensors of the exact types ``Tensor`` or
``Parameter``, nothing compiling, tracing or transforming -- the functions
skip the operators' dispatch and call the core through plain
``torch.autograd.Function`` s with the same forward, fused backward and
differentiable fallback: a forward and backward then costs about what a bare
``autograd.Function`` around the NumPy call costs (the benchmark's W11),
against ~5x that through a custom operator. Everything else (compiling,
``torch.export``, ``meta``/fake tensors, other devices, tensor subclasses)
goes through the operators, with the same values and gradients.

``torch.func`` transforms do not work with ``torch.library`` custom ops in
PyTorch 2.13: the autograd function that ``register_autograd`` generates
lacks the ``setup_context`` functorch requires (an open PyTorch bug,
pytorch/pytorch#168393 and #179652); use ``torch.autograd.grad``/``backward``
instead.

``torch.compile`` compiles for the shapes it first sees; a batch of another
size (the smaller last batch of an epoch) compiles again. Compile with
``dynamic=True`` (or mark the batch dimension, ``torch._dynamo.mark_dynamic(t,
0)``, on the inputs of a function without a graph break) to compile once for
every batch size.

Systems
-------
Every function takes every system form of :mod:`trajloss.systems`: one
``LinearSystem`` shared by the batch, one system per sample (``Ad`` (B, n, n),
``Bd`` (B, n, m), an ``offset``), a ``TimeVaryingSystem`` ((T, n, n) or
(B, T, n, n)), a batched ``LinearSystem.from_continuous``; values and
gradients are those of the NumPy API. A per-sample system's B must be the
data's B and a time-varying system's T the controls' T (``ValueError`` naming
``system``, also on the ``meta`` device and under ``torch.compile``). Under
``DistributedDataParallel`` each process sees its own shard of the batch, so
give each process the per-sample system of its shard. The system's arrays are
data (no gradient); their float64 tensors are made once per system and device
and dropped with the system.

Gradients
---------
Every floating-point tensor argument gets its true gradient:

- ``controls``/``pred`` and ``x0``: from the core's fused pass (the forward
  computes value and gradient together; backward only scales the stored
  gradient, so a training step costs one call into C);
- the references ``target`` (of :func:`control_loss` and
  :func:`terminal_loss`), ``ref_controls``, ``ref_states`` and
  ``terminal_target``: ``∂ℓ/∂ref = −∂ℓ/∂pred`` of the matching term, with that
  term's time, feature and state weights (when ``terminal_target`` is None,
  ``ref_states`` also gets the terminal term's share);
- ``weight`` and ``terminal_weight`` given as tensors: ``∂total/∂weight`` is
  the raw trajectory term, ``∂total/∂terminal_weight`` the raw terminal term;
- ``feature_weights``/``state_weights`` given as tensors:
  ``∂ℓ/∂s_d = Σ_{b,t} w[b,t] ρ(r)[b,t,d] / (D Σ_b |S_b|)`` per term.

Double backward (``create_graph=True``: Hessian-vector products,
``gradgradcheck``, gradient penalties) is exact: the backward is then built
from the differentiable rollout and adjoint operators (``J v`` is a rollout
of ``v`` from ``x0 = 0`` by the linear part of the dynamics, without the
offset; ``Jᵀ g`` the adjoint pass, for every system form) and the penalty's
elementwise derivative, whose own derivative is the curvature ``ρ''``: 2 for
``"mse"``, 1 inside ``|r| ≤ δ`` and 0 outside for ``"huber"``, 0 for
``"l1"`` (away from the kinks ``r = 0``, ``|r| = δ``, where ρ has no second
derivative and the one-sided value is used). Higher orders follow the same
way. ``discount`` and ``delta`` are plain numbers: a tensor that requires grad
there raises ``ValueError`` rather than being silently treated as a constant.

Devices
-------
CPU tensors reach C without copies (float32 or float64, any strides; the
core copies only what is not contiguous). Tensors on another real device
(CUDA, ...) are moved to the CPU for the call and the results come back on
the input's device (a one-time warning says so). All tensor arguments of a
call must be on one device: otherwise ``ValueError`` names the argument and
both devices. With every tensor on the ``meta`` device the functions return
``meta`` tensors of the right shapes (shape inference, no numbers).

Modules mirror the NumPy API: ``ControlLoss``, ``TrajectoryLoss``,
``TerminalLoss``, ``CombinedLoss`` (numbers or ``trajloss.weighting``
strategies for ``weight``, an optional ``LossMonitor``; its ``state_dict``
carries the strategy's state), and ``Rollout``.
"""
from __future__ import annotations

import copy
import math
import warnings
import weakref
from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn

from . import _core, _kinds
from .losses import LossComponents, _weight
from .rollout import _check_system
from .weighting import WeightingStrategy, make as _make_strategy

__all__ = ["CombinedLoss", "ControlLoss", "Rollout", "TerminalLoss", "TrajectoryLoss",
           "combined_loss", "control_loss", "rollout", "terminal_loss", "trajectory_loss"]

_warned_device = False
_F64 = torch.float64


def _np(t: Optional[Tensor], name: str = "tensor"):
    """A NumPy view of a tensor (CPU, detached; no copy for CPU tensors)."""
    global _warned_device
    if t is None:
        return None
    if not t.is_cpu:
        if t.device.type == "meta":
            raise ValueError(f"{name} is on the meta device, which holds no values: the C core "
                             "cannot read it (give every tensor of the call on the meta device "
                             "for shape inference, or real tensors)")
        if not _warned_device:
            _warned_device = True
            warnings.warn(f"trajloss computes on the CPU: tensors on {t.device} are copied there "
                          "and the results copied back", RuntimeWarning, stacklevel=3)
        t = t.cpu()
    return _view(t, name)


def _same_device(names: tuple, *tensors) -> None:
    """Every tensor of a call on one device (the first's): ValueError naming the
    first that is not, and both devices (``names[i]`` names ``tensors[i]``).

    Checked in the operators themselves (real and fake implementations), so a
    direct ``torch.ops.trajloss`` call, ``torch.compile`` and a module moved to
    another device are all covered; mixed ``meta``/CPU inputs would otherwise
    be dispatched to the fake implementation and return uninitialised memory."""
    device = tensors[0].device
    for name, t in zip(names, tensors):
        if t is not None and t.device != device:
            raise ValueError(f"{name} is on {t.device} but {names[0]} is on {device}: all "
                             "tensor arguments of a trajloss call must be on one device")


def _check_tensors(**tensors):
    """The tensor arguments are tensors (or None where optional): a TypeError
    naming the argument, not an AttributeError or a dispatcher RuntimeError."""
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def _option(value, name, *, optional=False):
    """A real number (or None when optional), as a float; TypeError naming it.

    A tensor that requires grad is refused: the losses are not differentiated
    in their options, and taking its value would drop the gradient silently."""
    if type(value) is float:  # the common case, fast (inf/NaN are the core's to refuse)
        return value
    if value is None and optional:
        return None
    if isinstance(value, Tensor) and value.numel() == 1 and not (
            value.dtype == torch.bool or value.dtype.is_complex):
        if value.requires_grad:
            raise ValueError(f"{name} is a tensor that requires grad, but trajloss does not "
                             f"differentiate with respect to {name}: pass a number or a "
                             "detached tensor")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number{' or None' if optional else ''}, "
                        f"got {value!r}")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{name} must be a finite float64, got an integer of "
                         f"{len(str(abs(int(value))))} digits") from None


def _flag(value, name):
    if value is True or value is False:
        return value
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _penalty(penalty):
    if not isinstance(penalty, str):
        raise TypeError(f"penalty must be one of 'mse', 'l1', 'huber', got {penalty!r}")
    return penalty


def _weight_arg(value, name):
    """A term weight: a number (finite, >= 0; checked here) or a one-element
    real tensor (a graph input, checked by the operator), as a 0-d tensor or float."""
    if type(value) is float and 0.0 <= value < math.inf:  # the common case, fast
        return value
    if isinstance(value, Tensor):
        if value.dtype == torch.bool or value.dtype.is_complex:
            raise TypeError(f"{name} must be a real tensor, got dtype {value.dtype}")
        if value.numel() != 1:
            raise ValueError(f"{name} must be a number or a one-element tensor, got shape "
                             f"{tuple(value.shape)}")
        return value.reshape(()).to(_F64)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        try:
            float(value)
        except OverflowError:
            raise ValueError(f"{name} must be finite and >= 0, got an integer of "
                             f"{len(str(abs(int(value))))} digits, beyond float64") from None
    return _weight(value, name)


def _tensor(a, like: Tensor) -> Tensor:
    """The core's result ``a`` as a tensor on like's device (no copy on the CPU)."""
    t = torch.from_numpy(np.asarray(a))
    return t if like.is_cpu else t.to(like.device)


# ---- the operators' arguments --------------------------------------------------
# An operator takes a system as three tensors, Ad, Bd and offset (None when
# absent): the arrays of ``system._core`` (trajloss.systems) as float64
# tensors, each shared ((n, n), (T, n, n) when time-varying, ...) or per sample
# (a leading axis of B). Its boolean options and the loss's terms travel as the
# bits of one integer ``flags``: PyTorch's custom-operator layer spends time
# quadratic in the number of an operator's arguments on every differentiable
# call (torch._library.utils.fill_defaults reads the schema once per argument),
# which for a 21-argument operator was most of a small loss's cost.

_TIME_VARYING, _CHECK_FINITE, _INCLUDE_INITIAL, _TERMINAL_TARGET = 8, 16, 32, 64
_TERMS = _kinds.ALL_TERMS  # bits 0-2: TERM_CONTROL | TERM_TRAJECTORY | TERM_TERMINAL
assert _TERMS == 7  # the core's term flags are the low three bits


def _system(Ad: Tensor, Bd: Tensor, offset: Optional[Tensor], flags: int) -> tuple:
    """The core's system tuple from an operator's system arguments."""
    return (_np(Ad, "system (Ad)"), _np(Bd, "system (Bd)"), _np(offset, "system (offset)"),
            bool(flags & _TIME_VARYING))


def _check_forms(Ad: Tensor, Bd: Tensor, offset: Optional[Tensor], flags: int,
                 controls: Tensor) -> None:
    """The shape rules the core checks, for the fake implementations (meta
    tensors, ``torch.compile`` tracing): a per-sample system's B is the data's
    B, a time-varying system's T the controls' T; ValueError naming ``system``."""
    time_varying = bool(flags & _TIME_VARYING)
    batched = controls.dim() == 3
    for a, nd in ((Ad, 2), (Bd, 2), (offset, 1)):
        if a is None:
            continue
        if a.dim() == nd + time_varying + 1 and batched and a.shape[0] != controls.shape[0]:
            raise ValueError(f"system: its per-sample arrays hold B = {a.shape[0]} samples but "
                             f"the data holds B = {controls.shape[0]}")
        if time_varying and a.dim() >= nd + 1 and a.shape[-nd - 1] != controls.shape[-2]:
            raise ValueError(f"system: the time-varying system has T = {a.shape[-nd - 1]} steps "
                             f"but controls have T = {controls.shape[-2]}")


# ---- rollout ------------------------------------------------------------

_ROLLOUT_NAMES = ("x0", "controls", "Ad", "Bd", "offset")
_VJP_NAMES = ("x0", "controls", "grad_states", "Ad", "Bd")
_CONTROL_NAMES = ("pred", "target", "lengths", "mask", "feature_weights")
_LOSS_NAMES = ("controls", "x0", "ref_controls", "ref_states", "target", "weights", "lengths",
               "mask", "feature_weights", "state_weights", "Ad", "Bd", "offset")


@torch.library.custom_op("trajloss::rollout", mutates_args=())
def _rollout_op(Ad: Tensor, Bd: Tensor, offset: Optional[Tensor], x0: Tensor, controls: Tensor,
                flags: int) -> Tensor:
    """States (.., T+1, n); flags: time-varying, check_finite."""
    _same_device(_ROLLOUT_NAMES, x0, controls, Ad, Bd, offset)
    return _tensor(_core.rollout(_system(Ad, Bd, offset, flags), _np(x0, "x0"),
                                 _np(controls, "controls"),
                                 check_finite=bool(flags & _CHECK_FINITE)), x0)


@_rollout_op.register_fake
def _(Ad, Bd, offset, x0, controls, flags):
    _same_device(_ROLLOUT_NAMES, x0, controls, Ad, Bd, offset)
    _check_forms(Ad, Bd, offset, flags, controls)
    return controls.new_empty((*controls.shape[:-2], controls.shape[-2] + 1, x0.shape[-1]))


@torch.library.custom_op("trajloss::rollout_vjp", mutates_args=())
def _rollout_vjp_op(Ad: Tensor, Bd: Tensor, x0: Tensor, controls: Tensor, grad_states: Tensor,
                    flags: int) -> tuple[Tensor, Tensor]:
    """(∂/∂controls, ∂/∂x0) of <grad_states, states>; the adjoint does not read
    the offset (the rollout is affine in it)."""
    _same_device(_VJP_NAMES, x0, controls, grad_states, Ad, Bd)
    gu, gx = _core.rollout_vjp(_system(Ad, Bd, None, flags), _np(x0, "x0"),
                               _np(controls, "controls"), _np(grad_states, "grad_states"),
                               check_finite=bool(flags & _CHECK_FINITE))
    return _tensor(gu, controls), _tensor(gx, x0)


@_rollout_vjp_op.register_fake
def _(Ad, Bd, x0, controls, grad_states, flags):
    _same_device(_VJP_NAMES, x0, controls, grad_states, Ad, Bd)
    _check_forms(Ad, Bd, None, flags, controls)
    return torch.empty_like(controls), torch.empty_like(x0)


def _rollout_setup(ctx, inputs, output):
    Ad, Bd, _, x0, controls, flags = inputs
    ctx.save_for_backward(Ad, Bd, x0, controls)
    ctx.flags = flags


def _rollout_backward(ctx, grad_states):
    # the rollout is affine: its VJP is the adjoint pass, itself a
    # differentiable operator, so every order of derivative is exact
    Ad, Bd, x0, controls = ctx.saved_tensors
    gu, gx = _rollout_vjp_op(Ad, Bd, x0, controls, grad_states, ctx.flags)
    return None, None, None, gx, gu, None


_rollout_op.register_autograd(_rollout_backward, setup_context=_rollout_setup)


def _rollout_vjp_setup(ctx, inputs, output):
    Ad, Bd, x0, controls, _, flags = inputs
    ctx.save_for_backward(Ad, Bd, x0, controls)
    ctx.flags = flags & _TIME_VARYING


def _rollout_vjp_backward(ctx, g_controls, g_x0):
    # rollout_vjp is linear in grad_states, (gu, gx) = J^T G with J the rollout's
    # Jacobian; its own VJP is J (cx, cu): the rollout of the cotangents by the
    # linear part of the dynamics (no offset, no finiteness check).
    Ad, Bd, x0, controls = ctx.saved_tensors
    if g_controls is None:
        g_controls = torch.zeros_like(controls)
    if g_x0 is None:
        g_x0 = torch.zeros_like(x0)
    return None, None, None, None, _rollout_op(Ad, Bd, None, g_x0, g_controls, ctx.flags), None


_rollout_vjp_op.register_autograd(_rollout_vjp_backward, setup_context=_rollout_vjp_setup)


# ---- the losses as differentiable torch expressions -------------------------
# Used only by backward, when the fused C gradient is not enough: for
# create_graph=True (double backward) and for gradients of references,
# feature/state weights. Same definitions as the core (trajloss.losses):
# values in float64; padded or masked-out steps are never read (torch.where
# before the penalty, so NaN there cannot reach a value or a gradient).

def _valid_steps(B: int, T: int, lengths, mask, device) -> Tensor:
    """Valid steps S_b as a bool tensor (B, T) (B = 1 for unbatched inputs)."""
    if mask is not None:
        return (mask != 0).reshape(B, T)
    steps = torch.arange(T, device=device)
    if lengths is not None:
        return steps < lengths.reshape(-1, 1)
    return torch.ones((B, T), dtype=torch.bool, device=device)


def _time_weights(V: Tensor, discount) -> Tensor:
    """``w[b, t] = γ^t |S_b| / Σ_{s∈S_b} γ^s`` on the valid steps V (B, T), 0 elsewhere.

    Exponents are taken relative to a row's first valid step (γ < 1) or last
    (γ > 1), so every power is <= 1 and the sum >= 1: no overflow for any T."""
    Vf = V.to(_F64)
    if discount is None or discount == 1.0:
        return Vf
    T = V.shape[-1]
    lg = math.log(discount)
    ints = V.to(torch.uint8)
    ref = ints.argmax(-1) if lg < 0 else (T - 1) - ints.flip(-1).argmax(-1)
    t = torch.arange(T, dtype=_F64, device=V.device)
    e = torch.exp((t - ref.unsqueeze(-1).to(_F64)) * lg) * Vf
    den = e.sum(-1, keepdim=True)
    return torch.where(V, e * Vf.sum(-1, keepdim=True) / torch.where(den > 0, den, 1.0), 0.0)


def _rho(r: Tensor, penalty: str, delta: float) -> Tensor:
    if penalty == "mse":
        return r * r
    if penalty == "l1":
        return r.abs()
    a = r.abs()
    return torch.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def _term(pred: Tensor, ref: Tensor, V: Tensor, w: Tensor, scale, penalty, delta) -> Tensor:
    """``Σ_{b,t} w[b,t] mean_d s_d ρ(pred − ref)[b,t,d] / Σ_b |S_b|``, pred (B, T, D)."""
    r = torch.where(V.unsqueeze(-1), pred - ref, 0.0)
    p = _rho(r, penalty, delta)
    if scale is not None:
        p = p * scale
    return (p.sum(-1) * w).sum() / (pred.shape[-1] * V.sum())


def _as64(*tensors):
    return [None if t is None else t.to(_F64) for t in tensors]


def _control_expr(pred, target, lengths, mask, discount, penalty, delta, fw):
    pred, target, fw = _as64(pred, target, fw)
    if pred.dim() == 2:  # unbatched (T, D)
        pred, target = pred.unsqueeze(0), target.unsqueeze(0)
    B, T, _ = pred.shape
    V = _valid_steps(B, T, lengths, mask, pred.device)
    return _term(pred, target, V, _time_weights(V, discount), fw, penalty, delta)


def _rollout_loss_expr(system, controls, x0, ref_controls, ref_states, target, weights, terms,
                       include_initial, discount, lengths, mask, penalty, delta, fw, sw):
    """``weights[0]·ℓ_c + weights[1]·ℓ_t + weights[2]·ℓ_f`` (the terms in ``terms``);
    ``system`` the operators' system arguments ``(Ad, Bd, offset, flags)`` (flags:
    the time-varying bit)."""
    u, x0, ru, rs, tgt, weights, fw, sw = _as64(controls, x0, ref_controls, ref_states, target,
                                                weights, fw, sw)
    if u.dim() == 2:  # unbatched
        u, x0 = u.unsqueeze(0), x0.unsqueeze(0)
        ru, rs, tgt = (None if a is None else a.unsqueeze(0) for a in (ru, rs, tgt))
    B, T, _ = u.shape
    V = _valid_steps(B, T, lengths, mask, u.device)
    X = _rollout_op(*system[:3], x0, u, system[3])  # differentiable at every order
    total = u.new_zeros(())
    if terms & _core.TERM_CONTROL:
        total = total + weights[0] * _term(u, ru, V, _time_weights(V, discount), fw, penalty,
                                           delta)
    if terms & _core.TERM_TRAJECTORY:
        if include_initial:  # state 0 as an extra first step of every non-empty sequence
            Vt = torch.cat([V.any(-1, keepdim=True), V], -1)
            states, refs = X, rs
        else:
            Vt, states, refs = V, X[:, 1:], rs[:, 1:]
        total = total + weights[1] * _term(states, refs, Vt, _time_weights(Vt, discount), sw,
                                           penalty, delta)
    if terms & _core.TERM_TERMINAL:
        # the final valid state X[b, t_b + 1], t_b the last valid step
        valid = V.any(-1)
        last = (T - 1) - V.to(torch.uint8).flip(-1).argmax(-1)
        idx = (last + 1).reshape(B, 1, 1).expand(B, 1, X.shape[-1])
        final = X.gather(1, idx)
        ref = rs.gather(1, idx) if tgt is None else tgt.unsqueeze(1)
        total = total + weights[2] * _term(final, ref, valid.unsqueeze(-1),
                                           valid.unsqueeze(-1).to(_F64), sw, penalty, delta)
    return total


def _expr_grads(g_value, expr, args, wanted):
    """Gradients of ``g_value · expr(*args)`` with respect to ``args[i]``, i in wanted.

    With create_graph (grad mode on in backward) the inputs are used as they
    are, so the gradients are themselves differentiable: exact double backward.
    Otherwise they are detached leaves and the result carries no graph."""
    create = torch.is_grad_enabled()
    with torch.enable_grad():
        if not create:
            args = [a.detach().requires_grad_(i in wanted) if isinstance(a, Tensor) else a
                    for i, a in enumerate(args)]
        total = expr(*args)
        grads = torch.autograd.grad(total, [args[i] for i in wanted], g_value.to(total.dtype),
                                    create_graph=create, allow_unused=True)
    out = [None] * len(args)
    for i, g in zip(wanted, grads):
        out[i] = g
    return out


# ---- control loss ---------------------------------------------------------

@torch.library.custom_op("trajloss::control_loss", mutates_args=())
def _control_loss_op(pred: Tensor, target: Tensor, lengths: Optional[Tensor],
                     mask: Optional[Tensor], discount: Optional[float], penalty: str,
                     delta: float, feature_weights: Optional[Tensor],
                     check_finite: bool = True) -> tuple[Tensor, Tensor]:
    _same_device(_CONTROL_NAMES, pred, target, lengths, mask, feature_weights)
    value, grad = _core.control_loss(_np(pred, "pred"), _np(target, "target"), discount=discount,
                                     lengths=_np(lengths, "lengths"), mask=_np(mask, "mask"),
                                     penalty=penalty, delta=delta,
                                     feature_weights=_np(feature_weights, "feature_weights"),
                                     check_finite=check_finite)
    return torch.tensor(value, dtype=pred.dtype, device=pred.device), _tensor(grad, pred)


@_control_loss_op.register_fake
def _(pred, target, lengths, mask, discount, penalty, delta, feature_weights, check_finite=True):
    _same_device(_CONTROL_NAMES, pred, target, lengths, mask, feature_weights)
    return pred.new_empty(()), torch.empty_like(pred)


def _control_loss_setup(ctx, inputs, output):
    pred, target, lengths, mask, discount, penalty, delta, fw, _ = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.options = (discount, penalty, delta)
    ctx.save_for_backward(output[1], pred, target, lengths, mask, fw)


def _control_loss_backward(ctx, g_value, _g_grad):
    grad, pred, target, lengths, mask, fw = ctx.saved_tensors
    needs = ctx.needs_input_grad
    if not (needs[7] or torch.is_grad_enabled()):  # the fused C gradient
        g = grad * g_value
        return g, -g, None, None, None, None, None, None, None  # rho(pred - target)
    gp, gt, gf = _control_expr_grads(g_value, pred, target, lengths, mask, fw, *ctx.options,
                                     needs[0], needs[1], needs[7])
    return gp, gt, None, None, None, None, None, gf, None


def _control_expr_grads(g_value, pred, target, lengths, mask, fw, discount, penalty, delta,
                        need_pred, need_target, need_fw) -> tuple:
    """``(∂/∂pred, ∂/∂target, ∂/∂feature_weights)`` of ``g_value · control_loss``
    from its differentiable expression (None where not needed)."""
    gp, gt, _, _, gf = _expr_grads(
        g_value,
        lambda p, t, L, M, f: _control_expr(p, t, L, M, discount, penalty, delta, f),
        [pred, target, lengths, mask, fw],
        [i for i, need in ((0, need_pred), (1, need_target), (4, need_fw)) if need])
    return gp, gt, gf


_control_loss_op.register_autograd(_control_loss_backward, setup_context=_control_loss_setup)


# ---- losses through the dynamics -----------------------------------------

_WEIGHT_NAMES = ("weights[0] (the control term's weight)", "weight", "terminal_weight")


def _checked_weights(weights: Tensor):
    """The three term weights as floats, each finite and >= 0 (ValueError naming it)."""
    if weights.shape != (3,):
        raise ValueError(f"weights must have shape (3,), got {tuple(weights.shape)}")
    w = _np(weights, "weights").tolist()
    for name, v in zip(_WEIGHT_NAMES, w):
        if not 0.0 <= v < math.inf:  # NaN fails too
            raise ValueError(f"{name} must be finite and >= 0, got {v!r}")
    return w


#: The rollout_loss operator's inputs, in order: tensors, then the options --
#: ``flags`` (the terms' bits, include_initial, check_finite, time-varying,
#: terminal target's name), ``reals`` = ``(delta,)`` or ``(delta, discount)``
#: and ``penalty``.
_LOSS_INPUTS = ("Ad", "Bd", "offset", "controls", "x0", "ref_controls", "ref_states", "target",
                "weights", "lengths", "mask", "feature_weights", "state_weights", "flags",
                "reals", "penalty")
_AT = {name: i for i, name in enumerate(_LOSS_INPUTS)}
_TENSORS = 13  # the inputs before flags: what backward saves
#: The inputs with a gradient; those whose gradient the fused C pass does not give.
_LOSS_DIFF = ("controls", "x0", "ref_controls", "ref_states", "target", "weights",
              "feature_weights", "state_weights")
_NOT_FUSED = tuple(_AT[k] for k in ("ref_controls", "ref_states", "target", "feature_weights",
                                    "state_weights"))


def _loss_options(flags: int, reals: list) -> dict:
    """The core's keyword options from an operator's ``flags`` and ``reals``."""
    return dict(terms=flags & _TERMS, include_initial=bool(flags & _INCLUDE_INITIAL),
                discount=reals[1] if len(reals) > 1 else None, delta=reals[0],
                check_finite=bool(flags & _CHECK_FINITE),
                target_name="terminal_target" if flags & _TERMINAL_TARGET else "target")


@torch.library.custom_op("trajloss::rollout_loss", mutates_args=())
def _rollout_loss_op(Ad: Tensor, Bd: Tensor, offset: Optional[Tensor], controls: Tensor,
                     x0: Tensor, ref_controls: Optional[Tensor], ref_states: Optional[Tensor],
                     target: Optional[Tensor], weights: Tensor, lengths: Optional[Tensor],
                     mask: Optional[Tensor], feature_weights: Optional[Tensor],
                     state_weights: Optional[Tensor], flags: int, reals: list[float],
                     penalty: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(total, ∂/∂controls, ∂/∂x0, components) of the core's rollout_loss; the
    components are (total, control, trajectory, terminal, w_c, w_t, w_f)."""
    _same_device(_LOSS_NAMES, controls, x0, ref_controls, ref_states, target, weights, lengths,
                 mask, feature_weights, state_weights, Ad, Bd, offset)
    w = _checked_weights(weights)
    options = _loss_options(flags, reals)
    total, c, t, f, gu, gx = _core.rollout_loss(
        _system(Ad, Bd, offset, flags), _np(controls, "controls"), _np(x0, "x0"),
        _np(ref_controls, "ref_controls"), _np(ref_states, "ref_states"),
        _np(target, options["target_name"]), control_weight=w[0], trajectory_weight=w[1],
        terminal_weight=w[2], lengths=_np(lengths, "lengths"), mask=_np(mask, "mask"),
        penalty=penalty, feature_weights=_np(feature_weights, "feature_weights"),
        state_weights=_np(state_weights, "state_weights"), **options)
    # the terms and the weights they were taken with (backward and CombinedLoss read them)
    components = torch.tensor([total, c, t, f, *w], dtype=_F64, device=controls.device)
    return (torch.tensor(total, dtype=controls.dtype, device=controls.device),
            _tensor(gu, controls), _tensor(gx, x0), components)


@_rollout_loss_op.register_fake
def _(Ad, Bd, offset, controls, x0, ref_controls, ref_states, target, weights, lengths, mask,
      feature_weights, state_weights, flags, reals, penalty):
    _same_device(_LOSS_NAMES, controls, x0, ref_controls, ref_states, target, weights, lengths,
                 mask, feature_weights, state_weights, Ad, Bd, offset)
    _check_forms(Ad, Bd, offset, flags, controls)
    return (controls.new_empty(()), torch.empty_like(controls), torch.empty_like(x0),
            controls.new_empty((7,), dtype=_F64))


def _rollout_loss_setup(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1], output[2], output[3])
    ctx.options = inputs[_TENSORS:]
    saved = list(inputs[:_TENSORS])
    # a weights tensor that needs no gradient is not saved: CombinedLoss updates
    # its buffer in place, and the values used are in the components output
    if not saved[_AT["weights"]].requires_grad:
        saved[_AT["weights"]] = None
    ctx.save_for_backward(output[1], output[2], output[3], *saved)


def _rollout_loss_backward(ctx, g_value, _gu, _gx, _gc):
    gu, gx, comps, *saved = ctx.saved_tensors
    needs = ctx.needs_input_grad
    out = [None] * len(_LOSS_INPUTS)
    if not (torch.is_grad_enabled() or any(map(needs.__getitem__, _NOT_FUSED))):
        # the fused C gradient; d total / d weights = the raw terms
        out[_AT["controls"]], out[_AT["x0"]] = gu * g_value, gx * g_value
        if needs[_AT["weights"]]:
            out[_AT["weights"]] = comps[1:4] * g_value.to(_F64)
        return tuple(out)
    if saved[_AT["weights"]] is None:
        saved[_AT["weights"]] = comps[4:7]
    return tuple(_loss_expr_grads(g_value, saved, *ctx.options, needs))


def _loss_expr_grads(g_value, saved, flags, reals, penalty, needs) -> list:
    """The rollout loss's gradients from its differentiable expression (double
    backward, references, feature/state weights): ``out[i]`` for the input
    ``_LOSS_INPUTS[i]``, given ``saved`` (its first ``_TENSORS`` inputs, the
    weights as a float64 tensor of 3) and ``needs[i]`` (whether input i
    wants a gradient)."""
    options = _loss_options(flags, reals)
    out = [None] * len(_LOSS_INPUTS)
    # args[0] is the system, args[i] for i >= 1 the input at position i + 2
    args = [(*saved[:3], flags & _TIME_VARYING)] + list(saved[3:])

    def expr(system, u, x, ru, rs, tg, w, L, M, f, s):
        return _rollout_loss_expr(system, u, x, ru, rs, tg, w, options["terms"],
                                  options["include_initial"], options["discount"], L, M,
                                  penalty, options["delta"], f, s)

    wanted = [i for i in range(1, len(args))
              if _LOSS_INPUTS[i + 2] in _LOSS_DIFF and needs[i + 2]]
    for i, g in enumerate(_expr_grads(g_value, expr, args, wanted)):
        if g is not None:
            out[i + 2] = g
    return out


_rollout_loss_op.register_autograd(_rollout_loss_backward, setup_context=_rollout_loss_setup)


# ---- the lean eager path -----------------------------------------------------
# A custom operator costs ~5x a bare torch.autograd.Function per call (the
# dispatcher, torch._library's argument handling, the autograd wrapper it
# generates), which at small B is most of a training step's loss time. So in
# plain eager mode -- CPU tensors of the exact types Tensor/Parameter, nothing
# tracing, no functorch transform, no dispatch or torch-function mode -- the
# functions call the core through the autograd.Functions below, with the same
# forward, the same fused backward and the same differentiable fallback
# (double backward, references, feature/state weights) as the operators.
# Everything else -- torch.compile, torch.export, meta/fake tensors, other
# devices, tensor subclasses, torch.func -- goes through the operators.

_PLAIN = (Tensor, nn.Parameter)
_NP_DTYPE = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}
_wrapped = torch._C._functorch.is_functorch_wrapped_tensor


def _eager(*tensors) -> bool:
    """Whether a call with these tensor arguments (None: absent) may take the
    lean path: CPU tensors of the exact types Tensor/Parameter (no subclass,
    no functorch wrapper -- e.g. one that escaped a torch.func transform), and
    nothing compiling, tracing, transforming or intercepting dispatch."""
    if (torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()
            or torch._C._len_torch_dispatch_stack() or torch._C._is_torch_function_mode_enabled()
            or torch._C._get_tracing_state() is not None):
        return False
    for t in tensors:
        if t is not None and not (type(t) in _PLAIN and t.is_cpu and not _wrapped(t)):
            return False
    return True


def _direct_apply(cls):
    """``cls.apply`` without ``torch.autograd.Function.apply``'s Python layer:
    that layer binds setup_context-style arguments (these classes have none),
    dispatches functorch transforms and unwraps dead functorch wrappers (both
    excluded by :func:`_eager`), and costs ~3 µs a call -- a twentieth of a
    small loss's forward and backward."""
    return super(torch.autograd.Function, cls).apply


def _view(t: Optional[Tensor], name: str):
    """A NumPy view of a CPU tensor (None for None), detached, without a copy."""
    if t is None:
        return None
    try:
        return t.numpy(force=True)
    except TypeError:  # a dtype NumPy does not have (bfloat16, ...)
        raise TypeError(f"{name} must be a float32 or float64 tensor, got {t.dtype}") from None


def _scalar(value: float, dtype) -> Tensor:
    """A 0-d CPU tensor of ``dtype`` (float32/float64) holding ``value``
    (through NumPy: a third of ``torch.tensor``'s cost)."""
    return torch.from_numpy(np.array(value, _NP_DTYPE[dtype]))


def _views(names, tensors) -> None:
    """Raise the TypeError of the first tensor NumPy cannot view (naming it)."""
    for name, t in zip(names, tensors):
        _view(t, name)


class _LossCall:
    """One lean rollout-loss call: its options, and ``args`` = (controls, x0,
    ref_controls, ref_states, target, weights, feature_weights,
    state_weights), ``weights`` three checked floats or a float64 tensor of 3
    that requires grad, the others tensors or None. ``_RolloutLossFunction``
    takes the tensors among them as its inputs (the fewer an
    autograd.Function has, the cheaper its call) and reads the rest from here.
    After its forward: ``terms`` = (total, control, trajectory, terminal, w_c,
    w_t, w_f) as floats, ``grads`` the fused (∂/∂controls, ∂/∂x0) and
    ``given`` which of ``args`` were tensors (``args`` itself is dropped)."""

    __slots__ = ("system", "args", "lengths", "mask", "flags", "reals", "penalty", "terms",
                 "grads", "given")

    def __init__(self, system, args, lengths, mask, flags, reals, penalty):
        self.system, self.args, self.lengths, self.mask = system, args, lengths, mask
        self.flags, self.reals, self.penalty = flags, reals, penalty
        self.terms = self.grads = self.given = None


#: the names of _LossCall.args (the rollout loss's differentiable inputs)
_CALL_ARGS = ("controls", "x0", "ref_controls", "ref_states", "target", "weights",
              "feature_weights", "state_weights")


class _RolloutLossFunction(torch.autograd.Function):
    """``trajloss::rollout_loss`` for the lean path: ``apply(call, *tensors)``,
    ``tensors`` the tensors among ``call.args`` in order -> the loss value
    (see :class:`_LossCall`)."""

    @staticmethod
    def forward(ctx, call, *tensors):
        args = call.args
        controls, x0, ru, rs, tg, weights, fw, sw = args
        call.given = [a is not None and type(a) is not tuple for a in args]
        call.args = None  # nothing but the saved tensors may hold the inputs
        w = weights if type(weights) is tuple else _checked_weights(weights)
        flags = call.flags
        target_name = "terminal_target" if flags & _TERMINAL_TARGET else "target"
        try:  # NumPy views; the core checks dtypes, shapes, values and names the argument
            u, x, ru, rs, tg = (controls.numpy(force=True), x0.numpy(force=True),
                                None if ru is None else ru.numpy(force=True),
                                None if rs is None else rs.numpy(force=True),
                                None if tg is None else tg.numpy(force=True))
            if fw is not None or sw is not None or call.lengths is not None \
                    or call.mask is not None:
                fw, sw, lengths, mask = (_view(fw, "feature_weights"),
                                         _view(sw, "state_weights"),
                                         _view(call.lengths, "lengths"), _view(call.mask, "mask"))
            else:
                lengths = mask = None
        except TypeError:
            _views(("controls", "x0", "ref_controls", "ref_states", target_name),
                   args[:5])
            raise
        total, c, t, f, gu, gx = _core.rollout_loss(
            call.system._core, u, x, ru, rs, tg, terms=flags & _TERMS, control_weight=w[0],
            trajectory_weight=w[1], terminal_weight=w[2],
            include_initial=bool(flags & _INCLUDE_INITIAL),
            discount=call.reals[1] if len(call.reals) > 1 else None, delta=call.reals[0],
            lengths=lengths, mask=mask, penalty=call.penalty, feature_weights=fw,
            state_weights=sw, check_finite=bool(flags & _CHECK_FINITE), target_name=target_name)
        call.terms = (total, c, t, f, *w)
        call.grads = torch.from_numpy(gu), torch.from_numpy(gx)
        ctx.call = call
        ctx.save_for_backward(call.lengths, call.mask, *tensors)
        return _scalar(total, controls.dtype)

    @staticmethod
    def backward(ctx, g_value):
        needs = ctx.needs_input_grad  # (call, controls, x0, ...the other given tensors)
        if not (torch.is_grad_enabled() or True in needs[3:]):  # the fused C gradient
            gu, gx = ctx.call.grads
            return (None, gu * g_value, gx * g_value) + (None,) * (len(needs) - 3)
        return _RolloutLossFunction._general_backward(ctx, g_value, needs)

    @staticmethod
    def _general_backward(ctx, g_value, needs):
        """Gradients of the references, weights, feature/state weights, or with
        create_graph: the fused gradient where it suffices, else the
        differentiable expression (as the operator's backward)."""
        call = ctx.call
        lengths, mask, *tensors = ctx.saved_tensors
        args = dict.fromkeys(_CALL_ARGS)
        wants = [False] * len(_LOSS_INPUTS)
        given = iter(zip(tensors, needs[1:]))
        for name, is_given in zip(_CALL_ARGS, call.given):
            if is_given:
                args[name], wants[_AT[name]] = next(given)
        out = [None] * len(_LOSS_INPUTS)
        if not (torch.is_grad_enabled() or any(wants[i] for i in _NOT_FUSED)):
            gu, gx = call.grads
            out[_AT["controls"]], out[_AT["x0"]] = gu * g_value, gx * g_value
            if wants[_AT["weights"]]:
                out[_AT["weights"]] = (torch.tensor(call.terms[1:4], dtype=_F64)
                                       * g_value.to(_F64))
        else:
            if args["weights"] is None:
                args["weights"] = torch.tensor(call.terms[4:], dtype=_F64)
            Ad, Bd, offset, tv = _cached_system_tensors(call.system, "cpu")
            saved = (Ad, Bd, offset, args["controls"], args["x0"], args["ref_controls"],
                     args["ref_states"], args["target"], args["weights"], lengths, mask,
                     args["feature_weights"], args["state_weights"])
            out = _loss_expr_grads(g_value, saved, call.flags | tv, call.reals, call.penalty,
                                   wants)
        return (None, *(out[_AT[name]] for name, is_given in zip(_CALL_ARGS, call.given)
                        if is_given))


class _ControlLossFunction(torch.autograd.Function):
    """``trajloss::control_loss`` for the lean path: ``apply(options, pred, target)``
    or ``apply(options, pred, target, feature_weights)`` -> the loss value;
    ``options`` = (lengths, mask, discount, penalty, delta, check_finite)."""

    @staticmethod
    def forward(ctx, options, pred, target, feature_weights=None):
        lengths, mask, discount, penalty, delta, check_finite = options
        try:  # NumPy views; the core checks dtypes, shapes, values and names the argument
            p, t = pred.numpy(force=True), target.numpy(force=True)
        except TypeError:
            _views(("pred", "target"), (pred, target))
            raise
        L = M = f = None
        if lengths is not None or mask is not None or feature_weights is not None:
            L, M = _view(lengths, "lengths"), _view(mask, "mask")
            f = _view(feature_weights, "feature_weights")
        value, grad = _core.control_loss(p, t, discount=discount, lengths=L, mask=M,
                                         penalty=penalty, delta=delta, feature_weights=f,
                                         check_finite=check_finite)
        ctx.options = discount, penalty, delta
        ctx.grad = torch.from_numpy(grad)  # the fused gradient (no graph, nothing else holds it)
        ctx.save_for_backward(pred, target, lengths, mask, feature_weights)
        return _scalar(value, pred.dtype)

    @staticmethod
    def backward(ctx, g_value):
        needs = ctx.needs_input_grad
        need_fw = len(needs) > 3 and needs[3]
        if not (need_fw or torch.is_grad_enabled()):  # the fused C gradient
            g = ctx.grad * g_value
            return (None, g, -g) + (None,) * (len(needs) - 3)  # rho(pred - target)
        pred, target, lengths, mask, fw = ctx.saved_tensors
        grads = _control_expr_grads(g_value, pred, target, lengths, mask, fw, *ctx.options,
                                    needs[1], needs[2], need_fw)
        return (None, *grads[:len(needs) - 1])


class _RolloutFunction(torch.autograd.Function):
    """``trajloss::rollout`` for the lean path: ``apply((system, check_finite), x0,
    controls)`` -> the states."""

    @staticmethod
    def forward(ctx, options, x0, controls):
        system, check_finite = options
        states = _core.rollout(system._core, _view(x0, "x0"), _view(controls, "controls"),
                               check_finite=check_finite)
        ctx.system, ctx.check_finite = system, check_finite
        ctx.save_for_backward(x0, controls)
        return torch.from_numpy(states)

    @staticmethod
    def backward(ctx, grad_states):
        x0, controls = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: the differentiable adjoint operator
            Ad, Bd, _, tv = _cached_system_tensors(ctx.system, "cpu")
            gu, gx = _rollout_vjp_op(Ad, Bd, x0, controls, grad_states,
                                     tv | _CHECK_FINITE * ctx.check_finite)
            return None, gx, gu
        gu, gx = _core.rollout_vjp(ctx.system._core, _view(x0, "x0"),
                                   _view(controls, "controls"),
                                   _view(grad_states, "grad_states"),
                                   check_finite=ctx.check_finite)
        return None, torch.from_numpy(gx), torch.from_numpy(gu)


_apply_rollout_loss = _direct_apply(_RolloutLossFunction)
_apply_control_loss = _direct_apply(_ControlLossFunction)
_apply_rollout = _direct_apply(_RolloutFunction)


# ---- functions -------------------------------------------------------------

def _system_tensors(system, like: Tensor) -> tuple:
    """The operators' system arguments and flag ``(Ad, Bd, offset, tv)``: the
    system's arrays as float64 tensors on like's device (tv: the flags' bit
    of a time-varying system, else 0), made once per system and device (the
    arrays are immutable)."""
    if torch.compiler.is_compiling():
        return _system_constants(_check_system(system), str(like.device))
    return _cached_system_tensors(_check_system(system), str(like.device))


#: system -> {device: tensors}; an entry lives as long as its system (nothing
#: is stored on the system itself, so pickling a system never pickles tensors)
_SYSTEM_TENSORS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _cached_system_tensors(system, device: str) -> tuple:
    per_device = _SYSTEM_TENSORS.get(system)
    if per_device is None:
        per_device = _SYSTEM_TENSORS[system] = {}
    tensors = per_device.get(device)
    if tensors is None:
        Ad, Bd, offset, time_varying = system._core
        tensors = per_device[device] = (
            torch.tensor(Ad, device=device), torch.tensor(Bd, device=device),
            None if offset is None else torch.tensor(offset, device=device),
            _TIME_VARYING if time_varying else 0)
    return tensors


@torch.compiler.assume_constant_result
def _system_constants(system, device: str) -> tuple:
    """:func:`_cached_system_tensors`, run as Python while ``torch.compile``
    traces: the system's arrays are sealed (trajloss.systems), which Dynamo
    cannot wrap as graph inputs, so the tensors are constants of the graph,
    which Dynamo guards on the system's identity (another system recompiles)."""
    return _cached_system_tensors(system, device)


def _opt(x, name):
    """An optional array argument as a tensor; its dtype is left to the core to check
    (a float ``lengths`` is refused there, never silently truncated)."""
    if x is None or type(x) is Tensor or isinstance(x, Tensor):
        return x
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise type(exc)(f"{name}: cannot be converted to a tensor ({exc})") from None


def rollout(system, x0: Tensor, controls: Tensor, *, check_finite=True) -> Tensor:
    """``trajloss.rollout`` for tensors: (B, n), (B, T, m) -> (B, T+1, n).

    Every system form: shared or per-sample (its B must be the data's),
    time-invariant or time-varying (its T must be the controls'), with or
    without an offset. Differentiable in ``x0`` and ``controls`` to every
    order (the rollout is affine; its backward is the core's adjoint pass).
    ``check_finite=False`` lets NaN/inf inputs propagate instead of raising
    ``ValueError``."""
    _check_tensors(x0=x0, controls=controls)
    check_finite = _flag(check_finite, "check_finite")
    if _eager(x0, controls):
        return _apply_rollout((_check_system(system), check_finite), x0, controls)
    Ad, Bd, offset, tv = _system_tensors(system, x0)
    return _rollout_op(Ad, Bd, offset, x0, controls, tv | _CHECK_FINITE * check_finite)


def control_loss(pred: Tensor, target: Tensor, *, discount=None, lengths=None, mask=None,
                 penalty="mse", delta=1.0, feature_weights=None, check_finite=True) -> Tensor:
    """``trajloss.control_loss`` as a scalar tensor, differentiable in ``pred``,
    ``target`` (``−∂ℓ/∂pred``) and a ``feature_weights`` tensor, to every order.

    Shapes as in NumPy: (B, T, D), or (T, D) for one unbatched sequence.
    ``check_finite=False`` skips the NaN/inf check of the inputs."""
    if not (type(pred) is Tensor and type(target) is Tensor):  # (the common case, fast)
        _check_tensors(pred=pred, target=target)
    if lengths is not None or mask is not None or feature_weights is not None:
        lengths, mask = _opt(lengths, "lengths"), _opt(mask, "mask")
        feature_weights = _opt(feature_weights, "feature_weights")
    options = (lengths, mask, None if discount is None else _option(discount, "discount"),
               _penalty(penalty), _option(delta, "delta"), _flag(check_finite, "check_finite"))
    if _eager(pred, target, lengths, mask, feature_weights):
        if feature_weights is None:  # one input fewer: a cheaper autograd call
            return _apply_control_loss(options, pred, target)
        return _apply_control_loss(options, pred, target, feature_weights)
    value, _ = _control_loss_op(pred, target, *options[:5], feature_weights, options[5])
    return value


#: per loss kind: the slots that must hold a tensor, those that may, and the
#: operator flags the kind fixes (its terms, how its terminal target is named)
_REQUIRED = {k.name: tuple(i for i, r in enumerate(k.references) if r in k.required)
             for k in _kinds.KINDS.values()}
_OPTIONAL = {k.name: tuple(i for i, r in enumerate(k.references)
                           if r is not None and r not in k.required)
             for k in _kinds.KINDS.values()}
_KIND_FLAGS = {k.name: k.terms | _TERMINAL_TARGET * (k.target_name == "terminal_target")
               for k in _kinds.KINDS.values()}


def _rollout_loss(kind, system, controls, x0, slots, weights, include_initial, discount,
                  lengths, mask, penalty, delta, feature_weights, state_weights, check_finite):
    """The loss ``kind`` (trajloss._kinds) with the references ``slots`` (the
    core's ref_controls, ref_states, target) and the term weights ``weights``
    (three checked numbers or a float64 tensor of 3): ``(value, components)``,
    components = (total, control, trajectory, terminal, w_c, w_t, w_f), a
    float64 tensor (operators) or a tuple of floats (lean eager path).
    Called on every training step: the common arguments take the shortest way."""
    _check_system(system)
    if not (type(controls) is Tensor and type(x0) is Tensor):
        _check_tensors(controls=controls, x0=x0)
    ref_controls, ref_states, target = slots
    for i in _REQUIRED[kind.name]:
        if not isinstance(slots[i], Tensor):
            _check_tensors(**{kind.references[i]: slots[i]})
    for i in _OPTIONAL[kind.name]:
        if slots[i] is not None and not isinstance(slots[i], Tensor):
            _check_tensors(**{kind.references[i]: slots[i]})
    flags = (_KIND_FLAGS[kind.name] | _CHECK_FINITE * _flag(check_finite, "check_finite")
             | _INCLUDE_INITIAL * _flag(include_initial, "include_initial"))
    delta = _option(delta, "delta")
    reals = [delta] if discount is None else [delta, _option(discount, "discount")]
    penalty = _penalty(penalty)
    if lengths is not None or mask is not None:
        lengths, mask = _opt(lengths, "lengths"), _opt(mask, "mask")
    if feature_weights is not None or state_weights is not None:
        feature_weights = _opt(feature_weights, "feature_weights")
        state_weights = _opt(state_weights, "state_weights")
    weight_tensor = weights if isinstance(weights, Tensor) else None
    if _eager(controls, x0, ref_controls, ref_states, target, weight_tensor, lengths, mask,
              feature_weights, state_weights):
        if weight_tensor is not None and not weight_tensor.requires_grad:
            # (CombinedLoss's buffer) data, not an input: it is updated in place
            weights = tuple(_checked_weights(weight_tensor))
        args = (controls, x0, ref_controls, ref_states, target, weights, feature_weights,
                state_weights)
        call = _LossCall(system, args, lengths, mask, flags, reals, penalty)
        value = _apply_rollout_loss(
            call, *[a for a in args if a is not None and type(a) is not tuple])
        return value, call.terms
    Ad, Bd, offset, tv = _system_tensors(system, controls)
    if weight_tensor is None:
        weights = torch.tensor(weights, dtype=_F64, device=controls.device)
    value, _, _, components = _rollout_loss_op(
        Ad, Bd, offset, controls, x0, ref_controls, ref_states, target, weights, lengths, mask,
        feature_weights, state_weights, flags | tv, reals, penalty)
    return value, components


def trajectory_loss(system, controls: Tensor, x0: Tensor, ref_states: Tensor, *,
                    include_initial=False, state_weights=None, discount=None, lengths=None,
                    mask=None, penalty="mse", delta=1.0, check_finite=True) -> Tensor:
    """``trajloss.trajectory_loss`` as a scalar tensor, differentiable (to every
    order) in ``controls``, ``x0``, ``ref_states`` and a ``state_weights`` tensor.
    Every system form, as in :func:`rollout`."""
    kind = _kinds.TRAJECTORY_LOSS
    return _rollout_loss(kind, system, controls, x0, (None, ref_states, None),
                         kind.weights, include_initial, discount, lengths, mask, penalty, delta,
                         None, state_weights, check_finite)[0]


def terminal_loss(system, controls: Tensor, x0: Tensor, target: Tensor, *, lengths=None,
                  mask=None, state_weights=None, penalty="mse", delta=1.0,
                  check_finite=True) -> Tensor:
    """``trajloss.terminal_loss`` as a scalar tensor, differentiable (to every
    order) in ``controls``, ``x0``, ``target`` and a ``state_weights`` tensor.
    Every system form, as in :func:`rollout`."""
    kind = _kinds.TERMINAL_LOSS
    return _rollout_loss(kind, system, controls, x0, (None, None, target), kind.weights,
                         False, None, lengths, mask, penalty, delta, None, state_weights,
                         check_finite)[0]


def combined_loss(system, controls: Tensor, x0: Tensor, ref_controls: Tensor, ref_states: Tensor,
                  *, weight, terminal_weight=0.0, terminal_target=None, include_initial=False,
                  state_weights=None, feature_weights=None, discount=None, lengths=None,
                  mask=None, penalty="mse", delta=1.0, check_finite=True) -> Tensor:
    """``trajloss.combined_loss`` as a scalar tensor; for strategies and
    monitoring use :class:`CombinedLoss`. Every system form, as in :func:`rollout`.

    ``weight`` and ``terminal_weight`` are numbers or one-element tensors,
    finite and >= 0 (``ValueError`` naming the argument otherwise). Every
    tensor argument is differentiable to every order: ``controls``, ``x0``,
    ``ref_controls``, ``ref_states``, ``terminal_target``, the
    ``feature_weights``/``state_weights`` tensors, and the weights
    (``∂ℓ/∂weight`` = the raw trajectory term, ``∂ℓ/∂terminal_weight`` = the
    raw terminal term)."""
    kind = _kinds.COMBINED_LOSS
    weight = _weight_arg(weight, "weight")
    terminal_weight = _weight_arg(terminal_weight, "terminal_weight")
    weights = (1.0, weight, terminal_weight)  # kind.weights with the caller's two
    if isinstance(weight, Tensor) or isinstance(terminal_weight, Tensor):
        tensors = {k: v for k, v in (("weight", weight), ("terminal_weight", terminal_weight))
                   if isinstance(v, Tensor)}
        if isinstance(controls, Tensor):
            _same_device(("controls", *tensors), controls, *tensors.values())
        device = next(iter(tensors.values())).device
        weights = torch.stack([torch.as_tensor(w, dtype=_F64, device=device) for w in weights])
    return _rollout_loss(kind, system, controls, x0, (ref_controls, ref_states, terminal_target),
                         weights, include_initial, discount, lengths, mask, penalty, delta,
                         feature_weights, state_weights, check_finite)[0]


# ---- modules ---------------------------------------------------------------

class Rollout(nn.Module):
    """``Rollout(system, check_finite=True)(x0, controls) -> states``."""

    def __init__(self, system, check_finite=True):
        super().__init__()
        self.system = _check_system(system)
        self.check_finite = _flag(check_finite, "check_finite")

    def forward(self, x0, controls):
        return rollout(self.system, x0, controls, check_finite=self.check_finite)


class ControlLoss(nn.Module):
    """``ControlLoss(discount=None, penalty="mse", delta=1.0, feature_weights=None,
    check_finite=True)(pred, target, lengths=None, mask=None)``."""

    def __init__(self, discount=None, penalty="mse", delta=1.0, feature_weights=None,
                 check_finite=True):
        super().__init__()
        self.discount, self.penalty, self.delta = discount, penalty, delta
        self.feature_weights = feature_weights
        self.check_finite = _flag(check_finite, "check_finite")

    def forward(self, pred, target, lengths=None, mask=None):
        return control_loss(pred, target, discount=self.discount, lengths=lengths, mask=mask,
                            penalty=self.penalty, delta=self.delta,
                            feature_weights=self.feature_weights,
                            check_finite=self.check_finite)


class TrajectoryLoss(nn.Module):
    """``TrajectoryLoss(system, ...)(controls, x0, ref_states, lengths=None, mask=None)``."""

    def __init__(self, system, include_initial=False, state_weights=None, discount=None,
                 penalty="mse", delta=1.0, check_finite=True):
        super().__init__()
        self.system = _check_system(system)
        self.options = dict(include_initial=include_initial, state_weights=state_weights,
                            discount=discount, penalty=penalty, delta=delta,
                            check_finite=_flag(check_finite, "check_finite"))

    def forward(self, controls, x0, ref_states, lengths=None, mask=None):
        return trajectory_loss(self.system, controls, x0, ref_states, lengths=lengths,
                               mask=mask, **self.options)


class TerminalLoss(nn.Module):
    """``TerminalLoss(system, ...)(controls, x0, target, lengths=None, mask=None)``."""

    def __init__(self, system, state_weights=None, penalty="mse", delta=1.0, check_finite=True):
        super().__init__()
        self.system = _check_system(system)
        self.options = dict(state_weights=state_weights, penalty=penalty, delta=delta,
                            check_finite=_flag(check_finite, "check_finite"))

    def forward(self, controls, x0, target, lengths=None, mask=None):
        return terminal_loss(self.system, controls, x0, target, lengths=lengths, mask=mask,
                             **self.options)


_EXTRA_STATE_VERSION = 1


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

    ``state_dict()`` holds, besides the ``weights`` buffer, an extra state
    (``get_extra_state``): the strategy's class and ``state_dict()``, the
    last call's terms not yet observed by the strategy, and ``epoch``. So
    ``torch.save``/``torch.load`` (also with ``weights_only=True``) and
    ``load_state_dict`` resume training with exactly the losses an
    uninterrupted run gives; a state from another strategy or a malformed one
    raises ``ValueError``/``TypeError`` before anything is changed.
    """

    def __init__(self, system, weight, terminal_weight=0.0, discount=None,
                 include_initial=False, penalty="mse", delta=1.0, feature_weights=None,
                 state_weights=None, monitor=None, check_finite=True):
        super().__init__()
        self.system = _check_system(system)
        if not isinstance(weight, (str, WeightingStrategy)):
            weight = _weight_arg(weight, "weight")  # names the argument and its limits
            if isinstance(weight, Tensor):
                weight = _fixed_tensor_weight(weight, "weight")
        self.strategy = _make_strategy(weight)
        self.monitor = monitor
        self.epoch = None
        self.options = dict(include_initial=include_initial, discount=discount, penalty=penalty,
                            delta=delta, feature_weights=feature_weights,
                            state_weights=state_weights,
                            check_finite=_flag(check_finite, "check_finite"))
        first = self.strategy.weight(epoch=0) if _needs_epoch(self.strategy) else self.strategy.weight()
        terminal_weight = _weight_arg(terminal_weight, "terminal_weight")
        if isinstance(terminal_weight, Tensor):
            terminal_weight = _fixed_tensor_weight(terminal_weight, "terminal_weight")
        self.register_buffer("weights", torch.tensor([1.0, first, terminal_weight],
                                                     dtype=_F64))
        # (total, c, t, f, w0, w1, w2) of the last call: a float64 tensor (operators,
        # compiled) or a tuple of floats (lean eager path); see _last_values
        self._last = None
        self._observed = True
        self._mirror = None  # (buffer, its version, its values): see _weight_values

    def update_weight(self, epoch=None):
        """Let the strategy observe the last call's terms and set the trajectory weight."""
        last = None if self._observed else self._last_values()
        if last is not None:
            self.strategy.observe(last[1], last[2])
            _set(self, "_observed", True)
        epoch = self.epoch if epoch is None else epoch
        weight = self.strategy.weight(epoch=epoch)
        mirror = self.__dict__.get("_mirror")
        if not (mirror is not None and mirror[0] is self.weights
                and mirror[1] == self.weights._version and mirror[2][1] == weight):
            with torch.no_grad():  # (an in-place write costs ~10 µs: only when it changes)
                self.weights[1] = weight

    def _weight_values(self) -> tuple:
        """The ``weights`` buffer as three checked floats, read again only when the
        buffer was replaced (``.to``) or written (its version counter: an in-place
        write, ``load_state_dict``) since the last read."""
        w = self.weights
        mirror = self.__dict__.get("_mirror")
        if mirror is None or mirror[0] is not w or mirror[1] != w._version:
            mirror = (w, w._version, tuple(_checked_weights(w)))
            _set(self, "_mirror", mirror)
        return mirror[2]

    @property
    def components(self) -> Optional[LossComponents]:
        """The terms of the last call (``None`` before the first, and after a
        call on the ``meta`` device, which has no values)."""
        last = self._last_values()
        if last is None:
            return None
        total, c, t, f, _, w, wf = last
        return LossComponents(c, t, f, w, wf, total)

    def forward(self, controls, x0, ref_controls, ref_states, lengths=None, mask=None,
                epoch=None, terminal_target=None):
        buffer = self.weights
        if isinstance(controls, Tensor) and not (controls.is_cpu and buffer.is_cpu) \
                and controls.device != buffer.device:
            raise ValueError(f"controls is on {controls.device} but this CombinedLoss's buffers "
                             f"are on {buffer.device}: move the module with "
                             f".to({str(controls.device)!r}) or the inputs to its device")
        compiling = torch.compiler.is_compiling()
        weights = buffer
        if not compiling:
            self.update_weight(epoch)
            if buffer.is_cpu:  # eager on the CPU: the values (the fast path reads floats)
                weights = self._weight_values()
        o = self.options
        value, comps = _rollout_loss(_kinds.COMBINED_LOSS, self.system, controls, x0,
                                     (ref_controls, ref_states, terminal_target), weights,
                                     o["include_initial"], o["discount"], lengths, mask,
                                     o["penalty"], o["delta"], o["feature_weights"],
                                     o["state_weights"], o["check_finite"])
        # a tensor from the operators (its values are read only when asked for:
        # no synchronisation inside a compiled region), floats from the lean path
        last = comps.detach() if isinstance(comps, Tensor) else comps
        if compiling:  # Dynamo traces the ordinary assignments
            self._last, self._observed = last, False
        else:
            object.__setattr__(self, "_last", last)
            object.__setattr__(self, "_observed", False)
        if self.monitor is not None and not compiling and self._last_values() is not None:
            self.monitor.update(self.components)
        return value

    def _last_values(self) -> Optional[list]:
        """The last call's (total, control, trajectory, terminal, w_c, w_t, w_f) as
        floats; None before the first call and after one on the ``meta`` device."""
        last = self._last
        if last is None or isinstance(last, Tensor) and last.is_meta:
            return None
        return last.tolist() if isinstance(last, Tensor) else list(last)

    # -- state_dict round trip ------------------------------------------------

    def get_extra_state(self) -> dict:
        """The strategy's state and the pending observation (plain Python values)."""
        last = self._last_values()
        return {"version": _EXTRA_STATE_VERSION,
                "strategy": type(self.strategy).__name__,
                "strategy_state": self.strategy.state_dict(),
                "last": last,
                "observed": bool(self._observed),
                "epoch": self.epoch.item() if isinstance(self.epoch, np.generic) else self.epoch}

    def set_extra_state(self, state) -> None:
        """Restore :meth:`get_extra_state` (validated before anything changes)."""
        if not isinstance(state, dict):
            raise TypeError(f"CombinedLoss extra state must be a dict, got {type(state).__name__}")
        expected = {"version", "strategy", "strategy_state", "last", "observed", "epoch"}
        if set(state) != expected:
            raise ValueError(f"CombinedLoss extra state must have the keys {sorted(expected)}, "
                             f"got {sorted(map(str, state))}")
        if state["version"] != _EXTRA_STATE_VERSION:
            raise ValueError(f"CombinedLoss extra state version must be {_EXTRA_STATE_VERSION}, "
                             f"got {state['version']!r}")
        name = type(self.strategy).__name__
        if state["strategy"] != name:
            raise ValueError(f"the saved state is of a {state['strategy']!r} weighting strategy, "
                             f"this CombinedLoss uses {name!r}")
        last = state["last"]
        if last is not None:
            if not (isinstance(last, (list, tuple)) and len(last) == 7 and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    for v in last)):
                raise ValueError(f"CombinedLoss extra state 'last' must be None or 7 finite "
                                 f"numbers (total, control, trajectory, terminal and the three "
                                 f"weights), got {last!r}")
            if min(last) < 0:
                raise ValueError(f"CombinedLoss extra state 'last' must be >= 0, got {last!r}")
        observed = state["observed"]
        if not isinstance(observed, bool):
            raise TypeError(f"CombinedLoss extra state 'observed' must be a bool, got {observed!r}")
        epoch = state["epoch"]
        if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, (int, float))):
            raise TypeError(f"CombinedLoss extra state 'epoch' must be None or a number, "
                            f"got {epoch!r}")
        strategy_state = state["strategy_state"]
        if not isinstance(strategy_state, dict):
            raise TypeError(f"CombinedLoss extra state 'strategy_state' must be a dict, got "
                            f"{type(strategy_state).__name__}")
        # the strategy validates its own state; load it into a probe first so a
        # refused state leaves this module's strategy untouched
        probe = _copy_strategy(self.strategy)
        probe.load_state_dict(strategy_state)
        self.strategy.load_state_dict(strategy_state)
        self._last = None if last is None else torch.tensor(
            [float(v) for v in last], dtype=_F64, device=self.weights.device)
        self._observed = observed if last is not None else True
        self.epoch = epoch


def _set(module: nn.Module, name: str, value) -> None:
    """``module.name = value`` for a plain attribute (never a parameter, buffer or
    submodule), without ``nn.Module.__setattr__``'s checks (~3 µs each, several
    per training step) in eager mode; Dynamo traces the ordinary assignment."""
    if torch.compiler.is_compiling():
        setattr(module, name, value)
    else:
        object.__setattr__(module, name, value)


def _fixed_tensor_weight(weight: Tensor, name: str) -> float:
    """A module's constant weight from a one-element tensor (checked like a number)."""
    if weight.requires_grad:
        raise ValueError(f"{name} is a tensor that requires grad, but CombinedLoss keeps its "
                         "weights in a buffer (set by its strategy) and gives them no gradient: "
                         "for a learned weight call trajloss.torch.combined_loss with the tensor")
    return _weight(float(weight), name)


def _copy_strategy(strategy: WeightingStrategy) -> WeightingStrategy:
    return copy.deepcopy(strategy)


def _needs_epoch(strategy: WeightingStrategy) -> bool:
    from .weighting import Curriculum
    return isinstance(strategy, Curriculum)
