"""rollout / rollout_vjp against a plain NumPy loop, a dense Jacobian built
column by column, and central finite differences."""

import concurrent.futures

import numpy as np
import pytest

import trajloss
from conftest import (
    DTYPES,
    LAYOUTS,
    SHAPES_NM,
    TOL,
    assert_close,
    assert_untouched,
    central_fd,
    random_discrete,
    random_inputs,
    ref_jacobian,
    ref_rollout,
    relayout,
    rollout_scale,
    snapshot,
    unaligned,
)


def make_system(rng, n, m, dt=0.1):
    Ad, Bd = random_discrete(rng, n, m)
    return trajloss.LinearSystem(Ad, Bd, dt=dt), Ad, Bd


def ref_vjp(Ad, Bd, x0, U, G):
    """grad = J^T g with the dense Jacobian from :func:`ref_jacobian`."""
    x0 = np.asarray(x0, np.float64)
    U = np.asarray(U, np.float64)
    G = np.asarray(G, np.float64)
    J_U, J_x = ref_jacobian(Ad, Bd, x0.shape, U.shape)
    g = G.ravel()
    gu = (J_U.T @ g).reshape(U.shape)
    gx = (J_x.T @ g).reshape(x0.shape)
    # magnitude of the summed terms, for the absolute tolerance
    scale = max(
        float(np.max(np.abs(J_U).T @ np.abs(g), initial=0.0)),
        float(np.max(np.abs(J_x).T @ np.abs(g), initial=0.0)),
    )
    return gu, gx, scale


# ==========================================================================
# rollout
# ==========================================================================


@pytest.mark.parametrize("n,m", SHAPES_NM)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_rollout_vs_loop(rng, dtype, layout, n, m):
    Bsz, T = 3, 6
    system, Ad, Bd = make_system(rng, n, m)
    x0, U = random_inputs(rng, Bsz, T, n, m, dtype)
    x0_in, U_in = relayout(x0, layout), relayout(U, layout)
    snap = snapshot(x0_in, U_in)

    X = trajloss.rollout(system, x0_in, U_in)

    assert_untouched([x0_in, U_in], snap)
    assert isinstance(X, np.ndarray)
    assert X.dtype == dtype
    assert X.shape == (Bsz, T + 1, n)
    np.testing.assert_array_equal(X[:, 0, :], x0)  # exact copy of x0
    ref = ref_rollout(Ad, Bd, x0, U)  # float64 from the (float32) inputs
    assert_close(X, ref, dtype, scale=rollout_scale(Ad, Bd, x0, U))


@pytest.mark.parametrize("n,m", SHAPES_NM)
@pytest.mark.parametrize("dtype", DTYPES)
def test_rollout_unbatched(rng, dtype, n, m):
    T = 5
    system, Ad, Bd = make_system(rng, n, m)
    x0 = rng.standard_normal(n).astype(dtype)
    U = rng.standard_normal((T, m)).astype(dtype)
    X = trajloss.rollout(system, x0, U)
    assert X.shape == (T + 1, n)
    assert X.dtype == dtype
    np.testing.assert_array_equal(X[0], x0)
    assert_close(X, ref_rollout(Ad, Bd, x0, U), dtype, scale=rollout_scale(Ad, Bd, x0, U))
    # the same as a batch of one
    Xb = trajloss.rollout(system, x0[None], U[None])
    assert Xb.shape == (1, T + 1, n)
    np.testing.assert_array_equal(Xb[0], X)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rollout_float32_matches_float64(rng, dtype):
    # float32 inputs give the float64 computation rounded to float32
    n, m, Bsz, T = 4, 2, 5, 12
    system, Ad, Bd = make_system(rng, n, m)
    x0, U = random_inputs(rng, Bsz, T, n, m, np.float32)
    X32 = trajloss.rollout(system, x0, U)
    X64 = trajloss.rollout(system, x0.astype(np.float64), U.astype(np.float64))
    assert X32.dtype == np.float32 and X64.dtype == np.float64
    assert_close(X32, X64, np.float32, scale=rollout_scale(Ad, Bd, x0, U))
    assert_close(X64, ref_rollout(Ad, Bd, x0, U), np.float64, scale=rollout_scale(Ad, Bd, x0, U))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T", [0, 1, 4])
