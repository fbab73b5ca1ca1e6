"""Write the seed corpus of fuzz_core: for each of its 20 entry-point
selectors, a few inputs whose sizes are small and whose values are moderate
(every byte < 200 decodes so), from a fixed generator -- rerunning this
script reproduces the seed-* files of fuzz/corpus/ exactly. It leaves the
others alone: repro-* (past findings) and cover-* (inputs built by hand to
reach a path random bytes rarely do, e.g. an ill-conditioned exact reference).

    python3 csrc/fuzz/make_seeds.py
"""
import pathlib
import random

OUT = pathlib.Path(__file__).resolve().parent / "corpus"
ENTRY_POINTS = 20     # LLVMFuzzerTestOneInput's switch
LENGTHS = (48, 700)   # a short input (mostly zeros past its end) and a longer one


def main():
    OUT.mkdir(exist_ok=True)
    for old in OUT.glob("seed-*"):
        old.unlink()
    rng = random.Random(20240601)
    for op in range(ENTRY_POINTS):
        for length in LENGTHS:
            body = bytes(rng.randrange(200) for _ in range(length))
            (OUT / f"seed-{op:02d}-{length}").write_bytes(bytes([op]) + body)


if __name__ == "__main__":
    main()
