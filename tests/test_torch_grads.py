"""Every differentiable argument of trajloss.torch gets its true gradient, to
second order: gradcheck/gradgradcheck (central finite differences) on float64
for every loss and argument, Hessian-vector products against a closed form
built from the plain NumPy loops of tests/loss_reference.py, weight-tensor
gradients against the reference's term values; plus devices (meta, mixed),
weight and option errors, check_finite, and the CombinedLoss state_dict
resume."""
import io
import math
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import loss_reference as ref  # noqa: E402
import trajloss  # noqa: E402
import trajloss.torch as tlt  # noqa: E402
from trajloss import weighting  # noqa: E402

B, T, M, N = 3, 4, 1, 2
DELTA = {"mse": 1.0, "l1": 1.0, "huber": 1.1}
PENALTIES = tuple(DELTA)

# lengths/mask/discount variants; every sequence keeps a valid step
VARIANTS = {
    "all": {},
    "lengths": dict(lengths=[4, 2, 3]),
    "mask": dict(mask=[[True, False, True, True], [False, True, False, False],
                       [True, True, True, False]]),
    "discount": dict(discount=0.7),
    "discount-lengths": dict(discount=1.4, lengths=[3, 4, 1]),
    "discount-mask": dict(discount=0.6, mask=[[False, True, True, True],
                                              [True, False, False, True],
                                              [True, True, False, False]]),
}


@pytest.fixture(scope="module")
def system():
    return trajloss.LinearSystem.from_continuous([[0.0, 1.0], [-2.0, -0.3]], [[0.0], [1.0]], 0.3)


def _t(a, grad=True):
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def _opts(variant):
    """A variant's options as tensors (lengths int64, mask bool) and as NumPy."""
    kw = dict(VARIANTS[variant])
    tkw = dict(kw)
    if "lengths" in kw:
        tkw["lengths"] = torch.tensor(kw["lengths"])
    if "mask" in kw:
        tkw["mask"] = torch.tensor(kw["mask"])
    return tkw, kw


def make_data(system, penalty, seed=0):
    """Controls, x0 and references whose residuals (control, every state, the
    final states) stay away from the kinks of l1 (0) and huber (delta)."""
    rng = np.random.default_rng(seed)
    delta = DELTA[penalty]
    u = rng.normal(size=(B, T, M))
    x0 = rng.normal(size=(B, N))
    X = ref.rollout_loop(system.Ad, system.Bd, x0, u)
    ru = u - ref.kink_free(rng, u.shape, delta)
    rs = X - ref.kink_free(rng, X.shape, delta)
    target = X[:, -1] - ref.kink_free(rng, (B, N), delta)
    fw = rng.uniform(0.5, 2.0, M)
    sw = rng.uniform(0.5, 2.0, N)
    return dict(u=u, x0=x0, ru=ru, rs=rs, target=target, fw=fw, sw=sw, delta=delta)


def _check(f, inputs):
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


# ---- gradcheck and gradgradcheck: every loss, every argument ------------------

@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("penalty", PENALTIES)
def test_control_loss_every_argument(system, penalty, variant):
    d = make_data(system, penalty)
    tkw, _ = _opts(variant)
    inputs = (_t(d["u"]), _t(d["ru"]), _t(d["fw"]))

    def f(p, t, fw):
        return tlt.control_loss(p, t, penalty=penalty, delta=d["delta"], feature_weights=fw,
                                **tkw)
    _check(f, inputs)


@pytest.mark.parametrize("include_initial", [False, True])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("penalty", PENALTIES)
def test_trajectory_loss_every_argument(system, penalty, variant, include_initial):
    d = make_data(system, penalty, seed=1)
    tkw, _ = _opts(variant)
    inputs = (_t(d["u"]), _t(d["x0"]), _t(d["rs"]), _t(d["sw"]))

    def f(u, x0, rs, sw):
        return tlt.trajectory_loss(system, u, x0, rs, include_initial=include_initial,
                                   state_weights=sw, penalty=penalty, delta=d["delta"], **tkw)
    _check(f, inputs)


