"""Fault injection for extraction: kills, full disks, concurrent runs, odd names, --overwrite.

Real photos and MobileNet 0.25/128 weights from ../shared. Full disks are
simulated by injecting the errors Python and h5py raise (OSError ENOSPC and
h5py's RuntimeError with errno 28) at each write site: no special mount.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
from click.testing import CliRunner

import pipeline.extraction.finalize as finalize_module
import pipeline.extraction.partition as partition_module
import pipeline.store_parts as parts_module
from conftest import DVC, WEIGHTS_025, assert_same_store, kaggle_names, link_subset, requires_shared
from pipeline.cli import main
from pipeline.errors import StoreError
from pipeline.extract import extract_features
from pipeline.extraction.lock import output_lock
from pipeline.extraction.plan import make_plan, make_partitions
from pipeline.images import ImageSource, list_images
from pipeline.store import StoreWriter, atomic_path, open_store

SMALL = ["--backbone", "mobilenet", "--alpha", "0.25", "--image-size", "128", "--weights", str(WEIGHTS_025)]
OPTS = dict(batch_size=4, checkpoint_rows=4, progress=False)  # 4 files per partition
INFO = {"backbone": "synthetic", "weights": "none", "alpha": "", "input_size": [8, 8], "pooling": "avg",
        "preprocessing": "none", "feature_dim": 4}
H5_FULL = "Unable to synchronously write data (file write failed: errno = 28, error message = 'No space left on device')"


def _source(tmp_path: Path, per_class: int = 8) -> Path:
    src = link_subset(DVC, tmp_path / "src", kaggle_names(per_class))
    (src / "cat.999.jpg").write_bytes(b"\xff\xd8 broken")
    return src


# --- plan (no model needed) -------------------------------------------------------------------

def _fake_source(root: Path, n: int) -> ImageSource:
    root.mkdir(exist_ok=True)
    return ImageSource(root, "kaggle", [f"cat.{i}.jpg" for i in range(n)], ["cat"] * n, ["cat"])


def test_plan_finds_shards_missing_in_the_middle(tmp_path):
    source, out = _fake_source(tmp_path / "src", 50), tmp_path / "o.h5"
    plan = make_plan(source, out, INFO, batch_size=4, checkpoint_rows=10)  # 12 files per partition
    assert [(p.start, p.stop) for p in plan.partitions] == [(0, 12), (12, 24), (24, 36), (36, 48), (48, 50)]
    assert plan.missing == plan.partitions
    for part in (plan.partitions[0], plan.partitions[2], plan.partitions[4]):  # out of order, gaps between
        (plan.parts / part.name).write_bytes(b"")
    (plan.parts / (plan.partitions[1].name + ".tmp")).write_bytes(b"half")
    again = make_plan(source, out, INFO, batch_size=4, checkpoint_rows=999)  # the manifest's size is kept
    assert again.partitions == plan.partitions and again.run_id == plan.run_id
    assert again.missing == [plan.partitions[1], plan.partitions[3]]
    assert not list(plan.parts.glob("*.tmp"))


@pytest.mark.parametrize("change, name", [({"seed": 7}, "seed"), ({"batch_size": 8}, "batch_size"),
                                          ({"dtype": "float16"}, "dtype"), ({"shuffle": False}, "shuffle")])
def test_partial_run_with_other_settings_is_refused_naming_the_setting(tmp_path, change, name):
    source, out = _fake_source(tmp_path / "src", 20), tmp_path / "o.h5"
    make_plan(source, out, INFO, batch_size=4)
    with pytest.raises(StoreError, match=f"{name}: .* -> "):
        make_plan(source, out, INFO, **{"batch_size": 4, **change})
    assert make_plan(source, out, INFO, overwrite=True, **{"batch_size": 4, **change}).missing


def test_partitions_are_whole_batches():
    assert [len(p) for p in make_partitions(10, 4)] == [4, 4, 2]


# --- executors: any order gives the same store --------------------------------------------------

class ReversedExecutor:
    """Runs each partition on its own, last first: what out-of-order workers do."""

    name = "reversed"

    def backbone_info(self, config):
        return partition_module.backbone_for(config).info

    def run(self, job, parts, on_images):
        for part in reversed(list(parts)):
            result = partition_module.run_partition(job, part, decode_threads=1)
            on_images(len(part))
            yield result


@requires_shared
def test_any_executor_and_resume_give_a_bitwise_identical_store(tmp_path, small_backbone):
    src = list_images(_source(tmp_path, 9))
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    extract_features(src, a, small_backbone, workers=3, **OPTS)
    extract_features(src, b, small_backbone.config, executor=ReversedExecutor(), **OPTS)
    assert_same_store(a, b)
    with h5py.File(a) as f:
        assert f["features"].shape == (18, 256) and f.attrs["skipped_count"] == 1


# --- full disk and vanished folders at each write site -----------------------------------------

def _failing_writer(method: str, at: int, error: BaseException):
    calls = {"n": 0}

    class FailingWriter(StoreWriter):
        pass

    def wrapped(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at:
            raise error
        return getattr(StoreWriter, method)(self, *args, **kwargs)

    setattr(FailingWriter, method, wrapped)
    return FailingWriter


def _failing_atomic(at: int, error: BaseException):
    calls = {"n": 0}

    @contextlib.contextmanager
    def failing(path):
        with atomic_path(path) as tmp:
            yield tmp
            calls["n"] += 1
            if calls["n"] == at:  # the fsync / rename step
                raise error

    return failing


ENOSPC = OSError(errno.ENOSPC, "No space left on device")
SITES = {
    "shard append": (partition_module, "StoreWriter", lambda e: _failing_writer("append", 3, e)),
    "shard close": (partition_module, "StoreWriter", lambda e: _failing_writer("close", 2, e)),
    "shard rename": (partition_module, "atomic_path", lambda e: _failing_atomic(2, e)),
    "last shard": (partition_module, "StoreWriter", lambda e: _failing_writer("close", 5, e)),
    "merge append": (finalize_module, "StoreWriter", lambda e: _failing_writer("append", 2, e)),
    "merge rename": (finalize_module, "atomic_path", lambda e: _failing_atomic(1, e)),
    "manifest": (parts_module, "atomic_path", lambda e: _failing_atomic(1, e)),
}


@pytest.fixture(scope="module")
def fault_source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults")
    return list_images(_source(folder, 9))  # 19 files, 5 partitions


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory, fault_source, small_backbone):
    out = tmp_path_factory.mktemp("clean") / "clean.h5"
    extract_features(fault_source, out, small_backbone, **OPTS)
    return out


@requires_shared
@pytest.mark.parametrize("error", [ENOSPC, RuntimeError(H5_FULL)], ids=["OSError", "h5py-RuntimeError"])
@pytest.mark.parametrize("site", sorted(SITES))
def test_full_disk_at_each_write_site_is_one_clear_error_and_the_rerun_continues(
        tmp_path, monkeypatch, site, error, fault_source, clean_store, small_backbone):
    module, attr, make = SITES[site]
    out = tmp_path / "s.h5"
    monkeypatch.setattr(module, attr, make(error))
    with pytest.raises(StoreError, match=r"\(No space left on device\).*rerun"):
        extract_features(fault_source, out, small_backbone, **OPTS)
    monkeypatch.undo()
    assert not out.exists() and not list(tmp_path.glob("**/*.tmp")) and not (tmp_path / "s.h5.lock").exists()
    res = extract_features(fault_source, out, small_backbone, **OPTS)
    assert (res.resumed_at > 0) == (site != "manifest")  # finished partitions are not redone
    assert_same_store(out, clean_store)
    assert not (tmp_path / "s.h5.parts").exists()


@requires_shared
def test_parts_folder_removed_under_the_writer_ends_the_run(tmp_path, monkeypatch, fault_source, clean_store,
                                                           small_backbone):
    out = tmp_path / "s.h5"
    calls = {"n": 0}

    class VanishingWriter(StoreWriter):
        def __init__(self, path, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 5:  # the last shard: the folder is gone
                import shutil

                shutil.rmtree(Path(path).parent)
            super().__init__(path, *args, **kwargs)

    monkeypatch.setattr(partition_module, "StoreWriter", VanishingWriter)
    with pytest.raises(StoreError, match="s.h5.parts.*failed.*rerun"):
        extract_features(fault_source, out, small_backbone, **OPTS)
    monkeypatch.undo()
    extract_features(fault_source, out, small_backbone, **OPTS)
    assert_same_store(out, clean_store)


# --- --overwrite, leftovers, locks -----------------------------------------------------------

@requires_shared
def test_interrupted_overwrite_keeps_the_old_store(tmp_path, monkeypatch, fault_source, clean_store, small_backbone):
    out = tmp_path / "s.h5"
    out.write_bytes(clean_store.read_bytes())
    before = out.read_bytes()
    monkeypatch.setattr(partition_module, "StoreWriter", _failing_writer("append", 3, KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        extract_features(fault_source, out, small_backbone, seed=7, overwrite=True, **OPTS)
    monkeypatch.undo()
    assert out.read_bytes() == before  # untouched while the new run is partial
    monkeypatch.setattr(finalize_module, "StoreWriter", _failing_writer("append", 2, ENOSPC))
    with pytest.raises(StoreError):
        extract_features(fault_source, out, small_backbone, seed=7, overwrite=True, **OPTS)
    monkeypatch.undo()
    assert out.read_bytes() == before  # a failed merge leaves it too
    res = extract_features(fault_source, out, small_backbone, seed=7, overwrite=True, **OPTS)
    assert res.resumed_at == 19 and res.rows == 18  # every partition was kept
    with open_store(out) as store:
        assert store.meta["seed"] == 7
    assert not (tmp_path / "s.h5.parts").exists()


@requires_shared
def test_kill_right_after_the_rename_leaves_parts_that_the_next_run_removes(tmp_path, monkeypatch, fault_source,
                                                                            clean_store, small_backbone):
    out = tmp_path / "s.h5"

    def killed(parts):
        raise KeyboardInterrupt  # the process dies between the rename and the clean-up

    monkeypatch.setattr(finalize_module, "discard_parts", killed)
    with pytest.raises(KeyboardInterrupt):
        extract_features(fault_source, out, small_backbone, **OPTS)
    monkeypatch.undo()
    assert out.exists() and (tmp_path / "s.h5.parts" / "manifest.json").exists()
    assert extract_features(fault_source, out, small_backbone, **OPTS).already_complete
    assert not (tmp_path / "s.h5.parts").exists()
    assert_same_store(out, clean_store)


def _hold_lock(out: Path) -> subprocess.Popen:
    code = ("import sys, time; from pathlib import Path; from pipeline.extraction.lock import output_lock\n"
            "with output_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


@requires_shared
def test_a_second_run_on_the_same_output_is_refused_and_the_lock_dies_with_its_holder(tmp_path):
    src = _source(tmp_path, 2)
    out = tmp_path / "s.h5"
    holder = _hold_lock(out)
    try:
        r = CliRunner().invoke(main, ["extract-features", str(src), "-o", str(out), *SMALL, "-q"])
        assert r.exit_code == 1 and "Traceback" not in r.output
        assert "another run is writing" in r.output and "s.h5.lock" in r.output
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    r = CliRunner().invoke(main, ["extract-features", str(src), "-o", str(out), *SMALL, "-q"])
    assert r.exit_code == 0, r.output
    assert out.exists() and not (tmp_path / "s.h5.lock").exists()


def test_lock_is_exclusive_in_one_process_too(tmp_path):
    with output_lock(tmp_path / "o.h5"):
        with pytest.raises(StoreError, match="another run"):
            with output_lock(tmp_path / "o.h5"):
                pass
    with output_lock(tmp_path / "o.h5"):
        pass


# --- names, CLI error paths -------------------------------------------------------------------

@requires_shared
def test_non_utf8_file_names_are_processed_and_recorded_losslessly(tmp_path, small_backbone):
    src = link_subset(DVC, tmp_path / "src", kaggle_names(2))
    odd = os.fsdecode(b"cat.caf\xe9.jpg")
    try:
        os.symlink(DVC / "cat.5.jpg", os.path.join(os.fsencode(src), os.fsencode(odd)))
    except (OSError, UnicodeEncodeError):
        pytest.skip("this filesystem refuses non-UTF-8 names")
    out = tmp_path / "s.h5"
    res = extract_features(list_images(src), out, small_backbone, **OPTS)
    assert res.rows == 5
    with open_store(out) as store:
        assert "cat.caf\\xe9.jpg" in store.paths()  # the lossless record form of pipeline.images


@requires_shared
def test_cli_error_paths_have_no_traceback(tmp_path, monkeypatch):
    src = _source(tmp_path, 2)
    out = tmp_path / "s.h5"
    runner = CliRunner()
    monkeypatch.setattr(partition_module, "StoreWriter", _failing_writer("append", 1, RuntimeError(H5_FULL)))
    r = runner.invoke(main, ["extract-features", str(src), "-o", str(out), *SMALL, "-q", "--batch-size", "2",
                             "--checkpoint-rows", "2"])
    assert r.exit_code == 1 and "Traceback" not in r.output and "(No space left on device)" in r.output \
        and "errno" not in r.output, r.output
    monkeypatch.undo()
    r = runner.invoke(main, ["extract-features", str(src), "-o", str(out), *SMALL, "-q", "--seed", "3"])
    assert r.exit_code == 1 and "Traceback" not in r.output and "seed: 42 -> 3" in r.output, r.output
    r = runner.invoke(main, ["train-incremental", str(tmp_path / "s.h5.parts"), "--head", "slda"])
    assert r.exit_code == 1 and "Traceback" not in r.output and "unfinished extraction" in r.output, r.output


# --- kill -9 at seeded random points ----------------------------------------------------------

def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", "extract-features", *args]


ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
KILL_OPTS = [*SMALL, "--batch-size", "4", "--checkpoint-rows", "8", "-q"]
SLOW_MERGE = """
import sys, time
from pathlib import Path
import pipeline.extraction.finalize as fin
from pipeline.store import StoreWriter

