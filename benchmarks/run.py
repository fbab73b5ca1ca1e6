"""trajloss benchmark suite: one process, every workload, every baseline.

    python benchmarks/run.py            # full run (7 measurements per point)
    python benchmarks/run.py --quick    # 3 measurements per point, same sizes
    python benchmarks/run.py --tiny     # smoke test: tiny sizes, well under a minute
    python benchmarks/run.py --only W1,W3 --out /tmp/x.json --plot --threads 2
    python benchmarks/run.py --markdown tables.md   # the README tables, also to a file
    python benchmarks/run.py --render results.json  # the README tables of a saved run

Workloads (see benchmarks/README.md):

W1  combined_loss value + gradient (controls and x0), double integrator, T = 15,
    B in {1, 64, 1024, 16384, 262144}, float32 and float64
W2  combined_loss on a random stable 6-state, 2-input system, T = 100, B = 4096,
    discount 0.97, random lengths in [T/2, T], terminal weight
W3  time-weighted behaviour-cloning loss: control_loss only, discount 0.375, D = 6,
    T = 100, B = 1024
W4  min_energy(method="exact") for 10**6 double-integrator samples, T = 15
W5  per-call overhead at B = 1 (combined_loss of W1 and a minimal control_loss)
W6  the memory floor of W1 at B = 262144: one copy of the bytes W1 reads + writes
W7  combined_loss value + gradient, random stable systems, (n, m, T) in
    {(5, 2, 50), (12, 4, 50), (24, 6, 100)}, B = 1024, float64 and float32
W8  as W7 at (12, 4, 50) with one system per sample (B, n, n) and per step (T, n, n)
W9  trajloss vs trajloss: a shared system vs the same matrices per sample / per step
W10 trajloss with 1 vs 2 threads over B in {64, ..., 16384}: where threads pay
W11 trajloss.jax under jax.jit: value + gradient of W1's combined_loss through
    the host callback (jax.pure_callback) and through the XLA FFI custom call,
    B in {1, 64, 1024}, beside plain JAX; and under jax.vmap over 8 problems
W12 trajloss.torch's per-call overhead: W1's loss value + gradient at B in
    {1, 64, 256}, float32, through the NumPy API, a bare torch.autograd.Function
    around that NumPy call (PyTorch's own floor) and trajloss.torch eager

Every baseline computes exactly trajloss's definition (losses.py module
docstring) and is checked against trajloss -- value and every gradient, relative
to the norm -- before it is timed; a disagreement aborts the run. All
contestants run on one thread (set here, before NumPy/PyTorch/JAX are
imported). Times are medians over batches of calls of at least
``min_batch_s`` each, after warm-up (JIT compilation excluded, reported
separately as ``first_call_s``); a case's contestants are timed in
interleaved rounds (``measure_interleaved``).
"""
from __future__ import annotations

import os

# One thread for every contestant. This must happen before NumPy, PyTorch or
# JAX are imported: their thread pools read these at start-up.
THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
}
os.environ.update(THREAD_ENV)

import argparse  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field, replace  # noqa: E402
from types import SimpleNamespace  # noqa: E402
from typing import Callable, Optional  # noqa: E402

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

#: Relative tolerance (relative to the reference's norm) of the correctness checks.
RTOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def log(msg: str) -> None:
    """Progress goes to stderr, so stdout carries only the report."""
    print(msg, file=sys.stderr, flush=True)


def import_trajloss(attempts: int = 5, pause: float = 2.0):
    """Import trajloss, retrying: its extension may be being rebuilt right now."""
    for attempt in range(attempts):
        try:
            return importlib.import_module("trajloss")
        except ImportError as exc:  # a half-written .so, typically
            if attempt == attempts - 1:
                raise
            log(f"import trajloss failed ({exc}); retrying in {pause:.0f} s")
            for name in [k for k in sys.modules if k == "trajloss" or k.startswith("trajloss.")]:
                del sys.modules[name]
            time.sleep(pause)


trajloss = import_trajloss()


# ----------------------------------------------------------------------------
# Frameworks (optional: a missing one marks its implementations unavailable)
# ----------------------------------------------------------------------------

class Unavailable(Exception):
    """An implementation cannot run here (framework missing, compile failed)."""


_FRAMEWORKS: dict = {}


def framework(name: str):
    """Import torch or jax once, configured for one thread (and float64 for JAX)."""
    if name in _FRAMEWORKS:
        mod = _FRAMEWORKS[name]
        if isinstance(mod, Exception):
            raise Unavailable(f"{name} unavailable: {mod}")
        return mod
    try:
        if name == "torch":
            import torch
            torch.set_num_threads(1)
            try:
                torch.set_num_interop_threads(1)
            except RuntimeError:  # already set, or parallel work has started
                pass
            try:  # compile in-process: no worker pool to start and wait for
                torch._inductor.config.compile_threads = 1
            except AttributeError:
                pass
            mod = torch
        elif name == "jax":
            import jax
            jax.config.update("jax_enable_x64", True)
            mod = jax
        else:
            raise ValueError(name)
    except ImportError as exc:
        _FRAMEWORKS[name] = exc
        raise Unavailable(f"{name} unavailable: {exc}") from None
    _FRAMEWORKS[name] = mod
    return mod


def to_numpy(x):
    """A NumPy array (or None) from a NumPy, PyTorch, JAX or Python value."""
    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


# ----------------------------------------------------------------------------
# Problems: framework-neutral inputs of one benchmark case
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class LossProblem:
    """The inputs and options of one loss call.

    ``kind="combined"``: ``combined_loss(system, U, x0, RU, RX, weight=...,
    terminal_weight=..., discount=..., lengths=...)``; ``kind="control"``:
    ``control_loss(U, RU, discount=..., lengths=...)``.
    """

    kind: str
    U: np.ndarray
    RU: np.ndarray
    x0: Optional[np.ndarray] = None
    RX: Optional[np.ndarray] = None
    system: object = None
    weight: float = 0.0
    terminal_weight: float = 0.0
    discount: Optional[float] = None
    lengths: Optional[np.ndarray] = None

    @property
    def dtype(self) -> np.dtype:
        return self.U.dtype

    @property
    def B(self) -> int:
        return self.U.shape[0]

    @property
    def T(self) -> int:
        return self.U.shape[1]

    @property
    def combined(self) -> bool:
        return self.kind == "combined"

    @property
    def form(self) -> Optional[str]:
        """The system's form (:func:`system_form`), None for ``control_loss``."""
        return system_form(self.system) if self.combined else None

    def label(self) -> str:
        dims = f"n={self.system.n} m={self.system.m}" if self.combined else f"D={self.U.shape[2]}"
        return f"B={self.B} T={self.T} {dims}"

    def astype(self, dtype) -> "LossProblem":
        cast = lambda a: None if a is None else np.ascontiguousarray(a, dtype=dtype)  # noqa: E731
        return replace(self, U=cast(self.U), RU=cast(self.RU), x0=cast(self.x0), RX=cast(self.RX))

    def tail(self, B: int) -> "LossProblem":
        """The last B sequences (a shared system: W11's vmapped problems)."""
        take = lambda a: None if a is None else np.ascontiguousarray(a[-B:])  # noqa: E731
        return replace(self, U=take(self.U), RU=take(self.RU), x0=take(self.x0),
                       RX=take(self.RX), lengths=take(self.lengths))

    def head(self, B: int) -> "LossProblem":
        """The first B sequences."""
        take = lambda a: None if a is None else np.ascontiguousarray(a[:B])  # noqa: E731
        system = self.system.head(B) if isinstance(self.system, Dynamics) else self.system
        return replace(self, U=take(self.U), RU=take(self.RU), x0=take(self.x0),
                       RX=take(self.RX), lengths=take(self.lengths), system=system)

    def arrays(self):
        """``(U, x0, RU, RX, L, Lf)``: Lf are the lengths in the problem's dtype."""
        Lf = None if self.lengths is None else self.lengths.astype(self.dtype)
        return self.U, self.x0, self.RU, self.RX, self.lengths, Lf


@dataclass(frozen=True)
class Dynamics:
    """Linear dynamics ``x_{k+1} = A_k x_k + B_k u_k`` given as arrays, whatever
    trajloss accepts: ``form="shared"`` Ad (n, n), Bd (n, m); ``"per_sample"``
    Ad (B, n, n), Bd (B, n, m) (sample b's own system); ``"time_varying"``
    Ad (T, n, n), Bd (T, n, m) (step k's A_k, B_k, the same for every sample).

    The baselines read only these arrays; :func:`trajloss_system` makes the
    trajloss system from them (``Unavailable`` when this build lacks the form).
    """

    form: str
    Ad: np.ndarray
    Bd: np.ndarray
    dt: Optional[float] = None

    n = property(lambda self: self.Ad.shape[-1])
    m = property(lambda self: self.Bd.shape[-1])

    def head(self, B: int) -> "Dynamics":
        if self.form != "per_sample":
            return self
        return replace(self, Ad=np.ascontiguousarray(self.Ad[:B]),
                       Bd=np.ascontiguousarray(self.Bd[:B]))

    def label(self) -> str:
        return {"shared": "", "per_sample": "per-sample ",
                "time_varying": "time-varying "}[self.form]


def system_form(system) -> str:
    """``"shared"``, ``"per_sample"`` or ``"time_varying"`` for a :class:`Dynamics`
    or a trajloss system (``steps`` / ``batch`` set on the new system classes)."""
    if isinstance(system, Dynamics):
        return system.form
    if getattr(system, "steps", None) is not None:
        return "time_varying"
    return "per_sample" if getattr(system, "batch", None) is not None else "shared"


def trajloss_system(system):
    """The trajloss system for ``system`` (a trajloss system is returned as is).

    Raises ``Unavailable`` when this trajloss build does not take the form
    (no ``TimeVaryingSystem``; ``LinearSystem`` refusing (B, n, n) matrices),
    or silently took it as another form.
    """
    if not isinstance(system, Dynamics):
        return system
    cls_name = "TimeVaryingSystem" if system.form == "time_varying" else "LinearSystem"
    cls = getattr(trajloss, cls_name, None)
    what = system.form.replace("_", "-")
    if cls is None:
        raise Unavailable(f"this trajloss build has no {cls_name} ({what} systems)")
    try:
        made = cls(system.Ad, system.Bd, dt=system.dt)
    except (TypeError, ValueError) as exc:
        raise Unavailable(f"this trajloss build does not take {what} systems: "
                          f"{type(exc).__name__}: {exc}".splitlines()[0]) from None
    if system_form(made) != system.form:
        raise Unavailable(f"this trajloss build made a {system_form(made)} system of "
                          f"{what} matrices")
    return made


def random_stable(rng, n: int, m: int, lead=(), radius=(0.9, 0.99)):
    """Random discrete systems ``Ad (*lead, n, n)`` with spectral radius drawn
    from ``radius`` and ``Bd (*lead, n, m)``, entries of order 1/sqrt(n)."""
    Ad = rng.normal(size=(*lead, n, n)) / math.sqrt(n)
    rho = np.abs(np.linalg.eigvals(Ad)).max(axis=-1)
    Ad *= (rng.uniform(*radius, size=rho.shape) / rho)[..., None, None]
    return Ad, rng.normal(size=(*lead, n, m)) / math.sqrt(m)


def step_matrices(Ad: np.ndarray, Bd: np.ndarray, T: int):
    """``(A_k, B_k)`` for k = 0 … T−1 of a shared or time-varying system."""
    if Ad.ndim == 2:
        return [Ad] * T, [Bd] * T
    return list(Ad), list(Bd)


def transition_matrices(Ad: np.ndarray, Bd: np.ndarray, T: int):
    """Φ (T·n, n) with block k = A_k ⋯ A_0, and Γ (T·n, T·m), block (k, j) =
    A_k ⋯ A_{j+1} B_j for j ≤ k: the states X[:, 1:] flattened are
    ``x0 Φᵀ + U_flat Γᵀ``. Shared (Ad (n, n): blocks Ad^{k+1} and Ad^{k−j} Bd)
    or time-varying (Ad (T, n, n)) systems."""
    As, Bs = step_matrices(Ad, Bd, T)
    n, m = Bs[0].shape
    Phi = np.zeros((T * n, n))
    P = np.eye(n)
    for k in range(T):
        P = As[k] @ P
        Phi[k * n:(k + 1) * n] = P
    Gam = np.zeros((T * n, T * m))
    for j in range(T):
        G = Bs[j]
        for k in range(j, T):
            Gam[k * n:(k + 1) * n, j * m:(j + 1) * m] = G
            if k + 1 < T:
                G = As[k + 1] @ G
    return Phi, Gam


