"""Datasets of minimum-energy references: sampling, control bounds, .npz files."""
from __future__ import annotations

import math
import os
import stat
import sys
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass, field

import numpy as np

from .references import REFERENCE_METHODS, min_energy
from .rollout import _check_system
from .systems import DoubleIntegrator, LinearSystem, TimeVaryingSystem

__all__ = ["Dataset", "DEFAULT_MAX_BYTES", "DOUBLE_INTEGRATOR_DEFAULTS", "make_dataset"]

#: The double-integrator study's problem (control vs trajectory loss scale
#: mismatch): 15 steps of dt = 1/3 s, positions in [-10, 10], velocities in
#: [-5, 5], the origin as target, |u| <= 8.
DOUBLE_INTEGRATOR_DEFAULTS = dict(steps=15, dt=1 / 3, x0_low=(-10.0, -5.0), x0_high=(10.0, 5.0),
                                  target=0.0, control_bound=8.0)

#: What :meth:`Dataset.load` reads at most by default: 4 GiB of array data.
DEFAULT_MAX_BYTES = 4 * 2**30

_FORMAT = "trajloss-dataset-1"
_ARRAYS = ("x0", "xf", "controls", "states", "final_error", "energy")
_SCALARS = ("format", "method", "dt", "control_bound", "resampled", "seed")
_CHUNK = 65536        # samples per C call when a progress bar is shown
_MAX_ROUNDS = 100     # resampling rounds before giving up on a control bound