@pytest.mark.parametrize("variant", ["all", "lengths", "mask"])
@pytest.mark.parametrize("penalty", PENALTIES)
def test_terminal_loss_every_argument(system, penalty, variant):
    d = make_data(system, penalty, seed=2)
    tkw, kw = _opts(variant)
    # the final valid state of each sequence, away from the kinks
    X = ref.rollout_loop(system.Ad, system.Bd, d["x0"], d["u"])
    valid = ref.valid_steps(B, T, kw.get("lengths"), kw.get("mask"))
    final = np.stack([X[b, ref.last_valid_index(valid[b])] for b in range(B)])
    target = final - ref.kink_free(np.random.default_rng(5), final.shape, d["delta"])
    inputs = (_t(d["u"]), _t(d["x0"]), _t(target), _t(d["sw"]))

    def f(u, x0, tg, sw):
        return tlt.terminal_loss(system, u, x0, tg, state_weights=sw, penalty=penalty,
                                 delta=d["delta"], **{k: v for k, v in tkw.items()
                                                      if k != "discount"})
    _check(f, inputs)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("penalty", PENALTIES)
def test_combined_loss_every_argument(system, penalty, variant):
    d = make_data(system, penalty, seed=3)
    tkw, _ = _opts(variant)
    inputs = (_t(d["u"]), _t(d["x0"]), _t(d["ru"]), _t(d["rs"]), _t(d["target"]), _t(0.4),
              _t(0.7), _t(d["fw"]), _t(d["sw"]))

    def f(u, x0, ru, rs, tg, w, wf, fw, sw):
        return tlt.combined_loss(system, u, x0, ru, rs, weight=w, terminal_weight=wf,
                                 terminal_target=tg, feature_weights=fw, state_weights=sw,
                                 penalty=penalty, delta=d["delta"], **tkw)
    _check(f, inputs)


@pytest.mark.parametrize("variant", ["all", "lengths", "discount-mask"])
@pytest.mark.parametrize("penalty", PENALTIES)
def test_combined_loss_default_terminal_target(system, penalty, variant):
    # the terminal target is then ref_states' final valid state: ref_states
    # gets the trajectory and the terminal terms' gradients
    d = make_data(system, penalty, seed=4)
    tkw, _ = _opts(variant)
    inputs = (_t(d["u"]), _t(d["x0"]), _t(d["ru"]), _t(d["rs"]), _t(0.3), _t(1.2))

    def f(u, x0, ru, rs, w, wf):
        return tlt.combined_loss(system, u, x0, ru, rs, weight=w, terminal_weight=wf,
                                 include_initial=True, penalty=penalty, delta=d["delta"], **tkw)
    _check(f, inputs)


def test_combined_module_and_unbatched(system):
    d = make_data(system, "huber", seed=6)
    loss_fn = tlt.CombinedLoss(system, weight=0.5, terminal_weight=0.2, penalty="huber",
                               delta=d["delta"], discount=0.8)
    _check(lambda u, x0, ru, rs: loss_fn(u, x0, ru, rs, lengths=torch.tensor([2, 4, 3])),
           (_t(d["u"]), _t(d["x0"]), _t(d["ru"]), _t(d["rs"])))
    # one unbatched sequence (T, m) with an integer length
    _check(lambda u, x0, ru, rs, tg: tlt.combined_loss(
        system, u, x0, ru, rs, weight=0.5, terminal_weight=0.9, terminal_target=tg, lengths=3,
        penalty="huber", delta=d["delta"], discount=1.2),
        (_t(d["u"][0]), _t(d["x0"][0]), _t(d["ru"][0]), _t(d["rs"][0]), _t(d["target"][0])))
    _check(lambda p, t: tlt.control_loss(p, t, mask=torch.tensor([True, False, True, True])),
           (_t(d["u"][1]), _t(d["ru"][1])))


def test_rollout_function_and_module(system):
    d = make_data(system, "mse", seed=7)
    _check(lambda x0, u: tlt.rollout(system, x0, u), (_t(d["x0"]), _t(d["u"])))
    _check(lambda x0, u: tlt.Rollout(system)(x0, u), (_t(d["x0"][0]), _t(d["u"][0])))


