"""Training runs: options -> plug-ins -> :class:`pipeline.loop.TrainingLoop`.

A plain run is one task holding every class. A class-incremental run
streams task by task (each a subset of classes) and evaluates on held-out
data of all classes seen so far after each task, filling the accuracy matrix.
Checkpoints record where in the (deterministic) stream they were taken, so
``--resume`` of an interrupted run continues at that row.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.errors import OptionError, TrainingError
from pipeline.heads.base import Head
from pipeline.heads.defaults import DEFAULT_MEMORY, DEFAULT_POOL_SIZE
from pipeline.loggers import RunLogger
from pipeline.loop import Plugin, RunState, TaskLearner, TrainingLoop
from pipeline.metrics import store_record
from pipeline.models import TrainedModel, save_model
from pipeline.plugins import (AUTO_FIRST_POINT, Checkpoints, EvaluationPoints, HeadHooks, JointReference, Replay,
                              TaskEvaluation, evaluate_head)
from pipeline.identity import check_identity
from pipeline.stream import FeatureStream

__all__ = ["TrainOptions", "RunState", "train", "make_tasks", "evaluate_head", "check_model_fits", "run_key"]


@dataclass
class TrainOptions:
    epochs: int = 1
    eval_every: int = 0
    auto_points: bool = False          # without eval_every: evaluate at 32, 64, 128, ... rows (a curve to draw)
    checkpoint_every: int = 0
    model_out: Path | None = None
    tasks: list[list[str]] | None = None
    joint_reference: bool = True
    replay: bool = False
    replay_memory: int = DEFAULT_MEMORY
    pool_size: int = DEFAULT_POOL_SIZE
    seed: int = 0
    progress: bool = True
    log_dir: Path | None = None        # CSV + TensorBoard logs of every evaluation point (pipeline.loggers)
    plugins: tuple[Plugin, ...] = ()   # extra plug-ins, after the run's own


def key_parts(train: FeatureStream, opts: TrainOptions) -> dict[str, Any]:
    """What identifies a run's data and order, so a checkpoint only continues the same run."""
    return {"stores": [[str(s.path.resolve()), s.n_rows] for s in train.stores], "holdout": train.holdout,
            "split": train.split, "shuffle": train.shuffle_buffer, "seed": train.seed, "chunk": train.chunk_rows,
            "epochs": opts.epochs, "tasks": opts.tasks}


def run_key(train: FeatureStream, opts: TrainOptions) -> str:
    parts = key_parts(train, opts)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_model_fits(model: TrainedModel, stream: FeatureStream, what: str) -> None:
    """Refuse a stream whose features do not fit the model, naming the store (``what``: which stores these are;
    every store of a stream shares the first one's backbone, checked when it is opened)."""
    first = str(stream.paths[0])
    name = first if len(stream.paths) == 1 else f"{first} (like the other {what.removeprefix('the ')})"
    check_identity(model.backbone, {**stream.identity, "feature_dim": stream.feature_dim}, name)