@dataclass
class Dataset:
    """Reference trajectories for training and evaluation.

    x0, xf : (N, n) initial and target states
    controls : (N, T, m) reference controls
    states : (N, T+1, n) reference states
    final_error, energy : (N,) as in :class:`trajloss.Reference`
    method : str, dt : float, (N,) ndarray (a per-sample system's periods) or
    None, control_bound : float or None,
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
        """Write the dataset to ``path`` as an uncompressed ``.npz`` (no pickles).

        ``seed`` is stored as an int64, or as text when it is None (``""``) or
        an integer beyond int64, so :meth:`load` gives it back unchanged; a
        seed of another kind (a ``SeedSequence``, a ``Generator``) cannot be
        stored and raises TypeError before anything is written.
        """
        seed = self.seed
        if seed is None:
            stored_seed = np.array("")
        elif (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool)
              and 0 <= seed):
            stored_seed = np.array(int(seed)) if seed < 2**63 else np.array(str(int(seed)))
        else:
            raise TypeError(f"Dataset.save: seed must be an integer >= 0 or None to be "
                            f"saved, got {_printable(repr(seed), 80)}")
        np.savez(path, format=np.array(_FORMAT), method=np.array(self.method),
                 dt=np.array(np.nan if self.dt is None else self.dt, dtype=np.float64),
                 control_bound=np.array(np.nan if self.control_bound is None else self.control_bound),
                 resampled=np.array(self.resampled), seed=stored_seed,
                 allow_pickle=False, **{k: getattr(self, k) for k in _ARRAYS})

    @classmethod
    def load(cls, path, *, max_bytes=DEFAULT_MAX_BYTES):
        """Read a dataset written by :meth:`save`; anything else raises ``ValueError``.

        Before any array is allocated, the header of every ``.npy`` member
        is read and the bytes its shape and dtype claim are compared with
        the member's size in the archive (they must be equal) and, summed
        over all members, with ``max_bytes`` (default
        :data:`DEFAULT_MAX_BYTES`, 4 GiB; ``None`` for no limit). Then the
        keys, dtypes and shapes are checked against each other: ``x0`` and
        ``xf`` (N, n), ``controls`` (N, T, m), ``states`` (N, T+1, n),
        ``final_error`` and ``energy`` (N,), all float32 or float64 and
        finite (``final_error``, ``energy`` >= 0), N, n, m, T >= 1; ``method``
        one of ``"exact"``, ``"average"``, ``"continuous"``; ``dt`` > 0 or NaN
        (not set), a number or (a per-sample system's) N of them, and
        ``control_bound`` > 0 or NaN (not set); ``resampled`` and ``seed``
        integers >= 0 (``seed`` may also be None). Every error message
        names the file and the key.
        """
        label = _path_label(path)
        arrays = _read_npz(path, max_bytes, _SCALARS + _ARRAYS, label)
        return cls(**_checked_dataset(arrays, label))


def _path_label(path):
    """A printable name of ``path`` for error messages."""
    try:
        return _printable(os.fsdecode(path))
    except TypeError:
        return f"<{type(path).__name__}>"


def _printable(text, limit=300):
    """``text`` safe to echo on a terminal: control, format, surrogate and
    line/paragraph-separator characters are escaped (``\\x1b``, ``\\u202e``,
    ``\\n``), and more than ``limit`` characters are cut."""
    text = str(text)
    cut = len(text) - limit
    if cut > 0:
        text = text[:limit]
    out = "".join(ch.encode("unicode_escape", "backslashreplace").decode("ascii")
                  if unicodedata.category(ch)[0] == "C" or unicodedata.category(ch) in ("Zl", "Zp")
                  else ch for ch in text)
    return out + (f"... ({cut} more characters)" if cut > 0 else "")


def _check_regular_file(path, label):
    """ValueError unless ``path`` (when it is a path, not a file object) is a
    regular file: a FIFO or a device could block or never end."""
    try:
        mode = os.stat(path).st_mode
    except TypeError:  # a file object
        return
    except FileNotFoundError:
        raise ValueError(f"{label}: no such file") from None
    except OSError as exc:
        raise ValueError(f"{label}: cannot be read ({_printable(exc.strerror or exc)})") from None
    if stat.S_ISDIR(mode):
        raise ValueError(f"{label}: is a directory, not a file")
    if not stat.S_ISREG(mode):
        raise ValueError(f"{label}: is not a regular file (a pipe or a device?)")


class _FileError(ValueError):
    """A ValueError whose message already names the file (and the key)."""


def _npy_header(zf, info, key, label):
    """(shape, dtype, header bytes) of an archive member, read without its data."""
    with zf.open(info) as fp:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise _FileError(f"{label}: {key}: unsupported .npy format version {version}")
        return shape, dtype, fp.tell()


def _read_npz(path, max_bytes, allowed, label):
    """The arrays of the ``.npz`` archive ``path`` as a dict, never allocating
    more than the archive holds.

    Every member must be ``<key>.npy`` with ``key`` in ``allowed`` (no
    duplicates, no pickles). The bytes each header claims (``prod(shape) ·
    itemsize``) must equal the member's uncompressed size minus its header,
    and their sum must not exceed ``max_bytes`` (``None``: no limit); both
    are checked before any array is read. Errors are ValueError naming
    ``label`` and the key."""
    if max_bytes is not None and (isinstance(max_bytes, bool) or
                                  not isinstance(max_bytes, (int, np.integer)) or max_bytes < 0):
        raise ValueError(f"max_bytes must be an integer >= 0 or None, got {max_bytes!r}")
    _check_regular_file(path, label)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            keys = [info.filename[:-4] if info.filename.endswith(".npy") else None
                    for info in infos]
            for info, key in zip(infos, keys):
                if key is None or key not in allowed:
                    raise _FileError(f"{label}: unexpected archive member "
                                     f"{_printable(info.filename)!r}; expected .npy arrays "
                                     f"named {', '.join(allowed)}")
            dup = sorted({k for k in keys if keys.count(k) > 1})
            if dup:
                raise _FileError(f"{label}: the archive holds {', '.join(dup)} more than once")
            total = 0
            for info, key in zip(infos, keys):
                shape, dtype, offset = _npy_header(zf, info, key, label)
                if dtype.hasobject:
                    raise _FileError(f"{label}: {key}: object arrays (pickles) are not accepted")
                claimed = math.prod(shape) * dtype.itemsize
                held = info.file_size - offset
                if claimed != held:
                    raise _FileError(f"{label}: {key}: the header claims shape {shape} of {dtype} "
                                     f"({claimed} bytes) but the archive member holds {held} "
                                     "bytes of data")
                total += claimed
                if max_bytes is not None and total > max_bytes:
                    raise _FileError(f"{label}: {key}: the arrays need {total} bytes, more than "
                                     f"max_bytes={max_bytes}")
            arrays = {}
            for info, key in zip(infos, keys):
                with zf.open(info) as fp:
                    arrays[key] = np.lib.format.read_array(fp, allow_pickle=False)
    except _FileError as exc:
        raise ValueError(str(exc)) from None
    except ValueError as exc:
        raise ValueError(f"{label}: not a readable .npz archive ({_printable(exc)})") from None
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{label}: not an .npz archive ({_printable(exc)})") from None
    except IsADirectoryError:
        raise ValueError(f"{label}: is a directory, not an .npz file") from None
    except OSError as exc:
        raise ValueError(f"{label}: cannot be read ({_printable(exc.strerror or exc)})") from None
    except (EOFError, zlib.error, NotImplementedError, RuntimeError) as exc:
        raise ValueError(f"{label}: not a readable .npz archive ({_printable(exc)})") from None
    return arrays


def _checked_dataset(arrays, label):
    """The keyword arguments of :class:`Dataset` from the arrays of a file,
    after checking keys, dtypes, shapes and values (ValueError naming the key)."""
    def bad(key, expected, got):
        return ValueError(f"{label}: {key} must be {expected}, got {got}")

    fmt = arrays.get("format")
    if fmt is None or fmt.shape != () or fmt.dtype.kind != "U" or str(fmt) != _FORMAT:
        raise ValueError(f"{label}: not a trajloss dataset (format must be {_FORMAT!r})")
    missing = [k for k in _SCALARS + _ARRAYS if k not in arrays]
    if missing:
        raise ValueError(f"{label}: missing {', '.join(missing)}")

    def scalar(key, kinds, expected):
        a = arrays[key]
        if a.shape != () or a.dtype.kind not in kinds:
            raise bad(key, expected, f"an array of shape {a.shape} and dtype {a.dtype}")
        return a[()]

    method = str(scalar("method", "U", f"one of {REFERENCE_METHODS}"))
    if method not in REFERENCE_METHODS:
        raise bad("method", f"one of {REFERENCE_METHODS}", repr(_printable(method)))
    dt_arr = arrays["dt"]
    if dt_arr.ndim == 1 and dt_arr.dtype.kind in "iuf":  # per sample: N checked below
        dt = dt_arr.astype(np.float64)
        if not (np.isfinite(dt).all() and (dt > 0).all()):
            where = int(np.flatnonzero(~(np.isfinite(dt) & (dt > 0)))[0])
            raise bad("dt", "finite numbers > 0 (one per sample)", f"{dt[where]!r} at index {where}")
    else:
        dt = float(scalar("dt", "iuf", "a number > 0 (NaN: not set) or N of them"))
        if not (math.isnan(dt) or (math.isfinite(dt) and dt > 0)):
            raise bad("dt", "a finite number > 0 (NaN: not set)", repr(dt))
    bound = float(scalar("control_bound", "iuf", "a number > 0 (NaN: not set)"))
    if not (math.isnan(bound) or bound > 0):
        raise bad("control_bound", "a number > 0 or inf (NaN: not set)", repr(bound))
    ints = {"resampled": int(scalar("resampled", "iu", "an integer >= 0"))}
    if ints["resampled"] < 0:
        raise bad("resampled", "an integer >= 0", ints["resampled"])
    seed = scalar("seed", "iuU", "an integer >= 0, its decimal text, or '' (None)")
    if isinstance(seed, str):  # None, or an integer beyond int64 (see save)
        if seed and not (seed.isascii() and seed.isdigit()):
            raise bad("seed", "an integer >= 0, its decimal text, or '' (None)",
                      repr(_printable(seed, 80)))
        seed = int(seed) if seed else None
    elif int(seed) < 0:
        raise bad("seed", "an integer >= 0", int(seed))
    ints["seed"] = None if seed is None else int(seed)

    for key in _ARRAYS:
        a = arrays[key]
        if a.dtype.kind != "f" or a.dtype.itemsize not in (4, 8):
            raise bad(key, "float32 or float64", f"dtype {a.dtype}")
    x0, controls = arrays["x0"], arrays["controls"]
    if x0.ndim != 2 or 0 in x0.shape:
        raise bad("x0", "a non-empty array of shape (N, n)", f"shape {x0.shape}")
    N, n = x0.shape
    if controls.ndim != 3 or 0 in controls.shape[1:]:
        raise bad("controls", "an array of shape (N, T, m) with T, m >= 1", f"shape {controls.shape}")
    T, m = controls.shape[1:]
    expected = {"xf": ((N, n), "(N, n)"), "controls": ((N, T, m), "(N, T, m)"),
                "states": ((N, T + 1, n), "(N, T+1, n)"), "final_error": ((N,), "(N,)"),
                "energy": ((N,), "(N,)")}
    for key, (shape, text) in expected.items():
        a = arrays[key]
        if a.shape != shape:
            raise bad(key, f"of shape {text} = {shape} (N = {N} and n = {n} from x0, T = {T} "
                      f"and m = {m} from controls)", f"shape {a.shape}")
    if isinstance(dt, np.ndarray) and dt.shape != (N,):
        raise bad("dt", f"a number or of shape (N,) = ({N},) (N from x0)", f"shape {dt.shape}")
    for key in _ARRAYS:
        a = arrays[key]
        finite = np.isfinite(a)
        if not finite.all():
            where = tuple(int(i) for i in np.argwhere(~finite)[0])
            raise bad(key, "finite", f"{a[where]!r} at index {where}")
        if key in ("final_error", "energy") and (a < 0).any():
            raise bad(key, ">= 0", f"{a.min()!r}")
    return dict({k: arrays[k] for k in _ARRAYS}, method=method,
                dt=dt if isinstance(dt, np.ndarray) else None if math.isnan(dt) else dt,
                control_bound=None if math.isnan(bound) else bound, **ints)


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
    """``float(value)`` for a real number or a 0-d real array (bool excluded), or
    TypeError/ValueError naming ``name`` (an int beyond float64 is a ValueError)."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # 0-d array/tensor
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {_printable(repr(value))}")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{name} must be a float64 number (magnitude at most "
                         f"{np.finfo(np.float64).max:.4g}), got an integer beyond that "
                         "range") from None


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


