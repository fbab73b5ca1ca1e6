"""trajloss.jax gradients for every loss and every differentiable argument,
against plain NumPy loops (values) and their central finite differences
(gradients), and jax.test_util.check_grads in both modes; zero gradient on
padding; sharded inputs and shard_map (4 host devices, in a subprocess);
bounded memory over many eager calls and many systems; error messages."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import trajloss  # noqa: E402
import trajloss.jax as tlj  # noqa: E402

B, T, N, M = 3, 5, 3, 2
DELTA = 0.8
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the folder holding the trajloss package this test run imports (site-packages or src/)
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(trajloss.__file__)))

A_CONT = [[0.0, 1.0, 0.0], [-1.0, -0.2, 0.5], [0.3, 0.0, -0.5]]
B_CONT = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]


def make_system():
    return trajloss.LinearSystem.from_continuous(A_CONT, B_CONT, 0.3)


# ---- plain NumPy reference ------------------------------------------------------------

def rho(r, penalty):
    if penalty == "mse":
        return r * r
    if penalty == "l1":
        return abs(r)
    return 0.5 * r * r if abs(r) <= DELTA else DELTA * (abs(r) - 0.5 * DELTA)


def np_valid(lengths, mask, rows, steps):
    if lengths is not None:
        return np.arange(steps)[None, :] < np.asarray(lengths)[:, None]
    if mask is not None:
        return np.asarray(mask, dtype=bool)
    return np.ones((rows, steps), dtype=bool)


def np_sequence_loss(P, R, valid, discount, penalty, f):
    """Σ_b Σ_{t∈S_b} γ^t |S_b| / Σ_{s∈S_b} γ^s · mean_d f_d ρ(P − R) / Σ_b |S_b|, by loops."""
    g = 1.0 if discount is None else discount
    num, count = 0.0, 0
    for b in range(P.shape[0]):
        steps = [t for t in range(P.shape[1]) if valid[b, t]]
        count += len(steps)
        z = sum(g ** t for t in steps)
        for t in steps:
            e = sum(f[d] * rho(P[b, t, d] - R[b, t, d], penalty)
                    for d in range(P.shape[2])) / P.shape[2]
            num += g ** t * len(steps) / z * e
    return num / count


def np_rollout(Ad, Bd, x0, u):
    X = np.zeros((u.shape[0], u.shape[1] + 1, Ad.shape[0]))
    X[:, 0] = x0
    for b in range(u.shape[0]):
        for t in range(u.shape[1]):
            X[b, t + 1] = Ad @ X[b, t] + Bd @ u[b, t]
    return X


def np_trajectory(X, rs, valid, include_initial, discount, penalty, s):
    if include_initial:
        valid = np.concatenate([valid.any(axis=1)[:, None], valid], axis=1)
        return np_sequence_loss(X, rs, valid, discount, penalty, s)
    return np_sequence_loss(X[:, 1:], rs[:, 1:], valid, discount, penalty, s)


def np_terminal(X, target, rs, valid, penalty, s):
    total, count = 0.0, 0
    for b in range(X.shape[0]):
        steps = np.flatnonzero(valid[b])
        if len(steps) == 0:
            continue
        final = steps[-1] + 1
        tgt = rs[b, final] if target is None else target[b]
        total += sum(s[d] * rho(X[b, final, d] - tgt[d], penalty)
                     for d in range(X.shape[2])) / X.shape[2]
        count += 1
    return total / count


def np_loss(kind, a, o):
    """The reference loss of ``kind`` for the arrays ``a`` and the options ``o``."""
    first = a["pred"] if kind == "control" else a["controls"]
    valid = np_valid(o.get("lengths"), o.get("mask"), *first.shape[:2])
    pen, disc = o["penalty"], o.get("discount")
    if kind == "control":
        return np_sequence_loss(a["pred"], a["target"], valid, disc, pen, a["feature_weights"])
    system = make_system()
    X = np_rollout(system.Ad, system.Bd, a["x0"], a["controls"])
    if kind == "trajectory":
        return np_trajectory(X, a["ref_states"], valid, o.get("include_initial", False), disc,
                             pen, a["state_weights"])
    if kind == "terminal":
        return np_terminal(X, a["target"], None, valid, pen, a["state_weights"])
    control = np_sequence_loss(a["controls"], a["ref_controls"], valid, disc, pen,
                               a["feature_weights"])
    traj = np_trajectory(X, a["ref_states"], valid, o.get("include_initial", False), disc, pen,
                         a["state_weights"])
    term = np_terminal(X, a.get("terminal_target"), a["ref_states"], valid, pen,
                       a["state_weights"])
    return control + float(a["weight"]) * traj + float(a["terminal_weight"]) * term


def fd_grad(f, a, name, h=1e-6):
    """Central finite differences of the NumPy reference, element by element."""
    x = np.array(a[name], dtype=np.float64)
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        g[idx] = (f({**a, name: xp}) - f({**a, name: xm})) / (2 * h)
    return g


# ---- the cases ----------------------------------------------------------------------------

ARGS = {
    "control": ("pred", "target", "feature_weights"),
    "trajectory": ("controls", "x0", "ref_states", "state_weights"),
    "terminal": ("controls", "x0", "target", "state_weights"),
    "combined": ("controls", "x0", "ref_controls", "ref_states", "terminal_target", "weight",
                 "terminal_weight", "feature_weights", "state_weights"),
    "combined_default_target": ("controls", "x0", "ref_controls", "ref_states", "weight",
                                "terminal_weight", "feature_weights", "state_weights"),
}
CONFIGS = ("all_steps", "lengths_discount", "mask_initial")
PENALTIES = ("mse", "l1", "huber")


def make_case(kind, penalty, config, seed=0):
    rng = np.random.default_rng(seed)
    u, ru = rng.normal(size=(B, T, M)), rng.normal(size=(B, T, M))
    x0, rs = rng.normal(size=(B, N)), rng.normal(size=(B, T + 1, N))
    target = rng.normal(size=(B, N))
    everything = dict(controls=u, pred=u, x0=x0, ref_controls=ru, target=target,
                      terminal_target=target, ref_states=rs,
                      feature_weights=rng.uniform(0.5, 1.5, M),
                      state_weights=rng.uniform(0.5, 1.5, N),
                      weight=np.float64(0.4), terminal_weight=np.float64(0.6))
    if kind == "control":
        everything["target"] = ru
    a = {k: everything[k] for k in ARGS[kind]}
    o = {"penalty": penalty}
    if config == "lengths_discount":
        o.update(lengths=np.array([T, 3, 1]), discount=0.7)
    elif config == "mask_initial":
        o.update(mask=np.array([[1, 0, 1, 1, 0], [0, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool),
                 discount=1.3)
        if kind in ("trajectory", "combined", "combined_default_target"):
            o["include_initial"] = True
    # keep every residual the loss can read away from the penalty's kinks
    X = np_rollout(make_system().Ad, make_system().Bd, x0, u)
    res = np.concatenate([(u - ru).ravel(), (X - rs).ravel(),
                          (X - target[:, None]).ravel()])
    assert np.abs(res).min() > 1e-4 and np.abs(np.abs(res) - DELTA).min() > 1e-4
    return a, o


def call_jax(kind, a, o):
    """The trajloss.jax loss of ``kind`` on the arrays ``a`` (any of them traced)."""
    system = make_system()
    common = dict(penalty=o["penalty"], delta=DELTA, lengths=o.get("lengths"),
                  mask=o.get("mask"))
    if kind == "control":
        return tlj.control_loss(a["pred"], a["target"], feature_weights=a["feature_weights"],
                                discount=o.get("discount"), **common)
    if kind == "trajectory":
        return tlj.trajectory_loss(system, a["controls"], a["x0"], a["ref_states"],
                                   state_weights=a["state_weights"], discount=o.get("discount"),
                                   include_initial=o.get("include_initial", False), **common)
    if kind == "terminal":
        return tlj.terminal_loss(system, a["controls"], a["x0"], a["target"],
                                 state_weights=a["state_weights"], **common)
    return tlj.combined_loss(system, a["controls"], a["x0"], a["ref_controls"], a["ref_states"],
                             weight=jnp.asarray(a["weight"]),
                             terminal_weight=jnp.asarray(a["terminal_weight"]),
                             terminal_target=a.get("terminal_target"),
                             feature_weights=a["feature_weights"],
                             state_weights=a["state_weights"], discount=o.get("discount"),
                             include_initial=o.get("include_initial", False), **common)


def as_function(kind, a, o):
    names = ARGS[kind]

    def f(*xs):
        return call_jax(kind, {**a, **dict(zip(names, xs))}, o)

    return f, tuple(jnp.asarray(a[k]) for k in names)


CASES = [(k, p, c) for k in ARGS for p in PENALTIES for c in CONFIGS]


@pytest.mark.parametrize("kind,penalty,config", CASES)
def test_value_and_every_gradient_against_numpy(kind, penalty, config):
    a, o = make_case(kind, penalty, config)
    f, xs = as_function(kind, a, o)
    value, grads = jax.value_and_grad(f, argnums=tuple(range(len(xs))))(*xs)
    np.testing.assert_allclose(value, np_loss(kind, a, o), rtol=1e-12)
    for name, g in zip(ARGS[kind], grads):
        expected = fd_grad(lambda b: np_loss(kind, b, o), a, name)
        assert g.shape == np.shape(a[name]) and g.dtype == jnp.float64, name
        np.testing.assert_allclose(g, expected, rtol=1e-6, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("kind,penalty,config", CASES)
def test_check_grads_both_modes(kind, penalty, config):
    a, o = make_case(kind, penalty, config)
    f, xs = as_function(kind, a, o)
    check_grads(f, xs, order=1, modes=("rev", "fwd"), eps=1e-6, atol=1e-7, rtol=1e-6)
    jitted = jax.jit(f)
    check_grads(jitted, xs, order=1, modes=("rev",), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_reference_gradient_is_minus_prediction_gradient_for_mse():
    """MSE: ∂ℓ/∂ref_controls = −∂ℓ_control/∂controls, a closed form: −2 w (u − r) / (D N)."""
    a, o = make_case("combined", "mse", "lengths_discount")
    g = jax.grad(lambda r: call_jax("combined", {**a, "ref_controls": r}, o))(a["ref_controls"])
    w = np.asarray(trajloss.time_weights(T, o["discount"], o["lengths"]))
    closed = -2 * w[..., None] * a["feature_weights"] * (a["controls"] - a["ref_controls"]) \
        / (M * np.sum(o["lengths"]))
    np.testing.assert_allclose(g, closed, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kind", ["combined", "combined_default_target", "trajectory"])
def test_padding_gets_zero_gradient_and_is_never_read(kind):
    a, o = make_case(kind, "huber", "lengths_discount")
    names = [k for k in ("controls", "x0", "ref_controls", "ref_states", "terminal_target")
             if k in a]
    f = jax.value_and_grad(lambda *xs: call_jax(kind, {**a, **dict(zip(names, xs))}, o),
                           argnums=tuple(range(len(names))))
    value, grads = f(*(a[k] for k in names))
    g = dict(zip(names, grads))
    lengths = o["lengths"]
    for b, L in enumerate(lengths):
        for k in ("controls", "ref_controls"):
            if k in g:
                assert np.all(np.asarray(g[k])[b, L:] == 0), (k, b)
        assert np.all(np.asarray(g["ref_states"])[b, L + 1:] == 0), b
        assert np.all(np.asarray(g["ref_states"])[b, 0] == 0), b  # state 0 is not scored
    # other (finite) padding values: the same value and gradients, bit for bit
    rng = np.random.default_rng(5)
    b2 = dict(a)
    for k in ("controls", "ref_controls", "ref_states"):
        if k in b2:
            arr = np.array(b2[k])
            for b, L in enumerate(lengths):
                shift = 1 if k == "ref_states" else 0
                arr[b, L + shift:] = 1e3 * rng.normal(size=arr[b, L + shift:].shape)
            b2[k] = arr
    value2, grads2 = f(*(b2[k] for k in names))
    assert value2 == value
    for k, g1, g2 in zip(names, grads, grads2):
        if k in ("controls", "ref_controls"):  # compare the valid part
            for b, L in enumerate(lengths):
                np.testing.assert_array_equal(np.asarray(g1)[b, :L], np.asarray(g2)[b, :L])
        else:
            np.testing.assert_array_equal(g1, g2)


def test_weight_gradient_is_the_raw_term():
    a, o = make_case("combined", "mse", "all_steps")
    system = make_system()
    X = np_rollout(system.Ad, system.Bd, a["x0"], a["controls"])
    valid = np_valid(None, None, B, T)
    traj = np_trajectory(X, a["ref_states"], valid, False, None, "mse", a["state_weights"])
    term = np_terminal(X, a["terminal_target"], a["ref_states"], valid, "mse",
                       a["state_weights"])
    gw, gt = jax.grad(lambda w, t: call_jax("combined", {**a, "weight": w, "terminal_weight": t},
                                              o), argnums=(0, 1))(jnp.asarray(0.4),
                                                                  jnp.asarray(0.6))
    np.testing.assert_allclose(gw, traj, rtol=1e-12)
    np.testing.assert_allclose(gt, term, rtol=1e-12)
    # a float32 weight gets a float32 gradient
    g32 = jax.grad(lambda w: call_jax("combined", {**a, "weight": w}, o))(jnp.float32(0.4))
    assert g32.dtype == jnp.float32
    np.testing.assert_allclose(g32, traj, rtol=1e-6)


def test_unbatched_gradients():
    """(T, m) controls and (n,) states: the gradients of the one sequence."""
    a, o = make_case("combined", "huber", "all_steps")
    batched = ("controls", "x0", "ref_controls", "ref_states", "terminal_target")
    one = {k: (v[1] if k in batched else v) for k, v in a.items()}
    ref = lambda d: np_loss("combined", {k: (v[None] if k in batched else v)  # noqa: E731
                                         for k, v in d.items()}, o)
    f, xs = as_function("combined", one, o)
    value, grads = jax.value_and_grad(f, argnums=tuple(range(len(xs))))(*xs)
    np.testing.assert_allclose(value, ref(one), rtol=1e-12)
    for name, g in zip(ARGS["combined"], grads):
        np.testing.assert_allclose(g, fd_grad(ref, one, name), rtol=1e-6, atol=1e-8,
                                   err_msg=name)


def test_reference_gradients_under_jit_and_vmap():
    a, o = make_case("combined", "huber", "mask_initial")
    f = lambda rs: call_jax("combined", {**a, "ref_states": rs}, o)  # noqa: E731
    expected = fd_grad(lambda b: np_loss("combined", b, o), a, "ref_states")
    np.testing.assert_allclose(jax.jit(jax.grad(f))(a["ref_states"]), expected,
                               rtol=1e-6, atol=1e-8)
    stacked = jnp.stack([a["ref_states"], a["ref_states"] + 0.5])
    batched = jax.jit(jax.vmap(jax.grad(f)))(stacked)
    shifted = fd_grad(lambda b: np_loss("combined", b, o),
                      {**a, "ref_states": a["ref_states"] + 0.5}, "ref_states")
    np.testing.assert_allclose(batched[0], expected, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(batched[1], shifted, rtol=1e-6, atol=1e-8)


def test_rollout_reverse_mode_and_forward_mode_error():
    rng = np.random.default_rng(3)
    system = make_system()
    x0, u = rng.normal(size=(B, N)), rng.normal(size=(B, T, M))
    W = rng.normal(size=(B, T + 1, N))

    def f(x0, u):
        return jnp.sum(W * tlj.rollout(system, x0, u))

    ref = lambda d: np.sum(W * np_rollout(system.Ad, system.Bd, d["x0"], d["u"]))  # noqa: E731
    np.testing.assert_allclose(f(x0, u), ref(dict(x0=x0, u=u)), rtol=1e-12)
    gx, gu = jax.grad(f, argnums=(0, 1))(x0, u)
    np.testing.assert_allclose(gx, fd_grad(ref, dict(x0=x0, u=u), "x0"), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(gu, fd_grad(ref, dict(x0=x0, u=u), "u"), rtol=1e-7, atol=1e-9)
    check_grads(f, (x0, u), order=1, modes=("rev",), eps=1e-6)
    check_grads(jax.jit(f), (x0, u), order=1, modes=("rev",), eps=1e-6)
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(f, (x0, u), (x0, u))


@pytest.mark.parametrize("kind", ["control", "combined", "rollout"])
def test_second_derivatives_raise(kind):
    if kind == "rollout":
        system = make_system()
        x0 = np.ones((B, N))
        f = lambda u: jnp.sum(tlj.rollout(system, x0, u) ** 2)  # noqa: E731
        u = np.ones((B, T, M))
    else:
        a, o = make_case(kind, "mse", "all_steps")
        name = "pred" if kind == "control" else "controls"
        f = lambda u: call_jax(kind, {**a, name: u}, o)  # noqa: E731
        u = a[name]
    if kind == "rollout":  # jax.hessian is forward over reverse: no forward mode
        with pytest.raises(TypeError, match="forward-mode"):
            jax.hessian(f)(u)
    else:
        with pytest.raises(NotImplementedError, match="first derivatives only"):
            jax.hessian(f)(u)
    with pytest.raises(NotImplementedError, match="first derivatives only"):
        jax.grad(lambda u: jnp.sum(jax.grad(f)(u)))(u)


# ---- errors ---------------------------------------------------------------------------------

@pytest.fixture
def small():
    a, o = make_case("combined", "mse", "all_steps")
    return make_system(), a


@pytest.mark.parametrize("name", ["weight", "terminal_weight"])
def test_weight_errors_name_the_argument_and_the_limit(small, name):
    system, a = small
    base = dict(weight=0.3, terminal_weight=0.2)

    def call(w):
        return tlj.combined_loss(system, a["controls"], a["x0"], a["ref_controls"],
                                 a["ref_states"], **{**base, name: w})

    with pytest.raises(ValueError, match=rf"{name} must be a finite number >= 0 .*10\*\*400|"
                                         rf"{name} must be a finite number >= 0 .*too large"):
        call(10 ** 400)
    for bad in (-1.0, float("nan"), float("inf"), jnp.asarray(-2.0), np.float64("nan")):
        with pytest.raises(ValueError, match=rf"^{name} must be a finite number >= 0, got"):
            call(bad)
    with pytest.raises(TypeError, match=name):
        call(jnp.ones(2))
    with pytest.raises(TypeError, match=name):
        call("0.3")
    # a traced negative weight is only known when the callback runs: the message arrives
    with pytest.raises(Exception, match=rf"{name} must be a finite number >= 0, got -2.0"):
        jax.jit(call)(jnp.asarray(-2.0)).block_until_ready()


def test_static_options_name_the_argument(small):
    system, a = small
    f = lambda d: tlj.trajectory_loss(system, a["controls"], a["x0"], a["ref_states"],  # noqa
                                      discount=d)
    with pytest.raises(TypeError, match="discount must be a Python number"):
        jax.jit(f)(0.9)
    with pytest.raises(TypeError, match="discount must be a Python number"):
        jax.grad(f)(0.9)
    with pytest.raises(ValueError, match="delta must be a finite number"):
        tlj.control_loss(a["controls"], a["ref_controls"], penalty="huber", delta=10 ** 400)
    with pytest.raises(TypeError, match="check_finite must be True or False"):
        tlj.control_loss(a["controls"], a["ref_controls"], check_finite="no")


@pytest.mark.parametrize("loss", ["control", "trajectory", "terminal", "combined", "rollout"])
def test_check_finite_is_accepted_as_the_message_says(small, loss):
    system, a = small
    u = np.array(a["controls"])
    u[0, 1, 0] = np.nan

    def call(u, **kw):
        if loss == "control":
            return tlj.control_loss(u, a["ref_controls"], **kw)
        if loss == "trajectory":
            return tlj.trajectory_loss(system, u, a["x0"], a["ref_states"], **kw)
        if loss == "terminal":
            return tlj.terminal_loss(system, u, a["x0"], a["terminal_target"], **kw)
        if loss == "combined":
            return tlj.combined_loss(system, u, a["x0"], a["ref_controls"], a["ref_states"],
                                     weight=0.3, **kw)
        return tlj.rollout(system, a["x0"], u, **kw)

    name = "pred" if loss == "control" else "controls"
    with pytest.raises(ValueError, match=f"{name} contains NaN or inf( at a step the loss reads)?; pass check_finite=False"):
        call(u)
    out = call(u, check_finite=False)  # what the message says to do works
    assert np.isnan(np.asarray(out)).any()
    out = jax.jit(lambda u: call(u, check_finite=False))(u)
    assert np.isnan(np.asarray(out)).any()


# ---- memory and placement (fresh interpreters) ---------------------------------------------------

def run_python(code, devices=1, timeout=600):
    env = dict(os.environ, PYTHONPATH=PACKAGE_PARENT + os.pathsep + os.path.join(ROOT, "tests"),
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


MEMORY_PRELUDE = """
    import numpy as np, jax, jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)
    import trajloss, trajloss.jax as tlj

    def rss_mb():  # no forced garbage collection: what a training loop sees
        return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

    rng = np.random.default_rng(0)
    u, x0 = rng.normal(size=(4, 6, 1)), rng.normal(size=(4, 2))
    ru, rs = rng.normal(size=(4, 6, 1)), rng.normal(size=(4, 7, 2))

    def system(k):
        return trajloss.LinearSystem.from_continuous([[0.0, 1.0], [-2.0, -0.3 - 1e-3 * k]],
                                                     [[0.0], [1.0]], 0.2)
