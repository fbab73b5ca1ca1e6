"""Discrete linear systems, shared by a batch or one per sample, time-invariant or
time-varying, optionally built from a continuous ``(A, B)`` by exact zero-order
hold or an approximate scheme.

Every system here is ``x_{k+1} = Ad_k x_k + Bd_k u_k + c_k`` for sample b of a
batch, where each of ``Ad``, ``Bd`` and the offset ``c`` is independently

* shared by the whole batch, or given per sample (a leading axis of length B);
* the same at every step (:class:`LinearSystem`), or given per step
  (:class:`TimeVaryingSystem`, an axis of length T after the batch axis).

The functions that take a ``system`` read it through ``system._core``, the
tuple ``(Ad, Bd, offset, time_varying)`` the C core understands: float64,
C-contiguous, read-only arrays that own their memory, ``offset`` None or an
array. It is a :class:`_SystemCore`, the tuple type the extension knows was
made here, from values checked here: it reads them without checking them
again (any other tuple is checked on every call). The arrays users see
(``system.Ad``, ...) are read-only views of those, which NumPy does not let
anyone make writeable again.
"""
from __future__ import annotations

import math

import numpy as np

from . import _core

DISCRETIZATION_METHODS = ("zoh", "euler", "rk4")

_MAX_DIM = _core.MAX_DIM
# 2^44 elements (128 TiB of float64): only a broadcast view can claim more
_MAX_ELEMENTS = 1 << 44


# ---- validation (every message names the argument) ------------------------

def _array(value, name):
    """``value`` as an ndarray of real numbers (no copy), or TypeError/ValueError naming it."""
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(f"{name} is a numpy.ma.MaskedArray, whose mask trajloss would not read: "
                        f"pass a plain array (e.g. {name}.filled(0))")
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{name}: cannot be converted to an array ({exc})") from None
    if arr.size > _MAX_ELEMENTS:
        raise ValueError(f"{name} has shape {arr.shape}: too large to process (the maximum is "
                         f"{_MAX_ELEMENTS} elements)")
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return arr


class _SystemCore(tuple):
    """``(Ad, Bd, offset, time_varying)`` as made by a system of this module: the
    extension reads these arrays without checking their values again."""

    __slots__ = ()


_core.set_system_type(_SystemCore)


def _checked(arr, name):
    """A float64 C-contiguous read-only copy of ``arr`` owning its memory, after
    checking that every value is finite."""
    with np.errstate(all="ignore"):  # a longdouble beyond float64 becomes inf: refused below
        try:
            a = np.array(arr, dtype=np.float64, order="C")
        except MemoryError:
            raise MemoryError(f"{name} of shape {arr.shape} does not fit in memory") from None
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf")
    a.setflags(write=False)
    return a


def _view(a):
    """A read-only view of a read-only array: NumPy refuses to make it writeable."""
    return None if a is None else a.view()


def _shape(shape):
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _check_dt(dt, *, allow_none: bool):
    if dt is None and allow_none:
        return None
    if isinstance(dt, bool) or not isinstance(dt, (int, float, np.integer, np.floating)):
        raise TypeError(f"dt must be a real number{' or None' if allow_none else ''}, got {dt!r}")
    dt = float(dt)
    if not math.isfinite(dt) or dt <= 0:
        raise ValueError(f"dt must be a finite number > 0, got {dt!r}")
    return dt


def _check_dt_batch(dt):
    """dt of from_continuous: a real number > 0 (a float), or a (B,) array of them."""
    if isinstance(dt, (list, tuple, np.ndarray)):
        arr = _array(dt, "dt")
        if arr.ndim == 0:  # a 0-d array is a number
            return _check_dt(arr[()], allow_none=False)
        if arr.ndim != 1 or arr.shape[0] < 1:
            raise ValueError(f"dt must be a number or a (B,) array of numbers with B >= 1, got "
                             f"shape {_shape(arr.shape)}")
        with np.errstate(all="ignore"):
            arr = np.array(arr, dtype=np.float64)
        bad = np.flatnonzero(~(np.isfinite(arr) & (arr > 0)))
        if bad.size:
            raise ValueError(f"dt must be finite and > 0, got {arr[bad[0]]!r} at index {bad[0]}")
        return arr
    return _check_dt(dt, allow_none=False)


