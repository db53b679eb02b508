"""What a continual-learning method plugs into the MLP head.

A method adds terms to the loss (EWC, LwF, iCaRL), rows to each mini-batch
(ER, iCaRL, A-GEM's reference batch), changes the gradient (A-GEM) or the
classifier (iCaRL's nearest mean), and does its work between tasks in
``after_task``. Its state is numpy arrays and plain values, so the head saves
as data. ``finetune`` is this base class: plain training on the new rows.
"""

from __future__ import annotations

from typing import Any, Hashable, Sequence

import numpy as np

from pipeline.heads.cl.net import cross_entropy, forward


class Method:
    name = "finetune"
    uses_memory = False   # batches carry rows drawn from the exemplar memory ("xr", "yr")
    # when the output grows, restart the whole output layer's Adam state (as a new PyTorch Linear does)
    # instead of keeping the old columns' moments and step counts
    restart_output_state = False

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)   # a dict even when empty (finetune), as the data-only format needs

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def options(self) -> dict[str, Any]:
        """The method's own settings (saved with the head)."""
        return {}

    def before_task(self, head: Any, classes: Sequence[Hashable]) -> None:
        """Called before a task's first row (optional: the head also learns classes as they come)."""

    def observe(self, head: Any, X: np.ndarray, y: np.ndarray, paths: Sequence[str] | None) -> None:
        """The raw rows of the current task, once each, before the head trains on them."""

    def after_task(self, head: Any) -> None:
        """Called once the current task's rows have all been learnt."""

    def consts(self, head: Any) -> dict[str, Any]:
        """Frozen arrays the loss reads (the previous head, Fisher...), shaped like the current parameters."""
        return {}

    def memory_batch(self, head: Any, rng: np.random.Generator, n: int,
                     pass_rest: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """``n`` standardised memory rows and their class indices, or None. ``pass_rest`` carries what is
        left of a shuffled pass over the memory from one call to the next (one chunk's steps)."""
        return None

    def loss(self, ops: Any, params: list[Any], batch: dict[str, Any], consts: dict[str, Any]) -> Any:
        x, y, w = batch["x"], batch["y"], batch["w"]
        if "xr" in batch:  # replay: the memory rows join the batch
            x = ops.concatenate([x, batch["xr"]], axis=0)
            y = ops.concatenate([y, batch["yr"]], axis=0)
            w = ops.concatenate([w, ops.ones_like(batch["yr"], dtype="float32")], axis=0)
        _, logits = forward(params, x, ops.relu)
        return cross_entropy(ops, logits, y, w)

    def loss_and_grads(self, ops: Any, value_and_grad: Any, params: list[Any], batch: dict[str, Any],
                       consts: dict[str, Any]) -> tuple[Any, list[Any]]:
        return value_and_grad(lambda p, b, c: self.loss(ops, p, b, c))(params, batch, consts)

    def proba(self, head: Any, Z: np.ndarray) -> np.ndarray | None:
        """Class probabilities when the method has its own classifier (iCaRL), else None."""
        return None

    def describe(self) -> dict[str, Any]:
        return {}
