"""`AdapterLinear`: the common base of every adapter form that wraps an ``nn.Linear``.

Shapes: the base weight ``W`` is (out_features, in_features), inputs are (..., in_features),
outputs (..., out_features). Dtypes: adapter parameters live in ``adapter_dtype`` — float32 when
the base weight is float16/bfloat16 and ``autocast_adapter_dtype`` is on (PEFT's default),
otherwise the base weight's dtype. The adapter path casts its input to that dtype, adds its
output to the base output and casts the sum back to the base output's dtype.

The base class holds the constructor every form shares (rank, alpha, dropout, rsLoRA, dtype);
a form adds its own keyword options as the keyword-only parameters of :meth:`build`, which
creates its parameters. See docs/adapters.md.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn

from lorax_core._validation import Instance, Integer, Real, check, check_bool

__all__ = [
    "ADAPTABLE_DTYPES",
    "INIT_BUFFERS",
    "AdapterLinear",
    "LoraFactors",
    "adapter_dtype_for",
    "detached",
    "kaiming_uniform_bound",
    "max_rank",
]

_LOW_PRECISION = (torch.float16, torch.bfloat16)
# Base weight dtypes an adapter can wrap (integer, bool, complex and float8 weights cannot).
ADAPTABLE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Buffers holding the initial factors of a residual init (registered by lorax_core.adapters.init):
# ``init_<name>`` is the initial value of the parameter ``<name>``.
INIT_BUFFERS = ("init_lora_A", "init_lora_B", "init_lora_N")

# ``(B', A', scale)``: an adapter as plain LoRA factors, ΔW = scale · B' (out, k) @ A' (k, in).
LoraFactors = tuple[torch.Tensor, torch.Tensor, float]


def adapter_dtype_for(base_dtype: torch.dtype, autocast: bool = True) -> torch.dtype:
    """Adapter parameter dtype for a base weight of ``base_dtype``."""
    return torch.float32 if autocast and base_dtype in _LOW_PRECISION else base_dtype


def max_rank(base_layer: nn.Linear) -> int:
    """The largest rank an adapter of ``base_layer`` may have: ``min(out, in)`` (the rank of
    any (out × in) matrix), at least 1."""
    return max(1, min(base_layer.in_features, base_layer.out_features))


def detached(tensor: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``tensor`` detached, in ``dtype`` (its own when None); ``lora_factors`` starts from it."""
    return tensor.detach().to(tensor.dtype if dtype is None else dtype)


def kaiming_uniform_bound(fan_in: int) -> float:
    """Bound of ``nn.init.kaiming_uniform_(a=sqrt(5))`` for ``fan_in``: U(-1/sqrt(fan_in), ...)."""
    return 1.0 / math.sqrt(fan_in)


