"""Bad inputs to the losses and to time_weights: ValueError / TypeError whose
message names the offending argument; inputs never modified; nothing crashes."""

import numpy as np
import pytest

import trajloss
from conftest import assert_untouched, snapshot

BATCH, T, D, N, M = 3, 4, 2, 3, 2
LOSSES = ["control", "trajectory", "terminal", "combined"]


def name(*args):
    """Regex matching any of the argument names as a whole word."""
    return "|".join(rf"\b{a}\b" for a in args)


@pytest.fixture
def system():
    rng = np.random.default_rng(0)
    return trajloss.LinearSystem(rng.standard_normal((N, N)) * 0.3,
                                 rng.standard_normal((N, M)), dt=0.1)


def arrays(dtype=np.float64, batched=True):
    rng = np.random.default_rng(1)
    lead = (BATCH,) if batched else ()
    return dict(
        pred=rng.standard_normal(lead + (T, D)).astype(dtype),
        target=rng.standard_normal(lead + (T, D)).astype(dtype),
        controls=rng.standard_normal(lead + (T, M)).astype(dtype),
        x0=rng.standard_normal(lead + (N,)).astype(dtype),
        ref_controls=rng.standard_normal(lead + (T, M)).astype(dtype),
        ref_states=rng.standard_normal(lead + (T + 1, N)).astype(dtype),
        final=rng.standard_normal(lead + (N,)).astype(dtype),
    )


def run(loss, system, a, **kw):
    """Call one loss with the arrays of ``a`` (overridable) and options ``kw``."""
    if loss == "control":
        kw.pop("state_weights", None)
        return trajloss.control_loss(a["pred"], a["target"], **kw)
    if loss == "trajectory":
        kw.pop("feature_weights", None)
        return trajloss.trajectory_loss(system, a["controls"], a["x0"], a["ref_states"], **kw)
    if loss == "terminal":
        kw.pop("feature_weights", None)
        kw.pop("discount", None)
        return trajloss.terminal_loss(system, a["controls"], a["x0"], a["final"], **kw)
    kw.setdefault("weight", 0.5)
    return trajloss.combined_loss(system, a["controls"], a["x0"], a["ref_controls"],
                                  a["ref_states"], **kw)


def expect(exc, pattern, loss, system, a, **kw):
    snap = snapshot(*a.values(), *[v for v in kw.values() if isinstance(v, np.ndarray)])
    with pytest.raises(exc, match=pattern):
        run(loss, system, a, **kw)
    assert_untouched([*a.values(), *[v for v in kw.values() if isinstance(v, np.ndarray)]],
                     snap)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("batched", [True, False])
def test_good_inputs_work(system, loss, batched):
    """Sanity check of the fixtures used below."""
    res = run(loss, system, arrays(batched=batched))
    assert np.isfinite(res.value)


# ==========================================================================
# empty selection
# ==========================================================================


@pytest.mark.parametrize("loss", LOSSES)
def test_all_lengths_zero(system, loss):
    expect(ValueError, name("lengths"), loss, system, arrays(),
           lengths=np.zeros(BATCH, dtype=np.int64))


@pytest.mark.parametrize("loss", LOSSES)
def test_mask_all_false(system, loss):
    expect(ValueError, name("mask"), loss, system, arrays(), mask=np.zeros((BATCH, T), bool))


@pytest.mark.parametrize("loss", LOSSES)
def test_unbatched_length_zero(system, loss):
    expect(ValueError, name("lengths"), loss, system, arrays(batched=False), lengths=0)


@pytest.mark.parametrize("loss", LOSSES)
def test_unbatched_mask_all_false(system, loss):
    expect(ValueError, name("mask"), loss, system, arrays(batched=False),
           mask=np.zeros(T, bool))


@pytest.mark.parametrize("loss", LOSSES)
def test_empty_batch(system, loss):
    a = {k: v[:0] for k, v in arrays().items()}
    with pytest.raises(ValueError):
        run(loss, system, a)


def test_empty_batch_control_loss_message():
    with pytest.raises(ValueError, match=r"(?i)valid|empty|\bB\b|batch|pred"):
        trajloss.control_loss(np.zeros((0, T, D)), np.zeros((0, T, D)))


