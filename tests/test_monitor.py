"""trajloss.LossMonitor: epoch means, shares, the logged line of seed 000's
"best practice 2", the dominance warning, and the comparison table of seed
000 (its three runs typed in as inputs)."""

import logging
import math
import re
import warnings

import numpy as np
import pytest

import trajloss
from trajloss import LossComponents, LossMonitor, weighting
from conftest import ref_rollout

DT = 1.0 / 3.0
HEADER = "| Run | Weight | Epochs | Eval Loss | Success | Error | Status |"


@pytest.fixture
def logger(request):
    lg = logging.getLogger("trajloss.tests." + re.sub(r"\W", "_", request.node.name))
    lg.setLevel(logging.DEBUG)
    return lg


def line(run, epoch, control, trajectory):
    return (f"[{run}] epoch {epoch}: Control: {control:.4f}, Trajectory: {trajectory:.4f}, "
            f"Ratio: {trajectory / control:.2f}")


def info_lines(caplog, logger):
    return [r.getMessage() for r in caplog.records
            if r.name == logger.name and r.levelno == logging.INFO]


def components(control, trajectory, weight, terminal=0.0, terminal_weight=0.0):
    total = control + weight * trajectory + terminal_weight * terminal
    return LossComponents(control, trajectory, terminal, weight, terminal_weight, total)


class FakeTensor:
    """A 0-d tensor stand-in: only float() works."""

    def __init__(self, v):
        self._v = v

    def __float__(self):
        return float(self._v)


# --------------------------------------------------------------------------
# Epoch summaries
# --------------------------------------------------------------------------


def test_epoch_line_seed_numbers(caplog, logger):
    """Seed 000's trained model: control 0.025, trajectory 0.084 (ratio 3.36)."""
    caplog.set_level(logging.INFO, logger=logger.name)
    m = LossMonitor(logger=logger)
    m.start_run("seed", weight=1.0)
    m.update(control=0.025, trajectory=0.084, weight=1.0)
    m.end_epoch(3)
    assert info_lines(caplog, logger) == [
        "[seed] epoch 3: Control: 0.0250, Trajectory: 0.0840, Ratio: 3.36"]


def test_epoch_summary_count_weighted(caplog, logger):
    caplog.set_level(logging.INFO, logger=logger.name)
    m = LossMonitor(logger=logger, dominance=0.99)
    m.start_run("means", weight="mixed")
    ups = [  # control, trajectory, weight, count
        (0.5, 2.0, 0.3, 10),
        (1.0, 4.0, 0.5, 30),
        (0.2, 0.7, 0.1, 1),
    ]
    for c, t, w, k in ups:
        m.update(control=c, trajectory=t, weight=w, count=k)
    s = m.end_epoch(0)
    cnt = np.array([u[3] for u in ups], dtype=float)
    c = np.array([u[0] for u in ups])
    t = np.array([u[1] for u in ups])
    w = np.array([u[2] for u in ups])
    N = cnt.sum()
    mc, mt, mw = (cnt @ c) / N, (cnt @ t) / N, (cnt @ w) / N
    traj_contrib = (cnt @ (w * t)) / N
    total = mc + traj_contrib
    assert set(s) >= {"epoch", "control", "trajectory", "terminal", "weight", "ratio", "shares",
                      "total"}
    assert s["epoch"] == 0
    assert s["control"] == pytest.approx(mc, rel=1e-13)
    assert s["trajectory"] == pytest.approx(mt, rel=1e-13)
    assert s["terminal"] == 0.0
    assert s["weight"] == pytest.approx(mw, rel=1e-13)
    assert s["ratio"] == pytest.approx(mt / mc, rel=1e-13)
    assert s["total"] == pytest.approx(total, rel=1e-13)
    assert set(s["shares"]) == {"control", "trajectory", "terminal"}
    assert s["shares"]["control"] == pytest.approx(mc / total, rel=1e-13)
    assert s["shares"]["trajectory"] == pytest.approx(traj_contrib / total, rel=1e-13)
    assert s["shares"]["terminal"] == pytest.approx(0.0, abs=1e-15)
    # the weighted trajectory contribution is NOT mean(weight) * mean(trajectory)
    assert abs(traj_contrib - mw * mt) > 1e-3
    assert info_lines(caplog, logger) == [line("means", 0, mc, mt)]


