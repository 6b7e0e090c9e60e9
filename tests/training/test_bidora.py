"""BiDoRA trainer: init identity, the hypergradient against double backward, level separation,
bit-exact restores, resume after a kill, phase 2, exports, and bad input."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from lorax_core.adapters import AdapterConfig, inject, load_adapter, save_adapter
from lorax_core.integrations.peft import export_peft, import_peft
from lorax_core.training import (
    BiDoRATrainer,
    direction_regularizer,
    dora_modules,
    hypergradient,
    load_state,
    save_state,
)
from lorax_core.training.bidora import lower_parameters
from tests.training._tiny import Tiny, adapter_params, tiny_data, tiny_loss, tiny_model


def _trainer(model, data=None, **overrides):
    kwargs = dict(batch_size=4, lr=1e-2, arch_lr=1e-2, head=model.head)
    kwargs.update(overrides)
    return BiDoRATrainer(model, tiny_loss, tiny_data() if data is None else data, **kwargs)


def _levels(model):
    modules = dora_modules(model)
    model.head.requires_grad_(True)
    lower = lower_parameters(modules, model.head)
    upper = [p for m in modules.values() for p in m.magnitude_parameters()]
    return lower, upper


def _exact_hypergradient(model, lower, upper, train_batch, val_batch):
    """``∂L_val/∂m − ∇²_{m,w} L_tr · ∇_w L_val`` by double backward (the oracle)."""
    val_loss = tiny_loss(model, val_batch)
    grads = torch.autograd.grad(val_loss, upper + lower)
    g, v = grads[: len(upper)], grads[len(upper) :]
    train_grad_w = torch.autograd.grad(tiny_loss(model, train_batch), lower, create_graph=True)
    along_v = sum((gw * vi).sum() for gw, vi in zip(train_grad_w, v, strict=True))
    mixed = torch.autograd.grad(along_v, upper)
    return [gi - hi for gi, hi in zip(g, mixed, strict=True)]


# -- the model at init ----------------------------------------------------------------------
def test_adapted_minilm_equals_base_at_init(minilm, minilm_dir, minilm_tokenizer):
    from transformers import AutoModel

    base = AutoModel.from_pretrained(str(minilm_dir)).eval()
    inject(minilm, AdapterConfig(method="dora", r=8, target_modules=["query", "value"]))
    enc = minilm_tokenizer(
        ["the trainer must not change the model", "at init"], padding=True, return_tensors="pt"
    )
    items = [
        {"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i]}
        for i in range(2)
    ] * 4

    def loss(model, batch):
        return model(**batch).last_hidden_state.mean()

    BiDoRATrainer(minilm, loss, items, batch_size=2, lr=1e-3, arch_lr=1e-3)
    with torch.no_grad():
        assert torch.equal(minilm(**enc).last_hidden_state, base(**enc).last_hidden_state)


# -- the hypergradient ----------------------------------------------------------------------
@given(seed=st.integers(0, 10_000))
def test_finite_difference_matches_double_backward(seed):
    # detach_norm=False: the oracle differentiates through the row norm, and so does the finite
    # difference (it re-evaluates the norm at w ± εv); with the default detached norm v and the
    # mixed term would be those of a different (surrogate) function than the one perturbed.
    model = tiny_model(seed, torch.float64, detach_norm=False, random_b=True)
    lower, upper = _levels(model)
    data = tiny_data(32, seed, torch.float64)
    xs, ys = torch.stack([x for x, _ in data]), torch.stack([y for _, y in data])
    train_batch, val_batch = (xs[:16], ys[:16]), (xs[16:], ys[16:])
    result = hypergradient(tiny_loss, model, lower, upper, train_batch, val_batch)
    exact = _exact_hypergradient(model, lower, upper, train_batch, val_batch)
    assert result.epsilon > 0
    # A central difference with step length ‖εv‖ = 0.01 errs by O(0.01² · third derivative):
    # about 1e-5 of the gradient's scale here (float64 rounding is far below that).
    scale = max(float(t.abs().max()) for t in exact)
    for got, want in zip(result.grad, exact, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4 * scale)
    # and the implicit term matters: the first-order gradient alone is measurably different
    first = hypergradient(
        tiny_loss, model, lower, upper, train_batch, val_batch, mode="first_order"
    )
    assert max(float((a - b).abs().max()) for a, b in zip(first.grad, exact, strict=True)) > 1e-6


def test_first_order_is_the_direct_gradient():
    model = tiny_model(1, torch.float64, random_b=True)
    lower, upper = _levels(model)
    data = tiny_data(8, 1, torch.float64)
    batch = (torch.stack([x for x, _ in data]), torch.stack([y for _, y in data]))
    result = hypergradient(tiny_loss, model, lower, upper, batch, batch, mode="first_order")
    direct = torch.autograd.grad(tiny_loss(model, batch), upper)
    for got, want in zip(result.grad, direct, strict=True):
        assert torch.equal(got, want)


def test_scale_weights_the_implicit_term():
    model = tiny_model(2, torch.float64, detach_norm=False, random_b=True)
    lower, upper = _levels(model)
    data = tiny_data(16, 2, torch.float64)
    xs, ys = torch.stack([x for x, _ in data]), torch.stack([y for _, y in data])
    tr, va = (xs[:8], ys[:8]), (xs[8:], ys[8:])
    full = hypergradient(tiny_loss, model, lower, upper, tr, va, scale=1.0)
    half = hypergradient(tiny_loss, model, lower, upper, tr, va, scale=0.5)
    first = hypergradient(tiny_loss, model, lower, upper, tr, va, mode="first_order")
    for f, h, g in zip(full.grad, half.grad, first.grad, strict=True):
        torch.testing.assert_close(h - g, 0.5 * (f - g))


def test_perturbation_is_restored_bit_exactly():
    model = tiny_model(3, random_b=True, dropout=0.2)
    model.train()
    lower, upper = _levels(model)
    before = [p.detach().clone() for p in lower]
    data = tiny_data(16, 3)
    xs, ys = torch.stack([x for x, _ in data]), torch.stack([y for _, y in data])
    result = hypergradient(tiny_loss, model, lower, upper, (xs[:8], ys[:8]), (xs[8:], ys[8:]))
    assert result.epsilon > 0
    assert all(torch.equal(p, b) for p, b in zip(lower, before, strict=True))


def test_perturbation_is_restored_when_the_loss_raises():
    model = tiny_model(4, random_b=True)
    lower, upper = _levels(model)
    before = [p.detach().clone() for p in lower]
    calls = []

    def failing(model, batch):
        calls.append(1)
        if len(calls) == 3:  # the second perturbed pass, at w − εv
            raise RuntimeError("boom")
        return tiny_loss(model, batch)

    data = tiny_data(8, 4)
    batch = (torch.stack([x for x, _ in data]), torch.stack([y for _, y in data]))
    with pytest.raises(RuntimeError, match="boom"):
        hypergradient(failing, model, lower, upper, batch, batch)
    assert all(torch.equal(p, b) for p, b in zip(lower, before, strict=True))


def test_direction_regularizer_matches_dense_reference():
    model = tiny_model(5, torch.float64, random_b=True)
    modules = dora_modules(model)
    want = []
    for m in modules.values():  # a (8, 6): out > in uses the in × in identity; b (5, 8): direct
        dense = m.base_layer.weight + m.scaling * m.lora_B @ m.lora_A
        d = dense / dense.norm(dim=1, keepdim=True)
        want.append(torch.linalg.matrix_norm(d @ d.T - torch.eye(d.shape[0], dtype=d.dtype)))
    got = direction_regularizer(modules.values(), 1e-5)
    torch.testing.assert_close(got, 1e-5 * torch.stack(want).mean())


# -- the two levels -------------------------------------------------------------------------
def test_lower_steps_keep_magnitudes_and_upper_steps_keep_directions():
    model = tiny_model(6)
    trainer = _trainer(model)
    seen = []
    upper_step = trainer.upper.upper_step

    def recording(train_batch, val_batch):
        seen.append(
            ("after lower", adapter_params(model, "magnitude"), adapter_params(model, "direction"))
        )
        loss = upper_step(train_batch, val_batch)
        seen.append(
            ("after upper", adapter_params(model, "magnitude"), adapter_params(model, "direction"))
        )
        return loss

    trainer.upper.upper_step = recording
    mags, dirs = adapter_params(model, "magnitude"), adapter_params(model, "direction")
    trainer.train(5, progress=False)
    for i in range(0, len(seen), 2):
        _, m_low, d_low = seen[i]
        _, m_up, d_up = seen[i + 1]
        assert all(torch.equal(m_low[k], mags[k]) for k in mags)  # lower step: m unchanged
        assert all(torch.equal(d_up[k], d_low[k]) for k in d_low)  # upper step: w unchanged
        assert any(not torch.equal(d_low[k], dirs[k]) for k in dirs)  # but both do move
        assert any(not torch.equal(m_up[k], m_low[k]) for k in mags)
        mags, dirs = m_up, d_up
    assert len(trainer.history["train_loss"]) == len(trainer.history["val_loss"]) == 5


def test_phase_two_resets_directions_and_keeps_magnitudes():
    model = tiny_model(7)
    initial_dirs = adapter_params(model, "direction")
    initial_head = adapter_params(model, "head")
    trainer = _trainer(model, retrain_steps=3)
    trainer.start(4)
    for _ in range(4):
        trainer.bilevel_step()
    trainer.phase = "retrain"
    mags = adapter_params(model, "magnitude")
    trainer._start_retrain()
    assert all(
        torch.equal(p, initial_dirs[k]) for k, p in adapter_params(model, "direction").items()
    )
    assert all(torch.equal(p, initial_head[k]) for k, p in adapter_params(model, "head").items())
    for _ in range(3):
        trainer.retrain_step()
    assert all(torch.equal(p, mags[k]) for k, p in adapter_params(model, "magnitude").items())
    assert len(trainer.history["retrain_loss"]) == 3


# -- resume ---------------------------------------------------------------------------------
class _KilledError(Exception):
    pass


@pytest.mark.parametrize("kill_seed", [0, 1, 2])
def test_resume_after_a_kill_reproduces_the_run(tmp_path, kill_seed):
    steps, retrain = 6, 3
    kill_at = random.Random(kill_seed).randint(1, steps + retrain - 1)

    def make():
        torch.manual_seed(123)  # the caller's RNG, which dropout draws from
        model = tiny_model(8, dropout=0.3)
        return model, _trainer(model, retrain_steps=retrain)

    model_a, trainer_a = make()
    trainer_a.train(steps, progress=False)

    _, trainer_b = make()
    checkpoint = tmp_path / "state.safetensors"

    def kill_after_step(trainer):
        if trainer.step_count + trainer.retrain_count == kill_at:
            save_state(checkpoint, trainer.state_dict())
            raise _KilledError

    with pytest.raises(_KilledError):
        trainer_b.train(steps, progress=False, on_step=kill_after_step)

    torch.manual_seed(999)  # a new process: a different RNG until the state restores it
    model_c, trainer_c = make()
    trainer_c.load_state_dict(load_state(checkpoint))
    trainer_c.train(steps, progress=False)

    assert trainer_c.history == trainer_a.history
    for (name, p), q in zip(model_a.named_parameters(), model_c.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert trainer_c.phase == trainer_a.phase == "done"


def test_split_is_recorded_in_the_trainer():
    trainer = _trainer(tiny_model(9), seed=3)
    again = _trainer(tiny_model(9), seed=3)
    assert trainer.split == again.split
    assert set(trainer.split.train).isdisjoint(trainer.split.val)
    assert len(trainer.split.val) == 8


# -- the result ------------------------------------------------------------------------------
def test_save_adapter_and_export_peft_of_the_result(tmp_path):
    model = tiny_model(10)
    _trainer(model).train(4, progress=False)
    model.eval()
    x = torch.randn(5, 6)
    with torch.no_grad():
        want = model(x)

    base_state = {
        k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if "lora" not in k
    }
    save_adapter(model, tmp_path / "lorax")
    reloaded = Tiny()
    reloaded.load_state_dict(base_state)
    load_adapter(reloaded, tmp_path / "lorax")
    export_peft(model, tmp_path / "peft")
    imported = Tiny()
    imported.load_state_dict(base_state)
    import_peft(imported, tmp_path / "peft")
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(x), want)
        torch.testing.assert_close(imported.eval()(x), want)


# -- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize("fraction", [0, 0.0, 1, 1.0, -0.1, 1.5, float("nan")])
def test_val_fraction_outside_the_open_interval(fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        _trainer(tiny_model(), val_fraction=fraction)


def test_val_fraction_of_the_wrong_type():
    with pytest.raises(TypeError, match="val_fraction"):
        _trainer(tiny_model(), val_fraction="0.2")


def test_dataset_too_small_for_one_batch_per_split():
    with pytest.raises(ValueError, match="train_dataset"):
        _trainer(tiny_model(), data=tiny_data(12), batch_size=4)  # 10 / 2 after the split


def test_model_without_dora_adapters():
    torch.manual_seed(0)
    model = Tiny()
    inject(model, AdapterConfig(method="lora", r=2, target_modules=["a", "b"]))
    with pytest.raises(ValueError, match="model"):
        _trainer(model)
    with pytest.raises(TypeError, match="model"):
        BiDoRATrainer("model", tiny_loss, tiny_data(), batch_size=4, lr=1e-2, arch_lr=1e-2)


def test_head_outside_the_model():
    with pytest.raises(ValueError, match="head"):
        _trainer(tiny_model(), head=nn.Linear(5, 3))
    with pytest.raises(TypeError, match="head"):
        _trainer(tiny_model(), head="head")


def test_head_outside_the_loss_graph_fails_before_any_update():
    model = tiny_model()
    extra = nn.Linear(2, 2)
    model.unused = extra
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = _trainer(model, head=extra)
    with pytest.raises(ValueError, match="head"):
        trainer.train(3, progress=False)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("steps", [0, -1])
def test_steps_must_be_positive(steps):
    with pytest.raises(ValueError, match="steps"):
        _trainer(tiny_model()).train(steps, progress=False)


@pytest.mark.parametrize(
    ("argument", "value", "error"),
    [
        ("batch_size", 0, ValueError),
        ("lr", 0.0, ValueError),
        ("arch_lr", -1.0, ValueError),
        ("hypergrad", "second_order", ValueError),
        ("warmup_fraction", 1.0, ValueError),
        ("retrain_steps", -1, ValueError),
        ("retrain_lr", 0.0, ValueError),
        ("collate_fn", 3, TypeError),
        ("seed", True, TypeError),
    ],
)
def test_bad_hyperparameters_name_the_argument(argument, value, error):
    with pytest.raises(error, match=argument):
        _trainer(tiny_model(), **{argument: value})


def test_resume_from_another_configuration_or_model():
    trainer = _trainer(tiny_model())
    trainer.train(2, progress=False)
    state = trainer.state_dict()
    with pytest.raises(ValueError, match=r"state.*configuration.*lr"):
        _trainer(tiny_model(), lr=5e-3).load_state_dict(state)
    other = Tiny()
    inject(other, AdapterConfig(method="dora", r=3, alpha=4.0, target_modules=["a", "b"]))
    with pytest.raises(ValueError, match=r"state.*model"):
        _trainer(other).load_state_dict(state)
    with pytest.raises(ValueError, match=r"state.*split"):
        _trainer(tiny_model(), data=tiny_data(44)).load_state_dict(state)
    with pytest.raises(TypeError, match="state"):
        _trainer(tiny_model()).load_state_dict([state])
    with pytest.raises(ValueError, match="steps"):
        resumed = _trainer(tiny_model())
        resumed.load_state_dict(state)
        resumed.train(5, progress=False)


def test_train_after_manual_bilevel_steps_runs_phase_two():
    trainer = _trainer(tiny_model(11), retrain_steps=2)
    trainer.start(3)
    for _ in range(3):
        trainer.bilevel_step()
    history = trainer.train(3, progress=False)
    assert len(history["train_loss"]) == 3 and len(history["retrain_loss"]) == 2
    assert trainer.phase == "done"
