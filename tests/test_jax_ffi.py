"""trajloss.jax's XLA FFI path: the C core as custom calls inside compiled JAX
programs (src/trajloss/xla_ffi.c).

Checked here: the compiled programs hold the custom calls and no host callback;
values and gradients under jit, grad and vmap against plain NumPy loops
(tests/system_forms_reference.py, tests/loss_reference.py) and central finite
differences, for every system form, float32 and float64; errors that depend on
values (NaN, lengths, a traced negative weight) raised with the NumPy API's own
message; shard_map over one and two devices (subprocess with two host devices);
the pure_callback fallback (TRAJLOSS_JAX_BACKEND=callback); and the ABI
declarations of trajloss/_xla_ffi_abi.h against jaxlib's own C header.
"""
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

import trajloss  # noqa: E402
import trajloss.jax as tlj  # noqa: E402
from conftest import central_fd  # noqa: E402
from loss_reference import control_loss_ref, kink_free  # noqa: E402
from system_forms_reference import (ALL_FORMS, close, make_case, np_adjoint, np_loss,  # noqa: E402
                                    np_rollout)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(trajloss.__file__)))
B, T = 3, 5
TARGETS = ("trajloss_rollout_loss", "trajloss_control_loss", "trajloss_rollout",
           "trajloss_rollout_vjp")


def data(case, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    U = rng.standard_normal((case.B, case.T, case.m))
    x0 = rng.standard_normal((case.B, case.n))
    return dict(U=U.astype(dtype), x0=x0.astype(dtype),
                RU=rng.standard_normal(U.shape).astype(dtype),
                RX=rng.standard_normal((case.B, case.T + 1, case.n)).astype(dtype),
                tg=rng.standard_normal((case.B, case.n)).astype(dtype),
                lengths=np.array([case.T, 2, 0][:case.B] + [case.T] * max(0, case.B - 3)))


def loss_of(kind, case, d, **kw):
    """The trajloss.jax loss ``kind`` of (U, x0) with the data's references."""
    s = case.system
    if kind == "trajectory":
        return lambda U, x0: tlj.trajectory_loss(s, U, x0, d["RX"], **kw)
    if kind == "terminal":
        return lambda U, x0: tlj.terminal_loss(s, U, x0, d["tg"], **kw)
    return lambda U, x0: tlj.combined_loss(s, U, x0, d["RU"], d["RX"], weight=0.4,
                                           terminal_weight=0.7, **kw)


def reference(kind, case, d, U, x0, **kw):
    refs = dict(trajectory=dict(ref_states=d["RX"]), terminal=dict(target=d["tg"]),
                combined=dict(ref_controls=d["RU"], ref_states=d["RX"], weight=0.4,
                              terminal_weight=0.7))[kind]
    value, gU, gx0, _ = np_loss(case, kind, U, x0, **refs, **kw)
    return value, gU, gx0


def custom_calls(hlo):
    return re.findall(r"custom_call @(\w+)", hlo) + re.findall(r'custom_call_target="(\w+)"', hlo)


def primitives(jaxpr):
    """Every primitive of a jaxpr, sub-jaxprs included."""
    from jax.extend import core
    out = []
    for eqn in jaxpr.eqns:
        out.append(eqn.primitive.name)
        for p in eqn.params.values():
            for v in (p if isinstance(p, (tuple, list)) else (p,)):
                if isinstance(v, core.ClosedJaxpr):
                    out.extend(primitives(v.jaxpr))
                elif isinstance(v, core.Jaxpr):
                    out.extend(primitives(v))
    return out


def run_python(code, devices=1, **env):
    full = dict(os.environ, PYTHONPATH=PACKAGE_PARENT + os.pathsep + os.path.join(ROOT, "tests"),
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                JAX_PLATFORMS="cpu", **env)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


# ---- the path in use -------------------------------------------------------------------

def test_the_ffi_path_is_built_and_active():
    # the extension is part of every build: no jaxlib needed to compile it
    from trajloss import _core
    assert sorted(_core.xla_ffi_targets()) == sorted(TARGETS)
    assert tlj.BACKEND == "ffi"


@pytest.mark.parametrize("which", ["control", "trajectory", "terminal", "combined", "rollout"])
def test_compiled_programs_hold_custom_calls_and_no_callback(which):
    case = make_case("lti-psAB-off", B, T)
    d = data(case)
    if which == "control":
        f = lambda U, x0: tlj.control_loss(U, d["RU"], feature_weights=jnp.ones(case.m))  # noqa
    elif which == "rollout":
        f = lambda U, x0: jnp.sum(tlj.rollout(case.system, x0, U) ** 2)  # noqa: E731
    else:
        f = loss_of(which, case, d, state_weights=jnp.ones(case.n))
    g = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))
    hlo = g.lower(d["U"], d["x0"]).as_text()
    calls = custom_calls(hlo)
    assert calls and set(calls) <= set(TARGETS), calls
    assert "callback" not in hlo
    prims = primitives(jax.make_jaxpr(jax.value_and_grad(f, argnums=(0, 1)))(d["U"], d["x0"]).jaxpr)
    assert "ffi_call" in prims and "pure_callback" not in prims


