"""AdaLoRA and ElaLoRA driving SVD adapters on real MiniLM layers (BBC News texts): resume is
bit-identical, ranks move, compute shrinks, bad input is refused."""

from __future__ import annotations

import io
import json

import pytest
import torch
from transformers import AutoModel

from lorax_core.adapters import AdapterConfig, inject
from lorax_core.allocators import AdaLoRA, ElaLoRA

N_LAYERS = 2  # the first two real MiniLM blocks keep the test short
T, T_INIT, T_FINAL, INTERVAL = 10, 2, 2, 2


def svd_minilm(minilm_dir, r: int = 4, r_max: int = 8) -> torch.nn.Module:
    model = AutoModel.from_pretrained(str(minilm_dir))
    model.encoder.layer = model.encoder.layer[:N_LAYERS]
    config = AdapterConfig(
        method="svd", r=r, alpha=2.0 * r, r_max=r_max, target_modules=["query", "value"], seed=0
    )
    return inject(model, config).eval()


@pytest.fixture(scope="module")
def batches(minilm_tokenizer, bbc):
    train, _ = bbc
    enc = minilm_tokenizer(
        train.texts[:24],
        truncation=True,
        max_length=32,
        padding="max_length",
        return_tensors="pt",
    )
    labels = torch.tensor(train.labels[:24])
    return [({k: v[i : i + 4] for k, v in enc.items()}, labels[i : i + 4]) for i in range(0, 24, 4)]


class Run:
    """Model + classification head + Adam + allocator; one optimizer step per call."""

    def __init__(self, minilm_dir, cls, **kwargs):
        torch.manual_seed(0)
        self.model = svd_minilm(minilm_dir)
        self.head = torch.nn.Linear(384, 5)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam([*params, *self.head.parameters()], lr=5e-3)
        self.alloc = cls(self.model, optimizer=self.opt, **kwargs)

    def step(self, t, batches):
        inputs, labels = batches[t % len(batches)]
        hidden = self.model(**inputs).last_hidden_state[:, 0]
        loss = torch.nn.functional.cross_entropy(self.head(hidden), labels)
        (loss + self.alloc.orthogonal_regularizer()).backward()
        self.opt.step()
        moved = self.alloc.step(t)
        self.opt.zero_grad()
        return moved

    def snapshot(self):
        weights = {k: v.clone() for k, v in self.model.state_dict().items() if "lora_" in k}
        return self.alloc.ranks(), self.alloc.scores_.state_dict(), weights


ELA = {"total_steps": T, "t_init": T_INIT, "t_final": T_FINAL, "interval": INTERVAL, "b": 2}


def test_elalora_resume_is_bit_identical(minilm_dir, batches):
    full = Run(minilm_dir, ElaLoRA, **ELA)
    moved = [full.step(t, batches) for t in range(1, T + 1)]
    assert any(moved)
    ranks, scores, weights = full.snapshot()
    assert ranks != dict.fromkeys(ranks, 4)  # ranks did move
    assert sum(ranks.values()) == 4 * len(ranks)

    half = Run(minilm_dir, ElaLoRA, **ELA)
    for t in range(1, T // 2 + 1):
        half.step(t, batches)
    buffer = io.BytesIO()
    torch.save(
        {
            "model": half.model.state_dict(),
            "head": half.head.state_dict(),
            "opt": half.opt.state_dict(),
            "alloc": half.alloc.state_dict(),
        },
        buffer,
    )
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    resumed = Run(minilm_dir, ElaLoRA, **ELA)
    resumed.model.load_state_dict(saved["model"])
    resumed.head.load_state_dict(saved["head"])
    resumed.opt.load_state_dict(saved["opt"])
    resumed.alloc.load_state_dict(saved["alloc"])
    for t in range(T // 2 + 1, T + 1):
        resumed.step(t, batches)
    r_ranks, r_scores, r_weights = resumed.snapshot()
    assert r_ranks == ranks
    assert r_scores.keys() == scores.keys()
    for key in scores:
        assert torch.equal(r_scores[key], scores[key]), key
    for key in weights:
        assert torch.equal(r_weights[key], weights[key]), key
    assert resumed.alloc.allocator_.to_json() == full.alloc.allocator_.to_json()


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (ElaLoRA, ELA),
        (AdaLoRA, {"total_steps": T, "t_init": 1, "t_final": 2, "delta_t": 2, "target_r": 2}),
    ],
)
def test_repeated_step_is_a_no_op(minilm_dir, batches, cls, kwargs):
    # Gradient accumulation: the callback calls step(t) once per micro-batch with the same t.
    # Oracle: the same run with one call per step; a second call must neither update the
    # score EMAs again nor run a second allocation round.
    once = Run(minilm_dir, cls, **kwargs)
    twice = Run(minilm_dir, cls, **kwargs)
    for t in range(1, T + 1):
        moved = once.step(t, batches)
        assert twice.step(t, batches) == moved
        before = twice.alloc.scores_.state_dict()
        assert twice.alloc.step(t) is False
        assert twice.alloc.step(t) is False
        after = twice.alloc.scores_.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
    ranks, scores, weights = once.snapshot()
    r_ranks, r_scores, r_weights = twice.snapshot()
    assert r_ranks == ranks
    for key in scores:
        assert torch.equal(r_scores[key], scores[key]), key
    for key in weights:
        assert torch.equal(r_weights[key], weights[key]), key
    assert twice.alloc.allocator_.to_json() == once.alloc.allocator_.to_json()
    steps = [s for s, _ in twice.alloc.history()]
    assert steps and len(steps) == len(set(steps))


