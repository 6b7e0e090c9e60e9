"""torch.distributed support shared by the allocators, saving, export and run checkpoints.

This module imports nothing else of the package, so that every layer of it can use it.

Two settings are handled (docs/distributed.md):

- **replicas** (DDP, or plain processes in a group): every process holds whole parameters; rank 0
  decides and broadcasts (:func:`broadcast_text`), every replica applies the same decision.
- **shards** (FSDP2 ``fully_shard``): parameters are ``DTensor`` s whose local shard is a block
  of rows (``Shard(0)``, chunked as ``torch.chunk``). :func:`full` gathers one tensor on every
  process, :func:`assign_` writes a whole tensor into a parameter's local shard, and
  :func:`full_parameters` swaps a module's sharded parameters for gathered copies while code
  written for whole tensors runs.

Every function here that communicates is a collective: all processes must call it, in the same
order. Entry points that users call (saving, export, checkpoints) first pass
:func:`enter_collective`, which checks through the process group's key-value store, under a
timeout, that every process entered the same operation — so a call made on only some processes
is a clear ``RuntimeError`` on those processes instead of a hang.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

try:
    from torch.distributed.tensor import DTensor as _DTensor
except ImportError:  # pragma: no cover - torch built without distributed
    _DTensor = None  # type: ignore[assignment, misc]

__all__ = [
    "TIMEOUT_ENV",
    "assign_",
    "broadcast_text",
    "collective_timeout",
    "enter_collective",
    "full",
    "full_parameters",
    "is_distributed",
    "is_leader",
    "is_sharded",
    "leader_only",
    "local_slices",
    "unwrap",
]

# Seconds every process waits for the others in enter_collective / leader_only (default 300).
TIMEOUT_ENV = "LORAX_COLLECTIVE_TIMEOUT"
_DEFAULT_TIMEOUT = 300.0
_KEY_PREFIX = "lorax_core/collective"
_sequence = itertools.count()

T = TypeVar("T")


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


# -- models and tensors ---------------------------------------------------------------------------
def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP / DataParallel / ``torch.compile`` wrappers (names without the
    wrapper's ``module.`` / ``_orig_mod.`` prefix); any other module unchanged."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    while True:
        if isinstance(model, wrappers):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod  # type: ignore[assignment]
        else:
            return model


def is_sharded(tensor: object) -> bool:
    """True for a ``DTensor`` (an FSDP2 parameter, its gradient or optimizer moment)."""
    return _DTensor is not None and isinstance(tensor, _DTensor)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: a ``DTensor`` gathered on every process (a collective, differentiable),
    any other tensor as it is."""
    if is_sharded(tensor):
        return tensor.full_tensor()  # type: ignore[attr-defined, no-any-return]
    return tensor


def local_slices(tensor: torch.Tensor) -> tuple[slice, ...]:
    """The index of this process's local shard of a ``DTensor`` within the whole tensor.

    Shard placements split a dimension as ``torch.chunk`` does (FSDP2's layout): chunks of
    ``ceil(n / k)``, the last ones shorter or empty. Replicate placements keep the dimension
    whole. Raises ``ValueError`` for partial placements or a layout that does not match.
    """
    spans = [(0, n) for n in tensor.shape]
    mesh = tensor.device_mesh  # type: ignore[attr-defined]
    coordinate = mesh.get_coordinate()
    for mesh_dim, placement in enumerate(tensor.placements):  # type: ignore[attr-defined]
        if placement.is_replicate():
            continue
        if not placement.is_shard():
            raise ValueError(f"local_slices: placement {placement} is not supported")
        dim = placement.dim
        start, size = spans[dim]
        parts = mesh.size(mesh_dim)
        chunk = math.ceil(size / parts) if size else 0
        first = min(coordinate[mesh_dim] * chunk, size)
        spans[dim] = (start + first, max(0, min(chunk, size - first)))
    local = tensor.to_local()  # type: ignore[attr-defined]
    if tuple(local.shape) != tuple(size for _, size in spans):
        raise ValueError(
            f"local_slices: local shard shape {tuple(local.shape)} does not match the chunked "
            f"layout {[size for _, size in spans]} of a tensor of shape {tuple(tensor.shape)}"
        )
    return tuple(slice(start, start + size) for start, size in spans)


