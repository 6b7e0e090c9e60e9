"""nlora / nystrom / pissa initialisers and IntTune, on bare tensors and on real MiniLM.

The Rust Nyström sketch (``lorax_core.adapters.init.nystrom`` / ``_core.nystrom``) is checked
against the SVD optimum on matrices of known spectrum and on a real pretrained weight.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.numpy import load_file
from torch import nn

from lorax_core import _core
from lorax_core.adapters import (
    AdapterConfig,
    LoraLinear,
    SLoraLinear,
    adapted_modules,
    inject,
    trainable_parameters,
)
from lorax_core.adapters.init import initialize, initialize_model, nlora, nystrom, pissa
from lorax_core.synthetic import known_spectrum


def _output(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).last_hidden_state


def _linear(out: int, inp: int, seed: int = 0) -> nn.Linear:
    """A float64 ``nn.Linear`` whose weight has singular values ``i^-1.5`` (decaying, as in
    pretrained weights), so its rank-r truncation is well separated."""
    torch.manual_seed(seed)
    layer = nn.Linear(inp, out).double()
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(known_spectrum(out, inp, 1.5, seed=seed)))
    return layer


def _svd_rank_r(W: torch.Tensor, r: int) -> np.ndarray:
    U, s, Vt = np.linalg.svd(W.detach().double().numpy(), full_matrices=False)
    return (U[:, :r] * s[:r]) @ Vt[:r]


# -- factor functions on bare tensors ---------------------------------------------------------


def test_nlora_is_the_paper_slices() -> None:
    W = torch.randn(7, 5)
    B, N, A = nlora(W, 3)
    assert torch.equal(B, W[:, :3]) and torch.equal(N, W[:3, :3]) and torch.equal(A, W[:3, :])
    B.add_(1.0)  # copies, not views of W
    assert not torch.equal(B, W[:, :3])


def test_pissa_full_equals_numpy_truncated_svd() -> None:
    W = torch.randn(40, 25, dtype=torch.float64)
    B, A = pissa(W, 6)
    np.testing.assert_allclose((B @ A).numpy(), _svd_rank_r(W, 6), atol=1e-10)
    # balanced: both factors carry √S
    torch.testing.assert_close(B.norm(dim=0), A.norm(dim=1))


def test_pissa_randomized_is_seeded_and_leaves_global_rng_alone() -> None:
    W = torch.randn(60, 40)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    B1, A1 = pissa(W, 5, svd="randomized", seed=4)
    assert torch.equal(torch.random.get_rng_state(), before)
    B2, A2 = pissa(W, 5, svd="randomized", seed=4)
    assert torch.equal(B1 @ A1, B2 @ A2)
    err = torch.linalg.norm(W - B1 @ A1) / torch.linalg.norm(W)
    opt = np.linalg.norm(W.numpy() - _svd_rank_r(W, 5)) / np.linalg.norm(W.numpy())
    assert float(err) <= 1.05 * opt


def test_pissa_bad_input() -> None:
    W = torch.randn(6, 4)
    with pytest.raises(ValueError, match="pissa: svd must be one of 'full', 'randomized'"):
        pissa(W, 2, svd="qr")  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"pissa: r must be an int in \[1, min\(out, in\)\] = \[1, 4\] for W"
    ):
        pissa(W, 5)
    W[1, 1] = float("nan")
    with pytest.raises(ValueError, match="pissa: W must be finite"):
        pissa(W, 2)
    with pytest.raises(ValueError, match="nlora: W must be finite"):
        nlora(W, 2)


# -- initialize on single layers --------------------------------------------------------------


@pytest.mark.parametrize("init", ["nystrom", "pissa"])
@pytest.mark.parametrize("cls", [SLoraLinear, LoraLinear])
def test_residual_inits_keep_the_layer_output(init: str, cls: type) -> None:
    base = _linear(30, 20)
    W0 = base.weight.detach().clone()
    x = torch.randn(4, 20, dtype=torch.float64)
    y0 = base(x)
    layer = cls(base, 5, 10.0)
    initialize(layer, init, seed=2)
    torch.testing.assert_close(layer(x), y0, atol=1e-12, rtol=0)
    # the adapter holds the principal part: s·B N A is (near) the rank-5 SVD truncation of W0
    delta = layer.delta_weight().detach().numpy()
    optimum = np.linalg.norm(W0.numpy() - _svd_rank_r(W0, 5))
    assert np.linalg.norm(W0.numpy() - delta) <= 1.1 * optimum
    for name in layer.parameter_names:
        assert torch.equal(layer.get_buffer(f"init_{name}"), getattr(layer, name))
        assert f"init_{name}" in layer.state_dict()


def test_pissa_init_matches_peft(minilm_dir) -> None:  # type: ignore[no-untyped-def]
    """Same residual weight and adapter product as PEFT's ``init_lora_weights="pissa"``."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(24, 16))
    reference = get_peft_model(
        copy.deepcopy(model),
        LoraConfig(r=4, lora_alpha=8, target_modules=["0"], init_lora_weights="pissa"),
    )
    peft_layer = reference.base_model.model[0]
    ours = LoraLinear(copy.deepcopy(model[0]), 4, 8.0)
    initialize(ours, "pissa")
    torch.testing.assert_close(
        ours.base_layer.weight, peft_layer.base_layer.weight, atol=1e-5, rtol=0
    )
    peft_product = peft_layer.lora_B["default"].weight @ peft_layer.lora_A["default"].weight
    torch.testing.assert_close(ours.lora_B @ ours.lora_A, peft_product, atol=1e-5, rtol=0)


