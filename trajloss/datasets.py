"""Datasets of minimum-energy references: sampling, control bounds, .npz files."""
from __future__ import annotations

import math
import sys
import zipfile
from dataclasses import dataclass, field

import numpy as np

from .references import REFERENCE_METHODS, min_energy
from .rollout import _check_system
from .systems import DoubleIntegrator

__all__ = ["Dataset", "SEED000", "make_dataset"]

#: Seed 000's double-integrator problem: 15 steps of dt = 1/3 s, positions in
#: [-10, 10], velocities in [-5, 5], the origin as target, |u| <= 8.
SEED000 = dict(steps=15, dt=1 / 3, x0_low=(-10.0, -5.0), x0_high=(10.0, 5.0), target=0.0,
               control_bound=8.0)

_FORMAT = "trajloss-dataset-1"
_ARRAYS = ("x0", "xf", "controls", "states", "final_error", "energy")
_CHUNK = 65536        # samples per C call when a progress bar is shown
_MAX_ROUNDS = 100     # resampling rounds before giving up on a control bound


@dataclass
class Dataset:
    """Reference trajectories for training and evaluation.

    x0, xf : (N, n) initial and target states
    controls : (N, T, m) reference controls
    states : (N, T+1, n) reference states
    final_error, energy : (N,) as in :class:`trajloss.Reference`
    method : str, dt : float or None, control_bound : float or None,
    resampled : int -- how many draws were rejected for exceeding the bound
    seed : int
    """

    x0: np.ndarray
    xf: np.ndarray
    controls: np.ndarray
    states: np.ndarray
    final_error: np.ndarray
    energy: np.ndarray
    method: str = "exact"
    dt: float | None = None
    control_bound: float | None = None
    resampled: int = 0
    seed: int = 0
    meta: dict = field(default_factory=dict, repr=False)

    def __len__(self):
        return self.x0.shape[0]

    @property
    def steps(self):
        return self.controls.shape[1]

    def save(self, path):
        """Write the dataset to ``path`` as an uncompressed ``.npz``."""
        np.savez(path, format=np.array(_FORMAT), method=np.array(self.method),
                 dt=np.array(np.nan if self.dt is None else self.dt),
                 control_bound=np.array(np.nan if self.control_bound is None else self.control_bound),
                 resampled=np.array(self.resampled), seed=np.array(self.seed),
                 **{k: getattr(self, k) for k in _ARRAYS})

    @classmethod
    def load(cls, path):
        """Read a dataset written by :meth:`save`; anything else raises ``ValueError``."""
        try:
            f = np.load(path, allow_pickle=False)
            if not isinstance(f, np.lib.npyio.NpzFile):
                raise ValueError("a plain .npy array, not an .npz archive")
            with f:
                if "format" not in f.files or str(f["format"]) != _FORMAT:
                    raise ValueError("no trajloss dataset marker")
                missing = [k for k in _ARRAYS if k not in f.files]
                if missing:
                    raise ValueError(f"missing arrays {missing}")
                arrays = {k: f[k] for k in _ARRAYS}
                dt, bound = float(f["dt"]), float(f["control_bound"])
                meta = dict(method=str(f["method"]), resampled=int(f["resampled"]),
                            seed=int(f["seed"]))
        except (OSError, EOFError, zipfile.BadZipFile, KeyError, ValueError) as exc:
            raise ValueError(f"{path!s} is not a readable trajloss dataset ({exc})") from None
        N = arrays["x0"].shape[0]
        if any(a.shape[:1] != (N,) for a in arrays.values()):
            raise ValueError(f"{path!s} is not a consistent trajloss dataset (array lengths differ)")
        return cls(**arrays, dt=None if math.isnan(dt) else dt,
                   control_bound=None if math.isnan(bound) else bound, **meta)


def _real_array(value, name):
    """A float64 array of ``value``, or a TypeError/ValueError naming ``name``."""
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: cannot be converted to an array ({exc})") from None
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold real numbers, got {value!r}")
    return arr.astype(np.float64)


def _real_number(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    return float(value)


def _generator(seed):
    """``numpy.random.default_rng(seed)`` whose errors name ``seed``."""
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"seed must be a non-negative integer (or anything "
                        f"numpy.random.default_rng accepts), got {seed!r} ({exc})") from None


def _progress(total, enabled):
    """A tqdm bar when asked for (or, by default, on a terminal with tqdm installed)."""
    if enabled is None:
        enabled = total >= 200_000 and sys.stderr.isatty()
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="traj", desc="make_dataset")