def loss_constants(p: LossProblem) -> dict:
    """Everything a baseline may precompute once, as NumPy arrays in ``p.dtype``.

    Time weights are folded with the normalisers: the loss is
    ``Σ cw·(U − RU)² + Σ sw·(X[:, 1:] − RX[:, 1:])²`` with per-step weights
    ``cw = w/(N·m)`` and ``sw = weight·w/(N·n) + terminal_weight·[t = t_b]/(B·n)``
    (the terminal term is the trajectory residual at each sequence's last valid
    step, whose default target is ``RX[b, t_b + 1]``). Without ``lengths`` the
    weights depend on nothing per call and are constants (0-d when uniform);
    with ``lengths`` the baselines compute them on every call from these pieces.
    """
    T = p.T
    d_c = p.U.shape[2]
    n = p.system.n if p.combined else 1
    out = {}
    if p.combined:
        Ad, Bd = np.asarray(p.system.Ad), np.asarray(p.system.Bd)
        out.update(Ad=Ad, Bd=Bd, AdT=np.swapaxes(Ad, -1, -2), BdT=np.swapaxes(Bd, -1, -2))
        if p.form != "per_sample":  # per sample, Γ would be (B, T·n, T·m): 1 GB at (12, 4, 50)
            Phi, Gam = transition_matrices(Ad, Bd, T)
            out.update(Phi=Phi, Gam=Gam, PhiT=Phi.T, GamT=Gam.T)
    pw = np.ones(T) if p.discount is None else float(p.discount) ** np.arange(T, dtype=float)
    if p.lengths is None:
        N = p.B * T
        wt = None if p.discount is None else pw * T / pw.sum()
        out["cw"] = np.array(1.0 / (N * d_c)) if wt is None else wt / (N * d_c)
        if p.combined:
            if wt is None and p.terminal_weight == 0:
                out["sw"] = np.array(p.weight / (N * n))
            else:
                sw = p.weight * (np.ones(T) if wt is None else wt) / (N * n)
                sw[T - 1] += p.terminal_weight / (p.B * n)
                out["sw"] = sw
    else:
        if p.lengths.min() < 1:
            raise ValueError("benchmark lengths must be >= 1 (every sequence has a valid step)")
        out.update(tgrid=np.arange(T), pw=pw, cumpw=np.cumsum(pw), inv_dc=np.array(1.0 / d_c),
                   lam_n=np.array(p.weight / n), tau_bn=np.array(p.terminal_weight / (p.B * n)))
    return {k: np.ascontiguousarray(v if v.dtype.kind == "i" else v.astype(p.dtype))
            for k, v in out.items()}


# ----------------------------------------------------------------------------
# The loss, written once for NumPy, PyTorch and JAX arrays
# ----------------------------------------------------------------------------

def step_weights(c, L, Lf):
    """Per-step control and state weights ``(cw, sw)``: constants, or from ``lengths``.

    ``w[b, t] = γ^t·|S_b| / Σ_{s<|S_b|} γ^s`` for ``t < |S_b|``, else 0.
    """
    if L is None:
        return c.cw, getattr(c, "sw", None)
    valid = c.tgrid < L[:, None]
    w = valid * c.pw * (Lf / c.cumpw[L - 1])[:, None]
    N = Lf.sum()
    cw = w * (c.inv_dc / N)
    sw = w * (c.lam_n / N) + (c.tgrid == (L - 1)[:, None]) * c.tau_bn
    return cw, sw


def weighted(w, r):
    """``w·r`` with w 0-d, (T,) or (B, T) and r (B, T, d)."""
    return r * w if w.ndim == 0 else r * w[..., None]


def weighted_sum_sq(w, r):
    """``Σ w·r²`` (w as in :func:`weighted`)."""
    return w * (r * r).sum() if w.ndim == 0 else (w[..., None] * (r * r)).sum()


def framework_inputs(p: LossProblem):
    """``(U, x0, RU, RX1, L, Lf)`` for the PyTorch and JAX baselines: RX1 =
    ``RX[:, 1:]``, the states the trajectory term scores, sliced once outside
    the timed call (a contiguous operand is ~10 % faster in PyTorch at W1)."""
    U, x0, RU, RX, L, Lf = p.arrays()
    RX1 = None if RX is None else np.ascontiguousarray(RX[:, 1:])
    return U, x0, RU, RX1, L, Lf


def loss_value(c, rollout, U, x0, RU, RX1, L, Lf):
    """The loss as a differentiable expression (PyTorch and JAX baselines);
    ``RX1 = RX[:, 1:]``."""
    cw, sw = step_weights(c, L, Lf)
    value = weighted_sum_sq(cw, U - RU)
    if rollout is not None:
        value = value + weighted_sum_sq(sw, rollout(U, x0) - RX1)
    return value


def matrix_rollout(c):
    """``X[:, 1:] = x0 Φᵀ + U_flat Γᵀ``: one matmul pair (any framework)."""
    def rollout(U, x0):
        B, T = U.shape[0], U.shape[1]
        return (x0 @ c.PhiT + U.reshape(B, -1) @ c.GamT).reshape(B, T, -1)
    return rollout


# ----------------------------------------------------------------------------
# Implementations: setup(problem) -> callable() -> outputs (framework-native)
# ----------------------------------------------------------------------------

LOSS_OUTPUTS = ("value", "grad", "grad_x0")


def setup_trajloss(p: LossProblem) -> Callable:
    """trajloss's public NumPy API: ``combined_loss`` or ``control_loss``."""
    U, x0, RU, RX, L, _ = p.arrays()
    if p.combined:
        system = trajloss_system(p.system)  # made once, as a user makes it
        w, tw, d = p.weight, p.terminal_weight, p.discount
        # Written as a user writes the call: keywords spelled out, the unused
        # ones left out. A **kw dict of four (two of them None) cost 0.4-0.5 us
        # a call at B = 1 on the caller's side, in the closure, not in trajloss.
        if d is None and L is None:
            def call():
                r = trajloss.combined_loss(system, U, x0, RU, RX, weight=w, terminal_weight=tw)
                return r.value, r.grad, r.grad_x0
        else:
            def call():
                r = trajloss.combined_loss(system, U, x0, RU, RX, weight=w, terminal_weight=tw,
                                           discount=d, lengths=L)
                return r.value, r.grad, r.grad_x0
    else:
        def call():
            r = trajloss.control_loss(U, RU, discount=p.discount, lengths=L)
            return r.value, r.grad, None
    return call


def numpy_maps(c, sform: str):
    """``(A, Bu, At, Bt)``: ``x ↦ A_k x``, ``u ↦ B_k u``, ``λ ↦ A_kᵀ λ``, ``λ ↦ B_kᵀ λ``
    on row-vector batches (B, ·), for each system form."""
    if sform == "shared":
        return (lambda x, k: x @ c.AdT, lambda u, k: u @ c.BdT,
                lambda g, k: g @ c.Ad, lambda g, k: g @ c.Bd)
    if sform == "time_varying":
        return (lambda x, k: x @ c.AdT[k], lambda u, k: u @ c.BdT[k],
                lambda g, k: g @ c.Ad[k], lambda g, k: g @ c.Bd[k])

    def per_sample(M):  # row b times M[b]: (B, 1, ·) @ (B, ·, ·)
        return lambda v, k: np.matmul(v[:, None, :], M)[:, 0]
    return per_sample(c.AdT), per_sample(c.BdT), per_sample(c.Ad), per_sample(c.Bd)


def numpy_dynamics(c, form: str, sform: str = "shared"):
    """``(rollout, adjoint)`` in NumPy.

    ``rollout(U, x0)`` gives ``X[:, 1:]``; ``adjoint(G)`` the gradients
    ``(∂/∂U, ∂/∂x0)`` of ``Σ G·X[:, 1:]``.
    """
    if form == "matrix":
        def rollout(U, x0):
            B, T = U.shape[0], U.shape[1]
            X = x0 @ c.PhiT
            X += U.reshape(B, -1) @ c.GamT
            return X.reshape(B, T, -1)

        def adjoint(G):
            B, T = G.shape[0], G.shape[1]
            G = G.reshape(B, -1)
            return (G @ c.Gam).reshape(B, T, -1), G @ c.Phi
        return rollout, adjoint

    A, Bu, At, Bt = numpy_maps(c, sform)

    def rollout(U, x0):  # form == "loop": x_{k+1} = A_k x_k + B_k u_k
        B, T = U.shape[0], U.shape[1]
        X = np.empty((B, T, x0.shape[1]), x0.dtype)
        x = x0
        for k in range(T):
            x = A(x, k)
            x += Bu(U[:, k], k)
            X[:, k] = x
        return X

    def adjoint(G):  # λ ← λ + G_k;  ∂/∂u_k = B_kᵀ λ;  λ ← A_kᵀ λ
        B, T = G.shape[0], G.shape[1]
        gU = np.empty((B, T, c.Bd.shape[-1]), G.dtype)
        lam = np.zeros((B, G.shape[2]), G.dtype)
        for k in range(T - 1, -1, -1):
            lam += G[:, k]
            gU[:, k] = Bt(lam, k)
            lam = At(lam, k)
        return gU, lam
    return rollout, adjoint


def setup_numpy(p: LossProblem, form: Optional[str]) -> Callable:
    """Vectorised NumPy with the analytic gradient written by hand.

    ``∂ℓ/∂U = 2 cw·(U − RU) + adjoint(2 sw·(X − RX))``; the adjoint is Γᵀ/Φᵀ
    (matrix form) or the backward recursion (loop form).
    """
    c = SimpleNamespace(**loss_constants(p))
    U, x0, RU, RX, L, Lf = p.arrays()
    RX1 = RX[:, 1:] if p.combined else None
    rollout, adjoint = numpy_dynamics(c, form, p.form) if p.combined else (None, None)

    def call():
        cw, sw = step_weights(c, L, Lf)
        ru = U - RU
        gu = weighted(cw, ru)
        value = np.vdot(gu, ru)
        gx0 = None
        if rollout is not None:
            rx = rollout(U, x0)
            rx -= RX1
            gx = weighted(sw, rx)
            value += np.vdot(gx, rx)
            gdyn, gx0 = adjoint(gx)
            gu += gdyn
            gx0 *= 2
        gu *= 2
        return float(value), gu, gx0
    return call


