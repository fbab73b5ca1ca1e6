"""Malformed calls never crash the interpreter, never return silently, and
raise the right exception naming the offending argument; valid but unusual
inputs (negative, zero and odd strides, misaligned, read-only, Python lists)
give exactly the result of their contiguous copies.

The whole generated list of calls runs in ONE fresh interpreter (a crash
there must not take pytest down with it). The child writes one JSON line
before and one after every call, so when it dies the last "start" record
names the call that killed it. Expectations live in the list itself:

* ``Raises(types, pattern)`` -- the call must raise one of ``types`` (names
  matched against the exception's MRO, so ``LinAlgError`` or JAX's
  ``JaxRuntimeError`` can be named) and ``re.search(pattern, message)``
  must succeed: the pattern names the offending argument as a whole word.
* ``Valid(ref)`` -- the call must return; its result must be identical
  (same dtype, shape, bits) to ``ref()``, the same call on contiguous
  float copies, and, where given, close to an independent NumPy loop.
* ``Returns()`` -- the call must return (``check_finite=False`` with NaN).

The child caps its address space (RLIMIT_AS, 8 GiB) so that a call which
tries to materialise a huge zero-stride view fails with MemoryError instead
of swapping the machine: for a malformed call that counts as the wrong
exception (shapes must be validated before anything is copied).
"""
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import trajloss as tl  # noqa: E402
from conftest import ref_rollout, relayout, unaligned  # noqa: E402
from loss_reference import (adjoint_loop, combined_loss_ref, control_loss_ref,  # noqa: E402
                            terminal_loss_ref, time_weights_ref, trajectory_loss_ref)

# Set in the child only (lambdas resolve these globals when they run).
torch = tlt = jax = jnp = tlj = None

ADDRESS_SPACE_LIMIT = 8 << 30


# ==========================================================================
# expectations
# ==========================================================================


class Raises:
    kind = "raises"

    def __init__(self, types, pattern):
        self.types = (types,) if isinstance(types, str) else tuple(types)
        self.pattern = pattern


class Valid:
    kind = "valid"

    def __init__(self, ref, indep=None, rtol=1e-12):
        self.ref = ref
        self.indep = indep
        self.rtol = rtol


class Returns:
    kind = "returns"


def name(*args):
    """Regex matching any of the argument names as a whole word."""
    return "|".join(rf"\b{re.escape(a)}\b" for a in args)


VE, TE, LA, ME = "ValueError", "TypeError", "LinAlgError", "MemoryError"
TVE = (TE, VE)
JAX_RUNTIME = "JaxRuntimeError"


# ==========================================================================
# the test problem: n = 3 states, m = 2 inputs, B = 3, T = 4, D = 2 features
# ==========================================================================

N, M, B, T, D = 3, 2, 3, 4, 2
_A = np.array([[-0.5, 1.0, 0.0], [0.0, -0.3, 1.0], [0.2, 0.0, -0.4]])
_B = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 1.0]])
SYS = tl.LinearSystem.from_continuous(_A, _B, 0.1)
DISCRETE = tl.LinearSystem(SYS.Ad, SYS.Bd)          # no continuous model
STUCK = tl.LinearSystem(np.eye(2), [[1.0], [0.0]])  # uncontrollable
DI = tl.DoubleIntegrator()


def good(dtype=np.float64):
    """A fresh set of valid float arrays (every call gets its own copies)."""
    r = np.random.default_rng(7)
    a = dict(
        x0=r.standard_normal((B, N)),
        controls=r.standard_normal((B, T, M)),
        grad_states=r.standard_normal((B, T + 1, N)),
        ref_controls=r.standard_normal((B, T, M)),
        ref_states=r.standard_normal((B, T + 1, N)),
        target=r.standard_normal((B, N)),
        terminal_target=r.standard_normal((B, N)),
        xf=r.standard_normal((B, N)),
        pred=r.standard_normal((B, T, D)),
        ctarget=r.standard_normal((B, T, D)),  # control_loss's "target"
    )
    return {k: v.astype(dtype) for k, v in a.items()}


# Each numpy-layer entry point: (call(a, **kw), [(arg name, key in a)], dtype policy)
# dtype policy "float": float32/float64 only, one dtype per call;
#              "real": any real numbers, converted to float64 (min_energy).
def _rollout(a, **kw):
    return tl.rollout(SYS, a["x0"], a["controls"], **kw)


def _vjp(a, **kw):
    return tl.rollout_vjp(SYS, a["x0"], a["controls"], a["grad_states"], **kw)


def _control(a, **kw):
    return tl.control_loss(a["pred"], a["ctarget"], **kw)


def _trajectory(a, **kw):
    return tl.trajectory_loss(SYS, a["controls"], a["x0"], a["ref_states"], **kw)


def _terminal(a, **kw):
    return tl.terminal_loss(SYS, a["controls"], a["x0"], a["target"], **kw)


def _combined(a, **kw):
    kw.setdefault("weight", 0.3)
    kw.setdefault("terminal_weight", 0.5)
    kw.setdefault("terminal_target", a["terminal_target"])
    return tl.combined_loss(SYS, a["controls"], a["x0"], a["ref_controls"], a["ref_states"], **kw)


def _fse(a, **kw):
    return tl.final_state_error(SYS, a["controls"], a["x0"], a["xf"], **kw)


def _success(a, **kw):
    kw.setdefault("tol", 1.0)
    return tl.success_rate(SYS, a["controls"], a["x0"], a["xf"], **kw)


def _min_energy(a, **kw):
    return tl.min_energy(SYS, a["x0"], a["xf"], T, **kw)


FUNCS = {
    "rollout": (_rollout, [("x0", "x0"), ("controls", "controls")], "float"),
    "rollout_vjp": (_vjp, [("x0", "x0"), ("controls", "controls"),
                           ("grad_states", "grad_states")], "float"),
    "control_loss": (_control, [("pred", "pred"), ("target", "ctarget")], "float"),
    "trajectory_loss": (_trajectory, [("controls", "controls"), ("x0", "x0"),
                                      ("ref_states", "ref_states")], "float"),
    "terminal_loss": (_terminal, [("controls", "controls"), ("x0", "x0"),
                                  ("target", "target")], "float"),
    "combined_loss": (_combined, [("controls", "controls"), ("x0", "x0"),
                                  ("ref_controls", "ref_controls"), ("ref_states", "ref_states"),
                                  ("terminal_target", "terminal_target")], "float"),
    "final_state_error": (_fse, [("controls", "controls"), ("x0", "x0"), ("xf", "xf")], "float"),
    "min_energy": (_min_energy, [("x0", "x0"), ("xf", "xf")], "real"),
}
LOSSES = ["control_loss", "trajectory_loss", "terminal_loss", "combined_loss"]

# The arguments that fix B, T, n, m: a shape error in one of them may be
# reported against the other (both names are in the message).
ANCHORS = {"x0": ("x0", "controls"), "controls": ("x0", "controls"),
           "pred": ("pred", "target"), "target": ("target",)}


def anchor(func, arg):
    if func == "control_loss":
        return ("pred", "target")
    if func == "min_energy":
        return ("x0", "xf")
    return ANCHORS.get(arg, (arg,)) if arg in ("x0", "controls") else (arg,)


# ==========================================================================
# independent references (plain loops on float64 copies)
# ==========================================================================


def _f64(a):
    return {k: np.array(v, dtype=np.float64) for k, v in a.items()}


def indep(func, a, kw):
    """An independent NumPy result for a valid call of ``func`` (or None)."""
    a = _f64(a)
    Ad, Bd = SYS.Ad, SYS.Bd
    sel = {k: kw[k] for k in ("lengths", "mask") if k in kw}
    if func == "rollout":
        return ref_rollout(Ad, Bd, a["x0"], a["controls"])
    if func == "rollout_vjp":
        G = a["grad_states"]
        gu, gx = adjoint_loop(Ad, Bd, G if G.ndim == 3 else G[None])
        return (gu, gx) if G.ndim == 3 else (gu[0], gx[0])
    if func == "control_loss":
        return control_loss_ref(a["pred"], a["ctarget"], **sel)
    if func == "trajectory_loss":
        return trajectory_loss_ref(Ad, Bd, a["controls"], a["x0"], a["ref_states"], **sel)
    if func == "terminal_loss":
        return terminal_loss_ref(Ad, Bd, a["controls"], a["x0"], a["target"], **sel)
    if func == "combined_loss":
        return combined_loss_ref(Ad, Bd, a["controls"], a["x0"], a["ref_controls"],
                                 a["ref_states"], 0.3, terminal_weight=0.5,
                                 terminal_target=a["terminal_target"], **sel)
    if func == "final_state_error":
        X = ref_rollout(Ad, Bd, a["x0"], a["controls"])
        return np.linalg.norm(X[..., -1, :] - a["xf"], axis=-1)
    return None


def close(actual, expected, rtol):
    """Compare a trajloss result with an independent reference."""
    if isinstance(expected, dict):  # a loss_reference result
        return (math.isclose(actual.value, expected["value"], rel_tol=rtol, abs_tol=1e-12)
                and close(actual.grad, expected["grad"], rtol)
                and ("grad_x0" not in expected or close(actual.grad_x0, expected["grad_x0"], rtol)))
    if isinstance(expected, tuple):
        return all(close(x, y, rtol) for x, y in zip(actual, expected))
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    return actual.shape == expected.shape and bool(
        np.allclose(actual, expected, rtol=rtol, atol=rtol * scale))


