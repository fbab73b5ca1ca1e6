"""trajloss -- trajectory losses for learning control policies, with a C core.

Systems, rollouts and their adjoints::

    import numpy as np, trajloss
    system = trajloss.DoubleIntegrator(dt=1/3)            # Ad, Bd by exact ZOH
    states = trajloss.rollout(system, x0, controls)       # (B, T+1, n)
    g_u, g_x0 = trajloss.rollout_vjp(system, x0, controls, grad_states)

Arrays are batch first: ``x0`` (B, n), ``controls`` (B, T, m), ``states``
(B, T+1, n); unbatched inputs give unbatched outputs. float32 and float64 are
both supported and kept; every loss value is a float64 sum (the rollout
losses compute float32 inputs in float32 first, as PyTorch does).
"""
from . import _lapack  # noqa: F401  (must precede _core)
from . import _core
from . import weighting
from ._version import __version__
from .calibration import Calibration, calibrate
from .datasets import DOUBLE_INTEGRATOR_DEFAULTS, Dataset, make_dataset
from .losses import (LossComponents, LossResult, combined_loss, control_loss, terminal_loss,
                     time_weights, trajectory_loss)
from .metrics import final_state_error, success_rate
from .monitor import LossMonitor
from .references import MinEnergyLaw, Reference, min_energy, min_energy_law
from .rollout import rollout, rollout_vjp
from .systems import DoubleIntegrator, LinearSystem, TimeVaryingSystem
from .threads import get_num_threads, set_num_threads

__all__ = [
    "__version__",
    "Calibration",
    "Dataset",
    "DOUBLE_INTEGRATOR_DEFAULTS",
    "calibrate",
    "make_dataset",
    "DoubleIntegrator",
    "LinearSystem",
    "TimeVaryingSystem",
    "LossComponents",
    "LossMonitor",
    "LossResult",
    "final_state_error",
    "success_rate",
    "weighting",
    "MinEnergyLaw",
    "Reference",
    "min_energy",
    "min_energy_law",
    "combined_loss",
    "control_loss",
    "terminal_loss",
    "time_weights",
    "trajectory_loss",
    "rollout",
    "rollout_vjp",
    "get_num_threads",
    "set_num_threads",
]
