"""Exact parallel training of the heads whose state is a sum over rows (slda, ridge, nme exact).

Stores, or row ranges of one store, are mapped to workers; each opens its
rows itself (a :class:`StreamSpec` and a :class:`RowRange`: paths and
numbers, never arrays), builds a fresh head from a :class:`HeadSpec` and
learns its rows; the partial heads are reduced in partition order with the
heads' exact ``merge``. So the result equals one process streaming the same
rows: same class order, same predictions, accuracy equal to float round-off.
Everything else (held-out evaluation, class-incremental runs, the joint
reference, the metrics, saving) is :func:`pipeline.train.train`'s: the same
loop and plug-ins, with the learning of each task handed to the executor.

>>> parts = plan_partitions([("a.h5", 10), ("b.h5", 3)], rows_per_part=4)
>>> [(p.path, p.start, p.stop) for p in parts]
[('a.h5', 0, 3), ('a.h5', 3, 6), ('a.h5', 6, 10), ('b.h5', 0, 3)]
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, Sequence, TypeVar

from pipeline.errors import ExecutorError
from pipeline.heads import head_class, make_head
from pipeline.heads.base import Head
from pipeline.heads.registry import mergeable_text
from pipeline.loop import TrainingLoop
from pipeline.models import TrainedModel
from pipeline.stream import FeatureStream
from pipeline.train import TrainOptions, train

R = TypeVar("R")
EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class HeadSpec:
    """What a worker needs to build a fresh head: name, feature dimension and settings."""

    name: str
    feature_dim: int
    settings: tuple[tuple[str, Any], ...]

    @classmethod
    def of(cls, head_name: str, head: Head, feature_dim: int) -> "HeadSpec":
        return cls(head_name, feature_dim, tuple(sorted(head.settings().items())))

    def build(self) -> Head:
        return make_head(self.name, n_features=self.feature_dim, **dict(self.settings))


@dataclass(frozen=True)
class StreamSpec:
    """The options of a :class:`FeatureStream`, to reopen it anywhere."""

    paths: tuple[str, ...]
    holdout: float = 0.0
    split: str = "all"
    classes: tuple[str, ...] | None = None
    chunk_rows: int = 4096
    allow_incomplete: bool = False

    @classmethod
    def of(cls, stream: FeatureStream, classes: Sequence[str] | None = None) -> "StreamSpec":
        return cls(tuple(str(p) for p in stream.paths), stream.holdout, stream.split,
                   None if classes is None else tuple(classes), stream.chunk_rows, stream.allow_incomplete)

    def open(self, part: "RowRange") -> FeatureStream:
        return FeatureStream([part.path], allow_incomplete=self.allow_incomplete, chunk_rows=self.chunk_rows,
                             holdout=self.holdout, split=self.split, classes=self.classes,
                             row_range=(part.start, part.stop))


@dataclass(frozen=True)
class RowRange:
    """Rows ``[start, stop)`` of one store (a training partition; not an extraction's file range)."""

    path: str
    start: int
    stop: int


def plan_partitions(stores: Sequence[tuple[str, int]], rows_per_part: int) -> list[RowRange]:
    """Cut each store into near-equal ranges of at most ``rows_per_part`` rows, in stream order."""
    parts: list[RowRange] = []
    for path, n in stores:
        k = max(1, math.ceil(n / max(1, rows_per_part)))
        bounds = [i * n // k for i in range(k + 1)]
        parts.extend(RowRange(path, a, b) for a, b in zip(bounds, bounds[1:]) if b > a)
    return parts


def fit_partition(head: HeadSpec, stream: StreamSpec, part: RowRange, epochs: int = 1) -> Head:
    """A worker's job: a fresh head learns the rows of one partition (run in any process)."""
    model = head.build()
    with stream.open(part) as rows:
        for epoch in range(epochs):
            for batch in rows.iter_epoch(epoch):
                model.partial_fit(batch.X, batch.y, batch.paths)
    return model


class RowMapper(Protocol):
    """Where the partitions of a parallel training run are learnt: in this process or on Ray."""

    workers: int

    def map(self, fn: Callable[..., R], items: Sequence[tuple[Any, ...]], desc: str) -> Iterator[R]:
        """``fn(*item)`` for each item, results in item order."""


class InProcess:
    """Runs the partitions one after the other in this process (the reference)."""

    workers = 1

    def map(self, fn: Callable[..., R], items: Sequence[tuple[Any, ...]], desc: str) -> Iterator[R]:
        return (fn(*item) for item in items)


class RayTasks:
    """Runs the partitions as Ray tasks, ``workers`` at a time (see :mod:`pipeline.ray_executor`)."""

    def __init__(self, workers: int, progress: bool = True):
        self.workers, self.progress = workers, progress

    def map(self, fn: Callable[..., R], items: Sequence[tuple[Any, ...]], desc: str) -> Iterator[R]:
        from pipeline.ray_executor import map_ordered

        return map_ordered(fn, items, max_in_flight=self.workers, desc=desc, progress=self.progress)


@contextlib.contextmanager
def open_executor(name: str, workers: int | None = None, progress: bool = True) -> Iterator[RowMapper]:
    if name == "local":
        yield InProcess()
    elif name == "ray":
        from pipeline.ray_executor import default_workers, ray_session

        with ray_session() as resources:
            yield RayTasks(workers or default_workers(resources), progress)
    else:
        raise ExecutorError(f"unknown executor {name!r}; expected one of {', '.join(EXECUTORS)}")


def check_parallel(head_name: str, head: Head, opts: TrainOptions) -> None:
    """Refuse, in one line, what parallel training cannot do exactly."""
    if not getattr(head, "mergeable", False):
        reason = head_class(head_name).capabilities.sequential or "its training is sequential"
        raise ExecutorError(f"--executor ray trains only heads whose state is a sum over rows ({mergeable_text()}); "
                            f"{head_name} cannot be split across workers: {reason}")
    for flag, value in (("--replay", opts.replay), ("--eval-every", opts.eval_every),
                        ("--checkpoint-every", opts.checkpoint_every), ("--log-dir", opts.log_dir)):
        if value:
            raise ExecutorError(f"{flag} needs sequential training; drop it or use --executor local")


def fit_mergeable(head: HeadSpec, stream: StreamSpec, executor: RowMapper, partitions: Sequence[RowRange],
                  into: Head | None = None, epochs: int = 1, desc: str = "train") -> tuple[Head, int]:
    """Learn ``partitions`` on ``executor`` and merge them, in order, into ``into`` (default: a fresh head).

    Returns the head and the rows learnt.
    """
    result = head.build() if into is None else into
    rows = 0
    for partial in executor.map(fit_partition, [(head, stream, p, epochs) for p in partitions], desc):
        if partial.rows_seen_:
            result.merge(partial)
            rows += partial.rows_seen_
        del partial  # one partial head at a time in memory (M = 10,000: 800 MB of statistics each)
    return result, rows


def train_parallel(model: TrainedModel, train_stream: FeatureStream, test_stream: FeatureStream | None,
                   opts: TrainOptions, executor: RowMapper, log: Callable[[str], None] = lambda s: None,
                   rows_per_part: int | None = None) -> dict[str, Any]:
    """:func:`pipeline.train.train` for mergeable heads, with the learning of each task mapped onto ``executor``.

    The same loop, plug-ins (held-out evaluation, accuracy matrix, joint reference, saving) and
    metrics as a local run; only the learning of a task's rows is cut into partitions, learnt by
    fresh heads and merged in order.
    """
    check_parallel(model.head_name, model.head, opts)
    spec = HeadSpec.of(model.head_name, model.head, model.feature_dim)
    sizes = [(str(s.path), s.n_rows) for s in train_stream.stores]
    per_part = rows_per_part or max(train_stream.chunk_rows,
                                    math.ceil(sum(n for _, n in sizes) / (2 * executor.workers)))
    parts = plan_partitions(sizes, per_part)
    log(f"{len(parts)} partitions of up to {per_part} rows on {executor.workers} worker(s)")

    def learn_task(loop: TrainingLoop, classes: list[str] | None) -> int:
        desc = f"train {model.head_name}" + (f" task {loop.state.task + 1}/{len(loop.tasks)}" if loop.incremental else "")
        model.head, rows = fit_mergeable(spec, StreamSpec.of(train_stream, classes), executor, parts, model.head,
                                         loop.epochs, desc)
        return rows

    def fit_joint() -> Head:
        return fit_mergeable(spec, StreamSpec.of(train_stream), executor, parts, None, opts.epochs, "joint")[0]

    where = {"name": "ray" if isinstance(executor, RayTasks) else "local", "workers": executor.workers,
             "partitions": len(parts)}
    return train(model, train_stream, test_stream, opts, log=log, learn_task=learn_task, fit_joint=fit_joint,
                 executor=where)


# The names before issue 18 (they clashed with the extraction's Partition, Executor and RayExecutor).
Partition = RowRange
Executor = RowMapper
RayExecutor = RayTasks
