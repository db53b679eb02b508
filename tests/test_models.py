"""Model files hold only data: every head round-trips, crafted files run no code, faults are one line."""

from __future__ import annotations

import errno
import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import make_blobs_store
from pipeline.cli import main
from pipeline.errors import ModelFileError
from pipeline.heads import make_head
from pipeline.heads.exemplars import ExperienceReplay
from pipeline.models import MODEL_FORMAT, TrainedModel, load_model, save_model
from pipeline.runs import run_training
from pipeline.state_codec import CodecError, decode, encode

quiet = {"echo": lambda s: None, "out": lambda s: None, "quiet": True}
DIM = 12

HEADS = {
    "logreg-binary": ("logreg", {}, 2),
    "logreg-ovr": ("logreg", {}, 4),
    "logreg-no-scale-adam": ("logreg", {"scale": False, "optimizer": "adam"}, 3),
    "logreg-batches": ("logreg", {"batch_size": 16}, 3),
    "softmax": ("softmax", {}, 4),
    "softmax-adam-l2": ("softmax", {"optimizer": "adam", "l2": 0.01}, 3),
    "nme-exemplar": ("nme", {"memory": 24, "pool_size": 20}, 4),
    "nme-exact": ("nme", {"class_means": "exact", "memory": 24, "pool_size": 20}, 3),
    "slda": ("slda", {}, 4),
    "slda-fixed": ("slda", {"shrinkage": 0.3}, 3),
    "ridge-random-features": ("ridge", {"random_features": 40, "seed": 3}, 4),
    "ridge-fixed": ("ridge", {"ridge_lambda": 2.0}, 3),
}


def blobs(n: int, n_classes: int, seed: int = 0, labels: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2.0, (n_classes, DIM))
    k = rng.integers(0, n_classes, n)
    names = labels or [f"class-{i}" for i in range(n_classes)]
    return (centers[k] + rng.normal(0, 1.0, (n, DIM))).astype(np.float32), np.array([names[i] for i in k], dtype=object)


