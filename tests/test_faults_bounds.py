"""Bounds (issue 23): small crafted inputs that would allocate without limit are refused in one line before
the allocation, and user mistakes end in one line without a traceback.

The memory bombs run in a subprocess that reports its own peak resident memory (``VmHWM``), so the test
asserts the bound on the process that met the input, not on pytest's.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import DVC, WEIGHTS_025, kaggle_names, link_subset, make_blobs_store, requires_shared
from pipeline.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--backbone", "mobilenet", "--alpha", "0.25", "--image-size", "128", "--weights", str(WEIGHTS_025)]
# VmHWM, the peak of this process's own memory since its exec (ru_maxrss would also count the parent's
# memory at the fork: Linux keeps the larger of the two across exec).
PEAK = """
import sys
from pipeline.cli import main
try:
    main(sys.argv[1:])
finally:
    with open("/proc/self/status") as fh:
        peak = next(line.split()[1] for line in fh if line.startswith("VmHWM:"))
    sys.stderr.write(f"\\nPEAK_KB {peak}\\n")
"""


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, *expected: str, code: int = 1) -> str:
    """Exit status ``code``, no traceback, one ``Error:`` line naming every ``expected`` text."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1 and (code == 2 or len(lines) == 1), result.output
    for text in expected:
        assert text in errors[0], result.output
    return errors[0]


def run_measured(*args: object) -> tuple[int, str, int]:
    """``pipeline ARGS`` in a subprocess: (exit status, stderr without the measurement, peak RSS in MiB)."""
    if not Path("/proc/self/status").is_file():
        pytest.skip("measures the peak memory in /proc/self/status (Linux)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", PEAK, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300)
    lines = proc.stderr.strip().splitlines()
    peak = next(int(line.split()[1]) for line in reversed(lines) if line.startswith("PEAK_KB"))
    errors = "\n".join(line for line in lines if line.strip() and not line.startswith("PEAK_KB"))
    return proc.returncode, errors, peak // 1024


def assert_refused(args: list[object], *expected: str, peak_mib: int = 400) -> None:
    code, errors, peak = run_measured(*args)
    assert code == 1 and "Traceback" not in errors, errors
    assert len(errors.splitlines()) == 1 and errors.startswith("Error:"), errors
    for text in expected:
        assert text in errors, errors
    assert peak < peak_mib, f"peak {peak} MiB"


# --- A. memory bombs ---------------------------------------------------------------------------

def _npy_header(n: int) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": "|u1", "fortran_order": False, "shape": (n,)})
    return out.getvalue()


def _local(name: bytes, data: bytes) -> bytes:
    return struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 0, 0, 0, zlib.crc32(data), len(data), len(data),
                       len(name), 0) + name


def overlapping_model(path: Path, members: int, payload: int) -> None:
    """A valid-looking stored zip whose member i spans every member after it (the quadratic zip bomb):
    ``members * payload`` bytes to read from a file of ``payload`` bytes; model.json names each member."""
    doc = {"format": "incremental-pipeline-model", "format_version": 2,
           "model": {"head": {"__tuple__": [{"__array__": f"a{i}"} for i in range(members)]}}}
    text = json.dumps(doc).encode()
    tail, members_data = b"\0" * payload, []
    for i in reversed(range(members)):  # from the back: each member's data is an npy header plus all after it
        name, data = f"a{i}.npy".encode(), _npy_header(len(tail)) + tail
        members_data.append((name, data))
        tail = _local(name, data) + data
    head = _local(b"model.json", text) + text
    blob, offsets, pos = head + tail, {b"model.json": 0}, len(head)
    for name, data in reversed(members_data):
        offsets[name] = pos
        pos += 30 + len(name) + len(_npy_header(len(data) - len(_npy_header(1))))
    central = b"".join(struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, zlib.crc32(data),
                                   len(data), len(data), len(name), 0, 0, 0, 0, 0, offsets[name]) + name
                       for name, data in [(b"model.json", text), *reversed(members_data)])
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, members + 1, members + 1, len(central), len(blob), 0)
    path.write_bytes(blob + central + end)


