"""Declared argument checks shared by every public entry point.

One message shape everywhere: ``<function>: <argument> must be <rule>, got <value>``.
A constraint describes itself (``rule``) and tests a value (``accepts``); :func:`check`
runs several against one argument and raises ``TypeError`` when no constraint accepts
the value's *type*, ``ValueError`` when the type is right but the value is not.

>>> check("inject", "r", 8, Integer(low=1))
8
>>> check("inject", "r", 0, Integer(low=1))
Traceback (most recent call last):
ValueError: inject: r must be an int >= 1, got 0

Booleans are never accepted as numbers (``True`` is not a rank). NumPy scalars are, and are
returned as Python ``int``/``float``.

:func:`validate_params` declares the checks of a function's arguments once, beside its
signature, and runs them on every call:

>>> @validate_params(r=Integer(low=1), alpha=[Real(low=0, closed="neither"), NoneValue()])
... def scale(r, alpha=None):
...     return r if alpha is None else alpha / r
>>> scale(True)
Traceback (most recent call last):
TypeError: scale: r must be an int >= 1, got True (bool)

See docs/validation.md.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np

__all__ = [
    "Bool",
    "Constraint",
    "Instance",
    "Integer",
    "NoneValue",
    "Options",
    "Real",
    "Satisfies",
    "check",
    "check_bool",
    "check_options",
    "describe",
    "duck_type",
    "is_bool",
    "is_integer",
    "is_real",
    "rule_text",
    "validate_params",
]

F = TypeVar("F", bound=Callable[..., Any])

Closed = Literal["both", "left", "right", "neither"]


def is_integer(value: object) -> bool:
    """Whether ``value`` is an integer (Python or NumPy), not a bool."""
    if type(value) is int:  # the common case, without the ABC check
        return True
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """Whether ``value`` is a real number (Python or NumPy), not a bool."""
    if type(value) is float or type(value) is int:  # the common cases, without the ABC check
        return True
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_bool(value: object) -> bool:
    """Whether ``value`` is a bool (Python or ``numpy.bool_``)."""
    return isinstance(value, (bool, np.bool_))


def describe(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Constraint(ABC):
    """A rule an argument may satisfy. Subclasses set ``rule`` and implement the tests."""

    rule: str = ""

    @abstractmethod
    def accepts_type(self, value: object) -> bool:
        """Whether ``value`` has a type this rule speaks of (else it is a ``TypeError``)."""

    @abstractmethod
    def accepts(self, value: object) -> bool:
        """Whether ``value`` satisfies the rule (its type already accepted)."""

    def convert(self, value: Any) -> Any:
        """The value in its canonical Python type (e.g. ``np.int64`` → ``int``)."""
        return value


def _bounds_text(low: float | None, high: float | None, closed: Closed) -> str:
    left = closed in ("both", "left")
    right = closed in ("both", "right")
    if low is not None and high is not None:
        return f"in {'[' if left else '('}{low}, {high}{']' if right else ')'}"
    if low is not None:
        return f">= {low}" if left else f"> {low}"
    if high is not None:
        return f"<= {high}" if right else f"< {high}"
    return ""


def _within(value: float, low: float | None, high: float | None, closed: Closed) -> bool:
    below = low is not None and (value < low or (value == low and closed not in ("both", "left")))
    right_open = closed not in ("both", "right")
    above = high is not None and (value > high or (value == high and right_open))
    return not (below or above)


@dataclass(frozen=True)
class Integer(Constraint):
    """An int (not a bool) within ``[low, high]`` (ends per ``closed``; ``None`` = unbounded)."""

    low: int | None = None
    high: int | None = None
    closed: Closed = "both"

    @property
    def rule(self) -> str:  # type: ignore[override]
        bounds = _bounds_text(self.low, self.high, self.closed)
        return f"an int {bounds}".rstrip()

    def accepts_type(self, value: object) -> bool:
        return is_integer(value)

    def accepts(self, value: object) -> bool:
        return _within(int(value), self.low, self.high, self.closed)  # type: ignore[call-overload]

    def convert(self, value: Any) -> int:
        return int(value)


@dataclass(frozen=True)
class Real(Constraint):
    """A finite real number (int or float, not a bool) within the bounds."""

    low: float | None = None
    high: float | None = None
    closed: Closed = "both"
    allow_inf: bool = False

    @property
    def rule(self) -> str:  # type: ignore[override]
        bounds = _bounds_text(self.low, self.high, self.closed)
        kind = "a number" if self.allow_inf else "a finite number"
        return f"{kind} {bounds}".rstrip()

    def accepts_type(self, value: object) -> bool:
        return is_real(value)

    def accepts(self, value: object) -> bool:
        try:
            x = float(value)  # type: ignore[arg-type]
        except OverflowError:  # an int beyond the float range is not a usable number
            return False
        if math.isnan(x) or (math.isinf(x) and not self.allow_inf):
            return False
        return _within(x, self.low, self.high, self.closed)

    def convert(self, value: Any) -> float:
        return float(value)


@dataclass(frozen=True)
class Bool(Constraint):
    """A bool (``numpy.bool_`` accepted, returned as ``bool``); never an int."""

    rule: str = "a bool"  # type: ignore[misc]

    def accepts_type(self, value: object) -> bool:
        return is_bool(value)

    def accepts(self, value: object) -> bool:
        return True

    def convert(self, value: Any) -> bool:
        return bool(value)


@dataclass(frozen=True)
class Options(Constraint):
    """One of a fixed set of strings."""

    options: tuple[str, ...]

    @property
    def rule(self) -> str:  # type: ignore[override]
        return "one of " + ", ".join(repr(o) for o in self.options)

    def accepts_type(self, value: object) -> bool:
        return isinstance(value, str)

    def accepts(self, value: object) -> bool:
        return value in self.options


@dataclass(frozen=True)
class Instance(Constraint):
    """An instance of ``kind`` (a type or tuple of types)."""

    kind: type | tuple[type, ...]
    name: str = ""

    @property
    def rule(self) -> str:  # type: ignore[override]
        if self.name:
            return self.name
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        return "a " + " or ".join(k.__name__ for k in kinds)

    def accepts_type(self, value: object) -> bool:
        return isinstance(value, self.kind) and not (
            isinstance(value, bool) and bool not in _as_tuple(self.kind)
        )

    def accepts(self, value: object) -> bool:
        return True


@dataclass(frozen=True)
class NoneValue(Constraint):
    """``None``."""

    rule: str = "None"  # type: ignore[misc]

    def accepts_type(self, value: object) -> bool:
        return value is None

    def accepts(self, value: object) -> bool:
        return True


@dataclass(frozen=True)
class Satisfies(Constraint):
    """Any value of ``kind`` for which ``predicate`` holds (``rule`` says what it means).

    With ``duck=True`` the predicate decides the value's *type* (a value failing it is a
    ``TypeError``): see :func:`duck_type`.
    """

    kind: type | tuple[type, ...]
    predicate: Callable[[Any], bool]
    text: str
    duck: bool = False

    @property
    def rule(self) -> str:  # type: ignore[override]
        return self.text

    def accepts_type(self, value: object) -> bool:
        if not isinstance(value, self.kind) or isinstance(value, bool):
            return False
        return not self.duck or bool(self.predicate(value))

    def accepts(self, value: object) -> bool:
        return self.duck or bool(self.predicate(value))


def duck_type(predicate: Callable[[object], bool], text: str) -> Satisfies:
    """Values for which ``predicate`` holds (e.g. ``callable``); any other is a ``TypeError``."""
    return Satisfies(object, predicate, text, duck=True)


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def rule_text(constraints: Iterable[Constraint]) -> str:
    """The rules of ``constraints`` as one phrase: ``"an int >= 1, 'uniform' or None"``."""
    rules = [c.rule for c in constraints]
    return rules[0] if len(rules) == 1 else ", ".join(rules[:-1]) + " or " + rules[-1]


def check(function: str, argument: str, value: Any, *constraints: Constraint) -> Any:
    """Return ``value`` (canonicalised) if one of ``constraints`` accepts it, else raise.

    Args:
        function: the public name the user called (``"inject"``, ``"TwoNN.fit"``).
        argument: the argument's name as the user wrote it (``"r"``, ``"config.alpha"``).
        value: what the user passed.
        constraints: the accepted forms; at least one.

    Raises:
        TypeError: no constraint accepts the value's type.
        ValueError: a constraint accepts the type but not the value.
    """
    if not constraints:
        raise ValueError("check: constraints must not be empty")
    typed = [c for c in constraints if c.accepts_type(value)]
    for c in typed:
        if c.accepts(value):
            return c.convert(value)
    error = ValueError if typed else TypeError
    shown = (
        describe(value) if typed or value is None else f"{describe(value)} ({type(value).__name__})"
    )
    raise error(f"{function}: {argument} must be {rule_text(constraints)}, got {shown}")


def check_bool(function: str, argument: str, value: Any) -> bool:
    """``value`` if it is a bool (``numpy.bool_`` accepted), else ``TypeError``."""
    return bool(check(function, argument, value, Bool()))


def check_options(function: str, argument: str, value: Any, options: Iterable[str]) -> str:
    """``value`` if it is one of ``options``, else a ``ValueError``/``TypeError``."""
    return str(check(function, argument, value, Options(tuple(options))))


def validate_params(
    name: str | None = None, /, **constraints: Constraint | Sequence[Constraint]
) -> Callable[[F], F]:
    """Decorate a function so that each named argument is checked on every call.

    Args:
        name: the function's name in messages; defaults to its ``__qualname__``
            (``"RankPlan.from_dict"`` for a method).
        constraints: argument name -> a constraint, or a sequence of them (any may accept).
            Defaults are checked too. The function receives the canonicalised values
            (:meth:`Constraint.convert`, e.g. ``np.int64(3)`` as ``3``). The decorated
            function's ``constraints`` attribute maps each name to its tuple of constraints,
            for front ends (a command line) that check the same arguments themselves.

    Raises:
        TypeError: at decoration, when a constraint names no parameter of the function;
            at a call, see :func:`check`.
        ValueError: at a call, see :func:`check`.
    """

    def decorate(func: F) -> F:
        signature = inspect.signature(func)
        unknown = sorted(set(constraints) - set(signature.parameters))
        if unknown:
            raise TypeError(f"validate_params: {func.__qualname__} has no parameters {unknown}")
        shown = name or func.__qualname__
        rules = {
            arg: (c,) if isinstance(c, Constraint) else tuple(c) for arg, c in constraints.items()
        }

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            for arg, accepted in rules.items():
                bound.arguments[arg] = check(shown, arg, bound.arguments[arg], *accepted)
            return func(*bound.args, **bound.kwargs)

        wrapper.constraints = rules  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate
