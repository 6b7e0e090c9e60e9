"""The timing harness every benchmark in benches/ shares.

- :func:`timed` runs a callable once and returns its wall and process-CPU seconds (with an
  optional synchronisation, e.g. :func:`cuda_sync`, before and after, so asynchronous GPU
  work is counted);
- :func:`repeat` times one callable several times after a warm-up;
- :func:`interleaved` times several callables in rounds, each round running every one of
  them once in an order rotated per round, so that load on a shared machine hits all alike;
- :class:`Samples` holds the times and gives the median and quartiles;
- :func:`ratio_summary` compares two interleaved sample sets: the ratio of medians and the
  median (with quartiles) of the per-round ratios, which cancels slow drifts in machine load;
- :func:`fraction_of_limit` says how close a measured rate comes to a reference rate of the
  machine, e.g. :func:`numpy_sgemm_gflops`;
- :class:`PeakRSS` samples the process's resident memory in a thread while a block runs.

CPU time sums over threads and excludes time spent waiting for a core, so on a loaded machine
it is the steadier of the two clocks for single-threaded work; wall time is what a user waits.
Benchmarks import this module by name (``from harness import ...``): Python puts the script's
folder on ``sys.path`` when running ``python benches/bench_<x>.py``.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

__all__ = [
    "PeakRSS",
    "Samples",
    "Timing",
    "cuda_sync",
    "fraction_of_limit",
    "interleaved",
    "numpy_sgemm_gflops",
    "quartiles",
    "ratio_summary",
    "repeat",
    "rss_mib",
    "timed",
]

Sync = Callable[[], None] | None


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """``(q1, median, q3)`` of ``values`` (statistics' exclusive method); a single value is
    returned three times. Raises ``ValueError`` on an empty list."""
    if not values:
        raise ValueError("quartiles: values must be non-empty, got []")
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4)
    return q1, q2, q3


@dataclass
class Samples:
    """Wall-clock and process-CPU seconds of repeated runs of one callable."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def add(self, timing: Timing) -> None:
        """Appends one run's times."""
        self.wall.append(timing.wall)
        self.cpu.append(timing.cpu)

    def median(self, clock: str = "wall") -> float:
        """Median seconds of ``clock`` (``"wall"`` or ``"cpu"``); NaN when nothing was timed."""
        values = self.values(clock)
        return statistics.median(values) if values else float("nan")

    def quartiles(self, clock: str = "wall") -> tuple[float, float, float]:
        """``(q1, median, q3)`` seconds of ``clock``."""
        return quartiles(self.values(clock))

    def values(self, clock: str = "wall") -> list[float]:
        """The seconds of ``clock`` (``"wall"`` or ``"cpu"``), in the order they were taken."""
        if clock not in ("wall", "cpu"):
            raise ValueError(f"Samples: clock must be 'wall' or 'cpu', got {clock!r}")
        return self.wall if clock == "wall" else self.cpu


@dataclass(frozen=True)
class Timing:
    """One run: wall and process-CPU seconds, and the callable's return value."""

    wall: float
    cpu: float
    result: Any = None


def cuda_sync(device: Any) -> Sync:
    """A callable that waits for ``device``'s queued CUDA work, or ``None`` for other devices."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None
    return lambda: torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], sync: Sync = None) -> Timing:
    """Runs ``fn()`` once; ``sync()`` (if given) runs before starting and before stopping."""
    if sync is not None:
        sync()
    start, start_cpu = time.perf_counter(), time.process_time()
    result = fn()
    if sync is not None:
        sync()
    return Timing(time.perf_counter() - start, time.process_time() - start_cpu, result)


def repeat(
    fn: Callable[[], Any], repeats: int, warmup: int = 1, sync: Sync = None
) -> tuple[Samples, Any]:
    """Times ``repeats`` runs of ``fn`` after ``warmup`` untimed ones.

    Returns the samples and the last run's return value.
    """
    result = None
    for _ in range(warmup):
        result = fn()
    samples = Samples()
    for _ in range(repeats):
        timing = timed(fn, sync)
        samples.add(timing)
        result = timing.result
    return samples, result


def interleaved(
    fns: Mapping[str, Callable[[], Any]],
    rounds: int,
    warmup: int = 1,
    sync: Sync = None,
    limits: Mapping[str, int] | None = None,
) -> dict[str, Samples]:
    """Times every callable of ``fns`` once per round, over ``rounds`` rounds.

    Round ``i`` runs them in the order of ``fns`` rotated by ``i``, so each one is measured
    seconds apart from its peers and no callable always runs first or after the same
    neighbour. ``warmup`` untimed runs of each precede the rounds. ``limits`` caps the rounds
    of slow peers (name → most rounds they take part in).
    """
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    samples = {name: Samples() for name in names}
    caps = dict(limits or {})
    for i in range(rounds):
        shift = i % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            if i < caps.get(name, rounds):
                samples[name].add(timed(fns[name], sync))
    return samples


def ratio_summary(ours: Samples, peer: Samples, clock: str = "wall") -> str:
    """``ours/peer`` as the ratio of medians and the median of per-round ratios with its
    inter-quartile range (pairs taken round by round, as :func:`interleaved` measured them)."""
    a, b = ours.values(clock), peer.values(clock)
    text = f"{clock} {statistics.median(a) / statistics.median(b):.3f} (ratio of medians)"
    pairs = [x / y for x, y in zip(a, b, strict=False) if y > 0]
    if pairs:
        q1, q2, q3 = quartiles(pairs)
        text += f", {q2:.3f} (median of per-round ratios, IQR {q1:.3f}-{q3:.3f})"
    return text


def fraction_of_limit(achieved: float, limit: float, unit: str, name: str) -> str:
    """``"<achieved> <unit> = <achieved/limit>x <name> (<limit> <unit>)"``: how close a measured
    rate comes to a reference rate of the same machine."""
    return f"{achieved:.0f} {unit} = {achieved / limit:.2f}x {name} ({limit:.0f} {unit})"


def numpy_sgemm_gflops(m: int = 4096, k: int = 768, repeats: int = 3) -> float:
    """The machine's float32 GEMM rate through numpy/BLAS: median GFLOP/s of ``A @ A.T`` for a
    seeded ``(m, k)`` float32 ``A``, after one warm-up."""
    import numpy as np

    a = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    samples, _ = repeat(lambda: a @ a.T, repeats, warmup=1)
    return 2 * m * m * k / samples.median() / 1e9


def copy_bandwidth_gbs(mib: int = 256, repeats: int = 5) -> float:
    """The machine's memory bandwidth as one ``numpy.copyto`` sees it: median GB/s (bytes read
    plus bytes written) copying a ``mib`` MiB float32 array, after one warm-up."""
    import numpy as np

    src = np.random.default_rng(2).standard_normal(mib * 2**18).astype(np.float32)
    dst = np.empty_like(src)
    samples, _ = repeat(lambda: np.copyto(dst, src), repeats, warmup=1)
    return 2 * src.nbytes / samples.median() / 1e9


def rss_mib() -> float:
    """Resident memory of this process in MiB (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """Samples :func:`rss_mib` every ``interval`` seconds in a thread while the block runs.

    ``base`` is the RSS on entry, ``peak`` the largest sample, ``above`` their difference (MiB).
    Only work that releases the GIL (numpy, torch, the Rust core) lets the sampler run during it.
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.base = self.peak = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, rss_mib())
            time.sleep(self.interval)

    @property
    def above(self) -> float:
        """Peak RSS above the RSS on entry, MiB."""
        return self.peak - self.base

    def __enter__(self) -> PeakRSS:
        self.base = self.peak = rss_mib()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mib())
