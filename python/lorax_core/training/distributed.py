"""Sharded checkpoints of a whole training run with ``torch.distributed.checkpoint`` (DCP).

A run checkpoint is a folder holding the trainable parameters (the adapters, and a head if it is
trained), the optimizer state, the training hook's state (an allocator's scores and decisions,
or any object with ``state_dict``/``load_state_dict``), any extra stateful objects (an lr
scheduler) and the step, written by every process in DCP's format, plus ``lorax_run.json``: what
model and adapter configuration it belongs to.

- Each process writes its own shards (FSDP2) or rank 0 writes whole tensors (one process, DDP);
  keys are the parameters' names without any wrapper prefix, so a checkpoint written with *k*
  processes loads with any other number (DCP reshards ``DTensor`` s), or in a plain unsharded
  model (docs/distributed.md).
- The folder appears complete or not at all: everything is written into a sibling staging folder
  that rank 0 renames into place once every process has finished.
- :func:`load_run` first compares ``lorax_run.json`` with the model, the adapter configuration
  and the hook (on every process, from the file, without communication), so a checkpoint of
  another model or configuration is a ``ValueError`` on every process, never a hang.

Both functions are collectives under torch.distributed: call them on every process.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from lorax_core._atomic import atomic_write_bytes
from lorax_core._distributed import enter_collective, leader_only, unwrap
from lorax_core._format import DocumentFormat
from lorax_core._validation import Instance, Integer, check
from lorax_core.adapters import adapted_modules, adapter_config

__all__ = ["RUN_FORMAT", "RUN_META_NAME", "describe_run", "load_run", "save_run"]

RUN_META_NAME = "lorax_run.json"
RUN_FORMAT = DocumentFormat("lorax_core.run", 1)
_OPTIONS = StateDictOptions(ignore_frozen_params=True)
# Loading: the checkpoint holds the trainable parameters only.
_LOAD_OPTIONS = StateDictOptions(ignore_frozen_params=True, strict=False)


def describe_run(model: nn.Module, hook: object | None = None) -> dict[str, Any]:
    """What a run checkpoint of ``model`` must match: the adapter configuration, every trainable
    parameter's name, whole shape and dtype, and the hook's class name."""
    model = unwrap(model)
    layers = adapted_modules(model)
    config = adapter_config(model).to_dict() if layers else None
    params = {
        name: [list(p.shape), str(p.dtype).removeprefix("torch.")]
        for name, p in model.named_parameters()
        if p.requires_grad
    }
    return {
        "config": json.loads(json.dumps(config, default=str)),
        "parameters": params,
        "hook": None if hook is None else type(hook).__name__,
    }


def _state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    hook: Any,
    extra: dict[str, Any],
    step: int,
) -> dict[str, Any]:
    state: dict[str, Any] = {"step": step}
    if optimizer is None:
        state["model"] = get_model_state_dict(unwrap(model), options=_OPTIONS)
    else:
        state["model"], state["optimizer"] = get_state_dict(
            unwrap(model), optimizer, options=_OPTIONS
        )
    if hook is not None:
        state["hook"] = hook.state_dict()
    for name, obj in extra.items():
        state[f"extra.{name}"] = obj.state_dict()
    return state


def _staging(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


def _swap_in(staging: Path, path: Path, meta: bytes) -> None:
    atomic_write_bytes(staging / RUN_META_NAME, meta)
    if path.exists():
        aside = path.with_name(f".{path.name}.old")
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(path, aside)
        os.rename(staging, path)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(staging, path)


def _check_extra(function: str, extra: object) -> dict[str, Any]:
    check(function, "extra", extra, Instance(dict, "a dict of objects with state_dict()"))
    assert isinstance(extra, dict)
    for name, obj in extra.items():
        if not hasattr(obj, "state_dict") or not hasattr(obj, "load_state_dict"):
            raise TypeError(
                f"{function}: extra[{name!r}] must have state_dict() and load_state_dict(), "
                f"got {type(obj).__name__}"
            )
    return extra


def save_run(
    directory: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    step: int,
    hook: object | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a run checkpoint of ``model``, ``optimizer``, ``hook`` and ``extra`` at ``step``.

    ``optimizer`` may be None when the hook holds the optimizers itself (a
    :class:`~lorax_core.training.BiDoRATrainer`, whose state holds both levels' AdamW).

    Call it on every process (after ``optimizer.step()`` and the hook's ``step``). ``directory``
    must name the same folder (on a file system every process sees) everywhere; a previous
    checkpoint there is replaced once the new one is complete.

    Raises:
        RuntimeError: under torch.distributed, not every process called it in time.
    """
    function = "save_run"
    step = check(function, "step", step, Integer(low=0))
    extra = _check_extra(function, {} if extra is None else extra)
    path = Path(os.fspath(directory))
    enter_collective(function)
    staging = _staging(path)
    leader_only(function, lambda: shutil.rmtree(staging, ignore_errors=True))
    state = _state(model, optimizer, hook, extra, step)
    dcp.save(state, checkpoint_id=str(staging))
    meta = json.dumps(RUN_FORMAT.stamp(describe_run(model, hook)), indent=2, sort_keys=True)
    leader_only(function, lambda: _swap_in(staging, path, meta.encode("utf-8")))
    return path


