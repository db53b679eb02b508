"""iCaRL's nearest-mean-of-exemplars classifier (Rebuffi et al., 2017), out of core.

While a task streams, each class keeps a running sum of its L2-normalised
features (its exact mean) and a bounded reservoir of candidates. At the end
of a task, herding picks each new class's exemplars from its candidates
within the memory budget (``memory // classes`` each) and older sets shrink by
cutting their herding order. A row is labelled with the class whose
normalised mean is nearest to its normalised feature (Algorithm 1):

- ``class_means="exemplar"``: the mean of the class's exemplars (iCaRL);
- ``class_means="exact"``: the exact running mean of every row streamed (the
  frozen-backbone prototype classifier; needs no exemplars to predict).

Probabilities are a softmax of ``-d^2 / (2 s^2)``, an isotropic Gaussian with
the pooled within-class spread ``s^2`` (same ranking as the nearest mean).

>>> import numpy as np
>>> head = NMEHead(memory=10)
>>> X = np.array([[1.0, 0.1], [0.9, 0.0], [0.0, 1.0], [0.1, 0.8]])
>>> head.partial_fit(X, ["a", "a", "b", "b"]).end_task()
>>> head.predict(np.array([[0.8, 0.2]])).tolist()
['a']
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Hashable, Sequence

import numpy as np

from pipeline.errors import HeadError
from pipeline.heads.base import Head, softmax_rows
from pipeline.heads.defaults import DEFAULT_MEMORY, DEFAULT_POOL_SIZE, MEMORY_OPTION, POOL_OPTION
from pipeline.heads.exemplars import ClassPools, ExemplarMemory, l2_normalise
from pipeline.heads.registry import Capabilities, Option, register

if TYPE_CHECKING:
    from typing import Self

__all__ = ["MEMORY_OPTION", "NMEHead", "POOL_OPTION"]  # the options' home is pipeline.heads.defaults


@register
class NMEHead(Head):
    name = "nme"
    summary = "iCaRL nearest-mean-of-exemplars"
    options = (
        MEMORY_OPTION,
        Option("class_means", str, "exemplar", "mean of the exemplars (iCaRL) or the exact running mean of every row",
               choices=("exemplar", "exact")),
        POOL_OPTION,
        Option("seed", int, 0, "seed of the reservoir samples", low=0, high=2**32 - 1, from_run=True),
    )
    capabilities = Capabilities(keeps_exemplars=True, class_incremental="adds a mean",
                                mergeable_when=(("class_means", "exact"),),
                                sequential="herding picks exemplars from the whole stream (use --class-means "
                                           "exact, whose means are sums)")

    state_schema = {"sums_": "array?[C,D]", "counts_": "array[C]", "memory_": "object"}  # pipeline.heads.state_check

    def _check_state(self, dims: dict[str, int]) -> None:
        if self.classes_ and self.sums_ is None:
            raise ValueError(f"sums_ is missing but the head knows {len(self.classes_)} classes")

    def __init__(self, memory: int = DEFAULT_MEMORY, class_means: str = "exemplar", pool_size: int = DEFAULT_POOL_SIZE,
                 seed: int = 0):
        super().__init__()
        if class_means not in ("exemplar", "exact"):
            raise HeadError(f"class_means must be 'exemplar' or 'exact', got {class_means!r}")
        if memory < 1 or pool_size < 1:
            raise HeadError(f"memory and pool_size must be positive, got {memory} and {pool_size}")
        self.memory, self.class_means, self.pool_size, self.seed = memory, class_means, pool_size, seed
        self.sums_: np.ndarray | None = None      # (classes, d) sums of normalised rows
        self.counts_ = np.zeros(0, np.int64)
        self.memory_ = ExemplarMemory(memory)
        self.pools_ = ClassPools(pool_size, seed)
        self._means: np.ndarray | None = None

    def settings(self) -> dict[str, Any]:
        return {"memory": self.memory, "class_means": self.class_means, "pool_size": self.pool_size, "seed": self.seed}

    def _add_class(self, label: Hashable) -> None:
        d = self.n_features_in_ or 0
        self.sums_ = np.zeros((0, d)) if self.sums_ is None else self.sums_
        self.sums_ = np.vstack([self.sums_, np.zeros((1, d))])
        self.counts_ = np.append(self.counts_, 0)

    def _sums(self) -> np.ndarray:
        """``sums_``, which exists once a class was seen."""
        if self.sums_ is None:
            raise HeadError(f"{self.name} has not learnt anything yet: call partial_fit first")
        return self.sums_

    def _learn(self, X: np.ndarray, y: np.ndarray, paths: Sequence[str] | None) -> None:
        ks = self._class_indices(y)
        Z = l2_normalise(X)
        np.add.at(self._sums(), ks, Z)
        self.counts_ += np.bincount(ks, minlength=len(self.classes_))
        self.pools_.add(X, y, paths)
        self._means = None

    def progressive_fit(self, X: np.ndarray, y: Sequence[Hashable] | np.ndarray,
                        paths: Sequence[str] | None = None) -> np.ndarray:
        """Row by row: predict each row with the means as they are, then add it to its class's mean."""
        X = self._check_X(X)
        y = np.asarray(y, dtype=object)
        Z = l2_normalise(X)
        preds = np.full(len(X), None, dtype=object)
        means = self.class_means_().copy() if self.classes_ else np.zeros((0, X.shape[1]))
        exemplar_based = {k for k, c in enumerate(self.classes_)
                          if self.class_means == "exemplar" and c in self.memory_.sets and len(self.memory_.sets[c].paths)}
        for r in range(len(X)):
            if len(means):
                preds[r] = self.classes_[int(np.argmax(means @ Z[r]))]
            k = int(self._class_indices([y[r]])[0])
            if k == len(means):
                means = np.vstack([means, np.zeros(X.shape[1])])
            sums = self._sums()  # a new class replaced the array
            sums[k] += Z[r]
            self.counts_[k] += 1
            if k not in exemplar_based:
                norm = np.linalg.norm(sums[k])
                means[k] = sums[k] / norm if norm > 0 else 0.0
        self.pools_.add(X, y, paths)
        self.rows_seen_ += len(X)
        self._means = None
        return preds

    def merge(self, other: Self) -> Self:
        """Fold in a model trained on other rows (``class_means="exact"`` only).

        The class sums and counts add, so the means, the spread and every
        prediction equal training on both. Herding candidates and exemplars are
        sampled from both models: the kept exemplars may differ from one run's.
        """
        if type(other) is not NMEHead or not self.mergeable or self.settings() != other.settings():
            raise HeadError("only nme models with --class-means exact and the same settings merge exactly; "
                            f"got {self.settings()} and {getattr(other, 'settings', dict)()}")
        if not other.rows_seen_:
            return self
        if self.n_features_in_ is None:
            self.n_features_in_ = other.n_features_in_
        elif other.n_features_in_ != self.n_features_in_:
            raise HeadError(f"cannot merge models of {self.n_features_in_} and {other.n_features_in_} features")
        ks = self._class_indices(other.classes_)
        sums = self._sums()
        sums[ks] += other._sums()
        self.counts_[ks] += other.counts_
        self.rows_seen_ += other.rows_seen_
        self.pools_.merge(other.pools_)
        if other.memory_.size:
            self.memory_.update({c: (s.X, s.paths) for c, s in other.memory_.sets.items()},
                                {c: sums[k] / max(1, self.counts_[k]) for k, c in enumerate(self.classes_)})
        self._means = None
        return self

    def end_task(self) -> None:
        """Herd exemplars for the classes that streamed since the last call."""
        if not len(self.pools_):
            return
        sums = self._sums()
        targets = {c: sums[k] / max(1, self.counts_[k]) for k, c in enumerate(self.classes_)}
        self.memory_.update(self.pools_.take(), targets)
        self._means = None

    def class_means_(self) -> np.ndarray:
        """Normalised class means, (classes, d); classes without exemplars yet use their exact mean."""
        if self._means is None:
            means = self._sums() / np.maximum(self.counts_, 1)[:, None]
            if self.class_means == "exemplar":
                for k, c in enumerate(self.classes_):
                    s = self.memory_.sets.get(c)
                    if s is not None and len(s.paths):
                        means[k] = l2_normalise(s.X).mean(axis=0)
            self._means = l2_normalise(means)
        return self._means

    def _spread(self) -> float:
        """Pooled within-class variance per dimension of the normalised rows: E|z - m|^2 / d."""
        n = self.counts_.sum()
        sums = self._sums()
        raw_means = sums / np.maximum(self.counts_, 1)[:, None]
        within = n - float((self.counts_ * np.einsum("ij,ij->i", raw_means, raw_means)).sum())
        return max(within / max(n, 1), 1e-6) / max(1, sums.shape[1])

    def _distances(self, X: np.ndarray) -> np.ndarray:
        Z = l2_normalise(X)
        M = self.class_means_()
        return np.maximum(2.0 - 2.0 * Z @ M.T, 0.0)

    def _proba(self, X: np.ndarray) -> np.ndarray:
        return softmax_rows(-self._distances(X) / (2.0 * self._spread()))

    def predict(self, X: np.ndarray) -> np.ndarray:
        self._check_fitted()
        return np.array(self.classes_, dtype=object)[np.argmin(self._distances(self._check_X(X)), axis=1)]

    def exemplar_paths(self) -> dict[Hashable, list[str]]:
        """Which images were kept, per class, in herding order."""
        return {c: list(s.paths) for c, s in self.memory_.sets.items()}

    def describe(self) -> dict[str, Any]:
        return {"memory_budget": self.memory, "exemplars_stored": self.memory_.size,
                "exemplars_per_class": {str(c): len(s.paths) for c, s in self.memory_.sets.items()},
                "class_means": self.class_means}
