"""Module-name matching with PEFT's semantics (``target_modules``, ``rank_pattern`` keys), and
the names that stay the same whichever wrapper a model is in.

Full names are dotted module names as ``model.named_modules()`` yields them, e.g.
``"encoder.layer.0.attention.self.query"`` (a BERT encoder) or
``"model.layers.0.self_attn.q_proj"`` (a LLaMA causal LM, whose backbone is ``model``).

*Backbone-relative names* are what rank plans store (docs/gelora.md): the name of a module
inside the model's transformer backbone, the same for the base model (``AutoModel``), a task
model around it (``…ForCausalLM``, ``…ForSequenceClassification``) and a PEFT model around
that. The backbone is found by :func:`backbone_prefix`; a relative name refers to the one module
whose full name equals it or ends with ``"." + name`` (:func:`resolve_names`), which is also how
PEFT matches a plain ``target_modules`` entry and how :func:`suffix_key` keys match.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from torch import nn

__all__ = [
    "ALL_LINEAR",
    "all_linear_names",
    "backbone_prefix",
    "is_all_linear",
    "is_excluded",
    "matches_module_list",
    "module_selected",
    "output_head_names",
    "pattern_key",
    "resolve_names",
    "suffix_key",
    "unwrap_peft",
]

#: PEFT's ``target_modules`` shorthand for every linear layer except the output head.
ALL_LINEAR = "all-linear"
#: Attribute names of a task model's classification head (PEFT's ``SEQ_CLS_HEAD_NAMES``).
CLASSIFIER_HEADS = ("score", "classifier")


def matches_module_list(entries: Iterable[str], name: str) -> bool:
    """True if ``name`` equals one of ``entries`` or ends with ``"." + entry``."""
    return any(name == entry or name.endswith("." + entry) for entry in entries)


def is_all_linear(target_modules: object) -> bool:
    """Whether ``target_modules`` is PEFT's ``"all-linear"`` shorthand (any letter case)."""
    return isinstance(target_modules, str) and target_modules.lower() == ALL_LINEAR


def is_excluded(exclude_modules: str | Sequence[str] | None, name: str) -> bool:
    """Whether ``exclude_modules`` (a regex matching the whole name, or a sequence of names
    matched by equality or dotted suffix) excludes module ``name``."""
    if not exclude_modules:
        return False
    if isinstance(exclude_modules, str):
        return re.fullmatch(exclude_modules, name) is not None
    return matches_module_list(exclude_modules, name)


def module_selected(
    target_modules: str | Sequence[str],
    exclude_modules: str | Sequence[str] | None,
    name: str,
) -> bool:
    """Whether module ``name`` is adapted.

    A ``str`` is a regular expression that must match the whole name (``re.fullmatch``); a
    sequence of strings matches by equality or dotted suffix. Exclusions win over targets.
    (``"all-linear"`` depends on the modules' types, not their names: see
    :func:`all_linear_names`.)
    """
    if is_excluded(exclude_modules, name):
        return False
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return matches_module_list(target_modules, name)


def pattern_key(keys: Iterable[str], name: str) -> str | None:
    """The first key of a ``rank_pattern``/``alpha_pattern`` that applies to ``name``, or None.

    A key applies when it is a regular expression matching a dotted suffix of ``name`` up to its
    end (``re.match(rf"(.*\\.)?({key})$", name)``, as PEFT's ``get_pattern_key``), so plain
    suffixes (``"attention.self.query"``), escaped relative names (:func:`suffix_key`) and
    anchored full names (``"^encoder.layer.0.attention.self.query$"``) all work as in PEFT.
    """
    for key in keys:
        if re.match(rf"(.*\.)?({key})$", name):
            return key
    return None


def suffix_key(name: str) -> str:
    """The ``rank_pattern`` key that applies exactly to modules called ``name`` or ending in
    ``"." + name`` (``name`` with its dots escaped): a backbone-relative name keeps its rank in
    whichever wrapper PEFT or :func:`pattern_key` sees the model."""
    return re.escape(name)


