"""trajloss.set_num_threads: validation, the environment default, results
bit-for-bit identical for any thread count (and equal to the NumPy
reference), and a process that also runs PyTorch's thread pool and forks."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import trajloss as tl
from conftest import random_discrete
from loss_reference import combined_loss_ref, control_loss_ref


@pytest.fixture(autouse=True)
def _restore_threads():
    before = tl.get_num_threads()
    yield
    tl.set_num_threads(before)


@pytest.mark.parametrize("bad, exc", [(0, ValueError), (257, ValueError), (-1, ValueError),
                                      (1.5, TypeError), (True, TypeError), ("2", TypeError),
                                      (None, TypeError)])
def test_set_num_threads_rejects(bad, exc):
    with pytest.raises(exc, match="k must"):
        tl.set_num_threads(bad)


def test_set_and_get():
    tl.set_num_threads(3)
    assert tl.get_num_threads() == 3
    tl.set_num_threads(np.int64(1))
    assert tl.get_num_threads() == 1


def _big_case(rng, B=5003, T=9, n=3, m=2):
    Ad, Bd = random_discrete(rng, n, m)
    system = tl.LinearSystem(Ad, Bd)
    U, RU = rng.standard_normal((2, B, T, m))
    x0 = rng.standard_normal((B, n))
    RX = rng.standard_normal((B, T + 1, n))
    lengths = rng.integers(0, T + 1, size=B)
    return system, U, x0, RU, RX, lengths


def test_results_identical_for_any_thread_count():
    rng = np.random.default_rng(11)
    system, U, x0, RU, RX, lengths = _big_case(rng)
    opts = dict(weight=0.3, terminal_weight=0.2, include_initial=True, discount=0.9,
                penalty="huber", delta=0.7, lengths=lengths)
    mask = rng.random(U.shape[:2]) < 0.5
    runs = []
    for k in (1, 2, 3, 4, 7):
        tl.set_num_threads(k)
        runs.append((tl.combined_loss(system, U, x0, RU, RX, **opts),
                     tl.control_loss(U, RU, mask=mask, discount=1.1)))
    first, first_c = runs[0]
    for res, res_c in runs[1:]:
        assert res.value == first.value and res.components == first.components
        assert np.array_equal(res.grad, first.grad) and np.array_equal(res.grad_x0, first.grad_x0)
        assert res_c.value == first_c.value and np.array_equal(res_c.grad, first_c.grad)
    # ... and they are right, not just consistent
    ref = combined_loss_ref(system.Ad, system.Bd, U, x0, RU, RX, **opts)
    assert abs(first.value - ref["value"]) <= 1e-12 * abs(ref["value"])
    np.testing.assert_allclose(first.grad, ref["grad"], rtol=1e-10, atol=1e-16)
    np.testing.assert_allclose(first.grad_x0, ref["grad_x0"], rtol=1e-10, atol=1e-16)
    ref_c = control_loss_ref(U, RU, mask=mask, discount=1.1)
    assert abs(first_c.value - ref_c["value"]) <= 1e-12 * abs(ref_c["value"])
    np.testing.assert_allclose(first_c.grad, ref_c["grad"], rtol=1e-10, atol=1e-16)


def _run(code, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=300)


def test_environment_default():
    out = _run("import trajloss; print(trajloss.get_num_threads())",
               {"TRAJLOSS_NUM_THREADS": "3"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "3"
    out = _run("import trajloss; print(trajloss.get_num_threads())",
               {"TRAJLOSS_NUM_THREADS": "lots"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1" and "TRAJLOSS_NUM_THREADS" in out.stderr


def test_coexists_with_torch_threads_and_fork():
    """torch's OpenMP pool busy in one thread, trajloss on 2 threads in
    another, then a forked child (as a DataLoader worker) that uses trajloss
    with 2 threads. (The child leaves torch's own pool alone: GNU OpenMP is
    not fork-safe, which is why DataLoader workers run torch on 1 thread.)"""
    pytest.importorskip("torch")
    code = """
        import os, threading
        import numpy as np, torch, trajloss as tl
        torch.set_num_threads(2)
        rng = np.random.default_rng(0)
        s = tl.DoubleIntegrator(dt=0.2)
        B, T = 20000, 15
        U, RU = rng.standard_normal((2, B, T, 1)); x0 = rng.standard_normal((B, 2))
        RX = rng.standard_normal((B, T + 1, 2))
        def loss():
            return tl.combined_loss(s, U, x0, RU, RX, weight=0.5)
        tl.set_num_threads(1); serial = loss()
        tl.set_num_threads(2)
        a = torch.randn(400, 400, dtype=torch.float64)
        want = (a @ a).sum().item()
        stop = False
        def torch_work():
            while not stop:
                assert (a @ a).sum().item() == want
        t = threading.Thread(target=torch_work); t.start()
        for _ in range(20):
            r = loss()
            assert r.value == serial.value and np.array_equal(r.grad, serial.grad)
        stop = True; t.join()
        pid = os.fork()
        if pid == 0:
            ok = loss().value == serial.value
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        print("ok")
    """
    out = _run(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_threads_are_kept_between_calls_and_remade_after_fork():
    """The worker threads outlive a call (a pool, so that calls in a loop
    do not start threads each time) without growing in number, grow when
    more are asked for, and a forked child -- which has none of them --
    makes its own instead of waiting on its parent's."""
    code = """
        import os
        import numpy as np, trajloss as tl
        def tasks():
            return len(os.listdir("/proc/self/task"))
        rng = np.random.default_rng(0)
        s = tl.DoubleIntegrator(dt=0.2)
        B, T = 8192, 15  # 32 chunks: up to 8 workers
        U, RU = rng.standard_normal((2, B, T, 1)); x0 = rng.standard_normal((B, 2))
        RX = rng.standard_normal((B, T + 1, 2))
        def loss():
            return tl.combined_loss(s, U, x0, RU, RX, weight=0.5)
        def same(r):
            return r.value == serial.value and np.array_equal(r.grad, serial.grad)
        tl.set_num_threads(1); serial = loss(); base = tasks()
        tl.set_num_threads(2); ok = same(loss()); two = tasks()
        for _ in range(50):
            ok &= same(loss())
        still = tasks()
        tl.set_num_threads(4); ok &= same(loss()); four = tasks()
        tl.set_num_threads(2); ok &= same(loss()); back = tasks()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            born = tasks(); good = same(loss()); after = tasks()
            os.write(w, f"{born} {after} {int(good)}".encode()); os._exit(0)
        os.close(w)
        child = os.read(r, 100).decode()
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        print(base, two, still, four, back, child, int(ok))
    """
    out = _run(code, {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    base, two, still, four, back, born, after, good, ok = map(int, out.stdout.split())
    assert ok == 1 and good == 1, "results differ from one thread's"
    assert two == base + 1 and still == two, (base, two, still)
    assert four == base + 3 and back == four, (four, back)
    assert born == 1 and after == 2, (born, after)


def test_concurrent_threaded_calls_share_the_pool_and_match_serial():
    """Python threads calling at once with 2 threads each: one call at a time
    uses the kept threads, the others start their own; every result is the
    serial one, bit for bit."""
    import threading

    rng = np.random.default_rng(7)
    s = tl.DoubleIntegrator(dt=0.2)
    B, T = 4096, 15  # 16 chunks: two workers a call
    U, RU = rng.standard_normal((2, B, T, 1))
    x0, RX = rng.standard_normal((B, 2)), rng.standard_normal((B, T + 1, 2))
    lengths = rng.integers(1, T + 1, B)
    calls = [lambda: tl.combined_loss(s, U, x0, RU, RX, weight=0.5),
             lambda: tl.combined_loss(s, U.astype(np.float32), x0.astype(np.float32),
                                      RU.astype(np.float32), RX.astype(np.float32),
                                      weight=0.5, lengths=lengths, discount=0.9),
             lambda: tl.control_loss(U, RU, penalty="huber")]
    tl.set_num_threads(1)
    serial = [f() for f in calls]
    tl.set_num_threads(2)
    bad, errors = [], []
    barrier = threading.Barrier(3)

    def worker(t):
        try:
            barrier.wait()
            for it in range(40):
                k = (t + it) % len(calls)
                r = calls[k]()
                if not (r.value == serial[k].value and np.array_equal(r.grad, serial[k].grad)):
                    bad.append((t, it, k))
        except BaseException as exc:  # noqa: BLE001 -- reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=300)
    assert not errors and not bad, (errors, bad[:5])
