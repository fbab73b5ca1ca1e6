"""Type stub for trajloss._core, the C extension (see src/trajloss/_coremodule.c)."""
from typing import Any, Optional, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike, NDArray

CORE_VERSION: str
LAPACK_PROVIDER: str
MAX_DIM: int
TERM_CONTROL: int
TERM_TRAJECTORY: int
TERM_TERMINAL: int
XLA_FFI_OPTIONS: int
XLA_FFI_API_MINOR: int

def expm(A: ArrayLike, /) -> NDArray[np.float64]:
    """Matrix exponential of a square matrix, (n, n) -> (n, n) float64."""

def discretize(
    A: ArrayLike, B: ArrayLike, dt: float, method: str = "zoh"
) -> Tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(A (n, n), B (n, m), dt > 0, 'zoh' | 'euler' | 'rk4') -> (Ad (n, n), Bd (n, m))."""

# A system is the tuple trajloss system objects keep as ``system._core``:
# (Ad, Bd, offset, time_varying) -- float64 arrays, offset None or an array.
#   time_varying False: Ad (n, n) | (B, n, n), Bd (n, m) | (B, n, m), offset (n,) | (B, n)
#   time_varying True:  Ad (T, n, n) | (B, T, n, n), Bd (T, n, m) | (B, T, n, m),
#                       offset (T, n) | (B, T, n)
# each independently shared by the batch or per sample (B = the data's batch size).
SystemTuple = Tuple[NDArray[np.float64], NDArray[np.float64], Optional[NDArray[np.float64]], bool]

def rollout(
    system: SystemTuple, x0: ArrayLike, controls: ArrayLike, *, check_finite: bool = True
) -> NDArray[np.floating]:
    """x0 (B, n) | (n,), controls (B, T, m) | (T, m) -> states (B, T+1, n) | (T+1, n)."""

def rollout_vjp(
    system: SystemTuple,
    x0: ArrayLike,
    controls: ArrayLike,
    grad_states: ArrayLike,
    *,
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
    *,
    discount: Optional[float] = None,
    lengths: Optional[ArrayLike] = None,
    mask: Optional[ArrayLike] = None,
    penalty: str = "mse",
    delta: float = 1.0,
    kernel: str = "auto",
    feature_weights: Optional[ArrayLike] = None,
    check_finite: bool = True,
    want_grad: bool = True,
) -> Union[float, Tuple[float, NDArray[np.floating]]]:
    """pred, target (B, T, D) | (T, D) -> (value, grad) with grad shaped like pred, or value
    when not want_grad. kernel: "auto" | "reference" (for tests)."""

def rollout_loss(
    system: SystemTuple,
    controls: ArrayLike,
    x0: ArrayLike,
    ref_controls: Optional[ArrayLike] = None,
    ref_states: Optional[ArrayLike] = None,
    target: Optional[ArrayLike] = None,
    *,
    terms: int,
    control_weight: float = 0.0,
    trajectory_weight: float = 0.0,
    terminal_weight: float = 0.0,
    include_initial: bool = False,
    discount: Optional[float] = None,
    lengths: Optional[ArrayLike] = None,
    mask: Optional[ArrayLike] = None,
    penalty: str = "mse",
    delta: float = 1.0,
    kernel: str = "auto",
    feature_weights: Optional[ArrayLike] = None,
    state_weights: Optional[ArrayLike] = None,
    check_finite: bool = True,
    target_name: str = "target",
) -> Tuple[float, float, float, float, NDArray[np.floating], NDArray[np.floating]]:
    """terms: TERM_* bit flags; a None reference: that term's reference absent.
    -> (total, control, trajectory, terminal, grad_controls (B, T, m), grad_x0 (B, n)).
    target_name: what errors call ``target``. kernel: "auto" | "reference" (for tests)."""

def combined_loss(
    system: SystemTuple,
    controls: ArrayLike,
    x0: ArrayLike,
    ref_controls: ArrayLike,
    ref_states: ArrayLike,
    terminal_target: Optional[ArrayLike] = None,
    *,
    weight: float,
    terminal_weight: float = 0.0,
    include_initial: bool = False,
    discount: Optional[float] = None,
    lengths: Optional[ArrayLike] = None,
    mask: Optional[ArrayLike] = None,
    penalty: str = "mse",
    delta: float = 1.0,
    kernel: str = "auto",
    feature_weights: Optional[ArrayLike] = None,
    state_weights: Optional[ArrayLike] = None,
    check_finite: bool = True,
) -> Any:
    """All three terms (the control one at weight 1) -> LossResult(total, grad_controls,
    grad_x0, LossComponents(control, trajectory, terminal, weight, terminal_weight, total)) of
    the classes set_result_types registered."""

def set_result_types(result: type, components: type, /) -> None:
    """The named tuples combined_loss builds (trajloss.losses sets them)."""

COND_LIMIT: float

def min_energy(
    system: SystemTuple,
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
    system: SystemTuple,
    controls: ArrayLike,
    x0: ArrayLike,
    xf: ArrayLike,
    *,
    lengths: Optional[ArrayLike] = None,
    check_finite: bool = True,
) -> NDArray[np.floating]:
    """xf of x0's shape -> (B,) distances of each final valid state to xf (0-d when unbatched)."""

def set_num_threads(k: int, /) -> None:
    """Worker threads the losses use over the batch (1 .. 256)."""

def get_num_threads() -> int: ...

def xla_ffi_targets() -> dict[str, Any]:
    """The XLA FFI handlers of trajloss.jax, name -> PyCapsule, for
    jax.ffi.register_ffi_target(name, capsule, platform='cpu')."""
