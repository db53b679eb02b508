"""Reliability round 3: every writing command locks its output, crafted stores and parts folders,
bounded inputs, leftovers of killed runs.

Concurrent runs are real: a second process holds the output's lock (as a run in progress does).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import make_blobs_store
from pipeline.cli import main

ROOT = Path(__file__).resolve().parents[1]


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, *expected: str) -> None:
    """Exit status 1, no traceback, a single line naming every ``expected`` text."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    for text in expected:
        assert text in lines[0], result.output


def hold_lock(out: Path) -> subprocess.Popen:
    """A real second process holding the output lock of ``out``, as a run in progress does."""
    code = ("import sys, time; from pathlib import Path; from pipeline.extraction.lock import output_lock\n"
            "with output_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(120)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


def release(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """Two slda models of disjoint stores (mergeable), and their stores."""
    folder = tmp_path_factory.mktemp("models")
    a = make_blobs_store(folder / "a.h5", 60, 8, ["x", "y", "z"], seed=1)
    b = make_blobs_store(folder / "b.h5", 60, 8, ["x", "y", "z"], seed=2)
    for store, model in ((a, folder / "a.model"), (b, folder / "b.model")):
        r = invoke("train-incremental", store, "--head", "slda", "--model-out", model, "-q")
        assert r.exit_code == 0, r.output
    return folder / "a.model", folder / "b.model", a, b


# --- every writing command takes the output lock ------------------------------------------------

def _commands(tmp: Path, models) -> dict[str, tuple[Path, list[object]]]:
    a_model, b_model, a, b = models
    emb = tmp / "emb"
    r = invoke("export", a, "-o", emb, "-q")
    assert r.exit_code == 0, r.output
    return {
        "import": (tmp / "imp.h5", ["import", emb, "-o", tmp / "imp.h5", "-q"]),
        "export": (tmp / "exp", ["export", a, "-o", tmp / "exp", "-q"]),
        "merge": (tmp / "m.model", ["merge", a_model, b_model, "-o", tmp / "m.model"]),
        "model-out": (tmp / "t.model", ["train-incremental", a, "--head", "slda", "--model-out", tmp / "t.model", "-q"]),
        "metrics-out": (tmp / "t.json", ["train-incremental", a, "--head", "slda", "--metrics-out", tmp / "t.json",
                                         "-q"]),
        "log-dir": (tmp / "logs", ["train-incremental", a, "--head", "slda", "--log-dir", tmp / "logs", "-q"]),
        "resume": (a_model, ["train-incremental", b, "--resume", a_model, "-q"]),
        "evaluate": (tmp / "e.json", ["evaluate", a_model, a, "--metrics-out", tmp / "e.json"]),
        "migrate": (tmp / "mig.model", ["migrate-model", a_model, "-o", tmp / "mig.model"]),
    }


COMMANDS = ["import", "export", "merge", "model-out", "metrics-out", "log-dir", "resume", "evaluate", "migrate"]


@pytest.mark.parametrize("name", COMMANDS)
def test_a_second_run_of_a_writing_command_on_one_output_is_refused_in_one_line(tmp_path, two_models, name):
    out, args = _commands(tmp_path, two_models)[name]
    before = out.read_bytes() if out.is_file() else None
    holder = hold_lock(out)
    try:
        one_line_error(invoke(*args), "another run is writing", f"{out.name}.lock")
        assert (out.read_bytes() if out.is_file() else None) == before  # untouched while the other run holds it
        if before is None:
            assert not out.exists()
    finally:
        release(holder)
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    assert out.exists() and not out.with_name(out.name + ".lock").exists()


def test_import_exists_check_is_made_under_the_lock(tmp_path, two_models, monkeypatch):
    """The run that waited behind another import finds the output written and refuses (no silent loss)."""
    import pipeline.interop as interop

    emb = tmp_path / "emb"
    assert invoke("export", two_models[2], "-o", emb, "-q").exit_code == 0
    out = tmp_path / "s.h5"
    real = interop.output_locks

    def other_run_finishes_first(*paths):
        monkeypatch.setattr(interop, "output_locks", real)
        assert invoke("import", emb, "-o", out, "-q").exit_code == 0  # wins the race
        return real(*paths)

    monkeypatch.setattr(interop, "output_locks", other_run_finishes_first)
    one_line_error(invoke("import", emb, "-o", out, "-q"), "exists; pass --overwrite")
    assert out.exists()


def test_stale_temporaries_of_dead_runs_are_removed_by_the_rerun(tmp_path, two_models):
    emb = tmp_path / "emb"
    assert invoke("export", two_models[2], "-o", emb, "-q").exit_code == 0
    out = tmp_path / "s.h5"
    dead = [tmp_path / "s.h5.999999.0badcafe.tmp", tmp_path / "s.h5.999998.tmp"]
    for path in dead:
        path.write_bytes(b"half written")
    other = tmp_path / "s.h5x.1234.tmp"  # another output's file is not touched
    other.write_bytes(b"")
    assert invoke("import", emb, "-o", out, "-q").exit_code == 0
    assert not any(p.exists() for p in dead) and other.exists()


def test_export_overwrite_replaces_only_an_earlier_export(tmp_path, two_models):
    store = two_models[2]
    user = tmp_path / "thesis"
    (user / "chapter").mkdir(parents=True)
    (user / "thesis.txt").write_text("years of work")
    one_line_error(invoke("export", store, "-o", user, "--overwrite", "-q"), "is not an export", "--overwrite")
    assert (user / "thesis.txt").read_text() == "years of work" and (user / "chapter").is_dir()
    emb = tmp_path / "emb"
    assert invoke("export", store, "-o", emb, "-q").exit_code == 0
    (emb / "notes.txt").write_text("mine")  # a user's file inside an export: refused too
    one_line_error(invoke("export", store, "-o", emb, "--overwrite", "-q"), "it holds notes.txt")
    (emb / "notes.txt").unlink()
    r = invoke("export", store, "-o", emb, "--overwrite", "--format", "parquet", "-q")
    assert r.exit_code == 0, r.output
    assert list((emb / "img_emb").glob("*.parquet")) and not (emb / "metadata").exists()


@pytest.mark.parametrize("target", [".", "/"])
def test_export_into_the_current_or_root_folder_is_refused(tmp_path, two_models, monkeypatch, target):
    monkeypatch.chdir(tmp_path)
    one_line_error(invoke("export", two_models[2], "-o", target, "--overwrite", "-q"), "refusing to export into")


# --- crafted stores: nothing outside the file is read ---------------------------------------------

def _crafted(tmp: Path, kind: str) -> Path:
    import h5py

    other = make_blobs_store(tmp / "other.h5", 30, 8, ["x", "y"], seed=5)
    path = make_blobs_store(tmp / "crafted.h5", 30, 8, ["x", "y"], seed=6)
    with h5py.File(path, "r+") as f:
        if kind == "external-link":
            del f["features"]
            f["features"] = h5py.ExternalLink(str(other), "features")
        elif kind == "virtual":
            layout = h5py.VirtualLayout(shape=(30, 8), dtype="float32")
            layout[:] = h5py.VirtualSource(str(other), "features", shape=(30, 8))
            del f["features"]
            f.create_virtual_dataset("features", layout)
        elif kind == "soft-loop":
            del f["features"]
            f["features"] = h5py.SoftLink("/loop")
            f["loop"] = h5py.SoftLink("/features")
        elif kind == "dangling-external":
            del f["labels"]
            f["labels"] = h5py.ExternalLink(str(tmp / "gone.h5"), "labels")
        elif kind == "external-not-hdf5":
            (tmp / "text.txt").write_text("not hdf5")
            del f["labels"]
            f["labels"] = h5py.ExternalLink(str(tmp / "text.txt"), "labels")
        elif kind == "external-skipped":
            del f["skipped"]
            f["skipped"] = h5py.ExternalLink(str(other), "skipped")
        elif kind == "raw-external":
            data = f["features"][:]
            del f["features"]
            raw = tmp / "raw.bin"
            raw.write_bytes(data.tobytes())
            f.create_dataset("features", shape=data.shape, dtype=data.dtype, external=[(str(raw), 0, data.nbytes)])
    return path


KINDS = ["external-link", "virtual", "soft-loop", "dangling-external", "external-not-hdf5", "external-skipped",
         "raw-external"]


@pytest.mark.parametrize("kind", KINDS)
def test_crafted_stores_pointing_outside_their_file_are_refused_in_one_line(tmp_path, kind, two_models):
    store = _crafted(tmp_path, kind)
    for args in (["info", store], ["train-incremental", store, "--head", "slda", "-q"],
                 ["evaluate", two_models[0], store], ["export", store, "-o", tmp_path / "emb", "-q"]):
        one_line_error(invoke(*args), "crafted.h5", "refused")
    assert not (tmp_path / "emb").exists()


def _parts_folder(tmp: Path, shards: object) -> Path:
    import json

    folder = tmp / "s.h5.parts"
    folder.mkdir()
    make_blobs_store(folder / "shard-0.h5", 20, 8, ["x", "y"], seed=3)
    (folder / "manifest.json").write_text(json.dumps({"format": "incremental-pipeline-parts", "format_version": 1,
                                                      "complete": True, "shards": shards}))
    return folder


@pytest.mark.parametrize("shards, message", [
    ("OUTSIDE_ABS", "expected a file name inside"),
    ([{"name": "../other.h5", "rows": 30}], "expected a file name inside"),
    ("SYMLINK", "outside"),
    ([{"name": "shard-0.h5", "rows": "20"}], "expected a count"),
    ([{"name": "shard-0.h5"}], "expected {\"name\": FILE, \"rows\": COUNT}"),
    ([{"name": 7, "rows": 20}], "is named 7"),
    ({"name": "shard-0.h5"}, "'shards' is dict; expected a list"),
], ids=["absolute", "dotdot", "symlink", "rows-string", "missing-rows", "name-int", "not-a-list"])
def test_parts_manifests_cannot_leave_their_folder_or_hold_wrong_types(tmp_path, shards, message):
    other = make_blobs_store(tmp_path / "other.h5", 30, 8, ["x", "y"], seed=5)
    if shards == "OUTSIDE_ABS":
        shards = [{"name": str(other), "rows": 30}]
    if shards == "SYMLINK":
        shards = [{"name": "shard-1.h5", "rows": 30}]
    folder = _parts_folder(tmp_path, shards)
    if (folder / "manifest.json").read_text().count("shard-1.h5"):
        (folder / "shard-1.h5").symlink_to(other)
    for args in (["info", folder], ["train-incremental", folder, "--head", "slda", "-q"]):
        one_line_error(invoke(*args), "manifest.json", message)


# --- a real full disk (a small tmpfs) --------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs; ``fill(free_kb)`` leaves that much free, ``free()`` empties it again."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}): needs root")

    class Disk:
        path = mnt

        def fill(self, free_kb: int) -> None:
            st = os.statvfs(mnt)
            size = st.f_bavail * st.f_frsize - free_kb * 1024
            with open(mnt / "filler", "wb") as fh:
                fh.write(b"\0" * max(0, size))

        def free(self) -> None:
            (mnt / "filler").unlink(missing_ok=True)

    try:
        yield Disk()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _run(*args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONFAULTHANDLER": "1"}
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.parametrize("free_kb", [8, 100, 400])
def test_a_real_full_disk_is_one_line_no_crash_and_the_rerun_after_freeing_space_works(tmp_path, small_disk,
                                                                                        free_kb):
    store = make_blobs_store(tmp_path / "big.h5", 3000, 64, ["a", "b", "c"])
    emb = tmp_path / "emb"
    assert invoke("export", store, "-o", emb, "-q").exit_code == 0
    disk = small_disk.path
    cases = {"import": ["import", emb, "-o", disk / "i.h5", "-q"],
             "export": ["export", store, "-o", disk / "e", "-q"]}
    for name, args in cases.items():
        small_disk.fill(free_kb)
        r = _run(*args)
        assert r.returncode == 1, (name, r.returncode, r.stderr[-2000:])
        errors = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(errors) == 1 and "No space left on device" in errors[0] and str(disk) in errors[0], r.stderr
        assert not [p for p in disk.iterdir() if p.name != "filler"], list(disk.iterdir())
        small_disk.free()
        r = _run(*args)
        assert r.returncode == 0, r.stderr
        subprocess.run(["rm", "-rf", str(args[3])], check=True)  # room for the next command


def test_training_logs_on_a_full_disk_still_save_the_model_elsewhere(tmp_path, small_disk):
    store = make_blobs_store(tmp_path / "big.h5", 3000, 64, ["a", "b", "c"])
    small_disk.fill(8)
    model = tmp_path / "t.model"
    r = _run("train-incremental", store, "--head", "slda", "--log-dir", small_disk.path / "logs", "--model-out",
             model, "--eval-every", "300", "--chunk-rows", "100", "--holdout", "0.3", "-q")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "No space left on device" in errors[0] and str(model) in errors[0], r.stderr
    assert model.is_file()
