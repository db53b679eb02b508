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
- ``ridge_lambda="heldout"``: RanPAC's own choice. A deterministic 20% slice
  of the rows, chosen by a hash of each row's values (so the same whatever the
  order, chunking or worker), is also counted in separate statistics. Every
  candidate lambda of RanPAC's list (1e-8 to 1e8) is fitted on the other rows
  (their statistics are the totals minus the slice's) and scored by its
  squared error on the slice, computed from the slice's statistics alone
  (``||Y - XW - b||^2 = tr(Y^T Y) - 2 tr(W^T X^T Y) + tr(W^T X^T X W)`` on the
  slice, centred, plus the term of its means), with one eigendecomposition of
  the training part shared by all candidates up to ``HELDOUT_EIGH_MAX_DIM``
  dimensions, one in-place Cholesky per candidate above (no second D x D
  matrix); then the head is refitted on all rows at the chosen lambda
  (Cholesky). No row is kept: the slice costs a second D x D matrix.
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

from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from pipeline.errors import HeadError
from pipeline.heads import random_features as rf
from pipeline.heads.class_stats import ClassStatistics, _add_low_rank
from pipeline.heads.registry import Capabilities, Option, register
from pipeline.heads.statistics_head import StatisticsHead

if TYPE_CHECKING:
    from typing import Self

LAMBDA_GRID = np.logspace(-6, 3, 46)  # multiples of the mean eigenvalue of the Gram matrix
PROGRESSIVE_LAMBDA = 1e-2  # progressive validation's multiple of the mean eigenvalue under auto / heldout
HELDOUT_GRID = 10.0 ** np.arange(-8, 9)  # RanPAC's candidate lambdas
HELDOUT_FRACTION = 0.2  # share of rows in the held-out slice
# Above this dimension the held-out choice solves each candidate by an in-place Cholesky instead of sharing
# one eigendecomposition: its eigenvectors would be a second D x D matrix (800 MB at M = 10,000: 3.2 GB with
# the two statistics). It trades memory for time (measured in docs/exemplar-free-heads.md).
HELDOUT_EIGH_MAX_DIM = 4096


def heldout_rows(X: np.ndarray, fraction: float = HELDOUT_FRACTION) -> np.ndarray:
    """Boolean mask of the rows in the held-out slice: a hash of each row's float32 values.

    Depends only on the row itself, so the slice is the same whatever the order,
    chunking or worker that sees it (equal rows fall on the same side).
    """
    bits = np.ascontiguousarray(X, np.float32).view(np.uint32).astype(np.uint64)
    mult = np.random.default_rng(20231).integers(1, 2**63, bits.shape[1], dtype=np.uint64) | np.uint64(1)
    with np.errstate(over="ignore"):
        h = (bits * mult).sum(axis=1, dtype=np.uint64)
        h ^= h >> np.uint64(31)
        h *= np.uint64(0x9E3779B97F4A7C15)
    return (h >> np.uint64(40)).astype(np.float64) < fraction * 2.0 ** 24


def _factor_solve(build: Callable[[], np.ndarray], lam: float, rhs: np.ndarray,
                  used: list[float] | None = None) -> np.ndarray:
    """``(A + lambda I)^-1 rhs`` for the symmetric ``A = build()`` (a new array), by Cholesky in place.

    The factorisation gets ``A.T``, the same matrix in Fortran order, so LAPACK
    overwrites it (a C-ordered array would be copied first: a second D x D
    matrix, 800 MB at M = 10,000); its upper triangle is ``A``'s lower one.
    Round-off (float32 chunk products, near-duplicate features) can leave
    ``A + lambda I`` a hair from positive definite; then a jitter growing from
    1e-10 to 1e-2 of the mean diagonal is added, never an O(D^3)-memory
    fallback (an SVD of RanPAC's 10,000 x 10,000 matrix needs gigabytes).
    ``used`` gets the penalty actually added (``lambda`` plus any jitter), so a
    held-out score is filed under the lambda that earned it.
    """
    from scipy.linalg import cho_factor, cho_solve  # ~0.5 s to import: not at start-up

    for jitter in (0.0, 1e-10, 1e-8, 1e-6, 1e-4, 1e-2):
        A = build()
        scale = max(float(np.trace(A)) / len(A), 1e-300)
        A[np.diag_indices_from(A)] += lam + jitter * scale
        try:
            solution = cho_solve(cho_factor(A.T, lower=False, overwrite_a=True, check_finite=False), rhs,
                                 check_finite=False)
        except np.linalg.LinAlgError:
            continue
        finally:
            del A
        if used is not None:
            used.append(lam + jitter * scale)
        return solution
    if used is not None:
        used.append(lam)
    A = build()
    A[np.diag_indices_from(A)] += lam
    return np.linalg.lstsq(A, rhs, rcond=None)[0]


@register
class RidgeHead(rf.SeededProjection, StatisticsHead):
    name = "ridge"
    summary = "analytic ridge on streamed statistics (RanPAC with --random-features); no forgetting"
    options = (
        Option("ridge_lambda", float, "auto", "L2 penalty, or auto (generalised cross-validation), or heldout "
               "(RanPAC's: the best of 1e-8..1e8 on a hash-selected 20% slice of the rows, then refit on all)",
               low=0.0, low_open=True, auto=True, words=("heldout",), flag="--lambda"),
        rf.features_option(None, "RanPAC random ReLU projection to M dimensions before the ridge"),
        rf.SEED_OPTION,
    )
    capabilities = Capabilities(order_free=True, mergeable=True, class_incremental="adds a column; no forgetting")

    def __init__(self, ridge_lambda: float | str = "auto", random_features: int | None = None, seed: int = 0):
        super().__init__()
        if ridge_lambda not in ("auto", "heldout") and not (isinstance(ridge_lambda, (int, float))
                                                           and ridge_lambda > 0):
            raise HeadError(f"lambda must be 'auto', 'heldout' or a positive number, got {ridge_lambda!r}")
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
        # gram.T: the same symmetric matrix in Fortran order, so LAPACK overwrites it instead of a copy
        d, Q = eigh(gram.T, lower=False, overwrite_a=True, check_finite=False)
        return np.maximum(d, 0.0), Q, xty, mu

    def gcv_lambda(self) -> tuple[float, dict[str, list[float]]]:
        """Lambda minimising generalised cross-validation, and the curve it came from."""
        d, Q, xty, _ = self._eigen()
        return self._gcv(d, Q.T @ xty)

    def _cholesky_solve(self, lam: float, used: list[float] | None = None) -> np.ndarray:
        """``(G + lambda I)^-1 X^T Y`` of all rows by Cholesky, factorised in place (``used``: see _factor_solve)."""
        return _factor_solve(lambda: self._targets()[0], lam, self._targets(gram=False)[1], used)

    def _rule(self, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        st = self._fitted_stats()
        intercept = st.counts_ / max(st.n, 1) - st.grand_mean() @ W
        return W.T, intercept

    # -- RanPAC's held-out choice of lambda --------------------------------------
    slice_stats_: ClassStatistics | None = None

    def _add_class(self, label: Any) -> None:
        super()._add_class(label)
        if self.ridge_lambda == "heldout":
            if self.slice_stats_ is None:
                self.slice_stats_ = self._new_statistics()
            self.slice_stats_.add_class()

    def _learn_features(self, Z: np.ndarray, y: np.ndarray, X: np.ndarray) -> None:
        ks = self._class_indices(y)
        self._fitted_stats().update(Z, ks)
        if self.slice_stats_ is not None:
            mask = heldout_rows(X)
            if mask.any():
                self.slice_stats_.update(Z[mask], ks[mask])
        self.version_ += 1

    def heldout_curve(self) -> tuple[float, dict[str, list[float]]]:
        """The lambda of least squared error on the held-out slice, and the curve (needs ``"heldout"``).

        Falls back to GCV when the slice or the rest is empty.
        """
        from scipy.linalg import eigh

        st, sl = self._fitted_stats(), self.slice_stats_
        if sl is None:
            raise HeadError("the held-out slice is kept only with lambda 'heldout'")
        n, n_s = st.n, sl.n
        n_t = n - n_s
        if n_s == 0 or n_t == 0:
            return self.gcv_lambda()[0], {"lambda": [], "loss": []}
        counts_t = (st.counts_ - sl.counts_).astype(np.float64)
        sums_t = st.counts_[:, None] * st.means_ - sl.counts_[:, None] * sl.means_
        mu_t, mu_s = sums_t.sum(axis=0) / n_t, sl.grand_mean()
        xty_t = (sums_t - counts_t[:, None] * mu_t).T  # X^T Y of the training part, centred

        def train() -> np.ndarray:
            """The training part's centred Gram matrix (a new array): all rows' minus the slice's, about
            their own mean."""
            G = st.total_scatter()
            sl.add_total_scatter(G, -1.0)
            _add_low_rank(G, (mu_t - mu_s)[None, :], np.array([-n_t * n_s / n]))
            return G

        solutions: Iterator[np.ndarray]
        lambdas: list[float] = []   # the penalty each candidate was solved with (jitter included)
        if st.dim <= HELDOUT_EIGH_MAX_DIM:  # one eigendecomposition shared by the candidates
            G = train()
            d, Q = eigh(G.T, lower=False, overwrite_a=True, check_finite=False)  # G.T: in place (Fortran order)
            del G
            d = np.maximum(d, 0.0)
            B = Q.T @ xty_t
            lambdas = HELDOUT_GRID.tolist()
            solutions = (Q @ (B / (d + lam)[:, None]) for lam in HELDOUT_GRID)
        else:  # one Cholesky per candidate, in place: no second D x D matrix
            solutions = (_factor_solve(train, float(lam), xty_t, lambdas) for lam in HELDOUT_GRID)
        xty_s = ((sl.means_ - mu_s) * sl.counts_[:, None]).T
        yy_s = float((sl.counts_ * (1 - sl.counts_ / n_s)).sum())
        ybar_t, ybar_s = counts_t / n_t, sl.counts_ / n_s
        losses = []
        for W in solutions:
            offset = ybar_s - mu_s @ W - (ybar_t - mu_t @ W)  # slice means' residual
            losses.append(yy_s - 2 * float((W * xty_s).sum()) + float((W * sl.total_scatter_dot(W)).sum())
                          + n_s * float((offset ** 2).sum()))
        best = int(np.argmin(losses))
        return float(lambdas[best]), {"lambda": lambdas, "loss": losses}

    def merge(self, other: Self) -> Self:
        """Fold in a model trained on other rows (same random projection): equals training on both."""
        self._merge_projection(other)
        super().merge(other)
        if self.slice_stats_ is not None and other.slice_stats_ is not None:
            self.slice_stats_.merge(other.slice_stats_, self._class_indices(other.classes_))
        return self

    def _solve(self) -> tuple[np.ndarray, np.ndarray, float]:
        used: list[float] = []   # the penalty the solve added, jitter included (see _factor_solve)
        if self.ridge_lambda == "heldout":
            W = self._cholesky_solve(self.heldout_curve()[0], used)
            lam = used[0]
        elif self.ridge_lambda == "auto":
            d, Q, xty, _ = self._eigen()
            B = Q.T @ xty
            lam = self._gcv(d, B)[0]
            W = Q @ (B / (d + lam)[:, None])
        else:
            W = self._cholesky_solve(float(self.ridge_lambda), used)
            lam = used[0]
        return (*self._rule(W), lam)

    def _progressive_rule(self, exact: bool) -> tuple[np.ndarray, np.ndarray]:
        if self.ridge_lambda not in ("auto", "heldout") or not exact:
            return super()._progressive_rule(exact)
        return self._rule(self._cholesky_solve(self._progressive_lambda()))

    def _progressive_lambda(self) -> float:
        """A fixed lambda, or under auto PROGRESSIVE_LAMBDA times the mean eigenvalue (the trace over D)."""
        if self.ridge_lambda not in ("auto", "heldout"):
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

    def _merge_projection(self, other: Self) -> None:
        if self.random_features is not None and self.n_features_in_ is not None and other.n_features_in_ is not None:
            mine, theirs = self.__dict__.get("projection_"), other.__dict__.get("projection_")
            if (mine is None) != (theirs is None) or mine is not None and theirs is not None \
                    and not np.array_equal(mine, theirs):
                raise HeadError("cannot merge ridge models with different random projections "
                                "(one saved by an older version keeps its own matrix)")
        if self.n_features_in_ is None and "projection_" in other.__dict__:
            self.__dict__["projection_"] = other.__dict__["projection_"]

    def describe(self) -> dict[str, Any]:
        if self.stats_ is None or not self.classes_:
            return {}
        return {"lambda_used": self.lambda_, "lambda_selection": {"auto": "gcv", "heldout": "heldout slice"}.get(
                    str(self.ridge_lambda), "fixed"),
                "rows": self.stats_.n, "dim": self.stats_.dim}
