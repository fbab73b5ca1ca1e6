"""What a user reads -- the README, the package's docstrings and messages,
the notebooks, the benchmark tables, the CLI's help and the report -- names
the studies trajloss grew out of in plain words, never by internal labels
("seed 000", "SEED004", "design card") that appear nowhere a reader can look."""
import pathlib
import re
import subprocess
import sys

import trajloss
import trajloss.report

ROOT = pathlib.Path(__file__).resolve().parent.parent
LABEL = re.compile(r"seed[\s_-]*0\d\d|design[\s_-]*card", re.IGNORECASE)


def user_facing_files():
    files = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", ROOT / "benchmarks" / "run.py"]
    for pattern in ("*.py", "*.pyi", "*.c"):
        files += sorted((ROOT / "src" / "trajloss").glob(pattern))
    files += sorted((ROOT / "notebooks").glob("*.ipynb"))
    return files


def labels_in(text):
    return [(text.count("\n", 0, m.start()) + 1, m.group()) for m in LABEL.finditer(text)]


def test_the_pattern_catches_every_spelling():
    for label in ("seed 000", "Seed 004's", "SEED000", "seed_004", "seed-000", "design card",
                  "Design-Card"):
        assert labels_in(label), label
    for plain in ("seed=0", "random seed 0", "(seed 0)", "seeds 0-4", "the double-integrator study"):
        assert not labels_in(plain), plain


def test_no_internal_labels_in_user_facing_files():
    files = user_facing_files()
    assert len(files) > 10 and all(f.exists() for f in files)
    found = {str(f.relative_to(ROOT)): labels_in(f.read_text(encoding="utf-8")) for f in files}
    assert not {k: v for k, v in found.items() if v}


def test_no_internal_labels_in_the_public_namespace():
    assert not [name for name in dir(trajloss) if LABEL.search(name)]
    assert all(trajloss.DOUBLE_INTEGRATOR_DEFAULTS[key] == value for key, value in
               dict(steps=15, dt=1 / 3, x0_low=(-10.0, -5.0), x0_high=(10.0, 5.0),
                    control_bound=8.0).items())


def test_no_internal_labels_in_what_the_cli_prints():
    report = trajloss.report
    text = report.render(report.compute(report.default_problem(), samples=50, seed=0))
    assert "trajloss report: double integrator" in text
    assert not labels_in(text)
    for args in (["--help"], ["report", "--help"], ["demo", "--help"], ["demo"]):
        proc = subprocess.run([sys.executable, "-m", "trajloss", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, (args, proc.stderr)
        assert not labels_in(proc.stdout + proc.stderr), args
