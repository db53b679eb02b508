"""The River side of the linear heads: River's own estimators as heads, and the numpy heads as River estimators.

:class:`RiverLinearHead` (``--engine river``) lives in :mod:`pipeline.heads.river_engine` and is
re-exported here. :class:`FastLogisticRegression` and :class:`FastSoftmaxRegression` are the other
direction: the numpy heads of :mod:`pipeline.heads.online_linear` behind River's ``Classifier`` API, for
River users (``learn_one`` / ``predict_proba_one``). Kept apart so that neither module imports the
other's importer (no import cycle).
"""

from __future__ import annotations

from typing import Any, Hashable

import numpy as np
from river import base

from pipeline.heads.online_linear import FastLinearHead
from pipeline.heads.river_engine import OPTIMIZERS, RiverLinearHead, make_optimizer

__all__ = ["FastLogisticRegression", "FastSoftmaxRegression", "OPTIMIZERS", "RiverLinearHead", "make_optimizer"]


class _FastRiverClassifier(base.Classifier):
    """River classifier API over :class:`~pipeline.heads.online_linear.FastLinearHead`.

    Takes River's dict rows (``learn_one`` / ``predict_proba_one``) and numpy
    rows (``learn_row`` / ``predict_proba_row``, the fast path). The standard
    scaler is fused in (``scale=True``), so use it *instead of*
    ``StandardScaler() | LogisticRegression()``. Features must be dense: every
    row carries the keys of the first row.
    """

    _kind = "logreg"

    def __init__(self, optimizer: str = "sgd", lr: float = 0.01, l2: float = 0.0, scale: bool = True):
        self.optimizer, self.lr, self.l2, self.scale = optimizer, lr, l2, scale
        self._head = FastLinearHead(self._kind, optimizer, lr, l2, scale)
        self._keys: list[Hashable] | None = None

    @property
    def _multiclass(self) -> bool:
        return True

    def _row(self, x: dict) -> np.ndarray:
        if self._keys is None:
            self._keys = list(x)
        elif len(x) != len(self._keys):
            raise ValueError(f"expected the {len(self._keys)} features of the first row, got {len(x)}: "
                             "these estimators take dense features")
        return np.fromiter((x[k] for k in self._keys), np.float64, len(self._keys))[None, :]

    def learn_row(self, x: np.ndarray, y: Hashable) -> None:
        self._head.partial_fit(np.asarray(x, np.float64).reshape(1, -1), [y])

    def predict_proba_row(self, x: np.ndarray) -> dict[Hashable, float]:
        if not self._head.classes_:
            return {}
        p = self._head.predict_proba(np.asarray(x, np.float64).reshape(1, -1))[0]
        return dict(zip(self._head.classes_, p.tolist()))

    def learn_one(self, x: dict, y: Hashable) -> None:
        row = self._row(x)
        if self._kind == "logreg" and isinstance(y, bool) and not self._head.classes_:
            self._prime_bool(row.shape[1])
        self._head.partial_fit(row, [y])

    def _prime_bool(self, dim: int) -> None:
        """Boolean targets: False is the negative class, True the positive one, as in River."""
        model = self._head.model_
        model._init(dim)
        model.add_class()
        model.add_class()
        self._head.classes_ = [False, True]

    # River's annotations say labels are bool | str | int; River and these classes take any hashable.
    def predict_proba_one(self, x: dict, **kwargs: Any) -> dict[Hashable, float]:  # type: ignore[override]
        return self.predict_proba_row(self._row(x)) if self._head.classes_ else {}

    def predict_one(self, x: dict, **kwargs: Any) -> Hashable | None:  # type: ignore[override]
        if not self._head.classes_:
            return False if self._kind == "logreg" else None  # River's binary model says False untrained
        return self._head.predict(self._row(x))[0]


class FastLogisticRegression(_FastRiverClassifier):
    """``StandardScaler | LogisticRegression`` (one-vs-rest beyond two classes) on numpy state.

    >>> from river import datasets, evaluate, metrics
    >>> model = FastLogisticRegression(lr=0.01)
    >>> evaluate.progressive_val_score(datasets.Phishing(), model, metrics.Accuracy())
    Accuracy: 89.28%
    """

    _kind = "logreg"


class FastSoftmaxRegression(_FastRiverClassifier):
    """``StandardScaler | SoftmaxRegression`` on numpy state (same updates as River's)."""

    _kind = "softmax"
