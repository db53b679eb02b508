"""Streaming linear discriminant analysis (Hayes & Kanan, 2020), exemplar-free.

Keeps per-class means and the shared within-class covariance
(:class:`ClassStatistics`); predicts with the shrunk covariance
``(1 - s) S + s (tr S / D) I`` (scikit-learn's shrinkage) through a cached
Cholesky factorisation, plus log class priors, exactly as scikit-learn's
``LinearDiscriminantAnalysis(solver="lsqr", shrinkage=s)`` on the same rows.
``shrinkage="auto"`` uses the Oracle Approximating Shrinkage estimate, which
needs only the second moments, so it stays order-independent.
Memory is O(D^2 + C D) whatever the number of rows.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> X = np.vstack([rng.normal(0, 1, (50, 3)), rng.normal(3, 1, (50, 3))])
>>> head = SLDAHead().partial_fit(X, ["a"] * 50 + ["b"] * 50)
>>> head.predict(np.array([[0.0, 0, 0], [3.0, 3, 3]])).tolist()
['a', 'b']
"""

from __future__ import annotations

from typing import Any, Hashable, Sequence

import numpy as np
from scipy.linalg import cho_factor, cho_solve

from pipeline.errors import HeadError
from pipeline.heads.base import Head, softmax_rows
from pipeline.heads.class_stats import ClassStatistics


def oas_shrinkage(cov: np.ndarray, n: int) -> float:
    """scikit-learn's OAS shrinkage coefficient for an empirical covariance from ``n`` rows."""
    p = cov.shape[0]
    mu = np.trace(cov) / p
    alpha = np.mean(cov ** 2)
    num = alpha + mu ** 2
    den = (n + 1) * (alpha - mu ** 2 / p)
    return 1.0 if den == 0 else float(min(num / den, 1.0))


class SLDAHead(Head):
    name = "slda"
    mergeable = True

    def __init__(self, shrinkage: float | str = "auto"):
        super().__init__()
        if shrinkage != "auto" and not (isinstance(shrinkage, (int, float)) and 0 <= shrinkage <= 1):
            raise HeadError(f"shrinkage must be 'auto' or a number in [0, 1], got {shrinkage!r}")
        self.shrinkage = shrinkage
        self.stats_: ClassStatistics | None = None
        self._cache: tuple[np.ndarray, np.ndarray, float] | None = None

    def settings(self) -> dict[str, Any]:
        return {"shrinkage": self.shrinkage}

    def _add_class(self, label: Hashable) -> None:
        if self.stats_ is None:
            self.stats_ = ClassStatistics(self.n_features_in_ or 0)
        self.stats_.add_class()

    def _learn(self, X: np.ndarray, y: np.ndarray, paths: Sequence[str] | None) -> None:
        ks = self._class_indices(y)
        self.stats_.update(X, ks)
        self._cache = None

    def covariance_(self) -> tuple[np.ndarray, float]:
        """The shrunk shared covariance and the shrinkage used."""
        st = self.stats_
        cov = st.within_scatter() / max(st.n, 1)
        s = oas_shrinkage(cov, st.n) if self.shrinkage == "auto" else float(self.shrinkage)
        mu = np.trace(cov) / cov.shape[0]
        if mu <= 0:  # every feature constant: any positive scale keeps it invertible
            mu = 1.0
        shrunk = (1.0 - s) * cov
        shrunk[np.diag_indices_from(shrunk)] += s * mu
        return shrunk, s

    def _coefficients(self) -> tuple[np.ndarray, np.ndarray, float]:
        if self._cache is None:
            cov, s = self.covariance_()
            st = self.stats_
            try:
                factor = cho_factor(cov, lower=True, check_finite=False)
                coef = cho_solve(factor, st.means_.T, check_finite=False).T
            except np.linalg.LinAlgError:
                coef = np.linalg.lstsq(cov, st.means_.T, rcond=None)[0].T
            prior = np.log(np.maximum(st.counts_, 1) / max(st.n, 1))
            intercept = -0.5 * np.einsum("ij,ij->i", st.means_, coef) + prior
            self._cache = (coef, intercept, s)
        return self._cache

    @property
    def coef_(self) -> np.ndarray:
        return self._coefficients()[0]

    @property
    def intercept_(self) -> np.ndarray:
        return self._coefficients()[1]

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        self._check_fitted()
        coef, intercept, _ = self._coefficients()
        return np.asarray(self._check_X(X), np.float64) @ coef.T + intercept

    def _proba(self, X: np.ndarray) -> np.ndarray:
        return softmax_rows(self.decision_function(X))

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.array(self.classes_, dtype=object)[np.argmax(self.decision_function(X), axis=1)]

    def merge(self, other: "SLDAHead") -> "SLDAHead":
        """Fold in a model trained on other rows: the result equals training on both."""
        _check_mergeable(self, other)
        if self.n_features_in_ is None:
            self.n_features_in_ = other.n_features_in_
        mapping = self._class_indices(other.classes_)
        self.stats_.merge(other.stats_, mapping)
        self.rows_seen_ += other.rows_seen_
        self._cache = None
        return self

    def describe(self) -> dict[str, Any]:
        if self.stats_ is None or not self.classes_:
            return {}
        return {"shrinkage_used": self._coefficients()[2], "rows": self.stats_.n}


def _check_mergeable(a: Head, b: Head) -> None:
    if type(a) is not type(b):
        raise HeadError(f"cannot merge a {b.name} model into a {a.name} model")
    if a.settings() != b.settings():
        raise HeadError(f"cannot merge models with different settings: {a.settings()} vs {b.settings()}")
    if a.n_features_in_ is not None and b.n_features_in_ is not None and a.n_features_in_ != b.n_features_in_:
        raise HeadError(f"cannot merge models of {a.n_features_in_} and {b.n_features_in_} features")
