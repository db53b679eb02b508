"""Embedding folders in the layout clip-retrieval writes and embedding-reader reads.

``--format npy`` (embedding-reader's ``parquet_npy``)::

    DIR/img_emb/img_emb_0.npy          (n, D) float32 or float16
    DIR/metadata/metadata_0.parquet    columns image_path, label; row i describes row i of img_emb_0.npy

``--format parquet`` (embedding-reader's ``parquet``, ``embedding_column_name="embedding"``)::

    DIR/img_emb/img_emb_0.parquet      columns image_path, label, embedding (fixed-size list of floats)

Shards are numbered as clip-retrieval numbers them (zero-padded so names sort in row order).
Every parquet file carries the store's class list and identity in its schema metadata, so
``import`` of an ``export`` gives back the same store. pyarrow is imported only here, lazily.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np
from tqdm import tqdm

from pipeline.errors import InteropError, one_line, write_failure
from pipeline.extraction.lock import output_locks
from pipeline.fsutil import parse_json, pause_point
from pipeline.identity import IDENTITY_KEYS, PROVENANCE_KEYS
from pipeline.store import StoreWriter, atomic_path, open_store

META_KEY = b"incremental_pipeline"
EMB_DIR, META_DIR = "img_emb", "metadata"
EMBEDDING_COLUMN = "embedding"
KEPT_ATTRS = (*IDENTITY_KEYS, *PROVENANCE_KEYS)  # pipeline.identity


def _pa() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InteropError("export and import need pyarrow: pip install 'incremental-pipeline[interop]'") from None
    return pa, pq


@dataclass
class InteropResult:
    out: Path
    rows: int = 0
    files: int = 0
    feature_dim: int = 0
    dtype: str = ""
    classes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _shard_name(prefix: str, index: int, count: int, ext: str) -> str:
    return f"{prefix}_{str(index).zfill(len(str(max(count - 1, 0))))}.{ext}"


def _jsonable(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray) else value.item() if isinstance(value, np.generic) else value


def _table(pa: Any, paths: list[str], labels: np.ndarray, classes: list[str], X: np.ndarray | None, schema: Any) -> Any:
    names = [classes[i] if 0 <= i < len(classes) else None for i in labels.tolist()]
    columns = {"image_path": pa.array(paths, pa.string()), "label": pa.array(names, pa.string())}
    if X is not None:
        columns[EMBEDDING_COLUMN] = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), X.shape[1])
    return pa.table(columns, schema=schema)


def _replace_dir(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move a finished folder into place: a crash before this leaves only the hidden temporary folder."""
    if out.exists():
        if not overwrite:
            raise InteropError(f"{out} exists; pass --overwrite to replace it")
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def export_store(store_path: str | Path, out: str | Path, fmt: str = "npy", *, shard_rows: int = 1_000_000,
                 chunk_rows: int = 8192, overwrite: bool = False, allow_incomplete: bool = False,
                 progress: bool = True) -> InteropResult:
    """Write a store's rows as npy or parquet embedding shards plus parquet metadata, with bounded memory."""
    if fmt not in ("npy", "parquet"):
        raise InteropError(f"unknown export format {fmt!r}; expected npy or parquet")
    pa, pq = _pa()
    out = Path(out)
    _check_export_target(out, overwrite)
    with output_locks(out):
        return _export_locked(store_path, out, fmt, shard_rows, chunk_rows, overwrite, allow_incomplete, progress,
                              pa, pq)


def _check_export_target(out: Path, overwrite: bool) -> None:
    """Refuse an existing OUTPUT without --overwrite, and with it anything that is not an earlier export."""
    resolved = out.resolve()
    if resolved == resolved.parent or resolved == Path.cwd().resolve() or resolved == Path.home().resolve():
        raise InteropError(f"refusing to export into {out} ({resolved}): name a new folder to create")
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise InteropError(f"{out} exists; pass --overwrite to replace it")
    problem = _not_an_export(out)
    if problem:
        raise InteropError(f"{out} exists and is not an export ({problem}): --overwrite replaces only a folder "
                           "that pipeline export wrote; remove it yourself or pick another name")


