"""The plan of an extraction: settings, file order, partitions, and which are still missing.

Partitions are fixed by file position: ``[start, stop)`` ranges of the
(shuffled) file order, a fixed number of files each, a multiple of the batch
size. So any executor, any worker count and any resume write the same shards,
and the missing list is read from the shards on disk (workers finish out of
order: no contiguous prefix is assumed).
"""

from __future__ import annotations

import json
import math
import shutil
import uuid
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import StoreError
from pipeline.fsutil import parse_json
from pipeline.images import ImageSource, listing_digest
from pipeline.store import WRITE_ERRORS, FeatureStore
from pipeline.identity import extraction_identity
from pipeline.store_parts import SHARD_GLOB, parts_folder, read_manifest, shard_name, write_manifest


@dataclass(frozen=True)
class Partition:
    """Files ``order[start:stop]``, written to one shard."""

    start: int
    stop: int

    @property
    def name(self) -> str:
        return shard_name(self.start)

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass
class ExtractionPlan:
    out: Path
    parts: Path
    settings: dict[str, Any]
    attrs: dict[str, Any]
    order: np.ndarray
    partitions: list[Partition]
    missing: list[Partition]
    run_id: str = ""
    already_complete: bool = False
    existing: dict[str, Any] = field(default_factory=dict)  # rows / skipped of a complete store


def package_versions() -> dict[str, str]:
    versions = {}
    for name in ("incremental-pipeline", "keras", "tensorflow", "tensorflow-cpu", "h5py", "numpy", "pillow"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def file_order(n: int, seed: int, shuffle: bool) -> np.ndarray:
    """The order in which the sorted file list is processed."""
    return np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)


def extraction_settings(source: ImageSource, backbone_info: dict[str, Any], *, seed: int, shuffle: bool,
                        batch_size: int, dtype: str) -> dict[str, Any]:
    """Everything that must match for a partial run to be continued."""
    # The compute precision changes features by rounding: a partial run continues only at the same one.
    precision = {"precision": backbone_info.get("precision", "float32")}
    # The decoder changes pixels slightly: named only when not Pillow, so runs and stores made before the
    # choice existed (all Pillow) still match and resume.
    decoder = {"decoder": source.decoder} if source.decoder != "pil" else {}
    return {**extraction_identity(backbone_info), **precision, **decoder, "source_root": str(source.root.resolve()),
            "layout": source.layout, "seed": seed, "shuffle": shuffle, "batch_size": batch_size, "dtype": dtype,
            "files": len(source.paths), "listing_sha256": listing_digest(source)}


def describe_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(set(old) | set(new))
    return "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k))


def partition_files(checkpoint_rows: int, batch_size: int) -> int:
    """Files per partition: ``checkpoint_rows`` rounded up to whole batches."""
    return max(1, math.ceil(checkpoint_rows / batch_size)) * batch_size


def make_partitions(n: int, size: int) -> list[Partition]:
    return [Partition(s, min(s + size, n)) for s in range(0, n, size)]


def missing_partitions(parts: Path, partitions: list[Partition]) -> list[Partition]:
    """Partitions whose shard is not on disk (shards appear only complete: renamed into place)."""
    present = {p.name for p in parts.glob(SHARD_GLOB)}
    return [p for p in partitions if p.name not in present]


def discard_parts(parts: Path) -> None:
    """Remove a parts folder: renamed away first, so a kill never leaves half of one with its manifest."""
    trash = parts.with_name(parts.name + ".trash")
    if parts.exists():
        shutil.rmtree(trash, ignore_errors=True)
        parts.replace(trash)
    shutil.rmtree(trash, ignore_errors=True)


