"""A parts folder read as one store: the shards of an extraction and their manifest.

``extract-features --no-merge`` leaves ``OUT.parts/`` (``manifest.json`` plus
one ``shard-<file_start>.h5`` per partition) instead of merging it into
``OUT``. When the manifest says ``complete``, :class:`PartsStore` reads the
shards in partition order as one :class:`~pipeline.store_protocol.Store`, so
every command accepts the folder (or ``OUT`` itself) wherever it accepts a
store. Only one shard is open at a time. This module owns the layout of the
folder (:func:`parts_folder`, :data:`MANIFEST`, :data:`SHARD_GLOB`); it opens
each shard with the reader it is given (:class:`pipeline.store.FeatureStore`),
so it imports nothing from the store file format.
"""

from __future__ import annotations

import bisect
import json
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from pipeline.errors import StoreError, write_failure
from pipeline.fsutil import WRITE_ERRORS, atomic_path, read_json
from pipeline.identity import identity_of
from pipeline.store_protocol import Rows, Store

MANIFEST = "manifest.json"
SHARD_GLOB = "shard-*.h5"
PARTS_FORMAT = "incremental-pipeline-parts"
PARTS_VERSION = 1


def parts_folder(out: Path) -> Path:
    """Where the shards of an extraction to ``out`` go: ``OUT.parts``."""
    return out.with_name(out.name + ".parts")


def shard_name(file_start: int) -> str:
    """The file name of the shard whose first file is ``file_start`` in processing order."""
    return f"shard-{file_start:09d}.h5"


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of a parts folder, or None when there is none (or not ours)."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path} cannot be read ({exc}); remove {folder} to start over") from None
    return data if isinstance(data, dict) and data.get("format") == PARTS_FORMAT else None


def write_manifest(folder: Path, data: dict[str, Any]) -> None:
    try:
        with atomic_path(folder / MANIFEST) as tmp:
            tmp.write_text(json.dumps({"format": PARTS_FORMAT, "format_version": PARTS_VERSION, **data},
                                      indent=1, sort_keys=True))
    except WRITE_ERRORS as exc:
        raise StoreError(f"writing {folder / MANIFEST} failed ({write_failure(exc)}); free disk space and rerun the same "
                         "command to continue") from None


def find_parts(path: Path) -> Path | None:
    """The parts folder to read for ``path``: the folder itself, or ``OUT.parts`` when ``OUT`` is absent."""
    if path.is_dir() and (path / MANIFEST).is_file():
        return path
    if not path.exists() and (parts_folder(path) / MANIFEST).is_file():
        return parts_folder(path)
    return None


