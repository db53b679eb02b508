"""River's own linear classifiers behind the head interface (``--engine river``).

``logreg`` is ``StandardScaler | LogisticRegression`` for two classes; when a
third class arrives it becomes ``StandardScaler | OneVsRestClassifier`` without
losing what it learnt (the negative class's classifier is the exact mirror of
the binary one: for the log loss, SGD and Adam updates are odd in the label).
``softmax`` is ``StandardScaler | SoftmaxRegression``. Rows are fed one at a
time (``learn_one``) unless ``batch_size`` asks for ``learn_many``.
"""

from __future__ import annotations

import copy
from typing import Any, Hashable, Sequence

import numpy as np
from river import compose, linear_model, multiclass, optim, preprocessing
from river.utils import VectorDict

from pipeline.errors import HeadError
from pipeline.heads.base import Head
from pipeline.heads.defaults import default_lr

OPTIMIZERS = ("sgd", "adam")


def make_optimizer(name: str, lr: float) -> optim.base.Optimizer:
    if name == "sgd":
        return optim.SGD(lr)
    if name == "adam":
        return optim.Adam(lr)
    raise HeadError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")


def _mirror(model: linear_model.LogisticRegression) -> linear_model.LogisticRegression:
    """The classifier of the opposite label: weights, intercept and Adam's first moment negated."""
    twin = copy.deepcopy(model)
    twin._weights = VectorDict({k: -v for k, v in model._weights.to_dict().items()})
    twin.intercept = -model.intercept
    opt = twin.optimizer
    if isinstance(opt, optim.Adam) and opt.m is not None:
        opt.m = VectorDict({k: -v for k, v in opt.m.to_dict().items()}) if isinstance(opt.m, VectorDict) \
            else type(opt.m)(float, {k: -v for k, v in opt.m.items()})
    return twin


class RiverLinearHead(Head):
    """A River pipeline (``StandardScaler`` first by default) behind the head interface."""

    def __init__(self, kind: str = "logreg", optimizer: str = "sgd", lr: float | None = None, l2: float = 0.0,
                 scale: bool = True, batch_size: int | None = None):
        super().__init__()
        if kind not in ("logreg", "softmax"):
            raise HeadError(f"unknown River head {kind!r}")
        if kind == "softmax" and batch_size:
            raise HeadError("River's SoftmaxRegression has no learn_many (mini-batch) method: "
                            "drop --batch-size to learn row by row, or use --head logreg")
        self.name, self.kind = kind, kind
        self.optimizer, self.lr, self.l2, self.scale, self.batch_size = optimizer, lr, l2, scale, batch_size
        make_optimizer(optimizer, 1.0 if lr is None else lr)  # refuses an unknown optimizer now
        self.model_: Any = None
        self._names: list[str] = []

    def settings(self) -> dict[str, Any]:
        out = {"engine": "river", "optimizer": self.optimizer, "lr": self.lr, "l2": self.l2, "scale": self.scale}
        return out if self.kind == "softmax" else {**out, "batch_size": self.batch_size}

    def _classifier(self) -> Any:
        if self.lr is None:  # the default rule, once the feature count is known
            self.lr = default_lr(self.optimizer, self.n_features_in_)
        if self.lr is None:
            raise HeadError("the learning rate is set by the first rows; none has been seen")
        opt = make_optimizer(self.optimizer, self.lr)
        if self.kind == "softmax":
            return linear_model.SoftmaxRegression(optimizer=opt, l2=self.l2)
        return linear_model.LogisticRegression(optimizer=opt, l2=self.l2, intercept_lr=self.lr)

    def _pipeline(self, final: Any) -> Any:
        return compose.Pipeline(preprocessing.StandardScaler(), final) if self.scale else compose.Pipeline(final)

    @property
    def _final(self) -> Any:
        return list(self.model_.steps.values())[-1]

    @property
    def _binary(self) -> bool:
        return self.kind == "logreg" and isinstance(self._final, linear_model.LogisticRegression)

    def _add_class(self, label: Hashable) -> None:
        if self.model_ is None:
            self.model_ = self._pipeline(self._classifier())
        if self.kind == "logreg" and len(self.classes_) == 3 and self._binary:
            binary = self._final
            ovr: Any = multiclass.OneVsRestClassifier(self._classifier())  # River types labels bool | str | int
            ovr.classifiers[self.classes_[0]] = _mirror(binary)
            ovr.classifiers[self.classes_[1]] = binary
            steps = list(self.model_.steps.values())
            self.model_ = compose.Pipeline(*steps[:-1], ovr)

    def _target(self, label: Hashable) -> Any:
        """River's target: a bool for the binary model (True = the second class seen)."""
        if self._binary:
            return len(self.classes_) > 1 and label == self.classes_[1]
        return label

    def _dicts(self, X: np.ndarray) -> list[dict[str, float]]:
        if len(self._names) != X.shape[1]:
            self._names = [f"f{i}" for i in range(X.shape[1])]
        names = self._names
        return [dict(zip(names, row)) for row in X.astype(np.float64).tolist()]

    def _frame(self, X: np.ndarray) -> Any:
        import pandas as pd

        return pd.DataFrame(X.astype(np.float64), columns=[f"f{i}" for i in range(X.shape[1])])

    def _learn(self, X: np.ndarray, y: np.ndarray, paths: Sequence[str] | None = None) -> None:
        self._class_indices(y)
        if self.batch_size:
            import pandas as pd

            for start in range(0, len(X), self.batch_size):
                sl = slice(start, start + self.batch_size)
                targets = pd.Series([self._target(label) for label in y[sl]])
                self.model_.learn_many(self._frame(X[sl]), targets)
            return
        learn = self.model_.learn_one
        for x, label in zip(self._dicts(X), y):
            learn(x, self._target(label))

    def progressive_fit(self, X: np.ndarray, y: Sequence[Hashable] | np.ndarray,
                        paths: Sequence[str] | None = None) -> np.ndarray:
        X = self._check_X(X)
        if self.batch_size:
            return super().progressive_fit(X, y, paths)
        preds = np.full(len(X), None, dtype=object)
        for k, (x, label) in enumerate(zip(self._dicts(X), y)):
            self._class_indices([label])
            if self.rows_seen_:
                proba = self.model_.predict_proba_one(x)
                preds[k] = self._best(proba)
            self.model_.learn_one(x, self._target(label))
            self.rows_seen_ += 1
        return preds

    def _best(self, proba: dict) -> Hashable:
        if self._binary:
            if len(self.classes_) == 1:
                return self.classes_[0]
            return self.classes_[1] if proba.get(True, 0.0) > proba.get(False, 0.0) else self.classes_[0]
        return max(proba, key=proba.__getitem__) if proba else None

    def _proba(self, X: np.ndarray) -> np.ndarray:
        out = np.zeros((len(X), len(self.classes_)))
        col = {c: i for i, c in enumerate(self.classes_)}
        for k, x in enumerate(self._dicts(X)):
            proba = self.model_.predict_proba_one(x)
            if self._binary:
                p = proba.get(True, 0.0)
                if len(self.classes_) == 1:
                    out[k, 0] = 1.0
                else:
                    out[k, 0], out[k, 1] = 1.0 - p, p
            else:
                for label, p in proba.items():
                    out[k, col[label]] = p
        return out

    def predict(self, X: np.ndarray) -> np.ndarray:
        self._check_fitted()
        return np.array([self._best(self.model_.predict_proba_one(x)) for x in self._dicts(self._check_X(X))],
                        dtype=object)
