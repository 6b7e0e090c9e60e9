"""Exact k nearest neighbours in chunks on a torch device, and the ID estimate built on them.

The same algorithm as the Rust engine (docs/intrinsic-dimension.md, docs/kernels.md), in torch
ops so it runs where the hidden states are (a GPU, or the CPU for tests):

1. scale the points by the power of two that brings ``max |x|`` into ``[0.5, 1)`` (exact), centre
   them in float64 and round the centred points to float32;
2. squared distances by float32 GEMMs (TF32 off) in a symmetric sweep over chunks of rows (each
   pair computed once), the self distance ``+inf``, the ``k + 10`` smallest kept per row;
3. the candidates re-ranked by their exact float64 squared distance ``Σ (x_i s − x_j s)²``,
   ties by index;
4. a row is *proven* when its ``k``-th exact distance lies below the smallest float32 value left
   out minus the float32 error bound ``(D + 8)·2⁻²³·(‖x_i‖ + max ‖x‖)²``; rows that are not (near
   ties, duplicates) are searched exhaustively in float64.

Only the per-point statistics (``r2/r1`` or ``1/m_i``, one float64 per point) leave the device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from lorax_core import _core

if TYPE_CHECKING:
    from lorax_core.id import IDResult

__all__ = ["EXTRA", "estimate_id", "knn", "local_statistics", "unit_scale"]

# Extra float32 candidates kept per row beyond k (as the Rust engine).
EXTRA = 10
# Elements of the float32 distance block of one chunk (rows × n): 2^29 floats = 2 GiB.
_BLOCK_ELEMENTS = 1 << 29
# Elements of one float64 gather (rows × candidates × D) when re-ranking: 2^25 = 256 MiB.
_GATHER_ELEMENTS = 1 << 25


@contextlib.contextmanager
def exact_float32_matmul() -> Iterator[None]:
    """float32 matmuls in full IEEE precision inside the block (TF32 off), restored after."""
    cuda = torch.backends.cuda.matmul
    old_tf32 = cuda.allow_tf32
    old_precision = torch.get_float32_matmul_precision()
    cuda.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        cuda.allow_tf32 = old_tf32
        torch.set_float32_matmul_precision(old_precision)


def unit_scale(x: torch.Tensor) -> float:
    """The power of two ``s`` with ``max |x·s|`` in ``[0.5, 1)`` (1 for all-zero data), clamped
    to ``[2⁻¹⁰²², 2¹⁰²⁰]``, as the Rust engine's ``unit_scale``. ``x`` must be finite."""
    peak = float(x.abs().max()) if x.numel() else 0.0
    if not (peak > 0.0 and np.isfinite(peak)):
        return 1.0
    _, e = np.frexp(peak)  # peak = f · 2^e, f in [0.5, 1), subnormals included
    return float(np.ldexp(1.0, int(np.clip(-e, -1022, 1020))))


