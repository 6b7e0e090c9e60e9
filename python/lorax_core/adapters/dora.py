"""DoRA: ``W' = m ⊙ (W + s·B A) / ‖W + s·B A‖_row`` (magnitude × direction).

The row norm is computed without forming the out × in matrix (docs/adapters.md):
``n² = ‖W‖²_row + 2s·rowsum(B ⊙ (W Aᵀ)) + s²·rowsum((B (A Aᵀ)) ⊙ B)``. Its temporaries are
out × r and r × r; it is recomputed on each call (about 1/tokens of the cost of ``W x``), so it
always matches the current W. On CUDA the detached norm is one fused kernel that reads W once
(:func:`lorax_core.kernels.dora_row_norm`); the torch reference runs elsewhere and whenever the
norm needs a gradient (``detach_norm=False``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.functional import linear

from lorax_core._validation import check_bool
from lorax_core.adapters.layer import AdapterLinear, LoraFactors, detached
from lorax_core.adapters.lora import reset_lora_pair
from lorax_core.adapters.registry import register_form
from lorax_core.kernels import dora_row_norm

__all__ = ["DoraLinear", "dora_row_norm"]


@register_form(
    "dora",
    peft_config={"use_dora": True},
    peft_tensors={"lora_magnitude_vector": "lora_magnitude"},
    peft_native=True,
)
class DoraLinear(AdapterLinear):
    """DoRA on an ``nn.Linear``: ``lora_A`` (r, in), ``lora_B`` (out, r), ``lora_magnitude`` (out,).

    Forward: ``base(x) + (m/n − 1) ⊙ (W x) + (m/n) ⊙ s·B A x`` with n the row norm of
    ``W + s·B A``, detached from the graph unless ``detach_norm=False``. With dropout active
    (training, p > 0) the dropped input goes through the whole DoRA term,
    ``base(x) + (W' − W) dropout(x)``, as in PEFT. Init: A, B as LoRA; m = ‖W‖_row, so the
    output equals the base layer's. Exported to PEFT with ``use_dora`` as A, B and the
    magnitude (``lora_magnitude_vector``).
    """

    parameter_names = ("lora_A", "lora_B", "lora_magnitude")

    def build(self, *, detach_norm: bool = True) -> None:
        self.detach_norm = check_bool(type(self).__name__, "detach_norm", detach_norm)
        self.lora_A = self.new_parameter(self.r, self.in_features)
        self.lora_B = self.new_parameter(self.out_features, self.r)
        self.lora_magnitude = self.new_parameter(self.out_features)
        # Row norm of W + s·B A at merge time; unmerge needs it.
        self._merge_norm: torch.Tensor | None = None

    # Parameter groups of the magnitude/direction split (BiDoRA trains them on separate data).
    direction_names: tuple[str, ...] = ("lora_A", "lora_B")
    magnitude_names: tuple[str, ...] = ("lora_magnitude",)

    def direction_parameters(self) -> list[nn.Parameter]:
        """The direction factors ``[lora_A (r, in), lora_B (out, r)]``."""
        return [getattr(self, name) for name in self.direction_names]

    def magnitude_parameters(self) -> list[nn.Parameter]:
        """The magnitude ``[lora_magnitude (out,)]``."""
        return [getattr(self, name) for name in self.magnitude_names]

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        reset_lora_pair(self.lora_A, self.lora_B, generator)
        self.reset_magnitude()

    @torch.no_grad()
    def reset_magnitude(self) -> None:
        """Set m to the current row norms of ``W + s·B A`` (the output is then the base's)."""
        self.lora_magnitude.copy_(self.weight_norm())

    def weight_norm(self) -> torch.Tensor:
        """Row norms of ``W + s·B A`` of the unmerged weight, shape (out,), adapter dtype."""
        if self.merged:
            raise RuntimeError("weight_norm of a merged DoRA layer; unmerge first")
        return dora_row_norm(self.base_layer.weight, self.lora_A, self.lora_B, self.scaling)

    def combine(self, result: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """``result + (m/n − 1) ⊙ base + (m/n) ⊙ s·B A h``, reassociated so that the (T, out)
        work is two ops: the per-row factor ``s·m/n`` is folded into B (out × r) and, without
        dropout, ``result + (m/n − 1)(result − b) = (m/n) result + (1 − m/n) b`` with the bias
        term folded into the same ``addmm`` as an extra rank column (docs/kernels.md)."""
        if self.detach_norm:
            with torch.no_grad():
                norm = self.weight_norm()
        else:
            norm = self.weight_norm()
        scale = self.lora_magnitude / norm
        u = linear(h, self.lora_A)  # (..., r)
        folded_B = self.lora_B * (scale * self.scaling).unsqueeze(1)  # (out, r)
        bias = self.base_layer.bias
        if isinstance(self.lora_dropout, nn.Identity) or not self.training:
            start = result * scale
            if bias is not None:
                u = torch.cat([u, u.new_ones((*u.shape[:-1], 1))], dim=-1)
                folded_B = torch.cat([folded_B, (bias * (1 - scale)).unsqueeze(1)], dim=1)
        else:  # the dropped-out input differs from x: W h needs its own product
            weight = self.base_layer.weight
            start = result + (scale - 1) * linear(h.to(weight.dtype), weight)
        lead = start.shape[:-1]
        flat = torch.addmm(
            start.reshape(-1, start.shape[-1]), u.reshape(-1, u.shape[-1]), folded_B.t()
        )
        return flat.view(*lead, flat.shape[-1])

    def _dense_direction(self) -> torch.Tensor:
        """``W + s·B A`` of the unmerged W, (out, in) in the adapter dtype."""
        weight = self.base_layer.weight.to(self.adapter_dtype)
        return weight + (self.lora_B @ self.lora_A) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        norm = self.weight_norm()
        merged = (self.lora_magnitude / norm).unsqueeze(1) * self._dense_direction()
        self._merge_norm = norm
        self.base_layer.weight.copy_(merged)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        self.base_layer.weight.copy_(self._unmerged_weight())
        self.merged = False
        self._merge_norm = None

    def _unmerged_weight(self) -> torch.Tensor:
        """W recovered from a merged layer: ``W'/(m/n) − s·B A`` (adapter dtype)."""
        if self._merge_norm is None:
            raise RuntimeError("DoRA layer is not merged")
        weight = self.base_layer.weight.to(self.adapter_dtype)
        factor = (self.lora_magnitude / self._merge_norm).unsqueeze(1)
        return weight / factor - (self.lora_B @ self.lora_A) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """``W' − W`` (out × in, base dtype), whether or not the layer is merged."""
        weight_dtype = self.base_layer.weight.dtype
        current = self.base_layer.weight.to(self.adapter_dtype)
        if self.merged:
            return (current - self._unmerged_weight()).to(weight_dtype)
        norm = self.weight_norm()
        if self.detach_norm:
            norm = norm.detach()
        adapted = (self.lora_magnitude / norm).unsqueeze(1) * self._dense_direction()
        return (adapted - current).to(weight_dtype)

    def lora_factors(self, dtype: torch.dtype | None = None) -> LoraFactors:
        """The direction's factors ``(B, A, scaling)``; PEFT adds the magnitude to them."""
        return detached(self.lora_B, dtype), detached(self.lora_A, dtype), self.scaling
