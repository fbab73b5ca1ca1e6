"""trajloss.torch and trajloss.jax on every linear system form: one system per
sample, time-varying systems, offsets, batched from_continuous.

Values against a plain NumPy loop written here (the matrices of sample b at
step k picked from the arrays the test made, from_continuous's by SciPy's
expm); gradients against central finite differences of that loop and against
the NumPy API; torch gradcheck and gradgradcheck (double backward) in
float64, jax check_grads; a system whose B or T does not match the data
raises ValueError naming ``system``; JAX compiles one host callback per
system form and shape, whatever the system's values."""
import functools

import numpy as np
import pytest
import scipy.linalg

import trajloss

B, T, N, M = 3, 4, 3, 2
DELTA = 0.8
LENGTHS = np.array([T, 2, 3])
DISCOUNT = 0.7
WEIGHT, TERMINAL_WEIGHT = 0.4, 0.6


# ---- the systems: the arrays each form is made of ------------------------------------

def _square(rng, *lead):
    return 0.8 * np.eye(N) + 0.25 * rng.normal(size=lead + (N, N))


def make_form(form, seed=0):
    """``(system, raw)``: raw holds the arrays the reference reads (Ad, Bd,
    offset or None, time_varying), made here, not read back from the system."""
    rng = np.random.default_rng(seed)
    if form == "per_sample":
        raw = dict(Ad=_square(rng, B), Bd=rng.normal(size=(B, N, M)),
                   offset=0.3 * rng.normal(size=(B, N)), tv=False)
    elif form == "per_sample_shared_input":
        raw = dict(Ad=_square(rng, B), Bd=rng.normal(size=(N, M)), offset=None, tv=False)
    elif form == "shared_offset":
        raw = dict(Ad=_square(rng), Bd=rng.normal(size=(N, M)),
                   offset=0.3 * rng.normal(size=N), tv=False)
    elif form == "time_varying":
        raw = dict(Ad=_square(rng, T), Bd=rng.normal(size=(T, N, M)),
                   offset=0.3 * rng.normal(size=(T, N)), tv=True)
    elif form == "time_varying_per_sample":
        raw = dict(Ad=_square(rng, B, T), Bd=rng.normal(size=(T, N, M)),
                   offset=0.3 * rng.normal(size=(B, T, N)), tv=True)
    elif form == "from_continuous":
        A = rng.normal(size=(B, N, N)) - np.eye(N)
        Bc = rng.normal(size=(N, M))
        dt = np.array([0.1, 0.25, 0.4])
        Ad, Bd = np.empty((B, N, N)), np.empty((B, N, M))
        for b in range(B):  # exact zero-order hold, by SciPy
            block = np.zeros((N + M, N + M))
            block[:N, :N], block[:N, N:] = A[b], Bc
            E = scipy.linalg.expm(block * dt[b])
            Ad[b], Bd[b] = E[:N, :N], E[:N, N:]
        system = trajloss.LinearSystem.from_continuous(A, Bc, dt)
        return system, dict(Ad=Ad, Bd=Bd, offset=None, tv=False)
    else:
        raise AssertionError(form)
    cls = trajloss.TimeVaryingSystem if raw["tv"] else trajloss.LinearSystem
    return cls(raw["Ad"], raw["Bd"], offset=raw["offset"]), raw


FORMS = ("per_sample", "per_sample_shared_input", "shared_offset", "time_varying",
         "time_varying_per_sample", "from_continuous")
KINDS = ("trajectory", "terminal", "combined", "combined_target")


# ---- plain NumPy loops ------------------------------------------------------------------

def step_matrices(raw, b, k):
    """(A, B, c) of sample b at step k: an array with a batch axis is per sample,
    a time-varying one has a step axis after it."""
    tv = raw["tv"]

    def pick(a, core_nd):
        if a is None:
            return np.zeros(N)
        if a.ndim == core_nd + tv + 1:
            a = a[b]
        return a[k] if tv else a

    return pick(raw["Ad"], 2), pick(raw["Bd"], 2), pick(raw["offset"], 1)


