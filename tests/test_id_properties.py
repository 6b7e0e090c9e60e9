"""Hypothesis properties of the ID estimators: invariances, linear subspaces, and the device
engine against the host engine."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from lorax_core import id as lid
from lorax_core.synthetic import embedded_gaussian

data = st.builds(
    embedded_gaussian,
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(150, 500),
    d=st.integers(1, 6),
    D=st.integers(6, 24),
)


def _both(X: np.ndarray) -> tuple[float, float]:
    return lid.twonn(X), lid.mle(X, k=10)


def _close(a: tuple[float, float], b: tuple[float, float], rtol: float) -> None:
    np.testing.assert_allclose(a, b, rtol=rtol)


@given(X=data, seed=st.integers(0, 2**31 - 1))
def test_row_permutation_invariance(X: np.ndarray, seed: int) -> None:
    perm = np.random.default_rng(seed).permutation(len(X))
    _close(_both(X[perm]), _both(X), 1e-12)


@given(X=data, shift=st.floats(-50, 50), seed=st.integers(0, 2**31 - 1))
def test_translation_invariance(X: np.ndarray, shift: float, seed: int) -> None:
    offset = shift * np.random.default_rng(seed).standard_normal(X.shape[1])
    _close(_both(X + offset), _both(X), 1e-7)


@given(X=data, seed=st.integers(0, 2**31 - 1))
def test_rotation_invariance(X: np.ndarray, seed: int) -> None:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((X.shape[1],) * 2))
    _close(_both(X @ q), _both(X), 1e-9)


@given(X=data, scale=st.floats(1e-3, 1e3))
def test_uniform_scaling_invariance(X: np.ndarray, scale: float) -> None:
    _close(_both(X * scale), _both(X), 1e-9)


@given(X=data)
def test_linear_subspace_estimates_its_dimension(X: np.ndarray) -> None:
    d = np.linalg.matrix_rank(X)
    two, ml = _both(X)
    assert abs(two - d) <= 0.25 * d + 0.35, (two, d)
    assert abs(ml - d) <= 0.25 * d + 0.35, (ml, d)


@given(
    X=data,
    k=st.integers(2, 12),
    duplicates=st.integers(0, 5),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_device_engine_equals_the_host_engine(
    X: np.ndarray, k: int, duplicates: int, dtype: type
) -> None:
    # The chunked torch engine of the device path, run on CPU tensors, against the Rust engine.
    X = np.vstack([X, X[:duplicates]]).astype(dtype)
    for est in (lid.TwoNN(), lid.MLE(k=k)):
        want = est.fit(X)
        got = est._estimate(torch.from_numpy(X), torch.device("cpu"))
        assert got.n_duplicates == want.n_duplicates_
        assert abs(got.dimension - want.dimension_) <= 1e-9 * want.dimension_
