"""--log-dir: the CSV and TensorBoard event files hold every evaluation point; --plot's confusion matrix."""

from __future__ import annotations

import csv
import json
import os
import struct
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, make_blobs_store
from pipeline.heads import make_head
from pipeline.loggers import CSV_NAME
from pipeline.loop import Plugin
from pipeline.models import TrainedModel
from pipeline.plots import plot_confusion
from pipeline.runs import run_training
from pipeline.stream import FeatureStream
from pipeline.train import TrainOptions, train

quiet = {"echo": lambda s: None, "out": lambda s: None, "quiet": True}
CLASSES = [f"c{i}" for i in range(6)]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_events(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars of every event file in ``log_dir``, read with the protobuf tensorboardX ships
    (TFRecord framing: u64 length, u32 crc, payload, u32 crc)."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = defaultdict(list)
    files = sorted(log_dir.glob("events.out.tfevents.*"))
    assert files, f"no event file in {log_dir}"
    for path in files:
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                number = value.simple_value if value.HasField("simple_value") else value.tensor.float_val[0]
                scalars[value.tag].append((event.step, number))
    return dict(scalars)


def read_csv(log_dir: Path) -> list[dict[str, str]]:
    with (log_dir / CSV_NAME).open(newline="") as fh:
        return list(csv.DictReader(fh))


def num(text: str) -> float | None:
    return float(text) if text else None


def test_csv_and_events_hold_every_point_of_a_class_incremental_run(tmp_path):
    store = make_blobs_store(tmp_path / "s.h5", 600, 8, CLASSES)
    logs = tmp_path / "logs"
    m = run_training([store], head="softmax", holdout=0.3, increment=2, eval_every=100, log_dir=logs, **quiet)
    curve = m["learning_curve"]
    assert [p["rows_seen"] for p in curve] == [100, 200, 300, 400, m["rows_this_run"]]
    assert all(p["heldout_log_loss"] > 0 and p["rows_per_s"] > 0 for p in curve)

    rows = read_csv(logs)
    assert [int(r["rows_seen"]) for r in rows] == [p["rows_seen"] for p in curve]
    assert [int(r["task"]) for r in rows] == [p["task"] for p in curve]  # both 1-based
    for r, p in zip(rows, curve):
        for key in ("progressive_accuracy", "heldout_accuracy", "heldout_log_loss", "rows_per_s"):
            assert num(r[key]) == pytest.approx(p[key])
        assert [num(r[f"task_{j}_accuracy"]) for j in (1, 2, 3)] == pytest.approx(p["task_accuracy"])
    # the last point is the final held-out evaluation: its log loss is the report's
    assert num(rows[-1]["heldout_log_loss"]) == pytest.approx(m["heldout"]["log_loss"])
    assert num(rows[-1]["heldout_accuracy"]) == pytest.approx(m["heldout"]["accuracy"])
    # points of the first task know nothing of later tasks
    assert rows[0]["task_2_accuracy"] == "" and rows[0]["task_3_accuracy"] == ""

    events = read_events(logs)
    steps = [p["rows_seen"] for p in curve]
    for tag, key in (("accuracy/heldout", "heldout_accuracy"), ("accuracy/progressive", "progressive_accuracy"),
                     ("log_loss/heldout", "heldout_log_loss"), ("speed/rows_per_s", "rows_per_s")):
        assert [s for s, _ in events[tag]] == steps, tag
        assert [v for _, v in events[tag]] == pytest.approx([p[key] for p in curve], rel=1e-6), tag
    # accuracy-matrix rows: step = task number, one scalar per task seen so far
    R = m["accuracy_matrix"]
    for j in range(3):
        expected = [(i + 1, R[i][j]) for i in range(3) if R[i][j] is not None]
        got = events[f"accuracy_matrix/task_{j + 1}"]
        assert [s for s, _ in got] == [s for s, _ in expected]
        assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6)
    assert [v for _, v in events["accuracy_matrix/all_seen_classes"]] == pytest.approx(m["accuracy_after_each_task"])
    assert events["summary/final_accuracy"][0][1] == pytest.approx(m["final_accuracy"])


class StopAt(Plugin):
    """Ctrl-C once ``rows`` rows are learnt."""

    def __init__(self, rows: int):
        self.rows = rows

    def after_chunk(self, loop, chunk, preds):
        if loop.state.rows >= self.rows:
            raise KeyboardInterrupt


