"""What a store, a partial extraction or a saved model holds, as plain dictionaries.

:func:`describe` decides what a path is and returns a JSON-ready dictionary
with a ``kind`` of ``store``, ``partial`` or ``model``; :func:`format_info`
turns one into lines for people. Only the public interfaces of
``pipeline.store``, ``pipeline.store_parts`` (the parts-folder layout),
``pipeline.identity`` (what is shown as the backbone) and ``pipeline.models``
are used, so the file formats may change underneath.

>>> info = describe("train.h5")           # doctest: +SKIP
>>> info["rows"], info["classes"][0]       # doctest: +SKIP
(1400, {'name': 'cat', 'rows': 700})
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import ModelFileError, PipelineError, StoreError
from pipeline.fsutil import read_json
from pipeline.identity import SHOWN_KEYS
from pipeline.models import load_model
from pipeline.store import FeatureStore, open_store
from pipeline.store_parts import MANIFEST, SHARD_GLOB, parts_folder, read_manifest
from pipeline.store_protocol import Store

LABEL_CHUNK = 1 << 20  # labels read per step when counting classes (4 MiB of int32)
SHOW_SKIPPED = 5
IDENTITY_FIELDS = SHOWN_KEYS  # pipeline.identity
PROVENANCE_FIELDS = ("backend", "device", "keras_version", "source_root", "layout", "compression", "format_version")


def _plain(value: Any) -> Any:
    """numpy scalars and arrays -> JSON types; JSON text attributes stay text."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def precision(meta: dict[str, Any]) -> str:
    """The compute precision the features were made with (``precision`` or the older ``mixed_precision``)."""
    if meta.get("precision") not in (None, ""):
        return str(meta["precision"])
    if "mixed_precision" in meta:
        return "mixed_float16" if bool(meta["mixed_precision"]) else "float32"
    return "unknown"


def class_counts(store: Store, chunk_rows: int = LABEL_CHUNK) -> tuple[list[int], int]:
    """Rows per class index and unlabelled rows, reading labels ``chunk_rows`` at a time."""
    counts = np.zeros(len(store.classes), dtype=np.int64)
    unlabelled = 0
    for start in range(0, store.n_rows, chunk_rows):
        y = np.asarray(store.labels(start, start + chunk_rows))
        unlabelled += int(np.count_nonzero(y < 0))
        known = y[(y >= 0) & (y < len(counts))]
        counts += np.bincount(known, minlength=len(counts))[: len(counts)]
        if np.any(y >= len(counts)):
            raise StoreError(f"{store.path} has labels beyond its {len(counts)} classes: the store is corrupt")
    return counts.tolist(), unlabelled


def _identity(meta: dict[str, Any]) -> dict[str, Any]:
    ident = {key: _plain(meta[key]) for key in IDENTITY_FIELDS if key in meta}
    ident["precision"] = precision(meta)
    return ident


def _store_facts(store: Store, count_classes: bool = True) -> dict[str, Any]:
    meta = store.meta
    facts: dict[str, Any] = {"rows": store.n_rows, "feature_dim": store.feature_dim,
                             "dtype": str(meta.get("dtype", "unknown"))}
    if count_classes:
        counts, unlabelled = class_counts(store)
        facts["classes"] = [{"name": name, "rows": n} for name, n in zip(store.classes, counts)]
        facts["unlabelled"] = unlabelled
    skipped_count = meta.get("skipped_count")
    first = store.skipped(SHOW_SKIPPED)
    facts["skipped"] = {"count": int(skipped_count) if skipped_count not in (None, "") else len(store.skipped()),
                        "first": [{"path": p, "reason": r} for p, r in first]}
    facts["identity"] = _identity(meta)
    facts.update({key: _plain(meta[key]) for key in PROVENANCE_FIELDS if key in meta})
    facts["created"] = meta.get("created") or "unknown"
    return facts


def describe_store(path: str | Path) -> dict[str, Any]:
    """Rows, dimension, classes with counts, skipped files, identity and state of one store file."""
    with FeatureStore(path) as store:
        info = {"path": str(path), "kind": "store", "complete": store.complete, **_store_facts(store)}
        info["size_bytes"] = Path(path).stat().st_size
    return info


def describe_parts_store(parts: Path) -> dict[str, Any]:
    """A ``--no-merge`` parts folder, complete: described as the one store it reads as."""
    with open_store(parts) as store:
        info = {"path": str(parts), "kind": "store", "complete": True, **_store_facts(store)}
    info["size_bytes"] = sum(f.stat().st_size for f in parts.glob(SHARD_GLOB))
    return info


def describe_partial(parts: str | Path) -> dict[str, Any]:
    """Progress of an unfinished extraction: the ``OUT.parts`` folder of shards and its manifest."""
    parts = Path(parts)
    manifest_path = parts / MANIFEST
    if not manifest_path.is_file():
        raise StoreError(f"{parts} is a folder but not a partial extraction (no {MANIFEST})")
    try:
        manifest = read_json(manifest_path)
    except (OSError, ValueError) as exc:
        raise StoreError(f"{manifest_path} is not readable JSON ({exc})") from None
    rows = files_done = skipped = 0
    facts: dict[str, Any] = {}
    counts: dict[str, int] = {}
    unlabelled = 0
    shard_paths = sorted(parts.glob(SHARD_GLOB))
    for shard_path in shard_paths:
        with FeatureStore(shard_path) as shard:
            rows += shard.n_rows
            skipped += int(shard.meta.get("skipped_count") or 0)
            start, stop = shard.meta.get("file_start"), shard.meta.get("file_stop")
            if start not in (None, "") and stop not in (None, ""):
                files_done += int(stop) - int(start)
            shard_counts, shard_unlabelled = class_counts(shard)
            unlabelled += shard_unlabelled
            for name, n in zip(shard.classes, shard_counts):
                counts[name] = counts.get(name, 0) + n
            if not facts:
                facts = _store_facts(shard, count_classes=False)
    info: dict[str, Any] = {"path": str(parts), "kind": "partial", "complete": False,
                            "shards_done": len(shard_paths), "rows_done": rows,
                            "files_done": files_done,
                            "files_total": (manifest.get("settings") or manifest).get("files"),
                            "skipped_count": skipped,
                            "classes": [{"name": k, "rows": v} for k, v in counts.items()],
                            "unlabelled": unlabelled}
    info["identity"] = facts.get("identity") or _identity(manifest.get("settings") or manifest)
    info["feature_dim"] = facts.get("feature_dim")
    info["dtype"] = facts.get("dtype", (manifest.get("settings") or manifest).get("dtype"))
    info["manifest"] = _plain(manifest)
    return info


