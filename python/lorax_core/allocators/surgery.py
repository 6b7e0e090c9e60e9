"""Moving ranks inside capacity-padded SVD adapters, with their optimizer state.

A decision for one module is ``(perm, n_keep, new_rank, seed)`` (see ``RankAllocator.allocate``):
new slot ``j`` takes old slot ``perm[j]``; slots ``[0, n_keep)`` are surviving ranks, slots
``[n_keep, new_rank)`` receive new ranks, slots ``≥ new_rank`` are inactive. The optimizer object
is kept: every per-parameter state tensor of the parameter's shape (Adam's ``exp_avg`` and
``exp_avg_sq``, ``max_exp_avg_sq``, SGD's ``momentum_buffer``) is permuted the same way, so
surviving ranks keep their moments; the moments of pruned, new and free slots are reset to zero.

Under FSDP2 the parameters and their moments are ``DTensor`` s sharded by rows: ``lora_A`` and
``lora_E`` along the rank axis, ``lora_B`` along the output axis. Each one is gathered whole on
every process (the adapters are small), the decision is applied to the whole tensor exactly as
for an unsharded module, and every process writes back its own block — so the result is the
same bits as on one process, and every process makes the same collectives in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lorax_core._core import ModulePlan
from lorax_core._distributed import assign_, full, is_sharded, local_slices
from lorax_core._validation import Integer, check
from lorax_core.adapters import SVDLinear
from lorax_core.allocators.scores import (
    RANK_AXES,
    SlotMove,
    one_cpu_thread,
    permute_rank_axes_,
    permute_rank_axis_,
)

__all__ = [
    "NEW_RANK_E",
    "apply_plan_",
    "apply_plans_",
    "orthonormal_complement",
    "permute_",
    "set_rank_",
]

# Upper bound of the singular value given to a new rank (docs/allocators.md): the output is
# unchanged.
NEW_RANK_E = 1e-13


def orthonormal_complement(existing: torch.Tensor, n_new: int, seed: int) -> torch.Tensor:
    """``n_new`` random unit vectors orthogonal to each other and to the columns of ``existing``.

    ``existing`` is (d, m) with m + n_new ≤ d; returns (d, n_new) float64 on the CPU, drawn from
    a CPU generator seeded with ``seed`` (so every replica draws the same vectors).
    """
    d, m = existing.shape
    if m + n_new > d:
        raise ValueError(f"cannot add {n_new} orthogonal directions to {m} in dimension {d}")
    gen = torch.Generator().manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)
    draw = torch.randn(d, n_new, generator=gen, dtype=torch.float64)
    basis = torch.cat([existing.detach().to("cpu", torch.float64), draw], dim=1)
    with one_cpu_thread():  # a tiny QR: threads only add waits (see one_cpu_thread)
        q, _ = torch.linalg.qr(basis)
    return q[:, m:]


def _is_identity(perm: torch.Tensor) -> bool:
    return bool(torch.equal(perm.cpu(), torch.arange(perm.numel())))


@torch.no_grad()
def _zero_from_(tensor: torch.Tensor, dim: int, start: int) -> None:
    """Zero the entries at positions ``≥ start`` along ``dim`` (of the whole tensor), writing
    only this process's block of a ``DTensor``: no communication."""
    if is_sharded(tensor):
        local = tensor.to_local()  # type: ignore[attr-defined]
        first = local_slices(tensor)[dim].start
    else:
        local, first = tensor, 0
    begin = min(max(start - first, 0), local.shape[dim])
    local.narrow(dim, begin, local.shape[dim] - begin).zero_()


@torch.no_grad()
def permute_(tensor: torch.Tensor, perm: torch.Tensor, dim: int, n_keep: int) -> None:
    """:func:`~lorax_core.allocators.scores.permute_rank_axis_` for a whole tensor or a
    ``DTensor`` (gathered, permuted whole, local block written back: a collective). An identity
    ``perm`` only zeroes the slots ``≥ n_keep``, locally."""
    if _is_identity(perm):
        _zero_from_(tensor, dim, n_keep)
        return
    if not is_sharded(tensor):
        permute_rank_axis_(tensor, perm, dim, n_keep)
        return
    whole = full(tensor).clone()
    permute_rank_axis_(whole, perm, dim, n_keep)
    assign_(tensor, whole)


@torch.no_grad()
def apply_plan_(
    module: SVDLinear,
    optimizer: torch.optim.Optimizer | None,
    perm: list[int],
    n_keep: int,
    new_rank: int,
    seed: int,
) -> None:
    """Applies one module's decision in place (parameters, optimizer state, active rank):
    :func:`apply_plans_` for one module."""
    apply_plans_([module], optimizer, [ModulePlan(list(perm), n_keep, new_rank, seed)])


