"""PEFT interoperability on the real MiniLM: export → PEFT loads it, PEFT → import, merges agree.

The oracle is PEFT 0.21 itself (``PeftModel.from_pretrained``, ``get_peft_model``,
``merge_and_unload``) and, for the property test, a plain torch reconstruction of ΔW from the
files with PEFT's own rank/alpha pattern matching.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils.other import get_pattern_key
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from lorax_core.adapters.config import AdapterConfig
from lorax_core.adapters.dora import DoraLinear
from lorax_core.adapters.inject import adapted_modules, inject
from lorax_core.adapters.io import save_adapter
from lorax_core.adapters.layer import AdapterLinear
from lorax_core.adapters.lora import LoraLinear
from lorax_core.adapters.merge import merged_state_dict
from lorax_core.adapters.svd import SVDLinear
from lorax_core.gelora.plan import RankPlan, plan_ranks
from lorax_core.integrations.peft import CONFIG_NAME, WEIGHTS_NAME, export_peft, import_peft

TARGETS = ["query", "value", "intermediate.dense"]
SENTENCES = ["Shares in the bank rose sharply.", "The striker scored twice on Saturday."]
# Layer-wise IDs of the kind TwoNN gives MiniLM (h_0 … h_6); the plan then varies ranks by block.
GELORA_IDS = [10.0, 12.4, 11.0, 13.9, 12.2, 14.6, 10.5]
PREFIX = "base_model.model."
ATOL = 2e-5


@pytest.fixture(scope="module")
def base(minilm_dir: Path) -> nn.Module:
    """The pristine MiniLM; tests use deep copies."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(minilm_dir)).eval()


@pytest.fixture(scope="module")
def batch(minilm_tokenizer: Any) -> dict[str, torch.Tensor]:
    return dict(
        minilm_tokenizer(
            SENTENCES, padding=True, truncation=True, max_length=16, return_tensors="pt"
        )
    )


def _forward(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).last_hidden_state