def test_epoch_summary_from_components_with_terminal(logger):
    m = LossMonitor(logger=logger, dominance=0.99)
    m.start_run("terminal", weight=0.3)
    comps = [components(0.04, 0.12, 0.3, terminal=0.5, terminal_weight=0.2),
             components(0.02, 0.08, 0.3, terminal=0.1, terminal_weight=0.2)]
    m.update(comps[0], count=3)
    m.update(comps[1], count=1)
    s = m.end_epoch(7)
    mc = (3 * 0.04 + 0.02) / 4
    mt = (3 * 0.12 + 0.08) / 4
    mf = (3 * 0.5 + 0.1) / 4
    contrib = {"control": mc, "trajectory": 0.3 * mt, "terminal": 0.2 * mf}
    total = sum(contrib.values())
    assert s["epoch"] == 7
    assert s["control"] == pytest.approx(mc, rel=1e-13)
    assert s["trajectory"] == pytest.approx(mt, rel=1e-13)
    assert s["terminal"] == pytest.approx(mf, rel=1e-13)
    assert s["weight"] == pytest.approx(0.3, rel=1e-13)
    assert s["total"] == pytest.approx(total, rel=1e-13)
    for k, v in contrib.items():
        assert s["shares"][k] == pytest.approx(v / total, rel=1e-12), k
    assert sum(s["shares"].values()) == pytest.approx(1.0, rel=1e-13)


def test_update_with_loss_result(rng, caplog, logger):
    """A LossResult of combined_loss: the monitor sees the raw NumPy terms."""
    caplog.set_level(logging.INFO, logger=logger.name)
    system = trajloss.DoubleIntegrator(dt=DT)
    Ad = np.array([[1.0, DT], [0.0, 1.0]])
    Bd = np.array([[DT * DT / 2], [DT]])
    B, T = 4, 6
    x0 = rng.uniform(-2, 2, size=(B, 2))
    ref_U = rng.standard_normal((B, T, 1))
    ref_X = ref_rollout(Ad, Bd, x0, ref_U)
    m = LossMonitor(logger=logger, dominance=0.99)
    m.start_run("result", weight=0.3)
    cs, ts = [], []
    for _ in range(3):
        U = ref_U + 0.5 * rng.standard_normal((B, T, 1))
        r = trajloss.combined_loss(system, U, x0, ref_U, ref_X, weight=0.3)
        m.update(r)
        cs.append(np.mean((U - ref_U) ** 2))
        ts.append(np.mean((ref_rollout(Ad, Bd, x0, U)[:, 1:] - ref_X[:, 1:]) ** 2))
    s = m.end_epoch(1)
    mc, mt = np.mean(cs), np.mean(ts)
    assert s["control"] == pytest.approx(mc, rel=1e-12)
    assert s["trajectory"] == pytest.approx(mt, rel=1e-12)
    assert s["weight"] == pytest.approx(0.3, rel=1e-14)
    assert s["shares"]["trajectory"] == pytest.approx(0.3 * mt / (mc + 0.3 * mt), rel=1e-12)
    assert info_lines(caplog, logger) == [line("result", 1, mc, mt)]


def test_update_with_0d_values(logger):
    m = LossMonitor(logger=logger, dominance=0.99)
    m.start_run("tensors")
    m.update(control=np.array(0.5), trajectory=np.float32(1.5), weight=0.5)
    m.update(control=FakeTensor(1.0), trajectory=FakeTensor(2.5), weight=np.float64(0.5))
    s = m.end_epoch(0)
    assert s["control"] == pytest.approx(0.75, rel=1e-13)
    assert s["trajectory"] == pytest.approx(2.0, rel=1e-13)
    assert s["total"] == pytest.approx(0.75 + 0.5 * 2.0, rel=1e-13)
    for k in ("control", "trajectory", "total", "ratio", "weight"):
        assert isinstance(s[k], float), k


def test_raw_update_default_weight_is_one(logger):
    m = LossMonitor(logger=logger, dominance=0.99)
    m.start_run("w1")
    m.update(control=1.0, trajectory=3.0)
    s = m.end_epoch(0)
    assert s["weight"] == 1.0
    assert s["total"] == pytest.approx(4.0)
    assert s["shares"]["trajectory"] == pytest.approx(0.75)


