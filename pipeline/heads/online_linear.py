"""Row-by-row linear classifiers on numpy arrays that follow River's math exactly.

:class:`OnlineLinearModel` is ``StandardScaler | LogisticRegression`` (one-vs-rest
beyond two classes) or ``StandardScaler | SoftmaxRegression`` with River's
updates: Welford running mean and variance, the log loss with River's
overflow branches, SGD or Adam with River's defaults and bias correction, one
optimizer state per class (a class that arrives late starts at step 0), the
intercept learning rate, L2 and gradient clipping. State is kept in dense
arrays, so one row costs a handful of vector operations instead of a Python
loop over features. :class:`FastLinearHead` puts it behind the head interface.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Hashable, Sequence

import numpy as np

from pipeline.errors import HeadError
from pipeline.heads.base import Head
from pipeline.heads.defaults import LR_DEFAULT_TEXT, default_lr
from pipeline.heads.registry import Capabilities, Option, register

_P_MIN, _P_MAX = 1e-15, 1 - 1e-15


@functools.cache
def _dger() -> Any:
    """BLAS' rank-1 update, imported when a head first learns (scipy.linalg takes ~0.5 s to import)."""
    from scipy.linalg.blas import dger

    return dger


def _sigmoid(raw: np.ndarray) -> np.ndarray:
    """River's ``utils.math.sigmoid``: exactly 0 below -30 and 1 above 30."""
    with np.errstate(over="ignore"):
        p = 1.0 / (1.0 + np.exp(-raw))
    p[raw < -30] = 0.0
    p[raw > 30] = 1.0
    return p


def _log_gradient(raw: np.ndarray, sign: np.ndarray) -> np.ndarray:
    """River's ``optim.losses.Log().gradient`` for one row, vectorised over classifiers."""
    z = raw * sign
    with np.errstate(over="ignore"):
        g = -sign / (np.exp(z) + 1.0)
        big = z > 18.0
        if big.any():
            g[big] = np.exp(-z[big]) * -sign[big]
    small = z < -18.0
    if small.any():
        g[small] = -sign[small]
    return g


def _log_gradient_one(raw: float, positive: bool) -> float:
    y = 1 if positive else -1
    z = raw * y
    if z > 18.0:
        return math.exp(-z) * -y
    if z < -18.0:
        return -y
    return -y / (math.exp(z) + 1.0)


