"""The chunked exact kNN engine against the Rust engine: on CPU tensors here (same algorithm,
same neighbours), and on a CUDA device when one is present."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lorax_core import _core
from lorax_core import id as lid
from lorax_core.kernels import knn as gknn
from lorax_core.synthetic import embedded_gaussian
from tests.kernels.conftest import needs_cuda

X = embedded_gaussian(700, 5, 24, seed=11)
ESTIMATORS = [
    lid.TwoNN(),
    lid.TwoNN(method="mle", discard_fraction=0.0),
    lid.MLE(k=10),
    lid.MLE(k=6, comb="median"),
    lid.MLE(k=7, comb="mean", unbiased=True),
]


def _same_neighbours(x: np.ndarray, k: int, device: str, **kw) -> None:  # type: ignore[no-untyped-def]
    dist, ind = gknn.knn(torch.from_numpy(x).to(device), k, **kw)
    want = _core.knn(x, k)
    np.testing.assert_array_equal(ind.cpu().numpy(), want.indices)
    np.testing.assert_allclose(dist.cpu().numpy(), want.distances, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [1, 2, 20])
def test_cpu_engine_same_neighbours_as_rust(dtype, k) -> None:  # type: ignore[no-untyped-def]
    _same_neighbours(X.astype(dtype), k, "cpu", chunk_rows=97)  # several chunks, a ragged last


def test_ties_and_duplicates_resolved_by_index() -> None:
    # Integer grid points: many exactly equal distances; exact copies at distance 0.
    grid = np.stack(np.meshgrid(*[np.arange(5.0)] * 3), -1).reshape(-1, 3)
    x = np.vstack([grid, grid[:7]])
    for k in (1, 6, 12):
        _same_neighbours(x, k, "cpu", chunk_rows=40)


@given(
    n=st.integers(12, 80),
    d=st.integers(1, 9),
    k=st.integers(1, 10),
    exponent=st.sampled_from([-300, -200, 0, 200, 300]),
    seed=st.integers(0, 2**16),
)
def test_cpu_engine_matches_rust_at_any_scale(n, d, k, exponent, seed) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) * 10.0**exponent
    _same_neighbours(x, min(k, n - 1), "cpu", chunk_rows=int(rng.integers(1, n + 1)))


@pytest.mark.parametrize("est", ESTIMATORS, ids=repr)
def test_cpu_engine_estimates_equal_the_rust_estimators(est) -> None:  # type: ignore[no-untyped-def]
    want = est.fit(X)
    got = gknn.estimate_id(torch.from_numpy(X), est._settings(), est._options())
    assert abs(got.dimension - want.dimension_) <= 1e-9 * want.dimension_
    assert (got.n_samples, got.n_duplicates) == (700, 0)


def test_duplicates_policy_equals_the_rust_engine() -> None:
    y = np.vstack([X, X[:20], X[20:25] + 1e-12, -0.0 * X[30:31] + X[30:31]])
    est = lid.TwoNN()
    want = est.fit(y)
    got = gknn.estimate_id(torch.from_numpy(y), est._settings(), est._options())
    assert got.n_duplicates == want.n_duplicates_ == 26
    assert abs(got.dimension - want.dimension_) <= 1e-9 * want.dimension_


def test_errors_match_the_rust_engine() -> None:
    est = lid.TwoNN()
    few = torch.tensor([[1.0, 1.0], [1.0, 1.0], [2.0, 2.0]])
    with pytest.raises(ValueError, match="at least 3 distinct points, got 2 distinct of 3"):
        gknn.estimate_id(few, est._settings(), est._options())
    with pytest.raises(ValueError, match="NaN or infinite"):
        gknn.estimate_id(
            torch.tensor(X).index_fill(0, torch.tensor([3]), float("nan")),
            est._settings(),
            est._options(),
        )
    with pytest.raises(ValueError, match="bootstrap is not supported"):
        gknn.estimate_id(torch.from_numpy(X), est._settings(), lid.TwoNN(bootstrap=5)._options())
    with pytest.raises(ValueError, match="k = 3 must be in"):
        gknn.knn(torch.zeros(3, 2), 3)


# -- on a GPU ------------------------------------------------------------------------------------


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gpu_same_neighbours_as_the_cpu_engine(dtype) -> None:  # type: ignore[no-untyped-def]
    x = embedded_gaussian(5000, 8, 96, seed=2).astype(dtype)
    _same_neighbours(x, 20, "cuda", chunk_rows=1024)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("est", ESTIMATORS, ids=repr)
def test_gpu_estimators_equal_the_cpu_engine(est) -> None:  # type: ignore[no-untyped-def]
    x = embedded_gaussian(3000, 6, 64, seed=4)
    want = est.fit(x).dimension_
    est.set_params(device="cuda")
    assert abs(est.fit(x).dimension_ - want) <= 1e-9 * want
    on_gpu = torch.from_numpy(x).cuda()
    est.set_params(device=None)  # None follows the data onto the GPU
    assert abs(est.fit(on_gpu).dimension_ - want) <= 1e-9 * want
    layers = lid.estimate_layers([x, on_gpu], "twonn", device="cuda")
    cpu = lid.estimate_layers([x, x], "twonn")
    for g, c in zip(layers, cpu, strict=True):
        assert abs(g.dimension - c.dimension) <= 1e-9 * c.dimension
