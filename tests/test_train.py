"""train-incremental on real MobileNet 0.25 features of the shared photos."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from conftest import make_blobs_store, requires_shared
from pipeline.models import load_model, save_model
from pipeline.runs import run_evaluation, run_training
from pipeline.stream import FeatureStream
from pipeline import train as train_module

quiet = {"echo": lambda s: None, "out": lambda s: None, "quiet": True}


def _arrays(stream):
    batches = list(stream)
    return np.concatenate([b.X for b in batches]), np.concatenate([b.y for b in batches])


@requires_shared
def test_logreg_row_by_row_close_to_batch_logistic_regression(dvc_store):
    metrics = run_training([dvc_store], head="logreg", holdout=0.3, **quiet)
    train = FeatureStream([dvc_store], holdout=0.3, split="train")
    Xtr, ytr = _arrays(train)
    Xte, yte = _arrays(train.with_options(split="test"))
    scaler = StandardScaler().fit(Xtr)
    batch = LogisticRegression(max_iter=3000).fit(scaler.transform(Xtr), ytr).score(scaler.transform(Xte), yte)
    online = metrics["heldout"]["accuracy"]
    assert metrics["rows_this_run"] == len(ytr) and metrics["heldout"]["rows"] == len(yte)
    assert online > batch - 0.03, (online, batch)
    assert metrics["progressive"]["accuracy"] > 0.8


@requires_shared
def test_softmax_learns_ten_imagenette_classes(imagenette_stores):
    train, val = imagenette_stores
    metrics = run_training([train], head="softmax", test_stores=[val], eval_every=200, **quiet)
    assert len(metrics["classes"]) == 10
    assert metrics["heldout"]["accuracy"] > 0.6  # chance is 0.1
    assert [p["rows_seen"] for p in metrics["learning_curve"]] == [200, 400, 600]
    report = metrics["heldout"]
    assert len(report["per_class"]) == 10 and np.array(report["confusion"]["matrix"]).sum() == 200


@requires_shared
def test_resume_on_second_half_ends_close_to_one_run(tmp_path, dvc_store):
    from pipeline.store import StoreWriter, open_store

    with open_store(dvc_store) as store:
        chunk = store.read(0, store.n_rows)
        meta = {k: v for k, v in store.meta.items() if k not in ("rows_done", "complete")}
    halves = []
    for i, sl in enumerate((slice(0, 700), slice(700, None))):
        w = StoreWriter(tmp_path / f"h{i}.h5", meta, chunk.X.shape[1])
        w.append(chunk.X[sl], chunk.y[sl], chunk.paths[sl])
        w.close(complete=True)
        halves.append(tmp_path / f"h{i}.h5")
    model, whole = tmp_path / "m.pkl", tmp_path / "whole.pkl"
    one = run_training([dvc_store], head="logreg", holdout=0.3, model_out=whole, **quiet)
    run_training([halves[0]], head="logreg", holdout=0.3, model_out=model, **quiet)
    second = run_training([halves[1]], resume=model, holdout=0.3, **quiet)
    assert second["rows_seen"] == one["rows_seen"]
    # both judged on the same held-out rows of the whole store
    acc = [run_evaluation(m, [dvc_store], holdout=0.3, out=lambda s: None)["heldout"]["accuracy"] for m in (whole, model)]
    assert abs(acc[0] - acc[1]) < 0.02, acc
    assert len(load_model(model).stores) == 2


def test_interrupted_run_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    store = make_blobs_store(tmp_path / "s.h5", 3000, 16, ["a", "b", "c"])
    full = run_training([store], head="softmax", holdout=0.2, chunk_rows=256, shuffle_buffer=500, **quiet)

    # Emulate kill -9: keep the file as it was after the 3rd checkpoint, then stop abruptly.
    ckpt, snapshot = tmp_path / "ckpt.pkl", tmp_path / "snapshot.pkl"
    saves = {"n": 0}
    real_save = train_module.save_model

    def save_then_die(model, path):
        real_save(model, path)
        saves["n"] += 1
        if saves["n"] == 3:
            shutil.copy(path, snapshot)
            raise SystemExit("killed")

    monkeypatch.setattr(train_module, "save_model", save_then_die)
    with pytest.raises(SystemExit):
        run_training([store], head="softmax", holdout=0.2, chunk_rows=256, shuffle_buffer=500,
                     model_out=ckpt, checkpoint_every=500, **quiet)
    monkeypatch.setattr(train_module, "save_model", real_save)
    assert load_model(snapshot).progress["rows"] == 1500
    resumed = run_training([store], resume=snapshot, holdout=0.2, chunk_rows=256, shuffle_buffer=500,
                           checkpoint_every=500, **quiet)
    assert resumed["rows_seen"] == full["rows_seen"] == resumed["rows_this_run"]
    assert resumed["heldout"]["accuracy"] == full["heldout"]["accuracy"]
    assert resumed["progressive"]["accuracy"] == full["progressive"]["accuracy"]
    a, b = load_model(snapshot).head, None
    X = np.random.default_rng(0).normal(size=(50, 16))
    b = run_training([store], head="softmax", holdout=0.2, chunk_rows=256, shuffle_buffer=500,
                     model_out=tmp_path / "clean.pkl", **quiet)
    np.testing.assert_allclose(a.predict_proba(X), load_model(tmp_path / "clean.pkl").head.predict_proba(X))


def test_numpy_and_river_engines_agree_end_to_end(tmp_path):
    store = make_blobs_store(tmp_path / "s.h5", 800, 24, ["a", "b", "c", "d"])
    for head in ("logreg", "softmax"):
        m = [run_training([store], head=head, head_options={"engine": e}, holdout=0.25, eval_every=200, **quiet) for e in ("numpy", "river")]
        assert m[0]["heldout"]["accuracy"] == m[1]["heldout"]["accuracy"]
        assert m[0]["progressive"]["accuracy"] == m[1]["progressive"]["accuracy"]
        curves = [[{k: v for k, v in p.items() if k not in ("rows_per_s", "heldout_log_loss")}
                   for p in run["learning_curve"]] for run in m]  # speed is timing; loss within round-off
        assert curves[0] == curves[1]
        assert [p["heldout_log_loss"] for p in m[0]["learning_curve"]] == pytest.approx(
            [p["heldout_log_loss"] for p in m[1]["learning_curve"]], rel=1e-9)


def test_epochs_and_unlabelled_rows(tmp_path):
    import h5py

    store = make_blobs_store(tmp_path / "s.h5", 400, 8, ["a", "b"])
    with h5py.File(store, "a") as f:
        labels = f["labels"][:]
        labels[:50] = -1  # unlabelled rows are never learnt
        f["labels"][:] = labels
    notes = []
    m = run_training([store], head="logreg", epochs=3, echo=notes.append, out=lambda s: None, quiet=True)
    assert m["rows_this_run"] == 3 * 350 and m["rows_seen"] == 1050
    assert any("50 unlabelled rows skipped" in n for n in notes)