# ---- values and gradients --------------------------------------------------------------

@pytest.mark.parametrize("form", ALL_FORMS)
@pytest.mark.parametrize("kind", ["trajectory", "terminal", "combined"])
def test_every_form_under_jit_and_grad_matches_numpy_loops(form, kind):
    case = make_case(form, B, T)
    d = data(case, seed=ALL_FORMS.index(form))
    kw = dict(lengths=d["lengths"], discount=0.8) if kind != "terminal" else \
        dict(lengths=d["lengths"])
    if kind == "trajectory":
        kw["include_initial"] = True
    f = jax.jit(jax.value_and_grad(loss_of(kind, case, d, **kw), argnums=(0, 1)))
    value, (gU, gx0) = f(d["U"], d["x0"])
    rv, rU, rx0 = reference(kind, case, d, d["U"], d["x0"], **kw)
    close(value, rv, 1e-12, form)
    close(gU, rU, 1e-11, form)
    close(gx0, rx0, 1e-11, form)


@pytest.mark.parametrize("form", ["lti-shared", "tv-psAB-psoff", "cont-psAB-dtvec"])
def test_float32_matches_numpy_loops(form):
    case = make_case(form, B, T)
    d = data(case, seed=1, dtype=np.float32)
    f = jax.jit(jax.value_and_grad(loss_of("combined", case, d, lengths=d["lengths"]),
                                   argnums=(0, 1)))
    value, (gU, gx0) = f(d["U"], d["x0"])
    assert value.dtype == gU.dtype == gx0.dtype == jnp.float32
    rv, rU, rx0 = reference("combined", case, d, d["U"], d["x0"], lengths=d["lengths"])
    close(value, rv, 2e-5)
    close(gU, rU, 2e-5)
    close(gx0, rx0, 2e-5)


def test_every_differentiable_input_matches_finite_differences():
    # one jitted gradient with respect to everything the loss is differentiable
    # in; each compared with central differences of the NumPy loop reference
    case = make_case("tv-psA-off", B, T)
    rng = np.random.default_rng(3)
    d = data(case, seed=3)
    fw, sw = rng.uniform(0.5, 2.0, case.m), rng.uniform(0.5, 2.0, case.n)
    L = np.array([T, 3, 4])
    args = dict(U=d["U"], x0=d["x0"], RU=d["RU"], RX=d["RX"], tg=d["tg"], fw=fw, sw=sw,
                w=np.float64(0.4), tw=np.float64(0.7))

    def ours(a):
        return tlj.combined_loss(case.system, a["U"], a["x0"], a["RU"], a["RX"], weight=a["w"],
                                 terminal_weight=a["tw"], terminal_target=a["tg"],
                                 feature_weights=a["fw"], state_weights=a["sw"], lengths=L,
                                 discount=0.7, penalty="huber", delta=0.9)

    def ref(a):
        return np_loss(case, "combined", a["U"], a["x0"], ref_controls=a["RU"],
                       ref_states=a["RX"], target=a["tg"], weight=float(a["w"]),
                       terminal_weight=float(a["tw"]), feature_weights=a["fw"],
                       state_weights=a["sw"], lengths=L, discount=0.7, penalty="huber",
                       delta=0.9)[0]

    value, grads = jax.jit(jax.value_and_grad(ours))({k: jnp.asarray(v) for k, v in args.items()})
    close(value, ref(args), 1e-12)
    for k, x in args.items():
        def f(v, k=k):
            return ref(dict(args, **{k: v.reshape(np.shape(x))}))
        fd = central_fd(f, np.asarray(x, float), 1e-6)
        close(grads[k], fd.reshape(np.shape(x)), 1e-6, k)


