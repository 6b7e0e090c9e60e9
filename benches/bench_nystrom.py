"""Nyström sketch vs PiSSA's SVDs: wall time and relative error ‖W − BNA‖_F / ‖W‖_F.

Matrices (float32): 4096×4096 and 4096×11008 with singular values (i) i^-1, (ii) i^-0.5
(dense, exact spectrum, from ``lorax_core.synthetic.known_spectrum``), and (iii) the largest
weight of a real pretrained model shipped on PyPI — all-MiniLM-L6-v2's FFN
``intermediate.dense`` (1536×384). Methods at r ∈ {8, 64}: ``lorax_core.init.nystrom``
(defaults: oversample 10, one power step), ``torch.svd_lowrank(q=r, niter=4)`` (PEFT's fast
PiSSA path), full ``torch.linalg.svd`` (PiSSA), and the optimal rank-r error (Eckart–Young).
Times are medians of ``--repeats`` runs after one warm-up (``benches/harness.py``); full SVD
runs once per matrix shape (it takes tens of seconds) and its error is the optimum. All methods
use the same number of threads (``--threads``).

    python benches/bench_nystrom.py                 # the full table
    python benches/bench_nystrom.py --quick         # 1024×2048 smoke run
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import numpy as np
import torch
from safetensors.torch import load_file

from harness import repeat, timed
from lorax_core.datasets import minilm_path
from lorax_core.init import nystrom
from lorax_core.synthetic import decaying_spectrum, known_spectrum


def known_spectrum_case(m: int, n: int, decay: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W, s)``: a dense float32 ``(m, n)`` matrix whose singular values are exactly
    ``s_i = i^-decay`` (``lorax_core.synthetic.known_spectrum``), and ``s`` (float64).

    Both methods sketch with Gaussian test matrices, whose law is invariant under orthogonal
    maps, so their error distribution depends only on ``s``.
    """
    W = known_spectrum(m, n, decay, seed=0, dtype=np.float32)
    return torch.from_numpy(W), torch.from_numpy(decaying_spectrum(min(m, n), decay))


def optimal_error(s: torch.Tensor, r: int) -> float:
    s = s.double()
    return float(torch.sqrt((s[r:] ** 2).sum() / (s**2).sum()))


def rel_error(W: torch.Tensor, approx: torch.Tensor) -> float:
    return float(torch.linalg.norm(W - approx) / torch.linalg.norm(W))


def median_time(fn: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    """Median wall time of ``fn`` over ``repeats`` runs after a warm-up, and its last result."""
    samples, out = repeat(fn, repeats, warmup=1)
    return samples.median(), out


def ours(W: torch.Tensor, r: int) -> torch.Tensor:
    B, N, A = nystrom(W, r, seed=0)
    return (B @ N) @ A


def svd_lowrank(W: torch.Tensor, r: int) -> torch.Tensor:
    U, S, V = torch.svd_lowrank(W, q=r, niter=4)
    return (U * S) @ V.T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1024×2048 only, no full SVD")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-full-svd", action="store_true")
    parser.add_argument(
        "--shapes", default="4096x4096,4096x11008", help="comma-separated OUTxIN shapes"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))

    shapes = (
        [(1024, 2048)]
        if args.quick
        else [(int(a), int(b)) for a, b in (x.split("x") for x in args.shapes.split(","))]
    )
    cases: list[tuple[str, torch.Tensor, torch.Tensor | None]] = []
    for m, n in shapes:
        for decay in (1.0, 0.5):
            W, s = known_spectrum_case(m, n, decay)
            cases.append((f"{m}×{n} s_i=i^-{decay:g}", W, s))
    weights = load_file(str(minilm_path() / "model.safetensors"))
    real = weights["encoder.layer.0.intermediate.dense.weight"].float().contiguous()
    cases.append((f"MiniLM FFN {real.shape[0]}×{real.shape[1]}", real, None))

    full_time: dict[tuple[int, int], float] = {}
    print(f"threads: torch {torch.get_num_threads()}, rayon {os.environ['RAYON_NUM_THREADS']}")
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    print(
        "| matrix | r | ours s | ours err | svd_lowrank s | svd_lowrank err | full SVD s "
        "| optimal err | ours/opt err | speed-up vs lowrank | speed-up vs full |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for label, W, s in cases:
        shape = (W.shape[0], W.shape[1])
        if s is None or (shape not in full_time and not (args.quick or args.skip_full_svd)):
            run = timed(lambda W=W: torch.linalg.svd(W, full_matrices=False)[1])
            s_full, full_time[shape] = run.result, run.wall
            s = s_full if s is None else s
        assert s is not None
        for r in (8, 64):
            t_ours, approx = median_time(lambda W=W, r=r: ours(W, r), args.repeats)
            e_ours = rel_error(W, approx)
            t_low, approx = median_time(lambda W=W, r=r: svd_lowrank(W, r), args.repeats)
            e_low = rel_error(W, approx)
            opt = optimal_error(s, r)
            t_full = full_time.get(shape, float("nan"))
            print(
                f"| {label} | {r} | {t_ours:.3f} | {e_ours:.4f} | {t_low:.3f} | {e_low:.4f} "
                f"| {t_full:.2f} | {opt:.4f} | {e_ours / opt:.3f} | {t_low / t_ours:.1f}× "
                f"| {t_full / t_ours:.0f}× |",
                flush=True,
            )
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