def test_each_epoch_starts_fresh_and_history(caplog, logger):
    caplog.set_level(logging.INFO, logger=logger.name)
    m = LossMonitor(logger=logger, dominance=0.99)
    m.start_run("hist", weight=0.3)
    values = [(0.5, 1.0), (0.25, 0.6), (0.125, 0.5)]
    for e, (c, t) in enumerate(values):
        m.update(control=c, trajectory=t, weight=0.3, count=4)
        m.update(control=c, trajectory=t, weight=0.3, count=2)
        s = m.end_epoch(e)
        assert s["control"] == pytest.approx(c) and s["trajectory"] == pytest.approx(t)
    assert [h["epoch"] for h in m.history] == [0, 1, 2]
    assert [h["control"] for h in m.history] == pytest.approx([v[0] for v in values])
    assert [h["trajectory"] for h in m.history] == pytest.approx([v[1] for v in values])
    assert info_lines(caplog, logger) == [line("hist", e, c, t) for e, (c, t) in enumerate(values)]
    m.end_run()
    assert m.runs[-1]["epochs"] == 3
    m.start_run("next")
    assert m.history == []
    m.update(control=2.0, trajectory=1.0)
    m.end_epoch(0)
    assert len(m.history) == 1
    assert info_lines(caplog, logger)[-1] == line("next", 0, 2.0, 1.0)


def test_default_run_name(caplog, logger):
    caplog.set_level(logging.INFO, logger=logger.name)
    m = LossMonitor(name="myrun", logger=logger, dominance=0.99)
    m.update(control=0.5, trajectory=1.0, weight=0.5)
    m.end_epoch(0)
    assert info_lines(caplog, logger) == [line("myrun", 0, 0.5, 1.0)]


def test_default_logger_is_trajloss(caplog):
    caplog.set_level(logging.INFO, logger="trajloss")
    m = LossMonitor(dominance=0.99)
    m.start_run("default-logger")
    m.update(control=0.5, trajectory=1.0, weight=0.5)
    m.end_epoch(2)
    msgs = [r.getMessage() for r in caplog.records if r.name == "trajloss"]
    assert msgs == [line("default-logger", 2, 0.5, 1.0)]


def test_end_epoch_without_updates(logger):
    m = LossMonitor(logger=logger)
    m.start_run("empty")
    with pytest.raises(ValueError, match="(?i)update"):
        m.end_epoch(0)
    m.update(control=1.0, trajectory=1.0, weight=0.5)
    m.end_epoch(0)
    with pytest.raises(ValueError, match="(?i)update"):
        m.end_epoch(1)  # the previous epoch's updates do not count again


# --------------------------------------------------------------------------
# Dominance warning
# --------------------------------------------------------------------------

TRAJ_DOMINANT = dict(control=0.025, trajectory=0.084, weight=1.0)   # seed: 77% trajectory
BALANCED = dict(control=0.025, trajectory=0.084, weight=0.3)        # seed: ~50% / 50%
CONTROL_DOMINANT = dict(control=1.0, trajectory=0.1, weight=1.0)    # 91% control


def _epochs(m, pattern, start=0):
    """Run one epoch per entry of ``pattern``; return the RuntimeWarnings raised."""
    kinds = {"T": TRAJ_DOMINANT, "B": BALANCED, "C": CONTROL_DOMINANT}
    caught = []
    for i, p in enumerate(pattern):
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            m.update(**kinds[p])
            m.end_epoch(start + i)
        caught.append([w for w in rec if issubclass(w.category, RuntimeWarning)])
    return caught


def warning_records(caplog, logger):
    return [r for r in caplog.records if r.name == logger.name and r.levelno == logging.WARNING]


def test_seed_shares_are_as_expected(logger):
    """Sanity check of the inputs used below (seed 000: 23% / 77%, then ~50%)."""
    m = LossMonitor(logger=logger, dominance=0.99)
    m.start_run("x")
    m.update(**TRAJ_DOMINANT)
    s = m.end_epoch(0)
    assert s["shares"]["trajectory"] == pytest.approx(0.084 / 0.109, rel=1e-12)
    assert round(100 * s["shares"]["trajectory"]) == 77
    m.update(**BALANCED)
    s = m.end_epoch(1)
    assert s["shares"]["trajectory"] == pytest.approx(0.0252 / 0.0502, rel=1e-12)