@pytest.mark.parametrize("loss", LOSSES)
def test_zero_steps(system, loss):
    """T = 0: no step at all."""
    a = arrays()
    a = dict(a, pred=a["pred"][:, :0], target=a["target"][:, :0],
             controls=a["controls"][:, :0], ref_controls=a["ref_controls"][:, :0],
             ref_states=a["ref_states"][:, :1])
    with pytest.raises(ValueError):
        run(loss, system, a)


# ==========================================================================
# lengths / mask
# ==========================================================================

BAD_LENGTHS = [
    ("too-big", np.array([T + 1, 1, 1])),
    ("negative", np.array([2, -1, 1])),
    ("too-short", np.array([2, 1])),
    ("too-long", np.array([2, 1, 1, 1])),
    ("rank2", np.array([[2, 1, 1]])),
    ("column", np.array([[2], [1], [1]])),
]


@pytest.mark.parametrize("lengths", [c[1] for c in BAD_LENGTHS], ids=[c[0] for c in BAD_LENGTHS])
@pytest.mark.parametrize("loss", LOSSES)
def test_bad_lengths(system, loss, lengths):
    expect(ValueError, name("lengths"), loss, system, arrays(), lengths=lengths)


@pytest.mark.parametrize("lengths", [np.array([2.0, 1.0, 1.0]), np.array([2.5, 1.0, 1.0]),
                                     np.array([1 + 0j, 1, 1]), np.array(["2", "1", "1"])],
                         ids=["float", "float-frac", "complex", "str"])
@pytest.mark.parametrize("loss", LOSSES)
def test_lengths_not_integer(system, loss, lengths):
    expect((TypeError, ValueError), name("lengths"), loss, system, arrays(), lengths=lengths)


@pytest.mark.parametrize("lengths", [T + 1, -1, 2.0, np.array([2])],
                         ids=["too-big", "negative", "float", "array"])
@pytest.mark.parametrize("loss", LOSSES)
def test_bad_lengths_unbatched(system, loss, lengths):
    expect((TypeError, ValueError), name("lengths"), loss, system, arrays(batched=False),
           lengths=lengths)


BAD_MASKS = [
    ("T-short", np.ones((BATCH, T - 1), bool)),
    ("T-long", np.ones((BATCH, T + 1), bool)),
    ("B-short", np.ones((BATCH - 1, T), bool)),
    ("B-long", np.ones((BATCH + 1, T), bool)),
    ("rank1", np.ones(T, bool)),
    ("rank3", np.ones((BATCH, T, 1), bool)),
    ("transposed", np.ones((T, BATCH), bool)),
]


@pytest.mark.parametrize("mask", [c[1] for c in BAD_MASKS], ids=[c[0] for c in BAD_MASKS])
@pytest.mark.parametrize("loss", LOSSES)
def test_bad_mask_shape(system, loss, mask):
    expect(ValueError, name("mask"), loss, system, arrays(), mask=mask)


@pytest.mark.parametrize("mask", [np.ones(T + 1, bool), np.ones((1, T), bool)],
                         ids=["T-long", "rank2"])
@pytest.mark.parametrize("loss", LOSSES)
def test_bad_mask_shape_unbatched(system, loss, mask):
    expect(ValueError, name("mask"), loss, system, arrays(batched=False), mask=mask)


@pytest.mark.parametrize("loss", LOSSES)
def test_lengths_and_mask_together(system, loss):
    expect(ValueError, name("lengths", "mask"), loss, system, arrays(),
           lengths=np.array([1, 2, 3]), mask=np.ones((BATCH, T), bool))


# ==========================================================================
# options
# ==========================================================================


@pytest.mark.parametrize("discount", [0.0, -0.5, -1.0, np.nan, -np.inf])
@pytest.mark.parametrize("loss", ["control", "trajectory", "combined"])
def test_bad_discount(system, loss, discount):
    expect(ValueError, name("discount"), loss, system, arrays(), discount=discount)


@pytest.mark.parametrize("discount", [[0.5], "half"])
@pytest.mark.parametrize("loss", ["control", "trajectory", "combined"])
def test_discount_wrong_type(system, loss, discount):
    expect((TypeError, ValueError), name("discount"), loss, system, arrays(), discount=discount)


