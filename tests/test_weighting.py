"""trajloss.weighting: Fixed, Normalized, Curriculum, Adaptive, Calibrated,
make(), and their use as the ``weight`` of combined_loss.

Every expected weight is written out in the test from the formula of DESIGN.md
/ seed 000 (or computed with plain NumPy); combined_loss is checked against a
NumPy evaluation of ``mean((U - U_ref)^2) + w * mean((X[1:] - X_ref[1:])^2)``
with the rollout of conftest.ref_rollout.
"""

import math

import numpy as np
import pytest

import trajloss
from trajloss import weighting
from conftest import ref_rollout

DT = 1.0 / 3.0


def di_matrices(dt=DT):
    """Exact ZOH discretisation of the double integrator (closed form)."""
    return np.array([[1.0, dt], [0.0, 1.0]]), np.array([[dt * dt / 2.0], [dt]])


def seed_curriculum(epoch):
    """Seed 000, approach 3, verbatim."""
    return 0.0 if epoch < 50 else min(1.0, (epoch - 50) / 100)


def ema_reference(values, momentum):
    """First value sets the EMA, then ema = m*ema + (1-m)*v.  Returns all EMAs."""
    out = []
    ema = None
    for v in values:
        ema = float(v) if ema is None else momentum * ema + (1.0 - momentum) * float(v)
        out.append(ema)
    return np.array(out)


class FakeTensor:
    """A stand-in for a 0-d torch tensor that requires grad: only float() works."""

    def __init__(self, v):
        self._v = v

    def __float__(self):
        return float(self._v)

    def __array__(self, *a, **k):  # pragma: no cover - must not be used
        raise AssertionError("Adaptive must read values with float(), not as arrays")


# --------------------------------------------------------------------------
# Base class / common interface
# --------------------------------------------------------------------------


def _all_strategies():
    cal = trajloss.Calibration(23.99, 80.87, 80.87 / 23.99, 23.99 / 80.87)
    return [
        weighting.Fixed(0.3),
        weighting.Normalized(2.0, 8.0, alpha=0.5),
        weighting.Curriculum(),
        weighting.Adaptive(),
        weighting.Calibrated(cal),
    ]


@pytest.mark.parametrize("strategy", _all_strategies(), ids=lambda s: type(s).__name__)
def test_every_strategy_is_a_weighting_strategy(strategy):
    assert isinstance(strategy, weighting.WeightingStrategy)
    for name in ("weight", "observe", "state_dict", "load_state_dict"):
        assert callable(getattr(strategy, name))
    assert isinstance(strategy.state_dict(), dict)


@pytest.mark.parametrize("strategy", [s for s in _all_strategies()
                                      if not isinstance(s, (weighting.Adaptive,))],
                         ids=lambda s: type(s).__name__)
def test_stateless_strategies_ignore_observations(strategy):
    before = strategy.weight(epoch=120)
    strategy.observe(5.0, 0.01)
    assert strategy.weight(epoch=120) == before
    assert strategy.weight(epoch=120, control=7.0, trajectory=1e-3) == before
    # state_dict / load_state_dict round trip keeps the weight
    strategy.load_state_dict(strategy.state_dict())
    assert strategy.weight(epoch=120) == before


# --------------------------------------------------------------------------
# Fixed
# --------------------------------------------------------------------------


@pytest.mark.parametrize("w", [0.0, 0.3, 1.0, 7, 1e6])
def test_fixed_is_constant(w):
    s = weighting.Fixed(w)
    for epoch in (None, 0, 1, 49, 50, 1000):
        assert s.weight(epoch=epoch) == float(w)
    assert isinstance(s.weight(), float)


@pytest.mark.parametrize("w", [-1, -1e-12, math.nan, math.inf, -math.inf])
def test_fixed_rejects_negative_or_non_finite(w):
    with pytest.raises(ValueError, match="(?i)weight"):
        weighting.Fixed(w)


