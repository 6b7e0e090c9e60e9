"""`AdapterConfig`: what to adapt and how, validated on construction, JSON-safe."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lorax_core.adapters.patterns import pattern_key

__all__ = ["INITS", "METHODS", "RESIDUAL_INITS", "AdapterConfig"]

METHODS = ("lora", "slora", "dora", "svd")
INITS = ("default", "nlora", "nystrom", "pissa")
# Inits that subtract the initial product from the base weight so the model is unchanged at init.
RESIDUAL_INITS = ("nystrom", "pissa")
TRAIN_MODES = ("all", "intermediate")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_regex(field: str, pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as err:
        raise ValueError(f"{field}: {pattern!r} is not a valid regular expression ({err})") from err


def _names(field: str, value: object) -> str | list[str] | None:
    """Validate a PEFT-style module selector: a regex string or a list of name suffixes."""
    if value is None:
        return None
    if isinstance(value, str):
        if not value:
            raise ValueError(f"{field} must not be an empty string")
        _check_regex(field, value)
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        entries = sorted(value) if isinstance(value, (set, frozenset)) else list(value)
        if not entries:
            raise ValueError(f"{field} must not be empty")
        for entry in entries:
            if not isinstance(entry, str) or not entry:
                raise TypeError(f"{field} entries must be non-empty strings, got {entry!r}")
        return entries
    raise TypeError(f"{field} must be a str (regex) or a list of str, got {type(value).__name__}")


def _pattern(field: str, value: object, integer: bool) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError(f"{field} must be a dict of module pattern -> value, got {type(value)}")
    out: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"{field} keys must be non-empty strings, got {key!r}")
        _check_regex(field, key)
        if integer:
            if not _is_int(item) or item <= 0:
                raise ValueError(f"{field}[{key!r}] must be a positive int, got {item!r}")
            out[key] = int(item)
        else:
            if not _is_real(item) or not math.isfinite(item) or item <= 0:
                raise ValueError(f"{field}[{key!r}] must be a positive finite number, got {item!r}")
            out[key] = float(item)
    return out


@dataclass
class AdapterConfig:
    """Configuration of low-rank adapters, with PEFT's meaning for the shared fields.

    Parameters
    ----------
    method: ``"lora"`` (B·A), ``"slora"`` (B·N·A), ``"dora"`` (magnitude/direction) or ``"svd"``
        (B·diag(E)·A with capacity ``r_max``).
    r: rank of every adapted module unless ``rank_pattern`` says otherwise.
    alpha: scaling numerator; the adapter output is multiplied by ``alpha / r``
        (``alpha / sqrt(r)`` with ``use_rslora``).
    target_modules: modules to adapt — a list of names matched by equality or dotted suffix, or a
        regex string that must match the whole name. Required.
    rank_pattern, alpha_pattern: per-module overrides; keys are regexes matched against a dotted
        suffix of the name up to its end (``"^<full name>$"`` or a plain suffix), first key wins.
    init: ``"default"`` (SPEC §5), or ``"nlora"``, ``"nystrom"``, ``"pissa"`` (lora/slora only),
        delegated to ``lorax_core.init.initialize``.
    dropout: dropout probability on the adapter input.
    use_rslora: scale by ``alpha / sqrt(r)`` instead of ``alpha / r``.
    train: ``"all"`` or ``"intermediate"`` (IntTune: only ``lora_N`` trains; slora only).
    detach_norm: DoRA: treat the row norm as a constant in backward (the DoRA paper's choice).
    r_max: SVD form capacity (default: the module's rank); must be ≥ every module's rank.
    init_options: keyword arguments for the initialiser (e.g. ``oversample``, ``svd``).
    seed: seed of the adapter initialisation; each module derives its own from it and its name.
    exclude_modules: modules never adapted (same forms as ``target_modules``).
    autocast_adapter_dtype: keep adapter parameters in float32 when the base weight is
        float16/bfloat16 (as PEFT does); otherwise adapters use the base weight's dtype.
    """

    method: str = "lora"
    r: int = 8
    alpha: float = 16.0
    target_modules: str | list[str] | None = None
    rank_pattern: dict[str, int] | None = None
    alpha_pattern: dict[str, float] | None = None
    init: str = "default"
    dropout: float = 0.0
    use_rslora: bool = False
    train: str = "all"
    detach_norm: bool = True
    r_max: int | None = None
    init_options: dict[str, Any] | None = None
    seed: int = 0
    exclude_modules: str | list[str] | None = None
    autocast_adapter_dtype: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if not _is_int(self.r) or self.r <= 0:
            raise ValueError(f"r must be a positive int, got {self.r!r}")
        if not _is_real(self.alpha) or not math.isfinite(self.alpha) or self.alpha <= 0:
            raise ValueError(f"alpha must be a positive finite number, got {self.alpha!r}")
        self.alpha = float(self.alpha)
        if self.target_modules is None:
            raise ValueError("target_modules is required (a list of module names or a regex)")
        self.target_modules = _names("target_modules", self.target_modules)
        self.exclude_modules = _names("exclude_modules", self.exclude_modules)
        self.rank_pattern = _pattern("rank_pattern", self.rank_pattern, integer=True)
        self.alpha_pattern = _pattern("alpha_pattern", self.alpha_pattern, integer=False)
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.init != "default" and self.method not in ("lora", "slora"):
            raise ValueError(f"init={self.init!r} is only available for method 'lora' or 'slora'")
        if not _is_real(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        self.dropout = float(self.dropout)
        for field in ("use_rslora", "detach_norm", "autocast_adapter_dtype"):
            if not isinstance(getattr(self, field), bool):
                raise TypeError(f"{field} must be a bool, got {getattr(self, field)!r}")
        if self.train not in TRAIN_MODES:
            raise ValueError(f"train must be one of {TRAIN_MODES}, got {self.train!r}")
        if self.train == "intermediate" and self.method != "slora":
            raise ValueError("train='intermediate' (IntTune) requires method='slora'")
        if self.r_max is not None:
            if self.method != "svd":
                raise ValueError("r_max applies only to method='svd'")
            if not _is_int(self.r_max) or self.r_max < max(self.ranks()):
                raise ValueError(
                    f"r_max must be an int ≥ every module rank ({max(self.ranks())}), "
                    f"got {self.r_max!r}"
                )
        if self.init_options is not None and not isinstance(self.init_options, Mapping):
            raise TypeError(f"init_options must be a dict, got {type(self.init_options).__name__}")
        if self.init_options is not None:
            self.init_options = dict(self.init_options)
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")

    def ranks(self) -> list[int]:
        """The default rank and every rank in ``rank_pattern``."""
        return [self.r, *(self.rank_pattern or {}).values()]

    def rank_for(self, name: str) -> int:
        """Rank of module ``name`` (``rank_pattern`` first key that applies, else ``r``)."""
        key = pattern_key((self.rank_pattern or {}).keys(), name)
        return self.r if key is None else (self.rank_pattern or {})[key]

    def alpha_for(self, name: str) -> float:
        """Alpha of module ``name`` (``alpha_pattern`` first key that applies, else ``alpha``)."""
        key = pattern_key((self.alpha_pattern or {}).keys(), name)
        return self.alpha if key is None else (self.alpha_pattern or {})[key]

    def module_seed(self, name: str) -> int:
        """A stable 63-bit seed for module ``name``, derived from ``seed`` (same on every run)."""
        digest = hashlib.sha256(f"{self.seed}:{name}".encode()).digest()
        return int.from_bytes(digest[:8], "little") >> 1

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (lists and dicts copied)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdapterConfig:
        """Build and validate a config from :meth:`to_dict` output; unknown keys are an error."""
        if not isinstance(data, Mapping):
            raise TypeError(f"data must be a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown AdapterConfig fields: {unknown}")
        return cls(**data)