def test_overlapping_zip_members_are_refused_before_any_is_read(tmp_path):
    bomb = tmp_path / "bomb.model"
    overlapping_model(bomb, members=100, payload=4 << 20)  # 4 MB on disk, 400 MB if every member is read
    with zipfile.ZipFile(bomb) as zf:  # the craft is a readable zip: zipfile itself does not see the overlap
        assert sum(i.file_size for i in zf.infolist()) > 400 << 20
        assert zf.read("a99.npy")[-4:] == b"\0" * 4
    assert_refused(["evaluate", bomb, make_blobs_store(tmp_path / "s.h5", 20, 4, ["a", "b"])],
                   "member 'a0.npy' declares", "overlapping or oversized members", peak_mib=300)
    one_line_error(invoke("info", bomb), "overlapping or oversized members")


def test_a_member_declaring_more_bytes_than_the_file_holds_is_refused(tmp_path):
    path = tmp_path / "big.model"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("model.json", json.dumps({"format": "incremental-pipeline-model", "format_version": 2,
                                              "model": {"head": {"__array__": "w"}}}))
        zf.writestr("w.npy", _npy_header(10) + b"\0" * 10)
    data = bytearray(path.read_bytes())
    cd = data.rindex(b"PK\x01\x02")  # the last central directory entry (w.npy): sizes of 4 GB
    struct.pack_into("<II", data, cd + 20, 0xFFFFFFF0, 0xFFFFFFF0)
    path.write_bytes(bytes(data))
    one_line_error(invoke("info", path), "member 'w.npy' declares 4,294,967,280 bytes, which run into the zip "
                   "directory")


def test_model_json_beyond_64_mb_is_refused_before_it_is_parsed(tmp_path):
    path = tmp_path / "huge.model"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("model.json", b'{"format": "incremental-pipeline-model", "pad": "' + b"x" * (70 << 20) + b'"}')
    assert_refused(["evaluate", path, make_blobs_store(tmp_path / "s.h5", 20, 4, ["a", "b"])],
                   "member 'model.json' is 70 MB; at most 64 MB", peak_mib=300)


def test_a_parts_manifest_beyond_64_mb_is_refused(tmp_path):
    folder = tmp_path / "s.h5.parts"
    folder.mkdir()
    (folder / "manifest.json").write_bytes(b'{"format": "incremental-pipeline-parts", "pad": "'
                                           + b"x" * (65 << 20) + b'"}')
    r = invoke("info", folder)
    one_line_error(r, "manifest.json is 65 MB; JSON metadata is at most 64 MB")


@pytest.mark.parametrize("head", ["ridge", "klda"])
def test_random_features_beyond_memory_are_one_line_before_allocating(tmp_path, head):
    store = make_blobs_store(tmp_path / "s.h5", 30, 8, ["a", "b"])
    assert_refused(["train-incremental", store, "--head", head, "--random-features", "65536", "-q"],
                   "65536 x 65536", "GiB of memory but", "--random-features", peak_mib=400)


def test_image_size_outside_the_range_is_refused_with_the_range(tmp_path):
    one_line_error(invoke("extract-features", tmp_path, "-o", tmp_path / "o.h5", "--image-size", "10000"),
                   "10000 is not in the range 32<=x<=1024", code=2)
    from pipeline.backbones import BackboneError, build_backbone

    with pytest.raises(BackboneError, match="image size 10000 is outside the allowed range 32..1024"):
        build_backbone("mobilenet", "none", alpha=0.25, image_size=10000)


def test_workers_are_capped_by_the_cores():
    from pipeline.workers import available_cpus, resolve_workers

    assert resolve_workers(1000, "CPU") == available_cpus()
    assert resolve_workers(1000, "GPU x1", cpus=16) == 16 and resolve_workers(3, "CPU", cpus=16) == 3


