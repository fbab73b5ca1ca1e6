"""Every rollout-loss kernel against the NumPy reference.

The core has a kernel of its own for each small (n, m) it specialises and a
general one for everything else, and it processes sequences four (float64) or
eight (float32) at a time, so a batch whose size is not a multiple of that
ends in a zero-padded tile.
These tests reach each kernel, full and partial tiles, ragged lengths and
masks, in both dtypes and with every penalty, and compare with the plain
loops of tests/loss_reference.py."""
import warnings

import numpy as np
import pytest

import trajloss as tl
from conftest import random_discrete
from loss_reference import combined_loss_ref

SPECIALISED = [(1, 1), (2, 1), (2, 2), (3, 1), (3, 3), (4, 1), (4, 2), (6, 2), (6, 3)]
GENERAL = [(5, 2), (7, 1), (1, 3), (9, 4)]


def _case(rng, n, m, B, T, dtype, selection):
    Ad, Bd = random_discrete(rng, n, m)
    system = tl.LinearSystem(Ad, Bd)
    U = rng.standard_normal((B, T, m)).astype(dtype)
    x0 = rng.standard_normal((B, n)).astype(dtype)
    RU = rng.standard_normal((B, T, m)).astype(dtype)
    RX = rng.standard_normal((B, T + 1, n)).astype(dtype)
    kw = {}
    if selection == "lengths":
        kw["lengths"] = rng.integers(0, T + 1, size=B)
        kw["lengths"][0] = T  # at least one non-empty sequence
    elif selection == "mask":
        kw["mask"] = rng.random((B, T)) < 0.6
        kw["mask"][0, 0] = True
    return system, U, x0, RU, RX, kw


@pytest.mark.parametrize("n,m", SPECIALISED + GENERAL)
@pytest.mark.parametrize("B", [1, 3, 4, 9, 17])
@pytest.mark.parametrize("selection", ["all", "lengths", "mask"])
def test_every_kernel_matches_reference(n, m, B, selection):
    rng = np.random.default_rng(1000 * n + 100 * m + 10 * B + len(selection))
    T = 7
    for dtype, penalty in [(np.float64, "mse"), (np.float64, "huber"), (np.float32, "l1")]:
        system, U, x0, RU, RX, kw = _case(rng, n, m, B, T, dtype, selection)
        opts = dict(weight=0.7, terminal_weight=0.4, include_initial=True, discount=0.8,
                    penalty=penalty, delta=0.5, state_weights=rng.random(n) + 0.5,
                    feature_weights=rng.random(m) + 0.5, **kw)
        got = tl.combined_loss(system, U, x0, RU, RX, **opts)
        ref = combined_loss_ref(system.Ad, system.Bd, U, x0, RU, RX, **opts)
        tol = 1e-12 if dtype == np.float64 else 2e-5
        scale = max(1.0, abs(ref["value"]))
        assert abs(got.value - ref["value"]) <= tol * scale
        for name, a, b in [("grad", got.grad, ref["grad"]), ("grad_x0", got.grad_x0, ref["grad_x0"])]:
            assert a.dtype == dtype
            np.testing.assert_allclose(a, b, rtol=tol * 10, atol=tol * np.abs(b).max(initial=1.0),
                                       err_msg=f"{name} n={n} m={m} B={B} {selection} {penalty}")
        for term in ("control", "trajectory", "terminal"):
            assert abs(getattr(got.components, term) - ref[term]) <= tol * max(1.0, abs(ref[term]))


@pytest.mark.parametrize("n,m", [(2, 1), (5, 2)])
def test_padding_is_never_used(n, m):
    """NaN and 1e300 after each sequence's last valid step change nothing,
    whichever lane of a tile the sequence sits in."""
    rng = np.random.default_rng(7)
    B, T = 11, 6
    system, U, x0, RU, RX, _ = _case(rng, n, m, B, T, np.float64, "all")
    lengths = np.array([6, 1, 0, 3, 6, 2, 5, 4, 6, 0, 1])
    clean = tl.combined_loss(system, U, x0, RU, RX, weight=0.5, terminal_weight=0.3,
                             lengths=lengths)
    U2, RU2, RX2 = U.copy(), RU.copy(), RX.copy()
    for b, L in enumerate(lengths):
        U2[b, L:] = np.nan
        RU2[b, L:] = 1e300
        RX2[b, L + 1:] = np.nan
    dirty = tl.combined_loss(system, U2, x0, RU2, RX2, weight=0.5, terminal_weight=0.3,
                             lengths=lengths, check_finite=False)
    assert dirty.value == clean.value
    np.testing.assert_array_equal(dirty.grad, clean.grad)
    np.testing.assert_array_equal(dirty.grad_x0, clean.grad_x0)
    for b, L in enumerate(lengths):
        assert not dirty.grad[b, L:].any()