def np_rollout(raw, x0, u):
    X = np.zeros((u.shape[0], u.shape[1] + 1, N))
    X[:, 0] = x0
    for b in range(u.shape[0]):
        for k in range(u.shape[1]):
            A, Bm, c = step_matrices(raw, b, k)
            X[b, k + 1] = A @ X[b, k] + Bm @ u[b, k] + c
    return X


def rho(r, penalty):
    if penalty == "mse":
        return r * r
    return 0.5 * r * r if abs(r) <= DELTA else DELTA * (abs(r) - 0.5 * DELTA)


def np_sequence(P, R, valid, discount, penalty):
    """Σ_b Σ_{t∈S_b} γ^t |S_b| / Σ_{s∈S_b} γ^s · mean_d ρ(P − R) / Σ_b |S_b|."""
    num, count = 0.0, 0
    for b in range(P.shape[0]):
        steps = [t for t in range(P.shape[1]) if valid[b, t]]
        count += len(steps)
        z = sum(discount ** t for t in steps)
        for t in steps:
            e = sum(rho(P[b, t, d] - R[b, t, d], penalty) for d in range(P.shape[2]))
            num += discount ** t * len(steps) / z * e / P.shape[2]
    return num / count


def np_terminal(X, target, valid, penalty):
    total, count = 0.0, 0
    for b in range(X.shape[0]):
        steps = np.flatnonzero(valid[b])
        final = steps[-1] + 1
        total += sum(rho(X[b, final, d] - target[b, d], penalty) for d in range(N)) / N
        count += 1
    return total / count


def np_loss(form, kind, penalty, a):
    """The loss ``kind`` of the arrays ``a`` by loops (lengths and discount for
    the trajectory and combined losses, include_initial for trajectory)."""
    raw = make_form(form)[1]
    X = np_rollout(raw, a["x0"], a["controls"])
    if kind == "terminal":
        valid = np.ones((B, T), bool)
        return np_terminal(X, a["target"], valid, penalty)
    valid = np.arange(T)[None] < LENGTHS[:, None]
    if kind == "trajectory":  # include_initial: state 0 an extra first step
        valid0 = np.concatenate([valid.any(1)[:, None], valid], 1)
        return np_sequence(X, a["ref_states"], valid0, DISCOUNT, penalty)
    control = np_sequence(a["controls"], a["ref_controls"], valid, DISCOUNT, penalty)
    traj = np_sequence(X[:, 1:], a["ref_states"][:, 1:], valid, DISCOUNT, penalty)
    target = a.get("terminal_target")
    if target is None:  # the reference's own final valid state
        target = a["ref_states"][np.arange(B), LENGTHS]
    return control + WEIGHT * traj + TERMINAL_WEIGHT * np_terminal(X, target, valid, penalty)


DIFF = {"trajectory": ("controls", "x0", "ref_states"),
        "terminal": ("controls", "x0", "target"),
        "combined": ("controls", "x0", "ref_controls", "ref_states"),
        "combined_target": ("controls", "x0", "ref_controls", "ref_states", "terminal_target")}


def make_data(kind, seed=1):
    rng = np.random.default_rng(seed)
    a = dict(controls=rng.normal(size=(B, T, M)), x0=rng.normal(size=(B, N)),
             ref_controls=rng.normal(size=(B, T, M)), ref_states=rng.normal(size=(B, T + 1, N)),
             target=rng.normal(size=(B, N)), terminal_target=rng.normal(size=(B, N)))
    return {k: a[k] for k in DIFF[kind]}


@functools.lru_cache(maxsize=None)
def reference(form, kind, penalty):
    """(value, {name: central finite-difference gradient}) of the NumPy loop."""
    a = make_data(kind)
    f = functools.partial(np_loss, form, kind, penalty)
    grads, h = {}, 1e-6
    for name in DIFF[kind]:
        g = np.zeros_like(a[name])
        for idx in np.ndindex(g.shape):
            hi, lo = a[name].copy(), a[name].copy()
            hi[idx] += h
            lo[idx] -= h
            g[idx] = (f({**a, name: hi}) - f({**a, name: lo})) / (2 * h)
        grads[name] = g
    return f(a), grads


