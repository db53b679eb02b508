"""Finalize: merge the shards into ``OUT`` and set ``complete``, or make the parts folder the store.

The merged store is written to a temporary file and renamed over ``OUT`` only
when complete, so ``--overwrite`` keeps the old store until then; the parts
folder is removed after the rename (a kill in between leaves it, and the next
run recognises it by its run id and removes it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from pipeline.errors import StoreError, write_failure
from pipeline.fsutil import pause_point
from pipeline.extraction.plan import ExtractionPlan, Partition, discard_parts
from pipeline.store import WRITE_ERRORS, FeatureStore, StoreWriter, atomic_path
from pipeline.store_parts import read_manifest, write_manifest


@dataclass
class Finalized:
    rows: int
    skipped: int


def open_shard(plan: ExtractionPlan, part: Partition) -> FeatureStore:
    path = plan.parts / part.name
    try:
        shard = FeatureStore(path)
    except StoreError as exc:
        raise StoreError(f"{exc}; remove {path} and rerun the same command to redo that partition") from None
    if (int(shard.meta.get("file_start", -1)), int(shard.meta.get("file_stop", -1))) != (part.start, part.stop):
        shard.close()
        raise StoreError(f"{path} does not hold files {part.start}:{part.stop}; remove it and rerun to redo it")
    return shard


def merge_shards(plan: ExtractionPlan, dtype: str, compression: str | None) -> Finalized:
    attrs = {**plan.attrs, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    try:
        with atomic_path(plan.out) as tmp, \
                StoreWriter(tmp, attrs, int(plan.attrs["feature_dim"]), dtype, compression) as writer:
            for part in plan.partitions:
                with open_shard(plan, part) as shard:
                    for chunk in shard.iter_chunks(8192):
                        writer.append(chunk.X, chunk.y, chunk.paths)
                        pause_point("store-merge", tmp)
                    skipped = shard.skipped()
                writer.add_skipped([p for p, _ in skipped], [r for _, r in skipped])
            done = Finalized(writer.rows, int(writer.skipped_paths.shape[0]))
            writer.close(complete=True)
    except WRITE_ERRORS as exc:
        raise StoreError(f"writing {plan.out} failed ({write_failure(exc)}); the shards in {plan.parts} are kept: fix the cause "
                         "(free disk space?) and rerun the same command to merge them") from None
    discard_parts(plan.parts)
    return done


def seal_parts(plan: ExtractionPlan) -> Finalized:
    """``--no-merge``: record every shard's rows in the manifest and mark the folder complete."""
    shards, rows, skipped = [], 0, 0
    for part in plan.partitions:
        with open_shard(plan, part) as shard:
            n_skipped = len(shard.skipped())
            shards.append({"name": part.name, "rows": shard.n_rows, "skipped": n_skipped,
                           "file_start": part.start, "file_stop": part.stop})
            rows, skipped = rows + shard.n_rows, skipped + n_skipped
    manifest = read_manifest(plan.parts) or {}
    write_manifest(plan.parts, {**manifest, "complete": True, "shards": shards, "rows": rows,
                                "skipped_count": skipped,
                                "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    try:
        plan.out.unlink(missing_ok=True)  # the store this run replaces (--overwrite)
    except OSError as exc:
        raise StoreError(f"{plan.parts} is complete but the old {plan.out} cannot be removed ({exc})") from None
    return Finalized(rows, skipped)


def finalize(plan: ExtractionPlan, dtype: str, compression: str | None, merge: bool) -> Finalized:
    return merge_shards(plan, dtype, compression) if merge else seal_parts(plan)
