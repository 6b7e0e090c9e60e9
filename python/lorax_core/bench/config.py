"""The experiment files: one protocol (data, models, budgets, modes) and one file per method.

The files live in ``lorax_core/bench/experiments/`` (``protocol.json`` and ``<method>.json``), so
the installed ``lorax-bench`` finds them; ``--experiments DIR`` points at another folder of the
same layout. Each file is validated when read: a wrong field is named with its file
(``<file>: <field> must be <rule>, got <value>``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from lorax_core._validation import Instance, Integer, NoneValue, Options, Real, check

__all__ = [
    "KINDS",
    "DatasetSpec",
    "Experiments",
    "MethodSpec",
    "ModeSpec",
    "ModelSpec",
    "default_experiments_dir",
    "load_experiments",
]

#: How a method trains: the head alone, every weight, injected adapters with the plain loop,
#: the BiDoRA trainer, or an adapter loop driven by a rank allocator.
KINDS = ("head", "full", "adapter", "bidora", "adalora", "elalora")
LOADERS = ("bbc_news", "tweets_sentiment")
MODEL_LOADERS = ("minilm", "smollm2")
POOLINGS = ("mean", "last")
_POS = Real(0.0, None, closed="neither")
_FRACTION = Real(0.0, 1.0, closed="neither")


def default_experiments_dir() -> Path:
    """The experiment files shipped with the package."""
    return Path(str(resources.files("lorax_core.bench") / "experiments"))


@dataclass(frozen=True)
class DatasetSpec:
    """A labelled text set: ``n_test`` held-out examples, ``n_train`` training examples of which
    ``val_fraction`` are the validation split; texts truncated to ``max_length`` tokens."""

    name: str
    loader: str
    n_train: int
    n_test: int
    val_fraction: float
    max_length: int
    min_confidence: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ModelSpec:
    """A backbone: how its hidden states become one vector (``pooling``), the adapted modules
    (``targets``), its datasets and the methods it runs on CPU (``None``: all)."""

    name: str
    loader: str
    pooling: str
    targets: tuple[str, ...]
    datasets: tuple[str, ...]
    cpu_methods: tuple[str, ...] | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "loader": self.loader,
            "pooling": self.pooling,
            "targets": list(self.targets),
        }


@dataclass(frozen=True)
class ModeSpec:
    """``quick`` or ``full``: models, seeds, optimizer steps per model, and the models whose
    learning rate comes from the grid (the others take the configs' or a grid model's)."""

    name: str
    models: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: dict[str, int]
    lr_grid_models: tuple[str, ...]


@dataclass(frozen=True)
class MethodSpec:
    """One experiment file: the method's kind, adapter settings, learning rate and grid."""

    name: str
    label: str
    kind: str
    order: int
    lr: float
    lr_grid: tuple[float, ...]
    source: str
    adapter: dict[str, Any] = field(default_factory=dict)
    gelora: dict[str, Any] | None = None
    bidora: dict[str, Any] | None = None
    allocator: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The settings that determine a run (the label and source text do not)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "adapter": self.adapter,
            "gelora": self.gelora,
            "bidora": self.bidora,
            "allocator": self.allocator,
        }


@dataclass(frozen=True)
class Experiments:
    """Everything read from an experiments folder."""

    folder: Path
    split_seed: int
    batch_size: int
    eval_batch_size: int
    warmup_fraction: float
    optimizer: dict[str, Any]
    datasets: dict[str, DatasetSpec]
    models: dict[str, ModelSpec]
    modes: dict[str, ModeSpec]
    methods: dict[str, MethodSpec]

    def training_dict(self) -> dict[str, Any]:
        """The shared training settings (part of every run's identity)."""
        return {
            "split_seed": self.split_seed,
            "batch_size": self.batch_size,
            "eval_batch_size": self.eval_batch_size,
            "warmup_fraction": self.warmup_fraction,
            "optimizer": self.optimizer,
        }


