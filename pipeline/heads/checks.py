"""The check suite every registered head must pass, chosen by capability (like ``river.checks``).

``yield_checks(name)`` gives the checks that apply to head ``name``; each takes
a factory returning a fresh, unfitted head. One test runs them over every
registered head and engine, so a new head is checked without new test code::

    for check in yield_checks("slda"):
        check(lambda: make_head("slda", n_features=12))
"""

from __future__ import annotations

import pickle
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from pipeline.errors import HeadError
from pipeline.heads.base import Head
from pipeline.heads.registry import head_class, make_head

Factory = Callable[[], Head]
DIM = 12


def blobs(n: int = 600, dim: int = DIM, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Separable Gaussian blobs with string labels c0..c{k-1}."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3.0, (k, dim))
    y_idx = rng.integers(0, k, n)
    X = (centers[y_idx] + rng.normal(0, 1.0, (n, dim))).astype(np.float32)
    return X, np.array([f"c{i}" for i in y_idx], dtype=object)


def _fitted(factory: Factory, n: int = 400) -> tuple[Head, np.ndarray, np.ndarray]:
    X, y = blobs()
    head = factory().partial_fit(X[:n], y[:n])
    head.end_task()
    return head, X, y


def check_predict_before_fit_raises(factory: Factory) -> None:
    X, _ = blobs(5)
    try:
        factory().predict(X)
    except HeadError as exc:
        assert "partial_fit" in str(exc), exc
    else:
        raise AssertionError("predict before partial_fit did not raise HeadError")


def check_learns_separable_blobs(factory: Factory) -> None:
    head, X, y = _fitted(factory, 500)
    assert (head.predict(X[500:]) == y[500:]).mean() > 0.9
    proba = head.predict_proba(X[500:])
    assert proba.shape == (100, len(head.classes_))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    assert head.finite_state()


def check_new_class_mid_stream(factory: Factory) -> None:
    X, y = blobs(900, k=4)
    first = y != "c3"
    head = factory()
    head.partial_fit(X[:600][first[:600]], y[:600][first[:600]])
    head.end_task()
    assert "c3" not in head.classes_
    head.partial_fit(X[:600][~first[:600]], y[:600][~first[:600]])
    head.partial_fit(X[600:800], y[600:800])
    head.end_task()
    assert set(head.classes_) == {"c0", "c1", "c2", "c3"}
    test = y[800:] == "c3"
    assert (head.predict(X[800:][test]) == "c3").mean() > 0.7


def check_pickle_round_trip(factory: Factory) -> None:
    head, X, y = _fitted(factory)
    clone = pickle.loads(pickle.dumps(head))
    np.testing.assert_array_equal(clone.predict(X[400:]), head.predict(X[400:]))
    clone.partial_fit(X[400:500], y[400:500])
    head.partial_fit(X[400:500], y[400:500])
    np.testing.assert_allclose(clone.predict_proba(X[500:]), head.predict_proba(X[500:]))


def check_save_load_predicts_the_same(factory: Factory) -> None:
    """Through the model file format (pipeline.models), not just pickle."""
    from pipeline.models import TrainedModel, load_model, save_model

    head, X, _ = _fitted(factory)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model"
        model = TrainedModel(head, head.name, {"feature_dim": X.shape[1]})
        save_model(model, path)
        loaded = load_model(path, trust_pickle=model.needs_pickle).head  # data only, but for River's estimators
    np.testing.assert_array_equal(loaded.predict(X[400:]), head.predict(X[400:]))
    np.testing.assert_array_equal(loaded.predict_proba(X[400:]), head.predict_proba(X[400:]))
    assert loaded.settings() == head.settings()


def check_settings_rebuild_an_equal_head(factory: Factory) -> None:
    """``make_head(name, **head.settings())`` is the same head: same predictions after the same data."""
    head, X, y = _fitted(factory)
    twin = make_head(head.name, **head.settings())
    assert type(twin) is type(head) and twin.settings() == head.settings()
    twin.partial_fit(X[:400], y[:400])
    twin.end_task()
    np.testing.assert_array_equal(twin.predict(X[400:]), head.predict(X[400:]))
    np.testing.assert_allclose(twin.predict_proba(X[400:]), head.predict_proba(X[400:]), rtol=1e-6, atol=1e-9)


def check_chunk_size_does_not_change_the_result(factory: Factory) -> None:
    X, y = blobs(400)
    a, b = factory(), factory()
    a.partial_fit(X, y)
    for s in range(0, 400, 37):
        b.partial_fit(X[s:s + 37], y[s:s + 37])
    a.end_task()
    b.end_task()
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), rtol=1e-6, atol=1e-9)


