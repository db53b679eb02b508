"""iCaRL (Rebuffi et al., 2017) on the trainable head.

- Representation learning (the paper's Algorithm 3): every new row and every
  exemplar is trained with sigmoid binary cross-entropy over all classes; the
  targets are the labels for the new classes and, for the old classes, the
  frozen previous head's sigmoid outputs (distillation). Exemplars are mixed
  into every mini-batch (the same number as new rows).
- Exemplars (Algorithms 4-5): after each task, herding in the head's learned
  embedding (the last hidden layer, L2-normalised; the standardised input
  with ``hidden=0``) picks ``memory // classes`` exemplars of each new class
  from a reservoir of its rows (``pool_size``); older sets are cut to the same share.
- Classification (Algorithm 1): nearest mean of exemplars, the means taken in
  the current embedding. Until a class has exemplars (during its first task)
  the head's own output is used.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.heads.cl.net import forward, weighted_mean
from pipeline.heads.cl.replay import MemoryMethod
from pipeline.heads.defaults import DEFAULT_MEMORY, DEFAULT_POOL_SIZE
from pipeline.heads.exemplars import l2_normalise


class ICaRL(MemoryMethod):
    name = "icarl"

    def __init__(self, memory: int = DEFAULT_MEMORY, pool_size: int = DEFAULT_POOL_SIZE, seed: int = 0):
        super().__init__(memory, pool_size, seed)
        self.old_params_: list[np.ndarray] | None = None

    def embed(self, head: Any, X: np.ndarray) -> np.ndarray:
        """The learned embedding of raw rows, L2-normalised."""
        emb, _ = forward(head.params_, head.standardise(X))
        return l2_normalise(emb)

    def after_task(self, head: Any) -> None:
        self.memory_.update(self.pools_.take(), embed=lambda X: self.embed(head, X))
        self.old_params_ = [p.copy() for p in head.params_]
        head.cache_.clear()

    def consts(self, head: Any) -> dict[str, Any]:
        return {} if self.old_params_ is None else {"old": self.old_params_}

    def loss(self, ops: Any, params: list[Any], batch: dict[str, Any], consts: dict[str, Any]) -> Any:
        x, y, w = batch["x"], batch["y"], batch["w"]
        if "xr" in batch:
            x = ops.concatenate([x, batch["xr"]], axis=0)
            y = ops.concatenate([y, batch["yr"]], axis=0)
            w = ops.concatenate([w, ops.ones_like(batch["yr"], dtype="float32")], axis=0)
        _, logits = forward(params, x, ops.relu)
        target = ops.one_hot(y, logits.shape[-1])
        if "old" in consts:
            n_old = consts["old"][-1].shape[0]
            _, old_logits = forward(consts["old"], x, ops.relu)
            target = ops.concatenate([ops.sigmoid(old_logits), target[:, n_old:]], axis=1)
        bce = ops.sum(ops.relu(logits) - logits * target + ops.log1p(ops.exp(-ops.abs(logits))), axis=-1)
        return weighted_mean(ops, bce, w)

    def class_means(self, head: Any) -> np.ndarray | None:
        """Normalised exemplar means in the current embedding, (classes, width); None until every class has exemplars."""
        if "means" not in head.cache_:
            sets = [s for s in map(self.memory_.sets.get, head.classes_) if s is not None and len(s.paths)]
            if len(sets) < len(head.classes_):
                return None
            head.cache_["means"] = l2_normalise(np.stack([self.embed(head, s.X).mean(axis=0) for s in sets]))
        return head.cache_["means"]

    def proba(self, head: Any, Z: np.ndarray) -> np.ndarray | None:
        means = self.class_means(head)
        if means is None:
            return None
        emb, _ = forward(head.params_, Z)
        sim = l2_normalise(emb) @ means.T
        # softmax of -d^2 = 2 sim - 2 with unit-norm vectors: same ranking as the nearest mean
        e = np.exp(10.0 * (sim - sim.max(axis=1, keepdims=True)))
        return e / e.sum(axis=1, keepdims=True)
