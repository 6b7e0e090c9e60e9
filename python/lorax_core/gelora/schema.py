"""The rank plan's JSON document (docs/gelora.md): writing it, and reading it back validated.

Layout, version 1::

    {"format": "lorax_core.rank_plan", "version": 1,
     "model": {...}, "estimator": {...}, "capture": {...},          # free-form descriptions
     "rule": {"c", "offset", "rank_min", "rank_max", "alpha_over_r", "budget"},
     "layers": [{"index": i, "dimension": d_i, "ci": [lo, hi] | null,
                 "rank": r_i | null, "alpha": alpha_i | null}, ...],   # h_0 … h_L
     "modules": {"<module name>": {"block", "rank", "alpha", "in_features", "out_features"}},
     "num_parameters": Σ rank · (in_features + out_features)}

Reading checks every field and reports the first fault as ``<where>: <field> must be <rule>,
got <value>`` (a ``ValueError``), ``<where>`` being the file or ``"plan"``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorax_core._atomic import atomic_write
from lorax_core._format import DocumentFormat
from lorax_core._validation import Constraint, Instance, Integer, NoneValue, Real, check

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
PLAN_DOCUMENT = DocumentFormat("lorax_core.rank_plan", 1)
PLAN_FORMAT = PLAN_DOCUMENT.name
PLAN_VERSION = PLAN_DOCUMENT.version

_FIELDS = ("model", "estimator", "capture", "rule", "layers", "modules", "num_parameters")
_POSITIVE_INT = Integer(low=1)
_POSITIVE = Real(low=0, closed="neither")
_OBJECT = Instance(dict, "an object")


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
            },
            "layers": [
                {**asdict(layer), "ci": None if layer.ci is None else list(layer.ci)}
                for layer in plan.layers
            ],
            "modules": {name: asdict(m) for name, m in plan.modules.items()},
            "num_parameters": plan.num_parameters,
        }
    )


def write_plan(plan: RankPlan, path: str | os.PathLike[str]) -> Path:
    """Write ``plan`` as JSON atomically; returns the path."""
    text = json.dumps(plan_to_dict(plan), indent=2) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def read_plan(path: str | os.PathLike[str]) -> RankPlan:
    """Read and validate a plan written by :func:`write_plan`.

    Raises:
        ValueError: ``<path>: …`` when the file is unreadable, not JSON, or not a valid plan.
    """
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{p}: cannot read plan: {err}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{p}: plan is not valid JSON: {err}") from None
    except RecursionError:
        raise ValueError(f"{p}: plan is not valid JSON: nested too deeply") from None
    return plan_from_dict(doc, str(p))


def _check(where: str, field: str, value: Any, *constraints: Constraint) -> Any:
    """``value`` checked against ``constraints``; every fault is a ``ValueError``."""
    try:
        return check(where, field, value, *constraints)
    except TypeError as err:
        raise ValueError(str(err)) from None


def _get(doc: Mapping[str, Any], key: str, where: str, path: str, *constraints: Constraint) -> Any:
    """``doc[key]`` checked against ``constraints`` (see :func:`_check`), or missing."""
    if key not in doc:
        raise ValueError(f"{where}: {path}{key} is missing")
    return _check(where, f"{path}{key}", doc[key], *constraints)


def plan_from_dict(doc: Any, where: str = "plan") -> RankPlan:
    """Build a plan from :func:`plan_to_dict`'s document, validating every field.

    Args:
        doc: the parsed JSON document.
        where: what to call the document in errors (a path, or ``"plan"``).

    Raises:
        ValueError: wrong format or version, a missing or mistyped field, or inconsistent
            values (layer indices, blocks, parameter count).
    """
    from lorax_core.gelora.plan import LayerProfile, ModulePlan, RankPlan

    PLAN_DOCUMENT.check(doc, where, required=_FIELDS)
    rule = _get(doc, "rule", where, "", _OBJECT)
    layers_doc = _get(doc, "layers", where, "", Instance(list, "a list"))
    layers: list[LayerProfile] = []
    for i, item in enumerate(layers_doc):
        at = f"layers[{i}]."
        _check(where, f"layers[{i}]", item, _OBJECT)
        _get(item, "index", where, at, Integer(low=i, high=i))
        ci = _get(item, "ci", where, at, Instance(list, "null or two numbers"), NoneValue())
        if ci is not None:
            if len(ci) != 2:
                raise ValueError(f"{where}: {at}ci must be null or two numbers, got {ci!r}")
            ci = tuple(_check(where, f"{at}ci[{j}]", v, Real()) for j, v in enumerate(ci))
        layers.append(
            LayerProfile(
                index=i,
                dimension=_get(item, "dimension", where, at, Real()),
                ci=ci,
                rank=_get(item, "rank", where, at, _POSITIVE_INT if i else NoneValue()),
                alpha=_get(item, "alpha", where, at, _POSITIVE if i else NoneValue()),
            )
        )
    if len(layers) < 2:
        raise ValueError(f"{where}: layers must hold at least two layers, got {len(layers)}")
    modules: dict[str, ModulePlan] = {}
    for name, item in _get(doc, "modules", where, "", _OBJECT).items():
        at = f"modules[{name!r}]."
        _check(where, f"modules[{name!r}]", item, _OBJECT)
        modules[name] = ModulePlan(
            block=_get(item, "block", where, at, Integer(low=1, high=len(layers) - 1)),
            rank=_get(item, "rank", where, at, _POSITIVE_INT),
            alpha=_get(item, "alpha", where, at, _POSITIVE),
            in_features=_get(item, "in_features", where, at, _POSITIVE_INT),
            out_features=_get(item, "out_features", where, at, _POSITIVE_INT),
        )
    plan = RankPlan(
        layers=tuple(layers),
        modules=modules,
        c=_get(rule, "c", where, "rule.", Real(low=0)),
        offset=_get(rule, "offset", where, "rule.", Integer()),
        rank_min=_get(rule, "rank_min", where, "rule.", _POSITIVE_INT),
        rank_max=_get(rule, "rank_max", where, "rule.", _POSITIVE_INT, NoneValue()),
        alpha_over_r=_get(rule, "alpha_over_r", where, "rule.", _POSITIVE),
        budget=_get(rule, "budget", where, "rule.", _POSITIVE_INT, NoneValue()),
        model=_get(doc, "model", where, "", _OBJECT),
        estimator=_get(doc, "estimator", where, "", _OBJECT),
        capture=_get(doc, "capture", where, "", _OBJECT),
    )
    total = _get(doc, "num_parameters", where, "", Integer(low=0))
    if total != plan.num_parameters:
        raise ValueError(
            f"{where}: num_parameters is {total} but the modules add up to {plan.num_parameters}"
        )
    return plan
