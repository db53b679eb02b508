from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluate import Evaluation, continual_metrics


def test_continual_metrics_against_hand_computed_values():
    R = [[0.9, None, None],
         [0.6, 0.8, None],
         [0.5, 0.7, 0.95]]
    m = continual_metrics(R)
    # forgetting: task0 max(0.9, 0.6) - 0.5 = 0.4; task1 max(0.8) - 0.7 = 0.1 -> 0.25
    assert m["forgetting"] == pytest.approx(0.25)
    assert m["forgetting_per_task"] == pytest.approx([0.4, 0.1])
    # backward transfer: (0.5 - 0.9) + (0.7 - 0.8) -> -0.25
    assert m["backward_transfer"] == pytest.approx(-0.25)
    # task-balanced incremental accuracy: mean(0.9, 0.7, 0.7166..)
    assert m["task_balanced_incremental_accuracy"] == pytest.approx(np.mean([0.9, 0.7, (0.5 + 0.7 + 0.95) / 3]))


def test_a_task_never_learnt_is_not_reported_as_kept():
    """LwF once predicted the first class for ever: every row [1, 0, 0], forgetting 0. The metrics must say so."""
    from pipeline.runs import summary

    R = [[1.0, None, None], [1.0, 0.0, None], [1.0, 0.0, 0.0]]
    m = continual_metrics(R)
    assert m["forgetting"] == 0.0                        # the standard formula: nothing learnt, nothing lost
    assert m["learning_accuracy"] == pytest.approx(1 / 3)
    assert m["tasks_not_learnt"] == [2, 3]
    metrics = {"heldout": {}, "settings": {}, "head": "mlp", "rows_this_run": 1, "rows_seen": 1, "classes": list("abc"),
               "timing": {"rows_per_s": None}, "progressive": {"accuracy": None}, "accuracy_matrix": R,
               "tasks": [["a"], ["b"], ["c"]], **m}
    text = summary(metrics, None)
    assert "learning accuracy (each task right after it): 33.33%" in text
    assert "never learnt" in text and "task 2 (b); task 3 (c)" in text
    assert continual_metrics([[0.9, None], [0.5, 0.8]])["tasks_not_learnt"] == []


def test_evaluation_counts_match_sklearn_on_rows():
    from sklearn.metrics import accuracy_score, f1_score, log_loss

    rng = np.random.default_rng(0)
    classes = ["a", "b", "c"]
    y = np.array(classes, dtype=object)[rng.integers(0, 3, 300)]
    proba = rng.dirichlet([1, 1, 1], 300)
    ev = Evaluation()
    for s in range(0, 300, 70):
        ev.update(y[s:s + 70], proba[s:s + 70], classes)
    rep = ev.report()
    pred = np.array(classes)[proba.argmax(1)]
    assert rep["accuracy"] == pytest.approx(accuracy_score(y.astype(str), pred))
    f1 = f1_score(y.astype(str), pred, labels=classes, average=None)
    assert [rep["per_class"][c]["f1"] for c in classes] == pytest.approx(f1)
    assert rep["log_loss"] == pytest.approx(log_loss(y.astype(str), proba, labels=classes))
    assert np.array(rep["confusion"]["matrix"]).sum() == 300


def test_unseen_label_is_an_error_with_its_own_row():
    ev = Evaluation()
    ev.update(np.array(["a", "zebra"], dtype=object), np.array([[0.9, 0.1], [0.2, 0.8]]), ["a", "b"])
    rep = ev.report()
    assert rep["accuracy"] == 0.5 and rep["unseen_labels"] == {"zebra": 1}
    assert rep["per_class"]["zebra"]["recall"] == 0.0
    assert ev.accuracy_on({"a"}) == 1.0
