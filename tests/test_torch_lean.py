"""The eager fast path of trajloss.torch (plain torch.autograd.Functions over
the C core, taken for CPU tensors when nothing traces or transforms) against
independent references: the plain NumPy loops of tests/loss_reference.py for
values and first derivatives, gradcheck/gradgradcheck (central finite
differences) in float64 for every order; non-contiguous inputs, gradients of
some inputs only, errors that name the argument, in-place changes caught, and
the operators still used where torch.compile or meta tensors need them. Also
torch.compile: no warnings, one compilation for batches of 64, 64 and 37."""
import logging
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import loss_reference as ref  # noqa: E402
import trajloss  # noqa: E402
import trajloss.torch as tlt  # noqa: E402

B, T, M, N = 3, 5, 2, 2


@pytest.fixture(scope="module")
def system():
    return trajloss.LinearSystem.from_continuous([[0.0, 1.0], [-2.0, -0.3]],
                                                 [[0.0, 0.5], [1.0, 0.2]], 0.3)


@pytest.fixture
def data():
    rng = np.random.default_rng(7)
    return dict(u=rng.normal(size=(B, T, M)), x0=rng.normal(size=(B, N)),
                ru=rng.normal(size=(B, T, M)), rs=rng.normal(size=(B, T + 1, N)),
                target=rng.normal(size=(B, N)), fw=rng.uniform(0.5, 2.0, M),
                sw=rng.uniform(0.5, 2.0, N))


def _t(a, grad=False, dtype=torch.float64):
    return torch.tensor(np.asarray(a), dtype=dtype, requires_grad=grad)


def _noncontiguous(a, dtype=torch.float64):
    """A tensor equal to ``a`` whose memory is not contiguous (a strided view)."""
    a = np.asarray(a)
    big = torch.zeros((*a.shape[:-1], 2 * a.shape[-1]), dtype=dtype)
    view = big[..., ::2]
    view.copy_(torch.tensor(a, dtype=dtype))
    assert not view.is_contiguous()
    return view


def _is_lean(value):
    return type(value.grad_fn).__name__ in ("_RolloutLossFunctionBackward",
                                           "_ControlLossFunctionBackward",
                                           "_RolloutFunctionBackward")


# ---- values and gradients against the NumPy loops -----------------------------

