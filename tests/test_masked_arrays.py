"""numpy.ma.MaskedArray inputs are refused, naming the argument: the core
reads an array's data, so a mask would otherwise be silently ignored (a loss
over the masked-out values). Other ndarray subclasses are read as arrays."""
import numpy as np
import pytest

import trajloss as tl


@pytest.fixture
def data():
    rng = np.random.default_rng(3)
    B, T = 3, 5
    return dict(
        system=tl.DoubleIntegrator(),
        x0=rng.standard_normal((B, 2)),
        u=rng.standard_normal((B, T, 1)),
        ru=rng.standard_normal((B, T, 1)),
        rx=rng.standard_normal((B, T + 1, 2)),
    )


def masked(a):
    m = np.zeros(np.shape(a), bool)
    m.flat[0] = True
    return np.ma.MaskedArray(a, mask=m)


CALLS = {
    "pred": lambda d, w: tl.control_loss(w(d["u"]), d["ru"]),
    "target": lambda d, w: tl.control_loss(d["u"], w(d["ru"])),
    "controls": lambda d, w: tl.trajectory_loss(d["system"], w(d["u"]), d["x0"], d["rx"]),
    "x0": lambda d, w: tl.rollout(d["system"], w(d["x0"]), d["u"]),
    "ref_states": lambda d, w: tl.combined_loss(d["system"], d["u"], d["x0"], d["ru"],
                                                w(d["rx"]), weight=0.5),
    "lengths": lambda d, w: tl.control_loss(d["u"], d["ru"], lengths=w(np.array([5, 3, 1]))),
    "mask": lambda d, w: tl.control_loss(d["u"], d["ru"], mask=w(np.ones((3, 5), bool))),
    "feature_weights": lambda d, w: tl.control_loss(d["u"], d["ru"], feature_weights=w(np.ones(1))),
    "Ad": lambda d, w: tl.LinearSystem(w(np.eye(2)), np.ones((2, 1))),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_masked_array_is_refused_naming_the_argument(data, name):
    with pytest.raises(TypeError, match=rf"^{name} is a numpy\.ma\.MaskedArray"):
        CALLS[name](data, masked)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_masked_array_with_nothing_masked_is_refused_too(data, name):
    """The refusal is by type, not by whether anything is masked: a mask
    that happens to be empty today is still one the core would not read."""
    with pytest.raises(TypeError, match="MaskedArray"):
        CALLS[name](data, lambda a: np.ma.MaskedArray(a))


class Tagged(np.ndarray):
    """A plain ndarray subclass with no mask of its own."""


def test_other_ndarray_subclasses_are_read_as_arrays(data):
    sub = data["u"].view(Tagged)
    res = tl.control_loss(sub, data["ru"])
    r = data["u"] - data["ru"]
    np.testing.assert_allclose(res.value, np.mean(r ** 2), rtol=1e-14)
    np.testing.assert_allclose(res.grad, 2 * r / r.size, rtol=1e-14)
