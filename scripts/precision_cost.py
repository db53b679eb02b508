"""What lower compute precision costs: feature cosine to float32 and held-out accuracy of the same head.

For each backbone and data set, the same decoded photos are embedded in
float32, bfloat16 and float16 (features returned as float32), then:
  cosine   = mean (and min) cosine similarity of each photo's features to float32's
  accuracy = held-out accuracy of the same head (logreg, one pass; slda) trained on each
Dogs vs Cats is split 70/30 by path hash (as ``--holdout 0.3``); Imagenette-mini uses its val split.

    python scripts/precision_cost.py [--shared ../shared] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from pipeline.backbones import build_backbone
from pipeline.heads import make_head
from pipeline.images import decode_image, list_images
from pipeline.stream import holdout_mask

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"
BACKBONES = {
    "mobilenet_0.25": dict(name="mobilenet", weights="weights/mobilenet_0.25_128_imagenet_no_top.weights.h5",
                           alpha=0.25, image_size=128),
    "mobilenetv2": dict(name="mobilenetv2", weights="weights/mobilenetv2_1.0_224_imagenet_no_top.weights.h5"),
}


def datasets(shared: Path, dvc_limit: int) -> dict[str, tuple[list[Path], np.ndarray, np.ndarray]]:
    """name -> (files, labels, held-out mask)."""
    out = {}
    dvc = list_images(shared / "data" / "dogs-vs-cats" / "train")
    keep = np.sort(np.random.default_rng(0).permutation(len(dvc.paths))[:dvc_limit])
    paths = [dvc.paths[i] for i in keep]
    out["dogs-vs-cats"] = ([dvc.root / p for p in paths], np.array([dvc.labels[i] for i in keep]),
                           holdout_mask(paths, 0.3))
    tr, va = (list_images(shared / "data" / "imagenette-mini" / s) for s in ("train", "val"))
    files = [tr.root / p for p in tr.paths] + [va.root / p for p in va.paths]
    out["imagenette-mini"] = (files, np.array(tr.labels + va.labels),
                              np.r_[np.zeros(len(tr.paths), bool), np.ones(len(va.paths), bool)])
    return out


def accuracy(head_name: str, X: np.ndarray, y: np.ndarray, test: np.ndarray) -> float:
    head = make_head(head_name, n_features=X.shape[1])
    head.partial_fit(X[~test], y[~test])
    return float(np.mean(head.predict(X[test]) == y[test]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--precisions", default="float32,bfloat16,float16")
    parser.add_argument("--dvc-photos", type=int, default=1400, help="a seeded subset of Dogs vs Cats")
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    data = datasets(args.shared, args.dvc_photos)
    for label in args.backbones.split(","):
        spec = BACKBONES[label]
        spec = {**spec, "weights": str(args.shared / spec["weights"])}
        for ds, (files, y, test) in data.items():
            size = (spec.get("image_size") or 224,) * 2
            images = np.stack([decode_image(f, size) for f in files])
            feats = {}
            for precision in args.precisions.split(","):
                bb = build_backbone(**spec, precision=precision)
                t0 = time.perf_counter()
                feats[precision] = bb.embed(images, 32)
                rate = len(images) / (time.perf_counter() - t0)
                ref = feats[args.precisions.split(",")[0]]
                X = feats[precision]
                cos = np.sum(X * ref, 1) / (np.linalg.norm(X, axis=1) * np.linalg.norm(ref, axis=1))
                row = {"backbone": label, "data": ds, "precision": precision, "images": len(images),
                       "images_per_s": rate, "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
                       "logreg": accuracy("logreg", X, y, test), "slda": accuracy("slda", X, y, test)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
