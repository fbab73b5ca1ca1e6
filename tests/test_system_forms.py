"""Every public function that takes a system, on every linear system form
(DESIGN.md, "Every kind of system"), against plain NumPy loops, explicit
Jacobians, scipy.linalg.expm, numpy.linalg.lstsq and central differences
(tests/system_forms_reference.py; never the library against itself).

Forms (see FORMS there): LinearSystem with Ad/Bd shared or per sample and an
offset (n,) or (B, n); TimeVaryingSystem with (T, ...) or (B, T, ...) arrays,
mixed, offsets (T, n) / (B, T, n); LinearSystem.from_continuous with batched
A and/or B and dt scalar or (B,).
"""
import numpy as np
import pytest
import scipy.linalg

import trajloss
from system_forms_reference import (ALL_FORMS, FORMS, SHARED_FORMS, close, controllability,
                                    explicit_jacobian, make_case, min_norm_controls, np_adjoint,
                                    np_loss, np_rollout, zoh)

PENALTIES = ["mse", "l1", "huber"]
RTOL64 = 1e-11
RTOL32 = 1e-5

# option sets of the losses: the DESIGN's knobs, in combinations
OPTIONS = {
    "plain": {},
    "lengths-discount-initial": dict(lengths="some", discount=0.8, include_initial=True,
                                     state_weights="yes"),
    "mask-discount-features": dict(mask="some", discount=1.25, feature_weights="yes",
                                   state_weights="yes"),
}


def data(case, seed=1, dtype=np.float64):
    rng = np.random.default_rng([seed, case.B, case.T])
    B, T, n, m = case.B, case.T, case.n, case.m
    return dict(
        x0=rng.standard_normal((B, n)).astype(dtype),
        U=rng.standard_normal((B, T, m)).astype(dtype),
        ref_controls=rng.standard_normal((B, T, m)).astype(dtype),
        ref_states=(2.0 * rng.standard_normal((B, T + 1, n))).astype(dtype),
        target=rng.standard_normal((B, n)).astype(dtype),
        lengths=rng.integers(0, T + 1, B) if B > 1 else np.array([T - 1]),
        mask=rng.random((B, T)) < 0.6,
        state_weights=rng.uniform(0.2, 2.0, n),
        feature_weights=rng.uniform(0.2, 2.0, m),
    )


def options(d, name):
    """Keyword arguments of the option set ``name`` for data ``d``."""
    opts = dict(OPTIONS[name])
    if opts.get("lengths") == "some":
        lengths = d["lengths"].copy()
        lengths[0] = max(lengths[0], 1)  # at least one valid step in the batch
        opts["lengths"] = lengths
    if opts.get("mask") == "some":
        mask = d["mask"].copy()
        mask[0, 0] = True
        opts["mask"] = mask
    for k in ("state_weights", "feature_weights"):
        if opts.get(k) == "yes":
            opts[k] = d[k]
    return opts


def call_loss(system, kind, d, U=None, x0=None, **kw):
    U = d["U"] if U is None else U
    x0 = d["x0"] if x0 is None else x0
    if kind == "trajectory":
        kw.pop("feature_weights", None)
        return trajloss.trajectory_loss(system, U, x0, d["ref_states"], **kw)
    if kind == "terminal":
        for k in ("feature_weights", "discount", "include_initial"):
            kw.pop(k, None)
        return trajloss.terminal_loss(system, U, x0, d["target"], **kw)
    return trajloss.combined_loss(system, U, x0, d["ref_controls"], d["ref_states"],
                                  weight=0.7, terminal_weight=0.4, **kw)


def ref_loss(case, kind, d, **kw):
    kw = dict(kw)
    if kind == "terminal":
        for k in ("feature_weights", "discount", "include_initial"):
            kw.pop(k, None)
        return np_loss(case, kind, d["U"], d["x0"], target=d["target"], **kw)
    if kind == "trajectory":
        kw.pop("feature_weights", None)
        return np_loss(case, kind, d["U"], d["x0"], ref_states=d["ref_states"], **kw)
    return np_loss(case, kind, d["U"], d["x0"], ref_controls=d["ref_controls"],
                   ref_states=d["ref_states"], weight=0.7, terminal_weight=0.4, **kw)


# --------------------------------------------------------------------------
# the systems themselves
# --------------------------------------------------------------------------

