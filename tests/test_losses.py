"""control_loss / trajectory_loss / terminal_loss / combined_loss against the
plain NumPy loops of ``loss_reference.py``, against central finite
differences (of the reference's value), and against closed forms
(numpy.mean, PyTorch's MSELoss / HuberLoss); options, layouts, dtypes,
padding invariance.

Residuals are built by construction away from the non-smooth points of the
penalties (|r| = delta for huber, r = 0 for l1), so finite differences are
exact up to rounding (the losses are piecewise quadratic)."""

import collections
import sys
import weakref

import numpy as np
import pytest

import trajloss
from trajloss import _core
from conftest import (
    DTYPES,
    LAYOUTS,
    assert_untouched,
    random_discrete,
    ref_rollout,
    relayout,
    snapshot,
)
from loss_reference import (
    PENALTIES,
    combined_loss_ref,
    control_loss_ref,
    default_terminal_target,
    fd_grad,
    kink_free,
    terminal_loss_ref,
    trajectory_loss_ref,
)

B, T, D = 4, 6, 3  # control loss
N, M = 3, 2  # state / control dimensions for the trajectory losses

VALUE_RTOL = {np.float64: 1e-12, np.float32: 1e-5}
GRAD_RTOL = {np.float64: 1e-10, np.float32: 2e-5}


# ==========================================================================
# helpers
# ==========================================================================


def check_value(actual, expected, dtype):
    assert isinstance(actual, float), type(actual)
    rtol = VALUE_RTOL[np.dtype(dtype).type]
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * 1e-3)


def check_grad(actual, expected, dtype, err_msg=""):
    """Entrywise, with an absolute floor relative to the largest entry."""
    actual = np.asarray(actual)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == np.dtype(dtype), (actual.dtype, dtype)
    rtol = GRAD_RTOL[np.dtype(dtype).type]
    scale = float(np.max(np.abs(expected), initial=0.0))
    np.testing.assert_allclose(actual.astype(np.float64), expected, rtol=rtol,
                               atol=rtol * max(scale, 1e-300), err_msg=err_msg)


def check_fd(actual, f, x, err_msg="", h=1e-5):
    """Package gradient vs central differences of the reference value ``f``."""
    g = fd_grad(f, x, h=h)
    scale = float(np.max(np.abs(g), initial=0.0))
    np.testing.assert_allclose(np.asarray(actual, np.float64), g, rtol=1e-6,
                               atol=1e-6 * scale + 1e-10, err_msg=err_msg)


def make_system(rng, n=N, m=M):
    Ad, Bd = random_discrete(rng, n, m)
    return trajloss.LinearSystem(Ad, Bd, dt=0.1), Ad, Bd


# Option sets; "weights" means feature_weights (control) / state_weights (states).
OPTS = {
    "plain": {},
    "discount<1": dict(discount=0.6),
    "discount>1": dict(discount=1.6),
    "lengths": dict(lengths=True),
    "mask": dict(mask=True),
    "weights": dict(weights=True),
    "lengths+discount+weights": dict(discount=0.45, lengths=True, weights=True),
    "mask+discount+weights": dict(discount=1.35, mask=True, weights=True),
}


def build_options(opt, rng, Bsz, Tsz, batched=True):
    """Keyword arguments (discount, lengths, mask) for an option set."""
    kw = {}
    if "discount" in opt:
        kw["discount"] = opt["discount"]
    if opt.get("lengths"):
        if batched:
            lengths = rng.integers(1, Tsz + 1, Bsz)
            lengths[0] = Tsz
            if Bsz > 1:
                lengths[1] = 0
            if Bsz > 2:
                lengths[2] = 1
            kw["lengths"] = lengths.astype(np.int64)
        else:
            kw["lengths"] = Tsz - 2
    if opt.get("mask"):
        if batched:
            mask = rng.random((Bsz, Tsz)) < 0.6
            mask[0] = True
            if Bsz > 1:
                mask[1] = False
            if Bsz > 2:
                mask[2] = np.arange(Tsz) % 2 == 1  # gaps, last step valid or not
            if Bsz > 3:
                mask[3] = False
                mask[3, 1] = mask[3, 3] = True  # gap, and padding after step 3
            kw["mask"] = mask
        else:
            mask = np.zeros(Tsz, dtype=bool)
            mask[1] = mask[2] = mask[4 % Tsz] = True
            kw["mask"] = mask
    return kw


def feature_weights(rng, size):
    s = rng.uniform(0.2, 2.5, size)
    if size > 1:
        s[1] = 0.0  # zero is allowed
    return s


# ----- data ----------------------------------------------------------------


def control_data(rng, dtype, batched=True, penalty="mse", delta=1.0, shape=None):
    shape = shape or ((B, T, D) if batched else (T, D))
    pred = rng.standard_normal(shape)
    target = pred - kink_free(rng, shape, delta)
    return pred.astype(dtype), target.astype(dtype)


def state_data(rng, Ad, Bd, dtype, batched=True, delta=1.0, Bsz=B, Tsz=T):
    """x0, controls, ref_states (residuals by construction) in ``dtype``."""
    x0 = rng.standard_normal((Bsz, N) if batched else (N,)).astype(dtype)
    U = rng.standard_normal((Bsz, Tsz, M) if batched else (Tsz, M)).astype(dtype)
    X = ref_rollout(Ad, Bd, x0, U)
    ref_states = (X - kink_free(rng, X.shape, delta)).astype(dtype)
    return x0, U, ref_states


def terminal_target_for(rng, Ad, Bd, x0, U, dtype, lengths=None, mask=None, delta=1.0):
    X = ref_rollout(Ad, Bd, x0, U)
    unbatched = X.ndim == 2
    Xb = X[None] if unbatched else X
    # the predicted final valid state, minus a kink-free residual
    fake_ref = Xb - kink_free(rng, Xb.shape, delta)
    target = default_terminal_target(
        fake_ref[0] if unbatched else fake_ref, lengths=lengths, mask=mask)
    # rows without a valid step: any finite target
    return np.asarray(target, dtype=dtype)


# ==========================================================================
# control_loss
# ==========================================================================


