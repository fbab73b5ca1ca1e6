"""Padding is never read: what each loss reads, what check_finite checks.

The rule under test (README, "Padding and check_finite"), written out here
independently of the library by ``read_sets``: for sequence b with valid
control steps S_b (from ``lengths`` or ``mask``) and last valid step t_b,

* control_loss reads pred and target at the steps of S_b only;
* the rollout losses read controls at steps 0 .. t_b (a step a mask leaves
  out still drives the states after it), x0, ref_controls at S_b, the
  ref_states that are scored (state k+1 for k in S_b, state 0 with
  include_initial, state t_b + 1 for the terminal term without a target) and
  the target; a sequence with no valid step reads nothing;
* final_state_error reads controls before each sequence's length, x0 and xf.

Everything else is padding. The tests write NaN, +inf and huge values into
every padded element and require the value and the gradients to be the same
bits as with zeros there (NumPy, trajloss.torch, trajloss.jax), while a NaN in
any read element still raises a ValueError naming the argument -- and, with
check_finite=False, comes back as a NaN value and NaN gradients, never as a
finite-looking number. The zero-padded results themselves are checked
against the plain NumPy loops of loss_reference.py.
"""
import warnings

import numpy as np
import pytest

import trajloss as tl
from conftest import assert_close
from loss_reference import (combined_loss_ref, control_loss_ref, terminal_loss_ref,
                            trajectory_loss_ref, valid_steps)

DTYPES = (np.float64, np.float32)
PENALTIES = ("mse", "l1", "huber")
LOSSES = ("control", "trajectory", "terminal", "combined", "combined_target")
ROLLOUT_ARGS = ("controls", "x0", "ref_controls", "ref_states", "target")


def fills(dtype):
    """Values written into padding: NaN, +inf, -inf and the dtype's huge values."""
    huge = 1e300 if dtype == np.float64 else 3e38
    return (np.nan, np.inf, -np.inf, huge, -huge)


def make_selection(rng, kind, B, T):
    """lengths (some 0, some T) or a mask (some rows empty, some with holes)."""
    if kind == "none":
        return None, None
    if kind == "lengths":
        lengths = rng.integers(0, T + 1, size=B)
        lengths[0], lengths[1 % B] = T, 0
        return lengths, None
    mask = rng.random((B, T)) < 0.6
    mask[0] = True
    mask[1 % B] = False
    if B > 2:
        mask[2] = False
        mask[2, [0, T - 2]] = True  # a hole between two valid steps
    return None, mask


def read_sets(loss, B, T, n, m, valid, include_initial):
    """Boolean arrays: the elements of each argument the loss reads (the rule)."""
    if loss == "control":
        r = np.repeat(valid[:, :, None], m, axis=2)
        return {"pred": r, "target": r.copy()}
    rd = {"controls": np.zeros((B, T, m), bool), "x0": np.zeros((B, n), bool),
          "ref_controls": np.zeros((B, T, m), bool), "ref_states": np.zeros((B, T + 1, n), bool),
          "target": np.zeros((B, n), bool)}
    for b in range(B):
        steps = np.nonzero(valid[b])[0]
        if steps.size == 0:
            continue
        last = steps[-1]
        rd["controls"][b, :last + 1] = True
        rd["x0"][b] = True
        if loss.startswith("combined"):
            rd["ref_controls"][b, steps] = True
        if loss == "trajectory" or loss.startswith("combined"):
            rd["ref_states"][b, steps + 1] = True
            if include_initial:
                rd["ref_states"][b, 0] = True
        if loss in ("terminal", "combined_target"):
            rd["target"][b] = True
    return rd


