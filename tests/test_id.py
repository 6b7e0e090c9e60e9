"""The lorax_core.id API: duplicates policy, bad input, bootstrap, scales, layers, inputs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import skdim
import torch

from lorax_core import id as lid
from lorax_core.synthetic import embedded_gaussian

X0 = embedded_gaussian(800, 8, 32)


# --- duplicates policy -------------------------------------------------------------------


def test_exact_copies_removed_before_estimating() -> None:
    rng = np.random.default_rng(1)
    copies = X0[rng.choice(len(X0), size=40, replace=False)]
    X = rng.permutation(np.vstack([X0, copies]))
    for est in (lid.TwoNN(), lid.MLE()):
        clean = type(est)().fit(X0)
        dup = est.fit(X)
        assert dup.n_duplicates_ == 40
        assert dup.n_samples_ == len(X)
        np.testing.assert_allclose(dup.dimension_, clean.dimension_, rtol=1e-12)
    # scikit-dimension's MLE silently returns 0.0 here; ours must not.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert skdim.id.MLE().fit(X).dimension_ == 0.0
    assert lid.mle(X) > 5


def test_near_copies_follow_the_tolerance() -> None:
    rng = np.random.default_rng(2)
    # The tolerance's scale: median distance of the points from their coordinate-wise median.
    scale = np.median(np.linalg.norm(X0 - np.median(X0, axis=0), axis=1))
    near = X0[:10] + 1e-10 * scale * rng.standard_normal((10, X0.shape[1])) / np.sqrt(32)
    X = np.vstack([X0, near])
    clean = lid.twonn(X0)
    est = lid.TwoNN().fit(X)
    assert est.n_duplicates_ == 10
    assert est.dimension_ == pytest.approx(clean, rel=1e-12)
    strict = lid.TwoNN(duplicate_tol=0.0).fit(X)
    assert strict.n_duplicates_ == 0
    assert strict.dimension_ != pytest.approx(clean, rel=1e-3)


def test_one_far_outlier_removes_no_distinct_point() -> None:
    # With a tolerance scaled by the RMS norm, one row 1e8 away made hundreds of these
    # distinct points "near duplicates". Oracle: scikit-dimension, which removes nothing.
    X = np.random.default_rng(3).standard_normal((1000, 5))
    outlier = np.zeros((1, 5))
    outlier[0, 0] = 1e8
    Y = np.vstack([X, outlier])
    for ours, theirs in (
        (lid.TwoNN(), skdim.id.TwoNN()),
        (lid.MLE(), skdim.id.MLE()),
    ):
        est = ours.fit(Y)
        assert est.n_duplicates_ == 0
        np.testing.assert_allclose(est.dimension_, theirs.fit(Y).dimension_, rtol=1e-6)


@pytest.mark.parametrize("factor", [1e200, 1e-200, 1e300, 1e-300])
def test_extreme_magnitudes_keep_neighbours_and_estimates(factor: float) -> None:
    # A float32 copy of X·1e±200 overflows or flushes to zero; the estimates are scale-invariant
    # and must equal those of X.
    X = embedded_gaussian(600, 4, 12, seed=5)
    Y = X * factor
    d_x, i_x = lid.nearest_neighbors(X, 5)
    d_y, i_y = lid.nearest_neighbors(Y, 5)
    np.testing.assert_array_equal(i_y, i_x)
    np.testing.assert_allclose(d_y / factor, d_x, rtol=1e-12)
    for est in (lid.TwoNN(), lid.MLE(), lid.TwoNN(method="mle", discard_fraction=0.0)):
        want = type(est)(**est.get_params()).fit(X)
        got = est.fit(Y)
        assert got.n_duplicates_ == want.n_duplicates_ == 0
        np.testing.assert_allclose(got.dimension_, want.dimension_, rtol=1e-9)


def test_fewer_than_three_distinct_points() -> None:
    X = np.array([[0.0, 1.0], [0.0, 1.0], [2.0, 3.0], [2.0, 3.0]])
    with pytest.raises(ValueError, match="got 2 distinct of 4 points after removing 2 duplicates"):
        lid.twonn(X)
    with pytest.raises(ValueError, match="got 2 points, none of them a duplicate"):
        lid.twonn(X[1:3])


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("X", "exc", "match"),
    [
        (np.where(np.arange(40)[:, None] == 3, np.nan, X0[:40]), ValueError, "contains NaN"),
        (np.where(np.arange(40)[:, None] == 3, np.inf, X0[:40]), ValueError, "infinity"),
        (X0[:, 0], ValueError, "2D array"),
        (X0.reshape(40, 20, -1), ValueError, "dim 3"),
        (np.zeros((0, 4)), ValueError, "0 sample"),
        (np.zeros((10, 0)), ValueError, "0 feature"),
        (np.array([[1.0, {"a": 1}]] * 5, dtype=object), TypeError, "real number"),
        (np.array([["a", "b"]] * 5), ValueError, "strings"),
        (X0[:40].astype(np.complex128), ValueError, "Complex data not supported"),
        ("not an array", ValueError, "Expected 2D array"),
    ],
)
def test_bad_arrays_raise_clear_errors(X: object, exc: type[Exception], match: str) -> None:
    for fit in (lid.twonn, lid.mle):
        with pytest.raises(exc, match=match):
            fit(X)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: lid.MLE(k=25), "k = 25 must be smaller"),
        (lambda: lid.MLE(k=1), "MLE.fit: k must be an int >= 2, got 1"),
        (lambda: lid.MLE(k=-3), "MLE.fit: k must be an int >= 2, got -3"),
        (lambda: lid.MLE(k=2, unbiased=True), "MLE.fit: k must be an int >= 3, got 2"),
        (lambda: lid.MLE(comb="max"), "MLE.fit: comb must be one of"),
        (lambda: lid.TwoNN(discard_fraction=1.0), "TwoNN.fit: discard_fraction must be"),
        (lambda: lid.TwoNN(discard_fraction=0.0), r"discard_fraction must be .* in \(0.0, 1.0\)"),
        (lambda: lid.TwoNN(method="fit"), "TwoNN.fit: method must be one of"),
        (lambda: lid.TwoNN(bootstrap=-1), "TwoNN.fit: bootstrap must be an int >= 0"),
        (lambda: lid.TwoNN(duplicate_tol=-1.0), "TwoNN.fit: duplicate_tol"),
        (lambda: lid.TwoNN(duplicate_tol=float("nan")), "TwoNN.fit: duplicate_tol"),
    ],
)
def test_bad_parameters_raise_value_error(make, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        make().fit(X0[:25])


def test_k_equal_to_n_points() -> None:
    with pytest.raises(ValueError, match="k = 20 must be smaller than the number of distinct"):
        lid.mle(X0[:20])


def test_mle_k_limits_match_skdim_semantics() -> None:
    # k neighbours exclude the point itself: k = n - 1 is the largest valid value.
    X = X0[:30]
    assert np.isfinite(lid.mle(X, k=29))


# --- uncertainty ---------------------------------------------------------------------------


def test_bootstrap_interval_and_determinism() -> None:
    est = lid.TwoNN(bootstrap=100, random_state=0).fit(X0)
    lo, hi = est.ci_
    assert lo < est.dimension_ < hi
    assert hi - lo < 0.5 * est.dimension_
    assert lid.TwoNN(bootstrap=100, random_state=0).fit(X0).ci_ == (lo, hi)
    assert lid.TwoNN(bootstrap=100, random_state=1).fit(X0).ci_ != (lo, hi)
    assert not hasattr(lid.TwoNN().fit(X0), "ci_")
    mle = lid.MLE(bootstrap=50, random_state=0).fit(X0)
    assert mle.ci_[0] < mle.dimension_ < mle.ci_[1]


def test_scales_halve_down_to_a_floor() -> None:
    est = lid.TwoNN(scales=True, random_state=0).fit(X0)
    sizes = [n for n, _ in est.scales_]
    assert sizes == [800, 400, 200, 100, 50, 25]
    assert est.scales_[0][1] == est.dimension_
    assert all(5 < d < 12 for _, d in est.scales_[:4])
    assert [n for n, _ in lid.MLE(scales=True).fit(X0).scales_] == [800, 400, 200, 100, 50, 25]


# --- inputs and many layers ------------------------------------------------------------------


def test_inputs_torch_lists_ints_and_layouts() -> None:
    X32 = X0.astype(np.float32)
    ref = lid.twonn(X32)
    assert lid.twonn(torch.from_numpy(X32)) == ref
    assert lid.twonn(torch.from_numpy(X32).requires_grad_()) == ref
    assert lid.twonn(np.asfortranarray(X32)) == ref
    assert lid.twonn(X32.tolist()) == lid.twonn(X32.astype(np.float64))
    assert lid.twonn(np.repeat(X32, 2, axis=0)[::2]) == ref  # strided view, converted once
    ints = np.random.default_rng(0).integers(0, 1000, size=(300, 6))
    assert lid.twonn(ints) == lid.twonn(ints.astype(np.float64))


def test_estimate_layers_matches_single_estimates() -> None:
    layers = [embedded_gaussian(800, d, 32, seed=s) for s, d in enumerate((3, 6, 9))]
    layers[1] = torch.from_numpy(layers[1].astype(np.float32))
    res = lid.estimate_layers(layers, "mle", k=10, bootstrap=20, random_state=0)
    assert [r.n_samples for r in res] == [800] * 3
    for r, X in zip(res, layers, strict=True):
        assert r.dimension == lid.mle(X, k=10)
        assert r.ci is not None and r.scales is None and r.n_duplicates == 0
    twonn = lid.estimate_layers(layers)
    assert [r.dimension for r in twonn] == [lid.twonn(X) for X in layers]
    assert lid.estimate_layers([]) == []


def test_estimate_layers_errors_name_the_layer() -> None:
    bad = X0.copy()
    bad[5, 5] = np.nan
    with pytest.raises(ValueError, match="layer 1: X contains NaN"):
        lid.estimate_layers([X0, bad])
    with pytest.raises(TypeError, match=r"arrays\[1\]"):
        lid.estimate_layers([X0, X0.astype(str)])
    with pytest.raises(TypeError, match="sequence"):
        lid.estimate_layers(np.stack([X0, X0]))
    with pytest.raises(ValueError, match="estimate_layers: estimator must be one of"):
        lid.estimate_layers([X0], "pca")
    with pytest.raises(TypeError, match="k"):
        lid.estimate_layers([X0], "twonn", k=5)


def test_sklearn_conventions() -> None:
    est = lid.TwoNN(discard_fraction=0.2)
    assert est.get_params()["discard_fraction"] == 0.2
    assert not hasattr(est, "dimension_")
    assert est.fit(X0) is est
    assert est.fit_transform(X0) == est.dimension_
    assert "discard_fraction=0.2" in repr(est)


# --- the Rust seam ---------------------------------------------------------------------------


def test_core_results_have_named_fields() -> None:
    from lorax_core import _core

    opts = _core.EstimateOptions(bootstrap=20, seed=4, scales=True)
    r = _core.estimate_id(X0, _core.MleOptions(k=10), opts)
    est = lid.MLE(k=10).fit(X0)
    assert r.dimension == est.dimension_ and r.n_samples == 800 and r.n_duplicates == 0
    assert r.ci is not None and r.ci[0] < r.dimension < r.ci[1]
    assert r.scales is not None and r.scales[0] == (800, r.dimension)
    assert _core.estimate_id(X0, _core.MleOptions(k=10), opts) == r  # deterministic, comparable
    assert _core.estimate_id(X0, _core.TwoNNOptions()).ci is None
    nn = _core.knn(X0[:50], 3)
    ref = np.sort(np.linalg.norm(X0[:50, None] - X0[None, :50], axis=-1), axis=1)[:, 1:4]
    np.testing.assert_allclose(nn.distances, ref, rtol=1e-10)
    assert nn.indices.shape == (50, 3) and nn.indices.dtype == np.int64
    distances, indices = lid.nearest_neighbors(X0[:50], 3)
    np.testing.assert_array_equal(indices, nn.indices)
    np.testing.assert_array_equal(distances, nn.distances)


@pytest.mark.parametrize(
    ("make", "exc", "match"),
    [
        ("TwoNNOptions(discard_fraction=1.5)", ValueError, "discard_fraction"),
        ("TwoNNOptions(method='x')", ValueError, "method"),
        ("MleOptions(k=-1)", ValueError, "k must be an int"),
        ("MleOptions(k=2**70)", ValueError, "k must be an int"),
        ("MleOptions(k=1.5)", TypeError, "argument 'k'"),
        ("MleOptions(comb='max')", ValueError, "comb"),
        ("EstimateOptions(bootstrap=-1)", ValueError, "bootstrap must be an int"),
        ("EstimateOptions(bootstrap=2**62)", ValueError, "bootstrap must be at most 1000000"),
        ("EstimateOptions(seed=-1)", ValueError, "seed must be an int"),
        ("EstimateOptions(duplicate_tol=float('nan'))", ValueError, "duplicate_tol"),
        ("estimate_id(X, MleOptions(), 'opts')", TypeError, "options"),
        ("estimate_id(X, 'twonn')", TypeError, "estimator must be a TwoNNOptions or MleOptions"),
        ("knn(X, -2)", ValueError, "k must be an int"),
        ("knn(X, 0)", ValueError, "k must be at least 1"),
    ],
)
def test_core_arguments_are_checked(make: str, exc: type[Exception], match: str) -> None:
    from lorax_core import _core

    with pytest.raises(exc, match=match):
        eval(make, {**vars(_core), "X": X0[:40]})


# -- the engine's device ---------------------------------------------------------------------


def test_device_cpu_is_the_host_engine() -> None:
    X = embedded_gaussian(400, 4, 10, seed=3)
    want = lid.TwoNN(bootstrap=10, random_state=1).fit(X)
    got = lid.TwoNN(bootstrap=10, random_state=1, device="cpu").fit(torch.from_numpy(X))
    assert (got.dimension_, got.ci_) == (want.dimension_, want.ci_)
    layers = lid.estimate_layers([X, X[:200]], "mle", device=torch.device("cpu"), k=5)
    assert layers == lid.estimate_layers([X, X[:200]], "mle", k=5)


@pytest.mark.parametrize(
    ("device", "exc", "match"),
    [
        ("banana", ValueError, "device must be None or a torch device"),
        (3, TypeError, "device must be None or a torch device"),
        ("meta", ValueError, "device must be 'cpu' or a CUDA device"),
    ],
)
def test_bad_devices_name_the_argument(device: object, exc: type[Exception], match: str) -> None:
    X = embedded_gaussian(100, 3, 6, seed=0)
    with pytest.raises(exc, match=match):
        lid.TwoNN(device=device).fit(X)
    with pytest.raises(exc, match=match):
        lid.estimate_layers([X], device=device)  # type: ignore[arg-type]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_cuda_device_without_cuda_is_a_clear_error() -> None:
    X = embedded_gaussian(100, 3, 6, seed=0)
    with pytest.raises(ValueError, match=r"TwoNN.fit: device must be an available device"):
        lid.TwoNN(device="cuda").fit(X)
    with pytest.raises(ValueError, match=r"estimate_layers: device must be an available device"):
        lid.estimate_layers([X], device="cuda:0")


def test_device_engine_equals_the_host_engine_and_resampling_stays_on_the_host() -> None:
    # The device path of fit, run on CPU tensors (the GPU tests run it on CUDA).
    X = embedded_gaussian(600, 5, 12, seed=8)
    for est in (lid.TwoNN(), lid.MLE(k=8)):
        want = est.fit(X).dimension_
        got = lid._estimate_on_device(est, torch.from_numpy(X), torch.device("cpu"))
        assert abs(got.dimension - want) <= 1e-9 * want
    est = lid.TwoNN(bootstrap=8, scales=True, random_state=2)
    host = est.fit(X)
    got = lid._estimate_on_device(est, X, torch.device("cpu"))
    assert (got.dimension, got.ci, got.scales) == (host.dimension_, host.ci_, host.scales_)


def test_tensors_bound_for_a_device_stay_tensors() -> None:
    X = torch.from_numpy(embedded_gaussian(300, 4, 9, seed=5))
    est = lid.MLE(k=6)
    got = est._estimate(X, torch.device("cpu"))  # the device path, on CPU tensors
    assert est.n_features_in_ == 9
    assert abs(got.dimension - lid.MLE(k=6).fit(X).dimension_) <= 1e-9 * got.dimension
    with pytest.raises(ValueError, match=r"MLE.fit: X must be 2-D"):
        est._estimate(X[None], torch.device("cpu"))
