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
    targets = ["query", "value"]
    result = profile(hidden_file, bootstrap=0, c=2.0, target_modules=targets, budget=None)
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
    args += ["--budget", "none"]
    assert main([*args, "--out", str(out)]) == 0
    assert RankPlan.from_json(out) == result.plan
    assert "ID (twonn)" in capsys.readouterr().err  # the command shows them


def test_defaults_are_what_the_comparison_chose(hidden_file: Path) -> None:
    plan = profile(hidden_file, bootstrap=0).plan  # a pooled file naming its modules
    assert plan.budget == plan.uniform_parameters(8) >= plan.num_parameters
    assert plan.capture["pooling_in_profile"] == plan.capture["pooling"] == "mean"  # as pooled
    raw = profile(hidden_file, bootstrap=0, budget=None).plan
    assert raw.budget is None and raw.c == 1.0
    with pytest.raises(ValueError, match="profile: budget must be"):
        profile(hidden_file, budget="automatic")


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
        ({"rank_mode": "robust"}, ValueError, "rank_mode must be one of 'plain', 'noise-aware'"),
        ({"rank_mode": "noise-aware", "bootstrap": 1}, ValueError, "bootstrap must be an int >= 2"),
        ({"skip_first": 0}, TypeError, "skip_first must be a bool or None, got 0"),
        ({"final_norm": None}, TypeError, "final_norm must be a bool, got None"),
        ({"device": "gpu0"}, ValueError, "device must be a torch device such as 'cpu'"),
        ({"device": 0.5}, TypeError, "device must be a torch device"),
        ({"dtype": "float8"}, ValueError, "dtype must be one of 'float32', 'bfloat16', 'float16'"),
        ({"device_map": "everywhere"}, ValueError, "device_map must be one of 'auto', 'balanced'"),
        ({"device_map": {"": 1.5}}, ValueError, "device_map must be .*a map of module names"),
        (
            {"device": "cpu", "device_map": "auto"},
            ValueError,
            "device must be None with device_map",
        ),
        ({"device": "cpu"}, ValueError, "device must be None for a hidden-states file"),
    ]
    for change, error, message in cases:
        kwargs = {"source": hidden_file, **change}
        with pytest.raises(error, match=f"^profile: {message}"):
            profile(**kwargs)
    with pytest.raises(ValueError, match=r"^profile: texts and tokenizer must be given"):
        profile(minilm, paragraphs)
    with pytest.raises(ValueError, match=r"^profile: dtype must be None for a loaded model"):
        profile(minilm, paragraphs, tokenizer=object(), dtype="bfloat16")
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


@pytest.fixture(scope="module")
def tiny_llama(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LLaMA causal LM (3 blocks of width 32) with SmolLM2's tokenizer, saved as
    a checkpoint folder."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    folder = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(smollm2_dir)).save_pretrained(folder)
    return folder


def test_device_map_and_dtype_place_the_checkpoint(tiny_llama: Path, paragraphs) -> None:  # type: ignore[no-untyped-def]
    """On a machine without a GPU, ``device_map="auto"`` puts every block on the CPU: the same
    profile as the plain load, with the map recorded; bfloat16 weights are pooled in float32."""
    kwargs = {"n_samples": 40, "max_length": 16, "bootstrap": 2, "batch_size": 8}
    plain = profile(tiny_llama, paragraphs, **kwargs)
    assert plain.plan.capture["device"] == "cpu" and plain.plan.capture["dtype"] == "float32"
    assert plain.plan.capture["skip_first"] is True  # a causal LM: the first token is left out
    assert plain.plan.model["class"] == "LlamaModel" and len(plain.plan.layers) == 4
    for device_map in ("auto", {"": "cpu"}):
        mapped = profile(tiny_llama, paragraphs, device_map=device_map, **kwargs)
        assert mapped.plan.capture["device_map"] == device_map
        assert [r.dimension for r in mapped.ids] == [r.dimension for r in plain.ids]
    on_cpu = profile(tiny_llama, paragraphs, device="cpu", **kwargs)
    assert on_cpu.plan.layers == plain.plan.layers
    half = profile(tiny_llama, paragraphs, dtype="bfloat16", **kwargs)
    assert half.plan.capture["dtype"] == "bfloat16"
    for a, b in zip(half.ids, plain.ids, strict=True):
        assert a.dimension == pytest.approx(b.dimension, rel=0.15)  # bfloat16 rounding only


def test_the_id_stage_follows_the_models_cuda_device() -> None:
    """The estimates (and joint resamples) run on the model's CUDA device, else on the host;
    a CUDA model defaults to bfloat16 weights."""
    from lorax_core.gelora.profiler import _Placement

    on_gpu = _Placement("cuda:1", None, None)
    assert on_gpu.id_device == "cuda:1" and on_gpu.torch_dtype == torch.bfloat16
    assert _Placement("cuda", "float32", None).torch_dtype == torch.float32
    on_cpu = _Placement("cpu", None, None)
    assert on_cpu.id_device is None and on_cpu.torch_dtype == torch.float32
    mapped = _Placement(None, None, "auto")
    assert mapped.id_device == ("cuda" if torch.cuda.is_available() else None)
