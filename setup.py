"""Build trajloss._core from csrc/ (the C core) and src/trajloss/_coremodule.c.

The package lives in src/trajloss (pyproject.toml: package-dir); an in-place
build (``python setup.py build_ext --inplace``) puts the module there too.

LAPACK provider, chosen with the environment variable TRAJLOSS_LAPACK:
  unset / "scipy-openblas32"  the scipy-openblas32 wheel (a build and runtime
                              dependency); its symbols carry a scipy_ prefix,
                              mapped in csrc/tl_lapack.h.
  "system"                    the system LAPACKE found by pkg-config (lapacke).

Optimization level: TRAJLOSS_OPT (default -O3), for builds of a checker, not
of the module people run: .ci/asan_pytest.sh builds with TRAJLOSS_OPT=-O1.
Changing it does not make an up-to-date build stale (the sanitized build goes
to a directory of its own, beside an editable install that must not rebuild).
"""
import concurrent.futures
import os
import re
import shlex
import shutil
import subprocess

import numpy
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

try:
    from setuptools.modified import newer_group
except ImportError:  # setuptools < 69
    from distutils.dep_util import newer_group

CORE_SOURCES = ["status.c", "finite.c", "parallel.c", "dense.c", "expm.c", "discretize.c",
                "dynamics.c", "rollout.c", "weights.c", "loss.c", "tile.c", "tile_v3.c",
                "tile_v4.c", "reference.c"]


def lapack_options():
    provider = os.environ.get("TRAJLOSS_LAPACK", "scipy-openblas32")
    if provider == "system":
        # the matrix exponential's products call cblas_dgemm: OpenBLAS's
        # lapacke brings it, a reference LAPACK setup links cblas beside it
        modules = ["lapacke"]
        if subprocess.run(["pkg-config", "--exists", "cblas"]).returncode == 0:
            modules.append("cblas")

        def pkg(flag):
            out = subprocess.run(["pkg-config", flag, *modules], check=True,
                                 capture_output=True, text=True).stdout
            return shlex.split(out)
        cflags, libs = pkg("--cflags"), pkg("--libs")
        return provider, cflags, libs, []
    if provider != "scipy-openblas32":
        raise SystemExit(f"TRAJLOSS_LAPACK must be 'scipy-openblas32' or 'system', got {provider!r}")
    import scipy_openblas32

    libs = [f"-L{scipy_openblas32.get_lib_dir()}", f"-l{scipy_openblas32.get_library()}",
            # An installed wheel finds the library beside it in site-packages;
            # src/trajloss/_lapack.py also preloads it (editable installs).
            "-Wl,-rpath,$ORIGIN/../scipy_openblas32/lib"]
    return provider, ["-DTL_LAPACK_SCIPY_OPENBLAS"], libs, []


provider, lapack_cflags, lapack_libs, _ = lapack_options()


def provider_stamp(name):
    """A file that changes only when the LAPACK provider does: listed among
    the extension's dependencies, so switching TRAJLOSS_LAPACK rebuilds, and
    an unchanged tree is not rebuilt (setuptools compares timestamps)."""
    path = os.path.join("build", "lapack-provider.txt")
    os.makedirs("build", exist_ok=True)
    try:
        with open(path) as f:
            if f.read() == name:
                return path
    except OSError:
        pass
    with open(path, "w") as f:
        f.write(name)
    return path


# -O3 by default. The ASan + UBSan build of .ci/asan_pytest.sh takes -O1, the
# usual level for AddressSanitizer: instrumented at -O3 the tile kernel files
# (tile.c, tile_v3.c: every kernel version inlined and unrolled) took 205 s of
# one core, at -O1 44 s (tile_v4.c, added since, another 34 s; with the
# uniform version compiled per system size, the three take 27 + 55 + 51 s
# at -O1 with ASan + UBSan), and the
# sanitized pytest run is as fast (its time goes to Python and to ASan's
# allocator, not to the kernels). Given after CFLAGS, so it is the level that
# counts.
OPT = os.environ.get("TRAJLOSS_OPT", "-O3")
if not re.fullmatch(r"-O[0-3sgz]?|-Ofast", OPT):
    raise SystemExit(f"TRAJLOSS_OPT must be an optimization flag such as -O1 or -O3, got {OPT!r}")

HEADERS = sorted(os.path.join("csrc", f) for f in os.listdir("csrc") if f.endswith(".h"))

# The extension: the Python module (_coremodule.c), the XLA FFI handlers of
# trajloss.jax (xla_ffi.c, plain C against the few structs of XLA's FFI C ABI
# that _xla_ffi_abi.h declares, so that nothing of jax is needed to build),
# and the C core.
PACKAGE_SOURCES = ["src/trajloss/_coremodule.c", "src/trajloss/xla_ffi.c"]
PACKAGE_HEADERS = ["src/trajloss/xla_ffi.h", "src/trajloss/_xla_ffi_abi.h"]

