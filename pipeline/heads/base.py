"""The interface every head implements, and helpers they share.

Heads take arrays and know nothing of files: ``partial_fit(X, y)`` with ``X``
a float array of shape (n, d) and ``y`` an array of class labels (any
hashable, strings in this project). Classes may appear at any time; the
columns of ``predict_proba`` follow ``classes_`` (order of first appearance).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Hashable, Sequence

import numpy as np

from pipeline.errors import HeadError
from pipeline.heads.registry import Capabilities, Option

if TYPE_CHECKING:
    from typing import Self

    from pipeline.plugins import Plugin


class Head:
    """Base class: subclasses implement ``_learn`` and ``_proba``.

    A registered head also declares ``name``, ``summary``, ``options`` and
    ``capabilities`` (see :mod:`pipeline.heads.registry`).

    Hooks the training loop calls, in order, for every task: ``before_task``
    (not again when a run resumes mid-task: keep what it makes in the head, it
    is saved with the model), ``progressive_fit`` / ``partial_fit`` on each
    chunk then ``after_chunk``, and ``end_task`` (the "after task" hook).
    """

    name = "head"
    summary = ""
    options: tuple[Option, ...] = ()
    capabilities = Capabilities()
    # Classes of this package the head's state holds, beyond those shared by several heads (which
    # pipeline.state_codec lists): model files may hold them (pipeline.heads.registry.registered_classes).
    state_classes: tuple[type, ...] = ()

    @property
    def mergeable(self) -> bool:
        """Whether ``merge`` is exact: always (``capabilities.mergeable``) or with the options in
        ``capabilities.mergeable_when``."""
        caps = self.capabilities
        if caps.mergeable or not caps.mergeable_when:
            return caps.mergeable
        settings = self.settings()
        return all(settings.get(key) == value for key, value in caps.mergeable_when)

    @classmethod
    def build(cls, n_features: int | None = None, **options: Any) -> "Head":
        """Construct from validated options (see :func:`pipeline.heads.registry.make_head`)."""
        return cls(**options)

    def __init__(self) -> None:
        self.classes_: list[Hashable] = []
        self.n_features_in_: int | None = None
        self.rows_seen_ = 0

    # -- label bookkeeping -------------------------------------------------
    def _check_X(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim != 2:
            raise HeadError(f"{self.name}: expected a 2-d feature array, got shape {X.shape}")
        if self.n_features_in_ is None:
            self.n_features_in_ = X.shape[1]
        elif X.shape[1] != self.n_features_in_:
            raise HeadError(f"{self.name}: expected {self.n_features_in_} features per row, got {X.shape[1]}")
        return X

    def _class_indices(self, y: Sequence[Hashable] | np.ndarray, grow: bool = True) -> np.ndarray:
        """Column index of each label, appending unseen labels to ``classes_``."""
        lookup = {c: i for i, c in enumerate(self.classes_)}
        out = np.empty(len(y), np.int64)
        for k, label in enumerate(y):
            idx = lookup.get(label)
            if idx is None:
                if not grow:
                    idx = -1
                else:
                    idx = lookup[label] = len(self.classes_)
                    self.classes_.append(label)
                    self._add_class(label)
            out[k] = idx
        return out

    def _add_class(self, label: Hashable) -> None:
        """Grow the state for a new class (a column, a mean, ...)."""

    def _check_fitted(self) -> None:
        if not self.classes_:
            raise HeadError(f"{self.name} has not learnt anything yet: call partial_fit before predicting")

    # -- public API ----------------------------------------------------------
    def partial_fit(self, X: np.ndarray, y: Sequence[Hashable] | np.ndarray,
                    paths: Sequence[str] | None = None) -> "Head":
        """Learn rows ``X`` with labels ``y``; ``paths`` (optional) name their source images."""
        X = self._check_X(X)
        if len(X) != len(y):
            raise HeadError(f"{self.name}: X has {len(X)} rows but y has {len(y)} labels")
        if len(X):
            self._learn(X, np.asarray(y, dtype=object), paths)
            self.rows_seen_ += len(X)
        return self

    def progressive_fit(self, X: np.ndarray, y: Sequence[Hashable] | np.ndarray,
                        paths: Sequence[str] | None = None) -> np.ndarray:
        """Predict each row, then learn it; returns the predictions (None before any class).

        Heads that learn a chunk at a time predict the whole chunk before learning it.
        """
        X = self._check_X(X)
        preds = self.predict(X) if self.classes_ else np.full(len(X), None, dtype=object)
        self.partial_fit(X, y, paths)
        return preds

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        self._check_fitted()
        return self._proba(self._check_X(X))

    def predict(self, X: np.ndarray) -> np.ndarray:
        proba = self.predict_proba(X)
        return np.array(self.classes_, dtype=object)[np.argmax(proba, axis=1)]

    def before_task(self, task: int, classes: Sequence[Hashable]) -> None:
        """Called before the first chunk of each task (task index, the task's classes)."""

    def after_chunk(self, X: np.ndarray, y: np.ndarray, paths: Sequence[str] | None) -> None:
        """Called after each chunk was learnt (the rows as learnt, replayed rows included)."""

    def end_task(self) -> None:
        """Called after each task (class-incremental) and at the end of training."""

    def merge(self, other: Self) -> Self:
        """Fold in a model of the same kind trained on other rows (heads whose ``mergeable`` is True)."""
        raise HeadError(f"{self.name} models cannot be merged exactly")

    def finite_state(self) -> bool:
        """True when every number the head keeps is finite (a diverged model is never saved)."""
        return _all_finite(self.__dict__, depth=4)

    def settings(self) -> dict[str, Any]:
        """Constructor settings, recorded in saved models."""
        return {}

    def describe(self) -> dict[str, Any]:
        """Extra facts about the fitted state, for the run summary and metrics."""
        return {}

    # subclasses
    def _learn(self, X: np.ndarray, y: np.ndarray, paths: Sequence[str] | None) -> None:
        raise NotImplementedError

    def _proba(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def softmax_rows(scores: np.ndarray) -> np.ndarray:
    z = scores - scores.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def _all_finite(obj: Any, depth: int) -> bool:
    """Walk arrays, floats, containers and object attributes (to ``depth``) looking for NaN or inf."""
    if isinstance(obj, np.ndarray):
        return not np.issubdtype(obj.dtype, np.inexact) or bool(np.isfinite(obj).all())
    if isinstance(obj, float):
        return np.isfinite(obj)
    if depth <= 0 or isinstance(obj, (str, bytes, int, type)):
        return True
    if isinstance(obj, dict):
        return all(_all_finite(v, depth - 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(_all_finite(v, depth - 1) for v in obj[:10_000])
    state = getattr(obj, "__dict__", None)
    return True if state is None else _all_finite(state, depth - 1)