# --------------------------------------------------------------------------
# Curriculum (seed approach 3)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("epoch", [0, 49, 50, 51, 100, 150, 1000])
def test_curriculum_seed_values(epoch):
    expected = seed_curriculum(epoch)
    explicit = weighting.Curriculum(start=50, ramp=100, final=1.0)
    default = weighting.Curriculum()
    assert explicit.weight(epoch=epoch) == pytest.approx(expected, rel=1e-15, abs=0)
    assert default.weight(epoch=epoch) == pytest.approx(expected, rel=1e-15, abs=0)


def test_curriculum_seed_values_by_hand():
    """The same values, written out (w = 0 before 50, linear to 1 at 150)."""
    s = weighting.Curriculum()
    table = {0: 0.0, 49: 0.0, 50: 0.0, 51: 0.01, 100: 0.5, 150: 1.0, 1000: 1.0}
    for epoch, w in table.items():
        assert s.weight(epoch=epoch) == pytest.approx(w, rel=1e-15, abs=0), epoch


def test_curriculum_general_parameters():
    start, ramp, final = 10, 40, 0.3
    s = weighting.Curriculum(start=start, ramp=ramp, final=final)
    for epoch in range(0, 80):
        expected = 0.0 if epoch < start else min(final, final * (epoch - start) / ramp)
        assert s.weight(epoch=epoch) == pytest.approx(expected, rel=1e-13, abs=1e-300)
    # monotone, never above final
    ws = [s.weight(epoch=e) for e in range(0, 200)]
    assert all(b >= a for a, b in zip(ws, ws[1:]))
    assert max(ws) == pytest.approx(final, rel=1e-15)


def test_curriculum_zero_ramp_is_a_step():
    s = weighting.Curriculum(start=5, ramp=0, final=0.7)
    assert [s.weight(epoch=e) for e in (0, 4)] == [0.0, 0.0]
    assert [s.weight(epoch=e) for e in (5, 6, 100)] == [0.7, 0.7, 0.7]


def test_curriculum_zero_start():
    s = weighting.Curriculum(start=0, ramp=4, final=2.0)
    assert [s.weight(epoch=e) for e in range(6)] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.0])


def test_curriculum_needs_an_epoch():
    with pytest.raises(ValueError, match="(?i)epoch"):
        weighting.Curriculum().weight()
    with pytest.raises(ValueError, match="(?i)epoch"):
        weighting.Curriculum().weight(epoch=None, control=1.0, trajectory=2.0)


@pytest.mark.parametrize("kwargs,name", [
    (dict(ramp=-1), "ramp"),
    (dict(start=-1), "start"),
    (dict(final=-0.5), "final"),
    (dict(final=math.nan), "final"),
    (dict(final=math.inf), "final"),
    (dict(ramp=math.inf), "ramp"),
    (dict(start=math.nan), "start"),
])
def test_curriculum_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"(?i){name}"):
        weighting.Curriculum(**kwargs)


# --------------------------------------------------------------------------
# Normalized (seed approach 2)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("cv,tv,alpha", [(23.99, 80.87, 1.0), (2.0, 8.0, 0.5), (1e-3, 5e2, 3.0),
                                         (4.0, 1.0, 0.0)])
def test_normalized_weight_and_scale(cv, tv, alpha):
    s = weighting.Normalized(cv, tv, alpha=alpha)
    assert s.weight() == pytest.approx(alpha * cv / tv, rel=1e-14, abs=0)
    assert s.scale == pytest.approx(1.0 / cv, rel=1e-14)
    # Seed approach 2: c/cv + alpha*t/tv == scale * (c + weight*t)
    c, t = 0.025, 0.084
    assert s.scale * (c + s.weight() * t) == pytest.approx(c / cv + alpha * t / tv, rel=1e-13)


def test_normalized_default_alpha_is_one():
    assert weighting.Normalized(3.0, 12.0).weight() == pytest.approx(0.25, rel=1e-15)


def test_normalized_from_arrays_matches_numpy(rng):
    controls = 2.5 * rng.standard_normal((40, 15, 1)) + 0.3
    states = 7.0 * rng.standard_normal((40, 16, 2)) - 1.0
    for alpha in (1.0, 0.5):
        s = weighting.Normalized.from_dataset(controls=controls, states=states, alpha=alpha)
        cv = float(np.mean((controls - controls.mean()) ** 2))
        tv = float(np.mean((states - states.mean()) ** 2))
        assert s.weight() == pytest.approx(alpha * cv / tv, rel=1e-12)
        assert s.scale == pytest.approx(1.0 / cv, rel=1e-12)
        assert s.weight() == pytest.approx(alpha * np.var(controls) / np.var(states), rel=1e-12)