def identical(x, y):
    """Same type, dtype, shape and bits (NaN equal to NaN)."""
    if torch is not None and isinstance(x, torch.Tensor):
        return (isinstance(y, torch.Tensor) and x.dtype == y.dtype and x.shape == y.shape
                and bool(torch.equal(x, y)))
    if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        x, y = np.asarray(x), np.asarray(y)
        return (x.dtype == y.dtype and x.shape == y.shape
                and np.array_equal(x, y, equal_nan=x.dtype.kind in "fc"))
    if isinstance(x, (tuple, list)):
        return type(x) is type(y) and len(x) == len(y) and all(map(identical, x, y))
    if isinstance(x, (tl.LossResult, tl.Reference, tl.LossComponents, tl.Dataset)):
        return type(x) is type(y) and all(identical(getattr(x, f), getattr(y, f))
                                          for f in x.__dataclass_fields__)
    if isinstance(x, tl.LinearSystem):
        return (identical(x.Ad, y.Ad) and identical(x.Bd, y.Bd) and x.dt == y.dt
                and identical(x.A, y.A) and identical(x.B, y.B))
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x):
        return math.isnan(y)
    return type(x) is type(y) and x == y


# ==========================================================================
# layouts and malformed arrays
# ==========================================================================


def huge(shape, dtype=np.float64, fill=0):
    """A read-only view of one element with the given (astronomical) shape."""
    base = np.full(1, fill, dtype=dtype)
    return as_strided(base, shape=shape, strides=(0,) * len(shape), writeable=False)


def readonly(a):
    a = np.array(a, copy=True)
    a.setflags(write=False)
    return a


def zero_stride(a):
    """Every batch entry a broadcast of the first (zero stride on axis 0)."""
    return np.broadcast_to(a[:1], a.shape)


def negative_stride(a):
    return relayout(a, "reversed")


def step2(a):
    return relayout(a, "noncontig")


def fortran(a):
    return relayout(a, "f")


def transposed_copy(a):
    """Equal values in the memory order of the reversed axes (a transposed copy's .T)."""
    return np.ascontiguousarray(a.T).T


LAYOUTS = {
    "negstride": negative_stride,
    "zerostride": zero_stride,
    "step2": step2,
    "fortran": fortran,
    "transposed": transposed_copy,
    "misaligned": unaligned,
    "readonly": readonly,
    "list": lambda a: a.tolist(),
}


def contiguous(v):
    """The contiguous array a layout variant stands for (same values and dtype)."""
    return np.ascontiguousarray(np.asarray(v))


def ragged(a):
    lst = np.asarray(a).tolist()
    lst[0] = lst[0][:-1]
    return lst


def strings(a):
    return np.full(np.shape(a), "x").tolist()


# ==========================================================================
# the case list
# ==========================================================================


