"""GeLoRA rank plans: the rank rule of SPEC §4, budget mode, JSON and PEFT conversion.

Rank of every adapted matrix in block i (1-based), from the layer IDs d_0 … d_L:

    r_i = clamp(ceil(c · max(d_i − d_{i−1}, 0)) + offset, rank_min, rank_max),
    alpha_i = alpha_over_r · r_i.

A LoRA adapter of rank r on ``Linear(in, out)`` trains r · (in + out) parameters.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from lorax_core._atomic import atomic_write
from lorax_core.gelora.modules import ModuleShapes, block_of, linear_modules, select_targets

__all__ = ["PLAN_FORMAT", "PLAN_VERSION", "LayerProfile", "ModulePlan", "RankPlan", "plan_ranks"]

PLAN_FORMAT = "lorax_core.rank_plan"
PLAN_VERSION = 1
_BISECTION_STEPS = 200
_C_LIMIT = 1e15  # budget mode searches c in [0, _C_LIMIT]


@dataclass(frozen=True)
class LayerProfile:
    """ID of hidden state h_index and, for blocks (index ≥ 1), the block's rank and alpha."""

    index: int
    dimension: float
    ci: tuple[float, float] | None = None
    rank: int | None = None
    alpha: float | None = None


@dataclass(frozen=True)
class ModulePlan:
    """Planned LoRA rank and alpha of one ``Linear(in_features, out_features)`` in ``block``."""

    block: int
    rank: int
    alpha: float
    in_features: int
    out_features: int

    @property
    def num_parameters(self) -> int:
        """Trainable LoRA parameters: rank · (in + out)."""
        return self.rank * (self.in_features + self.out_features)