@requires_shared
def test_workers_and_batch_size_beyond_the_photos_are_bounded(tmp_path, monkeypatch, small_backbone):
    """--workers 1000 --batch-size 100000 on 4 photos: decoders capped by the cores (said in one line),
    and no batch padded beyond the 4 rows (it used to pad 99,996 blank images)."""
    import pipeline.extraction.partition as partition
    from pipeline.backbones import Backbone, as_config
    from pipeline.workers import available_cpus

    as_config(small_backbone)  # the command below reuses it (same recipe): no second build
    src = link_subset(DVC, tmp_path / "src", kaggle_names(2))
    sizes, decoders = [], []
    real_embed, real_batches = Backbone.embed, partition.decoded_batches

    def embed(self, images, batch_size=32):
        sizes.append(batch_size)
        return real_embed(self, images, batch_size)

    def batches(source, items, size, workers, processes):
        decoders.append(workers)
        return real_batches(source, items, size, workers, processes)

    monkeypatch.setattr(Backbone, "embed", embed)
    monkeypatch.setattr(partition, "decoded_batches", batches)
    r = invoke("extract-features", src, "-o", tmp_path / "o.h5", *SMALL, "--workers", "1000", "--batch-size",
               "100000", "--decode", "threads", "--precision", "float32")  # threads: a many-core CI machine would start a process per core
    assert r.exit_code == 0, r.output
    assert f"--workers 1000 capped to {available_cpus()}" in r.output
    assert sizes and max(sizes) == 4 and decoders == [available_cpus()]
    from pipeline.store import open_store

    with open_store(tmp_path / "o.h5") as store:
        assert store.n_rows == 4


# --- B. one-line errors ------------------------------------------------------------------------

def test_a_negative_seed_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "o.h5"
    one_line_error(invoke("extract-features", tmp_path, "-o", out, "--seed", "-1"), "-1 is not in the range x>=0",
                   code=2)
    from pipeline.errors import OptionError
    from pipeline.extract import extract_features
    from pipeline.images import ImageSource

    source = ImageSource(tmp_path, "folder", ["a/1.jpg"], ["a"], ["a"])
    with pytest.raises(OptionError, match="seed must be an integer >= 0, got -1"):
        extract_features(source, out, object(), seed=-1)  # type: ignore[arg-type]
    assert not out.exists() and not Path(f"{out}.parts").exists() and not Path(f"{out}.lock").exists()


def test_a_csv_path_or_label_holding_a_nul_byte_is_one_line(tmp_path):
    (tmp_path / "m.csv").write_text("path,label\na.jpg,cat\nb\x00.jpg,cat\nc.jpg,d\x00g\n")
    one_line_error(invoke("extract-features", tmp_path / "m.csv", "-o", tmp_path / "o.h5"),
                   "line 3: its path holds a NUL character", "line 4: its label holds a NUL character")
    from pipeline.images.paths import file_problem

    assert file_problem("a\x00b.jpg") == "the file name holds a NUL character"


def test_many_repeated_manifest_rows_are_one_summary_warning(tmp_path):
    from pipeline.images import list_images

    (tmp_path / "m.csv").write_text("path,label\n" + "cat/0.jpg,cat\n" * 100_000 + "dog/0.jpg,dog\n")
    with pytest.warns(UserWarning) as caught:
        source = list_images(tmp_path / "m.csv")
    texts = [str(w.message) for w in caught]
    assert len(texts) == 1, texts[:3]
    assert "99,999 rows repeat a path listed before" in texts[0] and "each path is used once" in texts[0]
    assert source.paths == ["cat/0.jpg", "dog/0.jpg"]


def _embeddings(folder: Path, meta: bytes | None, X: np.ndarray) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "img_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    np.save(folder / "img_emb" / "img_emb_0.npy", X)
    table = pa.table({"label": ["a", "b", "a"][:len(X)] or ["a"]})
    if meta is not None:
        table = table.replace_schema_metadata({"incremental_pipeline": meta})
    pq.write_table(table.slice(0, len(X)), folder / "metadata" / "metadata_0.parquet")
    return folder


