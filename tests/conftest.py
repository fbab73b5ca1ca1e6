"""Shared fixtures and independent NumPy references for the trajloss tests.

Everything in this file is deliberately written without using trajloss, so
the tests compare the package against plain NumPy loops, closed forms,
finite differences and (elsewhere) SciPy -- never against itself.
"""

import importlib.util
import math
import os
import sys
import zlib

import numpy as np
import pytest

# Make ``from conftest import ...`` work whatever pytest import mode is used.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


# --------------------------------------------------------------------------
# Which trajloss the tests import
# --------------------------------------------------------------------------
# The tests run against the installed package (src/trajloss for an editable
# install): the repository root holds no trajloss/ (a src layout), and pytest
# adds no source folder to sys.path. Located here without importing it.


def _trajloss_location():
    spec = importlib.util.find_spec("trajloss")
    if spec is None:
        return None
    return spec.origin or list(spec.submodule_search_locations or [])


def pytest_report_header(config):
    return f"trajloss: {_trajloss_location()}"


def pytest_configure(config):
    location = _trajloss_location()
    if not isinstance(location, str):
        # None: not installed; a list: only folders named trajloss without an
        # __init__.py (a namespace package), e.g. a build's leftovers
        raise pytest.UsageError(
            f"trajloss is not installed in this Python ({sys.executable}; found: "
            f"{location}): run `pip install -e .` in the repository first")


# --------------------------------------------------------------------------
# Tolerances
# --------------------------------------------------------------------------

#: dtype-dependent tolerances.  ``atol`` is *relative to a scale* (see
#: :func:`assert_close`): the magnitude of the accumulated terms.
TOL = {
    np.float64: dict(rtol=1e-12, atol=1e-12),
    np.float32: dict(rtol=2e-5, atol=2e-5),
}

DTYPES = [np.float64, np.float32]
LAYOUTS = ["c", "f", "noncontig", "reversed"]
SHAPES_NM = [(1, 1), (2, 1), (3, 2), (6, 2), (8, 3)]


def tol_for(dtype):
    return TOL[np.dtype(dtype).type]


def assert_close(actual, expected, dtype, scale=None, err_msg=""):
    """``assert_allclose`` with the tolerance of ``dtype``.

    ``scale`` is the magnitude the absolute tolerance is relative to; by
    default ``max(1, max|expected|)``.
    """
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if scale is None:
        scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    tol = tol_for(dtype)
    np.testing.assert_allclose(
        actual.astype(np.float64),
        expected,
        rtol=tol["rtol"],
        atol=tol["atol"] * max(1.0, float(scale)),
        err_msg=err_msg,
    )


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------


