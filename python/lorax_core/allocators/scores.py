"""Device-side importance scores of SVD-form adapters (docs/allocators.md).

Per element of every adapter parameter ``p`` (``lora_A`` (capacity, in), ``lora_E`` (capacity,),
``lora_B`` (out, capacity)), once per optimizer step:

    I = |p ⊙ ∇p|;  Ī ← β1 Ī + (1 − β1) I;  Ū ← β2 Ū + (1 − β2) |I − Ī|;  s = Ī ⊙ Ū

and per rank ``i``: ``S_i = s(E_i) + mean_j s(A_ij) + mean_j s(B_ji)``.

:func:`update_importance_` runs on the parameters' device and never synchronises with the host: on
CUDA it is one fused kernel launch that also computes the per-rank scores of every module
(:mod:`lorax_core.kernels`); for float32 CPU tensors it is one call into the Rust core that does
the same; otherwise (and on CUDA with ``LORAX_DISABLE_CUDA_KERNELS=1``) it is the
``torch._foreach_*`` reference over all tensors at once. Only
:meth:`ImportanceScores.rank_scores_host`, called on allocation steps, copies the small per-rank
vectors to the host.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence

import torch

from lorax_core import kernels
from lorax_core._validation import Real, check
from lorax_core.adapters import SVDLinear
from lorax_core.kernels import importance_update_ as update_importance_

__all__ = [
    "ImportanceScores",
    "SlotMove",
    "one_cpu_thread",
    "permute_rank_axes_",
    "rank_scores",
    "update_importance_",
]

# (parameter name, dimension of its rank axis)
RANK_AXES: tuple[tuple[str, int], ...] = (("lora_A", 0), ("lora_E", 0), ("lora_B", 1))

# One tensor's move of rank slots: ``(tensor, perm, dim, n_keep)``: along ``dim`` new slot ``j``
# takes old slot ``perm[j]``; slots ``≥ n_keep`` become zero.
SlotMove = tuple[torch.Tensor, Sequence[int], int, int]

# Most elements stacked into one batched move (bounds its temporary copies: 64 MiB of float32).
_BATCH_ELEMENTS = 1 << 24


def rank_scores(
    ipt: Sequence[torch.Tensor], unc: Sequence[torch.Tensor], rank: int
) -> torch.Tensor:
    """Per-rank score ``S`` (rank,) of one module from its (A, E, B) EMAs, slots ``[0, rank)``."""
    (ia, ie, ib), (ua, ue, ub) = ipt, unc
    s_a = (ia[:rank] * ua[:rank]).mean(dim=1)
    s_e = ie[:rank] * ue[:rank]
    s_b = (ib[:, :rank] * ub[:, :rank]).mean(dim=0)
    return s_e + s_a + s_b


class ImportanceScores:
    """EMA sensitivity ``Ī`` and uncertainty ``Ū`` of every element of every SVD adapter.

    Each tensor has its parameter's shape, dtype and device. Module order is the order of
    ``modules``.
    """

    def __init__(self, modules: Mapping[str, SVDLinear], beta1: float, beta2: float) -> None:
        unit = Real(low=0.0, high=1.0, closed="neither")
        self.modules = dict(modules)
        self.beta1 = check("ImportanceScores", "beta1", beta1, unit)
        self.beta2 = check("ImportanceScores", "beta2", beta2, unit)
        self.ipt: dict[str, list[torch.Tensor]] = {}
        self.unc: dict[str, list[torch.Tensor]] = {}
        for name, module in self.modules.items():
            params = [getattr(module, p) for p, _ in RANK_AXES]
            self.ipt[name] = [
                torch.zeros_like(p, memory_format=torch.contiguous_format) for p in params
            ]
            self.unc[name] = [
                torch.zeros_like(p, memory_format=torch.contiguous_format) for p in params
            ]
        # Per-rank scores over every capacity slot, filled by the fused update (float32, flat:
        # module i owns [offsets[i], offsets[i] + capacity)); valid while ``_fresh``.
        self._offsets: dict[str, int] = {}
        total = 0
        for name, module in self.modules.items():
            self._offsets[name] = total
            total += module.capacity
        # Every scored tensor: (module, parameter name, its Ī, its Ū, rank axis, score offset).
        self._slots = [
            (module, p_name, self.ipt[name][i], self.unc[name][i], dim, self._offsets[name])
            for name, module in self.modules.items()
            for i, (p_name, dim) in enumerate(RANK_AXES)
        ]
        device = next(iter(self.modules.values())).lora_A.device if self.modules else None
        self._scores = torch.zeros(total, dtype=torch.float32, device=device)
        # On the CPU in float32: the Rust pass with the EMAs and scores checked once.
        self._cpu_pass = kernels.CpuImportancePass(
            [a for _, _, a, _, _, _ in self._slots],
            [b for _, _, _, b, _, _ in self._slots],
            [dim for *_, dim, _ in self._slots],
            [off for *_, off in self._slots],
            self._scores,
        )
        self._fresh = False

    def update(self) -> None:
        """One EMA step from the current parameters and gradients (no host synchronisation).

        Parameters without a gradient are skipped. The fused kernel fills the per-rank scores
        in the same pass (used by :meth:`rank_scores` until the next change of the EMAs).
        """
        every = [getattr(module, p_name) for module, p_name, *_ in self._slots]
        every_grad = [p.grad for p in every]
        complete = all(g is not None for g in every_grad)
        if self._cpu_pass.update_(every, every_grad, self.beta1, self.beta2):
            self._fresh = complete  # a skipped tensor leaves its module's scores incomplete
            return
        params, grads, ipt, unc, dims, offsets = [], [], [], [], [], []
        for p, g, (_, _, a, b, dim, offset) in zip(every, every_grad, self._slots, strict=True):
            if g is None:
                continue
            params.append(p)
            grads.append(g)
            ipt.append(a)
            unc.append(b)
            dims.append(dim)
            offsets.append(offset)
        fused = complete and kernels.fuses_importance(self._scores, *params)
        kernels.importance_update_(
            params,
            grads,
            ipt,
            unc,
            self.beta1,
            self.beta2,
            rank_dims=dims if fused else None,
            score_offsets=offsets if fused else None,
            scores=self._scores if fused else None,
        )
        self._fresh = fused

    def rank_scores(self) -> list[torch.Tensor]:
        """Per-rank scores of every module over its active slots, on the device."""
        if self._fresh:  # one copy, so later updates leave the returned scores alone
            scores = self._scores.clone()
            return [
                scores[self._offsets[name] : self._offsets[name] + module.active_rank]
                for name, module in self.modules.items()
            ]
        return [
            rank_scores(self.ipt[name], self.unc[name], module.active_rank)
            for name, module in self.modules.items()
        ]

    def rank_scores_host(self) -> list[list[float]]:
        """Per-rank scores as float64 host lists: the one device → host copy per allocation step."""
        scores = self.rank_scores()
        if not scores:
            return []
        flat = torch.cat([s.to(torch.float64) for s in scores]).cpu().tolist()
        out, start = [], 0
        for s in scores:
            out.append(flat[start : start + s.numel()])
            start += s.numel()
        return out

    @torch.no_grad()
    def permute_(self, name: str, perm: torch.Tensor | Sequence[int], n_keep: int) -> None:
        """Move one module's slots like its parameters (new slot j ← old ``perm[j]``) and reset
        the history of slots ``≥ n_keep`` (pruned, new and free ranks) to zero."""
        self.permute_all_({name: (perm, n_keep)})

    @torch.no_grad()
    def permute_all_(
        self, decisions: Mapping[str, tuple[torch.Tensor | Sequence[int], int]]
    ) -> None:
        """:meth:`permute_` for several modules at once, ``{name: (perm, n_keep)}``: one batched
        move (:func:`permute_rank_axes_`) instead of one per tensor; the same values."""
        self._fresh = False
        moves: list[SlotMove] = []
        for name, (perm, n_keep) in decisions.items():
            order = perm.tolist() if isinstance(perm, torch.Tensor) else perm
            for store in (self.ipt[name], self.unc[name]):
                for tensor, (_, dim) in zip(store, RANK_AXES, strict=True):
                    moves.append((tensor, order, dim, n_keep))
        permute_rank_axes_(moves)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat ``{"<module>.<param>.ipt"|".unc": tensor}`` (copies)."""
        out: dict[str, torch.Tensor] = {}
        for name in self.modules:
            for i, (p_name, _) in enumerate(RANK_AXES):
                out[f"{name}.{p_name}.ipt"] = self.ipt[name][i].clone()
                out[f"{name}.{p_name}.unc"] = self.unc[name][i].clone()
        return out

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Inverse of :meth:`state_dict`; every key must be present with the right shape."""
        self._fresh = False
        for name in self.modules:
            for i, (p_name, _) in enumerate(RANK_AXES):
                for kind, store in (("ipt", self.ipt), ("unc", self.unc)):
                    key = f"{name}.{p_name}.{kind}"
                    if key not in state:
                        raise ValueError(f"state: missing score tensor {key!r}")
                    value = state[key]
                    if tuple(value.shape) != tuple(store[name][i].shape):
                        raise ValueError(
                            f"state: {key!r} has shape {tuple(value.shape)}, expected "
                            f"{tuple(store[name][i].shape)}"
                        )
                    store[name][i].copy_(value)


@torch.no_grad()
def permute_rank_axis_(tensor: torch.Tensor, perm: torch.Tensor, dim: int, n_keep: int) -> None:
    """In place: ``tensor`` along ``dim`` becomes ``tensor.index_select(dim, perm)``; entries at
    positions ``≥ n_keep`` along ``dim`` are set to zero. ``perm`` is an int64 permutation."""
    permute_rank_axes_([(tensor, perm.tolist(), dim, n_keep)])


@contextlib.contextmanager
def one_cpu_thread() -> Iterator[None]:
    """Within the block torch runs CPU operations on one thread (the setting is restored after).

    For the many tiny operations of an allocation step: threads gain nothing on them, and on a
    loaded machine a threaded call (a small LAPACK QR, a stacked gather) waits milliseconds for
    a descheduled worker. The setting is process-wide; no effect on GPU kernels.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def permute_rank_axes_(moves: Sequence[SlotMove]) -> None:
    """In place, for every ``(tensor, perm, dim, n_keep)``: ``tensor`` along ``dim`` becomes
    ``tensor.index_select(dim, perm)`` with the slots ``≥ n_keep`` set to zero.

    Plain float32 CPU tensors (every tensor of a CPU float32 run) are moved by one call into
    the Rust core (:func:`lorax_core.kernels.move_slots_`). Otherwise, batched: tensors of one
    shape, dtype, device and ``dim`` are stacked (at most
    ``_BATCH_ELEMENTS`` elements at a time) and moved by one ``gather``, one ``masked_fill_``
    and one ``_foreach_copy_``, so the cost does not grow with the number of tensors in Python
    operations. A tensor whose ``perm`` is the identity (most of them on most allocation steps)
    is not moved: only its slots ``≥ n_keep`` are zeroed, all such tensors in one
    ``_foreach_zero_``. Copies only: the values are exactly those of the per-tensor
    ``index_select``. A tensor must appear at most once; ``perm`` has ``tensor.shape[dim]``
    entries.
    """
    for tensor, perm, dim, _ in moves:
        size = tensor.shape[dim]
        if len(perm) != size:
            raise ValueError(f"permute_rank_axes_: perm must have {size} entries, got {len(perm)}")
    if kernels.move_slots_(moves):  # float32 CPU tensors: one pass in the Rust core
        return
    groups: dict[tuple[tuple[int, ...], torch.dtype, torch.device, int], list[SlotMove]] = {}
    tails: list[torch.Tensor] = []  # the slots ≥ n_keep of the tensors that stay in place
    for move in moves:
        tensor, perm, dim, n_keep = move
        size = tensor.shape[dim]
        if list(perm) == list(range(size)):
            start = max(n_keep, 0)
            if start < size:
                tails.append(tensor.narrow(dim, start, size - start))
            continue
        key = (tuple(tensor.shape), tensor.dtype, tensor.device, dim)
        groups.setdefault(key, []).append(move)
    if tails:
        torch._foreach_zero_(tails)
    for (shape, _, device, dim), members in groups.items():
        chunk = max(1, _BATCH_ELEMENTS // max(1, math.prod(shape)))
        for start in range(0, len(members), chunk):
            _move_stacked_(members[start : start + chunk], shape, dim, device)


def _move_stacked_(
    members: Sequence[SlotMove], shape: tuple[int, ...], dim: int, device: torch.device
) -> None:
    """One batch of :func:`permute_rank_axes_`: tensors of one ``shape`` on ``device``."""
    size = shape[dim]
    tensors = [tensor for tensor, _, _, _ in members]
    index = torch.tensor([list(perm) for _, perm, _, _ in members], dtype=torch.long)
    n_keep = torch.tensor([keep for _, _, _, keep in members], dtype=torch.long)
    dropped = torch.arange(size)[None, :] >= n_keep[:, None]  # (tensors, size)
    # (tensors, 1, …, size, …, 1): the rank axis of each stacked tensor, broadcast over the rest.
    view = [len(members)] + [1] * len(shape)
    view[dim + 1] = size
    stacked = torch.stack(tensors)
    index = index.to(device).view(view).expand(stacked.shape)
    moved = stacked.gather(dim + 1, index)
    moved.masked_fill_(dropped.to(device).view(view), 0)
    torch._foreach_copy_(tensors, list(moved.unbind(0)))
