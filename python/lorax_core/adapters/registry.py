"""The adapter-form registry: every form (lora, slora, dora, svd, …) declares itself once.

A form is an :class:`~lorax_core.adapters.layer.AdapterLinear` subclass registered under a name
(the ``AdapterConfig.method`` value) with :func:`register_form`. The layer class supplies the
compute, ``delta_weight`` (hence merge/unmerge), ``lora_factors`` (its reduction to plain LoRA
factors), ``record``/``restore`` (its non-tensor state) and its options (the keyword-only
parameters of ``build``); the registration adds what the rest of the package needs:

- ``inits``: the ``AdapterConfig.init`` values the form supports;
- ``peft_config``: the PEFT ``adapter_config.json`` flags its export sets (DoRA:
  ``use_dora=True``), ``peft_tensors`` the tensors it exports beside ``lora_A``/``lora_B``
  (PEFT key suffix → parameter name, DoRA: ``lora_magnitude_vector`` → ``lora_magnitude``);
- ``peft_native``: a PEFT adapter with these flags reads back into this form exactly, its
  parameters being ``lora_A``, ``lora_B`` and the ``peft_tensors`` (``import_peft`` uses it).

``inject``, ``AdapterConfig`` validation, ``save_adapter``/``load_adapter`` and the PEFT
exporter and importer only go through this registry, so a form registered elsewhere (a test,
a user's package) gets all of them. See docs/adapters.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

from lorax_core._validation import Options, Satisfies, check, check_bool
from lorax_core.adapters.layer import AdapterLinear

__all__ = [
    "AdapterForm",
    "form_names",
    "form_of",
    "get_form",
    "register_form",
    "unregister_form",
]

L = TypeVar("L", bound=type[AdapterLinear])

_FORMS: dict[str, AdapterForm] = {}


@dataclass(frozen=True)
class AdapterForm:
    """What the package knows about one adapter form (see the module docstring)."""

    name: str
    layer: type[AdapterLinear]
    inits: tuple[str, ...] = ("default",)
    peft_config: Mapping[str, Any] = field(default_factory=dict)
    peft_tensors: Mapping[str, str] = field(default_factory=dict)
    peft_native: bool = False

    @property
    def options(self) -> tuple[str, ...]:
        """The ``AdapterConfig`` fields the layer takes as keyword options."""
        return self.layer.option_names()


def register_form(
    name: str,
    *,
    inits: tuple[str, ...] = ("default",),
    peft_config: Mapping[str, Any] | None = None,
    peft_tensors: Mapping[str, str] | None = None,
    peft_native: bool = False,
) -> Callable[[L], L]:
    """Class decorator: register an ``AdapterLinear`` subclass as the form ``name``.

    Sets ``cls.method = name``. Raises ``ValueError`` if ``name`` is taken by another class,
    an option is not an ``AdapterConfig`` field, an init is unknown, or an exported tensor is
    not a parameter of the form; ``TypeError`` for a class that is not an ``AdapterLinear``.
    """
    function = "register_form"
    check(function, "name", name, Satisfies(str, str.isidentifier, "an identifier"))
    check_bool(function, "peft_native", peft_native)

    def decorate(cls: L) -> L:
        if not (isinstance(cls, type) and issubclass(cls, AdapterLinear)):
            raise TypeError(f"{function}: cls must be an AdapterLinear subclass, got {cls!r}")
        existing = _FORMS.get(name)
        if existing is not None and existing.layer.__qualname__ != cls.__qualname__:
            raise ValueError(
                f"{function}: name must be unused, got {name!r} (taken by "
                f"{existing.layer.__qualname__})"
            )
        from lorax_core.adapters.config import AdapterConfig
        from lorax_core.adapters.init import INIT_METHODS

        fields = {f.name for f in dataclasses.fields(AdapterConfig)}
        for option in cls.option_names():
            check(function, f"{cls.__name__} option", option, Options(tuple(sorted(fields))))
        for init in inits:
            check(function, "inits entry", init, Options(("default", *INIT_METHODS)))
        exported = dict(peft_tensors or {})
        for suffix, parameter in exported.items():
            check(function, f"peft_tensors[{suffix!r}]", parameter, Options(cls.parameter_names))
        cls.method = name
        _FORMS[name] = AdapterForm(
            name=name,
            layer=cls,
            inits=tuple(inits),
            peft_config=MappingProxyType(dict(peft_config or {})),
            peft_tensors=MappingProxyType(exported),
            peft_native=peft_native,
        )
        return cls

    return decorate


def unregister_form(name: str) -> None:
    """Remove the form ``name`` (a ``ValueError`` if it is not registered)."""
    check("unregister_form", "name", name, Options(form_names()))
    del _FORMS[name]


def form_names() -> tuple[str, ...]:
    """The registered form names, in registration order."""
    return tuple(_FORMS)


def get_form(name: str) -> AdapterForm:
    """The form registered as ``name``; ``ValueError`` naming the registered ones otherwise."""
    return _FORMS[check("get_form", "name", name, Options(form_names()))]


def form_of(layer: AdapterLinear) -> AdapterForm:
    """The registered form of an adapter layer (by its ``method``)."""
    method = getattr(type(layer), "method", None)
    form = _FORMS.get(method) if isinstance(method, str) else None
    if form is None or not isinstance(layer, form.layer):
        raise ValueError(
            f"form_of: layer must be an instance of a registered adapter form, got "
            f"{type(layer).__name__} (registered: {list(form_names())})"
        )
    return form
