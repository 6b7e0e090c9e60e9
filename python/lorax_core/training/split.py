"""One seeded split of a training set into a lower-level part and a held-out part.

Bi-level training fits one group of parameters on ``D_tr`` and another on ``D_val``; the two
index sets are drawn once, disjoint, from a seeded permutation, and recorded so that a run can
be reproduced and audited (:class:`DataSplit` is JSON-serialisable).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import torch

from lorax_core._validation import Integer, Real, check

__all__ = ["DataSplit", "split_indices"]


@dataclass(frozen=True)
class DataSplit:
    """Indices into the dataset: ``train`` (D_tr) and ``val`` (D_val), disjoint, both sorted.

    ``seed`` and ``val_fraction`` reproduce the split; ``fingerprint`` is a SHA-256 of the two
    index lists (a resumed run checks it).
    """

    n: int
    seed: int
    val_fraction: float
    train: tuple[int, ...]
    val: tuple[int, ...]

    @property
    def fingerprint(self) -> str:
        text = json.dumps([self.n, list(self.train), list(self.val)], separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "train": list(self.train),
            "val": list(self.val),
            "fingerprint": self.fingerprint,
        }


def split_indices(
    n: int, val_fraction: float, seed: int, *, min_size: int = 1, function: str = "split_indices"
) -> DataSplit:
    """Split ``range(n)`` into D_tr / D_val with ``round(n · val_fraction)`` held out.

    The permutation is ``torch.randperm(n)`` from a CPU generator seeded with ``seed`` (the same
    on every machine and process).

    Args:
        n: number of examples.
        val_fraction: fraction held out for D_val, in (0, 1).
        seed: non-negative seed.
        min_size: each part must hold at least this many examples (e.g. one batch).
        function: the public name the caller's errors speak of.

    Raises:
        ValueError: ``val_fraction`` outside (0, 1); a part smaller than ``min_size``.
    """
    fn = function
    n = check(fn, "n", n, Integer(low=0))
    val_fraction = check(fn, "val_fraction", val_fraction, Real(0.0, 1.0, closed="neither"))
    seed = check(fn, "seed", seed, Integer(low=0))
    n_val = round(n * val_fraction)
    n_train = n - n_val
    if min(n_val, n_train) < min_size:
        raise ValueError(
            f"{fn}: train_dataset must hold at least {min_size} examples in each split "
            f"(val_fraction={val_fraction}), got {n} examples ({n_train} train, {n_val} val)"
        )
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator).tolist()
    val = tuple(sorted(order[:n_val]))
    train = tuple(sorted(order[n_val:]))
    return DataSplit(n=n, seed=seed, val_fraction=val_fraction, train=train, val=val)
