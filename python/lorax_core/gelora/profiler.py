"""GeLoRA from end to end: hidden states → layer IDs → rank plan, in one call (docs/gelora.md).

:func:`profile` takes any of

- a hidden-states safetensors file (``hidden.<i>``, as written by ``capture_hidden_states``);
- a checkpoint ``model.safetensors`` (or its folder) with ``config.json`` and the tokenizer
  beside it, plus texts, run locally with ``transformers`` (never any hub access);
- a loaded model with its tokenizer, plus texts;

pools the hidden states h_0 … h_L, estimates their intrinsic dimensions d_0 … d_L and applies
the rank rule. The ``lorax-profile`` command is a thin shell around it. By default it pools
every real token (``pooling="tokens"``) and spends uniform rank-8 LoRA's parameter count
(``budget="auto"``): the pair that won the method comparison (docs/comparison.md).

>>> result = profile("checkpoint/", "texts.jsonl")                       # doctest: +SKIP
>>> result.plan.to_peft_config()                                         # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from lorax_core import _validation as val
from lorax_core._safetensors import read_header
from lorax_core.gelora.capture import (
    POOLINGS,
    capture_hidden_states,
    is_causal_lm,
    pool_hidden_states,
)
from lorax_core.gelora.modules import ModuleShapes, linear_modules, select_targets
from lorax_core.gelora.plan import RankPlan, plan_ranks
from lorax_core.gelora.rule import RULE_FIELDS, Budget, check_budget
from lorax_core.gelora.stability import MIN_RESAMPLES, RANK_MODES, resample_dimensions
from lorax_core.gelora.states import holds_hidden_states, load_hidden_states

__all__ = [
    "AUTO",
    "DEFAULT_BUDGET",
    "DEFAULT_N_SAMPLES",
    "DEFAULT_POOLING",
    "DEVICE_MAPS",
    "DTYPES",
    "ESTIMATORS",
    "ProfileResult",
    "profile",
    "read_texts",
]

#: Rows per layer when ``n_samples`` is not given (fewer if the data holds fewer).
DEFAULT_N_SAMPLES = 2000
#: The pooling of per-token states when ``pooling`` is not given, and the budget that
#: ``budget="auto"`` means: what won the method comparison at equal parameter count
#: (docs/comparison.md, "How the table sets GeLoRA's defaults").
DEFAULT_POOLING = "tokens"
DEFAULT_BUDGET = "uniform:8"
#: ``budget="auto"``: ``DEFAULT_BUDGET`` where the plan has modules to count, else the raw rule.
AUTO = "auto"
ESTIMATORS = ("twonn", "mle")
CHECKPOINT_NAME = "model.safetensors"
#: Fewest rows an ID estimate takes (TwoNN needs two neighbours of a point).
MIN_POINTS = 3

_PATH = val.Instance((str, os.PathLike), "a path")

#: Weight dtypes a checkpoint can be run in.
DTYPES = ("float32", "bfloat16", "float16")
#: ``transformers``' named device-map strategies.
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def _is_device(value: object) -> bool:
    try:
        torch.device(value)  # type: ignore[call-overload]
    except (RuntimeError, TypeError, ValueError):
        return False
    return True


_DEVICE = val.Satisfies((str, torch.device), _is_device, "a torch device such as 'cpu' or 'cuda:0'")
_DEVICE_MAP = val.Satisfies(
    Mapping,
    lambda m: all(
        isinstance(k, str) and (val.is_integer(v) or (isinstance(v, str) and bool(v)))
        for k, v in m.items()
    ),
    "a map of module names to devices",
)


@dataclass(frozen=True)
class ProfileResult:
    """What :func:`profile` measured and planned.

    Attributes:
        plan: the rank plan, with the model, estimator and capture described in it.
        ids: the ``IDResult`` of h_0 … h_L (``.dimension``, ``.ci``, ``.n_samples``, …).
    """

    plan: RankPlan
    ids: list[Any]


@dataclass(frozen=True)
class _Hidden:
    """Pooled h_0 … h_L (float32 ``[n, D_i]``) and what is known of where they came from."""

    layers: list[np.ndarray]
    shapes: ModuleShapes | None
    model: dict[str, Any]
    capture: dict[str, Any]


@val.validate_params(
    source=[_PATH, val.Instance(nn.Module, "a torch.nn.Module")],
    texts=[
        _PATH,
        val.Satisfies(
            (list, tuple),
            lambda items: all(isinstance(t, str) for t in items),
            "a sequence of strings",
        ),
        val.NoneValue(),
    ],
    data_name=[val.Instance(str), val.NoneValue()],
    pooling=[val.Options(POOLINGS), val.NoneValue()],
    estimator=val.Options(ESTIMATORS),
    k=val.Integer(low=1),
    bootstrap=val.Integer(low=0),
    n_samples=[val.Integer(low=1), val.NoneValue()],
    seed=val.Integer(low=0),
    c=val.Real(low=0),
    offset=val.Integer(),
    rank_min=val.Integer(low=1),
    rank_max=[val.Integer(low=1), val.NoneValue()],
    alpha_over_r=val.Real(low=0, closed="neither"),
    batch_size=val.Integer(low=1),
    max_length=val.Integer(low=1),
    progress=val.Bool(),
    rank_mode=val.Options(RANK_MODES),
    skip_first=[val.Bool(), val.NoneValue()],
    final_norm=val.Bool(),
    device=[_DEVICE, val.NoneValue()],
    dtype=[val.Options(DTYPES), val.NoneValue()],
    device_map=[val.Options(DEVICE_MAPS), _DEVICE_MAP, val.NoneValue()],
)
def profile(
    source: str | os.PathLike[str] | nn.Module,
    texts: str | os.PathLike[str] | Sequence[str] | None = None,
    *,
    tokenizer: Any = None,
    data_name: str | None = None,
    pooling: str | None = None,
    estimator: str = "twonn",
    k: int = 20,
    bootstrap: int = 20,
    n_samples: int | None = None,
    seed: int = 0,
    target_modules: str | Sequence[str] | None = "all-linear",
    budget: Budget | None = AUTO,
    c: float = 1.0,
    offset: int = 1,
    rank_min: int = 1,
    rank_max: int | None = None,
    alpha_over_r: float = 32.0,
    batch_size: int = 32,
    max_length: int = 128,
    progress: bool = False,
    rank_mode: str = "plain",
    skip_first: bool | None = None,
    final_norm: bool = False,
    device: str | torch.device | None = None,
    dtype: str | None = None,
    device_map: str | Mapping[str, int | str] | None = None,
) -> ProfileResult:
    """Per-layer intrinsic dimensions and the GeLoRA rank plan of a model or its hidden states.

    Args:
        source: a hidden-states ``.safetensors`` file; a checkpoint ``model.safetensors`` or
            its folder (``config.json`` and the tokenizer beside it); or a loaded model
            (``transformers``-style, with ``tokenizer``).
        texts: for a model or checkpoint, the texts to run: a sequence of strings, or a UTF-8
            file of one text per line or JSONL with a ``text`` field (:func:`read_texts`).
            Must be None for a hidden-states file.
        tokenizer: for a loaded model, its tokenizer (called as ``tokenizer(batch, padding=True,
            truncation=True, max_length=…, return_tensors="pt")``).
        data_name: how the plan's ``capture`` names the texts (default: the file's name, or
            ``"texts"``).
        pooling: ``mean`` | ``cls`` | ``last`` | ``tokens`` (see ``capture``). None (the
            default): ``DEFAULT_POOLING`` (``tokens``) for a model, a checkpoint or a per-token
            hidden-states file; a pooled ``[n, D]`` file is taken as it was pooled.
        estimator, k, bootstrap: the ID estimator (``twonn`` or ``mle`` with ``k`` neighbours)
            and its bootstrap resamples: each layer's interval, and as many joint resamples
            of all layers (:mod:`lorax_core.gelora.stability`) for every block's Δd interval,
            rank range and rank stability and the plan's stability (0: none; 1 gives the
            intervals only).
        n_samples: rows per layer (tokens for ``pooling="tokens"``); default
            ``DEFAULT_N_SAMPLES`` or all the data holds, if fewer. Texts are sampled with
            ``seed``, which also seeds the token subset and the bootstrap.
        target_modules, budget, c, offset, rank_min, rank_max, alpha_over_r: see
            :func:`lorax_core.gelora.plan_ranks`. ``budget="auto"`` (the default) is
            ``DEFAULT_BUDGET`` (uniform rank-8 LoRA's parameter count) when the plan has
            modules to count, else (a hidden-states file without module shapes) the raw
            rule; None is always the raw rule (``c``).
        batch_size, max_length: texts per forward pass, tokens per text.
        progress: show progress bars on stderr.
        rank_mode: ``plain`` (default) or ``noise-aware``: extra rank only where a block's ID
            increase is clear of the noise (the lower end of its joint-resample interval;
            needs ``bootstrap >= 2``).
        skip_first: leave each text's first token out of the pooling (None: for causal LMs;
            for a hidden-states file, only when True). See ``capture``.
        final_norm: h_L after a decoder's final norm rather than the last block's output.
        device: where a checkpoint runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``); default CPU.
        dtype: ``float32``, ``bfloat16`` or ``float16`` weights for a checkpoint; default
            bfloat16 on a CUDA device (or a ``device_map`` on a machine with one), else
            float32. States are pooled in float32 whatever the dtype.
        device_map: a ``transformers`` device map for a checkpoint larger than one device
            (``"auto"``, ``"balanced"``, ``"balanced_low_0"``, ``"sequential"`` or a map of
            module names to devices; needs ``accelerate``); not with ``device``.

    Returns:
        The :class:`ProfileResult`: the plan and the layer IDs.

    Raises:
        TypeError, ValueError: bad arguments (``profile: <argument> must be …``) or bad input
            files, each in one line naming the file; a layer whose ID cannot be estimated
            (``h_<i>: …``).
        ModuleNotFoundError: ``transformers`` is needed (checkpoints) and not installed.
    """
    auto_budget = budget == AUTO
    budget = None if auto_budget else check_budget("profile", "budget", budget)
    if rank_max is not None:
        val.check("profile", "rank_max", rank_max, val.Integer(low=rank_min), val.NoneValue())
    if rank_mode == "noise-aware" and bootstrap < MIN_RESAMPLES:
        raise ValueError(
            f"profile: bootstrap must be an int >= {MIN_RESAMPLES} with rank_mode="
            f"'noise-aware', got {bootstrap}"
        )
    if device is not None and device_map is not None:
        raise ValueError("profile: device must be None with device_map (it places the model)")
    placement = _Placement(device, dtype, device_map)
    options = _Options(
        pooling,
        n_samples,
        seed,
        batch_size,
        max_length,
        progress,
        target_modules,
        skip_first,
        final_norm,
    )
    if isinstance(source, nn.Module):
        if texts is None or tokenizer is None:
            raise ValueError("profile: texts and tokenizer must be given to run a loaded model")
        placement.refuse("a loaded model (place it yourself)")
        options = options.per_token()
        hidden = _from_model(source, tokenizer, _Texts.of(texts, data_name, options), options)
    else:
        hidden = _from_path(Path(source), texts, data_name, options, placement)
    params: dict[str, Any] = {"bootstrap": bootstrap, "random_state": seed}
    if estimator == "mle":
        params["k"] = k
    ids = _estimate(hidden.layers, estimator, params, progress, placement.id_device)
    resamples = None
    if bootstrap >= MIN_RESAMPLES:
        resamples = resample_dimensions(
            hidden.layers,
            estimator,
            {**params, **_id_device(placement.id_device)},
            bootstrap,
            seed,
            progress=progress,
        )
    if auto_budget and hidden.shapes is not None:
        budget = DEFAULT_BUDGET
    settings = (c, offset, rank_min, rank_max, alpha_over_r, budget, rank_mode)
    rule: dict[str, Any] = dict(zip(RULE_FIELDS, settings, strict=True))
    plan = plan_ranks(ids, hidden.shapes, target_modules, resamples=resamples, **rule)
    plan = dataclasses.replace(
        plan,
        model=hidden.model,
        estimator={"name": estimator, "params": params},
        capture=hidden.capture,
    )
    return ProfileResult(plan, ids)


@dataclass(frozen=True)
class _Options:
    pooling: str | None  # None: DEFAULT_POOLING, or a pooled file's own pooling
    n_samples: int | None
    seed: int
    batch_size: int
    max_length: int
    progress: bool
    target_modules: str | Sequence[str] | None
    skip_first: bool | None
    final_norm: bool

    def per_token(self) -> _Options:
        """These options for per-token states: pooling None is ``DEFAULT_POOLING``."""
        return dataclasses.replace(self, pooling=self.pooling or DEFAULT_POOLING)


@dataclass(frozen=True)
class _Placement:
    """Where and in which dtype a checkpoint runs."""

    device: str | torch.device | None
    dtype: str | None
    device_map: str | Mapping[str, int | str] | None

    def refuse(self, what: str) -> None:
        """Raise if any placement was asked for ``what`` (which cannot take one)."""
        for name in ("device", "dtype", "device_map"):
            if getattr(self, name) is not None:
                raise ValueError(f"profile: {name} must be None for {what}")

    @property
    def on_cuda(self) -> bool:
        if self.device is not None:
            return torch.device(self.device).type == "cuda"
        return self.device_map is not None and torch.cuda.is_available()

    @property
    def torch_dtype(self) -> torch.dtype:
        name = self.dtype or ("bfloat16" if self.on_cuda else "float32")
        return getattr(torch, name)  # type: ignore[no-any-return]

    @property
    def id_device(self) -> str | None:
        """The device for the ID estimates' kNN: the model's CUDA device, if any."""
        if self.device is not None and torch.device(self.device).type == "cuda":
            return str(self.device)
        return "cuda" if self.on_cuda else None


def _id_device(device: str | None) -> dict[str, Any]:
    """The ID estimators' ``device`` argument: the model's CUDA device, or none (the host)."""
    return {} if device is None else {"device": device}


@dataclass(frozen=True)
class _Texts:
    """The texts to run (sampled, sorted by length), with what the plan records of them."""

    chosen: list[str]
    n_samples: int
    n_texts: int
    name: str

    @classmethod
    def of(
        cls,
        texts: str | os.PathLike[str] | Sequence[str],
        data_name: str | None,
        options: _Options,
    ) -> _Texts:
        if isinstance(texts, (str, os.PathLike)):
            every, name = read_texts(texts), data_name or Path(texts).name
        else:
            every, name = list(texts), data_name or "texts"
        if not every:
            raise ValueError("profile: texts must hold at least one text, got []")
        if options.pooling == "tokens":
            # Every text holds several tokens: n_samples texts are enough for n_samples tokens.
            n_samples = options.n_samples or DEFAULT_N_SAMPLES
            n_texts = min(n_samples, len(every))
        else:
            if options.n_samples is not None and options.n_samples > len(every):
                raise ValueError(
                    f"profile: n_samples {options.n_samples} is larger than the data, which "
                    f"holds {len(every)} texts"
                )
            n_samples = n_texts = options.n_samples or min(DEFAULT_N_SAMPLES, len(every))
        rng = np.random.default_rng(options.seed)
        chosen = [every[i] for i in rng.choice(len(every), n_texts, replace=False)]
        # Batches of similar length waste little compute on padding; row order does not matter.
        return cls(sorted(chosen, key=len), n_samples, len(every), name)


def _from_path(
    path: Path,
    texts: str | os.PathLike[str] | Sequence[str] | None,
    data_name: str | None,
    options: _Options,
    placement: _Placement,
) -> _Hidden:
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    if holds_hidden_states(read_header(path)):
        if texts is not None:
            raise ValueError(f"profile: texts must not be given with a hidden-states file ({path})")
        placement.refuse(f"a hidden-states file ({path})")
        return _from_file(path, options)
    if not (path.parent / "config.json").is_file():
        raise ValueError(
            f"{path}: holds no hidden.<i> tensors and has no config.json beside it, so it is "
            "neither a hidden-states file nor a model checkpoint"
        )
    if path.name != CHECKPOINT_NAME:
        raise ValueError(f"{path}: a checkpoint must be named {CHECKPOINT_NAME}")
    if texts is None:
        raise ValueError(f"profile: texts must be given to run the model checkpoint {path}")
    options = options.per_token()
    chosen = _Texts.of(texts, data_name, options)
    model, tokenizer = _load_transformers(path.parent, placement)
    hidden = _from_model(model, tokenizer, chosen, options)
    hidden.model["sha256"] = _sha256(path)
    if placement.device_map is not None and hidden.capture["device_map"] is None:
        requested = placement.device_map  # transformers records a map of one device nowhere
        hidden.capture["device_map"] = requested if isinstance(requested, str) else dict(requested)
    return hidden


def _from_file(path: Path, options: _Options) -> _Hidden:
    states = load_hidden_states(path)
    per_token = states.layers[0].ndim == 3
    if per_token:
        options = options.per_token()
    n_samples = options.n_samples
    if n_samples is None and options.pooling == "tokens" and per_token:
        mask = states.attention_mask
        available = (
            int(mask.sum()) if mask is not None else int(np.prod(states.layers[0].shape[:2]))
        )
        n_samples = min(DEFAULT_N_SAMPLES, available)
    layers = pool_hidden_states(
        states.layers,
        states.attention_mask,
        pooling=options.pooling or "mean",  # a pooled file's own pooling: any but tokens
        n_samples=n_samples,
        seed=options.seed,
        skip_first=options.skip_first is True,
    )
    shapes = _module_shapes(path, states.metadata.get("modules"))
    if shapes is not None:
        select_targets(shapes, options.target_modules)  # fail before the estimation, not after
    capture: dict[str, Any] = {k: v for k, v in states.metadata.items() if k != "modules"}
    pooled_as = options.pooling or capture.get("pooling")  # None: the file does not say
    capture.update(pooling_in_profile=pooled_as, n_samples=layers[0].shape[0])
    model_info = {"hidden_states": path.name, "model": states.metadata.get("model")}
    return _Hidden(layers, shapes, model_info, capture)


def _module_shapes(path: Path, raw: str | None) -> dict[str, tuple[int, int]] | None:
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
        shapes = {str(k): (int(v[0]), int(v[1])) for k, v in doc.items()}
    except (
        json.JSONDecodeError,
        RecursionError,
        AttributeError,
        TypeError,
        ValueError,
        IndexError,
        KeyError,
    ):
        raise ValueError(f"{path}: metadata 'modules' is not a map of name -> [in, out]") from None
    return shapes


def _from_model(model: nn.Module, tokenizer: Any, texts: _Texts, options: _Options) -> _Hidden:
    pooling = options.pooling or DEFAULT_POOLING
    shapes = linear_modules(model)
    skip_first = is_causal_lm(model) if options.skip_first is None else options.skip_first
    select_targets(shapes, options.target_modules)  # fail before the capture, not after
    n_batches = -(-len(texts.chosen) // options.batch_size)
    with tqdm(
        total=n_batches,
        desc="capture",
        unit="batch",
        file=sys.stderr,
        disable=not options.progress,
    ) as bar:
        layers = capture_hidden_states(
            model,
            _batches(tokenizer, texts.chosen, options, bar.update),
            pooling=pooling,
            n_samples=texts.n_samples,
            seed=options.seed,
            skip_first=skip_first,
            final_norm=options.final_norm,
        )
        bar.update(bar.total - bar.n)  # capture stops as soon as it holds n_samples rows
    assert isinstance(layers, list)
    config = getattr(model, "config", None)
    model_info = {
        "name": getattr(config, "_name_or_path", None),
        "model_type": getattr(config, "model_type", None),
        "class": type(model).__name__,
        "num_hidden_layers": len(layers) - 1,
    }
    capture = {
        "data": texts.name,
        "n_texts": texts.n_texts,
        "pooling": pooling,
        "n_samples": texts.n_samples,
        "seed": options.seed,
        "max_length": options.max_length,
        "batch_size": options.batch_size,
        "skip_first": skip_first,
        "final_norm": options.final_norm,
        **_placement_of(model),
    }
    return _Hidden(layers, shapes, model_info, capture)


def _placement_of(model: nn.Module) -> dict[str, Any]:
    """Where ``model`` runs, as the plan's ``capture`` records it: the device and dtype of its
    first parameter and its ``device_map``, if it was dispatched with one."""
    param = next(model.parameters(), None)
    device_map = getattr(model, "hf_device_map", None)
    return {
        "device": None if param is None else str(param.device),
        "dtype": None if param is None else str(param.dtype).removeprefix("torch."),
        "device_map": None if not device_map else {str(k): v for k, v in device_map.items()},
    }


def _load_transformers(model_dir: Path, placement: _Placement) -> tuple[nn.Module, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise ModuleNotFoundError(
            "profiling a checkpoint needs transformers: "
            "pip install '.[transformers]' from a source checkout"
        ) from None
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        extra = {} if placement.device_map is None else {"device_map": placement.device_map}
        model = AutoModel.from_pretrained(
            str(model_dir), local_files_only=True, dtype=placement.torch_dtype, **extra
        )
    except Exception as err:  # transformers raises many types for a bad folder
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{model_dir}: cannot load the model or tokenizer: {first}") from None
    if placement.device is not None:
        model.to(placement.device)
    return model.eval(), tokenizer


def _batches(
    tokenizer: Any, texts: list[str], options: _Options, done: Callable[[int], object]
) -> Iterator[dict[str, Any]]:
    """Tokenised batches of ``texts``; calls ``done(1)`` once the consumer has used each."""
    for start in range(0, len(texts), options.batch_size):
        encoded = tokenizer(
            texts[start : start + options.batch_size],
            padding=True,
            truncation=True,
            max_length=options.max_length,
            return_tensors="pt",
        )
        yield dict(encoded)
        done(1)


def _estimate(
    layers: list[np.ndarray],
    estimator: str,
    params: dict[str, Any],
    progress: bool,
    device: str | None,
) -> list[Any]:
    """One ``IDResult`` per layer; a failure names the hidden state ``h_<i>``."""
    from lorax_core.id import estimate_layers

    params = {**params, **_id_device(device)}
    results = []
    bar = tqdm(
        layers, desc=f"ID ({estimator})", unit="layer", file=sys.stderr, disable=not progress
    )
    for i, h in enumerate(bar):
        if h.shape[0] < MIN_POINTS:  # said here: the estimator would blame duplicates
            raise ValueError(
                f"h_{i}: cannot estimate the intrinsic dimension: it needs at least "
                f"{MIN_POINTS} points, got {h.shape[0]}"
            )
        try:
            results.extend(estimate_layers([h], estimator, **params))
        except (ValueError, ArithmeticError) as err:  # e.g. all r2/r1 = 1 on a lattice
            reason = str(err).removeprefix("layer 0: ")
            raise ValueError(f"h_{i}: cannot estimate the intrinsic dimension: {reason}") from None
    return results


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_texts(path: str | os.PathLike[str]) -> list[str]:
    """Non-empty texts of a UTF-8 file: one per line, or JSONL objects with a ``text`` field.

    The file is JSONL when its first non-empty line starts with ``{``.

    Raises:
        ValueError: unreadable or non-UTF-8 file, no text, or a bad JSONL line (by number).
    """
    p = Path(path)
    try:
        content = p.read_bytes().decode("utf-8")
    except OSError as err:
        raise ValueError(f"{p}: cannot read text file: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{p}: is not UTF-8 text") from None
    lines = [(n, line.strip()) for n, line in enumerate(content.splitlines(), 1) if line.strip()]
    if not lines:
        raise ValueError(f"{p}: holds no text")
    if not lines[0][1].startswith("{"):
        return [line for _, line in lines]
    texts = []
    for n, line in lines:
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            raise ValueError(f"{p}: line {n} is not valid JSON") from None
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{p}: line {n} has no non-empty string field 'text'")
        texts.append(text.strip())
    return texts
