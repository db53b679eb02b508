"""The CLI through click's CliRunner: help, errors without tracebacks, end to end."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import DVC, WEIGHTS_025, kaggle_names, link_subset, make_blobs_store, requires_shared
from pipeline.cli import main

SMALL = ["--backbone", "mobilenet", "--alpha", "0.25", "--image-size", "128", "--weights", str(WEIGHTS_025)]


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_clean_error(result, pattern: str) -> None:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert pattern in result.output, result.output


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_command_has_help_with_an_example(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.output and len(result.output) > 300


def test_extract_features_bad_sources(tmp_path):
    assert_clean_error(invoke("extract-features", tmp_path / "missing", "-o", tmp_path / "o.h5"), "does not exist")
    (tmp_path / "empty").mkdir()
    assert_clean_error(invoke("extract-features", tmp_path / "empty", "-o", tmp_path / "o.h5"), "cannot tell the layout")
    assert_clean_error(invoke("extract-features", tmp_path, "-o", tmp_path / "o.h5", "--layout", "zip"), "Invalid value")
    assert_clean_error(invoke("extract-features", tmp_path / "empty", "-o", tmp_path / "o.h5", "--layout", "kaggle"),
                       "no images found")


def test_extract_features_unknown_backbone(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "cat.1.jpg").write_bytes(b"x")
    assert_clean_error(invoke("extract-features", tmp_path / "src", "-o", tmp_path / "o.h5", "--backbone", "alexnet"),
                       "unknown backbone")


@requires_shared
def test_extract_then_train_evaluate_predict_end_to_end(tmp_path):
    src = link_subset(DVC, tmp_path / "src", kaggle_names(40))
    (src / "dog.999.jpg").write_bytes(b"")
    store, model = tmp_path / "s.h5", tmp_path / "m.pkl"
    r = invoke("extract-features", src, "-o", store, *SMALL, "-q")
    assert r.exit_code == 0, r.output
    with h5py.File(store) as f:
        assert f["features"].shape == (80, 256) and f.attrs["skipped_count"] == 1
    r = invoke("extract-features", src, "-o", store, *SMALL)
    assert r.exit_code == 0 and "already complete" in r.output
    r = invoke("train-incremental", store, "--head", "logreg", "--holdout", "0.3", "--model-out", model,
               "--metrics-out", tmp_path / "m.json", "--plot", tmp_path / "c.png", "--eval-every", "20", "-q")
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    for key in ("rows_seen", "learning_curve"):
        assert key in metrics
    assert 0 <= metrics["heldout"]["accuracy"] <= 1 and metrics["progressive"]["accuracy"] is not None
    assert (tmp_path / "c.png").stat().st_size > 10_000
    r = invoke("evaluate", model, store, "--holdout", "0.3", "--metrics-out", tmp_path / "e.json")
    assert r.exit_code == 0 and "accuracy" in r.output
    assert json.loads((tmp_path / "e.json").read_text())["heldout"]["accuracy"] == metrics["heldout"]["accuracy"]
    # The recorded weights file is found at its recorded path (hash checked): no option repeated (issue 19/21).
    r = invoke("predict", model, src / "cat.3.jpg", src / "dog.7.jpg")
    assert r.exit_code == 0, r.output
    assert "cat" in r.output and "dog" in r.output
    r = invoke("predict", model, src / "cat.3.jpg", src / "dog.7.jpg", src / "dog.999.jpg", "--weights", WEIGHTS_025,
               "--output", tmp_path / "p.json")
    assert r.exit_code == 0, r.output
    preds = json.loads((tmp_path / "p.json").read_text())
    assert [p["label"] for p in preds[:2]] == ["cat", "dog"] and preds[2]["error"]


def test_train_refuses_bad_input(tmp_path):
    good = make_blobs_store(tmp_path / "g.h5", 100, 8, ["a", "b"])
    other = make_blobs_store(tmp_path / "o.h5", 100, 16, ["a", "b"])
    assert_clean_error(invoke("train-incremental", good, other), "feature_dim")
    assert_clean_error(invoke("train-incremental", good, "--head", "svm"), "Invalid value for '--head'")
    assert_clean_error(invoke("train-incremental", tmp_path / "nope.h5"), "does not exist")
    assert_clean_error(invoke("train-incremental", good, "--checkpoint-every", "10"), "needs --model-out")
    with h5py.File(good, "a") as f:
        f.attrs["complete"] = False
    assert_clean_error(invoke("train-incremental", good), "incomplete")
    assert invoke("train-incremental", good, "--allow-incomplete", "-q").exit_code == 0
    with h5py.File(good, "a") as f:
        f["features"][5] = np.nan
    assert_clean_error(invoke("train-incremental", good, "--allow-incomplete"), "1 of 100 rows hold NaN")
    (tmp_path / "junk.h5").write_bytes(b"junk" * 100)
    assert_clean_error(invoke("train-incremental", tmp_path / "junk.h5"), "not a readable HDF5")
    assert_clean_error(invoke("evaluate", tmp_path / "junk.h5", other), "is not a model file")


def test_unseen_test_label_is_reported_and_counted_as_error(tmp_path):
    train = make_blobs_store(tmp_path / "t.h5", 300, 8, ["a", "b"], seed=0)
    test = make_blobs_store(tmp_path / "v.h5", 90, 8, ["a", "b", "zebra"], seed=0)
    r = invoke("train-incremental", train, "--test", test, "--metrics-out", tmp_path / "m.json", "-q")
    assert r.exit_code == 0, r.output
    held = json.loads((tmp_path / "m.json").read_text())["heldout"]
    assert held["unseen_labels"]["zebra"] > 0 and "never seen in training" in r.output
    assert held["per_class"]["zebra"]["recall"] == 0.0
