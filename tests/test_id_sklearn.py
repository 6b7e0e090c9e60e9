"""TwoNN and MLE as scikit-learn estimators: clone, parameters, fitted state, and the applicable
checks of ``sklearn.utils.estimator_checks`` (unsupervised, no transform or predict)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks
from sklearn.utils.validation import check_is_fitted

from lorax_core import id as lid
from lorax_core.synthetic import embedded_gaussian

X = embedded_gaussian(300, 4, 12, seed=7)

# The one check that does not apply: it fits a single sample, and an intrinsic dimension needs
# at least 3 distinct points (the estimators raise a ValueError saying so). The checks of
# predict/transform methods run and pass vacuously: the estimators have neither.
NOT_APPLICABLE = {
    "check_fit2d_1sample": "an intrinsic dimension needs at least 3 distinct points",
}


def _expected_failures(estimator: object) -> dict[str, str]:
    return NOT_APPLICABLE


@parametrize_with_checks([lid.TwoNN(), lid.MLE(k=5)], expected_failed_checks=_expected_failures)
def test_sklearn_estimator_checks(estimator, check) -> None:  # type: ignore[no-untyped-def]
    check(estimator)


@pytest.mark.parametrize("estimator", [lid.TwoNN(discard_fraction=0.2), lid.MLE(k=7)])
def test_clone_params_and_fitted_state(estimator) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NotFittedError):
        check_is_fitted(estimator)
    twin = clone(estimator)
    assert twin is not estimator and twin.get_params() == estimator.get_params()
    fitted = estimator.fit(X)
    check_is_fitted(fitted)
    assert fitted.n_features_in_ == 12 and fitted.n_samples_ == 300
    assert not hasattr(clone(fitted), "dimension_")  # clone drops the fitted state
    params = {"bootstrap": 10, "random_state": 3}
    assert estimator.set_params(**params) is estimator
    assert estimator.get_params()["bootstrap"] == 10
    assert estimator.fit(X).ci_[0] <= estimator.dimension_ <= estimator.fit(X).ci_[1]
    with pytest.raises(ValueError, match="Invalid parameter"):
        estimator.set_params(alpha=1.0)


def test_n_features_in_is_reset_per_fit() -> None:
    est = lid.TwoNN().fit(X)
    assert est.fit(np.hstack([X, X])).n_features_in_ == 24


def test_device_is_a_parameter_that_clone_keeps() -> None:
    est = lid.MLE(7, device="cpu")
    assert est.get_params()["device"] == "cpu" and est.get_params()["k"] == 7
    twin = clone(est)
    assert twin.device == "cpu" and twin.k == 7
    assert twin.fit(X).dimension_ == lid.MLE(7).fit(X).dimension_