def test_control_loss_matches_numpy_loop_and_finite_differences():
    rng = np.random.default_rng(4)
    P = rng.standard_normal((4, 6, 3))
    R = P - kink_free(rng, P.shape, 0.7)
    fw = rng.uniform(0.5, 2.0, 3)
    mask = rng.random((4, 6)) < 0.7
    mask[:, 0] = True
    kw = dict(mask=mask, discount=1.3, penalty="huber", delta=0.7)
    f = jax.jit(jax.value_and_grad(lambda p, r, w: tlj.control_loss(p, r, feature_weights=w,
                                                                    **kw), argnums=(0, 1, 2)))
    value, (gp, gr, gw) = f(P, R, fw)
    ref = control_loss_ref(P, R, feature_weights=fw, **kw)
    close(value, ref["value"], 1e-12)
    close(gp, ref["grad"], 1e-12)
    close(gr, -ref["grad"], 1e-12)
    fd = central_fd(lambda w: control_loss_ref(P, R, feature_weights=w, **kw)["value"], fw, 1e-6)
    close(gw, fd, 1e-7)


@pytest.mark.parametrize("form", ["lti-shared", "lti-psA-psoff", "tv-shared-psoff", "tv-psAB"])
def test_rollout_and_its_adjoint_match_numpy_loops(form):
    case = make_case(form, B, T)
    d = data(case, seed=5)
    G = np.random.default_rng(6).standard_normal((B, T + 1, case.n))
    X = jax.jit(lambda x0, U: tlj.rollout(case.system, x0, U))(d["x0"], d["U"])
    close(X, np_rollout(case.A, case.Bm, case.c, d["x0"], d["U"]), 1e-12)
    gx0, gU = jax.jit(jax.grad(lambda x0, U: jnp.sum(G * tlj.rollout(case.system, x0, U)),
                               argnums=(0, 1)))(d["x0"], d["U"])
    rU, rx0 = np_adjoint(case.A, case.Bm, G)
    close(gU, rU, 1e-12)
    close(gx0, rx0, 1e-12)


def test_unbatched_inputs():
    case = make_case("lti-shared-off", 1, T)
    d = data(case, seed=7)
    f = jax.jit(jax.value_and_grad(
        lambda u, x: tlj.combined_loss(case.system, u, x, d["RU"][0], d["RX"][0], weight=0.4,
                                       lengths=3), argnums=(0, 1)))
    value, (gU, gx0) = f(d["U"][0], d["x0"][0])
    rv, rU, rx0, _ = np_loss(case, "combined", d["U"], d["x0"], ref_controls=d["RU"],
                             ref_states=d["RX"], weight=0.4, lengths=np.array([3]))
    assert gU.shape == (T, case.m) and gx0.shape == (case.n,)
    close(value, rv, 1e-12)
    close(gU, rU[0], 1e-12)
    close(gx0, rx0[0], 1e-12)
    X = jax.jit(lambda x, u: tlj.rollout(case.system, x, u))(d["x0"][0], d["U"][0])
    close(X, np_rollout(case.A, case.Bm, case.c, d["x0"], d["U"])[0], 1e-12)


# ---- vmap ------------------------------------------------------------------------------

