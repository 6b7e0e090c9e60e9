"""The Rust Nyström sketch (``lorax_core.init.nystrom`` / ``_core.nystrom``) against SVD."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.numpy import load_file

from lorax_core import _core
from lorax_core.init import nystrom


def known_spectrum(m: int, n: int, decay: float, seed: int, dtype: type = np.float64) -> np.ndarray:
    """``U diag(i^-decay) Vᵀ`` with orthonormal U (m×k), V (n×k) from seeded Gaussian QR."""
    rng = np.random.default_rng(seed)
    k = min(m, n)
    U, _ = np.linalg.qr(rng.standard_normal((m, k)))
    V, _ = np.linalg.qr(rng.standard_normal((n, k)))
    s = np.arange(1.0, k + 1) ** -decay
    return ((U * s) @ V.T).astype(dtype)


def optimal_error(W: np.ndarray, r: int) -> float:
    """Relative Frobenius error of the best rank-r approximation (Eckart–Young)."""
    s = np.linalg.svd(W.astype(np.float64), compute_uv=False)
    return float(np.sqrt((s[r:] ** 2).sum() / (s**2).sum()))


def sketch_error(W: np.ndarray, factors: tuple) -> float:
    B, N, A = (np.asarray(f, dtype=np.float64) for f in factors)
    W64 = W.astype(np.float64)
    return float(np.linalg.norm(W64 - B @ N @ A) / np.linalg.norm(W64))


@given(
    m=st.integers(4, 96),
    n=st.integers(4, 96),
    r_frac=st.floats(0.0, 1.0),
    decay=st.sampled_from([0.5, 1.0, 2.0]),
    seed=st.integers(0, 2**32),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_error_within_factor_of_svd_optimum(
    m: int, n: int, r_frac: float, decay: float, seed: int, dtype: type
) -> None:
    r = 1 + int(r_frac * (min(m, n) - 1))
    W = known_spectrum(m, n, decay, seed % 1000, dtype)
    factors = _core.nystrom(W, r, seed=seed)
    assert [f.shape for f in factors] == [(m, r), (r, r), (r, n)]
    assert all(f.dtype == dtype for f in factors)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    assert sketch_error(W, factors) <= 1.5 * optimal_error(W, r) + tol


@pytest.mark.parametrize("r", [8, 40])
def test_near_optimal_with_one_power_step_on_slow_decay(r: int) -> None:
    W = known_spectrum(400, 300, 0.5, seed=1, dtype=np.float32)
    ratio = sketch_error(W, _core.nystrom(W, r)) / optimal_error(W, r)
    assert ratio < 1.15
    # without the power step the two-pass sketch is measurably worse (the reason for the default)
    two_pass = sketch_error(W, _core.nystrom(W, r, power_iters=0)) / optimal_error(W, r)
    assert two_pass > ratio


def test_real_pretrained_weight_is_near_optimal_and_stable(minilm_dir: Path) -> None:
    """MiniLM's largest weight (1536×384 FFN): error near the SVD optimum, never above ‖W‖."""
    W = load_file(str(minilm_dir / "model.safetensors"))[
        "encoder.layer.0.intermediate.dense.weight"
    ]
    assert W.shape == (1536, 384)
    for r in (8, 64):
        err = sketch_error(W, _core.nystrom(W, r, seed=3))
        assert err <= 1.25 * optimal_error(W, r)
        assert err < 1.0


def test_exact_on_low_rank_matrices() -> None:
    rng = np.random.default_rng(0)
    W = rng.standard_normal((70, 5)) @ rng.standard_normal((5, 50))
    for q in (0, 1, 2):
        assert sketch_error(W, _core.nystrom(W, 5, power_iters=q)) < 1e-10