def unwrap_peft(model: nn.Module) -> tuple[str, nn.Module]:
    """``(prefix, inner)``: a ``peft.PeftModel``'s wrapped model and its dotted prefix
    (``"base_model.model."``); ``("", model)`` for any other model."""
    get_base = getattr(model, "get_base_model", None)
    if type(model).__module__.split(".")[0] != "peft" or not callable(get_base):
        return "", model
    inner = get_base()
    for name, module in model.named_modules():
        if module is inner and name:
            return name + ".", inner
    return "", model


def backbone_prefix(model: nn.Module) -> str:
    """The dotted prefix of ``model``'s transformer backbone in its full names ("" for none).

    A PEFT model is unwrapped first (``base_model.model.``); then a ``transformers`` task model
    whose ``base_model_prefix`` attribute names a submodule (``model`` of ``LlamaForCausalLM``,
    ``bert`` of ``BertForSequenceClassification``) adds that submodule's name. A base model
    (``LlamaModel``, ``BertModel``) or a plain ``nn.Module`` is its own backbone.
    """
    prefix, inner = unwrap_peft(model)
    attribute = getattr(inner, "base_model_prefix", None)
    if isinstance(attribute, str) and attribute:
        backbone = getattr(inner, attribute, None)
        if isinstance(backbone, nn.Module) and backbone is not inner:
            prefix += attribute + "."
    return prefix


def resolve_names(model: nn.Module, names: Iterable[str]) -> dict[str, list[str]]:
    """Each of ``names`` -> the full names of the modules of ``model`` it refers to.

    A name refers to a module whose full name equals it or ends with ``"." + name`` (PEFT's rule
    for plain ``target_modules`` entries). Modules inside an adapter layer (a PEFT tuner layer's
    or a lorax_core adapter's ``base_layer``, ``lora_A``, …) are not candidates: the adapter
    layer itself is. A well-formed name maps to exactly one module; the caller refuses the
    others (no match, or more than one).
    """
    inside = _adapter_children(model)
    full = [n for n, _ in model.named_modules() if n and not any(n.startswith(p) for p in inside)]
    by_suffix: dict[str, list[str]] = {}
    for candidate in full:
        parts = candidate.split(".")
        for start in range(len(parts)):
            by_suffix.setdefault(".".join(parts[start:]), []).append(candidate)
    return {name: by_suffix.get(name, []) for name in names}


def _adapter_children(model: nn.Module) -> list[str]:
    """Dotted prefixes (``"<adapter layer>."``) of the modules inside adapter layers."""
    return [
        f"{name}."
        for name, module in model.named_modules()
        if name and isinstance(getattr(module, "base_layer", None), nn.Module)
    ]


def output_head_names(model: nn.Module) -> list[str]:
    """Full names of ``model``'s output heads, which ``"all-linear"`` leaves out.

    The module ``get_output_embeddings()`` returns (a language model's ``lm_head``) and a task
    model's classification head, an attribute named ``score`` or ``classifier`` (PEFT's
    ``SEQ_CLS_HEAD_NAMES``), with everything inside it. A PEFT model is unwrapped first.
    """
    prefix, inner = unwrap_peft(model)
    heads: list[nn.Module] = []
    get_output = getattr(inner, "get_output_embeddings", None)
    if callable(get_output):
        output = get_output()
        if isinstance(output, nn.Module):
            heads.append(output)
    for attribute in CLASSIFIER_HEADS:
        head = getattr(inner, attribute, None) if attribute in inner._modules else None
        if isinstance(head, nn.Module):
            heads.append(head)
    names = [name for name, module in inner.named_modules() if any(module is h for h in heads)]
    return sorted({prefix + name for name in names if name})


def all_linear_names(model: nn.Module) -> list[str]:
    """Full names of every ``nn.Linear`` of ``model`` except the output heads and what lies
    inside them (:func:`output_head_names`), in ``named_modules`` order: PEFT's
    ``"all-linear"``. Layers inside an adapter layer are not counted."""
    heads = output_head_names(model)
    inside = [f"{h}." for h in heads] + _adapter_children(model)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and name
        and name not in heads
        and not any(name.startswith(p) for p in inside)
    ]