@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_combined_value_and_gradients_match_the_numpy_loops(system, data, contiguous, dtype):
    make = (lambda a: _t(a, dtype=dtype)) if contiguous else (
        lambda a: _noncontiguous(a, dtype))
    u, x0, ru, rs = (make(data[k]).requires_grad_() for k in ("u", "x0", "ru", "rs"))
    lengths = torch.tensor([5, 2, 4])
    value = tlt.combined_loss(system, u, x0, ru, rs, weight=0.4, terminal_weight=0.7,
                              discount=0.8, lengths=lengths)
    assert _is_lean(value) and value.dtype == dtype
    value.backward()
    r = ref.combined_loss_ref(system.Ad, system.Bd, data["u"], data["x0"], data["ru"],
                              data["rs"], 0.4, terminal_weight=0.7, discount=0.8,
                              lengths=[5, 2, 4])
    tol = dict(rtol=1e-12, atol=1e-13) if dtype == torch.float64 else dict(rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(value.item(), r["value"], **tol)
    np.testing.assert_allclose(u.grad.numpy(), r["grad"], **tol)
    np.testing.assert_allclose(x0.grad.numpy(), r["grad_x0"], **tol)
    # the references' gradients: minus those of what they are compared with,
    # term by term (NumPy loops of each term)
    c = ref.control_loss_ref(data["u"], data["ru"], discount=0.8, lengths=[5, 2, 4])
    np.testing.assert_allclose(ru.grad.numpy(), -c["grad"], **tol)
    fd = ref.fd_grad(lambda a: ref.combined_loss_ref(
        system.Ad, system.Bd, data["u"], data["x0"], data["ru"], a, 0.4, terminal_weight=0.7,
        discount=0.8, lengths=[5, 2, 4])["value"], data["rs"])
    np.testing.assert_allclose(rs.grad.numpy(), fd, rtol=1e-6 if dtype == torch.float64
                               else 2e-4, atol=1e-8 if dtype == torch.float64 else 1e-6)


def test_trajectory_and_terminal_losses_match_the_numpy_loops(system, data):
    u, x0 = _t(data["u"], True), _noncontiguous(data["x0"]).requires_grad_()
    sw = _t(data["sw"])
    value = tlt.trajectory_loss(system, u, x0, _t(data["rs"]), include_initial=True,
                                state_weights=sw, penalty="huber", delta=0.6)
    assert _is_lean(value)
    gu, gx = torch.autograd.grad(value, (u, x0))
    r = ref.trajectory_loss_ref(system.Ad, system.Bd, data["u"], data["x0"], data["rs"],
                                include_initial=True, state_weights=data["sw"],
                                penalty="huber", delta=0.6)
    np.testing.assert_allclose(value.item(), r["value"], rtol=1e-12)
    np.testing.assert_allclose(gu.numpy(), r["grad"], rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(gx.numpy(), r["grad_x0"], rtol=1e-11, atol=1e-13)
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    value = tlt.terminal_loss(system, u, x0, _t(data["target"]), mask=mask, penalty="l1")
    gu, gx = torch.autograd.grad(value, (u, x0))
    r = ref.terminal_loss_ref(system.Ad, system.Bd, data["u"], data["x0"], data["target"],
                              mask=mask.numpy(), penalty="l1")
    np.testing.assert_allclose(value.item(), r["value"], rtol=1e-12)
    np.testing.assert_allclose(gu.numpy(), r["grad"], rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(gx.numpy(), r["grad_x0"], rtol=1e-11, atol=1e-13)


def test_control_loss_and_rollout_match_the_numpy_loops(system, data):
    pred, target = _noncontiguous(data["u"]).requires_grad_(), _t(data["ru"], True)
    fw = _t(data["fw"], True)
    value = tlt.control_loss(pred, target, discount=1.3, lengths=[4, 5, 1], feature_weights=fw)
    assert _is_lean(value)
    gp, gt, gf = torch.autograd.grad(value, (pred, target, fw))
    r = ref.control_loss_ref(data["u"], data["ru"], discount=1.3, lengths=[4, 5, 1],
                             feature_weights=data["fw"])
    np.testing.assert_allclose(value.item(), r["value"], rtol=1e-12)
    np.testing.assert_allclose(gp.numpy(), r["grad"], rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(gt.numpy(), -r["grad"], rtol=1e-11, atol=1e-13)
    fd = ref.fd_grad(lambda f: ref.control_loss_ref(
        data["u"], data["ru"], discount=1.3, lengths=[4, 5, 1], feature_weights=f)["value"],
        data["fw"])
    np.testing.assert_allclose(gf.numpy(), fd, rtol=1e-7, atol=1e-10)

    u, x0 = _noncontiguous(data["u"]).requires_grad_(), _t(data["x0"], True)
    states = tlt.rollout(system, x0, u)
    assert _is_lean(states)
    X = ref.rollout_loop(system.Ad, system.Bd, data["x0"], data["u"])
    np.testing.assert_allclose(states.detach().numpy(), X, rtol=1e-13, atol=1e-14)
    G = np.random.default_rng(3).normal(size=X.shape)
    gu, gx = torch.autograd.grad(states, (u, x0), _t(G))
    gu_ref, gx_ref = ref.adjoint_loop(system.Ad, system.Bd, G)
    np.testing.assert_allclose(gx.numpy(), gx_ref, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(gu.numpy(), gu_ref, rtol=1e-12, atol=1e-13)


# ---- every order: finite differences ------------------------------------------

def test_gradcheck_and_gradgradcheck_through_the_fast_path(system, data):
    u, x0, ru, rs = (_t(data[k], True) for k in ("u", "x0", "ru", "rs"))
    target, sw, fw = _t(data["target"], True), _t(data["sw"], True), _t(data["fw"], True)
    w = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    L = torch.tensor([5, 3, 1])

    def combined(u, x0, ru, rs, target, w, sw, fw):
        return tlt.combined_loss(system, u, x0, ru, rs, weight=w, terminal_weight=0.3,
                                 terminal_target=target, discount=0.9, lengths=L,
                                 state_weights=sw, feature_weights=fw, penalty="huber",
                                 delta=0.8)

    args = (u, x0, ru, rs, target, w, sw, fw)
    assert _is_lean(combined(*args))
    assert torch.autograd.gradcheck(combined, args)
    assert torch.autograd.gradgradcheck(combined, args)
    rollout = lambda a, b: tlt.rollout(system, a, b)  # noqa: E731
    assert torch.autograd.gradcheck(rollout, (x0, u))
    assert torch.autograd.gradgradcheck(rollout, (x0, u))
    control = lambda p, t, f: tlt.control_loss(p, t, mask=L[:, None] > torch.arange(T),  # noqa
                                               feature_weights=f, discount=0.7)
    assert torch.autograd.gradcheck(control, (u, ru, fw))
    assert torch.autograd.gradgradcheck(control, (u, ru, fw))


@pytest.mark.parametrize("wanted", ["x0", "ref_states", "weight", "controls"])
def test_gradient_of_one_input_only(system, data, wanted):
    """One input requires grad, the others do not: its gradient is the central
    difference of the NumPy reference's value, and no other gets one."""
    args = dict(controls=_t(data["u"]), x0=_t(data["x0"]), ref_states=_t(data["rs"]),
                weight=torch.tensor(0.5, dtype=torch.float64))
    args[wanted].requires_grad_()
    value = tlt.combined_loss(system, args["controls"], args["x0"], _t(data["ru"]),
                              args["ref_states"], weight=args["weight"], terminal_weight=0.2)
    assert _is_lean(value)
    (g,) = torch.autograd.grad(value, args[wanted])
    base = dict(controls=data["u"], x0=data["x0"], ref_states=data["rs"], weight=0.5)

    def f(a):
        kw = dict(base, **{wanted: a})
        return ref.combined_loss_ref(system.Ad, system.Bd, kw["controls"], kw["x0"],
                                     data["ru"], kw["ref_states"], float(kw["weight"]),
                                     terminal_weight=0.2)["value"]
    fd = ref.fd_grad(f, np.asarray(base[wanted], dtype=np.float64))
    np.testing.assert_allclose(g.numpy(), fd, rtol=1e-6, atol=1e-9)
    assert all(a.grad is None for a in args.values())


def test_no_input_requires_grad_and_no_grad_mode(system, data):
    u, x0, ru, rs = (_t(data[k]) for k in ("u", "x0", "ru", "rs"))
    r = ref.combined_loss_ref(system.Ad, system.Bd, data["u"], data["x0"], data["ru"],
                              data["rs"], 0.3)["value"]
    for ctx in (torch.enable_grad, torch.no_grad, torch.inference_mode):
        with ctx():
            value = tlt.combined_loss(system, u, x0, ru, rs, weight=0.3)
        assert not value.requires_grad
        np.testing.assert_allclose(value.item(), r, rtol=1e-12)


def _tv_rollout(Ad, Bd, offset, x0, U):
    """x_{k+1} = Ad[b, k] x_k + Bd[k] u_k + offset[b, k], loops over b and k."""
    X = np.zeros((U.shape[0], U.shape[1] + 1, x0.shape[1]))
    for b in range(U.shape[0]):
        X[b, 0] = x0[b]
        for k in range(U.shape[1]):
            X[b, k + 1] = Ad[b, k] @ X[b, k] + Bd[k] @ U[b, k] + offset[b, k]
    return X


def test_time_varying_per_sample_system_every_order(data):
    """A time-varying system with per-sample matrices and offset: value and
    gradients against a NumPy loop, and the double backward (the
    differentiable fallback rolls out through the time-varying dynamics)."""
    rng = np.random.default_rng(11)
    Ad = 0.4 * rng.normal(size=(B, T, N, N)) + np.eye(N)
    Bd = rng.normal(size=(T, N, M))
    offset = 0.2 * rng.normal(size=(B, T, N))
    system = trajloss.TimeVaryingSystem(Ad, Bd, offset=offset)
    u, x0 = _t(data["u"], True), _t(data["x0"], True)
    rs = _t(data["rs"], True)
    value = tlt.trajectory_loss(system, u, x0, rs)
    assert _is_lean(value)
    gu, gx, gr = torch.autograd.grad(value, (u, x0, rs))
    X = _tv_rollout(Ad, Bd, offset, data["x0"], data["u"])
    r = data["rs"]
    np.testing.assert_allclose(value.item(), ((X[:, 1:] - r[:, 1:]) ** 2).mean(), rtol=1e-12)
    G = np.zeros_like(X)
    G[:, 1:] = 2 * (X[:, 1:] - r[:, 1:]) / (B * T * N)
    np.testing.assert_allclose(gr.numpy(), -G, rtol=1e-11, atol=1e-14)
    for b in range(B):  # the adjoint of sample b through its own time-varying matrices
        lam = G[b, T].copy()
        gu_b = np.zeros((T, M))
        for k in range(T - 1, -1, -1):
            gu_b[k] = Bd[k].T @ lam
            lam = G[b, k] + Ad[b, k].T @ lam
        np.testing.assert_allclose(gu[b].numpy(), gu_b, rtol=1e-11, atol=1e-14)
        np.testing.assert_allclose(gx[b].numpy(), lam, rtol=1e-11, atol=1e-14)
    f = lambda u, x0, rs: tlt.combined_loss(system, u, x0, _t(data["ru"]), rs,  # noqa: E731
                                            weight=0.7, terminal_weight=0.4, discount=0.9)
    assert torch.autograd.gradgradcheck(f, (u, x0, rs))
    assert torch.autograd.gradgradcheck(lambda a, b: tlt.rollout(system, a, b), (x0, u))


def test_nothing_is_kept_on_or_for_the_system(data):
    """The fast path makes no tensors of the system; the operators' per-device
    tensors (here made by a double backward) live beside it, never in it: the
    system pickles to the same bytes and its tensors go when it goes."""
    import gc
    import pickle
    rng = np.random.default_rng(2)
    system = trajloss.LinearSystem(np.eye(N) + 0.1 * rng.normal(size=(B, N, N)),
                                   rng.normal(size=(B, N, M)))
    before = pickle.dumps(system)
    gc.collect()  # earlier tests' systems go now, not in the count below
    n = len(tlt._SYSTEM_TENSORS)
    u, x0 = _t(data["u"], True), _t(data["x0"])
    value = tlt.trajectory_loss(system, u, x0, _t(data["rs"]))
    (g,) = torch.autograd.grad(value, u)
    assert len(tlt._SYSTEM_TENSORS) == n  # eager, first order: no tensors made
    (g,) = torch.autograd.grad(tlt.trajectory_loss(system, u, x0, _t(data["rs"])), u,
                               create_graph=True)
    (g * g).sum().backward()  # the differentiable fallback: the operators
    assert len(tlt._SYSTEM_TENSORS) == n + 1
    assert pickle.dumps(system) == before
    del system, value, g
    gc.collect()
    assert len(tlt._SYSTEM_TENSORS) == n


# ---- module ----------------------------------------------------------------------

def test_combined_module_components_and_two_calls_before_backward(system, data):
    from trajloss import weighting
    # weight 0.3 at epoch 1, 2.0 at epoch 4: the buffer changes in place between
    # two calls and one backward; each call keeps the weight it was made with
    loss_fn = tlt.CombinedLoss(system, weight=weighting.Curriculum(start=0, ramp=4, final=2.0),
                               terminal_weight=0.5)
    u = _t(data["u"], True)
    x0, ru, rs = (_t(data[k]) for k in ("x0", "ru", "rs"))
    first = loss_fn(u, x0, ru, rs, epoch=0.6)
    assert _is_lean(first)
    r = ref.combined_loss_ref(system.Ad, system.Bd, data["u"], data["x0"], data["ru"],
                              data["rs"], 0.3, terminal_weight=0.5)
    c = loss_fn.components
    np.testing.assert_allclose([c.total, c.control, c.trajectory, c.terminal, c.weight],
                               [r["value"], r["control"], r["trajectory"], r["terminal"], 0.3],
                               rtol=1e-12)
    second = loss_fn(u, x0, ru, rs, epoch=4)
    (first + second).backward()
    r2 = ref.combined_loss_ref(system.Ad, system.Bd, data["u"], data["x0"], data["ru"],
                               data["rs"], 2.0, terminal_weight=0.5)
    np.testing.assert_allclose(second.item(), r2["value"], rtol=1e-12)
    np.testing.assert_allclose(u.grad.numpy(), r["grad"] + r2["grad"], rtol=1e-11, atol=1e-13)


def test_combined_module_reads_its_weight_buffer_after_every_change(system, data):
    """The module keeps the buffer's values between calls; a write to the buffer
    (in place, load_state_dict) or a new buffer (.to) is seen by the next call:
    each value is the NumPy loops' at the buffer's terminal weight."""
    loss_fn = tlt.CombinedLoss(system, weight=0.3, terminal_weight=0.5)
    args = [_t(data[k]) for k in ("u", "x0", "ru", "rs")]

    def expected(terminal_weight):
        return ref.combined_loss_ref(system.Ad, system.Bd, data["u"], data["x0"], data["ru"],
                                     data["rs"], 0.3, terminal_weight=terminal_weight)["value"]
    np.testing.assert_allclose(loss_fn(*args).item(), expected(0.5), rtol=1e-12)
    with torch.no_grad():
        loss_fn.weights[2] = 0.7
    np.testing.assert_allclose(loss_fn(*args).item(), expected(0.7), rtol=1e-12)
    state = loss_fn.state_dict()
    state["weights"] = torch.tensor([1.0, 0.3, 0.9], dtype=torch.float64)
    loss_fn.load_state_dict(state)
    np.testing.assert_allclose(loss_fn(*args).item(), expected(0.9), rtol=1e-12)
    loss_fn.weights = torch.tensor([1.0, 0.3, 0.2], dtype=torch.float64)  # a new buffer
    np.testing.assert_allclose(loss_fn(*args).item(), expected(0.2), rtol=1e-12)
    with torch.no_grad():
        loss_fn.weights[2] = -1.0
    with pytest.raises(ValueError, match="terminal_weight"):
        loss_fn(*args)


# ---- errors and safety ---------------------------------------------------------

@pytest.mark.parametrize("name", ["controls", "x0", "ref_controls", "ref_states"])
def test_a_bad_dtype_names_the_argument(system, data, name):
    args = dict(controls=_t(data["u"]), x0=_t(data["x0"]), ref_controls=_t(data["ru"]),
                ref_states=_t(data["rs"]))
    args[name] = args[name].to(torch.bfloat16)
    with pytest.raises(TypeError, match=name):
        tlt.combined_loss(system, *args.values(), weight=0.3)
    args[name] = args[name].to(torch.int64)
    with pytest.raises((TypeError, ValueError), match=name):
        tlt.combined_loss(system, *args.values(), weight=0.3)


def test_bad_shapes_and_types_name_the_argument(system, data):
    u, x0, ru, rs = (_t(data[k]) for k in ("u", "x0", "ru", "rs"))
    with pytest.raises(ValueError, match="ref_states"):
        tlt.combined_loss(system, u, x0, ru, rs[:, :-1], weight=0.3)
    with pytest.raises(ValueError, match="x0"):
        tlt.combined_loss(system, u, x0[:, :1], ru, rs, weight=0.3)
    with pytest.raises(TypeError, match="ref_controls"):
        tlt.combined_loss(system, u, x0, data["ru"], rs, weight=0.3)
    with pytest.raises(ValueError, match="lengths"):
        tlt.combined_loss(system, u, x0, ru, rs, weight=0.3, lengths=torch.tensor([9, 1, 1]))
    with pytest.raises(ValueError, match="weight"):
        tlt.combined_loss(system, u, x0, ru, rs, weight=-1.0)
    with pytest.raises(ValueError, match="target"):
        tlt.control_loss(u, ru[:, :2])
    with pytest.raises(TypeError, match="pred"):
        tlt.control_loss(u.to(torch.bfloat16), ru)
    with pytest.raises(ValueError, match="controls"):
        tlt.rollout(system, x0, u[..., :1])
    with pytest.raises(ValueError, match="finite|NaN|nan"):
        tlt.rollout(system, x0, torch.full_like(u, float("nan")))


def test_an_input_changed_in_place_before_backward_is_caught(system, data):
    """The differentiable fallback reads the saved inputs: an in-place change
    between forward and backward raises, never a wrong gradient."""
    u, x0, ru = (_t(data[k]) for k in ("u", "x0", "ru"))
    rs = _t(data["rs"], True)
    value = tlt.combined_loss(system, u, x0, ru, rs, weight=0.3)
    with torch.no_grad():
        u.add_(1.0)
    with pytest.raises(RuntimeError, match="inplace|in-place|modified"):
        value.backward()


def test_operators_where_the_fast_path_cannot_go(system, data):
    """meta tensors and tensor subclasses go through the custom operators."""
    u, x0, ru, rs = (_t(data[k]).to("meta") for k in ("u", "x0", "ru", "rs"))
    value = tlt.combined_loss(system, u, x0, ru, rs, weight=0.3)
    assert value.is_meta and not _is_lean(value)

    class Sub(torch.Tensor):
        pass

    u = _t(data["u"]).as_subclass(Sub).requires_grad_()
    value = tlt.combined_loss(system, u, _t(data["x0"]), _t(data["ru"]), _t(data["rs"]),
                              weight=0.3)
    assert not _is_lean(value)
    r = ref.combined_loss_ref(system.Ad, system.Bd, data["u"], data["x0"], data["ru"],
                              data["rs"], 0.3)
    (g,) = torch.autograd.grad(value, u)
    np.testing.assert_allclose(value.item(), r["value"], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(g.detach()), r["grad"], rtol=1e-11, atol=1e-13)


# ---- torch.compile ------------------------------------------------------------------

class _CountingBackend:
    """A torch.compile backend that counts the graphs Dynamo hands it."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


def _problem(B=165):
    system = trajloss.DoubleIntegrator(dt=1 / 3)
    data = trajloss.make_dataset(system, B, 15, seed=0)
    x0, ru, rs = (torch.tensor(a, dtype=torch.float32)
                  for a in (data.x0, data.controls, data.states))
    torch.manual_seed(0)
    return system, torch.nn.Linear(2, 15), x0, ru, rs


class _Warnings(logging.Handler):
    """Python warnings and torch's logged warnings during a block."""

    def __enter__(self):
        self.records = []
        self._log = logging.getLogger("torch")
        self._log.addHandler(self)
        self._catch = warnings.catch_warnings(record=True)
        self.caught = self._catch.__enter__()
        warnings.simplefilter("always")
        return self

    def emit(self, record):
        if record.levelno >= logging.WARNING:
            self.records.append(record.getMessage())

    def __exit__(self, *exc):
        self._catch.__exit__(*exc)
        self._log.removeHandler(self)

    def messages(self):
        return [str(w.message) for w in self.caught] + self.records


BATCHES = ((0, 64), (64, 128), (128, 165))  # 64, 64 and a smaller last batch of 37


@pytest.mark.parametrize("form", ["dynamic=True, backward inside", "mark_dynamic, backward outside"])
def test_compiled_training_step_compiles_once_for_a_smaller_last_batch(form):
    """The batch dimension dynamic (``torch.compile(..., dynamic=True)``, or
    ``torch._dynamo.mark_dynamic(t, 0)`` on the inputs of a function without a
    graph break): the batches 64, 64, 37 compile once, with eager's values and
    parameter gradients, and no warning is emitted."""
    torch._dynamo.reset()
    system, policy, x0, ru, rs = _problem()
    loss_fn = tlt.CombinedLoss(system, weight=0.3)
    backend = _CountingBackend()

    def loss_of(x0, ru, rs):
        return loss_fn(policy(x0).unsqueeze(-1), x0, ru, rs)

    def step(x0, ru, rs):
        loss = loss_of(x0, ru, rs)
        loss.backward()
        return loss

    if form.startswith("dynamic"):
        compiled = torch.compile(step, backend=backend, dynamic=True)
    else:
        compiled_loss = torch.compile(loss_of, backend=backend)

        def compiled(*batch):
            for t in batch:
                torch._dynamo.mark_dynamic(t, 0)
            loss = compiled_loss(*batch)
            loss.backward()
            return loss
    graphs = []
    with _Warnings() as w:
        for s, e in BATCHES:
            batch = (x0[s:e], ru[s:e], rs[s:e])
            policy.zero_grad()
            value = compiled(*batch)
            got = policy.weight.grad.clone()
            graphs.append(backend.graphs)
            policy.zero_grad()
            eager = loss_of(*batch)
            eager.backward()
            torch.testing.assert_close(value, eager)
            torch.testing.assert_close(got, policy.weight.grad)
    assert w.messages() == []
    assert graphs[0] >= 1 and graphs[1:] == [graphs[0]] * 2, graphs


def test_static_shapes_recompile_for_a_smaller_batch():
    """What the dynamic batch dimension avoids: with static shapes (PyTorch's
    default first compile) the batch of 37 compiles again."""
    torch._dynamo.reset()
    system, policy, x0, ru, rs = _problem()
    backend = _CountingBackend()
    compiled = torch.compile(lambda *b: tlt.combined_loss(system, policy(b[0]).unsqueeze(-1),
                                                          *b, weight=0.3), backend=backend)
    graphs = []
    for s, e in BATCHES:
        compiled(x0[s:e], ru[s:e], rs[s:e])
        graphs.append(backend.graphs)
    assert graphs == [1, 1, 2]


INDUCTOR_SCRIPT = """
import torch, trajloss, trajloss.torch as tlt
system = trajloss.DoubleIntegrator(dt=1 / 3)
data = trajloss.make_dataset(system, 101, 15, seed=0)
x0, ru, rs = (torch.tensor(a, dtype=torch.float32) for a in (data.x0, data.controls, data.states))
torch.manual_seed(0)
policy = torch.nn.Linear(2, 15)
loss_fn = tlt.CombinedLoss(system, weight=0.3)
def step(x0, ru, rs):
    loss = loss_fn(policy(x0).unsqueeze(-1), x0, ru, rs)
    loss.backward()
    return loss
compiled = torch.compile(step, dynamic=True)
for s, e in ((0, 64), (64, 101)):
    print(compiled(x0[s:e], ru[s:e], rs[s:e]).item())
"""


def test_first_inductor_compile_prints_no_warning(tmp_path):
    """The first compilation with the default backend (Inductor), in a fresh
    process with Python's default warning filters (what a user sees): nothing
    on stderr -- no warning, no logged message."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"),
               TORCHINDUCTOR_COMPILE_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", INDUCTOR_SCRIPT], capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == ""
    assert len(proc.stdout.split()) == 2
