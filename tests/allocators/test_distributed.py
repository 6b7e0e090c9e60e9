"""Two real torch.distributed (gloo) processes train on different data; rank 0 decides, so both
end with identical ranks and allocator state."""

from __future__ import annotations

import json
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

T, T_INIT, T_FINAL, INTERVAL = 10, 2, 2, 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, minilm_dir: str, texts: list[str], out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), HF_HUB_OFFLINE="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
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
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w", encoding="utf-8") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def test_two_gloo_replicas_end_with_identical_ranks(tmp_path, minilm_dir, bbc):
    train, _ = bbc
    texts = [t[:200] for t in train.texts[:8]]
    mp.spawn(_worker, args=(_free_port(), str(minilm_dir), texts, str(tmp_path)), nprocs=2)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["local_scores"] != r1["local_scores"]  # the replicas would decide differently
    assert r0["ranks"] == r1["ranks"]
    assert r0["state"] == r1["state"]
    assert r0["history"] == r1["history"]
    assert any(set(ranks.values()) != {4} for _, ranks in r0["history"])  # ranks moved
    assert sum(r0["ranks"].values()) == 4 * len(r0["ranks"])
