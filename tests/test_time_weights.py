"""trajloss.time_weights against the plain-loop reference and closed forms;
seed 004's geometric re-weighting (with its bugs fixed)."""

import math

import numpy as np
import pytest

import trajloss
from conftest import relayout
from loss_reference import control_loss_ref, kink_free, time_weights_ref


def mean_over_valid(w, valid):
    return math.fsum(w[valid]) / int(valid.sum())


# ==========================================================================
# shapes and the formula
# ==========================================================================


@pytest.mark.parametrize("T", [1, 2, 5, 17])
@pytest.mark.parametrize("discount", [None, 0.1, 0.375, 0.9, 1.0, 1.1, 1.5, 2.0])
def test_unmasked_vs_reference(T, discount):
    w = trajloss.time_weights(T, discount)
    assert isinstance(w, np.ndarray)
    assert w.dtype == np.float64
    assert w.shape == (T,)
    np.testing.assert_allclose(w, time_weights_ref(T, discount), rtol=1e-12, atol=0)
    np.testing.assert_allclose(w.mean(), 1.0, rtol=1e-13)


@pytest.mark.parametrize("discount", [0.2, 0.375, 0.8, 1.25, 1.9])
@pytest.mark.parametrize("T", [1, 3, 12])
def test_closed_form_geometric(T, discount):
    """A full sequence: w_t = g^t T (1 - g) / (1 - g^T)."""
    g = discount
    t = np.arange(T)
    expected = g ** t * T * (1 - g) / (1 - g ** T)
    np.testing.assert_allclose(trajloss.time_weights(T, g), expected, rtol=1e-12)


@pytest.mark.parametrize("discount", [None, 0.5, 1.0, 1.7])
def test_lengths_vs_reference(rng, discount):
    T = 9
    lengths = np.array([9, 0, 1, 4, 7, 0, 2])
    w = trajloss.time_weights(T, discount, lengths=lengths)
    assert w.shape == (len(lengths), T) and w.dtype == np.float64
    np.testing.assert_allclose(w, time_weights_ref(T, discount, lengths=lengths), rtol=1e-12,
                               atol=0)
    for b, L in enumerate(lengths):
        if L == 0:
            assert np.all(w[b] == 0)
        else:
            assert np.all(w[b, L:] == 0)
            assert np.all(w[b, :L] > 0)
            np.testing.assert_allclose(w[b, :L].mean(), 1.0, rtol=1e-13)


@pytest.mark.parametrize("discount", [None, 0.3, 1.0, 1.6])
def test_mask_2d_vs_reference(rng, discount):
    T = 8
    mask = rng.random((6, T)) < 0.5
    mask[0] = True
    mask[1] = False
    mask[2] = np.arange(T) % 3 == 2  # gaps
    w = trajloss.time_weights(T, discount, mask=mask)
    assert w.shape == (6, T) and w.dtype == np.float64
    np.testing.assert_allclose(w, time_weights_ref(T, discount, mask=mask), rtol=1e-12, atol=0)
    assert np.all(w[~mask] == 0)
    assert np.all(w[1] == 0)
    for b in range(6):
        if mask[b].any():
            np.testing.assert_allclose(mean_over_valid(w[b], mask[b]), 1.0, rtol=1e-13)


@pytest.mark.parametrize("discount", [None, 0.375, 1.4])
def test_mask_1d(discount):
    T = 7
    mask = np.array([False, True, True, False, True, False, False])
    w = trajloss.time_weights(T, discount, mask=mask)
    assert w.shape == (T,) and w.dtype == np.float64
    np.testing.assert_allclose(w, time_weights_ref(T, discount, mask=mask), rtol=1e-12, atol=0)
    assert np.all(w[~mask] == 0)
    np.testing.assert_allclose(w[mask].mean(), 1.0, rtol=1e-13)
    # the weights depend on the time index, not on the rank among valid steps:
    # valid t = 1, 2, 4 -> g^1, g^2, g^4 normalised
    g = 1.0 if discount is None else discount
    p = np.array([g, g ** 2, g ** 4])
    np.testing.assert_allclose(w[mask], 3 * p / p.sum(), rtol=1e-12)


def test_mask_all_false_1d_is_zero():
    w = trajloss.time_weights(5, 0.5, mask=np.zeros(5, dtype=bool))
    assert w.shape == (5,)
    assert np.all(w == 0)


def test_lengths_equal_mask(rng):
    T = 10
    lengths = np.array([10, 3, 0, 7])
    mask = np.arange(T)[None, :] < lengths[:, None]
    for g in (0.4, 1.0, 1.3):
        np.testing.assert_allclose(trajloss.time_weights(T, g, lengths=lengths),
                                   trajloss.time_weights(T, g, mask=mask), rtol=1e-14, atol=0)