def test_nlora_init_copies_slices_and_leaves_w() -> None:
    base = _linear(12, 9)
    W0 = base.weight.detach().clone()
    layer = SLoraLinear(base, 4, 8.0)
    initialize(layer, "nlora")
    assert torch.equal(layer.lora_B, W0[:, :4]) and torch.equal(layer.lora_N, W0[:4, :4])
    assert torch.equal(layer.lora_A, W0[:4, :]) and torch.equal(layer.base_layer.weight, W0)
    assert not hasattr(layer, "init_lora_A")


def test_lora_nystrom_factors_are_balanced() -> None:
    layer = LoraLinear(_linear(40, 32), 6, 12.0)
    initialize(layer, "nystrom", seed=1, oversample=4, power_iters=2)
    torch.testing.assert_close(
        layer.lora_B.norm(dim=0), layer.lora_A.norm(dim=1), rtol=1e-2, atol=0
    )


def test_initialize_is_reproducible_per_seed() -> None:
    def run(seed: int) -> torch.Tensor:
        layer = SLoraLinear(_linear(20, 16), 3, 6.0)
        initialize(layer, "nystrom", seed=seed)
        return layer.lora_B.detach()

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))


def test_initialize_bad_input() -> None:
    with pytest.raises(TypeError, match="initialize: layer must be an adapter layer"):
        initialize(nn.Linear(4, 4), "nystrom")
    layer = LoraLinear(_linear(8, 6), 2, 4.0)
    with pytest.raises(ValueError, match="initialize: init_name must be one of 'nlora'"):
        initialize(layer, "svd")
    with pytest.raises(ValueError, match=r"layer must be an SLoRA layer .* for init 'nlora'"):
        initialize(layer, "nlora")
    with pytest.raises(
        TypeError, match=r"options for 'pissa' must be among .*got \['oversample'\]"
    ):
        initialize(layer, "pissa", oversample=3)
    initialize(layer, "pissa")
    with pytest.raises(ValueError, match="initialize: layer must not be residual-initialised"):
        initialize(layer, "nystrom")
    nan = _linear(8, 6)
    with torch.no_grad():
        nan.weight[2, 3] = float("nan")
    with pytest.raises(ValueError, match="nystrom: W contains NaN or infinite"):
        initialize(SLoraLinear(nan, 2, 4.0), "nystrom")


# -- whole model (real MiniLM) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "init"), [("slora", "nystrom"), ("slora", "pissa"), ("lora", "nystrom")]
)
def test_inject_with_residual_init_keeps_minilm_output(
    pristine: nn.Module, batch: dict[str, torch.Tensor], method: str, init: str
) -> None:
    reference = _output(pristine, batch)
    # pissa's full SVD is covered on single layers above; the randomized one keeps this quick
    options = {"svd": "randomized"} if init == "pissa" else None
    config = AdapterConfig(
        method, r=8, alpha=16.0, init=init, init_options=options, target_modules=["query"]
    )
    model = inject(copy.deepcopy(pristine), config)
    torch.testing.assert_close(_output(model, batch), reference, atol=2e-5, rtol=0)
    assert len(adapted_modules(model)) == 6


def test_inject_nlora_changes_output_by_the_slice_product(
    pristine: nn.Module, batch: dict[str, torch.Tensor]
) -> None:
    config = AdapterConfig("slora", r=4, init="nlora", target_modules=["value"])
    model = inject(copy.deepcopy(pristine), config)
    for name, layer in adapted_modules(model).items():
        W = pristine.get_submodule(name).weight
        assert torch.equal(layer.base_layer.weight, W)
        assert torch.equal(layer.lora_N, W[:4, :4])
    assert not torch.allclose(_output(model, batch), _output(pristine, batch), atol=1e-3)


