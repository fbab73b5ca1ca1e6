"""Bad input: every error names the offending argument; nothing crashes;
inputs are never modified, even when the call fails."""

import numpy as np
import pytest

import trajloss
from conftest import assert_untouched, snapshot

N, M, BATCH, T = 3, 2, 2, 4


def name(*args):
    """Regex matching any of the argument names as a whole word."""
    return "|".join(rf"\b{a}\b" for a in args)


@pytest.fixture
def system(rng):
    Ad = rng.standard_normal((N, N)) * 0.3
    Bd = rng.standard_normal((N, M))
    return trajloss.LinearSystem(Ad, Bd, dt=0.1)


def good(dtype=np.float64, batched=True):
    rng = np.random.default_rng(0)
    if batched:
        x0 = rng.standard_normal((BATCH, N))
        U = rng.standard_normal((BATCH, T, M))
        G = rng.standard_normal((BATCH, T + 1, N))
    else:
        x0 = rng.standard_normal(N)
        U = rng.standard_normal((T, M))
        G = rng.standard_normal((T + 1, N))
    return x0.astype(dtype), U.astype(dtype), G.astype(dtype)


def sanity_good_inputs_work(system):
    x0, U, G = good()
    trajloss.rollout(system, x0, U)
    trajloss.rollout_vjp(system, x0, U, G)


# ==========================================================================
# LinearSystem(Ad, Bd, dt)
# ==========================================================================

_I2 = np.eye(2)
_B2 = np.ones((2, 1))


@pytest.mark.parametrize(
    "Ad,Bd,pattern",
    [
        (np.ones((2, 3)), np.ones((2, 1)), name("Ad")),  # not square
        (np.ones((3, 2)), np.ones((3, 1)), name("Ad")),  # not square
        (np.ones(2), np.ones((2, 1)), name("Ad")),  # rank 1
        # rank 3 is one system per sample now: rank 4 is not a LinearSystem
        (np.ones((2, 2, 2, 2)), np.ones((2, 1)), name("Ad")),  # rank 4
        (np.float64(1.0), np.ones((1, 1)), name("Ad")),  # rank 0
        (_I2, np.ones((3, 1)), name("Bd")),  # Bd rows != n
        (_I2, np.ones((1, 1)), name("Bd")),  # Bd rows != n
        (_I2, np.ones(2), name("Bd")),  # rank 1
        (_I2, np.ones((2, 1, 1)), name("Bd")),  # rank 3
        (np.zeros((0, 0)), np.zeros((0, 1)), name("Ad", "n")),  # n == 0
        (_I2, np.zeros((2, 0)), name("Bd", "m")),  # m == 0
        (np.array([[1.0, np.nan], [0.0, 1.0]]), _B2, name("Ad")),
        (np.array([[1.0, np.inf], [0.0, 1.0]]), _B2, name("Ad")),
        (_I2, np.array([[np.nan], [1.0]]), name("Bd")),
        (_I2, np.array([[1.0], [-np.inf]]), name("Bd")),
    ],
    ids=[
        "Ad-2x3", "Ad-3x2", "Ad-rank1", "Ad-rank4", "Ad-rank0", "Bd-rows3", "Bd-rows1",
        "Bd-rank1", "Bd-rank3", "n0", "m0", "Ad-nan", "Ad-inf", "Bd-nan", "Bd-inf",
    ],
)
def test_linear_system_bad_matrices(Ad, Bd, pattern):
    snap = snapshot(Ad, Bd)
    with pytest.raises(ValueError, match=pattern):
        trajloss.LinearSystem(Ad, Bd)
    assert_untouched([Ad, Bd], snap)


