"""Benchmark of the ID engine against scikit-dimension 0.5 and numpy's sgemm, in one run.

    python benches/bench_id.py            # N = 10k and 50k, D = 768 (skdim at 50k: minutes)
    python benches/bench_id.py --quick    # N = 2k and 10k
    python benches/bench_id.py --memory   # also peak memory of TwoNN at N = 100k (sampled RSS)

Data: Gaussian of intrinsic dimension 10 linearly embedded in D = 768, float32
(``lorax_core.synthetic.embedded_gaussian``). For each N the runs are interleaved (ours,
scikit-dimension, numpy sgemm, each once per round, order rotated; ``benches/harness.py``) so
that load on a shared machine hits both sides alike; medians are printed. numpy's rate is that of
``A @ A.T`` on a 4096×768 float32 block; our kNN "effective" rate counts the 2·N²·D flops of
the full distance matrix (we compute half of it, by symmetry).
"""

from __future__ import annotations

import argparse
import os
import warnings

import numpy as np

from harness import PeakRSS, fraction_of_limit, interleaved, numpy_sgemm_gflops, timed
from lorax_core import id as lid
from lorax_core.synthetic import embedded_gaussian

D = 768


def embedded(n: int, d: int = 10, seed: int = 0) -> np.ndarray:
    """``(n, D)`` float32 points of intrinsic dimension ``d``."""
    return embedded_gaussian(n, d, D, seed=seed, dtype=np.float32)


def skdim_twonn(X: np.ndarray) -> float:
    import skdim

    return float(skdim.id.TwoNN().fit(X).dimension_)


def skdim_mle(X: np.ndarray) -> float:
    import skdim

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(skdim.id.MLE().fit(X, comb="mle").dimension_)


def bench_size(n: int, reps: int, peer_reps: int) -> dict[str, float]:
    """Median seconds of every contender at ``N = n`` (``gemm``: numpy's GFLOP/s instead)."""
    X = embedded(n)
    gemm: list[float] = []
    contenders = {
        "knn": lambda: lid.nearest_neighbors(X, 2),
        "twonn": lambda: lid.twonn(X),
        "mle": lambda: lid.mle(X),
        "sk_tw": lambda: skdim_twonn(X),
        "sk_mle": lambda: skdim_mle(X),
        "gemm": lambda: gemm.append(numpy_sgemm_gflops(4096, D, repeats=1)),
    }
    limits = {"sk_tw": peer_reps, "sk_mle": peer_reps}
    samples = interleaved(contenders, reps, warmup=0, limits=limits)
    med = {name: s.median() for name, s in samples.items()}
    med["gemm"] = float(np.median(gemm))
    return med


def peak_memory(n: int) -> None:
    """Runs TwoNN on ``n × D`` float32; prints the peak RSS above the input (sampled, 10 ms)."""
    X = embedded(n)
    with PeakRSS() as rss:
        run = timed(lambda: lid.twonn(X))  # the GIL is released, so the sampler keeps running
    print(
        f"\nN={n}, D={D} float32 TwoNN: {run.result:.4f} in {run.wall:.1f} s; input "
        f"{X.nbytes / 2**20:.0f} MiB, peak RSS above it {rss.above:.0f} MiB"
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
    limits = []
    for n in sizes:
        m = bench_size(n, args.reps, 1 if n > 20_000 else args.reps)
        eff = 2 * n * n * D / m["knn"] / 1e9
        rate = fraction_of_limit(eff, m["gemm"], "GFLOP/s", "numpy sgemm")
        limits.append(f"kNN at N={n}: {rate}")
        print(
            f"| {n} | {m['knn']:.2f} | {eff:.0f} | {m['gemm']:.0f} | {eff / m['gemm']:.2f}x "
            f"| {m['twonn']:.2f} | {m['sk_tw']:.2f} | {m['sk_tw'] / m['twonn']:.1f}x "
            f"| {m['mle']:.2f} | {m['sk_mle']:.2f} | {m['sk_mle'] / m['mle']:.1f}x |",
            flush=True,
        )
    print("\n".join(limits))
    if args.memory:
        peak_memory(100_000)


if __name__ == "__main__":
    main()
