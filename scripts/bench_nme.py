"""NME / herding costs: herding time against candidate pool size and class count,
and NME prediction throughput.

    python scripts/bench_nme.py [--dim 1280]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from pipeline.heads.exemplars import ExemplarMemory, herding_order
from pipeline.heads.nme import NMEHead


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    res: dict = {"dim": args.dim, "herding": [], "memory_update": [], "predict": []}
    for pool in (250, 500, 1000, 2000):
        X = rng.normal(size=(pool, args.dim)).astype(np.float32)
        for m in (20, 200):
            t0 = time.perf_counter()
            herding_order(X, m)
            dt = time.perf_counter() - t0
            res["herding"].append({"pool": pool, "exemplars": m, "seconds": dt})
            print(f"herding {m:>4} exemplars from a pool of {pool:>5}: {dt * 1000:8.1f} ms", flush=True)
    for classes in (10, 50, 100):
        memory = ExemplarMemory(budget=2000)
        pools = {f"c{k}": (rng.normal(size=(1000, args.dim)).astype(np.float32), [""] * 1000) for k in range(classes)}
        t0 = time.perf_counter()
        memory.update(pools)
        dt = time.perf_counter() - t0
        res["memory_update"].append({"classes": classes, "pool": 1000, "budget": 2000, "seconds": dt})
        print(f"end of a task with {classes:>3} new classes (pool 1000 each, budget 2000): {dt:6.2f} s", flush=True)
    for classes in (10, 100, 1000):
        head = NMEHead(memory=2000)
        y = np.array([f"c{k}" for k in rng.integers(0, classes, 20000)], dtype=object)
        head.partial_fit(rng.normal(size=(20000, args.dim)).astype(np.float32), y)
        X = rng.normal(size=(20000, args.dim)).astype(np.float32)
        head.predict(X[:100])
        t0 = time.perf_counter()
        for s in range(0, len(X), 4096):
            head.predict(X[s:s + 4096])
        rate = len(X) / (time.perf_counter() - t0)
        res["predict"].append({"classes": classes, "rows_per_s": rate})
        print(f"NME predict with {classes:>4} classes: {rate:10,.0f} rows/s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