def test_third_order_of_mixed_weight_terms(system):
    # d total/d weight = the trajectory term, whose own Hessian is nonzero:
    # the gradients made with create_graph are differentiable once more
    d = make_data(system, "mse", seed=8)
    inputs = (_t(d["u"]), _t(0.4))

    def grad_u(u, w):
        loss = tlt.combined_loss(system, u, _t(d["x0"], False), _t(d["ru"], False),
                                 _t(d["rs"], False), weight=w)
        return torch.autograd.grad(loss, u, create_graph=True)[0]
    assert torch.autograd.gradgradcheck(grad_u, inputs)


# ---- Hessian-vector products against a closed form ----------------------------

def _curvature(r, penalty, delta):
    """rho''(r): 2 for mse, 1 inside |r| <= delta else 0 for huber, 0 for l1."""
    if penalty == "mse":
        return 2.0
    if penalty == "huber":
        return 1.0 if abs(r) <= delta else 0.0
    return 0.0


def hessian_ref(system, u, x0, ru, rs, tg, weight, terminal_weight, penalty, delta,
                discount=None, lengths=None, mask=None, include_initial=False, fw=None,
                sw=None):
    """The Hessian of combined_loss in z = (controls, x0), NumPy loops only:
    the states are X = J z (J from the reference rollout loop on unit vectors),
    so H = diag(control curvature) + J^T diag(state curvature) J."""
    Ad, Bd = system.Ad, system.Bd
    nu, nx = B * T * M, B * N
    J = np.zeros((B * (T + 1) * N, nu + nx))
    for j in range(nu + nx):
        e = np.zeros(nu + nx)
        e[j] = 1.0
        J[:, j] = ref.rollout_loop(Ad, Bd, e[nu:].reshape(B, N),
                                   e[:nu].reshape(B, T, M)).ravel()
    X = ref.rollout_loop(Ad, Bd, x0, u)
    valid = ref.valid_steps(B, T, lengths, mask)
    fw = np.ones(M) if fw is None else fw
    sw = np.ones(N) if sw is None else sw
    hu = np.zeros((B, T, M))
    nc = valid.sum()
    for b in range(B):
        w = ref.row_weights(list(valid[b]), discount)
        for t in range(T):
            for k in range(M):
                if valid[b, t]:
                    hu[b, t, k] = w[t] * fw[k] * _curvature(u[b, t, k] - ru[b, t, k], penalty,
                                                            delta) / (M * nc)
    hx = np.zeros((B, T + 1, N))
    ext = np.concatenate([valid.any(1, keepdims=True), valid], 1) if include_initial else valid
    nt = ext.sum()
    for b in range(B):
        w = ref.row_weights(list(ext[b]), discount)
        for k in range(ext.shape[1]):
            if ext[b, k]:
                i = k if include_initial else k + 1
                for c in range(N):
                    hx[b, i, c] += weight * w[k] * sw[c] * _curvature(
                        X[b, i, c] - rs[b, i, c], penalty, delta) / (N * nt)
    nf = sum(valid[b].any() for b in range(B))
    for b in range(B):
        K = ref.last_valid_index(valid[b])
        if K is not None:
            target = rs[b, K] if tg is None else tg[b]
            for c in range(N):
                hx[b, K, c] += terminal_weight * sw[c] * _curvature(
                    X[b, K, c] - target[c], penalty, delta) / (N * nf)
    H = J.T @ (hx.ravel()[:, None] * J)
    H[:nu, :nu] += np.diag(hu.ravel())
    return H


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("penalty", PENALTIES)
def test_hessian_vector_product_matches_closed_form(system, penalty, variant):
    d = make_data(system, penalty, seed=9)
    tkw, kw = _opts(variant)
    u, x0 = _t(d["u"]), _t(d["x0"])
    loss = tlt.combined_loss(system, u, x0, _t(d["ru"], False), _t(d["rs"], False),
                             weight=0.4, terminal_weight=0.7, include_initial=True,
                             feature_weights=d["fw"], state_weights=d["sw"], penalty=penalty,
                             delta=d["delta"], **tkw)
    gu, gx = torch.autograd.grad(loss, (u, x0), create_graph=True)
    assert gu.requires_grad and gx.requires_grad
    rng = np.random.default_rng(10)
    vu, vx = rng.normal(size=u.shape), rng.normal(size=x0.shape)
    hu, hx = torch.autograd.grad((gu * _t(vu, False)).sum() + (gx * _t(vx, False)).sum(),
                                 (u, x0), allow_unused=True, materialize_grads=True)
    H = hessian_ref(system, d["u"], d["x0"], d["ru"], d["rs"], None, 0.4, 0.7, penalty,
                    d["delta"], discount=kw.get("discount"), lengths=kw.get("lengths"),
                    mask=kw.get("mask"), include_initial=True, fw=d["fw"], sw=d["sw"])
    expected = H @ np.concatenate([vu.ravel(), vx.ravel()])
    got = np.concatenate([hu.detach().numpy().ravel(), hx.detach().numpy().ravel()])
    np.testing.assert_allclose(got, expected, rtol=1e-11, atol=1e-13)
    if penalty == "mse":
        assert np.abs(expected).max() > 1e-3  # a real test, not 0 == 0


