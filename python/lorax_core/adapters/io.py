"""Save and load adapters: ``adapter_model.safetensors`` + ``adapter_config.json``, atomically.

Files in the adapter directory:

- ``adapter_model.safetensors`` — only adapter tensors, keys ``<module>.<param>`` (``lora_A``,
  ``lora_B``, ``lora_N``, ``lora_E``, ``lora_magnitude``) and, for residual inits, the initial
  factors ``<module>.init_lora_A`` / ``init_lora_B`` / ``init_lora_N``.
- ``adapter_config.json`` — format name and version, ``config`` (``AdapterConfig.to_dict()``),
  per-module ``AdapterLinear.record()`` (method, rank, alpha, shapes, and the form's own
  fields, e.g. the SVD form's ``active_rank`` / ``capacity``), and the SHA-256 of the weights
  file. Every registered form is saved and loaded the same way (docs/adapters.md).

Both files are written together with :func:`lorax_core._atomic.atomic_folder`: into a fresh
sibling folder, flushed to disk, then swapped in with one atomic rename. A save killed at any
point leaves the directory with the previous complete save or the new one, both loadable; the
checksum in the JSON still guards against files put together by hand.

Residual inits (nystrom, pissa): the saved init factors let ``load_adapter`` rebuild the
residual base weight. Loading into a model without adapters applies
``W ← W − low_rank_product(init_lora_A, init_lora_B[, init_lora_N])`` to the pristine base
weights, which is exactly what the initialiser did, so the loaded model equals the saved one.
Loading into a model that already has adapters replaces adapter tensors only.

Several processes (docs/distributed.md): a DDP / DataParallel wrapper may be passed (names are
saved without its ``module.`` prefix). Under FSDP2 ``save_adapter`` is a collective — call it on
every process; each adapter tensor is gathered and rank 0 alone writes (a call made on only some
processes is a ``RuntimeError`` after the collective timeout, not a hang). ``load_adapter``
onto an FSDP2 model that already has its adapters (inject before ``fully_shard``) reads the
files on every process and writes each process's own shard; it needs no communication.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from lorax_core._atomic import atomic_folder
from lorax_core._distributed import (
    assign_,
    enter_collective,
    full,
    is_sharded,
    leader_only,
    unwrap,
)
from lorax_core._format import DocumentFormat
from lorax_core._safetensors import parse_header
from lorax_core._validation import Instance, check, describe, validate_params
from lorax_core.adapters.config import RESIDUAL_INITS, AdapterConfig
from lorax_core.adapters.inject import (
    adapted_modules,
    adapter_config,
    build_layers,
    install_layers,
)
from lorax_core.adapters.layer import INIT_BUFFERS, AdapterLinear

__all__ = [
    "CONFIG_NAME",
    "FORMAT",
    "WEIGHTS_NAME",
    "check_directory",
    "load_adapter",
    "read_json",
    "save_adapter",
]

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
FORMAT = DocumentFormat("lorax_core.adapter", 1, version_key="format_version")


def check_directory(function: str, directory: object) -> Path:
    """``directory`` as a :class:`~pathlib.Path`; ``TypeError``/``ValueError`` naming it."""
    check(
        function,
        "directory",
        directory,
        Instance((str, os.PathLike), "a path (str or os.PathLike)"),
    )
    text = os.fspath(directory)  # type: ignore[call-overload]
    if not isinstance(text, str) or not text or "\0" in text:
        raise ValueError(
            f"{function}: directory must be a non-empty text path without NUL characters, got "
            f"{describe(directory)}"
        )
    return Path(text)


def read_json(path: Path) -> Any:
    """The parsed JSON document at ``path``; ``FileNotFoundError`` or ``ValueError`` naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"no {path.name} in adapter directory {str(path.parent)!r}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path.name} is not valid JSON: {err}") from err


def _adapter_tensors(layers: dict[str, AdapterLinear]) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        named = {**layer.adapter_parameters(), **layer.init_buffers()}
        for key, value in named.items():
            tensors[f"{name}.{key}"] = full(value.detach()).cpu().contiguous()
    return tensors


