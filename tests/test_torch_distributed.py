"""CombinedLoss is a well-behaved DistributedDataParallel citizen: two gloo
processes on the loopback address average to the single-process gradient."""
import pathlib
import socket
import subprocess
import sys
import time

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


def _run_ranks(out, world, deadline=120.0):
    """Both ranks on a fresh port; (return codes, logs). A rank that fails
    makes the other one stop at once (it would wait for its peer until gloo's
    own timeout); ranks still running at the deadline are killed, and their
    output so far is kept for the message."""
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, str(HERE / "ddp_worker.py"), str(rank),
                               str(world), str(port), str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in range(world)]
    end = time.monotonic() + deadline
    try:
        while time.monotonic() < end and any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        logs = [p.communicate()[0] for p in procs]
    return [p.returncode for p in procs], logs


def test_ddp_gradients_equal_single_process(tmp_path):
    out = tmp_path / "grads.npz"
    world = 2
    # The port is free when it is picked and bound by rank 0 a moment later;
    # in a busy test run another process can take it in between. Only that
    # case is retried, with a new port.
    for _attempt in range(3):
        codes, logs = _run_ranks(out, world)
        if not any("address already in use" in log.lower() for log in logs):
            break
    assert all(c == 0 for c in codes), "\n".join(
        f"rank {r} exited with {c}:\n{log}" for r, (c, log) in enumerate(zip(codes, logs)))

    # the same policy on the concatenated batch, in this process
    model = ddp_worker.policy()
    x0, ru, rs = ddp_worker.batch()
    ddp_worker.loss_of(model, x0, ru, rs).backward()
    saved = np.load(out)
    grads = [saved[f"arr_{i}"] for i in range(len(list(model.parameters())))]
    for g_ddp, p in zip(grads, model.parameters()):
        np.testing.assert_allclose(g_ddp, p.grad.numpy(), rtol=1e-12, atol=1e-14)
