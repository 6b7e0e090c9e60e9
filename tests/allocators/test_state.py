"""The allocator's JSON state: exact resume, versioning, and every malformed state or argument
refused with a ValueError naming the field, never a Rust panic."""

from __future__ import annotations

import json

import pytest

from lorax_core._core import RankAllocator
from tests.allocators.test_elalora import FIRST, INTERVAL, make


def test_state_roundtrip_and_versioning():
    alloc = make([3, 2, 4], [6, 6, 6], b=4, k=2, seed=3)
    alloc.allocate(FIRST, [[0.3, 0.1, 0.2], [0.5, 0.4], [0.9, 0.8, 0.05, 0.6]])
    text = alloc.to_json()
    again = RankAllocator.from_json(text)
    assert again.to_json() == text and again.ranks() == alloc.ranks()
    s2 = [[0.1 * (i + 1) for i in range(r)] for r in alloc.ranks()]
    assert again.allocate(FIRST + INTERVAL, s2) == alloc.allocate(FIRST + INTERVAL, s2)
    assert [h.step for h in alloc.history()] == [FIRST, FIRST + INTERVAL]
    assert alloc.history()[-1].ranks == alloc.ranks()
    state = json.loads(text)
    state["version"] = 99
    with pytest.raises(ValueError, match="version"):
        RankAllocator.from_json(json.dumps(state))
    with pytest.raises(ValueError, match="malformed"):
        RankAllocator.from_json(text[:-5])


