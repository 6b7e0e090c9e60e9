"""transformers.Trainer integration on real MiniLM: the hook callback driving an allocator (BBC
News), and BiDoRA as a Trainer (tweets)."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

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


# -- BiDoRA as a transformers.Trainer ---------------------------------------------------------
BIDORA_STEPS = 4


class _StopAt(TrainerCallback):
    """Ends training after ``step`` optimizer steps (once that step's checkpoint is written)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def _bidora_model(minilm_dir):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(minilm_dir), num_labels=3)
    model.bert.encoder.layer = model.bert.encoder.layer[:2]
    inject(model, AdapterConfig(method="dora", r=4, alpha=8.0, target_modules=["query", "value"]))
    return model


def _bidora_args(tmp_path, steps, save_steps=2):
    return TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=steps,
        learning_rate=5e-3,
        warmup_steps=1,
        report_to=[],
        save_strategy="steps",
        save_steps=save_steps,
        logging_strategy="no",
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
    )


def _bidora_data(minilm_tokenizer, n=24):
    from lorax_core.datasets import tweets_sentiment

    train, _ = tweets_sentiment()
    enc = minilm_tokenizer(
        train.texts[:n], truncation=True, max_length=32, padding="max_length", return_tensors="pt"
    )
    return _Encoded(enc, torch.tensor(train.labels[:n]))


def _magnitudes(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_magnitude" in n}


def _directions(model):
    return {
        n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n or "lora_B" in n
    }


def test_bidora_trainer_trains_both_levels(tmp_path, minilm_dir, minilm_tokenizer):
    from lorax_core.integrations import BiDoRATransformersTrainer

    data = _bidora_data(minilm_tokenizer)
    model = _bidora_model(minilm_dir)
    m0, d0 = _magnitudes(model), _directions(model)
    trainer = BiDoRATransformersTrainer(
        model, _bidora_args(tmp_path, BIDORA_STEPS), train_dataset=data, head=model.classifier
    )
    assert set(trainer.train_dataset.indices).isdisjoint(trainer.val_dataset.indices)
    trainer.train()
    assert len(trainer.bidora.history) == BIDORA_STEPS  # one upper step per optimizer step
    assert trainer.bidora.optimizer.state_dict()["state"][0]["step"] == BIDORA_STEPS
    m1, d1 = _magnitudes(model), _directions(model)
    assert all(not torch.equal(m0[k], m1[k]) for k in m0)
    assert all(not torch.equal(d0[k], d1[k]) for k in d0 if "lora_B" in k)
    # the Trainer's optimizer holds the lower level only
    ids = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not ids & {id(p) for p in trainer.bidora.upper}


def test_bidora_trainer_resumes_from_checkpoint(tmp_path, minilm_dir, minilm_tokenizer):
    from lorax_core.integrations import BiDoRATransformersTrainer
    from lorax_core.integrations.transformers import BIDORA_STATE_NAME

    data = _bidora_data(minilm_tokenizer)
    full = _bidora_model(minilm_dir)
    BiDoRATransformersTrainer(
        full,
        _bidora_args(tmp_path / "full", BIDORA_STEPS),
        train_dataset=data,
        head=full.classifier,
    ).train()
    # a run killed after 2 of 4 steps (its checkpoint-2 holds both levels), resumed in a new one
    part = _bidora_model(minilm_dir)
    args = _bidora_args(tmp_path / "part", BIDORA_STEPS)
    BiDoRATransformersTrainer(
        part, args, train_dataset=data, head=part.classifier, callbacks=[_StopAt(2)]
    ).train()
    assert (tmp_path / "part" / "checkpoint-2" / BIDORA_STATE_NAME).is_file()
    resumed_model = _bidora_model(minilm_dir)
    resumed = BiDoRATransformersTrainer(
        resumed_model,
        _bidora_args(tmp_path / "part", BIDORA_STEPS),
        train_dataset=data,
        head=resumed_model.classifier,
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "part" / "checkpoint-2"))
    assert len(resumed.bidora.history) == BIDORA_STEPS
    for key, value in _magnitudes(full).items():
        torch.testing.assert_close(_magnitudes(resumed_model)[key], value, rtol=1e-5, atol=1e-6)
    for key, value in _directions(full).items():
        torch.testing.assert_close(_directions(resumed_model)[key], value, rtol=1e-5, atol=1e-6)


def test_bidora_trainer_bad_input(tmp_path, minilm_dir, minilm_tokenizer):
    from lorax_core.integrations import BiDoRATransformersTrainer

    data = _bidora_data(minilm_tokenizer)
    model = _bidora_model(minilm_dir)
    args = _bidora_args(tmp_path, BIDORA_STEPS)
    with pytest.raises(ValueError, match="val_fraction"):
        BiDoRATransformersTrainer(model, args, train_dataset=data, val_fraction=1.0)
    with pytest.raises(ValueError, match="train_dataset"):
        BiDoRATransformersTrainer(model, args, train_dataset=_bidora_data(minilm_tokenizer, n=5))
    with pytest.raises(ValueError, match="head"):
        BiDoRATransformersTrainer(model, args, train_dataset=data, head=torch.nn.Linear(2, 2))
    plain = AutoModelForSequenceClassification.from_pretrained(str(minilm_dir), num_labels=3)
    with pytest.raises(ValueError, match="model"):
        BiDoRATransformersTrainer(plain, args, train_dataset=data)
    trainer = BiDoRATransformersTrainer(model, args, train_dataset=data)
    with pytest.raises(ValueError, match="resume_from_checkpoint"):
        trainer.train(resume_from_checkpoint=str(tmp_path))


def test_callback_rejects_a_non_hook():
    with pytest.raises(TypeError, match="hook"):
        LoraxTrainerCallback(object())
