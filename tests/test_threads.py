"""Thread safety and GIL release.

* Four threads call the rollout, the losses and the references concurrently,
  many times, on shared read-only inputs, with a tiny switch interval so the
  interpreter interleaves them as often as it can: every result is
  bit-identical to the serial one, and the inputs are untouched. (The serial
  results themselves are checked once against the plain-loop references.)
* The GIL is released around the C core: while one thread is inside a large
  ``combined_loss`` (or ``min_energy``) call, a second thread that increments
  a counter in pure Python keeps running. The counter thread timestamps its
  progress, and only increments stamped strictly inside the call count. As a
  control, the same measurement around a C loop that holds the GIL
  (``sum(range(k))``) shows the counter stalled, so the test can tell the two
  apart.
"""
import sys
import threading
import time

import numpy as np
import pytest

import trajloss as tl
from conftest import assert_untouched, random_discrete, snapshot
from loss_reference import combined_loss_ref, control_loss_ref
from reference_helpers import min_norm_controls

N_THREADS = 4
ITERATIONS = 60


def _readonly(a):
    a = np.array(a, copy=True)
    a.setflags(write=False)
    return a


@pytest.fixture(scope="module")
def shared():
    rng = np.random.default_rng(1234)
    B, T, n, m = 24, 20, 3, 2
    Ad, Bd = random_discrete(rng, n, m, radius=0.9)
    A = rng.standard_normal((n, n)) * 0.3
    Bc = rng.standard_normal((n, m))
    d = dict(
        system=tl.LinearSystem(Ad, Bd, dt=0.1),
        continuous=tl.LinearSystem.from_continuous(A, Bc, 0.1),
        x0=rng.standard_normal((B, n)), u=rng.standard_normal((B, T, m)),
        ru=rng.standard_normal((B, T, m)), rs=rng.standard_normal((B, T + 1, n)),
        g=rng.standard_normal((B, T + 1, n)), xf=rng.standard_normal((B, n)),
        lengths=rng.integers(1, T + 1, B), mask=rng.random((B, T)) < 0.7,
        fw=rng.uniform(0.5, 2.0, m), sw=rng.uniform(0.5, 2.0, n),
    )
    d["mask"][:, 0] = True
    out = {}
    for k, v in d.items():
        out[k] = _readonly(v) if isinstance(v, np.ndarray) else v
    for k in ("x0", "u", "ru", "rs", "g", "xf"):
        out[k + "32"] = _readonly(out[k].astype(np.float32))
    return out


def _calls(d):
    s, c = d["system"], d["continuous"]
    return {
        "rollout64": lambda: tl.rollout(s, d["x0"], d["u"]),
        "rollout32": lambda: tl.rollout(s, d["x032"], d["u32"]),
        "rollout_vjp": lambda: tl.rollout_vjp(s, d["x0"], d["u"], d["g"]),
        "control_mse": lambda: tl.control_loss(d["u"], d["ru"]),
        "control_huber": lambda: tl.control_loss(d["u"], d["ru"], penalty="huber", delta=0.7,
                                                  discount=0.9, lengths=d["lengths"],
                                                  feature_weights=d["fw"]),
        "control_l1_32": lambda: tl.control_loss(d["u32"], d["ru32"], penalty="l1",
                                                 mask=d["mask"], discount=1.1),
        "combined": lambda: tl.combined_loss(s, d["u"], d["x0"], d["ru"], d["rs"], weight=0.3,
                                             terminal_weight=0.2, lengths=d["lengths"],
                                             include_initial=True, discount=0.95,
                                             state_weights=d["sw"], feature_weights=d["fw"]),
        "combined32": lambda: tl.combined_loss(s, d["u32"], d["x032"], d["ru32"], d["rs32"],
                                               weight=1.5, mask=d["mask"], penalty="huber"),
        "trajectory": lambda: tl.trajectory_loss(s, d["u"], d["x0"], d["rs"], discount=0.8),
        "final_state_error": lambda: tl.final_state_error(s, d["u"], d["x0"], d["xf"],
                                                          d["lengths"]),
        "time_weights": lambda: tl.time_weights(20, 0.7, lengths=d["lengths"]),
        "min_energy_exact": lambda: tl.min_energy(s, d["x0"], d["xf"], 20),
        "min_energy_average": lambda: tl.min_energy(c, d["x0"], d["xf"], 12, "average"),
        "min_energy_continuous": lambda: tl.min_energy(c, d["x0"], d["xf"], 12, "continuous"),
    }


