"""Make the LAPACK provider's shared library visible before ``_core`` loads.

The extension links against ``libscipy_openblas.so`` from the scipy-openblas32
wheel. An installed wheel finds it through its rpath (``$ORIGIN/../scipy_openblas32/lib``);
an editable install or an unusual layout may not, so we import the wheel's
package, which loads the library globally. The dynamic loader then resolves
``_core``'s dependency by soname to the copy already in the process.
"""
import importlib.util

if importlib.util.find_spec("scipy_openblas32") is not None:
    import scipy_openblas32  # noqa: F401  (imported for its side effect)
