"""BiDoRA vs DoRA on MiniLM with the tweets sentiment set: test accuracy, step time, memory.

Data: ``tweets_sentiment(min_confidence=0.9, seed=0)`` (3 classes). The first ``--n-train``
texts of its train split are the training pool; the first ``--n-test`` texts of its test split
are the test set, which neither method sees while training or validating. BiDoRA splits the
pool into D_tr / D_val (``--val-fraction``, seeded); DoRA trains on the whole pool. Both use the
same model (MiniLM, DoRA r=8 on query/value, a linear head on the mean-pooled output trained
with the directions), batch size, steps, peak lr, warm-up/decay schedule and AdamW settings.

Each (method, seed) run is its own process, so peak memory is measured per run (resident set
size sampled during training, minus the size before it); each run's result is cached as JSON
under ``--out-dir`` and a restarted script skips finished runs. The summary (mean ± std over
seeds, step-time and memory ratios, the split, every setting) is written to ``--out``.

    python benches/bidora_vs_dora.py --seeds 0 1 2 --steps 100 --max-length 32 --jobs 6

With ``--jobs`` > 1 the runs share the machine, all under the same load, so the step-time
ratio compares like with like; absolute step times then depend on that load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import PeakRSS  # noqa: E402
from lorax_core._atomic import atomic_write_bytes  # noqa: E402
from lorax_core.adapters import AdapterConfig, inject  # noqa: E402
from lorax_core.bench.data import Encoded  # noqa: E402
from lorax_core.bench.runner import Classifier, accuracy, loss_fn  # noqa: E402
from lorax_core.datasets import minilm_path, tweets_sentiment  # noqa: E402
from lorax_core.training import BiDoRATrainer  # noqa: E402
from lorax_core.training.bidora import ADAM_EPS, BETAS  # noqa: E402
from lorax_core.training.schedule import BatchStream, collate, linear_warmup_decay  # noqa: E402

METHODS = ("dora", "bidora", "bidora_phase2")


def load_data(args: argparse.Namespace) -> tuple[Encoded, Encoded, dict[str, Any]]:
    from transformers import AutoTokenizer

    train, test = tweets_sentiment(min_confidence=0.9, seed=0)
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))

    def encode(texts: list[str], labels: list[int]) -> Encoded:
        enc = tokenizer(
            texts,
            truncation=True,
            max_length=args.max_length,
            padding="max_length",
            return_tensors="pt",
        )
        labels_ = torch.tensor(labels)
        return Encoded(enc["input_ids"], enc["attention_mask"], labels_, range(len(labels)))

    pool = encode(train.texts[: args.n_train], train.labels[: args.n_train])
    held = encode(test.texts[: args.n_test], test.labels[: args.n_test])
    info = {
        "source": "tweets_sentiment(min_confidence=0.9, seed=0)",
        "pool": f"first {args.n_train} texts of its train split",
        "test": f"first {args.n_test} texts of its test split",
        "pool_label_counts": [int((pool.labels == k).sum()) for k in range(3)],
        "test_label_counts": [int((held.labels == k).sum()) for k in range(3)],
        "label_names": train.label_names,
    }
    return pool, held, info


def build_model(seed: int) -> Classifier:
    from transformers import AutoModel

    torch.manual_seed(seed)
    encoder = AutoModel.from_pretrained(str(minilm_path()))
    model = Classifier(encoder, encoder.config.hidden_size, 3, "mean")
    inject(
        model,
        AdapterConfig(method="dora", r=8, alpha=16.0, target_modules=["query", "value"], seed=seed),
    )
    model.head.requires_grad_(True)
    return model


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    pool, held, _ = load_data(args)
    model = build_model(args.seed)
    step_times: list[float] = []
    with PeakRSS() as peak:
        if args.method in ("bidora", "bidora_phase2"):
            trainer = BiDoRATrainer(
                model,
                loss_fn,
                pool,
                val_fraction=args.val_fraction,
                seed=args.seed,
                batch_size=args.batch_size,
                lr=args.lr,
                arch_lr=args.arch_lr,
                head=model.head,
                warmup_fraction=args.warmup_fraction,
                retrain_steps=args.retrain_steps if args.method == "bidora_phase2" else 0,
            )
            trainer.start(args.steps)
            model.train()
            for _ in range(args.steps):
                t0 = time.perf_counter()
                trainer.bilevel_step()
                step_times.append(time.perf_counter() - t0)
            trainer.train(args.steps, progress=False)  # phase 2, if any
            losses = {"train": trainer.history["train_loss"], "val": trainer.history["val_loss"]}
            losses["retrain"] = trainer.history["retrain_loss"]
            split = trainer.split.to_dict()
            split_info = {"fingerprint": split["fingerprint"], "n_train": len(split["train"])}
            split_info["n_val"] = len(split["val"])
        else:
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(
                params, lr=args.lr, betas=BETAS, eps=ADAM_EPS, weight_decay=0.0
            )
            scheduler = linear_warmup_decay(optimizer, args.steps, args.warmup_fraction)
            stream = BatchStream(range(len(pool)), args.batch_size, 3 * args.seed + 1)
            model.train()
            train_losses = []
            for _ in range(args.steps):
                t0 = time.perf_counter()
                loss = loss_fn(model, collate(pool, stream.next_indices(), None))
                loss.backward()
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                train_losses.append(float(loss.detach()))
                step_times.append(time.perf_counter() - t0)
            losses = {"train": train_losses}
            split_info = {"n_train": len(pool)}
    skip = min(3, len(step_times) - 1)
    return {
        "method": args.method,
        "seed": args.seed,
        "test_accuracy": accuracy(model, held, 100, torch.device("cpu")),
        "step_time_median_s": statistics.median(step_times[skip:]),
        "step_times_s": step_times,
        "peak_rss_extra_mib": peak.above,
        "losses": losses,
        "split": split_info,
    }


def summarise(results: list[dict[str, Any]], args: argparse.Namespace, info: dict[str, Any]):
    by_method: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_method.setdefault(r["method"], []).append(r)

    def stats(values: list[float]) -> dict[str, float]:
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return {"mean": statistics.fmean(values), "std": std}

    summary: dict[str, Any] = {}
    for method, runs in sorted(by_method.items()):
        summary[method] = {
            "test_accuracy": stats([r["test_accuracy"] for r in runs]),
            "test_accuracy_per_seed": {str(r["seed"]): r["test_accuracy"] for r in runs},
            "step_time_median_s": stats([r["step_time_median_s"] for r in runs]),
            "peak_rss_extra_mib": stats([r["peak_rss_extra_mib"] for r in runs]),
        }
    if "bidora" in summary and "dora" in summary:
        b, d = summary["bidora"], summary["dora"]
        summary["ratios_bidora_over_dora"] = {
            "step_time": b["step_time_median_s"]["mean"] / d["step_time_median_s"]["mean"],
            "peak_rss_extra": b["peak_rss_extra_mib"]["mean"] / d["peak_rss_extra_mib"]["mean"],
        }
    return {
        "settings": {
            "model": "all-MiniLM-L6-v2, mean-pooled, linear head (3 classes)",
            "adapter": "DoRA r=8 alpha=16 on query/value, detach_norm=True",
            "steps": args.steps,
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "lr": args.lr,
            "arch_lr": args.arch_lr,
            "warmup_fraction": args.warmup_fraction,
            "val_fraction": args.val_fraction,
            "optimizer": f"AdamW betas={BETAS} eps={ADAM_EPS} weight_decay=0",
            "bidora": "finite_difference hypergradient, eta=1, reg_direction=1e-5, no phase 2",
            "bidora_phase2": f"bidora, then {args.retrain_steps} phase-2 steps on the whole pool "
            "(directions and head reset, magnitudes fixed); only bilevel steps are timed",
            "dora": "A, B, m and head on the whole pool, no regulariser",
            "seeds": args.seeds,
            "threads": args.threads,
            "jobs": args.jobs,
        },
        "data": info,
        "summary": summary,
        "runs": [{k: v for k, v in r.items() if k != "step_times_s"} for r in results],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=48)
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--arch-lr", type=float, default=2e-3)
    parser.add_argument("--warmup-fraction", type=float, default=0.1)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each run")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--methods", nargs="+", default=["dora", "bidora"])
    parser.add_argument("--out-dir", type=Path, default=HERE / "results" / "bidora_vs_dora")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "bidora_vs_dora.json")
    parser.add_argument("--retrain-steps", type=int, default=25, help="phase 2 of bidora_phase2")
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.method is not None:  # one run, in its own process
        result = run_one(args)
        out = args.out_dir / f"{args.method}_{args.seed}.json"
        atomic_write_bytes(out, json.dumps(result, indent=1).encode())
        return
    args.out_dir.mkdir(parents=True, exist_ok=True)
    runs = [(method, seed) for seed in args.seeds for method in args.methods]
    todo = [r for r in runs if not (args.out_dir / f"{r[0]}_{r[1]}.json").is_file()]
    running: list[subprocess.Popen[bytes]] = []
    for method, seed in todo:  # at most --jobs runs at a time, each in its own process
        while len(running) >= args.jobs:
            running[0].wait()
            running = [p for p in running if p.poll() is None]
        command = [sys.executable, __file__, *sys.argv[1:], "--method", method, "--seed", str(seed)]
        print(f"running {method} seed {seed}", flush=True)
        running.append(subprocess.Popen(command))
    for process in running:
        process.wait()
    results = []
    for method, seed in runs:
        cached = args.out_dir / f"{method}_{seed}.json"
        if not cached.is_file():
            raise SystemExit(f"run {method} seed {seed} failed (no {cached})")
        result = json.loads(cached.read_text())
        print(
            f"{method} seed {seed}: test acc {result['test_accuracy']:.4f}, "
            f"step {result['step_time_median_s']:.3f} s, "
            f"peak +{result['peak_rss_extra_mib']:.0f} MiB",
            flush=True,
        )
        results.append(result)
    torch.set_num_threads(args.threads)
    _, _, info = load_data(args)
    document = summarise(results, args, info)
    atomic_write_bytes(args.out, (json.dumps(document, indent=1) + "\n").encode())
    print(json.dumps(document["summary"], indent=1))


if __name__ == "__main__":
    main()
