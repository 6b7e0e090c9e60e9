"""Initialisers of low-rank adapters from the frozen weight: ``nlora``, ``nystrom``, ``pissa``.

All work on a weight ``W`` of shape (out, in) — the ``nn.Linear`` convention — and a rank
``r`` with ``1 <= r <= min(out, in)``:

- :func:`nlora` — the NLoRA paper's released initialisation: ``B = W[:, :r]``,
  ``N = W[:r, :r]``, ``A = W[:r, :]``. ``W`` is left unchanged, so the model's output
  **changes** at init by ``scaling · B N A x`` (as in the paper's code).
- :func:`nystrom` — randomized generalized Nyström sketch computed in Rust
  (``lorax_core._core.nystrom``): ``B N A ≈ W_r``, the best rank-``r`` approximation, at three
  passes over ``W`` with the default single power step.
- :func:`pissa` — the PiSSA baseline: top-``r`` SVD ``U S Vᵀ`` (full or randomized), returned
  balanced as ``B = U √S``, ``A = √S Vᵀ``.

:func:`initialize` applies one of them to an adapter layer in place (the hook
``lorax_core.adapters.inject`` calls), :func:`initialize_model` to every adapter layer of a
model with a progress bar. For ``nystrom`` and ``pissa`` the principal part moves into the
adapter and the base weight keeps the **residual**, ``W ← W − scaling · B N A``, so the model's
output is unchanged at init (to float rounding). The residual is subtracted in place with one
GEMM, so no temporary of ``W``'s size is allocated; peak extra memory is ``O((out + in)·r)``
per layer, plus one float32 copy for half-precision or CUDA weights (the sketch runs on the
CPU in float32/float64; CUDA weights are copied to the host and the factors copied back).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from lorax_core import _core
from lorax_core._validation import Instance, Integer, Options, check, validate_params
from lorax_core.adapters.layer import INIT_BUFFERS, AdapterLinear

__all__ = [
    "INIT_METHODS",
    "RESIDUAL_INITS",
    "initialize",
    "initialize_model",
    "nlora",
    "nystrom",
    "pissa",
]

INIT_METHODS: tuple[str, ...] = ("nlora", "nystrom", "pissa")
"""Names accepted by :func:`initialize` (``AdapterConfig(init=...)``)."""
RESIDUAL_INITS: tuple[str, ...] = ("nystrom", "pissa")
"""The inits that move the principal part out of W (``init_lora_*`` buffers, residual W)."""
# Keyword options each initialiser takes (AdapterConfig.init_options).
_INIT_OPTIONS: dict[str, tuple[str, ...]] = {
    "nlora": (),
    "nystrom": ("oversample", "power_iters"),
    "pissa": ("svd", "niter"),
}

_SEED_LIMIT = 2**64
_SEED = Integer(0, _SEED_LIMIT - 1)
# Bound on oversampling and on power / subspace iterations (far beyond any useful value; a
# larger one would run for ever).
_MAX_STEPS = 1000


def _as_weight(function: str, W: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Checks ``W`` is a 2-D floating matrix and returns it as a tensor (no copy)."""
    if isinstance(W, np.ndarray):
        if W.dtype not in (np.float32, np.float64):
            raise TypeError(
                f"{function}: W must have dtype float32 or float64, got dtype {W.dtype}"
            )
        W = torch.from_numpy(W)
    check(function, "W", W, Instance(torch.Tensor, "a torch.Tensor or numpy.ndarray"))
    if not W.is_floating_point():
        raise TypeError(f"{function}: W must be a floating-point matrix, got dtype {W.dtype}")
    if W.ndim != 2 or W.shape[0] == 0 or W.shape[1] == 0:
        raise ValueError(
            f"{function}: W must be a non-empty 2-D matrix (out, in), got shape {tuple(W.shape)}"
        )
    return W


def _check_rank(function: str, r: object, W: torch.Tensor) -> int:
    limit = min(W.shape)
    rank = int(check(function, "r", r, Integer(low=1)))
    if rank > limit:
        raise ValueError(
            f"{function}: r must be an int in [1, min(out, in)] = [1, {limit}] for W of shape "
            f"{tuple(W.shape)}, got {rank}"
        )
    return rank


def _check_finite(function: str, W: torch.Tensor) -> None:
    if not bool(torch.isfinite(W).all()):
        raise ValueError(f"{function}: W must be finite, got NaN or infinite values")