@pytest.mark.parametrize("opt", list(OPTS), ids=list(OPTS))
@pytest.mark.parametrize("penalty", PENALTIES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_control_loss_vs_reference(rng, batched, dtype, penalty, opt):
    delta = 0.7
    pred, target = control_data(rng, dtype, batched, delta=delta)
    kw = build_options(OPTS[opt], rng, B, T, batched)
    if OPTS[opt].get("weights"):
        kw["feature_weights"] = feature_weights(rng, D)
    snap = snapshot(pred, target, *kw.values())

    res = trajloss.control_loss(pred, target, penalty=penalty, delta=delta, **kw)

    assert_untouched([pred, target, *kw.values()], snap)
    assert isinstance(res, trajloss.LossResult)
    ref = control_loss_ref(pred, target, penalty=penalty, delta=delta, **kw)
    check_value(res.value, ref["value"], dtype)
    check_grad(res.grad, ref["grad"], dtype)
    assert res.grad_x0 is None
    assert res.components is None


@pytest.mark.parametrize("opt", list(OPTS), ids=list(OPTS))
@pytest.mark.parametrize("penalty", PENALTIES)
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_control_loss_grad_fd(rng, batched, penalty, opt):
    delta = 1.3
    pred, target = control_data(rng, np.float64, batched, delta=delta)
    kw = build_options(OPTS[opt], rng, B, T, batched)
    if OPTS[opt].get("weights"):
        kw["feature_weights"] = feature_weights(rng, D)
    res = trajloss.control_loss(pred, target, penalty=penalty, delta=delta, **kw)
    f = lambda p: control_loss_ref(p, target, penalty=penalty, delta=delta, **kw)["value"]  # noqa: E731
    check_fd(res.grad, f, pred)


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_control_loss_mse_is_numpy_mean(rng, batched):
    shape = (5, 7, 3) if batched else (7, 2)
    pred = rng.standard_normal(shape) * 3
    target = rng.standard_normal(shape)
    res = trajloss.control_loss(pred, target)
    np.testing.assert_allclose(res.value, np.mean((pred - target) ** 2), rtol=1e-12)
    np.testing.assert_allclose(res.grad, 2 * (pred - target) / pred.size, rtol=1e-12,
                               atol=1e-15)
    # explicit defaults give the same
    res1 = trajloss.control_loss(pred, target, discount=1.0, penalty="mse")
    np.testing.assert_allclose(res1.value, np.mean((pred - target) ** 2), rtol=1e-12)


def test_control_loss_l1_is_numpy_mean_abs(rng):
    pred = rng.standard_normal((3, 5, 2))
    target = pred - kink_free(rng, pred.shape)
    res = trajloss.control_loss(pred, target, penalty="l1")
    np.testing.assert_allclose(res.value, np.mean(np.abs(pred - target)), rtol=1e-12)
    np.testing.assert_allclose(res.grad, np.sign(pred - target) / pred.size, rtol=1e-12)


def numpy_huber_mean(pred, target, delta):
    """torch.nn.HuberLoss(delta=delta, reduction="mean"), in NumPy."""
    r = np.abs(pred - target)
    return np.mean(np.where(r <= delta, 0.5 * r ** 2, delta * (r - 0.5 * delta)))


@pytest.mark.parametrize("delta", [0.25, 1.0, 2.0])
def test_control_loss_huber_is_numpy_huber_mean(rng, delta):
    pred = rng.standard_normal((4, 6, 3)) * 2
    target = pred - kink_free(rng, pred.shape, delta)
    res = trajloss.control_loss(pred, target, penalty="huber", delta=delta)
    np.testing.assert_allclose(res.value, numpy_huber_mean(pred, target, delta), rtol=1e-12)
    r = pred - target
    g = np.where(np.abs(r) <= delta, r, delta * np.sign(r)) / pred.size
    np.testing.assert_allclose(res.grad, g, rtol=1e-12)


def test_control_loss_huber_default_delta_is_one(rng):
    pred = rng.standard_normal((2, 5, 3)) * 2
    target = pred - kink_free(rng, pred.shape, 1.0)
    res = trajloss.control_loss(pred, target, penalty="huber")
    np.testing.assert_allclose(res.value, numpy_huber_mean(pred, target, 1.0), rtol=1e-12)


@pytest.mark.parametrize("penalty", ["mse", "huber"])
@pytest.mark.parametrize("delta", [0.5, 1.0, 3.0])
def test_control_loss_matches_torch(rng, penalty, delta):
    torch = pytest.importorskip("torch")
    pred = rng.standard_normal((3, 5, 2)) * 2
    target = rng.standard_normal((3, 5, 2))
    tp = torch.tensor(pred, dtype=torch.float64, requires_grad=True)
    tt = torch.tensor(target, dtype=torch.float64)
    crit = torch.nn.MSELoss() if penalty == "mse" else torch.nn.HuberLoss(delta=delta)
    out = crit(tp, tt)
    out.backward()
    res = trajloss.control_loss(pred, target, penalty=penalty, delta=delta)
    np.testing.assert_allclose(res.value, out.item(), rtol=1e-12)
    np.testing.assert_allclose(res.grad, tp.grad.numpy(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
def test_control_loss_l1_gradient_zero_at_zero_residual(rng, dtype):
    pred = rng.standard_normal((2, 4, 3)).astype(dtype)
    target = pred.copy()
    target[0, 0, 0] += 1.0  # one non-zero residual
    res = trajloss.control_loss(pred, target, penalty="l1")
    expected = np.zeros(pred.shape)
    expected[0, 0, 0] = -1.0 / pred.size
    check_grad(res.grad, expected, dtype)
    assert np.count_nonzero(res.grad) == 1
    res0 = trajloss.control_loss(pred, pred.copy(), penalty="l1")
    assert res0.value == 0.0
    assert np.all(res0.grad == 0)


def test_control_loss_unit_feature_weights_equal_none(rng):
    pred, target = control_data(rng, np.float64)
    a = trajloss.control_loss(pred, target, feature_weights=np.ones(D), discount=0.8)
    ref = control_loss_ref(pred, target, discount=0.8)
    check_value(a.value, ref["value"], np.float64)
    check_grad(a.grad, ref["grad"], np.float64)


def test_control_loss_feature_weights_scale_features(rng):
    """Feature weights multiply each feature's penalty: weights (a, 0, c) give
    exactly a*MSE_0/D + c*MSE_2/D with plain mean reduction."""
    pred, target = control_data(rng, np.float64)
    s = np.array([2.0, 0.0, 0.5])
    res = trajloss.control_loss(pred, target, feature_weights=s)
    per_feature = np.mean((pred - target) ** 2, axis=(0, 1))
    np.testing.assert_allclose(res.value, np.sum(s * per_feature) / D, rtol=1e-12)
    assert np.all(res.grad[..., 1] == 0)


def test_control_loss_discount_none_is_one(rng):
    pred, target = control_data(rng, np.float64)
    lengths = np.array([6, 2, 3, 1])
    ref = control_loss_ref(pred, target, lengths=lengths)
    for discount in (None, 1.0, 1):
        res = trajloss.control_loss(pred, target, discount=discount, lengths=lengths)
        check_value(res.value, ref["value"], np.float64)
        check_grad(res.grad, ref["grad"], np.float64)


def test_control_loss_masked_steps_get_zero_gradient(rng):
    pred, target = control_data(rng, np.float64)
    mask = rng.random((B, T)) < 0.5
    mask[0, 0] = True
    res = trajloss.control_loss(pred, target, mask=mask, discount=0.7)
    assert np.all(res.grad[~mask] == 0)
    assert np.all(res.grad[mask] != 0)


def test_control_loss_lengths_equal_mask(rng):
    pred, target = control_data(rng, np.float64)
    lengths = np.array([6, 0, 2, 5])
    mask = np.arange(T)[None, :] < lengths[:, None]
    ref = control_loss_ref(pred, target, discount=1.4, lengths=lengths)
    for kw in (dict(lengths=lengths), dict(mask=mask)):
        res = trajloss.control_loss(pred, target, discount=1.4, **kw)
        check_value(res.value, ref["value"], np.float64)
        check_grad(res.grad, ref["grad"], np.float64)


@pytest.mark.parametrize("lengths_dtype", [np.int8, np.int32, np.int64, np.uint16])
def test_control_loss_lengths_integer_dtypes(rng, lengths_dtype):
    pred, target = control_data(rng, np.float64)
    lengths = np.array([6, 0, 2, 5], dtype=lengths_dtype)
    res = trajloss.control_loss(pred, target, lengths=lengths, discount=0.5)
    ref = control_loss_ref(pred, target, lengths=lengths, discount=0.5)
    check_value(res.value, ref["value"], np.float64)


# ==========================================================================
# trajectory_loss
# ==========================================================================


@pytest.mark.parametrize("include_initial", [False, True], ids=["states1..T", "states0..T"])
@pytest.mark.parametrize("opt", list(OPTS), ids=list(OPTS))
@pytest.mark.parametrize("penalty", PENALTIES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_trajectory_loss_vs_reference(rng, dtype, penalty, opt, include_initial):
    delta = 0.8
    system, Ad, Bd = make_system(rng)
    x0, U, ref_states = state_data(rng, Ad, Bd, dtype, delta=delta)
    kw = build_options(OPTS[opt], rng, B, T)
    if OPTS[opt].get("weights"):
        kw["state_weights"] = feature_weights(rng, N)
    snap = snapshot(x0, U, ref_states, *kw.values())

    res = trajloss.trajectory_loss(system, U, x0, ref_states, include_initial=include_initial,
                                   penalty=penalty, delta=delta, **kw)

    assert_untouched([x0, U, ref_states, *kw.values()], snap)
    ref = trajectory_loss_ref(Ad, Bd, U, x0, ref_states, include_initial=include_initial,
                              penalty=penalty, delta=delta, **kw)
    check_value(res.value, ref["value"], dtype)
    check_grad(res.grad, ref["grad"], dtype, "grad (controls)")
    check_grad(res.grad_x0, ref["grad_x0"], dtype, "grad_x0")
    assert res.components is None


@pytest.mark.parametrize("include_initial", [False, True], ids=["states1..T", "states0..T"])
@pytest.mark.parametrize("opt", list(OPTS), ids=list(OPTS))
@pytest.mark.parametrize("penalty", PENALTIES)
def test_trajectory_loss_grad_fd(rng, penalty, opt, include_initial):
    delta = 1.2
    system, Ad, Bd = make_system(rng)
    x0, U, ref_states = state_data(rng, Ad, Bd, np.float64, delta=delta)
    kw = build_options(OPTS[opt], rng, B, T)
    if OPTS[opt].get("weights"):
        kw["state_weights"] = feature_weights(rng, N)
    kw.update(include_initial=include_initial, penalty=penalty, delta=delta)
    res = trajloss.trajectory_loss(system, U, x0, ref_states, **kw)
    check_fd(res.grad, lambda u: trajectory_loss_ref(Ad, Bd, u, x0, ref_states, **kw)["value"],
             U, "grad (controls)")
    check_fd(res.grad_x0,
             lambda x: trajectory_loss_ref(Ad, Bd, U, x, ref_states, **kw)["value"],
             x0, "grad_x0")


@pytest.mark.parametrize("include_initial", [False, True])
@pytest.mark.parametrize("opt", ["plain", "lengths+discount+weights", "mask+discount+weights"])
@pytest.mark.parametrize("penalty", PENALTIES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_trajectory_loss_unbatched(rng, dtype, penalty, opt, include_initial):
    system, Ad, Bd = make_system(rng)
    x0, U, ref_states = state_data(rng, Ad, Bd, dtype, batched=False)
    kw = build_options(OPTS[opt], rng, 1, T, batched=False)
    if OPTS[opt].get("weights"):
        kw["state_weights"] = feature_weights(rng, N)
    kw.update(include_initial=include_initial, penalty=penalty)
    res = trajloss.trajectory_loss(system, U, x0, ref_states, **kw)
    ref = trajectory_loss_ref(Ad, Bd, U, x0, ref_states, **kw)
    check_value(res.value, ref["value"], dtype)
    check_grad(res.grad, ref["grad"], dtype)
    check_grad(res.grad_x0, ref["grad_x0"], dtype)
    if dtype == np.float64:
        check_fd(res.grad, lambda u: trajectory_loss_ref(Ad, Bd, u, x0, ref_states, **kw)["value"],
                 U)
        check_fd(res.grad_x0,
                 lambda x: trajectory_loss_ref(Ad, Bd, U, x, ref_states, **kw)["value"], x0)


@pytest.mark.parametrize("include_initial", [False, True])
def test_trajectory_loss_mse_is_numpy_mean(rng, include_initial):
    """gamma = 1, no mask, mse: the plain mean of the squared state errors, over
    states 1..T (or 0..T: seed 000 averages all 16 states of 15 steps)."""
    system, Ad, Bd = make_system(rng)
    x0 = rng.standard_normal((3, N))
    U = rng.standard_normal((3, 15, M))
    ref_states = rng.standard_normal((3, 16, N))
    X = ref_rollout(Ad, Bd, x0, U)
    res = trajloss.trajectory_loss(system, U, x0, ref_states, include_initial=include_initial)
    sl = slice(0, None) if include_initial else slice(1, None)
    np.testing.assert_allclose(res.value, np.mean((X[:, sl] - ref_states[:, sl]) ** 2),
                               rtol=1e-12)


def test_trajectory_loss_double_integrator_by_hand():
    """Double integrator, dt = 1, one step, zero reference: states by hand."""
    Ad = np.array([[1.0, 1.0], [0.0, 1.0]])
    Bd = np.array([[0.5], [1.0]])
    system = trajloss.LinearSystem(Ad, Bd, dt=1.0)
    x0 = np.array([1.0, 2.0])
    U = np.array([[2.0]])
    ref_states = np.zeros((2, 2))
    # x1 = (1 + 2 + 1, 2 + 2) = (4, 4)
    res = trajloss.trajectory_loss(system, U, x0, ref_states)
    assert res.value == pytest.approx(16.0, rel=1e-14)
    # dL/dx1 = 2*x1/2 = (4, 4); dL/du = Bd^T (4, 4) = 6; dL/dx0 = Ad^T (4, 4) = (4, 8)
    np.testing.assert_allclose(res.grad, [[6.0]], rtol=1e-14)
    np.testing.assert_allclose(res.grad_x0, [4.0, 8.0], rtol=1e-14)
    res0 = trajloss.trajectory_loss(system, U, x0, ref_states, include_initial=True)
    # states 0 and 1: mean(1, 4, 16, 16) = 37/4
    assert res0.value == pytest.approx(37.0 / 4.0, rel=1e-14)
    np.testing.assert_allclose(res0.grad, [[3.0]], rtol=1e-14)
    # dL/dx0 = x0/2 + Ad^T (2, 2) = (0.5 + 2, 1 + 4)
    np.testing.assert_allclose(res0.grad_x0, [2.5, 5.0], rtol=1e-14)


def test_trajectory_loss_include_initial_counts_state0_once(rng):
    """include_initial with lengths: state 0 is one extra valid step per
    non-empty sequence; time weights over T+1 extended steps."""
    system, Ad, Bd = make_system(rng)
    x0, U, ref_states = state_data(rng, Ad, Bd, np.float64)
    lengths = np.array([6, 0, 1, 3])
    res = trajloss.trajectory_loss(system, U, x0, ref_states, include_initial=True,
                                   lengths=lengths)
    X = ref_rollout(Ad, Bd, x0, U)
    sq = np.mean((X - ref_states) ** 2, axis=-1)  # (B, T+1)
    total = sum(sq[b, : lengths[b] + 1].sum() for b in range(B) if lengths[b] > 0)
    count = sum(lengths[b] + 1 for b in range(B) if lengths[b] > 0)
    np.testing.assert_allclose(res.value, total / count, rtol=1e-12)
    assert np.all(res.grad_x0[1] == 0)  # the empty sequence contributes nothing


def test_trajectory_loss_include_initial_discount(rng):
    """Closed form: one full sequence, gamma, include_initial: weights
    g^k (T+1)(1-g)/(1-g^(T+1)) on states k = 0..T."""
    system, Ad, Bd = make_system(rng)
    x0, U, ref_states = state_data(rng, Ad, Bd, np.float64, batched=False)
    g = 0.55
    res = trajloss.trajectory_loss(system, U, x0, ref_states, include_initial=True, discount=g)
    X = ref_rollout(Ad, Bd, x0, U)
    k = np.arange(T + 1)
    w = g ** k * (T + 1) * (1 - g) / (1 - g ** (T + 1))
    e = np.mean((X - ref_states) ** 2, axis=-1)
    np.testing.assert_allclose(res.value, np.mean(w * e), rtol=1e-12)


# ==========================================================================
# terminal_loss
# ==========================================================================

TERMINAL_OPTS = ["plain", "lengths", "mask", "weights", "lengths+discount+weights",
                 "mask+discount+weights"]


def terminal_kw(opt, rng, batched=True):
    kw = build_options(OPTS[opt], rng, B, T, batched)
    kw.pop("discount", None)  # terminal_loss has no discount
    if OPTS[opt].get("weights"):
        kw["state_weights"] = feature_weights(rng, N)
    return kw


@pytest.mark.parametrize("opt", TERMINAL_OPTS)
@pytest.mark.parametrize("penalty", PENALTIES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_terminal_loss_vs_reference(rng, batched, dtype, penalty, opt):
    delta = 0.9
    system, Ad, Bd = make_system(rng)
    x0, U, _ = state_data(rng, Ad, Bd, dtype, batched=batched)
    kw = terminal_kw(opt, rng, batched)
    target = terminal_target_for(rng, Ad, Bd, x0, U, dtype, kw.get("lengths"), kw.get("mask"),
                                 delta)
    snap = snapshot(x0, U, target, *kw.values())
    res = trajloss.terminal_loss(system, U, x0, target, penalty=penalty, delta=delta, **kw)
    assert_untouched([x0, U, target, *kw.values()], snap)
    ref = terminal_loss_ref(Ad, Bd, U, x0, target, penalty=penalty, delta=delta, **kw)
    check_value(res.value, ref["value"], dtype)
    check_grad(res.grad, ref["grad"], dtype, "grad (controls)")
    check_grad(res.grad_x0, ref["grad_x0"], dtype, "grad_x0")
    assert res.components is None


@pytest.mark.parametrize("opt", TERMINAL_OPTS)
@pytest.mark.parametrize("penalty", PENALTIES)
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_terminal_loss_grad_fd(rng, batched, penalty, opt):
    delta = 1.1
    system, Ad, Bd = make_system(rng)
    x0, U, _ = state_data(rng, Ad, Bd, np.float64, batched=batched)
    kw = terminal_kw(opt, rng, batched)
    target = terminal_target_for(rng, Ad, Bd, x0, U, np.float64, kw.get("lengths"),
                                 kw.get("mask"), delta)
    kw.update(penalty=penalty, delta=delta)
    res = trajloss.terminal_loss(system, U, x0, target, **kw)
    check_fd(res.grad, lambda u: terminal_loss_ref(Ad, Bd, u, x0, target, **kw)["value"], U)
    check_fd(res.grad_x0, lambda x: terminal_loss_ref(Ad, Bd, U, x, target, **kw)["value"], x0)


def test_terminal_loss_closed_form(rng):
    """mse: mean over sequences with a valid step of mean_d (x_K - target)^2."""
    system, Ad, Bd = make_system(rng)
    x0, U, _ = state_data(rng, Ad, Bd, np.float64)
    target = rng.standard_normal((B, N))
    lengths = np.array([6, 0, 2, 4])
    X = ref_rollout(Ad, Bd, x0, U)
    errs = [np.mean((X[b, lengths[b]] - target[b]) ** 2) for b in (0, 2, 3)]
    res = trajloss.terminal_loss(system, U, x0, target, lengths=lengths)
    np.testing.assert_allclose(res.value, np.mean(errs), rtol=1e-12)
    assert np.all(res.grad[1] == 0) and np.all(res.grad_x0[1] == 0)
    assert np.all(res.grad[2, 2:] == 0) and np.all(res.grad[3, 4:] == 0)
    # no lengths: the final state
    res_all = trajloss.terminal_loss(system, U, x0, target)
    np.testing.assert_allclose(res_all.value, np.mean((X[:, T] - target) ** 2), rtol=1e-12)


def test_terminal_loss_mask_uses_last_valid_step(rng):
    system, Ad, Bd = make_system(rng)
    x0, U, _ = state_data(rng, Ad, Bd, np.float64)
    target = rng.standard_normal((B, N))
    mask = np.zeros((B, T), dtype=bool)
    mask[0, [0, 3]] = True  # K = 4
    mask[1, 5] = True  # K = 6
    mask[3, [1, 2]] = True  # K = 3 ; row 2 empty
    X = ref_rollout(Ad, Bd, x0, U)
    errs = [np.mean((X[b, K] - target[b]) ** 2) for b, K in ((0, 4), (1, 6), (3, 3))]
    res = trajloss.terminal_loss(system, U, x0, target, mask=mask)
    np.testing.assert_allclose(res.value, np.mean(errs), rtol=1e-12)
    assert np.all(res.grad[0, 4:] == 0) and np.all(res.grad[2] == 0)


# ==========================================================================
# combined_loss
# ==========================================================================

COMBINED_OPTS = ["plain", "discount<1", "lengths", "mask", "weights", "lengths+discount+weights",
                 "mask+discount+weights"]


def combined_setup(rng, dtype, opt, batched=True, delta=1.0, explicit_target=False):
    system, Ad, Bd = make_system(rng)
    x0, U, ref_states = state_data(rng, Ad, Bd, dtype, batched=batched, delta=delta)
    ref_controls = (U.astype(np.float64) - kink_free(rng, U.shape, delta)).astype(dtype)
    kw = build_options(OPTS[opt], rng, B, T, batched)
    if OPTS[opt].get("weights"):
        kw["state_weights"] = feature_weights(rng, N)
        kw["feature_weights"] = feature_weights(rng, M)
    if explicit_target:
        kw["terminal_target"] = terminal_target_for(rng, Ad, Bd, x0, U, dtype, kw.get("lengths"),
                                                    kw.get("mask"), delta)
    return system, Ad, Bd, x0, U, ref_controls, ref_states, kw


def check_components(res, ref, weight, terminal_weight, dtype):
    c = res.components
    assert c is not None
    check_value(float(c.control), ref["control"], dtype)
    check_value(float(c.trajectory), ref["trajectory"], dtype)
    if terminal_weight > 0:
        check_value(float(c.terminal), ref["terminal"], dtype)
    assert c.weight == weight
    assert c.terminal_weight == terminal_weight
    check_value(float(c.total), ref["value"], dtype)
    contrib = c.contributions
    assert set(contrib) == {"control", "trajectory", "terminal"}
    np.testing.assert_allclose(contrib["control"], ref["control"], rtol=1e-5)
    np.testing.assert_allclose(contrib["trajectory"], weight * ref["trajectory"], rtol=1e-5)
    np.testing.assert_allclose(contrib["terminal"], terminal_weight * ref["terminal"], rtol=1e-5,
                               atol=1e-300)
    frac = c.fractions
    assert set(frac) == {"control", "trajectory", "terminal"}
    for k in frac:
        np.testing.assert_allclose(frac[k], contrib[k] / ref["value"], rtol=1e-5, atol=1e-300)
    np.testing.assert_allclose(sum(frac.values()), 1.0, rtol=1e-6)
    np.testing.assert_allclose(c.ratio, ref["trajectory"] / ref["control"], rtol=1e-5)


@pytest.mark.parametrize("terminal_weight", [0.0, 0.7])
@pytest.mark.parametrize("include_initial", [False, True], ids=["states1..T", "states0..T"])
@pytest.mark.parametrize("opt", COMBINED_OPTS)
@pytest.mark.parametrize("penalty", PENALTIES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_combined_loss_vs_reference(rng, dtype, penalty, opt, include_initial, terminal_weight):
    delta, weight = 0.85, 0.3
    system, Ad, Bd, x0, U, ref_controls, ref_states, kw = combined_setup(
        rng, dtype, opt, delta=delta)
    kw.update(include_initial=include_initial, penalty=penalty, delta=delta)
    snap = snapshot(x0, U, ref_controls, ref_states, *kw.values())
    res = trajloss.combined_loss(system, U, x0, ref_controls, ref_states, weight=weight,
                                 terminal_weight=terminal_weight, **kw)
    assert_untouched([x0, U, ref_controls, ref_states, *kw.values()], snap)
    ref = combined_loss_ref(Ad, Bd, U, x0, ref_controls, ref_states, weight,
                            terminal_weight=terminal_weight, **kw)
    check_value(res.value, ref["value"], dtype)
    check_grad(res.grad, ref["grad"], dtype, "grad (controls)")
    check_grad(res.grad_x0, ref["grad_x0"], dtype, "grad_x0")
    check_components(res, ref, weight, terminal_weight, dtype)


@pytest.mark.parametrize("explicit_target", [False, True], ids=["default-target", "target"])
@pytest.mark.parametrize("include_initial", [False, True], ids=["states1..T", "states0..T"])
@pytest.mark.parametrize("opt", COMBINED_OPTS)
@pytest.mark.parametrize("penalty", PENALTIES)
def test_combined_loss_grad_fd(rng, penalty, opt, include_initial, explicit_target):
    delta, weight, terminal_weight = 1.4, 0.45, 1.7
    system, Ad, Bd, x0, U, ref_controls, ref_states, kw = combined_setup(
        rng, np.float64, opt, delta=delta, explicit_target=explicit_target)
    kw.update(include_initial=include_initial, penalty=penalty, delta=delta,
              weight=weight, terminal_weight=terminal_weight)
    res = trajloss.combined_loss(system, U, x0, ref_controls, ref_states, **kw)
    ref = combined_loss_ref(Ad, Bd, U, x0, ref_controls, ref_states, **kw)
    check_value(res.value, ref["value"], np.float64)
    check_fd(res.grad,
             lambda u: combined_loss_ref(Ad, Bd, u, x0, ref_controls, ref_states, **kw)["value"],
             U, "grad (controls)")
    check_fd(res.grad_x0,
             lambda x: combined_loss_ref(Ad, Bd, U, x, ref_controls, ref_states, **kw)["value"],
             x0, "grad_x0")


@pytest.mark.parametrize("opt", ["plain", "lengths+discount+weights", "mask+discount+weights"])
@pytest.mark.parametrize("penalty", PENALTIES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_combined_loss_unbatched(rng, dtype, penalty, opt):
    system, Ad, Bd, x0, U, ref_controls, ref_states, kw = combined_setup(
        rng, dtype, opt, batched=False)
    kw.update(penalty=penalty, include_initial=True, weight=0.6, terminal_weight=0.25)
    res = trajloss.combined_loss(system, U, x0, ref_controls, ref_states, **kw)
    ref = combined_loss_ref(Ad, Bd, U, x0, ref_controls, ref_states, **kw)
    check_value(res.value, ref["value"], dtype)
    check_grad(res.grad, ref["grad"], dtype)
    check_grad(res.grad_x0, ref["grad_x0"], dtype)
    assert res.grad.shape == (T, M) and res.grad_x0.shape == (N,)


def test_combined_loss_seed000_numbers_by_hand():
    """The seed's contribution breakdown: control 0.025, trajectory 0.084 (by
    construction), weight 0.3 -> contributions 0.025 / 0.0252, ratio 3.36."""
    Ad = np.array([[1.0, 1.0 / 3.0], [0.0, 1.0]])
    Bd = np.array([[1.0 / 18.0], [1.0 / 3.0]])
    system = trajloss.LinearSystem(Ad, Bd, dt=1.0 / 3.0)
    T15 = 15
    x0 = np.zeros((1, 2))
    U = np.zeros((1, T15, 1))
    ref_controls = np.full((1, T15, 1), np.sqrt(0.025))  # control mse 0.025
    ref_states = np.full((1, T15 + 1, 2), np.sqrt(0.084))  # state mse 0.084
    res = trajloss.combined_loss(system, U, x0, ref_controls, ref_states, weight=0.3)
    c = res.components
    np.testing.assert_allclose(c.control, 0.025, rtol=1e-12)
    np.testing.assert_allclose(c.trajectory, 0.084, rtol=1e-12)
    np.testing.assert_allclose(res.value, 0.025 + 0.3 * 0.084, rtol=1e-12)
    np.testing.assert_allclose(c.total, res.value, rtol=1e-15)
    np.testing.assert_allclose(c.ratio, 0.084 / 0.025, rtol=1e-12)
    np.testing.assert_allclose(c.contributions["trajectory"], 0.0252, rtol=1e-12)
    np.testing.assert_allclose(c.fractions["control"], 0.025 / 0.0502, rtol=1e-12)
    np.testing.assert_allclose(c.fractions["trajectory"], 0.0252 / 0.0502, rtol=1e-12)


def test_combined_loss_result_is_built_by_the_core(rng):
    """combined_loss's LossResult and LossComponents are made by the C core
    (_core.set_result_types): instances of exactly those classes, with the
    named-tuple API, holding the only references to their gradients."""
    system, Ad, Bd, x0, U, ref_controls, ref_states, kw = combined_setup(
        rng, np.float64, "plain")
    res = trajloss.combined_loss(system, U, x0, ref_controls, ref_states, weight=0.3,
                                 terminal_weight=0.2, **kw)
    ref = combined_loss_ref(Ad, Bd, U, x0, ref_controls, ref_states, 0.3,
                            terminal_weight=0.2, **kw)
    assert type(res) is trajloss.LossResult and len(res) == 4
    c = res.components
    assert type(c) is trajloss.LossComponents and len(c) == 6
    assert (c.weight, c.terminal_weight, c.total) == (0.3, 0.2, res.value)
    check_components(res, ref, 0.3, 0.2, np.float64)
    assert float(res) == res.value and res._replace(grad=None).grad is None
    assert tuple(res) == (res.value, res.grad, res.grad_x0, c)
    grad, grad_x0, comp = weakref.ref(res.grad), weakref.ref(res.grad_x0), sys.getrefcount(c)
    del res
    assert grad() is None and grad_x0() is None and sys.getrefcount(c) == comp - 1


class _TupleWithDict(tuple):
    _fields = ("value", "grad", "grad_x0", "components")


@pytest.mark.parametrize(
    "bad", [dict, tuple, _TupleWithDict, collections.namedtuple("Five", "a b c d e"), 3],
    ids=["dict", "tuple", "tuple-with-dict", "five-fields", "int"])
def test_set_result_types_refuses_other_classes(rng, bad):
    with pytest.raises(TypeError, match="set_result_types: result must"):
        _core.set_result_types(bad, trajloss.LossComponents)
    with pytest.raises(TypeError, match="set_result_types: components must"):
        _core.set_result_types(trajloss.LossResult, bad)
    system, Ad, Bd, x0, U, ref_controls, ref_states, kw = combined_setup(
        rng, np.float64, "plain")
    res = trajloss.combined_loss(system, U, x0, ref_controls, ref_states, weight=0.3, **kw)
    assert type(res) is trajloss.LossResult  # a refused call changed nothing
    assert type(res.components) is trajloss.LossComponents


def test_combined_loss_weight_zero_is_control_loss(rng):
    system, Ad, Bd, x0, U, ref_controls, ref_states, kw = combined_setup(
        rng, np.float64, "lengths+discount+weights")
    kw.pop("state_weights")
    res = trajloss.combined_loss(system, U, x0, ref_controls, ref_states, weight=0.0, **kw)
    ref = control_loss_ref(U, ref_controls, **kw)
    check_value(res.value, ref["value"], np.float64)
    check_grad(res.grad, ref["grad"], np.float64)
    assert np.all(res.grad_x0 == 0)


# ==========================================================================
# layouts, dtypes, inputs untouched
# ==========================================================================


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", ["control", "trajectory", "terminal", "combined"])
def test_layouts(rng, loss, dtype, layout):
    delta = 0.9
    system, Ad, Bd = make_system(rng)
    x0, U, ref_states = state_data(rng, Ad, Bd, dtype, delta=delta)
    ref_controls = (U.astype(np.float64) - kink_free(rng, U.shape, delta)).astype(dtype)
    lengths = np.array([6, 0, 3, 1])
    mask = np.arange(T)[None, :] < lengths[:, None]
    mask[0, 2] = False
    sw = feature_weights(rng, N)
    fw = feature_weights(rng, M)
    target = terminal_target_for(rng, Ad, Bd, x0, U, dtype, lengths=lengths, delta=delta)
    for sel in (dict(lengths=lengths), dict(mask=mask)):
        if loss == "control":
            args = [U, ref_controls]
            kw = dict(sel, feature_weights=fw, discount=0.7, penalty="huber", delta=delta)
            call = lambda *a, **k: trajloss.control_loss(*a, **k)  # noqa: E731
            ref = control_loss_ref(*args, **kw)
        elif loss == "trajectory":
            args = [U, x0, ref_states]
            kw = dict(sel, state_weights=sw, discount=1.3, penalty="l1", include_initial=True)
            call = lambda *a, **k: trajloss.trajectory_loss(system, *a, **k)  # noqa: E731
            ref = trajectory_loss_ref(Ad, Bd, *args, **kw)
        elif loss == "terminal":
            args = [U, x0, target]
            kw = dict(sel, state_weights=sw, penalty="mse")
            call = lambda *a, **k: trajloss.terminal_loss(system, *a, **k)  # noqa: E731
            ref = terminal_loss_ref(Ad, Bd, *args, **kw)
        else:
            args = [U, x0, ref_controls, ref_states]
            kw = dict(sel, state_weights=sw, feature_weights=fw, discount=0.8, penalty="huber",
                      delta=delta, weight=0.4, terminal_weight=0.6, terminal_target=target)
            call = lambda *a, **k: trajloss.combined_loss(system, *a, **k)  # noqa: E731
            ref = combined_loss_ref(Ad, Bd, *args, **kw)
        args_l = [relayout(a, layout) for a in args]
        kw_l = {k: (relayout(v, layout) if isinstance(v, np.ndarray) else v)
                for k, v in kw.items()}
        arrays = args_l + [v for v in kw_l.values() if isinstance(v, np.ndarray)]
        snap = snapshot(*arrays)
        res = call(*args_l, **kw_l)
        assert_untouched(arrays, snap)
        check_value(res.value, ref["value"], dtype)
        check_grad(res.grad, ref["grad"], dtype)
        if loss != "control":
            check_grad(res.grad_x0, ref["grad_x0"], dtype)
        # the C-contiguous call gives the same numbers
        res_c = call(*args, **kw)
        np.testing.assert_allclose(res.value, res_c.value, rtol=1e-14)
        np.testing.assert_allclose(res.grad, res_c.grad, rtol=1e-14, atol=0)


@pytest.mark.parametrize("loss", ["control", "trajectory", "terminal", "combined"])
def test_float32_matches_float64(rng, loss):
    """float32 inputs give (to float32 accuracy) what the same numbers give in
    float64; grads keep float32."""
    system, Ad, Bd = make_system(rng)
    x0, U, ref_states = state_data(rng, Ad, Bd, np.float32)
    ref_controls = (U - kink_free(rng, U.shape)).astype(np.float32)
    target = terminal_target_for(rng, Ad, Bd, x0, U, np.float32)
    lengths = np.array([6, 2, 0, 5])
    for dtype in (np.float32, np.float64):
        cast = lambda a: a.astype(dtype)  # noqa: E731
        if loss == "control":
            res = trajloss.control_loss(cast(U), cast(ref_controls), lengths=lengths,
                                        discount=0.5)
            ref = control_loss_ref(U, ref_controls, lengths=lengths, discount=0.5)
        elif loss == "trajectory":
            res = trajloss.trajectory_loss(system, cast(U), cast(x0), cast(ref_states),
                                           lengths=lengths, discount=1.5)
            ref = trajectory_loss_ref(Ad, Bd, U, x0, ref_states, lengths=lengths, discount=1.5)
        elif loss == "terminal":
            res = trajloss.terminal_loss(system, cast(U), cast(x0), cast(target), lengths=lengths)
            ref = terminal_loss_ref(Ad, Bd, U, x0, target, lengths=lengths)
        else:
            res = trajloss.combined_loss(system, cast(U), cast(x0), cast(ref_controls),
                                         cast(ref_states), weight=0.3, terminal_weight=0.2,
                                         lengths=lengths)
            ref = combined_loss_ref(Ad, Bd, U, x0, ref_controls, ref_states, 0.3,
                                    terminal_weight=0.2, lengths=lengths)
        assert isinstance(res.value, float)
        check_value(res.value, ref["value"], dtype)
        check_grad(res.grad, ref["grad"], dtype)
        if loss != "control":
            check_grad(res.grad_x0, ref["grad_x0"], dtype)


# ==========================================================================
# padding: never read, zero gradient, denominator counts valid steps only
# ==========================================================================


def _pad(a, lengths, new_T, fill, rng, extra=0):
    """Copy of ``a`` (B, T+extra, ...) extended to (B, new_T+extra, ...) with
    every entry at time index >= lengths[b] + extra replaced by ``fill``."""
    shape = (a.shape[0], new_T + extra) + a.shape[2:]
    out = np.empty(shape, dtype=a.dtype)
    out[:, : a.shape[1]] = a
    for b in range(a.shape[0]):
        k = int(lengths[b]) + extra
        tail = out[b, k:]
        if fill == "huge":
            tail[...] = np.where(rng.random(tail.shape) < 0.5, -1.0, 1.0) * (
                1e300 if a.dtype == np.float64 else 3e38)
        elif fill == "garbage":
            tail[...] = rng.standard_normal(tail.shape) * 1e4
        elif fill == "nan":
            tail[...] = np.nan
        else:
            raise AssertionError(fill)
    return out


def _padding_case(rng, loss, dtype, pad, fill, include_initial=False):
    delta = 0.75
    system, Ad, Bd = make_system(rng)
    x0, U, ref_states = state_data(rng, Ad, Bd, dtype, delta=delta)
    ref_controls = (U.astype(np.float64) - kink_free(rng, U.shape, delta)).astype(dtype)
    lengths = np.array([T, 3, 1, 0])
    target = terminal_target_for(rng, Ad, Bd, x0, U, dtype, lengths=lengths, delta=delta)
    check_finite = fill != "nan"
    common = dict(lengths=lengths, penalty="huber", delta=delta, check_finite=check_finite)

    def run(U_, rc_, rs_):
        if loss == "control":
            return trajloss.control_loss(U_, rc_, discount=0.6, **common)
        if loss == "trajectory":
            return trajloss.trajectory_loss(system, U_, x0, rs_, discount=1.7,
                                            include_initial=include_initial, **common)
        if loss == "terminal":
            return trajloss.terminal_loss(system, U_, x0, target, **common)
        return trajloss.combined_loss(system, U_, x0, rc_, rs_, weight=0.5, terminal_weight=0.8,
                                      discount=0.6, include_initial=include_initial, **common)

    def reference():
        kw = dict(lengths=lengths, penalty="huber", delta=delta)
        if loss == "control":
            return control_loss_ref(U, ref_controls, discount=0.6, **kw)
        if loss == "trajectory":
            return trajectory_loss_ref(Ad, Bd, U, x0, ref_states, discount=1.7,
                                       include_initial=include_initial, **kw)
        if loss == "terminal":
            return terminal_loss_ref(Ad, Bd, U, x0, target, **kw)
        return combined_loss_ref(Ad, Bd, U, x0, ref_controls, ref_states, 0.5,
                                 terminal_weight=0.8, discount=0.6,
                                 include_initial=include_initial, **kw)

    new_T = T + pad
    U_p = _pad(U, lengths, new_T, fill, rng)
    rc_p = _pad(ref_controls, lengths, new_T, fill, rng)
    # states 0..lengths[b] are read (state K_b = lengths[b] is the last scored)
    rs_p = _pad(ref_states, lengths, new_T, fill, rng, extra=1)
    base = run(U, ref_controls, ref_states)
    padded = run(U_p, rc_p, rs_p)
    return base, padded, reference(), lengths, dtype


# include_initial only exists for the losses with a trajectory term
_PADDING_LOSSES = [("control", False), ("terminal", False), ("trajectory", False),
                   ("trajectory", True), ("combined", False), ("combined", True)]


@pytest.mark.parametrize("fill", ["huge", "garbage", "nan"])
@pytest.mark.parametrize("pad", [0, 1, 7])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss,include_initial", _PADDING_LOSSES)
def test_padding_invariance(rng, loss, dtype, pad, fill, include_initial):
    """Steps after each sequence's last valid step (inside T, plus ``pad``
    appended ones) filled with +-1e300 (3e38 in float32), large garbage or NaN
    (then check_finite=False): value and valid-step gradients unchanged and
    equal to the reference; padded steps get exactly zero gradient."""
    base, padded, ref, lengths, dtype = _padding_case(rng, loss, dtype, pad, fill,
                                                      include_initial)
    for res in (base, padded):
        check_value(res.value, ref["value"], dtype)
        assert np.isfinite(res.value)
        assert np.all(np.isfinite(res.grad))
    np.testing.assert_allclose(padded.value, base.value, rtol=1e-13 if dtype == np.float64 else 1e-6)
    for b in range(B):
        L = int(lengths[b])
        check_grad(padded.grad[b, :L], ref["grad"][b, :L], dtype)
        np.testing.assert_allclose(padded.grad[b, :L], base.grad[b, :L],
                                   rtol=1e-13 if dtype == np.float64 else 1e-6)
        # exactly zero on every padded step, in both
        assert np.all(padded.grad[b, L:] == 0), (b, padded.grad[b, L:])
        assert np.all(base.grad[b, L:] == 0), (b, base.grad[b, L:])
    if loss != "control":
        check_grad(padded.grad_x0, ref["grad_x0"], dtype)
        assert np.all(padded.grad_x0[3] == 0)  # the empty sequence


def test_padding_nan_is_not_read_when_check_finite(rng):
    """check_finite=True checks what the loss reads: NaN in padding neither
    raises nor changes a bit, NaN in a valid step raises naming pred."""
    pred, target = control_data(rng, np.float64)
    lengths = np.array([6, 3, 1, 2])
    clean = trajloss.control_loss(pred, target, lengths=lengths)
    padded = pred.copy()
    padded[1, 5] = np.nan
    res = trajloss.control_loss(padded, target, lengths=lengths)
    ref = control_loss_ref(pred, target, lengths=lengths)
    check_value(res.value, ref["value"], np.float64)
    assert res.value == clean.value and np.array_equal(res.grad, clean.grad)
    assert res.grad[1, 5, 0] == 0
    padded[1, 2] = np.nan  # a valid step of sequence 1
    with pytest.raises(ValueError, match=r"\bpred\b"):
        trajloss.control_loss(padded, target, lengths=lengths)


@pytest.mark.parametrize("loss", ["control", "trajectory"])
def test_denominator_counts_valid_steps_only(rng, loss):
    """Heavy padding (lengths ~1/3 of T): every valid step has error exactly 1,
    so the loss is 1 -- a mean that kept padded steps in the denominator would
    report ~0.33 (the 2-3x under-reporting of a widely used BC codebase)."""
    Bsz, Tsz = 3, 30
    lengths = np.array([10, 12, 8])
    n_valid = lengths.sum()
    if loss == "control":
        pred = rng.standard_normal((Bsz, Tsz, 2))
        target = pred + np.where(rng.random(pred.shape) < 0.5, -1.0, 1.0)  # |r| = 1
        res = trajloss.control_loss(pred, target, lengths=lengths)
    else:
        Ad, Bd = random_discrete(rng, 2, 1)
        system = trajloss.LinearSystem(Ad, Bd, dt=0.1)
        x0 = rng.standard_normal((Bsz, 2))
        U = rng.standard_normal((Bsz, Tsz, 1))
        X = ref_rollout(Ad, Bd, x0, U)
        ref_states = X + np.where(rng.random(X.shape) < 0.5, -1.0, 1.0)
        res = trajloss.trajectory_loss(system, U, x0, ref_states, lengths=lengths)
    np.testing.assert_allclose(res.value, 1.0, rtol=1e-12)
    padded_denominator = n_valid / (Bsz * Tsz)
    assert padded_denominator < 0.4
    assert abs(res.value - padded_denominator) > 0.5
    # with a discount the mean weight per sequence is still 1
    if loss == "control":
        res_g = trajloss.control_loss(pred, target, lengths=lengths, discount=0.8)
    else:
        res_g = trajloss.trajectory_loss(system, U, x0, ref_states, lengths=lengths, discount=0.8)
    np.testing.assert_allclose(res_g.value, 1.0, rtol=1e-12)


# ==========================================================================
# the reference itself (so that a reference bug cannot hide a package bug)
# ==========================================================================


@pytest.mark.parametrize("penalty", PENALTIES)
def test_reference_gradients_are_consistent(rng, penalty):
    Ad, Bd = random_discrete(rng, N, M)
    x0, U, ref_states = state_data(rng, Ad, Bd, np.float64)
    ref_controls = U - kink_free(rng, U.shape)
    kw = dict(lengths=np.array([6, 0, 3, 2]), discount=0.7, penalty=penalty,
              state_weights=np.array([1.0, 0.5, 2.0]), include_initial=True,
              terminal_weight=0.5)
    ref = combined_loss_ref(Ad, Bd, U, x0, ref_controls, ref_states, 0.4, **kw)
    f = lambda u: combined_loss_ref(Ad, Bd, u, x0, ref_controls, ref_states, 0.4, **kw)["value"]  # noqa: E731,E501
    np.testing.assert_allclose(ref["grad"], fd_grad(f, U), rtol=1e-6, atol=1e-9)
    f0 = lambda x: combined_loss_ref(Ad, Bd, U, x, ref_controls, ref_states, 0.4, **kw)["value"]  # noqa: E731,E501
    np.testing.assert_allclose(ref["grad_x0"], fd_grad(f0, x0), rtol=1e-6, atol=1e-9)