@pytest.mark.parametrize("meta, message", [
    (b"{not json", "is not JSON"),
    (b"[1, 2]", "is a JSON list; expected an object"),
    (json.dumps({"classes": ["a", {"x": 1}]}).encode(), "classes[1] is a dict; expected a class name"),
    (json.dumps({"classes": "ab"}).encode(), "'classes' is a str; expected a list of class names"),
    (json.dumps({"classes": ["a", "a"]}).encode(), "class 'a' is listed twice"),
    (json.dumps({"store": {"backbone": {"x": [1]}}}).encode(), "store attribute 'backbone'"),
], ids=["not-json", "list", "dict-class", "classes-str", "duplicate-class", "nested-store"])
def test_import_refuses_crafted_schema_metadata_in_one_line(tmp_path, meta, message):
    pytest.importorskip("pyarrow")
    src = _embeddings(tmp_path / "emb", meta, np.ones((3, 4), np.float32))
    one_line_error(invoke("import", src, "-o", tmp_path / "s.h5", "-q"), "metadata_0.parquet", message)
    assert not (tmp_path / "s.h5").exists()


def test_import_of_embeddings_without_values_is_one_line(tmp_path):
    pytest.importorskip("pyarrow")
    src = _embeddings(tmp_path / "emb", None, np.ones((3, 0), np.float32))
    one_line_error(invoke("import", src, "-o", tmp_path / "s.h5", "-q"), "shape (3, 0)", "dim >= 1")


def test_an_increment_covering_every_class_is_refused(tmp_path):
    store = make_blobs_store(tmp_path / "s.h5", 60, 8, ["x", "y", "z"])
    one_line_error(invoke("train-incremental", store, "--head", "slda", "--increment", "10", "--holdout", "0.3",
                          "-q"), "--increment 10 puts all 3 classes in one task", "expected 1 to 2")


def test_layer_without_model_is_refused(tmp_path):
    one_line_error(invoke("extract-features", tmp_path, "-o", tmp_path / "o.h5", "--layer", "conv1"),
                   "--layer names a layer of your own model", code=2)


def test_info_names_the_reason_once_without_an_empty_one(tmp_path):
    path = tmp_path / "x.model"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("model.json", "{bad")
    line = one_line_error(invoke("info", path), "as a model: model.json is not valid JSON")
    assert ": :" not in line


# --- C. crafted models are validated when loaded ----------------------------------------------------

@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A model of each kind of state (statistics, exemplars, a linear model, a network) on one store."""
    folder = tmp_path_factory.mktemp("models")
    store = make_blobs_store(folder / "s.h5", 60, 8, ["x", "y", "z"], seed=1)
    out = {"store": store}
    for key, head, extra in (("slda", "slda", []), ("nme", "nme", []), ("logreg", "logreg", []),
                             ("fecam", "fecam", []), ("mlp", "mlp", ["--hidden", "4"]),
                             ("replay", "logreg", ["--replay", "--increment", "1", "--holdout", "0.3"])):
        out[key] = folder / f"{key}.model"
        r = invoke("train-incremental", store, "--head", head, *extra, "--model-out", out[key], "-q")
        assert r.exit_code == 0, r.output
    return out


def craft(src: Path, dst: Path, edit=None, arrays: dict[str, np.ndarray] | None = None) -> Path:
    """A copy of model ``src`` with its model.json edited by ``edit(doc)`` and some arrays replaced."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        doc = json.loads(zin.read("model.json"))
        if edit is not None:
            edit(doc)
        zout.writestr("model.json", json.dumps(doc))
        for name in zin.namelist():
            if name == "model.json":
                continue
            if arrays and name in arrays:
                buf = io.BytesIO()
                np.save(buf, arrays[name])
                zout.writestr(name, buf.getvalue())
            else:
                zout.writestr(name, zin.read(name))
    return dst


def _state(doc: dict) -> dict:
    return doc["model"]["head"]["state"]


def _set(*keys: str, value: object):
    def edit(doc: dict) -> None:
        target = doc
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return edit