def torch_dynamics(c, form: str, sform: str = "shared"):
    """The rollout ``X[:, 1:]`` in PyTorch, differentiated by autograd.

    ``"matrix"``: ``x0 Φᵀ + U_flat Γᵀ`` (shared and time-varying systems).
    ``"loop"``: a Python loop over ``U.unbind(1)``, per step
    ``x ← x A_kᵀ + u_k B_kᵀ`` (``bmm`` per sample). ``"loop-addmm"``: all the
    input terms ``B_k u_k`` in one batched matmul first, then one ``addmm``
    (``baddbmm`` per sample) per step. ``"loop-bcast"`` (per sample only): as
    ``"loop-addmm"`` but ``A_b x_b`` as a broadcast product summed over its
    columns, which beats ``baddbmm``'s B tiny products in float64 here.

    Slicing ``U[:, k]`` instead of ``unbind`` is slower: the backward of each
    slice writes a zero tensor of U's full size.
    """
    torch = framework("torch")
    if form == "matrix":
        if sform == "per_sample":
            raise ValueError("no matrix form for per-sample systems")
        PhiT, GamT = c.PhiT, c.GamT

        def rollout(U, x0):  # one addmm: ~15 % faster than matmul + add at W1
            B, T = U.shape[0], U.shape[1]
            return torch.addmm(x0 @ PhiT, U.reshape(B, -1), GamT).reshape(B, T, -1)
        return rollout
    if form == "loop-bcast":
        if sform != "per_sample":
            raise ValueError("the broadcast loop is for per-sample systems")
        Ad, BdT = c.Ad, c.BdT

        def rollout(U, x0):  # x_{k+1}[b, i] = Σ_j Ad[b, i, j] x_k[b, j] + (B_b u_k)[i]
            x, xs = x0, []
            for bu in torch.bmm(U, BdT).unbind(1):
                x = (Ad * x.unsqueeze(1)).sum(2) + bu
                xs.append(x)
            return torch.stack(xs, 1)
        return rollout
    if sform == "shared":
        AdT, BdT = c.AdT, c.BdT
        if form == "loop":
            def rollout(U, x0):
                x, xs = x0, []
                for u in U.unbind(1):
                    x = x @ AdT + u @ BdT
                    xs.append(x)
                return torch.stack(xs, 1)
        else:
            def rollout(U, x0):
                x, xs = x0, []
                for bu in (U @ BdT).unbind(1):
                    x = torch.addmm(bu, x, AdT)
                    xs.append(x)
                return torch.stack(xs, 1)
    elif sform == "time_varying":
        AdT, BdT = c.AdT.unbind(0), c.BdT.unbind(0)  # once, outside the timed call
        if form == "loop":
            def rollout(U, x0):
                x, xs = x0, []
                for a, b, u in zip(AdT, BdT, U.unbind(1)):
                    x = x @ a + u @ b
                    xs.append(x)
                return torch.stack(xs, 1)
        else:
            BdT_all = c.BdT

            def rollout(U, x0):  # (T, B, m) @ (T, m, n): every B_k u_k at once
                x, xs = x0, []
                for a, bu in zip(AdT, torch.bmm(U.transpose(0, 1), BdT_all).unbind(0)):
                    x = torch.addmm(bu, x, a)
                    xs.append(x)
                return torch.stack(xs, 1)
    else:  # per sample: states kept as (B, 1, n) rows for bmm
        AdT, BdT = c.AdT, c.BdT
        if form == "loop":
            def rollout(U, x0):
                x, xs = x0.unsqueeze(1), []
                for u in U.unsqueeze(2).unbind(1):
                    x = torch.bmm(x, AdT) + torch.bmm(u, BdT)
                    xs.append(x)
                return torch.cat(xs, 1)
        else:
            def rollout(U, x0):
                x, xs = x0.unsqueeze(1), []
                for bu in torch.bmm(U, BdT).unsqueeze(2).unbind(1):
                    x = torch.baddbmm(bu, x, AdT)
                    xs.append(x)
                return torch.cat(xs, 1)
    return rollout


def setup_torch(p: LossProblem, form: Optional[str], compiled: Optional[str] = None) -> Callable:
    """PyTorch autograd, eager or (``compiled`` = a backend) ``torch.compile(dynamic=False)``
    of the forward (AOTAutograd compiles the backward); gradients by ``torch.autograd.grad``."""
    torch = framework("torch")
    c = SimpleNamespace(**{k: torch.from_numpy(v) for k, v in loss_constants(p).items()})
    U, x0, RU, RX1, L, Lf = (None if a is None else torch.from_numpy(a)
                             for a in framework_inputs(p))
    leaves = (U.requires_grad_(),) + ((x0.requires_grad_(),) if p.combined else ())
    rollout = torch_dynamics(c, form, p.form) if p.combined else None

    def value_fn(U, x0, RU, RX1, L, Lf):
        return loss_value(c, rollout, U, x0, RU, RX1, L, Lf)

    if compiled:
        if not hasattr(torch, "compile"):
            raise Unavailable("torch.compile not available")
        torch._dynamo.reset()  # fresh cache: no silent eager fallback at the recompile limit
        value_fn = torch.compile(value_fn, dynamic=False, backend=compiled)

    def call():
        v = value_fn(U, x0, RU, RX1, L, Lf)
        g = torch.autograd.grad(v, leaves)
        return v, g[0], (g[1] if len(g) > 1 else None)
    return call


def jax_dynamics(c, form: str, sform: str = "shared"):
    """The rollout in JAX: matrix form or ``lax.scan`` (per step ``x A_kᵀ + u_k B_kᵀ``;
    a time-varying system scans over its matrices too, a per-sample one multiplies
    by sample)."""
    if form == "matrix":
        return matrix_rollout(c)
    jax = framework("jax")
    jnp = jax.numpy

    def rollout(U, x0):
        if sform == "time_varying":
            def step(x, abu):
                a, b, u = abu
                x = x @ a + u @ b
                return x, x
            xs_in = (c.AdT, c.BdT, jnp.swapaxes(U, 0, 1))
        elif sform == "per_sample":
            def step(x, u):
                x = jnp.einsum("bi,bij->bj", x, c.AdT) + jnp.einsum("bi,bij->bj", u, c.BdT)
                return x, x
            xs_in = jnp.swapaxes(U, 0, 1)
        else:
            def step(x, u):
                x = x @ c.AdT + u @ c.BdT
                return x, x
            xs_in = jnp.swapaxes(U, 0, 1)
        _, xs = jax.lax.scan(step, x0, xs_in)
        return jnp.swapaxes(xs, 0, 1)
    return rollout


def setup_jax(p: LossProblem, form: Optional[str]) -> Callable:
    """``jax.jit(jax.value_and_grad(loss, argnums=(controls, x0)))``."""
    jax = framework("jax")
    c = SimpleNamespace(**{k: jax.numpy.asarray(v) for k, v in loss_constants(p).items()})
    args = tuple(None if a is None else jax.device_put(a) for a in framework_inputs(p))
    rollout = jax_dynamics(c, form, p.form) if p.combined else None

    def value_fn(U, x0, RU, RX1, L, Lf):
        return loss_value(c, rollout, U, x0, RU, RX1, L, Lf)

    step = jax.jit(jax.value_and_grad(value_fn, argnums=(0, 1) if p.combined else 0))

    def call():
        v, g = jax.block_until_ready(step(*args))
        return (v, *g) if p.combined else (v, g, None)
    return call


@dataclass(frozen=True)
class Impl:
    """A contestant: ``setup(problem, mode) -> callable``; ``family`` groups its forms."""

    name: str
    family: str
    setup: Callable


# family "torch" = PyTorch eager: the speed targets compare with its fastest form
NUMPY_MATRIX = Impl("numpy-matrix", "numpy", lambda p, mode: setup_numpy(p, "matrix"))
NUMPY_LOOP = Impl("numpy-loop", "numpy", lambda p, mode: setup_numpy(p, "loop"))
TORCH_LOOP = Impl("torch-loop", "torch", lambda p, mode: setup_torch(p, "loop"))
TORCH_ADDMM = Impl("torch-loop-addmm", "torch", lambda p, mode: setup_torch(p, "loop-addmm"))
TORCH_MATRIX = Impl("torch-matrix", "torch", lambda p, mode: setup_torch(p, "matrix"))
TORCH_COMPILE = Impl("torch.compile-matrix", "torch.compile",
                     lambda p, mode: setup_torch(p, "matrix", compiled=mode.compile_backend))
JAX_SCAN = Impl("jax-scan", "jax", lambda p, mode: setup_jax(p, "loop"))
JAX_MATRIX = Impl("jax-matrix", "jax", lambda p, mode: setup_jax(p, "matrix"))

COMBINED_IMPLS = (NUMPY_MATRIX, NUMPY_LOOP, TORCH_LOOP, TORCH_ADDMM, TORCH_MATRIX, TORCH_COMPILE,
                  JAX_SCAN, JAX_MATRIX)
#: W7 (general sizes): PyTorch eager in its three forms, JAX's scan.
GENERAL_IMPLS = (TORCH_LOOP, TORCH_ADDMM, TORCH_MATRIX, JAX_SCAN)
#: W8: no matrix form per sample (Γ per sample would be B·T·n·T·m numbers).
TORCH_BCAST = Impl("torch-loop-bcast", "torch", lambda p, mode: setup_torch(p, "loop-bcast"))
FORM_IMPLS = {"per_sample": (NUMPY_LOOP, TORCH_LOOP, TORCH_ADDMM, TORCH_BCAST, JAX_SCAN),
              "time_varying": (NUMPY_LOOP, TORCH_LOOP, TORCH_ADDMM, TORCH_MATRIX, JAX_SCAN)}
CONTROL_IMPLS = (
    Impl("numpy", "numpy", lambda p, mode: setup_numpy(p, None)),
    Impl("torch-eager", "torch", lambda p, mode: setup_torch(p, None)),
    Impl("torch.compile", "torch",
         lambda p, mode: setup_torch(p, None, compiled=mode.compile_backend)),
    Impl("jax-jit", "jax", lambda p, mode: setup_jax(p, None)),
)


# --- W4: minimum-energy references ------------------------------------------

@dataclass(frozen=True)
class MinEnergyProblem:
    """``min_energy(system, x0, xf, steps, method="exact")`` for a batch."""

    system: object
    x0: np.ndarray
    xf: np.ndarray
    steps: int

    def label(self) -> str:
        return f"N={len(self.x0)} T={self.steps}"


MIN_ENERGY_OUTPUTS = ("controls", "states", "energy")


def min_energy_matrices(p: MinEnergyProblem):
    """``P_u (2n, T·m)``, ``P_x (2n, (T+1)·n)`` with ``[x0, xf] P_u = U_flat`` and
    ``[x0, xf] P_x = X_flat``: the pseudo-inverse ``K = Cᵀ(CCᵀ)⁻¹`` gives
    ``U = K (xf − Ad^T x0)``, and the states follow through Φ and Γ."""
    Ad, Bd, T = np.asarray(p.system.Ad), np.asarray(p.system.Bd), p.steps
    n = Ad.shape[0]
    Phi, Gam = transition_matrices(Ad, Bd, T)
    C = Gam[-n:]                                     # [Ad^{T-1}Bd ... Bd]
    K = np.linalg.solve(C @ C.T, C).T                # Cᵀ W⁻¹, (T·m, n)
    AdT_pow = Phi[-n:]                               # Ad^T
    Pu = np.vstack([-(K @ AdT_pow).T, K.T])          # (2n, T·m)
    Px = np.zeros((2 * n, (T + 1) * n))
    Px[:n, :n] = np.eye(n)
    Px[:, n:] = np.vstack([Phi.T, np.zeros((n, T * n))]) + Pu @ Gam.T
    return Pu, Px


def setup_min_energy_trajloss(p: MinEnergyProblem, mode=None) -> Callable:
    def call():
        r = trajloss.min_energy(p.system, p.x0, p.xf, p.steps, method="exact")
        return r.controls, r.states, r.energy
    return call


def setup_min_energy_numpy(p: MinEnergyProblem, mode=None) -> Callable:
    """Precomputed pseudo-inverse: two matmuls, plus energy and final error."""
    Pu, Px = min_energy_matrices(p)
    B, n, m, T = len(p.x0), p.system.n, p.system.m, p.steps
    dt = 1.0 if p.system.dt is None else p.system.dt

    def call():
        z = np.concatenate([p.x0, p.xf], axis=1)
        U = z @ Pu
        X = z @ Px
        energy = np.einsum("bi,bi->b", U, U) * dt
        final_error = np.linalg.norm(X[:, -n:] - p.xf, axis=1)  # noqa: F841 (same work as trajloss)
        return U.reshape(B, T, m), X.reshape(B, T + 1, n), energy
    return call


def setup_min_energy_jax(p: MinEnergyProblem, mode=None) -> Callable:
    """``jax.jit`` of the NumPy pseudo-inverse form."""
    jax = framework("jax")
    jnp = jax.numpy
    Pu, Px = (jnp.asarray(a) for a in min_energy_matrices(p))
    B, n, m, T = len(p.x0), p.system.n, p.system.m, p.steps
    dt = 1.0 if p.system.dt is None else p.system.dt

    @jax.jit
    def solve(x0, xf):
        z = jnp.concatenate([x0, xf], axis=1)
        U, X = z @ Pu, z @ Px
        final_error = jnp.linalg.norm(X[:, -n:] - xf, axis=1)
        return U.reshape(B, T, m), X.reshape(B, T + 1, n), (U * U).sum(1) * dt, final_error

    x0, xf = jax.device_put(p.x0), jax.device_put(p.xf)

    def call():
        return jax.block_until_ready(solve(x0, xf))[:3]
    return call


MIN_ENERGY_IMPLS = (
    Impl("numpy-pinv", "numpy", setup_min_energy_numpy),
    Impl("jax-pinv", "jax", setup_min_energy_jax),
)


