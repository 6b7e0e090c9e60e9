"""Hidden-state capture: ``capture_hidden_states`` against a plain transformers loop.

The peer is what one writes by hand: ``model(**batch, output_hidden_states=True)`` and a
masked mean per layer, concatenated at the end. Both run MiniLM on the same BBC News
paragraphs in the same process, interleaved (``benches/harness.py``); medians of ``--repeats``
rounds and their ratio are printed.

    python benches/bench_profile.py --n 256 --repeats 3
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import torch

from harness import interleaved

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def plain_loop(model: torch.nn.Module, batches: list[dict[str, Any]]) -> list[torch.Tensor]:
    """The peer: run the model, mean-pool every layer over real tokens, concatenate."""
    pooled_batches = []
    with torch.no_grad():
        for batch in batches:
            hidden = model(**batch, output_hidden_states=True).hidden_states
            mask = batch["attention_mask"][..., None].float()
            pooled_batches.append([(h * mask).sum(1) / mask.sum(1) for h in hidden])
    return [torch.cat(layer) for layer in zip(*pooled_batches, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="paragraphs")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from transformers import AutoModel, AutoTokenizer

    from lorax_core.datasets import bbc_news, minilm_path
    from lorax_core.gelora import capture_hidden_states

    texts = [p for t in bbc_news(seed=0)[0].texts for p in t.split("\n")[1:] if len(p.split()) >= 5]
    texts = sorted(texts[: args.n], key=len)
    model = AutoModel.from_pretrained(str(minilm_path())).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
    batches = [
        dict(
            tokenizer(
                texts[i : i + args.batch_size],
                padding=True,
                truncation=True,
                max_length=args.max_length,
                return_tensors="pt",
            )
        )
        for i in range(0, len(texts), args.batch_size)
    ]

    ours = capture_hidden_states(model, batches, n_samples=len(texts))
    peer = plain_loop(model, batches)
    error = max(
        float((torch.as_tensor(a) - b).abs().max()) for a, b in zip(ours, peer, strict=True)
    )
    times = interleaved(
        {
            "ours": lambda: capture_hidden_states(model, batches, n_samples=len(texts)),
            "peer": lambda: plain_loop(model, batches),
        },
        args.repeats,
        warmup=0,
    )
    t_ours, t_peer = times["ours"].median(), times["peer"].median()
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    print(
        f"MiniLM, {len(texts)} BBC paragraphs, {tokens} real tokens, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}"
    )
    print(f"{'':28}{'seconds':>10}{'tokens/s':>12}")
    print(f"{'capture_hidden_states':28}{t_ours:10.2f}{tokens / t_ours:12.0f}")
    print(f"{'plain transformers loop':28}{t_peer:10.2f}{tokens / t_peer:12.0f}")
    print(f"ratio (plain / ours): {t_peer / t_ours:.2f}   max |difference|: {error:.1e}")


if __name__ == "__main__":
    main()
