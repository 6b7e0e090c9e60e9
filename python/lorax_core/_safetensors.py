"""The one safetensors header reader: parse and validate before any tensor is read.

A safetensors file is ``<u64 little-endian n><n bytes of JSON header><data section>``. The
header maps tensor names to ``{"dtype", "shape", "data_offsets": [start, end]}`` (offsets into
the data section, in bytes) and may hold ``"__metadata__"``, a map of strings to strings.

:func:`read_header` (a file) and :func:`parse_header` (bytes in memory) check everything the
``safetensors`` library would otherwise trip over, or silently accept, and raise a one-line
``ValueError`` naming the source and the fault:

- fewer than 8 bytes, or a header length beyond the file (truncated) or above 100 MiB;
- a header that is not UTF-8 JSON, not an object, nested too deeply to parse, or that
  repeats a key;
- an entry with an unknown dtype, a malformed shape or ``data_offsets``, a byte range outside
  the data section or of the wrong size for its shape and dtype;
- byte ranges that overlap, leave gaps, or do not cover the data section exactly;
- ``__metadata__`` that is not a map of strings to strings.

>>> header = read_header("adapter_model.safetensors")      # doctest: +SKIP
>>> header.tensors["encoder.layer.0.attention.self.query.lora_A"].shape  # doctest: +SKIP
(8, 384)
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DTYPE_SIZES",
    "FLOAT_DTYPES",
    "MAX_HEADER_BYTES",
    "METADATA_KEY",
    "SafetensorsHeader",
    "TensorInfo",
    "parse_header",
    "read_header",
]

#: Bytes per element of every dtype the safetensors format defines.
DTYPE_SIZES: Mapping[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
#: The floating-point dtypes of :data:`DTYPE_SIZES`.
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64", "F8_E5M2", "F8_E4M3"})
#: The ``safetensors`` library's own limit on the JSON header, in bytes.
MAX_HEADER_BYTES = 100 * 1024 * 1024
METADATA_KEY = "__metadata__"
_LENGTH = struct.Struct("<Q")


@dataclass(frozen=True)
class TensorInfo:
    """One validated header entry.

    Attributes:
        dtype: the safetensors dtype name (a key of :data:`DTYPE_SIZES`, e.g. ``"F32"``).
        shape: the tensor's shape (``()`` for a scalar).
        data_offsets: ``(start, end)`` byte offsets into the data section, ``end`` exclusive.
    """

    dtype: str
    shape: tuple[int, ...]
    data_offsets: tuple[int, int]

    @property
    def nbytes(self) -> int:
        """Bytes the tensor occupies: ``prod(shape) · DTYPE_SIZES[dtype]``."""
        return self.data_offsets[1] - self.data_offsets[0]


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated safetensors header.

    Attributes:
        tensors: tensor name -> its entry, in the header's order.
        metadata: the ``__metadata__`` strings (empty when the header has none).
        header_size: length of the JSON header in bytes (the file's first 8 bytes).
        data_size: length of the data section in bytes (covered exactly by ``tensors``).
    """

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    header_size: int
    data_size: int

    @property
    def data_start(self) -> int:
        """Byte offset of the data section from the start of the file: ``8 + header_size``."""
        return _LENGTH.size + self.header_size


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """The validated header of the safetensors file at ``path``; reads only the header bytes.

    Raises:
        ValueError: ``<path>: <fault>`` when the file is unreadable, truncated or malformed (see
            the module docstring); tensor data is not read.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        with p.open("rb") as f:
            prefix = f.read(_LENGTH.size)
            n = _header_length(prefix, size, str(p))
            raw = f.read(n)
    except OSError as err:
        raise ValueError(f"{p}: cannot read file: {err.strerror or err}") from None
    if len(raw) != n:  # the file shrank while it was read
        raise ValueError(f"{p}: header length {n} runs past the end of the file; truncated")
    return _validate(raw, size - _LENGTH.size - n, str(p))


def parse_header(data: bytes | bytearray | memoryview, where: str) -> SafetensorsHeader:
    """The validated header of safetensors ``data`` held in memory.

    Args:
        data: the whole serialised file.
        where: what to call the data in error messages (e.g. the file's name).

    Raises:
        ValueError: ``<where>: <fault>`` (see the module docstring).
    """
    view = memoryview(data).cast("B")
    n = _header_length(bytes(view[: _LENGTH.size]), len(view), where)
    raw = bytes(view[_LENGTH.size : _LENGTH.size + n])
    return _validate(raw, len(view) - _LENGTH.size - n, where)


def _header_length(prefix: bytes, size: int, where: str) -> int:
    if len(prefix) < _LENGTH.size:
        raise ValueError(f"{where}: not a safetensors file ({size} bytes, no header length)")
    (n,) = _LENGTH.unpack(prefix)
    if n > size - _LENGTH.size:
        raise ValueError(
            f"{where}: header length {n} runs past the end of the file ({size} bytes); "
            "the file is truncated or not safetensors"
        )
    if n > MAX_HEADER_BYTES:
        raise ValueError(
            f"{where}: header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit of the format"
        )
    return n


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(key)
        out[key] = value
    return out


class _DuplicateKeyError(Exception):
    pass


def _validate(raw: bytes, data_size: int, where: str) -> SafetensorsHeader:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{where}: header is not valid JSON; not a safetensors file") from None
    try:
        header = json.loads(text, object_pairs_hook=_unique_keys)
    except _DuplicateKeyError as dup:
        raise ValueError(f"{where}: header repeats the key {dup.args[0]!r}; corrupt") from None
    except json.JSONDecodeError:
        raise ValueError(f"{where}: header is not valid JSON; not a safetensors file") from None
    except RecursionError:  # json's parser is recursive; a header nests three levels at most
        raise ValueError(f"{where}: header nests too deeply; not a safetensors file") from None
    if not isinstance(header, dict):
        raise ValueError(f"{where}: header is not a JSON object; not a safetensors file")
    metadata = header.get(METADATA_KEY, {})
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError(f"{where}: {METADATA_KEY} must map strings to strings")
    tensors = {
        name: _entry(name, entry, data_size, where)
        for name, entry in header.items()
        if name != METADATA_KEY
    }
    covered = 0
    for name, info in sorted(tensors.items(), key=lambda item: item[1].data_offsets):
        start, end = info.data_offsets
        if start != covered:
            fault = "overlaps another tensor" if start < covered else "leaves a gap before it"
            raise ValueError(f"{where}: tensor {name!r} {fault}; the header is corrupt")
        covered = end
    if covered != data_size:
        raise ValueError(
            f"{where}: tensors cover {covered} of {data_size} data bytes; the header is corrupt"
        )
    return SafetensorsHeader(tensors, dict(metadata), len(raw), data_size)


def _entry(name: str, entry: object, data_size: int, where: str) -> TensorInfo:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: tensor {name!r} has a malformed header entry")
    dtype = entry.get("dtype")
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise ValueError(f"{where}: tensor {name!r} has unknown dtype {dtype!r}")
    shape = _int_list(entry.get("shape"))
    if shape is None or any(s < 0 for s in shape):
        raise ValueError(f"{where}: tensor {name!r} has a malformed shape {entry.get('shape')!r}")
    offsets = _int_list(entry.get("data_offsets"))
    if offsets is None or len(offsets) != 2:
        raise ValueError(
            f"{where}: tensor {name!r} has malformed data_offsets {entry.get('data_offsets')!r}"
        )
    start, end = offsets
    if not 0 <= start <= end <= data_size:
        raise ValueError(
            f"{where}: tensor {name!r} bytes [{start}, {end}) lie outside the data section "
            f"({data_size} bytes); the file is truncated or its header is corrupt"
        )
    needed = math.prod(shape) * DTYPE_SIZES[dtype]
    if end - start != needed:
        raise ValueError(
            f"{where}: tensor {name!r} spans {end - start} bytes but shape {shape} of {dtype} "
            f"needs {needed}"
        )
    return TensorInfo(dtype, tuple(shape), (start, end))


def _int_list(value: object) -> list[int] | None:
    """``value`` if it is a list of ints (not bools), else None."""
    if isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return value
    return None
