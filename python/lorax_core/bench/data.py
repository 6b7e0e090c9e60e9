"""The benchmark's splits: a fixed test split no run sees, a training pool, its validation part.

Every example has an id, the first 16 hex digits of the SHA-256 of its text (the loaders drop
duplicate texts, so ids are unique). The split of a dataset is made once from ``split_seed``:
all examples sorted by id, shuffled with ``random.Random(split_seed)``, the first ``n_test`` are
the test split and the next ``n_train`` the training pool; ``split_indices(n_train,
val_fraction, split_seed)`` takes the validation part out of the pool, the rest (``fit``) is
what every method trains on. BiDoRA's upper level is carved out of ``fit`` as well, so the
validation part that chooses the learning rate is never trained on by any method.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lorax_core._atomic import atomic_write_bytes
from lorax_core.bench.config import DatasetSpec
from lorax_core.training.split import split_indices

__all__ = ["Encoded", "Recorder", "Splits", "example_id", "load_splits", "write_splits"]


def example_id(text: str) -> str:
    """The id of an example: 16 hex digits of the SHA-256 of its UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Splits:
    """One dataset's split. ``texts``/``labels``/``ids`` are indexed alike; ``test``, ``fit`` and
    ``val`` are index lists into them (disjoint); ``label_names[y]`` names label ``y``."""

    dataset: str
    texts: list[str]
    labels: list[int]
    ids: list[str]
    label_names: list[str]
    test: list[int]
    fit: list[int]
    val: list[int]
    split_seed: int

    @property
    def n_classes(self) -> int:
        return len(self.label_names)

    def ids_of(self, indices: Iterable[int]) -> list[str]:
        return [self.ids[i] for i in indices]

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the three id lists (part of every run's identity)."""
        parts = [self.ids_of(self.test), self.ids_of(self.fit), self.ids_of(self.val)]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        def counts(indices: list[int]) -> list[int]:
            return [sum(1 for i in indices if self.labels[i] == k) for k in range(self.n_classes)]

        return {
            "dataset": self.dataset,
            "split_seed": self.split_seed,
            "label_names": self.label_names,
            "fingerprint": self.fingerprint,
            "rule": (
                "examples sorted by id (sha256(text)[:16]), shuffled with "
                "random.Random(split_seed); test = first n_test, pool = next n_train; "
                "val = split_indices(n_train, val_fraction, split_seed).val of the pool, "
                "fit = the rest"
            ),
            "label_counts": {
                "test": counts(self.test),
                "fit": counts(self.fit),
                "val": counts(self.val),
            },
            "test": self.ids_of(self.test),
            "fit": self.ids_of(self.fit),
            "val": self.ids_of(self.val),
        }


def _rows(spec: DatasetSpec) -> tuple[list[tuple[str, int]], list[str]]:
    from lorax_core import datasets

    if spec.loader == "bbc_news":
        train, test = datasets.bbc_news(seed=0)
    else:
        confidence = 0.9 if spec.min_confidence is None else spec.min_confidence
        train, test = datasets.tweets_sentiment(min_confidence=confidence, seed=0)
    rows = list(zip(train.texts + test.texts, train.labels + test.labels, strict=True))
    return rows, train.label_names


def load_splits(spec: DatasetSpec, split_seed: int) -> Splits:
    """The seeded split of ``spec``'s dataset (the same on every machine).

    Raises:
        ValueError: the dataset holds fewer than ``n_test + n_train`` examples.
    """
    rows, label_names = _rows(spec)
    keyed = sorted(((example_id(t), t, y) for t, y in rows), key=lambda r: r[0])
    if len({k for k, _, _ in keyed}) != len(keyed):
        raise ValueError(f"{spec.name}: two examples share an id")
    if len(keyed) < spec.n_test + spec.n_train:
        raise ValueError(
            f"{spec.name}: n_test + n_train must be at most the {len(keyed)} examples, "
            f"got {spec.n_test} + {spec.n_train}"
        )
    random.Random(split_seed).shuffle(keyed)
    chosen = keyed[: spec.n_test + spec.n_train]
    split = split_indices(spec.n_train, spec.val_fraction, split_seed, function=spec.name)
    pool = list(range(spec.n_test, spec.n_test + spec.n_train))
    return Splits(
        dataset=spec.name,
        texts=[t for _, t, _ in chosen],
        labels=[y for _, _, y in chosen],
        ids=[k for k, _, _ in chosen],
        label_names=label_names,
        test=list(range(spec.n_test)),
        fit=[pool[i] for i in split.train],
        val=[pool[i] for i in split.val],
        split_seed=split_seed,
    )


def write_splits(splits: Splits, folder: Path) -> Path:
    """Write the split's ids to ``folder/<dataset>.json`` (atomically); returns the path."""
    path = folder / f"{splits.dataset}.json"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(splits.to_dict(), indent=1) + "\n").encode())
    return path


class Encoded(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Tokenised examples: item ``i`` is ``(input_ids [L] int64, attention_mask [L] int64,
    label [] int64)`` of example ``indices[i]``."""

    def __init__(
        self, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, indices: Sequence[int]
    ) -> None:
        self.input_ids, self.mask, self.labels = ids, mask, labels
        self.indices = list(indices)

    @classmethod
    def build(
        cls, tokenizer: Any, splits: Splits, indices: Sequence[int], max_length: int
    ) -> Encoded:
        enc = tokenizer(
            [splits.texts[i] for i in indices],
            truncation=True,
            max_length=max_length,
            padding="max_length",
            return_tensors="pt",
        )
        labels = torch.tensor([splits.labels[i] for i in indices], dtype=torch.int64)
        return cls(enc["input_ids"], enc["attention_mask"], labels, indices)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.input_ids[i], self.mask[i], self.labels[i]


class Recorder(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Wraps a dataset and records which of its examples were read (by example index)."""

    def __init__(self, data: Encoded, on_read: Callable[[int], None]) -> None:
        self.data, self.on_read = data, on_read

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.on_read(self.data.indices[i])
        return self.data[i]