def test_normalized_from_dataset_matches_numpy():
    ds = trajloss.make_dataset(trajloss.DoubleIntegrator(), 64, seed=11)
    s = weighting.Normalized.from_dataset(ds)
    cv = float(np.var(np.asarray(ds.controls, dtype=np.float64)))
    tv = float(np.var(np.asarray(ds.states, dtype=np.float64)))
    assert s.weight() == pytest.approx(cv / tv, rel=1e-12)
    assert s.scale == pytest.approx(1.0 / cv, rel=1e-12)
    s2 = weighting.Normalized.from_dataset(ds, alpha=0.25)
    assert s2.weight() == pytest.approx(0.25 * cv / tv, rel=1e-12)
    # same thing from the arrays
    s3 = weighting.Normalized.from_dataset(controls=ds.controls, states=ds.states)
    assert s3.weight() == pytest.approx(cv / tv, rel=1e-12)


@pytest.mark.parametrize("cv,tv,alpha", [(0.0, 1.0, 1.0), (1.0, 0.0, 1.0), (-1.0, 1.0, 1.0),
                                         (1.0, math.nan, 1.0), (math.inf, 1.0, 1.0),
                                         (1.0, 1.0, -0.1), (1.0, 1.0, math.nan)])
def test_normalized_bad_arguments(cv, tv, alpha):
    with pytest.raises(ValueError, match="(?i)var|alpha"):
        weighting.Normalized(cv, tv, alpha=alpha)


def test_normalized_from_constant_data_is_zero_variance():
    with pytest.raises(ValueError, match="(?i)var"):
        weighting.Normalized.from_dataset(controls=np.full((4, 5, 1), 2.0),
                                          states=np.arange(48.0).reshape(4, 6, 2))
    with pytest.raises(ValueError, match="(?i)var"):
        weighting.Normalized.from_dataset(controls=np.arange(20.0).reshape(4, 5, 1),
                                          states=np.zeros((4, 6, 2)))


def test_normalized_from_dataset_needs_data():
    with pytest.raises((ValueError, TypeError)):
        weighting.Normalized.from_dataset()
    with pytest.raises((ValueError, TypeError)):
        weighting.Normalized.from_dataset(controls=np.arange(20.0).reshape(4, 5, 1))


# --------------------------------------------------------------------------
# Adaptive (seed approach 4, damped)
# --------------------------------------------------------------------------


def test_adaptive_before_any_observation():
    assert weighting.Adaptive().weight() == 1.0
    assert weighting.Adaptive(initial=0.3).weight() == pytest.approx(0.3, rel=1e-15)
    assert weighting.Adaptive(initial=1e6).weight() == pytest.approx(1e3, rel=1e-15)
    assert weighting.Adaptive(initial=1e-6).weight() == pytest.approx(1e-3, rel=1e-15)
    assert weighting.Adaptive(initial=5.0, bounds=(0.5, 2.0)).weight() == pytest.approx(2.0)


@pytest.mark.parametrize("c,t", [(0.025, 0.084), (23.99, 80.87), (1.0, 1.0), (3.0, 0.5)])
@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9, 0.99])
def test_adaptive_constant_inputs(c, t, momentum):
    eps = 1e-8
    s = weighting.Adaptive(eps=eps, momentum=momentum)
    for _ in range(50):
        w = s.weight(control=c, trajectory=t)
        assert w == pytest.approx(c / (t + eps), rel=1e-12)
    assert s.weight() == pytest.approx(c / (t + eps), rel=1e-12)


def test_adaptive_first_observation_sets_the_average():
    """No warm-up bias: one observation already gives c/(t+eps)."""
    s = weighting.Adaptive(momentum=0.9, eps=1e-8)
    s.observe(0.025, 0.084)
    assert s.weight() == pytest.approx(0.025 / (0.084 + 1e-8), rel=1e-12)


