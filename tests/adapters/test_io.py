"""save_adapter / load_adapter: bit-exact round trips, atomic writes, validation."""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load, load_file
from torch import nn

from lorax_core import _atomic
from lorax_core.adapters import (
    AdapterConfig,
    SVDLinear,
    adapted_modules,
    inject,
    load_adapter,
    merge,
    save_adapter,
)
from lorax_core.adapters import io as adapter_io
from tests.adapters import fuzz
from tests.test_atomic import run_child


def _train_a_little(model: nn.Module, seed: int) -> None:
    """Random, non-zero values for every adapter tensor (as after some training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in adapted_modules(model).values():
            for p in layer.adapter_parameters().values():
                p.add_(0.05 * torch.randn(p.shape, generator=g))


def _adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if ".lora_" in k}


CONFIGS = {
    "lora": AdapterConfig("lora", r=4, target_modules=["query", "value"]),
    "slora": AdapterConfig("slora", r=3, target_modules=["query"], train="intermediate"),
    "dora": AdapterConfig("dora", r=4, target_modules=["query"], rank_pattern={"layer.0.*": 2}),
    "svd": AdapterConfig("svd", r=4, r_max=6, target_modules=["value"], alpha=8.0),
}


@pytest.mark.parametrize("method", list(CONFIGS))
def test_round_trip_is_bit_exact(pristine: nn.Module, batch, tmp_path: Path, method: str) -> None:  # type: ignore[no-untyped-def]
    model = inject(copy.deepcopy(pristine), CONFIGS[method])
    _train_a_little(model, seed=1)
    if method == "svd":
        layers = list(adapted_modules(model).values())
        layers[0].set_active_rank(6)  # type: ignore[operator]
        layers[1].set_active_rank(2)  # type: ignore[operator]
    save_adapter(model, tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    stored = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert stored.keys() == _adapter_state(model).keys()  # only adapter tensors

    loaded = load_adapter(copy.deepcopy(pristine), tmp_path / "adapter")
    for key, value in _adapter_state(model).items():
        assert torch.equal(_adapter_state(loaded)[key], value), key
    assert torch.equal(loaded(**batch).last_hidden_state, model(**batch).last_hidden_state)
    mine = {n: p.requires_grad for n, p in model.named_parameters()}
    assert {n: p.requires_grad for n, p in loaded.named_parameters()} == mine
    if method == "svd":
        ranks = [m.active_rank for m in adapted_modules(loaded).values()]  # type: ignore[union-attr]
        assert ranks[:2] == [6, 2] and all(
            isinstance(m, SVDLinear) for m in adapted_modules(loaded).values()
        )

    # Loading into an already adapted model replaces its adapter tensors.
    other = inject(copy.deepcopy(pristine), CONFIGS[method])
    load_adapter(other, tmp_path / "adapter")
    assert torch.equal(other(**batch).last_hidden_state, model(**batch).last_hidden_state)


def test_config_file_records_modules(pristine: nn.Module, tmp_path: Path) -> None:
    model = inject(copy.deepcopy(pristine), CONFIGS["dora"])
    save_adapter(model, tmp_path)
    doc = json.loads((tmp_path / "adapter_config.json").read_text())
    assert doc["format_version"] == 1
    assert AdapterConfig.from_dict(doc["config"]) == CONFIGS["dora"]
    assert doc["modules"]["encoder.layer.0.attention.self.query"]["r"] == 2
    assert doc["modules"]["encoder.layer.1.attention.self.query"] == {
        "method": "dora",
        "r": 4,
        "alpha": 16.0,
        "in_features": 384,
        "out_features": 384,
    }


def _small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def _small_adapted(seed: int) -> nn.Module:
    model = inject(_small_model(), AdapterConfig("lora", r=2, target_modules=["0", "2"]))
    _train_a_little(model, seed)
    return model


def test_interrupted_write_keeps_previous_save(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    first = _small_adapted(seed=1)
    save_adapter(first, tmp_path)
    real_fsync = os.fsync

    def fail(fd: int) -> None:
        real_fsync(fd)
        raise OSError("disk full")

    monkeypatch.setattr(adapter_io.os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(_small_adapted(seed=2), tmp_path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]  # the temporary file was removed, the previous pair is intact
    loaded = load_adapter(_small_model(), tmp_path)
    for key, value in _adapter_state(first).items():
        assert torch.equal(_adapter_state(loaded)[key], value)


def test_interrupted_first_save_leaves_nothing_loadable(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def fail(src: str, dst: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(_atomic, "_exchange", fail)
    with pytest.raises(KeyboardInterrupt):
        save_adapter(_small_adapted(seed=1), tmp_path)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError, match=r"no adapter_config\.json"):
        load_adapter(_small_model(), tmp_path)


KILL_SCRIPT = """
    import sys
    from pathlib import Path
    from lorax_core.adapters import save_adapter
    from tests.adapters.test_io import _small_adapted
    from tests.test_atomic import kill_at_every_step

    old, new = _small_adapted(seed=1), _small_adapted(seed=2)

    def prepare(folder):
        if sys.argv[2] == "overwrite":
            save_adapter(old, folder)

    print(kill_at_every_step(Path(sys.argv[1]), prepare, lambda f: save_adapter(new, f)))
