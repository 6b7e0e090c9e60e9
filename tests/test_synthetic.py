"""lorax_core.synthetic: each generator has the structure it promises, checked by plain numpy."""

from __future__ import annotations

import numpy as np
import pytest

from lorax_core import synthetic


def test_embedded_gaussian_spans_a_d_dim_subspace() -> None:
    X = synthetic.embedded_gaussian(200, 7, 40, seed=3, dtype=np.float32)
    assert X.shape == (200, 40) and X.dtype == np.float32
    s = np.linalg.svd(X.astype(np.float64), compute_uv=False)
    assert s[6] > 1.0 and s[7] < 1e-4 * s[0]
    again = synthetic.embedded_gaussian(200, 7, 40, seed=3, dtype=np.float32)
    np.testing.assert_array_equal(X, again)


@pytest.mark.parametrize(
    ("m", "n", "dtype", "tol"), [(120, 80, np.float64, 1e-12), (64, 96, np.float32, 1e-5)]
)
def test_known_spectrum_has_exactly_its_singular_values(
    m: int, n: int, dtype: type, tol: float
) -> None:
    W = synthetic.known_spectrum(m, n, 0.7, seed=5, dtype=dtype)
    assert W.shape == (m, n) and W.dtype == dtype
    s = np.linalg.svd(W.astype(np.float64), compute_uv=False)
    want = np.arange(1.0, min(m, n) + 1) ** -0.7
    np.testing.assert_allclose(s, want, atol=tol)
    np.testing.assert_array_equal(synthetic.decaying_spectrum(min(m, n), 0.7), want)


def test_hidden_layers_are_seeded_gaussians() -> None:
    layers = synthetic.hidden_layers(50, 4, 2, seed=1)
    assert [a.shape for a in layers] == [(50, 4)] * 2 and layers[0].dtype == np.float32
    assert not np.array_equal(layers[0], layers[1])
    for got, want in zip(layers, synthetic.hidden_layers(50, 4, 2, seed=1), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: synthetic.embedded_gaussian(10, 5, 3), "D"),
        (lambda: synthetic.embedded_gaussian(0, 1, 3), "n"),
        (lambda: synthetic.known_spectrum(4, 4, -1.0), "decay"),
        (lambda: synthetic.hidden_layers(count=True), "count"),
    ],
)
def test_bad_arguments_name_themselves(call: object, argument: str) -> None:
    with pytest.raises((ValueError, TypeError), match=rf"\b{argument} must be"):
        call()  # type: ignore[operator]