"""


def test_eager_calls_do_not_grow_memory():
    out = run_python(MEMORY_PRELUDE + """
    s = system(0)
    f = jax.grad(lambda u, rs: tlj.combined_loss(s, u, x0, ru, rs, weight=0.3,
                                                 terminal_weight=0.5), argnums=(0, 1))
    g = jax.grad(lambda u, w: tlj.combined_loss(s, u, x0, ru, rs, weight=w), argnums=(0, 1))
    for k in range(20):
        f(u, rs)
    before = rss_mb()
    for k in range(200):
        f(u, rs)
    print(rss_mb() - before)
    for k in range(20):  # weights of any value, traced or not: nothing recompiles
        g(u, jnp.asarray(0.3 + k))
        tlj.combined_loss(s, u, x0, ru, rs, weight=0.1 + k)
    before = rss_mb()
    for k in range(200):
        g(u, jnp.asarray(0.3 + k))
        tlj.combined_loss(s, u, x0, ru, rs, weight=0.1 + k)
    print(rss_mb() - before)
    """)
    plain, weights = map(float, out.split())
    assert plain < 50, f"RSS grew {plain} MB over 200 eager gradient calls"
    assert weights < 50, f"RSS grew {weights} MB over 200 eager calls with new weights"


def test_many_systems_do_not_grow_memory():
    out = run_python(MEMORY_PRELUDE + """
    def step(k):
        s = system(k)
        jax.grad(lambda u: jnp.sum(tlj.rollout(s, x0, u) ** 2))(u)
        jax.grad(lambda u: tlj.combined_loss(s, u, x0, ru, rs, weight=0.3))(u)
    for k in range(20):
        step(k)
    before = rss_mb()
    for k in range(20, 320):
        step(k)
    print(rss_mb() - before)
    """)
    assert float(out) < 50, f"RSS grew {out} MB over 300 systems"


def test_many_per_sample_systems_do_not_grow_memory():
    # each system 256 samples x 3 steps of 12 x 12 matrices (885 KB): kept per
    # call (as compiled constants or cache entries) 300 of them would be 265 MB
    out = run_python(MEMORY_PRELUDE + """
    B, T, n = 256, 3, 12
    ub, xb, rb = rng.normal(size=(B, T, 2)), rng.normal(size=(B, n)), rng.normal(size=(B, T + 1, n))
    def step(k):
        Ad = 0.9 * np.eye(n) + 1e-3 * rng.normal(size=(B, T, n, n))
        s = trajloss.TimeVaryingSystem(Ad, np.ones((T, n, 2)))
        jax.grad(lambda u: jnp.sum(tlj.rollout(s, xb, u) ** 2))(ub)
        jax.grad(lambda u: tlj.trajectory_loss(s, u, xb, rb))(ub)
    for k in range(20):
        step(k)
    before = rss_mb()
    for k in range(20, 320):
        step(k)
    print(rss_mb() - before)
    """)
    assert float(out) < 50, f"RSS grew {out} MB over 300 per-sample systems"


SHARDED_PRELUDE = """
    import numpy as np, jax, jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)
    from jax.sharding import NamedSharding, PartitionSpec as P, AxisType
    import trajloss.jax as tlj
    from test_jax_grads import make_case, make_system, call_jax, np_loss, fd_grad, np_rollout
    assert len(jax.devices()) == 4
    a, o = make_case("combined", "huber", "lengths_discount")
    system = make_system()
    o["lengths"] = None
    B = 4
    rng = np.random.default_rng(1)
    u, ru = rng.normal(size=(B, 5, 2)), rng.normal(size=(B, 5, 2))
    x0, rs = rng.normal(size=(B, 3)), rng.normal(size=(B, 6, 3))
    a = dict(a, controls=u, ref_controls=ru, x0=x0, ref_states=rs,
             terminal_target=rng.normal(size=(B, 3)))
    ref = lambda b: np_loss("combined", b, o)
    value = ref(a)
    gu, grs = fd_grad(ref, a, "controls"), fd_grad(ref, a, "ref_states")
