"""Rollouts of a discrete linear system and their adjoint (vector-Jacobian product)."""
from __future__ import annotations

import numpy as np

from . import _core
from .systems import LinearSystem


def _check_system(system) -> LinearSystem:
    if not isinstance(system, LinearSystem):
        raise TypeError(f"system must be a trajloss.LinearSystem, got {type(system).__name__}")
    return system


def _as_array(value, name):
    """``np.asarray`` whose failure (a ragged list, ...) names the argument."""
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{name}: cannot be converted to an array ({exc})") from None


def rollout(system, x0, controls, *, check_finite=True):
    """Simulate ``x_{k+1} = Ad x_k + Bd u_k`` from ``x0`` under ``controls``.

    Parameters
    ----------
    system : LinearSystem
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
    system = _check_system(system)
    return _core.rollout(system.Ad, system.Bd, x0, controls, check_finite)


def rollout_vjp(system, x0, controls, grad_states, *, check_finite=True):
    """The adjoint of :func:`rollout`: back-propagate ``grad_states = ∂L/∂states``.

    With ``λ_T = G_T`` and ``λ_k = G_k + Adᵀ λ_{k+1}`` (G = grad_states):
    ``∂L/∂u_k = Bdᵀ λ_{k+1}`` and ``∂L/∂x0 = λ_0``. Exact, no finite differences;
    the result does not depend on ``x0`` and ``controls`` (the rollout is
    linear), which are taken for their shapes and checks.

    Parameters
    ----------
    system : LinearSystem
    x0 : array_like, shape (B, n) or (n,)
    controls : array_like, shape (B, T, m) or (T, m)
    grad_states : array_like, shape (B, T+1, n) or (T+1, n)

    Returns
    -------
    grad_controls : ndarray, shape of ``controls``
    grad_x0 : ndarray, shape of ``x0``
    """
    system = _check_system(system)
    return _core.rollout_vjp(system.Ad, system.Bd, x0, controls, grad_states, check_finite)