def _not_an_export(folder: Path) -> str:
    """Why ``folder`` is not what export writes (empty when it is): only img_emb/ and metadata/ holding shard
    files, the parquet ones marked with export's schema metadata. Nothing else may be deleted by --overwrite."""
    if folder.is_symlink() or not folder.is_dir():
        return "not a folder"
    tables = []
    for entry in folder.iterdir():
        if entry.name not in (EMB_DIR, META_DIR) or entry.is_symlink() or not entry.is_dir():
            return f"it holds {entry.name}"
        for file in entry.iterdir():
            if not re.fullmatch(rf"{entry.name}_\d+\.(npy|parquet)", file.name) or file.is_symlink() \
                    or not file.is_file():
                return f"it holds {entry.name}/{file.name}"
            if file.suffix == ".parquet":
                tables.append(file)
    if not tables:
        return "no parquet table of an export in it"
    _, pq = _pa()
    for table in tables:
        try:
            marked = META_KEY in (pq.read_schema(table).metadata or {})
        except Exception:  # pyarrow raises several types for a file that is not parquet
            marked = False
        if not marked:
            return f"{table.relative_to(folder)} was not written by pipeline export"
    return ""


def _export_locked(store_path: str | Path, out: Path, fmt: str, shard_rows: int, chunk_rows: int, overwrite: bool,
                   allow_incomplete: bool, progress: bool, pa: Any, pq: Any) -> InteropResult:
    _check_export_target(out, overwrite)  # again under the lock: another run may have finished meanwhile
    tmp = out.with_name(f".{out.name}.tmp-export")
    shutil.rmtree(tmp, ignore_errors=True)
    with open_store(store_path, allow_incomplete) as store:
        classes, dim = list(store.classes), store.feature_dim
        dtype = np.dtype(str(store.meta.get("dtype", "float32")))
        meta = {"classes": classes, "source_root": store.meta.get("source_root", ""),
                "store": {k: _jsonable(store.meta[k]) for k in KEPT_ATTRS if k in store.meta}}
        fields = [pa.field("image_path", pa.string()), pa.field("label", pa.string())]
        if fmt == "parquet":
            fields.append(pa.field(EMBEDDING_COLUMN, pa.list_(pa.from_numpy_dtype(dtype), dim)))
        schema = pa.schema(fields, metadata={META_KEY: json.dumps(meta)})
        n_shards = max(1, math.ceil(store.n_rows / shard_rows))
        (tmp / EMB_DIR).mkdir(parents=True)
        if fmt == "npy":
            (tmp / META_DIR).mkdir()
        bar = tqdm(total=store.n_rows, unit="row", desc="export", disable=not progress)
        try:
            for k in range(n_shards):
                start, stop = k * shard_rows, min((k + 1) * shard_rows, store.n_rows)
                _export_shard(store, tmp, fmt, k, n_shards, start, stop, chunk_rows, classes, schema, pa, pq, bar)
                pause_point("export-write", tmp)
        except OSError as exc:
            bar.close()
            shutil.rmtree(tmp, ignore_errors=True)
            raise OSError(exc.errno, f"writing {out} failed ({exc.strerror or one_line(exc)}); nothing was "
                          "written: free disk space and rerun") from None
        except BaseException:
            bar.close()
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        bar.close()
        rows = store.n_rows
    try:
        _fsync_tree(tmp)
        _replace_dir(tmp, out, overwrite)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise InteropError(f"writing {out} failed ({exc.strerror or exc}); free disk space and rerun") from None
    return InteropResult(out, rows, n_shards, dim, dtype.name, classes)