def _model(dim: int) -> TrainedModel:
    return TrainedModel(make_head("softmax", n_features=dim), "softmax",
                        {"backbone": "synthetic", "weights": "none", "alpha": "", "input_size": [8, 8],
                         "preprocessing": "none", "pooling": "avg", "feature_dim": dim})


def test_interrupt_keeps_every_point_and_resume_continues_the_log(tmp_path):
    store = make_blobs_store(tmp_path / "s.h5", 600, 8, CLASSES)
    logs, ckpt = tmp_path / "logs", tmp_path / "m.pkl"
    with FeatureStream([store], chunk_rows=50) as stream:
        opts = TrainOptions(eval_every=100, checkpoint_every=150, model_out=ckpt, progress=False, log_dir=logs,
                            plugins=(StopAt(350),))
        with pytest.raises(KeyboardInterrupt):
            train(_model(8), stream, stream, opts)
    # written and flushed as they were made (the interrupted run closed nothing by hand)
    assert [int(r["rows_seen"]) for r in read_csv(logs)] == [100, 200, 300]
    assert [s for s, _ in read_events(logs)["accuracy/heldout"]] == [100, 200, 300]

    # the checkpoint (saved at Ctrl-C, row 350) continues the run and the same log
    run_training([store], resume=ckpt, eval_every=100, chunk_rows=50, log_dir=logs, **quiet)
    assert [int(r["rows_seen"]) for r in read_csv(logs)] == [100, 200, 300, 400, 500, 600]


def test_missing_tensorboardx_writes_the_csv_and_warns(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails as when not installed
    store = make_blobs_store(tmp_path / "s.h5", 300, 8, ["a", "b"])
    with pytest.warns(UserWarning, match=r"pip install 'incremental-pipeline\[logging\]'"):
        run_training([store], holdout=0.3, eval_every=100, log_dir=tmp_path / "logs", **quiet)
    assert len(read_csv(tmp_path / "logs")) == 3
    assert not list((tmp_path / "logs").glob("events.out.tfevents.*"))


def test_a_logged_run_imports_no_tensorflow(tmp_path):
    store = make_blobs_store(tmp_path / "s.h5", 200, 8, ["a", "b"])
    code = ("import sys; from click.testing import CliRunner; from pipeline.cli import main; "
            f"r = CliRunner().invoke(main, ['train-incremental', {str(store)!r}, '--holdout', '0.3', '-q', "
            f"'--eval-every', '50', '--log-dir', {str(tmp_path / 'logs')!r}]); "
            "assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")  # tensorboardX imports torch
    # itself when torch is installed (tensorboardX/writer.py); the promise is no TensorFlow or Keras
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert read_events(tmp_path / "logs")["accuracy/heldout"]


def test_plot_draws_the_confusion_matrix_next_to_the_curve(tmp_path):
    store = make_blobs_store(tmp_path / "s.h5", 300, 8, CLASSES)
    m = run_training([store], holdout=0.3, plot=tmp_path / "curve.png", metrics_out=tmp_path / "m.json", **quiet)
    for name in ("curve.png", "curve.confusion.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
        Image.open(tmp_path / name).verify()
    assert json.loads((tmp_path / "m.json").read_text())["heldout"]["confusion"]["labels"] == m["heldout"]["confusion"]["labels"]


def test_confusion_plot_of_fifty_classes_is_a_readable_png(tmp_path):
    labels = [f"class_{i:02d}" for i in range(50)]
    rng = np.random.default_rng(0)
    cm = (np.eye(50) * 20 + rng.integers(0, 3, (50, 50))).astype(int)
    metrics = {"head": "nme", "heldout": {"rows": int(cm.sum()), "accuracy": float(np.trace(cm) / cm.sum()),
                                          "confusion": {"labels": labels, "matrix": cm.tolist()}}}
    plot_confusion(metrics, tmp_path / "c.png")
    with Image.open(tmp_path / "c.png") as im:
        assert im.format == "PNG" and min(im.size) >= 1500  # about 30 px per class


def test_ray_executor_refuses_log_dir_before_starting_ray(tmp_path):
    from pipeline.errors import PipelineError

    store = make_blobs_store(tmp_path / "s.h5", 200, 8, ["a", "b"])
    with pytest.raises(PipelineError, match="--log-dir needs sequential training"):
        run_training([store], head="slda", holdout=0.3, executor="ray", log_dir=tmp_path / "logs", **quiet)
    assert not (tmp_path / "logs").exists()