def _check_meta(function: str, path: Path, model: nn.Module, hook: object | None) -> None:
    meta_path = path / RUN_META_NAME
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{function}: directory must be a run checkpoint written by save_run (no "
            f"{RUN_META_NAME} in {str(path)!r})"
        )
    try:
        document = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{function}: {RUN_META_NAME} is not valid JSON: {err}") from err
    RUN_FORMAT.check(document, RUN_META_NAME)
    mine = describe_run(model, hook)
    for field, what in (
        ("config", "adapter configuration"),
        ("parameters", "trainable parameters (names, shapes, dtypes)"),
        ("hook", "training hook"),
    ):
        if document.get(field) != mine[field]:
            saved, have = document.get(field), mine[field]
            if isinstance(saved, dict) and isinstance(have, dict):
                keys = sorted(k for k in set(saved) | set(have) if saved.get(k) != have.get(k))
                detail = f"differs in {', '.join(map(str, keys[:5]))}"
            else:
                detail = f"saved {saved!r}, this run has {have!r}"
            raise ValueError(
                f"{function}: checkpoint must come from the same model and configuration; its "
                f"{what} {detail}"
            )


def load_run(
    directory: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    hook: object | None = None,
    extra: dict[str, Any] | None = None,
) -> int:
    """Restore a :func:`save_run` checkpoint into a run built the same way; returns its step.

    Call it on every process, before training resumes (with any number of processes, or none).
    Continue with step ``returned + 1`` on the same data order.

    Raises:
        FileNotFoundError: no run checkpoint in ``directory``.
        ValueError: the checkpoint belongs to another model, adapter configuration or hook.
        RuntimeError: under torch.distributed, not every process called it in time.
    """
    function = "load_run"
    extra = _check_extra(function, {} if extra is None else extra)
    path = Path(os.fspath(directory))
    _check_meta(function, path, model, hook)
    enter_collective(function)
    state = _state(model, optimizer, hook, extra, 0)
    dcp.load(state, checkpoint_id=str(path))
    if optimizer is None:
        set_model_state_dict(unwrap(model), state["model"], options=_LOAD_OPTIONS)
    else:
        set_state_dict(
            unwrap(model),
            optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optimizer"],
            options=_LOAD_OPTIONS,
        )
    if hook is not None:
        hook.load_state_dict(state["hook"])  # type: ignore[attr-defined]
    for name, obj in extra.items():
        obj.load_state_dict(state[f"extra.{name}"])
    return int(state["step"])
