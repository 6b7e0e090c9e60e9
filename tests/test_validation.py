"""Declared argument checks against plain comparisons, on every kind of number and non-number."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from lorax_core._validation import (
    Bool,
    Instance,
    Integer,
    NoneValue,
    Options,
    Real,
    Satisfies,
    check,
    check_bool,
    check_options,
    describe,
    is_integer,
    is_real,
    validate_params,
)

CLOSED = ("both", "left", "right", "neither")
MESSAGE = re.compile(r"^f: x must be (?P<rule>.+), got (?P<value>.+)$")


def within(x: float, low: float | None, high: float | None, closed: str) -> bool:
    """The interval test written out case by case."""
    if low is not None and (x < low if closed in ("both", "left") else x <= low):
        return False
    return not (high is not None and (x > high if closed in ("both", "right") else x >= high))


def bounds_text(low: float | None, high: float | None, closed: str) -> str:
    brackets = {"both": "[]", "left": "[)", "right": "(]", "neither": "()"}[closed]
    if low is not None and high is not None:
        return f" in {brackets[0]}{low}, {high}{brackets[1]}"
    if low is not None:
        return f" >= {low}" if closed in ("both", "left") else f" > {low}"
    if high is not None:
        return f" <= {high}" if closed in ("both", "right") else f" < {high}"
    return ""


def raised(value: Any, *constraints: Any) -> BaseException | None:
    try:
        check("f", "x", value, *constraints)
    except (TypeError, ValueError) as err:
        assert MESSAGE.match(str(err)), str(err)
        assert "\n" not in str(err)
        return err
    return None


bounds = st.one_of(st.none(), st.integers(-50, 50))


@given(value=st.integers(), low=bounds, high=bounds, closed=st.sampled_from(CLOSED))
def test_integers_against_the_bounds(value: int, low, high, closed: str) -> None:  # type: ignore[no-untyped-def]
    rule = Integer(low, high, closed)  # type: ignore[arg-type]
    err = raised(value, rule)
    if within(value, low, high, closed):
        assert err is None and check("f", "x", value, rule) == value
    else:
        assert type(err) is ValueError
        assert str(err) == f"f: x must be an int{bounds_text(low, high, closed)}, got {value!r}"


@given(
    value=st.integers(-(2**31), 2**31 - 1),
    dtype=st.sampled_from([np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint32]),
    low=bounds,
    high=bounds,
)
def test_numpy_integers_behave_as_ints(value: int, dtype: type, low, high) -> None:  # type: ignore[no-untyped-def]
    info = np.iinfo(dtype)
    assume(info.min <= value <= info.max)
    scalar = dtype(value)
    rule = Integer(low, high)
    if within(value, low, high, "both"):
        out = check("f", "x", scalar, rule)
        assert type(out) is int and out == value
        assert type(check("f", "x", scalar, Real(low, high))) is float
    else:
        assert type(raised(scalar, rule)) is ValueError


@given(
    value=st.floats(allow_nan=True, allow_infinity=True) | st.integers(),
    low=st.none() | st.floats(-10, 10),
    high=st.none() | st.floats(-10, 10),
    closed=st.sampled_from(CLOSED),
    allow_inf=st.booleans(),
)
def test_reals_against_the_bounds(value, low, high, closed, allow_inf) -> None:  # type: ignore[no-untyped-def]
    rule = Real(low, high, closed, allow_inf)  # type: ignore[arg-type]
    try:
        x = float(value)
    except OverflowError:
        x = math.inf  # an int too large for a float
    ok = (
        not math.isnan(x)
        and (allow_inf or math.isfinite(x))
        and not (isinstance(value, int) and math.isinf(x))
        and within(x, low, high, closed)
    )
    err = raised(value, rule)
    if ok:
        out = check("f", "x", value, rule)
        assert type(out) is float and out == x
        assert check("f", "x", np.float64(value), rule) == x
    else:
        assert type(err) is ValueError
        kind = "a number" if allow_inf else "a finite number"
        assert str(err).startswith(f"f: x must be {kind}{bounds_text(low, high, closed)}, got ")


@given(
    value=st.booleans() | st.sampled_from([np.bool_(True), np.bool_(False)]),
    number=st.sampled_from([Integer(), Integer(0, 1), Real(), Real(0, 1)]),
)
def test_booleans_are_never_numbers(value, number) -> None:  # type: ignore[no-untyped-def]
    err = raised(value, number)
    assert type(err) is TypeError
    assert str(err).endswith(f"got {value!r} ({type(value).__name__})")
    assert not is_integer(value) and not is_real(value)
    assert check_bool("f", "x", value) is bool(value)
    assert check("f", "x", value, Bool()) is bool(value)


@given(
    value=st.integers() | st.floats() | st.text(max_size=4) | st.none() | st.lists(st.integers())
)
def test_non_bools_are_refused_as_bools(value: Any) -> None:
    with pytest.raises(TypeError, match=r"^f: x must be a bool, got "):
        check_bool("f", "x", value)


@given(value=st.floats(allow_nan=True) | st.text(max_size=3) | st.none())
def test_non_integers_are_a_type_error(value: Any) -> None:
    err = raised(value, Integer(0))
    assert type(err) is TypeError
    suffix = "" if value is None else f" ({type(value).__name__})"
    assert str(err) == f"f: x must be an int >= 0, got {describe(value)}{suffix}"


@given(value=st.text(max_size=5) | st.integers() | st.none())
def test_options(value: Any) -> None:
    options = ("mean", "cls", "")
    err = raised(value, Options(options))
    if value in options:
        assert err is None and check_options("f", "x", value, options) == value
    else:
        assert type(err) is (ValueError if isinstance(value, str) else TypeError)
        assert "must be one of 'mean', 'cls', ''" in str(err)


def test_several_constraints_and_their_rules() -> None:
    rules = (Integer(1), Options(("uniform",)), NoneValue())
    assert check("f", "x", None, *rules) is None
    assert check("f", "x", "uniform", *rules) == "uniform"
    with pytest.raises(
        ValueError, match=r"^f: x must be an int >= 1, one of 'uniform' or None, got 0$"
    ):
        check("f", "x", 0, *rules)
    with pytest.raises(TypeError, match=r"got 2.5 \(float\)$"):
        check("f", "x", 2.5, *rules)
    with pytest.raises(ValueError, match="constraints must not be empty"):
        check("f", "x", 1)
    assert check("f", "x", 3, Instance(int)) == 3
    with pytest.raises(TypeError, match="must be a int, got True"):
        check("f", "x", True, Instance(int))
    assert check("f", "x", True, Instance((int, bool))) is True
    assert Instance(list, "a list of names").rule == "a list of names"
    even = Satisfies(int, lambda v: v % 2 == 0, "an even int")
    assert check("f", "x", 4, even) == 4
    with pytest.raises(ValueError, match=r"^f: x must be an even int, got 3$"):
        check("f", "x", 3, even)
    assert describe("x" * 200).endswith("...") and len(describe("x" * 200)) == 80
    assert Real(0, allow_inf=True).accepts(math.inf)


def test_validate_params() -> None:
    @validate_params(r=Integer(1), alpha=[Real(0, closed="neither"), NoneValue()], flag=Bool())
    def scale(r: int, alpha: float | None = None, *, flag: bool = False) -> tuple[Any, ...]:
        return r, alpha, flag

    assert scale(np.int64(3), np.float32(0.5), flag=np.bool_(True)) == (3, 0.5, True)
    assert [type(v) for v in scale(np.int64(3), np.float32(0.5))] == [int, float, bool]
    assert scale(r=2) == (2, None, False)
    assert scale.constraints["alpha"] == (Real(0, closed="neither"), NoneValue())  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match=r"^test_validate_params.<locals>.scale: r must be an int"):
        scale(True)
    with pytest.raises(
        ValueError, match=r"scale: alpha must be a finite number > 0 or None, got 0"
    ):
        scale(1, 0)
    with pytest.raises(TypeError, match="flag must be a bool, got 1 \\(int\\)"):
        scale(1, flag=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="missing a required argument"):
        scale()  # type: ignore[call-arg]

    @validate_params("lorax_core.plan", budget=Integer(1))
    def plan(budget: int = 0) -> int:
        return budget

    with pytest.raises(ValueError, match=r"^lorax_core.plan: budget must be an int >= 1, got 0$"):
        plan()  # defaults are checked too
    assert plan.__name__ == "plan"
    with pytest.raises(TypeError, match=r"has no parameters \['c'\]"):
        validate_params(c=Real())(plan)


def test_duck_type_failures_are_type_errors() -> None:
    from lorax_core._validation import duck_type

    rule = duck_type(callable, "a callable")
    assert check("f", "fn", len, rule) is len
    with pytest.raises(TypeError, match=r"^f: fn must be a callable, got 3 \(int\)$"):
        check("f", "fn", 3, rule)
