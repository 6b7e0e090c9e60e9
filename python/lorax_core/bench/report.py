"""The comparison's outputs: Markdown table, JSON, CSV and a PNG, from the run records.

A *cell* is one (model, dataset, method) at its chosen learning rate: its runs over the seeds
give the test accuracy's mean and standard deviation and, paired by seed with LoRA's runs (and
BiDoRA's with DoRA's, ElaLoRA's with AdaLoRA's), the mean difference with a 95% interval
``mean ± t(0.975, n − 1) · sd / √n`` (none for a single seed).
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorax_core._atomic import atomic_write_bytes

__all__ = [
    "REFERENCES",
    "Cell",
    "paired_difference",
    "summary_markdown",
    "verdict",
    "write_outputs",
]

#: The baseline each method is compared with besides LoRA.
REFERENCES = {"bidora": "dora", "elalora": "adalora"}

# Two-sided 95% Student t quantiles t(0.975, df) for df = 1 … 30.
_T975 = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
]  # fmt: skip


def _t975(df: int) -> float:
    return _T975[df - 1] if df <= len(_T975) else 1.96


@dataclass
class Cell:
    """One (model, dataset, method) at its chosen learning rate, with its runs by seed."""

    model: str
    dataset: str
    method: str
    label: str
    lr: float
    lr_source: str
    grid: dict[str, float] = field(default_factory=dict)
    runs: dict[int, dict[str, Any]] = field(default_factory=dict)

    def values(self, key: str) -> list[float]:
        return [float(r[key]) for _, r in sorted(self.runs.items())]


def paired_difference(a: dict[int, float], b: dict[int, float]) -> dict[str, Any] | None:
    """Mean of ``a[s] − b[s]`` over the seeds both hold, with its 95% t interval.

    Returns None without a common seed; ``low``/``high`` are None with one seed.
    """
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    diffs = [a[s] - b[s] for s in seeds]
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return {"mean": mean, "low": None, "high": None, "n": 1}
    half = _t975(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": len(diffs)}


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std}


def _summary(cell: Cell, cells: dict[tuple[str, str, str], Cell]) -> dict[str, Any]:
    accs = {s: float(r["test_accuracy"]) for s, r in cell.runs.items()}
    out: dict[str, Any] = {
        "model": cell.model,
        "dataset": cell.dataset,
        "method": cell.method,
        "label": cell.label,
        "lr": cell.lr,
        "lr_source": cell.lr_source,
        "lr_grid_val_accuracy": cell.grid,
        "seeds": sorted(cell.runs),
        "trainable_parameters": None,
        "trainable_parameters_end": None,
        "test_accuracy": _stats(list(accs.values())),
        "test_accuracy_per_seed": {str(s): a for s, a in sorted(accs.items())},
        "val_accuracy": _stats(cell.values("val_accuracy")),
        "step_time_s": None,
        "peak_memory_mib": None,
        "runs": [r["key"] for _, r in sorted(cell.runs.items())],
    }
    if cell.runs:
        first = cell.runs[min(cell.runs)]
        out["trainable_parameters"] = first["trainable_parameters"]["start"]
        out["trainable_parameters_end"] = first["trainable_parameters"]["end"]
        out["step_time_s"] = statistics.median(cell.values("step_time_s"))
        out["peak_memory_mib"] = max(cell.values("peak_memory_mib"))
        out["final_ranks"] = first.get("ranks")
        out["plan"] = first.get("plan")
    for name, ref in (("lora", "lora"), ("reference", REFERENCES.get(cell.method))):
        other = cells.get((cell.model, cell.dataset, ref)) if ref else None
        key = "diff_vs_lora" if name == "lora" else "diff_vs_reference"
        if other is None or other is cell:
            out[key] = None
            continue
        base = {s: float(r["test_accuracy"]) for s, r in other.runs.items()}
        diff = paired_difference(accs, base)
        out[key] = None if diff is None else {**diff, "against": ref}
    return out


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _diff_text(diff: dict[str, Any] | None) -> str:
    if diff is None:
        return "–"
    text = f"{100 * diff['mean']:+.1f}"
    if diff["low"] is not None:
        text += f" [{100 * diff['low']:+.1f}, {100 * diff['high']:+.1f}]"
    return text


def verdict(diff: dict[str, Any]) -> str:
    """How a paired difference reads: ``worse`` or ``better`` when its 95% interval excludes
    0, ``within noise`` when it holds 0, ``one seed`` when there is no interval."""
    if diff["low"] is None:
        return "one seed"
    if diff["high"] < 0:
        return "worse"
    if diff["low"] > 0:
        return "better"
    return "within noise"


def _acc_text(stats: dict[str, float] | None, n: int) -> str:
    if stats is None:
        return "–"
    if n < 2:
        return f"{100 * stats['mean']:.1f}"
    return f"{100 * stats['mean']:.1f} ± {100 * stats['std']:.1f}"


def _markdown(doc: dict[str, Any]) -> str:
    lines = [
        f"# Method comparison ({doc['mode']} mode)",
        "",
        f"Regenerate: `{doc['command']}`. Protocol and settings: docs/comparison.md.",
        "",
        "Test accuracy in % over the seeds (mean ± std); Δ: the paired difference in points "
        "with its 95% interval over seeds; params: trainable adapter + head parameters in use "
        "at the start; step: median seconds per optimizer step; peak: "
        f"{doc['memory_kind']} (MiB).",
        "",
    ]
    not_better: list[str] = []
    for model in doc["models"]:
        for dataset in doc["datasets"]:
            rows = [c for c in doc["cells"] if c["model"] == model and c["dataset"] == dataset]
            if not rows:
                continue
            spec = doc["steps"].get(model)
            lines += [
                f"## {model} · {dataset} ({spec} steps, seeds {doc['seeds_by_model'][model]})",
                "",
                "| method | params | lr | val acc | test acc | Δ vs LoRA | Δ vs ref | step s "
                "| peak MiB |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for c in rows:
                n = len(c["seeds"])
                ref = c["diff_vs_reference"]
                ref_text = "–" if ref is None else f"{_diff_text(ref)} ({ref['against']})"
                params = (
                    "–" if c["trainable_parameters"] is None else f"{c['trainable_parameters']:,}"
                )
                step = "–" if c["step_time_s"] is None else f"{c['step_time_s']:.2f}"
                peak = "–" if c["peak_memory_mib"] is None else f"{c['peak_memory_mib']:.0f}"
                val = _pct(None if c["val_accuracy"] is None else c["val_accuracy"]["mean"])
                lines.append(
                    f"| {c['label']} | {params} | {c['lr']:g} ({c['lr_source']}) | {val} | "
                    f"{_acc_text(c['test_accuracy'], n)} | {_diff_text(c['diff_vs_lora'])} | "
                    f"{ref_text} | {step} | {peak} |"
                )
                for key in ("diff_vs_lora", "diff_vs_reference"):
                    d = c[key]
                    if d is not None and d["mean"] <= 0:
                        not_better.append(
                            f"- {model} · {dataset}: {c['label']} did not beat {d['against']} "
                            f"({_diff_text(d)} points; {verdict(d)})"
                        )
            lines.append("")
    lines += ["## Where a method did not beat its baseline", ""]
    lines += not_better or ["- every method beat LoRA and its reference"]
    lines.append("")
    return "\n".join(lines)


def summary_markdown(doc: dict[str, Any]) -> str:
    """One compact table of a results document: a row per method, for every (model, dataset)
    the test accuracy (mean ± std, %) and the paired difference to LoRA (points, with its 95%
    interval over seeds); the trainable parameters on MiniLM, one figure per dataset where they
    differ (a GeLoRA plan depends on the data). The README's table is this text."""
    panels = [
        (m, d)
        for m in doc["models"]
        for d in doc["datasets"]
        if any(c["model"] == m and c["dataset"] == d for c in doc["cells"])
    ]
    cells = {(c["model"], c["dataset"], c["method"]): c for c in doc["cells"]}
    methods = list(dict.fromkeys(c["method"] for c in doc["cells"]))
    labels = {c["method"]: c["label"] for c in doc["cells"]}
    head = "| method | params (MiniLM) | " + " | ".join(f"{m} · {d}" for m, d in panels) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(panels)]
    for method in methods:
        counts = [
            cells[(m, d, method)]["trainable_parameters"]
            for m, d in panels
            if m == "minilm"
            and (m, d, method) in cells
            and cells[(m, d, method)]["trainable_parameters"] is not None
        ]
        params = " / ".join(f"{n:,}" for n in dict.fromkeys(counts)) or "–"
        row = [labels[method], params]
        for m, d in panels:
            c = cells.get((m, d, method))
            if c is None or c["test_accuracy"] is None:
                row.append("–")
                continue
            text = _acc_text(c["test_accuracy"], len(c["seeds"]))
            if c["diff_vs_lora"] is not None:
                text += f" ({_diff_text(c['diff_vs_lora'])})"
            row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


