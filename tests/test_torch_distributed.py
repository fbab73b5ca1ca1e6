"""CombinedLoss is a well-behaved DistributedDataParallel citizen: two gloo
processes on the loopback address average to the single-process gradient."""
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import ddp_worker  # noqa: E402


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_gradients_equal_single_process(tmp_path):
    out = tmp_path / "grads.npz"
    port, world = _free_port(), 2
    procs = [subprocess.Popen([sys.executable, str(HERE / "ddp_worker.py"), str(rank),
                               str(world), str(port), str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in range(world)]
    try:
        logs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(
        f"rank {r} exited with {p.returncode}:\n{log}" for r, (p, log) in enumerate(zip(procs, logs)))

    # the same policy on the concatenated batch, in this process
    model = ddp_worker.policy()
    x0, ru, rs = ddp_worker.batch()
    ddp_worker.loss_of(model, x0, ru, rs).backward()
    saved = np.load(out)
    grads = [saved[f"arr_{i}"] for i in range(len(list(model.parameters())))]
    for g_ddp, p in zip(grads, model.parameters()):
        np.testing.assert_allclose(g_ddp, p.grad.numpy(), rtol=1e-12, atol=1e-14)
