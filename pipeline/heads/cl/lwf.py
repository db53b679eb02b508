"""Learning without Forgetting (Li & Hoiem, 2016), class-incremental, no exemplars.

After each task the head is copied and frozen. On a later task the live head
is trained with the paper's two losses: cross-entropy of the labels over the
new task's outputs (the paper's new-task head: here the columns of the classes
added since the copy; a row of an old class counts only through distillation)
plus ``distill_weight`` times the distillation loss (Hinton et al.) between the
frozen and live heads' temperature-softened distributions over the old
classes' outputs (``temperature`` 2 and weight 1 as the paper). This is how
PyCIL adapts LwF to one shared head; cross-entropy over all columns instead
would push every old logit down on each new row (measured: no better than finetune).

A task that adds a single class has nothing to tell its rows from among the
new outputs (a softmax over one column is constant: no gradient, the class
would never be learnt). Its rows are then told from the old classes:
cross-entropy over all the outputs, with the old outputs held fixed in it
(no gradient through them), plus the same distillation on the old outputs.
The new output is raised above the old ones on its rows, and, as for a task
of several classes, a new row never pushes the old outputs down: with the
gradient through them (Avalanche's LwF) it did, and one-class tasks ended
no better than finetune (53.8 against 54.8 on Imagenette-mini; held fixed:
71.0, docs/continual-learning.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.errors import HeadError
from pipeline.heads.cl.base import Method
from pipeline.heads.cl.net import cross_entropy, forward, softmax, weighted_mean


class LwF(Method):
    name = "lwf"

    def __init__(self, temperature: float = 2.0, distill_weight: float = 1.0):
        self.temperature, self.distill_weight = temperature, distill_weight
        self.old_params_: list[np.ndarray] | None = None

    def options(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "distill_weight": self.distill_weight}

    def after_task(self, head: Any) -> None:
        self.old_params_ = [p.copy() for p in head.params_]

    def consts(self, head: Any) -> dict[str, Any]:
        return {} if self.old_params_ is None else {"old": self.old_params_}

    def targets(self, Z: np.ndarray) -> np.ndarray:
        """The frozen head's softened distribution over the old classes (what the live head must match)."""
        if self.old_params_ is None:
            raise HeadError("lwf has no frozen head before the first task ends")
        _, logits = forward(self.old_params_, Z)
        return softmax(logits / self.temperature)

    def loss(self, ops: Any, params: list[Any], batch: dict[str, Any], consts: dict[str, Any]) -> Any:
        if "old" not in consts:
            return super().loss(ops, params, batch, consts)
        old = consts["old"]
        n_old = old[-1].shape[0]
        _, logits = forward(params, batch["x"], ops.relu)
        _, old_logits = forward(old, batch["x"], ops.relu)
        n_new = logits.shape[-1] - n_old
        if n_new >= 2:     # the new task's own outputs
            loss = cross_entropy(ops, logits[:, n_old:], batch["y"] - n_old, batch["w"])
        elif n_new == 1:   # a single new class: raised above the old classes' outputs, held fixed here
            held = ops.concatenate([ops.stop_gradient(logits[:, :n_old]), logits[:, n_old:]], axis=-1)
            loss = cross_entropy(ops, held, batch["y"], batch["w"])
        else:              # no new class: the old classes' rows count through distillation only
            loss = 0.0
        if n_old < 2:      # a softmax over one output is constant: nothing to distil
            return loss
        target = ops.softmax(old_logits / self.temperature, axis=-1)
        logp = ops.log_softmax(logits[:, :n_old] / self.temperature, axis=-1)
        distill = -ops.sum(target * logp, axis=-1)
        return loss + self.distill_weight * weighted_mean(ops, distill, batch["w"])
