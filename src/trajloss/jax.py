"""JAX adapters over the trajloss C core.

Each loss is a ``jax.custom_jvp`` whose rule calls the C core: one call gives
the value and the partial derivatives ``∂ℓ/∂a`` of every input ``a`` being
differentiated, and the tangent is ``Σ_a <∂ℓ/∂a, da>``, which JAX transposes
for reverse mode (so ``jax.grad`` costs one core call, and forward mode works
too). So ``jax.grad``, ``jax.jvp``, ``jax.jacfwd``/``jacrev``, ``jax.jit`` and
``jax.vmap`` all work, in float32 and (with ``jax_enable_x64``) float64.
:func:`rollout` is a ``jax.custom_vjp`` whose forward and backward passes are
the core's rollout and its adjoint (reverse mode; forward mode raises JAX's
``TypeError``).

How the core is called under a transformation (:data:`BACKEND`):

* ``"ffi"`` (the handlers are part of ``trajloss._core``, built by
  every install, and JAX has ``jax.ffi``): XLA custom calls into the C core,
  part of the compiled program -- no host callback, no Python, no copy of the
  operands. Under ``vmap`` all mapped elements go to one call
  (``vmap_method="broadcast_all"``), which runs them one after another.
  Inside ``shard_map`` each device runs the call on its shard. The calls run
  on CPU: a program on another backend takes the callbacks.
* ``"callback"``: ``jax.pure_callback`` into the NumPy API (the callback runs
  once per mapped element under ``vmap``), when the FFI cannot be used or
  ``TRAJLOSS_JAX_BACKEND=callback`` is set before import.

Both give the same numbers (the same core, the same kernels). Without a
transformation (all inputs concrete) the core is called directly.

Gradients (all exact, from the analytic adjoint; ρ is the penalty and r the
residual prediction − reference):

* the predicted controls (``pred``/``controls``) and ``x0``;
* every reference: ``target`` of :func:`control_loss`, ``ref_controls``,
  ``ref_states``, ``target``/``terminal_target``. Each enters only through a
  residual, so its gradient is minus the gradient with respect to the
  prediction it is compared with: ``−w[b,t]·s_d·ρ'(r)/(D·N)`` at every step the
  loss reads, exactly zero on padding and on steps no term reads;
* ``weight`` and ``terminal_weight`` of :func:`combined_loss` when given as
  JAX arrays: ``∂ℓ/∂weight`` is the raw trajectory term, ``∂ℓ/∂terminal_weight``
  the raw terminal term;
* ``feature_weights`` and ``state_weights``: the loss is linear in them, and
  ``∂ℓ/∂s_d`` is the loss with ``s = e_d`` (one host call per feature).

Second derivatives (``jax.hessian``, grad of grad) raise ``NotImplementedError``
(never zeros). ``discount``, ``delta``, ``penalty``, ``include_initial`` and
``check_finite`` are static options (Python values); a traced ``discount`` or
``delta`` raises ``TypeError``. ``lengths`` and ``mask`` are integer/bool data.

Signatures mirror the NumPy functions but return a scalar (the loss value)::

    loss = trajloss.jax.combined_loss(system, controls, x0, ref_controls, ref_states, weight=0.3)

Errors: shapes, dtypes and options are checked when a call is traced (the
core runs once on stand-ins of the traced shapes and dtypes), so they raise
the core's ``ValueError``/``TypeError`` naming the argument, under ``jit``
too. Values are only known when the compiled program runs: under a
transformation a NaN, an out-of-range ``lengths``, a negative traced weight or
feature/state weight, or a batch with no valid step surfaces as the
``JaxRuntimeError`` that carries the NumPy API's message. Without a
transformation (all inputs concrete) the core is called directly, and every
error is its own. Under a transformation the warning the NumPy API gives when
finite inputs overflow the result's dtype is not given (the result holds the
inf).

Placement: inputs sharded over several devices (``NamedSharding``) work with
and without ``jit``. Without a transformation the inputs are read once on the
host and the results are placed like them: the loss replicated over their
devices, a rollout sharded along the batch axis like ``controls``, each
gradient sharded like its input. Under a
transformation the core call runs under ``shard_map`` with every operand
replicated, so every device of the mesh computes the same whole result (the
work is repeated once per device) and the results are arrays of the
mesh; with explicit sharding types, gradients keep the sharding of their
inputs and a rollout is sharded along the batch axis like ``controls``.
Inside ``jax.shard_map`` the core runs on every device with that device's
shard (each device's loss is the loss of its own shard), and the gradient of
an input replicated over the shards is the sum over the shards. Other
shardings over several devices raise ``ValueError``.

Systems: every form of :mod:`trajloss.systems` -- one ``LinearSystem``
shared by the batch, one system per sample (``Ad`` (B, n, n), ``Bd``
(B, n, m), an ``offset``), a ``TimeVaryingSystem`` ((T, n, n) or
(B, T, n, n)), a batched ``LinearSystem.from_continuous`` -- with the values
and gradients of the NumPy API. A per-sample system's B must be the data's B,
a time-varying system's T the controls' T: ``ValueError`` naming ``system``
when the call is traced. Inside ``jax.shard_map`` each device sees its shard
of the batch, so a per-sample system must be that of the shard. The system's
arrays are data (no gradient).

Caches: none of the module's own. The system's arrays (also a per-sample
system's B·n·n numbers) and the options are call operands, never part of a
call's identity: the FFI calls' parameters are their target and result
shapes, and the host callbacks are small immutable objects that compare
equal whenever the static options and the shapes of the system's arrays are
equal, so JAX compiles each once per option set and shape, whatever the
system's values or the weights. An FFI call reads the number of threads the
core uses (:func:`trajloss.set_num_threads`) when it is traced.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import operator
import os
import warnings
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from . import _core, _kinds
from .rollout import _check_system

__all__ = ["BACKEND", "combined_loss", "control_loss", "rollout", "terminal_loss",
           "trajectory_loss"]

_CONTROL, _TRAJECTORY, _TERMINAL = _kinds.CONTROL, _kinds.TRAJECTORY, _kinds.TERMINAL

_SECOND_ORDER = ("trajloss.jax computes first derivatives only: second derivatives "
                 "(jax.hessian, a gradient of a gradient, forward over reverse) of {what} "
                 "are not supported")


# ---- argument handling ------------------------------------------------------------

def _is_traced(x):
    return isinstance(x, jax.core.Tracer)


def _array(x, name):
    """``jnp.asarray`` whose failure names the argument (None is not an array)."""
    if x is None:
        raise TypeError(f"{name} must be an array, got None")
    if _is_traced(x):
        return x
    try:
        return jnp.asarray(x)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"{name} must be an array of numbers, got {type(x).__name__} "
                        f"({exc})") from None


def _opt_array(x, name):
    return None if x is None else _array(x, name)


def _number(value, name, *, optional=False):
    """A static Python option (``discount``, ``delta``): a real number, not traced."""
    if value is None and optional:
        return None
    if _is_traced(value):
        raise TypeError(f"{name} must be a Python number (a static option), got a traced "
                        f"array; it cannot be differentiated or vary under jit/vmap")
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if isinstance(value, (jax.Array, np.ndarray)) and np.ndim(value) == 0:
        value = value.item()
    if not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{name} must be a finite number, got {value!r}, which is too "
                         f"large for a float") from None


def _weight(value, name):
    """``weight``/``terminal_weight``: a finite number >= 0, or a 0-d JAX float array
    (traced or not) to differentiate; concrete values are checked here."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a finite number >= 0 or a 0-d float array, "
                        f"got {value!r}")
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
        value = value.item()  # a NumPy 0-d array is a number
    if isinstance(value, (jax.Array, np.ndarray)) or _is_traced(value):
        if np.ndim(value) != 0 or not jnp.issubdtype(value.dtype, jnp.floating):
            raise TypeError(f"{name} must be a finite number >= 0 or a 0-d float array, got "
                            f"an array of shape {tuple(np.shape(value))} and dtype "
                            f"{value.dtype}")
        if not _is_traced(value):
            _check_weight(float(value), name)
        return jnp.asarray(value)
    if not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a finite number >= 0 or a 0-d float array, "
                        f"got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        raise ValueError(f"{name} must be a finite number >= 0 (at most "
                         f"{np.finfo(np.float64).max:.6g}), got {value!r}, which is too "
                         f"large for a float") from None
    _check_weight(number, name)
    return number


