"""Model structure as GeLoRA sees it: linear modules, their block, and target selection.

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
from lorax_core.adapters.patterns import matches_module_list, module_selected

__all__ = ["ModuleShapes", "block_of", "linear_modules", "select_targets"]

#: Full module name -> ``(in_features, out_features)`` of an ``nn.Linear``.
ModuleShapes = Mapping[str, tuple[int, int]]

_NUMERIC_COMPONENT = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def block_of(name: str) -> int | None:
    """1-based block index of the module called ``name``, or ``None`` outside every block."""
    match = _NUMERIC_COMPONENT.search(name)
    return None if match is None else int(match.group(1)) + 1


def linear_modules(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Every ``nn.Linear`` of ``model`` inside a block: name -> ``(in_features, out_features)``."""
    check("linear_modules", "model", model, Instance(nn.Module, "a torch.nn.Module"))
    return {
        name: (module.in_features, module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and block_of(name) is not None
    }


def select_targets(modules: ModuleShapes, target_modules: str | Sequence[str] | None) -> list[str]:
    """Names in ``modules`` selected by ``target_modules``, in the order of ``modules``.

    ``target_modules`` follows PEFT's conventions, matched by the adapters' own matcher
    (:func:`lorax_core.adapters.patterns.module_selected`): ``None`` or ``"all-linear"``
    selects every module; another string is a regular expression that must match the full
    name; a sequence of strings selects names equal to an entry or ending in ``"." + entry``.

    Raises:
        TypeError: ``target_modules`` is not a string or a sequence of strings.
        ValueError: nothing is selected, the regular expression is invalid, or a listed entry
            matches no module.
    """
    target_modules = check("select_targets", "target_modules", target_modules, *_TARGETS)
    names = list(modules)
    if target_modules is None or target_modules == "all-linear":
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


def _matches_any(entry: str, names: Sequence[str]) -> bool:
    return any(matches_module_list([entry], name) for name in names)
