"""Fixtures of the adapter tests: one pristine MiniLM per session and a real BBC News batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn


@pytest.fixture(scope="session")
def pristine(minilm_dir: Path) -> nn.Module:
    """The pretrained MiniLM encoder in eval mode; tests take deep copies and never modify it."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(minilm_dir)).eval()


@pytest.fixture(scope="session")
def batch(minilm_tokenizer: Any, bbc: Any) -> dict[str, torch.Tensor]:
    """The first lines of three BBC News training articles, tokenised (max 24 tokens)."""
    train, _ = bbc
    texts = [t.split("\n")[0] for t in train.texts[:3]]
    return dict(
        minilm_tokenizer(texts, padding=True, truncation=True, max_length=24, return_tensors="pt")
    )