"""


def _equal_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("case", ["overwrite", "first"])
def test_save_killed_at_every_step_loads_old_or_new(tmp_path: Path, case: str) -> None:
    """SIGKILL (no clean-up) before each file-system step of a save: the folder always loads
    as exactly the previous adapter or exactly the new one (absent, for a first save)."""
    steps = int(run_child(KILL_SCRIPT, str(tmp_path), case))
    old, new = _adapter_state(_small_adapted(seed=1)), _adapter_state(_small_adapted(seed=2))
    seen = []
    for k in range(1, steps + 1):
        folder = tmp_path / str(k)
        if case == "first" and not folder.exists():
            seen.append("none")
            continue
        state = _adapter_state(load_adapter(_small_model(), folder))
        assert _equal_states(state, old) or _equal_states(state, new), k
        seen.append("new" if _equal_states(state, new) else "old")
    assert seen[0] == ("old" if case == "overwrite" else "none") and seen[-1] == "new"
    assert set(seen[seen.index("new") :]) == {"new"}  # a single switch from old to new
    assert steps > 5


def _saved(tmp_path: Path) -> Path:
    save_adapter(_small_adapted(seed=3), tmp_path)
    return tmp_path


def _edit_json(path: Path, edit) -> None:  # type: ignore[no-untyped-def]
    doc = json.loads((path / "adapter_config.json").read_text())
    edit(doc)
    (path / "adapter_config.json").write_text(json.dumps(doc))


def test_load_rejects_mismatches(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    wrong_rank = inject(_small_model(), AdapterConfig("lora", r=3, target_modules=["0", "2"]))
    with pytest.raises(ValueError, match="saved r=2, the model has 3"):
        load_adapter(wrong_rank, path)
    wrong_method = inject(_small_model(), AdapterConfig("dora", r=2, target_modules=["0", "2"]))
    with pytest.raises(ValueError, match="saved method 'lora' differs"):
        load_adapter(wrong_method, path)
    fewer = inject(_small_model(), AdapterConfig("lora", r=2, target_modules=["0"]))
    with pytest.raises(ValueError, match=r"missing in file \[\], not adapted in model \['2'\]"):
        load_adapter(fewer, path)
    other_model = nn.Sequential(nn.Linear(8, 16))
    with pytest.raises(ValueError, match="target_modules entry '2' matches no module"):
        load_adapter(other_model, path)
    assert not adapted_modules(other_model)
    wider = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    with pytest.raises(ValueError, match="saved out_features=16, the model has 32"):
        load_adapter(wider, path)
    assert not adapted_modules(wider)  # validated before any change
    merged = merge(inject(_small_model(), AdapterConfig("lora", r=2, target_modules=["0", "2"])))
    with pytest.raises(ValueError, match="unmerge it before load_adapter"):
        load_adapter(merged, path)


def test_load_rejects_a_malformed_header_whose_checksum_matches(tmp_path: Path) -> None:
    """A weights file with a consistent checksum but a header that overlaps two tensors."""
    import hashlib
    import struct

    path = _saved(tmp_path)
    header = json.dumps(
        {
            "0.lora_A": {"dtype": "F32", "shape": [2, 8], "data_offsets": [0, 64]},
            "0.lora_B": {"dtype": "F32", "shape": [16, 2], "data_offsets": [32, 160]},
        }
    ).encode()
    blob = struct.pack("<Q", len(header)) + header + bytes(160)
    (path / "adapter_model.safetensors").write_bytes(blob)
    _edit_json(path, lambda d: d.update(weights_sha256=hashlib.sha256(blob).hexdigest()))
    with pytest.raises(ValueError, match=r"safetensors: tensor '0\.lora_B' overlaps"):
        load_adapter(_small_model(), path)


def test_load_rejects_bad_files(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    with pytest.raises(TypeError, match=r"load_adapter: model must be an nn\.Module"):
        load_adapter("model", path)  # type: ignore[arg-type]
    _edit_json(path, lambda d: d.update(format_version=99))
    with pytest.raises(ValueError, match=r"lorax_core\.adapter version 99 is newer"):
        load_adapter(_small_model(), path)
    path = _saved(tmp_path)
    _edit_json(path, lambda d: d["config"].update(method="lorax"))
    with pytest.raises(ValueError, match="method must be one of"):
        load_adapter(_small_model(), path)
    path = _saved(tmp_path)
    (path / "adapter_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_adapter(_small_model(), path)
    path = _saved(tmp_path)
    weights = path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])  # truncated
    with pytest.raises(ValueError, match="checksum differs"):
        load_adapter(_small_model(), path)
    # A file whose checksum matches but whose tensors do not fit.
    path = _saved(tmp_path)
    from safetensors.torch import save

    blob = save({"0.lora_A": torch.zeros(5, 8), "0.lora_B": torch.zeros(16, 2)})
    weights.write_bytes(blob)
    _edit_json(
        path, lambda d: d.update(weights_sha256=__import__("hashlib").sha256(blob).hexdigest())
    )
    with pytest.raises(ValueError, match=r"missing tensors \['2.lora_A', '2.lora_B'\]"):
        load_adapter(_small_model(), path)
    with pytest.raises(FileNotFoundError, match=r"no adapter_config\.json"):
        load_adapter(_small_model(), tmp_path / "absent")
    with pytest.raises(ValueError, match="save_adapter: model must have adapter layers"):
        save_adapter(_small_model(), tmp_path / "x")


@pytest.mark.parametrize(("method", "init_name"), [("slora", "pissa"), ("lora", "nystrom")])
def test_residual_init_reloads_to_the_saved_model(  # type: ignore[no-untyped-def]
    pristine: nn.Module, batch, tmp_path: Path, method: str, init_name: str
) -> None:
    config = AdapterConfig(method, r=4, init=init_name, target_modules=["query"])
    model = inject(copy.deepcopy(pristine), config)
    _train_a_little(model, seed=4)
    save_adapter(model, tmp_path)
    stored = load_file(tmp_path / "adapter_model.safetensors")
    assert "encoder.layer.0.attention.self.query.init_lora_A" in stored
    loaded = load_adapter(copy.deepcopy(pristine), tmp_path)
    for name, layer in adapted_modules(model).items():
        twin = adapted_modules(loaded)[name]
        assert torch.equal(twin.base_layer.weight, layer.base_layer.weight), name
        assert torch.equal(twin.get_buffer("init_lora_B"), layer.get_buffer("init_lora_B"))
    assert torch.equal(loaded(**batch).last_hidden_state, model(**batch).last_hidden_state)


# -- corrupt folders (property) -----------------------------------------------------------------

NAMES = ("adapter_config.json", "adapter_model.safetensors")
FUZZ_CONFIG = AdapterConfig("svd", r=2, r_max=3, target_modules=["0", "2"])


def _fuzz_source() -> tuple[Any, bytes]:
    """A saved SVD-form adapter (tensors and a per-module record state) of the small model."""
    model = inject(_small_model(), FUZZ_CONFIG)
    _train_a_little(model, seed=5)
    with tempfile.TemporaryDirectory() as folder:
        save_adapter(model, folder)
        config = json.loads((Path(folder) / "adapter_config.json").read_text())
        return config, (Path(folder) / "adapter_model.safetensors").read_bytes()


FUZZ_SOURCE = _fuzz_source()


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
@given(data=st.data(), into_adapted=st.booleans())
def test_corrupt_folder_loads_exactly_or_is_refused_unchanged(
    data: st.DataObject, into_adapted: bool
) -> None:
    """Load a corrupted folder: either every file tensor lands bit-exactly, or a ValueError /
    TypeError is raised and the model's state dict is unchanged (no adapters added)."""
    config, weights = data.draw(fuzz.folder_edit(*FUZZ_SOURCE, checksum_key="weights_sha256"))
    model = _small_model()
    if into_adapted:
        inject(model, FUZZ_CONFIG)
    before = fuzz.snapshot(model)
    with tempfile.TemporaryDirectory() as folder:
        fuzz.write_folder(
            Path(folder), ("adapter_config.json", "adapter_model.safetensors"), config, weights
        )
        try:
            load_adapter(model, folder)
        except (ValueError, TypeError):
            assert fuzz.same_state(model, before)
            assert bool(adapted_modules(model)) == into_adapted
            return
    stored = load(weights)
    state = model.state_dict()
    for key, value in stored.items():
        assert torch.equal(state[key], value), key


def test_save_errors_name_the_users_path(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    model = _small_adapted(seed=1)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(OSError) as info:
        save_adapter(model, blocker / "adapter")
    assert info.value.filename == str(blocker / "adapter")

    def disk_full(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    save_adapter(model, tmp_path / "adapter")
    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(OSError, match="No space left") as info:
        save_adapter(_small_adapted(seed=2), tmp_path / "adapter")
    monkeypatch.undo()
    assert info.value.filename == str(tmp_path / "adapter" / "adapter_model.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "adapter"]  # no temporaries
    loaded = load_adapter(_small_model(), tmp_path / "adapter")
    assert _equal_states(_adapter_state(loaded), _adapter_state(model))  # the old save is intact
