"""The training loop: tasks -> epochs -> chunks -> head, with plug-ins for everything else.

The loop only streams and learns; replay, evaluation points, the accuracy
matrix, checkpoints, the joint reference and the head's own hooks are
:class:`Plugin` objects (Avalanche's plug-in model). Hooks, in call order::

    before_training(loop)
    for each task:   before_task(loop, task)        # not again when resuming mid-task
        for each epoch, for each chunk (cut at every plug-in's next_stop(loop)):
                     before_chunk(loop, chunk) -> chunk   # may change the rows (replay)
                     [head.progressive_fit(chunk)]
                     after_update(loop, chunk)      # part of the update (head state may change)
                     after_chunk(loop, chunk, preds)     # observers: metrics, checkpoints
                     after_task(loop, task)         # loop.state already points at the next task
    after_training(loop, metrics)                   # add to the metrics, save
    on_interrupt(loop, consistent)                  # Ctrl-C: consistent = no update half-done
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Hashable, Sequence

import numpy as np
from tqdm import tqdm

from pipeline.errors import ModelFileError
from pipeline.metrics import ratio, run_metrics
from pipeline.models import TrainedModel
from pipeline.stream import Batch, FeatureStream

__all__ = ["Chunk", "Plugin", "RunState", "TaskLearner", "TrainingLoop", "fmt", "ratio"]


@dataclass
class RunState:
    """Where a run is; saved in checkpoints (``TrainedModel.progress``)."""

    key: str
    task: int = 0
    epoch: int = 0
    rows_in_epoch: int = 0
    rows: int = 0
    progressive_correct: int = 0
    progressive_rows: int = 0
    curve: list[dict[str, Any]] = field(default_factory=list)
    matrix: list[list[float | None]] = field(default_factory=list)
    incremental_accuracy: list[float] = field(default_factory=list)
    class_accuracy: list[dict[str, float | None]] = field(default_factory=list)  # after each task, per class
    done: bool = False
    key_parts: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def restore(cls, record: dict[str, Any], **given: Any) -> "RunState":
        """The state a checkpoint recorded (``TrainedModel.progress``), each entry of its field's type."""
        kinds = {f.name: str(f.type) for f in fields(cls)}
        for key, value in record.items():
            kind = kinds.get(key)
            if kind is None:
                raise ModelFileError(f"--resume: the checkpoint's progress holds an unknown entry {key!r}")
            expected: type = {"int": int, "str": str, "bool": bool}.get(kind, list if kind.startswith("list") else dict)
            if expected is int:
                wrong = isinstance(value, bool) or not isinstance(value, int) or value < 0
            else:
                wrong = not isinstance(value, expected)
            if wrong:
                raise ModelFileError(f"--resume: the checkpoint's progress {key} is {value!r}; expected "
                                     + ("a count (an integer >= 0)" if expected is int else f"a {expected.__name__}"))
        return cls(**{**given, **record})


@dataclass
class Chunk:
    """Rows about to be learnt. ``own``: positions of the stream's own rows in ``X`` (None: all),
    so progressive metrics count only new rows when a plug-in mixes others in."""

    X: np.ndarray
    y: np.ndarray
    paths: Sequence[str] | None
    task: int
    epoch: int
    own: np.ndarray | None = None


class Plugin:
    """Base class of training-loop plug-ins: override the hooks you need (all are no-ops here)."""

    def before_training(self, loop: "TrainingLoop") -> None: ...

    def before_task(self, loop: "TrainingLoop", task: int) -> None: ...

    def next_stop(self, loop: "TrainingLoop") -> int:
        """A row count (``loop.state.rows`` scale) at which the loop must cut a chunk; 0 for none."""
        return 0

    def before_chunk(self, loop: "TrainingLoop", chunk: Chunk) -> Chunk:
        return chunk

    def after_update(self, loop: "TrainingLoop", chunk: Chunk) -> None: ...

    def after_chunk(self, loop: "TrainingLoop", chunk: Chunk, preds: np.ndarray) -> None: ...

    def after_task(self, loop: "TrainingLoop", task: int) -> None: ...

    def after_training(self, loop: "TrainingLoop", metrics: dict[str, Any]) -> None: ...

    def on_interrupt(self, loop: "TrainingLoop", consistent: bool) -> None: ...


# Learns every epoch of one task at once (the task's classes; None: every class) and returns the rows
# learnt: how a parallel executor stands in for the chunk-by-chunk learning (pipeline.parallel_train).
TaskLearner = Callable[["TrainingLoop", "list[str] | None"], int]


