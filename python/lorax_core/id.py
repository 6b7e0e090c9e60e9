"""Intrinsic-dimension estimators over exact nearest neighbours, computed in Rust.

Drop-in for scikit-dimension users: ``lorax_core.id.TwoNN().fit(X).dimension_`` equals
``skdim.id.TwoNN().fit(X).dimension_`` (to 1e-6 relative) on duplicate-free data, and
``lorax_core.id.MLE().fit(X).dimension_`` equals ``skdim.id.MLE().fit(X, comb="mle")``.

``X`` is a 2-D array ``(n_samples, n_features)``: numpy float32/float64 (C- or F-ordered,
read without copying), any other real numpy dtype (converted once to float64), or a torch
tensor (moved to CPU, read through numpy; float16/bfloat16 widened to float32).

Duplicates (docs/intrinsic-dimension.md): exact copies are removed first (one kept), then points
whose float64 distance to a neighbour is ``<= duplicate_tol × scale``, where ``scale`` is the
median distance of the points from their coordinate-wise median (robust: a few far outliers do
not inflate it); ``n_duplicates_`` counts the removed points. Bootstrap intervals resample the
per-point statistics (``r2/r1`` for TwoNN, ``1/m_i`` for MLE) with replacement and refit;
``scales`` re-estimates on nested random halves ``N, N/2, N/4, …`` (down to 16 points, or
``k + 2``).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt
import torch
from scipy import sparse
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state
from sklearn.utils.validation import validate_data

from lorax_core import _core
from lorax_core._validation import Bool, Constraint, Integer, Options, Real, Satisfies, check

__all__ = ["MLE", "IDResult", "TwoNN", "estimate_layers", "mle", "nearest_neighbors", "twonn"]

ArrayLike2D = npt.NDArray[Any] | torch.Tensor

_DEFAULT_DUPLICATE_TOL = 1e-7


@dataclass(frozen=True)
class IDResult:
    """One intrinsic-dimension estimate.

    ``dimension`` is the estimate; ``ci`` the 95% bootstrap interval (``None`` unless
    ``bootstrap > 0``); ``n_samples`` the number of input rows; ``n_duplicates`` the rows
    removed as copies; ``scales`` the ``(points used, dimension)`` pairs at ``N, N/2, …``
    (``None`` unless ``scales=True``).
    """

    dimension: float
    ci: tuple[float, float] | None
    n_samples: int
    n_duplicates: int
    scales: list[tuple[int, float]] | None

    @classmethod
    def of(cls, r: _core.IdEstimate) -> IDResult:
        """The result of one Rust estimate."""
        return cls(r.dimension, r.ci, r.n_samples, r.n_duplicates, r.scales)


def as_points(X: object, name: str = "X") -> npt.NDArray[np.float32] | npt.NDArray[np.float64]:
    """Returns ``X`` as a float32/float64 numpy array without copying when it already is one.

    Torch tensors go through ``.detach().cpu().numpy()``; integer, boolean and object arrays of
    numbers become float64, float16 becomes float32; layouts that are neither C- nor
    F-contiguous are made contiguous once. Raises ``TypeError`` for string, complex or other
    non-numeric data.
    """
    if isinstance(X, torch.Tensor):
        t = X.detach().cpu()
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.float()
        if t.is_complex():
            raise TypeError(f"{name} must be real-valued, got a {t.dtype} tensor")
        X = t.numpy()
    if sparse.issparse(X):
        raise TypeError(f"{name} must be a dense array; sparse input is not supported")
    try:
        arr = np.asarray(X)
        if arr.dtype.kind == "O":
            arr = arr.astype(np.float64)
    except (ValueError, TypeError) as e:
        raise TypeError(f"{name} must be a numeric 2-D array: {e}") from e
    kind = arr.dtype.kind
    if kind in "iub" or arr.dtype == np.float16:
        arr = arr.astype(np.float32 if arr.dtype == np.float16 else np.float64)
    elif kind != "f" or arr.dtype.itemsize > 8:
        raise TypeError(
            f"{name} must have a real numeric dtype (float32 or float64), got {arr.dtype}"
        )
    if not (arr.flags.c_contiguous or arr.flags.f_contiguous):
        arr = np.ascontiguousarray(arr)
    return arr


def _seed(random_state: object) -> int:
    return int(check_random_state(random_state).randint(np.iinfo(np.int64).max))


def _is_device(value: object) -> bool:
    try:
        torch.device(value)  # type: ignore[call-overload]
    except (RuntimeError, TypeError):
        return False
    return True


# Parameters both estimators share, with their checks.
_SHARED_CHECKS: dict[str, tuple[Constraint, ...]] = {
    "bootstrap": (Integer(low=0),),
    "scales": (Bool(),),
    "duplicate_tol": (Real(low=0.0),),
    "device": (
        Satisfies(
            (str, torch.device, type(None)),
            lambda d: d is None or _is_device(d),
            "None or a torch device such as 'cpu' or 'cuda'",
        ),
    ),
}


# The shared parameters are declared once, on the base class; they are keyword-only, so each
# estimator's own parameters keep their positions (``TwoNN(0.1, "ls")``). scikit-learn reads the
# generated ``__init__``'s signature for ``get_params``/``clone``.
@dataclass(repr=False, eq=False, kw_only=True)
class _IDEstimator(BaseEstimator, abc.ABC):  # type: ignore[misc]
    """Shared fit logic (scikit-learn estimator API); subclasses declare their own settings.

    ``device``: where the neighbours are searched. ``None`` (default) uses the device of a
    torch tensor ``X`` on a GPU and the Rust engine on the host for anything else; ``"cpu"``
    always uses the Rust engine; ``"cuda"`` (or ``"cuda:i"``) moves ``X`` there and runs the
    chunked exact kNN of :mod:`lorax_core.kernels.knn` (same neighbours and estimates as the
    Rust engine, see docs/kernels.md). Estimates with ``bootstrap > 0`` or ``scales=True`` run
    on the host engine whatever the device (its generator draws the resamples).
    """

    _checks: ClassVar[dict[str, tuple[Constraint, ...]]]

    bootstrap: int = 0
    random_state: int | np.random.RandomState | None = None
    scales: bool = False
    duplicate_tol: float = _DEFAULT_DUPLICATE_TOL
    device: str | torch.device | None = None

    @abc.abstractmethod
    def _settings(self) -> _core.TwoNNOptions | _core.MleOptions:
        """The estimator's own settings for the Rust core (parameters already checked)."""

    def _check_params(self) -> None:
        """Checks every constructor parameter (``ValueError``/``TypeError`` naming it)."""
        function = f"{type(self).__name__}.fit"
        for name, constraints in {**self._checks, **_SHARED_CHECKS}.items():
            check(function, name, getattr(self, name), *constraints)

    def _options(self) -> _core.EstimateOptions:
        return _core.EstimateOptions(
            bootstrap=self.bootstrap,
            seed=_seed(self.random_state),
            scales=self.scales,
            duplicate_tol=self.duplicate_tol,
        )

    def fit(self, X: ArrayLike2D, y: object = None) -> Self:
        """Estimates the intrinsic dimension of the rows of ``X`` ``(n_samples, n_features)``.

        Sets ``dimension_`` (float), ``n_duplicates_``, ``n_samples_``, ``n_features_in_``,
        ``ci_`` (when ``bootstrap > 0``) and ``scales_`` (when ``scales=True``). ``y`` is
        ignored. Returns ``self``.
        """
        self._check_params()
        r = self._estimate(X, _engine_device(f"{type(self).__name__}.fit", self.device, X))
        self.dimension_ = r.dimension
        self.n_duplicates_ = r.n_duplicates
        self.n_samples_ = r.n_samples
        if r.ci is not None:
            self.ci_ = r.ci
        if r.scales is not None:
            self.scales_ = r.scales
        return self

    def _estimate(self, X: ArrayLike2D, device: torch.device | None) -> IDResult:
        """The estimate on the host engine (``device=None``) or with the neighbours searched on
        ``device``; sets ``n_features_in_``. A torch tensor bound for a device stays a tensor
        (it is not copied through the host)."""
        if device is None:
            points = as_points(validate_data(self, as_points(X) if torch.is_tensor(X) else X))
            return IDResult.of(_core.estimate_id(points, self._settings(), self._options()))
        if isinstance(X, torch.Tensor):
            if X.dim() != 2:
                raise ValueError(
                    f"{type(self).__name__}.fit: X must be 2-D (n_samples, n_features), got "
                    f"shape {tuple(X.shape)}"
                )
            self.n_features_in_ = X.shape[1]
            return _estimate_on_device(self, X.detach(), device)
        return _estimate_on_device(self, validate_data(self, X), device)

    def fit_transform(self, X: ArrayLike2D, y: object = None) -> float:
        """Fits and returns ``dimension_`` (as scikit-dimension's global estimators do)."""
        return float(self.fit(X).dimension_)


