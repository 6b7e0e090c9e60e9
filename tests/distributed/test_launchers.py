"""The two launchers a user reaches for, as subprocesses under a timeout: ``torchrun`` with an
FSDP2 script, and ``accelerate launch`` with a ``transformers.Trainer`` and the lorax callback
(with an FSDP2 plugin config; accelerate applies FSDP on accelerators only, so on CPU it runs
the processes as DDP replicas — the allocator then sees the DDP wrapper)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lorax_core.adapters import load_adapter
from tests.distributed._launch import free_port
from tests.distributed._runs import inputs, texts, train

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

ACCELERATE_CONFIG = """\
compute_environment: LOCAL_MACHINE
distributed_type: FSDP
fsdp_config:
  fsdp_version: 2
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_transformer_layer_cls_to_wrap: BertLayer
  fsdp_reshard_after_forward: true
  fsdp_state_dict_type: SHARDED_STATE_DICT
machine_rank: 0
main_training_function: main
mixed_precision: 'no'
num_machines: 1
num_processes: 2
rdzv_backend: static
same_network: true
use_cpu: true
"""


def _run(command: list[str], timeout: float = 150.0) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "LORAX_COLLECTIVE_TIMEOUT": "20",
    }
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


def _records(out: Path, world: int) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


def test_torchrun_fsdp2_script(tmp_path: Path, minilm_dir: Path) -> None:
    from lorax_core.adapters import load_adapter

    port = str(free_port())
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_addr", "127.0.0.1", "--master_port", port]
    _run([*command, str(HERE / "_torchrun_main.py"), str(tmp_path), str(minilm_dir)])
    r0, r1 = _records(tmp_path, 2)
    assert r0 == r1 and r0["world"] == 2
    reference = train("elalora", str(minilm_dir), inputs(str(minilm_dir), texts()))
    assert r0["ranks"] == reference["ranks"]
    assert r0["losses"] == pytest.approx(reference["losses"], rel=1e-5)
    model = load_adapter(_base(minilm_dir), tmp_path / "adapter")
    assert {n: m.active_rank for n, m in _svd(model).items()} == r0["ranks"]


def _base(minilm_dir: Path) -> torch.nn.Module:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(minilm_dir), dtype=torch.float64)
    model.encoder.layer = model.encoder.layer[:1]
    return model


def _svd(model: torch.nn.Module) -> dict:
    from lorax_core.allocators.base import svd_modules

    return svd_modules(model)


def test_accelerate_launch_trainer_with_the_lorax_callback(
    tmp_path: Path, minilm_dir: Path
) -> None:
    pytest.importorskip("accelerate")
    config = tmp_path / "fsdp2.yaml"
    config.write_text(ACCELERATE_CONFIG, encoding="utf-8")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    command += ["--main_process_port", str(free_port())]
    _run([*command, str(HERE / "_accelerate_main.py"), str(tmp_path), str(minilm_dir)])
    r0, r1 = _records(tmp_path, 2)
    assert r0["world"] == 2 and r0["ranks"] == r1["ranks"] and r0["history"] == r1["history"]
    assert any(set(ranks.values()) != {4} for _, ranks in r0["history"])  # ranks moved
    assert all(not name.startswith("module.") for name in r0["ranks"])

    model = load_adapter(_base(minilm_dir), tmp_path / "adapter")
    saved = {n: m.active_rank for n, m in _svd(model).items()}
    assert saved == {n.removeprefix("encoder."): r for n, r in r0["ranks"].items()}
