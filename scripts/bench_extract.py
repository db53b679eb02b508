"""Extraction throughput: the backbone alone vs the whole extract-features runner.

For each backbone, in one run on the same images:
  raw  = images/s of ``Backbone.embed`` on batches already decoded in memory
  e2e  = images/s of ``extract_features`` reading, decoding, embedding and
         writing the same images from disk
and their ratio (target >= 0.9: decoding, resizing and writes hidden behind
compute), and the merge's share of the end-to-end time (the part
``--no-merge`` saves). Runs with ImageNet-free weights (``--weights none``) unless a file
is given: speed does not depend on the weight values.

    python scripts/bench_extract.py [--images 256] [--backbones mobilenetv2,resnet50]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.backbones import build_backbone
from pipeline.extract import extract_features
from pipeline.images import decode_image, list_images

DEFAULT_SOURCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "dogs-vs-cats" / "train"


def subset_source(src: Path, n: int, folder: Path) -> Path:
    names = sorted(p.name for p in src.glob("*.jpg"))
    rng = np.random.default_rng(0)
    for name in rng.choice(names, size=min(n, len(names)), replace=False):
        (folder / name).symlink_to(src / name)
    return folder


def bench(name: str, source: Path, batch: int, repeats: int, weights: str = "none", alpha: float | None = None,
          image_size: int | None = None) -> dict:
    bb = build_backbone(name, weights, alpha, image_size)
    listed = list_images(source)
    files = [source / p for p in listed.paths]
    images = np.stack([decode_image(f, bb.input_size) for f in files])
    bb.embed(images[:batch], batch)  # trace the predict function once
    raw_rates, e2e_rates, merge_shares = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            t0 = time.perf_counter()
            for s in range(0, len(images), batch):
                bb.embed(images[s:s + batch], batch)
            raw_rates.append(len(images) / (time.perf_counter() - t0))
            out = Path(tmp) / f"{name}-{r}.h5"
            t0 = time.perf_counter()
            res = extract_features(listed, out, bb, batch_size=batch, progress=False)
            e2e_rates.append(len(images) / (time.perf_counter() - t0))
            merge_shares.append(res.timings["merge_s"] / res.elapsed_s)
    raw, e2e = float(np.median(raw_rates)), float(np.median(e2e_rates))
    return {"backbone": name, "images": len(images), "batch_size": batch, "raw_images_per_s": raw,
            "end_to_end_images_per_s": e2e, "ratio": e2e / raw, "device": bb.info["device"],
            "merge_share": float(np.median(merge_shares)),
            "raw_runs": raw_rates, "e2e_runs": e2e_rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="Kaggle-layout folder of photos")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--backbones", default="mobilenetv2,resnet50")
    parser.add_argument("--weights", default="none", help="none, or a weights file (speed does not depend on it)")
    parser.add_argument("--alpha", type=float, default=None)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        source = subset_source(args.source, args.images, Path(tmp))
        for name in args.backbones.split(","):
            res = bench(name, source, args.batch_size, args.repeats, args.weights, args.alpha, args.image_size)
            results.append(res)
            print(f"{name:>12}: raw {res['raw_images_per_s']:7.1f} img/s, end-to-end "
                  f"{res['end_to_end_images_per_s']:7.1f} img/s, ratio {res['ratio']:.3f}, "
                  f"merge {100 * res['merge_share']:.2f}% of the run "
                  f"({res['images']} images, batch {res['batch_size']}, {res['device']})", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
