"""The training loop: tasks -> stream -> head -> periodic evaluation -> checkpoints.

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
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable

import numpy as np
from tqdm import tqdm

from pipeline.errors import OptionError
from pipeline.evaluate import Evaluation, continual_metrics
from pipeline.heads.base import Head
from pipeline.heads.exemplars import ExperienceReplay
from pipeline.models import TrainedModel, save_model
from pipeline.stream import FeatureStream, check_identity


@dataclass
class TrainOptions:
    epochs: int = 1
    eval_every: int = 0
    checkpoint_every: int = 0
    model_out: Path | None = None
    tasks: list[list[str]] | None = None
    joint_reference: bool = True
    replay: bool = False
    replay_memory: int = 2000
    pool_size: int = 1000
    seed: int = 0
    progress: bool = True


@dataclass
class RunState:
    """Where a run is; saved in checkpoints."""

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
    done: bool = False


def run_key(train: FeatureStream, opts: TrainOptions) -> str:
    """Identifies a run's data and order, so a checkpoint only continues the same run."""
    parts = {"stores": [[str(s.path.resolve()), s.n_rows] for s in train.stores], "holdout": train.holdout,
             "split": train.split, "shuffle": train.shuffle_buffer, "seed": train.seed, "chunk": train.chunk_rows,
             "epochs": opts.epochs, "tasks": opts.tasks}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_model_fits(model: TrainedModel, stream: FeatureStream, what: str) -> None:
    check_identity(model.backbone, {**stream.identity, "feature_dim": stream.feature_dim}, what)


def evaluate_head(head: Head, stream: FeatureStream | None, classes: set[Hashable] | None = None) -> Evaluation:
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


def _save(model: TrainedModel, state: RunState, path: Path | None) -> None:
    if path is None:
        return
    model.progress = state.__dict__.copy()
    save_model(model, path)