def _check_weight(number, name):
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {number!r}")


def _bits(a):
    """A float64 constant as uint32 words: an operand JAX passes through bit-exact,
    with or without ``jax_enable_x64``."""
    a = np.ascontiguousarray(a, dtype=np.float64)
    return a.reshape(-1).view(np.uint32).reshape(a.shape[:-1] + (2 * a.shape[-1],)) \
        if a.ndim else a.reshape(1).view(np.uint32)


def _unbits(w, shape):
    return np.ascontiguousarray(w).view(np.float64).reshape(shape)


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


def _zeros(shape, dtype):
    return np.zeros(shape, dtype=dtype if jnp.issubdtype(dtype, jnp.inexact)
                    else jax.dtypes.float0)


# ---- placement of eager results -------------------------------------------------------

def _sharding(x):
    """The sharding of a concrete multi-device input, else None."""
    if isinstance(x, jax.Array) and not _is_traced(x):
        sharding = x.sharding
        if len(sharding.device_set) > 1:
            return sharding
    return None


def _place(value, like, *, batch_like=None):
    """A host result as a JAX array placed like the inputs ``like``: on their
    devices, replicated (a loss) or, for ``batch_like`` (an input whose leading
    axis is the batch), sharded along the leading axis like it."""
    out = jnp.asarray(value)
    shardings = [s for s in map(_sharding, like) if s is not None]
    if not shardings:
        return out
    sharding = shardings[0]
    if not isinstance(sharding, jax.sharding.NamedSharding):
        devices = sorted(sharding.device_set, key=operator.attrgetter("id"))
        raise ValueError(f"trajloss.jax: inputs sharded with {type(sharding).__name__} over "
                         f"{len(devices)} devices are not supported; use a NamedSharding "
                         f"(jax.sharding.NamedSharding) or gather the inputs on one device")
    spec = jax.sharding.PartitionSpec()
    if batch_like is not None and out.ndim == batch_like.ndim and out.ndim >= 1:
        lead = _sharding(batch_like)
        if isinstance(lead, jax.sharding.NamedSharding) and lead.mesh == sharding.mesh \
                and len(lead.spec) >= 1:
            spec = jax.sharding.PartitionSpec(lead.spec[0])
    return jax.device_put(out, jax.sharding.NamedSharding(sharding.mesh, spec))


# ---- host calls ------------------------------------------------------------------------

def _multi_device_mesh(operands):
    """The mesh of the operands when it spans several devices along axes that
    are not manual (sharded inputs, under jit or not), else None."""
    for x in operands:
        if _is_traced(x):
            mesh = getattr(jax.typeof(x).sharding, "mesh", None)
        elif isinstance(x, jax.Array) and len(x.sharding.device_set) > 1:
            mesh = getattr(x.sharding, "mesh", None)
            if mesh is None:
                raise ValueError(f"trajloss.jax: an input is sharded with "
                                 f"{type(x.sharding).__name__} over {len(x.sharding.device_set)} "
                                 f"devices; only NamedSharding (or one device) is supported")
        else:
            continue
        if mesh is not None and not mesh.empty and math.prod(mesh.shape.values()) > 1 \
                and not mesh.manual_axes:
            return mesh
    return None


def _like(g, x):
    """``g`` (a gradient computed replicated) placed like the input ``x``: with
    the sharding of a concrete multi-device ``x``, or with the explicit
    sharding type of a traced one (which JAX requires of a cotangent)."""
    if x is None:
        return g
    if not _is_traced(x):
        sharding = _sharding(x)
        if isinstance(sharding, jax.sharding.NamedSharding) and g.shape == x.shape:
            return jax.device_put(g, sharding)
        return g
    sharding = jax.typeof(x).sharding
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or mesh.empty or not mesh.explicit_axes or mesh.manual_axes:
        return g
    return jax.sharding.reshard(g, sharding)


def _vma(x):
    """The manual mesh axes a traced value varies over (inside ``shard_map``)."""
    if not _is_traced(x):
        return frozenset()
    kind = getattr(jax.typeof(x), "manual_axis_type", None)
    return frozenset(getattr(kind, "varying", ()) or ())


