"""Benchmark of the ID engine against scikit-dimension 0.5 and numpy's sgemm, in one run.

    python benches/bench_id.py            # N = 10k and 50k, D = 768 (skdim at 50k: minutes)
    python benches/bench_id.py --quick    # N = 2k and 10k
    python benches/bench_id.py --memory   # also peak memory of TwoNN at N = 100k (sampled RSS)

Data: Gaussian of intrinsic dimension 10 linearly embedded in D = 768, float32. For each N
the runs are interleaved (ours, scikit-dimension, numpy sgemm, repeat) so that load on a
shared machine hits both sides alike; medians are printed. numpy's rate is that of
``A @ A.T`` on a 4096×768 float32 block; our kNN "effective" rate counts the 2·N²·D flops of
the full distance matrix (we compute half of it, by symmetry).
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
import warnings
from collections.abc import Callable

import numpy as np

from lorax_core import id as lid

D = 768


def embedded(n: int, d: int = 10, seed: int = 0) -> np.ndarray:
    """``(n, D)`` float32 points of intrinsic dimension ``d``."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((d, D)).astype(np.float32)
    return rng.standard_normal((n, d)).astype(np.float32) @ w


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def sgemm_gflops() -> float:
    """numpy float32 GEMM rate (GFLOP/s) on ``A @ A.T``, A = 4096×768."""
    a = np.random.default_rng(1).standard_normal((4096, D)).astype(np.float32)
    a @ a.T  # warm-up
    return 2 * 4096**2 * D / timed(lambda: a @ a.T) / 1e9


def skdim_twonn(X: np.ndarray) -> float:
    import skdim

    return float(skdim.id.TwoNN().fit(X).dimension_)


def skdim_mle(X: np.ndarray) -> float:
    import skdim

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(skdim.id.MLE().fit(X, comb="mle").dimension_)


def bench_size(n: int, reps: int, peer_reps: int) -> dict[str, float]:
    X = embedded(n)
    runs: dict[str, list[float]] = {
        k: [] for k in ("knn", "twonn", "mle", "sk_tw", "sk_mle", "gemm")
    }
    for r in range(reps):
        runs["knn"].append(timed(lambda: lid.nearest_neighbors(X, 2)))
        runs["twonn"].append(timed(lambda: lid.twonn(X)))
        runs["mle"].append(timed(lambda: lid.mle(X)))
        if r < peer_reps:
            runs["sk_tw"].append(timed(lambda: skdim_twonn(X)))
            runs["sk_mle"].append(timed(lambda: skdim_mle(X)))
        runs["gemm"].append(sgemm_gflops())
    med = {k: statistics.median(v) for k, v in runs.items()}
    return med


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_memory(n: int) -> None:
    """Runs TwoNN on ``n × D`` float32; prints the peak RSS above the input (sampled, 10 ms)."""
    X = embedded(n)
    base = _rss_mib()
    peak, done = [base], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    t0 = time.perf_counter()
    dim = lid.twonn(X)  # the GIL is released, so the sampler keeps running
    dt = time.perf_counter() - t0
    done.set()
    sampler.join()
    print(
        f"\nN={n}, D={D} float32 TwoNN: {dim:.4f} in {dt:.1f} s; input "
        f"{X.nbytes / 2**20:.0f} MiB, peak RSS above it {peak[0] - base:.0f} MiB"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="N = 2k and 10k")
    p.add_argument("--sizes", type=int, nargs="*", help="override the sizes")
    p.add_argument("--reps", type=int, default=3, help="repetitions of our runs")
    p.add_argument("--memory", action="store_true", help="peak memory at N = 100k")
    args = p.parse_args()
    sizes = args.sizes or ([2_000, 10_000] if args.quick else [10_000, 50_000])
    print(f"threads: RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', 'all')}, D={D}")
    print(
        "| N | kNN s | eff. GFLOP/s | numpy sgemm GFLOP/s | kNN / sgemm | TwoNN s | skdim TwoNN s "
        "| speed-up | MLE s | skdim MLE s | speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for n in sizes:
        m = bench_size(n, args.reps, 1 if n > 20_000 else args.reps)
        eff = 2 * n * n * D / m["knn"] / 1e9
        print(
            f"| {n} | {m['knn']:.2f} | {eff:.0f} | {m['gemm']:.0f} | {eff / m['gemm']:.2f}x "
            f"| {m['twonn']:.2f} | {m['sk_tw']:.2f} | {m['sk_tw'] / m['twonn']:.1f}x "
            f"| {m['mle']:.2f} | {m['sk_mle']:.2f} | {m['sk_mle'] / m['mle']:.1f}x |",
            flush=True,
        )
    if args.memory:
        peak_memory(100_000)


if __name__ == "__main__":
    main()
