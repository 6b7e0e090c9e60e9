"""Capture and pool the hidden states h_0 … h_L of a model, batch by batch.

h_0 is the embedding output (the input of the first block) and h_i the output of block i.
Hugging Face ``transformers`` models are run with ``output_hidden_states=True``; any other
``nn.Module`` is hooked on the blocks named by ``layers=`` (h_0 = the first block's input).

Pooling turns ``[batch, seq, D]`` states into rows, padding never entering:

- ``mean`` (default) — mean over the real (non-padding) tokens of each example;
- ``cls`` — the first real token; ``last`` — the last real token;
- ``tokens`` — a uniformly random subset of all real tokens of all examples (reservoir
  sampling seeded by ``seed``; the same token positions are taken from every layer).

Memory stays O(n_samples × D × layers): rows are written into preallocated buffers and the
example poolings stop running the model once ``n_samples`` examples are held.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import nn

from lorax_core._validation import (
    Constraint,
    Instance,
    Integer,
    NoneValue,
    Options,
    Satisfies,
    validate_params,
)
from lorax_core.gelora.modules import linear_modules
from lorax_core.gelora.states import save_hidden_states

__all__ = ["POOLINGS", "Pooling", "capture_hidden_states", "pool_hidden_states"]

Pooling = Literal["mean", "cls", "last", "tokens"]
POOLINGS: tuple[str, ...] = get_args(Pooling)

Batch = Mapping[str, Any] | torch.Tensor | Sequence[Any]


_COMMON: dict[str, Constraint | tuple[Constraint, ...]] = {
    "pooling": Options(POOLINGS),
    "n_samples": (Integer(low=1), NoneValue()),
    "seed": Integer(low=0),
}


class _Collector:
    """Pools ``[B, seq, D]`` (or already pooled ``[B, D]``) batches into ``n_samples`` rows."""

    def __init__(self, pooling: str, n_samples: int, seed: int) -> None:
        self.pooling = pooling
        self.n_samples = n_samples
        self.rng = np.random.default_rng(seed)
        self.seen = 0  # examples (or real tokens, for "tokens") offered so far
        self.buffers: list[np.ndarray] = []

    @property
    def full(self) -> bool:
        """True once no later batch can change the result (example poolings only)."""
        return self.pooling != "tokens" and self.seen >= self.n_samples

    def add(self, hidden: Sequence[torch.Tensor], mask: torch.Tensor | None) -> None:
        """Add one batch: ``hidden[i]`` is layer i's ``[B, seq, D]`` or ``[B, D]`` states."""
        rows = [self._rows(h, mask) for h in hidden]
        if not self.buffers:
            self.buffers = [np.empty((self.n_samples, r.shape[1]), np.float32) for r in rows]
        if len(rows) != len(self.buffers):
            raise ValueError(f"got {len(rows)} layers in a batch, expected {len(self.buffers)}")
        count = rows[0].shape[0]
        if self.pooling == "tokens":
            stream = np.arange(self.seen, self.seen + count)
            slots = np.where(stream < self.n_samples, stream, self.rng.integers(0, stream + 1))
            keep = np.flatnonzero(slots < self.n_samples)
            # Within one batch a later token replaces an earlier one in the same slot.
            _, last = np.unique(slots[keep][::-1], return_index=True)
            keep = keep[::-1][last]
            for buf, r in zip(self.buffers, rows, strict=True):
                buf[slots[keep]] = r[keep]
        else:
            take = min(count, self.n_samples - self.seen)
            for buf, r in zip(self.buffers, rows, strict=True):
                buf[self.seen : self.seen + take] = r[:take]
        self.seen += count

    def _rows(self, h: torch.Tensor, mask: torch.Tensor | None) -> np.ndarray:
        h = h.detach().to(device="cpu", dtype=torch.float32)
        if h.ndim == 2:
            if self.pooling == "tokens":
                raise ValueError("pooling='tokens' needs per-token [batch, seq, D] hidden states")
            return h.numpy()
        if h.ndim != 3:
            raise ValueError(f"hidden states must be [batch, seq, D] or [batch, D], got {h.shape}")
        m = torch.ones(h.shape[:2], dtype=torch.bool) if mask is None else mask.to("cpu").bool()
        if m.shape != h.shape[:2]:
            raise ValueError(
                f"attention_mask shape {tuple(m.shape)} does not match the hidden states' "
                f"[batch, seq] = {tuple(h.shape[:2])}"
            )
        if not m.any(dim=1).all():
            raise ValueError("attention_mask has an example with no real token")
        return pool_batch(h, m, self.pooling).numpy()

    def result(self) -> list[np.ndarray]:
        if self.seen < self.n_samples:
            unit = "real tokens" if self.pooling == "tokens" else "examples"
            raise ValueError(
                f"n_samples={self.n_samples} is larger than the data, which holds only "
                f"{self.seen} {unit}"
            )
        return self.buffers


