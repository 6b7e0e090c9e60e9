"""BiDoRA step time and peak memory against a DoRA step on MiniLM, same batch, in one run.

Workload: all-MiniLM-L6-v2, mean-pooled, linear head (3 classes), DoRA r=8 alpha=16 on
query/value; one batch of ``--batch`` real tweets (``tweets_sentiment``) padded to ``--seq``
tokens. Variants, all from the same initial values:

- ``dora``: one ordinary DoRA step (forward, backward, AdamW over A, B, m and the head);
- ``bidora``: one BiDoRA bi-level step (lower step + upper step with the finite-difference
  hypergradient: four forward/backwards);
- ``bidora_first_order``: the same with ``hypergrad="first_order"`` (two forward/backwards).

BiDoRA's D_tr and D_val are both that batch (the data set is the batch twice), so every variant
sees the same inputs. Time: ``benches/harness.py``'s interleaved rounds (each round runs every
variant once, in a rotated order), median and inter-quartile range, and the ratio to ``dora``.
Memory: on CUDA, ``torch.cuda.max_memory_allocated`` during one step minus what was allocated
before; on CPU, the peak of live tensor bytes created during one step (``LiveTensorBytes`` from
``bench_adapters.py``: activations, gradients, temporaries, optimizer state first created in
that step; parameters and inputs excluded), measured apart from the timed steps.

Time is printed for the wall clock and for the process's CPU time (which leaves out waiting for
a core on a busy machine; use ``--threads 1`` there, as CPU time sums over threads).

Usage: ``python benches/bench_bidora.py [--rounds 5] [--batch 16] [--seq 32] [--device cuda]``
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_adapters import LiveTensorBytes
from bidora_vs_dora import MeanPoolClassifier, loss_fn
from harness import cuda_sync, interleaved, ratio_summary, timed
from lorax_core.adapters import AdapterConfig, inject
from lorax_core.datasets import minilm_path, tweets_sentiment
from lorax_core.training import BiDoRATrainer
from lorax_core.training.bidora import ADAM_EPS, BETAS


def build(device: torch.device) -> MeanPoolClassifier:
    from transformers import AutoModel

    torch.manual_seed(0)
    model = MeanPoolClassifier(AutoModel.from_pretrained(str(minilm_path())), 3)
    inject(model, AdapterConfig(method="dora", r=8, alpha=16.0, target_modules=["query", "value"]))
    model.head.requires_grad_(True)
    return model.to(device).train()


def variants(args: argparse.Namespace, device: torch.device) -> dict[str, Callable[[], object]]:
    from transformers import AutoTokenizer

    train, _ = tweets_sentiment()
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
    enc = tokenizer(
        train.texts[: args.batch],
        truncation=True,
        max_length=args.seq,
        padding="max_length",
        return_tensors="pt",
    )
    labels = torch.tensor(train.labels[: args.batch])
    items = [(enc["input_ids"][i], enc["attention_mask"][i], labels[i]) for i in range(args.batch)]
    batch = tuple(t.to(device) for t in (enc["input_ids"], enc["attention_mask"], labels))

    dora = build(device)
    params = [p for p in dora.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=BETAS, eps=ADAM_EPS)

    def dora_step() -> None:
        loss_fn(dora, batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    fns: dict[str, Callable[[], object]] = {"dora": dora_step}
    for name, mode in (("bidora", "finite_difference"), ("bidora_first_order", "first_order")):
        model = build(device)
        trainer = BiDoRATrainer(
            model,
            loss_fn,
            items + items,  # D_tr and D_val: the same batch
            val_fraction=0.5,
            batch_size=args.batch,
            lr=1e-4,
            arch_lr=1e-4,
            head=model.head,
            hypergrad=mode,
        )
        trainer.start(10**9)
        fns[name] = trainer.bilevel_step
    return fns


def peak_bytes(step: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated by one call of ``step`` beyond what was allocated before it."""
    step()  # optimizer state exists from here on: measure a steady-state step
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        timed(step, cuda_sync(device))  # synchronised before and after
        return torch.cuda.max_memory_allocated(device) - before
    with LiveTensorBytes([]) as tracker:
        step()
    return tracker.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    fns = variants(args, device)
    samples = interleaved(fns, args.rounds, warmup=1, sync=cuda_sync(device))
    print(f"MiniLM, DoRA r=8 on query/value, batch {args.batch} x {args.seq} tokens, {device}")
    print(f"{'variant':<20} {'median s':>9} {'IQR s':>17} {'peak MiB':>9}")
    peaks = {name: peak_bytes(fn, device) / 2**20 for name, fn in fns.items()}
    for name, s in samples.items():
        q1, q2, q3 = s.quartiles()
        print(f"{name:<20} {q2:>9.3f} {q1:>8.3f}-{q3:<8.3f} {peaks[name]:>9.1f}")
    for name in ("bidora", "bidora_first_order"):
        for clock in ("wall", "cpu"):  # CPU time leaves out waiting for a core (busy machines)
            print(f"{name}/dora time: {ratio_summary(samples[name], samples['dora'], clock)}")
        print(f"{name}/dora peak memory: {peaks[name] / peaks['dora']:.2f}")


if __name__ == "__main__":
    main()