def build_cases():
    cases = []

    def add(id_, call, expect):
        cases.append((id_, call, expect))

    # ---------------------------------------------------------------- arrays
    for fname, (f, args, policy) in FUNCS.items():
        for arg, key in args:
            who = anchor(fname, arg)
            pat = name(arg, *who) if arg in who else name(arg)

            def bad(mut, f=f, key=key, kw=None):
                def call():
                    a = good()
                    a[key] = mut(a[key])
                    return f(a, **(kw or {}))
                return call

            base = f"{fname}:{arg}"
            # ranks and dimensions
            add(f"{base}:rank+1", bad(lambda v: v[..., None]), Raises(VE, pat))
            if fname == "min_energy" and arg == "xf":  # a number is a target for every state
                add(f"{base}:valid-scalar", bad(lambda v: 1.5),
                    Valid(bad(lambda v: np.full(v.shape, 1.5))))
            else:
                add(f"{base}:rank0", bad(lambda v: np.float64(1.0)), Raises(VE, pat))
                add(f"{base}:scalar", bad(lambda v: 1.5), Raises(VE, pat))
            if not (fname in ("final_state_error", "min_energy") and arg == "xf"):
                # an (n,) xf is broadcast over the batch (tested as valid below)
                add(f"{base}:rank-1", bad(lambda v: v[0]), Raises(VE, name(arg, *who)))
            add(f"{base}:last+1", bad(lambda v: np.concatenate([v, v[..., :1]], -1)),
                Raises(VE, pat))
            add(f"{base}:last0", bad(lambda v: v[..., :0]), Raises(VE, pat))
            add(f"{base}:batch-1", bad(lambda v: v[:-1]), Raises(VE, name(arg, *who)))
            add(f"{base}:batch0", bad(lambda v: v[:0]), Raises(VE, name(arg, *who)))
            if np.ndim(good()[key]) == 3 and arg not in ("controls", "pred", "target"):
                add(f"{base}:T+1", bad(lambda v: np.concatenate([v, v[:, :1]], 1)),
                    Raises(VE, pat))
            # a huge zero-stride view whose batch does not match: must be refused
            # from its shape, never copied
            shp = np.shape(good()[key])
            huge_shape = (2 ** 56,) + shp[1:]  # >= 2**59 bytes: nothing can hold a copy
            add(f"{base}:huge-view", bad(lambda v, s=huge_shape: huge(s)),
                Raises(VE, name(arg, *who)))
            # dtypes
            bad_dtypes = [np.bool_, np.complex128, object]
            if policy == "float":
                bad_dtypes += [np.int64, np.int32, np.uint8, np.float16, np.longdouble]
            for dt in bad_dtypes:
                add(f"{base}:dtype-{np.dtype(dt).name}", bad(lambda v, dt=dt: v.astype(dt)),
                    Raises(TE, name(arg)))
            if policy == "float":
                add(f"{base}:mixed-float32", bad(lambda v: v.astype(np.float32)),
                    Raises(TE, name(arg)))
            # objects that are not arrays of numbers
            if arg != "terminal_target":  # None is its default
                add(f"{base}:None", bad(lambda v: None), Raises(TE, name(arg)))
            add(f"{base}:str", bad(lambda v: "abc"), Raises(TE, name(arg)))
            add(f"{base}:list-of-str", bad(strings), Raises(TE, name(arg)))
            add(f"{base}:ragged", bad(ragged), Raises(VE, name(arg)))
            add(f"{base}:complex-list", bad(lambda v: (np.asarray(v) + 1j).tolist()),
                Raises(TE, name(arg)))
            # non-finite values
            for val in (np.nan, np.inf, -np.inf):
                def poison(v, val=val):
                    v = np.array(v, copy=True)
                    v[(-1,) * v.ndim] = val
                    return v
                add(f"{base}:{val}", bad(poison), Raises(VE, name(arg)))
                if fname != "min_energy":
                    add(f"{base}:{val}:check_finite=False",
                        bad(poison, kw={"check_finite": False}), Returns())

            # valid but unusual layouts: identical to the contiguous call
            for lname, lay in LAYOUTS.items():
                for dt in (np.float64, np.float32) if policy == "float" else (np.float64,):
                    def call(f=f, key=key, lay=lay, dt=dt):
                        a = good(dt)
                        a[key] = lay(a[key])
                        return f(a)

                    def ref(f=f, key=key, lay=lay, dt=dt):
                        a = good(dt)
                        a[key] = np.asarray(contiguous(lay(a[key])), dtype=dt)
                        return f(a)

                    def ind(fname=fname, key=key, lay=lay, dt=dt):
                        a = good(dt)
                        a[key] = contiguous(lay(a[key]))
                        return indep(fname, a, {})

                    tol = 1e-12 if dt == np.float64 else 2e-5
                    add(f"{base}:valid-{lname}-{np.dtype(dt).name}", call,
                        Valid(ref, ind if indep(fname, good(), {}) is not None else None, tol))
        # whole-call shape cases
        f_ = f

        def empty(f=f_, steps=T, batch=0, fname=fname):
            a = good()
            for k, v in a.items():
                if fname == "min_energy" and k not in ("x0", "xf"):
                    continue
                v = v[:batch]
                if v.ndim == 3:
                    v = v[:, :steps + (1 if k in ("grad_states", "ref_states") else 0)]
                a[k] = v
            return f(a)

        if fname in LOSSES:
            add(f"{fname}:empty-batch", empty, Raises(VE, r"valid|empty"))
            add(f"{fname}:T=0", lambda empty=empty: empty(steps=0, batch=B),
                Raises(VE, r"valid|empty"))
        else:
            add(f"{fname}:empty-batch", empty, Valid(lambda empty=empty: empty()))
            if fname != "min_energy":
                add(f"{fname}:T=0", lambda empty=empty: empty(steps=0, batch=B),
                    Valid(lambda empty=empty: empty(steps=0, batch=B),
                          (lambda empty=empty, fname=fname: _t0_ref(fname))))
        # float32 everywhere (the output keeps the dtype) and unbatched inputs
        add(f"{fname}:valid-unbatched",
            lambda f=f: f({k: v[0] for k, v in good().items()}),
            Valid(lambda f=f: f({k: np.ascontiguousarray(v[0]) for k, v in good().items()}),
                  (lambda fname=fname: indep(fname, {k: v[0] for k, v in good().items()}, {}))
                  if fname not in ("min_energy",) else None))
    # lists of ints are "weak": they take the dtype of the array arguments
    add("rollout:valid-int-list-float32",
        lambda: tl.rollout(SYS, good(np.float32)["x0"], np.ones((B, T, M), int).tolist()),
        Valid(lambda: tl.rollout(SYS, good(np.float32)["x0"], np.ones((B, T, M), np.float32))))
    add("rollout:valid-int-lists",
        lambda: tl.rollout(SYS, [[1, 2, 3]] * B, np.ones((B, T, M), int).tolist()),
        Valid(lambda: tl.rollout(SYS, np.array([[1.0, 2, 3]] * B), np.ones((B, T, M)))))
    add("min_energy:valid-int-x0",
        lambda: tl.min_energy(SYS, np.array([[1, 2, 3]] * B), [0, 0, 0], T),
        Valid(lambda: tl.min_energy(SYS, np.array([[1.0, 2, 3]] * B), np.zeros((B, N)), T)))
    add("min_energy:valid-float16-x0",
        lambda: tl.min_energy(SYS, np.ones((B, N), np.float16), np.zeros(N, np.float16), T),
        Valid(lambda: tl.min_energy(SYS, np.ones((B, N)), np.zeros((B, N)), T)))
    for fname in ("final_state_error", "min_energy"):
        f = FUNCS[fname][0]
        add(f"{fname}:valid-xf-broadcast",
            lambda f=f: f(dict(good(), xf=good()["xf"][0])),
            Valid(lambda f=f: f(dict(good(), xf=np.tile(good()["xf"][0], (B, 1))))))
    add("final_state_error:valid-xf-list-float32",
        lambda: _fse(dict(good(np.float32), xf=[0.5, 1, 2])),
        Valid(lambda: _fse(dict(good(np.float32),
                                xf=np.tile(np.array([0.5, 1, 2], np.float32), (B, 1))))))
    # huge but consistent shapes: no output could hold the result
    add("rollout:huge-consistent",
        lambda: tl.rollout(SYS, huge((2 ** 28, N)), huge((2 ** 28, 2 ** 28, M))),
        Raises((ME, VE), r"(?i)allocate|too big|maximum|memory"))
    add("rollout:valid-huge-T-empty-batch",
        lambda: tl.rollout(SYS, np.zeros((0, N)), np.empty((0, 2 ** 58, M))),
        Valid(lambda: np.zeros((0, 2 ** 58 + 1, N))))
    add("control_loss:huge-T-empty-batch",
        lambda: tl.control_loss(np.empty((0, 2 ** 59, 1)), np.empty((0, 2 ** 59, 1))),
        Raises(VE, r"valid|empty"))
    add("trajectory_loss:huge-T-empty-batch",
        lambda: tl.trajectory_loss(SYS, np.empty((0, 2 ** 57, M)), np.zeros((0, N)),
                                   np.empty((0, 2 ** 57 + 1, N))),
        Raises(VE, r"valid|empty"))
    add("final_state_error:huge-T-empty-batch",
        lambda: tl.final_state_error(SYS, np.empty((0, 2 ** 58, M)), np.zeros((0, N)),
                                     np.zeros((0, N))),
        Valid(lambda: np.zeros(0)))
    add("min_energy:huge-batch-view",
        lambda: tl.min_energy(SYS, huge((2 ** 56, N)), np.zeros(N), T),
        Raises((ME, VE), r"(?i)allocate|too big|maximum|memory"))

    # ----------------------------------------------------- selection options
    sel_funcs = LOSSES + ["final_state_error", "time_weights"]
    bad_lengths = [
        ("too-big", np.array([T + 1, 1, 1]), VE),
        ("negative", np.array([2, -1, 1]), VE),
        ("short", np.array([2, 1]), VE),
        ("long", np.array([2, 1, 1, 1]), VE),
        ("rank2", np.array([[2, 1, 1]]), VE),
        ("float", np.array([2.0, 1.0, 1.0]), TE),
        ("bool", np.array([True, True, False]), TE),
        ("complex", np.array([1 + 0j, 1, 1]), TE),
        ("str", ["2", "1", "1"], TE),
        ("object", np.array([2, 1, 1], dtype=object), TE),
        ("None-entry", [2, None, 1], TE),
        ("uint64-max", np.array([2 ** 64 - 1, 1, 1], dtype=np.uint64), VE),
        ("huge-view", as_strided(np.zeros(1, np.int64), (2 ** 59,), (0,)), VE),
    ]
    for fname in sel_funcs:
        f = FUNCS[fname][0] if fname in FUNCS else (lambda a, **kw: tl.time_weights(T, 0.5, **kw))
        for lid, lv, exc in bad_lengths:
            if fname == "time_weights" and lid in ("short", "long"):
                continue  # time_weights takes B from lengths
            if fname == "time_weights" and lid == "huge-view":  # valid, but too big
                add(f"{fname}:lengths-{lid}", lambda f=f, lv=lv: f(good(), lengths=lv),
                    Raises((ME, VE), r"(?i)allocate|too big|maximum|memory"))
                continue
            add(f"{fname}:lengths-{lid}", lambda f=f, lv=lv: f(good(), lengths=lv),
                Raises(exc, name("lengths")))
        if fname == "final_state_error":
            continue
        bad_masks = [
            ("T-short", np.ones((B, T - 1), bool), VE),
            ("B-long", np.ones((B + 1, T), bool), VE),
            ("rank3", np.ones((B, T, 1), bool), VE),
            ("transposed", np.ones((T, B), bool), VE),
            ("float", np.ones((B, T)), TE),
            ("complex", np.ones((B, T), complex), TE),
            ("str", np.full((B, T), "y").tolist(), TE),
            ("object", np.ones((B, T), object), TE),
            ("huge-view", as_strided(np.ones(1, bool), (2 ** 31, 2 ** 31), (0, 0)), VE),
        ]
        if fname != "time_weights":
            bad_masks.append(("rank1", np.ones(T, bool), VE))
            add(f"{fname}:mask-all-false", lambda f=f: f(good(), mask=np.zeros((B, T), bool)),
                Raises(VE, name("mask")))
            add(f"{fname}:lengths-all-zero", lambda f=f: f(good(), lengths=np.zeros(B, int)),
                Raises(VE, name("lengths")))
        for mid, mv, exc in bad_masks:
            if fname == "time_weights" and mid == "B-long":
                continue  # time_weights takes B from the mask
            add(f"{fname}:mask-{mid}", lambda f=f, mv=mv: f(good(), mask=mv),
                Raises(exc, name("mask")))
        add(f"{fname}:lengths-and-mask",
            lambda f=f: f(good(), lengths=np.array([1, 2, 3]), mask=np.ones((B, T), bool)),
            Raises(VE, name("lengths", "mask")))
        # valid unusual layouts of lengths and mask
        for lname, lay in LAYOUTS.items():
            if lname in ("misaligned",):
                continue
            lens = np.array([4, 1, 3])
            mask = np.array([[1, 0, 1, 1], [0, 0, 1, 0], [1, 1, 1, 1]], bool)
            add(f"{fname}:valid-lengths-{lname}",
                lambda f=f, lay=lay, lens=lens: f(good(), lengths=lay(lens)),
                Valid(lambda f=f, lay=lay, lens=lens: f(good(), lengths=contiguous(lay(lens))),
                      (lambda fname=fname, lay=lay, lens=lens: _sel_indep(
                          fname, lengths=contiguous(lay(lens))))))
            add(f"{fname}:valid-mask-{lname}",
                lambda f=f, lay=lay, mask=mask: f(good(), mask=lay(mask)),
                Valid(lambda f=f, lay=lay, mask=mask: f(good(), mask=contiguous(lay(mask))),
                      (lambda fname=fname, lay=lay, mask=mask: _sel_indep(
                          fname, mask=contiguous(lay(mask))))))

    # ---------------------------------------------------- scalar options
    disc_funcs = ["control_loss", "trajectory_loss", "combined_loss", "time_weights"]
    bad_discounts = [
        ("zero", 0.0, VE), ("negative", -0.5, VE), ("nan", np.nan, VE), ("inf", np.inf, VE),
        ("-inf", -np.inf, VE), ("-0", -0.0, VE), ("str", "0.5", TE), ("bool", True, TE),
        ("complex", 0.5j, TE), ("list", [0.5], TE), ("array1", np.array([0.5]), TE),
        ("object", object(), TE),
    ]
    for fname in disc_funcs:
        f = FUNCS[fname][0] if fname in FUNCS else None
        for did, dv, exc in bad_discounts:
            if f is None:
                call = (lambda dv=dv: tl.time_weights(T, dv))
            else:
                call = (lambda f=f, dv=dv: f(good(), discount=dv))
            add(f"{fname}:discount-{did}", call, Raises(exc, name("discount")))
    for fname in LOSSES:
        f = FUNCS[fname][0]
        for pen, exc in (("foo", VE), ("", VE), ("MSE", VE), ("huber ", VE), ("mse\0", VE),
                         (None, TVE), (1, TVE), (b"mse", TVE), (["mse"], TVE)):
            add(f"{fname}:penalty-{pen!r}", lambda f=f, pen=pen: f(good(), penalty=pen),
                Raises(exc, name("penalty")))
        for did, dv, exc in (("zero", 0.0, VE), ("negative", -1.0, VE), ("nan", np.nan, VE),
                             ("inf", np.inf, VE), ("str", "1", TE), ("None", None, TE),
                             ("array1", np.array([1.0]), TE)):
            add(f"{fname}:delta-{did}", lambda f=f, dv=dv: f(good(), penalty="huber", delta=dv),
                Raises(exc, name("delta")))
        wnames = []
        if fname in ("control_loss", "combined_loss"):
            wnames.append(("feature_weights", D if fname == "control_loss" else M))
        if fname != "control_loss":
            wnames.append(("state_weights", N))
        for wname, k in wnames:
            for wid, wv, exc in (("short", np.ones(k - 1), VE), ("long", np.ones(k + 1), VE),
                                 ("rank2", np.ones((1, k)), VE),
                                 ("negative", np.r_[np.ones(k - 1), -1.0], VE),
                                 ("nan", np.r_[np.ones(k - 1), np.nan], VE),
                                 ("inf", np.r_[np.ones(k - 1), np.inf], VE),
                                 ("str", ["a"] * k, TE), ("complex", np.ones(k, complex), TE),
                                 ("bool", np.ones(k, bool), TE), ("None-entry", [None] * k, TE),
                                 ("huge-view", huge((2 ** 59,)), VE)):
                add(f"{fname}:{wname}-{wid}", lambda f=f, wname=wname, wv=wv:
                    f(good(), **{wname: wv}), Raises(exc, name(wname)))
        for bad_sys in (None, "system", np.eye(N), (SYS.Ad, SYS.Bd)):
            if fname == "control_loss":
                continue
            add(f"{fname}:system-{type(bad_sys).__name__}",
                lambda fname=fname, bad_sys=bad_sys: _with_system(fname, bad_sys),
                Raises(TE, name("system")))
    for wn in ("weight", "terminal_weight"):
        for wid, wv, exc in (("negative", -0.1, VE), ("nan", np.nan, VE), ("inf", np.inf, VE),
                             ("str", "0.3", TE), ("None", None, TE), ("bool", True, TE),
                             ("list", [0.3], TE), ("complex", 0.3j, TE)):
            add(f"combined_loss:{wn}-{wid}", lambda wn=wn, wv=wv: _combined(good(), **{wn: wv}),
                Raises(exc, name(wn)))
    for tid, tv, exc in (("negative", -1.0, VE), ("nan", np.nan, VE), ("inf", np.inf, VE),
                         ("str", "1", TE), ("None", None, TE), ("bool", True, TE)):
        add(f"success_rate:tol-{tid}", lambda tv=tv: _success(good(), tol=tv),
            Raises(exc, name("tol")))
    for fname in ("rollout", "rollout_vjp", "final_state_error", "success_rate", "min_energy"):
        for bad_sys in (None, "system", np.eye(N), DI.__class__):
            add(f"{fname}:system-{getattr(bad_sys, '__name__', type(bad_sys).__name__)}",
                lambda fname=fname, bad_sys=bad_sys: _with_system(fname, bad_sys),
                Raises(TE, name("system")))

    # ---------------------------------------------------------- time_weights
    for tid, tv, exc in (("negative", -1, VE), ("float", 4.0, TE), ("None", None, TE),
                         ("str", "4", TE), ("bool", True, TE), ("2**31", 2 ** 31, VE),
                         ("2**63", 2 ** 63, VE), ("array", np.array([4]), TE)):
        add(f"time_weights:T-{tid}", lambda tv=tv: tl.time_weights(tv, 0.5),
            Raises(exc, name("T")))
    add("time_weights:valid-T-np-int", lambda: tl.time_weights(np.int16(T), 0.5),
        Valid(lambda: tl.time_weights(T, 0.5), lambda: time_weights_ref(T, 0.5)))
    add("time_weights:valid-T0", lambda: tl.time_weights(0, 0.5), Valid(lambda: np.zeros(0)))
    add("time_weights:valid-empty-lengths",
        lambda: tl.time_weights(T, 0.5, lengths=np.zeros(0, int)),
        Valid(lambda: np.zeros((0, T))))
    add("time_weights:valid-empty-lengths-huge-T",
        lambda: tl.time_weights(2 ** 31 - 1, 0.5, lengths=np.zeros(0, int)),
        Valid(lambda: np.zeros((0, 2 ** 31 - 1))))

    # --------------------------------------------------------- systems
    good_Ad, good_Bd = SYS.Ad.copy(), SYS.Bd.copy()
    sys_cases = [
        ("Ad-2x3", np.ones((2, 3)), np.ones((2, 1)), VE, "Ad"),
        ("Ad-rank1", np.ones(2), np.ones((2, 1)), VE, "Ad"),
        ("Ad-rank4", np.ones((2, 2, 2, 2)), np.ones((2, 1)), VE, "Ad"),  # rank 3: per sample
        ("Ad-rank0", 1.0, np.ones((1, 1)), VE, "Ad"),
        ("Bd-rows", np.eye(2), np.ones((3, 1)), VE, "Bd"),
        ("Bd-rank1", np.eye(2), np.ones(2), VE, "Bd"),
        ("n0", np.zeros((0, 0)), np.zeros((0, 1)), VE, "Ad"),
        ("m0", np.eye(2), np.zeros((2, 0)), VE, "Bd"),
        ("n-too-big-view", huge((5000, 5000)), huge((5000, 1)), VE, "Ad"),
        ("Ad-huge-view", huge((2 ** 29, 2 ** 30)), np.ones((2, 1)), VE, "Ad"),
        ("Ad-huge-square-view", huge((2 ** 25, 2 ** 25)), np.ones((2, 1)), VE, "Ad"),
        ("Bd-huge-view", np.eye(2), huge((2, 2 ** 58)), VE, "Bd"),
        ("Ad-nan", np.array([[1.0, np.nan], [0, 1]]), np.ones((2, 1)), VE, "Ad"),
        ("Ad-inf", np.array([[1.0, np.inf], [0, 1]]), np.ones((2, 1)), VE, "Ad"),
        ("Bd-nan", np.eye(2), np.array([[np.nan], [1.0]]), VE, "Bd"),
        ("Bd-ninf", np.eye(2), np.array([[-np.inf], [1.0]]), VE, "Bd"),
        ("Ad-complex", np.eye(2, dtype=complex), np.ones((2, 1)), TE, "Ad"),
        ("Ad-bool", np.eye(2, dtype=bool), np.ones((2, 1)), TE, "Ad"),
        ("Ad-object", np.eye(2).astype(object), np.ones((2, 1)), TE, "Ad"),
        ("Ad-str", [["a", "b"], ["c", "d"]], np.ones((2, 1)), TE, "Ad"),
        ("Ad-None", None, np.ones((2, 1)), TE, "Ad"),
        ("Bd-None", np.eye(2), None, TE, "Bd"),
        ("Bd-complex", np.eye(2), [[1j], [0]], TE, "Bd"),
        ("Ad-ragged", [[1.0, 0.0], [1.0]], np.ones((2, 1)), VE, "Ad"),
        ("Ad-longdouble-overflow", np.eye(2, dtype=np.longdouble) * np.longdouble("1e400"),
         np.ones((2, 1)), VE, "Ad"),
    ]
    for sid, Ad, Bd, exc, who in sys_cases:
        add(f"LinearSystem:{sid}", lambda Ad=Ad, Bd=Bd: tl.LinearSystem(Ad, Bd),
            Raises(exc, name(who)))
        A_name = {"Ad": "A", "Bd": "B"}[who]
        add(f"from_continuous:{sid}",
            lambda Ad=Ad, Bd=Bd: tl.LinearSystem.from_continuous(Ad, Bd, 0.1),
            Raises(exc, name(A_name)))
    bad_dts = [("zero", 0.0, VE), ("negative", -1.0, VE), ("nan", np.nan, VE), ("inf", np.inf, VE),
               ("str", "0.1", TE), ("complex", 1j, TE), ("bool", True, TE), ("list", [0.1], TE),
               ("array", np.array([0.1]), TE)]
    for did, dv, exc in bad_dts:
        add(f"LinearSystem:dt-{did}", lambda dv=dv: tl.LinearSystem(np.eye(2), np.ones((2, 1)), dv),
            Raises(exc, name("dt")))
        if did not in ("list", "array"):  # from_continuous takes a (B,) dt: one per sample
            add(f"from_continuous:dt-{did}",
                lambda dv=dv: tl.LinearSystem.from_continuous(_A, _B, dv), Raises(exc, name("dt")))
        add(f"DoubleIntegrator:dt-{did}", lambda dv=dv: tl.DoubleIntegrator(dv),
            Raises(exc, name("dt")))
    add("from_continuous:dt-None", lambda: tl.LinearSystem.from_continuous(_A, _B, None),
        Raises(TE, name("dt")))
    for did, dv, exc in (("array2d", np.array([[0.1]]), VE), ("empty", np.zeros(0), VE),
                         ("array-negative", np.array([0.1, -0.1]), VE),
                         ("array-nan", np.array([0.1, np.nan]), VE),
                         ("array-str", np.array(["0.1"]), TE),
                         ("array-bool", np.array([True]), TE)):
        add(f"from_continuous:dt-{did}",
            lambda dv=dv: tl.LinearSystem.from_continuous(_A, _B, dv), Raises(exc, name("dt")))
    for meth in ("foo", "", "ZOH", "zoh ", None, 1, ["zoh"], b"zoh"):
        add(f"from_continuous:method-{meth!r}",
            lambda meth=meth: tl.LinearSystem.from_continuous(_A, _B, 0.1, meth),
            Raises(TVE if not isinstance(meth, str) else VE, name("method")))
        add(f"DoubleIntegrator:method-{meth!r}", lambda meth=meth: tl.DoubleIntegrator(0.1, meth),
            Raises(TVE if not isinstance(meth, str) else VE, name("method")))
    add("from_continuous:overflow", lambda: tl.LinearSystem.from_continuous(
        np.eye(2) * 1e3, np.ones((2, 1)), 1.0), Raises(VE, name("A", "Ad", "dt")))
    for lname, lay in LAYOUTS.items():
        add(f"LinearSystem:valid-{lname}",
            lambda lay=lay: tl.LinearSystem(lay(good_Ad), lay(good_Bd)),
            Valid(lambda lay=lay: tl.LinearSystem(contiguous(lay(good_Ad)),
                                                  contiguous(lay(good_Bd)))))
        add(f"from_continuous:valid-{lname}",
            lambda lay=lay: tl.LinearSystem.from_continuous(lay(_A), lay(_B), 0.1),
            Valid(lambda lay=lay: tl.LinearSystem.from_continuous(
                contiguous(lay(_A)), contiguous(lay(_B)), 0.1)))
    for dt in (np.int64, np.float16, np.float32, np.longdouble, np.uint8):
        add(f"LinearSystem:valid-{np.dtype(dt).name}",
            lambda dt=dt: tl.LinearSystem(np.eye(2, dtype=dt), np.ones((2, 1), dtype=dt)),
            Valid(lambda dt=dt: tl.LinearSystem(np.eye(2, dtype=dt).astype(np.float64),
                                                np.ones((2, 1)))))

    # --------------------------------------------------------- expm (public in _core.pyi)
    expm_cases = [("nonsquare", np.ones((2, 3)), VE), ("rank1", np.ones(3), VE),
                  ("n0", np.zeros((0, 0)), VE), ("nan", np.array([[np.nan]]), VE),
                  ("complex", np.eye(2, dtype=complex), TE), ("str", [["a"]], TE),
                  ("None", None, TE), ("too-big-view", huge((9000, 9000)), VE),
                  ("huge-view", huge((2 ** 29, 2 ** 30)), VE)]
    for eid, ev, exc in expm_cases:
        add(f"expm:{eid}", lambda ev=ev: tl._core.expm(ev), Raises(exc, name("A")))
    add("expm:valid-negstride", lambda: tl._core.expm(_A[::-1, ::-1]),
        Valid(lambda: tl._core.expm(np.ascontiguousarray(_A[::-1, ::-1]))))
    add("expm:valid-misaligned", lambda: tl._core.expm(unaligned(_A)),
        Valid(lambda: tl._core.expm(_A.copy())))

    # --------------------------------------------------------- min_energy
    for sid, sv, exc in (("zero", 0, VE), ("negative", -1, VE), ("float", 4.0, TE),
                         ("str", "4", TE), ("bool", True, TE), ("None", None, TE),
                         ("2**31", 2 ** 31, VE), ("2**64", 2 ** 64, VE)):
        add(f"min_energy:steps-{sid}",
            lambda sv=sv: tl.min_energy(SYS, good()["x0"], np.zeros(N), sv),
            Raises(exc, name("steps")))
    for meth in ("foo", "", "EXACT", None, 1, ["exact"]):
        add(f"min_energy:method-{meth!r}",
            lambda meth=meth: tl.min_energy(SYS, good()["x0"], np.zeros(N), T, meth),
            Raises(TVE if not isinstance(meth, str) else VE, name("method")))
    for meth in ("average", "continuous"):
        add(f"min_energy:discrete-{meth}",
            lambda meth=meth: tl.min_energy(DISCRETE, good()["x0"], np.zeros(N), T, meth),
            Raises(VE, r"continuous model|\bA\b"))
        add(f"min_energy:uncontrollable-{meth}", lambda meth=meth: tl.min_energy(
            tl.LinearSystem.from_continuous(np.zeros((2, 2)), [[1.0], [0.0]], 0.1),
            np.ones((B, 2)), np.zeros(2), 5, meth), Raises(LA, r"(?i)gramian|condition"))
    add("min_energy:uncontrollable-exact",
        lambda: tl.min_energy(STUCK, np.ones((B, 2)), np.zeros(2), 5),
        Raises(LA, r"(?i)gramian|condition"))
    add("min_energy:one-step-n2", lambda: tl.min_energy(DI, np.ones(2), np.zeros(2), 1),
        Raises(LA, r"(?i)gramian|condition"))
    add("min_energy:xf-3d", lambda: tl.min_energy(SYS, good()["x0"], np.zeros((1, B, N)), T),
        Raises(VE, name("xf")))

    # --------------------------------------------------------- min_energy_law
    x0g = good()["x0"]
    for hid, hv, exc in (("zero", 0.0, VE), ("negative", -1.0, VE), ("nan", np.nan, VE),
                         ("inf", np.inf, VE), ("str", "5", TE), ("None", None, TE),
                         ("bool", True, TE), ("array", np.array([5.0]), TE)):
        add(f"min_energy_law:horizon-{hid}",
            lambda hv=hv: tl.min_energy_law(SYS, x0g, np.zeros(N), hv),
            Raises(exc, name("horizon")))
    for xid, xv, exc, who in (("x0-rank3", np.zeros((1, B, N)), VE, "x0"),
                              ("x0-n", np.zeros((B, N + 1)), VE, "x0"),
                              ("x0-nan", np.full((B, N), np.nan), VE, "x0"),
                              ("x0-str", "abc", TE, "x0"), ("x0-None", None, TE, "x0"),
                              ("x0-complex", np.zeros((B, N), complex), TE, "x0"),
                              ("x0-ragged", [[1.0, 2.0, 3.0], [1.0]], VE, "x0"),
                              ("x0-huge-view", huge((2 ** 56, N + 1)), VE, "x0")):
        add(f"min_energy_law:{xid}", lambda xv=xv: tl.min_energy_law(SYS, xv, np.zeros(N), 1.0),
            Raises(exc, name(who)))
    for xid, xv, exc in (("xf-n", np.zeros(N + 1), VE), ("xf-nan", np.full(N, np.nan), VE),
                         ("xf-str", "abc", TE), ("xf-None", None, TE)):
        add(f"min_energy_law:{xid}", lambda xv=xv: tl.min_energy_law(SYS, x0g, xv, 1.0),
            Raises(exc, name("xf")))
    add("min_energy_law:discrete", lambda: tl.min_energy_law(DISCRETE, x0g, np.zeros(N), 1.0),
        Raises(VE, r"continuous model|\bA\b"))
    add("min_energy_law:uncontrollable", lambda: tl.min_energy_law(
        tl.LinearSystem.from_continuous(np.zeros((2, 2)), [[1.0], [0.0]], 0.1),
        np.ones(2), np.zeros(2), 1.0), Raises(LA, r"(?i)gramian|condition"))
    for tid, tv, exc in (("out-of-range", [0.5, 1.5], VE), ("negative", [-0.1], VE),
                         ("nan", [np.nan], VE), ("rank2", np.zeros((2, 2)), VE), ("str", "a", TE),
                         ("None", None, TE), ("complex", [0.5j], TE),
                         ("huge-view-out-of-range", huge((2 ** 59,), fill=-1.0), VE)):
        add(f"MinEnergyLaw.evaluate:t-{tid}",
            lambda tv=tv: tl.min_energy_law(SYS, x0g, np.zeros(N), 1.0).evaluate(tv),
            Raises(exc, name("t")))
    add("MinEnergyLaw.evaluate:valid-negstride",
        lambda: tl.min_energy_law(SYS, x0g, np.zeros(N), 1.0).evaluate(np.linspace(0, 1, 5)[::-1]),
        Valid(lambda: tl.min_energy_law(SYS, x0g, np.zeros(N), 1.0).evaluate(
            np.ascontiguousarray(np.linspace(0, 1, 5)[::-1]))))

    # --------------------------------------------------------- make_dataset / calibrate
    md = [
        ("size-0", dict(size=0), VE, "size"), ("size-negative", dict(size=-1), VE, "size"),
        ("size-2**41", dict(size=2 ** 41), VE, "size"), ("size-float", dict(size=5.0), TVE, "size"),
        ("size-str", dict(size="5"), TVE, "size"), ("size-None", dict(size=None), TVE, "size"),
        ("size-bool", dict(size=True), TVE, "size"),
        ("steps-0", dict(steps=0), VE, "steps"), ("steps-str", dict(steps="5"), TE, "steps"),
        ("steps-float", dict(steps=2.5), TE, "steps"),
        ("x0_low-shape", dict(x0_low=[0, 0, 0]), VE, "x0_low"),
        ("x0_low-nan", dict(x0_low=[np.nan, 0]), VE, "x0_low"),
        ("x0_low-str", dict(x0_low="ab"), TVE, "x0_low"),
        ("x0_low-None-entry", dict(x0_low=[None, 0]), TVE, "x0_low"),
        ("x0_high-shape", dict(x0_high=[[1, 1]]), VE, "x0_high"),
        ("x0_high-inf", dict(x0_high=[np.inf, 1]), VE, "x0_high"),
        ("x0_high-ragged", dict(x0_high=[[1.0], [1.0, 2.0]]), VE, "x0_high"),
        ("low-above-high", dict(x0_low=[1, 1], x0_high=[0, 0]), VE, "x0_low"),
        ("control_bound-negative", dict(control_bound=-1), VE, "control_bound"),
        ("control_bound-zero", dict(control_bound=0), VE, "control_bound"),
        ("control_bound-nan", dict(control_bound=np.nan), VE, "control_bound"),
        ("control_bound-str", dict(control_bound="a"), TVE, "control_bound"),
        ("control_bound-list", dict(control_bound=[8.0]), TVE, "control_bound"),
        ("target-nan", dict(target=np.nan), VE, "target"),
        ("target-shape", dict(target=[0, 0, 0]), VE, "target"),
        ("target-str", dict(target="a"), TVE, "target"),
        ("method-foo", dict(method="foo"), VE, "method"),
        ("method-list", dict(method=["exact"]), TVE, "method"),
        ("seed-str", dict(seed="a"), TVE, "seed"),
        ("seed-negative", dict(seed=-1), TVE, "seed"),
        ("seed-float", dict(seed=1.5), TVE, "seed"),
    ]
    for mid, kw, exc, who in md:
        def call(kw=kw):
            kw = dict(kw)
            size = kw.pop("size", 4)
            return tl.make_dataset(DI, size, **kw)
        add(f"make_dataset:{mid}", call, Raises(exc, name(who)))
    add("make_dataset:system-None", lambda: tl.make_dataset(None, 4), Raises(TE, name("system")))
    add("make_dataset:non-DI-defaults", lambda: tl.make_dataset(SYS, 4),
        Raises(VE, name("steps", "x0_low", "x0_high")))
    data = tl.make_dataset(DI, 8, seed=0)
    cal = [
        ("dataset-None", dict(dataset=None), TE, "dataset"),
        ("dataset-str", dict(dataset="data"), TE, "dataset"),
        ("dataset-dict", dict(dataset={"controls": 1}), TE, "dataset"),
        ("baseline-foo", dict(baseline="foo"), VE, "baseline"),
        ("baseline-list", dict(baseline=["zero"]), TVE, "baseline"),
        ("baseline-None", dict(baseline=None), TVE, "baseline"),
        ("control_bound-str", dict(control_bound="a"), TVE, "control_bound"),
        ("control_bound-None", dict(control_bound=None), TVE, "control_bound"),
        ("control_bound-zero", dict(control_bound=0), VE, "control_bound"),
        ("control_bound-nan", dict(control_bound=np.nan), VE, "control_bound"),
        ("seed-str", dict(seed="a"), TVE, "seed"),
        ("seed-negative", dict(seed=-1), TVE, "seed"),
    ]
    for cid, kw, exc, who in cal:
        def call(kw=kw):
            kw = dict(kw)
            dataset = kw.pop("dataset", data)
            return tl.calibrate(DI, dataset, **kw)
        add(f"calibrate:{cid}", call, Raises(exc, name(who)))
    add("calibrate:system-None", lambda: tl.calibrate(None, data), Raises(TE, name("system")))
    add("calibrate:system-mismatch", lambda: tl.calibrate(SYS, data),
        Raises(VE, name("x0", "dataset", "system", "controls")))

    # --------------------------------------------------------- torch layer
    add_torch_cases(add)
    # --------------------------------------------------------- jax layer
    add_jax_cases(add)

    ids = [c[0] for c in cases]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})
    return cases