class Slow(StoreWriter):
    def append(self, *a, **k):
        Path(sys.argv[1]).touch()
        time.sleep(0.3)
        return super().append(*a, **k)

fin.StoreWriter = Slow
from pipeline.cli import main
main(sys.argv[2:])
"""


def _wait_for(check, proc: subprocess.Popen, limit: float = 180) -> None:
    deadline = time.time() + limit
    while time.time() < deadline and proc.poll() is None and not check():
        time.sleep(0.02)


@requires_shared
@pytest.mark.slow
def test_kill_9_at_random_points_then_rerun_equals_an_uninterrupted_run(tmp_path):
    src = _source(tmp_path, 24)  # 49 files, 7 partitions
    clean = tmp_path / "clean.h5"
    subprocess.run(_cli(str(src), "-o", str(clean), *KILL_OPTS), env=ENV, check=True)
    rng = random.Random(11)
    for trial in range(3):
        out = tmp_path / f"k{trial}.h5"
        parts = tmp_path / f"k{trial}.h5.parts"
        shards = rng.randint(0, 6)
        proc = subprocess.Popen(_cli(str(src), "-o", str(out), *KILL_OPTS), env=ENV)
        _wait_for(lambda: len(list(parts.glob("shard-*.h5"))) >= shards, proc)
        time.sleep(rng.uniform(0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        subprocess.run(_cli(str(src), "-o", str(out), *KILL_OPTS), env=ENV, check=True)
        assert_same_store(out, clean)
        assert not parts.exists() and not (tmp_path / f"k{trial}.h5.lock").exists()
    # during the merge: every partition is done, the merged file is half written
    out, marker = tmp_path / "m.h5", tmp_path / "merging"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_MERGE, str(marker), "extract-features", str(src), "-o",
                             str(out), *KILL_OPTS], env=ENV)
    _wait_for(marker.exists, proc)
    assert marker.exists(), "the merge was never reached"
    time.sleep(rng.uniform(0, 0.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and len(list((tmp_path / "m.h5.parts").glob("shard-*.h5"))) == 7
    subprocess.run(_cli(str(src), "-o", str(out), *KILL_OPTS), env=ENV, check=True)
    assert_same_store(out, clean)


def test_crafted_label_index_out_of_range_is_a_clean_error(tmp_path):
    import h5py

    from conftest import make_blobs_store
    from pipeline.errors import StoreError
    from pipeline.store import open_store

    path = make_blobs_store(tmp_path / "s.h5", 20, 4, ["a", "b"])
    with h5py.File(path, "r+") as f:
        f["labels"][3] = 7
    with open_store(path) as store, pytest.raises(StoreError, match="label index 7 .* outside"):
        list(store.iter_chunks(8))


def test_an_output_name_too_long_is_one_line(tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import main

    from PIL import Image

    (tmp_path / "src").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "src" / "cat.1.png")
    result = CliRunner().invoke(main, ["extract-features", str(tmp_path / "src"), "-o", str(tmp_path / ("a" * 300 + ".h5"))])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "File name too long" in result.output, result.output
