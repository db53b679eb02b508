"""What the exemplar-free heads share: a linear rule computed from :class:`ClassStatistics`.

Subclasses say how to turn the statistics into ``(coef, intercept, setting)``
(``_solve``) and, optionally, how rows are mapped before counting
(``_features``); learning, caching, prediction and exact merging live here.

Solves are lazy: learning only updates the statistics and bumps ``version_``;
the first prediction after a change solves, and the solution is reused until
the statistics change again (merging counts as a change). Progressive
validation predicts in blocks with a rule refreshed as rows grow
(:mod:`pipeline.heads.progressive`); a block's features are computed once,
for scoring and for learning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Hashable, Sequence

import numpy as np

from pipeline.errors import HeadError
from pipeline.heads.base import Head
from pipeline.heads.class_stats import ClassStatistics
from pipeline.heads.progressive import BlockProgressive, blas_threads_for

if TYPE_CHECKING:
    from typing import Self


class StatisticsHead(BlockProgressive, Head):

    version_ = 0      # bumped whenever the statistics change (class default for models saved before)
    _solution: tuple[int, np.ndarray, np.ndarray, float] | None = None
    state_schema = {"version_": "count", "stats_": "object?"}  # pipeline.heads.state_check

    def __init__(self) -> None:
        super().__init__()
        self.stats_: ClassStatistics | None = None
        self.version_ = 0
        self._solution = None

    def _check_state(self, dims: dict[str, int]) -> None:
        """A loaded state: statistics of every class, in the head's dimension (pipeline.heads.state_check)."""
        if self.stats_ is None:
            if self.classes_:
                raise ValueError(f"stats_ is missing but the head knows {len(self.classes_)} classes")
        elif self.stats_.dim != self._stats_dim():
            raise ValueError(f"stats_ has {self.stats_.dim} dimensions; this head's are {self._stats_dim()}")

    # -- hooks -----------------------------------------------------------------
    def _features(self, X: np.ndarray) -> np.ndarray:
        return X

    def _stats_dim(self) -> int:
        return self.n_features_in_ or 0

    def _solve(self) -> tuple[np.ndarray, np.ndarray, float]:
        raise NotImplementedError

    # -- learning --------------------------------------------------------------
    def _new_statistics(self) -> ClassStatistics:
        return ClassStatistics(self._stats_dim())

    def _add_class(self, label: Hashable) -> None:
        if self.stats_ is None:
            self.stats_ = self._new_statistics()
        self.stats_.add_class()
        self.version_ += 1

    def _fitted_stats(self) -> ClassStatistics:
        """The statistics, which exist once a class was seen."""
        if self.stats_ is None:
            raise HeadError(f"{self.name} has not learnt anything yet: call partial_fit first")
        return self.stats_

    def _learn(self, X: np.ndarray, y: np.ndarray, paths: Sequence[str] | None) -> None:
        self._learn_features(self._features(X), y, X)

    def _learn_features(self, Z: np.ndarray, y: np.ndarray, X: np.ndarray) -> None:
        """Learn rows whose features are ``Z`` (``X``: the rows as given)."""
        ks = self._class_indices(y)
        self._fitted_stats().update(Z, ks)
        self.version_ += 1

    # -- prediction --------------------------------------------------------------
    def _coefficients(self) -> tuple[np.ndarray, np.ndarray, float]:
        """``(coef (C, D), intercept (C,), the shrinkage or lambda used)``, solved once per ``version_``."""
        cached = self._solution
        if cached is None or cached[0] != self.version_:
            with blas_threads_for(self._fitted_stats().dim):
                solved = self._solve()
            cached = self._solution = (self.version_, *solved)
        return cached[1], cached[2], cached[3]

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

    # -- progressive validation (the loop: pipeline.heads.progressive) -----------
    def _rows_learnt(self) -> int:
        return self._fitted_stats().n

    def _refresh_dim(self) -> int:
        return self._fitted_stats().dim

    def _progressive_rule(self, exact: bool) -> tuple[np.ndarray, np.ndarray]:
        """``(coef, intercept)`` progressive validation predicts with: the exact rule, or the diagonal one."""
        if not exact:
            return self._diagonal_rule()
        coef, intercept, _ = self._coefficients()
        return coef, intercept

    def _diagonal_rule(self) -> tuple[np.ndarray, np.ndarray]:
        """The head's rule with its covariance or Gram matrix replaced by the diagonal, O(C D)."""
        raise NotImplementedError

    def _progressive_input(self, X: np.ndarray) -> np.ndarray:
        return self._features(X)

    def _progressive_scores(self, rule: tuple[np.ndarray, np.ndarray], Z: np.ndarray) -> np.ndarray:
        return np.asarray(Z, np.float64) @ rule[0].T + rule[1]

    def _progressive_learn(self, X: np.ndarray, Z: np.ndarray, y: np.ndarray, paths: Sequence[str] | None) -> None:
        self._learn_features(Z, y, X)  # the block's features, computed once for scoring and learning
        self.rows_seen_ += len(X)

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
        self.version_ += 1
        return self
