"""Resident memory stays flat over many calls of every entry point, on the
success and the error paths (reference leaks in the extension would grow it).

The calls run in a fresh interpreter that imports only trajloss: max RSS is
a process-wide high-water mark, and inside the pytest process the thread
pools of torch/JAX and earlier tests' garbage would move it too."""
import subprocess
import sys

import numpy as np
import pytest

import trajloss as tl

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss in KiB is Linux's")


def _round(s, x0, u, rs, stuck):
    tl.rollout(s, x0, u)
    tl.rollout_vjp(s, x0, u, rs)
    tl.combined_loss(s, u, x0, u, rs, weight=0.3, lengths=[15] * 8)
    tl.control_loss(u, u, discount=0.5)
    tl.trajectory_loss(s, u, x0, rs, mask=np.ones((8, 15), bool))
    tl.min_energy(s, x0, np.zeros(2), 15, "continuous")
    tl.final_state_error(s, u, x0, [0, 0])
    tl.time_weights(15, 0.5, lengths=[3, 4])
    tl._core.expm(np.eye(3))
    tl.min_energy_law(s, x0, np.zeros(2), 5.0).evaluate([0.0, 1.0])
    for bad in (lambda: tl.rollout(s, x0, u[:3]), lambda: tl.control_loss(u, u[:2]),
                lambda: tl.combined_loss(s, u, x0, u, rs[:, :3], weight=0.3),
                lambda: tl.control_loss(u, u, lengths=[99] * 8),
                lambda: tl.rollout(s, x0.astype(np.float32), u),
                lambda: tl.min_energy(s, x0, np.zeros(3), 15),
                lambda: tl.min_energy(stuck, x0, np.zeros(2), 5)):
        try:
            bad()
        except (ValueError, TypeError, np.linalg.LinAlgError):
            pass


def _burn():
    """Run in the child: warm up, then ~51 000 calls; print the max-RSS growth in KiB."""
    import resource
    rng = np.random.default_rng(0)
    s = tl.DoubleIntegrator()
    stuck = tl.LinearSystem(np.eye(2), [[1.0], [0.0]])
    x0, u, rs = rng.normal(size=(8, 2)), rng.normal(size=(8, 15, 1)), rng.normal(size=(8, 16, 2))
    for _ in range(500):   # warm-up: allocator pools, caches
        _round(s, x0, u, rs, stuck)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(3000):
        _round(s, x0, u, rs, stuck)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)


def test_resident_memory_stays_flat():
    here = str(__import__("pathlib").Path(__file__).resolve().parent)
    code = f"import sys; sys.path.insert(0, {here!r}); import test_memory; test_memory._burn()"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True).stdout
    growth = int(out.split()[-1])
    # a leak of one small array per call would be megabytes by now
    assert growth < 1024, f"max RSS grew by {growth} KiB"
