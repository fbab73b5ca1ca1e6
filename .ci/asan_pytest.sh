#!/usr/bin/env bash
# The pytest suite against a trajloss._core built with AddressSanitizer +
# UndefinedBehaviorSanitizer (gcc), so that the Python-level tests also check
# the C core and the extension module for memory errors and undefined behaviour
# (the tests whose time goes elsewhere, and whose calls into the core the others
# make, are left to the normal run: see "the tests" below).
#
#   .ci/asan_pytest.sh [extra pytest arguments]
#
# Needs the test extras in the active Python (the README's test command) and gcc.
# With ASAN_PYTEST_START_AFTER=FILE, only the build requirements are needed at
# the start: the script builds, then waits until FILE exists (see below).
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
if ! "$PYTHON" -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 77)'; then
    "$PYTHON" -m pip install --quiet "setuptools>=77"  # pyproject.toml's build requirement
fi
# -O1 (TRAJLOSS_OPT, setup.py; the module people run is -O3), the usual level
# for AddressSanitizer: instrumented at -O3 the big kernel files tile.c and
# tile_v3.c took 57 + 147 s of one core, at -O1 17 + 27 s (tile_v4.c, added
# since, 34 s), and the tests below run as fast (tile-heavy files, one core:
# 47.4 s at -O1, 48.1 s at -O3; their time goes to Python and ASan's
# allocator). -g1: line tables, all a sanitizer report's stack trace needs;
# full -g costs a quarter more compile time in the kernel files.
san="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
# -DTL_TILE_NO_V4: without the AVX-512 build of the kernels (51 s of one core
# here), so the tests run the AVX2 one, the same source for another target;
# the C tests under ASan + UBSan check the AVX-512 build directly.
TRAJLOSS_OPT=-O1 CC=gcc CFLAGS="-g1 -DTL_TILE_NO_V4 $san" LDFLAGS="$san" \
    "$PYTHON" setup.py --quiet build_ext --build-lib "$lib" --build-temp "$work/obj" \
    > "$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