def _check_existing(out: Path, settings: dict[str, Any], manifest: dict[str, Any] | None,
                    overwrite: bool) -> tuple[dict[str, Any] | None, bool]:
    """Look at a store already at ``out``: (its rows/skipped if it is this run, done; parts leftover?)."""
    try:
        existing = FeatureStore(out)
    except StoreError as exc:
        if overwrite:
            return None, False
        raise StoreError(f"{out} exists and is not a usable store ({exc}); pass --overwrite to replace it") from None
    with existing:
        try:
            old = parse_json(existing.meta.get("extract_settings", "{}") or "{}", f"{out}: extract_settings")
        except ValueError as exc:
            raise StoreError(f"{out}: its extract_settings are not readable JSON ({exc}); pass --overwrite to "
                             "replace it") from None
        run = existing.meta.get("extraction_run", "")
        leftover = bool(existing.complete and manifest is not None and run and run == manifest.get("run_id"))
        if overwrite:
            return None, leftover
        if not existing.complete or old != settings:
            why = ("is incomplete" if not existing.complete
                   else f"was made with other settings ({describe_difference(old, settings)})")
            raise StoreError(f"{out} {why}; pass --overwrite to replace it")
        return {"rows": existing.n_rows, "skipped": int(existing.meta.get("skipped_count", 0))}, leftover


def make_plan(source: ImageSource, out: Path, backbone_info: dict[str, Any], *, seed: int = 42,
              shuffle: bool = True, batch_size: int = 32, dtype: str = "float32", checkpoint_rows: int = 256,
              overwrite: bool = False, merge: bool = True) -> ExtractionPlan:
    """Check what is on disk for ``out`` and plan the partitions still to run.

    A complete store is not redone (unless ``overwrite``: the new run is
    written beside it and replaces it at the end); a partial run is continued
    when made with the same settings, refused otherwise (unless ``overwrite``).
    """
    parts = parts_folder(out)
    settings = extraction_settings(source, backbone_info, seed=seed, shuffle=shuffle, batch_size=batch_size,
                                   dtype=dtype)
    try:
        shutil.rmtree(parts.with_name(parts.name + ".trash"), ignore_errors=True)  # a kill during a clean-up
        manifest = read_manifest(parts) if parts.is_dir() else None
        done = None
        if out.is_file():
            done, leftover = _check_existing(out, settings, manifest, overwrite)
            if leftover:  # killed after the store was renamed into place: its shards are spent
                discard_parts(parts)
                manifest = None
        plan = ExtractionPlan(out, parts, settings, {}, np.zeros(0, np.int64), [], [])
        if done is not None:
            plan.already_complete, plan.existing = True, done
            return plan
        if manifest is not None and manifest.get("complete") and overwrite:
            raise StoreError(f"{parts} is a complete --no-merge store; --overwrite keeps a store until its "
                             "replacement is complete, which a parts folder cannot: remove it first to redo it")
        if manifest is not None and manifest.get("settings") != settings:
            if not overwrite:
                raise StoreError(f"a partial extraction in {parts} was made with other settings "
                                 f"({describe_difference(manifest.get('settings') or {}, settings)}); "
                                 "rerun it with those, or pass --overwrite")
            manifest = None
        if manifest is None:
            discard_parts(parts)
            parts.mkdir(parents=True)
            manifest = {"settings": settings, "run_id": uuid.uuid4().hex, "complete": False,
                        "partition_files": partition_files(checkpoint_rows, batch_size)}
            write_manifest(parts, manifest)
        for stale in parts.glob("*.tmp"):
            stale.unlink()
    except WRITE_ERRORS as exc:
        raise StoreError(f"cannot prepare {parts} ({exc}); fix the cause (free disk space?) and rerun") from None
    plan.run_id = str(manifest["run_id"])
    plan.partitions = make_partitions(len(source.paths), int(manifest["partition_files"]))
    plan.missing = missing_partitions(parts, plan.partitions)
    plan.already_complete = bool(manifest.get("complete")) and not merge and not out.exists()
    plan.order = file_order(len(source.paths), seed, shuffle)
    plan.attrs = {**backbone_info, "decoder": source.decoder, "classes": source.classes,
                  "source_root": settings["source_root"],
                  "layout": source.layout, "seed": seed, "shuffle": shuffle, "extraction_run": plan.run_id,
                  "extract_settings": json.dumps(settings, sort_keys=True),
                  "package_versions": json.dumps(package_versions(), sort_keys=True)}
    if plan.already_complete:
        plan.existing = {"rows": int(manifest.get("rows", 0)), "skipped": int(manifest.get("skipped_count", 0))}
    return plan
