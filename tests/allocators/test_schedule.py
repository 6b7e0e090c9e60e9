"""Budget schedules: hand sequences, PEFT's AdaLoRA schedule, Python's round for ElaLoRA."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from peft.tuners.adalora.layer import RankAllocator as PeftRankAllocator

from lorax_core._core import RankAllocator, adalora_budget, elalora_budget


def test_adalora_budget_toy_sequence():
    # T = 10, t_init = 2, t_final = 2, 12 → 4: int(8 (1 − (t − 2)/6)³ + 4).
    got = [
        adalora_budget(t, total_steps=10, t_init=2, t_final=2, init_total=12, target_total=4)
        for t in range(11)
    ]
    assert got == [12, 12, 12, 8, 6, 5, 4, 4, 4, 4, 4]


def test_elalora_budget_toy_sequence():
    got = [elalora_budget(t, total_steps=10, t_init=2, t_final=2, b0=4) for t in range(11)]
    assert got == [4, 4, 4, 4, 4, 4, 3, 2, 0, 0, 0]


@given(
    total=st.integers(3, 400),
    t_init_frac=st.floats(0, 0.5),
    t_final_frac=st.floats(0, 0.4),
    init_total=st.integers(1, 300),
    target_frac=st.floats(0, 1),
)
def test_adalora_budget_equals_peft(total, t_init_frac, t_final_frac, init_total, target_frac):
    t_init = int(total * t_init_frac)
    t_final = min(int(total * t_final_frac), total - t_init - 1)
    target = int(init_total * target_frac)
    cfg = SimpleNamespace(tinit=t_init, tfinal=t_final, total_step=total, deltaT=1)
    peft = SimpleNamespace(peft_config=cfg, init_bgt=init_total, target_bgt=target)
    for t in range(total + 2):
        expected, _ = PeftRankAllocator.budget_schedule(peft, t)
        got = adalora_budget(
            t,
            total_steps=total,
            t_init=t_init,
            t_final=t_final,
            init_total=init_total,
            target_total=target,
        )
        assert got == expected, t


@given(
    total=st.integers(3, 300),
    t_init=st.integers(0, 100),
    t_final=st.integers(0, 100),
    b0=st.integers(0, 12),
)
def test_elalora_budget_equals_python_round(total, t_init, t_final, b0):
    if t_init + t_final >= total:
        with pytest.raises(ValueError, match="t_init"):
            elalora_budget(0, total_steps=total, t_init=t_init, t_final=t_final, b0=b0)
        return
    span = total - t_final - t_init
    for t in range(total + 1):
        p = min(max((t - t_init) / span, 0.0), 1.0)
        expected = round(b0 * (1 - p**3))
        assert elalora_budget(t, total_steps=total, t_init=t_init, t_final=t_final, b0=b0) == (
            expected
        )


def test_elalora_allocation_steps():
    alloc = RankAllocator.elalora(
        ["a", "b"], [4, 4], [8, 8], total_steps=100, t_init=10, t_final=10, interval=5
    )
    steps = [t for t in range(101) if alloc.is_allocation_step(t)]
    assert steps == list(range(15, 90, 5))  # b(90) = 0 and t > 90 is the final phase
    assert [alloc.updates_scores(t) for t in (0, 89, 90)] == [True, True, False]


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="total_steps"):
        adalora_budget(1, total_steps=-1, t_init=0, t_final=0, init_total=4, target_total=2)
    with pytest.raises(ValueError, match="t_init"):
        RankAllocator.elalora(["a"], [2], [4], total_steps=10, t_init=6, t_final=4, interval=1)
    with pytest.raises(ValueError, match="interval"):
        RankAllocator.elalora(["a"], [2], [4], total_steps=10, t_init=1, t_final=1, interval=0)
    with pytest.raises(ValueError, match="target"):
        RankAllocator.adalora(
            ["a"], [2], [4], total_steps=10, t_init=1, t_final=1, target_total=3, delta_t=1
        )
