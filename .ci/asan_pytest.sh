#!/usr/bin/env bash
# The pytest suite against a trajloss._core built with AddressSanitizer +
# UndefinedBehaviorSanitizer (gcc), so that every Python-level test also checks
# the C core and the extension module for memory errors and undefined behaviour.
#
#   .ci/asan_pytest.sh [extra pytest arguments]
#
# Needs the test extras in the active Python (the README's test command) and gcc.
# The sanitized build goes to a temporary directory that is put first on
# sys.path (PYTHONPATH + PYTHONSAFEPATH, which also reach the subprocesses the
# tests start); the normal install and the source tree are left alone. Fails on
# a test failure and on any sanitizer report, in pytest or in any subprocess.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
start=$SECONDS

work=$(mktemp -d "${TMPDIR:-/tmp}/trajloss-asan.XXXXXX")
trap 'rm -rf "$work"' EXIT
lib="$work/lib" logs="$work/logs"
mkdir -p "$lib" "$logs"

# ---- build ------------------------------------------------------------------
# setup.py is the one description of the extension; setuptools adds CFLAGS
# and LDFLAGS from the environment to every compile and link.
if ! "$PYTHON" -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 68)'; then
    "$PYTHON" -m pip install --quiet "setuptools>=68"  # pyproject.toml's build requirement
fi
san="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
CC=gcc CFLAGS="-g $san" LDFLAGS="$san" \
    "$PYTHON" setup.py --quiet build_ext --build-lib "$lib" --build-temp "$work/obj" \
    > "$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
