"""Nyström sketch vs PiSSA's SVDs: wall time and relative error ‖W − BNA‖_F / ‖W‖_F.

Matrices (float32): 4096×4096 and 4096×11008 with singular values (i) i^-1, (ii) i^-0.5
(dense, exact spectrum, from ``lorax_core.synthetic.known_spectrum``), and (iii) the largest
weight of a real pretrained model shipped on PyPI — all-MiniLM-L6-v2's FFN
``intermediate.dense`` (1536×384). Methods at each rank of ``--ranks``: ``lorax_core.init.nystrom``
(defaults: oversample 10, one power step), ``torch.svd_lowrank(q=r, niter=4)`` (PEFT's fast
PiSSA path), and the optimal rank-r error (Eckart–Young; from the known spectrum, or a full
``torch.linalg.svd`` for the real weight). ``--full-svd`` also times the full SVD (PiSSA).

Timing (``benches/harness.py``): ours and ``svd_lowrank`` are interleaved round by round and
each round times only the factorisation (what an initialiser computes before the residual
update, which costs both methods the same rank-r GEMM; it is timed once and reported apart).
Each row prints the speed-up as the median of per-round ratios, and both methods' effective
rates (the flops of their GEMM passes, ``2·m·n·k`` each) as a fraction of the machine's float32
GEMM rate, measured with a large numpy sgemm in the same run. All methods use the same number
of threads (``--threads``).

    python benches/bench_nystrom.py                 # the table at r = 8 and 64
    python benches/bench_nystrom.py --quick         # 1024×2048 smoke run
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from safetensors.torch import load_file

from harness import fraction_of_limit, interleaved, numpy_sgemm_gflops, quartiles, timed
from lorax_core.datasets import minilm_path
from lorax_core.init import nystrom
from lorax_core.synthetic import decaying_spectrum, known_spectrum

OVERSAMPLE, POWER_ITERS, NITER = 10, 1, 4  # the defaults of both methods


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


def pass_flops(m: int, n: int, r: int) -> tuple[float, float]:
    """GEMM flops of (ours, svd_lowrank): ``2·m·n·k`` per pass over ``W`` with ``k``
    columns; ours makes ``2q`` passes with ``k = r + oversample`` and one with ``r``,
    ``svd_lowrank`` ``2·niter + 2`` with ``k = r``."""
    k = min(r + OVERSAMPLE, m, n)
    return 2.0 * m * n * (2 * POWER_ITERS * k + r), 2.0 * m * n * r * (2 * NITER + 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1024×2048 only")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--full-svd", action="store_true", help="also time torch.linalg.svd")
    parser.add_argument("--ranks", default="8,64", help="comma-separated ranks")
    parser.add_argument(
        "--shapes", default="4096x4096,4096x11008", help="comma-separated OUTxIN shapes"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))
    ranks = [int(r) for r in args.ranks.split(",")]

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

    peaks = [numpy_sgemm_gflops()]
    print(f"threads: torch {torch.get_num_threads()}, rayon {os.environ['RAYON_NUM_THREADS']}")
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    print(f"numpy sgemm (4096×768 @ 768×4096): {peaks[0]:.0f} GFLOP/s")
    print(
        "| matrix | r | ours s | ours err | svd_lowrank s | svd_lowrank err | optimal err "
        "| ours/opt err | speed-up (IQR) | with residual GEMM | ours rate | svd_lowrank rate "
        "| full SVD s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, W, s in cases:
        m, n = W.shape
        t_full = float("nan")
        if s is None or args.full_svd:
            run = timed(lambda W=W: torch.linalg.svd(W, full_matrices=False)[1])
            t_full = run.wall
            s = run.result if s is None else s
        assert s is not None
        for r in ranks:
            fns = {
                "ours": lambda W=W, r=r: nystrom(W, r, seed=0),
                "svd_lowrank": lambda W=W, r=r: torch.svd_lowrank(W, q=r, niter=NITER),
            }
            samples = interleaved(fns, args.repeats, warmup=1)
            t_ours, t_low = samples["ours"].median(), samples["svd_lowrank"].median()
            pairs = [
                b / a
                for a, b in zip(samples["ours"].wall, samples["svd_lowrank"].wall, strict=True)
            ]
            q1, q2, q3 = quartiles(pairs)
            B, N, A = fns["ours"]()
            residual = timed(lambda B=B, N=N, A=A: (B @ N) @ A)
            e_ours = rel_error(W, residual.result)
            U, S, V = fns["svd_lowrank"]()
            e_low = rel_error(W, (U * S) @ V.T)
            opt = optimal_error(s, r)
            t_res = residual.wall
            f_ours, f_low = pass_flops(m, n, r)
            peak = peaks[0]
            rate_ours = fraction_of_limit(f_ours / t_ours / 1e9, peak, "GFLOP/s", "sgemm")
            rate_low = fraction_of_limit(f_low / t_low / 1e9, peak, "GFLOP/s", "sgemm")
            print(
                f"| {label} | {r} | {t_ours:.3f} | {e_ours:.4f} | {t_low:.3f} | {e_low:.4f} "
                f"| {opt:.4f} | {e_ours / opt:.3f} | {q2:.2f}× ({q1:.2f}–{q3:.2f}) "
                f"| {(t_low + t_res) / (t_ours + t_res):.2f}× | {rate_ours} | {rate_low} "
                f"| {t_full:.2f} |",
                flush=True,
            )
    peaks.append(numpy_sgemm_gflops())
    print(
        f"numpy sgemm at end: {peaks[-1]:.0f} GFLOP/s; load average at end: "
        f"{os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
