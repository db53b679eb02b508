"""--engine numpy follows River's own estimators exactly (issue: row-by-row heads at numpy speed)."""

from __future__ import annotations

import numpy as np
import pytest
from river import compose, datasets, evaluate, linear_model, metrics, optim, preprocessing

from pipeline.heads import make_head
from pipeline.heads.river_linear import FastLogisticRegression, FastSoftmaxRegression


def stream(n: int = 700, dim: int = 30, seed: int = 0):
    """Two classes at first; two more classes arrive late; one constant feature."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, dim))
    X[:, 5] = 3.0
    y = np.array(["a", "b"], dtype=object)[rng.integers(0, 2, n)]
    late = n // 2
    y[late:] = np.array(["a", "b", "c", "d"], dtype=object)[rng.integers(0, 4, n - late)]
    X += (np.searchsorted(["a", "b", "c", "d"], y.astype(str))[:, None] == np.arange(dim) % 4) * 1.5
    return X, y


def weights_of(head):
    """Weights of both engines in one layout: (classes, dim) + intercepts."""
    if head.settings()["engine"] == "numpy":
        m = head.model_
        return m.W.copy(), m.b.copy(), m.mean.copy(), m.var.copy()
    final = head._final
    scaler = list(head.model_.steps.values())[0]
    names = [f"f{i}" for i in range(head.n_features_in_)]
    mean = np.array([scaler.means[k] for k in names])
    var = np.array([scaler.vars[k] for k in names])
    if isinstance(final, linear_model.LogisticRegression):
        return np.array([[final.weights.get(k, 0.0) for k in names]]), np.array([final.intercept]), mean, var
    if isinstance(final, linear_model.SoftmaxRegression):
        W = np.array([[final.weights[c].get(k, 0.0) for k in names] for c in head.classes_])
        return W, np.zeros(len(W)), mean, var
    W = np.array([[final.classifiers[c].weights.get(k, 0.0) for k in names] for c in head.classes_])
    b = np.array([final.classifiers[c].intercept for c in head.classes_])
    return W, b, mean, var


@pytest.mark.parametrize("name", ["logreg", "softmax"])
@pytest.mark.parametrize("optimizer,lr,l2", [("sgd", 0.02, 0.0), ("sgd", 0.01, 0.01), ("adam", 0.003, 0.0)])
def test_fast_engine_equals_river_row_by_row(name, optimizer, lr, l2):
    X, y = stream()
    fast, ref = (make_head(name, engine=e, optimizer=optimizer, lr=lr, l2=l2) for e in ("numpy", "river"))
    for s in range(0, 500, 128):
        np.testing.assert_array_equal(fast.progressive_fit(X[s:s + 128][:500 - s], y[s:s + 128][:500 - s]),
                                      ref.progressive_fit(X[s:s + 128][:500 - s], y[s:s + 128][:500 - s]))
    fast.partial_fit(X[500:600], y[500:600])
    ref.partial_fit(X[500:600], y[500:600])
    assert fast.classes_ == ref.classes_ == ["a", "b", "c", "d"] or fast.classes_ == ref.classes_
    for a, b in zip(weights_of(fast), weights_of(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(fast.predict_proba(X[600:]), ref.predict_proba(X[600:]), rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(fast.predict(X[600:]), ref.predict(X[600:]))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_fast_engine_equals_river_learn_many(optimizer):
    X, y = stream()
    fast, ref = (make_head("logreg", engine=e, optimizer=optimizer, lr=0.01, batch_size=32) for e in ("numpy", "river"))
    fast.partial_fit(X[:600], y[:600])
    ref.partial_fit(X[:600], y[:600])
    for a, b in zip(weights_of(fast), weights_of(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(fast.predict_proba(X[600:]), ref.predict_proba(X[600:]), rtol=1e-6, atol=1e-9)


def test_softmax_has_no_minibatch_in_either_engine():
    from pipeline.errors import HeadError

    for engine in ("numpy", "river"):
        with pytest.raises(HeadError, match="does not take --batch-size"):
            make_head("softmax", engine=engine, batch_size=16)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_river_compatible_estimators_in_river_evaluation(optimizer):
    opt = optim.SGD(0.01) if optimizer == "sgd" else optim.Adam(0.01)
    ours = evaluate.progressive_val_score(datasets.Phishing(), FastLogisticRegression(optimizer, lr=0.01), metrics.Accuracy())
    ref = evaluate.progressive_val_score(
        datasets.Phishing(), preprocessing.StandardScaler() | linear_model.LogisticRegression(opt, intercept_lr=0.01),
        metrics.Accuracy())
    assert ours.get() == ref.get()
    opt = optim.SGD(0.01) if optimizer == "sgd" else optim.Adam(0.01)
    ours = evaluate.progressive_val_score(datasets.ImageSegments(), FastSoftmaxRegression(optimizer, lr=0.01), metrics.Accuracy())
    ref = evaluate.progressive_val_score(
        datasets.ImageSegments(), preprocessing.StandardScaler() | linear_model.SoftmaxRegression(opt), metrics.Accuracy())
    assert ours.get() == ref.get()


def test_river_compatible_estimator_inside_a_river_pipeline():
    model = compose.Pipeline(compose.Select(*[f"f{i}" for i in range(4)]), FastSoftmaxRegression(lr=0.05))
    rng = np.random.default_rng(0)
    acc = metrics.Accuracy()
    for _ in range(400):
        k = int(rng.integers(0, 3))
        x = {f"f{i}": float(rng.normal() + 2 * (i == k)) for i in range(5)}
        pred = model.predict_one(x)
        if pred is not None:
            acc.update(k, pred)
        model.learn_one(x, k)
    assert acc.get() > 0.7
    assert set(model.predict_proba_one(x)) == {0, 1, 2}
