"""Parity of lorax_core.id with scikit-dimension 0.5 and scikit-learn on duplicate-free data."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import skdim
from sklearn.datasets import load_digits, make_swiss_roll
from sklearn.neighbors import NearestNeighbors

from lorax_core import id as lid
from lorax_core.synthetic import embedded_gaussian

N = 1500


def _datasets() -> dict[str, np.ndarray]:
    sets = {f"gauss{d}_in_768": embedded_gaussian(N, d, 768, seed=d) for d in (5, 10, 20)}
    sets["hypersphere_S5"] = skdim.datasets.hyperSphere(N, 6, random_state=0)
    sets["swiss_roll"] = make_swiss_roll(N, noise=0.0, random_state=0)[0]
    sets["digits"] = load_digits().data  # real: 1,797 8x8 images, no duplicate rows
    for name, X in sets.items():
        assert len(np.unique(X, axis=0)) == len(X), name
    return sets


DATASETS = _datasets()


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_twonn_matches_skdim(name: str) -> None:
    X = DATASETS[name]
    ours = lid.TwoNN().fit(X)
    ref = skdim.id.TwoNN().fit(X).dimension_
    assert _rel(ours.dimension_, ref) < 1e-6, (ours.dimension_, ref)
    assert ours.n_duplicates_ == 0
    assert ours.n_samples_ == len(X)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_mle_matches_skdim(name: str) -> None:
    X = DATASETS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = skdim.id.MLE().fit(X, comb="mle").dimension_
    assert _rel(lid.mle(X), ref) < 1e-6, (lid.mle(X), ref)


@pytest.mark.filterwarnings("ignore:divide by zero")
@pytest.mark.parametrize("name", ["hypersphere_S5", "swiss_roll"])
def test_options_match_skdim(name: str) -> None:
    X = DATASETS[name]
    for frac in (0.0, 0.1, 0.3):
        ref = skdim.id.TwoNN(discard_fraction=frac, method="mle").fit(X).dimension_
        ours = lid.twonn(X, discard_fraction=frac, method="mle")
        assert _rel(ours, ref) < 1e-6
    ref = skdim.id.TwoNN(discard_fraction=0.25).fit(X).dimension_
    assert _rel(lid.twonn(X, discard_fraction=0.25, method="linear"), ref) < 1e-6
    for comb in ("mean", "median"):
        for unbiased in (False, True):
            est = skdim.id.MLE(unbiased=unbiased).fit(X, comb=comb, n_neighbors=10)
            ours = lid.mle(X, k=10, comb=comb, unbiased=unbiased)
            assert _rel(ours, est.dimension_) < 1e-6


def test_float32_input_matches_float64_of_same_values() -> None:
    X32 = DATASETS["gauss10_in_768"].astype(np.float32)
    assert lid.twonn(X32) == lid.twonn(X32.astype(np.float64))
    assert lid.mle(X32) == lid.mle(np.asfortranarray(X32))


@pytest.mark.parametrize("name", ["gauss20_in_768", "digits"])
def test_knn_matches_sklearn(name: str) -> None:
    X = DATASETS[name]
    k = 12
    dist, idx = lid.nearest_neighbors(X, k)
    # One extra reference neighbour reveals ties across the k-th position.
    ref_dist, ref_idx = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(X).kneighbors()
    np.testing.assert_allclose(dist, ref_dist[:, :k], rtol=1e-9, atol=1e-9)
    assert dist.dtype == np.float64 and idx.dtype == np.int64 and idx.shape == (len(X), k)
    # Indices agree wherever distances are not tied (ties: ours break by index).
    gap = np.diff(ref_dist, axis=1) > 1e-9
    untied = np.ones_like(ref_idx, dtype=bool)
    untied[:, 1:] &= gap
    untied[:, :-1] &= gap
    untied, ref_idx = untied[:, :k], ref_idx[:, :k]
    assert np.mean(untied) > 0.5
    np.testing.assert_array_equal(idx[untied], ref_idx[untied])
    assert not np.any(idx == np.arange(len(X))[:, None])
    tied = dist[:, 1:] == dist[:, :-1]
    assert np.all(idx[:, 1:][tied] > idx[:, :-1][tied])
