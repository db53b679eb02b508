"""What every feature store reads as: :class:`Rows` of a store and the :class:`Store` protocol.

Both store formats (:mod:`pipeline.store`, one HDF5 file; :mod:`pipeline.store_parts`, a folder of
shards) implement :class:`Store`; :func:`pipeline.store.open_store` chooses between them. A leaf module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np


@dataclass
class Rows:
    """Consecutive rows of a store: features, label indices, paths, first row index."""

    X: np.ndarray
    y: np.ndarray
    paths: list[str]
    start: int


class Store(Protocol):
    """A validated, read-only feature store (a file or a parts folder)."""

    path: Path
    meta: dict[str, Any]
    n_rows: int
    feature_dim: int
    classes: list[str]
    complete: bool

    @property
    def identity(self) -> dict[str, Any]: ...

    def read(self, start: int, stop: int) -> Rows: ...

    def iter_chunks(self, chunk_rows: int = 4096, start: int = 0, stop: int | None = None) -> Iterator[Rows]: ...

    def labels(self, start: int = 0, stop: int | None = None) -> np.ndarray: ...

    def paths(self, start: int = 0, stop: int | None = None) -> list[str]: ...

    def skipped(self, limit: int | None = None) -> list[tuple[str, str]]: ...

    def close(self) -> None: ...

    def __enter__(self) -> "Store": ...

    def __exit__(self, *exc: object) -> None: ...