@dataclass(repr=False, eq=False)
class TwoNN(_IDEstimator):
    """TwoNN (Facco et al. 2017), scikit-dimension compatible.

    ``discard_fraction`` of the largest ratios ``μ = r2/r1`` is discarded; ``method="ls"``
    (alias ``"linear"``) fits ``-ln(1 - F)`` on ``ln μ`` through the origin, ``"mle"`` is the
    censored maximum-likelihood estimate. ``bootstrap=B`` adds a 95% interval ``ci_``;
    ``scales=True`` adds ``scales_``; ``random_state`` seeds both; ``device`` as
    :class:`_IDEstimator`.
    """

    _checks: ClassVar[dict[str, tuple[Constraint, ...]]] = {
        "discard_fraction": (Real(low=0.0, high=1.0, closed="left"),),
        "method": (Options(("ls", "linear", "mle")),),
    }

    discard_fraction: float = 0.1
    method: str = "ls"

    def _check_params(self) -> None:
        super()._check_params()
        if self.method != "mle":  # least squares needs F < 1 for every kept ratio
            fraction = Real(low=0.0, high=1.0, closed="neither")
            check("TwoNN.fit", "discard_fraction", self.discard_fraction, fraction)

    def _settings(self) -> _core.TwoNNOptions:
        return _core.TwoNNOptions(self.discard_fraction, self.method)