def test_no_warning_for_fewer_than_patience(caplog, logger):
    m = LossMonitor(logger=logger, dominance=0.7, patience=3)
    m.start_run("short")
    caught = _epochs(m, "TTBTTBTTBB")
    assert sum(len(c) for c in caught) == 0
    assert warning_records(caplog, logger) == []


def test_warning_exactly_at_patience_then_once(caplog, logger):
    m = LossMonitor(logger=logger, dominance=0.7, patience=3)
    m.start_run("dom")
    caught = _epochs(m, "TTT")
    assert [len(c) for c in caught] == [0, 0, 1]
    msg = str(caught[2][0].message)
    assert "trajectory" in msg.lower()
    # the warning goes through one channel only, or it prints twice
    assert warning_records(caplog, logger) == []
    # more dominant epochs, a break, and another streak: still only the one warning
    caught = _epochs(m, "TTTTTBTTTTT", start=3)
    assert sum(len(c) for c in caught) == 0
    assert warning_records(caplog, logger) == []


def test_other_term_warns_separately(caplog, logger):
    m = LossMonitor(logger=logger, dominance=0.7, patience=2)
    m.start_run("both")
    caught = _epochs(m, "TTCBCC")
    assert [len(c) for c in caught] == [0, 1, 0, 0, 0, 1]
    assert "trajectory" in str(caught[1][0].message).lower()
    assert "control" in str(caught[5][0].message).lower()
    assert warning_records(caplog, logger) == []
    caught = _epochs(m, "CCCTTT", start=6)
    assert sum(len(c) for c in caught) == 0


def test_terminal_dominance_warns(logger):
    m = LossMonitor(logger=logger, dominance=0.7, patience=2)
    m.start_run("terminal")
    got = []
    for e in range(3):
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            m.update(components(0.01, 0.02, 0.3, terminal=1.0, terminal_weight=1.0))
            m.end_epoch(e)
        got.append([w for w in rec if issubclass(w.category, RuntimeWarning)])
    assert [len(g) for g in got] == [0, 1, 0]
    assert "terminal" in str(got[1][0].message).lower()


def test_a_new_run_can_warn_again(caplog, logger):
    m = LossMonitor(logger=logger, dominance=0.7, patience=3)
    m.start_run("first")
    assert [len(c) for c in _epochs(m, "TTTT")] == [0, 0, 1, 0]
    m.end_run()
    m.start_run("second")
    # the streak of the previous run does not carry over
    assert [len(c) for c in _epochs(m, "TTTT")] == [0, 0, 1, 0]
    assert warning_records(caplog, logger) == []


def test_share_equal_to_threshold_is_not_dominance(logger):
    """Exact binary fractions: control 0.25, trajectory 0.75 -> share 0.75 exactly."""
    m = LossMonitor(logger=logger, dominance=0.75, patience=2)
    m.start_run("edge")
    n = 0
    for e in range(6):
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            m.update(control=0.25, trajectory=0.75, weight=1.0)
            s = m.end_epoch(e)
        assert s["shares"]["trajectory"] == 0.75
        n += sum(issubclass(w.category, RuntimeWarning) for w in rec)
    assert n == 0


def test_patience_counts_consecutive_epochs(logger):
    m = LossMonitor(logger=logger, dominance=0.7, patience=5)
    m.start_run("p5")
    assert sum(len(c) for c in _epochs(m, "TTTTBTTTTB")) == 0
    assert [len(c) for c in _epochs(m, "TTTTT", start=10)] == [0, 0, 0, 0, 1]


# --------------------------------------------------------------------------
# Runs and the comparison table (seed 000's Comparison Matrix)
# --------------------------------------------------------------------------


def _run(m, name, weight, epochs, **end):
    m.start_run(name, weight=weight)
    w = float(weight) if not isinstance(weight, weighting.WeightingStrategy) else 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for e in range(epochs):
            m.update(control=0.02, trajectory=0.05, weight=w)
            m.end_epoch(e)
    m.end_run(**end)


