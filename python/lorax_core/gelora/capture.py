"""Capture and pool the hidden states h_0 … h_L of a model, batch by batch.

h_0 is the input of the first block (the embedding output) and h_i the output of block i.
The blocks of a Hugging Face ``transformers`` model are found by itself (the one
``nn.ModuleList`` of ``config.num_hidden_layers`` modules); any other ``nn.Module`` is hooked
on the blocks named by ``layers=``.

Hooks on the blocks pool each state on its own device as soon as the block has run and move
only the pooled rows (float32) to the host, so memory stays bounded by one batch's activations
plus the pooled rows; the forward pass stops after the last state it needs (a causal LM's
final norm and output head never run). No autograd graph is built (``torch.inference_mode``).

Pooling turns ``[batch, seq, D]`` states into rows, padding never entering:

- ``mean`` (default) — mean over the real (non-padding) tokens of each example;
- ``cls`` — the first real token; ``last`` — the last real token;
- ``tokens`` — a uniformly random subset of all real tokens of all examples (reservoir
  sampling seeded by ``seed``; the same token positions are taken from every layer).

Decoders (docs/gelora.md): h_L is the last block's output *before* the model's final norm
(``final_norm=True`` takes the backbone's normed output instead, as ``output_hidden_states``
does), and for causal LMs the first real token of every example — the attention sink, whose
states are orders of magnitude larger than the others' — is left out of ``mean``, ``cls`` and
``tokens`` (``skip_first=False`` keeps it).

Memory stays O(n_samples × D × layers): rows are written into preallocated buffers and the
example poolings stop running the model once ``n_samples`` examples are held.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import nn

from lorax_core._validation import (
    Bool,
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

__all__ = [
    "POOLINGS",
    "Pooling",
    "capture_hidden_states",
    "find_blocks",
    "is_causal_lm",
    "pool_hidden_states",
]

Pooling = Literal["mean", "cls", "last", "tokens"]
POOLINGS: tuple[str, ...] = get_args(Pooling)

Batch = Mapping[str, Any] | torch.Tensor | Sequence[Any]


_COMMON: dict[str, Constraint | tuple[Constraint, ...]] = {
    "pooling": Options(POOLINGS),
    "n_samples": (Integer(low=1), NoneValue()),
    "seed": Integer(low=0),
}


@dataclass(frozen=True)
class _Selection:
    """What one batch contributes: buffer rows ``slots`` <- pooled rows (``keep`` of them).

    ``mask`` is the bool ``[B, seq]`` of the positions pooling may use (None: per-example
    ``[B, D]`` states); ``keep`` indexes the pooled rows (examples, or real tokens in row-major
    order for ``tokens``) that are written, into buffer rows ``slots``.
    """

    mask: torch.Tensor | None
    keep: torch.Tensor
    slots: np.ndarray


class _Collector:
    """Pools each layer's ``[B, seq, D]`` (or already pooled ``[B, D]``) states of a batch into
    ``n_samples`` float32 rows per layer, on the states' own device."""

    def __init__(self, pooling: str, n_samples: int, seed: int, skip_first: bool) -> None:
        self.pooling = pooling
        self.n_samples = n_samples
        self.skip_first = skip_first
        self.rng = np.random.default_rng(seed)
        self.seen = 0  # examples (or real tokens, for "tokens") offered so far
        self.buffers: list[np.ndarray | None] = []
        self.selection: _Selection | None = None
        self._masks: dict[torch.device, torch.Tensor] = {}

    @property
    def full(self) -> bool:
        """True once no later batch can change the result (example poolings only)."""
        return self.pooling != "tokens" and self.seen >= self.n_samples

    def begin(self, mask: Any) -> None:
        """Prepare a batch of ``mask`` ``[B, seq]`` (1 = real token; None: every position)."""
        self._masks = {}
        self.selection = None
        if mask is not None:
            self._select(torch.as_tensor(mask).to("cpu").bool())

    def _select(self, real: torch.Tensor) -> None:
        if not real.any(dim=1).all():
            raise ValueError("attention_mask has an example with no real token")
        use = real
        if self.skip_first and self.pooling != "last":
            first = torch.where(real, torch.arange(real.shape[1]), real.shape[1]).amin(dim=1)
            use = real.clone()
            use[torch.arange(real.shape[0]), first] = False
            if not use.any(dim=1).all():
                raise ValueError(
                    "an example has no real token but its first, which skip_first leaves out "
                    "of the pooling; drop one-token texts or pass skip_first=False"
                )
        if self.pooling == "tokens":
            count = int(use.sum())
            stream = np.arange(self.seen, self.seen + count)
            slots = np.where(stream < self.n_samples, stream, self.rng.integers(0, stream + 1))
            keep = np.flatnonzero(slots < self.n_samples)
            # Within one batch a later token replaces an earlier one in the same slot.
            _, last = np.unique(slots[keep][::-1], return_index=True)
            keep = keep[::-1][last]
            self.selection = _Selection(use, torch.from_numpy(keep), slots[keep])
        else:
            count = real.shape[0]
            take = min(count, self.n_samples - self.seen)
            slots = np.arange(self.seen, self.seen + take)
            self.selection = _Selection(use, torch.arange(take), slots)
        self.seen += count

    def add(self, index: int, h: torch.Tensor) -> None:
        """Pool layer ``index``'s states of the current batch into its buffer."""
        h = h.detach()
        if h.ndim not in (2, 3):
            raise ValueError(
                f"hidden states must be [batch, seq, D] or [batch, D], got {tuple(h.shape)}"
            )
        if h.ndim == 2 and self.pooling == "tokens":
            raise ValueError("pooling='tokens' needs per-token [batch, seq, D] hidden states")
        if self.selection is None:  # no attention mask: every position is real
            if h.ndim == 3:
                self._select(torch.ones(h.shape[:2], dtype=torch.bool))
            else:
                self.selection = _Selection(None, *self._take(h.shape[0]))
        selection = self.selection
        assert selection is not None
        if h.ndim == 2:
            rows = h[selection.keep.to(h.device)]
        elif selection.mask is not None:
            mask = self._mask_on(h.device, selection.mask)
            if mask.shape != h.shape[:2]:
                raise ValueError(
                    f"attention_mask shape {tuple(mask.shape)} does not match the hidden "
                    f"states' [batch, seq] = {tuple(h.shape[:2])}"
                )
            keep = selection.keep.to(h.device)
            if self.pooling == "tokens":
                rows = h[mask][keep]
            else:
                rows = pool_batch(h[keep], mask[keep], self.pooling)
        else:
            raise ValueError("the layers' states mix [batch, D] and [batch, seq, D]")
        host = rows.to(device="cpu", dtype=torch.float32).numpy()
        while len(self.buffers) <= index:
            self.buffers.append(None)
        buffer = self.buffers[index]
        if buffer is None:
            buffer = self.buffers[index] = np.empty((self.n_samples, host.shape[1]), np.float32)
        buffer[selection.slots] = host

    def _take(self, count: int) -> tuple[torch.Tensor, np.ndarray]:
        take = min(count, self.n_samples - self.seen)
        slots = np.arange(self.seen, self.seen + take)
        self.seen += count
        return torch.arange(take), slots

    def _mask_on(self, device: torch.device, mask: torch.Tensor) -> torch.Tensor:
        if device not in self._masks:
            self._masks[device] = mask.to(device)
        return self._masks[device]

    def end(self, n_layers: int) -> None:
        """Finish a batch that should have produced ``n_layers`` states."""
        got = len(self.buffers)
        if got != n_layers:
            raise ValueError(f"got {got} layers in a batch, expected {n_layers}")
        self.selection = None

    def result(self) -> list[np.ndarray]:
        if self.seen < self.n_samples:
            unit = "real tokens" if self.pooling == "tokens" else "examples"
            kept = " (first tokens left out)" if self.skip_first and unit != "examples" else ""
            raise ValueError(
                f"n_samples={self.n_samples} is larger than the data, which holds only "
                f"{self.seen} {unit}{kept}"
            )
        return [b for b in self.buffers if b is not None]