@dataclass(repr=False, eq=False)
class MLE(_IDEstimator):
    """Levina–Bickel MLE over ``k`` neighbours (self excluded).

    ``comb="mle"`` combines the per-point estimates as ``1 / mean(1 / m_i)``
    (MacKay–Ghahramani; scikit-dimension's ``comb="mle"``), or ``"mean"`` / ``"median"``;
    ``unbiased=True`` uses ``k - 2`` instead of ``k - 1``. Other parameters as :class:`TwoNN`.
    """

    _checks: ClassVar[dict[str, tuple[Constraint, ...]]] = {
        "k": (Integer(low=2),),
        "comb": (Options(("mle", "mean", "median")),),
        "unbiased": (Bool(),),
    }

    k: int = 20
    comb: str = "mle"
    unbiased: bool = False

    def _check_params(self) -> None:
        super()._check_params()
        if self.unbiased:  # the numerator is k - 2
            check("MLE.fit", "k", self.k, Integer(low=3))

    def _settings(self) -> _core.MleOptions:
        return _core.MleOptions(self.k, self.comb, self.unbiased)


def _engine_device(function: str, device: object, X: object) -> torch.device | None:
    """The torch device the neighbour search runs on, or ``None`` for the Rust host engine.

    ``device`` is already checked to be ``None`` or a device name. A CUDA device that is not
    available is a ``ValueError`` naming ``device``.
    """
    if device is None:
        on_gpu = isinstance(X, torch.Tensor) and X.device.type == "cuda"
        return X.device if on_gpu and isinstance(X, torch.Tensor) else None
    resolved = torch.device(device)  # type: ignore[call-overload]
    if resolved.type == "cpu":
        return None
    if resolved.type != "cuda":
        raise ValueError(f"{function}: device must be 'cpu' or a CUDA device, got {device!r}")
    if not torch.cuda.is_available():
        raise ValueError(
            f"{function}: device must be an available device, got {device!r} "
            "(CUDA is not available)"
        )
    return resolved