def _sel_indep(fname, **sel):
    if fname == "time_weights":
        return time_weights_ref(T, 0.5, **sel)
    return indep(fname, good(), sel)


def _t0_ref(fname):
    """T = 0 results in closed form."""
    a = good()
    if fname == "rollout":
        return a["x0"][:, None, :]
    if fname == "rollout_vjp":
        return (np.zeros((B, 0, M)), a["grad_states"][:, 0])
    if fname == "final_state_error":
        return np.linalg.norm(a["x0"] - a["xf"], axis=1)
    return None


def _with_system(fname, system):
    """Call ``fname`` with a (bad) system and otherwise valid arguments."""
    a = good()
    if fname == "combined_loss":
        return tl.combined_loss(system, a["controls"], a["x0"], a["ref_controls"],
                                a["ref_states"], weight=0.3)
    args = {
        "rollout": (a["x0"], a["controls"]),
        "rollout_vjp": (a["x0"], a["controls"], a["grad_states"]),
        "trajectory_loss": (a["controls"], a["x0"], a["ref_states"]),
        "terminal_loss": (a["controls"], a["x0"], a["target"]),
        "final_state_error": (a["controls"], a["x0"], a["xf"]),
        "success_rate": (a["controls"], a["x0"], a["xf"], 1.0),
        "min_energy": (a["x0"], a["xf"], T),
    }[fname]
    return getattr(tl, fname)(system, *args)


