"""Streaming LDA and analytic ridge: equal to scikit-learn, order-free, mergeable, robust."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import Ridge

from conftest import make_blobs_store, requires_shared
from pipeline.heads import make_head
from pipeline.heads.ridge import RidgeHead
from pipeline.heads.slda import SLDAHead
from pipeline.runs import run_merge, run_training

quiet = {"echo": lambda s: None, "out": lambda s: None, "quiet": True}


def data(n=400, dim=20, k=4, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1.5, (k, dim))
    idx = rng.integers(0, k, n)
    A = rng.normal(size=(dim, dim)) / np.sqrt(dim)  # correlated features
    X = (centers[idx] + rng.normal(size=(n, dim)) @ A + 2.0).astype(np.float32)
    return X, np.array([f"k{i}" for i in idx], dtype=object)


def by_name(head, X):
    """Probabilities as {class name: column}, independent of the head's class order."""
    P = head.predict_proba(X)
    return {c: P[:, i] for i, c in enumerate(head.classes_)}


def test_slda_equals_sklearn_lda_with_the_same_shrinkage():
    X, y = data()
    for s in (0.0, 0.1, 0.5):
        head = SLDAHead(shrinkage=s)
        for i in range(0, 300, 64):
            head.partial_fit(X[i:min(i + 64, 300)], y[i:min(i + 64, 300)])
        ref = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=s).fit(X[:300].astype(np.float64), y[:300].astype(str))
        order = [head.classes_.index(c) for c in ref.classes_]
        np.testing.assert_allclose(head.coef_[order], ref.coef_, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(head.intercept_[order], ref.intercept_, rtol=1e-6, atol=1e-8)
        np.testing.assert_array_equal(head.predict(X[300:]).astype(str), ref.predict(X[300:].astype(np.float64)))


def test_ridge_equals_sklearn_ridge_with_the_same_lambda():
    X, y = data()
    classes = sorted(set(y))
    Y = (y[:300, None] == np.array(classes)[None, :]).astype(float)
    for lam in (0.01, 1.0, 100.0):
        head = RidgeHead(ridge_lambda=lam)
        for i in range(0, 300, 50):
            head.partial_fit(X[i:i + 50], y[i:i + 50])
        ref = Ridge(alpha=lam).fit(X[:300].astype(np.float64), Y)
        order = [head.classes_.index(c) for c in classes]
        np.testing.assert_allclose(head.coef_[order], ref.coef_, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(head.intercept_[order], ref.intercept_, rtol=1e-6, atol=1e-8)
        pred = np.array(classes)[ref.predict(X[300:].astype(np.float64)).argmax(1)]
        np.testing.assert_array_equal(head.predict(X[300:]).astype(str), pred)


def test_gcv_matches_the_explicit_hat_matrix():
    X, y = data(n=120, dim=8)
    head = RidgeHead().partial_fit(X, y)
    lam_auto, curve = head.gcv_lambda()
    Xc = X.astype(np.float64) - X.mean(0)
    Y = (y[:, None] == np.array(head.classes_)[None, :]).astype(float)
    Yc = Y - Y.mean(0)
    n = len(X)
    for lam, score in list(zip(curve["lambda"], curve["gcv"]))[::9]:
        H = Xc @ np.linalg.solve(Xc.T @ Xc + lam * np.eye(8), Xc.T)
        rss = ((Yc - H @ Yc) ** 2).sum()
        explicit = n * rss / (n - np.trace(H) - 1) ** 2
        assert score == pytest.approx(explicit, rel=1e-6)
    assert head.lambda_ == lam_auto and head.describe()["lambda_selection"] == "gcv"


@pytest.mark.parametrize("name", ["slda", "ridge"])
def test_order_chunking_and_task_split_do_not_matter(name):
    X, y = data(600)
    rng = np.random.default_rng(1)
    a = make_head(name).partial_fit(X, y)
    perm = rng.permutation(len(X))
    b = make_head(name)
    for i in range(0, 600, 77):
        b.partial_fit(X[perm][i:i + 77], y[perm][i:i + 77])
    c = make_head(name)  # class-incremental: one task per class, reversed class order
    for label in sorted(set(y), reverse=True):
        c.partial_fit(X[y == label], y[y == label])
    test = data(200, seed=9)[0]
    for other in (b, c):
        np.testing.assert_array_equal(other.predict(test), a.predict(test))
        pa, po = by_name(a, test), by_name(other, test)
        for label in pa:
            np.testing.assert_allclose(po[label], pa[label], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", ["slda", "ridge"])
def test_merge_equals_training_on_both(name):
    X, y = data(500)
    first, second = make_head(name).partial_fit(X[:250], y[:250]), make_head(name).partial_fit(X[250:], y[250:])
    both = make_head(name).partial_fit(X[:250], y[:250]).partial_fit(X[250:], y[250:])
    merged = first.merge(second)
    test = data(100, seed=5)[0]
    np.testing.assert_array_equal(merged.predict(test), both.predict(test))
    np.testing.assert_allclose(merged.predict_proba(test), both.predict_proba(test), rtol=1e-6, atol=1e-9)
    assert merged.rows_seen_ == 500


@pytest.mark.parametrize("name", ["slda", "ridge"])
def test_merging_a_model_that_learnt_nothing_changes_nothing(name):
    # used to fail with AttributeError: the empty model's statistics are None
    X, y = data(300)
    test = data(100, seed=5)[0]
    fitted = make_head(name).partial_fit(X, y)
    expected = fitted.predict_proba(test)
    assert fitted.merge(make_head(name)) is fitted
    np.testing.assert_array_equal(fitted.predict_proba(test), expected)
    empty = make_head(name).merge(make_head(name))
    assert empty.rows_seen_ == 0 and empty.classes_ == []
    filled = make_head(name).merge(fitted)
    np.testing.assert_allclose(filled.predict_proba(test), expected, rtol=1e-6, atol=1e-9)


def test_random_features_are_seeded_and_kept():
    X, y = data(300)
    a = RidgeHead(random_features=64, seed=3).partial_fit(X, y)
    b = RidgeHead(random_features=64, seed=3).partial_fit(X[:100], y[:100]).partial_fit(X[100:], y[100:])
    assert a.projection_.shape == (20, 64)
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
    assert (a.predict(X) == y).mean() > 0.8


@pytest.mark.parametrize("name", ["slda", "ridge"])
def test_numerically_hard_inputs(name):
    X, y = data(300, dim=12)
    X = np.hstack([X, X[:, :3] + 1e-7, np.full((300, 2), 5.0)])   # near-duplicate and constant features
    X16 = X.astype(np.float16)                                     # what a float16 store holds
    y = y.copy()
    y[0] = "lonely"                                                # a class with a single sample
    head = make_head(name).partial_fit(X16, y)
    P = head.predict_proba(X16)
    assert np.isfinite(P).all() and np.isfinite(head.coef_).all()
    assert (head.predict(X16)[1:] == y[1:]).mean() > 0.8


def test_class_incremental_ends_where_joint_training_does(tmp_path):
    store = make_blobs_store(tmp_path / "s.h5", 2000, 16, [f"c{i}" for i in range(6)])
    for head in ("slda", "ridge"):
        runs = [run_training([store], head=head, holdout=0.3, increment=1, seed=seed, **quiet) for seed in (0, 1)]
        assert runs[0]["tasks"] != runs[1]["tasks"]
        for m in runs:
            assert m["final_accuracy"] == m["joint_accuracy"]
        assert runs[0]["final_accuracy"] == runs[1]["final_accuracy"]


def test_merge_command_equals_one_run(tmp_path):
    a = make_blobs_store(tmp_path / "a.h5", 500, 8, ["x", "y", "z"], seed=1)
    b = make_blobs_store(tmp_path / "b.h5", 500, 8, ["x", "y", "w"], seed=2)
    for head in ("slda", "ridge"):
        run_training([a], head=head, model_out=tmp_path / f"{head}a.pkl", **quiet)
        run_training([b], head=head, model_out=tmp_path / f"{head}b.pkl", **quiet)
        run_training([a, b], head=head, model_out=tmp_path / f"{head}ab.pkl", **quiet)
        merged = run_merge([tmp_path / f"{head}a.pkl", tmp_path / f"{head}b.pkl"], tmp_path / f"{head}m.pkl",
                           out=lambda s: None)
        from pipeline.models import load_model

        joint = load_model(tmp_path / f"{head}ab.pkl").head
        X = np.random.default_rng(0).normal(size=(50, 8))
        np.testing.assert_array_equal(merged.head.predict(X), joint.predict(X))
    from pipeline.errors import OptionError

    run_training([a], head="nme", model_out=tmp_path / "n.pkl", **quiet)
    with pytest.raises(OptionError, match="cannot be merged"):
        run_merge([tmp_path / "n.pkl", tmp_path / "n.pkl"], tmp_path / "o.pkl", out=lambda s: None)


@requires_shared
def test_real_features_one_class_per_task_match_joint_and_logistic_regression(imagenette_stores):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from pipeline.stream import FeatureStream

    train, val = imagenette_stores
    with FeatureStream([train]) as tr, FeatureStream([val]) as te:
        Xtr, ytr = (np.concatenate(v) for v in zip(*[(b.X, b.y) for b in tr]))
        Xte, yte = (np.concatenate(v) for v in zip(*[(b.X, b.y) for b in te]))
    sc = StandardScaler().fit(Xtr)
    logreg = LogisticRegression(max_iter=3000).fit(sc.transform(Xtr), ytr.astype(str)).score(sc.transform(Xte), yte.astype(str))
    for head in ("slda", "ridge"):
        m = [run_training([train], head=head, test_stores=[val], increment=1, seed=s, **quiet) for s in (0, 1)]
        assert m[0]["final_accuracy"] == m[0]["joint_accuracy"] == m[1]["final_accuracy"]
        assert m[0]["final_accuracy"] > logreg - 0.02, (head, m[0]["final_accuracy"], logreg)


class SolveEveryTime:
    """Wraps a head so that every prediction solves from the statistics, as before the cache."""

    def __init__(self, head):
        self.head = head

    def predict_proba(self, X):
        self.head._solution = None
        return self.head.predict_proba(X)


@pytest.mark.parametrize("name,options", [("slda", {}), ("ridge", {}), ("ridge", {"ridge_lambda": 0.5}),
                                          ("ridge", {"random_features": 50, "ridge_lambda": 1.0})])
def test_lazy_solve_is_bit_identical_to_solving_every_time(name, options):
    X, y = data(600)
    lazy, eager = make_head(name, **options), make_head(name, **options)
    test = data(100, seed=7)[0]
    solves = []
    real_solve = type(lazy)._solve

    def counting_solve(self):
        solves.append(1)
        return real_solve(self)

    for s in range(0, 600, 150):
        lazy.partial_fit(X[s:s + 150], y[s:s + 150])
        eager.partial_fit(X[s:s + 150], y[s:s + 150])
        solves.clear()
        type(lazy)._solve = counting_solve
        try:
            first, again = lazy.predict_proba(test), lazy.predict_proba(test)
            lazy.predict(test)
        finally:
            type(lazy)._solve = real_solve
        assert len(solves) == 1  # solved once, reused until the statistics change
        np.testing.assert_array_equal(first, again)
        np.testing.assert_array_equal(first, SolveEveryTime(eager).predict_proba(test))


def test_auto_lambda_solve_reuses_the_eigendecomposition_of_gcv(monkeypatch):
    import scipy.linalg

    calls = []
    real_eigh = scipy.linalg.eigh
    monkeypatch.setattr(scipy.linalg, "eigh", lambda *a, **k: calls.append(1) or real_eigh(*a, **k))
    X, y = data(300)
    head = RidgeHead()
    head.progressive_fit(X, y)
    assert calls == []                       # progressive validation runs no eigendecomposition
    lam = head.lambda_
    head.predict(X)
    assert calls == [1]                      # one per solve, shared by GCV's 46 lambdas and the solution
    fixed = RidgeHead(ridge_lambda=lam).partial_fit(X, y)
    np.testing.assert_allclose(head.coef_, fixed.coef_, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(head.intercept_, fixed.intercept_, rtol=1e-7, atol=1e-10)


def test_progressive_solves_are_few_and_bounded_by_the_dimension():
    X, y = data(3000, dim=20)
    head = RidgeHead()
    calls, early = [], []
    real, real_diagonal = RidgeHead._cholesky_solve, RidgeHead._diagonal_rule
    RidgeHead._cholesky_solve = lambda self, lam: calls.append(self.stats_.n) or real(self, lam)
    RidgeHead._diagonal_rule = lambda self: early.append(self.stats_.n) or real_diagonal(self)
    try:
        preds = head.progressive_fit(X, y)
    finally:
        RidgeHead._cholesky_solve, RidgeHead._diagonal_rule = real, real_diagonal
    assert early == [8, 16, 32, 64]  # O(C D) diagonal rules until 4 D = 80 rows
    assert calls == [80, 160, 320, 640, 1280, 2560]  # then solves, doubling, at least D=20 rows apart
    assert (preds[100:] == y[100:]).mean() > 0.8


def test_random_projection_generated_block_by_block_equals_the_stored_matrix():
    from pipeline.heads import random_features as rf

    X, y = data(300)
    W = rf.projection(20, 2500, seed=4)               # the whole matrix, assembled from its blocks
    assert W.shape == (20, 2500) and W.dtype == np.float32
    np.testing.assert_array_equal(W[:, 1024:2048], rf.projection(20, 2500, seed=4)[:, 1024:2048])
    generated = rf.project(X, 2500, seed=4)           # no matrix: each block drawn from the seed
    np.testing.assert_array_equal(generated, rf.project(X, 2500, seed=4, matrix=W))
    np.testing.assert_allclose(generated, np.maximum(X @ W, 0), rtol=1e-5, atol=1e-4)
    kept = RidgeHead(random_features=2500, seed=4, ridge_lambda=1.0)
    kept.partial_fit(X, y)
    old, rf.KEEP_PROJECTION_BYTES = rf.KEEP_PROJECTION_BYTES, 0   # never keep it
    try:
        unkept = RidgeHead(random_features=2500, seed=4, ridge_lambda=1.0).partial_fit(X, y)
        assert "_matrix" not in unkept.__dict__
        np.testing.assert_array_equal(unkept.predict_proba(X), kept.predict_proba(X))
    finally:
        rf.KEEP_PROJECTION_BYTES = old
    np.testing.assert_array_equal(kept.projection_, W)


def test_model_saved_with_its_projection_matrix_still_predicts_with_it():
    """Models written before the projection was generated per block kept the matrix in their state."""
    X, y = data(300)
    old = RidgeHead(random_features=64, seed=3, ridge_lambda=1.0)
    old.__dict__["projection_"] = np.random.default_rng(3).standard_normal((20, 64)).astype(np.float32)
    old.partial_fit(X, y)
    H = np.maximum(X.astype(np.float64) @ old.projection_, 0.0)
    ref = Ridge(alpha=1.0).fit(H, (y[:, None] == np.array(old.classes_)[None, :]).astype(float))
    np.testing.assert_allclose(old.decision_function(X), ref.predict(H), rtol=1e-6, atol=1e-8)
    with pytest.raises(Exception, match="different random projections"):
        old.merge(RidgeHead(random_features=64, seed=3, ridge_lambda=1.0).partial_fit(X, y))


def test_random_features_too_big_for_memory_is_one_line_error():
    from pipeline.errors import HeadError

    X, y = data(10)
    with pytest.raises(HeadError, match=r"statistics of 1000000 dimensions .* GiB of memory but"):
        RidgeHead(random_features=1_000_000).partial_fit(X, y)


def fecam_reference(X, y, classes, power, shrinkage, diagonal=False, normalize=True):
    """FeCAM computed in one batch with numpy: transformed rows, per-class covariance, explicit inverse."""
    Z = np.sign(X.astype(np.float64)) * np.abs(X.astype(np.float64)) ** power
    out = []
    for c in classes:
        R = Z[y == c]
        mu = R.mean(axis=0)
        cov = np.cov(R, rowvar=False, bias=True)
        if diagonal:
            cov = np.diag(np.diag(cov))
        cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / len(cov) * np.eye(len(cov))
        if normalize:
            cov = cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
        diff = Z - mu
        out.append(np.einsum("ij,jk,ik->i", diff, np.linalg.inv(cov), diff))
    return np.stack(out, axis=1)


@pytest.mark.parametrize("covariance", ["full", "diagonal"])
def test_fecam_equals_its_batch_computation(covariance):
    from sklearn.covariance import OAS

    from pipeline.heads.fecam import FeCAMHead

    X, y = data()
    X = np.abs(X)
    head = FeCAMHead(shrinkage=0.2, covariance=covariance)
    for i in range(0, 300, 64):
        head.partial_fit(X[i:min(i + 64, 300)], y[i:min(i + 64, 300)])
    ref = fecam_reference(X[:300], y[:300], head.classes_, 0.5, 0.2, covariance == "diagonal")
    np.testing.assert_allclose(head.mahalanobis(X[:300]), ref, rtol=1e-6)
    raw = FeCAMHead(shrinkage=0.2, covariance=covariance, normalize=False, power=1.0).partial_fit(X[:300], y[:300])
    ref = fecam_reference(X[:300], y[:300], raw.classes_, 1.0, 0.2, covariance == "diagonal", normalize=False)
    np.testing.assert_allclose(raw.mahalanobis(X[:300]), ref, rtol=1e-6)
    auto = FeCAMHead(shrinkage="auto", normalize=False).partial_fit(X[:300], y[:300])
    Z = np.sqrt(X[:300].astype(np.float64))
    for k, c in enumerate(auto.classes_):
        oas = OAS(assume_centered=False).fit(Z[y[:300] == c])
        assert auto.covariance_(k)[1] == pytest.approx(oas.shrinkage_, rel=1e-9)
        np.testing.assert_allclose(auto.covariance_(k)[0], oas.covariance_, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("normalize", [True, False])
def test_fecam_progressive_validation_predicts_with_the_diagonal_form(normalize, monkeypatch):
    """Scoring with full covariances costs C times learning: progressive blocks use per-class variances."""
    import scipy.linalg

    from pipeline.heads.fecam import FeCAMHead

    X, y = data(500)
    X = np.abs(X)
    factorised = []
    real = scipy.linalg.cho_factor
    monkeypatch.setattr(scipy.linalg, "cho_factor", lambda *a, **k: factorised.append(1) or real(*a, **k))
    full = FeCAMHead(shrinkage="auto", normalize=normalize)
    preds = full.progressive_fit(X, y)
    assert factorised == []  # no full factorisation during progressive validation
    diagonal = FeCAMHead(shrinkage="auto", normalize=normalize, covariance="diagonal")
    np.testing.assert_array_equal(preds, diagonal.progressive_fit(X, y))
    full.predict(X[:5])
    assert len(factorised) == len(full.classes_)  # held-out predictions use the full rule


def test_klda_equals_lda_on_its_random_fourier_features():
    from pipeline.heads import random_features as rf
    from pipeline.heads.klda import KLDAHead

    X, y = data()
    head = KLDAHead(shrinkage=0.1, random_features=300, kernel_gamma=0.5, seed=2)
    for i in range(0, 300, 64):
        head.partial_fit(X[i:min(i + 64, 300)], y[i:min(i + 64, 300)])
    Z = X.astype(np.float64) / np.linalg.norm(X.astype(np.float64), axis=1, keepdims=True)
    W, b = rf.projection(20, 300, 2, "fourier"), rf.phases(300, 20, 2)
    F = np.sqrt(2 / 300) * np.cos(np.sqrt(2 * 0.5) * Z @ W + b)
    kernel = np.exp(-0.5 * ((Z[:50, None] - Z[None, :50]) ** 2).sum(-1))
    assert np.abs(F[:50] @ F[:50].T - kernel).max() < 0.25   # approximates the RBF kernel
    ref = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=0.1).fit(F[:300], y[:300].astype(str))
    order = [head.classes_.index(c) for c in ref.classes_]
    np.testing.assert_allclose(head.coef_[order], ref.coef_, rtol=1e-6, atol=1e-8)
    agree = (head.predict(X[300:]).astype(str) == ref.predict(F[300:])).mean()
    assert agree == 1.0


@pytest.mark.parametrize("name,options", [("fecam", {}), ("fecam", {"covariance": "diagonal"}),
                                          ("klda", {"random_features": 256})])
def test_new_heads_are_order_free_and_merge_exactly(name, options):
    X, y = data(600)
    X = np.abs(X)
    a = make_head(name, **options).partial_fit(X, y)
    perm = np.random.default_rng(1).permutation(len(X))
    b = make_head(name, **options)
    for i in range(0, 600, 77):
        b.partial_fit(X[perm][i:i + 77], y[perm][i:i + 77])
    c = make_head(name, **options)  # one task per class, reversed class order
    for label in sorted(set(y), reverse=True):
        c.partial_fit(X[y == label], y[y == label])
    merged = make_head(name, **options).partial_fit(X[:250], y[:250]).merge(
        make_head(name, **options).partial_fit(X[250:], y[250:]))
    assert merged.rows_seen_ == 600
    test = np.abs(data(200, seed=9)[0])
    for other in (b, c, merged):
        np.testing.assert_array_equal(other.predict(test), a.predict(test))
        pa, po = by_name(a, test), by_name(other, test)
        for label in pa:
            np.testing.assert_allclose(po[label], pa[label], rtol=1e-5, atol=1e-6)


def test_class_incremental_fecam_and_klda_end_where_joint_training_does(tmp_path):
    store = make_blobs_store(tmp_path / "s.h5", 1200, 16, [f"c{i}" for i in range(4)])
    for head, options in (("fecam", {}), ("klda", {"random_features": 256})):
        runs = [run_training([store], head=head, head_options=options, holdout=0.3, increment=1, class_order=order,
                             **quiet) for order in ("c0,c1,c2,c3", "c3,c1,c0,c2")]  # same seed: same random features
        assert runs[0]["tasks"] != runs[1]["tasks"]
        for m in runs:
            assert m["final_accuracy"] == m["joint_accuracy"]
        assert runs[0]["final_accuracy"] == runs[1]["final_accuracy"]


def brute_force_heldout(F, y, classes):
    """RanPAC's choice by brute force: fit Ridge on the rows outside the slice per candidate, score on the slice."""
    from pipeline.heads.ridge import HELDOUT_GRID, heldout_rows

    Y = (y[:, None] == np.array(classes, dtype=object)[None, :]).astype(np.float64)
    mask = heldout_rows(F[1])
    X = np.asarray(F[0], np.float64)
    losses = [((Ridge(alpha=lam, solver="cholesky").fit(X[~mask], Y[~mask]).predict(X[mask]) - Y[mask]) ** 2).sum()
              for lam in HELDOUT_GRID]
    best = float(HELDOUT_GRID[int(np.argmin(losses))])
    return losses, best, Ridge(alpha=best, solver="cholesky").fit(X, Y)


@pytest.mark.parametrize("options,first", [({}, 0), ({"random_features": 40}, 8)])
def test_heldout_lambda_equals_brute_force_ridge_on_the_slice(options, first):
    """``first``: candidates compared from there on (below lambda = 1, the 40 ReLU features' Gram matrix is
    near-singular, and float32 chunk products plus an eigendecomposition differ from scikit-learn's Cholesky)."""
    from pipeline.heads import random_features as rf
    from pipeline.heads.ridge import heldout_rows

    tol = 1e-5 if options else 1e-6  # random features: float32 chunk products
    X, y = data(500, dim=12)
    X[:, :3] *= 1e-3  # badly scaled features: the curve has a clear interior minimum
    head = RidgeHead(ridge_lambda="heldout", **options)
    for s in range(0, 500, 128):
        head.partial_fit(X[s:s + 128], y[s:s + 128])
    F = X if not options else rf.project(X, 40, seed=0)
    losses, best, ref = brute_force_heldout((F, X), y, head.classes_)
    assert 0.1 < heldout_rows(X).mean() < 0.3
    lam, curve = head.heldout_curve()
    np.testing.assert_allclose(curve["loss"][first:], losses[first:], rtol=tol)
    assert lam == best == head.lambda_ and head.describe()["lambda_selection"] == "heldout slice"
    np.testing.assert_allclose(head.decision_function(X), ref.predict(np.asarray(F, np.float64)), rtol=1e-6,
                               atol=1e-5 if options else 1e-8)  # random features: float32 chunk products
    shuffled = np.random.default_rng(1).permutation(500)  # the slice follows the rows, not their order
    again = RidgeHead(ridge_lambda="heldout", **options).partial_fit(X[shuffled], y[shuffled])
    np.testing.assert_allclose(again.heldout_curve()[1]["loss"][first:], losses[first:], rtol=tol)
    shards = [RidgeHead(ridge_lambda="heldout", **options).partial_fit(X[i::2], y[i::2]) for i in range(2)]
    merged = shards[0].merge(shards[1])
    np.testing.assert_allclose(merged.heldout_curve()[1]["loss"][first:], losses[first:], rtol=tol)
    assert merged.lambda_ == best


@pytest.mark.parametrize("options,first", [({}, 0), ({"random_features": 40}, 8)])
def test_heldout_lambda_by_one_cholesky_per_candidate_equals_brute_force(monkeypatch, options, first):
    """Above ``HELDOUT_EIGH_MAX_DIM`` (RanPAC's M = 10,000) every candidate is solved by its own in-place
    Cholesky instead of one shared eigendecomposition: the same curve, choice and refit as scikit-learn."""
    from pipeline.heads import random_features as rf
    from pipeline.heads import ridge

    X, y = data(500, dim=12)
    X[:, :3] *= 1e-3
    shared = RidgeHead(ridge_lambda="heldout", **options).partial_fit(X, y)
    monkeypatch.setattr(ridge, "HELDOUT_EIGH_MAX_DIM", 0)
    head = RidgeHead(ridge_lambda="heldout", **options).partial_fit(X, y)
    F = X if not options else rf.project(X, 40, seed=0)
    losses, best, ref = brute_force_heldout((F, X), y, head.classes_)
    lam, curve = head.heldout_curve()
    tol = 1e-5 if options else 1e-6
    np.testing.assert_allclose(curve["loss"][first:], losses[first:], rtol=tol)
    np.testing.assert_allclose(curve["loss"][first:], shared.heldout_curve()[1]["loss"][first:], rtol=tol)
    assert lam == best == head.lambda_ == shared.lambda_
    np.testing.assert_allclose(head.decision_function(X), ref.predict(np.asarray(F, np.float64)), rtol=1e-6,
                               atol=1e-5 if options else 1e-8)


def test_a_candidate_solved_with_jitter_is_scored_and_chosen_under_the_penalty_it_had(monkeypatch):
    """When ``G + lambda I`` is not numerically positive definite (float32 chunk products at M = 10,000) the
    Cholesky adds a jitter; the held-out score, the choice and the reported lambda_ are then the penalty
    actually used, so the refit is the model that was scored. (The factorisation is made to fail once per
    solve here: the round-off that causes it was not reproducible at test sizes.)"""
    import scipy.linalg

    from pipeline.heads import ridge

    X, y = data(500, dim=12)
    X[:, :3] *= 1e-3
    monkeypatch.setattr(ridge, "HELDOUT_EIGH_MAX_DIM", 0)
    clean = RidgeHead(ridge_lambda="heldout").partial_fit(X, y)
    clean_lam = clean.heldout_curve()[0]
    real, calls = scipy.linalg.cho_factor, [0]

    def first_attempt_fails(A, **kw):   # every solve's first attempt (no jitter) fails, the next succeeds
        calls[0] += 1
        if calls[0] % 2:
            raise np.linalg.LinAlgError("not positive definite")
        return real(A, **kw)

    monkeypatch.setattr(scipy.linalg, "cho_factor", first_attempt_fails)
    head = RidgeHead(ridge_lambda="heldout").partial_fit(X, y)
    lam, curve = head.heldout_curve()
    jitters = np.array(curve["lambda"]) - ridge.HELDOUT_GRID
    assert np.all(jitters > 0) and np.allclose(jitters, jitters[0])   # 1e-10 of the mean diagonal, each candidate
    assert lam == curve["lambda"][int(np.argmin(curve["loss"]))]
    assert lam == pytest.approx(clean_lam + jitters[0]) and lam != clean_lam
    head.decision_function(X[:5])
    assert head.lambda_ > lam   # the refit on all rows needed a jitter too (1e-10 of its own mean diagonal)
    fixed = RidgeHead(ridge_lambda=3.0).partial_fit(X, y)
    fixed.decision_function(X[:5])
    assert fixed.lambda_ > 3.0


def test_ridge_solves_hold_one_gram_matrix_at_a_time(monkeypatch):
    """The Cholesky solves factorise their Gram matrix in place and the held-out curve never forms the slice's
    scatter: beyond the statistics, a solve holds one D x D matrix (at M = 10,000: 800 MB, not 1.6-3.2 GB)."""
    import tracemalloc

    from pipeline.heads import class_stats, ridge

    X, y = data(400, dim=16)
    monkeypatch.setattr(ridge, "HELDOUT_EIGH_MAX_DIM", 0)
    monkeypatch.setattr(class_stats, "ROW_BLOCK", 50)  # low-rank corrections a sixth of the matrix at a time
    head = RidgeHead(ridge_lambda="heldout", random_features=300).partial_fit(X, y)
    matrix = 300 * 300 * 8
    for solve in (lambda: head._cholesky_solve(1.0), head.heldout_curve):
        tracemalloc.start()
        try:
            solve()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert matrix < peak < 1.5 * matrix


def test_merge_updates_statistics_in_place_without_touching_read_only_or_shared_arrays():
    """The merge writes the scatter into the head's own matrix (no second D x D); a read-only one (mapped from
    Ray's object store) is copied, the other model is left as it was, and a model merged with itself counts
    its rows twice."""
    X, y = data(400)
    a, b = make_head("ridge").partial_fit(X[:200], y[:200]), make_head("ridge").partial_fit(X[200:], y[200:])
    both = make_head("ridge").partial_fit(X, y)
    own = a.stats_.shifted_
    theirs = b.stats_.shifted_.copy()
    b.stats_.shifted_.flags.writeable = False
    a.merge(b)
    assert a.stats_.shifted_ is own
    np.testing.assert_array_equal(b.stats_.shifted_, theirs)
    np.testing.assert_allclose(a.stats_.total_scatter(), both.stats_.total_scatter(), rtol=1e-9, atol=1e-9)
    b.merge(make_head("ridge").partial_fit(X[:200], y[:200]))  # into a read-only matrix: copied
    np.testing.assert_allclose(b.stats_.total_scatter(), both.stats_.total_scatter(), rtol=1e-9, atol=1e-9)
    twice = make_head("ridge").partial_fit(np.vstack([X, X]), np.concatenate([y, y]))
    both.merge(both)
    np.testing.assert_allclose(both.stats_.total_scatter(), twice.stats_.total_scatter(), rtol=1e-9, atol=1e-9)
