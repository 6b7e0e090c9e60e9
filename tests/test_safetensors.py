"""The safetensors header reader against the safetensors library, and on every bad header."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from lorax_core._safetensors import (
    DTYPE_SIZES,
    SafetensorsHeader,
    TensorInfo,
    parse_header,
    read_header,
)

NUMPY_DTYPES = {
    "F16": np.float16,
    "F32": np.float32,
    "F64": np.float64,
    "I8": np.int8,
    "I16": np.int16,
    "I32": np.int32,
    "I64": np.int64,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def raw(header: object, data: bytes = b"") -> bytes:
    """A safetensors byte string whose header says anything."""
    encoded = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return struct.pack("<Q", len(encoded)) + encoded + data


tensor_dicts = st.dictionaries(
    st.text(
        st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=12
    ).filter(lambda name: name != "__metadata__"),
    st.tuples(
        st.sampled_from(sorted(NUMPY_DTYPES)),
        st.lists(st.integers(0, 4), min_size=0, max_size=3),
    ),
    max_size=5,
)


@given(spec=tensor_dicts, meta=st.dictionaries(st.text(max_size=8), st.text(max_size=8)))
def test_headers_of_library_files_match_their_tensors(spec, meta, tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    tensors = {name: np.zeros(shape, NUMPY_DTYPES[dtype]) for name, (dtype, shape) in spec.items()}
    data = st_save(tensors, metadata=meta or None)
    header = parse_header(data, "mem")
    assert header.metadata == meta
    assert set(header.tensors) == set(tensors)
    for name, array in tensors.items():
        info = header.tensors[name]
        assert NUMPY_DTYPES[info.dtype] == array.dtype and info.shape == array.shape
        assert info.nbytes == array.nbytes
    assert header.data_start + header.data_size == len(data)
    path = tmp_path_factory.mktemp("st") / "t.safetensors"
    path.write_bytes(data)
    assert read_header(path) == header


@pytest.fixture(scope="module")
def valid() -> bytes:
    rng = np.random.default_rng(0)
    return st_save(
        {f"t.{i}": rng.standard_normal((3, i + 1)).astype(np.float32) for i in range(3)},
        metadata={"format": "pt"},
    )


@given(position=st.integers(0, 10_000), byte=st.integers(0, 255))
def test_corrupted_headers_are_rejected_or_read_by_the_library(position, byte, valid) -> None:  # type: ignore[no-untyped-def]
    (n,) = struct.unpack("<Q", valid[:8])
    corrupt = bytearray(valid)
    corrupt[position % (8 + n)] = byte
    try:
        header = parse_header(bytes(corrupt), "mem")
    except ValueError as err:
        assert str(err).startswith("mem: ") and "\n" not in str(err)
    else:  # accepted: the library must agree on every tensor
        loaded = st_load(bytes(corrupt))
        assert set(loaded) == set(header.tensors)
        for name, info in header.tensors.items():
            assert loaded[name].shape == info.shape


@given(cut=st.integers(0, 10_000))
def test_truncated_data_is_rejected(cut, valid) -> None:  # type: ignore[no-untyped-def]
    cut %= len(valid)
    with pytest.raises(ValueError, match=r"^cut: "):
        parse_header(valid[:cut], "cut")


def test_lying_headers() -> None:
    data = bytes(24)  # room for one float32 [2, 3]
    entry = {"dtype": "F32", "shape": [2, 3]}
    cases = {
        "beyond": ({"a": {**entry, "data_offsets": [0, 48]}}, "outside the data"),
        "overlap": (
            {
                "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                "b": {"dtype": "F32", "shape": [2, 1], "data_offsets": [8, 16]},
            },
            "overlaps",
        ),
        "size": ({"a": {**entry, "data_offsets": [0, 20]}}, "needs 24"),
        "dtype": ({"a": {**entry, "dtype": "F48", "data_offsets": [0, 24]}}, "unknown dtype"),
        "dtype type": ({"a": {**entry, "dtype": ["F32"], "data_offsets": [0, 24]}}, "dtype"),
        "shape": ({"a": {**entry, "shape": [2, -3], "data_offsets": [0, 24]}}, "shape"),
        "bool shape": ({"a": {**entry, "shape": [True, 3], "data_offsets": [0, 24]}}, "shape"),
        "offsets": ({"a": {**entry, "data_offsets": [0]}}, "data_offsets"),
        "gap": ({"a": {**entry, "shape": [2, 2], "data_offsets": [8, 24]}}, "gap"),
        "short": ({"a": {**entry, "shape": [2, 2], "data_offsets": [0, 16]}}, "cover 16 of 24"),
        "entry": ({"a": [1, 2]}, "malformed header entry"),
        "metadata": ({"__metadata__": {"n": 3}}, "strings to strings"),
        "array": ([1, 2], "not a JSON object"),
    }
    for name, (header, message) in cases.items():
        with pytest.raises(ValueError, match=message):
            parse_header(raw(header, data if name != "metadata" else b""), name)
    faults = {
        b'{"a": 1, "a": 2}': "repeats the key 'a'",
        b"\xff\xfe{}": "not valid JSON",
        b'{"a":': "not valid JSON",
        b"[" * 100_000 + b"]" * 100_000: "nests too deeply",
        b'{"a": ' * 50_000 + b"1" + b"}" * 50_000: "nests too deeply",
    }
    for header, message in faults.items():
        with pytest.raises(ValueError, match=message):
            parse_header(raw(header), "mem")
    with pytest.raises(ValueError, match="runs past the end"):
        parse_header(struct.pack("<Q", 10**9) + b"{}", "mem")
    with pytest.raises(ValueError, match="no header length"):
        parse_header(b"\x01\x02", "mem")


def test_files(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    path.write_bytes(raw({"a": {"dtype": "BF16", "shape": [], "data_offsets": [0, 2]}}, b"\0\0"))
    header = read_header(path)
    assert header.tensors == {"a": TensorInfo("BF16", (), (0, 2))} and header.metadata == {}
    assert DTYPE_SIZES["BF16"] == 2
    with pytest.raises(ValueError, match=f"^{tmp_path / 'absent'}: cannot read"):
        read_header(tmp_path / "absent")
    with pytest.raises(ValueError, match="cannot read"):
        read_header(tmp_path)  # a directory
    path.write_bytes(struct.pack("<Q", 2**63) + b"{}")
    with pytest.raises(ValueError, match=f"^{path}: header length"):
        read_header(path)


def tiles_the_data(header: object, data: bytes) -> None:
    """The accepted header's byte ranges cover the data section exactly, each of its size."""
    ranges = sorted(info.data_offsets for info in header.tensors.values())  # type: ignore[attr-defined]
    position = 0
    for start, end in ranges:
        assert start == position <= end
        position = end
    assert position == header.data_size == len(data) - header.data_start  # type: ignore[attr-defined]
    for info in header.tensors.values():  # type: ignore[attr-defined]
        start, end = info.data_offsets
        assert end - start == DTYPE_SIZES[info.dtype] * int(np.prod(info.shape, dtype=object))