@pytest.mark.parametrize("form", ALL_FORMS)
def test_system_attributes(form):
    case = make_case(form, B=5, T=4)
    s = case.system
    kind, psA, psB, extra = FORMS[form]
    assert (s.n, s.m) == (case.n, case.m)
    per_sample = psA or psB or extra == "ps" or (kind == "cont" and extra == "vector")
    assert s.batch == (case.B if per_sample else None)
    assert s.steps == (case.T if kind == "tv" else None)
    if kind != "tv":
        # Ad/Bd as given (LTI) or by exact ZOH (continuous), per sample or shared
        Ad = np.asarray(s.Ad)
        want_A = case.A[:, 0] if Ad.ndim == 3 else case.A[0, 0]
        if Ad.ndim == 2:  # shared: only right if every sample's matrix is the same
            assert np.all(case.A == case.A[:1, :1]), "Ad shared but the samples differ"
        close(Ad, want_A, 1e-13, "Ad")
        Bd = np.asarray(s.Bd)
        want_B = case.Bm[:, 0] if Bd.ndim == 3 else case.Bm[0, 0]
        if Bd.ndim == 2:
            assert np.all(case.Bm == case.Bm[:1, :1]), "Bd shared but the samples differ"
        close(Bd, want_B, 1e-13, "Bd")
    if kind == "cont":
        close(s.A, case.raw["A"], 0, "A kept")
        close(s.B, case.raw["B"], 0, "B kept")
        close(np.asarray(s.dt, float), case.raw["dt"], 0, "dt kept")
        assert s.method == "zoh"
    if kind == "tv":
        close(s.Ad, case.raw["Ad"], 0, "Ad as given")
        close(s.Bd, case.raw["Bd"], 0, "Bd as given")
    if kind in ("lti", "tv") and extra is not None:
        close(s.offset, case.raw["offset"], 0, "offset")
    elif kind in ("lti", "tv"):
        assert s.offset is None


@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_from_continuous_batched_approximate_schemes(method):
    rng = np.random.default_rng(3)
    A = rng.standard_normal((4, 3, 3))
    Bc = rng.standard_normal((3, 2))
    dt = rng.uniform(0.1, 0.3, 4)
    s = trajloss.LinearSystem.from_continuous(A, Bc, dt, method=method)
    for b in range(4):
        F = dt[b] * A[b]
        if method == "euler":
            Ad, Bd = np.eye(3) + F, dt[b] * Bc
        else:
            Ad = np.eye(3) + F + F @ F / 2 + F @ F @ F / 6 + F @ F @ F @ F / 24
            Bd = dt[b] * (np.eye(3) + F / 2 + F @ F / 6 + F @ F @ F / 24) @ Bc
        close(s.Ad[b], Ad, 1e-13, f"Ad[{b}]")
        close(s.Bd[b], Bd, 1e-13, f"Bd[{b}]")


# --------------------------------------------------------------------------
# rollout and its adjoint
# --------------------------------------------------------------------------

@pytest.mark.parametrize("form", ALL_FORMS)
def test_rollout(form):
    case = make_case(form, B=5, T=4)
    d = data(case)
    X = trajloss.rollout(case.system, d["x0"], d["U"])
    assert X.dtype == np.float64
    close(X, np_rollout(case.A, case.Bm, case.c, d["x0"], d["U"]), RTOL64)


@pytest.mark.parametrize("form", ALL_FORMS)
def test_rollout_vjp_is_the_transposed_jacobian(form):
    case = make_case(form, B=3, T=4)
    d = data(case)
    G = np.random.default_rng(9).standard_normal((case.B, case.T + 1, case.n))
    gU, gx0 = trajloss.rollout_vjp(case.system, d["x0"], d["U"], G)
    assert gU.shape == d["U"].shape and gx0.shape == d["x0"].shape
    for b in range(case.B):
        JU, Jx = explicit_jacobian(case.A, case.Bm, b)
        close(gU[b], (JU.T @ G[b].ravel()).reshape(case.T, case.m), RTOL64, f"grad_controls[{b}]")
        close(gx0[b], Jx.T @ G[b].ravel(), RTOL64, f"grad_x0[{b}]")


@pytest.mark.parametrize("form", ["lti-psAB-off", "tv-psAB-psoff", "cont-psAB-dtvec"])
def test_rollout_vjp_central_differences(form):
    """<G, rollout(U, x0)> differentiated by central differences (it is affine,
    so the differences are exact up to rounding)."""
    case = make_case(form, B=2, T=3)
    d = data(case)
    G = np.random.default_rng(4).standard_normal((case.B, case.T + 1, case.n))
    gU, gx0 = trajloss.rollout_vjp(case.system, d["x0"], d["U"], G)

    def f(U, x0):
        return float(np.sum(G * trajloss.rollout(case.system, x0, U)))

    h = 1e-3
    for arr, g in ((d["U"], gU), (d["x0"], gx0)):
        fd = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            old = arr[i]
            arr[i] = old + h
            up = f(d["U"], d["x0"])
            arr[i] = old - h
            down = f(d["U"], d["x0"])
            arr[i] = old
            fd[i] = (up - down) / (2 * h)
        close(g, fd, 1e-8)


# --------------------------------------------------------------------------
# losses: values and gradients against NumPy
# --------------------------------------------------------------------------