# ----------------------------------------------------------------------------
# Timing and checking
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Mode:
    """Sizes and timing effort of a run."""

    name: str
    repeats: int           # measurements per point (the median is reported)
    min_batch_s: float     # each measurement runs calls for at least this long
    warmup: int            # calls after the first (checked, compiling) one
    budget_s: float        # fewer measurements when one point would take longer
    skip_slow_s: Optional[float]  # --quick: a baseline slower than this per call is not timed
    w1_sizes: tuple
    w2: tuple              # (B, T)
    w3: tuple              # (B, T)
    w4_samples: int
    w6_B: int
    compile_backend: str = "inductor"  # torch.compile backend
    general: tuple = ((5, 2, 50), (12, 4, 50), (24, 6, 100))  # W7 (n, m, T)
    general_B: int = 1024                                      # W7, W8, W9 batch
    forms_size: tuple = (12, 4, 50)                            # W8, W9 (n, m, T)
    thread_B: tuple = (64, 256, 1024, 4096, 16384)             # W10
    jax_B: tuple = (1, 64, 1024)                               # W11
    jax_vmap: tuple = ((8, 1), (8, 64))                        # W11 (problems, B) under vmap
    overhead_B: tuple = (1, 64, 256)                           # W12


MODES = {
    "full": Mode("full", 7, 0.02, 2, 60.0, None, (1, 64, 1024, 16384, 262144),
                 (4096, 100), (1024, 100), 10**6, 262144),
    "quick": Mode("quick", 3, 0.02, 2, 6.0, 3.0, (1, 64, 1024, 16384, 262144),
                  (4096, 100), (1024, 100), 10**6, 262144),
    # Inductor's C++ code generation takes seconds per graph: too slow for a smoke test.
    # aot_eager still exercises Dynamo capture and AOTAutograd of the same function.
    "tiny": Mode("tiny", 3, 0.002, 2, 1.0, None, (1, 64), (8, 10), (8, 10), 100, 8,
                 compile_backend="aot_eager", general=((3, 2, 6), (4, 1, 5)), general_B=8,
                 forms_size=(3, 2, 6), thread_B=(8, 16), jax_B=(1, 8), jax_vmap=((2, 8),),
                 overhead_B=(1, 8)),
}


def measure(fn: Callable, mode: Mode, repeats: Optional[int] = None) -> dict:
    """Median per-call time of ``fn`` over ``repeats`` batches of ≥ ``min_batch_s``.

    The caller has already made the first (checked, compiling) call.
    """
    return measure_interleaved([fn], mode, repeats)[0]


def measure_interleaved(fns, mode: Mode, repeats: Optional[int] = None) -> list:
    """``measure`` for several functions at once, in rounds: each round times
    one batch of every function that still has measurements to take.

    This machine is a virtual machine whose speed drifts by 20-50 % over
    seconds; timing one contestant after the other put them in different
    phases and a ratio could move by that much. Interleaved, every contestant
    sees the same phases. Each keeps its own batch size and its own number of
    measurements (at most ``repeats``, fewer if it is slow: ``budget_s``).
    """
    repeats = repeats or mode.repeats
    plans = []
    for fn in fns:
        for _ in range(mode.warmup):
            fn()
        t0 = time.perf_counter()
        fn()
        single = time.perf_counter() - t0
        calls = max(1, math.ceil(mode.min_batch_s / max(single, 1e-9)))
        plans.append((fn, calls, max(1, min(repeats, int(mode.budget_s / max(single * calls, 1e-9))))))
    times = [[] for _ in fns]
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(max(p[2] for p in plans)):
            for (fn, calls, count), out in zip(plans, times):
                if r >= count:
                    continue
                t0 = time.perf_counter()
                for _ in range(calls):
                    fn()
                out.append((time.perf_counter() - t0) / calls)
    finally:
        if gc_was_enabled:
            gc.enable()
    return [{"median_s": statistics.median(t), "min_s": min(t), "times_s": t,
             "calls_per_measurement": calls, "measurements": count}
            for t, (_, calls, count) in zip(times, plans)]


class CheckFailed(Exception):
    """A baseline disagrees with trajloss."""


def check(case: str, impl: str, names, got, ref, rtol: float) -> float:
    """Relative errors ``‖got − ref‖ / ‖ref‖`` of every output; raise above ``rtol``."""
    worst = 0.0
    for name, a, b in zip(names, got, ref):
        a, b = to_numpy(a), to_numpy(b)
        if (a is None) != (b is None):
            raise CheckFailed(f"{case}: {impl} {name}: one of trajloss/{impl} returned None")
        if b is None:
            continue
        a, b = a.astype(np.float64), b.astype(np.float64)
        if a.shape != b.shape:
            raise CheckFailed(f"{case}: {impl} {name}: shape {a.shape} != trajloss {b.shape}")
        err = float(np.linalg.norm(a - b) / max(np.linalg.norm(b), np.finfo(float).tiny))
        if not err <= rtol:  # NaN fails too
            raise CheckFailed(f"{case}: {impl} disagrees with trajloss on {name}: "
                              f"relative error {err:.3e} > {rtol:.0e}")
        worst = max(worst, err)
    return worst


# ----------------------------------------------------------------------------
# Running cases
# ----------------------------------------------------------------------------

@dataclass
class Context:
    mode: Mode
    threads: int
    rows: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def note(self, msg: str) -> None:
        if msg not in self.notes:
            self.notes.append(msg)
            log("note: " + msg)

    def run_case(self, workload: str, case: str, dtype, setup_ref: Callable, impls,
                 problem, outputs, extra_row=None, ref_name: str = "trajloss",
                 missing: Optional[dict] = None, repeats: Optional[int] = None) -> list:
        """Check every implementation against the reference (trajloss; ``ref_name``
        names another when this build cannot run the case), then time each one.
        ``missing``: ``{implementation: reason}`` reported as skipped rows."""
        dtype = np.dtype(dtype)
        rtol = RTOL[dtype]
        title = f"{workload} {case} {dtype.name}"
        base = dict(workload=workload, case=case, dtype=dtype.name, **(extra_row or {}))
        ref_fn = setup_ref(problem)
        t0 = time.perf_counter()
        ref = ref_fn()
        first = time.perf_counter() - t0
        for name, a in zip(outputs, ref):
            if a is not None and not np.all(np.isfinite(to_numpy(a))):
                raise CheckFailed(f"{title}: trajloss {name} is not finite")
        contestants = [(ref_name, "trajloss" if ref_name == "trajloss" else "reference",
                        ref_fn, first, 0.0)]
        rows = [dict(base, impl=name, family="trajloss", checked=False, skipped=reason)
                for name, reason in (missing or {}).items()]
        for impl in impls:  # set up and check everything first
            try:
                call = impl.setup(problem, self.mode)
                t0 = time.perf_counter()
                got = call()
                first = time.perf_counter() - t0
            except Unavailable as exc:
                self.note(f"{impl.name}: {exc}")
                rows.append(dict(base, impl=impl.name, family=impl.family, checked=False,
                                 skipped=str(exc)))
                continue
            except Exception as exc:
                if impl.name.startswith("torch.compile"):  # report, do not abort
                    msg = f"torch.compile failed: {type(exc).__name__}: {exc}".splitlines()[0]
                    self.note(f"{title} {impl.name}: {msg}")
                    rows.append(dict(base, impl=impl.name, family=impl.family, checked=False,
                                     skipped=msg))
                    continue
                raise
            err = check(title, impl.name, outputs, got, ref, rtol)
            contestants.append((impl.name, impl.family, call, first, err))
        timed = []
        for name, family, fn, first, err in contestants:
            row = dict(base, impl=name, family=family, checked=True, max_rel_err=err,
                       first_call_s=first)
            limit = self.mode.skip_slow_s
            if name != ref_name and limit is not None and first > limit:
                t0 = time.perf_counter()  # the first call may have been compiling
                fn()
                first = time.perf_counter() - t0
            if name != ref_name and limit is not None and first > limit:
                row.update(skipped=f"one call took {first:.1f} s > {limit} s "
                                   f"(--{self.mode.name})")
            else:
                timed.append((row, fn))
            rows.append(row)
        for (row, _), timing in zip(timed, measure_interleaved([fn for _, fn in timed],
                                                               self.mode, repeats)):
            row.update(timing)
        for row in rows:
            log(f"  {title:<40} {row['impl']:<22} "
                + (fmt_time(row["median_s"]) if "median_s" in row else row["skipped"]))
        del contestants
        gc.collect()
        t_ref = next(r for r in rows if r["impl"] == ref_name)["median_s"]
        for r in rows:
            if "median_s" in r:
                r["ratio"] = r["median_s"] / t_ref
        order = list(missing or {}) + [ref_name] + [i.name for i in impls]
        rows.sort(key=lambda r: order.index(r["impl"]))
        self.rows.extend(rows)
        return rows

    def run_loss_case(self, workload: str, problem: LossProblem, case: Optional[str] = None,
                      impls=None):
        """A loss case against trajloss. When this trajloss build cannot take the
        problem's system form, the first NumPy implementation in ``impls`` (a
        hand-written adjoint) is the reference the others are checked against,
        and trajloss's row says why it is missing."""
        if impls is None:
            impls = COMBINED_IMPLS if problem.combined else CONTROL_IMPLS
        case = case or problem.label()
        extra = dict(B=problem.B, form=problem.form)
        if problem.combined:
            extra.update(n=problem.system.n, m=problem.system.m, T=problem.T)
        try:
            if problem.combined:
                trajloss_system(problem.system)
        except Unavailable as exc:
            ref = next(i for i in impls if i.family == "numpy")
            self.note(f"{workload} {case}: {exc}; baselines checked against {ref.name}")
            return self.run_case(workload, case, problem.dtype,
                                 lambda p: ref.setup(p, self.mode),
                                 [i for i in impls if i is not ref], problem, LOSS_OUTPUTS,
                                 extra_row=extra, ref_name=ref.name,
                                 missing={"trajloss": str(exc)})
        return self.run_case(workload, case, problem.dtype, setup_trajloss,
                             impls, problem, LOSS_OUTPUTS, extra_row=extra)


# ----------------------------------------------------------------------------
# Workloads
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    run: Callable


WORKLOADS: dict = {}


def workload(key: str, title: str):
    def register(fn):
        WORKLOADS[key] = Workload(key, title, fn)
        return fn
    return register


W1_T, W1_WEIGHT, W1_TERMINAL = 15, 0.3, 0.0


def w1_problem(B: int) -> LossProblem:
    """The double-integrator study's setting: exact references (make_dataset), noisy predictions."""
    system = trajloss.DoubleIntegrator(dt=1 / 3)
    data = trajloss.make_dataset(system, B, W1_T, seed=0)
    rng = np.random.default_rng(1)
    U = data.controls + rng.normal(0.0, 1.0, data.controls.shape)
    return LossProblem("combined", U, data.controls, data.x0, data.states, system,
                       weight=W1_WEIGHT, terminal_weight=W1_TERMINAL)


def w1_bytes(B: int, itemsize: int) -> tuple:
    """Bytes W1 must read (controls, x0, ref_controls, ref_states) and write (grad, grad_x0)."""
    T, n, m = W1_T, 2, 1
    read = B * (T * m + n + T * m + (T + 1) * n) * itemsize
    write = B * (T * m + n) * itemsize
    return read, write


@workload("W1", "combined_loss value+grad, double integrator, T=15")
def run_w1(ctx: Context):
    full = w1_problem(max(ctx.mode.w1_sizes))
    for B in ctx.mode.w1_sizes:
        for dtype in DTYPES:
            ctx.run_loss_case("W1", full.head(B).astype(dtype), case=f"B={B}")


