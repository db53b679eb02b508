"""Stores -> a stream of ``(X, y)`` chunks with bounded memory.

Several stores (or shards written by separate workers, or the parts folder of
``extract-features --no-merge``) read as one stream:
they must share the backbone identity, and their class lists are merged by
name. Rows can be split into train / held-out by a hash of their path (the
same image always lands on the same side), filtered to a subset of classes
(one task of a class-incremental run), and shuffled inside a bounded buffer.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from pipeline.errors import StoreError
from pipeline.identity import check_identity, with_precision
from pipeline.store import open_store


@dataclass
class Batch:
    """Rows of a stream: features, class names (object array), paths."""

    X: np.ndarray
    y: np.ndarray
    paths: list[str]


def holdout_mask(paths: Sequence[str], fraction: float) -> np.ndarray:
    """True for rows in the held-out split: CRC-32 of the path below ``fraction`` of 2**32."""
    if fraction <= 0:
        return np.zeros(len(paths), bool)
    limit = fraction * 4294967296.0
    return np.fromiter((zlib.crc32(p.encode("utf-8")) < limit for p in paths), bool, len(paths))


def _identity(store: Any) -> dict[str, Any]:
    return with_precision(store.identity, store.meta)


@dataclass
class StoreScan:
    """What a full validation pass over the stores found."""

    rows: int
    unlabelled: int
    class_counts: dict[str, int]
    heldout: int = 0   # labelled rows in the held-out split (``holdout`` > 0)

    @property
    def labelled(self) -> int:
        return self.rows - self.unlabelled


class FeatureStream:
    """Iterate one or more stores as ``Batch`` chunks.

    Parameters: ``split`` is ``"all"``, ``"train"`` or ``"test"`` (with
    ``holdout`` the held-out fraction); ``classes`` keeps only those class
    names; ``shuffle_buffer`` > 0 shuffles chunk order and rows inside a
    buffer of that many rows; ``skip`` drops the first rows (to continue an
    interrupted run); ``row_range=(start, stop)`` reads only those rows of each
    store (one worker's share of a store). Unlabelled rows are never yielded.
    """

    def __init__(self, paths: Iterable[str | Path], *, allow_incomplete: bool = False, chunk_rows: int = 4096,
                 holdout: float = 0.0, split: str = "all", classes: Iterable[str] | None = None,
                 shuffle_buffer: int = 0, seed: int = 0, row_range: tuple[int, int] | None = None):
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise StoreError("no feature store given")
        if split not in ("all", "train", "test"):
            raise ValueError(f"split must be all, train or test, not {split!r}")
        if not 0.0 <= holdout < 1.0:
            raise StoreError(f"holdout must be a fraction in [0, 1), got {holdout}")
        self.stores = []
        try:
            for p in self.paths:
                self.stores.append(open_store(p, allow_incomplete))
            first = self.stores[0]
            for store in self.stores:
                if store.n_rows == 0:
                    raise StoreError(f"{store.path} is empty (0 rows)")
                check_identity(_identity(first), _identity(store), str(store.path))
        except Exception:
            self.close()
            raise
        self.identity = _identity(first)
        self.meta = first.meta
        self.feature_dim = first.feature_dim
        self.classes = sorted({c for s in self.stores for c in s.classes})
        self.chunk_rows, self.holdout, self.split = chunk_rows, holdout, split
        self.keep = None if classes is None else set(classes)
        self.shuffle_buffer, self.seed = shuffle_buffer, seed
        self.allow_incomplete = allow_incomplete
        self.row_range = row_range

    def with_options(self, **changes: Any) -> "FeatureStream":
        """A stream over the same (already open) stores with other options."""
        new = object.__new__(FeatureStream)
        new.__dict__.update(self.__dict__)
        for key, value in changes.items():
            if key == "classes":
                value = None if value is None else set(value)
                key = "keep"
            setattr(new, key, value)
        return new

    def _raw_chunks(self, seed: int) -> Iterator[Batch]:
        first, last = self.row_range or (0, None)
        ranges = [(s, start, s.n_rows if last is None else min(last, s.n_rows)) for s in self.stores
                  for start in range(first, s.n_rows if last is None else min(last, s.n_rows), self.chunk_rows)]
        if self.shuffle_buffer:
            np.random.default_rng(seed).shuffle(ranges)
        for store, start, stop in ranges:
            chunk = store.read(start, min(start + self.chunk_rows, stop))
            names = np.array(store.classes + [None], dtype=object)
            y = names[chunk.y]  # -1 (unlabelled) -> None
            mask = y != None  # noqa: E711 - elementwise comparison
            if self.split != "all":
                test = holdout_mask(chunk.paths, self.holdout)
                mask &= test if self.split == "test" else ~test
            if self.keep is not None:
                mask &= np.isin(y, list(self.keep))
            if not mask.all():
                idx = np.flatnonzero(mask)
                yield Batch(chunk.X[idx], y[idx], [chunk.paths[i] for i in idx])
            else:
                yield Batch(chunk.X, y, chunk.paths)

    def __iter__(self) -> Iterator[Batch]:
        return self.iter_epoch(0)

    def iter_epoch(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        """Batches of one pass; ``epoch`` changes the shuffle; ``skip`` drops leading rows."""
        seed = self.seed + 7919 * epoch
        source = self._raw_chunks(seed)
        if self.shuffle_buffer:
            source = self._shuffled(source, np.random.default_rng(seed + 1))
        for batch in source:
            if skip >= len(batch.X):
                skip -= len(batch.X)
                continue
            if skip:
                batch = Batch(batch.X[skip:], batch.y[skip:], batch.paths[skip:])
                skip = 0
            if len(batch.X):
                yield batch

    def _shuffled(self, source: Iterator[Batch], rng: np.random.Generator) -> Iterator[Batch]:
        buf: list[Batch] = []
        size = 0
        for batch in source:
            buf.append(batch)
            size += len(batch.X)
            if size > self.shuffle_buffer:
                X, y, paths = _concat(buf)
                order = rng.permutation(len(X))
                out, keep = order[: size - self.shuffle_buffer], order[size - self.shuffle_buffer:]
                yield Batch(X[out], y[out], [paths[i] for i in out])
                buf, size = [Batch(X[keep], y[keep], [paths[i] for i in keep])], len(keep)
        if size:
            X, y, paths = _concat(buf)
            order = rng.permutation(len(X))
            yield Batch(X[order], y[order], [paths[i] for i in order])

    def scan(self) -> StoreScan:
        """One validation pass: counts rows per class and refuses NaN / infinite features."""
        counts: dict[str, int] = {}
        rows = unlabelled = bad = heldout = 0
        for store in self.stores:
            for chunk in store.iter_chunks(self.chunk_rows):
                finite = np.isfinite(chunk.X).all(axis=1)
                bad += int((~finite).sum())
                rows += len(chunk.y)
                unlabelled += int((chunk.y < 0).sum())
                if self.holdout:
                    heldout += int((holdout_mask(chunk.paths, self.holdout) & (chunk.y >= 0)).sum())
                for idx, n in zip(*np.unique(chunk.y[chunk.y >= 0], return_counts=True)):
                    name = store.classes[idx]
                    counts[name] = counts.get(name, 0) + int(n)
        if bad:
            raise StoreError(f"{bad} of {rows} rows hold NaN or infinite features in "
                             f"{', '.join(str(p) for p in self.paths)}; re-extract those stores")
        return StoreScan(rows, unlabelled, dict(sorted(counts.items())), heldout)

    def close(self) -> None:
        for store in self.stores:
            store.close()

    def __enter__(self) -> "FeatureStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _concat(batches: list[Batch]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    X = np.concatenate([b.X for b in batches])
    y = np.concatenate([b.y for b in batches])
    paths = [p for b in batches for p in b.paths]
    return X, y, paths