class OnlineLinearModel:
    state_schema = {"n_classes": "count", "count": "count", "W": "array[*,*]", "b": "array[*]", "t": "array[*]",
                    "mean": "array[*]", "var": "array[*]", "std": "array[*]", "M": "array?[*,*]",
                    "V": "array?[*,*]"}  # and _check_state (pipeline.heads.state_check)

    def _check_state(self, dims: dict[str, int]) -> None:
        if self.n_classes != dims["C"]:
            raise ValueError(f"n_classes is {self.n_classes}; the head has {dims['C']} classes")
        rows = min(self.n_classes, 1) if self.binary else self.n_classes
        if self.W.shape[0] != rows or self.b.shape != (rows,) or self.t.shape != (rows,):
            raise ValueError(f"weights of shapes W {self.W.shape}, b {self.b.shape}, t {self.t.shape}; expected "
                             f"{rows} rows for {self.n_classes} classes")
        if rows and (self.W.shape[1] != dims["D"] or any(a.shape != (dims["D"],) for a in (self.mean, self.var,
                                                                                           self.std))):
            raise ValueError(f"weights of {self.W.shape[1]} features and a scaler of {self.mean.shape[0]}; the head "
                             f"has {dims['D']}")
        for name in ("M", "V"):
            moment = getattr(self, name, None)
            if moment is not None and moment.shape != self.W.shape:
                raise ValueError(f"{name} has shape {moment.shape}; expected the weights' {self.W.shape}")
    """The numeric state and updates; classes are column indices 0..K-1 in arrival order."""

    def __init__(self, kind: str = "logreg", optimizer: str = "sgd", lr: float | None = 0.01, l2: float = 0.0,
                 scale: bool = True, intercept_lr: float | None = None, beta_1: float = 0.9,
                 beta_2: float = 0.999, eps: float = 1e-8, clip_gradient: float = 1e12):
        if kind not in ("logreg", "softmax"):
            raise HeadError(f"unknown linear model {kind!r}; expected logreg or softmax")
        if optimizer not in ("sgd", "adam"):
            raise HeadError(f"unknown optimizer {optimizer!r}; expected sgd or adam")
        # lr=None: the default rule (pipeline.heads.defaults), applied once the feature count is known
        self.kind, self.optimizer, self.l2, self.scale = kind, optimizer, float(l2), scale
        self.lr: float | None = None if lr is None else float(lr)
        self.intercept_lr: float | None = intercept_lr if intercept_lr is None else float(intercept_lr)
        if self.lr is not None and self.intercept_lr is None:
            self.intercept_lr = self.lr
        self.beta_1, self.beta_2, self.eps, self.clip = beta_1, beta_2, eps, clip_gradient
        self.n_classes = 0
        self.dim: int | None = None  # the arrays below are sized by _init on the first rows
        self.W, self.b, self.t = np.zeros((0, 0)), np.zeros(0), np.zeros(0, np.int64)
        self.M: np.ndarray | None = None  # Adam's moments, like W
        self.V: np.ndarray | None = None
        self.count = 0
        self.mean, self.var, self.std = np.zeros(0), np.zeros(0), np.zeros(0)

    # -- state -----------------------------------------------------------------
    def _init(self, dim: int) -> None:
        self.dim = dim
        if self.lr is None:
            self.lr = default_lr(self.optimizer, dim)
        if self.intercept_lr is None:
            self.intercept_lr = self.lr
        self.W = np.zeros((0, dim))
        self.b = np.zeros(0)
        self.t = np.zeros(0, np.int64)
        if self.optimizer == "adam":
            self.M, self.V = np.zeros((0, dim)), np.zeros((0, dim))
        self.mean, self.var = np.zeros(dim), np.zeros(dim)
        self.std = np.full(dim, np.inf)

    def _moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Adam's ``(M, V)``, which exist from ``_init`` on."""
        if self.M is None or self.V is None:
            raise HeadError(f"the {self.optimizer} optimizer keeps no Adam moments")
        return self.M, self.V

    def _rates(self) -> tuple[float, float]:
        """(lr, intercept_lr), which exist from ``_init`` on."""
        if self.lr is None or self.intercept_lr is None:
            raise HeadError("the learning rate is set by the first rows; none has been seen")
        return self.lr, self.intercept_lr

    def _append_rows(self, W: np.ndarray, b: np.ndarray, t: np.ndarray, M: np.ndarray, V: np.ndarray) -> None:
        self.W = np.vstack([self.W, W])
        self.b = np.concatenate([self.b, b])
        self.t = np.concatenate([self.t, t])
        if self.optimizer == "adam":
            old_M, old_V = self._moments()
            self.M, self.V = np.vstack([old_M, M]), np.vstack([old_V, V])

    @property
    def binary(self) -> bool:
        return self.kind == "logreg" and self.n_classes <= 2

    def add_class(self) -> None:
        """A new class at index ``n_classes``: a new weight row (softmax, one-vs-rest)."""
        zeros = np.zeros((1, self.W.shape[1]))
        if self.kind == "logreg" and self.n_classes == 2:
            # binary -> one-vs-rest: the first class's classifier mirrors the binary one
            w, b, t = self.W[0], self.b[0], self.t[0]
            self.W, self.b, self.t = np.stack([-w, w]), np.array([-b, b]), np.array([t, t])
            if self.optimizer == "adam":
                M, V = self._moments()
                self.M, self.V = np.stack([-M[0], M[0]]), np.stack([V[0], V[0]])
        if not (self.kind == "logreg" and self.n_classes == 1):  # binary keeps a single row
            self._append_rows(zeros, np.zeros(1), np.zeros(1, np.int64), zeros, zeros)
        self.n_classes += 1

    # -- scaling ---------------------------------------------------------------
    def _learn_scaler(self, x: np.ndarray) -> None:
        self.count += 1
        old = self.mean.copy()
        self.mean += (x - old) / self.count
        self.var += ((x - old) * (x - self.mean) - self.var) / self.count
        std = np.sqrt(self.var)
        std[self.var == 0] = np.inf  # River maps zero-variance features to 0
        self.std = std

    def transform(self, X: np.ndarray) -> np.ndarray:
        return (X - self.mean) / self.std if self.scale else np.asarray(X, np.float64)

    # -- prediction --------------------------------------------------------------
    def decision(self, Z: np.ndarray) -> np.ndarray:
        """Raw scores (n, rows of W) on scaled inputs."""
        return Z @ self.W.T + self.b

    def proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities (n, n_classes) as River's ``predict_proba_one`` gives them."""
        n = len(X)
        if self.n_classes == 0:
            return np.zeros((n, 0))
        raw = self.decision(self.transform(X))
        if self.kind == "softmax":
            z = raw - raw.max(axis=1, keepdims=True)
            e = np.exp(z)
            return e / e.sum(axis=1, keepdims=True)
        if self.n_classes == 1:
            return np.ones((n, 1))
        p = _sigmoid(raw.ravel() if self.binary else raw.reshape(-1))
        if self.binary:
            return np.column_stack([1.0 - p, p])
        p = p.reshape(n, -1)
        total = p.sum(axis=1, keepdims=True)
        return np.divide(p, total, out=np.full_like(p, 1.0 / p.shape[1]), where=total > 0)

    def predict_index(self, X: np.ndarray) -> np.ndarray:
        proba = self.proba(X)
        if self.binary and self.n_classes == 2:
            return (proba[:, 1] > proba[:, 0]).astype(np.int64)
        return np.argmax(proba, axis=1) if proba.shape[1] else np.full(len(X), -1)

    # -- learning ------------------------------------------------------------------
    def fit_rows(self, X: np.ndarray, ks: np.ndarray, predict: bool = False) -> np.ndarray | None:
        """Learn rows one at a time (``learn_one``); optionally predict each row first.

        ``ks`` are class indices; an index equal to ``n_classes`` is a new class,
        added at that row exactly as River adds it.
        """
        X = np.asarray(X, np.float64)
        if self.dim is None:
            self._init(X.shape[1])
        preds = np.full(len(X), -1, np.int64) if predict else None
        sgd = self.optimizer == "sgd"
        (lr, ilr), l2, clip = self._rates(), self.l2, self.clip
        b1, b2, eps = self.beta_1, self.beta_2, self.eps
        softmax = self.kind == "softmax"
        for r in range(len(X)):
            x = X[r]
            k = int(ks[r])
            if preds is not None and self.n_classes:  # predict=True
                z = (x - self.mean) / self.std if self.scale else x
                raw = self.W @ z + self.b
                if softmax or not self.binary:
                    preds[r] = int(np.argmax(raw if softmax else _sigmoid(raw)))
                elif self.n_classes == 1:
                    preds[r] = 0
                else:
                    p1 = 1.0 / (1.0 + math.exp(-raw[0])) if -30 <= raw[0] <= 30 else float(raw[0] > 30)
                    preds[r] = int(p1 > 1.0 - p1)
            if self.scale:  # River's pipeline: the scaler learns the row, then transforms it
                self._learn_scaler(x)
                z = (x - self.mean) / self.std
            else:
                z = x
            if softmax:
                raw = self.W @ z
                p = np.zeros(self.n_classes + (k == self.n_classes))
                if len(raw):
                    e = np.exp(raw - raw.max())
                    p[:len(raw)] = e / e.sum()
                if k == self.n_classes:
                    self.add_class()  # River: a new label's probability is 0 in this step
                g = np.clip(p, _P_MIN, _P_MAX)
                g[k] -= 1.0
            else:
                if k == self.n_classes:
                    self.add_class()
                if self.binary:
                    lg = _log_gradient_one(float(self.W[0] @ z) + self.b[0], k == 1)
                    g = np.array([min(max(lg, -clip), clip)])
                else:
                    sign = np.full(self.n_classes, -1.0)
                    sign[k] = 1.0
                    g = np.clip(_log_gradient(self.W @ z + self.b, sign), -clip, clip)
                self.b -= ilr * g
            if sgd:
                self._sgd_outer(g, z, lr, l2)
            else:
                G = np.multiply.outer(g, z, out=self._scratch())
                if l2:
                    G += l2 * self.W
                self._step(G, sgd, lr, b1, b2, eps)
        return preds

    def _sgd_outer(self, g: np.ndarray, z: np.ndarray, lr: float, l2: float) -> None:
        """SGD on every class row: W -= lr * (g z^T + l2 W), as one in-place BLAS rank-1 update."""
        if l2:
            self.W *= 1.0 - lr * l2
        _dger()(-lr, z, g, a=self.W.T, overwrite_a=1)  # W.T is a Fortran-ordered view: updated in place
        self.t += 1

    def _scratch(self) -> np.ndarray:
        """A reusable (classes, dim) buffer: allocating megabytes per row costs more than the update."""
        buf = getattr(self, "_buf", None)
        if buf is None or buf.shape != self.W.shape:
            buf = self._buf = np.empty_like(self.W)
        return buf

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_buf", None)
        return state

    def _step(self, G: np.ndarray, sgd: bool, lr: float, b1: float, b2: float, eps: float) -> None:
        if sgd:
            G *= lr
            self.W -= G
        else:
            t = self.t + 1
            rate = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
            M, V = self._moments()
            M *= b1
            M += (1 - b1) * G
            V *= b2
            V += (1 - b2) * np.square(G)
            self.W -= rate[:, None] * M / (np.sqrt(V) + eps)
        self.t += 1

    def fit_batch(self, X: np.ndarray, ks: np.ndarray) -> None:
        """One ``learn_many`` step (logreg only): River's mini-batch scaler and mean-gradient update."""
        if self.kind != "logreg":
            raise HeadError("SoftmaxRegression has no mini-batch (learn_many) update in River; "
                            "drop --batch-size to learn row by row")
        X = np.asarray(X, np.float64)
        if self.dim is None:
            self._init(X.shape[1])
        for k in sorted(set(ks.tolist())):
            while k >= self.n_classes:
                self.add_class()
        if self.scale:
            n_new = len(X)
            new_mean = X.mean(axis=0)
            new_var = np.einsum("ij,ij->j", X, X) / n_new - new_mean ** 2
            a, bb = self.count / (self.count + n_new), n_new / (self.count + n_new)
            self.var = a * self.var + bb * new_var + a * bb * (self.mean - new_mean) ** 2
            self.mean = a * self.mean + bb * new_mean
            self.count += n_new
            std = np.sqrt(self.var)
            self.std = np.where(self.var == 0, np.inf, std)
            Z = X - self.mean
            np.divide(Z, std, where=std > 0, out=Z)  # transform_many keeps x - mean where std is 0
        else:
            Z = X
        if self.binary:
            sign = np.where(ks == 1, 1.0, -1.0)[:, None]
        else:
            sign = np.where(ks[:, None] == np.arange(self.n_classes)[None, :], 1.0, -1.0)
        raw = Z @ self.W.T + self.b
        lg = np.clip(-sign / (np.exp(raw * sign) + 1.0), -self.clip, self.clip)
        G = lg.T @ Z / len(Z)
        if self.l2:
            G += self.l2 * self.W
        lr, ilr = self._rates()
        self.b -= ilr * lg.mean(axis=0)
        self._step(G, self.optimizer == "sgd", lr, self.beta_1, self.beta_2, self.eps)


