"""Property-based tests (hypothesis) of the losses and the time weights:
random sizes, lengths (some 0, never all), masks, discounts in (0, 2],
penalties.  For every drawn problem: the value is finite and matches the
plain-loop reference, the gradient matches the reference's analytic
gradient everywhere and central finite differences of the reference value on
a sample of entries, permuting the batch permutes the gradient and keeps the
value, and padding the sequences with garbage changes nothing."""

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trajloss
from conftest import random_discrete
from loss_reference import (
    PENALTIES,
    combined_loss_ref,
    control_loss_ref,
    default_terminal_target,
    fd_grad,
    kink_free,
    terminal_loss_ref,
    time_weights_ref,
    trajectory_loss_ref,
    valid_steps,
)

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

discounts = st.one_of(
    st.none(),
    st.just(1.0),
    st.floats(min_value=0.0, max_value=2.0, exclude_min=True, allow_nan=False,
              allow_infinity=False, allow_subnormal=False),
)


@st.composite
def problems(draw):
    Bsz = draw(st.integers(1, 5))
    Tsz = draw(st.integers(1, 8))
    n = draw(st.integers(1, 4))
    m = draw(st.integers(1, 3))
    select = draw(st.sampled_from(["none", "lengths", "mask"]))
    lengths = mask = None
    if select == "lengths":
        lengths = np.array(draw(
            st.lists(st.integers(0, Tsz), min_size=Bsz, max_size=Bsz).filter(
                lambda ls: any(v > 0 for v in ls))), dtype=np.int64)
    elif select == "mask":
        rows = draw(st.lists(st.lists(st.booleans(), min_size=Tsz, max_size=Tsz),
                             min_size=Bsz, max_size=Bsz).filter(
            lambda r: any(any(row) for row in r)))
        mask = np.array(rows, dtype=bool).reshape(Bsz, Tsz)
    return dict(
        B=Bsz, T=Tsz, n=n, m=m, lengths=lengths, mask=mask,
        discount=draw(discounts),
        penalty=draw(st.sampled_from(PENALTIES)),
        delta=draw(st.floats(0.25, 4.0)),
        include_initial=draw(st.booleans()),
        weights=draw(st.booleans()),
        seed=draw(st.integers(0, 2 ** 32 - 1)),
        perm=draw(st.permutations(range(Bsz))),
    )


def selection(p):
    kw = {}
    if p["lengths"] is not None:
        kw["lengths"] = p["lengths"]
    if p["mask"] is not None:
        kw["mask"] = p["mask"]
    return kw


def data(p):
    rng = np.random.default_rng(p["seed"])
    Bsz, Tsz, n, m, delta = p["B"], p["T"], p["n"], p["m"], p["delta"]
    Ad, Bd = random_discrete(rng, n, m)
    x0 = rng.standard_normal((Bsz, n))
    U = rng.standard_normal((Bsz, Tsz, m))
    X = ref_rollout_fast(Ad, Bd, x0, U)
    ref_states = X - kink_free(rng, X.shape, delta)
    ref_controls = U - kink_free(rng, U.shape, delta)
    fake = X - kink_free(rng, X.shape, delta)
    target = default_terminal_target(fake, **selection(p))  # kink-free at X[b, K_b]
    sw = rng.uniform(0.0, 2.0, n) if p["weights"] else None
    fw = rng.uniform(0.0, 2.0, m) if p["weights"] else None
    system = trajloss.LinearSystem(Ad, Bd, dt=0.1)
    return dict(rng=rng, Ad=Ad, Bd=Bd, x0=x0, U=U, ref_states=ref_states,
                ref_controls=ref_controls, target=target, sw=sw, fw=fw, system=system)


def ref_rollout_fast(Ad, Bd, x0, U):
    """Only used to place the references near the predicted states."""
    Bsz, Tsz, _ = U.shape
    X = np.zeros((Bsz, Tsz + 1, Ad.shape[0]))
    X[:, 0] = x0
    for k in range(Tsz):
        X[:, k + 1] = X[:, k] @ Ad.T + U[:, k] @ Bd.T
    return X


# ----- the four losses as (package call, reference) pairs --------------------


def call_control(p, d, U, x0, perm=None, cf=True):
    sel, rc = selection(p), d["ref_controls"]
    if perm is not None:
        sel = {k: v[perm] for k, v in sel.items()}
        rc = rc[perm]
    kw = dict(discount=p["discount"], penalty=p["penalty"], delta=p["delta"],
              feature_weights=d["fw"], **sel)
    return (trajloss.control_loss(U, rc, check_finite=cf, **kw),
            lambda u, x: control_loss_ref(u, rc, **kw))


