"""Exact kNN and TwoNN/MLE on the GPU (docs/kernels.md): N ∈ {50 000, 1 000 000}, D = 768.

The points are a Gaussian of intrinsic dimension 20 embedded in 768 dimensions, drawn on the GPU.
Each size reports the kNN time (k = 20, the MLE default) and the TwoNN estimate's; at 50 000
points the neighbours and both estimates are also compared with the CPU engine (same
neighbours, IDs within 1e-9 relative). Target on an H100/H200: N = 1M in ≤ 30 s. Without a GPU
the script says so and exits 0.

Usage: ``python benches/bench_knn_gpu.py [--sizes 50000,1000000] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np
import torch

from bench_kernels import report
from harness import cuda_sync, timed
from lorax_core import _core
from lorax_core import id as lid
from lorax_core.kernels import knn as gknn

D, INTRINSIC, K = 768, 20, 20
CHECK_ON_CPU_UP_TO = 50_000


def points(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` float32 points (n, 768) of a 20-dimensional Gaussian under a random linear map."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    z = torch.randn(n, INTRINSIC, generator=g, device="cuda")
    basis = torch.linalg.qr(torch.randn(D, INTRINSIC, generator=g, device="cuda")).Q
    return z @ basis.t()


def bench(n: int) -> dict[str, Any]:
    x = points(n)
    sync = cuda_sync("cuda")
    knn_run = timed(lambda: gknn.knn(x, K), sync)
    twonn = lid.TwoNN(device="cuda")
    fit_run = timed(lambda: twonn.fit(x).dimension_, sync)
    row: dict[str, Any] = {
        "bench": "exact kNN + ID (GPU)",
        "case": f"N={n}, D={D}, k={K}",
        "kNN s": knn_run.wall,
        "TwoNN fit s": fit_run.wall,
        "TwoNN": fit_run.result,
        "target s": 30.0 if n >= 1_000_000 else "",
    }
    if n <= CHECK_ON_CPU_UP_TO:
        host = x.cpu().numpy()
        cpu_run = timed(lambda: _core.knn(host, K))
        _, ind = knn_run.result
        row["CPU kNN s"] = cpu_run.wall
        row["same neighbours"] = bool(np.array_equal(ind.cpu().numpy(), cpu_run.result.indices))
        mle_gpu = lid.MLE(device="cuda").fit(x).dimension_
        mle_cpu = lid.MLE().fit(host).dimension_
        twonn_cpu = lid.TwoNN().fit(host).dimension_
        row["max ID rel. diff"] = max(
            abs(fit_run.result - twonn_cpu) / twonn_cpu, abs(mle_gpu - mle_cpu) / mle_cpu
        )
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50000,1000000")
    parser.add_argument("--json", help="write the rows to this JSON file")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_knn_gpu: no CUDA device; skipped")
        return 0
    print(f"bench_knn_gpu: {torch.cuda.get_device_name()}")
    rows = [bench(int(n)) for n in args.sizes.split(",")]
    report(rows, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