def _export_shard(store: Any, tmp: Path, fmt: str, k: int, n_shards: int, start: int, stop: int, chunk_rows: int,
                  classes: list[str], schema: Any, pa: Any, pq: Any, bar: Any) -> None:
    dim, dtype = store.feature_dim, np.dtype(str(store.meta.get("dtype", "float32")))
    with contextlib.ExitStack() as stack:
        emb: BinaryIO | None = None
        if fmt == "npy":
            emb = stack.enter_context(open(tmp / EMB_DIR / _shard_name(EMB_DIR, k, n_shards, "npy"), "wb"))
            np.lib.format.write_array_header_1_0(emb, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                       "fortran_order": False, "shape": (stop - start, dim)})
            table_path = tmp / META_DIR / _shard_name(META_DIR, k, n_shards, "parquet")
        else:
            table_path = tmp / EMB_DIR / _shard_name(EMB_DIR, k, n_shards, "parquet")
        writer = stack.enter_context(pq.ParquetWriter(table_path, schema))
        for chunk in store.iter_chunks(chunk_rows, start, stop):
            if emb is not None:  # rows appended after the header: no memory map, memory bounded by the chunk
                emb.write(np.ascontiguousarray(chunk.X, dtype=dtype).tobytes())
            writer.write_table(_table(pa, chunk.paths, chunk.y, classes, None if emb is not None else chunk.X, schema))
            bar.update(len(chunk.y))
        if stop == start:
            writer.write_table(_table(pa, [], np.zeros(0, np.int32), classes,
                                      None if emb is not None else np.zeros((0, dim), dtype), schema))


