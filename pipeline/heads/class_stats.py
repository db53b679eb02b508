"""Sufficient statistics of labelled rows: per-class counts and means, within-class scatter.

Updated a chunk at a time in float64. Rows are centred on a fixed reference
per class (the mean of the class's first chunk), so each chunk costs one
``X^T X`` product: ``shifted_ = sum (x - r_y)(x - r_y)^T``. Because the
references sit close to the class means, the correction that turns it into
the within-class scatter, ``- sum_c n_c (mu_c - r_c)(mu_c - r_c)^T``, is small
and applied only when the scatter is read (the shifted-data algorithm for
variances, stable without a second pass). The result does not depend on row
order, chunking or how the data was split, and two statistics merge exactly.
The streaming LDA and ridge heads are functions of these statistics.

``product="float32"`` computes each chunk's ``X^T X`` in float32 (twice the
BLAS speed, half the temporary memory) and adds it to the float64 total: the
product of one chunk loses about ``sqrt(rows) * 6e-8`` relative, measured in
``docs/exemplar-free-heads.md``. RanPAC's random features use it; raw features
keep float64, which the heads' scikit-learn equality tests need.
"""

from __future__ import annotations

import numpy as np

from pipeline.heads.random_features import check_memory

ROW_BLOCK = 1024  # rows of a D x D result computed at a time, so a low-rank correction needs no D x D temporary


