"""``lorax_core._distributed`` in one process: the helpers are pass-throughs without a process
group (the multi-process behaviour is tested on real gloo processes in tests/distributed/)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lorax_core._distributed import (
    TIMEOUT_ENV,
    assign_,
    collective_timeout,
    enter_collective,
    full,
    full_parameters,
    is_distributed,
    is_leader,
    is_sharded,
    leader_only,
    unwrap,
)


def test_without_a_group_every_process_is_the_leader() -> None:
    assert not is_distributed() and is_leader()
    enter_collective("anything")  # returns at once
    assert leader_only("write", lambda: 42) == 42


def test_whole_tensors_pass_through() -> None:
    t = torch.arange(6.0).reshape(2, 3)
    assert full(t) is t and not is_sharded(t)
    target = torch.zeros(2, 3)
    assign_(target, t)
    assert torch.equal(target, t)
    layer = nn.Linear(3, 2)
    with full_parameters(layer) as same:
        assert same.weight is layer.weight


def test_unwrap_looks_through_wrappers() -> None:
    inner = nn.Linear(3, 2)
    assert unwrap(nn.DataParallel(inner)) is inner
    compiled = nn.Module()
    compiled._orig_mod = inner
    assert unwrap(compiled) is inner
    assert unwrap(inner) is inner


@pytest.mark.parametrize(
    ("text", "expected"), [("", 300.0), ("12.5", 12.5), ("x", 300.0), ("-1", 300.0)]
)
def test_collective_timeout_from_the_environment(monkeypatch, text: str, expected: float) -> None:
    monkeypatch.setenv(TIMEOUT_ENV, text)
    assert collective_timeout() == expected