HEAD = ("model", "head", "state")
CRAFTED = {
    "n_features_in_-null": ("slda", _set(*HEAD, "n_features_in_", value=None), None,
                            "n_features_in_ is None (NoneType); expected an integer >= 1"),
    "n_features_in_-text": ("logreg", _set(*HEAD, "n_features_in_", value="8"), None,
                            "n_features_in_ is '8' (str); expected an integer >= 1"),
    "rows_seen_-text": ("nme", _set(*HEAD, "rows_seen_", value="60"), None, "rows_seen_ is '60' (str)"),
    "nested-counter-text": ("logreg", _set(*HEAD, "model_", "state", "count", value="60"), None,
                            "head.model_.count is '60' (str)"),
    "duplicate-classes-stats": ("slda", _set(*HEAD, "classes_", value=["x", "x", "y"]), None,
                                "class 'x' appears twice in classes_"),
    "duplicate-classes-exemplars": ("nme", _set(*HEAD, "classes_", value=["y", "z", "y"]), None,
                                    "class 'y' appears twice in classes_"),
    "class-a-dict": ("fecam", _set(*HEAD, "classes_", value=["x", {"a": 1}, "z"]), None,
                     "classes_[1] is a dict"),
    "stats-counts-short": ("slda", None, {"head/stats_/counts_.npy": np.array([20, 20])},
                           "head.stats_.counts_ has shape (2,); expected (C,) with C = 3"),
    "stats-means-text": ("slda", None, {"head/stats_/means_.npy": np.full((3, 8), "a")},
                         "head.stats_.means_ is an array of dtype <U1"),
    "nme-sums-short": ("nme", None, {"head/sums_.npy": np.zeros((2, 8))}, "head.sums_ has shape (2, 8)"),
    "fecam-scatter-wrong": ("fecam", None, {"head/shifted_.npy": np.zeros((3, 8, 7))}, "shifted_ has shape (3, 8, 7)"),
    "linear-bias-short": ("logreg", None, {"head/model_/b.npy": np.zeros(2)}, "b (2,)"),
    "mlp-layer-wrong": ("mlp", None, {"head/params_/0.npy": np.zeros((7, 4), np.float32)},
                        "layer 1 has weights of shapes (7, 4)"),
    "mlp-negative-steps": ("mlp", None, {"head/column_steps_.npy": np.full(3, -5, np.int64)},
                           "column_steps_ holds int64 values down to -5"),
    "feature_dim-text": ("slda", _set("model", "backbone", "feature_dim", value="8"), None,
                         "backbone feature_dim is '8'"),
    "replay-exemplars-wrong": ("replay", None, {"replay/memory/sets/x/X.npy": np.zeros((3, 5), np.float32)},
                               "exemplars of 'x'.X has shape (3, 5)"),
    "settings-out-of-range": ("nme", _set(*HEAD, "memory", value=-5), None, "its settings do not fit nme"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_models_are_refused_when_loaded_in_one_line(tmp_path, models, case):
    head, edit, arrays, message = CRAFTED[case]
    path = craft(models[head], tmp_path / "crafted.model", edit, arrays)
    for args in (["info", path], ["evaluate", path, models["store"]],
                 ["train-incremental", models["store"], "--resume", path, "-q"]):
        one_line_error(invoke(*args), "crafted.model", message)


def test_the_genuine_models_load_and_their_state_checks_pass(models):
    from pipeline.heads.state_check import check_head
    from pipeline.models import load_model

    for head in ("slda", "nme", "logreg", "fecam", "mlp", "replay"):
        check_head(load_model(models[head]).head)


def test_a_checkpoint_whose_progress_holds_text_for_a_count_is_refused_on_resume(tmp_path, models):
    def interrupted_with_text(doc: dict) -> None:  # an interrupted run, which a resume continues
        doc["model"]["progress"].update(done=False, rows="60")

    path = craft(models["slda"], tmp_path / "crafted.model", interrupted_with_text)
    one_line_error(invoke("train-incremental", models["store"], "--resume", path, "-q"),
                   "the checkpoint's progress rows is '60'; expected a count")
