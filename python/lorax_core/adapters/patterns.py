"""Module-name matching with PEFT's semantics (``target_modules``, ``rank_pattern`` keys).

Names are full dotted module names as ``model.named_modules()`` yields them, e.g.
``"encoder.layer.0.attention.self.query"``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

__all__ = ["matches_module_list", "module_selected", "pattern_key"]


def matches_module_list(entries: Iterable[str], name: str) -> bool:
    """True if ``name`` equals one of ``entries`` or ends with ``"." + entry``."""
    return any(name == entry or name.endswith("." + entry) for entry in entries)


def module_selected(
    target_modules: str | Sequence[str],
    exclude_modules: str | Sequence[str] | None,
    name: str,
) -> bool:
    """Whether module ``name`` is adapted.

    A ``str`` is a regular expression that must match the whole name (``re.fullmatch``); a
    sequence of strings matches by equality or dotted suffix. Exclusions win over targets.
    """
    if exclude_modules:
        if isinstance(exclude_modules, str):
            if re.fullmatch(exclude_modules, name):
                return False
        elif matches_module_list(exclude_modules, name):
            return False
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return matches_module_list(target_modules, name)


def pattern_key(keys: Iterable[str], name: str) -> str | None:
    """The first key of a ``rank_pattern``/``alpha_pattern`` that applies to ``name``, or None.

    A key applies when it is a regular expression matching a dotted suffix of ``name`` up to its
    end, so both plain suffixes (``"attention.self.query"``) and anchored full names
    (``"^encoder.layer.0.attention.self.query$"``) work, as in PEFT.
    """
    for key in keys:
        if re.match(rf"(.*\.)?({key})$", name):
            return key
    return None
