"""Extraction: plan -> partitions (run by an executor) -> finalize.

- :mod:`.plan`: settings, manifest check, file order, the partitions still missing
- :mod:`.partition`: ``run_partition(job, part)``: decode -> embed -> one shard, atomically
- :mod:`.executors`: who runs the partitions (``LocalExecutor``; others plug in)
- :mod:`.finalize`: merge the shards into ``OUT``, or seal the parts folder as the store
- :mod:`.lock`: one run per output

Rows go to ``OUT.parts/shard-<file_start>.h5``, one per partition of a fixed
number of files, each renamed into place only when complete: an interrupted
run (Ctrl-C, kill -9, full disk, power loss) resumes with the partitions
missing, and the result is identical to an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.backbones import Backbone, BackboneConfig, as_config
from pipeline.errors import OptionError
from pipeline.extraction.executors import Executor, LocalExecutor, RayExecutor, make_executor, progress_bar
from pipeline.extraction.finalize import finalize as _finalize
from pipeline.extraction.lock import output_lock
from pipeline.extraction.partition import PartitionJob, PartitionResult, run_partition, run_partitions
from pipeline.extraction.plan import ExtractionPlan, Partition, file_order, make_plan
from pipeline.images import ImageSource

__all__ = ["extract_features", "ExtractResult", "Executor", "LocalExecutor", "RayExecutor", "make_executor", "PartitionJob", "PartitionResult",
           "Partition", "ExtractionPlan", "make_plan", "run_partition", "run_partitions", "file_order"]


def check_extraction_options(seed: int, batch_size: int, checkpoint_rows: int) -> None:
    """Refuse, before anything is written, what cannot work (a negative seed, an empty batch)."""
    for name, value, low in (("seed", seed, 0), ("batch_size", batch_size, 1), ("checkpoint_rows", checkpoint_rows, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise OptionError(f"{name} must be an integer >= {low}, got {value!r}")


@dataclass
class ExtractResult:
    out: Path
    rows: int = 0
    skipped: int = 0
    files: int = 0
    elapsed_s: float = 0.0
    images_per_s: float = 0.0
    resumed_at: int = 0           # files already done by an earlier run
    already_complete: bool = False
    merged: bool = True
    executor: str = "local"
    backbone: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def extract_features(
    source: ImageSource,
    out: str | Path,
    backbone: Backbone | BackboneConfig,
    *,
    seed: int = 42,
    shuffle: bool = True,
    batch_size: int = 32,
    dtype: str = "float32",
    compression: str | None = None,
    workers: int = 2,
    decode: str = "auto",
    checkpoint_rows: int = 256,
    overwrite: bool = False,
    merge: bool = True,
    progress: bool = True,
    executor: Executor | None = None,
) -> ExtractResult:
    """Embed every image of ``source`` into the store ``out`` (resumable; see the module docstring).

    ``backbone`` is a recipe (:class:`BackboneConfig`) or a built backbone (reused in
    this process). ``workers`` is the number of decoders of the default
    :class:`LocalExecutor`, ``decode`` whether they are ``threads``, ``processes``
    or ``auto`` (:mod:`pipeline.extraction.decoding`). ``merge=False`` leaves ``OUT.parts/`` as the store.
    An executor that is a context manager (:class:`RayExecutor`) is entered for the run.
    """
    out = Path(out)
    check_extraction_options(seed, batch_size, checkpoint_rows)
    config = as_config(backbone)
    executor = executor or LocalExecutor(decode_threads=workers, decode=decode)
    result = ExtractResult(out=out, files=len(source.paths), merged=merge)
    out.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(out), contextlib.ExitStack() as stack:
        if isinstance(executor, contextlib.AbstractContextManager):
            stack.enter_context(executor)
        result.executor = getattr(executor, "description", executor.name)
        result.backbone = info = executor.backbone_info(config)
        plan = make_plan(source, out, info, seed=seed, shuffle=shuffle, batch_size=batch_size, dtype=dtype,
                         checkpoint_rows=checkpoint_rows, overwrite=overwrite, merge=merge)
        if plan.already_complete:
            result.rows, result.skipped = plan.existing["rows"], plan.existing["skipped"]
            result.already_complete = True
            return result
        todo = sum(len(p) for p in plan.missing)
        result.resumed_at = len(source.paths) - todo
        # a batch is never larger than the source: a short last batch is padded to the batch size (stable
        # features), and --batch-size 100000 for 100 images must not embed 99,900 blank ones
        job = PartitionJob(config, source, source.label_indices(), plan.order, plan.parts, plan.attrs,
                           max(1, min(batch_size, len(source.paths))), dtype)
        timings = {"embed_s": 0.0, "decode_wait_s": 0.0, "shard_write_s": 0.0}
        t_start = time.perf_counter()
        with progress_bar(len(source.paths), result.resumed_at, progress) as bar:
            for done in executor.run(job, plan.missing, bar.update):
                timings["embed_s"] += done.embed_s
                timings["decode_wait_s"] += done.decode_wait_s
                timings["shard_write_s"] += done.write_s
        t_final = time.perf_counter()
        final = _finalize(plan, dtype, compression, merge)
        end = time.perf_counter()
    result.rows, result.skipped = final.rows, final.skipped
    result.elapsed_s = end - t_start
    result.images_per_s = todo / result.elapsed_s if result.elapsed_s > 0 else 0.0
    result.timings = {**timings, "partitions_s": t_final - t_start, "merge_s" if merge else "seal_s": end - t_final}
    return result