def _manual_vma(operands):
    return frozenset().union(*(_vma(x) for x in operands if x is not None))


def _align_vma(*operands):
    """Inside ``shard_map``: every operand typed as varying over all the manual
    axes any of them varies over (JAX's ``pcast``, whose transpose sums the
    cotangent of a replicated input over the devices), so the callback's results
    can be typed likewise. Outside ``shard_map`` the operands unchanged."""
    vma = _manual_vma(operands)
    if not vma:
        return operands
    return tuple(None if x is None else
                 jax.lax.pcast(x, tuple(sorted(vma - _vma(x))), to="varying")
                 if vma - _vma(x) else x for x in operands)


def _vary_like(outs, operands):
    """The callback's results differ from device to device as its operands do."""
    vma = _manual_vma(operands)
    if not vma:
        return outs
    return jax.tree_util.tree_map(
        lambda o: jax.lax.pcast(o, tuple(sorted(vma - _vma(o))), to="varying")
        if vma - _vma(o) else o, outs)


def _host_call(fn, structs, *operands):
    """``jax.pure_callback(fn, structs, *operands)`` placed for the caller's mesh
    (:func:`_on_mesh`)."""
    return _on_mesh(lambda *ops: jax.pure_callback(fn, structs, *ops, vmap_method="sequential"),
                    structs, operands)


def _on_mesh(run, structs, operands):
    """``run(*operands)`` (a host callback or an FFI call, with results
    ``structs``) placed for the caller's mesh.

    Over a multi-device mesh (jit of sharded inputs) a plain call runs on
    one device and its results keep a single-device sharding that the next
    computation on the mesh cannot use. The call runs instead under
    ``shard_map`` with every operand replicated: each device evaluates the whole
    (same) result, which is then replicated over the mesh like any array."""
    mesh = _multi_device_mesh(operands)
    if mesh is None:
        return _vary_like(run(*operands), operands)
    P = jax.sharding.PartitionSpec
    if mesh.explicit_axes:  # explicit sharding types: replicate the operands first
        replicated = jax.sharding.NamedSharding(mesh, P())
        operands = [jax.sharding.reshard(x, replicated) if isinstance(x, jax.Array) else x
                    for x in operands]
    sm = jax.shard_map(run, mesh=mesh, in_specs=tuple(P() for _ in operands),
                       out_specs=jax.tree_util.tree_map(lambda _: P(), structs), check_vma=False)
    return sm(*operands)


# ---- the XLA FFI path ------------------------------------------------------------------
#
# Under a transformation the core runs as XLA custom calls (src/trajloss/xla_ffi.c)
# inside the compiled program: no host callback, no copy of the operands to NumPy, no
# Python on the way. Four calls: the rollout loss, the control loss, the rollout and its
# adjoint. Each takes an ``opts`` operand (float64 options as uint32 words, _ffi_opts),
# then its arrays; absent optional arrays are left out and opts' flags say which are
# there. Trajectory arrays are batched: an unbatched call gets a batch axis of 1 here.

# opts: slots and flag bits (the O_* and F_* of src/trajloss/xla_ffi.c)
_O_COUNT = 7
_F = dict(offset=1, time_varying=2, ref_controls=4, ref_states=8, target=16, lengths=32,
          mask=64, feature_weights=128, state_weights=256, want_grad=512,
          include_initial=1024, check_finite=2048, discount=4096, terminal_target=8192)
_PENALTIES = {"mse": 0, "l1": 1, "huber": 2}


def _ffi_module():
    """``trajloss._core`` (whose ``xla_ffi_targets()`` are the handlers) when JAX
    has ``jax.ffi``, else the reason the FFI path cannot be used (a string)."""
    if os.environ.get("TRAJLOSS_JAX_BACKEND", "").strip().lower() == "callback":
        return "TRAJLOSS_JAX_BACKEND=callback"
    ffi = getattr(jax, "ffi", None)
    if ffi is None or not hasattr(ffi, "ffi_call") or not hasattr(ffi, "register_ffi_target"):
        return f"jax {jax.__version__} has no jax.ffi.ffi_call"
    if getattr(_core, "XLA_FFI_OPTIONS", None) != _O_COUNT:
        return "trajloss._core's XLA FFI handlers do not match trajloss/jax.py (rebuild it)"
    return _core


_JAXFFI = _ffi_module()

#: The path that runs the core under ``jit``/``vmap``/``grad``/``shard_map``:
#: ``"ffi"`` (XLA custom calls into the C core, in the compiled program) or
#: ``"callback"`` (``jax.pure_callback`` into the NumPy API). ``"ffi"`` whenever
#: JAX has ``jax.ffi`` (the handlers are part of ``trajloss._core``), unless the
#: environment variable ``TRAJLOSS_JAX_BACKEND=callback`` asks for the callbacks;
#: the FFI calls run on CPU, so a program on another backend uses the callbacks.
#: If XLA refuses the handlers when they are first registered, a RuntimeWarning
#: says why and this becomes ``"callback"``.
BACKEND = "callback" if isinstance(_JAXFFI, str) else "ffi"
_registered = False


def _use_ffi():
    """Whether this trace uses the FFI calls: registers them with XLA the first
    time (not at import: registering starts JAX's CPU backend, which a program
    may still be configuring when it imports trajloss.jax)."""
    global BACKEND, _registered
    if BACKEND != "ffi" or jax.default_backend() != "cpu":
        return False
    if not _registered:
        try:
            jax.devices("cpu")  # a refusal then raises here, not inside the backend's start
            for name, capsule in _JAXFFI.xla_ffi_targets().items():
                jax.ffi.register_ffi_target(name, capsule, platform="cpu")
        except Exception as exc:  # an XLA that refuses the handlers: keep working
            BACKEND = "callback"
            warnings.warn(f"trajloss.jax: XLA refused the FFI handlers ({exc}); using "
                          f"jax.pure_callback instead", RuntimeWarning, stacklevel=3)
            return False
        _registered = True
    return True


def _ffi_opts(flags, *, terms=0, control_weight=0.0, discount=None, penalty="mse", delta=1.0):
    """The ``opts`` operand: float64 options as uint32 words (bit-exact with or
    without x64). ``flags``: names of _F that are set."""
    bits = sum(_F[f] for f in flags) | (_F["discount"] if discount is not None else 0)
    opts = np.array([bits, terms, control_weight, 1.0 if discount is None else discount,
                     _PENALTIES[penalty], delta, _core.get_num_threads()], dtype=np.float64)
    return _bits(opts)


