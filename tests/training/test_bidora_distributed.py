"""Two real torch.distributed (gloo) processes, each with half of every global batch, end where
one process with the whole batches ends: both levels' gradients are averaged, and the ±εv
perturbation and its restore are identical on every process. Run checkpoints of the trainer
(save_run/load_run, sharded with FSDP2 or in one process) resume the uninterrupted run bit for
bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lorax_core.training import BiDoRATrainer
from tests.distributed._launch import spawn
from tests.training._tiny import tiny_data, tiny_loss, tiny_model

STEPS, RETRAIN, BATCH = 4, 2, 8


def _local(t: torch.Tensor) -> torch.Tensor:
    from lorax_core._distributed import is_sharded

    return t.to_local() if is_sharded(t) else t


def _build(sharded: bool = False) -> tuple[torch.nn.Module, BiDoRATrainer]:
    """The tiny float64 model and its trainer (head trained, phase 2 on); ``sharded``: FSDP2
    on every adapted layer and the root (which holds the head)."""
    model = tiny_model(0, torch.float64, random_b=True)
    if sharded:
        from torch.distributed.fsdp import fully_shard

        fully_shard(model.a)
        fully_shard(model.b)
        fully_shard(model)
    trainer = BiDoRATrainer(
        model,
        tiny_loss,
        tiny_data(48, 0, torch.float64),
        batch_size=BATCH,
        lr=1e-2,
        arch_lr=1e-2,
        head=model.head,
        retrain_steps=RETRAIN,
    )
    return model, trainer


def _train(
    world: int, sharded: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, list[float]], list]:
    from lorax_core._distributed import full

    model, trainer = _build(sharded)
    epsilons = []
    upper_step = trainer.upper.upper_step

    def recording(train_batch, val_batch):
        # the perturbation is the same on every process: ε (from the averaged v) and the
        # parameters it perturbs, which must also be back to the same values after the restore
        before = [_local(p).detach().clone() for p in trainer.lower]
        loss = upper_step(train_batch, val_batch)
        assert trainer.upper.last is not None
        epsilons.append(trainer.upper.last.epsilon)
        assert all(torch.equal(_local(p), b) for p, b in zip(trainer.lower, before, strict=True))
        return loss

    trainer.upper.upper_step = recording
    assert len(trainer.split.train) == 38 and trainer.world == world
    history = trainer.train(STEPS, progress=False)
    params = {n: full(p.detach()).clone() for n, p in model.named_parameters() if p.requires_grad}
    return params, history, epsilons


def _worker(rank: int, world: int, out: Path, sharded: bool) -> None:
    params, history, epsilons = _train(world=world, sharded=sharded)
    extra = {
        "history": torch.tensor(history["train_loss"] + history["val_loss"]),
        "retrain": torch.tensor(history["retrain_loss"]),
        "epsilons": torch.tensor(epsilons, dtype=torch.float64),
    }
    save_file({**params, **extra}, str(out / f"rank{rank}.safetensors"))


@pytest.mark.parametrize("sharded", [False, True], ids=["replicas", "fsdp2"])
def test_two_gloo_processes_equal_one(tmp_path, sharded):
    spawn(_worker, 2, tmp_path, sharded)
    r0 = load_file(str(tmp_path / "rank0.safetensors"))
    r1 = load_file(str(tmp_path / "rank1.safetensors"))
    for key in r0:  # identical on both processes, bit for bit
        assert torch.equal(r0[key], r1[key]), key
    params, history, epsilons = _train(world=1)
    # the same global batches: equal up to the rounding of a two-way average of half-batch means
    torch.testing.assert_close(r0["epsilons"], torch.tensor(epsilons, dtype=torch.float64))
    torch.testing.assert_close(
        r0["history"], torch.tensor(history["train_loss"] + history["val_loss"])
    )
    torch.testing.assert_close(r0["retrain"], torch.tensor(history["retrain_loss"]))
    for name, value in params.items():
        torch.testing.assert_close(r0[name], value, rtol=1e-9, atol=1e-11)


SAVE_AT = (2, STEPS + 1)  # a bi-level step, and a phase-2 step


def _result(model: torch.nn.Module, history: dict[str, list[float]]) -> dict[str, torch.Tensor]:
    from lorax_core._distributed import full

    out = {n: full(p.detach()).clone() for n, p in model.named_parameters() if p.requires_grad}
    for key, values in history.items():
        out[f"history.{key}"] = torch.tensor(values, dtype=torch.float64)
    return out


def _resume_worker(rank: int, world: int, out: Path) -> None:
    from lorax_core.training.distributed import load_run, save_run

    model, trainer = _build(sharded=True)

    def checkpoint(t) -> None:  # save_run on every process, mid-run
        done = t.step_count + t.retrain_count
        if done in SAVE_AT:
            save_run(out / f"run-{done}", model, None, step=done, hook=t)

    history = trainer.train(STEPS, progress=False, on_step=checkpoint)
    save_file(_result(model, history), str(out / f"full-rank{rank}.safetensors"))
    for done in SAVE_AT:  # a fresh model and trainer, restored from the files alone
        model, trainer = _build(sharded=True)
        assert load_run(out / f"run-{done}", model, None, hook=trainer) == done
        history = trainer.train(STEPS, progress=False)
        save_file(_result(model, history), str(out / f"resumed-{done}-rank{rank}.safetensors"))


def test_fsdp2_run_checkpoint_resumes_bit_for_bit(tmp_path):
    """Two FSDP2 processes save run checkpoints (DCP) of the trainer mid-way through each
    phase; fresh models and trainers loaded from them finish with the losses and weights of
    the uninterrupted run, bit for bit."""
    spawn(_resume_worker, 2, tmp_path)
    for rank in (0, 1):
        full = load_file(str(tmp_path / f"full-rank{rank}.safetensors"))
        assert full["history.train_loss"].numel() == STEPS
        assert full["history.retrain_loss"].numel() == RETRAIN
        for done in SAVE_AT:
            resumed = load_file(str(tmp_path / f"resumed-{done}-rank{rank}.safetensors"))
            assert resumed.keys() == full.keys()
            for key, value in full.items():
                assert torch.equal(resumed[key], value), (done, rank, key)


def test_one_process_run_checkpoint_resumes_bit_for_bit(tmp_path):
    """Without a process group, save_run/load_run with the trainer as the hook resume as the
    sharded run does (the same state layout, whole tensors)."""
    from lorax_core.training.distributed import load_run, save_run

    model, trainer = _build()

    def checkpoint(t: BiDoRATrainer) -> None:
        done = t.step_count + t.retrain_count
        if done in SAVE_AT:
            save_run(tmp_path / f"run-{done}", model, None, step=done, hook=t)

    full = _result(model, trainer.train(STEPS, progress=False, on_step=checkpoint))
    for done in SAVE_AT:
        model, trainer = _build()
        assert load_run(tmp_path / f"run-{done}", model, None, hook=trainer) == done
        resumed = _result(model, trainer.train(STEPS, progress=False))
        assert resumed.keys() == full.keys()
        for key, value in full.items():
            assert torch.equal(resumed[key], value), (done, key)


def test_state_of_another_layout_is_refused():
    """A state taken under FSDP2 (shards) does not load into an unsharded trainer."""
    import json

    _, trainer = _build()
    state = trainer.state_dict()
    plain = json.loads(state["plain"])
    plain["sharded"] = True
    state["plain"] = json.dumps(plain)
    _, fresh = _build()
    with pytest.raises(ValueError, match="state must have this trainer's layout"):
        fresh.load_state_dict(state)
