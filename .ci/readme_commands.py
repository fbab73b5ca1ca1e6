"""Print one of the README's two set-up commands: `install` (line 1) or `test` (line 2).

They are the first fenced code block of README.md. .ci/run runs the `test`
one exactly as written, and tests/test_readme.py checks the block's form.
"""
import pathlib
import re
import sys

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def commands(text: str) -> list:
    block = re.search(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M)
    if block is None:
        raise SystemExit("README.md has no code block")
    return [line for line in block.group(1).splitlines() if line.strip()]


if __name__ == "__main__":
    which = {"install": 0, "test": 1}[sys.argv[1]]
    print(commands(README.read_text(encoding="utf-8"))[which])