def _samples(system, index):
    """``system`` for the samples ``index`` (a slice or an index array) of the
    batch: a per-sample system's arrays picked at ``index`` (a continuous
    model is picked and discretised again, which gives its samples' ``Ad``,
    ``Bd`` bit for bit); a shared system serves any batch as it is."""
    if system.batch is None:
        return system

    def pick(arr, shared_ndim):
        return arr if arr is None or arr.ndim == shared_ndim else arr[index]

    if system.A is not None:
        dt = system.dt[index] if isinstance(system.dt, np.ndarray) else system.dt
        return LinearSystem.from_continuous(pick(system.A, 2), pick(system.B, 2), dt,
                                            system.method)
    tv = system.steps is not None
    cls = TimeVaryingSystem if tv else LinearSystem
    return cls(pick(system.Ad, 2 + tv), pick(system.Bd, 2 + tv), dt=system.dt,
               offset=pick(system.offset, 1 + tv))


def _references(system, x0, xf, steps, method, bar):
    """min_energy in chunks (so a progress bar can move)."""
    if bar is None:
        return min_energy(system, x0, xf, steps, method)
    parts = []
    for start in range(0, len(x0), _CHUNK):
        chunk = slice(start, start + _CHUNK)
        parts.append(min_energy(_samples(system, chunk), x0[chunk], xf[chunk], steps, method))
        bar.update(len(parts[-1].controls))
    return type(parts[0])(*(np.concatenate([getattr(p, k) for p in parts]) for k in
                            ("controls", "states", "final_error", "energy")),
                          method, max(p.cond for p in parts))


