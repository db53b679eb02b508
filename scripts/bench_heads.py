"""Exemplar-free heads (slda, ridge): update speed against the BLAS ceiling, solve time, memory.

The update costs about D^2 operations per row, so at 2048 dimensions it is
compute-bound: its ceiling is this machine's rate for the same ``X^T X``
product (float64 GEMM) on data already in memory. Reported in one run:
- update rows/s (in memory, chunks of 4096) and its ratio to that ceiling,
  for 10 and 1000 classes, and through a whole train-incremental pass;
- solve time against D (SLDA Cholesky, ridge Cholesky at a fixed lambda,
  ridge with lambda chosen by GCV from an eigendecomposition);
- peak RSS of slda training on a store and on one ten times larger.

Issue 20 measurements (``--issue20``, each in its own process, alternated):
- whole ``train-incremental`` command, ridge ``--lambda auto`` against slda, on
  1280-d stores (``--compare-rows``); share of training time spent in
  progressive evaluation (all of progressive_fit but the learning in it),
  and in its solves, per statistics head;
- RanPAC ``--random-features 10000`` (fixed lambda): seconds per row and peak
  RSS at two store sizes (``--ranpac-rows``, written with the store writer),
  projected to 200,000 and 1,000,000 rows; float32 against float64 chunk
  products of the statistics.

    python scripts/bench_heads.py [--rows 40000]
    python scripts/bench_heads.py --issue20 [--compare-rows 2569,20000] [--ranpac-rows 50000,200000] [--skip-ranpac]
    python scripts/bench_heads.py --issue20 --skip-compare --ranpac-rows 50000,100000,200000 --ranpac-repeats 2
    python scripts/bench_heads.py --issue20 --skip-compare --ranpac-rows 50000 --ranpac-lambda heldout
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


def write_store_dim(path: Path, rows: int, n_classes: int, dim: int, seed: int = 0, chunk: int = 4096) -> Path:
    """Non-negative (ReLU-like) class blobs of ``dim`` features, written chunk by chunk with the store writer."""
    from pipeline.store import StoreWriter

    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 0.5, (n_classes, dim)).astype(np.float32)
    meta = {"backbone": "synthetic", "weights": "none", "alpha": "", "input_size": [1, 1], "preprocessing": "none",
            "pooling": "avg", "classes": [f"c{i:03d}" for i in range(n_classes)]}
    w = StoreWriter(path, meta, dim)
    for s in range(0, rows, chunk):
        n = min(chunk, rows - s)
        y = rng.integers(0, n_classes, n).astype(np.int32)
        X = np.maximum(centers[y] + rng.normal(0, 1.0, (n, dim)).astype(np.float32), 0)
        w.append(X, y, [f"r{i}.jpg" for i in range(s, s + n)])
    w.close(complete=True)
    return path


CHILD = """
import json, resource, sys, time
from pathlib import Path
t0 = time.perf_counter()
from pipeline.heads.registry import heads
# progressive evaluation = time in progressive_fit minus the learning inside it; solves = _progressive_rule
acc = {"progressive": 0.0, "learn": 0.0, "solve": 0.0}
depth = {"progressive": 0, "learn": 0, "solve": 0}
# a block's features (_progressive_input) are computed once and learnt from: counted as learning
KIND = {"progressive_fit": "progressive", "_progressive_learn": "learn", "partial_fit": "learn",
        "_progressive_input": "learn", "_progressive_rule": "solve"}
def wrap(cls, name):
    inner, kind = getattr(cls, name), KIND[name]
    def wrapper(self, *a, **k):
        if depth[kind] or (kind != "progressive" and not depth["progressive"]):
            return inner(self, *a, **k)
        depth[kind] += 1
        t = time.perf_counter()
        try:
            return inner(self, *a, **k)
        finally:
            acc[kind] += time.perf_counter() - t
            depth[kind] -= 1
    setattr(cls, name, wrapper)
