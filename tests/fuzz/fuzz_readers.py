"""Coverage-guided fuzzing of the file readers with atheris (by hand; the suite runs hypothesis).

Targets:

- ``header``: :func:`lorax_core._safetensors.parse_header` on arbitrary bytes. It must return a
  header whose byte ranges tile the data section exactly, or raise ``ValueError``.
- ``states``: :func:`lorax_core.gelora.load_hidden_states` on arbitrary file contents. It must
  return float32, finite, consistently shaped layers equal to the file's bytes, or raise
  ``ValueError`` naming the file.
- ``plan``: :func:`lorax_core.gelora.schema.plan_from_dict` on arbitrary JSON text. It must
  return a plan that writes and reads back equal, or raise ``ValueError``.

Any other exception is a finding: atheris stops and prints it with the input that caused it.
Valid inputs seed the corpus. A bounded run (``pip install atheris``)::

    python tests/fuzz/fuzz_readers.py header -atheris_runs=200000
    python tests/fuzz/fuzz_readers.py states -atheris_runs=20000
    python tests/fuzz/fuzz_readers.py plan -atheris_runs=50000

Other libFuzzer options (``-max_len=4096``, ``-max_total_time=60``, a corpus folder) follow.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import atheris

# The package may be installed editable (a custom loader): instrument its modules by name.
with atheris.instrument_imports(include=["lorax_core"], enable_loader_override=False):
    import numpy as np

    from lorax_core._safetensors import parse_header
    from lorax_core.gelora import load_hidden_states, plan_ranks, save_hidden_states
    from lorax_core.gelora.schema import plan_from_dict, plan_to_dict

_WORK = Path(tempfile.mkdtemp(prefix="lorax-fuzz-"))
_FILE = _WORK / "input.safetensors"


def fuzz_header(data: bytes) -> None:
    try:
        header = parse_header(data, "input")
    except ValueError:
        return
    ranges = sorted(info.data_offsets for info in header.tensors.values())
    position = 0
    for start, end in ranges:
        assert start == position <= end, (start, end, position)
        position = end
    assert position == header.data_size == len(data) - header.data_start


def fuzz_states(data: bytes) -> None:
    _FILE.write_bytes(data)
    try:
        states = load_hidden_states(_FILE)
    except ValueError as err:
        assert str(err).startswith(f"{_FILE}: "), err
        return
    header = parse_header(data, "input")
    assert len({h.shape[0] for h in states.layers}) == 1
    assert {h.ndim for h in states.layers} in ({2}, {3})
    for i, h in enumerate(states.layers):
        assert h.dtype == np.float32 and np.isfinite(h).all()
        start, end = header.tensors[f"hidden.{i}"].data_offsets
        if header.tensors[f"hidden.{i}"].dtype == "F32":
            raw = data[header.data_start + start : header.data_start + end]
            expected = np.frombuffer(raw, "<f4").reshape(h.shape)
            assert np.array_equal(h, expected)


def fuzz_plan(data: bytes) -> None:
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return
    try:
        plan = plan_from_dict(doc)
    except ValueError:
        return
    again = plan_from_dict(json.loads(json.dumps(plan_to_dict(plan))))
    assert again == plan


def _seeds() -> dict[str, list[bytes]]:
    rng = np.random.default_rng(0)
    flat = [rng.standard_normal((4, 3)).astype(np.float32) for _ in range(3)]
    tokens = [rng.standard_normal((2, 3, 2)).astype(np.float32) for _ in range(2)]
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    files = [
        save_hidden_states(_WORK / "flat.safetensors", flat, metadata={"a": "b"}),
        save_hidden_states(_WORK / "tokens.safetensors", tokens, attention_mask=mask),
    ]
    states = [f.read_bytes() for f in files]
    shapes = {"layer.0.q": (4, 4), "layer.1.q": (4, 6), "layer.2.q": (6, 2)}
    plans = [
        json.dumps(plan_to_dict(plan_ranks([1.0, 3.0, 2.5, 6.0], shapes, None))).encode(),
        json.dumps(
            plan_to_dict(plan_ranks([1.0, 3.0, 2.5, 6.0], shapes, None, budget="uniform:2"))
        ).encode(),
    ]
    empty = struct.pack("<Q", 2) + b"{}"
    return {"header": [*states, empty], "states": states, "plan": plans}


_TARGETS: dict[str, Callable[[bytes], None]] = {
    "header": fuzz_header,
    "states": fuzz_states,
    "plan": fuzz_plan,
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in _TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(_TARGETS)}}} [libFuzzer options] [corpus]")
    target = sys.argv.pop(1)
    args = sys.argv
    if not any(not a.startswith("-") for a in args[1:]):  # no corpus folder: seed one
        corpus = _WORK / f"corpus-{target}"
        corpus.mkdir()
        for i, seed in enumerate(_seeds()[target]):
            (corpus / f"seed{i}").write_bytes(seed)
        args = [*args, str(corpus)]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    atheris.Setup(args, _TARGETS[target])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