def trained(name: str, options: dict, n_classes: int, labels: list | None = None) -> tuple[TrainedModel, np.ndarray, np.ndarray]:
    """A model that learnt the first half (task 1: first half of the classes) with replay and a checkpoint."""
    X, y = blobs(400, n_classes, labels=labels)
    head = make_head(name, n_features=DIM, **options)
    replay = ExperienceReplay(budget=30, pool_size=15, seed=1)
    first = np.isin(y, np.unique(y)[: max(1, n_classes // 2)])[:200]
    for Xc, yc in ((X[:200][first], y[:200][first]), (X[:200][~first], y[:200][~first])):
        Xm, ym, _ = replay.mix(Xc, yc, [f"p{i}.jpg" for i in range(len(Xc))], (0, len(Xc)))
        head.progressive_fit(Xm, ym)
        head.end_task()
        replay.end_task()
    progress = {"key": "abc", "rows": 200, "curve": [{"rows_seen": 100, "progressive_accuracy": float("nan")}],
                "matrix": [[0.5, None]], "done": False}
    model = TrainedModel(head, name, {"backbone": "synthetic", "feature_dim": DIM}, stores=[{"path": "a.h5", "rows": 200}],
                         history=[{"rows_seen": 200, "heldout_accuracy": 0.75}], progress=progress, replay=replay)
    return model, X, y


def continue_training(model: TrainedModel, X: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    """Learn the second half as train.py would (replay mixed in); everything observable along the way."""
    out = []
    for s in range(200, 400, 50):
        Xm, ym, own = model.replay.mix(X[s:s + 50], y[s:s + 50], None, (1, s))
        out += [Xm, ym.astype(str), model.head.progressive_fit(Xm, ym)[own].astype(str)]
    model.head.end_task()
    model.replay.end_task()
    return out + [model.head.predict_proba(X), model.head.predict(X).astype(str)]


@pytest.mark.parametrize("key", sorted(HEADS))
def test_every_head_round_trips_and_resumes_identically(tmp_path, key):
    name, options, n_classes = HEADS[key]
    model, X, y = trained(name, options, n_classes)
    save_model(model, tmp_path / "m.model")
    loaded = load_model(tmp_path / "m.model")
    assert loaded.head is not model.head and type(loaded.head) is type(model.head)
    np.testing.assert_array_equal(loaded.head.predict_proba(X), model.head.predict_proba(X))
    assert loaded.classes == model.classes and loaded.head.settings() == model.head.settings()
    assert (loaded.head_name, loaded.backbone, loaded.stores, loaded.history) == \
           (model.head_name, model.backbone, model.stores, model.history)
    assert json.dumps(loaded.progress) == json.dumps(model.progress)  # NaN and None kept
    for a, b in zip(continue_training(model, X, y), continue_training(loaded, X, y)):
        np.testing.assert_array_equal(a, b)


def test_labels_of_any_type_and_non_string_keys_are_kept(tmp_path):
    model, X, y = trained("nme", {"memory": 20, "pool_size": 10}, 3, labels=[7, 3, 11])
    model.head.partial_fit(X[:5], [np.int64(5)] * 5)  # a numpy label stays numpy
    save_model(model, tmp_path / "m.model")
    loaded = load_model(tmp_path / "m.model")
    assert loaded.classes == model.classes and [type(c) for c in loaded.classes] == [int, int, int, np.int64]
    assert list(loaded.head.memory_.sets) == list(model.head.memory_.sets)
    assert list(loaded.head.pools_.pools) == list(model.head.pools_.pools) == [np.int64(5)]
    np.testing.assert_array_equal(loaded.head.predict_proba(X), model.head.predict_proba(X))


def test_codec_keeps_types_identity_and_refuses_what_it_cannot_store():
    shared = np.arange(4.0)
    value = {1: shared, (2, "b"): [shared, np.float32(1.5), np.str_("s"), 1 + 2j, float("-inf")],
             "objects": np.array(["a", 3, None], dtype=object), "__x": b"".decode(), "rng": np.random.default_rng(5)}
    doc, arrays = encode(value)
    json.dumps(doc, allow_nan=False)  # plain JSON
    back = decode(json.loads(json.dumps(doc)), arrays.__getitem__)
    assert back[1] is back[(2, "b")][0] and list(arrays) == ["1"]
    assert type(back[(2, "b")][1]) is np.float32 and type(back[(2, "b")][2]) is np.str_
    assert back[(2, "b")][3:] == [1 + 2j, float("-inf")]
    assert back["objects"].dtype == object and back["objects"].tolist() == ["a", 3, None]
    assert back["rng"].integers(0, 10**9) == np.random.default_rng(5).integers(0, 10**9)
    for bad in (lambda x: x, print, Path("x"), np.array([(1, 2.0)], dtype="i4,f8"), {"f": io.BytesIO()}):
        with pytest.raises(CodecError, match="cannot store|cannot be stored"):
            encode({"head": bad})


def test_saving_an_unstorable_head_is_a_clear_error(tmp_path):
    model, _, _ = trained("slda", {}, 2)
    model.head.callback = print
    with pytest.raises(ModelFileError, match="head/callback holds a builtins.builtin_function_or_method"):
        save_model(model, tmp_path / "m.model")
    assert not (tmp_path / "m.model").exists()


# -- crafted and damaged files ------------------------------------------------------

class Marker:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def rewrite(src: Path, dst: Path, edit_document=None, members: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "model.json" and edit_document:
                doc = json.loads(data)
                edit_document(doc)
                data = json.dumps(doc).encode()
            if members and info.filename in members:
                data = members.pop(info.filename)
            zout.writestr(info.filename, data)
        for name, data in (members or {}).items():
            zout.writestr(name, data)
    return dst


@pytest.fixture()
def saved(tmp_path) -> Path:
    model, _, _ = trained("softmax", {}, 3)
    save_model(model, tmp_path / "good.model")
    return tmp_path / "good.model"


def pickle_npy(marker: Path) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([Marker(marker)], dtype=object), allow_pickle=True)
    return buf.getvalue()


def test_crafted_files_are_refused_without_running_code(tmp_path, saved):
    marker = tmp_path / "ran"

    def foreign_class(doc):
        doc["model"]["head"]["__object__"] = "subprocess.Popen"

    def foreign_module(doc):
        doc["model"]["replay"] = {"__object__": "os.system", "ref": "r", "state": {}}

    def pickle_member(doc):
        doc["model"]["head"] = {"__pickle__": "head.pickle"}

    cases = {
        "foreign class": (rewrite(saved, tmp_path / "a.model", foreign_class), "may not hold"),
        "foreign module": (rewrite(saved, tmp_path / "b.model", foreign_module), "may not hold"),
        "pickled array": (rewrite(saved, tmp_path / "c.model", members={"head/model_/W.npy": pickle_npy(marker)}),
                          "array 'head/model_/W' is damaged (dtype object is not allowed)"),
        "pickle member": (rewrite(saved, tmp_path / "d.model", pickle_member,
                                  members={"head.pickle": pickle.dumps(Marker(marker))}), "--trust-pickle"),
        "version-1 pickle": (tmp_path / "e.pkl", "migrate-model"),
    }
    (tmp_path / "e.pkl").write_bytes(pickle.dumps({"format": MODEL_FORMAT, "version": 1, "model": Marker(marker)}))
    for what, (path, message) in cases.items():
        with pytest.raises(ModelFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_model(path)
        assert not marker.exists(), what
    assert pickle.loads(pickle.dumps(Marker(marker))) and marker.exists()  # the marker does work when unpickled


def test_wrong_payloads_and_other_files_are_one_line_errors(tmp_path, saved):
    buf = io.BytesIO()
    np.save(buf, np.zeros(10**6))
    huge_header = buf.getvalue()[:128]  # a header promising 8 MB over a member of 128 bytes
    data = saved.read_bytes()
    with zipfile.ZipFile(saved) as z:
        w_offset = z.getinfo("head/model_/W.npy").header_offset

    def wrong_shape(doc):
        doc["model"]["head"]["state"]["classes_"].append("ghost")

    def no_format(doc):
        doc["format"] = "something-else"

    def future(doc):
        doc["format_version"] = 99

    def dunder(doc):
        doc["model"]["head"]["state"]["__class__"] = "x"

    def huge_objects(doc):
        doc["model"]["progress"] = {"__objects__": [10**12], "ref": "r", "items": []}

    store = make_blobs_store(tmp_path / "s.h5", 20, DIM, ["a", "b"])
    files = {
        "truncated": (data[: len(data) // 2], "truncated or damaged"),
        "bit flip": (data[:w_offset + 200] + bytes([data[w_offset + 200] ^ 0xFF]) + data[w_offset + 201:], "damaged"),
        "empty": (b"", "is empty"),
        "text": (b"hello, I am not a model\n", "is not a model file"),
        "store": (store.read_bytes(), "is an HDF5 file"),
        "npz": (None, "no member 'model.json'"),
        "lying header": (rewrite(saved, tmp_path / "x1", members={"head/model_/W.npy": huge_header}).read_bytes(),
                         "the member holds"),
        "inconsistent": (rewrite(saved, tmp_path / "x2", wrong_shape).read_bytes(), "inconsistent model"),
        "other format": (rewrite(saved, tmp_path / "x3", no_format).read_bytes(), "not a model file saved by"),
        "newer": (rewrite(saved, tmp_path / "x4", future).read_bytes(), "reads up to 2"),
        "bad json": (None, "not valid JSON"),
        "deep json": (None, "maximum recursion depth"),
        "dunder state": (rewrite(saved, tmp_path / "x5", dunder).read_bytes(), "not a dict of plain attributes"),
        "huge object array": (rewrite(saved, tmp_path / "x6", huge_objects).read_bytes(), "holds 0 items"),
    }
    for what, (content, message) in files.items():
        path = tmp_path / f"{what.replace(' ', '_')}.model"
        if what == "npz":
            np.savez(path, a=np.zeros(3))
            path = path.with_name(path.name + ".npz")
        elif what in ("bad json", "deep json"):
            with zipfile.ZipFile(path, "w") as z:
                z.writestr("model.json", b"{not json" if what == "bad json" else b"[" * 10**5 + b"]" * 10**5)
        else:
            path.write_bytes(content)
        with pytest.raises(ModelFileError, match=message) as info:
            load_model(path)
        assert "\n" not in str(info.value), what
        result = CliRunner().invoke(main, ["evaluate", str(path), str(store)])
        assert result.exit_code == 1 and "Traceback" not in result.output, (what, result.output)
        assert result.output.startswith("Error: ") and result.output.count("\n") == 1, (what, result.output)


def test_full_disk_while_saving_keeps_the_previous_model(tmp_path, saved, monkeypatch):
    before = saved.read_bytes()
    model = load_model(saved)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np.lib.format, "write_array", disk_full)
    with pytest.raises(ModelFileError, match="No space left on device; the previous file is unchanged"):
        save_model(model, saved)
    assert saved.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.model"]  # no temporary file left


# -- pickles: River's estimators and version-1 files ---------------------------------

def test_river_models_load_only_with_trust_pickle(tmp_path):
    store = make_blobs_store(tmp_path / "s.h5", 200, DIM, ["a", "b", "c"])
    path = tmp_path / "river.model"
    run_training([store], head="logreg", head_options={"engine": "river"}, model_out=path, **quiet)
    with pytest.raises(ModelFileError, match="River estimators .* pass --trust-pickle only if you trust this file"):
        load_model(path)
    with zipfile.ZipFile(path) as z:
        assert json.loads(z.read("model.json"))["storage"] == "pickle"
    assert load_model(path, trust_pickle=True).head.rows_seen_ == 200
    for args in (["evaluate", path, store], ["train-incremental", store, "--resume", path, "-q"],
                 ["merge", path, path, "-o", tmp_path / "m.model"]):
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 1 and "--trust-pickle" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["evaluate", str(path), str(store), "--trust-pickle"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["train-incremental", str(store), "--resume", str(path), "-q", "--trust-pickle"])
    assert result.exit_code == 0, result.output


def test_version_1_pickles_need_trust_and_migrate(tmp_path):
    store = make_blobs_store(tmp_path / "s.h5", 300, DIM, ["a", "b", "c"])
    new = tmp_path / "new.model"
    run_training([store], head="softmax", model_out=new, **quiet)
    model = load_model(new)
    old = tmp_path / "old.pkl"
    old.write_bytes(pickle.dumps({"format": MODEL_FORMAT, "version": 1, "model": model}))
    result = CliRunner().invoke(main, ["evaluate", str(old), str(store)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"pipeline migrate-model {old} -o NEW.model --trust-pickle" in result.output
    result = CliRunner().invoke(main, ["migrate-model", str(old), "-o", str(tmp_path / "m.model")])
    assert result.exit_code == 1 and "version-1 model file" in result.output and not (tmp_path / "m.model").exists()
    result = CliRunner().invoke(main, ["migrate-model", str(old), "-o", str(tmp_path / "m.model"), "--trust-pickle"])
    assert result.exit_code == 0 and "it holds only data" in result.output, result.output
    migrated = load_model(tmp_path / "m.model")
    X, _ = blobs(50, 3)
    np.testing.assert_array_equal(migrated.head.predict_proba(X), model.head.predict_proba(X))
    assert CliRunner().invoke(main, ["evaluate", str(old), str(store), "--trust-pickle"]).exit_code == 0


def test_readme_reading_example(saved):
    with np.load(saved) as f:  # numpy alone, allow_pickle=False
        meta = json.loads(f["model.json"])
        W, b = f["head/model_/W"], f["head/model_/b"]
    assert meta["format"] == "incremental-pipeline-model" and meta["head_name"] == "softmax"
    assert W.shape == (len(meta["classes"]), DIM) and b.shape == (len(meta["classes"]),)
