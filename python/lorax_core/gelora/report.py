"""Human-readable views of a rank plan: the per-layer table, the module summary, a PNG plot."""

from __future__ import annotations

import importlib.util
import os
from collections import defaultdict
from pathlib import Path

from lorax_core._atomic import atomic_write
from lorax_core.gelora.plan import RankPlan

__all__ = ["format_modules", "format_table", "require_matplotlib", "save_plot"]

_DASH = "-"


def format_table(plan: RankPlan) -> str:
    """One row per hidden state: layer, d_i, its interval, Δd = d_i − d_{i−1}, rank, alpha."""
    rows = [("layer", "d_i", "CI", "Δd", "rank", "alpha")]
    previous: float | None = None
    for layer in plan.layers:
        ci = _DASH if layer.ci is None else f"[{layer.ci[0]:.2f}, {layer.ci[1]:.2f}]"
        delta = _DASH if previous is None else f"{layer.dimension - previous:+.2f}"
        rows.append(
            (
                f"h_{layer.index}",
                f"{layer.dimension:.2f}",
                ci,
                delta,
                _DASH if layer.rank is None else str(layer.rank),
                _DASH if layer.alpha is None else f"{layer.alpha:g}",
            )
        )
        previous = layer.dimension
    widths = [max(len(row[j]) for row in rows) for j in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.ljust(w) if j == 0 else cell.rjust(w)
            for j, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    return "\n".join(lines)


def format_modules(plan: RankPlan, uniform_r: int = 8) -> str:
    """Planned modules grouped by block, and the plan's size beside uniform rank-r LoRA."""
    if not plan.modules:
        return "no target modules (the input names no model modules): ranks per block only"
    by_block: dict[int, list[str]] = defaultdict(list)
    for name, module in plan.modules.items():
        by_block[module.block].append(name)
    lines = [f"modules ({len(plan.modules)} targeted):"]
    for block in sorted(by_block):
        names = by_block[block]
        first = plan.modules[names[0]]
        prefix = _common_prefix(names) if len(names) > 1 else ""
        short = ", ".join(n[len(prefix) :] for n in names)
        lines.append(
            f"  block {block}: r={first.rank} alpha={first.alpha:g}  {prefix}{{{short}}}"
            if prefix
            else f"  block {block}: r={first.rank} alpha={first.alpha:g}  {short}"
        )
    uniform = plan.uniform_parameters(uniform_r)
    budget = "" if plan.budget is None else f", budget {plan.budget:,} (c = {plan.c:.4g})"
    lines.append(
        f"plan: {plan.num_parameters:,} LoRA parameters{budget}; uniform r={uniform_r} on the "
        f"same modules: {uniform:,} ({plan.num_parameters / uniform:.1%})"
    )
    return "\n".join(lines)


def _common_prefix(names: list[str]) -> str:
    """Longest run of leading dotted components shared by all names, with its final dot."""
    parts = [name.split(".")[:-1] for name in names]
    shared: list[str] = []
    for components in zip(*parts, strict=False):
        if len(set(components)) != 1:
            break
        shared.append(components[0])
    return "".join(f"{c}." for c in shared)


def require_matplotlib() -> None:
    """Raise ``ModuleNotFoundError`` now if :func:`save_plot` could not run (no matplotlib)."""
    if importlib.util.find_spec("matplotlib") is None:
        raise ModuleNotFoundError(_NO_MATPLOTLIB)


_NO_MATPLOTLIB = "plotting needs matplotlib: pip install '.[plot]' from a source checkout"


def save_plot(plan: RankPlan, path: str | os.PathLike[str]) -> Path:
    """PNG of d_i (with intervals) and the block ranks r_i per layer, written atomically.

    Raises:
        ModuleNotFoundError: matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise ModuleNotFoundError(_NO_MATPLOTLIB) from None
    index = [layer.index for layer in plan.layers]
    dims = [layer.dimension for layer in plan.layers]
    fig, ax = plt.subplots(figsize=(7, 4))
    try:
        blocks = [(layer.index, layer.rank) for layer in plan.layers if layer.rank is not None]
        ranks_ax = ax.twinx()
        ranks_ax.bar(
            [i for i, _ in blocks],
            [r for _, r in blocks],
            color="tab:orange",
            alpha=0.35,
            label="rank r_i",
        )
        ranks_ax.set_ylabel("LoRA rank r_i")
        ranks_ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ranks_ax.set_ylim(0, max((r for _, r in blocks), default=1) + 1)
        # A bootstrap interval need not contain the point estimate; clip the bars at it.
        low = [
            max(layer.dimension - layer.ci[0], 0.0) if layer.ci else 0.0 for layer in plan.layers
        ]
        high = [
            max(layer.ci[1] - layer.dimension, 0.0) if layer.ci else 0.0 for layer in plan.layers
        ]
        ax.errorbar(index, dims, yerr=[low, high], marker="o", capsize=3, label="ID d_i")
        ax.set_zorder(ranks_ax.get_zorder() + 1)
        ax.patch.set_visible(False)
        ax.set_xlabel("hidden state h_i (0 = embeddings)")
        ax.set_ylabel("intrinsic dimension d_i")
        ax.set_xticks(index)
        ax.set_title("GeLoRA profile")
        fig.tight_layout()
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    finally:
        plt.close(fig)