def call(module, system, kind, penalty, a):
    """The loss ``kind`` through ``module`` (trajloss, trajloss.torch or trajloss.jax)."""
    common = dict(penalty=penalty, delta=DELTA)
    if kind == "terminal":
        return module.terminal_loss(system, a["controls"], a["x0"], a["target"], **common)
    common.update(lengths=LENGTHS, discount=DISCOUNT)
    if kind == "trajectory":
        return module.trajectory_loss(system, a["controls"], a["x0"], a["ref_states"],
                                      include_initial=True, **common)
    return module.combined_loss(system, a["controls"], a["x0"], a["ref_controls"],
                                a["ref_states"], weight=WEIGHT, terminal_weight=TERMINAL_WEIGHT,
                                terminal_target=a.get("terminal_target"), **common)


def test_the_reference_rollout_is_the_numpy_api():
    # the loop above reads the arrays as the API documents them (one check,
    # so that a disagreement below is about the frameworks)
    for form in FORMS:
        system, raw = make_form(form)
        a = make_data("combined")
        np.testing.assert_allclose(trajloss.rollout(system, a["x0"], a["controls"]),
                                   np_rollout(raw, a["x0"], a["controls"]), rtol=1e-13,
                                   atol=1e-13, err_msg=form)


# ---- torch -----------------------------------------------------------------------------