def check_row_order_does_not_change_the_result(factory: Factory) -> None:
    X, y = blobs(400)
    perm = np.random.default_rng(3).permutation(len(X))
    a, b = factory().partial_fit(X, y), factory().partial_fit(X[perm], y[perm])
    a.end_task()
    b.end_task()
    test = blobs(100, seed=4)[0]
    np.testing.assert_array_equal(a.predict(test), b.predict(test))


def check_merge_equals_training_on_both(factory: Factory) -> None:
    """Merging equals training on both halves (built with ``capabilities.mergeable_when`` when given)."""
    proto = factory()
    if not proto.mergeable and proto.capabilities.mergeable_when:
        settings = {**proto.settings(), **dict(proto.capabilities.mergeable_when)}
        factory = lambda: make_head(proto.name, n_features=proto.n_features_in_, **settings)  # noqa: E731
        assert factory().mergeable, f"{proto.name} is not mergeable with {settings}"
    X, y = blobs(500)
    first, second = factory().partial_fit(X[:250], y[:250]), factory().partial_fit(X[250:], y[250:])
    both = factory().partial_fit(X, y)
    merged = first.merge(second)
    test = blobs(100, seed=5)[0]
    np.testing.assert_array_equal(merged.predict(test), both.predict(test))
    assert merged.rows_seen_ == 500


def check_wrong_feature_count_raises(factory: Factory) -> None:
    head, X, _ = _fitted(factory)
    try:
        head.predict(X[:, :5])
    except HeadError as exc:
        assert f"expected {X.shape[1]} features" in str(exc), exc
    else:
        raise AssertionError("a wrong feature count did not raise HeadError")


def check_progressive_fit_predicts_before_learning(factory: Factory) -> None:
    X, y = blobs(300)
    head = factory()
    preds = np.concatenate([head.progressive_fit(X[s:s + 50], y[s:s + 50]) for s in range(0, 300, 50)])
    assert len(preds) == 300 and head.rows_seen_ == 300
    assert preds[0] is None  # nothing learnt before the first row
    assert (preds[100:] == y[100:]).mean() > 0.8


def check_progressive_accuracy_does_not_hinge_on_the_chunk_size(factory: Factory) -> None:
    """One big chunk must not leave progressive validation unmeasured (every prediction None)."""
    X, y = blobs(600)
    whole = factory().progressive_fit(X, y)
    assert (whole == y).mean() > 0.8, (whole == y).mean()


def yield_checks(name: str) -> Iterator[Callable[[Factory], None]]:
    """The checks that apply to head ``name``, by its declared capabilities."""
    caps = head_class(name).capabilities
    yield check_predict_before_fit_raises
    yield check_learns_separable_blobs
    yield check_new_class_mid_stream
    yield check_pickle_round_trip
    yield check_save_load_predicts_the_same
    yield check_settings_rebuild_an_equal_head
    yield check_wrong_feature_count_raises
    yield check_progressive_fit_predicts_before_learning
    yield check_progressive_accuracy_does_not_hinge_on_the_chunk_size
    if not caps.mini_batches:
        yield check_chunk_size_does_not_change_the_result
    if caps.order_free:
        yield check_row_order_does_not_change_the_result
    if caps.mergeable or caps.mergeable_when:
        yield check_merge_equals_training_on_both
