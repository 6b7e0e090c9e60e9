"""Learning-rate schedules and seeded batch streams shared by the trainers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from lorax_core._validation import Integer, Real, check

__all__ = ["BatchStream", "LinearWarmupDecay", "collate", "linear_warmup_decay", "shard"]


class LinearWarmupDecay:
    """LR factor: ``t / w`` for ``t < w``, then ``(T − t) / (T − w)`` down to 0 at ``t = T``.

    ``t`` is the number of optimizer steps taken, ``T`` the horizon and
    ``w = round(T · warmup_fraction)`` unless ``warmup_steps`` is given. A plain callable object,
    so ``LambdaLR.state_dict()`` records it.
    """

    def __init__(
        self, total_steps: int, warmup_fraction: float = 0.0, *, warmup_steps: int | None = None
    ) -> None:
        self.total_steps = int(total_steps)
        if warmup_steps is None:
            warmup_steps = round(total_steps * warmup_fraction)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, t: int) -> float:
        if t < self.warmup_steps:
            return t / self.warmup_steps
        remaining = self.total_steps - self.warmup_steps
        return max(0.0, (self.total_steps - t) / remaining) if remaining > 0 else 0.0


def linear_warmup_decay(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float
) -> LambdaLR:
    """A ``LambdaLR`` with :class:`LinearWarmupDecay` over ``total_steps`` optimizer steps.

    With a warm-up the first step runs at lr 0 only if ``warmup_steps > 0``; the schedule is
    evaluated at ``t`` = steps taken so far (``scheduler.step()`` after each ``optimizer.step()``).
    """
    fn = "linear_warmup_decay"
    total_steps = check(fn, "total_steps", total_steps, Integer(low=1))
    warmup_fraction = check(fn, "warmup_fraction", warmup_fraction, Real(0.0, 1.0))
    return LambdaLR(optimizer, LinearWarmupDecay(total_steps, warmup_fraction))


class BatchStream:
    """Endless seeded batches of ``batch_size`` indices drawn from ``indices``.

    Epoch ``e`` is a permutation of ``indices`` from a CPU generator seeded with
    ``seed · 1_000_003 + e``; each epoch yields ``len(indices) // batch_size`` full batches (the
    tail is dropped). The position (epoch, cursor) is the whole state, so a resumed stream yields
    exactly the batches an uninterrupted one would.

    Under torch.distributed every process draws the same global batch and keeps its own
    contiguous shard (``shard(rank, world)``), so the processes together see exactly the batches
    a single process would.
    """

    def __init__(self, indices: Sequence[int], batch_size: int, seed: int) -> None:
        if batch_size > len(indices):
            raise ValueError(
                f"BatchStream: batch_size must be <= the number of examples ({len(indices)}), "
                f"got {batch_size}"
            )
        self.indices = list(indices)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.cursor = 0
        self._order: list[int] | None = None

    def _permutation(self) -> list[int]:
        if self._order is None:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            perm = torch.randperm(len(self.indices), generator=generator).tolist()
            self._order = [self.indices[i] for i in perm]
        return self._order

    def next_indices(self) -> list[int]:
        """The next global batch of dataset indices (length ``batch_size``)."""
        if self.cursor + self.batch_size > len(self.indices):
            self.epoch += 1
            self.cursor = 0
            self._order = None
        order = self._permutation()
        batch = order[self.cursor : self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.cursor = int(state["cursor"])
        self._order = None


def shard(batch: list[int], rank: int, world: int) -> list[int]:
    """Process ``rank``'s contiguous share of a global batch (``len(batch) % world == 0``)."""
    size = len(batch) // world
    return batch[rank * size : (rank + 1) * size]


def collate(dataset: Any, indices: list[int], collate_fn: Callable[[list[Any]], Any] | None) -> Any:
    """``collate_fn([dataset[i] for i in indices])`` (torch's ``default_collate`` if None)."""
    items = [dataset[i] for i in indices]
    if collate_fn is None:
        return torch.utils.data.default_collate(items)
    return collate_fn(items)
