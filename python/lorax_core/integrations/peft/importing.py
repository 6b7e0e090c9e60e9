"""``import_peft``: read a PEFT LoRA/DoRA adapter folder into a model as lorax_core adapters.

The adapter form is the registered PEFT-native form (:mod:`lorax_core.adapters.registry`)
whose PEFT settings the folder's config has (``use_dora`` → DoRA, none → LoRA); its
parameters are ``lora_A``, ``lora_B`` and the tensors the form exports (docs/peft-interop.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from lorax_core._validation import Instance, validate_params
from lorax_core.adapters.config import AdapterConfig
from lorax_core.adapters.inject import adapted_modules, build_layers, install_layers
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
    if adapted_modules(model):
        raise ValueError(
            "import_peft: model must be a plain base model, got one that already has lorax_core "
            "adapters"
        )
    folder = Path(directory)
    config = read_config(folder / CONFIG_NAME)
    tensors = read_tensors(folder / WEIGHTS_NAME)
    form = _native_form(config)
    adapter = AdapterConfig(
        method=form.name,
        r=config.get("r", 8),
        alpha=config.get("lora_alpha", 8),
        target_modules=config["target_modules"],
        exclude_modules=config.get("exclude_modules"),
        rank_pattern=config.get("rank_pattern") or None,
        alpha_pattern=config.get("alpha_pattern") or None,
        use_rslora=bool(config.get("use_rslora", False)),
    )
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
            if found.shape != params[pname].shape:
                raise ValueError(
                    f"adapter does not match the base model: {key!r} has shape "
                    f"{tuple(found.shape)}, expected {tuple(params[pname].shape)} "
                    f"(rank {layer.r})"
                )
    with torch.no_grad():
        for name, layer in layers.items():
            for pname, param in layer.adapter_parameters().items():
                param.copy_(by_module[name][pname])
    install_layers(model, adapter, layers)
    return model
