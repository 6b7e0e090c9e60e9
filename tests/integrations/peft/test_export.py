"""export_peft on the real MiniLM: PEFT loads every form's export with the same outputs and merges.

The oracle is PEFT 0.21 itself (``PeftModel.from_pretrained``, ``get_peft_model``,
``merge_and_unload``) and, for the property test, a plain torch reconstruction of ΔW from the
files with PEFT's own rank/alpha pattern matching.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from peft import LoraConfig, PeftModel
from peft.utils.other import get_pattern_key
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from lorax_core.adapters.config import AdapterConfig
from lorax_core.adapters.inject import adapted_modules, inject
from lorax_core.adapters.layer import AdapterLinear
from lorax_core.adapters.lora import LoraLinear
from lorax_core.adapters.merge import merged_state_dict
from lorax_core.adapters.patterns import suffix_key
from lorax_core.adapters.svd import SVDLinear
from lorax_core.integrations.peft import CONFIG_NAME, WEIGHTS_NAME, export_peft, import_peft
from tests.integrations.peft.helpers import (
    ATOL,
    FORMS,
    PREFIX,
    forward,
    gelora_plan,
    randomize,
    small_export,
    svd_layers,
    svd_ranks,
)
from tests.test_atomic import run_child

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
    randomize(model, seed=len(request.param))
    if request.param == "svd":
        svd_ranks(model)
    return request.param, model, forward(model, batch)


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
    assert (ours - forward(base, batch)).abs().max() > 1e-2  # the adapters do change the output
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
    torch.testing.assert_close(forward(peft_model, batch), ours, atol=ATOL, rtol=0)

    theirs = peft_model.merge_and_unload().state_dict()
    mine = merged_state_dict(model)
    for name in layers:
        key = f"{name}.weight"
        torch.testing.assert_close(theirs[key], mine[key], atol=1e-6, rtol=1e-5)

    if mode == "compact":  # per-module ranks and alphas come back through the patterns
        back = import_peft(copy.deepcopy(base), tmp_path)
        torch.testing.assert_close(forward(back, batch), ours, atol=ATOL, rtol=0)


def test_gelora_plan_ranks_survive_export(base: nn.Module, tmp_path: Path) -> None:
    model = copy.deepcopy(base)
    plan = gelora_plan(model)
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
        assert reference.rank_pattern[suffix_key(name)] == planned.rank


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
    randomize(model, seed)
    layers = adapted_modules(model)
    svd = svd_layers(model)
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


def test_export_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="model"):
        export_peft("not a model", tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="export_peft: model must have lorax_core adapters"):
        export_peft(nn.Sequential(nn.Linear(2, 2)), tmp_path)
    model = small_export(tmp_path / "ok")
    with pytest.raises(ValueError, match="export_peft: mode must be one of 'compact'"):
        export_peft(model, tmp_path, mode="vllm")
    assert not (tmp_path / WEIGHTS_NAME).exists()


def test_export_rejects_dora_mixed_with_lora(tmp_path: Path) -> None:
    second = nn.Linear(3, 2)
    model = nn.Sequential(nn.Linear(4, 3), second)
    inject(model, AdapterConfig(method="dora", r=2, alpha=4, target_modules=["0", "1"]))
    model[1] = LoraLinear(second, r=2, alpha=4)
    with pytest.raises(ValueError, match="mixes adapter forms with different PEFT settings"):
        export_peft(model, tmp_path)


# -- crashes ------------------------------------------------------------------------------------

KILL_SCRIPT = """
    import sys
    from pathlib import Path
    from lorax_core.integrations.peft import export_peft
    from tests.integrations.peft.test_export import crash_models
    from tests.test_atomic import kill_at_every_step

    old, new = crash_models()
    runs = Path(sys.argv[1])
    print(kill_at_every_step(runs, lambda f: export_peft(old, f), lambda f: export_peft(new, f)))
"""


def crash_models() -> tuple[nn.Module, nn.Module]:
    """Two small adapted models with different adapter values (the old and the new export)."""
    models = []
    for seed in (1, 2):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
        inject(model, AdapterConfig(method="lora", r=2, alpha=4, target_modules=["0", "1"]))
        randomize(model, seed)
        models.append(model)
    return models[0], models[1]


def _folder_content(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    assert sorted(p.name for p in folder.iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME])
    return json.loads((folder / CONFIG_NAME).read_text()), load_file(folder / WEIGHTS_NAME)


def test_export_killed_at_every_step_holds_the_old_or_the_new_folder(tmp_path: Path) -> None:
    """SIGKILL before each file-system step of an export over a previous one: the folder
    always holds exactly the previous export or exactly the new one, and imports."""
    steps = int(run_child(KILL_SCRIPT, str(tmp_path / "runs")))
    old, new = crash_models()
    references = [
        export_peft(model, tmp_path / name) for model, name in ((old, "old"), (new, "new"))
    ]
    expected = [_folder_content(ref) for ref in references]
    seen = []
    for k in range(1, steps + 1):
        folder = tmp_path / "runs" / str(k)
        config, tensors = _folder_content(folder)
        matches = [
            config == c
            and t.keys() == tensors.keys()
            and all(torch.equal(t[n], tensors[n]) for n in t)
            for c, t in expected
        ]
        assert any(matches), k
        seen.append(matches.index(True))
        torch.manual_seed(0)
        import_peft(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)), folder)
    assert seen[0] == 0 and seen[-1] == 1 and set(seen[seen.index(1) :]) == {1}