class ClassStatistics:
    """``counts_`` (C,), ``means_`` (C, D) and the within-class scatter (D, D)."""

    product = "float64"  # models saved before the option existed
    # checked when a model file is loaded (pipeline.heads.state_check): C classes of the head, dim features
    state_schema = {"dim": "count", "counts_": "array[C]", "means_": "array[C,dim]", "refs_": "array[C,dim]",
                    "shifted_": "array[dim,dim]"}

    def __init__(self, dim: int, product: str = "float64"):
        check_memory(2 * dim * dim * 8, f"statistics of {dim} dimensions (two {dim} x {dim} float64 matrices)",
                     "use fewer features (--random-features)")
        self.dim = dim
        self.product = product
        self.counts_ = np.zeros(0, np.int64)
        self.means_ = np.zeros((0, dim))
        self.refs_ = np.zeros((0, dim))
        self.shifted_ = np.zeros((dim, dim))

    @property
    def n(self) -> int:
        return int(self.counts_.sum())

    def add_class(self) -> None:
        self.counts_ = np.append(self.counts_, 0)
        self.means_ = np.vstack([self.means_, np.zeros((1, self.dim))])
        self.refs_ = np.vstack([self.refs_, np.zeros((1, self.dim))])

    def update(self, X: np.ndarray, ks: np.ndarray) -> None:
        """Fold in rows ``X`` of classes ``ks`` (indices into the class axis)."""
        order = np.argsort(ks, kind="stable")  # rows grouped by class: shifts are in-place slices
        present, starts, nb = np.unique(np.asarray(ks)[order], return_index=True, return_counts=True)
        Xc = np.asarray(X)[order].astype(self.product)
        sums = np.stack([Xc[a:a + n].sum(axis=0, dtype=np.float64) for a, n in zip(starts, nb)])
        new = self.counts_[present] == 0
        self.refs_[present[new]] = sums[new] / nb[new, None]
        for k, a, n in zip(present, starts, nb):
            Xc[a:a + n] -= self.refs_[k].astype(self.product)
        self.shifted_ += Xc.T @ Xc
        total = self.counts_[present] + nb
        self.means_[present] += (sums - nb[:, None] * self.means_[present]) / total[:, None]
        self.counts_[present] = total

    def within_scatter(self) -> np.ndarray:
        """sum over rows of (x - mu_y)(x - mu_y)^T (a new array)."""
        return self._corrected((self.means_ - self.refs_, -1.0))

    def _corrected(self, *terms: tuple[np.ndarray, float]) -> np.ndarray:
        """``shifted_`` plus ``sign * A^T diag(counts) A`` for each ``(A, sign)``, as a new array.

        Written a block of rows at a time, so the only D x D memory is the result
        (RanPAC's 10,000 x 10,000 statistics are 800 MB each).
        """
        out = self.shifted_.copy()
        for A, sign in terms:
            _add_low_rank(out, A, sign * self.counts_.astype(np.float64))
        return out

    def merge(self, other: "ClassStatistics", mapping: np.ndarray) -> None:
        """Fold in another statistics object whose class k is this one's ``mapping[k]``."""
        keep = np.flatnonzero(other.counts_ > 0)
        idx = mapping[keep]
        n_a, n_b = self.counts_[idx].astype(np.float64), other.counts_[keep].astype(np.float64)
        total = n_a + n_b
        delta = other.means_[keep] - self.means_[idx]
        # the within-class scatter, computed in place: one D x D matrix fewer (800 MB at M = 10,000); a
        # read-only array (mapped from Ray's object store), or one shared with ``other``, is copied first
        scatter = self.shifted_
        if not scatter.flags.writeable or np.may_share_memory(scatter, other.shifted_):
            scatter = scatter.copy()
        _add_low_rank(scatter, self.means_ - self.refs_, -self.counts_.astype(np.float64))
        scatter += other.shifted_
        _add_low_rank(scatter, other.means_ - other.refs_, -other.counts_.astype(np.float64))
        _add_low_rank(scatter, delta, n_a * n_b / total)
        self.means_[idx] += delta * (n_b / total)[:, None]
        self.counts_[idx] += other.counts_[keep]
        self.refs_ = self.means_.copy()
        self.shifted_ = scatter

    def within_variances(self) -> np.ndarray:
        """The diagonal of :meth:`within_scatter`, in O(C D)."""
        return np.diag(self.shifted_) - (self.counts_[:, None] * (self.means_ - self.refs_) ** 2).sum(axis=0)

    def total_variances(self) -> np.ndarray:
        """The diagonal of :meth:`total_scatter`, in O(C D)."""
        return self.within_variances() + (self.counts_[:, None] * (self.means_ - self.grand_mean()) ** 2).sum(axis=0)

    def grand_mean(self) -> np.ndarray:
        return (self.counts_[:, None] * self.means_).sum(axis=0) / max(self.n, 1)

    def _total_terms(self) -> tuple[tuple[np.ndarray, float], tuple[np.ndarray, float]]:
        """The low-rank terms that turn ``shifted_`` into the total scatter."""
        return (self.means_ - self.refs_, -1.0), (self.means_ - self.grand_mean(), 1.0)

    def total_scatter(self) -> np.ndarray:
        """sum over rows of (x - mu)(x - mu)^T: within plus between-class scatter (a new array)."""
        return self._corrected(*self._total_terms())

    def add_total_scatter(self, out: np.ndarray, sign: float = 1.0) -> None:
        """``out += sign * total_scatter()`` in place, a block of rows at a time (no D x D temporary)."""
        if sign == 1.0:
            out += self.shifted_
        else:
            out -= self.shifted_
        for A, term_sign in self._total_terms():
            _add_low_rank(out, A, sign * term_sign * self.counts_.astype(np.float64))

    def total_scatter_dot(self, V: np.ndarray) -> np.ndarray:
        """``total_scatter() @ V`` without forming the D x D total scatter (O(D^2 k) for V of k columns)."""
        out = self.shifted_ @ V
        w = self.counts_.astype(np.float64)[:, None]
        for A, sign in self._total_terms():
            out += A.T @ (sign * w * (A @ V))
        return out


def _add_low_rank(out: np.ndarray, A: np.ndarray, w: np.ndarray) -> None:
    """``out += A^T diag(w) A`` in place, a block of rows at a time (no D x D temporary)."""
    for i in range(0, out.shape[0], ROW_BLOCK):
        rows = slice(i, i + ROW_BLOCK)
        out[rows] += (A[:, rows] * w[:, None]).T @ A
