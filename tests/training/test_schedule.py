"""Learning-rate schedule and batch streams, against closed forms and plain re-computation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lorax_core.training import BatchStream, LinearWarmupDecay, linear_warmup_decay
from lorax_core.training.schedule import shard


@given(total=st.integers(1, 200), warmup=st.floats(0.0, 0.9))
def test_linear_warmup_decay_closed_form(total, warmup):
    schedule = LinearWarmupDecay(total, warmup)
    w = round(total * warmup)
    for t in range(total + 1):
        want = t / w if t < w else (total - t) / (total - w) if total > w else 0.0
        assert schedule(t) == pytest.approx(want)
    assert schedule(total) == 0.0


def test_lambda_lr_follows_the_schedule_and_round_trips():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1.0)
    scheduler = linear_warmup_decay(optimizer, 10, 0.2)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:3] == pytest.approx([0.0, 0.5, 1.0])
    assert lrs[-1] == pytest.approx(1 / 8)
    again = linear_warmup_decay(torch.optim.AdamW([param], lr=1.0), 10, 0.2)
    again.load_state_dict(scheduler.state_dict())
    assert again.get_last_lr() == scheduler.get_last_lr()


def test_schedule_rejects_bad_arguments():
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    with pytest.raises(ValueError, match="total_steps"):
        linear_warmup_decay(optimizer, 0, 0.1)
    with pytest.raises(ValueError, match="warmup_fraction"):
        linear_warmup_decay(optimizer, 10, 1.5)


@given(
    n=st.integers(4, 60), batch=st.integers(1, 4), seed=st.integers(0, 1000), cut=st.integers(0, 30)
)
def test_stream_resumes_exactly_and_covers_each_epoch(n, batch, seed, cut):
    indices = list(range(100, 100 + n))
    stream = BatchStream(indices, batch, seed)
    uninterrupted = [stream.next_indices() for _ in range(40)]
    first = BatchStream(indices, batch, seed)
    head = [first.next_indices() for _ in range(cut)]
    resumed = BatchStream(indices, batch, seed)
    resumed.load_state_dict(first.state_dict())
    assert head + [resumed.next_indices() for _ in range(40 - cut)] == uninterrupted
    per_epoch = n // batch
    epoch = [i for b in uninterrupted[:per_epoch] for i in b]
    assert len(set(epoch)) == len(epoch) and set(epoch) <= set(indices)


def test_shards_partition_the_global_batch():
    batch = list(range(8))
    assert shard(batch, 0, 2) + shard(batch, 1, 2) == batch
    assert shard(batch, 0, 1) == batch


def test_stream_rejects_a_batch_larger_than_the_data():
    with pytest.raises(ValueError, match="batch_size"):
        BatchStream([1, 2], 3, 0)
