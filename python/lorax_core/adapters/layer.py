"""`AdapterLinear`: the common base of every adapter that wraps an ``nn.Linear``.

Shapes: the base weight ``W`` is (out_features, in_features), inputs are (..., in_features),
outputs (..., out_features). Dtypes: adapter parameters live in ``adapter_dtype`` — float32 when
the base weight is float16/bfloat16 and ``autocast_adapter_dtype`` is on (PEFT's default),
otherwise the base weight's dtype. The adapter path casts its input to that dtype, adds its
output to the base output and casts the sum back to the base output's dtype.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import nn

__all__ = ["AdapterLinear", "adapter_dtype_for", "kaiming_uniform_bound"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def adapter_dtype_for(base_dtype: torch.dtype, autocast: bool = True) -> torch.dtype:
    """Adapter parameter dtype for a base weight of ``base_dtype``."""
    return torch.float32 if autocast and base_dtype in _LOW_PRECISION else base_dtype


def kaiming_uniform_bound(fan_in: int) -> float:
    """Bound of ``nn.init.kaiming_uniform_(a=sqrt(5))`` for ``fan_in``: U(-1/sqrt(fan_in), ...)."""
    return 1.0 / math.sqrt(fan_in)


class AdapterLinear(nn.Module, ABC):
    """Base class: ``y = base_layer(x) + adapter(dropout(x))``.

    Subclasses define the adapter parameters, :meth:`combine` and :meth:`delta_weight`.
    ``base_layer`` keeps the original ``nn.Linear`` (weight and bias untouched unless merged or
    residual-initialised), so the base model's state-dict keys reappear under
    ``<module>.base_layer.``.

    Attributes: ``r``, ``alpha``, ``scaling`` (``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA),
    ``merged``, ``in_features``, ``out_features``.
    """

    method: ClassVar[str]
    # Names of the adapter parameters, in a fixed order (state-dict keys ``<module>.<name>``).
    parameter_names: ClassVar[tuple[str, ...]]

    def __init__(
        self,
        base_layer: nn.Linear,
        r: int = 8,
        alpha: float = 16.0,
        *,
        dropout: float = 0.0,
        use_rslora: bool = False,
        autocast_adapter_dtype: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"base_layer must be an nn.Linear, got {type(base_layer).__name__}")
        if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
            raise ValueError(f"r must be a positive int, got {r!r}")
        if not math.isfinite(alpha) or alpha <= 0:
            raise ValueError(f"alpha must be a positive finite number, got {alpha!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.base_layer = base_layer
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.r = r
        self.alpha = float(alpha)
        self.use_rslora = use_rslora
        self.scaling = self.alpha / (math.sqrt(r) if use_rslora else r)
        self.lora_dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.adapter_dtype = adapter_dtype_for(base_layer.weight.dtype, autocast_adapter_dtype)

    # -- construction helpers ----------------------------------------------------------------
    def _new_parameter(self, *shape: int) -> nn.Parameter:
        """An uninitialised adapter parameter on the base weight's device."""
        weight = self.base_layer.weight
        return nn.Parameter(torch.empty(shape, dtype=self.adapter_dtype, device=weight.device))

    @abstractmethod
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Default initialisation (SPEC §5), drawn from ``generator`` (a CPU generator)."""

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

    def extra_repr(self) -> str:
        return f"method={self.method}, r={self.r}, alpha={self.alpha:g}, merged={self.merged}"