def _ffi(target, structs, operands):
    """One FFI call of ``target``. vmap_method "broadcast_all": under ``vmap`` every
    operand gets the mapped axes and the handler runs one call per index, in one
    custom call (not one per index, as "sequential" would)."""
    call = jax.ffi.ffi_call(target, structs, vmap_method="broadcast_all")
    return _on_mesh(call, structs, operands)


def _batched(x, core_ndim):
    """``x`` with a batch axis of 1 when it has only its ``core_ndim`` axes."""
    return None if x is None else (x[None] if x.ndim == core_ndim else x)


def _selection_operands(lengths, mask):
    """lengths as int32 or int64 (what the handler reads), mask as bool."""
    if lengths is not None and lengths.dtype not in (jnp.int32, jnp.int64):
        wide = jnp.int64 if jax.config.jax_enable_x64 and lengths.dtype.itemsize >= 4 \
            else jnp.int32
        lengths = lengths.astype(wide)
    if mask is not None and mask.dtype != jnp.bool_:
        mask = mask != 0
    return lengths, mask


def _weights_operand(w):
    """A weight, feature or state weights: float64 words (a constant, _bits),
    float32 and float64 stay; other dtypes become float32."""
    if w is None or w.dtype in (jnp.uint32, jnp.float32, jnp.float64):
        return w
    return w.astype(jnp.float32)


def _ffi_rollout_loss(spec, words, u, x0, *, rc=None, rs=None, tg=None, lengths=None,
                      mask=None, wt, we, fw=None, sw=None, terms, control_weight, grad):
    """The core's rollout loss on batched operands: ``(values, [gu, gx0])`` with
    values = (total, control, trajectory, terminal)."""
    flags = [name for name, x in (("offset", len(words) == 3), ("ref_controls", rc is not None),
                                  ("ref_states", rs is not None), ("target", tg is not None),
                                  ("lengths", lengths is not None), ("mask", mask is not None),
                                  ("feature_weights", fw is not None),
                                  ("state_weights", sw is not None), ("want_grad", grad),
                                  ("time_varying", spec.time_varying),
                                  ("include_initial", spec.include_initial),
                                  ("check_finite", spec.check_finite),
                                  ("terminal_target", spec.target_name == "terminal_target"))
             if x]
    opts = _ffi_opts(flags, terms=terms, control_weight=control_weight, discount=spec.discount,
                     penalty=spec.penalty, delta=spec.delta)
    operands = [opts, *words, u, x0] + [x for x in (rc, rs, tg, lengths, mask) if x is not None] \
        + [wt, we] + [x for x in (fw, sw) if x is not None]
    structs = (_struct((4,), u.dtype),) + \
        ((_struct(u.shape, u.dtype), _struct(x0.shape, u.dtype)) if grad else ())
    return _ffi("trajloss_rollout_loss", structs, operands)


def _ffi_rollout(words, x0, u, *, time_varying, check_finite):
    """The states (B, T+1, n) of x0 (B, n) and u (B, T, m); unbatched (n,), (T, m) too."""
    flags = [f for f, x in (("offset", len(words) == 3), ("time_varying", time_varying),
                            ("check_finite", check_finite)) if x]
    xb, ub = _batched(x0, 1), _batched(u, 2)
    states = _struct(ub.shape[:-2] + (ub.shape[-2] + 1, xb.shape[-1]), ub.dtype)
    out, = _ffi("trajloss_rollout", (states,), [_ffi_opts(flags), *words, xb, ub])
    return out if u.ndim == 3 else out[0]


def _ffi_rollout_vjp(words, x0, u, g, *, time_varying):
    """The rollout's adjoint: (∂/∂u, ∂/∂x0) of <g, states>."""
    flags = [f for f, x in (("offset", len(words) == 3), ("time_varying", time_varying)) if x]
    gb, ub, xb = _batched(g, 2), _batched(u, 2), _batched(x0, 1)
    structs = (_struct(ub.shape, ub.dtype), _struct(xb.shape, xb.dtype))
    gu, gx = _ffi("trajloss_rollout_vjp", structs, [_ffi_opts(flags), *words, gb])
    return (gu, gx) if u.ndim == 3 else (gu[0], gx[0])


def _ffi_loss(spec, a):
    """What ``spec(*operands)`` (a :class:`_Loss`) returns, by FFI calls: the value and
    ``∂ℓ/∂a`` for every name in ``spec.want``, composed as the host loss composes its
    core calls (a reference's gradient from the prediction it is compared with, the
    state terms' gradients through the identity system, a feature/state weight's
    from the loss at a unit vector)."""
    grads = (_ffi_control if spec.kind == "control" else _ffi_rollout_grads)(spec, dict(a))
    value = grads.pop("value").astype(spec.value_dtype)
    return (value,) + tuple(jnp.reshape(grads[k], a[k].shape).astype(a[k].dtype)
                            for k in spec.want)


def _ffi_control(spec, a):
    p, t = _batched(a["pred"], 2), _batched(a["target"], 2)
    lengths, mask = _selection_operands(_batched(a.get("lengths"), 0), _batched(a.get("mask"), 1))
    fw = _weights_operand(a.get("feature_weights"))
    want = set(spec.want)

    def core(f, grad):
        flags = [name for name, x in (("lengths", lengths is not None), ("mask", mask is not None),
                                      ("feature_weights", f is not None), ("want_grad", grad),
                                      ("check_finite", spec.check_finite)) if x]
        opts = _ffi_opts(flags, discount=spec.discount, penalty=spec.penalty, delta=spec.delta)
        operands = [opts, p, t] + [x for x in (lengths, mask, f) if x is not None]
        structs = (_struct((1,), p.dtype),) + ((_struct(p.shape, p.dtype),) if grad else ())
        return _ffi("trajloss_control_loss", structs, operands)

    out = core(fw, bool(want & {"pred", "target"}))
    res = {"value": out[0][0]}
    if len(out) > 1:
        res["pred"], res["target"] = out[1], -out[1]
    if "feature_weights" in want:  # ℓ is linear in f: ∂ℓ/∂f_d = ℓ(f = e_d)
        res["feature_weights"] = jnp.stack([core(_bits(e), False)[0][0]
                                            for e in np.eye(fw.shape[-1])])
    return res


