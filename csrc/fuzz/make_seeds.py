"""Write the seed corpus of fuzz_core, from a fixed generator -- rerunning
this script reproduces the seed-* and form-* files of fuzz/corpus/ exactly.
It leaves the others alone: repro-* (past findings) and cover-* (inputs built
by hand to reach a path random bytes rarely do, e.g. an ill-conditioned exact
reference).

  seed-OP-LEN  for each of fuzz_core's 20 entry-point selectors, inputs whose
               sizes are small and whose values are moderate (every byte < 200
               decodes so);
  form-OP-K    for each entry point that takes a system, inputs whose system
               is in one of the forms read_system/finish_system decode (A, B
               and the offset shared, per sample, per step or both; batch- or
               step-major storage; now and then malformed), the rest as above.

    python3 csrc/fuzz/make_seeds.py
"""
import pathlib
import random

OUT = pathlib.Path(__file__).resolve().parent / "corpus"
ENTRY_POINTS = 20     # LLVMFuzzerTestOneInput's switch
LENGTHS = (48, 700)   # a short input (mostly zeros past its end) and a longer one
# entry points whose input starts with a system (after these bytes)
SYSTEM_OPS = {2: b"", 3: b"", 4: b"", 5: b"", 6: b"", 7: b"", 11: b"", 12: b"", 13: b"",
              14: b"", 15: b"\x01"}  # 15: the references, method byte 1 = exact
FORMS_PER_OP = 6


def moderate(rng):
    """A double read_double decodes as moderate: selector < 216, 16-bit fraction."""
    return bytes([rng.randrange(0, 216, 4) + rng.choice((0, 3)),  # scale 1 or 1e-3
                  rng.randrange(256), rng.randrange(256)])


def system_prefix(rng, k):
    """n, m, Ad, Bd, then a flags byte >= 128 (forms follow) with bit 0 set
    (each A made non-expansive), the form byte and the layout byte."""
    n, m = 1 + rng.randrange(4), 1 + rng.randrange(3)
    body = bytes([n, m]) + b"".join(moderate(rng) for _ in range(n * n + n * m))
    form = (k % 4) | ((k // 2) % 4) << 2 | (k % 5) << 4        # offset absent for k % 5 == 4
    mode = 24 + rng.randrange(8) if k == FORMS_PER_OP - 1 else 0  # one malformed system
    layout = (k % 2) | (k % 3) << 1 | mode << 3
    return body + bytes([129, form, layout])


def main():
    OUT.mkdir(exist_ok=True)
    for old in list(OUT.glob("seed-*")) + list(OUT.glob("form-*")):
        old.unlink()
    rng = random.Random(20240601)
    for op in range(ENTRY_POINTS):
        for length in LENGTHS:
            body = bytes(rng.randrange(200) for _ in range(length))
            (OUT / f"seed-{op:02d}-{length}").write_bytes(bytes([op]) + body)
    rng = random.Random(20261206)
    for op, head in SYSTEM_OPS.items():
        for k in range(FORMS_PER_OP):
            rest = bytes(rng.randrange(200) for _ in range(600))
            (OUT / f"form-{op:02d}-{k}").write_bytes(bytes([op]) + head + system_prefix(rng, k)
                                                     + rest)


if __name__ == "__main__":
    main()