def _references(system, x0, xf, steps, method, bar):
    """min_energy in chunks (so a progress bar can move)."""
    if bar is None:
        return min_energy(system, x0, xf, steps, method)
    parts = []
    for start in range(0, len(x0), _CHUNK):
        parts.append(min_energy(system, x0[start:start + _CHUNK], xf[start:start + _CHUNK],
                                steps, method))
        bar.update(len(parts[-1].controls))
    return type(parts[0])(*(np.concatenate([getattr(p, k) for p in parts]) for k in
                            ("controls", "states", "final_error", "energy")),
                          method, max(p.cond for p in parts))


def make_dataset(system, size, steps=None, *, x0_low=None, x0_high=None, target=0.0,
                 control_bound=None, method="exact", seed=0, progress=None):
    """Sample initial states uniformly and compute their minimum-energy references.

    Parameters
    ----------
    system : LinearSystem
    size : int
        Number of trajectories N.
    steps : int
        Steps per trajectory T.
    x0_low, x0_high : array_like, (n,)
        The box initial states are drawn from, uniformly.
    target : float or array_like, (n,) or (N, n)
        Target states (default: the origin).
    control_bound : float, optional
        Samples whose reference controls exceed it in absolute value are
        redrawn; ``Dataset.resampled`` says how many draws were rejected.
    method : {"exact", "average", "continuous"}
    seed : int
        Seed of the ``numpy.random.Generator`` (same seed → identical arrays).
    progress : bool, optional
        Show a tqdm progress bar (default: for large sizes on a terminal).

    For a :class:`DoubleIntegrator` the omitted ``steps``, ``x0_low``,
    ``x0_high`` and ``control_bound`` take seed 000's values (15, (−10, −5),
    (10, 5), 8); pass ``control_bound=float("inf")`` for no bound.

    Returns
    -------
    Dataset
    """
    system = _check_system(system)
    if isinstance(system, DoubleIntegrator):
        steps = SEED000["steps"] if steps is None else steps
        x0_low = SEED000["x0_low"] if x0_low is None else x0_low
        x0_high = SEED000["x0_high"] if x0_high is None else x0_high
        control_bound = SEED000["control_bound"] if control_bound is None else control_bound
    if steps is None or x0_low is None or x0_high is None:
        raise ValueError("steps, x0_low and x0_high are required for systems other than "
                         "DoubleIntegrator")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 1 <= size <= 2**40:
        raise ValueError(f"size must be an integer in [1, 2**40], got {size!r}")
    if method not in REFERENCE_METHODS:
        raise ValueError(f"method must be one of {REFERENCE_METHODS}, got {method!r}")
    low = _real_array(x0_low, "x0_low")
    high = _real_array(x0_high, "x0_high")
    n = system.n
    for name, v in (("x0_low", low), ("x0_high", high)):
        if v.shape not in ((n,), ()) or not np.all(np.isfinite(v)):
            raise ValueError(f"{name} must be {n} finite numbers, got {v.tolist()!r}")
    if np.any(low > high):
        raise ValueError(f"x0_low must not exceed x0_high, got {low.tolist()} > {high.tolist()}")
    if control_bound is not None:
        control_bound = _real_number(control_bound, "control_bound")
        if not control_bound > 0:
            raise ValueError(f"control_bound must be > 0, got {control_bound!r}")
    target = _real_array(target, "target")
    try:
        xf = np.broadcast_to(target, (size, n)).copy()
    except ValueError:
        raise ValueError(f"target must be a number or have shape ({n},) or ({size}, {n}), "
                         f"got shape {target.shape}") from None
    if not np.all(np.isfinite(xf)):
        raise ValueError("target must be finite")

    rng = _generator(seed)
    x0 = rng.uniform(low, high, size=(size, n))
    bar = _progress(size, progress)
    try:
        ref = _references(system, x0, xf, steps, method, bar)
        resampled = 0
        for _ in range(_MAX_ROUNDS):
            if control_bound is None or math.isinf(control_bound):
                break
            bad = np.flatnonzero(np.abs(ref.controls).max(axis=(1, 2)) > control_bound)
            if bad.size == 0:
                break
            resampled += bad.size
            x0[bad] = rng.uniform(low, high, size=(bad.size, n))
            redo = min_energy(system, x0[bad], xf[bad], steps, method)
            for k in ("controls", "states", "final_error", "energy"):
                getattr(ref, k)[bad] = getattr(redo, k)
        else:
            raise ValueError(f"after {_MAX_ROUNDS} rounds of resampling some references still "
                             f"exceed control_bound={control_bound}; widen the bound or narrow "
                             "x0_low/x0_high")
    finally:
        if bar is not None:
            bar.close()
    return Dataset(x0, xf, ref.controls, ref.states, ref.final_error, ref.energy, method=method,
                   dt=system.dt, control_bound=control_bound, resampled=resampled, seed=seed)