def _ffi_rollout_grads(spec, a):
    words = [a["Ad"], a["Bd"]] + ([a["offset"]] if "offset" in a else [])
    u, x0 = _batched(a["controls"], 2), _batched(a["x0"], 1)
    rc, rs, tg = _batched(a.get("ref_controls"), 2), _batched(a.get("ref_states"), 2), \
        _batched(a.get("target"), 1)
    lengths, mask = _selection_operands(_batched(a.get("lengths"), 0), _batched(a.get("mask"), 1))
    wt, we = _weights_operand(a["weight"]), _weights_operand(a["terminal_weight"])
    fw, sw = _weights_operand(a.get("feature_weights")), _weights_operand(a.get("state_weights"))
    sel = dict(lengths=lengths, mask=mask)
    want = set(spec.want)
    values, *g = _ffi_rollout_loss(spec, words, u, x0, rc=rc, rs=rs, tg=tg, **sel, wt=wt, we=we,
                                   fw=fw, sw=sw, terms=spec.terms,
                                   control_weight=spec.control_weight,
                                   grad=bool(want & {"controls", "x0"}))
    out = {"value": values[0], "weight": values[2], "terminal_weight": values[3]}
    if g:
        out["controls"], out["x0"] = g
    ctl = spec.terms & _CONTROL
    zero = _bits(np.float64(0.0))

    def control_term(f, grad):  # the control term alone: it reads rc through u − rc
        return _ffi_rollout_loss(spec, words, u, x0, rc=rc, **sel, wt=zero, we=zero, fw=f,
                                 terms=ctl, control_weight=spec.control_weight, grad=grad)

    if "ref_controls" in want:
        out["ref_controls"] = -control_term(fw, True)[1]
    if "feature_weights" in want:  # linear in f: ∂ℓ/∂f_d = ℓ(f = e_d)
        out["feature_weights"] = jnp.stack([control_term(_bits(e), False)[0][0]
                                            for e in np.eye(fw.shape[-1])])
    if want & {"ref_states", "target", "state_weights"}:
        out.update(_ffi_state_grads(spec, words, u, x0, rs, tg, sel, wt, we, sw, want))
    return out


def _ffi_state_grads(spec, words, u, x0, rs, tg, sel, wt, we, sw, want):
    """As :meth:`_Loss._state_grads`: the state terms through the identity system
    (Ad = 0, Bd = I, the states X as controls), whose ``∂ℓ/∂controls`` is
    ``∂ℓ/∂X[1:]`` and ``∂ℓ/∂x0`` is ``∂ℓ/∂X[0]``, every index rule the core's own."""
    X = _ffi_rollout(words, x0, u, time_varying=spec.time_varying,
                     check_finite=spec.check_finite)
    n = X.shape[-1]
    identity = [_bits(np.zeros((n, n))), _bits(np.eye(n))]
    plain = dataclasses.replace(spec, time_varying=False)
    states = spec.terms & (_TRAJECTORY | _TERMINAL)

    def d_states(terms, s=sw, grad=True):  # (value, ∂ℓ/∂X) of the state terms ``terms``
        values, *g = _ffi_rollout_loss(plain, identity, X[:, 1:], X[:, 0], rs=rs, tg=tg, **sel,
                                       wt=wt, we=we, sw=s, terms=terms, control_weight=0.0,
                                       grad=grad)
        return values[0], (jnp.concatenate([g[1][:, None], g[0]], axis=1) if grad else None)

    out = {}
    if "ref_states" in want:  # the trajectory term, and the terminal term too when
        # its target defaults to ref_states[b, t_b + 1]
        out["ref_states"] = -d_states(states if tg is None else states & _TRAJECTORY)[1]
    if "target" in want:
        out["target"] = -d_states(states & _TERMINAL)[1].sum(axis=1)
    if "state_weights" in want:  # linear in s: ∂ℓ/∂s_d = ℓ(s = e_d)
        out["state_weights"] = jnp.stack([d_states(states, _bits(e), False)[0]
                                          for e in np.eye(n)])
    return out


# ---- rollout --------------------------------------------------------------------------

def _system_operands(system):
    """A system's arrays as call operands -- float64 as uint32 words (``_bits``,
    views, no copy) -- and what a callback needs to rebuild ``system._core``
    from them: the arrays' shapes and the time-varying flag. The arrays are
    operands, never part of a callback's identity, so no compiled callback or
    cache grows with the number of systems or their size."""
    Ad, Bd, offset, time_varying = system._core
    arrays = (Ad, Bd) if offset is None else (Ad, Bd, offset)
    return tuple(map(_bits, arrays)), (tuple(a.shape for a in arrays), bool(time_varying))


def _system_tuple(words, form):
    """``system._core`` from :func:`_system_operands`'s words and form."""
    shapes, time_varying = form
    arrays = [_unbits(w, shape) for w, shape in zip(words, shapes)]
    return (arrays[0], arrays[1], arrays[2] if len(arrays) > 2 else None, time_varying)


@dataclasses.dataclass(frozen=True)
class _Rollout:
    """Host rollout (``adjoint=False``: ``(*system words, x0, u) -> states``) or
    its adjoint (``(*system words, x0, u, g) -> (gu, gx0)``). Equal options and
    system shapes give equal objects, so JAX reuses one compiled callback for
    every system of a form."""
    form: tuple                         # (array shapes, time_varying): _system_operands
    check_finite: bool
    adjoint: bool = False

    def __call__(self, *operands):
        k = len(self.form[0])
        system = _system_tuple(operands[:k], self.form)
        arrays = [np.asarray(a) for a in operands[k:]]
        if self.adjoint:
            return _core.rollout_vjp(system, *arrays, check_finite=self.check_finite)
        return _core.rollout(system, *arrays, check_finite=self.check_finite)