def _exact_d2(x: torch.Tensor, rows: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """Exact float64 ``Σ (x_i − x_j)²`` for each row ``i`` of ``rows`` (b,) and each of its
    candidates ``cand`` (b, m); ``x`` (n, D) float64 already scaled. Gathers in batches."""
    b, m = cand.shape
    d = x.shape[1]
    out = torch.empty((b, m), dtype=torch.float64, device=x.device)
    step = max(1, _GATHER_ELEMENTS // max(1, m * d))
    for s in range(0, b, step):
        diff = x[cand[s : s + step]] - x[rows[s : s + step]].unsqueeze(1)
        out[s : s + step] = diff.square().sum(dim=2)
    return out


def _sort_pairs(d2: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorts each row of ``(d2, idx)`` ascending by ``d2``, ties by index."""
    by_index = torch.argsort(idx, dim=1, stable=True)
    d2, idx = d2.gather(1, by_index), idx.gather(1, by_index)
    order = torch.argsort(d2, dim=1, stable=True)
    return d2.gather(1, order), idx.gather(1, order)


def knn(
    x: torch.Tensor, k: int, *, chunk_rows: int | None = None, scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``k`` nearest neighbours of each row of ``x`` (n, D), self excluded, ties by index.

    ``x`` is a float32/float64 tensor on any device (float16/bfloat16 are widened to float32).
    Returns ``(distances, indices)``, both (n, k) on ``x``'s device: float64 Euclidean distances
    (ascending) and int64 row indices. Distances are in the units of ``x``, or of ``x·scale``
    when a power of two ``scale`` is given (the search itself always runs on
    ``x·unit_scale(x)``). ``chunk_rows`` bounds the rows per GEMM (default: a 2 GiB block).
    """
    if x.dim() != 2:
        raise ValueError(f"knn: x must be 2-D (n_samples, n_features), got shape {tuple(x.shape)}")
    n, d = x.shape
    if d == 0:
        raise ValueError("knn: x has no features (0 columns)")
    if not 1 <= k < n:
        raise ValueError(f"knn: k = {k} must be in [1, n_samples) with n_samples = {n}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("knn: x contains NaN or infinite values")
    unit = unit_scale(x)
    xs = x.to(torch.float64) * unit  # exact: a power of two
    centred = (xs - xs.mean(dim=0)).to(torch.float32)
    sq = centred.square().sum(dim=1)
    norm_max = float(sq.max().sqrt())
    gamma = (d + 8) * float(torch.finfo(torch.float32).eps)
    cap = min(k + EXTRA, n - 1)
    values, cand = _candidates(centred, sq, cap, chunk_rows or max(1, _BLOCK_ELEMENTS // n))
    dist = torch.empty((n, k), dtype=torch.float64, device=x.device)
    ind = torch.empty((n, k), dtype=torch.int64, device=x.device)
    unproven: list[torch.Tensor] = []
    step = max(1, _GATHER_ELEMENTS // (cap * d))
    for s in range(0, n, step):
        e = min(n, s + step)
        rows = torch.arange(s, e, device=x.device)
        d2, best = _sort_pairs(_exact_d2(xs, rows, cand[s:e]), cand[s:e])
        if cap < n - 1:
            r = sq[s:e].double().sqrt() + norm_max
            proven = d2[:, k - 1] < values[s:e, -1].double() - gamma * r * r
            unproven.append(rows[~proven])
        dist[s:e], ind[s:e] = d2[:, :k], best[:, :k]
    if unproven and (missing := torch.cat(unproven)).numel():
        _exhaustive(xs, missing, k, dist, ind)
    dist.sqrt_()
    dist *= (1.0 if scale is None else scale) / unit  # exact: powers of two
    return dist, ind


def _candidates(
    centred: torch.Tensor, sq: torch.Tensor, cap: int, rows_per_chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``cap`` smallest float32 squared distances of every row (self excluded), ascending,
    and their indices: (n, cap) each.

    Symmetric sweep: chunk ``[s, e)`` computes its distances to the points ``[s, n)`` only (one
    GEMM, TF32 off), keeps its rows' ``cap`` smallest and hands every later point the ``cap``
    smallest of its column, merged into that point's running list; the pairs before ``s`` came
    from earlier chunks' columns. About half the GEMM work of a full sweep.
    """
    n = centred.shape[0]
    device = centred.device
    values = torch.full((n, cap), torch.inf, dtype=torch.float32, device=device)
    index = torch.full((n, cap), -1, dtype=torch.int64, device=device)
    with exact_float32_matmul():
        for s in range(0, n, rows_per_chunk):
            e = min(n, s + rows_per_chunk)
            block = torch.addmm(sq[s:], centred[s:e], centred[s:].t(), beta=1.0, alpha=-2.0)
            block += sq[s:e, None]
            diagonal = torch.arange(e - s, device=device)
            block[diagonal, diagonal] = torch.inf
            v, i = torch.topk(block, min(cap, n - s), dim=1, largest=False)
            _merge(values, index, s, e, v, i + s)
            if e < n:
                v, i = torch.topk(block[:, e - s :], min(cap, e - s), dim=0, largest=False)
                _merge(values, index, e, n, v.t(), i.t() + s)
    return values, index


def _merge(
    values: torch.Tensor,
    index: torch.Tensor,
    start: int,
    stop: int,
    new_values: torch.Tensor,
    new_index: torch.Tensor,
) -> None:
    """Rows ``[start, stop)`` of the running lists keep their ``cap`` smallest of old and new."""
    cap = values.shape[1]
    both = torch.cat([values[start:stop], new_values], dim=1)
    both_index = torch.cat([index[start:stop], new_index], dim=1)
    kept, pos = torch.topk(both, cap, dim=1, largest=False, sorted=True)
    values[start:stop] = kept
    index[start:stop] = both_index.gather(1, pos)


def _exhaustive(
    xs: torch.Tensor, rows: torch.Tensor, k: int, dist: torch.Tensor, ind: torch.Tensor
) -> None:
    """Exact float64 search of ``rows`` over all points (rows whose candidates were not proven)."""
    n = xs.shape[0]
    everyone = torch.arange(n, device=xs.device)
    for i in rows.tolist():
        d2 = (xs - xs[i]).square().sum(dim=1)
        d2[i] = torch.inf
        d2, order = _sort_pairs(d2.unsqueeze(0), everyone.unsqueeze(0))
        dist[i], ind[i] = d2[0, :k], order[0, :k]


def local_statistics(
    distances: torch.Tensor, settings: _core.TwoNNOptions | _core.MleOptions
) -> torch.Tensor:
    """Per-point statistic from ascending neighbour distances (n, k): ``r2/r1`` (TwoNN) or
    ``1/m_i = Σ_{j<k} ln(T_k/T_j) / (k − 1)`` (MLE, ``k − 2`` when unbiased); float64 (n,)."""
    if isinstance(settings, _core.TwoNNOptions):
        return distances[:, 1] / distances[:, 0]
    k = distances.shape[1]
    logs = torch.log(distances[:, -1:] / distances[:, :-1]).sum(dim=1)
    return logs / (k - 2 if settings.unbiased else k - 1)


def _fit(stats: np.ndarray, settings: _core.TwoNNOptions | _core.MleOptions) -> float:
    """The global estimate from the per-point statistics, as the Rust estimators compute it."""
    n = stats.size
    if isinstance(settings, _core.TwoNNOptions):
        keep = int(np.floor(n * (1.0 - settings.discard_fraction)))
        if keep < 2:
            raise ValueError(
                f"fewer than 2 ratios left after discarding (N = {n}, "
                f"discard_fraction = {settings.discard_fraction})"
            )
        mu = np.log(np.sort(stats)[:keep])
        if settings.method == "mle":
            dim = (keep - 1) / (mu.sum() + (n - keep) * mu[-1])
        else:
            y = -np.log1p(-np.arange(1, keep + 1) / n)
            dim = float(mu @ y) / float(mu @ mu)
        what = "TwoNN estimate"
    else:
        if settings.comb == "mle":
            dim = n / stats.sum()
        elif settings.comb == "mean":
            dim = float(np.mean(1.0 / stats))
        else:
            inv = np.sort(stats)
            h = n // 2
            dim = 1.0 / inv[h] if n % 2 else 0.5 * (1.0 / inv[h - 1] + 1.0 / inv[h])
        what = "MLE estimate"
    if not (np.isfinite(dim) and dim > 0):
        raise ValueError(f"{what} is not finite and positive ({dim})")
    return float(dim)


def _distinct_rows(x: torch.Tensor) -> torch.Tensor:
    """Ascending row numbers of ``x`` with exact copies removed (the first of each kept);
    ``-0.0`` equals ``0.0``."""
    _, inverse = torch.unique(x + 0.0, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), x.shape[0], device=x.device)
    first.scatter_reduce_(0, inverse, torch.arange(x.shape[0], device=x.device), "amin")
    return torch.sort(first).values


def _median(v: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Median along ``dim`` (mean of the two middle values for an even count)."""
    s = torch.sort(v, dim=dim).values
    n = v.shape[dim]
    hi = s.narrow(dim, n // 2, 1).squeeze(dim)
    if n % 2:
        return hi
    return 0.5 * s.narrow(dim, n // 2 - 1, 1).squeeze(dim) + 0.5 * hi


def robust_scale(xs: torch.Tensor) -> float:
    """Median distance of the (scaled, float64) rows from their coordinate-wise median."""
    centre = _median(xs, dim=0)
    return float(_median((xs - centre).square().sum(dim=1).sqrt()))


def _near_duplicates(dist: torch.Tensor, ind: torch.Tensor, threshold: float) -> list[int]:
    """Positions to drop: points joined by a neighbour distance ``<= threshold`` form groups and
    each group keeps its first point (union–find on the few close pairs, on the host)."""
    close = (dist <= threshold).nonzero()
    if close.numel() == 0:
        return []
    i = close[:, 0]
    pairs = torch.stack([i, ind[i, close[:, 1]]], dim=1).cpu().tolist()
    parent: dict[int, int] = {}

    def find(a: int) -> int:
        while parent.get(a, a) != a:
            parent[a] = parent.get(parent[a], parent[a])
            a = parent[a]
        return a

    for a, b in pairs:
        ra, rb = find(a), find(b)
        parent[max(ra, rb)] = min(ra, rb)
    return sorted(p for p in parent if find(p) != p)


def _count_error(n: int, total: int, k: int) -> ValueError | None:
    removed = total - n
    distinct = (
        f"{n} points, none of them a duplicate"
        if removed == 0
        else f"{n} distinct of {total} points after removing {removed} duplicates"
    )
    if n < 3:
        return ValueError(f"X must have at least 3 distinct points, got {distinct}")
    if k >= n:
        return ValueError(
            f"k = {k} must be smaller than the number of distinct points, got {distinct}"
        )
    return None


def estimate_id(
    x: torch.Tensor,
    settings: _core.TwoNNOptions | _core.MleOptions,
    options: _core.EstimateOptions,
) -> IDResult:
    """The intrinsic dimension of the rows of ``x`` (n, D) with the neighbours found on
    ``x``'s device, as the Rust engine's ``estimate_id``: exact copies removed, then near
    duplicates (``duplicate_tol`` × the robust scale), then the estimator's fit. Returns a
    :class:`lorax_core.id.IDResult`.

    Bootstrap intervals and decimation scales are drawn by the Rust engine's generator, which
    takes points, not statistics: with ``bootstrap > 0`` or ``scales=True`` this raises
    ``ValueError`` (use ``device="cpu"``).
    """
    from lorax_core import id as lid  # the estimators import this module lazily

    if options.bootstrap > 0 or options.scales:
        which = "bootstrap" if options.bootstrap > 0 else "scales"
        raise ValueError(
            f"estimate on a CUDA device: {which} is not supported there yet; use device='cpu'"
        )
    if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(
            f"X is empty or not 2-D (shape {tuple(x.shape)}); it needs at least 3 points with "
            "at least 1 feature"
        )
    if x.dtype not in (torch.float32, torch.float64):
        x = x.to(torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("X contains NaN or infinite values")
    k = 2 if isinstance(settings, _core.TwoNNOptions) else settings.k
    total = x.shape[0]
    rows = _distinct_rows(x)
    if (err := _count_error(rows.numel(), total, k)) is not None:
        raise err
    points = x[rows]
    scale = unit_scale(points)
    threshold = options.duplicate_tol * robust_scale(points.to(torch.float64) * scale)
    while True:
        dist, ind = knn(points, k, scale=scale)
        drop = _near_duplicates(dist, ind, threshold)
        if not drop:
            break
        keep = torch.ones(points.shape[0], dtype=torch.bool, device=x.device)
        keep[drop] = False
        points = points[keep]
        if (err := _count_error(points.shape[0], total, k)) is not None:
            raise err
    stats = local_statistics(dist, settings).cpu().numpy()
    n_kept = points.shape[0]
    return lid.IDResult(_fit(stats, settings), None, total, total - n_kept, None)
