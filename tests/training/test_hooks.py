"""The training-hook protocol: the allocators and the BiDoRA upper level satisfy it."""

from __future__ import annotations

from lorax_core.adapters import AdapterConfig, inject
from lorax_core.allocators import AdaLoRA
from lorax_core.training import BiDoRATrainer, OptimizerAware, Regularizing, TrainingHook
from lorax_core.training.hooks import hook_regularizer
from tests.training._tiny import Tiny, tiny_data, tiny_loss, tiny_model


def test_allocators_are_optimizer_aware_regularizing_hooks():
    model = Tiny()
    inject(model, AdapterConfig(method="svd", r=2, alpha=4.0, target_modules=["a", "b"]))
    allocator = AdaLoRA(model, 10, target_r=1, t_init=2, t_final=2, delta_t=2)
    assert isinstance(allocator, TrainingHook)
    assert isinstance(allocator, OptimizerAware)
    assert isinstance(allocator, Regularizing)
    assert hook_regularizer(allocator) is not None


def test_bidora_upper_level_is_a_regularizing_hook():
    model = tiny_model()
    upper = BiDoRATrainer(model, tiny_loss, tiny_data(), batch_size=4, lr=1e-2, arch_lr=1e-2).upper
    assert isinstance(upper, TrainingHook) and isinstance(upper, Regularizing)
    assert not isinstance(upper, OptimizerAware)
    assert float(hook_regularizer(upper)) > 0
    upper.gamma = 0.0
    assert hook_regularizer(upper) is None


def test_plain_objects_are_not_hooks():
    assert not isinstance(object(), TrainingHook)
    assert hook_regularizer(object()) is None
