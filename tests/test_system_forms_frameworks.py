"""trajloss.torch and trajloss.jax on every kind of linear system: the same system
objects as the NumPy API (per-sample, time-varying, offsets, batched
from_continuous); values and gradients equal the NumPy API's, the rollout
equals a NumPy loop, and gradcheck / check_grads in float64."""
import numpy as np
import pytest

import trajloss
from system_forms_reference import close, make_case, np_adjoint, np_rollout

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import trajloss.jax as tlj  # noqa: E402
import trajloss.torch as tlt  # noqa: E402

FORMS = ["lti-shared", "lti-psA", "lti-psAB-off", "lti-shared-psoff", "tv-shared-off",
         "tv-psAB-psoff", "tv-psB", "cont-psAB-dtvec"]
KINDS = ["trajectory", "terminal", "combined"]
EXACT = 1e-13  # same core, same numbers: equal to rounding


def data(case, seed=1):
    rng = np.random.default_rng([seed, case.B, case.T])
    B, T, n, m = case.B, case.T, case.n, case.m
    lengths = rng.integers(1, T + 1, B)
    return dict(x0=rng.standard_normal((B, n)), U=rng.standard_normal((B, T, m)),
                ref_controls=rng.standard_normal((B, T, m)),
                ref_states=2 * rng.standard_normal((B, T + 1, n)),
                target=rng.standard_normal((B, n)), lengths=lengths,
                state_weights=rng.uniform(0.2, 2, n), feature_weights=rng.uniform(0.2, 2, m))


def options(kind, d):
    kw = dict(lengths=d["lengths"], penalty="huber", delta=0.8, state_weights=d["state_weights"])
    if kind != "terminal":
        kw.update(discount=0.9, include_initial=True)
    if kind == "combined":
        kw.update(feature_weights=d["feature_weights"])
    return kw


def numpy_api(system, kind, d):
    kw = options(kind, d)
    if kind == "trajectory":
        return trajloss.trajectory_loss(system, d["U"], d["x0"], d["ref_states"], **kw)
    if kind == "terminal":
        return trajloss.terminal_loss(system, d["U"], d["x0"], d["target"], **kw)
    return trajloss.combined_loss(system, d["U"], d["x0"], d["ref_controls"], d["ref_states"],
                                  weight=0.7, terminal_weight=0.4, **kw)


def framework_loss(mod, system, kind, d, U, x0):
    """The loss of trajloss.torch or trajloss.jax (``mod``); arrays of d other
    than U and x0 passed as NumPy (constants)."""
    kw = options(kind, d)
    if mod is tlt:
        def conv(a):
            return torch.as_tensor(a, dtype=U.dtype)
        kw["lengths"] = torch.as_tensor(kw["lengths"])
    else:
        def conv(a):
            return jnp.asarray(a, U.dtype)
        kw["lengths"] = jnp.asarray(kw["lengths"])
    for k in ("state_weights", "feature_weights"):
        if k in kw:
            kw[k] = conv(kw[k])
    if kind == "trajectory":
        return mod.trajectory_loss(system, U, x0, conv(d["ref_states"]), **kw)
    if kind == "terminal":
        return mod.terminal_loss(system, U, x0, conv(d["target"]), **kw)
    return mod.combined_loss(system, U, x0, conv(d["ref_controls"]), conv(d["ref_states"]),
                             weight=0.7, terminal_weight=0.4, **kw)


# --------------------------------------------------------------------------
# torch
# --------------------------------------------------------------------------

@pytest.mark.parametrize("form", FORMS)
def test_torch_rollout(form):
    case = make_case(form, B=5, T=4)
    d = data(case)
    x0 = torch.tensor(d["x0"], requires_grad=True)
    U = torch.tensor(d["U"], requires_grad=True)
    X = tlt.rollout(case.system, x0, U)
    close(X.detach().numpy(), np_rollout(case.A, case.Bm, case.c, d["x0"], d["U"]), 1e-11)
    G = np.random.default_rng(3).standard_normal(X.shape)
    (X * torch.tensor(G)).sum().backward()
    gU, gx0 = np_adjoint(case.A, case.Bm, G)
    close(U.grad.numpy(), gU, 1e-11, "controls")
    close(x0.grad.numpy(), gx0, 1e-11, "x0")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("form", FORMS)
def test_torch_losses_equal_numpy_api(form, kind):
    case = make_case(form, B=6, T=5)
    d = data(case)
    want = numpy_api(case.system, kind, d)
    for dtype in (torch.float64, torch.float32):
        U = torch.tensor(d["U"], dtype=dtype, requires_grad=True)
        x0 = torch.tensor(d["x0"], dtype=dtype, requires_grad=True)
        value = framework_loss(tlt, case.system, kind, d, U, x0)
        value.backward()
        rtol = EXACT if dtype == torch.float64 else 1e-5
        close(value.item(), want.value, rtol, f"{dtype} value")
        close(U.grad.double().numpy(), want.grad, rtol, f"{dtype} grad controls")
        close(x0.grad.double().numpy(), want.grad_x0, rtol, f"{dtype} grad x0")