def _field_shapes(fields, time_varying, sq_name, batch_word="B"):
    """Check the shapes of a system's arrays; returns (n, m, batch, steps).

    ``fields``: (name, array, kind) with kind "square" (n x n), "input" (n x m)
    or "offset" (n); the first is the square one. Each array is shared
    (``(T,)`` + core shape when time-varying, else the core shape) or per
    sample (a leading axis of length B >= 1). Per-sample arrays agree on B,
    time-varying ones on T >= 1.
    """
    lead = "T, " if time_varying else ""
    n = m = None
    batch = steps = None
    batch_from = steps_from = None
    for name, arr, kind in fields:
        core_nd = 1 if kind == "offset" else 2
        base_nd = core_nd + int(time_varying)
        nd = arr.ndim
        core = arr.shape[nd - core_nd:] if nd >= core_nd else ()
        if kind == "square":
            ok = nd in (base_nd, base_nd + 1) and core[0] == core[1] and 1 <= core[0] <= _MAX_DIM
            if not ok:
                raise ValueError(
                    f"{name} must have shape ({lead}n, n), or ({batch_word}, {lead}n, n) for one "
                    f"system per sample, with 1 <= n <= {_MAX_DIM}, got shape {_shape(arr.shape)}")
            n = core[0]
        elif kind == "input":
            ok = nd in (base_nd, base_nd + 1) and core[0] == n and 1 <= core[1] <= _MAX_DIM
            if not ok:
                raise ValueError(
                    f"{name} must have shape ({lead}n, m) = ({lead}{n}, m), or ({batch_word}, "
                    f"{lead}{n}, m) for one system per sample, with 1 <= m <= {_MAX_DIM}, to "
                    f"match {sq_name}, got shape {_shape(arr.shape)}")
            m = core[1]
        else:
            ok = nd in (base_nd, base_nd + 1) and core[0] == n
            if not ok:
                raise ValueError(
                    f"{name} must have shape ({lead}n,) = ({lead}{n},), or ({batch_word}, "
                    f"{lead}{n}) for one offset per sample, to match {sq_name}, got shape "
                    f"{_shape(arr.shape)}")
        if nd == base_nd + 1:  # per sample
            b = arr.shape[0]
            if b < 1:
                raise ValueError(f"{name} has shape {_shape(arr.shape)}: a per-sample array needs "
                                 f"{batch_word} >= 1")
            if batch is not None and b != batch:
                raise ValueError(f"{name} holds {batch_word} = {b} samples but {batch_from} holds "
                                 f"{batch_word} = {batch}: per-sample arrays must agree")
            batch, batch_from = b, name
        if time_varying:
            t = arr.shape[nd - core_nd - 1]
            if t < 1:
                raise ValueError(f"{name} has shape {_shape(arr.shape)}: a time-varying system "
                                 f"needs T >= 1 steps")
            if steps is not None and t != steps:
                raise ValueError(f"{name} has T = {t} steps but {steps_from} has T = {steps}: "
                                 f"the arrays of a time-varying system must agree")
            steps, steps_from = t, name
    return n, m, batch, steps


# ---- the systems ----------------------------------------------------------

