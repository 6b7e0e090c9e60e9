"""Hidden-state capture and pooling on the real MiniLM checkpoint, against plain torch loops."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lorax_core.datasets import TextSplit
from lorax_core.gelora import capture_hidden_states, load_hidden_states, pool_hidden_states
from lorax_core.gelora.capture import pool_batch

MAX_LENGTH = 32


@pytest.fixture(scope="module")
def model(minilm_dir: Path) -> torch.nn.Module:
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(minilm_dir)).eval()


@pytest.fixture(scope="module")
def texts(bbc: tuple[TextSplit, TextSplit]) -> list[str]:
    return [t.split("\n")[0] for t in bbc[0].texts[:10]]  # ten real headlines


def batches(tokenizer: Any, texts: list[str], size: int, **kwargs: Any) -> list[dict[str, Any]]:
    encode = {"padding": True, "truncation": True, "max_length": MAX_LENGTH, **kwargs}
    return [
        dict(tokenizer(texts[i : i + size], return_tensors="pt", **encode))
        for i in range(0, len(texts), size)
    ]


def reference_hidden(model: torch.nn.Module, tokenizer: Any, text: str) -> list[torch.Tensor]:
    """h_0 … h_L of one unpadded text, [seq, D] each."""
    enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=MAX_LENGTH)
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
    return [h[0] for h in out.hidden_states]


def test_mean_pooling_matches_unpadded_runs(model, minilm_tokenizer, texts) -> None:  # type: ignore[no-untyped-def]
    hidden = capture_hidden_states(model, batches(minilm_tokenizer, texts, 4), n_samples=7)
    assert isinstance(hidden, list)
    assert len(hidden) == 7  # embeddings + 6 blocks
    assert all(h.shape == (7, 384) and h.dtype == np.float32 for h in hidden)
    for row, text in enumerate(texts[:7]):
        for layer, h in enumerate(reference_hidden(model, minilm_tokenizer, text)):
            np.testing.assert_allclose(hidden[layer][row], h.mean(0).numpy(), atol=2e-5)


def test_padding_never_changes_pooled_rows(model, minilm_tokenizer, texts) -> None:  # type: ignore[no-untyped-def]
    text = texts[:1]
    short = batches(minilm_tokenizer, text, 1, padding="max_length", max_length=20)
    long = batches(minilm_tokenizer, text, 1, padding="max_length", max_length=MAX_LENGTH)
    assert short[0]["input_ids"].shape[1] == 20 and long[0]["input_ids"].shape[1] == MAX_LENGTH
    for pooling in ("mean", "cls", "last"):
        a = capture_hidden_states(model, short, pooling=pooling, n_samples=1)
        b = capture_hidden_states(model, long, pooling=pooling, n_samples=1)
        for ha, hb in zip(a, b, strict=True):
            np.testing.assert_allclose(ha, hb, atol=2e-5, rtol=0)
    # Without the mask the padded positions would leak in: the check above can fail.
    with torch.no_grad():
        out = model(**long[0], output_hidden_states=True)
    naive = out.hidden_states[-1][0].mean(0).numpy()
    assert np.abs(naive - b[-1][0]).max() > 1e-2


def test_hooks_on_named_blocks_match_hidden_states(model, minilm_tokenizer, texts) -> None:  # type: ignore[no-untyped-def]
    data = batches(minilm_tokenizer, texts, 5)
    auto = capture_hidden_states(model, data, n_samples=10, pooling="last")
    blocks = [f"encoder.layer.{i}" for i in range(6)]
    hooked = capture_hidden_states(model, data, n_samples=10, pooling="last", layers=blocks)
    for a, b in zip(auto, hooked, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"lacks: \['encoder.layer.9'\]"):
        capture_hidden_states(model, data, n_samples=2, layers=["encoder.layer.9"])


def test_token_pooling_takes_real_tokens_only(model, minilm_tokenizer, texts) -> None:  # type: ignore[no-untyped-def]
    data = batches(minilm_tokenizer, texts, 4)
    with torch.no_grad():
        outs = [model(**b, output_hidden_states=True).hidden_states for b in data]
    real = np.concatenate(
        [o[3][b["attention_mask"].bool()].numpy() for o, b in zip(outs, data, strict=True)]
    )
    padded = np.concatenate(
        [o[3][~b["attention_mask"].bool()].numpy() for o, b in zip(outs, data, strict=True)]
    )
    assert len(padded) > 0
    rows = capture_hidden_states(model, data, pooling="tokens", n_samples=40, seed=1)
    assert rows[3].shape == (40, 384)
    distance = np.abs(rows[3][:, None, :] - real[None]).max(axis=2).min(axis=1)
    assert distance.max() < 1e-4  # every row is a real token's state
    assert len({tuple(np.round(r, 4)) for r in rows[3]}) == 40  # 40 distinct tokens
    again = capture_hidden_states(model, data, pooling="tokens", n_samples=40, seed=1)
    other = capture_hidden_states(model, data, pooling="tokens", n_samples=40, seed=2)
    np.testing.assert_array_equal(rows[3], again[3])
    assert not np.array_equal(rows[3], other[3])
    with pytest.raises(ValueError, match=f"only {len(real)} real tokens"):
        capture_hidden_states(model, data, pooling="tokens", n_samples=len(real) + 1)


def test_capture_to_file(tmp_path: Path, model, minilm_tokenizer, texts) -> None:  # type: ignore[no-untyped-def]
    data = batches(minilm_tokenizer, texts, 4)
    path = capture_hidden_states(model, data, n_samples=9, path=tmp_path / "h.safetensors")
    assert path == tmp_path / "h.safetensors"
    states = load_hidden_states(path)
    in_memory = capture_hidden_states(model, data, n_samples=9)
    for a, b in zip(states.layers, in_memory, strict=True):
        np.testing.assert_array_equal(a, b)
    modules = json.loads(states.metadata["modules"])
    assert modules["encoder.layer.5.intermediate.dense"] == [384, 1536]
    assert states.metadata["pooling"] == "mean" and states.metadata["n_samples"] == "9"
    assert model.training is False


def test_bad_arguments(model, minilm_tokenizer, texts) -> None:  # type: ignore[no-untyped-def]
    data = batches(minilm_tokenizer, texts, 5)
    with pytest.raises(ValueError, match="larger than the data, which holds only 10 examples"):
        capture_hidden_states(model, data, n_samples=11)
    with pytest.raises(ValueError, match=r"^capture_hidden_states: pooling must be one of 'mean'"):
        capture_hidden_states(model, data, pooling="max")
    with pytest.raises(ValueError, match=r"^capture_hidden_states: n_samples must be an int >= 1"):
        capture_hidden_states(model, data, n_samples=0)
    with pytest.raises(TypeError, match=r"n_samples must be an int >= 1, got None"):
        capture_hidden_states(model, data, n_samples=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed must be an int >= 0, got -1"):
        capture_hidden_states(model, data, seed=-1)
    with pytest.raises(TypeError, match="seed must be an int >= 0, got True"):
        capture_hidden_states(model, data, seed=True)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^capture_hidden_states: model must be a torch.nn.Module"):
        capture_hidden_states("bert", data)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="layers must be a non-empty sequence of module names"):
        capture_hidden_states(model, data, layers=[])
    with pytest.raises(TypeError, match="layers must be a non-empty sequence"):
        capture_hidden_states(model, data, layers="encoder.layer.0")  # type: ignore[arg-type]
    generic = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match="pass layers"):
        capture_hidden_states(generic, [torch.zeros(2, 3)], n_samples=2)


def test_generic_module_with_named_layers() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    x = torch.randn(6, 3)
    h0, h1, h2 = capture_hidden_states(net, [x[:4], x[4:]], n_samples=5, layers=["0", "2"])
    np.testing.assert_array_equal(h0, x[:5].numpy())
    with torch.no_grad():
        np.testing.assert_allclose(h1, net[0](x[:5]).numpy(), rtol=1e-6)
        np.testing.assert_allclose(h2, net(x[:5]).numpy(), rtol=1e-6)


@given(
    data=st.data(),
    batch=st.integers(1, 4),
    seq=st.integers(1, 6),
    pooling=st.sampled_from(["mean", "cls", "last", "tokens"]),
)
def test_pool_batch_matches_loop(data, batch, seq, pooling) -> None:  # type: ignore[no-untyped-def]
    rows = [data.draw(st.lists(st.booleans(), min_size=seq, max_size=seq)) for _ in range(batch)]
    mask = torch.tensor(rows)
    mask[:, data.draw(st.integers(0, seq - 1))] = True  # every example has a real token
    h = torch.randn(batch, seq, 3)
    h[~mask] = float("inf")  # padding that would poison any pooling it entered
    expected = []
    for b in range(batch):
        real = [h[b, t] for t in range(seq) if mask[b, t]]
        if pooling == "mean":
            expected.append(torch.stack(real).mean(0))
        elif pooling == "cls":
            expected.append(real[0])
        elif pooling == "last":
            expected.append(real[-1])
        else:
            expected.extend(real)
    got = pool_batch(h, mask, pooling)
    torch.testing.assert_close(got, torch.stack(expected), rtol=1e-6, atol=1e-6)


def test_pool_stored_states() -> None:
    rng = np.random.default_rng(0)
    tokens = [rng.standard_normal((5, 4, 3)).astype(np.float32) for _ in range(2)]
    mask = np.array([[1, 1, 0, 0]] * 5)
    pooled = pool_hidden_states(tokens, mask, n_samples=3)
    rows = [np.flatnonzero((tokens[1][:, :2].mean(axis=1) == r).all(axis=1)) for r in pooled[1]]
    chosen = np.concatenate(rows)
    assert len(chosen) == 3 and (np.diff(chosen) > 0).all()  # distinct examples, in file order
    np.testing.assert_allclose(pooled[0], tokens[0][chosen, :2].mean(axis=1), rtol=1e-6)
    every = pool_hidden_states(tokens, mask, pooling="tokens", seed=0)
    assert every[0].shape == (10, 3)  # all real tokens
    flat = [rng.standard_normal((5, 3)).astype(np.float32) for _ in range(2)]
    np.testing.assert_array_equal(pool_hidden_states(flat)[1], flat[1])  # all, in order
    with pytest.raises(ValueError, match="mismatched sample counts"):
        pool_hidden_states([flat[0], flat[1][:4]])
    with pytest.raises(ValueError, match="larger than the data"):
        pool_hidden_states(flat, n_samples=6)
    with pytest.raises(ValueError, match="per-token"):
        pool_hidden_states(flat, pooling="tokens")
    message = r"^pool_hidden_states: layers must be a non-empty sequence of arrays, got \[\]"
    with pytest.raises(ValueError, match=message):
        pool_hidden_states([])
    with pytest.raises(ValueError, match="at least one example, got 0 rows"):
        pool_hidden_states([np.zeros((0, 3)), np.zeros((0, 3))])
    with pytest.raises(ValueError, match=r"^pool_hidden_states: chunk_size must be an int >= 1"):
        pool_hidden_states(flat, chunk_size=0)
    # NumPy integers are ints
    assert pool_hidden_states(flat, n_samples=np.int64(2), seed=np.uint8(1))[0].shape == (2, 3)


@given(seed=st.integers(0, 2**32 - 1), n_samples=st.integers(1, 39))
@settings(max_examples=60, deadline=None)
def test_pooled_subset_is_seeded(seed: int, n_samples: int) -> None:
    """A subset of pooled rows is drawn by the seed, the same rows from every layer."""
    rng = np.random.default_rng(1)
    flat = [rng.standard_normal((40, d)).astype(np.float32) for d in (3, 5)]
    got = pool_hidden_states(flat, n_samples=n_samples, seed=seed, chunk_size=7)
    index = [int(np.flatnonzero((flat[0] == r).all(axis=1))[0]) for r in got[0]]
    assert len(set(index)) == n_samples and index == sorted(index)
    np.testing.assert_array_equal(got[1], flat[1][index])
    again = pool_hidden_states(flat, n_samples=n_samples, seed=seed)
    np.testing.assert_array_equal(again[0], got[0])
    if 3 <= n_samples <= 37:  # >= C(40, 3) subsets: two seeds almost never pick the same one
        others = [pool_hidden_states(flat, n_samples=n_samples, seed=seed + s)[0] for s in (1, 2)]
        assert any(o.shape != got[0].shape or (o != got[0]).any() for o in others)
