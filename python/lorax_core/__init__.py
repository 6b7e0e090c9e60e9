"""lorax_core — adaptive, efficient LoRA fine-tuning for PyTorch with a Rust core.

The public API is re-exported here; each method lives in its own subpackage.
"""

from lorax_core import init
from lorax_core._core import __version__
from lorax_core.adapters import (
    AdapterConfig,
    inject,
    load_adapter,
    merge,
    merged_state_dict,
    save_adapter,
    trainable_parameters,
    unmerge,
)
from lorax_core.gelora import RankPlan, capture_hidden_states, plan_ranks, profile
from lorax_core.integrations.peft import export_peft, import_peft
from lorax_core.training import BiDoRATrainer

__all__ = [
    "AdapterConfig",
    "BiDoRATrainer",
    "RankPlan",
    "__version__",
    "capture_hidden_states",
    "export_peft",
    "import_peft",
    "init",
    "inject",
    "load_adapter",
    "merge",
    "merged_state_dict",
    "plan_ranks",
    "profile",
    "save_adapter",
    "trainable_parameters",
    "unmerge",
]
