"""Progressive validation in blocks, for heads whose prediction rule is solved from statistics.

Progressive validation predicts each row before learning it. Re-solving a
head for every chunk would cost far more than learning, so the rows are
predicted in blocks with a rule solved from all rows before the block
(never from the rows it predicts), refreshed when the rows seen have doubled
or a class appeared: O(log rows) refreshes in all.

Two kinds of refresh keep the cost a small share of learning (which is about
2 D^2 operations per row for D-dimensional statistics):

- *early* refreshes, while fewer than ``exact_from * D`` rows were seen,
  solve a cheap rule from the same statistics (the heads use their
  diagonal: per-feature variances instead of the covariance), O(C D) each;
- *exact* refreshes, from ``exact_from * D`` rows on, solve the head's own
  rule (a Cholesky factorisation, about D^3 / 3 operations), at least
  ``min_refresh_gap * D`` rows apart. With ``exact_from = 4`` the first one
  costs at most 1/24 of the learning's operations before it, and because
  they double, all of them together at most 1/12 of the learning up to the
  last one; a factorisation runs at a fraction of the speed of the learning's
  products (about a quarter on the shared 2-core machine), and 2 D measured
  22-24% of training on a 20,000-row store, so the margin is needed.

Solves (progressive refreshes here, and the heads' cached solves) factorise
with one BLAS thread up to ``ONE_THREAD_DIM`` dimensions
(:func:`blas_threads_for`): OpenBLAS's threaded Cholesky of a 1,280 x 1,280
matrix took 2.5 s against 0.22 s on one thread on the shared 2-core machine
(its threads spin while other processes hold the cores), while the
learning's large products keep their threads.

Held-out evaluation is always exact; this loop only decides what the
progressive predictions are made with, and each head documents its rule.

A head using it says how to count its rows and dimensions, how to solve a
rule (:meth:`_progressive_rule`, the refresh hook) and how to score rows with
a rule (:meth:`_progressive_scores`); the loop lives here once.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, ContextManager, Hashable, Sequence

import numpy as np

ONE_THREAD_DIM = 4096  # solves of statistics up to this dimension factorise on one BLAS thread


def blas_threads_for(dim: int) -> ContextManager[Any]:
    """One BLAS thread for a factorisation of a ``dim`` x ``dim`` matrix up to ``ONE_THREAD_DIM``."""
    if dim > ONE_THREAD_DIM:
        return nullcontext()
    import scipy.linalg  # noqa: F401  # load its BLAS first: a limit covers only the libraries loaded when it is set
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # scikit-learn's dependency

    return threadpool_limits(limits=1, user_api="blas")


class BlockProgressive:
    """Mixin for :class:`~pipeline.heads.base.Head` subclasses: ``progressive_fit`` in refreshed blocks."""

    progressive_refresh = 2.0
    min_refresh_gap = 1.0  # rows per statistics dimension between two exact progressive solves
    exact_from = 4.0  # rows per statistics dimension from which progressive refreshes solve the exact rule
    first_block = 8   # rows predicted with nothing learnt yet (None, counted as errors)
    # (rule, rows seen when it was solved, classes it knows); None: not solved yet
    _progressive_state: tuple[Any, int, int] | None = None

    # -- hooks -----------------------------------------------------------------
    def _rows_learnt(self) -> int:
        raise NotImplementedError

    def _refresh_dim(self) -> int:
        """The dimension a solve is cubic in."""
        raise NotImplementedError

    def _progressive_rule(self, exact: bool) -> Any:
        """Solve the rule progressive validation predicts with, from the statistics learnt so far.

        ``exact=False``: an early refresh, which should cost O(C D) (see the module docstring).
        """
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
                    with blas_threads_for(self._refresh_dim()):
                        rule = self._progressive_rule(n >= self._exact_at())
                    p = self._progressive_state = (rule, n, len(classes))
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

    def _exact_at(self) -> int:
        """Rows seen from which progressive refreshes solve the exact rule."""
        return int(np.ceil(self.exact_from * self._refresh_dim()))

    def _next_refresh(self, solved_at: int) -> int:
        """Rows seen at which progressive validation solves again, after solving at ``solved_at`` rows."""
        doubled = max(int(np.ceil(self.progressive_refresh * solved_at)), solved_at + 1)
        exact_at = self._exact_at()
        if solved_at < exact_at:  # early refreshes, up to the first exact one
            return min(doubled, exact_at)
        return max(doubled, solved_at + int(np.ceil(self.min_refresh_gap * self._refresh_dim())))