@pytest.mark.parametrize("opt", list(OPTIONS))
@pytest.mark.parametrize("penalty", PENALTIES)
@pytest.mark.parametrize("form", ALL_FORMS)
def test_losses_against_numpy(form, penalty, opt):
    case = make_case(form, B=5, T=4)
    d = data(case)
    kw = options(d, opt)
    kw.update(penalty=penalty, delta=0.7)
    for kind in ("trajectory", "terminal", "combined"):
        res = call_loss(case.system, kind, d, **kw)
        value, gU, gx0, parts = ref_loss(case, kind, d, **kw)
        close(res.value, value, RTOL64, f"{kind} value")
        close(res.grad, gU, RTOL64, f"{kind} grad")
        close(res.grad_x0, gx0, RTOL64, f"{kind} grad_x0")
        if kind == "combined":
            comp = res.components
            close(comp.control, parts["control"], RTOL64, "control term")
            close(comp.trajectory, parts["trajectory"], RTOL64, "trajectory term")
            close(comp.terminal, parts["terminal"], RTOL64, "terminal term")


@pytest.mark.parametrize("form", ["lti-psA-psoff", "tv-psAB-psoff", "tv-psB",
                                  "cont-psAB-dtvec", "lti-shared-psoff"])
@pytest.mark.parametrize("kind", ["trajectory", "terminal", "combined"])
def test_loss_gradients_central_differences(form, kind):
    """Gradients against central differences of the loss value (float64, mse and
    huber away from the kink: a smooth function of controls and x0)."""
    case = make_case(form, B=3, T=3)
    d = data(case)
    kw = dict(lengths=np.array([3, 2, 1]), discount=0.9, penalty="huber", delta=10.0,
              state_weights=d["state_weights"])
    if kind != "terminal":
        kw["include_initial"] = True
    res = call_loss(case.system, kind, d, **kw)
    h = 1e-6

    def value():
        return call_loss(case.system, kind, d, **kw).value

    for name, g in (("U", res.grad), ("x0", res.grad_x0)):
        arr = d[name]
        fd = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            old = arr[i]
            arr[i] = old + h
            up = value()
            arr[i] = old - h
            down = value()
            arr[i] = old
            fd[i] = (up - down) / (2 * h)
        close(g, fd, 2e-7, f"{kind} d/d{name}")


@pytest.mark.parametrize("B", [1, 7, 8, 9, 300, 1030])
@pytest.mark.parametrize("form", ["lti-shared", "lti-psAB-off", "tv-psAB-psoff",
                                  "tv-shared-off", "cont-psAB-dtvec", "lti-shared-psoff"])
def test_batch_sizes(form, B):
    """Tiles of the fast path and their remainders: every B gives the NumPy numbers."""
    case = make_case(form, B=B, T=5)
    d = data(case)
    close(trajloss.rollout(case.system, d["x0"], d["U"]),
          np_rollout(case.A, case.Bm, case.c, d["x0"], d["U"]), RTOL64, "rollout")
    G = np.random.default_rng(2).standard_normal((B, case.T + 1, case.n))
    gU, gx0 = trajloss.rollout_vjp(case.system, d["x0"], d["U"], G)
    wU, wx0 = np_adjoint(case.A, case.Bm, G)
    close(gU, wU, RTOL64, "vjp controls")
    close(gx0, wx0, RTOL64, "vjp x0")
    lengths = d["lengths"].copy()
    lengths[0] = max(lengths[0], 1)
    mask = d["mask"].copy()
    mask[0, 0] = True
    for kind in ("trajectory", "terminal", "combined"):
        for kw in (dict(penalty="mse"),
                   dict(penalty="huber", delta=0.5, lengths=lengths, discount=0.9,
                        state_weights=d["state_weights"]),
                   dict(penalty="l1", mask=mask, discount=1.2, include_initial=True,
                        feature_weights=d["feature_weights"])):
            res = call_loss(case.system, kind, d, **kw)
            value, wU, wx0, _ = ref_loss(case, kind, d, **kw)
            close(res.value, value, RTOL64, f"{kind} {kw['penalty']} value")
            close(res.grad, wU, RTOL64, f"{kind} {kw['penalty']} grad")
            close(res.grad_x0, wx0, RTOL64, f"{kind} {kw['penalty']} grad_x0")