def refused_or_tiles_the_data(content: bytes) -> SafetensorsHeader | None:
    """The parsed header if ``content`` is accepted (checked to tile its data), else None."""
    try:
        header = parse_header(content, "mem")
    except ValueError as err:
        assert str(err).startswith("mem: ") and "\n" not in str(err)
        return None
    tiles_the_data(header, content)
    return header


@given(data=st.binary(max_size=300))
@settings(max_examples=200)
def test_arbitrary_bytes_are_rejected_or_tile_the_data(data: bytes) -> None:
    for content in (data, struct.pack("<Q", len(data)) + data):
        refused_or_tiles_the_data(content)


_ENTRY_VALUES = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.sampled_from(["F32", "BOOL", "x", "", None, True]),
    st.lists(st.integers(-2, 2**64), max_size=3),
    st.lists(st.floats(0, 50), max_size=2),
)


@given(
    which=st.integers(0, 100),
    field=st.sampled_from(["dtype", "shape", "data_offsets", "more"]),
    value=_ENTRY_VALUES,
    length_delta=st.integers(-3, 3),
)
@settings(max_examples=200)
def test_structured_corruptions_are_rejected_or_tile_the_data(  # type: ignore[no-untyped-def]
    which, field, value, length_delta, valid
) -> None:
    (n,) = struct.unpack("<Q", valid[:8])
    header = json.loads(valid[8 : 8 + n])
    names = sorted(header)
    entry = header[names[which % len(names)]]
    if isinstance(entry, dict):
        entry[field] = value
    encoded = json.dumps(header).encode()
    content = struct.pack("<Q", max(0, len(encoded) + length_delta)) + encoded + valid[8 + n :]
    parsed = refused_or_tiles_the_data(content)
    if parsed is not None:
        loaded = st_load(content)  # and the library reads every tensor it names
        assert {k: v.shape for k, v in loaded.items()} == {
            k: info.shape for k, info in parsed.tensors.items()
        }