def case(rng, loss, kind, dtype, B=13, T=7, include_initial=False):
    """Inputs with zeros in every unread element, the read sets and the selection."""
    system = tl.DoubleIntegrator(dt=0.25)
    n, m = 2, 1
    lengths, mask = make_selection(rng, kind, B, T)
    valid = valid_steps(B, T, lengths=lengths, mask=mask)
    if loss == "control":
        m = 3
        arrays = {"pred": rng.normal(size=(B, T, m)), "target": rng.normal(size=(B, T, m))}
    else:
        arrays = {"controls": rng.normal(size=(B, T, m)), "x0": rng.normal(size=(B, n)),
                  "ref_controls": rng.normal(size=(B, T, m)),
                  "ref_states": rng.normal(size=(B, T + 1, n)),
                  "target": rng.normal(size=(B, n))}
    rd = read_sets(loss, B, T, n, m, valid, include_initial)
    for name in list(arrays):
        arrays[name] = np.where(rd[name], arrays[name], 0.0).astype(dtype)
    return system, arrays, rd, lengths, mask


def call(loss, system, a, *, module=tl, **kw):
    """The loss through the NumPy API (or trajloss.torch / trajloss.jax: module)."""
    if loss == "control":
        return module.control_loss(a["pred"], a["target"], **kw)
    kw.pop("feature_weights", None)
    if loss == "trajectory":
        return module.trajectory_loss(system, a["controls"], a["x0"], a["ref_states"], **kw)
    kw.pop("include_initial", None) if loss == "terminal" else None
    kw.pop("discount", None) if loss == "terminal" else None
    if loss == "terminal":
        return module.terminal_loss(system, a["controls"], a["x0"], a["target"], **kw)
    target = a["target"] if loss == "combined_target" else None
    return module.combined_loss(system, a["controls"], a["x0"], a["ref_controls"],
                                a["ref_states"], weight=0.7, terminal_weight=0.4,
                                terminal_target=target, **kw)


def reference(loss, system, a, include_initial, discount, lengths, mask, penalty, delta):
    """The plain-loop value and gradient (loss_reference.py) of the zero-padded inputs."""
    Ad, Bd = system.Ad, system.Bd
    kw = dict(lengths=lengths, mask=mask, penalty=penalty, delta=delta)
    if loss == "control":
        return control_loss_ref(a["pred"], a["target"], discount=discount, **kw)
    if loss == "trajectory":
        return trajectory_loss_ref(Ad, Bd, a["controls"], a["x0"], a["ref_states"],
                                   include_initial=include_initial, discount=discount, **kw)
    if loss == "terminal":
        return terminal_loss_ref(Ad, Bd, a["controls"], a["x0"], a["target"], **kw)
    target = a["target"] if loss == "combined_target" else None
    return combined_loss_ref(Ad, Bd, a["controls"], a["x0"], a["ref_controls"], a["ref_states"],
                             0.7, terminal_weight=0.4, terminal_target=target,
                             include_initial=include_initial, discount=discount, **kw)


def bits(x):
    return np.ascontiguousarray(np.asarray(x)).tobytes()


def same_bits(r1, r2):
    assert bits(r1.value) == bits(r2.value), (r1.value, r2.value)
    assert bits(r1.grad) == bits(r2.grad)
    assert bits(r1.grad_x0) == bits(r2.grad_x0)


def padded(arrays, rd, value):
    return {k: np.where(rd[k], v, np.asarray(value, v.dtype)) for k, v in arrays.items()}


# ---- NumPy: the bits do not depend on the padding ------------------------

# include_initial is an option of the trajectory term only
LOSS_INITIAL = [(loss, False) for loss in LOSSES] + [
    (loss, True) for loss in ("trajectory", "combined", "combined_target")]


@pytest.mark.parametrize("discount", [None, 0.8])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("penalty", PENALTIES)
@pytest.mark.parametrize("kind", ["lengths", "mask", "none"])
@pytest.mark.parametrize("loss,include_initial", LOSS_INITIAL)
def test_padding_never_changes_a_bit(rng, loss, include_initial, kind, penalty, dtype, discount):
    system, a, rd, lengths, mask = case(rng, loss, kind, dtype, include_initial=include_initial)
    kw = dict(lengths=lengths, mask=mask, penalty=penalty, delta=0.5)
    if loss != "terminal":
        kw["discount"] = discount
    if loss in ("trajectory", "combined", "combined_target"):
        kw["include_initial"] = include_initial
    base = call(loss, system, a, **kw)
    ref = reference(loss, system, a, include_initial, discount, lengths, mask, penalty, 0.5)
    assert_close(base.value, ref["value"], dtype)
    assert_close(base.grad, ref["grad"], dtype)
    if loss != "control":
        assert_close(base.grad_x0, ref["grad_x0"], dtype)
    for fill in fills(dtype):
        same_bits(call(loss, system, padded(a, rd, fill), **kw), base)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["lengths", "mask", "none"])