@pytest.mark.parametrize(
    "Ad,Bd,pattern",
    [
        (np.eye(2, dtype=complex), _B2, name("Ad")),
        (_I2, np.ones((2, 1), dtype=complex), name("Bd")),
        ([[1j, 0], [0, 1]], _B2, name("Ad")),
        ([["a", "b"], ["c", "d"]], _B2, name("Ad")),
        (_I2, [["x"], ["y"]], name("Bd")),
        (None, _B2, name("Ad")),
        (_I2, None, name("Bd")),
        (np.array([[object(), 1], [2, 3]], dtype=object), _B2, name("Ad")),
    ],
    ids=["Ad-complex", "Bd-complex", "Ad-complex-list", "Ad-str", "Bd-str", "Ad-None",
         "Bd-None", "Ad-object"],
)
def test_linear_system_non_real_matrices(Ad, Bd, pattern):
    with pytest.raises((TypeError, ValueError), match=pattern):
        trajloss.LinearSystem(Ad, Bd)


@pytest.mark.parametrize("dt", [0.0, -0.0, -1.0, -1e-300, np.nan, np.inf, -np.inf])
def test_linear_system_bad_dt(dt):
    with pytest.raises(ValueError, match=name("dt")):
        trajloss.LinearSystem(_I2, _B2, dt=dt)


@pytest.mark.parametrize("dt", ["0.1", [0.1], 1j])
def test_linear_system_dt_wrong_type(dt):
    with pytest.raises((TypeError, ValueError), match=name("dt")):
        trajloss.LinearSystem(_I2, _B2, dt=dt)


# ==========================================================================
# LinearSystem.from_continuous / DoubleIntegrator
# ==========================================================================

_A2 = np.array([[0.0, 1.0], [0.0, 0.0]])


@pytest.mark.parametrize(
    "A,B,pattern",
    [
        (np.ones((2, 3)), _B2, name("A")),
        (np.ones(2), _B2, name("A")),
        (np.ones((2, 2, 2, 2)), _B2, name("A")),  # rank 3 is a batch of systems
        (_A2, np.ones((3, 1)), name("B")),
        (_A2, np.ones(2), name("B")),
        (np.zeros((0, 0)), np.zeros((0, 1)), name("A", "n")),
        (_A2, np.zeros((2, 0)), name("B", "m")),
        (np.array([[0.0, np.nan], [0.0, 0.0]]), _B2, name("A")),
        (np.array([[0.0, np.inf], [0.0, 0.0]]), _B2, name("A")),
        (_A2, np.array([[np.nan], [1.0]]), name("B")),
        (_A2, np.array([[np.inf], [1.0]]), name("B")),
    ],
    ids=["A-2x3", "A-rank1", "A-rank4", "B-rows", "B-rank1", "n0", "m0", "A-nan", "A-inf",
         "B-nan", "B-inf"],
)
@pytest.mark.parametrize("method", ["zoh", "euler", "rk4"])
def test_from_continuous_bad_matrices(A, B, pattern, method):
    snap = snapshot(A, B)
    with pytest.raises(ValueError, match=pattern):
        trajloss.LinearSystem.from_continuous(A, B, 0.1, method=method)
    assert_untouched([A, B], snap)


@pytest.mark.parametrize("A,B,pattern", [
    (np.eye(2, dtype=complex), _B2, name("A")),
    ([["a", "b"], ["c", "d"]], _B2, name("A")),
    (_A2, [[1j], [0]], name("B")),
])
def test_from_continuous_non_real_matrices(A, B, pattern):
    with pytest.raises((TypeError, ValueError), match=pattern):
        trajloss.LinearSystem.from_continuous(A, B, 0.1)


