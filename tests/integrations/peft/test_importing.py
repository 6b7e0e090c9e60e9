"""import_peft on the real MiniLM and on small models: PEFT adapters read back with the same
outputs and merges; adapters that import cannot read exactly are refused before any change."""

from __future__ import annotations

import copy
import json
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load, load_file, save_file
from torch import nn

from lorax_core.adapters.config import AdapterConfig
from lorax_core.adapters.inject import adapted_modules, inject
from lorax_core.adapters.io import load_adapter, save_adapter
from lorax_core.adapters.merge import merged_state_dict
from lorax_core.integrations.peft import CONFIG_NAME, WEIGHTS_NAME, export_peft, import_peft
from tests.adapters import fuzz
from tests.integrations.peft.helpers import ATOL, PREFIX, TARGETS, forward, small_export


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
    theirs = forward(peft_model, batch)
    assert (theirs - forward(base, batch)).abs().max() > 1e-2

    ours = import_peft(copy.deepcopy(base), tmp_path)
    layers = adapted_modules(ours)
    assert {layer.method for layer in layers.values()} == {"dora" if use_dora else "lora"}
    assert layers["encoder.layer.1.attention.self.query"].r == 6
    assert layers["encoder.layer.3.attention.self.value"].r == 2
    torch.testing.assert_close(forward(ours, batch), theirs, atol=ATOL, rtol=0)

    mine = merged_state_dict(ours)
    merged = peft_model.merge_and_unload().state_dict()
    for name in layers:
        torch.testing.assert_close(
            merged[f"{name}.weight"], mine[f"{name}.weight"], atol=1e-6, rtol=1e-5
        )


def test_import_refuses_missing_lora_b(tmp_path: Path) -> None:
    small_export(tmp_path)
    tensors = load_file(str(tmp_path / WEIGHTS_NAME))
    del tensors[f"{PREFIX}1.lora_B.weight"]
    save_file(tensors, str(tmp_path / WEIGHTS_NAME))
    fresh = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"missing tensor 'base_model\.model\.1\.lora_B\.weight'"):
        import_peft(fresh, tmp_path)
    assert not adapted_modules(fresh)  # nothing half-imported


def test_import_refuses_a_truncated_weights_file(tmp_path: Path) -> None:
    small_export(tmp_path)
    weights = tmp_path / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:-5])
    fresh = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="the file is truncated or its header is corrupt"):
        import_peft(fresh, tmp_path)
    assert not adapted_modules(fresh)


def test_import_refuses_unexpected_tensor(tmp_path: Path) -> None:
    small_export(tmp_path)
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
    small_export(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    config.update(edit)
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        import_peft(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)), tmp_path)


def test_import_rejects_wrong_base_model(tmp_path: Path) -> None:
    small_export(tmp_path)
    with pytest.raises(ValueError, match=r"has shape \(2, 4\), expected \(2, 5\)"):
        import_peft(nn.Sequential(nn.Linear(5, 3), nn.Linear(3, 2)), tmp_path)
    with pytest.raises(ValueError, match=r"not nn\.Linear layers of this model"):
        import_peft(nn.Sequential(nn.Linear(4, 3)), tmp_path)
    adapted = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    inject(adapted, AdapterConfig(r=1, target_modules=["0"]))
    with pytest.raises(ValueError, match="module '0' holding a lorax_core 'lora' adapter"):
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


def test_import_carries_peft_lora_dropout(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = LoraConfig(r=2, lora_alpha=4, lora_dropout=0.125, target_modules=["0", "1"])
    peft_model = get_peft_model(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)), config)
    peft_model.save_pretrained(str(tmp_path))
    ours = import_peft(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)), tmp_path)
    for name, layer in adapted_modules(ours).items():
        theirs = peft_model.base_model.model.get_submodule(name).lora_dropout["default"]
        assert isinstance(layer.lora_dropout, nn.Dropout)
        assert layer.lora_dropout.p == theirs.p == config.lora_dropout
    assert json.loads((tmp_path / CONFIG_NAME).read_text())["lora_dropout"] == 0.125
    edited = json.loads((tmp_path / CONFIG_NAME).read_text())
    edited["lora_dropout"] = 1.5
    (tmp_path / CONFIG_NAME).write_text(json.dumps(edited))
    with pytest.raises(ValueError, match=r"import_peft: adapter_config\.json field lora_dropout"):
        import_peft(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)), tmp_path)