def _states_struct(x0, u):
    return _struct(u.shape[:-2] + (u.shape[-2] + 1, x0.shape[-1]), u.dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _rollout_vjp_call(spec, words, x0, u, g):
    if _use_ffi():
        return _ffi_rollout_vjp(words, x0, u, g, time_varying=spec.form[1])
    return _host_call(spec, (_struct(u.shape, u.dtype), _struct(x0.shape, x0.dtype)),
                      *words, x0, u, g)


@_rollout_vjp_call.defjvp
def _rollout_vjp_jvp(spec, primals, tangents):
    raise NotImplementedError(_SECOND_ORDER.format(what="trajloss.jax.rollout"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _rollout_call(spec, words, x0, u):
    if _use_ffi():
        return _ffi_rollout(words, x0, u, time_varying=spec.form[1],
                            check_finite=spec.check_finite)
    return _host_call(spec, _states_struct(x0, u), *words, x0, u)


def _rollout_fwd(spec, words, x0, u):
    return _rollout_call(spec, words, x0, u), (words, x0, u)


def _rollout_bwd(spec, res, g):
    words, x0, u = res
    # the adjoint of finite cotangents needs no finiteness check
    adjoint = dataclasses.replace(spec, adjoint=True, check_finite=False)
    gu, gx = _rollout_vjp_call(adjoint, words, x0, u, g)
    return tuple(_zeros(w.shape, w.dtype) for w in words), _like(gx, x0), _like(gu, u)


_rollout_call.defvjp(_rollout_fwd, _rollout_bwd)


def rollout(system, x0, controls, *, check_finite=True):
    """``trajloss.rollout`` for JAX arrays: (B, n), (B, T, m) -> (B, T+1, n).

    Every system form: shared or per-sample (its B must be the data's),
    time-invariant or time-varying (its T must be the controls'), with or
    without an offset. Differentiable in ``x0`` and ``controls`` in reverse
    mode (``jax.grad``, ``jax.vjp``, ``jax.jacrev``: the adjoint pass of the
    core). Forward mode (``jax.jvp``, ``jax.jacfwd``) raises JAX's
    ``TypeError`` "can't apply forward-mode autodiff (jvp) to a custom_vjp
    function". ``check_finite`` as in :func:`trajloss.rollout`.
    """
    system = _check_system(system)
    x0, controls = _array(x0, "x0"), _array(controls, "controls")
    check_finite = _check_finite_flag(check_finite)
    states = _core.rollout(system._core, _stand_in(x0), _stand_in(controls),
                           check_finite=check_finite)
    if not (_is_traced(x0) or _is_traced(controls)):
        return _place(states, (controls, x0), batch_like=controls)
    words, form = _system_operands(system)
    x0, controls = _align_vma(x0, controls)  # inside shard_map
    states = _rollout_call(_Rollout(form, check_finite), words, x0, controls)
    return _batch_like(states, controls)


def _batch_like(states, controls):
    """Under explicit sharding types: the states sharded along the batch axis
    like ``controls`` (replicated along the others)."""
    sharding = jax.typeof(controls).sharding
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or mesh.empty or not mesh.explicit_axes or mesh.manual_axes \
            or controls.ndim < 3 or not len(sharding.spec):
        return states
    spec = jax.sharding.PartitionSpec(sharding.spec[0])
    return jax.sharding.reshard(states, jax.sharding.NamedSharding(mesh, spec))


# ---- losses -------------------------------------------------------------------------------



@dataclasses.dataclass(frozen=True)
class _Loss:
    """A host loss: called with the operands ``names`` (float64 constants as bits),
    returns ``(value, *[∂ℓ/∂a for a in want])``. Immutable and compared by value,
    so JAX compiles one callback per option set and shape."""
    kind: str
    names: tuple
    want: tuple
    value_dtype: str
    shapes: tuple = ()            # float64 shape of each name in ``bits``
    bits: tuple = ()
    time_varying: bool = False    # the system's (its arrays are the operands Ad, Bd, offset)
    terms: int = 0
    control_weight: float = 0.0
    include_initial: bool = False
    discount: Optional[float] = None
    penalty: str = "mse"
    delta: float = 1.0
    check_finite: bool = True
    target_name: str = "target"

    def __call__(self, *arrays):
        a = {k: np.asarray(v) for k, v in zip(self.names, arrays)}
        for k, shape in zip(self.bits, self.shapes):
            a[k] = _unbits(a[k], shape)
        grads = (self._control if self.kind == "control" else self._rollout)(a)
        value = np.asarray(grads.pop("value"), dtype=self.value_dtype)
        return (value,) + tuple(np.asarray(grads[k], dtype=a[k].dtype) for k in self.want)

    # -- control_loss: ℓ(pred − target)
    def _control(self, a):
        p, t, fw = a["pred"], a["target"], a.get("feature_weights")

        def core(f, grad):
            return _core.control_loss(p, t, discount=self.discount, lengths=a.get("lengths"),
                                      mask=a.get("mask"), penalty=self.penalty, delta=self.delta,
                                      feature_weights=f, check_finite=self.check_finite,
                                      want_grad=grad)

        value, g = core(fw, True)
        out = {"value": value, "pred": g, "target": -g}
        if "feature_weights" in self.want:  # ℓ is linear in f: ∂ℓ/∂f_d = ℓ(f = e_d)
            out["feature_weights"] = [core(e, False) for e in np.eye(fw.shape[-1])]
        return out

    # -- rollout losses
    def _rollout(self, a):
        system = (a["Ad"], a["Bd"], a.get("offset"), self.time_varying)
        u, x0 = a["controls"], a["x0"]
        rc, rs, tg = a.get("ref_controls"), a.get("ref_states"), a.get("target")
        fw, sw = a.get("feature_weights"), a.get("state_weights")
        wt, we = float(a["weight"]), float(a["terminal_weight"])
        for name, w in (("weight", wt), ("terminal_weight", we)):
            _check_weight(w, name)  # a traced weight is only known here

        def core(sys_, u_, x_, rc_, rs_, tg_, terms, cw, tw, tew, f, s):
            return _core.rollout_loss(
                sys_, u_, x_, rc_, rs_, tg_, terms=terms, control_weight=cw,
                trajectory_weight=tw, terminal_weight=tew, include_initial=self.include_initial,
                discount=self.discount, lengths=a.get("lengths"), mask=a.get("mask"),
                penalty=self.penalty, delta=self.delta, feature_weights=f, state_weights=s,
                check_finite=self.check_finite, target_name=self.target_name)

        total, c, tr, te, gu, gx = core(system, u, x0, rc, rs, tg, self.terms,
                                        self.control_weight, wt, we, fw, sw)
        out = {"value": total, "controls": gu, "x0": gx, "weight": tr, "terminal_weight": te}
        want = set(self.want)
        ctl = self.terms & _CONTROL
        if want & {"ref_controls", "feature_weights"}:
            # the control term reads ref_controls only through u − ref_controls
            out["ref_controls"] = -core(system, u, x0, rc, None, None, ctl,
                                        self.control_weight, 0.0, 0.0, fw, None)[4]
            if "feature_weights" in want:  # linear in f: ∂ℓ/∂f_d = ℓ(f = e_d)
                out["feature_weights"] = [
                    core(system, u, x0, rc, None, None, ctl, self.control_weight, 0.0, 0.0,
                         e, None)[0] for e in np.eye(fw.shape[-1])]
        if want & {"ref_states", "target", "state_weights"}:
            out.update(self._state_grads(a, system, core, wt, we, want))
        return out

    def _state_grads(self, a, system, core, wt, we, want):
        """Gradients of the state terms with respect to the states they compare:
        with the identity system (Ad = 0, Bd = I, the states X as controls) the
        core's ``∂ℓ/∂controls`` is ``∂ℓ/∂X[1:]`` and its ``∂ℓ/∂x0`` is ``∂ℓ/∂X[0]``,
        with every index rule (include_initial, lengths, mask, final valid step,
        discount) the core's own. A reference r enters only through X − r. The
        states X come from ``system``, whatever its form."""
        X = _core.rollout(system, a["x0"], a["controls"], check_finite=self.check_finite)
        n = X.shape[-1]
        identity = (np.zeros((n, n)), np.eye(n), None, False)
        rs, tg, sw = a.get("ref_states"), a.get("target"), a.get("state_weights")
        states = self.terms & (_TRAJECTORY | _TERMINAL)

        def d_states(terms, s=sw):  # (value, ∂ℓ/∂X) of the state terms ``terms``
            value, _, _, _, g1, g0 = core(identity, X[..., 1:, :], X[..., 0, :], None, rs, tg,
                                          terms, 0.0, wt, we, None, s)
            return value, np.concatenate([g0[..., None, :], g1], axis=-2)

        out = {}
        if "ref_states" in want:  # ref_states: the trajectory term, and the
            # terminal term too when its target defaults to ref_states[b, t_b + 1]
            out["ref_states"] = -d_states(states if tg is None else states & _TRAJECTORY)[1]
        if "target" in want:
            out["target"] = -d_states(states & _TERMINAL)[1].sum(axis=-2)
        if "state_weights" in want:  # linear in s: ∂ℓ/∂s_d = ℓ(s = e_d)
            out["state_weights"] = [d_states(states, e)[0] for e in np.eye(n)]
        return out


def _loss_call(spec, args):
    """``spec`` (a :class:`_Loss`) on the operands ``args`` (a dict): FFI calls, or
    its pure_callback."""
    if _use_ffi():
        return _ffi_loss(spec, args)
    structs = (_struct((), spec.value_dtype),) + tuple(
        _struct(args[k].shape, args[k].dtype) for k in spec.want)
    return _host_call(spec, structs, *(args[k] for k in spec.names))


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _host_loss(spec, args):
    return _loss_call(spec, args)


@_host_loss.defjvp
def _host_loss_jvp(spec, primals, tangents):
    raise NotImplementedError(_SECOND_ORDER.format(what="the trajloss.jax losses"))


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _loss_fn(spec, args):
    return _host_loss(spec, args)[0]


def _loss_fn_jvp(spec, primals, tangents):
    (args,), (dargs,) = primals, tangents
    want = tuple(k for k in _kinds.DIFFERENTIABLE[spec.kind] if args.get(k) is not None
                 and not isinstance(dargs[k], SymbolicZero)
                 and jnp.issubdtype(args[k].dtype, jnp.inexact))
    value, *grads = _host_loss(dataclasses.replace(spec, want=want), args)
    grads = [_like(g, args[k]) for k, g in zip(want, grads)]
    tangent = jnp.zeros((), value.dtype)
    for k, g in zip(want, grads):  # linear in the tangents: JAX transposes it
        tangent = tangent + jnp.sum(g * dargs[k]).astype(value.dtype)
    return value, tangent


_loss_fn.defjvp(_loss_fn_jvp, symbolic_zeros=True)


def _loss(kind, arrays, constants, fills, value_dtype, **options):
    """A scalar loss of ``arrays`` (name -> JAX array or None) and ``constants``
    (name -> float64 numpy array or Python float, never differentiated).

    The core runs once now, on the concrete inputs or stand-ins of the traced ones
    (``fills[name]``: a value every check accepts), so that mistakes in shapes,
    dtypes and options raise here; with no traced input its value is the result."""
    present = {k: v for k, v in arrays.items() if v is not None}
    consts = {k: np.asarray(v, dtype=np.float64) for k, v in constants.items()}
    value_dtype = np.dtype(value_dtype).name
    host = _Loss(kind, tuple(present) + tuple(consts), (), value_dtype,
                 tuple(v.shape for v in consts.values()), tuple(consts), **options)
    stand_ins = [_stand_in(v, fills.get(k, 0)) for k, v in present.items()]
    value, = host(*stand_ins, *map(_bits, consts.values()))
    if not any(_is_traced(v) for v in present.values()):
        return _place(value.astype(value_dtype), present.values())
    args = dict(present, **{k: _bits(v) for k, v in consts.items()})
    return _loss_fn(host, args)


def _check_finite_flag(check_finite):
    if not isinstance(check_finite, (bool, np.bool_)):
        raise TypeError(f"check_finite must be True or False, got {check_finite!r}")
    return bool(check_finite)


def _options(discount, penalty, delta, check_finite):
    if not isinstance(penalty, str):
        raise TypeError(f"penalty must be one of 'mse', 'l1', 'huber', got {penalty!r}")
    return dict(discount=_number(discount, "discount", optional=True), penalty=penalty,
                delta=_number(delta, "delta"), check_finite=_check_finite_flag(check_finite))


def _value_dtype(*arrays):
    dtype = arrays[0].dtype
    return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.result_type(float)


def control_loss(pred, target, *, discount=None, lengths=None, mask=None, penalty="mse",
                 delta=1.0, feature_weights=None, check_finite=True):
    """``trajloss.control_loss`` as a differentiable JAX scalar.

    ``ℓ = Σ_{b,t} w[b,t] · mean_d f_d ρ(pred − target)[b,t,d] / Σ_b |S_b|``.
    Differentiable in ``pred``, ``target`` (``∂ℓ/∂target = −∂ℓ/∂pred``) and
    ``feature_weights``; shapes (B, T, D) or (T, D). ``check_finite`` is passed
    to the core: with ``False`` NaN/inf in the valid steps propagate.
    """
    pred, target = _array(pred, "pred"), _array(target, "target")
    steps = pred.shape[-2] if pred.ndim >= 2 else 0
    arrays = dict(pred=pred, target=target, lengths=_opt_array(lengths, "lengths"),
                  mask=_opt_array(mask, "mask"),
                  feature_weights=_opt_array(feature_weights, "feature_weights"))
    return _loss("control", arrays, {}, dict(lengths=steps, mask=True), _value_dtype(pred),
                 **_options(discount, penalty, delta, check_finite))


def _rollout_loss(kind, system, controls, x0, refs, *, weight=None, terminal_weight=None,
                  include_initial=False, discount=None, lengths=None, mask=None, penalty="mse",
                  delta=1.0, feature_weights=None, state_weights=None, check_finite=True):
    """The loss ``kind`` (trajloss._kinds) of the public references ``refs``
    (name -> array or None); ``weight``/``terminal_weight`` where the kind
    leaves them to the caller (floats, or JAX arrays to differentiate)."""
    system = _check_system(system)
    for name in kind.required:
        _array(refs.get(name), name)  # TypeError naming a missing one
    ref_controls, ref_states, target = kind.slots(refs)
    controls, x0 = _array(controls, "controls"), _array(x0, "x0")
    arrays = dict(controls=controls, x0=x0,
                  ref_controls=_opt_array(ref_controls, "ref_controls"),
                  ref_states=_opt_array(ref_states, "ref_states"),
                  target=_opt_array(target, kind.target_name),
                  lengths=_opt_array(lengths, "lengths"), mask=_opt_array(mask, "mask"),
                  feature_weights=_opt_array(feature_weights, "feature_weights"),
                  state_weights=_opt_array(state_weights, "state_weights"))
    Ad, Bd, offset, time_varying = system._core
    constants = {"Ad": Ad, "Bd": Bd} if offset is None else {"Ad": Ad, "Bd": Bd, "offset": offset}
    control_weight, weight, terminal_weight = kind.term_weights(weight, terminal_weight)
    for name, w in (("weight", weight), ("terminal_weight", terminal_weight)):
        if isinstance(w, float):
            constants[name] = w
        else:
            arrays[name] = w
    steps = controls.shape[-2] if controls.ndim >= 2 else 0
    return _loss("rollout", arrays, constants,
                 dict(lengths=steps, mask=True, weight=1.0, terminal_weight=1.0),
                 _value_dtype(controls), time_varying=bool(time_varying), terms=kind.terms,
                 control_weight=float(control_weight), include_initial=bool(include_initial),
                 target_name=kind.target_name, **_options(discount, penalty, delta, check_finite))


def trajectory_loss(system, controls, x0, ref_states, *, include_initial=False,
                    state_weights=None, discount=None, lengths=None, mask=None, penalty="mse",
                    delta=1.0, check_finite=True):
    """``trajloss.trajectory_loss`` as a differentiable JAX scalar.

    Differentiable in ``controls``, ``x0``, ``ref_states`` and ``state_weights``.
    Every system form, as in :func:`rollout`.
    """
    return _rollout_loss(_kinds.TRAJECTORY_LOSS, system, controls, x0,
                         dict(ref_states=ref_states), include_initial=include_initial,
                         discount=discount, lengths=lengths, mask=mask, penalty=penalty,
                         delta=delta, state_weights=state_weights, check_finite=check_finite)


def terminal_loss(system, controls, x0, target, *, lengths=None, mask=None, state_weights=None,
                  penalty="mse", delta=1.0, check_finite=True):
    """``trajloss.terminal_loss`` as a differentiable JAX scalar.

    Differentiable in ``controls``, ``x0``, ``target`` and ``state_weights``.
    Every system form, as in :func:`rollout`.
    """
    return _rollout_loss(_kinds.TERMINAL_LOSS, system, controls, x0, dict(target=target),
                         lengths=lengths, mask=mask, penalty=penalty, delta=delta,
                         state_weights=state_weights, check_finite=check_finite)


def combined_loss(system, controls, x0, ref_controls, ref_states, *, weight, terminal_weight=0.0,
                  terminal_target=None, include_initial=False, state_weights=None,
                  feature_weights=None, discount=None, lengths=None, mask=None, penalty="mse",
                  delta=1.0, check_finite=True):
    """``control + weight·trajectory + terminal_weight·terminal`` as a JAX scalar.

    Differentiable in ``controls``, ``x0``, ``ref_controls``, ``ref_states``,
    ``terminal_target``, ``feature_weights``, ``state_weights`` and -- given as
    0-d JAX float arrays -- ``weight`` (``∂ℓ/∂weight`` = the raw trajectory term)
    and ``terminal_weight`` (the raw terminal term). A Python number for a
    weight is a constant; either way a new value does not recompile.
    Weights must be finite and >= 0 (checked at the call, or, for a traced
    array, when the callback runs). For a schedule, evaluate the
    ``trajloss.weighting`` strategy outside ``jit`` and pass the number.
    Every system form, as in :func:`rollout`.
    """
    weight = _weight(weight, "weight")
    terminal_weight = _weight(terminal_weight, "terminal_weight")
    return _rollout_loss(_kinds.COMBINED_LOSS, system, controls, x0,
                         dict(ref_controls=ref_controls, ref_states=ref_states,
                              terminal_target=terminal_target),
                         weight=weight, terminal_weight=terminal_weight,
                         include_initial=include_initial, discount=discount, lengths=lengths,
                         mask=mask, penalty=penalty, delta=delta,
                         feature_weights=feature_weights, state_weights=state_weights,
                         check_finite=check_finite)