@pytest.mark.parametrize("delta", [0.0, -1.0, np.nan])
@pytest.mark.parametrize("loss", LOSSES)
def test_bad_huber_delta(system, loss, delta):
    expect(ValueError, name("delta"), loss, system, arrays(), penalty="huber", delta=delta)


@pytest.mark.parametrize("penalty", ["foo", "", "l2", "huber ", "mae", "MSE_"])
@pytest.mark.parametrize("loss", LOSSES)
def test_unknown_penalty(system, loss, penalty):
    expect(ValueError, name("penalty"), loss, system, arrays(), penalty=penalty)


@pytest.mark.parametrize("penalty", [1, ["mse"]])
@pytest.mark.parametrize("loss", LOSSES)
def test_penalty_wrong_type(system, loss, penalty):
    expect((TypeError, ValueError), name("penalty"), loss, system, arrays(), penalty=penalty)


BAD_WEIGHTS = [
    ("short", lambda k: np.ones(k - 1)),
    ("long", lambda k: np.ones(k + 1)),
    ("rank2", lambda k: np.ones((1, k))),
    ("negative", lambda k: np.r_[np.ones(k - 1), -0.5]),
    ("nan", lambda k: np.r_[np.ones(k - 1), np.nan]),
    ("inf", lambda k: np.r_[np.ones(k - 1), np.inf]),
]


@pytest.mark.parametrize("make", [c[1] for c in BAD_WEIGHTS], ids=[c[0] for c in BAD_WEIGHTS])
@pytest.mark.parametrize("loss", ["control", "combined"])
def test_bad_feature_weights(system, loss, make):
    k = D if loss == "control" else M
    expect(ValueError, name("feature_weights"), loss, system, arrays(), feature_weights=make(k))


@pytest.mark.parametrize("make", [c[1] for c in BAD_WEIGHTS], ids=[c[0] for c in BAD_WEIGHTS])
@pytest.mark.parametrize("loss", ["trajectory", "terminal", "combined"])
def test_bad_state_weights(system, loss, make):
    expect(ValueError, name("state_weights"), loss, system, arrays(), state_weights=make(N))


@pytest.mark.parametrize("which", ["weight", "terminal_weight"])
@pytest.mark.parametrize("value", [-0.1, -1.0, np.nan, np.inf, -np.inf])
def test_bad_combined_weights(system, which, value):
    kw = {which: value}
    expect(ValueError, name(which), "combined", system, arrays(), **kw)


@pytest.mark.parametrize("which", ["weight", "terminal_weight"])
def test_combined_weight_wrong_type(system, which):
    expect((TypeError, ValueError), name(which), "combined", system, arrays(), **{which: None})


def test_combined_weight_is_required(system):
    a = arrays()
    with pytest.raises(TypeError):
        trajloss.combined_loss(system, a["controls"], a["x0"], a["ref_controls"], a["ref_states"])


def test_options_are_keyword_only(system):
    a = arrays()
    with pytest.raises(TypeError):
        trajloss.control_loss(a["pred"], a["target"], 0.5)
    with pytest.raises(TypeError):
        trajloss.trajectory_loss(system, a["controls"], a["x0"], a["ref_states"], True)
    with pytest.raises(TypeError):
        trajloss.terminal_loss(system, a["controls"], a["x0"], a["final"], None)
    with pytest.raises(TypeError):
        trajloss.combined_loss(system, a["controls"], a["x0"], a["ref_controls"],
                               a["ref_states"], 0.3)


@pytest.mark.parametrize("bad", [None, np.eye(N), "system"], ids=["None", "ndarray", "str"])
@pytest.mark.parametrize("loss", ["trajectory", "terminal", "combined"])
def test_not_a_system(loss, bad):
    with pytest.raises(TypeError, match="(?i)system"):
        run(loss, bad, arrays())


# ==========================================================================
# non-finite values
# ==========================================================================