@pytest.fixture
def rng(request):
    """A reproducible generator, different per test (seeded by node id)."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


# --------------------------------------------------------------------------
# Memory layouts
# --------------------------------------------------------------------------


def _garbage_value(dtype):
    dtype = np.dtype(dtype)
    if dtype.kind in "fc":
        return np.nan
    if dtype.kind == "b":
        return True
    return 123


def relayout(a, kind):
    """Return an array equal to ``a`` with a different memory layout.

    kind:
      * ``"c"``         contiguous copy
      * ``"f"``         Fortran-order copy
      * ``"noncontig"`` a view taking every 2nd element (offset 1) of a larger
                        garbage-filled buffer along the last axis
      * ``"reversed"``  a view with a negative stride on axis 0 into a
                        garbage-filled buffer one row longer than needed
    """
    a = np.asarray(a)
    if kind == "c":
        out = np.array(a, order="C", copy=True)
    elif kind == "f":
        out = np.array(a, order="F", copy=True)
    elif kind == "noncontig":
        if a.ndim == 0:
            return a.copy()
        shape = a.shape[:-1] + (2 * a.shape[-1] + 1,)
        buf = np.full(shape, _garbage_value(a.dtype), dtype=a.dtype)
        out = buf[..., 1::2]
        out[...] = a
    elif kind == "reversed":
        if a.ndim == 0:
            return a.copy()
        s0 = a.shape[0]
        buf = np.full((s0 + 1,) + a.shape[1:], _garbage_value(a.dtype), dtype=a.dtype)
        out = buf[::-1][:s0]  # rows buf[s0], ..., buf[1]; buf[0] stays garbage
        out[...] = a
        if s0 > 1:
            assert out.strides[0] < 0
    else:
        raise AssertionError(f"unknown layout {kind!r}")
    assert out.shape == a.shape and out.dtype == a.dtype
    assert np.array_equal(out, a, equal_nan=True)
    return out


def unaligned(a):
    """A copy of ``a`` whose data pointer is not aligned for its dtype."""
    a = np.ascontiguousarray(a)
    nbytes = a.nbytes
    raw = np.zeros(nbytes + 1, dtype=np.uint8)
    out = raw[1:].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


# --------------------------------------------------------------------------
# Random test data
# --------------------------------------------------------------------------


def random_discrete(rng, n, m, radius=0.95):
    """Dense random (Ad, Bd) with ||Ad||_2 = radius and no zero entries."""
    Ad = rng.standard_normal((n, n))
    Ad += np.sign(Ad) * 0.05  # keep every entry away from 0 (NaN propagation)
    Ad *= radius / np.linalg.norm(Ad, 2)
    Bd = rng.standard_normal((n, m))
    Bd += np.sign(Bd) * 0.05
    return Ad, Bd


def random_inputs(rng, B, T, n, m, dtype=np.float64):
    x0 = rng.standard_normal((B, n)).astype(dtype)
    U = rng.standard_normal((B, T, m)).astype(dtype)
    return x0, U


# --------------------------------------------------------------------------
# Reference rollout / Jacobian / finite differences (float64, plain loops)
# --------------------------------------------------------------------------


def ref_rollout(Ad, Bd, x0, U):
    """x_{k+1} = Ad x_k + Bd u_k by an explicit Python loop over b and k.

    Works for batched ``x0 (B,n), U (B,T,m)`` and unbatched ``(n,), (T,m)``.
    Always computes in float64.
    """
    Ad = np.asarray(Ad, dtype=np.float64)
    Bd = np.asarray(Bd, dtype=np.float64)
    x0 = np.asarray(x0, dtype=np.float64)
    U = np.asarray(U, dtype=np.float64)
    unbatched = x0.ndim == 1
    if unbatched:
        x0 = x0[None]
        U = U[None]
    Bsz, T, m = U.shape
    n = Ad.shape[0]
    X = np.empty((Bsz, T + 1, n), dtype=np.float64)
    for b in range(Bsz):
        x = x0[b].copy()
        X[b, 0] = x
        for k in range(T):
            x_next = np.zeros(n)
            for i in range(n):
                s = 0.0
                for j in range(n):
                    s += Ad[i, j] * x[j]
                for j in range(m):
                    s += Bd[i, j] * U[b, k, j]
                x_next[i] = s
            x = x_next
            X[b, k + 1] = x
    return X[0] if unbatched else X


def rollout_scale(Ad, Bd, x0, U):
    """Magnitude of the accumulated terms: rollout with absolute values."""
    return float(
        np.max(
            ref_rollout(np.abs(Ad), np.abs(Bd), np.abs(np.asarray(x0, np.float64)),
                        np.abs(np.asarray(U, np.float64))),
            initial=0.0,
        )
    )


def ref_jacobian(Ad, Bd, x0_shape, U_shape):
    """Dense Jacobian of ``ravel(states)`` w.r.t. ``ravel(U)`` and ``ravel(x0)``.

    Built column by column: the rollout is linear in (x0, U), so column j is
    the rollout of the j-th unit input.  Returns ``(J_U, J_x0)``.
    """
    x0_shape = tuple(x0_shape)
    U_shape = tuple(U_shape)
    zx = np.zeros(x0_shape)
    zu = np.zeros(U_shape)
    n_u = int(np.prod(U_shape))
    n_x = int(np.prod(x0_shape))
    cols_u = []
    for j in range(n_u):
        e = zu.copy()
        e.flat[j] = 1.0
        cols_u.append(np.ravel(ref_rollout(Ad, Bd, zx, e)))
    cols_x = []
    for j in range(n_x):
        e = zx.copy()
        e.flat[j] = 1.0
        cols_x.append(np.ravel(ref_rollout(Ad, Bd, e, zu)))
    n_s = np.ravel(ref_rollout(Ad, Bd, zx, zu)).size
    J_U = np.column_stack(cols_u) if cols_u else np.zeros((n_s, 0))
    J_x = np.column_stack(cols_x) if cols_x else np.zeros((n_s, 0))
    return J_U, J_x


def central_fd(f, x, h, entries=None):
    """Central finite-difference gradient of scalar ``f`` at array ``x`` (float64);
    only the flat indices in ``entries`` if given (the others are left 0)."""
    x = np.array(x, dtype=np.float64)
    g = np.zeros_like(x)
    for j in range(x.size) if entries is None else entries:
        xp = x.copy()
        xm = x.copy()
        xp.flat[j] += h
        xm.flat[j] -= h
        g.flat[j] = (f(xp) - f(xm)) / (2.0 * h)
    return g


# --------------------------------------------------------------------------
# Reference discretisations
# --------------------------------------------------------------------------


def taylor_expm(M, terms=40, dtype=np.longdouble):
    """sum_{k<=terms} M^k / k!  (in extended precision where available)."""
    M = np.asarray(M, dtype=dtype)
    n = M.shape[0]
    S = np.eye(n, dtype=dtype)
    P = np.eye(n, dtype=dtype)
    for k in range(1, terms + 1):
        P = (P @ M) / dtype(k)
        S = S + P
    return S


def taylor_expm_ss(M, dtype=np.longdouble):
    """Truncated Taylor series with scaling and squaring, for large ||M||.

    exp(M) = exp(M / 2^s)^(2^s), ||M / 2^s||_1 <= 1/4, 30 Taylor terms,
    computed in extended precision (np.longdouble) and returned as float64.
    """
    M = np.asarray(M, dtype=np.float64)
    nrm = float(np.abs(M).sum(axis=0).max()) if M.size else 0.0
    s = max(0, math.ceil(math.log2(nrm / 0.25))) if nrm > 0 else 0
    E = taylor_expm(np.asarray(M, dtype) / dtype(2.0**s), terms=30, dtype=dtype)
    for _ in range(s):
        E = E @ E
    return np.asarray(E, dtype=np.float64)


def ref_zoh_taylor(A, B, dt, terms=40):
    """Top block rows of the Taylor series of expm([[A,B],[0,0]] dt)."""
    A = np.asarray(A, np.float64)
    B = np.asarray(B, np.float64)
    n, m = B.shape
    M = np.zeros((n + m, n + m))
    M[:n, :n] = A * dt
    M[:n, n:] = B * dt
    E = np.asarray(taylor_expm(M, terms=terms), dtype=np.float64)
    return E[:n, :n], E[:n, n:]


def ref_euler(A, B, dt):
    A = np.asarray(A, np.float64)
    B = np.asarray(B, np.float64)
    return np.eye(A.shape[0]) + dt * A, dt * B


def ref_rk4(A, B, h):
    """One classical RK4 step of xdot = A x + B u (u held constant),
    applied literally to unit vectors to read off Ad and Bd column by column."""
    A = np.asarray(A, np.float64)
    B = np.asarray(B, np.float64)
    n, m = B.shape

    def f(x, u):
        return A @ x + B @ u

    def step(x, u):
        k1 = f(x, u)
        k2 = f(x + h / 2 * k1, u)
        k3 = f(x + h / 2 * k2, u)
        k4 = f(x + h * k3, u)
        return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)

    Ad = np.column_stack([step(np.eye(n)[:, j], np.zeros(m)) for j in range(n)])
    Bd = np.column_stack([step(np.zeros(n), np.eye(m)[:, j]) for j in range(m)])
    return Ad, Bd


def snapshot(*arrays):
    """Copies + writeable flags, to assert later that inputs were untouched."""
    return [(np.array(a, copy=True), np.asarray(a).flags.writeable) for a in arrays]


def assert_untouched(arrays, snap):
    for a, (copy, writeable) in zip(arrays, snap):
        a = np.asarray(a)
        equal_nan = a.dtype.kind in "fc"
        assert a.dtype == copy.dtype and a.shape == copy.shape, "input was modified"
        assert np.array_equal(a, copy, equal_nan=equal_nan), "input was modified"
        assert a.flags.writeable == writeable, "input's writeable flag was changed"
