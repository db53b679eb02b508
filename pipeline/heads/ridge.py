"""Analytic (closed-form) ridge classifier on streamed statistics (ACIL, RanPAC), exemplar-free.

Regresses one-hot labels on the features with an unpenalised intercept, the
solution of scikit-learn's ``Ridge(alpha=lambda)`` on the same rows, computed
from the :class:`ClassStatistics` of the stream: the centred Gram matrix is
the total scatter, and ``X^T Y`` is ``n_c (mu_c - mu)`` per class. So the
result is independent of row order and task split, and models merge.

- ``ridge_lambda="auto"`` picks lambda by generalised cross-validation from
  one eigendecomposition of the Gram matrix (reported as ``lambda_``).
- ``random_features=M``: RanPAC's fixed Gaussian projection to M dimensions
  followed by ReLU, before the ridge; the projection (seeded) is kept in the
  model.

Probabilities are the one-hot regression scores clipped at 0 and normalised.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> X = np.vstack([rng.normal(0, 1, (50, 3)), rng.normal(3, 1, (50, 3))])
>>> head = RidgeHead(ridge_lambda=1.0).partial_fit(X, ["a"] * 50 + ["b"] * 50)
>>> head.predict(np.array([[0.0, 0, 0], [3.0, 3, 3]])).tolist()
['a', 'b']
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import HeadError
from pipeline.heads.registry import Capabilities, Option, register
from pipeline.heads.statistics_head import StatisticsHead

if TYPE_CHECKING:
    from typing import Self

LAMBDA_GRID = np.logspace(-6, 3, 46)  # multiples of the mean eigenvalue of the Gram matrix


@register
class RidgeHead(StatisticsHead):
    name = "ridge"
    summary = "analytic ridge on streamed statistics (RanPAC with --random-features); no forgetting"
    options = (
        Option("ridge_lambda", float, "auto", "L2 penalty, or auto (generalised cross-validation)",
               low=0.0, low_open=True, auto=True, flag="--lambda"),
        Option("random_features", int, None, "RanPAC random ReLU projection to M dimensions before the ridge",
               low=1, high=65536),
        Option("seed", int, 0, "seed of the random projection", low=0, high=2**32 - 1, from_run=True),
    )
    capabilities = Capabilities(order_free=True, mergeable=True, class_incremental="adds a column; no forgetting")

    def __init__(self, ridge_lambda: float | str = "auto", random_features: int | None = None, seed: int = 0):
        super().__init__()
        if ridge_lambda != "auto" and not (isinstance(ridge_lambda, (int, float)) and ridge_lambda > 0):
            raise HeadError(f"lambda must be 'auto' or a positive number, got {ridge_lambda!r}")
        if random_features is not None and random_features < 1:
            raise HeadError(f"random_features must be positive, got {random_features}")
        self.ridge_lambda, self.random_features, self.seed = ridge_lambda, random_features, seed
        self.projection_: np.ndarray | None = None

    def settings(self) -> dict[str, Any]:
        return {"ridge_lambda": self.ridge_lambda, "random_features": self.random_features, "seed": self.seed}

    def _features(self, X: np.ndarray) -> np.ndarray:
        if self.random_features is None:
            return X  # ClassStatistics makes its own float64 copy
        if self.projection_ is None:
            rng = np.random.default_rng(self.seed)
            self.projection_ = rng.standard_normal((X.shape[1], self.random_features)).astype(np.float32)
        return np.maximum(np.asarray(X, np.float64) @ self.projection_, 0.0)

    def _stats_dim(self) -> int:
        return self.random_features or self.n_features_in_ or 0

    def _targets(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        st = self._fitted_stats()
        mu = st.grand_mean()
        gram = st.total_scatter()
        xty = ((st.means_ - mu) * st.counts_[:, None]).T  # (D, C) = Xc^T Yc
        return gram, xty, mu

    def gcv_lambda(self) -> tuple[float, dict[str, list[float]]]:
        """Lambda minimising generalised cross-validation, and the curve it came from."""
        st = self._fitted_stats()
        gram, xty, _ = self._targets()
        d, Q = np.linalg.eigh(gram)
        d = np.maximum(d, 0.0)
        B2 = ((Q.T @ xty) ** 2).sum(axis=1)
        n = st.n
        yy = float((st.counts_ * (1 - st.counts_ / n)).sum())
        grid = LAMBDA_GRID * max(d.mean(), 1e-12)
        scores = []
        for lam in grid:
            rss = yy - float((B2 * (d + 2 * lam) / (d + lam) ** 2).sum())
            df = float((d / (d + lam)).sum()) + 1.0  # + intercept
            scores.append(n * max(rss, 0.0) / max(n - df, 1e-12) ** 2)
        best = int(np.argmin(scores))
        return float(grid[best]), {"lambda": grid.tolist(), "gcv": scores}

    def _solve(self) -> tuple[np.ndarray, np.ndarray, float]:
        from scipy.linalg import cho_factor, cho_solve  # ~0.5 s to import: not at start-up

        st = self._fitted_stats()
        gram, xty, mu = self._targets()
        lam = self.gcv_lambda()[0] if self.ridge_lambda == "auto" else float(self.ridge_lambda)
        A = gram.copy()
        A[np.diag_indices_from(A)] += lam
        try:
            W = cho_solve(cho_factor(A, lower=True, check_finite=False), xty, check_finite=False)
        except np.linalg.LinAlgError:
            W = np.linalg.lstsq(A, xty, rcond=None)[0]
        intercept = st.counts_ / max(st.n, 1) - mu @ W
        return W.T, intercept, lam

    @property
    def lambda_(self) -> float:
        return self._coefficients()[2]

    def _proba(self, X: np.ndarray) -> np.ndarray:
        scores = np.maximum(self.decision_function(X), 0.0)
        total = scores.sum(axis=1, keepdims=True)
        return np.divide(scores, total, out=np.full_like(scores, 1.0 / scores.shape[1]), where=total > 0)

    def merge(self, other: Self) -> Self:
        """Fold in a model trained on other rows (same random projection): equals training on both."""
        if self.random_features is not None and other.projection_ is not None:
            if self.projection_ is None:
                self.projection_ = other.projection_
            elif not np.array_equal(self.projection_, other.projection_):
                raise HeadError("cannot merge ridge models with different random projections")
        super().merge(other)
        return self

    def describe(self) -> dict[str, Any]:
        if self.stats_ is None or not self.classes_:
            return {}
        return {"lambda_used": self.lambda_, "lambda_selection": "gcv" if self.ridge_lambda == "auto" else "fixed",
                "rows": self.stats_.n, "dim": self.stats_.dim}
