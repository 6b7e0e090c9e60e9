"""Tied weights: an adapted layer whose weight tensor is also another module's.

A causal LM with tied embeddings (``tie_word_embeddings``, e.g. SmolLM2, GPT-2) uses one tensor
as its input embedding ``model.embed_tokens.weight`` and its output head ``lm_head.weight``.
Reading that tensor through an adapter is harmless, but anything that writes the adapted
layer's base weight in place would change the other module too, silently:

- a residual init (``nystrom``, ``pissa``: ``W ← W − s·B0 A0``, at inject or load_adapter);
- :func:`lorax_core.adapters.merge` / ``unmerge`` (``W ← W ± ΔW``);
- :func:`lorax_core.adapters.merged_state_dict`, whose merged ``lm_head.weight`` would differ
  from the embedding it is tied to, which the model cannot hold.

These refuse, naming the module and the parameters it shares its weight with. The remedy is
explicit (docs/adapters.md): ``AdapterConfig(untie_weights=True)`` makes inject/load_adapter
give each tied target its own copy of the weight first, and :func:`untie_weights` does the same
for a model already holding adapters. The other module keeps the original tensor, unchanged; a
``transformers`` model whose output embeddings were untied gets
``config.tie_word_embeddings = False`` so that a later ``tie_weights()`` does not tie them back.
Each untie is announced with a :class:`UserWarning`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
from torch import nn

from lorax_core._validation import Instance, check

__all__ = [
    "UNTIE_HINT",
    "check_untied",
    "shared_weights",
    "tied_error",
    "untie",
    "untie_weights",
]


def _weight_owner(module: nn.Module) -> nn.Module:
    """The module holding ``weight``: an adapter layer's ``base_layer``, else the module."""
    base = getattr(module, "base_layer", None)
    return base if isinstance(base, nn.Module) else module


def _storage(tensor: torch.Tensor) -> int:
    """Address of ``tensor``'s storage (0 for tensors without data, e.g. on ``meta``)."""
    try:
        return int(tensor.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):
        return 0


def shared_weights(model: nn.Module, names: Iterable[str]) -> dict[str, list[str]]:
    """For each module of ``names`` whose weight is tied: the other parameters holding it.

    ``names`` are full module names of ``model``; an adapter layer's weight is its
    ``base_layer``'s. A parameter is tied to the weight when it is the same tensor or shares its
    storage. Modules whose weight is their own are left out of the result.

    Returns:
        module name -> full parameter names (``["model.embed_tokens.weight"]``), sorted.
    """
    params = list(model.named_parameters(remove_duplicate=False))
    by_id: dict[int, list[str]] = {}
    by_storage: dict[int, list[str]] = {}
    for key, param in params:
        by_id.setdefault(id(param), []).append(key)
        address = _storage(param)
        if address:
            by_storage.setdefault(address, []).append(key)
    modules = dict(model.named_modules())
    tied: dict[str, list[str]] = {}
    for name in names:
        owner = _weight_owner(modules[name])
        weight = getattr(owner, "weight", None)
        if not isinstance(weight, torch.Tensor):
            continue
        inside = f"{name}."
        keys = set(by_id.get(id(weight), [])) | set(by_storage.get(_storage(weight), []))
        others = sorted(k for k in keys if not k.startswith(inside))
        if others:
            tied[name] = others
    return tied


def _describe(tied: dict[str, list[str]]) -> str:
    return "; ".join(f"{name!r} with {', '.join(map(repr, keys))}" for name, keys in tied.items())


#: How to proceed when a model already holds adapters on tied weights.
UNTIE_HINT = (
    "give these modules their own copy of the weight first with "
    "lorax_core.adapters.untie_weights(model), or inject with untie_weights=True (the other "
    "parameters keep the original tensor)"
)


def tied_error(function: str, tied: dict[str, list[str]], action: str, hint: str) -> ValueError:
    """The refusal of ``function``: ``action`` would write the tied weights of ``tied``
    (:func:`shared_weights`' result); ``hint`` says how to proceed."""
    return ValueError(
        f"{function}: modules must not share their base weight with other parameters (tied "
        f"weights), got {_describe(tied)}: {action}; {hint}"
    )


def check_untied(function: str, model: nn.Module, names: Iterable[str], action: str) -> None:
    """``ValueError`` (:func:`tied_error` with :data:`UNTIE_HINT`) if a module of ``names``
    shares its weight; ``action`` says what ``function`` would do to it."""
    tied = shared_weights(model, names)
    if tied:
        raise tied_error(function, tied, action, UNTIE_HINT)


@torch.no_grad()
def untie(model: nn.Module, tied: dict[str, list[str]], function: str) -> None:
    """Give each module of ``tied`` (:func:`shared_weights`' result) its own copy of its weight.

    The other parameters keep the original tensor. A ``transformers`` (sub)model whose output
    embeddings are one of these modules gets ``config.tie_word_embeddings = False``. Warns once,
    naming every module untied.
    """
    modules = dict(model.named_modules())
    configs: list[str] = []
    size = 0
    for name in tied:
        owner = _weight_owner(modules[name])
        weight = owner.weight
        assert isinstance(weight, torch.Tensor)  # shared_weights found it
        copied = nn.Parameter(weight.detach().clone(), requires_grad=weight.requires_grad)
        owner.weight = copied
        size += weight.numel() * weight.element_size()
        for prefix, sub in model.named_modules():
            get_output = getattr(sub, "get_output_embeddings", None)
            config = getattr(sub, "config", None)
            if not callable(get_output) or not getattr(config, "tie_word_embeddings", False):
                continue
            if get_output() in (modules[name], owner):
                config.tie_word_embeddings = False  # type: ignore[union-attr]
                configs.append(f"{prefix}.config" if prefix else "config")
    said = (
        f"; set {', '.join(sorted(set(configs)))}.tie_word_embeddings = False so they are not "
        "tied back"
        if configs
        else ""
    )
    warnings.warn(
        f"{function}: untied {_describe(tied)}: each module now has its own copy of the weight "
        f"({size / 2**20:.1f} MiB in all), the other parameters keep the original tensor{said}",
        UserWarning,
        stacklevel=3,
    )


def untie_weights(model: nn.Module) -> list[str]:
    """Give every adapted module of ``model`` whose base weight is tied its own copy of it.

    Use it on a model whose adapters were injected without ``untie_weights=True`` before
    :func:`~lorax_core.adapters.merge` or :func:`~lorax_core.adapters.merged_state_dict`. The
    model's outputs do not change; the parameters the weights were tied to keep the original
    tensor. Warns when it unties anything.

    Returns:
        The names of the modules untied, sorted (empty when none was tied).
    """
    from lorax_core.adapters.inject import adapted_modules

    check("untie_weights", "model", model, Instance(nn.Module, "an nn.Module"))
    tied = shared_weights(model, adapted_modules(model))
    if tied:
        untie(model, tied, "untie_weights")
    return sorted(tied)
