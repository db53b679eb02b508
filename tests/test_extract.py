"""extract-features on real photos with real MobileNet 0.25 weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import DVC, IMAGENETTE, WEIGHTS_025, kaggle_names, link_subset, requires_shared, sigkill_after_shards
from pipeline.errors import StoreError
from pipeline.extract import extract_features
from pipeline.images import list_images
from pipeline.store import open_store

pytestmark = requires_shared
SMALL = ["--backbone", "mobilenet", "--alpha", "0.25", "--image-size", "128", "--weights", str(WEIGHTS_025)]


def _read(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    with h5py.File(path) as f:
        return f["features"][:], f["labels"][:], [p.decode() for p in f["paths"][:]]


def test_kaggle_store_labels_shapes_and_attrs(dvc_store):
    X, y, paths = _read(dvc_store)
    assert X.shape == (1400, 256) and X.dtype == np.float32
    with open_store(dvc_store) as store:
        classes = store.classes
        assert classes == ["cat", "dog"]
        for key in ("backbone", "weights", "input_size", "preprocessing", "pooling", "keras_version", "backend",
                    "package_versions", "source_root", "created", "rows_done", "complete"):
            assert key in store.meta, key
        assert store.meta["weights"].startswith(WEIGHTS_025.name + ":sha256:")
    assert all(classes[label] == p.split(".")[0] for label, p in zip(y, paths))
    assert len(set(paths)) == 1400
    # shuffled by default: the first 100 rows hold both classes
    assert 20 < y[:100].sum() < 80


def test_real_features_separate_classes(dvc_store):
    X, y, _ = _read(dvc_store)
    train, test = np.arange(len(y)) % 3 != 0, np.arange(len(y)) % 3 == 0
    centroids = np.stack([X[train & (y == c)].mean(0) for c in (0, 1)])
    pred = np.argmin(((X[test, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (pred == y[test]).mean() > 0.75  # chance is 0.5


def test_same_image_same_features_across_runs(tmp_path, small_backbone, dvc_store):
    src = link_subset(DVC, tmp_path / "src", kaggle_names(20))
    out = tmp_path / "a.h5"
    extract_features(list_images(src), out, small_backbone, batch_size=8, progress=False)
    Xa, _, pa = _read(out)
    Xb, _, pb = _read(dvc_store)
    row = {p: i for i, p in enumerate(pb)}
    np.testing.assert_allclose(Xa, Xb[[row[p] for p in pa]], rtol=1e-4, atol=1e-5)


def test_folder_layout_and_corrupt_files_recorded(tmp_path, small_backbone):
    src = tmp_path / "src"
    for cls in ("church", "tench"):
        names = sorted(os.listdir(IMAGENETTE / "val" / cls))[:5]
        link_subset(IMAGENETTE / "val" / cls, src / cls, names)
    (src / "church" / "zero.jpg").write_bytes(b"")
    (src / "tench" / "text.jpg").write_text("hello")
    good = (IMAGENETTE / "val" / "tench" / sorted(os.listdir(IMAGENETTE / "val" / "tench"))[0]).read_bytes()
    (src / "tench" / "trunc.jpg").write_bytes(good[: len(good) // 3])
    out = tmp_path / "f.h5"
    res = extract_features(list_images(src), out, small_backbone, batch_size=4, progress=False)
    with open_store(out) as store:
        skipped = dict(store.skipped())
        assert store.classes == ["church", "tench"] and store.meta["skipped_count"] == len(skipped)
        paths, labels = store.paths(), store.labels()
    assert {"church/zero.jpg", "tench/text.jpg"} <= set(skipped)
    assert all(reason for reason in skipped.values())
    assert res.skipped == len(skipped) == 3 and res.rows == len(paths) == 10
    assert all(store_cls == p.split("/")[0] for store_cls, p in zip(np.array(["church", "tench"])[labels], paths))


def test_complete_store_not_redone_and_other_settings_refused(tmp_path, small_backbone):
    src = link_subset(DVC, tmp_path / "src", kaggle_names(6))
    out = tmp_path / "s.h5"
    extract_features(list_images(src), out, small_backbone, progress=False)
    mtime = out.stat().st_mtime_ns
    assert extract_features(list_images(src), out, small_backbone, progress=False).already_complete
    assert out.stat().st_mtime_ns == mtime
    with pytest.raises(StoreError, match="seed"):
        extract_features(list_images(src), out, small_backbone, seed=7, progress=False)
    assert extract_features(list_images(src), out, small_backbone, seed=7, overwrite=True, progress=False).rows == 12


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", "extract-features", *args]


def test_kill_9_then_rerun_equals_uninterrupted_run(tmp_path):
    src = link_subset(DVC, tmp_path / "src", kaggle_names(300))
    (src / "cat.999.jpg").write_bytes(b"\xff\xd8 broken")
    killed, clean = tmp_path / "killed.h5", tmp_path / "clean.h5"
    opts = [*SMALL, "--batch-size", "16", "--checkpoint-rows", "32", "-q"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(_cli(str(src), "-o", str(killed), *opts), env=env)
    parts = tmp_path / "killed.h5.parts"
    sigkill_after_shards(proc, parts, 4, timeout=120)
    assert not killed.exists(), "the run finished before it could be killed"
    assert len(list(parts.glob("shard-*.h5"))) >= 4
    subprocess.run(_cli(str(src), "-o", str(killed), *opts), env=env, check=True)
    subprocess.run(_cli(str(src), "-o", str(clean), *opts), env=env, check=True)
    assert not parts.exists()
    Xk, yk, pk = _read(killed)
    Xc, yc, pc = _read(clean)
    assert pk == pc and len(pk) == 600
    np.testing.assert_array_equal(yk, yc)
    np.testing.assert_array_equal(Xk, Xc)
    with open_store(killed) as a, open_store(clean) as b:
        assert a.skipped() == b.skipped() and len(a.skipped()) == 1


def test_full_disk_mid_run_is_a_clear_error_and_the_rerun_completes(tmp_path, small_backbone, monkeypatch):
    import pipeline.extraction.partition as extract_module

    src = link_subset(DVC, tmp_path / "src", kaggle_names(40))
    out, clean = tmp_path / "s.h5", tmp_path / "clean.h5"
    real_writer = extract_module.StoreWriter
    calls = {"n": 0}

    class FailingWriter(real_writer):
        def append(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 5:
                raise OSError(28, "No space left on device")
            return super().append(*args, **kwargs)

    monkeypatch.setattr(extract_module, "StoreWriter", FailingWriter)
    with pytest.raises(StoreError, match="No space left on device.*rerun the same command"):
        extract_features(list_images(src), out, small_backbone, batch_size=8, checkpoint_rows=16, progress=False)
    monkeypatch.setattr(extract_module, "StoreWriter", real_writer)
    assert len(list((tmp_path / "s.h5.parts").glob("shard-*.h5"))) >= 2 and not out.exists()
    res = extract_features(list_images(src), out, small_backbone, batch_size=8, checkpoint_rows=16, progress=False)
    assert res.resumed_at > 0
    extract_features(list_images(src), clean, small_backbone, batch_size=8, checkpoint_rows=16, progress=False)
    Xa, ya, pa = _read(out)
    Xb, yb, pb = _read(clean)
    assert pa == pb and len(pa) == 80
    np.testing.assert_array_equal(Xa, Xb)


def test_no_merge_parts_folder_trains_and_evaluates_exactly_like_the_merged_store(tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import main

    src = link_subset(DVC, tmp_path / "src", kaggle_names(30))
    (src / "dog.999.jpg").write_bytes(b"")
    merged, parted = tmp_path / "m.h5", tmp_path / "p.h5"
    runner = CliRunner()
    opts = [*SMALL, "--batch-size", "8", "--checkpoint-rows", "16"]
    for out, extra in ((merged, ["-q"]), (parted, ["-q", "--no-merge"])):
        r = runner.invoke(main, ["extract-features", str(src), "-o", str(out), *opts, *extra])
        assert r.exit_code == 0, r.output
    parts = tmp_path / "p.h5.parts"
    assert not parted.exists() and (parts / "manifest.json").is_file()
    assert len(list(parts.glob("shard-*.h5"))) == 4  # 61 files, 16 per partition
    stamp = (parts / "manifest.json").stat().st_mtime_ns
    r = runner.invoke(main, ["extract-features", str(src), "-o", str(parted), *opts, "--no-merge"])
    assert r.exit_code == 0 and "is already complete (60 rows, 1 skipped)" in r.output, r.output
    assert (parts / "manifest.json").stat().st_mtime_ns == stamp
    with open_store(merged) as a, open_store(parted) as b, open_store(parts) as c:
        assert a.n_rows == b.n_rows == c.n_rows == 60 and a.classes == b.classes
        assert b.skipped() == a.skipped() == [("dog.999.jpg", b.skipped()[0][1])]
        np.testing.assert_array_equal(a.read(0, 60).X, b.read(0, 60).X)
        for start, stop in ((0, 7), (10, 37), (15, 17), (50, 99)):  # reads across shard boundaries
            ca, cb = a.read(start, stop), b.read(start, stop)
            assert ca.paths == cb.paths and ca.start == cb.start
            np.testing.assert_array_equal(ca.X, cb.X)
            np.testing.assert_array_equal(ca.y, cb.y)
    metrics = {}
    for name, store in (("merged", merged), ("parted", parted), ("folder", parts)):
        model, m_json, e_json = tmp_path / f"{name}.pkl", tmp_path / f"{name}.json", tmp_path / f"{name}-e.json"
        r = runner.invoke(main, ["train-incremental", str(store), "--head", "logreg", "--holdout", "0.3",
                                 "--chunk-rows", "7", "--model-out", str(model), "--metrics-out", str(m_json)])
        assert r.exit_code == 0, r.output
        r = runner.invoke(main, ["evaluate", str(model), str(store), "--metrics-out", str(e_json)])
        assert r.exit_code == 0, r.output
        import json

        train_m, eval_m = json.loads(m_json.read_text()), json.loads(e_json.read_text())
        metrics[name] = (train_m["heldout"], train_m["progressive"], train_m["rows_seen"], eval_m["heldout"])
    assert metrics["merged"] == metrics["parted"] == metrics["folder"]
