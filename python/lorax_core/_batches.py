"""Moving a batch (a tensor, or a dict/list/tuple nesting tensors) to a device."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["to_device"]


def to_device(batch: Any, device: torch.device | str) -> Any:
    """``batch`` with every tensor it holds moved to ``device``; other values kept as they are.

    Dicts (any mapping) come back as ``dict``, lists and tuples keep their type (named tuples
    included); strings and other leaves are returned unchanged. Nothing is copied when a tensor
    already lives on ``device``.
    """
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(to_device(value, device) for value in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(value, device) for value in batch)
    return batch
