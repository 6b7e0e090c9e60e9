"""Synthetic data of known structure, for tests, benchmarks and the demo.

Every generator is deterministic in ``seed`` (a :class:`numpy.random.Generator` per call) and
returns NumPy arrays; wrap them with ``torch.from_numpy`` where a tensor is needed.

- :func:`embedded_gaussian`: points of known intrinsic dimension ``d`` linearly embedded in
  ``R^D`` (the reference case of docs/intrinsic-dimension.md).
- :func:`known_spectrum`: a dense matrix whose singular values are exactly ``i^-decay``
  (the reference case of docs/initialisation.md), with :func:`decaying_spectrum` its values.
- :func:`hidden_layers`: random per-layer hidden states ``(n_samples, hidden)``, the shape that
  GeLoRA's capture writes (docs/gelora.md).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from lorax_core._validation import Integer, Real, check

__all__ = ["decaying_spectrum", "embedded_gaussian", "hidden_layers", "known_spectrum"]

DType = npt.DTypeLike


def embedded_gaussian(
    n: int, d: int, D: int, *, seed: int = 0, dtype: DType = np.float64
) -> np.ndarray:
    """``(n, D)`` standard Gaussian points of ``R^d`` mapped into ``R^D`` by an orthonormal basis.

    The basis is the Q factor of a seeded ``(D, d)`` Gaussian matrix, so the points span a
    random ``d``-dimensional linear subspace and their intrinsic dimension is exactly ``d``.
    Drawn in float64, then cast to ``dtype``.
    """
    name = "embedded_gaussian"
    check(name, "n", n, Integer(low=1))
    check(name, "d", d, Integer(low=1))
    check(name, "D", D, Integer(low=d))
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((D, d)))
    return np.asarray(rng.standard_normal((n, d)) @ basis.T, dtype=dtype)


def decaying_spectrum(k: int, decay: float) -> np.ndarray:
    """``(k,)`` float64 singular values ``s_i = i^-decay`` for ``i = 1..k`` (descending)."""
    check("decaying_spectrum", "k", k, Integer(low=1))
    check("decaying_spectrum", "decay", decay, Real(low=0.0))
    return np.arange(1.0, k + 1) ** -float(decay)


def known_spectrum(
    m: int,
    n: int,
    decay: float,
    *,
    seed: int = 0,
    dtype: DType = np.float64,
    reflectors: int = 4,
) -> np.ndarray:
    """``(m, n)`` matrix ``W = H_l diag(s) H_r`` with ``s = decaying_spectrum(min(m, n), decay)``.

    ``H_l`` (m×m) and ``H_r`` (n×n) are products of ``reflectors`` seeded random Householder
    reflections: orthogonal, so the singular values of ``W`` are exactly ``s`` (up to rounding
    in ``dtype``), and cheap (O(m·n) each, where a Gaussian QR of a 11008×4096 matrix takes
    minutes). Sketches with Gaussian test matrices see the same error law as for Haar-random
    singular vectors, since that law is invariant under orthogonal maps.
    """
    name = "known_spectrum"
    check(name, "m", m, Integer(low=1))
    check(name, "n", n, Integer(low=1))
    check(name, "reflectors", reflectors, Integer(low=0))
    k = min(m, n)
    s = decaying_spectrum(k, decay)
    rng = np.random.default_rng(seed)
    W = np.zeros((m, n), dtype=dtype)
    W[np.arange(k), np.arange(k)] = s
    for _ in range(reflectors):
        u = rng.standard_normal(m).astype(dtype)
        u /= np.linalg.norm(u)
        W -= 2 * np.outer(u, u @ W)
        v = rng.standard_normal(n).astype(dtype)
        v /= np.linalg.norm(v)
        W -= 2 * np.outer(W @ v, v)
    return W


def hidden_layers(
    n: int = 6, hidden: int = 5, count: int = 3, *, seed: int = 0, dtype: DType = np.float32
) -> list[np.ndarray]:
    """``count`` independent ``(n, hidden)`` standard Gaussian arrays in ``dtype``.

    One array per layer, pooled (one row per sample), as saved by the hidden-states file.
    """
    name = "hidden_layers"
    check(name, "n", n, Integer(low=1))
    check(name, "hidden", hidden, Integer(low=1))
    check(name, "count", count, Integer(low=1))
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, hidden)).astype(dtype) for _ in range(count)]