def test_hessian_of_a_square_is_two():
    # l = mean((u - 0)^2) over one element: d2l/du2 = 2 (it used to come back 0)
    u = torch.tensor([[[1.5]]], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(tlt.control_loss(u, torch.zeros_like(u)), u, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), u)
    assert h.item() == 2.0


def test_mixed_second_derivatives_with_weight_and_references(system):
    # d/dweight (v . dl/du) = v . d(trajectory)/du and d/dref_controls (v . dl/du)
    # = -v . diag(control curvature): both from the NumPy reference
    d = make_data(system, "mse", seed=11)
    u, w, ru = _t(d["u"]), _t(0.4), _t(d["ru"])
    loss = tlt.combined_loss(system, u, _t(d["x0"], False), ru, _t(d["rs"], False), weight=w,
                             discount=0.8)
    (gu,) = torch.autograd.grad(loss, u, create_graph=True)
    v = np.random.default_rng(12).normal(size=u.shape)
    dw, dru = torch.autograd.grad((gu * _t(v, False)).sum(), (w, ru))
    r = ref.combined_loss_ref(system.Ad, system.Bd, d["u"], d["x0"], d["ru"], d["rs"], 0.4,
                              discount=0.8)
    tr = ref.trajectory_loss_ref(system.Ad, system.Bd, d["u"], d["x0"], d["rs"], discount=0.8)
    assert dw.item() == pytest.approx(float((tr["grad"] * v).sum()), rel=1e-12)
    w_t = ref.time_weights_ref(T, 0.8, lengths=[T] * B)
    expected = -2.0 * w_t[..., None] * v / (M * B * T)
    np.testing.assert_allclose(dru.numpy(), expected, rtol=1e-12, atol=1e-15)
    assert r["value"] == pytest.approx(loss.item(), rel=1e-12)


# ---- weight tensors ---------------------------------------------------------

@pytest.mark.parametrize("shape", [(), (1,)])
def test_weight_tensor_gradient_is_the_term_value(system, shape):
    d = make_data(system, "mse", seed=13)
    w = torch.full(shape, 0.3, dtype=torch.float32, requires_grad=True)
    wf = torch.full(shape, 0.8, dtype=torch.float64, requires_grad=True)
    u = _t(d["u"])
    loss = tlt.combined_loss(system, u, _t(d["x0"], False), _t(d["ru"], False),
                             _t(d["rs"], False), weight=w, terminal_weight=wf, lengths=[4, 2, 3],
                             discount=0.9)
    loss.backward()
    r = ref.combined_loss_ref(system.Ad, system.Bd, d["u"], d["x0"], d["ru"], d["rs"], 0.3,
                              terminal_weight=0.8, lengths=[4, 2, 3], discount=0.9)
    assert w.grad is not None and wf.grad is not None
    assert w.grad.shape == shape and w.grad.dtype == torch.float32
    assert w.grad.item() == pytest.approx(r["trajectory"], rel=1e-6)
    assert wf.grad.item() == pytest.approx(r["terminal"], rel=1e-12)
    # the weight is a float32 tensor, cast to float64 for the core: value as for 0.3f
    np.testing.assert_allclose(u.grad.numpy(), ref.combined_loss_ref(
        system.Ad, system.Bd, d["u"], d["x0"], d["ru"], d["rs"], float(np.float32(0.3)),
        terminal_weight=0.8, lengths=[4, 2, 3], discount=0.9)["grad"], rtol=1e-11, atol=1e-14)


