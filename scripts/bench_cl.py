"""Class-incremental benchmark of the MLP head's methods on two feature stores.

Tasks of ``--increment`` classes in ``--orders`` seeded class orders; after
each task the head is evaluated on the test store's classes seen so far (the
accuracy matrix of ``train-incremental --increment``). Per method: final
accuracy, average incremental accuracy, forgetting, joint accuracy (the same
head trained on all classes as one task) and training time (median: the first order also compiles the step), mean over orders.

    python scripts/bench_cl.py train.h5 val.h5 [--methods finetune,er] [--memory 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.evaluate import continual_metrics
from pipeline.heads.cl import METHODS, method_options
from pipeline.heads.mlp import MLPHead
from pipeline.stream import FeatureStream
from pipeline.train import evaluate_head, make_tasks

MEMORY_METHODS = ("er", "agem", "icarl")


def make(method: str, args: argparse.Namespace) -> MLPHead:
    options: dict[str, Any] = {"memory": args.memory} if method in MEMORY_METHODS else {}
    for item in args.option:   # NAME=VALUE for the methods that take NAME
        name, value = item.split("=", 1)
        if name in method_options(method):
            options[name] = float(value)
    return MLPHead(hidden=args.hidden, chunk_passes=args.epochs, batch_size=args.batch_size, lr=args.lr,
                   method=method, seed=args.seed, **options)


def run_order(method: str, tasks: list[list[str]], train: FeatureStream, test: FeatureStream,
              args: argparse.Namespace) -> dict[str, Any]:
    head = make(method, args)
    matrix, after_each, learn_s = [], [], 0.0
    for i, task in enumerate(tasks):
        t0 = time.perf_counter()
        head.before_task(i, task)
        for batch in train.with_options(classes=set(task)):
            head.partial_fit(batch.X, batch.y, batch.paths)
        head.after_task()
        learn_s += time.perf_counter() - t0
        ev = evaluate_head(head, test, {c for t in tasks[: i + 1] for c in t})
        matrix.append([ev.accuracy_on(set(tasks[j])) if j <= i else None for j in range(len(tasks))])
        after_each.append(ev.accuracy)
    return {**continual_metrics(matrix), "final_accuracy": after_each[-1],
            "average_incremental_accuracy": float(np.mean(after_each)), "train_s": learn_s, "accuracy_matrix": matrix}


def joint(method: str, train: FeatureStream, test: FeatureStream, args: argparse.Namespace) -> float:
    head = make(method, args)
    for batch in train:
        head.partial_fit(batch.X, batch.y, batch.paths)
    head.after_task()
    return evaluate_head(head, test).accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("train", type=Path)
    parser.add_argument("test", type=Path)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--increment", type=int, default=2)
    parser.add_argument("--orders", type=int, default=3)
    parser.add_argument("--memory", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--option", action="append", default=[], help="method option NAME=VALUE, e.g. ewc_lambda=1e4")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    train, test = FeatureStream([args.train], shuffle_buffer=4096, seed=args.seed), FeatureStream([args.test])
    results: dict[str, Any] = {"settings": vars(args) | {"train": str(args.train), "test": str(args.test)}, "methods": {}}
    keys = ("final_accuracy", "average_incremental_accuracy", "forgetting", "learning_accuracy", "train_s")
    print(f"{'method':9s} {'final':>6s} {'avg inc':>7s} {'forget':>6s} {'learn':>6s} {'joint':>6s} {'train s':>7s}",
          flush=True)
    for method in args.methods.split(","):
        runs = [run_order(method, make_tasks(sorted(train.classes), args.increment, seed=o), train, test, args)
                for o in range(args.orders)]
        summary = {k: float(np.mean([r[k] for r in runs])) for k in keys}
        summary["train_s"] = float(np.median([r["train_s"] for r in runs]))   # the first order also compiles
        summary["joint_accuracy"] = joint(method, train, test, args)
        results["methods"][method] = {"mean": summary, "orders": runs}
        print(f"{method:9s} {summary['final_accuracy']:6.3f} {summary['average_incremental_accuracy']:7.3f} "
              f"{summary['forgetting']:6.3f} {summary['learning_accuracy']:6.3f} {summary['joint_accuracy']:6.3f} {summary['train_s']:7.1f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