@pytest.mark.parametrize("n,m", SPECIALISED)
@pytest.mark.parametrize("include_initial", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fast_kernels(n, m, include_initial, dtype):
    """Small systems (n, m <= 2) shared by the batch, with every step valid
    and the squared error, run a version of the fast kernel of their own
    (no per-lane selects). It matches the NumPy reference, and the general
    version to rounding: the same call with lengths == T everywhere (which
    takes the general version) agrees to a few units in the last place of
    the result's scale -- the two differ only in the order of their
    additions (the uniform version sums a few elements at a time) and of
    their multiplications by weights, as the design allows ("bit for bit or
    to 1 ulp-scale"). B = 9 ends in a partial tile; B = 300 and 601 span
    several chunks (the later ones reuse the first one's weights), with
    tiles run in pairs and alone."""
    rng = np.random.default_rng(7 * n + m + 100 * include_initial)
    T = 6
    for B in (4, 9, 300, 601):
        for terminal_weight, discount in [(0.0, None), (0.4, 0.8)]:
            system, U, x0, RU, RX, _ = _case(rng, n, m, B, T, dtype, "all")
            opts = dict(weight=0.7, terminal_weight=terminal_weight, discount=discount,
                        include_initial=include_initial, state_weights=rng.random(n) + 0.5,
                        feature_weights=rng.random(m) + 0.5)
            got = tl.combined_loss(system, U, x0, RU, RX, **opts)
            ref = combined_loss_ref(system.Ad, system.Bd, U, x0, RU, RX, **opts)
            tol = 1e-12 if dtype == np.float64 else 2e-5
            assert abs(got.value - ref["value"]) <= tol * max(1.0, abs(ref["value"]))
            for a, b in [(got.grad, ref["grad"]), (got.grad_x0, ref["grad_x0"])]:
                np.testing.assert_allclose(a, b, rtol=tol * 10, atol=tol * np.abs(b).max())
            general = tl.combined_loss(system, U, x0, RU, RX, lengths=np.full(B, T), **opts)
            eps = np.finfo(dtype).eps
            assert abs(got.value - general.value) <= 64 * eps * abs(general.value)
            for a, b in [(got.grad, general.grad), (got.grad_x0, general.grad_x0)]:
                np.testing.assert_allclose(a, b, rtol=8 * eps, atol=8 * eps * np.abs(b).max())


@pytest.mark.parametrize("dtype,B", [(np.float64, 60_013), (np.float32, 120_011)])
def test_fast_kernels_on_batches_streamed_from_memory(dtype, B):
    """Batches of the double integrator (T = 15) past 16 MiB of arrays for
    each loss (the terminal loss's are the smallest: 36 elements a
    sequence), streamed from memory through hundreds of chunks: the uniform
    version agrees with the general one (lengths == T) to a few units in the
    last place of the result's scale, for each loss, and with the NumPy
    reference for the combined loss."""
    rng = np.random.default_rng(int(B))
    T = 15
    system, U, x0, RU, RX, _ = _case(rng, 2, 1, B, T, dtype, "all")
    target = rng.standard_normal((B, 2)).astype(dtype)
    full = np.full(B, T)
    forms = [
        lambda **kw: tl.combined_loss(system, U, x0, RU, RX, weight=0.7, terminal_weight=0.3,
                                      **kw),
        lambda **kw: tl.trajectory_loss(system, U, x0, RX, **kw),
        lambda **kw: tl.terminal_loss(system, U, x0, target, **kw),
    ]
    eps = np.finfo(dtype).eps
    for loss in forms:
        got, general = loss(), loss(lengths=full)
        assert abs(got.value - general.value) <= 64 * eps * abs(general.value)
        for a, b in [(got.grad, general.grad), (got.grad_x0, general.grad_x0)]:
            np.testing.assert_allclose(a, b, rtol=8 * eps, atol=8 * eps * np.abs(b).max())
    # the combined loss against the adjoint method vectorised over the batch
    # (loss_reference.py's per-sequence loops take a minute at this size)
    Ad, Bd = system.Ad, system.Bd
    u, r, rx, x = (a.astype(np.float64) for a in (U, RU, RX, x0))
    X = [x]
    for k in range(T):
        X.append(X[-1] @ Ad.T + u[:, k] @ Bd.T)
    X = np.stack(X, axis=1)
    value = (np.mean((u - r) ** 2) + 0.7 * np.mean((X[:, 1:] - rx[:, 1:]) ** 2)
             + 0.3 * np.mean((X[:, T] - rx[:, T]) ** 2))
    gX = 2 * 0.7 * (X - rx) / (B * T * 2)
    gX[:, T] += 2 * 0.3 * (X[:, T] - rx[:, T]) / (B * 2)
    gU, lam = 2 * (u - r) / (B * T), np.zeros_like(x)
    for k in range(T, 0, -1):
        lam = gX[:, k] + lam @ Ad
        gU[:, k - 1] += lam @ Bd
    gx0 = lam @ Ad
    got = forms[0]()
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert abs(got.value - value) <= tol * abs(value)
    for a, b in [(got.grad, gU), (got.grad_x0, gx0)]:
        np.testing.assert_allclose(a, b, rtol=0, atol=tol * np.abs(b).max())


def test_fast_kernel_ignores_nan_in_an_unscored_initial_state():
    """Without include_initial, state 0 of ref_states is not scored; the fast
    kernel skips it instead of multiplying it by a zero weight, so a NaN there
    (check_finite=False) cannot reach the value or the gradients."""
    rng = np.random.default_rng(11)
    system, U, x0, RU, RX, _ = _case(rng, 2, 1, 8, 5, np.float64, "all")
    clean = tl.combined_loss(system, U, x0, RU, RX, weight=0.5)
    RX[:, 0, :] = np.nan
    dirty = tl.combined_loss(system, U, x0, RU, RX, weight=0.5, check_finite=False)
    assert dirty.value == clean.value
    np.testing.assert_array_equal(dirty.grad, clean.grad)
    np.testing.assert_array_equal(dirty.grad_x0, clean.grad_x0)


# The fast kernels check their inputs through their sums: a NaN or inf they
# read survives every +, - and * on its way to a sum, so only a non-finite
# sum leads to a scan (csrc/loss_impl.h, rl_range). Every element of every
# input, in each loss the fast kernels serve, must still be caught -- and a
# sum that overflowed from finite inputs must not be mistaken for one.
FAST_LOSSES = {
    "combined": ("controls", "x0", "ref_controls", "ref_states", "terminal_target"),
    "trajectory": ("controls", "x0", "ref_states"),
    "terminal": ("controls", "x0", "target"),
}


def _fast_call(loss, system, arrays, include_initial):
    if loss == "combined":
        return tl.combined_loss(system, arrays["controls"], arrays["x0"], arrays["ref_controls"],
                                arrays["ref_states"], weight=0.3, terminal_weight=0.1,
                                terminal_target=arrays["terminal_target"],
                                include_initial=include_initial)
    if loss == "trajectory":
        return tl.trajectory_loss(system, arrays["controls"], arrays["x0"], arrays["ref_states"],
                                  include_initial=include_initial)
    return tl.terminal_loss(system, arrays["controls"], arrays["x0"], arrays["target"])


@pytest.mark.parametrize("loss", list(FAST_LOSSES))
@pytest.mark.parametrize("include_initial", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fast_kernels_catch_every_non_finite_input(loss, include_initial, dtype):
    if loss == "terminal" and include_initial:
        pytest.skip("terminal_loss has no initial state term")
    rng = np.random.default_rng(21)
    B, T, n, m = 8, 3, 2, 1  # two full tiles, no lengths or mask: the fast kernels
    system = tl.LinearSystem(*random_discrete(rng, n, m))
    shapes = {"controls": (B, T, m), "x0": (B, n), "ref_controls": (B, T, m),
              "ref_states": (B, T + 1, n), "terminal_target": (B, n), "target": (B, n)}
    clean = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    assert np.isfinite(_fast_call(loss, system, clean, include_initial).value)
    base = _fast_call(loss, system, clean, include_initial)
    for where in FAST_LOSSES[loss]:
        for flat in range(clean[where].size):
            # ref_states[:, 0] is scored only with include_initial: otherwise
            # it is padding, never read, and must not change a bit
            read = not (where == "ref_states" and flat % ((T + 1) * n) < n and not include_initial)
            for bad in (np.nan, np.inf, -np.inf):
                dirty = dict(clean)
                dirty[where] = clean[where].copy()
                dirty[where].flat[flat] = bad
                if read:
                    with pytest.raises(ValueError, match=rf"\b{where}\b"):
                        _fast_call(loss, system, dirty, include_initial)
                else:
                    res = _fast_call(loss, system, dirty, include_initial)
                    assert res.value == base.value and np.array_equal(res.grad, base.grad)


@pytest.mark.parametrize("dtype,big", [(np.float64, 1e200), (np.float32, 1e20)])
def test_fast_kernel_overflow_is_a_warning_not_an_input_error(dtype, big):
    """Finite inputs whose squared errors pass the dtype's range (float32
    tiles compute in float32) make the sums inf: the scan then finds every
    input finite, so the call returns inf and warns."""
    rng = np.random.default_rng(22)
    B, T = 8, 3
    system = tl.DoubleIntegrator()
    U = np.full((B, T, 1), big, dtype=dtype)
    x0 = rng.standard_normal((B, 2)).astype(dtype)
    RU = -U
    RX = rng.standard_normal((B, T + 1, 2)).astype(dtype)
    assert all(np.isfinite(a).all() for a in (U, x0, RU, RX))
    with pytest.warns(RuntimeWarning, match="overflow"):
        res = tl.combined_loss(system, U, x0, RU, RX, weight=0.3, terminal_weight=0.1)
    assert not np.isfinite(res.value)


# The fast kernels do not read their gradients back to check them: they sum
# them as they store them, and only a non-finite sum leads to a scan
# (csrc/tile_impl.h, rl_backward_end). A gradient that overflows must still be
# reported, and a sum that overflows while every gradient is finite must not be.
def _growing_system(n, a):
    return tl.LinearSystem(np.eye(n) * a, np.ones((n, 1)))


@pytest.mark.parametrize("dtype,big", [(np.float64, 1e200), (np.float32, 1e25)])
@pytest.mark.parametrize("B", [8, 256, 7])
def test_fast_kernel_gradient_overflow_is_reported(dtype, big, B):
    """x0 = 0 and u = 0 keep every state at 0 (a finite value), while the
    adjoint lam_0 = G_0 + A^T (G_1 + A^T G_2) grows as big**2: grad_x0
    overflows, and the call says so."""
    rng = np.random.default_rng(23)
    T, n = 2, 2
    system = _growing_system(n, big)
    U = np.zeros((B, T, 1), dtype)
    x0 = np.zeros((B, n), dtype)
    RX = rng.standard_normal((B, T + 1, n)).astype(dtype)
    with pytest.warns(RuntimeWarning, match="grad_x0"):
        res = tl.combined_loss(system, U, x0, U, RX, weight=0.5)
    assert np.isfinite(res.value)
    assert not np.isfinite(res.grad_x0).all()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fast_kernel_gradient_sum_overflow_is_not_an_error(dtype):
    """Every gradient finite but close to the dtype's limit, all of one sign:
    their sum overflows, the scan finds them finite, and the call is quiet."""
    B, T, n = 256, 2, 2
    finfo = np.finfo(dtype)
    U = np.zeros((B, T, 1), dtype)
    x0 = np.zeros((B, n), dtype)
    RX = -np.ones((B, T + 1, n), dtype)  # every residual +1
    # lam_0 ~ a^2 G_2 with G_2 = 2 * 0.5 / (B T n): put grad_x0 near max / 8
    a = float(np.sqrt(float(finfo.max) / 8) * np.sqrt(B * T * n))
    system = _growing_system(n, a)
    ref = combined_loss_ref(system.Ad, system.Bd, U.astype(np.float64), x0.astype(np.float64),
                            U.astype(np.float64), RX.astype(np.float64), 0.5)
    assert np.isfinite(ref["grad_x0"]).all() and np.isfinite(ref["grad"]).all()
    with np.errstate(over="ignore"):
        assert not np.isfinite(np.abs(ref["grad_x0"]).astype(dtype).sum())  # the sum overflows
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = tl.combined_loss(system, U, x0, U, RX, weight=0.5)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(res.grad_x0, ref["grad_x0"], rtol=rtol)
    np.testing.assert_allclose(res.grad, ref["grad"], rtol=rtol)