def describe_model(path: str | Path, trust_pickle: bool = False) -> dict[str, Any]:
    """Head, settings, classes, rows seen, training stores and backbone identity of a saved model."""
    summary = _plain(load_model(path, trust_pickle=trust_pickle).summary())
    backbone = summary.get("backbone") or {}
    return {"path": str(path), "kind": "model", **summary, "identity": _identity(backbone),
            "feature_dim": backbone.get("feature_dim")}


def _parts_of(path: Path) -> Path | None:
    if path.is_dir():
        return path
    parts = parts_folder(path)
    return parts if not path.exists() and parts.is_dir() else None


def describe(path: str | Path, trust_pickle: bool = False) -> dict[str, Any]:
    """Describe a store file, a partial extraction (``OUT`` or ``OUT.parts``) or a model file."""
    path = Path(path)
    parts = _parts_of(path)
    if parts is not None:
        if (read_manifest(parts) or {}).get("complete"):
            return describe_parts_store(parts)
        return describe_partial(parts)
    if not path.exists():
        raise StoreError(f"{path} does not exist")
    try:
        return describe_store(path)
    except StoreError as store_error:
        if _is_hdf5(path) and "not a feature store" not in str(store_error):
            raise  # a store, but a broken one: its own error says why
        try:
            return describe_model(path, trust_pickle)
        except ModelFileError as model_error:
            raise PipelineError(f"{path} is neither a feature store nor a model file "
                                f"(as a store: {_reason(store_error, path)}; as a model: "
                                f"{_reason(model_error, path)})") from None


def _is_hdf5(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(8) == b"\x89HDF\r\n\x1a\n"


def _reason(error: Exception, path: Path) -> str:
    """The error's text without the leading path (and the colon after it), which the message names once."""
    text = str(error)
    rest = text[len(str(path)):].lstrip(" :") if text.startswith(str(path)) else text
    return rest or text


def _lines_identity(info: dict[str, Any]) -> list[str]:
    ident = info.get("identity") or {}
    return ["  backbone: " + ", ".join(f"{k}={v}" for k, v in ident.items() if v not in (None, ""))]


def _lines_classes(info: dict[str, Any]) -> list[str]:
    classes = info.get("classes") or []
    lines = [f"  classes: {len(classes)}" + (f", unlabelled rows: {info['unlabelled']}" if "unlabelled" in info else "")]
    for entry in classes:
        lines.append(f"    {entry['name']}: {entry['rows']}" if isinstance(entry, dict) else f"    {entry}")
    return lines


def format_info(info: dict[str, Any]) -> list[str]:
    """Human-readable lines for one :func:`describe` result."""
    kind = info["kind"]
    if kind == "model":
        lines = [f"{info['path']}: model, head {info.get('head')} (created {info.get('created', 'unknown')})",
                 "  settings: " + json.dumps(info.get("settings", {}), sort_keys=True),
                 f"  rows seen: {info.get('rows_seen')}", f"  feature dim: {info.get('feature_dim')}"]
        lines += _lines_identity(info)
        lines.append(f"  classes: {len(info.get('classes') or [])}: " + ", ".join(map(str, info.get("classes") or [])))
        stores = info.get("stores") or []
        lines.append(f"  trained on {len(stores)} store(s):")
        lines += [f"    {s.get('path', s) if isinstance(s, dict) else s}" + (f" ({s['rows']} rows)" if isinstance(s, dict) and "rows" in s else "")
                  for s in stores]
        return lines
    if kind == "partial":
        total = info.get("files_total")
        lines = [f"{info['path']}: partial extraction (not finished), {info['shards_done']} shard(s) done, "
                 f"{info['rows_done']} rows, {info['files_done']} of {total if total is not None else '?'} files",
                 f"  feature dim: {info.get('feature_dim')}, dtype: {info.get('dtype')}, "
                 f"skipped files: {info['skipped_count']}"]
        return lines + _lines_identity(info) + _lines_classes(info)
    state = "complete" if info["complete"] else "INCOMPLETE (its extraction did not finish)"
    lines = [f"{info['path']}: feature store, {state}, created {info['created']}",
             f"  rows: {info['rows']}, feature dim: {info['feature_dim']}, dtype: {info['dtype']}"]
    lines += _lines_identity(info)
    lines.append("  " + ", ".join(f"{k}: {info[k]}" for k in PROVENANCE_FIELDS if info.get(k) not in (None, "")))
    lines += _lines_classes(info)
    skipped = info["skipped"]
    lines.append(f"  skipped files: {skipped['count']}")
    lines += [f"    {s['path']}: {s['reason']}" for s in skipped["first"]]
    if skipped["count"] > len(skipped["first"]):
        lines.append(f"    ... and {skipped['count'] - len(skipped['first'])} more")
    return lines