@pytest.mark.parametrize("dt", [0.0, -0.5, np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("method", ["zoh", "euler", "rk4"])
def test_from_continuous_bad_dt(dt, method):
    with pytest.raises(ValueError, match=name("dt")):
        trajloss.LinearSystem.from_continuous(_A2, _B2, dt, method=method)


@pytest.mark.parametrize("dt", [None, "0.1"])
def test_from_continuous_dt_wrong_type(dt):
    with pytest.raises((TypeError, ValueError), match=name("dt")):
        trajloss.LinearSystem.from_continuous(_A2, _B2, dt)


@pytest.mark.parametrize("method", ["foo", "", "exact", "zoh "])
def test_from_continuous_unknown_method(method):
    with pytest.raises(ValueError, match=name("method")):
        trajloss.LinearSystem.from_continuous(_A2, _B2, 0.1, method=method)


@pytest.mark.parametrize("method", [None, 1, ["zoh"]])
def test_from_continuous_method_wrong_type(method):
    with pytest.raises((TypeError, ValueError), match=name("method")):
        trajloss.LinearSystem.from_continuous(_A2, _B2, 0.1, method=method)


@pytest.mark.parametrize("dt", [0.0, -1.0, np.nan, np.inf])
def test_double_integrator_bad_dt(dt):
    with pytest.raises(ValueError, match=name("dt")):
        trajloss.DoubleIntegrator(dt=dt)


@pytest.mark.parametrize("method", ["bogus", ""])
def test_double_integrator_bad_method(method):
    with pytest.raises(ValueError, match=name("method")):
        trajloss.DoubleIntegrator(dt=0.1, method=method)


# ==========================================================================
# rollout / rollout_vjp: the system argument
# ==========================================================================


class _DuckSystem:
    def __init__(self):
        self.Ad = np.eye(N)
        self.Bd = np.ones((N, M))
        self.n, self.m, self.dt = N, M, 0.1


@pytest.mark.parametrize(
    "bad",
    [None, (np.eye(N), np.ones((N, M))), np.eye(N), _DuckSystem(), "DoubleIntegrator",
     trajloss.LinearSystem],
    ids=["None", "tuple", "ndarray", "duck", "str", "class"],
)
def test_system_not_a_linear_system(bad):
    x0, U, G = good()
    with pytest.raises(TypeError, match="(?i)system"):
        trajloss.rollout(bad, x0, U)
    with pytest.raises(TypeError, match="(?i)system"):
        trajloss.rollout_vjp(bad, x0, U, G)


def test_check_finite_is_keyword_only(system):
    x0, U, G = good()
    with pytest.raises(TypeError):
        trajloss.rollout(system, x0, U, False)
    with pytest.raises(TypeError):
        trajloss.rollout_vjp(system, x0, U, G, False)


# ==========================================================================
# rollout / rollout_vjp: shapes
# ==========================================================================

# (id, x0, controls, grad_states, pattern)
_x0, _U, _G = good()
_x0u, _Uu, _Gu = good(batched=False)

SHAPE_CASES = [
    ("x0-rank0", np.float64(1.0), _Uu, _Gu, name("x0")),
    ("x0-rank3", _x0[:, :, None], _U, _G, name("x0")),
    ("x0-n-too-big", np.ones((BATCH, N + 1)), _U, _G, name("x0")),
    ("x0-n-too-small", np.ones((BATCH, N - 1)), _U, _G, name("x0")),
    ("x0-unbatched-n", np.ones(N + 1), _Uu, _Gu, name("x0")),
    ("controls-rank1", _x0u, np.ones(M), _Gu, name("controls")),
    ("controls-rank4", _x0, _U[..., None], _G, name("controls")),
    ("controls-m-too-big", _x0, np.ones((BATCH, T, M + 1)), _G, name("controls")),
    ("controls-m-too-small", _x0, np.ones((BATCH, T, M - 1)), _G, name("controls")),
    ("controls-unbatched-m", _x0u, np.ones((T, M + 1)), _Gu, name("controls")),
    ("batch-mismatch", np.ones((BATCH + 1, N)), _U, _G, name("x0", "controls", "grad_states")),
    ("batch-mismatch-0", np.ones((0, N)), _U, _G, name("x0", "controls", "grad_states")),
    ("x0-unbatched-controls-batched", _x0u, _U, _G, name("x0", "controls", "grad_states")),
    ("x0-batched-controls-unbatched", _x0, _Uu, _Gu, name("x0", "controls", "grad_states")),
]


@pytest.mark.parametrize("x0,U,G,pattern", [c[1:] for c in SHAPE_CASES],
                         ids=[c[0] for c in SHAPE_CASES])
def test_rollout_bad_shapes(system, x0, U, G, pattern):
    snap = snapshot(x0, U)
    with pytest.raises(ValueError, match=pattern):
        trajloss.rollout(system, x0, U)
    assert_untouched([x0, U], snap)


@pytest.mark.parametrize("x0,U,G,pattern", [c[1:] for c in SHAPE_CASES],
                         ids=[c[0] for c in SHAPE_CASES])
def test_vjp_bad_shapes(system, x0, U, G, pattern):
    snap = snapshot(x0, U, G)
    with pytest.raises(ValueError, match=pattern):
        trajloss.rollout_vjp(system, x0, U, G)
    assert_untouched([x0, U, G], snap)


GRAD_CASES = [
    ("rank2-for-batched", _x0, _U, _G[0]),
    ("rank4", _x0, _U, _G[..., None]),
    ("rank1", _x0u, _Uu, _Gu[0]),
    ("rank3-for-unbatched", _x0u, _Uu, _G),
    ("T-too-small", _x0, _U, _G[:, :T]),
    ("T-too-big", _x0, _U, np.ones((BATCH, T + 2, N))),
    ("T-equals-controls-T", _x0, _U, np.ones((BATCH, T, N))),
    ("n-too-big", _x0, _U, np.ones((BATCH, T + 1, N + 1))),
    ("n-is-m", _x0, _U, np.ones((BATCH, T + 1, M))),
    ("batch-too-big", _x0, _U, np.ones((BATCH + 1, T + 1, N))),
    ("batch-zero", _x0, _U, np.ones((0, T + 1, N))),
    ("unbatched-T", _x0u, _Uu, np.ones((T, N))),
    ("unbatched-n", _x0u, _Uu, np.ones((T + 1, N + 1))),
]


@pytest.mark.parametrize("x0,U,G", [c[1:] for c in GRAD_CASES], ids=[c[0] for c in GRAD_CASES])
def test_vjp_bad_grad_states_shape(system, x0, U, G):
    snap = snapshot(x0, U, G)
    with pytest.raises(ValueError, match=name("grad_states")):
        trajloss.rollout_vjp(system, x0, U, G)
    assert_untouched([x0, U, G], snap)


# ==========================================================================
# rollout / rollout_vjp: non-finite values
# ==========================================================================


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["x0", "controls"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("batched", [True, False])
def test_rollout_non_finite(system, bad, where, dtype, batched):
    x0, U, _ = good(dtype, batched)
    target = x0 if where == "x0" else U
    target[(-1,) * target.ndim] = bad
    snap = snapshot(x0, U)
    with pytest.raises(ValueError, match=name(where)):
        trajloss.rollout(system, x0, U)
    assert_untouched([x0, U], snap)
    # opt-out: no exception, the bad value propagates
    X = trajloss.rollout(system, x0, U, check_finite=False)
    assert X.dtype == dtype
    assert not np.isfinite(X).all()
    assert_untouched([x0, U], snap)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["x0", "controls", "grad_states"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("batched", [True, False])
def test_vjp_non_finite(system, bad, where, dtype, batched):
    x0, U, G = good(dtype, batched)
    target = {"x0": x0, "controls": U, "grad_states": G}[where]
    target[(0,) * target.ndim] = bad
    snap = snapshot(x0, U, G)
    with pytest.raises(ValueError, match=name(where)):
        trajloss.rollout_vjp(system, x0, U, G)
    assert_untouched([x0, U, G], snap)
    gU, gx = trajloss.rollout_vjp(system, x0, U, G, check_finite=False)
    assert gU.dtype == dtype and gx.dtype == dtype
    if where == "grad_states":
        # grad_states[..., 0, 0] only reaches grad_x0 (states[0] == x0)
        assert not np.isfinite(gx).all()
    assert_untouched([x0, U, G], snap)


# ==========================================================================
# rollout / rollout_vjp: dtypes
# ==========================================================================

BAD_DTYPES = [np.int64, np.int32, np.bool_, np.complex128, np.complex64, object, np.float16,
              np.uint8]


@pytest.mark.parametrize("bad_dtype", BAD_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("where", ["x0", "controls"])
def test_rollout_non_float_arrays(system, bad_dtype, where):
    x0, U, _ = good()
    args = {"x0": x0, "controls": U}
    args[where] = args[where].astype(bad_dtype)
    snap = snapshot(*args.values())
    with pytest.raises(TypeError, match=name(where)):
        trajloss.rollout(system, args["x0"], args["controls"])
    assert_untouched(list(args.values()), snap)


@pytest.mark.parametrize("bad_dtype", BAD_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("where", ["x0", "controls", "grad_states"])
def test_vjp_non_float_arrays(system, bad_dtype, where):
    x0, U, G = good()
    args = {"x0": x0, "controls": U, "grad_states": G}
    args[where] = args[where].astype(bad_dtype)
    with pytest.raises(TypeError, match=name(where)):
        trajloss.rollout_vjp(system, args["x0"], args["controls"], args["grad_states"])


@pytest.mark.parametrize("dt_x0,dt_U", [(np.float32, np.float64), (np.float64, np.float32)])
def test_rollout_mixed_float_dtypes(system, dt_x0, dt_U):
    x0, U, _ = good()
    with pytest.raises(TypeError, match=name("x0", "controls")):
        trajloss.rollout(system, x0.astype(dt_x0), U.astype(dt_U))


@pytest.mark.parametrize(
    "dts,pattern",
    [
        ((np.float32, np.float64, np.float64), name("x0", "controls")),
        ((np.float64, np.float32, np.float64), name("x0", "controls")),
        ((np.float64, np.float64, np.float32), name("grad_states")),
        ((np.float32, np.float32, np.float64), name("grad_states")),
    ],
)
def test_vjp_mixed_float_dtypes(system, dts, pattern):
    x0, U, G = good()
    with pytest.raises(TypeError, match=pattern):
        trajloss.rollout_vjp(system, x0.astype(dts[0]), U.astype(dts[1]), G.astype(dts[2]))


@pytest.mark.parametrize("where", ["x0", "controls"])
@pytest.mark.parametrize("kind", ["complex", "str", "ragged", "None"])
def test_rollout_bad_lists(system, where, kind):
    x0, U, _ = good()
    args = {"x0": x0, "controls": U}
    a = args[where]
    if kind == "complex":
        bad = (a + 1j).tolist()
    elif kind == "str":
        bad = np.full(a.shape, "a").tolist()
    elif kind == "ragged":
        bad = a.tolist()
        bad[0] = bad[0][:-1]
    else:
        bad = None
    args[where] = bad
    with pytest.raises((TypeError, ValueError), match=name(where)):
        trajloss.rollout(system, args["x0"], args["controls"])


@pytest.mark.parametrize("kind", ["complex", "str", "None"])
def test_vjp_bad_grad_states_list(system, kind):
    x0, U, G = good()
    bad = {"complex": (G + 1j).tolist(), "str": np.full(G.shape, "g").tolist(), "None": None}[kind]
    with pytest.raises((TypeError, ValueError), match=name("grad_states")):
        trajloss.rollout_vjp(system, x0, U, bad)


def test_good_inputs_still_work_after_errors(system):
    # a failed call leaves no broken state behind
    for _ in range(3):
        with pytest.raises(ValueError):
            trajloss.rollout(system, np.ones((BATCH, N + 1)), _U)
        with pytest.raises(TypeError):
            trajloss.rollout(system, _x0.astype(np.int64), _U)
    sanity_good_inputs_work(system)