def test_reference_gradients_match_the_numpy_loops(system):
    # first-order gradients of the references (new), against the reference's
    # own formula: d/dref = -d/dpred of each term
    d = make_data(system, "huber", seed=14)
    ru, rs, tg = _t(d["ru"]), _t(d["rs"]), _t(d["target"])
    kw = dict(discount=0.7, lengths=[4, 2, 3], penalty="huber", delta=d["delta"])
    loss = tlt.combined_loss(system, _t(d["u"], False), _t(d["x0"], False), ru, rs, weight=0.4,
                             terminal_weight=0.6, terminal_target=tg, **kw)
    loss.backward()
    c = ref.control_loss_ref(d["u"], d["ru"], **kw)
    np.testing.assert_allclose(ru.grad.numpy(), -c["grad"], rtol=1e-12, atol=1e-15)
    _, gX = ref._trajectory_parts(system.Ad, system.Bd, d["u"], d["x0"], d["rs"], False, None,
                                  0.7, [4, 2, 3], None, "huber", d["delta"])
    np.testing.assert_allclose(rs.grad.numpy(), -0.4 * gX, rtol=1e-12, atol=1e-15)
    _, gF = ref._terminal_parts(system.Ad, system.Bd, d["u"], d["x0"], d["target"], [4, 2, 3],
                                None, None, "huber", d["delta"])
    expected = np.stack([gF[b, L] for b, L in enumerate([4, 2, 3])])
    np.testing.assert_allclose(tg.grad.numpy(), -0.6 * expected, rtol=1e-12, atol=1e-15)


def test_float32_reference_gradients(system):
    d = make_data(system, "mse", seed=15)
    grads = []
    for dtype in (torch.float32, torch.float64):
        rs = torch.tensor(d["rs"], dtype=dtype, requires_grad=True)
        tlt.trajectory_loss(system, torch.tensor(d["u"], dtype=dtype),
                            torch.tensor(d["x0"], dtype=dtype), rs, discount=0.9).backward()
        assert rs.grad.dtype == dtype
        grads.append(rs.grad.double())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_padding_never_reaches_a_gradient(system):
    # NaN in the padded steps (check_finite=False): first and second order
    # gradients of the references and controls are those of finite padding
    d = make_data(system, "mse", seed=16)
    out = []
    for fill in (0.0, math.nan):
        u = d["u"].copy()
        u[1, 2:] = fill
        rs = d["rs"].copy()
        rs[1, 3:] = fill
        ut, rst = _t(u), _t(rs)
        loss = tlt.combined_loss(system, ut, _t(d["x0"], False), _t(d["ru"], False), rst,
                                 weight=0.5, terminal_weight=0.5, lengths=[4, 2, 3],
                                 check_finite=False)
        gu, grs = torch.autograd.grad(loss, (ut, rst), create_graph=True)
        (h,) = torch.autograd.grad(gu.sum() + grs.sum(), ut)
        out.append((loss.detach(), gu.detach(), grs.detach(), h))
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=False)


def test_gradient_accumulation_over_two_module_calls(system):
    # the module's weights buffer changes in place at every call: not saved
    # for backward, so two calls before one backward still work
    d = make_data(system, "mse", seed=17)
    loss_fn = tlt.CombinedLoss(system, weight=weighting.Adaptive())
    u = _t(d["u"])
    args = (_t(d["x0"], False), _t(d["ru"], False), _t(d["rs"], False))
    l1 = loss_fn(u, *args)
    w1 = loss_fn.components.weight
    l2 = loss_fn(u, *args)
    w2 = loss_fn.components.weight
    assert w1 != w2
    (l1 + l2).backward()
    expected = sum(ref.combined_loss_ref(system.Ad, system.Bd, d["u"], d["x0"], d["ru"],
                                         d["rs"], w)["grad"] for w in (w1, w2))
    np.testing.assert_allclose(u.grad.numpy(), expected, rtol=1e-11, atol=1e-14)


