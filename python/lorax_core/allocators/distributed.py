"""The allocators under torch.distributed: one decision for all processes (docs/distributed.md).

Replicas (DDP): rank 0 decides and :func:`broadcast_text` sends the decision. Shards (FSDP2):
:func:`gathered_rank_scores` assembles the per-rank scores from every process's shards with one
all-reduce, so that rank 0 decides on the scores of the whole model. The generic helpers
(gathering, writing shards, entering a collective together) live in ``lorax_core._distributed``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from lorax_core._distributed import _device, broadcast_text, is_distributed, is_leader, is_sharded
from lorax_core._distributed import local_slices as _local_slices

__all__ = ["broadcast_text", "gathered_rank_scores", "is_distributed", "is_leader"]


# -- allocators ------------------------------------------------------------------------------------
def _owns(tensor: torch.Tensor) -> bool:
    """Whether this process's copy of ``tensor`` is the one counted in a cross-process sum: a
    whole tensor on rank 0; a ``DTensor``'s shard where every replicated mesh axis is at 0."""
    if not is_sharded(tensor):
        return dist.get_rank() == 0
    coordinate = tensor.device_mesh.get_coordinate()  # type: ignore[attr-defined]
    return all(
        coordinate[axis] == 0
        for axis, placement in enumerate(tensor.placements)  # type: ignore[attr-defined]
        if placement.is_replicate()
    )


def _local(tensor: torch.Tensor) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """``(local block, its index in the whole tensor)``."""
    if is_sharded(tensor):
        return tensor.to_local(), _local_slices(tensor)  # type: ignore[attr-defined]
    return tensor, tuple(slice(0, n) for n in tensor.shape)


@torch.no_grad()
def gathered_rank_scores(
    ipt: dict[str, list[torch.Tensor]],
    unc: dict[str, list[torch.Tensor]],
    ranks: dict[str, int],
) -> list[list[float]]:
    """Per-rank scores ``S = s(E) + mean_j s(A_ij) + mean_j s(B_ji)`` of every module over its
    active slots, from sharded EMAs, identical on every process (a collective: one all-reduce).

    ``ipt[name]`` / ``unc[name]`` are the EMAs of ``(lora_A (cap, in), lora_E (cap,),
    lora_B (out, cap))``, ``DTensor`` s or whole tensors; ``ranks[name]`` the active rank. Each
    process sums over the elements of its own blocks (in float64); the sums of all processes
    add up to the whole means. Returned as float64 host lists, in ``ranks`` order.
    """
    device = _device()
    parts = []
    for name, rank in ranks.items():
        (ia, ie, ib), (ua, ue, ub) = ipt[name], unc[name]
        capacity, width = ia.shape
        height = ib.shape[0]
        total = torch.zeros(capacity, dtype=torch.float64, device=device)
        for i_t, u_t, rows_axis in ((ia, ua, 0), (ie, ue, 0), (ib, ub, 1)):
            if not _owns(i_t):
                continue
            local_i, index = _local(i_t)
            local_u, _ = _local(u_t)
            product = local_i.to(torch.float64) * local_u.to(torch.float64)
            if product.ndim == 2 and rows_axis == 0:  # A: mean over the input axis
                total[index[0]] += (product.sum(dim=1) / width).to(device)
            elif product.ndim == 2:  # B: mean over the output axis
                total[index[1]] += (product.sum(dim=0) / height).to(device)
            else:  # E
                total[index[0]] += product.to(device)
        parts.append(total[:rank])
    if not parts:
        return []
    flat = torch.cat(parts)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    values = flat.cpu().tolist()
    out, start = [], 0
    for part in parts:
        out.append(values[start : start + part.numel()])
        start += part.numel()
    return out