def save_adapter(model: nn.Module, directory: str | os.PathLike[str]) -> Path:
    """Write the adapters of ``model`` to ``directory`` (created if needed); returns its path.

    Under torch.distributed call it on every process: the adapters are gathered (FSDP2) and
    rank 0 writes; every process returns once the files are complete.

    Raises:
        RuntimeError: under torch.distributed, not every process called it in time, or the
            write failed on rank 0.
    """
    model = unwrap(model)
    layers = adapted_modules(model)
    if not layers:
        raise ValueError("save_adapter: model must have adapter layers, got none to save")
    config = adapter_config(model)
    path = check_directory("save_adapter", directory)
    if path.exists() and not path.is_dir():
        raise ValueError(f"save_adapter: directory must be a directory, got file {str(path)!r}")
    enter_collective("save_adapter")
    weights = save_safetensors(_adapter_tensors(layers), metadata={"format": "pt"})
    document = FORMAT.stamp(
        {
            "config": config.to_dict(),
            "modules": {name: layer.record() for name, layer in layers.items()},
            "weights_sha256": hashlib.sha256(weights).hexdigest(),
        }
    )
    try:
        text = json.dumps(document, indent=2, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"save_adapter: config must be JSON-serialisable (check init_options), got {err}"
        ) from err
    leader_only(
        "save_adapter",
        lambda: atomic_folder(path, {WEIGHTS_NAME: weights, CONFIG_NAME: text.encode()}),
    )
    return path