@pytest.mark.parametrize("penalty", ["mse", "huber"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("form", FORMS)
def test_torch_value_and_gradients(form, kind, penalty):
    torch = pytest.importorskip("torch")
    import trajloss.torch as tlt
    system = make_form(form)[0]
    a = make_data(kind)
    t = {k: torch.tensor(v, requires_grad=True) for k, v in a.items()}
    value = call(tlt, system, kind, penalty, t)
    grads = torch.autograd.grad(value, list(t.values()))
    ref_value, ref_grads = reference(form, kind, penalty)
    np.testing.assert_allclose(value.item(), ref_value, rtol=1e-12)
    for name, g in zip(t, grads):
        np.testing.assert_allclose(g.numpy(), ref_grads[name], rtol=1e-6, atol=1e-8,
                                   err_msg=name)
    res = call(trajloss, system, kind, penalty, a)  # the NumPy API: same numbers
    np.testing.assert_allclose(value.item(), res.value, rtol=1e-14)
    np.testing.assert_allclose(grads[0].numpy(), res.grad, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(grads[1].numpy(), res.grad_x0, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("form", FORMS)
def test_torch_rollout_value_and_gradient(form):
    torch = pytest.importorskip("torch")
    import trajloss.torch as tlt
    system, raw = make_form(form)
    a = make_data("combined")
    x0 = torch.tensor(a["x0"], requires_grad=True)
    u = torch.tensor(a["controls"], requires_grad=True)
    X = tlt.rollout(system, x0, u)
    np.testing.assert_allclose(X.detach().numpy(), np_rollout(raw, a["x0"], a["controls"]),
                               rtol=1e-13, atol=1e-13)
    W = np.random.default_rng(5).normal(size=X.shape)
    gu, gx = torch.autograd.grad((X * torch.tensor(W)).sum(), (u, x0))
    # the rollout is affine: its gradient is exactly the loop's finite difference
    h = 1e-6
    for name, arr, g in (("controls", a["controls"], gu), ("x0", a["x0"], gx)):
        fd = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            hi, lo = arr.copy(), arr.copy()
            hi[idx] += h
            lo[idx] -= h
            args = {"x0": a["x0"], "controls": a["controls"], name: hi}
            up = np.sum(W * np_rollout(raw, args["x0"], args["controls"]))
            args[name] = lo
            fd[idx] = (up - np.sum(W * np_rollout(raw, args["x0"], args["controls"]))) / (2 * h)
        np.testing.assert_allclose(g.numpy(), fd, rtol=1e-7, atol=1e-8, err_msg=name)
    gu2, gx2 = trajloss.rollout_vjp(system, a["x0"], a["controls"], W)
    np.testing.assert_allclose(gu.numpy(), gu2, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(gx.numpy(), gx2, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("penalty", ["mse", "huber"])
@pytest.mark.parametrize("form", FORMS)
def test_torch_gradcheck_and_gradgradcheck(form, penalty):
    torch = pytest.importorskip("torch")
    import trajloss.torch as tlt
    system = make_form(form)[0]
    a = make_data("combined_target")
    t = {k: torch.tensor(v, requires_grad=True) for k, v in a.items()}
    sw = torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64, requires_grad=True)

    def combined(u, x0, ru, rs, tg, s):
        return tlt.combined_loss(system, u, x0, ru, rs, weight=WEIGHT,
                                 terminal_weight=TERMINAL_WEIGHT, terminal_target=tg,
                                 state_weights=s, lengths=torch.tensor(LENGTHS),
                                 discount=DISCOUNT, penalty=penalty, delta=DELTA)

    inputs = (*t.values(), sw)
    assert torch.autograd.gradcheck(combined, inputs)
    assert torch.autograd.gradgradcheck(combined, inputs)
    traj = lambda u, x0, rs: tlt.trajectory_loss(system, u, x0, rs, include_initial=True,
                                                 penalty=penalty, delta=DELTA)
    assert torch.autograd.gradgradcheck(traj, (t["controls"], t["x0"], t["ref_states"]))
    roll = lambda x0, u: tlt.rollout(system, x0, u)
    assert torch.autograd.gradcheck(roll, (t["x0"], t["controls"]))
    assert torch.autograd.gradgradcheck(roll, (t["x0"], t["controls"]))


def test_torch_hessian_vector_product_of_a_per_sample_system():
    # H = Jᵀ diag(2 w / (n N)) J + the control term's, for the mse trajectory
    # loss: against the matrix of the NumPy loop's rollout, built column by column
    torch = pytest.importorskip("torch")
    import trajloss.torch as tlt
    system, raw = make_form("time_varying_per_sample")
    a = make_data("trajectory")
    u = torch.tensor(a["controls"], requires_grad=True)
    value = tlt.trajectory_loss(system, u, torch.tensor(a["x0"]), torch.tensor(a["ref_states"]))
    (g,) = torch.autograd.grad(value, u, create_graph=True)
    v = np.random.default_rng(3).normal(size=u.shape)
    (hv,) = torch.autograd.grad(g, u, torch.tensor(v))
    # J v: the states' change along v (the rollout minus its offset part, from x0 = 0)
    zero = np.zeros((B, N))
    affine = np_rollout(raw, zero, np.zeros_like(a["controls"]))
    Jv = np_rollout(raw, zero, v) - affine
    G = np.zeros((B, T + 1, N))
    G[:, 1:] = 2 * Jv[:, 1:] / (B * T * N)
    expected = np.zeros_like(v)
    for idx in np.ndindex(v.shape):  # (Jᵀ G)[idx] = <G, J e_idx>
        e = np.zeros_like(v)
        e[idx] = 1.0
        expected[idx] = np.sum(G * (np_rollout(raw, zero, e) - affine))
    np.testing.assert_allclose(hv.numpy(), expected, rtol=1e-11, atol=1e-14)


def test_torch_combined_module_and_float32():
    torch = pytest.importorskip("torch")
    import trajloss.torch as tlt
    system = make_form("per_sample")[0]
    a = make_data("combined")
    loss_fn = tlt.CombinedLoss(system, weight=WEIGHT, terminal_weight=TERMINAL_WEIGHT,
                               discount=DISCOUNT)
    t = {k: torch.tensor(v) for k, v in a.items()}
    value = loss_fn(t["controls"], t["x0"], t["ref_controls"], t["ref_states"],
                    lengths=torch.tensor(LENGTHS))
    ref = np_loss("per_sample", "combined", "mse", a)
    np.testing.assert_allclose(value.item(), ref, rtol=1e-12)
    c = loss_fn.components
    np.testing.assert_allclose(c.total, ref, rtol=1e-12)
    assert c.weight == WEIGHT and c.terminal_weight == TERMINAL_WEIGHT
    np.testing.assert_allclose(c.control + WEIGHT * c.trajectory
                               + TERMINAL_WEIGHT * c.terminal, ref, rtol=1e-12)
    f = {k: v.float().requires_grad_() for k, v in t.items()}
    v32 = loss_fn(f["controls"], f["x0"], f["ref_controls"], f["ref_states"],
                  lengths=torch.tensor(LENGTHS))
    v32.backward()
    assert v32.dtype == torch.float32 and f["controls"].grad.dtype == torch.float32
    np.testing.assert_allclose(v32.item(), ref, rtol=2e-5)
    g64 = reference("per_sample", "combined", "mse")[1]["controls"]
    np.testing.assert_allclose(f["controls"].grad.numpy(), g64, rtol=1e-4, atol=1e-5)


def test_torch_meta_device_and_compile():
    torch = pytest.importorskip("torch")
    import trajloss.torch as tlt
    system = make_form("time_varying_per_sample")[0]
    a = make_data("combined")
    meta = {k: torch.empty(v.shape, dtype=torch.float64, device="meta") for k, v in a.items()}
    out = tlt.combined_loss(system, meta["controls"], meta["x0"], meta["ref_controls"],
                            meta["ref_states"], weight=WEIGHT)
    assert out.device.type == "meta" and out.shape == ()
    assert tlt.rollout(system, meta["x0"], meta["controls"]).shape == (B, T + 1, N)

    def f(system, u, x0, ru, rs):
        return tlt.combined_loss(system, u, x0, ru, rs, weight=WEIGHT, discount=DISCOUNT)

    # compiled before any eager call sees the systems; a second system through
    # the same compiled function gets its own numbers
    compiled_f = torch.compile(f, fullgraph=True)
    t = {k: torch.tensor(v, requires_grad=True) for k, v in a.items()}
    args = (t["controls"], t["x0"], t["ref_controls"], t["ref_states"])
    for form, seed in (("time_varying_per_sample", 0), ("per_sample", 4),
                       ("time_varying_per_sample", 5)):
        system = make_form(form, seed)[0]
        compiled = compiled_f(system, *args)
        res = trajloss.combined_loss(system, *(a[k] for k in DIFF["combined"]), weight=WEIGHT,
                                     discount=DISCOUNT)
        np.testing.assert_allclose(compiled.item(), res.value, rtol=1e-14)
        np.testing.assert_allclose(torch.autograd.grad(compiled, args[0])[0].numpy(),
                                   res.grad, rtol=1e-13, atol=1e-15)


# ---- JAX -------------------------------------------------------------------------------

def _jax():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import trajloss.jax as tlj
    return jax, tlj


@pytest.mark.parametrize("penalty", ["mse", "huber"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("form", FORMS)
def test_jax_value_and_gradients(form, kind, penalty):
    jax, tlj = _jax()
    system = make_form(form)[0]
    a = make_data(kind)
    names = DIFF[kind]
    f = jax.jit(jax.value_and_grad(
        lambda *xs: call(tlj, system, kind, penalty, dict(zip(names, xs))),
        argnums=tuple(range(len(names)))))
    value, grads = f(*(a[k] for k in names))
    ref_value, ref_grads = reference(form, kind, penalty)
    np.testing.assert_allclose(value, ref_value, rtol=1e-12)
    for name, g in zip(names, grads):
        np.testing.assert_allclose(g, ref_grads[name], rtol=1e-6, atol=1e-8, err_msg=name)
    res = call(trajloss, system, kind, penalty, a)
    np.testing.assert_allclose(value, res.value, rtol=1e-14)
    np.testing.assert_allclose(grads[0], res.grad, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(grads[1], res.grad_x0, rtol=1e-13, atol=1e-15)
    eager = call(tlj, system, kind, penalty, a)  # no transformation: the core directly
    np.testing.assert_allclose(eager, res.value, rtol=1e-14)


@pytest.mark.parametrize("form", FORMS)
def test_jax_check_grads_and_rollout(form):
    jax, tlj = _jax()
    from jax.test_util import check_grads
    system, raw = make_form(form)
    a = make_data("combined_target")
    names = DIFF["combined_target"]
    f = lambda *xs: call(tlj, system, "combined_target", "huber", dict(zip(names, xs)))
    check_grads(f, tuple(a[k] for k in names), order=1, modes=("fwd", "rev"))
    roll = lambda x0, u: tlj.rollout(system, x0, u)
    check_grads(roll, (a["x0"], a["controls"]), order=1, modes=("rev",))
    X = jax.jit(roll)(a["x0"], a["controls"])
    np.testing.assert_allclose(X, np_rollout(raw, a["x0"], a["controls"]), rtol=1e-13,
                               atol=1e-13)
    W = np.random.default_rng(5).normal(size=X.shape)
    gx, gu = jax.jit(jax.grad(lambda x0, u: (W * roll(x0, u)).sum(), argnums=(0, 1)))(
        a["x0"], a["controls"])
    gu2, gx2 = trajloss.rollout_vjp(system, a["x0"], a["controls"], W)
    np.testing.assert_allclose(gu, gu2, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(gx, gx2, rtol=1e-14, atol=1e-15)


def test_jax_vmap_over_problems_with_a_per_sample_system():
    jax, tlj = _jax()
    system = make_form("per_sample")[0]
    a = make_data("combined")
    us = np.stack([a["controls"], 2 * a["controls"]])
    f = lambda u: tlj.combined_loss(system, u, a["x0"], a["ref_controls"], a["ref_states"],
                                    weight=WEIGHT)
    batched = jax.jit(jax.vmap(jax.value_and_grad(f)))(us)
    for k in range(2):
        res = trajloss.combined_loss(system, us[k], a["x0"], a["ref_controls"],
                                     a["ref_states"], weight=WEIGHT)
        np.testing.assert_allclose(batched[0][k], res.value, rtol=1e-14)
        np.testing.assert_allclose(batched[1][k], res.grad, rtol=1e-13, atol=1e-15)


def _callbacks(jaxpr):
    """The calls into the core of a jaxpr (sub-jaxprs included): each host
    callback, or each XLA FFI call as its parameters (its identity: what XLA
    compiles it by)."""
    from jax.extend import core
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "pure_callback":
            out.append(eqn.params["callback"])
        elif eqn.primitive.name == "ffi_call":
            out.append(tuple(sorted(eqn.params.items())))
        for p in eqn.params.values():
            for v in (p if isinstance(p, (tuple, list)) else (p,)):
                if isinstance(v, core.ClosedJaxpr):
                    out.extend(_callbacks(v.jaxpr))
                elif isinstance(v, core.Jaxpr):
                    out.extend(_callbacks(v))
    return out


def test_jax_system_arrays_are_operands_not_callback_keys():
    # two per-sample systems of one form: equal calls into the core, host
    # callbacks or XLA FFI calls (JAX compiles them once), the system's values
    # only in the operands
    jax, tlj = _jax()
    a = make_data("combined")
    seen = []
    for seed in (0, 1):
        system = make_form("time_varying_per_sample", seed)[0]
        loss = lambda u: tlj.combined_loss(system, u, a["x0"], a["ref_controls"],
                                           a["ref_states"], weight=WEIGHT)
        roll = lambda u: (tlj.rollout(system, a["x0"], u) ** 2).sum()
        jaxpr = jax.make_jaxpr(lambda u: jax.grad(loss)(u) + jax.grad(roll)(u))(a["controls"])
        callbacks = _callbacks(jaxpr.jaxpr)
        assert len(callbacks) >= 2
        seen.append(callbacks)
    assert len(seen[0]) == len(seen[1])
    for c0, c1 in zip(*seen):
        assert c0 == c1 and hash(c0) == hash(c1)


# ---- mismatched systems ---------------------------------------------------------------

def _mismatch_cases():
    rng = np.random.default_rng(2)
    per_sample = trajloss.LinearSystem(_square(rng, B + 2), rng.normal(size=(N, M)))
    time_varying = trajloss.TimeVaryingSystem(_square(rng, T + 1), rng.normal(size=(T + 1, N, M)))
    return [("per_sample", per_sample, B + 2, B), ("time_varying", time_varying, T + 1, T)]


def _assert_names_system(exc, want, got):
    msg = str(exc.value)
    assert "system" in msg and str(want) in msg and str(got) in msg, msg


@pytest.mark.parametrize("case", [0, 1], ids=["batch", "steps"])
def test_torch_mismatched_system_names_system(case):
    torch = pytest.importorskip("torch")
    import trajloss.torch as tlt
    _, system, want, got = _mismatch_cases()[case]
    t = {k: torch.tensor(v) for k, v in make_data("combined").items()}
    for device in ("cpu", "meta"):  # the real operator and the fake one
        d = {k: v.to(device) for k, v in t.items()}
        with pytest.raises(ValueError) as exc:
            tlt.rollout(system, d["x0"], d["controls"])
        _assert_names_system(exc, want, got)
        with pytest.raises(ValueError) as exc:
            tlt.combined_loss(system, d["controls"], d["x0"], d["ref_controls"],
                              d["ref_states"], weight=WEIGHT)
        _assert_names_system(exc, want, got)
    with pytest.raises(ValueError) as exc:
        tlt.TrajectoryLoss(system)(t["controls"], t["x0"], t["ref_states"])
    _assert_names_system(exc, want, got)


@pytest.mark.parametrize("case", [0, 1], ids=["batch", "steps"])
def test_jax_mismatched_system_names_system(case):
    jax, tlj = _jax()
    _, system, want, got = _mismatch_cases()[case]
    a = make_data("combined")
    loss = lambda u: tlj.combined_loss(system, u, a["x0"], a["ref_controls"], a["ref_states"],
                                       weight=WEIGHT)
    roll = lambda u: tlj.rollout(system, a["x0"], u)
    for f in (loss, jax.jit(loss), jax.grad(loss), roll, jax.jit(roll)):
        with pytest.raises(ValueError) as exc:
            f(a["controls"])
        _assert_names_system(exc, want, got)


def test_torch_keeps_nothing_on_the_system():
    # the per-device tensors live beside the system, not in it: a system used
    # by trajloss.torch pickles to the same bytes as before (no tensor inside,
    # loadable without torch), and its tensors go when it goes
    torch = pytest.importorskip("torch")
    import gc
    import pickle
    import trajloss.torch as tlt
    system = make_form("per_sample")[0]
    before = pickle.dumps(system)
    a = make_data("combined")
    # meta tensors take the custom operators, which keep per-device tensors
    # (the eager CPU path makes none)
    tlt.rollout(system, torch.tensor(a["x0"]).to("meta"), torch.tensor(a["controls"]).to("meta"))
    assert pickle.dumps(system) == before
    assert len(tlt._SYSTEM_TENSORS) >= 1
    n = len(tlt._SYSTEM_TENSORS)
    del system
    gc.collect()
    assert len(tlt._SYSTEM_TENSORS) == n - 1


@pytest.mark.parametrize("form", ["time_varying", "shared_offset"])
def test_unbatched_sequence(form):
    # one (T, m) sequence under a shared time-varying or offset system: the
    # loop's sample 0, in torch (with double backward) and JAX
    torch = pytest.importorskip("torch")
    import trajloss.torch as tlt
    jax, tlj = _jax()
    system, raw = make_form(form)
    a = {k: v[0] for k, v in make_data("trajectory").items()}
    batched = {k: v[None] for k, v in a.items()}
    ref = np_sequence(np_rollout(raw, batched["x0"], batched["controls"]),
                      batched["ref_states"], np.ones((1, T + 1), bool), 1.0, "mse")
    t = {k: torch.tensor(v, requires_grad=True) for k, v in a.items()}
    f = lambda u, x0, rs: tlt.trajectory_loss(system, u, x0, rs, include_initial=True)
    np.testing.assert_allclose(f(*t.values()).item(), ref, rtol=1e-12)
    assert torch.autograd.gradgradcheck(f, tuple(t.values()))
    g = lambda u, x0, rs: tlj.trajectory_loss(system, u, x0, rs, include_initial=True)
    value, grads = jax.value_and_grad(g, argnums=(0, 1, 2))(*a.values())
    np.testing.assert_allclose(value, ref, rtol=1e-12)
    for gj, gt in zip(grads, torch.autograd.grad(f(*t.values()), tuple(t.values()))):
        np.testing.assert_allclose(gj, gt.numpy(), rtol=1e-13, atol=1e-15)