seen = set()
for c in heads().values():
    for klass in c.__mro__:
        for name in KIND:
            if name in klass.__dict__ and (klass, name) not in seen:
                seen.add((klass, name))
                wrap(klass, name)
from pipeline.runs import run_training
args = json.loads(sys.argv[1])
t1 = time.perf_counter()
m = run_training([Path(args["store"])], head=args["head"], head_options=args["options"], holdout=args["holdout"],
                 quiet=True, echo=lambda s: None, out=lambda s: None)
t2 = time.perf_counter()
print(json.dumps({"whole_s": t2 - t0, "train_s": t2 - t1, "progressive_solve_s": acc["solve"],
                  "progressive_eval_s": acc["progressive"] - acc["learn"], "learn_s": acc["learn"],
                  "heldout": m["heldout"]["accuracy"], "progressive": m["progressive"]["accuracy"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "cpu_s": resource.getrusage(resource.RUSAGE_SELF).ru_utime + resource.getrusage(resource.RUSAGE_SELF).ru_stime}))
"""


def child(store: Path, head: str, options: dict, holdout: float = 0.2) -> dict:
    import subprocess
    import sys

    arg = json.dumps({"store": str(store), "head": head, "options": options, "holdout": holdout})
    out = subprocess.run([sys.executable, "-c", CHILD, arg], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def args_rows_first(args: argparse.Namespace) -> int:
    return int(str(args.compare_rows).split(",")[0])


def ranpac(args: argparse.Namespace, res: dict, tmp: Path) -> None:
    """RanPAC M = 10,000 at each store size, each run its own process; the sizes alternate over the repeats
    (smallest to largest, then back), and the 1-minute load average is recorded before and after each run."""
    import os

    sizes = [int(v) for v in args.ranpac_rows.split(",")]
    lam = args.ranpac_lambda if args.ranpac_lambda == "heldout" else float(args.ranpac_lambda)
    paths = {rows: write_store_dim(tmp / f"r{rows}.h5", rows, 10, 1280, seed=1) for rows in sizes}
    res["ranpac"] = []
    for rep in range(args.ranpac_repeats):
        for rows in (sizes if rep % 2 == 0 else sizes[::-1]):
            load = os.getloadavg()[0]
            r = child(paths[rows], "ridge", {"random_features": 10000, "ridge_lambda": lam}, holdout=0.05)
            r.update(rows=rows, load_before=load, load_after=os.getloadavg()[0], ridge_lambda=lam)
            r["s_per_1k_rows"] = 1000 * r["train_s"] / rows
            res["ranpac"].append(r)
            print(f"ranpac M=10000 lambda {lam}, {rows:,} rows: whole {r['whole_s']:.0f} s, training "
                  f"{r['train_s']:.0f} s ({r['s_per_1k_rows']:.2f} s per 1k rows), progressive solves "
                  f"{r['progressive_solve_s']:.0f} s, peak {r['peak_rss_mb']:.0f} MB, load {load:.1f} -> "
                  f"{r['load_after']:.1f}", flush=True)
    best = {rows: min((r for r in res["ranpac"] if r["rows"] == rows), key=lambda r: r["train_s"]) for rows in sizes}
    for a, b in zip(sizes, sizes[1:]):
        marginal = (best[b]["train_s"] - best[a]["train_s"]) / (b - a)
        res.setdefault("ranpac_marginal_ms_per_row", {})[f"{a}-{b}"] = 1000 * marginal
        print(f"marginal training time {a:,} -> {b:,} rows: {1000 * marginal:.2f} ms per row", flush=True)
    if len(sizes) > 1:
        per_row = (best[sizes[-1]]["train_s"] - best[sizes[0]]["train_s"]) / (sizes[-1] - sizes[0])
        res["ranpac_marginal_s_per_row"] = per_row
        for n in (200_000, 1_000_000):
            proj = best[sizes[-1]]["train_s"] + per_row * (n - sizes[-1])
            res[f"ranpac_projected_{n}_s"] = proj
            print(f"projected from the marginal cost: {n:,} rows in {proj / 60:.0f} min", flush=True)
    for path in paths.values():
        path.unlink()


def issue20(args: argparse.Namespace) -> dict:
    res: dict = {"machine": "shared 2-core AMD EPYC (other jobs running)"}
    with tempfile.TemporaryDirectory() as tmp:
        if args.skip_compare:
            if not args.skip_ranpac:
                ranpac(args, res, Path(tmp))
            return res
        store = write_store_dim(Path(tmp) / "c.h5", args_rows_first(args), 5, 1280)
        cases = [("slda", "slda", {}), ("ridge-auto", "ridge", {}), ("fecam", "fecam", {}),
                 ("klda", "klda", {})]
        res["compare"] = []
        for rows in [int(v) for v in str(args.compare_rows).split(",")]:
            if rows != args_rows_first(args):
                store = write_store_dim(Path(tmp) / f"c{rows}.h5", rows, 5, 1280)
            runs: dict[str, list[dict]] = {}
            for _ in range(args.repeats):
                for label, head, opts in cases:
                    runs.setdefault(label, []).append(child(store, head, opts))
                    r = runs[label][-1]
                    print(f"{rows:>7,} rows {label:>10}: whole {r['whole_s']:.1f} s, training {r['train_s']:.1f} s, "
                          f"progressive evaluation {r['progressive_eval_s']:.2f} s "
                          f"({r['progressive_eval_s'] / r['train_s']:.0%} of training; solves "
                          f"{r['progressive_solve_s']:.2f} s), progressive {r['progressive']:.3f}, held-out "
                          f"{r['heldout']:.3f}, peak {r['peak_rss_mb']:.0f} MB", flush=True)
            best = {k: min(v, key=lambda r: r["whole_s"]) for k, v in runs.items()}
            res["compare"].append({"rows": rows, "dim": 1280, "runs": runs,
                                   "ridge_auto_over_slda": best["ridge-auto"]["whole_s"] / best["slda"]["whole_s"]})
            print(f"{rows:,} rows: ridge --lambda auto / slda, whole command: "
                  f"{res['compare'][-1]['ridge_auto_over_slda']:.2f}x", flush=True)
        if args.skip_ranpac:
            return res
        ranpac(args, res, Path(tmp))
    from pipeline.heads.class_stats import ClassStatistics
    from pipeline.heads import random_features as rf

    rng = np.random.default_rng(0)
    X = np.maximum(rng.normal(size=(8192, 1280)).astype(np.float32) + 0.3, 0)
    H = rf.project(X, 2048, seed=0)
    y = rng.integers(0, 10, len(H))
    stats = {}
    for product in ("float32", "float64"):
        st = ClassStatistics(2048, product=product)
        for _ in range(10):
            st.add_class()
        for s in range(0, len(H), 4096):
            st.update(H[s:s + 4096], y[s:s + 4096])
        stats[product] = st.total_scatter()
    err = np.abs(stats["float32"] - stats["float64"]).max() / np.abs(stats["float64"]).max()
    res["float32_product_max_rel_error"] = float(err)
    print(f"float32 chunk products vs float64 (M=2048, 8192 rows): max error {err:.1e} of the largest entry", flush=True)
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=40960)
    parser.add_argument("--rss-rows", type=int, default=20000)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--issue20", action="store_true", help="the issue-20 measurements only")
    parser.add_argument("--compare-rows", default="2569", help="store sizes, comma-separated (e.g. 2569,20000)")
    parser.add_argument("--skip-ranpac", action="store_true", help="only the head comparison")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--ranpac-rows", default="50000,200000")
    parser.add_argument("--ranpac-lambda", default="1000", help="a number, or heldout")
    parser.add_argument("--ranpac-repeats", type=int, default=1, help="passes over the sizes, alternating order")
    parser.add_argument("--skip-compare", action="store_true", help="only the RanPAC measurements")
    args = parser.parse_args()
    if args.issue20:
        res20 = issue20(args)
        if args.json:
            args.json.write_text(json.dumps(res20, indent=2))
        return
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
