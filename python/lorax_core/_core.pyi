"""Type stubs of the Rust extension module ``lorax_core._core``.

Checked against the compiled module by ``python -m mypy.stubtest lorax_core._core``.
"""

from typing import final

import numpy as np
import numpy.typing as npt

__all__ = [
    "RankAllocator",
    "__version__",
    "adalora_budget",
    "elalora_budget",
    "estimate_id",
    "estimate_id_many",
    "knn",
    "nystrom",
]

__version__: str

# --- intrinsic dimension (rust/py/src/id.rs) ---

_Float2D = npt.NDArray[np.float32] | npt.NDArray[np.float64]
_IdTuple = tuple[float, tuple[float, float] | None, int, int, list[tuple[int, float]] | None]

def knn(x: _Float2D, k: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]: ...
def estimate_id(
    x: _Float2D,
    estimator: str,
    *,
    k: int,
    discard_fraction: float,
    method: str,
    comb: str,
    unbiased: bool,
    bootstrap: int,
    seed: int,
    scales: bool,
    duplicate_tol: float,
) -> _IdTuple: ...
def estimate_id_many(
    xs: list[_Float2D],
    estimator: str,
    *,
    k: int,
    discard_fraction: float,
    method: str,
    comb: str,
    unbiased: bool,
    bootstrap: int,
    seed: int,
    scales: bool,
    duplicate_tol: float,
) -> list[_IdTuple]: ...

# --- Nyström sketch (rust/py/src/nystrom.rs) ---

def nystrom(
    w: _Float2D,
    rank: int,
    *,
    oversample: int = 10,
    power_iters: int = 1,
    seed: int = 0,
    rcond: float | None = None,
) -> (
    tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]]
    | tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]
): ...

# --- rank allocator: AdaLoRA / ElaLoRA (rust/py/src/allocator.rs) ---

@final
class RankAllocator:
    @staticmethod
    def adalora(
        names: list[str],
        ranks: list[int],
        capacities: list[int],
        *,
        total_steps: int,
        t_init: int,
        t_final: int,
        target_total: int,
        delta_t: int,
        min_rank: int = 0,
        seed: int = 0,
    ) -> RankAllocator: ...
    @staticmethod
    def elalora(
        names: list[str],
        ranks: list[int],
        capacities: list[int],
        *,
        total_steps: int,
        t_init: int,
        t_final: int,
        interval: int,
        b0: int = 4,
        k: int = 2,
        seed: int = 0,
    ) -> RankAllocator: ...
    @staticmethod
    def from_json(state: str) -> RankAllocator: ...
    def to_json(self) -> str: ...
    @property
    def method(self) -> str: ...
    def names(self) -> list[str]: ...
    def ranks(self) -> list[int]: ...
    def capacities(self) -> list[int]: ...
    def budget(self, t: int) -> int: ...
    def updates_scores(self, t: int) -> bool: ...
    def is_allocation_step(self, t: int) -> bool: ...
    def allocate(
        self, t: int, scores: list[list[float]]
    ) -> list[tuple[list[int], int, int, int]]: ...
    def history(self) -> list[tuple[int, list[int]]]: ...
    def last_scores(self) -> list[list[float]]: ...

def adalora_budget(
    t: int, *, total_steps: int, t_init: int, t_final: int, init_total: int, target_total: int
) -> int: ...
def elalora_budget(t: int, *, total_steps: int, t_init: int, t_final: int, b0: int) -> int: ...
