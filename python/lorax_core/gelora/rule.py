"""The GeLoRA rank rule and its budget solver (docs/gelora.md).

From the layer IDs d_0 … d_L, the rank of every adapted matrix in block i (1-based) is

    r_i = clamp(ceil(c · max(d_i − d_{i−1}, 0)) + offset, rank_min, rank_max),

and its LoRA alpha is ``alpha_over_r · r_i``. A LoRA adapter of rank r on ``Linear(in, out)``
trains ``r · (in + out)`` parameters, so a plan's size is ``Σ_i r_i · w_i`` where the block
weight ``w_i`` sums ``in + out`` over the block's targeted modules.

In budget mode ``c`` is solved for: the largest ``c`` whose plan does not exceed a parameter
budget. Every r_i is a non-decreasing step function of ``c``, so the cost is too, and
bisection finds the last step that fits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from lorax_core._validation import Integer, NoneValue, Satisfies, check

__all__ = [
    "BUDGET_RULES",
    "RULE_FIELDS",
    "Budget",
    "block_ranks",
    "budget_parameters",
    "check_budget",
    "id_increases",
    "plan_cost",
    "solve_c",
]

#: A parameter count, or ``"uniform:<r>"``: the count of uniform rank-r LoRA on the targets.
Budget = int | str

UNIFORM_PREFIX = "uniform:"
# The rule's settings, in the order plan_ranks, RankPlan and the plan document name them.
RULE_FIELDS = ("c", "offset", "rank_min", "rank_max", "alpha_over_r", "budget", "rank_mode")
_BISECTION_STEPS = 200
_C_LIMIT = 1e15  # the solver searches c in [0, _C_LIMIT]


def _is_uniform(text: str) -> bool:
    r = text.removeprefix(UNIFORM_PREFIX)
    return text.startswith(UNIFORM_PREFIX) and r.isascii() and r.isdigit() and int(r) >= 1


#: The accepted forms of a budget argument.
BUDGET_RULES = (
    Integer(low=1),
    Satisfies(str, _is_uniform, "'uniform:<r>' with an int r >= 1"),
    NoneValue(),
)


def check_budget(function: str, argument: str, budget: object) -> Budget | None:
    """``budget`` if it is a positive int, ``"uniform:<r>"`` (r >= 1) or None; else raise."""
    return check(function, argument, budget, *BUDGET_RULES)  # type: ignore[no-any-return]


def id_increases(dimensions: Sequence[float]) -> list[float]:
    """``max(d_i − d_{i−1}, 0)`` for blocks i = 1 … L, from d_0 … d_L."""
    return [max(dimensions[i] - dimensions[i - 1], 0.0) for i in range(1, len(dimensions))]


def block_ranks(
    increases: Sequence[float], c: float, offset: int, rank_min: int, rank_max: int | None
) -> list[int]:
    """The rule's r_1 … r_L from the ID increases of blocks 1 … L (see the module docstring).

    Raises:
        ValueError: ``c · Δd`` overflows to infinity for a block and there is no ``rank_max``
            (with one, that block's rank is ``rank_max``).
    """
    ranks = []
    for i, delta in enumerate(increases, 1):
        grown = c * delta if c else 0.0  # an overflowed Δd = inf still grows nothing at c = 0
        if math.isinf(grown):
            if rank_max is None:
                raise ValueError(
                    f"the rank of block {i} is unbounded: c · Δd = {c!r} · {delta!r} overflows "
                    "and there is no rank_max"
                )
            ranks.append(rank_max)
            continue
        r = max(math.ceil(grown) + offset, rank_min)
        ranks.append(r if rank_max is None else min(r, rank_max))
    return ranks


def plan_cost(ranks: Sequence[int], weights: Sequence[int]) -> int:
    """LoRA parameters of per-block ``ranks`` with per-block ``weights`` (Σ in + out)."""
    return sum(r * w for r, w in zip(ranks, weights, strict=True))


def budget_parameters(budget: Budget | None, weights: Sequence[int]) -> int | None:
    """The budget as a parameter count (``"uniform:<r>"`` is ``r · Σ weights``), or None."""
    if isinstance(budget, str):
        return int(budget.removeprefix(UNIFORM_PREFIX)) * sum(weights)
    return budget


def solve_c(
    increases: Sequence[float],
    weights: Sequence[int],
    budget: int,
    offset: int,
    rank_min: int,
    rank_max: int | None,
) -> float:
    """The largest ``c`` in ``[0, 1e15]`` whose plan costs at most ``budget`` parameters.

    Args:
        increases: ``max(Δd_i, 0)`` per block (:func:`id_increases`).
        weights: Σ ``in + out`` of the targeted modules per block.
        budget: the parameter budget.
        offset, rank_min, rank_max: the rule's other parameters.

    Returns:
        ``c``; when no rank can grow any more (all at ``rank_max``, or no growing block is
        targeted) the smallest ``c`` beyond which the plan no longer changes, doubled plus one.

    Raises:
        ValueError: the budget is below the plan at ``c = 0``.
    """

    def cost(c: float) -> int:
        return plan_cost(block_ranks(increases, c, offset, rank_min, rank_max), weights)

    if cost(0.0) > budget:
        raise ValueError(
            f"budget={budget} is below the smallest plan (c = 0), which needs {cost(0.0)} "
            "parameters; lower offset/rank_min or raise the budget"
        )
    growing = [d for d, w in zip(increases, weights, strict=True) if w and d > 0]
    # c beyond which the cost no longer changes (None: it grows without bound)
    c_cap: float | None
    if not growing:
        c_cap = 0.0
    elif rank_max is None:
        c_cap = None
    else:
        c_cap = max(0.0, *(min((rank_max - offset) / d, _C_LIMIT) for d in growing))
    lo, hi = 0.0, 1.0
    if c_cap is not None:
        hi = min(2 * c_cap + 1, _C_LIMIT)
        if cost(hi) <= budget:
            return hi  # every growing rank is at rank_max: the budget cannot be spent
    else:
        while cost(hi) <= budget:
            if hi >= _C_LIMIT:
                return hi  # the ID increases are too small to spend the budget
            lo, hi = hi, min(hi * 2, _C_LIMIT)
    for _ in range(_BISECTION_STEPS):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        if cost(mid) <= budget:
            lo = mid
        else:
            hi = mid
    return lo
