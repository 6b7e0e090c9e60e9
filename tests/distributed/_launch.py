"""Real multi-process runs on CPU (gloo): start ``world`` processes on one function, under a
timeout, with every collective under a timeout too, and report a worker's traceback on failure."""

from __future__ import annotations

import gc
import multiprocessing
import os
import socket
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

# Every collective fails after this many seconds instead of hanging.
COLLECTIVE_TIMEOUT_S = 30
# lorax_core's own "every process entered" checks (enter_collective, leader_only).
ENTER_TIMEOUT_S = 8


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(
    function: Callable[..., None],
    rank: int,
    world: int,
    port: int,
    out: str,
    args: tuple[Any, ...],
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        LORAX_COLLECTIVE_TIMEOUT=str(ENTER_TIMEOUT_S),
    )
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", rank=rank, world_size=world, timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S)
    )
    try:
        function(rank, world, Path(out), *args)
    except BaseException:
        Path(out, f"error-rank{rank}.txt").write_text(traceback.format_exc(), encoding="utf-8")
        raise
    finally:
        # FSDP2's state and the modules it wraps form reference cycles that hold the process
        # group; freed at interpreter exit instead, gloo's teardown can abort the process.
        gc.collect()
        dist.destroy_process_group()


def spawn(
    function: Callable[..., None],
    world: int,
    out: Path,
    *args: Any,
    timeout: float = 150.0,
) -> None:
    """Run ``function(rank, world, out, *args)`` in ``world`` fresh processes joined into one
    gloo group; raises ``AssertionError`` (with the workers' tracebacks) if any fails or the
    whole run takes longer than ``timeout`` seconds (then every worker is killed)."""
    out.mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("spawn")
    port = free_port()
    workers = [
        context.Process(target=_entry, args=(function, rank, world, port, str(out), args))
        for rank in range(world)
    ]
    for worker in workers:
        worker.start()
    import time

    deadline = time.monotonic() + timeout
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
    hung = [w for w in workers if w.is_alive()]
    for worker in hung:
        worker.kill()
        worker.join(5)
    errors = "\n".join(p.read_text() for p in sorted(out.glob("error-rank*.txt")))
    if hung:
        raise AssertionError(
            f"{len(hung)} of {world} workers still running after {timeout} s\n{errors}"
        )
    codes = [w.exitcode for w in workers]
    if any(codes):
        raise AssertionError(f"workers exited with {codes}\n{errors}")