cp trajloss/*.py trajloss/*.pyi trajloss/py.typed "$lib/trajloss/"

# ASan reserves terabytes of address space for its shadow memory, so an
# RLIMIT_AS cap (tests/test_crashproof.py's child sets 8 GiB, so that a huge
# allocation is a MemoryError rather than swapping) makes every later mmap
# fail ("ERROR: Failed to mmap", SIGABRT). Every Python process of this run
# imports this sitecustomize from $lib: it ignores RLIMIT_AS caps, and ASan's
# max_allocation_size_mb (below) gives any single allocation over 8 GiB the
# MemoryError the cap is there for.
cat > "$lib/sitecustomize.py" <<'PY'
"""Loaded by every Python process of .ci/asan_pytest.sh: no RLIMIT_AS under ASan."""
import resource

_setrlimit = resource.setrlimit


def setrlimit(which, limits):
    if which != resource.RLIMIT_AS:
        _setrlimit(which, limits)


resource.setrlimit = setrlimit
PY

# ---- the sanitizer environment ------------------------------------------------
# The ASan runtime must be the first library in the process: preload it into
# the (uninstrumented) interpreter. libstdc++ too: Python does not link it, and
# when it is loaded later (torch, jaxlib) ASan's __cxa_throw interceptor finds no
# real function and aborts on the first C++ exception ("CHECK failed:
# asan_interceptors.cpp ... real___cxa_throw").
# ASan options: no leak check (CPython, torch and jax keep memory until exit by
# design; leaks are tested by `make -C csrc valgrind` and tests/test_memory.py);
# malloc may return NULL (and does above 8 GiB), so an absurd allocation is
# numpy's MemoryError rather than an ASan abort. Every report goes to $logs, which is checked below, so a
# report in a subprocess whose exit status a test ignores still fails the run.
preload="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so.6)"
run_sanitized() {
    LD_PRELOAD="$preload" \
    ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:max_allocation_size_mb=8192:abort_on_error=1:log_path=$logs/asan" \
    UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$logs/ubsan" \
    OPENBLAS_NUM_THREADS=1 PYTHONPATH="$lib" PYTHONSAFEPATH=1 PYTHONFAULTHANDLER=1 \
        "$@"
}

# The run must import the sanitized build ...
run_sanitized "$PYTHON" -c "
import trajloss._core as core, sys
sys.exit(0 if core.__file__.startswith('$lib/') else 'trajloss._core is ' + core.__file__)"
# ... and a sanitizer report must be seen: a canary heap overflow through ctypes.
printf '#include <stdlib.h>\nint canary(int i) { int *p = malloc(4 * sizeof *p); int v = p[i]; free(p); return v; }\n' \
    > "$work/canary.c"
gcc -shared -fPIC $san -o "$work/canary.so" "$work/canary.c"
if run_sanitized "$PYTHON" -c "import ctypes; ctypes.CDLL('$work/canary.so').canary(4)" 2>/dev/null ||
   ! grep -qs "heap-buffer-overflow" "$logs"/asan.*; then
    echo "asan_pytest: the canary overflow was not reported; the sanitizer setup is broken" >&2
    exit 1
fi
rm -f "$logs"/*

# ---- the tests ------------------------------------------------------------------
# Deselected (everything else runs, test_memory.py and the notebooks included):
# two tests that bound the growth of RSS over thousands of calls. Under ASan
# freed blocks wait in a 256 MiB quarantine (that is how use-after-free is
# caught) and shadow memory grows with them, so RSS grows by ~100 MiB whatever
# trajloss does: the tests would measure the sanitizer. Leaks are covered by
# the normal run of the same tests and by `make -C csrc valgrind`.
#  - tests/test_rollout.py::test_rollout_memory_flat ("RSS grew by 133.9 MiB")
#  - tests/test_leaks.py::test_rss_stays_flat
#  - tests/test_jax_grads.py::test_eager_calls_do_not_grow_memory,
#    test_many_systems_do_not_grow_memory and
#    test_many_per_sample_systems_do_not_grow_memory ("RSS grew 75.6 MB over 200 eager
#    calls", 0.5 MB without ASan): JAX's caches, the same quarantine
# and one test that needs an RLIMIT_AS cap, which this run lifts (see the
# sitecustomize above): under the cap min_energy's multi-GiB plan is a
# MemoryError naming steps; without it the plan is made and the call runs.
#  - tests/test_min_energy_accuracy.py::test_memory_error_names_steps
# The Ctrl-C test of a long from_continuous is left to the normal run too: it
# times a signal against a subprocess, and beside the README command's pytest
# run (.ci/run runs both at once) a sanitized child once finished its 5.7 s of
# work before the signal was seen (it passes alone under ASan: interrupted
# after 0.9 s). Its C path -- the cancel hook polled between products -- runs
# under ASan in csrc/tests/test_trajloss.c (test_expm_cancel).
#  - tests/test_expm.py::test_ctrl_c_interrupts_from_continuous
# The benchmark suite's smoke test is left to the normal run as well: it calls
# trajloss only as the loss tests do, and its time (13 s in the normal run,
# more here) goes to torch.compile and JAX tracing; CI was at 908 s of its
# 15-minute budget with it.
#  - tests/test_benchmarks.py
# Its own temporary directories, so that it can run beside another pytest run
# (.ci/run runs it beside the README's): pytest's, and torch.compile's cache.
status=0
TORCHINDUCTOR_CACHE_DIR="$work/inductor" \
run_sanitized "$PYTHON" -m pytest -x -q -p no:cacheprovider --basetemp "$work/pytest" \
    --deselect tests/test_rollout.py::test_rollout_memory_flat \
    --deselect tests/test_leaks.py::test_rss_stays_flat \
    --deselect tests/test_jax_grads.py::test_eager_calls_do_not_grow_memory \
    --deselect tests/test_jax_grads.py::test_many_systems_do_not_grow_memory \
    --deselect tests/test_jax_grads.py::test_many_per_sample_systems_do_not_grow_memory \
    --deselect tests/test_min_energy_accuracy.py::test_memory_error_names_steps \
    --deselect "tests/test_expm.py::test_ctrl_c_interrupts_from_continuous" \
    --ignore tests/test_benchmarks.py "$@" || status=$?
# Every file in $logs is a sanitizer report, except those that only hold the
# warning ASan prints when allocator_may_return_null turns an absurd allocation
# into NULL (the MemoryError tests).
benign='^(==[0-9]+==WARNING: AddressSanitizer failed to allocate 0x[0-9a-f]+ bytes)?$'
for f in "$logs"/*; do
    [ -e "$f" ] || continue
    if grep -qvE "$benign" "$f"; then
        echo "asan_pytest: sanitizer report $f:" >&2
        cat "$f" >&2
        status=1
    fi
done
echo "asan_pytest: finished in $((SECONDS - start)) s (status $status)"
exit $status
