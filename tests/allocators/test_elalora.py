"""ElaLoRA's reallocation rounds in the Rust allocator as hypothesis properties, against a Python
reading of docs/allocators.md."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lorax_core._core import RankAllocator, ScheduleOptions

T, T_INIT, T_FINAL, INTERVAL = 100, 10, 10, 5
FIRST = T_INIT + INTERVAL  # first round, b(t) = b0 there (p³ rounds away)


def spec_round(scores: list[list[float]], b: int, k: int) -> tuple[list[list[int]], list[int]]:
    """docs/allocators.md with unlimited capacity: (pruned slots, ranks gained) per module."""
    cands = []
    for m, s in enumerate(scores):
        own = sorted((v, m, i) for i, v in enumerate(s))
        cands += own[: min(k, len(s) - 1)]
    cands.sort()
    n = min(b, len(cands))
    pruned: list[list[int]] = [[] for _ in scores]
    for _, m, i in cands[:n]:
        pruned[m].append(i)
    grown = [0] * len(scores)
    for _, m, _ in sorted(cands, key=lambda c: (-c[0], c[1], c[2]))[:n]:
        grown[m] += 1
    return [sorted(p) for p in pruned], grown


modules_st = st.lists(st.integers(1, 6), min_size=1, max_size=6)


@st.composite
def round_inputs(draw):
    ranks = draw(modules_st)
    scores = [
        draw(st.lists(st.floats(0, 1, allow_nan=False), min_size=r, max_size=r)) for r in ranks
    ]
    b = draw(st.integers(1, 8))
    k = draw(st.integers(1, 3))
    cap_extra = draw(st.integers(0, 4))
    return ranks, scores, b, k, cap_extra


def make(ranks, caps, b, k, seed=0):
    names = [f"layer.{i}" for i in range(len(ranks))]
    schedule = ScheduleOptions(T, t_init=T_INIT, t_final=T_FINAL, interval=INTERVAL, seed=seed)
    return RankAllocator.elalora(names, ranks, caps, schedule, b0=b, k=k)


@given(round_inputs())
def test_round_invariants(inputs):
    ranks, scores, b, k, cap_extra = inputs
    caps = [r + cap_extra for r in ranks]
    alloc = make(ranks, caps, b, k)
    plans = alloc.allocate(FIRST, scores)
    new = alloc.ranks()
    assert sum(new) == sum(ranks)
    for r0, r1, cap, plan, s in zip(ranks, new, caps, plans, scores, strict=True):
        perm, n_keep = plan.perm, plan.n_keep
        assert r1 == plan.new_rank and 1 <= r1 <= cap
        assert abs(r1 - r0) <= k
        assert r0 - n_keep <= min(k, r0 - 1)
        if r0 == 1:
            assert r1 == 1 and n_keep == 1
        assert sorted(perm) == list(range(cap))
        kept = perm[:n_keep]
        assert kept == sorted(kept) and all(i < r0 for i in kept)
        # Every pruned rank scores no higher than any kept rank of its module.
        pruned = perm[n_keep:r0]
        if pruned and kept:
            assert max(s[i] for i in pruned) <= min(s[i] for i in kept)


@given(round_inputs())
def test_round_equals_spec_reading(inputs):
    ranks, scores, b, k, _ = inputs
    caps = [r + k for r in ranks]  # capacity never binds
    alloc = make(ranks, caps, b, k)
    plans = alloc.allocate(FIRST, scores)
    exp_pruned, exp_grown = spec_round(scores, b, k)
    for r0, plan, p, g in zip(ranks, plans, exp_pruned, exp_grown, strict=True):
        assert sorted(plan.perm[plan.n_keep : r0]) == p
        assert plan.new_rank - plan.n_keep == g


def test_capacity_spares_prunes():
    # Module 0 is full and owns the strongest candidates: nothing can move.
    alloc = make([3, 2], [3, 4], b=2, k=2)
    alloc.allocate(FIRST, [[0.9, 0.8, 0.7], [0.1, 0.05]])
    assert alloc.ranks() == [3, 2]
