"""The two kernels against their torch references, and the references against independent
oracles (numpy loops, the dense float64 matrix). CUDA tests skip without a device."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.library import opcheck

from lorax_core import kernels
from lorax_core.allocators import rank_scores
from lorax_core.kernels import reference
from tests.kernels.conftest import TOLERANCE, needs_cuda

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# (shape, rank axis) of one SVD module's A (cap, in), E (cap,), B (out, cap), plus odd sizes.
SEGMENTS = [((5, 37), 0), ((5,), 0), ((29, 5), 1), ((1, 1), 0), ((3, 4099), 0), ((4099, 3), 1)]


def _tensors(shape, dtype, device, gen, kind="random"):  # type: ignore[no-untyped-def]
    t = torch.randn(shape, generator=gen, dtype=torch.float64)
    if kind == "zeros":
        t.zero_()
    elif kind == "huge":
        t *= 1e18 if dtype == torch.bfloat16 else (1e2 if dtype == torch.float16 else 1e18)
    elif kind == "tiny":
        t *= 1e-3 if dtype == torch.float16 else 1e-18
    return t.to(device=device, dtype=dtype)


def _setup(dtype, device, kind="random", seed=0, strided=False):  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(seed)
    params, grads, ipt, unc = [], [], [], []
    for shape, _ in SEGMENTS:
        p = _tensors(shape, dtype, device, gen, kind)
        g = _tensors(shape, dtype, device, gen, kind)
        if strided and p.dim() == 2:  # same values, transposed storage
            p = p.t().contiguous().t()
            g = g.t().contiguous().t()
        params.append(p)
        grads.append(g)
        ipt.append(_tensors(shape, dtype, device, gen, "random").abs())
        unc.append(_tensors(shape, dtype, device, gen, "random").abs())
    dims = [d for _, d in SEGMENTS]
    offsets, total = [], 0
    for (shape, d), _ in zip(SEGMENTS, dims, strict=True):
        offsets.append(total)
        total += shape[d] if len(shape) == 2 else shape[0]
    return params, grads, ipt, unc, dims, offsets, total


# -- references against independent oracles (CPU) --------------------------------------------


def test_reference_update_and_scores_match_a_numpy_loop() -> None:
    params, grads, ipt, unc, dims, offsets, total = _setup(torch.float64, "cpu")
    before = [(a.numpy().copy(), b.numpy().copy()) for a, b in zip(ipt, unc, strict=True)]
    scores = torch.empty(total, dtype=torch.float32)
    kernels.importance_update_(
        params, grads, ipt, unc, 0.8, 0.7, rank_dims=dims, score_offsets=offsets, scores=scores
    )
    want = np.zeros(total)
    for t, (p, g, (i0, u0)) in enumerate(zip(params, grads, before, strict=True)):
        cur = np.abs(p.numpy() * g.numpy())
        i1 = 0.8 * i0 + 0.2 * cur
        u1 = 0.7 * u0 + 0.3 * np.abs(cur - i1)
        np.testing.assert_allclose(ipt[t].numpy(), i1, rtol=1e-12)
        np.testing.assert_allclose(unc[t].numpy(), u1, rtol=1e-12)
        s = i1 * u1
        s = s.mean(axis=1 - dims[t]) if s.ndim == 2 else s
        want[offsets[t] : offsets[t] + s.size] += s
    np.testing.assert_allclose(scores.numpy(), want, rtol=1e-6)


def test_reference_scores_equal_the_per_module_rank_scores() -> None:
    gen = torch.Generator().manual_seed(3)
    ipt = [
        torch.rand(6, 11, generator=gen),
        torch.rand(6, generator=gen),
        torch.rand(9, 6, generator=gen),
    ]
    unc = [
        torch.rand(6, 11, generator=gen),
        torch.rand(6, generator=gen),
        torch.rand(9, 6, generator=gen),
    ]
    scores = torch.empty(6)
    reference.rank_scores_(ipt, unc, [0, 0, 1], [0, 0, 0], scores)
    torch.testing.assert_close(scores[:4], rank_scores(ipt, unc, 4))


@given(
    out=st.integers(1, 40),
    inp=st.integers(1, 40),
    r=st.integers(1, 9),
    scale=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**16),
)
def test_reference_dora_norm_equals_the_dense_row_norm(out, inp, r, scale, seed) -> None:  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(out, inp, generator=gen, dtype=torch.float64)
    A = torch.randn(r, inp, generator=gen, dtype=torch.float64)
    B = torch.randn(out, r, generator=gen, dtype=torch.float64)
    dense = torch.linalg.vector_norm(W + scale * (B @ A), dim=1)
    torch.testing.assert_close(kernels.dora_row_norm(W, A, B, scale), dense, rtol=1e-9, atol=1e-9)


def test_ops_schemas_and_fake_implementations() -> None:
    gen = torch.Generator().manual_seed(1)
    W, A, B = (
        torch.randn(7, 5, generator=gen),
        torch.randn(3, 5, generator=gen),
        torch.randn(7, 3, generator=gen),
    )
    opcheck(torch.ops.lorax_core.dora_row_norm, (W, A, B, 0.25))
    params, grads, ipt, unc, dims, offsets, total = _setup(torch.float32, "cpu")
    scores = torch.zeros(total)
    opcheck(
        torch.ops.lorax_core.importance_update_,
        (ipt, unc, params, grads, dims, offsets, scores, 0.85, 0.85),
        test_utils=("test_schema", "test_faketensor"),
    )
    with torch._subclasses.FakeTensorMode():
        fake = torch.ops.lorax_core.dora_row_norm(
            torch.empty(4096, 11008, dtype=torch.bfloat16),
            torch.empty(8, 11008),
            torch.empty(4096, 8),
            2.0,
        )
    assert fake.shape == (4096,) and fake.dtype == torch.float32


# -- kernels against the references (CUDA) -----------------------------------------------------


# -- the Rust loop on CPU float32 against a float64 oracle ----------------------------------


def _oracle(params, grads, ipt, unc, dims, offsets, total, beta1, beta2):  # type: ignore[no-untyped-def]
    """The formulas in float64 numpy from the same inputs: new EMAs and per-rank scores."""
    new_ipt, new_unc, scores = [], [], np.zeros(total)
    for p, g, a, b, dim, off in zip(params, grads, ipt, unc, dims, offsets, strict=True):
        cur = np.abs(p.double().numpy() * g.double().numpy())
        i1 = beta1 * a.double().numpy() + (1 - beta1) * cur
        u1 = beta2 * b.double().numpy() + (1 - beta2) * np.abs(cur - i1)
        new_ipt.append(i1)
        new_unc.append(u1)
        if dim >= 0:
            s = i1 * u1
            s = s.mean(axis=1 - dim) if s.ndim == 2 else s
            scores[off : off + s.size] += s
    return new_ipt, new_unc, scores


@pytest.mark.parametrize("strided", [False, True])
def test_cpu_float32_update_matches_a_float64_oracle(strided: bool) -> None:
    params, grads, ipt, unc, dims, offsets, total = _setup(torch.float32, "cpu", strided=strided)
    # One large module too, past the size at which the loop runs on several threads.
    gen = torch.Generator().manual_seed(1)
    for shape, dim in (((600, 512), 0), ((600,), 0), ((512, 600), 1)):
        params.append(torch.randn(shape, generator=gen))
        grads.append(torch.randn(shape, generator=gen))
        ipt.append(torch.rand(shape, generator=gen))
        unc.append(torch.rand(shape, generator=gen))
        dims.append(dim)
        offsets.append(total)
    total += 600
    dims[1] = -1  # an unscored tensor: EMAs updated, no score
    want_ipt, want_unc, want_scores = _oracle(
        params, grads, ipt, unc, dims, offsets, total, 0.85, 0.6
    )
    scores = torch.full((total,), 7.0)
    assert kernels.fuses_importance(scores, *params)
    used = kernels.importance_update_(
        params, grads, ipt, unc, 0.85, 0.6, rank_dims=dims, score_offsets=offsets, scores=scores
    )
    assert used
    for a, b, wa, wu in zip(ipt, unc, want_ipt, want_unc, strict=True):
        np.testing.assert_allclose(a.double().numpy(), wa, rtol=2e-6, atol=1e-30)
        np.testing.assert_allclose(b.double().numpy(), wu, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(scores.double().numpy(), want_scores, rtol=1e-5, atol=1e-30)


@given(
    rows=st.integers(1, 30),
    cols=st.integers(1, 30),
    beta1=st.floats(0.01, 0.99),
    beta2=st.floats(0.01, 0.99),
    seed=st.integers(0, 2**16),
)
def test_cpu_float32_update_equals_the_torch_reference(rows, cols, beta1, beta2, seed) -> None:  # type: ignore[no-untyped-def]
    """The Rust loop and the ``torch._foreach`` reference agree for any shape and betas (the
    lerp's rounding included: both branches of ``torch.lerp`` are drawn)."""
    gen = torch.Generator().manual_seed(seed)
    shapes, dims = [(rows, cols), (rows,), (cols, rows)], [0, 0, 1]
    made = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(2)]
    emas = [[torch.rand(s, generator=gen) for s in shapes] for _ in range(2)]
    ref = [[t.clone() for t in e] for e in emas]
    scores, want = torch.empty(rows), torch.empty(rows)
    kernels.importance_update_(
        *made, *emas, beta1, beta2, rank_dims=dims, score_offsets=[0, 0, 0], scores=scores
    )
    reference.importance_update_(*made, *ref, beta1, beta2)
    reference.rank_scores_(*ref, dims, [0, 0, 0], want)
    for got, exp in zip(emas[0] + emas[1], ref[0] + ref[1], strict=True):
        torch.testing.assert_close(got, exp, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(scores, want, rtol=1e-5, atol=1e-7)


def test_cpu_float32_update_without_scores_runs_the_rust_pass(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """No scores asked for (an allocator with a parameter lacking its gradient): the EMAs still
    take the Rust pass, and equal the torch reference."""
    from lorax_core import _core
    from lorax_core.kernels import ops

    calls, real = [], _core._importance_update_f32

    def spy(*args):  # type: ignore[no-untyped-def]
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(ops._core, "_importance_update_f32", spy)
    gen = torch.Generator().manual_seed(3)
    shapes = [(7, 5), (7,), (5, 7)]
    made = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(2)]
    emas = [[torch.rand(s, generator=gen) for s in shapes] for _ in range(2)]
    ref = [[t.clone() for t in e] for e in emas]
    assert not kernels.importance_update_(*made, *emas, 0.85, 0.3, rank_dims=[0, 0, 1])
    reference.importance_update_(*made, *ref, 0.85, 0.3)
    assert len(calls) == 1 and all(t[6] == -1 for t in calls[0][0])  # nothing scored
    for got, exp in zip(emas[0] + emas[1], ref[0] + ref[1], strict=True):
        torch.testing.assert_close(got, exp, rtol=1e-6, atol=1e-7)


def test_cpu_pass_checked_once_skips_missing_gradients_and_refuses_other_tensors() -> None:
    gen = torch.Generator().manual_seed(5)
    shapes, dims = [(6, 4), (6,), (4, 6)], [0, 0, 1]
    params = [torch.randn(s, generator=gen) for s in shapes]
    grads: list[torch.Tensor | None] = [torch.randn(s, generator=gen) for s in shapes]
    ipt, unc = ([torch.rand(s, generator=gen) for s in shapes] for _ in range(2))
    ref_ipt, ref_unc = [t.clone() for t in ipt], [t.clone() for t in unc]
    cpu_pass = kernels.CpuImportancePass(ipt, unc, dims, [0, 0, 0], torch.zeros(6))
    assert cpu_pass.ready
    grads[1] = None  # E without a gradient: its EMAs stay as they are
    assert cpu_pass.update_(params, grads, 0.85, 0.6)
    kept = [0, 2]
    reference.importance_update_(
        [params[i] for i in kept],
        [grads[i] for i in kept],
        [ref_ipt[i] for i in kept],
        [ref_unc[i] for i in kept],
        0.85,
        0.6,
    )
    for got, want in zip(ipt + unc, ref_ipt + ref_unc, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    # Parameters or gradients the Rust pass may not read: refused, nothing written.
    before = [t.clone() for t in ipt + unc]
    for bad in (params[0].double(), params[0].T, torch.randn(5, 4)):
        assert not cpu_pass.update_([bad, *params[1:]], [grads[0], None, grads[2]], 0.85, 0.6)
        assert not cpu_pass.update_(params, [bad, None, grads[2]], 0.85, 0.6)
    assert not cpu_pass.update_(params[:2], grads[:2], 0.85, 0.6)
    for got, want in zip(ipt + unc, before, strict=True):
        assert torch.equal(got, want)
    # An EMA given new storage after the checks: the pass turns the step down.
    unc[2].resize_(40, 40)
    assert not cpu_pass.update_(params, grads, 0.85, 0.6)
    # EMAs and scores it may not write: not ready.
    for emas, scores in (
        ([t.double() for t in ipt], torch.zeros(6)),
        ([ipt[0].T.contiguous().T, *ipt[1:]], torch.zeros(6)),
        ([torch.rand(6, 5), *ipt[1:]], torch.zeros(6)),
        (ipt, torch.zeros(6, dtype=torch.float64)),
    ):
        assert not kernels.CpuImportancePass(emas, unc, dims, [0, 0, 0], scores).ready


def test_cpu_update_of_other_dtypes_and_subclasses_takes_the_reference() -> None:
    params, grads, ipt, unc, dims, offsets, total = _setup(torch.float64, "cpu")
    scores = torch.empty(total, dtype=torch.float32)
    assert not kernels.fuses_importance(scores, *params)
    want_ipt, want_unc, want_scores = _oracle(
        params, grads, ipt, unc, dims, offsets, total, 0.8, 0.7
    )
    kernels.importance_update_(
        params, grads, ipt, unc, 0.8, 0.7, rank_dims=dims, score_offsets=offsets, scores=scores
    )
    for a, b, wa, wu in zip(ipt, unc, want_ipt, want_unc, strict=True):
        np.testing.assert_allclose(a.numpy(), wa, rtol=1e-12)
        np.testing.assert_allclose(b.numpy(), wu, rtol=1e-12)
    np.testing.assert_allclose(scores.numpy(), want_scores, rtol=1e-6)
    # A tensor subclass's data_ptr is not its values: never handed to the Rust loop.
    assert kernels.fuses_importance(torch.empty(3), torch.nn.Parameter(torch.ones(3)))

    class Wrapped(torch.Tensor):
        pass

    assert not kernels.fuses_importance(torch.empty(3), torch.ones(3).as_subclass(Wrapped))


def test_cpu_loop_rejects_overlapping_or_bad_buffers() -> None:
    from lorax_core import _core

    p, g, a, u = (torch.rand(4, 3) for _ in range(4))
    scores = torch.zeros(4)
    good = (p.data_ptr(), g.data_ptr(), a.data_ptr(), u.data_ptr(), 4, 3, 0, 0)
    _core._importance_update_f32([good], scores.data_ptr(), 4, 0.85, 0.85)
    before = (a.clone(), u.clone(), scores.clone())
    bad = {
        "overlaps": [(p.data_ptr(), g.data_ptr(), a.data_ptr(), a.data_ptr(), 4, 3, 0, 0)],
        "null": [(p.data_ptr(), g.data_ptr(), 0, u.data_ptr(), 4, 3, 0, 0)],
        "aligned": [(p.data_ptr() + 1, g.data_ptr(), a.data_ptr(), u.data_ptr(), 4, 3, 0, 0)],
        "rank_dim": [(*good[:6], 2, 0)],
        "run past": [(*good[:7], 1)],
        "(0, 1)": [good],
    }
    for match, tensors in bad.items():
        beta = 1.0 if match == "(0, 1)" else 0.85
        with pytest.raises(ValueError, match=re.escape(match)):
            _core._importance_update_f32(tensors, scores.data_ptr(), 4, beta, 0.85)
    with pytest.raises(ValueError, match="overlaps"):  # the scores inside a written EMA
        _core._importance_update_f32([good], a.data_ptr(), 4, 0.85, 0.85)
    for t, b in zip((a, u, scores), before, strict=True):
        torch.testing.assert_close(t, b, rtol=0, atol=0)


def _moved(tensor: torch.Tensor, perm: list[int], dim: int, n_keep: int) -> torch.Tensor:
    """The definition of a slot move: ``index_select`` along ``dim``, zeros from ``n_keep``."""
    out = tensor.index_select(dim, torch.tensor(perm, dtype=torch.long)).clone()
    out.narrow(
        dim,
        min(max(n_keep, 0), out.shape[dim]),
        out.shape[dim] - min(max(n_keep, 0), out.shape[dim]),
    ).zero_()
    return out


@given(
    shapes=st.lists(
        st.tuples(st.integers(1, 9), st.integers(1, 9), st.sampled_from([0, 1, -1])),
        min_size=1,
        max_size=6,
    ),
    seed=st.integers(0, 2**31 - 1),
)
def test_cpu_slot_moves_equal_index_select_and_zero_fill(shapes, seed) -> None:  # type: ignore[no-untyped-def]
    # dim -1 stands for a 1-D tensor (lora_E) with its rank axis 0.
    rng = np.random.default_rng(seed)
    moves, want = [], []
    for rows, cols, dim in shapes:
        t = torch.from_numpy(
            rng.standard_normal((rows, cols) if dim >= 0 else rows).astype(np.float32)
        )
        axis = max(dim, 0)
        size = t.shape[axis]
        perm = (rng.permutation(size) if rng.random() < 0.7 else np.arange(size)).tolist()
        n_keep = int(rng.integers(-1, size + 2))
        want.append(_moved(t, perm, axis, n_keep))
        moves.append((t, perm, axis, n_keep))
    assert kernels.move_slots_(moves)
    for (t, *_), w in zip(moves, want, strict=True):
        assert torch.equal(t, w)


def test_cpu_slot_moves_of_other_tensors_are_left_to_torch() -> None:
    class Wrapped(torch.Tensor):
        pass

    others = [
        torch.rand(4, 3, dtype=torch.float64),
        torch.rand(3, 4).T,  # not contiguous
        torch.rand(2, 4, 3),
        torch.rand(4, 3).as_subclass(Wrapped),
    ]
    for t in others:
        before = t.clone()
        assert not kernels.move_slots_(
            [(torch.rand(4, 3), [1, 0, 2, 3], 0, 2), (t, [1, 0, 2, 3], 0, 2)]
        )
        assert torch.equal(t, before)
    assert not kernels.move_slots_([])


def test_cpu_slot_moves_reject_bad_moves_writing_nothing() -> None:
    from lorax_core import _core

    a, b = torch.rand(4, 3), torch.rand(5, 4)
    before = (a.clone(), b.clone())
    bad = {
        "not a permutation": [(a, [0, 0, 1, 2], 0, 4)],
        "negative entry": [(a, [0, -1, 1, 2], 0, 4)],
        "perm must have": [(a, [0, 1, 2], 0, 4)],
        "overlaps": [(a, [1, 0, 2, 3], 0, 4), (a.view(-1)[3:9].view(2, 3), [1, 0], 0, 2)],
    }
    for match, moves in bad.items():
        with pytest.raises(ValueError, match=match):
            kernels.move_slots_([(b, [3, 2, 1, 0], 1, 2), *moves])
    with pytest.raises(ValueError, match="rank_dim"):
        _core._move_slots_f32([(a.data_ptr(), 4, 3, 2, [0, 1, 2, 3], 4)])
    with pytest.raises(ValueError, match="null"):
        _core._move_slots_f32([(0, 4, 3, 0, [0, 1, 2, 3], 4)])
    for t, w in zip((a, b), before, strict=True):
        assert torch.equal(t, w)


def _svd_modules_with_grads(device: str) -> dict:  # type: ignore[type-arg]
    """Five small SVD adapters on ``device`` with random gradients on every parameter."""
    from lorax_core.adapters import SVDLinear

    torch.manual_seed(0)
    mods = {
        str(i): SVDLinear(torch.nn.Linear(64 + i, 48 - i), r=4, r_max=6).to(device)
        for i in range(5)
    }
    for m in mods.values():
        for p in m.parameters():
            p.grad = torch.randn_like(p)
    return mods


def test_cpu_allocator_scores_are_filled_in_the_update_pass() -> None:
    from lorax_core.allocators import ImportanceScores

    mods = _svd_modules_with_grads("cpu")
    fused = ImportanceScores(mods, 0.85, 0.85)
    fused.update()
    assert fused._fresh
    mods["0"].lora_B.grad = None  # an incomplete set takes the per-module path
    plain = ImportanceScores(mods, 0.85, 0.85)
    plain.update()
    assert not plain._fresh
    for name, got, want in zip(mods, fused.rank_scores(), plain.rank_scores(), strict=True):
        if name != "0":
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-12)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["random", "zeros", "huge", "tiny"])
@pytest.mark.parametrize("strided", [False, True])
def test_importance_kernel_matches_the_reference(dtype, kind, strided) -> None:  # type: ignore[no-untyped-def]
    assert kernels.load(), kernels.status()
    got = _setup(dtype, "cuda", kind, seed=5, strided=strided)
    want = _setup(dtype, "cuda", kind, seed=5, strided=strided)
    params, grads, ipt, unc, dims, offsets, total = got
    scores = torch.full((total,), float("nan"), device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        used = kernels.importance_update_(
            params, grads, ipt, unc, 0.85, 0.9, rank_dims=dims, score_offsets=offsets, scores=scores
        )
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert used
    # Oracle: the update in float64 from the same inputs, rounded to the storage dtype.
    wp, wg, wi, wu = ([t.double() for t in ts] for ts in want[:4])
    reference.importance_update_(wp, wg, wi, wu, 0.85, 0.9)
    tol = TOLERANCE[dtype]
    for a, b, ra, rb in zip(ipt, unc, wi, wu, strict=True):
        torch.testing.assert_close(a.double(), ra.to(dtype).double(), **tol)
        torch.testing.assert_close(b.double(), rb.to(dtype).double(), **tol)
    want_scores = torch.empty(total, dtype=torch.float32, device="cuda")
    reference.rank_scores_(ipt, unc, dims, offsets, want_scores)
    torch.testing.assert_close(
        scores, want_scores, rtol=1e-4, atol=1e-30
    )  # float32 atomics over up to 4 099 terms


@pytest.mark.cuda
@needs_cuda
def test_importance_kernel_over_a_real_allocator_matches_the_torch_path(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from lorax_core.allocators import ImportanceScores

    mods = _svd_modules_with_grads("cuda")
    fused = ImportanceScores(mods, 0.85, 0.85)
    fused.update()
    assert fused._fresh
    monkeypatch.setenv(kernels.DISABLE_ENV, "1")
    plain = ImportanceScores(mods, 0.85, 0.85)
    plain.update()
    assert not plain._fresh
    for got, want in zip(fused.rank_scores(), plain.rank_scores(), strict=True):
        torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-12)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("r", [1, 8, 17, 64, 100])
@pytest.mark.parametrize(("out", "inp"), [(1, 1), (65, 33), (300, 517)])
def test_dora_kernel_matches_the_dense_norm(dtype, r, out, inp) -> None:  # type: ignore[no-untyped-def]
    assert kernels.load(), kernels.status()
    r = min(r, out, inp) if out > 1 else r
    gen = torch.Generator().manual_seed(r + out)
    W = torch.randn(out, inp, generator=gen).to("cuda", dtype)
    A = (torch.randn(r, inp, generator=gen) / inp**0.5).cuda()
    B = torch.randn(out, r, generator=gen).cuda()
    got = torch.ops.lorax_core.dora_row_norm(W, A, B, 0.5)
    dense = torch.linalg.vector_norm(W.double() + 0.5 * (B.double() @ A.double()), dim=1)
    torch.testing.assert_close(got.double(), dense, rtol=1e-4, atol=1e-6)
    assert got.dtype == torch.float32


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("kind", ["zeros", "huge", "tiny", "strided", "half_factors"])
def test_dora_kernel_adversarial_inputs(kind) -> None:  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(7)
    W = torch.randn(130, 70, generator=gen)
    A = torch.randn(8, 70, generator=gen) * 0.1
    B = torch.randn(130, 8, generator=gen)
    if kind == "zeros":
        W.zero_()
        B.zero_()
    elif kind == "huge":
        W, B = W * 1e15, B * 1e15
    elif kind == "tiny":
        W, A, B = W * 1e-15, A * 1e-5, B * 1e-10
    W, A, B = W.cuda(), A.cuda(), B.cuda()
    if kind == "strided":
        W = W.t().contiguous().t()
        A = A.t().contiguous().t()
    if kind == "half_factors":
        A, B = A.half(), B.half()
    got = kernels.dora_row_norm(W, A, B, 2.0)
    dense = torch.linalg.vector_norm(W.double() + 2.0 * (B.double() @ A.double()), dim=1)
    torch.testing.assert_close(got.double(), dense.to(got.dtype).double(), rtol=2e-3, atol=1e-30)


@pytest.mark.cuda
@needs_cuda
def test_dora_kernel_memory_is_order_out_times_r() -> None:
    W = torch.randn(4096, 11008, device="cuda", dtype=torch.bfloat16)
    A = torch.randn(8, 11008, device="cuda") * 0.01
    B = torch.randn(4096, 8, device="cuda")
    kernels.dora_row_norm(W, A, B, 2.0)  # build and warm up
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    kernels.dora_row_norm(W, A, B, 2.0)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - start
    assert extra < 64 * 4096 * 8 * 4, extra  # a few out × r float32 buffers, never out × in
