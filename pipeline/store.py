"""The HDF5 feature store: one file of pooled features, labels and paths.

Layout (readable with plain h5py and numpy):

- ``features``: (N, D) float32 or float16, chunked by rows, ``maxshape=(None, D)``
- ``labels``: (N,) int32, an index into the ``classes`` attribute, -1 if unlabelled
- ``paths``: (N,) UTF-8 strings, relative to the ``source_root`` attribute
- ``skipped/paths``, ``skipped/reasons``: files that could not be decoded
- attributes: ``format``, ``format_version``, the backbone's identity and
  settings, ``classes``, versions, ``rows_done`` and ``complete``.

This module never imports Keras or River.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import h5py
import numpy as np

from pipeline.errors import StoreError
from pipeline.fsutil import WRITE_ERRORS, atomic_path
from pipeline.identity import IDENTITY_KEYS, REQUIRED_KEYS, identity_of
from pipeline.store_parts import find_parts, open_parts
from pipeline.store_protocol import Rows, Store

FORMAT_NAME = "incremental-pipeline-features"
FORMAT_VERSION = 1
REQUIRED_ATTRS = ("format", "format_version", *REQUIRED_KEYS, "dtype", "classes", "rows_done", "complete")
STR = h5py.string_dtype("utf-8")
_CACHE_BYTES = 64 << 20  # compressed appends are ~10x slower with h5py's 1 MiB default
__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "IDENTITY_KEYS", "WRITE_ERRORS", "Chunk", "FeatureStore", "Rows",
           "Store", "StoreWriter", "atomic_path", "open_store"]
Chunk = Rows  # the name of Rows before the training loop's Chunk made it ambiguous


def _to_attr(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, str) for v in value):
            return np.array(value, dtype=STR)
        return np.asarray(value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    if value is None:
        return ""
    return value


def _from_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [_from_attr(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _link_problem(file: h5py.File, name: str) -> str:
    """Why ``file[name]`` is not data held in the file itself: "missing", a link leaving the file (external
    or soft link), a virtual dataset or one stored in external raw files; "" when it is a plain object.

    Links are looked at without following them, so a link loop or a dangling link is reported, not entered.
    """
    group: Any = file
    parts = name.split("/")
    for k, part in enumerate(parts):
        try:
            link = group.get(part, getlink=True)
        except (KeyError, OSError, RuntimeError, ValueError) as exc:
            return f"cannot be read ({exc})"
        if link is None:
            return "missing"
        if isinstance(link, h5py.ExternalLink):
            return f"is an external link to {link.filename}:{link.path}"
        if isinstance(link, h5py.SoftLink):
            return f"is a soft link to {link.path}"
        if not isinstance(link, h5py.HardLink):
            return f"is a {type(link).__name__}"
        try:
            obj = group[part]
        except (KeyError, OSError, RuntimeError, ValueError) as exc:
            return f"cannot be read ({exc})"
        last = k == len(parts) - 1
        if isinstance(obj, h5py.Dataset):
            if not last or name == "skipped":
                return "is a dataset where a group was expected"
            if obj.is_virtual:
                return "is a virtual dataset (its data lies in other files)"
            if obj.external:
                return "is stored in external raw files"
        elif last and name != "skipped":
            return "is a group, not a dataset"
        group = obj
    return ""


class StoreWriter:
    """Append rows to a new store file; ``close(complete=True)`` marks it finished."""

    def __init__(self, path: str | Path, attrs: dict[str, Any], feature_dim: int,
                 dtype: str = "float32", compression: str | None = None, chunk_rows: int = 256):
        if dtype not in ("float32", "float16"):
            raise StoreError(f"unsupported feature dtype {dtype!r}; expected float32 or float16")
        if compression not in (None, "lzf", "gzip"):
            raise StoreError(f"unsupported compression {compression!r}; expected lzf or gzip")
        self.path = Path(path)
        self.file = h5py.File(self.path, "w", rdcc_nbytes=_CACHE_BYTES)
        chunk = max(1, min(chunk_rows, max(1, (1 << 20) // max(1, feature_dim * np.dtype(dtype).itemsize))))
        self.features = self.file.create_dataset(
            "features", shape=(0, feature_dim), maxshape=(None, feature_dim), dtype=dtype,
            chunks=(chunk, feature_dim), compression=compression)
        self.labels = self.file.create_dataset("labels", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(4096,))
        self.paths = self.file.create_dataset("paths", shape=(0,), maxshape=(None,), dtype=STR, chunks=(4096,))
        group = self.file.create_group("skipped")
        self.skipped_paths = group.create_dataset("paths", shape=(0,), maxshape=(None,), dtype=STR, chunks=(256,))
        self.skipped_reasons = group.create_dataset("reasons", shape=(0,), maxshape=(None,), dtype=STR, chunks=(256,))
        base = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "feature_dim": int(feature_dim),
                "dtype": dtype, "compression": compression or "none", "rows_done": 0, "complete": False}
        for key, value in {**attrs, **base}.items():
            self.file.attrs[key] = _to_attr(value)
        self.rows = 0

    def append(self, features: np.ndarray, labels: np.ndarray, paths: Sequence[str]) -> None:
        n = len(features)
        if n == 0:
            return
        if features.ndim != 2 or features.shape[1] != self.features.shape[1]:
            raise StoreError(f"expected features of shape (n, {self.features.shape[1]}), got {features.shape}")
        end = self.rows + n
        for ds in (self.features, self.labels, self.paths):
            ds.resize(end, axis=0)
        self.features[self.rows:end] = features
        self.labels[self.rows:end] = labels
        self.paths[self.rows:end] = list(paths)
        self.rows = end
        self.file.attrs["rows_done"] = end

    def add_skipped(self, paths: Sequence[str], reasons: Sequence[str]) -> None:
        if not paths:
            return
        start = self.skipped_paths.shape[0]
        for ds, values in ((self.skipped_paths, paths), (self.skipped_reasons, reasons)):
            ds.resize(start + len(values), axis=0)
            ds[start:] = list(values)

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            self.abort()

    def abort(self) -> None:
        """Close the file after a failure (it is being discarded), never raising.

        A full disk leaves HDF5 holding data it cannot flush: its close fails, the
        file stays open in the library, and freeing it later (garbage collection,
        interpreter exit) crashed the process. As the file is discarded anyway, its
        descriptor is first pointed at ``/dev/null``: the pending writes then succeed
        into nothing and the close completes.
        """
        file_id = self.file.id
        if not file_id.valid:
            return
        with contextlib.suppress(Exception):
            fd = file_id.get_vfd_handle()
            if isinstance(fd, int) and fd >= 0:
                null = os.open(os.devnull, os.O_RDWR)
                try:
                    os.dup2(null, fd)
                finally:
                    os.close(null)
        for close in (self.file.close, file_id.close):  # a close that failed once needs a second, low-level one
            try:
                close()
            except Exception:  # the write already failed; the file is discarded
                pass
            if not file_id.valid:
                break

    def close(self, complete: bool = False) -> None:
        """Finish the file (``complete`` marks the store done); a failure to flush it aborts it and raises."""
        if not self.file.id.valid:
            return
        try:
            self.file.attrs["skipped_count"] = int(self.skipped_paths.shape[0])
            self.file.attrs["complete"] = bool(complete)
            self.file.flush()
            self.file.close()
        except BaseException:
            self.abort()
            raise


class FeatureStore:
    """A validated, read-only store: metadata plus chunked iteration.

    >>> store = FeatureStore("features.h5")            # doctest: +SKIP
    >>> for chunk in store.iter_chunks(4096):          # doctest: +SKIP
    ...     chunk.X.shape, chunk.y.shape
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise StoreError(f"feature store {self.path} does not exist")
        if self.path.is_dir():
            raise StoreError(f"{self.path} is a folder, not a feature store (the .h5 file extract-features writes); "
                             "to embed the images in it, run extract-features on it first")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            size = self.path.stat().st_size
            if _is_zip(self.path):
                raise StoreError(f"{self.path} is a model file (or another zip archive), not a feature store") from None
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreError(f"{self.path} is not a readable HDF5 feature store ({size} bytes; truncated or not HDF5): "
                             f"{first}") from None
        attrs = self._file.attrs
        if attrs.get("format") is None or _from_attr(attrs.get("format")) != FORMAT_NAME:
            self._file.close()
            raise StoreError(f"{self.path} is an HDF5 file but not a feature store (no format={FORMAT_NAME!r} attribute)")
        missing = [key for key in REQUIRED_ATTRS if key not in attrs]
        if missing:
            self._file.close()
            raise StoreError(f"{self.path} lacks the store attributes {', '.join(missing)}")
        version = int(attrs["format_version"])
        if version > FORMAT_VERSION:
            self._file.close()
            raise StoreError(f"{self.path} has store format version {version}; this tool reads up to {FORMAT_VERSION}")
        self.meta: dict[str, Any] = {key: _from_attr(value) for key, value in attrs.items()}
        for name in ("features", "labels", "paths", "skipped", "skipped/paths", "skipped/reasons"):
            problem = _link_problem(self._file, name)
            if problem and (not name.startswith("skipped") or problem != "missing"):
                self._file.close()
                if problem == "missing":
                    raise StoreError(f"{self.path} lacks the dataset {name!r}")
                raise StoreError(f"{self.path} is not a plain feature store: {name!r} {problem}; refused (a store's "
                                 "data must lie in the file itself)")
        self.n_rows = int(self.meta["rows_done"])
        feats = self._file["features"]
        if feats.shape[0] < self.n_rows or self._file["labels"].shape[0] < self.n_rows:
            self._file.close()
            raise StoreError(f"{self.path} is truncated: rows_done={self.n_rows} but features has {feats.shape[0]} rows")
        self.feature_dim = int(self.meta["feature_dim"])
        if feats.shape[1] != self.feature_dim:
            self._file.close()
            raise StoreError(f"{self.path}: features have {feats.shape[1]} columns, attribute feature_dim says {self.feature_dim}")
        self.classes: list[str] = list(self.meta["classes"]) if self.meta["classes"] != "" else []
        self.complete = bool(self.meta["complete"])

    @property
    def identity(self) -> dict[str, Any]:
        return identity_of(self.meta)

    def labels(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        stop = self.n_rows if stop is None else min(stop, self.n_rows)
        return self._file["labels"][start:stop]

    def paths(self, start: int = 0, stop: int | None = None) -> list[str]:
        stop = self.n_rows if stop is None else min(stop, self.n_rows)
        return [p.decode("utf-8") if isinstance(p, bytes) else p for p in self._file["paths"][start:stop]]

    def skipped(self, limit: int | None = None) -> list[tuple[str, str]]:
        """Files that could not be decoded, with their reasons (the first ``limit`` when given)."""
        if "skipped" not in self._file:
            return []
        group = self._file["skipped"]
        return [(p.decode(), r.decode()) for p, r in zip(group["paths"][:limit], group["reasons"][:limit])]

    def iter_paths(self, chunk_rows: int = 65536) -> Iterator[str]:
        """Every row's path, read ``chunk_rows`` at a time (memory bounded by the chunk)."""
        for begin in range(0, self.n_rows, chunk_rows):
            yield from self.paths(begin, begin + chunk_rows)

    def iter_skipped_paths(self, chunk_rows: int = 65536) -> Iterator[str]:
        """The paths of the skipped files, read ``chunk_rows`` at a time."""
        if "skipped" not in self._file:
            return
        dataset = self._file["skipped"]["paths"]
        for begin in range(0, dataset.shape[0], chunk_rows):
            yield from (p.decode("utf-8") if isinstance(p, bytes) else p for p in dataset[begin:begin + chunk_rows])

    def read(self, start: int, stop: int) -> Rows:
        stop = min(stop, self.n_rows)
        try:
            X = self._file["features"][start:stop]
            y = self._file["labels"][start:stop]
            paths = self.paths(start, stop)
        except OSError as exc:
            raise StoreError(f"{self.path} is corrupt or truncated: rows {start}:{stop} cannot be read ({exc})") from None
        if len(y) and (int(y.min()) < -1 or int(y.max()) >= len(self.classes)):
            bad = int(y.min()) if int(y.min()) < -1 else int(y.max())
            raise StoreError(f"{self.path} is corrupt: label index {bad} in rows {start}:{stop} is outside "
                             f"[-1, {len(self.classes) - 1}] (the store has {len(self.classes)} classes)")
        return Rows(X, y, paths, start)

    def iter_chunks(self, chunk_rows: int = 4096, start: int = 0, stop: int | None = None) -> Iterator[Rows]:
        """Yield consecutive chunks; memory is bounded by ``chunk_rows``, not the store size."""
        stop = self.n_rows if stop is None else min(stop, self.n_rows)
        for begin in range(start, stop, chunk_rows):
            yield self.read(begin, min(begin + chunk_rows, stop))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.path)!r}, rows={self.n_rows}, dim={self.feature_dim}, classes={len(self.classes)})"


def _is_zip(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def open_store(path: str | Path, allow_incomplete: bool = False) -> Store:
    """Open and validate a store; an incomplete one is refused unless ``allow_incomplete``.

    ``path`` is a store file, a parts folder written with ``--no-merge``, or
    the output path of such a run (its ``.parts`` folder is then read).
    """
    folder = find_parts(Path(path))
    if folder is not None:
        return open_parts(folder, FeatureStore, allow_incomplete)
    store = FeatureStore(path)
    if not store.complete and not allow_incomplete:
        store.close()
        raise StoreError(f"{path} is incomplete ({store.n_rows} rows written; its extraction did not finish): "
                         "rerun extract-features to finish it, or pass --allow-incomplete")
    return store
