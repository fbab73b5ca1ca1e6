"""Property-based tests of every public numeric function against independent
NumPy references, over random shapes, memory layouts and dtypes.

This extends ``test_loss_properties.py`` (the four losses, float64,
contiguous arrays, with finite differences, batch permutations and padding)
to what it does not cover:

* the functions it does not test: ``rollout``, ``rollout_vjp``,
  ``final_state_error``, ``success_rate``, ``min_energy(method="exact")``;
* float32 as well as float64 (one dtype per call; the core computes in
  float64 and rounds once, so float32 outputs are checked to a few float32
  ulps of the float64 reference of the same inputs, and loss values -- float64
  sums -- to float64 precision);
* every array argument in its own random layout: C or Fortran order, a
  step-2 view into a larger buffer, a negative stride, a transposed copy, a
  misaligned buffer, a zero-stride broadcast (the reference then sees the
  broadcast values), read-only;
* unbatched inputs, and B 1..6, T 1..12, n 1..5, m 1..4.

References: ``conftest.ref_rollout`` (explicit loops), ``loss_reference``
(the loss formulas as loops, adjoint by an explicit loop),
``reference_helpers.min_norm_controls`` (pseudo-inverse by SVD).
"""
import math

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import trajloss as tl
from conftest import random_discrete, ref_rollout, relayout, unaligned
from loss_reference import (PENALTIES, adjoint_loop, combined_loss_ref, control_loss_ref,
                            default_terminal_target, kink_free, terminal_loss_ref,
                            time_weights_ref, trajectory_loss_ref, valid_steps)
from reference_helpers import controllability_matrix, min_norm_controls

