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

from typing import Any

import numpy as np

from pipeline.errors import HeadError
from pipeline.heads.base import softmax_rows
from pipeline.heads.registry import Capabilities, Option, register
from pipeline.heads.statistics_head import StatisticsHead


def oas_shrinkage(cov: np.ndarray, n: int) -> float:
    """scikit-learn's OAS shrinkage coefficient for an empirical covariance from ``n`` rows."""
    p = cov.shape[0]
    mu = np.trace(cov) / p
    alpha = np.mean(cov ** 2)
    num = alpha + mu ** 2
    den = (n + 1) * (alpha - mu ** 2 / p)
    return 1.0 if den == 0 else float(min(num / den, 1.0))


@register
class SLDAHead(StatisticsHead):
    name = "slda"
    summary = "streaming LDA: class means + shared covariance; no forgetting"
    options: tuple[Option, ...] = (Option("shrinkage", float, "auto", "covariance shrinkage, or auto (OAS estimate)",
                      low=0.0, high=1.0, auto=True),)
    capabilities = Capabilities(order_free=True, mergeable=True, class_incremental="adds a mean; no forgetting")

    def __init__(self, shrinkage: float | str = "auto"):
        super().__init__()
        if shrinkage != "auto" and not (isinstance(shrinkage, (int, float)) and 0 <= shrinkage <= 1):
            raise HeadError(f"shrinkage must be 'auto' or a number in [0, 1], got {shrinkage!r}")
        self.shrinkage = shrinkage

    def settings(self) -> dict[str, Any]:
        return {"shrinkage": self.shrinkage}

    def covariance_(self) -> tuple[np.ndarray, float]:
        """The shrunk shared covariance and the shrinkage used."""
        st = self._fitted_stats()
        cov = st.within_scatter() / max(st.n, 1)
        s = oas_shrinkage(cov, st.n) if self.shrinkage == "auto" else float(self.shrinkage)
        mu = np.trace(cov) / cov.shape[0]
        if mu <= 0:  # every feature constant: any positive scale keeps it invertible
            mu = 1.0
        shrunk = (1.0 - s) * cov
        shrunk[np.diag_indices_from(shrunk)] += s * mu
        return shrunk, s

    def _solve(self) -> tuple[np.ndarray, np.ndarray, float]:
        from scipy.linalg import cho_factor, cho_solve  # ~0.5 s to import: not at start-up

        cov, s = self.covariance_()
        st = self._fitted_stats()
        try:
            coef = cho_solve(cho_factor(cov, lower=True, check_finite=False), st.means_.T, check_finite=False).T
        except np.linalg.LinAlgError:
            coef = np.linalg.lstsq(cov, st.means_.T, rcond=None)[0].T
        prior = np.log(np.maximum(st.counts_, 1) / max(st.n, 1))
        intercept = -0.5 * np.einsum("ij,ij->i", st.means_, coef) + prior
        return coef, intercept, s

    def _diagonal_rule(self) -> tuple[np.ndarray, np.ndarray]:
        """Progressive validation's early rule: the per-feature variances, shrunk as the covariance is
        (OAS computed on the diagonal), in place of the covariance."""
        st = self._fitted_stats()
        var = np.maximum(st.within_variances(), 0.0) / max(st.n, 1)
        mu = float(var.mean()) if var.sum() > 0 else 1.0
        if self.shrinkage == "auto":
            p = len(var)
            alpha, m = float((var ** 2).sum()) / p ** 2, float(var.mean())
            den = (st.n + 1) * (alpha - m ** 2 / p)
            s = 1.0 if den == 0 else float(min((alpha + m ** 2) / den, 1.0))
        else:
            s = float(self.shrinkage)
        shrunk = np.maximum((1.0 - s) * var + s * mu, 1e-300)
        coef = st.means_ / shrunk
        prior = np.log(np.maximum(st.counts_, 1) / max(st.n, 1))
        return coef, -0.5 * np.einsum("ij,ij->i", st.means_, coef) + prior

    def _proba(self, X: np.ndarray) -> np.ndarray:
        return softmax_rows(self.decision_function(X))

    def describe(self) -> dict[str, Any]:
        if self.stats_ is None or not self.classes_:
            return {}
        return {"shrinkage_used": self._coefficients()[2], "rows": self.stats_.n}