@torch.no_grad()
def apply_plans_(
    modules: Sequence[SVDLinear],
    optimizer: torch.optim.Optimizer | None,
    plans: Sequence[ModulePlan],
) -> None:
    """Applies every module's decision in place (parameters, optimizer state, active ranks).

    Whole tensors are moved in one batched pass over all modules (:func:`permute_rank_axes_`),
    then the new ranks are drawn module by module; the result is that of applying the plans one
    by one. FSDP2 ``DTensor`` parameters are handled module by module (then a collective: every
    process must apply the same decisions in the same order).
    """
    if len(modules) != len(plans):
        raise ValueError(f"plans: expected {len(modules)} plans (one per module), got {len(plans)}")
    for module in modules:
        if module.merged:
            raise RuntimeError("cannot change the active rank of a merged layer; unmerge first")
    whole = [(m, p) for m, p in zip(modules, plans, strict=True) if not is_sharded(m.lora_A)]
    with one_cpu_thread():
        moves: list[SlotMove] = []
        for module, plan in whole:
            perm, n_keep = plan.perm, plan.n_keep
            for name, dim in RANK_AXES:
                param = getattr(module, name)
                # A and B keep every slot (pruned rows stay in the free slots); E is zero
                # from the new rank on.
                keep = plan.new_rank if name == "lora_E" else param.shape[dim]
                moves.append((param, perm, dim, keep))
                moves.extend((value, perm, dim, n_keep) for value in _moments(optimizer, param))
        permute_rank_axes_(moves)
        for module, plan in whole:
            _draw_new_ranks_(module.lora_A, module.lora_E, module.lora_B, plan)
            if module.active_rank != plan.new_rank:
                module.set_active_rank(plan.new_rank)
    for module, plan in zip(modules, plans, strict=True):
        if is_sharded(module.lora_A):
            _apply_sharded_(module, optimizer, plan)


def _moments(optimizer: torch.optim.Optimizer | None, param: torch.Tensor) -> list[torch.Tensor]:
    """The optimizer's per-parameter state tensors of ``param``'s shape (moments, buffers)."""
    if optimizer is None:
        return []
    return [
        value
        for value in optimizer.state.get(param, {}).values()
        if isinstance(value, torch.Tensor) and value.shape == param.shape
    ]


@torch.no_grad()
def _draw_new_ranks_(
    lora_a: torch.Tensor, lora_e: torch.Tensor, lora_b: torch.Tensor, plan: ModulePlan
) -> None:
    """Slots ``[n_keep, new_rank)`` of whole, already permuted factors get new ranks: A rows and
    B columns orthonormal and orthogonal to the kept ones, ``E = min(min|E_kept|, 1e-13)``."""
    n_keep, new_rank = plan.n_keep, plan.new_rank
    n_new = new_rank - n_keep
    if n_new <= 0:
        return
    a_new = orthonormal_complement(lora_a[:n_keep].T, n_new, plan.seed).T
    b_new = orthonormal_complement(lora_b[:, :n_keep], n_new, plan.seed ^ 0x5DEECE66D)
    lora_a[n_keep:new_rank] = a_new.to(lora_a.dtype)
    lora_b[:, n_keep:new_rank] = b_new.to(lora_b.dtype)
    # min(min|E_m|, 1e-13): a device scalar, no host round trip.
    small = torch.full((), NEW_RANK_E, dtype=lora_e.dtype, device=lora_e.device)
    value = torch.minimum(lora_e[:n_keep].abs().min(), small) if n_keep > 0 else small
    lora_e[n_keep:new_rank] = value


@torch.no_grad()
def _apply_sharded_(
    module: SVDLinear, optimizer: torch.optim.Optimizer | None, plan: ModulePlan
) -> None:
    """One module's decision on ``DTensor`` parameters: each factor gathered whole, the plan
    applied as for whole tensors, every process's block written back (a collective)."""
    perm, n_keep, new_rank = plan.perm, plan.n_keep, plan.new_rank
    params = [getattr(module, name) for name, _ in RANK_AXES]
    index = torch.tensor(perm, dtype=torch.long)
    if _is_identity(index) and new_rank == n_keep:  # nothing moves: no gathering
        for param, (_, dim) in zip(params, RANK_AXES, strict=True):
            for value in _moments(optimizer, param):
                _zero_from_(value, dim, n_keep)
        _zero_from_(module.lora_E, 0, new_rank)
        if new_rank != module.active_rank:
            set_rank_(module, new_rank)
        return
    whole = []
    for param, (_, dim) in zip(params, RANK_AXES, strict=True):
        whole.append(full(param.detach()).index_select(dim, index.to(param.device)))
        for value in _moments(optimizer, param):
            permute_(value, index, dim, n_keep)
    lora_a, lora_e, lora_b = whole
    _draw_new_ranks_(lora_a, lora_e, lora_b, plan)
    lora_e[new_rank:] = 0.0
    for param, value in zip(params, whole, strict=True):
        assign_(param, value)
    set_rank_(module, new_rank)


def set_rank_(module: SVDLinear, rank: int) -> None:
    """``module.set_active_rank(rank)``, also for a ``DTensor`` ``lora_E``: slicing a sharded
    tensor in place writes nothing, so its slots ``≥ rank`` are zeroed through the whole value
    (a collective) before the rank is set."""
    if is_sharded(module.lora_E):
        check("set_rank_", "rank", rank, Integer(0, module.capacity))
        with torch.no_grad():
            whole = full(module.lora_E.detach()).clone()
            whole[rank:] = 0.0
            assign_(module.lora_E, whole)
    module.set_active_rank(rank)