def test_adaptive_converges_from_a_different_start():
    m, eps = 0.9, 1e-8
    s = weighting.Adaptive(momentum=m, eps=eps)
    s.observe(5.0, 1.0)  # initial statistics far away
    c, t = 0.025, 0.084
    for k in range(1, 301):
        w = s.weight(control=c, trajectory=t)
        ce = m ** k * 5.0 + (1 - m ** k) * c
        te = m ** k * 1.0 + (1 - m ** k) * t
        assert w == pytest.approx(min(max(ce / (te + eps), 1e-3), 1e3), rel=1e-10)
    assert w == pytest.approx(c / (t + eps), rel=1e-9)


def test_adaptive_epsilon_matters_for_tiny_trajectory():
    s = weighting.Adaptive(eps=1e-2, momentum=0.0, bounds=(1e-9, 1e9))
    s.observe(1.0, 0.0)
    assert s.weight() == pytest.approx(100.0, rel=1e-12)
    s.observe(0.5, 0.02)
    assert s.weight() == pytest.approx(0.5 / 0.03, rel=1e-12)


def _noisy_components(rng, N):
    c = np.clip(1.0 + 0.5 * rng.standard_normal(N), 0.05, None)
    t = 3.4 * np.clip(1.0 + 0.5 * rng.standard_normal(N), 0.05, None)
    return c, t


def test_adaptive_damps_noise(rng):
    N, m, eps = 600, 0.9, 1e-8
    c, t = _noisy_components(rng, N)
    s = weighting.Adaptive(momentum=m, eps=eps)
    weights = np.array([s.weight(control=ci, trajectory=ti) for ci, ti in zip(c, t)])
    # exactly the EMA ratio of the test's own EMAs
    expected = np.clip(ema_reference(c, m) / (ema_reference(t, m) + eps), 1e-3, 1e3)
    np.testing.assert_allclose(weights, expected, rtol=1e-10)
    burn = 50
    raw = c / t
    ratio = np.std(weights[burn:]) / np.std(raw[burn:])
    assert ratio < 0.3, ratio
    # and it tracks the right level: E[c]/E[t] ~ 1/3.4
    assert np.mean(weights[burn:]) == pytest.approx(np.mean(c) / np.mean(t), rel=0.1)
    assert np.all((weights >= 1e-3) & (weights <= 1e3))


def test_adaptive_stays_within_bounds(rng):
    lo, hi = 0.27, 0.33
    c, t = _noisy_components(rng, 400)
    s = weighting.Adaptive(momentum=0.5, bounds=(lo, hi))
    weights = np.array([s.weight(control=ci, trajectory=ti) for ci, ti in zip(c, t)])
    assert np.all(weights >= lo) and np.all(weights <= hi)
    # the bounds are active: both are hit, and values between them are the EMA ratio
    assert np.any(weights == lo) and np.any(weights == hi)
    expected = np.clip(ema_reference(c, 0.5) / (ema_reference(t, 0.5) + 1e-8), lo, hi)
    np.testing.assert_allclose(weights, expected, rtol=1e-10)
    # extreme inputs are clipped as well
    s2 = weighting.Adaptive(momentum=0.0, bounds=(lo, hi))
    assert s2.weight(control=1e6, trajectory=1e-6) == hi
    assert s2.weight(control=1e-9, trajectory=1e6) == lo


def test_adaptive_reads_values_with_float():
    s = weighting.Adaptive(momentum=0.5)
    s.observe(FakeTensor(2.0), FakeTensor(4.0))
    s.observe(np.array(1.0), np.float32(8.0))
    ce, te = 0.5 * 2.0 + 0.5 * 1.0, 0.5 * 4.0 + 0.5 * 8.0
    assert s.weight() == pytest.approx(ce / (te + 1e-8), rel=1e-12)
    sd = s.state_dict()
    assert type(sd["control"]) is float and type(sd["trajectory"]) is float