def _count(value: Any, folder: Path, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise StoreError(f"{folder / MANIFEST}: {what} is {value!r}; expected a count (an integer >= 0)")
    return value


def _checked_shards(folder: Path, manifest: dict[str, Any]) -> tuple[list[str], list[int]]:
    """The shard names and row counts of a manifest, each a plain file inside ``folder`` (no path may leave it)."""
    listed = manifest.get("shards", [])
    if not isinstance(listed, list):
        raise StoreError(f"{folder / MANIFEST}: 'shards' is {type(listed).__name__}; expected a list")
    names, rows = [], []
    root = folder.resolve()
    for k, entry in enumerate(listed):
        if not isinstance(entry, dict) or "name" not in entry or "rows" not in entry:
            raise StoreError(f"{folder / MANIFEST}: shard {k} is {str(entry)[:80]!r}; expected "
                             '{"name": FILE, "rows": COUNT}')
        name = entry["name"]
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or "\0" in name \
                or name in (".", ".."):
            raise StoreError(f"{folder / MANIFEST}: shard {k} is named {name!r}; expected a file name inside "
                             f"{folder} (no folder, no '..', no absolute path)")
        target = (folder / name).resolve()
        if target.parent != root:
            raise StoreError(f"{folder / MANIFEST}: shard {name!r} leads to {target}, outside {folder}; refused")
        names.append(name)
        rows.append(_count(entry["rows"], folder, f"the rows of shard {name!r}"))
    return names, rows


class PartsStore:
    """The shards of a ``--no-merge`` extraction, read as one store (same interface as FeatureStore)."""

    def __init__(self, folder: Path, manifest: dict[str, Any], open_shard: Callable[[Path], Store]):
        self.path = folder
        self._open_shard = open_shard
        self.shards, rows = _checked_shards(folder, manifest)
        self.offsets = np.concatenate([[0], np.cumsum(rows, dtype=np.int64)]).tolist()
        self.n_rows = int(self.offsets[-1])
        self.complete = bool(manifest.get("complete"))
        if not self.shards:
            raise StoreError(f"{folder} holds no finished shard yet")
        self._open: tuple[int, Store] | None = None
        first = self._shard(0)
        self.meta: dict[str, Any] = {k: v for k, v in first.meta.items() if k not in ("file_start", "file_stop")}
        self.meta.update(rows_done=self.n_rows, complete=self.complete,
                         skipped_count=_count(manifest.get("skipped_count", 0), folder, "skipped_count"))
        self.feature_dim = first.feature_dim
        self.classes = first.classes

    @property
    def identity(self) -> dict[str, Any]:
        return identity_of(self.meta)

    def _shard(self, k: int) -> Store:
        if self._open is None or self._open[0] != k:
            self.close()
            shard = self._open_shard(self.path / self.shards[k])
            expected = self.offsets[k + 1] - self.offsets[k]
            if shard.n_rows != expected:
                shard.close()
                raise StoreError(f"{shard.path} holds {shard.n_rows} rows, its manifest says {expected}")
            self._open = (k, shard)
        return self._open[1]

    def read(self, start: int, stop: int) -> Rows:
        stop = min(stop, self.n_rows)
        begin, pieces = start, []
        k = max(0, bisect.bisect_right(self.offsets, start) - 1)
        while start < stop and k < len(self.shards):
            base = self.offsets[k]
            if self.offsets[k + 1] > start:
                pieces.append(self._shard(k).read(start - base, min(stop, self.offsets[k + 1]) - base))
                start = min(stop, self.offsets[k + 1])
            k += 1
        if not pieces:
            return Rows(np.zeros((0, self.feature_dim), np.float32), np.zeros(0, np.int32), [], begin)
        if len(pieces) == 1:
            return Rows(pieces[0].X, pieces[0].y, pieces[0].paths, begin)
        return Rows(np.concatenate([p.X for p in pieces]), np.concatenate([p.y for p in pieces]),
                     [q for p in pieces for q in p.paths], begin)

    def iter_chunks(self, chunk_rows: int = 4096, start: int = 0, stop: int | None = None) -> Iterator[Rows]:
        stop = self.n_rows if stop is None else min(stop, self.n_rows)
        for begin in range(start, stop, chunk_rows):
            yield self.read(begin, min(begin + chunk_rows, stop))

    def labels(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self.read(start, self.n_rows if stop is None else stop).y

    def paths(self, start: int = 0, stop: int | None = None) -> list[str]:
        return self.read(start, self.n_rows if stop is None else stop).paths

    def skipped(self, limit: int | None = None) -> list[tuple[str, str]]:
        """Files that could not be decoded, with their reasons (the first ``limit`` when given)."""
        found: list[tuple[str, str]] = []
        for k in range(len(self.shards)):
            if limit is not None and len(found) >= limit:
                break
            found.extend(self._shard(k).skipped(None if limit is None else limit - len(found)))
        return found

    def close(self) -> None:
        if self._open is not None:
            self._open[1].close()
            self._open = None

    def __enter__(self) -> "PartsStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PartsStore({str(self.path)!r}, rows={self.n_rows}, shards={len(self.shards)}, dim={self.feature_dim})"


def open_parts(folder: Path, open_shard: Callable[[Path], Store], allow_incomplete: bool = False) -> PartsStore:
    """The parts folder read as one store, each shard opened with ``open_shard``."""
    manifest = read_manifest(folder)
    if manifest is None:
        raise StoreError(f"{folder} is not a parts folder of extract-features (no usable {MANIFEST})")
    if not manifest.get("complete") and not allow_incomplete:
        raise StoreError(f"{folder} is an unfinished extraction: rerun extract-features to finish it")
    if not manifest.get("complete"):  # list the finished shards in order (rows known only once opened)
        shards = []
        for path in sorted(folder.glob(SHARD_GLOB)):
            with open_shard(path) as shard:
                shards.append({"name": path.name, "rows": shard.n_rows})
        manifest = {**manifest, "shards": shards}
    return PartsStore(folder, manifest, open_shard)
