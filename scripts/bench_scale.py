"""Scaling out: extraction images/s per executor, and Ray training rows/s for slda over 4 stores.

Every figure comes from its own process (``train-incremental`` run as a
subprocess), so the baseline and the candidates do not share caches or
threads. Reported per run: the wall time of the whole command (Ray start-up
included) and the training phase's rows/s (from the metrics JSON:
``timing.elapsed_s``, which for Ray covers submitting, worker start, reading,
learning and merging; for the local run it covers the training loop, with
progressive validation). A last process times the same reads and updates in
one process without progressive validation (``fit_mergeable`` in process):
the work the Ray workers share.

    python scripts/bench_scale.py --rows-per-store 20000 --dim 1024

Extraction: the same photos (``--photos``, default 512 Dogs vs Cats photos from
../shared, symlinked) embedded with MobileNet 0.25/128 (../shared weights) by
the local executor, Ray with 1 worker and Ray with 2 workers, each in its own
process with its own local Ray. images/s covers the partitions and the merge
(not Ray's start-up or the first actor's model build, which happen before);
the merge's share of that time is reported too.

    python scripts/bench_scale.py --part extract --photos 512
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.store import StoreWriter  # noqa: E402

IN_PROCESS = """
import json, sys, time
from pipeline.parallel_train import HeadSpec, InProcess, StreamSpec, fit_mergeable, plan_partitions
from pipeline.heads import make_head
from pipeline.stream import FeatureStream
stream = FeatureStream(sys.argv[1:], holdout=0.1, split="train")
spec = HeadSpec.of("slda", make_head("slda"), stream.feature_dim)
parts = plan_partitions([(str(s.path), s.n_rows) for s in stream.stores], 10**12)
t0 = time.perf_counter()
head, rows = fit_mergeable(spec, StreamSpec.of(stream), InProcess(), parts)
print(json.dumps({"rows": rows, "elapsed_s": time.perf_counter() - t0}))
"""


SHARED = ROOT.parent / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet_0.25_128_imagenet_no_top.weights.h5"
DVC = SHARED / "data" / "dogs-vs-cats" / "train"
EXTRACT = """
import json, sys, time
from pipeline.backbones import BackboneConfig
from pipeline.extraction import extract_features, make_executor
from pipeline.images import list_images
src, out, weights, executor, workers = sys.argv[1:6]
config = BackboneConfig("mobilenet", weights, 0.25, 128)
res = extract_features(list_images(src), out, config, executor=make_executor(executor, int(workers)), progress=False)
print(json.dumps({"rows": res.rows, "images_per_s": res.images_per_s, "elapsed_s": res.elapsed_s,
                  "executor": res.executor, **res.timings}))
