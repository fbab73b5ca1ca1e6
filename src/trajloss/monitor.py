"""Loss monitoring: what the double-integrator study found worth watching every
epoch (each term's share of the loss), and a comparison table of runs."""
from __future__ import annotations

import logging
import math
import warnings

from .weighting import _scalar

__all__ = ["LossMonitor"]

_TERMS = ("control", "trajectory", "terminal")


class LossMonitor:
    """Accumulate loss components per step, summarise them per epoch, and
    compare runs.

    ::

        monitor = trajloss.LossMonitor()
        monitor.start_run("trajectory 0.3", weight=0.3)
        for epoch in range(epochs):
            for batch in loader:
                res = trajloss.combined_loss(..., weight=0.3)
                monitor.update(res)
            monitor.end_epoch(epoch)      # logs "Control: …, Trajectory: …, Ratio: …"
        monitor.end_run(eval_loss=0.019, success=0.864, error=0.23)
        print(monitor.to_markdown())

    Parameters
    ----------
    name : str
        Name of the first run (``start_run`` begins others).
    logger : logging.Logger, optional
        Where the epoch lines go, at INFO (default ``logging.getLogger("trajloss")``).
    dominance : float
        A term whose share of the total stays above this ...
    patience : int
        ... for this many consecutive epochs triggers one warning per run and
        term (in the double-integrator study the trajectory term at 77% wrecked training).
        Epochs whose weights leave a single term in the loss (trajectory and
        terminal weights 0) never count as dominance.

    The dominance warning is a ``RuntimeWarning`` of the :mod:`warnings`
    module, issued once (so it prints once; filter it, catch it with
    ``warnings.catch_warnings``, or route it into a log with
    ``logging.captureWarnings(True)``). It is not also sent to ``logger``,
    which would print it a second time.

    Every run has a status, the table's Status column:

    - ``"running"`` while the run is open and no term has dominated;
    - ``"ok"`` once it is closed with no dominance warning;
    - ``"warning: trajectory > 70%"`` (the terms that triggered the warning,
      in the order control, trajectory, terminal, with the ``dominance``
      threshold), prefixed with ``"running, "`` while the run is open;
    - ``"no epochs"`` for a run closed before its first epoch;
    - or the text given to ``end_run(status=...)``, which replaces it.
    """

    def __init__(self, name="run", logger=None, dominance=0.7, patience=5):
        if not (isinstance(dominance, (int, float)) and 0 < dominance < 1):
            raise ValueError(f"dominance must be a share in (0, 1), got {dominance!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an integer >= 1, got {patience!r}")
        self.logger = logger if logger is not None else logging.getLogger("trajloss")
        self.dominance = float(dominance)
        self.patience = patience
        self.runs = []
        self._run = None
        self._open = False
        self.start_run(name)

    # ---- runs ------------------------------------------------------------
    def start_run(self, name, weight=None):
        """Begin a new run (an open run is closed without final metrics)."""
        if self._open and self._run["epochs"] == 0 and not self._sums_count:
            self.runs.remove(self._run)  # drop an empty placeholder run
        elif self._open:
            self.end_run()
        self._run = {"name": str(name), "weight": "-" if weight is None else str(weight),
                     "epochs": 0, "eval_loss": None, "success": None, "error": None,
                     "status": None}
        self._open = True
        self.runs.append(self._run)
        self.history = []
        self._streak = dict.fromkeys(_TERMS, 0)
        self._warned = set()
        self._reset_epoch()
        self._run["status"] = self._status()

    def end_run(self, eval_loss=None, success=None, error=None, status=None):
        """Close the current run with its final metrics (any may be None).

        ``status`` (a string) replaces the automatic status ("ok", "warning:
        ...", "no epochs"; see the class docstring)."""
        if status is not None and not isinstance(status, str):
            raise TypeError(f"status must be a string or None, got {type(status).__name__}")
        run = self._run
        run.update(eval_loss=None if eval_loss is None else _scalar(eval_loss, "eval_loss"),
                   success=None if success is None else _scalar(success, "success"),
                   error=None if error is None else _scalar(error, "error"))
        self._open = False
        run["status"] = self._status() if status is None else status
        return dict(run)

    def _status(self):
        """The current run's automatic status (see the class docstring)."""
        warned = [term for term in _TERMS if term in self._warned]
        if warned:
            text = "warning: " + ", ".join(f"{term} > {self.dominance:.0%}" for term in warned)
        elif self._open:
            text = "running"
        else:
            text = "ok" if self._run["epochs"] > 0 else "no epochs"
        return f"running, {text}" if self._open and warned else text

    # ---- steps and epochs -------------------------------------------------
    def _reset_epoch(self):
        self._sums = dict.fromkeys(("control", "trajectory", "terminal", "weighted_trajectory",
                                    "weighted_terminal", "weight", "terminal_weight"), 0.0)
        self._sums_count = 0.0

    def update(self, result=None, *, control=None, trajectory=None, terminal=0.0, weight=None,
               terminal_weight=0.0, count=1):
        """Add one step: a ``LossResult``/``LossComponents``, or raw values
        (floats or 0-d tensors; ``weight`` defaults to 1). ``count`` weights the
        step in the epoch means (e.g. the batch size)."""
        if result is not None:
            comp = getattr(result, "components", result)
            if comp is None or not hasattr(comp, "trajectory"):
                raise TypeError("update needs a combined_loss result, LossComponents, or "
                                "control= and trajectory= values")
            control, trajectory, terminal = comp.control, comp.trajectory, comp.terminal
            weight, terminal_weight = comp.weight, comp.terminal_weight
        elif control is None or trajectory is None:
            raise TypeError("update needs a result or both control= and trajectory=")
        c, t, f = _scalar(control, "control"), _scalar(trajectory, "trajectory"), _scalar(terminal, "terminal")
        w = 1.0 if weight is None else _scalar(weight, "weight")
        wf = _scalar(terminal_weight, "terminal_weight")
        k = _scalar(count, "count")
        if k <= 0:
            raise ValueError(f"count must be > 0, got {count!r}")
        s = self._sums
        s["control"] += k * c
        s["trajectory"] += k * t
        s["terminal"] += k * f
        s["weighted_trajectory"] += k * w * t
        s["weighted_terminal"] += k * wf * f
        s["weight"] += k * w
        s["terminal_weight"] += k * wf
        self._sums_count += k

    def end_epoch(self, epoch=None):
        """Summarise the epoch's steps, log the epoch's line, check dominance.

        Returns ``dict(epoch, control, trajectory, terminal, weight, ratio,
        shares, total)`` with count-weighted means; shares are each term's
        weighted contribution over the total.
        """
        if self._sums_count == 0:
            raise ValueError("end_epoch called with no update since the last epoch")
        n, s = self._sums_count, self._sums
        epoch = self._run["epochs"] if epoch is None else epoch
        contributions = {"control": s["control"] / n, "trajectory": s["weighted_trajectory"] / n,
                         "terminal": s["weighted_terminal"] / n}
        total = sum(contributions.values())
        control, trajectory = s["control"] / n, s["trajectory"] / n
        summary = {
            "epoch": epoch, "control": control, "trajectory": trajectory,
            "terminal": s["terminal"] / n, "weight": s["weight"] / n,
            "ratio": trajectory / control if control > 0 else math.inf,
            "shares": {k: (v / total if total > 0 else math.nan) for k, v in contributions.items()},
            "total": total,
        }
        self.history.append(summary)
        self._run["epochs"] += 1
        # terms in the loss this epoch: control always, the others when weighted
        active = {"control": True, "trajectory": s["weight"] > 0, "terminal": s["terminal_weight"] > 0}
        self._reset_epoch()
        self.logger.info("[%s] epoch %s: Control: %.4f, Trajectory: %.4f, Ratio: %.2f",
                         self._run["name"], epoch, control, trajectory, summary["ratio"])
        self._check_dominance(summary, active)
        self._run["status"] = self._status()
        return summary

    def _check_dominance(self, summary, active):
        """Count each term's streak of epochs above ``dominance``; warn at ``patience``.

        Only a loss of two or more weighted terms can be dominated: an epoch
        whose weights leave one term alone (trajectory and terminal weights
        0: control-only training, a curriculum before it starts) counts as no
        dominance, since that term is the whole loss by choice."""
        several = sum(active.values()) >= 2
        for term in _TERMS:
            share = summary["shares"][term]
            dominant = several and share > self.dominance
            self._streak[term] = self._streak[term] + 1 if dominant else 0
            if self._streak[term] >= self.patience and term not in self._warned:
                self._warned.add(term)
                message = (f"[{self._run['name']}] the {term} term has been above "
                           f"{self.dominance:.0%} of the loss for {self._streak[term]} epochs "
                           f"(now {share:.0%}); consider re-weighting (trajloss.calibrate)")
                # one channel only: a logger record as well would print it twice
                # (logging's last-resort handler writes WARNING records to stderr)
                warnings.warn(message, RuntimeWarning, stacklevel=3)  # at the caller of end_epoch

    # ---- tables -----------------------------------------------------------
    def _reported(self):
        """The runs worth a row: all but an open run with nothing recorded yet."""
        return [run for run in self.runs
                if not (run is self._run and self._open and run["epochs"] == 0)]

    def to_dict(self):
        """``{"runs": [...]}``: one dict per run (name, weight, epochs,
        eval_loss, success, error, status)."""
        return {"runs": [dict(run) for run in self._reported()]}

    def to_markdown(self):
        """The runs as a Markdown comparison table, one row a run."""
        def fmt(value, kind):
            if value is None:
                return "-"
            if kind == "success":
                return f"{100 * value:.1f}%"
            return f"{value:.4g}"  # 4 significant digits: 0.0189, 1.2e-05
        lines = ["| Run | Weight | Epochs | Eval Loss | Success | Error | Status |",
                 "|-----|--------|--------|-----------|---------|-------|--------|"]
        for run in self._reported():
            lines.append(f"| {run['name']} | {run['weight']} | {run['epochs']} | "
                         f"{fmt(run['eval_loss'], 'loss')} | {fmt(run['success'], 'success')} | "
                         f"{fmt(run['error'], 'error')} | {run['status'] or '-'} |")
        return "\n".join(lines)