SETTINGS = settings(max_examples=80, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

LAYOUT_KINDS = ["c", "f", "noncontig", "reversed", "transposed", "unaligned", "zerostride",
                "readonly"]


def layout(a, kind):
    """``a`` in another memory layout (zerostride changes the values: every batch
    entry becomes the first one -- callers build references from the result)."""
    a = np.asarray(a)
    if a.ndim == 0:
        return a.copy()
    if kind in ("c", "f", "noncontig", "reversed"):
        return relayout(a, kind)
    if kind == "transposed":
        return np.ascontiguousarray(a.transpose()).transpose()
    if kind == "unaligned":
        return unaligned(a)
    if kind == "zerostride":
        return np.broadcast_to(a[:1], a.shape)
    if kind == "readonly":
        out = a.copy()
        out.setflags(write=False)
        return out
    raise AssertionError(kind)


def f64(a):
    return np.array(a, dtype=np.float64)


def check_float(actual, expected, dtype, scale=None, rtol64=1e-11):
    """float64: rtol64; float32: the core rounds a float64 result once, so each
    element is within a few float32 ulps of itself (plus cancellation slack)."""
    actual = np.asarray(actual)
    expected = f64(expected)
    assert actual.dtype == dtype, (actual.dtype, dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if scale is None:
        scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    if dtype == np.float64:
        np.testing.assert_allclose(actual, expected, rtol=rtol64, atol=rtol64 * scale)
    else:
        # below float32's smallest subnormal a value rounds to 0
        np.testing.assert_allclose(actual.astype(np.float64), expected, rtol=4e-7,
                                   atol=max(1e-12 * scale, 2.0 ** -149))


def f32_rollout_rtol(T):
    """float32 rollout losses compute the states, residuals and adjoints in
    float32 (Ad and Bd rounded to float32 too) and only sum in float64, so
    they agree with the float64 reference to float32's precision, a few ulps
    a step over the horizon -- not to the last bit of a rounded float64."""
    return 32 * (T + 1) * float(np.finfo(np.float32).eps)


def check_float32_rollout(res, ref, T, sizes=()):
    """Each gradient to float32 precision of the quantities it is made of,
    not of its own size: a residual x - ref computed in float32 is off by a
    few ulps of x, and a combined gradient adds terms that may cancel.
    sizes: (weight, reference) pairs whose gradients have those sizes -- the
    same loss with zero references (residuals as large as the states) and
    each term of a combined loss on its own."""
    tol = f32_rollout_rtol(T)
    np.testing.assert_allclose(res.value, ref["value"], rtol=tol, atol=1e-300)
    for key in ("grad", "grad_x0"):
        got, want = getattr(res, key), ref[key]
        assert got.dtype == np.float32 and got.shape == np.shape(want)
        size = lambda g: float(np.max(np.abs(g), initial=0.0))  # noqa: E731
        scale = max(size(want), sum(w * size(r.get(key, 0.0)) for w, r in sizes), 1e-30)
        np.testing.assert_allclose(got.astype(np.float64), want, rtol=tol, atol=tol * scale)


# ==========================================================================
# strategies
# ==========================================================================


@st.composite
def problems(draw, max_B=6, max_T=12, max_n=5, max_m=4, allow_unbatched=True):
    batched = draw(st.booleans()) if allow_unbatched else True
    return dict(
        B=draw(st.integers(1, max_B)) if batched else None,
        T=draw(st.integers(1, max_T)),
        n=draw(st.integers(1, max_n)),
        m=draw(st.integers(1, max_m)),
        dtype=draw(st.sampled_from([np.float64, np.float32])),
        seed=draw(st.integers(0, 2 ** 32 - 1)),
        layouts=draw(st.lists(st.sampled_from(LAYOUT_KINDS), min_size=8, max_size=8)),
    )


discounts = st.one_of(st.none(), st.just(1.0),
                      st.floats(0.05, 2.0, allow_nan=False, allow_infinity=False))


def selection(draw, B, T):
    """lengths / mask / nothing for a batched problem (at least one valid step),
    each in a random integer dtype / layout."""
    kind = draw(st.sampled_from(["none", "lengths", "mask"]))
    if kind == "lengths":
        L = draw(st.lists(st.integers(0, T), min_size=B, max_size=B).filter(any))
        dt = draw(st.sampled_from([np.int64, np.int32, np.uint8, np.int16]))
        arr = np.array(L, dtype=dt)
        return {"lengths": layout(arr, draw(st.sampled_from(LAYOUT_KINDS[:6])))}, \
            valid_steps(B, T, lengths=L)
    if kind == "mask":
        rows = draw(st.lists(st.lists(st.booleans(), min_size=T, max_size=T), min_size=B,
                             max_size=B).filter(lambda r: any(map(any, r))))
        mask = np.array(rows, dtype=bool)
        as_int = draw(st.booleans())
        arr = mask.astype(np.int8) if as_int else mask
        return {"mask": layout(arr, draw(st.sampled_from(LAYOUT_KINDS[:6])))}, mask
    return {}, np.ones((B, T), bool)


def make(p):
    """System and arrays of a problem, float64 masters and laid-out call arguments."""
    rng = np.random.default_rng(p["seed"])
    n, m, T, B = p["n"], p["m"], p["T"], p["B"]
    Ad, Bd = random_discrete(rng, n, m)
    lead = () if B is None else (B,)
    raw = dict(x0=rng.standard_normal(lead + (n,)), U=rng.standard_normal(lead + (T, m)),
               G=rng.standard_normal(lead + (T + 1, n)), xf=rng.standard_normal(lead + (n,)),
               R=rng.standard_normal(lead + (T, m)), RS=rng.standard_normal(lead + (T + 1, n)),
               tgt=rng.standard_normal(lead + (n,)), TT=rng.standard_normal(lead + (n,)))
    args, ref = {}, {}
    for (k, v), kind in zip(raw.items(), p["layouts"]):
        if B is None and kind == "zerostride":
            kind = "c"
        a = layout(v.astype(p["dtype"]), kind)
        args[k] = a
        ref[k] = f64(a)  # the values the call sees (float32-rounded, broadcast)
    return tl.LinearSystem(Ad, Bd), Ad, Bd, args, ref, rng


# ==========================================================================
# rollout and its adjoint
# ==========================================================================


@SETTINGS
@given(problems())
def test_rollout_matches_loop(p):
    system, Ad, Bd, a, r, _ = make(p)
    X = tl.rollout(system, a["x0"], a["U"])
    expected = ref_rollout(Ad, Bd, r["x0"], r["U"])
    check_float(X, expected, p["dtype"])
    assert np.array_equal(X[..., 0, :], a["x0"])  # states[..., 0, :] is x0, exactly


@SETTINGS
@given(problems())
def test_rollout_vjp_matches_adjoint_loop(p):
    system, Ad, Bd, a, r, _ = make(p)
    gU, gx = tl.rollout_vjp(system, a["x0"], a["U"], a["G"])
    G = r["G"] if p["B"] is not None else r["G"][None]
    eU, ex = adjoint_loop(Ad, Bd, G)
    if p["B"] is None:
        eU, ex = eU[0], ex[0]
    check_float(gU, eU, p["dtype"])
    check_float(gx, ex, p["dtype"])
    # <G, J(dx0, dU)> == <gx, dx0> + <gU, dU> for the rollout's linear map J (float64)
    if p["dtype"] == np.float64:
        rng = np.random.default_rng(p["seed"] + 1)
        dx, dU = rng.standard_normal(np.shape(a["x0"])), rng.standard_normal(np.shape(a["U"]))
        lhs = np.sum(r["G"] * ref_rollout(Ad, Bd, dx, dU))
        rhs = np.sum(gx * dx) + np.sum(gU * dU)
        assert math.isclose(lhs, rhs, rel_tol=1e-9, abs_tol=1e-9 * (abs(lhs) + 1))


# ==========================================================================
# losses: dtypes, layouts, unbatched, bigger shapes
# ==========================================================================


@st.composite
def loss_problems(draw):
    p = draw(problems())
    sel, valid = ({}, None) if p["B"] is None else selection(draw, p["B"], p["T"])
    if p["B"] is None:  # unbatched: an int length or a (T,) mask, or nothing
        kind = draw(st.sampled_from(["none", "lengths", "mask"]))
        if kind == "lengths":
            sel = {"lengths": draw(st.integers(1, p["T"]))}
        elif kind == "mask":
            row = draw(st.lists(st.booleans(), min_size=p["T"], max_size=p["T"]).filter(any))
            sel = {"mask": np.array(row)}
    p.update(sel=sel, discount=draw(discounts), penalty=draw(st.sampled_from(PENALTIES)),
             delta=draw(st.floats(0.25, 4.0)), include_initial=draw(st.booleans()),
             weights=draw(st.booleans()), weight=draw(st.floats(0.0, 3.0)),
             terminal_weight=draw(st.floats(0.0, 3.0)))
    return p


def _ref_sel(p):
    """The selection as the references take it (plain values)."""
    out = {}
    for k, v in p["sel"].items():
        out[k] = int(v) if np.ndim(v) == 0 else np.array(v)
    return out


def _kink_free_refs(p, Ad, Bd, r, rng, dtype):
    """References placed |r| away from the penalties' kinks (0 and delta), so
    float32 rounding of the inputs cannot flip a branch; rounded to ``dtype``."""
    X = ref_rollout(Ad, Bd, r["x0"], r["U"])
    RS = (X - kink_free(rng, X.shape, p["delta"])).astype(dtype)
    R = (r["U"] - kink_free(rng, r["U"].shape, p["delta"])).astype(dtype)
    fake = X - kink_free(rng, X.shape, p["delta"])
    TT = default_terminal_target(fake, **_ref_sel(p)).astype(dtype)
    return R, RS, TT


@SETTINGS
@given(loss_problems())
def test_losses_any_layout_and_dtype(p):
    system, Ad, Bd, a, r, rng = make(p)
    dtype = p["dtype"]
    R, RS, TT = _kink_free_refs(p, Ad, Bd, r, rng, dtype)
    R, RS, TT = (layout(x, k) if p["B"] is not None or k != "zerostride" else x
                 for x, k in zip((R, RS, TT), p["layouts"][4:7]))
    if "zerostride" in p["layouts"][4:7] and p["B"] is not None:
        # a broadcast reference is no longer kink-free relative to every sequence
        assume(p["penalty"] == "mse")
    sel, rsel = p["sel"], _ref_sel(p)
    fw = rng.uniform(0.0, 2.0, p["m"]) if p["weights"] else None
    sw = rng.uniform(0.0, 2.0, p["n"]) if p["weights"] else None
    opts = dict(penalty=p["penalty"], delta=p["delta"], **sel)
    ropts = dict(penalty=p["penalty"], delta=p["delta"], **rsel)
    U, x0 = a["U"], a["x0"]
    rU, rx0, rR, rRS, rTT = r["U"], r["x0"], f64(R), f64(RS), f64(TT)

    def check(res, ref, has_x0=True, sizes=()):
        assert isinstance(res.value, float) and math.isfinite(res.value)
        if not has_x0 or dtype == np.float64:
            # control_loss computes in float64 whatever the storage dtype
            np.testing.assert_allclose(res.value, ref["value"], rtol=1e-10, atol=1e-300)
            gscale = max(float(np.max(np.abs(ref["grad"]), initial=0.0)), 1e-300)
            check_float(res.grad, ref["grad"], dtype, scale=gscale, rtol64=1e-9)
            if has_x0:
                xscale = max(float(np.max(np.abs(ref["grad_x0"]), initial=0.0)), 1e-300)
                check_float(res.grad_x0, ref["grad_x0"], dtype, scale=xscale, rtol64=1e-9)
            return
        check_float32_rollout(res, ref, p["T"], sizes)

    ref_c = control_loss_ref(rU, rR, discount=p["discount"], feature_weights=fw, **ropts)
    check(tl.control_loss(U, R, discount=p["discount"], feature_weights=fw, **opts), ref_c,
          has_x0=False)
    def traj_ref(RS_):
        return trajectory_loss_ref(Ad, Bd, rU, rx0, RS_, discount=p["discount"],
                                   state_weights=sw, include_initial=p["include_initial"], **ropts)

    def term_ref(TT_):
        return terminal_loss_ref(Ad, Bd, rU, rx0, TT_, state_weights=sw, **ropts)

    ref_t, ref_f = traj_ref(rRS), term_ref(rTT)
    check(tl.trajectory_loss(system, U, x0, RS, discount=p["discount"], state_weights=sw,
                             include_initial=p["include_initial"], **opts), ref_t,
          sizes=[(1.0, traj_ref(0 * rRS))])
    check(tl.terminal_loss(system, U, x0, TT, state_weights=sw, **opts), ref_f,
          sizes=[(1.0, term_ref(0 * rTT))])
    res = tl.combined_loss(system, U, x0, R, RS, weight=p["weight"],
                           terminal_weight=p["terminal_weight"], terminal_target=TT,
                           include_initial=p["include_initial"], state_weights=sw,
                           feature_weights=fw, discount=p["discount"], **opts)
    ref = combined_loss_ref(Ad, Bd, rU, rx0, rR, rRS, p["weight"],
                            terminal_weight=p["terminal_weight"], terminal_target=rTT,
                            include_initial=p["include_initial"], state_weights=sw,
                            feature_weights=fw, discount=p["discount"], **ropts)
    ref0 = combined_loss_ref(Ad, Bd, rU, rx0, 0 * rR, 0 * rRS, p["weight"],
                             terminal_weight=p["terminal_weight"], terminal_target=0 * rTT,
                             include_initial=p["include_initial"], state_weights=sw,
                             feature_weights=fw, discount=p["discount"], **ropts)
    check(res, ref, sizes=[(1.0, ref0), (p["weight"], ref_c), (1.0, ref_t),
                           (p["terminal_weight"], ref_f)])
    c = res.components
    np.testing.assert_allclose([c.control, c.trajectory, c.terminal],
                               [ref["control"], ref["trajectory"], ref["terminal"]],
                               rtol=1e-10 if dtype == np.float64 else f32_rollout_rtol(p["T"]),
                               atol=1e-300)


@SETTINGS
@given(st.integers(0, 12), discounts, st.data())
def test_time_weights_any_layout(T, discount, data):
    B = data.draw(st.integers(0, 6))
    kind = data.draw(st.sampled_from(["lengths", "mask", "mask1d"]))
    lay = data.draw(st.sampled_from(LAYOUT_KINDS[:6] + ["readonly"]))
    if kind == "lengths":
        L = np.array(data.draw(st.lists(st.integers(0, T), min_size=B, max_size=B)),
                     dtype=data.draw(st.sampled_from([np.int64, np.int32, np.uint16])))
        w = tl.time_weights(T, discount, lengths=layout(L, lay) if B else L)
        ref = time_weights_ref(T, discount, lengths=L) if B else np.zeros((0, T))
    else:
        shape = (T,) if kind == "mask1d" else (B, T)
        flat = data.draw(st.lists(st.booleans(), min_size=int(np.prod(shape)),
                                  max_size=int(np.prod(shape))))
        M = np.array(flat, dtype=bool).reshape(shape)
        w = tl.time_weights(T, discount, mask=layout(M, lay) if M.size else M)
        ref = (time_weights_ref(T, discount, mask=M) if M.size or kind == "mask1d"
               else np.zeros((B, T)))
        if kind == "mask1d" and T == 0:
            ref = np.zeros(0)
    assert w.dtype == np.float64
    np.testing.assert_allclose(w, np.reshape(ref, w.shape), rtol=1e-12, atol=1e-300)


# ==========================================================================
# metrics and references
# ==========================================================================


@SETTINGS
@given(problems(), st.data())
def test_final_state_error_and_success_rate(p, data):
    system, Ad, Bd, a, r, rng = make(p)
    X = ref_rollout(Ad, Bd, r["x0"], r["U"])
    if p["B"] is None:
        L = data.draw(st.one_of(st.none(), st.integers(0, p["T"])))
        end = X[p["T"] if L is None else L]
        expected = np.linalg.norm(end - r["xf"])
        lengths = L
    else:
        L = data.draw(st.one_of(st.none(), st.lists(st.integers(0, p["T"]), min_size=p["B"],
                                                    max_size=p["B"])))
        lengths = None if L is None else layout(np.array(L), p["layouts"][7])
        idx = np.full(p["B"], p["T"]) if L is None else np.array(lengths)  # as laid out
        end = X[np.arange(p["B"]), idx]
        expected = np.linalg.norm(end - r["xf"], axis=1)
    err = tl.final_state_error(system, a["U"], a["x0"], a["xf"], lengths)
    check_float(err, expected, p["dtype"], scale=max(1.0, float(np.max(np.abs(end)))))
    # one (n,) target for the whole batch, as a list (it takes the call's dtype)
    if p["B"] is not None:
        target = r["xf"][0].tolist()
        err1 = tl.final_state_error(system, a["U"], a["x0"], target, lengths)
        check_float(err1, np.linalg.norm(end - r["xf"][0], axis=1), p["dtype"],
                    scale=max(1.0, float(np.max(np.abs(end)))))
    tol = float(np.median(expected))
    rate = tl.success_rate(system, a["U"], a["x0"], a["xf"], tol, lengths)
    # away from ties at tol (float32 rounding), the rate is the fraction below it
    margin = 1e-5 * max(1.0, tol)
    assume(np.all(np.abs(np.atleast_1d(expected) - tol) > margin) or np.ndim(expected) == 0)
    if np.ndim(expected):
        assert rate == np.mean(expected <= tol)
    else:
        assert rate in (0.0, 1.0)


def _scaled_c_cond(Ad, Bd, T):
    """cond of the controllability matrix C with its rows scaled to unit
    length (the problem "exact" solves), from NumPy's SVD."""
    C = controllability_matrix(Ad, Bd, T)
    s = np.linalg.svd(C / np.linalg.norm(C, axis=1, keepdims=True), compute_uv=False)
    return s[0] / s[-1] if s[-1] > 0 else np.inf


@SETTINGS
@given(st.integers(1, 5), st.integers(1, 4), st.integers(0, 2 ** 32 - 1), st.data())
def test_min_energy_exact_is_the_minimum_norm_solution(n, m, seed, data):
    rng = np.random.default_rng(seed)
    T = data.draw(st.integers(max(1, -(-n // m)), 12))  # T m >= n: generically controllable
    B = data.draw(st.one_of(st.none(), st.integers(1, 6)))
    Ad, Bd = random_discrete(rng, n, m, radius=data.draw(st.sampled_from([0.5, 0.95, 1.2])))
    dt = data.draw(st.one_of(st.none(), st.floats(0.01, 1.0)))
    system = tl.LinearSystem(Ad, Bd, dt=dt)
    lead = () if B is None else (B,)
    x0 = rng.standard_normal(lead + (n,))
    xf = rng.standard_normal(lead + (n,)) if data.draw(st.booleans()) else rng.standard_normal(n)
    x0_call = layout(x0, data.draw(st.sampled_from(LAYOUT_KINDS[:6] + ["readonly"])))
    x0_call = x0_call.astype(data.draw(st.sampled_from([np.float64, np.float32, np.int64])))
    x0 = f64(x0_call)
    cond = _scaled_c_cond(Ad, Bd, T)
    try:
        ref = tl.min_energy(system, x0_call, xf, T)
    except np.linalg.LinAlgError:
        # refused only when C is rank-deficient to working precision: the
        # rank test is |R_kk| <= max(n, T m) eps |R_11| of a pivoted QR,
        # within a modest factor of the singular values' ratio
        assert cond > 1e-3 / (max(n, T * m) * np.finfo(float).eps), \
            f"LinAlgError although the scaled C has cond {cond:.3g}"
        return
    U = min_norm_controls(Ad, Bd, x0, xf, T)
    if B is None:
        U = U[0]
    assert ref.controls.dtype == np.float64 and ref.controls.shape == U.shape
    tol = 1e-13 * max(1.0, cond)
    np.testing.assert_allclose(ref.controls, U, rtol=max(1e-8, tol),
                               atol=max(1e-8, tol) * max(1.0, np.abs(U).max()))
    X = ref_rollout(Ad, Bd, x0, ref.controls)
    np.testing.assert_allclose(ref.states, X, rtol=1e-10, atol=1e-10 * max(1.0, np.abs(X).max()))
    xf_b = np.broadcast_to(xf, np.shape(x0))
    np.testing.assert_allclose(ref.final_error, np.linalg.norm(X[..., -1, :] - xf_b, axis=-1),
                               rtol=1e-6, atol=1e-12 * max(1.0, np.abs(X).max()))
    assert np.all(ref.final_error <= max(1e-9, 1e-14 * cond) * max(1.0, np.abs(X).max()))
    energy = np.sum(ref.controls ** 2, axis=(-2, -1)) * (1.0 if dt is None else dt)
    np.testing.assert_allclose(ref.energy, energy, rtol=1e-12)