def _parse(md):
    lines = [ln.strip() for ln in md.strip().splitlines()]
    assert lines[0] == HEADER
    assert re.fullmatch(r"\|(\s*:?-{3,}:?\s*\|){7}", lines[1]), lines[1]
    rows = []
    for ln in lines[2:]:
        assert ln.startswith("|") and ln.endswith("|"), ln
        rows.append([c.strip() for c in ln[1:-1].split("|")])
    return rows


@pytest.fixture
def seed_monitor(logger):
    m = LossMonitor(logger=logger)
    _run(m, "5531054", 0.0, 100, eval_loss=0.0189, success=0.864, error=0.2295,
         status="✅ Baseline")
    _run(m, "5534733", 1.0, 55, eval_loss=0.0554, success=0.206, error=0.2051,
         status="❌ FAILED")
    _run(m, "5535756", 0.3, 12, status="🔄 Testing")
    return m


def test_runs_record_seed_comparison(seed_monitor):
    runs = seed_monitor.runs
    assert [r["name"] for r in runs] == ["5531054", "5534733", "5535756"]
    assert [r["weight"] for r in runs] == ["0.0", "1.0", "0.3"]
    assert [r["epochs"] for r in runs] == [100, 55, 12]
    assert [r["eval_loss"] for r in runs] == [0.0189, 0.0554, None]
    assert [r["success"] for r in runs] == [0.864, 0.206, None]
    assert [r["error"] for r in runs] == [0.2295, 0.2051, None]
    assert [r["status"] for r in runs] == ["✅ Baseline", "❌ FAILED", "🔄 Testing"]
    keys = {"name", "weight", "epochs", "eval_loss", "success", "error", "status"}
    d = seed_monitor.to_dict()
    assert set(d) == {"runs"}
    assert len(d["runs"]) == 3
    for run, exported in zip(runs, d["runs"]):
        assert set(exported) == keys
        assert {k: run[k] for k in keys} == exported


def test_markdown_table_seed_comparison(seed_monitor):
    rows = _parse(seed_monitor.to_markdown())
    assert rows == [
        ["5531054", "0.0", "100", "0.0189", "86.4%", "0.2295", "✅ Baseline"],
        ["5534733", "1.0", "55", "0.0554", "20.6%", "0.2051", "❌ FAILED"],
        ["5535756", "0.3", "12", "-", "-", "-", "🔄 Testing"],
    ]


def test_markdown_strategy_weight_and_automatic_status(logger):
    m = LossMonitor(logger=logger)
    strat = weighting.Curriculum(start=50, ramp=100)
    _run(m, "curriculum", strat, 2, eval_loss=0.0312, success=1.0, error=0.1234)
    assert m.runs[0]["weight"] == str(strat)
    rows = _parse(m.to_markdown())
    # no status given and no dominance warning: the automatic "ok", not "-"
    assert rows == [["curriculum", str(strat), "2", "0.0312", "100.0%", "0.1234", "ok"]]


def test_empty_monitor_table_has_only_the_header():
    import trajloss
    monitor = trajloss.LossMonitor()
    lines = monitor.to_markdown().splitlines()
    assert lines[0] == "| Run | Weight | Epochs | Eval Loss | Success | Error | Status |"
    assert len(lines) == 2 and monitor.to_dict() == {"runs": []}


def test_run_dicts_carry_exactly_the_documented_keys():
    import trajloss
    monitor = trajloss.LossMonitor(name="a")
    monitor.update(control=1.0, trajectory=2.0, weight=0.5)
    monitor.end_epoch()
    monitor.end_run(eval_loss=0.1)
    keys = {"name", "weight", "epochs", "eval_loss", "success", "error", "status"}
    assert [set(r) for r in monitor.runs] == [keys]


# --------------------------------------------------------------------------
# The dominance warning prints once
# --------------------------------------------------------------------------

_SCRIPT = """
import logging, sys
import trajloss
if sys.argv[1] == "logging":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
m = trajloss.LossMonitor(name="once", patience=2)
for epoch in range(4):
    m.update(control=0.025, trajectory=0.084, weight=1.0)   # trajectory 77% of the loss
    m.end_epoch(epoch)
"""


