"""AdaLoRA's masking round in the Rust allocator: the globally lowest scores leave, as a plain
sort of all scores says (docs/allocators.md)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lorax_core._core import RankAllocator, ScheduleOptions


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
        ScheduleOptions(10),
        target_total=target,
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


LEGACY = dict(total_steps=20, t_init=2, t_final=2, delta_t=2, seed=7)


@given(st.integers(1, 50), st.integers(0, 20), st.integers(0, 20), st.integers(1, 9))
def test_schedule_options_equal_the_former_keywords(total, t_init, t_final, interval):
    """A ScheduleOptions and the former keywords build the same allocator state."""
    if t_init + t_final >= total:
        with pytest.raises(ValueError, match="t_init"):
            ScheduleOptions(total, t_init=t_init, t_final=t_final, interval=interval)
        return
    s = ScheduleOptions(total, t_init=t_init, t_final=t_final, interval=interval, seed=3)
    assert (s.total_steps, s.t_init, s.t_final, s.interval, s.seed) == (
        total,
        t_init,
        t_final,
        interval,
        3,
    )
    args = (["a", "b"], [4, 4], [4, 4])
    legacy = dict(total_steps=total, t_init=t_init, t_final=t_final, seed=3)
    ada = RankAllocator.adalora(*args, s, target_total=4)
    assert ada.to_json() == (
        RankAllocator.adalora(*args, target_total=4, delta_t=interval, **legacy).to_json()
    )
    ela = RankAllocator.elalora(*args, s, b0=2)
    assert (
        ela.to_json() == RankAllocator.elalora(*args, b0=2, interval=interval, **legacy).to_json()
    )


@pytest.mark.parametrize(
    ("kwargs", "exc", "text"),
    [
        (dict(interval=0), ValueError, "interval must be positive, got 0"),
        (dict(t_init=-1), ValueError, "t_init must be an int"),
        (dict(seed=2**64), ValueError, "seed must be an int"),
        (dict(t_final=True), TypeError, "t_final"),
        (dict(interval=1.5), TypeError, "interval"),
    ],
)
def test_schedule_options_name_the_bad_argument(kwargs, exc, text):
    with pytest.raises(exc, match=text):
        ScheduleOptions(10, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "exc", "text"),
    [
        (dict(delta_t=0), ValueError, "delta_t must be positive, got 0"),
        (dict(interval=1), TypeError, "unexpected keyword argument 'interval'"),
        (dict(delta_t=True), TypeError, "argument 'delta_t'"),
        (dict(total_steps=None), TypeError, "argument 'total_steps'"),
    ],
)
def test_former_keywords_name_the_bad_argument(kwargs, exc, text):
    with pytest.raises(exc, match=text):
        RankAllocator.adalora(["a"], [2], [2], target_total=1, **{**LEGACY, **kwargs})


def test_schedule_is_required_once():
    with pytest.raises(TypeError, match="schedule"):
        RankAllocator.adalora(["a"], [2], [2], target_total=1)
    with pytest.raises(TypeError, match="not both"):
        RankAllocator.elalora(["a"], [2], [4], ScheduleOptions(10), **LEGACY)
    with pytest.raises(TypeError, match="missing required keyword argument 't_final'"):
        RankAllocator.elalora(["a"], [2], [4], total_steps=10, t_init=1, interval=1)