WHERE = {
    "control": ["pred", "target"],
    "trajectory": ["controls", "x0", "ref_states"],
    "terminal": ["controls", "x0", "target"],
    "combined": ["controls", "x0", "ref_controls", "ref_states", "terminal_target"],
}
CASES_NONFINITE = [(loss, w) for loss, ws in WHERE.items() for w in ws]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("loss,where", CASES_NONFINITE, ids=[f"{c}-{w}" for c, w in CASES_NONFINITE])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("batched", [True, False])
def test_non_finite(system, loss, where, bad, dtype, batched):
    a = arrays(dtype, batched)
    kw = {}
    if where == "terminal_target":
        kw["terminal_target"] = a["final"].copy()
        arr = kw["terminal_target"]
    else:
        key = "final" if (loss == "terminal" and where == "target") else where
        arr = a[key]
    arr[(-1,) * arr.ndim] = bad  # the last entry: padding under lengths below
    expect(ValueError, name(where), loss, system, a, **kw)
    # in the padding of a shorter sequence it is never read, so never checked:
    # no error, and the bits of a finite value there
    if batched and where not in ("x0", "terminal_target", "target" if loss == "terminal" else ""):
        short = np.array([T, T, 1])
        padded = run(loss, system, a, lengths=short, **kw)
        arr[(-1,) * arr.ndim] = 0.25
        finite = run(loss, system, a, lengths=short, **kw)
        assert np.float64(padded.value).tobytes() == np.float64(finite.value).tobytes()
        assert padded.grad.tobytes() == finite.grad.tobytes()
        arr[(-1,) * arr.ndim] = bad
    # check_finite=False: no exception, the value propagates
    assert not np.isfinite(run(loss, system, a, check_finite=False, **kw).value)


# ==========================================================================
# shapes
# ==========================================================================


def _ctrl_cases():
    a = arrays()
    p, t = a["pred"], a["target"]
    u = arrays(batched=False)
    return [
        ("target-D", p, t[..., :1], name("pred", "target")),
        ("target-T", p, t[:, :-1], name("pred", "target")),
        ("target-B", p, t[:-1], name("pred", "target")),
        ("target-rank2", p, t[0], name("pred", "target")),
        ("pred-rank2-target-rank3", u["pred"], t, name("pred", "target")),
        ("pred-rank1", p[0, 0], t[0, 0], name("pred")),
        ("pred-rank4", p[..., None], t[..., None], name("pred")),
        ("D-zero", p[..., :0], t[..., :0], name("pred", "target", "D")),
    ]


@pytest.mark.parametrize("case", _ctrl_cases(), ids=lambda c: c[0])
def test_control_loss_bad_shapes(case):
    _, pred, target, pattern = case
    snap = snapshot(pred, target)
    with pytest.raises(ValueError, match=pattern):
        trajloss.control_loss(pred, target)
    assert_untouched([pred, target], snap)


def _state_cases():
    a = arrays()
    u = arrays(batched=False)
    U, x0, rs, rc, fin = a["controls"], a["x0"], a["ref_states"], a["ref_controls"], a["final"]
    return [
        # (id, controls, x0, ref_states, ref_controls, final, pattern, losses)
        ("ref_states-T", U, x0, rs[:, :-1], rc, fin, name("ref_states"), "trajectory combined"),
        ("ref_states-T+2", U, x0, np.concatenate([rs, rs[:, :1]], 1), rc, fin,
         name("ref_states"), "trajectory combined"),
        ("ref_states-n", U, x0, rs[..., :-1], rc, fin, name("ref_states"), "trajectory combined"),
        ("ref_states-B", U, x0, rs[:-1], rc, fin, name("ref_states", "controls", "x0"),
         "trajectory combined"),
        ("ref_states-rank2", U, x0, rs[0], rc, fin, name("ref_states"), "trajectory combined"),
        ("controls-m", U[..., :1], x0, rs, rc[..., :1], fin, name("controls"),
         "trajectory terminal combined"),
        ("x0-n", U, x0[:, :-1], rs, rc, fin, name("x0"), "trajectory terminal combined"),
        ("x0-B", U, x0[:-1], rs, rc, fin, name("x0", "controls"),
         "trajectory terminal combined"),
        ("x0-unbatched", U, u["x0"], rs, rc, fin, name("x0", "controls"),
         "trajectory terminal combined"),
        ("controls-unbatched", u["controls"], x0, rs, rc, fin, name("x0", "controls"),
         "trajectory terminal combined"),
        ("ref_controls-T", U, x0, rs, rc[:, :-1], fin, name("ref_controls"), "combined"),
        ("ref_controls-m", U, x0, rs, rc[..., :1], fin, name("ref_controls"), "combined"),
        ("ref_controls-B", U, x0, rs, rc[:-1], fin, name("ref_controls", "controls"),
         "combined"),
        ("target-n", U, x0, rs, rc, fin[:, :-1], name("target"), "terminal"),
        ("target-B", U, x0, rs, rc, fin[:-1], name("target"), "terminal"),
        ("target-rank3", U, x0, rs, rc, fin[:, None], name("target"), "terminal"),
        ("target-rank1", U, x0, rs, rc, fin[0], name("target"), "terminal"),
    ]