@pytest.mark.parametrize("nm", [(1, 1), (2, 1), (5, 2), (12, 4), (129, 3)])
@pytest.mark.parametrize("form", ["lti-shared", "lti-psAB-off", "tv-psAB-psoff", "tv-psA"])
def test_state_and_input_sizes(form, nm):
    """Runtime sizes n, m: small, the benchmark's, and one past the fast path's
    largest (129), over two tiles and a remainder (B = 17)."""
    n, m = nm
    B, T = (17, 4) if n < 100 else (9, 2)
    case = make_case(form, B=B, T=T, n=n, m=m)
    d = data(case)
    mask = d["mask"].copy()
    mask[0, 0] = True
    close(trajloss.rollout(case.system, d["x0"], d["U"]),
          np_rollout(case.A, case.Bm, case.c, d["x0"], d["U"]), RTOL64, "rollout")
    for kind in ("trajectory", "terminal", "combined"):
        for kw in (dict(penalty="huber", delta=0.5, lengths=np.maximum(d["lengths"], 1),
                        discount=0.9, state_weights=d["state_weights"], include_initial=True),
                   dict(penalty="mse", mask=mask, feature_weights=d["feature_weights"])):
            res = call_loss(case.system, kind, d, **kw)
            value, wU, wx0, _ = ref_loss(case, kind, d, **kw)
            close(res.value, value, RTOL64, f"{kind} value")
            close(res.grad, wU, RTOL64, f"{kind} grad")
            close(res.grad_x0, wx0, RTOL64, f"{kind} grad_x0")


# --------------------------------------------------------------------------
# float32 and unbatched inputs
# --------------------------------------------------------------------------

@pytest.mark.parametrize("B", [1, 9, 300])
@pytest.mark.parametrize("form", ["lti-psAB-off", "tv-psAB-psoff", "tv-psA", "cont-psAB-dtvec",
                                  "lti-shared-psoff", "tv-shared-off", "lti-shared"])
def test_float32_inputs(form, B):
    case = make_case(form, B=B, T=5)
    d = data(case, dtype=np.float32)
    X = trajloss.rollout(case.system, d["x0"], d["U"])
    assert X.dtype == np.float32
    close(X, np_rollout(case.A, case.Bm, case.c, d["x0"], d["U"]), RTOL32, "rollout")
    G = np.random.default_rng(2).standard_normal((case.B, case.T + 1, case.n)).astype(np.float32)
    gU, gx0 = trajloss.rollout_vjp(case.system, d["x0"], d["U"], G)
    assert gU.dtype == gx0.dtype == np.float32
    wU, wx0 = np_adjoint(case.A, case.Bm, G.astype(float))
    close(gU, wU, RTOL32, "vjp controls")
    close(gx0, wx0, RTOL32, "vjp x0")
    kw = dict(lengths=np.maximum(d["lengths"], 1), discount=0.9, penalty="mse")
    for kind in ("trajectory", "terminal", "combined"):
        res = call_loss(case.system, kind, d, **kw)
        value, wU, wx0, _ = ref_loss(case, kind, d, **kw)
        assert res.grad.dtype == res.grad_x0.dtype == np.float32
        close(res.value, value, RTOL32, f"{kind} value")
        close(res.grad, wU, RTOL32, f"{kind} grad")
        close(res.grad_x0, wx0, RTOL32, f"{kind} grad_x0")
    err = trajloss.final_state_error(case.system, d["U"], d["x0"], d["target"])
    assert err.dtype == np.float32
    Xr = np_rollout(case.A, case.Bm, case.c, d["x0"], d["U"])
    close(err, np.linalg.norm(Xr[:, -1] - d["target"], axis=1), RTOL32, "final_state_error")


@pytest.mark.parametrize("form", SHARED_FORMS)
def test_unbatched_inputs_with_shared_systems(form):
    case = make_case(form, B=1, T=4)
    d = data(case)
    x0, U = d["x0"][0], d["U"][0]
    X = trajloss.rollout(case.system, x0, U)
    close(X, np_rollout(case.A, case.Bm, case.c, d["x0"], d["U"])[0], RTOL64, "rollout")
    G = np.random.default_rng(3).standard_normal((case.T + 1, case.n))
    gU, gx0 = trajloss.rollout_vjp(case.system, x0, U, G)
    JU, Jx = explicit_jacobian(case.A, case.Bm, 0)
    close(gU, (JU.T @ G.ravel()).reshape(case.T, case.m), RTOL64, "vjp controls")
    close(gx0, Jx.T @ G.ravel(), RTOL64, "vjp x0")
    ud = {k: (v[0] if k in ("x0", "U", "ref_controls", "ref_states", "target") else v)
          for k, v in d.items()}
    for kind in ("trajectory", "terminal", "combined"):
        kw = dict(penalty="l1", lengths=3, discount=1.1)
        if kind != "terminal":
            kw["include_initial"] = True
        res = call_loss(case.system, kind, ud, **kw)
        rkw = dict(kw, lengths=np.array([3]))
        value, wU, wx0, _ = ref_loss(case, kind, d, **rkw)
        close(res.value, value, RTOL64, f"{kind} value")
        close(res.grad, wU[0], RTOL64, f"{kind} grad")
        close(res.grad_x0, wx0[0], RTOL64, f"{kind} grad_x0")
    err = trajloss.final_state_error(case.system, U, x0, d["target"][0])
    assert np.ndim(err) == 0
    close(err, np.linalg.norm(X[-1] - d["target"][0]), RTOL64, "final_state_error")


