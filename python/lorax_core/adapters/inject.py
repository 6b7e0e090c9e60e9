"""Put adapters into a model: select ``nn.Linear`` modules by name, replace, freeze the rest."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from lorax_core._validation import Instance, check
from lorax_core.adapters.config import RESIDUAL_INITS, AdapterConfig
from lorax_core.adapters.init import initialize
from lorax_core.adapters.layer import AdapterLinear
from lorax_core.adapters.patterns import (
    ALL_LINEAR,
    all_linear_names,
    is_all_linear,
    is_excluded,
    matches_module_list,
    module_selected,
    output_head_names,
    pattern_key,
)
from lorax_core.adapters.registry import get_form
from lorax_core.adapters.tied import shared_weights, tied_error, untie

__all__ = [
    "TrainableCounts",
    "adapted_modules",
    "adapter_config",
    "build_layer",
    "check_no_adapters",
    "held_adapter",
    "inject",
    "trainable_parameters",
]

# Attribute under which ``inject`` records the config on the model (read by save_adapter).
CONFIG_ATTR = "lorax_adapter_config"


@runtime_checkable
class _ConvertsToConfig(Protocol):
    """Anything with ``to_adapter_config`` — a GeLoRA ``RankPlan``."""

    def to_adapter_config(self, **overrides: Any) -> AdapterConfig: ...


@dataclass(frozen=True)
class TrainableCounts:
    """Parameter counts of a model: ``trainable`` of ``total`` (shared parameters counted once)."""

    trainable: int
    total: int

    @property
    def fraction(self) -> float:
        """``trainable / total`` (0 for an empty model)."""
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return (
            f"trainable params: {self.trainable:,d} || all params: {self.total:,d} || "
            f"trainable%: {100 * self.fraction:.4f}"
        )


def _check_model(function: str, model: object) -> None:
    check(function, "model", model, Instance(nn.Module, "an nn.Module"))


def trainable_parameters(model: nn.Module) -> TrainableCounts:
    """Count the parameters of ``model`` that require grad, and all of them."""
    _check_model("trainable_parameters", model)
    trainable = total = 0
    for param in model.parameters():
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return TrainableCounts(trainable, total)


def adapted_modules(model: nn.Module) -> dict[str, AdapterLinear]:
    """The adapter layers of ``model`` by full module name, in ``named_modules`` order."""
    _check_model("adapted_modules", model)
    return {name: m for name, m in model.named_modules() if isinstance(m, AdapterLinear)}


def adapter_config(model: nn.Module) -> AdapterConfig:
    """The config ``inject`` (or ``load_adapter``) used on ``model``.

    Raises:
        ValueError: ``model`` was not injected; when a submodule was (``inject(causal_lm.model,
            …)``), the message names it: save or merge that submodule, or inject into the
            whole model.
    """
    config = getattr(model, CONFIG_ATTR, None)
    if isinstance(config, AdapterConfig):
        return config
    inner = next(
        (
            name
            for name, module in model.named_modules()
            if name and isinstance(getattr(module, CONFIG_ATTR, None), AdapterConfig)
        ),
        None,
    )
    if inner is not None:
        raise ValueError(
            f"adapter_config: model must have adapters injected by lorax_core.inject, got one "
            f"whose submodule {inner!r} was injected instead; pass that submodule, or inject into "
            "the whole model (a rank plan's module names apply to it as well)"
        )
    raise ValueError(
        "adapter_config: model must have adapters injected by lorax_core.inject, got one without"
    )


def held_adapter(model: nn.Module) -> tuple[str, str] | None:
    """The first module of ``model`` that already holds an adapter, as ``(name, kind)``:
    a lorax_core adapter layer or a PEFT tuner layer (a ``peft`` module with a ``base_layer``).
    None when there is none."""
    for name, module in model.named_modules():
        if isinstance(module, AdapterLinear):
            return name, f"a lorax_core {module.method!r} adapter"
        wrapped = isinstance(getattr(module, "base_layer", None), nn.Module)
        if wrapped and type(module).__module__.split(".")[0] == "peft":
            return name, f"a PEFT {type(module).__name__} adapter"
    return None


def check_no_adapters(function: str, model: nn.Module, hint: str) -> None:
    """``ValueError`` naming the module if ``model`` already holds an adapter; ``hint`` says
    how to proceed."""
    held = held_adapter(model)
    if held is not None:
        name, kind = held
        where = f"module {name!r}" if name else "the model itself"
        raise ValueError(
            f"{function}: model must hold no adapters yet, got {where} holding {kind}; {hint}"
        )


def build_layer(config: AdapterConfig, name: str, module: nn.Linear) -> AdapterLinear:
    """The adapter layer ``config`` prescribes for module ``name`` (default init, seeded)."""
    r, alpha = config.rank_for(name), config.alpha_for(name)
    generator = torch.Generator().manual_seed(config.module_seed(name))
    form = get_form(config.method)
    try:
        return form.layer(
            module,
            r,
            alpha,
            dropout=config.dropout,
            use_rslora=config.use_rslora,
            autocast_adapter_dtype=config.autocast_adapter_dtype,
            generator=generator,
            **{option: getattr(config, option) for option in form.options},
        )
    except (TypeError, ValueError) as err:  # say which module the config does not fit
        raise type(err)(f"inject: module {name!r} ({_shape(module)}): {err}") from err


def _shape(module: nn.Module) -> str:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return type(module).__name__
    return (
        f"{type(module).__name__} {tuple(weight.shape)} {str(weight.dtype).removeprefix('torch.')}"
    )


def _resolve(config_or_plan: object, overrides: dict[str, Any]) -> AdapterConfig:
    if isinstance(config_or_plan, AdapterConfig):
        return dataclasses.replace(config_or_plan, **overrides) if overrides else config_or_plan
    if isinstance(config_or_plan, _ConvertsToConfig):
        config = config_or_plan.to_adapter_config(**overrides)
        check("inject", "config_or_plan.to_adapter_config()", config, Instance(AdapterConfig))
        return config
    raise TypeError(
        "inject: config_or_plan must be an AdapterConfig or have a to_adapter_config method "
        f"(RankPlan), got {type(config_or_plan).__name__}"
    )


def select_modules(model: nn.Module, config: AdapterConfig) -> dict[str, nn.Linear]:
    """The modules ``config`` targets, validated: every target entry and every rank/alpha
    pattern key must match something, and every match must be an ``nn.Linear``.

    ``target_modules="all-linear"`` (PEFT's shorthand, any letter case) selects every
    ``nn.Linear`` except the output heads (:func:`lorax_core.adapters.patterns.output_head_names`:
    ``get_output_embeddings()`` — a causal LM's ``lm_head`` — and a ``score``/``classifier``
    head), then ``exclude_modules`` applies.
    """
    modules = {name: module for name, module in model.named_modules() if name}
    targets = config.target_modules
    assert targets is not None  # AdapterConfig guarantees it
    linear = sorted(n for n, m in modules.items() if isinstance(m, nn.Linear))
    hint = f"; nn.Linear modules of the model include {linear[:6]}"
    if is_all_linear(targets):
        selected = {
            n: modules[n]
            for n in all_linear_names(model)
            if not is_excluded(config.exclude_modules, n)
        }
        if not selected:
            heads = output_head_names(model)
            raise ValueError(
                f"target_modules {ALL_LINEAR!r} selects no module: the model has no nn.Linear "
                f"outside its output heads {heads} and exclude_modules{hint}"
            )
        _check_patterns(config, selected)
        return selected  # type: ignore[return-value]
    selected = {
        n: m for n, m in modules.items() if module_selected(targets, config.exclude_modules, n)
    }
    if isinstance(targets, str):
        if not selected:
            raise ValueError(f"target_modules regex {targets!r} matches no module{hint}")
    else:
        for entry in targets:
            if not any(matches_module_list([entry], n) for n in selected):
                raise ValueError(f"target_modules entry {entry!r} matches no module{hint}")
    _check_patterns(config, selected)
    wrong = {n: type(m).__name__ for n, m in selected.items() if not isinstance(m, nn.Linear)}
    if wrong:
        raise ValueError(f"target_modules selects modules that are not nn.Linear: {wrong}")
    return selected  # type: ignore[return-value]


def _check_patterns(config: AdapterConfig, selected: dict[str, nn.Module]) -> None:
    """Every rank/alpha pattern key must apply to a targeted module."""
    for field in ("rank_pattern", "alpha_pattern"):
        for key in getattr(config, field) or {}:
            if not any(pattern_key([key], n) is not None for n in selected):
                raise ValueError(f"{field} key {key!r} matches no targeted module")


def inject(model: nn.Module, config_or_plan: object, **overrides: Any) -> nn.Module:
    """Replace the targeted ``nn.Linear`` modules of ``model`` by adapters, in place.

    ``config_or_plan`` is an :class:`AdapterConfig` (``overrides`` replace its fields) or a GeLoRA
    ``RankPlan`` (``plan.to_adapter_config(**overrides)`` is used, after the plan's
    ``validate_for(model)`` if it has one). Every other parameter of
    the model is frozen. Non-default inits are delegated to
    ``lorax_core.adapters.init.initialize``.
    ``target_modules="all-linear"`` adapts every ``nn.Linear`` except the output heads
    (:func:`select_modules`). A target whose weight is tied to another parameter (a causal LM's
    ``lm_head`` and its input embedding) is refused for a residual init, which would rewrite the
    shared tensor, unless ``untie_weights=True`` gives it its own copy first
    (:mod:`lorax_core.adapters.tied`). Returns ``model``.
    """
    config = _resolve(config_or_plan, overrides)
    validate_for = getattr(config_or_plan, "validate_for", None)
    if callable(validate_for):  # a RankPlan checks module names and shapes against the model
        validate_for(model)
    _inject(model, config, initialise=True)
    return model


def _inject(
    model: nn.Module, config: AdapterConfig, *, initialise: bool
) -> dict[str, AdapterLinear]:
    """``inject`` with the initialiser optional; returns the installed layers."""
    layers = build_layers(model, config, initialise=initialise)
    install_layers(model, config, layers)
    return layers


def build_layers(
    model: nn.Module, config: AdapterConfig, *, initialise: bool
) -> dict[str, AdapterLinear]:
    """Validate and build the adapter layers for ``model`` without installing them.

    The model is unchanged, except that an initialiser with a residual (nystrom, pissa) edits
    the base weights it wraps, and that with ``config.untie_weights`` each targeted module
    whose weight is tied gets its own copy of it (:mod:`lorax_core.adapters.tied`).

    Raises:
        ValueError: a targeted module's weight is tied, the init is residual and
            ``config.untie_weights`` is off.
    """
    _check_model("inject", model)
    check_no_adapters(
        "inject",
        model,
        "a module takes one adapter: inject into a fresh copy of the base model, or load new "
        "adapter tensors into this one with load_adapter",
    )
    selected = select_modules(model, config)
    layers = {name: build_layer(config, name, module) for name, module in selected.items()}
    tied = shared_weights(model, selected)
    if tied and config.untie_weights:
        untie(model, tied, "inject")
    elif tied and config.init in RESIDUAL_INITS:
        raise tied_error(
            "inject",
            tied,
            f"init={config.init!r} would subtract its principal part from those parameters too",
            "pass untie_weights=True to give these modules their own copy of the weight (the "
            "other parameters keep the original tensor), or leave them out of target_modules",
        )
    if initialise and config.init != "default":
        options = config.init_options or {}
        for name, layer in layers.items():
            initialize(layer, config.init, seed=config.module_seed(name), **options)
    return layers


def install_layers(
    model: nn.Module, config: AdapterConfig, layers: dict[str, AdapterLinear]
) -> None:
    """Put ``layers`` in place of their modules, freeze the rest, record ``config``."""
    for name, layer in layers.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer)
    model.requires_grad_(False)
    for layer in layers.values():
        layer.set_trainable()
    setattr(model, CONFIG_ATTR, config)
