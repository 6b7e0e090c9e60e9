"""The hidden-states safetensors file: round trip, and clean errors on every kind of bad file."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
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
    with pytest.raises(ValueError, match=r"^save_hidden_states: metadata must be a mapping of"):
        save_hidden_states(path, layers(), metadata={"n": 3})  # type: ignore[dict-item]
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.safetensors"]


# --- the writer refuses what the reader would refuse; the reader never crashes -------------

_NUMPY_OF = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I8": np.int8}


def decoded(content: bytes) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file, decoded from its bytes with NumPy alone."""
    (n,) = struct.unpack("<Q", content[:8])
    header = json.loads(content[8 : 8 + n])
    data = content[8 + n :]
    found = {}
    for name, entry in header.items():
        if name != "__metadata__":
            start, end = entry["data_offsets"]
            raw = np.frombuffer(data[start:end], dtype=_NUMPY_OF[entry["dtype"]])
            found[name] = raw.reshape(entry["shape"]).astype(np.float32)
    return found


def loads_consistently(path: Path) -> None:
    """``path`` loads as hidden states equal to its bytes, or raises a ValueError naming it."""
    try:
        states = load_hidden_states(path)
    except ValueError as err:
        assert str(err).startswith(f"{path}: ") and "\n" not in str(err)
        return
    tensors = decoded(path.read_bytes())
    assert len({h.shape[0] for h in states.layers}) == 1
    assert {h.ndim for h in states.layers} in ({2}, {3})
    for i, h in enumerate(states.layers):
        assert h.dtype == np.float32 and np.isfinite(h).all()
        np.testing.assert_array_equal(h, tensors[f"hidden.{i}"])
    if states.attention_mask is not None:
        assert states.attention_mask.shape == states.layers[0].shape[:2]
        np.testing.assert_array_equal(states.attention_mask, tensors["attention_mask"] == 1)


@given(data=st.binary(max_size=400))
@settings(max_examples=150)
def test_arbitrary_bytes_load_or_raise_value_error(data: bytes, tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("bytes") / "h.safetensors"
    path.write_bytes(data)
    loads_consistently(path)
    path.write_bytes(struct.pack("<Q", len(data)) + data)  # a plausible length, then anything
    loads_consistently(path)


_FIELD_VALUES = st.one_of(
    st.integers(-(2**64), 2**64),
    st.sampled_from(["F32", "F64", "F16", "I8", "BOOL", "X", "", None, True, 1.5]),
    st.lists(st.integers(-3, 40), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(0, 3), max_size=2),
)


@given(
    n=st.integers(1, 5),
    seq=st.integers(1, 3),
    per_token=st.booleans(),
    target=st.integers(0, 1000),
    field=st.sampled_from(["dtype", "shape", "data_offsets", "extra", "__metadata__"]),
    value=_FIELD_VALUES,
    tail=st.binary(max_size=8),
    cut=st.integers(-16, 0),
)
@settings(max_examples=200)
def test_structured_corruptions_load_consistently_or_raise_value_error(  # type: ignore[no-untyped-def]
    n, seq, per_token, target, field, value, tail, cut, tmp_path_factory
) -> None:
    rng = np.random.default_rng(target)
    shape = (n, seq, 3) if per_token else (n, 3)
    arrays = [rng.standard_normal(shape).astype(np.float32) for _ in range(3)]
    mask = (np.arange(seq)[None, :] <= rng.integers(0, seq, (n, 1))) if per_token else None
    path = tmp_path_factory.mktemp("corrupt") / "h.safetensors"
    save_hidden_states(path, arrays, attention_mask=mask, metadata={"a": "b"})
    content = path.read_bytes()
    (length,) = struct.unpack("<Q", content[:8])
    header = json.loads(content[8 : 8 + length])
    names = sorted(header)
    name = names[target % len(names)]
    if name == "__metadata__" or field == "__metadata__":
        header["__metadata__"] = value if field == "__metadata__" else {"format_version": value}
    else:
        header[name][field] = value
    encoded = json.dumps(header).encode()
    data = content[8 + length :]
    for variant in (
        struct.pack("<Q", len(encoded)) + encoded + data,
        struct.pack("<Q", len(encoded)) + encoded + data + tail,
        (struct.pack("<Q", len(encoded)) + encoded + data)[: len(encoded) + len(data) + 8 + cut],
        struct.pack("<Q", length + target) + content[8:],
    ):
        path.write_bytes(variant)
        loads_consistently(path)


def test_writer_refuses_what_the_reader_refuses(tmp_path: Path) -> None:
    flat, tokens = layers(), [np.ones((2, 3, 4), np.float32) * i for i in range(2)]
    nan = [np.array([[0.0, np.nan]] * 3, np.float32)]
    cases = {
        "counts": ({"layers": [flat[0], flat[1][:4]]}, r"mismatched sample counts"),
        "ndim": ({"layers": [flat[0], tokens[0]]}, r"all be \[n, D\] or all be \[n, seq, D\]"),
        "empty": ({"layers": [np.zeros((0, 3))]}, r"'layers\[0\]' is empty \(shape \[0, 3\]\)"),
        "nan": ({"layers": nan}, r"'layers\[0\]' holds NaN or Inf values"),
        "mask2d": ({"layers": flat, "attention_mask": np.ones((6, 5))}, "only allowed"),
        "mask shape": ({"layers": tokens, "attention_mask": np.ones((2, 2))}, "does not match"),
        "mask values": ({"layers": tokens, "attention_mask": np.full((2, 3), 2)}, "only 0 and 1"),
        "no token": ({"layers": tokens, "attention_mask": np.zeros((2, 3))}, "no real token"),
        "strings": ({"layers": [np.array([["a"]])]}, "real-valued arrays"),
    }
    for name, (kwargs, message) in cases.items():
        target = tmp_path / f"{name}.safetensors"
        with pytest.raises(ValueError, match=rf"^save_hidden_states: .*{message}"):
            save_hidden_states(target, **kwargs)
        assert not target.exists()
        if name == "strings":
            continue
        # the oracle: the same tensors written by the safetensors library, read back by us
        tensors = {f"hidden.{i}": torch.as_tensor(h) for i, h in enumerate(kwargs["layers"])}
        if "attention_mask" in kwargs:
            tensors["attention_mask"] = torch.as_tensor(kwargs["attention_mask"]).to(torch.int64)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(target))
        with pytest.raises(ValueError, match=str(target)):
            load_hidden_states(target)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@given(
    n=st.integers(1, 6),
    dims=st.lists(st.integers(1, 4), min_size=1, max_size=4),
    seq=st.none() | st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=60)