def test_adapters_twice_are_refused_naming_the_module(tmp_path: Path) -> None:
    """A second injection or import into a model that holds adapters (ours or PEFT's) says so
    and names the module, instead of failing on a shape or type mismatch."""
    small_export(tmp_path)
    once = import_peft(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)), tmp_path)
    before = {k: v.clone() for k, v in once.state_dict().items()}
    with pytest.raises(ValueError, match=r"module '0' holding a lorax_core 'lora' adapter; import"):
        import_peft(once, tmp_path)
    with pytest.raises(ValueError, match=r"inject: .*module '0' holding a lorax_core 'lora'"):
        inject(once, AdapterConfig(r=1, target_modules=["0"]))
    assert once.state_dict().keys() == before.keys()
    assert all(torch.equal(once.state_dict()[k], v) for k, v in before.items())
    peft_model = get_peft_model(
        nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)), LoraConfig(r=2, target_modules=["0"])
    )
    with pytest.raises(
        ValueError, match=r"'base_model\.model\.0' holding a PEFT .*merge_and_unload"
    ):
        import_peft(peft_model, tmp_path)
    with pytest.raises(ValueError, match=r"holding a PEFT Linear adapter"):
        inject(peft_model.base_model.model, AdapterConfig(r=1, target_modules=["1"]))


def test_import_refuses_non_float_and_non_finite_weights(tmp_path: Path) -> None:
    small_export(tmp_path)
    tensors = load_file(str(tmp_path / WEIGHTS_NAME))
    key = f"{PREFIX}0.lora_A.weight"
    for value, error, message in [
        (tensors[key].to(torch.int32), TypeError, "must be floating point, got int32"),
        (tensors[key] * float("nan"), ValueError, "must be finite"),
    ]:
        save_file({**tensors, key: value}, str(tmp_path / WEIGHTS_NAME))
        fresh = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
        with pytest.raises(error, match=message):
            import_peft(fresh, tmp_path)
        assert not adapted_modules(fresh)


def test_bad_directory_arguments_are_named(tmp_path: Path) -> None:
    model = small_export(tmp_path)
    for call in (
        lambda d: import_peft(nn.Sequential(nn.Linear(4, 3)), d),
        lambda d: export_peft(model, d),
        lambda d: save_adapter(model, d),
        lambda d: load_adapter(nn.Sequential(nn.Linear(4, 3)), d),
    ):
        with pytest.raises(TypeError, match=r"directory must be a path \(str or os\.PathLike\)"):
            call(5)
        with pytest.raises(ValueError, match="directory must be a non-empty text path without NUL"):
            call(str(tmp_path / "a\0b"))


# -- corrupt folders (property) -----------------------------------------------------------------

PEFT_NAMES = (CONFIG_NAME, WEIGHTS_NAME)


def _peft_source() -> tuple[Any, bytes]:
    """A PEFT-written LoRA folder (PEFT's own config fields) of a small model."""
    torch.manual_seed(0)
    config = LoraConfig(r=2, lora_alpha=4, lora_dropout=0.1, target_modules=["0", "1"])
    peft_model = get_peft_model(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)), config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape))
    with tempfile.TemporaryDirectory() as folder:
        peft_model.save_pretrained(folder)
        document = json.loads((Path(folder) / CONFIG_NAME).read_text())
        return document, (Path(folder) / WEIGHTS_NAME).read_bytes()


PEFT_SOURCE = _peft_source()


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
@given(data=st.data())
def test_corrupt_peft_folder_imports_exactly_or_is_refused_unchanged(data: st.DataObject) -> None:
    """Import a corrupted PEFT folder: either every file tensor lands bit-exactly (in the
    adapter's dtype), or ValueError / TypeError and the model is unchanged."""
    config, weights = data.draw(fuzz.folder_edit(*PEFT_SOURCE, checksum_key=None))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    before = fuzz.snapshot(model)
    with tempfile.TemporaryDirectory() as folder:
        fuzz.write_folder(Path(folder), PEFT_NAMES, config, weights)
        try:
            import_peft(model, folder)
        except (ValueError, TypeError):
            assert fuzz.same_state(model, before)
            assert not adapted_modules(model)
            return
    params = dict(model.named_parameters())
    for key, value in load(weights).items():
        name = key.removeprefix(PREFIX).replace(".weight", "")
        assert torch.equal(params[name], value.to(params[name].dtype)), key
