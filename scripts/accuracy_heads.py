"""Held-out accuracy of the exemplar-free heads on real features, against joint logistic regression.

Class-incremental runs (``--increment``, one seeded class order) of every head
on a train store, evaluated on a test store (or a held-out fraction); the
reference is scikit-learn's LogisticRegression on standardised features of all
training rows at once. Prints one table row per head and writes JSON.

    python scripts/accuracy_heads.py TRAIN.h5 [--test VAL.h5 | --holdout 0.3] [--increment 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from pipeline.runs import run_training
from pipeline.stream import FeatureStream

HEADS = [
    ("nme exact (cosine NCM)", "nme", {"class_means": "exact"}),
    ("fecam", "fecam", {}),
    ("fecam OAS, not normalised", "fecam", {"shrinkage": "auto", "normalize": False}),
    ("fecam diagonal", "fecam", {"covariance": "diagonal"}),
    ("slda", "slda", {}),
    ("klda M=2048", "klda", {}),
    ("ridge (GCV)", "ridge", {}),
    ("ranpac M=2048 (GCV)", "ridge", {"random_features": 2048}),
    ("ranpac M=10000 lambda=1e3", "ridge", {"random_features": 10000, "ridge_lambda": 1e3}),
    ("ranpac M=10000 lambda=1e4", "ridge", {"random_features": 10000, "ridge_lambda": 1e4}),
]


def rows(store: Path) -> tuple[np.ndarray, np.ndarray]:
    with FeatureStream([store]) as stream:
        parts = [(b.X, b.y) for b in stream]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]).astype(str)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("train", type=Path)
    parser.add_argument("--test", type=Path, default=None)
    parser.add_argument("--holdout", type=float, default=0.0)
    parser.add_argument("--increment", type=int, default=2, help="classes per task; 0: one task")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--only", default=None, help="comma-separated labels to run")
    args = parser.parse_args()
    quiet = {"quiet": True, "echo": lambda s: None, "out": lambda s: None}
    common = {"test_stores": [args.test] if args.test else [], "holdout": args.holdout,
              "increment": args.increment or None, "seed": 0, **quiet}
    results = []
    if args.test or args.holdout:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        if args.test:
            (Xtr, ytr), (Xte, yte) = rows(args.train), rows(args.test)
        else:  # the same rows the runs hold out
            from pipeline.stream import FeatureStream as FS

            with FS([args.train], holdout=args.holdout, split="train", seed=0) as s:
                Xtr, ytr = (np.concatenate(v) for v in zip(*[(b.X, b.y.astype(str)) for b in s]))
            with FS([args.train], holdout=args.holdout, seed=0, split="test") as s:
                Xte, yte = (np.concatenate(v) for v in zip(*[(b.X, b.y.astype(str)) for b in s]))
        sc = StandardScaler().fit(Xtr)
        t0 = time.perf_counter()
        acc = LogisticRegression(max_iter=3000).fit(sc.transform(Xtr), ytr).score(sc.transform(Xte), yte)
        results.append({"head": "joint logistic regression (reference)", "final": acc, "joint": acc,
                        "seconds": time.perf_counter() - t0})
        print(f"{'joint logistic regression':>28}: {acc:.4f}", flush=True)
    wanted = None if args.only is None else set(args.only.split(","))
    for label, head, options in HEADS:
        if wanted and label not in wanted:
            continue
        t0 = time.perf_counter()
        m = run_training([args.train], head=head, head_options=options, **common)
        final = m["final_accuracy"] if args.increment else m["heldout"]["accuracy"]
        r = {"head": label, "final": final, "joint": m.get("joint_accuracy"),
             "average_incremental": m.get("average_incremental_accuracy"), "seconds": time.perf_counter() - t0}
        results.append(r)
        print(f"{label:>28}: final {r['final']:.4f}, joint {r['joint']}, {r['seconds']:.0f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
