"""The hidden-states file: safetensors with tensors ``hidden.<i>`` and an optional mask.

Layout (docs/gelora.md): ``hidden.0`` … ``hidden.L`` hold h_0 (embedding output) … h_L, each float
``[n, D]`` (pooled, one row per example) or ``[n, seq, D]`` (per token, with an optional integer
or bool ``attention_mask`` of shape ``[n, seq]``); string metadata describes the capture.

The header is validated (:mod:`lorax_core._safetensors`) before the ``safetensors`` library
reads anything, so a truncated file, a header that lies about lengths or offsets, or a file of
the wrong kind raises a one-line ``ValueError`` naming the file and the fault. ``read_header``
is re-exported here from there.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from lorax_core._atomic import atomic_write
from lorax_core._format import DocumentFormat
from lorax_core._safetensors import FLOAT_DTYPES, SafetensorsHeader, TensorInfo, read_header
from lorax_core._validation import Satisfies, validate_params

__all__ = [
    "HIDDEN_PREFIX",
    "HIDDEN_STATES_FORMAT",
    "HiddenStates",
    "holds_hidden_states",
    "load_hidden_states",
    "read_header",
    "save_hidden_states",
]

HIDDEN_PREFIX = "hidden."
MASK_KEY = "attention_mask"
#: The format named in the file's metadata (``format``, ``format_version`` as a string).
HIDDEN_STATES_FORMAT = DocumentFormat(
    "lorax_core.hidden_states", 1, version_key="format_version", text=True
)
_MASK_DTYPES = {"BOOL", "U8", "I8", "I16", "I32", "I64"}


@dataclass(frozen=True)
class HiddenStates:
    """Hidden states read from a file.

    Attributes:
        layers: h_0 … h_L as float32 arrays, all ``[n, D_i]`` or all ``[n, seq, D_i]``.
        attention_mask: bool ``[n, seq]`` (True = real token) for per-token files, else None.
        metadata: the file's string metadata.
    """

    layers: list[np.ndarray]
    attention_mask: np.ndarray | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def n_samples(self) -> int:
        """Rows (examples) per layer."""
        return int(self.layers[0].shape[0])


@validate_params(
    layers=Satisfies((list, tuple), lambda v: len(v) > 0, "a non-empty sequence of arrays")
)
def save_hidden_states(
    path: str | os.PathLike[str],
    layers: Sequence[np.ndarray | torch.Tensor],
    *,
    attention_mask: np.ndarray | torch.Tensor | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``layers`` as ``hidden.0`` … ``hidden.L`` (float32) atomically; returns the path.

    ``metadata`` (strings to strings) is stored beside the format's name and version.
    """
    tensors = {
        f"{HIDDEN_PREFIX}{i}": torch.as_tensor(np.asarray(h), dtype=torch.float32).contiguous()
        for i, h in enumerate(layers)
    }
    if attention_mask is not None:
        tensors[MASK_KEY] = torch.as_tensor(np.asarray(attention_mask)).to(torch.int8).contiguous()
    meta = HIDDEN_STATES_FORMAT.stamp(metadata or {})
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def _hidden_keys(p: Path, header: SafetensorsHeader) -> list[str]:
    """``hidden.0`` … ``hidden.L`` from a validated header, checked to be complete."""
    indices: dict[int, str] = {}
    for name in header.tensors:
        if name.startswith(HIDDEN_PREFIX):
            suffix = name[len(HIDDEN_PREFIX) :]
            if not (suffix.isascii() and suffix.isdigit()) or str(int(suffix)) != suffix:
                raise ValueError(f"{p}: tensor name {name!r} is not of the form hidden.<i>")
            indices[int(suffix)] = name
    if not indices:
        raise ValueError(f"{p}: holds no hidden.<i> tensors")
    missing = sorted(set(range(max(indices) + 1)) - set(indices))
    if missing:
        raise ValueError(f"{p}: hidden.<i> tensors are not contiguous; missing i = {missing}")
    return [indices[i] for i in range(len(indices))]


