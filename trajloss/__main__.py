"""``python -m trajloss``: a short demonstration of the installed package."""
from __future__ import annotations

import argparse
import sys

import numpy as np

import trajloss


def demo() -> None:
    """Roll out seed 000's double integrator and check the adjoint by finite differences."""
    system = trajloss.DoubleIntegrator(dt=1 / 3)
    rng = np.random.default_rng(0)
    x0 = rng.uniform([-10, -5], [10, 5], size=(4, 2))
    controls = rng.uniform(-8, 8, size=(4, 15, 1))
    states = trajloss.rollout(system, x0, controls)
    grad_u, _ = trajloss.rollout_vjp(system, x0, controls, np.ones_like(states))
    h, bumped = 1e-6, controls.copy()
    bumped[0, 3, 0] += h
    fd = (trajloss.rollout(system, x0, bumped).sum() - states.sum()) / h
    print(f"trajloss {trajloss.__version__} (LAPACK: {trajloss._core.LAPACK_PROVIDER})")
    print(f"{system}: Ad = {system.Ad.tolist()}, Bd = {system.Bd.ravel().tolist()}")
    print(f"rollout: x0 {x0.shape} + controls {controls.shape} -> states {states.shape}")
    print(f"final states of the first two samples: {states[:2, -1].round(3).tolist()}")
    print(f"d(sum of states)/du[0,3]: adjoint {grad_u[0, 3, 0]:.6f}, finite difference {fd:.6f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trajloss", description=__doc__)
    parser.add_argument("command", nargs="?", default="demo", choices=["demo"],
                        help="what to run (default: demo)")
    parser.parse_args(argv)
    demo()
    return 0


if __name__ == "__main__":
    sys.exit(main())
