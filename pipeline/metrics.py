"""The metrics of a training run: one schema for every way of training (local or on Ray).

:func:`run_metrics` builds the dictionary that ``train-incremental --metrics-out`` writes; the
plug-ins of :mod:`pipeline.plugins` add the held-out report, the learning curve (entries made by
:func:`curve_point`), the class-incremental figures and the joint reference; :func:`add_sources`
adds what the run read. :func:`store_record` is what a model records of each store it learnt.
Parallel training (:mod:`pipeline.parallel_train`) runs the same loop and plug-ins, so its JSON has
the same keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from pipeline.heads.base import Head

LOCAL_EXECUTOR = {"name": "local", "workers": 1, "partitions": None}


def ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def run_metrics(head_name: str, head: "Head", *, rows_this_run: int, progressive_correct: int,
                progressive_rows: int, elapsed_s: float, learn_s: float, rows_learnt: int,
                executor: dict[str, Any] | None = None) -> dict[str, Any]:
    """The keys every training run reports (the plug-ins add theirs)."""
    return {
        "head": head_name,
        "settings": head.settings(),
        "classes": [str(c) for c in head.classes_],
        "rows_seen": head.rows_seen_,
        "rows_this_run": rows_this_run,
        "progressive": {"accuracy": ratio(progressive_correct, progressive_rows), "rows": progressive_rows},
        "timing": {"elapsed_s": elapsed_s, "learn_s": learn_s,
                   "rows_per_s": rows_learnt / learn_s if learn_s else None},
        "head_state": head.describe(),
        "executor": dict(executor or LOCAL_EXECUTOR),
    }


def curve_point(rows_seen: int, task: int, progressive_accuracy: float | None, heldout_accuracy: float | None,
                heldout_log_loss: float | None, rows_per_s: float | None) -> dict[str, Any]:
    """One point of the learning curve (``task_accuracy`` is added in class-incremental runs)."""
    return {"rows_seen": rows_seen, "task": task, "progressive_accuracy": progressive_accuracy,
            "heldout_accuracy": heldout_accuracy, "heldout_log_loss": heldout_log_loss, "rows_per_s": rows_per_s}


def store_record(path: Path, rows: int, holdout: float) -> dict[str, Any]:
    """What a model records of a store it learnt from (``resolved`` tells two spellings of one path apart;
    ``holdout`` is the fraction held out of it, which evaluate's leakage check reads)."""
    return {"path": str(path), "resolved": str(Path(path).resolve()), "rows": rows, "holdout": holdout}


def add_sources(metrics: dict[str, Any], stores: Sequence[Path], test_stores: Sequence[Path],
                holdout: float) -> dict[str, Any]:
    """What the run read: training stores, the evaluation data and the held-out fraction."""
    metrics["stores"] = [str(p) for p in stores]
    metrics["test"] = [str(p) for p in test_stores] if test_stores else ("holdout" if holdout else None)
    metrics["holdout_fraction"] = holdout
    return metrics