"""


@pytest.mark.parametrize("axis_type", ["Auto", "Explicit"])
def test_sharded_inputs(axis_type):
    out = run_python(SHARDED_PRELUDE + f"""
    mesh = jax.make_mesh((4,), ("b",), axis_types=(AxisType.{axis_type},))
    put = lambda x: jax.device_put(x, NamedSharding(mesh, P("b")))
    us, rss = put(u), put(rs)
    f = lambda u, rs: call_jax("combined", dict(a, controls=u, ref_states=rs), o)
    other = put(np.ones((B, 5, 2)))
    use = jax.jit(lambda x, y: x * y)  # a next use on the mesh: it failed before

    # eager: the loss replicated over the mesh, the rollout sharded like controls
    v = f(us, rss)
    assert v.sharding.device_set == us.sharding.device_set and v.sharding.spec == P()
    np.testing.assert_allclose(use(v, other), value * np.ones((B, 5, 2)), rtol=1e-12)
    X = tlj.rollout(system, x0, us)
    assert X.sharding.device_set == us.sharding.device_set and X.sharding.spec[0] == "b"
    np.testing.assert_allclose(X, np_rollout(system.Ad, system.Bd, x0, u), rtol=1e-12)
    use(X[:, 1:, :2], other)

    # under jit: value, gradients (also of the references), rollout and its gradient
    vj, (g1, g2) = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(us, rss)
    np.testing.assert_allclose(vj, value, rtol=1e-12)
    np.testing.assert_allclose(g1, gu, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(g2, grs, rtol=1e-6, atol=1e-8)
    for r in (vj, g1, g2):
        assert len(r.sharding.device_set) == 4
    use(g1, other), use(vj, other)
    if "{axis_type}" == "Explicit":  # gradients keep the inputs' sharding types
        assert g1.sharding.spec[0] == "b" and g2.sharding.spec[0] == "b"
    Xj = jax.jit(lambda x, u: tlj.rollout(system, x, u))(x0, us)
    np.testing.assert_allclose(Xj, X, rtol=1e-13)
    W = rng.normal(size=(B, 6, 3))
    gX = jax.jit(jax.grad(lambda u: jnp.sum(W * tlj.rollout(system, x0, u))))(us)
    fd = fd_grad(lambda d: np.sum(W * np_rollout(system.Ad, system.Bd, x0, d["u"])),
                 dict(u=u), "u")
    np.testing.assert_allclose(gX, fd, rtol=1e-7, atol=1e-9)
    use(gX, other)

    # eager gradient (JAX itself needs the mesh context for explicit sharding types)
    with jax.set_mesh(mesh):
        ge = jax.grad(f, argnums=(0, 1))(us, rss)
    np.testing.assert_allclose(ge[0], gu, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(ge[1], grs, rtol=1e-6, atol=1e-8)
    assert ge[0].sharding.spec[0] == "b" and ge[1].sharding.spec[0] == "b"  # like the inputs
    use(ge[0], other)
    print("ok")
    """, devices=4)
    assert out.strip() == "ok"


def test_shard_map_per_shard_losses():
    out = run_python(SHARDED_PRELUDE + """
    mesh = jax.make_mesh((2,), ("b",), axis_types=(AxisType.Auto,), devices=jax.devices()[:2])
    halves = [dict(a, controls=u[k:k + 2], ref_controls=ru[k:k + 2], x0=x0[k:k + 2],
                   ref_states=rs[k:k + 2], terminal_target=a["terminal_target"][k:k + 2])
              for k in (0, 2)]

    def per_shard(u, x0, rs):  # rs replicated: every shard reads all of it
        part = dict(a, controls=u, x0=x0, ref_controls=ru[:2], ref_states=rs[:2],
                    terminal_target=a["terminal_target"][:2])
        return call_jax("combined", part, o)[None]

    sm = jax.shard_map(per_shard, mesh=mesh, in_specs=(P("b"), P("b"), P()),
                       out_specs=P("b"))
    # every shard compares with the first two references: the NumPy sum of both halves
    pieces = [dict(h, ref_controls=ru[:2], ref_states=rs[:2],
                   terminal_target=a["terminal_target"][:2]) for h in halves]
    np.testing.assert_allclose(jax.jit(sm)(u, x0, rs), [ref(p) for p in pieces], rtol=1e-12)
    total = lambda u, x0, rs: jnp.sum(sm(u, x0, rs))
    g = jax.jit(jax.grad(total, argnums=(0, 1, 2)))(u, x0, rs)
    gu = np.concatenate([fd_grad(ref, p, "controls") for p in pieces])
    gx = np.concatenate([fd_grad(ref, p, "x0") for p in pieces])
    grs = np.zeros_like(rs)
    for p in pieces:
        grs[:2] += fd_grad(ref, p, "ref_states")  # a replicated input: the shards' sum
    np.testing.assert_allclose(g[0], gu, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(g[1], gx, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(g[2], grs, rtol=1e-6, atol=1e-8)

    # the rollout inside shard_map, differentiated
    W = rng.normal(size=(B, 6, 3))
    rsm = jax.shard_map(lambda x, u, w: jnp.sum(w * tlj.rollout(system, x, u))[None],
                        mesh=mesh, in_specs=(P("b"), P("b"), P("b")), out_specs=P("b"))
    gr = jax.jit(jax.grad(lambda u: jnp.sum(rsm(x0, u, W))))(u)
    fd = fd_grad(lambda d: np.sum(W * np_rollout(system.Ad, system.Bd, x0, d["u"])),
                 dict(u=u), "u")
    np.testing.assert_allclose(gr, fd, rtol=1e-7, atol=1e-9)
    print("ok")
    """, devices=4)
    assert out.strip() == "ok"
