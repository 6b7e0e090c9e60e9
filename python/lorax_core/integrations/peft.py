"""PEFT interoperability: export lorax_core adapters as PEFT LoRA/DoRA adapters, import them back.

The on-disk format is PEFT's (SPEC §8): a folder with

- ``adapter_model.safetensors`` — per adapted module ``<m>``, the tensors
  ``base_model.model.<m>.lora_A.weight`` (r_m, in), ``base_model.model.<m>.lora_B.weight``
  (out, r_m) and, for DoRA, ``base_model.model.<m>.lora_magnitude_vector`` (out,). Nothing else;
  lorax_core's own description of the adapters goes in the file's header metadata
  (``lorax_core.format_version``, ``lorax_core.mode``, ``lorax_core.modules``).
- ``adapter_config.json`` — ``peft_type: "LORA"``, ``r``, ``lora_alpha``, ``target_modules`` (full
  module names), ``rank_pattern``/``alpha_pattern`` (keys ``"^<module>$"``), ``use_dora``,
  ``use_rslora``, ``base_model_name_or_path`` when the model knows it.

Every form is written as a plain LoRA against the model's *original* weights,
ΔW = scaling · B' A':

- LoRA, DoRA: A and B as they are (DoRA's magnitude as ``lora_magnitude_vector``).
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
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import nn

from lorax_core._atomic import atomic_write_bytes
from lorax_core.adapters.config import AdapterConfig
from lorax_core.adapters.inject import adapted_modules, inject, select_modules
from lorax_core.adapters.io import CONFIG_NAME, FORMAT, WEIGHTS_NAME
from lorax_core.adapters.layer import AdapterLinear
from lorax_core.adapters.svd import SVDLinear

__all__ = ["CONFIG_NAME", "MODES", "WEIGHTS_NAME", "export_peft", "import_peft"]

MODES = ("compact", "universal")
FORMAT_VERSION = "1"

_PREFIX = "base_model.model."
_A, _B, _M = "lora_A.weight", "lora_B.weight", "lora_magnitude_vector"

# PEFT LoraConfig fields that change what the adapter computes or which tensors it owns, with the
# value under which import_peft's plain LoRA/DoRA reading is exact.
_NEUTRAL_FIELDS: dict[str, tuple[Any, ...]] = {
    "bias": ("none",),
    "fan_in_fan_out": (False,),
    "lora_bias": (False,),
    "modules_to_save": (None, []),
    "layers_to_transform": (None, []),
    "layers_pattern": (None, []),
    "layer_replication": (None, []),
    "target_parameters": (None, []),
    "trainable_token_indices": (None, {}, []),
    "use_qalora": (False,),
    "use_bdlora": (None, False),
    "alora_invocation_tokens": (None, []),
    "megatron_config": (None,),
    "arrow_config": (None,),
    "kasa_config": (None,),
    "monteclora_config": (None,),
    "velora_config": (None,),
}
# init_lora_weights values for which PEFT rewrites the base weight (the saved factors are then
# relative to that residual weight, not to the base model's).
_RESIDUAL_PEFT_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")


@dataclass(frozen=True)
class _Export:
    """One module as a plain LoRA: ΔW = scaling · B @ A (float64, original-weight reference)."""

    A: torch.Tensor  # (k, in)
    B: torch.Tensor  # (out, k)
    scaling: float
    magnitude: torch.Tensor | None  # (out,), DoRA only
    dtype: torch.dtype  # the adapter's parameter dtype, used on disk


def _host(tensor: torch.Tensor) -> torch.Tensor:
    """A detached float64 CPU copy (exports are folded on the host, written from there)."""
    return tensor.detach().to(device="cpu", dtype=torch.float64)


def _product(layer: AdapterLinear, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B_eff, A_eff)`` in float64 with ``B_eff @ A_eff`` = the layer's B [N] [diag(E)] A.

    ``prefix`` is ``""`` for the trained factors or ``"init_"`` for the residual init's buffers.
    """
    A = _host(getattr(layer, prefix + "lora_A"))
    B = _host(getattr(layer, prefix + "lora_B"))
    N = getattr(layer, prefix + "lora_N", None)
    if N is not None:
        B = B @ _host(N)
    if isinstance(layer, SVDLinear) and not prefix:
        E = _host(layer.lora_E).reshape(-1)
        active = torch.arange(E.numel()) < int(layer.active_rank)
        keep = torch.nonzero(active & (E != 0)).reshape(-1)
        if keep.numel() == 0:  # nothing active: one exactly-zero rank (PEFT needs r ≥ 1)
            return B[:, :1] * 0.0, A[:1] * 0.0
        A, B = E[keep, None] * A[keep], B[:, keep]
    return B, A


