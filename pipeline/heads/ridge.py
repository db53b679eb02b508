"""Analytic (closed-form) ridge classifier on streamed statistics (ACIL, RanPAC), exemplar-free.

Regresses one-hot labels on the features with an unpenalised intercept, the
solution of scikit-learn's ``Ridge(alpha=lambda)`` on the same rows, computed
from the :class:`ClassStatistics` of the stream: the centred Gram matrix is
the total scatter, and ``X^T Y`` is ``n_c (mu_c - mu)`` per class. So the
result is independent of row order and task split, and models merge.

- ``ridge_lambda="auto"`` picks lambda by generalised cross-validation from
  one eigendecomposition of the Gram matrix, shared by every candidate lambda
  and by the solve itself (``W = Q diag(1 / (d + lambda)) Q^T X^T Y``), so a
  solve costs one ``scipy.linalg.eigh`` and no Cholesky (reported as
  ``lambda_``). Progressive validation does not run GCV: it solves by Cholesky
  at ``PROGRESSIVE_LAMBDA`` times the mean eigenvalue (the trace over D), which
  needs no eigendecomposition; held-out evaluation is always the GCV solve.
- ``random_features=M``: RanPAC's fixed Gaussian projection to M dimensions
  followed by ReLU, before the ridge. The projection is generated from the
  seed a block of columns at a time (:mod:`pipeline.heads.random_features`)
  and not stored in the model; the M x M statistics are accumulated from
  float32 chunk products into float64. Models saved before kept the matrix
  (``projection_`` in their state) and go on using it.

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
from pipeline.heads import random_features as rf
from pipeline.heads.class_stats import ClassStatistics
from pipeline.heads.registry import Capabilities, Option, register
from pipeline.heads.statistics_head import StatisticsHead

if TYPE_CHECKING:
    from typing import Self

LAMBDA_GRID = np.logspace(-6, 3, 46)  # multiples of the mean eigenvalue of the Gram matrix
PROGRESSIVE_LAMBDA = 1e-2  # progressive validation's multiple of the mean eigenvalue under --lambda auto


@register
class RidgeHead(rf.SeededProjection, StatisticsHead):
    name = "ridge"
    summary = "analytic ridge on streamed statistics (RanPAC with --random-features); no forgetting"
    options = (
        Option("ridge_lambda", float, "auto", "L2 penalty, or auto (generalised cross-validation)",
               low=0.0, low_open=True, auto=True, flag="--lambda"),
        rf.features_option(None, "RanPAC random ReLU projection to M dimensions before the ridge"),
        rf.SEED_OPTION,
    )
    capabilities = Capabilities(order_free=True, mergeable=True, class_incremental="adds a column; no forgetting")

    def __init__(self, ridge_lambda: float | str = "auto", random_features: int | None = None, seed: int = 0):
        super().__init__()
        if ridge_lambda != "auto" and not (isinstance(ridge_lambda, (int, float)) and ridge_lambda > 0):
            raise HeadError(f"lambda must be 'auto' or a positive number, got {ridge_lambda!r}")
        if random_features is not None and random_features < 1:
            raise HeadError(f"random_features must be positive, got {random_features}")
        self.ridge_lambda, self.random_features, self.seed = ridge_lambda, random_features, seed

    def settings(self) -> dict[str, Any]:
        return {"ridge_lambda": self.ridge_lambda, "random_features": self.random_features, "seed": self.seed}

    @property
    def projection_(self) -> np.ndarray | None:
        """The (d, M) random projection: stored by models saved before, else generated from the seed."""
        if self.random_features is None or self.n_features_in_ is None:
            return None
        stored = self.__dict__.get("projection_")
        if stored is not None:
            return stored
        kept = self._kept_projection(self.n_features_in_)
        return kept[0] if kept is not None else rf.projection(self.n_features_in_, self.random_features, self.seed)

    def _features(self, X: np.ndarray) -> np.ndarray:
        if self.random_features is None:
            return X  # ClassStatistics makes its own float64 copy
        stored = self.__dict__.get("projection_")
        if stored is not None:  # a model saved before: its own matrix, float64 product as then
            return np.maximum(np.asarray(X, np.float64) @ stored, 0.0)
        return self._project(X)

    def _stats_dim(self) -> int:
        return self.random_features or self.n_features_in_ or 0

    def _new_statistics(self) -> ClassStatistics:
        product = "float32" if self.random_features is not None and "projection_" not in self.__dict__ else "float64"
        return ClassStatistics(self._stats_dim(), product=product)

    def _targets(self, gram: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(centred Gram matrix (a new array the caller may overwrite; empty if not gram), X^T Y centred,
        grand mean)``."""
        st = self._fitted_stats()
        mu = st.grand_mean()
        G = st.total_scatter() if gram else np.zeros((0, 0))
        xty = ((st.means_ - mu) * st.counts_[:, None]).T  # (D, C) = Xc^T Yc
        return G, xty, mu

    def _gcv(self, d: np.ndarray, B: np.ndarray) -> tuple[float, dict[str, list[float]]]:
        """GCV over the grid from the eigenvalues ``d`` and ``B = Q^T X^T Y``: no solve per lambda."""
        st = self._fitted_stats()
        B2 = (B ** 2).sum(axis=1)
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

    def _eigen(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(eigenvalues clipped at 0, eigenvectors, X^T Y, grand mean)`` of the centred Gram matrix."""
        from scipy.linalg import eigh  # ~0.5 s to import: not at start-up

        gram, xty, mu = self._targets()
        d, Q = eigh(gram, overwrite_a=True, check_finite=False)
        return np.maximum(d, 0.0), Q, xty, mu

    def gcv_lambda(self) -> tuple[float, dict[str, list[float]]]:
        """Lambda minimising generalised cross-validation, and the curve it came from."""
        d, Q, xty, _ = self._eigen()
        return self._gcv(d, Q.T @ xty)

    def _cholesky_solve(self, lam: float) -> np.ndarray:
        """``(G + lambda I)^-1 X^T Y`` by Cholesky, factorised in place.

        Round-off (float32 chunk products, near-duplicate features) can leave
        ``G + lambda I`` a hair from positive definite; then a jitter growing from
        1e-10 to 1e-2 of the mean diagonal is added, never an O(D^3)-memory
        fallback (an SVD of RanPAC's 10,000 x 10,000 matrix needs gigabytes).
        """
        from scipy.linalg import cho_factor, cho_solve  # ~0.5 s to import: not at start-up

        for jitter in (0.0, 1e-10, 1e-8, 1e-6, 1e-4, 1e-2):
            gram, xty, _ = self._targets()
            scale = max(float(np.trace(gram)) / len(gram), 1e-300)
            gram[np.diag_indices_from(gram)] += lam + jitter * scale
            try:
                return cho_solve(cho_factor(gram, lower=True, overwrite_a=True, check_finite=False), xty,
                                 check_finite=False)
            except np.linalg.LinAlgError:
                continue
        gram, xty, _ = self._targets()
        gram[np.diag_indices_from(gram)] += lam
        return np.linalg.lstsq(gram, xty, rcond=None)[0]

    def _rule(self, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        st = self._fitted_stats()
        intercept = st.counts_ / max(st.n, 1) - st.grand_mean() @ W
        return W.T, intercept

    def _solve(self) -> tuple[np.ndarray, np.ndarray, float]:
        if self.ridge_lambda == "auto":
            d, Q, xty, _ = self._eigen()
            B = Q.T @ xty
            lam = self._gcv(d, B)[0]
            W = Q @ (B / (d + lam)[:, None])
        else:
            lam = float(self.ridge_lambda)
            W = self._cholesky_solve(lam)
        return (*self._rule(W), lam)

    def _progressive_rule(self, exact: bool) -> tuple[np.ndarray, np.ndarray]:
        if self.ridge_lambda != "auto" or not exact:
            return super()._progressive_rule(exact)
        return self._rule(self._cholesky_solve(self._progressive_lambda()))

    def _progressive_lambda(self) -> float:
        """A fixed lambda, or under auto PROGRESSIVE_LAMBDA times the mean eigenvalue (the trace over D)."""
        if self.ridge_lambda != "auto":
            return float(self.ridge_lambda)
        st = self._fitted_stats()
        return PROGRESSIVE_LAMBDA * max(float(st.total_variances().sum()) / st.dim, 1e-12)

    def _diagonal_rule(self) -> tuple[np.ndarray, np.ndarray]:
        """Progressive validation's early rule: ``(diag(G) + lambda)^-1 X^T Y``, O(C D)."""
        st = self._fitted_stats()
        _, xty, _ = self._targets(gram=False)
        return self._rule(xty / (np.maximum(st.total_variances(), 0.0) + self._progressive_lambda())[:, None])

    @property
    def lambda_(self) -> float:
        return self._coefficients()[2]

    def _proba(self, X: np.ndarray) -> np.ndarray:
        scores = np.maximum(self.decision_function(X), 0.0)
        total = scores.sum(axis=1, keepdims=True)
        return np.divide(scores, total, out=np.full_like(scores, 1.0 / scores.shape[1]), where=total > 0)

    def merge(self, other: Self) -> Self:
        """Fold in a model trained on other rows (same random projection): equals training on both."""
        if self.random_features is not None and self.n_features_in_ is not None and other.n_features_in_ is not None:
            mine, theirs = self.__dict__.get("projection_"), other.__dict__.get("projection_")
            if (mine is None) != (theirs is None) or mine is not None and theirs is not None \
                    and not np.array_equal(mine, theirs):
                raise HeadError("cannot merge ridge models with different random projections "
                                "(one saved by an older version keeps its own matrix)")
        if self.n_features_in_ is None and "projection_" in other.__dict__:
            self.__dict__["projection_"] = other.__dict__["projection_"]
        super().merge(other)
        return self

    def describe(self) -> dict[str, Any]:
        if self.stats_ is None or not self.classes_:
            return {}
        return {"lambda_used": self.lambda_, "lambda_selection": "gcv" if self.ridge_lambda == "auto" else "fixed",
                "rows": self.stats_.n, "dim": self.stats_.dim}