@pytest.mark.parametrize("B", [300, 1030])
@pytest.mark.parametrize("loss", ["trajectory", "terminal", "combined", "control"])
def test_padding_bits_large_batches(rng, loss, B, kind, dtype, threads):
    """Several chunks of 256 sequences, the fast and 512-bit kernels (no
    selection, squared error) and a partial last tile; 1 and 2 threads."""
    system, a, rd, lengths, mask = case(rng, loss, kind, dtype, B=B, T=9)
    kw = dict(lengths=lengths, mask=mask)
    old = tl.get_num_threads()
    tl.set_num_threads(threads)
    try:
        base = call(loss, system, a, **kw)
        for fill in (np.nan, np.inf):
            same_bits(call(loss, system, padded(a, rd, fill), **kw), base)
        if threads == 2:
            tl.set_num_threads(1)
            same_bits(call(loss, system, padded(a, rd, np.nan), **kw), base)
    finally:
        tl.set_num_threads(old)


# ---- a NaN where the loss reads: an error naming the argument -------------

def _names(loss):
    if loss == "control":
        return {"pred": "pred", "target": "target"}
    names = {"controls": "controls", "x0": "x0"}
    if loss.startswith("combined"):
        names.update(ref_controls="ref_controls", ref_states="ref_states")
    if loss == "trajectory":
        names["ref_states"] = "ref_states"
    if loss == "terminal":
        names["target"] = "target"
    if loss == "combined_target":
        names["target"] = "terminal_target"
    return names


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("penalty", PENALTIES)
@pytest.mark.parametrize("kind", ["lengths", "mask", "none"])
@pytest.mark.parametrize("loss", LOSSES)
def test_nan_in_a_read_element(rng, loss, kind, penalty, dtype):
    """Each read element tried (first, last and a random one of each argument):
    check_finite=True raises naming the argument; check_finite=False gives a
    NaN value and NaN gradients -- never a finite-looking result."""
    system, a, rd, lengths, mask = case(rng, loss, kind, dtype, include_initial=True)
    kw = dict(lengths=lengths, mask=mask, penalty=penalty, delta=0.5)
    if loss not in ("control", "terminal"):
        kw["include_initial"] = True
    for key, name in _names(loss).items():
        where = np.argwhere(rd[key])
        assert len(where) > 0
        for idx in {0, len(where) - 1, int(rng.integers(len(where)))}:
            for bad in (np.nan, np.inf):
                b = {k: v.copy() for k, v in a.items()}
                b[key][tuple(where[idx])] = bad
                with pytest.raises(ValueError, match=rf"^{name} contains NaN or inf"):
                    call(loss, system, b, **kw)
                res = call(loss, system, b, check_finite=False, **kw)
                grads = [res.grad] + ([] if res.grad_x0 is None else [res.grad_x0])
                if np.isnan(bad):
                    assert np.isnan(res.value), (key, idx)
                    assert any(np.isnan(g).any() for g in grads), (key, idx)
                else:  # the gradients may be finite: "l1" and "huber" have a
                    # bounded derivative at an infinite residual
                    assert not np.isfinite(res.value), (key, idx)


