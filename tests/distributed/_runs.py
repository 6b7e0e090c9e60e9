"""One training run of every adapter form and allocator on a real (truncated) MiniLM, the same
global batches whatever the number of processes, sharded with FSDP2 or wrapped in DDP.

``run(...)`` is the single-process reference when no process group exists; inside a gloo group
each process takes its slice of every global batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

STEPS, SAVE_AT, BATCH, N_TEXTS, LENGTH = 8, 4, 8, 16, 16
METHODS = ("lora", "slora", "dora", "adalora", "elalora")
CONFIGS: dict[str, dict[str, Any]] = {
    "lora": {"method": "lora", "r": 4, "alpha": 8.0},
    "slora": {"method": "slora", "r": 4, "alpha": 8.0},
    "dora": {"method": "dora", "r": 4, "alpha": 8.0},
    "adalora": {"method": "svd", "r": 4, "alpha": 8.0},
    "elalora": {"method": "svd", "r": 4, "alpha": 8.0, "r_max": 8},
}


def texts() -> list[str]:
    """The 16 BBC News texts every run uses (first 200 characters)."""
    from lorax_core.datasets import bbc_news

    train, _ = bbc_news(seed=0)
    return [t[:200] for t in train.texts[:N_TEXTS]]


def inputs(tokenizer_dir: str, items: list[str]) -> dict[str, torch.Tensor]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    enc = tok(items, truncation=True, max_length=LENGTH, padding="max_length", return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def build(method: str, model_dir: str) -> nn.Module:
    """A one-layer MiniLM in float64 with the method's adapters on query and value (seeded, eval
    mode). float64, so that a reordered sum (a two-way average of half-batch gradients) stays
    at 1e-16 and Adam's normalisation of tiny gradients cannot amplify it past the tolerance."""
    from transformers import AutoModel

    from lorax_core.adapters import AdapterConfig, inject

    model = AutoModel.from_pretrained(model_dir, dtype=torch.float64)
    model.encoder.layer = model.encoder.layer[:1]
    config = AdapterConfig(**CONFIGS[method], target_modules=["query", "value"], seed=0)
    inject(model, config)
    if method in ("lora", "slora", "dora"):  # B off zero, so every factor gets a gradient
        generator = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("lora_B"):
                    p.copy_(0.05 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return model.eval()


def shard(model: nn.Module) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    for layer in model.encoder.layer:
        fully_shard(layer)
    fully_shard(model)
    return model


def make_hook(method: str, model: nn.Module, optimizer: torch.optim.Optimizer) -> Any:
    from lorax_core.allocators import AdaLoRA, ElaLoRA

    if method == "adalora":
        return AdaLoRA(model, STEPS, target_r=2, t_init=2, t_final=2, optimizer=optimizer)
    if method == "elalora":
        return ElaLoRA(model, STEPS, 2, 2, 2, b=2, k=2, optimizer=optimizer)
    return None


def world_rank() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def batch_rows(step: int) -> list[int]:
    """The global batch of ``step`` (1-based): BATCH rows of the 16, a seeded permutation."""
    order = torch.randperm(N_TEXTS, generator=torch.Generator().manual_seed(step))
    return order[:BATCH].tolist()


def train(
    method: str,
    model_dir: str,
    data: dict[str, torch.Tensor],
    *,
    wrap: str = "none",
    first: int = 1,
    last: int = STEPS,
    checkpoint: Path | None = None,
    resume: Path | None = None,
) -> dict[str, Any]:
    """Steps ``first..last``; ``wrap`` is ``"fsdp"``, ``"ddp"`` or ``"none"``. Saves a run
    checkpoint after step SAVE_AT into ``checkpoint``, or starts from ``resume``."""
    from lorax_core._distributed import full, unwrap
    from lorax_core.training.distributed import load_run, save_run

    world, rank = world_rank()
    model = build(method, model_dir)
    if wrap == "fsdp":
        model = shard(model)
    elif wrap == "ddp":
        model = nn.parallel.DistributedDataParallel(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=5e-3, weight_decay=0.01)
    hook = make_hook(method, model, optimizer)
    targets = torch.randn(
        N_TEXTS, 384, generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )
    if resume is not None:
        first = load_run(resume, model, optimizer, hook=hook) + 1
    losses = []
    for t in range(first, last + 1):
        rows = batch_rows(t)[rank::world]
        hidden = model(**{k: v[rows] for k, v in data.items()}).last_hidden_state[:, 0]
        loss = (hidden - targets[rows]).pow(2).mean()
        total = loss if hook is None else loss + hook.orthogonal_regularizer()
        total.backward()
        optimizer.step()
        if hook is not None:
            hook.step(t)
        optimizer.zero_grad()
        value = loss.detach().clone()
        if world > 1:
            dist.all_reduce(value)
            value /= world
        losses.append(float(value))
        if checkpoint is not None and t == SAVE_AT:
            save_run(checkpoint, model, optimizer, step=t, hook=hook)
    inner = unwrap(model)
    final = {n: full(p.detach()).clone() for n, p in inner.named_parameters() if p.requires_grad}
    result: dict[str, Any] = {"losses": losses, "params": final, "model": model}
    if hook is not None:
        result["ranks"] = hook.ranks()
        result["history"] = hook.history()
    return result