def test_vmap_runs_every_problem_in_one_custom_call():
    case = make_case("lti-psAB", B, T)
    V = 4
    rng = np.random.default_rng(8)
    Us, x0s = rng.standard_normal((V, B, T, case.m)), rng.standard_normal((V, B, case.n))
    ws = rng.uniform(0.1, 2.0, V)
    d = data(case, seed=8)

    def loss(U, x0, w):
        return tlj.combined_loss(case.system, U, x0, d["RU"], d["RX"], weight=w,
                                 lengths=d["lengths"])

    vg = jax.jit(jax.vmap(jax.value_and_grad(loss, argnums=(0, 1, 2))))
    hlo = vg.lower(Us, x0s, ws).as_text()
    assert custom_calls(hlo) == ["trajloss_rollout_loss"]  # all V problems, one call
    values, (gU, gx0, gw) = vg(Us, x0s, ws)
    for v in range(V):
        rv, rU, rx0, parts = np_loss(case, "combined", Us[v], x0s[v], ref_controls=d["RU"],
                                     ref_states=d["RX"], weight=ws[v], lengths=d["lengths"])
        close(values[v], rv, 1e-12)
        close(gU[v], rU, 1e-11)
        close(gx0[v], rx0, 1e-11)
        close(gw[v], parts["trajectory"], 1e-12)  # ∂ℓ/∂weight: the raw trajectory term


def test_nested_vmap_and_an_unmapped_operand():
    case = make_case("tv-shared", B, T)
    rng = np.random.default_rng(9)
    Us = rng.standard_normal((2, 3, B, T, case.m))
    d = data(case, seed=9)
    f = lambda U: tlj.trajectory_loss(case.system, U, d["x0"], d["RX"])  # noqa: E731
    values = jax.jit(jax.vmap(jax.vmap(f)))(Us)
    grads = jax.jit(jax.vmap(jax.vmap(jax.grad(f))))(Us)
    for i in range(2):
        for j in range(3):
            rv, rU, _ = reference("trajectory", case, d, Us[i, j], d["x0"])
            close(values[i, j], rv, 1e-12)
            close(grads[i, j], rU, 1e-11)


# ---- errors that depend on values ------------------------------------------------------

def numpy_message(fn):
    with pytest.raises(ValueError) as info:  # checked at the call, with concrete values
        fn()
    return str(info.value)


def test_runtime_errors_carry_the_numpy_apis_messages():
    case = make_case("lti-shared", B, T)
    d = data(case, seed=10)
    s = case.system
    bad_U = d["U"].copy()
    bad_U[1, 0, 0] = np.nan
    # (the call on concrete values -- the NumPy API, or trajloss.jax's own check of a
    # weight -- and the same under jit with the culprit traced)
    cases = [
        (lambda: trajloss.combined_loss(s, bad_U, d["x0"], d["RU"], d["RX"], weight=0.4),
         lambda: jax.jit(lambda U: tlj.combined_loss(s, U, d["x0"], d["RU"], d["RX"],
                                                      weight=0.4))(bad_U)),
        (lambda: trajloss.trajectory_loss(s, d["U"], d["x0"], d["RX"], lengths=np.array([5, 9, 1])),
         lambda: jax.jit(lambda L: tlj.trajectory_loss(s, d["U"], d["x0"], d["RX"],
                                                        lengths=L))(np.array([5, 9, 1]))),
        (lambda: trajloss.combined_loss(s, d["U"], d["x0"], d["RU"], d["RX"], weight=0.4,
                                        lengths=np.zeros(B, int)),
         lambda: jax.jit(lambda L: tlj.combined_loss(s, d["U"], d["x0"], d["RU"], d["RX"],
                                                      weight=0.4, lengths=L))(np.zeros(B, int))),
        (lambda: tlj.combined_loss(s, d["U"], d["x0"], d["RU"], d["RX"], weight=-2.0),
         lambda: jax.jit(lambda w: tlj.combined_loss(s, d["U"], d["x0"], d["RU"], d["RX"],
                                                      weight=w))(jnp.asarray(-2.0))),
        (lambda: trajloss.control_loss(d["U"], d["RU"], feature_weights=np.array([-1.5, 1.0])),
         lambda: jax.jit(lambda w: tlj.control_loss(d["U"], d["RU"], feature_weights=w))(
             np.array([-1.5, 1.0]))),
        (lambda: trajloss.rollout(s, d["x0"] * np.inf, d["U"]),
         lambda: jax.jit(lambda x: tlj.rollout(s, x, d["U"]))(d["x0"] * np.inf)),
    ]
    for bad in (-100.0, -1e6, -0.3, -1.5e-5, -2.5e17, np.nan):  # printed as Python prints them
        cases.append((lambda bad=bad: tlj.combined_loss(s, d["U"], d["x0"], d["RU"], d["RX"],
                                                        weight=0.4, terminal_weight=bad),
                      lambda bad=bad: jax.jit(lambda w: tlj.combined_loss(
                          s, d["U"], d["x0"], d["RU"], d["RX"], weight=0.4,
                          terminal_weight=w))(jnp.asarray(bad))))
    for numpy_call, jax_call in cases:
        message = numpy_message(numpy_call)
        with pytest.raises(Exception, match=re.escape(message)):
            jax.block_until_ready(jax_call())
    # and check_finite=False lets a NaN propagate
    v = jax.jit(lambda U: tlj.combined_loss(s, U, d["x0"], d["RU"], d["RX"], weight=0.4,
                                            check_finite=False))(bad_U)
    assert np.isnan(v)


