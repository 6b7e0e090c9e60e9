"""Trainers and the loop helpers they share: BiDoRA, data splits, schedules, training hooks."""

from lorax_core.training.bidora import (
    BiDoRATrainer,
    BiDoRAUpperLevel,
    Hypergradient,
    direction_regularizer,
    dora_modules,
    hypergradient,
)
from lorax_core.training.checkpoint import load_state, save_state
from lorax_core.training.hooks import OptimizerAware, Regularizing, TrainingHook
from lorax_core.training.schedule import BatchStream, LinearWarmupDecay, linear_warmup_decay
from lorax_core.training.split import DataSplit, split_indices

__all__ = [
    "BatchStream",
    "BiDoRATrainer",
    "BiDoRAUpperLevel",
    "DataSplit",
    "Hypergradient",
    "LinearWarmupDecay",
    "OptimizerAware",
    "Regularizing",
    "TrainingHook",
    "direction_regularizer",
    "dora_modules",
    "hypergradient",
    "linear_warmup_decay",
    "load_state",
    "save_state",
    "split_indices",
]
