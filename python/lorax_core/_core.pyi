"""Type stubs of the Rust extension module ``lorax_core._core``.

Checked against the compiled module by ``python -m mypy.stubtest lorax_core._core``. Results
cross the boundary as small classes with named fields; integer arguments that are negative or
too large raise ``ValueError`` naming the argument, non-integers ``TypeError``.
"""

from collections.abc import Iterator
from typing import Any, final

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
    "TwoNNOptions",
    "__version__",
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
    @property
    def discard_fraction(self) -> float: ...
    @property
    def method(self) -> str: ...

@final
class MleOptions:
    def __new__(cls, k: int = 20, comb: str = "mle", unbiased: bool = False) -> MleOptions: ...
    @property
    def k(self) -> int: ...
    @property
    def comb(self) -> str: ...
    @property
    def unbiased(self) -> bool: ...

@final
class EstimateOptions:
    def __new__(
        cls, bootstrap: int = 0, seed: int = 0, scales: bool = False, duplicate_tol: float = 1e-07
    ) -> EstimateOptions: ...
    @property
    def bootstrap(self) -> int: ...
    @property
    def seed(self) -> int: ...
    @property
    def scales(self) -> bool: ...
    @property
    def duplicate_tol(self) -> float: ...

@final
class IdEstimate:
    @property
    def dimension(self) -> float: ...
    @property
    def ci(self) -> tuple[float, float] | None: ...
    @property
    def n_samples(self) -> int: ...
    @property
    def n_duplicates(self) -> int: ...
    @property
    def scales(self) -> list[tuple[int, float]] | None: ...

@final
class Neighbours:
    @property
    def distances(self) -> npt.NDArray[np.float64]: ...
    @property
    def indices(self) -> npt.NDArray[np.int64]: ...

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

    @property
    def B(self) -> npt.NDArray[Any]: ...  # noqa: N802
    @property
    def N(self) -> npt.NDArray[Any]: ...  # noqa: N802
    @property
    def A(self) -> npt.NDArray[Any]: ...  # noqa: N802
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

# --- rank allocator: AdaLoRA / ElaLoRA (rust/py/src/allocator.rs) ---

@final
class ModulePlan:
    def __new__(cls, perm: list[int], n_keep: int, new_rank: int, seed: int) -> ModulePlan: ...
    @property
    def perm(self) -> list[int]: ...
    @property
    def n_keep(self) -> int: ...
    @property
    def new_rank(self) -> int: ...
    @property
    def seed(self) -> int: ...

@final
class Allocation:
    @property
    def step(self) -> int: ...
    @property
    def ranks(self) -> list[int]: ...

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
    def allocate(self, t: int, scores: list[list[float]]) -> list[ModulePlan]: ...
    def history(self) -> list[Allocation]: ...
    def last_scores(self) -> list[list[float]]: ...

def adalora_budget(
    t: int, *, total_steps: int, t_init: int, t_final: int, init_total: int, target_total: int
) -> int: ...
def elalora_budget(t: int, *, total_steps: int, t_init: int, t_final: int, b0: int) -> int: ...
