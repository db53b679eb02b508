"""Side by side: the ``mlp`` head's methods (and ``slda``) against Avalanche's strategies on the same features.

Both sides get the same feature arrays (read once from the stores), the same
class orders (``distinct_orders``; Avalanche's experiences are checked to hold
exactly those classes), the same network (1280 -> ``--hidden`` ReLU -> a
growing softmax output), Adam ``--lr``, ``--batch-size`` rows per step,
``--epochs`` passes per task, inputs standardised with the first task's
statistics, LwF temperature 2 / weight 1, memory ``--memory``. Accuracy is
computed here, the same way for both, from each side's predictions on the
held-out rows of the classes seen so far.

Avalanche is optional and never a dependency of the project: install it apart,
e.g. ``pip install --target /work/tmp-cl/av avalanche-lib==0.6.0`` (plus the
modules it imports), and pass ``--avalanche-path /work/tmp-cl/av``. It runs in
a subprocess with that folder on ``PYTHONPATH``; when it cannot be imported the
script says so and reports this project's side only.

    python scripts/compare_avalanche.py train.h5 --test val.h5 --increment 2 --avalanche-path /work/tmp-cl/av
    python scripts/compare_avalanche.py dvc.h5 --holdout 0.3 --increment 1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

METHODS = ("finetune", "er", "icarl", "lwf", "agem", "ewc", "slda")
AVALANCHE = {"finetune": "Naive", "er": "Replay", "icarl": "ICaRL", "lwf": "LwF", "agem": "AGEM", "ewc": "EWC",
             "slda": "StreamingLDA"}


# -- data ---------------------------------------------------------------------------------------

def load(store: Path) -> tuple[np.ndarray, np.ndarray]:
    from pipeline.stream import FeatureStream
    Xs, ys = [], []
    for batch in FeatureStream([store]):
        Xs.append(np.asarray(batch.X, np.float32))
        ys.extend(str(c) for c in batch.y)
    return np.vstack(Xs), np.array(ys, dtype=object)


def split(X: np.ndarray, y: np.ndarray, holdout: float, seed: int) -> tuple[np.ndarray, ...]:
    """A stratified held-out split: ``holdout`` of each class's rows, seeded."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), bool)
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        test[rows[: int(round(holdout * len(rows)))]] = True
    return X[~test], y[~test], X[test], y[test]


def metrics(preds: list[np.ndarray], yte: np.ndarray, tasks: list[list[int]]) -> dict[str, Any]:
    """Accuracy matrix, final and average incremental accuracy, forgetting, learning accuracy."""
    from pipeline.evaluate import continual_metrics
    matrix, after_each = [], []
    for i, p in enumerate(preds):
        seen = np.isin(yte, [c for t in tasks[: i + 1] for c in t])
        after_each.append(float(np.mean(p[seen] == yte[seen])))
        matrix.append([float(np.mean(p[np.isin(yte, tasks[j])] == yte[np.isin(yte, tasks[j])])) if j <= i else None
                       for j in range(len(tasks))])
    return {**continual_metrics(matrix), "final_accuracy": after_each[-1], "accuracy_after_each_task": after_each,
            "average_incremental_accuracy": float(np.mean(after_each)), "accuracy_matrix": matrix}


# -- this project ---------------------------------------------------------------------------

def run_project(method: str, d: dict[str, Any], tasks: list[list[int]], args: argparse.Namespace) -> dict[str, Any]:
    from pipeline.heads.mlp import MLPHead
    from pipeline.heads.slda import SLDAHead
    if method == "slda":
        head: Any = SLDAHead(shrinkage=args.shrinkage)
    else:
        options: dict[str, Any] = {"memory": args.memory} if method in ("er", "icarl", "agem") else {}
        if method == "ewc":
            options["ewc_lambda"] = args.ewc_lambda
        head = MLPHead(hidden=args.hidden, chunk_passes=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       method=method, seed=args.seed, **options)
    preds, learn_s = [], 0.0
    for i, task in enumerate(tasks):
        rows = np.isin(d["ytr"], task)
        t0 = time.perf_counter()
        if method != "slda":
            head.before_task(i, task)
        head.partial_fit(d["Xtr"][rows], d["ytr"][rows])
        if method != "slda":
            head.after_task()
        learn_s += time.perf_counter() - t0
        preds.append(np.asarray(head.predict(d["Xte"]), np.int64))
    return {"preds": preds, "learn_s": learn_s}


# -- Avalanche (in a subprocess) ---------------------------------------------------------------