def test_adaptive_state_dict_values(rng):
    m = 0.8
    c, t = _noisy_components(rng, 17)
    s = weighting.Adaptive(momentum=m)
    for ci, ti in zip(c, t):
        s.observe(ci, ti)
    sd = s.state_dict()
    assert set(sd) >= {"control", "trajectory", "count"}
    assert sd["count"] == 17
    assert sd["control"] == pytest.approx(ema_reference(c, m)[-1], rel=1e-12)
    assert sd["trajectory"] == pytest.approx(ema_reference(t, m)[-1], rel=1e-12)


def test_adaptive_state_round_trip_continues_identically(rng):
    kwargs = dict(eps=1e-6, momentum=0.7, bounds=(1e-2, 1e2))
    c, t = _noisy_components(rng, 60)
    a = weighting.Adaptive(**kwargs)
    for ci, ti in zip(c[:30], t[:30]):
        a.observe(ci, ti)
    sd = a.state_dict()
    b = weighting.Adaptive(**kwargs)
    assert b.weight() != a.weight()
    b.load_state_dict(sd)
    assert b.state_dict() == sd
    assert b.weight() == a.weight()
    for ci, ti in zip(c[30:], t[30:]):
        assert b.weight(control=ci, trajectory=ti) == a.weight(control=ci, trajectory=ti)
    assert b.state_dict() == a.state_dict()
    assert a.state_dict()["count"] == 60


def test_adaptive_state_dict_before_observation_round_trips():
    a = weighting.Adaptive(initial=0.5)
    b = weighting.Adaptive(initial=0.5)
    b.load_state_dict(a.state_dict())
    assert b.weight() == a.weight() == 0.5
    assert b.state_dict()["count"] == 0
    b.observe(1.0, 2.0)  # first observation after restoring "nothing" sets the EMA
    assert b.weight() == pytest.approx(1.0 / (2.0 + 1e-8), rel=1e-12)
    b.observe(3.0, 2.0)
    assert b.weight() == pytest.approx((0.9 * 1 + 0.1 * 3) / (2.0 + 1e-8), rel=1e-12)


@pytest.mark.parametrize("kwargs,name", [
    (dict(momentum=1.0), "momentum"),
    (dict(momentum=-0.1), "momentum"),
    (dict(momentum=1.5), "momentum"),
    (dict(momentum=math.nan), "momentum"),
    (dict(eps=0.0), "eps"),
    (dict(eps=-1e-8), "eps"),
    (dict(bounds=(10.0, 1.0)), "bounds"),
    (dict(bounds=(-1.0, 1.0)), "bounds"),
])
def test_adaptive_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"(?i){name}"):
        weighting.Adaptive(**kwargs)


def test_adaptive_momentum_zero_is_allowed():
    s = weighting.Adaptive(momentum=0.0)
    s.observe(1.0, 2.0)
    s.observe(3.0, 4.0)
    assert s.weight() == pytest.approx(3.0 / (4.0 + 1e-8), rel=1e-12)


# --------------------------------------------------------------------------
# Calibrated
# --------------------------------------------------------------------------


def test_calibrated_uses_recommended_weight():
    cal = trajloss.Calibration(23.99, 80.87, 80.87 / 23.99, 23.99 / 80.87)
    assert weighting.Calibrated(cal).weight() == pytest.approx(23.99 / 80.87, rel=1e-15)
    assert weighting.Calibrated(cal, scale=2.0).weight(epoch=3) == pytest.approx(
        2 * 23.99 / 80.87, rel=1e-15)
    # seed 000: weight ~ 0.3
    assert weighting.Calibrated(cal).weight() == pytest.approx(0.3, abs=0.01)


def test_calibrated_from_dataset_matches_numpy():
    """The 'zero' baseline (U = 0) makes the calibration a closed NumPy expression:
    control = mean(U_ref^2), trajectory = mean over all T+1 states of
    (rollout(x0, 0) - X_ref)^2, weight = control / trajectory."""
    system = trajloss.DoubleIntegrator()
    ds = trajloss.make_dataset(system, 12, seed=5)
    Ad, Bd = di_matrices()
    U = np.zeros_like(ds.controls)
    c = float(np.mean((U - ds.controls) ** 2))
    X = ref_rollout(Ad, Bd, ds.x0, U)
    t = float(np.mean((X - ds.states) ** 2))
    s = weighting.Calibrated.from_dataset(system, ds, baseline="zero")
    assert s.weight() == pytest.approx(c / t, rel=1e-10)


