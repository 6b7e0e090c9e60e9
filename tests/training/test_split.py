"""The D_tr / D_val split: deterministic, disjoint, complete, sized as asked."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lorax_core.training import split_indices


@given(n=st.integers(2, 500), fraction=st.floats(0.05, 0.95), seed=st.integers(0, 2**31))
def test_split_is_deterministic_disjoint_and_complete(n, fraction, seed):
    n_val = round(n * fraction)
    if not 1 <= n_val <= n - 1:
        with pytest.raises(ValueError, match="train_dataset"):
            split_indices(n, fraction, seed)
        return
    split = split_indices(n, fraction, seed)
    assert split == split_indices(n, fraction, seed)
    assert set(split.train).isdisjoint(split.val)
    assert sorted(split.train + split.val) == list(range(n))
    assert len(split.val) == n_val
    assert list(split.train) == sorted(split.train) and list(split.val) == sorted(split.val)


def test_split_depends_on_the_seed_and_is_recorded():
    a, b = split_indices(100, 0.2, 0), split_indices(100, 0.2, 1)
    assert a.val != b.val and a.fingerprint != b.fingerprint
    record = json.loads(json.dumps(a.to_dict()))
    assert record["val"] == list(a.val) and record["fingerprint"] == a.fingerprint


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, 2.0, float("nan"), float("inf")])
def test_fraction_must_lie_in_the_open_unit_interval(fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        split_indices(10, fraction, 0)


def test_each_part_must_hold_a_batch():
    with pytest.raises(ValueError, match="train_dataset"):
        split_indices(10, 0.2, 0, min_size=3)
    assert len(split_indices(15, 0.2, 0, min_size=3).val) == 3
