"""Shared fixtures: real photos and weights from ../shared, small and cached per session."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import pipeline.keras_runtime  # noqa: F401  (before any TensorFlow import: it picks the CPU kernels)

ROOT = Path(__file__).resolve().parents[1]
SHARED = (ROOT / ".." / "shared").resolve()
WEIGHTS_025 = SHARED / "weights" / "mobilenet_0.25_128_imagenet_no_top.weights.h5"
DVC = SHARED / "data" / "dogs-vs-cats" / "train"
IMAGENETTE = SHARED / "data" / "imagenette-mini"

requires_shared = pytest.mark.skipif(
    not (WEIGHTS_025.is_file() and DVC.is_dir() and IMAGENETTE.is_dir()),
    reason=f"needs real photos and weights in {SHARED} (../shared next to the project); absent here",
)


def link_subset(src_dir: Path, dst_dir: Path, names: list[str]) -> Path:
    """Symlink some photos into a scratch folder (never copies into the project)."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        (dst_dir / name).symlink_to(src_dir / name)
    return dst_dir


def kaggle_names(per_class: int) -> list[str]:
    return [f"{c}.{i}.jpg" for c in ("cat", "dog") for i in range(per_class)]


@pytest.fixture(scope="session")
def small_backbone():
    """MobileNet 0.25 at 128 px with real ImageNet weights (256-d features)."""
    if not WEIGHTS_025.is_file():
        pytest.skip(f"needs {WEIGHTS_025}")
    from pipeline.backbones import build_backbone

    return build_backbone("mobilenet", str(WEIGHTS_025), alpha=0.25, image_size=128)


@pytest.fixture(scope="session")
def dvc_store(tmp_path_factory, small_backbone) -> Path:
    """All 1,400 Dogs vs Cats photos embedded once per session."""
    from pipeline.extract import extract_features
    from pipeline.images import list_images

    out = tmp_path_factory.mktemp("dvc") / "dvc.h5"
    extract_features(list_images(DVC), out, small_backbone, progress=False)
    return out


@pytest.fixture(scope="session")
def imagenette_stores(tmp_path_factory, small_backbone) -> tuple[Path, Path]:
    """Imagenette-mini train (600) and val (200) stores, 10 classes."""
    from pipeline.extract import extract_features
    from pipeline.images import list_images

    folder = tmp_path_factory.mktemp("imagenette")
    paths = []
    for split in ("train", "val"):
        out = folder / f"{split}.h5"
        extract_features(list_images(IMAGENETTE / split), out, small_backbone, progress=False)
        paths.append(out)
    return paths[0], paths[1]


def make_blobs_store(path: Path, n: int, dim: int, classes: list[str], seed: int = 0, **attrs) -> Path:
    """A synthetic store (Gaussian class blobs) for tests that need no CNN."""
    from pipeline.store import StoreWriter

    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1.0, (len(classes), dim))
    y = rng.integers(0, len(classes), n).astype(np.int32)
    X = (centers[y] + rng.normal(0, 1.0, (n, dim))).astype(np.float32)
    meta = {"backbone": "synthetic", "weights": "none", "alpha": "", "input_size": [8, 8],
            "preprocessing": "none", "pooling": "avg", "classes": classes, **attrs}
    writer = StoreWriter(path, meta, dim)
    writer.append(X, y, [f"img{seed}_{i}.jpg" for i in range(n)])
    writer.close(complete=True)
    return path


def _contents(path: Path) -> tuple:
    from pipeline.store import open_store

    with open_store(path) as store:
        chunk = store.read(0, store.n_rows)
        return chunk.X, chunk.y.tolist(), chunk.paths, store.skipped(), store.classes


def assert_same_store(a: Path, b: Path) -> None:
    """Features (bitwise), labels, paths in order, skipped files with reasons and classes are equal."""
    Xa, *rest_a = _contents(a)
    Xb, *rest_b = _contents(b)
    assert rest_a == rest_b
    np.testing.assert_array_equal(Xa, Xb)
    assert Xa.tobytes() == Xb.tobytes()


def sigkill_after_shards(proc: subprocess.Popen, parts: Path, shards: int, timeout: float) -> int:
    """SIGKILL ``proc`` (a running extraction) once ``parts`` holds ``shards`` finished shards, or once it
    exits or ``timeout`` seconds pass; returns how many shards were there when it was killed."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and len(list(parts.glob("shard-*.h5"))) < shards:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return len(list(parts.glob("shard-*.h5")))


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray (2 CPUs) for the whole session: started on first use, shut down at the end."""
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'incremental-pipeline[ray]'")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    if started:
        ray.shutdown()


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def invoke_cli(*args: object) -> None:
    """Run a pipeline command in this process (no interpreter start-up to pay); it must succeed."""
    from click.testing import CliRunner

    from pipeline.cli import main

    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output


def writer_inputs(folder: Path, rows_a: int, rows_b: int, dim: int) -> Path:
    """What every writing command reads: stores a.h5 and b.h5 (classes x, y, z), an slda model of each
    (a.model, b.model, mergeable) and an export of a.h5 (emb/)."""
    a = make_blobs_store(folder / "a.h5", rows_a, dim, ["x", "y", "z"], seed=1)
    b = make_blobs_store(folder / "b.h5", rows_b, dim, ["x", "y", "z"], seed=2)
    for store in (a, b):
        invoke_cli("train-incremental", store, "--head", "slda", "--model-out", store.with_suffix(".model"), "-q")
    invoke_cli("export", a, "-o", folder / "emb", "-q")
    return folder
