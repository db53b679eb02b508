from __future__ import annotations

import h5py
import numpy as np
import pytest

from conftest import make_blobs_store
from pipeline.errors import StoreError
from pipeline.store import FeatureStore, StoreWriter, atomic_path, open_store


def test_round_trip_and_chunked_iteration(tmp_path):
    path = make_blobs_store(tmp_path / "s.h5", 1000, 16, ["a", "b", "c"])
    with open_store(path) as store:
        assert store.n_rows == 1000 and store.feature_dim == 16 and store.classes == ["a", "b", "c"]
        chunks = list(store.iter_chunks(300))
        assert [len(c.X) for c in chunks] == [300, 300, 300, 100]
        assert [c.start for c in chunks] == [0, 300, 600, 900]
        X = np.concatenate([c.X for c in chunks])
    with h5py.File(path) as f:  # readable without this package
        np.testing.assert_array_equal(X, f["features"][:])
        assert f["features"].maxshape == (None, 16)
        assert f["features"].chunks[1] == 16


def test_float16_and_compression(tmp_path):
    w = StoreWriter(tmp_path / "h.h5", {"classes": ["a"]}, 8, dtype="float16", compression="lzf")
    w.append(np.ones((5, 8), np.float32), np.zeros(5, np.int32), list("abcde"))
    w.close(complete=True)
    with h5py.File(tmp_path / "h.h5") as f:
        assert f["features"].dtype == np.float16 and f["features"].compression == "lzf"


def test_open_refuses_bad_files(tmp_path):
    (tmp_path / "zero.h5").write_bytes(b"")
    with pytest.raises(StoreError, match="not a readable HDF5"):
        FeatureStore(tmp_path / "zero.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(StoreError, match="not a feature store"):
        FeatureStore(tmp_path / "other.h5")
    path = make_blobs_store(tmp_path / "s.h5", 10, 4, ["a"])
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(StoreError, match="version 99"):
        FeatureStore(path)
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = 1
        del f.attrs["classes"]
    with pytest.raises(StoreError, match="lacks the store attributes classes"):
        FeatureStore(path)
    data = (make_blobs_store(tmp_path / "t.h5", 2000, 64, ["a"])).read_bytes()
    (tmp_path / "trunc.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError):
        with FeatureStore(tmp_path / "trunc.h5") as store:
            list(store.iter_chunks())


def test_incomplete_store_refused_unless_allowed(tmp_path):
    meta = {"backbone": "x", "weights": "none", "input_size": [8, 8], "preprocessing": "none",
            "pooling": "avg", "classes": ["a"]}
    w = StoreWriter(tmp_path / "p.h5", meta, 4)
    w.append(np.ones((3, 4), np.float32), np.zeros(3, np.int32), ["x", "y", "z"])
    w.close(complete=False)
    with pytest.raises(StoreError, match="incomplete"):
        open_store(tmp_path / "p.h5")
    assert open_store(tmp_path / "p.h5", allow_incomplete=True).n_rows == 3


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old" and not (tmp_path / "f.txt.tmp").exists()