def call_trajectory(p, d, U, x0, perm=None, cf=True):
    sel, rs = selection(p), d["ref_states"]
    if perm is not None:
        sel = {k: v[perm] for k, v in sel.items()}
        rs = rs[perm]
    kw = dict(discount=p["discount"], penalty=p["penalty"], delta=p["delta"],
              state_weights=d["sw"], include_initial=p["include_initial"], **sel)
    return (trajloss.trajectory_loss(d["system"], U, x0, rs, check_finite=cf, **kw),
            lambda u, x: trajectory_loss_ref(d["Ad"], d["Bd"], u, x, rs, **kw))


def call_terminal(p, d, U, x0, perm=None, cf=True):
    sel, tg = selection(p), d["target"]
    if perm is not None:
        sel = {k: v[perm] for k, v in sel.items()}
        tg = tg[perm]
    kw = dict(penalty=p["penalty"], delta=p["delta"], state_weights=d["sw"], **sel)
    return (trajloss.terminal_loss(d["system"], U, x0, tg, check_finite=cf, **kw),
            lambda u, x: terminal_loss_ref(d["Ad"], d["Bd"], u, x, tg, **kw))


def call_combined(p, d, U, x0, perm=None, cf=True, weight=0.37, terminal_weight=0.61):
    sel, rc, rs = selection(p), d["ref_controls"], d["ref_states"]
    if perm is not None:
        sel = {k: v[perm] for k, v in sel.items()}
        rc, rs = rc[perm], rs[perm]
    kw = dict(discount=p["discount"], penalty=p["penalty"], delta=p["delta"],
              state_weights=d["sw"], feature_weights=d["fw"],
              include_initial=p["include_initial"], weight=weight,
              terminal_weight=terminal_weight, **sel)
    return (trajloss.combined_loss(d["system"], U, x0, rc, rs, check_finite=cf, **kw),
            lambda u, x: combined_loss_ref(d["Ad"], d["Bd"], u, x, rc, rs, **kw))


def check_all(p, call, has_x0=True):
    d = data(p)
    U, x0 = d["U"], d["x0"]
    res, ref_f = call(p, d, U, x0)
    ref = ref_f(U, x0)

    # value: a finite Python float equal to the reference
    assert isinstance(res.value, float)
    assert math.isfinite(res.value)
    np.testing.assert_allclose(res.value, ref["value"], rtol=1e-10)

    # gradient: everywhere against the reference's analytic gradient
    scale = max(float(np.max(np.abs(ref["grad"]), initial=0.0)), 1e-300)
    assert res.grad.shape == U.shape and res.grad.dtype == np.float64
    np.testing.assert_allclose(res.grad, ref["grad"], rtol=1e-9, atol=1e-10 * scale)
    if has_x0:
        scale0 = max(float(np.max(np.abs(ref["grad_x0"]), initial=0.0)), 1e-300)
        np.testing.assert_allclose(res.grad_x0, ref["grad_x0"], rtol=1e-9, atol=1e-10 * scale0)

    # ... and on a sample of entries against central differences of the value
    rng = d["rng"]
    ent = rng.choice(U.size, size=min(U.size, 6), replace=False)
    g_fd = fd_grad(lambda u: ref_f(u, x0)["value"], U, entries=ent)
    fd_scale = float(np.max(np.abs(g_fd), initial=0.0))
    np.testing.assert_allclose(res.grad.flat[ent], g_fd.flat[ent], rtol=1e-6,
                               atol=1e-6 * fd_scale + 1e-10)
    if has_x0:
        ent0 = rng.choice(x0.size, size=min(x0.size, 3), replace=False)
        g_fd0 = fd_grad(lambda x: ref_f(U, x)["value"], x0, entries=ent0)
        fd_scale0 = float(np.max(np.abs(g_fd0), initial=0.0))
        np.testing.assert_allclose(res.grad_x0.flat[ent0], g_fd0.flat[ent0], rtol=1e-6,
                                   atol=1e-6 * fd_scale0 + 1e-10)

    # permuting the batch permutes the gradient and keeps the value
    perm = np.array(p["perm"], dtype=np.int64)
    res_p, _ = call(p, d, U[perm], x0[perm], perm=perm)
    np.testing.assert_allclose(res_p.value, res.value, rtol=1e-13)
    np.testing.assert_allclose(res_p.grad, res.grad[perm], rtol=1e-13, atol=1e-15 * scale)
    if has_x0:
        np.testing.assert_allclose(res_p.grad_x0, res.grad_x0[perm], rtol=1e-13,
                                   atol=1e-15 * scale0)
    return res


@SETTINGS
@given(problems())
def test_control_loss_properties(p):
    res = check_all(p, call_control, has_x0=False)
    assert res.grad_x0 is None


@SETTINGS
@given(problems())
def test_trajectory_loss_properties(p):
    check_all(p, call_trajectory)


@SETTINGS
@given(problems())
def test_terminal_loss_properties(p):
    check_all(p, call_terminal)


