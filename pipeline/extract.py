"""The extraction runner: list -> decode (threads) -> embed -> write (thread).

Only the mapper step (``Backbone.embed``) touches the model. Rows are written
to small shard files in ``<out>.parts/``, each renamed into place only when
complete, so an interrupted run (Ctrl-C, kill -9, full disk, power loss)
resumes at the last shard; when every file is done the shards are merged
into ``<out>`` and the parts folder is removed. Batches are fixed by file
position, so a resumed store is identical to an uninterrupted one.
"""

from __future__ import annotations

import json
import queue
import shutil
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline.backbones import Backbone
from pipeline.errors import StoreError
from pipeline.images import ImageSource, listing_digest
from pipeline.store import FeatureStore, StoreWriter, atomic_path

SHARD_GLOB = "shard-*.h5"


@dataclass
class ExtractResult:
    out: Path
    rows: int = 0
    skipped: int = 0
    files: int = 0
    elapsed_s: float = 0.0
    images_per_s: float = 0.0
    resumed_at: int = 0
    already_complete: bool = False
    timings: dict[str, float] = field(default_factory=dict)


def package_versions() -> dict[str, str]:
    versions = {}
    for name in ("incremental-pipeline", "keras", "tensorflow", "tensorflow-cpu", "h5py", "numpy", "pillow"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def file_order(n: int, seed: int, shuffle: bool) -> np.ndarray:
    """The order in which the sorted file list is processed."""
    return np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)


def extraction_settings(source: ImageSource, backbone: Backbone, *, seed: int, shuffle: bool,
                        batch_size: int, dtype: str) -> dict[str, Any]:
    """Everything that must match for a partial run to be continued."""
    ident = {k: backbone.info[k] for k in ("backbone", "weights", "alpha", "input_size", "pooling", "preprocessing")}
    return {**ident, "source_root": str(source.root.resolve()), "layout": source.layout, "seed": seed,
            "shuffle": shuffle, "batch_size": batch_size, "dtype": dtype, "files": len(source.paths),
            "listing_sha256": listing_digest(source)}


def _describe_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return "; ".join(diffs)


class _ShardWriter(threading.Thread):
    """Buffers finished batches and writes them as atomically renamed shard files."""

    def __init__(self, parts: Path, attrs: dict[str, Any], feature_dim: int, dtype: str,
                 checkpoint_rows: int, checkpoint_seconds: float):
        super().__init__(daemon=True)
        self.parts, self.attrs, self.feature_dim, self.dtype = parts, attrs, feature_dim, dtype
        self.checkpoint_rows, self.checkpoint_seconds = checkpoint_rows, checkpoint_seconds
        self.inbox: queue.Queue[tuple | None] = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        self.write_s = 0.0
        self._buffer: list[tuple] = []

    def put(self, item: tuple) -> None:
        if self.error is not None:
            self.finish()
        self.inbox.put(item)

    def run(self) -> None:
        last = time.monotonic()
        while True:
            item = self.inbox.get()
            if self.error is not None:  # after a failure keep draining, so put() never blocks
                if item is None:
                    return
                continue
            try:
                if item is None:
                    self._flush()
                    return
                self._buffer.append(item)
                rows = sum(len(b[3]) for b in self._buffer)
                if rows >= self.checkpoint_rows or time.monotonic() - last >= self.checkpoint_seconds:
                    self._flush()
                    last = time.monotonic()
            except BaseException as exc:  # surfaced in the main thread by put() / finish()
                self.error = exc

    def _flush(self) -> None:
        if not self._buffer:
            return
        t0 = time.perf_counter()
        file_start, file_stop = self._buffer[0][0], self._buffer[-1][1]
        final = self.parts / f"shard-{file_start:09d}.h5"
        with atomic_path(final) as tmp:
            writer = StoreWriter(tmp, {**self.attrs, "file_start": file_start, "file_stop": file_stop},
                                 self.feature_dim, self.dtype)
            for _, _, feats, labels, paths, skipped in self._buffer:
                writer.append(feats, labels, paths)
                writer.add_skipped([p for p, _ in skipped], [r for _, r in skipped])
            writer.close(complete=False)
        self._buffer = []
        self.write_s += time.perf_counter() - t0

    def finish(self) -> None:
        """Flush and stop; raises the writer's error once."""
        if self.is_alive():
            self.inbox.put(None)
            self.join()
        error, self.error = self.error, None
        if error is not None:
            raise error