# ---------------------------------------------------------------- torch


def _tt(a):
    return None if a is None else torch.from_numpy(np.array(a, copy=True))


def add_torch_cases(add):
    def tgood(dtype=np.float32):
        return {k: _tt(v) for k, v in good(dtype).items()}

    tfuncs = {
        "rollout": (lambda a, **kw: tlt.rollout(SYS, a["x0"], a["controls"], **kw),
                    ["x0", "controls"]),
        "control_loss": (lambda a, **kw: tlt.control_loss(a["pred"], a["ctarget"], **kw),
                         ["pred", "ctarget"]),
        "trajectory_loss": (lambda a, **kw: tlt.trajectory_loss(
            SYS, a["controls"], a["x0"], a["ref_states"], **kw), ["controls", "x0", "ref_states"]),
        "terminal_loss": (lambda a, **kw: tlt.terminal_loss(
            SYS, a["controls"], a["x0"], a["target"], **kw), ["controls", "x0", "target"]),
        "combined_loss": (lambda a, **kw: tlt.combined_loss(
            SYS, a["controls"], a["x0"], a["ref_controls"], a["ref_states"],
            **{"weight": 0.3, **kw}), ["controls", "x0", "ref_controls", "ref_states"]),
        "CombinedLoss": (lambda a, **kw: tlt.CombinedLoss(SYS, weight=0.3, **kw)(
            a["controls"], a["x0"], a["ref_controls"], a["ref_states"]),
            ["controls", "x0", "ref_controls", "ref_states"]),
        "Rollout": (lambda a, **kw: tlt.Rollout(SYS)(a["x0"], a["controls"]), ["x0", "controls"]),
    }
    for fname, (f, keys) in tfuncs.items():
        for key in keys:
            arg = "target" if key == "ctarget" else key
            who = ("pred", "target") if fname == "control_loss" else (
                ("x0", "controls") if arg in ("x0", "controls") else (arg,))

            def bad(mut, f=f, key=key):
                def call():
                    a = tgood()
                    a[key] = mut(a[key])
                    return f(a)
                return call

            base = f"torch.{fname}:{arg}"
            add(f"{base}:rank+1", bad(lambda v: v[..., None]), Raises(VE, name(arg, *who)))
            add(f"{base}:last+1", bad(lambda v: torch.cat([v, v[..., :1]], -1)),
                Raises(VE, name(arg, *who)))
            add(f"{base}:batch-1", bad(lambda v: v[:-1]), Raises(VE, name(arg, *who)))
            for dt in ("int64", "bool", "float16", "bfloat16", "complex64"):
                add(f"{base}:dtype-{dt}", bad(lambda v, dt=dt: v.to(getattr(torch, dt))),
                    Raises(TE, name(arg)))
            add(f"{base}:mixed-float64", bad(lambda v: v.double()), Raises(TE, name(arg)))
            add(f"{base}:nan", bad(lambda v: v + float("nan")), Raises(VE, name(arg)))
            add(f"{base}:ndarray", bad(lambda v: v.numpy()),
                Raises((TE, "RuntimeError"), name(arg)))
            add(f"{base}:list", bad(lambda v: v.tolist()), Raises((TE, "RuntimeError"), name(arg)))
            # valid unusual layouts: identical to the contiguous call
            for lname, lay in (("expanded", lambda v: v[:1].expand(v.shape)),
                               ("step2", lambda v: torch.repeat_interleave(v, 2, -1)[..., ::2]),
                               ("transposed",
                                lambda v: v.transpose(0, -1).contiguous().transpose(0, -1)),
                               ("flipped-copy-view", lambda v: v.flip(0).flip(0))):
                add(f"{base}:valid-{lname}",
                    lambda f=f, key=key, lay=lay: f(dict(tgood(), **{key: lay(tgood()[key])})),
                    Valid(lambda f=f, key=key, lay=lay: f(
                        dict(tgood(), **{key: lay(tgood()[key]).contiguous()}))))
    a_ = lambda: tgood()  # noqa: E731
    add("torch.control_loss:pred-None", lambda: tlt.control_loss(None, a_()["ctarget"]),
        Raises(TE, name("pred")))
    add("torch.rollout:system-None", lambda: tlt.rollout(None, a_()["x0"], a_()["controls"]),
        Raises(TE, name("system")))
    add("torch.trajectory_loss:system-None", lambda: tlt.trajectory_loss(
        None, a_()["controls"], a_()["x0"], a_()["ref_states"]), Raises(TE, name("system")))
    add("torch.terminal_loss:system-None", lambda: tlt.terminal_loss(
        None, a_()["controls"], a_()["x0"], a_()["target"]), Raises(TE, name("system")))
    add("torch.combined_loss:system-None", lambda: tlt.combined_loss(
        None, a_()["controls"], a_()["x0"], a_()["ref_controls"], a_()["ref_states"], weight=0.3),
        Raises(TE, name("system")))
    add("torch.Rollout:system-None", lambda: tlt.Rollout(None), Raises(TE, name("system")))
    add("torch.CombinedLoss:system-None", lambda: tlt.CombinedLoss(None, weight=0.3),
        Raises(TE, name("system")))
    tc = tfuncs["control_loss"][0]
    for pen in ("foo", None):
        add(f"torch.control_loss:penalty-{pen!r}", lambda pen=pen: tc(tgood(), penalty=pen),
            Raises(TVE if pen is None else VE, name("penalty")))
    for did, dv, exc in (("negative", -1.0, VE), ("nan", np.nan, VE), ("str", "a", TE),
                         ("list", [0.5], TE)):
        add(f"torch.control_loss:discount-{did}", lambda dv=dv: tc(tgood(), discount=dv),
            Raises(exc, name("discount")))
    for did, dv, exc in (("zero", 0.0, VE), ("str", "a", TE), ("None", None, TE)):
        add(f"torch.control_loss:delta-{did}", lambda dv=dv: tc(tgood(), penalty="huber", delta=dv),
            Raises(exc, name("delta")))
    for lid, lv, exc in (("too-big", [9, 9, 9], VE), ("float", [1.5, 1.0, 1.0], TE),
                         ("short", [1, 1], VE)):
        add(f"torch.control_loss:lengths-{lid}", lambda lv=lv: tc(tgood(), lengths=lv),
            Raises(exc, name("lengths")))
    add("torch.control_loss:mask-shape",
        lambda: tc(tgood(), mask=torch.ones(B, T + 1, dtype=torch.bool)),
        Raises(VE, name("mask")))
    add("torch.control_loss:feature_weights-negative",
        lambda: tc(tgood(), feature_weights=[-1.0, 1.0]), Raises(VE, name("feature_weights")))
    tcomb = tfuncs["combined_loss"][0]
    for wn in ("weight", "terminal_weight"):
        for wid, wv, exc in (("negative", -1.0, VE), ("nan", float("nan"), VE),
                             ("inf", float("inf"), VE), ("str", "0.3", TE), ("None", None, TE)):
            add(f"torch.combined_loss:{wn}-{wid}", lambda wn=wn, wv=wv: tcomb(tgood(), **{wn: wv}),
                Raises(exc, name(wn)))
            strat = wn == "weight" and wid in ("str", "None")  # names a strategy
            add(f"torch.CombinedLoss:{wn}-{wid}",
                lambda wn=wn, wv=wv: tlt.CombinedLoss(SYS, **{"weight": 0.3, wn: wv}),
                Raises(TVE if strat else exc, r"\bweight\b|strategy" if strat else name(wn)))
    add("torch.CombinedLoss:weight-unknown-name", lambda: tlt.CombinedLoss(SYS, weight="nonsense"),
        Raises(VE, r"nonsense|\bweight\b|strateg"))
    add("torch.ControlLoss:penalty-foo", lambda: tlt.ControlLoss(penalty="foo")(
        tgood()["pred"], tgood()["ctarget"]), Raises(VE, name("penalty")))
    add("torch.TrajectoryLoss:system-None", lambda: tlt.TrajectoryLoss(None),
        Raises(TE, name("system")))
    add("torch.TerminalLoss:system-None", lambda: tlt.TerminalLoss(None),
        Raises(TE, name("system")))
    add("torch.TerminalLoss:target-shape", lambda: tlt.TerminalLoss(SYS)(
        tgood()["controls"], tgood()["x0"], tgood()["target"][:, :-1]), Raises(VE, name("target")))
    add("torch.rollout:backward-valid", lambda: _torch_backward(tgood()),
        Valid(lambda: _torch_backward({k: v.contiguous() for k, v in tgood().items()})))