@dataclass(frozen=True)
class RankPlan:
    """A per-module LoRA rank plan computed from layer IDs (see :func:`plan_ranks`).

    Attributes:
        layers: d_0 … d_L with intervals, and each block's rank/alpha.
        modules: full module name -> its plan (empty when planned without a model).
        c, offset, rank_min, rank_max, alpha_over_r: the rule's parameters (``c`` as solved in
            budget mode).
        budget: the parameter budget the plan was solved for, or None.
        model, estimator, capture: free-form descriptions of where the IDs came from.
    """

    layers: tuple[LayerProfile, ...]
    modules: dict[str, ModulePlan]
    c: float
    offset: int
    rank_min: int
    rank_max: int | None
    alpha_over_r: float
    budget: int | None = None
    model: dict[str, Any] = field(default_factory=dict)
    estimator: dict[str, Any] = field(default_factory=dict)
    capture: dict[str, Any] = field(default_factory=dict)

    @property
    def num_parameters(self) -> int:
        """Trainable LoRA parameters of the whole plan."""
        return sum(m.num_parameters for m in self.modules.values())

    def uniform_parameters(self, r: int) -> int:
        """Parameters of uniform rank-``r`` LoRA on the same modules, for comparison."""
        return r * sum(m.in_features + m.out_features for m in self.modules.values())

    def rank_pattern(self) -> dict[str, int]:
        """``{"^<module>$": rank}`` for every planned module (PEFT's ``rank_pattern``)."""
        return {f"^{name}$": m.rank for name, m in self.modules.items()}

    def alpha_pattern(self) -> dict[str, float]:
        """``{"^<module>$": alpha}`` for every planned module (PEFT's ``alpha_pattern``)."""
        return {f"^{name}$": m.alpha for name, m in self.modules.items()}

    def _defaults(self) -> tuple[list[str], int, float]:
        if not self.modules:
            raise ValueError("the plan has no modules; build it with plan_ranks(..., model, ...)")
        counts = Counter(m.rank for m in self.modules.values())
        r = min(counts, key=lambda rank: (-counts[rank], rank))
        return list(self.modules), r, self.alpha_over_r * r

    def to_peft_config(self, **lora_kwargs: Any) -> Any:
        """A ``peft.LoraConfig`` targeting the planned modules with their ranks and alphas.

        ``r``/``lora_alpha`` default to the most common planned rank and its alpha (every
        module is also listed in ``rank_pattern``/``alpha_pattern``); other keyword arguments
        go to ``LoraConfig``.

        Raises:
            ModuleNotFoundError: peft is not installed.
            TypeError: a keyword the plan sets itself (target_modules, rank/alpha_pattern).
        """
        try:
            from peft import LoraConfig
        except ImportError:
            raise ModuleNotFoundError(
                "RankPlan.to_peft_config needs peft: pip install 'lorax-core[peft]'"
            ) from None
        _reject_reserved(lora_kwargs)
        names, r, alpha = self._defaults()
        kwargs: dict[str, Any] = {"r": r, "lora_alpha": alpha, **lora_kwargs}
        return LoraConfig(
            target_modules=names,
            rank_pattern=self.rank_pattern(),
            alpha_pattern=self.alpha_pattern(),
            **kwargs,
        )

    def to_adapter_config(self, method: str = "lora", **kwargs: Any) -> Any:
        """A ``lorax_core.adapters.AdapterConfig`` of ``method`` with the planned ranks."""
        from lorax_core.adapters import AdapterConfig

        _reject_reserved(kwargs)
        names, r, alpha = self._defaults()
        merged: dict[str, Any] = {"r": r, "alpha": alpha, **kwargs}
        return AdapterConfig(
            method=method,
            target_modules=names,
            rank_pattern=self.rank_pattern(),
            alpha_pattern=self.alpha_pattern(),
            **merged,
        )

    def validate_for(self, model: nn.Module) -> None:
        """Check that ``model`` has every planned module as a Linear of the planned shape.

        Raises:
            ValueError: naming the modules the model lacks or whose shapes differ.
        """
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        named = dict(model.named_modules())
        missing = [n for n in self.modules if n not in named]
        if missing:
            raise ValueError(f"the plan names modules the model lacks: {_short(missing)}")
        wrong = [
            n
            for n, m in self.modules.items()
            if not isinstance(named[n], nn.Linear)
            or (named[n].in_features, named[n].out_features) != (m.in_features, m.out_features)
        ]
        if wrong:
            raise ValueError(
                f"the plan's modules are not Linear layers of the planned shape: {_short(wrong)}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The versioned JSON document (SPEC §4)."""
        return {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "model": self.model,
            "estimator": self.estimator,
            "capture": self.capture,
            "rule": {
                "c": self.c,
                "offset": self.offset,
                "rank_min": self.rank_min,
                "rank_max": self.rank_max,
                "alpha_over_r": self.alpha_over_r,
                "budget": self.budget,
            },
            "layers": [
                {**asdict(layer), "ci": None if layer.ci is None else list(layer.ci)}
                for layer in self.layers
            ],
            "modules": {name: asdict(m) for name, m in self.modules.items()},
            "num_parameters": self.num_parameters,
        }

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write the plan as JSON atomically; returns the path."""
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    @classmethod
    def from_dict(cls, doc: Any) -> RankPlan:
        """Build a plan from :meth:`to_dict`'s document, validating every field.

        Raises:
            ValueError: wrong format or version, a missing or mistyped field, or inconsistent
                values (layer indices, blocks, parameter count).
        """
        return _parse(doc)

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> RankPlan:
        """Read and validate a plan written by :meth:`to_json`.

        Raises:
            ValueError: the file is unreadable, not JSON, or not a valid plan (see from_dict).
        """
        p = Path(path)
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"{p}: cannot read plan: {err}") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"{p}: plan is not valid JSON: {err}") from None
        try:
            return _parse(doc)
        except ValueError as err:
            raise ValueError(f"{p}: {err}") from None


def _reject_reserved(kwargs: Mapping[str, Any]) -> None:
    reserved = sorted({"target_modules", "rank_pattern", "alpha_pattern"} & set(kwargs))
    if reserved:
        raise TypeError(f"{', '.join(reserved)} are set by the plan and cannot be passed")


def _short(names: Sequence[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _dimension_of(item: Any, i: int) -> tuple[float, tuple[float, float] | None]:
    if hasattr(item, "dimension"):
        value, ci = item.dimension, getattr(item, "ci", None)
    else:
        value, ci = item, None
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"layer_ids[{i}] must be a finite number or an IDResult, got {value!r}")
    if ci is not None:
        ci = (float(ci[0]), float(ci[1]))
    return float(value), ci


def _parse_budget(budget: int | str | None, weights: Sequence[int]) -> int | None:
    if budget is None:
        return None
    if isinstance(budget, str) and budget.startswith("uniform:"):
        r = budget.removeprefix("uniform:")
        if not r.isdigit() or int(r) < 1:
            raise ValueError(f"budget must be a positive int or 'uniform:<r>', got {budget!r}")
        return int(r) * sum(weights)
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget must be a positive int or 'uniform:<r>', got {budget!r}")
    return budget


def _check_int(name: str, value: Any, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def plan_ranks(
    layer_ids: Sequence[Any],
    model: nn.Module | ModuleShapes | None,
    target_modules: str | Sequence[str] | None,
    *,
    c: float = 1.0,
    offset: int = 1,
    rank_min: int = 1,
    rank_max: int | None = None,
    alpha_over_r: float = 32,
    budget: int | str | None = None,
) -> RankPlan:
    """Apply the GeLoRA rank rule to layer IDs d_0 … d_L.

    Args:
        layer_ids: L + 1 IDs, as floats or ``IDResult`` objects (``.dimension``, ``.ci``).
        model: the model (its ``nn.Linear`` modules inside numbered blocks are candidates), a
            mapping of module name -> ``(in_features, out_features)``, or None for a per-block
            plan without modules.
        target_modules: PEFT-style selection (see ``modules.select_targets``); ``None`` or
            ``"all-linear"`` selects every linear module inside a block.
        c, offset, rank_min, rank_max, alpha_over_r: the rule's parameters (SPEC §4).
        budget: a total LoRA parameter count, or ``"uniform:<r>"`` for uniform rank-r LoRA's
            count. ``c`` is then solved for: the largest ``c`` whose plan does not exceed the
            budget (bisection; ranks are monotone in ``c``). The ``c`` argument is ignored.

    Returns:
        The :class:`RankPlan`.

    Raises:
        TypeError, ValueError: bad arguments; a targeted module outside blocks 1 … L; a budget
            below the smallest plan (that at c = 0).
    """
    if isinstance(layer_ids, np.ndarray):
        layer_ids = layer_ids.tolist()
    if not isinstance(layer_ids, Sequence) or len(layer_ids) < 2:
        raise ValueError("layer_ids must hold at least two IDs (d_0 and d_1)")
    profile = [_dimension_of(item, i) for i, item in enumerate(layer_ids)]
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c < 0:
        raise ValueError(f"c must be a finite number >= 0, got {c!r}")
    _check_int("offset", offset, None)
    _check_int("rank_min", rank_min, 1)
    if rank_max is not None:
        _check_int("rank_max", rank_max, rank_min)
    if (
        isinstance(alpha_over_r, bool)
        or not isinstance(alpha_over_r, (int, float))
        or not math.isfinite(alpha_over_r)
        or alpha_over_r <= 0
    ):
        raise ValueError(f"alpha_over_r must be a finite number > 0, got {alpha_over_r!r}")

    shapes: ModuleShapes
    if model is None:
        shapes, names = {}, []
    else:
        shapes = linear_modules(model) if isinstance(model, nn.Module) else model
        names = select_targets(shapes, target_modules)
    n_blocks = len(profile) - 1
    blocks = {name: block_of(name) for name in names}
    outside = [n for n, b in blocks.items() if b is None or b > n_blocks]
    if outside:
        raise ValueError(
            f"target modules lie outside blocks 1..{n_blocks} of the ID profile: {_short(outside)}"
        )
    weights = [0] * (n_blocks + 1)
    for name in names:
        weights[blocks[name] or 0] += sum(shapes[name])
    deltas = [0.0] + [max(profile[i][0] - profile[i - 1][0], 0.0) for i in range(1, n_blocks + 1)]

    def ranks_at(c_value: float) -> list[int]:
        ranks = [0]
        for delta in deltas[1:]:
            r = max(math.ceil(c_value * delta) + offset, rank_min)
            ranks.append(r if rank_max is None else min(r, rank_max))
        return ranks

    def cost(c_value: float) -> int:
        return sum(r * w for r, w in zip(ranks_at(c_value), weights, strict=True))

    target = _parse_budget(budget, weights)
    if target is not None:
        if not names:
            raise ValueError("budget needs target modules; pass a model")
        growing = [d for d, w in zip(deltas, weights, strict=True) if w and d > 0]
        if not growing:
            c_cap: float | None = 0.0
        elif rank_max is None:
            c_cap = None
        else:
            c_cap = max(0.0, *(min((rank_max - offset) / d, _C_LIMIT) for d in growing))
        c = _solve_c(cost, target, c_cap)

    ranks = ranks_at(c)
    layers = tuple(
        LayerProfile(
            index=i,
            dimension=d,
            ci=ci,
            rank=ranks[i] if i else None,
            alpha=float(alpha_over_r * ranks[i]) if i else None,
        )
        for i, (d, ci) in enumerate(profile)
    )
    planned = {
        name: ModulePlan(
            block=blocks[name] or 0,
            rank=ranks[blocks[name] or 0],
            alpha=float(alpha_over_r * ranks[blocks[name] or 0]),
            in_features=shapes[name][0],
            out_features=shapes[name][1],
        )
        for name in names
    }
    return RankPlan(
        layers=layers,
        modules=planned,
        c=float(c),
        offset=offset,
        rank_min=rank_min,
        rank_max=rank_max,
        alpha_over_r=float(alpha_over_r),
        budget=target,
        model={"class": type(model).__name__} if isinstance(model, nn.Module) else {},
    )


def _solve_c(cost: Callable[[float], int], budget: int, c_cap: float | None) -> float:
    """Largest c with cost(c) <= budget; cost is a non-decreasing step function of c.

    ``c_cap`` is a c beyond which cost no longer changes (None: it grows without bound).
    """
    if cost(0.0) > budget:
        raise ValueError(
            f"budget={budget} is below the smallest plan (c = 0), which needs {cost(0.0)} "
            "parameters; lower offset/rank_min or raise the budget"
        )
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


def _field(doc: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in doc:
        raise ValueError(f"plan field {where}{key!r} is missing")
    value = doc[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"plan field {where}{key!r} has the wrong type ({type(value).__name__})")
    return value


def _parse(doc: Any) -> RankPlan:
    if not isinstance(doc, dict):
        raise ValueError("plan must be a JSON object")
    if doc.get("format") != PLAN_FORMAT:
        raise ValueError(
            f"not a rank plan (format {doc.get('format')!r}, expected {PLAN_FORMAT!r})"
        )
    if doc.get("version") != PLAN_VERSION:
        raise ValueError(
            f"unsupported plan version {doc.get('version')!r} (this is {PLAN_VERSION})"
        )
    rule = _field(doc, "rule", dict, "")
    number = (int, float)
    layers_doc = _field(doc, "layers", list, "")
    layers: list[LayerProfile] = []
    for i, item in enumerate(layers_doc):
        where = f"layers[{i}]."
        if not isinstance(item, dict):
            raise ValueError(f"plan field layers[{i}] must be an object")
        if _field(item, "index", int, where) != i:
            raise ValueError(f"plan field {where}'index' must be {i}")
        ci = item.get("ci")
        if ci is not None and not (
            isinstance(ci, list) and len(ci) == 2 and all(isinstance(v, number) for v in ci)
        ):
            raise ValueError(f"plan field {where}'ci' must be null or two numbers")
        rank, alpha = item.get("rank"), item.get("alpha")
        if i == 0 and (rank is not None or alpha is not None):
            raise ValueError("plan field layers[0] (the embeddings) must have no rank or alpha")
        if i > 0:
            _positive(_field(item, "rank", int, where), f"{where}'rank'")
            _positive(_field(item, "alpha", number, where), f"{where}'alpha'")
        layers.append(
            LayerProfile(
                index=i,
                dimension=float(_field(item, "dimension", number, where)),
                ci=None if ci is None else (float(ci[0]), float(ci[1])),
                rank=rank,
                alpha=None if alpha is None else float(alpha),
            )
        )
    if len(layers) < 2:
        raise ValueError("plan field 'layers' must hold at least two layers")
    modules: dict[str, ModulePlan] = {}
    for name, item in _field(doc, "modules", dict, "").items():
        where = f"modules[{name!r}]."
        if not isinstance(item, dict):
            raise ValueError(f"plan field modules[{name!r}] must be an object")
        values = {
            key: _positive(_field(item, key, int, where), f"{where}{key!r}")
            for key in ("block", "rank", "in_features", "out_features")
        }
        if values["block"] >= len(layers):
            raise ValueError(f"plan field {where}'block' is beyond the {len(layers) - 1} blocks")
        alpha = _positive(_field(item, "alpha", number, where), f"{where}'alpha'")
        modules[name] = ModulePlan(alpha=float(alpha), **values)
    rank_max = rule.get("rank_max")
    budget = rule.get("budget")
    plan = RankPlan(
        layers=tuple(layers),
        modules=modules,
        c=float(_field(rule, "c", number, "rule.")),
        offset=_field(rule, "offset", int, "rule."),
        rank_min=_positive(_field(rule, "rank_min", int, "rule."), "rule.'rank_min'"),
        rank_max=None
        if rank_max is None
        else _positive(_field(rule, "rank_max", int, "rule."), "rule.'rank_max'"),
        alpha_over_r=float(_positive(_field(rule, "alpha_over_r", number, "rule."), "alpha")),
        budget=None
        if budget is None
        else _positive(_field(rule, "budget", int, "rule."), "rule.'budget'"),
        model=_field(doc, "model", dict, ""),
        estimator=_field(doc, "estimator", dict, ""),
        capture=_field(doc, "capture", dict, ""),
    )
    if doc.get("num_parameters") != plan.num_parameters:
        raise ValueError(
            f"plan field 'num_parameters' is {doc.get('num_parameters')!r} but its modules add "
            f"up to {plan.num_parameters}"
        )
    return plan


def _positive(value: Any, where: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"plan field {where} must be a number")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"plan field {where} must be > 0, got {value}")
    return value
