"""How many threads the losses use over the batch.

``set_num_threads(k)`` splits each loss call's batch over ``k`` worker
threads: the calling thread and ``k - 1`` POSIX threads of trajloss's own
(no OpenMP, so nothing conflicts with PyTorch's or NumPy's thread pools).
They are started at the first call that needs them and kept, asleep between
calls, so calls in a loop do not pay for starting threads. A forked child (a
DataLoader worker) makes threads of its own when it needs them. The batch is
always cut into the same fixed chunks of 64 sequences whose partial sums are
added in the same order, so values and gradients are bit-for-bit identical
for every ``k``. A call asks for another thread only when each gets about
200 µs of work (from B, T, n and m: from B = 256 at n = 12, m = 4, T = 50,
from B = 4096 for the double integrator); smaller calls run on the calling
thread whatever ``k`` is.

The default is 1, or the environment variable ``TRAJLOSS_NUM_THREADS`` read
at import.

These threads are separate from PyTorch's. With the default of 1, and for any
call below the sizes above, trajloss starts no thread at all, so it cannot
compete with PyTorch's intra-op pool. That pool (``torch.get_num_threads()``,
one OpenMP thread per core, which spin while they wait for the next operation)
is what slows the training of small models: their operations last
microseconds, and on a 2-core machine with anything else running, a step took
20-120 ms with two torch threads against 1-2 ms with one. For such models
call ``torch.set_num_threads(1)`` (the notebooks do).
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from . import _core

__all__ = ["get_num_threads", "set_num_threads"]

MAX_THREADS = 256


def set_num_threads(k) -> None:
    """Use ``k`` threads (1 .. 256) over the batch in every loss call."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an integer, got {k!r}")
    if not 1 <= k <= MAX_THREADS:
        raise ValueError(f"k must be in [1, {MAX_THREADS}], got {k}")
    _core.set_num_threads(int(k))


def get_num_threads() -> int:
    """The number of threads the losses use (see :func:`set_num_threads`)."""
    return _core.get_num_threads()


def _from_environment() -> None:
    value = os.environ.get("TRAJLOSS_NUM_THREADS")
    if value is None or value.strip() == "":
        return
    try:
        set_num_threads(int(value))
    except (TypeError, ValueError):
        # a bad setting must not make the package unimportable
        warnings.warn(f"TRAJLOSS_NUM_THREADS={value!r} is not an integer in "
                      f"[1, {MAX_THREADS}]; using 1 thread", RuntimeWarning, stacklevel=2)


_from_environment()
