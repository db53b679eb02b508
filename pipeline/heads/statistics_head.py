"""What the exemplar-free heads share: a linear rule computed from :class:`ClassStatistics`.

Subclasses say how to turn the statistics into ``(coef, intercept, setting)``
(``_solve``) and, optionally, how rows are mapped before counting
(``_features``); learning, caching, prediction and exact merging live here.

Solves are lazy: learning only updates the statistics and bumps ``version_``;
the first prediction after a change solves, and the solution is reused until
the statistics change again (merging counts as a change). Progressive
validation refreshes its solution when the rows seen have doubled *and* grown
by at least ``min_refresh_gap`` rows per statistics dimension, so its solves
cost a bounded share of learning: a solve is about D^3/3 operations and the
update about D^2 per row, so a gap of D rows caps the solves at about a third
of the update work, and O(log rows) solves in all.
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
    min_refresh_gap = 1.0  # rows per statistics dimension between two progressive solves
    first_block = 8   # rows predicted with nothing learnt yet (None, counted as errors)
    version_ = 0      # bumped whenever the statistics change (class default for models saved before)
    _solution: tuple[int, np.ndarray, np.ndarray, float] | None = None
    state_schema = {"version_": "count", "stats_": "object?"}  # pipeline.heads.state_check

    def __init__(self) -> None:
        super().__init__()
        self.stats_: ClassStatistics | None = None
        self.version_ = 0
        self._solution = None
        self._progressive: tuple[np.ndarray, np.ndarray, int, int] | None = None

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
        ks = self._class_indices(y)
        self._fitted_stats().update(self._features(X), ks)
        self.version_ += 1

    # -- prediction --------------------------------------------------------------
    def _coefficients(self) -> tuple[np.ndarray, np.ndarray, float]:
        """``(coef (C, D), intercept (C,), the shrinkage or lambda used)``, solved once per ``version_``."""
        cached = self._solution
        if cached is None or cached[0] != self.version_:
            cached = self._solution = (self.version_, *self._solve())
        return cached[1], cached[2], cached[3]

    def _progressive_coefficients(self) -> tuple[np.ndarray, np.ndarray]:
        """The rule progressive validation predicts with: the exact one unless a head has a cheaper one."""
        coef, intercept, _ = self._coefficients()
        return coef, intercept

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
                if p is None or n >= self._next_refresh(p[2]) or len(self.classes_) != p[3]:
                    coef, intercept = self._progressive_coefficients()
                    p = self._progressive = (coef, intercept, n, len(self.classes_))
                stop = min(len(X), start + max(1, self._next_refresh(p[2]) - n))
                scores = np.asarray(self._features(X[start:stop]), np.float64) @ p[0].T + p[1]
                preds[start:stop] = np.array(self.classes_[: p[3]], dtype=object)[np.argmax(scores, axis=1)]
            self.partial_fit(X[start:stop], y[start:stop], None if paths is None else paths[start:stop])
            start = stop
        return preds

    def _next_refresh(self, solved_at: int) -> int:
        """Rows seen at which progressive validation solves again, after solving at ``solved_at`` rows."""
        gap = int(np.ceil(self.min_refresh_gap * self._fitted_stats().dim))
        return max(int(np.ceil(self.progressive_refresh * solved_at)), solved_at + gap)

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