def _torch_backward(a):
    u = a["controls"].double()[:, ::1].requires_grad_()
    x = a["x0"].double().requires_grad_()
    tlt.rollout(SYS, x, u).square().sum().backward()
    return (u.grad, x.grad)


# ---------------------------------------------------------------- jax


def add_jax_cases(add):
    def jgood():
        return {k: jnp.asarray(v) for k, v in good(np.float32).items()}

    jfuncs = {
        "rollout": (lambda a, **kw: tlj.rollout(SYS, a["x0"], a["controls"], **kw),
                    ["x0", "controls"]),
        "control_loss": (lambda a, **kw: tlj.control_loss(a["pred"], a["ctarget"], **kw),
                         ["pred", "ctarget"]),
        "trajectory_loss": (lambda a, **kw: tlj.trajectory_loss(
            SYS, a["controls"], a["x0"], a["ref_states"], **kw), ["controls", "x0", "ref_states"]),
        "terminal_loss": (lambda a, **kw: tlj.terminal_loss(
            SYS, a["controls"], a["x0"], a["target"], **kw), ["controls", "x0", "target"]),
        "combined_loss": (lambda a, **kw: tlj.combined_loss(
            SYS, a["controls"], a["x0"], a["ref_controls"], a["ref_states"],
            **{"weight": 0.3, **kw}), ["controls", "x0", "ref_controls", "ref_states"]),
    }
    for fname, (f, keys) in jfuncs.items():
        for key in keys:
            arg = "target" if key == "ctarget" else key
            who = ("pred", "target") if fname == "control_loss" else (
                ("x0", "controls") if arg in ("x0", "controls") else (arg,))

            def bad(mut, f=f, key=key, jit=False):
                def call():
                    a = jgood()
                    a[key] = mut(a[key])
                    if jit:
                        g = jax.jit(lambda a: f(a))
                        return np.asarray(g(a))
                    return np.asarray(f(a))
                return call

            base = f"jax.{fname}:{arg}"
            # static mistakes: found when the call is traced, a ValueError/TypeError
            add(f"{base}:rank+1", bad(lambda v: v[..., None]), Raises(VE, name(arg, *who)))
            add(f"{base}:last+1:jit", bad(lambda v: jnp.concatenate([v, v[..., :1]], -1), jit=True),
                Raises(VE, name(arg, *who)))
            add(f"{base}:batch-1", bad(lambda v: v[:-1]), Raises(VE, name(arg, *who)))
            add(f"{base}:dtype-int32", bad(lambda v: v.astype(jnp.int32)), Raises(TE, name(arg)))
            add(f"{base}:dtype-bfloat16:jit", bad(lambda v: v.astype(jnp.bfloat16), jit=True),
                Raises(TE, name(arg)))
            add(f"{base}:None", bad(lambda v: None), Raises(TE, name(arg)))
            # values are only known when the callback runs: under jit a NaN is
            # reported by the runtime error that carries the core's message
            add(f"{base}:nan:jit", bad(lambda v: v * jnp.nan, jit=True),
                Raises((JAX_RUNTIME, VE), name(arg)))
    j_ = lambda: jgood()  # noqa: E731
    add("jax.control_loss:pred-str", lambda: tlj.control_loss("abc", j_()["ctarget"]),
        Raises(TE, name("pred")))
    add("jax.rollout:system-None", lambda: tlj.rollout(None, j_()["x0"], j_()["controls"]),
        Raises(TE, name("system")))
    add("jax.trajectory_loss:system-None", lambda: tlj.trajectory_loss(
        None, j_()["controls"], j_()["x0"], j_()["ref_states"]), Raises(TE, name("system")))
    add("jax.terminal_loss:system-None", lambda: tlj.terminal_loss(
        None, j_()["controls"], j_()["x0"], j_()["target"]), Raises(TE, name("system")))
    add("jax.combined_loss:system-None", lambda: tlj.combined_loss(
        None, j_()["controls"], j_()["x0"], j_()["ref_controls"], j_()["ref_states"], weight=0.3),
        Raises(TE, name("system")))
    jc = jfuncs["control_loss"][0]
    add("jax.control_loss:penalty-foo", lambda: jc(jgood(), penalty="foo"),
        Raises(VE, name("penalty")))
    add("jax.control_loss:delta-zero", lambda: jc(jgood(), penalty="huber", delta=0.0),
        Raises(VE, name("delta")))
    add("jax.control_loss:discount-negative", lambda: jc(jgood(), discount=-1.0),
        Raises(VE, name("discount")))
    add("jax.control_loss:discount-str", lambda: jc(jgood(), discount="a"),
        Raises(TE, name("discount")))
    add("jax.control_loss:lengths-too-big", lambda: jc(jgood(), lengths=[9, 9, 9]),
        Raises(VE, name("lengths")))
    add("jax.control_loss:lengths-too-big:jit",
        lambda: jax.jit(lambda a, L: jc(a, lengths=L))(jgood(), jnp.array([9, 9, 9])),
        Raises((JAX_RUNTIME, VE), name("lengths")))
    add("jax.control_loss:lengths-float", lambda: jc(jgood(), lengths=[1.5, 1.0, 1.0]),
        Raises(TE, name("lengths")))
    add("jax.control_loss:mask-shape", lambda: jc(jgood(), mask=np.ones((B, T + 1), bool)),
        Raises(VE, name("mask")))
    add("jax.control_loss:feature_weights-shape",
        lambda: jc(jgood(), feature_weights=np.ones(D + 1)),
        Raises(VE, name("feature_weights")))
    jcomb = jfuncs["combined_loss"][0]
    for wn in ("weight", "terminal_weight"):
        for wid, wv, exc in (("negative", -1.0, VE), ("nan", float("nan"), VE), ("str", "0.3", TE)):
            add(f"jax.combined_loss:{wn}-{wid}", lambda wn=wn, wv=wv: jcomb(jgood(), **{wn: wv}),
                Raises(exc, name(wn)))
    add("jax.trajectory_loss:ref_states-None", lambda: tlj.trajectory_loss(
        SYS, jgood()["controls"], jgood()["x0"], None), Raises(TVE, name("ref_states")))
    add("jax.terminal_loss:target-None", lambda: tlj.terminal_loss(
        SYS, jgood()["controls"], jgood()["x0"], None), Raises(TVE, name("target")))
    add("jax.rollout:valid-grad", lambda: np.asarray(jax.grad(
        lambda u: tlj.rollout(SYS, jgood()["x0"], u).sum())(jgood()["controls"])),
        Valid(lambda: np.asarray(tl.rollout_vjp(SYS, good(np.float32)["x0"],
                                                good(np.float32)["controls"],
                                                np.ones((B, T + 1, N), np.float32))[0]),
              lambda: adjoint_loop(SYS.Ad, SYS.Bd, np.ones((B, T + 1, N)))[0], 2e-5))


