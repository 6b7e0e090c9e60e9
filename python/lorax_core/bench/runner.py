"""One run of the comparison: build the model for a method, train it, evaluate it.

A run is identified by its *spec* (model, dataset and split, method settings, learning rate,
seed, steps, shared training settings, device): :func:`run_key` hashes it, and the result is
cached under that key. :func:`run` does the work in the calling process; ``lorax-bench`` calls it
in a fresh child process per run (``python -m lorax_core.bench.worker``) so that each run's
peak memory is its own.

Every method goes through the same steps: the backbone is loaded, seeded, and given a linear
head on its pooled output (MiniLM: mean over real tokens; a causal LM: the last real token);
the method decides what trains (the head alone, everything, or injected adapters plus the
head); AdamW with a linear warm-up/decay schedule takes ``steps`` steps on batches drawn from
the ``fit`` split; the model is then scored on the validation and test splits.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lorax_core._atomic import atomic_write_bytes
from lorax_core.bench.config import DatasetSpec, Experiments, MethodSpec, ModelSpec
from lorax_core.bench.data import Encoded, Recorder, Splits, load_splits

__all__ = ["Classifier", "RunOutcome", "make_spec", "run", "run_key", "trainable_count"]

RUN_FORMAT = "lorax_core.bench.run"
RUN_VERSION = 1


class Classifier(nn.Module):
    """Backbone → pooled vector [batch, hidden] → linear head → logits [batch, n_classes].

    ``pooling="mean"`` averages the real tokens (``attention_mask`` 1); ``"last"`` takes the
    last real token (right padding), as a causal LM's sequence classifier does.
    """

    def __init__(self, encoder: nn.Module, hidden: int, n_classes: int, pooling: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(hidden, n_classes)
        self.pooling = pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # Right padding: columns past the batch's longest text hold only padding; dropping them
        # leaves every real token's output as it is and saves their compute.
        length = int(attention_mask.sum(1).max())
        if 0 < length < attention_mask.shape[1]:
            input_ids, attention_mask = input_ids[:, :length], attention_mask[:, :length]
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        if self.pooling == "last":
            last = attention_mask.sum(1).clamp_min(1) - 1
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return self.head(pooled)


def loss_fn(model: nn.Module, batch: Any) -> torch.Tensor:
    """Mean cross-entropy of ``model`` on a batch ``(input_ids, attention_mask, labels)``."""
    ids, mask, labels = batch
    return nn.functional.cross_entropy(model(ids, mask), labels)


def make_spec(
    experiments: Experiments,
    model: ModelSpec,
    dataset: DatasetSpec,
    method: MethodSpec,
    *,
    lr: float,
    seed: int,
    steps: int,
    device: str,
    split_fingerprint: str,
) -> dict[str, Any]:
    """The settings that determine a run (JSON-serialisable)."""
    return {
        "model": model.to_dict(),
        "dataset": dataset.to_dict(),
        "split_fingerprint": split_fingerprint,
        "method": method.to_dict(),
        "lr": float(lr),
        "seed": int(seed),
        "steps": int(steps),
        "training": experiments.training_dict(),
        "device": device,
    }


def run_key(spec: dict[str, Any]) -> str:
    """``<model>-<dataset>-<method>-lr<lr>-s<seed>-<12 hex digits of the spec's SHA-256>``."""
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    return (
        f"{spec['model']['name']}-{spec['dataset']['name']}-{spec['method']['name']}"
        f"-lr{spec['lr']:g}-s{spec['seed']}-{digest}"
    )


@dataclass
class RunOutcome:
    """What a run returns: the JSON record that is cached, and the example ids it read.

    ``trained_ids``: every example fetched for a training or BiDoRA upper-level batch;
    ``val_ids`` / ``test_ids``: the examples scored for validation and test accuracy.
    """

    record: dict[str, Any]
    trained_ids: set[str]
    val_ids: list[str]
    test_ids: list[str]


