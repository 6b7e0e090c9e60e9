"""PEFT's LoRA adapter folder as lorax_core writes and reads it (docs/peft-interop.md).

A folder with

- ``adapter_model.safetensors`` — per adapted module ``<m>``, the tensors
  ``base_model.model.<m>.lora_A.weight`` (r_m, in), ``base_model.model.<m>.lora_B.weight``
  (out, r_m) and the tensors the module's adapter form exports beside them (DoRA:
  ``base_model.model.<m>.lora_magnitude_vector`` (out,)). Nothing else; lorax_core's own
  description of the adapters goes in the file's header metadata (:data:`METADATA_FORMAT`,
  ``lorax_core.mode``, ``lorax_core.modules``).
- ``adapter_config.json`` — ``peft_type: "LORA"``, ``r``, ``lora_alpha``, ``target_modules``
  (full module names), ``rank_pattern``/``alpha_pattern`` (keys ``"^<module>$"``), the forms'
  PEFT settings (``use_dora``), ``use_rslora``, ``base_model_name_or_path`` when the model
  knows it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from lorax_core._format import DocumentFormat
from lorax_core._safetensors import read_header
from lorax_core.adapters.io import CONFIG_NAME, FORMAT, WEIGHTS_NAME, read_json
from lorax_core.adapters.registry import AdapterForm, form_names, get_form

__all__ = [
    "A_KEY",
    "B_KEY",
    "CONFIG_NAME",
    "METADATA_FORMAT",
    "MODES",
    "PREFIX",
    "WEIGHTS_NAME",
    "form_settings",
    "read_config",
    "read_tensors",
    "setting_names",
]

MODES = ("compact", "universal")
# Stamped into the safetensors metadata of every export (strings only, hence ``text``).
METADATA_FORMAT = DocumentFormat(
    "lorax_core.peft_export",
    1,
    name_key="lorax_core.format",
    version_key="lorax_core.format_version",
    text=True,
)
PREFIX = "base_model.model."
A_KEY, B_KEY = "lora_A.weight", "lora_B.weight"

# PEFT LoraConfig fields that change what the adapter computes or which tensors it owns, with the
# value under which import_peft's plain reading is exact.
NEUTRAL_FIELDS: dict[str, tuple[Any, ...]] = {
    "bias": ("none",),
    "fan_in_fan_out": (False,),
    "lora_bias": (False,),
    "modules_to_save": (None, []),
    "layers_to_transform": (None, []),
    "layers_pattern": (None, []),
    "layer_replication": (None, []),
    "target_parameters": (None, []),
    "trainable_token_indices": (None, {}, []),
    "use_qalora": (False,),
    "use_bdlora": (None, False),
    "alora_invocation_tokens": (None, []),
    "megatron_config": (None,),
    "arrow_config": (None,),
    "kasa_config": (None,),
    "monteclora_config": (None,),
    "velora_config": (None,),
}
# init_lora_weights values for which PEFT rewrites the base weight (the saved factors are then
# relative to that residual weight, not to the base model's).
RESIDUAL_PEFT_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")


def setting_names() -> tuple[str, ...]:
    """The PEFT config flags some registered form sets (``use_dora``), sorted."""
    return tuple(sorted({key for n in form_names() for key in get_form(n).peft_config}))


def form_settings(form: AdapterForm) -> dict[str, Any]:
    """Every flag of :func:`setting_names` as ``form`` exports it (False when it sets none)."""
    return {key: form.peft_config.get(key, False) for key in setting_names()}


def read_config(path: Path) -> dict[str, Any]:
    """The PEFT ``adapter_config.json`` at ``path``, checked to be one import can read exactly.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON, not a LoRA adapter, a native lorax_core folder, or a PEFT option
            that import cannot honour.
    """
    config = read_json(path)
    if not isinstance(config, dict):
        raise ValueError(f"{CONFIG_NAME} must hold a JSON object")
    if config.get("peft_type") != "LORA":
        hint = (
            "; this folder was written by lorax_core.save_adapter, read it with load_adapter"
            if config.get(FORMAT.name_key) == FORMAT.name
            else ""
        )
        raise ValueError(
            f"{CONFIG_NAME}: peft_type must be 'LORA' (LoRA or DoRA adapters), "
            f"got {config.get('peft_type')!r}{hint}"
        )
    for field, neutral in NEUTRAL_FIELDS.items():
        if config.get(field, neutral[0]) not in neutral:
            raise ValueError(
                f"{CONFIG_NAME}: {field}={config[field]!r} is not supported by import_peft "
                f"(supported: {neutral[0]!r})"
            )
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(RESIDUAL_PEFT_INITS):
        raise ValueError(
            f"{CONFIG_NAME}: init_lora_weights={init!r} means the weights are relative to a "
            "rewritten base model; save the adapter from PEFT with "
            "path_initial_model_for_weight_conversion=... to convert it to a plain LoRA first"
        )
    if config.get("target_modules") in (None, "all-linear"):
        raise ValueError(
            f"{CONFIG_NAME}: target_modules={config.get('target_modules')!r} is not supported; "
            "it must list module names or be a regular expression"
        )
    return config


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors file at ``path``, its header validated first."""
    if not path.is_file():
        raise FileNotFoundError(f"directory has no {WEIGHTS_NAME}: {path}")
    read_header(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except Exception as err:  # safetensors raises its own error types for malformed files
        raise ValueError(f"{WEIGHTS_NAME} is not a readable safetensors file: {err}") from err