def test_malformed_calls_are_refused_not_crashes():
    # the handlers trust nothing of a call's layout: calls trajloss.jax would never
    # make (an operand missing, shapes that do not fit the system) raise
    tlj._use_ffi()
    words = lambda a: np.ascontiguousarray(a, np.float64).view(np.uint32)  # noqa: E731
    opts = words(np.array([0, 7, 1.0, 1.0, 0, 1.0, 1]))  # flags 0: no references
    A, Bm = words(np.eye(2)), words(np.ones((2, 1)))
    U, x0 = np.ones((1, 3, 1)), np.ones((1, 2))
    w = words(np.array(0.5))
    out = (jax.ShapeDtypeStruct((4,), jnp.float64),)
    call = jax.ffi.ffi_call("trajloss_rollout_loss", out, vmap_method="broadcast_all")
    with pytest.raises(Exception, match="operands do not match"):
        jax.block_until_ready(jax.jit(lambda: call(opts, A, Bm, U, x0, w))())  # a weight missing
    with pytest.raises(Exception, match="shapes do not match"):
        jax.block_until_ready(jax.jit(lambda: call(opts, A, Bm, np.ones((1, 3, 2)), x0, w, w))())
    roll = jax.ffi.ffi_call("trajloss_rollout", (jax.ShapeDtypeStruct((1, 4, 2), jnp.float64),),
                            vmap_method="broadcast_all")
    with pytest.raises(Exception, match="rollout"):
        jax.block_until_ready(jax.jit(lambda: roll(opts, A, Bm, x0))())  # controls missing


# ---- systems are operands -------------------------------------------------------------

def test_systems_of_one_form_compile_to_equal_calls():
    # the system's values travel as operands: two systems of one form give FFI
    # calls with equal parameters, so XLA compiles one program for both
    seen = []
    for seed in (0, 1):
        case = make_case("tv-psAB-psoff", B, T, seed=seed)
        d = data(case)
        f = lambda U: jax.grad(loss_of("combined", case, d))(U, d["x0"])  # noqa: E731
        jaxpr = jax.make_jaxpr(f)(d["U"])
        seen.append([e.params for e in jaxpr.jaxpr.eqns if e.primitive.name == "ffi_call"]
                    or [e.params for e in _ffi_eqns(jaxpr.jaxpr)])
    assert seen[0] and seen[0] == seen[1]


def _ffi_eqns(jaxpr):
    from jax.extend import core
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "ffi_call":
            out.append(eqn)
        for p in eqn.params.values():
            if isinstance(p, core.ClosedJaxpr):
                out.extend(_ffi_eqns(p.jaxpr))
            elif isinstance(p, core.Jaxpr):
                out.extend(_ffi_eqns(p))
    return out


def test_threads_give_the_same_bits():
    system = trajloss.DoubleIntegrator(dt=0.1)
    rng = np.random.default_rng(11)
    U, x0 = rng.standard_normal((8192, 15, 1)), rng.standard_normal((8192, 2))
    RU, RX = rng.standard_normal(U.shape), rng.standard_normal((8192, 16, 2))
    outs = []
    try:
        for k in (1, 2):  # the threads setting is read when a call is traced
            trajloss.set_num_threads(k)
            f = jax.jit(jax.value_and_grad(lambda u: tlj.combined_loss(system, u, x0, RU, RX,
                                                                       weight=0.3)))
            outs.append(f(U))
    finally:
        trajloss.set_num_threads(1)
    ref = trajloss.combined_loss(system, U, x0, RU, RX, weight=0.3)
    assert float(outs[0][0]) == float(outs[1][0]) == ref.value
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
    np.testing.assert_array_equal(outs[0][1], ref.grad)