class AdapterLinear(nn.Module, ABC):
    """Base class: ``y = base_layer(x) + adapter(dropout(x))``.

    Subclasses define :meth:`build` (the adapter parameters, and the form's keyword options),
    :meth:`reset_parameters`, :meth:`combine`, :meth:`delta_weight` and :meth:`lora_factors`,
    and are registered with :func:`lorax_core.adapters.registry.register_form`, which sets
    ``method``. ``base_layer`` keeps the original ``nn.Linear`` (weight and bias untouched
    unless merged or residual-initialised), so the base model's state-dict keys reappear under
    ``<module>.base_layer.``.

    Args:
        base_layer: the ``nn.Linear`` to adapt.
        r: rank, an int in ``[1, min(out_features, in_features)]``.
        alpha: scaling numerator (a finite number > 0).
        dropout: dropout probability on the adapter input, in [0, 1).
        use_rslora: scale by ``alpha / sqrt(r)`` instead of ``alpha / r``.
        autocast_adapter_dtype: float32 adapter parameters for a float16/bfloat16 base weight.
        generator: CPU generator the default initialisation draws from.
        **options: the form's own options (the keyword-only parameters of its :meth:`build`).

    Attributes: ``r``, ``alpha``, ``scaling`` (``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA),
    ``merged``, ``in_features``, ``out_features``, ``adapter_dtype``.
    """

    method: ClassVar[str]
    # Names of the adapter parameters, in a fixed order (state-dict keys ``<module>.<name>``).
    parameter_names: ClassVar[tuple[str, ...]]
    # Keys of :meth:`record` that are state restored by :meth:`restore`, not layout to check.
    state_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        base_layer: nn.Linear,
        r: int = 8,
        alpha: float = 16.0,
        *,
        dropout: float = 0.0,
        use_rslora: bool = False,
        autocast_adapter_dtype: bool = True,
        generator: torch.Generator | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check(name, "base_layer", base_layer, Instance(nn.Linear, "an nn.Linear"))
        weight_dtype = base_layer.weight.dtype
        if weight_dtype not in ADAPTABLE_DTYPES:
            raise TypeError(
                f"{name}: base_layer weight must have dtype float16, bfloat16, float32 or "
                f"float64, got {str(weight_dtype).removeprefix('torch.')}"
            )
        r = check(name, "r", r, Integer(low=1, high=max_rank(base_layer)))
        alpha = check(name, "alpha", alpha, Real(low=0.0, closed="neither"))
        dropout = check(name, "dropout", dropout, Real(low=0.0, high=1.0, closed="left"))
        self.use_rslora = check_bool(name, "use_rslora", use_rslora)
        autocast = check_bool(name, "autocast_adapter_dtype", autocast_adapter_dtype)
        unknown = sorted(set(options) - set(self.option_names()))
        if unknown:
            raise TypeError(
                f"{name}: options must be among {list(self.option_names())}, got {unknown}"
            )
        self.base_layer = base_layer
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.r = r
        self.alpha = alpha
        self.scaling = self.alpha / (math.sqrt(r) if self.use_rslora else r)
        self.lora_dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.adapter_dtype = adapter_dtype_for(base_layer.weight.dtype, autocast)
        self.build(**options)
        self.reset_parameters(generator)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The form's own options: the keyword-only parameters of its :meth:`build`."""
        parameters = inspect.signature(cls.build).parameters.values()
        return tuple(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)

    @abstractmethod
    def build(self) -> None:
        """Create the adapter parameters (with :meth:`new_parameter`) and store the options.

        A form that takes options declares them as keyword-only parameters with defaults,
        e.g. ``def build(self, *, train: str = "all")``; they are also ``AdapterConfig`` fields
        of the same name, which ``inject`` passes on.
        """

    def new_parameter(self, *shape: int) -> nn.Parameter:
        """An uninitialised adapter parameter of ``shape`` in ``adapter_dtype`` on W's device."""
        weight = self.base_layer.weight
        return nn.Parameter(torch.empty(shape, dtype=self.adapter_dtype, device=weight.device))

    @abstractmethod
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Default initialisation (docs/initialisation.md), drawn from ``generator`` (CPU)."""

    # -- compute -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (..., in_features) → (..., out_features) in the base output's dtype."""
        result = self.base_layer(x)
        if self.merged:
            return result
        out_dtype = result.dtype
        h = self.lora_dropout(x.to(self.adapter_dtype))
        return self.combine(result, h).to(out_dtype)

    @abstractmethod
    def combine(self, result: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """The base output ``result`` plus the adapter's contribution for input ``h``.

        ``result`` is ``base_layer(x)`` (base dtype), ``h`` the dropped-out input in the adapter
        dtype; the return value may be in either dtype (``forward`` casts it back).
        """

    @abstractmethod
    def delta_weight(self) -> torch.Tensor:
        """The exact ΔW (out_features × in_features, base dtype) this adapter adds to W."""

    @abstractmethod
    def lora_factors(self, dtype: torch.dtype | None = None) -> LoraFactors:
        """This adapter as PEFT LoRA factors ``(B' (out, k), A' (k, in), scale)``, detached.

        For a plain low-rank form ``scale · B' A'`` is its ΔW; a form with exported extras
        (DoRA's magnitude) gives the factors PEFT combines with them. ``dtype`` is the dtype the
        fold is computed and returned in (default: ``adapter_dtype``), on the layer's device.
        """

    def low_rank_product(
        self, A: torch.Tensor, B: torch.Tensor, N: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``scaling · B [N] A`` (out × in) in the base weight's dtype.

        The single place where a dense product of factors is formed (merge, export, residual
        initialisation all use it, so they agree to the bit).
        """
        core = B if N is None else B @ N
        return ((core @ A) * self.scaling).to(self.base_layer.weight.dtype)

    # -- merge -------------------------------------------------------------------------------
    @torch.no_grad()
    def merge(self) -> None:
        """Fold the adapter into ``base_layer.weight``; no-op if already merged."""
        if self.merged:
            return
        self.base_layer.weight.add_(self.delta_weight())
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge` (W restored up to float rounding); no-op if not merged."""
        if not self.merged:
            return
        self.merged = False
        self.base_layer.weight.sub_(self.delta_weight())

    # -- residual inits ----------------------------------------------------------------------
    def init_buffers(self) -> dict[str, torch.Tensor]:
        """The initial factors a residual init registered (``init_lora_A`` …), by name."""
        return {name: b for name in INIT_BUFFERS if (b := self._buffers.get(name)) is not None}

    def residual_factors(
        self, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(B0 [N0], A0)`` of a residual init, detached, in ``dtype``; None without one.

        The base weight then holds ``W − scaling · B0 [N0] A0`` (docs/initialisation.md).
        """
        buffers = self.init_buffers()
        if "init_lora_A" not in buffers:
            return None
        B0 = detached(buffers["init_lora_B"], dtype)
        if "init_lora_N" in buffers:
            B0 = B0 @ detached(buffers["init_lora_N"], dtype)
        return B0, detached(buffers["init_lora_A"], dtype)

    # -- bookkeeping -------------------------------------------------------------------------
    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        """The adapter's parameters by name (frozen ones included)."""
        return {name: getattr(self, name) for name in self.parameter_names}

    def trainable_names(self) -> tuple[str, ...]:
        """Names of the adapter parameters that train (all, unless a subclass restricts it)."""
        return self.parameter_names

    def set_trainable(self) -> None:
        """Freeze the base layer, unfreeze the trainable adapter parameters."""
        self.base_layer.requires_grad_(False)
        trainable = set(self.trainable_names())
        for name, param in self.adapter_parameters().items():
            param.requires_grad_(name in trainable)

    def record(self) -> dict[str, Any]:
        """A JSON-safe description of the layer, saved per module by ``save_adapter``.

        Keys in :attr:`state_keys` are state that :meth:`restore` sets on load; the others are
        layout a loaded file must match.
        """
        return {
            "method": self.method,
            "r": self.r,
            "alpha": self.alpha,
            "in_features": self.in_features,
            "out_features": self.out_features,
        }

    def restore(self, record: dict[str, Any]) -> None:
        """Set the non-tensor state saved in ``record`` (the :attr:`state_keys`); none here."""

    def extra_repr(self) -> str:
        return f"method={self.method}, r={self.r}, alpha={self.alpha:g}, merged={self.merged}"