@workload("W2", "combined_loss, 6-state 2-input LTI, discount 0.97, lengths, terminal")
def run_w2(ctx: Context):
    B, T = ctx.mode.w2
    rng = np.random.default_rng(2)
    n, m, dt = 6, 2, 0.1
    A = rng.normal(size=(n, n))
    A -= (np.linalg.eigvals(A).real.max() + 0.2) * np.eye(n)  # all eigenvalues Re <= -0.2
    system = trajloss.LinearSystem.from_continuous(A, rng.normal(size=(n, m)), dt)
    x0 = rng.normal(size=(B, n))
    RU = rng.normal(size=(B, T, m))
    RX = trajloss.rollout(system, x0, RU)
    U = RU + rng.normal(0.0, 0.3, RU.shape)
    lengths = rng.integers(T // 2, T + 1, size=B)
    p = LossProblem("combined", U, RU, x0, RX, system, weight=0.3, terminal_weight=0.5,
                    discount=0.97, lengths=lengths)
    for dtype in DTYPES[::-1]:
        ctx.run_loss_case("W2", p.astype(dtype))


@workload("W3", "time-weighted behaviour-cloning control_loss, discount 0.375, D=6")
def run_w3(ctx: Context):
    B, T = ctx.mode.w3
    rng = np.random.default_rng(3)
    target = rng.normal(size=(B, T, 6))
    pred = target + rng.normal(0.0, 0.5, target.shape)
    p = LossProblem("control", pred, target, discount=0.375)
    for dtype in DTYPES:
        ctx.run_loss_case("W3", p.astype(dtype))


@workload("W4", "min_energy(method='exact'), double integrator, T=15")
def run_w4(ctx: Context):
    N = ctx.mode.w4_samples
    rng = np.random.default_rng(4)
    system = trajloss.DoubleIntegrator(dt=1 / 3)
    x0 = rng.uniform([-10, -5], [10, 5], size=(N, 2))
    xf = rng.uniform([-1, -0.5], [1, 0.5], size=(N, 2))
    p = MinEnergyProblem(system, x0, xf, 15)
    ctx.run_case("W4", p.label(), np.float64, setup_min_energy_trajloss, MIN_ENERGY_IMPLS, p,
                 MIN_ENERGY_OUTPUTS, extra_row=dict(B=N))


@workload("W5", "per-call overhead at B=1")
def run_w5(ctx: Context):
    ctx.run_loss_case("W5", w1_problem(1), case="combined_loss B=1")
    rng = np.random.default_rng(5)
    target = rng.normal(size=(1, W1_T, 1))
    p = LossProblem("control", target + rng.normal(0, 0.5, target.shape), target)
    ctx.run_loss_case("W5", p, case="control_loss B=1")


@workload("W6", "memory floor of W1 at the largest B: one copy of its bytes")
def run_w6(ctx: Context):
    """The copy is timed in the same rounds as trajloss's W1 call at the same
    B, so the ratio compares two medians taken through the same phases of the
    machine; ``floor_s`` is the copy's best time, the hardware's limit."""
    B = ctx.mode.w6_B
    full = w1_problem(B)
    for dtype in DTYPES:
        read, write = w1_bytes(B, dtype.itemsize)
        elems = (read + write) // 2 // 8  # src and dst: read + write bytes in all
        src = np.random.default_rng(6).random(elems)
        dst = np.zeros_like(src)          # touched: no page faults while timing

        def copy():
            np.copyto(dst, src)
        copy()
        ok = bool(np.array_equal(dst, src))
        loss = setup_trajloss(full.astype(dtype))
        loss()
        timing, tl = measure_interleaved([copy, loss], ctx.mode,
                                         repeats=max(10, ctx.mode.repeats))
        floor = timing["min_s"]
        row = dict(workload="W6", case=f"B={B}", dtype=dtype.name, B=B, impl="numpy-copy",
                   family="floor", checked=ok, bytes_read=read, bytes_written=write,
                   floor_s=floor, gb_per_s=(read + write) / floor / 1e9,
                   trajloss_median_s=tl["median_s"], trajloss_min_s=tl["min_s"],
                   ratio_to_floor=tl["median_s"] / timing["median_s"],
                   ratio_to_floor_best=tl["min_s"] / floor, **timing)
        ctx.rows.append(row)
        log(f"  W6 B={B} {dtype.name}: {(read + write) / 1e6:.1f} MB in {fmt_time(floor)} "
            f"({row['gb_per_s']:.1f} GB/s); trajloss / copy, same rounds: "
            f"{row['ratio_to_floor']:.2f} (medians), {row['ratio_to_floor_best']:.2f} (bests)")
        del src, dst


GENERAL_WEIGHT = 1.0  # W7-W10: control and trajectory terms weighted alike


def general_problem(n: int, m: int, T: int, B: int, form: str = "shared",
                    seed: int = 7) -> LossProblem:
    """``combined_loss`` on a random stable system (:func:`random_stable`):
    shared, one per sample (B, n, n) or one per step (T, n, n). References are
    an exact rollout of random controls (a NumPy loop, not trajloss);
    predictions are the references' controls plus noise."""
    rng = np.random.default_rng([seed, n, m, T])
    lead = {"shared": (), "per_sample": (B,), "time_varying": (T,)}[form]
    Ad, Bd = random_stable(rng, n, m, lead)
    x0 = rng.normal(size=(B, n))
    RU = rng.normal(size=(B, T, m))
    c = SimpleNamespace(Ad=Ad, Bd=Bd, AdT=np.swapaxes(Ad, -1, -2), BdT=np.swapaxes(Bd, -1, -2))
    X = numpy_dynamics(c, "loop", form)[0](RU, x0)
    RX = np.concatenate([x0[:, None], X], axis=1)
    U = RU + rng.normal(0.0, 0.3, RU.shape)
    return LossProblem("combined", U, RU, x0, RX, Dynamics(form, Ad, Bd), weight=GENERAL_WEIGHT)


def size_label(n: int, m: int, T: int, B: int, form: str = "shared") -> str:
    return f"{Dynamics(form, np.zeros(0), np.zeros(0)).label()}({n},{m},{T}) B={B}"


@workload("W7", "combined_loss value+grad, random stable systems at general sizes")
def run_w7(ctx: Context):
    B = ctx.mode.general_B
    for n, m, T in ctx.mode.general:
        p = general_problem(n, m, T, B)
        for dtype in DTYPES[::-1]:
            ctx.run_loss_case("W7", p.astype(dtype), case=size_label(n, m, T, B),
                              impls=GENERAL_IMPLS)


@workload("W8", "combined_loss value+grad, per-sample and time-varying systems")
def run_w8(ctx: Context):
    (n, m, T), B = ctx.mode.forms_size, ctx.mode.general_B
    for form in ("per_sample", "time_varying"):
        p = general_problem(n, m, T, B, form)
        for dtype in DTYPES[::-1]:
            ctx.run_loss_case("W8", p.astype(dtype), case=size_label(n, m, T, B, form),
                              impls=FORM_IMPLS[form])


def as_form(p: LossProblem, form: str) -> LossProblem:
    """The same problem with the shared system's matrices given once per sample
    (B, n, n) or once per step (T, n, n): the same numbers, another form."""
    Ad, Bd = np.asarray(p.system.Ad), np.asarray(p.system.Bd)
    count = p.B if form == "per_sample" else p.T
    rep = lambda a: np.ascontiguousarray(np.broadcast_to(a, (count, *a.shape)))  # noqa: E731
    return replace(p, system=Dynamics(form, rep(Ad), rep(Bd), getattr(p.system, "dt", None)))


SAME_MATRICES_IMPLS = (
    Impl("trajloss-per-sample", "trajloss-form",
         lambda p, mode: setup_trajloss(as_form(p, "per_sample"))),
    Impl("trajloss-time-varying", "trajloss-form",
         lambda p, mode: setup_trajloss(as_form(p, "time_varying"))),
)


@workload("W9", "trajloss: a shared system vs the same matrices per sample / per step")
def run_w9(ctx: Context):
    """trajloss against itself: ratio = (same matrices per sample) / shared;
    the shared form must not be the slower one."""
    (n, m, T), B = ctx.mode.forms_size, ctx.mode.general_B
    cases = [(size_label(n, m, T, B), general_problem(n, m, T, B)),
             (f"double integrator B={B}", w1_problem(B))]
    for case, p in cases:
        for dtype in DTYPES[::-1]:
            ctx.run_case("W9", case, dtype, setup_trajloss, SAME_MATRICES_IMPLS, p.astype(dtype),
                         LOSS_OUTPUTS, extra_row=dict(B=B, form="shared"))


def cpu_per_wall(fn: Callable, calls: int) -> float:
    """Process CPU time over wall time of ``calls`` calls: about 2 when a second
    thread did half the work, 1.00 when it did none (or never got a core: the
    VM is shared), below 1 when this process itself waited for a core."""
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.process_time() - c0) / (time.perf_counter() - w0)


#: 2 threads "pay" from the smallest B at which they are at least this much faster
#: (there and at every larger B measured).
THREADS_PAY = 1.1


@workload("W10", "trajloss threads: 1 vs 2 over B, double integrator and (12,4,50)")
def run_w10(ctx: Context):
    """trajloss with set_num_threads(1) and (2), alternated in the same rounds,
    over B; results must be bit-identical. ``crossover``: the smallest B from
    which 2 threads are >= THREADS_PAY times faster."""
    setter = getattr(trajloss, "set_num_threads", None)
    if setter is None:
        ctx.extra["thread_scaling"] = {"available": False}
        ctx.note("trajloss.set_num_threads not available: thread scaling skipped")
        return
    sizes = ctx.mode.thread_B
    (n, m, T) = ctx.mode.forms_size
    cases = [("double integrator", w1_problem(max(sizes))),
             (f"({n},{m},{T})", general_problem(n, m, T, max(sizes)))]
    lines, crossovers = [], []
    try:
        for label, full in cases:
            for dtype in DTYPES[::-1]:
                speedups = []
                for B in sizes:
                    fn = setup_trajloss(full.head(B).astype(dtype))

                    def with_threads(k, fn=fn):
                        def call():
                            setter(k)
                            return fn()
                        return call
                    one, two = with_threads(1), with_threads(2)
                    out1, out2 = one(), two()
                    # at least 7 rounds even in --quick: two contestants a few per cent
                    # apart, and the crossover reads a whole row of them
                    m1, m2 = measure_interleaved([one, two], ctx.mode,
                                                 repeats=max(ctx.mode.repeats, 7))
                    t1, t2 = m1["median_s"], m2["median_s"]
                    identical = all((a is None and b is None) or np.array_equal(a, b)
                                    for a, b in zip(out1, out2))
                    if not identical:
                        raise CheckFailed(f"W10 {label} B={B} {dtype.name}: 1 and 2 threads "
                                          "give different bits")
                    lines.append(dict(case=label, B=B, dtype=dtype.name, t1_s=t1, t2_s=t2,
                                      speedup=t1 / t2, bit_identical=True,
                                      speedup_best=m1["min_s"] / m2["min_s"],
                                      cpu_per_wall_2=cpu_per_wall(two, m2["calls_per_measurement"])))
                    speedups.append(t1 / t2)
                    log(f"  W10 {label} B={B} {dtype.name}: 1 thread {fmt_time(t1)}, "
                        f"2 threads {fmt_time(t2)}: {t1 / t2:.2f}x (CPU / wall with 2: "
                        f"{lines[-1]['cpu_per_wall_2']:.2f})")
                pays = [B for i, B in enumerate(sizes)
                        if all(s >= THREADS_PAY for s in speedups[i:])]
                crossovers.append(dict(case=label, dtype=dtype.name,
                                       crossover_B=pays[0] if pays else None))
    finally:
        setter(ctx.threads)
    ctx.extra["thread_scaling"] = {"available": True, "threshold": THREADS_PAY,
                                   "results": lines, "crossover": crossovers}


# --- W11: trajloss.jax, host callback vs XLA FFI ------------------------------

@dataclass(frozen=True)
class VmapProblem:
    """Independent loss problems of one size, stacked along a new leading axis:
    what ``jax.vmap`` maps over (each keeps its own batch and normalisation)."""

    problems: tuple

    dtype = property(lambda self: self.problems[0].dtype)

    def stacked(self):
        """``(U, x0, RU, RX)``, each with the problems' axis first."""
        return tuple(np.stack(a) for a in zip(*(p.arrays()[:4] for p in self.problems)))


def setup_trajloss_loop(q: VmapProblem) -> Callable:
    """The reference of a vmapped case: trajloss's NumPy API once per problem."""
    calls = [setup_trajloss(p) for p in q.problems]

    def call():
        return tuple(np.stack(o) for o in zip(*(c() for c in calls)))
    return call