def _fsync_tree(folder: Path) -> None:
    """Flush every file to disk before the folder is renamed into place (as atomic_path does for files)."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb+") as fh:
                os.fsync(fh.fileno())


def _natural(path: Path) -> tuple[Any, ...]:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name))


@dataclass
class _Source:
    """The files of an embedding folder: npy + aligned metadata parquet, or parquet with an embedding column."""

    kind: str
    embeddings: list[Path]
    metadata: list[Path]

    def tables(self) -> list[Path]:
        return self.metadata if self.kind == "npy" else self.embeddings


def _find_source(src: Path) -> _Source:
    if not src.is_dir():
        raise InteropError(f"{src} is not a folder of embeddings (expected {EMB_DIR}/*.npy or {EMB_DIR}/*.parquet)")
    emb_dir = src / EMB_DIR if (src / EMB_DIR).is_dir() else src
    npys = sorted(emb_dir.glob("*.npy"), key=_natural)
    if npys:
        meta = sorted((src / META_DIR).glob("*.parquet"), key=_natural) if (src / META_DIR).is_dir() else []
        if meta and len(meta) != len(npys):
            raise InteropError(f"{src}: {len(npys)} npy files but {len(meta)} metadata parquet files; they must pair up")
        return _Source("npy", npys, meta)
    tables = sorted(emb_dir.glob("*.parquet"), key=_natural)
    if not tables:
        raise InteropError(f"{src} holds no embeddings (no .npy or .parquet files in {emb_dir})")
    return _Source("parquet", tables, [])


class _NpyRows:
    """Rows of a 2-D ``.npy`` file read by seeking: memory bounded by the rows asked for, no memory map."""

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as fh:
            try:
                version = np.lib.format.read_magic(fh)
                header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, fortran, self.dtype = header(fh)
            except ValueError as exc:
                raise InteropError(f"{path} is not a readable .npy file ({exc})") from None
            self.offset = fh.tell()
        if len(shape) != 2 or fortran or self.dtype.hasobject:
            raise InteropError(f"{path} holds a {'Fortran-order ' if fortran else ''}array of shape {shape} "
                               f"and dtype {self.dtype}; expected C-order (rows, dim) numbers")
        self.rows, self.dim = int(shape[0]), int(shape[1])
        if self.dim < 1 or self.dtype.kind not in "iuf":
            raise InteropError(f"{path} holds an array of shape {shape} and dtype {self.dtype}; expected "
                               "(rows, dim) numbers with dim >= 1")

    def __len__(self) -> int:
        return self.rows

    def read(self, start: int, stop: int) -> np.ndarray:
        stop = min(stop, self.rows)
        with open(self.path, "rb") as fh:
            fh.seek(self.offset + start * self.dim * self.dtype.itemsize)
            X = np.fromfile(fh, self.dtype, count=max(stop - start, 0) * self.dim)
        if len(X) != (stop - start) * self.dim:
            raise InteropError(f"{self.path} is truncated: rows {start}:{stop} cannot be read")
        return X.reshape(stop - start, self.dim)


def _parquet_batches(path: Path, columns: list[str], chunk_rows: int, pq: Any) -> Iterator[Any]:
    """Record batches one row group at a time: iter_batches over a whole file buffers every row group."""
    parquet = pq.ParquetFile(path)
    for group in range(parquet.metadata.num_row_groups):
        yield from parquet.iter_batches(batch_size=chunk_rows, row_groups=[group], columns=columns or None,
                                        use_threads=False)


def _batches(source: _Source, columns: list[str], chunk_rows: int, pq: Any) -> Iterator[tuple[int, int, Any, np.ndarray | None]]:
    """Yield (file index, first row in file, metadata batch or None, embedding rows or None)."""
    for i, emb_path in enumerate(source.embeddings):
        if source.kind == "npy":
            X = _NpyRows(emb_path)
            if source.metadata:
                n_meta = pq.ParquetFile(source.metadata[i]).metadata.num_rows
                if n_meta != len(X):
                    raise InteropError(f"{emb_path} has {len(X)} rows but {source.metadata[i]} has "
                                       f"{n_meta}; they must be aligned row by row")
                row = 0
                for batch in _parquet_batches(source.metadata[i], columns, chunk_rows, pq):
                    yield i, row, batch, X.read(row, row + batch.num_rows)
                    row += batch.num_rows
            else:
                for row in range(0, len(X), chunk_rows):
                    yield i, row, None, X.read(row, row + chunk_rows)
        else:
            row = 0
            for batch in _parquet_batches(emb_path, columns, chunk_rows, pq):
                yield i, row, batch, None
                row += batch.num_rows


def _embeddings_of(batch: Any, column: str, path: Path, pa: Any, first_row: int = 0) -> np.ndarray:
    """The batch's embedding column as (rows, dim); a missing, ragged or null-holding row is refused by number."""
    import pyarrow.compute as pc

    col = batch.column(column)
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type)):
        raise InteropError(f"{path}: column {column!r} is {col.type}, not a list of floats")
    if len(col) == 0:
        return np.zeros((0, 0), np.float32)
    if col.null_count:
        bad = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise InteropError(f"{path}: row {first_row + bad} has no embedding (null in column {column!r})")
    if pa.types.is_fixed_size_list(col.type):
        dim = int(col.type.list_size)
    else:
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        dim = int(lengths[0])
        if (lengths != dim).any():
            bad = int(np.flatnonzero(lengths != dim)[0])
            raise InteropError(f"{path}: row {first_row + bad} has a {int(lengths[bad])}-value embedding, row "
                               f"{first_row} has {dim}; every row must have the same length (ragged {column!r})")
    flat = col.flatten()
    if flat.null_count:
        bad = int(np.flatnonzero(flat.is_null().to_numpy(zero_copy_only=False))[0])
        raise InteropError(f"{path}: row {first_row + bad // max(dim, 1)} holds a null value inside its "
                           f"embedding (column {column!r}); fill or drop it before importing")
    if dim < 1:
        raise InteropError(f"{path}: row {first_row} has an empty embedding (column {column!r}); expected at least "
                           "one value per row")
    values = flat.to_numpy(zero_copy_only=False)
    return values.reshape(len(col), dim)


def _read_meta(source: _Source, pq: Any) -> tuple[dict[str, Any], list[str]]:
    tables = source.tables()
    if not tables:
        return {}, []
    schema = pq.read_schema(tables[0])
    raw = (schema.metadata or {}).get(META_KEY)
    return (_checked_meta(raw, tables[0]) if raw else {}), list(schema.names)


