"""Progressive validation in blocks, for heads whose prediction rule is solved from statistics.

Progressive validation predicts each row before learning it. Re-solving a
head for every chunk would cost far more than learning, so the rows are
predicted in blocks with a rule solved from all rows before the block, and
the rule is refreshed when the rows seen have grown by ``progressive_refresh``
(doubled) *and* by at least ``min_refresh_gap`` rows per dimension of the
statistics (or a class appeared): O(log rows) refreshes in all. Held-out
evaluation is always exact; this loop only decides what the progressive
predictions are made with.

A head using it says how to count its rows and dimensions, how to solve a
rule (:meth:`_progressive_rule`, the refresh hook) and how to score rows with
a rule (:meth:`_progressive_scores`); the loop lives here once.
"""

from __future__ import annotations

from typing import Any, Hashable, Sequence

import numpy as np


class BlockProgressive:
    """Mixin for :class:`~pipeline.heads.base.Head` subclasses: ``progressive_fit`` in refreshed blocks."""

    progressive_refresh = 2.0
    min_refresh_gap = 1.0  # rows per statistics dimension between two progressive solves
    first_block = 8   # rows predicted with nothing learnt yet (None, counted as errors)
    # (rule, rows seen when it was solved, classes it knows); None: not solved yet
    _progressive_state: tuple[Any, int, int] | None = None

    # -- hooks -----------------------------------------------------------------
    def _rows_learnt(self) -> int:
        raise NotImplementedError

    def _refresh_dim(self) -> int:
        """The dimension a solve is cubic in."""
        raise NotImplementedError

    def _progressive_rule(self) -> Any:
        """Solve the rule progressive validation predicts with, from the statistics learnt so far."""
        raise NotImplementedError

    def _progressive_input(self, X: np.ndarray) -> Any:
        """Rows as the rule scores them (features, a transform), computed once per block."""
        return X

    def _progressive_scores(self, rule: Any, Z: Any) -> np.ndarray:
        """``(rows, classes the rule knows)`` scores, highest best."""
        raise NotImplementedError

    def _progressive_learn(self, X: np.ndarray, Z: Any, y: np.ndarray, paths: Sequence[str] | None) -> None:
        """Learn a block (``Z``: its :meth:`_progressive_input`, which a head may reuse)."""
        self.partial_fit(X, y, paths)  # type: ignore[attr-defined]

    # -- the loop ----------------------------------------------------------------
    def progressive_fit(self, X: np.ndarray, y: Sequence[Hashable] | np.ndarray,
                        paths: Sequence[str] | None = None) -> np.ndarray:
        X = self._check_X(X)  # type: ignore[attr-defined]
        y = np.asarray(y, dtype=object)
        preds = np.full(len(X), None, dtype=object)
        start = 0
        while start < len(X):
            classes: list[Hashable] = self.classes_  # type: ignore[attr-defined]
            block = X[start:start + self.first_block] if not classes else X[start:]
            Z = None
            if classes:
                p, n = self._progressive_state, self._rows_learnt()
                if p is None or n >= self._next_refresh(p[1]) or len(classes) != p[2]:
                    p = self._progressive_state = (self._progressive_rule(), n, len(classes))
                block = X[start:start + max(1, self._next_refresh(p[1]) - n)]
                Z = self._progressive_input(block)
                scores = self._progressive_scores(p[0], Z)
                preds[start:start + len(block)] = np.array(classes[: p[2]], dtype=object)[np.argmax(scores, axis=1)]
            stop = start + len(block)
            part = None if paths is None else paths[start:stop]
            if Z is None:
                self.partial_fit(block, y[start:stop], part)  # type: ignore[attr-defined]
            else:
                self._progressive_learn(block, Z, y[start:stop], part)
            start = stop
        return preds

    def _next_refresh(self, solved_at: int) -> int:
        """Rows seen at which progressive validation solves again, after solving at ``solved_at`` rows."""
        gap = int(np.ceil(self.min_refresh_gap * self._refresh_dim()))
        return max(int(np.ceil(self.progressive_refresh * solved_at)), solved_at + gap)