@pytest.mark.parametrize("form", ["lti-psA-psoff", "tv-psAB-psoff"])
def test_torch_gradcheck(form):
    case = make_case(form, B=3, T=3)
    d = data(case)
    U = torch.tensor(d["U"], requires_grad=True)
    x0 = torch.tensor(d["x0"], requires_grad=True)
    rs = torch.tensor(d["ref_states"], requires_grad=True)
    rc = torch.tensor(d["ref_controls"], requires_grad=True)
    lengths = torch.as_tensor(d["lengths"])

    def f(U, x0, rc, rs):
        return tlt.combined_loss(case.system, U, x0, rc, rs, weight=0.7, terminal_weight=0.4,
                                 lengths=lengths, discount=0.9, include_initial=True)

    assert torch.autograd.gradcheck(f, (U, x0, rc, rs))
    assert torch.autograd.gradcheck(lambda a, b: tlt.rollout(case.system, a, b), (x0, U))


@pytest.mark.parametrize("form", ["lti-psAB", "tv-psAB-psoff"])
def test_torch_modules_take_the_system(form):
    case = make_case(form, B=4, T=3)
    d = data(case)
    U, x0 = torch.tensor(d["U"]), torch.tensor(d["x0"])
    close(tlt.Rollout(case.system)(x0, U).numpy(),
          np_rollout(case.A, case.Bm, case.c, d["x0"], d["U"]), 1e-11, "Rollout")
    got = tlt.TrajectoryLoss(case.system)(U, x0, torch.tensor(d["ref_states"]))
    want = trajloss.trajectory_loss(case.system, d["U"], d["x0"], d["ref_states"])
    close(float(got), want.value, EXACT, "TrajectoryLoss")


def test_torch_mismatch_names_system():
    case = make_case("lti-psAB", B=4, T=3)
    tv = make_case("tv-psAB", B=4, T=3)
    d = data(make_case("lti-shared", B=5, T=4))
    U, x0 = torch.tensor(d["U"]), torch.tensor(d["x0"])
    for system in (case.system, tv.system):
        with pytest.raises(ValueError, match="system"):
            tlt.rollout(system, x0, U)
        with pytest.raises(ValueError, match="system"):
            tlt.trajectory_loss(system, U, x0, torch.tensor(d["ref_states"]))


# --------------------------------------------------------------------------
# JAX
# --------------------------------------------------------------------------

@pytest.mark.parametrize("form", FORMS)
def test_jax_rollout(form):
    case = make_case(form, B=5, T=4)
    d = data(case)
    G = np.random.default_rng(3).standard_normal((case.B, case.T + 1, case.n))
    X = tlj.rollout(case.system, jnp.asarray(d["x0"]), jnp.asarray(d["U"]))
    close(np.asarray(X), np_rollout(case.A, case.Bm, case.c, d["x0"], d["U"]), 1e-11)

    def f(x0, U):
        return jnp.sum(tlj.rollout(case.system, x0, U) * G)

    gx0, gU = jax.grad(f, argnums=(0, 1))(jnp.asarray(d["x0"]), jnp.asarray(d["U"]))
    wU, wx0 = np_adjoint(case.A, case.Bm, G)
    close(np.asarray(gU), wU, 1e-11, "controls")
    close(np.asarray(gx0), wx0, 1e-11, "x0")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("form", FORMS)
def test_jax_losses_equal_numpy_api(form, kind):
    case = make_case(form, B=6, T=5)
    d = data(case)
    want = numpy_api(case.system, kind, d)

    def f(U, x0):
        return framework_loss(tlj, case.system, kind, d, U, x0)

    for fn in (f, jax.jit(f)):
        value, (gU, gx0) = jax.value_and_grad(fn, argnums=(0, 1))(jnp.asarray(d["U"]),
                                                                  jnp.asarray(d["x0"]))
        close(float(value), want.value, EXACT, "value")
        close(np.asarray(gU), want.grad, EXACT, "grad controls")
        close(np.asarray(gx0), want.grad_x0, EXACT, "grad x0")
    value32 = f(jnp.asarray(d["U"], jnp.float32), jnp.asarray(d["x0"], jnp.float32))
    close(float(value32), want.value, 1e-5, "float32 value")


@pytest.mark.parametrize("form", ["lti-psA-psoff", "tv-psAB-psoff"])
def test_jax_check_grads(form):
    case = make_case(form, B=3, T=3)
    d = data(case)
    lengths = jnp.asarray(d["lengths"])

    def f(U, x0, rc, rs):
        return tlj.combined_loss(case.system, U, x0, rc, rs, weight=0.7, terminal_weight=0.4,
                                 lengths=lengths, discount=0.9, include_initial=True)

    args = tuple(jnp.asarray(d[k]) for k in ("U", "x0", "ref_controls", "ref_states"))
    check_grads(f, args, order=1, modes=("rev",), eps=1e-6, atol=1e-7, rtol=1e-6)
    check_grads(lambda a, b: tlj.rollout(case.system, a, b), args[1::-1], order=1,
                modes=("rev",), eps=1e-6)


def test_jax_mismatch_names_system():
    case = make_case("lti-psAB", B=4, T=3)
    tv = make_case("tv-psAB", B=4, T=3)
    d = data(make_case("lti-shared", B=5, T=4))
    U, x0 = jnp.asarray(d["U"]), jnp.asarray(d["x0"])
    for system in (case.system, tv.system):
        with pytest.raises(ValueError, match="system"):
            tlj.rollout(system, x0, U)
        with pytest.raises(ValueError, match="system"):
            tlj.trajectory_loss(system, U, x0, jnp.asarray(d["ref_states"]))
