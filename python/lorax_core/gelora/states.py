"""The hidden-states file: safetensors with tensors ``hidden.<i>`` and an optional mask.

Layout (SPEC §4): ``hidden.0`` … ``hidden.L`` hold h_0 (embedding output) … h_L, each float
``[n, D]`` (pooled, one row per example) or ``[n, seq, D]`` (per token, with an optional integer
or bool ``attention_mask`` of shape ``[n, seq]``); string metadata describes the capture.

The header is validated here before the ``safetensors`` library reads anything, so a truncated
file, a header that lies about lengths or offsets, or a file of the wrong kind raises a one-line
``ValueError`` naming the file and the fault.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from lorax_core._atomic import atomic_write

__all__ = [
    "HIDDEN_PREFIX",
    "HiddenStates",
    "load_hidden_states",
    "read_header",
    "save_hidden_states",
]

HIDDEN_PREFIX = "hidden."
MASK_KEY = "attention_mask"
FORMAT_NAME = "lorax_core.hidden_states"
FORMAT_VERSION = "1"

# Bytes per element of every dtype the safetensors format defines.
_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
_MASK_DTYPES = {"BOOL", "U8", "I8", "I16", "I32", "I64"}
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit


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


def save_hidden_states(
    path: str | os.PathLike[str],
    layers: Sequence[np.ndarray | torch.Tensor],
    *,
    attention_mask: np.ndarray | torch.Tensor | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``layers`` as ``hidden.0`` … ``hidden.L`` (float32) atomically; returns the path."""
    if not layers:
        raise ValueError("layers must hold at least one array")
    tensors = {
        f"{HIDDEN_PREFIX}{i}": torch.as_tensor(np.asarray(h), dtype=torch.float32).contiguous()
        for i, h in enumerate(layers)
    }
    if attention_mask is not None:
        tensors[MASK_KEY] = torch.as_tensor(np.asarray(attention_mask)).to(torch.int8).contiguous()
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **(metadata or {})}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The validated JSON header of a safetensors file (tensor entries and ``__metadata__``).

    Raises:
        ValueError: the file is unreadable, truncated, or its header is malformed or lies about
            dtypes, shapes or byte ranges (out of range, overlapping, not covering the data).
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        with p.open("rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise ValueError(f"{p}: not a safetensors file ({size} bytes, no header length)")
            (n,) = struct.unpack("<Q", prefix)
            if n > size - 8 or n > _MAX_HEADER:
                raise ValueError(
                    f"{p}: header length {n} runs past the end of the file ({size} bytes); "
                    "the file is truncated or not safetensors"
                )
            raw = f.read(n)
    except OSError as err:
        raise ValueError(f"{p}: cannot read file: {err.strerror or err}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"{p}: header is not valid JSON; not a safetensors file") from None
    if not isinstance(header, dict):
        raise ValueError(f"{p}: header is not a JSON object; not a safetensors file")
    _check_entries(p, header, data_len=size - 8 - n)
    return header


def _check_entries(p: Path, header: dict[str, Any], data_len: int) -> None:
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError(f"{p}: __metadata__ must map strings to strings")
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise ValueError(f"{p}: tensor {name!r} has a malformed header entry")
        dtype = entry.get("dtype")
        if dtype not in _ITEMSIZE:
            raise ValueError(f"{p}: tensor {name!r} has unknown dtype {dtype!r}")
        shape = _int_list(entry.get("shape"))
        if shape is None or any(s < 0 for s in shape):
            raise ValueError(f"{p}: tensor {name!r} has a malformed shape {entry.get('shape')!r}")
        offsets = _int_list(entry.get("data_offsets"))
        if offsets is None or len(offsets) != 2:
            raise ValueError(
                f"{p}: tensor {name!r} has malformed data_offsets {entry.get('data_offsets')!r}"
            )
        start, end = offsets
        if not 0 <= start <= end <= data_len:
            raise ValueError(
                f"{p}: tensor {name!r} bytes [{start}, {end}) lie outside the data section "
                f"({data_len} bytes); the file is truncated or its header is corrupt"
            )
        if end - start != math.prod(shape) * _ITEMSIZE[dtype]:
            raise ValueError(
                f"{p}: tensor {name!r} spans {end - start} bytes but shape {shape} of {dtype} "
                f"needs {math.prod(shape) * _ITEMSIZE[dtype]}"
            )
        spans.append((start, end, name))
    covered = 0
    for start, end, name in sorted(spans):
        if start != covered:
            fault = "overlaps another tensor" if start < covered else "leaves a gap before it"
            raise ValueError(f"{p}: tensor {name!r} {fault}; the header is corrupt")
        covered = end
    if covered != data_len:
        raise ValueError(
            f"{p}: tensors cover {covered} of {data_len} data bytes; the header is corrupt"
        )


def _int_list(value: object) -> list[int] | None:
    """``value`` if it is a list of ints (not bools), else None."""
    if isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return value
    return None


def _hidden_keys(p: Path, header: Mapping[str, Any]) -> list[str]:
    """``hidden.0`` … ``hidden.L`` from a validated header, checked to be complete."""
    indices: dict[int, str] = {}
    for name in header:
        if name.startswith(HIDDEN_PREFIX):
            suffix = name[len(HIDDEN_PREFIX) :]
            if not suffix.isdigit() or str(int(suffix)) != suffix:
                raise ValueError(f"{p}: tensor name {name!r} is not of the form hidden.<i>")
            indices[int(suffix)] = name
    if not indices:
        raise ValueError(f"{p}: holds no hidden.<i> tensors")
    missing = sorted(set(range(max(indices) + 1)) - set(indices))
    if missing:
        raise ValueError(f"{p}: hidden.<i> tensors are not contiguous; missing i = {missing}")
    return [indices[i] for i in range(len(indices))]


def load_hidden_states(path: str | os.PathLike[str]) -> HiddenStates:
    """Read and validate a hidden-states file written by :func:`save_hidden_states`.

    Raises:
        ValueError: the file is malformed (see :func:`read_header`), holds no ``hidden.<i>``
            tensors, has gaps in ``i``, non-float or wrongly shaped tensors, mismatched sample
            counts, a mask that does not fit, or NaN/Inf values.
    """
    p = Path(path)
    header = read_header(p)
    keys = _hidden_keys(p, header)
    shapes = {k: header[k]["shape"] for k in keys}
    for k in keys:
        if header[k]["dtype"] not in _FLOAT_DTYPES:
            raise ValueError(f"{p}: tensor {k!r} has dtype {header[k]['dtype']}, expected float")
    ndims = {len(s) for s in shapes.values()}
    if not ndims <= {2, 3} or len(ndims) != 1:
        raise ValueError(f"{p}: hidden.<i> tensors must all be [n, D] or all be [n, seq, D]")
    counts = {s[0] for s in shapes.values()}
    if len(counts) != 1:
        detail = ", ".join(f"{k}: {s[0]}" for k, s in shapes.items())
        raise ValueError(f"{p}: hidden.<i> tensors have mismatched sample counts ({detail})")
    if ndims == {3} and len({s[1] for s in shapes.values()}) != 1:
        raise ValueError(f"{p}: hidden.<i> tensors have mismatched sequence lengths")
    if MASK_KEY in header:
        mask_entry = header[MASK_KEY]
        if ndims != {3}:
            raise ValueError(f"{p}: attention_mask is only allowed with [n, seq, D] tensors")
        if mask_entry["dtype"] not in _MASK_DTYPES:
            raise ValueError(f"{p}: attention_mask has dtype {mask_entry['dtype']}, expected int")
        if mask_entry["shape"] != shapes[keys[0]][:2]:
            raise ValueError(
                f"{p}: attention_mask shape {mask_entry['shape']} does not match the hidden "
                f"states' [n, seq] = {shapes[keys[0]][:2]}"
            )
    try:
        with safe_open(str(p), framework="pt") as f:
            layers = [f.get_tensor(k).to(torch.float32).numpy() for k in keys]
            mask = f.get_tensor(MASK_KEY).numpy() if MASK_KEY in header else None
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
    return HiddenStates(layers, mask, dict(header.get("__metadata__", {})))
