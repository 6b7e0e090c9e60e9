"""Type stubs of the Rust extension module ``lorax_core._core``.

Checked against the compiled module by ``python -m mypy.stubtest lorax_core._core``.
"""

__version__: str

# --- rank allocator: AdaLoRA / ElaLoRA (rust/py/src/allocator.rs) ---

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