# --------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------

@pytest.mark.parametrize("form", ALL_FORMS)
def test_final_state_error_and_success_rate(form):
    case = make_case(form, B=6, T=4)
    d = data(case)
    X = np_rollout(case.A, case.Bm, case.c, d["x0"], d["U"])
    lengths = np.array([4, 0, 1, 2, 3, 4])
    err = trajloss.final_state_error(case.system, d["U"], d["x0"], d["target"], lengths)
    want = np.linalg.norm(X[np.arange(6), lengths] - d["target"], axis=1)
    close(err, want, RTOL64, "with lengths")
    err_full = trajloss.final_state_error(case.system, d["U"], d["x0"], d["target"])
    close(err_full, np.linalg.norm(X[:, -1] - d["target"], axis=1), RTOL64, "all steps")
    tol = float(np.median(want))
    assert trajloss.success_rate(case.system, d["U"], d["x0"], d["target"], tol,
                                 lengths) == np.mean(want <= tol)


# --------------------------------------------------------------------------
# minimum-energy references
# --------------------------------------------------------------------------

@pytest.mark.parametrize("form", ALL_FORMS)
def test_min_energy_exact(form):
    case = make_case(form, B=4, T=5)
    rng = np.random.default_rng(11)
    x0 = rng.standard_normal((case.B, case.n))
    xf = rng.standard_normal((case.B, case.n))
    ref = trajloss.min_energy(case.system, x0, xf, case.T, method="exact")
    assert ref.controls.shape == (case.B, case.T, case.m)
    assert ref.states.shape == (case.B, case.T + 1, case.n)
    X = np_rollout(case.A, case.Bm, case.c, x0, ref.controls)
    scale = max(1.0, np.abs(X).max())
    assert np.abs(X[:, -1] - xf).max() <= 1e-10 * scale, "does not reach xf"
    U = min_norm_controls(case.A, case.Bm, case.c, x0, xf, case.T)
    close(ref.controls, U, 1e-9, "minimum-norm controls")
    close(ref.states, np_rollout(case.A, case.Bm, case.c, x0, U), 1e-9, "states")
    close(ref.final_error, np.linalg.norm(X[:, -1] - xf, axis=1), 1e-9, "final_error")
    assert np.all(ref.final_error <= 1e-10 * scale)
    close(ref.energy, (U ** 2).sum(axis=(1, 2)) * case.dt, 1e-9, "energy")


def test_min_energy_exact_shared_target_and_per_sample_system():
    """One (n,) target for a batch of per-sample systems."""
    case = make_case("lti-psAB-off", B=3, T=4)
    x0 = np.random.default_rng(2).standard_normal((3, case.n))
    xf = np.array([0.5, -1.0, 2.0])
    ref = trajloss.min_energy(case.system, x0, xf, case.T)
    U = min_norm_controls(case.A, case.Bm, case.c, x0, np.broadcast_to(xf, (3, case.n)), case.T)
    close(ref.controls, U, 1e-9)


def test_min_energy_exact_ltv_controllability_from_products():
    """A time-varying system whose inputs reach one state only (B_k = b_k e_0) and
    whose Ad_k shift it on: the target is reachable only through the products
    of the Ad_k that the LTV controllability matrix is built from."""
    import trajloss as tl
    n, T = 3, 3
    Ad = np.zeros((T, n, n))
    Bd = np.zeros((T, n, 1))
    for k in range(T):
        Ad[k] = np.roll(np.eye(n), 1, axis=0) * (1.0 + 0.1 * k)
        Bd[k, 0, 0] = 1.0 + 0.2 * k
    s = tl.TimeVaryingSystem(Ad, Bd)
    x0 = np.array([[1.0, 2.0, 3.0]])
    xf = np.array([[-1.0, 0.5, 0.25]])
    ref = tl.min_energy(s, x0, xf, T)
    A = np.broadcast_to(Ad[None], (1, T, n, n))
    Bm = np.broadcast_to(Bd[None], (1, T, n, 1))
    C = controllability(A, Bm, 0, T)
    assert np.linalg.matrix_rank(C) == n
    U = min_norm_controls(A, Bm, np.zeros((1, T, n)), x0, xf, T)
    close(ref.controls, U, 1e-10)
    X = np_rollout(A, Bm, np.zeros((1, T, n)), x0, ref.controls)
    assert np.abs(X[0, -1] - xf[0]).max() <= 1e-10 * np.abs(X).max()


# --------------------------------------------------------------------------
# datasets and calibration
# --------------------------------------------------------------------------

