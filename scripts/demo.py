"""The main job on a default data set: extract -> train -> evaluate -> predict.

With ../shared (this project's CI and dev machines) it uses the real Dogs vs
Cats photos and MobileNetV2 ImageNet weights found there. Without it, it
downloads Microsoft's Dogs vs Cats archive (the one TensorFlow Datasets'
``cats_vs_dogs`` uses) and Keras' own ImageNet weights, and uses a subset.
"""

from __future__ import annotations

import argparse
import csv
import shlex
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

ARCHIVE_URL = "https://download.microsoft.com/download/3/E/1/3E1C3F21-ECDB-4869-8368-6DEBA77B919F/kagglecatsanddogs_5340.zip"
V2_WEIGHTS = "weights/mobilenetv2_1.0_224_imagenet_no_top.weights.h5"


def run(*args: str) -> None:
    cmd = [sys.executable, "-m", "pipeline", *args]
    print("$ pipeline " + " ".join(shlex.quote(a) for a in args), flush=True)
    subprocess.run(cmd, check=True)


def download_dogs_vs_cats(folder: Path, per_class: int) -> Path:
    """Fetch the archive once and write a CSV manifest of ``per_class`` photos per class."""
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / "kagglecatsanddogs.zip"
    if not archive.exists():
        print(f"downloading {ARCHIVE_URL} (about 790 MB) ...", flush=True)
        urllib.request.urlretrieve(ARCHIVE_URL, archive)
    root = folder / "PetImages"
    if not root.exists():
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(folder)
    manifest = folder / "subset.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        for label in ("Cat", "Dog"):
            names = sorted((root / label).glob("*.jpg"), key=lambda p: int(p.stem) if p.stem.isdigit() else 0)
            for p in names[:per_class]:
                writer.writerow([p.relative_to(folder).as_posix(), label.lower()])
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    parser.add_argument("--out", type=Path, default=Path("data/demo"))
    parser.add_argument("--per-class", type=int, default=1000, help="photos per class when downloading")
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    weights = args.shared / V2_WEIGHTS
    photos = args.shared / "data" / "dogs-vs-cats" / "train"
    if weights.is_file() and photos.is_dir():
        source, weights_opt = str(photos), str(weights)
        print(f"using the photos and weights in {args.shared}")
    else:
        print(f"{args.shared} not found: downloading the data set and using Keras' ImageNet weights")
        source, weights_opt = str(download_dogs_vs_cats(out / "download", args.per_class)), "imagenet"

    store, model = out / "dogs-vs-cats.h5", out / "logreg.model"
    run("extract-features", source, "-o", str(store), "--backbone", "mobilenetv2", "--weights", weights_opt)
    run("train-incremental", str(store), "--head", "logreg", "--holdout", "0.3", "--eval-every", "200",
        "--model-out", str(model), "--metrics-out", str(out / "metrics.json"), "--plot", str(out / "curve.png"),
        "--report", str(out / "run.html"))
    run("evaluate", str(model), str(store), "--holdout", "0.3")
    run("predict", str(model), *map(str, heldout_photos(store, 0.3, per_class=2)), "--weights", weights_opt)
    print(f"\ndone: store, model, metrics.json, curve.png and run.html (open it in a browser) are in {out}/")


def heldout_photos(store: Path, holdout: float, per_class: int) -> list[Path]:
    """A few photos of each class from the held-out split (never learnt), so the probabilities are honest."""
    from pipeline.images import path_from_record
    from pipeline.stream import FeatureStream

    picked: dict[str, list[Path]] = {}
    with FeatureStream([store], holdout=holdout, split="test") as stream:
        root = Path(str(stream.meta.get("source_root", "")))
        for batch in stream:
            for label, path in zip(batch.y, batch.paths):
                chosen = picked.setdefault(str(label), [])
                if len(chosen) < per_class:
                    chosen.append(root / path_from_record(path))
    return [p for paths in picked.values() for p in paths]


if __name__ == "__main__":
    main()