def _checked_meta(raw: bytes, where: Path) -> dict[str, Any]:
    """The export's own metadata (``incremental_pipeline`` in the Parquet schema), its shape checked."""
    what = f"{where}: schema metadata {META_KEY.decode()!r}"
    try:
        meta = parse_json(raw, what)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise InteropError(f"{what} is not JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise InteropError(f"{what} is a JSON {type(meta).__name__}; expected an object "
                           "(classes, source_root, store)")
    classes = meta.get("classes") or []
    if not isinstance(classes, list):
        raise InteropError(f"{what}: 'classes' is a {type(classes).__name__}; expected a list of class names")
    for i, name in enumerate(classes):
        if not isinstance(name, str):
            raise InteropError(f"{what}: classes[{i}] is a {type(name).__name__}; expected a class name (text)")
    if len(set(classes)) != len(classes):
        twice = next(c for c in classes if classes.count(c) > 1)
        raise InteropError(f"{what}: class {twice!r} is listed twice; class names must be unique")
    if not isinstance(meta.get("source_root") or "", str):
        raise InteropError(f"{what}: 'source_root' is a {type(meta['source_root']).__name__}; expected a path")
    store = meta.get("store") or {}
    if not isinstance(store, dict):
        raise InteropError(f"{what}: 'store' is a {type(store).__name__}; expected an object of store attributes")
    for key, value in store.items():
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(v, (str, int, float, bool)) for v in items):
            raise InteropError(f"{what}: store attribute {key!r} is {json.dumps(value)[:80]}; expected text, "
                               "a number or a list of them")
    return meta


def _pick_column(given: str | None, default: str, names: list[str], what: str, src: Path) -> str | None:
    if given is None:
        return default if default in names else None
    if given not in names:
        where = f"its columns are {', '.join(names)}" if names else "it has no metadata parquet files"
        raise InteropError(f"{src} has no {what} column {given!r}: {where}")
    return given


def _class_names(source: _Source, column: str | None, known: list[str], pq: Any) -> list[str]:
    """Known classes (from an export) first, then every other label value, sorted; one column read at a time."""
    if column is None:
        return list(known)
    seen: set[str] = set()
    for table in source.tables():
        for batch in _parquet_batches(table, [column], 65536, pq):
            seen.update(str(v) for v in batch.column(0).to_pylist() if v is not None and v != "")
    return list(known) + sorted(seen - set(known))


def _count_rows(source: _Source, pq: Any) -> int:
    if source.kind == "npy":
        return sum(len(_NpyRows(p)) for p in source.embeddings)
    return sum(pq.ParquetFile(p).metadata.num_rows for p in source.embeddings)


def _store_dtype(dtype: np.dtype, path: Path, notes: list[str]) -> str:
    if dtype == np.float16 or dtype == np.float32:
        return dtype.name
    if dtype.kind == "f":
        notes.append(f"{path.name}: {dtype.name} embeddings stored as float32")
        return "float32"
    raise InteropError(f"{path} holds {dtype} values; expected floating-point embeddings")


def _rows(source: _Source, columns: list[str], chunk_rows: int, label_col: str | None, path_col: str | None,
          embedding_column: str, index: dict[str, int], pa: Any, pq: Any
          ) -> Iterator[tuple[Path, int, np.ndarray, np.ndarray, list[str]]]:
    """Yield (embedding file, first row in it, features, label indices, paths) for each non-empty batch."""
    for i, row, batch, X in _batches(source, columns, chunk_rows, pq):
        emb_path = source.embeddings[i]
        if X is None:
            X = _embeddings_of(batch, embedding_column, emb_path, pa, row)
        if len(X) == 0:
            continue
        labels = np.full(len(X), -1, np.int32)
        if label_col is not None:
            values = batch.column(label_col).to_pylist()
            labels[:] = [index.get(str(v), -1) if v is not None and v != "" else -1 for v in values]
        paths = ([str(p) for p in batch.column(path_col).to_pylist()] if path_col is not None
                 else [f"{emb_path.name}:{row + j}" for j in range(len(X))])
        yield emb_path, row, X, labels, paths


