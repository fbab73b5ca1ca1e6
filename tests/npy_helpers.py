"""Forged .npy members for the tests of file validation (Dataset.load and the
report's --system .npz files)."""
import io

import numpy as np


def npy_member(array, shape=None):
    """The bytes of a .npy file holding ``array``, with a header claiming ``shape``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {
        "descr": np.lib.format.dtype_to_descr(array.dtype), "fortran_order": False,
        "shape": array.shape if shape is None else shape})
    return buf.getvalue() + array.tobytes()