class _Doc:
    """Field access with validation errors that name the file and the field's path."""

    def __init__(self, where: str, data: Any, path: str = "") -> None:
        self.where, self.data, self.path = where, data, path
        if not isinstance(data, dict):
            raise ValueError(f"{where}: {path or 'document'} must be an object, got {data!r}")

    def _name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, *constraints: Any, default: Any = ...) -> Any:
        if key not in self.data:
            if default is ...:
                raise ValueError(f"{self.where}: {self._name(key)} is missing")
            return default
        return check(self.where, self._name(key), self.data[key], *constraints)

    def sub(self, key: str) -> _Doc:
        return _Doc(self.where, self.get(key, Instance(dict, "an object")), self._name(key))

    def strings(self, key: str, default: Any = ...) -> tuple[str, ...]:
        value = self.get(key, Instance(list, "a list of strings"), default=default)
        if value is None:
            return ()
        for item in value:
            check(self.where, self._name(key), item, Instance(str, "a list of strings"))
        return tuple(value)

    def check_keys(self, allowed: set[str]) -> None:
        extra = sorted(set(self.data) - allowed)
        if extra:
            raise ValueError(f"{self.where}: unknown field {self._name(extra[0])!r}")


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path.name}: not valid JSON ({err})") from None


def _protocol(folder: Path) -> dict[str, Any]:
    path = folder / "protocol.json"
    if not path.is_file():
        raise FileNotFoundError(f"--experiments: no protocol.json in {folder}")
    doc = _Doc(path.name, _read(path))
    doc.get("format", Options(("lorax_core.bench.protocol",)))
    doc.get("version", Integer(1, 1))
    datasets: dict[str, DatasetSpec] = {}
    for name in doc.get("datasets", Instance(dict, "an object")):
        d = doc.sub("datasets").sub(name)
        loader = d.get("loader", Options(LOADERS))
        datasets[name] = DatasetSpec(
            name=name,
            loader=loader,
            n_train=d.get("n_train", Integer(low=10)),
            n_test=d.get("n_test", Integer(low=1)),
            val_fraction=d.get("val_fraction", _FRACTION),
            max_length=d.get("max_length", Integer(low=4)),
            min_confidence=d.get("min_confidence", Real(0.0, 1.0), NoneValue(), default=None),
        )
    models: dict[str, ModelSpec] = {}
    for name in doc.get("models", Instance(dict, "an object")):
        m = doc.sub("models").sub(name)
        names = m.strings("datasets")
        for dataset in names:
            check(path.name, f"models.{name}.datasets", dataset, Options(tuple(datasets)))
        cpu = m.get("cpu_methods", Options(("all",)), Instance(list, "a list"), default="all")
        models[name] = ModelSpec(
            name=name,
            loader=m.get("loader", Options(MODEL_LOADERS)),
            pooling=m.get("pooling", Options(POOLINGS)),
            targets=m.strings("targets"),
            datasets=names,
            cpu_methods=None if cpu == "all" else m.strings("cpu_methods"),
        )
    modes: dict[str, ModeSpec] = {}
    for name in doc.get("modes", Instance(dict, "an object")):
        m = doc.sub("modes").sub(name)
        mode_models = m.strings("models")
        for model in mode_models:
            check(path.name, f"modes.{name}.models", model, Options(tuple(models)))
        seeds = m.get("seeds", Instance(list, "a list of seeds"))
        for seed in seeds:
            check(path.name, f"modes.{name}.seeds", seed, Integer(low=0))
        steps = m.sub("steps")
        for model in [*mode_models, *steps.data]:
            check(path.name, f"modes.{name}.steps", model, Options(tuple(models)))
        modes[name] = ModeSpec(
            name=name,
            models=mode_models,
            seeds=tuple(seeds),
            steps={
                k: steps.get(k, Integer(low=1)) for k in dict.fromkeys([*mode_models, *steps.data])
            },
            lr_grid_models=m.strings("lr_grid_models"),
        )
    optimizer = doc.sub("optimizer")
    betas = optimizer.get("betas", Instance(list, "a list [beta1, beta2]"))
    if len(betas) != 2:
        raise ValueError(f"{path.name}: optimizer.betas must be a list [beta1, beta2]")
    return {
        "split_seed": doc.get("split_seed", Integer(low=0)),
        "batch_size": doc.get("batch_size", Integer(low=1)),
        "eval_batch_size": doc.get("eval_batch_size", Integer(low=1)),
        "warmup_fraction": doc.get("warmup_fraction", Real(0.0, 1.0, closed="left")),
        "optimizer": {
            "betas": [check(path.name, "optimizer.betas", b, Real(0.0, 1.0)) for b in betas],
            "eps": optimizer.get("eps", _POS),
            "weight_decay": optimizer.get("weight_decay", Real(0.0, None)),
        },
        "datasets": datasets,
        "models": models,
        "modes": modes,
    }


