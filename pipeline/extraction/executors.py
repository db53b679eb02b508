"""Executors: who runs the missing partitions. The driver only plans and finalizes.

An executor is anything with the two methods of :class:`Executor`. It may run
partitions anywhere and in any order, as long as each one is run by
:func:`pipeline.extraction.partition.run_partition` (or ``run_partitions``)
with the job it is given, so shards are identical whoever writes them.

A distributed executor (Ray, in its own module: the rest of the package never
imports Ray) would, for example::

    class RayExecutor:
        def backbone_info(self, config):
            return ray.get(worker.info.remote(config))       # built on a worker
        def run(self, job, parts, on_images):
            job_ref = ray.put(job)                           # shipped once
            pool = ActorPool(actors)                         # each: backbone_for(job.backbone) once
            for result in pool.map_unordered(lambda a, p: a.run.remote(job_ref, p), parts):
                on_images(len(result.part))
                yield result
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Iterator, Protocol, Sequence

from tqdm import tqdm

from pipeline.backbones import BackboneConfig, backbone_for
from pipeline.extraction.partition import PartitionJob, PartitionResult, run_partitions
from pipeline.extraction.plan import Partition

OnImages = Callable[[int], None]


class Executor(Protocol):
    """Runs partitions of an extraction; see the module docstring."""

    name: str

    def backbone_info(self, config: BackboneConfig) -> dict[str, Any]:
        """The ``Backbone.info`` of ``config`` as workers will build it (identity, dim, device)."""
        ...

    def run(self, job: PartitionJob, parts: Sequence[Partition], on_images: OnImages) -> Iterator[PartitionResult]:
        """Run every partition of ``parts`` (each once, in any order); yield each result once its
        shard is on disk; call ``on_images(n)`` as files are done. Raise the first failure
        (a :class:`pipeline.errors.PipelineError` as it is)."""
        ...


class LocalExecutor:
    """One process: decode threads ahead of the model, partitions in order, shard writes behind it."""

    name = "local"

    def __init__(self, decode_threads: int = 2):
        self.decode_threads = decode_threads

    def backbone_info(self, config: BackboneConfig) -> dict[str, Any]:
        return backbone_for(config).info

    def run(self, job: PartitionJob, parts: Sequence[Partition], on_images: OnImages) -> Iterator[PartitionResult]:
        yield from run_partitions(job, parts, decode_threads=self.decode_threads, on_images=on_images)


def progress_bar(total: int, done: int, enabled: bool) -> tqdm:
    """The driver's bar: images, images/s and ETA."""
    return tqdm(total=total, initial=done, unit="img", desc="extract", disable=not enabled, file=sys.stderr,
                smoothing=0.1)
