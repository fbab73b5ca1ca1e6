"""pyproject.toml states the license the way current setuptools wants it, so
building or installing trajloss prints no deprecation warning about it."""
import pathlib
import re
import subprocess
import sys

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# An SPDX license expression: identifiers joined by AND / OR / WITH, maybe in parentheses.
SPDX_EXPRESSION = re.compile(r"^[A-Za-z0-9.+\-() ]+$")


def _setuptools_floor():
    """The lowest setuptools version the build requirements allow, as a tuple."""
    for requirement in PYPROJECT["build-system"]["requires"]:
        match = re.fullmatch(r"setuptools\s*>=\s*([0-9][0-9.]*)", requirement.strip())
        if match:
            return tuple(int(part) for part in match.group(1).split("."))
    raise AssertionError("build-system.requires has no 'setuptools>=X' requirement: "
                         f"{PYPROJECT['build-system']['requires']}")


def test_license_is_a_plain_spdx_string():
    license_ = PYPROJECT["project"]["license"]
    # the {text = ...} / {file = ...} tables are what setuptools deprecates
    assert isinstance(license_, str), f"project.license is {license_!r}, not a string"
    assert license_ == "BSD-3-Clause"
    assert SPDX_EXPRESSION.match(license_)


def test_no_license_classifier_beside_the_spdx_license():
    # setuptools refuses "License ::" classifiers together with an SPDX license
    classifiers = PYPROJECT["project"].get("classifiers", [])
    assert not [c for c in classifiers if c.startswith("License ::")]


def test_license_files_exist():
    for pattern in PYPROJECT["project"].get("license-files", []):
        assert list(ROOT.glob(pattern)), f"license-files pattern {pattern!r} matches nothing"


def test_setuptools_floor_supports_spdx_license():
    # the SPDX string form of project.license needs setuptools 77 or newer
    assert _setuptools_floor() >= (77,)


def test_ci_installs_the_same_setuptools_floor():
    # the sanitizer build installs setuptools itself when the one present is too old
    script = (ROOT / ".ci" / "asan_pytest.sh").read_text(encoding="utf-8")
    floor = _setuptools_floor()[0]
    assert f'"setuptools>={floor}"' in script
    assert f"< {floor})" in script


def test_metadata_build_prints_no_license_warning(tmp_path):
    """What pip runs first on ``pip install``: the license reaches the metadata
    as a License-Expression, and setuptools warns about nothing license-related."""
    code = ("import sys\n"
            "from setuptools import build_meta\n"
            "print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))\n")
    result = subprocess.run([sys.executable, "-W", "always", "-c", code, str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "SetuptoolsDeprecationWarning" not in output
    assert not re.search(r"project\.license.*deprecated", output)
    dist_info = tmp_path / result.stdout.strip().splitlines()[-1]
    metadata = (dist_info / "METADATA").read_text(encoding="utf-8")
    assert "License-Expression: BSD-3-Clause" in metadata.splitlines()


def test_notebooks_extra_brings_jupyter_and_the_readme_says_how():
    """The notebooks can be opened from the README's instructions: the
    ``notebooks`` extra installs a Jupyter front end, matplotlib and torch
    (notebooks 03 and 04 import it), and the README gives the commands."""
    extras = PYPROJECT["project"]["optional-dependencies"]
    names = {re.split(r"[<>=\[ ]", r, maxsplit=1)[0].lower() for r in extras["notebooks"]}
    assert "jupyterlab" in names
    assert "matplotlib" in names
    torch_via_extra = any(r.replace(" ", "").startswith("trajloss[") and "torch" in r
                          for r in extras["notebooks"])
    assert "torch" in names or torch_via_extra
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert 'pip install -e ".[notebooks]"' in readme
    assert "jupyter lab notebooks/" in readme
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        imports = set(re.findall(r"import (\w+)", nb.read_text(encoding="utf-8")))
        if "torch" in imports:
            assert "torch" in names or torch_via_extra, nb.name