@pytest.mark.parametrize("setup", ["plain", "logging"])
def test_dominance_warning_prints_once_in_a_fresh_interpreter(setup):
    """What a user sees on stderr: the message exactly once, whether or not
    logging is configured (before, the logger's record printed it a second time)."""
    import os
    import pathlib
    import subprocess
    import sys
    root = str(pathlib.Path(trajloss.__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=root)
    env.pop("PYTHONWARNINGS", None)
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, setup], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("the trajectory term has been above 70% of the loss") == 1, proc.stderr


def test_dominance_warning_once_through_combined_loss(recwarn):
    """A training-like loop over ``combined_loss`` results: exactly one warning
    for one dominance occurrence, however many epochs it lasts."""
    system = trajloss.DoubleIntegrator(dt=DT)
    rng = np.random.default_rng(3)
    data = trajloss.make_dataset(system, 16, seed=0)
    m = LossMonitor(name="combined", patience=3)
    shares = []
    for epoch in range(8):
        U = data.controls + 0.5 * rng.standard_normal(data.controls.shape)
        res = trajloss.combined_loss(system, U, data.x0, data.controls, data.states, weight=50.0)
        m.update(res)
        shares.append(m.end_epoch(epoch)["shares"]["trajectory"])
    assert min(shares) > 0.7  # the situation: the trajectory term dominates every epoch
    dominance = [w for w in recwarn.list if issubclass(w.category, RuntimeWarning)
                 and "above 70%" in str(w.message)]
    assert len(dominance) == 1


def test_dominance_warning_once_through_torch_combined_loss(recwarn):
    """The same through ``trajloss.torch.CombinedLoss(monitor=...)``."""
    torch = pytest.importorskip("torch")
    import trajloss.torch as tlt
    system = trajloss.DoubleIntegrator(dt=DT)
    data = trajloss.make_dataset(system, 16, seed=0)
    x0, ru, rs = (torch.tensor(a) for a in (data.x0, data.controls, data.states))
    m = LossMonitor(name="torch", patience=2)
    loss_fn = tlt.CombinedLoss(system, weight=50.0, monitor=m)
    g = torch.Generator().manual_seed(0)
    for epoch in range(5):
        u = ru + 0.5 * torch.randn(ru.shape, generator=g, dtype=ru.dtype)
        loss_fn(u, x0, ru, rs)
        assert m.end_epoch(epoch)["shares"]["trajectory"] > 0.7
    dominance = [w for w in recwarn.list if issubclass(w.category, RuntimeWarning)
                 and "above 70%" in str(w.message)]
    assert len(dominance) == 1


# --------------------------------------------------------------------------
# The Status column
# --------------------------------------------------------------------------


def _statuses(m):
    return {r["name"]: r["status"] for r in m.to_dict()["runs"]}


def test_status_ok_for_a_balanced_run(logger):
    m = LossMonitor(logger=logger, dominance=0.7, patience=2)
    m.start_run("balanced", weight=0.3)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for e in range(6):
            m.update(**BALANCED)  # trajectory 0.3*0.084/(0.025+0.3*0.084) = 50%
            m.end_epoch(e)
    assert rec == []
    assert _statuses(m) == {"balanced": "running"}
    m.end_run(eval_loss=0.02)
    assert _statuses(m) == {"balanced": "ok"}
    assert _parse(m.to_markdown())[0][-1] == "ok"


def test_status_names_the_dominant_term(logger):
    m = LossMonitor(logger=logger, dominance=0.7, patience=3)
    m.start_run("trajectory heavy", weight=1.0)
    _epochs(m, "TT")
    assert _statuses(m) == {"trajectory heavy": "running"}  # not yet `patience` epochs
    _epochs(m, "T", start=2)  # 0.084/0.109 = 77% > 70% for the third epoch in a row
    assert _statuses(m) == {"trajectory heavy": "running, warning: trajectory > 70%"}
    _epochs(m, "BBB", start=3)  # recovering later does not erase what happened
    m.end_run()
    assert _statuses(m) == {"trajectory heavy": "warning: trajectory > 70%"}
    assert _parse(m.to_markdown())[0][-1] == "warning: trajectory > 70%"


