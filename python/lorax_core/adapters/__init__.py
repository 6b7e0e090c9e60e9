"""Low-rank adapters for ``nn.Linear``: LoRA, SLoRA, DoRA and the SVD form, each registered
once in :mod:`lorax_core.adapters.registry`; their initialisers (:mod:`lorax_core.adapters.init`),
injection into models, merge/unmerge, tied weights, and safetensors save/load."""

from lorax_core.adapters import init
from lorax_core.adapters.config import AdapterConfig
from lorax_core.adapters.dora import DoraLinear
from lorax_core.adapters.inject import (
    TrainableCounts,
    adapted_modules,
    adapter_config,
    inject,
    trainable_parameters,
)
from lorax_core.adapters.io import load_adapter, save_adapter
from lorax_core.adapters.layer import AdapterLinear
from lorax_core.adapters.lora import LoraLinear
from lorax_core.adapters.merge import merge, merged_state_dict, unmerge
from lorax_core.adapters.registry import AdapterForm, form_names, get_form, register_form
from lorax_core.adapters.slora import SLoraLinear
from lorax_core.adapters.svd import SVDLinear
from lorax_core.adapters.tied import untie_weights

__all__ = [
    "AdapterConfig",
    "AdapterForm",
    "AdapterLinear",
    "DoraLinear",
    "LoraLinear",
    "SLoraLinear",
    "SVDLinear",
    "TrainableCounts",
    "adapted_modules",
    "adapter_config",
    "form_names",
    "get_form",
    "init",
    "inject",
    "load_adapter",
    "merge",
    "merged_state_dict",
    "register_form",
    "save_adapter",
    "trainable_parameters",
    "unmerge",
    "untie_weights",
]
