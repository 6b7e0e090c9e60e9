"""Shared driver of AdaLoRA and ElaLoRA: scores on the device, decisions in Rust.

Call order in a training loop (as PEFT's ``update_and_allocate``)::

    loss = task_loss + allocator.orthogonal_regularizer()
    loss.backward()
    optimizer.step()
    allocator.step(global_step)      # 1-based optimizer step, before zero_grad()
    optimizer.zero_grad()

On ordinary steps :meth:`RankAllocatorBase.step` only updates the score EMAs on the parameters'
device (no host synchronisation). On allocation steps the per-rank score vectors go to the Rust
allocator, and its decision is applied to the adapters and the optimizer state in place; the
optimizer and any LR scheduler stay the same objects.

``step(t)`` may be called more than once with the same ``t`` (transformers' callback fires once
per micro-batch under gradient accumulation): only the first call of a step updates the scores
and allocates, the repeats are no-ops. A ``t`` below the last one is a ``ValueError``.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

from lorax_core._core import ModulePlan, RankAllocator
from lorax_core._distributed import assign_, full, is_sharded, unwrap
from lorax_core._validation import Integer, Real, check
from lorax_core.adapters import SVDLinear, adapted_modules
from lorax_core.allocators.distributed import (
    broadcast_text,
    gathered_rank_scores,
    is_distributed,
    is_leader,
)
from lorax_core.allocators.scores import RANK_AXES, ImportanceScores, one_cpu_thread
from lorax_core.allocators.surgery import apply_plans_, permute_, set_rank_

__all__ = ["SCHEDULE_CHECKS", "RankAllocatorBase", "module_lists", "svd_modules"]

# Checks of the schedule arguments both allocators take (``validate_params`` keywords).
SCHEDULE_CHECKS = {
    "total_steps": Integer(low=1),
    "t_init": Integer(low=0),
    "t_final": Integer(low=0),
    "seed": Integer(low=0),
}


def svd_modules(model: nn.Module) -> dict[str, SVDLinear]:
    """The SVD-form adapters of ``model`` by qualified name, in module order.

    A DDP / DataParallel / compiled wrapper is looked through: names carry no ``module.``
    prefix, so a wrapped and an unwrapped model give the same names (and allocator states).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    model = unwrap(model)
    found = {n: m for n, m in adapted_modules(model).items() if isinstance(m, SVDLinear)}
    if not found:
        raise ValueError(
            "model has no SVD-form adapters; inject them with AdapterConfig(method='svd', ...)"
        )
    return found


def module_lists(modules: dict[str, SVDLinear]) -> tuple[list[str], list[int], list[int]]:
    """``(names, active ranks, capacities)`` of ``modules``, as the Rust allocator takes them."""
    return (
        list(modules),
        [m.active_rank for m in modules.values()],
        [m.capacity for m in modules.values()],
    )