def _method(path: Path) -> MethodSpec:
    doc = _Doc(path.name, _read(path))
    doc.check_keys(
        {"format", "version", "name", "label", "kind", "order", "lr", "lr_grid", "source"}
        | {"adapter", "gelora", "bidora", "allocator"}
    )
    doc.get("format", Options(("lorax_core.bench.method",)))
    doc.get("version", Integer(1, 1))
    name = doc.get("name", Options((path.stem,)))
    kind = doc.get("kind", Options(KINDS))
    grid = doc.get("lr_grid", Instance(list, "a list of learning rates"))
    if not grid:
        raise ValueError(f"{path.name}: lr_grid must hold at least one learning rate")
    for lr in grid:
        check(path.name, "lr_grid", lr, _POS)
    needs = {"adapter": kind in ("adapter", "bidora", "adalora", "elalora")}
    adapter = doc.get("adapter", Instance(dict, "an object"), default={})
    if needs["adapter"] and "method" not in adapter:
        raise ValueError(f"{path.name}: adapter.method is missing")
    gelora = doc.get("gelora", Instance(dict, "an object"), NoneValue(), default=None)
    if gelora is not None:
        g = _Doc(path.name, gelora, "gelora")
        g.get("pooling", Options(("mean", "cls", "last", "tokens")))
    allocator = doc.get("allocator", Instance(dict, "an object"), NoneValue(), default=None)
    if kind in ("adalora", "elalora") and allocator is None:
        raise ValueError(f"{path.name}: allocator is missing (kind {kind!r} needs it)")
    bidora = doc.get("bidora", Instance(dict, "an object"), NoneValue(), default=None)
    if kind == "bidora" and bidora is None:
        raise ValueError(f"{path.name}: bidora is missing (kind 'bidora' needs it)")
    return MethodSpec(
        name=name,
        label=doc.get("label", Instance(str, "a string")),
        kind=kind,
        order=doc.get("order", Integer(low=0), default=1000),
        lr=doc.get("lr", _POS),
        lr_grid=tuple(float(x) for x in grid),
        source=doc.get("source", Instance(str, "a string")),
        adapter=adapter,
        gelora=gelora,
        bidora=bidora,
        allocator=allocator,
    )


def load_experiments(folder: str | Path | None = None) -> Experiments:
    """Read and validate ``protocol.json`` and every ``<method>.json`` of ``folder``.

    Raises:
        FileNotFoundError: ``folder`` or its ``protocol.json`` is missing.
        ValueError, TypeError: a field is wrong (the message names the file and the field).
    """
    path = default_experiments_dir() if folder is None else Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"--experiments: {path} is not a folder")
    protocol = _protocol(path)
    methods: dict[str, MethodSpec] = {}
    for file in sorted(path.glob("*.json")):
        if file.name != "protocol.json":
            spec = _method(file)
            methods[spec.name] = spec
    methods = dict(sorted(methods.items(), key=lambda item: (item[1].order, item[0])))
    for model in protocol["models"].values():
        for name in model.cpu_methods or ():
            check(
                "protocol.json", f"models.{model.name}.cpu_methods", name, Options(tuple(methods))
            )
    return Experiments(folder=path, methods=methods, **protocol)
