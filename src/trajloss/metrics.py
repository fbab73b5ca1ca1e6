"""Success metrics: how close the controls bring each sequence to its target."""
from __future__ import annotations

import math

import numpy as np

from . import _core
from .rollout import _as_array, _check_system

__all__ = ["final_state_error", "success_rate"]


def final_state_error(system, controls, x0, xf, lengths=None, *, check_finite=True):
    """Distance of each sequence's final valid state to its target.

    ``error[b] = ‖X[b, L_b] − xf[b]‖₂`` with ``X = rollout(system, x0,
    controls)`` and ``L_b = lengths[b]`` (default T), computed in the C core.

    Parameters
    ----------
    system : LinearSystem or TimeVaryingSystem
        Any form (per-sample: B must match; time-varying: T must match).
    controls : array_like, (B, T, m) or (T, m)
    x0 : array_like, (B, n) or (n,)
    xf : array_like, (B, n) or (n,)
        Targets; one ``(n,)`` target serves a whole batch.
    lengths : array_like of int, (B,), optional
        Valid steps of each sequence, in [0, T]. Controls at steps ≥
        ``lengths[b]`` are padding: never read, any value (NaN included)
        gives the same bits as zeros.
    check_finite : bool
        Raise ``ValueError`` on NaN/inf in what is read: ``x0``, ``xf`` and
        the controls before each length (default). ``False`` skips that
        check and the overflow ``RuntimeWarning``; NaN/inf read then come
        out as NaN/inf errors.

    Returns
    -------
    ndarray, (B,) in the dtype of the inputs (0-d when unbatched).
    """
    system = _check_system(system)
    x0_arr = _as_array(x0, "x0")
    xf_arr = _as_array(xf, "xf")
    if not isinstance(xf, np.ndarray) and xf_arr.dtype.kind in "iuf":
        # a list or number takes the dtype of x0, as everywhere else
        xf_arr = xf_arr.astype(x0_arr.dtype if x0_arr.dtype.kind == "f" else np.float64)
    if 1 <= xf_arr.ndim < x0_arr.ndim:
        xf = np.broadcast_to(xf_arr, x0_arr.shape[:-1] + xf_arr.shape[-1:])
    return _core.final_state_error(system._core, controls, x0, xf, lengths=lengths,
                                   check_finite=check_finite)


def success_rate(system, controls, x0, xf, tol, lengths=None, *, check_finite=True):
    """Fraction of sequences whose :func:`final_state_error` is at most ``tol``.

    ``tol`` : finite, ≥ 0. Returns a float in [0, 1].
    """
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.integer, np.floating)):
        raise TypeError(f"tol must be a real number, got {tol!r}")
    if not (math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be finite and >= 0, got {tol!r}")
    error = final_state_error(system, controls, x0, xf, lengths, check_finite=check_finite)
    return float(np.mean(np.asarray(error) <= tol))
