"""pipeline export / import: round trips, the clip-retrieval layout, training on imported embeddings, errors."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import make_blobs_store
from pipeline.cli import main
from pipeline.errors import InteropError
from pipeline.interop import export_store, import_embeddings
from pipeline.store import StoreWriter, open_store

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def _read_all(path: Path) -> tuple[np.ndarray, np.ndarray, list[str], list[str], dict]:
    with open_store(path) as store:
        chunk = store.read(0, store.n_rows)
        return chunk.X, chunk.y, chunk.paths, store.classes, store.identity


def _mixed_store(path: Path, dtype: str) -> Path:
    """Float16 or float32 rows, unlabelled rows, a class with no rows, classes not in sorted order."""
    rng = np.random.default_rng(7)
    writer = StoreWriter(path, {"backbone": "synthetic", "weights": "none", "alpha": 0.25, "input_size": [8, 8],
                                "preprocessing": "none", "pooling": "avg", "classes": ["zebra", "ant", "empty", "cat"],
                                "source_root": "/photos"}, 6, dtype)
    y = rng.choice([-1, 0, 1, 3], 250).astype(np.int32)
    writer.append(rng.normal(size=(250, 6)).astype(dtype), y, [f"dir/img {i}.jpg" for i in range(250)])
    writer.close(complete=True)
    return path


@pytest.mark.parametrize("fmt", ["npy", "parquet"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_export_import_round_trip_is_exact(tmp_path, fmt, dtype):
    store = _mixed_store(tmp_path / "s.h5", dtype)
    result = invoke("export", store, "-o", tmp_path / "emb", "--format", fmt, "--shard-rows", "100", "-q")
    assert result.exit_code == 0, result.output
    assert "250 rows" in result.output and "3 " + fmt in result.output
    result = invoke("import", tmp_path / "emb", "-o", tmp_path / "back.h5", "-q")
    assert result.exit_code == 0, result.output
    X0, y0, p0, c0, id0 = _read_all(store)
    X1, y1, p1, c1, id1 = _read_all(tmp_path / "back.h5")
    assert X1.dtype == X0.dtype and X1.tobytes() == X0.tobytes()  # bitwise
    np.testing.assert_array_equal(y1, y0)
    assert p1 == p0 and c1 == c0 and id1 == id0


def test_npy_layout_is_what_clip_retrieval_writes(tmp_path):
    store = make_blobs_store(tmp_path / "s.h5", 25, 4, ["x", "y"])
    export_store(store, tmp_path / "emb", "npy", shard_rows=10, progress=False)
    names = sorted(p.relative_to(tmp_path / "emb").as_posix() for p in (tmp_path / "emb").rglob("*") if p.is_file())
    assert names == ["img_emb/img_emb_0.npy", "img_emb/img_emb_1.npy", "img_emb/img_emb_2.npy",
                     "metadata/metadata_0.parquet", "metadata/metadata_1.parquet", "metadata/metadata_2.parquet"]
    X, y, paths, classes, _ = _read_all(store)
    emb = np.concatenate([np.load(tmp_path / "emb" / "img_emb" / f"img_emb_{i}.npy") for i in range(3)])
    meta = pa.concat_tables([pq.read_table(tmp_path / "emb" / "metadata" / f"metadata_{i}.parquet") for i in range(3)])
    np.testing.assert_array_equal(emb, X)
    assert meta.column("image_path").to_pylist() == paths
    assert meta.column("label").to_pylist() == [classes[i] for i in y]


def test_parquet_layout_has_an_embedding_list_column(tmp_path):
    store = make_blobs_store(tmp_path / "s.h5", 25, 4, ["x", "y"])
    export_store(store, tmp_path / "emb", "parquet", progress=False)
    table = pq.read_table(tmp_path / "emb" / "img_emb" / "img_emb_0.parquet")
    assert table.column_names == ["image_path", "label", "embedding"]
    np.testing.assert_array_equal(np.stack(table.column("embedding").to_numpy()), _read_all(store)[0])


def _clip_retrieval_folder(root: Path, rng: np.random.Generator) -> tuple[np.ndarray, list]:
    """Two shards as clip-retrieval writes them: float16 unit vectors, image_path + caption metadata."""
    centers = rng.normal(size=(3, 32))
    captions, all_emb = [], []
    for shard, n in enumerate((120, 90)):
        y = rng.integers(0, 3, n)
        emb = centers[y] + 0.3 * rng.normal(size=(n, 32))
        emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float16)
        caps = [["a photo of a cat", "a photo of a dog", "a photo of a bird"][k] for k in y]
        caps[0] = None  # a row without a caption: unlabelled
        (root / "img_emb").mkdir(parents=True, exist_ok=True)
        (root / "metadata").mkdir(exist_ok=True)
        np.save(root / "img_emb" / f"img_emb_{shard}.npy", emb)
        pq.write_table(pa.table({"image_path": [f"/data/{shard}/{i}.jpg" for i in range(n)], "caption": caps}),
                       root / "metadata" / f"metadata_{shard}.parquet")
        captions += caps
        all_emb.append(emb)
    return np.concatenate(all_emb), captions


def test_clip_retrieval_folder_imports_and_trains_a_head(tmp_path):
    emb, captions = _clip_retrieval_folder(tmp_path / "clip", np.random.default_rng(1))
    store = tmp_path / "clip.h5"
    result = invoke("import", tmp_path / "clip", "-o", store, "--label-column", "caption",
                    "--backbone-name", "clip-vit-b32", "-q")
    assert result.exit_code == 0, result.output
    X, y, paths, classes, identity = _read_all(store)
    assert X.dtype == np.float16 and X.tobytes() == emb.tobytes()
    assert classes == ["a photo of a bird", "a photo of a cat", "a photo of a dog"]
    assert [classes[i] if i >= 0 else None for i in y] == captions and (y == -1).sum() == 2
    assert paths[0] == "/data/0/0.jpg" and len(paths) == 210
    assert identity["backbone"] == "clip-vit-b32" and identity["weights"] == "external" and identity["feature_dim"] == 32
    info = json.loads(invoke("info", store, "--json").output)[0]
    assert info["unlabelled"] == 2 and sum(c["rows"] for c in info["classes"]) == 208
    model = tmp_path / "m.pkl"
    result = invoke("train-incremental", store, "--head", "slda", "--holdout", "0.3", "--model-out", model,
                    "--metrics-out", tmp_path / "m.json", "-q")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["heldout"]["accuracy"] > 0.9
    result = invoke("evaluate", model, store, "--holdout", "0.3", "--metrics-out", tmp_path / "e.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "e.json").read_text())["heldout"]["accuracy"] == metrics["heldout"]["accuracy"]


def test_bare_npy_folder_imports_unlabelled_rows(tmp_path):
    (tmp_path / "npy").mkdir()
    for i in range(2):
        np.save(tmp_path / "npy" / f"part_{i}.npy", np.ones((3, 5), np.float64) * i)
    result = import_embeddings(tmp_path / "npy", tmp_path / "s.h5", progress=False)
    assert result.rows == 6 and result.dtype == "float32" and any("float64" in n for n in result.notes)
    X, y, paths, classes, _ = _read_all(tmp_path / "s.h5")
    assert (y == -1).all() and classes == [] and paths[3] == "part_1.npy:0"
    np.testing.assert_array_equal(X[3:], 1.0)


def test_import_errors_are_clean_and_leave_no_output(tmp_path):
    _clip_retrieval_folder(tmp_path / "clip", np.random.default_rng(2))
    out = tmp_path / "s.h5"
    result = invoke("import", tmp_path / "clip", "-o", out, "--label-column", "label")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "no label column 'label': its columns are image_path, caption" in result.output
    assert "not a folder" in invoke("import", tmp_path / "nothing", "-o", out).output
    np.save(tmp_path / "clip" / "img_emb" / "img_emb_1.npy", np.zeros((90, 16), np.float16))  # other dim
    result = invoke("import", tmp_path / "clip", "-o", out, "--label-column", "caption", "-q")
    assert result.exit_code == 1 and "16-d embeddings; earlier files have 32" in result.output
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))
    np.save(tmp_path / "clip" / "img_emb" / "img_emb_1.npy", np.zeros((80, 32), np.float16))  # misaligned
    result = invoke("import", tmp_path / "clip", "-o", out, "--label-column", "caption", "-q")
    assert "aligned row by row" in result.output and not out.exists()


def test_export_refuses_to_overwrite_and_cleans_up_after_a_failure(tmp_path, monkeypatch):
    store = make_blobs_store(tmp_path / "s.h5", 40, 4, ["x", "y"])
    (tmp_path / "emb").mkdir()
    assert "exists; pass --overwrite" in invoke("export", store, "-o", tmp_path / "emb").output
    import pipeline.interop as interop

    def fail(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(interop, "_table", fail)
    with pytest.raises(OSError):
        export_store(store, tmp_path / "new", "npy", progress=False)
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".new*"))


def test_missing_pyarrow_names_the_extra(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    store = make_blobs_store(tmp_path / "s.h5", 10, 4, ["x", "y"])
    with pytest.raises(InteropError, match=r"pip install 'incremental-pipeline\[interop\]'"):
        export_store(store, tmp_path / "emb", progress=False)


@pytest.mark.parametrize("column, message", [
    (pa.array([[1.0, 2.0], [1.0, 2.0], [1.0], [1.0, 2.0, 3.0]], pa.list_(pa.float32())),
     "row 2 has a 1-value embedding, row 0 has 2"),
    (pa.array([[1.0, 2.0], [1.0, None], [3.0, 4.0]], pa.list_(pa.float32())), "row 1 holds a null value"),
    (pa.array([[1.0, 2.0], [3.0, 4.0], None], pa.list_(pa.float32())), "row 2 has no embedding"),
    (pa.FixedSizeListArray.from_arrays(pa.array([1.0, 2.0, 3.0, None], pa.float32()), 2), "row 1 holds a null value"),
], ids=["ragged", "null-inside", "null-row", "fixed-size-null"])
def test_import_refuses_ragged_or_null_embeddings_naming_the_first_bad_row(tmp_path, column, message):
    (tmp_path / "emb").mkdir()
    labels = ["a", "b", "a", "b"][:len(column)]
    pq.write_table(pa.table({"label": labels, "embedding": column}), tmp_path / "emb" / "part_0.parquet")
    out = tmp_path / "s.h5"
    result = invoke("import", tmp_path / "emb", "-o", out, "-q")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_ragged_embeddings_across_batches_of_one_file_are_refused(tmp_path):
    (tmp_path / "emb").mkdir()
    column = pa.array([[1.0, 2.0]] * 3 + [[1.0]] * 2, pa.list_(pa.float32()))
    pq.write_table(pa.table({"embedding": column}), tmp_path / "emb" / "part_0.parquet", row_group_size=3)
    with pytest.raises(InteropError, match="1-d embeddings; its rows before row 3 have 2"):
        import_embeddings(tmp_path / "emb", tmp_path / "s.h5", progress=False)
