"""trajloss.jax against jax.numpy references (autodiff through lax.scan),
under jit, grad and vmap, in float32 and float64."""
import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

import trajloss  # noqa: E402
import trajloss.jax as tlj  # noqa: E402

B, T = 4, 6


@pytest.fixture
def system():
    return trajloss.LinearSystem.from_continuous([[0.0, 1.0], [-2.0, -0.3]], [[0.0], [1.0]], 0.2)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return dict(x0=rng.normal(size=(B, 2)), u=rng.normal(size=(B, T, 1)),
                ru=rng.normal(size=(B, T, 1)), rs=rng.normal(size=(B, T + 1, 2)),
                lengths=np.array([T, 3, 1, 5]))


def ref_rollout(system, x0, u):
    Ad, Bd = jnp.asarray(system.Ad, x0.dtype), jnp.asarray(system.Bd, x0.dtype)

    def step(x, uk):
        nxt = x @ Ad.T + uk @ Bd.T
        return nxt, nxt

    _, xs = jax.lax.scan(step, x0, jnp.swapaxes(u, 0, 1))
    return jnp.concatenate([x0[:, None], jnp.swapaxes(xs, 0, 1)], axis=1)


def ref_weights(discount, lengths, shift):
    g = 1.0 if discount is None else discount
    j = jnp.arange(T + shift)
    valid = ((j[None] - shift) < lengths[:, None]) & (lengths[:, None] > 0)
    p = jnp.where(valid, g ** j[None], 0.0)
    return p * valid.sum(1, keepdims=True) / p.sum(1, keepdims=True)


def ref_combined(system, u, x0, ru, rs, weight, terminal_weight, discount, lengths, shift):
    ru, rs = jnp.asarray(ru), jnp.asarray(rs)
    X = ref_rollout(system, x0, u)
    n_valid = lengths.sum()
    control = (ref_weights(discount, lengths, 0) * ((u - ru) ** 2).mean(-1)).sum() / n_valid
    states, refs = (X, rs) if shift else (X[:, 1:], rs[:, 1:])
    traj = (ref_weights(discount, lengths, shift) * ((states - refs) ** 2).mean(-1)).sum()
    traj = traj / (n_valid + shift * (lengths > 0).sum())
    idx = jnp.arange(B)
    keep = lengths > 0
    err = ((X[idx, lengths] - rs[idx, lengths]) ** 2).mean(-1)
    terminal = jnp.where(keep, err, 0.0).sum() / keep.sum()
    return control + weight * traj + terminal_weight * terminal


@pytest.mark.parametrize("discount", [None, 0.6])
@pytest.mark.parametrize("shift", [0, 1])
def test_combined_value_and_grad_under_jit(system, data, discount, shift):
    L = jnp.asarray(data["lengths"])
    ours = jax.jit(jax.value_and_grad(
        lambda u, x0: tlj.combined_loss(system, u, x0, data["ru"], data["rs"], weight=0.3,
                                        terminal_weight=0.7, discount=discount, lengths=L,
                                        include_initial=bool(shift)), argnums=(0, 1)))
    ref = jax.jit(jax.value_and_grad(
        lambda u, x0: ref_combined(system, u, x0, data["ru"], data["rs"], 0.3, 0.7, discount,
                                   L, shift), argnums=(0, 1)))
    (v1, g1), (v2, g2) = ours(data["u"], data["x0"]), ref(data["u"], data["x0"])
    np.testing.assert_allclose(v1, v2, rtol=1e-12)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)