def _read(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Parse and cross-check the two files of an adapter directory."""
    config_path, weights_path = path / CONFIG_NAME, path / WEIGHTS_NAME
    for file in (config_path, weights_path):
        if not file.is_file():
            raise FileNotFoundError(f"no {file.name} in adapter directory {str(path)!r}")
    document = read_json(config_path)
    FORMAT.check(document, CONFIG_NAME)
    if not isinstance(document.get("modules"), dict) or not document["modules"]:
        raise ValueError(f"{CONFIG_NAME} lists no modules")
    weights = weights_path.read_bytes()
    if hashlib.sha256(weights).hexdigest() != document.get("weights_sha256"):
        raise ValueError(
            f"{WEIGHTS_NAME} does not match {CONFIG_NAME} (checksum differs): the save was "
            "interrupted or the files come from different saves"
        )
    parse_header(weights, WEIGHTS_NAME)
    try:
        tensors = load_safetensors(weights)
    except Exception as err:  # safetensors raises its own error types for malformed files
        raise ValueError(f"{WEIGHTS_NAME} is not a valid safetensors file: {err}") from err
    return document, tensors


def _check_modules(document: dict[str, Any], layers: dict[str, AdapterLinear]) -> None:
    """The file's modules must be the model's adapted modules, with the same form and layout."""
    saved = document["modules"]
    missing, unexpected = sorted(set(layers) - set(saved)), sorted(set(saved) - set(layers))
    if missing or unexpected:
        raise ValueError(
            f"adapter modules differ from the model's: missing in file {missing[:5]}, "
            f"not adapted in model {unexpected[:5]}"
        )
    for name, layer in layers.items():
        record = saved[name]
        if not isinstance(record, dict):
            raise ValueError(f"{CONFIG_NAME}: module {name!r} has a malformed record")
        for field, mine in layer.record().items():
            if field not in layer.state_keys and record.get(field) != mine:
                raise ValueError(
                    f"module {name!r}: saved {field}={record.get(field)!r}, the model has {mine!r}"
                )


def _check_tensors(
    tensors: dict[str, torch.Tensor], layers: dict[str, AdapterLinear], residual: bool
) -> None:
    """Every adapter parameter present with its shape; init factors only where allowed."""
    expected: dict[str, tuple[int, ...]] = {}
    for name, layer in layers.items():
        for pname, param in layer.adapter_parameters().items():
            expected[f"{name}.{pname}"] = tuple(param.shape)
            init_key = f"{name}.init_{pname}"
            if residual and f"init_{pname}" in INIT_BUFFERS:
                if init_key not in tensors:
                    raise ValueError(f"residual-init adapter lacks {init_key!r}")
                expected[init_key] = tuple(param.shape)
    for key in tensors:
        module, _, leaf = key.rpartition(".")
        if key not in expected and module in layers and leaf in INIT_BUFFERS:
            base = layers[module].adapter_parameters().get(leaf[len("init_") :])
            if base is not None:
                expected[key] = tuple(base.shape)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{WEIGHTS_NAME}: missing tensors {missing[:5]}, unexpected tensors {unexpected[:5]}"
        )
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise ValueError(
                f"{WEIGHTS_NAME}: tensor {key!r} has shape {tuple(tensors[key].shape)}, "
                f"the model expects {shape}"
            )
        module, _, leaf = key.rpartition(".")
        param = layers[module].adapter_parameters()[leaf.removeprefix("init_")]
        if tensors[key].dtype != param.dtype:
            raise ValueError(
                f"{WEIGHTS_NAME}: tensor {key!r} has dtype {tensors[key].dtype}, the model's "
                f"adapter has {param.dtype}"
            )
        if not bool(torch.isfinite(tensors[key]).all()):
            raise ValueError(f"{WEIGHTS_NAME}: tensor {key!r} must be finite, got NaN or infinity")


@torch.no_grad()
def _copy_in_or_undo(
    tensors: dict[str, torch.Tensor], layers: dict[str, AdapterLinear], saved: dict[str, Any]
) -> None:
    """:func:`_copy_in`; if a record is refused half-way, the layers are put back as they were."""
    backup = {
        name: (
            {k: v.detach().clone() for k, v in layer.adapter_parameters().items()},
            dict(layer.init_buffers()),
            layer.record(),
        )
        for name, layer in layers.items()
    }
    try:
        _copy_in(tensors, layers, saved)
    except (TypeError, ValueError) as err:
        for name, (params, buffers, record) in backup.items():
            layer = layers[name]
            for key, value in params.items():
                assign_(layer.adapter_parameters()[key], value)
            for key in INIT_BUFFERS:
                layer._buffers.pop(key, None)
                if key in buffers:
                    layer.register_buffer(key, buffers[key])
            layer.restore(record)
        raise ValueError(f"{CONFIG_NAME}: a module record is malformed: {err}") from err


@torch.no_grad()
def _copy_in(
    tensors: dict[str, torch.Tensor], layers: dict[str, AdapterLinear], saved: dict[str, Any]
) -> None:
    for name, layer in layers.items():
        for pname, param in layer.adapter_parameters().items():
            assign_(param, tensors[f"{name}.{pname}"])
        device = layer.base_layer.weight.device
        for bname in INIT_BUFFERS:
            if f"{name}.{bname}" in tensors:
                layer.register_buffer(bname, tensors[f"{name}.{bname}"].to(device))
        layer.restore(saved[name])


@torch.no_grad()
def _apply_residual(layers: dict[str, AdapterLinear]) -> None:
    """``W ← W − s·B0 [N0] A0`` from the init buffers, as the residual initialiser did."""
    for layer in layers.values():
        buffers = layer.init_buffers()
        product = layer.low_rank_product(
            buffers["init_lora_A"], buffers["init_lora_B"], buffers.get("init_lora_N")
        )
        layer.base_layer.weight.sub_(product)


@validate_params(model=Instance(nn.Module, "an nn.Module"))
def load_adapter(model: nn.Module, directory: str | os.PathLike[str]) -> nn.Module:
    """Load adapters saved by :func:`save_adapter` into ``model``; returns ``model``.

    A model without adapters is injected with the saved config first (base weights of
    residual inits rebuilt from the saved init factors); a model with adapters must have the
    same method, modules and shapes, and only its adapter tensors are replaced. Everything is
    validated before the model is modified. A DDP wrapper may be passed; an FSDP2 model must
    already have its adapters (each process writes its own shards).
    """
    model = unwrap(model)
    document, tensors = _read(check_directory("load_adapter", directory))
    config = AdapterConfig.from_dict(document.get("config") or {})
    existing = adapted_modules(model)
    fresh = not existing
    if fresh and any(is_sharded(p) for p in model.parameters()):
        raise ValueError(
            "load_adapter: model must already have its adapters when it is sharded (FSDP2): "
            "inject them before fully_shard, then load"
        )
    if fresh:
        layers = build_layers(model, config, initialise=False)
    else:
        if adapter_config(model).method != config.method:
            raise ValueError(
                f"saved method {config.method!r} differs from the model's "
                f"{adapter_config(model).method!r}"
            )
        layers = existing
        if any(layer.merged for layer in layers.values()):
            raise ValueError("model has merged adapters; unmerge it before load_adapter")
    residual = fresh and config.init in RESIDUAL_INITS
    _check_modules(document, layers)
    _check_tensors(tensors, layers, residual)
    _copy_in_or_undo(tensors, layers, document["modules"])
    if fresh:
        if residual:
            _apply_residual(layers)
        install_layers(model, config, layers)
    return model
