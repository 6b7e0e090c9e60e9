"""Adaptive-rank allocators for SVD-form adapters: AdaLoRA (masking) and ElaLoRA (prune and
expand), with device-side importance scores and decisions taken by the Rust core."""

from lorax_core.allocators.adalora import AdaLoRA
from lorax_core.allocators.base import RankAllocatorBase
from lorax_core.allocators.elalora import ElaLoRA
from lorax_core.allocators.scores import ImportanceScores, rank_scores, update_importance_

__all__ = [
    "AdaLoRA",
    "ElaLoRA",
    "ImportanceScores",
    "RankAllocatorBase",
    "rank_scores",
    "update_importance_",
]