def setup_trajloss_jax(p, path: str) -> Callable:
    """``jax.jit(jax.value_and_grad(trajloss.jax.combined_loss, argnums=(controls,
    x0)))`` (under ``jax.vmap`` for a :class:`VmapProblem`), traced with
    trajloss.jax's ``path``: ``"callback"`` (jax.pure_callback into the NumPy
    API) or ``"ffi"`` (the XLA custom call). The compiled program is checked to
    hold that path's call and not the other's."""
    jax = framework("jax")
    tlj = importlib.import_module("trajloss.jax")
    if path == "ffi" and tlj.BACKEND != "ffi":
        raise Unavailable(f"trajloss.jax has no FFI path in this build (BACKEND = "
                          f"{tlj.BACKEND!r})")
    vmapped = isinstance(p, VmapProblem)
    first = p.problems[0] if vmapped else p
    system = trajloss_system(first.system)
    w, tw = first.weight, first.terminal_weight

    def loss(U, x0, RU, RX):
        return tlj.combined_loss(system, U, x0, RU, RX, weight=w, terminal_weight=tw)

    fn = jax.value_and_grad(loss, argnums=(0, 1))
    step = jax.jit(jax.vmap(fn) if vmapped else fn)
    args = [jax.device_put(a) for a in (p.stacked() if vmapped else p.arrays()[:4])]
    saved = tlj.BACKEND
    tlj.BACKEND = path  # read when a call is traced; jit keeps what it compiled
    try:
        hlo = step.lower(*args).as_text()
        jax.block_until_ready(step(*args))
    finally:
        tlj.BACKEND = saved
    ffi, callback = "trajloss_rollout_loss" in hlo, "callback" in hlo
    if (ffi, callback) != ((True, False) if path == "ffi" else (False, True)):
        raise CheckFailed(f"trajloss.jax-{path}: the compiled program has FFI call {ffi}, "
                          f"host callback {callback}")

    def call():
        v, (gu, gx) = jax.block_until_ready(step(*args))
        return v, gu, gx
    call()
    if step._cache_size() != 1:  # a retrace could have taken the other path
        raise CheckFailed(f"trajloss.jax-{path}: traced more than once")
    return call


TLJ_CALLBACK = Impl("trajloss.jax-callback", "trajloss.jax",
                    lambda p, mode: setup_trajloss_jax(p, "callback"))
TLJ_FFI = Impl("trajloss.jax-ffi", "trajloss.jax", lambda p, mode: setup_trajloss_jax(p, "ffi"))
#: W11: trajloss.jax's two paths, and plain JAX (the loss written in jax.numpy) at its best
JAX_PATH_IMPLS = (TLJ_CALLBACK, TLJ_FFI, JAX_SCAN, JAX_MATRIX)


@workload("W11", "trajloss.jax under jit and vmap: host callback vs XLA FFI")
def run_w11(ctx: Context):
    """W1's problem, value and gradient under ``jax.jit``: through the host
    callback, through the FFI custom call, and plain JAX; then ``jax.vmap`` over
    several problems, checked against trajloss's NumPy API called per problem."""
    full = w1_problem(max(ctx.mode.jax_B))
    for B in ctx.mode.jax_B:
        for dtype in DTYPES:
            ctx.run_loss_case("W11", full.head(B).astype(dtype), case=f"B={B}",
                              impls=JAX_PATH_IMPLS)
    for V, B in ctx.mode.jax_vmap:
        problems = w1_problem(V * B)
        for dtype in DTYPES:
            q = VmapProblem(tuple(problems.astype(dtype).head((v + 1) * B).tail(B)
                                  for v in range(V)))
            ctx.run_case("W11", f"vmap {V} x B={B}", dtype, setup_trajloss_loop,
                         (TLJ_CALLBACK, TLJ_FFI), q, LOSS_OUTPUTS,
                         extra_row=dict(B=B, problems=V), ref_name="trajloss-loop")
# --- W12: trajloss.torch's per-call overhead --------------------------------

def setup_torch_floor(p: LossProblem, mode=None) -> Callable:
    """PyTorch's own floor: a minimal ``torch.autograd.Function`` around the
    NumPy API's call -- NumPy views of the four tensors, the value returned as
    a 0-d tensor, backward scales the fused gradient -- and
    ``torch.autograd.grad``, as trajloss.torch is timed."""
    torch = framework("torch")
    system = trajloss_system(p.system)
    U, x0, RU, RX = (torch.from_numpy(a) for a in (p.U, p.x0, p.RU, p.RX))
    leaves = (U.requires_grad_(), x0.requires_grad_())
    w, tw, dtype = p.weight, p.terminal_weight, p.dtype

    class Floor(torch.autograd.Function):
        @staticmethod
        def forward(ctx, U, x0, RU, RX):
            r = trajloss.combined_loss(system, U.numpy(force=True), x0.numpy(force=True),
                                       RU.numpy(force=True), RX.numpy(force=True),
                                       weight=w, terminal_weight=tw)
            ctx.save_for_backward(torch.from_numpy(r.grad), torch.from_numpy(r.grad_x0))
            return torch.from_numpy(np.array(r.value, dtype))

        @staticmethod
        def backward(ctx, g):
            gu, gx = ctx.saved_tensors
            return gu * g, gx * g, None, None

    def call():
        v = Floor.apply(U, x0, RU, RX)
        g = torch.autograd.grad(v, leaves)
        return v, g[0], g[1]
    return call


def setup_trajloss_torch(p: LossProblem, mode=None) -> Callable:
    """``trajloss.torch.combined_loss`` in eager mode, gradients by ``torch.autograd.grad``."""
    torch = framework("torch")
    tlt = importlib.import_module("trajloss.torch")
    system = trajloss_system(p.system)
    U, x0, RU, RX = (torch.from_numpy(a) for a in (p.U, p.x0, p.RU, p.RX))
    leaves = (U.requires_grad_(), x0.requires_grad_())
    w, tw = p.weight, p.terminal_weight

    def call():
        v = tlt.combined_loss(system, U, x0, RU, RX, weight=w, terminal_weight=tw)
        g = torch.autograd.grad(v, leaves)
        return v, g[0], g[1]
    return call


OVERHEAD_IMPLS = (Impl("torch-autograd-floor", "torch-floor", setup_torch_floor),
                  Impl("trajloss.torch", "trajloss.torch", setup_trajloss_torch))
#: The issue's target: trajloss.torch's overhead over the NumPy API at most
#: this, or at most OVERHEAD_FACTOR times the floor's overhead, whichever is larger.
OVERHEAD_TARGET_S, OVERHEAD_FACTOR = 30e-6, 1.25


def measure_cpu_interleaved(fns, rounds: int, min_batch_s: float) -> list:
    """Per-call CPU time of this thread (``time.thread_time``) of each of
    ``fns``, in ``rounds`` interleaved rounds of batches of >= ``min_batch_s``:
    ``{"cpu_median_s", "cpu_min_s", "cpu_rounds"}`` per function.

    Wall-clock medians of 20 ms batches moved by 2-3x between runs on this
    shared 2-core VM (the process is descheduled for whole time slices); CPU
    time counts only the time the call ran. Every contestant here is one
    thread (PyTorch's CPU autograd runs backward in the calling thread)."""
    plans = []
    for fn in fns:
        t0 = time.thread_time()
        for _ in range(10):
            fn()
        single = (time.thread_time() - t0) / 10
        plans.append((fn, max(1, math.ceil(min_batch_s / max(single, 1e-7)))))
    times = [[] for _ in fns]
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            for (fn, calls), out in zip(plans, times):
                t0 = time.thread_time()
                for _ in range(calls):
                    fn()
                out.append((time.thread_time() - t0) / calls)
    finally:
        if gc_was_enabled:
            gc.enable()
    return [{"cpu_median_s": statistics.median(t), "cpu_min_s": min(t), "cpu_rounds": rounds,
             "cpu_calls_per_round": calls} for t, (_, calls) in zip(times, plans)]


@workload("W12", "trajloss.torch overhead vs the NumPy API and a bare autograd.Function")
def run_w11(ctx: Context):
    """W1's problem at small B, float32: the three contestants checked against
    the NumPy API (value and both gradients) and timed in interleaved rounds
    (wall clock, as every workload); then, set up and checked again, timed in
    interleaved rounds of this thread's CPU time, from which the overheads are
    taken (differences of medians: the wall clock is too noisy for them here)."""
    full = w1_problem(max(ctx.mode.overhead_B))
    for B in ctx.mode.overhead_B:
        p = full.head(B).astype(np.float32)
        title = f"W12 B={B} float32"
        rows = ctx.run_case("W12", f"B={B}", np.float32, setup_trajloss, OVERHEAD_IMPLS, p,
                            LOSS_OUTPUTS, extra_row=dict(B=B, form="shared"),
                            repeats=max(ctx.mode.repeats, 15))
        by_name = {r["impl"]: r for r in rows}
        fns = [setup_trajloss(p)] + [impl.setup(p, ctx.mode) for impl in OVERHEAD_IMPLS]
        ref = fns[0]()
        for impl, fn in zip(OVERHEAD_IMPLS, fns[1:]):
            check(title, impl.name, LOSS_OUTPUTS, fn(), ref, RTOL[np.dtype(np.float32)])
        rounds = 9 if ctx.mode.name == "tiny" else max(31, 4 * ctx.mode.repeats + 3)
        batch = ctx.mode.min_batch_s / 4
        for name, cpu in zip(["trajloss"] + [i.name for i in OVERHEAD_IMPLS],
                             measure_cpu_interleaved(fns, rounds, batch)):
            by_name[name].update(cpu)
        del fns
        for r in torch_overhead_rows(ctx.rows):
            if r["B"] == B:
                log(f"  W12 B={B}: overhead trajloss.torch {fmt_time(r['overhead_s'])}, "
                    f"floor {fmt_time(r['floor_overhead_s'])}, ratio "
                    f"{fmt_ratio(r['ratio_to_floor'])}, target {fmt_time(r['target_s'])}: "
                    f"{yes_no(r['met'])}")


def torch_overhead_rows(rows) -> list:
    """W12 per case: the NumPy API's, the floor's and trajloss.torch's median
    CPU times per call (``cpu_median_s``; the wall-clock median where a row
    has none), the overheads over the NumPy API, their ratio and the target."""
    def t(r):
        return r.get("cpu_median_s", r["median_s"])
    out = []
    for r in rows:
        if r["workload"] != "W12" or r["impl"] != "trajloss" or "median_s" not in r:
            continue
        key = (r["workload"], r["case"], r["dtype"])
        floor = find(rows, *key, impl="torch-autograd-floor")
        torch_row = find(rows, *key, impl="trajloss.torch")
        entry = dict(case=r["case"], B=r.get("B"), dtype=r["dtype"], numpy_s=t(r),
                     floor_s=None, torch_s=None, floor_overhead_s=None, overhead_s=None,
                     ratio_to_floor=None, target_s=None, met=None,
                     clock="cpu" if "cpu_median_s" in r else "wall")
        if floor and torch_row:
            f_over = t(floor[0]) - t(r)
            t_over = t(torch_row[0]) - t(r)
            target = max(OVERHEAD_TARGET_S, OVERHEAD_FACTOR * f_over)
            entry.update(floor_s=t(floor[0]), torch_s=t(torch_row[0]),
                         floor_overhead_s=f_over, overhead_s=t_over,
                         ratio_to_floor=t_over / f_over if f_over > 0 else None,
                         target_s=target, met=bool(t_over <= target))
        out.append(entry)
    return out


# ----------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------

def fmt_time(s) -> str:
    if s is None:
        return "—"
    if s < 1e-3:
        return f"{s * 1e6:.2f} µs" if s < 1e-5 else f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt_ratio(r) -> str:
    if r is None:
        return "—"
    return f"{r:.3f}" if r < 0.1 else f"{r:.2f}" if r < 100 else f"{r:.0f}"


def markdown_table(headers, rows) -> str:
    """A Markdown table; with no rows, the header alone (a run of W10 alone has
    no per-implementation rows)."""
    widths = [max([len(str(h))] + [len(str(r[i])) for r in rows]) for i, h in enumerate(headers)]

    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [line(r) for r in rows])


def results_table(rows) -> str:
    """Every row: workload, size, dtype, implementation, median and ratio to
    trajloss. Whatever a row lacks (a skipped contestant, a workload without
    rows) shows as "—", never an exception."""
    body = []
    for r in rows:
        if r.get("workload") == "W6" and "floor_s" in r:
            impl = f"{r.get('impl', '?')} ({r.get('gb_per_s', float('nan')):.1f} GB/s, best)"
            body.append((r["workload"], r.get("case", "—"), r.get("dtype", "—"), impl,
                         fmt_time(r["floor_s"]), "—"))
            continue
        time_cell = (fmt_time(r["median_s"]) if "median_s" in r
                     else f"skipped: {r.get('skipped', 'not timed')}")
        body.append((r.get("workload", "—"), r.get("case", "—"), r.get("dtype", "—"),
                     r.get("impl", "—"), time_cell, fmt_ratio(r.get("ratio"))))
    return markdown_table(("workload", "size", "dtype", "implementation", "median / call",
                           "ratio (their / trajloss)"), body)


