"""Type stub for trajloss._core, the C extension (see trajloss/_coremodule.c)."""
from typing import Tuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

CORE_VERSION: str
LAPACK_PROVIDER: str
MAX_DIM: int

def expm(A: ArrayLike, /) -> NDArray[np.float64]:
    """Matrix exponential of a square matrix, (n, n) -> (n, n) float64."""

def discretize(
    A: ArrayLike, B: ArrayLike, dt: float, method: str = "zoh"
) -> Tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(A (n, n), B (n, m), dt > 0, 'zoh' | 'euler' | 'rk4') -> (Ad (n, n), Bd (n, m))."""

def check_system(
    Ad: ArrayLike, Bd: ArrayLike, sq_name: str = "Ad", in_name: str = "Bd", /
) -> Tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Validated float64 C-contiguous copies of an (n, n) and an (n, m) matrix."""

def rollout(
    Ad: NDArray[np.float64],
    Bd: NDArray[np.float64],
    x0: ArrayLike,
    controls: ArrayLike,
    check_finite: bool = True,
) -> NDArray[np.floating]:
    """x0 (B, n) | (n,), controls (B, T, m) | (T, m) -> states (B, T+1, n) | (T+1, n)."""

def rollout_vjp(
    Ad: NDArray[np.float64],
    Bd: NDArray[np.float64],
    x0: ArrayLike,
    controls: ArrayLike,
    grad_states: ArrayLike,
    check_finite: bool = True,
) -> Tuple[NDArray[np.floating], NDArray[np.floating]]:
    """grad_states (B, T+1, n) -> (grad_controls (B, T, m), grad_x0 (B, n))."""
