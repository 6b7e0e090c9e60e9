"""Type stubs of the Rust extension module ``lorax_core._core``.

Checked against the compiled module by ``python -m mypy.stubtest lorax_core._core``. Results
cross the boundary as small classes with named fields; integer arguments that are negative or
too large raise ``ValueError`` naming the argument, non-integers ``TypeError``.
"""

from collections.abc import Iterator
from typing import Any, Final, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "Allocation",
    "EstimateOptions",
    "IdEstimate",
    "MleOptions",
    "ModulePlan",
    "Neighbours",
    "NystromFactors",
    "RankAllocator",
    "ScheduleOptions",
    "TwoNNOptions",
    "__version__",
    "_importance_update_f32",
    "_move_slots_f32",
    "adalora_budget",
    "elalora_budget",
    "estimate_id",
    "estimate_id_many",
    "knn",
    "nystrom",
]

__version__: str

_Float2D = npt.NDArray[np.float32] | npt.NDArray[np.float64]

# --- intrinsic dimension (rust/py/src/id.rs) ---

@final
class TwoNNOptions:
    def __new__(cls, discard_fraction: float = 0.1, method: str = "ls") -> TwoNNOptions: ...
    discard_fraction: Final[float]
    method: Final[str]

@final
class MleOptions:
    def __new__(cls, k: int = 20, comb: str = "mle", unbiased: bool = False) -> MleOptions: ...
    k: Final[int]
    comb: Final[str]
    unbiased: Final[bool]

@final
class EstimateOptions:
    def __new__(
        cls, bootstrap: int = 0, seed: int = 0, scales: bool = False, duplicate_tol: float = 1e-07
    ) -> EstimateOptions: ...
    bootstrap: Final[int]
    seed: Final[int]
    scales: Final[bool]
    duplicate_tol: Final[float]

@final
class IdEstimate:
    dimension: Final[float]
    ci: Final[tuple[float, float] | None]
    n_samples: Final[int]
    n_duplicates: Final[int]
    scales: Final[list[tuple[int, float]] | None]

@final
class Neighbours:
    distances: Final[npt.NDArray[np.float64]]
    indices: Final[npt.NDArray[np.int64]]

def knn(x: _Float2D, k: int) -> Neighbours: ...
def estimate_id(
    x: _Float2D, estimator: TwoNNOptions | MleOptions, options: EstimateOptions | None = None
) -> IdEstimate: ...
def estimate_id_many(
    xs: list[_Float2D],
    estimator: TwoNNOptions | MleOptions,
    options: EstimateOptions | None = None,
) -> list[IdEstimate]: ...

# --- Nyström sketch (rust/py/src/nystrom.rs) ---

@final
class NystromFactors:
    """``B`` (m, r), ``N`` (r, r), ``A`` (r, n) in the input's dtype; unpacks as ``B, N, A``."""

    B: Final[npt.NDArray[Any]]
    N: Final[npt.NDArray[Any]]
    A: Final[npt.NDArray[Any]]
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[npt.NDArray[Any]]: ...

def nystrom(
    w: _Float2D,
    rank: int,
    *,
    oversample: int = 10,
    power_iters: int = 1,
    seed: int = 0,
    rcond: float | None = None,
) -> NystromFactors: ...

# --- importance step on CPU buffers (rust/py/src/importance.rs) ---

def _importance_update_f32(
    tensors: list[tuple[int, int, int, int, int, int, int, int]],
    scores: int,
    scores_len: int,
    beta1: float,
    beta2: float,
) -> None:
    """Private to ``lorax_core.kernels``: addresses of live float32 CPU tensors
    ``(param, grad, ipt, unc, rows, cols, rank_dim, score_offset)`` and of the scores."""

# --- rank allocator: AdaLoRA / ElaLoRA (rust/py/src/allocator.rs) ---

@final
class ModulePlan:
    def __new__(cls, perm: list[int], n_keep: int, new_rank: int, seed: int) -> ModulePlan: ...
    perm: Final[list[int]]
    n_keep: Final[int]
    new_rank: Final[int]
    seed: Final[int]

@final
class Allocation:
    step: Final[int]
    ranks: Final[list[int]]

@final
class ScheduleOptions:
    """The schedule AdaLoRA and ElaLoRA share (``interval`` is AdaLoRA's ``delta_t``)."""

    def __new__(
        cls,
        total_steps: int,
        *,
        t_init: int = 0,
        t_final: int = 0,
        interval: int = 1,
        seed: int = 0,
    ) -> ScheduleOptions: ...
    total_steps: Final[int]
    t_init: Final[int]
    t_final: Final[int]
    interval: Final[int]
    seed: Final[int]

@final
class RankAllocator:
    # ``**legacy``: the former schedule keywords (total_steps, t_init, t_final, delta_t or
    # interval, seed), accepted in place of ``schedule`` for one release.
    @staticmethod
    def adalora(
        names: list[str],
        ranks: list[int],
        capacities: list[int],
        schedule: ScheduleOptions | None = None,
        *,
        target_total: int,
        min_rank: int = 0,
        **legacy: int,
    ) -> RankAllocator: ...
    @staticmethod
    def elalora(
        names: list[str],
        ranks: list[int],
        capacities: list[int],
        schedule: ScheduleOptions | None = None,
        *,
        b0: int = 4,
        k: int = 2,
        **legacy: int,
    ) -> RankAllocator: ...
    @staticmethod
    def from_json(state: str) -> RankAllocator: ...
    def to_json(self) -> str: ...
    method: Final[str]
    def names(self) -> list[str]: ...
    def ranks(self) -> list[int]: ...
    def capacities(self) -> list[int]: ...
    def budget(self, t: int) -> int: ...
    def updates_scores(self, t: int) -> bool: ...
    def is_allocation_step(self, t: int) -> bool: ...
    def allocate(self, t: int, scores: list[list[float]]) -> list[ModulePlan]: ...
    def history(self) -> list[Allocation]: ...
    def last_scores(self) -> list[list[float]]: ...

def adalora_budget(
    t: int, *, total_steps: int, t_init: int, t_final: int, init_total: int, target_total: int
) -> int: ...
def elalora_budget(t: int, *, total_steps: int, t_init: int, t_final: int, b0: int) -> int: ...

# --- rank-slot moves on CPU buffers (rust/py/src/slots.rs) ---

def _move_slots_f32(moves: list[tuple[int, int, int, int, list[int], int]]) -> None:
    """Private to ``lorax_core.kernels``: ``(address, rows, cols, rank_dim, perm, n_keep)`` of
    live, distinct float32 CPU tensors; each is permuted along its rank axis and zeroed from
    ``n_keep`` on, in place. ``ValueError`` (nothing written) for a bad move."""