def _check_dataset(case, ds, N, xf):
    assert ds.x0.shape == (N, case.n) and ds.xf.shape == (N, case.n)
    assert ds.controls.shape == (N, case.T, case.m)
    assert ds.states.shape == (N, case.T + 1, case.n)
    X = np_rollout(case.A, case.Bm, case.c, ds.x0, ds.controls)
    scale = max(1.0, np.abs(X).max())
    close(ds.states, X, 1e-9, "states are the rollout of the controls")
    assert np.abs(X[:, -1] - xf).max() <= 1e-10 * scale, "targets not reached"
    U = min_norm_controls(case.A, case.Bm, case.c, ds.x0, ds.xf, case.T)
    close(ds.controls, U, 1e-9, "minimum-norm controls of each sample's system")
    close(ds.energy, (U ** 2).sum(axis=(1, 2)) * case.dt, 1e-9, "energy")


@pytest.mark.parametrize("form", ["lti-psAB-off", "tv-psAB-psoff", "tv-shared-off",
                                  "cont-psAB-dtvec"])
def test_make_dataset(form):
    case = make_case(form, B=12, T=5)
    low, high = -np.ones(case.n), 2 * np.ones(case.n)
    target = np.array([0.5, -0.5, 1.0])
    ds = trajloss.make_dataset(case.system, case.B, case.T, x0_low=low, x0_high=high,
                               target=target, seed=4)
    assert np.all((ds.x0 >= low) & (ds.x0 <= high))
    close(ds.xf, np.broadcast_to(target, (case.B, case.n)), 0, "xf")
    _check_dataset(case, ds, case.B, target)


@pytest.mark.parametrize("form", ["lti-psAB", "tv-psAB-psoff"])
def test_make_dataset_resampling_keeps_each_samples_system(form):
    """Redrawn samples must be solved with their own (per-sample) system: the
    bound is chosen from NumPy's own solutions so that some draws exceed it."""
    case = make_case(form, B=16, T=5)
    low, high = -np.ones(case.n), np.ones(case.n)
    rng = np.random.default_rng(5)
    peaks = np.zeros((case.B, 64))
    for j in range(64):
        x0 = rng.uniform(low, high, (case.B, case.n))
        U = min_norm_controls(case.A, case.Bm, case.c, x0, np.zeros((case.B, case.n)), case.T)
        peaks[:, j] = np.abs(U).max(axis=(1, 2))
    bound = float(np.quantile(peaks, 0.3, axis=1).max())  # each sample passes >= 30 %
    ds = trajloss.make_dataset(case.system, case.B, case.T, x0_low=low, x0_high=high,
                               control_bound=bound, seed=0)
    assert ds.resampled > 0, "the bound was meant to force resampling"
    assert np.abs(ds.controls).max() <= bound
    _check_dataset(case, ds, case.B, np.zeros(case.n))


@pytest.mark.parametrize("baseline", ["random", "zero"])
@pytest.mark.parametrize("form", ["lti-psAB-off", "tv-psAB-psoff", "cont-psA"])
def test_calibrate(form, baseline):
    case = make_case(form, B=10, T=5)
    ds = trajloss.make_dataset(case.system, case.B, case.T, x0_low=-np.ones(case.n),
                               x0_high=np.ones(case.n), target=0.3, seed=2)
    cal = trajloss.calibrate(case.system, ds, baseline=baseline, control_bound=3.0, seed=7)
    if baseline == "random":
        U = np.random.default_rng(7).uniform(-3.0, 3.0, size=ds.controls.shape)
    else:
        U = np.zeros(ds.controls.shape)
    X = np_rollout(case.A, case.Bm, case.c, ds.x0, U)
    c = np.mean((U - ds.controls) ** 2)
    t = np.mean((X - ds.states) ** 2)  # every state, the initial one included
    close(cal.control_mse, c, RTOL64, "control_mse")
    close(cal.trajectory_mse, t, RTOL64, "trajectory_mse")
    close(cal.ratio, t / c, RTOL64, "ratio")
    close(cal.recommended_weight, c / t, RTOL64, "recommended_weight")


# --------------------------------------------------------------------------
# shared vs the same matrices per sample; threads; padding
# --------------------------------------------------------------------------

def _per_sample_copy(case):
    """The same system with every array given per sample (np.broadcast_to, copied)."""
    kind = FORMS[case.form][0]
    B = case.B
    rep = {k: (None if v is None else np.broadcast_to(v, (B,) + v.shape).copy())
           for k, v in case.raw.items()}
    cls = trajloss.TimeVaryingSystem if kind == "tv" else trajloss.LinearSystem
    return cls(rep["Ad"], rep["Bd"], offset=rep["offset"])


