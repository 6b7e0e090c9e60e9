"""Applying decisions to real SVD adapters and a real Adam: outputs, moments, orthogonality."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lorax_core._core import ModulePlan, RankAllocator, ScheduleOptions
from lorax_core.adapters import SVDLinear
from lorax_core.allocators.scores import ImportanceScores
from lorax_core.allocators.surgery import (
    NEW_RANK_E,
    apply_plan_,
    apply_plans_,
    orthonormal_complement,
)

IN, OUT, CAP = 12, 10, 6


def build(ranks: list[int], seed: int) -> tuple[list[SVDLinear], torch.optim.Adam]:
    torch.manual_seed(seed)
    layers = []
    for r in ranks:
        base = torch.nn.Linear(IN, OUT, dtype=torch.float64)
        layer = SVDLinear(base, r=r, alpha=2.0 * r, r_max=CAP)
        with torch.no_grad():
            layer.lora_E[:r] = torch.rand(r, dtype=torch.float64) + 0.5
        layer.set_trainable()
        layers.append(layer)
    params = [p for layer in layers for p in layer.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    x = torch.randn(8, IN, dtype=torch.float64)
    for _ in range(2):  # real moments
        opt.zero_grad()
        sum(layer(x).pow(2).sum() for layer in layers).backward()
        opt.step()
    return layers, opt


@given(
    ranks=st.lists(st.integers(1, 4), min_size=2, max_size=4),
    seed=st.integers(0, 10_000),
    b=st.integers(1, 4),
)
def test_round_on_real_layers(ranks, seed, b):
    layers, opt = build(ranks, seed)
    x = torch.randn(5, IN, dtype=torch.float64)
    with torch.no_grad():
        before = [layer(x) for layer in layers]
    moments = [
        {
            name: {k: v.clone() for k, v in opt.state[getattr(layer, name)].items()}
            for name in ("lora_A", "lora_E", "lora_B")
        }
        for layer in layers
    ]
    old_params = [
        {n: getattr(layer, n).detach().clone() for n in ("lora_A", "lora_E", "lora_B")}
        for layer in layers
    ]
    rng = np.random.default_rng(seed)
    scores = [rng.random(r).tolist() for r in ranks]
    alloc = RankAllocator.elalora(
        [str(i) for i in range(len(ranks))],
        ranks,
        [CAP] * len(ranks),
        total_steps=50,
        t_init=0,
        t_final=0,
        interval=1,
        b0=b,
        k=2,
        seed=seed,
    )
    plans = alloc.allocate(1, scores)
    for layer, plan in zip(layers, plans, strict=True):
        apply_plan_(layer, opt, plan.perm, plan.n_keep, plan.new_rank, plan.seed)
    assert sum(layer.active_rank for layer in layers) == sum(ranks)
    with torch.no_grad():
        after = [layer(x) for layer in layers]
    for i, (layer, plan) in enumerate(zip(layers, plans, strict=True)):
        perm, n_keep, new_rank, r0 = plan.perm, plan.n_keep, plan.new_rank, ranks[i]
        n_pruned, n_new = r0 - n_keep, new_rank - n_keep
        if n_pruned == 0:  # only expanded (or untouched): output unchanged
            torch.testing.assert_close(after[i], before[i], rtol=0, atol=1e-10)
        else:  # a rank with |E| ≥ 0.5 is gone: output changed
            assert (after[i] - before[i]).abs().max() > 1e-4
        keep = torch.tensor(perm[:n_keep])
        # Surviving ranks keep their values and Adam moments; new and free slots are reset.
        for name, dim in (("lora_A", 0), ("lora_E", 0), ("lora_B", 1)):
            p = getattr(layer, name)
            torch.testing.assert_close(
                p.detach().narrow(dim, 0, n_keep),
                old_params[i][name].index_select(dim, keep),
                rtol=0,
                atol=0,
            )
            for key in ("exp_avg", "exp_avg_sq"):
                state = opt.state[p][key]
                torch.testing.assert_close(
                    state.narrow(dim, 0, n_keep),
                    moments[i][name][key].index_select(dim, keep),
                    rtol=0,
                    atol=0,
                )
                assert torch.count_nonzero(state.narrow(dim, n_keep, CAP - n_keep)) == 0
            assert torch.equal(opt.state[p]["step"], moments[i][name]["step"])
        if n_new:
            a = layer.lora_A.detach()[:new_rank]
            bb = layer.lora_B.detach()[:, :new_rank]
            new_a, new_b = a[n_keep:], bb[:, n_keep:]
            torch.testing.assert_close(
                new_a @ a[:n_keep].T, torch.zeros(n_new, n_keep, dtype=a.dtype), rtol=0, atol=1e-12
            )
            torch.testing.assert_close(
                new_b.T @ bb[:, :n_keep],
                torch.zeros(n_new, n_keep, dtype=a.dtype),
                rtol=0,
                atol=1e-12,
            )
            torch.testing.assert_close(new_a.norm(dim=1), torch.ones(n_new, dtype=a.dtype))
            torch.testing.assert_close(new_b.norm(dim=0), torch.ones(n_new, dtype=a.dtype))
            e = layer.lora_E.detach()
            expected = min(e[:n_keep].abs().min().item(), NEW_RANK_E)
            assert torch.all(e[n_keep:new_rank] == expected)
        assert torch.count_nonzero(layer.lora_E.detach()[new_rank:]) == 0


def test_scores_move_with_slots():
    layers, _ = build([4], 0)
    scores = ImportanceScores({"l": layers[0]}, 0.85, 0.85)
    for store in (scores.ipt["l"], scores.unc["l"]):
        for t in store:
            t.copy_(torch.rand_like(t) + 0.1)
    old = [t.clone() for t in scores.ipt["l"]]
    perm = torch.tensor([3, 1, 0, 2, 4, 5])
    scores.permute_("l", perm, 2)
    torch.testing.assert_close(scores.ipt["l"][0][:2], old[0][[3, 1]], rtol=0, atol=0)
    torch.testing.assert_close(scores.ipt["l"][2][:, :2], old[2][:, [3, 1]], rtol=0, atol=0)
    assert torch.count_nonzero(scores.ipt["l"][1][2:]) == 0


def mixed_layers(seed: int) -> tuple[list[SVDLinear], torch.optim.Adam, torch.Tensor]:
    """Four layers of two shapes and two dtypes with real Adam moments, and an input."""
    torch.manual_seed(seed)
    layers = []
    for i, dtype in enumerate((torch.float64, torch.float32, torch.float64, torch.float32)):
        base = torch.nn.Linear(IN + 4 * (i % 2), OUT, dtype=dtype)
        layer = SVDLinear(base, r=3, alpha=6.0, r_max=CAP)
        with torch.no_grad():
            layer.lora_E[:3] = torch.rand(3, dtype=dtype) + 0.5
            layer.lora_B.normal_()
        layer.set_trainable()
        layers.append(layer)
    opt = torch.optim.Adam([p for m in layers for p in m.parameters() if p.requires_grad])
    x = torch.randn(8, IN + 4)
    opt.zero_grad()
    sum(m(x[:, : m.in_features].to(m.lora_A.dtype)).pow(2).sum() for m in layers).backward()
    opt.step()
    return layers, opt, x


@given(seed=st.integers(0, 10_000), b=st.integers(1, 4))
def test_batched_plans_equal_plans_applied_one_by_one(seed, b):
    layers, opt, _ = mixed_layers(seed)
    twins, twin_opt, _ = mixed_layers(seed)
    alloc = RankAllocator.elalora(
        [str(i) for i in range(len(layers))],
        [3] * len(layers),
        [CAP] * len(layers),
        ScheduleOptions(50, interval=1, seed=seed),
        b0=b,
        k=2,
    )
    rng = np.random.default_rng(seed)
    plans = alloc.allocate(1, [rng.random(3).tolist() for _ in layers])
    apply_plans_(layers, opt, plans)
    for twin, plan in zip(twins, plans, strict=True):
        apply_plan_(twin, twin_opt, plan.perm, plan.n_keep, plan.new_rank, plan.seed)
    for layer, twin, plan in zip(layers, twins, plans, strict=True):
        assert layer.active_rank == twin.active_rank == plan.new_rank
        for name in ("lora_A", "lora_E", "lora_B"):
            p, q = getattr(layer, name), getattr(twin, name)
            assert torch.equal(p, q)
            for key in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(opt.state[p][key], twin_opt.state[q][key])
        # New ranks: orthonormal and orthogonal to the kept ones (numpy, float64).
        a = layer.lora_A.detach().double().numpy()[: plan.new_rank]
        bb = layer.lora_B.detach().double().numpy()[:, : plan.new_rank]
        tol = 1e-12 if layer.lora_A.dtype == torch.float64 else 1e-6
        for gram in (a[plan.n_keep :] @ a.T, bb[:, plan.n_keep :].T @ bb):
            want = np.eye(plan.new_rank)[plan.n_keep :]
            np.testing.assert_allclose(gram[:, plan.n_keep :], want[:, plan.n_keep :], atol=tol)
            np.testing.assert_allclose(gram[:, : plan.n_keep], 0.0, atol=tol)


def test_plans_must_match_the_modules():
    layers, opt, _ = mixed_layers(0)
    with pytest.raises(ValueError, match="plans"):
        apply_plans_(layers, opt, [ModulePlan([0, 1, 2, 3, 4, 5], 3, 3, 0)])


@given(
    d=st.integers(2, 40),
    data=st.data(),
    deficient=st.booleans(),
    seed=st.integers(0, 2**63 - 1),
)
def test_orthonormal_complement_against_numpy(d, data, deficient, seed):
    m = data.draw(st.integers(0, d - 1))
    n_new = data.draw(st.integers(1, d - m))
    rng = np.random.default_rng(seed % 2**32)
    existing = rng.standard_normal((d, m))
    if deficient and m > 1:  # zero and repeated columns (B at initialisation, collinear rows)
        existing[:, 0] = 0.0
        existing[:, -1] = existing[:, 1 % m]
    new = orthonormal_complement(torch.from_numpy(existing), n_new, seed).numpy()
    assert new.shape == (d, n_new)
    np.testing.assert_allclose(new.T @ new, np.eye(n_new), atol=1e-12)
    # Orthogonal to the span of the kept columns (an orthonormal basis of it from numpy's SVD).
    if m:
        u, s, _ = np.linalg.svd(existing, full_matrices=False)
        basis = u[:, s > 1e-10 * max(s.max(), 1.0)]
        np.testing.assert_allclose(basis.T @ new, 0.0, atol=1e-12)
    again = orthonormal_complement(torch.from_numpy(existing), n_new, seed).numpy()
    np.testing.assert_array_equal(new, again)  # deterministic for a seed
