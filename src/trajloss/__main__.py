"""``python -m trajloss [report|demo] [options]``.

``report`` (the default) prints the loss-scale and reference analysis of the
double-integrator study (or of any LTI system given with ``--system``): loss
scales and the balancing weight, the contribution breakdown, and the
discretisation error of the minimum-energy reference; ``python -m trajloss
report --help`` lists its options. ``demo`` rolls out a small batch and checks
the adjoint; it takes no options.
"""
from __future__ import annotations

import sys

import numpy as np

import trajloss
from trajloss import report
from trajloss.datasets import _printable


#: ``python -m trajloss --help``: plain text, one line a command.
HELP = """\
usage: python -m trajloss [report|demo] [options]

commands:
  report  loss scales, balancing weight and reference errors (default command)
  demo    roll out a small double-integrator batch and check its gradient

Options without a command go to report: 'python -m trajloss --json' runs
'python -m trajloss report --json'. 'python -m trajloss report --help' lists
the report's options; demo takes none.
"""

#: ``python -m trajloss demo --help``.
DEMO_HELP = """\
usage: python -m trajloss demo

Roll out 4 random 15-step control sequences through the double integrator
(dt = 1/3 s), then compare the adjoint gradient of the sum of the states with
respect to one control against a finite difference. Prints the version, the
LAPACK provider, the discrete system, the array shapes and the two gradients;
takes under a second and no options.
"""


def demo() -> int:
    """Roll out the double-integrator study's system (dt = 1/3 s) with random
    controls and check the adjoint against a forward finite difference."""
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
    print(f"d(sum of states)/du[0,3]: adjoint {grad_u[0, 3, 0]:.6f}, finite difference {fd:.6f}")
    return 0


def main(argv=None) -> int:
    """Dispatch to ``report`` (the default) or ``demo``; ``-h``/``--help``
    first prints the commands, ``demo --help`` the demo's help. A bad command
    is one line on stderr and exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(HELP, end="")
        return 0
    command = argv.pop(0) if argv and not argv[0].startswith("-") else "report"
    if command == "report":
        return report.main(argv)
    if command == "demo":
        if not argv:
            return demo()
        if argv in (["-h"], ["--help"]):
            print(DEMO_HELP, end="")
            return 0
        message = f"demo takes no options, got '{_printable(' '.join(argv))}'"
    else:
        message = f"unknown command '{_printable(command)}' (expected 'report' or 'demo')"
    print(f"python -m trajloss: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
