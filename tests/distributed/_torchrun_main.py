"""The torchrun entry point of test_launchers: ``python -m torch.distributed.run
--nproc_per_node N _torchrun_main.py OUT MODEL_DIR`` trains svd + ElaLoRA sharded with FSDP2 and
saves the adapter, as a user's script would."""

from __future__ import annotations

import gc
import json
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist


def _run(out: Path, model_dir: str) -> None:
    from lorax_core.adapters import save_adapter
    from tests.distributed._runs import inputs, texts, train

    result = train("elalora", model_dir, inputs(model_dir, texts()), wrap="fsdp")
    save_adapter(result["model"], out / "adapter")
    record = {k: result[k] for k in ("losses", "ranks", "history")}
    record["world"] = dist.get_world_size()
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(record), encoding="utf-8")


def main() -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=30))
    try:
        _run(Path(sys.argv[1]), sys.argv[2])
    finally:
        gc.collect()  # the sharded model's reference cycles, freed before the group goes
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
