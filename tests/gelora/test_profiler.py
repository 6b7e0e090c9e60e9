"""``profile()``: the library's one-call GeLoRA, on a loaded model, a checkpoint and a file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import skdim
import torch

from lorax_core.gelora import ProfileResult, RankPlan, load_hidden_states, profile
from lorax_core.gelora.cli import main
from lorax_core.gelora.profiler import read_texts


def test_hidden_states_file_matches_skdim_and_the_command(
    tmp_path: Path, hidden_file: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    result = profile(hidden_file, bootstrap=0, c=2.0, target_modules=["query", "value"])
    assert capsys.readouterr().err == ""  # no progress bars unless asked for
    assert isinstance(result, ProfileResult) and len(result.ids) == 7
    layers = load_hidden_states(hidden_file).layers
    expected = [skdim.id.TwoNN().fit(h.astype(np.float64)).dimension_ for h in layers]
    np.testing.assert_allclose([r.dimension for r in result.ids], expected, rtol=1e-6)
    assert [layer.dimension for layer in result.plan.layers] == [r.dimension for r in result.ids]
    assert len(result.plan.modules) == 12 and result.plan.c == 2.0
    assert result.plan.estimator == {"name": "twonn", "params": {"bootstrap": 0, "random_state": 0}}
    out = tmp_path / "plan.json"
    args = [str(hidden_file), "--bootstrap", "0", "--c", "2", "--targets", "query,value"]
    assert main([*args, "--out", str(out)]) == 0
    assert RankPlan.from_json(out) == result.plan
    assert "ID (twonn)" in capsys.readouterr().err  # the command shows them


def test_loaded_model_equals_its_checkpoint(
    minilm: torch.nn.Module, minilm_tokenizer, minilm_dir: Path, paragraphs
) -> None:  # type: ignore[no-untyped-def]
    kwargs = {"n_samples": 40, "max_length": 24, "bootstrap": 3, "seed": 5, "batch_size": 16}
    loaded = profile(minilm, paragraphs, tokenizer=minilm_tokenizer, **kwargs)
    from_disk = profile(minilm_dir, paragraphs, **kwargs)
    assert [r.dimension for r in loaded.ids] == [r.dimension for r in from_disk.ids]
    assert loaded.plan.modules == from_disk.plan.modules
    assert loaded.plan.capture == from_disk.plan.capture
    assert loaded.plan.capture["data"] == "texts" and loaded.plan.capture["n_samples"] == 40
    assert "sha256" not in loaded.plan.model and len(from_disk.plan.model["sha256"]) == 64
    mle = profile(minilm, paragraphs, tokenizer=minilm_tokenizer, estimator="mle", k=7, **kwargs)
    assert mle.plan.estimator["params"]["k"] == 7
    assert [r.dimension for r in mle.ids] != [r.dimension for r in loaded.ids]


def test_bad_arguments(minilm: torch.nn.Module, hidden_file: Path, paragraphs) -> None:  # type: ignore[no-untyped-def]
    cases = [
        ({"source": 3}, TypeError, "source must be a path or a torch.nn.Module, got 3"),
        ({"texts": [1, 2]}, ValueError, "texts must be a path, a sequence of strings or None"),
        ({"pooling": "max"}, ValueError, "pooling must be one of 'mean', 'cls'"),
        ({"estimator": "pca"}, ValueError, "estimator must be one of 'twonn', 'mle'"),
        ({"seed": -1}, ValueError, "seed must be an int >= 0, got -1"),
        ({"n_samples": True}, TypeError, "n_samples must be an int >= 1 or None, got True"),
        ({"bootstrap": -1}, ValueError, "bootstrap must be an int >= 0"),
        ({"budget": "uniform:"}, ValueError, "budget must be an int >= 1, 'uniform:<r>'"),
        ({"rank_min": 3, "rank_max": 2}, ValueError, "rank_max must be an int >= 3 or None"),
        ({"progress": 1}, TypeError, "progress must be a bool, got 1"),
        ({"texts": paragraphs}, ValueError, "texts must not be given with a hidden-states file"),
    ]
    for change, error, message in cases:
        kwargs = {"source": hidden_file, **change}
        with pytest.raises(error, match=f"^profile: {message}"):
            profile(**kwargs)
    with pytest.raises(ValueError, match=r"^profile: texts and tokenizer must be given"):
        profile(minilm, paragraphs)
    with pytest.raises(ValueError, match=r"^profile: texts must hold at least one text, got \[\]"):
        profile(minilm, [], tokenizer=object())
    with pytest.raises(ValueError, match="no such file"):
        profile(hidden_file.parent / "absent.safetensors")


def test_read_texts(tmp_path: Path) -> None:
    lines = tmp_path / "a.txt"
    lines.write_text("first text\n\n  second text  \n")
    assert read_texts(lines) == ["first text", "second text"]
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('{"text": "one", "label": 1}\n\n{"text": " two "}\n')
    assert read_texts(jsonl) == ["one", "two"]
    cases = {
        "deep.jsonl": ('{"text": "ok"}\n' + "[" * 100_000 + "\n", "line 2 is not valid JSON"),
        "list.jsonl": ('{"text": "ok"}\n[1]\n', "line 2 has no non-empty string field 'text'"),
        "blank.txt": ("\n \n", "holds no text"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_text(content)
        with pytest.raises(ValueError, match=message):
            read_texts(tmp_path / name)
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="is not UTF-8"):
        read_texts(tmp_path / "binary.txt")
    with pytest.raises(ValueError, match="cannot read text file"):
        read_texts(tmp_path / "absent.txt")
    assert json.loads('{"text": "x"}')  # the JSONL decoder is the standard one


def test_n_samples_draws_seeded_rows_from_a_pooled_file(tmp_path: Path, hidden_file: Path) -> None:
    every = load_hidden_states(hidden_file).layers
    head = [skdim.id.TwoNN().fit(h[:20].astype(np.float64)).dimension_ for h in every]

    def dimensions(seed: int) -> list[float]:
        result = profile(hidden_file, n_samples=20, seed=seed, bootstrap=0, c=2.0)
        assert result.plan.capture["n_samples"] == 20
        out = result.plan.to_json(tmp_path / f"plan{seed}.json")  # what profile() makes reads back
        assert RankPlan.from_json(out) == result.plan
        return [r.dimension for r in result.ids]

    first, again, other = dimensions(0), dimensions(0), dimensions(1)
    assert first == again and first != other
    for seed in (first, other):  # 20 of 60 rows: not the first 20 rows, whatever the seed
        assert not np.allclose(seed, head, rtol=1e-6)


def test_too_few_points_is_said_without_blaming_duplicates(hidden_file: Path) -> None:
    with pytest.raises(ValueError, match=r"^h_0: .* needs at least 3 points, got 2$"):
        profile(hidden_file, n_samples=2, bootstrap=0)