def avalanche_worker(npz: Path, out: Path) -> None:
    """Runs every method with Avalanche in this process; writes predictions and times as JSON."""
    import torch
    from torch import nn
    from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark
    from avalanche.benchmarks.utils.classification_dataset import _make_taskaware_tensor_classification_dataset
    from avalanche.models import IncrementalClassifier
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training import supervised as S

    torch.set_num_threads(int(os.environ.get("CMP_THREADS", "2")))
    d = np.load(npz, allow_pickle=False)
    cfg = json.loads(str(d["cfg"]))
    orders = cfg["orders"]
    results: dict[str, Any] = {}
    for method in cfg["methods"]:
        results[method] = []
        for tasks in orders:
            torch.manual_seed(cfg["seed"])
            first = np.isin(d["ytr"], tasks[0])
            if method == "slda":   # the raw features, as this project's slda
                mean, inv = np.zeros(d["Xtr"].shape[1], np.float32), np.ones(d["Xtr"].shape[1], np.float32)
            else:                  # standardised with the first task's statistics
                mean = d["Xtr"][first].mean(axis=0)
                std = d["Xtr"][first].std(axis=0)
                inv = 1.0 / np.where(std > 1e-6, std, 1.0)
            Xtr = torch.tensor((d["Xtr"] - mean) * inv, dtype=torch.float32)
            Xte = torch.tensor((d["Xte"] - mean) * inv, dtype=torch.float32)
            train = _make_taskaware_tensor_classification_dataset(Xtr, torch.tensor(d["ytr"]), task_labels=0)
            test = _make_taskaware_tensor_classification_dataset(Xte, torch.tensor(d["yte"]), task_labels=0)
            bench = nc_benchmark(train, test, len(tasks), task_labels=False,
                                 fixed_class_order=[c for t in tasks for c in t],
                                 per_exp_classes={i: len(t) for i, t in enumerate(tasks)})
            for exp, task in zip(bench.train_stream, tasks):   # the same class orders, checked
                got = sorted(int(c) for c in exp.classes_in_this_experience)
                assert got == sorted(task), f"Avalanche experience {exp.current_experience} holds {got}, not {task}"
            n_classes, dim, n_exp = int(d["ytr"].max()) + 1, Xtr.shape[1], len(tasks)
            common = dict(train_mb_size=cfg["batch_size"], train_epochs=cfg["epochs"], eval_mb_size=256,
                          evaluator=EvaluationPlugin(loggers=[]), device="cpu")

            def mlp() -> nn.Module:
                class MLP(nn.Module):
                    def __init__(self) -> None:
                        super().__init__()
                        self.features = nn.Sequential(nn.Linear(dim, cfg["hidden"]), nn.ReLU())
                        self.classifier = IncrementalClassifier(cfg["hidden"], initial_out_features=len(tasks[0]))

                    def forward(self, x: torch.Tensor) -> torch.Tensor:
                        return self.classifier(self.features(x))
                return MLP()

            ce = nn.CrossEntropyLoss()
            if method == "slda":
                strategy: Any = S.StreamingLDA(slda_model=nn.Identity(), criterion=ce, input_size=dim,
                                               num_classes=n_classes, shrinkage_param=cfg["shrinkage"],
                                               train_mb_size=cfg["batch_size"], train_epochs=1, eval_mb_size=256,
                                               evaluator=EvaluationPlugin(loggers=[]), device="cpu")
                model = strategy.model
            elif method == "icarl":
                features = nn.Sequential(nn.Linear(dim, cfg["hidden"]), nn.ReLU())
                classifier = nn.Linear(cfg["hidden"], n_classes)
                model = nn.Sequential(features, classifier)
                strategy = S.ICaRL(feature_extractor=features, classifier=classifier,
                                   optimizer=torch.optim.Adam(model.parameters(), lr=cfg["lr"]),
                                   memory_size=cfg["memory"], buffer_transform=None, fixed_memory=True, **common)
            else:
                model = mlp()
                opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
                extra: dict[str, Any] = {
                    "finetune": {}, "ewc": {"ewc_lambda": cfg["av_ewc_lambda"]},
                    "lwf": {"alpha": 1.0, "temperature": 2.0}, "er": {"mem_size": cfg["memory"]},
                    "agem": {"patterns_per_exp": cfg["memory"] // n_exp, "sample_size": 64}}[method]
                strategy = getattr(S, AVALANCHE[method])(model=model, optimizer=opt, criterion=ce, **common, **extra)
            preds, learn_s = [], 0.0
            for exp in bench.train_stream:
                t0 = time.perf_counter()
                strategy.train(exp)
                learn_s += time.perf_counter() - t0
                strategy.model.eval()
                with torch.no_grad():
                    # (iCaRL's model in eval mode is its nearest-mean-of-exemplars classifier)
                    scores = strategy.predict(Xte) if method == "slda" else strategy.model(Xte)
                preds.append(scores.argmax(dim=1).numpy().tolist())
            results[method].append({"preds": preds, "learn_s": learn_s})
            print(f"avalanche {method} order done ({learn_s:.1f} s)", file=sys.stderr, flush=True)
    out.write_text(json.dumps(results))


def run_avalanche(d: dict[str, Any], orders: list[list[list[int]]], methods: list[str],
                  args: argparse.Namespace) -> dict[str, Any] | None:
    env = dict(os.environ)
    if args.avalanche_path:
        env["PYTHONPATH"] = os.pathsep.join([str(args.avalanche_path), env.get("PYTHONPATH", "")])
    probe = subprocess.run([sys.executable, "-c", "import avalanche.training.supervised"], env=env,
                           capture_output=True, text=True)
    if probe.returncode:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        print(f"Avalanche is not importable ({last}); reporting this project's side only "
              "(install avalanche-lib apart and pass --avalanche-path)", flush=True)
        return None
    with tempfile.TemporaryDirectory() as tmp:
        npz, out = Path(tmp) / "data.npz", Path(tmp) / "out.json"
        cfg = {"orders": orders, "methods": methods, "seed": args.seed, "batch_size": args.batch_size,
               "epochs": args.epochs, "lr": args.lr, "hidden": args.hidden, "memory": args.memory,
               "av_ewc_lambda": args.av_ewc_lambda, "shrinkage": args.shrinkage}
        np.savez(npz, Xtr=d["Xtr"], ytr=d["ytr"], Xte=d["Xte"], yte=d["yte"], cfg=json.dumps(cfg))
        subprocess.run([sys.executable, __file__, "--avalanche-worker", str(npz), str(out)], env=env, check=True)
        return json.loads(out.read_text())


# -- main -------------------------------------------------------------------------------------

def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--avalanche-worker":
        avalanche_worker(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("train", type=Path)
    parser.add_argument("--test", type=Path, default=None, help="held-out store (else --holdout of train)")
    parser.add_argument("--holdout", type=float, default=0.3)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--increment", type=int, default=2)
    parser.add_argument("--orders", type=int, default=3)
    parser.add_argument("--memory", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ewc-lambda", type=float, default=1.0, help="this project's (Fisher normalised to mean 1)")
    parser.add_argument("--av-ewc-lambda", type=float, default=1e5, help="Avalanche's (raw Fisher)")
    parser.add_argument("--shrinkage", type=float, default=1e-4, help="slda covariance shrinkage, both sides")
    parser.add_argument("--avalanche-path", type=Path, default=None, help="folder holding avalanche (PYTHONPATH)")
    parser.add_argument("--no-avalanche", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from pipeline.train import distinct_orders
    X, y = load(args.train)
    if args.test is not None:
        Xtr, ytr, (Xte, yte) = X, y, load(args.test)
    else:
        Xtr, ytr, Xte, yte = split(X, y, args.holdout, args.seed)
    names = sorted(set(ytr))
    index = {c: i for i, c in enumerate(names)}
    d = {"Xtr": Xtr, "ytr": np.array([index[c] for c in ytr]), "Xte": Xte, "yte": np.array([index[c] for c in yte])}
    found = distinct_orders(names, args.increment, args.orders, seed=args.seed)
    orders = [[[index[c] for c in task] for task in tasks] for _, tasks in found]
    methods = args.methods.split(",")
    print(f"{len(Xtr)} train / {len(Xte)} held-out rows, {len(names)} classes, {Xtr.shape[1]}-d; orders "
          + "; ".join("|".join(",".join(names[c] for c in t) for t in o) for o in orders), flush=True)

    ours = {m: [run_project(m, d, tasks, args) for tasks in orders] for m in methods}
    theirs = None if args.no_avalanche else run_avalanche(d, orders, methods, args)
    sides = {"project": ours, **({"avalanche": theirs} if theirs else {})}
    table: dict[str, Any] = {}
    keys = ("final_accuracy", "average_incremental_accuracy", "forgetting", "learning_accuracy")
    for side, runs in sides.items():
        for m in methods:
            per = [metrics([np.asarray(p) for p in r["preds"]], d["yte"], tasks) | {"learn_s": r["learn_s"]}
                   for r, tasks in zip(runs[m], orders)]
            summary = {k: float(np.mean([p.get(k, np.nan) for p in per])) for k in keys}
            summary["final_range"] = [float(min(p["final_accuracy"] for p in per)), float(max(p["final_accuracy"] for p in per))]
            summary["learn_s"] = float(np.median([p["learn_s"] for p in per]))
            summary["tasks_not_learnt"] = [p["tasks_not_learnt"] for p in per]
            table.setdefault(m, {})[side] = {"mean": summary, "orders": per}
    print(f"{'method':9s} | {'final':>13s} | {'avg incr':>13s} | {'forgetting':>13s} | {'learn acc':>13s} | {'learn s':>11s}")
    print(f"{'':9s} | {'ours  aval':>13s} | {'ours  aval':>13s} | {'ours  aval':>13s} | {'ours  aval':>13s} | {'ours  aval':>11s}")
    for m in methods:
        row = [m.ljust(9)]
        for k, fmt in ((*((k, "{:6.1f}") for k in keys), ("learn_s", "{:5.1f}"))):
            vals = [table[m][s]["mean"][k] for s in sides]
            scale = 1 if k == "learn_s" else 100
            row.append(" ".join(fmt.format(v * scale) for v in vals).rjust(13 if k != "learn_s" else 11))
        print(" | ".join(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()},
                                         "classes": names, "orders": orders, "methods": table}, indent=1))


if __name__ == "__main__":
    main()