def _everything(system, d, lengths):
    """Every number a system feeds, for comparisons between two systems."""
    out = {"rollout": trajloss.rollout(system, d["x0"], d["U"])}
    G = np.random.default_rng(6).standard_normal(out["rollout"].shape)
    out["vjp_u"], out["vjp_x0"] = trajloss.rollout_vjp(system, d["x0"], d["U"], G)
    for kind in ("trajectory", "terminal", "combined"):
        kw = dict(lengths=lengths, discount=0.9, penalty="huber", delta=0.8,
                  state_weights=d["state_weights"])
        if kind != "terminal":
            kw["include_initial"] = True
        if kind == "combined":
            kw["feature_weights"] = d["feature_weights"]
        res = call_loss(system, kind, d, **kw)
        out[kind] = np.float64(res.value)
        out[kind + "_grad"] = res.grad
        out[kind + "_grad_x0"] = res.grad_x0
    out["final_state_error"] = trajloss.final_state_error(system, d["U"], d["x0"], d["target"],
                                                          lengths)
    return out


@pytest.mark.parametrize("B", [1, 9, 300])
@pytest.mark.parametrize("form", ["lti-shared", "lti-shared-off", "tv-shared", "tv-shared-off"])
def test_shared_equals_per_sample_copies(form, B):
    case = make_case(form, B=B, T=5)
    d = data(case)
    lengths = np.maximum(d["lengths"], 1)
    shared = _everything(case.system, d, lengths)
    copied = _everything(_per_sample_copy(case), d, lengths)
    for k in shared:
        close(copied[k], shared[k], 1e-13, k)


@pytest.mark.parametrize("form", ["lti-psAB-off", "tv-psAB-psoff", "tv-shared-off", "lti-shared"])
def test_threads_bit_identical(form):
    case = make_case(form, B=1030, T=6)
    d = data(case)
    lengths = np.maximum(d["lengths"], 1)
    before = trajloss.get_num_threads()
    try:
        trajloss.set_num_threads(1)
        one = _everything(case.system, d, lengths)
        trajloss.set_num_threads(2)
        two = _everything(case.system, d, lengths)
    finally:
        trajloss.set_num_threads(before)
    for k in one:
        assert np.asarray(one[k]).tobytes() == np.asarray(two[k]).tobytes(), k


@pytest.mark.parametrize("B", [9, 300])
@pytest.mark.parametrize("form", ["lti-psAB-off", "tv-psAB-psoff", "tv-shared-off",
                                  "cont-psAB-dtvec"])
def test_nan_padding_after_mask_changes_no_bit(form, B):
    """With a mask, the padding is what follows each sequence's last valid step
    (masked-out steps before it still drive the states and are read)."""
    case = make_case(form, B=B, T=6)
    d = data(case)
    T = case.T
    mask = d["mask"].copy()
    mask[0, 0] = True
    mask[-1] = False
    K = np.where(mask.any(1), T - np.argmax(mask[:, ::-1], axis=1), 0)  # last valid step + 1
    pad_u = np.arange(T)[None, :] >= K[:, None]
    scored = np.zeros((B, T + 1), bool)
    scored[:, 1:] = mask
    scored[:, 0] = mask.any(1)
    zero, nan = dict(d), dict(d)
    for k, pad in (("U", pad_u), ("ref_controls", ~mask), ("ref_states", ~scored)):
        zero[k] = np.where(pad[..., None], 0.0, d[k])
        nan[k] = np.where(pad[..., None], np.nan, d[k])
    zero["target"] = np.where((K == 0)[:, None], 0.0, d["target"])
    nan["target"] = np.where((K == 0)[:, None], np.nan, d["target"])
    a = _everything_padded(case.system, zero, None, d["target"], mask=mask)
    b = _everything_padded(case.system, nan, None, d["target"], mask=mask)
    for k in a:
        assert np.asarray(a[k]).tobytes() == np.asarray(b[k]).tobytes(), k
    for k in ("trajectory_grad", "terminal_grad", "combined_grad"):
        assert np.all(b[k][pad_u] == 0), f"{k}: padding has a gradient"


@pytest.mark.parametrize("B", [9, 300])
@pytest.mark.parametrize("form", ["lti-psAB-off", "tv-psAB-psoff", "tv-shared-off",
                                  "cont-psAB-dtvec"])