CSV_FIELDS = [
    "model", "dataset", "method", "label", "lr", "lr_source", "n_seeds",
    "trainable_parameters", "trainable_parameters_end", "test_acc_mean", "test_acc_std",
    "val_acc_mean", "diff_vs_lora", "diff_vs_lora_low", "diff_vs_lora_high",
    "reference", "diff_vs_reference", "diff_vs_reference_low", "diff_vs_reference_high",
    "step_time_s", "peak_memory_mib",
]  # fmt: skip


def _csv(doc: dict[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for c in doc["cells"]:
        row: dict[str, Any] = {k: c.get(k) for k in CSV_FIELDS if k in c}
        row["n_seeds"] = len(c["seeds"])
        row["test_acc_mean"] = c["test_accuracy"] and c["test_accuracy"]["mean"]
        row["test_acc_std"] = c["test_accuracy"] and c["test_accuracy"]["std"]
        row["val_acc_mean"] = c["val_accuracy"] and c["val_accuracy"]["mean"]
        for key, name in (
            ("diff_vs_lora", "diff_vs_lora"),
            ("diff_vs_reference", "diff_vs_reference"),
        ):
            d = c[key]
            row[name] = d and d["mean"]
            row[f"{name}_low"] = d and d["low"]
            row[f"{name}_high"] = d and d["high"]
        ref = c["diff_vs_reference"]
        row["reference"] = ref and ref["against"]
        writer.writerow(row)
    return buffer.getvalue()


def _png(doc: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = [
        (m, d)
        for m in doc["models"]
        for d in doc["datasets"]
        if any(c["model"] == m and c["dataset"] == d and c["seeds"] for c in doc["cells"])
    ]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5), squeeze=False)
    for ax, (model, dataset) in zip(axes[0], panels, strict=True):
        for c in doc["cells"]:
            if c["model"] != model or c["dataset"] != dataset or not c["seeds"]:
                continue
            acc = c["test_accuracy"]
            ax.errorbar(
                c["trainable_parameters"],
                100 * acc["mean"],
                yerr=100 * acc["std"],
                fmt="o",
                capsize=3,
            )
            ax.annotate(
                c["label"],
                (c["trainable_parameters"], 100 * acc["mean"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (adapter + head)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{model} · {dataset} ({doc['mode']})")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return True


def write_outputs(folder: Path, cells: list[Cell], header: dict[str, Any]) -> dict[str, Path]:
    """Write ``results.json``, ``results.csv``, ``table.md`` and ``accuracy_vs_params.png``
    into ``folder`` (each atomically); returns the paths written."""
    by_key = {(c.model, c.dataset, c.method): c for c in cells}
    memory = {r["memory_kind"] for c in cells for r in c.runs.values()}
    doc = {
        "format": "lorax_core.bench.results",
        "version": 1,
        **header,
        "memory_kind": "; ".join(sorted(memory)) or "peak memory",
        "cells": [_summary(c, by_key) for c in cells],
    }
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": folder / "results.json",
        "csv": folder / "results.csv",
        "markdown": folder / "table.md",
    }
    atomic_write_bytes(paths["json"], (json.dumps(doc, indent=1) + "\n").encode())
    atomic_write_bytes(paths["csv"], _csv(doc).encode())
    atomic_write_bytes(paths["markdown"], _markdown(doc).encode())
    png = folder / "accuracy_vs_params.png"
    if _png(doc, png):
        paths["png"] = png
    return paths