def test_rollout_empty_batch(rng, dtype, T):
    n, m = 3, 2
    system, _, _ = make_system(rng, n, m)
    X = trajloss.rollout(system, np.zeros((0, n), dtype), np.zeros((0, T, m), dtype))
    assert X.shape == (0, T + 1, n)
    assert X.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Bsz", [0, 1, 4])
def test_rollout_zero_steps(rng, dtype, Bsz):
    n, m = 3, 2
    system, _, _ = make_system(rng, n, m)
    x0 = rng.standard_normal((Bsz, n)).astype(dtype)
    X = trajloss.rollout(system, x0, np.zeros((Bsz, 0, m), dtype))
    assert X.shape == (Bsz, 1, n)
    assert X.dtype == dtype
    np.testing.assert_array_equal(X, x0[:, None, :])
    # unbatched
    if Bsz:
        X1 = trajloss.rollout(system, x0[0], np.zeros((0, m), dtype))
        assert X1.shape == (1, n) and X1.dtype == dtype
        np.testing.assert_array_equal(X1, x0[:1])


def test_rollout_long_horizon_and_big_batch(rng):
    n, m, Bsz, T = 6, 2, 40, 300
    Ad, Bd = random_discrete(rng, n, m, radius=0.9)
    system = trajloss.LinearSystem(Ad, Bd)
    x0, U = random_inputs(rng, Bsz, T, n, m)
    X = trajloss.rollout(system, x0, U)
    # vectorised form of the same recursion (still a plain loop over k)
    ref = np.empty((Bsz, T + 1, n))
    ref[:, 0] = x0
    for k in range(T):
        ref[:, k + 1] = ref[:, k] @ Ad.T + U[:, k] @ Bd.T
    # ||Ad||_2 = 0.9: rounding errors are damped, at most ~1/(1-0.9) of them add up
    scale = 10 * max(1.0, np.abs(ref).max())
    assert_close(X, ref, np.float64, scale=scale)


