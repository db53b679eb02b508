"""One check suite run over every head (River's habit)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from pipeline.errors import HeadError
from pipeline.heads import HEAD_NAMES, make_head

CASES = [(name, engine) for name in HEAD_NAMES for engine in (("numpy", "river") if name in ("logreg", "softmax") else ("numpy",))]
IDS = [f"{n}-{e}" for n, e in CASES]


def blobs(n: int = 600, dim: int = 12, k: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3.0, (k, dim))
    y_idx = rng.integers(0, k, n)
    X = (centers[y_idx] + rng.normal(0, 1.0, (n, dim))).astype(np.float32)
    return X, np.array([f"c{i}" for i in y_idx], dtype=object)


@pytest.fixture(params=CASES, ids=IDS)
def head_factory(request):
    name, engine = request.param
    return lambda: make_head(name, engine, n_features=12)


def test_predict_before_fit_raises(head_factory):
    X, _ = blobs(5)
    with pytest.raises(HeadError, match="partial_fit"):
        head_factory().predict(X)


def test_learns_separable_blobs_and_probabilities_sum_to_one(head_factory):
    X, y = blobs()
    head = head_factory().partial_fit(X[:500], y[:500])
    head.end_task()
    assert (head.predict(X[500:]) == y[500:]).mean() > 0.9
    proba = head.predict_proba(X[500:])
    assert proba.shape == (100, len(head.classes_))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)


def test_new_class_mid_stream(head_factory):
    X, y = blobs(900, k=4)
    first = y != "c3"
    head = head_factory()
    head.partial_fit(X[:600][first[:600]], y[:600][first[:600]])
    head.end_task()
    assert "c3" not in head.classes_
    head.partial_fit(X[:600][~first[:600]], y[:600][~first[:600]])
    head.partial_fit(X[600:800], y[600:800])
    head.end_task()
    assert set(head.classes_) == {"c0", "c1", "c2", "c3"}
    test = y[800:] == "c3"
    assert (head.predict(X[800:][test]) == "c3").mean() > 0.7


def test_pickle_round_trip_predicts_the_same(head_factory):
    X, y = blobs()
    head = head_factory().partial_fit(X[:400], y[:400])
    head.end_task()
    clone = pickle.loads(pickle.dumps(head))
    np.testing.assert_array_equal(clone.predict(X[400:]), head.predict(X[400:]))
    clone.partial_fit(X[400:500], y[400:500])
    head.partial_fit(X[400:500], y[400:500])
    np.testing.assert_allclose(clone.predict_proba(X[500:]), head.predict_proba(X[500:]))


def test_chunk_size_does_not_change_the_result(head_factory):
    X, y = blobs(400)
    a, b = head_factory(), head_factory()
    a.partial_fit(X, y)
    for s in range(0, 400, 37):
        b.partial_fit(X[s:s + 37], y[s:s + 37])
    a.end_task(), b.end_task()
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), rtol=1e-6, atol=1e-9)


def test_wrong_feature_count_raises(head_factory):
    X, y = blobs()
    head = head_factory().partial_fit(X, y)
    with pytest.raises(HeadError, match="expected 12 features"):
        head.predict(X[:, :5])


def test_progressive_fit_predicts_before_learning(head_factory):
    X, y = blobs(300)
    head = head_factory()
    preds = np.concatenate([head.progressive_fit(X[s:s + 50], y[s:s + 50]) for s in range(0, 300, 50)])
    assert len(preds) == 300 and head.rows_seen_ == 300
    assert preds[0] is None  # nothing learnt before the first row
    assert (preds[100:] == y[100:]).mean() > 0.8


def test_unknown_head_and_engine():
    with pytest.raises(HeadError, match="unknown head"):
        make_head("svm")
    with pytest.raises(HeadError, match="unknown engine"):
        make_head("logreg", "torch")