def test_masked_out_control_still_drives_the_states(rng):
    """A control a mask leaves out, before the sequence's last valid step, is
    read: it moves the later states (so the value), and a NaN there raises.
    After the last valid step it is padding."""
    system = tl.DoubleIntegrator(dt=0.25)
    B, T = 3, 6
    u, x0 = rng.normal(size=(B, T, 1)), rng.normal(size=(B, 2))
    ru, rs = rng.normal(size=(B, T, 1)), rng.normal(size=(B, T + 1, 2))
    mask = np.ones((B, T), bool)
    mask[0, 2] = False  # a hole
    mask[0, 5] = False  # after the last valid step (4)
    base = tl.combined_loss(system, u, x0, ru, rs, weight=1.0, mask=mask)
    moved = u.copy()
    moved[0, 2] += 1.0
    assert tl.combined_loss(system, moved, x0, ru, rs, weight=1.0, mask=mask).value != base.value
    # its gradient is that of the later states only (the control term skips it)
    h = 1e-6
    up, dn = u.copy(), u.copy()
    up[0, 2, 0] += h
    dn[0, 2, 0] -= h
    fd = (tl.combined_loss(system, up, x0, ru, rs, weight=1.0, mask=mask).value -
          tl.combined_loss(system, dn, x0, ru, rs, weight=1.0, mask=mask).value) / (2 * h)
    np.testing.assert_allclose(base.grad[0, 2, 0], fd, rtol=1e-6, atol=1e-9)
    bad = u.copy()
    bad[0, 2] = np.nan
    with pytest.raises(ValueError, match=r"^controls contains NaN"):
        tl.combined_loss(system, bad, x0, ru, rs, weight=1.0, mask=mask)
    # the reference control there is not read: the control term skips the step
    rbad = ru.copy()
    rbad[0, 2] = np.nan
    same_bits(tl.combined_loss(system, u, x0, rbad, rs, weight=1.0, mask=mask), base)
    # after the last valid step: padding
    pad = u.copy()
    pad[0, 5] = np.nan
    same_bits(tl.combined_loss(system, pad, x0, ru, rs, weight=1.0, mask=mask), base)
    # control_loss never reads a masked step
    p = u.copy()
    p[0, 2] = np.nan
    same_bits(tl.control_loss(p, ru, mask=mask), tl.control_loss(u, ru, mask=mask))


def test_no_valid_step_is_reported_as_such_with_nan_padding(rng):
    """A batch with no valid step reads nothing: the error says so, NaN or not."""
    pred = np.full((3, 4, 2), np.nan)
    with pytest.raises(ValueError, match="no valid step"):
        tl.control_loss(pred, pred, lengths=[0, 0, 0])
    system = tl.DoubleIntegrator()
    with pytest.raises(ValueError, match="no valid step"):
        tl.trajectory_loss(system, np.full((3, 4, 1), np.nan), np.full((3, 2), np.nan),
                           np.full((3, 5, 2), np.nan), mask=np.zeros((3, 4), bool))


# ---- check_finite=False: what it turns off ---------------------------------