# ---- shard_map -------------------------------------------------------------------------

def test_shard_map_on_a_one_device_mesh():
    case = make_case("lti-psA", B, T)
    d = data(case, seed=12)
    mesh = jax.make_mesh((1,), ("b",), axis_types=(jax.sharding.AxisType.Auto,))
    P = jax.sharding.PartitionSpec

    def per_shard(U, x0):
        value, (gU, gx0) = jax.value_and_grad(loss_of("combined", case, d), argnums=(0, 1))(U, x0)
        return value[None], gU, gx0

    f = jax.shard_map(per_shard, mesh=mesh, in_specs=(P("b"), P("b")), out_specs=P("b"))
    value, gU, gx0 = jax.jit(f)(d["U"], d["x0"])
    rv, rU, rx0 = reference("combined", case, d, d["U"], d["x0"])
    close(value[0], rv, 1e-12)
    close(gU, rU, 1e-11)
    close(gx0, rx0, 1e-11)
    assert "callback" not in jax.jit(f).lower(d["U"], d["x0"]).as_text()


def test_shard_map_and_sharded_jit_over_two_devices():
    out = run_python("""
        import numpy as np, jax, jax.numpy as jnp
        jax.config.update("jax_enable_x64", True)
        import trajloss.jax as tlj
        import dataclasses
        from system_forms_reference import make_case, np_loss, close
        assert jax.device_count() == 2 and tlj.BACKEND == "ffi"
        case = make_case("lti-shared-off", 4, 5)
        rng = np.random.default_rng(0)
        U, x0 = rng.standard_normal((4, 5, case.m)), rng.standard_normal((4, case.n))
        RU, RX = rng.standard_normal(U.shape), rng.standard_normal((4, 6, case.n))
        P = jax.sharding.PartitionSpec
        mesh = jax.make_mesh((2,), ("b",), axis_types=(jax.sharding.AxisType.Auto,))
        loss = lambda U, x0, RU, RX: tlj.combined_loss(case.system, U, x0, RU, RX, weight=0.4)
        # inside shard_map each device's loss is the loss of its own shard
        per_shard = jax.shard_map(lambda *a: jax.value_and_grad(loss)(*a)[0][None], mesh=mesh,
                                  in_specs=(P("b"),) * 4, out_specs=P("b"))
        f = jax.jit(per_shard)
        assert "callback" not in f.lower(U, x0, RU, RX).as_text()
        got = f(U, x0, RU, RX)
        half = lambda s: dataclasses.replace(case, A=case.A[s], Bm=case.Bm[s], c=case.c[s], B=2)
        for k in range(2):
            s = slice(2 * k, 2 * k + 2)
            close(got[k], np_loss(half(s), "combined", U[s], x0[s], ref_controls=RU[s],
                                  ref_states=RX[s], weight=0.4)[0], 1e-12)
        grads = jax.jit(jax.shard_map(lambda *a: jax.grad(loss)(*a), mesh=mesh,
                                      in_specs=(P("b"),) * 4, out_specs=P("b")))(U, x0, RU, RX)
        for k in range(2):
            s = slice(2 * k, 2 * k + 2)
            close(grads[s], np_loss(half(s), "combined", U[s], x0[s], ref_controls=RU[s],
                                    ref_states=RX[s], weight=0.4)[1], 1e-11)
        # jit of inputs sharded over both devices: the loss of the whole batch
        sh = jax.sharding.NamedSharding(mesh, P("b"))
        args = [jax.device_put(a, sh) for a in (U, x0, RU, RX)]
        g = jax.jit(jax.value_and_grad(loss))
        assert "callback" not in g.lower(*args).as_text()
        value, gU = g(*args)
        rv, rU, _, _ = np_loss(case, "combined", U, x0, ref_controls=RU, ref_states=RX,
                               weight=0.4)
        close(value, rv, 1e-12)
        close(gU, rU, 1e-11)
        print("ok")
    """, devices=2)
    assert out.strip().endswith("ok")


