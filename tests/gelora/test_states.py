"""The hidden-states safetensors file: round trip, and clean errors on every kind of bad file."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save_file

from lorax_core.gelora import load_hidden_states, save_hidden_states


def layers(n: int = 6, d: int = 5, count: int = 3, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, d)).astype(np.float32) for _ in range(count)]


@pytest.fixture(scope="module")
def valid_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("states") / "hidden.safetensors"
    save_hidden_states(path, layers(), metadata={"pooling": "mean"})
    return path.read_bytes()


def raw_file(path: Path, header: dict, data: bytes) -> Path:  # type: ignore[type-arg]
    """A safetensors file written byte by byte, so its header can say anything."""
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)
    return path


def test_round_trip(tmp_path: Path) -> None:
    arrays = layers()
    mask = np.array([[1, 1, 0], [1, 0, 0]], dtype=np.int64)
    path = save_hidden_states(tmp_path / "h.safetensors", arrays, metadata={"seed": "3"})
    states = load_hidden_states(path)
    assert len(states.layers) == 3 and states.n_samples == 6 and states.attention_mask is None
    for got, want in zip(states.layers, arrays, strict=True):
        np.testing.assert_array_equal(got, want)
    assert states.metadata["seed"] == "3" and states.metadata["format_version"] == "1"
    tokens = [np.ones((2, 3, 4), np.float32) * i for i in range(2)]
    path = save_hidden_states(tmp_path / "t.safetensors", tokens, attention_mask=mask)
    states = load_hidden_states(path)
    np.testing.assert_array_equal(states.attention_mask, mask.astype(bool))
    assert states.layers[1].shape == (2, 3, 4)
    # bfloat16 and float64 files from elsewhere read as float32
    save_file(
        {
            "hidden.0": torch.ones(4, 2, dtype=torch.bfloat16),
            "hidden.1": torch.full((4, 2), 0.5, dtype=torch.float64),
        },
        str(tmp_path / "other.safetensors"),
    )
    states = load_hidden_states(tmp_path / "other.safetensors")
    assert [h.dtype for h in states.layers] == [np.float32, np.float32]
    assert states.layers[1][0, 0] == 0.5


@given(cut=st.integers(0, 10_000))
def test_truncated_files_raise_value_error(cut, valid_bytes, tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    cut %= len(valid_bytes)
    path = tmp_path_factory.mktemp("cut") / "h.safetensors"
    path.write_bytes(valid_bytes[:cut])
    with pytest.raises(ValueError, match=str(path)):
        load_hidden_states(path)


@given(position=st.integers(0, 10_000), byte=st.integers(0, 255))
def test_corrupted_headers_load_or_raise_value_error(
    position, byte, valid_bytes, tmp_path_factory
) -> None:  # type: ignore[no-untyped-def]
    (header_len,) = struct.unpack("<Q", valid_bytes[:8])
    position %= 8 + header_len
    corrupt = bytearray(valid_bytes)
    corrupt[position] = byte
    path = tmp_path_factory.mktemp("flip") / "h.safetensors"
    path.write_bytes(bytes(corrupt))
    try:
        states = load_hidden_states(path)
    except ValueError as err:
        assert str(path) in str(err)
    else:  # the flip kept the file valid (e.g. inside a metadata string): same tensors
        assert [h.shape for h in states.layers] == [(6, 5)] * 3


def test_header_faults_name_the_file(tmp_path: Path) -> None:
    """Every header fault (tested in tests/test_safetensors.py) reaches the caller with the path."""
    entry = {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 48]}
    path = raw_file(tmp_path / "beyond.safetensors", {"hidden.0": entry}, bytes(24))
    with pytest.raises(ValueError, match=f"^{path}: .*outside the data"):
        load_hidden_states(path)
    with pytest.raises(ValueError, match="cannot read"):
        load_hidden_states(tmp_path / "absent.safetensors")


def test_format_version_is_checked(tmp_path: Path) -> None:
    path = save_hidden_states(tmp_path / "h.safetensors", layers())
    assert load_hidden_states(path).metadata["format"] == "lorax_core.hidden_states"
    data = np.zeros((3, 2), np.float32)
    for version, message in (("2", "version 2 is newer"), ("one", "decimal string")):
        meta = {"format": "lorax_core.hidden_states", "format_version": version}
        save_file({"hidden.0": torch.from_numpy(data)}, str(path), metadata=meta)
        with pytest.raises(ValueError, match=f"^{path}: .*{message}"):
            load_hidden_states(path)
    # another tool's metadata (e.g. transformers' {"format": "pt"}) is not this format's
    save_file({"hidden.0": torch.from_numpy(data)}, str(path), metadata={"format": "pt"})
    assert load_hidden_states(path).n_samples == 3
    # the writer's own fields win over metadata that names another format
    save_hidden_states(path, layers(), metadata={"format": "x", "format_version": "9"})
    assert load_hidden_states(path).metadata["format_version"] == "1"


def test_contents_are_checked(tmp_path: Path) -> None:
    def write(name: str, tensors: dict[str, torch.Tensor]) -> Path:
        save_file(tensors, str(tmp_path / name))
        return tmp_path / name

    cases = {
        "none": ({"weight": torch.zeros(3, 2)}, "no hidden"),
        "counts": (
            {"hidden.0": torch.zeros(5, 2), "hidden.1": torch.zeros(4, 2)},
            r"mismatched sample counts \(hidden.0: 5, hidden.1: 4\)",
        ),
        "gap": ({"hidden.0": torch.zeros(3, 2), "hidden.2": torch.zeros(3, 2)}, "missing i"),
        "name": ({"hidden.x": torch.zeros(3, 2)}, "hidden.<i>"),
        "int": ({"hidden.0": torch.zeros(3, 2, dtype=torch.int32)}, "expected float"),
        "nan": ({"hidden.0": torch.tensor([[0.0, float("nan")]] * 3)}, "NaN"),
        "ndim": ({"hidden.0": torch.zeros(3)}, r"\[n, D\]"),
        "no rows": ({"hidden.0": torch.zeros(0, 2), "hidden.1": torch.zeros(0, 2)}, "empty"),
        "no features": ({"hidden.0": torch.zeros(3, 0)}, r"'hidden.0' is empty \(shape \[3, 0\]\)"),
        "mask2d": (
            {"hidden.0": torch.zeros(3, 2), "attention_mask": torch.ones(3, 2)},
            "only allowed",
        ),
        "mask": (
            {
                "hidden.0": torch.zeros(3, 4, 2),
                "attention_mask": torch.ones(3, 5, dtype=torch.int64),
            },
            "does not match",
        ),
        "empty row": (
            {
                "hidden.0": torch.zeros(2, 3, 2),
                "attention_mask": torch.zeros(2, 3, dtype=torch.int8),
            },
            "no real token",
        ),
    }
    for name, (tensors, message) in cases.items():
        with pytest.raises(ValueError, match=message):
            load_hidden_states(write(f"{name}.safetensors", tensors))


def test_write_is_atomic(tmp_path: Path) -> None:
    path = save_hidden_states(tmp_path / "h.safetensors", layers())
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"^save_hidden_states: layers must be a non-empty"):
        save_hidden_states(path, [])
    with pytest.raises(TypeError):  # a failure while writing leaves the old file intact
        save_hidden_states(path, layers(), metadata={"n": 3})  # type: ignore[dict-item]
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.safetensors"]