def _load_backbone(model: ModelSpec) -> tuple[nn.Module, Any, int]:
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from lorax_core import datasets

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    folder = datasets.minilm_path() if model.loader == "minilm" else datasets.smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    encoder = AutoModel.from_pretrained(str(folder), dtype=torch.float32)
    return encoder, tokenizer, int(encoder.config.hidden_size)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _plan(
    spec: dict[str, Any], encoder: nn.Module, tokenizer: Any, splits: Splits, plan_dir: Path | None
) -> Any:
    """The GeLoRA plan of the backbone from the ``fit`` texts.

    The layer IDs depend only on the capture (model, split, pooling, estimator), so they are
    cached in ``plan_dir`` once per pooling and each variant (budget-matched or raw rule) plans
    from them; the plan itself is written beside them.
    """
    from lorax_core.gelora import plan_ranks, profile
    from lorax_core.id import IDResult

    g = spec["method"]["gelora"]
    texts = [splits.texts[i] for i in splits.fit]
    max_length = spec["dataset"]["max_length"]
    if g["pooling"] == "tokens":
        masks = tokenizer(texts, truncation=True, max_length=max_length)["attention_mask"]
        available = sum(sum(m) for m in masks)
    else:
        available = len(texts)
    capture = {
        "model": spec["model"],
        "dataset": spec["dataset"],
        "split": spec["split_fingerprint"],
        "pooling": g["pooling"],
        "estimator": g.get("estimator", "twonn"),
        "bootstrap": g.get("bootstrap", 20),
        "n_samples": min(int(g.get("n_samples", 2000)), available),
    }
    rule = {
        "target_modules": list(spec["model"]["targets"]),
        "budget": g.get("budget"),
        "c": g.get("c", 1.0),
        "offset": g.get("offset", 1),
        "alpha_over_r": g.get("alpha_over_r", 32.0),
    }
    prefix = f"{spec['model']['name']}-{spec['dataset']['name']}"
    ids_path = plan_path = None
    if plan_dir is not None:
        plan_dir.mkdir(parents=True, exist_ok=True)
        ids_path = plan_dir / f"{prefix}-ids-{g['pooling']}-{_hash(capture)}.json"
        plan_path = plan_dir / f"{prefix}-{spec['method']['name']}-{_hash([capture, rule])}.json"
    if ids_path is not None and ids_path.is_file():
        layers = json.loads(ids_path.read_text())["layers"]
        ids = [
            IDResult(x["dimension"], tuple(x["ci"]) if x["ci"] else None, x["n_samples"], 0, None)
            for x in layers
        ]
        plan = plan_ranks(ids, encoder, **rule)
    else:
        config = getattr(encoder, "config", None)
        if config is not None:  # the plan names the model by its experiment name, not its folder
            config._name_or_path = spec["model"]["name"]
        result = profile(
            encoder,
            texts,
            tokenizer=tokenizer,
            data_name=f"{spec['dataset']['name']} fit split",
            pooling=capture["pooling"],
            estimator=capture["estimator"],
            bootstrap=capture["bootstrap"],
            n_samples=capture["n_samples"],
            seed=0,
            max_length=max_length,
            **rule,
        )
        plan = result.plan
        if ids_path is not None:
            layers = [
                {
                    "dimension": r.dimension,
                    "ci": list(r.ci) if r.ci else None,
                    "n_samples": r.n_samples,
                }
                for r in result.ids
            ]
            document = {"capture": capture, "layers": layers}
            atomic_write_bytes(ids_path, (json.dumps(document, indent=1) + "\n").encode())
    if plan_path is not None:
        plan.to_json(plan_path)
    return plan


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:12]