# ==========================================================================
# the child
# ==========================================================================


def _describe(result):
    try:
        if isinstance(result, np.ndarray):
            return f"ndarray {result.dtype} {result.shape}"
        return repr(result)[:300]
    except Exception as exc:  # pragma: no cover
        return f"<unprintable: {exc!r}>"


def _child(path):
    """Run every case; one JSON line before and after each call."""
    global torch, tlt, jax, jnp, tlj
    import logging
    import resource
    import warnings

    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)  # jax logs every failed callback
    import torch as _torch
    import jax as _jax
    import jax.numpy as _jnp
    import trajloss.torch as _tlt
    import trajloss.jax as _tlj
    torch, tlt, jax, jnp, tlj = _torch, _tlt, _jax, _jnp, _tlj

    cases = build_cases()
    with open(path, "w") as out:
        def emit(rec):
            out.write(json.dumps(rec) + "\n")
            out.flush()

        emit({"total": len(cases)})
        for i, (id_, call, expect) in enumerate(cases):
            emit({"i": i, "id": id_, "phase": "start"})
            rec = {"i": i, "id": id_, "phase": "end"}
            try:
                result = call()
            except BaseException as exc:  # noqa: BLE001 -- we record everything
                rec.update(outcome="raised", type=type(exc).__name__,
                           mro=[c.__name__ for c in type(exc).__mro__],
                           message=str(exc)[-3000:])
                emit(rec)
                continue
            rec.update(outcome="returned", result=_describe(result))
            if expect.kind == "valid":
                try:
                    ref = expect.ref()
                    rec["identical"] = bool(identical(result, ref))
                    if not rec["identical"]:
                        rec["expected"] = _describe(ref)
                    if expect.indep is not None:
                        rec["close"] = bool(close(result, expect.indep(), expect.rtol))
                except BaseException as exc:  # noqa: BLE001
                    rec["ref_error"] = f"{type(exc).__name__}: {exc}"[:1000]
            emit(rec)
        emit({"done": True})