# --------------------------------------------------------------------------
# make()
# --------------------------------------------------------------------------


def test_make_by_name():
    s = weighting.make("fixed", weight=0.3)
    assert isinstance(s, weighting.Fixed) and s.weight() == 0.3
    s = weighting.make("normalized", control_var=2.0, trajectory_var=8.0, alpha=0.5)
    assert isinstance(s, weighting.Normalized) and s.weight() == pytest.approx(0.125)
    s = weighting.make("curriculum", start=10, ramp=20, final=0.5)
    assert isinstance(s, weighting.Curriculum)
    assert s.weight(epoch=20) == pytest.approx(0.25)
    s = weighting.make("curriculum")
    assert [s.weight(epoch=e) for e in (49, 100, 150)] == pytest.approx([0.0, 0.5, 1.0])
    s = weighting.make("adaptive", momentum=0.5, bounds=(0.1, 10.0))
    assert isinstance(s, weighting.Adaptive) and s.weight() == 1.0
    cal = trajloss.Calibration(2.0, 8.0, 4.0, 0.25)
    s = weighting.make("calibrated", calibration=cal)
    assert isinstance(s, weighting.Calibrated) and s.weight() == pytest.approx(0.25)


def test_make_passes_instances_and_numbers():
    a = weighting.Adaptive()
    assert weighting.make(a) is a
    f = weighting.make(0.3)
    assert isinstance(f, weighting.Fixed) and f.weight() == 0.3
    f = weighting.make(2)
    assert isinstance(f, weighting.Fixed) and f.weight() == 2.0


@pytest.mark.parametrize("bad", ["bogus", "Fixed ", "", None, [0.3]])
def test_make_unknown_names(bad):
    with pytest.raises(ValueError) as info:
        weighting.make(bad)
    msg = str(info.value)
    for name in ("fixed", "normalized", "curriculum", "adaptive", "calibrated"):
        assert name in msg, msg


def test_make_negative_number_is_rejected():
    with pytest.raises(ValueError):
        weighting.make(-1.0)


# --------------------------------------------------------------------------
# combined_loss with a strategy
# --------------------------------------------------------------------------


@pytest.fixture
def problem(rng):
    system = trajloss.DoubleIntegrator(dt=DT)
    B, T = 5, 7
    x0 = rng.uniform(-3, 3, size=(B, 2))
    ref_U = rng.standard_normal((B, T, 1))
    Ad, Bd = di_matrices()
    ref_X = ref_rollout(Ad, Bd, x0, ref_U)
    U1 = ref_U + 0.4 * rng.standard_normal((B, T, 1))
    U2 = ref_U + 1.3 * rng.standard_normal((B, T, 1))
    U3 = ref_U + 0.2 * rng.standard_normal((B, T, 1))
    return system, x0, ref_U, ref_X, [U1, U2, U3]


def numpy_terms(x0, U, ref_U, ref_X):
    """Raw control and trajectory terms (mse, states 1..T, no weights)."""
    Ad, Bd = di_matrices()
    X = ref_rollout(Ad, Bd, x0, U)
    c = float(np.mean((U - ref_U) ** 2))
    t = float(np.mean((X[:, 1:] - ref_X[:, 1:]) ** 2))
    return c, t