cp src/trajloss/*.py src/trajloss/*.pyi src/trajloss/py.typed "$lib/trajloss/"
echo "asan_pytest: built in $((SECONDS - start)) s"

# The build needs only the build requirements; what follows imports the test
# dependencies. .ci/run starts this script while it is still installing them,
# and creates the file $ASAN_PYTEST_START_AFTER once they are in place.
if [ -n "${ASAN_PYTEST_START_AFTER:-}" ]; then
    while [ ! -e "$ASAN_PYTEST_START_AFTER" ]; do sleep 1; done
    echo "asan_pytest: the test dependencies are in place at $((SECONDS - start)) s"
fi

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
# What this run is for: memory errors and undefined behaviour in the C core and
# in the extension module (src/trajloss/_coremodule.c), reached from Python. It runs
# every test file except the ones listed below, and every test of the kept files
# except those deselected below. Nothing goes untested: .ci/run runs the whole
# suite, these included, with the normal build (the README's test command).
#
# Kept, because they call into _core with unusual inputs or unusual ways: errors
# and bad input of every kind (test_crashproof, test_validation,
# test_input_errors, test_loss_validation, test_masked_arrays, test_cli_errors),
# shapes, strides, layouts, dtypes, NaN, empty batches and padding
# (test_losses, test_rollout, test_padding, test_hypothesis_api,
# test_loss_properties, test_kernels' partial tiles), per-sample and
# time-varying systems (test_system_forms, test_systems, the kept tests of
# test_framework_forms and test_system_forms_frameworks), threads
# (test_threads' concurrent calls, test_num_threads), references and
# min_energy (test_references, test_min_energy_accuracy, test_robustness,
# test_datasets, test_calibration), expm (test_expm, test_systems), and the
# torch and JAX bindings' own calls (the kept tests of test_torch,
# test_torch_grads, test_jax_grads).
#
# Left to the normal run: tests whose time goes to torch.compile, JAX tracing,
# finite differences, notebooks, subprocesses or timing, and whose calls into
# _core are of kinds the kept tests make. Seconds: this run alone on 2 cores.
left_out=(
    # the notebooks (55 s): Jupyter kernels; their trajloss calls are ordinary
    # losses and references on valid arrays, made by the kept loss tests
    --ignore tests/test_notebooks.py
    # JAX under jit, grad and vmap (14 s): tracing; the host callbacks pass the
    # core contiguous arrays, as the kept tests of test_jax_grads.py and
    # test_system_forms_frameworks.py do (vmap's callbacks run one by one)
    --ignore tests/test_jax.py
    # the README's examples (8 s): ordinary calls; and a check of this CI's text
    --ignore tests/test_readme.py
    # DistributedDataParallel (7.5 s): two gloo processes whose loss calls are
    # test_torch.py's; timed against a deadline, flaky beside the other run
    --ignore tests/test_torch_distributed.py
    # the benchmark suite's smoke test (13 s normally, more here): torch.compile
    # and JAX tracing around calls the loss tests make
    --ignore tests/test_benchmarks.py
    # torch.compile (25 s): the meta-device calls never reach _core; the compiled
    # calls are the eager calls of test_torch_value_and_gradients (kept)
    --deselect tests/test_framework_forms.py::test_torch_meta_device_and_compile
    # gradcheck / gradgradcheck (20 s): finite differences repeat the same calls
    # hundreds of times; values and gradients of every form stay
    # (test_torch_value_and_gradients), second order too
    # (test_torch_hessian_vector_product_of_a_per_sample_system)
    --deselect tests/test_framework_forms.py::test_torch_gradcheck_and_gradgradcheck
    # gradcheck / gradgradcheck of every option combination (43 s): finite
    # differences of rollout_loss calls whose options (penalties, lengths,
    # masks, discounts, include_initial, weights, a default terminal target) the
    # NumPy API's tests pass to the same entry point (test_losses,
    # test_loss_properties, test_kernels, test_padding); the control and
    # terminal losses' gradchecks stay
    --deselect tests/test_torch_grads.py::test_combined_loss_every_argument
    --deselect tests/test_torch_grads.py::test_trajectory_loss_every_argument
    --deselect tests/test_torch_grads.py::test_combined_loss_default_terminal_target
    # torch.compile (22 s): the compiled graph's calls are the eager ones
    --deselect tests/test_torch.py::test_compile_fullgraph_matches_eager
    --deselect tests/test_torch.py::test_compile_fullgraph_reference_and_weight_gradients
    # 60 Adam steps of a float32 policy (4 s): the same combined_loss call 60
    # times; float32 through torch stays (test_torch_grads' float32 tests)
    --deselect tests/test_torch.py::test_training_step_decreases_the_loss
    # finite differences of the plain-Python reference (11 s): one core call a
    # case, the options of test_combined_loss_vs_reference and
    # test_trajectory_loss_vs_reference (kept), in both dtypes there
    --deselect tests/test_losses.py::test_combined_loss_grad_fd
    --deselect tests/test_losses.py::test_trajectory_loss_grad_fd
    # jax check_grads (22.5 s): finite differences around the value-and-gradient
    # calls of test_value_and_every_gradient_against_numpy (kept)
    --deselect tests/test_jax_grads.py::test_check_grads_both_modes
    # a 4-device mesh in a subprocess (9 s): each device's callback gets a
    # contiguous slice of the batch, as in test_shard_map_per_shard_losses (kept)
    --deselect tests/test_jax_grads.py::test_sharded_inputs
    # GIL release (22 s): a timing test; it grows the batch until a call takes
    # 1 s (hundreds of MB through the quarantine). Concurrent calls from four
    # threads stay (test_concurrent_calls_are_bit_identical_to_serial)
    --deselect tests/test_threads.py::test_gil_is_released_during_long_calls
    # reference counts and tracemalloc over 100 000 calls an entry point (11.5 s):
    # a leak check of the normal build, each call one the kept tests make
    --deselect tests/test_leaks.py::test_tracemalloc_stays_flat
    # Tests that would measure the sanitizer, not trajloss: RSS growth over
    # thousands of calls. Under ASan freed blocks wait in a 256 MiB quarantine
    # (that is how use-after-free is caught) and shadow memory grows with them,
    # so RSS grows by ~100 MiB whatever trajloss does ("RSS grew by 133.9 MiB";
    # "RSS grew 75.6 MB over 200 eager calls", 0.5 MB without ASan: JAX's caches
    # and the same quarantine). Leaks are covered by the normal run of the same
    # tests and by `make -C csrc test valgrind`.
    --deselect tests/test_rollout.py::test_rollout_memory_flat
    --deselect tests/test_leaks.py::test_rss_stays_flat
    --deselect tests/test_jax_grads.py::test_eager_calls_do_not_grow_memory
    --deselect tests/test_jax_grads.py::test_many_systems_do_not_grow_memory
    --deselect tests/test_jax_grads.py::test_many_per_sample_systems_do_not_grow_memory
    # the report's peak RSS for 300 000 samples, bounded at 300 MB (120 MB
    # normally): under ASan the shadow memory and the quarantine add their own
    # ("peak RSS 441 MB"); the chunking is checked by the normal run
    --deselect tests/test_report.py::test_peak_memory_does_not_grow_with_samples
    # It needs an RLIMIT_AS cap, which this run lifts (see the sitecustomize
    # above): under the cap min_energy's multi-GiB plan is a MemoryError naming
    # steps; without it the plan is made and the call runs.
    --deselect tests/test_min_energy_accuracy.py::test_memory_error_names_steps
    # Ctrl-C of a long from_continuous: 10-20 s of a 2048-state matrix
    # exponential under ASan for a test of timing, not memory. (Its sanitized
    # child once ran to the end: this run is a background job, whose children
    # inherit SIGINT ignored; the child now installs Python's handler itself.)
    # Its C path -- the cancel hook polled between products -- runs under ASan
    # in csrc/tests/test_trajloss.c (test_expm_cancel).
    --deselect tests/test_expm.py::test_ctrl_c_interrupts_from_continuous
)
# Its own temporary directories, so that it can run beside another pytest run
# (.ci/run runs it beside the README's): pytest's, and torch.compile's cache.
status=0
TORCHINDUCTOR_CACHE_DIR="$work/inductor" \
run_sanitized "$PYTHON" -m pytest -x -q -p no:cacheprovider --basetemp "$work/pytest" \
    "${left_out[@]}" "$@" || status=$?
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