def _estimate_on_device(est: _IDEstimator, X: object, device: torch.device) -> IDResult:
    """The estimate of ``est`` with the neighbours searched on ``device``.

    Bootstrap intervals and scales are drawn by the Rust engine's generator from the points, so
    an estimate with ``bootstrap > 0`` or ``scales=True`` runs on the host engine (the same
    result as ``device="cpu"``); the others (e.g. GeLoRA's joint resamples) run on ``device``.
    """
    from lorax_core.kernels.knn import estimate_id

    options = est._options()
    if options.bootstrap > 0 or options.scales:
        return IDResult.of(_core.estimate_id(as_points(X), est._settings(), options))
    points = X if isinstance(X, torch.Tensor) else torch.from_numpy(as_points(X))
    return estimate_id(points.to(device), est._settings(), options)


_ESTIMATORS: dict[str, type[_IDEstimator]] = {"twonn": TwoNN, "mle": MLE}


def twonn(X: ArrayLike2D, **params: Any) -> float:
    """TwoNN estimate of ``X`` ``(n_samples, n_features)``; ``params`` as :class:`TwoNN`."""
    return float(TwoNN(**params).fit(X).dimension_)


def mle(X: ArrayLike2D, **params: Any) -> float:
    """MLE estimate of ``X`` ``(n_samples, n_features)``; ``params`` as :class:`MLE`."""
    return float(MLE(**params).fit(X).dimension_)


def estimate_layers(
    arrays: Sequence[ArrayLike2D],
    estimator: str = "twonn",
    *,
    device: str | torch.device | None = None,
    **params: Any,
) -> list[IDResult]:
    """One :class:`IDResult` per array (e.g. one per layer's hidden states ``(n, D)``).

    ``params`` are the estimator's constructor parameters. On the host the arrays are estimated
    in parallel, each also using parallel kNN; ``device`` (as the estimators' ``device``:
    ``None`` follows the arrays, ``"cuda"`` searches the neighbours on the GPU, one layer after
    another) chooses the engine. Errors name the failing layer (``layer i: …``).
    """
    if isinstance(arrays, (np.ndarray, torch.Tensor)) or not isinstance(arrays, Sequence):
        raise TypeError("arrays must be a sequence (list or tuple) of 2-D arrays, one per layer")
    names = Options(tuple(_ESTIMATORS))
    kind = _ESTIMATORS[check("estimate_layers", "estimator", estimator, names)]
    est = kind(device=device, **params)
    est._check_params()
    engines = [_engine_device("estimate_layers", device, a) for a in arrays]
    if all(e is None for e in engines):
        points = [as_points(a, f"arrays[{i}]") for i, a in enumerate(arrays)]
        results = _core.estimate_id_many(points, est._settings(), est._options())
        return [IDResult.of(r) for r in results]
    out = []
    for i, (a, engine) in enumerate(zip(arrays, engines, strict=True)):
        try:
            if engine is None:
                r = _core.estimate_id(as_points(a, f"arrays[{i}]"), est._settings(), est._options())
                out.append(IDResult.of(r))
            else:
                out.append(_estimate_on_device(est, a, engine))
        except ValueError as e:
            raise ValueError(f"layer {i}: {e}") from e
    return out


def nearest_neighbors(
    X: ArrayLike2D, k: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Exact ``k`` nearest neighbours of each row of ``X``, self excluded, ties by index.

    Returns ``(distances, indices)``, both ``(n_samples, k)``: float64 Euclidean distances
    (ascending) and int64 row indices.
    """
    k = check("nearest_neighbors", "k", k, Integer(low=1))
    nn = _core.knn(as_points(X), k)
    return nn.distances, nn.indices
