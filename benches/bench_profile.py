"""The profile's capture against a bare ``transformers`` forward loop over the same texts.

Three loops over the same texts, batch size and max length, in one process, interleaved
(``benches/harness.py``):

- **capture** — the capture stage of ``lorax_core.gelora.profile`` (texts sorted by length,
  tokenised per batch, ``capture_hidden_states``: pooling on the device in block hooks, the
  forward pass stopped after the last block, inference mode);
- **bare forward** — the peer the target is set against: tokenise each batch of the texts in
  their given order and run ``model(**batch)`` under ``torch.no_grad()``, keeping nothing;
- **hand-written capture** — ``output_hidden_states=True`` and a masked mean per layer, as one
  writes it by hand (for reference).

Prints the medians of ``--repeats`` rounds, the ratio capture / bare (≤ 1: the capture takes
at most the bare loop's time), each loop's peak RSS above the RSS after loading the model
(each loop run once in a fresh process, ``--only``), the size of the pooled rows, the padding
fraction of both batchings, and the largest difference between the capture's rows and the
hand-written ones over h_0 … h_{L−1} (a correctness check; a decoder's h_L differs by design:
the capture takes it before the final norm).

    python benches/bench_profile.py --model minilm --n 512 --repeats 5
    python benches/bench_profile.py --model smollm2 --n 128 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from harness import interleaved, ratio_summary, rss_mib

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tokenised(tokenizer: Any, texts: list[str], size: int, max_length: int) -> list[dict[str, Any]]:
    """The batches of ``texts`` in the given order, padded to their longest text."""
    return [
        dict(
            tokenizer(
                texts[i : i + size],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
        )
        for i in range(0, len(texts), size)
    ]


def bare_forward(
    model: torch.nn.Module, tokenizer: Any, texts: list[str], size: int, max_length: int
) -> None:
    """The peer: tokenise each batch and run the model, keeping nothing."""
    with torch.no_grad():
        for batch in tokenised(tokenizer, texts, size, max_length):
            model(**batch)


def hand_written(
    model: torch.nn.Module, tokenizer: Any, texts: list[str], size: int, max_length: int
) -> list[np.ndarray]:
    """``output_hidden_states`` and a masked mean per layer, concatenated at the end."""
    pooled = []
    with torch.no_grad():
        for batch in tokenised(tokenizer, texts, size, max_length):
            hidden = model(**batch, output_hidden_states=True).hidden_states
            mask = batch["attention_mask"][..., None].float()
            pooled.append([((h * mask).sum(1) / mask.sum(1)).numpy() for h in hidden])
    return [np.concatenate(layer) for layer in zip(*pooled, strict=True)]


def padding_fraction(batches: list[dict[str, Any]]) -> float:
    cells = sum(b["attention_mask"].numel() for b in batches)
    return 1 - sum(int(b["attention_mask"].sum()) for b in batches) / cells


def peak_rss_mib() -> float:
    """This process's peak resident memory (``VmHWM``, Linux) in MiB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise OSError("no VmHWM in /proc/self/status")


def peak_above(name: str, argv: list[str]) -> float:
    """Peak RSS (MiB) of loop ``name`` above the RSS before it, run once in a fresh process."""
    run = subprocess.run(
        [sys.executable, __file__, *argv, "--only", name],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("minilm", "smollm2"), default="minilm")
    parser.add_argument("--n", type=int, default=512, help="BBC News paragraphs")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", help="run this loop once and print its peak RSS (MiB) above")
    args = parser.parse_args()

    from transformers import AutoModel, AutoTokenizer

    from lorax_core.datasets import bbc_news, minilm_path, smollm2_path
    from lorax_core.gelora.profiler import _from_model, _Options, _Texts

    folder = minilm_path() if args.model == "minilm" else smollm2_path()
    model = AutoModel.from_pretrained(str(folder)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    paragraphs = [
        p for t in bbc_news(seed=0)[0].texts for p in t.split("\n")[1:] if len(p.split()) >= 5
    ]
    rng = np.random.default_rng(0)
    texts = [paragraphs[i] for i in rng.choice(len(paragraphs), args.n, replace=False)]
    size, length = args.batch_size, args.max_length
    # skip_first=False: the capture pools what the hand-written loop pools, for the check.
    options = _Options("mean", args.n, 0, size, length, False, "all-linear", False, False)
    chosen = _Texts.of(texts, None, options)

    def capture() -> list[np.ndarray]:
        return _from_model(model, tokenizer, chosen, options).layers

    loops: dict[str, Callable[[], Any]] = {
        "capture": capture,
        "bare forward": lambda: bare_forward(model, tokenizer, texts, size, length),
        "hand-written capture": lambda: hand_written(model, tokenizer, texts, size, length),
    }
    if args.only is not None:
        base = rss_mib()
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets the peak RSS (VmHWM) to the current RSS
        loops[args.only]()
        print(peak_rss_mib() - base)
        return
    ours = capture()
    reference = hand_written(model, tokenizer, chosen.chosen, size, length)
    # h_L differs for a decoder: the capture takes it before the final norm (docs/gelora.md).
    error = max(float(np.abs(a - b).max()) for a, b in zip(ours[:-1], reference, strict=False))
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k != "only"]
    peaks = {name: peak_above(name, argv) for name in loops}
    times = interleaved(loops, args.repeats, warmup=0)
    given = tokenised(tokenizer, texts, size, length)
    tokens = sum(int(b["attention_mask"].sum()) for b in given)
    pooled_mib = sum(h.nbytes for h in ours) / 2**20
    print(
        f"{args.model}, {args.n} BBC paragraphs, {tokens} real tokens, batch {size}, max length "
        f"{length}, {torch.get_num_threads()} threads, median of {args.repeats} interleaved rounds"
    )
    print(f"{'':24}{'seconds':>10}{'tokens/s':>12}{'peak RSS +MiB':>15}")
    for name in loops:
        t = times[name].median()
        print(f"{name:24}{t:10.2f}{tokens / t:12.0f}{peaks[name]:15.1f}")
    ratio = ratio_summary(times["capture"], times["bare forward"])
    print(f"capture / bare forward (target <= 1): {ratio}")
    sorted_batches = tokenised(tokenizer, chosen.chosen, size, length)
    print(
        f"padding: {padding_fraction(given):.1%} of the cells in the given order, "
        f"{padding_fraction(sorted_batches):.1%} length-sorted; pooled rows {pooled_mib:.1f} MiB; "
        f"max |capture - hand-written| over h_0 … h_L-1 {error:.1e}"
    )


if __name__ == "__main__":
    main()