def test_what_the_writer_accepts_reads_back_equal(n, dims, seq, seed, tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    shape = (n,) if seq is None else (n, seq)
    arrays = [rng.standard_normal((*shape, d)).astype(np.float32) for d in dims]
    mask = None if seq is None else np.arange(seq)[None, :] <= rng.integers(0, seq, (n, 1))
    path = tmp_path_factory.mktemp("ok") / "h.safetensors"
    states = load_hidden_states(save_hidden_states(path, arrays, attention_mask=mask))
    for got, want in zip(states.layers, arrays, strict=True):
        np.testing.assert_array_equal(got, want)
    if mask is not None:
        np.testing.assert_array_equal(states.attention_mask, mask)


def test_the_same_array_twice_is_written(tmp_path: Path) -> None:
    h = layers(count=1)[0]
    view = h[:, :]  # a view of the same memory
    states = load_hidden_states(save_hidden_states(tmp_path / "h.safetensors", [h, h, view]))
    for got in states.layers:
        np.testing.assert_array_equal(got, h)


def test_write_errors_name_the_callers_path(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from lorax_core.gelora import plan_ranks
    from lorax_core.gelora import states as states_module

    absent = tmp_path / "absent" / "h.safetensors"
    with pytest.raises(FileNotFoundError) as info:
        save_hidden_states(absent, layers())
    assert str(absent) in str(info.value) and ".tmp" not in str(info.value)
    plan = plan_ranks([1.0, 2.0], None, None)
    with pytest.raises(FileNotFoundError) as info:
        plan.to_json(tmp_path / "absent" / "plan.json")
    assert str(tmp_path / "absent" / "plan.json") in str(info.value)
    assert ".tmp" not in str(info.value)

    def failing(tensors, path, metadata):  # type: ignore[no-untyped-def]
        raise RuntimeError(f"Error while serializing: I/O error on {path}")

    monkeypatch.setattr(states_module, "save_file", failing)
    target = tmp_path / "h.safetensors"
    with pytest.raises(RuntimeError) as info:
        save_hidden_states(target, layers())
    assert str(info.value) == f"Error while serializing: I/O error on {target}"
    assert list(tmp_path.iterdir()) == []
