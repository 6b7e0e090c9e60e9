"""The ``accelerate launch`` entry point of test_launchers: a ``transformers.Trainer`` with
svd adapters, ElaLoRA driven by ``LoraxTrainerCallback``, and the Trainer's own saving, as a
user's script would be. ``accelerate launch --config_file CFG _accelerate_main.py OUT MODEL``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn


class Regression(nn.Module):
    """MiniLM's [CLS] state regressed onto fixed targets (loss returned as the Trainer wants)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        loss = (hidden.last_hidden_state[:, 0] - labels).pow(2).mean()
        return {"loss": loss}


def main() -> None:
    out, model_dir = Path(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(1)
    from transformers import Trainer, TrainingArguments, default_data_collator

    from lorax_core.adapters import save_adapter
    from lorax_core.allocators import ElaLoRA
    from lorax_core.integrations.transformers import LoraxTrainerCallback
    from tests.distributed._runs import N_TEXTS, STEPS, build, inputs, texts

    encoder = build("elalora", model_dir)
    data = inputs(model_dir, texts())
    labels = torch.randn(N_TEXTS, 384, generator=torch.Generator().manual_seed(3))
    rows = [
        {
            "input_ids": data["input_ids"][i],
            "attention_mask": data["attention_mask"][i],
            "labels": labels[i].double(),
        }
        for i in range(N_TEXTS)
    ]
    model = Regression(encoder)
    allocator = ElaLoRA(model, STEPS, 2, 2, 2, b=2, k=2)
    args = TrainingArguments(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=4,
        max_steps=STEPS,
        learning_rate=5e-3,
        lr_scheduler_type="constant",
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        remove_unused_columns=False,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=rows,
        data_collator=default_data_collator,
        callbacks=[LoraxTrainerCallback(allocator)],
    )
    trainer.train()
    save_adapter(encoder, out / "adapter")  # every process: rank 0 writes
    state = trainer.accelerator.state
    record = {
        "ranks": allocator.ranks(),
        "history": allocator.history(),
        "world": state.num_processes,
        "distributed_type": str(state.distributed_type),
        "wrapped": type(trainer.model_wrapped).__name__,
    }
    (out / f"rank{state.process_index}.json").write_text(json.dumps(record), encoding="utf-8")


if __name__ == "__main__":
    main()
