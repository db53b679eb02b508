from __future__ import annotations

import h5py
import numpy as np
import pytest

from conftest import make_blobs_store
from pipeline.errors import StoreError
from pipeline.stream import FeatureStream, holdout_mask


def _all(stream, **kw):
    batches = list(stream.iter_epoch(0, **kw))
    return (np.concatenate([b.X for b in batches]), np.concatenate([b.y for b in batches]),
            [p for b in batches for p in b.paths])


def test_holdout_split_is_a_stable_function_of_the_path():
    paths = [f"cat.{i}.jpg" for i in range(5000)]
    mask = holdout_mask(paths, 0.3)
    assert 0.27 < mask.mean() < 0.33
    np.testing.assert_array_equal(mask, holdout_mask(list(reversed(paths)), 0.3)[::-1])
    assert not holdout_mask(paths, 0.0).any()
    assert (holdout_mask(paths, 0.2) <= mask).all()  # smaller fraction = subset


def test_train_and_test_splits_partition_the_rows(tmp_path):
    path = make_blobs_store(tmp_path / "s.h5", 500, 4, ["a", "b"])
    train = FeatureStream([path], holdout=0.3, split="train", chunk_rows=64)
    test = train.with_options(split="test")
    _, _, ptr = _all(train)
    _, _, pte = _all(test)
    assert not set(ptr) & set(pte) and len(ptr) + len(pte) == 500


def test_stores_merge_classes_by_name(tmp_path):
    a = make_blobs_store(tmp_path / "a.h5", 50, 4, ["cat", "dog"], seed=1)
    b = make_blobs_store(tmp_path / "b.h5", 50, 4, ["dog", "fox"], seed=2)
    stream = FeatureStream([a, b], chunk_rows=16)
    assert stream.classes == ["cat", "dog", "fox"]
    _, y, paths = _all(stream)
    with h5py.File(b) as f:
        expected_b = np.array(["dog", "fox"], dtype=object)[f["labels"][:]]
    np.testing.assert_array_equal(y[50:], expected_b)
    assert paths[50].startswith("img2_")


def test_mismatched_stores_refused(tmp_path):
    a = make_blobs_store(tmp_path / "a.h5", 10, 4, ["x"])
    b = make_blobs_store(tmp_path / "b.h5", 10, 4, ["x"], weights="other.h5:sha256:00")
    with pytest.raises(StoreError, match="weights"):
        FeatureStream([a, b])
    c = make_blobs_store(tmp_path / "c.h5", 10, 8, ["x"])
    with pytest.raises(StoreError, match="feature_dim"):
        FeatureStream([a, c])


def test_shuffle_buffer_is_a_seeded_permutation(tmp_path):
    path = make_blobs_store(tmp_path / "s.h5", 1000, 4, ["a", "b", "c"])
    plain = _all(FeatureStream([path], chunk_rows=100))
    s1 = _all(FeatureStream([path], chunk_rows=100, shuffle_buffer=300, seed=5))
    s2 = _all(FeatureStream([path], chunk_rows=100, shuffle_buffer=300, seed=5))
    s3 = _all(FeatureStream([path], chunk_rows=100, shuffle_buffer=300, seed=6))
    assert s1[2] == s2[2] and s1[2] != s3[2] and s1[2] != plain[2]
    assert sorted(s1[2]) == sorted(plain[2])
    batches = list(FeatureStream([path], chunk_rows=100, shuffle_buffer=300, seed=5).iter_epoch(0))
    assert max(len(b.y) for b in batches) <= 400  # buffer + one chunk


def test_class_filter_and_skip(tmp_path):
    path = make_blobs_store(tmp_path / "s.h5", 300, 4, ["a", "b", "c"])
    _, y, _ = _all(FeatureStream([path], classes=["b"], chunk_rows=50))
    assert set(y) == {"b"}
    X_all, _, p_all = _all(FeatureStream([path], chunk_rows=50))
    X_skip, _, p_skip = _all(FeatureStream([path], chunk_rows=50), skip=120)
    assert p_skip == p_all[120:]
    np.testing.assert_array_equal(X_skip, X_all[120:])


def test_scan_refuses_non_finite_features_with_a_count(tmp_path):
    path = make_blobs_store(tmp_path / "s.h5", 100, 4, ["a"])
    with h5py.File(path, "a") as f:
        f["features"][3, 1] = np.nan
        f["features"][7, 0] = np.inf
    with pytest.raises(StoreError, match="2 of 100 rows hold NaN or infinite"):
        FeatureStream([path]).scan()


def test_empty_store_refused(tmp_path):
    from pipeline.store import StoreWriter

    meta = {"backbone": "x", "weights": "none", "input_size": [8, 8], "preprocessing": "none",
            "pooling": "avg", "classes": ["a"]}
    StoreWriter(tmp_path / "e.h5", meta, 4).close(complete=True)
    with pytest.raises(StoreError, match="empty"):
        FeatureStream([tmp_path / "e.h5"])
