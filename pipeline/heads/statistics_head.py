"""What the exemplar-free heads share: a linear rule computed from :class:`ClassStatistics`.

Subclasses say how to turn the statistics into ``(coef, intercept, setting)``
(``_solve``) and, optionally, how rows are mapped before counting
(``_features``); learning, caching, prediction and exact merging live here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Hashable, Sequence

import numpy as np

from pipeline.errors import HeadError
from pipeline.heads.base import Head
from pipeline.heads.class_stats import ClassStatistics

if TYPE_CHECKING:
    from typing import Self


class StatisticsHead(Head):

    # Progressive validation predicts rows before learning them. Solving costs about D^3/3
    # (0.15 s at D=2048, 1 s with GCV), so rows are predicted in blocks with the solution of
    # all rows before the block, refreshed when the rows seen have grown by this factor: blocks
    # follow the rows seen, not the chunk size, and cost O(log rows) solves in all.
    # Held-out evaluation is always exact.
    progressive_refresh = 2.0
    first_block = 8   # rows predicted with nothing learnt yet (None, counted as errors)

    def __init__(self) -> None:
        super().__init__()
        self.stats_: ClassStatistics | None = None
        self._cache: tuple[np.ndarray, np.ndarray, float] | None = None
        self._progressive: tuple[np.ndarray, np.ndarray, int, int] | None = None

    # -- hooks -----------------------------------------------------------------
    def _features(self, X: np.ndarray) -> np.ndarray:
        return X

    def _stats_dim(self) -> int:
        return self.n_features_in_ or 0

    def _solve(self) -> tuple[np.ndarray, np.ndarray, float]:
        raise NotImplementedError

    # -- learning --------------------------------------------------------------
    def _add_class(self, label: Hashable) -> None:
        if self.stats_ is None:
            self.stats_ = ClassStatistics(self._stats_dim())
        self.stats_.add_class()

    def _fitted_stats(self) -> ClassStatistics:
        """The statistics, which exist once a class was seen."""
        if self.stats_ is None:
            raise HeadError(f"{self.name} has not learnt anything yet: call partial_fit first")
        return self.stats_

    def _learn(self, X: np.ndarray, y: np.ndarray, paths: Sequence[str] | None) -> None:
        ks = self._class_indices(y)
        self._fitted_stats().update(self._features(X), ks)
        self._cache = None

    # -- prediction --------------------------------------------------------------
    def _coefficients(self) -> tuple[np.ndarray, np.ndarray, float]:
        """``(coef (C, D), intercept (C,), the shrinkage or lambda used)``, cached until new rows."""
        if self._cache is None:
            self._cache = self._solve()
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
        return np.asarray(self._features(self._check_X(X)), np.float64) @ coef.T + intercept

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.array(self.classes_, dtype=object)[np.argmax(self.decision_function(X), axis=1)]

    def progressive_fit(self, X: np.ndarray, y: Sequence[Hashable] | np.ndarray,
                        paths: Sequence[str] | None = None) -> np.ndarray:
        X = self._check_X(X)
        y = np.asarray(y, dtype=object)
        preds = np.full(len(X), None, dtype=object)
        start = 0
        while start < len(X):
            if not self.classes_:
                stop = min(len(X), start + self.first_block)
            else:
                p, n = self._progressive, self._fitted_stats().n
                if p is None or n >= self.progressive_refresh * p[2] or len(self.classes_) != p[3]:
                    coef, intercept, _ = self._coefficients()
                    p = self._progressive = (coef, intercept, n, len(self.classes_))
                stop = min(len(X), start + max(1, int(np.ceil(self.progressive_refresh * p[2])) - n))
                scores = np.asarray(self._features(X[start:stop]), np.float64) @ p[0].T + p[1]
                preds[start:stop] = np.array(self.classes_[: p[3]], dtype=object)[np.argmax(scores, axis=1)]
            self.partial_fit(X[start:stop], y[start:stop], None if paths is None else paths[start:stop])
            start = stop
        return preds

    # -- merging -----------------------------------------------------------------
    def _check_mergeable(self, other: StatisticsHead) -> None:
        if type(self) is not type(other):
            raise HeadError(f"cannot merge a {other.name} model into a {self.name} model")
        if self.settings() != other.settings():
            raise HeadError(f"cannot merge models with different settings: {self.settings()} vs {other.settings()}")
        if None not in (self.n_features_in_, other.n_features_in_) and self.n_features_in_ != other.n_features_in_:
            raise HeadError(f"cannot merge models of {self.n_features_in_} and {other.n_features_in_} features")

    def merge(self, other: Self) -> Self:
        """Fold in a model trained on other rows: the result equals training on both."""
        self._check_mergeable(other)
        if self.n_features_in_ is None:
            self.n_features_in_ = other.n_features_in_
        if other.stats_ is None:  # the other model learnt nothing
            return self
        mapping = self._class_indices(other.classes_)
        self._fitted_stats().merge(other.stats_, mapping)
        self.rows_seen_ += other.rows_seen_
        self._cache = None
        return self
