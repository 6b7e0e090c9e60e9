"""A short real fine-tune of MiniLM on BBC News with transformers.Trainer and the callback."""

from __future__ import annotations

import torch
from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments

from lorax_core.adapters import AdapterConfig, inject
from lorax_core.allocators import ElaLoRA
from lorax_core.integrations import LoraxTrainerCallback

STEPS = 8


class _Encoded(torch.utils.data.Dataset):
    def __init__(self, enc, labels):
        self.enc, self.labels = enc, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        item = {k: v[i] for k, v in self.enc.items()}
        item["labels"] = self.labels[i]
        return item


def test_trainer_callback_moves_ranks(tmp_path, minilm_dir, minilm_tokenizer, bbc):
    train, _ = bbc
    n = 4 * STEPS
    enc = minilm_tokenizer(
        train.texts[:n], truncation=True, max_length=64, padding="max_length", return_tensors="pt"
    )
    data = _Encoded(enc, torch.tensor(train.labels[:n]))
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(minilm_dir), num_labels=5)
    model.bert.encoder.layer = model.bert.encoder.layer[:2]  # two real blocks keep it short
    inject(
        model,
        AdapterConfig(
            method="svd", r=4, alpha=8.0, r_max=8, target_modules=["query", "value"], seed=0
        ),
    )
    model.classifier.requires_grad_(True)
    alloc = ElaLoRA(model, STEPS, t_init=2, t_final=2, interval=2, b=4, k=2)
    initial = alloc.ranks()
    e_before = {n: m.lora_E.detach().clone() for n, m in alloc.modules.items()}
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=STEPS,
        learning_rate=5e-3,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=data, callbacks=[LoraxTrainerCallback(alloc)]
    )
    trainer.train()
    final = alloc.ranks()
    assert alloc.optimizer is not None  # attached from the Trainer
    assert final != initial
    assert sum(final.values()) == sum(initial.values())
    assert len(alloc.history()) >= 1
    assert any(not torch.equal(m.lora_E.detach(), e_before[n]) for n, m in alloc.modules.items())
