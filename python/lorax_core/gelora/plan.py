"""GeLoRA rank plans: what a plan holds, how one is made from layer IDs, its PEFT conversion.

:func:`plan_ranks` applies the rank rule (:mod:`lorax_core.gelora.rule`, docs/gelora.md) to
the IDs d_0 … d_L of a model's hidden states and the model's linear modules; the
:class:`RankPlan` it returns converts to a ``peft.LoraConfig`` or a lorax_core
``AdapterConfig`` and reads and writes its JSON document (:mod:`lorax_core.gelora.schema`).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from lorax_core import _validation as val
from lorax_core.adapters.patterns import resolve_names, suffix_key
from lorax_core.gelora import schema
from lorax_core.gelora.modules import ModuleShapes, block_of, linear_modules, select_targets
from lorax_core.gelora.rule import (
    Budget,
    block_ranks,
    budget_parameters,
    check_budget,
    solve_c,
)
from lorax_core.gelora.schema import PLAN_FORMAT, PLAN_VERSION
from lorax_core.gelora.stability import (
    MIN_RESAMPLES,
    RANK_MODES,
    increases_for,
    mean_stability,
    resample_fields,
)

__all__ = ["PLAN_FORMAT", "PLAN_VERSION", "LayerProfile", "ModulePlan", "RankPlan", "plan_ranks"]

_MODULE = val.Instance(nn.Module, "a torch.nn.Module")


@dataclass(frozen=True)
class LayerProfile:
    """ID of hidden state h_index and, for blocks (index ≥ 1), the block's rank and alpha.

    With joint resamples (:mod:`lorax_core.gelora.stability`): ``resamples`` holds d_index of
    each resample, and blocks have ``delta_ci`` (the 95 % interval of Δd), ``rank_range``
    (the 2.5 % and 97.5 % quantiles of the resamples' ranks) and ``rank_stability`` (the
    fraction of resamples that give the block its rank); all None without resamples.
    """

    index: int
    dimension: float
    ci: tuple[float, float] | None = None
    rank: int | None = None
    alpha: float | None = None
    delta_ci: tuple[float, float] | None = None
    rank_range: tuple[int, int] | None = None
    rank_stability: float | None = None
    resamples: tuple[float, ...] | None = None


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

    Module names are relative to the model's transformer backbone (``layers.0.self_attn.q_proj``,
    ``encoder.layer.0.attention.self.query``), so one plan applies to the base model, a task
    model around it (``…ForCausalLM``, ``…ForSequenceClassification``) and a PEFT model around
    that: a name refers to the one module whose full name equals it or ends with ``"." +
    name`` (:meth:`resolve`, docs/gelora.md).

    Attributes:
        layers: d_0 … d_L with intervals, and each block's rank/alpha.
        modules: backbone-relative module name -> its plan (empty when planned without a
            model).
        c, offset, rank_min, rank_max, alpha_over_r: the rule's parameters (``c`` as solved in
            budget mode).
        budget: the parameter budget the plan was solved for, or None.
        rank_mode: ``plain`` or ``noise-aware`` (:mod:`lorax_core.gelora.stability`).
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
    rank_mode: str = "plain"
    model: dict[str, Any] = field(default_factory=dict)
    estimator: dict[str, Any] = field(default_factory=dict)
    capture: dict[str, Any] = field(default_factory=dict)

    @property
    def stability(self) -> float | None:
        """Mean over the blocks of ``rank_stability`` (None without joint resamples)."""
        return mean_stability([layer.rank_stability for layer in self.layers[1:]])

    @property
    def num_parameters(self) -> int:
        """Trainable LoRA parameters of the whole plan."""
        return sum(m.num_parameters for m in self.modules.values())

    def uniform_parameters(self, r: int) -> int:
        """Parameters of uniform rank-``r`` LoRA on the same modules, for comparison."""
        return r * sum(m.in_features + m.out_features for m in self.modules.values())

    def rank_pattern(self) -> dict[str, int]:
        """PEFT's ``rank_pattern``: each planned module's name, dots escaped, -> its rank.

        PEFT (``get_pattern_key``) and lorax_core (``AdapterConfig.rank_for``) both match a key
        against a dotted suffix of the full name, so ``layers\\.0\\.self_attn\\.q_proj``
        gives its rank to ``model.layers.0.self_attn.q_proj`` of a causal LM as well as to
        ``layers.0.self_attn.q_proj`` of its base model, and to no other module.
        """
        return {suffix_key(name): m.rank for name, m in self.modules.items()}

    def alpha_pattern(self) -> dict[str, float]:
        """PEFT's ``alpha_pattern``, keyed as :meth:`rank_pattern`."""
        return {suffix_key(name): m.alpha for name, m in self.modules.items()}

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
                "RankPlan.to_peft_config needs peft: pip install '.[peft]' from a source checkout"
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

    def resolve(self, model: nn.Module) -> dict[str, ModulePlan]:
        """The planned modules as ``model`` names them: full name -> plan.

        A planned name refers to the one module of ``model`` whose full name equals it or ends
        with ``"." + name`` — ``layers.0.mlp.up_proj`` is ``model.layers.0.mlp.up_proj`` of a
        causal LM and ``base_model.model.model.layers.0.mlp.up_proj`` of a PEFT model around
        it. Modules inside an adapter layer are not candidates (the adapter layer is).

        Raises:
            ValueError: naming the planned modules the model lacks, or that refer to more than
                one module.
        """
        val.check("RankPlan.resolve", "model", model, _MODULE)
        found = resolve_names(model, self.modules)
        missing = [n for n, full in found.items() if not full]
        if missing:
            raise ValueError(f"the plan names modules the model lacks: {_short(missing)}")
        ambiguous = [f"{n} ({', '.join(full[:2])})" for n, full in found.items() if len(full) > 1]
        if ambiguous:
            raise ValueError(
                f"the plan's module names each refer to more than one module of the model: "
                f"{_short(ambiguous)}"
            )
        return {full[0]: self.modules[name] for name, full in found.items()}

    def validate_for(self, model: nn.Module) -> None:
        """Check that ``model`` has every planned module, once, as a Linear of the planned
        shape (an adapter layer counts as the Linear it wraps); see :meth:`resolve`.

        Raises:
            ValueError: naming the modules the model lacks, that are ambiguous, or whose
                shapes differ.
        """
        val.check("RankPlan.validate_for", "model", model, _MODULE)
        named = dict(model.named_modules())
        wrong = []
        for full, planned in self.resolve(model).items():
            module = named[full]
            base = getattr(module, "base_layer", None)
            linear = base if isinstance(base, nn.Linear) else module
            shape = (planned.in_features, planned.out_features)
            if (
                not isinstance(linear, nn.Linear)
                or (
                    linear.in_features,
                    linear.out_features,
                )
                != shape
            ):
                wrong.append(full)
        if wrong:
            raise ValueError(
                f"the plan's modules are not Linear layers of the planned shape: {_short(wrong)}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The versioned JSON document (:mod:`lorax_core.gelora.schema`, docs/gelora.md)."""
        return schema.plan_to_dict(self)

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write the plan as JSON atomically; returns the path.

        Raises:
            ValueError: ``<path>: <field> must be …`` for a plan :meth:`from_json` would
                refuse; nothing is written then.
        """
        return schema.write_plan(self, path)

    @classmethod
    def from_dict(cls, doc: Any) -> RankPlan:
        """Build a plan from :meth:`to_dict`'s document, validating every field.

        Raises:
            ValueError: ``plan: <field> must be …, got …``: wrong format or version, a missing,
                unknown or mistyped field, or a plan that contradicts itself (ranks or alphas
                off its own rule, ``rank_min > rank_max``, a budget below its size, a module
                outside its named block, a wrong parameter count).
        """
        return schema.plan_from_dict(doc)

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> RankPlan:
        """Read and validate a plan written by :meth:`to_json`.

        Raises:
            ValueError: the file is unreadable, not JSON, or not a valid plan (see from_dict).
        """
        return schema.read_plan(path)


def _reject_reserved(kwargs: Mapping[str, Any]) -> None:
    reserved = sorted({"target_modules", "rank_pattern", "alpha_pattern"} & set(kwargs))
    if reserved:
        raise TypeError(f"{', '.join(reserved)} are set by the plan and cannot be passed")


def _short(names: Sequence[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _dimension_of(item: Any, i: int) -> tuple[float, tuple[float, float] | None]:
    """d_i and its interval from a float or an ``IDResult``-like object."""
    if hasattr(item, "dimension"):
        value = val.check("plan_ranks", f"layer_ids[{i}].dimension", item.dimension, val.Real())
        ci = val.check("plan_ranks", f"layer_ids[{i}].ci", getattr(item, "ci", None), *_CI)
        return value, None if ci is None else (float(ci[0]), float(ci[1]))
    return val.check("plan_ranks", f"layer_ids[{i}]", item, val.Real(), _ID_RESULT), None


# Named in messages only: an IDResult-like item was already read through its attributes.
_ID_RESULT = val.Satisfies((), lambda item: False, "an IDResult")
_CI = (
    val.Satisfies(
        (tuple, list),
        lambda ci: (
            len(ci) == 2 and all(val.is_real(v) and math.isfinite(v) for v in ci) and ci[0] <= ci[1]
        ),
        "a pair of finite numbers (lo, hi) with lo <= hi",
    ),
    val.NoneValue(),
)


@val.validate_params(
    layer_ids=val.Satisfies(
        (Sequence, np.ndarray),
        lambda ids: len(ids) >= 2 and not isinstance(ids, str),
        "a sequence of at least two IDs (d_0 and d_1)",
    ),
    model=[_MODULE, val.Instance(Mapping, "a mapping"), val.NoneValue()],
    c=val.Real(low=0),
    offset=val.Integer(),
    rank_min=val.Integer(low=1),
    rank_max=[val.Integer(low=1), val.NoneValue()],
    alpha_over_r=val.Real(low=0, closed="neither"),
    rank_mode=val.Options(RANK_MODES),
    resamples=[
        val.Satisfies(
            (np.ndarray, Sequence),
            lambda r: np.asarray(r).ndim == 2 and np.asarray(r).shape[0] >= MIN_RESAMPLES,
            f"a [B, L + 1] array of resample IDs with B >= {MIN_RESAMPLES}",
        ),
        val.NoneValue(),
    ],
)
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
    budget: Budget | None = None,
    rank_mode: str = "plain",
    resamples: np.ndarray | Sequence[Sequence[float]] | None = None,
) -> RankPlan:
    """Apply the GeLoRA rank rule to layer IDs d_0 … d_L.

    Args:
        layer_ids: L + 1 IDs, as floats or ``IDResult`` objects (``.dimension``, ``.ci``).
        model: the model (its ``nn.Linear`` modules inside numbered blocks are candidates), a
            mapping of module name -> ``(in_features, out_features)``, or None for a per-block
            plan without modules.
        target_modules: PEFT-style selection (see ``modules.select_targets``); ``None`` or
            ``"all-linear"`` selects every linear module inside a block.
        c, offset, rank_min, rank_max, alpha_over_r: the rule's parameters
            (:mod:`lorax_core.gelora.rule`, docs/gelora.md); ``rank_max >= rank_min``.
        budget: a total LoRA parameter count, or ``"uniform:<r>"`` for uniform rank-r LoRA's
            count. ``c`` is then solved for: the largest ``c`` whose plan does not exceed the
            budget (bisection; ranks are monotone in ``c``). The ``c`` argument is ignored.

    Returns:
        The :class:`RankPlan`.

    Raises:
        TypeError, ValueError: bad arguments (``plan_ranks: <argument> must be …``); a
            targeted module outside blocks 1 … L; a budget below the smallest plan (that at
            c = 0).
    """
    if isinstance(layer_ids, np.ndarray):
        layer_ids = layer_ids.tolist()
    profile = [_dimension_of(item, i) for i, item in enumerate(layer_ids)]
    if rank_max is not None:
        val.check("plan_ranks", "rank_max", rank_max, val.Integer(low=rank_min), val.NoneValue())
    budget = check_budget("plan_ranks", "budget", budget)

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
    weights = [0] * n_blocks  # Σ in + out of the targeted modules of blocks 1 … L
    for name in names:
        weights[blocks[name] - 1] += sum(shapes[name])  # type: ignore[operator]
    dims = [d for d, _ in profile]
    draws = None if resamples is None else np.asarray(resamples, np.float64)
    if draws is not None and (draws.shape[1] != len(dims) or not np.isfinite(draws).all()):
        raise ValueError(
            f"plan_ranks: resamples must be finite [B, {len(dims)}] (one ID per layer), got "
            f"shape {list(draws.shape)}"
        )
    try:
        increases = increases_for(dims, draws, rank_mode)
    except ValueError as err:
        raise ValueError(f"plan_ranks: {err}") from None

    target = budget_parameters(budget, weights)
    if target is not None:
        if not names:
            raise ValueError("plan_ranks: budget needs target modules; pass a model")
        c = solve_c(increases, weights, target, offset, rank_min, rank_max)

    ranks = [0, *block_ranks(increases, c, offset, rank_min, rank_max)]
    layers = _layers(
        profile, ranks, alpha_over_r, draws, rank_mode, (c, offset, rank_min, rank_max)
    )
    planned = {
        name: ModulePlan(
            block=blocks[name],  # type: ignore[arg-type]
            rank=ranks[blocks[name]],  # type: ignore[index]
            alpha=float(alpha_over_r * ranks[blocks[name]]),  # type: ignore[index]
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
        rank_mode=rank_mode,
        model={"class": type(model).__name__} if isinstance(model, nn.Module) else {},
    )


def _layers(
    profile: Sequence[tuple[float, tuple[float, float] | None]],
    ranks: Sequence[int],
    alpha_over_r: float,
    resamples: np.ndarray | None,
    rank_mode: str,
    rule: tuple[float, int, int, int | None],
) -> tuple[LayerProfile, ...]:
    """The plan's layers: IDs, block ranks and alphas, and the resample summary if any."""
    dims = [d for d, _ in profile]
    fields = resample_fields(dims, resamples, ranks[1:], rank_mode, rule)
    layers = []
    for i, ((d, ci), extra) in enumerate(zip(profile, fields, strict=True)):
        layers.append(
            LayerProfile(
                index=i,
                dimension=d,
                ci=ci,
                rank=ranks[i] if i else None,
                alpha=float(alpha_over_r * ranks[i]) if i else None,
                **extra,
            )
        )
    return tuple(layers)
