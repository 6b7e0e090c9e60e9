"""`AdapterConfig`: what to adapt and how, validated on construction, JSON-safe."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lorax_core._validation import Instance, Integer, NoneValue, Options, Real, check, check_bool
from lorax_core._validation import describe as _describe
from lorax_core.adapters.init import INIT_METHODS, RESIDUAL_INITS
from lorax_core.adapters.patterns import pattern_key
from lorax_core.adapters.registry import form_names, get_form

__all__ = ["INITS", "RESIDUAL_INITS", "TRAIN_MODES", "AdapterConfig"]

INITS = ("default", *INIT_METHODS)
# ``train`` values: every adapter parameter trains, or only SLoRA's N (IntTune).
TRAIN_MODES = ("all", "intermediate")
_NAME = "AdapterConfig"
_POSITIVE = Real(low=0.0, closed="neither")


def _check_regex(field: str, pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as err:
        raise ValueError(
            f"{_NAME}: {field} must be a valid regular expression, got {pattern!r} ({err})"
        ) from err


def _names(field: str, value: object) -> str | list[str] | None:
    """Validate a PEFT-style module selector: a regex string or a list of name suffixes."""
    if value is None:
        return None
    if isinstance(value, str):
        if not value:
            raise ValueError(f"{_NAME}: {field} must be a non-empty regex, got ''")
        _check_regex(field, value)
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        entries = sorted(value) if isinstance(value, (set, frozenset)) else list(value)
        if not entries:
            raise ValueError(f"{_NAME}: {field} must be a non-empty list, got {_describe(value)}")
        for entry in entries:
            if not isinstance(entry, str) or not entry:
                raise TypeError(
                    f"{_NAME}: {field} entries must be non-empty strings, got {_describe(entry)}"
                )
        return entries
    raise TypeError(
        f"{_NAME}: {field} must be a str (regex) or a list of str, got {_describe(value)} "
        f"({type(value).__name__})"
    )


def _pattern(field: str, value: object, rule: Integer | Real) -> dict[str, Any] | None:
    check(_NAME, field, value, NoneValue(), Instance(Mapping, "a dict of module pattern -> value"))
    if value is None:
        return None
    assert isinstance(value, Mapping)
    out: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"{_NAME}: {field} keys must be non-empty strings, got {key!r}")
        _check_regex(field, key)
        out[key] = check(_NAME, f"{field}[{key!r}]", item, rule)
    return out


@dataclass
class AdapterConfig:
    """Configuration of low-rank adapters, with PEFT's meaning for the shared fields.

    Parameters
    ----------
    method: a registered adapter form (:mod:`lorax_core.adapters.registry`): ``"lora"`` (B·A),
        ``"slora"`` (B·N·A), ``"dora"`` (magnitude/direction), ``"svd"`` (B·diag(E)·A with
        capacity ``r_max``), or one registered elsewhere.
    r: rank of every adapted module unless ``rank_pattern`` says otherwise.
    alpha: scaling numerator; the adapter output is multiplied by ``alpha / r``
        (``alpha / sqrt(r)`` with ``use_rslora``).
    target_modules: modules to adapt — a list of names matched by equality or dotted suffix, a
        regex string that must match the whole name, or ``"all-linear"`` (PEFT's shorthand:
        every ``nn.Linear`` except the output heads, i.e. ``get_output_embeddings()`` such as
        a causal LM's ``lm_head``, and a ``score``/``classifier`` head). Required.
    rank_pattern, alpha_pattern: per-module overrides; keys are regexes matched against a dotted
        suffix of the name up to its end (``"^<full name>$"`` or a plain suffix), first key wins.
    init: ``"default"`` (the form's own, docs/initialisation.md), or ``"nlora"`` (slora),
        ``"nystrom"``, ``"pissa"`` (lora, slora): the inits the form registered, delegated to
        ``lorax_core.adapters.init.initialize``.
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
    untie_weights: give each targeted module whose weight is tied to another parameter (a
        causal LM's ``lm_head`` and its input embedding) its own copy of the weight at inject /
        load, with a warning; the other parameters keep the original tensor. Off, a residual
        init on a tied module is refused, and so are ``merge``/``merged_state_dict`` later
        (:mod:`lorax_core.adapters.tied`, docs/adapters.md).

    The form options (``train``, ``detach_norm``, ``r_max``: the keyword options of a form's
    ``build``) must keep their defaults for a method whose form does not take them.
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
    untie_weights: bool = False

    def __post_init__(self) -> None:
        self.method = check(_NAME, "method", self.method, Options(form_names()))
        form = get_form(self.method)
        self.r = check(_NAME, "r", self.r, Integer(low=1))
        self.alpha = check(_NAME, "alpha", self.alpha, _POSITIVE)
        if self.target_modules is None:
            raise ValueError(
                f"{_NAME}: target_modules must be a list of module names or a regex, got None"
            )
        self.target_modules = _names("target_modules", self.target_modules)
        self.exclude_modules = _names("exclude_modules", self.exclude_modules)
        self.rank_pattern = _pattern("rank_pattern", self.rank_pattern, Integer(low=1))
        self.alpha_pattern = _pattern("alpha_pattern", self.alpha_pattern, _POSITIVE)
        self.init = check(_NAME, "init", self.init, Options(INITS))
        if self.init not in form.inits:
            raise ValueError(
                f"{_NAME}: init must be one of {', '.join(map(repr, form.inits))} for method "
                f"{self.method!r}, got {self.init!r}"
            )
        self.dropout = check(_NAME, "dropout", self.dropout, Real(0.0, 1.0, closed="left"))
        for name in ("use_rslora", "detach_norm", "autocast_adapter_dtype", "untie_weights"):
            setattr(self, name, check_bool(_NAME, name, getattr(self, name)))
        self.train = check(_NAME, "train", self.train, Options(TRAIN_MODES))
        self._check_form_options(form.options)
        if self.r_max is not None:
            self.r_max = check(_NAME, "r_max", self.r_max, Integer(low=max(self.ranks())))
        check(_NAME, "init_options", self.init_options, NoneValue(), Instance(Mapping, "a dict"))
        if self.init_options is not None:
            self.init_options = dict(self.init_options)
            for key in self.init_options:
                if not isinstance(key, str) or not key.isidentifier() or key == "seed":
                    raise ValueError(
                        f"{_NAME}: init_options keys must be option names of the initialiser "
                        f"(the seed is the seed field), got {_describe(key)}"
                    )
        self.seed = check(_NAME, "seed", self.seed, Integer(low=0))

    def _check_form_options(self, accepted: tuple[str, ...]) -> None:
        """Options of other forms keep their defaults (they would be silently ignored)."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name in form_names():
            for option in get_form(name).options:
                value = getattr(self, option)
                if option not in accepted and value != defaults[option]:
                    raise ValueError(
                        f"{_NAME}: {option} must be {defaults[option]!r} for method "
                        f"{self.method!r} (method {name!r} takes it), got {value!r}"
                    )

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
        check("AdapterConfig.from_dict", "data", data, Instance(Mapping, "a dict"))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"AdapterConfig.from_dict: data keys must be AdapterConfig fields, got unknown "
                f"{unknown}"
            )
        return cls(**data)