def test_deterministic_for_a_seed_and_layout_independent() -> None:
    W = known_spectrum(64, 48, 1.0, seed=2, dtype=np.float32)
    first = _core.nystrom(W, 6, seed=11)
    again = _core.nystrom(W, 6, seed=11)
    other = _core.nystrom(W, 6, seed=12)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])
    fortran = _core.nystrom(np.asfortranarray(W), 6, seed=11)
    B, N, A = (f.astype(np.float64) for f in first)
    Bf, Nf, Af = (f.astype(np.float64) for f in fortran)
    np.testing.assert_allclose(B @ N @ A, Bf @ Nf @ Af, atol=1e-5)


def test_torch_wrapper_keeps_dtype_and_accepts_transposed_views() -> None:
    W = torch.from_numpy(known_spectrum(50, 30, 1.0, seed=4))
    B, N, A = nystrom(W, 5, seed=1)
    assert (B.shape, N.shape, A.shape) == ((50, 5), (5, 5), (5, 30))
    assert B.dtype == N.dtype == A.dtype == torch.float64
    # N is the regularised inverse of the truncated core: diagonal, non-negative
    torch.testing.assert_close(N, torch.diag(torch.diagonal(N)))
    assert bool((torch.diagonal(N) >= 0).all())
    Bt, Nt, At = nystrom(W.T, 5, seed=1)  # Fortran-ordered view, no copy
    Bc, Nc, Ac = nystrom(W.T.contiguous(), 5, seed=1)  # the same matrix in C order
    torch.testing.assert_close(Bt @ Nt @ At, Bc @ Nc @ Ac, atol=1e-10, rtol=0)
    half = nystrom(W.to(torch.bfloat16), 5)  # sketched from a float32 copy
    assert all(f.dtype == torch.bfloat16 for f in half)


def test_zero_matrix_gives_finite_zero_factors() -> None:
    B, N, A = _core.nystrom(np.zeros((10, 7), np.float32), 3)
    assert not B.any() and not N.any() and not A.any()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"r": 0}, ValueError, r"r must be in \[1, min\(out, in\)\] = \[1, 8\]"),
        ({"r": 9}, ValueError, r"r must be in \[1, min\(out, in\)\]"),
        ({"r": 2.0}, TypeError, "r must be an int"),
        ({"r": 2, "oversample": -1}, ValueError, "oversample must be >= 0"),
        ({"r": 2, "power_iters": True}, TypeError, "power_iters must be an int"),
        ({"r": 2, "seed": -3}, ValueError, "seed must be"),
    ],
)
def test_bad_arguments_raise_naming_them(kwargs: dict, error: type, match: str) -> None:
    W = torch.randn(12, 8)
    with pytest.raises(error, match=match):
        nystrom(W, **kwargs)


def test_bad_matrices_raise_clear_errors() -> None:
    W = np.random.default_rng(0).standard_normal((9, 6)).astype(np.float32)
    bad = W.copy()
    bad[4, 2] = np.nan
    with pytest.raises(ValueError, match="W contains NaN"):
        nystrom(bad, 2)
    bad[4, 2] = np.inf
    with pytest.raises(ValueError, match="W contains NaN or infinite"):
        _core.nystrom(bad, 2, power_iters=0)
    with pytest.raises(TypeError, match="W must have dtype float32 or float64"):
        nystrom(W.astype(np.int32), 2)
    with pytest.raises(ValueError, match="W must be a non-empty 2-D matrix"):
        nystrom(torch.randn(5), 1)
    with pytest.raises(TypeError, match=r"W must be a torch\.Tensor or numpy\.ndarray"):
        nystrom([[1.0, 2.0]], 1)  # type: ignore[arg-type]
    # the extension validates on its own (it is public too)
    with pytest.raises(TypeError, match="w must have dtype float32 or float64"):
        _core.nystrom(W.astype(np.float16), 2)
    with pytest.raises(TypeError, match="w must be C- or Fortran-contiguous"):
        _core.nystrom(W[::2, ::2], 2)
    with pytest.raises(ValueError, match="rank must be in"):
        _core.nystrom(W, 7)
    with pytest.raises(ValueError, match="rcond must be finite"):
        _core.nystrom(W, 2, rcond=float("nan"))
