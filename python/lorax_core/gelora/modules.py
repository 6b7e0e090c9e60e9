"""Model structure as GeLoRA sees it: linear modules, their block, and target selection.

Module names are relative to the model's transformer backbone
(:func:`lorax_core.adapters.patterns.backbone_prefix`): ``layers.0.self_attn.q_proj`` whether
the model profiled was ``AutoModel``, ``AutoModelForCausalLM`` or a PEFT model around it, so a
plan applies to each of them (docs/gelora.md).

A module's *block* is read from its dotted name: the first all-digit component ``i`` (as in
``encoder.layer.<i>.…`` or ``model.layers.<i>.…``) puts it in block ``i + 1`` (1-based), whose
hidden state is ``h_{i+1}``. Modules with no numeric component (embeddings, pooler, heads) are
outside every block and are never given a GeLoRA rank.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from torch import nn

from lorax_core._validation import Instance, NoneValue, Satisfies, check, describe
from lorax_core.adapters.patterns import (
    backbone_prefix,
    is_all_linear,
    matches_module_list,
    module_selected,
)

__all__ = ["ModuleShapes", "block_of", "linear_modules", "select_targets"]

#: Full module name -> ``(in_features, out_features)`` of an ``nn.Linear``.
ModuleShapes = Mapping[str, tuple[int, int]]

_NUMERIC_COMPONENT = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def block_of(name: str) -> int | None:
    """1-based block index of the module called ``name``, or ``None`` outside every block."""
    match = _NUMERIC_COMPONENT.search(name)
    return None if match is None else int(match.group(1)) + 1


def linear_modules(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Every ``nn.Linear`` of ``model``'s backbone inside a block, by backbone-relative name:
    name -> ``(in_features, out_features)``.

    Modules outside the backbone (a task model's ``lm_head``, ``score``, ``classifier``) are
    left out. An adapter layer (PEFT's or lorax_core's, holding the layer as ``base_layer``)
    counts as the linear layer it wraps, under its own name; the layers inside it do not count.
    """
    check("linear_modules", "model", model, Instance(nn.Module, "a torch.nn.Module"))
    prefix = backbone_prefix(model)
    found: dict[str, tuple[int, int]] = {}
    inside: list[str] = []  # prefixes of adapter layers' children
    for name, module in model.named_modules():
        if not name.startswith(prefix) or any(name.startswith(p) for p in inside):
            continue
        base = getattr(module, "base_layer", None)
        if isinstance(base, nn.Module):
            inside.append(name + ".")
            module = base
        relative = name[len(prefix) :]
        if isinstance(module, nn.Linear) and relative and block_of(relative) is not None:
            found[relative] = (module.in_features, module.out_features)
    return found


def select_targets(modules: ModuleShapes, target_modules: str | Sequence[str] | None) -> list[str]:
    """Names in ``modules`` selected by ``target_modules``, in the order of ``modules``.

    ``target_modules`` follows PEFT's conventions, matched by the adapters' own matcher
    (:func:`lorax_core.adapters.patterns.module_selected`): ``None`` or ``"all-linear"``
    selects every module; another string is a regular expression that must match the whole
    (backbone-relative) name; a sequence of strings selects names equal to an entry or ending
    in ``"." + entry``.

    Raises:
        TypeError: ``target_modules`` is not a string or a sequence of strings.
        ValueError: nothing is selected, the regular expression is invalid, or a listed entry
            matches no module.
    """
    target_modules = check("select_targets", "target_modules", target_modules, *_TARGETS)
    names = list(modules)
    if target_modules is None or is_all_linear(target_modules):
        return names
    if isinstance(target_modules, str):
        try:
            re.compile(target_modules)
        except re.error as err:
            raise ValueError(
                f"select_targets: target_modules must be a valid regular expression, got "
                f"{describe(target_modules)} ({err})"
            ) from None
    else:
        unmatched = [
            t for t in target_modules if not any(matches_module_list([t], n) for n in names)
        ]
        if unmatched:
            raise ValueError(
                f"target_modules entries match no linear module in a block: {unmatched}"
            )
    selected = [n for n in names if module_selected(target_modules, None, n)]
    if not selected:
        raise ValueError(f"target_modules={target_modules!r} selects no linear module in a block")
    return selected


_TARGETS = (
    NoneValue(),
    Instance(str, "a regular expression"),
    Satisfies(
        (list, tuple),
        lambda names: all(isinstance(t, str) for t in names),
        "a sequence of module names",
    ),
)
