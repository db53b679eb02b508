"""Exemplar-free heads (slda, ridge): update speed against the BLAS ceiling, solve time, memory.

The update costs about D^2 operations per row, so at 2048 dimensions it is
compute-bound: its ceiling is this machine's rate for the same ``X^T X``
product (float64 GEMM) on data already in memory. Reported in one run:
- update rows/s (in memory, chunks of 4096) and its ratio to that ceiling,
  for 10 and 1000 classes, and through a whole train-incremental pass;
- solve time against D (SLDA Cholesky, ridge Cholesky at a fixed lambda,
  ridge with lambda chosen by GCV from an eigendecomposition);
- peak RSS of slda training on a store and on one ten times larger.

    python scripts/bench_heads.py [--rows 40000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_train import peak_rss_mb, write_store
from pipeline.heads import make_head

DIM = 2048


def gemm_ceiling(X64: np.ndarray, repeats: int = 3) -> float:
    X64.T @ X64
    t0 = time.perf_counter()
    for _ in range(repeats):
        X64.T @ X64
    return repeats * len(X64) / (time.perf_counter() - t0)


def update_rate(name: str, X: np.ndarray, y: np.ndarray) -> float:
    head = make_head(name)
    head.partial_fit(X[:4096], y[:4096])
    t0 = time.perf_counter()
    for s in range(4096, len(X), 4096):
        head.partial_fit(X[s:s + 4096], y[s:s + 4096])
    return (len(X) - 4096) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=40960)
    parser.add_argument("--rss-rows", type=int, default=20000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    res: dict = {"dim": DIM, "update": [], "solve": []}
    X = rng.normal(size=(args.rows, DIM)).astype(np.float32)
    ceiling = gemm_ceiling(X[:4096].astype(np.float64))
    res["gemm_ceiling_rows_per_s"] = ceiling
    print(f"ceiling: float64 X^T X on in-memory chunks of 4096 x {DIM}: {ceiling:,.0f} rows/s", flush=True)
    for classes in (10, 1000):
        y = np.array([f"c{k}" for k in rng.integers(0, classes, args.rows)], dtype=object)
        for name in ("slda", "ridge"):
            rate = update_rate(name, X, y)
            res["update"].append({"head": name, "classes": classes, "rows_per_s": rate, "ratio": rate / ceiling})
            print(f"{name:>5} update, {classes:>4} classes: {rate:8,.0f} rows/s = {rate / ceiling:.2f} x ceiling",
                  flush=True)
    del X
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = write_store(tmp / "s.h5", args.rows, 10)
        from pipeline.runs import run_training

        t0 = time.perf_counter()
        run_training([store], head="slda", quiet=True, echo=lambda s: None, out=lambda s: None)
        whole = args.rows / (time.perf_counter() - t0)
        res["whole_pass_slda_rows_per_s"] = whole
        print(f"whole train-incremental pass (read + update + final evaluation), slda: {whole:,.0f} rows/s", flush=True)
        store.unlink()
        small = write_store(tmp / "small.h5", args.rss_rows, 10)
        big = write_store(tmp / "big.h5", 10 * args.rss_rows, 10)
        a, b = peak_rss_mb(small, "slda"), peak_rss_mb(big, "slda")
        res["peak_rss"] = {"small_rows": args.rss_rows, "small_mb": a, "big_rows": 10 * args.rss_rows,
                           "big_mb": b, "ratio": b / a}
        print(f"peak RSS, slda: {a:.0f} MB for {args.rss_rows:,} rows, {b:.0f} MB for {10 * args.rss_rows:,} rows "
              f"(ratio {b / a:.2f})", flush=True)
    for dim in (256, 512, 1024, 2048):
        Xd = rng.normal(size=(4 * dim, dim)).astype(np.float32)
        yd = np.array([f"c{k}" for k in rng.integers(0, 100, len(Xd))], dtype=object)
        row = {"dim": dim}
        for label, name, opts in (("slda_s", "slda", {}), ("ridge_fixed_s", "ridge", {"ridge_lambda": 1.0}),
                                  ("ridge_gcv_s", "ridge", {})):
            head = make_head(name, **opts).partial_fit(Xd, yd)
            t0 = time.perf_counter()
            head.predict(Xd[:1])  # the first prediction solves and caches
            row[label] = time.perf_counter() - t0
        res["solve"].append(row)
        print(f"solve at D={dim:>4} (100 classes): slda {row['slda_s']:.3f} s, ridge {row['ridge_fixed_s']:.3f} s, "
              f"ridge + GCV {row['ridge_gcv_s']:.3f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
