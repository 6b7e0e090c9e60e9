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
    """One row per hidden state: layer, d_i, its interval, Δd = d_i − d_{i−1}, rank, alpha;
    with joint resamples also Δd's interval, the resamples' rank range and the block's rank
    stability, and a closing line with the plan's stability."""
    resampled = plan.stability is not None
    head = ("layer", "d_i", "CI", "Δd", "rank", "alpha")
    rows = [head + (("Δd CI", "rank range", "stable") if resampled else ())]
    previous: float | None = None
    for layer in plan.layers:
        delta = _DASH if previous is None else f"{layer.dimension - previous:+.2f}"
        row = (
            f"h_{layer.index}",
            f"{layer.dimension:.2f}",
            _interval(layer.ci, "{:.2f}"),
            delta,
            _DASH if layer.rank is None else str(layer.rank),
            _DASH if layer.alpha is None else f"{layer.alpha:g}",
        )
        if resampled:
            stable = layer.rank_stability
            row += (
                _interval(layer.delta_ci, "{:+.2f}"),
                _interval(layer.rank_range, "{}"),
                _DASH if stable is None else f"{stable:.0%}",
            )
        rows.append(row)
        previous = layer.dimension
    widths = [max(len(row[j]) for row in rows) for j in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.ljust(w) if j == 0 else cell.rjust(w)
            for j, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    if resampled:
        n = len(plan.layers[0].resamples or ())
        lines.append(
            f"rank mode {plan.rank_mode}; plan stability {plan.stability:.0%}: the mean share of "
            f"{n} joint resamples that give a block its rank"
        )
    return "\n".join(lines)


def _interval(pair: tuple[float, float] | tuple[int, int] | None, spec: str) -> str:
    return _DASH if pair is None else f"[{spec.format(pair[0])}, {spec.format(pair[1])}]"


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
    """PNG of the profile, written atomically: d_i with its interval (top); the block ranks
    r_i with the resamples' rank range and each block's rank stability (bottom). The figure
    widens with the layer count and labels every n-th layer, so 30+ layers stay readable.

    Raises:
        ModuleNotFoundError: matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
        from matplotlib.ticker import MaxNLocator, MultipleLocator
    except ImportError:
        raise ModuleNotFoundError(_NO_MATPLOTLIB) from None
    index = [layer.index for layer in plan.layers]
    dims = [layer.dimension for layer in plan.layers]
    step = 1 if len(index) <= 16 else 5 if len(index) <= 80 else 10
    width = min(max(7.0, 0.28 * len(index) + 2.5), 30.0)
    fig, (ax, ranks_ax) = plt.subplots(
        2, 1, figsize=(width, 6), sharex=True, gridspec_kw={"height_ratios": (3, 2)}
    )
    try:
        # A bootstrap interval need not contain the point estimate; clip the bars at it.
        cis = [layer.ci or (layer.dimension, layer.dimension) for layer in plan.layers]
        low = [max(d - lo, 0.0) for d, (lo, _) in zip(dims, cis, strict=True)]
        high = [max(hi - d, 0.0) for d, (_, hi) in zip(dims, cis, strict=True)]
        ax.errorbar(index, dims, yerr=[low, high], marker="o", ms=4, capsize=2, label="ID d_i")
        ax.set_ylabel("intrinsic dimension d_i")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="best", fontsize="small")
        blocks = [layer for layer in plan.layers if layer.rank is not None]
        x = [layer.index for layer in blocks]
        ranks = [int(layer.rank or 0) for layer in blocks]
        ranges = [layer.rank_range or (r, r) for r, layer in zip(ranks, blocks, strict=True)]
        # Nor need the resamples' rank range hold the plan's rank (a budget solves c on the
        # point estimates): clip those bars at the rank too.
        spread = [
            [max(r - lo, 0) for r, (lo, _) in zip(ranks, ranges, strict=True)],
            [max(hi - r, 0) for r, (_, hi) in zip(ranks, ranges, strict=True)],
        ]
        ranks_ax.bar(x, ranks, color="tab:orange", alpha=0.6, label=f"rank r_i ({plan.rank_mode})")
        if plan.stability is not None:
            ranks_ax.errorbar(
                x,
                ranks,
                yerr=spread,
                fmt="none",
                ecolor="black",
                capsize=2,
                lw=1,
                label="95% range over resamples",
            )
        ranks_ax.set_ylim(0, max((hi for _, hi in ranges), default=1) + 1)
        ranks_ax.set_ylabel("LoRA rank r_i")
        ranks_ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if plan.stability is not None:
            share = ranks_ax.twinx()
            share.plot(
                x,
                [layer.rank_stability for layer in blocks],
                "s",
                ms=3,
                color="tab:green",
                label="rank stability",
            )
            share.set_ylim(0, 1.05)
            share.set_ylabel("share of resamples with r_i")
            share.legend(loc="lower right", fontsize="small")
            ranks_ax.set_title(f"plan stability {plan.stability:.0%}", fontsize="medium")
        ranks_ax.legend(loc="upper left", fontsize="small")
        ranks_ax.set_xlabel("hidden state h_i (0 = embeddings)")
        ranks_ax.xaxis.set_major_locator(MultipleLocator(step))
        ranks_ax.xaxis.set_minor_locator(MultipleLocator(1))
        ranks_ax.set_xlim(min(index) - 0.6, max(index) + 0.6)
        name = str(plan.model.get("name") or plan.model.get("class") or "")
        ax.set_title(f"GeLoRA profile {Path(name).name}".strip())  # a folder: its name only
        fig.tight_layout()
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    finally:
        plt.close(fig)
