"""Two real torch.distributed (gloo) processes train on different data; rank 0 decides, so both
end with identical ranks and allocator state."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.distributed._launch import spawn

T, T_INIT, T_FINAL, INTERVAL = 10, 2, 2, 2


def _worker(rank: int, world: int, out: Path, minilm_dir: str, texts: list[str]) -> None:
    from transformers import AutoModel, AutoTokenizer

    from lorax_core.adapters import AdapterConfig, inject
    from lorax_core.allocators import ElaLoRA

    model = AutoModel.from_pretrained(minilm_dir)
    model.encoder.layer = model.encoder.layer[:1]
    inject(
        model,
        AdapterConfig(
            method="svd", r=4, alpha=8.0, r_max=8, target_modules=["query", "value"], seed=0
        ),
    )
    model.eval()
    tok = AutoTokenizer.from_pretrained(minilm_dir)
    # Each replica sees different texts, so its local scores differ.
    mine = texts[rank::2]
    enc = tok(mine, truncation=True, max_length=16, padding=True, return_tensors="pt")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=5e-3)
    alloc = ElaLoRA(model, T, T_INIT, T_FINAL, INTERVAL, b=2, k=2, optimizer=opt, seed=rank)
    local_scores = None
    for t in range(1, T + 1):
        loss = model(**enc).last_hidden_state.pow(2).mean()
        (loss + alloc.orthogonal_regularizer()).backward()
        opt.step()
        if alloc.allocator_.is_allocation_step(t) and local_scores is None:
            local_scores = alloc.scores_.rank_scores_host()
        alloc.step(t)
        opt.zero_grad()
    result = {
        "ranks": alloc.ranks(),
        "state": alloc.allocator_.to_json(),
        "local_scores": local_scores,
        "history": alloc.history(),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(result), encoding="utf-8")


def test_two_gloo_replicas_end_with_identical_ranks(tmp_path, minilm_dir, bbc):
    train, _ = bbc
    texts = [t[:200] for t in train.texts[:8]]
    spawn(_worker, 2, tmp_path, str(minilm_dir), texts)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["local_scores"] != r1["local_scores"]  # the replicas would decide differently
    assert r0["ranks"] == r1["ranks"]
    assert r0["state"] == r1["state"]
    assert r0["history"] == r1["history"]
    assert any(set(ranks.values()) != {4} for _, ranks in r0["history"])  # ranks moved
    assert sum(r0["ranks"].values()) == 4 * len(r0["ranks"])
