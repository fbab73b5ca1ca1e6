"""One rank of tests/test_torch_distributed.py (run as a script, not collected).

usage: python ddp_worker.py RANK WORLD PORT OUT.npz
Rank r trains a DistributedDataParallel policy with trajloss.torch.CombinedLoss
on its share of the batch; rank 0 saves the averaged gradients.
"""
import datetime
import os
import sys

import numpy as np
import torch
import torch.distributed as dist

import trajloss
import trajloss.torch as tlt

BATCH = 16


def policy():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(),
                               torch.nn.Linear(16, 15)).double()


def batch():
    data = trajloss.make_dataset(trajloss.DoubleIntegrator(), BATCH, seed=7)
    return (torch.tensor(data.x0), torch.tensor(data.controls), torch.tensor(data.states))


def loss_of(model, x0, ru, rs):
    loss_fn = tlt.CombinedLoss(trajloss.DoubleIntegrator(), weight=0.3, discount=0.8)
    return loss_fn(model(x0).unsqueeze(-1), x0, ru, rs)


def main(rank, world, port, out):
    # a peer that never arrives is an error within a minute, not gloo's 30
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        model = torch.nn.parallel.DistributedDataParallel(policy())
        x0, ru, rs = batch()
        share = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
        loss = loss_of(model, x0[share], ru[share], rs[share])
        loss.backward()
        if rank == 0:
            np.savez(out, *[p.grad.numpy() for p in model.parameters()], loss=loss.item())
    finally:
        # Both ranks leave together: a rank that tears down its gloo pairs
        # while its peer still has them open can abort the peer's process
        # ("terminate called without an active exception", about 1 run in 40).
        # No destroy_process_group: a rank tearing gloo down after its peer
        # has already left (os._exit below) could wait for it forever (a
        # rank killed at the test's deadline, in CI under load). The process
        # ends right after the barrier instead.
        dist.barrier()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    # DistributedDataParallel keeps the gloo process group alive after
    # destroy_process_group -- its pt_gloo_runloop and gloo_tcp_loop threads
    # still run here, with a plain MSE loss as with trajloss -- so the
    # interpreter would tear it down during finalization, which crashed about
    # one run in several hundred (SIGSEGV in both ranks, or "terminate called
    # without an active exception"), after everything was done. The gradients
    # are written and both ranks are past the barrier: leave without it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