def trainable_count(model: nn.Module) -> int:
    """Trainable scalars in use: every parameter with ``requires_grad``, except the free slots
    of SVD-form adapters (slots past ``active_rank`` take no part in compute)."""
    from lorax_core.adapters import adapted_modules

    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    for module in adapted_modules(model).values():
        capacity = getattr(module, "capacity", None)
        if capacity is not None and module.lora_E.requires_grad:  # type: ignore[union-attr]
            free = capacity - module.active_rank  # type: ignore[attr-defined]
            total -= free * (module.in_features + module.out_features + 1)
    return total


def _build(
    spec: dict[str, Any], splits: Splits, plan_dir: Path | None
) -> tuple[Classifier, Any, Any]:
    """The seeded model of ``spec``'s method, its tokenizer and its GeLoRA plan (or None)."""
    from lorax_core import AdapterConfig, inject

    method = spec["method"]
    encoder, tokenizer, hidden = _load_backbone(ModelSpec(**_model_fields(spec["model"])))
    _seed_everything(spec["seed"])
    plan = None
    kind = method["kind"]
    if kind == "head":
        encoder.requires_grad_(False)
    elif kind != "full":
        if method["gelora"] is not None:
            plan = _plan(spec, encoder, tokenizer, splits, plan_dir)
            config = plan.to_adapter_config(method["adapter"]["method"], seed=spec["seed"])
        else:
            settings = {**method["adapter"], "target_modules": list(spec["model"]["targets"])}
            config = AdapterConfig(**settings, seed=spec["seed"])
        inject(encoder, config)
    _seed_everything(spec["seed"])
    model = Classifier(encoder, hidden, len(splits.label_names), spec["model"]["pooling"])
    return model, tokenizer, plan


def _model_fields(d: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": d["name"],
        "loader": d["loader"],
        "pooling": d["pooling"],
        "targets": tuple(d["targets"]),
        "datasets": (),
        "cpu_methods": None,
    }


@torch.no_grad()
def accuracy(model: nn.Module, data: Encoded, batch: int, device: torch.device) -> float:
    """Share of ``data`` whose argmax logit is the label (eval mode, no gradients)."""
    model.eval()
    correct = 0
    for start in range(0, len(data), batch):
        ids, mask, labels = (
            t[start : start + batch].to(device) for t in (data.input_ids, data.mask, data.labels)
        )
        correct += int((model(ids, mask).argmax(-1) == labels).sum())
    model.train()
    return correct / len(data)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fraction_steps(fraction: float, steps: int, low: int = 0) -> int:
    return max(low, round(fraction * steps))


def _train_plain(
    spec: dict[str, Any],
    model: Classifier,
    fit: Recorder,
    device: torch.device,
    bar: Any,
) -> tuple[list[float], list[float], dict[str, Any]]:
    """AdamW on every trainable parameter (and a rank allocator for adalora/elalora)."""
    from lorax_core.allocators import AdaLoRA, ElaLoRA
    from lorax_core.training import BatchStream, linear_warmup_decay
    from lorax_core.training.schedule import collate

    method, training, steps = spec["method"], spec["training"], spec["steps"]
    opt = training["optimizer"]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params,
        lr=spec["lr"],
        betas=tuple(opt["betas"]),
        eps=opt["eps"],
        weight_decay=opt["weight_decay"],
    )
    scheduler = linear_warmup_decay(optimizer, steps, training["warmup_fraction"])
    allocator: Any = None
    a = method["allocator"]
    if method["kind"] == "adalora":
        allocator = AdaLoRA(
            model,
            steps,
            target_r=a["target_r"],
            t_init=_fraction_steps(a["t_init"], steps),
            t_final=_fraction_steps(a["t_final"], steps),
            delta_t=_fraction_steps(a["delta_t"], steps, low=1),
            optimizer=optimizer,
            beta1=a["beta1"],
            beta2=a["beta2"],
            gamma=a["gamma"],
            seed=spec["seed"],
        )
    elif method["kind"] == "elalora":
        allocator = ElaLoRA(
            model,
            steps,
            t_init=_fraction_steps(a["t_init"], steps),
            t_final=_fraction_steps(a["t_final"], steps),
            interval=_fraction_steps(a["interval"], steps, low=1),
            b=a["b"],
            k=a["k"],
            optimizer=optimizer,
            beta1=a["beta1"],
            beta2=a["beta2"],
            gamma=a["gamma"],
            seed=spec["seed"],
        )
    stream = BatchStream(range(len(fit)), training["batch_size"], 3 * spec["seed"] + 1)
    model.train()
    losses: list[float] = []
    times: list[float] = []
    for t in range(1, steps + 1):
        batch = [x.to(device) for x in collate(fit, stream.next_indices(), None)]
        _sync(device)
        start = time.perf_counter()
        loss = loss_fn(model, batch)
        total = loss + allocator.orthogonal_regularizer() if allocator is not None else loss
        total.backward()
        optimizer.step()
        if allocator is not None:
            allocator.step(t)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        times.append(time.perf_counter() - start)
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    extra: dict[str, Any] = {}
    if allocator is not None:
        extra["ranks"] = allocator.ranks()
        extra["allocation_rounds"] = len(allocator.history())
    return losses, times, extra


