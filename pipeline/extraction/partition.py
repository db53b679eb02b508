"""One partition: decode (threads or processes, ahead of the model) -> embed -> write one shard atomically.

The worker builds its backbone from the picklable :class:`BackboneConfig` in
the job (once per process, :func:`backbone_for`), never receives a live model,
so any executor can ship a :class:`PartitionJob` and a :class:`Partition` to
another process or machine. :func:`~pipeline.extraction.decoding.read_batches` and :func:`embed_decoded`
are the reader -> mapper path that ``predict`` uses too.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from pipeline.backbones import Backbone, BackboneConfig, backbone_for
from pipeline.errors import StoreError, write_failure
from pipeline.extraction.decoding import decoded_batches
from pipeline.extraction.plan import Partition
from pipeline.images import ImageSource
from pipeline.store import WRITE_ERRORS, StoreWriter, atomic_path

@dataclass(frozen=True)
class PartitionJob:
    """Everything a worker needs besides the partition; picklable (ship it once per worker)."""

    backbone: BackboneConfig
    source: ImageSource       # the sorted listing (paths in record form, known problems)
    labels: np.ndarray        # class index per listed file, -1 = unlabelled
    order: np.ndarray         # processing order: position -> listing index
    parts: Path               # the shared folder the shards go to
    attrs: dict[str, Any]     # store attributes of every shard
    batch_size: int = 32
    dtype: str = "float32"


@dataclass
class PartitionResult:
    part: Partition
    rows: int = 0
    skipped: int = 0
    embed_s: float = 0.0
    decode_wait_s: float = 0.0
    write_s: float = 0.0
    device: str = ""


@dataclass
class _Rows:
    part: Partition
    features: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def embed_decoded(backbone: Backbone, decoded: Sequence[np.ndarray | str],
                  batch_size: int) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
    """Features of the decoded images, their positions in ``decoded``, and (position, reason) of the rest."""
    good = [i for i, a in enumerate(decoded) if not isinstance(a, str)]
    skipped = [(i, a) for i, a in enumerate(decoded) if isinstance(a, str)]
    if good:
        feats = backbone.embed(np.stack([decoded[i] for i in good]), batch_size)
    else:
        feats = np.zeros((0, backbone.feature_dim), np.float32)
    return feats, good, skipped


def write_shard(job: PartitionJob, rows: _Rows) -> float:
    """Write one partition's shard (temp file, fsync, rename); returns the seconds it took."""
    t0 = time.perf_counter()
    final = job.parts / rows.part.name
    attrs = {**job.attrs, "file_start": rows.part.start, "file_stop": rows.part.stop}
    try:
        with atomic_path(final) as tmp, StoreWriter(tmp, attrs, int(job.attrs["feature_dim"]), job.dtype) as w:
            if rows.features:
                w.append(np.concatenate(rows.features), np.concatenate(rows.labels), rows.paths)
            w.add_skipped([p for p, _ in rows.skipped], [r for _, r in rows.skipped])
            w.close(complete=False)
    except WRITE_ERRORS as exc:
        raise StoreError(f"writing {final} failed ({write_failure(exc)}); finished shards are kept: fix the cause (free disk "
                         "space?) and rerun the same command to continue") from None
    return time.perf_counter() - t0


def _batches(job: PartitionJob, parts: Sequence[Partition]) -> list[tuple[Partition, int, int]]:
    return [(part, b0, min(b0 + job.batch_size, part.stop))
            for part in parts for b0 in range(part.start, part.stop, job.batch_size)]


def run_partitions(job: PartitionJob, parts: Sequence[Partition], *, decode_threads: int = 2,
                   decode_processes: bool = False,
                   on_images: Callable[[int], None] | None = None) -> Iterator[PartitionResult]:
    """Run ``parts`` in order in this process; decoding runs ahead across partition boundaries.

    ``decode_threads`` decoders (processes with ``decode_processes``, see
    :mod:`pipeline.extraction.decoding`) run ahead of the model.

    Yields each partition's result once its shard is on disk. Shard writes run
    in one writer thread (one at a time) behind the model; a failed write ends
    the run with its own message at once.
    """
    backbone = backbone_for(job.backbone)
    batches = _batches(job, parts)
    items = (job.order[b0:b1].tolist() for _, b0, b1 in batches)
    paths, size = job.source.paths, backbone.input_size
    rows: _Rows | None = None
    result: PartitionResult | None = None
    writing: tuple[Future, PartitionResult] | None = None

    def collect() -> PartitionResult:
        nonlocal writing
        assert writing is not None
        future, done = writing
        writing = None
        done.write_s = future.result()  # raises the writer's error
        return done

    with decoded_batches(job.source, items, size, decode_threads, decode_processes) as reader, \
            ThreadPoolExecutor(1) as writer:
        for part, b0, b1 in batches:
            if rows is None or rows.part != part:
                rows, result = _Rows(part), PartitionResult(part, device=str(backbone.info.get("device", "")))
            assert result is not None
            t0 = time.perf_counter()
            decoded = next(reader)
            t1 = time.perf_counter()
            feats, good, skipped = embed_decoded(backbone, decoded, job.batch_size)
            result.decode_wait_s += t1 - t0
            result.embed_s += time.perf_counter() - t1
            idx = job.order[b0:b1]
            rows.features.append(feats)
            rows.labels.append(job.labels[idx[good]])
            rows.paths.extend(paths[idx[k]] for k in good)
            rows.skipped.extend((paths[idx[k]], why) for k, why in skipped)
            result.rows += len(good)
            result.skipped += len(skipped)
            if on_images is not None:
                on_images(b1 - b0)
            if writing is not None and (writing[0].done() or b1 == part.stop):
                yield collect()
            if b1 == part.stop:
                writing = (writer.submit(write_shard, job, rows), result)
        if writing is not None:
            yield collect()


def run_partition(job: PartitionJob, part: Partition, *, decode_threads: int = 2,
                  decode_processes: bool = False) -> PartitionResult:
    """Run one partition start to finish in this process: the unit a distributed executor maps."""
    results = list(run_partitions(job, [part], decode_threads=decode_threads, decode_processes=decode_processes))
    return results[0]