def test_rollout_and_control_loss(system, data):
    w = np.random.default_rng(1).normal(size=(B, T + 1, 2))
    f1 = jax.jit(jax.value_and_grad(lambda u, x: jnp.sum(w * tlj.rollout(system, x, u)), (0, 1)))
    f2 = jax.jit(jax.value_and_grad(lambda u, x: jnp.sum(w * ref_rollout(system, x, u)), (0, 1)))
    (v1, g1), (v2, g2) = f1(data["u"], data["x0"]), f2(data["u"], data["x0"])
    np.testing.assert_allclose(v1, v2, rtol=1e-12)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    c1 = jax.jit(jax.grad(lambda p, t: tlj.control_loss(p, t, penalty="huber", delta=0.5), (0, 1)))
    huber = lambda r: jnp.where(jnp.abs(r) <= 0.5, 0.5 * r ** 2, 0.5 * (jnp.abs(r) - 0.25))
    c2 = jax.jit(jax.grad(lambda p, t: jnp.mean(huber(p - t)), (0, 1)))
    for a, b in zip(c1(data["u"], data["ru"]), c2(data["u"], data["ru"])):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_trajectory_and_terminal(system, data):
    X = ref_rollout(system, jnp.asarray(data["x0"]), jnp.asarray(data["u"]))
    t = tlj.trajectory_loss(system, data["u"], data["x0"], data["rs"])
    np.testing.assert_allclose(t, jnp.mean((X[:, 1:] - data["rs"][:, 1:]) ** 2), rtol=1e-12)
    f = tlj.terminal_loss(system, data["u"], data["x0"], data["rs"][:, -1])
    np.testing.assert_allclose(f, jnp.mean((X[:, -1] - data["rs"][:, -1]) ** 2), rtol=1e-12)


def test_float32(system, data):
    u, x0 = jnp.asarray(data["u"], jnp.float32), jnp.asarray(data["x0"], jnp.float32)
    ru, rs = jnp.asarray(data["ru"], jnp.float32), jnp.asarray(data["rs"], jnp.float32)
    v, g = jax.jit(jax.value_and_grad(
        lambda u: tlj.combined_loss(system, u, x0, ru, rs, weight=0.3)))(u)
    assert v.dtype == jnp.float32 and g.dtype == jnp.float32
    r = ref_combined(system, u.astype(jnp.float64), x0.astype(jnp.float64), ru.astype(jnp.float64),
                     rs.astype(jnp.float64), 0.3, 0.0, None, jnp.full(B, T), 0)
    np.testing.assert_allclose(v, r, rtol=1e-6)


def test_vmap_over_problems(system, data):
    us = jnp.stack([jnp.asarray(data["u"]), 2 * jnp.asarray(data["u"])])
    f = lambda u: tlj.combined_loss(system, u, data["x0"], data["ru"], data["rs"], weight=0.3)
    batched = jax.jit(jax.vmap(jax.grad(f)))(us)
    for k in range(2):
        np.testing.assert_allclose(batched[k], jax.grad(f)(us[k]), rtol=1e-13)


def test_bad_weight(system, data):
    with pytest.raises(ValueError, match="weight"):
        tlj.combined_loss(system, data["u"], data["x0"], data["ru"], data["rs"], weight=-1.0)


@pytest.mark.parametrize("shift", [0, 1])
def test_reference_and_weight_gradients_match_jax_numpy(system, data, shift):
    """∂/∂ref_controls, ∂/∂ref_states, ∂/∂weight, ∂/∂terminal_weight against autodiff
    of the jax.numpy reference (they were all zero before)."""
    L = jnp.asarray(data["lengths"])
    args = (jnp.asarray(data["ru"]), jnp.asarray(data["rs"]), jnp.asarray(0.3), jnp.asarray(0.7))
    ours = jax.jit(jax.grad(
        lambda ru, rs, w, tw: tlj.combined_loss(system, data["u"], data["x0"], ru, rs, weight=w,
                                                terminal_weight=tw, discount=0.6, lengths=L,
                                                include_initial=bool(shift)),
        argnums=(0, 1, 2, 3)))(*args)
    ref = jax.jit(jax.grad(
        lambda ru, rs, w, tw: ref_combined(system, jnp.asarray(data["u"]),
                                           jnp.asarray(data["x0"]), ru, rs, w, tw, 0.6, L, shift),
        argnums=(0, 1, 2, 3)))(*args)
    for a, b in zip(ours, ref):
        assert np.any(np.asarray(b) != 0)
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)