def test_rollout_double_integrator_physics():
    # constant acceleration a from rest: p = a t^2 / 2, v = a t (zoh is exact)
    dt, T, a = 0.25, 20, 1.5
    system = trajloss.DoubleIntegrator(dt=dt)
    x0 = np.array([[0.0, 0.0], [1.0, -2.0]])
    U = np.full((2, T, 1), a)
    X = trajloss.rollout(system, x0, U)
    t = dt * np.arange(T + 1)
    for b in range(2):
        p0, v0 = x0[b]
        np.testing.assert_allclose(X[b, :, 0], p0 + v0 * t + a * t**2 / 2, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(X[b, :, 1], v0 + a * t, rtol=1e-13, atol=1e-13)


def test_rollout_from_continuous_system(rng):
    # the rollout uses the system's discrete matrices, whatever the method
    A = rng.standard_normal((3, 3))
    B = rng.standard_normal((3, 2))
    x0, U = random_inputs(rng, 2, 5, 3, 2)
    for method in ("zoh", "euler", "rk4"):
        system = trajloss.LinearSystem.from_continuous(A, B, 0.1, method=method)
        X = trajloss.rollout(system, x0, U)
        ref = ref_rollout(system.Ad, system.Bd, x0, U)
        assert_close(X, ref, np.float64, scale=rollout_scale(system.Ad, system.Bd, x0, U))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rollout_accepts_lists(rng, dtype):
    n, m, Bsz, T = 2, 1, 2, 3
    system, Ad, Bd = make_system(rng, n, m)
    x0, U = random_inputs(rng, Bsz, T, n, m, dtype)
    ref = ref_rollout(Ad, Bd, x0, U)
    sc = rollout_scale(Ad, Bd, x0, U)
    # both lists -> float64
    X = trajloss.rollout(system, x0.tolist(), U.tolist())
    assert X.dtype == np.float64
    assert_close(X, ref, np.float64, scale=sc)
    # a list adopts the dtype of the ndarray argument
    X = trajloss.rollout(system, x0.tolist(), U)
    assert X.dtype == dtype
    assert_close(X, ref, dtype, scale=sc)
    X = trajloss.rollout(system, x0, U.tolist())
    assert X.dtype == dtype
    assert_close(X, ref, dtype, scale=sc)
    # tuples, unbatched
    X = trajloss.rollout(system, tuple(x0[0].tolist()), tuple(map(tuple, U[0].tolist())))
    assert X.dtype == np.float64 and X.shape == (T + 1, n)
    assert_close(X, ref[0], np.float64, scale=sc)


def test_rollout_int_lists_are_converted(rng):
    system, Ad, Bd = make_system(rng, 2, 1)
    X = trajloss.rollout(system, [[1, 2]], [[[3], [4]]])
    assert X.dtype == np.float64
    assert_close(X, ref_rollout(Ad, Bd, [[1.0, 2.0]], [[[3.0], [4.0]]]), np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rollout_readonly_inputs(rng, dtype):
    n, m = 3, 2
    system, Ad, Bd = make_system(rng, n, m)
    x0, U = random_inputs(rng, 2, 4, n, m, dtype)
    x0.setflags(write=False)
    U.setflags(write=False)
    X = trajloss.rollout(system, x0, U)
    assert X.dtype == dtype
    assert_close(X, ref_rollout(Ad, Bd, x0, U), dtype, scale=rollout_scale(Ad, Bd, x0, U))
    assert not x0.flags.writeable and not U.flags.writeable


@pytest.mark.parametrize("dtype", DTYPES)
def test_rollout_broadcast_zero_stride_inputs(rng, dtype):
    n, m, Bsz, T = 3, 2, 4, 5
    system, Ad, Bd = make_system(rng, n, m)
    row = rng.standard_normal(n).astype(dtype)
    seq = rng.standard_normal((T, m)).astype(dtype)
    x0 = np.broadcast_to(row, (Bsz, n))
    U = np.broadcast_to(seq, (Bsz, T, m))
    X = trajloss.rollout(system, x0, U)
    assert X.shape == (Bsz, T + 1, n) and X.dtype == dtype
    ref = ref_rollout(Ad, Bd, np.array(x0), np.array(U))
    assert_close(X, ref, dtype, scale=rollout_scale(Ad, Bd, x0, U))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rollout_unaligned_inputs(rng, dtype):
    n, m = 3, 2
    system, Ad, Bd = make_system(rng, n, m)
    x0, U = random_inputs(rng, 2, 4, n, m, dtype)
    x0u, Uu = unaligned(x0), unaligned(U)
    assert not x0u.flags.aligned
    X = trajloss.rollout(system, x0u, Uu)
    assert X.dtype == dtype
    assert_close(X, ref_rollout(Ad, Bd, x0, U), dtype, scale=rollout_scale(Ad, Bd, x0, U))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rollout_non_native_byte_order(rng, dtype):
    # either handled correctly or rejected with TypeError -- never garbage
    n, m = 2, 1
    system, Ad, Bd = make_system(rng, n, m)
    x0, U = random_inputs(rng, 2, 3, n, m, dtype)
    swapped = np.dtype(dtype).newbyteorder()
    x0s, Us = x0.astype(swapped), U.astype(swapped)
    try:
        X = trajloss.rollout(system, x0s, Us)
    except TypeError:
        return
    assert_close(X, ref_rollout(Ad, Bd, x0, U), dtype, scale=rollout_scale(Ad, Bd, x0, U))


def test_rollout_check_finite_false_same_result_when_finite(rng):
    system, Ad, Bd = make_system(rng, 3, 2)
    x0, U = random_inputs(rng, 2, 4, 3, 2)
    X1 = trajloss.rollout(system, x0, U)
    X2 = trajloss.rollout(system, x0, U, check_finite=False)
    np.testing.assert_array_equal(X1, X2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rollout_nan_propagates_without_check(rng, dtype):
    n, m, Bsz, T = 3, 2, 3, 5
    system, Ad, Bd = make_system(rng, n, m)
    x0, U = random_inputs(rng, Bsz, T, n, m, dtype)
    # NaN in x0 of sample 0, NaN in control step 2 of sample 1
    x0[0, 1] = np.nan
    U[1, 2, 0] = np.nan
    X = trajloss.rollout(system, x0, U, check_finite=False)
    assert X.dtype == dtype and X.shape == (Bsz, T + 1, n)
    expected_nan = np.zeros((Bsz, T + 1, n), dtype=bool)
    expected_nan[0, 0, 1] = True
    expected_nan[0, 1:, :] = True  # Ad has no zero entry
    expected_nan[1, 3:, :] = True  # Bd has no zero entry
    np.testing.assert_array_equal(np.isnan(X), expected_nan)
    ref = ref_rollout(Ad, Bd, x0, U)
    ok = ~expected_nan
    assert_close(X[ok], ref[ok], dtype, scale=rollout_scale(Ad, Bd, np.nan_to_num(x0), np.nan_to_num(U)))


def test_rollout_inf_without_check_does_not_raise(rng):
    system, _, _ = make_system(rng, 2, 1)
    x0, U = random_inputs(rng, 1, 3, 2, 1)
    U[0, 0, 0] = np.inf
    X = trajloss.rollout(system, x0, U, check_finite=False)
    assert not np.isfinite(X[0, 1:]).any()
    assert np.isfinite(X[0, 0]).all()


def test_rollout_output_is_fresh_array(rng):
    system, _, _ = make_system(rng, 2, 1)
    x0, U = random_inputs(rng, 2, 0, 2, 1)
    X = trajloss.rollout(system, x0, U)
    assert not np.shares_memory(X, x0)
    assert not np.shares_memory(X, system.Ad)


def test_rollout_threads(rng):
    # concurrent calls (GIL released around C work) give the right answers
    n, m = 5, 2
    system, Ad, Bd = make_system(rng, n, m)
    jobs = [random_inputs(rng, 8, 50, n, m) for _ in range(16)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as ex:
        outs = list(ex.map(lambda a: trajloss.rollout(system, *a), jobs))
    for (x0, U), X in zip(jobs, outs):
        ref = np.empty_like(X)
        ref[:, 0] = x0
        for k in range(U.shape[1]):
            ref[:, k + 1] = ref[:, k] @ Ad.T + U[:, k] @ Bd.T
        assert_close(X, ref, np.float64, scale=10 * max(1.0, np.abs(ref).max()))


def _rss_bytes():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096
    except OSError:  # not Linux
        pytest.skip("needs /proc/self/statm")


def test_rollout_memory_flat(rng):
    n, m = 4, 2
    system, _, _ = make_system(rng, n, m)
    x0, U = random_inputs(rng, 16, 64, n, m)
    G = rng.standard_normal((16, 65, n))
    for _ in range(200):  # warm up allocator caches
        trajloss.rollout(system, x0, U)
        trajloss.rollout_vjp(system, x0, U, G)
    before = _rss_bytes()
    for _ in range(3000):
        trajloss.rollout(system, x0, U)
        trajloss.rollout_vjp(system, x0, U, G)
    grown = _rss_bytes() - before
    # one call's arrays are ~50 kB; a leak per call would be >100 MB here
    assert grown < 20 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB"


# ==========================================================================
# rollout_vjp
# ==========================================================================


@pytest.mark.parametrize("n,m", SHAPES_NM)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_vjp_vs_dense_jacobian(rng, dtype, layout, n, m):
    Bsz, T = 2, 4
    system, Ad, Bd = make_system(rng, n, m)
    x0, U = random_inputs(rng, Bsz, T, n, m, dtype)
    G = rng.standard_normal((Bsz, T + 1, n)).astype(dtype)
    x0_in, U_in, G_in = relayout(x0, layout), relayout(U, layout), relayout(G, layout)
    snap = snapshot(x0_in, U_in, G_in)

    out = trajloss.rollout_vjp(system, x0_in, U_in, G_in)

    assert_untouched([x0_in, U_in, G_in], snap)
    assert isinstance(out, tuple) and len(out) == 2
    gU, gx = out
    assert gU.shape == (Bsz, T, m) and gx.shape == (Bsz, n)
    assert gU.dtype == dtype and gx.dtype == dtype
    ref_gU, ref_gx, scale = ref_vjp(Ad, Bd, x0, U, G)
    assert_close(gU, ref_gU, dtype, scale=scale)
    assert_close(gx, ref_gx, dtype, scale=scale)


@pytest.mark.parametrize("n,m", SHAPES_NM)
def test_vjp_vs_central_fd(rng, n, m):
    Bsz, T = 2, 5
    system, Ad, Bd = make_system(rng, n, m)
    x0, U = random_inputs(rng, Bsz, T, n, m)
    G = rng.standard_normal((Bsz, T + 1, n))
    gU, gx = trajloss.rollout_vjp(system, x0, U, G)

    h = 1e-3

    def loss(x0_, U_):
        return float(np.sum(G * ref_rollout(Ad, Bd, x0_, U_)))

    fd_U = central_fd(lambda u: loss(x0, u), U, h)
    fd_x = central_fd(lambda x: loss(x, U), x0, h)
    np.testing.assert_allclose(gU, fd_U, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(gx, fd_x, rtol=1e-8, atol=1e-8)


def test_vjp_consistent_with_package_rollout_fd(rng):
    # <G, rollout(x0 + h dx, U + h dU)> finite differences vs the vjp
    n, m, Bsz, T = 4, 2, 3, 6
    system, _, _ = make_system(rng, n, m)
    x0, U = random_inputs(rng, Bsz, T, n, m)
    G = rng.standard_normal((Bsz, T + 1, n))
    dx = rng.standard_normal(x0.shape)
    dU = rng.standard_normal(U.shape)
    h = 1e-3
    fp = np.sum(G * trajloss.rollout(system, x0 + h * dx, U + h * dU))
    fm = np.sum(G * trajloss.rollout(system, x0 - h * dx, U - h * dU))
    fd = (fp - fm) / (2 * h)
    gU, gx = trajloss.rollout_vjp(system, x0, U, G)
    assert fd == pytest.approx(np.sum(gU * dU) + np.sum(gx * dx), rel=1e-8, abs=1e-8)


@pytest.mark.parametrize("n,m", SHAPES_NM)
@pytest.mark.parametrize("dtype", DTYPES)
def test_vjp_unbatched(rng, dtype, n, m):
    T = 4
    system, Ad, Bd = make_system(rng, n, m)
    x0 = rng.standard_normal(n).astype(dtype)
    U = rng.standard_normal((T, m)).astype(dtype)
    G = rng.standard_normal((T + 1, n)).astype(dtype)
    gU, gx = trajloss.rollout_vjp(system, x0, U, G)
    assert gU.shape == (T, m) and gx.shape == (n,)
    assert gU.dtype == dtype and gx.dtype == dtype
    ref_gU, ref_gx, scale = ref_vjp(Ad, Bd, x0, U, G)
    assert_close(gU, ref_gU, dtype, scale=scale)
    assert_close(gx, ref_gx, dtype, scale=scale)


@pytest.mark.parametrize("dtype", DTYPES)
def test_vjp_float32_matches_float64(rng, dtype):
    n, m, Bsz, T = 5, 3, 4, 10
    system, Ad, Bd = make_system(rng, n, m)
    x0, U = random_inputs(rng, Bsz, T, n, m, np.float32)
    G = rng.standard_normal((Bsz, T + 1, n)).astype(np.float32)
    gU32, gx32 = trajloss.rollout_vjp(system, x0, U, G)
    gU64, gx64 = trajloss.rollout_vjp(
        system, x0.astype(np.float64), U.astype(np.float64), G.astype(np.float64)
    )
    assert gU32.dtype == np.float32 and gx32.dtype == np.float32
    assert gU64.dtype == np.float64 and gx64.dtype == np.float64
    _, _, scale = ref_vjp(Ad, Bd, x0[:1], U[:1], G[:1])
    assert_close(gU32, gU64, np.float32, scale=scale)
    assert_close(gx32, gx64, np.float32, scale=scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T", [0, 3])
def test_vjp_empty_batch(rng, dtype, T):
    n, m = 3, 2
    system, _, _ = make_system(rng, n, m)
    gU, gx = trajloss.rollout_vjp(
        system, np.zeros((0, n), dtype), np.zeros((0, T, m), dtype), np.zeros((0, T + 1, n), dtype)
    )
    assert gU.shape == (0, T, m) and gx.shape == (0, n)
    assert gU.dtype == dtype and gx.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_vjp_zero_steps(rng, dtype):
    n, m, Bsz = 3, 2, 4
    system, _, _ = make_system(rng, n, m)
    x0 = rng.standard_normal((Bsz, n)).astype(dtype)
    G = rng.standard_normal((Bsz, 1, n)).astype(dtype)
    gU, gx = trajloss.rollout_vjp(system, x0, np.zeros((Bsz, 0, m), dtype), G)
    assert gU.shape == (Bsz, 0, m) and gU.dtype == dtype
    assert gx.shape == (Bsz, n) and gx.dtype == dtype
    np.testing.assert_array_equal(gx, G[:, 0, :])  # states == x0, so identity
    gU1, gx1 = trajloss.rollout_vjp(system, x0[0], np.zeros((0, m), dtype), G[0])
    assert gU1.shape == (0, m) and gx1.shape == (n,)
    np.testing.assert_array_equal(gx1, G[0, 0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_vjp_accepts_lists(rng, dtype):
    n, m, Bsz, T = 2, 2, 2, 3
    system, Ad, Bd = make_system(rng, n, m)
    x0, U = random_inputs(rng, Bsz, T, n, m, dtype)
    G = rng.standard_normal((Bsz, T + 1, n)).astype(dtype)
    ref_gU, ref_gx, scale = ref_vjp(Ad, Bd, x0, U, G)
    gU, gx = trajloss.rollout_vjp(system, x0.tolist(), U.tolist(), G.tolist())
    assert gU.dtype == np.float64 and gx.dtype == np.float64
    assert_close(gU, ref_gU, np.float64, scale=scale)
    assert_close(gx, ref_gx, np.float64, scale=scale)
    gU, gx = trajloss.rollout_vjp(system, x0, U, G.tolist())
    assert gU.dtype == dtype and gx.dtype == dtype
    assert_close(gU, ref_gU, dtype, scale=scale)
    assert_close(gx, ref_gx, dtype, scale=scale)
    gU, gx = trajloss.rollout_vjp(system, x0.tolist(), U.tolist(), G)
    assert gU.dtype == dtype and gx.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_vjp_readonly_and_broadcast_inputs(rng, dtype):
    n, m, Bsz, T = 3, 2, 3, 4
    system, Ad, Bd = make_system(rng, n, m)
    x0, U = random_inputs(rng, Bsz, T, n, m, dtype)
    G = np.broadcast_to(rng.standard_normal((T + 1, n)).astype(dtype), (Bsz, T + 1, n))
    x0.setflags(write=False)
    U.setflags(write=False)
    gU, gx = trajloss.rollout_vjp(system, x0, U, G)
    ref_gU, ref_gx, scale = ref_vjp(Ad, Bd, x0, U, np.array(G))
    assert_close(gU, ref_gU, dtype, scale=scale)
    assert_close(gx, ref_gx, dtype, scale=scale)


@pytest.mark.parametrize("dtype", DTYPES)
def test_vjp_unaligned_inputs(rng, dtype):
    n, m, Bsz, T = 3, 2, 2, 3
    system, Ad, Bd = make_system(rng, n, m)
    x0, U = random_inputs(rng, Bsz, T, n, m, dtype)
    G = rng.standard_normal((Bsz, T + 1, n)).astype(dtype)
    gU, gx = trajloss.rollout_vjp(system, unaligned(x0), unaligned(U), unaligned(G))
    ref_gU, ref_gx, scale = ref_vjp(Ad, Bd, x0, U, G)
    assert_close(gU, ref_gU, dtype, scale=scale)
    assert_close(gx, ref_gx, dtype, scale=scale)


def test_vjp_long_horizon(rng):
    # adjoint over many steps vs the dense Jacobian of a single sample
    n, m, T = 3, 1, 60
    Ad, Bd = random_discrete(rng, n, m, radius=0.97)
    system = trajloss.LinearSystem(Ad, Bd)
    x0, U = random_inputs(rng, 1, T, n, m)
    G = rng.standard_normal((1, T + 1, n))
    gU, gx = trajloss.rollout_vjp(system, x0, U, G)
    ref_gU, ref_gx, scale = ref_vjp(Ad, Bd, x0, U, G)
    assert_close(gU, ref_gU, np.float64, scale=scale)
    assert_close(gx, ref_gx, np.float64, scale=scale)


@pytest.mark.parametrize("dtype", DTYPES)
def test_vjp_nan_propagates_without_check(rng, dtype):
    n, m, Bsz, T = 3, 2, 2, 5
    system, _, _ = make_system(rng, n, m)
    x0, U = random_inputs(rng, Bsz, T, n, m, dtype)
    G = rng.standard_normal((Bsz, T + 1, n)).astype(dtype)
    t = 3
    G[0, t, 1] = np.nan
    gU, gx = trajloss.rollout_vjp(system, x0, U, G, check_finite=False)
    # the cotangent at state t reaches x0 and every control before step t
    assert np.isnan(gx[0]).all()
    assert np.isnan(gU[0, :t]).all()
    # sample 1 is untouched by sample 0's NaN
    assert np.isfinite(gU[1]).all() and np.isfinite(gx[1]).all()


def test_vjp_check_finite_false_same_result_when_finite(rng):
    system, _, _ = make_system(rng, 3, 2)
    x0, U = random_inputs(rng, 2, 4, 3, 2)
    G = rng.standard_normal((2, 5, 3))
    a = trajloss.rollout_vjp(system, x0, U, G)
    b = trajloss.rollout_vjp(system, x0, U, G, check_finite=False)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_vjp_double_integrator_closed_form():
    # d(p_T)/d(u_k) = dt^2/2 + (T-1-k) dt^2, d(p_T)/d(x0) = (1, T dt)
    dt, T = 1 / 3, 15
    system = trajloss.DoubleIntegrator(dt=dt)
    G = np.zeros((T + 1, 2))
    G[T, 0] = 1.0
    gU, gx = trajloss.rollout_vjp(system, np.zeros(2), np.zeros((T, 1)), G)
    k = np.arange(T)
    np.testing.assert_allclose(gU[:, 0], dt**2 / 2 + (T - 1 - k) * dt**2, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(gx, [1.0, T * dt], rtol=1e-13, atol=1e-14)


def test_tolerance_table_shape():
    # guard the conftest contract used throughout
    assert set(TOL) == {np.float64, np.float32}