"""


def bench_extract(photos: int) -> None:
    if not (WEIGHTS.is_file() and DVC.is_dir()):
        print(f"extraction: skipped, needs {WEIGHTS} and {DVC}")
        return
    names = sorted(p.name for p in DVC.iterdir())[:photos]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("RAY_ADDRESS", None)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in names:
            (src / name).symlink_to(DVC / name)
        print(f"extraction: {len(names)} Dogs vs Cats photos, MobileNet 0.25/128, {os.cpu_count()} CPUs")
        print(f"{'run':<34}{'wall s':>9}{'run s':>8}{'images/s':>10}{'vs local':>10}{'merge share':>13}")
        base = None
        for name, executor, workers in (("local (2 decode threads)", "local", 2), ("ray, 1 worker", "ray", 1),
                                        ("ray, 2 workers", "ray", 2)):
            t0 = time.perf_counter()
            r = json.loads(subprocess.run([sys.executable, "-c", EXTRACT, str(src), str(Path(tmp) / f"{executor}"
                                           f"{workers}.h5"), str(WEIGHTS), executor, str(workers)], check=True,
                                          env=env, capture_output=True, text=True).stdout.splitlines()[-1])
            wall = time.perf_counter() - t0
            base = base or r["images_per_s"]
            print(f"{name:<34}{wall:>9.1f}{r['elapsed_s']:>8.1f}{r['images_per_s']:>10.1f}"
                  f"{r['images_per_s'] / base:>10.2f}{r['merge_s'] / r['elapsed_s']:>12.1%}")
        print("(wall s: the whole process, imports, Ray start-up and model builds included; run s: partitions "
              "and merge)")


def make_stores(folder: Path, n_stores: int, rows: int, dim: int, classes: int) -> list[Path]:
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 1, (classes, dim)).astype(np.float32)
    names = [f"c{k}" for k in range(classes)]
    paths = []
    for s in range(n_stores):
        path = folder / f"store{s}.h5"
        meta = {"backbone": "synthetic", "weights": "none", "alpha": "", "input_size": [8, 8],
                "preprocessing": "none", "pooling": "avg", "classes": names}
        writer = StoreWriter(path, meta, dim)
        for start in range(0, rows, 4096):
            n = min(4096, rows - start)
            y = rng.integers(0, classes, n).astype(np.int32)
            X = centers[y] + rng.normal(0, 1, (n, dim)).astype(np.float32)
            writer.append(X, y, [f"s{s}/{start + i}.jpg" for i in range(n)])
        writer.close(complete=True)
        paths.append(path)
    return paths


def run_cli(stores: list[Path], folder: Path, *extra: str) -> dict:
    out = folder / "m.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline", "train-incremental", *map(str, stores), "--head", "slda",
                    "-q", "--metrics-out", str(out), *extra], check=True, env=env, cwd=folder,
                    stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    m = json.loads(out.read_text())
    return {"wall_s": wall, "train_s": m["timing"]["elapsed_s"], "rows": m["rows_this_run"],
            "accuracy": m["heldout"]["accuracy"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stores", type=int, default=4)
    ap.add_argument("--rows-per-store", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--photos", type=int, default=512, help="Photos for the extraction figures.")
    ap.add_argument("--part", choices=["all", "extract", "train"], default="all")
    args = ap.parse_args()
    if args.part in ("all", "extract"):
        bench_extract(args.photos)
    if args.part == "extract":
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        stores = make_stores(folder, args.stores, args.rows_per_store, args.dim, args.classes)
        total = args.stores * args.rows_per_store
        print(f"slda over {args.stores} stores x {args.rows_per_store} rows, {args.dim}-d, {args.classes} classes "
              f"({total} rows), {os.cpu_count()} CPUs")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        ref = json.loads(subprocess.run([sys.executable, "-c", IN_PROCESS, *map(str, stores)], check=True,
                                        env=env, capture_output=True, text=True).stdout)
        rows_per_s = {"in-process fit (no progressive validation)": ref["rows"] / ref["elapsed_s"]}
        print(f"{'run':<44}{'wall s':>9}{'train s':>9}{'rows/s':>10}{'vs in-process':>15}{'held-out acc':>14}")
        print(f"{'in-process fit, no progressive validation':<44}{'':>9}{ref['elapsed_s']:>9.2f}"
              f"{ref['rows'] / ref['elapsed_s']:>10.0f}{1.0:>15.2f}")
        base = ref["rows"] / ref["elapsed_s"]
        for name, extra in (("train-incremental --executor local", ["--holdout", "0.1"]),
                            ("train-incremental --executor ray --workers 1",
                             ["--holdout", "0.1", "--executor", "ray", "--workers", "1"]),
                            ("train-incremental --executor ray --workers 2",
                             ["--holdout", "0.1", "--executor", "ray", "--workers", "2"])):
            r = run_cli(stores, folder, *extra)
            rate = r["rows"] / r["train_s"]
            rows_per_s[name] = rate
            print(f"{name:<44}{r['wall_s']:>9.2f}{r['train_s']:>9.2f}{rate:>10.0f}{rate / base:>15.2f}"
                  f"{r['accuracy']:>14.6f}")
        print("(wall s includes start-up: Python imports, the validation scan, and for Ray starting a local "
              "cluster; train s is the training phase only)")


if __name__ == "__main__":
    main()