def _check_call(system, x0, U, ref_U, ref_X, strategy, w_expected, epoch):
    r = trajloss.combined_loss(system, U, x0, ref_U, ref_X, weight=strategy, epoch=epoch)
    c, t = numpy_terms(x0, U, ref_U, ref_X)
    assert r.components.weight == pytest.approx(w_expected, rel=1e-12, abs=1e-300)
    assert r.components.control == pytest.approx(c, rel=1e-12)
    assert r.components.trajectory == pytest.approx(t, rel=1e-12)
    assert r.value == pytest.approx(c + w_expected * t, rel=1e-12)
    # identical to the call with the plain number
    r_num = trajloss.combined_loss(system, U, x0, ref_U, ref_X, weight=w_expected)
    assert r.value == pytest.approx(r_num.value, rel=1e-13)
    np.testing.assert_allclose(r.grad, r_num.grad, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(r.grad_x0, r_num.grad_x0, rtol=1e-12, atol=1e-14)
    return r, c, t


@pytest.mark.parametrize("make_strategy,expected_of_epoch", [
    (lambda: weighting.Fixed(0.3), lambda e: 0.3),
    (lambda: weighting.Normalized(23.99, 80.87, alpha=0.8), lambda e: 0.8 * 23.99 / 80.87),
    (lambda: weighting.Curriculum(), seed_curriculum),
    (lambda: weighting.Curriculum(start=2, ramp=3, final=0.6),
     lambda e: 0.0 if e < 2 else min(0.6, 0.6 * (e - 2) / 3)),
    (lambda: weighting.Calibrated(trajloss.Calibration(2.0, 8.0, 4.0, 0.25), scale=1.2),
     lambda e: 0.3),
    (lambda: weighting.make(0.7), lambda e: 0.7),
], ids=["fixed", "normalized", "curriculum-seed", "curriculum", "calibrated", "make-number"])
def test_combined_loss_with_stateless_strategy(problem, make_strategy, expected_of_epoch):
    system, x0, ref_U, ref_X, Us = problem
    strategy = make_strategy()
    for epoch, U in zip((0, 3, 60, 100, 149, 400), Us + Us):
        _check_call(system, x0, U, ref_U, ref_X, strategy, expected_of_epoch(epoch), epoch)


def test_combined_loss_curriculum_needs_epoch(problem):
    system, x0, ref_U, ref_X, Us = problem
    with pytest.raises(ValueError, match="(?i)epoch"):
        trajloss.combined_loss(system, Us[0], x0, ref_U, ref_X, weight=weighting.Curriculum())


def test_combined_loss_adaptive_observes_raw_terms(problem):
    system, x0, ref_U, ref_X, Us = problem
    m, eps = 0.9, 1e-8
    s = weighting.Adaptive(momentum=m, eps=eps)
    # call 1: weight from the initial value; afterwards the EMAs are the raw terms
    _, c1, t1 = _check_call(system, x0, Us[0], ref_U, ref_X, s, 1.0, None)
    sd = s.state_dict()
    assert sd["count"] == 1
    assert sd["control"] == pytest.approx(c1, rel=1e-12)
    assert sd["trajectory"] == pytest.approx(t1, rel=1e-12)
    # call 2: weight from call 1's statistics (detached), then observe the raw terms
    w2 = min(max(c1 / (t1 + eps), 1e-3), 1e3)
    _, c2, t2 = _check_call(system, x0, Us[1], ref_U, ref_X, s, w2, None)
    ce, te = m * c1 + (1 - m) * c2, m * t1 + (1 - m) * t2
    sd = s.state_dict()
    assert sd["count"] == 2
    assert sd["control"] == pytest.approx(ce, rel=1e-12)
    assert sd["trajectory"] == pytest.approx(te, rel=1e-12)
    # call 3 uses the smoothed ratio
    w3 = min(max(ce / (te + eps), 1e-3), 1e3)
    _check_call(system, x0, Us[2], ref_U, ref_X, s, w3, 7)
    assert s.state_dict()["count"] == 3


def test_combined_loss_adaptive_observes_unweighted_values(problem):
    """The observed trajectory value is the raw term, not weight*trajectory."""
    system, x0, ref_U, ref_X, Us = problem
    s = weighting.Adaptive(momentum=0.0, initial=0.01)
    r = trajloss.combined_loss(system, Us[1], x0, ref_U, ref_X, weight=s)
    c, t = numpy_terms(x0, Us[1], ref_U, ref_X)
    assert r.components.weight == pytest.approx(0.01)
    assert s.state_dict()["trajectory"] == pytest.approx(t, rel=1e-12)
    assert s.weight() == pytest.approx(min(max(c / (t + 1e-8), 1e-3), 1e3), rel=1e-12)