def _train_bidora(
    spec: dict[str, Any], model: Classifier, fit: Recorder, device: torch.device, bar: Any
) -> tuple[list[float], list[float], dict[str, Any]]:
    """BiDoRA's bi-level steps: directions and head on D_tr, magnitudes on D_val ⊂ fit."""
    from lorax_core.training import BiDoRATrainer

    b, training = spec["method"]["bidora"], spec["training"]
    trainer = BiDoRATrainer(
        model,
        loss_fn,
        fit,
        val_fraction=b["val_fraction"],
        seed=spec["seed"],
        batch_size=training["batch_size"],
        lr=spec["lr"],
        arch_lr=spec["lr"] * b.get("arch_lr_factor", 1.0),
        weight_decay=training["optimizer"]["weight_decay"],
        reg_direction=b.get("reg_direction", 1e-5),
        hypergrad=b.get("hypergrad", "finite_difference"),
        head=model.head,
        warmup_fraction=training["warmup_fraction"],
    )
    trainer.start(spec["steps"])
    model.train()
    times: list[float] = []
    for _ in range(spec["steps"]):
        _sync(device)
        start = time.perf_counter()
        trainer.bilevel_step()
        _sync(device)
        times.append(time.perf_counter() - start)
        bar.update(1)
        bar.set_postfix(loss=f"{trainer.history['train_loss'][-1]:.3f}")
    split = trainer.split
    extra = {"bidora_split": {"n_train": len(split.train), "n_val": len(split.val)}}
    return list(trainer.history["train_loss"]), times, extra


def _digest(ids: list[str]) -> str:
    return hashlib.sha256(json.dumps(sorted(ids)).encode()).hexdigest()


def _plan_summary(plan: Any) -> dict[str, Any] | None:
    if plan is None:
        return None
    return {
        "c": plan.c,
        "num_parameters": plan.num_parameters,
        "ranks": {name: m.rank for name, m in plan.modules.items()},
        "ids": [layer.dimension for layer in plan.layers],
    }


