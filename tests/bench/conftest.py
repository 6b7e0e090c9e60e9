"""A tiny copy of the shipped experiments (40 training and 20 test tweets, 3 steps of 4)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lorax_core.bench.config import default_experiments_dir


def write_tiny_experiments(folder: Path, steps: int = 3) -> Path:
    """Copy the shipped method files into ``folder`` beside a small protocol; returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    source = default_experiments_dir()
    protocol = json.loads((source / "protocol.json").read_text())
    protocol["batch_size"] = 4
    protocol["eval_batch_size"] = 16
    tweets = protocol["datasets"]["tweets"]
    protocol["datasets"] = {
        "tweets": {**tweets, "n_train": 40, "n_test": 20, "val_fraction": 0.25, "max_length": 16}
    }
    protocol["models"] = {"minilm": {**protocol["models"]["minilm"], "datasets": ["tweets"]}}
    protocol["modes"] = {
        mode: {
            "models": ["minilm"],
            "seeds": seeds,
            "steps": {"minilm": steps},
            "lr_grid_models": grid,
        }
        for mode, seeds, grid in (("quick", [0], []), ("full", [0, 1], ["minilm"]))
    }
    (folder / "protocol.json").write_text(json.dumps(protocol, indent=1))
    for file in source.glob("*.json"):
        if file.name != "protocol.json":
            shutil.copy(file, folder / file.name)
    return folder


@pytest.fixture(scope="session")
def tiny_experiments(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_experiments(tmp_path_factory.mktemp("bench") / "experiments")
