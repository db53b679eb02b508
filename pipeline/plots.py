"""Figures: the learning curve, the accuracy-matrix heatmap and the held-out confusion matrix
(matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.fsutil import write_atomically  # noqa: E402


def plot_learning_curve(metrics: dict[str, Any], path: str | Path) -> None:
    curve = metrics.get("learning_curve") or []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = [p["rows_seen"] for p in curve]
    for key, label in (("progressive_accuracy", "progressive (predict, then learn)"),
                       ("heldout_accuracy", "held-out")):
        pts = [(r, p[key]) for r, p in zip(rows, curve) if p.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=label)
    ax.set_xlabel("rows seen")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{metrics.get('head', '')}: learning curve")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    _save(fig, path)


def plot_accuracy_matrix(metrics: dict[str, Any], path: str | Path) -> None:
    matrix = metrics["accuracy_matrix"]
    R = np.array([[np.nan if v is None else v for v in row] for row in matrix], float)
    T = len(R)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * T, 0.8 + 0.55 * T) if T > 6 else (6, 5))
    im = ax.imshow(R, vmin=0, vmax=1, cmap="viridis")
    if T <= 15:
        for i in range(T):
            for j in range(T):
                if not np.isnan(R[i, j]):
                    ax.text(j, i, f"{100 * R[i, j]:.0f}", ha="center", va="center",
                            color="white" if R[i, j] < 0.6 else "black", fontsize=8)
    ax.set_xlabel("evaluated on task j")
    ax.set_ylabel("after training task i")
    ax.set_xticks(range(T), [str(j + 1) for j in range(T)])
    ax.set_yticks(range(T), [str(i + 1) for i in range(T)])
    final = metrics.get("final_accuracy")
    joint = metrics.get("joint_accuracy")
    title = f"{metrics.get('head', '')}: accuracy matrix (%)"
    if final is not None:
        title += f"\nfinal {100 * final:.1f}%" + (f", joint {100 * joint:.1f}%" if joint is not None else "")
        title += f", forgetting {100 * metrics.get('forgetting', 0):.1f} pts"
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    _save(fig, path)


def confusion_path(plot: str | Path) -> Path:
    """Where ``--plot NAME.png`` puts the confusion matrix: ``NAME.confusion.png`` next to it."""
    plot = Path(plot)
    return plot.with_name(f"{plot.stem}.confusion{plot.suffix or '.png'}")


def plot_confusion(metrics: dict[str, Any], path: str | Path, counts: bool | None = None) -> None:
    """The held-out confusion matrix, each row normalised to the true class's rows (recall on the
    diagonal); readable up to about 50 classes (labels rotated, font and figure scaled).
    ``counts``: write each cell's row count in it (default: up to 20 classes)."""
    conf = metrics["heldout"]["confusion"]
    labels, cm = conf["labels"], np.array(conf["matrix"], float)
    n = len(labels)
    show_counts = counts if counts is not None else n <= 20
    totals = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)
    side = min(max(5.0, 1.5 + 0.28 * n), 20.0)
    font = 9 if n <= 15 else 8 if n <= 30 else 7  # a cell is about 20 pt high at 50 classes
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    im = ax.imshow(share, vmin=0, vmax=1, cmap="Blues")
    if show_counts:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=font,
                            color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), labels, rotation=90 if n > 8 else 45, ha="center" if n > 8 else "right", fontsize=font)
    ax.set_yticks(range(n), labels, fontsize=font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    acc = metrics["heldout"].get("accuracy")
    ax.set_title(f"{metrics.get('head', '')}: held-out confusion (row-normalised"
                 + ("; counts in cells" if show_counts else "") + ")"
                 + (f"\naccuracy {100 * acc:.1f}% on {metrics['heldout']['rows']} rows" if acc is not None else ""),
                 fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class's rows")
    fig.tight_layout()
    _save(fig, path)


def _save(fig: Any, path: Any) -> None:
    """Save a file atomically (a full disk leaves no half-written image), or into a buffer; close the figure."""
    try:
        if isinstance(path, (str, Path)):
            target = Path(path)
            write_atomically(target, lambda tmp: fig.savefig(tmp, dpi=120,
                                                             format=target.suffix.lstrip(".").lower() or "png"))
        else:  # a file object (the report's embedded figures)
            fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