def _module_export(layer: AdapterLinear) -> _Export:
    B, A = _product(layer, "")
    if getattr(layer, "init_lora_A", None) is not None:  # residual init: subtract what W lost
        B0, A0 = _product(layer, "init_")
        A, B = torch.cat([A, A0], dim=0), torch.cat([B, -B0], dim=1)
    magnitude = getattr(layer, "lora_magnitude", None)
    return _Export(
        A=A,
        B=B,
        scaling=float(layer.scaling),
        magnitude=None if magnitude is None else magnitude.detach().cpu(),
        dtype=layer.adapter_dtype,
    )


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


def export_peft(model: nn.Module, directory: str | os.PathLike[str], mode: str = "compact") -> Path:
    """Write ``model``'s lorax_core adapters as a PEFT LoRA/DoRA adapter folder.

    ``peft.PeftModel.from_pretrained(<original base model>, directory)`` then computes the same
    outputs as ``model``. See the module docstring for how each adapter form is written.

    Args:
        model: a model with adapters injected by :func:`lorax_core.adapters.inject`.
        directory: output folder (created if missing); both files are written atomically.
        mode: ``"compact"`` (per-module ranks via rank/alpha patterns) or ``"universal"``
            (one padded rank, scales folded into B, no patterns).

    Returns:
        The folder's path.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: unknown ``mode``; the model has no adapters; DoRA mixed with other forms
            (PEFT's ``use_dora`` applies to every module of an adapter).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    layers = adapted_modules(model)
    if not layers:
        raise ValueError("model has no lorax_core adapters to export; call inject() first")
    methods = {name: layer.method for name, layer in layers.items()}
    use_dora = "dora" in methods.values()
    if use_dora and set(methods.values()) != {"dora"}:
        others = sorted(n for n, m in methods.items() if m != "dora")
        raise ValueError(
            "model mixes DoRA with other adapter forms, which one PEFT adapter cannot express "
            f"(use_dora applies to every module); non-DoRA modules: {others[:5]}"
        )
    exports = {name: _module_export(layer) for name, layer in sorted(layers.items())}
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
        key = f"{_PREFIX}{name}."
        tensors[key + _A] = A.to(e.dtype).contiguous()
        tensors[key + _B] = B.to(e.dtype).contiguous()
        if e.magnitude is not None:
            tensors[key + _M] = e.magnitude.contiguous()
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
        "use_dora": use_dora,
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
            "residual_init": getattr(layer, "init_lora_A", None) is not None,
            "exported_rank": ranks[name],
        }
        for name, layer in sorted(layers.items())
    }
    metadata = {
        "format": "pt",
        "lorax_core.format_version": FORMAT_VERSION,
        "lorax_core.mode": mode,
        "lorax_core.modules": json.dumps(described, sort_keys=True),
    }
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / WEIGHTS_NAME, save(tensors, metadata=metadata))
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(out / CONFIG_NAME, text.encode("utf-8"))
    return out


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"directory has no {CONFIG_NAME}: {path}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{CONFIG_NAME} is not valid JSON: {err}") from err
    if not isinstance(config, Mapping):
        raise ValueError(f"{CONFIG_NAME} must hold a JSON object")
    if config.get("peft_type") != "LORA":
        hint = (
            "; this folder was written by lorax_core.save_adapter, read it with load_adapter"
            if config.get("format") == FORMAT
            else ""
        )
        raise ValueError(
            f"{CONFIG_NAME}: peft_type must be 'LORA' (LoRA or DoRA adapters), "
            f"got {config.get('peft_type')!r}{hint}"
        )
    for field, neutral in _NEUTRAL_FIELDS.items():
        if config.get(field, neutral[0]) not in neutral:
            raise ValueError(
                f"{CONFIG_NAME}: {field}={config[field]!r} is not supported by import_peft "
                f"(supported: {neutral[0]!r})"
            )
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(_RESIDUAL_PEFT_INITS):
        raise ValueError(
            f"{CONFIG_NAME}: init_lora_weights={init!r} means the weights are relative to a "
            "rewritten base model; save the adapter from PEFT with "
            "path_initial_model_for_weight_conversion=... to convert it to a plain LoRA first"
        )
    if config.get("target_modules") in (None, "all-linear"):
        raise ValueError(
            f"{CONFIG_NAME}: target_modules={config.get('target_modules')!r} is not supported; "
            "it must list module names or be a regular expression"
        )
    return dict(config)


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"directory has no {WEIGHTS_NAME}: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except Exception as err:  # safetensors raises its own error types for malformed files
        raise ValueError(f"{WEIGHTS_NAME} is not a readable safetensors file: {err}") from err


def import_peft(model: nn.Module, directory: str | os.PathLike[str]) -> nn.Module:
    """Load a PEFT LoRA/DoRA adapter folder into ``model`` as lorax_core adapters (in place).

    The adapter's ``target_modules``/``exclude_modules``/``rank_pattern``/``alpha_pattern``/
    ``use_rslora`` keep PEFT's meaning, so ``model`` then computes what
    ``peft.PeftModel.from_pretrained(model, directory)`` computes. Stricter than PEFT: every
    selected module must have all its tensors (PEFT silently leaves a missing ``lora_B`` at
    zero) and the file may hold no tensor the adapter does not use.

    Args:
        model: the base model the adapter was trained on, without lorax_core adapters.
        directory: folder with ``adapter_config.json`` and ``adapter_model.safetensors``.

    Returns:
        ``model``, with ``LoraLinear`` (or ``DoraLinear`` when ``use_dora``) modules.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        FileNotFoundError: a file is missing.
        ValueError: not a LoRA adapter, a PEFT option import cannot honour, the model already
            has adapters, the adapter does not fit the model (missing modules, wrong shapes),
            missing or unexpected tensors.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if adapted_modules(model):
        raise ValueError("model already has lorax_core adapters; import into a plain base model")
    folder = Path(directory)
    config = _read_config(folder / CONFIG_NAME)
    tensors = _read_tensors(folder / WEIGHTS_NAME)
    use_dora = bool(config.get("use_dora", False))
    adapter = AdapterConfig(
        method="dora" if use_dora else "lora",
        r=config.get("r", 8),
        alpha=config.get("lora_alpha", 8),
        target_modules=config["target_modules"],
        exclude_modules=config.get("exclude_modules"),
        rank_pattern=config.get("rank_pattern") or None,
        alpha_pattern=config.get("alpha_pattern") or None,
        use_rslora=bool(config.get("use_rslora", False)),
    )
    suffixes = (_A, _B, _M) if use_dora else (_A, _B)
    by_module: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        suffix = next((s for s in suffixes if key.endswith("." + s)), None)
        if not key.startswith(_PREFIX) or suffix is None:
            raise ValueError(f"{WEIGHTS_NAME}: unexpected tensor {key!r} for a LoRA adapter")
        name = key[len(_PREFIX) : -len(suffix) - 1]
        by_module.setdefault(name, {})[suffix] = value
    modules = dict(model.named_modules())
    absent = sorted(n for n in by_module if not isinstance(modules.get(n), nn.Linear))
    if absent:
        raise ValueError(
            "adapter does not match the base model: it has weights for modules that are not "
            f"nn.Linear layers of this model: {absent[:5]}"
        )
    try:
        selected = select_modules(model, adapter)
    except ValueError as err:
        raise ValueError(f"adapter does not match the base model: {err}") from err
    unused = sorted(set(by_module) - set(selected))
    if unused:
        raise ValueError(f"{WEIGHTS_NAME} has tensors for modules not targeted: {unused[:5]}")
    for name, layer in selected.items():
        rank = adapter.rank_for(name)
        expected = {
            _A: (rank, layer.in_features),
            _B: (layer.out_features, rank),
            _M: (layer.out_features,),
        }
        for suffix in suffixes:
            key = f"{_PREFIX}{name}.{suffix}"
            found = by_module.get(name, {}).get(suffix)
            if found is None:
                raise ValueError(f"{WEIGHTS_NAME} is missing tensor {key!r}")
            if tuple(found.shape) != expected[suffix]:
                raise ValueError(
                    f"adapter does not match the base model: {key!r} has shape "
                    f"{tuple(found.shape)}, expected {expected[suffix]} (rank {rank})"
                )
    inject(model, adapter)
    layers = adapted_modules(model)
    with torch.no_grad():
        for name in selected:
            params = layers[name].adapter_parameters()
            params["lora_A"].copy_(by_module[name][_A])
            params["lora_B"].copy_(by_module[name][_B])
            if use_dora:
                params["lora_magnitude"].copy_(by_module[name][_M])
    return model