def train(model: TrainedModel, train_stream: FeatureStream, test_stream: FeatureStream | None,
          opts: TrainOptions, make_fresh_head: Callable[[], Head] | None = None,
          log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Train ``model.head`` on ``train_stream``; returns the metrics dictionary."""
    head = model.head
    check_model_fits(model, train_stream, "the training stores")
    if test_stream is not None:
        check_model_fits(model, test_stream, "the test stores")
    key = run_key(train_stream, opts)
    previous = model.progress or {}
    if previous.get("key") == key and not previous.get("done"):
        state = RunState(**previous)
        log(f"continuing an interrupted run at task {state.task + 1}, epoch {state.epoch + 1}, "
            f"row {state.rows_in_epoch} ({state.rows} rows already learnt)")
    else:
        if previous.get("key") == key:
            log("this model already finished a run on these stores with these options: learning them again "
                "(another pass over the same rows)")
        state = RunState(key=key)
    tasks = opts.tasks or [sorted(train_stream.classes)]
    if opts.replay and model.replay is None:
        model.replay = ExperienceReplay(opts.replay_memory, opts.pool_size, opts.seed)
    replay = model.replay if opts.replay else None
    incremental = opts.tasks is not None
    model.stores.extend({"path": str(s.path), "rows": s.n_rows} for s in train_stream.stores
                        if {"path": str(s.path), "rows": s.n_rows} not in model.stores)

    t_learn = 0.0
    t0 = time.perf_counter()
    rows_at_start = state.rows
    next_eval = _next_multiple(state.rows, opts.eval_every)
    next_ckpt = _next_multiple(state.rows, opts.checkpoint_every)
    bar = tqdm(total=None, unit="row", desc=f"train {model.head_name}", disable=not opts.progress,
               file=sys.stderr, initial=state.rows)

    def point(held: Evaluation | None = None) -> None:
        if held is None and test_stream is not None:
            held = evaluate_head(head, test_stream, _seen(tasks, state.task) if incremental else None)
        entry = {"rows_seen": state.rows, "progressive_accuracy": _ratio(state.progressive_correct, state.progressive_rows),
                 "heldout_accuracy": held.accuracy if held is not None and held.rows else None}
        state.curve.append(entry)
        log(f"rows {state.rows}: progressive accuracy {_fmt(entry['progressive_accuracy'])}"
            + (f", held-out accuracy {_fmt(entry['heldout_accuracy'])}" if held is not None else ""))

    consistent = True
    try:
        while state.task < len(tasks):
            task_stream = train_stream.with_options(classes=tasks[state.task] if incremental else None)
            while state.epoch < opts.epochs:
                for batch in task_stream.iter_epoch(state.epoch, skip=state.rows_in_epoch):
                    start = 0
                    while start < len(batch.y):
                        stop = len(batch.y)
                        for boundary in (next_eval, next_ckpt):
                            if boundary:
                                stop = min(stop, start + boundary - state.rows)
                        X, y, paths = batch.X[start:stop], batch.y[start:stop], batch.paths[start:stop]
                        t1 = time.perf_counter()
                        consistent = False  # a Ctrl-C from here on may leave the head half-updated
                        if replay is not None:
                            Xm, ym, own = replay.mix(X, y, paths, (state.task, state.epoch, state.rows))
                            preds = head.progressive_fit(Xm, ym)[own]
                        else:
                            preds = head.progressive_fit(X, y, paths)
                        t_learn += time.perf_counter() - t1
                        state.progressive_correct += int(np.sum(preds == y))
                        state.progressive_rows += len(y)
                        state.rows += len(y)
                        state.rows_in_epoch += len(y)
                        consistent = True
                        bar.update(len(y))
                        bar.set_postfix(progressive=_fmt(_ratio(state.progressive_correct, state.progressive_rows)),
                                        refresh=False)
                        start = stop
                        if next_eval and state.rows >= next_eval:
                            point()
                            next_eval += opts.eval_every
                        if next_ckpt and state.rows >= next_ckpt:
                            _save(model, state, opts.model_out)
                            next_ckpt += opts.checkpoint_every
                state.epoch += 1
                state.rows_in_epoch = 0
            head.end_task()
            if replay is not None:
                replay.end_task()
            if incremental:
                _after_task(head, test_stream, tasks, state, log)
            state.task += 1
            state.epoch = 0
            if incremental:
                _save(model, state, opts.model_out if opts.checkpoint_every else None)
    except KeyboardInterrupt:
        bar.close()
        if opts.model_out is not None and opts.checkpoint_every:
            if consistent:
                _save(model, state, opts.model_out)
                log(f"interrupted: checkpoint saved to {opts.model_out} at row {state.rows}")
            else:
                log(f"interrupted during an update: the last checkpoint in {opts.model_out} is kept")
            log(f"rerun with --resume {opts.model_out} (same stores and options) to continue")
        raise
    bar.close()
    elapsed = time.perf_counter() - t0
    state.done = True
    held = evaluate_head(head, test_stream)
    if not state.curve or state.curve[-1]["rows_seen"] != state.rows:
        point(held)
    model.history.extend(state.curve)
    metrics: dict[str, Any] = {
        "head": model.head_name,
        "settings": head.settings(),
        "classes": [str(c) for c in head.classes_],
        "rows_seen": head.rows_seen_,
        "rows_this_run": state.rows,
        "progressive": {"accuracy": _ratio(state.progressive_correct, state.progressive_rows),
                        "rows": state.progressive_rows},
        "heldout": held.report(),
        "learning_curve": state.curve,
        "timing": {"elapsed_s": elapsed, "learn_s": t_learn,
                   "rows_per_s": (state.rows - rows_at_start) / t_learn if t_learn else None},
        "head_state": head.describe(),
    }
    if incremental:
        metrics.update(_incremental_metrics(state, tasks))
        if opts.joint_reference and make_fresh_head is not None:
            joint = make_fresh_head()
            for epoch in range(opts.epochs):
                for batch in train_stream.with_options(classes=None).iter_epoch(epoch):
                    joint.partial_fit(batch.X, batch.y, batch.paths)
            joint.end_task()
            metrics["joint_accuracy"] = evaluate_head(joint, test_stream).accuracy
            metrics["joint_minus_final"] = (metrics["joint_accuracy"] - metrics["final_accuracy"]
                                            if metrics["final_accuracy"] is not None else None)
    _save(model, state, opts.model_out)
    return metrics


def _after_task(head: Head, test_stream: FeatureStream | None, tasks: list[list[str]], state: RunState,
                log: Callable[[str], None]) -> None:
    if test_stream is None:
        return
    seen = _seen(tasks, state.task)
    ev = evaluate_head(head, test_stream, seen)
    row: list[float | None] = [None] * len(tasks)
    for j in range(state.task + 1):
        acc = ev.accuracy_on(set(tasks[j]))
        row[j] = None if math.isnan(acc) else acc
    state.matrix.append(row)
    state.incremental_accuracy.append(ev.accuracy)
    log(f"task {state.task + 1}/{len(tasks)} ({', '.join(tasks[state.task])}): accuracy on the "
        f"{len(seen)} classes seen {_fmt(ev.accuracy)}")


def _incremental_metrics(state: RunState, tasks: list[list[str]]) -> dict[str, Any]:
    out: dict[str, Any] = {"tasks": tasks, "accuracy_matrix": state.matrix}
    if state.matrix:
        out.update(continual_metrics(state.matrix))
        out["accuracy_after_each_task"] = state.incremental_accuracy
        out["average_incremental_accuracy"] = float(np.mean(state.incremental_accuracy))
        out["final_accuracy"] = state.incremental_accuracy[-1]
    else:
        out["final_accuracy"] = None
    return out


def _seen(tasks: list[list[str]], upto: int) -> set[Hashable]:
    return {c for t in tasks[: min(upto, len(tasks) - 1) + 1] for c in t}


def _next_multiple(rows: int, every: int) -> int:
    return (rows // every + 1) * every if every else 0


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def make_tasks(classes: list[str], increment: int | None = None, spec: str | None = None,
               order: list[str] | None = None, seed: int = 0) -> list[list[str]] | None:
    """Split classes into tasks: ``spec`` ("a,b;c,d"), or ``increment`` classes per task in ``order``."""
    if spec:
        tasks = [[c.strip() for c in part.split(",") if c.strip()] for part in spec.split(";") if part.strip()]
        unknown = sorted({c for t in tasks for c in t} - set(classes))
        if unknown:
            raise OptionError(f"--tasks names classes not in the stores: {', '.join(unknown)} "
                                 f"(the stores hold: {', '.join(classes)})")
        return tasks
    if not increment:
        return None
    if order:
        unknown = sorted(set(order) - set(classes))
        missing = sorted(set(classes) - set(order))
        if unknown or missing:
            raise OptionError(f"--class-order must list every class once; unknown: {unknown}, missing: {missing}")
    else:
        order = list(np.random.default_rng(seed).permutation(sorted(classes)))
    return [list(map(str, order[i:i + increment])) for i in range(0, len(order), increment)]