def make_dataset(system, size, steps=None, *, x0_low=None, x0_high=None, target=0.0,
                 control_bound=None, method="exact", seed=0, progress=None):
    """Sample initial states uniformly and compute their minimum-energy references.

    Parameters
    ----------
    system : LinearSystem or TimeVaryingSystem
        Any form (``method="exact"``; ``"average"`` and ``"continuous"``
        need a continuous model). Sample i of a per-sample system is the
        reference of its own system: its B must equal ``size``. A
        time-varying system's T must equal ``steps`` (which defaults to it).
        A mismatch raises ``ValueError`` naming ``system``.
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
    ``x0_high`` and ``control_bound`` take the double-integrator study's
    values (15, (−10, −5), (10, 5), 8); pass ``control_bound=float("inf")`` for no bound.

    Returns
    -------
    Dataset
    """
    system = _check_system(system)
    if steps is None and system.steps is not None:
        steps = system.steps
    if isinstance(system, DoubleIntegrator):
        study = DOUBLE_INTEGRATOR_DEFAULTS
        steps = study["steps"] if steps is None else steps
        x0_low = study["x0_low"] if x0_low is None else x0_low
        x0_high = study["x0_high"] if x0_high is None else x0_high
        control_bound = study["control_bound"] if control_bound is None else control_bound
    if steps is None or x0_low is None or x0_high is None:
        raise ValueError("steps, x0_low and x0_high are required for systems other than "
                         "DoubleIntegrator")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 1 <= size <= 2**40:
        raise ValueError(f"size must be an integer in [1, 2**40], got {size!r}")
    if method not in REFERENCE_METHODS:
        raise ValueError(f"method must be one of {REFERENCE_METHODS}, got {method!r}")
    if system.batch is not None and system.batch != size:
        raise ValueError(f"system holds B = {system.batch} systems (one per sample) but size = "
                         f"{size}: a per-sample system makes a dataset of exactly its B samples")
    if (system.steps is not None and isinstance(steps, (int, np.integer))
            and not isinstance(steps, bool) and steps != system.steps):
        raise ValueError(f"system is time-varying over T = {system.steps} steps but steps = "
                         f"{steps}")
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
            redo = min_energy(_samples(system, bad), x0[bad], xf[bad], steps, method)
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