def nlora(W: torch.Tensor | np.ndarray, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The NLoRA paper's slice initialisation.

    Args:
        W: weight (out, in), any floating dtype and device.
        r: rank, ``1 <= r <= min(out, in)``.

    Returns:
        ``(B, N, A)`` = copies of ``W[:, :r]`` (out, r), ``W[:r, :r]`` (r, r) and
        ``W[:r, :]`` (r, in), in ``W``'s dtype and device.
    """
    W = _as_weight("nlora", W)
    r = _check_rank("nlora", r, W)
    _check_finite("nlora", W)
    return W[:, :r].clone(), W[:r, :r].clone(), W[:r, :].clone()


@validate_params(oversample=Integer(0, _MAX_STEPS), power_iters=Integer(0, _MAX_STEPS), seed=_SEED)
def nystrom(
    W: torch.Tensor | np.ndarray,
    r: int,
    *,
    oversample: int = 10,
    power_iters: int = 1,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Randomized generalized Nyström factors ``B N A ≈ W_r`` (computed in Rust).

    ``k = r + oversample`` seeded Gaussian test vectors on the right; ``power_iters`` power
    steps (two passes over ``W`` with ``k`` columns each) refine them and provide the left
    sketch, and one last pass with ``r`` columns gives ``B``; the core is factored in float64
    and its rank-``r`` truncated, Tikhonov-regularised pseudo-inverse is ``N`` (diagonal,
    non-negative). See ``lorax_core._core.nystrom``.

    Args:
        W: weight (out, in); float32/float64 are sketched without a copy, other floating
            dtypes via a float32 copy; CUDA tensors are copied to the host and the factors
            copied back.
        r: rank, ``1 <= r <= min(out, in)``.
        oversample: extra test vectors, in [0, 1000].
        power_iters: power steps, in [0, 1000]; 1 reaches about 1.1× the optimal rank-r error on
            slowly decaying spectra, 0 is a two-pass sketch.
        seed: seed of the test matrices (0 <= seed < 2**64); equal seeds give equal factors.

    Returns:
        ``(B, N, A)`` of shapes (out, r), (r, r), (r, in) in ``W``'s dtype and device.

    Raises:
        ValueError: ``W`` holds NaN or infinity (found by the sketch's first pass), or a bad
            rank or option.
    """
    W = _as_weight("nystrom", W)
    r = _check_rank("nystrom", r, W)
    # No separate finiteness pass: the Rust sketch reports NaN or infinity in W from the first
    # product W X at no cost (a torch.isfinite pass took twice as long as the sketch itself).
    host = W.detach()
    if host.device.type != "cpu" or host.dtype not in (torch.float32, torch.float64):
        host = host.to(device="cpu", dtype=torch.float32)
    array = host.numpy()
    if not (array.flags.c_contiguous or array.flags.f_contiguous):
        array = np.ascontiguousarray(array)
    try:
        B, N, A = _core.nystrom(array, r, oversample=oversample, power_iters=power_iters, seed=seed)
    except ValueError as err:
        raise ValueError(f"nystrom: {err}") from None
    return tuple(  # type: ignore[return-value]
        torch.from_numpy(f).to(device=W.device, dtype=W.dtype) for f in (B, N, A)
    )


@validate_params(svd=Options(("full", "randomized")), niter=Integer(0, _MAX_STEPS), seed=_SEED)
def pissa(
    W: torch.Tensor | np.ndarray,
    r: int,
    *,
    svd: Literal["full", "randomized"] = "full",
    niter: int = 4,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PiSSA factors: top-``r`` SVD ``U S Vᵀ`` of ``W`` as ``B = U √S``, ``A = √S Vᵀ``.

    Args:
        W: weight (out, in), any floating dtype and device; the SVD runs in float32
            (float64 for float64 weights) on ``W``'s device.
        r: rank, ``1 <= r <= min(out, in)``.
        svd: ``"full"`` (``torch.linalg.svd``, exact) or ``"randomized"``
            (``torch.svd_lowrank(q=r, niter=niter)``, PEFT's fast PiSSA path).
        niter: subspace iterations of the randomized SVD, in [0, 1000].
        seed: seed of the randomized SVD's test matrix (the global RNG is left untouched).

    Returns:
        ``(B, A)`` of shapes (out, r) and (r, in) in ``W``'s dtype and device, ``B A = W_r``.
    """
    W = _as_weight("pissa", W)
    r = _check_rank("pissa", r, W)
    _check_finite("pissa", W)
    work = W.detach()
    if work.dtype != torch.float64:
        work = work.float()
    if svd == "full":
        U, S, Vh = torch.linalg.svd(work, full_matrices=False)
        U, S, Vh = U[:, :r], S[:r], Vh[:r]
    else:
        devices = [work.device] if work.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed % 2**63)
            U, S, V = torch.svd_lowrank(work, q=r, niter=niter)
        Vh = V.T
    root = S.sqrt()
    B = (U * root).to(W.dtype)
    A = (root[:, None] * Vh).to(W.dtype)
    return B, A


def _factor(layer: nn.Module, name: str) -> torch.Tensor | None:
    value = getattr(layer, name, None)
    return value if isinstance(value, torch.Tensor) else None


@torch.no_grad()
@validate_params(init_name=Options(INIT_METHODS), seed=_SEED)
def initialize(layer: nn.Module, init_name: str, *, seed: int = 0, **init_options: Any) -> None:
    """Initialises an adapter layer's factors from its frozen weight, in place.

    ``layer`` is an ``SLoraLinear`` (``lora_B`` (out, r), ``lora_N`` (r, r), ``lora_A``
    (r, in)) or a ``LoraLinear`` (no ``lora_N``); ``s = layer.scaling`` (α/r).

    - ``"nlora"`` (SLoRA only): factors = slices of ``W`` (:func:`nlora`); ``W`` unchanged,
      so the output changes at init.
    - ``"nystrom"``: :func:`nystrom` factors with ``N`` divided by ``s``, so ``s·B N A ≈ W_r``;
      for plain LoRA, ``N`` (diagonal, non-negative) is split symmetrically,
      ``B ← B √(N/s)``, ``A ← √(N/s) A`` (PiSSA's balanced form).
    - ``"pissa"``: :func:`pissa` factors divided by ``√s`` each (PEFT's convention), ``N = I``
      for SLoRA.

    For ``nystrom`` and ``pissa`` the residual ``W ← W − layer.low_rank_product(A, B[, N])``
    (= ``s·B N A``, the same product merge and reload use) is subtracted, so the output is
    unchanged at init to float rounding; this needs one temporary of ``W``'s size. Copies of
    the initial factors are registered as persistent buffers ``init_lora_A``,
    ``init_lora_B`` (and ``init_lora_N``) so an exporter can express the adapter against the
    original weight.

    Args:
        layer: the adapter layer (``lorax_core.adapters.AdapterLinear`` with ``lora_A``,
            ``lora_B`` and optionally ``lora_N``).
        init_name: one of :data:`INIT_METHODS`.
        seed: seed of the randomized initialisers.
        **init_options: keyword options of :func:`nystrom` (``oversample``,
            ``power_iters``) or :func:`pissa` (``svd``, ``niter``).
    """
    function = "initialize"
    A_param, B_param = _factor(layer, "lora_A"), _factor(layer, "lora_B")
    if not isinstance(layer, AdapterLinear) or A_param is None or B_param is None:
        raise TypeError(
            f"{function}: layer must be an adapter layer with lora_A and lora_B (SLoraLinear or "
            f"LoraLinear), got {type(layer).__name__}"
        )
    if _factor(layer, "init_lora_A") is not None:
        raise ValueError(
            f"{function}: layer must not be residual-initialised already (initialising it "
            "again would subtract a second principal part from its weight), got one with "
            "init_lora_A"
        )
    N_param = _factor(layer, "lora_N")
    unknown = sorted(set(init_options) - set(_INIT_OPTIONS[init_name]))
    if unknown:
        raise TypeError(
            f"{function}: init_options for {init_name!r} must be among "
            f"{list(_INIT_OPTIONS[init_name])}, got {unknown}"
        )
    W = layer.base_layer.weight
    r, s = layer.r, layer.scaling
    N: torch.Tensor | None
    if init_name == "nlora":
        if N_param is None:
            raise ValueError(
                f"{function}: layer must be an SLoRA layer (with lora_N) for init 'nlora', got "
                f"{type(layer).__name__}; use 'nystrom' or 'pissa'"
            )
        B, N, A = nlora(W, r)
    elif init_name == "nystrom":
        B, N, A = nystrom(W, r, seed=seed, **init_options)
        N = N / s
        if N_param is None:
            root = torch.diagonal(N).clamp_min(0).sqrt()
            B, A, N = B * root, root[:, None] * A, None
    else:
        B, A = pissa(W, r, seed=seed, **init_options)
        B, A = B / math.sqrt(s), A / math.sqrt(s)
        N = None if N_param is None else torch.eye(r, dtype=W.dtype, device=W.device)

    B_param.copy_(B)
    A_param.copy_(A)
    if N_param is not None and N is not None:
        N_param.copy_(N)
    if init_name not in RESIDUAL_INITS:
        return
    W.sub_(layer.low_rank_product(A_param, B_param, N_param))
    for name, value in zip(INIT_BUFFERS, (A_param, B_param, N_param), strict=True):
        if value is not None:
            layer.register_buffer(name, value.detach().clone(), persistent=True)


@validate_params(
    model=Instance(nn.Module, "an nn.Module"), init_name=Options(INIT_METHODS), seed=_SEED
)
def initialize_model(
    model: nn.Module,
    init_name: str,
    *,
    seed: int = 0,
    progress: bool = True,
    **init_options: Any,
) -> int:
    """Runs :func:`initialize` on every adapter layer of ``model`` (in module order).

    Layer ``i`` (0-based, in ``model.named_modules()`` order) gets seed ``seed + i``, so the
    result is reproducible and layers get independent test matrices. Layers are processed
    one at a time, so peak extra memory is that of the largest single layer.

    Returns:
        The number of layers initialised.
    """
    layers = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, AdapterLinear) and _factor(module, "lora_A") is not None
    ]
    for i, (_, module) in enumerate(
        tqdm(layers, desc=f"init {init_name}", unit="layer", disable=not progress)
    ):
        initialize(module, init_name, seed=(seed + i) % _SEED_LIMIT, **init_options)
    return len(layers)
