"""The losses through the dynamics, described once for every front end.

Each of ``trajectory_loss``, ``terminal_loss`` and ``combined_loss`` is one
call of the core's ``rollout_loss`` with some terms switched on; what differs
between them is only this table: which terms, which fixed weights, which
public argument fills each of the core's reference slots, which of them must
be given, and how the terminal target is named in messages. The NumPy, torch
and JAX front ends read it instead of each spelling it out.

The core's loss is ``w_c·ℓ_control + w_t·ℓ_trajectory + w_f·ℓ_terminal``
over the terms in ``terms``; ``weights`` gives ``(w_c, w_t, w_f)``, with
``None`` where the caller supplies the weight (``combined_loss``'s ``weight``
and ``terminal_weight``).
"""
from __future__ import annotations

from typing import NamedTuple

from . import _core

CONTROL, TRAJECTORY, TERMINAL = _core.TERM_CONTROL, _core.TERM_TRAJECTORY, _core.TERM_TERMINAL
ALL_TERMS = CONTROL | TRAJECTORY | TERMINAL

#: The core's reference slots, in the order ``rollout_loss`` takes them.
SLOTS = ("ref_controls", "ref_states", "target")


class Kind(NamedTuple):
    """One loss through the dynamics (see the module docstring)."""

    name: str
    terms: int
    weights: tuple                      # (w_c, w_t, w_f); None: the caller's
    references: tuple                   # public name filling each of SLOTS, or None
    required: tuple                     # references that may not be None
    target_name: str                    # the terminal target's name in messages

    def slots(self, refs: dict) -> tuple:
        """The core's ``(ref_controls, ref_states, target)`` from the public
        arguments ``refs`` (name -> value; each front end checks ``required``
        with its own notion of an array)."""
        return tuple(None if name is None else refs.get(name) for name in self.references)

    def term_weights(self, weight=None, terminal_weight=None) -> tuple:
        """``(w_c, w_t, w_f)`` with the caller's weights where the table has None."""
        w_c, w_t, w_f = self.weights
        return (w_c, weight if w_t is None else w_t, terminal_weight if w_f is None else w_f)


TRAJECTORY_LOSS = Kind("trajectory_loss", TRAJECTORY, (0.0, 1.0, 0.0),
                       (None, "ref_states", None), ("ref_states",), "target")
TERMINAL_LOSS = Kind("terminal_loss", TERMINAL, (0.0, 0.0, 1.0),
                     (None, None, "target"), ("target",), "target")
COMBINED_LOSS = Kind("combined_loss", ALL_TERMS, (1.0, None, None),
                     ("ref_controls", "ref_states", "terminal_target"),
                     ("ref_controls", "ref_states"), "terminal_target")

KINDS = {k.name: k for k in (TRAJECTORY_LOSS, TERMINAL_LOSS, COMBINED_LOSS)}

#: Operands of each core loss call that have a gradient, by the core's names
#: (the others are integer/bool data or the system): ``control_loss`` and
#: ``rollout_loss``. ``weight``/``terminal_weight`` are ``w_t``/``w_f``.
DIFFERENTIABLE = {
    "control": ("pred", "target", "feature_weights"),
    "rollout": ("controls", "x0") + SLOTS + ("weight", "terminal_weight", "feature_weights",
                                            "state_weights"),
}

