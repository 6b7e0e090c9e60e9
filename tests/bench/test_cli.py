"""lorax-bench end to end on a tiny protocol, and its answers to bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from lorax_core.bench.cli import main
from lorax_core.bench.config import load_experiments


def test_two_methods_run_through_the_command_and_resume_from_the_cache(
    tiny_experiments: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["--quick", "--experiments", str(tiny_experiments), "--out", str(out), "--inline",
            "--methods", "lora", "dora", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert "(2 run now" in capsys.readouterr().err
    doc = json.loads((out / "quick" / "results.json").read_text())
    cells = {c["method"]: c for c in doc["cells"]}
    assert set(cells) == {"lora", "dora"}
    lora, dora = cells["lora"], cells["dora"]
    assert 0.0 <= lora["test_accuracy"]["mean"] <= 1.0
    # LoRA r=8 on query/value of 6 layers of 384 (A: 8×384, B: 384×8) + a 384→3 head.
    assert lora["trainable_parameters"] == 6 * 2 * 8 * (384 + 384) + 384 * 3 + 3
    assert dora["trainable_parameters"] == lora["trainable_parameters"] + 6 * 2 * 384
    expected = dora["test_accuracy"]["mean"] - lora["test_accuracy"]["mean"]
    assert dora["diff_vs_lora"]["mean"] == pytest.approx(expected)
    assert len(list((out / "runs").glob("*.json"))) == 2
    rows = list(csv.DictReader((out / "quick" / "results.csv").open()))
    assert [r["method"] for r in rows] == ["lora", "dora"]
    assert "| DoRA |" in (out / "quick" / "table.md").read_text()
    assert (out / "quick" / "accuracy_vs_params.png").read_bytes()[:4] == b"\x89PNG"
    summary = capsys.readouterr().out if main([*argv[:5], "--summary"]) == 0 else ""
    assert summary.startswith("| method | params (MiniLM) | minilm · tweets |")
    assert "\n| DoRA | 79,491 | " in summary  # mean accuracy (Δ vs LoRA)
    split = json.loads((out / "splits" / "tweets.json").read_text())
    assert len(split["test"]) == 20 and len(split["fit"]) + len(split["val"]) == 40
    # Interrupted and restarted: nothing is run again, the table is the same.
    assert main(argv) == 0
    assert "(0 run now" in capsys.readouterr().err
    again = json.loads((out / "quick" / "results.json").read_text())
    assert again["cells"] == doc["cells"]


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lorax-bench: error: ") and "\n" not in err
    return err


@pytest.mark.parametrize(
    ("extra", "text"),
    [
        (["--methods", "lora", "nope"], "--methods must be among"),
        (["--datasets", "imdb"], "--datasets must be among"),
        (["--models", "gpt9"], "--models must be among"),
        (["--seeds", "-1"], "--seeds must be an integer >= 0, got -1"),
        (["--seeds", "x"], "--seeds must be an integer >= 0, got 'x'"),
        (["--seeds", "1", "1"], "--seeds must be distinct"),
        (["--steps", "0"], "--steps must be an integer >= 1, got 0"),
        (["--threads", "two"], "--threads must be an integer >= 1, got 'two'"),
        (["--device", "tpu"], "--device must be cpu or cuda"),
    ],
)
def test_bad_arguments_are_one_line_errors(
    tiny_experiments: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    text: str,
) -> None:
    argv = ["--quick", "--experiments", str(tiny_experiments), "--out", str(tmp_path), *extra]
    assert text in _error(argv, capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_device_is_refused(
    tiny_experiments: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--experiments", str(tiny_experiments), "--out", str(tmp_path), "--device", "cuda"]
    assert "torch sees no CUDA device" in _error(argv, capsys)


def test_out_that_is_a_file_and_a_missing_experiments_folder_are_refused(
    tiny_experiments: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "file"
    file.write_text("x")
    argv = ["--experiments", str(tiny_experiments), "--out", str(file)]
    assert "--out must be a folder" in _error(argv, capsys)
    missing = tmp_path / "missing"
    assert "is not a folder" in _error(["--experiments", str(missing)], capsys)


def test_bad_experiment_files_name_the_file_and_the_field(
    tiny_experiments: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    folder = tmp_path / "experiments"
    shutil.copytree(tiny_experiments, folder)
    lora = json.loads((folder / "lora.json").read_text())
    (folder / "lora.json").write_text(json.dumps({**lora, "lr_grid": [1e-3, -1.0]}))
    err = _error(["--experiments", str(folder), "--out", str(tmp_path / "o")], capsys)
    assert "lora.json: lr_grid must be" in err and "-1.0" in err
    (folder / "lora.json").write_text(json.dumps({**lora, "kind": "magic"}))
    assert "lora.json: kind must be one of" in _error(["--experiments", str(folder)], capsys)
    (folder / "lora.json").write_text("{not json")
    assert "lora.json: not valid JSON" in _error(["--experiments", str(folder)], capsys)


def test_the_shipped_experiments_cover_every_method_of_the_comparison() -> None:
    experiments = load_experiments()
    expected = {
        "head", "full", "lora", "gelora_mean_budget", "gelora_mean_raw", "gelora_tokens_budget",
        "gelora_tokens_raw", "slora", "nlora", "nlora_nystrom", "inttune", "pissa", "dora",
        "bidora", "adalora", "elalora",
    }  # fmt: skip
    assert set(experiments.methods) == expected
    for dataset in experiments.datasets.values():
        assert dataset.n_test >= 1000
    quick, full = experiments.modes["quick"], experiments.modes["full"]
    assert len(quick.seeds) == 1 and not quick.lr_grid_models
    assert len(full.seeds) >= 3 and "minilm" in full.lr_grid_models
    smollm2 = set(experiments.models["smollm2"].cpu_methods or ())
    assert {"lora", "dora", "bidora", "elalora", "nlora"} <= smollm2
    assert any(name.startswith("gelora") for name in smollm2)


def test_parallel_runs_give_the_table_of_one_run_at_a_time(
    tiny_experiments: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Full mode (a grid on seed 0, then seed 1 at the chosen rate): two worker processes at a
    time produce the same runs, the same choice and the same table as the sequential path."""
    common = ["--experiments", str(tiny_experiments), "--methods", "lora", "head",
              "--threads", "1", "--no-progress"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "one"), "--inline"]) == 0
    assert main([*common, "--out", str(tmp_path / "two"), "--jobs", "2"]) == 0
    assert "(8 run now" in capsys.readouterr().err  # 2 methods × (3 grid values + 1 seed)
    one, two = (
        json.loads((tmp_path / o / "full" / "results.json").read_text()) for o in ("one", "two")
    )
    assert [c["method"] for c in two["cells"]] == [c["method"] for c in one["cells"]]
    for a, b in zip(one["cells"], two["cells"], strict=True):
        assert (a["lr"], a["lr_source"], a["seeds"]) == (b["lr"], "grid", [0, 1])
        assert a["lr_grid_val_accuracy"] == b["lr_grid_val_accuracy"]
        assert a["test_accuracy_per_seed"] == b["test_accuracy_per_seed"]
    assert sorted(p.name for p in (tmp_path / "one" / "runs").iterdir()) == sorted(
        p.name for p in (tmp_path / "two" / "runs").iterdir()
    )


def test_jobs_and_inline_exclude_each_other(
    tiny_experiments: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--experiments", str(tiny_experiments), "--out", str(tmp_path), "--inline"]
    assert "not with --jobs" in _error([*argv, "--jobs", "2"], capsys)
    assert "--jobs must be an integer >= 1, got 0" in _error([*argv[:4], "--jobs", "0"], capsys)
