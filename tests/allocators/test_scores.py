"""Device-side importance scores against a hand computation (numpy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lorax_core.adapters import SVDLinear
from lorax_core.allocators import ImportanceScores, rank_scores, update_importance_
from lorax_core.allocators import scores as scores_module


def numpy_ema(ps, gs, beta1, beta2):
    """Reference: run the recurrences of docs/allocators.md over a sequence of (p, grad) pairs."""
    ipt = np.zeros_like(ps[0], dtype=np.float64)
    unc = np.zeros_like(ps[0], dtype=np.float64)
    for p, g in zip(ps, gs, strict=True):
        cur = np.abs(p * g)
        ipt = beta1 * ipt + (1 - beta1) * cur
        unc = beta2 * unc + (1 - beta2) * np.abs(cur - ipt)
    return ipt, unc


def test_one_step_by_hand():
    p = torch.tensor([[1.0, -2.0], [0.5, 4.0]], dtype=torch.float64)
    g = torch.tensor([[0.1, 0.2], [-2.0, 0.0]], dtype=torch.float64)
    ipt, unc = torch.zeros_like(p), torch.zeros_like(p)
    update_importance_([p], [g], [ipt], [unc], 0.85, 0.85)
    # I = |p g| = [[0.1, 0.4], [1.0, 0]]; Ī = 0.15 I; Ū = 0.15 |I − 0.15 I| = 0.15·0.85 I.
    current = torch.tensor([[0.1, 0.4], [1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(ipt, 0.15 * current, rtol=0, atol=1e-15)
    torch.testing.assert_close(unc, 0.15 * 0.85 * current, rtol=0, atol=1e-15)


@given(
    steps=st.integers(1, 5),
    beta1=st.floats(0.05, 0.95),
    beta2=st.floats(0.05, 0.95),
    seed=st.integers(0, 2**16),
)
def test_ema_matches_numpy_over_steps(steps, beta1, beta2, seed):
    rng = np.random.default_rng(seed)
    shapes = [(3, 5), (3,), (4, 3)]
    ps = [[rng.standard_normal(s) for s in shapes] for _ in range(steps)]
    gs = [[rng.standard_normal(s) for s in shapes] for _ in range(steps)]
    ipt = [torch.zeros(s, dtype=torch.float64) for s in shapes]
    unc = [torch.zeros(s, dtype=torch.float64) for s in shapes]
    for t in range(steps):
        update_importance_(
            [torch.from_numpy(x) for x in ps[t]],
            [torch.from_numpy(x) for x in gs[t]],
            ipt,
            unc,
            beta1,
            beta2,
        )
    for j in range(len(shapes)):
        ref_i, ref_u = numpy_ema([p[j] for p in ps], [g[j] for g in gs], beta1, beta2)
        np.testing.assert_allclose(ipt[j].numpy(), ref_i, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(unc[j].numpy(), ref_u, rtol=1e-12, atol=1e-15)


def test_rank_scores_by_hand():
    rng = np.random.default_rng(0)
    ia, ua = rng.random((6, 5)), rng.random((6, 5))
    ie, ue = rng.random(6), rng.random(6)
    ib, ub = rng.random((4, 6)), rng.random((4, 6))
    r = 3
    expected = [
        ie[i] * ue[i] + np.mean(ia[i] * ua[i]) + np.mean(ib[:, i] * ub[:, i]) for i in range(r)
    ]
    t = torch.from_numpy
    got = rank_scores([t(ia), t(ie), t(ib)], [t(ua), t(ue), t(ub)], r)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-13)


def test_scores_follow_a_real_adapter_backward():
    torch.manual_seed(0)
    layer = SVDLinear(torch.nn.Linear(7, 5), r=3, alpha=6.0, r_max=5)
    with torch.no_grad():
        layer.lora_E[:3] = torch.tensor([0.3, -0.2, 0.1])
    scores = ImportanceScores({"layer": layer}, 0.85, 0.85)
    history = []
    for _ in range(3):
        layer.zero_grad()
        layer(torch.randn(4, 7)).pow(2).sum().backward()
        history.append(
            [
                (p.detach().numpy().copy(), p.grad.numpy().copy())
                for p in (layer.lora_A, layer.lora_E, layer.lora_B)
            ]
        )
        scores.update()
    per_param = []
    for j in range(3):
        per_param.append(
            numpy_ema([h[j][0] for h in history], [h[j][1] for h in history], 0.85, 0.85)
        )
    s = [ipt * unc for ipt, unc in per_param]
    expected = s[1][:3] + s[0][:3].mean(axis=1) + s[2][:, :3].mean(axis=0)
    got = scores.rank_scores_host()
    assert len(got) == 1 and len(got[0]) == 3
    np.testing.assert_allclose(got[0], expected, rtol=1e-5, atol=1e-12)
    # Inactive slots receive no gradient, so their history stays at zero.
    assert torch.count_nonzero(scores.ipt["layer"][0][3:]) == 0


def test_scores_reject_bad_betas():
    layer = SVDLinear(torch.nn.Linear(4, 4), r=2, r_max=2)
    with pytest.raises(ValueError, match="beta1"):
        ImportanceScores({"l": layer}, 1.0, 0.5)
    with pytest.raises(ValueError, match="beta2"):
        ImportanceScores({"l": layer}, 0.5, 0.0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_ordinary_steps_never_synchronise_with_the_host():
    from lorax_core.allocators import ElaLoRA

    torch.manual_seed(0)
    model = torch.nn.Sequential(SVDLinear(torch.nn.Linear(32, 16), r=4, r_max=8)).cuda()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    alloc = ElaLoRA(model, 20, t_init=5, t_final=5, interval=5, optimizer=opt)
    x = torch.randn(8, 32, device="cuda")
    for t in range(1, 5):  # ordinary steps only
        model(x).pow(2).sum().backward()
        opt.step()
        torch.cuda.set_sync_debug_mode("error")
        try:
            alloc.step(t)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        opt.zero_grad()
    assert alloc.scores_.ipt["0"][1].device.type == "cuda"


def _scored_modules(device: str) -> dict[str, SVDLinear]:
    torch.manual_seed(3)
    mods = {
        str(i): SVDLinear(torch.nn.Linear(20 + i, 12), r=3, r_max=5).to(device) for i in range(3)
    }
    for m in mods.values():
        for p in (m.lora_A, m.lora_E, m.lora_B):
            p.grad = torch.randn_like(p)
    return mods


def _check_scores_follow_the_emas(device: str) -> None:
    mods = _scored_modules(device)
    scores = ImportanceScores(mods, 0.85, 0.85)
    scores.update()
    for got, (name, m) in zip(scores.rank_scores(), mods.items(), strict=True):
        want = rank_scores(scores.ipt[name], scores.unc[name], m.active_rank)
        torch.testing.assert_close(got, want.to(got.dtype), rtol=1e-5, atol=1e-12)
    perm = torch.tensor([4, 0, 1, 2, 3])
    scores.permute_("1", perm, 3)  # the fused buffer is stale now: scores follow the EMAs
    got = scores.rank_scores()[1]
    want = rank_scores(scores.ipt["1"], scores.unc["1"], mods["1"].active_rank)
    torch.testing.assert_close(got, want)
    state = scores.state_dict()
    scores.update()
    scores.load_state_dict(state)
    torch.testing.assert_close(scores.rank_scores()[1], want)


def test_scores_follow_permutes_and_loads() -> None:
    _check_scores_follow_the_emas("cpu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_scores_follow_permutes_and_loads_on_cuda() -> None:
    _check_scores_follow_the_emas("cuda")


def numpy_move(value: np.ndarray, perm: list[int], dim: int, n_keep: int) -> np.ndarray:
    """Reference of one slot move: take along ``dim``, then zero the slots ``≥ n_keep``."""
    out = np.take(value, perm, axis=dim).copy()
    index = [slice(None)] * out.ndim
    index[dim] = slice(n_keep, None)
    out[tuple(index)] = 0
    return out


@st.composite
def slot_moves(draw):  # type: ignore[no-untyped-def]
    """Tensors of a few shapes (so that several share a batch), each with a perm (the identity
    or a random one) and n_keep."""
    cap = draw(st.integers(1, 6))
    shapes = draw(
        st.lists(
            st.sampled_from([((cap, 5), 0), ((cap,), 0), ((4, cap), 1), ((cap, 3), 0)]),
            min_size=1,
            max_size=8,
        )
    )
    dtypes = draw(
        st.lists(
            st.sampled_from([torch.float32, torch.float64]),
            min_size=len(shapes),
            max_size=len(shapes),
        )
    )
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    moves = []
    for (shape, dim), dtype in zip(shapes, dtypes, strict=True):
        tensor = torch.from_numpy(rng.standard_normal(shape)).to(dtype)
        # Half the moves keep their slots in place (zeroed tails only), as most do in training.
        perm = rng.permutation(cap).tolist() if rng.random() < 0.5 else list(range(cap))
        moves.append((tensor, perm, dim, int(rng.integers(0, cap + 1))))
    return moves


@given(moves=slot_moves(), batch=st.sampled_from([None, 1, 7]))
def test_batched_slot_moves_match_numpy(moves, batch) -> None:
    expected = [numpy_move(t.numpy(), perm, dim, keep) for t, perm, dim, keep in moves]
    if batch is None:
        scores_module.permute_rank_axes_(moves)
    else:  # a tiny batch limit: the stacked moves split into chunks
        limit = scores_module._BATCH_ELEMENTS
        scores_module._BATCH_ELEMENTS = batch
        try:
            scores_module.permute_rank_axes_(moves)
        finally:
            scores_module._BATCH_ELEMENTS = limit
    for (tensor, *_), want in zip(moves, expected, strict=True):
        np.testing.assert_array_equal(tensor.numpy(), want)  # copies only: exact


def test_batched_slot_moves_reject_a_short_perm() -> None:
    with pytest.raises(ValueError, match="perm"):
        scores_module.permute_rank_axes_([(torch.zeros(4, 2), [0, 1, 2], 0, 2)])


def test_one_cpu_thread_restores_the_setting() -> None:
    threads = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="inside"), scores_module.one_cpu_thread():
        assert torch.get_num_threads() == 1
        raise RuntimeError("inside")
    assert torch.get_num_threads() == threads
