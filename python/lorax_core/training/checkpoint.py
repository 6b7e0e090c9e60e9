"""Trainer state on disk without pickle: tensors in safetensors, everything else in JSON.

A nested state (dicts, lists, tuples, numbers, strings, None, tensors) is written as one
``.safetensors`` file: each tensor under a key naming its position, and the JSON skeleton, in
which every tensor is replaced by ``{"__tensor__": key}``, in the header metadata. Tuples come
back as lists. Written atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lorax_core._atomic import atomic_write

__all__ = ["load_state", "save_state"]

_TAG = "__tensor__"
_META = "lorax_core.state"


def _split(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().cpu().contiguous()
        return {_TAG: key}
    if isinstance(value, dict):
        for k in value:
            if not isinstance(k, (str, int)):
                raise TypeError(f"save_state: state keys must be str or int, got {k!r}")
        # key/value pairs, so that int keys (optimizer states) come back as ints
        return {"__items__": [[k, _split(v, tensors)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [_split(v, tensors) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"save_state: cannot store a {type(value).__name__} in a state")


def _join(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if _TAG in value:
            return tensors[value[_TAG]]
        return {k: _join(v, tensors) for k, v in value["__items__"]}
    if isinstance(value, list):
        return [_join(v, tensors) for v in value]
    return value


def save_state(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` (one safetensors file), atomically."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split(state, tensors)
    metadata = {_META: json.dumps(skeleton)}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a state written by :func:`save_state`.

    Raises:
        ValueError: the file is not a lorax_core state file.
    """
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if _META not in metadata:
            raise ValueError(f"load_state: path {str(path)!r} is not a lorax_core state file")
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    state = _join(json.loads(metadata[_META]), tensors)
    if not isinstance(state, dict):
        raise ValueError(f"load_state: path {str(path)!r} does not hold a state dict")
    return state