@torch.no_grad()
def assign_(target: torch.Tensor, value: torch.Tensor) -> None:
    """In place: ``target`` (whole or ``DTensor``) takes the values of the whole ``value``.

    For a ``DTensor`` only the local shard is written (from the matching block of ``value``),
    so every process must pass the same ``value``; no communication.
    """
    if is_sharded(value):
        value = value.to_local() if not is_sharded(target) else value
    if is_sharded(target) and not is_sharded(value):
        local = target.to_local()  # type: ignore[attr-defined]
        local.copy_(value[local_slices(target)].to(local.device, local.dtype))
    else:
        target.copy_(value)


@contextlib.contextmanager
def full_parameters(module: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every ``DTensor`` parameter of ``module`` (and its submodules) is
    replaced by a gathered, detached copy, so code written for whole tensors runs unchanged;
    the sharded parameters are put back on exit (changes made to the copies are discarded).

    A collective when ``module`` holds ``DTensor`` parameters (one all-gather each, in
    ``named_parameters`` order); a no-op otherwise.
    """
    swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
    try:
        for owner in module.modules():
            for name, param in list(owner._parameters.items()):
                if param is None or not is_sharded(param):
                    continue
                with torch.no_grad():
                    whole = param.full_tensor()  # type: ignore[attr-defined]
                swapped.append((owner, name, param))
                owner._parameters[name] = nn.Parameter(whole, requires_grad=False)
        yield module
    finally:
        for owner, name, param in reversed(swapped):
            owner._parameters[name] = param


# -- entering a collective together ----------------------------------------------------------------
def collective_timeout() -> float:
    """Seconds a process waits for the others (``LORAX_COLLECTIVE_TIMEOUT``, default 300)."""
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(text) if text else _DEFAULT_TIMEOUT
    except ValueError:
        value = _DEFAULT_TIMEOUT
    return value if value > 0 else _DEFAULT_TIMEOUT


def _store() -> Any:
    return dist.distributed_c10d._get_default_store()


def _wait(store: Any, keys: list[str], timeout: float, what: str) -> None:
    try:
        store.wait(keys, timedelta(seconds=timeout))
    except Exception as err:  # the store raises its own error types on timeout
        missing = [k.rsplit("/", 1)[-1] for k in keys if not store.check([k])]
        raise RuntimeError(
            f"{what}: processes {', '.join(missing) or '?'} did not arrive within {timeout:g} s; "
            "it must be called on every process of the group (collectively)"
        ) from err


def enter_collective(operation: str, timeout: float | None = None) -> None:
    """Every process of the default group must enter the same ``operation`` together.

    Not distributed: returns at once. Otherwise each process posts ``operation`` under its own
    call number in the group's key-value store and waits (at most ``timeout`` seconds, default
    :func:`collective_timeout`) for the others' posts.

    Raises:
        RuntimeError: a process did not arrive in time (the call was made on only some
            processes), or the processes entered different operations.
    """
    if not is_distributed():
        return
    timeout = collective_timeout() if timeout is None else float(timeout)
    number = next(_sequence)
    store, rank, world = _store(), dist.get_rank(), dist.get_world_size()
    keys = [f"{_KEY_PREFIX}/{number}/{r}" for r in range(world)]
    store.set(keys[rank], operation)
    _wait(store, keys, timeout, operation)
    entered = {store.get(key).decode("utf-8") for key in keys}
    if entered != {operation}:
        raise RuntimeError(
            f"{operation}: the processes entered different operations together "
            f"({', '.join(sorted(entered))}); every process must make the same calls in the "
            "same order"
        )


def leader_only(operation: str, action: Callable[[], T], timeout: float | None = None) -> T | None:
    """Runs ``action`` on rank 0 only (e.g. writing a file) and makes every process wait for it.

    Returns ``action()``'s result on rank 0 and ``None`` elsewhere. If ``action`` raises on
    rank 0, the other processes raise a ``RuntimeError`` with its message, so no process goes
    on as if the write had happened. Not distributed: ``action()``.
    """
    if not is_distributed():
        return action()
    timeout = collective_timeout() if timeout is None else float(timeout)
    number = next(_sequence)
    store = _store()
    key = f"{_KEY_PREFIX}/{number}/done"
    if dist.get_rank() == 0:
        try:
            result = action()
        except BaseException as err:
            store.set(key, f"error: {type(err).__name__}: {err}")
            raise
        store.set(key, "ok")
        return result
    _wait(store, [key], timeout, f"{operation} (waiting for rank 0)")
    outcome = store.get(key).decode("utf-8")
    if outcome != "ok":
        raise RuntimeError(f"{operation}: failed on rank 0 ({outcome.removeprefix('error: ')})")
    return None
