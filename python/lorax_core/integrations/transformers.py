"""``transformers.Trainer`` integration: any lorax training hook, and BiDoRA as a Trainer.

:class:`LoraxTrainerCallback` drives any :class:`~lorax_core.training.hooks.TrainingHook` — the
AdaLoRA / ElaLoRA allocators, the BiDoRA upper level — through two Trainer events, both run
while gradients exist:

- ``on_pre_optimizer_step`` (after gradient clipping): adds the gradient of the hook's
  ``orthogonal_regularizer()``, when it has one, to the parameters' gradients — the same
  update as adding the regulariser to the loss once per optimizer step (not clipped, as it is
  added afterwards);
- ``on_optimizer_step`` (after ``optimizer.step()``, before ``zero_grad()``): calls
  ``hook.step(global_step + 1)`` (``state.global_step`` is incremented after this event).

A hook with ``attach_optimizer`` gets the Trainer's optimizer (accelerate wrapper unwrapped) on
the first step unless it has one already.

:class:`BiDoRATransformersTrainer` is a ``transformers.Trainer`` that trains DoRA adapters the
BiDoRA way (docs/bidora.md): ``Trainer(model, args, train_dataset=...)`` becomes
``BiDoRATransformersTrainer(model, args, train_dataset=..., arch_lr=...)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import (
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from transformers.trainer_utils import get_last_checkpoint

from lorax_core._validation import Instance, Options, Real, check
from lorax_core.training.bidora import (
    HYPERGRADS,
    BiDoRAUpperLevel,
    check_head,
    dora_modules,
    lower_parameters,
)
from lorax_core.training.checkpoint import load_state, save_state
from lorax_core.training.hooks import OptimizerAware, TrainingHook, hook_regularizer
from lorax_core.training.schedule import BatchStream, LinearWarmupDecay, shard
from lorax_core.training.split import DataSplit, split_indices

__all__ = ["BIDORA_STATE_NAME", "BiDoRATransformersTrainer", "LoraxTrainerCallback"]

# File of the BiDoRA upper level's state inside each Trainer checkpoint folder.
BIDORA_STATE_NAME = "bidora_upper.safetensors"


class LoraxTrainerCallback(TrainerCallback):
    """Drives ``hook`` (an allocator, the BiDoRA upper level, any
    :class:`~lorax_core.training.hooks.TrainingHook`) from a ``transformers.Trainer``.

    Args:
        hook: the hook, built on the Trainer's model.
        regularize: add the gradient of the hook's ``orthogonal_regularizer()`` (default True).
    """

    def __init__(self, hook: TrainingHook, regularize: bool = True) -> None:
        if not isinstance(hook, TrainingHook):
            raise TypeError(
                "LoraxTrainerCallback: hook must be a lorax training hook (an object with "
                f"step(global_step)), got {type(hook).__name__}"
            )
        self.hook = hook
        self.regularize = bool(regularize)

    @property
    def allocator(self) -> TrainingHook:
        """The hook (the name this attribute had when only allocators were driven)."""
        return self.hook

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not self.regularize:
            return
        with torch.enable_grad():
            regularizer = hook_regularizer(self.hook)
            if regularizer is not None and regularizer.requires_grad:
                regularizer.backward()

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        optimizer = kwargs.get("optimizer")
        hook = self.hook
        if isinstance(hook, OptimizerAware) and hook.optimizer is None and optimizer is not None:
            hook.attach_optimizer(optimizer)
        self.hook.step(state.global_step + 1)


class _BiDoRACheckpoints(TrainerCallback):
    """Writes the upper level's state into every Trainer checkpoint folder (process 0)."""

    def __init__(self, trainer: BiDoRATransformersTrainer) -> None:
        self.trainer = trainer

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero:
            return
        folder = os.path.join(str(args.output_dir), f"checkpoint-{state.global_step}")
        if os.path.isdir(folder):
            save_state(os.path.join(folder, BIDORA_STATE_NAME), self.trainer.bidora_state_dict())


