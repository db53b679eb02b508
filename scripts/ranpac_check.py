"""Does RanPAC beat plain ridge on a store? Cross-validation on the TRAINING rows only, in kernel form.

The docs' heads table scores each head once on 200 held-out photos (one photo
is 0.5%). This script asks the question again without touching any test
store: K-fold cross-validation over the training store's rows (or over the
training part of ``--holdout``), for the joint logistic regression reference,
plain ridge and RanPAC (``ridge --random-features M``) with several
projection seeds, each choosing lambda as the head does:

- ``heldout``: the head's own choice (RanPAC's): the rows of
  ``pipeline.heads.ridge.heldout_rows`` (a 20% hash slice) score each of
  ``HELDOUT_GRID`` (1e-8 .. 1e8) by squared error, fitted on the other rows;
- ``gcv``: ``--lambda auto``'s generalised cross-validation over
  ``LAMBDA_GRID`` times the mean eigenvalue.

With fewer rows than random features (600 photos against M = 10,000), the
ridge is solved in its kernel form, ``W = H^T (H H^T + lambda I)^-1 Y`` on
centred features (the unpenalised intercept), an n x n eigendecomposition
instead of the head's M x M one: the same solution (checked against
``RidgeHead`` on the first fold at M = 2048 before anything is reported). The
features are the head's own (``pipeline.heads.random_features.project``).

    python scripts/ranpac_check.py TRAIN.h5 [--holdout 0.3] [--folds 5] [--seeds 0,1,2] [--features 2048,10000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.heads import random_features as rf  # noqa: E402
from pipeline.heads.ridge import HELDOUT_GRID, LAMBDA_GRID, RidgeHead, heldout_rows  # noqa: E402
from pipeline.stream import FeatureStream  # noqa: E402


def rows(store: Path, **split: object) -> tuple[np.ndarray, np.ndarray]:
    with FeatureStream([store], **split) as stream:  # type: ignore[arg-type]
        parts = [(b.X, b.y.astype(str)) for b in stream]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


class KernelRidge:
    """Ridge with an unpenalised intercept on features ``H`` (n x D), for every lambda, in n x n form."""

    def __init__(self, H: np.ndarray, Y: np.ndarray):
        self.mh, self.my = H.mean(axis=0), Y.mean(axis=0)
        self.Hc, Yc = H - self.mh, Y - self.my
        d, self.V = np.linalg.eigh(self.Hc @ self.Hc.T)
        self.d = np.maximum(d, 0.0)
        self.B = self.V.T @ Yc
        self.yy, self.n, self.dim = float((Yc ** 2).sum()), len(H), H.shape[1]

    def predict(self, H: np.ndarray, lam: float) -> np.ndarray:
        alpha = self.V @ (self.B / (self.d + lam)[:, None])
        return ((H - self.mh) @ self.Hc.T) @ alpha + self.my

    def gcv_lambda(self) -> float:
        """``RidgeHead._gcv``: the non-zero eigenvalues of H^T H are those of H H^T."""
        B2 = (self.B ** 2).sum(axis=1)
        grid = LAMBDA_GRID * max(self.d.sum() / self.dim, 1e-12)
        scores = [self.n * max(float((B2 * (lam / (self.d + lam)) ** 2).sum()), 0.0)
                  / max(self.n - float((self.d / (self.d + lam)).sum()) - 1.0, 1e-12) ** 2 for lam in grid]
        return float(grid[int(np.argmin(scores))])


def heldout_lambda(X: np.ndarray, H: np.ndarray, Y: np.ndarray) -> float:
    """``RidgeHead.heldout_curve``: fit off the hash slice, least squared error on it."""
    s = heldout_rows(X)
    if s.all() or not s.any():
        return KernelRidge(H, Y).gcv_lambda()
    fit = KernelRidge(H[~s], Y[~s])
    losses = [float(((fit.predict(H[s], lam) - Y[s]) ** 2).sum()) for lam in HELDOUT_GRID]
    return float(HELDOUT_GRID[int(np.argmin(losses))])


def check_against_head(X: np.ndarray, y: np.ndarray, test: np.ndarray, classes: np.ndarray) -> None:
    """The kernel form and the head agree (M = 2048, lambda = 1e3) before any figure is trusted."""
    head = RidgeHead(ridge_lambda=1e3, random_features=2048, seed=0)
    head.partial_fit(X, y)
    H = rf.project(X, 2048, 0).astype(np.float64)
    mine = KernelRidge(H, (y[:, None] == classes).astype(np.float64)).predict(
        rf.project(test, 2048, 0).astype(np.float64), 1e3)
    theirs = head.decision_function(test)[:, [list(head.classes_).index(c) for c in classes]]
    # the head accumulates float32 chunk products: 2e-5 of the largest score measured on Imagenette-mini
    if not np.allclose(mine, theirs, atol=1e-4 * np.abs(theirs).max()) or \
            not np.array_equal(mine.argmax(axis=1), theirs.argmax(axis=1)):
        raise SystemExit(f"kernel form differs from RidgeHead by {np.abs(mine - theirs).max():.3g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("train", type=Path)
    parser.add_argument("--holdout", type=float, default=0.0, help="use only the training part of this split")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seeds", default="0,1,2", help="projection seeds")
    parser.add_argument("--features", default="2048,10000", help="random features M")
    args = parser.parse_args()
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    X, y = rows(args.train, holdout=args.holdout, split="train", seed=0) if args.holdout else rows(args.train)
    classes = np.unique(y)
    folds = list(StratifiedKFold(args.folds, shuffle=True, random_state=0).split(X, y))
    check_against_head(X[folds[0][0]], y[folds[0][0]], X[folds[0][1]], classes)
    models = [("ridge", None, 0)] + [(f"RanPAC M={m} seed {s}", m, s) for m in map(int, args.features.split(","))
                                     for s in map(int, args.seeds.split(","))]
    acc: dict[str, list[float]] = {}
    for tr, te in folds:
        sc = StandardScaler().fit(X[tr])
        logreg = LogisticRegression(max_iter=3000).fit(sc.transform(X[tr]), y[tr])
        acc.setdefault("joint logistic regression", []).append(logreg.score(sc.transform(X[te]), y[te]))
        Y = (y[tr][:, None] == classes).astype(np.float64)
        for label, m, seed in models:
            def feats(A: np.ndarray) -> np.ndarray:
                return (A if m is None else rf.project(A, m, seed)).astype(np.float64)
            Htr, Hte = feats(X[tr]), feats(X[te])
            fit = KernelRidge(Htr, Y)
            for how, lam in (("heldout", heldout_lambda(X[tr], Htr, Y)), ("gcv", fit.gcv_lambda())):
                pred = classes[fit.predict(Hte, lam).argmax(axis=1)]
                acc.setdefault(f"{label}, lambda {how}", []).append(float((pred == y[te]).mean()))
    print(f"{len(X)} training rows, {len(classes)} classes, {args.folds}-fold cross-validation (mean, folds)\n")
    print("| model | accuracy | per fold |\n|---|---|---|")
    for label, values in acc.items():
        print(f"| {label} | {100 * np.mean(values):.2f}% | {' '.join(f'{100 * v:.1f}' for v in values)} |")


if __name__ == "__main__":
    main()