def _identical(x, y):
    if isinstance(x, tuple):
        return all(_identical(a, b) for a, b in zip(x, y))
    if isinstance(x, (tl.LossResult, tl.Reference)):
        return all(_identical(getattr(x, f), getattr(y, f)) for f in x.__dataclass_fields__)
    if isinstance(x, np.ndarray):
        return x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y)
    return x == y


def test_serial_results_match_references(shared):
    """The serial results the threads are compared with are right to begin with."""
    d = shared
    calls = _calls(d)
    res = calls["control_huber"]()
    ref = control_loss_ref(d["u"], d["ru"], penalty="huber", delta=0.7, discount=0.9,
                           lengths=d["lengths"], feature_weights=d["fw"])
    np.testing.assert_allclose(res.value, ref["value"], rtol=1e-12)
    np.testing.assert_allclose(res.grad, ref["grad"], rtol=1e-10, atol=1e-14)
    res = calls["combined"]()
    ref = combined_loss_ref(d["system"].Ad, d["system"].Bd, d["u"], d["x0"], d["ru"], d["rs"],
                            0.3, terminal_weight=0.2, lengths=d["lengths"],
                            include_initial=True, discount=0.95, state_weights=d["sw"],
                            feature_weights=d["fw"])
    np.testing.assert_allclose(res.value, ref["value"], rtol=1e-12)
    np.testing.assert_allclose(res.grad, ref["grad"], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(res.grad_x0, ref["grad_x0"], rtol=1e-10, atol=1e-14)
    U = min_norm_controls(d["system"].Ad, d["system"].Bd, d["x0"], d["xf"], 20)
    np.testing.assert_allclose(calls["min_energy_exact"]().controls, U, rtol=1e-7,
                               atol=1e-9 * np.abs(U).max())


def test_concurrent_calls_are_bit_identical_to_serial(shared):
    calls = _calls(shared)
    names = list(calls)
    serial = {k: f() for k, f in calls.items()}
    arrays = [v for v in shared.values() if isinstance(v, np.ndarray)]
    snap = snapshot(*arrays)
    barrier = threading.Barrier(N_THREADS)
    mismatches, errors, done = [], [], [0] * N_THREADS

    def worker(t):
        try:
            barrier.wait()
            for it in range(ITERATIONS):
                order = names[t::] + names[:t] if it % 2 == 0 else names[::-1]
                for k in order:
                    if not _identical(calls[k](), serial[k]):
                        mismatches.append((t, it, k))
                done[t] += 1
        except BaseException as exc:  # noqa: BLE001 -- reported below
            errors.append((t, repr(exc)))

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # interleave the threads as often as possible
    try:
        threads = [threading.Thread(target=worker, args=(t,)) for t in range(N_THREADS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=300)
    finally:
        sys.setswitchinterval(old)
    assert not errors, errors
    assert not mismatches, (f"{len(mismatches)} results differ from the serial ones: "
                            f"{mismatches[:10]}")
    assert done == [ITERATIONS] * N_THREADS
    assert_untouched(arrays, snap)
    print(f"\n{N_THREADS} threads x {ITERATIONS} iterations x {len(names)} calls: "
          "all bit-identical to the serial results")


# ==========================================================================
# GIL release
# ==========================================================================


class Counter(threading.Thread):
    """Increments a counter in pure Python; stamps (time, count) every 4096."""

    def __init__(self):
        super().__init__(daemon=True)
        self.count = 0
        self.stamps = []
        self.stop = False
        self.started_counting = threading.Event()

    def run(self):
        now = time.perf_counter
        stamps = self.stamps
        count = 0
        self.started_counting.set()
        while not self.stop:
            count += 1
            if count & 4095 == 0:
                stamps.append((now(), count))
        self.count = count


EDGE = 0.025  # s: GIL hand-offs around the call (switch interval 5 ms) are not counted


def _increments_during(work):
    """Run work() in this thread while a Counter runs; return (increments
    stamped inside the call, at least EDGE away from its start and end, and
    the length of that window)."""
    counter = Counter()
    counter.start()
    counter.started_counting.wait()
    time.sleep(0.05)  # let the counter thread get going (sleep releases the GIL)
    t0 = time.perf_counter()
    work()
    t1 = time.perf_counter()
    counter.stop = True
    counter.join()
    inside = [c for t, c in counter.stamps if t0 + EDGE < t < t1 - EDGE]
    return (inside[-1] - inside[0] if len(inside) >= 2 else 0), t1 - t0 - 2 * EDGE


def _grown_call(make_call, B):
    """(call, B): make_call(B) for the first B (growing) whose warm call takes
    >= 1 s, so the window stays long on a fast idle machine as on a busy
    one (a fixed B once gave 0.26 s under load and failed "too short"; timing
    the first, cold call once chose a B whose warm calls took 0.22 s)."""
    while True:
        call = make_call(B)
        call()  # the first call of a size also pays for first-touch page faults
        t = time.perf_counter()
        call()
        took = time.perf_counter() - t
        if took >= 1.0 or B >= 16_000_000:
            return call, B
        B = min(16_000_000, int(B * min(4.0, max(2.0, 1.2 / max(took, 1e-3)))))


def _filled(rng, shape):
    """float32 data of any size, fast: a small random block repeated (the
    values do not matter here; generating 10^9 normals took most of a minute)."""
    return np.resize(rng.standard_normal(4099).astype(np.float32), shape)


def _combined_call(B):
    # 16 states, 2 inputs, T = 50: ~26 us of work per sequence, so a 1 s call
    # needs ~40k sequences (170 MB); the double integrator needed 16M (3 GB).
    rng = np.random.default_rng(5)
    n, m, T = 16, 2, 50
    A = rng.standard_normal((n, n))
    s = tl.LinearSystem(A * 0.9 / np.abs(np.linalg.eigvals(A)).max(),
                        rng.standard_normal((n, m)), dt=0.1)
    x0, u, rs = _filled(rng, (B, n)), _filled(rng, (B, T, m)), _filled(rng, (B, T + 1, n))
    return lambda: tl.combined_loss(s, u, x0, u, rs, weight=0.3, terminal_weight=0.1)


def _min_energy_call(B):
    rng = np.random.default_rng(6)
    s = tl.DoubleIntegrator()
    x0 = rng.uniform(-5, 5, (B, 2))
    return lambda: tl.min_energy(s, x0, np.zeros(2), 15)


def _gil_holding_call(duration):
    """sum(range(k)) runs in C without ever releasing the GIL; k sized to ~duration."""
    k = 1_000_000
    t = time.perf_counter()
    sum(range(k))
    per = (time.perf_counter() - t) / k
    k = int(duration / per)
    return lambda: sum(range(k))


@pytest.mark.parametrize("which", ["combined_loss", "min_energy"])
def test_gil_is_released_during_long_calls(which):
    call, B = (_grown_call(_combined_call, 4096) if which == "combined_loss"
               else _grown_call(_min_energy_call, 250_000))
    inc, dur = _increments_during(call)
    inc_held, dur_held = _increments_during(_gil_holding_call(dur))
    rate_held = inc_held / dur_held
    rate = inc / dur
    print(f"\n{which} (B={B}): {dur:.2f} s window, counter +{inc} inside the call "
          f"({rate:,.0f}/s); GIL-holding sum(range): {dur_held:.2f} s, +{inc_held} "
          f"({rate_held:,.0f}/s)")
    assert dur >= 0.3 - 2 * EDGE, f"the call took only {dur + 2 * EDGE:.3f} s: too short"
    assert inc > 100_000, (f"the counter thread advanced only {inc} while {which} ran for "
                           f"{dur:.2f} s: the GIL was not released")
    assert rate > 10 * max(rate_held, 1.0), (
        f"counter rate inside {which} {rate:,.0f}/s is not clearly above the rate while the "
        f"GIL is held {rate_held:,.0f}/s")
