"""One decision for all replicas: rank 0 decides, the others receive it (torch.distributed)."""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["broadcast_text", "is_distributed", "is_leader"]


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_leader() -> bool:
    """True on global rank 0, or when not distributed."""
    return not is_distributed() or dist.get_rank() == 0


def _device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_text(text: str | None) -> str:
    """Sends ``text`` from rank 0 to every process and returns it (``text`` is ignored elsewhere).

    Two collectives: the UTF-8 length, then the bytes (as a uint8 tensor).
    """
    device = _device()
    leader = dist.get_rank() == 0
    if leader:
        if text is None:
            raise ValueError("text: rank 0 must provide the text to broadcast")
        payload = torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).to(device)
        size = torch.tensor([payload.numel()], dtype=torch.int64, device=device)
    else:
        size = torch.zeros(1, dtype=torch.int64, device=device)
    dist.broadcast(size, src=0)
    if not leader:
        payload = torch.empty(int(size.item()), dtype=torch.uint8, device=device)
    dist.broadcast(payload, src=0)
    return payload.cpu().numpy().tobytes().decode("utf-8")