def test_inttune_trains_only_n(pristine: nn.Module, batch: dict[str, torch.Tensor]) -> None:
    r = 4
    config = AdapterConfig(
        "slora", r=r, init="nystrom", train="intermediate", target_modules=["value"]
    )
    model = inject(copy.deepcopy(pristine), config)
    layers = adapted_modules(model)
    counts = trainable_parameters(model)
    assert counts.trainable == len(layers) * r * r
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == len(layers) * r * r
    before = {n: (m.lora_A.detach().clone(), m.lora_B.detach().clone()) for n, m in layers.items()}
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    model.train()
    model(**batch).last_hidden_state.pow(2).mean().backward()
    for layer in layers.values():
        assert layer.lora_A.grad is None and layer.lora_B.grad is None
        assert layer.lora_N.grad is not None and bool(layer.lora_N.grad.abs().sum() > 0)
    optimizer.step()
    for name, layer in layers.items():
        assert torch.equal(layer.lora_A, before[name][0])
        assert torch.equal(layer.lora_B, before[name][1])
        assert not torch.equal(layer.lora_N, layer.get_buffer("init_lora_N"))


def test_initialize_model_batch(pristine: nn.Module, batch: dict[str, torch.Tensor]) -> None:
    model = inject(copy.deepcopy(pristine), AdapterConfig("slora", r=4, target_modules=["key"]))
    with torch.no_grad():  # default init has B = 0; give it values the init must replace
        for layer in adapted_modules(model).values():
            layer.lora_B.fill_(1.0)
    count = initialize_model(model, "pissa", seed=3, progress=False, svd="randomized")
    assert count == 6
    torch.testing.assert_close(_output(model, batch), _output(pristine, batch), atol=2e-5, rtol=0)
    for layer in adapted_modules(model).values():
        assert torch.equal(layer.lora_N, torch.eye(4))
        assert torch.equal(layer.get_buffer("init_lora_B"), layer.lora_B)


# -- the Nyström sketch against the SVD optimum ---------------------------------------------


def optimal_error(W: np.ndarray, r: int) -> float:
    """Relative Frobenius error of the best rank-r approximation (Eckart–Young)."""
    s = np.linalg.svd(W.astype(np.float64), compute_uv=False)
    return float(np.sqrt((s[r:] ** 2).sum() / (s**2).sum()))


def sketch_error(W: np.ndarray, factors: tuple) -> float:
    B, N, A = (np.asarray(f, dtype=np.float64) for f in factors)
    W64 = W.astype(np.float64)
    return float(np.linalg.norm(W64 - B @ N @ A) / np.linalg.norm(W64))


@given(
    m=st.integers(4, 96),
    n=st.integers(4, 96),
    r_frac=st.floats(0.0, 1.0),
    decay=st.sampled_from([0.5, 1.0, 2.0]),
    seed=st.integers(0, 2**32),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_error_within_factor_of_svd_optimum(
    m: int, n: int, r_frac: float, decay: float, seed: int, dtype: type
) -> None:
    r = 1 + int(r_frac * (min(m, n) - 1))
    W = known_spectrum(m, n, decay, seed=seed % 1000, dtype=dtype)
    factors = _core.nystrom(W, r, seed=seed)
    assert [f.shape for f in factors] == [(m, r), (r, r), (r, n)]
    assert all(f.dtype == dtype for f in factors)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    assert sketch_error(W, factors) <= 1.5 * optimal_error(W, r) + tol


@pytest.mark.parametrize("r", [8, 40])
def test_near_optimal_with_one_power_step_on_slow_decay(r: int) -> None:
    W = known_spectrum(400, 300, 0.5, seed=1, dtype=np.float32)
    ratio = sketch_error(W, _core.nystrom(W, r)) / optimal_error(W, r)
    assert ratio < 1.15
    # without the power step the two-pass sketch is measurably worse (the reason for the default)
    two_pass = sketch_error(W, _core.nystrom(W, r, power_iters=0)) / optimal_error(W, r)
    assert two_pass > ratio


def test_real_pretrained_weight_is_near_optimal_and_stable(minilm_dir: Path) -> None:
    """MiniLM's largest weight (1536×384 FFN): error near the SVD optimum, never above ‖W‖."""
    W = load_file(str(minilm_dir / "model.safetensors"))[
        "encoder.layer.0.intermediate.dense.weight"
    ]
    assert W.shape == (1536, 384)
    for r in (8, 64):
        err = sketch_error(W, _core.nystrom(W, r, seed=3))
        assert err <= 1.25 * optimal_error(W, r)
        assert err < 1.0


def test_exact_on_low_rank_matrices() -> None:
    rng = np.random.default_rng(0)
    W = rng.standard_normal((70, 5)) @ rng.standard_normal((5, 50))
    for q in (0, 1, 2):
        assert sketch_error(W, _core.nystrom(W, 5, power_iters=q)) < 1e-10


def test_deterministic_for_a_seed_and_layout_independent() -> None:
    W = known_spectrum(64, 48, 1.0, seed=2, dtype=np.float32)
    first = _core.nystrom(W, 6, seed=11)
    again = _core.nystrom(W, 6, seed=11)
    other = _core.nystrom(W, 6, seed=12)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first.B, other.B)
    fortran = _core.nystrom(np.asfortranarray(W), 6, seed=11)
    B, N, A = (f.astype(np.float64) for f in first)
    Bf, Nf, Af = (f.astype(np.float64) for f in fortran)
    np.testing.assert_allclose(B @ N @ A, Bf @ Nf @ Af, atol=1e-5)