STATE_CASES = [(c, loss) for c in _state_cases() for loss in c[-1].split()]


@pytest.mark.parametrize("case,loss", STATE_CASES, ids=[f"{loss}-{c[0]}" for c, loss in STATE_CASES])
def test_state_losses_bad_shapes(system, case, loss):
    _, U, x0, rs, rc, fin, pattern, _ = case
    a = dict(arrays(), controls=U, x0=x0, ref_states=rs, ref_controls=rc, final=fin)
    expect(ValueError, pattern, loss, system, a)


@pytest.mark.parametrize("tt", [lambda f: f[:, :-1], lambda f: f[0], lambda f: f[:-1]],
                         ids=["n", "rank1", "B"])
def test_combined_bad_terminal_target(system, tt):
    a = arrays()
    expect(ValueError, name("terminal_target"), "combined", system, a,
           terminal_weight=1.0, terminal_target=tt(a["final"]))


# ==========================================================================
# dtypes
# ==========================================================================


@pytest.mark.parametrize("loss,where", CASES_NONFINITE[:-1],
                         ids=[f"{c}-{w}" for c, w in CASES_NONFINITE[:-1]])
def test_mixed_float_dtypes(system, loss, where):
    a = arrays()
    key = "final" if (loss == "terminal" and where == "target") else where
    a[key] = a[key].astype(np.float32)
    others = [w for w in WHERE[loss] if w != "terminal_target"]
    expect((TypeError, ValueError), name(*others), loss, system, a)


@pytest.mark.parametrize("dtype", [np.int64, np.complex128, bool, object])
@pytest.mark.parametrize("loss", LOSSES)
def test_non_float_arrays(system, loss, dtype):
    a = arrays()
    key = "pred" if loss == "control" else "controls"
    a[key] = np.ones(a[key].shape, dtype=dtype)
    expect((TypeError, ValueError), name(key), loss, system, a)


# ==========================================================================
# time_weights
# ==========================================================================


@pytest.mark.parametrize("discount", [0.0, -0.3, np.nan, -np.inf])
def test_time_weights_bad_discount(discount):
    with pytest.raises(ValueError, match=name("discount")):
        trajloss.time_weights(5, discount)


@pytest.mark.parametrize("T_", [-1, -10])
def test_time_weights_negative_T(T_):
    with pytest.raises(ValueError, match=name("T")):
        trajloss.time_weights(T_, 0.5)


@pytest.mark.parametrize("T_", [2.5, None])
def test_time_weights_T_wrong_type(T_):
    with pytest.raises((TypeError, ValueError), match=name("T")):
        trajloss.time_weights(T_, 0.5)


@pytest.mark.parametrize("lengths", [np.array([6, 1]), np.array([-1, 2]), np.array([[1, 2]]),
                                     np.array([1.0, 2.0])],
                         ids=["too-big", "negative", "rank2", "float"])
def test_time_weights_bad_lengths(lengths):
    with pytest.raises((TypeError, ValueError), match=name("lengths")):
        trajloss.time_weights(5, 0.5, lengths=lengths)


@pytest.mark.parametrize("mask", [np.ones((2, 4), bool), np.ones(6, bool),
                                  np.ones((2, 5, 1), bool)], ids=["T-short", "1d-long", "rank3"])
def test_time_weights_bad_mask(mask):
    with pytest.raises(ValueError, match=name("mask")):
        trajloss.time_weights(5, 0.5, mask=mask)


def test_time_weights_lengths_and_mask():
    with pytest.raises(ValueError, match=name("lengths", "mask")):
        trajloss.time_weights(5, 0.5, lengths=np.array([1, 2]), mask=np.ones((2, 5), bool))
