"""Linear time-invariant systems: discrete ``(Ad, Bd)``, optionally built from a
continuous ``(A, B)`` by exact zero-order hold or an approximate scheme."""
from __future__ import annotations

import numpy as np

from . import _core

DISCRETIZATION_METHODS = ("zoh", "euler", "rk4")


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def _check_dt(dt, *, allow_none: bool):
    if dt is None and allow_none:
        return None
    if isinstance(dt, bool) or not isinstance(dt, (int, float, np.integer, np.floating)):
        raise TypeError(f"dt must be a real number{' or None' if allow_none else ''}, got {dt!r}")
    dt = float(dt)
    if not np.isfinite(dt) or dt <= 0:
        raise ValueError(f"dt must be a finite number > 0, got {dt!r}")
    return dt


class LinearSystem:
    """A discrete linear system ``x_{k+1} = Ad x_k + Bd u_k``.

    Parameters
    ----------
    Ad : array_like, shape (n, n)
        State transition matrix.
    Bd : array_like, shape (n, m)
        Input matrix.
    dt : float, optional
        The sampling period, when the system samples a continuous one.

    Attributes
    ----------
    Ad, Bd : ndarray, float64, read-only
    n, m : int
        State and input dimensions.
    dt : float or None
    A, B : ndarray or None
        The continuous matrices when built by :meth:`from_continuous`.
    method : str or None
        The discretisation method when built by :meth:`from_continuous`.
    """

    def __init__(self, Ad, Bd, dt=None):
        Ad, Bd = _core.check_system(Ad, Bd)
        self._Ad, self._Bd = _readonly(Ad), _readonly(Bd)
        self._dt = _check_dt(dt, allow_none=True)
        self._A = self._B = None
        self._method = None

    @classmethod
    def from_continuous(cls, A, B, dt, method="zoh"):
        """Discretise ``xdot = A x + B u`` with step ``dt`` (controls held constant).

        ``method="zoh"`` is exact for piecewise-constant controls:
        ``[[Ad, Bd], [0, I]] = expm([[A, B], [0, 0]] * dt)``.
        ``"euler"`` gives ``Ad = I + dt A``, ``Bd = dt B``; ``"rk4"`` the one-step
        classical Runge-Kutta map, ``Ad = I + F + F²/2 + F³/6 + F⁴/24`` and
        ``Bd = dt (I + F/2 + F²/6 + F³/24) B`` with ``F = dt A`` -- both
        approximate, for comparison.

        A : array_like, shape (n, n);  B : array_like, shape (n, m);  dt > 0.
        The returned system keeps ``A``, ``B`` and ``method``.
        """
        system = cls.__new__(cls)
        system._init_continuous(A, B, dt, method)
        return system

    def _init_continuous(self, A, B, dt, method):
        if not isinstance(method, str) or method not in DISCRETIZATION_METHODS:
            raise ValueError(f"method must be one of {DISCRETIZATION_METHODS}, got {method!r}")
        dt = _check_dt(dt, allow_none=False)
        A, B = _core.check_system(A, B, "A", "B")
        LinearSystem.__init__(self, *_core.discretize(A, B, dt, method), dt=dt)
        self._A, self._B = _readonly(A), _readonly(B)
        self._method = method

    Ad = property(lambda self: self._Ad, doc="Discrete state matrix, (n, n) float64.")
    Bd = property(lambda self: self._Bd, doc="Discrete input matrix, (n, m) float64.")
    A = property(lambda self: self._A, doc="Continuous state matrix, or None.")
    B = property(lambda self: self._B, doc="Continuous input matrix, or None.")
    dt = property(lambda self: self._dt, doc="Sampling period, or None.")
    method = property(lambda self: self._method, doc="Discretisation method, or None.")
    n = property(lambda self: self._Ad.shape[0], doc="State dimension.")
    m = property(lambda self: self._Bd.shape[1], doc="Input dimension.")

    def __repr__(self):
        parts = [f"n={self.n}", f"m={self.m}"]
        if self.dt is not None:
            parts.append(f"dt={self.dt!r}")
        if self.method is not None:
            parts.append(f"method={self.method!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


class DoubleIntegrator(LinearSystem):
    """The double integrator: position and velocity driven by an acceleration.

    Continuous ``A = [[0, 1], [0, 0]]``, ``B = [[0], [1]]`` (n = 2, m = 1),
    discretised with step ``dt`` (default 1/3 s, as in seed 000). With
    ``method="zoh"``, ``Ad = [[1, dt], [0, 1]]`` and ``Bd = [[dt²/2], [dt]]``.
    """

    def __init__(self, dt=1 / 3, method="zoh"):
        self._init_continuous([[0.0, 1.0], [0.0, 0.0]], [[0.0], [1.0]], dt, method)

    def __repr__(self):
        extra = "" if self.method == "zoh" else f", method={self.method!r}"
        return f"DoubleIntegrator(dt={self.dt!r}{extra})"
