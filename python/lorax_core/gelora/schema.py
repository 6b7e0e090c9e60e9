"""The rank plan's JSON document (docs/gelora.md): writing it, and reading it back validated.

Layout, version 2::

    {"format": "lorax_core.rank_plan", "version": 2,
     "model": {...}, "estimator": {...}, "capture": {...},          # free-form descriptions
     "rule": {"c", "offset", "rank_min", "rank_max", "alpha_over_r", "budget",
              "rank_mode": "plain" | "noise-aware"},
     "layers": [{"index": i, "dimension": d_i, "ci": [lo, hi] | null,
                 "rank": r_i | null, "alpha": alpha_i | null,
                 "resamples": [d_i of each joint resample] | null,
                 "delta_ci": [lo, hi] | null, "rank_range": [lo, hi] | null,
                 "rank_stability": fraction | null}, ...],          # h_0 … h_L
     "modules": {"<module name>": {"block", "rank", "alpha", "in_features", "out_features"}},
     "stability": mean rank_stability | null,
     "num_parameters": Σ rank · (in_features + out_features)}

Version 1 documents (no ``rank_mode``, no resample fields, no ``stability``) still load, as
plain plans without resamples. The resample fields are recomputed from ``resamples`` on reading
(:mod:`lorax_core.gelora.stability`) and must match.

Reading checks every field and reports the first fault as ``<where>: <field> must be <rule>,
got <value>`` (a ``ValueError``), ``<where>`` being the file or ``"plan"``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lorax_core import _validation as val
from lorax_core._atomic import atomic_write
from lorax_core._format import DocumentFormat
from lorax_core.gelora.modules import block_of
from lorax_core.gelora.rule import RULE_FIELDS, block_ranks
from lorax_core.gelora.stability import (
    MIN_RESAMPLES,
    RANK_MODES,
    RESAMPLE_FIELDS,
    increases_for,
    mean_stability,
    resample_fields,
)

if TYPE_CHECKING:
    from lorax_core.gelora.plan import RankPlan

__all__ = [
    "PLAN_DOCUMENT",
    "PLAN_FORMAT",
    "PLAN_VERSION",
    "plan_from_dict",
    "plan_to_dict",
    "read_plan",
    "write_plan",
]

#: The plan document's format: name ``lorax_core.rank_plan``, integer ``version``.
PLAN_DOCUMENT = DocumentFormat("lorax_core.rank_plan", 2)
PLAN_FORMAT = PLAN_DOCUMENT.name
PLAN_VERSION = PLAN_DOCUMENT.version

_FIELDS = ("model", "estimator", "capture", "rule", "layers", "modules", "num_parameters")
_FIELDS_V2 = (*_FIELDS, "stability")
_POSITIVE_INT = val.Integer(low=1)
_POSITIVE = val.Real(low=0, closed="neither")
_OBJECT = val.Instance(dict, "an object")


def plan_to_dict(plan: RankPlan) -> dict[str, Any]:
    """The versioned JSON document of ``plan`` (see the module docstring)."""
    return PLAN_DOCUMENT.stamp(
        {
            "model": plan.model,
            "estimator": plan.estimator,
            "capture": plan.capture,
            "rule": {
                "c": plan.c,
                "offset": plan.offset,
                "rank_min": plan.rank_min,
                "rank_max": plan.rank_max,
                "alpha_over_r": plan.alpha_over_r,
                "budget": plan.budget,
                "rank_mode": plan.rank_mode,
            },
            "layers": [
                {
                    key: list(value) if isinstance(value, tuple) else value
                    for key, value in asdict(layer).items()
                }
                for layer in plan.layers
            ],
            "modules": {name: asdict(m) for name, m in plan.modules.items()},
            "stability": plan.stability,
            "num_parameters": plan.num_parameters,
        }
    )


def write_plan(plan: RankPlan, path: str | os.PathLike[str]) -> Path:
    """Write ``plan`` as JSON atomically; returns the path.

    The document is checked as :func:`read_plan` checks it before anything is written, so every
    written plan reads back equal.

    Raises:
        ValueError: ``<path>: …`` naming the first field that contradicts the plan's own rule.
    """
    checked = plan_from_dict(plan_to_dict(plan), str(path))  # plain ints and floats too
    text = json.dumps(plan_to_dict(checked), indent=2, allow_nan=False) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


class _DuplicateKeyError(ValueError):
    """A JSON object names one key twice."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKeyError(f"the key {key!r} appears twice in one object")
        seen[key] = value
    return seen