class TrainingLoop:
    """Stream ``tasks`` (lists of class names; None = one task of every class) into ``model.head``.

    ``learn_task`` (optional) replaces the chunk-by-chunk learning of each task (heads that merge
    exactly, learnt in parallel); the plug-ins and the metrics stay the same. ``executor`` describes
    where the rows were learnt, for the metrics.
    """

    def __init__(self, model: TrainedModel, stream: FeatureStream, state: RunState, *,
                 tasks: list[list[str]] | None, epochs: int, plugins: Sequence[Plugin] = (),
                 progress: bool = True, log: Callable[[str], None] = lambda s: None,
                 learn_task: TaskLearner | None = None, executor: dict[str, Any] | None = None):
        self.learn_task, self.executor = learn_task, executor
        self.model, self.head, self.stream, self.state = model, model.head, stream, state
        self.incremental = tasks is not None
        self.tasks = tasks or [sorted(stream.classes)]
        self.epochs, self.plugins, self.progress, self.log = epochs, list(plugins), progress, log
        self.t_learn = 0.0
        self.bar: Any = None

    def seen_classes(self, upto: int | None = None) -> set[Hashable]:
        """Classes of tasks 0..upto (default: the current task)."""
        upto = self.state.task if upto is None else upto
        return {c for t in self.tasks[: min(upto, len(self.tasks) - 1) + 1] for c in t}

    def run(self) -> dict[str, Any]:
        state = self.state
        rows_at_start, t0 = state.rows, time.perf_counter()
        self._call("before_training")
        self.bar = tqdm(total=None, unit="row", desc=f"train {self.model.head_name}", disable=not self.progress,
                        file=sys.stderr, initial=state.rows)
        self.consistent = True
        try:
            while state.task < len(self.tasks):
                if state.epoch == 0 and state.rows_in_epoch == 0:
                    self._call("before_task", state.task)
                task_classes = self.tasks[state.task] if self.incremental else None
                if self.learn_task is not None and state.epoch < self.epochs:
                    self._learn_task(task_classes)
                task_stream = self.stream.with_options(classes=task_classes)
                while state.epoch < self.epochs:
                    for batch in task_stream.iter_epoch(state.epoch, skip=state.rows_in_epoch):
                        self._learn(batch)
                    state.epoch += 1
                    state.rows_in_epoch = 0
                finished = state.task
                self.consistent = False  # task-end work: a Ctrl-C now keeps the last checkpoint
                state.task += 1
                state.epoch = 0
                self._call("after_task", finished)
                self.consistent = True
        except KeyboardInterrupt:
            self.bar.close()
            self._call("on_interrupt", self.consistent)
            raise
        self.bar.close()
        state.done = True
        metrics = run_metrics(self.model.head_name, self.head, rows_this_run=state.rows,
                              progressive_correct=state.progressive_correct, progressive_rows=state.progressive_rows,
                              elapsed_s=time.perf_counter() - t0, learn_s=self.t_learn,
                              rows_learnt=state.rows - rows_at_start, executor=self.executor)
        self._call("after_training", metrics)
        return metrics

    def _learn_task(self, classes: list[str] | None) -> None:
        """Every epoch of the current task through ``learn_task`` (no progressive validation: the rows are
        learnt without being predicted first)."""
        assert self.learn_task is not None
        t1 = time.perf_counter()
        self.consistent = False
        rows = self.learn_task(self, classes)
        self.head = self.model.head  # the learner may hand back a merged head
        self.t_learn += time.perf_counter() - t1
        self.state.rows += rows
        self.state.epoch, self.state.rows_in_epoch = self.epochs, 0
        self.consistent = True
        self.bar.update(rows)

    def _learn(self, batch: Batch) -> None:
        state, start = self.state, 0
        while start < len(batch.y):
            stop = len(batch.y)
            for plugin in self.plugins:
                boundary = plugin.next_stop(self)
                if boundary:
                    stop = min(stop, start + boundary - state.rows)
            y = batch.y[start:stop]
            chunk = Chunk(batch.X[start:stop], y, batch.paths[start:stop], state.task, state.epoch)
            for plugin in self.plugins:
                chunk = plugin.before_chunk(self, chunk)
            t1 = time.perf_counter()
            self.consistent = False  # a Ctrl-C from here on may leave the head half-updated
            preds = self.head.progressive_fit(chunk.X, chunk.y, chunk.paths)
            if chunk.own is not None:
                preds = preds[chunk.own]
            self._call("after_update", chunk)
            self.t_learn += time.perf_counter() - t1
            state.progressive_correct += int(np.sum(preds == y))
            state.progressive_rows += len(y)
            state.rows += len(y)
            state.rows_in_epoch += len(y)
            self.consistent = True
            self.bar.update(len(y))
            self.bar.set_postfix(progressive=fmt(ratio(state.progressive_correct, state.progressive_rows)),
                                 refresh=False)
            self._call("after_chunk", chunk, preds)
            start = stop

    def _call(self, hook: str, *args: Any) -> None:
        for plugin in self.plugins:
            getattr(plugin, hook)(self, *args)


def fmt(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.4f}"