# ---- devices -----------------------------------------------------------------

def _calls(system):
    return {
        "rollout": (lambda a: tlt.rollout(system, a["x0"], a["u"]), ("x0", "u")),
        "control_loss": (lambda a: tlt.control_loss(a["u"], a["ru"]), ("u", "ru")),
        "trajectory_loss": (lambda a: tlt.trajectory_loss(system, a["u"], a["x0"], a["rs"]),
                            ("u", "x0", "rs")),
        "terminal_loss": (lambda a: tlt.terminal_loss(system, a["u"], a["x0"], a["target"]),
                          ("u", "x0", "target")),
        "combined_loss": (lambda a: tlt.combined_loss(
            system, a["u"], a["x0"], a["ru"], a["rs"], weight=a["w"], terminal_target=a["target"]),
            ("u", "x0", "ru", "rs", "target", "w")),
    }


ARG_NAMES = {"u": ("controls", "pred"), "x0": ("x0",), "ru": ("target", "ref_controls"),
             "rs": ("ref_states",), "target": ("target", "terminal_target"),
             "w": ("weight",)}


def _tensors(system, device="cpu"):
    d = make_data(system, "mse", seed=18)
    a = {k: torch.tensor(d[k], device=device) for k in ("u", "x0", "ru", "rs", "target")}
    a["w"] = torch.tensor(0.3, dtype=torch.float64, device=device)
    return a


@pytest.mark.parametrize("fname", ["rollout", "control_loss", "trajectory_loss",
                                   "terminal_loss", "combined_loss"])
def test_all_meta_inputs_give_meta_outputs_of_the_right_shape(system, fname):
    f, _ = _calls(system)[fname]
    out = f(_tensors(system, "meta"))
    assert out.device.type == "meta"
    assert out.shape == ((B, T + 1, N) if fname == "rollout" else ())


@pytest.mark.parametrize("fname", ["rollout", "control_loss", "trajectory_loss",
                                   "terminal_loss", "combined_loss"])
def test_mixed_meta_and_cpu_inputs_raise_naming_the_argument(system, fname):
    f, keys = _calls(system)[fname]
    for key in keys:
        a = _tensors(system)
        a[key] = a[key].to("meta")
        with pytest.raises(ValueError, match=r"is on (meta|cpu) but .* is on (cpu|meta): "
                                             r"all tensor arguments .* on one device") as e:
            f(a)
        # the message names the moved argument and says it is on meta
        names = "|".join(ARG_NAMES[key])
        assert re.search(rf"\b({names}) is on meta", str(e.value)), str(e.value)


def test_combined_module_on_meta(system):
    loss_fn = tlt.CombinedLoss(system, weight=weighting.Adaptive()).to("meta")
    a = _tensors(system)
    with pytest.raises(ValueError, match=r"controls is on cpu .*CombinedLoss.* on meta"):
        loss_fn(a["u"], a["x0"], a["ru"], a["rs"])
    m = _tensors(system, "meta")
    for _ in range(2):  # the second call must not try to read the first's terms
        out = loss_fn(m["u"], m["x0"], m["ru"], m["rs"])
        assert out.device.type == "meta" and out.shape == ()
        assert loss_fn.components is None  # no numbers on meta


def test_direct_operator_call_with_mixed_devices(system):
    a = _tensors(system)
    Ad = torch.tensor(system.Ad)
    with pytest.raises(ValueError, match=r"Bd is on meta but x0 is on cpu"):
        torch.ops.trajloss.rollout(Ad, torch.tensor(system.Bd, device="meta"), None, a["x0"],
                                   a["u"], 0)
    with pytest.raises(ValueError, match=r"weights is on meta but controls is on cpu"):
        torch.ops.trajloss.rollout_loss(Ad, torch.tensor(system.Bd), None, a["u"], a["x0"],
                                        a["ru"], a["rs"], None,
                                        torch.tensor([1.0, 0.3, 0.0], device="meta"), None,
                                        None, None, None, 7, [1.0], "mse")