def test_without_x64():
    # JAX's default: 32-bit arrays; the options and the system still reach the core
    # as float64 bits, lengths as int32
    out = run_python("""
        import numpy as np, jax, jax.numpy as jnp
        import trajloss, trajloss.jax as tlj
        from system_forms_reference import make_case, np_loss, close
        assert not jax.config.jax_enable_x64 and tlj.BACKEND == "ffi"
        case = make_case("tv-psA-off", 3, 5)
        rng = np.random.default_rng(0)
        U, x0 = rng.standard_normal((3, 5, case.m)), rng.standard_normal((3, case.n))
        RU, RX = rng.standard_normal(U.shape), rng.standard_normal((3, 6, case.n))
        L = np.array([5, 2, 4])
        f = jax.jit(jax.value_and_grad(
            lambda u, w: tlj.combined_loss(case.system, u, x0, RU, RX, weight=w,
                                           terminal_weight=0.3, lengths=jnp.asarray(L),
                                           discount=0.9), argnums=(0, 1)))
        value, (gU, gw) = f(jnp.asarray(U, jnp.float32), jnp.float32(0.6))
        assert value.dtype == gU.dtype == gw.dtype == jnp.float32
        rv, rU, _, parts = np_loss(case, "combined", U.astype(np.float32), x0.astype(np.float32),
                                   ref_controls=RU.astype(np.float32),
                                   ref_states=RX.astype(np.float32), weight=0.6,
                                   terminal_weight=0.3, lengths=L, discount=0.9)
        close(value, rv, 2e-5)
        close(gU, rU, 2e-5)
        close(gw, parts["trajectory"], 2e-5)
        print("ok")
    """)
    assert out.strip().endswith("ok")


# ---- the fallback and the ABI ----------------------------------------------------------

def test_the_callback_path_on_request():
    out = run_python("""
        import numpy as np, jax
        jax.config.update("jax_enable_x64", True)
        import trajloss, trajloss.jax as tlj
        assert tlj.BACKEND == "callback", tlj.BACKEND
        s = trajloss.DoubleIntegrator(dt=0.2)
        rng = np.random.default_rng(0)
        U, x0 = rng.standard_normal((3, 4, 1)), rng.standard_normal((3, 2))
        RU, RX = rng.standard_normal(U.shape), rng.standard_normal((3, 5, 2))
        f = jax.jit(jax.value_and_grad(lambda u: tlj.combined_loss(s, u, x0, RU, RX, weight=0.5)))
        hlo = f.lower(U).as_text()
        assert "callback" in hlo and "trajloss_" not in hlo
        v, g = f(U)
        r = trajloss.combined_loss(s, U, x0, RU, RX, weight=0.5)
        assert float(v) == r.value and np.array_equal(g, r.grad)
        print("ok")
    """, TRAJLOSS_JAX_BACKEND="callback")
    assert out.strip().endswith("ok")