def _randomize(model: nn.Module, seed: int) -> None:
    """Non-zero, seeded adapter values so every adapter changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in adapted_modules(model).values():
            for name, p in layer.adapter_parameters().items():
                if isinstance(layer, DoraLinear) and name == "lora_magnitude":
                    p.copy_(layer.weight_norm() * (1 + 0.2 * torch.rand(p.shape, generator=g)))
                elif name == "lora_E":
                    p.copy_(torch.randn(p.shape, generator=g))
                elif name == "lora_N":
                    p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[0]))
                else:
                    p.copy_(0.03 * torch.randn(p.shape, generator=g))


def _gelora_plan(model: nn.Module) -> RankPlan:
    return plan_ranks(GELORA_IDS, model, TARGETS, c=1.0, offset=1, alpha_over_r=2)


def _svd_layers(model: nn.Module) -> dict[str, SVDLinear]:
    return {n: m for n, m in adapted_modules(model).items() if isinstance(m, SVDLinear)}


def _svd_ranks(model: nn.Module) -> None:
    """Move SVD ranks: some modules shrink, one masks a rank inside its active range (E = 0)."""
    layers = list(_svd_layers(model).values())
    for layer in layers[1::2]:
        layer.set_active_rank(3)
    with torch.no_grad():
        layers[0].lora_E[1] = 0.0


FORMS: dict[str, Callable[[nn.Module], object]] = {
    "lora": lambda m: AdapterConfig(method="lora", r=4, alpha=8, target_modules=TARGETS),
    "slora": lambda m: AdapterConfig(
        method="slora", r=4, alpha=8, target_modules=TARGETS, use_rslora=True
    ),
    "dora": lambda m: AdapterConfig(method="dora", r=4, alpha=8, target_modules=TARGETS),
    "svd": lambda m: AdapterConfig(method="svd", r=6, alpha=12, r_max=8, target_modules=TARGETS),
    "gelora": _gelora_plan,
    # Residual inits: W holds W − s·B0 N0 A0; the export is a rank-2r LoRA on the original W.
    "lora_pissa": lambda m: AdapterConfig(
        method="lora",
        r=4,
        alpha=8,
        target_modules=TARGETS,
        init="pissa",
        init_options={"svd": "randomized"},
    ),
    "slora_nystrom": lambda m: AdapterConfig(
        method="slora", r=4, alpha=8, target_modules=TARGETS, init="nystrom"
    ),
}


# Every form in both modes; the residual inits in compact mode (the universal rewrite does not
# depend on the form, and the property test below covers residual inits in both modes).
CASES = [(form, mode) for form in FORMS for mode in ("compact", "universal")]
CASES = [(f, m) for f, m in CASES if m == "compact" or f not in ("lora_pissa", "slora_nystrom")]


@pytest.fixture(scope="module")
def adapted(
    request: pytest.FixtureRequest, base: nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[str, nn.Module, torch.Tensor]:
    """(form, our adapted model, its output); ``request.param`` names the form."""
    model = copy.deepcopy(base)
    inject(model, FORMS[request.param](model))
    _randomize(model, seed=len(request.param))
    if request.param == "svd":
        _svd_ranks(model)
    return request.param, model, _forward(model, batch)


def _exported_rank(layer: AdapterLinear) -> int:
    """Rank the export must have: SVD keeps active non-zero E, residual inits 2r, others r."""
    if isinstance(layer, SVDLinear):
        return int((layer.lora_E[: layer.active_rank] != 0).sum())
    return 2 * layer.r if "init_lora_A" in layer.state_dict() else layer.r


def _expected_keys(model: nn.Module, dora: bool) -> set[str]:
    suffixes = ["lora_A.weight", "lora_B.weight"] + (["lora_magnitude_vector"] if dora else [])
    return {f"{PREFIX}{n}.{s}" for n in adapted_modules(model) for s in suffixes}


@pytest.mark.parametrize(("adapted", "mode"), CASES, indirect=["adapted"])
def test_export_loads_in_peft_with_same_outputs(
    adapted: tuple[str, nn.Module, torch.Tensor],
    base: nn.Module,
    batch: dict[str, torch.Tensor],
    mode: str,
    tmp_path: Path,
) -> None:
    form, model, ours = adapted
    assert (ours - _forward(base, batch)).abs().max() > 1e-2  # the adapters do change the output
    export_peft(model, tmp_path, mode=mode)

    with safe_open(str(tmp_path / WEIGHTS_NAME), framework="pt") as f:
        keys, metadata = set(f.keys()), f.metadata()
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
    assert keys == _expected_keys(model, dora=form == "dora")
    assert metadata["lorax_core.mode"] == mode
    layers = adapted_modules(model)
    width = max(_exported_rank(layer) for layer in layers.values())
    for name, layer in layers.items():
        rank = width if mode == "universal" else _exported_rank(layer)
        assert shapes[f"{PREFIX}{name}.lora_A.weight"] == (rank, layer.in_features)
        assert shapes[f"{PREFIX}{name}.lora_B.weight"] == (layer.out_features, rank)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    if mode == "universal":
        assert config["r"] == config["lora_alpha"] == width
        assert config["rank_pattern"] == config["alpha_pattern"] == {}

    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path)).eval()
    torch.testing.assert_close(_forward(peft_model, batch), ours, atol=ATOL, rtol=0)

    theirs = peft_model.merge_and_unload().state_dict()
    mine = merged_state_dict(model)
    for name in layers:
        key = f"{name}.weight"
        torch.testing.assert_close(theirs[key], mine[key], atol=1e-6, rtol=1e-5)

    if mode == "compact":  # per-module ranks and alphas come back through the patterns
        back = import_peft(copy.deepcopy(base), tmp_path)
        torch.testing.assert_close(_forward(back, batch), ours, atol=ATOL, rtol=0)


def test_gelora_plan_ranks_survive_export(base: nn.Module, tmp_path: Path) -> None:
    model = copy.deepcopy(base)
    plan = _gelora_plan(model)
    assert len({m.rank for m in plan.modules.values()}) > 1  # a real per-module plan
    inject(model, plan)
    export_peft(model, tmp_path)
    config = LoraConfig.from_pretrained(str(tmp_path))
    reference = plan.to_peft_config()
    for name, planned in plan.modules.items():
        r_key = get_pattern_key(config.rank_pattern.keys(), name)
        a_key = get_pattern_key(config.alpha_pattern.keys(), name)
        assert config.rank_pattern.get(r_key, config.r) == planned.rank
        assert config.alpha_pattern.get(a_key, config.lora_alpha) == planned.alpha
        assert reference.rank_pattern[f"^{name}$"] == planned.rank


def _peft_model(base: nn.Module, use_dora: bool) -> PeftModel:
    """A PEFT adapter with PEFT-style (suffix) patterns, rsLoRA and random non-zero weights."""
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=TARGETS,
        rank_pattern={"value": 2, "layer.1.attention.self.query": 6},
        alpha_pattern={"value": 3},
        use_rslora=not use_dora,
        use_dora=use_dora,
    )
    model = get_peft_model(copy.deepcopy(base), config)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_magnitude_vector" in name:
                p.mul_(1 + 0.2 * torch.rand(p.shape, generator=g))
            elif "lora_" in name:
                p.copy_(0.03 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_import_peft_adapter_same_outputs(
    base: nn.Module, batch: dict[str, torch.Tensor], use_dora: bool, tmp_path: Path
) -> None:
    peft_model = _peft_model(base, use_dora)
    peft_model.save_pretrained(str(tmp_path))
    theirs = _forward(peft_model, batch)
    assert (theirs - _forward(base, batch)).abs().max() > 1e-2

    ours = import_peft(copy.deepcopy(base), tmp_path)
    layers = adapted_modules(ours)
    assert {layer.method for layer in layers.values()} == {"dora" if use_dora else "lora"}
    assert layers["encoder.layer.1.attention.self.query"].r == 6
    assert layers["encoder.layer.3.attention.self.value"].r == 2
    torch.testing.assert_close(_forward(ours, batch), theirs, atol=ATOL, rtol=0)

    mine = merged_state_dict(ours)
    merged = peft_model.merge_and_unload().state_dict()
    for name in layers:
        torch.testing.assert_close(
            merged[f"{name}.weight"], mine[f"{name}.weight"], atol=1e-6, rtol=1e-5
        )


# -- property test on a small torch model: the files' ΔW, read with PEFT's rules, is ours -------


def _peft_scaling(config: dict[str, Any], name: str) -> float:
    r_key = get_pattern_key(config["rank_pattern"].keys(), name)
    a_key = get_pattern_key(config["alpha_pattern"].keys(), name)
    r = config["rank_pattern"].get(r_key, config["r"])
    alpha = config["alpha_pattern"].get(a_key, config["lora_alpha"])
    return alpha / (math.sqrt(r) if config["use_rslora"] else r)


@given(
    method=st.sampled_from(["lora", "slora", "svd"]),
    residual=st.booleans(),
    ranks=st.lists(st.integers(1, 4), min_size=3, max_size=3),
    alphas=st.lists(st.floats(0.5, 64.0), min_size=3, max_size=3),
    use_rslora=st.booleans(),
    mode=st.sampled_from(["compact", "universal"]),
    seed=st.integers(0, 2**16),
)
def test_exported_delta_is_the_change_from_the_original_weights(
    method: str,
    residual: bool,
    ranks: list[int],
    alphas: list[float],
    use_rslora: bool,
    mode: str,
    seed: int,
) -> None:
    torch.manual_seed(seed)
    linears = [nn.Linear(7, 6), nn.Linear(6, 5), nn.Linear(5, 4)]
    model = nn.Sequential(linears[0], nn.Tanh(), linears[1], nn.Tanh(), linears[2])
    names = ["0", "2", "4"]
    original = {n: m.weight.detach().double().clone() for n, m in zip(names, linears, strict=True)}
    config = AdapterConfig(
        init="pissa" if residual and method != "svd" else "default",
        method=method,
        r=ranks[0],
        alpha=alphas[0],
        target_modules=names,
        rank_pattern={f"^{n}$": r for n, r in zip(names, ranks, strict=True)},
        alpha_pattern={f"^{n}$": a for n, a in zip(names, alphas, strict=True)},
        use_rslora=use_rslora,
    )
    inject(model, config)
    _randomize(model, seed)
    layers = adapted_modules(model)
    svd = _svd_layers(model)
    if svd:  # shrink one module, mask a rank of another
        svd["2"].set_active_rank(ranks[1] // 2)
        with torch.no_grad():
            svd["4"].lora_E[0] = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        export_peft(model, tmp, mode=mode)
        written = json.loads((Path(tmp) / CONFIG_NAME).read_text())
        tensors = load_file(str(Path(tmp) / WEIGHTS_NAME))
    for name, layer in layers.items():
        A = tensors[f"{PREFIX}{name}.lora_A.weight"].double()
        B = tensors[f"{PREFIX}{name}.lora_B.weight"].double()
        delta = _peft_scaling(written, name) * (B @ A)
        adapted_weight = layer.base_layer.weight.double() + layer.delta_weight().double()
        torch.testing.assert_close(delta, adapted_weight - original[name], atol=1e-6, rtol=1e-5)


# -- bad input ----------------------------------------------------------------------------------


def _small_export(directory: Path, method: str = "lora") -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    inject(model, AdapterConfig(method=method, r=2, alpha=4, target_modules=["0", "1"]))
    _randomize(model, 0)
    export_peft(model, directory)
    return model


def test_export_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="model"):
        export_peft("not a model", tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no lorax_core adapters"):
        export_peft(nn.Sequential(nn.Linear(2, 2)), tmp_path)
    model = _small_export(tmp_path / "ok")
    with pytest.raises(ValueError, match="mode"):
        export_peft(model, tmp_path, mode="vllm")
    assert not (tmp_path / WEIGHTS_NAME).exists()


def test_export_rejects_dora_mixed_with_lora(tmp_path: Path) -> None:
    second = nn.Linear(3, 2)
    model = nn.Sequential(nn.Linear(4, 3), second)
    inject(model, AdapterConfig(method="dora", r=2, alpha=4, target_modules=["0", "1"]))
    model[1] = LoraLinear(second, r=2, alpha=4)
    with pytest.raises(ValueError, match="mixes DoRA"):
        export_peft(model, tmp_path)


def test_import_refuses_missing_lora_b(tmp_path: Path) -> None:
    _small_export(tmp_path)
    tensors = load_file(str(tmp_path / WEIGHTS_NAME))
    del tensors[f"{PREFIX}1.lora_B.weight"]
    save_file(tensors, str(tmp_path / WEIGHTS_NAME))
    fresh = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"missing tensor 'base_model\.model\.1\.lora_B\.weight'"):
        import_peft(fresh, tmp_path)
    assert not adapted_modules(fresh)  # nothing half-imported


def test_import_refuses_unexpected_tensor(tmp_path: Path) -> None:
    _small_export(tmp_path)
    tensors = load_file(str(tmp_path / WEIGHTS_NAME))
    tensors[f"{PREFIX}1.lora_N.weight"] = torch.zeros(2, 2)
    save_file(tensors, str(tmp_path / WEIGHTS_NAME))
    with pytest.raises(ValueError, match="unexpected tensor"):
        import_peft(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)), tmp_path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"peft_type": "IA3"}, "peft_type must be 'LORA'"),
        ({"bias": "all"}, "bias='all' is not supported"),
        ({"modules_to_save": ["classifier"]}, "modules_to_save"),
        ({"init_lora_weights": "pissa"}, "path_initial_model_for_weight_conversion"),
        ({"target_modules": "all-linear"}, "target_modules='all-linear'"),
        ({"rank_pattern": {"^0$": 0}}, "rank_pattern"),
    ],
)
def test_import_rejects_unsupported_config(
    edit: dict[str, Any], message: str, tmp_path: Path
) -> None:
    _small_export(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    config.update(edit)
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        import_peft(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)), tmp_path)


def test_import_rejects_wrong_base_model(tmp_path: Path) -> None:
    _small_export(tmp_path)
    with pytest.raises(ValueError, match=r"has shape \(2, 4\), expected \(2, 5\)"):
        import_peft(nn.Sequential(nn.Linear(5, 3), nn.Linear(3, 2)), tmp_path)
    with pytest.raises(ValueError, match=r"not nn\.Linear layers of this model"):
        import_peft(nn.Sequential(nn.Linear(4, 3)), tmp_path)
    adapted = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    inject(adapted, AdapterConfig(r=1, target_modules=["0"]))
    with pytest.raises(ValueError, match="already has lorax_core adapters"):
        import_peft(adapted, tmp_path)
    with pytest.raises(FileNotFoundError, match=CONFIG_NAME):
        import_peft(nn.Sequential(nn.Linear(4, 3)), tmp_path / "nowhere")


def test_import_points_native_folders_to_load_adapter(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 3))
    inject(model, AdapterConfig(r=1, target_modules=["0"]))
    save_adapter(model, tmp_path)
    with pytest.raises(ValueError, match="read it with load_adapter"):
        import_peft(nn.Sequential(nn.Linear(4, 3)), tmp_path)


def test_import_honours_peft_regex_targets_and_exclusions(tmp_path: Path) -> None:
    torch.manual_seed(3)
    block = nn.Sequential(
        OrderedDict(proj_in=nn.Linear(6, 5), mid=nn.Sequential(nn.Linear(5, 5), nn.Linear(5, 5)))
    )
    base = nn.Sequential(block, nn.Tanh(), nn.Linear(5, 3))
    config = LoraConfig(
        r=2,
        lora_alpha=5,
        target_modules=r".*(proj_in|mid\.\d)",
        exclude_modules=["mid.1"],
        rank_pattern={"proj_in": 3},
        init_lora_weights=False,  # PEFT's random A and B
    )
    peft_model = get_peft_model(copy.deepcopy(base), config).eval()
    peft_model.save_pretrained(str(tmp_path))
    x = torch.randn(4, 6)
    with torch.no_grad():
        theirs = peft_model(x)
        assert (theirs - base(x)).abs().max() > 1e-2
    ours = import_peft(copy.deepcopy(base), tmp_path)
    assert sorted(adapted_modules(ours)) == ["0.mid.0", "0.proj_in"]
    assert adapted_modules(ours)["0.proj_in"].r == 3
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs, atol=1e-6, rtol=1e-6)


def test_import_rejects_an_adapter_for_another_bert(base: nn.Module, tmp_path: Path) -> None:
    """A MiniLM adapter on a BERT with the same module names but another width is refused."""
    from transformers import BertConfig, BertModel

    model = copy.deepcopy(base)
    inject(model, AdapterConfig(r=4, alpha=8, target_modules=TARGETS))
    export_peft(model, tmp_path)
    other = BertModel(
        BertConfig(hidden_size=64, num_hidden_layers=6, num_attention_heads=2, intermediate_size=96)
    )
    with pytest.raises(
        ValueError, match=r"lora_A\.weight' has shape \(4, 384\), expected \(4, 64\)"
    ):
        import_peft(other, tmp_path)
    assert not adapted_modules(other)
