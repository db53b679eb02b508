"""Sufficient statistics of labelled rows: per-class counts and means, within-class scatter.

Updated a chunk at a time in float64 with the pairwise merge of Chan, Golub
and LeVeque (the chunk's own centred scatter, one ``X^T X`` product, plus a
rank-C correction), so the result does not depend on row order, chunking or
how the data was split, and two statistics merge exactly. The streaming
LDA and ridge heads are functions of these statistics.
"""

from __future__ import annotations

import numpy as np


class ClassStatistics:
    """``counts_`` (C,), ``means_`` (C, D), ``scatter_`` (D, D) = sum over rows of (x - mu_y)(x - mu_y)^T."""

    def __init__(self, dim: int):
        self.dim = dim
        self.counts_ = np.zeros(0, np.int64)
        self.means_ = np.zeros((0, dim))
        self.scatter_ = np.zeros((dim, dim))

    @property
    def n(self) -> int:
        return int(self.counts_.sum())

    def add_class(self) -> None:
        self.counts_ = np.append(self.counts_, 0)
        self.means_ = np.vstack([self.means_, np.zeros((1, self.dim))])

    def update(self, X: np.ndarray, ks: np.ndarray) -> None:
        """Fold in rows ``X`` of classes ``ks`` (indices into the class axis)."""
        X = np.asarray(X, np.float64)
        present, inverse, nb = np.unique(ks, return_inverse=True, return_counts=True)
        sums = np.zeros((len(present), self.dim))
        np.add.at(sums, inverse, X)
        mb = sums / nb[:, None]
        Xc = X - mb[inverse]
        self._merge(present, nb, mb, Xc.T @ Xc)

    def _merge(self, present: np.ndarray, nb: np.ndarray, mb: np.ndarray, scatter_b: np.ndarray) -> None:
        n_old = self.counts_[present].astype(np.float64)
        total = n_old + nb
        delta = mb - self.means_[present]
        weight = n_old * nb / total
        self.scatter_ += scatter_b
        self.scatter_ += (delta.T * weight) @ delta
        self.means_[present] += delta * (nb / total)[:, None]
        self.counts_[present] += np.asarray(nb, np.int64)

    def merge(self, other: "ClassStatistics", mapping: np.ndarray) -> None:
        """Fold in another statistics object whose class k is this one's ``mapping[k]``."""
        keep = other.counts_ > 0
        self._merge(mapping[keep], other.counts_[keep].astype(np.float64), other.means_[keep], other.scatter_)

    def grand_mean(self) -> np.ndarray:
        return (self.counts_[:, None] * self.means_).sum(axis=0) / max(self.n, 1)

    def total_scatter(self) -> np.ndarray:
        """sum over rows of (x - mu)(x - mu)^T: within plus between-class scatter."""
        d = self.means_ - self.grand_mean()
        return self.scatter_ + (d.T * self.counts_) @ d