def changed_options(previous: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The run settings a checkpoint was made with that differ now, spelled for the user."""
    old = previous.get("key_parts") or {}
    if not old:
        return ["(the checkpoint predates per-option records)"]
    names = {"stores": "stores", "holdout": "--holdout", "split": "--holdout", "shuffle": "--shuffle-buffer",
             "seed": "--seed", "chunk": "--chunk-rows", "epochs": "--epochs", "tasks": "tasks"}
    return sorted({f"{names.get(k, k)}: {old.get(k)!r} -> {now[k]!r}" for k in now
                   if json.dumps(old.get(k), default=str) != json.dumps(now[k], default=str)})


def checked_save(model: TrainedModel, path: Path) -> None:
    """Save, unless the head diverged (NaN or infinite numbers) or learnt nothing."""
    if not model.head.classes_:
        raise TrainingError(f"the model learnt no class; nothing was saved to {path}")
    if not model.head.finite_state():
        raise TrainingError(f"training diverged: the {model.head_name} model holds NaN or infinite numbers "
                            f"(try a smaller --lr or --l2); nothing was saved to {path}")
    save_model(model, path)


def _start_state(model: TrainedModel, train_stream: FeatureStream, opts: TrainOptions,
                 log: Callable[[str], None]) -> RunState:
    parts = key_parts(train_stream, opts)
    key = run_key(train_stream, opts)
    previous = model.progress or {}
    if previous and not previous.get("done") and previous.get("key") != key:
        raise OptionError("--resume: this checkpoint is an interrupted run made with other settings; rerun with "
                          "the same ones to continue it (" + "; ".join(changed_options(previous, parts)) + ")")
    if previous.get("key") == key and not previous.get("done"):
        state = RunState.restore(previous, key_parts=parts)
        log(f"continuing an interrupted run at task {state.task + 1}, epoch {state.epoch + 1}, "
            f"row {state.rows_in_epoch} ({state.rows} rows already learnt)")
        return state
    if previous.get("key") == key:
        log("this model already finished a run on these stores with these options: learning them again "
            "(another pass over the same rows)")
    return RunState(key=key, key_parts=parts)


def train(model: TrainedModel, train_stream: FeatureStream, test_stream: FeatureStream | None,
          opts: TrainOptions, make_fresh_head: Callable[[], Head] | None = None,
          log: Callable[[str], None] = lambda s: None, *, learn_task: TaskLearner | None = None,
          fit_joint: Callable[[], Head] | None = None, executor: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``model.head`` on ``train_stream``; returns the metrics dictionary (:mod:`pipeline.metrics`).

    The one training engine: local runs learn chunk by chunk; parallel runs of heads that merge exactly
    (:func:`pipeline.parallel_train.train_parallel`) pass ``learn_task`` and ``fit_joint`` (their joint
    reference) and ``executor`` (for the metrics), and get the same plug-ins, metrics and model record.
    """
    check_model_fits(model, train_stream, "the training stores")
    if test_stream is not None:
        check_model_fits(model, test_stream, "the test stores")
    state = _start_state(model, train_stream, opts, log)
    incremental = opts.tasks is not None
    record = [store_record(s.path, s.n_rows, train_stream.holdout) for s in train_stream.stores]
    model.stores.extend(r for r in record if r not in model.stores)

    plugins: list[Plugin] = [HeadHooks()]
    if opts.replay:
        plugins.append(Replay(opts.replay_memory, opts.pool_size, opts.seed))
    points = EvaluationPoints(test_stream, opts.eval_every, AUTO_FIRST_POINT if opts.auto_points else 0)
    plugins += [*opts.plugins, points]
    if incremental:
        plugins.append(TaskEvaluation(test_stream))
        if opts.joint_reference and (make_fresh_head is not None or fit_joint is not None):
            plugins.append(JointReference(make_fresh_head, test_stream, fit_joint))
    logger = RunLogger(opts.log_dir) if opts.log_dir is not None else None
    if logger is not None:  # after the evaluation plug-ins: it writes the points they make
        plugins.append(logger)
    # looked up at call time, so tests can stand in for save_model
    plugins.append(Checkpoints(opts.model_out, opts.checkpoint_every, lambda m, p: checked_save(m, p)))
    loop = TrainingLoop(model, train_stream, state, tasks=opts.tasks, epochs=opts.epochs, plugins=plugins,
                        progress=opts.progress, log=log, learn_task=learn_task, executor=executor)
    try:
        metrics = loop.run()
    finally:
        if logger is not None:
            logger.close()
    if logger is not None and logger.failure is not None:
        metrics["log_failure"] = logger.failure  # the run itself is whole: the caller reports it last
    return metrics


def make_tasks(classes: list[str], increment: int | None = None, spec: str | None = None,
               order: list[str] | None = None, seed: int = 0,
               first_increment: int | None = None) -> list[list[str]] | None:
    """Split classes into tasks: ``spec`` ("a,b;c,d"), or ``increment`` classes per task in ``order``
    (a seeded shuffle by default), the first task holding ``first_increment`` classes when given
    (the "B50 Inc10" protocol: 50 classes, then 10 per task).

    >>> make_tasks(list("abcdefg"), increment=2, order=list("abcdefg"), first_increment=3)
    [['a', 'b', 'c'], ['d', 'e'], ['f', 'g']]
    """
    if first_increment is not None:
        if increment is None:
            raise OptionError("--first-increment sets the size of the first task of an --increment run: "
                              "give --increment too (the classes per later task)"
                              + ("; --tasks already spells out every task" if spec is not None else ""))
        if not 1 <= first_increment < len(classes):
            raise OptionError(f"--first-increment {first_increment} must leave classes for later tasks: "
                              f"expected 1 to {len(classes) - 1} (the stores hold {len(classes)} classes)")
    if spec is not None and increment is not None:
        raise OptionError("--tasks and --increment both say how to split the classes: give one")
    if order is not None and increment is None:
        raise OptionError("--class-order only orders the classes for --increment"
                          + ("; --tasks already lists them in order" if spec is not None else ""))
    if spec is not None:
        tasks = [[c.strip() for c in part.split(",")] for part in spec.split(";")]
        for i, task in enumerate(tasks, 1):
            if not all(task):
                raise OptionError(f"--tasks {spec!r}: task {i} " + ("is empty" if not any(task) else "has an empty class name"))
        _no_duplicates([c for t in tasks for c in t], "--tasks")
        unknown = sorted({c for t in tasks for c in t} - set(classes))
        if unknown:
            raise OptionError(f"--tasks names classes not in the stores: {', '.join(unknown)} "
                              f"(the stores hold: {', '.join(classes)})")
        return tasks
    if not increment:
        return None
    if first_increment is None and increment >= len(classes):
        raise OptionError(f"--increment {increment} puts all {len(classes)} classes in one task; a class-incremental "
                          "run needs at least two tasks: expected " + (f"1 to {len(classes) - 1}" if len(classes) > 1 else
                                                                  "stores with more than one class"))
    if order is not None:
        _no_duplicates(order, "--class-order")
        unknown = sorted(set(order) - set(classes))
        missing = sorted(set(classes) - set(order))
        if unknown or missing or not all(order):
            raise OptionError(f"--class-order must list every class once; unknown: {unknown}, missing: {missing}")
    else:
        order = list(np.random.default_rng(seed).permutation(sorted(classes)))
    first = first_increment or increment
    order = [str(c) for c in order]
    return [order[:first]] + [order[i:i + increment] for i in range(first, len(order), increment)]


def distinct_orders(classes: list[str], increment: int, count: int, seed: int = 0,
                    first_increment: int | None = None) -> list[tuple[int, list[list[str]]]]:
    """``count`` seeded class orders that split ``classes`` into different tasks, as ``(seed, tasks)``.

    The seeds are tried from ``seed`` upward; one whose tasks hold the same classes, in the same task order,
    as an earlier one is skipped (orders that differ only inside a task are the same run). More orders than
    there are distinct splits are refused.

    >>> [s for s, _ in distinct_orders(list("abcde"), 2, 3)]   # seed 2 repeats seed 0's order
    [0, 1, 3]
    """
    sizes = [len(t) for t in make_tasks(sorted(classes), increment, order=sorted(classes),
                                        first_increment=first_increment) or []]
    possible = math.factorial(len(classes))
    for n in sizes:
        possible //= math.factorial(n)
    if count > possible:
        raise OptionError(f"--orders {count}: {len(classes)} classes in tasks of {'/'.join(map(str, sizes))} "
                          f"have only {possible} distinct orders")
    found: list[tuple[int, list[list[str]]]] = []
    seen: set[tuple[frozenset[str], ...]] = set()
    s = seed
    while len(found) < count:
        tasks = make_tasks(classes, increment, seed=s, first_increment=first_increment) or []
        key = tuple(frozenset(t) for t in tasks)
        if key not in seen:
            seen.add(key)
            found.append((s, tasks))
        s += 1
    return found


def _no_duplicates(names: list[str], option: str) -> None:
    twice = sorted(c for c, n in Counter(names).items() if n > 1)
    if twice:
        raise OptionError(f"{option} lists {', '.join(twice)} more than once")