def pool_batch(h: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool float ``h`` ``[B, seq, D]`` under bool ``mask`` ``[B, seq]`` (True = real token).

    Returns ``[B, D]`` for ``mean``/``cls``/``last`` and ``[T, D]`` (all T real tokens, in
    row-major order) for ``tokens``. Padded positions never enter, whatever they hold.
    """
    if pooling == "tokens":
        return h[mask]
    if pooling == "mean":
        total = torch.where(mask[..., None], h, 0.0).sum(dim=1)
        return total / mask.sum(dim=1, keepdim=True).to(h.dtype)
    positions = torch.arange(mask.shape[1]).expand_as(mask)
    if pooling == "cls":
        index = torch.where(mask, positions, mask.shape[1]).amin(dim=1)
    else:
        index = torch.where(mask, positions, -1).amax(dim=1)
    return h[torch.arange(h.shape[0]), index]


@validate_params(
    **_COMMON,
    layers=Satisfies((list, tuple), lambda v: len(v) > 0, "a non-empty sequence of arrays"),
    chunk_size=Integer(low=1),
)
def pool_hidden_states(
    layers: Sequence[np.ndarray | torch.Tensor],
    attention_mask: np.ndarray | torch.Tensor | None = None,
    *,
    pooling: str = "mean",
    n_samples: int | None = None,
    seed: int = 0,
    chunk_size: int = 256,
) -> list[np.ndarray]:
    """Pool stored hidden states (e.g. read from a file) into one float32 array per layer.

    Args:
        layers: h_0 … h_L, all ``[n, D_i]`` (already pooled) or all ``[n, seq, D_i]``.
        attention_mask: bool/int ``[n, seq]`` for per-token states; None means all real.
        pooling: see the module docstring; ignored for ``[n, D]`` inputs (except ``tokens``,
            which needs per-token states).
        n_samples: rows wanted; None takes every example (every real token for ``tokens``).
            Example poolings keep a uniformly random subset of ``n_samples`` examples, drawn
            with ``seed`` and kept in file order.
        seed: seeds the example subset, or the token subset of ``tokens``.
        chunk_size: examples pooled at a time.

    Returns:
        ``[n_samples, D_i]`` float32 arrays, one per layer.

    Raises:
        ValueError: bad pooling/n_samples, inconsistent shapes, or ``n_samples`` larger than
            the data.
    """
    tensors = [torch.as_tensor(np.asarray(h)) for h in layers]
    n_rows = {t.shape[0] for t in tensors}
    if len(n_rows) != 1:
        raise ValueError(f"layers have mismatched sample counts: {sorted(n_rows)}")
    if 0 in n_rows:
        raise ValueError("pool_hidden_states: layers must hold at least one example, got 0 rows")
    mask = None if attention_mask is None else torch.as_tensor(np.asarray(attention_mask)).bool()
    if n_samples is None:
        per_token = pooling == "tokens" and tensors[0].ndim == 3
        if not per_token:
            n_samples = tensors[0].shape[0]
        else:
            n_samples = int(mask.sum()) if mask is not None else int(np.prod(tensors[0].shape[:2]))
    n = tensors[0].shape[0]
    rows: torch.Tensor | None = None  # the examples to pool, in file order; None: all
    if pooling != "tokens" and n_samples < n:
        rng = np.random.default_rng(seed)
        rows = torch.from_numpy(np.sort(rng.choice(n, n_samples, replace=False)))
    collector = _Collector(pooling, n_samples, seed)
    for start in range(0, n if rows is None else n_samples, chunk_size):
        part: slice | torch.Tensor = slice(start, start + chunk_size)
        if rows is not None:
            part = rows[part]
        collector.add([t[part] for t in tensors], None if mask is None else mask[part])
        if collector.full:
            break
    return collector.result()


@validate_params(
    **{**_COMMON, "n_samples": Integer(low=1)},
    model=Instance(nn.Module, "a torch.nn.Module"),
    layers=(
        Satisfies(
            (list, tuple),
            lambda names: bool(names) and all(isinstance(n, str) for n in names),
            "a non-empty sequence of module names",
        ),
        NoneValue(),
    ),
)
def capture_hidden_states(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    pooling: str = "mean",
    n_samples: int = 2000,
    layers: Sequence[str] | None = None,
    seed: int = 0,
    path: str | os.PathLike[str] | None = None,
) -> list[np.ndarray] | Path:
    """Run ``model`` over ``batches`` (eval mode, no grad) and pool h_0 … h_L.

    Args:
        model: a ``transformers`` model (hidden states via ``output_hidden_states=True``) or,
            with ``layers``, any ``nn.Module``.
        batches: each a mapping of keyword inputs (e.g. a tokenizer's output; its
            ``attention_mask`` marks padding), a tensor, or a tuple of positional inputs.
        pooling: ``mean`` | ``cls`` | ``last`` | ``tokens`` (see the module docstring).
        n_samples: rows per layer; the first ``n_samples`` examples (or a seeded random subset
            of real tokens). An error if the batches hold fewer.
        layers: names of the blocks to hook, in order; h_0 is the first one's input and h_i
            the i-th one's output. Required for models without ``output_hidden_states``.
        seed: seeds the token subset of ``pooling="tokens"``.
        path: if given, write ``hidden.<i>`` (float32 ``[n_samples, D]``) and metadata to this
            safetensors file atomically and return its path. The metadata's ``modules`` lists
            the model's linear modules by backbone-relative name with their ``[in, out]``
            (``gelora.modules.linear_modules``), so a plan from the file applies to the base,
            task and PEFT-wrapped model alike.

    Returns:
        L + 1 float32 arrays ``[n_samples, D]`` (h_0 … h_L), or the file's path.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: bad arguments, unknown layer names, a model whose blocks cannot be found,
            or fewer examples/tokens than ``n_samples``.
    """
    collector = _Collector(pooling, n_samples, seed)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _LayerHooks(model, layers) as captured:
            for batch in batches:
                mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
                outputs = _call(model, _to_device(batch, device), hooked=layers is not None)
                hidden = list(captured) if layers is not None else _hf_hidden(outputs)
                captured.clear()
                collector.add(hidden, mask)
                if collector.full:
                    break
    finally:
        model.train(was_training)
    rows = collector.result()
    if path is None:
        return rows
    metadata = {
        "pooling": pooling,
        "n_samples": str(n_samples),
        "seed": str(seed),
        "model": type(model).__name__,
        "modules": json.dumps(linear_modules(model)),
    }
    return save_hidden_states(path, rows, metadata=metadata)


class _LayerHooks:
    """Hooks that append h_0 (input of ``layers[0]``) and each layer's output to a list."""

    def __init__(self, model: nn.Module, layers: Sequence[str] | None) -> None:
        self.captured: list[torch.Tensor] = []
        self.handles: list[Any] = []
        if layers is None:
            if getattr(model, "config", None) is None:
                raise ValueError(
                    f"cannot find the blocks of {type(model).__name__}; pass layers=[...] "
                    "naming them in order"
                )
            return
        named = dict(model.named_modules())
        missing = [name for name in layers if name not in named]
        if missing:
            raise ValueError(f"layers names modules the model lacks: {missing}")
        self.handles.append(
            named[layers[0]].register_forward_pre_hook(self._on_input, with_kwargs=True)
        )
        self.handles += [named[name].register_forward_hook(self._on_output) for name in layers]

    def _on_input(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        value = args[0] if args else kwargs.get("hidden_states")
        self.captured.append(_first_tensor(value))

    def _on_output(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self.captured.append(_first_tensor(output))

    def __enter__(self) -> list[torch.Tensor]:
        return self.captured

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()


def _first_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, (tuple, list)) and value:
        value = value[0]
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"a hooked layer produced {type(value).__name__}, not a tensor")
    return value


def _to_device(batch: Batch, device: torch.device) -> Batch:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    if isinstance(batch, Sequence) and not isinstance(batch, str):
        return tuple(v.to(device) if isinstance(v, torch.Tensor) else v for v in batch)
    raise TypeError(f"a batch must be a mapping, a tensor or a tuple, got {type(batch).__name__}")


def _call(model: nn.Module, batch: Batch, *, hooked: bool) -> Any:
    extra = {} if hooked else {"output_hidden_states": True, "return_dict": True}
    if isinstance(batch, Mapping):
        return model(**batch, **extra)
    if isinstance(batch, torch.Tensor):
        return model(batch, **extra)
    return model(*batch, **extra)


def _hf_hidden(outputs: Any) -> list[torch.Tensor]:
    hidden = getattr(outputs, "hidden_states", None)
    if not hidden:
        raise ValueError("the model returned no hidden_states; pass layers=[...] naming its blocks")
    return list(hidden)
