"""AdaLoRA's masking round in the Rust allocator: the globally lowest scores leave, as a plain
sort of all scores says (docs/allocators.md)."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from lorax_core._core import RankAllocator


@given(st.lists(st.integers(1, 6), min_size=1, max_size=5), st.integers(0, 10**6))
def test_adalora_masks_global_lowest(ranks, seed):
    rng = np.random.default_rng(seed)
    scores = [rng.random(r).tolist() for r in ranks]
    total = sum(ranks)
    target = total // 2
    alloc = RankAllocator.adalora(
        [f"m{i}" for i in range(len(ranks))],
        ranks,
        ranks,
        total_steps=10,
        t_init=0,
        t_final=0,
        target_total=target,
        delta_t=1,
    )
    t = 5
    budget = alloc.budget(t)
    if not alloc.is_allocation_step(t):
        assert budget >= total
        return
    plans = alloc.allocate(t, scores)
    assert sum(alloc.ranks()) == budget
    flat = sorted((v, m, i) for m, s in enumerate(scores) for i, v in enumerate(s))
    expected = {(m, i) for _, m, i in flat[: total - budget]}
    got = {(m, i) for m, p in enumerate(plans) for i in p.perm[p.n_keep : ranks[m]]}
    assert got == expected