def find(rows, workload, case, dtype, impl=None, family=None):
    return [r for r in rows if r["workload"] == workload and r["case"] == case
            and r["dtype"] == dtype and "median_s" in r
            and (impl is None or r["impl"] == impl) and (family is None or r["family"] == family)]


def floor_lines(rows) -> list:
    """``W1 B=...: trajloss time / memory floor`` per dtype, plus the floors themselves."""
    out = []
    for r in (r for r in rows if r["workload"] == "W6"):
        out.append(f"W6 {r['dtype']}: {(r['bytes_read'] + r['bytes_written']) / 1e6:.1f} MB "
                   f"(read {r['bytes_read'] / 1e6:.1f} + write {r['bytes_written'] / 1e6:.1f}) "
                   f"streamed in {fmt_time(r['floor_s'])} = {r['gb_per_s']:.1f} GB/s "
                   f"(best of {r['measurements']})")
        out.append(f"W1 {r['case']} {r['dtype']}: trajloss / memory floor, timed in the same "
                   f"rounds = {r['ratio_to_floor']:.2f} (medians: {fmt_time(r['trajloss_median_s'])}"
                   f" / {fmt_time(r['median_s'])}), {r['ratio_to_floor_best']:.2f} (bests: "
                   f"{fmt_time(r['trajloss_min_s'])} / {fmt_time(r['floor_s'])})")
    return out


#: Speed-up goals against PyTorch eager at its best (issue: "Speed"), per workload and case.
def speed_goal(workload: str, case: str) -> Optional[float]:
    if workload == "W1":
        return {"B=64": 30.0, "B=1024": 15.0}.get(case)
    return 3.0 if workload in ("W7", "W8") else None


#: W9: shared counts as "not slower" when its median is within this factor of per-sample's.
SHARED_SLACK = 1.05

CASE_NAMES = {"W1": "double integrator (2,1,15)", "W7": "general", "W8": ""}


def best_of(rows, workload, case, dtype, family):
    them = find(rows, workload, case, dtype, family=family)
    return min(them, key=lambda r: r["median_s"]) if them else None


def dynamics_flops(r) -> Optional[float]:
    """Floating-point operations of the rollout and adjoint of a combined loss:
    ``4·B·T·n·(n + m)`` (A x + B u forward, Aᵀλ and Bᵀλ back, 2 per multiply-add);
    the elementwise loss terms are O(B·T·(n + m)) and left out. For a roofline."""
    if not all(k in r for k in ("B", "T", "n", "m")):
        return None
    return 4.0 * r["B"] * r["T"] * r["n"] * (r["n"] + r["m"])


def speed_rows(rows) -> list:
    """One line per case with a speed goal: trajloss vs the fastest PyTorch eager
    form (family "torch": unbind loop, addmm loop, block-Toeplitz matrix)."""
    out, seen = [], []
    for r in rows:
        key = (r["workload"], r["case"], r["dtype"])
        goal = speed_goal(r["workload"], r["case"])
        if goal is None or key in seen:
            continue
        seen.append(key)
        tl = find(rows, *key, impl="trajloss")
        best = best_of(rows, *key, family="torch")
        ratio = best["median_s"] / tl[0]["median_s"] if tl and best else None
        case = f"{CASE_NAMES[key[0]]} {key[1]}".strip()
        variants = {x["impl"]: x["median_s"] for x in find(rows, *key, family="torch")}
        flops = dynamics_flops(r)
        out.append(dict(workload=key[0], case=case, dtype=key[2], flops=flops,
                        trajloss_gflops=flops / tl[0]["median_s"] / 1e9 if tl and flops else None,
                        trajloss_s=tl[0]["median_s"] if tl else None,
                        torch_best_s=best["median_s"] if best else None,
                        torch_best=best["impl"] if best else None, torch_variants_s=variants,
                        speedup=ratio, goal=goal,
                        met=None if ratio is None else bool(ratio >= goal)))
    return out


def same_matrices_rows(rows) -> list:
    """W9: trajloss's shared form vs the same matrices per sample / per step."""
    out = []
    for r in rows:
        if r["workload"] != "W9" or r["impl"] != "trajloss" or "median_s" not in r:
            continue
        key = (r["workload"], r["case"], r["dtype"])
        per = {x["impl"]: x for x in find(rows, *key, family="trajloss-form")}
        ps, tv = per.get("trajloss-per-sample"), per.get("trajloss-time-varying")
        ratio = ps["median_s"] / r["median_s"] if ps else None
        out.append(dict(case=r["case"], dtype=r["dtype"], shared_s=r["median_s"],
                        per_sample_s=ps["median_s"] if ps else None,
                        time_varying_s=tv["median_s"] if tv else None, per_sample_ratio=ratio,
                        met=None if ratio is None else bool(ratio * SHARED_SLACK >= 1)))
    return out


def fmt_us(s) -> str:
    return "—" if s is None else f"{s * 1e6:.1f}"


def fmt_ms(s) -> str:
    return "—" if s is None else f"{s * 1e3:.3f}" if s < 0.01 else f"{s * 1e3:.2f}"


def yes_no(met) -> str:
    return "not measured" if met is None else "yes" if met else "NO"


def crossover_cell(crossover_B, cpu) -> str:
    """Where 2 threads pay -- unless the second thread did no work at the largest
    B (CPU / wall < 1.2): then the row says nothing about the engine's threads."""
    if crossover_B is not None:
        return f"B >= {crossover_B}"
    if cpu is not None and cpu < 1.2:
        return "inconclusive: the 2nd thread did no work (no free core?)"
    return "none measured"


def readme_markdown(rows, thread_scaling=None, machine=None, mode=None) -> str:
    """The tables for the README: speed-ups against PyTorch eager at its best,
    shared vs per-sample, and where threads pay."""
    lines = []
    if machine:
        git = machine.get("git") or {}
        ext = git.get("extension") or {}
        lines += [f"Build {git.get('commit', '?')[:10]}{' (dirty)' if git.get('dirty') else ''}"
                  + (f" (extension sha256 {ext['sha256']}, built {ext['built'][:16]} UTC)"
                     if ext else "") + ", "
                  f"{machine.get('cpu_model')}, {machine.get('cpu_count')} cores, "
                  f"{machine.get('date', '')[:16]} UTC, `--{mode or '?'}` run; one thread for "
                  f"every contestant, medians of interleaved rounds."
                  + (" One-thread NumPy matmul: {float64_gflops:.1f} GFLOP/s float64, "
                     "{float32_gflops:.1f} float32.".format(**machine["matmul_peak"])
                     if machine.get("matmul_peak") else "")
                  + (" Load average (1 min) {:.1f} at the start, {:.1f} at the end.".format(
                      machine["loadavg_1_5_15"]["start"][0], machine["loadavg_1_5_15"]["end"][0])
                     if machine.get("loadavg_1_5_15") else ""), ""]
    body = []
    for s in speed_rows(rows):
        variants = ", ".join(f"{k.replace('torch-', '')} {fmt_ms(v)}"
                             for k, v in s["torch_variants_s"].items())
        gflops = "—" if s.get("trajloss_gflops") is None else f"{s['trajloss_gflops']:.1f}"
        body.append((s["case"], s["dtype"], fmt_ms(s["trajloss_s"]), gflops,
                     f"{fmt_ms(s['torch_best_s'])} ({s['torch_best'] or '—'})", variants,
                     "—" if s["speedup"] is None else f"{s['speedup']:.1f}x",
                     f">= {s['goal']:g}x", yes_no(s["met"])))
    if body:
        lines += [markdown_table(("case", "dtype", "trajloss ms", "trajloss GFLOP/s",
                                  "torch best ms (variant)",
                                  "torch eager forms ms", "speed-up", "target", "met"), body), ""]
    same = same_matrices_rows(rows)
    if same:
        lines += [markdown_table(
            ("case", "dtype", "shared ms", "per-sample ms", "time-varying ms",
             "per-sample / shared", f"shared not slower (within {SHARED_SLACK - 1:.0%})"),
            [(s["case"], s["dtype"], fmt_ms(s["shared_s"]), fmt_ms(s["per_sample_s"]),
              fmt_ms(s["time_varying_s"]),
              "—" if s["per_sample_ratio"] is None else f"{s['per_sample_ratio']:.2f}",
              yes_no(s["met"])) for s in same]), ""]
    overhead = torch_overhead_rows(rows)
    if overhead:
        lines += [markdown_table(
            ("trajloss.torch overhead (CPU time / call)", "dtype", "NumPy API µs",
             "autograd.Function floor µs", "trajloss.torch µs", "overhead (torch − NumPy) µs",
             "floor overhead µs",
             "overhead / floor's", f"target µs (max {OVERHEAD_TARGET_S * 1e6:g}, "
                                   f"{OVERHEAD_FACTOR:g}x floor's)", "met"),
            [(o["case"], o["dtype"], fmt_us(o["numpy_s"]), fmt_us(o["floor_s"]),
              fmt_us(o["torch_s"]), fmt_us(o["overhead_s"]), fmt_us(o["floor_overhead_s"]),
              "—" if o["ratio_to_floor"] is None else f"{o['ratio_to_floor']:.2f}",
              fmt_us(o["target_s"]), yes_no(o["met"])) for o in overhead]), ""]
    ts = thread_scaling or {}
    if ts.get("available") and ts.get("results"):
        sizes = sorted({t["B"] for t in ts["results"]})
        body = []
        for c in ts["crossover"]:
            mine = [t for t in ts["results"]
                    if t["case"] == c["case"] and t["dtype"] == c["dtype"]]
            got = {t["B"]: t["speedup"] for t in mine}
            cpu = mine[-1].get("cpu_per_wall_2") if mine else None
            body.append((c["case"], c["dtype"],
                         *(f"{got[B]:.2f}x" if B in got else "—" for B in sizes),
                         crossover_cell(c["crossover_B"], cpu),
                         "—" if cpu is None else f"{cpu:.2f}"))
        lines += [markdown_table(("1 -> 2 threads", "dtype", *(f"B={B}" for B in sizes),
                                  f"threads pay (>= {ts['threshold']}x)",
                                  f"CPU / wall, 2 threads, B={sizes[-1]}"), body), ""]
    return "\n".join(lines).rstrip() + "\n"


def targets(rows) -> list:
    """The issue's targets: (description, measured, PASS/FAIL or 'not measured')."""
    out = []
    for s in speed_rows(rows):
        desc = (f"{s['workload']} {s['case']} {s['dtype']}: >= {s['goal']:g}x fastest PyTorch "
                f"eager" + (f" ({s['torch_best']})" if s["torch_best"] else ""))
        out.append((desc, "not measured" if s["speedup"] is None else f"{s['speedup']:.2f}x",
                    "—" if s["met"] is None else "PASS" if s["met"] else "FAIL"))
    for s in same_matrices_rows(rows):
        out.append((f"W9 {s['case']} {s['dtype']}: shared not slower than per-sample "
                    f"(within {SHARED_SLACK - 1:.0%})",
                    "not measured" if s["per_sample_ratio"] is None
                    else f"per-sample / shared = {s['per_sample_ratio']:.2f}",
                    "—" if s["met"] is None else "PASS" if s["met"] else "FAIL"))
    for dtype in ("float32", "float64"):
        tl = find(rows, "W1", "B=1024", dtype, impl="trajloss")
        best = best_of(rows, "W1", "B=1024", dtype, "jax")
        desc = f"W1 B=1024 {dtype}: >= 3x fastest JAX"
        if tl and best:
            ratio = best["median_s"] / tl[0]["median_s"]
            out.append((desc + f" ({best['impl']})", f"{ratio:.2f}x",
                        "PASS" if ratio >= 3 else "FAIL"))
        else:
            out.append((desc, "not measured", "—"))
    for dtype in ("float32", "float64"):
        desc = f"W1 B=262144 {dtype}: trajloss <= 2x W6 memory floor (medians, same rounds)"
        fl = find(rows, "W6", "B=262144", dtype)
        if fl:
            ratio = fl[0]["ratio_to_floor"]
            out.append((desc, f"{ratio:.2f}x", "PASS" if ratio <= 2 else "FAIL"))
        else:
            out.append((desc, "not measured", "—"))
    for o in torch_overhead_rows(rows):
        desc = (f"W12 {o['case']} {o['dtype']}: trajloss.torch overhead <= max("
                f"{OVERHEAD_TARGET_S * 1e6:g} µs, {OVERHEAD_FACTOR:g}x the autograd.Function "
                "floor's)")
        if o["met"] is None:
            out.append((desc, "not measured", "—"))
        else:
            out.append((desc, f"{fmt_time(o['overhead_s'])} (floor's {fmt_time(o['floor_overhead_s'])}, "
                              f"{o['ratio_to_floor']:.2f}x; target {fmt_time(o['target_s'])})",
                        "PASS" if o["met"] else "FAIL"))
    w5 = find(rows, "W5", "combined_loss B=1", "float64", impl="trajloss")
    out.append(("W5 combined_loss B=1 float64: <= 3 µs per call",
                fmt_time(w5[0]["median_s"]) if w5 else "not measured",
                ("PASS" if w5[0]["median_s"] <= 3e-6 else "FAIL") if w5 else "—"))
    w4 = [r for r in rows if r["workload"] == "W4" and r["impl"] == "trajloss" and "median_s" in r]
    if w4 and w4[0]["B"] == 10**6:
        out.append(("W4 min_energy 10^6 samples: <= 0.5 s", fmt_time(w4[0]["median_s"]),
                    "PASS" if w4[0]["median_s"] <= 0.5 else "FAIL"))
    else:
        out.append(("W4 min_energy 10^6 samples: <= 0.5 s",
                    f"not measured at 10^6 (ran {w4[0]['B']})" if w4 else "not measured", "—"))
    return out


