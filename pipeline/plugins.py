"""The training loop's plug-ins: head hooks, replay, evaluation, the accuracy matrix, checkpoints, joint reference.

Each is a :class:`pipeline.loop.Plugin`; :func:`pipeline.train.train` picks
them from the run's options. A head adds its own with ``Head.plugins()``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.evaluate import Evaluation, continual_metrics
from pipeline.heads.base import Head
from pipeline.heads.exemplars import ExperienceReplay
from pipeline.heads.defaults import REPLAY_OPTIONS
from pipeline.loop import Chunk, Plugin, TrainingLoop, fmt
from pipeline.metrics import curve_point, ratio
from pipeline.models import TrainedModel
from pipeline.stream import FeatureStream



def evaluate_head(head: Head, stream: FeatureStream | None, classes: set | None = None) -> Evaluation:
    """Held-out evaluation over a stream (optionally only some classes), bounded memory."""
    ev = Evaluation()
    if stream is None:
        return ev
    src = stream if classes is None else stream.with_options(classes=classes)
    for batch in src:
        if head.classes_:
            ev.update(batch.y, head.predict_proba(batch.X), head.classes_)
        else:
            ev.update(batch.y, np.zeros((len(batch.y), 0)), [])
    return ev


def _none_if_nan(x: float) -> float | None:
    return None if math.isnan(x) else x


def next_multiple(rows: int, every: int) -> int:
    return (rows // every + 1) * every if every else 0


def next_doubling(rows: int, first: int) -> int:
    """The next evaluation point after ``rows`` in doubling blocks: first, 2 first, 4 first, ..."""
    point = first
    while point <= rows:
        point *= 2
    return point


AUTO_FIRST_POINT = 32  # rows: automatic points at 32, 64, 128, ... (progressive validation's doubling blocks)


class HeadHooks(Plugin):
    """Forward the loop's events to the head's own hooks (before_task, after_chunk, end_task)."""

    def before_task(self, loop: TrainingLoop, task: int) -> None:
        loop.head.before_task(task, loop.tasks[task])

    def after_update(self, loop: TrainingLoop, chunk: Chunk) -> None:
        loop.head.after_chunk(chunk.X, chunk.y, chunk.paths)

    def after_task(self, loop: TrainingLoop, task: int) -> None:
        loop.head.end_task()


class Replay(Plugin):
    """Experience replay: mix remembered rows of earlier tasks into every chunk (kept in ``model.replay``)."""

    def __init__(self, memory: int, pool_size: int, seed: int):
        self.memory, self.pool_size, self.seed = memory, pool_size, seed

    def before_training(self, loop: TrainingLoop) -> None:
        if loop.model.replay is None:
            loop.model.replay = ExperienceReplay(self.memory, self.pool_size, self.seed)

    def before_chunk(self, loop: TrainingLoop, chunk: Chunk) -> Chunk:
        s = loop.state
        X, y, own = loop.model.replay.mix(chunk.X, chunk.y, chunk.paths, (s.task, s.epoch, s.rows))
        return Chunk(X, y, None, chunk.task, chunk.epoch, own)

    def after_task(self, loop: TrainingLoop, task: int) -> None:
        loop.model.replay.end_task()


class EveryRows(Plugin):
    """A plug-in that acts every ``every`` rows (0: never): the loop cuts its chunks at those rows."""

    every = 0
    next = 0

    def enabled(self) -> bool:
        return True

    def before_training(self, loop: TrainingLoop) -> None:
        self.next = next_multiple(loop.state.rows, self.every) if self.enabled() else 0

    def next_stop(self, loop: TrainingLoop) -> int:
        return self.next

    def after_chunk(self, loop: TrainingLoop, chunk: Chunk, preds: np.ndarray) -> None:
        if self.next and loop.state.rows >= self.next:
            self.at_boundary(loop)
            self.next += self.every

    def at_boundary(self, loop: TrainingLoop) -> None:
        """What to do when the rows seen reach the next multiple of ``every``."""


class EvaluationPoints(EveryRows):
    """The learning curve: progressive and held-out accuracy, held-out log loss and learning speed every
    ``every`` rows and at the end (plus accuracy per task so far in class-incremental runs); the final
    held-out report in ``metrics["heldout"]``."""

    def __init__(self, test: FeatureStream | None, every: int, doubling: int = 0):
        self.test, self.every, self.doubling = test, every, doubling
        self.next = 0
        self.last = (0, 0.0)  # (rows, learning seconds) at the previous point of this process

    def before_training(self, loop: TrainingLoop) -> None:
        super().before_training(loop)
        if not self.every and self.doubling:
            self.next = next_doubling(loop.state.rows, self.doubling)
        self.last = (loop.state.rows, loop.t_learn)

    def after_chunk(self, loop: TrainingLoop, chunk: Chunk, preds: np.ndarray) -> None:
        if self.every or not self.next:
            super().after_chunk(loop, chunk, preds)
        elif loop.state.rows >= self.next:
            self.at_boundary(loop)
            self.next = next_doubling(loop.state.rows, self.doubling)

    def at_boundary(self, loop: TrainingLoop) -> None:
        self.point(loop)

    def point(self, loop: TrainingLoop, held: Evaluation | None = None) -> None:
        s = loop.state
        if held is None and self.test is not None:
            held = evaluate_head(loop.head, self.test, loop.seen_classes() if loop.incremental else None)
        rows, seconds = s.rows - self.last[0], loop.t_learn - self.last[1]
        self.last = (s.rows, loop.t_learn)
        entry = curve_point(s.rows, min(s.task, len(loop.tasks) - 1) + 1,  # 1-based, as logged
                            ratio(s.progressive_correct, s.progressive_rows),
                            held.accuracy if held is not None and held.rows else None,
                            held.log_loss if held is not None and held.rows else None,
                            rows / seconds if rows and seconds > 0 else None)
        if loop.incremental and held is not None and held.rows:
            entry["task_accuracy"] = [_none_if_nan(held.accuracy_on(set(t))) if j < entry["task"] else None
                                      for j, t in enumerate(loop.tasks)]
        s.curve.append(entry)
        loop.log(f"rows {s.rows}: progressive accuracy {fmt(entry['progressive_accuracy'])}"
                 + (f", held-out accuracy {fmt(entry['heldout_accuracy'])}" if held is not None else ""))

    def after_training(self, loop: TrainingLoop, metrics: dict[str, Any]) -> None:
        held = evaluate_head(loop.head, self.test)
        s = loop.state
        if not s.curve or s.curve[-1]["rows_seen"] != s.rows:
            self.point(loop, held)
        loop.model.history.extend(s.curve)
        metrics["heldout"] = held.report()
        metrics["learning_curve"] = s.curve


class TaskEvaluation(Plugin):
    """Class-incremental protocol: after each task, accuracy on every task so far (the accuracy matrix)."""

    def __init__(self, test: FeatureStream | None):
        self.test = test

    def after_task(self, loop: TrainingLoop, task: int) -> None:
        if self.test is None:
            return
        row, accuracy = evaluate_task(loop.head, self.test, loop.tasks, task, loop.log, loop.state.class_accuracy)
        loop.state.matrix.append(row)
        loop.state.incremental_accuracy.append(accuracy)

    def after_training(self, loop: TrainingLoop, metrics: dict[str, Any]) -> None:
        metrics.update(incremental_metrics(loop.tasks, loop.state.matrix, loop.state.incremental_accuracy))
        if loop.state.class_accuracy:
            metrics["class_accuracy_after_each_task"] = loop.state.class_accuracy


def evaluate_task(head: Head, test: FeatureStream, tasks: list[list[str]], task: int,
                  log: Callable[[str], None],
                  per_class: list[dict[str, float | None]] | None = None) -> tuple[list[float | None], float]:
    """After ``task``: accuracy on each task so far (a row of the accuracy matrix) and on all classes seen;
    ``per_class`` (a list) gets the accuracy on each class seen appended, as one dictionary."""
    seen = {c for past in tasks[: task + 1] for c in past}
    ev = evaluate_head(head, test, seen)
    row: list[float | None] = [None] * len(tasks)
    for j in range(task + 1):
        row[j] = _none_if_nan(ev.accuracy_on(set(tasks[j])))
    if per_class is not None:
        per_class.append({str(c): _none_if_nan(ev.accuracy_on({c})) for c in sorted(seen)})
    log(f"task {task + 1}/{len(tasks)} ({', '.join(tasks[task])}): accuracy on the "
        f"{len(seen)} classes seen {fmt(ev.accuracy)}")
    return row, ev.accuracy


def incremental_metrics(tasks: list[list[str]], matrix: list[list[float | None]],
                        after_each: list[float]) -> dict[str, Any]:
    """The class-incremental figures of a run from its accuracy matrix and its accuracy after each task."""
    metrics: dict[str, Any] = {"tasks": tasks, "accuracy_matrix": matrix}
    if not matrix:
        return {**metrics, "final_accuracy": None}
    return {**metrics, **continual_metrics(matrix), "accuracy_after_each_task": after_each,
            "average_incremental_accuracy": float(np.mean(after_each)), "final_accuracy": after_each[-1]}


class JointReference(Plugin):
    """The same head trained on every class in one go, on the same data: ``metrics["joint_accuracy"]``.

    ``fit_joint`` (optional) trains it elsewhere (in parallel, for heads that merge exactly); by default
    a fresh head streams every row here.
    """

    def __init__(self, make_fresh_head: Callable[[], Head] | None, test: FeatureStream | None,
                 fit_joint: Callable[[], Head] | None = None):
        self.make_fresh_head, self.test, self.fit_joint = make_fresh_head, test, fit_joint

    def after_training(self, loop: TrainingLoop, metrics: dict[str, Any]) -> None:
        joint = self.fit_joint() if self.fit_joint is not None else self._stream_all(loop)
        joint.end_task()
        metrics["joint_accuracy"] = evaluate_head(joint, self.test).accuracy
        metrics["joint_minus_final"] = (metrics["joint_accuracy"] - metrics["final_accuracy"]
                                        if metrics.get("final_accuracy") is not None else None)


    def _stream_all(self, loop: TrainingLoop) -> Head:
        if self.make_fresh_head is None:
            raise ValueError("JointReference needs make_fresh_head or fit_joint")
        joint = self.make_fresh_head()
        joint.before_task(0, sorted(loop.stream.classes))
        for epoch in range(loop.epochs):
            for batch in loop.stream.with_options(classes=None).iter_epoch(epoch):
                joint.partial_fit(batch.X, batch.y, batch.paths)
                joint.after_chunk(batch.X, batch.y, batch.paths)
        return joint


class Checkpoints(EveryRows):
    """Save the model with its position every ``every`` rows, after each task (when ``every``),
    on Ctrl-C when the head is consistent, and at the end."""

    def __init__(self, path: Path | None, every: int, save: Callable[[TrainedModel, Path], None]):
        self.path, self.every, self.save = path, every, save
        self.next = 0

    def _save(self, loop: TrainingLoop) -> None:
        if self.path is not None:
            loop.model.progress = loop.state.__dict__.copy()
            self.save(loop.model, self.path)

    def enabled(self) -> bool:
        return self.path is not None

    def at_boundary(self, loop: TrainingLoop) -> None:
        self._save(loop)

    def after_task(self, loop: TrainingLoop, task: int) -> None:
        if self.every and loop.incremental:
            self._save(loop)

    def after_training(self, loop: TrainingLoop, metrics: dict[str, Any]) -> None:
        self._save(loop)

    def on_interrupt(self, loop: TrainingLoop, consistent: bool) -> None:
        if self.path is None or not self.every:
            return
        if consistent:
            self._save(loop)
            loop.log(f"interrupted: checkpoint saved to {self.path} at row {loop.state.rows}")
        else:
            loop.log(f"interrupted during an update: the last checkpoint in {self.path} is kept")
        loop.log(f"rerun with --resume {self.path} (same stores and options) to continue")
