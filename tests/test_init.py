"""``lorax_core.init``: the initialisers' former path, and reachable from ``import lorax_core``."""

from __future__ import annotations

import numpy as np

import lorax_core
import lorax_core.adapters.init as home
from lorax_core.synthetic import known_spectrum


def test_top_level_package_exposes_the_initialisers() -> None:
    W = known_spectrum(30, 20, 1.0, seed=0)
    B, N, A = lorax_core.init.nystrom(W, 4, seed=1)
    assert (B.shape, N.shape, A.shape) == ((30, 4), (4, 4), (4, 20))
    s = np.linalg.svd(W, compute_uv=False)
    optimal = np.sqrt((s[4:] ** 2).sum())
    assert np.linalg.norm(W - (B @ N @ A).numpy()) <= 1.5 * optimal


def test_old_path_re_exports_the_same_objects() -> None:
    from lorax_core import init

    for name in init.__all__:
        assert getattr(init, name) is getattr(home, name), name
    assert set(init.__all__) == set(home.__all__)
