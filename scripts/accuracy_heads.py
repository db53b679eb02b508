"""The heads table: held-out accuracy, forgetting, time and memory of the exemplar-free heads on real features.

One protocol for every head: class-incremental runs of ``--increment`` classes
per task over ``--orders`` class orders (``train-incremental ... --orders K``),
evaluated on a test store (or a held-out fraction); reported are the mean final
accuracy, average incremental accuracy and forgetting over the orders, and the
whole command's wall time and peak memory (``/usr/bin/time``; each head is its own
``python -m pipeline train-incremental`` process, ``--no-joint``). The
reference is scikit-learn's LogisticRegression on standardised features of all
training rows at once (joint, no increments). Prints a Markdown table and writes JSON.

    python scripts/accuracy_heads.py TRAIN.h5 [--test VAL.h5 | --holdout 0.3] [--increment 2] [--orders 3]
        [--only LABEL,...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.stream import FeatureStream

# label, head options on the command line, orders (None: --orders; 0: one task of all classes). RanPAC at
# M = 10,000 runs one task: its solve (a 10,000 x 10,000 eigendecomposition) is minutes on the shared
# machine, once per task and order; the heads are order-free, so its final accuracy is the same (tested).
HEADS: list[tuple[str, list[str], int | None]] = [
    ("nme exact (cosine NCM)", ["--head", "nme", "--class-means", "exact"], None),
    ("fecam", ["--head", "fecam"], None),
    ("fecam diagonal", ["--head", "fecam", "--covariance", "diagonal"], None),
    ("slda", ["--head", "slda"], None),
    ("klda M=2048", ["--head", "klda"], None),
    ("ridge (GCV)", ["--head", "ridge"], None),
    ("ridge --lambda heldout", ["--head", "ridge", "--lambda", "heldout"], None),
    ("RanPAC M=2048 heldout", ["--head", "ridge", "--random-features", "2048", "--lambda", "heldout"], None),
    ("RanPAC M=10000 heldout", ["--head", "ridge", "--random-features", "10000", "--lambda", "heldout"], 0),
]


def rows(store: Path, **split: object) -> tuple[np.ndarray, np.ndarray]:
    with FeatureStream([store], **split) as stream:  # type: ignore[arg-type]
        parts = [(b.X, b.y.astype(str)) for b in stream]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def logreg_reference(args: argparse.Namespace) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if args.test:
        (Xtr, ytr), (Xte, yte) = rows(args.train), rows(args.test)
    else:  # the same rows the runs hold out
        Xtr, ytr = rows(args.train, holdout=args.holdout, split="train", seed=0)
        Xte, yte = rows(args.train, holdout=args.holdout, split="test", seed=0)
    t0 = time.perf_counter()
    sc = StandardScaler().fit(Xtr)
    acc = LogisticRegression(max_iter=3000).fit(sc.transform(Xtr), ytr).score(sc.transform(Xte), yte)
    return {"head": "joint logistic regression (reference)", "final": acc, "seconds": time.perf_counter() - t0,
            "classes": len(np.unique(ytr))}


def run_head(args: argparse.Namespace, label: str, options: list[str], orders: int | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "m.json"
        evaluation = ["--test", str(args.test)] if args.test else ["--holdout", str(args.holdout)]
        one_task = orders == 0 or args.increment >= args.n_classes
        k = 1 if one_task else args.orders if orders is None else orders
        # one task: a plain run over every class (train-incremental refuses an --increment covering them all)
        tasks = [] if one_task else ["--increment", str(args.increment), "--no-joint",
                                     *(["--orders", str(k)] if k > 1 else [])]
        cmd = ["/usr/bin/time", "-f", "%e %M", sys.executable, "-m", "pipeline", "train-incremental", str(args.train),
               *evaluation, *options, *tasks, "-q", "--metrics-out", str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{label}: {done.stderr.strip()[-2000:]}")
        wall, rss_kb = done.stderr.strip().splitlines()[-1].split()
        m = json.loads(out.read_text())
    summary = m.get("orders_summary")

    def value(key: str) -> float | None:
        return summary[key]["mean"] if summary else m.get(key)

    if one_task:  # the store's classes make one task: average incremental = final, nothing to forget
        acc, natural = m["heldout"]["accuracy"], args.increment >= args.n_classes
        return {"head": label, "orders": k if natural else 0, "final": acc,
                "average_incremental": acc if natural else None, "forgetting": 0.0 if natural else None,
                "seconds": float(wall), "peak_mb": int(rss_kb) / 1024}
    return {"head": label, "orders": k, "final": value("final_accuracy"),
            "average_incremental": value("average_incremental_accuracy"), "forgetting": value("forgetting"),
            "seconds": float(wall), "peak_mb": int(rss_kb) / 1024}


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("train", type=Path)
    parser.add_argument("--test", type=Path, default=None)
    parser.add_argument("--holdout", type=float, default=0.0)
    parser.add_argument("--increment", type=int, default=2, help="classes per task")
    parser.add_argument("--orders", type=int, default=3, help="class orders (1 when there is one task)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--only", default=None, help="comma-separated labels to run")
    args = parser.parse_args()
    if not (args.test or args.holdout):
        parser.error("give --test or --holdout")
    results = [logreg_reference(args)]
    args.n_classes = results[0].pop("classes")
    print("| head | final | average incremental | forgetting | whole command | peak memory |")
    print("|---|---|---|---|---|---|")
    print(f"| {results[0]['head']} | {pct(results[0]['final'])} | - | - | {results[0]['seconds']:.1f} s (fit) | - |",
          flush=True)
    wanted = None if args.only is None else set(args.only.split(","))
    for label, options, orders in HEADS:
        if wanted and label not in wanted:
            continue
        r = run_head(args, label, options, orders)
        results.append(r)
        note = "" if r["orders"] == args.orders else " (one task)" if r["orders"] == 0 else f" ({r['orders']} order)"
        print(f"| {label}{note} | {pct(r['final'])} | "
              f"{pct(r['average_incremental'])} | {pct(r['forgetting'])} | {r['seconds']:.0f} s | "
              f"{r['peak_mb']:.0f} MB |", flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