class BiDoRATransformersTrainer(Trainer):
    """A ``transformers.Trainer`` for BiDoRA: the Trainer's own loop is the lower level.

    ``train_dataset`` is split once (``val_fraction``, ``args.seed``) into D_tr, which the
    Trainer iterates as usual, and D_val. The Trainer's optimizer (AdamW with the
    TrainingArguments' lr, betas, eps and weight decay) and lr schedule train the lower level —
    the DoRA directions plus ``head`` — on ``compute_loss``; the direction regulariser's gradient
    is added before each optimizer step. After each optimizer step the upper level takes one
    AdamW step (``arch_lr``, same betas/eps, ``arch_weight_decay``, linear warm-up/decay over
    the same steps and warm-up) on a D_val batch of the same global size, with the
    hypergradient taken on the lower step's (last micro-)batch. Everything else — batch size,
    max_steps/epochs, logging, checkpointing (the upper level's state goes into each checkpoint
    folder as ``bidora_upper.safetensors``), ``train(resume_from_checkpoint=...)`` — is the
    Trainer's.

    Args:
        model, args, train_dataset, **kwargs: as for ``transformers.Trainer``.
        arch_lr: peak lr of the magnitudes (default ``args.learning_rate``).
        val_fraction, arch_weight_decay, reg_direction, hypergrad, hypergrad_scale, head: as
            for :class:`lorax_core.training.BiDoRATrainer`.

    Attributes: ``split``, ``bidora`` (the :class:`~lorax_core.training.bidora.BiDoRAUpperLevel`
    hook), ``val_dataset``.
    """

    def __init__(
        self,
        model: nn.Module,
        args: TrainingArguments,
        train_dataset: Any = None,
        *,
        arch_lr: float | None = None,
        val_fraction: float = 0.2,
        head: nn.Module | None = None,
        hypergrad: str = "finite_difference",
        hypergrad_scale: float = 1.0,
        arch_weight_decay: float = 0.0,
        reg_direction: float = 1e-5,
        **kwargs: Any,
    ) -> None:
        fn = "BiDoRATransformersTrainer"
        modules = dora_modules(model, fn)
        check(fn, "args", args, Instance(TrainingArguments, "a transformers.TrainingArguments"))
        if train_dataset is None or not hasattr(train_dataset, "__len__"):
            raise TypeError(
                f"{fn}: train_dataset must be a map-style dataset, got {train_dataset!r}"
            )
        positive = Real(0.0, None, closed="neither")
        arch_lr = args.learning_rate if arch_lr is None else check(fn, "arch_lr", arch_lr, positive)
        check(fn, "arch_weight_decay", arch_weight_decay, Real(0.0, None))
        check(fn, "reg_direction", reg_direction, Real(0.0, None))
        check(fn, "hypergrad", hypergrad, Options(HYPERGRADS))
        check(fn, "hypergrad_scale", hypergrad_scale, Real())
        head = check_head(model, head, fn)
        world = max(1, int(args.world_size))
        global_batch = args.per_device_train_batch_size * world
        self.split: DataSplit = split_indices(
            len(train_dataset), val_fraction, int(args.seed), min_size=global_batch, function=fn
        )
        self.full_dataset = train_dataset
        self.val_dataset = torch.utils.data.Subset(train_dataset, list(self.split.val))
        lower = lower_parameters(modules, head)
        for p in lower:
            p.requires_grad_(True)
        self.bidora = BiDoRAUpperLevel(
            modules,
            lower,
            self._bidora_loss,
            model,
            arch_lr=float(arch_lr),
            arch_weight_decay=float(arch_weight_decay),
            reg_direction=float(reg_direction),
            hypergrad=hypergrad,
            hypergrad_scale=float(hypergrad_scale),
        )
        for p in self.bidora.upper:
            p.requires_grad_(True)
        self.bidora.optimizer = torch.optim.AdamW(
            self.bidora.upper,
            lr=float(arch_lr),
            betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_epsilon,
            weight_decay=float(arch_weight_decay),
        )
        self._lower = lower
        self._val_stream = BatchStream(self.split.val, global_batch, 3 * int(args.seed) + 2)
        self._pending_state: dict[str, Any] | None = None
        callbacks = list(kwargs.pop("callbacks", None) or [])
        callbacks += [LoraxTrainerCallback(self.bidora), _BiDoRACheckpoints(self)]
        super().__init__(
            model=model,
            args=args,
            train_dataset=torch.utils.data.Subset(train_dataset, list(self.split.train)),
            callbacks=callbacks,
            **kwargs,
        )
        self.bidora.next_val_batch = self._next_val_batch

    # -- the two levels' plumbing -----------------------------------------------------------
    def _bidora_loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        loss = self.compute_loss(model, dict(batch))
        assert isinstance(loss, torch.Tensor)
        return loss

    def _next_val_batch(self) -> dict[str, Any]:
        rank = max(0, int(self.args.process_index))
        world = max(1, int(self.args.world_size))
        indices = shard(self._val_stream.next_indices(), rank, world)
        collator: Callable[[list[Any]], Any] = self.data_collator  # type: ignore[assignment]
        batch = collator([self.full_dataset[i] for i in indices])
        return self._prepare_inputs(batch)

    def training_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        inputs = self._prepare_inputs(inputs)
        self.bidora.train_batch = dict(inputs)
        return super().training_step(model, inputs, num_items_in_batch)

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """AdamW over the lower level only (directions and head), from the TrainingArguments."""
        if self.optimizer is None:
            self.optimizer = torch.optim.AdamW(
                self._lower,
                lr=self.args.learning_rate,
                betas=(self.args.adam_beta1, self.args.adam_beta2),
                eps=self.args.adam_epsilon,
                weight_decay=self.args.weight_decay,
            )
        return self.optimizer

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> torch.optim.lr_scheduler.LRScheduler:
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        warmup = self.args.get_warmup_steps(num_training_steps)
        schedule = LinearWarmupDecay(num_training_steps, warmup_steps=warmup)
        self.bidora.scheduler = torch.optim.lr_scheduler.LambdaLR(self.bidora.optimizer, schedule)
        if self._pending_state is not None:
            self.load_bidora_state_dict(self._pending_state)
            self._pending_state = None
        return scheduler

    # -- checkpoints ------------------------------------------------------------------------
    def bidora_state_dict(self) -> dict[str, Any]:
        """The upper level's optimizer, schedule and history, the D_val order and the split."""
        return {
            "split": self.split.fingerprint,
            "upper": self.bidora.state_dict(),
            "val_stream": self._val_stream.state_dict(),
        }

    def load_bidora_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`bidora_state_dict`.

        Raises:
            ValueError: the state comes from another data split (dataset, fraction or seed).
        """
        if state.get("split") != self.split.fingerprint:
            raise ValueError(
                "BiDoRATransformersTrainer: resume_from_checkpoint must come from a run with the "
                "same data split (train_dataset, val_fraction, seed)"
            )
        self.bidora.load_state_dict(state["upper"])
        self._val_stream.load_state_dict(state["val_stream"])

    def train(  # type: ignore[override]
        self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any
    ) -> Any:
        """``Trainer.train``; a resumed run also restores the upper level from the checkpoint.

        Raises:
            ValueError: the checkpoint has no BiDoRA state, or it is from another data split.
        """
        if resume_from_checkpoint:
            folder = resume_from_checkpoint
            if folder is True:
                folder = get_last_checkpoint(self.args.output_dir)
                if folder is None:
                    raise ValueError(
                        "BiDoRATransformersTrainer.train: resume_from_checkpoint=True but no "
                        f"checkpoint found in {self.args.output_dir}"
                    )
            path = os.path.join(str(folder), BIDORA_STATE_NAME)
            if not os.path.isfile(path):
                raise ValueError(
                    "BiDoRATransformersTrainer.train: resume_from_checkpoint must be a BiDoRA "
                    f"checkpoint folder (with {BIDORA_STATE_NAME}), got {str(folder)!r}"
                )
            state = load_state(path)
            if state.get("split") != self.split.fingerprint:
                raise ValueError(
                    "BiDoRATransformersTrainer.train: resume_from_checkpoint must come from a run "
                    "with the same data split (train_dataset, val_fraction, seed)"
                )
            self._pending_state = state
            resume_from_checkpoint = str(folder)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
