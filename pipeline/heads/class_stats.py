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
"""

from __future__ import annotations

import numpy as np


class ClassStatistics:
    """``counts_`` (C,), ``means_`` (C, D) and the within-class scatter (D, D)."""

    def __init__(self, dim: int):
        self.dim = dim
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
        Xc = np.asarray(X)[order].astype(np.float64)
        sums = np.stack([Xc[a:a + n].sum(axis=0) for a, n in zip(starts, nb)])
        new = self.counts_[present] == 0
        self.refs_[present[new]] = sums[new] / nb[new, None]
        for k, a, n in zip(present, starts, nb):
            Xc[a:a + n] -= self.refs_[k]
        self.shifted_ += Xc.T @ Xc
        total = self.counts_[present] + nb
        self.means_[present] += (sums - nb[:, None] * self.means_[present]) / total[:, None]
        self.counts_[present] = total

    def within_scatter(self) -> np.ndarray:
        """sum over rows of (x - mu_y)(x - mu_y)^T."""
        d = self.means_ - self.refs_
        return self.shifted_ - (d.T * self.counts_) @ d

    def merge(self, other: "ClassStatistics", mapping: np.ndarray) -> None:
        """Fold in another statistics object whose class k is this one's ``mapping[k]``."""
        keep = np.flatnonzero(other.counts_ > 0)
        idx = mapping[keep]
        n_a, n_b = self.counts_[idx].astype(np.float64), other.counts_[keep].astype(np.float64)
        total = n_a + n_b
        delta = other.means_[keep] - self.means_[idx]
        scatter = self.within_scatter() + other.within_scatter() + (delta.T * (n_a * n_b / total)) @ delta
        self.means_[idx] += delta * (n_b / total)[:, None]
        self.counts_[idx] += other.counts_[keep]
        self.refs_ = self.means_.copy()
        self.shifted_ = scatter

    def grand_mean(self) -> np.ndarray:
        return (self.counts_[:, None] * self.means_).sum(axis=0) / max(self.n, 1)

    def total_scatter(self) -> np.ndarray:
        """sum over rows of (x - mu)(x - mu)^T: within plus between-class scatter."""
        d = self.means_ - self.grand_mean()
        return self.within_scatter() + (d.T * self.counts_) @ d
