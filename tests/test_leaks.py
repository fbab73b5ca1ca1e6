"""No leaks: memory and reference counts stay flat over 100 000 calls of every
NumPy-layer entry point and 10 000 calls of each representative bad call.

Each measurement runs in a fresh interpreter that imports only trajloss
(like tests/test_memory.py), per entry point: a warm-up of a few thousand
calls (allocator pools, caches), a measurement, the loop, a measurement.

* ``test_rss_stays_flat``: resident set size from ``/proc/self/statm``,
  100 000 successful calls per entry point and 10 000 calls of each bad
  call, without tracemalloc (which would slow the loop ~5x). A leaked small
  object per call would be >= 2.4 MB here.
* ``test_tracemalloc_stays_flat``: ``tracemalloc``'s traced memory (Python
  objects, NumPy data and the extension's ``PyMem_Raw*`` scratch space) over
  a shorter loop, 20 000 good and 2 000 x each bad call: a leak of 4 bytes
  per call would show.
* Reference counts of the objects every call touches (``None``, the bools,
  the dtypes, the exception classes, the system's matrices and the input
  arrays) must not drift: an extension that forgets a ``Py_DECREF`` on a
  borrowed singleton leaks no memory but its count grows by one per call.

The drifts are printed (visible with ``pytest -s``) and quoted in every
assertion message.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="/proc/self/statm is Linux's")

_HERE = os.path.dirname(os.path.abspath(__file__))

RSS_LIMIT = 2 << 20          # bytes, per loop (a leak of even 21 bytes/call would exceed it)
# Over the whole run RSS also takes in each later entry point's one-time warm-up
# (allocator arenas, NumPy caches): allowed more, but still far below a leak.
RSS_TOTAL_LIMIT = 8 << 20
TRACED_LIMIT = 64 << 10      # bytes
REFCOUNT_LIMIT = 50          # references (a leak per call would be thousands)

N_GOOD, N_BAD, N_WARM = 100_000, 10_000, 3_000          # the RSS run
T_GOOD, T_BAD, T_WARM = 20_000, 2_000, 1_000             # the tracemalloc run


def entry_points():
    """{name: (good call, [(label, bad call, expected exception), ...])} on tiny inputs."""
    import trajloss as tl

    rng = np.random.default_rng(0)
    s = tl.DoubleIntegrator()
    stuck = tl.LinearSystem(np.eye(2), [[1.0], [0.0]])
    x0 = rng.normal(size=(2, 2))
    u = rng.normal(size=(2, 3, 1))
    rs = rng.normal(size=(2, 4, 2))
    ru = rng.normal(size=(2, 3, 1))
    x0_nan = x0.copy()
    x0_nan[0, 0] = np.nan
    u32 = u.astype(np.float32)
    ragged = [[[1.0]], [[1.0], [2.0]]]
    A = np.array([[0.0, 1.0], [0.0, 0.0]])
    Bm = np.array([[0.0], [1.0]])
    A_nan = A * np.nan
    z2, z3 = np.zeros(2), np.zeros(3)  # made once: NumPy 2.4's np.zeros(shape) without a
    # dtype itself leaks a reference to the float64 descriptor on every call
    mask24 = np.ones((2, 4), bool)
    lengths = np.array([3, 2])
    mask = np.array([[True, False, True], [True, True, False]])
    V, T, L = ValueError, TypeError, np.linalg.LinAlgError
    return {
        "rollout": (lambda: tl.rollout(s, x0, u), [
            ("m-mismatch", lambda: tl.rollout(s, x0, u[..., :0]), V),
            ("int-dtype", lambda: tl.rollout(s, x0, u.astype(np.int64)), T),
            ("mixed-dtype", lambda: tl.rollout(s, x0, u32), T),
            ("nan", lambda: tl.rollout(s, x0_nan, u), V),
            ("ragged-list", lambda: tl.rollout(s, x0, ragged), V),
        ]),
        "rollout_vjp": (lambda: tl.rollout_vjp(s, x0, u, rs), [
            ("grad-shape", lambda: tl.rollout_vjp(s, x0, u, rs[:, :3]), V),
            ("grad-str", lambda: tl.rollout_vjp(s, x0, u, "g"), T),
            ("system", lambda: tl.rollout_vjp(None, x0, u, rs), T),
        ]),
        "control_loss": (lambda: tl.control_loss(u, ru, discount=0.5, lengths=lengths,
                                                 feature_weights=[2.0]), [
            ("lengths-range", lambda: tl.control_loss(u, ru, lengths=[9, 9]), V),
            ("penalty", lambda: tl.control_loss(u, ru, penalty="bogus"), V),
            ("feature-weights", lambda: tl.control_loss(u, ru, feature_weights=[-1.0]), V),
            ("empty-selection", lambda: tl.control_loss(u, ru, lengths=[0, 0]), V),
            ("discount-type", lambda: tl.control_loss(u, ru, discount="x"), T),
        ]),
        "trajectory_loss": (lambda: tl.trajectory_loss(s, u, x0, rs, mask=mask,
                                                       include_initial=True), [
            ("ref-shape", lambda: tl.trajectory_loss(s, u, x0, rs[:, :2]), V),
            ("mask-dtype", lambda: tl.trajectory_loss(s, u, x0, rs, mask=mask.astype(float)), T),
            ("state-weights", lambda: tl.trajectory_loss(s, u, x0, rs, state_weights=[1, -1]), V),
        ]),
        "terminal_loss": (lambda: tl.terminal_loss(s, u, x0, x0, penalty="huber", delta=0.5), [
            ("target-shape", lambda: tl.terminal_loss(s, u, x0, x0[:, :1]), V),
            ("nan", lambda: tl.terminal_loss(s, u, x0_nan, x0), V),
            ("target-None", lambda: tl.terminal_loss(s, u, x0, None), T),
        ]),
        "combined_loss": (lambda: tl.combined_loss(s, u, x0, ru, rs, weight=0.3,
                                                   terminal_weight=0.2, lengths=lengths), [
            ("weight", lambda: tl.combined_loss(s, u, x0, ru, rs, weight=-1.0), V),
            ("ref-controls-shape", lambda: tl.combined_loss(s, u, x0, ru[:1], rs, weight=0.3), V),
            ("lengths-and-mask", lambda: tl.combined_loss(s, u, x0, ru, rs, weight=0.3,
                                                          lengths=lengths, mask=mask), V),
        ]),
        "time_weights": (lambda: tl.time_weights(3, 0.5, lengths=lengths), [
            ("discount", lambda: tl.time_weights(3, -0.5), V),
            ("lengths-range", lambda: tl.time_weights(3, 0.5, lengths=[4]), V),
            ("mask-shape", lambda: tl.time_weights(3, 0.5, mask=mask24), V),
        ]),
        "min_energy": (lambda: tl.min_energy(s, x0, z2, 3), [
            ("uncontrollable", lambda: tl.min_energy(stuck, x0, z2, 3), L),
            ("xf-shape", lambda: tl.min_energy(s, x0, z3, 3), V),
            ("x0-nan", lambda: tl.min_energy(s, x0_nan, z2, 3), V),
        ]),
        "final_state_error": (lambda: tl.final_state_error(s, u, x0, [0.0, 0.0], lengths), [
            ("lengths-range", lambda: tl.final_state_error(s, u, x0, x0, [5, 5]), V),
            ("xf-shape", lambda: tl.final_state_error(s, u, x0, x0[:, :1]), V),
            ("xf-str", lambda: tl.final_state_error(s, u, x0, "xf"), T),
        ]),
        "from_continuous": (lambda: tl.LinearSystem.from_continuous(A, Bm, 0.1), [
            ("A-nan", lambda: tl.LinearSystem.from_continuous(A_nan, Bm, 0.1), V),
            ("B-shape", lambda: tl.LinearSystem.from_continuous(A, Bm[:1], 0.1), V),
            ("dt", lambda: tl.LinearSystem.from_continuous(A, Bm, -0.1), V),
        ]),
    }, (s.Ad, s.Bd, x0, u, rs, ru, x0_nan, u32, lengths, mask, A, Bm, z2)


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _refcounts(objects):
    probes = {
        "None": None, "True": True, "False": False,
        "dtype-float64": np.dtype(np.float64), "dtype-float32": np.dtype(np.float32),
        "dtype-int64": np.dtype(np.int64), "dtype-bool": np.dtype(np.bool_),
        "ValueError": ValueError, "TypeError": TypeError,
        "LinAlgError": np.linalg.LinAlgError, "ndarray": np.ndarray,
    }
    probes.update({f"input-{i}": o for i, o in enumerate(objects)})
    return {k: sys.getrefcount(v) for k, v in probes.items()}


def _loop(call, count, expected=None):
    if expected is None:
        for _ in range(count):
            call()
    else:
        for _ in range(count):
            try:
                call()
            except expected:
                pass
            else:  # pragma: no cover -- the bad call must fail every time
                raise AssertionError("a bad call returned")


def _child(mode):
    """Run in a fresh interpreter; print one JSON object with every drift."""
    import gc
    import time
    import tracemalloc

    if mode == "rss":
        n_good, n_bad, n_warm = N_GOOD, N_BAD, N_WARM
    else:
        n_good, n_bad, n_warm = T_GOOD, T_BAD, T_WARM
        tracemalloc.start()

    def measure():
        gc.collect()
        return tracemalloc.get_traced_memory()[0] if mode == "trace" else _rss()

    eps, keep = entry_points()
    out = {"mode": mode, "counts": [n_good, n_bad, n_warm], "phases": {}}
    start = time.perf_counter()
    ref0 = None
    first = None
    for ep, (good, bads) in eps.items():
        phases = [(ep, good, None)] + [(f"{ep}:{label}", bad, exc) for label, bad, exc in bads]
        for label, call, exc in phases:
            count = n_good if exc is None else n_bad
            _loop(call, n_warm, exc)
            if ref0 is None:
                # collected first: garbage awaiting the cycle collector still
                # holds references (to None, say) that it drops later
                first = measure()
                ref0 = _refcounts(keep)
            before = measure()
            _loop(call, count, exc)
            after = measure()
            out["phases"][label] = {"calls": count, "drift": after - before}
    out["total_drift"] = measure() - first
    ref1 = _refcounts(keep)
    out["refcount_drift"] = {k: ref1[k] - ref0[k] for k in ref0}
    out["seconds"] = time.perf_counter() - start
    print(json.dumps(out))


def _run(mode):
    code = (f"import sys; sys.path.insert(0, {_HERE!r}); import test_leaks; "
            f"test_leaks._child({mode!r})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _report(res, unit):
    phases = res["phases"]
    worst = max(phases, key=lambda k: phases[k]["drift"])
    calls = sum(p["calls"] for p in phases.values())
    lines = [f"{res['mode']}: {calls} calls in {res['seconds']:.1f} s; total drift "
             f"{res['total_drift'] / unit:+.1f} KiB; largest per-phase drift "
             f"{phases[worst]['drift'] / unit:+.1f} KiB ({worst}, {phases[worst]['calls']} calls)"]
    lines += [f"  {k:45s} {v['calls']:7d} calls  {v['drift'] / unit:+9.1f} KiB"
              for k, v in phases.items()]
    drifted = {k: v for k, v in res["refcount_drift"].items() if v}
    lines.append(f"  refcount drift: {drifted or 'none'}")
    text = "\n".join(lines)
    print("\n" + text)
    return text, worst


def _check_refcounts(res, text):
    bad = {k: v for k, v in res["refcount_drift"].items() if abs(v) > REFCOUNT_LIMIT}
    assert not bad, f"reference counts drifted (a missing Py_DECREF?): {bad}\n{text}"


def test_rss_stays_flat():
    res = _run("rss")
    text, worst = _report(res, 1024)
    phases = res["phases"]
    assert all(p["calls"] == (N_GOOD if ":" not in k else N_BAD) for k, p in phases.items())
    assert len([k for k in phases if ":" not in k]) == 10
    assert phases[worst]["drift"] < RSS_LIMIT, (
        f"RSS grew by {phases[worst]['drift'] / 1024:.0f} KiB during {worst}\n{text}")
    assert res["total_drift"] < RSS_TOTAL_LIMIT, (
        f"RSS grew by {res['total_drift'] / 1024:.0f} KiB over the whole run\n{text}")
    _check_refcounts(res, text)


def test_tracemalloc_stays_flat():
    res = _run("trace")
    text, worst = _report(res, 1024)
    phases = res["phases"]
    assert phases[worst]["drift"] < TRACED_LIMIT, (
        f"traced memory grew by {phases[worst]['drift'] / 1024:.1f} KiB during {worst}\n{text}")
    assert res["total_drift"] < TRACED_LIMIT, (
        f"traced memory grew by {res['total_drift'] / 1024:.1f} KiB over the whole run\n{text}")
    _check_refcounts(res, text)