@pytest.mark.parametrize("kind", ["c", "f", "noncontig", "reversed"])
def test_layouts(rng, kind):
    T = 6
    lengths = np.array([6, 2, 0, 5])
    mask = rng.random((4, T)) < 0.5
    w = trajloss.time_weights(T, 0.7, lengths=relayout(lengths, kind))
    np.testing.assert_allclose(w, time_weights_ref(T, 0.7, lengths=lengths), rtol=1e-12, atol=0)
    w = trajloss.time_weights(T, 1.3, mask=relayout(mask, kind))
    np.testing.assert_allclose(w, time_weights_ref(T, 1.3, mask=mask), rtol=1e-12, atol=0)


def test_inputs_not_modified(rng):
    lengths = np.array([3, 1, 0])
    mask = rng.random((3, 4)) < 0.5
    lc, mc = lengths.copy(), mask.copy()
    trajloss.time_weights(4, 0.5, lengths=lengths)
    trajloss.time_weights(4, 0.5, mask=mask)
    np.testing.assert_array_equal(lengths, lc)
    np.testing.assert_array_equal(mask, mc)


# ==========================================================================
# qualitative properties
# ==========================================================================


@pytest.mark.parametrize("T", [1, 2, 10, 100, 1000])
def test_uniform_is_exactly_one(T):
    for discount in (None, 1.0, 1):
        w = trajloss.time_weights(T, discount)
        assert np.all(w == 1.0), w
    lengths = np.array([T, 0, max(1, T // 3)])
    w = trajloss.time_weights(T, 1.0, lengths=lengths)
    for b, L in enumerate(lengths):
        assert np.all(w[b, :L] == 1.0) and np.all(w[b, L:] == 0.0)


@pytest.mark.parametrize("discount", [0.05, 0.375, 0.9, 0.999])
def test_discount_below_one_decreasing(discount):
    w = trajloss.time_weights(30, discount)
    assert np.all(np.diff(w) < 0)
    assert w[0] > 1.0 > w[-1]


@pytest.mark.parametrize("discount", [1.001, 1.1, 1.5, 2.0])
def test_discount_above_one_increasing(discount):
    w = trajloss.time_weights(30, discount)
    assert np.all(np.diff(w) > 0)
    assert w[0] < 1.0 < w[-1]


def test_weight_ratio_is_discount():
    for g in (0.375, 1.5):
        w = trajloss.time_weights(12, g)
        np.testing.assert_allclose(w[1:] / w[:-1], g, rtol=1e-13)


# ==========================================================================
# stability at long horizons
# ==========================================================================


@pytest.mark.parametrize("discount", [0.375, 1.5, 1 - 1e-12, 1 + 1e-12, 0.01, 100.0])
def test_stable_long_horizon(discount):
    T = 10000
    w = trajloss.time_weights(T, discount)
    assert w.shape == (T,)
    assert np.all(np.isfinite(w)), "non-finite weights"
    assert np.all(w >= 0)
    np.testing.assert_allclose(math.fsum(w) / T, 1.0, rtol=1e-10)
    ref = time_weights_ref(T, discount)
    # relative accuracy where the weights are representable; tiny weights
    # (underflowing towards the subnormal range) only to an absolute floor
    np.testing.assert_allclose(w, ref, rtol=1e-9, atol=1e-250)
    if discount < 1:
        assert np.all(np.diff(w) <= 0)
        assert w[0] > 0
    else:
        assert np.all(np.diff(w) >= 0)
        assert w[-1] > 0
    if discount == 0.375:
        # w_0 = T (1 - g) / (1 - g^T) = T (1 - g) to double precision
        np.testing.assert_allclose(w[0], T * (1 - 0.375), rtol=1e-12)
    if discount == 1.5:
        # w_{T-1} = T (1 - 1/g) / (1 - g^-T)
        np.testing.assert_allclose(w[-1], T * (1 - 1 / 1.5), rtol=1e-12)
    if abs(discount - 1) < 1e-9:
        np.testing.assert_allclose(w, 1.0, rtol=1e-7)


@pytest.mark.parametrize("discount", [0.375, 1.5, 1 - 1e-12])
def test_stable_long_horizon_with_lengths(discount):
    T = 10000
    lengths = np.array([T, 0, 1, 5000, 9999])
    w = trajloss.time_weights(T, discount, lengths=lengths)
    assert np.all(np.isfinite(w)) and np.all(w >= 0)
    for b, L in enumerate(lengths):
        if L == 0:
            assert np.all(w[b] == 0)
            continue
        assert np.all(w[b, L:] == 0)
        np.testing.assert_allclose(math.fsum(w[b, :L]) / L, 1.0, rtol=1e-10)
    np.testing.assert_allclose(w, time_weights_ref(T, discount, lengths=lengths), rtol=1e-9,
                               atol=1e-250)


def test_stable_long_horizon_mask_late_start():
    """gamma < 1 with the first valid step late (g^t underflows) and gamma > 1
    with many steps (g^t overflows): still finite, mean 1."""
    T = 10000
    mask = np.zeros((2, T), dtype=bool)
    mask[0, 9000:] = True
    mask[1, [5000, 9999]] = True
    for g in (0.375, 1.5):
        w = trajloss.time_weights(T, g, mask=mask)
        assert np.all(np.isfinite(w))
        for b in range(2):
            np.testing.assert_allclose(mean_over_valid(w[b], mask[b]), 1.0, rtol=1e-10)
        np.testing.assert_allclose(w, time_weights_ref(T, g, mask=mask), rtol=1e-9, atol=1e-250)


# ==========================================================================
# seed 004: geometric re-weighting of a behaviour-cloning loss
# ==========================================================================


def seed004_loss_fixed(predicted_actions, actual_actions, loss_exponent):
    """The seed's snippet with its bugs fixed: the error is averaged over the
    features (not over time), the names are consistent, and the weights are
    g^t * T (1 - g) / (1 - g^T) whose mean is 1."""
    episode_length = predicted_actions.shape[0]
    error = ((predicted_actions - actual_actions) ** 2).reshape(episode_length, -1)
    per_step_error = np.mean(error, axis=-1)  # mean over features
    loss_scaling = episode_length * (1 - loss_exponent) / (1 - loss_exponent ** episode_length)
    times = np.arange(episode_length)
    weight_sequence = loss_exponent ** times * loss_scaling
    return np.mean(weight_sequence * per_step_error), weight_sequence


@pytest.mark.parametrize("T", [1, 5, 20, 60])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_seed004_case(rng, T, dtype):
    g = 0.375
    w = trajloss.time_weights(T, g)
    t = np.arange(T)
    np.testing.assert_allclose(w, g ** t * T * (1 - g) / (1 - g ** T), rtol=1e-12)
    np.testing.assert_allclose(w.mean(), 1.0, rtol=1e-13)

    D = 6  # e.g. a 6-dof arm
    pred = rng.standard_normal((T, D)).astype(dtype)
    target = rng.standard_normal((T, D)).astype(dtype)
    expected, weights = seed004_loss_fixed(pred.astype(np.float64), target.astype(np.float64), g)
    np.testing.assert_allclose(weights, w, rtol=1e-12)
    res = trajloss.control_loss(pred, target, discount=g)
    assert isinstance(res.value, float)
    np.testing.assert_allclose(res.value, expected, rtol=1e-12 if dtype == np.float64 else 1e-5)
    # gradient: d/dpred of mean_t(w_t mean_d r^2) = 2 w_t r / (T D)
    r = pred.astype(np.float64) - target.astype(np.float64)
    g_expected = 2 * weights[:, None] * r / (T * D)
    assert res.grad.dtype == dtype and res.grad.shape == (T, D)
    np.testing.assert_allclose(res.grad, g_expected, rtol=1e-12 if dtype == np.float64 else 2e-5,
                               atol=1e-300)


def test_seed004_emphasises_early_steps(rng):
    """The same error late in the sequence costs less than early on."""
    T, D = 10, 3
    target = np.zeros((T, D))
    early = target.copy()
    early[0] = 1.0
    late = target.copy()
    late[-1] = 1.0
    v_early = trajloss.control_loss(early, target, discount=0.375).value
    v_late = trajloss.control_loss(late, target, discount=0.375).value
    assert v_early > 1000 * v_late
    np.testing.assert_allclose(v_early / v_late, 0.375 ** -(T - 1), rtol=1e-12)


def test_seed004_length_agnostic(rng):
    """Batched with lengths: each sequence's weights are normalised for its own
    length (mean 1), so a uniform error of 1 gives a loss of 1 at any length."""
    T, D = 12, 2
    lengths = np.array([12, 3, 7, 1])
    pred = np.zeros((4, T, D))
    target = pred + np.where(rng.random(pred.shape) < 0.5, -1.0, 1.0)
    res = trajloss.control_loss(pred, target, discount=0.375, lengths=lengths)
    np.testing.assert_allclose(res.value, 1.0, rtol=1e-12)
    ref = control_loss_ref(pred, target, discount=0.375, lengths=lengths)
    np.testing.assert_allclose(res.grad, ref["grad"], rtol=1e-12, atol=1e-300)
    # and with kink-free random residuals, against the reference
    target2 = pred - kink_free(rng, pred.shape)
    res2 = trajloss.control_loss(pred, target2, discount=0.375, lengths=lengths)
    np.testing.assert_allclose(
        res2.value,
        control_loss_ref(pred, target2, discount=0.375, lengths=lengths)["value"], rtol=1e-12)


def test_absurd_T_is_a_value_error_naming_T():
    import trajloss
    with pytest.raises(ValueError, match=r"\bT\b"):
        trajloss.time_weights(2**70, 0.5)
    with pytest.raises(ValueError, match=r"\bT\b"):
        trajloss.time_weights(-1, 0.5)
