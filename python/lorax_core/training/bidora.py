"""BiDoRA: DoRA's directions and magnitudes trained at two levels on disjoint data.

The training set is split once (seeded) into D_tr and D_val. The lower level — every DoRA
direction pair (A, B) plus an optional task head, together ``w`` — fits D_tr; the upper level —
every magnitude vector ``m`` — fits D_val through a hypergradient that accounts for how the
lower level responds to ``m``. One bi-level step is one lower step then one upper step:

- lower: ``w ← AdamW(∇_w [L_tr(w, m) + R(w)])`` on a D_tr batch, ``R`` the direction regulariser
  (:func:`direction_regularizer`);
- upper: on a D_val batch, ``g = ∂L_val/∂m`` and ``v = ∂L_val/∂w``; with ``ε = 0.01 / ‖v‖``,
  ``g± = ∂L_tr(w ± εv, m)/∂m`` on the lower step's D_tr batch, and
  ``grad_m = g + η · (g₋ − g₊) / (2ε)`` — a central difference for
  ``− ∇²_{m,w} L_tr · v``, the implicit term of the hypergradient with the identity standing in
  for the inverse lower-level Hessian (η = ``hypergrad_scale``, 1 by default). Only ``w`` is
  perturbed, and it is restored bit-exactly from a copy. ``hypergrad="first_order"`` uses
  ``g`` alone.

An optional second phase fixes ``m``, resets ``w`` to its initial values and retrains it on
D_tr ∪ D_val. docs/bidora.md gives the derivation, the defaults, the cost and every difference
from the paper's released code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from tqdm.auto import tqdm

from lorax_core._batches import to_device
from lorax_core._distributed import full, is_distributed, is_sharded
from lorax_core._validation import (
    Instance,
    Integer,
    NoneValue,
    Options,
    Real,
    check,
    check_bool,
    duck_type,
)
from lorax_core.adapters import DoraLinear, adapted_modules
from lorax_core.training.schedule import BatchStream, collate, linear_warmup_decay, shard
from lorax_core.training.split import DataSplit, split_indices

__all__ = [
    "HYPERGRADS",
    "BiDoRATrainer",
    "BiDoRAUpperLevel",
    "Hypergradient",
    "direction_regularizer",
    "dora_modules",
    "hypergradient",
]

HYPERGRADS = ("finite_difference", "first_order")
# AdamW settings of both levels (as in the paper's released code).
BETAS = (0.9, 0.98)
ADAM_EPS = 1e-6
# ε = EPSILON_SCALE / ‖v‖ (the finite-difference step along v has length EPSILON_SCALE).
EPSILON_SCALE = 0.01
STATE_FORMAT = "lorax_core.bidora"
STATE_VERSION = 2

LossFn = Callable[[nn.Module, Any], torch.Tensor]


def _is_dataset(value: object) -> bool:
    return hasattr(value, "__len__") and hasattr(value, "__getitem__")


CALLABLE = duck_type(callable, "a callable")
DATASET = duck_type(_is_dataset, "a map-style dataset (len and [i])")


# -- building blocks ----------------------------------------------------------------------------
def dora_modules(model: nn.Module, function: str = "BiDoRATrainer") -> dict[str, DoraLinear]:
    """The DoRA adapters of ``model`` by qualified name, in module order.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: it has no DoRA adapters.
    """
    check(function, "model", model, Instance(nn.Module, "a torch.nn.Module"))
    found = {n: m for n, m in adapted_modules(model).items() if isinstance(m, DoraLinear)}
    if not found:
        raise ValueError(
            f"{function}: model must have DoRA adapters (inject them with "
            f"AdapterConfig(method='dora', ...)), got a model without any"
        )
    return found


def direction_regularizer(modules: Iterable[DoraLinear], weight: float) -> torch.Tensor:
    """``weight · mean`` over modules of ``‖D Dᵀ − I‖_F``, D the row-normalised ``W + s·B A``.

    D is (out, in). When ``out ≤ in`` the out × out Gram ``D Dᵀ`` is formed; otherwise the
    identity ``‖D Dᵀ − I‖²_F = ‖Dᵀ D‖²_F − out`` (rows of D have unit norm) is used with the
    smaller in × in Gram. Temporaries: D (out × in, the size of W) and a min(out, in)² Gram;
    cost ``out · in · min(out, in)`` multiply-adds per module. The norm is not detached (R is a
    function of the directions only). A differentiable scalar in the adapters' dtype. Under
    FSDP2 each module's W, A and B are gathered whole (a collective: call it on every process).
    """
    terms = []
    for module in modules:
        if is_sharded(module.lora_A):  # FSDP2: the whole factors, gathered differentiably
            base = full(module.base_layer.weight.detach()).to(module.adapter_dtype)
            direction = base + (full(module.lora_B) @ full(module.lora_A)) * module.scaling
        else:
            direction = module._dense_direction()
        norm = torch.linalg.vector_norm(direction, dim=1, keepdim=True)
        d = direction / norm
        out, inp = d.shape
        if out <= inp:
            gram = d @ d.t()
            gram = gram - torch.eye(out, dtype=gram.dtype, device=gram.device)
            terms.append(torch.linalg.matrix_norm(gram))
        else:
            gram = d.t() @ d
            sq = gram.square().sum() - out
            terms.append(sq.clamp_min(0.0).sqrt())
    if not terms:
        raise ValueError("direction_regularizer: modules must not be empty")
    return weight * torch.stack(terms).mean()


def _zeros_for_none(
    grads: Sequence[torch.Tensor | None], params: Sequence[nn.Parameter]
) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]


def all_reduce_mean(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Average ``tensors`` over the processes of the default group (one collective).

    Returns new tensors; a no-op copy-free pass-through when not distributed.
    """
    if not is_distributed() or not tensors:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    out, offset = [], 0
    for t in tensors:
        out.append(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
    return out


def _sharded(params: Sequence[torch.Tensor]) -> bool:
    """Whether the parameters are FSDP2 ``DTensor`` s."""
    return any(is_sharded(p) for p in params)


def _gradients(
    loss: torch.Tensor, params: Sequence[nn.Parameter], trainable: Sequence[nn.Parameter]
) -> list[torch.Tensor | None]:
    """``∂loss/∂params``. Whole parameters: ``torch.autograd.grad`` (this process's gradient).
    FSDP2 parameters: ``loss.backward()`` and the ``.grad`` FSDP2 reduce-scatters (already
    averaged over processes); every ``trainable`` parameter's ``.grad`` is cleared around it."""
    if not _sharded(params):
        return list(torch.autograd.grad(loss, list(params), allow_unused=True))
    for p in trainable:
        p.grad = None
    loss.backward()
    grads = [p.grad for p in params]
    for p in trainable:
        p.grad = None
    return grads


def _averaged(tensors: list[torch.Tensor], sharded: bool) -> list[torch.Tensor]:
    """:func:`all_reduce_mean` of ``tensors``; under FSDP2 the gradients are averaged already,
    so only the last entry (the loss) is."""
    if not sharded:
        return all_reduce_mean(tensors)
    return [*tensors[:-1], *all_reduce_mean(tensors[-1:])]


def _norm(tensors: Sequence[torch.Tensor]) -> float:
    """The Euclidean norm of all entries of ``tensors`` (whole or row-sharded ``DTensor`` s:
    local sums of squares, one all-reduce)."""
    if not _sharded(tensors):
        return math.sqrt(sum(float(t.double().square().sum()) for t in tensors))
    total = torch.zeros(1, dtype=torch.float64, device=tensors[0].device)
    for t in tensors:
        local = t.to_local() if is_sharded(t) else t  # type: ignore[attr-defined]
        total += local.double().square().sum().to(total.device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return math.sqrt(float(total))


def _rng_devices(params: Sequence[torch.Tensor]) -> list[torch.device]:
    return sorted({p.device for p in params if p.device.type == "cuda"}, key=str)


def _capture_rng(devices: list[torch.device]) -> list[torch.Tensor]:
    states = [torch.get_rng_state()]
    states += [torch.cuda.get_rng_state(d) for d in devices]
    return states


def _restore_rng(states: list[torch.Tensor], devices: list[torch.device]) -> None:
    torch.set_rng_state(states[0])
    for state, device in zip(states[1:], devices, strict=True):
        torch.cuda.set_rng_state(state, device)


@dataclass
class Hypergradient:
    """One upper-level gradient: ``grad`` per upper parameter, the D_val loss, ε used.

    ``grad`` and ``val_loss`` are averaged over processes under torch.distributed; ``epsilon``
    is 0.0 for ``first_order`` or when ``v = 0``.
    """

    grad: list[torch.Tensor]
    val_loss: torch.Tensor
    epsilon: float


def hypergradient(
    loss_fn: LossFn,
    model: nn.Module,
    lower: Sequence[nn.Parameter],
    upper: Sequence[nn.Parameter],
    train_batch: Any,
    val_batch: Any,
    *,
    mode: str = "finite_difference",
    scale: float = 1.0,
) -> Hypergradient:
    """The upper-level gradient of BiDoRA (see the module docstring for the formula).

    Cost: one forward/backward of ``loss_fn`` on ``val_batch`` and, for ``finite_difference``,
    two forward/backwards on ``train_batch`` at ``w ± εv`` (gradients taken for the upper
    parameters only). Memory: one copy of the lower parameters, from which they are restored
    bit-exactly (also when ``loss_fn`` raises). Both perturbed passes start from the same RNG
    state, so dropout draws the same masks at ``w + εv`` and ``w − εv``.

    Under torch.distributed ``v`` is averaged before ε is taken (so every process perturbs
    identically), and the result is averaged after. Under FSDP2 (``DTensor`` parameters) the
    gradients come from ``backward()`` (FSDP2 averages them), each process perturbs and
    restores its own shards, and ‖v‖ is summed over the shards.
    """
    lower, upper = list(lower), list(upper)
    val_loss = loss_fn(model, val_batch)
    sharded = _sharded(upper + lower)
    trainable = upper + lower
    grads = _gradients(val_loss, upper + lower, trainable)
    g = _zeros_for_none(grads[: len(upper)], upper)
    if mode == "first_order":
        reduced = _averaged([*g, val_loss.detach().reshape(1)], sharded)
        return Hypergradient(reduced[:-1], reduced[-1].reshape(()), 0.0)
    v = _zeros_for_none(grads[len(upper) :], lower)
    if not sharded:  # FSDP2 gradients are averaged already
        v = all_reduce_mean(v)
    v_norm = _norm(v)
    if v_norm == 0.0 or not math.isfinite(v_norm):
        reduced = _averaged([*g, val_loss.detach().reshape(1)], sharded)
        return Hypergradient(reduced[:-1], reduced[-1].reshape(()), 0.0)
    eps = EPSILON_SCALE / v_norm
    devices = _rng_devices(list(upper) + list(lower))
    backup = [p.detach().clone() for p in lower]
    rng = _capture_rng(devices)
    try:
        with torch.no_grad():
            for p, d in zip(lower, v, strict=True):
                p.add_(d, alpha=eps)
        g_plus = _gradients(loss_fn(model, train_batch), upper, trainable)
        _restore_rng(rng, devices)
        with torch.no_grad():
            for p, b, d in zip(lower, backup, v, strict=True):
                p.copy_(b).add_(d, alpha=-eps)
        g_minus = _gradients(loss_fn(model, train_batch), upper, trainable)
    finally:
        with torch.no_grad():
            for p, b in zip(lower, backup, strict=True):
                p.copy_(b)
    plus = _zeros_for_none(g_plus, upper)
    minus = _zeros_for_none(g_minus, upper)
    combined = [
        gi + (scale / (2.0 * eps)) * (gm - gp) for gi, gp, gm in zip(g, plus, minus, strict=True)
    ]
    reduced = _averaged([*combined, val_loss.detach().reshape(1)], sharded)
    return Hypergradient(reduced[:-1], reduced[-1].reshape(()), eps)


def _adamw(params: list[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=lr, betas=BETAS, eps=ADAM_EPS, weight_decay=weight_decay)


class BiDoRAUpperLevel:
    """The upper level of BiDoRA (magnitudes on D_val) as a training hook.

    ``step(global_step)`` runs one upper step on ``next_val_batch()`` with the D_tr batch of the
    lower step just taken (``train_batch``, set by the loop before the step);
    ``orthogonal_regularizer()`` is the direction regulariser R the loop adds to the lower
    loss. It satisfies :class:`lorax_core.training.hooks.TrainingHook`, so the transformers
    callback drives it as it drives the allocators.

    Attributes: ``optimizer`` (AdamW over the magnitudes), ``scheduler`` (set by the loop),
    ``history`` (D_val losses), ``last`` (the last :class:`Hypergradient`).
    """

    def __init__(
        self,
        modules: dict[str, DoraLinear],
        lower: Sequence[nn.Parameter],
        loss_fn: LossFn,
        model: nn.Module,
        *,
        arch_lr: float,
        arch_weight_decay: float,
        reg_direction: float,
        hypergrad: str,
        hypergrad_scale: float,
    ) -> None:
        self.modules = modules
        self.model = model
        self.loss_fn = loss_fn
        self.lower = list(lower)
        self.upper = [p for m in modules.values() for p in m.magnitude_parameters()]
        self.reg_direction = reg_direction
        self.gamma = reg_direction
        self.hypergrad = hypergrad
        self.hypergrad_scale = hypergrad_scale
        self.optimizer = _adamw(self.upper, arch_lr, arch_weight_decay)
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.train_batch: Any = None
        self.next_val_batch: Callable[[], Any] | None = None
        self.history: list[float] = []
        self.last: Hypergradient | None = None

    def orthogonal_regularizer(self) -> torch.Tensor:
        """R = ``reg_direction · mean ‖D Dᵀ − I‖_F`` (see :func:`direction_regularizer`)."""
        return direction_regularizer(self.modules.values(), self.reg_direction)

    def upper_step(self, train_batch: Any, val_batch: Any) -> float:
        """One AdamW step of the magnitudes on the hypergradient; returns the D_val loss."""
        result = hypergradient(
            self.loss_fn,
            self.model,
            self.lower,
            self.upper,
            train_batch,
            val_batch,
            mode=self.hypergrad,
            scale=self.hypergrad_scale,
        )
        for p, g in zip(self.upper, result.grad, strict=True):
            p.grad = g.to(p.dtype)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        for p in self.upper:
            p.grad = None
        self.last = result
        loss = float(result.val_loss)
        self.history.append(loss)
        return loss

    def step(self, global_step: int) -> float:
        """The hook entry point: one upper step after lower step ``global_step``."""
        if self.train_batch is None or self.next_val_batch is None:
            raise RuntimeError(
                "BiDoRAUpperLevel.step: the loop must set train_batch and next_val_batch first"
            )
        return self.upper_step(self.train_batch, self.next_val_batch())

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "history": list(self.history),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.history = [float(x) for x in state["history"]]


def lower_parameters(modules: dict[str, DoraLinear], head: nn.Module | None) -> list[nn.Parameter]:
    """Directions (A, B) of every module, then the head's parameters (de-duplicated)."""
    params = [p for m in modules.values() for p in m.direction_parameters()]
    if head is not None:
        seen = {id(p) for p in params}
        params += [p for p in head.parameters() if id(p) not in seen]
    return params


def check_head(model: nn.Module, head: object, function: str) -> nn.Module | None:
    """``head`` if it is None or a submodule of ``model`` with parameters; else an error."""
    check(function, "head", head, NoneValue(), Instance(nn.Module, "a torch.nn.Module"))
    if head is None:
        return None
    assert isinstance(head, nn.Module)
    if not any(m is head for m in model.modules()):
        raise ValueError(
            f"{function}: head must be a submodule of model (part of its graph), "
            f"got a {type(head).__name__} that model does not contain"
        )
    if not any(True for _ in head.parameters()):
        raise ValueError(f"{function}: head must have parameters, got {type(head).__name__}")
    return head


# -- the native trainer ---------------------------------------------------------------------------
class BiDoRATrainer:
    """Bi-level DoRA training of any ``nn.Module`` with DoRA adapters and any loss.

    Args:
        model: a model with DoRA adapters (``inject(model, AdapterConfig(method="dora", ...))``).
        loss_fn: ``loss_fn(model, batch) -> scalar tensor`` (mean over the batch); ``batch`` is
            ``collate_fn([train_dataset[i] for i in indices])`` with its tensors moved to the
            adapters' device.
        train_dataset: a map-style dataset (``len`` and ``[i]``); split once into D_tr / D_val.
        val_fraction: share of ``train_dataset`` held out as D_val, in (0, 1).
        seed: seed of the split and of the batch order.
        batch_size: global batch size of both levels (under torch.distributed each of the W
            processes takes ``batch_size / W`` examples of it).
        lr, arch_lr: peak learning rates of the lower (directions, head) and upper
            (magnitudes) AdamW (betas 0.9/0.98, eps 1e-6).
        weight_decay, arch_weight_decay: AdamW weight decay of each level.
        reg_direction: λ of the direction regulariser added to the lower loss (0 turns it off).
        hypergrad: ``"finite_difference"`` (the implicit term, two extra D_tr passes) or
            ``"first_order"`` (``∂L_val/∂m`` alone).
        hypergrad_scale: η, the weight of the implicit term.
        head: a submodule of ``model`` (e.g. the classifier) trained with the directions.
        warmup_fraction: linear warm-up share of each phase's steps, then linear decay to 0.
        retrain_steps: steps of phase 2 (m fixed, directions and head reset to their initial
            values and retrained on D_tr ∪ D_val); 0 skips it.
        retrain_lr: peak lr of phase 2 (default ``lr``).
        collate_fn: turns a list of dataset items into a batch (default torch's
            ``default_collate``).

    Attributes: ``split`` (the recorded :class:`~lorax_core.training.split.DataSplit`),
    ``history`` (``{"train_loss", "val_loss", "retrain_loss"}`` per step), ``upper`` (the
    :class:`BiDoRAUpperLevel`), ``lower_optimizer``, ``step_count``, ``phase``.

    Raises:
        TypeError / ValueError naming the argument, before any training step: bad values, a
        model without DoRA adapters, a head that is not a submodule of ``model``, a dataset
        too small for one batch in each split, a batch size not divisible by the world size.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        train_dataset: Any,
        *,
        val_fraction: float = 0.2,
        seed: int = 0,
        batch_size: int,
        lr: float,
        arch_lr: float,
        weight_decay: float = 0.0,
        arch_weight_decay: float = 0.0,
        reg_direction: float = 1e-5,
        hypergrad: str = "finite_difference",
        hypergrad_scale: float = 1.0,
        head: nn.Module | None = None,
        warmup_fraction: float = 0.1,
        retrain_steps: int = 0,
        retrain_lr: float | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
    ) -> None:
        fn = "BiDoRATrainer"
        self.modules = dora_modules(model, fn)
        check(fn, "loss_fn", loss_fn, CALLABLE)
        check(fn, "train_dataset", train_dataset, DATASET)
        positive = Real(0.0, None, closed="neither")
        non_negative = Real(0.0, None)
        self.config: dict[str, Any] = {
            "val_fraction": check(fn, "val_fraction", val_fraction, Real(0, 1, "neither")),
            "seed": check(fn, "seed", seed, Integer(low=0)),
            "batch_size": check(fn, "batch_size", batch_size, Integer(low=1)),
            "lr": check(fn, "lr", lr, positive),
            "arch_lr": check(fn, "arch_lr", arch_lr, positive),
            "weight_decay": check(fn, "weight_decay", weight_decay, non_negative),
            "arch_weight_decay": check(fn, "arch_weight_decay", arch_weight_decay, non_negative),
            "reg_direction": check(fn, "reg_direction", reg_direction, non_negative),
            "hypergrad": check(fn, "hypergrad", hypergrad, Options(HYPERGRADS)),
            "hypergrad_scale": check(fn, "hypergrad_scale", hypergrad_scale, Real()),
            "warmup_fraction": check(fn, "warmup_fraction", warmup_fraction, Real(0, 1, "left")),
            "retrain_steps": check(fn, "retrain_steps", retrain_steps, Integer(low=0)),
            "retrain_lr": check(fn, "retrain_lr", retrain_lr, NoneValue(), positive),
        }
        check(fn, "collate_fn", collate_fn, NoneValue(), CALLABLE)
        self.head = check_head(model, head, fn)
        self.world = dist.get_world_size() if is_distributed() else 1
        self.rank = dist.get_rank() if is_distributed() else 0
        if self.config["batch_size"] % self.world:
            raise ValueError(
                f"{fn}: batch_size must be divisible by the number of processes ({self.world}), "
                f"got {batch_size}"
            )
        self.model = model
        self.loss_fn = loss_fn
        self.dataset = train_dataset
        self.collate_fn = collate_fn
        self.split: DataSplit = split_indices(
            len(train_dataset), val_fraction, seed, min_size=self.config["batch_size"], function=fn
        )
        self.config["head"] = (
            None if self.head is None else [n for n, _ in self.head.named_parameters()]
        )
        self.config["world_size"] = self.world
        self.lower = lower_parameters(self.modules, self.head)
        for p in self.lower:
            p.requires_grad_(True)
        self.upper = BiDoRAUpperLevel(
            self.modules,
            self.lower,
            loss_fn,
            model,
            arch_lr=self.config["arch_lr"],
            arch_weight_decay=self.config["arch_weight_decay"],
            reg_direction=self.config["reg_direction"],
            hypergrad=self.config["hypergrad"],
            hypergrad_scale=self.config["hypergrad_scale"],
        )
        for p in self.upper.upper:
            p.requires_grad_(True)
        self._names = self._parameter_names()
        self._broadcast_parameters()
        self.lower_optimizer = _adamw(self.lower, self.config["lr"], self.config["weight_decay"])
        self.lower_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        seed_ = self.config["seed"]
        bs = self.config["batch_size"]
        self.train_stream = BatchStream(self.split.train, bs, 3 * seed_ + 1)
        self.val_stream = BatchStream(self.split.val, bs, 3 * seed_ + 2)
        self.all_stream = BatchStream(range(self.split.n), bs, 3 * seed_ + 3)
        self.upper.next_val_batch = lambda: self._batch(self.val_stream)
        # Phase 2 restarts the directions and the head from here (host copy: no device memory).
        self._initial = (
            [p.detach().to("cpu", copy=True) for p in self.lower]
            if self.config["retrain_steps"] > 0
            else None
        )
        self.retrain_optimizer: torch.optim.AdamW | None = None
        self.retrain_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.total_steps: int | None = None
        self.step_count = 0
        self.retrain_count = 0
        self.phase = "bilevel"
        self.history: dict[str, list[float]] = {
            "train_loss": [],
            "val_loss": [],
            "retrain_loss": [],
        }
        self._devices = _rng_devices(self.upper.upper)
        self._device = self.upper.upper[0].device

    # -- helpers ----------------------------------------------------------------------------
    def _parameter_names(self) -> dict[int, str]:
        names = {id(p): n for n, p in self.model.named_parameters(remove_duplicate=False)}
        return names

    def _signature(self) -> list[list[Any]]:
        params = self.lower + self.upper.upper
        return [
            [self._names.get(id(p), "?"), list(p.shape), str(p.dtype).removeprefix("torch.")]
            for p in params
        ]

    def _broadcast_parameters(self) -> None:
        """Under torch.distributed, start every process from rank 0's trainable values (FSDP2
        shards are each process's own block of the same values: left as they are)."""
        if not is_distributed() or _sharded(self.lower + self.upper.upper):
            return
        with torch.no_grad():
            for p in self.lower + self.upper.upper:
                dist.broadcast(p.data, src=0)

    def _batch(self, stream: BatchStream) -> Any:
        indices = shard(stream.next_indices(), self.rank, self.world)
        return to_device(collate(self.dataset, indices, self.collate_fn), self._device)

    def _lower_step(self, batch: Any, optimizer: torch.optim.Optimizer) -> float:
        loss = self.loss_fn(self.model, batch)
        total = loss + self.upper.orthogonal_regularizer() if self.upper.gamma > 0 else loss
        trainable = self.lower + self.upper.upper
        grads = _gradients(total, self.lower, trainable)
        if self.head is not None and self.step_count == 0 and self.retrain_count == 0:
            head_ids = {id(p) for p in self.head.parameters()}
            if all(g is None for g, p in zip(grads, self.lower, strict=True) if id(p) in head_ids):
                raise ValueError(
                    "BiDoRATrainer: head must be part of the model's graph (loss_fn's loss does "
                    "not depend on any of its parameters)"
                )
        reduced = _averaged(
            [*_zeros_for_none(grads, self.lower), loss.detach().reshape(1)], _sharded(self.lower)
        )
        for p, g in zip(self.lower, reduced[:-1], strict=True):
            p.grad = g.to(p.dtype)
        optimizer.step()
        for p in self.lower:
            p.grad = None
        return float(reduced[-1])

    def start(self, steps: int) -> None:
        """Fix the run's horizon (``steps`` bi-level steps) and build the lr schedules.

        :meth:`train` calls it; call it yourself only to drive :meth:`bilevel_step` directly.
        """
        if self.total_steps is None:
            self.total_steps = steps
        elif steps != self.total_steps:
            raise ValueError(
                f"BiDoRATrainer.train: steps must equal the horizon this run was started with "
                f"({self.total_steps}), got {steps}"
            )
        warmup = self.config["warmup_fraction"]
        if self.lower_scheduler is None:
            self.lower_scheduler = linear_warmup_decay(self.lower_optimizer, steps, warmup)
        if self.upper.scheduler is None:
            self.upper.scheduler = linear_warmup_decay(self.upper.optimizer, steps, warmup)

    def _start_retrain(self, reset: bool = True) -> None:
        """Phase 2's optimizer and schedule; ``reset`` puts the initial directions/head back."""
        if self.retrain_optimizer is not None:
            return
        if reset:
            assert self._initial is not None
            with torch.no_grad():
                for p, init in zip(self.lower, self._initial, strict=True):
                    p.copy_(init.to(p.device))
        self.retrain_optimizer, self.retrain_scheduler = self._retrain_optimizer()

    def _retrain_optimizer(
        self,
    ) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LRScheduler]:
        """A new phase-2 AdamW over the directions and head, and its schedule."""
        lr = self.config["retrain_lr"] or self.config["lr"]
        optimizer = _adamw(self.lower, lr, self.config["weight_decay"])
        schedule = linear_warmup_decay(
            optimizer, self.config["retrain_steps"], self.config["warmup_fraction"]
        )
        return optimizer, schedule

    # -- training ---------------------------------------------------------------------------
    def train(
        self,
        steps: int,
        *,
        progress: bool = True,
        on_step: Callable[[BiDoRATrainer], object] | None = None,
    ) -> dict[str, list[float]]:
        """Run bi-level steps until ``steps`` have been taken in total, then phase 2.

        ``steps`` is the horizon of the learning-rate schedules; a resumed trainer
        (:meth:`load_state_dict`) continues where the saved one stopped and must be given the
        same ``steps``. ``on_step(trainer)`` runs after every step of either phase (e.g. to save
        :meth:`state_dict` every k steps; an exception it raises ends training there). Returns
        :attr:`history`.

        Raises:
            ValueError: ``steps`` ≤ 0, or not the horizon of a resumed run.
        """
        steps = check("BiDoRATrainer.train", "steps", steps, Integer(low=1))
        progress = check_bool("BiDoRATrainer.train", "progress", progress)
        check(
            "BiDoRATrainer.train",
            "on_step",
            on_step,
            NoneValue(),
            CALLABLE,
        )
        self.start(steps)
        retrain = self.config["retrain_steps"]
        self.model.train()
        total = steps + retrain
        done = self.step_count + self.retrain_count
        with tqdm(
            total=total, initial=done, desc="BiDoRA", unit="step", disable=not progress
        ) as bar:
            while self.phase == "bilevel" and self.step_count < steps:
                self.bilevel_step()
                if self.step_count == steps:
                    self.phase = "retrain" if retrain > 0 else "done"
                bar.update(1)
                bar.set_postfix(
                    train=f"{self.history['train_loss'][-1]:.4f}",
                    val=f"{self.history['val_loss'][-1]:.4f}",
                )
                if on_step is not None:
                    on_step(self)
            if self.phase == "bilevel":  # reached by bilevel_step() calls made outside train()
                self.phase = "retrain" if retrain > 0 else "done"
            while self.phase == "retrain" and self.retrain_count < retrain:
                self.retrain_step()
                if self.retrain_count == retrain:
                    self.phase = "done"
                bar.update(1)
                bar.set_postfix(retrain=f"{self.history['retrain_loss'][-1]:.4f}")
                if on_step is not None:
                    on_step(self)
        return self.history

    def bilevel_step(self) -> tuple[float, float]:
        """One lower step on a D_tr batch, then one upper step on a D_val batch.

        Returns ``(train_loss, val_loss)`` (averaged over processes).
        """
        if self.lower_scheduler is None:
            raise RuntimeError(
                "BiDoRATrainer.bilevel_step: call start(steps) or train(steps) first"
            )
        batch = self._batch(self.train_stream)
        train_loss = self._lower_step(batch, self.lower_optimizer)
        self.lower_scheduler.step()
        val_loss = self.upper.upper_step(batch, self._batch(self.val_stream))
        self.step_count += 1
        self.history["train_loss"].append(train_loss)
        self.history["val_loss"].append(val_loss)
        return train_loss, val_loss

    def retrain_step(self) -> float:
        """One phase-2 step: directions and head on a D_tr ∪ D_val batch, magnitudes fixed."""
        self._start_retrain()
        assert self.retrain_optimizer is not None and self.retrain_scheduler is not None
        loss = self._lower_step(self._batch(self.all_stream), self.retrain_optimizer)
        self.retrain_scheduler.step()
        self.retrain_count += 1
        self.history["retrain_loss"].append(loss)
        return loss

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue bit-for-bit.

        Laid out so that ``torch.distributed.checkpoint`` (DCP) saves and loads it in place:
        the same keys and tensor shapes on a freshly built trainer and on one that has trained.

        - ``"plain"``: one JSON string with everything that is not a tensor (config, split
          fingerprint, parameter signature, schedulers, the three batch streams, phase, step
          counts, history), so a fresh trainer's state (no schedulers yet, empty history) loads
          a trained one's;
        - ``"lower"``, ``"magnitudes"``, ``"initial"``: the trainable values (directions and
          head, magnitudes, phase 2's starting point), ``DTensor`` s under FSDP2;
        - the three AdamW states keyed by parameter name (``get_optimizer_state_dict``).
          Phase 2's is present whenever ``retrain_steps > 0``, a zeroed stand-in until phase 2
          starts, so the keys never change;
        - ``"rng"``: this process's RNG states under ``"rank<r>"``.

        Save it with :func:`lorax_core.training.checkpoint.save_state` (one process or
        replicas; safetensors + JSON, no pickle), or with
        ``lorax_core.training.distributed.save_run(..., hook=trainer)`` on every process (any
        setting, FSDP2 included).
        """

        def sched(s: Any) -> Any:
            return None if s is None else s.state_dict()

        plain = {
            "config": dict(self.config),
            "split": self.split.fingerprint,
            "signature": self._signature(),
            "sharded": _sharded(self.lower + self.upper.upper),
            "total_steps": self.total_steps,
            "phase": self.phase,
            "step_count": self.step_count,
            "retrain_count": self.retrain_count,
            "lower_scheduler": sched(self.lower_scheduler),
            "upper_scheduler": sched(self.upper.scheduler),
            "retrain_started": self.retrain_optimizer is not None,
            "retrain_scheduler": sched(self.retrain_scheduler),
            "streams": {
                "train": self.train_stream.state_dict(),
                "val": self.val_stream.state_dict(),
                "all": self.all_stream.state_dict(),
            },
            "history": {k: list(v) for k, v in self.history.items()},
        }
        retrain: dict[str, Any] | None = None
        if self.config["retrain_steps"] > 0:
            optimizer = self.retrain_optimizer or self._retrain_optimizer()[0]
            retrain = get_optimizer_state_dict(self.model, optimizer)
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "plain": json.dumps(plain, default=str),
            "lower": [p.detach().clone() for p in self.lower],
            "magnitudes": [p.detach().clone() for p in self.upper.upper],
            "initial": self._initial,
            "lower_optimizer": get_optimizer_state_dict(self.model, self.lower_optimizer),
            "upper_optimizer": get_optimizer_state_dict(self.model, self.upper.optimizer),
            "retrain_optimizer": retrain,
            "rng": {f"rank{self.rank}": _capture_rng(self._devices)},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` of a trainer built the same way on the same model.

        Raises:
            TypeError: ``state`` is not a dict.
            ValueError: not a BiDoRA trainer state; its configuration, split or parameters
                differ from this trainer's (another model or configuration); its layout (FSDP2
                shards or whole tensors) is not this trainer's; it was taken after this
                trainer already started training.
        """
        fn = "BiDoRATrainer.load_state_dict"
        check(fn, "state", state, Instance(dict, "a dict"))
        if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
            raise ValueError(f"{fn}: state must be a BiDoRATrainer state, got another format")
        meta = json.loads(state["plain"])
        saved = {k: _plain(v) for k, v in meta["config"].items()}
        mine = {k: _plain(v) for k, v in self.config.items()}
        if saved != mine:
            diff = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
            raise ValueError(
                f"{fn}: state must come from a trainer with the same configuration; "
                f"differs in {', '.join(diff)}"
            )
        if meta["split"] != self.split.fingerprint:
            raise ValueError(f"{fn}: state must come from the same data split (fingerprint)")
        if _plain(meta["signature"]) != _plain(self._signature()):
            raise ValueError(
                f"{fn}: state must come from the same model (its trainable parameters' names, "
                f"shapes and dtypes differ)"
            )
        sharded = _sharded(self.lower + self.upper.upper)
        if bool(meta["sharded"]) != sharded:
            have = "FSDP2 shards" if meta["sharded"] else "whole tensors"
            raise ValueError(
                f"{fn}: state must have this trainer's layout (FSDP2 shards under fully_shard, "
                f"whole tensors otherwise), got {have}"
            )
        if self.step_count or self.retrain_count:
            raise ValueError(f"{fn}: state must be loaded before training starts")
        total = meta["total_steps"]
        if total is not None:
            self.start(int(total))
        with torch.no_grad():
            for p, t in zip(self.lower, state["lower"], strict=True):
                p.copy_(t)
            for p, t in zip(self.upper.upper, state["magnitudes"], strict=True):
                p.copy_(t)
        if state["initial"] is not None:
            self._initial = [t.detach().to("cpu", copy=True) for t in state["initial"]]
        set_optimizer_state_dict(self.model, self.lower_optimizer, state["lower_optimizer"])
        set_optimizer_state_dict(self.model, self.upper.optimizer, state["upper_optimizer"])
        for scheduler, key in (
            (self.lower_scheduler, "lower_scheduler"),
            (self.upper.scheduler, "upper_scheduler"),
        ):
            if scheduler is not None and meta[key] is not None:
                scheduler.load_state_dict(meta[key])
        if meta["retrain_started"]:
            self._start_retrain(reset=False)
            assert self.retrain_optimizer is not None and self.retrain_scheduler is not None
            set_optimizer_state_dict(self.model, self.retrain_optimizer, state["retrain_optimizer"])
            self.retrain_scheduler.load_state_dict(meta["retrain_scheduler"])
        self.train_stream.load_state_dict(meta["streams"]["train"])
        self.val_stream.load_state_dict(meta["streams"]["val"])
        self.all_stream.load_state_dict(meta["streams"]["all"])
        _restore_rng(list(state["rng"][f"rank{self.rank}"]), self._devices)
        self.phase = str(meta["phase"])
        self.step_count = int(meta["step_count"])
        self.retrain_count = int(meta["retrain_count"])
        self.history = {k: [float(x) for x in v] for k, v in meta["history"].items()}
        self.upper.history = list(self.history["val_loss"])


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively (states read back from JSON hold lists)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
