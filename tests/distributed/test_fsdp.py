"""FSDP2 on real gloo processes: every adapter form and allocator trains as one process does,
saves/exports from the shards load into an unsharded model, DCP run checkpoints resume exactly
(also on another number of processes), DDP wrappers work, and bad calls fail without a hang.

Two spawns of two processes serve every test here (module-scoped fixtures): one trains every
method sharded (and once under DDP) and saves; the other resumes from the checkpoints and
exercises the bad inputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from tests.distributed._launch import spawn
from tests.distributed._runs import METHODS, SAVE_AT, STEPS, build, inputs, texts, train

RTOL = 1e-5


def _save(out: Path, tag: str, rank: int, result: dict, extra: dict | None = None) -> None:
    tensors = {f"param.{k}": v.contiguous() for k, v in result["params"].items()}
    tensors.update(extra or {})
    save_file(tensors, str(out / f"{tag}-rank{rank}.safetensors"))
    meta = {k: result.get(k) for k in ("losses", "ranks", "history")}
    (out / f"{tag}-rank{rank}.json").write_text(json.dumps(meta), encoding="utf-8")


def _load(out: Path, tag: str, rank: int) -> tuple[dict, dict[str, torch.Tensor]]:
    meta = json.loads((out / f"{tag}-rank{rank}.json").read_text(encoding="utf-8"))
    return meta, load_file(str(out / f"{tag}-rank{rank}.safetensors"))


def _train_worker(rank: int, world: int, out: Path, model_dir: str, data: dict) -> None:
    from lorax_core.adapters import merged_state_dict, save_adapter
    from lorax_core.integrations.peft import export_peft

    for method in METHODS:
        result = train(method, model_dir, data, wrap="fsdp", checkpoint=out / f"run-{method}")
        model = result["model"]
        save_adapter(model, out / f"adapter-{method}")
        export_peft(model, out / f"peft-{method}")
        merged = merged_state_dict(model)
        with torch.no_grad():
            probe = model(**data).last_hidden_state
        keys = [k for k in merged if k.endswith(("query.weight", "value.weight"))]
        extra = {"probe": probe, **{f"merged.{k}": merged[k].contiguous() for k in keys}}
        _save(out, method, rank, result, extra)
    ddp = train("elalora", model_dir, data, wrap="ddp")
    save_adapter(ddp["model"], out / "adapter-ddp")
    export_peft(ddp["model"], out / "peft-ddp")
    with torch.no_grad():
        probe = ddp["model"](**data).last_hidden_state
    _save(out, "ddp", rank, ddp, {"probe": probe})


def _resume_worker(rank: int, world: int, out: Path, model_dir: str, data: dict) -> None:
    from lorax_core.adapters import load_adapter, save_adapter
    from lorax_core.training.distributed import load_run
    from tests.distributed._runs import make_hook, shard

    for method in ("lora", "adalora", "elalora"):
        result = train(method, model_dir, data, wrap="fsdp", resume=out / f"run-{method}")
        _save(out, f"resumed-{method}", rank, result)
    # load_adapter onto an already-sharded model: the outputs of the saved run
    model = shard(build("dora", model_dir))
    load_adapter(model, out / "adapter-dora")
    with torch.no_grad():
        probe = model(**data).last_hidden_state
    save_file({"probe": probe}, str(out / f"loaded-dora-rank{rank}.safetensors"))
    # bad input 1: a checkpoint of another configuration, refused on every process
    model = shard(build("elalora", model_dir))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    hook = make_hook("elalora", model, optimizer)
    messages = {}
    try:
        load_run(out / "run-adalora", model, optimizer, hook=hook)
    except ValueError as err:
        messages["config"] = str(err)
    # bad input 2: save on one process only, refused on that process after the timeout
    if rank == 0:
        try:
            save_adapter(model, out / "never")
        except RuntimeError as err:
            messages["one_sided"] = str(err)
    dist.barrier()
    (out / f"bad-rank{rank}.json").write_text(json.dumps(messages), encoding="utf-8")


def _four_worker(rank: int, world: int, out: Path, model_dir: str, data: dict) -> None:
    _save(out, "four", rank, train("elalora", model_dir, data, wrap="fsdp"))


@pytest.fixture(scope="module")
def setup(minilm_dir: Path) -> tuple[str, dict[str, torch.Tensor]]:
    return str(minilm_dir), inputs(str(minilm_dir), texts())


@pytest.fixture(scope="module")
def trained(setup, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp")
    spawn(_train_worker, 2, out, *setup, timeout=240)
    return out


@pytest.fixture(scope="module")
def resumed(setup, trained: Path) -> Path:
    spawn(_resume_worker, 2, trained, *setup, timeout=180)
    return trained


@pytest.fixture(scope="module")
def reference(setup) -> dict[str, dict]:
    """The single-process runs (no process group) on the same global batches."""
    return {m: train(m, *setup) for m in METHODS}


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=1e-7)


@pytest.mark.parametrize("method", METHODS)
def test_two_sharded_processes_equal_one(trained, reference, method) -> None:
    meta0, t0 = _load(trained, method, 0)
    meta1, t1 = _load(trained, method, 1)
    ref = reference[method]
    assert meta0 == meta1  # losses, ranks and histories identical on every process
    for key in t0:
        assert torch.equal(t0[key], t1[key]), key
    _close(torch.tensor(meta0["losses"]), torch.tensor(ref["losses"]))
    assert len(meta0["losses"]) == STEPS
    for name, value in ref["params"].items():
        _close(t0[f"param.{name}"], value)
    if "ranks" in ref:
        assert meta0["ranks"] == ref["ranks"]
        assert meta0["history"] == json.loads(json.dumps(ref["history"]))
        assert any(set(r.values()) != {4} for _, r in ref["history"])  # ranks moved


def _fresh_base(model_dir: str) -> torch.nn.Module:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_dir, dtype=torch.float64)
    model.encoder.layer = model.encoder.layer[:1]
    return model.eval()


@pytest.mark.parametrize("method", METHODS)
def test_save_and_export_from_shards_load_unsharded(setup, trained, method) -> None:
    from peft import PeftModel

    from lorax_core.adapters import load_adapter

    model_dir, data = setup
    _, saved = _load(trained, method, 0)
    loaded = load_adapter(_fresh_base(model_dir), trained / f"adapter-{method}")
    with torch.no_grad():
        _close(loaded(**data).last_hidden_state, saved["probe"])
        peft = PeftModel.from_pretrained(_fresh_base(model_dir), str(trained / f"peft-{method}"))
        _close(peft.eval()(**data).last_hidden_state, saved["probe"])
        base = _fresh_base(model_dir)
        merged = {k.removeprefix("merged."): v for k, v in saved.items() if k.startswith("merged.")}
        assert len(merged) == 2
        base.load_state_dict(merged, strict=False)
        _close(base(**data).last_hidden_state, saved["probe"])


def test_load_adapter_onto_a_sharded_model(resumed) -> None:
    _, saved = _load(resumed, "dora", 0)
    for rank in (0, 1):
        probe = load_file(str(resumed / f"loaded-dora-rank{rank}.safetensors"))["probe"]
        _close(probe, saved["probe"])


@pytest.mark.parametrize("method", ["lora", "adalora", "elalora"])
def test_resume_from_a_run_checkpoint_reproduces_the_run(setup, resumed, method) -> None:
    meta, tensors = _load(resumed, method, 0)
    again, again_t = _load(resumed, f"resumed-{method}", 0)
    assert again["losses"] == meta["losses"][SAVE_AT:]  # two processes again: the same bits
    for key, value in again_t.items():
        assert torch.equal(value, tensors[key]), key
    if "ranks" in meta:
        assert again["ranks"] == meta["ranks"] and again["history"] == meta["history"]
    # one process, no group, from the two-process checkpoint (resharded by DCP)
    single = train(method, *setup, resume=resumed / f"run-{method}")
    _close(torch.tensor(single["losses"]), torch.tensor(meta["losses"][SAVE_AT:]))
    for name, value in single["params"].items():
        _close(value, tensors[f"param.{name}"])


def test_ddp_wrapper_passed_to_allocator_save_and_export(setup, trained, reference) -> None:
    from lorax_core.adapters import load_adapter

    model_dir, data = setup
    meta0, t0 = _load(trained, "ddp", 0)
    meta1, _ = _load(trained, "ddp", 1)
    assert meta0 == meta1 and meta0["ranks"] == reference["elalora"]["ranks"]
    assert all(not name.startswith("module.") for name in meta0["ranks"])
    for name, value in reference["elalora"]["params"].items():
        _close(t0[f"param.{name}"], value)
    loaded = load_adapter(_fresh_base(model_dir), trained / "adapter-ddp")
    with torch.no_grad():
        _close(loaded(**data).last_hidden_state, t0["probe"])


def test_bad_input_is_a_clear_error_not_a_hang(resumed) -> None:
    bad0 = json.loads((resumed / "bad-rank0.json").read_text())
    bad1 = json.loads((resumed / "bad-rank1.json").read_text())
    for bad in (bad0, bad1):
        assert "same model and configuration" in bad["config"]
    assert "did not arrive" in bad0["one_sided"] and "every process" in bad0["one_sided"]
    assert "one_sided" not in bad1
    assert not (resumed / "never").exists()


@pytest.mark.slow  # four processes: about a minute on a quiet 2-core machine
def test_four_sharded_processes_equal_one(setup, reference, tmp_path: Path) -> None:
    spawn(_four_worker, 4, tmp_path, *setup, timeout=180)
    loaded = [_load(tmp_path, "four", rank) for rank in range(4)]
    ref = reference["elalora"]
    for meta, tensors in loaded[1:]:
        assert meta == loaded[0][0]
        assert all(torch.equal(v, loaded[0][1][k]) for k, v in tensors.items())
    meta, tensors = loaded[0]
    assert meta["ranks"] == ref["ranks"]
    _close(torch.tensor(meta["losses"]), torch.tensor(ref["losses"]))
    for name, value in ref["params"].items():
        _close(tensors[f"param.{name}"], value)
