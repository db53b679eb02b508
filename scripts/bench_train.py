"""Training throughput and memory on 2048-d dense features.

Reports, in one run:
- rows/s of each head and engine, row by row (progressive validation
  included: predict, then learn) and in mini-batches, at 2048 dimensions,
  next to the ceiling: h5py's raw sequential read speed of the same store;
- the numpy engine's speed-up over River's own estimators;
- one whole `train-incremental` pass over 25,000 rows (read + progressive
  validation + learning) for softmax with 10 classes;
- peak RSS of a training process on a store and on one ten times larger.

    python scripts/bench_train.py [--rows 25000] [--river-rows 600]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from pipeline.heads import make_head
from pipeline.store import StoreWriter

DIM = 2048


def write_store(path: Path, rows: int, n_classes: int, seed: int = 0, chunk: int = 8192) -> Path:
    """Gaussian class blobs written chunk by chunk (never the whole store in memory)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 0.5, (n_classes, DIM)).astype(np.float32)
    meta = {"backbone": "synthetic", "weights": "none", "alpha": "", "input_size": [1, 1], "preprocessing": "none",
            "pooling": "avg", "classes": [f"c{i:03d}" for i in range(n_classes)]}
    w = StoreWriter(path, meta, DIM)
    for s in range(0, rows, chunk):
        n = min(chunk, rows - s)
        y = rng.integers(0, n_classes, n).astype(np.int32)
        X = centers[y] + rng.normal(0, 1.0, (n, DIM)).astype(np.float32)
        w.append(X, y, [f"r{i}.jpg" for i in range(s, s + n)])
    w.close(complete=True)
    return path


def read_ceiling(path: Path) -> float:
    with h5py.File(path) as f:
        ds = f["features"]
        n = ds.shape[0]
        t0 = time.perf_counter()
        for s in range(0, n, 4096):
            ds[s:s + 4096]
        return n / (time.perf_counter() - t0)


def load(path: Path, rows: int) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(path) as f:
        names = np.array(list(f.attrs["classes"]), dtype=object)
        return f["features"][:rows], names[f["labels"][:rows]]


def head_rate(name: str, engine: str, X: np.ndarray, y: np.ndarray, batch_size: int | None = None) -> float:
    head = make_head(name, engine=engine, n_features=DIM, **({"batch_size": batch_size} if batch_size else {}))
    t0 = time.perf_counter()
    for s in range(0, len(X), 4096):
        head.progressive_fit(X[s:s + 4096], y[s:s + 4096])
    return len(X) / (time.perf_counter() - t0)


PEAK_SCRIPT = """
import resource, sys
from pipeline.runs import run_training
run_training([sys.argv[1]], head=sys.argv[2], holdout=0.1, quiet=True, echo=lambda s: None, out=lambda s: None)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_mb(store: Path, head: str = "logreg") -> float:
    """Peak resident memory (MB) of a fresh process training ``head`` on ``store``."""
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(store), head], capture_output=True, text=True,
                         check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=25000)
    parser.add_argument("--river-rows", type=int, default=600, help="rows for River's own (slow) estimators")
    parser.add_argument("--rss-rows", type=int, default=20000, help="small store for the peak-RSS comparison")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    res: dict = {"dim": DIM}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        stores = {k: write_store(tmp / f"s{k}.h5", args.rows, k, seed=k) for k in (2, 10, 100)}
        res["read_ceiling_rows_per_s"] = read_ceiling(stores[10])
        print(f"h5py sequential read (ceiling): {res['read_ceiling_rows_per_s']:,.0f} rows/s", flush=True)
        rows = {}
        for name, k in (("logreg", 2), ("logreg", 10), ("softmax", 10), ("softmax", 100)):
            X, y = load(stores[k], args.rows)
            fast = head_rate(name, "numpy", X, y)
            river = head_rate(name, "river", X[: args.river_rows], y[: args.river_rows])
            key = f"{name}_{k}classes"
            rows[key] = {"numpy_rows_per_s": fast, "river_rows_per_s": river, "speedup": fast / river}
            print(f"{key:>20} row by row: numpy {fast:8,.0f} rows/s, river {river:6,.0f} rows/s, "
                  f"speed-up {fast / river:5.1f}x", flush=True)
        X, y = load(stores[2], args.rows)
        for engine in ("numpy", "river"):
            rate = head_rate("logreg", engine, X if engine == "numpy" else X[:4096], y if engine == "numpy" else y[:4096], 256)
            rows[f"logreg_2classes_minibatch256_{engine}"] = {"rows_per_s": rate}
            print(f"   logreg mini-batch 256 ({engine}): {rate:8,.0f} rows/s", flush=True)
        res["heads"] = rows

        from pipeline.runs import run_training

        t0 = time.perf_counter()
        m = run_training([stores[10]], head="softmax", quiet=True, echo=lambda s: None, out=lambda s: None)
        whole = time.perf_counter() - t0
        res["whole_pass_softmax10"] = {"rows": m["rows_this_run"], "seconds": whole,
                                       "progressive_accuracy": m["progressive"]["accuracy"]}
        print(f"whole train-incremental pass, softmax 10 classes: {m['rows_this_run']} rows in {whole:.1f} s "
              f"(read + predict + learn)", flush=True)

        small = write_store(tmp / "rss_small.h5", args.rss_rows, 10)
        big = write_store(tmp / "rss_big.h5", 10 * args.rss_rows, 10)
        for p in (stores[2], stores[10], stores[100]):
            os.unlink(p)
        a, b = peak_rss_mb(small), peak_rss_mb(big)
        res["peak_rss"] = {"small_rows": args.rss_rows, "small_store_mb": small.stat().st_size / 2**20,
                           "small_peak_mb": a, "big_rows": 10 * args.rss_rows,
                           "big_store_mb": big.stat().st_size / 2**20, "big_peak_mb": b, "ratio": b / a}
        print(f"peak RSS: {a:.0f} MB for a {res['peak_rss']['small_store_mb']:.0f} MB store, {b:.0f} MB for a "
              f"{res['peak_rss']['big_store_mb']:.0f} MB store (ratio {b / a:.2f})", flush=True)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
