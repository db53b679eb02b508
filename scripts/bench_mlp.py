"""MLP head training speed: rows/s of one task over 10,000 rows of 1280-d features, per method.

Each method is measured on its second task (the first one trains plainly for
every method; the second pays for replay, the EWC penalty, LwF's and iCaRL's
frozen copy, A-GEM's reference gradient), ``--hidden 0`` and ``--hidden 512``,
one pass (rows/s = rows / seconds of ``partial_fit``, compile excluded by a
warm-up chunk). Targets: >= 20,000 rows/s linear, >= 5,000 rows/s with 512.

    python scripts/bench_mlp.py [--rows 10000] [--methods finetune,er] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from pipeline import keras_runtime
from pipeline.heads.cl import METHODS
from pipeline.heads.mlp import MLPHead

DIM = 1280


def task_rows(rng: np.random.Generator, n: int, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    centers = {c: rng.normal(0, 1, DIM) for c in classes}
    y = np.array([classes[i % len(classes)] for i in range(n)], dtype=object)
    X = np.stack([centers[c] for c in y]) + rng.normal(0, 1, (n, DIM))
    return np.maximum(X, 0).astype(np.float32), y   # non-negative like pooled ReLU features


def ceiling(hidden: int, rows: int, batch_size: int, classes: int = 4) -> float:
    """Rows/s of the same forward + backward matrix products in float32 numpy (no optimizer, no loss)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(batch_size, DIM)).astype(np.float32)
    Ws = [rng.normal(size=(DIM, hidden)).astype(np.float32)] if hidden else []
    Wo = rng.normal(size=(hidden or DIM, classes)).astype(np.float32)
    t0 = time.perf_counter()
    for _ in range(rows // batch_size):
        h = np.maximum(x @ Ws[0], 0) if hidden else x
        d = h @ Wo
        _ = h.T @ d
        if hidden:
            dh = (d @ Wo.T) * (h > 0)
            _ = x.T @ dh
    return (rows // batch_size) * batch_size / (time.perf_counter() - t0)


def rate(method: str, hidden: int, rows: int, batch_size: int) -> float:
    rng = np.random.default_rng(0)
    options = {"memory": 200} if method in ("er", "agem", "icarl") else {}
    head = MLPHead(hidden=hidden, chunk_passes=1, batch_size=batch_size, method=method, **options)
    X1, y1 = task_rows(rng, 2000, ["a", "b"])
    head.partial_fit(X1, y1)
    head.after_task()
    X2, y2 = task_rows(rng, rows, ["c", "d"])
    head.partial_fit(X2[:batch_size * 4], y2[:batch_size * 4])   # compile for the grown output
    t0 = time.perf_counter()
    head.partial_fit(X2, y2)
    return rows / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    res = {"backend": keras_runtime.backend(), "device": keras_runtime.device(), "rows": args.rows,
           "batch_size": args.batch_size, "rows_per_s": {}}
    res["numpy_ceiling_rows_per_s"] = {}
    for hidden in (0, 512):
        top = res["numpy_ceiling_rows_per_s"][hidden] = ceiling(hidden, args.rows, args.batch_size)
        print(f"hidden {hidden:3d} numpy forward+backward products: {top:9,.0f} rows/s", flush=True)
        for method in args.methods.split(","):
            r = rate(method, hidden, args.rows, args.batch_size)
            res["rows_per_s"][f"{method}/hidden={hidden}"] = r
            target = 20000 if hidden == 0 else 5000
            print(f"hidden {hidden:3d} {method:8s} {r:9,.0f} rows/s ({r / target:.2f}x the {target:,} target, "
                  f"{r / top:.2f}x the numpy products)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
