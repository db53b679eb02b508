"""Seeded random projections generated a block of columns at a time (RanPAC, KLDA's Fourier features).

A projection ``W`` of shape ``(d, M)`` is never stored in a model: column block
``j`` (``BLOCK`` columns) is drawn from ``numpy.random.default_rng([seed, j])``,
so any block can be regenerated alone, in any order, on any worker, and the
model file keeps only the seed. :func:`project` maps a chunk of rows block by
block, so the memory it needs beyond its output is one ``(d, BLOCK)`` block;
a head may keep the assembled matrix in memory (:func:`projection`) when it is
small, as the results are the same.

>>> import numpy as np
>>> X = np.ones((2, 3), np.float32)
>>> np.allclose(project(X, 5000, seed=1), np.maximum(X @ projection(3, 5000, seed=1), 0), rtol=1e-6)
True
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from pipeline.errors import HeadError
from pipeline.heads.registry import Option

BLOCK = 1024  # columns per generated block
KEEP_PROJECTION_BYTES = 256 * 2**20  # a head keeps the assembled projection in memory up to this size


def features_option(default: int | None, help: str) -> Option:
    """The ``random_features`` option (``--random-features M``) of a head with a seeded projection."""
    return Option("random_features", int, default, help, low=1, high=1_000_000)


SEED_OPTION = Option("seed", int, 0, "seed of the random features", low=0, high=2**32 - 1, from_run=True)


class SeededProjection:
    """Mixin for heads that map rows through a projection generated from ``(random_features, seed)``.

    The projection is never saved (``__getstate__`` drops it): it is regenerated
    from the seed, and kept assembled in memory while it is at most
    ``KEEP_PROJECTION_BYTES`` (the features are the same either way).
    """

    random_features: int | None
    seed: int
    projection_kind = "gaussian"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_matrix", None)  # regenerated from the seed
        return state

    def _kept_projection(self, d: int) -> tuple[np.ndarray, np.ndarray | None] | None:
        """The assembled ``(matrix, phases or None)`` for ``d`` inputs when small enough to keep, else None."""
        m = self.random_features
        if not m or 4 * d * m > KEEP_PROJECTION_BYTES:
            return None
        kept = self.__dict__.get("_matrix")
        if kept is None:
            fourier = self.projection_kind == "fourier"
            kept = self.__dict__["_matrix"] = (projection(d, m, self.seed, self.projection_kind),
                                               phases(m, d, self.seed) if fourier else None)
        return kept

    def _project(self, X: np.ndarray, scale: float = 1.0, dtype: type = np.float32) -> np.ndarray:
        """The random features of rows ``X`` (:func:`project`)."""
        if not self.random_features:
            raise HeadError("no random features configured")
        kept = self._kept_projection(np.shape(X)[1])
        matrix, offsets = kept if kept is not None else (None, None)
        return project(X, self.random_features, self.seed, self.projection_kind, scale=scale, matrix=matrix,
                       offsets=offsets, dtype=dtype)


def _block(d: int, j: int, width: int, seed: int, kind: str) -> tuple[np.ndarray, np.ndarray | None]:
    rng = np.random.default_rng([seed, j])
    W = rng.standard_normal((d, width), dtype=np.float32)
    b = rng.uniform(0.0, 2 * np.pi, width).astype(np.float32) if kind == "fourier" else None
    return W, b


def projection(d: int, m: int, seed: int, kind: str = "gaussian") -> np.ndarray:
    """The whole ``(d, m)`` float32 matrix (``kind="fourier"``: the weights, without the phases)."""
    return np.hstack([_block(d, j, min(BLOCK, m - s), seed, kind)[0] for j, s in enumerate(range(0, m, BLOCK))])


def phases(m: int, d: int, seed: int) -> np.ndarray:
    """The ``(m,)`` random phases of a Fourier projection of ``d`` inputs."""
    parts = [_block(d, j, min(BLOCK, m - s), seed, "fourier")[1] for j, s in enumerate(range(0, m, BLOCK))]
    return np.concatenate([p for p in parts if p is not None])


def project(X: np.ndarray, m: int, seed: int, kind: str = "gaussian", scale: float = 1.0,
            matrix: np.ndarray | None = None, offsets: np.ndarray | None = None,
            dtype: type = np.float32) -> np.ndarray:
    """``(n, m)`` features of the rows ``X``, computed in ``dtype`` (the projection itself is float32).

    - ``kind="gaussian"``: ``ReLU(X W)`` (RanPAC);
    - ``kind="fourier"``: ``sqrt(2/m) cos(scale X W + b)`` (random Fourier features of
      the RBF kernel ``exp(-scale^2 |x - x'|^2 / 2)``).

    ``matrix`` (and ``offsets`` for Fourier) are the assembled projection when the
    caller keeps it; otherwise each block is generated from the seed.
    """
    if kind == "fourier" and matrix is not None and offsets is None:
        raise ValueError("a Fourier projection needs its offsets with its matrix")
    X = np.asarray(X, dtype)
    out: np.ndarray = np.empty((len(X), m), dtype)
    for j, s in enumerate(range(0, m, BLOCK)):
        width = min(BLOCK, m - s)
        if matrix is not None:
            W, b = matrix[:, s:s + width], None if offsets is None else offsets[s:s + width]
        else:
            W, b = _block(X.shape[1], j, width, seed, kind)
        block = out[:, s:s + width]
        np.matmul(X, W.astype(dtype, copy=False), out=block)
        if kind == "gaussian":
            np.maximum(block, 0.0, out=block)
        elif b is not None:
            if scale != 1.0:
                block *= scale
            block += b
            np.cos(block, out=block)
            block *= np.sqrt(2.0 / m)
    return out


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``), or None if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(nbytes: int, what: str, hint: str = "") -> None:
    """A one-line HeadError, before allocating, when ``nbytes`` cannot fit in the available memory."""
    free = available_memory()
    if free is not None and nbytes > free:
        raise HeadError(f"{what} needs {nbytes / 2**30:.1f} GiB of memory but {free / 2**30:.1f} GiB are available"
                        + (f"; {hint}" if hint else ""))
