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
from lorax_core._validation import NoneValue, Satisfies, validate_params

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


def _real_array(value: object) -> bool:
    """Whether ``value`` is a tensor or converts to an array of real numbers (bool/int/float)."""
    if isinstance(value, torch.Tensor):
        return not value.is_complex()
    try:
        return np.asarray(value).dtype.kind in "biuf"
    except (TypeError, ValueError, RuntimeError):  # e.g. ragged nested lists
        return False


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` with copies of any that share memory (the same array passed twice), which
    ``safetensors`` refuses to write."""
    seen: set[int] = set()
    result = {}
    for name, tensor in tensors.items():
        start = tensor.untyped_storage().data_ptr()
        result[name] = tensor.clone() if start in seen and tensor.numel() else tensor
        seen.add(start)
    return result


def _as_tensor(value: np.ndarray | torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """``value`` as a contiguous CPU tensor (of ``dtype`` if given)."""
    tensor = (
        value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    )
    return tensor.to(device="cpu", dtype=dtype).contiguous()


_ARRAYS = Satisfies(
    (list, tuple),
    lambda v: len(v) > 0 and all(_real_array(h) for h in v),
    "a non-empty sequence of real-valued arrays",
)


@validate_params(
    layers=_ARRAYS,
    attention_mask=[
        Satisfies((np.ndarray, torch.Tensor), _real_array, "an int array"),
        NoneValue(),
    ],
    metadata=[
        Satisfies(
            Mapping,
            lambda m: all(isinstance(k, str) and isinstance(v, str) for k, v in m.items()),
            "a mapping of strings to strings",
        ),
        NoneValue(),
    ],
)
def save_hidden_states(
    path: str | os.PathLike[str],
    layers: Sequence[np.ndarray | torch.Tensor],
    *,
    attention_mask: np.ndarray | torch.Tensor | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``layers`` as ``hidden.0`` … ``hidden.L`` (float32) atomically; returns the path.

    Args:
        path: the file to write (replaced atomically).
        layers: h_0 … h_L, all ``[n, D_i]`` or all ``[n, seq, D_i]``, finite real values.
        attention_mask: for ``[n, seq, D_i]`` layers, ``[n, seq]`` of 0/1 (1 = real token),
            every row with a real token.
        metadata: strings to strings, stored beside the format's name and version.

    Raises:
        TypeError, ValueError: ``save_hidden_states: <argument> …`` for input that
            :func:`load_hidden_states` would refuse; nothing is written then.
    """
    tensors = _unshared(
        {f"{HIDDEN_PREFIX}{i}": _as_tensor(h, torch.float32) for i, h in enumerate(layers)}
    )
    mask = None if attention_mask is None else _as_tensor(attention_mask, None)
    named = {f"layers[{i}]": t for i, t in enumerate(tensors.values())}
    fault = _layout_fault(
        {k: tuple(t.shape) for k, t in named.items()},
        None if mask is None else tuple(mask.shape),
        "layers",
    ) or _values_fault(
        [(k, t.numpy()) for k, t in named.items()], None if mask is None else mask.numpy()
    )
    if fault is not None:
        raise ValueError(f"save_hidden_states: {fault}")
    if mask is not None:
        tensors[MASK_KEY] = mask.to(torch.int8).contiguous()
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


def _layout_fault(
    shapes: Mapping[str, tuple[int, ...]], mask: tuple[int, ...] | None, what: str
) -> str | None:
    """What is wrong with hidden states of ``shapes`` (name -> shape) and a mask, or None.

    ``what`` names the hidden states as a group (``"hidden.<i> tensors"``, ``"layers"``).
    """
    ndims = {len(s) for s in shapes.values()}
    if not ndims <= {2, 3} or len(ndims) != 1:
        return f"{what} must all be [n, D] or all be [n, seq, D]"
    empty = [k for k, s in shapes.items() if 0 in s]
    if empty:
        return f"{empty[0]!r} is empty (shape {list(shapes[empty[0]])})"
    if len({s[0] for s in shapes.values()}) != 1:
        detail = ", ".join(f"{k}: {s[0]}" for k, s in shapes.items())
        return f"{what} have mismatched sample counts ({detail})"
    if ndims == {3} and len({s[1] for s in shapes.values()}) != 1:
        return f"{what} have mismatched sequence lengths"
    first = next(iter(shapes.values()))
    if mask is not None:
        if ndims != {3}:
            return f"{MASK_KEY} is only allowed with [n, seq, D] {what}"
        if mask != first[:2]:
            return (
                f"{MASK_KEY} shape {list(mask)} does not match the hidden states' "
                f"[n, seq] = {list(first[:2])}"
            )
    return None


def _values_fault(layers: Sequence[tuple[str, np.ndarray]], mask: np.ndarray | None) -> str | None:
    """NaN/Inf in a layer, or a mask of other values than 0/1 or with an all-padding row."""
    for name, h in layers:
        if not np.isfinite(h).all():
            return f"{name!r} holds NaN or Inf values"
    if mask is not None:
        if not np.isin(mask, (0, 1)).all():
            return f"{MASK_KEY} must hold only 0 and 1"
        if not mask.astype(bool).any(axis=1).all():
            return f"{MASK_KEY} has a row with no real token"
    return None


def _check_layout(p: Path, keys: list[str], header: SafetensorsHeader) -> None:
    """Dtypes and shapes of the hidden states and the mask, from the header alone."""
    for k in keys:
        if header.tensors[k].dtype not in FLOAT_DTYPES:
            raise ValueError(
                f"{p}: tensor {k!r} has dtype {header.tensors[k].dtype}, expected float"
            )
    mask: TensorInfo | None = header.tensors.get(MASK_KEY)
    shapes = {k: header.tensors[k].shape for k in keys}
    fault = _layout_fault(shapes, None if mask is None else mask.shape, "hidden.<i> tensors")
    if fault is not None:
        raise ValueError(f"{p}: {fault}")
    if mask is not None and mask.dtype not in _MASK_DTYPES:
        raise ValueError(f"{p}: {MASK_KEY} has dtype {mask.dtype}, expected int")


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
    fault = _values_fault(list(zip(keys, layers, strict=True)), mask)
    if fault is not None:
        raise ValueError(f"{p}: {fault}")
    return HiddenStates(layers, None if mask is None else mask.astype(bool), header.metadata)
