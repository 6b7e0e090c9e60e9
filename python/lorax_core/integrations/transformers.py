"""``transformers.Trainer`` integration of the AdaLoRA / ElaLoRA allocators (SPEC §8).

The callback works through two hooks, both run while gradients exist:

- ``on_pre_optimizer_step`` (after gradient clipping): adds the gradient of
  ``allocator.orthogonal_regularizer()`` to the adapter gradients — the same update as adding the
  regulariser to the loss once per optimizer step (it is not clipped, as it is added afterwards);
- ``on_optimizer_step`` (after ``optimizer.step()``, before ``zero_grad()``): calls
  ``allocator.step(global_step + 1)`` (``state.global_step`` is incremented after this hook).

The Trainer's optimizer (accelerate wrapper unwrapped) is attached to the allocator on the first
step unless one is attached already.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from lorax_core.allocators.base import RankAllocatorBase

__all__ = ["LoraxTrainerCallback"]


class LoraxTrainerCallback(TrainerCallback):
    """Drives ``allocator`` (an :class:`~lorax_core.allocators.AdaLoRA` or
    :class:`~lorax_core.allocators.ElaLoRA`) from a ``transformers.Trainer``.

    Args:
        allocator: the allocator built on the Trainer's model.
        regularize: add the orthogonality regulariser's gradient (default True).
    """

    def __init__(self, allocator: RankAllocatorBase, regularize: bool = True) -> None:
        if not isinstance(allocator, RankAllocatorBase):
            raise TypeError(
                f"allocator must be an AdaLoRA or ElaLoRA allocator, got {type(allocator).__name__}"
            )
        self.allocator = allocator
        self.regularize = bool(regularize)

    def _attach(self, kwargs: dict[str, Any]) -> None:
        optimizer = kwargs.get("optimizer")
        if self.allocator.optimizer is None and optimizer is not None:
            self.allocator.attach_optimizer(optimizer)

    def on_pre_optimizer_step(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        if self.regularize and self.allocator.gamma > 0:
            with torch.enable_grad():
                self.allocator.orthogonal_regularizer().backward()

    def on_optimizer_step(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        self._attach(kwargs)
        self.allocator.step(state.global_step + 1)