@SETTINGS
@given(problems())
def test_combined_loss_properties(p):
    res = check_all(p, call_combined)
    c = res.components
    np.testing.assert_allclose(c.total, res.value, rtol=1e-12)
    np.testing.assert_allclose(
        c.control + 0.37 * c.trajectory + 0.61 * c.terminal, res.value, rtol=1e-12)


# ----- padding ----------------------------------------------------------------


@SETTINGS
@given(problems(), st.integers(0, 5), st.sampled_from(["huge", "garbage", "nan"]))
def test_padding_changes_nothing(p, extra, fill):
    """Append ``extra`` steps and overwrite every step after each sequence's
    last valid one with garbage: value and gradient of the valid steps are
    unchanged, the padded steps get exactly zero gradient (all four losses)."""
    if p["mask"] is not None:
        valid = p["mask"]
    else:
        valid = valid_steps(p["B"], p["T"], lengths=p["lengths"])
    K = np.array([max([t + 1 for t in range(p["T"]) if valid[b, t]], default=0)
                  for b in range(p["B"])])
    d = data(p)
    rng = np.random.default_rng(p["seed"] + 1)
    Tn = p["T"] + extra

    def pad(a, off):
        out = np.empty((a.shape[0], Tn + off) + a.shape[2:])
        out[:, : a.shape[1]] = a
        for b in range(a.shape[0]):
            tail = out[b, K[b] + off:]
            if fill == "huge":
                tail[...] = np.where(rng.random(tail.shape) < 0.5, -1e300, 1e300)
            elif fill == "garbage":
                tail[...] = rng.standard_normal(tail.shape) * 1e6
            else:
                tail[...] = np.nan
        return out

    def padsel(sel):
        out = dict(sel)
        if "mask" in out:
            mk = np.zeros((p["B"], Tn), dtype=bool)
            mk[:, : p["T"]] = out["mask"]
            out["mask"] = mk
        return out

    dp = dict(d, U=pad(d["U"], 0), ref_controls=pad(d["ref_controls"], 0),
              ref_states=pad(d["ref_states"], 1))
    pp = dict(p, T=Tn, mask=padsel(selection(p)).get("mask"))
    if p["lengths"] is None and p["mask"] is None:
        pp["lengths"] = np.full(p["B"], p["T"], dtype=np.int64)  # the appended steps
    for call in (call_control, call_trajectory, call_terminal, call_combined):
        base, _ = call(p, d, d["U"], d["x0"])
        # NaN padding needs check_finite=False
        padded, _ = call(pp, dp, dp["U"], dp["x0"], cf=fill != "nan")
        np.testing.assert_allclose(padded.value, base.value, rtol=1e-13)
        for b in range(p["B"]):
            np.testing.assert_allclose(padded.grad[b, : K[b]], base.grad[b, : K[b]], rtol=1e-13,
                                       atol=1e-300)
            assert np.all(padded.grad[b, K[b]:] == 0), (call.__name__, b)
        if call is not call_control:
            np.testing.assert_allclose(padded.grad_x0, base.grad_x0, rtol=1e-13, atol=1e-300)


# ----- time weights -----------------------------------------------------------


@SETTINGS
@given(st.integers(1, 60), discounts, st.data())
def test_time_weights_properties(T, discount, data_):
    kind = data_.draw(st.sampled_from(["none", "lengths", "mask", "mask1d"]))
    Bsz = data_.draw(st.integers(1, 5))
    if kind == "none":
        w = trajloss.time_weights(T, discount)
        valid = np.ones(T, dtype=bool)
        ref = time_weights_ref(T, discount)
    elif kind == "lengths":
        lengths = np.array(data_.draw(st.lists(st.integers(0, T), min_size=Bsz,
                                               max_size=Bsz)), dtype=np.int64)
        w = trajloss.time_weights(T, discount, lengths=lengths)
        valid = valid_steps(Bsz, T, lengths=lengths)
        ref = time_weights_ref(T, discount, lengths=lengths)
    else:
        shape = (T,) if kind == "mask1d" else (Bsz, T)
        flat = data_.draw(st.lists(st.booleans(), min_size=int(np.prod(shape)),
                                   max_size=int(np.prod(shape))))
        mask = np.array(flat, dtype=bool).reshape(shape)
        w = trajloss.time_weights(T, discount, mask=mask)
        valid = mask
        ref = time_weights_ref(T, discount, mask=mask)
    assert w.shape == valid.shape and w.dtype == np.float64
    assert np.all(np.isfinite(w)) and np.all(w >= 0)
    assert np.all(w[~valid] == 0)
    np.testing.assert_allclose(w, ref, rtol=1e-11, atol=1e-290)
    rows_w = w.reshape(-1, T)
    rows_v = valid.reshape(-1, T)
    for wr, vr in zip(rows_w, rows_v):
        if vr.any():
            np.testing.assert_allclose(math.fsum(wr[vr]) / vr.sum(), 1.0, rtol=1e-12)
        if discount is None or discount == 1.0:
            assert np.all(wr[vr] == 1.0)