# ---- bad weights and options ----------------------------------------------------

@pytest.mark.parametrize("name", ["weight", "terminal_weight"])
@pytest.mark.parametrize("value", [-1.0, math.nan, math.inf, 10 ** 400])
def test_bad_weight_names_the_argument_and_the_limit(system, name, value):
    a = _tensors(system)
    kw = {"weight": 0.3, name: value}
    msg = rf"\b{name} must be finite and >= 0"
    with pytest.raises(ValueError, match=msg):
        tlt.combined_loss(system, a["u"], a["x0"], a["ru"], a["rs"], **kw)
    with pytest.raises(ValueError, match=msg):
        tlt.CombinedLoss(system, **kw)
    if value != 10 ** 400:
        kw[name] = torch.tensor(value, requires_grad=True)
        with pytest.raises(ValueError, match=msg + rf", got {value}"):
            tlt.combined_loss(system, a["u"], a["x0"], a["ru"], a["rs"], **kw)


def test_weight_tensor_shape_dtype_and_module_buffer_errors(system):
    a = _tensors(system)
    call = lambda **kw: tlt.combined_loss(system, a["u"], a["x0"], a["ru"], a["rs"],  # noqa
                                          **{"weight": 0.3, **kw})
    with pytest.raises(ValueError, match=r"weight must be a number or a one-element tensor"):
        call(weight=torch.ones(2))
    with pytest.raises(TypeError, match=r"terminal_weight must be a real tensor"):
        call(terminal_weight=torch.tensor(True))
    loss_fn = tlt.CombinedLoss(system, weight=0.3)
    loss_fn.weights[2] = -2.0  # a user editing the buffer
    with pytest.raises(ValueError, match=r"terminal_weight must be finite and >= 0, got -2.0"):
        loss_fn(a["u"], a["x0"], a["ru"], a["rs"])
    with pytest.raises(ValueError, match=r"weight is a tensor that requires grad.*combined_loss"):
        tlt.CombinedLoss(system, weight=torch.tensor(0.3, requires_grad=True))


@pytest.mark.parametrize("option", ["discount", "delta"])
def test_option_tensor_requiring_grad_is_refused(option):
    u = torch.ones(2, 3, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match=rf"{option} is a tensor that requires grad"):
        tlt.control_loss(u, u * 0, penalty="huber",
                         **{option: torch.tensor(0.5, dtype=torch.float64, requires_grad=True)})


# ---- check_finite -------------------------------------------------------------

def test_check_finite_is_accepted_and_passed_to_the_core(system):
    a = _tensors(system)
    a["u"][0, 1, 0] = math.nan
    for fname, (f, _) in _calls(system).items():
        with pytest.raises(ValueError, match=r"NaN or inf( at a step the loss reads)?; pass check_finite=False"):
            f(a)
    assert torch.isnan(tlt.rollout(system, a["x0"], a["u"], check_finite=False)[0, 2:]).all()
    assert torch.isnan(tlt.control_loss(a["u"], a["ru"], check_finite=False))
    for loss in (tlt.trajectory_loss(system, a["u"], a["x0"], a["rs"], check_finite=False),
                 tlt.terminal_loss(system, a["u"], a["x0"], a["target"], check_finite=False),
                 tlt.combined_loss(system, a["u"], a["x0"], a["ru"], a["rs"], weight=0.3,
                                   check_finite=False),
                 tlt.CombinedLoss(system, weight=0.3, check_finite=False)(
                     a["u"], a["x0"], a["ru"], a["rs"]),
                 tlt.ControlLoss(check_finite=False)(a["u"], a["ru"])):
        assert torch.isnan(loss)
    with pytest.raises(TypeError, match=r"check_finite must be True or False"):
        tlt.control_loss(a["u"], a["ru"], check_finite="no")


# ---- state_dict: resume gives the uninterrupted run -------------------------------

