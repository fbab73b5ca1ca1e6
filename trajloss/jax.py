"""JAX adapters over the trajloss C core.

Each function is a ``jax.custom_vjp`` whose forward pass calls the C core
through ``jax.pure_callback`` -- value and gradient in one pass -- and whose
backward pass scales that gradient, so it works under ``jax.jit`` and
``jax.grad``, in float32 and (with ``jax_enable_x64``) float64, and under
``jax.vmap`` (the callback runs once per mapped element:
``vmap_method="sequential"``). Gradients flow to the predicted controls and
``x0`` (and ``target`` of :func:`control_loss`); references, lengths, masks
and the system are data.

Signatures mirror the NumPy functions but return a scalar (the loss value)::

    loss = trajloss.jax.combined_loss(system, controls, x0, ref_controls, ref_states, weight=0.3)

Errors: shapes, dtypes and options are checked when a call is traced (the
core runs once on stand-ins of the traced shapes and dtypes), so they raise
the core's ``ValueError``/``TypeError`` naming the argument, under ``jit``
too. Values are only known when the callback runs: under a transformation a
NaN or an out-of-range ``lengths`` surfaces as the ``JaxRuntimeError`` that
carries the core's message. Without a transformation (all inputs concrete)
the core is called directly, and every error is the core's own.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from . import _core
from .rollout import _check_system

__all__ = ["combined_loss", "control_loss", "rollout", "terminal_loss", "trajectory_loss"]

_ALL_TERMS = _core.TERM_CONTROL | _core.TERM_TRAJECTORY | _core.TERM_TERMINAL


def _zero_cotangent(x):
    """The cotangent of an input we do not differentiate: zeros (float0 for ints/bools)."""
    if x is None:
        return None
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return np.zeros(x.shape, dtype=jax.dtypes.float0)


def _host(x):
    return None if x is None else np.asarray(x)


def _array(x, name, dtype=None):
    """``jnp.asarray`` whose failure names the argument (None is not an array)."""
    if x is None:
        raise TypeError(f"{name} must be an array, got None")
    try:
        return jnp.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be an array of numbers, got {type(x).__name__} "
                        f"({exc})") from None


def _is_traced(x):
    return isinstance(x, jax.core.Tracer)


def _stand_in(x, fill=0):
    """What the callback will see, as far as it is known when tracing: the
    value itself when concrete, else ``fill`` in the traced shape and dtype."""
    if x is None:
        return None
    if _is_traced(x):
        return np.full(x.shape, fill, dtype=x.dtype)
    return np.asarray(x)


def _struct(shape, dtype):
    return jax.ShapeDtypeStruct(tuple(shape), dtype)


# ---- rollout -----------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _rollout_fn(Ad_key, Bd_key):
    Ad, Bd = np.frombuffer(Ad_key[0]).reshape(Ad_key[1]), np.frombuffer(Bd_key[0]).reshape(Bd_key[1])

    def forward(x0, controls):
        shape = controls.shape[:-2] + (controls.shape[-2] + 1, x0.shape[-1])
        return jax.pure_callback(lambda a, b: _core.rollout(Ad, Bd, np.asarray(a), np.asarray(b)),
                                 _struct(shape, controls.dtype), x0, controls,
                                 vmap_method="sequential")

    @jax.custom_vjp
    def run(x0, controls):
        return forward(x0, controls)

    def fwd(x0, controls):
        return forward(x0, controls), (x0, controls)

    def bwd(res, g):
        x0, controls = res
        gu, gx = jax.pure_callback(
            lambda a, b, c: _core.rollout_vjp(Ad, Bd, np.asarray(a), np.asarray(b), np.asarray(c)),
            (_struct(controls.shape, controls.dtype), _struct(x0.shape, x0.dtype)),
            x0, controls, g, vmap_method="sequential")
        return gx, gu

    run.defvjp(fwd, bwd)
    return run


def _key(a):
    a = np.ascontiguousarray(a, dtype=np.float64)
    return (a.tobytes(), a.shape)


def rollout(system, x0, controls):
    """``trajloss.rollout`` for JAX arrays: (B, n), (B, T, m) -> (B, T+1, n), differentiable."""
    system = _check_system(system)
    x0, controls = _array(x0, "x0"), _array(controls, "controls")
    states = _core.rollout(system.Ad, system.Bd, _stand_in(x0), _stand_in(controls))
    if not (_is_traced(x0) or _is_traced(controls)):
        return jnp.asarray(states)  # nothing to differentiate: the core's result as is
    return _rollout_fn(_key(system.Ad), _key(system.Bd))(x0, controls)


# ---- losses ---------------------------------------------------------------------

def _loss(host_fn, diff, data, dtype, fills):
    """A scalar loss of the differentiable arrays ``diff`` given ``data``:
    ``host_fn(*diff, *data) -> (value, *grads)`` runs on the host.

    It runs once now, on the concrete inputs or stand-ins of the traced ones
    (``fills[i]`` for ``data[i]``: values every check accepts), so that mistakes
    in shapes, dtypes and options raise here; with no traced input its value
    is the result."""
    value, *_ = host_fn(*(_stand_in(d) for d in diff),
                        *(_stand_in(d, f) for d, f in zip(data, fills)))
    if not any(_is_traced(x) for x in (*diff, *data) if x is not None):
        return jnp.asarray(value, dtype=dtype)

    def forward(diff, data):
        shapes = (_struct((), dtype),) + tuple(_struct(d.shape, d.dtype) for d in diff)
        present = [d for d in data if d is not None]
        where = [d is not None for d in data]

        def call(*arrays):
            arrays = list(arrays)
            dvals = [np.asarray(a) for a in arrays[:len(diff)]]
            rest = iter(arrays[len(diff):])
            dats = [np.asarray(next(rest)) if w else None for w in where]
            value, *grads = host_fn(*dvals, *dats)
            return (np.asarray(value, dtype=dtype),) + tuple(
                np.asarray(g, dtype=d.dtype) for g, d in zip(grads, diff))

        return jax.pure_callback(call, shapes, *diff, *present, vmap_method="sequential")

    @jax.custom_vjp
    def run(diff, data):
        return forward(diff, data)[0]

    def fwd(diff, data):
        value, *grads = forward(diff, data)
        return value, (grads, data)

    def bwd(res, g):
        grads, data = res
        return tuple(g * gr for gr in grads), tuple(_zero_cotangent(d) for d in data)

    run.defvjp(fwd, bwd)
    return run(tuple(diff), tuple(data))


def _opt_array(x, name):
    return None if x is None else _array(x, name)


def control_loss(pred, target, *, discount=None, lengths=None, mask=None, penalty="mse",
                 delta=1.0, feature_weights=None):
    """``trajloss.control_loss`` as a differentiable JAX scalar (in pred and target)."""
    pred, target = _array(pred, "pred"), _array(target, "target")

    def host(p, t, L, M, fw):
        value, grad = _core.control_loss(p, t, discount, L, M, penalty, delta, fw, True, True)
        return value, grad, -grad  # rho(pred - target)

    steps = pred.shape[-2] if pred.ndim >= 2 else 0
    return _loss(host, (pred, target),
                 (_opt_array(lengths, "lengths"), _opt_array(mask, "mask"),
                  _opt_array(feature_weights, "feature_weights")), pred.dtype, (steps, True, 0))


def _rollout_loss(system, controls, x0, ref_controls, ref_states, target, terms, weights, *,
                  include_initial=False, discount=None, lengths=None, mask=None, penalty="mse",
                  delta=1.0, feature_weights=None, state_weights=None, target_name="target"):
    system = _check_system(system)
    controls, x0 = _array(controls, "controls"), _array(x0, "x0")
    cw, tw, fw_ = (float(w) for w in weights)

    def host(u, x, rc, rs, tg, L, M, fw, sw):
        total, _, _, _, gu, gx = _core.rollout_loss(
            system.Ad, system.Bd, u, x, rc, rs, tg, terms, cw, tw, fw_, bool(include_initial),
            discount, L, M, penalty, delta, fw, sw, True, target_name)
        return total, gu, gx

    data = (_opt_array(ref_controls, "ref_controls"), _opt_array(ref_states, "ref_states"),
            _opt_array(target, target_name), _opt_array(lengths, "lengths"),
            _opt_array(mask, "mask"), _opt_array(feature_weights, "feature_weights"),
            _opt_array(state_weights, "state_weights"))
    steps = controls.shape[-2] if controls.ndim >= 2 else 0
    return _loss(host, (controls, x0), data, controls.dtype, (0, 0, 0, steps, True, 0, 0))


def trajectory_loss(system, controls, x0, ref_states, *, include_initial=False,
                    state_weights=None, discount=None, lengths=None, mask=None, penalty="mse",
                    delta=1.0):
    """``trajloss.trajectory_loss`` as a differentiable JAX scalar (in controls and x0)."""
    _array(ref_states, "ref_states")  # required
    return _rollout_loss(system, controls, x0, None, ref_states, None, _core.TERM_TRAJECTORY,
                         (0.0, 1.0, 0.0), include_initial=include_initial, discount=discount,
                         lengths=lengths, mask=mask, penalty=penalty, delta=delta,
                         state_weights=state_weights)


def terminal_loss(system, controls, x0, target, *, lengths=None, mask=None, state_weights=None,
                  penalty="mse", delta=1.0):
    """``trajloss.terminal_loss`` as a differentiable JAX scalar (in controls and x0)."""
    _array(target, "target")  # required
    return _rollout_loss(system, controls, x0, None, None, target, _core.TERM_TERMINAL,
                         (0.0, 0.0, 1.0), lengths=lengths, mask=mask, penalty=penalty,
                         delta=delta, state_weights=state_weights)


def combined_loss(system, controls, x0, ref_controls, ref_states, *, weight, terminal_weight=0.0,
                  terminal_target=None, include_initial=False, state_weights=None,
                  feature_weights=None, discount=None, lengths=None, mask=None, penalty="mse",
                  delta=1.0):
    """``control + weight·trajectory + terminal_weight·terminal`` as a JAX scalar.

    ``weight`` and ``terminal_weight`` are Python numbers (static under
    ``jit``); pass a new number to change them (one trace per value). For a
    schedule, evaluate the ``trajloss.weighting`` strategy outside ``jit``.
    """
    for name, w in (("weight", weight), ("terminal_weight", terminal_weight)):
        if isinstance(w, bool) or not isinstance(w, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name} must be a finite number >= 0, got {w!r}")
        if not (np.isfinite(w) and w >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {w!r}")
    _array(ref_controls, "ref_controls"), _array(ref_states, "ref_states")  # required
    return _rollout_loss(system, controls, x0, ref_controls, ref_states, terminal_target,
                         _ALL_TERMS, (1.0, weight, terminal_weight),
                         include_initial=include_initial, discount=discount, lengths=lengths,
                         mask=mask, penalty=penalty, delta=delta, feature_weights=feature_weights,
                         state_weights=state_weights, target_name="terminal_target")