def pool_batch(h: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool ``h`` ``[B, seq, D]`` under bool ``mask`` ``[B, seq]`` (True = use), on h's device.

    Returns float32 ``[B, D]`` for ``mean``/``cls``/``last`` and ``[T, D]`` (all T used tokens,
    in row-major order) for ``tokens``. Positions outside the mask never enter, whatever they
    hold; the mean is accumulated in float32 whatever ``h``'s dtype.
    """
    if pooling == "tokens":
        return h[mask].float()
    if pooling == "mean":
        total = torch.where(mask[..., None], h, 0).sum(dim=1, dtype=torch.float32)
        return total / mask.sum(dim=1, keepdim=True).to(torch.float32)
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    if pooling == "cls":
        index = torch.where(mask, positions, mask.shape[1]).amin(dim=1)
    else:
        index = torch.where(mask, positions, -1).amax(dim=1)
    return h[torch.arange(h.shape[0], device=h.device), index].float()


@validate_params(
    **_COMMON,
    layers=Satisfies((list, tuple), lambda v: len(v) > 0, "a non-empty sequence of arrays"),
    chunk_size=Integer(low=1),
    skip_first=Bool(),
)
def pool_hidden_states(
    layers: Sequence[np.ndarray | torch.Tensor],
    attention_mask: np.ndarray | torch.Tensor | None = None,
    *,
    pooling: str = "mean",
    n_samples: int | None = None,
    seed: int = 0,
    chunk_size: int = 256,
    skip_first: bool = False,
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
        skip_first: leave each example's first real token out of ``mean``, ``cls`` and
            ``tokens`` (per-token states only).

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
    per_token = tensors[0].ndim == 3
    mask = None if attention_mask is None else torch.as_tensor(np.asarray(attention_mask)).bool()
    if mask is None and per_token:
        mask = torch.ones(tensors[0].shape[:2], dtype=torch.bool)
    skip = skip_first and per_token
    if n_samples is None:
        if pooling == "tokens" and mask is not None:
            n_samples = int(mask.sum()) - (mask.shape[0] if skip else 0)
        else:
            n_samples = tensors[0].shape[0]
    n = tensors[0].shape[0]
    rows: torch.Tensor | None = None  # the examples to pool, in file order; None: all
    if pooling != "tokens" and n_samples < n:
        rng = np.random.default_rng(seed)
        rows = torch.from_numpy(np.sort(rng.choice(n, n_samples, replace=False)))
    collector = _Collector(pooling, n_samples, seed, skip)
    for start in range(0, n if rows is None else n_samples, chunk_size):
        part: slice | torch.Tensor = slice(start, start + chunk_size)
        if rows is not None:
            part = rows[part]
        chunk = [t[part] for t in tensors]
        collector.begin(None if mask is None else mask[part])
        for i, t in enumerate(chunk):
            collector.add(i, t)
        collector.end(len(chunk))
        if collector.full:
            break
    return collector.result()


def is_causal_lm(model: nn.Module) -> bool:
    """Whether ``model`` is (the backbone of) a decoder-only causal LM.

    True when its class or one of ``config.architectures`` is a ``…ForCausalLM`` /
    ``…LMHeadModel``, or ``config.is_decoder`` is set; encoder-decoder models are not.
    """
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    names = [type(model).__name__, *(getattr(config, "architectures", None) or [])]
    causal = any(str(n).endswith(("ForCausalLM", "LMHeadModel")) for n in names)
    return causal or getattr(config, "is_decoder", False) is True


def find_blocks(model: nn.Module) -> list[str]:
    """Names of the blocks of a ``transformers`` model, in order.

    The blocks are the one ``nn.ModuleList`` of ``config.num_hidden_layers`` modules.

    Raises:
        ValueError: the model has no config, or no such list, or several.
    """
    config = getattr(model, "config", None)
    text_config = getattr(config, "get_text_config", None)
    config = text_config() if callable(text_config) else config
    count = getattr(config, "num_hidden_layers", None)
    found = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == count and count
    ]
    if len(found) != 1:
        why = "no" if not found else f"{len(found)} ({', '.join(found[:3])})"
        raise ValueError(
            f"cannot find the blocks of {type(model).__name__}: {why} module lists of "
            f"num_hidden_layers modules; pass layers=[...] naming them in order"
        )
    return [f"{found[0]}.{i}" for i in range(count)]


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
    skip_first=(Bool(), NoneValue()),
    final_norm=Bool(),
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
    skip_first: bool | None = None,
    final_norm: bool = False,
) -> list[np.ndarray] | Path:
    """Run ``model`` over ``batches`` (eval mode, inference mode) and pool h_0 … h_L.

    Args:
        model: a ``transformers`` model (its blocks found by :func:`find_blocks`) or, with
            ``layers``, any ``nn.Module``. Loaded on one device, or spread over several (or
            offloaded) with ``device_map``: each state is pooled where its block ran.
        batches: each a mapping of keyword inputs (e.g. a tokenizer's output; its
            ``attention_mask`` marks padding), a tensor, or a tuple of positional inputs;
            moved to the device of the model's first parameter (left alone for a model
            dispatched with ``device_map``, whose hooks place them).
        pooling: ``mean`` | ``cls`` | ``last`` | ``tokens`` (see the module docstring).
        n_samples: rows per layer; the first ``n_samples`` examples (or a seeded random subset
            of real tokens). An error if the batches hold fewer.
        layers: names of the blocks to hook, in order; h_0 is the first one's input and h_i
            the i-th one's output. Default: the model's blocks (:func:`find_blocks`).
        seed: seeds the token subset of ``pooling="tokens"``.
        path: if given, write ``hidden.<i>`` (float32 ``[n_samples, D]``) and metadata to this
            safetensors file atomically and return its path. The metadata's ``modules`` lists
            the model's linear modules by backbone-relative name with their ``[in, out]``
            (``gelora.modules.linear_modules``), so a plan from the file applies to the base,
            task and PEFT-wrapped model alike.
        skip_first: leave each example's first real token out of ``mean``, ``cls`` and
            ``tokens``; None (default): True for causal LMs (:func:`is_causal_lm`).
        final_norm: take h_L from the backbone's output (after a decoder's final norm, as
            ``output_hidden_states`` gives it) instead of the last block's output. Only for
            ``transformers`` models without ``layers``.

    Returns:
        L + 1 float32 arrays ``[n_samples, D]`` (h_0 … h_L), or the file's path.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: bad arguments, unknown layer names, a model whose blocks cannot be found,
            or fewer examples/tokens than ``n_samples``.
    """
    skip = is_causal_lm(model) if skip_first is None else skip_first
    if final_norm and layers is not None:
        raise ValueError("capture_hidden_states: final_norm must be False when layers are given")
    collector = _Collector(pooling, n_samples, seed, skip)
    device = _input_device(model)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), _LayerHooks(model, layers, final_norm, collector) as hooks:
            for batch in batches:
                mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
                collector.begin(mask)
                hooks.run(model, batch if device is None else _to_device(batch, device))
                collector.end(hooks.n_states)
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
        "skip_first": str(skip).lower(),
        "final_norm": str(final_norm).lower(),
        "model": type(model).__name__,
        "modules": json.dumps(linear_modules(model)),
    }
    return save_hidden_states(path, rows, metadata=metadata)


class _StopForwardError(Exception):
    """Raised by the hook of the last state needed: the rest of the forward pass is skipped."""


class _LayerHooks:
    """Hooks that pool h_0 (input of the first block) and each block's output as it runs."""

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str] | None,
        final_norm: bool,
        collector: _Collector,
    ) -> None:
        self.collector = collector
        self.handles: list[Any] = []
        names = find_blocks(model) if layers is None else list(layers)
        named = dict(model.named_modules())
        missing = [name for name in names if name not in named]
        if missing:
            raise ValueError(f"layers names modules the model lacks: {missing}")
        self.n_states = len(names) + 1
        self.handles.append(
            named[names[0]].register_forward_pre_hook(self._on_input, with_kwargs=True)
        )
        blocks = names[:-1] if final_norm else names
        for i, name in enumerate(blocks, 1):
            self.handles.append(named[name].register_forward_hook(self._on_output(i)))
        if final_norm:
            backbone = getattr(model, "base_model", model)
            self.handles.append(backbone.register_forward_hook(self._on_output(len(names))))

    def run(self, model: nn.Module, batch: Batch) -> None:
        """Run ``model`` on ``batch`` until the last state is pooled."""
        try:
            if isinstance(batch, Mapping):
                model(**batch)
            elif isinstance(batch, torch.Tensor):
                model(batch)
            else:
                model(*batch)
        except _StopForwardError:
            return

    def _on_input(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        value = args[0] if args else kwargs.get("hidden_states")
        self.collector.add(0, _first_tensor(value))

    def _on_output(self, index: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            self.collector.add(index, _first_tensor(output))
            if index == self.n_states - 1:
                raise _StopForwardError

        return hook

    def __enter__(self) -> _LayerHooks:
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()


def _first_tensor(value: Any) -> torch.Tensor:
    hidden = getattr(value, "last_hidden_state", None)
    if isinstance(hidden, torch.Tensor):
        return hidden
    if isinstance(value, (tuple, list)) and value:
        value = value[0]
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"a hooked layer produced {type(value).__name__}, not a tensor")
    return value


def _input_device(model: nn.Module) -> torch.device | None:
    """Where inputs go: the first parameter's device; None for a dispatched model."""
    if getattr(model, "hf_device_map", None):
        return None
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _to_device(batch: Batch, device: torch.device) -> Batch:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    if isinstance(batch, Sequence) and not isinstance(batch, str):
        return tuple(v.to(device) if isinstance(v, torch.Tensor) else v for v in batch)
    raise TypeError(f"a batch must be a mapping, a tensor or a tuple, got {type(batch).__name__}")
