"""``export_peft``: write lorax_core adapters as a PEFT LoRA/DoRA adapter folder.

The folder layout is :mod:`lorax_core.integrations.peft.format`'s (docs/peft-interop.md).
Every adapter form is written through its registration (:mod:`lorax_core.adapters.registry`)
as a plain LoRA against the model's *original* weights, ΔW = scaling · B' A', with
``(B', A', scaling) = layer.lora_factors()``, the form's PEFT settings (DoRA: ``use_dora``) in
the config and its exported tensors (DoRA: ``lora_magnitude_vector``) beside A' and B':

- LoRA, DoRA: A and B as they are.
- SLoRA: N folds into B, B' = B N.
- SVD form: E folds into A, A' = diag(E) A, keeping only the active ranks whose E is non-zero
  (a masked rank contributes exactly nothing); its scale α / r_init becomes the module's alpha.
- Residual inits (``nystrom``, ``pissa``): the base weight holds W − s·B0 N0 A0, so the total
  change from the original W is s·(B N A − B0 N0 A0). As PEFT does when it converts a PiSSA
  adapter to LoRA (``save_pretrained(..., path_initial_model_for_weight_conversion=...)``), the
  export has rank 2r with A' = [A_eff; A0_eff], B' = [B_eff, −B0_eff] and the same scale; load it
  on the *original* base model, not on the residual one.

Modes:

- ``"compact"``: each module keeps its own rank; ``rank_pattern``/``alpha_pattern`` list every
  module (PEFT ≥ 0.14 reads them), ``r``/``lora_alpha`` are the most common pair.
- ``"universal"``: one rank R (the largest) for every module, A/B zero-padded to R, each module's
  scale folded into B and ``lora_alpha = r = R`` (scale 1), no patterns — for serving engines
  that ignore ``rank_pattern``/``alpha_pattern``. DoRA stays exact here for PEFT, but the file
  keeps ``use_dora: true``: an engine without DoRA must reject it, because DoRA's per-row
  magnitude is not a low-rank change and cannot be rewritten as a plain LoRA.

Several processes (docs/distributed.md): a DDP wrapper may be passed (names without its
``module.`` prefix). Under FSDP2 call ``export_peft`` on every process: each module's
parameters are gathered in turn and rank 0 writes.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save
from torch import nn

from lorax_core._atomic import atomic_folder
from lorax_core._distributed import (
    enter_collective,
    full_parameters,
    leader_only,
    unwrap,
)
from lorax_core._validation import Instance, Options, validate_params
from lorax_core.adapters.inject import adapted_modules
from lorax_core.adapters.io import check_directory
from lorax_core.adapters.layer import AdapterLinear
from lorax_core.adapters.registry import form_of
from lorax_core.integrations.peft.format import (
    A_KEY,
    B_KEY,
    CONFIG_NAME,
    METADATA_FORMAT,
    MODES,
    PREFIX,
    WEIGHTS_NAME,
    form_settings,
)

__all__ = ["export_peft"]


@dataclass(frozen=True)
class _Export:
    """One module as a plain LoRA: ΔW = scaling · B @ A (float64, original-weight reference)."""

    A: torch.Tensor  # (k, in)
    B: torch.Tensor  # (out, k)
    scaling: float
    extras: dict[str, torch.Tensor]  # PEFT key suffix -> tensor, as the form exports it
    dtype: torch.dtype  # the adapter's parameter dtype, used on disk


def _module_export(layer: AdapterLinear) -> _Export:
    """``layer`` through its form: its LoRA factors, a residual init's part, its extras."""
    form = form_of(layer)
    B, A, scaling = layer.lora_factors(torch.float64)
    residual = layer.residual_factors(torch.float64)
    if residual is not None:  # residual init: subtract what W lost
        B0, A0 = residual
        A, B = torch.cat([A, A0], dim=0), torch.cat([B, -B0], dim=1)
    params = layer.adapter_parameters()
    extras = {key: params[name].detach().cpu() for key, name in form.peft_tensors.items()}
    return _Export(A=A.cpu(), B=B.cpu(), scaling=scaling, extras=extras, dtype=layer.adapter_dtype)


def _tidy(value: float) -> int | float:
    """An int when ``value`` is one up to float rounding (keeps JSON alphas readable)."""
    nearest = round(value)
    return int(nearest) if math.isclose(value, nearest, rel_tol=1e-9, abs_tol=0.0) else value


def _most_common(values: list[Any]) -> Any:
    """The most frequent value; ties go to the smallest."""
    counts = Counter(values)
    return min(counts, key=lambda v: (-counts[v], v))


def _base_model_name(model: nn.Module) -> str | None:
    name = getattr(model, "name_or_path", None)
    if not name:
        name = getattr(getattr(model, "config", None), "_name_or_path", None)
    return str(name) if name else None