def fastest_lines(rows) -> list:
    """Which baseline was fastest at each case."""
    out = []
    cases = []
    for r in rows:
        key = (r["workload"], r["case"], r["dtype"])
        if r["workload"] not in ("W6", "W9", "W12") and key not in cases:
            cases.append(key)
    for key in cases:
        rows_k = find(rows, *key)
        base = [r for r in rows_k if r["family"] not in ("trajloss", "reference")]
        ref = next((r["impl"] for r in rows_k if r["family"] in ("trajloss", "reference")), "?")
        if base:
            best = min(base, key=lambda r: r["median_s"])
            out.append(f"{' '.join(key)}: {best['impl']} ({fmt_time(best['median_s'])}, "
                       f"{fmt_ratio(best['ratio'])}x {ref})")
    return out


def machine_info(ctx: Context) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {"python": platform.python_version(), "numpy": np.__version__,
                "trajloss": getattr(trajloss, "__version__", "?")}
    for name in ("torch", "jax"):
        mod = _FRAMEWORKS.get(name)
        versions[name] = None if mod is None or isinstance(mod, Exception) else mod.__version__
    threads = {k: os.environ.get(k) for k in THREAD_ENV}
    torch = _FRAMEWORKS.get("torch")
    if torch is not None and not isinstance(torch, Exception):
        threads["torch.get_num_threads"] = torch.get_num_threads()
        threads["torch.get_num_interop_threads"] = torch.get_num_interop_threads()
    threads["TRAJLOSS_NUM_THREADS"] = os.environ.get("TRAJLOSS_NUM_THREADS")
    get = getattr(trajloss, "get_num_threads", None)
    threads["trajloss"] = (get() if get is not None else ctx.threads
                           if hasattr(trajloss, "set_num_threads")
                           else "set_num_threads not available (single-threaded core)")
    git = {}
    try:
        run = lambda *a: subprocess.run(["git", "-C", REPO, *a], capture_output=True,  # noqa: E731
                                        text=True, timeout=10).stdout.strip()
        git = {"commit": run("rev-parse", "HEAD"),
               "dirty": bool(run("status", "--porcelain", "--", "csrc", "src", "setup.py"))}
    except (OSError, subprocess.SubprocessError):
        pass
    try:  # which compiled extension ran: the commit alone does not say when it was built
        import hashlib
        so = trajloss._core.__file__
        with open(so, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:12]
        git["extension"] = {"path": os.path.relpath(so, REPO), "sha256": digest,
                            "built": datetime.datetime.fromtimestamp(
                                os.path.getmtime(so), datetime.timezone.utc).isoformat()}
    except (AttributeError, OSError):
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    return {"hostname": socket.gethostname(), "cpu_model": cpu, "cpu_count": os.cpu_count(),
            "cpu_affinity": affinity, "platform": platform.platform(), "versions": versions,
            "threads": threads, "lapack": getattr(trajloss._core, "LAPACK_PROVIDER", None),
            "git": git, "date": datetime.datetime.now(datetime.timezone.utc).isoformat()}


def plot_w1(rows, path: str) -> Optional[str]:
    """W1 median time vs B per implementation, log-log, one panel per dtype."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not importable: --plot skipped")
        return None
    w1 = [r for r in rows if r["workload"] == "W1" and "median_s" in r]
    if not w1:
        return None
    impls = list(dict.fromkeys(r["impl"] for r in w1))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for ax, dtype in zip(axes, ("float32", "float64")):
        for impl in impls:
            pts = sorted((r["B"], r["median_s"]) for r in w1 if r["impl"] == impl
                         and r["dtype"] == dtype)
            if pts:
                ax.loglog(*zip(*pts), marker="o", lw=2.5 if impl == "trajloss" else 1.2,
                          label=impl)
        ax.set(title=f"W1 combined_loss value+grad, {dtype}", xlabel="batch size B",
               ylabel="median time per call [s]")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def matmul_rates(size: int) -> dict:
    """This machine's practical compute peak on one thread: NumPy's (OpenBLAS)
    square matmul, float64 and float32, best of 5 -- the roof of a roofline
    (W6's copy gives the bandwidth)."""
    rng = np.random.default_rng(8)
    out = {"size": size}
    for dtype in (np.float64, np.float32):
        a = rng.random((size, size)).astype(dtype)
        b = rng.random((size, size)).astype(dtype)
        c = a @ b
        best = math.inf
        for _ in range(5):
            t0 = time.perf_counter()
            np.matmul(a, b, out=c)
            best = min(best, time.perf_counter() - t0)
        out[np.dtype(dtype).name + "_gflops"] = 2.0 * size ** 3 / best / 1e9
    return out


def default_out(mode: Mode) -> str:
    host = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in socket.gethostname())
    suffix = "" if mode.name == "full" else f"-{mode.name}"
    return os.path.join(HERE, "results", f"{host or 'latest'}{suffix}.json")


def write_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1, default=float)
        f.write("\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------

def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="3 measurements per point")
    size.add_argument("--tiny", action="store_true", help="smoke test: tiny sizes")
    ap.add_argument("--only", help="comma-separated workloads, e.g. W1,W3")
    ap.add_argument("--out", help="JSON path (default benchmarks/results/<host>[-mode].json)")
    ap.add_argument("--plot", action="store_true", help="PNG of W1 time vs B (needs matplotlib)")
    ap.add_argument("--threads", type=int, default=1,
                    help="trajloss threads via trajloss.set_num_threads, if it exists")
    ap.add_argument("--repeats", type=int,
                    help="measurements per point (overrides the mode's 7 / 3)")
    ap.add_argument("--markdown", metavar="PATH",
                    help="also write the README tables (speed-ups, shared vs per-sample, "
                         "threads) to PATH ('-': stdout)")
    ap.add_argument("--render", metavar="JSON",
                    help="no run: print the README tables of a saved results JSON")
    args = ap.parse_args(argv)
    args.mode = MODES["quick" if args.quick else "tiny" if args.tiny else "full"]
    if args.repeats is not None:
        if args.repeats < 1:
            ap.error("--repeats must be >= 1")
        args.mode = replace(args.mode, repeats=args.repeats)
    keys = list(WORKLOADS) if not args.only else [k.strip().upper() for k in args.only.split(",")]
    unknown = [k for k in keys if k not in WORKLOADS]
    if unknown:
        ap.error(f"unknown workloads {unknown}; choose from {list(WORKLOADS)}")
    args.workloads = keys
    if args.threads < 1:
        ap.error("--threads must be >= 1")
    return args


def render(path: str) -> str:
    """The README tables of a saved results JSON."""
    with open(path) as f:
        data = json.load(f)
    return readme_markdown(data["results"], data.get("thread_scaling"), data.get("machine"),
                           data.get("mode"))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        print(render(args.render), end="")
        return 0
    start = time.perf_counter()
    load_start = os.getloadavg()  # other work on the machine: how noisy the run may be
    ctx = Context(mode=args.mode, threads=args.threads)
    setter = getattr(trajloss, "set_num_threads", None)
    if setter is not None:
        setter(args.threads)
    elif args.threads != 1:
        ctx.note("trajloss.set_num_threads not available: --threads ignored")
    for name in ("torch", "jax"):  # import up front: import time is not per-case noise
        try:
            framework(name)
        except Unavailable as exc:
            ctx.note(str(exc))
    gc.collect()
    gc.freeze()  # torch/jax internals out of every later collection (each took ~0.2 s)
    if args.mode.compile_backend != "inductor":
        ctx.note(f"torch.compile uses backend={args.mode.compile_backend!r} in --{args.mode.name} "
                 "(Inductor's code generation is too slow for a smoke test; "
                 "--quick and the full run use Inductor)")
    try:
        for key in args.workloads:
            log(f"{key}: {WORKLOADS[key].title}")
            WORKLOADS[key].run(ctx)
    except CheckFailed as exc:
        print(f"ERROR: correctness check failed, aborting: {exc}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - start

    tgt = targets(ctx.rows)
    report = [f"## trajloss benchmarks ({args.mode.name})", "", results_table(ctx.rows), ""]
    report += floor_lines(ctx.rows)
    ts = ctx.extra.get("thread_scaling")
    if ts and ts.get("available"):
        for t in ts["results"]:
            report.append(f"W10 {t['case']} B={t['B']} {t['dtype']}: trajloss 1 thread "
                          f"{fmt_time(t['t1_s'])}, 2 threads {fmt_time(t['t2_s'])}: speed-up "
                          f"{t['speedup']:.2f}x, bit-identical: "
                          f"{'yes' if t['bit_identical'] else 'NO'}"
                          + (f", CPU / wall with 2 threads {t['cpu_per_wall_2']:.2f}"
                             if "cpu_per_wall_2" in t else ""))
    readme = readme_markdown(ctx.rows, ts)
    report += ["", "### For the README", "", readme.rstrip()]
    report += ["", "Fastest baseline per case:"] + ["- " + s for s in fastest_lines(ctx.rows)]
    report += ["", "### Targets (informational)", "",
               markdown_table(("target", "measured", "result"), tgt)]
    if ctx.notes:
        report += ["", "Notes:"] + ["- " + s for s in ctx.notes]
    out = args.out or default_out(args.mode)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    plot = plot_w1(ctx.rows, os.path.splitext(out)[0] + "-w1.png") if args.plot else None
    machine = machine_info(ctx)
    machine["loadavg_1_5_15"] = {"start": load_start, "end": os.getloadavg()}
    machine["matmul_peak"] = matmul_rates(256 if args.mode.name == "tiny" else 1024)
    report += ["", "Machine: one-thread NumPy matmul ({size}²) {float64_gflops:.1f} GFLOP/s "
                   "float64, {float32_gflops:.1f} float32".format(**machine["matmul_peak"])]
    report += ["", f"wall time {wall:.1f} s; JSON: {out}" + (f"; plot: {plot}" if plot else "")]
    print("\n".join(report))

    if args.markdown:
        text = readme_markdown(ctx.rows, ts, machine, args.mode.name)
        if args.markdown == "-":
            print("\n" + text, end="")
        else:
            with open(args.markdown, "w") as f:
                f.write(text)
            log(f"README tables: {args.markdown}")
    write_json(out, {
        "mode": args.mode.name, "workloads": args.workloads, "wall_time_s": wall,
        "machine": machine, "speed": speed_rows(ctx.rows),
        "same_matrices": same_matrices_rows(ctx.rows),
        "torch_overhead": torch_overhead_rows(ctx.rows), "timing": {
            "repeats": args.mode.repeats, "min_batch_s": args.mode.min_batch_s,
            "warmup_calls": args.mode.warmup, "statistic": "median of per-call times",
            "torch_compile": {"backend": args.mode.compile_backend, "dynamic": False},
            "check_rtol": {k.name: v for k, v in RTOL.items()}},
        "results": ctx.rows, "thread_scaling": ctx.extra.get("thread_scaling"),
        "targets": [dict(target=a, measured=b, result=c) for a, b, c in tgt],
        "notes": ctx.notes, "plot": plot})
    return 0


if __name__ == "__main__":
    sys.exit(main())