def test_bad_scores_are_value_errors():
    alloc = make([2, 2], [4, 4], b=2, k=1)
    with pytest.raises(ValueError, match="not an allocation step"):
        alloc.allocate(FIRST + 1, [[0.0, 0.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match="scores"):
        alloc.allocate(FIRST, [[0.0, 0.0]])
    with pytest.raises(ValueError, match="scores"):
        alloc.allocate(FIRST, [[0.0, 0.0], [0.0, float("nan")]])
    with pytest.raises(ValueError, match="ranks"):
        make([0, 2], [4, 4], b=2, k=1)
    with pytest.raises(ValueError, match="unique"):
        RankAllocator.elalora(
            ["a", "a"], [1, 1], [2, 2], total_steps=10, t_init=1, t_final=1, interval=1
        )
    with pytest.raises(TypeError):
        alloc.allocate(FIRST, "not scores")  # type: ignore[arg-type]


def _ela_state() -> dict:  # type: ignore[type-arg]
    """A valid ElaLoRA state after one round (as a dict, to be broken field by field)."""
    alloc = make([2, 3], [4, 4], b=2, k=1, seed=1)
    alloc.allocate(FIRST, [[0.2, 0.1], [0.3, 0.5, 0.4]])
    return json.loads(alloc.to_json())


def _ada_state() -> dict:  # type: ignore[type-arg]
    alloc = RankAllocator.adalora(
        ["a", "b"], [4, 4], [4, 4], total_steps=20, t_init=2, t_final=2, target_total=4, delta_t=2
    )
    return json.loads(alloc.to_json())


def _set(state: dict, path: tuple, value: object) -> str:  # type: ignore[type-arg]
    node = state
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return json.dumps(state)


@pytest.mark.parametrize(
    ("state", "path", "value", "field"),
    [
        (_ela_state, ("method", "interval"), 0, "interval must be positive"),
        (_ada_state, ("method", "delta_t"), 0, "delta_t must be positive"),
        (_ela_state, ("method", "k"), 0, "k must be positive"),
        (_ela_state, ("method", "interval"), -5, "method: malformed .* integer `-5`"),
        (_ela_state, ("method", "interval"), 2**70, "method: malformed"),
        (_ela_state, ("modules", 0, "rank"), -1, r"modules\[0\]\.rank: malformed"),
        (_ela_state, ("history", 0, "step"), -1, r"history\[0\]\.step: malformed"),
        (_ela_state, ("method", "phases", "total_steps"), 0, "total_steps"),
        (_ela_state, ("method", "phases", "t_init"), 2**64 - 1, "t_init"),
        (_ada_state, ("method", "min_rank"), 2**63, "min_rank"),
        (_ada_state, ("method", "target_bgt"), 100, "target_total"),
        (_ela_state, ("modules", 0, "capacity"), 2**40, "capacities"),
        (_ela_state, ("modules", 0, "capacity"), 1, "ranks"),
        (_ela_state, ("modules", 1, "name"), "layer.0", "unique"),
        (_ela_state, ("modules",), [], "names"),
        (_ela_state, ("modules", 0, "rank"), 0, "ranks"),
        (_ela_state, ("last_scores", 0, 1), float("nan"), "last_scores"),
        (_ela_state, ("last_scores", 0, 1), float("inf"), "last_scores"),
        (_ela_state, ("last_scores",), [[0.1]], "last_scores"),
        (_ela_state, ("history", 0, "ranks"), [2], "history"),
        (_ela_state, ("last_step",), FIRST - 1, "last_step"),
        (_ela_state, ("last_step",), None, "last_step"),
        (_ela_state, ("rng_word_pos",), [0], "rng_word_pos"),
        (_ela_state, ("seed",), -1, "seed"),
        (_ela_state, ("version",), 2, "version"),
    ],
)
def test_bad_state_is_refused_naming_the_field(state, path, value, field) -> None:  # type: ignore[no-untyped-def]
    text = _set(state(), path, value)
    with pytest.raises(ValueError, match=rf"^state: .*{field}"):
        RankAllocator.from_json(text)


def test_history_going_backwards_is_refused() -> None:
    state = _ela_state()
    entry = state["history"][0]
    state["history"] = [entry, dict(entry, step=entry["step"] - 1)]
    with pytest.raises(ValueError, match="history: steps must increase"):
        RankAllocator.from_json(json.dumps(state))


def test_state_with_zero_interval_never_reaches_a_panic() -> None:
    # Before validation, this state loaded and step 15 divided by zero inside Rust.
    for state, key in ((_ela_state(), "interval"), (_ada_state(), "delta_t")):
        state["method"][key] = 0
        state.update(last_step=None, history=[], last_scores=[])
        with pytest.raises(ValueError, match=f"state: {key} must be positive, got 0"):
            RankAllocator.from_json(json.dumps(state))


def test_allocation_step_going_backwards_is_refused() -> None:
    alloc = make([2, 2], [4, 4], b=2, k=1)
    alloc.allocate(FIRST + INTERVAL, [[0.1, 0.2], [0.3, 0.4]])
    with pytest.raises(ValueError, match=r"^t must be after the last allocation step"):
        alloc.allocate(FIRST, [[0.1] * r for r in alloc.ranks()])
    with pytest.raises(ValueError, match=r"^t must be after"):
        alloc.allocate(FIRST + INTERVAL, [[0.1] * r for r in alloc.ranks()])


@pytest.mark.parametrize(
    ("call", "exc", "field"),
    [
        (lambda a: a.allocate(-1, [[0.0, 0.0], [0.0, 0.0]]), ValueError, "t must be an int"),
        (lambda a: a.allocate(2**64, [[0.0, 0.0], [0.0, 0.0]]), ValueError, "t must be an int"),
        (lambda a: a.budget(-3), ValueError, "t must be an int"),
        (lambda a: a.is_allocation_step(10**30), ValueError, "t must be an int"),
        (lambda a: a.updates_scores(True), TypeError, "argument 't'"),
        (lambda a: a.updates_scores(1.5), TypeError, "argument 't'"),
    ],
)
def test_bad_step_arguments(call, exc, field) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(exc, match=field):
        call(make([2, 2], [4, 4], b=2, k=1))


@pytest.mark.parametrize(
    ("kwargs", "exc", "field"),
    [
        (dict(interval=0), ValueError, "interval must be positive"),
        (dict(interval=-1), ValueError, "interval must be an int"),
        (dict(interval=2**64), ValueError, "interval must be an int"),
        (dict(k=0), ValueError, "k must be positive"),
        (dict(b0=-2), ValueError, "b0 must be an int"),
        (dict(seed=-1), ValueError, "seed must be an int"),
        (dict(total_steps=0), ValueError, "total_steps must be positive"),
        (dict(t_init=2**64 - 1), ValueError, "t_init"),
        (dict(interval=True), TypeError, "argument 'interval'"),
        (dict(ranks=[2, -1]), ValueError, r"ranks\[1\] must be an int"),
        (dict(capacities=[4, 2**40]), ValueError, "capacities"),
        (dict(ranks=[2]), ValueError, "one entry per module"),
    ],
)
def test_bad_constructor_arguments(kwargs, exc, field) -> None:  # type: ignore[no-untyped-def]
    args = dict(
        names=["a", "b"], ranks=[2, 2], capacities=[4, 4], total_steps=100, t_init=10,
        t_final=10, interval=5,
    )  # fmt: skip
    with pytest.raises(exc, match=field):
        RankAllocator.elalora(**{**args, **kwargs})


def test_adalora_constructor_checks_like_its_state() -> None:
    args = dict(
        names=["a", "b"], ranks=[4, 4], capacities=[4, 4], total_steps=20, t_init=2, t_final=2,
        target_total=4, delta_t=2,
    )  # fmt: skip
    for kwargs, field in (
        (dict(delta_t=0), "delta_t must be positive"),
        (dict(min_rank=2**63), "target_total must lie between"),
        (dict(target_total=9), "target_total must lie between"),
    ):
        with pytest.raises(ValueError, match=field):
            RankAllocator.adalora(**{**args, **kwargs})