def test_torch_wrapper_keeps_dtype_and_accepts_transposed_views() -> None:
    W = torch.from_numpy(known_spectrum(50, 30, 1.0, seed=4))
    B, N, A = nystrom(W, 5, seed=1)
    assert (B.shape, N.shape, A.shape) == ((50, 5), (5, 5), (5, 30))
    assert B.dtype == N.dtype == A.dtype == torch.float64
    # N is the regularised inverse of the truncated core: diagonal, non-negative
    torch.testing.assert_close(N, torch.diag(torch.diagonal(N)))
    assert bool((torch.diagonal(N) >= 0).all())
    Bt, Nt, At = nystrom(W.T, 5, seed=1)  # Fortran-ordered view, no copy
    Bc, Nc, Ac = nystrom(W.T.contiguous(), 5, seed=1)  # the same matrix in C order
    torch.testing.assert_close(Bt @ Nt @ At, Bc @ Nc @ Ac, atol=1e-10, rtol=0)
    half = nystrom(W.to(torch.bfloat16), 5)  # sketched from a float32 copy
    assert all(f.dtype == torch.bfloat16 for f in half)


def test_zero_matrix_gives_finite_zero_factors() -> None:
    B, N, A = _core.nystrom(np.zeros((10, 7), np.float32), 3)
    assert not B.any() and not N.any() and not A.any()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"r": 0}, ValueError, "nystrom: r must be an int >= 1, got 0"),
        ({"r": 9}, ValueError, r"nystrom: r must be an int in \[1, min\(out, in\)\] = \[1, 8\]"),
        ({"r": 2.0}, TypeError, "nystrom: r must be an int"),
        (
            {"r": 2, "oversample": -1},
            ValueError,
            r"nystrom: oversample must be an int in \[0, 1000\]",
        ),
        (
            {"r": 2, "power_iters": 10**30},
            ValueError,
            r"nystrom: power_iters must be an int in \[0, ",
        ),
        ({"r": 2, "power_iters": True}, TypeError, "nystrom: power_iters must be an int"),
        ({"r": 2, "seed": -3}, ValueError, r"nystrom: seed must be an int in \[0, "),
    ],
)
def test_bad_arguments_raise_naming_them(kwargs: dict, error: type, match: str) -> None:
    W = torch.randn(12, 8)
    with pytest.raises(error, match=match):
        nystrom(W, **kwargs)


def test_bad_matrices_raise_clear_errors() -> None:
    W = np.random.default_rng(0).standard_normal((9, 6)).astype(np.float32)
    bad = W.copy()
    bad[4, 2] = np.nan
    with pytest.raises(ValueError, match="nystrom: W contains NaN or infinite"):
        nystrom(bad, 2)
    bad[4, 2] = np.inf
    with pytest.raises(ValueError, match="W contains NaN or infinite"):
        _core.nystrom(bad, 2, power_iters=0)
    with pytest.raises(TypeError, match="nystrom: W must have dtype float32 or float64"):
        nystrom(W.astype(np.int32), 2)
    with pytest.raises(ValueError, match="nystrom: W must be a non-empty 2-D matrix"):
        nystrom(torch.randn(5), 1)
    with pytest.raises(TypeError, match=r"nystrom: W must be a torch\.Tensor or numpy\.ndarray"):
        nystrom([[1.0, 2.0]], 1)  # type: ignore[arg-type]
    # the extension validates on its own (it is public too)
    with pytest.raises(TypeError, match="w must have dtype float32 or float64"):
        _core.nystrom(W.astype(np.float16), 2)
    with pytest.raises(TypeError, match="w must be C- or Fortran-contiguous"):
        _core.nystrom(W[::2, ::2], 2)
    with pytest.raises(ValueError, match="rank must be in"):
        _core.nystrom(W, 7)
    with pytest.raises(ValueError, match="rcond must be finite"):
        _core.nystrom(W, 2, rcond=float("nan"))
