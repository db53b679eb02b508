"""Executors: who runs the missing partitions. The driver only plans and finalizes.

An executor is anything with the two methods of :class:`Executor`. It may run
partitions anywhere and in any order, as long as each one is run by
:func:`pipeline.extraction.partition.run_partition` (or ``run_partitions``)
with the job it is given, so shards are identical whoever writes them.

:class:`RayExecutor` runs them on a Ray cluster through
:mod:`pipeline.ray_executor` (the one module that imports Ray): a pool of
long-lived actors, each building the backbone once and running whole
partitions with its own decode threads ahead of the model.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Callable, Iterator, Protocol, Sequence

from tqdm import tqdm

from pipeline.backbones import BackboneConfig, backbone_for
from pipeline.errors import ExecutorError
from pipeline.extraction.decoding import uses_processes
from pipeline.extraction.partition import PartitionJob, PartitionResult, run_partition, run_partitions
from pipeline.extraction.plan import Partition
from pipeline.workers import available_cpus

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
    """One process: decoders ahead of the model, partitions in order, shard writes behind it.

    ``decode``: ``threads``, ``processes`` or ``auto`` (processes from
    :data:`~pipeline.extraction.decoding.PROCESS_DECODE_MIN` decoders on).
    ``decode_threads`` is capped by the cores this process may use, as ``--workers`` is (each decode
    process holds a copy of the listing; decoders beyond the cores only contend).

    >>> from pipeline.workers import available_cpus
    >>> LocalExecutor(decode_threads=1000).decode_threads == available_cpus()
    True
    """

    name = "local"

    def __init__(self, decode_threads: int = 2, decode: str = "auto"):
        self.decode_threads = decode_threads = max(1, min(int(decode_threads), available_cpus()))
        self.decode_processes = uses_processes(decode, decode_threads)
        self.description = f"local, {decode_threads} decode {'processes' if self.decode_processes else 'threads'}"

    def backbone_info(self, config: BackboneConfig) -> dict[str, Any]:
        return backbone_for(config).info

    def run(self, job: PartitionJob, parts: Sequence[Partition], on_images: OnImages) -> Iterator[PartitionResult]:
        yield from run_partitions(job, parts, decode_threads=self.decode_threads,
                                  decode_processes=self.decode_processes, on_images=on_images)


class PartitionWorker:
    """The body of one Ray actor: the backbone is built once per actor, on its first call."""

    def __init__(self, decode_threads: int, gpu: bool):
        self.decode_threads = decode_threads
        if gpu:  # before any model: take GPU memory as needed
            from pipeline.keras_runtime import allow_memory_growth

            allow_memory_growth()

    def info(self, config: BackboneConfig) -> dict[str, Any]:
        return backbone_for(config).info

    def run(self, job: PartitionJob, part: Partition) -> PartitionResult:
        return run_partition(job, part, decode_threads=self.decode_threads,
                             decode_processes=uses_processes("auto", self.decode_threads))


class RayExecutor:
    """Partitions on a Ray cluster (``RAY_ADDRESS``, else a local Ray); use it as a context manager.

    ``workers`` actors (default: one per GPU, else one per two CPUs), each with
    one GPU when the cluster has them and an equal share of the CPUs as decode
    threads. Actors rather than tasks: a model is built once per worker, not
    once per partition. A partition whose actor dies is redone on a fresh one;
    shards are renamed into place whole, so a half-run partition leaves nothing.
    """

    name = "ray"

    def __init__(self, workers: int | None = None, address: str | None = None, num_cpus: int | None = None):
        self.workers, self.address, self.num_cpus = workers, address, num_cpus
        self.pool: Any = None
        self.description = "ray"
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "RayExecutor":
        import pipeline.ray_executor as ray_executor

        with self._stack as stack:
            resources = stack.enter_context(ray_executor.ray_session(self.address, self.num_cpus))
            n, cpus, gpus = ray_executor.actor_shape(resources, self.workers)
            threads = max(1, int(cpus))
            self.pool = stack.enter_context(ray_executor.WorkerPool(
                PartitionWorker, (threads, gpus > 0), size=n, num_cpus=cpus, num_gpus=gpus))
            self.description = (f"ray, {n} worker{'s' * (n > 1)} x ({cpus:g} CPU, {threads} decode threads"
                                f"{f', {gpus:g} GPU' if gpus else ''})")
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        self.pool = None

    def backbone_info(self, config: BackboneConfig) -> dict[str, Any]:
        if config.name.startswith("live:"):
            raise ExecutorError("a backbone built in this process cannot be sent to Ray workers; pass a "
                                "BackboneConfig (a registry name and weights, or a model path)")
        # every actor builds its model now, in parallel, before the timed run; they must agree
        infos = self._pool().call_all("info", config)
        if any(info != infos[0] for info in infos[1:]):
            raise ExecutorError(f"Ray workers built different backbones: {infos[0]} and "
                                f"{next(i for i in infos if i != infos[0])} (mixed node types or packages?)")
        return infos[0]

    def run(self, job: PartitionJob, parts: Sequence[Partition], on_images: OnImages) -> Iterator[PartitionResult]:
        pool = self._pool()
        job_ref = pool.put(job)  # shipped once, read by every actor
        for _, result in pool.map_unordered("run", [(job_ref, part) for part in parts]):
            on_images(len(result.part))
            yield result

    def _pool(self) -> Any:
        if self.pool is None:
            raise ExecutorError("RayExecutor is used as a context manager (`with RayExecutor() as ex:`)")
        return self.pool


def make_executor(name: str, workers: int | None = None, decode: str = "auto") -> Executor:
    """``local`` (``workers`` decoders, default 2, as ``decode`` says) or ``ray`` (``workers`` actors)."""
    if name == "ray":
        return RayExecutor(workers)
    if name == "local":
        return LocalExecutor(decode_threads=workers or 2, decode=decode)
    raise ExecutorError(f"unknown executor {name!r}: expected local or ray")


def progress_bar(total: int, done: int, enabled: bool) -> tqdm:
    """The driver's bar: images, images/s and ETA."""
    return tqdm(total=total, initial=done, unit="img", desc="extract", disable=not enabled, file=sys.stderr,
                smoothing=0.1)