def read_plan(path: str | os.PathLike[str]) -> RankPlan:
    """Read and validate a plan written by :func:`write_plan`.

    No JSON object may name a key twice (two modules of one name); ``NaN``/``Infinity`` are
    read so that the field holding one is named.

    Raises:
        ValueError: ``<path>: …`` when the file is unreadable, not JSON, or not a valid plan.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
        doc = json.loads(text, object_pairs_hook=_unique_keys)
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{p}: cannot read plan: {err}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{p}: plan is not valid JSON: {err}") from None
    except _DuplicateKeyError as err:
        raise ValueError(f"{p}: plan is not valid JSON: {err}") from None
    except RecursionError:
        raise ValueError(f"{p}: plan is not valid JSON: nested too deeply") from None
    return plan_from_dict(doc, str(p))


def _check(where: str, field: str, value: Any, *constraints: val.Constraint) -> Any:
    """``value`` checked against ``constraints``; every fault is a ``ValueError``."""
    try:
        return val.check(where, field, value, *constraints)
    except TypeError as err:
        raise ValueError(str(err)) from None


def _get(
    doc: Mapping[str, Any], key: str, where: str, path: str, *constraints: val.Constraint
) -> Any:
    """``doc[key]`` checked against ``constraints`` (see :func:`_check`), or missing."""
    if key not in doc:
        raise ValueError(f"{where}: {path}{key} is missing")
    return _check(where, f"{path}{key}", doc[key], *constraints)


def _fault(where: str, field: str, rule: str, value: Any) -> ValueError:
    return ValueError(f"{where}: {field} must be {rule}, got {val.describe(value)}")


def _only(where: str, field: str, doc: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    """Refuse fields a version-1 document does not have (they would be lost on writing)."""
    unknown = [k for k in doc if k not in keys]
    if unknown:
        raise _fault(where, field, "an object of " + ", ".join(keys), f"field {unknown[0]!r}")


def _json_value(value: Any) -> bool:
    """Whether ``value`` is plain JSON (str keys, finite numbers) that reads back equal."""
    try:
        return bool(json.loads(json.dumps(value, allow_nan=False)) == value)
    except (TypeError, ValueError, RecursionError):
        return False


_FREE_FORM = val.Satisfies(dict, _json_value, "a JSON object")
_LAYER_FIELDS = ("index", "dimension", "ci", "rank", "alpha")
_MODULE_FIELDS = ("block", "rank", "alpha", "in_features", "out_features")
_CI = val.Instance(list, "null or two numbers [lo, hi] with lo <= hi")
_LIST = val.Instance(list, "a list")


def _same_alpha(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)


def plan_from_dict(doc: Any, where: str = "plan") -> RankPlan:
    """Build a plan from :func:`plan_to_dict`'s document, validating every field.

    Beyond each field's type and range, the plan must agree with itself: ``rank_min <=
    rank_max``; each block's rank is the rule's for its layer IDs and its alpha is
    ``alpha_over_r · rank``; each module lies in the block its name says, with its block's rank
    and alpha; ``num_parameters`` is the modules' sum and does not exceed ``budget``.

    Args:
        doc: the parsed JSON document.
        where: what to call the document in errors (a path, or ``"plan"``).

    Raises:
        ValueError: ``<where>: <field> must be <rule>, got <value>`` for the first fault
            (wrong format or version, a missing, unknown or mistyped field, inconsistent values).
    """
    from lorax_core.gelora.plan import LayerProfile, ModulePlan, RankPlan

    version = PLAN_DOCUMENT.check(doc, where, required=_FIELDS)
    v1 = version == 1
    _only(where, "the plan", doc, (*PLAN_DOCUMENT.fields(), *(_FIELDS if v1 else _FIELDS_V2)))
    if not v1 and "stability" not in doc:
        raise ValueError(f"{where}: stability is missing")
    rule = _get(doc, "rule", where, "", _OBJECT)
    _only(where, "rule", rule, RULE_FIELDS[:-1] if v1 else RULE_FIELDS)
    c = _get(rule, "c", where, "rule.", val.Real(low=0))
    offset = _get(rule, "offset", where, "rule.", val.Integer())
    rank_min = _get(rule, "rank_min", where, "rule.", _POSITIVE_INT)
    rank_max = _get(rule, "rank_max", where, "rule.", val.Integer(low=rank_min), val.NoneValue())
    alpha_over_r = _get(rule, "alpha_over_r", where, "rule.", _POSITIVE)
    budget = _get(rule, "budget", where, "rule.", _POSITIVE_INT, val.NoneValue())
    rank_mode = "plain" if v1 else _get(rule, "rank_mode", where, "rule.", val.Options(RANK_MODES))

    layers_doc = _get(doc, "layers", where, "", val.Instance(list, "a list"))
    if len(layers_doc) < 2:
        raise _fault(where, "layers", "a list of at least two layers", layers_doc)
    entries: list[tuple[float, tuple[float, float] | None]] = []
    for i, item in enumerate(layers_doc):
        at = f"layers[{i}]."
        _check(where, f"layers[{i}]", item, _OBJECT)
        _only(where, f"layers[{i}]", item, _LAYER_FIELDS if v1 else _LAYER_FIELDS + RESAMPLE_FIELDS)
        _get(item, "index", where, at, val.Integer(low=i, high=i))
        dimension = _get(item, "dimension", where, at, val.Real())
        ci = _get(item, "ci", where, at, _CI, val.NoneValue())
        if ci is not None:
            if len(ci) != 2:
                raise _fault(where, f"{at}ci", _CI.rule, ci)
            lo, hi = (_check(where, f"{at}ci[{j}]", v, val.Real()) for j, v in enumerate(ci))
            if lo > hi:
                raise _fault(where, f"{at}ci", _CI.rule, ci)
            ci = (lo, hi)
        entries.append((dimension, ci))
    draws = None if v1 else _resamples(where, layers_doc)
    dims = [d for d, _ in entries]
    try:
        increases = increases_for(dims, draws, rank_mode)
    except ValueError as err:
        raise _fault(where, "rule.rank_mode", f"'plain' ({err})", rank_mode) from None
    try:
        ranks = block_ranks(increases, c, offset, rank_min, rank_max)
    except ValueError as err:
        raise _fault(where, "rule.c", f"small enough for finite ranks ({err})", c) from None
    layers: list[LayerProfile] = []
    for i, (dimension, ci) in enumerate(entries):
        at, item = f"layers[{i}].", layers_doc[i]
        if i == 0:
            _get(item, "rank", where, at, val.NoneValue())
            _get(item, "alpha", where, at, val.NoneValue())
            layers.append(LayerProfile(index=0, dimension=dimension, ci=ci))
            continue
        rank = _get(item, "rank", where, at, _POSITIVE_INT)
        expected = ranks[i - 1]
        if rank != expected:
            basis = (
                f"d_{i - 1} = {entries[i - 1][0]!r} and d_{i} = {dimension!r}"
                if rank_mode == "plain"
                else f"the lower end {increases[i - 1]!r} of Δd's resample interval"
            )
            raise _fault(where, f"{at}rank", f"{expected}, the rule's rank for {basis}", rank)
        alpha = _get(item, "alpha", where, at, _POSITIVE)
        if not _same_alpha(alpha, alpha_over_r * rank):
            raise _fault(
                where, f"{at}alpha", f"rule.alpha_over_r × rank = {alpha_over_r * rank!r}", alpha
            )
        layers.append(LayerProfile(index=i, dimension=dimension, ci=ci, rank=rank, alpha=alpha))
    if not v1:
        rule_of = (c, offset, rank_min, rank_max)
        layers = _with_stability(where, layers_doc, layers, draws, rank_mode, rule_of)
        stability = _get(doc, "stability", where, "", val.Real(low=0, high=1), val.NoneValue())
        expected_stability = mean_stability([layer.rank_stability for layer in layers[1:]])
        if stability != expected_stability:
            shown = "null without resamples" if expected_stability is None else expected_stability
            raise _fault(where, "stability", f"{shown}, the mean rank_stability", stability)

    modules: dict[str, ModulePlan] = {}
    for name, item in _get(doc, "modules", where, "", _OBJECT).items():
        if not isinstance(name, str):
            raise _fault(where, "modules", "an object keyed by module names", name)
        at = f"modules[{name!r}]."
        _check(where, f"modules[{name!r}]", item, _OBJECT)
        _only(where, f"modules[{name!r}]", item, _MODULE_FIELDS)
        block = _get(item, "block", where, at, val.Integer(low=1, high=len(layers) - 1))
        named = block_of(name)
        if named != block:
            said = "no block" if named is None else f"block {named}"
            raise _fault(where, f"{at}block", f"the block in the module's name ({said})", block)
        rank = _get(item, "rank", where, at, _POSITIVE_INT)
        if rank != layers[block].rank:
            raise _fault(where, f"{at}rank", f"{layers[block].rank}, layers[{block}].rank", rank)
        alpha = _get(item, "alpha", where, at, _POSITIVE)
        if not _same_alpha(alpha, layers[block].alpha):  # type: ignore[arg-type]
            raise _fault(
                where, f"{at}alpha", f"{layers[block].alpha!r}, layers[{block}].alpha", alpha
            )
        modules[name] = ModulePlan(
            block=block,
            rank=rank,
            alpha=alpha,
            in_features=_get(item, "in_features", where, at, _POSITIVE_INT),
            out_features=_get(item, "out_features", where, at, _POSITIVE_INT),
        )
    settings = (c, offset, rank_min, rank_max, alpha_over_r, budget, rank_mode)
    plan = RankPlan(
        layers=tuple(layers),
        modules=modules,
        **dict(zip(RULE_FIELDS, settings, strict=True)),
        model=_get(doc, "model", where, "", _FREE_FORM),
        estimator=_get(doc, "estimator", where, "", _FREE_FORM),
        capture=_get(doc, "capture", where, "", _FREE_FORM),
    )
    total = _get(doc, "num_parameters", where, "", val.Integer(low=0))
    if total != plan.num_parameters:
        raise _fault(
            where, "num_parameters", f"{plan.num_parameters}, the sum over the modules", total
        )
    if budget is not None:
        if not modules:
            raise _fault(where, "rule.budget", "null for a plan without modules", budget)
        if budget < plan.num_parameters:
            raise _fault(where, "rule.budget", f">= num_parameters = {plan.num_parameters}", budget)
    return plan


def _resamples(where: str, layers_doc: list[Any]) -> Any:
    """The ``[B, L + 1]`` resample IDs of a version-2 document's layers, or None."""
    columns = [
        _get(item, "resamples", where, f"layers[{i}].", _LIST, val.NoneValue())
        for i, item in enumerate(layers_doc)
    ]
    if all(c is None for c in columns):
        return None
    rule = f"a list of at least {MIN_RESAMPLES} numbers, as long in every layer"
    for i, column in enumerate(columns):
        if column is None or len(column) != len(columns[0]) or len(column) < MIN_RESAMPLES:
            raise _fault(where, f"layers[{i}].resamples", rule, column)
        for j, v in enumerate(column):
            _check(where, f"layers[{i}].resamples[{j}]", v, val.Real())
    return np.array(columns, np.float64).T


def _with_stability(
    where: str,
    layers_doc: list[Any],
    layers: list[Any],
    draws: Any,
    rank_mode: str,
    rule: tuple[float, int, int, int | None],
) -> list[Any]:
    """``layers`` with the resample fields, checked against their recomputation."""
    dims = [layer.dimension for layer in layers]
    ranks = [layer.rank for layer in layers[1:]]
    fields = resample_fields(dims, draws, ranks, rank_mode, rule)
    out = []
    for i, (item, layer, expected) in enumerate(zip(layers_doc, layers, fields, strict=True)):
        for key in RESAMPLE_FIELDS:
            if key not in item:
                raise ValueError(f"{where}: layers[{i}].{key} is missing")
            found = item[key]
            want = expected[key]
            as_doc = list(want) if isinstance(want, tuple) else want
            if found != as_doc:
                shown = "null" if want is None else repr(as_doc)
                rule_text = f"{shown}, as recomputed from the resamples"
                raise _fault(where, f"layers[{i}].{key}", rule_text, found)
        out.append(dataclasses.replace(layer, **expected))
    return out
