"""The plan's table and plot, with and without joint resamples."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from lorax_core.gelora import plan_ranks
from lorax_core.gelora.report import format_table, save_plot


def png_size(path: Path) -> tuple[int, int]:
    """Width and height in pixels, from the PNG's IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_thirty_layers_with_resamples(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(0)
    ids = 20 + np.cumsum(rng.normal(0, 1, 31))
    draws = ids + rng.normal(0, 1, (8, 31))
    plan = plan_ranks(ids.tolist(), None, None, resamples=draws)
    lines = format_table(plan).splitlines()
    assert lines[0].split()[-4:] == ["CI", "rank", "range", "stable"]
    assert len(lines) == 1 + 31 + 1 and lines[-1].startswith("rank mode plain; plan stability")
    for layer, line in zip(plan.layers[1:], lines[2:-1], strict=True):
        low, high = layer.rank_range  # type: ignore[misc]
        assert line.split()[-3:-1] == [f"[{low},", f"{high}]"]
        assert line.endswith(f"{layer.rank_stability:.0%}")
    wide, short = tmp_path / "wide.png", tmp_path / "short.png"
    save_plot(plan, wide)
    save_plot(plan_ranks([1.0, 2.0, 3.0], None, None), short)
    assert png_size(wide)[0] > 1.4 * png_size(short)[0]  # the figure widens with the layers
    assert "stable" not in format_table(plan_ranks([1.0, 2.0, 3.0], None, None))


def test_plot_of_a_plan_outside_its_intervals(tmp_path: Path) -> None:
    """The resamples' rank ranges need not hold the plan's ranks; the plot still draws
    (matplotlib refuses negative error bars)."""
    pytest.importorskip("matplotlib")
    ids = [3.0, 5.0, 8.0, 10.0]
    # Every resample grows faster than the estimates: their rank ranges sit above the ranks.
    draws = np.array(ids) + np.array([[5.0, 9.0, 14.0, 19.0], [6.0, 10.0, 15.0, 20.0]])
    plan = plan_ranks(ids, None, None, resamples=draws)
    assert any(layer.rank_range[0] > layer.rank for layer in plan.layers[1:])  # type: ignore[index]
    save_plot(plan, tmp_path / "p.png")
    assert png_size(tmp_path / "p.png")[0] > 0