def _training(system, steps, *, resume_at=None, nested=False):
    """Train a small policy with an Adaptive CombinedLoss; with resume_at,
    save everything after that many steps, rebuild from scratch, load, go on."""
    data = trajloss.make_dataset(system, 32, T, x0_low=[-1, -1], x0_high=[1, 1], seed=3)
    x0 = torch.tensor(data.x0)
    ru, rs = torch.tensor(data.controls), torch.tensor(data.states)

    def build():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(),
                                    torch.nn.Linear(16, T)).double()
        loss_fn = tlt.CombinedLoss(system, weight=weighting.Adaptive(momentum=0.5))
        holder = torch.nn.ModuleDict({"policy": model, "loss": loss_fn}) if nested else None
        return model, loss_fn, torch.optim.Adam(model.parameters(), lr=3e-2), holder

    model, loss_fn, opt, holder = build()
    losses = []
    for step in range(steps):
        if step == resume_at:
            buf = io.BytesIO()
            torch.save({"model": (holder or model).state_dict(),
                        "loss": None if nested else loss_fn.state_dict(),
                        "opt": opt.state_dict()}, buf)
            buf.seek(0)
            model, loss_fn, opt, holder = build()
            state = torch.load(buf, weights_only=True)
            (holder or model).load_state_dict(state["model"])
            if not nested:
                loss_fn.load_state_dict(state["loss"])
            opt.load_state_dict(state["opt"])
        opt.zero_grad()
        loss = loss_fn(model(x0).unsqueeze(-1), x0, ru, rs)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("nested", [False, True])
def test_state_dict_resume_gives_the_uninterrupted_losses(system, nested):
    uninterrupted = _training(system, 12)
    resumed = _training(system, 12, resume_at=6, nested=nested)
    assert len(set(uninterrupted)) == 12  # the weight and the loss really change
    assert resumed == uninterrupted  # exactly, step for step


def test_extra_state_round_trip_and_validation(system):
    a = _tensors(system)
    src = tlt.CombinedLoss(system, weight=weighting.Adaptive(momentum=0.5))
    for _ in range(3):
        src(a["u"], a["x0"], a["ru"], a["rs"])
    state = src.state_dict()
    dst = tlt.CombinedLoss(system, weight=weighting.Adaptive(momentum=0.5))
    dst.load_state_dict(state)
    assert dst.components == src.components
    assert dst.strategy.state_dict() == src.strategy.state_dict()
    good = state["_extra_state"]
    bad_cases = [
        ("not a dict", TypeError, r"extra state must be a dict"),
        ({**good, "extra": 1}, ValueError, r"must have the keys"),
        ({**good, "version": 99}, ValueError, r"version must be 1"),
        ({**good, "strategy": "Fixed"}, ValueError, r"'Fixed' weighting strategy.*'Adaptive'"),
        ({**good, "last": [1.0, 2.0]}, ValueError, r"'last' must be None or 7 finite"),
        ({**good, "last": [math.nan] * 7}, ValueError, r"'last' must be None or 7 finite"),
        ({**good, "last": [-1.0] * 7}, ValueError, r"'last' must be >= 0"),
        ({**good, "observed": "yes"}, TypeError, r"'observed' must be a bool"),
        ({**good, "epoch": "3"}, TypeError, r"'epoch' must be None or a number"),
        ({**good, "strategy_state": [1]}, TypeError, r"'strategy_state' must be a dict"),
        ({**good, "strategy_state": {"nonsense": 1}}, ValueError, r"Adaptive state"),
    ]
    fresh = tlt.CombinedLoss(system, weight=weighting.Adaptive(momentum=0.5))
    before = fresh.strategy.state_dict()
    for extra, exc, msg in bad_cases:
        with pytest.raises(exc, match=msg):
            fresh.load_state_dict({**state, "_extra_state": extra})
        assert fresh.strategy.state_dict() == before and fresh.components is None
    # a state saved without the extra state (older files) is reported as missing
    with pytest.raises(RuntimeError, match=r"Missing key.*_extra_state"):
        fresh.load_state_dict({"weights": state["weights"]})
