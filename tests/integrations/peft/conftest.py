"""Fixtures of the PEFT interoperability tests: the pristine MiniLM and a tokenised batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tests.integrations.peft.helpers import SENTENCES


@pytest.fixture(scope="session")
def base(minilm_dir: Path) -> nn.Module:
    """The pristine MiniLM; tests use deep copies."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(minilm_dir)).eval()


@pytest.fixture(scope="session")
def batch(minilm_tokenizer: Any) -> dict[str, torch.Tensor]:
    """Two real news-style sentences, tokenised (max 16 tokens)."""
    return dict(
        minilm_tokenizer(
            SENTENCES, padding=True, truncation=True, max_length=16, return_tensors="pt"
        )
    )