def test_nan_padding_changes_no_bit(form, B):
    case = make_case(form, B=B, T=6)
    d = data(case)
    lengths = d["lengths"].copy()
    lengths[0] = max(lengths[0], 1)
    lengths[-1] = 0
    T = case.T
    pad_u = np.arange(T)[None, :] >= lengths[:, None]           # controls after lengths
    scored = np.zeros((B, T + 1), bool)                          # states read (initial too)
    scored[:, 1:] = ~pad_u
    scored[:, 0] = lengths > 0
    zero, nan = dict(d), dict(d)
    for k, pad in (("U", pad_u), ("ref_controls", pad_u), ("ref_states", ~scored)):
        zero[k] = np.where(pad[..., None], 0.0, d[k])
        nan[k] = np.where(pad[..., None], np.nan, d[k])
    # the terminal target of a sequence with no valid step is not read by the loss
    # (final_state_error reads xf of every row: it gets the unpadded targets)
    zero["target"] = np.where((lengths == 0)[:, None], 0.0, d["target"])
    nan["target"] = np.where((lengths == 0)[:, None], np.nan, d["target"])
    a = _everything_padded(case.system, zero, lengths, d["target"])
    b = _everything_padded(case.system, nan, lengths, d["target"])
    for k in a:
        assert np.asarray(a[k]).tobytes() == np.asarray(b[k]).tobytes(), k
    for k in ("trajectory_grad", "terminal_grad", "combined_grad"):
        assert np.all(b[k][pad_u] == 0), f"{k}: padding has a gradient"


def _everything_padded(system, d, lengths, xf, mask=None):
    out = {}
    for kind in ("trajectory", "terminal", "combined"):
        kw = dict(discount=1.2, penalty="mse", state_weights=d["state_weights"])
        kw.update(dict(mask=mask) if mask is not None else dict(lengths=lengths))
        if kind != "terminal":
            kw["include_initial"] = True
        res = call_loss(system, kind, d, **kw)
        out[kind] = np.float64(res.value)
        out[kind + "_grad"] = res.grad
        out[kind + "_grad_x0"] = res.grad_x0
    if mask is None:
        out["final_state_error"] = trajloss.final_state_error(system, d["U"], d["x0"], xf,
                                                              lengths)
    return out


# --------------------------------------------------------------------------
# errors: a system whose B or T is not the data's
# --------------------------------------------------------------------------

def _calls(system, B, T, n=3, m=2):
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((B, n))
    U = rng.standard_normal((B, T, m))
    rs = rng.standard_normal((B, T + 1, n))
    return {
        "rollout": lambda: trajloss.rollout(system, x0, U),
        "rollout_vjp": lambda: trajloss.rollout_vjp(system, x0, U, rs),
        "trajectory_loss": lambda: trajloss.trajectory_loss(system, U, x0, rs),
        "terminal_loss": lambda: trajloss.terminal_loss(system, U, x0, x0),
        "combined_loss": lambda: trajloss.combined_loss(system, U, x0, U, rs, weight=1.0),
        "final_state_error": lambda: trajloss.final_state_error(system, U, x0, x0),
        "success_rate": lambda: trajloss.success_rate(system, U, x0, x0, 0.1),
        "min_energy": lambda: trajloss.min_energy(system, x0, x0, T),
        "make_dataset": lambda: trajloss.make_dataset(system, B, T, x0_low=-np.ones(n),
                                                      x0_high=np.ones(n)),
    }


@pytest.mark.parametrize("fn", list(_calls(None, 1, 1)))
@pytest.mark.parametrize("form", ["lti-psA", "lti-psB", "lti-shared-psoff", "tv-psAB",
                                  "cont-dtvec"])
def test_per_sample_batch_mismatch_names_system(form, fn):
    case = make_case(form, B=4, T=3)
    with pytest.raises(ValueError, match="system"):
        _calls(case.system, 5, 3)[fn]()


@pytest.mark.parametrize("fn", list(_calls(None, 1, 1)))
@pytest.mark.parametrize("form", ["tv-shared", "tv-psAB", "tv-shared-off"])
def test_time_varying_steps_mismatch_names_system(form, fn):
    case = make_case(form, B=4, T=3)
    with pytest.raises(ValueError, match="system"):
        _calls(case.system, 4, 5)[fn]()


def test_calibrate_dataset_of_another_size_names_system():
    case = make_case("lti-psAB", B=4, T=3)
    other = make_case("lti-psAB", B=6, T=3)
    ds = trajloss.make_dataset(other.system, 6, 3, x0_low=-np.ones(3), x0_high=np.ones(3))
    with pytest.raises(ValueError, match="system"):
        trajloss.calibrate(case.system, ds)


def test_from_continuous_zoh_matches_scipy_per_sample():
    """Direct check of the batched ZOH against scipy's expm of the augmented matrix."""
    rng = np.random.default_rng(8)
    A = rng.standard_normal((5, 4, 4))
    Bc = rng.standard_normal((5, 4, 2))
    dt = rng.uniform(0.05, 0.5, 5)
    s = trajloss.LinearSystem.from_continuous(A, Bc, dt)
    for b in range(5):
        Ad, Bd = zoh(A[b], Bc[b], dt[b])
        close(s.Ad[b], Ad, 1e-13, f"Ad[{b}]")
        close(s.Bd[b], Bd, 1e-13, f"Bd[{b}]")
    assert s.batch == 5