ABI_CHECK = r"""
#include <stddef.h>
#include "xla/ffi/api/c_api.h"
#include "_xla_ffi_abi.h"
#define SAME(ours, theirs, f1, f2) \
    _Static_assert(offsetof(ours, f1) == offsetof(theirs, f2), #ours "." #f1); \
    _Static_assert(sizeof(((ours *)0)->f1) == sizeof(((theirs *)0)->f2), #ours "." #f1 " size")
SAME(tlx_extension, XLA_FFI_Extension_Base, struct_size, struct_size);
SAME(tlx_extension, XLA_FFI_Extension_Base, type, type);
SAME(tlx_extension, XLA_FFI_Extension_Base, next, next);
SAME(tlx_api_version, XLA_FFI_Api_Version, major_version, major_version);
SAME(tlx_api_version, XLA_FFI_Api_Version, minor_version, minor_version);
SAME(tlx_error_create_args, XLA_FFI_Error_Create_Args, message, message);
SAME(tlx_error_create_args, XLA_FFI_Error_Create_Args, errc, errc);
SAME(tlx_api, XLA_FFI_Api, api_version, api_version);
SAME(tlx_api, XLA_FFI_Api, error_create, XLA_FFI_Error_Create);
SAME(tlx_buffer, XLA_FFI_Buffer, dtype, dtype);
SAME(tlx_buffer, XLA_FFI_Buffer, data, data);
SAME(tlx_buffer, XLA_FFI_Buffer, rank, rank);
SAME(tlx_buffer, XLA_FFI_Buffer, dims, dims);
SAME(tlx_args, XLA_FFI_Args, size, size);
SAME(tlx_args, XLA_FFI_Args, types, types);
SAME(tlx_args, XLA_FFI_Args, args, args);
SAME(tlx_rets, XLA_FFI_Rets, size, size);
SAME(tlx_rets, XLA_FFI_Rets, rets, rets);
SAME(tlx_attrs, XLA_FFI_Attrs, attrs, attrs);
SAME(tlx_call_frame, XLA_FFI_CallFrame, extension_start, extension_start);
SAME(tlx_call_frame, XLA_FFI_CallFrame, api, api);
SAME(tlx_call_frame, XLA_FFI_CallFrame, stage, stage);
SAME(tlx_call_frame, XLA_FFI_CallFrame, args, args);
SAME(tlx_call_frame, XLA_FFI_CallFrame, rets, rets);
SAME(tlx_call_frame, XLA_FFI_CallFrame, attrs, attrs);
SAME(tlx_metadata, XLA_FFI_Metadata, struct_size, struct_size);
SAME(tlx_metadata, XLA_FFI_Metadata, api_version, api_version);
SAME(tlx_metadata, XLA_FFI_Metadata, traits, traits);
SAME(tlx_metadata_extension, XLA_FFI_Metadata_Extension, extension_base, extension_base);
SAME(tlx_metadata_extension, XLA_FFI_Metadata_Extension, metadata, metadata);
_Static_assert(TLX_STRUCT_SIZE(tlx_api_version, minor_version) ==
               XLA_FFI_Api_Version_STRUCT_SIZE, "version size");
_Static_assert(TLX_STRUCT_SIZE(tlx_error_create_args, errc) ==
               XLA_FFI_Error_Create_Args_STRUCT_SIZE, "error size");
_Static_assert(TLX_EXTENSION_METADATA == XLA_FFI_Extension_Metadata, "metadata");
_Static_assert(TLX_ERROR_INVALID_ARGUMENT == XLA_FFI_Error_Code_INVALID_ARGUMENT, "errc");
_Static_assert(TLX_ARG_BUFFER == XLA_FFI_ArgType_BUFFER, "buffer");
_Static_assert(TLX_PRED == XLA_FFI_DataType_PRED && TLX_S32 == XLA_FFI_DataType_S32 &&
               TLX_S64 == XLA_FFI_DataType_S64 && TLX_U32 == XLA_FFI_DataType_U32 &&
               TLX_F32 == XLA_FFI_DataType_F32 && TLX_F64 == XLA_FFI_DataType_F64 &&
               TLX_U8 == XLA_FFI_DataType_U8 && TLX_S8 == XLA_FFI_DataType_S8 &&
               TLX_S16 == XLA_FFI_DataType_S16, "dtypes");
_Static_assert(TLX_API_MAJOR == XLA_FFI_API_MAJOR, "major version");
int main(void) { return 0; }
"""


def test_abi_declarations_match_jaxlibs_header(tmp_path):
    # trajloss/_xla_ffi_abi.h declares the FFI structs the handlers read (it
    # builds without jaxlib); compiled beside jaxlib's header, every offset,
    # size and constant used must agree
    include = jax.ffi.include_dir()
    assert os.path.exists(os.path.join(include, "xla", "ffi", "api", "c_api.h"))
    src = tmp_path / "abi.c"
    src.write_text(ABI_CHECK)
    # the header is a source file (not installed): beside xla_ffi.c in the tree
    here = [os.path.join(ROOT, *p) for p in (("trajloss",), ("src", "trajloss"))
            if os.path.exists(os.path.join(ROOT, *p, "_xla_ffi_abi.h"))]
    assert here, "trajloss/_xla_ffi_abi.h not found in the source tree"
    cc = os.environ.get("CC", "cc").split()
    done = subprocess.run(cc + ["-std=c11", "-fsyntax-only", f"-I{include}", f"-I{here[0]}",
                                str(src)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
