"""Rollouts of a discrete linear system and their adjoint (vector-Jacobian product),
for every system form: shared or per-sample, time-invariant or time-varying."""
from __future__ import annotations

import numpy as np

from . import _core
from .systems import _LinearDynamics


def _check_system(system) -> _LinearDynamics:
    """``system`` itself when it is a trajloss system (TypeError naming it otherwise)."""
    if not isinstance(system, _LinearDynamics):
        raise TypeError("system must be a trajloss.LinearSystem or TimeVaryingSystem, got "
                        f"{type(system).__name__}")
    return system


def _as_array(value, name):
    """``np.asarray`` whose failure (a ragged list, ...) names the argument."""
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{name}: cannot be converted to an array ({exc})") from None


def rollout(system, x0, controls, *, check_finite=True):
    """Simulate ``x_{k+1} = Ad_k x_k + Bd_k u_k + c_k`` from ``x0`` under ``controls``.

    Sample b uses its own matrices when the system is per sample, step k its
    own when it is time-varying (``Ad_k = Ad`` otherwise; ``c_k = 0`` without an
    offset).

    Parameters
    ----------
    system : LinearSystem or TimeVaryingSystem
        A per-sample system's B must equal the batch size of ``x0`` and
        ``controls``, a time-varying system's T their T (ValueError naming
        ``system`` otherwise).
    x0 : array_like, shape (B, n) or (n,)
    controls : array_like, shape (B, T, m) or (T, m)
        Control ``k`` acts on ``[k dt, (k+1) dt)``.
    check_finite : bool
        Raise ``ValueError`` on NaN/inf inputs (default; every element is
        read, there is no padding here); with ``False`` they propagate into
        the output, and an overflow gives inf/NaN states without the
        ``RuntimeWarning``.

    Returns
    -------
    states : ndarray, shape (B, T+1, n) or (T+1, n)
        ``states[..., 0, :] == x0``; dtype of the inputs (float32 or float64).
    """
    return _core.rollout(_check_system(system)._core, x0, controls, check_finite=check_finite)


def rollout_vjp(system, x0, controls, grad_states, *, check_finite=True):
    """The adjoint of :func:`rollout`: back-propagate ``grad_states = ∂L/∂states``.

    With ``λ_T = G_T`` and ``λ_k = G_k + Ad_kᵀ λ_{k+1}`` (G = grad_states,
    the matrices of each sample): ``∂L/∂u_k = Bd_kᵀ λ_{k+1}`` and
    ``∂L/∂x0 = λ_0``. Exact, no finite differences; the result depends on
    neither ``x0`` and ``controls`` (the rollout is linear) nor the offset,
    which are taken for their shapes and checks.

    Parameters
    ----------
    system : LinearSystem or TimeVaryingSystem
    x0 : array_like, shape (B, n) or (n,)
    controls : array_like, shape (B, T, m) or (T, m)
    grad_states : array_like, shape (B, T+1, n) or (T+1, n)

    Returns
    -------
    grad_controls : ndarray, shape of ``controls``
    grad_x0 : ndarray, shape of ``x0``
    """
    return _core.rollout_vjp(_check_system(system)._core, x0, controls, grad_states,
                             check_finite=check_finite)
