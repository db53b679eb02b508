"""Loggers: every evaluation point of a run to a CSV file and to TensorBoard event files.

:class:`RunLogger` is a training-loop plug-in (Avalanche's ``CSVLogger`` and
``TensorboardLogger`` in one). It reads the points :class:`pipeline.plugins.EvaluationPoints`
adds to the learning curve and the rows :class:`pipeline.plugins.TaskEvaluation` adds to the
accuracy matrix, so it must come after them in the plug-in list (``train`` puts it there).
Every point is written and flushed when it is made: an interrupted run loses none.

TensorBoard files are written with tensorboardX (``pip install 'incremental-pipeline[logging]'``),
imported only when a run logs, and never TensorFlow. Without tensorboardX the CSV is still
written and a warning says how to get the event files.
"""

from __future__ import annotations

import contextlib
import csv
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TextIO

from pipeline.loop import Plugin

if TYPE_CHECKING:
    from pipeline.loop import TrainingLoop

CSV_NAME = "points.csv"
CSV_COLUMNS = ["rows_seen", "task", "progressive_accuracy", "heldout_accuracy", "heldout_log_loss", "rows_per_s"]
INSTALL_HINT = "pip install 'incremental-pipeline[logging]'"

# curve key -> TensorBoard tag (step: rows seen)
SCALARS = {"progressive_accuracy": "accuracy/progressive", "heldout_accuracy": "accuracy/heldout",
           "heldout_log_loss": "log_loss/heldout", "rows_per_s": "speed/rows_per_s"}


def _rows_upto(path: Path, rows: int) -> list[dict[str, str]]:
    """The CSV rows of points up to ``rows`` (those an interrupted run logged before its checkpoint)."""
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return [r for r in csv.DictReader(fh) if r.get("rows_seen", "").isdigit() and int(r["rows_seen"]) <= rows]


