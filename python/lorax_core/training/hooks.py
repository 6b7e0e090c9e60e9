"""The protocol a training loop uses to drive lorax_core's training-time machinery.

A *training hook* is an object the loop calls once per optimizer step, after
``optimizer.step()`` and before ``zero_grad()``, with the 1-based step number
(``hook.step(global_step)``). Optional members, used when present:

- ``attach_optimizer(optimizer)`` — the loop hands over its optimizer (allocators move its
  per-parameter state when ranks change);
- ``orthogonal_regularizer()`` — a differentiable scalar whose gradient the loop adds to the
  parameters' gradients once per optimizer step (``gamma`` ≤ 0, when present, turns it off).

The AdaLoRA / ElaLoRA allocators (``lorax_core.allocators``) and the BiDoRA upper level
(:class:`lorax_core.training.bidora.BiDoRAUpperLevel`) satisfy it;
:class:`lorax_core.integrations.transformers.LoraxTrainerCallback` drives any of them from a
``transformers.Trainer``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["OptimizerAware", "Regularizing", "TrainingHook", "hook_regularizer"]


@runtime_checkable
class TrainingHook(Protocol):
    """Called after each optimizer step (before ``zero_grad``) with the 1-based step."""

    def step(self, global_step: int) -> object: ...


@runtime_checkable
class OptimizerAware(Protocol):
    """A hook that needs the training loop's optimizer."""

    optimizer: Any

    def attach_optimizer(self, optimizer: Any) -> None: ...


@runtime_checkable
class Regularizing(Protocol):
    """A hook that contributes a regulariser to the loss of every optimizer step."""

    def orthogonal_regularizer(self) -> torch.Tensor: ...


def hook_regularizer(hook: object) -> torch.Tensor | None:
    """``hook.orthogonal_regularizer()`` when the hook has one and its ``gamma`` (if any) > 0."""
    if not isinstance(hook, Regularizing):
        return None
    if float(getattr(hook, "gamma", 1.0)) <= 0.0:
        return None
    return hook.orthogonal_regularizer()
