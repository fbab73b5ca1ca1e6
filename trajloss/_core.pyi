"""Type stub for trajloss._core, the C extension (see trajloss/_coremodule.c)."""
from typing import Any, Optional, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike, NDArray

CORE_VERSION: str
LAPACK_PROVIDER: str
MAX_DIM: int
TERM_CONTROL: int
TERM_TRAJECTORY: int
TERM_TERMINAL: int

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

def time_weights(
    T: int, discount: Optional[float], lengths: Optional[ArrayLike], mask: Optional[ArrayLike], /
) -> NDArray[np.float64]:
    """Length-agnostic geometric weights, (B, T) or (T,)."""

def control_loss(
    pred: ArrayLike,
    target: ArrayLike,
    discount: Optional[float],
    lengths: Optional[ArrayLike],
    mask: Optional[ArrayLike],
    penalty: str,
    delta: float,
    feature_weights: Optional[ArrayLike],
    check_finite: bool,
    want_grad: bool,
    /,
) -> Union[float, Tuple[float, NDArray[np.floating]]]:
    """pred, target (B, T, D) | (T, D) -> value, or (value, grad) with grad shaped like pred."""

def rollout_loss(
    Ad: NDArray[np.float64],
    Bd: NDArray[np.float64],
    controls: ArrayLike,
    x0: ArrayLike,
    ref_controls: Optional[ArrayLike],
    ref_states: Optional[ArrayLike],
    target: Optional[ArrayLike],
    terms: int,
    control_weight: float,
    trajectory_weight: float,
    terminal_weight: float,
    include_initial: bool,
    discount: Optional[float],
    lengths: Optional[ArrayLike],
    mask: Optional[ArrayLike],
    penalty: str,
    delta: float,
    feature_weights: Optional[ArrayLike],
    state_weights: Optional[ArrayLike],
    check_finite: bool,
    target_name: str = "target",
    combined: bool = False,
    /,
) -> Union[Tuple[float, float, float, float, NDArray[np.floating], NDArray[np.floating]], Any]:
    """-> (total, control, trajectory, terminal, grad_controls (B, T, m), grad_x0 (B, n));
    with ``combined``, a LossResult(total, grad_controls, grad_x0, LossComponents(control,
    trajectory, terminal, trajectory_weight, terminal_weight, total)) of the classes
    set_result_types registered."""

def set_result_types(result: type, components: type, /) -> None:
    """The named tuples rollout_loss(..., combined=True) builds (trajloss.losses sets them)."""

COND_LIMIT: float

def min_energy(
    Ad: ArrayLike,
    Bd: ArrayLike,
    A: Optional[ArrayLike],
    B: Optional[ArrayLike],
    dt: float,
    x0: ArrayLike,
    xf: ArrayLike,
    steps: int,
    method: str,
    /,
) -> Tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], float]:
    """-> (controls (B, T, m), states (B, T+1, n), final_error (B,), energy (B,), cond)."""

def min_energy_law(
    A: ArrayLike, B: ArrayLike, horizon: float, x0: ArrayLike, xf: ArrayLike, t: ArrayLike, /
) -> Tuple[NDArray[np.float64], NDArray[np.float64]]:
    """-> (u (B, len(t), m), x (B, len(t), n)) of the continuous minimum-energy law."""

def final_state_error(
    Ad: ArrayLike, Bd: ArrayLike, controls: ArrayLike, x0: ArrayLike, xf: ArrayLike,
    lengths: Optional[ArrayLike], check_finite: bool, /,
) -> NDArray[np.floating]:
    """-> (B,) distances of each final valid state to xf (0-d when unbatched)."""

def set_num_threads(k: int, /) -> None:
    """Worker threads the losses use over the batch (1 .. 256)."""

def get_num_threads() -> int: ...