def summary_writer(log_dir: Path, purge_step: int | None = None) -> Any | None:
    """A tensorboardX ``SummaryWriter`` on ``log_dir``, or None (with a warning) without tensorboardX."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        warnings.warn(f"--log-dir: tensorboardX is not installed, so only {log_dir / CSV_NAME} is written; "
                      f"for TensorBoard event files: {INSTALL_HINT}", stacklevel=2)
        return None
    return SummaryWriter(logdir=str(log_dir), purge_step=purge_step)


class RunLogger(Plugin):
    """Write each evaluation point (and each accuracy-matrix row) to ``log_dir/points.csv`` and to
    TensorBoard event files in ``log_dir``.

    A fresh run starts a new CSV; a run continuing an interrupted one (``--resume``) keeps the points
    logged up to its checkpoint and goes on from there.

    Logs never stop training: when a write fails (a full disk), logging stops, ``failure`` says why, and
    the run goes on (its model is saved); the caller reports ``failure`` at the end.
    """

    def __init__(self, log_dir: Path, tensorboard: bool = True):
        self.log_dir, self.tensorboard = Path(log_dir), tensorboard
        self.fh: TextIO | None = None
        self.csv: Any = None
        self.writer: Any = None
        self.points = self.matrix_rows = 0
        self.n_tasks = 0
        self.failure: str | None = None

    def _guarded(self, action: Callable[[], None]) -> None:
        if self.failure is not None:
            return
        try:
            action()
        except (OSError, RuntimeError) as exc:
            reason = getattr(exc, "strerror", None) or " ".join(str(exc).split())
            where = getattr(exc, "filename", None) or self.log_dir
            self.failure = f"writing the logs in {self.log_dir} failed ({where}: {reason}); they stop there"
            self._abandon()

    def _abandon(self) -> None:
        """Close the log files after a failed write without raising: their descriptors are pointed at an
        anonymous in-memory file first (Linux), so the pending writes, fsyncs and tensorboardX's exit handler
        succeed into nothing."""
        root = str(self.log_dir.resolve()) + os.sep
        if sys.platform.startswith("linux") and hasattr(os, "memfd_create"):
            with contextlib.suppress(OSError):
                for name in os.listdir("/proc/self/fd"):
                    with contextlib.suppress(OSError):
                        if os.readlink(f"/proc/self/fd/{name}").startswith(root):
                            sink = os.memfd_create("discarded-log")
                            os.dup2(sink, int(name))
                            os.close(sink)
        writer, fh, self.writer, self.fh = self.writer, self.fh, None, None
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.close()
        if fh is not None:
            with contextlib.suppress(Exception):
                fh.close()

    def columns(self) -> list[str]:
        return CSV_COLUMNS + [f"task_{j + 1}_accuracy" for j in range(self.n_tasks)]

    def before_training(self, loop: "TrainingLoop") -> None:
        self._guarded(lambda: self._start(loop))

    def _start(self, loop: "TrainingLoop") -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.n_tasks = len(loop.tasks) if loop.incremental else 0
        path = self.log_dir / CSV_NAME
        resumed = loop.state.rows > 0
        kept = _rows_upto(path, loop.state.rows) if resumed else []
        self.fh = path.open("w", newline="")
        self.csv = csv.DictWriter(self.fh, fieldnames=self.columns(), extrasaction="ignore")
        self.csv.writeheader()
        self.csv.writerows(kept)
        self.fh.flush()
        # points and matrix rows made before an interruption were logged by the interrupted run
        self.points, self.matrix_rows = len(loop.state.curve), len(loop.state.matrix)
        if self.tensorboard:
            # purge_step: TensorBoard drops what the interrupted run logged after its checkpoint
            self.writer = summary_writer(self.log_dir, loop.state.rows + 1 if resumed else None)

    def after_chunk(self, loop: "TrainingLoop", chunk: Any, preds: Any) -> None:
        self._guarded(lambda: self._write_new(loop))

    def after_task(self, loop: "TrainingLoop", task: int) -> None:
        self._guarded(lambda: self._write_new(loop))

    def after_training(self, loop: "TrainingLoop", metrics: dict[str, Any]) -> None:
        self._guarded(lambda: self._write_new(loop))
        self._guarded(lambda: self._summary(loop, metrics))
        self.close()

    def _summary(self, loop: "TrainingLoop", metrics: dict[str, Any]) -> None:
        if self.writer is not None:
            for key in ("final_accuracy", "average_incremental_accuracy", "forgetting", "joint_accuracy"):
                if metrics.get(key) is not None:
                    self.writer.add_scalar(f"summary/{key}", metrics[key], loop.state.rows)

    def on_interrupt(self, loop: "TrainingLoop", consistent: bool) -> None:
        self._guarded(lambda: self._write_new(loop))
        self.close()

    def close(self) -> None:
        self._guarded(self._close)
        if self.failure is not None:
            self._abandon()

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.fh is not None:
            self.fh.close()
            self.fh = None

    def _write_new(self, loop: "TrainingLoop") -> None:
        s = loop.state
        new_points, new_rows = s.curve[self.points:], s.matrix[self.matrix_rows:]
        if self.fh is None or not (new_points or new_rows):
            return
        for point in new_points:
            self._point(point)
        for i, row in enumerate(new_rows, start=self.matrix_rows):
            self._matrix_row(i, row, s.incremental_accuracy[i] if i < len(s.incremental_accuracy) else None)
        self.points, self.matrix_rows = len(s.curve), len(s.matrix)
        self.fh.flush()
        if self.writer is not None:
            self.writer.flush()

    def _point(self, point: dict[str, Any]) -> None:
        row = {k: point.get(k) for k in CSV_COLUMNS}
        row["task"] = point.get("task", 1)
        for j, acc in enumerate(point.get("task_accuracy") or []):
            row[f"task_{j + 1}_accuracy"] = acc
        self.csv.writerow({k: "" if v is None else v for k, v in row.items()})
        if self.writer is None:
            return
        step = point["rows_seen"]
        for key, tag in SCALARS.items():
            if point.get(key) is not None:
                self.writer.add_scalar(tag, point[key], step)
        for j, acc in enumerate(point.get("task_accuracy") or []):
            if acc is not None:
                self.writer.add_scalar(f"task_accuracy/task_{j + 1}", acc, step)

    def _matrix_row(self, i: int, row: list[float | None], seen_accuracy: float | None) -> None:
        """Row i of the accuracy matrix (after task i+1): one scalar per task so far, step = task number."""
        if self.writer is None:
            return
        for j, acc in enumerate(row):
            if acc is not None:
                self.writer.add_scalar(f"accuracy_matrix/task_{j + 1}", acc, i + 1)
        if seen_accuracy is not None:
            self.writer.add_scalar("accuracy_matrix/all_seen_classes", seen_accuracy, i + 1)
