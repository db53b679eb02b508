"""Metrics with bounded memory: an accumulator of (true, predicted) counts.

Held-out streams can be larger than memory, so predictions are folded into
counts as they come; per-class reports are then computed by scikit-learn
from the counts (as sample weights), which equals computing them on the rows.
Also the continual-learning metrics of an accuracy matrix.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Hashable, Sequence

import numpy as np

_EPS = 1e-15


class Evaluation:
    """Fold in ``(y_true, proba)`` chunks, then ``report()``.

    ``proba`` columns follow ``classes`` (the head's classes at that time). A
    true label the head has never seen counts as an error and is reported.
    """

    def __init__(self) -> None:
        self.pairs: Counter[tuple[Hashable, Hashable]] = Counter()
        self.log_loss_sum = 0.0
        self.rows = 0
        self.unseen: Counter[Hashable] = Counter()

    def update(self, y_true: Sequence[Hashable] | np.ndarray, proba: np.ndarray, classes: Sequence[Hashable]) -> None:
        y_true = list(y_true)
        if not y_true:
            return
        classes = list(classes)
        if proba.shape[1] == 0:
            pred = [None] * len(y_true)
            p_true = np.zeros(len(y_true))
        else:
            pred = [classes[i] for i in np.argmax(proba, axis=1)]
            col = {c: i for i, c in enumerate(classes)}
            idx = np.array([col.get(t, -1) for t in y_true])
            p_true = np.where(idx >= 0, proba[np.arange(len(y_true)), np.maximum(idx, 0)], 0.0)
            for t, i in zip(y_true, idx):
                if i < 0:
                    self.unseen[t] += 1
        self.pairs.update(zip(y_true, pred))
        self.log_loss_sum += float(-np.log(np.clip(p_true, _EPS, 1.0)).sum())
        self.rows += len(y_true)

    @property
    def correct(self) -> int:
        return sum(n for (t, p), n in self.pairs.items() if t == p)

    @property
    def accuracy(self) -> float:
        return self.correct / self.rows if self.rows else float("nan")

    @property
    def log_loss(self) -> float:
        """Mean negative log probability of the true label (clipped at 1e-15; unseen labels count as 1e-15)."""
        return self.log_loss_sum / self.rows if self.rows else float("nan")

    def accuracy_on(self, labels: set[Hashable]) -> float:
        total = sum(n for (t, _), n in self.pairs.items() if t in labels)
        good = sum(n for (t, p), n in self.pairs.items() if t in labels and t == p)
        return good / total if total else float("nan")

    def report(self) -> dict[str, Any]:
        if not self.rows:
            return {"rows": 0, "accuracy": None}
        from sklearn.metrics import confusion_matrix, precision_recall_fscore_support  # seconds to import

        keys = list(self.pairs)
        y_t = [str(t) for t, _ in keys]
        y_p = ["<none>" if p is None else str(p) for _, p in keys]
        w = np.array([self.pairs[k] for k in keys], float)
        labels = sorted(set(y_t) | (set(y_p) - {"<none>"}))
        prec, rec, f1, support = precision_recall_fscore_support(
            y_t, y_p, labels=labels, sample_weight=w, zero_division=0)
        cm = confusion_matrix(y_t, y_p, labels=labels, sample_weight=w)
        return {
            "rows": self.rows,
            "accuracy": self.accuracy,
            "log_loss": self.log_loss_sum / self.rows if self.log_loss_sum else None,
            "per_class": {lab: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                          for lab, p, r, f, s in zip(labels, prec, rec, f1, support)},
            "confusion": {"labels": labels, "matrix": cm.astype(int).tolist()},
            "unseen_labels": {str(k): v for k, v in self.unseen.items()},
        }


def continual_metrics(matrix: Sequence[Sequence[float | None]]) -> dict[str, Any]:
    """Metrics of an accuracy matrix ``R[i][j]`` = accuracy on task j's classes after task i (j <= i).

    - average incremental accuracy: mean over i of the accuracy on all classes
      seen after task i is *not* derivable from R alone, so it is passed in by
      the caller; here: mean over i of the mean of R[i][:i+1] (task-balanced).
    - forgetting: mean over j < T-1 of max_{i<T-1} R[i][j] - R[T-1][j].
    - backward transfer: mean over j < T-1 of R[T-1][j] - R[j][j].
    """
    R = np.array([[np.nan if v is None else v for v in row] for row in matrix], float)
    T = len(R)
    per_step = [float(np.nanmean(R[i, : i + 1])) for i in range(T)]
    out: dict[str, Any] = {"task_balanced_incremental_accuracy": float(np.mean(per_step))}
    if T > 1:
        forgetting = [float(np.nanmax(R[: T - 1, j]) - R[T - 1, j]) for j in range(T - 1)]
        bwt = [float(R[T - 1, j] - R[j, j]) for j in range(T - 1)]
        out["forgetting"] = float(np.mean(forgetting))
        out["forgetting_per_task"] = forgetting
        out["backward_transfer"] = float(np.mean(bwt))
    else:
        out["forgetting"] = 0.0
        out["forgetting_per_task"] = []
        out["backward_transfer"] = 0.0
    return out
