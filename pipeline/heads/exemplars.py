"""Exemplar memory for class-incremental learning (iCaRL, Rebuffi et al. 2017).

- :func:`herding_order` is iCaRL's Algorithm 4 as a pure function: the order
  in which samples bring the running exemplar mean closest to the class mean.
  A budget of m exemplars is the first m of that order, so shrinking the
  memory (Algorithm 5) is cutting the order.
- :class:`ClassPools` keeps a bounded reservoir sample of each class while it
  streams (exact when the class fits), the candidates herding chooses from.
- :class:`ExemplarMemory` holds at most ``budget`` exemplars in total,
  ``budget // classes`` per class, with their source paths.
- :class:`ExperienceMemory` is A-GEM's episodic memory: a random sample of
  each experience (task), ``budget // experiences`` rows each, drawn from
  evenly across the experiences.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Callable, Hashable, Sequence

import numpy as np

from pipeline.heads.defaults import DEFAULT_MEMORY, DEFAULT_POOL_SIZE


def l2_normalise(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, np.float64)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


def herding_order(X: np.ndarray, m: int | None = None, target: np.ndarray | None = None) -> np.ndarray:
    """Indices of ``X`` in herding order (iCaRL Algorithm 4), ``m`` of them (default all).

    ``X`` is L2-normalised here; ``target`` is the class mean to approach (the
    mean of the normalised rows by default). Step k picks, among samples not yet
    chosen, the one minimising ``||target - (chosen_sum + x) / k||``.

    >>> X = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    >>> herding_order(X).tolist()[0]    # the sample closest to the mean comes first
    2
    """
    Z = l2_normalise(X)
    n = len(Z)
    m = n if m is None else min(m, n)
    mu = Z.mean(axis=0) if target is None else np.asarray(target, np.float64)
    sq = np.einsum("ij,ij->i", Z, Z)
    chosen_sum = np.zeros(Z.shape[1])
    available = np.ones(n, bool)
    order = np.empty(m, np.int64)
    for k in range(1, m + 1):
        # ||k mu - S - x||^2 = const - 2 x.(k mu - S) + |x|^2
        score = sq - 2.0 * (Z @ (k * mu - chosen_sum))
        score[~available] = np.inf
        i = int(np.argmin(score))
        order[k - 1] = i
        available[i] = False
        chosen_sum += Z[i]
    return order


@dataclass
class _Reservoir:
    X: np.ndarray
    paths: list[str]
    seen: int = 0


class ClassPools:
    """A reservoir sample (Algorithm R) of at most ``size`` rows per class, seeded per class."""

    def __init__(self, size: int = 1000, seed: int = 0):
        self.size, self.seed = size, seed
        self.pools: dict[Hashable, _Reservoir] = {}
        self._rngs: dict[Hashable, np.random.Generator] = {}

    def add(self, X: np.ndarray, y: Sequence[Hashable] | np.ndarray, paths: Sequence[str] | None = None) -> None:
        paths = list(paths) if paths is not None else [""] * len(X)
        labels = np.asarray(y, dtype=object)
        for label in dict.fromkeys(labels.tolist()):
            idx = np.flatnonzero(labels == label)
            pool = self.pools.get(label)
            if pool is None:
                pool = self.pools[label] = _Reservoir(np.empty((self.size, X.shape[1]), np.float32), [])
                self._rngs[label] = np.random.default_rng([self.seed, zlib.crc32(str(label).encode())])
            rng = self._rngs[label]
            for i in idx:
                pool.seen += 1
                if len(pool.paths) < self.size:
                    pool.X[len(pool.paths)] = X[i]
                    pool.paths.append(paths[i])
                else:
                    j = int(rng.integers(0, pool.seen))
                    if j < self.size:
                        pool.X[j] = X[i]
                        pool.paths[j] = paths[i]

    def merge(self, other: "ClassPools") -> None:
        """Fold in pools filled from other rows: per class, a sample of both, each source weighted by rows seen."""
        for label, b in other.pools.items():
            a = self.pools.get(label)
            if a is None:
                self.pools[label] = _Reservoir(b.X.copy(), list(b.paths), b.seen)
                self._rngs[label] = np.random.default_rng([self.seed, zlib.crc32(str(label).encode()), b.seen])
                continue
            X = np.vstack([a.X[: len(a.paths)], b.X[: len(b.paths)]])
            paths = a.paths + b.paths
            keep = np.arange(len(paths))
            if len(paths) > self.size:
                weight = np.r_[np.full(len(a.paths), a.seen / max(len(a.paths), 1)),
                               np.full(len(b.paths), b.seen / max(len(b.paths), 1))]
                rng = np.random.default_rng([self.seed, zlib.crc32(str(label).encode()), a.seen, b.seen])
                keep = np.sort(rng.choice(len(paths), self.size, replace=False, p=weight / weight.sum()))
            pool = _Reservoir(np.empty((self.size, X.shape[1]), np.float32), [paths[i] for i in keep], a.seen + b.seen)
            pool.X[: len(keep)] = X[keep]
            self.pools[label] = pool

    def take(self) -> dict[Hashable, tuple[np.ndarray, list[str]]]:
        """Hand over the pools (trimmed) and start empty."""
        out = {c: (p.X[: len(p.paths)], p.paths) for c, p in self.pools.items()}
        self.pools, self._rngs = {}, {}
        return out

    def __len__(self) -> int:
        return sum(len(p.paths) for p in self.pools.values())


@dataclass
class ExemplarSet:
    X: np.ndarray          # exemplar features (float32), herding order
    paths: list[str]

    state_schema = {"X": "array[*,D]"}  # pipeline.heads.state_check

    def _check_state(self, dims: dict[str, int]) -> None:
        if not isinstance(self.paths, list) or len(self.paths) != len(self.X):
            raise ValueError(f"{len(self.X)} exemplars but {len(self.paths) if isinstance(self.paths, list) else 'no'} "
                             "paths")


@dataclass
class ExemplarMemory:
    """At most ``budget`` exemplars in total; ``budget // n_classes`` per class."""

    budget: int = DEFAULT_MEMORY
    sets: dict[Hashable, ExemplarSet] = field(default_factory=dict)

    state_schema = {"budget": "count"}  # pipeline.heads.state_check

    def _check_state(self, dims: dict[str, int]) -> None:
        from pipeline.heads.state_check import check_object

        if not isinstance(self.sets, dict) or not all(isinstance(s, ExemplarSet) for s in self.sets.values()):
            raise ValueError("sets is not a mapping of class -> ExemplarSet")
        for label, exemplars in self.sets.items():
            check_object(exemplars, dims, f"exemplars of {label!r}", set())

    @property
    def per_class(self) -> int:
        return self.budget // max(1, len(self.sets))

    @property
    def size(self) -> int:
        return sum(len(s.paths) for s in self.sets.values())

    def update(self, candidates: dict[Hashable, tuple[np.ndarray, list[str]]],
               targets: dict[Hashable, np.ndarray] | None = None,
               embed: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        """Select exemplars for the classes in ``candidates`` and shrink every set to the new share.

        A class that already has exemplars chooses again among its old exemplars
        and its new candidates. Herding runs on ``embed(X)`` when given (iCaRL's
        learned embedding); the stored exemplars stay the raw rows.
        """
        for label in candidates:
            self.sets.setdefault(label, ExemplarSet(np.empty((0, 0), np.float32), []))
        m = self.per_class
        for label, (X, paths) in candidates.items():
            old = self.sets[label]
            if len(old.paths):
                X, paths = np.vstack([old.X, X]), old.paths + list(paths)
            if len(X) == 0:
                continue
            order = herding_order(X if embed is None else embed(X), m,
                                  None if targets is None else targets.get(label))
            self.sets[label] = ExemplarSet(np.asarray(X, np.float32)[order], [paths[i] for i in order])
        for label, s in self.sets.items():
            if len(s.paths) > m:  # Algorithm 5: keep the first m of the herding order
                self.sets[label] = ExemplarSet(s.X[:m], s.paths[:m])

    def sample(self, n: int, rng: np.random.Generator,
               pass_rest: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``n`` exemplars drawn in shuffled passes over the memory: each once before any twice.

        As Avalanche's ``ReplayDataLoader``, which cycles through the memory an
        epoch at a time; drawing with replacement instead left some exemplars
        out of a task's steps and repeated others (ER 0.7-1 point lower on
        Imagenette-mini, docs/continual-learning.md). ``pass_rest`` (a list,
        updated in place) carries the rest of the current pass to the next
        call, so successive calls continue one sequence of passes.

        >>> mem = ExemplarMemory(6)
        >>> mem.update({c: (np.full((3, 1), i, np.float32), [""] * 3) for i, c in enumerate("ab")})
        >>> rng, rest = np.random.default_rng(0), []
        >>> drawn = [mem.sample(2, rng, rest)[1] for _ in range(3)]
        >>> sorted(np.concatenate(drawn).tolist())   # six calls' worth: the memory once
        ['a', 'a', 'a', 'b', 'b', 'b']
        """
        labels = [c for c, s in self.sets.items() for _ in range(len(s.paths))]
        if not labels:
            return np.empty((0, 0), np.float32), np.empty(0, dtype=object)
        X = np.vstack([s.X for s in self.sets.values() if len(s.paths)])
        queue = [r for r in (pass_rest or []) if len(r)]
        while sum(len(r) for r in queue) < n:
            queue.append(rng.permutation(len(labels)))
        order = np.concatenate(queue) if queue else np.empty(0, np.intp)
        idx = order[:n]
        if pass_rest is not None:
            pass_rest[:] = [order[n:]]
        return X[idx], np.array(labels, dtype=object)[idx]


@dataclass
class ExperienceMemory:
    """A-GEM's memory, as Avalanche's ``AGEMPlugin``: after each experience a random sample of its rows is
    kept, the ``budget`` split evenly across the experiences seen (older samples are cut at random to
    the new share), and every draw takes the same number of rows from each experience.

    >>> mem = ExperienceMemory(4)
    >>> rng = np.random.default_rng(0)
    >>> mem.update({"a": (np.zeros((5, 2), np.float32), [""] * 5)}, rng)
    >>> mem.update({"b": (np.ones((5, 2), np.float32), [""] * 5)}, rng)
    >>> [len(x) for x in mem.X], sorted(mem.sample(4, rng)[1].tolist())
    ([2, 2], ['a', 'a', 'b', 'b'])
    """

    budget: int = 2000
    X: list[np.ndarray] = field(default_factory=list)        # per experience, float32 rows
    labels: list[list[Hashable]] = field(default_factory=list)
    paths: list[list[str]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(len(x) for x in self.X)

    def update(self, candidates: dict[Hashable, tuple[np.ndarray, list[str]]], rng: np.random.Generator) -> None:
        """Keep a random sample of one experience's rows (``candidates``: per class, rows and paths)."""
        rows = [(X, [c] * len(X), list(p)) for c, (X, p) in candidates.items() if len(X)]
        if not rows:
            return
        self.X.append(np.vstack([r[0] for r in rows]).astype(np.float32))
        self.labels.append([c for r in rows for c in r[1]])
        self.paths.append([q for r in rows for q in r[2]])
        share = self.budget // len(self.X)
        for i, X in enumerate(self.X):
            if len(X) > share:
                keep = np.sort(rng.choice(len(X), share, replace=False))
                self.X[i], self.labels[i] = X[keep], [self.labels[i][k] for k in keep]
                self.paths[i] = [self.paths[i][k] for k in keep]

    def sample(self, n: int, rng: np.random.Generator, block: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``n`` rows (with replacement), each ``block`` of them (default: all ``n``) drawn evenly across the
        experiences (the remainder from experiences picked at random); rows and their labels."""
        kept = [i for i, X in enumerate(self.X) if len(X)]
        if not kept:
            return np.empty((0, 0), np.float32), np.empty(0, dtype=object)
        block = block or n
        X_out: list[np.ndarray] = []
        y_out: list[Hashable] = []
        for start in range(0, n, block):
            size = min(block, n - start)
            counts = np.full(len(kept), size // len(kept))
            counts[rng.choice(len(kept), size % len(kept), replace=False)] += 1
            for i, k in zip(kept, counts):
                idx = rng.integers(0, len(self.X[i]), k)
                X_out.append(self.X[i][idx])
                y_out.extend(self.labels[i][j] for j in idx)
        return np.vstack(X_out), np.array(y_out, dtype=object)


class ExperienceReplay:
    """Exemplar replay for any head: mix remembered rows of earlier tasks into each chunk.

    Rows of the current task fill per-class pools; at the end of a task herding
    moves them into the shared :class:`ExemplarMemory`. ``mix`` returns the
    chunk plus as many rows drawn from memory, shuffled together, and where
    the chunk's own rows went (so progressive metrics count only new rows).
    """

    state_schema = {"memory": "object"}  # pipeline.heads.state_check (with the model's feature count D)

    def __init__(self, budget: int = DEFAULT_MEMORY, pool_size: int = DEFAULT_POOL_SIZE, seed: int = 0):
        self.memory = ExemplarMemory(budget)
        self.pools = ClassPools(pool_size, seed)
        self.seed = seed

    def mix(self, X: np.ndarray, y: np.ndarray, paths: Sequence[str] | None,
            key: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self.pools.add(X, y, paths)
        if not self.memory.size:
            return X, y, np.arange(len(X))
        rng = np.random.default_rng([self.seed, *key])
        Xr, yr = self.memory.sample(len(X), rng)
        Xm = np.vstack([X, Xr.astype(X.dtype)])
        ym = np.concatenate([np.asarray(y, dtype=object), yr])
        perm = rng.permutation(len(Xm))
        where = np.empty(len(Xm), np.int64)
        where[perm] = np.arange(len(Xm))
        return Xm[perm], ym[perm], where[: len(X)]

    def end_task(self) -> None:
        if len(self.pools):
            self.memory.update(self.pools.take())
