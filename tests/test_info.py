"""pipeline info on stores (complete, incomplete, older, corrupt), partial extractions and models of every head."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import make_blobs_store
from pipeline.cli import main
from pipeline.info import class_counts, describe
from pipeline.store import FeatureStore, StoreWriter


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def _store_with_unlabelled_and_skipped(path: Path, complete: bool = True) -> tuple[np.ndarray, list[tuple[str, str]]]:
    rng = np.random.default_rng(3)
    y = rng.integers(-1, 4, 1000).astype(np.int32)  # -1 = unlabelled
    skipped = [(f"bad{i}.jpg", f"UnidentifiedImageError: not an image {i}") for i in range(7)]
    writer = StoreWriter(path, {"backbone": "synthetic", "weights": "none", "alpha": "", "input_size": [8, 8],
                                "preprocessing": "none", "pooling": "avg", "classes": ["a", "b", "c", "d"],
                                "mixed_precision": True, "backend": "tensorflow", "created": "2024-01-02T03:04:05+00:00"},
                         12, "float16")
    for start in range(0, 1000, 300):
        part = slice(start, start + 300)
        writer.append(rng.normal(size=(len(y[part]), 12)).astype(np.float16), y[part],
                      [f"img{i}.jpg" for i in range(start, min(start + 300, 1000))])
    writer.add_skipped([p for p, _ in skipped], [r for _, r in skipped])
    writer.close(complete=complete)
    return y, skipped


def test_store_info_counts_classes_unlabelled_and_skipped(tmp_path):
    y, skipped = _store_with_unlabelled_and_skipped(tmp_path / "s.h5")
    result = invoke("info", tmp_path / "s.h5", "--json")
    assert result.exit_code == 0, result.output
    [info] = json.loads(result.output)
    assert info["kind"] == "store" and info["complete"] is True
    assert (info["rows"], info["feature_dim"], info["dtype"]) == (1000, 12, "float16")
    assert [c["name"] for c in info["classes"]] == ["a", "b", "c", "d"]
    assert [c["rows"] for c in info["classes"]] == np.bincount(y[y >= 0], minlength=4).tolist()
    assert info["unlabelled"] == int((y < 0).sum())
    assert info["skipped"]["count"] == 7
    assert [(s["path"], s["reason"]) for s in info["skipped"]["first"]] == skipped[:5]
    assert info["identity"]["backbone"] == "synthetic" and info["identity"]["precision"] == "mixed_float16"
    assert info["backend"] == "tensorflow" and info["created"] == "2024-01-02T03:04:05+00:00"
    text = invoke("info", tmp_path / "s.h5").output
    assert "complete" in text and "a: " in text and "... and 2 more" in text and "bad0.jpg" in text


def test_class_counts_read_labels_in_chunks(tmp_path):
    y, _ = _store_with_unlabelled_and_skipped(tmp_path / "s.h5")
    with FeatureStore(tmp_path / "s.h5") as store:
        for chunk_rows in (1, 7, 999, 5000):  # the result must not depend on the chunking
            counts, unlabelled = class_counts(store, chunk_rows)
            assert counts == np.bincount(y[y >= 0], minlength=4).tolist() and unlabelled == int((y < 0).sum())


def test_incomplete_store_says_so(tmp_path):
    _store_with_unlabelled_and_skipped(tmp_path / "s.h5", complete=False)
    result = invoke("info", tmp_path / "s.h5")
    assert result.exit_code == 0 and "INCOMPLETE" in result.output
    assert describe(tmp_path / "s.h5")["complete"] is False


def test_older_store_without_optional_attributes(tmp_path):
    """A store written before skipped files, precision, backend and creation time were recorded."""
    path = make_blobs_store(tmp_path / "old.h5", 50, 4, ["x", "y"])
    with h5py.File(path, "a") as f:
        for key in ("skipped_count", "compression"):
            del f.attrs[key]
        del f["skipped"]
    info = describe(path)
    assert info["rows"] == 50 and info["skipped"]["count"] == 0 and info["created"] == "unknown"
    assert info["identity"]["precision"] == "unknown"
    assert sum(c["rows"] for c in info["classes"]) == 50


def test_store_missing_required_attributes_is_explained(tmp_path):
    path = make_blobs_store(tmp_path / "older.h5", 20, 4, ["x", "y"])
    with h5py.File(path, "a") as f:
        del f.attrs["pooling"]
    result = invoke("info", path)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "lacks the store attributes pooling" in result.output


def test_corrupt_missing_and_foreign_files_do_not_hide_good_ones(tmp_path):
    good = make_blobs_store(tmp_path / "good.h5", 30, 4, ["x", "y"])
    (tmp_path / "corrupt.h5").write_bytes(b"\x00garbage" * 100)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[:1500])
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["data"] = np.arange(3)
    paths = [good, tmp_path / "corrupt.h5", tmp_path / "missing.h5", truncated, tmp_path / "foreign.h5"]
    result = invoke("info", *paths)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "good.h5: feature store, complete" in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 4
    assert "corrupt.h5 is neither a feature store nor a model file" in result.output
    assert "missing.h5 does not exist" in result.output
    assert "foreign.h5 is neither a feature store nor a model file" in result.output
    as_json = json.loads(invoke("info", *paths, "--json").stdout)
    assert [r["kind"] for r in as_json] == ["store", "error", "error", "error", "error"]


class _MeanColour:
    """A stand-in Keras model: the mean of each channel. Interrupts after ``stop_after`` batches."""

    def __init__(self, stop_after: int):
        self.calls, self.stop_after = 0, stop_after

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls > self.stop_after:
            raise KeyboardInterrupt
        return x.mean(axis=(1, 2))


def test_partial_extraction_shows_shards_rows_and_files(tmp_path):
    from pipeline.backbones import Backbone
    from pipeline.extract import extract_features
    from pipeline.images import list_images

    rng = np.random.default_rng(0)
    for cls in ("red", "blue"):
        (tmp_path / "src" / cls).mkdir(parents=True)
        for i in range(20):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "src" / cls / f"{i}.png")
    info = {"backbone": "meancolour", "weights": "none", "alpha": "", "input_size": [8, 8], "preprocessing": "none",
            "pooling": "avg", "feature_dim": 3, "mixed_precision": False}
    out = tmp_path / "out.h5"
    with pytest.raises(KeyboardInterrupt):
        extract_features(list_images(tmp_path / "src"), out, Backbone(_MeanColour(3), lambda x: x, info),
                         batch_size=4, checkpoint_rows=4, progress=False)
    parts = tmp_path / "out.h5.parts"
    assert not out.exists() and parts.is_dir()
    for path in (out, parts):
        result = invoke("info", path, "--json")
        assert result.exit_code == 0, result.output
        [partial] = json.loads(result.output)
        assert partial["kind"] == "partial" and partial["complete"] is False
        assert partial["shards_done"] == 3 and partial["rows_done"] == 12
        assert (partial["files_done"], partial["files_total"]) == (12, 40)
        assert sum(c["rows"] for c in partial["classes"]) == 12 and partial["feature_dim"] == 3
    text = invoke("info", out).output
    assert "partial extraction" in text and "12 of 40 files" in text


@pytest.mark.parametrize("head", ["logreg", "softmax", "nme", "slda", "ridge"])
def test_model_info_for_each_head(tmp_path, head):
    store = make_blobs_store(tmp_path / "train.h5", 300, 8, ["a", "b", "c"])
    model = tmp_path / f"{head}.pkl"
    result = invoke("train-incremental", store, "--head", head, "--model-out", model, "-q")
    assert result.exit_code == 0, result.output
    result = invoke("info", model, "--json")
    assert result.exit_code == 0, result.output
    [info] = json.loads(result.output)
    assert info["kind"] == "model" and info["head"] == head
    assert sorted(info["classes"]) == ["a", "b", "c"] and info["rows_seen"] == 300
    assert info["identity"]["backbone"] == "synthetic" and info["feature_dim"] == 8
    assert [Path(s["path"]).name for s in info["stores"]] == ["train.h5"]
    assert isinstance(info["settings"], dict)
    text = invoke("info", model).output
    assert f"head {head}" in text and "rows seen: 300" in text and "train.h5" in text
