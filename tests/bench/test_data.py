"""The test split never enters training or validation: checked on the ids a run really read."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from lorax_core.bench.config import load_experiments
from lorax_core.bench.data import load_splits
from lorax_core.bench.runner import make_spec, run
from lorax_core.datasets import tweets_sentiment


def _spec(folder: Path, method: str, seed: int = 0) -> tuple[dict, object]:
    experiments = load_experiments(folder)
    dataset = experiments.datasets["tweets"]
    splits = load_splits(dataset, experiments.split_seed)
    spec = make_spec(
        experiments,
        experiments.models["minilm"],
        dataset,
        experiments.methods[method],
        lr=2e-3,
        seed=seed,
        steps=2,
        device="cpu",
        split_fingerprint=splits.fingerprint,
    )
    return spec, splits


def test_split_is_seeded_disjoint_and_made_of_real_distinct_tweets(tiny_experiments: Path) -> None:
    experiments = load_experiments(tiny_experiments)
    a = load_splits(experiments.datasets["tweets"], 0)
    b = load_splits(experiments.datasets["tweets"], 0)
    c = load_splits(experiments.datasets["tweets"], 1)
    assert a.to_dict() == b.to_dict() and a.fingerprint != c.fingerprint
    test, fit, val = (set(a.ids_of(x)) for x in (a.test, a.fit, a.val))
    assert len(test) == 20 and len(fit) == 30 and len(val) == 10
    assert not (test & fit) and not (test & val) and not (fit & val)
    # Independent oracle: the ids are hashes of the loader's texts, and no text repeats.
    train, held = tweets_sentiment(min_confidence=0.9, seed=0)
    by_id = {hashlib.sha256(t.encode()).hexdigest()[:16]: t for t in train.texts + held.texts}
    texts = [by_id[i] for i in a.ids]
    assert texts == a.texts and len(set(texts)) == len(texts)


@pytest.mark.parametrize("method", ["lora", "bidora"])
def test_a_run_reads_only_fit_examples_for_training(tiny_experiments: Path, method: str) -> None:
    spec, splits = _spec(tiny_experiments, method)
    outcome = run(spec, splits=splits, progress=False)
    fit = set(splits.ids_of(splits.fit))
    test, val = set(splits.ids_of(splits.test)), set(splits.ids_of(splits.val))
    assert outcome.trained_ids and outcome.trained_ids <= fit
    assert not outcome.trained_ids & test and not outcome.trained_ids & val
    assert set(outcome.test_ids) == test and set(outcome.val_ids) == val
    data = outcome.record["data"]
    digest = hashlib.sha256(json.dumps(sorted(outcome.trained_ids)).encode()).hexdigest()
    assert data["trained_ids_sha256"] == digest
    assert data["n_trained_examples"] == len(outcome.trained_ids)
    # Two steps of 4: LoRA reads 8 examples; BiDoRA also reads D_val batches, all inside fit.
    assert len(outcome.trained_ids) == 8 if method == "lora" else len(outcome.trained_ids) > 8


def test_a_run_is_deterministic_for_its_seed(tiny_experiments: Path) -> None:
    spec, splits = _spec(tiny_experiments, "lora", seed=3)
    first = run(spec, splits=splits, progress=False, threads=1).record
    second = run(spec, splits=splits, progress=False, threads=1).record
    assert first["train_loss"] == second["train_loss"]
    assert first["test_accuracy"] == second["test_accuracy"]
    other, _ = _spec(tiny_experiments, "lora", seed=4)
    assert (
        run(other, splits=splits, progress=False, threads=1).record["train_loss"]
        != (first["train_loss"])
    )
