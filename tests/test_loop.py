"""The training loop's plug-in hooks: order, chunk cuts, and what a head's own hooks see."""

from __future__ import annotations

from conftest import make_blobs_store
from pipeline.heads import make_head
from pipeline.loop import Plugin
from pipeline.models import TrainedModel
from pipeline.stream import FeatureStream
from pipeline.train import TrainOptions, train


class Recorder(Plugin):
    def __init__(self):
        self.events = []

    def before_training(self, loop):
        self.events.append("before_training")

    def before_task(self, loop, task):
        self.events.append(("before_task", task))

    def next_stop(self, loop):
        return (loop.state.rows // 70 + 1) * 70  # cut chunks every 70 rows

    def after_chunk(self, loop, chunk, preds):
        self.events.append(("chunk", chunk.task, chunk.epoch, len(chunk.y), loop.state.rows))

    def after_task(self, loop, task):
        self.events.append(("after_task", task, loop.state.task))

    def after_training(self, loop, metrics):
        self.events.append("after_training")
        metrics["recorded"] = True


def test_hooks_run_in_order_and_cut_chunks(tmp_path):
    store = make_blobs_store(tmp_path / "s.h5", 400, 6, ["a", "b", "c"])
    calls = []
    head = make_head("softmax", n_features=6)
    head.before_task = lambda task, classes: calls.append(("head.before_task", task, list(classes)))
    head.after_chunk = lambda X, y, paths: calls.append(("head.after_chunk", len(y)))
    model = TrainedModel(head, "softmax", {"backbone": "synthetic", "weights": "none", "alpha": "",
                                            "input_size": [8, 8], "preprocessing": "none", "pooling": "avg",
                                            "feature_dim": 6})
    rec = Recorder()
    with FeatureStream([store], holdout=0.25, split="train", chunk_rows=128) as stream:
        test = stream.with_options(split="test")
        metrics = train(model, stream, test, TrainOptions(tasks=[["a", "b"], ["c"]], epochs=2, plugins=(rec,),
                                                          progress=False, joint_reference=False))
    assert metrics["recorded"] and len(metrics["accuracy_matrix"]) == 2
    kinds = [e if isinstance(e, str) else e[0] for e in rec.events]
    assert kinds[0] == "before_training" and kinds[-1] == "after_training"
    assert rec.events[1] == ("before_task", 0)
    assert ("after_task", 0, 1) in rec.events and ("before_task", 1) in rec.events
    assert rec.events.index(("after_task", 0, 1)) < rec.events.index(("before_task", 1))
    chunks = [e for e in rec.events if isinstance(e, tuple) and e[0] == "chunk"]
    assert all(rows % 70 == 0 or n < 70 for _, _, _, n, rows in chunks)
    assert {(t, ep) for _, t, ep, _, _ in chunks} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert calls[0] == ("head.before_task", 0, ["a", "b"]) and ("head.before_task", 1, ["c"]) in calls
    assert sum(n for kind, *rest in calls if kind == "head.after_chunk" for n in rest) == metrics["rows_this_run"]