def test_status_streak_shorter_than_patience_is_ok(logger):
    m = LossMonitor(logger=logger, dominance=0.7, patience=3)
    m.start_run("short streaks")
    _epochs(m, "TTBTTBTT")
    m.end_run()
    assert _statuses(m) == {"short streaks": "ok"}


def test_status_lists_every_dominant_term_in_a_fixed_order(logger):
    """Control dominance (1.0 vs 0.1: 91%) first seen after trajectory dominance,
    listed as control, trajectory; the threshold as given (80%)."""
    m = LossMonitor(logger=logger, dominance=0.8, patience=2)
    m.start_run("both")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for e in range(2):
            m.update(control=0.01, trajectory=0.09, weight=1.0)  # trajectory 90%
            m.end_epoch(e)
        for e in range(2, 4):
            m.update(**CONTROL_DOMINANT)
            m.end_epoch(e)
    m.end_run()
    assert _statuses(m) == {"both": "warning: control > 80%, trajectory > 80%"}


def test_status_terminal_dominance(logger):
    m = LossMonitor(logger=logger, dominance=0.7, patience=2)
    m.start_run("terminal")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for e in range(2):
            # 1.0 of 0.01 + 0.3*0.02 + 1.0 = 98% terminal
            m.update(components(0.01, 0.02, 0.3, terminal=1.0, terminal_weight=1.0))
            m.end_epoch(e)
    m.end_run()
    assert _statuses(m) == {"terminal": "warning: terminal > 70%"}


def test_status_of_runs_closed_by_the_next_run_and_without_epochs(logger):
    m = LossMonitor(logger=logger, dominance=0.7, patience=2)
    m.start_run("first")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        _epochs(m, "TT")
    m.start_run("second")          # closes "first" without metrics
    m.end_run()                    # "second" closed before any epoch
    m.start_run("third")
    _epochs(m, "B")
    m.start_run("fourth")          # closes "third"
    assert _statuses(m) == {"first": "warning: trajectory > 70%", "second": "no epochs",
                            "third": "ok"}


def test_status_given_replaces_the_automatic_one(logger):
    m = LossMonitor(logger=logger, dominance=0.7, patience=2)
    m.start_run("mine")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        _epochs(m, "TT")
    m.end_run(status="baseline")
    assert _statuses(m) == {"mine": "baseline"}
    m.start_run("bad")
    with pytest.raises(TypeError, match="status"):
        m.end_run(status=3)


def test_a_single_weighted_term_is_not_dominance(logger):
    """Trajectory and terminal weights 0 (control-only training, a curriculum
    before it starts): the control term is 100% of the loss by choice, so no
    warning and status "ok"; once the trajectory term is weighted, streaks count."""
    m = LossMonitor(logger=logger, dominance=0.7, patience=3)
    m.start_run("control only", weight=0.0)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for e in range(10):
            m.update(control=0.02, trajectory=0.5, weight=0.0)
            s = m.end_epoch(e)
            assert s["shares"]["control"] == 1.0
    assert rec == []
    m.end_run()
    assert _statuses(m) == {"control only": "ok"}
    m.start_run("curriculum")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for e in range(5):  # weight 0: not counted
            m.update(control=0.02, trajectory=0.5, weight=0.0)
            m.end_epoch(e)
        for e in range(5, 7):  # control 0.02 of 0.02 + 0.001*0.5: 98%, two epochs only
            m.update(control=0.02, trajectory=0.5, weight=0.001)
            m.end_epoch(e)
        assert rec == []
        m.update(control=0.02, trajectory=0.5, weight=0.001)  # the third epoch in a row
        m.end_epoch(7)
    assert len(rec) == 1 and "control term" in str(rec[0].message)
    assert _statuses(m)["curriculum"] == "running, warning: control > 70%"


def test_a_weighted_terminal_term_counts_as_a_second_term(logger):
    """Trajectory weight 0 but terminal weight > 0: two terms, dominance counts."""
    m = LossMonitor(logger=logger, dominance=0.7, patience=2)
    m.start_run("terminal only")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for e in range(2):
            # contributions: control 0.01, terminal 1.0 * 1.0 -> terminal 99%
            m.update(components(0.01, 0.02, 0.0, terminal=1.0, terminal_weight=1.0))
            m.end_epoch(e)
    assert len(rec) == 1 and "terminal term" in str(rec[0].message)