@pytest.mark.parametrize("penalty", ["l1", "huber"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_unchecked_nan_gives_nan_gradient_for_every_penalty(rng, penalty, dtype):
    """"l1" and "huber" take the derivative by comparisons, which made a NaN
    residual a finite 0 or -delta: with check_finite=False a NaN input came
    back as a NaN value with finite-looking gradients."""
    system = tl.DoubleIntegrator()
    u = rng.normal(size=(4, 5, 1)).astype(dtype)
    x0 = rng.normal(size=(4, 2)).astype(dtype)
    ru = rng.normal(size=(4, 5, 1)).astype(dtype)
    rs = rng.normal(size=(4, 6, 2)).astype(dtype)
    u[1, 2, 0] = np.nan
    res = tl.control_loss(u, ru, penalty=penalty, check_finite=False)
    assert np.isnan(res.value) and np.isnan(res.grad[1, 2, 0])
    assert np.isfinite(np.delete(res.grad.ravel(), 1 * 5 + 2)).all()
    for lengths in (None, [5, 5, 5, 4]):
        res = tl.combined_loss(system, u, x0, ru, rs, weight=0.5, penalty=penalty,
                               lengths=lengths, check_finite=False)
        assert np.isnan(res.value) and np.isnan(res.grad[1, 2, 0])
        assert np.isfinite(res.grad[[0, 2, 3]]).all()  # the other sequences are untouched


def test_check_finite_false_and_overflow(rng):
    """check_finite=False turns off the input scan (its ValueError) and the
    overflow RuntimeWarning; the result still shows the inf/NaN."""
    big = np.full((2, 3, 1), 1e200)
    with pytest.warns(RuntimeWarning, match="overflow"):
        value = tl.control_loss(big, -big).value
    assert value == np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = tl.control_loss(big, -big, check_finite=False).value
        nan_in = big.copy()
        nan_in[0, 0, 0] = np.nan
        res = tl.control_loss(nan_in, np.zeros_like(big), check_finite=False)
    assert value == np.inf
    assert np.isnan(res.value) and np.isnan(res.grad[0, 0, 0])


# ---- final_state_error -----------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_final_state_error_reads_controls_before_each_length(rng, dtype):
    system = tl.DoubleIntegrator(dt=0.5)
    B, T = 5, 6
    U = rng.normal(size=(B, T, 1)).astype(dtype)
    x0 = rng.normal(size=(B, 2)).astype(dtype)
    xf = rng.normal(size=(B, 2)).astype(dtype)
    lengths = np.array([6, 0, 3, 1, 5])
    for b in range(B):
        U[b, lengths[b]:] = 0
    base = tl.final_state_error(system, U, x0, xf, lengths)
    # reference: a plain loop in float64
    for b in range(B):
        x = x0[b].astype(np.float64)
        for k in range(lengths[b]):
            x = system.Ad @ x + system.Bd @ U[b, k].astype(np.float64)
        np.testing.assert_allclose(base[b], np.linalg.norm(x - xf[b]),
                                   rtol=1e-12 if dtype == np.float64 else 1e-5)
    for fill in fills(dtype):
        P = U.copy()
        for b in range(B):
            P[b, lengths[b]:] = fill
        assert bits(tl.final_state_error(system, P, x0, xf, lengths)) == bits(base)
    bad = U.copy()
    bad[2, 2] = np.nan
    with pytest.raises(ValueError, match=r"^controls contains NaN"):
        tl.final_state_error(system, bad, x0, xf, lengths)
    out = tl.final_state_error(system, bad, x0, xf, lengths, check_finite=False)
    assert np.isnan(out[2]) and np.isfinite(np.delete(out, 2)).all()
    # x0 and xf are read for every sequence, an empty one too (its error is |x0 - xf|)
    bx = x0.copy()
    bx[1, 0] = np.nan
    with pytest.raises(ValueError, match=r"^x0 contains NaN"):
        tl.final_state_error(system, U, bx, xf, lengths)


# ---- control_loss with 2-D inputs -----------------------------------------

def test_control_loss_2d_is_one_sequence_of_T_steps(rng):
    """(T, D) inputs are one unbatched sequence: the discount, lengths and
    mask run along axis 0 -- checked against a plain loop."""
    T, D = 6, 3
    pred, target = rng.normal(size=(T, D)), rng.normal(size=(T, D))
    g = 0.7
    for lengths in (None, 4):
        steps = T if lengths is None else lengths
        w = np.array([g ** t for t in range(steps)])
        w = w * steps / w.sum()
        expected = sum(w[t] * np.mean((pred[t] - target[t]) ** 2) for t in range(steps)) / steps
        res = tl.control_loss(pred, target, discount=g, lengths=lengths)
        np.testing.assert_allclose(res.value, expected, rtol=1e-13)
    mask = np.array([True, False, True, True, False, True])
    res = tl.control_loss(pred, target, mask=mask)
    expected = np.mean((pred[mask] - target[mask]) ** 2)
    np.testing.assert_allclose(res.value, expected, rtol=1e-13)
    np.testing.assert_allclose(res.grad[mask], 2 * (pred[mask] - target[mask]) / pred[mask].size,
                               rtol=1e-13)
    assert np.all(res.grad[~mask] == 0)


@pytest.mark.parametrize("module", ["numpy", "torch", "jax"])
def test_control_loss_2d_with_batch_shaped_selection_raises(rng, module):
    B, T = 4, 6
    pred, target = rng.normal(size=(B, T)), rng.normal(size=(B, T))
    lengths = np.array([6, 3, 2, 5])
    if module == "numpy":
        fn = tl.control_loss
    elif module == "torch":
        torch = pytest.importorskip("torch")
        import trajloss.torch as tt
        pred, target = torch.tensor(pred), torch.tensor(target)
        lengths = torch.tensor(lengths)
        fn = tt.control_loss
    else:
        pytest.importorskip("jax")
        import trajloss.jax as tj
        fn = tj.control_loss
    with pytest.raises(ValueError, match=r"^lengths: control_loss reads a 2-D pred of shape "
                                         r"\(T, D\) = \(4, 6\).*\(B, T, 1\)"):
        fn(pred, target, lengths=lengths)
    for mask in (np.ones((B, T), bool), np.ones(T, bool)):
        with pytest.raises(ValueError, match=r"^mask: control_loss reads a 2-D pred.*\(B, T, 1\)"):
            fn(pred, target, mask=mask)
    # the fix the message gives: (B, T, 1)
    if module == "numpy":
        res = tl.control_loss(pred[..., None], target[..., None], lengths=lengths)
        ref = control_loss_ref(pred[..., None], target[..., None], lengths=lengths)
        np.testing.assert_allclose(res.value, ref["value"], rtol=1e-13)


# ---- torch and JAX: forward value and autograd gradient -------------------

def _torch_args(a, torch):
    return {k: torch.tensor(v, requires_grad=k in ("pred", "target", "controls", "x0"))
            for k, v in a.items()}


def framework_options(loss, lengths, mask, penalty):
    """The options of the torch/JAX padding tests, and the arguments they
    differentiate."""
    kw = dict(lengths=lengths, mask=mask, penalty=penalty, delta=0.5)
    if loss != "terminal":
        kw.update(discount=0.9)
    if loss not in ("control", "terminal"):
        kw["include_initial"] = True
    diff = ("pred", "target") if loss == "control" else ("controls", "x0")
    return kw, diff


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("penalty", PENALTIES)
@pytest.mark.parametrize("kind", ["lengths", "mask"])
@pytest.mark.parametrize("loss", LOSSES)
def test_torch_padding_never_changes_a_bit(rng, loss, kind, penalty, dtype):
    torch = pytest.importorskip("torch")
    import trajloss.torch as tt
    system, a, rd, lengths, mask = case(rng, loss, kind, dtype, include_initial=True)
    kw, diff = framework_options(loss, lengths, mask, penalty)

    def run(arrays):
        t = _torch_args(arrays, torch)
        value = call(loss, system, t, module=tt, **kw)
        value.backward()
        return bits(value.detach().numpy()), [bits(t[k].grad.numpy()) for k in diff]

    base = run(a)
    np_value = call(loss, system, a, **kw).value
    np.testing.assert_allclose(float(np.frombuffer(base[0], dtype=dtype)[0]), np_value,
                               rtol=1e-15 if dtype == np.float64 else 1e-6)
    for fill in (np.nan, np.inf, 1e300 if dtype == np.float64 else 3e38):
        assert run(padded(a, rd, fill)) == base


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("penalty", ["mse", "huber"])
@pytest.mark.parametrize("kind", ["lengths", "mask"])
@pytest.mark.parametrize("loss", LOSSES)
def test_jax_padding_never_changes_a_bit(rng, loss, kind, penalty, dtype):
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import trajloss.jax as tj
    system, a, rd, lengths, mask = case(rng, loss, kind, dtype, include_initial=True)
    kw, diff = framework_options(loss, lengths, mask, penalty)

    def run(arrays):
        def f(*xs):
            args = dict(arrays)
            args.update(zip(diff, xs))
            return call(loss, system, args, module=tj, **kw)
        xs = [jax.numpy.asarray(arrays[k]) for k in diff]
        value, grads = jax.value_and_grad(f, argnums=(0, 1))(*xs)
        return bits(np.asarray(value)), [bits(np.asarray(g)) for g in grads]

    base = run(a)
    for fill in (np.nan, np.inf):
        assert run(padded(a, rd, fill)) == base