class _LinearDynamics:
    """What every linear system has; see :class:`LinearSystem` and
    :class:`TimeVaryingSystem`."""

    _time_varying = False

    def _set(self, Ad, Bd, offset, dt):
        fields = [("Ad", _array(Ad, "Ad"), "square"), ("Bd", _array(Bd, "Bd"), "input")]
        if offset is not None:
            fields.append(("offset", _array(offset, "offset"), "offset"))
        n, m, batch, steps = _field_shapes(fields, self._time_varying, "Ad")
        checked = [_checked(arr, name) for name, arr, _ in fields]
        self._n, self._m, self._batch, self._steps = n, m, batch, steps
        self._dt = _check_dt(dt, allow_none=True)
        self._A = self._B = None
        self._method = None
        self._make_core(checked[0], checked[1], checked[2] if offset is not None else None)

    def _make_core(self, Ad, Bd, offset):
        # what every _core function takes as its system (read on every call)
        self._core = _SystemCore((Ad, Bd, offset, self._time_varying))
        self._Ad, self._Bd, self._offset = _view(Ad), _view(Bd), _view(offset)

    _STATE = ("_n", "_m", "_batch", "_steps", "_dt", "_A", "_B", "_method")

    def __getstate__(self):
        # the arrays and what describes them; not caches others keep on the object
        state = {k: self.__dict__[k] for k in self._STATE}
        state.update(Ad=self._core[0], Bd=self._core[1], offset=self._core[2])
        return state

    def __setstate__(self, state):
        # a copy or an unpickled system: its arrays read-only again (unpickled
        # ones come back writeable)
        def again(a, name):
            return _view(_checked(a, name)) if isinstance(a, np.ndarray) else a

        for k in self._STATE:
            self.__dict__[k] = again(state[k], k[1:])
        self._make_core(*(None if state[k] is None else _checked(state[k], k)
                          for k in ("Ad", "Bd", "offset")))

    Ad = property(lambda self: self._Ad,
                  doc="Discrete state matrices, float64 read-only: (n, n) shared or (B, n, n) "
                      "per sample; time-varying (T, n, n) or (B, T, n, n).")
    Bd = property(lambda self: self._Bd,
                  doc="Discrete input matrices, float64 read-only: (n, m) or (B, n, m); "
                      "time-varying (T, n, m) or (B, T, n, m).")
    offset = property(lambda self: self._offset,
                      doc="The offset c, or None: (n,) or (B, n); time-varying (T, n) or "
                          "(B, T, n).")
    A = property(lambda self: self._A,
                 doc="Continuous state matrix ((n, n) or (B, n, n)), or None.")
    B = property(lambda self: self._B,
                 doc="Continuous input matrix ((n, m) or (B, n, m)), or None.")
    dt = property(lambda self: self._dt,
                  doc="Sampling period: None, a float, or (from_continuous) a (B,) array.")
    method = property(lambda self: self._method, doc="Discretisation method, or None.")
    n = property(lambda self: self._n, doc="State dimension.")
    m = property(lambda self: self._m, doc="Input dimension.")
    batch = property(lambda self: self._batch,
                     doc="B when some array is given per sample, else None (shared by any batch).")
    steps = property(lambda self: self._steps,
                     doc="T of a time-varying system, None for a time-invariant one.")

    def __repr__(self):
        parts = [f"n={self.n}", f"m={self.m}"]
        if self.steps is not None:
            parts.append(f"steps={self.steps}")
        if self.batch is not None:
            parts.append(f"batch={self.batch}")
        if self.offset is not None:
            parts.append(f"offset={_shape(self.offset.shape)}")
        if isinstance(self.dt, np.ndarray):
            parts.append(f"dt=<{self.dt.shape[0]} values in [{float(self.dt.min())!r}, "
                         f"{float(self.dt.max())!r}]>")
        elif self.dt is not None:
            parts.append(f"dt={self.dt!r}")
        if self.method is not None:
            parts.append(f"method={self.method!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


class LinearSystem(_LinearDynamics):
    """A discrete linear time-invariant system ``x_{k+1} = Ad x_k + Bd u_k (+ c)``.

    Each array is shared by the whole batch or given per sample (sample b of a
    batch then follows ``x_{k+1} = Ad[b] x_k + Bd[b] u_k + c[b]``);
    independently of the others, but the per-sample ones agree on B, which must
    then equal the batch size of the data every call is given.

    Parameters
    ----------
    Ad : array_like, shape (n, n) or (B, n, n)
        State transition matrix (real numbers, finite; stored as float64).
    Bd : array_like, shape (n, m) or (B, n, m)
        Input matrix.
    dt : float, optional
        The sampling period, when the system samples a continuous one.
    offset : array_like, shape (n,) or (B, n), optional
        A constant term c added at every step (None: none).

    Attributes
    ----------
    Ad, Bd, offset : ndarray, float64, read-only (offset may be None)
    n, m : int
        State and input dimensions.
    batch : int or None
        B when some array is per sample, else None.
    steps : None
        (T of a :class:`TimeVaryingSystem`.)
    dt : float, (B,) ndarray or None
    A, B : ndarray or None
        The continuous matrices when built by :meth:`from_continuous`.
    method : str or None
        The discretisation method when built by :meth:`from_continuous`.
    """

    def __init__(self, Ad, Bd, dt=None, offset=None):
        self._set(Ad, Bd, offset, dt)

    @classmethod
    def from_continuous(cls, A, B, dt, method="zoh"):
        """Discretise ``xdot = A x + B u`` with step ``dt`` (controls held constant).

        ``method="zoh"`` is exact for piecewise-constant controls:
        ``[[Ad, Bd], [0, I]] = expm([[A, B], [0, 0]] * dt)``.
        ``"euler"`` gives ``Ad = I + dt A``, ``Bd = dt B``; ``"rk4"`` the one-step
        classical Runge-Kutta map, ``Ad = I + F + F²/2 + F³/6 + F⁴/24`` and
        ``Bd = dt (I + F/2 + F²/6 + F³/24) B`` with ``F = dt A`` -- both
        approximate, for comparison.

        A : array_like, shape (n, n) or (batch, n, n)
        B : array_like, shape (n, m) or (batch, n, m)
        dt : float > 0, or array_like of shape (batch,)

        When any of them is per sample, sample b is discretised from
        ``(A[b], B[b], dt[b])`` (a shared one serving every sample) and the
        system is per sample: ``Ad`` (batch, n, n), ``Bd`` (batch, n, m).
        The returned system keeps ``A``, ``B`` and ``dt`` as given (validated,
        float64) and ``method``.
        """
        system = cls.__new__(cls)
        system._init_continuous(A, B, dt, method)
        return system

    def _init_continuous(self, A, B, dt, method):
        if not isinstance(method, str) or method not in DISCRETIZATION_METHODS:
            raise ValueError(f"method must be one of {DISCRETIZATION_METHODS}, got {method!r}")
        dt = _check_dt_batch(dt)
        A_arr, B_arr = _array(A, "A"), _array(B, "B")
        n, m, batch, _ = _field_shapes([("A", A_arr, "square"), ("B", B_arr, "input")], False,
                                       "A", batch_word="batch")
        if isinstance(dt, np.ndarray):
            if batch is not None and dt.shape[0] != batch:
                raise ValueError(f"dt holds batch = {dt.shape[0]} samples but A or B holds "
                                 f"batch = {batch}: per-sample arrays must agree")
            batch = dt.shape[0]
        A_arr, B_arr = _checked(A_arr, "A"), _checked(B_arr, "B")
        if batch is None:
            Ad, Bd = _core.discretize(A_arr, B_arr, dt, method)
        else:
            Ad, Bd = np.empty((batch, n, n)), np.empty((batch, n, m))
            for b in range(batch):
                Ad[b], Bd[b] = _core.discretize(A_arr if A_arr.ndim == 2 else A_arr[b],
                                                B_arr if B_arr.ndim == 2 else B_arr[b],
                                                dt if isinstance(dt, float) else dt[b], method)
        for name, arr in (("Ad", Ad), ("Bd", Bd)):
            if not np.isfinite(arr).all():
                where = ""
                if batch is not None:
                    bad = np.flatnonzero(~np.isfinite(arr.reshape(batch, -1)).all(axis=1))[0]
                    where = f" (sample {bad})"
                raise ValueError(f"{name} contains NaN or inf: discretising A with dt overflows "
                                 f"float64{where}; use a smaller dt")
        self._set(Ad, Bd, None, None)
        self._A, self._B, self._method = _view(A_arr), _view(B_arr), method
        self._dt = _view(_checked(dt, "dt")) if isinstance(dt, np.ndarray) else dt


class TimeVaryingSystem(_LinearDynamics):
    """A discrete linear time-varying system ``x_{k+1} = Ad_k x_k + Bd_k u_k (+ c_k)``.

    Step k of a sequence (control ``u_k``, from state k to state k+1) uses the
    matrices at index k; a system of T steps serves controls of exactly T
    steps. Each array is shared by the batch or given per sample (a leading
    axis of length B, which must equal the data's batch size).

    Parameters
    ----------
    Ad : array_like, shape (T, n, n) or (B, T, n, n)
    Bd : array_like, shape (T, n, m) or (B, T, n, m)
    dt : float, optional
        The sampling period.
    offset : array_like, shape (T, n) or (B, T, n), optional
        The term c_k added at step k (None: none).

    Attributes
    ----------
    Ad, Bd, offset : ndarray, float64, read-only (offset may be None)
    n, m : int
    steps : int
        T.
    batch : int or None
        B when some array is per sample, else None.
    dt : float or None
    A, B, method : None
        (Only :meth:`LinearSystem.from_continuous` sets them.)
    """

    _time_varying = True

    def __init__(self, Ad, Bd, dt=None, offset=None):
        self._set(Ad, Bd, offset, dt)


class DoubleIntegrator(LinearSystem):
    """The double integrator: position and velocity driven by an acceleration.

    Continuous ``A = [[0, 1], [0, 0]]``, ``B = [[0], [1]]`` (n = 2, m = 1),
    discretised with step ``dt`` (default 1/3 s, as in the double-integrator
    study). With
    ``method="zoh"``, ``Ad = [[1, dt], [0, 1]]`` and ``Bd = [[dt²/2], [dt]]``.
    """

    def __init__(self, dt=1 / 3, method="zoh"):
        dt = _check_dt(dt, allow_none=False)  # a number: DoubleIntegrator is one system
        self._init_continuous([[0.0, 1.0], [0.0, 0.0]], [[0.0], [1.0]], dt, method)

    def __repr__(self):
        extra = "" if self.method == "zoh" else f", method={self.method!r}"
        return f"DoubleIntegrator(dt={self.dt!r}{extra})"