def test_step_going_backwards_is_refused(minilm_dir):
    alloc = ElaLoRA(svd_minilm(minilm_dir), **ELA)
    alloc.step(1)
    alloc.step(1)
    with pytest.raises(
        ValueError, match=r"ElaLoRA.step: global_step must be >= the last step \(1\), got 0"
    ):
        alloc.step(0)
    alloc.step(2)
    # The last step survives a checkpoint: a resumed allocator ignores a repeat of it and
    # refuses an earlier step.
    state = alloc.state_dict()
    assert state["last_step"] == 2
    resumed = ElaLoRA(svd_minilm(minilm_dir), **ELA)
    resumed.load_state_dict(state)
    assert resumed.step(2) is False
    with pytest.raises(ValueError, match="global_step"):
        resumed.step(1)
    # Older states without the key resume from the last allocation step.
    legacy = {k: v for k, v in state.items() if k != "last_step"}
    fresh = ElaLoRA(svd_minilm(minilm_dir), **ELA)
    fresh.load_state_dict(legacy)
    assert fresh.last_step_ is None
    with pytest.raises(ValueError, match=r"state\['last_step'\]"):
        fresh.load_state_dict({**state, "last_step": -1})


def test_adalora_shrinks_compute_to_target(minilm_dir, batches):
    run = Run(minilm_dir, AdaLoRA, total_steps=10, target_r=2, t_init=1, t_final=2, delta_t=2)
    for t in range(1, 11):
        run.step(t, batches)
    ranks = run.alloc.ranks()
    assert sum(ranks.values()) == 2 * len(ranks)
    for name, module in run.alloc.modules.items():
        # Compute uses only the active slots; masked E entries are zero.
        assert module.active_rank == ranks[name]
        assert torch.count_nonzero(module.lora_E.detach()[module.active_rank :]) == 0
    steps = [s for s, _ in run.alloc.history()]
    assert steps and all(s % 2 == 0 or s > 8 for s in steps)


def test_orthogonal_regularizer_by_hand(minilm_dir):
    model = svd_minilm(minilm_dir)
    alloc = ElaLoRA(model, **ELA)
    terms = []
    for module in alloc.modules.values():
        a = module.lora_A.detach()[:4].double()
        b = module.lora_B.detach()[:, :4].double()
        eye = torch.eye(4, dtype=torch.float64)
        terms += [
            torch.sqrt(((a @ a.T - eye) ** 2).sum()),
            torch.sqrt(((b.T @ b - eye) ** 2).sum()),
        ]
    expected = 0.1 * torch.stack(terms).mean()
    torch.testing.assert_close(alloc.orthogonal_regularizer().double(), expected, rtol=1e-5, atol=0)


def test_bad_input(minilm_dir):
    model = svd_minilm(minilm_dir, r=4, r_max=4)
    with pytest.raises(ValueError, match="r_max"):
        ElaLoRA(model, **ELA)
    with pytest.raises(TypeError, match="model"):
        ElaLoRA("model", **ELA)  # type: ignore[arg-type]
    plain = AutoModel.from_pretrained(str(minilm_dir))
    with pytest.raises(ValueError, match="SVD"):
        AdaLoRA(plain, total_steps=10)
    model = svd_minilm(minilm_dir)
    with pytest.raises(ValueError, match="t_init"):
        ElaLoRA(model, total_steps=4, t_init=2, t_final=2, interval=1)
    alloc = ElaLoRA(model, **ELA)
    with pytest.raises(TypeError, match="global_step"):
        alloc.step(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="global_step"):
        alloc.step(-1)
    with pytest.raises(TypeError, match="optimizer"):
        alloc.attach_optimizer(object())
    with pytest.raises(RuntimeError, match="optimizer"):
        for t in range(1, T_INIT + INTERVAL + 1):
            alloc.step(t)
    with pytest.raises(ValueError, match="state"):
        alloc.load_state_dict({"allocator": "{}"})
    # A saved state whose interval is 0 used to load and then divide by zero on step().
    state = alloc.state_dict()
    broken = json.loads(state["allocator"])
    broken["method"]["interval"] = 0
    with pytest.raises(ValueError, match="state: interval must be positive, got 0"):
        alloc.load_state_dict({**state, "allocator": json.dumps(broken)})
    with pytest.raises(TypeError, match="ElaLoRA: interval must be an int"):
        ElaLoRA(model, **{**ELA, "interval": 2.0})
    with pytest.raises(ValueError, match="ElaLoRA: interval must be an int >= 1, got 0"):
        ElaLoRA(model, **{**ELA, "interval": 0})