def import_embeddings(src: str | Path, out: str | Path, *, label_column: str | None = None,
                      path_column: str | None = None, backbone_name: str | None = None,
                      embedding_column: str = EMBEDDING_COLUMN, chunk_rows: int = 8192,
                      overwrite: bool = False, progress: bool = True) -> InteropResult:
    """Turn an embedding folder (npy + metadata parquet, or parquet) into a feature store, with bounded memory.

    The identity is the one an ``export`` recorded, unless ``backbone_name`` is given (then weights are
    recorded as ``external``). Label values become classes (missing labels: -1, unlabelled).
    """
    pa, pq = _pa()
    src, out = Path(src), Path(out)
    if out.exists() and not overwrite:
        raise InteropError(f"{out} exists; pass --overwrite to replace it")
    with output_locks(out):
        if out.exists() and not overwrite:  # again under the lock: another import may have just finished
            raise InteropError(f"{out} exists; pass --overwrite to replace it")
        return _import_locked(src, out, label_column, path_column, backbone_name, embedding_column, chunk_rows,
                              progress, pa, pq)


def _import_locked(src: Path, out: Path, label_column: str | None, path_column: str | None,
                   backbone_name: str | None, embedding_column: str, chunk_rows: int, progress: bool,
                   pa: Any, pq: Any) -> InteropResult:
    source = _find_source(src)
    meta, names = _read_meta(source, pq)
    label_col = _pick_column(label_column, "label", names, "label", src)
    path_col = _pick_column(path_column, "image_path", names, "path", src)
    if source.kind == "parquet" and embedding_column not in names:
        raise InteropError(f"{source.embeddings[0]} has no embedding column {embedding_column!r}; "
                           f"its columns are {', '.join(names)}")
    result = InteropResult(out)
    if label_col is None:
        result.notes.append("no label column: every row is unlabelled (pass --label-column)")
    if path_col is None:
        result.notes.append("no path column: rows are named FILE:ROW (pass --path-column)")
    classes = _class_names(source, label_col, list(meta.get("classes") or []), pq)
    index = {name: i for i, name in enumerate(classes)}
    if backbone_name is None and meta.get("store"):
        identity = dict(meta["store"])
    else:
        identity = {"backbone": backbone_name or "external", "weights": "external", "alpha": "",
                    "input_size": "", "preprocessing": "external", "pooling": "external"}
    attrs = {**identity, "classes": classes, "layout": f"embeddings-{source.kind}", "seed": "", "shuffle": False,
             "source_root": meta.get("source_root") or str(src.resolve()), "imported_from": str(src.resolve()),
             "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    columns = [c for c in (path_col, label_col) if c is not None]
    if source.kind == "parquet":
        columns.append(embedding_column)
    out.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=_count_rows(source, pq), unit="row", desc="import", disable=not progress)
    writer: StoreWriter | None = None
    try:
        with atomic_path(out) as tmp:
            try:
                for emb_path, row, X, labels, paths in _rows(source, columns, chunk_rows, label_col, path_col,
                                                        embedding_column, index, pa, pq):
                    if writer is None:
                        result.feature_dim, result.dtype = X.shape[1], _store_dtype(X.dtype, emb_path, result.notes)
                        writer = StoreWriter(tmp, attrs, result.feature_dim, result.dtype)
                    if X.shape[1] != result.feature_dim:
                        where = "earlier files" if row == 0 else f"its rows before row {row}"
                        raise InteropError(f"{emb_path} has {X.shape[1]}-d embeddings; {where} have "
                                           f"{result.feature_dim}")
                    writer.append(np.asarray(X, dtype=result.dtype), labels, paths)
                    pause_point("import-write", tmp)
                    bar.update(len(X))
                if writer is None:
                    raise InteropError(f"{src} holds no embeddings (every file is empty)")
                result.rows = writer.rows
                writer.close(complete=True)
            except BaseException:
                if writer is not None:
                    writer.abort()  # before atomic_path removes the temporary file
                raise
    except (OSError, RuntimeError) as exc:  # a full disk: h5py raises RuntimeError with errno 28
        raise InteropError(f"writing {out} failed ({write_failure(exc)}); nothing was written: free disk space and "
                           "rerun") from None
    finally:
        bar.close()
    result.files, result.classes = len(source.embeddings), classes
    return result