class RankAllocatorBase:
    """Common machinery; use :class:`~lorax_core.allocators.AdaLoRA` or
    :class:`~lorax_core.allocators.ElaLoRA`.

    Learned state: ``scores_`` (the device-side EMAs) and ``allocator_`` (the Rust
    ``RankAllocator``).
    """

    def __init__(
        self,
        modules: dict[str, SVDLinear],
        allocator: RankAllocator,
        optimizer: torch.optim.Optimizer | None,
        beta1: float,
        beta2: float,
        gamma: float,
    ) -> None:
        self.modules = modules
        self.gamma = check(type(self).__name__, "gamma", gamma, Real(low=0.0))
        self.beta1 = beta1
        self.beta2 = beta2
        self.optimizer: torch.optim.Optimizer | None = None
        self.allocator_ = allocator
        self.scores_ = ImportanceScores(modules, beta1, beta2)
        # The last step passed to step(); repeats of it are no-ops, earlier steps errors.
        self.last_step_: int | None = None
        if optimizer is not None:
            self.attach_optimizer(optimizer)

    def attach_optimizer(self, optimizer: Any) -> None:
        """The optimizer whose per-parameter state moves with the ranks.

        Wrappers that keep the real optimizer in ``.optimizer`` (accelerate's
        ``AcceleratedOptimizer``) are unwrapped.
        """
        inner = optimizer
        while not isinstance(inner, torch.optim.Optimizer) and hasattr(inner, "optimizer"):
            inner = inner.optimizer
        if not isinstance(inner, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        self.optimizer = inner

    # -- training ----------------------------------------------------------------------------
    def step(self, global_step: int) -> bool:
        """Call after ``optimizer.step()`` and before ``zero_grad()`` with the 1-based step.

        Updates the scores (while ``t < T - t_final``) and, on allocation steps, reallocates.
        Returns whether ranks were reallocated by this call.

        A repeated ``global_step`` (the same value as the previous call, e.g. one call per
        micro-batch under gradient accumulation) is a no-op returning ``False``: the scores
        are not updated twice and no second allocation round runs. A ``global_step`` below the
        previous one raises ``ValueError``.
        """
        function = f"{type(self).__name__}.step"
        t = check(function, "global_step", global_step, Integer(low=0))
        last = self.last_step_
        if last is not None and t <= last:
            if t == last:
                return False
            raise ValueError(
                f"{function}: global_step must be >= the last step ({last}), got {t} "
                "(steps may repeat but not go backwards)"
            )
        self.last_step_ = t
        self._bind_scores()
        if self.allocator_.updates_scores(t):
            self.scores_.update()
        if not self.allocator_.is_allocation_step(t):
            return False
        if self.optimizer is None:
            raise RuntimeError(
                "no optimizer attached: pass optimizer=... or call attach_optimizer() so that "
                "its state moves with the ranks"
            )
        plans = self._decide(t)
        apply_plans_(list(self.modules.values()), self.optimizer, plans)
        if self._sharded():
            for name, plan in zip(self.modules, plans, strict=True):
                perm = torch.tensor(plan.perm, dtype=torch.long)
                for store in (self.scores_.ipt[name], self.scores_.unc[name]):
                    for tensor, (_, dim) in zip(store, RANK_AXES, strict=True):
                        permute_(tensor, perm, dim, plan.n_keep)
        else:
            with one_cpu_thread():
                self.scores_.permute_all_(
                    {name: (p.perm, p.n_keep) for name, p in zip(self.modules, plans, strict=True)}
                )
        return True

    def _sharded(self) -> bool:
        """Whether the adapters are FSDP2 ``DTensor`` s."""
        return any(is_sharded(m.lora_A) for m in self.modules.values())

    def _bind_scores(self) -> None:
        """Scores built before ``fully_shard`` are rebuilt on the sharded parameters (only
        before their first update; afterwards that is an error)."""
        first = next(iter(self.modules))
        if is_sharded(self.modules[first].lora_A) == is_sharded(self.scores_.ipt[first][0]):
            return
        if self.last_step_ is not None and any(
            bool(full(t).any()) for t in self.scores_.ipt[first]
        ):
            raise RuntimeError(
                f"{type(self).__name__}: the model was sharded after the scores were updated; "
                "build the allocator after fully_shard"
            )
        self.scores_ = ImportanceScores(self.modules, self.beta1, self.beta2)

    def _host_scores(self) -> list[list[float]] | None:
        """Per-rank scores for the decision: under FSDP2 assembled on every process (a
        collective); otherwise this process's own (used on rank 0 only)."""
        if self._sharded():
            ranks = {name: m.active_rank for name, m in self.modules.items()}
            return gathered_rank_scores(self.scores_.ipt, self.scores_.unc, ranks)
        return None

    def _decide(self, t: int) -> list[ModulePlan]:
        """Rust decides on rank 0; under torch.distributed the decision and the allocator state
        are broadcast so that every process applies the same plan and holds the same state."""
        scores = self._host_scores()
        if not is_distributed():
            return self.allocator_.allocate(t, scores or self.scores_.rank_scores_host())
        message = None
        if is_leader():
            if scores is None:
                scores = self.scores_.rank_scores_host()
            plans = self.allocator_.allocate(t, scores)
            fields = ("perm", "n_keep", "new_rank", "seed")
            described = [{f: getattr(p, f) for f in fields} for p in plans]
            message = json.dumps({"state": self.allocator_.to_json(), "plans": described})
        received = json.loads(broadcast_text(message))
        if not is_leader():
            self.allocator_ = RankAllocator.from_json(received["state"])
        return [ModulePlan(**p) for p in received["plans"]]

    def orthogonal_regularizer(self) -> torch.Tensor:
        """``γ · mean`` over modules of ``‖A Aᵀ − I‖_F`` and ``‖Bᵀ B − I‖_F`` (active ranks).

        A scalar on the adapters' device, differentiable; add it to the loss. Under FSDP2 each
        factor is gathered whole (differentiably; a collective, so every process must call it).
        """
        terms = []
        for module in self.modules.values():
            r = module.active_rank
            if r == 0:
                continue
            a = full(module.lora_A)[:r]
            b = full(module.lora_B)[:, :r]
            eye = torch.eye(r, dtype=a.dtype, device=a.device)
            terms.append(torch.linalg.matrix_norm(a @ a.T - eye))
            terms.append(torch.linalg.matrix_norm(b.T @ b - eye))
        if not terms:
            return torch.zeros((), device=next(iter(self.modules.values())).lora_A.device)
        return self.gamma * torch.stack(terms).mean()

    # -- inspection --------------------------------------------------------------------------
    def ranks(self) -> dict[str, int]:
        """Active rank of every adapted module."""
        return {name: module.active_rank for name, module in self.modules.items()}

    def history(self) -> list[tuple[int, dict[str, int]]]:
        """``(step, ranks)`` after every allocation so far."""
        names = list(self.modules)
        return [(a.step, dict(zip(names, a.ranks, strict=True))) for a in self.allocator_.history()]

    # -- checkpointing -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``{"allocator": <versioned JSON str>, "scores": {name: tensor}, "last_step": int |
        None}``.

        Save it beside the model's and optimizer's state dicts (the adapters' active ranks are in
        the model's state dict). ``last_step`` is the last ``global_step`` passed to
        :meth:`step`, so that a resumed run also ignores a repeat of it. Under FSDP2 the score
        tensors are ``DTensor`` s (save them with
        :func:`lorax_core.training.distributed.save_run`).
        """
        return {
            "allocator": self.allocator_.to_json(),
            "scores": self.scores_.state_dict(),
            "last_step": self.last_step_,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`'s output and sets every adapter's active rank to match.

        A state without ``last_step`` (written before it was saved) resumes from the last
        allocation step.
        """
        if not isinstance(state, dict) or "allocator" not in state or "scores" not in state:
            raise ValueError("state must be a dict with keys 'allocator' and 'scores'")
        allocator = RankAllocator.from_json(state["allocator"])
        allocated = [a.step for a in allocator.history()]
        last_step = state.get("last_step", allocated[-1] if allocated else None)
        if last_step is not None:
            check(
                "load_state_dict",
                "state['last_step']",
                last_step,
                Integer(low=allocated[-1] if allocated else 0),
            )
        if allocator.method != self.allocator_.method:
            raise ValueError(
                f"state: holds a {allocator.method} allocator, expected {self.allocator_.method}"
            )
        if allocator.names() != list(self.modules):
            raise ValueError("state: module names do not match this model's SVD adapters")
        self._bind_scores()
        if self._sharded():
            self._load_sharded_scores(state["scores"])
        else:
            self.scores_.load_state_dict(state["scores"])
        for module, rank in zip(self.modules.values(), allocator.ranks(), strict=True):
            if module.active_rank != rank:
                set_rank_(module, rank)
        self.allocator_ = allocator
        self.last_step_ = last_step

    def _load_sharded_scores(self, scores: dict[str, torch.Tensor]) -> None:
        """:meth:`ImportanceScores.load_state_dict` onto ``DTensor`` EMAs (whole or sharded
        values; shapes are the whole tensors')."""
        for name in self.modules:
            for kind, store in (("ipt", self.scores_.ipt), ("unc", self.scores_.unc)):
                for tensor, (p_name, _) in zip(store[name], RANK_AXES, strict=True):
                    key = f"{name}.{p_name}.{kind}"
                    if key not in scores:
                        raise ValueError(f"state: missing score tensor {key!r}")
                    if tuple(scores[key].shape) != tuple(tensor.shape):
                        raise ValueError(
                            f"state: {key!r} has shape {tuple(scores[key].shape)}, expected "
                            f"{tuple(tensor.shape)}"
                        )
                    assign_(tensor, scores[key])