def run(
    spec: dict[str, Any],
    *,
    splits: Splits | None = None,
    plan_dir: Path | None = None,
    threads: int | None = None,
    progress: bool = True,
    description: str | None = None,
) -> RunOutcome:
    """Train and evaluate one run of ``spec`` (see :func:`make_spec`).

    Args:
        spec: the run's settings.
        splits: the dataset's split, if already loaded (else read again from the spec).
        plan_dir: where GeLoRA plans are cached (None: computed every time).
        threads: torch CPU threads (None: leave torch's setting).
        progress: a progress bar over the training steps on stderr.
        description: the bar's label.

    Returns:
        The :class:`RunOutcome`; accuracies are shares in [0, 1], times in seconds, memory in
        MiB (CPU: the process's peak resident set; CUDA: peak allocated during training).

    Raises:
        RuntimeError: the examples read for training overlap the validation or test split.
    """
    from tqdm.auto import tqdm

    import lorax_core

    wall = time.perf_counter()
    if threads is not None:
        torch.set_num_threads(threads)
    if splits is None:
        d = spec["dataset"]
        splits = load_splits(DatasetSpec(**d), spec["training"]["split_seed"])
    if splits.fingerprint != spec["split_fingerprint"]:
        raise ValueError("run: the split does not match the spec's split_fingerprint")
    device = torch.device(spec["device"])
    model, tokenizer, plan = _build(spec, splits, plan_dir)
    params_start = trainable_count(model)
    model.to(device)
    max_length = spec["dataset"]["max_length"]
    trained: set[str] = set()
    fit = Recorder(
        Encoded.build(tokenizer, splits, splits.fit, max_length),
        lambda i: trained.add(splits.ids[i]),
    )
    val = Encoded.build(tokenizer, splits, splits.val, max_length)
    test = Encoded.build(tokenizer, splits, splits.test, max_length)
    _seed_everything(spec["seed"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train = _train_bidora if spec["method"]["kind"] == "bidora" else _train_plain
    label = description or run_key(spec)
    with tqdm(
        total=spec["steps"], desc=label, unit="step", leave=False, disable=not progress
    ) as bar:
        losses, times, extra = train(spec, model, fit, device, bar)
    eval_batch = spec["training"]["eval_batch_size"]
    val_acc = accuracy(model, val, eval_batch, device)
    test_acc = accuracy(model, test, eval_batch, device)
    if device.type == "cuda":
        memory = torch.cuda.max_memory_allocated(device) / 2**20
        memory_kind = "cuda peak allocated during training and evaluation"
    else:
        memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        memory_kind = "peak resident set of the run's process"
    val_ids, test_ids = splits.ids_of(splits.val), splits.ids_of(splits.test)
    overlap = trained & (set(val_ids) | set(test_ids))
    if overlap:
        raise RuntimeError(f"run: {len(overlap)} validation/test examples were trained on")
    skip = min(3, len(times) - 1)
    steady = times[skip:]
    record = {
        "format": RUN_FORMAT,
        "version": RUN_VERSION,
        "key": run_key(spec),
        "spec": spec,
        "val_accuracy": val_acc,
        "test_accuracy": test_acc,
        "trainable_parameters": {"start": params_start, "end": trainable_count(model)},
        "step_time_s": statistics.median(steady),
        "step_time_quartiles_s": [float(q) for q in np.percentile(steady, [25, 75])],
        "peak_memory_mib": memory,
        "memory_kind": memory_kind,
        "wall_s": time.perf_counter() - wall,
        "train_loss": [round(x, 5) for x in losses],
        "final_train_loss": statistics.fmean(losses[-max(1, len(losses) // 10) :]),
        "finite": all(math.isfinite(x) for x in losses),
        "data": {
            "n_trained_examples": len(trained),
            "trained_ids_sha256": _digest(list(trained)),
            "n_val": len(val_ids),
            "val_ids_sha256": _digest(val_ids),
            "n_test": len(test_ids),
            "test_ids_sha256": _digest(test_ids),
            "overlap_with_val_or_test": 0,
        },
        "plan": _plan_summary(plan),
        **extra,
        "environment": {
            "lorax_core": lorax_core.__version__,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": str(device),
        },
    }
    return RunOutcome(record, trained, val_ids, test_ids)


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Write a run's record atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(record, indent=1) + "\n").encode())


def read_record(path: Path, key: str) -> dict[str, Any] | None:
    """A cached record of run ``key``, or None if missing or not a complete record."""
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or record.get("key") != key:
        return None
    if record.get("format") != RUN_FORMAT or record.get("version") != RUN_VERSION:
        return None
    return record