core = Extension(
    "trajloss._core",
    sources=PACKAGE_SOURCES + [f"csrc/{s}" for s in CORE_SOURCES],
    depends=HEADERS + PACKAGE_HEADERS + [provider_stamp(provider)],
    include_dirs=["csrc", "src/trajloss", numpy.get_include()],
    define_macros=[("TL_LAPACK_PROVIDER", f'"{provider}"')],
    extra_compile_args=["-std=c11", OPT, "-fvisibility=hidden", "-Wall", "-Wextra",
                        "-Wno-missing-field-initializers"] + lapack_cflags,
    extra_link_args=lapack_libs + ["-lm", "-pthread"],
)

# The three builds of the tile kernel (tile.c, and tile_v3.c and tile_v4.c,
# which include it for other instruction sets) take 10-15 s each at -O3, all
# the other sources together 5 s: they start first, so that no core is left
# with one of them at the end.
HEAVY = ("tile_v3.c", "tile_v4.c", "tile.c")


def compile_order(source):
    name = os.path.basename(source)
    return (HEAVY.index(name) if name in HEAVY else len(HEAVY), -os.path.getsize(source))


def parallel_compile(compiler, jobs):
    """compiler.compile, its sources compiled `jobs` at a time. setuptools
    builds the extensions of a package in parallel (--parallel) but compiles
    the sources of one extension one after the other, and _core is one
    extension: 61 s on a 2-core machine, 38 s two at a time (45 and 21 s
    before the uniform version was compiled per system size). This
    is CCompiler.compile (setuptools/_distutils/ccompiler.py) with its loop
    over the objects run by threads (each waits on a compiler process), the
    longest first (compile_order)."""
    serial = compiler.compile

    def compile(sources, output_dir=None, macros=None, include_dirs=None, debug=False,
                extra_preargs=None, extra_postargs=None, depends=None):
        if jobs < 2 or not all(hasattr(compiler, f) for f in
                               ("_setup_compile", "_get_cc_args", "_compile")):
            return serial(sources, output_dir, macros, include_dirs, debug, extra_preargs,
                          extra_postargs, depends)
        macros, objects, extra_postargs, pp_opts, build = compiler._setup_compile(
            output_dir, macros, include_dirs, sources, depends, extra_postargs)
        cc_args = compiler._get_cc_args(pp_opts, debug, extra_preargs)
        todo = sorted((obj for obj in objects if obj in build),
                      key=lambda obj: compile_order(build[obj][0]))

        def one(obj):
            src, ext = build[obj]
            compiler._compile(obj, src, ext, cc_args, extra_postargs, pp_opts)

        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            list(pool.map(one, todo))  # re-raises a CompileError
        return objects

    return compile


class parallel_build_ext(build_ext):
    """Compile the sources in parallel, one job a CPU (unless --parallel says
    otherwise): parallel_compile. Nothing is forced: an extension newer than
    its sources and headers (and the LAPACK provider stamp) is not rebuilt.

    An editable install (``pip install -e .``) builds into a fresh temporary
    directory every time, where setuptools' timestamp check always finds
    nothing; the module it then copies into the source tree is what counts.
    So when that copy is up to date it is reused instead of recompiled."""

    def finalize_options(self):
        super().finalize_options()
        if not self.parallel:
            self.parallel = True

    def in_tree_path(self, ext):
        """Where an in-place build and an editable install put the module:
        in the package's source folder (src/trajloss, from package-dir)."""
        package = ext.name.rpartition(".")[0]
        package_dir = self.get_finalized_command("build_py").get_package_dir(package)
        return os.path.join(os.path.dirname(os.path.abspath(__file__)), package_dir,
                            os.path.basename(self.get_ext_filename(ext.name)))

    def build_extensions(self):
        jobs = (os.cpu_count() or 1) if self.parallel is True else int(self.parallel)
        self.compiler.compile = parallel_compile(self.compiler, jobs)
        # one extension: nothing for setuptools' own parallel loop to share out
        self.parallel = False
        super().build_extensions()

    def build_extension(self, ext):
        in_tree = self.in_tree_path(ext)
        target = self.get_ext_fullpath(ext.name)
        if (getattr(self, "editable_mode", False) and os.path.exists(in_tree)
                and os.path.abspath(target) != in_tree
                and not newer_group(list(ext.sources) + list(ext.depends), in_tree, "newer")):
            print(f"trajloss: {os.path.relpath(in_tree)} is up to date, not rebuilt")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(in_tree, target)
            return
        super().build_extension(ext)


setup(ext_modules=[core], cmdclass={"build_ext": parallel_build_ext})
