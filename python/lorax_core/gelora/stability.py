"""Is a rank plan signal or noise? Joint bootstrap resamples of the layer IDs (docs/gelora.md).

A block's rank follows its ID increase Δd_i = d_i − d_{i−1}. The per-layer intervals of the ID
estimator resample each layer on its own, but the noise of d_{i−1} and d_i is shared (the same
texts pass through both), so Δd_i is judged here from **joint** resamples: rows (texts, or
tokens) drawn with replacement, the same rows in every layer, every layer's ID re-estimated.
A drawn row repeated is an exact copy, which the estimator drops, so each resample is in effect
a random ~63 % of the distinct rows: the spread it shows is, if anything, wider than the noise
of the full sample.

From the B resamples d_i^(b), for blocks i = 1 … L:

- ``delta_ci`` — the 95 % percentile interval of Δd_i^(b);
- ``rank_range`` — the 2.5 % and 97.5 % quantiles of the resamples' ranks r_i^(b) (the rule,
  with the plan's ``c``, applied to each resample), and ``rank_stability`` the fraction of
  resamples that give block i its planned rank; the plan's ``stability`` is the mean of
  ``rank_stability`` over the blocks.

Rank modes (``rank_mode``):

- ``plain`` — the rule on the point estimates: ``max(Δd_i, 0)``;
- ``noise-aware`` — extra rank only for an increase clear of the noise: the rule on
  ``max(lo_i, 0)``, ``lo_i`` the lower end of ``delta_ci``. A resample's rank in this mode
  uses its own lower end ``Δd_i^(b) − (m_i − lo_i)``, ``m_i`` the resamples' median Δd_i (the
  interval moved to the resample), so a block whose interval barely reaches below 0 is as
  unstable as it should be.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
from tqdm import tqdm

from lorax_core.gelora.rule import block_ranks, id_increases

__all__ = [
    "RANK_MODES",
    "RankMode",
    "Stability",
    "increases_for",
    "mean_stability",
    "resample_dimensions",
    "resample_fields",
    "stability_of",
]

RankMode = Literal["plain", "noise-aware"]
RANK_MODES: tuple[str, ...] = get_args(RankMode)
#: The two-sided level of ``delta_ci`` and ``rank_range``.
LEVEL = 0.95
#: Fewest resamples a noise-aware plan or a stability figure takes.
MIN_RESAMPLES = 2


@dataclass(frozen=True)
class Stability:
    """The joint-resample summary of blocks 1 … L (lists of length L)."""

    delta_ci: list[tuple[float, float]]
    rank_range: list[tuple[int, int]]
    rank_stability: list[float]


def mean_stability(values: Sequence[float | None]) -> float | None:
    """A plan's stability: the mean of its blocks' ``rank_stability`` (None if any is None)."""
    if not values or any(v is None for v in values):
        return None
    return float(np.mean(np.asarray(values, np.float64)))


def resample_dimensions(
    layers: Sequence[np.ndarray],
    estimator: str,
    params: dict[str, Any],
    n_resamples: int,
    seed: int,
    *,
    progress: bool = False,
) -> np.ndarray:
    """IDs of ``n_resamples`` joint bootstrap resamples of ``layers`` (h_0 … h_L, ``[n, D_i]``).

    Each resample draws n row indices with replacement (seeded by ``seed``) and takes the same
    rows of every layer; ``params`` go to the estimator (its own bootstrap is turned off).

    Returns:
        float64 ``[n_resamples, L + 1]``: row b holds d_0^(b) … d_L^(b).

    Raises:
        ValueError: ``resample <b>: h_<i>: …`` when a resample's ID cannot be estimated.
    """
    from lorax_core.id import estimate_layers

    n = layers[0].shape[0]
    rng = np.random.default_rng([seed, 0x6E1])
    settings = {**params, "bootstrap": 0}
    out = np.empty((n_resamples, len(layers)), np.float64)
    draws = tqdm(
        range(n_resamples),
        desc="joint resamples",
        unit="resample",
        file=sys.stderr,
        disable=not progress,
    )
    for b in draws:
        rows = np.sort(rng.integers(0, n, n))
        try:
            found = estimate_layers([h[rows] for h in layers], estimator, **settings)
        except (ValueError, ArithmeticError) as err:
            reason = str(err).replace("layer ", "h_", 1)
            raise ValueError(f"resample {b}: {reason}") from None
        out[b] = [r.dimension for r in found]
    return out


def _bounds(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tail = (1 - LEVEL) / 2
    return np.quantile(values, tail, axis=0), np.quantile(values, 1 - tail, axis=0)


def delta_intervals(resamples: np.ndarray) -> list[tuple[float, float]]:
    """The 95 % percentile interval of Δd_i over resamples ``[B, L + 1]``, blocks 1 … L."""
    lo, hi = _bounds(np.diff(resamples, axis=1))
    return [(float(a), float(b)) for a, b in zip(lo, hi, strict=True)]


def increases_for(
    dimensions: Sequence[float], resamples: np.ndarray | None, rank_mode: str
) -> list[float]:
    """The ID increases the rule takes in ``rank_mode`` (see the module docstring)."""
    if rank_mode == "plain":
        return id_increases(dimensions)
    if resamples is None:
        raise ValueError(
            f"rank_mode='noise-aware' needs joint resamples: bootstrap >= {MIN_RESAMPLES}"
        )
    return [max(lo, 0.0) for lo, _ in delta_intervals(resamples)]


def stability_of(
    dimensions: Sequence[float],
    resamples: np.ndarray,
    ranks: Sequence[int],
    rank_mode: str,
    rule: tuple[float, int, int, int | None],
) -> Stability:
    """Per-block Δd intervals, rank ranges and stabilities of a plan with block ``ranks``.

    Args:
        dimensions: d_0 … d_L of the full sample.
        resamples: ``[B, L + 1]`` joint resample IDs (:func:`resample_dimensions`).
        ranks: the plan's r_1 … r_L.
        rank_mode: how the plan was made.
        rule: the plan's ``(c, offset, rank_min, rank_max)``.
    """
    deltas = np.diff(resamples, axis=1)  # [B, L]
    intervals = delta_intervals(resamples)
    shift = np.zeros(deltas.shape[1])
    if rank_mode == "noise-aware":
        shift = np.median(deltas, axis=0) - [lo for lo, _ in intervals]
    resampled = np.array(
        [block_ranks(np.maximum(row - shift, 0.0).tolist(), *rule) for row in deltas]
    )  # [B, L]
    tail = (1 - LEVEL) / 2
    lo = np.quantile(resampled, tail, axis=0, method="lower")
    hi = np.quantile(resampled, 1 - tail, axis=0, method="higher")
    agree = (resampled == np.asarray(ranks)[None, :]).mean(axis=0)
    return Stability(
        delta_ci=intervals,
        rank_range=[(int(a), int(b)) for a, b in zip(lo, hi, strict=True)],
        rank_stability=[float(a) for a in agree],
    )


#: The per-layer fields the resamples give a plan (its ``LayerProfile`` and document).
RESAMPLE_FIELDS = ("resamples", "delta_ci", "rank_range", "rank_stability")


def resample_fields(
    dimensions: Sequence[float],
    resamples: np.ndarray | None,
    ranks: Sequence[int],
    rank_mode: str,
    rule: tuple[float, int, int, int | None],
) -> list[dict[str, Any]]:
    """Per layer h_0 … h_L, the values of :data:`RESAMPLE_FIELDS` (all None without resamples;
    ``delta_ci``, ``rank_range``, ``rank_stability`` None for h_0); arguments as
    :func:`stability_of`."""
    fields: list[dict[str, Any]] = [dict.fromkeys(RESAMPLE_FIELDS) for _ in dimensions]
    if resamples is None:
        return fields
    summary = stability_of(dimensions, resamples, ranks, rank_mode, rule)
    for i, entry in enumerate(fields):
        entry["resamples"] = tuple(float(v) for v in resamples[:, i])
        if i:
            entry.update(
                delta_ci=summary.delta_ci[i - 1],
                rank_range=summary.rank_range[i - 1],
                rank_stability=summary.rank_stability[i - 1],
            )
    return fields