# ==========================================================================
# the tests
# ==========================================================================

CASES = build_cases()


@pytest.fixture(scope="module")
def child_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("crashproof") / "records.jsonl"
    code = (f"import sys; sys.path.insert(0, {_HERE!r}); import test_crashproof; "
            f"test_crashproof._child({str(path)!r})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=900)
    records, ends, started = [], {}, {}
    if path.exists():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            records.append(rec)
            if rec.get("phase") == "start":
                started[rec["i"]] = rec["id"]
            elif rec.get("phase") == "end":
                ends[rec["id"]] = rec
    print(f"\ncrashproof: {len(CASES)} calls "
          f"({sum(isinstance(e, Raises) for _, _, e in CASES)} malformed, "
          f"{sum(not isinstance(e, Raises) for _, _, e in CASES)} valid-but-unusual), "
          f"{len(ends)} completed, child exit code {proc.returncode}")
    return proc, started, ends


def test_child_survives_every_call(child_run):
    proc, started, ends = child_run
    unfinished = [(i, id_) for i, id_ in started.items() if id_ not in ends]
    assert proc.returncode == 0 and not unfinished, (
        f"the interpreter died (exit code {proc.returncode}) during call(s) {unfinished}\n"
        f"stderr tail:\n{proc.stderr[-3000:]}")
    assert len(ends) == len(CASES) >= 400


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_call(child_run, case):
    id_, _, expect = case
    _, _, ends = child_run
    assert id_ in ends, f"{id_}: never completed (the child died earlier or on it)"
    rec = ends[id_]
    if isinstance(expect, Raises):
        assert rec["outcome"] == "raised", (
            f"{id_}: returned silently ({rec.get('result')}) instead of raising "
            f"{'/'.join(expect.types)}")
        assert set(expect.types) & set(rec["mro"]), (
            f"{id_}: raised {rec['type']} ({rec['message'][-500:]!r}), expected "
            f"{'/'.join(expect.types)}")
        assert re.search(expect.pattern, rec["message"]), (
            f"{id_}: {rec['type']} message {rec['message'][-500:]!r} does not name "
            f"{expect.pattern!r}")
    else:
        assert rec["outcome"] == "returned", (
            f"{id_}: valid input raised {rec['type']}: {rec['message'][-500:]!r}")
        if isinstance(expect, Valid):
            assert "ref_error" not in rec, f"{id_}: reference failed: {rec['ref_error']}"
            assert rec["identical"], (
                f"{id_}: result {rec['result']} differs from the contiguous call "
                f"{rec.get('expected')}")
            if expect.indep is not None:
                assert rec["close"], f"{id_}: result differs from the independent NumPy reference"


def test_mismatched_broadcast_views_are_refused_before_any_copy():
    """Shapes are checked on the caller's views, before anything is made
    contiguous: a wrongly shaped broadcast view that would copy to 8 GiB is
    refused at once, with the usual message, and with no allocation beyond a
    few KiB (tracemalloc sees NumPy's data buffers)."""
    import tracemalloc

    sys_ = tl.DoubleIntegrator()
    B, T = 2**26, 16
    big_u = np.broadcast_to(np.zeros((1, T, 1)), (B, T, 1))  # 8 GiB if copied
    x0_short = np.broadcast_to(np.zeros((1, 2)), (B - 1, 2))
    x0 = np.broadcast_to(np.zeros((1, 2)), (B, 2))
    bad_states = np.broadcast_to(np.zeros((1, T, 2)), (B, T, 2))  # T, not T + 1
    calls = {
        "rollout": (lambda: tl.rollout(sys_, x0_short, big_u), "batch size"),
        "rollout_vjp": (lambda: tl.rollout_vjp(sys_, x0, big_u, bad_states), "grad_states"),
        "combined_loss": (lambda: tl.combined_loss(sys_, big_u, x0, big_u, bad_states, weight=1.0),
                          "ref_states"),
        "control_loss": (lambda: tl.control_loss(big_u, np.zeros((3, T, 1))), "target"),
        "final_state_error": (lambda: tl.final_state_error(sys_, big_u, x0_short, np.zeros(2)),
                              "batch size"),
    }
    for name, (call, needle) in calls.items():
        tracemalloc.start()
        try:
            with pytest.raises(ValueError, match=needle):
                call()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 1 << 20, f"{name}: {peak} bytes allocated before the shape check"


@pytest.mark.parametrize("value", [2**64 - 1, 2**63, 4])
def test_unsigned_lengths_are_reported_as_given(value):
    """uint64 lengths past INT64_MAX are reported with their own value, not
    as the negative number an int64 cast would make of them."""
    u = np.zeros((2, 3, 1))
    with pytest.raises(ValueError, match=rf"lengths must lie in \[0, T\] = \[0, 3\], got {value} "):
        tl.control_loss(u, u, lengths=np.array([value, 1], np.uint64))