def holds_hidden_states(header: SafetensorsHeader) -> bool:
    """Whether a safetensors header names any ``hidden.<i>`` tensor (a hidden-states file)."""
    return any(name.startswith(HIDDEN_PREFIX) for name in header.tensors)


def _check_layout(p: Path, keys: list[str], header: SafetensorsHeader) -> None:
    """Dtypes and shapes of the hidden states and the mask, from the header alone."""
    entries = {k: header.tensors[k] for k in keys}
    for k, info in entries.items():
        if info.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{p}: tensor {k!r} has dtype {info.dtype}, expected float")
    shapes = {k: info.shape for k, info in entries.items()}
    ndims = {len(s) for s in shapes.values()}
    if not ndims <= {2, 3} or len(ndims) != 1:
        raise ValueError(f"{p}: hidden.<i> tensors must all be [n, D] or all be [n, seq, D]")
    empty = [k for k, s in shapes.items() if 0 in s]
    if empty:
        first = empty[0]
        raise ValueError(f"{p}: tensor {first!r} is empty (shape {list(shapes[first])})")
    counts = {s[0] for s in shapes.values()}
    if len(counts) != 1:
        detail = ", ".join(f"{k}: {s[0]}" for k, s in shapes.items())
        raise ValueError(f"{p}: hidden.<i> tensors have mismatched sample counts ({detail})")
    if ndims == {3} and len({s[1] for s in shapes.values()}) != 1:
        raise ValueError(f"{p}: hidden.<i> tensors have mismatched sequence lengths")
    mask: TensorInfo | None = header.tensors.get(MASK_KEY)
    if mask is not None:
        if ndims != {3}:
            raise ValueError(f"{p}: attention_mask is only allowed with [n, seq, D] tensors")
        if mask.dtype not in _MASK_DTYPES:
            raise ValueError(f"{p}: attention_mask has dtype {mask.dtype}, expected int")
        if mask.shape != shapes[keys[0]][:2]:
            raise ValueError(
                f"{p}: attention_mask shape {list(mask.shape)} does not match the hidden "
                f"states' [n, seq] = {list(shapes[keys[0]][:2])}"
            )


def load_hidden_states(path: str | os.PathLike[str]) -> HiddenStates:
    """Read and validate a hidden-states file written by :func:`save_hidden_states`.

    Files written elsewhere (no format in their metadata) are read by their tensors alone.

    Raises:
        ValueError: the file is malformed (see :func:`lorax_core._safetensors.read_header`),
            is of a newer format version, holds no ``hidden.<i>`` tensors, has gaps in ``i``,
            non-float, empty or wrongly shaped tensors, mismatched sample counts, a mask that
            does not fit, or NaN/Inf values.
    """
    p = Path(path)
    header = read_header(p)
    if header.metadata.get(HIDDEN_STATES_FORMAT.name_key) == HIDDEN_STATES_FORMAT.name:
        HIDDEN_STATES_FORMAT.check(header.metadata, str(p))
    keys = _hidden_keys(p, header)
    _check_layout(p, keys, header)
    has_mask = MASK_KEY in header.tensors
    try:
        with safe_open(str(p), framework="pt") as f:
            layers = [f.get_tensor(k).to(torch.float32).numpy() for k in keys]
            mask = f.get_tensor(MASK_KEY).numpy() if has_mask else None
    except (SafetensorError, OSError, RuntimeError) as err:
        raise ValueError(f"{p}: cannot read tensors: {err}") from None
    for k, h in zip(keys, layers, strict=True):
        if not np.isfinite(h).all():
            raise ValueError(f"{p}: tensor {k!r} holds NaN or Inf values")
    if mask is not None:
        if not np.isin(mask, (0, 1)).all():
            raise ValueError(f"{p}: attention_mask must hold only 0 and 1")
        mask = mask.astype(bool)
        if not mask.any(axis=1).all():
            raise ValueError(f"{p}: attention_mask has a row with no real token")
    return HiddenStates(layers, mask, header.metadata)
