"""Online EWC (Kirkpatrick et al. 2017; online form of Schwarz et al. 2018).

After each task the diagonal Fisher information of the head's parameters is
estimated on a reservoir sample of the task's rows (``pool_size`` per class)
and accumulated, ``F <- gamma F + F_task``; the parameters are anchored
(``theta*``). Later tasks add ``ewc_lambda / 2 * sum F (theta - theta*)^2``
to the loss. Output columns of classes added later have zero Fisher: free.

Each task's Fisher is scaled to a mean of 1 over the head's parameters
before it is added, so ``ewc_lambda`` weighs the penalty against the mean
cross-entropy in units that do not depend on how sure the head is. The raw
Fisher of a head fitted to its task is tiny (its predictions on the task's
rows are near one-hot, so every squared gradient is near zero: 1e-13 for the
hidden weights and 1e-9 for the outputs measured on MobileNetV2 features),
which left any lambda up to 1e8 without effect; the normalised Fisher keeps
the relative importance of the parameters, which is what EWC protects by.

The Fisher is the true one (labels drawn from the model's own prediction,
one draw per row, seeded), from exact per-row gradients computed in numpy:
for a dense layer with input ``a`` and output gradient ``d`` the squared
per-row weight gradient is ``a^2 d^2``, so the diagonal is
``(A^2)^T (D^2) / n``, no per-row backward passes.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np

from pipeline.heads.cl.base import Method
from pipeline.heads.cl.net import pad_like, softmax
from pipeline.heads.exemplars import ClassPools


def fisher_diagonal(params: list[np.ndarray], Z: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Diagonal Fisher of the ReLU MLP ``params`` on standardised rows ``Z`` (one per parameter)."""
    acts = [np.asarray(Z, np.float64)]
    for i in range(0, len(params) - 2, 2):
        acts.append(np.maximum(acts[-1] @ params[i] + params[i + 1], 0.0))
    p = softmax(acts[-1] @ params[-2] + params[-1])
    drawn = (p.cumsum(axis=1) > rng.random((len(p), 1))).argmax(axis=1)
    delta = p.copy()
    delta[np.arange(len(p)), drawn] -= 1.0     # d(-log p_drawn) / d logits
    n = len(Z)
    out: list[np.ndarray] = []
    for layer in range(len(params) // 2 - 1, -1, -1):
        a = acts[layer]
        out = [((a * a).T @ (delta * delta) / n).astype(np.float32), (delta * delta).mean(axis=0).astype(np.float32)] + out
        if layer:
            delta = (delta @ params[2 * layer].T) * (a > 0)
    return out


def normalised(fisher: list[np.ndarray]) -> list[np.ndarray]:
    """The Fisher scaled to a mean of 1 over all its entries (unchanged when it is all zero)."""
    total = sum(float(f.sum(dtype=np.float64)) for f in fisher)
    size = sum(f.size for f in fisher)
    return [f / np.float32(total / size) for f in fisher] if total > 0 else fisher


def ewc_penalty(ops: Any, params: list[Any], fisher: list[Any], anchor: list[Any]) -> Any:
    """``sum F (theta - theta*)^2`` over every parameter (without the lambda / 2)."""
    return sum(ops.sum(f * (p - a) ** 2) for p, f, a in zip(params, fisher, anchor))


class EWC(Method):
    name = "ewc"

    def __init__(self, ewc_lambda: float = 1.0, gamma: float = 1.0, pool_size: int = 1000, seed: int = 0):
        self.ewc_lambda, self.gamma, self.pool_size, self.seed = ewc_lambda, gamma, pool_size, seed
        self.fisher_: list[np.ndarray] | None = None
        self.anchor_: list[np.ndarray] | None = None
        self.tasks_ = 0
        self.pools_ = ClassPools(pool_size, seed)
        self.fisher_normalised_ = True

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A model saved before the Fisher was normalised (issue 24) keeps the penalty it trained with.

        Its accumulated Fisher is raw (tiny) and its ``ewc_lambda`` the old default 1e5: the Fisher is
        normalised here and ``ewc_lambda`` scaled by the same factor, so ``lambda * F`` (the penalty a resumed
        run trains with) is unchanged; the warning says how weak that is, next to the current default.
        """
        self.__dict__.update(state)
        if state.get("fisher_normalised_"):
            return
        self.fisher_normalised_ = True
        if self.fisher_ is None:   # no task ended: nothing to rescale, the saved ewc_lambda now weighs a normalised Fisher
            return
        total = sum(float(f.sum(dtype=np.float64)) for f in self.fisher_)
        mean = total / max(sum(f.size for f in self.fisher_), 1)
        old_lambda = self.ewc_lambda
        if mean > 0:
            self.fisher_ = [f / np.float32(mean) for f in self.fisher_]
            self.ewc_lambda = float(old_lambda * mean)
        warnings.warn(f"this EWC model was saved before its Fisher was normalised (issue 24): its ewc_lambda "
                      f"{old_lambda:g} on the raw Fisher is ewc_lambda {self.ewc_lambda:.3g} on the normalised one "
                      f"(the current default is 1), kept so that a resumed run trains with the penalty it had; "
                      f"retrain to use another ewc_lambda", UserWarning, stacklevel=2)

    def options(self) -> dict[str, Any]:
        return {"ewc_lambda": self.ewc_lambda, "gamma": self.gamma, "pool_size": self.pool_size}

    def observe(self, head: Any, X: np.ndarray, y: np.ndarray, paths: Sequence[str] | None) -> None:
        self.pools_.add(X, y)

    def after_task(self, head: Any) -> None:
        pools = self.pools_.take()
        if not pools:
            return
        Z = head.standardise(np.vstack([X for X, _ in pools.values()]))
        task = normalised(fisher_diagonal(head.params_, Z, np.random.default_rng([self.seed, self.tasks_])))
        old = [np.zeros_like(t) for t in task] if self.fisher_ is None else pad_like(self.fisher_, head.params_)
        self.fisher_ = [self.gamma * f + t for f, t in zip(old, task)]
        self.anchor_ = [p.copy() for p in head.params_]
        self.tasks_ += 1

    def consts(self, head: Any) -> dict[str, Any]:
        if self.fisher_ is None or self.anchor_ is None:  # both are set after the first task
            return {}
        return {"fisher": pad_like(self.fisher_, head.params_), "anchor": pad_like(self.anchor_, head.params_)}

    def loss(self, ops: Any, params: list[Any], batch: dict[str, Any], consts: dict[str, Any]) -> Any:
        loss = super().loss(ops, params, batch, consts)
        if "fisher" in consts:
            loss = loss + 0.5 * self.ewc_lambda * ewc_penalty(ops, params, consts["fisher"], consts["anchor"])
        return loss
