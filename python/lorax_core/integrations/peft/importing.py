"""``import_peft``: read a PEFT LoRA/DoRA adapter folder into a model as lorax_core adapters.

The adapter form is the registered PEFT-native form (:mod:`lorax_core.adapters.registry`)
whose PEFT settings the folder's config has (``use_dora`` → DoRA, none → LoRA); its
parameters are ``lora_A``, ``lora_B`` and the tensors the form exports (docs/peft-interop.md).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from lorax_core._validation import Bool, Constraint, Instance, Integer, Real, check, validate_params
from lorax_core.adapters.config import AdapterConfig
from lorax_core.adapters.inject import build_layers, check_no_adapters, install_layers
from lorax_core.adapters.io import check_directory
from lorax_core.adapters.registry import AdapterForm, form_names, get_form
from lorax_core.integrations.peft.format import (
    A_KEY,
    B_KEY,
    CONFIG_NAME,
    PREFIX,
    WEIGHTS_NAME,
    form_settings,
    read_config,
    read_tensors,
    setting_names,
)

__all__ = ["import_peft"]


def _native_form(config: dict[str, object]) -> AdapterForm:
    """The PEFT-native form whose settings the config has."""
    wanted = {key: config.get(key, False) for key in setting_names()}
    for name in form_names():
        form = get_form(name)
        if form.peft_native and form_settings(form) == wanted:
            return form
    raise ValueError(
        f"{CONFIG_NAME}: settings {wanted} must be those of a PEFT-native adapter form, got "
        "none registered for them"
    )


def _by_module(
    tensors: dict[str, torch.Tensor], suffixes: dict[str, str]
) -> dict[str, dict[str, torch.Tensor]]:
    """The file's tensors as module name -> parameter name -> tensor."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        suffix = next((s for s in suffixes if key.endswith("." + s)), None)
        if not key.startswith(PREFIX) or suffix is None:
            raise ValueError(f"{WEIGHTS_NAME}: unexpected tensor {key!r} for a LoRA adapter")
        name = key[len(PREFIX) : -len(suffix) - 1]
        out.setdefault(name, {})[suffixes[suffix]] = value
    return out


def _field(config: dict[str, Any], name: str, default: object, *constraints: Constraint) -> Any:
    return check(
        "import_peft", f"{CONFIG_NAME} field {name}", config.get(name, default), *constraints
    )


def _adapter_config(form: AdapterForm, config: dict[str, Any]) -> AdapterConfig:
    """The lorax_core config that reads ``config`` (PEFT's defaults for absent fields)."""
    fields = {
        "r": _field(config, "r", 8, Integer(low=1)),
        "alpha": _field(config, "lora_alpha", 8, Real(low=0.0, closed="neither")),
        "dropout": _field(config, "lora_dropout", 0.0, Real(0.0, 1.0, closed="left")),
        "use_rslora": _field(config, "use_rslora", False, Bool()),
    }
    try:
        return AdapterConfig(
            method=form.name,
            target_modules=config["target_modules"],
            exclude_modules=config.get("exclude_modules"),
            rank_pattern=config.get("rank_pattern") or None,
            alpha_pattern=config.get("alpha_pattern") or None,
            **fields,
        )
    except (TypeError, ValueError) as err:
        raise type(err)(
            f"import_peft: {CONFIG_NAME} does not describe a valid adapter: {err}"
        ) from err


@validate_params(model=Instance(nn.Module, "a torch.nn.Module"))
def import_peft(model: nn.Module, directory: str | os.PathLike[str]) -> nn.Module:
    """Load a PEFT LoRA/DoRA adapter folder into ``model`` as lorax_core adapters (in place).

    The adapter's ``target_modules``/``exclude_modules``/``rank_pattern``/``alpha_pattern``/
    ``use_rslora`` keep PEFT's meaning, so ``model`` then computes what
    ``peft.PeftModel.from_pretrained(model, directory)`` computes. Stricter than PEFT: every
    selected module must have all its tensors (PEFT silently leaves a missing ``lora_B`` at
    zero) and the file may hold no tensor the adapter does not use.

    Args:
        model: the base model the adapter was trained on, without lorax_core adapters.
        directory: folder with ``adapter_config.json`` and ``adapter_model.safetensors``.

    Returns:
        ``model``, with ``LoraLinear`` (or ``DoraLinear`` when ``use_dora``) modules.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        FileNotFoundError: a file is missing.
        ValueError: not a LoRA adapter, a PEFT option import cannot honour, the model already
            has adapters, the adapter does not fit the model (missing modules, wrong shapes),
            missing or unexpected tensors.
    """
    check_no_adapters(
        "import_peft",
        model,
        "import into a fresh copy of the base model (for a PEFT model, merge_and_unload() it or "
        "pass its base model without adapters)",
    )
    folder = check_directory("import_peft", directory)
    config = read_config(folder / CONFIG_NAME)
    tensors = read_tensors(folder / WEIGHTS_NAME)
    adapter = _adapter_config(_native_form(config), config)
    form = get_form(adapter.method)
    suffixes = {A_KEY: "lora_A", B_KEY: "lora_B", **form.peft_tensors}
    by_module = _by_module(tensors, suffixes)
    modules = dict(model.named_modules())
    absent = sorted(n for n in by_module if not isinstance(modules.get(n), nn.Linear))
    if absent:
        raise ValueError(
            "adapter does not match the base model: it has weights for modules that are not "
            f"nn.Linear layers of this model: {absent[:5]}"
        )
    try:
        layers = build_layers(model, adapter, initialise=False)
    except ValueError as err:
        raise ValueError(f"adapter does not match the base model: {err}") from err
    unused = sorted(set(by_module) - set(layers))
    if unused:
        raise ValueError(f"{WEIGHTS_NAME} has tensors for modules not targeted: {unused[:5]}")
    for name, layer in layers.items():
        params = layer.adapter_parameters()
        for suffix, pname in suffixes.items():
            key = f"{PREFIX}{name}.{suffix}"
            found = by_module.get(name, {}).get(pname)
            if found is None:
                raise ValueError(f"{WEIGHTS_NAME} is missing tensor {key!r}")
            if not found.is_floating_point():
                raise TypeError(
                    f"import_peft: {WEIGHTS_NAME} tensor {key!r} must be floating point, got "
                    f"{str(found.dtype).removeprefix('torch.')}"
                )
            if found.shape != params[pname].shape:
                raise ValueError(
                    f"adapter does not match the base model: {key!r} has shape "
                    f"{tuple(found.shape)}, expected {tuple(params[pname].shape)} "
                    f"(rank {layer.r})"
                )
            if not bool(torch.isfinite(found).all()):
                raise ValueError(
                    f"import_peft: {WEIGHTS_NAME} tensor {key!r} must be finite, got NaN or "
                    "infinite values"
                )
    with torch.no_grad():
        for name, layer in layers.items():
            for pname, param in layer.adapter_parameters().items():
                param.copy_(by_module[name][pname])
    install_layers(model, adapter, layers)
    return model
