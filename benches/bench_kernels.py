"""Fused CUDA kernels against their torch references (docs/kernels.md).

On a GPU: the DoRA row norm for 4096×4096 and 4096×11008 bfloat16 layers at r ∈ {8, 64} (time
and extra memory), and the importance update of one such layer's SVD adapter and of a whole
SmolLM2-shaped model (30 layers, every linear layer targeted), kernel vs torch path; targets
importance ≥ 3×, DoRA ≥ 2× with memory O(out·r). Without a GPU (or with ``--cpu``): the torch
reference's per-step op count (torch.profiler) and time on the CPU for MiniLM and the SmolLM2
shape, the figures the fused kernel is designed against.

Usage: ``python benches/bench_kernels.py [--cpu] [--repeats N] [--json PATH]``. Rows are printed
as one table and, with ``--json``, written (atomically) as a list of objects.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from functools import partial
from typing import Any

import torch
from torch import nn

from harness import cuda_sync, repeat
from lorax_core import kernels
from lorax_core._atomic import atomic_write_bytes
from lorax_core.adapters import SVDLinear
from lorax_core.allocators.scores import ImportanceScores
from lorax_core.kernels import reference

# (in, out) of the targeted linear layers of one transformer block.
MINILM_BLOCK = [(384, 384)] * 4 + [(384, 1536), (1536, 384)]  # q k v o, ffn in/out; 6 blocks
SMOLLM2_BLOCK = [(576, 576), (576, 192), (576, 192), (576, 576), (576, 1536), (576, 1536)]
SMOLLM2_BLOCK.append((1536, 576))  # q k v o gate up down; 30 blocks
MODELS = {
    "MiniLM (6 × 6 linear)": MINILM_BLOCK * 6,
    "SmolLM2 shape (30 × 7 linear)": SMOLLM2_BLOCK * 30,
}
LAYERS = [(4096, 4096), (4096, 11008)]  # (out, in)
RANKS = [8, 64]


def _scores_for(shapes: list[tuple[int, int]], r: int, device: str) -> ImportanceScores:
    """Importance state of SVD adapters (capacity 1.5 r) on layers of ``shapes``, with gradients."""
    mods = {}
    for i, (fin, fout) in enumerate(shapes):
        m = SVDLinear(nn.Linear(fin, fout, bias=False, device=device), r=r, r_max=r + r // 2)
        for p in (m.lora_A, m.lora_E, m.lora_B):
            p.grad = torch.randn_like(p)
        mods[str(i)] = m
    return ImportanceScores(mods, 0.85, 0.85)


def cpu_profile(repeats: int) -> list[dict[str, Any]]:
    """Op counts and median times of the torch reference's update and per-rank scores on CPU."""
    from torch.profiler import ProfilerActivity, profile

    rows = []
    for name, shapes in MODELS.items():
        scores = _scores_for(shapes, 8, "cpu")
        n_elements = sum(t.numel() for ts in scores.ipt.values() for t in ts)
        for step, fn in (("update", scores.update), ("rank scores", scores.rank_scores)):
            samples, _ = repeat(fn, repeats, warmup=2)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fn()
            events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
            foreach = sum(e.count for e in events if "_foreach_" in e.key)
            rows.append(
                {
                    "bench": f"importance {step} (torch, CPU)",
                    "case": f"{name}: {3 * len(shapes)} tensors, {n_elements / 1e6:.2f} M elements",
                    "aten ops": sum(e.count for e in events),
                    "foreach ops": foreach,
                    "torch ms": 1e3 * samples.median(),
                }
            )
    return rows


def _gpu_time(fn: Any, repeats: int) -> float:
    samples, _ = repeat(fn, repeats, warmup=3, sync=cuda_sync("cuda"))
    return 1e3 * samples.median()


def _peak_extra_mib(fn: Any) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - start) / 2**20


def gpu_benches(repeats: int) -> list[dict[str, Any]]:
    """Kernel vs torch reference on the GPU (the kernels are built first)."""
    if not kernels.load():
        raise SystemExit(f"bench_kernels: CUDA kernels unavailable: {kernels.status()}")
    rows = []
    for out, fin in LAYERS:
        W = torch.randn(out, fin, device="cuda", dtype=torch.bfloat16)
        for r in RANKS:
            A = torch.randn(r, fin, device="cuda") / fin**0.5
            B = torch.randn(out, r, device="cuda")
            fused = partial(torch.ops.lorax_core.dora_row_norm, W, A, B, 2.0)
            plain = partial(reference.dora_row_norm, W, A, B, 2.0)
            t_ref, t_ker = _gpu_time(plain, repeats), _gpu_time(fused, repeats)
            rows.append(
                {
                    "bench": "DoRA row norm",
                    "case": f"{out}×{fin} bf16, r={r}",
                    "torch ms": t_ref,
                    "kernel ms": t_ker,
                    "speedup": t_ref / t_ker,
                    "target": 2.0,
                    "torch extra MiB": _peak_extra_mib(plain),
                    "kernel extra MiB": _peak_extra_mib(fused),
                }
            )
            rows.append(_importance_row(f"{out}×{fin}, r={r}", [(fin, out)], r, repeats))
    rows.append(_importance_row("SmolLM2 shape, 210 adapters, r=8", SMOLLM2_BLOCK * 30, 8, repeats))
    return rows


def _importance_row(
    case: str, shapes: list[tuple[int, int]], r: int, repeats: int
) -> dict[str, Any]:
    """Update + per-rank scores: one fused launch vs the torch path (foreach + per-module ops)."""
    scores = _scores_for(shapes, r, "cuda")

    def torch_path() -> None:
        os.environ[kernels.DISABLE_ENV] = "1"
        try:
            scores.update()
            scores.rank_scores()
        finally:
            del os.environ[kernels.DISABLE_ENV]

    def fused_path() -> None:
        scores.update()
        scores.rank_scores()

    t_ref, t_ker = _gpu_time(torch_path, repeats), _gpu_time(fused_path, repeats)
    return {
        "bench": "importance update + scores",
        "case": case,
        "torch ms": t_ref,
        "kernel ms": t_ker,
        "speedup": t_ref / t_ker,
        "target": 3.0,
    }


def report(rows: list[dict[str, Any]], json_path: str | None) -> None:
    """Prints the rows as one markdown table (over the union of their keys) and, with a path,
    writes them (atomically) as a JSON list."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(fmt(row.get(k, "")) for k in keys) + " |")
    if json_path:
        atomic_write_bytes(json_path, json.dumps(rows, indent=1).encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="only the CPU profile of the reference")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", help="write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.cpu or not torch.cuda.is_available():
        if not args.cpu:
            print("bench_kernels: no CUDA device; GPU benchmarks skipped, CPU profile only")
        torch.set_num_threads(1)
        rows = cpu_profile(args.repeats)
    else:
        print(f"bench_kernels: {torch.cuda.get_device_name()}")
        rows = gpu_benches(args.repeats)
    report(rows, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
