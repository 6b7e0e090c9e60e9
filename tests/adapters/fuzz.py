"""Hypothesis strategies that corrupt an adapter folder (ours or PEFT's), shared by the load and
import property tests: JSON fields set to wrong types or out-of-range values or removed,
safetensors files truncated or garbled, tensors added, dropped, reshaped, re-typed or NaN'd."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from hypothesis import strategies as st
from safetensors.torch import load, save
from torch import nn

ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 2, 3, -1, 2**63, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.one_of(st.integers(-3, 3), st.text(max_size=3)), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(-3, 3), max_size=2),
)
DTYPES = [torch.float16, torch.bfloat16, torch.float64, torch.int32, torch.int8, torch.bool]


def _paths(document: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path into a JSON document (dict keys and list indices)."""
    out = []
    if isinstance(document, dict):
        for key, value in document.items():
            out.append((*prefix, key))
            out.extend(_paths(value, (*prefix, key)))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            out.append((*prefix, index))
            out.extend(_paths(value, (*prefix, index)))
    return out


@st.composite
def json_edit(draw: st.DrawFn, document: Any) -> Any:
    """A copy of ``document`` with one field replaced by an odd value, or removed."""
    doc = json.loads(json.dumps(document))
    paths = _paths(doc)
    path = draw(st.sampled_from(paths))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(ODD_VALUES)
    return doc


@st.composite
def tensors_edit(draw: st.DrawFn, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy of ``tensors`` with one tensor dropped, added, reshaped, re-typed or NaN'd."""
    out = {k: v.clone() for k, v in tensors.items()}
    key = draw(st.sampled_from(sorted(out)))
    kind = draw(st.sampled_from(["drop", "extra", "shape", "dtype", "nan", "inf", "scalar"]))
    if kind == "drop":
        del out[key]
    elif kind == "extra":
        out[key.rsplit(".", 1)[0] + draw(st.sampled_from([".lora_X", ".init_lora_A", "_x"]))] = (
            torch.zeros(2, 2)
        )
    elif kind == "shape":
        rows = draw(st.integers(0, 5))
        out[key] = torch.zeros(rows, *out[key].shape[1:], dtype=out[key].dtype)
    elif kind == "dtype":
        out[key] = out[key].to(draw(st.sampled_from(DTYPES)))
    elif kind == "scalar":
        out[key] = torch.tensor(1.0)
    else:
        value = float("nan") if kind == "nan" else float("inf")
        flat = out[key].flatten().clone()
        if flat.numel():
            flat[draw(st.integers(0, flat.numel() - 1))] = value
        out[key] = flat.reshape(out[key].shape)
    return out


@st.composite
def bytes_edit(draw: st.DrawFn, blob: bytes) -> bytes:
    """``blob`` truncated, with bytes overwritten, or with garbage appended."""
    kind = draw(st.sampled_from(["truncate", "flip", "append"]))
    if kind == "truncate":
        return blob[: draw(st.integers(0, len(blob) - 1))]
    if kind == "append":
        return blob + draw(st.binary(min_size=1, max_size=16))
    data = bytearray(blob)
    for _ in range(draw(st.integers(1, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@st.composite
def folder_edit(draw: st.DrawFn, config: Any, weights: bytes, checksum_key: str | None) -> Any:
    """``(config document, weights bytes)`` with one corruption of either; with
    ``checksum_key`` the config's checksum is (usually) updated to the new weights, so the
    corruption reaches the checks behind the checksum."""
    target = draw(st.sampled_from(["json", "tensors", "bytes"]))
    if target == "json":
        return draw(json_edit(config)), weights
    if target == "tensors":
        new = save(draw(tensors_edit(load(weights))))
    else:
        new = draw(bytes_edit(weights))
    document = json.loads(json.dumps(config))
    if checksum_key is not None and draw(st.integers(0, 4)) > 0:
        document[checksum_key] = hashlib.sha256(new).hexdigest()
    return document, new


def write_folder(folder: Path, names: tuple[str, str], config: Any, weights: bytes) -> None:
    """Write ``config`` (JSON) and ``weights`` as the files ``names`` of ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / names[0]).write_text(json.dumps(config), encoding="utf-8")
    (folder / names[1]).write_bytes(weights)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every state-dict entry of ``model``."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    """Whether ``model``'s state dict equals ``before`` bit for bit (same keys too)."""
    now = model.state_dict()
    return now.keys() == before.keys() and all(torch.equal(now[k], before[k]) for k in now)
