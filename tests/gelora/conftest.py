"""Shared GeLoRA fixtures: real BBC News paragraphs and MiniLM hidden states captured from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorax_core.datasets import TextSplit
from lorax_core.gelora import capture_hidden_states


@pytest.fixture(scope="module")
def paragraphs(bbc: tuple[TextSplit, TextSplit]) -> list[str]:
    """Sixty real paragraphs of BBC News (the test split, titles dropped)."""
    found = [p for t in bbc[1].texts for p in t.split("\n")[1:] if len(p.split()) >= 5]
    return found[:60]


@pytest.fixture(scope="module")
def hidden_file(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path, paragraphs) -> Path:  # type: ignore[no-untyped-def]
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(minilm_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    batches = [
        dict(
            tokenizer(
                paragraphs[i : i + 20],
                padding=True,
                truncation=True,
                max_length=32,
                return_tensors="pt",
            )
        )
        for i in range(0, len(paragraphs), 20)
    ]
    path = tmp_path_factory.mktemp("hidden") / "hidden.safetensors"
    capture_hidden_states(model, batches, n_samples=len(paragraphs), path=path)
    return path
