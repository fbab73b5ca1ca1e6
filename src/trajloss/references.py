"""Minimum-energy reference trajectories (computed in the C core).

Three constructions (``method``), for ``T = steps`` and ``H = T·dt``:

``"exact"``
    Piecewise-constant controls of minimum ``Σ‖u_k‖²`` that reach ``xf``
    under the discrete dynamics ``x_{k+1} = Ad_k x_k + Bd_k u_k + c_k`` of
    every linear form (shared or per-sample, time-invariant or time-varying,
    with or without an offset): the minimum-norm solution of
    ``C U = xf − Φ(T,0) x0 − Σ_k Φ(T,k+1) c_k`` with
    ``Φ(T,k) = Ad_{T−1} ⋯ Ad_k`` and
    ``C = [Φ(T,1) Bd_0, Φ(T,2) Bd_1, …, Bd_{T−1}]`` (n × T·m; for a
    time-invariant system ``C = [Ad^{T−1}Bd … Bd]``), from a
    column-pivoted QR factorisation of the row-equilibrated ``Cᵀ``
    (LAPACK ``dgeqp3``), ``U = Q R⁻ᵀ Pᵀ D d``, the triangular solve done per
    sample. Its accuracy follows ``cond(C)``, never ``cond(C)²`` (no
    ``C Cᵀ`` is formed): ``final_error`` is at rounding level relative to
    the state scale (≤ 1e-9 on chains of 8 integrators and random 6-state
    systems, where the pseudo-inverse reaches ~1e-11). ``numpy.linalg.LinAlgError``
    only when ``C`` is numerically rank-deficient (some direction of the
    state space cannot be reached in ``steps`` steps): a diagonal entry
    ``|R_kk| ≤ max(n, T·m)·eps·|R_11|``; the message gives the rank found,
    the tolerance and the diagonal entries.
``"average"``
    The double-integrator study's construction: the continuous minimum-energy law
    ``u(t) = Bᵀ e^{Aᵀ(H−t)} W_c(H)⁻¹ (xf − e^{AH} x0)`` averaged exactly over
    each interval, rolled out with the exact ZOH model. Its ``final_error``
    is the discretisation error (≈ 0.03–0.04 on the study's double integrator,
    ``|b|·H·dt²/12`` in position for ``u(t) = a + b t``).
``"continuous"``
    The same averaged controls, with ``states`` the exact continuous optimal
    trajectory sampled at ``k·dt`` (no time stepping); it ends at ``xf``.
    Where ``Ad^k`` grows by more than 1e6 over the horizon (an unstable
    system over a long horizon) those states would be a difference of terms
    that large, and ``LinAlgError`` says so instead.

Everything that depends only on (system, steps, method) is computed once per
call -- once for the whole batch when the system is shared by it, once per
sample for a per-sample system (each sample its own ``C`` and QR, or its own
continuous model) -- and each sample then costs a few small matrix-vector
products and its rollout. For "average" and "continuous", a singular or
ill-conditioned continuous Gramian (equilibrated condition number above
1e12) raises ``LinAlgError`` with the condition number. They need the
continuous model of :meth:`LinearSystem.from_continuous` (per-sample ``A``,
``B``, ``dt`` included); a :class:`TimeVaryingSystem` has none.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _core
from .rollout import _as_array, _check_system

__all__ = ["MinEnergyLaw", "Reference", "min_energy", "min_energy_law", "REFERENCE_METHODS"]

REFERENCE_METHODS = ("exact", "average", "continuous")

# The plan and its scratch hold about steps * n * m float64 numbers for
# "exact" (the controllability matrix) and steps * n * n for "average" and
# "continuous" (the powers Ad^k): 10**6 steps of the double integrator take
# ~0.1 GB. A minimum-energy reference over more steps is not something float64
# products of Ad_k resolve either.
_MAX_STEPS = 10**6


@dataclass(frozen=True)
class Reference:
    """Minimum-energy reference trajectories.

    controls : ndarray, (B, T, m) or (T, m)
    states : ndarray, (B, T+1, n) or (T+1, n)
    final_error : ndarray, (B,) or scalar
        ``‖rollout(controls)[T] − xf‖₂``: the rollout under the system's own
        dynamics (``"exact"``) or the exact ZOH of its continuous model
        (``"average"``, ``"continuous"``).
    energy : ndarray, (B,) or scalar
        ``Σ_k ‖u_k‖² · dt`` (dt = 1 for a discrete system without one; sample
        b's own ``dt[b]`` for a per-sample one).
    method : str
    cond : float
        ``"exact"``: estimated 1-norm condition number of the row-equilibrated
        controllability matrix ``C`` (of its triangular factor ``R``);
        ``"average"``/``"continuous"``: that of the equilibrated continuous
        Gramian ``W_c(H)`` that was inverted. For a per-sample system, the
        largest over the samples.
    """

    controls: np.ndarray
    states: np.ndarray
    final_error: np.ndarray
    energy: np.ndarray
    method: str
    cond: float


def _steps(steps):
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
        raise TypeError(f"steps must be an integer, got {steps!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if steps > _MAX_STEPS:
        raise ValueError(f"steps must be <= {_MAX_STEPS} (the limit of min_energy: its plan holds "
                         f"about steps * n * max(n, m) float64 numbers), got {steps}")
    return int(steps)


def _boundary(x0, xf):
    """x0 as given; xf broadcast against x0 (one target for a whole batch)."""
    x0 = _as_array(x0, "x0")
    xf = _as_array(xf, "xf")
    if xf.ndim < x0.ndim:
        try:
            xf = np.broadcast_to(xf, x0.shape)
        except ValueError:
            raise ValueError(f"xf of shape {xf.shape} does not match x0 of shape {x0.shape}") from None
    return x0, xf


def _continuous_model(system, what):
    """The continuous (A, B) of ``system``, or a ValueError naming ``system``."""
    if system.steps is not None:
        raise ValueError(f"system: {what} needs a continuous model (A, B), and a "
                         "TimeVaryingSystem has none; use method='exact'")
    if system.A is None:
        raise ValueError(f"system: {what} needs the continuous model (A, B): build the system "
                         "with LinearSystem.from_continuous or DoubleIntegrator")
    return system.A, system.B


def min_energy(system, x0, xf, steps, method="exact"):
    """Minimum-energy references from ``x0`` to ``xf`` in ``steps`` steps.

    Parameters
    ----------
    system : LinearSystem or TimeVaryingSystem
        Any form for ``"exact"``: a per-sample system's B must equal the
        batch size of ``x0``, a time-varying system's T must equal
        ``steps`` (ValueError naming ``system`` otherwise). ``"average"`` and
        ``"continuous"`` need a system built from a continuous model, shared
        or per sample (they use its exact ZOH whatever ``system.method``).
    x0 : array_like, (B, n) or (n,)
    xf : array_like, (B, n) or (n,)
        Targets; an ``(n,)`` target is used for every sample of a batch.
    steps : int, 1 ≤ steps ≤ 10**6
    method : {"exact", "average", "continuous"}

    Returns
    -------
    Reference (float64 arrays).

    Raises
    ------
    numpy.linalg.LinAlgError
        "exact": ``C`` numerically rank-deficient (the message gives the rank,
        the tolerance and the diagonal of ``R``); "average"/"continuous": the
        continuous Gramian singular or ill-conditioned, or (continuous) the
        states' exponentials growing beyond 1e6 over the horizon. For a
        per-sample system the message names the sample.
    MemoryError
        The plan for this many steps does not fit in memory (the message names
        ``steps`` and the size).
    """
    system = _check_system(system)
    steps = _steps(steps)
    if not isinstance(method, str) or method not in REFERENCE_METHODS:
        raise ValueError(f"method must be one of {REFERENCE_METHODS}, got {method!r}")
    A = B = None
    if method != "exact":
        A, B = _continuous_model(system, f"method={method!r}")
    x0, xf = _boundary(x0, xf)
    dt = 1.0 if system.dt is None else system.dt  # a float, or (B,) per sample
    controls, states, final_error, energy, cond = _core.min_energy(
        system._core, A, B, dt, x0, xf, steps, method)
    return Reference(controls, states, final_error, energy, method, cond)


class MinEnergyLaw:
    """The continuous minimum-energy law over ``[0, horizon]``, exactly.

    ``u(t) = Bᵀ e^{Aᵀ(H−t)} λ`` and ``x(t) = e^{At} x0 + W_c(t) e^{Aᵀ(H−t)} λ``
    with ``λ = W_c(H)⁻¹ (xf − e^{AH} x0)`` and the controllability Gramian
    ``W_c(t) = ∫₀ᵗ e^{As} B Bᵀ e^{Aᵀs} ds`` (Van Loan's block exponential over
    a short step, then doublings ``W_c(2h) = W_c(h) + e^{Ah} W_c(h) e^{Aᵀh}``),
    all evaluated in the C core at any times -- no time stepping.

    Stability at long horizons: the formula is evaluated forward (as written)
    unless ``‖e^{AH}‖₁ > 1e3`` and ``‖e^{−AH}‖₁ < ‖e^{AH}‖₁``; then as the
    same law of the time-reversed system ``(−A, −B)`` from ``xf`` back to
    ``x0``, so that the exponentials in use never grow much while others
    decay (their product would lose the states to cancellation). Where they still
    grow by more than 1e6 (a system with both growing and decaying modes
    over a long horizon) :class:`numpy.linalg.LinAlgError` is raised rather
    than states that would lose more than ~1e-10 of their scale to
    cancellation.

    A per-sample system (``A`` (B, n, n) and/or ``B`` (B, n, m) from
    :meth:`LinearSystem.from_continuous`) gives sample b the law of its own
    ``(A[b], B[b])``; ``x0`` must then be a batch of that B (ValueError
    naming ``system`` otherwise), and an error names the sample.
    """

    def __init__(self, system, x0, xf, horizon):
        self.system = _check_system(system)
        self.A, self.B = _continuous_model(self.system, "min_energy_law")
        if isinstance(horizon, bool) or not isinstance(horizon, (int, float, np.integer, np.floating)):
            raise TypeError(f"horizon must be a real number, got {horizon!r}")
        self.horizon = float(horizon)
        if not (np.isfinite(self.horizon) and self.horizon > 0):
            raise ValueError(f"horizon must be a finite number > 0, got {horizon!r}")
        self.x0, self.xf = _boundary(x0, xf)
        self._per_sample = self.A.ndim == 3 or self.B.ndim == 3
        if self._per_sample:
            batch = (self.A if self.A.ndim == 3 else self.B).shape[0]
            if self.x0.ndim != 2 or self.x0.shape[0] != batch:
                raise ValueError(f"system holds B = {batch} continuous models (one per sample) "
                                 f"but x0 has shape {self.x0.shape}; expected ({batch}, "
                                 f"{self.system.n})")
        # evaluating once validates the boundary states and the Gramian
        self.evaluate(0.0)

    def _sample_law(self, b, t):
        """(u, x) of sample b's own law at times t, errors naming the sample."""
        A = self.A[b] if self.A.ndim == 3 else self.A
        B = self.B[b] if self.B.ndim == 3 else self.B
        try:
            return _core.min_energy_law(A, B, self.horizon, self.x0[b], self.xf[b], t)
        except (np.linalg.LinAlgError, ValueError) as exc:
            raise type(exc)(f"{exc} (sample {b} of the per-sample system)") from None

    def evaluate(self, t):
        """``(u(t), x(t))``: shapes (B, len(t), m) and (B, len(t), n) for a 1-D ``t``
        (the time axis is dropped for a scalar ``t``, the batch axis for an unbatched x0)."""
        if not self._per_sample:
            return _core.min_energy_law(self.A, self.B, self.horizon, self.x0, self.xf, t)
        laws = [self._sample_law(b, t) for b in range(self.x0.shape[0])]
        return np.stack([u for u, _ in laws]), np.stack([x for _, x in laws])

    def controls(self, t):
        """``u(t)`` (see :meth:`evaluate`)."""
        return self.evaluate(t)[0]

    def states(self, t):
        """``x(t)`` (see :meth:`evaluate`)."""
        return self.evaluate(t)[1]

    def __repr__(self):
        return f"MinEnergyLaw({self.system!r}, horizon={self.horizon!r})"


def min_energy_law(system, x0, xf, horizon):
    """The exact continuous minimum-energy law from ``x0`` to ``xf`` over
    ``[0, horizon]``; see :class:`MinEnergyLaw`. Systems with a continuous
    model only (shared or per sample)."""
    return MinEnergyLaw(system, x0, xf, horizon)
