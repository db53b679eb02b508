"""The old files of tests/test_old_files.py: run with the code of commit 7790fdb.

    git worktree add /tmp/old 7790fdb
    cd /tmp && PYTHONPATH=/tmp/old python /path/to/scripts/make_old_files.py /path/to/tests/data/v7790fdb
"""
import json, sys
from pathlib import Path
import numpy as np
from pipeline.store import StoreWriter, open_store
from pipeline.store_parts import write_manifest
from pipeline.runs import run_training
from pipeline.models import load_model



def main() -> None:
    out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    classes = ["ant", "bee", "cat"]
    dim, n = 8, 90
    centers = rng.normal(0, 2.0, (3, dim))
    y = rng.integers(0, 3, n).astype(np.int32)
    X = (centers[y] + rng.normal(0, 1.0, (n, dim))).astype(np.float32)
    meta = {"backbone": "synthetic", "weights": "none", "alpha": "", "input_size": [8, 8], "preprocessing": "none",
            "pooling": "avg", "classes": classes, "layer": "", "precision": "float32", "keras_version": "3", "backend": "tensorflow"}
    paths = [f"img_{i}.jpg" for i in range(n)]
    w = StoreWriter(out / "store.h5", meta, dim, compression="lzf", chunk_rows=32)
    w.append(X, y, paths); w.add_skipped(["broken.jpg"], ["cannot identify image file"]); w.close(complete=True)
    parts = out / "parts.h5.parts"; parts.mkdir(exist_ok=True)
    shards = []
    for start, stop in ((0, 50), (50, n)):
        name = f"shard-{start:09d}.h5"
        w = StoreWriter(parts / name, {**meta, "file_start": start, "file_stop": stop}, dim)
        w.append(X[start:stop], y[start:stop], paths[start:stop]); w.close(complete=True)
        shards.append({"name": name, "rows": stop - start, "skipped": 0})
    write_manifest(parts, {"settings": {"backbone": "synthetic"}, "run_id": "old", "complete": True, "shards": shards,
                           "rows": n, "skipped_count": 0})
    quiet = dict(quiet=True, echo=lambda s: None, out=lambda s: None)
    runs = {"logreg": dict(head="logreg"), "softmax-adam": dict(head="softmax", head_options={"optimizer": "adam"}),
            "nme": dict(head="nme", head_options={"memory": 30}), "slda": dict(head="slda"), "ridge": dict(head="ridge"),
            "logreg-replay": dict(head="logreg", increment=1, class_order="ant,bee,cat", holdout=0.2, replay=True,
                                  head_options={"memory": 12, "pool_size": 10}),
            "logreg-river": dict(head="logreg", head_options={"engine": "river"}),
            "mlp-icarl": dict(head="mlp", head_options={"method": "icarl", "hidden": 4, "memory": 12}, increment=1,
                              class_order="ant,bee,cat", holdout=0.2, epochs=1)}
    expected = {}
    for name, kw in runs.items():
        path = out / f"{name}.model"
        run_training([out / "store.h5"], model_out=path, **kw, **quiet)
        model = load_model(path, trust_pickle=True)
        expected[name] = {"predictions": [str(p) for p in model.head.predict(X)],
                          "proba": model.head.predict_proba(X).round(6).tolist(),
                          "settings": model.head.settings(), "classes": [str(c) for c in model.classes]}
    with open_store(parts) as s:
        expected["_parts_rows"] = s.n_rows
    (out / "expected.json").write_text(json.dumps(expected, indent=0, sort_keys=True, default=str))
    print("ok")


if __name__ == "__main__":
    main()