def _settings(layers: dict[str, AdapterLinear]) -> dict[str, Any]:
    """The PEFT settings every module's form shares; an error if the forms disagree."""
    by_settings: dict[str, list[str]] = {}
    for name, layer in sorted(layers.items()):
        text = json.dumps(form_settings(form_of(layer)), sort_keys=True)
        by_settings.setdefault(text, []).append(name)
    if len(by_settings) > 1:
        groups = {text: names[:3] for text, names in by_settings.items()}
        raise ValueError(
            "export_peft: model mixes adapter forms with different PEFT settings, which one "
            f"PEFT adapter cannot express (they apply to every module); modules by setting: "
            f"{groups}"
        )
    return dict(json.loads(next(iter(by_settings))))


@validate_params(model=Instance(nn.Module, "a torch.nn.Module"), mode=Options(MODES))
def export_peft(model: nn.Module, directory: str | os.PathLike[str], mode: str = "compact") -> Path:
    """Write ``model``'s lorax_core adapters as a PEFT LoRA/DoRA adapter folder.

    ``peft.PeftModel.from_pretrained(<original base model>, directory)`` then computes the same
    outputs as ``model``. See the module docstring for how each adapter form is written.

    Args:
        model: a model with adapters injected by :func:`lorax_core.adapters.inject`.
        directory: output folder (created if missing); both files replace the previous ones
            together, atomically (a crash leaves the old pair or the new one).
        mode: ``"compact"`` (per-module ranks via rank/alpha patterns) or ``"universal"``
            (one padded rank, scales folded into B, no patterns).

    Returns:
        The folder's path.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: unknown ``mode``; the model has no adapters; forms with different PEFT
            settings mixed (DoRA with others: ``use_dora`` applies to every module).
    """
    model = unwrap(model)
    layers = adapted_modules(model)
    if not layers:
        raise ValueError(
            "export_peft: model must have lorax_core adapters, got none; call inject() first"
        )
    settings = _settings(layers)
    out = check_directory("export_peft", directory)
    if out.exists() and not out.is_dir():
        raise ValueError(f"export_peft: directory must be a directory, got file {str(out)!r}")
    enter_collective("export_peft")
    exports = {}
    for name, layer in sorted(layers.items()):
        with full_parameters(layer) as whole:
            exports[name] = _module_export(whole)
    use_rslora = mode == "compact" and all(layer.use_rslora for layer in layers.values())
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    alphas: dict[str, int | float] = {}
    width = max(e.A.shape[0] for e in exports.values())
    for name, e in exports.items():
        A, B = e.A, e.B
        if mode == "universal":
            pad = width - A.shape[0]
            A = torch.cat([A, A.new_zeros(pad, A.shape[1])], dim=0)
            B = torch.cat([B * e.scaling, B.new_zeros(B.shape[0], pad)], dim=1)
            ranks[name], alphas[name] = width, width
        else:
            k = A.shape[0]
            ranks[name] = k
            alphas[name] = _tidy(e.scaling * (math.sqrt(k) if use_rslora else k))
        key = f"{PREFIX}{name}."
        tensors[key + A_KEY] = A.to(e.dtype).contiguous()
        tensors[key + B_KEY] = B.to(e.dtype).contiguous()
        for suffix, extra in e.extras.items():
            tensors[key + suffix] = extra.contiguous()
    r = _most_common(list(ranks.values()))
    alpha = _most_common([a for n, a in alphas.items() if ranks[n] == r])
    uniform = len(set(ranks.values())) == 1 and len(set(alphas.values())) == 1
    dropouts = [getattr(layer.lora_dropout, "p", 0.0) for layer in layers.values()]
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": _base_model_name(model),
        "r": r,
        "lora_alpha": alpha,
        "target_modules": list(exports),
        "rank_pattern": {} if uniform else {f"^{n}$": k for n, k in ranks.items()},
        "alpha_pattern": {} if uniform else {f"^{n}$": a for n, a in alphas.items()},
        **settings,
        "use_rslora": use_rslora,
        "lora_dropout": float(_most_common(dropouts)),
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }
    described = {
        name: {
            "method": layer.method,
            "r": layer.r,
            "alpha": layer.alpha,
            "residual_init": layer.residual_factors() is not None,
            "exported_rank": ranks[name],
        }
        for name, layer in sorted(layers.items())
    }
    metadata = {
        "format": "pt",
        **METADATA_FORMAT.fields(),
        "lorax_core.mode": mode,
        "lorax_core.modules": json.dumps(described, sort_keys=True),
    }
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    weights = save(tensors, metadata=metadata)
    leader_only(
        "export_peft",
        lambda: atomic_folder(out, {WEIGHTS_NAME: weights, CONFIG_NAME: text.encode("utf-8")}),
    )
    return out