def _completed_shards(parts: Path) -> list[FeatureStore]:
    shards = []
    expected = 0
    for path in sorted(parts.glob(SHARD_GLOB)):
        shard = FeatureStore(path)
        if int(shard.meta["file_start"]) != expected:
            raise StoreError(f"{parts} has a gap before {path.name}; remove the folder or pass --overwrite")
        expected = int(shard.meta["file_stop"])
        shards.append(shard)
    return shards


def _merge(shards: list[FeatureStore], out: Path, attrs: dict[str, Any], feature_dim: int,
           dtype: str, compression: str | None) -> tuple[int, int]:
    with atomic_path(out) as tmp:
        writer = StoreWriter(tmp, attrs, feature_dim, dtype, compression)
        for shard in shards:
            for chunk in shard.iter_chunks(8192):
                writer.append(chunk.X, chunk.y, chunk.paths)
            skipped = shard.skipped()
            writer.add_skipped([p for p, _ in skipped], [r for _, r in skipped])
        rows, n_skipped = writer.rows, writer.skipped_paths.shape[0]
        writer.close(complete=True)
    return rows, n_skipped


def extract_features(
    source: ImageSource,
    out: str | Path,
    backbone: Backbone,
    *,
    seed: int = 42,
    shuffle: bool = True,
    batch_size: int = 32,
    dtype: str = "float32",
    compression: str | None = None,
    workers: int = 2,
    checkpoint_rows: int = 256,
    checkpoint_seconds: float = 30.0,
    overwrite: bool = False,
    progress: bool = True,
) -> ExtractResult:
    """Embed every image of ``source`` with ``backbone`` into the store ``out``.

    Resumes a partial run made with the same settings; refuses one made with
    other settings unless ``overwrite``.
    """
    out = Path(out)
    parts = out.with_name(out.name + ".parts")
    settings = extraction_settings(source, backbone, seed=seed, shuffle=shuffle, batch_size=batch_size, dtype=dtype)
    result = ExtractResult(out=out, files=len(source.paths))
    if overwrite:
        shutil.rmtree(parts, ignore_errors=True)
        out.unlink(missing_ok=True)
    if out.exists():
        try:
            existing = FeatureStore(out)
        except StoreError as exc:
            raise StoreError(f"{out} exists and is not a usable store ({exc}); pass --overwrite to replace it") from None
        with existing:
            old = json.loads(existing.meta.get("extract_settings", "{}") or "{}")
            if not existing.complete or old != settings:
                why = "is incomplete" if not existing.complete else f"was made with other settings ({_describe_difference(old, settings)})"
                raise StoreError(f"{out} {why}; pass --overwrite to replace it")
            result.rows, result.skipped, result.already_complete = existing.n_rows, int(existing.meta.get("skipped_count", 0)), True
            return result

    out.parent.mkdir(parents=True, exist_ok=True)
    manifest = parts / "manifest.json"
    if parts.exists() and manifest.exists():
        old = json.loads(manifest.read_text())
        if old != settings:
            raise StoreError(f"a partial extraction in {parts} was made with other settings "
                             f"({_describe_difference(old, settings)}); rerun it with those, or pass --overwrite")
    else:
        parts.mkdir(parents=True, exist_ok=True)
        with atomic_path(manifest) as tmp:
            tmp.write_text(json.dumps(settings, indent=1, sort_keys=True))
    for stale in parts.glob("*.tmp"):
        stale.unlink()

    shards = _completed_shards(parts)
    start = int(shards[-1].meta["file_stop"]) if shards else 0
    for shard in shards:
        shard.close()
    result.resumed_at = start
    attrs: dict[str, Any] = {
        **backbone.info, "classes": source.classes, "source_root": settings["source_root"],
        "layout": source.layout, "seed": seed, "shuffle": shuffle,
        "extract_settings": json.dumps(settings, sort_keys=True),
        "package_versions": json.dumps(package_versions(), sort_keys=True),
    }
    order = file_order(len(source.paths), seed, shuffle)
    labels = source.label_indices()
    size = backbone.input_size
    n = len(order)

    def decode(i: int) -> np.ndarray | str:
        return source.decode(i, size)

    writer = _ShardWriter(parts, attrs, backbone.feature_dim, dtype, checkpoint_rows, checkpoint_seconds)
    writer.start()
    t_start = time.perf_counter()
    embed_s = wait_s = 0.0
    bar = tqdm(total=n, initial=start, unit="img", desc="extract", disable=not progress, file=sys.stderr, smoothing=0.1)
    starts = list(range(start, n, batch_size))
    pending: deque[tuple[int, int, list[Future]]] = deque()
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            def submit(k: int) -> None:
                b0, b1 = starts[k], min(starts[k] + batch_size, n)
                pending.append((b0, b1, [pool.submit(decode, int(order[j])) for j in range(b0, b1)]))

            for k in range(min(3, len(starts))):
                submit(k)
            for k in range(len(starts)):
                b0, b1, futures = pending.popleft()
                if k + 3 < len(starts):
                    submit(k + 3)
                t0 = time.perf_counter()
                decoded = [f.result() for f in futures]
                wait_s += time.perf_counter() - t0
                idx = [int(order[j]) for j in range(b0, b1)]
                good = [(i, a) for i, a in zip(idx, decoded) if not isinstance(a, str)]
                skipped = [(source.paths[i], a) for i, a in zip(idx, decoded) if isinstance(a, str)]
                t0 = time.perf_counter()
                if good:
                    feats = backbone.embed(np.stack([a for _, a in good]), batch_size)
                else:
                    feats = np.zeros((0, backbone.feature_dim), np.float32)
                embed_s += time.perf_counter() - t0
                writer.put((b0, b1, feats, labels[[i for i, _ in good]], [source.paths[i] for i, _ in good], skipped))
                result.skipped += len(skipped)
                bar.update(b1 - b0)
    except OSError as exc:  # e.g. a full disk: finished shards stay, the rerun continues after them
        bar.close()
        try:
            writer.finish()
        except OSError:
            pass
        raise StoreError(f"writing to {parts} failed ({exc}); fix the cause (free disk space?) and rerun the "
                         "same command to continue") from None
    finally:
        bar.close()
        writer.finish()  # flushes finished batches even on Ctrl-C, so they are not redone

    shards = _completed_shards(parts)
    if not shards:
        raise StoreError(f"no shard was written in {parts}")
    attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    try:
        result.rows, result.skipped = _merge(shards, out, attrs, backbone.feature_dim, dtype, compression)
    except OSError as exc:
        raise StoreError(f"writing {out} failed ({exc}); the shards in {parts} are kept: fix the cause and "
                         "rerun the same command") from None
    for shard in shards:
        shard.close()
    shutil.rmtree(parts, ignore_errors=True)
    result.elapsed_s = time.perf_counter() - t_start
    done = n - start
    result.images_per_s = done / result.elapsed_s if result.elapsed_s > 0 else 0.0
    result.timings = {"embed_s": embed_s, "decode_wait_s": wait_s, "shard_write_s": writer.write_s,
                      "merge_s": time.perf_counter() - t0}
    return result