ENGINES = ("numpy", "river")
SGD_IS_SEQUENTIAL = "SGD: every update starts from the weights the previous row left"
LINEAR_OPTIONS = (
    Option("engine", str, "numpy", "numpy: fast estimators with River's exact math; river: River's own estimators",
           choices=ENGINES),
    Option("optimizer", str, "sgd", "optimizer", choices=("sgd", "adam")),
    Option("lr", float, None, f"learning rate [default: {LR_DEFAULT_TEXT}]", low=0.0, low_open=True),
    Option("l2", float, 0.0, "L2 penalty", low=0.0),
    Option("scale", bool, True, "StandardScaler before the linear model (--no-scale to drop it)",
           flag="--scale/--no-scale"),
)
BATCH_OPTION = Option("batch_size", int, None, "mini-batches of N rows (River learn_many) instead of row by row",
                      low=1, high=2**31 - 1)


class FastLinearHead(Head):
    """``logreg`` / ``softmax`` on :class:`OnlineLinearModel` (``--engine numpy``, the default)."""

    state_schema = {"model_": "object"}  # pipeline.heads.state_check

    def __init__(self, kind: str = "logreg", optimizer: str = "sgd", lr: float | None = None, l2: float = 0.0,
                 scale: bool = True, batch_size: int | None = None):
        super().__init__()
        self.name = self.kind = kind
        self.batch_size = batch_size
        self.model_ = OnlineLinearModel(kind, optimizer, lr, l2, scale)
        if kind == "softmax" and batch_size:
            raise HeadError("River's SoftmaxRegression has no learn_many (mini-batch) method: "
                            "drop --batch-size to learn row by row, or use --head logreg")

    @classmethod
    def build(cls, n_features: int | None = None, **options: Any) -> Head:
        """The numpy engine, or River's own estimators with ``engine="river"``."""
        engine = options.pop("engine")
        if options.get("lr") is None:  # else None: set by the first rows, the same rule
            options["lr"] = default_lr(options["optimizer"], n_features)
        if engine == "river":
            from pipeline.heads.river_engine import RiverLinearHead

            head: Head = RiverLinearHead(cls.name, **options)
            head.capabilities = cls.capabilities
            return head
        return cls(**options)  # capabilities stay on the class: model files keep only state

    def settings(self) -> dict[str, Any]:
        m = self.model_
        out = {"engine": "numpy", "optimizer": m.optimizer, "lr": m.lr, "l2": m.l2, "scale": m.scale}
        return out if self.kind == "softmax" else {**out, "batch_size": self.batch_size}

    def _indices(self, y: Sequence[Hashable] | np.ndarray) -> np.ndarray:
        # classes_ grows in order of first appearance; the model adds each at its first row
        return self._class_indices(y)

    def _learn(self, X: np.ndarray, y: np.ndarray, paths: Sequence[str] | None = None) -> None:
        ks = self._indices(y)
        if self.batch_size:
            for s in range(0, len(X), self.batch_size):
                self.model_.fit_batch(X[s:s + self.batch_size], ks[s:s + self.batch_size])
        else:
            self.model_.fit_rows(X, ks)

    def progressive_fit(self, X: np.ndarray, y: Sequence[Hashable] | np.ndarray,
                        paths: Sequence[str] | None = None) -> np.ndarray:
        X = self._check_X(X)
        if self.batch_size:
            return super().progressive_fit(X, y, paths)
        ks = self._indices(y)
        idx = self.model_.fit_rows(X, ks, predict=True)
        self.rows_seen_ += len(X)
        labels = np.array(self.classes_ + [None], dtype=object)
        return labels[idx]

    def _proba(self, X: np.ndarray) -> np.ndarray:
        return self.model_.proba(X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        self._check_fitted()
        return np.array(self.classes_, dtype=object)[self.model_.predict_index(self._check_X(X))]


@register
class LogRegHead(FastLinearHead):
    """``StandardScaler | LogisticRegression`` (one-vs-rest beyond two classes)."""

    name = "logreg"
    summary = "River logistic regression (one-vs-rest beyond two classes)"
    options = (*LINEAR_OPTIONS, BATCH_OPTION)
    capabilities = Capabilities(row_by_row=True, engines=ENGINES, class_incremental="grows a classifier per new class",
                                sequential=SGD_IS_SEQUENTIAL)

    def __init__(self, optimizer: str = "sgd", lr: float | None = None, l2: float = 0.0, scale: bool = True,
                 batch_size: int | None = None):
        super().__init__("logreg", optimizer, lr, l2, scale, batch_size)


@register
class SoftmaxHead(FastLinearHead):
    """``StandardScaler | SoftmaxRegression``; River's softmax has no mini-batch method."""

    name = "softmax"
    summary = "River softmax regression"
    options = LINEAR_OPTIONS
    capabilities = Capabilities(row_by_row=True, engines=ENGINES, class_incremental="grows a row per new class",
                                sequential=SGD_IS_SEQUENTIAL)

    def __init__(self, optimizer: str = "sgd", lr: float | None = None, l2: float = 0.0, scale: bool = True):
        super().__init__("softmax", optimizer, lr, l2, scale)
